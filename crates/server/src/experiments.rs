//! Experiment metrics (and, next, experiments): `…/projects/{project_id}/metrics`.
//!
//! A metric is a [`flywheel_query::experiment::Metric`] kept as a store document of kind `metric` (key unique per
//! project, versioned, archived instead of deleted, every change audited as `metric.created` / `metric.updated` /
//! `metric.archived`). Creating takes the whole definition; `PATCH` takes the fields to change (and optionally the
//! `version` it read: a stale one gets 409), merges them into the stored definition and validates the result as a
//! whole, so an update can never leave an invalid metric. The key cannot change.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use flywheel_query::experiment::parse_metric;
use flywheel_query::FieldError;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

const METRIC: &str = "metric";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/metrics",
            get(list_metrics).post(create_metric),
        )
        .route(
            "/api/v1/projects/{project_id}/metrics/{key}",
            get(get_metric).patch(patch_metric).delete(archive_metric),
        )
}

/// The API's view of a metric document: its definition's fields, then the document's.
fn metric_json(doc: &flywheel_store::Document) -> Value {
    let mut v = doc.body.clone();
    v["id"] = json!(doc.id);
    v["key"] = json!(doc.key);
    v["name"] = json!(doc.name);
    v["version"] = json!(doc.version);
    v["archived"] = json!(doc.archived);
    v["created_at"] = json!(doc.created_at);
    v["updated_at"] = json!(doc.updated_at);
    v
}

/// Fields of the API's view that are the document's, not the definition's.
const DOCUMENT_FIELDS: &[&str] = &["id", "version", "archived", "created_at", "updated_at"];

/// Validates a definition (`body` without document fields); the stored body is its normalized form.
fn definition(body: &Map<String, Value>) -> Result<(String, String, Value), ApiError> {
    let mut errors: Vec<FieldError> = body
        .keys()
        .filter(|k| DOCUMENT_FIELDS.contains(&k.as_str()))
        .map(|k| FieldError {
            field: k.clone(),
            message: "cannot be set".into(),
        })
        .collect();
    let parsed = parse_metric(&Value::Object(body.clone()));
    match parsed {
        Ok(m) if errors.is_empty() => {
            let stored = m.to_json();
            Ok((m.key, m.name, stored))
        }
        Ok(_) => Err(ApiError::validation("metric", &errors)),
        Err(es) => {
            errors.extend(
                es.into_iter()
                    .filter(|e| !DOCUMENT_FIELDS.contains(&e.field.as_str())),
            );
            Err(ApiError::validation("metric", &errors))
        }
    }
}

#[derive(serde::Deserialize)]
struct ListParams {
    archived: Option<String>,
}

async fn list_metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let archived = match params.archived.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "metric list",
                "archived",
                format!("must be true or false, not `{other}`"),
            ))
        }
    };
    let docs = state.store.documents(project_id, METRIC, archived).await?;
    Ok(Json(
        json!({"results": docs.iter().map(metric_json).collect::<Vec<_>>()}),
    ))
}

async fn metric_doc(
    state: &AppState,
    project_id: i64,
    key: &str,
) -> Result<flywheel_store::Document, ApiError> {
    state
        .store
        .document(project_id, METRIC, key)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("metric `{key}` not found in project {project_id}"))
        })
}

async fn get_metric(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    Ok(Json(metric_json(
        &metric_doc(&state, project_id, &key).await?,
    )))
}

async fn create_metric(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let (key, name, stored) = definition(&body)?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let doc = state
        .store
        .create_document(project_id, METRIC, &key, &name, &stored, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "metric"))?;
    Ok((StatusCode::CREATED, Json(metric_json(&doc))))
}

async fn patch_metric(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = metric_doc(&state, project_id, &key).await?;
    let version = match body.remove("version") {
        None => None,
        Some(v) => Some(v.as_i64().filter(|&n| n >= 1).ok_or_else(|| {
            ApiError::invalid_field(
                "metric update",
                "version",
                "must be the metric's current version (a whole number)",
            )
        })?),
    };
    if body
        .get("key")
        .is_some_and(|k| k.as_str() != Some(key.as_str()))
    {
        return Err(ApiError::invalid_field(
            "metric update",
            "key",
            "cannot be changed: create a new metric (experiments name metrics by key)",
        ));
    }
    // The stored definition with the given fields replaced (`null` removes an optional field).
    let mut merged = current.body.as_object().cloned().unwrap_or_default();
    for (k, v) in body {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    let (_, name, stored) = definition(&merged)?;
    let update = flywheel_store::DocumentUpdate {
        name: Some(name),
        body: Some(stored),
        archived: None,
    };
    let actor = crate::features::actor(&caller, &headers, peer);
    let doc = state
        .store
        .update_document(project_id, METRIC, &key, version, &update, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "metric"))?;
    Ok(Json(metric_json(&doc)))
}

async fn archive_metric(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    metric_doc(&state, project_id, &key).await?;
    let update = flywheel_store::DocumentUpdate {
        archived: Some(true),
        ..Default::default()
    };
    let actor = crate::features::actor(&caller, &headers, peer);
    state
        .store
        .update_document(project_id, METRIC, &key, None, &update, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "metric"))?;
    Ok(StatusCode::NO_CONTENT)
}
