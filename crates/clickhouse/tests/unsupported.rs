//! What the ClickHouse backend cannot answer exactly is refused with the field at fault, never answered wrongly.

use chrono::{TimeZone, Utc};
use flywheel_clickhouse::sql::Target;
use flywheel_clickhouse::{compile, Unsupported};
use flywheel_query::{parse, plan, InsightKind};
use serde_json::{json, Value};

fn compiled(kind: InsightKind, body: Value) -> Result<usize, Unsupported> {
    let q = parse(kind, &body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
    let tz = chrono_tz::Europe::Berlin;
    let now = Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap();
    let range = q.resolve(now, &tz).unwrap();
    let p = plan::plan(&q, &range, &tz);
    let target = Target {
        db: "fw".into(),
        project_id: 1,
        ..Target::default()
    };
    compile(&q, &p, &tz, &target).map(|c| c.statements.len())
}

fn refused(kind: InsightKind, body: Value) -> String {
    match compiled(kind, body.clone()) {
        Ok(_) => panic!("{body} compiled"),
        Err(e) => {
            assert!(!e.message.is_empty());
            e.field
        }
    }
}

#[test]
fn unsupported_options_name_their_field() {
    use InsightKind::*;
    let a = json!({"event": "a"});
    for (kind, body, field) in [
        (
            Trends,
            json!({"series": [a], "breakdown": {"property": "plan", "type": "group", "group_type_index": 0}}),
            "breakdown.type",
        ),
        (
            Trends,
            json!({"series": [a], "breakdown": {"type": "cohort", "ids": [1]}}),
            "breakdown.type",
        ),
        (
            Trends,
            json!({"series": [a], "filter_test_accounts": true}),
            "filter_test_accounts",
        ),
        (
            Trends,
            json!({"series": [{"event": "a", "properties": [{"key": "u", "operator": "regex", "value": "\\bx+"}]}]}),
            "series[0].properties[0].value",
        ),
        (
            Trends,
            json!({"series": [a], "properties": [{"key": "u", "operator": "icontains", "value": "x"}]}),
            "",
        ),
        (
            Trends,
            json!({"series": [a], "properties": [{"key": "u", "operator": "not_regex", "value": "x{2000}"}]}),
            "properties[0].value",
        ),
        (
            Trends,
            json!({"series": [a], "properties": [{"key": "plan", "type": "group", "group_type_index": 1, "value": "pro"}]}),
            "properties[0].type",
        ),
        (
            Trends,
            json!({"series": [a], "properties": [{"key": "plan", "type": "person", "operator": "regex", "value": "p\\Bo"}]}),
            "properties[0].value",
        ),
        (
            Trends,
            json!({"series": [a], "properties": [{"type": "cohort", "id": 4}]}),
            "properties[0]",
        ),
        (
            Funnel,
            json!({"steps": [a, {"event": "a", "properties": [{"key": "k", "value": 1}]}], "order": "unordered"}),
            "steps[1]",
        ),
        (
            Funnel,
            json!({"steps": [a, {"event": "b"}], "aggregation": "group:0", "breakdown": {"type": "person", "property": "plan"}}),
            "breakdown.type",
        ),
        (
            Retention,
            json!({"start_event": a, "return_event": a, "breakdown": {"type": "cohort", "ids": [2]}}),
            "breakdown.type",
        ),
        (
            Stickiness,
            json!({"event": a, "properties": [{"key": "plan", "type": "group", "group_type_index": 0, "value": 1}]}),
            "properties[0].type",
        ),
        (
            Lifecycle,
            json!({"event": a, "breakdown": {"type": "cohort", "ids": [1]}}),
            "breakdown",
        ),
    ] {
        if field.is_empty() {
            // Not a valid definition at all: the parser refuses it before the backend sees it.
            assert!(parse(kind, &body).is_err(), "{body}");
            continue;
        }
        assert_eq!(refused(kind, body.clone()), field, "{body}");
    }
}

#[test]
fn supported_definitions_compile_to_one_statement_per_series_and_period() {
    use InsightKind::*;
    let n = compiled(
        Trends,
        json!({"series": [{"event": "a"}, {"event": "$all", "math": "dau"}], "compare": true, "formula": "A/B"}),
    )
    .unwrap();
    assert_eq!(n, 4);
    for (kind, body) in [
        (
            Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b"}], "order": "strict"}),
        ),
        (
            Retention,
            json!({"start_event": {"event": "a"}, "return_event": {"event": "b"}, "cohort": "recurring"}),
        ),
        (
            Stickiness,
            json!({"event": {"event": "a"}, "interval": "week"}),
        ),
        (
            Lifecycle,
            json!({"event": {"event": "a"}, "interval": "month", "date_from": "-6m"}),
        ),
        (
            Lifecycle,
            json!({"event": {"event": "a", "properties": [{"key": "plan", "type": "person", "value": "pro"}]}}),
        ),
    ] {
        assert_eq!(compiled(kind, body.clone()), Ok(1), "{body}");
    }
    // A person-property breakdown: the ranking, then the split.
    let n = compiled(
        Funnel,
        json!({"steps": [{"event": "a"}, {"event": "b"}], "breakdown": {"type": "person", "property": "plan"}}),
    );
    assert_eq!(n, Ok(2));
}
