//! Product-qualified-lead models (scores, explanations, threshold announcements, versions, backtests) and trials.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::{Lcg, TestServer};

const DAY: i64 = 86_400;

async fn capture(t: &TestServer, batch: Vec<Value>) {
    for chunk in batch.chunks(500) {
        let (s, v) = t
            .post(
                "/batch",
                json!({"api_key": t.token, "batch": chunk}).to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

/// An event `days_ago` days before now (fractions allowed).
fn ev(who: &str, event: &str, days_ago: f64, props: Value) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::milliseconds((days_ago * 86_400_000.0) as i64);
    json!({"event": event, "distinct_id": who, "timestamp": at.to_rfc3339(), "properties": props})
}

fn model() -> Value {
    json!({"key": "pql", "name": "Product-qualified", "threshold": 40,
        "rules": [
            {"id": "active", "event": "$pageview", "window_days": 7, "min_count": 3, "points": 20},
            {"id": "invites", "event": "invite_sent", "per_event": true, "points": 10, "max_points": 30},
            {"id": "team_plan", "where": [{"key": "plan", "value": "team", "type": "person"}], "points": 15},
        ],
        "disqualifiers": [{"id": "staff", "where": [{"key": "email", "operator": "contains", "value": "@flywheel.test"}]}]})
}

async fn outbox(t: &TestServer) -> Vec<Value> {
    let (s, v) = t.api("GET", "/outbox?topic=pql.qualified", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["results"].as_array().unwrap().clone()
}

async fn score(t: &TestServer) -> Value {
    let (s, v) = t.api("POST", "/pql-models/pql/score", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn pql_scores_explain_themselves_and_announce_threshold_crossings() {
    let t = TestServer::start().await;
    // Validation by field.
    let (s, v) = t
        .api(
            "POST",
            "/pql-models",
            Some(json!({"key": "bad", "name": "B", "threshold": -1,
                "rules": [{"id": "x", "where": [{"key": "a", "value": 1}], "points": 1}, {"id": "y", "event": "e"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["threshold", "rules[1].points"], "{v}");
    let (s, v) = t
        .api(
            "POST",
            "/pql-models",
            Some(json!({"key": "props", "name": "P", "threshold": 1,
                "rules": [{"id": "x", "where": [{"key": "a", "value": 1}], "points": 1}]})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a model without event rules: {v}"
    );
    assert_eq!(v["errors"][0]["field"], "rules");
    t.created("/pql-models", model()).await;

    let mut batch = Vec::new();
    // ann: 4 recent pageviews (20) and 2 invites (20) → 40, a lead.
    for i in 0..4 {
        batch.push(ev("ann", "$pageview", 0.5 + i as f64 * 0.5, json!({})));
    }
    for i in 0..2 {
        batch.push(ev("ann", "invite_sent", 1.0 + i as f64, json!({})));
    }
    // bob: 2 pageviews (not enough) and 1 invite → 10.
    batch.push(ev("bob", "$pageview", 1.0, json!({})));
    batch.push(ev("bob", "$pageview", 2.0, json!({})));
    batch.push(ev("bob", "invite_sent", 1.0, json!({})));
    // cy: 3 pageviews, one outside the 7-day window, on the team plan → 15.
    batch.push(ev(
        "cy",
        "$pageview",
        10.0,
        json!({"$set": {"plan": "team"}}),
    ));
    batch.push(ev("cy", "$pageview", 1.0, json!({})));
    batch.push(ev("cy", "$pageview", 2.0, json!({})));
    // dee: would score 50, but is staff.
    for i in 0..5 {
        batch.push(ev(
            "dee",
            "$pageview",
            1.0 + i as f64 * 0.1,
            json!({"$set": {"email": "Dee@Flywheel.test"}}),
        ));
        batch.push(ev("dee", "invite_sent", 1.0 + i as f64 * 0.1, json!({})));
    }
    // eve: 3 pageviews and the team plan → 35, until she invites someone.
    for i in 0..3 {
        batch.push(ev(
            "eve",
            "$pageview",
            1.0 + i as f64,
            json!({"$set": {"plan": "team"}}),
        ));
    }
    capture(&t, batch).await;

    let stats = score(&t).await;
    assert_eq!(stats["scored"], 5, "{stats}");
    assert_eq!(stats["qualified"], 1, "{stats}");
    assert_eq!(stats["newly_qualified"], 1, "{stats}");

    let (s, v) = t.api("GET", "/pql-models/pql/scores", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let by_label: std::collections::HashMap<String, Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["label"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    let scores: Vec<(&str, f64, bool)> = ["ann", "eve", "cy", "bob", "dee"]
        .iter()
        .map(|l| {
            let r = &by_label[*l];
            (
                *l,
                r["score"].as_f64().unwrap(),
                r["qualified"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        scores,
        [
            ("ann", 40.0, true),
            ("eve", 35.0, false),
            ("cy", 15.0, false),
            ("bob", 10.0, false),
            ("dee", 0.0, false)
        ]
    );
    assert_eq!(by_label["dee"]["disqualified_by"], "staff");
    assert_eq!(
        by_label["ann"]["explanation"],
        json!([{"rule": "active", "points": 20.0, "count": 4}, {"rule": "invites", "points": 20.0, "count": 2}])
    );
    assert_eq!(
        by_label["cy"]["explanation"],
        json!([{"rule": "team_plan", "points": 15.0}])
    );
    // Highest first; `qualified=true` lists the leads only; one entity by distinct id.
    assert_eq!(v["results"][0]["label"], "ann");
    let (_, leads) = t
        .api("GET", "/pql-models/pql/scores?qualified=true", None)
        .await;
    assert_eq!(leads["results"].as_array().unwrap().len(), 1, "{leads}");
    let (s, one) = t.api("GET", "/pql-models/pql/scores/eve", None).await;
    assert_eq!(
        (s, one["score"].as_f64()),
        (StatusCode::OK, Some(35.0)),
        "{one}"
    );
    let (s, _) = t.api("GET", "/pql-models/pql/scores/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .api("GET", "/pql-models/pql/scores?qualified=maybe", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The crossing was announced with its explanation.
    let entries = outbox(&t).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let p = &entries[0]["payload"];
    assert_eq!(
        (p["label"].as_str(), p["score"].as_f64()),
        (Some("ann"), Some(40.0)),
        "{p}"
    );
    assert_eq!(p["version"], 1);
    assert_eq!(p["explanation"].as_array().unwrap().len(), 2);

    // eve invites someone: 45, announced once; scoring again announces nothing new.
    capture(&t, vec![ev("eve", "invite_sent", 0.1, json!({}))]).await;
    let stats = score(&t).await;
    assert_eq!(stats["newly_qualified"], 1, "{stats}");
    let stats = score(&t).await;
    assert_eq!(
        (stats["newly_qualified"].as_u64(), stats["changed"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    let entries = outbox(&t).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["payload"]["label"], "eve");

    // A new version: the threshold moves; versions and diffs say what changed.
    let (s, v) = t
        .api(
            "PATCH",
            "/pql-models/pql",
            Some(json!({"threshold": 44, "version": 1})),
        )
        .await;
    assert_eq!((s, v["version"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    let (s, v) = t
        .api(
            "PATCH",
            "/pql-models/pql",
            Some(json!({"threshold": 45, "version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a stale version: {v}");
    let (_, versions) = t.api("GET", "/pql-models/pql/versions", None).await;
    let list = versions["results"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{versions}");
    assert_eq!(
        list[1]["changes"],
        json!([{"path": "body.threshold", "before": 40.0, "after": 44.0}])
    );
    let (s, diff) = t.api("GET", "/pql-models/pql/diff?from=1&to=2", None).await;
    assert_eq!(s, StatusCode::OK, "{diff}");
    assert_eq!(diff["changes"][0]["path"], "body.threshold");
    let (s, _) = t.api("GET", "/pql-models/pql/diff?from=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let stats = score(&t).await;
    assert_eq!(
        stats["qualified"], 1,
        "only eve (45) is still a lead: {stats}"
    );
    let (_, ann) = t.api("GET", "/pql-models/pql/scores/ann", None).await;
    assert_eq!(
        (ann["qualified"].as_bool(), ann["version"].as_i64()),
        (Some(false), Some(2))
    );
}

#[tokio::test]
async fn account_models_score_groups() {
    let t = TestServer::start().await;
    t.created(
        "/pql-models",
        json!({"key": "pql", "name": "Accounts", "threshold": 30, "unit": "company",
            "rules": [{"id": "seats", "event": "seat_added", "per_event": true, "points": 10}]}),
    )
    .await;
    let mut batch = Vec::new();
    for (who, company, n) in [("a1", "acme", 2), ("a2", "acme", 2), ("b1", "beta", 1)] {
        for _ in 0..n {
            batch.push(ev(
                who,
                "seat_added",
                1.0,
                json!({"$groups": {"company": company}}),
            ));
        }
    }
    capture(&t, batch).await;
    let stats = score(&t).await;
    assert_eq!(
        (stats["scored"].as_u64(), stats["qualified"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    let (_, acme) = t.api("GET", "/pql-models/pql/scores/acme", None).await;
    assert_eq!(acme["score"].as_f64(), Some(40.0), "{acme}");
    assert_eq!(outbox(&t).await[0]["payload"]["unit"], "company");
}

#[tokio::test]
async fn a_backtest_reports_how_scores_predicted_conversion() {
    let t = TestServer::start().await;
    t.created(
        "/pql-models",
        json!({"key": "pql", "name": "Usage", "threshold": 30,
            "rules": [{"id": "use", "event": "report_run", "per_event": true, "points": 5, "window_days": 14},
                      {"id": "invite", "event": "invite_sent", "min_count": 1, "points": 10, "window_days": 14}]}),
    )
    .await;
    // 200 users active in the two weeks before `as_of` (20 days ago); the more they used the product, the likelier
    // they paid in the 15 days after it. 10 paid before `as_of` (not leads any more).
    let as_of_days = 20.0;
    let mut rng = Lcg(42);
    let mut batch = Vec::new();
    // (score, converted) as the test computes them.
    let mut expected: Vec<(f64, bool)> = Vec::new();
    let mut already = 0;
    for u in 0..200 {
        let who = format!("u{u}");
        let runs = rng.below(10);
        let invites = rng.below(3);
        for _ in 0..runs {
            batch.push(ev(
                &who,
                "report_run",
                as_of_days + 0.5 + rng.below(13) as f64,
                json!({}),
            ));
        }
        for _ in 0..invites {
            batch.push(ev(
                &who,
                "invite_sent",
                as_of_days + 0.5 + rng.below(13) as f64,
                json!({}),
            ));
        }
        if runs + invites == 0 {
            continue;
        }
        if u % 20 == 0 {
            batch.push(ev(&who, "paid", as_of_days + 0.25, json!({"plan": "team"})));
            already += 1;
            continue;
        }
        let score = (runs * 5) as f64 + if invites > 0 { 10.0 } else { 0.0 };
        let converts = rng.below(60) < (score as u64);
        if converts {
            batch.push(ev(
                &who,
                "paid",
                as_of_days - 1.0 - rng.below(10) as f64,
                json!({"plan": "team"}),
            ));
            // A free "payment" does not count.
        } else if rng.below(4) == 0 {
            batch.push(ev(&who, "paid", as_of_days - 2.0, json!({"plan": "free"})));
        }
        expected.push((score, converts));
    }
    capture(&t, batch).await;

    let as_of = (chrono::Utc::now() - chrono::Duration::seconds((as_of_days * DAY as f64) as i64))
        .to_rfc3339();
    let body = json!({"as_of": as_of, "horizon_days": 15, "bands": 4,
        "converted": {"event": "paid", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]}});
    let (s, r) = t
        .api("POST", "/pql-models/pql/backtest", Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    // The independent computation.
    let n = expected.len();
    let converted = expected.iter().filter(|x| x.1).count();
    let leads: Vec<&(f64, bool)> = expected.iter().filter(|x| x.0 >= 30.0).collect();
    let leads_converted = leads.iter().filter(|x| x.1).count();
    let (mut wins, mut pairs) = (0.0, 0.0);
    for a in expected.iter().filter(|x| x.1) {
        for b in expected.iter().filter(|x| !x.1) {
            pairs += 1.0;
            wins += if a.0 > b.0 {
                1.0
            } else if a.0 == b.0 {
                0.5
            } else {
                0.0
            };
        }
    }
    assert_eq!(r["entities"], n, "{r:#}");
    assert_eq!(r["already_converted"], already);
    assert_eq!(r["converted"], converted);
    assert_eq!(r["qualified"]["entities"], leads.len());
    assert_eq!(r["qualified"]["converted"], leads_converted);
    assert!(
        (r["auc"].as_f64().unwrap() - wins / pairs).abs() < 1e-9,
        "{r:#}"
    );
    assert!(
        r["auc"].as_f64().unwrap() > 0.6,
        "usage predicts payment here: {r:#}"
    );
    let bands = r["bands"].as_array().unwrap();
    assert!(bands.len() >= 3, "{r:#}");
    let band_total: u64 = bands.iter().map(|b| b["entities"].as_u64().unwrap()).sum();
    assert_eq!(band_total as usize, n);
    let lift = r["qualified"]["lift"].as_f64().unwrap();
    assert!(lift > 1.0, "leads convert above the base rate: {r:#}");

    // Backtesting an earlier version; bad bodies are 400 by field.
    let (s, _) = t
        .api("PATCH", "/pql-models/pql", Some(json!({"threshold": 1000})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut old = body.clone();
    old["version"] = json!(1);
    let (_, r1) = t.api("POST", "/pql-models/pql/backtest", Some(old)).await;
    assert_eq!(
        (r1["version"].as_i64(), r1["threshold"].as_f64()),
        (Some(1), Some(30.0)),
        "{r1}"
    );
    assert_eq!(r1["qualified"]["entities"], leads.len());
    let (_, r2) = t.api("POST", "/pql-models/pql/backtest", Some(body)).await;
    assert_eq!(r2["qualified"]["entities"], 0, "{r2}");
    let (s, v) = t
        .api(
            "POST",
            "/pql-models/pql/backtest",
            Some(json!({"as_of": "yesterday", "horizon_days": 0, "converted": {"properties": []}, "extra": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["extra", "as_of", "horizon_days", "converted.event"],
        "{v}"
    );
}

#[tokio::test]
async fn trials_start_activate_convert_and_expire() {
    let t = TestServer::start().await;
    let (s, v) = t
        .api(
            "POST",
            "/trials",
            Some(json!({"key": "pro", "name": "Pro", "length_days": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    t.created(
        "/trials",
        json!({"key": "pro", "name": "Pro trial", "length_days": 14,
            "started": {"event": "trial_started"}, "activated": {"event": "project_created"},
            "converted": {"event": "subscription_started", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]}}),
    )
    .await;
    // 60 trials over the last 40 days: activation and conversion at random; the test keeps what it generated.
    let mut rng = Lcg(7);
    let mut batch = Vec::new();
    // (started days ago, activated and converted so many days after the start)
    let mut made: Vec<(f64, Option<f64>, Option<f64>)> = Vec::new();
    for u in 0..60 {
        let who = format!("t{u}");
        let start = 1.0 + rng.below(40) as f64 + 0.5;
        batch.push(ev(&who, "trial_started", start, json!({})));
        // Activity before the trial does not activate it.
        batch.push(ev(&who, "project_created", start + 1.0, json!({})));
        let activated = (rng.below(3) > 0)
            .then(|| rng.below(5) as f64 + 0.25)
            .filter(|a| *a < start);
        if let Some(a) = activated {
            batch.push(ev(&who, "project_created", start - a, json!({})));
        }
        let converted = (rng.below(2) == 0)
            .then(|| rng.below(20) as f64 + 0.5)
            .filter(|c| *c < start);
        if let Some(c) = converted {
            batch.push(ev(
                &who,
                "subscription_started",
                start - c,
                json!({"plan": "pro"}),
            ));
        } else {
            batch.push(ev(
                &who,
                "subscription_started",
                start / 2.0,
                json!({"plan": "free"}),
            ));
        }
        made.push((start, activated, converted));
    }
    capture(&t, batch).await;
    // One more from the API: started and converted by the backend.
    for state in ["started", "converted"] {
        let (s, v) = t
            .api(
                "POST",
                "/trials/pro/transitions",
                Some(json!({"distinct_id": "api-user", "state": state})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    made.push((0.0, None, Some(0.0)));
    let (s, v) = t
        .api(
            "POST",
            "/trials/pro/transitions",
            Some(json!({"distinct_id": "x", "state": "paid", "group_key": "acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2, "{v}");

    let (s, r) = t
        .api(
            "GET",
            "/trials/pro/report?interval=week&date_from=2000-01-01",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let started = made.len();
    let activated = made.iter().filter(|m| m.1.is_some()).count();
    let converted = made.iter().filter(|m| m.2.is_some()).count();
    let in_trial = made
        .iter()
        .filter(|m| m.2.is_some_and(|c| c < 14.0))
        .count();
    let expired = made.iter().filter(|m| m.2.is_none() && m.0 >= 14.0).count();
    let totals = &r["totals"];
    assert_eq!(totals["started"], started, "{r:#}");
    assert_eq!(totals["activated"], activated);
    assert_eq!(totals["converted"], converted);
    assert_eq!(totals["converted_in_trial"], in_trial);
    assert_eq!(totals["expired"], expired);
    assert_eq!(totals["active"], started - converted - expired);
    assert_eq!(totals["time_to_convert_hours"]["count"], converted);
    let mut hours: Vec<f64> = made.iter().filter_map(|m| m.2.map(|c| c * 24.0)).collect();
    hours.sort_by(f64::total_cmp);
    let mean = hours.iter().sum::<f64>() / hours.len() as f64;
    assert!(
        (totals["time_to_convert_hours"]["mean"].as_f64().unwrap() - mean).abs() < 0.01,
        "{totals}"
    );
    let cohort_total: u64 = r["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["started"].as_u64().unwrap())
        .sum();
    assert_eq!(cohort_total as usize, started);

    let (_, list) = t
        .api("GET", "/trials/pro/entities?state=expired&limit=1000", None)
        .await;
    assert_eq!(list["results"].as_array().unwrap().len(), expired, "{list}");
    let (_, api) = t
        .api(
            "GET",
            "/trials/pro/entities?state=converted&limit=1000",
            None,
        )
        .await;
    assert!(api["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["entity"] == "api-user"));
    for bad in [
        "interval=year",
        "date_from=soon",
        "date_from=2026-01-02&date_to=2026-01-01",
    ] {
        let (s, _) = t
            .api("GET", &format!("/trials/pro/report?{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (s, _) = t.api("GET", "/trials/pro/entities?state=lost", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
