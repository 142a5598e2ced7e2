//! Experiment metrics through the API: validation with field-level errors, optimistic concurrency, archiving,
//! and the audit log.

use serde_json::{json, Value};

use crate::insights::request;
use crate::{init, Serve};

/// `call(method, path, body)` on the project's API (`path` after `/api/v1/projects/{id}`), with the personal key.
fn project_api<'a>(
    serve: &'a Serve,
    keys: &'a crate::Keys,
) -> impl Fn(&str, &str, Value) -> (u16, Value) + 'a {
    move |method, path, body| {
        request(
            serve,
            &keys.personal_key,
            method,
            &format!("/api/v1/projects/{}{path}", keys.project_id),
            &body,
        )
    }
}

#[test]
fn metrics_are_validated_versioned_archived_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    let fields = |v: &Value| -> Vec<String> {
        v["errors"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    let checkout = json!({"key": "checkout", "name": "Checkout", "kind": "conversion",
                          "event": "checkout_completed", "window_hours": 72});
    let (status, v) = call("POST", "/metrics", checkout.clone());
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["kind"].as_str()),
        (Some(1), Some("conversion"))
    );
    assert_eq!(v["window_hours"], 72);
    let (status, v) = call("POST", "/metrics", checkout);
    assert_eq!(status, 409, "same key twice: {v}");

    // Every problem at once, by field.
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "rev", "name": "Revenue", "kind": "sum", "event": "paid", "cap": -1, "id": 4}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(fields(&v), ["id", "value_property", "cap"], "{v}");
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "aov", "name": "Average order value", "kind": "ratio",
               "numerator": {"kind": "sum", "event": "paid", "value_property": "amount"},
               "denominator": {"kind": "count", "event": "paid"}}),
    );
    assert_eq!(status, 201, "{v}");

    // PATCH merges into the definition and validates the whole; a stale version is refused.
    let (status, v) = call(
        "PATCH",
        "/metrics/checkout",
        json!({"window_hours": 24, "version": 1}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["window_hours"].as_u64(), v["version"].as_i64()),
        (Some(24), Some(2))
    );
    let (status, v) = call(
        "PATCH",
        "/metrics/checkout",
        json!({"name": "Late", "version": 1}),
    );
    assert_eq!(status, 409, "stale version: {v}");
    let (status, v) = call("PATCH", "/metrics/checkout", json!({"kind": "sum"}));
    assert_eq!(status, 400, "a sum needs a value property: {v}");
    assert_eq!(fields(&v), ["value_property"]);
    let (status, v) = call("PATCH", "/metrics/checkout", json!({"key": "other"}));
    assert_eq!(status, 400, "{v}");
    let (status, v) = call("PATCH", "/metrics/checkout", json!({"window_hours": null}));
    assert_eq!(status, 200, "null removes an optional field: {v}");
    assert!(v.get("window_hours").is_none(), "{v}");
    let (status, _) = call("GET", "/metrics/nope", Value::Null);
    assert_eq!(status, 404);

    // Archived metrics leave the list (and come back with ?archived=true).
    let (status, _) = call("DELETE", "/metrics/aov", Value::Null);
    assert_eq!(status, 204);
    let (_, v) = call("GET", "/metrics", Value::Null);
    let listed: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["checkout"]);
    let (_, v) = call("GET", "/metrics?archived=true", Value::Null);
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");
    let (status, _) = call("GET", "/metrics?archived=maybe", Value::Null);
    assert_eq!(status, 400);

    let (status, v) = call("GET", "/audit?entity_type=metric", Value::Null);
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    for action in ["metric.created", "metric.updated", "metric.archived"] {
        assert!(text.contains(action), "{action}: {v}");
    }
    drop(call);
    assert!(serve.terminate().success());
}

#[test]
fn experiments_bind_to_an_experiment_rule_and_move_through_phases() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    let (status, v) = call(
        "POST",
        "/features",
        json!({"key": "onboarding", "value_type": "string", "default_value": "control",
               "environments": {"production": {"enabled": true, "rules": [
                   {"type": "force", "id": "staff", "condition": {"staff": true}, "value": "b"},
                   {"type": "experiment", "id": "exp", "variations": ["control", "b", "c"],
                    "weights": [0.5, 0.25, 0.25]}]}}}),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "activated", "name": "Activated", "kind": "conversion", "event": "activated"}),
    );
    assert_eq!(status, 201, "{v}");

    let x = json!({"key": "onboarding-v2", "name": "Onboarding v2", "feature": "onboarding",
                   "rule_id": "exp", "metrics": {"primary": ["activated"]}});
    // The binding and the metrics must exist; state cannot be set.
    for (patch, field) in [
        (json!({"feature": "nope"}), "feature"),
        (json!({"rule_id": "staff"}), "rule_id"),
        (json!({"environment": "staging"}), "environment"),
        (
            json!({"metrics": {"primary": ["activated", "ghost"]}}),
            "metrics.primary[1]",
        ),
        (json!({"status": "running"}), "status"),
    ] {
        let mut body = x.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = call("POST", "/experiments", body);
        assert_eq!(status, 400, "{patch}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{patch}: {v}");
    }
    let (status, v) = call("POST", "/experiments", x);
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["phases"].as_array().map(Vec::len)),
        (Some("draft"), Some(0))
    );
    assert_eq!(
        v["analysis"]["engine"], "bayesian",
        "defaults are filled: {v}"
    );

    // Running: a phase with the rule's weights; the binding is frozen; it cannot be archived.
    let (status, v) = call("POST", "/experiments/onboarding-v2/start", Value::Null);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "running");
    assert_eq!(v["phases"][0]["weights"], json!([0.5, 0.25, 0.25]), "{v}");
    assert_eq!(v["phases"][0]["variations"], 3);
    assert!(v["phases"][0]["stopped_at"].is_null());
    let (status, v) = call("POST", "/experiments/onboarding-v2/start", Value::Null);
    assert_eq!(status, 409, "already running: {v}");
    let (status, v) = call(
        "PATCH",
        "/experiments/onboarding-v2",
        json!({"rule_id": "other"}),
    );
    assert_eq!(status, 409, "{v}");
    let (status, v) = call(
        "PATCH",
        "/experiments/onboarding-v2",
        json!({"hypothesis": "Shorter onboarding activates more", "analysis": {"engine": "sequential"}}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["analysis"]["engine"].as_str(), v["status"].as_str()),
        (Some("sequential"), Some("running"))
    );
    let (status, _) = call("DELETE", "/experiments/onboarding-v2", Value::Null);
    assert_eq!(status, 409, "running experiments are not archived");

    // Stop closes the phase; a restart opens a second one.
    let (status, v) = call("POST", "/experiments/onboarding-v2/stop", Value::Null);
    assert_eq!(status, 200, "{v}");
    assert!(v["phases"][0]["stopped_at"].is_string(), "{v}");
    // A start may be dated (an experiment that ran before it was set up here), not in the future nor before
    // the previous phase stopped.
    for (body, field) in [
        (json!({"started_at": "2999-01-01T00:00:00Z"}), "started_at"),
        (json!({"started_at": "2020-01-01T00:00:00Z"}), "started_at"),
        (json!({"started_at": "yesterday"}), "started_at"),
        (json!({"stopped_at": "2020-01-01T00:00:00Z"}), "stopped_at"),
    ] {
        let (status, v) = call("POST", "/experiments/onboarding-v2/start", body.clone());
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["errors"][0]["field"], field, "{body}: {v}");
    }
    let (status, v) = call("POST", "/experiments/onboarding-v2/start", Value::Null);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["phases"].as_array().unwrap().len(), 2);
    let (status, _) = call("POST", "/experiments/onboarding-v2/stop", Value::Null);
    assert_eq!(status, 200);
    let (status, _) = call("DELETE", "/experiments/onboarding-v2", Value::Null);
    assert_eq!(status, 204);
    let (status, v) = call("POST", "/experiments/onboarding-v2/start", Value::Null);
    assert_eq!(status, 409, "archived: {v}");
    let (_, v) = call("GET", "/audit?entity_type=experiment", Value::Null);
    let text = v.to_string();
    for action in [
        "experiment.created",
        "experiment.updated",
        "experiment.archived",
    ] {
        assert!(text.contains(action), "{action}: {v}");
    }
    drop(call);
    assert!(serve.terminate().success());
}

/// Posts events through `/batch` with the project key.
fn post_batch(serve: &Serve, keys: &crate::Keys, batch: &[Value]) {
    let (status, out) = crate::http(
        &serve.addr,
        "POST",
        "/batch",
        &[("Content-Type", "application/json")],
        json!({"api_key": keys.project_key, "batch": batch})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
}

/// The results at `path` once complete with these units per arm (60 s at most).
fn results_with_units(
    call: &impl Fn(&str, &str, Value) -> (u16, Value),
    path: &str,
    units: &Value,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, v) = call("GET", path, Value::Null);
        assert_eq!(status, 200, "{v}");
        if v["complete"] == true && &v["units"] == units {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A deterministic stream of numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Posts exposures (`$feature_flag_called` of `feature`) and `purchase` events for `users` users: user `i` sees
/// variation `i % 2`, and buys with probability `rates[variation]`. Returns (units, buyers) per variation.
fn traffic(
    serve: &Serve,
    keys: &crate::Keys,
    feature: &str,
    users: usize,
    rates: [f64; 2],
    seed: u64,
) -> ([u64; 2], [u64; 2]) {
    let mut rng = Lcg(seed);
    let (mut units, mut buyers) = ([0u64; 2], [0u64; 2]);
    let mut batch = Vec::new();
    for i in 0..users {
        let v = i % 2;
        let user = format!("{feature}-user-{i}");
        let response = ["control", "treatment"][v];
        batch.push(json!({"event": "$feature_flag_called", "distinct_id": user,
            "properties": {"$feature_flag": feature, "$feature_flag_response": response}}));
        units[v] += 1;
        if rng.next() < rates[v] {
            batch.push(json!({"event": "purchase", "distinct_id": user}));
            buyers[v] += 1;
        }
        if batch.len() >= 500 || i + 1 == users {
            post_batch(serve, keys, &batch);
            batch.clear();
        }
    }
    (units, buyers)
}

#[test]
fn results_find_a_true_effect_and_nothing_in_an_aa_test() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "purchased", "name": "Purchased", "kind": "conversion", "event": "purchase"}),
    );
    assert_eq!(status, 201, "{v}");
    for feature in ["checkout", "same"] {
        let (status, v) = call(
            "POST",
            "/features",
            json!({"key": feature, "value_type": "string", "default_value": "control",
                   "environments": {"production": {"enabled": true, "rules": [
                       {"type": "experiment", "id": "exp", "variations": ["control", "treatment"]}]}}}),
        );
        assert_eq!(status, 201, "{v}");
        let (status, v) = call(
            "POST",
            "/experiments",
            json!({"key": feature, "name": feature, "feature": feature, "rule_id": "exp",
                   "metrics": {"primary": ["purchased"]},
                   "analysis": {"engine": "frequentist", "cuped": false, "correction": "none"}}),
        );
        assert_eq!(status, 201, "{v}");
        let (status, v) = call(
            "GET",
            &format!("/experiments/{feature}/results"),
            Value::Null,
        );
        assert_eq!(status, 409, "not started: {v}");
        let (status, v) = call(
            "POST",
            &format!("/experiments/{feature}/start"),
            Value::Null,
        );
        assert_eq!(status, 200, "{v}");
    }
    // 10 % → 15 % (a +50 % lift) and an A/A test at 12 %.
    let (units, buyers) = traffic(&serve, &keys, "checkout", 6000, [0.10, 0.15], 7);
    let (aa_units, aa_buyers) = traffic(&serve, &keys, "same", 6000, [0.12, 0.12], 11);
    // Ten users see both variations: excluded from both arms, counted.
    let both: Vec<Value> = (0..10)
        .flat_map(|i| {
            ["treatment", "control"].map(|r| {
                json!({"event": "$feature_flag_called", "distinct_id": format!("both-{i}"),
                       "properties": {"$feature_flag": "same", "$feature_flag_response": r}})
            })
        })
        .collect();
    post_batch(&serve, &keys, &both);

    let results = |feature: &str| -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, v) = call(
                "GET",
                &format!("/experiments/{feature}/results"),
                Value::Null,
            );
            assert_eq!(status, 200, "{v}");
            if v["complete"] == true && v["units"].as_array().is_some_and(|u| !u.is_empty()) {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "{v}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let v = results("checkout");
    assert_eq!(v["units"], json!(units), "{v}");
    let (_, again) = call("GET", "/experiments/checkout/results", Value::Null);
    assert_eq!(again["cached"], true, "the same data: the cached answer");
    assert_eq!(again["metrics"], v["metrics"]);
    let m = &v["metrics"][0];
    assert_eq!(m["arms"][0]["sum"].as_f64(), Some(buyers[0] as f64), "{v}");
    assert_eq!(m["arms"][1]["sum"].as_f64(), Some(buyers[1] as f64), "{v}");
    let r = &m["analysis"]["comparisons"][0]["result"];
    let lift = buyers[1] as f64 / units[1] as f64 / (buyers[0] as f64 / units[0] as f64) - 1.0;
    assert!(
        (r["estimate"].as_f64().unwrap() - lift).abs() < 1e-9,
        "{r} vs {lift}"
    );
    assert!(
        r["p_value"].as_f64().unwrap() < 0.001,
        "a 50 % lift on 6,000 users: {r}"
    );
    assert_eq!(v["srm"]["mismatch"], false, "{v}");

    let v = results("same");
    assert_eq!(v["units"], json!(aa_units));
    assert_eq!(
        v["multiple_exposures"],
        json!([0, 10]),
        "first exposed to treatment: {v}"
    );
    assert_eq!(v["warnings"], json!([]), "10 of 6,010 is under 1 %: {v}");
    let m = &v["metrics"][0];
    assert_eq!(m["arms"][1]["sum"].as_f64(), Some(aa_buyers[1] as f64));
    let r = &m["analysis"]["comparisons"][0]["result"];
    assert!(r["p_value"].as_f64().unwrap() > 0.05, "no effect: {r}");
    let (lo, hi) = (
        r["ci"]["lower"].as_f64().unwrap(),
        r["ci"]["upper"].as_f64().unwrap(),
    );
    assert!(lo < 0.0 && hi > 0.0, "the interval holds 0: {r}");

    // Decisions: ship the treatment of the real effect, roll the A/A test back. The flag changes at once.
    let (status, v) = call(
        "POST",
        "/experiments/checkout/decision",
        json!({"action": "ship"}),
    );
    assert_eq!(status, 400, "which variation: {v}");
    let (status, v) = call(
        "POST",
        "/experiments/checkout/decision",
        json!({"action": "ship", "variation": 1, "reason": "+50 % purchases"}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["decision"]["action"].as_str()),
        (Some("stopped"), Some("ship"))
    );
    assert!(v["phases"][0]["stopped_at"].is_string(), "{v}");
    let (_, f) = call("GET", "/features/checkout", Value::Null);
    let rule = &f["environments"]["production"]["rules"][0];
    assert_eq!(
        (rule["type"].as_str(), rule["value"].as_str()),
        (Some("force"), Some("treatment")),
        "{f}"
    );
    let (status, v) = call(
        "POST",
        "/experiments/checkout/decision",
        json!({"action": "rollback"}),
    );
    assert_eq!(status, 409, "decided once: {v}");
    let (status, _) = call("POST", "/experiments/checkout/start", Value::Null);
    assert_eq!(status, 409, "a decided experiment does not restart");
    let (status, v) = call(
        "POST",
        "/experiments/same/decision",
        json!({"action": "rollback"}),
    );
    assert_eq!(status, 200, "{v}");
    let (_, f) = call("GET", "/features/same", Value::Null);
    let rule = &f["environments"]["production"]["rules"][0];
    assert_eq!(
        (rule["type"].as_str(), rule["enabled"].as_bool()),
        (Some("experiment"), Some(false)),
        "{f}"
    );
    let (_, v) = call("GET", "/audit?entity_type=feature", Value::Null);
    assert!(v.to_string().contains("feature.updated"), "{v}");
    drop(call);
    assert!(serve.terminate().success());
}

/// Σx, Σx² of a per-unit variable.
fn mean_moments(values: &[f64]) -> flywheel_stats::Moments {
    flywheel_stats::Moments::Mean {
        sum: values.iter().sum(),
        sum_squares: values.iter().map(|x| x * x).sum(),
    }
}

fn cross(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Asserts that every number of `got` equals `want`'s to 1e-9 (relative), recursively.
fn assert_close(got: &Value, want: &Value, at: &str) {
    match (got, want) {
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1e-12),
                "{at}: {g} vs {w}"
            );
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{at}: {got} vs {want}");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                assert_close(gv, wv, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            assert_eq!(g.len(), w.len(), "{at}: {got} vs {want}");
            for (k, wv) in w {
                assert_close(&g[k], wv, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

#[test]
fn cuped_ratio_and_bayesian_results_equal_the_statistics_of_the_raw_events() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    for (path, body) in [
        (
            "/features",
            json!({"key": "pricing", "value_type": "string", "default_value": "a",
            "environments": {"production": {"enabled": true, "rules": [
                {"type": "experiment", "id": "exp", "variations": ["a", "b"]}]}}}),
        ),
        (
            "/metrics",
            json!({"key": "views", "name": "Views", "kind": "count", "event": "$pageview",
                            "window_hours": 48}),
        ),
        (
            "/metrics",
            json!({"key": "aov", "name": "Revenue per order", "kind": "ratio",
            "numerator": {"kind": "sum", "event": "order", "value_property": "amount"},
            "denominator": {"kind": "count", "event": "order"}, "window_hours": 48}),
        ),
        (
            "/metrics",
            json!({"key": "p90", "name": "p90 revenue per user", "kind": "quantile", "quantile": 0.9,
                   "event": "order", "value_property": "amount", "window_hours": 48}),
        ),
        (
            "/experiments",
            json!({"key": "pricing", "name": "Pricing", "feature": "pricing", "rule_id": "exp",
            "metrics": {"primary": ["views"], "secondary": ["aov", "p90"]},
            "analysis": {"engine": "bayesian", "cuped": true, "pre_window_days": 3, "correction": "none"}}),
        ),
    ] {
        let (status, v) = call("POST", path, body);
        assert_eq!(status, 201, "{path}: {v}");
    }
    // The phase starts 4 days ago; each user's exposure is 3 days ago, with events before it (CUPED's pre-window
    // of 3 days), inside the 48-hour window after it, and after the window (not counted).
    let now = chrono::Utc::now();
    let ts =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let started = now - chrono::Duration::days(4);
    let (status, v) = call(
        "POST",
        "/experiments/pricing/start",
        json!({"started_at": ts(started)}),
    );
    assert_eq!(status, 200, "{v}");
    let exposure = now - chrono::Duration::days(3);
    let mut rng = Lcg(5);
    // Per arm, per unit: views after, views before, revenue after, orders after, revenue before, orders before.
    let mut units: [Vec<[f64; 6]>; 2] = [Vec::new(), Vec::new()];
    let mut batch = Vec::new();
    for i in 0..400 {
        let arm = i % 2;
        let user = format!("p-{i}");
        let mut event = |name: &str, at: chrono::DateTime<chrono::Utc>, props: Value| {
            batch.push(json!({"event": name, "distinct_id": user, "timestamp": ts(at), "properties": props}));
        };
        let mut u = [0.0; 6];
        let pre_views = (rng.next() * 6.0) as usize;
        for k in 0..pre_views {
            event(
                "$pageview",
                exposure - chrono::Duration::hours(2 + k as i64),
                json!({}),
            );
        }
        u[1] = pre_views as f64;
        let response = ["a", "b"][arm];
        event(
            "$feature_flag_called",
            exposure,
            json!({"$feature_flag": "pricing",
                                                         "$feature_flag_response": response}),
        );
        let views = pre_views + (rng.next() * 3.0) as usize + arm * (rng.next() < 0.5) as usize;
        for k in 0..views {
            event(
                "$pageview",
                exposure + chrono::Duration::hours(1 + k as i64),
                json!({}),
            );
        }
        u[0] = views as f64;
        for (when, revenue, orders) in [(1i64, 2usize, 3usize), (-1, 4, 5)] {
            for _ in 0..(rng.next() * 3.0) as usize {
                let amount = (10.0 + rng.next() * 90.0).round();
                event(
                    "order",
                    exposure + chrono::Duration::hours(when * 5),
                    json!({"amount": amount}),
                );
                u[revenue] += amount;
                u[orders] += 1.0;
            }
        }
        // After the window: never counted.
        event(
            "$pageview",
            exposure + chrono::Duration::hours(49),
            json!({}),
        );
        event(
            "order",
            exposure + chrono::Duration::hours(50),
            json!({"amount": 1000}),
        );
        units[arm].push(u);
    }
    post_batch(&serve, &keys, &batch);
    let (status, v) = call("POST", "/experiments/pricing/stop", Value::Null);
    assert_eq!(status, 200, "{v}");

    let v = loop {
        let (status, v) = call("GET", "/experiments/pricing/results", Value::Null);
        assert_eq!(status, 200, "{v}");
        if v["complete"] == true && v["units"] == json!([200, 200]) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // The same statistics from the raw events.
    let col = |arm: usize, c: usize| -> Vec<f64> { units[arm].iter().map(|u| u[c]).collect() };
    let engine = flywheel_stats::Engine::Bayesian(flywheel_stats::BayesianConfig {
        alpha: 0.05,
        inverse: false,
        ..Default::default()
    });
    let views: Vec<flywheel_stats::ArmData> = (0..2)
        .map(|a| flywheel_stats::ArmData::Cuped {
            n: 200,
            post: mean_moments(&col(a, 0)),
            pre: mean_moments(&col(a, 1)),
            cross_sum: cross(&col(a, 0), &col(a, 1)),
        })
        .collect();
    let aov: Vec<flywheel_stats::ArmData> = (0..2)
        .map(|a| {
            let (num, den, pre_num, pre_den) = (col(a, 2), col(a, 3), col(a, 4), col(a, 5));
            flywheel_stats::ArmData::CupedRatio {
                n: 200,
                numerator: mean_moments(&num),
                denominator: mean_moments(&den),
                pre_numerator: mean_moments(&pre_num),
                pre_denominator: mean_moments(&pre_den),
                cross: flywheel_stats::RatioCrossSums {
                    numerator_denominator: cross(&num, &den),
                    numerator_pre_numerator: cross(&num, &pre_num),
                    numerator_pre_denominator: cross(&num, &pre_den),
                    denominator_pre_numerator: cross(&den, &pre_num),
                    denominator_pre_denominator: cross(&den, &pre_den),
                    pre_numerator_pre_denominator: cross(&pre_num, &pre_den),
                },
            }
        })
        .collect();
    // Quantiles (no CUPED): from every unit's value, zeros included.
    let p90: Vec<flywheel_stats::ArmData> = (0..2)
        .map(|a| flywheel_stats::sample::quantile_from_sample(&col(a, 2), 0.9, 0.05).unwrap())
        .collect();
    let arms = [views, aov, p90];
    for (i, arms) in arms.iter().enumerate() {
        let want = flywheel_stats::analyze(arms, &[0.5, 0.5], &engine).unwrap();
        assert_close(
            &v["metrics"][i]["analysis"],
            &serde_json::to_value(&want).unwrap(),
            &format!("metrics[{i}]"),
        );
    }
    assert_eq!(
        v["metrics"][0]["analysis"]["comparisons"][0]["result"]["engine"],
        "bayesian"
    );

    // The same data under the sequential test (a changed definition is a new cache key).
    let (status, x) = call(
        "PATCH",
        "/experiments/pricing",
        json!({"analysis": {"engine": "sequential", "cuped": true, "pre_window_days": 3, "alpha": 0.1,
                            "sequential_tuning": 1000}}),
    );
    assert_eq!(status, 200, "{x}");
    let (status, v) = call("GET", "/experiments/pricing/results", Value::Null);
    assert_eq!((status, v["cached"].as_bool()), (200, Some(false)), "{v}");
    let sequential = flywheel_stats::Engine::Sequential(flywheel_stats::SequentialConfig {
        alpha: 0.1,
        tuning: 1000.0,
        ..Default::default()
    });
    // Holm's correction (the default) across the three metrics' p-values.
    let mut raw = Vec::new();
    let mut adjusted = Vec::new();
    let [views, aov, _] = arms;
    // Quantile intervals are at the experiment's alpha, now 0.1.
    let p90: Vec<flywheel_stats::ArmData> = (0..2)
        .map(|a| flywheel_stats::sample::quantile_from_sample(&col(a, 2), 0.9, 0.1).unwrap())
        .collect();
    for (i, arms) in [views, aov, p90].iter().enumerate() {
        let want = flywheel_stats::analyze(arms, &[0.5, 0.5], &sequential).unwrap();
        let mut got = v["metrics"][i]["analysis"].clone();
        let comparison = got["comparisons"][0].as_object_mut().unwrap();
        adjusted.push(
            comparison
                .remove("adjusted_p_value")
                .unwrap()
                .as_f64()
                .unwrap(),
        );
        raw.push(got["comparisons"][0]["result"]["p_value"].as_f64().unwrap());
        assert_close(
            &got,
            &serde_json::to_value(&want).unwrap(),
            &format!("sequential metrics[{i}]"),
        );
    }
    let holm = flywheel_stats::adjust_p_values(&raw, flywheel_stats::Correction::Holm).unwrap();
    assert_close(&json!(adjusted), &json!(holm), "adjusted p-values");
    drop(call);
    assert!(serve.terminate().success());
}

#[test]
fn account_level_experiments_count_groups_as_units() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "purchased", "name": "Purchased", "kind": "conversion", "event": "purchase"}),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        "POST",
        "/features",
        json!({"key": "pricing", "value_type": "string", "default_value": "old",
               "environments": {"production": {"enabled": true, "rules": [
                   {"type": "experiment", "id": "by-user", "variations": ["old", "new"]},
                   {"type": "experiment", "id": "by-company", "hash_attribute": "company",
                    "variations": ["old", "new"]}]}}}),
    );
    assert_eq!(status, 201, "{v}");
    let experiment = |rule: &str| {
        json!({"key": format!("pricing-{rule}"), "name": "Pricing", "feature": "pricing", "rule_id": rule,
               "unit": "company", "metrics": {"primary": ["purchased"]},
               "analysis": {"engine": "frequentist", "cuped": false}})
    };
    let (status, v) = call("POST", "/experiments", experiment("by-user"));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["field"], "unit", "users bucketed alone: {v}");
    let (status, v) = call("POST", "/experiments", experiment("by-company"));
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["unit"], "company");
    let (status, v) = call("POST", "/experiments/pricing-by-company/start", Value::Null);
    assert_eq!(status, 200, "{v}");

    // 120 companies of 3 members: company k gets variation k % 2; in a converting company one member buys.
    // A member without `$groups` is no unit; a company seen in both variations is excluded.
    let mut batch = Vec::new();
    let (mut companies, mut converted) = ([0u64; 2], [0u64; 2]);
    for k in 0..120 {
        let v = k % 2;
        let company = format!("co-{k}");
        companies[v] += 1;
        let response = ["old", "new"][v];
        for m in 0..3 {
            let user = format!("co-{k}-m{m}");
            batch.push(json!({"event": "$feature_flag_called", "distinct_id": user,
                "properties": {"$feature_flag": "pricing", "$feature_flag_response": response,
                               "$groups": {"company": company}}}));
        }
        // Variation 1 converts 2 companies in 3, variation 0 one in 3; two buyers count once.
        if k % 3 < [1, 2][v] {
            converted[v] += 1;
            for m in 0..2 {
                batch.push(
                    json!({"event": "purchase", "distinct_id": format!("co-{k}-m{m}"),
                    "properties": {"$groups": {"company": company}}}),
                );
            }
        }
    }
    batch.push(
        json!({"event": "$feature_flag_called", "distinct_id": "loner",
        "properties": {"$feature_flag": "pricing", "$feature_flag_response": "new"}}),
    );
    for r in ["old", "new"] {
        batch.push(
            json!({"event": "$feature_flag_called", "distinct_id": format!("switch-{r}"),
            "properties": {"$feature_flag": "pricing", "$feature_flag_response": r,
                           "$groups": {"company": "co-both"}}}),
        );
    }
    post_batch(&serve, &keys, &batch);
    let v = results_with_units(
        &call,
        "/experiments/pricing-by-company/results",
        &json!(companies),
    );
    let total_multiple: u64 = v["multiple_exposures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(total_multiple, 1, "co-both: {v}");
    let arms = &v["metrics"][0]["arms"];
    assert_eq!(
        [arms[0]["sum"].as_f64(), arms[1]["sum"].as_f64()],
        [Some(converted[0] as f64), Some(converted[1] as f64)],
        "{v}"
    );
    drop(call);
    assert!(serve.terminate().success());
}

#[test]
fn funnel_conversion_metrics_need_every_step_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let call = project_api(&serve, &keys);
    let (status, v) = call(
        "POST",
        "/metrics",
        json!({"key": "activated", "name": "Activated", "kind": "conversion", "window_hours": 24,
               "steps": [{"event": "signed_up"}, {"event": "project_created"}, {"event": "invited"}]}),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        "POST",
        "/features",
        json!({"key": "onboarding", "value_type": "string", "default_value": "a",
               "environments": {"production": {"enabled": true, "rules": [
                   {"type": "experiment", "id": "exp", "variations": ["a", "b"]}]}}}),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(
        "POST",
        "/experiments",
        json!({"key": "onboarding", "name": "Onboarding", "feature": "onboarding", "rule_id": "exp",
               "metrics": {"primary": ["activated"]}, "analysis": {"engine": "frequentist", "cuped": false}}),
    );
    assert_eq!(status, 201, "{v}");
    let start = chrono::Utc::now() - chrono::Duration::hours(3);
    let (status, v) = call(
        "POST",
        "/experiments/onboarding/start",
        json!({"started_at": start.to_rfc3339()}),
    );
    assert_eq!(status, 200, "{v}");

    // User i (variation i % 2) does one of four sequences a minute apart after their exposure.
    let sequences: [&[&str]; 4] = [
        &["signed_up", "project_created", "invited"], // converts
        &["signed_up", "invited", "project_created"], // out of order: no
        &["project_created", "signed_up", "project_created", "invited"], // the later project counts: converts
        &["signed_up", "project_created"],                               // incomplete: no
    ];
    let at = |minutes: i64| (start + chrono::Duration::minutes(minutes)).to_rfc3339();
    let mut batch = Vec::new();
    let mut converted = [0.0f64; 2];
    let mut units = [0u64; 2];
    for i in 0..80usize {
        let v = i % 2;
        let user = format!("u{i}");
        units[v] += 1;
        let response = ["a", "b"][v];
        batch.push(
            json!({"event": "$feature_flag_called", "distinct_id": user, "timestamp": at(1),
            "properties": {"$feature_flag": "onboarding", "$feature_flag_response": response}}),
        );
        // Variation 1 gets the converting sequences more often.
        let s = if v == 1 {
            [0, 2, 0, 1][(i / 2) % 4]
        } else {
            (i / 2) % 4
        };
        for (j, event) in sequences[s].iter().enumerate() {
            batch.push(json!({"event": event, "distinct_id": user, "timestamp": at(2 + j as i64)}));
        }
        if matches!(s, 0 | 2) {
            converted[v] += 1.0;
        }
    }
    post_batch(&serve, &keys, &batch);
    let v = results_with_units(&call, "/experiments/onboarding/results", &json!(units));
    let arms = &v["metrics"][0]["arms"];
    assert_eq!(
        [arms[0]["sum"].as_f64(), arms[1]["sum"].as_f64()],
        [Some(converted[0]), Some(converted[1])],
        "{v}"
    );
    drop(call);
    assert!(serve.terminate().success());
}
