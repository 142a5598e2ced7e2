//! Flag serving: PostHog `/flags` and `/decide`, OFREP, saved groups, encrypted payloads, exposures, revocation.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

impl TestServer {
    async fn feature(&self, body: Value) {
        let (s, b) = self.api("POST", "/features", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }

    async fn client_key(&self, environment: &str, encrypt: bool) -> Value {
        let (s, b) = self
            .api(
                "POST",
                "/sdk-connections",
                Some(json!({"environment": environment, "encrypt": encrypt})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }

    /// A production client key.
    async fn sdk_key(&self) -> String {
        self.client_key("production", false).await["client_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn flags(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post(path, body.to_string()).await
    }

    async fn ofrep(
        &self,
        path: &str,
        key: &str,
        body: &str,
        etag: Option<&str>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::post(format!("/ofrep/v1/evaluate/flags{path}"))
            .header("content-type", "application/json")
            .header("x-api-key", key);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        self.send(req.body(Body::from(body.to_owned())).unwrap())
            .await
    }
}

fn env(rules: Value) -> Value {
    json!({"production": {"enabled": true, "rules": rules}})
}

/// A small catalogue of every value type and rule kind.
async fn catalogue(t: &TestServer) {
    t.feature(json!({"key": "pro-only", "value_type": "boolean", "default_value": false,
        "description": "Pro plan gate", "tags": ["billing", "gate"],
        "environments": env(json!([{"type": "force", "id": "pros", "condition": {"plan": "pro"}, "value": true}]))}))
        .await;
    t.feature(
        json!({"key": "theme", "value_type": "string", "default_value": "light",
        "environments": env(json!([{"type": "experiment", "tracking_key": "theme-test",
                                    "variations": ["light", "dark"], "weights": [0.5, 0.5]}]))}),
    )
    .await;
    t.feature(
        json!({"key": "limits", "value_type": "json", "default_value": {"seats": 3},
        "environments": env(json!([]))}),
    )
    .await;
    t.feature(json!({"key": "max-items", "value_type": "number", "default_value": 10,
        "environments": env(json!([{"type": "rollout", "id": "more", "value": 50, "coverage": 1.0}]))}))
        .await;
    t.feature(json!({"key": "company-beta", "value_type": "boolean", "default_value": false,
        "environments": env(json!([{"type": "force", "condition": {"$group_properties.company.tier": "enterprise"}, "value": true}]))}))
        .await;
    t.feature(
        json!({"key": "off-in-prod", "value_type": "boolean", "default_value": true,
        "environments": {"production": {"enabled": false}}}),
    )
    .await;
}

#[tokio::test]
async fn posthog_flags_serve_every_shape_with_stored_person_properties() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    // The person's plan is known from an earlier $identify; the request does not repeat it.
    let (s, _) = t
        .post(
            "/capture/",
            json!({"api_key": t.token, "event": "$identify", "distinct_id": "u1",
                   "properties": {"$set": {"plan": "pro"}}})
            .to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    t.server().state.catch_up().await;

    let (s, v2) = t
        .flags(
            "/flags/?v=2",
            json!({"api_key": t.token, "distinct_id": "u1"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v2}");
    let f = &v2["flags"];
    assert_eq!(
        f["pro-only"]["enabled"], true,
        "stored person property used: {v2}"
    );
    assert_eq!(f["pro-only"]["reason"]["code"], "condition_match");
    assert_eq!(f["pro-only"]["reason"]["condition_index"], 0);
    assert_eq!(f["pro-only"]["metadata"]["description"], "Pro plan gate");
    assert_eq!(f["pro-only"]["metadata"]["version"], 1);
    assert!(f["theme"]["variant"] == "light" || f["theme"]["variant"] == "dark");
    assert_eq!(f["theme"]["enabled"], true);
    assert_eq!(f["limits"]["enabled"], true);
    assert_eq!(f["limits"]["metadata"]["payload"], r#"{"seats":3}"#);
    assert_eq!(f["max-items"]["metadata"]["payload"], "50");
    assert_eq!(f["off-in-prod"]["enabled"], false);
    assert_eq!(f["off-in-prod"]["reason"]["code"], "flag_disabled");
    assert!(v2.get("featureFlags").is_none());
    assert!(
        f["pro-only"].get("value").is_none(),
        "no typed value before v4"
    );

    // The request's person properties win over the stored ones.
    let (_, v4) = t
        .flags(
            "/flags?v=4",
            json!({"token": t.token, "distinct_id": "u1", "person_properties": {"plan": "free"}}),
        )
        .await;
    assert_eq!(v4["flags"]["pro-only"]["value"], false);
    assert_eq!(v4["flags"]["limits"]["value"], json!({"seats": 3}));
    assert_eq!(v4["flags"]["max-items"]["value"], 50);

    // Groups: the request names the company, its properties come from the request (or storage).
    let (_, g) = t
        .flags(
            "/flags?v=2",
            json!({"api_key": t.token, "distinct_id": "u2", "groups": {"company": "acme"},
                   "group_properties": {"company": {"tier": "enterprise"}}}),
        )
        .await;
    assert_eq!(g["flags"]["company-beta"]["enabled"], true, "{g}");
    let (_, g) = t
        .flags(
            "/flags?v=2",
            json!({"api_key": t.token, "distinct_id": "u2", "groups": {"company": "acme"}}),
        )
        .await;
    assert_eq!(g["flags"]["company-beta"]["enabled"], false);

    // Legacy shape: values and JSON-text payloads.
    let (_, v1) = t
        .flags("/flags", json!({"api_key": t.token, "distinct_id": "u1"}))
        .await;
    assert_eq!(v1["featureFlags"]["pro-only"], true);
    assert_eq!(v1["featureFlags"]["off-in-prod"], false);
    assert!(v1["featureFlags"]["theme"].is_string());
    assert_eq!(v1["featureFlagPayloads"]["limits"], r#"{"seats":3}"#);
    assert!(v1["featureFlagPayloads"].get("pro-only").is_none());
    assert_eq!(v1["errorsWhileComputingFlags"], false);

    // /decide: v3 legacy with config, v4 records, v1 the enabled keys; flag_keys_to_evaluate narrows.
    let (_, d3) = t
        .flags(
            "/decide/?v=3",
            json!({"token": t.token, "distinct_id": "u1"}),
        )
        .await;
    assert_eq!(d3["featureFlags"]["pro-only"], true);
    assert!(d3["supportedCompression"].is_array());
    let (_, d4) = t
        .flags(
            "/decide?v=4",
            json!({"token": t.token, "distinct_id": "u1", "flag_keys_to_evaluate": ["limits"]}),
        )
        .await;
    assert_eq!(d4["flags"].as_object().unwrap().len(), 1, "{d4}");
    let (_, d1) = t
        .flags("/decide", json!({"token": t.token, "distinct_id": "u1"}))
        .await;
    assert!(d1["featureFlags"]
        .as_array()
        .unwrap()
        .contains(&json!("pro-only")));

    // A gzip body, as the browser SDK sends it.
    let body = crate::gzip(
        json!({"token": t.token, "distinct_id": "u1"})
            .to_string()
            .as_bytes(),
    );
    let (s, gz) = t.post("/flags?v=2&compression=gzip-js", body).await;
    assert_eq!(s, StatusCode::OK, "{gz}");
    assert_eq!(gz["flags"]["pro-only"]["enabled"], true);

    // Stored properties are cached per user, but a property change is seen once identity has applied it.
    async fn pro_only(t: &TestServer) -> Value {
        let body = json!({"api_key": t.token, "distinct_id": "u3"});
        t.flags("/flags?v=2", body).await.1["flags"]["pro-only"]["enabled"].clone()
    }
    assert_eq!(pro_only(&t).await, false);
    assert_eq!(pro_only(&t).await, false, "cached");
    t.post(
        "/capture/",
        json!({"api_key": t.token, "event": "upgraded", "distinct_id": "u3", "properties": {"$set": {"plan": "pro"}}})
            .to_string(),
    )
    .await;
    t.server().state.catch_up().await;
    assert_eq!(
        pro_only(&t).await,
        true,
        "the change invalidated the cached properties"
    );
}

#[tokio::test]
async fn posthog_flags_refuse_bad_requests_clearly() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "/flags?v=2",
            br#"{"distinct_id": "u"}"#.to_vec(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "/flags?v=2",
            br#"{"api_key": "fwpub_nope", "distinct_id": "u"}"#.to_vec(),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "/flags?v=2",
            format!(r#"{{"api_key": "{}"}}"#, t.token).into_bytes(),
            StatusCode::BAD_REQUEST,
            "missing_distinct_id",
        ),
        (
            "/flags?v=2",
            format!(
                r#"{{"api_key": "{}", "distinct_id": "u", "groups": [1]}}"#,
                t.token
            )
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "/flags?v=two",
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_version",
        ),
        (
            "/flags?v=2",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "/flags?v=2",
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        ),
        (
            "/flags?v=2",
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
    ];
    for (path, body, status, code) in cases {
        let (s, b) = t.post(path, body.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (status, Some(code)),
            "{path} {} -> {b}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[tokio::test]
async fn ofrep_evaluates_single_and_bulk_with_etags_and_spec_errors() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    let key = t.sdk_key().await;
    let ctx = |tk: &str, extra: Value| {
        let mut c = json!({"targetingKey": tk});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"context": c}).to_string()
    };

    let (s, b, _) = t
        .ofrep("/pro-only", &key, &ctx("u1", json!({"plan": "pro"})), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["key"], "pro-only");
    assert_eq!(b["value"], true);
    assert_eq!(b["reason"], "TARGETING_MATCH");
    assert_eq!(b["variant"], "pros");
    assert_eq!(b["metadata"]["tags"], "billing,gate");
    let (_, b, _) = t
        .ofrep("/pro-only", &key, &ctx("u1", json!({})), None)
        .await;
    assert_eq!(
        (b["value"].clone(), b["variant"].clone()),
        (json!(false), json!("default"))
    );
    let (_, b, _) = t.ofrep("/limits", &key, &ctx("u1", json!({})), None).await;
    assert_eq!(
        (b["value"].clone(), b["reason"].clone()),
        (json!({"seats": 3}), json!("STATIC"))
    );
    let (_, b, _) = t
        .ofrep("/max-items", &key, &ctx("u1", json!({})), None)
        .await;
    assert_eq!(
        (b["value"].clone(), b["reason"].clone()),
        (json!(50), json!("SPLIT"))
    );
    let (_, b, _) = t.ofrep("/theme", &key, &ctx("u1", json!({})), None).await;
    assert_eq!(b["reason"], "SPLIT");
    assert!(b["variant"] == "0" || b["variant"] == "1", "{b}");
    let (_, b, _) = t
        .ofrep("/off-in-prod", &key, &ctx("u1", json!({})), None)
        .await;
    assert_eq!(b["reason"], "DISABLED");
    assert!(
        b.get("value").is_none(),
        "the provider uses the code default: {b}"
    );

    // Errors, in the spec's shapes.
    let errors: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "/nope",
            ctx("u1", json!({})),
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
        ),
        (
            "/pro-only",
            r#"{"context": {}}"#.into(),
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
        ),
        (
            "/pro-only",
            r#"{"context": {"targetingKey": 7}}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
        ),
        (
            "/pro-only",
            r#"{"context": []}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
        ),
        (
            "/pro-only",
            r#"{}"#.into(),
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
        ),
        (
            "/pro-only",
            "{oops".into(),
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
        ),
        (
            "",
            r#"{"context": {}}"#.into(),
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
        ),
    ];
    for (path, body, status, code) in errors {
        let (s, b, _) = t.ofrep(path, &key, &body, None).await;
        assert_eq!(
            (s, b["errorCode"].as_str()),
            (status, Some(code)),
            "{path} {body} -> {b}"
        );
        if !path.is_empty() {
            assert_eq!(
                b["key"],
                path.trim_start_matches('/'),
                "single failures name the flag"
            );
        }
    }
    let (s, _, _) = t
        .ofrep("/pro-only", "sdk-unknown", &ctx("u1", json!({})), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let req = Request::post("/ofrep/v1/evaluate/flags/pro-only")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::from(ctx("u1", json!({}))))
        .unwrap();
    assert_eq!(t.send(req).await.0, StatusCode::OK, "Bearer works too");
    // Browser providers revalidate cross-origin: they must be allowed to read the ETag.
    let req = Request::post("/ofrep/v1/evaluate/flags")
        .header("origin", "https://app.example.com")
        .header("x-api-key", &key)
        .body(Body::from(ctx("u1", json!({}))))
        .unwrap();
    let (_, _, h) = t.send(req).await;
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );

    // Bulk: every live feature; the ETag covers the flags and the context.
    let (s, bulk, h) = t
        .ofrep("", &key, &ctx("u1", json!({"plan": "pro"})), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{bulk}");
    assert_eq!(bulk["flags"].as_array().unwrap().len(), 6);
    let etag = h["etag"].to_str().unwrap().to_owned();
    let (s, b, _) = t
        .ofrep("", &key, &ctx("u1", json!({"plan": "pro"})), Some(&etag))
        .await;
    assert_eq!((s, b), (StatusCode::NOT_MODIFIED, Value::Null));
    let (s, _, h2) = t
        .ofrep("", &key, &ctx("u1", json!({"plan": "free"})), Some(&etag))
        .await;
    assert_eq!(s, StatusCode::OK, "another context is another answer");
    assert_ne!(h2["etag"], etag.as_str());
    // A change is served at once.
    let (_, current) = t.api("GET", "/features/limits", None).await;
    let mut update = current.clone();
    update["default_value"] = json!({"seats": 10});
    let (s, b) = t.api("PUT", "/features/limits", Some(update)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b, _) = t
        .ofrep("", &key, &ctx("u1", json!({"plan": "pro"})), Some(&etag))
        .await;
    assert_eq!(s, StatusCode::OK);
    let limits = b["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "limits")
        .unwrap()
        .clone();
    assert_eq!(limits["value"], json!({"seats": 10}));
}

#[tokio::test]
async fn sdk_rate_limit_answers_429_with_retry_after() {
    let t = TestServer::start_with(|c| c.sdk_rate_limit = 3).await;
    catalogue(&t).await;
    let key = t.sdk_key().await;
    let body = r#"{"context": {"targetingKey": "u"}}"#;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let (s, _, h) = t.ofrep("/pro-only", &key, body, None).await;
        statuses.push(s);
        if s == StatusCode::TOO_MANY_REQUESTS {
            retry_after = h.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
}

#[tokio::test]
async fn saved_groups_target_rules_and_are_audited() {
    let t = TestServer::start().await;
    let (s, b) = t
        .api(
            "POST",
            "/saved-groups",
            Some(json!({"key": "beta-testers", "type": "list", "attribute": "id", "values": ["u1", "u2"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["version"], 1);
    let (s, _) = t
        .api(
            "POST",
            "/saved-groups",
            Some(json!({"key": "enterprise", "type": "condition", "condition": {"plan": "enterprise"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Validation: unknown groups, bad conditions, bad values.
    let (s, b) = t
        .api(
            "POST",
            "/features",
            Some(json!({"key": "x", "value_type": "boolean", "default_value": false,
                "environments": env(json!([{"type": "force", "value": true, "saved_groups": [{"ids": ["nope"]}]}]))})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        b["errors"][0]["field"], "environments.production.rules[0].saved_groups[0].ids",
        "{b}"
    );
    let (s, b) = t
        .api(
            "POST",
            "/saved-groups",
            Some(json!({"key": "bad", "type": "condition", "condition": {"plan": {"$nope": 1}}})),
        )
        .await;
    assert_eq!(
        (s, b["errors"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("condition")),
        "{b}"
    );
    let (s, _) = t
        .api(
            "POST",
            "/saved-groups",
            Some(json!({"key": "bad", "type": "list", "attribute": "id", "values": [{}]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    t.feature(
        json!({"key": "beta", "value_type": "boolean", "default_value": false,
        "environments": env(json!([{"type": "force", "value": true,
            "saved_groups": [{"match": "any", "ids": ["beta-testers", "enterprise"]}]}]))}),
    )
    .await;
    let eval = |id: &'static str, plan: &'static str| {
        let t = &t;
        async move {
            let (s, b) = t
                .api("POST", "/evaluate", Some(json!({"environment": "production", "attributes": {"id": id, "plan": plan}})))
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["results"]["beta"]["value"].clone()
        }
    };
    assert_eq!(eval("u1", "free").await, true, "in the list");
    assert_eq!(
        eval("u9", "enterprise").await,
        true,
        "matches the condition group"
    );
    assert_eq!(eval("u9", "free").await, false);
    // Changing the group changes who is in, at once.
    let (s, b) = t
        .api(
            "PUT",
            "/saved-groups/beta-testers",
            Some(json!({"version": 1, "type": "list", "attribute": "id", "values": ["u9"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(eval("u1", "free").await, false);
    assert_eq!(eval("u9", "free").await, true);
    let (s, _) = t
        .api(
            "PUT",
            "/saved-groups/beta-testers",
            Some(json!({"version": 1, "type": "list", "attribute": "id", "values": []})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "stale version");
    // A group in use cannot be deleted; an unused one can.
    let (s, b) = t.api("DELETE", "/saved-groups/enterprise", None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::CONFLICT, Some("saved_group_in_use")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("beta"));
    t.api(
        "POST",
        "/saved-groups",
        Some(json!({"key": "unused", "type": "list", "attribute": "id", "values": []})),
    )
    .await;
    let (s, _) = t.api("DELETE", "/saved-groups/unused", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t.api("GET", "/saved-groups/unused", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = t.api("GET", "/audit?entity_type=saved_group", None).await;
    let actions: Vec<&str> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "saved_group.deleted",
            "saved_group.created",
            "saved_group.updated",
            "saved_group.created",
            "saved_group.created"
        ]
    );
    let (_, updated) = t
        .api(
            "GET",
            "/audit?entity_id=beta-testers&action=saved_group.updated",
            None,
        )
        .await;
    assert_eq!(
        updated["results"][0]["diff"][0]["path"], "definition.values",
        "{updated}"
    );
}

#[tokio::test]
async fn encrypted_connections_serve_growthbook_encrypted_features() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    let conn = t.client_key("production", true).await;
    assert_eq!(conn["encrypted"], true);
    let secret = conn["decryption_key"].as_str().unwrap();
    let req = Request::get(format!(
        "/api/features/{}",
        conn["client_key"].as_str().unwrap()
    ))
    .body(Body::empty())
    .unwrap();
    let (s, payload, h) = t.send(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(payload["features"], json!({}), "nothing in the clear");
    let plain =
        flywheel_flags::decrypt(payload["encryptedFeatures"].as_str().unwrap(), secret).unwrap();
    let features: Value = serde_json::from_str(&plain).unwrap();
    assert!(features["pro-only"]["rules"].is_array());
    // SDKs decrypt it with the key and evaluate locally.
    let set = flywheel_flags::FeatureSet::from_json_with_key(&payload.to_string(), secret).unwrap();
    assert!(set.contains("limits"));
    // The ETag is stable while nothing changes.
    let req = Request::get(format!(
        "/api/features/{}",
        conn["client_key"].as_str().unwrap()
    ))
    .header("if-none-match", h["etag"].to_str().unwrap())
    .body(Body::empty())
    .unwrap();
    assert_eq!(t.send(req).await.0, StatusCode::NOT_MODIFIED);
    let (_, list) = t.api("GET", "/sdk-connections", None).await;
    assert!(!list.to_string().contains(secret), "the key is shown once");
}

#[tokio::test]
async fn revoked_client_keys_stop_serving_and_the_revocation_is_audited() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    let conn = t.client_key("production", false).await;
    let key = conn["client_key"].as_str().unwrap();
    let body = r#"{"context": {"targetingKey": "u"}}"#;
    assert_eq!(t.ofrep("/limits", key, body, None).await.0, StatusCode::OK);
    let (s, _) = t
        .api("DELETE", &format!("/sdk-connections/{}", conn["id"]), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        t.ofrep("/limits", key, body, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = t
        .api("DELETE", &format!("/sdk-connections/{}", conn["id"]), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "already revoked");
    let (_, audit) = t
        .api("GET", "/audit?action=sdk_connection.revoked", None)
        .await;
    assert_eq!(audit["results"].as_array().unwrap().len(), 1);
    assert_eq!(audit["results"][0]["source_ip"], "127.0.0.1");
}

#[tokio::test]
async fn experiment_exposures_become_events_once_per_user_and_day() {
    let t = TestServer::start().await;
    catalogue(&t).await;
    let key = t.sdk_key().await;
    for _ in 0..3 {
        let (s, _, _) = t
            .ofrep(
                "/theme",
                &key,
                r#"{"context": {"targetingKey": "exp-user"}}"#,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = t
            .flags(
                "/flags?v=2",
                json!({"api_key": t.token, "distinct_id": "exp-user-2"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    // A bulk evaluation is a prefetch, not an exposure.
    let (s, _, _) = t
        .ofrep(
            "",
            &key,
            r#"{"context": {"targetingKey": "bulk-user"}}"#,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Not an experiment: no exposure unless asked to track.
    t.ofrep(
        "/pro-only",
        &key,
        r#"{"context": {"targetingKey": "exp-user"}}"#,
        None,
    )
    .await;
    let (s, _) = t
        .api(
            "POST",
            "/evaluate",
            Some(
                json!({"environment": "production", "attributes": {"id": "tracked"},
                                              "features": ["limits"], "track": true}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    t.server().state.exposures.flush().await;
    let events = t.events("event=%24feature_flag_called").await;
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["distinct_id"].as_str().unwrap().to_owned(),
                e["properties"]["$feature_flag"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("exp-user".to_owned(), "theme".to_owned()),
            ("tracked".to_owned(), "limits".to_owned()),
        ],
        "PostHog SDKs send their own $feature_flag_called when the app reads a flag: bulk endpoints record none; {events:#?}"
    );
    let exposure = events
        .iter()
        .find(|e| e["distinct_id"] == "exp-user")
        .unwrap();
    assert_eq!(exposure["properties"]["$experiment_key"], "theme-test");
    assert_eq!(exposure["properties"]["$feature_flag_endpoint"], "ofrep");
    assert!(exposure["properties"]["$feature_flag_variant"].is_string());
}

#[tokio::test]
async fn compiled_flags_survive_a_restart() {
    let mut t = TestServer::start().await;
    catalogue(&t).await;
    let key = t.sdk_key().await;
    t.restart().await;
    let (s, b, _) = t
        .ofrep(
            "/limits",
            &key,
            r#"{"context": {"targetingKey": "u"}}"#,
            None,
        )
        .await;
    assert_eq!(
        (s, b["value"].clone()),
        (StatusCode::OK, json!({"seats": 3}))
    );
}

#[tokio::test]
async fn ofrep_event_streams_announce_changes_within_a_second() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let t = TestServer::start().await;
    catalogue(&t).await;
    let key = t.sdk_key().await;
    let (_, bulk, _) = t
        .ofrep("", &key, r#"{"context": {"targetingKey": "u"}}"#, None)
        .await;
    let stream = &bulk["eventStreams"][0];
    assert_eq!(stream["type"], "sse", "{bulk}");
    let uri = stream["endpoint"]["requestUri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(uri, format!("/ofrep/v1/events/{key}"));

    let mut req = Request::get(&uri).body(Body::empty()).unwrap();
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

    let (_, current) = t.api("GET", "/features/limits", None).await;
    let mut update = current.clone();
    update["default_value"] = json!({"seats": 99});
    let started = std::time::Instant::now();
    let (s, _) = t.api("PUT", "/features/limits", Some(update)).await;
    assert_eq!(s, StatusCode::OK);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
            .await
            .unwrap_or_else(|_| panic!("a notification within 1 s; got so far: {text:?}"));
        if let Some(data) = frame.unwrap().unwrap().data_ref() {
            text.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let event: Value = serde_json::from_str(text.trim().trim_start_matches("data: ")).unwrap();
    assert_eq!(event["type"], "refetchEvaluation", "{text}");
    assert!(
        event["etag"].is_string() && event["lastModified"].is_i64(),
        "{event}"
    );
    // The refetch it asks for sees the change.
    let (_, again, _) = t
        .ofrep("", &key, r#"{"context": {"targetingKey": "u"}}"#, None)
        .await;
    let limits = again["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "limits")
        .unwrap()
        .clone();
    assert_eq!(limits["value"], json!({"seats": 99}));
    let req = Request::get("/ofrep/v1/events/sdk-nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send(req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn posthog_browser_sdk_remote_config() {
    let t = TestServer::start().await;
    let get = |path: String| Request::get(path).body(Body::empty()).unwrap();
    let (s, config, headers) = t.send(get(format!("/array/{}/config", t.token))).await;
    assert_eq!(s, StatusCode::OK, "{config}");
    assert_eq!(config["token"], t.token.as_str());
    assert_eq!(
        config["hasFeatureFlags"], true,
        "the SDK loads flags from /flags"
    );
    assert_eq!(config["supportedCompression"], json!(["gzip", "gzip-js"]));
    assert_eq!(config["sessionRecording"], false);
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    // The script form defines the same configuration for the SDK to read.
    let (s, script, headers) = t.send(get(format!("/array/{}/config.js", t.token))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    let script = script.as_str().unwrap();
    let token = serde_json::to_string(&t.token).unwrap();
    let at = script
        .find(&format!("_POSTHOG_REMOTE_CONFIG[{token}]={{config:"))
        .expect(script);
    let object = &script[at + format!("_POSTHOG_REMOTE_CONFIG[{token}]={{config:").len()..];
    let end = object.find(",siteApps:[]}").expect(script);
    let embedded: Value = serde_json::from_str(&object[..end]).unwrap();
    assert_eq!(embedded, config);
    // An unknown token is a clear 404.
    let (s, v, _) = t.send(get("/array/fwpub_nope/config".into())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_token")),
        "{v}"
    );
}
