//! Accounts (groups) for the dashboard's account pages, read-only (`growth:read`, like the groups' invitations):
//!
//! - `GET …/groups?type=&search=&limit=`: the project's group types and its groups — identified ones
//!   (`$groupidentify`) and those only named by persons' events (`$groups`) — of `type` when given, whose key or
//!   `name` property contains `search` (case-insensitive), by most members; `limit` 1–1000 (default 50).
//! - `GET …/groups/{group_type}/{group_key}`: one group with its properties and member count, and its newest
//!   members (`members_limit` 1–1000, default 100) with their distinct ids. 404 when the group is unknown.
//! - `GET …/invitations?status=&before_id=&limit=`: invitations to every account of the project, newest first
//!   (`status`: `pending`, `accepted`, `revoked` or `expired`; `before_id` pages; `limit` 1–1000, default 100).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::experiments::{bounded_param, limit_param};
use crate::state::AppState;

const STATUSES: &[&str] = &["pending", "accepted", "revoked", "expired"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{project_id}/groups", get(list_groups))
        .route(
            "/api/v1/projects/{project_id}/groups/{group_type}/{group_key}",
            get(one_group),
        )
        .route(
            "/api/v1/projects/{project_id}/invitations",
            get(list_invitations),
        )
}

#[derive(serde::Deserialize)]
struct ListParams {
    #[serde(rename = "type")]
    group_type: Option<String>,
    search: Option<String>,
    limit: Option<i64>,
}

async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let limit = limit_param(params.limit, 50, "group list")?;
    let search = crate::person_search::search_text("group list", params.search.as_deref())?;
    let group_type = params.group_type.as_deref().filter(|t| !t.is_empty());
    // Groups named by events accepted before this request are in the store.
    state.catch_up().await;
    let types = state.store.group_types(project_id).await?;
    if let Some(t) = group_type {
        if !types.iter().any(|x| x.group_type == t) {
            let known: Vec<&str> = types.iter().map(|x| x.group_type.as_str()).collect();
            return Err(ApiError::invalid_field(
                "group list",
                "type",
                if known.is_empty() {
                    format!("`{t}` is not a group type of this project (it has none yet)")
                } else {
                    format!(
                        "`{t}` is not a group type of this project (it has: {})",
                        known.join(", ")
                    )
                },
            ));
        }
    }
    let groups = state
        .store
        .search_groups(project_id, group_type, search, limit as u32)
        .await?;
    Ok(Json(json!({
        "group_types": types,
        "type": group_type,
        "search": search,
        "limit": limit,
        "results": groups,
    })))
}

#[derive(serde::Deserialize)]
struct OneParams {
    members_limit: Option<i64>,
}

async fn one_group(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, group_type, group_key)): Path<(String, String, String)>,
    Query(params): Query<OneParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let members_limit = bounded_param("group", "members_limit", params.members_limit, 100, 1000)?;
    state.catch_up().await;
    let Some(group) = state
        .store
        .group(project_id, &group_type, &group_key)
        .await?
    else {
        return Err(ApiError::not_found(format!(
            "no group `{group_key}` of type `{group_type}` in this project"
        )));
    };
    let members = state
        .store
        .group_members(project_id, &group_type, &group_key, members_limit as u32)
        .await?;
    let mut out = serde_json::to_value(&group).map_err(ApiError::internal)?;
    out["member_list"] = json!(members);
    Ok(Json(out))
}

#[derive(serde::Deserialize)]
struct InvitationParams {
    status: Option<String>,
    before_id: Option<i64>,
    limit: Option<i64>,
}

async fn list_invitations(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<InvitationParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let limit = limit_param(params.limit, 100, "invitation list")?;
    let status = params.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(ApiError::invalid_field(
                "invitation list",
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let list = state
        .store
        .project_invitations(project_id, status, params.before_id, limit as u32)
        .await?;
    let next_before = (list.len() as i64 == limit)
        .then(|| list.last().map(|i| i.id))
        .flatten();
    Ok(Json(json!({
        "status": status,
        "results": list,
        "next_before_id": next_before,
    })))
}
