//! Experiment metrics through the API: validation with field-level errors, optimistic concurrency, archiving,
//! and the audit log.

use serde_json::{json, Value};

use crate::insights::request;
use crate::{init, Serve};

#[test]
fn metrics_are_validated_versioned_archived_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let p = keys.project_id;
    let call = |method: &str, path: &str, body: Value| {
        request(
            &serve,
            &keys.personal_key,
            method,
            &format!("/api/v1/projects/{p}{path}"),
            &body,
        )
    };
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
    assert!(serve.terminate().success());
}

#[test]
fn experiments_bind_to_an_experiment_rule_and_move_through_phases() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let p = keys.project_id;
    let call = |method: &str, path: &str, body: Value| {
        request(
            &serve,
            &keys.personal_key,
            method,
            &format!("/api/v1/projects/{p}{path}"),
            &body,
        )
    };
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
    assert!(serve.terminate().success());
}
