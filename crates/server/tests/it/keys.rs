//! Personal API keys with scopes, project restriction, expiry and revocation.

use axum::http::StatusCode;
use serde_json::json;

use crate::TestServer;

#[tokio::test]
async fn scoped_keys_reach_only_what_their_scopes_allow() {
    let t = TestServer::start().await;
    // Validation by field.
    let (s, v) = t
        .api(
            "POST",
            "/api-keys",
            Some(json!({"scopes": ["features:admin"], "expires_in_days": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "scopes[0]", "expires_in_days"], "{v}");

    let made = t
        .created(
            "/api-keys",
            json!({"name": "flags bot", "scopes": ["features:write", "insights:read", "keys:write"], "expires_in_days": 30}),
        )
        .await;
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("fwsec_"));
    // features:write includes reading; insights are readable (a POST that computes is a read); the rest is not.
    let feature = json!({"key": "bot-flag", "value_type": "boolean", "default_value": false,
                         "environments": {"production": {"enabled": true, "rules": []}}});
    assert_eq!(
        t.api_as(&key, "POST", "/features", Some(feature)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        t.api_as(&key, "GET", "/features", None).await.0,
        StatusCode::OK
    );
    let (s, _) = t
        .api_as(
            &key,
            "POST",
            "/insights/trends",
            Some(json!({"series": [{"event": "e"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for (method, path) in [
        ("GET", "/experiments"),
        ("POST", "/cohorts"),
        ("GET", "/audit"),
        ("GET", "/webhooks"),
        ("PATCH", ""),
    ] {
        let (s, v) = t.api_as(&key, method, path, Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert_eq!(v["code"], "insufficient_scope");
    }
    // It cannot grant what it does not hold, nor an unscoped key.
    let (s, v) = t
        .api_as(
            &key,
            "POST",
            "/api-keys",
            Some(json!({"name": "x", "scopes": ["audit:read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = t
        .api_as(&key, "POST", "/api-keys", Some(json!({"name": "x"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, narrower) = t
        .api_as(
            &key,
            "POST",
            "/api-keys",
            Some(json!({"name": "reader", "scopes": ["features:read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{narrower}");
    let reader = narrower["key"].as_str().unwrap().to_owned();
    assert_eq!(
        t.api_as(&reader, "PUT", "/features/bot-flag", Some(json!({})))
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // Listed without their text, with the last use; revoked keys stop working.
    let (_, list) = t.api("GET", "/api-keys", None).await;
    let listed = list["results"].as_array().unwrap();
    assert!(!list.to_string().contains(&key), "no key text in the list");
    let bot = listed.iter().find(|k| k["name"] == "flags bot").unwrap();
    assert!(
        bot["last_used_at"].is_string() && bot["expires_at"].is_string(),
        "{bot}"
    );
    let (s, _) = t
        .api("DELETE", &format!("/api-keys/{}", narrower["id"]), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        t.api_as(&reader, "GET", "/features", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = t
        .api("DELETE", &format!("/api-keys/{}", narrower["id"]), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "already revoked");

    // An expired key authenticates nothing.
    let store = &t.server().state.store;
    let (_, expired) = store
        .create_scoped_key(
            t.organization_id,
            Some(t.project_id),
            "old",
            None,
            Some("2020-01-01T00:00:00.000000Z"),
            None,
            &flywheel_store::Actor {
                label: "test".into(),
                source_ip: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        t.api_as(&expired, "GET", "/features", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Creation and revocation are audited.
    let (_, audit) = t.api("GET", "/audit?entity_type=api_key", None).await;
    let actions: Vec<&str> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"api_key.created") && actions.contains(&"api_key.revoked"),
        "{actions:?}"
    );
}
