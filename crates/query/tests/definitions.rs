//! Table-driven tests of valid and invalid definitions of every kind.

use flywheel_query::*;
use serde_json::{json, Value};

fn ok(kind: InsightKind, body: Value) -> InsightQuery {
    match parse(kind, &body) {
        Ok(q) => q,
        Err(errors) => panic!("{kind} {body} should be valid: {errors:?}"),
    }
}

/// Each invalid case lists exactly the fields it must report, in order.
fn check_invalid(kind: InsightKind, cases: &[(Value, &[&str])]) {
    for (body, want) in cases {
        let errors = parse(kind, body).expect_err(&format!("{kind} {body} should be invalid"));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(&fields, want, "{kind} {body}: {errors:?}");
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }
}

/// A normalized definition serializes to JSON that parses back to itself.
fn round_trips(q: &InsightQuery) {
    let mut v = serde_json::to_value(q).unwrap();
    v.as_object_mut().unwrap().remove("kind");
    let again = parse(q.kind(), &v).unwrap_or_else(|e| panic!("{v} did not parse back: {e:?}"));
    assert_eq!(&again, q, "{v}");
}

#[test]
fn valid_trends() {
    let cases = [
        json!({"series": [{"event": "$pageview"}]}),
        json!({"series": [{"event": "$all", "math": "dau"}], "interval": "hour", "date_from": "-24h"}),
        json!({"series": [
            {"event": "purchase", "math": "sum", "math_property": "amount", "name": "Revenue"},
            {"event": "purchase", "math": "p95", "math_property": "amount"},
            {"event": "$pageview", "math": "per_user", "per_user": "median"},
            {"event": "$pageview", "math": "weekly_active"},
            {"event": "$pageview", "math": "monthly_active"}
        ], "formula": "(A + B) / C * 100 - D / E"}),
        json!({"series": [{"event": "a"}, {"event": "b"}], "formula": "a/b", "compare": true,
               "date_from": "2024-01-01", "date_to": "2024-01-31", "interval": "week"}),
        json!({"series": [{"event": "a", "properties": [
            {"key": "$browser", "value": "Chrome"},
            {"key": "$browser", "value": ["Chrome", "Safari"], "operator": "is_not"},
            {"key": "$current_url", "value": "/pricing", "operator": "contains"},
            {"key": "$current_url", "value": "^https://", "operator": "regex"},
            {"key": "price", "value": 10, "operator": "gt"},
            {"key": "price", "value": "9.5", "operator": "lte"},
            {"key": "email", "type": "person", "operator": "is_set"},
            {"key": "industry", "type": "group", "group_type_index": 0, "value": "SaaS"},
            {"type": "cohort", "id": 12},
            {"type": "cohort", "id": 13, "negate": true}
        ]}], "properties": [{"key": "plan", "type": "person", "operator": "is_not_set"}],
             "filter_test_accounts": true}),
        json!({"series": [{"event": "a"}], "breakdown": {"type": "person", "property": "plan", "limit": 10}}),
        json!({"series": [{"event": "a"}], "breakdown": {"type": "group", "group_type_index": 2, "property": "size"}}),
        json!({"series": [{"event": "a"}], "breakdown": {"type": "cohort", "ids": [1, 2]}}),
        json!({"series": [{"event": "a"}], "date_from": "mtd"}),
        json!({"series": [{"event": "a"}], "date_from": "ytd", "interval": "month"}),
        json!({"series": [{"event": "a"}], "date_from": "2024-03-01T10:00:00Z", "date_to": "2024-03-02T10:00:00+02:00"}),
        json!({"series": [{"event": "a"}], "date_from": "-6m", "date_to": "-1m", "kind": "trends"}),
        json!({"series": [{"event": "a", "name": null}], "breakdown": null}),
    ];
    for body in cases {
        let q = ok(InsightKind::Trends, body);
        round_trips(&q);
    }
}

#[test]
fn trends_defaults() {
    let InsightQuery::Trends(t) = ok(
        InsightKind::Trends,
        json!({"series": [{"event": "a"}, {"event": "b", "math": "per_user"}],
               "breakdown": {"property": "$browser"}}),
    ) else {
        unreachable!()
    };
    assert_eq!(t.common.date_range.date_from.unwrap().to_string(), "-7d");
    assert_eq!(t.common.date_range.date_to, None);
    assert_eq!(t.common.interval, Some(Interval::Day));
    assert_eq!(t.series[0].math, Some(Math::Total));
    assert_eq!(t.series[1].per_user, Some(PerUserMath::Avg));
    let b = t.breakdown.unwrap();
    assert_eq!(b.limit, Some(25));
    assert_eq!(
        b.by,
        BreakdownBy::Event {
            property: "$browser".into()
        }
    );
    assert!(!t.compare && !t.common.filter_test_accounts && t.formula.is_none());
}

#[test]
fn invalid_trends() {
    check_invalid(
        InsightKind::Trends,
        &[
            (json!({}), &["series"]),
            (json!([]), &["body"]),
            (json!({"series": []}), &["series"]),
            (json!({"series": {}}), &["series"]),
            (json!({"series": [{}]}), &["series[0].event"]),
            (json!({"series": [{"event": ""}]}), &["series[0].event"]),
            (json!({"series": [{"event": 5}]}), &["series[0].event"]),
            (
                json!({"series": [{"event": "a", "colour": "red"}]}),
                &["series[0].colour"],
            ),
            (
                json!({"series": [{"event": "a"}], "colour": "red"}),
                &["colour"],
            ),
            (
                json!({"series": [{"event": "a"}, {"event": "b", "math": "sum"}]}),
                &["series[1].math_property"],
            ),
            (
                json!({"series": [{"event": "a", "math": "dau", "math_property": "x"}]}),
                &["series[0].math_property"],
            ),
            (
                json!({"series": [{"event": "a", "math": "mean"}]}),
                &["series[0].math"],
            ),
            (
                json!({"series": [{"event": "a", "per_user": "avg"}]}),
                &["series[0].per_user"],
            ),
            (
                json!({"series": [{"event": "a", "math": "per_user", "per_user": "p90"}]}),
                &["series[0].per_user"],
            ),
            (
                json!({"series": [{"event": "a", "math": "weekly_active"}], "interval": "week"}),
                &["series[0].math"],
            ),
            (
                json!({"series": [{"event": "a", "math": "monthly_active"}], "interval": "month"}),
                &["series[0].math"],
            ),
            (
                json!({"series": [{"event": "a"}], "interval": "minute"}),
                &["interval"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": "-7x"}),
                &["date_from"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": "7d"}),
                &["date_from"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": "-99999d"}),
                &["date_from"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": "2024-02-30"}),
                &["date_from"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": 7}),
                &["date_from"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_to": "mtd"}),
                &["date_to"],
            ),
            (
                json!({"series": [{"event": "a"}], "date_from": "2024-02-01", "date_to": "2024-01-31"}),
                &["date_to"],
            ),
            (
                json!({"series": [{"event": "a"}], "formula": "A/B"}),
                &["formula"],
            ),
            (
                json!({"series": [{"event": "a"}, {"event": "b"}], "formula": "A/"}),
                &["formula"],
            ),
            (
                json!({"series": [{"event": "a"}], "formula": ""}),
                &["formula"],
            ),
            (
                json!({"series": [{"event": "a"}], "compare": "yes"}),
                &["compare"],
            ),
            (
                json!({"series": [{"event": "a"}], "filter_test_accounts": 1}),
                &["filter_test_accounts"],
            ),
            (
                json!({"series": [{"event": "a"}], "kind": "funnel"}),
                &["kind"],
            ),
            // Breakdowns.
            (
                json!({"series": [{"event": "a"}], "breakdown": {}}),
                &["breakdown.property"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"property": "x", "limit": 0}}),
                &["breakdown.limit"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"property": "x", "type": "group"}}),
                &["breakdown.group_type_index"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"property": "x", "type": "person", "group_type_index": 1}}),
                &["breakdown.group_type_index"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"property": "x", "type": "group", "group_type_index": 5}}),
                &["breakdown.group_type_index"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"property": "x", "type": "session"}}),
                &["breakdown.type"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"type": "cohort"}}),
                &["breakdown.ids"],
            ),
            (
                json!({"series": [{"event": "a"}], "breakdown": {"type": "cohort", "ids": [1, 1, "x"], "limit": 3}}),
                &["breakdown.ids[1]", "breakdown.ids[2]", "breakdown.limit"],
            ),
            // Filters.
            (
                json!({"series": [{"event": "a"}], "properties": [{"value": 1}]}),
                &["properties[0].key"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k"}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": 1, "operator": "is_set"}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": "abc", "operator": "gt"}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": "(", "operator": "regex"}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": 3, "operator": "contains"}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": ["a", {"b": 1}]}]}),
                &["properties[0].value[1]"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": []}]}),
                &["properties[0].value"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": 1, "operator": "equals"}]}),
                &["properties[0].operator"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"key": "k", "value": 1, "type": "group"}]}),
                &["properties[0].group_type_index"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"type": "cohort"}]}),
                &["properties[0].id"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": [{"type": "cohort", "id": 0, "key": "x"}]}),
                &["properties[0].id", "properties[0].key"],
            ),
            (
                json!({"series": [{"event": "a"}], "properties": {"key": "k"}}),
                &["properties"],
            ),
            // Several problems at once, in reading order.
            (
                json!({"series": [{"event": "a", "math": "avg"}, {"event": ""}], "interval": "year",
                       "formula": "A/C", "extra": 1}),
                &[
                    "series[1].event",
                    "interval",
                    "formula",
                    "extra",
                    "series[0].math_property",
                ],
            ),
        ],
    );
}

#[test]
fn valid_funnels() {
    let cases = [
        json!({"steps": [{"event": "signup"}, {"event": "activate"}]}),
        json!({"steps": [
            {"event": "$pageview", "properties": [{"key": "$current_url", "value": "/pricing", "operator": "contains"}]},
            {"event": "signup", "name": "Signed up"},
            {"event": "$all"}
        ], "conversion_window": {"value": 2, "unit": "hour"}, "order": "strict",
           "exclusions": [{"event": "cancel", "from_step": 0, "to_step": 1}],
           "breakdown": {"property": "$browser"}, "breakdown_attribution": "step:1",
           "aggregation": "group:1", "trends": true, "interval": "week", "date_from": "-90d"}),
        json!({"steps": [{"event": "a"}, {"event": "b"}], "order": "unordered"}),
        json!({"steps": [{"event": "a"}, {"event": "b"}], "breakdown": {"type": "cohort", "ids": [4]},
               "breakdown_attribution": "last_touch", "aggregation": "person"}),
        json!({"steps": (0..20).map(|i| json!({"event": format!("e{i}")})).collect::<Vec<_>>()}),
        json!({"steps": [{"event": "a"}, {"event": "b"}], "conversion_window": {"value": 12, "unit": "month"}}),
        json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "exclusions": [{"event": "a", "from_step": 1}]}),
    ];
    for body in cases {
        round_trips(&ok(InsightKind::Funnel, body));
    }
}

#[test]
fn funnel_defaults() {
    let InsightQuery::Funnel(f) = ok(
        InsightKind::Funnel,
        json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}],
               "exclusions": [{"event": "x"}], "breakdown": {"property": "p"}}),
    ) else {
        unreachable!()
    };
    assert_eq!(f.conversion_window, Some(ConversionWindow::DEFAULT));
    assert_eq!(
        f.conversion_window.unwrap().duration(),
        chrono::Duration::days(14)
    );
    assert_eq!(f.order, Some(FunnelOrder::Ordered));
    assert_eq!(f.aggregation, Some(Aggregation::Person));
    assert_eq!(f.breakdown_attribution, Some(Attribution::FirstTouch));
    assert_eq!((f.exclusions[0].from_step, f.exclusions[0].to_step), (0, 2));
    assert_eq!(f.common.date_range.date_from.unwrap().to_string(), "-7d");
    assert_eq!(f.common.interval, Some(Interval::Day));
    assert!(!f.trends);
}

#[test]
fn invalid_funnels() {
    let two = json!([{"event": "a"}, {"event": "b"}]);
    let with = |extra: Value| {
        let mut v = json!({"steps": two.clone()});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    check_invalid(
        InsightKind::Funnel,
        &[
            (json!({}), &["steps"]),
            (json!({"steps": [{"event": "a"}]}), &["steps"]),
            (
                json!({"steps": (0..21).map(|i| json!({"event": format!("e{i}")})).collect::<Vec<_>>()}),
                &["steps"],
            ),
            (
                json!({"steps": [{"event": "a"}, {"name": "b"}]}),
                &["steps[1].event"],
            ),
            (json!({"steps": [{"event": "a"}, "b"]}), &["steps[1]"]),
            (
                json!({"steps": [{"event": "a"}, {"event": "b", "math": "dau"}]}),
                &["steps[1].math"],
            ),
            (with(json!({"order": "any"})), &["order"]),
            (
                with(json!({"conversion_window": 14})),
                &["conversion_window"],
            ),
            (
                with(json!({"conversion_window": {"value": 0, "unit": "day"}})),
                &["conversion_window.value"],
            ),
            (
                with(json!({"conversion_window": {"value": 14}})),
                &["conversion_window.unit"],
            ),
            (
                with(json!({"conversion_window": {"value": 2, "unit": "year"}})),
                &["conversion_window.unit"],
            ),
            (
                with(json!({"conversion_window": {"value": 400, "unit": "day"}})),
                &["conversion_window.value"],
            ),
            (
                with(json!({"conversion_window": {"value": 1, "unit": "day", "strict": true}})),
                &["conversion_window.strict"],
            ),
            (
                with(json!({"exclusions": [{"event": "x", "from_step": 1, "to_step": 1}]})),
                &["exclusions[0].from_step"],
            ),
            (
                with(json!({"exclusions": [{"event": "x", "from_step": 0, "to_step": 2}]})),
                &["exclusions[0].to_step"],
            ),
            (
                with(json!({"exclusions": [{"event": "x", "to_step": 99}]})),
                &["exclusions[0].to_step"],
            ),
            (
                with(json!({"exclusions": [{"from_step": 0}]})),
                &["exclusions[0].event"],
            ),
            (
                with(json!({"exclusions": [{"event": "b"}]})),
                &["exclusions[0].event"],
            ),
            (
                with(json!({"exclusions": [{"event": "x"}], "order": "unordered"})),
                &["exclusions"],
            ),
            (
                with(json!({"breakdown_attribution": "first_touch"})),
                &["breakdown_attribution"],
            ),
            (
                with(json!({"breakdown": {"property": "p"}, "breakdown_attribution": "step:2"})),
                &["breakdown_attribution"],
            ),
            (
                with(json!({"breakdown": {"property": "p"}, "breakdown_attribution": "middle"})),
                &["breakdown_attribution"],
            ),
            (
                with(json!({"breakdown": {"property": "p"}, "breakdown_attribution": "step:-1"})),
                &["breakdown_attribution"],
            ),
            (with(json!({"aggregation": "group:5"})), &["aggregation"]),
            (with(json!({"aggregation": "groups"})), &["aggregation"]),
            (with(json!({"aggregation": "group:"})), &["aggregation"]),
            (with(json!({"trends": "true"})), &["trends"]),
            (with(json!({"series": []})), &["series"]),
        ],
    );
}

#[test]
fn valid_retention() {
    let cases = [
        json!({"start_event": "signup", "return_event": "$pageview"}),
        json!({"start_event": {"event": "signup", "properties": [{"key": "plan", "value": "pro"}]},
               "return_event": {"event": "$all"}, "cohort": "recurring", "period": "day",
               "periods": 30, "mode": "on_or_after", "date_to": "2024-06-30",
               "breakdown": {"type": "person", "property": "country"}, "aggregation": "group:0",
               "properties": [{"type": "cohort", "id": 3}], "filter_test_accounts": true}),
        json!({"start_event": "a", "return_event": "a", "period": "month", "date_to": "-1m"}),
    ];
    for body in cases {
        round_trips(&ok(InsightKind::Retention, body));
    }
    let InsightQuery::Retention(r) = ok(
        InsightKind::Retention,
        json!({"start_event": "a", "return_event": "b"}),
    ) else {
        unreachable!()
    };
    assert_eq!(r.cohort, Some(RetentionCohort::FirstTime));
    assert_eq!(r.period, Some(RetentionPeriod::Week));
    assert_eq!(r.periods, Some(8));
    assert_eq!(r.mode, Some(RetentionMode::On));
    assert_eq!(r.aggregation, Some(Aggregation::Person));
}

#[test]
fn invalid_retention() {
    check_invalid(
        InsightKind::Retention,
        &[
            (json!({}), &["start_event", "return_event"]),
            (json!({"start_event": "a"}), &["return_event"]),
            (
                json!({"start_event": "", "return_event": "b"}),
                &["start_event"],
            ),
            (
                json!({"start_event": {}, "return_event": "b"}),
                &["start_event.event"],
            ),
            (
                json!({"start_event": 1, "return_event": "b"}),
                &["start_event"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "cohort": "all"}),
                &["cohort"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "period": "hour"}),
                &["period"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "periods": 0}),
                &["periods"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "periods": 1000}),
                &["periods"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "periods": 2.5}),
                &["periods"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "mode": "after"}),
                &["mode"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "date_from": "-7d"}),
                &["date_from"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "interval": "day"}),
                &["interval"],
            ),
            (
                json!({"start_event": "a", "return_event": "b", "date_to": "soon"}),
                &["date_to"],
            ),
            (
                json!({"start_event": "a", "return_event": {"event": "b", "properties": [{"key": "k", "value": 1, "operator": "lt", "x": 1}]}}),
                &["return_event.properties[0].x"],
            ),
        ],
    );
}

#[test]
fn valid_stickiness_and_lifecycle() {
    for kind in [InsightKind::Stickiness, InsightKind::Lifecycle] {
        let cases = [
            json!({"event": "$pageview"}),
            json!({"event": {"event": "$pageview", "properties": [{"key": "$browser", "value": "Firefox"}]},
                   "interval": "week", "date_from": "-12w", "properties": [{"key": "plan", "type": "person", "value": "pro"}],
                   "filter_test_accounts": true}),
            json!({"event": "$all", "interval": "month", "date_from": "-1y"}),
        ];
        for body in cases {
            round_trips(&ok(kind, body));
        }
        let q = ok(kind, json!({"event": "a"}));
        let common = match &q {
            InsightQuery::Stickiness(s) => &s.common,
            InsightQuery::Lifecycle(l) => &l.common,
            _ => unreachable!(),
        };
        assert_eq!(common.interval, Some(Interval::Day));
        assert_eq!(common.date_range.date_from.unwrap().to_string(), "-7d");
    }
}

#[test]
fn invalid_stickiness_and_lifecycle() {
    for kind in [InsightKind::Stickiness, InsightKind::Lifecycle] {
        check_invalid(
            kind,
            &[
                (json!({}), &["event"]),
                (json!({"event": ""}), &["event"]),
                (json!({"event": {"name": "x"}}), &["event.event"]),
                (
                    json!({"event": "a", "interval": "fortnight"}),
                    &["interval"],
                ),
                (
                    json!({"event": "a", "series": [{"event": "a"}]}),
                    &["series"],
                ),
                (
                    json!({"event": "a", "breakdown": {"property": "x"}}),
                    &["breakdown.type"],
                ),
                (
                    json!({"event": "a", "breakdown": {"type": "cohort", "ids": []}}),
                    &["breakdown.ids"],
                ),
                (json!({"event": "a", "date_from": "-3q"}), &["date_from"]),
            ],
        );
        // Cohort breakdowns are accepted and serialize back.
        let body = json!({"event": "a", "breakdown": {"type": "cohort", "ids": [3, 4]}});
        let q = flywheel_query::parse(kind, &body).unwrap();
        assert_eq!(
            serde_json::to_value(&q).unwrap()["breakdown"],
            body["breakdown"]
        );
    }
}

#[test]
fn unknown_kind_names_the_kind() {
    let errors = parse_kind("paths", &json!({})).unwrap_err();
    assert_eq!(errors[0].field, "kind");
    assert!(parse_kind(
        "funnel",
        &json!({"steps": [{"event": "a"}, {"event": "b"}]})
    )
    .is_ok());
}

#[test]
fn field_errors_serialize_like_the_feature_api() {
    let errors = parse(
        InsightKind::Trends,
        &json!({"series": [{"event": "a"}, {"event": "b", "math": "sum"}]}),
    )
    .unwrap_err();
    assert_eq!(
        serde_json::to_value(&errors).unwrap(),
        json!([{"field": "series[1].math_property", "message": "is required for math sum"}])
    );
}

#[test]
fn serialized_form_is_tagged_and_stable() {
    let q = ok(
        InsightKind::Funnel,
        json!({"steps": [{"event": "a"}, {"event": "b"}], "aggregation": "group:2",
               "breakdown": {"type": "group", "group_type_index": 2, "property": "size"},
               "breakdown_attribution": "step:1"}),
    );
    assert_eq!(
        serde_json::to_value(&q).unwrap(),
        json!({
            "kind": "funnel",
            "steps": [{"event": "a"}, {"event": "b"}],
            "date_from": "-7d",
            "interval": "day",
            "conversion_window": {"value": 14, "unit": "day"},
            "order": "ordered",
            "breakdown": {"type": "group", "group_type_index": 2, "property": "size", "limit": 25},
            "breakdown_attribution": "step:1",
            "aggregation": "group:2"
        })
    );
}
