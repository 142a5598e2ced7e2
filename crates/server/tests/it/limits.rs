//! Rate limits: capture events per second per project (whole requests refused, nothing written), native API
//! requests per second per key and per project; `429 rate_limited` with `Retry-After`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::TestServer;

fn batch(t: &TestServer, prefix: &str, n: usize) -> String {
    let events: Vec<_> = (0..n)
        .map(|i| json!({"event": "e", "distinct_id": format!("{prefix}-{i}")}))
        .collect();
    json!({"api_key": t.token, "batch": events}).to_string()
}

#[tokio::test]
async fn capture_is_limited_per_project_whole_requests_at_a_time() {
    let t = TestServer::start_with(|c| c.capture_events_per_second = 100).await;
    let (s, v) = t.post("/batch", batch(&t, "a", 60)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let req = Request::post("/batch")
        .header("content-type", "application/json")
        .body(Body::from(batch(&t, "b", 60)))
        .unwrap();
    let (s, v, headers) = t.send(req).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["code"], "rate_limited", "{v}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // After the wait the batch goes through; nothing of the refused one was written.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = t.post("/batch", batch(&t, "c", 60)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = t.events("limit=1000").await;
    assert_eq!(events.len(), 120);
    assert!(events
        .iter()
        .all(|e| !e["distinct_id"].as_str().unwrap().starts_with("b-")));
    let (_, metrics, _) = t
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("flywheel_rate_limited_total{scope=\"capture\"}"),
        "the refusal is counted"
    );
}

#[tokio::test]
async fn the_native_api_is_limited_per_key_and_per_project() {
    let t = TestServer::start_with(|c| c.api_requests_per_second = 5).await;
    for _ in 0..5 {
        let (s, v) = t.api("GET", "/features", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = t.api("GET", "/cohorts", None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{v}"
    );
    // Capture has its own (unset) limit.
    let (s, _) = t.post("/batch", batch(&t, "x", 3)).await;
    assert_eq!(s, StatusCode::OK);

    let t = TestServer::start_with(|c| c.project_api_requests_per_second = 3).await;
    for _ in 0..3 {
        let (s, _) = t.api("GET", "/features", None).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, v) = t.api("GET", "/features", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("project {}", t.project_id)),
        "{v}"
    );

    // A project's own API limit overrides the server's (here none).
    let t = TestServer::start().await;
    for _ in 0..20 {
        assert_eq!(t.api("GET", "/features", None).await.0, StatusCode::OK);
    }
    let (s, v) = t
        .api(
            "PATCH",
            "",
            Some(json!({"ingestion": {"api_requests_per_second": "lots"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["errors"][0]["field"], "ingestion.api_requests_per_second");
    let (s, v) = t
        .api(
            "PATCH",
            "",
            Some(json!({"ingestion": {"api_requests_per_second": 2}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut refused = 0;
    for _ in 0..6 {
        let (s, _) = t.api("GET", "/features", None).await;
        refused += usize::from(s == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(refused >= 3, "{refused} of 6 refused at 2/s");
}
