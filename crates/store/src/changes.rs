//! What other nodes changed, for the caches a node keeps of shared metadata (PostgreSQL only).
//!
//! A node that changes flags (features, saved groups, environments) or SDK keys announces it with PostgreSQL's
//! `NOTIFY` once the change committed; every node listens and recompiles or forgets what it cached. Notifications
//! sent while a listener is disconnected are lost, so a reconnected listener reports [`Change::Resync`], and the
//! fingerprints ([`Store::flag_fingerprints`], [`Store::key_fingerprint`]) let nodes poll as a fallback.

use std::collections::HashMap;

use crate::{on_pool, Backend, Result, Store};

/// The channel of flag changes (payload: the project id).
const FLAGS: &str = "flywheel_flags";
/// The channel of SDK key changes (no payload).
const KEYS: &str = "flywheel_keys";

/// A change announced by a node (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A project's flags changed.
    Flags(i64),
    /// SDK keys were created or revoked.
    Keys,
    /// The listener reconnected: announcements may have been missed, everything cached may be stale.
    Resync,
}

/// Receives the [`Change`]s every node announces.
pub struct ChangeListener {
    listener: sqlx::postgres::PgListener,
}

impl ChangeListener {
    /// The next change. Reconnects by itself after a lost connection (reporting [`Change::Resync`] first); an
    /// error means PostgreSQL could not be reached: wait and call again.
    pub async fn next(&mut self) -> Result<Change> {
        loop {
            let Some(n) = self.listener.try_recv().await? else {
                return Ok(Change::Resync);
            };
            match n.channel() {
                FLAGS => match n.payload().parse() {
                    Ok(project_id) => return Ok(Change::Flags(project_id)),
                    Err(_) => {
                        tracing::warn!(payload = n.payload(), "ignoring a malformed flag change")
                    }
                },
                KEYS => return Ok(Change::Keys),
                _ => {}
            }
        }
    }
}

impl Store {
    /// A listener of every node's announcements; `None` on SQLite (one node: nothing to hear).
    pub async fn change_listener(&self) -> Result<Option<ChangeListener>> {
        let Backend::Postgres(pool) = self.backend() else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen_all([FLAGS, KEYS]).await?;
        Ok(Some(ChangeListener { listener }))
    }

    /// Tells every node that a project's flags changed (after the change committed). Nothing on SQLite.
    pub async fn announce_flags(&self, project_id: i64) -> Result<()> {
        self.announce(FLAGS, &project_id.to_string()).await
    }

    /// Tells every node that SDK keys changed. Nothing on SQLite.
    pub async fn announce_keys(&self) -> Result<()> {
        self.announce(KEYS, "").await
    }

    async fn announce(&self, channel: &str, payload: &str) -> Result<()> {
        if let Backend::Postgres(pool) = self.backend() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Per project with flags, a text that changes whenever its features, saved groups or environments do.
    pub async fn flag_fingerprints(&self) -> Result<HashMap<i64, String>> {
        let mut out: HashMap<i64, String> = HashMap::new();
        for table in ["features", "saved_groups"] {
            let rows: Vec<(i64, i64, Option<String>, i64)> =
                on_pool!(self, |c| sqlx::query_as(&format!(
                    "SELECT project_id, COUNT(*), MAX(updated_at), CAST(SUM(version) AS BIGINT)
                       FROM {table} GROUP BY project_id"
                ))
                .fetch_all(c)
                .await)?;
            for (project, n, updated, versions) in rows {
                let text = out.entry(project).or_default();
                text.push_str(&format!(
                    "{table}:{n}:{}:{versions};",
                    updated.unwrap_or_default()
                ));
            }
        }
        let rows: Vec<(i64, i64, Option<String>)> = on_pool!(self, |c| {
            sqlx::query_as(
            "SELECT project_id, COUNT(*), MAX(created_at) FROM environments GROUP BY project_id"
        )
        .fetch_all(c)
        .await
        })?;
        for (project, n, created) in rows {
            out.entry(project).or_default().push_str(&format!(
                "environments:{n}:{};",
                created.unwrap_or_default()
            ));
        }
        Ok(out)
    }

    /// A text that changes whenever an SDK key is created or revoked.
    pub async fn key_fingerprint(&self) -> Result<String> {
        let (n, revoked): (i64, Option<String>) = on_pool!(self, |c| sqlx::query_as(
            "SELECT COUNT(*), MAX(revoked_at) FROM sdk_connections"
        )
        .fetch_one(c)
        .await)?;
        Ok(format!("{n}:{}", revoked.unwrap_or_default()))
    }
}
