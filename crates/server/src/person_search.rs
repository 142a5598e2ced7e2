//! The person search of the web dashboard: `GET /api/v1/projects/{id}/persons?search=&limit=` (read-only,
//! `persons:read`). Without `search`, the newest persons; with it (1 to 200 characters), the persons having a distinct
//! id, or an `email` or `name` property, that contains it, case-insensitive, newest first. `limit` is 1 to 100
//! (default 25). Each result has the person's id, every distinct id, properties and creation time. Persons merged into
//! another are found through the surviving person (whose distinct ids include theirs).

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Most persons one search answers.
pub const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 25;
const MAX_SEARCH: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{project_id}/persons", get(search))
}

/// A `search` query parameter: trimmed, `None` when empty, at most 200 characters.
pub(crate) fn search_text<'a>(
    what: &str,
    raw: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    let text = raw.map(str::trim).filter(|s| !s.is_empty());
    if text.is_some_and(|s| s.chars().count() > MAX_SEARCH) {
        return Err(ApiError::invalid_field(
            what,
            "search",
            format!("must be at most {MAX_SEARCH} characters"),
        ));
    }
    Ok(text)
}

#[derive(serde::Deserialize)]
struct SearchParams {
    search: Option<String>,
    limit: Option<String>,
}

async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_field(
                    "person search",
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let needle = search_text("person search", params.search.as_deref())?;
    // Persons of events accepted before this request are in the store.
    state.catch_up().await;
    let persons = state
        .store
        .search_persons(project_id, needle, limit)
        .await?;
    Ok(Json(json!({
        "search": needle,
        "limit": limit,
        "results": persons,
    })))
}
