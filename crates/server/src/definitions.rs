//! The native API of a kind of definition document: list, get, create, update (with optimistic concurrency), archive,
//! and its versions with their diffs (from the audit log, which keeps every version). One set of handlers serves
//! every kind that needs nothing more (trials, PQL models).
//!
//! - `GET {path}` (`?archived=true` for the archived ones), `POST {path}`;
//! - `GET|PATCH|DELETE {path}/{key}` (`PATCH` replaces the given fields; `version` makes it conditional);
//! - `GET {path}/{key}/versions`: every version, oldest first, each with the fields changed from the one before;
//! - `GET {path}/{key}/diff?from=&to=`: the fields changed between two versions.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_query::FieldError;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::experiments::{
    archive_document, archived_param, create_definition, definition_without_state, document,
    document_json, merge, same_key, save_definition, take_version, ListParams,
};
use crate::state::AppState;

/// A validated definition: its key, name and normalised body; or the problems by field.
pub(crate) type Parsed = Result<(String, String, Value), Vec<FieldError>>;

/// A kind of definition document.
pub(crate) struct Kind {
    /// The documents' kind (also the audit entity type).
    pub kind: &'static str,
    /// How errors name one ("PQL model").
    pub what: &'static str,
    /// Validates a definition: its key, name and normalised body.
    pub parse: fn(&Value) -> Parsed,
    /// Called after every change (e.g. to wake a worker).
    pub changed: fn(&AppState),
}

/// The routes of `kind` under `path` (`/api/v1/projects/{project_id}/…`).
pub(crate) fn routes(path: &str, kind: &'static Kind) -> Router<AppState> {
    Router::new()
        .route(
            path,
            get(
                move |s: State<AppState>, c: Caller, p: Path<String>, q: Query<ListParams>| {
                    list(kind, s, c, p, q)
                },
            )
            .post(
                move |s: State<AppState>,
                      peer: ConnectInfo<std::net::SocketAddr>,
                      h: HeaderMap,
                      c: Caller,
                      p: Path<String>,
                      b: JsonBody<Map<String, Value>>| {
                    create(kind, s, peer, h, c, p, b)
                },
            ),
        )
        .route(
            &format!("{path}/{{key}}"),
            get(
                move |s: State<AppState>, c: Caller, p: Path<(String, String)>| {
                    get_one(kind, s, c, p)
                },
            )
            .patch(
                move |s: State<AppState>,
                      peer: ConnectInfo<std::net::SocketAddr>,
                      h: HeaderMap,
                      c: Caller,
                      p: Path<(String, String)>,
                      b: JsonBody<Map<String, Value>>| {
                    patch(kind, s, peer, h, c, p, b)
                },
            )
            .delete(
                move |s: State<AppState>,
                      peer: ConnectInfo<std::net::SocketAddr>,
                      h: HeaderMap,
                      c: Caller,
                      p: Path<(String, String)>| archive(kind, s, peer, h, c, p),
            ),
        )
        .route(
            &format!("{path}/{{key}}/versions"),
            get(
                move |s: State<AppState>, c: Caller, p: Path<(String, String)>| {
                    versions(kind, s, c, p)
                },
            ),
        )
        .route(
            &format!("{path}/{{key}}/diff"),
            get(
                move |s: State<AppState>,
                      c: Caller,
                      p: Path<(String, String)>,
                      q: Query<DiffParams>| diff(kind, s, c, p, q),
            ),
        )
}

fn definition(kind: &Kind, body: &Map<String, Value>) -> Result<(String, String, Value), ApiError> {
    definition_without_state(body, kind.what, &[], "", kind.parse)
}

async fn list(
    kind: &'static Kind,
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let archived = archived_param(&params, &format!("{} list", kind.what))?;
    let docs = state
        .store
        .documents(project_id, kind.kind, archived)
        .await?;
    Ok(Json(
        json!({"results": docs.iter().map(document_json).collect::<Vec<_>>()}),
    ))
}

async fn get_one(
    kind: &'static Kind,
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    Ok(Json(document_json(
        &document(&state, project_id, kind.kind, &key).await?,
    )))
}

async fn create(
    kind: &'static Kind,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let (key, name, body) = definition(kind, &body)?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let created = create_definition(
        &state, project_id, kind.kind, &key, &name, &body, &actor, kind.what,
    )
    .await?;
    (kind.changed)(&state);
    Ok(created)
}

async fn patch(
    kind: &'static Kind,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = document(&state, project_id, kind.kind, &key).await?;
    let version = take_version(&mut body, kind.what)?;
    same_key(&body, &key, kind.what)?;
    let (_, name, body) = definition(kind, &merge(&current.body, body))?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let saved = save_definition(
        &state, project_id, kind.kind, &key, version, name, body, &actor, kind.what,
    )
    .await?;
    (kind.changed)(&state);
    Ok(saved)
}

async fn archive(
    kind: &'static Kind,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let archived = archive_document(&state, project_id, kind.kind, &key, None, &actor).await?;
    (kind.changed)(&state);
    Ok(archived)
}

/// Every version of a document from the audit log, oldest first: (version, name, body, actor, at).
pub(crate) async fn version_history(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
) -> Result<Vec<(i64, Value, String, String)>, ApiError> {
    // Definitions change by hand: the newest 1,000 changes are plenty (the audit log answers newest first).
    let filter = flywheel_store::AuditFilter {
        entity_type: Some(kind.to_owned()),
        entity_id: Some(key.to_owned()),
        limit: 1000,
        ..Default::default()
    };
    let mut out: Vec<(i64, Value, String, String)> = Vec::new();
    for entry in state.store.audit(project_id, &filter).await? {
        let Some(after) = &entry.after else { continue };
        let Some(version) = after.get("version").and_then(Value::as_i64) else {
            continue;
        };
        if out.iter().any(|(v, ..)| *v == version) {
            continue;
        }
        let view = json!({"name": after.get("name"), "body": after.get("body")});
        out.push((version, view, entry.actor, entry.at));
    }
    out.sort_by_key(|(v, ..)| *v);
    Ok(out)
}

/// The body of version `version` of a document.
pub(crate) async fn version_body(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
    version: i64,
) -> Result<Value, ApiError> {
    version_history(state, project_id, kind, key)
        .await?
        .into_iter()
        .find(|(v, ..)| *v == version)
        .map(|(_, view, ..)| view["body"].clone())
        .ok_or_else(|| ApiError::not_found(format!("{kind} `{key}` has no version {version}")))
}

fn changes(before: &Value, after: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    flywheel_store::json_diff("", before, after, &mut out);
    out
}

async fn versions(
    kind: &'static Kind,
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    document(&state, project_id, kind.kind, &key).await?;
    let history = version_history(&state, project_id, kind.kind, &key).await?;
    let mut previous = Value::Null;
    let results: Vec<Value> = history
        .into_iter()
        .map(|(version, view, actor, at)| {
            let changed = changes(&previous, &view);
            previous = view.clone();
            json!({"version": version, "name": view["name"], "body": view["body"], "actor": actor, "at": at,
                   "changes": changed})
        })
        .collect();
    Ok(Json(json!({"results": results})))
}

#[derive(serde::Deserialize)]
pub(crate) struct DiffParams {
    from: Option<String>,
    to: Option<String>,
}

async fn diff(
    kind: &'static Kind,
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<DiffParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = document(&state, project_id, kind.kind, &key).await?;
    let version = |v: Option<&str>, field: &str, default: i64| -> Result<i64, ApiError> {
        match v {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=current.version).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        &format!("{} diff", kind.what),
                        field,
                        format!("must be a version from 1 to {}", current.version),
                    )
                }),
        }
    };
    let to = version(params.to.as_deref(), "to", current.version)?;
    let from = version(params.from.as_deref(), "from", (to - 1).max(1))?;
    let history = version_history(&state, project_id, kind.kind, &key).await?;
    let find = |v: i64| {
        history
            .iter()
            .find(|(x, ..)| *x == v)
            .map(|(_, view, ..)| view.clone())
            .ok_or_else(|| ApiError::not_found(format!("{} `{key}` has no version {v}", kind.kind)))
    };
    Ok(Json(
        json!({"from": from, "to": to, "changes": changes(&find(from)?, &find(to)?)}),
    ))
}
