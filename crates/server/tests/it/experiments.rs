//! Experiments whose weights change mid-run: a new phase, nobody reshuffled (sticky bucketing of server-side
//! evaluations, kept across a restart), and results of the units that entered under the new weights.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

fn feature(weights: [f64; 2], version: Option<i64>) -> Value {
    let mut f = json!({"key": "banner", "value_type": "string", "default_value": "none",
        "environments": {"production": {"enabled": true, "rules": [
            {"type": "experiment", "id": "exp", "variations": ["blue", "green"], "weights": weights}]}}});
    if let Some(v) = version {
        f["version"] = json!(v);
    }
    f
}

async fn variation(t: &TestServer, sdk_key: &str, user: &str) -> String {
    let req = Request::post("/ofrep/v1/evaluate/flags/banner")
        .header("content-type", "application/json")
        .header("x-api-key", sdk_key)
        .body(Body::from(
            json!({"context": {"targetingKey": user}}).to_string(),
        ))
        .unwrap();
    let (s, v, _) = t.send(req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["value"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn changing_weights_mid_run_starts_a_phase_and_reshuffles_nobody() {
    let mut t = TestServer::start().await;
    t.created("/features", feature([0.5, 0.5], None)).await;
    t.created(
        "/metrics",
        json!({"key": "clicked", "name": "Clicked", "kind": "conversion", "event": "click"}),
    )
    .await;
    t.created(
        "/experiments",
        json!({"key": "banner", "name": "Banner", "feature": "banner", "rule_id": "exp",
                        "metrics": {"primary": ["clicked"]},
                        "analysis": {"engine": "frequentist", "cuped": false}}),
    )
    .await;
    let (s, _) = t.api("POST", "/experiments/banner/start", None).await;
    assert_eq!(s, StatusCode::OK);
    let sdk_key = t.production_sdk_key().await;

    let mut before = Vec::new();
    for i in 0..400 {
        before.push(variation(&t, &sdk_key, &format!("old-{i}")).await);
    }
    let green = before.iter().filter(|v| *v == "green").count();
    assert!((150..=250).contains(&green), "50/50: {green}");

    // 90/10 now: a new phase; the experiment's run goes on.
    let (s, v) = t
        .api(
            "PUT",
            "/features/banner",
            Some(feature([0.9, 0.1], Some(1))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, x) = t.api("GET", "/experiments/banner", None).await;
    let phases = x["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "{x:#}");
    assert_eq!(phases[0]["stopped_at"], phases[1]["started_at"]);
    assert_eq!(phases[1]["weights"], json!([0.9, 0.1]));
    assert_eq!(phases[1]["run_started_at"], phases[0]["started_at"]);
    assert_eq!(x["status"], "running");

    // Nobody already assigned moves; new users follow the new weights.
    for (i, was) in before.iter().enumerate() {
        assert_eq!(
            &variation(&t, &sdk_key, &format!("old-{i}")).await,
            was,
            "old-{i}"
        );
    }
    let mut green_new = 0;
    for i in 0..400 {
        green_new += usize::from(variation(&t, &sdk_key, &format!("new-{i}")).await == "green");
    }
    assert!((20..=65).contains(&green_new), "90/10: {green_new}");

    // The phase analyses the units that entered in it; the earlier ones are carried over.
    t.server().state.exposures.flush().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let results = loop {
        let (s, v) = t.api("GET", "/experiments/banner/results", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let carried: u64 = v["carried_over"]
            .as_array()
            .map_or(0, |a| a.iter().filter_map(Value::as_u64).sum());
        if v["complete"] == true && carried == 400 {
            break v;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        results["units"],
        json!([400 - green_new, green_new]),
        "{results:#}"
    );
    assert_eq!(results["carried_over"], json!([400 - green, green]));
    assert_eq!(results["srm"]["mismatch"], false, "{results:#}");

    // Assignments survive a restart.
    t.restart().await;
    for (i, was) in before.iter().enumerate().step_by(7) {
        assert_eq!(
            &variation(&t, &sdk_key, &format!("old-{i}")).await,
            was,
            "old-{i} after a restart"
        );
    }
    assert_eq!(t.server().state.sticky.len(), 800, "one document per user");

    // A decided experiment's assignments are dropped, in memory and on disk.
    let (s, v) = t
        .api(
            "POST",
            "/experiments/banner/decision",
            Some(json!({"action": "rollback"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The decision is announced for webhooks and audited under its own action.
    let (_, outbox) = t.api("GET", "/outbox?topic=experiment.decided", None).await;
    let entries = outbox["results"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{outbox}");
    assert_eq!(entries[0]["payload"]["experiment"], "banner");
    assert_eq!(entries[0]["payload"]["action"], "rollback");
    let (_, audit) = t
        .api(
            "GET",
            "/audit?entity_type=experiment&entity_id=banner",
            None,
        )
        .await;
    let actions: Vec<&str> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"experiment.decided"), "{actions:?}");
    let state = &t.server().state;
    assert_eq!(state.sticky.len(), 0);
    state.sticky.flush().await;
    assert_eq!(state.store.sticky_assignments().await.unwrap().len(), 0);
}

#[tokio::test]
async fn the_power_calculator_answers_units_effect_or_power() {
    let t = TestServer::start().await;
    // 10 % → 11 % (+10 % relative), α 0.05, 80 % power: (z₀.₉₇₅ + z₀.₈)² · 2 · 0.09 / 0.01² ≈ 14,128 per arm.
    let (s, v) = t
        .api(
            "POST",
            "/power",
            Some(json!({"conversion_rate": 0.1, "effect": 0.1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let n = v["units_per_arm"].as_f64().unwrap();
    assert!((14_100.0..14_160.0).contains(&n), "{v}");
    assert_eq!(v["total_units"].as_f64(), Some(2.0 * n));
    // The round trips: that many units detect +10 % with 80 % power.
    let (_, v) = t
        .api(
            "POST",
            "/power",
            Some(json!({"conversion_rate": 0.1, "units_per_arm": n})),
        )
        .await;
    let mde = v["minimum_detectable_effect"].as_f64().unwrap();
    assert!((mde - 0.1).abs() < 1e-3, "{v}");
    let (_, v) = t
        .api(
            "POST",
            "/power",
            Some(json!({"conversion_rate": 0.1, "units_per_arm": n, "effect": 0.1})),
        )
        .await;
    assert!((v["power"].as_f64().unwrap() - 0.8).abs() < 1e-3, "{v}");
    // Three arms: each comparison at α/2 needs more units.
    let (_, v) = t
        .api(
            "POST",
            "/power",
            Some(json!({"mean": 20.0, "std_dev": 30.0, "effect": 1.5, "lift": "absolute", "arms": 3})),
        )
        .await;
    assert_eq!(v["alpha_per_comparison"], 0.025, "{v}");
    assert!(
        v["units_per_arm"].as_f64().unwrap() > 2.0 * 900.0 * 7.8 / 2.25,
        "{v}"
    );
    // Every problem by field.
    let (s, v) = t
        .api(
            "POST",
            "/power",
            Some(json!({"conversion_rate": 1.5, "alpha": 0, "lift": "log", "x": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["x", "conversion_rate", "alpha", "lift"], "{v}");
    let (s, v) = t
        .api("POST", "/power", Some(json!({"conversion_rate": 0.2})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["errors"][0]["field"], "effect", "{v}");
}
