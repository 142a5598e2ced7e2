//! Capture through every endpoint and encoding, read back through the native API.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use serde_json::json;

use crate::{gzip, TestServer};

#[tokio::test]
async fn posthog_endpoints_and_encodings_all_land() {
    let t = TestServer::start().await;
    let tok = &t.token;
    let ev = |name: &str| json!({"event": name, "distinct_id": "u1", "properties": {"k": name}});
    // Batch with api_key.
    let (s, b) = t
        .post(
            "/batch",
            json!({"api_key": tok, "batch": [ev("b1"), ev("b2")]}).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 2);
    // Single event with token in properties, trailing slash.
    let (s, _) = t
        .post(
            "/e/",
            json!({"event": "single", "distinct_id": "u1", "properties": {"token": tok}})
                .to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Array body on /i/v0/e with token per event.
    let (s, _) = t
        .post(
            "/i/v0/e",
            json!([{"event": "arr", "distinct_id": "u1", "api_key": tok}]).to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // gzip body without any header saying so.
    let body = gzip(
        json!({"token": tok, "batch": [ev("gz")]})
            .to_string()
            .as_bytes(),
    );
    let (s, b) = t.post("/capture", body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // base64 form data.
    let data = base64::engine::general_purpose::STANDARD
        .encode(json!([{"event": "form", "distinct_id": "u1", "token": tok}]).to_string());
    let form = format!(
        "data={}&compression=base64",
        data.replace('+', "%2B")
            .replace('=', "%3D")
            .replace('/', "%2F")
    );
    let req = Request::post("/track")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    let (s, b, _) = t.send(req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // GET ?data= with beacon=1 → 204.
    let data = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"event": "get", "distinct_id": "u1", "token": tok}).to_string());
    let req = Request::get(format!("/e/?data={data}&beacon=1"))
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = t.send(req).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let events = t.events("distinct_id=u1&limit=100").await;
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["arr", "b1", "b2", "form", "get", "gz", "single"]
    );
    let person_ids: std::collections::HashSet<_> =
        events.iter().map(|e| e["person_id"].clone()).collect();
    assert_eq!(person_ids.len(), 1, "one person for one distinct id");
    assert!(person_ids.iter().all(|p| p.is_string()));
    // By default the address is kept truncated to its network.
    assert!(events.iter().all(|e| e["properties"]["$ip"] == "127.0.0.0"));
    assert!(
        events
            .iter()
            .all(|e| e["properties"].get("token").is_none()),
        "the token is not stored as a property"
    );
}

#[tokio::test]
async fn cors_preflight_and_headers_allow_browsers() {
    let t = TestServer::start().await;
    let req = Request::options("/e/")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let (s, _, h) = t.send(req).await;
    assert!(s.is_success(), "{s}");
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    let req = Request::post("/batch/")
        .header("origin", "https://app.example.com")
        .body(Body::from(
            json!({"api_key": t.token, "batch": [{"event": "x", "distinct_id": "d"}]}).to_string(),
        ))
        .unwrap();
    let (s, _, h) = t.send(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
}

#[tokio::test]
async fn duplicate_uuids_are_stored_once() {
    let t = TestServer::start().await;
    let uuid = "0190a0a0-0000-7000-8000-000000000001";
    let body = json!({"api_key": t.token, "batch": [
        {"event": "dup", "distinct_id": "d", "uuid": uuid},
        {"event": "dup", "distinct_id": "d", "uuid": uuid},
    ]})
    .to_string();
    let (_, b) = t.post("/batch", body.clone()).await;
    assert_eq!(b["accepted"], 1);
    assert_eq!(b["duplicates"], 1);
    let (_, b) = t.post("/batch", body).await;
    assert_eq!(b["accepted"], 0, "a retried batch is not stored again");
    let events = t.events("event=dup").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["uuid"], uuid);
}

#[tokio::test]
async fn clock_skew_is_corrected_and_future_is_clamped() {
    let t = TestServer::start().await;
    let now = chrono::Utc::now();
    // The device clock is 2 hours ahead: the event happened 10 s before it was sent.
    let device_sent = now + chrono::Duration::hours(2);
    let device_ts = device_sent - chrono::Duration::seconds(10);
    let body = json!({"api_key": t.token, "sent_at": device_sent.to_rfc3339(), "batch": [
        {"event": "skewed", "distinct_id": "d", "timestamp": device_ts.to_rfc3339()},
    ]});
    t.post("/batch", body.to_string()).await;
    let far_future = now + chrono::Duration::days(3);
    let body = json!({"api_key": t.token, "batch": [{"event": "future", "distinct_id": "d", "timestamp": far_future.to_rfc3339()}]});
    t.post("/batch", body.to_string()).await;
    let ts = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
    };
    let skewed = &t.events("event=skewed").await[0];
    let delta = (ts(skewed).with_timezone(&chrono::Utc) - (now - chrono::Duration::seconds(10)))
        .num_seconds()
        .abs();
    assert!(
        delta <= 5,
        "corrected timestamp is about now - 10 s, off by {delta} s"
    );
    let future = &t.events("event=future").await[0];
    let delta = (ts(future).with_timezone(&chrono::Utc) - now)
        .num_seconds()
        .abs();
    assert!(
        delta <= 5,
        "a timestamp days ahead is clamped to now, off by {delta} s"
    );
}

#[tokio::test]
async fn segment_calls_map_to_events_and_identity() {
    let t = TestServer::start().await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", t.token))
    );
    let send = |path: &str, body: serde_json::Value| {
        Request::post(path)
            .header("authorization", basic.clone())
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (s, b, _) = t.send(send("/v1/track", json!({"anonymousId": "anon-s", "event": "Viewed", "properties": {"a": 1}, "messageId": "m-1"}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    t.send(send("/v1/identify", json!({"userId": "seg-user", "anonymousId": "anon-s", "traits": {"email": "s@example.com"}, "messageId": "m-2"}))).await;
    t.send(send("/v1/group", json!({"userId": "seg-user", "groupId": "acct-9", "traits": {"name": "Acme"}, "messageId": "m-3"}))).await;
    t.send(send(
        "/v1/alias",
        json!({"userId": "seg-user", "previousId": "old-id", "messageId": "m-4"}),
    ))
    .await;
    t.send(send("/v1/page", json!({"userId": "seg-user", "name": "Home", "properties": {"url": "https://x.test/"}, "messageId": "m-5"}))).await;
    t.send(send(
        "/v1/screen",
        json!({"userId": "seg-user", "name": "Settings", "messageId": "m-6"}),
    ))
    .await;
    // Write key in the body on /v1/batch, and a retried messageId.
    let (s, b, _) = t.send(Request::post("/v1/batch").body(Body::from(json!({"writeKey": t.token, "batch": [
        {"type": "track", "userId": "seg-user", "event": "Paid", "messageId": "m-7"},
        {"type": "track", "userId": "seg-user", "event": "Viewed", "messageId": "m-1", "anonymousId": "anon-s"},
    ]}).to_string())).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 1, "message m-1 was already stored: {b}");

    let (s, person) = t.person("anon-s").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        person["distinct_ids"],
        json!(["anon-s", "old-id", "seg-user"])
    );
    assert_eq!(person["properties"]["email"], "s@example.com");
    assert_eq!(person["groups"][0]["group_type"], "company");
    assert_eq!(person["groups"][0]["group_key"], "acct-9");
    assert_eq!(person["groups"][0]["properties"]["name"], "Acme");
    let events = t
        .events(&format!("person_id={}", person["id"].as_str().unwrap()))
        .await;
    let mut names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "$create_alias",
            "$groupidentify",
            "$identify",
            "$pageview",
            "$screen",
            "Paid",
            "Viewed"
        ]
    );
    let page = &t.events("event=$pageview").await[0];
    assert_eq!(page["properties"]["$current_url"], "https://x.test/");
}

#[tokio::test]
async fn identity_merges_follow_posthog_rules_through_capture() {
    let t = TestServer::start().await;
    let batch =
        |events: serde_json::Value| json!({"api_key": t.token, "batch": events}).to_string();
    t.post("/batch", batch(json!([
        {"event": "$pageview", "distinct_id": "anon-1", "properties": {"$set_once": {"first_url": "/a"}}},
        {"event": "$identify", "distinct_id": "alice", "properties": {"$anon_distinct_id": "anon-1"}, "$set": {"email": "a@x.test"}},
        {"event": "$pageview", "distinct_id": "anon-2"},
        {"event": "$identify", "distinct_id": "bob", "properties": {"$anon_distinct_id": "anon-2"}},
        // Refused: bob is already identified.
        {"event": "$create_alias", "distinct_id": "alice", "properties": {"alias": "bob"}},
        {"event": "$set", "distinct_id": "alice", "properties": {"$set": {"plan": "pro"}, "$unset": ["email"]}},
    ])))
    .await;
    let (_, alice) = t.person("alice").await;
    assert_eq!(alice["distinct_ids"], json!(["alice", "anon-1"]));
    assert_eq!(
        alice["properties"],
        json!({"first_url": "/a", "plan": "pro"})
    );
    assert_eq!(alice["is_identified"], true);
    let (_, bob) = t.person("bob").await;
    assert_ne!(alice["id"], bob["id"]);
    t.post("/batch", batch(json!([{"event": "$merge_dangerously", "distinct_id": "alice", "properties": {"alias": "bob"}}]))).await;
    let (_, merged) = t.person("bob").await;
    assert_eq!(merged["id"], alice["id"]);
    assert_eq!(
        merged["distinct_ids"],
        json!(["alice", "anon-1", "anon-2", "bob"])
    );
    // Events of every merged distinct id are found by person, including through bob's old person id.
    let events = t
        .events(&format!("person_id={}", bob["id"].as_str().unwrap()))
        .await;
    assert_eq!(events.len(), 7);
    assert!(events.iter().all(|e| e["person_id"] == alice["id"]));
}

#[tokio::test]
async fn data_and_identity_survive_a_restart() {
    let mut t = TestServer::start().await;
    let body = json!({"api_key": t.token, "batch": [
        {"event": "$identify", "distinct_id": "r", "properties": {"$anon_distinct_id": "r-anon", "$set": {"x": 1}}},
        {"event": "after", "distinct_id": "r"},
    ]});
    t.post("/batch", body.to_string()).await;
    t.restart().await;
    let events = t.events("distinct_id=r").await;
    assert_eq!(events.len(), 2);
    let (s, p) = t.person("r-anon").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["properties"]["x"], 1);
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let t = TestServer::start().await;
    t.post("/batch", json!({"api_key": t.token, "batch": [{"event": "m", "distinct_id": "d"}, {"distinct_id": "d"}]}).to_string()).await;
    let (s, b, _) = t
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, b, _) = t
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b, _) = t
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = b.as_str().unwrap();
    for name in [
        "flywheel_events_accepted_total",
        "flywheel_events_dropped_total",
        "flywheel_http_requests_total",
        "flywheel_intake_commit_seconds",
        "flywheel_intake_queue_depth",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
}

/// An identity change that cannot be applied (here a database trigger refuses one distinct id) is skipped after a
/// few retries; the rest of its chunk applies, identity goes on, and every event stays listed.
#[tokio::test]
async fn an_identity_change_that_cannot_apply_does_not_stop_identity() {
    // On SQLite whatever the suite's backend: the poison is a SQLite trigger.
    let t = TestServer::start_with(|c| c.metadata_url = None).await;
    let db = rusqlite::Connection::open(t.server().state.config.metadata_path()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON person_distinct_ids WHEN NEW.distinct_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned for the test'); END;",
    )
    .unwrap();
    let batch: Vec<serde_json::Value> = ["good-1", "poison", "good-2"]
        .iter()
        .map(|d| json!({"event": "opened", "distinct_id": d}))
        .collect();
    let (status, _) = t
        .post(
            "/batch",
            json!({"api_key": t.token, "batch": batch}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let person = |d: &'static str| {
        let t = &t;
        async move {
            t.get_api(
                &format!("/api/v1/projects/{}/persons/{d}", t.project_id),
                &t.personal_key,
            )
            .await
            .0
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while person("good-2").await != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "identity stalled on the poisoned change"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(person("good-1").await, StatusCode::OK);
    assert_eq!(person("poison").await, StatusCode::NOT_FOUND);
    let listed = t.events("limit=10").await;
    assert_eq!(listed.len(), 3, "every event is kept: {listed:?}");
}

/// `capture_ip` and `scrub_properties`: what is kept of addresses (the connection's and the client's own `$ip`) and
/// which properties never reach storage (not in events, not in persons).
#[tokio::test]
async fn addresses_and_scrubbed_properties_follow_the_privacy_settings() {
    use flywheel_server::privacy::{IpCapture, Privacy};
    for (mode, connection, client) in [
        (IpCapture::Full, Some("127.0.0.1"), Some("198.51.100.7")),
        (
            IpCapture::Truncated,
            Some("127.0.0.0"),
            Some("198.51.100.0"),
        ),
        (IpCapture::Off, None, None),
    ] {
        let t = TestServer::start_with(|c| {
            c.privacy = Privacy {
                capture_ip: mode,
                scrub: vec!["email".into(), "phone".into()],
            }
        })
        .await;
        let batch = serde_json::json!({"api_key": t.token, "batch": [
            {"event": "a", "distinct_id": "p1", "properties": {"email": "p@x.io", "plan": "pro",
                "$set": {"email": "p@x.io", "phone": "555", "name": "P"}}},
            {"event": "b", "distinct_id": "p1", "properties": {"$ip": "198.51.100.7"}},
        ]});
        let (s, v) = t.post("/batch", batch.to_string()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let events = t.events("distinct_id=p1&limit=10").await;
        let by =
            |name: &str| events.iter().find(|e| e["event"] == name).unwrap()["properties"].clone();
        assert_eq!(by("a")["$ip"].as_str(), connection, "{mode:?}");
        assert_eq!(by("b")["$ip"].as_str(), client, "{mode:?}");
        assert!(
            by("a").get("email").is_none() && by("a")["plan"] == "pro",
            "{mode:?}: {}",
            by("a")
        );
        assert_eq!(by("a")["$set"], serde_json::json!({"name": "P"}));
        let (_, person) = t.person("p1").await;
        let props = &person["properties"];
        assert!(
            props.get("email").is_none() && props.get("phone").is_none() && props["name"] == "P",
            "{person}"
        );
    }
}

/// A project's `ingestion` settings override the server's: address kept, keys scrubbed, events per second.
#[tokio::test]
async fn a_projects_ingestion_settings_override_the_servers() {
    let t = TestServer::start().await;
    let (s, v) = t
        .api(
            "PATCH",
            "",
            Some(serde_json::json!({"ingestion": {"capture_ip": "sometimes", "scrub_properties": "email", "x": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "ingestion.capture_ip",
            "ingestion.scrub_properties",
            "ingestion.x"
        ],
        "{v}"
    );
    let (s, v) = t
        .api(
            "PATCH",
            "",
            Some(
                serde_json::json!({"ingestion": {"capture_ip": "off", "scrub_properties": ["ssn"],
                                                  "capture_events_per_second": 5}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ingestion"]["capture_ip"], "off");
    let batch = |n: usize, prefix: &str| {
        let events: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"event": "e", "distinct_id": format!("{prefix}{i}"), "properties": {"ssn": "1", "k": i}}))
            .collect();
        serde_json::json!({"api_key": t.token, "batch": events}).to_string()
    };
    let (s, _) = t.post("/batch", batch(5, "a")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.post("/batch", batch(5, "b")).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "the project's own limit: {v}"
    );
    let events = t.events("limit=100").await;
    assert_eq!(events.len(), 5);
    for e in &events {
        assert!(e["properties"].get("$ip").is_none(), "no address kept: {e}");
        assert!(
            e["properties"].get("ssn").is_none() && e["properties"]["k"].is_number(),
            "{e}"
        );
    }
}
