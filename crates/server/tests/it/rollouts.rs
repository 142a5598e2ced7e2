//! Guarded rollouts: validation, steps that advance by themselves with sticky assignment, and an injected
//! regression that rolls the rollout back by itself (flag, audit log, outbox).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

fn fields(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
        .collect()
}

impl TestServer {
    /// The value OFREP serves `user` for `flag` (a single-flag evaluation records the exposure, as an SDK's
    /// evaluation does).
    async fn served(&self, sdk_key: &str, flag: &str, user: &str) -> Value {
        let req = Request::post(format!("/ofrep/v1/evaluate/flags/{flag}"))
            .header("content-type", "application/json")
            .header("x-api-key", sdk_key)
            .body(Body::from(
                json!({"context": {"targetingKey": user}}).to_string(),
            ))
            .unwrap();
        let (s, v, _) = self.send(req).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["value"].clone()
    }

    /// The value PostHog's `/flags` serves `user` for `flag` (a bulk evaluation: no exposure recorded).
    async fn flag_value(&self, flag: &str, user: &str) -> Value {
        let (s, v) = self
            .post(
                "/flags?v=2",
                json!({"api_key": self.token, "distinct_id": user}).to_string(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["flags"][flag]["enabled"].clone()
    }

    async fn capture(&self, batch: Vec<Value>) {
        for chunk in batch.chunks(500) {
            let (s, v) = self
                .post(
                    "/batch",
                    json!({"api_key": self.token, "batch": chunk}).to_string(),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    }

    /// Waits until the rollout's state satisfies `done` (the watcher runs every 100 ms).
    async fn rollout_until(&self, key: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (s, v) = self.api("GET", &format!("/rollouts/{key}"), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_guarded_rollout_advances_by_itself_and_rolls_back_on_a_regression() {
    let t = TestServer::start_with(|c| c.rollout_check_interval = Duration::from_millis(100)).await;
    t.created(
        "/metrics",
        json!({"key": "errors", "name": "Users with an error", "kind": "conversion",
                        "event": "$exception", "inverse": true}),
    )
    .await;
    t.created(
        "/features",
        json!({"key": "new-search", "value_type": "boolean", "default_value": false,
                        "environments": {"production": {"enabled": true, "rules": []}}}),
    )
    .await;
    let sdk_key = t.production_sdk_key().await;

    // Every problem at once, by field; metrics and the feature must exist.
    let (s, v) = t
        .api(
            "POST",
            "/rollouts",
            Some(
                json!({"key": "bad", "name": "Bad", "feature": "new-search", "value": true,
                        "steps": [{"percent": 50}, {"percent": 10}], "status": "running"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fields(&v), ["status", "steps[1].percent"], "{v}");
    let (s, v) = t
        .api(
            "POST",
            "/rollouts",
            Some(
                json!({"key": "bad", "name": "Bad", "feature": "new-search", "value": true,
                        "steps": [{"percent": 100}], "guardrails": [{"metric": "nope"}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(fields(&v), ["guardrails[0].metric"], "{v}");

    // 20 % until 300 treatment users are exposed, then 50 % (held: its minimum sample is out of reach), then 100 %.
    let v = t
        .created(
            "/rollouts",
            json!({"key": "search-v2", "name": "Search v2", "feature": "new-search",
                        "value": true,
                        "steps": [{"percent": 20, "min_duration_secs": 0, "min_units": 300},
                                  {"percent": 50, "min_duration_secs": 0, "min_units": 1000000},
                                  {"percent": 100}],
                        "guardrails": [{"metric": "errors", "threshold": 0.5}]}),
        )
        .await;
    assert_eq!(v["status"], "draft");
    let (s, v) = t.api("POST", "/rollouts/search-v2/check", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "a draft is not checked: {v}");
    let (s, v) = t.api("POST", "/rollouts/search-v2/start", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["step"].as_u64()),
        (Some("running"), Some(0))
    );
    let (_, f) = t.api("GET", "/features/new-search", None).await;
    let rule = &f["environments"]["production"]["rules"][0];
    assert_eq!(rule["id"], "rollout-search-v2", "{f}");
    assert_eq!(rule["variations"], json!([false, true]));
    assert_eq!(rule["weights"], json!([0.8, 0.2]));
    let (s, v) = t
        .api(
            "PATCH",
            "/rollouts/search-v2",
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a running rollout's plan is fixed: {v}"
    );

    // Step 1: healthy traffic (2 % errors on both sides). The app reads the flag and reports the exposure, as
    // PostHog's SDKs do; the exposures arrive after all users were served.
    let mut first: Vec<(String, bool)> = Vec::new();
    let mut events = Vec::new();
    for i in 0..2000 {
        let user = format!("early-{i}");
        let on = t.flag_value("new-search", &user).await == json!(true);
        events.push(json!({"event": "$feature_flag_called", "distinct_id": user,
            "properties": {"$feature_flag": "new-search", "$feature_flag_response": on}}));
        if i % 50 == 0 {
            events.push(json!({"event": "$exception", "distinct_id": user}));
        }
        first.push((user, on));
    }
    let treated = first.iter().filter(|(_, on)| *on).count();
    assert!(
        (330..=470).contains(&treated),
        "about 20 % of 2,000 get the new value: {treated}"
    );
    t.capture(events).await;
    let v = t
        .rollout_until("search-v2", "the second step", |v| v["step"] == 1)
        .await;
    assert_eq!(v["status"], "running", "{v:#}");
    let history = v["history"].as_array().unwrap();
    assert_eq!(history[1]["action"], "advanced", "{v:#}");
    assert_eq!(
        history[1]["guardrails"][0]["status"], "ok",
        "the healthy step passed its guardrail: {v:#}"
    );
    let (_, f) = t.api("GET", "/features/new-search", None).await;
    assert_eq!(
        f["environments"]["production"]["rules"][0]["weights"],
        json!([0.5, 0.5])
    );
    // Sticky across steps: everyone who had the new value keeps it.
    let mut now_on = 0;
    for (user, before) in &first {
        let on = t.flag_value("new-search", user).await == json!(true);
        assert!(
            on || !before,
            "{user} had the new value at 20 % and keeps it at 50 %"
        );
        now_on += usize::from(on);
    }
    assert!(
        (900..=1100).contains(&now_on),
        "about half of the same users have it at 50 %: {now_on}"
    );

    // Step 2: the new value breaks things — a third of its users hit an error, 2 % of the others. OFREP's
    // single-flag evaluations record the exposures on the server.
    let mut events = Vec::new();
    let mut treated_users = Vec::new();
    for i in 0..1500 {
        let user = format!("late-{i}");
        let on = t.served(&sdk_key, "new-search", &user).await == json!(true);
        let every = if on { 3 } else { 50 };
        if i % every == 0 {
            events.push(json!({"event": "$exception", "distinct_id": user}));
        }
        if on {
            treated_users.push(user);
        }
    }
    t.capture(events).await;
    t.server().state.exposures.flush().await;
    let v = t
        .rollout_until("search-v2", "the automatic rollback", |v| {
            v["status"] != "running"
        })
        .await;
    assert_eq!(v["status"], "rolled_back", "{v:#}");
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "rolled_back");
    assert_eq!(last["by"], "system:rollout-guard");
    assert_eq!(last["step"], 1);
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("guardrail `errors`"),
        "{last}"
    );

    // Everyone is back on the old value; the rule stays, disabled, for the record.
    for user in treated_users.iter().take(20) {
        assert_eq!(t.served(&sdk_key, "new-search", user).await, json!(false));
    }
    let (_, f) = t.api("GET", "/features/new-search", None).await;
    let rule = &f["environments"]["production"]["rules"][0];
    assert_eq!(
        (rule["id"].as_str(), rule["enabled"].as_bool()),
        (Some("rollout-search-v2"), Some(false))
    );

    // Audited and announced.
    let (_, audit) = t.api("GET", "/audit?entity_type=rollout", None).await;
    let text = audit.to_string();
    for action in [
        "rollout.created",
        "rollout.started",
        "rollout.advanced",
        "rollout.rolled_back",
    ] {
        assert!(text.contains(action), "{action}: {audit:#}");
    }
    let (s, outbox) = t
        .api("GET", "/outbox?topic=rollout.rolled_back", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{outbox}");
    let entries = outbox["results"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{outbox:#}");
    let payload = &entries[0]["payload"];
    assert_eq!(
        (
            payload["rollout"].as_str(),
            payload["feature"].as_str(),
            payload["percent"].as_f64()
        ),
        (Some("search-v2"), Some("new-search"), Some(50.0))
    );
    assert_eq!(
        payload["guardrails"][0]["status"], "regressed",
        "{payload:#}"
    );
    let (_, all) = t.api("GET", "/outbox", None).await;
    let topics: Vec<&str> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        // Audited changes are announced too (`audit.<action>`); not these.
        .filter(|t| !t.starts_with("audit."))
        .collect();
    assert_eq!(
        topics,
        ["rollout.started", "rollout.advanced", "rollout.rolled_back"]
    );

    // Over: no more checks or rollbacks; it can be archived now.
    let (s, _) = t.api("POST", "/rollouts/search-v2/rollback", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = t.api("DELETE", "/rollouts/search-v2", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_healthy_rollout_ships_and_a_manual_rollback_is_recorded() {
    let t = TestServer::start_with(|c| c.rollout_check_interval = Duration::from_millis(100)).await;
    t.created(
        "/features",
        json!({"key": "layout", "value_type": "string", "default_value": "old",
                        "environments": {"production": {"enabled": true, "rules": []}}}),
    )
    .await;
    // No guardrails and no minimums: a scheduled rollout that goes straight through.
    t.created(
        "/rollouts",
        json!({"key": "layout-new", "name": "New layout", "feature": "layout", "value": "new",
                        "steps": [{"percent": 10, "min_duration_secs": 0, "min_units": 0},
                                  {"percent": 100}]}),
    )
    .await;
    let (s, v) = t.api("POST", "/rollouts/layout-new/start", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = t
        .rollout_until("layout-new", "completion", |v| v["status"] != "running")
        .await;
    assert_eq!(v["status"], "completed", "{v:#}");
    let (_, f) = t.api("GET", "/features/layout", None).await;
    let rule = &f["environments"]["production"]["rules"][0];
    assert_eq!(
        (rule["type"].as_str(), rule["value"].as_str()),
        (Some("force"), Some("new")),
        "shipped: {f}"
    );

    // A second rollout on the same feature, rolled back by hand with a reason.
    t.created(
        "/rollouts",
        json!({"key": "layout-newer", "name": "Newer layout", "feature": "layout",
                        "value": "newer", "control_value": "new",
                        "steps": [{"percent": 5, "min_duration_secs": 3600}, {"percent": 100}]}),
    )
    .await;
    let (s, _) = t.api("POST", "/rollouts/layout-newer/start", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.api("POST", "/rollouts/layout-newer/check", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["last_check"]["decision"], "wait",
        "an hour-long step: {v:#}"
    );
    let (s, v) = t
        .api(
            "POST",
            "/rollouts/layout-newer/rollback",
            Some(json!({"reason": 7})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t
        .api(
            "POST",
            "/rollouts/layout-newer/rollback",
            Some(json!({"reason": "support tickets"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "rolled_back");
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "support tickets");
    assert!(
        last["by"].as_str().unwrap().starts_with("personal_key:"),
        "{last}"
    );
    let (s, v) = t.api("POST", "/rollouts/layout-newer/start", None).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a rolled-back rollout does not restart: {v}"
    );
}
