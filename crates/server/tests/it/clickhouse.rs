//! Shipping to ClickHouse (`--events-url`) against Debian's ClickHouse 18.16: every acknowledged event arrives
//! exactly once, with its person, while ClickHouse is killed and restarted under capture, and a node restarted
//! resumes its own position; a full spool refuses capture with 503 and `Retry-After`.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flywheel_clickhouse::{test_support, Client};
use serde_json::{json, Value};

use crate::TestServer;

const DB: &str = "fw_ship";

async fn capture(t: &TestServer, from: usize, n: usize) {
    let batch: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"event": if i % 2 == 0 { "$pageview" } else { "task_completed" },
                   "distinct_id": format!("user-{}", i % 5),
                   "uuid": format!("00000000-0000-4000-8000-{:012x}", i),
                   "timestamp": "2026-11-20T10:00:00Z", "properties": {"i": i}})
        })
        .collect();
    crate::growth::capture(t, json!(batch)).await;
}

/// (rows, distinct uuids) in ClickHouse.
async fn stored(client: &Client) -> (u64, u64) {
    match client
        .query_rows(&format!(
            "SELECT count(), uniqExact(toString(uuid)) FROM `{DB}`.`events`"
        ))
        .await
    {
        Ok(r) => (r[0][0].parse().unwrap(), r[0][1].parse().unwrap()),
        Err(_) => (0, 0),
    }
}

async fn until_stored(client: &Client, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stored(client).await;
        if got.0 >= want {
            assert_eq!(got, (want, want), "each event once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {want} events in ClickHouse, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(t: &TestServer) -> Value {
    let (s, v, _) = t
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the node stays ready while ClickHouse is away: {v}"
    );
    v
}

#[tokio::test]
async fn acknowledged_events_reach_clickhouse_once_through_an_outage() {
    let mut ch = test_support::start();
    let url = ch.url.clone();
    let client = Client::new(&url).unwrap();
    let mut t = TestServer::on_clickhouse(&ch, DB).await;
    for k in 0..3 {
        capture(&t, k * 100, 100).await;
    }
    until_stored(&client, 300).await;
    assert_eq!(readyz(&t).await["clickhouse"]["status"], "ok");

    // Each row carries its person: the one the API shows for the distinct id.
    let (_, person) = t.person("user-3").await;
    let rows = client
        .query_rows(&format!(
            "SELECT DISTINCT toString(person_id) FROM `{DB}`.`events` WHERE distinct_id = 'user-3'"
        ))
        .await
        .unwrap();
    assert_eq!(rows, [[person["id"].as_str().unwrap().to_owned()]]);

    // ClickHouse killed: capture goes on (acknowledged into the log), readiness says so, nothing is lost.
    ch.stop();
    for k in 3..6 {
        capture(&t, k * 100, 100).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = readyz(&t).await;
        if r["clickhouse"]["status"] != "ok" && r["clickhouse"]["backlog_bytes"].as_u64() > Some(0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ch.restart();
    until_stored(&client, 600).await;

    // A restarted node resumes where ClickHouse says it stands (nothing sent twice).
    capture(&t, 600, 50).await;
    t.restart().await;
    capture(&t, 650, 50).await;
    until_stored(&client, 700).await;
    let nodes = client
        .query_rows(&format!("SELECT uniqExact(_node) FROM `{DB}`.`events`"))
        .await
        .unwrap();
    assert_eq!(nodes, [["1"]], "one node, the same id across its restart");
}

#[tokio::test]
async fn a_full_spool_refuses_capture_with_retry_after() {
    // Nothing listens there: the shipper never reaches ClickHouse, so everything written stays unshipped.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = TestServer::start_with(|c| {
        c.events_url = Some(format!("http://127.0.0.1:{dead}"));
        c.spool_limit_bytes = 1;
    })
    .await;
    capture(&t, 0, 10).await;
    let batch = json!({"api_key": t.token, "batch": [{"event": "x", "distinct_id": "a"}]});
    let req = Request::post("/batch")
        .header("content-type", "application/json")
        .body(Body::from(batch.to_string()))
        .unwrap();
    let (s, v, h) = t.send(req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["code"], "spool_full", "{v}");
    assert_eq!(h.get("retry-after").unwrap(), "10");
    let r = readyz(&t).await;
    assert_eq!(r["clickhouse"]["status"], "unreachable", "{r}");
}

#[tokio::test]
async fn a_merge_after_shipping_resolves_through_the_person_mapping() {
    let ch = test_support::start();
    let url = ch.url.clone();
    let client = Client::new(&url).unwrap();
    let t = TestServer::on_clickhouse(&ch, DB).await;
    // Two persons' events shipped, then a merge of the anonymous one into the signed-in one.
    crate::growth::capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": "anon-1", "properties": {}},
            {"event": "$pageview", "distinct_id": "anon-1", "properties": {}},
            {"event": "$pageview", "distinct_id": "user-x", "properties": {}},
        ]),
    )
    .await;
    until_stored(&client, 3).await;
    crate::growth::capture(
        &t,
        json!([{"event": "$identify", "distinct_id": "user-x", "properties": {"$anon_distinct_id": "anon-1"}}]),
    )
    .await;
    let (_, person) = t.person("user-x").await;
    let survivor = person["id"].as_str().unwrap().to_owned();
    let project = t.project_id;
    let resolved = format!(
        "SELECT groupUniqArray(toString(if(o.overridden = 1, o.p, e.person_id))), uniqExact(toString(e.person_id))
           FROM `{DB}`.`events` AS e
           ANY LEFT JOIN (SELECT distinct_id, argMax(person_id, version) AS p, toUInt8(1) AS overridden
                            FROM `{DB}`.`person_overrides` WHERE project_id = {project} GROUP BY distinct_id) AS o
           USING distinct_id
          WHERE e.project_id = {project}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client.query_rows(&resolved).await.unwrap();
        // The events keep the persons they were written with (two); read through the mapping they are one.
        if r[0][0] == format!("['{survivor}']") {
            assert_eq!(r[0][1], "2", "history is not rewritten");
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}, want {survivor}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ClickHouse holds every node's events: a GDPR erasure deletes the person's events and mapping there (once this
/// node shipped everything), and a project's retention deletes its old events there too.
#[tokio::test]
async fn erasure_and_retention_delete_events_in_clickhouse() {
    const DB: &str = "fw_erase";
    let ch = test_support::start();
    let client = Client::new(&ch.url).unwrap();
    let t = TestServer::on_clickhouse(&ch, DB).await;
    let now = chrono::Utc::now();
    let recent = |h: i64| (now - chrono::Duration::hours(h)).to_rfc3339();
    crate::growth::capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": "gone", "timestamp": recent(1)},
            {"event": "$identify", "distinct_id": "gone@x.test", "timestamp": recent(1),
             "properties": {"$anon_distinct_id": "gone", "$set": {"plan": "secret-plan"}}},
            {"event": "$pageview", "distinct_id": "gone@x.test", "timestamp": recent(2)},
            {"event": "$pageview", "distinct_id": "kept", "timestamp": recent(3)},
            {"event": "$pageview", "distinct_id": "kept", "timestamp": "2020-01-01T00:00:00Z"},
            // Someone else's event that names them: masked in place, not deleted.
            {"event": "invite_accepted", "distinct_id": "kept", "timestamp": recent(3),
             "properties": {"inviter": "gone", "note": "invited by gone@x.test via a link", "n": 5}},
        ]),
    )
    .await;
    let count = |cond: &'static str| {
        let client = client.clone();
        async move {
            client
                .query_rows(&format!("SELECT count() FROM `{DB}`.`events` WHERE {cond}"))
                .await
                .ok()
                .and_then(|r| r[0][0].parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let until = |cond: &'static str, want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = count(cond).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{cond}: {got} rows, want {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until("1", 6).await;
    // Their person's properties reached `persons` (shipped after the events).
    let project = t.project_id;
    let secret_rows = format!(
        "SELECT count() FROM `{DB}`.`persons` WHERE project_id = {project} AND has(prop_texts, 'secret-plan')"
    );
    let rows_of = |sql: String| {
        let client = client.clone();
        async move { client.query_rows(&sql).await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_of(secret_rows.clone()).await[0][0] == "0" {
        assert!(
            Instant::now() < deadline,
            "their properties never reached persons"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (s, v) = t.api("DELETE", "/persons/gone", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["clickhouse_deletion_issued"], true, "{v}");
    // ClickHouse deletes in the background.
    until("distinct_id IN ('gone', 'gone@x.test')", 0).await;
    until("1", 3).await;
    // The event that named them is still there, masked with the embedded engine's rules, its index too.
    until("position(properties, 'gone') > 0", 0).await;
    let masked = rows_of(format!(
        "SELECT properties, prop_keys, prop_texts, prop_numbers FROM `{DB}`.`events` WHERE event = 'invite_accepted'"
    ))
    .await;
    assert_eq!(masked.len(), 1, "{masked:?}");
    let props: Value = serde_json::from_str(&masked[0][0]).unwrap();
    assert_eq!(
        props,
        json!({"$ip": "127.0.0.0", "inviter": null, "note": "invited by *********** via a link", "n": 5}),
        "{masked:?}"
    );
    assert_eq!(
        masked[0][1..],
        [
            "['$ip','n','note']",
            "['127.0.0.0','5','invited by *********** via a link']",
            "[nan,5,nan]"
        ],
        "the property index follows the masked properties"
    );
    // Their properties are gone from `persons` (every row but the erasure's marker).
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_of(secret_rows.clone()).await[0][0] != "0" {
        assert!(
            Instant::now() < deadline,
            "their properties stay in persons"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Their person mapping too (its own mutation, which may finish after the events').
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mapping = client
            .query_rows(&format!(
                "SELECT count() FROM `{DB}`.`person_overrides` WHERE distinct_id IN ('gone', 'gone@x.test')"
            ))
            .await
            .unwrap();
        if mapping[0][0] == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "their mapping stays: {mapping:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (s, v) = t
        .api("PATCH", "", Some(json!({"retention_days": 30})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.api("POST", "/retention/run", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until("1", 2).await;
    assert_eq!(
        count("distinct_id = 'kept'").await,
        2,
        "the recent events stay"
    );
}

#[tokio::test]
async fn persons_follow_property_changes_and_erasures() {
    let ch = test_support::start();
    let url = ch.url.clone();
    let client = Client::new(&url).unwrap();
    let t = TestServer::on_clickhouse(&ch, DB).await;
    crate::growth::capture(
        &t,
        json!([
            {"event": "$pageview", "distinct_id": "a", "properties": {"$set": {"tier": "gold"}}},
            {"event": "$pageview", "distinct_id": "b", "properties": {"$set": {"tier": "silver"}}},
        ]),
    )
    .await;
    let with_tier = json!({"series": [{"event": "$pageview"}], "date_from": "-7d",
        "properties": [{"key": "tier", "type": "person", "operator": "is_set"}]});
    let count = |v: &Value| v["result"][0]["count"].as_f64();
    let (s, v) = t
        .api("POST", "/insights/trends", Some(with_tier.clone()))
        .await;
    assert_eq!(
        (s, count(&v), &v["complete"]),
        (StatusCode::OK, Some(2.0), &json!(true)),
        "{v}"
    );
    let (_, a) = t.person("a").await;
    let a_uuid = a["id"].as_str().unwrap().to_owned();

    // The persons table as ClickHouse answers it: per person id, the newest version's uuid, deletion and tier.
    let project = t.project_id;
    let current = format!(
        "SELECT toString(argMax(uuid, version)), argMax(deleted, version),
                argMax(if(has(prop_keys, 'tier'), prop_texts[indexOf(prop_keys, 'tier')], ''), version)
           FROM `{DB}`.`persons` WHERE project_id = {project} GROUP BY id ORDER BY id"
    );
    let rows = client.query_rows(&current).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], [a_uuid.as_str(), "0", "gold"], "{rows:?}");
    assert_eq!(&rows[1][1..], ["0", "silver"], "{rows:?}");

    // A change is a new version; an erasure a deleted row without the uuid.
    crate::growth::capture(
        &t,
        json!([{"event": "$pageview", "distinct_id": "b", "properties": {"$set": {"tier": "bronze"}}}]),
    )
    .await;
    let (s, v) = t.api("DELETE", "/persons/a", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = client.query_rows(&current).await.unwrap();
        let nil = "00000000-0000-0000-0000-000000000000";
        if rows.len() == 2 && rows[0] == [nil, "1", ""] && rows[1][2] == "bronze" {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a's events are still in ClickHouse (erasing them there is not done yet), but a has no properties any more.
    let (s, v) = t.api("POST", "/insights/trends", Some(with_tier)).await;
    assert_eq!(
        (s, count(&v)),
        (StatusCode::OK, Some(2.0)),
        "b's two page views: {v}"
    );
    let gold = json!({"series": [{"event": "$pageview"}], "date_from": "-7d",
        "properties": [{"key": "tier", "type": "person", "operator": "exact", "value": "gold"}]});
    let (s, v) = t.api("POST", "/insights/trends", Some(gold)).await;
    assert_eq!((s, count(&v)), (StatusCode::OK, Some(0.0)), "{v}");
}
