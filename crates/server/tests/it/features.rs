//! Feature management, validation, optimistic concurrency, the audit log and the GrowthBook payload endpoint.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

impl TestServer {
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api_as(&self.personal_key, method, path, body).await
    }

    /// [`TestServer::api`] with another personal key.
    pub async fn api_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("/api/v1/projects/{}{path}", self.project_id))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let (s, v, _) = self.send(req).await;
        (s, v)
    }

    /// `POST` on the project's API that must create (201); the created object.
    pub async fn created(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.api("POST", path, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "POST {path}: {v}");
        v
    }

    /// A new SDK key of `production`.
    pub async fn production_sdk_key(&self) -> String {
        self.created(
            "/sdk-connections",
            serde_json::json!({"environment": "production"}),
        )
        .await["client_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn checkout() -> Value {
    json!({
        "key": "new-checkout",
        "value_type": "boolean",
        "default_value": false,
        "description": "The redesigned checkout",
        "owner": "growth@example.com",
        "tags": ["checkout"],
        "environments": {
            "production": {"enabled": true, "rules": [
                {"type": "force", "id": "staff", "condition": {"email": {"$regex": "@example\\.com$"}}, "value": true},
                {"type": "rollout", "id": "half", "condition": {"country": {"$in": ["US", "CA"]}}, "value": true, "coverage": 0.5}
            ]},
            "staging": {"enabled": false, "rules": []}
        }
    })
}

#[tokio::test]
async fn features_are_created_read_listed_and_validated() {
    let t = TestServer::start().await;
    let (s, created) = t.api("POST", "/features", Some(checkout())).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(
        created["environments"]["production"]["rules"][1]["hash_attribute"], "id",
        "defaults filled in"
    );
    let (s, got) = t.api("GET", "/features/new-checkout", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, created);
    let (_, list) = t.api("GET", "/features", None).await;
    assert_eq!(list["results"].as_array().unwrap().len(), 1);
    let (s, b) = t.api("POST", "/features", Some(checkout())).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown operator",
            json!({"environments": {"production": {"enabled": true, "rules": [
            {"type": "force", "condition": {"country": {"$inn": ["US"]}}, "value": true}]}}}),
            "environments.production.rules[0].condition",
        ),
        (
            "weights not summing to 1",
            json!({"environments": {"production": {"enabled": true, "rules": [
            {"type": "experiment", "variations": [false, true], "weights": [0.5, 0.6]}]}}}),
            "environments.production.rules[0].weights",
        ),
        (
            "rollout outside 0-1",
            json!({"environments": {"production": {"enabled": true, "rules": [
            {"type": "rollout", "value": true, "coverage": 1.5}]}}}),
            "environments.production.rules[0].coverage",
        ),
        (
            "wrong value type",
            json!({"default_value": "yes"}),
            "default_value",
        ),
        (
            "wrong variation type",
            json!({"environments": {"production": {"enabled": true, "rules": [
            {"type": "experiment", "variations": [false, 3]}]}}}),
            "environments.production.rules[0].variations[1]",
        ),
        (
            "unknown environment",
            json!({"environments": {"prod": {"enabled": true}}}),
            "environments.prod",
        ),
        (
            "missing prerequisite",
            json!({"prerequisites": [{"id": "nope"}]}),
            "prerequisites[0].id",
        ),
        ("unknown field", json!({"colour": "red"}), "body"),
        ("bad key", json!({"key": "has space"}), "key"),
        (
            "unknown rule type",
            json!({"environments": {"production": {"enabled": true, "rules": [{"type": "magic", "value": true}]}}}),
            "body",
        ),
    ];
    for (name, patch, field) in cases {
        let mut body = json!({"key": format!("f-{}", name.replace(' ', "-")), "value_type": "boolean", "default_value": false});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, b) = t.api("POST", "/features", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {b}");
        assert_eq!(b["code"], "validation_error", "{name}: {b}");
        let fields: Vec<&str> = b["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{name}: expected an error on {field}, got {b}"
        );
    }
    let (_, list) = t.api("GET", "/features", None).await;
    assert_eq!(
        list["results"].as_array().unwrap().len(),
        1,
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn stale_updates_conflict_and_cycles_are_refused() {
    let t = TestServer::start().await;
    t.api("POST", "/features", Some(checkout())).await;
    let mut update = checkout();
    update["version"] = json!(1);
    update["description"] = json!("v2");
    let (s, b) = t
        .api("PUT", "/features/new-checkout", Some(update.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["version"], 2);
    let (s, b) = t.api("PUT", "/features/new-checkout", Some(update)).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("version is 2"));

    // a → b is fine; b → a closes a cycle.
    let f = |key: &str, pre: Value| json!({"key": key, "value_type": "boolean", "default_value": true, "prerequisites": pre});
    assert_eq!(
        t.api("POST", "/features", Some(f("b", json!([])))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        t.api("POST", "/features", Some(f("a", json!([{"id": "b"}]))))
            .await
            .0,
        StatusCode::CREATED
    );
    let mut b_update = f("b", json!([{"id": "a"}]));
    b_update["version"] = json!(1);
    let (s, body) = t.api("PUT", "/features/b", Some(b_update)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cyclic prerequisites: b → a → b"),
        "{body}"
    );
}

#[tokio::test]
async fn every_change_is_audited_and_the_log_cannot_be_edited() {
    let t = TestServer::start().await;
    t.api("POST", "/features", Some(checkout())).await;
    let mut update = checkout();
    update["version"] = json!(1);
    update["environments"]["production"]["rules"][1]["coverage"] = json!(0.8);
    t.api("PUT", "/features/new-checkout", Some(update)).await;
    t.api("DELETE", "/features/new-checkout?version=2", None)
        .await;
    t.api(
        "POST",
        "/environments",
        Some(json!({"key": "qa", "description": "QA"})),
    )
    .await;
    t.api(
        "POST",
        "/sdk-connections",
        Some(json!({"environment": "production", "name": "web"})),
    )
    .await;

    let (s, log) = t.api("GET", "/audit", None).await;
    assert_eq!(s, StatusCode::OK);
    let entries = log["results"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "sdk_connection.created",
            "environment.created",
            "feature.archived",
            "feature.updated",
            "feature.created",
            "api_key.created",
            "api_key.created"
        ]
    );
    let updated = &entries[3];
    assert_eq!(
        updated["diff"],
        json!([
            {"path": "definition.environments.production.rules[1].coverage", "before": 0.5, "after": 0.8},
            {"path": "updated_at", "before": updated["before"]["updated_at"], "after": updated["after"]["updated_at"]},
            {"path": "version", "before": 1, "after": 2},
        ])
    );
    // API changes name the key and the address; keys made at initialisation are the system's.
    assert!(entries.iter().all(|e| if e["action"] == "api_key.created" {
        e["actor"] == "system" && e["source_ip"].is_null()
    } else {
        e["actor"].as_str().unwrap().starts_with("personal_key:") && e["source_ip"] == "127.0.0.1"
    }));
    let (_, filtered) = t
        .api(
            "GET",
            "/audit?entity_type=feature&action=feature.archived",
            None,
        )
        .await;
    assert_eq!(filtered["results"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["results"][0]["after"]["archived"], true);
    // No endpoint edits or deletes an entry.
    for method in ["PUT", "PATCH", "DELETE", "POST"] {
        let (s, _) = t.api(method, "/audit", Some(json!({}))).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} /audit");
    }
}

#[tokio::test]
async fn growthbook_payload_serves_the_environment_with_etags() {
    let t = TestServer::start().await;
    t.api("POST", "/features", Some(checkout())).await;
    let (_, prod) = t
        .api(
            "POST",
            "/sdk-connections",
            Some(json!({"environment": "production", "name": "web"})),
        )
        .await;
    let (_, staging) = t
        .api(
            "POST",
            "/sdk-connections",
            Some(json!({"environment": "staging"})),
        )
        .await;
    let prod_key = prod["client_key"].as_str().unwrap().to_owned();
    assert!(prod_key.starts_with("sdk-"));
    let (_, conns) = t.api("GET", "/sdk-connections", None).await;
    assert!(
        conns.to_string().find(&prod_key).is_none(),
        "keys are shown once, not listed"
    );

    let get = |key: String, etag: Option<String>| {
        let mut req = Request::get(format!("/api/features/{key}"));
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.body(Body::empty()).unwrap()
    };
    let (s, payload, headers) = t.send(get(prod_key.clone(), None)).await;
    assert_eq!(s, StatusCode::OK);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(payload["dateUpdated"].is_string());
    // GrowthBook's SDKs open the stream only when the payload says it exists.
    assert_eq!(headers["x-sse-support"], "enabled");
    // Evaluate the served payload with the flag engine, as an SDK would.
    let set = flywheel_flags::FeatureSet::from_value(&payload).unwrap();
    assert!(set.diagnostics().is_empty(), "{:?}", set.diagnostics());
    let on = |attrs: Value| {
        set.evaluate(
            "new-checkout",
            &flywheel_flags::EvalContext::new(&flywheel_flags::Attributes::from_json(&attrs)),
        )
        .on
    };
    assert!(
        on(json!({"id": "1", "email": "me@example.com"})),
        "staff rule"
    );
    assert!(
        !on(json!({"id": "1", "country": "FR"})),
        "outside the rollout's audience"
    );
    let in_rollout = (0..1000)
        .filter(|i| on(json!({"id": format!("user-{i}"), "country": "US"})))
        .count();
    assert!(
        (400..600).contains(&in_rollout),
        "a 50% rollout serves about half: {in_rollout}"
    );

    let (s, staging_payload, _) = t
        .send(get(
            staging["client_key"].as_str().unwrap().to_owned(),
            None,
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        staging_payload["features"],
        json!({}),
        "disabled in staging: not served"
    );

    let (s, _, _) = t.send(get(prod_key.clone(), Some(etag.clone()))).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    // A change is served at once with a new ETag.
    let mut update = checkout();
    update["version"] = json!(1);
    update["default_value"] = json!(true);
    t.api("PUT", "/features/new-checkout", Some(update)).await;
    let (s, payload, headers) = t.send(get(prod_key.clone(), Some(etag.clone()))).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(headers["etag"].to_str().unwrap(), etag);
    assert_eq!(payload["features"]["new-checkout"]["defaultValue"], true);
    // Archived features are not served.
    t.api("DELETE", "/features/new-checkout", None).await;
    let (_, payload, _) = t.send(get(prod_key, None)).await;
    assert_eq!(payload["features"], json!({}));
    let (s, b, _) = t.send(get("sdk-unknown".into(), None)).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("invalid_client_key"))
    );
}

#[tokio::test]
async fn another_organization_cannot_manage_features() {
    let t = TestServer::start().await;
    let store = &t.server().state.store;
    let org2 = store.create_organization("Other").await.unwrap();
    let key2 = store.create_personal_key(org2, None, "k").await.unwrap();
    let req = Request::post(format!("/api/v1/projects/{}/features", t.project_id))
        .header("authorization", format!("Bearer {key2}"))
        .header("content-type", "application/json")
        .body(Body::from(checkout().to_string()))
        .unwrap();
    let (s, _, _) = t.send(req).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = t.api("GET", "/features", None).await;
    assert_eq!(list["results"], json!([]));
}

#[tokio::test]
async fn streaming_sdks_get_changes_within_a_second() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let t = TestServer::start().await;
    t.api("POST", "/features", Some(checkout())).await;
    let (_, prod) = t
        .api(
            "POST",
            "/sdk-connections",
            Some(json!({"environment": "production"})),
        )
        .await;
    let key = prod["client_key"].as_str().unwrap();
    let mut req = Request::get(format!("/sub/{key}"))
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            1,
        ))));
    let resp = flywheel_server::app(t.server().state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // A change to another project's feature is not sent; this project's change is, within a second.
    let mut update = checkout();
    update["version"] = json!(1);
    update["default_value"] = json!(true);
    let started = std::time::Instant::now();
    let (s, b) = t.api("PUT", "/features/new-checkout", Some(update)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
            .await
            .unwrap_or_else(|_| panic!("an event within 1 s; got so far: {text:?}"));
        let frame = frame.unwrap().unwrap();
        if let Some(data) = frame.data_ref() {
            text.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(text.starts_with("event: features\ndata: "), "{text}");
    let payload: Value =
        serde_json::from_str(text.trim_start_matches("event: features\ndata: ").trim()).unwrap();
    assert_eq!(payload["features"]["new-checkout"]["defaultValue"], true);

    // Unknown client keys are refused before streaming.
    let (s, _, _) = t
        .send(Request::get("/sub/sdk-nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Shutting down ends open streams instead of waiting for them.
    let mut t = t;
    let server = t.server.take().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown with an open stream")
        .unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(2), body.frame())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "no more events after shutdown");
}

#[tokio::test]
async fn bodies_are_json_whatever_the_content_type_and_errors_say_what_is_wrong() {
    let t = TestServer::start().await;
    let post = |content_type: Option<&'static str>, body: &'static str| {
        let mut req = Request::post(format!("/api/v1/projects/{}/features", t.project_id))
            .header("authorization", format!("Bearer {}", t.personal_key));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.body(Body::from(body)).unwrap()
    };
    // `curl -d` sends a form content type with a JSON body: accepted.
    let body = r#"{"key": "curl-made", "value_type": "boolean", "default_value": false}"#;
    let (s, b, _) = t
        .send(post(Some("application/x-www-form-urlencoded"), body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _, _) = t
        .send(post(
            None,
            r#"{"key": "no-type", "value_type": "string", "default_value": ""}"#,
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for (body, code) in [
        ("", "empty_body"),
        ("  \n", "empty_body"),
        ("{\"key\": ", "invalid_json"),
        ("key=x", "invalid_json"),
    ] {
        let (s, b, _) = t.send(post(Some("application/json"), body)).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body:?}: {b}"
        );
    }
    // JSON of the wrong shape for a typed body names the field.
    let req = Request::post(format!("/api/v1/projects/{}/environments", t.project_id))
        .header("authorization", format!("Bearer {}", t.personal_key))
        .body(Body::from(r#"{"key": "qa", "colour": "red"}"#))
        .unwrap();
    let (s, b, _) = t.send(req).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    assert!(b["message"].as_str().unwrap().contains("colour"), "{b}");
}

#[tokio::test]
async fn evaluate_explains_what_each_rule_did() {
    let t = TestServer::start().await;
    let (s, v) = t
        .api(
            "POST",
            "/features",
            Some(json!({"key": "explained", "value_type": "boolean", "default_value": false,
                "environments": {"production": {"enabled": true, "rules": [
                    {"id": "pros", "type": "force", "condition": {"plan": "pro"}, "value": true},
                    {"id": "nobody-yet", "type": "rollout", "value": true, "coverage": 0.0},
                    {"id": "everyone-in-fr", "type": "force", "condition": {"country": "FR"}, "value": true}
                ]}}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let explain = |attributes: Value| {
        let t = &t;
        async move {
            let (s, v) = t
                .api(
                    "POST",
                    "/evaluate",
                    Some(
                        json!({"environment": "production", "attributes": attributes,
                                "features": ["explained"], "explain": true}),
                    ),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["results"]["explained"].clone()
        }
    };
    let outcomes = |r: &Value| -> Vec<String> {
        r["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                format!(
                    "{}:{}",
                    x["id"].as_str().unwrap(),
                    x["outcome"].as_str().unwrap()
                )
            })
            .collect()
    };
    let free = explain(json!({"id": "u1", "plan": "free", "country": "DE"})).await;
    assert_eq!(free["source"], "defaultValue");
    assert_eq!(
        outcomes(&free),
        [
            "pros:condition_false",
            "nobody-yet:outside_rollout",
            "everyone-in-fr:condition_false"
        ]
    );
    assert!(free["rules"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("rollout"));
    let french = explain(json!({"id": "u2", "plan": "free", "country": "FR"})).await;
    assert_eq!(
        (french["rule_id"].as_str(), french["value"].as_bool()),
        (Some("everyone-in-fr"), Some(true))
    );
    assert_eq!(
        outcomes(&french),
        [
            "pros:condition_false",
            "nobody-yet:outside_rollout",
            "everyone-in-fr:applied"
        ]
    );
    let pro = explain(json!({"id": "u3", "plan": "pro"})).await;
    assert_eq!(outcomes(&pro), ["pros:applied"]);
    // Without `explain` the answer carries no trace.
    let (_, plain) = t
        .api(
            "POST",
            "/evaluate",
            Some(json!({"environment": "production", "attributes": {"id": "u1"}, "features": ["explained"]})),
        )
        .await;
    assert!(plain["results"]["explained"].get("rules").is_none());
}

#[tokio::test]
async fn the_audit_log_pages_by_entry_id() {
    let t = TestServer::start().await;
    for key in ["a", "b", "c", "d", "e"] {
        t.created(
            "/features",
            json!({"key": key, "value_type": "boolean", "default_value": false}),
        )
        .await;
    }
    let ids = |v: &Value| -> Vec<i64> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let (_, all) = t.api("GET", "/audit?entity_type=feature", None).await;
    let all = ids(&all);
    assert_eq!(all.len(), 5);
    let (_, first) = t
        .api("GET", "/audit?entity_type=feature&limit=2", None)
        .await;
    let first = ids(&first);
    let (s, second) = t
        .api(
            "GET",
            &format!("/audit?entity_type=feature&limit=2&before_id={}", first[1]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut paged = first.clone();
    paged.extend(ids(&second));
    assert_eq!(paged, all[..4]);
}
