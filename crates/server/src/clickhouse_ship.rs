//! With `--events-url`: a consumer of the intake log that ships every event into ClickHouse, exactly once
//! (`flywheel_clickhouse::ship`; docs/clickhouse.md, "Ingestion").
//!
//! The intake log is the spool: capture acknowledges after the log's fsync whether or not ClickHouse is reachable,
//! and this consumer follows the log after the identity consumer (so each row carries the person its distinct id
//! has then), sends blocks of whole batches in log order, and retries with backoff (1 s doubling to 30 s) while
//! ClickHouse is down or slow. Its position lives in ClickHouse itself (the node's `shipments`), so nothing here is
//! checkpointed. The unshipped part of the log is bounded (`--spool-limit-mb`): past it, capture answers 503 with
//! `Retry-After` rather than filling the disk (see [`Spool::full`]). The insight endpoint reads ClickHouse once it
//! holds what this node acknowledged before the request, events, person mapping and persons' properties
//! ([`Spool::wait_readable`]).
//!
//! An event whose distinct id has no person (`$process_person_profile: false`) gets a stable pseudo-person derived
//! from its project and distinct id, so counting persons counts it once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flywheel_clickhouse::row::{PersonOverride, PersonRow};
use flywheel_clickhouse::schema::{create_all, ident, PERSONS, PERSON_OVERRIDES};
use flywheel_clickhouse::{Batch, ClickHouseError, Client, EventRow, Shipper};
use flywheel_engine::{Event, Intake};
use flywheel_store::Store;
use serde_json::{Map, Value};
use sha2::Digest;
use uuid::Uuid;

use crate::state::AppState;

/// Most events read from the log per block.
const BLOCK_EVENTS: usize = 50_000;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often an idle shipper looks again (a person mapping to retry, a change without new events).
const IDLE_RETRY: Duration = Duration::from_secs(2);

/// Where shipping stands, for capture's back-pressure, `/readyz` and the metrics.
#[derive(Debug)]
pub struct Spool {
    /// Log position just past the last batch ClickHouse holds; until ClickHouse answers, the log's end when the
    /// node started (what was written since is certainly not shipped, so the bound holds from the start).
    position: AtomicU64,
    /// Whether the shipper knows its position yet (ClickHouse answered once).
    opened: AtomicBool,
    /// Whether the last attempt reached ClickHouse.
    healthy: AtomicBool,
    /// Most unshipped bytes of log before capture refuses.
    limit_bytes: u64,
    /// Log position up to which ClickHouse answers as this node's own reads would: every event before it is
    /// shipped, and the person mapping and the persons hold every identity change applied up to it. 0 until the shipper has
    /// reached ClickHouse (see [`Spool::wait_readable`]).
    readable: tokio::sync::watch::Sender<u64>,
}

impl Spool {
    pub fn new(limit_bytes: u64, start: u64) -> Self {
        Spool {
            position: AtomicU64::new(start),
            opened: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            limit_bytes,
            readable: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Waits, at most `timeout`, until ClickHouse holds everything this node acknowledged up to log position
    /// `lsn` (its events, and the person mapping and persons as of them). False when it did not in time: an answer read now
    /// may miss some of them.
    pub async fn wait_readable(&self, lsn: u64, timeout: Duration) -> bool {
        let mut readable = self.readable.subscribe();
        let wait = readable.wait_for(|&at| at >= lsn);
        tokio::time::timeout(timeout, wait)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records that ClickHouse answers reads up to `lsn` (never moves back).
    fn readable_to(&self, lsn: u64) {
        self.readable.send_if_modified(|at| {
            let moved = lsn > *at;
            if moved {
                *at = lsn;
            }
            moved
        });
    }

    /// Bytes of log written but not yet in ClickHouse (at least).
    pub fn backlog(&self, committed: u64) -> u64 {
        committed.saturating_sub(self.position.load(Ordering::Acquire))
    }

    /// Whether ClickHouse answered since the node started.
    pub fn opened(&self) -> bool {
        self.opened.load(Ordering::Acquire)
    }

    /// Capture must refuse: the unshipped log has reached its bound.
    pub fn full(&self, committed: u64) -> bool {
        self.backlog(committed) >= self.limit_bytes
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn shipped(&self, position: u64) {
        self.position.store(position, Ordering::Release);
        self.opened.store(true, Ordering::Release);
        self.healthy.store(true, Ordering::Release);
    }
}

/// The node's name among the nodes shipping to one ClickHouse: made once per data directory (`node-id`), so a
/// restarted node resumes its own position.
pub fn node_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        _ => {
            std::fs::create_dir_all(data_dir)?;
            let id = Uuid::new_v4().to_string();
            let tmp = data_dir.join("node-id.tmp");
            std::fs::write(&tmp, &id)?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
    }
}

/// A stable person id for a distinct id that has no person.
fn pseudo_person(project_id: i64, distinct_id: &str) -> Uuid {
    let digest = sha2::Sha256::new()
        .chain_update(project_id.to_le_bytes())
        .chain_update(distinct_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Reads whole batches from `from` up to `until` (a batch boundary), at most about [`BLOCK_EVENTS`] events.
fn read_block(
    intake: &Intake,
    from: u64,
    until: u64,
) -> Result<Vec<(u64, Vec<Event>)>, flywheel_engine::EngineError> {
    let mut out = Vec::new();
    let mut events = 0;
    for item in intake.reader(from) {
        let (end, batch) = item?;
        if end > until {
            break;
        }
        events += batch.len();
        out.push((end, batch));
        if events >= BLOCK_EVENTS {
            break;
        }
    }
    Ok(out)
}

/// The rows of the batches, each with its distinct id's current person.
async fn rows(store: &Store, read: Vec<(u64, Vec<Event>)>) -> anyhow::Result<Vec<Batch>> {
    let mut ids: std::collections::BTreeMap<i64, Vec<&str>> = Default::default();
    for (_, batch) in &read {
        for e in batch {
            ids.entry(e.project_id).or_default().push(&e.distinct_id);
        }
    }
    let mut persons: std::collections::HashMap<(i64, String), Uuid> = Default::default();
    for (project, mut dids) in ids {
        dids.sort_unstable();
        dids.dedup();
        for (did, person) in store.person_ids_for(project, &dids).await? {
            if let Ok(uuid) = person.parse::<Uuid>() {
                persons.insert((project, did), uuid);
            }
        }
    }
    let empty = Map::new();
    Ok(read
        .into_iter()
        .map(|(end_lsn, batch)| Batch {
            end_lsn,
            rows: batch
                .iter()
                .map(|e| {
                    let parsed: Option<Map<String, Value>> =
                        serde_json::from_str(&e.properties).ok();
                    let person = persons
                        .get(&(e.project_id, e.distinct_id.clone()))
                        .copied()
                        .unwrap_or_else(|| pseudo_person(e.project_id, &e.distinct_id));
                    EventRow::new(
                        Uuid::from_u128(e.uuid),
                        e.project_id.max(0) as u64,
                        &e.event,
                        &e.distinct_id,
                        person,
                        e.timestamp_us,
                        parsed.as_ref().unwrap_or(&empty),
                    )
                })
                .collect(),
        })
        .collect())
}

/// Rows of the person mapping sent per insert.
const MAPPING_ROWS: u32 = 10_000;

/// Feeds ClickHouse's person mapping (`person_overrides`, `argMax(person_id, version)` per distinct id at read
/// time) with every distinct id whose person was set or changed since `cursor`, versioned by the identity change's
/// number: events shipped before a merge resolve to the surviving person without being rewritten. Sending a row
/// twice is harmless (same version, same person), so this is at least once: on start the cursor is the highest
/// version ClickHouse holds, whose rows are sent again.
async fn feed_mapping(
    store: &Store,
    client: &Client,
    db: &str,
    cursor: &mut (i64, i64, String),
) -> Result<usize, anyhow::Error> {
    let table = format!("{}.{}", ident(db), ident(PERSON_OVERRIDES));
    let mut sent = 0;
    loop {
        let rows = store
            .distinct_id_changes((cursor.0, cursor.1, &cursor.2), MAPPING_ROWS)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(sent);
        };
        let next = (last.3, last.0, last.1.clone());
        let mapping: Vec<PersonOverride> = rows
            .iter()
            .filter_map(|(project, did, person, seq)| {
                Some(PersonOverride {
                    project_id: (*project).max(0) as u64,
                    distinct_id: did.clone(),
                    person_id: person.parse().ok()?,
                    version: (*seq).max(0) as u64,
                })
            })
            .collect();
        client.insert(&table, &mapping).await?;
        sent += mapping.len();
        *cursor = next;
        if rows.len() < MAPPING_ROWS as usize {
            return Ok(sent);
        }
    }
}

/// Where the mapping feed resumes: after the highest version ClickHouse holds (its rows are sent again).
async fn mapping_cursor(client: &Client, db: &str) -> Result<(i64, i64, String), ClickHouseError> {
    let version = max_version(client, db, PERSON_OVERRIDES).await?;
    Ok((version - 1, 0, String::new()))
}

/// The highest `version` in a table (0 when empty).
async fn max_version(client: &Client, db: &str, table: &str) -> Result<i64, ClickHouseError> {
    let rows = client
        .query_rows(&format!(
            "SELECT max(version) FROM {}.{}",
            ident(db),
            ident(table)
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0))
}

/// Persons sent per insert.
const PERSON_ROWS: u32 = 10_000;

/// Feeds ClickHouse's `persons` (current properties per person id, `argMax(…, version)` at read time) with every
/// person created, changed or erased since `cursor` (`Store::person_changes`), versioned by the identity change's
/// number; an erased person becomes a deleted row. Like the mapping, at least once: a row sent twice is the same
/// row, and several nodes sending the shared store's persons only duplicate rows.
async fn feed_persons(
    store: &Store,
    client: &Client,
    db: &str,
    cursor: &mut (i64, i64),
) -> Result<usize, anyhow::Error> {
    let table = format!("{}.{}", ident(db), ident(PERSONS));
    let mut sent = 0;
    loop {
        let changes = store.person_changes(*cursor, PERSON_ROWS).await?;
        let Some(last) = changes.last() else {
            return Ok(sent);
        };
        let next = (last.seq, last.id);
        let rows: Vec<PersonRow> = changes
            .iter()
            .filter_map(|c| {
                let project = c.project_id.max(0) as u64;
                let version = c.seq.max(0) as u64;
                match &c.uuid {
                    None => Some(PersonRow::deleted(project, c.id, version)),
                    Some(uuid) => {
                        let props = match serde_json::from_str::<Value>(&c.properties) {
                            Ok(Value::Object(m)) => m,
                            _ => Map::new(),
                        };
                        Some(PersonRow::new(
                            project,
                            c.id,
                            uuid.parse().ok()?,
                            &props,
                            version,
                        ))
                    }
                }
            })
            .collect();
        client.insert(&table, &rows).await?;
        sent += rows.len();
        *cursor = next;
        if changes.len() < PERSON_ROWS as usize {
            return Ok(sent);
        }
    }
}

/// Where the persons feed resumes: after the highest version ClickHouse holds (its rows are sent again).
async fn persons_cursor(client: &Client, db: &str) -> Result<(i64, i64), ClickHouseError> {
    let version = max_version(client, db, PERSONS).await?;
    Ok((version - 1, i64::MAX))
}

/// The person mapping, then the persons, as of now.
async fn feed_identity(
    store: &Store,
    client: &Client,
    db: &str,
    mapping: &mut (i64, i64, String),
    persons: &mut (i64, i64),
) -> Result<(), anyhow::Error> {
    feed_mapping(store, client, db, mapping).await?;
    feed_persons(store, client, db, persons).await?;
    Ok(())
}

/// Waits `wait`, or returns true when the server shuts down meanwhile.
async fn pause(state: &AppState, wait: Duration) -> bool {
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = shutdown.wait_for(|s| *s) => true,
    }
}

/// Creates the database and tables when missing, and adds the columns an older version's tables lack.
async fn prepare(client: &Client, db: &str) -> Result<(), ClickHouseError> {
    for statement in create_all(db) {
        client.execute(&statement).await?;
    }
    flywheel_clickhouse::schema::upgrade(client, db).await
}

/// Follows the log until shutdown.
pub async fn run(state: AppState, spool: Arc<Spool>, client: Client, db: String, node: String) {
    let mut backoff = BACKOFF_MIN;
    // The schema, then the node's position: both need ClickHouse; wait for it as long as it takes.
    let (mut shipper, (mut mapping, mut persons)) = loop {
        let opened = match prepare(&client, &db).await {
            Ok(()) => match Shipper::open(client.clone(), &db, &node).await {
                Ok(s) => match mapping_cursor(&client, &db).await {
                    Ok(m) => persons_cursor(&client, &db).await.map(|p| (s, (m, p))),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match opened {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "clickhouse: not reachable; events wait in the intake log");
                if pause(&state, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    spool.shipped(shipper.position());
    tracing::info!(node = %node, position = shipper.position(), "clickhouse: shipping the intake log");
    let mut identity = state.identity_progress.clone();
    let mut shutdown = state.shutdown.clone();
    backoff = BACKOFF_MIN;
    // Log position up to which identity's changes are in ClickHouse's person mapping and persons.
    let mut mapped = 0;
    loop {
        let target = *identity.borrow_and_update();
        let from = shipper.position();
        // The person mapping and the persons follow identity (a failure is retried at the next turn; the events do
        // not wait).
        match feed_identity(&state.store, &client, &db, &mut mapping, &mut persons).await {
            Ok(()) => {
                spool.healthy.store(true, Ordering::Release);
                mapped = target;
                spool.readable_to(from.min(mapped));
            }
            Err(e) => {
                tracing::warn!(error = %e, "clickhouse: the person mapping or the persons could not be sent; retrying");
                spool.healthy.store(false, Ordering::Release);
            }
        }
        if from >= target {
            if *shutdown.borrow() {
                return;
            }
            // New batches wake it; so does time, to retry a mapping that failed while nothing new arrives.
            tokio::select! {
                r = identity.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(IDLE_RETRY) => {}
            }
            continue;
        }
        let intake = state.intake.clone();
        let read = match tokio::task::spawn_blocking(move || read_block(&intake, from, target))
            .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::error!(error = %e, position = from, "clickhouse: cannot read the intake log");
                if pause(&state, BACKOFF_MAX).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "clickhouse: the log reader failed");
                return;
            }
        };
        let batches = match rows(&state.store, read).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "clickhouse: cannot resolve persons; retrying");
                if pause(&state, BACKOFF_MIN).await {
                    return;
                }
                continue;
            }
        };
        let events: usize = batches.iter().map(|b| b.rows.len()).sum();
        // The same block until it is stored: the shipper checks what a failed attempt left before sending again.
        loop {
            match shipper.send(&batches).await {
                Ok(position) => {
                    spool.shipped(position);
                    spool.readable_to(position.min(mapped));
                    metrics::counter!(crate::metrics_names::CLICKHOUSE_EVENTS_SHIPPED)
                        .increment(events as u64);
                    backoff = BACKOFF_MIN;
                    break;
                }
                Err(e) => {
                    spool.healthy.store(false, Ordering::Release);
                    tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), backlog_bytes = spool.backlog(state.intake.committed_lsn()), "clickhouse: shipping failed; events wait in the intake log");
                    if pause(&state, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Where [`ship_log`] stands after a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShipProgress {
    /// Log position just past the last batch ClickHouse holds from this node.
    pub position: u64,
    /// Where shipping stops.
    pub until: u64,
    /// Events sent by this call so far.
    pub events: u64,
}

/// Attempts of one block before [`ship_log`] gives up (running it again resumes).
const SHIP_ATTEMPTS: u32 = 4;

/// Ships the node's intake log up to `until` (a batch boundary identity has applied, so every distinct id has its
/// person in `store`) into ClickHouse, with the person mapping, and returns: `flywheel migrate`'s copy of an
/// embedded deployment's events, made by the node's own shipping code (tables, blocks, rows, `shipments`,
/// mapping), so the node that later starts on the same data directory continues from where this stopped. Each
/// event is stored once however often this runs or wherever it is cut (see [`Shipper`]). `progress` gets the
/// position after each block.
pub async fn ship_log(
    store: &Store,
    intake: &Intake,
    client: &Client,
    db: &str,
    node: &str,
    until: u64,
    mut progress: impl FnMut(ShipProgress),
) -> anyhow::Result<ShipProgress> {
    prepare(client, db).await?;
    let mut shipper = Shipper::open(client.clone(), db, node).await?;
    let mut mapping = mapping_cursor(client, db).await?;
    let mut persons = persons_cursor(client, db).await?;
    feed_identity(store, client, db, &mut mapping, &mut persons).await?;
    let mut done = ShipProgress {
        position: shipper.position(),
        until,
        events: 0,
    };
    progress(done);
    while shipper.position() < until {
        let from = shipper.position();
        let reading = intake.clone();
        let read = tokio::task::spawn_blocking(move || read_block(&reading, from, until)).await??;
        if read.is_empty() {
            anyhow::bail!("the intake log has no whole batch between positions {from} and {until}");
        }
        let batches = rows(store, read).await?;
        let events: usize = batches.iter().map(|b| b.rows.len()).sum();
        let mut attempt = 1;
        let position = loop {
            match shipper.send(&batches).await {
                Ok(position) => break position,
                Err(e) if attempt < SHIP_ATTEMPTS => {
                    let wait = BACKOFF_MIN * 2u32.pow(attempt - 1);
                    tracing::warn!(error = %e, attempt, retry_in_s = wait.as_secs(), "clickhouse: shipping failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        done.position = position;
        done.events += events as u64;
        progress(done);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_persons_are_stable_and_per_project() {
        assert_eq!(pseudo_person(1, "a"), pseudo_person(1, "a"));
        assert_ne!(pseudo_person(1, "a"), pseudo_person(2, "a"));
        assert_ne!(pseudo_person(1, "a"), pseudo_person(1, "b"));
    }

    #[test]
    fn the_node_id_is_made_once_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path()).unwrap();
        assert_eq!(node_id(dir.path()).unwrap(), a);
        assert!(a.parse::<Uuid>().is_ok());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(node_id(other.path()).unwrap(), a);
    }

    #[test]
    fn the_spool_is_full_at_its_bound_once_the_position_is_known() {
        let spool = Spool::new(1000, 3000);
        assert!(
            !spool.full(3999),
            "ClickHouse never answered: the log since the start counts"
        );
        assert!(spool.full(4000));
        spool.shipped(4000);
        assert_eq!(spool.backlog(4999), 999);
        assert!(!spool.full(4999));
        assert!(spool.full(5000));
    }
}
