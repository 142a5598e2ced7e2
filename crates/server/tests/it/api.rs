//! The native API: authentication, filters, and isolation between projects.

use axum::http::StatusCode;
use serde_json::json;

use crate::TestServer;

#[tokio::test]
async fn a_key_never_reads_another_projects_data() {
    let t = TestServer::start().await;
    let store = &t.server().state.store;
    // A second organization with its own project and key, and a key restricted to one project.
    let org2 = store.create_organization("Other org").await.unwrap();
    let (p2, token2) = store.create_project(org2, "Other").await.unwrap();
    let key2 = store.create_personal_key(org2, None, "k2").await.unwrap();
    let (p3, _) = store
        .create_project(t.organization_id, "Second project of org 1")
        .await
        .unwrap();
    let restricted = store
        .create_personal_key(t.organization_id, Some(t.project_id), "restricted")
        .await
        .unwrap();

    t.post(
        "/batch",
        json!({"api_key": t.token, "batch": [{"event": "secret1", "distinct_id": "same"}]})
            .to_string(),
    )
    .await;
    t.post(
        "/batch",
        json!({"api_key": token2, "batch": [{"event": "secret2", "distinct_id": "same"}]})
            .to_string(),
    )
    .await;

    let p1 = t.project_id;
    let (s, b) = t
        .get_api(&format!("/api/v1/projects/{p1}/events"), &key2)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(b["code"], "project_not_found");
    let (s, _) = t
        .get_api(&format!("/api/v1/projects/{p1}/persons/same"), &key2)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .get_api(&format!("/api/v1/projects/{p2}/events"), &t.personal_key)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .get_api(&format!("/api/v1/projects/{p3}/events"), &restricted)
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a project-restricted key cannot read a sibling project"
    );
    let (s, b) = t
        .get_api(&format!("/api/v1/projects/{p3}/events"), &t.personal_key)
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "an organization key reads every project of its organization: {b}"
    );
    assert_eq!(b["results"], json!([]));

    // Each key sees only its own project's events and persons.
    let (_, b) = t
        .get_api(&format!("/api/v1/projects/{p2}/events"), &key2)
        .await;
    let names: Vec<_> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(names, vec![json!("secret2")]);
    let (_, b) = t
        .get_api(&format!("/api/v1/projects/{p1}/events"), &restricted)
        .await;
    let names: Vec<_> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(names, vec![json!("secret1")]);
    let (_, person1) = t
        .get_api(
            &format!("/api/v1/projects/{p1}/persons/same"),
            &t.personal_key,
        )
        .await;
    let (_, person2) = t
        .get_api(&format!("/api/v1/projects/{p2}/persons/same"), &key2)
        .await;
    assert_ne!(person1["id"], person2["id"]);
    // A person id of another project finds nothing.
    let other_person = person2["id"].as_str().unwrap();
    let (_, b) = t
        .get_api(
            &format!("/api/v1/projects/{p1}/events?person_id={other_person}"),
            &t.personal_key,
        )
        .await;
    assert_eq!(b["results"], json!([]));
}

#[tokio::test]
async fn authentication_errors_are_clear() {
    let t = TestServer::start().await;
    let p = t.project_id;
    let req = axum::http::Request::get(format!("/api/v1/projects/{p}/events"))
        .body(axum::body::Body::empty())
        .unwrap();
    let (s, b, _) = t.send(req).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_api_key"))
    );
    let (s, b) = t
        .get_api(&format!("/api/v1/projects/{p}/events"), "fwsec_nope")
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let (s, b) = t
        .get_api(&format!("/api/v1/projects/{p}/events"), &t.token)
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a public project key cannot read: {b}"
    );
    let (s, b) = t
        .get_api("/api/v1/projects/abc/events", &t.personal_key)
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_project_id"))
    );
    for bad in [
        "limit=0",
        "limit=abc",
        "limit=100000",
        "after=yesterday",
        "before=2026-13-45",
    ] {
        let (s, b) = t
            .get_api(
                &format!("/api/v1/projects/{p}/events?{bad}"),
                &t.personal_key,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert!(
            b["message"]
                .as_str()
                .unwrap()
                .contains(bad.split('=').next().unwrap()),
            "{bad}: {b}"
        );
    }
    let (s, b) = t.person("nobody").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}

#[tokio::test]
async fn event_filters_and_ordering() {
    let t = TestServer::start().await;
    let mut batch = Vec::new();
    for i in 0..30 {
        batch.push(json!({
            "event": if i % 3 == 0 { "signup" } else { "view" },
            "distinct_id": format!("u{}", i % 2),
            "timestamp": format!("2026-01-{:02}T12:00:00Z", i + 1),
            "properties": {"i": i},
        }));
    }
    // Send newest first so that ingestion order differs from time order.
    batch.reverse();
    let (s, _) = t
        .post(
            "/batch",
            json!({"api_key": t.token, "historical_migration": true, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let all = t.events("limit=1000").await;
    assert_eq!(all.len(), 30);
    let idx: Vec<i64> = all
        .iter()
        .map(|e| e["properties"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(idx, (0..30).rev().collect::<Vec<_>>(), "newest first");
    let top = t.events("limit=5").await;
    assert_eq!(
        top.iter()
            .map(|e| e["properties"]["i"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![29, 28, 27, 26, 25]
    );
    let signups = t.events("event=signup").await;
    assert_eq!(signups.len(), 10);
    let u1 = t.events("distinct_id=u1").await;
    assert!(u1.len() == 15 && u1.iter().all(|e| e["distinct_id"] == "u1"));
    let window = t
        .events("after=2026-01-10&before=2026-01-20T00:00:00Z")
        .await;
    let idx: Vec<i64> = window
        .iter()
        .map(|e| e["properties"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(idx, (9..19).rev().collect::<Vec<_>>());
    let combined = t.events("event=view&distinct_id=u0&after=2026-01-05").await;
    assert!(combined
        .iter()
        .all(|e| e["event"] == "view" && e["distinct_id"] == "u0"));
    assert_eq!(
        combined.len(),
        (4..30).filter(|i| i % 3 != 0 && i % 2 == 0).count()
    );
}
