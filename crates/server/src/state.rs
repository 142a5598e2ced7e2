//! Shared application state: cheap to clone, one `Arc` per part.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use flywheel_engine::Intake;
use flywheel_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::Config;

/// Time source, injectable so that time-dependent logic is testable.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The server's shared state, handed to every request. One `Arc`: a handler's state extractor clones it per
/// request, which cost two atomic operations per field (≈ 2 % of the flag-serving CPU) when the fields were
/// cloned one by one.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub intake: Intake,
    pub tokens: Arc<TokenCache>,
    /// Compiled flag snapshots per project environment, swapped after every change, and the client-key cache.
    pub flags: Arc<crate::serving::FlagRegistry>,
    /// Server-side exposures (`$feature_flag_called`) waiting to be written to the intake log.
    pub exposures: Arc<crate::exposure::Exposures>,
    pub dedupe: Arc<Dedupe>,
    pub clock: Arc<dyn Clock>,
    /// LSN up to which identity state has been applied.
    pub identity_progress: watch::Receiver<u64>,
    /// Every project's events, queryable (the insights tables).
    pub tables: Arc<flywheel_engine::table::EventTables>,
    /// LSN up to which events have been appended to `tables`.
    pub tables_progress: watch::Receiver<u64>,
    /// Person-property columns for insights.
    pub insights: Arc<crate::insights::InsightsCache>,
    pub metrics: PrometheusHandle,
    /// Turns true when the server shuts down (long-lived streams end).
    pub shutdown: watch::Receiver<bool>,
    /// Guarded rollouts' last checks.
    pub rollouts: Arc<crate::rollouts::Checks>,
    /// Sticky bucket assignments of server-side evaluations.
    pub sticky: Arc<crate::sticky::StickyStore>,
    /// Bumped when referral programs, codes or share links change: the referral consumer reloads what it watches.
    pub growth_epoch: std::sync::atomic::AtomicU64,
    /// Bumped when a webhook subscription changes: the captured-events announcer reloads at once.
    pub webhook_epoch: std::sync::atomic::AtomicU64,
    /// Rate limits of capture and the native API.
    pub limits: crate::limits::Limits,
    /// Projects' ingestion policies (privacy, capture limit).
    pub policies: crate::privacy::Policies,
    /// The installation's salt of click fingerprints, read from the store once.
    pub click_salt: tokio::sync::OnceCell<String>,
    /// Failed sign-ins per email and address.
    pub login_limiter: crate::auth::LoginLimiter,
    /// Shipping to ClickHouse (`--events-url`), when on.
    pub spool: Option<Arc<crate::clickhouse_ship::Spool>>,
    /// Where insights read with `--events-url`: every node's events (`insights_clickhouse`).
    pub clickhouse: Option<crate::insights_clickhouse::Reader>,
}

impl Shared {
    /// Waits (bounded) until derived state has caught up with everything acknowledged so far, so that a client
    /// reading right after writing sees its own writes.
    pub async fn catch_up(&self) {
        let target = self.intake.committed_lsn();
        let mut progress = self.identity_progress.clone();
        let wait = progress.wait_for(|lsn| *lsn >= target);
        let _ = tokio::time::timeout(self.config.read_barrier_timeout, wait).await;
    }

    /// Waits (bounded) until the insights tables hold everything acknowledged so far. Returns false when they
    /// did not catch up in time (the answer may then miss the newest events).
    pub async fn tables_catch_up(&self) -> bool {
        let target = self.intake.committed_lsn();
        let mut progress = self.tables_progress.clone();
        let wait = progress.wait_for(|lsn| *lsn >= target);
        tokio::time::timeout(self.config.read_barrier_timeout, wait)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Project token → project id, cached (including unknown tokens, bounded).
#[derive(Default)]
pub struct TokenCache {
    known: RwLock<HashMap<String, Option<i64>>>,
}

const TOKEN_CACHE_LIMIT: usize = 10_000;

impl TokenCache {
    pub async fn project_for(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<Option<i64>, flywheel_store::StoreError> {
        if let Some(hit) = self
            .known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return Ok(*hit);
        }
        let project = store.project_for_token(token).await?;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if known.len() >= TOKEN_CACHE_LIMIT {
            known.retain(|_, v| v.is_some());
            if known.len() >= TOKEN_CACHE_LIMIT {
                known.clear();
            }
        }
        known.insert(token.to_owned(), project);
        Ok(project)
    }

    /// Forgets everything (after keys change).
    pub fn invalidate(&self) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Recently accepted (project, event uuid) pairs, so SDK retries are not stored twice. Two generations bound the
/// memory; reads of the event log also drop duplicate uuids, so this is a fast path, not the only guard.
pub struct Dedupe {
    generation_size: usize,
    /// (current generation, previous generation).
    inner: Mutex<(KeySet, KeySet)>,
}

/// (project id, event uuid) pairs. Uuids are (mostly) random already, so a multiply-xor hasher is enough and much
/// cheaper than SipHash on this per-event path.
pub type KeySet = HashSet<(i64, u128), std::hash::BuildHasherDefault<MixHasher>>;

#[derive(Default)]
pub struct MixHasher(u64);

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }

    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
}

impl Dedupe {
    pub fn new(window: usize) -> Self {
        Self {
            generation_size: (window / 2).max(1),
            inner: Mutex::new((KeySet::default(), KeySet::default())),
        }
    }

    pub fn seen(&self, key: (i64, u128)) -> bool {
        self.seen_all(&[key])[0]
    }

    /// For each key, whether it was seen (one lock for a whole request).
    pub fn seen_all(&self, keys: &[(i64, u128)]) -> Vec<bool> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .map(|k| inner.0.contains(k) || inner.1.contains(k))
            .collect()
    }

    pub fn remember(&self, keys: &[(i64, u128)]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if inner.0.len() >= self.generation_size {
                let current = std::mem::take(&mut inner.0);
                inner.1 = current;
            }
            inner.0.insert(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_remembers_within_its_window_and_forgets_beyond() {
        let d = Dedupe::new(4);
        d.remember(&[(1, 1), (1, 2)]);
        assert!(d.seen((1, 1)));
        assert!(!d.seen((2, 1)), "projects are separate");
        d.remember(&[(1, 3), (1, 4), (1, 5), (1, 6)]);
        assert!(!d.seen((1, 1)), "oldest generation dropped");
        assert!(d.seen((1, 6)));
    }
}
