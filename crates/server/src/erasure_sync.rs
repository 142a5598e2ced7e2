//! Erasures done on another node, when nodes share the metadata store (PostgreSQL). An erasure rewrites the log and
//! tables of the node that ran it; the person's events captured through *other* nodes stay in those nodes' logs and
//! tables, and those not shipped yet would reach ClickHouse after its deletion. So the erasing node announces the
//! erasure (`erasure_notices`, digests of the distinct ids only) and every node polls for notices of others: it
//! drops the matching events from its own log and tables — learning the ids from its own events — and deletes what
//! it shipped of them to ClickHouse once its shipper is past the rewritten log ([`crate::gdpr::apply_notice`]).
//!
//! A node remembers the last notice it applied in its data directory (`erasure-notices`); a node starting without
//! that file begins after the newest notice (its log cannot hold events older than itself). A notice that fails
//! (ClickHouse away, tables still catching up) is retried before any later one, after 1 s, 2 s, 4 s… up to a minute.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// Runs until `stop` turns true; returns at once on SQLite (a single node erases everything itself).
pub async fn run(state: AppState, poll: Duration, mut stop: watch::Receiver<bool>) {
    if !state.store.is_postgres() {
        return;
    }
    let node = match crate::clickhouse_ship::node_id(&state.config.data_dir) {
        Ok(node) => node,
        Err(e) => {
            tracing::error!(error = %e, "erasure sync: no node id; erasures of other nodes are not applied here");
            return;
        }
    };
    let path = state.config.data_dir.join("erasure-notices");
    let mut cursor: Option<i64> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a failure (PostgreSQL or ClickHouse away, tables catching up) the next attempt waits 1 s, 2 s, 4 s… up
    // to a minute, so a long outage is one warning a minute, not one a second.
    let mut failures: u32 = 0;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
            continue;
        }
        match pass(&state, &node, &path, &mut cursor).await {
            Ok(()) => {
                failures = 0;
                retry_at = None;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait =
                    Duration::from_secs(1u64 << (failures - 1).min(6)).min(Duration::from_secs(60));
                retry_at = Some(tokio::time::Instant::now() + wait);
                tracing::warn!(error = %e, retry_in_secs = wait.as_secs(), "erasure sync: retrying later");
            }
        }
    }
}

/// Applies the notices after `cursor` (or starts the cursor at the newest notice), in order; stops at the first
/// that fails, which is retried first next time.
async fn pass(
    state: &AppState,
    node: &str,
    path: &PathBuf,
    cursor: &mut Option<i64>,
) -> Result<(), String> {
    let Some(after) = *cursor else {
        let last = state
            .store
            .last_erasure_notice()
            .await
            .map_err(|e| format!("cannot read the notices: {e}"))?;
        save(path, last);
        *cursor = Some(last);
        return Ok(());
    };
    let notices = state
        .store
        .erasure_notices_after(after, 100)
        .await
        .map_err(|e| format!("cannot read the notices: {e}"))?;
    for notice in notices {
        if notice.node != node {
            let dropped = crate::gdpr::apply_notice(state, &notice)
                .await
                .map_err(|e| format!("notice {}: {}", notice.id, e.message))?;
            tracing::info!(
                notice = notice.id,
                project_id = notice.project_id,
                events_dropped = dropped,
                "erasure sync: applied another node's erasure"
            );
        }
        save(path, notice.id);
        *cursor = Some(notice.id);
    }
    Ok(())
}

fn save(path: &PathBuf, id: i64) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, id.to_string()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "erasure sync: cannot save the last notice applied");
    }
}
