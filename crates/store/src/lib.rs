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
mod users;
mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use cohorts::{CohortRecord, CohortUpdate};
pub use documents::{Document, DocumentUpdate, OutboxEntry};
pub use features::{
    json_diff, Actor, AuditEntry, AuditFilter, EnvironmentRecord, FeatureRecord, SavedGroupRecord,
    SdkBinding, SdkConnection, WriteError, SDK_KEY_PREFIX,
};
pub use gdpr::{ErasureCounts, ErasureSubject};
pub use groups::{GroupSummary, GroupType};
pub use growth_metrics::{ConvertedInvite, GrowthInvites, InviteChannel, SentInvites};
pub use identity::{ApplyStats, IdentityChange, IdentityOp, IdentityWriter, MergeMode};
pub use invitations::{Invitation, InvitationChange, NewInvitation};
pub use keys::{Bootstrap, KeyInfo, PersonalKey};
pub use ledger::{transition_allowed, NewReward, RewardEntry};
pub use persons::{GroupMembership, IdentityRead, PersonRecord, PersonSummary};
pub use pql::PqlScore;
pub use projects::{ProjectSettings, ProjectUpdate, RetentionPolicy};
pub use referrals::{GraphEdge, GrowthEdge, NewReferral, Referral, ReferralCode, ShareLink};
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

/// The metadata store (SQLite). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The database file, for connections outside the pool (the identity writer's).
    path: Arc<PathBuf>,
    /// Bumped when rows the identity writer may have cached are deleted behind its back (GDPR erasure): it drops
    /// its caches at its next transaction.
    identity_epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a statement waits for another connection's write lock before failing with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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
            pool,
            path: Arc::new(path.to_owned()),
            identity_epoch: Arc::default(),
        })
    }

    /// True when the storage answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The LSN up to which `consumer` has applied the intake log (0 when it never ran).
    pub async fn checkpoint(&self, consumer: &str) -> Result<u64> {
        let lsn: Option<i64> =
            sqlx::query_scalar("SELECT lsn FROM intake_checkpoints WHERE consumer = ?")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await?;
        Ok(lsn.unwrap_or(0) as u64)
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every identity writer of this store drop its caches before its next transaction.
    pub(crate) fn invalidate_identity_caches(&self) {
        self.identity_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction that reads
    /// and then writes fails at once with `SQLITE_BUSY` (no waiting) when another connection committed in between,
    /// which concurrent ingestion makes likely.
    pub(crate) async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Current time as stored: RFC 3339 with microseconds, UTC, lexicographically ordered.
pub(crate) fn now_text() -> String {
    time_text(chrono::Utc::now())
}

pub(crate) fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
