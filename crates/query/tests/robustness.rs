//! Random JSON never panics the parser, and whatever parses survives a serialize/parse round
//! trip and resolves (or reports a field) without panicking.

use chrono::{TimeZone, Utc};
use flywheel_query::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Keys and values that the definitions use, so random documents reach deep into the parser.
const KEYS: &[&str] = &[
    "series",
    "steps",
    "event",
    "math",
    "math_property",
    "per_user",
    "properties",
    "key",
    "value",
    "operator",
    "type",
    "group_type_index",
    "id",
    "ids",
    "breakdown",
    "property",
    "limit",
    "formula",
    "compare",
    "date_from",
    "date_to",
    "interval",
    "conversion_window",
    "unit",
    "order",
    "exclusions",
    "from_step",
    "to_step",
    "breakdown_attribution",
    "aggregation",
    "trends",
    "start_event",
    "return_event",
    "cohort",
    "period",
    "periods",
    "mode",
    "name",
    "filter_test_accounts",
    "kind",
    "negate",
];
const WORDS: &[&str] = &[
    "a",
    "$all",
    "sum",
    "dau",
    "per_user",
    "weekly_active",
    "exact",
    "regex",
    "gt",
    "is_set",
    "person",
    "group",
    "cohort",
    "event",
    "day",
    "week",
    "month",
    "hour",
    "-7d",
    "-24h",
    "mtd",
    "2024-03-01",
    "2024-03-01T10:00:00Z",
    "A/B",
    "(A+B)/C",
    "((",
    "ordered",
    "unordered",
    "step:1",
    "group:0",
    "first_time",
    "on_or_after",
    "",
    "[",
    "-99999y",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..30).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn doc() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// Keys and values of cohort definitions.
const COHORT_KEYS: &[&str] = &[
    "properties",
    "type",
    "values",
    "key",
    "value",
    "operator",
    "negation",
    "operator_value",
    "time_value",
    "time_interval",
    "explicit_datetime",
    "event_type",
    "event_filters",
    "group_type_index",
];
const COHORT_WORDS: &[&str] = &[
    "AND",
    "OR",
    "person",
    "cohort",
    "behavioral",
    "event",
    "id",
    "performed_event",
    "performed_event_multiple",
    "performed_event_first_time",
    "performed_event_sequence",
    "gte",
    "eq",
    "exact",
    "is_set",
    "hour",
    "day",
    "month",
    "year",
    "events",
    "$all",
    "-30d",
    "-24h",
    "2025-12-15",
    "",
];

fn cohort_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..4000).prop_map(|n| json!(n)),
        prop::sample::select(COHORT_WORDS).prop_map(|s| json!(s)),
    ]
}

fn cohort_doc() -> impl Strategy<Value = Value> {
    cohort_leaf().prop_recursive(8, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(COHORT_KEYS), inner), 0..9).prop_map(
                |kv| {
                    Value::Object(
                        kv.into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

fn pick(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::sample::select(words).prop_map(|s| json!(s))
}

fn int(range: std::ops::Range<i64>) -> impl Strategy<Value = Value> {
    range.prop_map(|n| json!(n))
}

/// `key: value` most of the time, left out otherwise.
fn maybe(
    key: &'static str,
    p: f64,
    v: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Option<(&'static str, Value)>> {
    prop::option::weighted(p, v).prop_map(move |v| v.map(|v| (key, v)))
}

fn object(t: &str, parts: Vec<Option<(&'static str, Value)>>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(t));
    for (k, v) in parts.into_iter().flatten() {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// Cohort leaves shaped like the real thing, mostly valid, so that the round trip is exercised.
fn shaped_cohort_leaf() -> impl Strategy<Value = Value> {
    let negation = || maybe("negation", 0.3, any::<bool>().prop_map(Value::Bool));
    let person = (
        maybe("key", 0.95, pick(&["plan", "email", ""])),
        maybe(
            "operator",
            0.5,
            pick(&["exact", "is_set", "gte", "icontains"]),
        ),
        maybe("value", 0.9, prop_oneof![pick(&["pro", "9"]), int(0..3)]),
        negation(),
    )
        .prop_map(|(a, b, c, d)| object("person", vec![a, b, c, d]));
    let cohort = (
        maybe("key", 0.5, pick(&["id", "id", "name"])),
        maybe("value", 0.95, int(-1..6)),
        negation(),
    )
        .prop_map(|(a, b, c)| object("cohort", vec![a, b, c]));
    let event_filter = (
        maybe("key", 0.95, pick(&["$browser", "amount"])),
        maybe("value", 0.9, prop_oneof![pick(&["Chrome"]), int(0..3)]),
        maybe("type", 0.5, pick(&["event", "event", "person"])),
    )
        .prop_map(|(a, b, c)| {
            Value::Object(
                vec![a, b, c]
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        });
    let kind = prop_oneof![
        6 => pick(&["performed_event", "performed_event_first_time"])
            .prop_map(|k| vec![Some(("value", k))]),
        6 => (pick(&["gte", "eq", "lt", "exact"]), int(0..4)).prop_map(|(op, n)| vec![
            Some(("value", json!("performed_event_multiple"))),
            Some(("operator", op)),
            Some(("operator_value", n)),
        ]),
        1 => (
            maybe(
                "value",
                0.9,
                pick(&[
                    "performed_event",
                    "performed_event_multiple",
                    "stopped_performing_event",
                    "did_it",
                ]),
            ),
            maybe("operator", 0.5, pick(&["gte", "ne"])),
            maybe("operator_value", 0.5, int(-1..4)),
        )
            .prop_map(|(a, b, c)| vec![a, b, c]),
    ];
    let window = prop_oneof![
        4 => (int(1..40), pick(&["hour", "day", "week", "month", "year"]))
            .prop_map(|(n, u)| vec![Some(("time_value", n)), Some(("time_interval", u))]),
        4 => pick(&["-30d", "-24h", "-2w", "2025-12-15", "2025-12-15T10:00:00+01:00", "mtd"])
            .prop_map(|d| vec![Some(("explicit_datetime", d))]),
        1 => (
            maybe("time_value", 0.7, prop_oneof![int(0..2), int(3649..3652)]),
            maybe("time_interval", 0.7, pick(&["day", "minute"])),
            maybe("explicit_datetime", 0.5, pick(&["-30d", "soon"])),
        )
            .prop_map(|(a, b, c)| vec![a, b, c]),
    ];
    let behavioral = (
        maybe("key", 0.95, pick(&["$pageview", "$all", "$pageview", ""])),
        kind,
        window,
        maybe("event_type", 0.3, pick(&["events", "events", "actions"])),
        maybe(
            "event_filters",
            0.3,
            prop::collection::vec(event_filter, 0..3).prop_map(Value::Array),
        ),
        negation(),
    )
        .prop_map(|(key, kind, window, t, f, n)| {
            let mut parts = vec![key, t, f, n];
            parts.extend(kind);
            parts.extend(window);
            object("behavioral", parts)
        });
    prop_oneof![person, cohort, behavioral]
}

fn shaped_cohort() -> impl Strategy<Value = Value> {
    shaped_cohort_leaf()
        .prop_recursive(6, 32, 3, |inner| {
            (
                pick(&["AND", "OR", "AND", "OR", "AND", "OR", "and"]),
                prop_oneof![
                    9 => prop::collection::vec(inner.clone(), 1..4),
                    1 => prop::collection::vec(inner, 0..1),
                ],
            )
                .prop_map(|(t, values)| json!({"type": t, "values": values}))
        })
        .prop_map(|root| json!({ "properties": root }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_cohorts_never_panic(body in prop_oneof![cohort_doc(), shaped_cohort()]) {
        match parse_cohort_filters(&body) {
            Ok(c) => {
                let v = serde_json::to_value(&c).unwrap();
                let again = parse_cohort_filters(&v);
                prop_assert_eq!(again.as_ref(), Ok(&c));
                let now = Utc.with_ymd_and_hms(2024, 3, 31, 1, 30, 0).unwrap();
                let _ = (c.cohort_ids(), c.person_keys(), c.has_behaviour());
                fn starts(n: &CohortNode, now: chrono::DateTime<Utc>) {
                    match n {
                        CohortNode::Group { values, .. } => values.iter().for_each(|v| starts(v, now)),
                        CohortNode::Behavioral(b) => {
                            let _ = b.window.start(now, &chrono_tz::Europe::Berlin);
                        }
                        _ => {}
                    }
                }
                starts(&c.root, now);
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|e| !e.field.is_empty() && !e.message.is_empty()));
            }
        }
    }

    #[test]
    fn random_documents_never_panic(body in doc(), kind in prop::sample::select(InsightKind::NAMES)) {
        match parse_kind(kind, &body) {
            Ok(q) => {
                let mut v = serde_json::to_value(&q).unwrap();
                v.as_object_mut().unwrap().remove("kind");
                let again = parse_kind(kind, &v);
                prop_assert_eq!(again.as_ref(), Ok(&q));
                let now = Utc.with_ymd_and_hms(2024, 3, 31, 1, 30, 0).unwrap();
                let _ = q.resolve(now, &chrono_tz::Europe::Berlin);
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|e| !e.field.is_empty() && !e.message.is_empty()));
            }
        }
    }

    #[test]
    fn random_formulas_never_panic(s in "[A-Za-z0-9+*/(). -]{0,40}") {
        if let Ok(e) = parse_formula(&s) {
            let _ = e.eval(&[1.0, 2.0, 0.0]);
        }
    }

    #[test]
    fn random_bounds_never_panic(s in "[-0-9dwmyhT:Z+ .]{0,25}", hour in 0u32..24) {
        if let Ok(b) = s.parse::<DateBound>() {
            let r = DateRange { date_from: Some(b), date_to: None };
            let now = Utc.with_ymd_and_hms(2024, 10, 27, hour, 0, 0).unwrap();
            for interval in [Interval::Hour, Interval::Day, Interval::Week, Interval::Month] {
                let _ = r.resolve(now, &chrono_tz::America::New_York, interval);
            }
        }
    }
}
