//! The shipper on a real ClickHouse 18.16: every event stored exactly once when a block landed without its
//! `shipments` row (in part: one month's part of two), when ClickHouse is killed and restarted mid-stream, and when
//! a caller hands batches again after an error.

use flywheel_clickhouse::schema::create_all;
use flywheel_clickhouse::test_support;
use flywheel_clickhouse::{Batch, Client, EventRow, Shipper};
use serde_json::{json, Map, Value};
use uuid::Uuid;

const DB: &str = "ship_test";
const PER_BATCH: usize = 50;

/// Batch `i` (end LSN 1000·(i+1)): 50 events of two projects and three event names, half in February 2026 and half
/// in March (two month partitions per batch).
fn batch(i: usize) -> Batch {
    let feb = 1_769_904_000_000_000i64; // 2026-02-01T00:00:00Z
    let mar = 1_772_323_200_000_000i64; // 2026-03-01T00:00:00Z
    let rows = (0..PER_BATCH)
        .map(|j| {
            let n = (i * PER_BATCH + j) as u128;
            let base = if j % 2 == 0 { feb } else { mar };
            let props: Map<String, Value> =
                json!({"n": n as u64, "plan": if j % 3 == 0 { "pro" } else { "free" }})
                    .as_object()
                    .unwrap()
                    .clone();
            EventRow::new(
                Uuid::from_u128(0xF1E0_0000_0000_0000_0000_0000_0000_0000 | n),
                1 + (j % 2) as u64,
                ["signed_up", "$pageview", "task_completed"][j % 3],
                &format!("user-{}", j % 7),
                Uuid::from_u128(0xAB00 + (j % 7) as u128),
                base + (i as i64) * 3_600_000_000 + j as i64,
                &props,
            )
        })
        .collect();
    Batch {
        end_lsn: 1000 * (i as u64 + 1),
        rows,
    }
}

async fn counts(client: &Client) -> (u64, u64) {
    let r = client
        .query_rows(&format!(
            "SELECT count(), uniqExact(toString(uuid)) FROM `{DB}`.`events`"
        ))
        .await
        .unwrap();
    (r[0][0].parse().unwrap(), r[0][1].parse().unwrap())
}

#[tokio::test]
async fn every_event_arrives_once_whatever_fails() {
    let mut server = test_support::start();
    let client = Client::new(&server.url).unwrap();
    for s in create_all(DB) {
        client.execute(&s).await.unwrap();
    }
    let batches: Vec<Batch> = (0..40).map(batch).collect();

    // A fresh node starts at 0 and ships ten batches.
    let mut a = Shipper::open(client.clone(), DB, "node-a").await.unwrap();
    assert_eq!(a.position(), 0);
    assert_eq!(a.send(&batches[0..10]).await.unwrap(), 10_000);
    assert_eq!(counts(&client).await, (500, 500));

    // Reopened, it resumes where its shipments say; another node's position is its own.
    let b = Shipper::open(client.clone(), DB, "node-a").await.unwrap();
    assert_eq!(b.position(), 10_000);
    let other = Shipper::open(client.clone(), DB, "node-b").await.unwrap();
    assert_eq!(other.position(), 0);

    // A crash after the next block's February part landed, before its March part and its shipments row: those
    // rows are in ClickHouse, unrecorded.
    let landed: Vec<Value> = batches[10..15]
        .iter()
        .flat_map(|b| {
            b.rows
                .iter()
                .filter(|r| r.timestamp_us < 1_772_323_200_000_000)
                .map(move |r| {
                    let mut v = serde_json::to_value(r).unwrap();
                    v["_node"] = json!("node-a");
                    v["_lsn"] = json!(b.end_lsn);
                    v
                })
        })
        .collect();
    assert_eq!(landed.len(), 5 * PER_BATCH / 2);
    client
        .insert(&format!("`{DB}`.`events`"), &landed)
        .await
        .unwrap();
    let mut c = Shipper::open(client.clone(), DB, "node-a").await.unwrap();
    assert_eq!(c.position(), 10_000);
    // The caller hands the log from an older point again: what is at or before the position is skipped.
    assert_eq!(c.send(&batches[5..20]).await.unwrap(), 20_000);
    assert_eq!(
        counts(&client).await,
        (1000, 1000),
        "the landed half was not sent twice"
    );

    // ClickHouse killed mid-stream: the send fails, the position stays; after the restart the same batches go
    // through once.
    server.stop();
    let err = c.send(&batches[20..30]).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(c.position(), 20_000);
    server.restart();
    assert_eq!(c.send(&batches[20..30]).await.unwrap(), 30_000);
    assert_eq!(c.send(&batches[20..40]).await.unwrap(), 40_000);
    assert_eq!(counts(&client).await, (2000, 2000));

    // Every batch is whole, under its own position.
    let per_lsn = client
        .query_rows(&format!(
            "SELECT _lsn, count() FROM `{DB}`.`events` WHERE _node = 'node-a' GROUP BY _lsn ORDER BY _lsn"
        ))
        .await
        .unwrap();
    assert_eq!(per_lsn.len(), 40);
    for (i, r) in per_lsn.iter().enumerate() {
        assert_eq!(r[0], (1000 * (i + 1)).to_string());
        assert_eq!(r[1], PER_BATCH.to_string(), "batch {i}");
    }
    let reopened = Shipper::open(client.clone(), DB, "node-a").await.unwrap();
    assert_eq!(reopened.position(), 40_000);
}
