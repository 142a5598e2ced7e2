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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

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
