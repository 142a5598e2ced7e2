//! Data retention: a project with `retention_days` (project settings, migration 0022) keeps its events for that
//! many days. A pass drops every event of such a project whose timestamp is before now − N days, from the intake
//! log (sealed segments rewritten in place, each batch keeping its length and position, see
//! [`flywheel_engine::rewrite`]), from the columnar segments (a day entirely before the cutoff loses its files
//! without reading them, the day that straddles it is written again) and from the in-memory tables; newer events
//! and other projects are untouched.
//!
//! Passes run every `--retention-check-secs` (default an hour; the first one an interval after start) for every
//! project with a retention period, and on `POST …/retention/run` for one project (audited as `retention.run`;
//! scheduled passes that dropped something as `retention.applied` by `system:retention`). The intake log keeps
//! what it learned of each segment (projects, time span), so an hourly pass reads only the segments that can hold
//! events to drop. Dropped events are counted in `flywheel_retention_events_dropped_total`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use flywheel_engine::rewrite::Verdict;
use flywheel_engine::table::{Erase, DAY_US};
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::metrics_names as m;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{project_id}/retention/run", post(run_now))
}

/// What a pass dropped from one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub project_id: i64,
    pub retention_days: i64,
    /// Events before this (µs) were dropped.
    pub cutoff_us: i64,
    /// Events dropped from the intake log.
    pub events: u64,
    /// Rows dropped from the event tables.
    pub table_rows: u64,
    /// Segment files replaced or dropped.
    pub segments: usize,
}

impl Dropped {
    fn json(&self) -> Value {
        json!({
            "project_id": self.project_id,
            "retention_days": self.retention_days,
            "cutoff": chrono::DateTime::from_timestamp_micros(self.cutoff_us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            "events_removed": self.events,
            "table_rows_removed": self.table_rows,
            "segments_rewritten": self.segments,
        })
    }
}

/// One pass over the projects with a retention period (`only`: just that one). Returns what each lost.
pub async fn run_once(state: &AppState, only: Option<i64>) -> Result<Vec<Dropped>, ApiError> {
    let now_us = state.clock.now().timestamp_micros();
    let policies: HashMap<i64, (i64, i64)> = state
        .store
        .retention_policies()
        .await?
        .into_iter()
        .filter(|p| only.is_none_or(|o| o == p.project_id))
        .map(|p| {
            let cutoff = now_us.saturating_sub(p.retention_days.saturating_mul(DAY_US));
            (p.project_id, (p.retention_days, cutoff))
        })
        .collect();
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    let end = state
        .intake
        .seal_active()
        .await
        .map_err(ApiError::unavailable)?;
    let (intake, cutoffs) = (state.intake.clone(), policies.clone());
    let per_project = tokio::task::spawn_blocking(move || {
        let mut dropped: HashMap<i64, u64> = HashMap::new();
        intake
            .rewrite(
                end,
                |summary| {
                    cutoffs.iter().all(|(p, (_, cutoff))| {
                        summary
                            .projects
                            .get(p)
                            .is_none_or(|span| span.min_timestamp_us >= *cutoff)
                    })
                },
                |e| match cutoffs.get(&e.project_id) {
                    Some((_, cutoff)) if e.timestamp_us < *cutoff => {
                        *dropped.entry(e.project_id).or_default() += 1;
                        Verdict::Drop
                    }
                    _ => Verdict::Keep,
                },
            )
            .map(|_| dropped)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    crate::gdpr::wait_for_consumers(state, end).await?;
    let mut out = Vec::new();
    let mut ids: Vec<i64> = policies.keys().copied().collect();
    ids.sort_unstable();
    for project_id in ids {
        let (retention_days, cutoff_us) = policies[&project_id];
        let spec = Erase {
            before_us: Some(cutoff_us),
            ..Erase::default()
        };
        let erased = crate::gdpr::erase_tables(state, project_id, spec).await?;
        let events = per_project.get(&project_id).copied().unwrap_or(0);
        metrics::counter!(m::RETENTION_EVENTS_DROPPED).increment(events);
        // ClickHouse (`--events-url`) holds every node's events: the old ones go there too. A failure is logged and
        // the next pass tries again (the local deletion above is done either way).
        if let Some(reader) = &state.clickhouse {
            match flywheel_clickhouse::erase::delete_before(
                &reader.client,
                &reader.db,
                project_id,
                cutoff_us,
            )
            .await
            {
                Ok(n) if n > 0 => tracing::info!(
                    project_id,
                    events = n,
                    "retention: deleting old events in ClickHouse"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(project_id, error = %e, "retention: ClickHouse did not delete old events; next pass retries")
                }
            }
        }
        out.push(Dropped {
            project_id,
            retention_days,
            cutoff_us,
            events,
            table_rows: erased.rows_removed,
            segments: erased.segments_replaced,
        });
    }
    Ok(out)
}

/// Runs a pass every `interval` until shutdown.
pub async fn run(state: AppState, interval: Duration) {
    // Visible (at 0) from the first scrape.
    metrics::counter!(m::RETENTION_EVENTS_DROPPED).increment(0);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let started = std::time::Instant::now();
        match run_once(&state, None).await {
            Ok(dropped) => {
                for d in dropped.iter().filter(|d| d.events > 0 || d.table_rows > 0) {
                    tracing::info!(
                        project_id = d.project_id,
                        events = d.events,
                        table_rows = d.table_rows,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "retention: dropped old events"
                    );
                    let actor = flywheel_store::Actor {
                        label: "system:retention".into(),
                        source_ip: None,
                    };
                    if let Err(e) = state
                        .store
                        .record_audit(
                            d.project_id,
                            &actor,
                            "retention.applied",
                            "project",
                            &d.project_id.to_string(),
                            &d.json(),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "retention: the pass could not be audited");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e.message, "retention: the pass failed; retried at the next interval")
            }
        }
    }
}

/// `POST …/retention/run`: a pass for this project now.
async fn run_now(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let settings = state
        .store
        .project_settings(project_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    if settings.retention_days.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "retention_not_set",
            "the project keeps its events forever: set `retention_days` with PATCH /api/v1/projects/{id} first",
        ));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    // Its own task, like an erasure: a client that goes away does not cut a pass short.
    let task_state = state.clone();
    let dropped = tokio::spawn(async move { run_once(&task_state, Some(project_id)).await })
        .await
        .map_err(ApiError::internal)??;
    let report = dropped
        .into_iter()
        .find(|d| d.project_id == project_id)
        .map(|d| d.json())
        .unwrap_or_else(
            || json!({"project_id": project_id, "events_removed": 0, "table_rows_removed": 0}),
        );
    state
        .store
        .record_audit(
            project_id,
            &actor,
            "retention.run",
            "project",
            &project_id.to_string(),
            &report,
        )
        .await?;
    Ok(Json(report))
}
