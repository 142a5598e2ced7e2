//! Stateless nodes on shared backends: three `flywheel serve` nodes on one PostgreSQL (metadata) and one
//! ClickHouse (events), all started from Debian's packages. A flag change made through one node is served by the
//! others within a second (and by polling when the announcement is missed), a revoked SDK key stops working on
//! every node, persons and events written through any node are read through any other, webhook messages are
//! delivered once although every node runs a delivery worker; with PostgreSQL gone a node keeps serving flags
//! and reports itself degraded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flywheel_clickhouse::{test_support, Client};
use flywheel_store::test_support::TestPostgres;
use serde_json::{json, Value};

use crate::webhooks::{approved_reward, listen, until, Receiver};
use crate::TestServer;

/// A database of its own on the test binary's PostgreSQL.
fn shared_database(name: &str) -> String {
    TestPostgres::shared()
        .expect("PostgreSQL")
        .create_database(name)
        .expect("a test database")
}

fn env(rules: Value) -> Value {
    json!({"production": {"enabled": true, "rules": rules}})
}

async fn sdk_key(t: &TestServer) -> Value {
    let (s, b) = t
        .api(
            "POST",
            "/sdk-connections",
            Some(json!({"environment": "production"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b
}

/// The GrowthBook payload a node serves for a client key: (status, features).
async fn payload(t: &TestServer, key: &str) -> (StatusCode, Value) {
    let req = Request::get(format!("/api/features/{key}"))
        .body(Body::empty())
        .unwrap();
    let (s, v, _) = t.send(req).await;
    (s, v["features"].clone())
}

/// Polls `node` until `done` holds for the payload of `key`; how long it took.
async fn propagated(
    node: &TestServer,
    key: &str,
    what: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (s, features) = payload(node, key).await;
        if done(s, &features) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: still {s} {features}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_nodes_share_flags_persons_events_and_webhooks() {
    let ch = test_support::start();
    let database = shared_database("three_nodes");
    let adjust = |c: &mut flywheel_server::Config| {
        c.events_url = Some(ch.url.clone());
        c.events_database = "fw_three".into();
        c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhook_poll = Duration::from_millis(20);
    };
    let a = TestServer::start_with(|c| {
        c.metadata_url = Some(database.clone());
        adjust(c);
    })
    .await;
    let b = TestServer::another_node(&a, adjust).await;
    let c = TestServer::another_node(&a, adjust).await;
    let nodes = [&a, &b, &c];

    // Flags: a feature created through `a` is served by `b` and `c` within a second (NOTIFY).
    let conn = sdk_key(&a).await;
    let key = conn["client_key"].as_str().unwrap().to_owned();
    for n in nodes {
        let (s, features) = payload(n, &key).await;
        assert_eq!(s, StatusCode::OK, "every node knows the key");
        assert_eq!(features, json!({}));
    }
    let feature = json!({"key": "new-checkout", "value_type": "boolean", "default_value": false,
                         "environments": env(json!([{"type": "force", "value": true}]))});
    let (s, v) = a.api("POST", "/features", Some(feature.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for n in [&b, &c] {
        let took = propagated(n, &key, "the new feature", |s, f| {
            s == StatusCode::OK && f.get("new-checkout").is_some()
        })
        .await;
        assert!(
            took < Duration::from_secs(1),
            "a change is served by every node within 1 s, took {took:?}"
        );
    }
    // Changed through `c`, served by `a`.
    let mut update = feature.clone();
    update["version"] = json!(1);
    update["default_value"] = json!(true);
    let (s, v) = c.api("PUT", "/features/new-checkout", Some(update)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let took = propagated(&a, &key, "the changed default", |_, f| {
        f["new-checkout"]["defaultValue"] == true
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Without an announcement (written straight into PostgreSQL), the nodes' poll still picks it up.
    let store = flywheel_store::Store::connect_postgres(&database)
        .await
        .unwrap();
    let record = store
        .feature(a.project_id, "new-checkout")
        .await
        .unwrap()
        .unwrap();
    let actor = flywheel_store::Actor {
        label: "test".into(),
        source_ip: None,
    };
    store
        .update_feature(
            a.project_id,
            "new-checkout",
            record.version,
            &record.definition,
            true,
            "feature.archived",
            &actor,
        )
        .await
        .unwrap();
    for n in nodes {
        propagated(n, &key, "the archived feature (polled)", |_, f| {
            f.get("new-checkout").is_none()
        })
        .await;
    }

    // A key revoked through `b` stops working on every node (each had it cached).
    let (s, _) = b
        .api("DELETE", &format!("/sdk-connections/{}", conn["id"]), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for n in nodes {
        let took = propagated(n, &key, "the revoked key", |s, _| s != StatusCode::OK).await;
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    // Persons and events: captured through `a` and `b`, read through `c` (metadata) and in ClickHouse.
    crate::growth::capture(
        &a,
        json!([{"event": "$identify", "distinct_id": "ann@acme.io", "timestamp": "2026-11-20T10:00:00Z",
                 "properties": {"$anon_distinct_id": "anon-1", "$set": {"plan": "pro"}}}]),
    )
    .await;
    crate::growth::capture(
        &b,
        json!([{"event": "$pageview", "distinct_id": "bob", "timestamp": "2026-11-20T11:00:00Z",
                "properties": {"$set": {"plan": "free"}}},
               {"event": "$pageview", "distinct_id": "anon-1", "timestamp": "2026-11-21T09:00:00Z"}]),
    )
    .await;
    let ann = until("ann's person on node c", || async {
        let (s, v) = c.person("anon-1").await;
        (s == StatusCode::OK && v["properties"]["plan"] == "pro").then_some(v)
    })
    .await;
    let bob = until("bob's person on node c", || async {
        let (s, v) = c.person("bob").await;
        (s == StatusCode::OK && v["properties"]["plan"] == "free").then_some(v)
    })
    .await;
    assert_ne!(bob["id"], ann["id"]);
    let client = Client::new(&ch.url).unwrap();
    until("three events in ClickHouse", || async {
        let rows = client
            .query_rows("SELECT count(), uniqExact(toString(uuid)) FROM `fw_three`.`events`")
            .await
            .ok()?;
        (rows[0][0] == "3" && rows[0][1] == "3").then_some(())
    })
    .await;
    // Insights read ClickHouse: events captured through `a` and `b` are counted by `c` (two persons).
    let dau = json!({"series": [{"event": "$pageview"}, {"event": "$pageview", "math": "dau"}],
                     "date_from": "2026-11-01", "date_to": "2026-11-30"});
    until("the pageviews in c's insight", || async {
        let (s, v) = c.api("POST", "/insights/trends", Some(dau.clone())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        (v["result"][0]["count"].as_f64() == Some(2.0)).then_some(v)
    })
    .await;
    let (_, v) = c.api("POST", "/insights/trends", Some(dau)).await;
    assert_eq!(
        v["result"][1]["count"].as_f64(),
        Some(2.0),
        "ann and bob: {v}"
    );
    // A cohort created through `a` is counted by `c` over every node's events (ClickHouse), not `c`'s own (none).
    let cohort = a
        .created(
            "/cohorts",
            json!({"name": "Viewers", "filters": {"properties": {"type": "AND", "values": [
                {"type": "behavioral", "value": "performed_event", "key": "$pageview",
                 "explicit_datetime": "2026-11-01"}]}}}),
        )
        .await;
    let (s, v) = c
        .api("GET", &format!("/cohorts/{}", cohort["id"]), None)
        .await;
    assert_eq!((s, &v["count"]), (StatusCode::OK, &json!(2)), "{v}");
    let (s, v) = c
        .api("GET", &format!("/cohorts/{}/persons", cohort["id"]), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut listed: Vec<Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["distinct_ids"].clone())
        .collect();
    listed.sort_by_key(|d| d.to_string());
    assert_eq!(
        listed,
        [json!(["ann@acme.io", "anon-1"]), json!(["bob"])],
        "{v}"
    );
    assert_eq!(v["complete"], true, "{v}");

    // A GDPR export through `c` lists ann's events captured through `a` and `b` (read from ClickHouse).
    let (s, export) = c
        .api("GET", "/persons/anon-1/export?format=json", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{export}");
    let events: Vec<(&str, &str)> = export["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["distinct_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [("$identify", "ann@acme.io"), ("$pageview", "anon-1")],
        "{export}"
    );

    // Webhooks: every node runs a delivery worker; each message reaches the endpoint once.
    let rx = Arc::new(Receiver::default());
    let (receiver, port) = listen(rx.clone(), 0).await;
    let (s, v) = a
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/in"), "topics": ["reward.*"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for (i, n) in nodes.iter().cycle().take(6).enumerate() {
        approved_reward(n, &format!("k{i}")).await;
    }
    let (_, outbox) = a.api("GET", "/outbox?limit=1000", None).await;
    let messages: Vec<i64> = outbox["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["topic"].as_str().unwrap().starts_with("reward."))
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(messages.len(), 6, "six approvals, through the three nodes");
    until("every message delivered", || async {
        (rx.log.lock().unwrap().len() >= messages.len()).then_some(())
    })
    .await;
    // The workers keep polling: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times: HashMap<i64, usize> = HashMap::new();
    for r in rx.log.lock().unwrap().iter() {
        assert_eq!(r.path, "/in");
        *times.entry(r.message_id).or_default() += 1;
    }
    for id in &messages {
        assert_eq!(
            times.get(id),
            Some(&1),
            "message {id} delivered once: {times:?}"
        );
    }
    assert_eq!(times.len(), messages.len());
    receiver.abort();
}

#[tokio::test]
async fn a_node_serves_its_last_flags_while_postgres_is_down() {
    let pg = TestPostgres::start().unwrap();
    let t = TestServer::start_with(|c| c.metadata_url = Some(pg.url().to_owned())).await;
    let (s, v) = t
        .api(
            "POST",
            "/features",
            Some(
                json!({"key": "checkout", "value_type": "string", "default_value": "old",
                        "environments": env(json!([{"type": "force", "value": "new"}]))}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let key = sdk_key(&t).await["client_key"].as_str().unwrap().to_owned();
    let ofrep = || {
        Request::post("/ofrep/v1/evaluate/flags/checkout")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"context": {"targetingKey": "u1"}}"#))
            .unwrap()
    };
    let (s, before, _) = t.send(ofrep()).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert_eq!(before["value"], "new");
    let (s, ready, _) = t
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, ready["status"].as_str()), (StatusCode::OK, Some("ok")));

    drop(pg);

    let (s, ready, _) = t
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK, "still in the load balancer: {ready}");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["metadata"], "unavailable", "{ready}");
    let (s, after, _) = t.send(ofrep()).await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_eq!(after["value"], "new", "the last snapshot");
    let (s, features) = payload(&t, &key).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(features["checkout"]["defaultValue"], "old", "{features}");
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &std::path::Path, needle: &str) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if let Ok(bytes) = std::fs::read(e.path()) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    return true;
                }
            }
        }
    }
    false
}

#[tokio::test]
async fn an_erasure_reaches_the_events_other_nodes_hold() {
    const DB: &str = "fw_erasure_nodes";
    let ch = test_support::start();
    let client = Client::new(&ch.url).unwrap();
    let database = shared_database("erasure_nodes");
    let adjust = |c: &mut flywheel_server::Config| {
        c.events_url = Some(ch.url.clone());
        c.events_database = DB.into();
    };
    let a = TestServer::start_with(|c| {
        c.metadata_url = Some(database.clone());
        adjust(c);
    })
    .await;
    let b = TestServer::another_node(&a, adjust).await;
    // The person's events are captured through `b` only; `a` will erase them.
    let (gone, kept) = ("gone-7f3a9c2e51", "kept-0c4d81b2aa");
    crate::growth::capture(
        &b,
        json!([
            {"event": "$pageview", "distinct_id": gone, "properties": {"$set": {"plan": "pro"}}},
            {"event": "$pageview", "distinct_id": gone},
            {"event": "signed_up", "distinct_id": gone},
            {"event": "$pageview", "distinct_id": kept},
        ]),
    )
    .await;
    let count = |distinct_id: &'static str| {
        let client = client.clone();
        async move {
            client
                .query_rows(&format!(
                    "SELECT count() FROM `{DB}`.`events` WHERE distinct_id = '{distinct_id}'"
                ))
                .await
                .ok()
                .and_then(|r| r[0][0].parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(gone).await != 3 || a.person(gone).await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "b's events never reached ClickHouse and the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_log = b.dir.path().join("events");
    assert!(
        any_file_holds(&b_log, gone),
        "b's own files hold the person's events"
    );

    let (s, v) = a.api("DELETE", &format!("/persons/{gone}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["nodes_notified"], true, "{v}");
    // `b` hears of it and drops them from its own log and tables; ClickHouse loses them (a's deletion, and b's
    // own once its shipper is past its rewritten log).
    let deadline = Instant::now() + Duration::from_secs(30);
    while any_file_holds(&b_log, gone) || count(gone).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the other node still holds the erased person's events (its files: {}, ClickHouse: {})",
            any_file_holds(&b_log, gone),
            count(gone).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        any_file_holds(&b_log, kept),
        "everyone else's events stay on b"
    );
    assert_eq!(count(kept).await, 1, "and in ClickHouse");
    // The notice holds no identifier: only digests.
    let store = flywheel_store::Store::connect_postgres(&database)
        .await
        .unwrap();
    let notices = store.erasure_notices_after(0, 10).await.unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        notices[0].digests,
        [flywheel_store::erasure_digest(a.project_id, gone)]
    );
    assert!(!format!("{notices:?}").contains(gone));
}
