//! GDPR: a person's data export, and the erasure of a person.
//!
//! `GET …/persons/{distinct_id}/export` (`?format=ndjson`, the default, or `json`) answers a downloadable archive of
//! everything Flywheel holds about the person of that distinct id: the person (properties, every distinct id, groups),
//! every event of any of their distinct ids (oldest first, from the event engine), and every row of the metadata
//! store's growth tables that names them (referrals as referee or referrer, referral codes, reward entries and
//! transitions, invitations sent or accepted, share links and visits, PQL scores). NDJSON lines are
//! `{"type": "person", …}`, `{"type": "event", …}` and `{"type": "record", "table", "row"}`. The export is audited as
//! `person.exported` with counts only (no personal data in the audit log).
//!
//! `DELETE …/persons/{distinct_id}` erases the person of that distinct id (every distinct id of theirs, the persons
//! merged into them included), in this order — each step idempotent, so a failed erasure is completed by running it
//! again (the person's record goes last, so they can still be found until then):
//!
//! 1. exposures waiting for the intake log are written, and the active WAL segment is sealed at `end`;
//! 2. the WAL is rewritten up to `end` ([`flywheel_engine::Intake::rewrite`]): the person's events go, batches keep
//!    their length and position (padded), other events of the project that mention the person (an
//!    `$invitation_accepted` naming them as the inviter…) have the mentions masked;
//! 3. once every consumer of the log is past `end` (none can still hold a pre-rewrite copy), the event tables drop
//!    the person's rows — segments written again, tail filtered — and their distinct ids
//!    ([`flywheel_engine::table::EventTables::erase`]);
//! 4. the metadata store erases the person in one transaction ([`flywheel_store::Store::erase_person`]) and audits
//!    `person.erased` with counts and an opaque erasure id only; distinct ids added in between are erased from the
//!    events too;
//! 5. derived caches are dropped: flag-evaluation person properties, insights person-property columns (and their
//!    files) and answers, sticky bucketing documents, the identity writer's cache.
//!
//! The work runs in its own task (a client that goes away does not cut it short) and its file work on the blocking
//! pool.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use flywheel_engine::rewrite::{Redactor, RewriteStats, Verdict};
use flywheel_engine::table::Erase;
use flywheel_engine::EventRef;
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/persons/{distinct_id}/export",
            get(export),
        )
        .route(
            "/api/v1/projects/{project_id}/persons/{distinct_id}",
            delete(erase),
        )
}

#[derive(serde::Deserialize)]
struct ExportParams {
    format: Option<String>,
}

async fn export(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, distinct_id)): Path<(String, String)>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let ndjson = match params.format.as_deref() {
        None | Some("ndjson") => true,
        Some("json") => false,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "person export",
                "format",
                "must be ndjson or json",
            ))
        }
    };
    state.catch_up().await;
    state.tables_catch_up().await;
    let person = state
        .store
        .person_by_distinct_id(project_id, &distinct_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no person has distinct id `{distinct_id}` in project {project_id}"
            ))
        })?;
    let number = state
        .store
        .person_numbers_for(project_id, &[distinct_id.as_str()])
        .await?
        .get(&distinct_id)
        .copied();
    let filter = flywheel_engine::table::RecentFilter {
        event: None,
        distinct_ids: Some(person.distinct_ids.clone()),
        after_us: None,
        before_us: None,
    };
    let events = match &state.clickhouse {
        // Every node's events: what ClickHouse holds, once this node shipped what it acknowledged.
        Some(reader) => {
            if let Some(spool) = &state.spool {
                spool
                    .wait_readable(
                        state.intake.committed_lsn(),
                        state.config.read_barrier_timeout,
                    )
                    .await;
            }
            flywheel_clickhouse::erase::events_of(
                &reader.client,
                &reader.db,
                project_id,
                &person.distinct_ids,
            )
            .await
            .map_err(|e| {
                tracing::warn!(project_id, error = %e, "export: ClickHouse did not answer");
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "events_unavailable",
                    "ClickHouse did not answer; retry later",
                )
                .with_retry_after(10)
            })?
            .into_iter()
            .map(|e| {
                json!({"uuid": e.uuid, "event": e.event, "distinct_id": e.distinct_id,
                       "timestamp": time_json(e.timestamp_us),
                       "properties": serde_json::from_str::<Value>(&e.properties).unwrap_or(Value::Null)})
            })
            .collect::<Vec<Value>>()
        }
        None => {
            let tables = state.tables.clone();
            let mut events =
                tokio::task::spawn_blocking(move || tables.recent(project_id, &filter, usize::MAX))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(ApiError::internal)?;
            events.reverse();
            events
                .iter()
                .map(|e| {
                    json!({
                        "uuid": uuid::Uuid::from_u128(e.uuid).to_string(),
                        "event": e.event,
                        "distinct_id": e.distinct_id,
                        "timestamp": time_json(e.timestamp_us),
                        "properties": serde_json::from_str::<Value>(&e.properties).unwrap_or(Value::Null),
                    })
                })
                .collect()
        }
    };
    let records = state
        .store
        .person_growth_records(project_id, &person.id, number, &person.distinct_ids)
        .await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    state
        .store
        .record_audit(
            project_id,
            &actor,
            "person.exported",
            "person",
            &person.id,
            &json!({"events": events.len(), "records": records.len()}),
        )
        .await?;

    let person_json = serde_json::to_value(&person).map_err(ApiError::internal)?;
    let (body, content_type, extension) = if ndjson {
        let mut out = String::new();
        let mut line = |mut v: Value, kind: &str| {
            v["type"] = json!(kind);
            out.push_str(&v.to_string());
            out.push('\n');
        };
        line(person_json, "person");
        for e in &events {
            line(e.clone(), "event");
        }
        for (table, row) in records {
            line(json!({"table": table, "row": row}), "record");
        }
        (out, "application/x-ndjson", "ndjson")
    } else {
        let records: Vec<Value> = records
            .into_iter()
            .map(|(table, row)| json!({"table": table, "row": row}))
            .collect();
        let doc = json!({"person": person_json, "events": events, "records": records});
        (doc.to_string(), "application/json", "json")
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"person-{}.{extension}\"",
        person.id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// An event's time as exported (RFC 3339, microseconds).
fn time_json(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// How long an erasure or a retention pass waits for the log's consumers to pass the sealed position.
const CONSUMERS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// The same for the consumers whose position is only known from their saved checkpoint (saved every few seconds
/// at most when they have nothing to do).
const CHECKPOINTS_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until every consumer of the intake log has processed everything up to `lsn`: after a rewrite no consumer
/// holds a batch read from a file the rewrite replaced. Fails (503, nothing in the tables or the store touched yet)
/// when identity or the insights tables are still behind after a minute — a replay after a restart — and only logs
/// when a checkpoint-saving consumer (referrals, event webhooks) is: those read each chunk with a fresh reader, so
/// only a chunk in flight during the rewrite could hold old events, and it is long done.
pub(crate) async fn wait_for_consumers(state: &AppState, lsn: u64) -> Result<(), ApiError> {
    let behind = || {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "indexing_behind",
            "events are still being indexed (a replay after a restart?); retry in a minute",
        )
        .with_retry_after(60)
    };
    for progress in [&state.identity_progress, &state.tables_progress] {
        let mut rx = progress.clone();
        let reached = tokio::time::timeout(CONSUMERS_WAIT, rx.wait_for(|done| *done >= lsn))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            return Err(behind());
        }
    }
    let started = std::time::Instant::now();
    for consumer in [
        crate::referral_consumer::CONSUMER,
        crate::event_hooks::CONSUMER,
    ] {
        loop {
            if state.store.checkpoint(consumer).await? >= lsn {
                break;
            }
            if started.elapsed() >= CHECKPOINTS_WAIT {
                tracing::warn!(
                    consumer,
                    lsn,
                    "a consumer of the intake log has not passed a rewritten position"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// What the event engine removed for an erasure.
#[derive(Debug, Default, Clone, Copy)]
struct EventCounts {
    /// Events dropped from the intake log (each stored event is there once).
    events_removed: u64,
    /// Other events of the project whose properties mentioned the person (masked).
    events_masked: u64,
    wal_segments_rewritten: usize,
    /// Rows dropped from the event tables (sealed and not).
    table_rows_removed: u64,
    table_rows_masked: u64,
    segments_rewritten: usize,
    /// Deletions of the events every node shipped to ClickHouse were issued (`--events-url`).
    clickhouse: bool,
}

/// Steps 1–3 of an erasure (see the module docs) for `distinct_ids` of `project_id`.
async fn erase_events(
    state: &AppState,
    project_id: i64,
    distinct_ids: &[String],
    person_ids: Vec<i64>,
    identifiers: &[String],
) -> Result<EventCounts, ApiError> {
    state.exposures.flush().await;
    let redactor = Redactor::new(identifiers.iter().cloned());
    let ids: std::collections::HashSet<String> = distinct_ids.iter().cloned().collect();
    let r = redactor.clone();
    let (end, wal, ()) = rewrite_log(state, project_id, (), move |(), e| {
        if ids.contains(e.distinct_id) {
            Verdict::Drop
        } else {
            r.redact(e.properties)
                .map_or(Verdict::Keep, Verdict::Properties)
        }
    })
    .await?;
    wait_for_consumers(state, end).await?;
    let erased = erase_tables(
        state,
        project_id,
        Erase {
            distinct_ids: distinct_ids.to_vec(),
            person_ids: person_ids.clone(),
            before_us: None,
            redactor: Some(redactor.clone()),
        },
    )
    .await?;
    let shipped = Shipped {
        distinct_ids,
        person_ids: &person_ids,
        identifiers,
        redactor: &redactor,
        end,
    };
    let clickhouse = erase_shipped(state, project_id, &shipped).await?;
    Ok(EventCounts {
        clickhouse,
        events_removed: wal.events_dropped,
        events_masked: wal.events_changed,
        wal_segments_rewritten: wal.segments_rewritten,
        table_rows_removed: erased.rows_removed,
        table_rows_masked: erased.rows_redacted,
        segments_rewritten: erased.segments_replaced,
    })
}

/// Seals this node's log and rewrites the project's events in it, up to the sealed end, by `verdict` (given the
/// state `s` it may learn from; other projects' events are kept unread), on the blocking pool. Returns the end, the
/// rewrite's counts and the state.
async fn rewrite_log<S: Send + 'static>(
    state: &AppState,
    project_id: i64,
    mut s: S,
    verdict: impl Fn(&mut S, &EventRef<'_>) -> Verdict + Send + 'static,
) -> Result<(u64, RewriteStats, S), ApiError> {
    let end = state
        .intake
        .seal_active()
        .await
        .map_err(ApiError::unavailable)?;
    let intake = state.intake.clone();
    let (stats, s) = tokio::task::spawn_blocking(move || {
        intake
            .rewrite(
                end,
                |summary| !summary.projects.contains_key(&project_id),
                |e| {
                    if e.project_id == project_id {
                        verdict(&mut s, e)
                    } else {
                        Verdict::Keep
                    }
                },
            )
            .map(|stats| (stats, s))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((end, stats, s))
}

/// Erases from this node's event tables (on the blocking pool).
pub(crate) async fn erase_tables(
    state: &AppState,
    project_id: i64,
    spec: Erase,
) -> Result<flywheel_engine::table::EraseStats, ApiError> {
    let tables = state.tables.clone();
    tokio::task::spawn_blocking(move || tables.erase(project_id, &spec))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// What an erasure removes from ClickHouse.
struct Shipped<'a> {
    distinct_ids: &'a [String],
    person_ids: &'a [i64],
    /// Everything that names the person (uuids of persons merged into them among them).
    identifiers: &'a [String],
    redactor: &'a Redactor,
    /// The end of this node's rewritten log.
    end: u64,
}

/// With ClickHouse (`--events-url`): once this node's shipper is past the rewritten log (nothing of theirs can be
/// in flight any more), deletes the events every node shipped of these distinct ids and their person mapping,
/// masks mentions of them in other events (the embedded engine's rules) and deletes the rows of `persons` that hold
/// their properties. Fails with 503 before the metadata is erased when ClickHouse is away, so that the erasure can
/// be retried whole (every step is idempotent).
async fn erase_shipped(
    state: &AppState,
    project_id: i64,
    shipped: &Shipped<'_>,
) -> Result<bool, ApiError> {
    let (Some(reader), Some(spool)) = (&state.clickhouse, &state.spool) else {
        return Ok(false);
    };
    let unreachable = |e: &dyn std::fmt::Display| {
        tracing::warn!(project_id, error = %e, "erasure: ClickHouse could not delete the person's events");
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "events_unavailable",
            "ClickHouse could not delete the person's events; nothing else was erased yet: retry later",
        )
        .with_retry_after(10)
    };
    if !spool
        .wait_readable(shipped.end, std::time::Duration::from_secs(60))
        .await
    {
        return Err(unreachable(&"this node's events are not all shipped yet"));
    }
    let (client, db) = (&reader.client, reader.db.as_str());
    use flywheel_clickhouse::erase;
    erase::erase_distinct_ids(client, db, project_id, shipped.distinct_ids)
        .await
        .map_err(|e| unreachable(&e))?;
    let masked = erase::mask_mentions(client, db, project_id, shipped.identifiers, |p| {
        shipped.redactor.redact(p)
    })
    .await
    .map_err(|e| unreachable(&e))?;
    erase::drop_person_history(
        client,
        db,
        project_id,
        shipped.person_ids,
        shipped.identifiers,
    )
    .await
    .map_err(|e| unreachable(&e))?;
    tracing::info!(
        project_id,
        masked,
        "erasure: ClickHouse deletions and masking issued"
    );
    Ok(true)
}

/// Applies an erasure another node announced ([`crate::erasure_sync`]): drops the events of the distinct ids whose
/// digests it names from this node's log and tables (the ids are learnt from the events themselves), and deletes
/// what this node shipped of them to ClickHouse once its shipper is past the rewritten log. Mentions inside other
/// events are not masked here (the notice does not hold the identifiers). Returns the log events dropped.
pub(crate) async fn apply_notice(
    state: &AppState,
    notice: &flywheel_store::ErasureNotice,
) -> Result<u64, ApiError> {
    let project_id = notice.project_id;
    let digests: std::collections::HashSet<String> = notice.digests.iter().cloned().collect();
    // Per distinct id seen: whether its digest is named (computed once each); and the ids found.
    type Seen = (std::collections::HashMap<String, bool>, Vec<String>);
    let (end, wal, (_, found)) = rewrite_log(
        state,
        project_id,
        Seen::default(),
        move |(known, found): &mut Seen, e| {
            let hit = match known.get(e.distinct_id) {
                Some(&hit) => hit,
                None => {
                    let hit = digests
                        .contains(&flywheel_store::erasure_digest(project_id, e.distinct_id));
                    known.insert(e.distinct_id.to_owned(), hit);
                    if hit {
                        found.push(e.distinct_id.to_owned());
                    }
                    hit
                }
            };
            if hit {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        },
    )
    .await?;
    if found.is_empty() {
        return Ok(0);
    }
    wait_for_consumers(state, end).await?;
    erase_tables(
        state,
        project_id,
        Erase {
            distinct_ids: found.clone(),
            person_ids: Vec::new(),
            before_us: None,
            redactor: None,
        },
    )
    .await?;
    let nothing = Redactor::new(Vec::new());
    let shipped = Shipped {
        distinct_ids: &found,
        person_ids: &[],
        identifiers: &[],
        redactor: &nothing,
        end,
    };
    erase_shipped(state, project_id, &shipped).await?;
    state.flags.subjects.forget_all();
    state.insights.forget_project(project_id).await;
    Ok(wal.events_dropped)
}

/// Tells the other nodes sharing the metadata store (PostgreSQL) to drop these distinct ids' events from their own
/// logs, tables and shipped rows ([`crate::erasure_sync`]). `false` on SQLite (one node) or when the notice could
/// not be written (logged; the erasure here is complete either way).
async fn announce(state: &AppState, project_id: i64, distinct_ids: &[String]) -> bool {
    if !state.store.is_postgres() {
        return false;
    }
    let announced = match crate::clickhouse_ship::node_id(&state.config.data_dir) {
        Ok(node) => state
            .store
            .announce_erasure(project_id, &node, distinct_ids)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match announced {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(project_id, error = %e, "erasure: the other nodes could not be told");
            false
        }
    }
}

async fn erase(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, distinct_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    // Its own task: neither a client that goes away nor the request timeout stops an erasure half way.
    tokio::spawn(erase_person(state, project_id, distinct_id, actor))
        .await
        .map_err(ApiError::internal)?
        .map(Json)
}

/// Erases the person of `distinct_id` (see the module docs); the answer's counts.
pub async fn erase_person(
    state: AppState,
    project_id: i64,
    distinct_id: String,
    actor: flywheel_store::Actor,
) -> Result<Value, ApiError> {
    state.catch_up().await;
    let subject = state
        .store
        .erasure_subject(project_id, &distinct_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "person_not_found",
                format!("no person has distinct id `{distinct_id}` in project {project_id}"),
            )
        })?;
    let erasure_id = uuid::Uuid::new_v4().simple().to_string();
    let identifiers = subject.identifiers();
    let mut events = erase_events(
        &state,
        project_id,
        &subject.distinct_ids,
        vec![subject.person_id],
        &identifiers,
    )
    .await?;
    // Sticky bucketing documents of their ids: out of memory (and queued saves written) before the rows go.
    state.sticky.forget_values(project_id, &identifiers);
    state.sticky.flush().await;
    let summary = json!({
        "events_removed": events.events_removed,
        "events_masked": events.events_masked,
        "table_rows_removed": events.table_rows_removed,
    });
    let (erased, counts) = state
        .store
        .erase_person(project_id, subject.person_id, &erasure_id, &actor, &summary)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "person_changed",
                "the person was merged into another one while being erased; their events are erased, \
                 erase again through the surviving person's distinct id",
            )
        })?;
    // Distinct ids that joined the person meanwhile: their events too.
    let late: Vec<String> = erased
        .distinct_ids
        .iter()
        .filter(|d| !subject.distinct_ids.contains(d))
        .cloned()
        .collect();
    if !late.is_empty() {
        let more =
            erase_events(&state, project_id, &late, Vec::new(), &erased.identifiers()).await?;
        events.events_removed += more.events_removed;
        events.events_masked += more.events_masked;
        events.table_rows_removed += more.table_rows_removed;
        events.table_rows_masked += more.table_rows_masked;
        events.wal_segments_rewritten += more.wal_segments_rewritten;
        events.segments_rewritten += more.segments_rewritten;
    }
    state.flags.subjects.forget_all();
    state.insights.forget_project(project_id).await;
    state
        .sticky
        .forget_values(project_id, &erased.identifiers());
    let nodes_notified = announce(&state, project_id, &erased.distinct_ids).await;
    tracing::info!(
        project_id,
        erasure_id,
        events_removed = events.events_removed,
        records_removed = counts.records_removed(),
        "person erased"
    );
    Ok(json!({
        "erasure_id": erasure_id,
        "distinct_ids": erased.distinct_ids.len(),
        "merged_persons": erased.merged_uuids.len(),
        "events_removed": events.events_removed,
        "events_masked": events.events_masked,
        "table_rows_removed": events.table_rows_removed,
        "table_rows_masked": events.table_rows_masked,
        "wal_segments_rewritten": events.wal_segments_rewritten,
        "segments_rewritten": events.segments_rewritten,
        // ClickHouse deletes in the background (a mutation); the rows are gone once it finished.
        "clickhouse_deletion_issued": events.clickhouse,
        // Shared metadata (PostgreSQL): the other nodes were told to drop the person's events they hold.
        "nodes_notified": nodes_notified,
        "records_removed": counts.records_removed(),
        "records_tombstoned": counts.records_tombstoned(),
        "tables": {"deleted": counts.deleted, "tombstoned": counts.tombstoned},
    }))
}
