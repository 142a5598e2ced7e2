//! GDPR: a person's data export.
//!
//! `GET …/persons/{distinct_id}/export` (`?format=ndjson`, the default, or `json`) answers a downloadable archive of
//! everything Flywheel holds about the person of that distinct id: the person (properties, every distinct id, groups),
//! every event of any of their distinct ids (oldest first, from the event engine), and every row of the metadata
//! store's growth tables that names them (referrals as referee or referrer, referral codes, reward entries and
//! transitions, invitations sent or accepted, share links and visits, PQL scores). NDJSON lines are
//! `{"type": "person", …}`, `{"type": "event", …}` and `{"type": "record", "table", "row"}`. The export is audited as
//! `person.exported` with counts only (no personal data in the audit log).

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/projects/{project_id}/persons/{distinct_id}/export",
        get(export),
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
    let tables = state.tables.clone();
    let mut events =
        tokio::task::spawn_blocking(move || tables.recent(project_id, &filter, usize::MAX))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    events.reverse();
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

    let event_json = |e: &flywheel_engine::table::StoredEvent| {
        json!({
            "uuid": uuid::Uuid::from_u128(e.uuid).to_string(),
            "event": e.event,
            "distinct_id": e.distinct_id,
            "timestamp": chrono::DateTime::from_timestamp_micros(e.timestamp_us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            "properties": serde_json::from_str::<Value>(&e.properties).unwrap_or(Value::Null),
        })
    };
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
            line(event_json(e), "event");
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
        let doc = json!({"person": person_json, "events": events.iter().map(event_json).collect::<Vec<_>>(),
                         "records": records});
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
