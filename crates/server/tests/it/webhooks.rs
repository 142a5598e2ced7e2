//! Webhook delivery against a real local receiver: failures retried, an outage survived, order kept per endpoint,
//! signatures checked, dead letters replayed, private addresses refused without the allow-list.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::Mac;
use serde_json::{json, Value};

use crate::TestServer;

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) message_id: i64,
    attempt_id: String,
    signature: String,
    body: String,
    answered: u16,
}

#[derive(Default)]
pub(crate) struct Receiver {
    pub(crate) log: Mutex<Vec<Received>>,
    /// Requests still to fail (500) before answering 200.
    fail_next: AtomicUsize,
    /// `/always-fail` answers 500 while set.
    always_fail: AtomicBool,
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let failing = (uri.path() == "/always-fail" && rx.always_fail.load(Ordering::SeqCst))
        || rx
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    rx.log.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        message_id: h("flywheel-message-id").parse().unwrap_or(-1),
        attempt_id: h("flywheel-attempt-id"),
        signature: h("flywheel-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status.as_u16(),
    });
    status
}

/// Serves the receiver on `port` (0: any) until the handle is aborted.
pub(crate) async fn listen(rx: Arc<Receiver>, port: u16) -> (tokio::task::JoinHandle<()>, u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(receive).with_state(rx);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (task, port)
}

fn verify(secret: &str, r: &Received) {
    let (t, v1) = r
        .signature
        .strip_prefix("t=")
        .and_then(|s| s.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature header: {:?}", r.signature));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        v1,
        "signature of {r:?}"
    );
    let t: i64 = t.parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - t).abs() < 60,
        "a fresh timestamp"
    );
}

pub(crate) async fn until<T, F, Fut>(what: &str, mut done: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(x) = done().await {
            return x;
        }
        assert!(Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Approves a fresh reward: one `reward.approved` message.
pub(crate) async fn approved_reward(t: &TestServer, key: &str) {
    let entry = t
        .created(
            "/rewards",
            json!({"beneficiary": "ann", "amount": 5, "unit": "USD", "reason": "test", "idempotency_key": key,
                   "hold_days": 30}),
        )
        .await;
    let (s, v) = t
        .api("POST", &format!("/rewards/{}/approve", entry["id"]), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The outbox ids of the project's messages whose topic starts with `prefix`, oldest first.
async fn outbox_ids(t: &TestServer, prefix: &str) -> Vec<i64> {
    let (_, v) = t.api("GET", "/outbox?limit=1000", None).await;
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["topic"].as_str().unwrap().starts_with(prefix))
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn webhooks_retry_survive_an_outage_keep_order_and_replay_dead_letters() {
    let t = TestServer::start_with(|c| {
        c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhook_retry_base = Duration::from_millis(20);
        c.webhook_max_attempts = 6;
        c.webhook_poll = Duration::from_millis(20);
    })
    .await;
    let rx = Arc::new(Receiver::default());
    rx.fail_next.store(2, Ordering::SeqCst);
    let (server, port) = listen(rx.clone(), 0).await;

    // Validation by field: a private address outside the allow-list, a bad scheme, bad topics.
    for (body, field) in [
        (json!({"url": "http://10.0.0.1/in", "topics": ["*"]}), "url"),
        (json!({"url": "ftp://x.io/in", "topics": ["*"]}), "url"),
        (
            json!({"url": format!("http://127.0.0.1:{port}/"), "topics": ["re*ward"]}),
            "topics[0]",
        ),
        (
            json!({"url": format!("http://127.0.0.1:{port}/"), "topics": []}),
            "topics",
        ),
        (json!({"topics": ["*"], "colour": "red"}), "colour"),
    ] {
        let (s, v) = t.api("POST", "/webhooks", Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field),
            "{body}: {v}"
        );
    }
    let hook = t
        .created(
            "/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/in?src=fw"), "topics": ["reward.*"]}),
        )
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = hook["id"].as_i64().unwrap();
    let (_, listed) = t.api("GET", "/webhooks", None).await;
    assert!(
        listed["results"][0].get("secret").is_none(),
        "the secret is shown once: {listed}"
    );

    // Three messages; the receiver fails the first two attempts.
    for k in ["a", "b", "c"] {
        approved_reward(&t, k).await;
    }
    let expected = outbox_ids(&t, "reward.").await;
    assert_eq!(expected.len(), 3);
    let delivered = |rx: &Receiver| -> Vec<i64> {
        rx.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.answered == 200)
            .map(|r| r.message_id)
            .collect()
    };
    until("three deliveries", || async {
        (delivered(&rx).len() >= 3).then_some(())
    })
    .await;
    assert_eq!(delivered(&rx), expected, "each once, in outbox order");

    // The receiver goes down; two more messages wait and are retried; it comes back on the same port.
    server.abort();
    let _ = server.await;
    for k in ["d", "e"] {
        approved_reward(&t, k).await;
    }
    let expected = outbox_ids(&t, "reward.").await;
    let t = &t;
    until("a failed attempt while down", || async move {
        let (_, v) = t
            .api(
                "GET",
                &format!("/webhooks/{id}/deliveries?status=pending"),
                None,
            )
            .await;
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| {
                d["attempts"].as_i64() > Some(0)
                    && d["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("connect"))
            })
            .then_some(())
    })
    .await;
    let (_server, _) = listen(rx.clone(), port).await;
    until("five deliveries", || async {
        (delivered(&rx).len() >= 5).then_some(())
    })
    .await;
    assert_eq!(
        delivered(&rx),
        expected,
        "after the outage, still each once and in order"
    );

    // Every attempt has its own id and a valid signature over the body it carried.
    let log = rx.log.lock().unwrap().clone();
    let mut ids: Vec<&str> = log.iter().map(|r| r.attempt_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), log.len());
    for r in &log {
        assert_eq!(r.path, "/in");
        verify(&secret, r);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (body["id"].as_i64(), body["topic"].as_str()),
            (Some(r.message_id), Some("reward.approved"))
        );
        assert_eq!(body["payload"]["status"], "approved", "{body}");
    }
    // The delivery log: attempts with status codes (two 500s on the first message).
    let (_, list) = t
        .api(
            "GET",
            &format!("/webhooks/{id}/deliveries?status=delivered"),
            None,
        )
        .await;
    let first = list["results"].as_array().unwrap().last().unwrap().clone();
    let (_, one) = t
        .api(
            "GET",
            &format!("/webhooks/{id}/deliveries/{}", first["id"]),
            None,
        )
        .await;
    let codes: Vec<Option<i64>> = one["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64())
        .collect();
    assert_eq!(codes, [Some(500), Some(500), Some(200)], "{one:#}");

    // A second endpoint that always fails: its messages go dead after six attempts; a replay delivers one.
    rx.always_fail.store(true, Ordering::SeqCst);
    let dead_hook = t
        .created(
            "/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/always-fail"), "topics": ["reward.approved"]}),
        )
        .await;
    let dead_id = dead_hook["id"].as_i64().unwrap();
    approved_reward(t, "f").await;
    let dead = until("a dead letter", || async move {
        let (_, v) = t
            .api(
                "GET",
                &format!("/webhooks/{dead_id}/deliveries?status=dead"),
                None,
            )
            .await;
        v["results"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(dead["attempts"], 6, "{dead}");
    let (s, _) = t
        .api(
            "POST",
            &format!("/webhooks/{id}/deliveries/{}/replay", first["id"]),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::ACCEPTED,
        "a delivered message can be sent again"
    );
    rx.always_fail.store(false, Ordering::SeqCst);
    let (s, v) = t
        .api(
            "POST",
            &format!("/webhooks/{dead_id}/deliveries/{}/replay", dead["id"]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let to_dead_path = |rx: &Receiver| {
        rx.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/always-fail" && r.answered == 200)
            .count()
    };
    until("the replayed dead letter", || async {
        (to_dead_path(&rx) == 1).then_some(())
    })
    .await;
    // The worker records the delivery once the answer is in: a moment after the receiver saw the request.
    let path = format!("/webhooks/{dead_id}/deliveries/{}", dead["id"]);
    let v = until("the replay recorded as delivered", || async {
        let (_, v) = t.api("GET", &path, None).await;
        (v["status"] != "pending").then_some(v)
    })
    .await;
    assert_eq!(v["status"], "delivered", "{v}");

    // A rotated secret signs the next deliveries; the old one no longer does.
    let (s, rotated) = t
        .api("POST", &format!("/webhooks/{id}/rotate-secret"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let before = rx.log.lock().unwrap().len();
    approved_reward(t, "g").await;
    let latest = until("a delivery signed with the new secret", || async {
        let log = rx.log.lock().unwrap().clone();
        log[before..]
            .iter()
            .find(|r| r.path == "/in" && r.answered == 200)
            .cloned()
    })
    .await;
    verify(&new_secret, &latest);

    // Deactivated, an endpoint gets nothing; deleted, it is gone; all audited.
    let (s, _) = t
        .api(
            "PATCH",
            &format!("/webhooks/{dead_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t.api("DELETE", &format!("/webhooks/{dead_id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t.api("GET", &format!("/webhooks/{dead_id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let audit = outbox_ids(t, "audit.webhook.").await;
    assert_eq!(
        audit.len(),
        5,
        "created ×2, secret rotated, updated, deleted"
    );
}

#[tokio::test]
async fn private_addresses_are_refused_without_the_allow_list() {
    let t = TestServer::start_with(|c| c.webhook_poll = Duration::from_millis(20)).await;
    let rx = Arc::new(Receiver::default());
    let (_server, port) = listen(rx.clone(), 0).await;
    let (s, v) = t
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/"), "topics": ["*"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("loopback"), "{v}");
    // A name that resolves to a loopback address is refused when delivering: nothing reaches the receiver.
    let hook = t
        .created(
            "/webhooks",
            json!({"url": format!("http://localhost:{port}/"), "topics": ["reward.*"]}),
        )
        .await;
    approved_reward(&t, "x").await;
    let id = hook["id"].as_i64().unwrap();
    let t = &t;
    let delivery = until("a refused attempt", || async move {
        let (_, v) = t
            .api("GET", &format!("/webhooks/{id}/deliveries"), None)
            .await;
        v["results"]
            .as_array()
            .unwrap()
            .first()
            .filter(|d| d["attempts"].as_i64() > Some(0))
            .cloned()
    })
    .await;
    assert!(
        delivery["last_error"]
            .as_str()
            .unwrap()
            .starts_with("refused:"),
        "{delivery}"
    );
    assert!(rx.log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn captured_events_matching_a_subscriptions_filters_are_delivered_to_it_alone() {
    let t = TestServer::start_with(|c| {
        c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhook_poll = Duration::from_millis(20);
    })
    .await;
    let rx = Arc::new(Receiver::default());
    let (_server, port) = listen(rx.clone(), 0).await;
    let (s, v) = t
        .api(
            "POST",
            "/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/x"),
                        "events": [{"event": "paid", "properties": [{"key": "plan", "type": "person", "value": "pro"}]}]})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "person filters are refused: {v}"
    );
    let pro = t
        .created(
            "/webhooks",
            json!({"url": format!("http://127.0.0.1:{port}/pro"),
                   "events": [{"event": "paid", "properties": [{"key": "plan", "value": "pro"}]}]}),
        )
        .await;
    assert_eq!(pro["events"][0]["event"], "paid");
    t.created(
        "/webhooks",
        json!({"url": format!("http://127.0.0.1:{port}/signups"), "events": [{"event": "signed_up"}]}),
    )
    .await;
    let batch = json!({"api_key": t.token, "batch": [
        {"event": "paid", "distinct_id": "u1", "properties": {"plan": "pro"}},
        {"event": "paid", "distinct_id": "u2", "properties": {"plan": "free"}},
        {"event": "signed_up", "distinct_id": "u3"},
        {"event": "other", "distinct_id": "u4"},
    ]});
    let (s, v) = t.post("/batch", batch.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = until("two deliveries", || async {
        let log = rx.log.lock().unwrap().clone();
        (log.len() >= 2).then_some(log)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = rx.log.lock().unwrap().clone();
    assert_eq!(
        log.len(),
        2,
        "only the matching events, each to its own subscription: {got:?}"
    );
    let by_path = |p: &str| -> Value {
        serde_json::from_str(&log.iter().find(|r| r.path == p).unwrap().body).unwrap()
    };
    let paid = by_path("/pro");
    assert_eq!(
        (
            paid["topic"].as_str(),
            paid["payload"]["distinct_id"].as_str()
        ),
        (Some("event.paid"), Some("u1"))
    );
    assert_eq!(paid["payload"]["properties"]["plan"], "pro");
    assert!(paid["payload"].get("webhooks").is_none(), "{paid}");
    assert_eq!(by_path("/signups")["payload"]["event"], "signed_up");
}
