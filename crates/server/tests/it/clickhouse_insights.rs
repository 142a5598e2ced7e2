//! Insights read from ClickHouse (`--events-url`) against Debian's ClickHouse 18.16: for every insight kind, the
//! JSON a node answers from ClickHouse equals the JSON a node without ClickHouse answers from its embedded engine,
//! fed the same events (merges included); what ClickHouse cannot answer is a 400 naming the field, never a silent
//! answer from the node's own tables; a ClickHouse that is down is a 503.

use axum::http::StatusCode;
use flywheel_clickhouse::test_support;
use serde_json::{json, Value};

use crate::{Lcg, TestServer};

const DB: &str = "fw_insights";
const TZ: &str = "Europe/Berlin";

/// Seeded events over October 2026 (Berlin leaves summer time on the 25th): 40 persons on a few days each, with
/// page views carrying a plan, a browser and a price (a number, sometimes a numeric string, sometimes missing),
/// sign-ups, purchases and tasks. Every fourth person starts anonymous and is identified part-way (their
/// anonymous id keeps sending events), so persons are merges of two distinct ids. A person's events never share a
/// microsecond here; ties have their own test (`same_microsecond_events_follow_the_log_order`).
fn seeded_events() -> Vec<Value> {
    let mut rng = Lcg(0x5eed);
    let mut out = Vec::new();
    let plans = ["free", "pro", "enterprise", "team"];
    let browsers = ["Firefox", "Chrome", "Safari"];
    let base = chrono::DateTime::parse_from_rfc3339("2026-10-01T00:00:00Z")
        .unwrap()
        .timestamp_micros();
    let mut n = 0u64;
    for p in 0..40u64 {
        let user = format!("user-{p}");
        let anon = format!("anon-{p}");
        let anonymous = p % 4 == 0;
        let days: Vec<u64> = {
            let mut d: Vec<u64> = (0..(2 + rng.below(9))).map(|_| rng.below(31)).collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        let identify_on = days[days.len() / 2];
        for &day in &days {
            // Sessions start at any minute of the day, and events follow a few seconds to hours apart.
            let mut ts = base + (day * 86_400 + rng.below(86_400 - 7_200)) as i64 * 1_000_000;
            let steps = 1 + rng.below(6);
            for s in 0..steps {
                let who = if anonymous && (day < identify_on || (day > identify_on && s % 2 == 1)) {
                    &anon
                } else {
                    &user
                };
                let event = match (s, rng.below(10)) {
                    (0, _) => "$pageview",
                    (_, 0..=3) => "$pageview",
                    (_, 4..=5) => "signup",
                    (_, 6..=7) => "purchase",
                    _ => "task_completed",
                };
                let mut props = json!({"browser": browsers[rng.below(3) as usize]});
                if day == days[0] && s == 0 {
                    props["$set"] = person_properties(p);
                }
                if rng.below(5) != 0 {
                    props["plan"] = json!(plans[((p + rng.below(2)) % 4) as usize]);
                }
                match rng.below(4) {
                    0 => {}
                    1 => props["price"] = json!(format!("{}", rng.below(100))),
                    _ => props["price"] = json!(rng.below(1000) as f64 / 10.0),
                }
                n += 1;
                out.push(json!({
                    "event": event,
                    "distinct_id": who,
                    "uuid": format!("00000000-0000-4000-8000-{n:012x}"),
                    "timestamp": chrono::DateTime::from_timestamp_micros(ts).unwrap().to_rfc3339(),
                    "properties": props,
                }));
                ts += (1 + rng.below(3_000)) as i64 * 1_000_000 + rng.below(1_000) as i64;
            }
            if anonymous && day == identify_on {
                n += 1;
                out.push(json!({
                    "event": "$identify",
                    "distinct_id": user,
                    "uuid": format!("00000000-0000-4000-8000-{n:012x}"),
                    "timestamp": chrono::DateTime::from_timestamp_micros(ts).unwrap().to_rfc3339(),
                    "properties": {"$anon_distinct_id": anon},
                }));
            }
        }
    }
    out
}

/// The person properties set on person `p`'s first event (on the anonymous id for those who start anonymous,
/// merged into the identified person later): `tier` a string, a number or missing, `age` a number or a string
/// holding one.
fn person_properties(p: u64) -> Value {
    let mut v = json!({});
    if !p.is_multiple_of(5) {
        v["tier"] =
            [json!("gold"), json!("silver"), json!("Bronze"), json!(7)][(p % 4) as usize].clone();
    }
    v["age"] = if p.is_multiple_of(3) {
        json!(format!("{}", 20 + p))
    } else {
        json!(20 + p)
    };
    v
}

/// Definitions with person-property filters and breakdowns, of every kind the embedded engine answers them for.
fn person_definitions() -> Vec<(&'static str, Value)> {
    let oct = |mut v: Value| {
        v["date_from"] = json!("2026-10-01");
        v["date_to"] = json!("2026-10-31");
        v
    };
    let person = |key: &str, op: &str, value: Value| json!({"key": key, "type": "person", "operator": op, "value": value});
    let by_tier = json!({"type": "person", "property": "tier", "limit": 2});
    let steps = json!([{"event": "$pageview"}, {"event": "signup"}, {"event": "purchase"}]);
    vec![
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}], "properties": [person("tier", "exact", json!(["gold", 7]))]}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview", "math": "dau"}], "properties": [person("tier", "is_not", json!("gold"))]}),
            ),
        ),
        (
            "trends",
            oct(json!({"series": [
                {"event": "$pageview", "math": "weekly_active", "properties": [person("age", "gt", json!(40))]},
                {"event": "signup", "properties": [person("tier", "is_set", Value::Null)]},
                {"event": "purchase", "properties": [person("tier", "is_not_set", Value::Null)]},
                {"event": "$pageview", "properties": [person("tier", "contains", json!("BRON"))]},
                {"event": "$pageview", "properties": [person("tier", "not_contains", json!("il"))]},
                {"event": "$pageview", "properties": [person("age", "lte", json!("33"))]},
            ]})),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}, {"event": "purchase", "math": "dau"}], "breakdown": by_tier}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview", "math": "weekly_active"}], "breakdown": {"type": "person", "property": "tier"}, "properties": [person("age", "gte", json!(25))]}),
            ),
        ),
        ("funnel", oct(json!({"steps": steps, "breakdown": by_tier}))),
        (
            "funnel",
            oct(json!({"steps": steps, "breakdown": by_tier, "trends": true, "interval": "week"})),
        ),
        (
            "funnel",
            oct(
                json!({"steps": steps, "order": "strict", "conversion_window": {"value": 1, "unit": "hour"}, "properties": [person("tier", "is_not", json!("silver"))]}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "signup"}, {"event": "purchase", "properties": [person("age", "lt", json!(45))]}], "order": "unordered", "breakdown": {"type": "person", "property": "age"}}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "$all"}, {"event": "purchase"}, {"event": "purchase", "properties": [person("age", "gt", json!(30))]}], "order": "unordered", "breakdown": by_tier}),
            ),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "$pageview", "period": "week", "periods": 5, "date_to": "2026-10-31", "breakdown": {"type": "person", "property": "tier"}}),
        ),
        (
            "retention",
            json!({"start_event": "signup", "return_event": "purchase", "period": "week", "periods": 5, "cohort": "recurring", "date_to": "2026-10-31", "properties": [person("tier", "exact", json!("silver"))]}),
        ),
        (
            "stickiness",
            oct(
                json!({"event": {"event": "$pageview", "properties": [person("age", "gt", json!(30))]}}),
            ),
        ),
        (
            "lifecycle",
            oct(
                json!({"event": {"event": "$pageview", "properties": [person("tier", "is_set", Value::Null)]}}),
            ),
        ),
        // Regular expressions, with Rust's meaning (Unicode classes, case folding, `.` without newlines).
        (
            "trends",
            oct(json!({"series": [
                {"event": "$pageview", "properties": [{"key": "browser", "operator": "regex", "value": "(?i)^(fire|SAF)"}]},
                {"event": "$pageview", "properties": [{"key": "browser", "operator": "not_regex", "value": "e$"}]},
                {"event": "$pageview", "properties": [{"key": "price", "operator": "regex", "value": r"^\d{2}(\.\d)?$"}]},
                {"event": "purchase", "properties": [person("tier", "regex", json!("(?i)^b|^\\w{4}$"))]},
                {"event": "signup", "properties": [person("age", "not_regex", json!("^2"))]},
            ]})),
        ),
    ]
}

/// Asks both nodes every definition and checks that ClickHouse answered completely and as the embedded engine;
/// returns the answers and how many count something.
async fn compare_all(
    scaled: &TestServer,
    embedded: &TestServer,
    definitions: &[(&str, Value)],
) -> (Vec<Value>, usize) {
    let mut answers = Vec::new();
    let mut nonzero = 0;
    for (kind, body) in definitions {
        // Right after capture: both wait until they hold every acknowledged event.
        let (s, from_ch) = insight(scaled, kind, body).await;
        assert_eq!(s, StatusCode::OK, "{kind} {body}: {from_ch}");
        let (s, local) = insight(embedded, kind, body).await;
        assert_eq!(s, StatusCode::OK, "{kind} {body}: {local}");
        assert_eq!(from_ch["complete"], true, "{kind} {body}: {from_ch}");
        assert_eq!(from_ch["cached"], false, "never cached: {from_ch}");
        let (from_ch, local) = (comparable(from_ch), comparable(local));
        if let Some(d) = difference(&from_ch, &local, "") {
            panic!("{kind} {body}\n{d}\nClickHouse: {from_ch}\nembedded:   {local}");
        }
        if local["result"]
            .to_string()
            .contains(|c: char| ('1'..='9').contains(&c))
        {
            nonzero += 1;
        }
        answers.push(local);
    }
    (answers, nonzero)
}

/// Both nodes in Berlin, fed the same events in the same order.
async fn feed(nodes: [&TestServer; 2], events: &[Value]) {
    for t in nodes {
        let (s, v) = t.api("PATCH", "", Some(json!({"time_zone": TZ}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for chunk in events.chunks(250) {
            crate::growth::capture(t, json!(chunk)).await;
        }
    }
}

async fn insight(t: &TestServer, kind: &str, body: &Value) -> (StatusCode, Value) {
    t.api("POST", &format!("/insights/{kind}"), Some(body.clone()))
        .await
}

/// The answer without the fields that depend on timing.
fn comparable(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("query_ms");
        o.remove("cached");
    }
    v
}

/// Where `a` and `b` differ, if they do: equal JSON, except that two numbers may differ by a relative 1e-9 (sums
/// of fractional property values are added in another order by ClickHouse than by the kernels, which changes
/// their last bits; a count differing by one is far outside this).
fn difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let close = (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
            (!close).then(|| format!("{at}: {x} ≠ {y}"))
        }
        (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => xs
            .iter()
            .zip(ys)
            .enumerate()
            .find_map(|(i, (x, y))| difference(x, y, &format!("{at}[{i}]"))),
        (Value::Object(xs), Value::Object(ys))
            if xs.keys().collect::<Vec<_>>() == ys.keys().collect::<Vec<_>>() =>
        {
            xs.iter()
                .find_map(|(k, x)| difference(x, &ys[k], &format!("{at}.{k}")))
        }
        _ => (a != b).then(|| format!("{at}: {a} ≠ {b}")),
    }
}

/// Definitions of every kind, over October 2026 (some over part of it): each must be answered from ClickHouse
/// exactly as from the embedded engine.
fn definitions() -> Vec<(&'static str, Value)> {
    let oct = |mut v: Value| {
        if v.get("date_from").is_none() {
            v["date_from"] = json!("2026-10-01");
        }
        if v.get("date_to").is_none() {
            v["date_to"] = json!("2026-10-31");
        }
        v
    };
    let pv = |math: &str| json!({"event": "$pageview", "math": math});
    let price = |math: &str| json!({"event": "$pageview", "math": math, "math_property": "price"});
    let per_user = |agg: &str| json!({"event": "$pageview", "math": "per_user", "per_user": agg});
    let funnel_steps = json!([{"event": "$pageview"}, {"event": "signup"}, {"event": "purchase"}]);
    vec![
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}, {"event": "purchase", "name": "Purchases"}, {"event": "$all"}]}),
            ),
        ),
        (
            "trends",
            oct(json!({"series": [pv("dau"), pv("weekly_active"), pv("monthly_active")]})),
        ),
        (
            "trends",
            oct(json!({"series": [pv("dau"), pv("monthly_active")], "interval": "week"})),
        ),
        (
            "trends",
            oct(
                json!({"series": [per_user("avg"), per_user("min"), per_user("max"), per_user("median")]}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [price("sum"), price("avg"), price("min"), price("max"), price("median"), price("p90"), price("p95"), price("p99")]}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}, pv("dau")], "breakdown": {"type": "event", "property": "plan", "limit": 2}}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [price("sum")], "breakdown": {"type": "event", "property": "browser"}}),
            ),
        ),
        (
            "trends",
            json!({"series": [{"event": "$pageview"}, pv("dau")], "compare": true, "date_from": "2026-10-16", "date_to": "2026-10-31"}),
        ),
        (
            "trends",
            json!({"series": [{"event": "$pageview"}], "breakdown": {"type": "event", "property": "plan"}, "compare": true, "date_from": "2026-10-20", "date_to": "2026-10-31"}),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "purchase"}, {"event": "$pageview"}], "formula": "A / B"}),
            ),
        ),
        (
            "trends",
            json!({"series": [{"event": "$all"}, pv("dau")], "interval": "hour", "date_from": "2026-10-24", "date_to": "2026-10-26"}),
        ),
        (
            "trends",
            oct(json!({
                "series": [{"event": "$pageview", "properties": [{"key": "browser", "value": ["Firefox", "Safari"], "operator": "exact"}]}],
                "properties": [{"key": "price", "value": 20, "operator": "gt"}, {"key": "plan", "value": "PR", "operator": "not_contains"}],
            })),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "signup"}], "interval": "month", "properties": [{"key": "plan", "operator": "is_set"}]}),
            ),
        ),
        ("funnel", oct(json!({"steps": funnel_steps}))),
        (
            "funnel",
            oct(
                json!({"steps": funnel_steps, "conversion_window": {"value": 1, "unit": "hour"}, "order": "strict"}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "signup"}, {"event": "purchase"}, {"event": "task_completed"}], "order": "unordered"}),
            ),
        ),
        // Steps that can match the same event: the embedded kernel runs in the node on ClickHouse's rows.
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "$pageview"}, {"event": "$pageview", "properties": [{"key": "browser", "value": "Chrome"}]}, {"event": "$all"}], "order": "unordered", "conversion_window": {"value": 6, "unit": "hour"}}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "signup"}, {"event": "signup"}, {"event": "$all"}], "order": "unordered", "trends": true, "interval": "week"}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "$pageview"}, {"event": "$pageview", "properties": [{"key": "browser", "value": "Chrome"}]}, {"event": "purchase"}], "order": "unordered", "breakdown": {"property": "plan", "limit": 2}, "breakdown_attribution": "last_touch"}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": funnel_steps, "exclusions": [{"event": "task_completed", "from_step": 0, "to_step": 1}]}),
            ),
        ),
        (
            "funnel",
            oct(json!({"steps": [{"event": "$pageview"}, {"event": "purchase"}], "trends": true})),
        ),
        (
            "funnel",
            oct(json!({"steps": funnel_steps, "breakdown": {"type": "event", "property": "plan"}})),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "$pageview"}, {"event": "purchase", "properties": [{"key": "price", "value": 50, "operator": "lt"}]}], "breakdown": {"type": "event", "property": "browser"}, "breakdown_attribution": "last_touch"}),
            ),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "$pageview", "period": "day", "periods": 14, "date_to": "2026-10-31"}),
        ),
        (
            "retention",
            json!({"start_event": "signup", "return_event": "purchase", "period": "week", "periods": 5, "cohort": "recurring", "mode": "on_or_after", "date_to": "2026-10-31"}),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "$pageview", "period": "week", "periods": 5, "date_to": "2026-10-31", "breakdown": {"type": "event", "property": "plan"}}),
        ),
        ("stickiness", oct(json!({"event": "$pageview"}))),
        (
            "stickiness",
            oct(json!({"event": "purchase", "interval": "week"})),
        ),
        ("lifecycle", oct(json!({"event": "$pageview"}))),
        (
            "lifecycle",
            oct(json!({"event": "$pageview", "interval": "week"})),
        ),
    ]
}

#[tokio::test]
async fn every_insight_kind_from_clickhouse_equals_the_embedded_answer() {
    let ch = test_support::start();
    let scaled = TestServer::on_clickhouse(&ch, DB).await;
    let embedded = TestServer::start().await;
    let events = seeded_events();
    assert!(events.len() > 500, "{} events", events.len());
    feed([&scaled, &embedded], &events).await;
    let (_, nonzero) = compare_all(&scaled, &embedded, &definitions()).await;
    // The answers count something (a comparison of empty answers would prove little).
    assert_eq!(nonzero, definitions().len());

    // Person properties: the persons' current ones, as the embedded engine reads them from its store.
    let people = person_definitions();
    let (before, nonzero) = compare_all(&scaled, &embedded, &people).await;
    assert_eq!(
        nonzero,
        people.len(),
        "every person definition counts something"
    );
    // Properties changed after the events, one removed, and a merge: an anonymous id with events and its own tier
    // identified as an existing person (whose properties win where both have one). Asked right after capture:
    // the answers must reflect all of it (the read barrier covers the persons too).
    let late = |event: &str, who: &str, props: Value| json!({"event": event, "distinct_id": who, "timestamp": "2026-10-30T09:00:00Z", "properties": props});
    let changes = json!([
        late(
            "settings_saved",
            "user-1",
            json!({"$set": {"tier": "platinum", "age": 99}})
        ),
        late(
            "settings_saved",
            "user-2",
            json!({"$set": {"tier": "gold"}})
        ),
        late("settings_saved", "user-6", json!({"$unset": ["tier"]})),
        late(
            "$pageview",
            "anon-late",
            json!({"$set": {"tier": "silver", "nickname": "late"}})
        ),
        late("signup", "anon-late", json!({})),
        late(
            "$identify",
            "user-3",
            json!({"$anon_distinct_id": "anon-late"})
        ),
    ]);
    for t in [&scaled, &embedded] {
        crate::growth::capture(t, changes.clone()).await;
    }
    let (after, _) = compare_all(&scaled, &embedded, &people).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        moved >= people.len() / 2,
        "the changes move most person answers ({moved} of {})",
        people.len()
    );

    // Read-your-writes: an event captured just now is in the next answer.
    let body = json!({"series": [{"event": "late_event"}], "date_from": "2026-10-01", "date_to": "2026-10-31"});
    crate::growth::capture(
        &scaled,
        json!([{"event": "late_event", "distinct_id": "user-1", "timestamp": "2026-10-30T12:00:00Z"}]),
    )
    .await;
    let (s, v) = insight(&scaled, "trends", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["complete"].clone(), v["result"][0]["count"].as_f64()),
        (json!(true), Some(1.0)),
        "{v}"
    );
}

/// Creates the same cohorts on both nodes (same ids): person properties with behaviour, an uploaded list, a
/// reference with "first time", a negated behaviour with an event filter, and a negated reference with a count
/// that zero satisfies. Returns their ids.
async fn same_cohorts(nodes: [&TestServer; 2]) -> Vec<u64> {
    let mut ids: Vec<Vec<u64>> = Vec::new();
    for t in nodes {
        let create = |body: Value| async move {
            let v = t.created("/cohorts", body).await;
            v["id"].as_u64().unwrap()
        };
        let a = create(json!({"name": "Engaged gold or silver", "filters": {"properties": {"type": "AND", "values": [
            {"type": "person", "key": "tier", "operator": "exact", "value": ["gold", "silver"]},
            {"type": "behavioral", "value": "performed_event_multiple", "key": "task_completed",
             "operator": "gte", "operator_value": 2, "explicit_datetime": "2026-10-05"},
        ]}}}))
        .await;
        let b = create(json!({"name": "Uploaded", "is_static": true})).await;
        let (s, v) = t
            .api(
                "POST",
                &format!("/cohorts/{b}/members"),
                Some(json!({"distinct_ids": ["user-1", "anon-4", "user-8", "user-13", "user-22", "nobody"]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let c = create(
            json!({"name": "Uploaded or new", "filters": {"properties": {"type": "OR", "values": [
                {"type": "cohort", "key": "id", "value": b},
                {"type": "behavioral", "value": "performed_event_first_time", "key": "signup",
                 "explicit_datetime": "2026-10-20"},
            ]}}}),
        )
        .await;
        let d = create(json!({"name": "Never on Chrome, tiered", "filters": {"properties": {"type": "AND", "values": [
            {"type": "behavioral", "value": "performed_event", "key": "$pageview",
             "time_value": 3650, "time_interval": "day", "negation": true,
             "event_filters": [{"key": "browser", "type": "event", "value": "Chrome"}]},
            {"type": "person", "key": "tier", "operator": "is_set"},
        ]}}}))
        .await;
        let e = create(json!({"name": "Not engaged, few purchases", "filters": {"properties": {"type": "AND", "values": [
            {"type": "cohort", "key": "id", "value": a, "negation": true},
            {"type": "behavioral", "value": "performed_event_multiple", "key": "purchase",
             "operator": "lt", "operator_value": 2, "time_value": 365, "time_interval": "day"},
        ]}}}))
        .await;
        ids.push(vec![a, b, c, d, e]);
    }
    assert_eq!(ids[0], ids[1], "both nodes number the cohorts alike");
    ids.remove(0)
}

#[tokio::test]
async fn cohort_filters_and_breakdowns_from_clickhouse_equal_the_embedded_answer() {
    let ch = test_support::start();
    let scaled = TestServer::on_clickhouse(&ch, "fw_cohorts").await;
    let embedded = TestServer::start().await;
    feed([&scaled, &embedded], &seeded_events()).await;
    let ids = same_cohorts([&scaled, &embedded]).await;
    let [a, b, c, d, e] = ids[..] else {
        unreachable!()
    };
    let oct = |mut v: Value| {
        v["date_from"] = json!("2026-10-01");
        v["date_to"] = json!("2026-10-31");
        v
    };
    let cohort = |id: u64| json!({"type": "cohort", "id": id});
    let steps = json!([{"event": "$pageview"}, {"event": "signup"}, {"event": "purchase"}]);
    let definitions = vec![
        (
            "trends",
            oct(json!({"series": [{"event": "$pageview"}], "properties": [cohort(a)]})),
        ),
        (
            "trends",
            oct(json!({"series": [
                {"event": "$pageview", "math": "dau", "properties": [cohort(c)]},
                {"event": "purchase", "properties": [{"type": "cohort", "id": e, "negate": true}]},
                {"event": "$pageview", "properties": [cohort(d)]},
            ]})),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}, {"event": "signup", "math": "dau"}], "breakdown": {"type": "cohort", "ids": ids}}),
            ),
        ),
        (
            "funnel",
            oct(json!({"steps": steps, "breakdown": {"type": "cohort", "ids": [a, c, e]}})),
        ),
        (
            "funnel",
            oct(json!({"steps": steps, "properties": [cohort(b)]})),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "$pageview", "period": "week", "periods": 5, "date_to": "2026-10-31", "properties": [cohort(e)]}),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "purchase", "period": "week", "periods": 5, "date_to": "2026-10-31", "breakdown": {"type": "cohort", "ids": [b, d]}}),
        ),
        (
            "stickiness",
            oct(json!({"event": "$pageview", "breakdown": {"type": "cohort", "ids": [e, b]}})),
        ),
        (
            "lifecycle",
            oct(json!({"event": {"event": "$pageview", "properties": [cohort(c)]}})),
        ),
    ];
    let (answers, nonzero) = compare_all(&scaled, &embedded, &definitions).await;
    assert_eq!(
        nonzero,
        definitions.len(),
        "every definition counts something"
    );
    // The cohort API: sizes and members (by person id, with their distinct ids) as the embedded engine's.
    for id in &ids {
        let mut seen = Vec::new();
        for t in [&scaled, &embedded] {
            let (s, cohort) = t.api("GET", &format!("/cohorts/{id}"), None).await;
            assert_eq!(s, StatusCode::OK, "{cohort}");
            let (s, mut page) = t
                .api("GET", &format!("/cohorts/{id}/persons?limit=1000"), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{page}");
            for p in page["results"].as_array_mut().unwrap() {
                let mut dids: Vec<Value> = p["distinct_ids"].as_array().unwrap().clone();
                dids.sort_by_key(|d| d.to_string());
                p["distinct_ids"] = json!(dids);
            }
            assert_eq!(page["count"], cohort["count"], "{page}");
            seen.push((cohort["count"].clone(), page["results"].clone()));
        }
        assert_eq!(seen[0], seen[1], "cohort {id}: ClickHouse, then embedded");
        assert!(seen[0].0.as_u64().unwrap() > 0, "cohort {id} has members");
    }
    // Each cohort counts something and not everything: the first series of the breakdown differs per cohort.
    let split: Vec<f64> = answers[2]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["series"] == 0)
        .map(|r| r["count"].as_f64().unwrap())
        .collect();
    assert_eq!(split.len(), 5, "{}", answers[2]);
    assert!(split.iter().all(|&n| n > 0.0), "{split:?}");
    let (_, all) = insight(
        &embedded,
        "trends",
        &oct(json!({"series": [{"event": "$pageview"}]})),
    )
    .await;
    let total = all["result"][0]["count"].as_f64().unwrap();
    assert!(split.iter().all(|&n| n < total), "{split:?} of {total}");
}

/// Events of 30 persons over October with `$groups` (a company, sometimes a team; some rows without groups, one
/// company the store never heard of, one key that is a number), and the companies' and teams' properties set by
/// `$groupidentify` (a string, a number, null, missing).
fn group_events() -> Vec<Value> {
    let mut rng = Lcg(0x6_0095);
    let mut out = Vec::new();
    let companies = [
        "acme",
        "globex",
        "initech",
        "umbrella",
        "it's \\ odd",
        "ghost",
    ];
    for (i, c) in companies.iter().enumerate().take(5) {
        let mut set = json!({"employees": i * 10});
        match i {
            0 | 3 => set["plan"] = json!("pro"),
            1 => set["plan"] = json!("free"),
            2 => set["plan"] = json!(7),
            _ => set["plan"] = Value::Null,
        }
        out.push(json!({"event": "$groupidentify", "distinct_id": "admin", "timestamp": "2026-09-30T12:00:00Z",
                        "properties": {"$group_type": "company", "$group_key": c, "$group_set": set}}));
    }
    for t in ["red", "blue"] {
        out.push(json!({"event": "$groupidentify", "distinct_id": "admin", "timestamp": "2026-09-30T12:00:00Z",
                        "properties": {"$group_type": "team", "$group_key": t, "$group_set": {"size": t.len()}}}));
    }
    for p in 0..30u64 {
        for _ in 0..(3 + rng.below(8)) {
            let day = 1 + rng.below(30);
            let event = ["$pageview", "$pageview", "signup", "purchase"][rng.below(4) as usize];
            let mut props = json!({});
            match rng.below(8) {
                0 => {}
                1 => props["$groups"] = json!({"company": 42}),
                2 => {
                    let team = ["red", "blue"][(p % 2) as usize];
                    props["$groups"] = json!({ "team": team });
                }
                _ => {
                    let c = companies[((p + rng.below(2)) % 6) as usize];
                    props["$groups"] = json!({"company": c});
                    if p % 3 == 0 {
                        props["$groups"]["team"] = json!("red");
                    }
                }
            }
            out.push(json!({"event": event, "distinct_id": format!("user-{p}"),
                            "timestamp": format!("2026-10-{day:02}T{:02}:{:02}:{:02}Z", rng.below(24), rng.below(60), rng.below(60)),
                            "properties": props}));
        }
    }
    out
}

#[tokio::test]
async fn group_filters_and_breakdowns_from_clickhouse_equal_the_embedded_answer() {
    let ch = test_support::start();
    let scaled = TestServer::on_clickhouse(&ch, "fw_groups").await;
    let embedded = TestServer::start().await;
    feed([&scaled, &embedded], &group_events()).await;
    let oct = |mut v: Value| {
        v["date_from"] = json!("2026-10-01");
        v["date_to"] = json!("2026-10-31");
        v
    };
    let group = |index: u8, key: &str, op: &str, value: Value| json!({"key": key, "type": "group", "group_type_index": index, "operator": op, "value": value});
    let by_plan = json!({"type": "group", "group_type_index": 0, "property": "plan", "limit": 2});
    let steps = json!([{"event": "$pageview"}, {"event": "signup"}, {"event": "purchase"}]);
    let definitions = vec![
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}], "properties": [group(0, "plan", "exact", json!("pro"))]}),
            ),
        ),
        (
            "trends",
            oct(json!({"series": [
                {"event": "$pageview", "math": "dau", "properties": [group(0, "plan", "is_not", json!("pro"))]},
                {"event": "signup", "properties": [group(1, "size", "gt", json!(3))]},
                {"event": "$pageview", "properties": [group(0, "plan", "is_set", Value::Null)]},
                {"event": "$pageview", "properties": [group(0, "employees", "lte", json!(20))]},
                {"event": "purchase", "properties": [group(0, "plan", "is_not_set", Value::Null)]},
                {"event": "$pageview", "properties": [group(3, "plan", "is_not_set", Value::Null)]},
            ]})),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}, {"event": "purchase", "math": "dau"}], "breakdown": by_plan}),
            ),
        ),
        (
            "trends",
            oct(
                json!({"series": [{"event": "$pageview"}], "breakdown": {"type": "group", "group_type_index": 0, "property": "employees"}}),
            ),
        ),
        ("funnel", oct(json!({"steps": steps, "breakdown": by_plan}))),
        (
            "funnel",
            oct(
                json!({"steps": steps, "properties": [group(0, "plan", "exact", json!(["pro", 7]))]}),
            ),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "$pageview", "period": "week", "periods": 5, "date_to": "2026-10-31", "breakdown": {"type": "group", "group_type_index": 0, "property": "plan"}}),
        ),
        (
            "stickiness",
            oct(
                json!({"event": "$pageview", "properties": [group(0, "plan", "exact", json!("free"))]}),
            ),
        ),
        (
            "funnel",
            oct(json!({"steps": steps, "aggregation": "group:0"})),
        ),
        (
            "funnel",
            oct(
                json!({"steps": steps, "aggregation": "group:1", "order": "strict", "breakdown": by_plan}),
            ),
        ),
        (
            "funnel",
            oct(
                json!({"steps": [{"event": "$pageview"}, {"event": "purchase"}], "aggregation": "group:0", "trends": true}),
            ),
        ),
        (
            "retention",
            json!({"start_event": "$pageview", "return_event": "purchase", "period": "week", "periods": 5, "date_to": "2026-10-31", "aggregation": "group:0", "properties": [group(0, "plan", "is_set", Value::Null)]}),
        ),
        (
            "lifecycle",
            oct(
                json!({"event": {"event": "$pageview", "properties": [group(0, "plan", "is_not", json!("free"))]}}),
            ),
        ),
    ];
    let (answers, nonzero) = compare_all(&scaled, &embedded, &definitions).await;
    assert_eq!(
        nonzero,
        definitions.len(),
        "every definition counts something"
    );
    // The plan breakdown splits the page views: two ranked plans, the others, and rows without a plan.
    let labels: Vec<&Value> = answers[2]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["series"] == 0)
        .map(|r| &r["breakdown_value"])
        .collect();
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert_eq!(labels[3], &Value::Null, "{labels:?}");
}

/// `?funnel_step=`'s list as the embedded engine gives it, sorted (the embedded engine lists in its own person
/// order, ClickHouse by person id).
async fn step_list(t: &TestServer, step: i32, body: &Value) -> Value {
    let (s, v) = t
        .api(
            "POST",
            &format!("/insights/funnel?funnel_step={step}&limit=1000"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}: {v}");
    let mut persons = v["persons"].clone();
    let mut results = persons["results"].as_array().cloned().unwrap_or_default();
    for r in &mut results {
        if let Some(d) = r["distinct_ids"].as_array_mut() {
            d.sort_by_key(|x| x.to_string());
        }
    }
    results.sort_by_key(|r| r.to_string());
    persons["results"] = json!(results);
    persons
}

#[tokio::test]
async fn funnel_step_persons_from_clickhouse_equal_the_embedded_ones() {
    let ch = test_support::start();
    let scaled = TestServer::on_clickhouse(&ch, "fw_funnel_persons").await;
    let embedded = TestServer::start().await;
    feed([&scaled, &embedded], &seeded_events()).await;
    let oct = |mut v: Value| {
        v["date_from"] = json!("2026-10-01");
        v["date_to"] = json!("2026-10-31");
        v
    };
    let steps = json!([{"event": "$pageview"}, {"event": "signup"}, {"event": "purchase"}]);
    // Steps that match the same event with other filters, and `$all`: answered by the kernel in the node.
    let overlapping = json!([{"event": "$pageview"}, {"event": "$pageview", "properties": [{"key": "plan", "value": "pro"}]}, {"event": "$all"}]);
    let funnels = [
        oct(
            json!({"steps": overlapping, "order": "unordered", "conversion_window": {"value": 3, "unit": "hour"}}),
        ),
        oct(json!({"steps": steps})),
        oct(
            json!({"steps": steps, "order": "strict", "breakdown": {"type": "event", "property": "plan"}}),
        ),
        oct(
            json!({"steps": steps, "order": "unordered", "conversion_window": {"value": 2, "unit": "hour"}}),
        ),
        oct(
            json!({"steps": steps, "exclusions": [{"event": "task_completed", "from_step": 0, "to_step": 1}]}),
        ),
    ];
    let mut listed = 0;
    for body in &funnels[..] {
        for step in [1, 2, 3, -2, -3] {
            let from_ch = step_list(&scaled, step, body).await;
            let local = step_list(&embedded, step, body).await;
            assert_eq!(from_ch, local, "funnel_step={step} {body}");
            listed += from_ch["count"].as_u64().unwrap();
        }
    }
    assert!(listed > 100, "the steps list persons ({listed})");
    // Accounts: a group-aggregated funnel lists group keys.
    let (scaled_g, embedded_g) = (
        TestServer::on_clickhouse(&ch, "fw_funnel_groups").await,
        TestServer::start().await,
    );
    feed([&scaled_g, &embedded_g], &group_events()).await;
    let body = oct(json!({"steps": steps, "aggregation": "group:0"}));
    for step in [1, 2, 3, -2, -3] {
        let from_ch = step_list(&scaled_g, step, &body).await;
        assert_eq!(from_ch, step_list(&embedded_g, step, &body).await, "{step}");
        if step == 1 {
            assert!(from_ch["count"].as_u64().unwrap() > 1, "{from_ch}");
            assert!(from_ch["results"][0]["group_key"].is_string(), "{from_ch}");
        }
    }
    // A step outside the funnel is refused as on the embedded engine.
    let (s, v) = scaled
        .api(
            "POST",
            "/insights/funnel?funnel_step=4",
            Some(funnels[0].clone()),
        )
        .await;
    assert_eq!(
        (s, &v["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("funnel_step")),
        "{v}"
    );
}

#[tokio::test]
async fn unsupported_definitions_are_refused_and_a_stopped_clickhouse_is_a_503() {
    let mut ch = test_support::start();
    let t = TestServer::on_clickhouse(&ch, DB).await;
    crate::growth::capture(
        &t,
        json!([{"event": "$pageview", "distinct_id": "a", "properties": {"plan": "pro"}, "$set": {"email": "a@x.test"}}]),
    )
    .await;
    let trends = |extra: Value| {
        let mut v = json!({"series": [{"event": "$pageview"}], "date_from": "-7d"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // Each names its field; the embedded engine could answer some of them, but only for this node's events.
    let cases = [
        (
            "trends",
            trends(
                json!({"properties": [{"key": "email", "value": "\\ba@", "operator": "regex", "type": "person"}]}),
            ),
            "properties[0].value",
        ),
        (
            "trends",
            trends(json!({"properties": [{"key": "plan", "value": "p\\b", "operator": "regex"}]})),
            "properties[0].value",
        ),
    ];
    for (kind, body, field) in cases {
        let (s, v) = insight(&t, kind, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{kind} {body}: {v}");
        assert_eq!(v["code"], "unsupported", "{v}");
        let named = v["errors"][0]["field"].as_str().unwrap_or_default();
        assert!(
            named.starts_with(field),
            "{kind} {body}: want {field}, got {v}"
        );
        assert!(v["message"].as_str().unwrap().starts_with(named), "{v}");
    }
    let (s, v) = insight(&t, "trends", &trends(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"][0]["count"].as_f64(), Some(1.0), "{v}");
    // Person properties are answered: the one person has this email.
    let by_email = trends(
        json!({"properties": [{"key": "email", "value": "a@x.test", "operator": "exact", "type": "person"}]}),
    );
    let (s, v) = insight(&t, "trends", &by_email).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"][0]["count"].as_f64(), Some(1.0), "{v}");

    // ClickHouse down: a 503 that says so, with Retry-After; back up, answers again.
    ch.stop();
    let req =
        axum::http::Request::post(format!("/api/v1/projects/{}/insights/trends", t.project_id))
            .header("authorization", format!("Bearer {}", t.personal_key))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(trends(json!({})).to_string()))
            .unwrap();
    let (s, v, h) = t.send(req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["code"], "events_unavailable", "{v}");
    assert!(v["message"].as_str().unwrap().contains("ClickHouse"), "{v}");
    assert!(h.get("retry-after").is_some());
    ch.restart();
    let (s, v) = insight(&t, "trends", &trends(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"][0]["count"].as_f64(), Some(1.0), "{v}");
}

/// Events of one person at the same microsecond are ordered by the log, as the embedded engine orders them, not by
/// uuid: `t1` and `t2` each log `a` then `b` at one instant, with uuids in the other order. The ordered funnel
/// a → b converts both on both engines (by uuid it would convert neither).
#[tokio::test]
async fn same_microsecond_events_follow_the_log_order() {
    let ch = test_support::start();
    let scaled = TestServer::on_clickhouse(&ch, "fw_ties").await;
    let embedded = TestServer::start().await;
    let at = "2026-10-10T10:00:00.123456Z";
    let e = |event: &str, who: &str, uuid: &str| {
        json!({"event": event, "distinct_id": who, "timestamp": at, "uuid": uuid,
               "properties": {"step": event}})
    };
    let events = vec![
        e("a", "t1", "00000000-0000-4000-8000-000000000009"),
        e("b", "t1", "00000000-0000-4000-8000-000000000001"),
        e("a", "t2", "00000000-0000-4000-8000-000000000008"),
        e("b", "t2", "00000000-0000-4000-8000-000000000002"),
    ];
    feed([&scaled, &embedded], &events).await;
    let funnel = |extra: Value| {
        let mut f = json!({"steps": [{"event": "a"}, {"event": "b"}],
                           "date_from": "2026-10-01", "date_to": "2026-10-31"});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    let (answers, _) = compare_all(
        &scaled,
        &embedded,
        &[
            ("funnel", funnel(json!({}))),
            (
                "funnel",
                funnel(json!({"breakdown": {"type": "event", "property": "step"}})),
            ),
            // Attributed to the second step: its value (`b`) is not among the first step's ranked values.
            (
                "funnel",
                funnel(json!({"breakdown": {"type": "event", "property": "step"},
                              "breakdown_attribution": "step:1"})),
            ),
        ],
    )
    .await;
    let steps = &answers[0]["result"]["steps"];
    assert_eq!(
        (steps[0]["count"].as_u64(), steps[1]["count"].as_u64()),
        (Some(2), Some(2)),
        "both entered and converted: {}",
        answers[0]
    );
}
