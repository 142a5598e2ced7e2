//! Dashboards of saved insights: a definition kind whose insights are validated as their kind's query, versioned,
//! archived, and writable with `insights:write` but not with `insights:read`.

use axum::http::StatusCode;
use serde_json::json;

use crate::TestServer;

#[tokio::test]
async fn dashboards_hold_valid_insights_with_versions_and_scopes() {
    let t = TestServer::start().await;
    // Each insight's query is checked as its kind, errors named by their path in the document.
    let (s, v) = t
        .api(
            "POST",
            "/dashboards",
            Some(json!({"key": "growth", "name": "Growth", "insights": [
                {"name": "Views", "kind": "trends", "query": {"series": [{"event": "$pageview", "math": "bogus"}]}},
                {"name": "Pie", "kind": "pie", "query": {}},
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"insights[0].query.series[0].math"), "{v}");
    assert!(fields.contains(&"insights[1].kind"), "{v}");

    let views = json!({"name": "Views", "kind": "trends", "query": {"series": [{"event": "$pageview"}], "date_from": "-7d"}, "chart": "bar"});
    let made = t
        .created(
            "/dashboards",
            json!({"key": "growth", "name": "Growth", "insights": [views]}),
        )
        .await;
    assert_eq!(made["insights"][0]["query"]["date_from"], "-7d", "{made}");
    assert_eq!(made["version"], 1, "{made}");

    // Adding an insight is a conditional PATCH of the list; a stale version is refused.
    let funnel = json!({"name": "Sign-up funnel", "kind": "funnel", "query": {"steps": [{"event": "signed_up"}, {"event": "project_created"}]}});
    let (s, v) = t
        .api(
            "PATCH",
            "/dashboards/growth",
            Some(json!({"insights": [views, funnel], "version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["insights"].as_array().unwrap().len(), 2);
    assert_eq!(v["version"], 2);
    let (s, v) = t
        .api(
            "PATCH",
            "/dashboards/growth",
            Some(json!({"insights": [], "version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // The stored query runs as saved.
    let (s, v) = t
        .api("POST", "/insights/funnel", Some(funnel["query"].clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, v) = t.api("GET", "/dashboards", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["key"], "growth", "{v}");
    let (s, v) = t.api("GET", "/dashboards/growth/versions", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 2, "{v}");

    // insights:read may list but not change; insights:write may.
    for (scopes, write) in [
        (json!(["insights:read"]), false),
        (json!(["insights:write"]), true),
    ] {
        let made = t
            .created(
                "/api-keys",
                json!({"name": format!("bot {write}"), "scopes": scopes}),
            )
            .await;
        let key = made["key"].as_str().unwrap();
        assert_eq!(
            t.api_as(key, "GET", "/dashboards", None).await.0,
            StatusCode::OK
        );
        let (s, v) = t
            .api_as(
                key,
                "POST",
                "/dashboards",
                Some(json!({"key": format!("k{write}"), "name": "K"})),
            )
            .await;
        assert_eq!(
            s,
            if write {
                StatusCode::CREATED
            } else {
                StatusCode::FORBIDDEN
            },
            "{scopes} {v}"
        );
    }

    let (s, _) = t.api("DELETE", "/dashboards/growth", None).await;
    assert!(s.is_success(), "{s}");
    let (_, v) = t.api("GET", "/dashboards", None).await;
    assert!(
        !v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["key"] == "growth"),
        "archived: {v}"
    );
    let (_, v) = t.api("GET", "/dashboards?archived=true", None).await;
    assert_eq!(v["results"][0]["key"], "growth", "{v}");
}
