//! The insights consumer: keeps the engine's in-memory event tables ([`EventTables`]) up to date with the intake
//! log, and seals them into columnar segments.
//!
//! On start it loads the distinct id → person mapping: the tables saved it next to their segments at the last seal,
//! so only what changed since is read from the metadata store (all of it on a first start). The identity consumer
//! feeds every later change directly (see `identity::run`); the mapping is order-insensitive because merges are
//! kept as "person A now belongs to B", so the load and the feed may interleave. Then it replays the log from the
//! position the segments cover, and follows it: a batch is appended once the identity consumer has applied it,
//! so its distinct ids have persons. Appended events are queryable at once (the tail); the tail is sealed into
//! Parquet segments when it reaches [`SEAL_ROWS`] rows, every [`SEAL_EVERY`], and on shutdown. After a seal, at
//! most once per [`SEAL_EVERY`], it compacts the days whose segments are due ([`EventTables::compact`]) in the
//! background; a failed compaction leaves the day's segments as they were.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flywheel_engine::table::EventTables;
use flywheel_engine::{BatchRef, Intake};
use flywheel_store::Store;
use tokio::sync::watch;

/// Tail rows that trigger a seal.
pub const SEAL_ROWS: usize = 1_000_000;
/// A non-empty tail is sealed at least this often.
pub const SEAL_EVERY: Duration = Duration::from_secs(300);
/// Batches appended per step (bounded so the table lock is held briefly).
const CHUNK_BATCHES: usize = 256;

/// What [`load_identity`] read from the metadata store.
#[derive(Debug, Clone, Copy)]
pub struct IdentityLoad {
    /// Mapping rows applied.
    pub rows: u64,
    /// Whether only the rows changed since the mapping saved next to the segments were read.
    pub incremental: bool,
}

/// Loads the identity mapping into `tables`: only what changed since the mapping the tables loaded from their
/// directory ([`EventTables::identity_seq`]), or all of it when nothing was saved.
pub async fn load_identity(store: &Store, tables: &EventTables) -> anyhow::Result<IdentityLoad> {
    let since = tables.identity_seq();
    let mut buf: Vec<(i64, String, i64)> = Vec::with_capacity(65_536);
    let flush = |buf: &mut Vec<(i64, String, i64)>| {
        tables.assign_all(buf.iter().map(|(p, d, id)| (*p, d.as_str(), *id)));
        buf.clear();
    };
    let read = store
        .read_distinct_ids(since, |p, d, id| {
            buf.push((p, d.to_owned(), id));
            if buf.len() == buf.capacity() {
                flush(&mut buf);
            }
        })
        .await?;
    flush(&mut buf);
    tables.identity_loaded(read.seq);
    Ok(IdentityLoad {
        rows: read.rows,
        incremental: since.is_some(),
    })
}

/// Fills the flag endpoints' filter of known distinct ids from the tables' dictionaries, which hold every stored
/// distinct id once [`load_identity`] is done (the identity consumer notes later ones itself).
fn fill_known(tables: &EventTables, known: &crate::serving::SubjectCache) -> usize {
    let mut n = 0;
    tables.for_each_distinct_id(|p, d| {
        known.note_known(p, d);
        n += 1;
    });
    known.known_loaded();
    n
}

/// Runs until the identity consumer ends (shutdown) and everything it applied has been appended, then seals.
pub async fn run(
    store: Store,
    intake: Intake,
    tables: Arc<EventTables>,
    mut identity: watch::Receiver<u64>,
    progress: watch::Sender<u64>,
    known: Arc<crate::serving::SubjectCache>,
) {
    let started = Instant::now();
    match load_identity(&store, &tables).await {
        Ok(load) => tracing::info!(
            rows = load.rows,
            incremental = load.incremental,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "insights: identity mapping loaded"
        ),
        Err(err) => {
            tracing::error!(error = %err, "insights: cannot load the identity mapping; persons resolve as events arrive")
        }
    }
    // In the background, one after the other (a core stays free for the first queries): sort what the segments
    // hold now, so the first queries find their views ready; then fill the flag endpoints' filter of known
    // distinct ids (until it is ready they look every distinct id up).
    {
        let tables = tables.clone();
        let known = known.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let rows = tables.warm();
            tracing::info!(
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "insights: sorted views ready"
            );
            let started = Instant::now();
            let n = fill_known(&tables, &known);
            tracing::info!(
                distinct_ids = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "insights: the flag endpoints' known distinct ids loaded"
            );
        });
    }
    let mut lsn = tables.appended_lsn();
    let _ = progress.send(lsn);
    let mut last_seal = Instant::now();
    let mut compactor = Compactor::new();
    let mut identity_ended = false;
    loop {
        let target = *identity.borrow_and_update();
        if lsn < target {
            let (from, intake2, tables2) = (lsn, intake.clone(), tables.clone());
            let step =
                tokio::task::spawn_blocking(move || append_chunk(&intake2, &tables2, from, target))
                    .await;
            match step {
                Ok(Ok(end)) if end > from => {
                    lsn = end;
                    let _ = progress.send(lsn);
                }
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(Err(err)) => {
                    tracing::error!(error = %err, lsn, "insights: cannot read the intake log");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => tracing::error!(error = %err, "insights: append task failed"),
            }
            if tables.tail_rows() >= SEAL_ROWS {
                seal(&tables).await;
                last_seal = Instant::now();
                compactor.maybe_start(&tables);
            }
            continue;
        }
        if identity_ended {
            break;
        }
        if tables.tail_rows() > 0 && last_seal.elapsed() >= SEAL_EVERY {
            seal(&tables).await;
            last_seal = Instant::now();
        }
        // Also when nothing was sealed: a day becomes due an hour after it ends, traffic or not.
        compactor.maybe_start(&tables);
        tokio::select! {
            changed = identity.changed() => identity_ended = changed.is_err(),
            _ = tokio::time::sleep(SEAL_EVERY) => {}
        }
    }
    compactor.finish().await;
    if tables.tail_rows() > 0 {
        seal(&tables).await;
    } else {
        save_identity(&tables).await;
    }
}

/// Runs [`EventTables::compact`] on the blocking pool, one run at a time, at most once per [`SEAL_EVERY`] (the first
/// one [`SEAL_EVERY`] after start).
struct Compactor {
    task: Option<tokio::task::JoinHandle<()>>,
    last: Instant,
    stop: Arc<AtomicBool>,
}

impl Compactor {
    fn new() -> Compactor {
        Compactor {
            task: None,
            last: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn maybe_start(&mut self, tables: &Arc<EventTables>) {
        if self.last.elapsed() < SEAL_EVERY || self.task.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.last = Instant::now();
        let (tables, stop) = (tables.clone(), self.stop.clone());
        self.task = Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            match tables.compact_unless(now_us, &stop) {
                Ok(stats) if stats.days > 0 || stats.files_deleted > 0 => tracing::info!(
                    days = stats.days,
                    segments_in = stats.segments_in,
                    segments_out = stats.segments_out,
                    rows = stats.rows,
                    bytes_before = stats.bytes_before,
                    bytes_after = stats.bytes_after,
                    files_deleted = stats.files_deleted,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "insights: compacted segments"
                ),
                Ok(_) => {}
                Err(err) => tracing::error!(
                    error = %err,
                    "insights: compaction failed; the day keeps its segments, retried later"
                ),
            }
        }));
    }

    /// Lets a running compaction finish the day it is merging, and stops it there.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "insights: compaction task failed");
            }
        }
    }
}

async fn seal(tables: &Arc<EventTables>) {
    let t = tables.clone();
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || t.seal()).await {
        Ok(Ok(stats)) => tracing::info!(
            segments = stats.segments,
            rows = stats.rows,
            bytes = stats.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "insights: sealed events into segments"
        ),
        Ok(Err(err)) => {
            tracing::error!(error = %err, "insights: sealing failed; the events stay in memory and in the log")
        }
        Err(err) => tracing::error!(error = %err, "insights: seal task failed"),
    }
    save_identity(tables).await;
}

/// Saves the identity mapping next to the segments (after each seal and on shutdown), so that a restart reads only
/// what changed since from the metadata store.
async fn save_identity(tables: &Arc<EventTables>) {
    let t = tables.clone();
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || t.save_identity()).await {
        Ok(Ok(true)) => tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "insights: identity mapping saved"
        ),
        Ok(Ok(false)) => {}
        Ok(Err(err)) => tracing::warn!(
            error = %err,
            "insights: cannot save the identity mapping; the next start reads it from the metadata store"
        ),
        Err(err) => tracing::error!(error = %err, "insights: identity save task failed"),
    }
}

/// Appends the batches in `[from, target)`, at most [`CHUNK_BATCHES`]; returns the position reached.
pub fn append_chunk(
    intake: &Intake,
    tables: &EventTables,
    from: u64,
    target: u64,
) -> Result<u64, flywheel_engine::EngineError> {
    let mut reader = intake.reader(from);
    let mut reached = from;
    for _ in 0..CHUNK_BATCHES {
        let Some(item) = reader.next_payload() else {
            break;
        };
        let (end, payload) = item?;
        if end > target {
            break;
        }
        let batch = BatchRef::new(payload)?;
        let events = batch.iter().collect::<Result<Vec<_>, _>>()?;
        tables.append(events, end);
        reached = end;
        // Stop at the seal threshold so the caller seals before the tail (and the seal's memory) grows further.
        if tables.tail_rows() >= SEAL_ROWS {
            break;
        }
    }
    Ok(reached)
}
