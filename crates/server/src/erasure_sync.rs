//! Erasures done on another node, when nodes share the metadata store (PostgreSQL). An erasure rewrites the log and
//! tables of the node that ran it; the person's events captured through *other* nodes stay in those nodes' logs and
//! tables, and those not shipped yet would reach ClickHouse after its deletion. So the erasing node announces the
//! erasure (`erasure_notices`, digests of the distinct ids only) and every node polls for notices of others: it
//! drops the matching events from its own log and tables — learning the ids from its own events — and deletes what
//! it shipped of them to ClickHouse once its shipper is past the rewritten log ([`crate::gdpr::apply_notice`]).
//!
//! A node remembers the last notice it applied in its data directory (`erasure-notices`); a node starting without
//! that file begins after the newest notice (its log cannot hold events older than itself). A notice that fails
//! (ClickHouse away, tables still catching up) is retried at the next poll, before any later one.

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
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let after = match cursor {
            Some(c) => c,
            None => match state.store.last_erasure_notice().await {
                Ok(last) => {
                    save(&path, last);
                    cursor = Some(last);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "erasure sync: cannot read the notices; retrying");
                    continue;
                }
            },
        };
        let notices = match state.store.erasure_notices_after(after, 100).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "erasure sync: cannot read the notices; retrying");
                continue;
            }
        };
        for notice in notices {
            if notice.node != node {
                match crate::gdpr::apply_notice(&state, &notice).await {
                    Ok(dropped) => tracing::info!(
                        notice = notice.id,
                        project_id = notice.project_id,
                        events_dropped = dropped,
                        "erasure sync: applied another node's erasure"
                    ),
                    Err(e) => {
                        tracing::warn!(notice = notice.id, error = %e.message, "erasure sync: retrying later");
                        break;
                    }
                }
            }
            save(&path, notice.id);
            cursor = Some(notice.id);
        }
    }
}

fn save(path: &PathBuf, id: i64) {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, id.to_string()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "erasure sync: cannot save the last notice applied");
    }
}
