//! The person search: newest persons, a substring of a distinct id, email or name (case-insensitive), merged
//! persons found through the survivor, bounded limits, and `persons:read` as the scope.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::TestServer;

fn ids(v: &Value) -> Vec<Vec<String>> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["distinct_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn persons_are_searched_by_distinct_id_email_and_name() {
    let t = TestServer::start().await;
    let batch = json!({"api_key": t.token, "batch": [
        {"event": "$pageview", "distinct_id": "anon-7"},
        {"event": "$identify", "distinct_id": "dana", "properties": {"$anon_distinct_id": "anon-7",
            "$set": {"email": "Dana@Example.com"}}},
        {"event": "$pageview", "distinct_id": "erin", "properties": {"$set": {"name": "Erin Example"}}},
        {"event": "$pageview", "distinct_id": "frank-example"},
        {"event": "$pageview", "distinct_id": "gus"},
    ]});
    let (s, v) = t.post("/batch", batch.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Newest first, without a search.
    let (s, v) = t.api("GET", "/persons?limit=2", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), [vec!["gus"], vec!["frank-example"]], "{v}");
    assert_eq!(v["limit"], 2);

    // "EXAMPLE" is in Dana's email, Erin's name and Frank's distinct id; not in Gus's anything.
    let (s, v) = t.api("GET", "/persons?search=EXAMPLE", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        ids(&v),
        [vec!["frank-example"], vec!["erin"], vec!["anon-7", "dana"]],
        "{v}"
    );
    assert_eq!(v["results"][2]["properties"]["email"], "Dana@Example.com");
    assert!(v["results"][2]["id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));

    // The anonymous id reaches the merged person.
    let (_, v) = t.api("GET", "/persons?search=anon-", None).await;
    assert_eq!(ids(&v), [vec!["anon-7", "dana"]], "{v}");
    let (_, v) = t.api("GET", "/persons?search=nobody", None).await;
    assert_eq!(ids(&v), Vec::<Vec<String>>::new(), "{v}");

    for bad in ["limit=0", "limit=101", "limit=x"] {
        let (s, v) = t.api("GET", &format!("/persons?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["errors"][0]["field"], "limit", "{v}");
    }
    let long = "x".repeat(201);
    let (s, v) = t.api("GET", &format!("/persons?search={long}"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // persons:read is enough; insights:read is not.
    for (scopes, ok) in [
        (json!(["persons:read"]), true),
        (json!(["insights:read"]), false),
    ] {
        let made = t
            .created(
                "/api-keys",
                json!({"name": format!("search {ok}"), "scopes": scopes}),
            )
            .await;
        let (s, _) = t
            .get_api(
                &format!("/api/v1/projects/{}/persons?search=dana", t.project_id),
                made["key"].as_str().unwrap(),
            )
            .await;
        assert_eq!(
            s,
            if ok {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            },
            "{scopes}"
        );
    }
}
