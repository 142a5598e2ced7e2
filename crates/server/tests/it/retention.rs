//! Data retention: a project's `retention_days` drops its older events from the intake log, the segments and the
//! tables — on demand and on schedule —, newer events and other projects untouched, also after a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use crate::TestServer;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

async fn call(
    t: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", t.personal_key))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let (s, v, _) = t.send(req).await;
    (s, v)
}

/// Events of `token`'s project, `per_day` on each of the last `days` days (`d` days and 2 hours ago, `d` in the
/// properties), in one batch.
async fn capture_days(t: &TestServer, token: &str, days: i64, per_day: i64, tag: &str) {
    let now = chrono::Utc::now();
    let mut batch = Vec::new();
    for d in 0..days {
        for i in 0..per_day {
            let at = now - chrono::Duration::milliseconds(d * DAY_MS + 2 * HOUR_MS + i);
            batch.push(
                json!({"event": "$pageview", "distinct_id": format!("{tag}-{i}"),
                              "timestamp": at.to_rfc3339(), "properties": {"d": d, "tag": tag}}),
            );
        }
    }
    let (s, v) = t
        .post(
            "/batch",
            json!({"api_key": token, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The project's events per day offset `d` (from `GET …/events`).
async fn per_day(t: &TestServer, project: i64) -> BTreeMap<i64, usize> {
    let (s, v) = call(
        t,
        "GET",
        &format!("/api/v1/projects/{project}/events?limit=10000"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut out = BTreeMap::new();
    for e in v["results"].as_array().unwrap() {
        *out.entry(e["properties"]["d"].as_i64().unwrap())
            .or_default() += 1;
    }
    out
}

/// The same from the intake log itself, per project.
fn log_per_day(t: &TestServer) -> BTreeMap<(i64, i64), usize> {
    let intake = &t.server().state.intake;
    let mut out = BTreeMap::new();
    for item in intake.reader(intake.oldest_lsn()) {
        for e in item.unwrap().1 {
            let props: Value = serde_json::from_str(&e.properties).unwrap();
            if let Some(d) = props["d"].as_i64() {
                *out.entry((e.project_id, d)).or_default() += 1;
            }
        }
    }
    out
}

fn dropped_metric(text: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with("flywheel_retention_events_dropped_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(t: &TestServer) -> String {
    let (_, v, _) = t
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    v.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn retention_drops_a_projects_old_events_everywhere_and_nothing_else() {
    let mut t = TestServer::start().await;
    let store = t.server().state.store.clone();
    let (p2, token2) = store
        .create_project(t.organization_id, "second")
        .await
        .unwrap();
    let p1 = t.project_id;
    let token1 = t.token.clone();
    // Ten days of both projects; the older part sealed into segments, then a second round in the tail.
    capture_days(&t, &token1, 10, 3, "a").await;
    capture_days(&t, &token2, 10, 4, "b").await;
    assert!(t.server().state.tables_catch_up().await);
    let tables = t.server().state.tables.clone();
    let sealed = tokio::task::spawn_blocking(move || tables.seal().unwrap())
        .await
        .unwrap();
    assert_eq!(sealed.rows, 70);
    assert!(
        sealed.segments >= 20,
        "a segment per project and UTC day: {sealed:?}"
    );
    capture_days(&t, &token1, 10, 1, "c").await;
    capture_days(&t, &token2, 10, 1, "d").await;
    let before1 = per_day(&t, p1).await;
    let before2 = per_day(&t, p2).await;
    assert_eq!(before1, (0..10).map(|d| (d, 4)).collect());
    assert_eq!(before2, (0..10).map(|d| (d, 5)).collect());

    // Settings: validated by field, shown by GET.
    let base = format!("/api/v1/projects/{p1}");
    for bad in [json!(0), json!(-1), json!(1.5), json!("3"), json!(100_000)] {
        let (s, v) = call(&t, "PATCH", &base, Some(json!({"retention_days": bad}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(
            (v["code"].as_str(), v["errors"][0]["field"].as_str()),
            (Some("validation_error"), Some("retention_days")),
            "{v}"
        );
    }
    let (_, v) = call(&t, "GET", &base, None).await;
    assert_eq!(v["retention_days"], Value::Null, "kept forever by default");
    let (s, v) = call(&t, "POST", &format!("{base}/retention/run"), None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("retention_not_set"))
    );
    let (s, v) = call(&t, "PATCH", &base, Some(json!({"retention_days": 3}))).await;
    assert_eq!(
        (s, &v["retention_days"]),
        (StatusCode::OK, &json!(3)),
        "{v}"
    );
    let (_, v) = call(&t, "GET", &base, None).await;
    assert_eq!(v["retention_days"], 3);

    let metric_before = dropped_metric(&metrics(&t).await);
    let (s, v) = call(&t, "POST", &format!("{base}/retention/run"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Days 3..9 (each `d` days and 2 hours old) are past the cutoff, days 0..2 are not.
    let expected_dropped: usize = before1
        .iter()
        .filter(|(d, _)| **d >= 3)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(expected_dropped, 28);
    assert_eq!(
        v["events_removed"].as_u64(),
        Some(expected_dropped as u64),
        "{v}"
    );
    assert_eq!(
        v["table_rows_removed"].as_u64(),
        Some(expected_dropped as u64),
        "{v}"
    );
    assert!(v["segments_rewritten"].as_u64().unwrap() >= 7, "{v}");
    assert!(dropped_metric(&metrics(&t).await) - metric_before >= expected_dropped as f64);
    let (_, audit) = call(
        &t,
        "GET",
        &format!("{base}/audit?action=retention.run"),
        None,
    )
    .await;
    assert_eq!(
        audit["results"][0]["after"]["events_removed"].as_u64(),
        Some(28),
        "{audit}"
    );

    let expected1: BTreeMap<i64, usize> = before1
        .clone()
        .into_iter()
        .filter(|(d, _)| *d < 3)
        .collect();
    let check = async |t: &TestServer, when: &str| {
        assert_eq!(
            per_day(t, p1).await,
            expected1,
            "{when}: project 1 keeps its last 3 days"
        );
        assert_eq!(
            per_day(t, p2).await,
            before2,
            "{when}: project 2 keeps everything"
        );
        let log = log_per_day(t);
        let log1: BTreeMap<i64, usize> = log
            .iter()
            .filter(|((p, _), _)| *p == p1)
            .map(|((_, d), n)| (*d, *n))
            .collect();
        let log2: BTreeMap<i64, usize> = log
            .iter()
            .filter(|((p, _), _)| *p == p2)
            .map(|((_, d), n)| (*d, *n))
            .collect();
        assert_eq!(log1, expected1, "{when}: the intake log");
        assert_eq!(log2, before2, "{when}: the intake log");
        // An insight over the whole range counts what is left.
        let (s, v) = call(
            t,
            "POST",
            &format!("/api/v1/projects/{p1}/insights/trends"),
            Some(json!({"series": [{"event": "$pageview"}], "date_from": "-14d"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["result"][0]["count"].as_f64(), Some(12.0), "{when}: {v}");
        // No segment of project 1 holds a row before the cutoff.
        let oldest_kept = chrono::Utc::now().timestamp_micros() - 3 * DAY_MS * 1000;
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(t.dir.path().join("events/columnar/manifest.json")).unwrap(),
        )
        .unwrap();
        for seg in manifest["segments"].as_array().unwrap() {
            if seg["project_id"] == p1 {
                assert!(
                    seg["min_timestamp_us"].as_i64().unwrap() > oldest_kept - 60_000_000,
                    "{seg}"
                );
            }
        }
    };
    check(&t, "after the run").await;
    // A second run finds nothing more.
    let (_, v) = call(&t, "POST", &format!("{base}/retention/run"), None).await;
    assert_eq!(v["events_removed"], 0, "{v}");
    t.restart().await;
    assert!(t.server().state.tables_catch_up().await);
    check(&t, "after a restart").await;
    let (_, v) = call(&t, "GET", &base, None).await;
    assert_eq!(v["retention_days"], 3);
    // Back to forever.
    let (s, v) = call(&t, "PATCH", &base, Some(json!({"retention_days": null}))).await;
    assert_eq!((s, &v["retention_days"]), (StatusCode::OK, &Value::Null));
}

#[tokio::test]
async fn the_scheduled_pass_applies_retention_on_its_own() {
    let t =
        TestServer::start_with(|c| c.retention_check_interval = Duration::from_millis(100)).await;
    capture_days(&t, &t.token.clone(), 4, 2, "a").await;
    let p = t.project_id;
    assert_eq!(per_day(&t, p).await, (0..4).map(|d| (d, 2)).collect());
    let (s, _) = call(
        &t,
        "PATCH",
        &format!("/api/v1/projects/{p}"),
        Some(json!({"retention_days": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = per_day(&t, p).await;
        if now == (0..2).map(|d| (d, 2)).collect() {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, audit) = call(
        &t,
        "GET",
        &format!("/api/v1/projects/{p}/audit?action=retention.applied"),
        None,
    )
    .await;
    let entries = audit["results"].as_array().unwrap();
    assert!(!entries.is_empty(), "{audit}");
    assert_eq!(entries.last().unwrap()["actor"], "system:retention");
}
