//! Flywheel's metadata store: organizations, projects, API keys, persons, groups and intake checkpoints.
//!
//! The embedded default is SQLite through sqlx (with migrations under `migrations/sqlite`). Everything that the
//! server derives from the intake log (persons, merges, groups) is applied by [`IdentityWriter`] in log order, in
//! one transaction per batch together with the consumer's checkpoint, so a crash replays at most the batches after
//! the last checkpoint and replaying them is idempotent. The identity writer has its own synchronous connection
//! (rusqlite) to the same file: its many small statements cost less there than through sqlx's worker thread.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = flywheel_store::Store::open(&dir.path().join("meta.db")).await.unwrap();
//! let boot = store.bootstrap("Acme", "Default project").await.unwrap();
//! assert_eq!(store.project_for_token(&boot.project_api_key).await.unwrap(), Some(boot.project_id));
//! # });
//! ```

mod changes;
mod cohorts;
mod documents;
mod features;
mod gdpr;
mod groups;
mod growth_metrics;
mod identity;
mod invitations;
mod keys;
mod ledger;
mod persons;
mod pql;
mod projects;
mod referrals;
mod sticky;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod transfer;
mod users;
mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use changes::{Change, ChangeListener};
pub use cohorts::{CohortRecord, CohortUpdate};
pub use documents::{Document, DocumentUpdate, OutboxEntry};
pub use features::{
    json_diff, Actor, AuditEntry, AuditFilter, EnvironmentRecord, FeatureRecord, SavedGroupRecord,
    SdkBinding, SdkConnection, WriteError, SDK_KEY_PREFIX,
};
pub use gdpr::{erasure_digest, ErasureCounts, ErasureNotice, ErasureSubject};
pub use groups::{GroupSummary, GroupType};
pub use growth_metrics::{ConvertedInvite, GrowthInvites, InviteChannel, SentInvites};
pub use identity::{ApplyStats, IdentityChange, IdentityOp, IdentityWriter, MergeMode};
pub use invitations::{Invitation, InvitationChange, NewInvitation};
pub use keys::{Bootstrap, KeyInfo, PersonalKey};
pub use ledger::{transition_allowed, NewReward, RewardEntry};
pub use persons::{GroupMembership, IdentityRead, PersonChange, PersonRecord, PersonSummary};
pub use pql::PqlScore;
pub use projects::{ProjectSettings, ProjectUpdate, RetentionPolicy};
pub use referrals::{
    GraphEdge, GrowthEdge, NewReferral, Qualification, Referral, ReferralCode, ShareLink,
};
pub use sticky::StickyRow;
pub use users::{
    MemberError, Membership, OrganizationInfo, ProjectInfo, SessionRecord, TeamInvitation,
    UserRecord, SESSION_PREFIX, TEAM_INVITATION_PREFIX,
};
pub use webhooks::{topic_matches, Attempt, Delivery, Outcome, Webhook, WebhookUpdate};

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From a direct connection (rusqlite): the identity writer's ([`IdentityWriter`]) or a bulk reader's.
    #[error("metadata database error (direct connection): {0}")]
    IdentityDatabase(#[from] rusqlite::Error),
    /// A blocking task of the store failed (panicked or was cancelled).
    #[error("metadata store task failed: {0}")]
    Task(String),
    #[error("metadata migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The metadata store: SQLite (embedded) or PostgreSQL (scale-out). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// SQLite's database file, for connections outside the pool (the identity writer's, bulk readers').
    path: Option<Arc<PathBuf>>,
    /// The node whose intake log the consumer checkpoints are of, when several nodes share the database.
    node: Option<Arc<str>>,
    /// Bumped when rows the identity writer may have cached are deleted behind its back (GDPR erasure): it drops
    /// its caches at its next transaction.
    identity_epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a statement waits for another connection's write lock before failing with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database behind a [`Store`]. Most statements are one SQL text run on either pool ([`on_pool!`]); the few
/// that differ between the dialects match on it.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The SQL dialect of a backend, for the few statements whose text differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The 1-based position of the text `needle` in the text `hay` (0: absent).
    pub(crate) fn position(self, hay: &str, needle: &str) -> String {
        match self {
            Dialect::Sqlite => format!("instr({hay}, {needle})"),
            Dialect::Postgres => format!("strpos({hay}, {needle})"),
        }
    }

    /// SQL that is true when the text `needle` occurs in the text `hay` (both SQL expressions).
    pub(crate) fn contains(self, hay: &str, needle: &str) -> String {
        format!("{} > 0", self.position(hay, needle))
    }

    /// The member `key` of the JSON object in the text column `column`, as text (NULL when absent).
    pub(crate) fn json_text(self, column: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({column}, '$.{key}')"),
            Dialect::Postgres => format!("({column}::jsonb ->> '{key}')"),
        }
    }

    /// The aggregate joining the texts `expr` with the unit separator (0x1f), see `persons::split_ids`.
    pub(crate) fn concat_ids(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("group_concat({expr}, char(31))"),
            Dialect::Postgres => format!("string_agg({expr}, chr(31))"),
        }
    }
}

/// A write transaction on either backend (see [`Store::write_tx`]).
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    pub(crate) async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// A pooled connection on either backend (several reads on one connection).
pub(crate) enum Conn {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// A borrowed connection of either backend: what [`on_conn!`] runs a statement on.
pub(crate) enum Ex<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

/// Something statements can run on: a transaction or a pooled connection.
pub(crate) trait AsEx {
    fn ex(&mut self) -> Ex<'_>;
}

impl AsEx for Tx {
    fn ex(&mut self) -> Ex<'_> {
        match self {
            Tx::Sqlite(t) => Ex::Sqlite(t),
            Tx::Postgres(t) => Ex::Postgres(t),
        }
    }
}

impl AsEx for Conn {
    fn ex(&mut self) -> Ex<'_> {
        match self {
            Conn::Sqlite(c) => Ex::Sqlite(c),
            Conn::Postgres(c) => Ex::Postgres(c),
        }
    }
}

/// Runs `$body` with `$c` bound to the store's pool, once written and compiled per backend: the same SQL text
/// (`$1` placeholders, which both drivers bind) goes to SQLite or PostgreSQL.
macro_rules! on_pool {
    ($store:expr, |$c:ident| $body:expr) => {
        match $store.backend() {
            $crate::Backend::Sqlite($c) => $body,
            $crate::Backend::Postgres($c) => $body,
        }
    };
}

/// [`on_pool!`] for a transaction or connection (`&mut` something implementing [`AsEx`]).
macro_rules! on_conn {
    ($x:expr, |$c:ident| $body:expr) => {
        match $crate::AsEx::ex($x) {
            $crate::Ex::Sqlite($c) => $body,
            $crate::Ex::Postgres($c) => $body,
        }
    };
}
pub(crate) use {on_conn, on_pool};

/// `sql` with its bare `?` placeholders numbered `$1, $2, …` in order (for statements assembled at run time
/// from pieces; the text must hold no other `?`).
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// `$from, $from+1, …` (`n` placeholders), for `IN (…)` lists.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Deleted and overwritten content is zeroed inside the pages written anyway (no extra I/O), so an
            // update or delete leaves no old copy of a row in the page's free space (GDPR erasure sets `ON`, which
            // also clears pages it frees).
            .pragma("secure_delete", "FAST");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            backend: Backend::Sqlite(pool),
            path: Some(Arc::new(path.to_owned())),
            node: None,
            identity_epoch: Arc::default(),
        })
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host:port/database`) and applies
    /// pending migrations. Several nodes may share the database; migrations take PostgreSQL's advisory lock.
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("flywheel");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        PG_MIGRATOR.run(&pool).await?;
        Ok(Self {
            backend: Backend::Postgres(pool),
            path: None,
            node: None,
            identity_epoch: Arc::default(),
        })
    }

    /// Opens the metadata store a URL names: `postgres://…` (or `postgresql://…`) connects to PostgreSQL,
    /// anything else is taken as a path to a SQLite file.
    pub async fn open_url(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            Self::open(Path::new(url.strip_prefix("sqlite://").unwrap_or(url))).await
        }
    }

    /// This store as seen by the node `node`: intake consumers' checkpoints (`checkpoint`, `set_checkpoint`, the
    /// identity writer's) are that node's, since each node has its own intake log and positions in it.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The checkpoint row of `consumer` (scoped to the node when there is one).
    pub(crate) fn consumer_key(&self, consumer: &str) -> String {
        match &self.node {
            Some(node) => format!("{consumer}@{node}"),
            None => consumer.to_owned(),
        }
    }

    /// True on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// True when the storage answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        on_pool!(self, |c| sqlx::query("SELECT 1").execute(c).await.is_ok())
    }

    /// The LSN up to which `consumer` has applied the intake log (0 when it never ran).
    pub async fn checkpoint(&self, consumer: &str) -> Result<u64> {
        let lsn: Option<i64> = on_pool!(self, |c| sqlx::query_scalar(
            "SELECT lsn FROM intake_checkpoints WHERE consumer = $1"
        )
        .bind(self.consumer_key(consumer))
        .fetch_optional(c)
        .await)?;
        Ok(lsn.unwrap_or(0) as u64)
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// SQLite's pool (`None` on PostgreSQL).
    pub(crate) fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(p) => Some(p),
            Backend::Postgres(_) => None,
        }
    }

    /// SQLite's file, for the direct (rusqlite) connections; an error on PostgreSQL.
    pub(crate) fn sqlite_path(&self) -> Result<PathBuf> {
        self.path
            .as_deref()
            .cloned()
            .ok_or_else(|| StoreError::Task("a SQLite-only reader was called on PostgreSQL".into()))
    }

    /// A connection of the pool, for several reads in a row.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
            Backend::Postgres(p) => Conn::Postgres(p.acquire().await?),
        })
    }

    /// Makes every identity writer of this store drop its caches before its next transaction.
    pub(crate) fn invalidate_identity_caches(&self) {
        self.identity_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction
    /// that reads and then writes fails at once with `SQLITE_BUSY` (no waiting) when another connection committed
    /// in between, which concurrent ingestion makes likely. On PostgreSQL the same guarantee — metadata writes
    /// never interleave, across every node sharing the database — comes from a transaction-scoped advisory lock
    /// taken first, so read-then-write sequences (version checks, next ids, cursors) keep SQLite's semantics.
    pub(crate) async fn write_tx(&self) -> Result<Tx> {
        Ok(match &self.backend {
            Backend::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres(p) => {
                let mut t = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(WRITE_LOCK)
                    .execute(&mut *t)
                    .await?;
                Tx::Postgres(t)
            }
        })
    }
}

/// An exclusive right shared by every node of the database (see [`Store::session_lock`]). Give it back with
/// [`SessionLock::release`]; dropped instead, its connection is closed, which frees the lock too.
pub struct SessionLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

impl SessionLock {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the session frees its advisory locks.
            drop(conn.detach());
        }
    }
}

/// The advisory lock key of bootstrapping an empty database ("boot").
const BOOTSTRAP_LOCK: i64 = 0x626f_6f74;

impl Store {
    /// The advisory lock `key` held on a connection kept for the lock's life, so that a node that dies frees it with
    /// its connection. `wait`: block until it is free; otherwise `None` when another session holds it. On SQLite (one
    /// node, whose writes are serialized anyway) always granted at once.
    pub async fn session_lock(&self, key: i64, wait: bool) -> Result<Option<SessionLock>> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(Some(SessionLock { conn: None, key }));
        };
        let mut conn = pool.acquire().await?;
        let locked = if wait {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await?;
            true
        } else {
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?
        };
        Ok(locked.then_some(SessionLock {
            conn: Some(conn),
            key,
        }))
    }

    /// Creates the first organization and project when the database is empty (`None` when it is not). Nodes
    /// starting together on an empty PostgreSQL take turns: exactly one bootstraps.
    pub async fn bootstrap_if_empty(
        &self,
        organization: &str,
        project: &str,
    ) -> Result<Option<Bootstrap>> {
        let lock = self.session_lock(BOOTSTRAP_LOCK, true).await?;
        let result = match self.is_empty().await {
            Ok(true) => self.bootstrap(organization, project).await.map(Some),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        };
        if let Some(lock) = lock {
            lock.release().await;
        }
        result
    }
}

/// The advisory lock key of metadata write transactions on PostgreSQL ("flywheel" in ASCII).
const WRITE_LOCK: i64 = 0x666c_7977_6865_656c;

/// Current time as stored: RFC 3339 with microseconds, UTC, lexicographically ordered.
pub(crate) fn now_text() -> String {
    time_text(chrono::Utc::now())
}

pub(crate) fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
