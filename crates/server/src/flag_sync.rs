//! Keeps this node's compiled flag snapshots and SDK key cache in step with what other nodes change, when the
//! metadata is shared (PostgreSQL): changes are announced with `NOTIFY` (see `flywheel_store::Change`) and
//! heard within milliseconds; a poll of fingerprints every `poll` catches what a broken listener missed. While
//! PostgreSQL is unreachable the node keeps serving the snapshots it has.

use std::collections::HashMap;
use std::time::Duration;

use flywheel_store::{Change, ChangeListener};
use tokio::sync::watch;

use crate::state::AppState;

/// Runs until `stop` turns true; returns at once on SQLite (a single node hears its own changes).
pub async fn run(state: AppState, poll: Duration, mut stop: watch::Receiver<bool>) {
    if !state.store.is_postgres() {
        return;
    }
    let mut listener: Option<ChangeListener> = None;
    // Whether a listener ran before (a new one must catch up on what was announced in between).
    let mut listened = false;
    let mut flags: Option<HashMap<i64, String>> = None;
    let mut keys: Option<String> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            change = next(&mut listener) => match change {
                Ok(Change::Flags(project_id)) => rebuild(&state, project_id).await,
                Ok(Change::Keys) => state.flags.forget_bindings(),
                Ok(Change::Resync) => {
                    tracing::info!("flag sync: listener reconnected; recompiling every cached project");
                    resync(&state).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "flag sync: lost the change listener; polling until it is back");
                    listener = None;
                }
            },
            _ = tick.tick() => {
                if listener.is_none() {
                    match state.store.change_listener().await {
                        Ok(l) => {
                            // Whatever was announced while nobody listened (nothing before the first).
                            if listened {
                                resync(&state).await;
                            }
                            listened = l.is_some();
                            listener = l;
                        }
                        Err(e) => tracing::debug!(error = %e, "flag sync: cannot listen yet"),
                    }
                }
                poll_once(&state, &mut flags, &mut keys).await;
            }
        }
    }
}

async fn next(listener: &mut Option<ChangeListener>) -> flywheel_store::Result<Change> {
    match listener {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

/// Recompiles a project this node serves (one it never served is compiled on first use anyway), and follows its
/// running experiments (the sticky assignments kept for them).
async fn rebuild(state: &AppState, project_id: i64) {
    if let Err(e) = crate::experiments::refresh_sticky(state, project_id).await {
        tracing::warn!(project_id, error = ?e, "flag sync: reading running experiments failed");
    }
    if !state.flags.serves(project_id) {
        return;
    }
    if let Err(e) = state.flags.rebuild(&state.store, project_id).await {
        tracing::warn!(project_id, error = ?e, "flag sync: recompiling failed; serving the last snapshot");
    }
}

async fn resync(state: &AppState) {
    state.flags.forget_bindings();
    for project_id in state.flags.projects() {
        rebuild(state, project_id).await;
    }
}

/// The fallback: recompiles the served projects whose fingerprint moved, forgets SDK keys when theirs did.
async fn poll_once(
    state: &AppState,
    flags: &mut Option<HashMap<i64, String>>,
    keys: &mut Option<String>,
) {
    match state.store.flag_fingerprints().await {
        Ok(now) => {
            if let Some(before) = flags.as_ref() {
                for project_id in state.flags.projects() {
                    if before.get(&project_id) != now.get(&project_id) {
                        rebuild(state, project_id).await;
                    }
                }
            }
            *flags = Some(now);
        }
        Err(e) => tracing::debug!(error = %e, "flag sync: cannot poll flags"),
    }
    match state.store.key_fingerprint().await {
        Ok(now) => {
            if keys.as_ref().is_some_and(|k| *k != now) {
                state.flags.forget_bindings();
            }
            *keys = Some(now);
        }
        Err(e) => tracing::debug!(error = %e, "flag sync: cannot poll keys"),
    }
}
