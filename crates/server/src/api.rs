//! The native read API: events and persons of a project, for a personal API key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ops::ControlFlow;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use flywheel_store::PersonalKey;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{project_id}/events", get(list_events))
        .route(
            "/api/v1/projects/{project_id}/persons/{distinct_id}",
            get(get_person),
        )
        .route(
            "/api/v1/projects/{project_id}/insights/{kind}",
            axum::routing::post(crate::insights::post_insight),
        )
}

/// Who a native API request comes from: a personal API key (`Authorization: Bearer …`) or a signed-in user's
/// session cookie (see [`crate::auth`]). The extractor checks that the credential may do what the request asks:
/// the key's scopes, and the role the user (of the session, or who made the key) holds in the organization of
/// the project in the path. A caller without access to that project is left for [`Caller::authorize`] to answer
/// 404, so that nobody can probe which project ids exist.
pub struct Caller {
    /// The API key, when the request carries one.
    pub key: Option<PersonalKey>,
    /// The user behind the request: the session's, or the one who made the key.
    pub user_id: Option<i64>,
    /// The session, when signed in with the cookie.
    pub session: Option<crate::auth::SessionCaller>,
    /// For paths under `/api/v1/projects/{id}`: the user's role in that project's organization.
    pub role: Option<crate::auth::Role>,
    /// The path's project, once the extractor checked that the caller reaches it.
    role_project: Option<i64>,
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut caller = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let value = value.to_str().map_err(|_| {
                    ApiError::unauthorized(
                        "invalid_api_key",
                        "Authorization header is not valid text",
                    )
                })?;
                let key = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        ApiError::unauthorized(
                            "invalid_api_key",
                            "Authorization must use the Bearer scheme",
                        )
                    })?;
                let Some(k) = state.store.authenticate_personal(key).await? else {
                    return Err(ApiError::unauthorized(
                        "invalid_api_key",
                        "the personal API key is unknown, revoked or expired",
                    ));
                };
                Caller {
                    user_id: k.user_id,
                    key: Some(k),
                    session: None,
                    role: None,
                    role_project: None,
                }
            }
            None => {
                let Some(token) = crate::auth::session_token(&parts.headers) else {
                    return Err(ApiError::unauthorized(
                        "missing_api_key",
                        "missing `Authorization: Bearer <personal API key>` header (or a signed-in session)",
                    ));
                };
                let Some(session) = crate::auth::resolve_session(state, token).await? else {
                    return Err(ApiError::unauthorized(
                        "invalid_session",
                        "the session has expired or was ended; sign in again",
                    ));
                };
                let writes = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                if writes {
                    let sent = parts
                        .headers
                        .get(crate::auth::CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !crate::auth::secrets_equal(sent, &session.csrf_token) {
                        return Err(forbidden(
                            "csrf_token_invalid",
                            format!(
                                "a signed-in change needs the session's CSRF token in the `{}` header",
                                crate::auth::CSRF_HEADER
                            ),
                        ));
                    }
                }
                Caller {
                    user_id: Some(session.user_id),
                    key: None,
                    session: Some(session),
                    role: None,
                    role_project: None,
                }
            }
        };
        let path = parts.uri.path();
        let Some(needed) = crate::keys::required_scope(&parts.method, path) else {
            return Ok(caller);
        };
        if let Some(k) = &caller.key {
            if !crate::keys::grants(k.scopes.as_deref(), &needed) {
                return Err(forbidden(
                    "insufficient_scope",
                    format!("this API key lacks the scope `{needed}`"),
                ));
            }
        }
        // The project of the path: reached by the key and the user, and the user's role there (organization
        // paths check theirs in the handler). Checked before any handler reads a body, so a caller without access
        // learns nothing from validation errors.
        if let Some(project_id) = path_project(path) {
            let org = state.store.project_organization(project_id).await?;
            let key_reaches = caller.key.as_ref().is_none_or(|k| {
                org == Some(k.organization_id) && k.project_id.is_none_or(|p| p == project_id)
            });
            let membership = match (caller.user_id, org) {
                (Some(user_id), Some(org)) => state.store.membership(org, user_id).await?,
                _ => None,
            };
            caller.role = membership
                .as_ref()
                .filter(|m| m.reaches(project_id))
                .and_then(|m| crate::auth::Role::parse(&m.role));
            let user_reaches = caller.user_id.is_none() || caller.role.is_some();
            if org.is_none() || !key_reaches || !user_reaches {
                return Err(project_not_found(project_id));
            }
            if let Some(role) = caller.role.filter(|r| !r.grants(&needed)) {
                return Err(forbidden(
                    "insufficient_role",
                    format!(
                        "your role `{}` in this organization does not allow this (it needs `{needed}`)",
                        role.as_str()
                    ),
                ));
            }
            caller.role_project = Some(project_id);
        }
        Ok(caller)
    }
}

fn project_not_found(project_id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "project_not_found",
        format!("project {project_id} does not exist or you have no access to it"),
    )
}

/// The project id of a `/api/v1/projects/{id}…` path.
fn path_project(path: &str) -> Option<i64> {
    path.strip_prefix("/api/v1/projects/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

impl Caller {
    /// Refuses access to projects outside the caller's reach: a key's organization and project restriction, a
    /// user's memberships and project access. Unknown and foreign projects get the same answer, so a caller cannot
    /// probe which project ids exist.
    pub async fn authorize(&self, state: &AppState, project_id: i64) -> Result<(), ApiError> {
        // The extractor checked the path's project.
        if self.role_project == Some(project_id) {
            return Ok(());
        }
        let org = state.store.project_organization(project_id).await?;
        let key_allows = self.key.as_ref().is_none_or(|k| {
            org == Some(k.organization_id) && k.project_id.is_none_or(|p| p == project_id)
        });
        let user_allows = match (self.user_id, org) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(user_id), Some(org)) => state
                .store
                .membership(org, user_id)
                .await?
                .is_some_and(|m| m.reaches(project_id)),
        };
        if org.is_some() && key_allows && user_allows {
            Ok(())
        } else {
            Err(project_not_found(project_id))
        }
    }

    /// Whether the caller may grant `scope` to a key it makes: its key holds it and its role grants it.
    pub fn may_grant(&self, scope: &str) -> bool {
        let key_ok = self.key.as_ref().is_none_or(|k| {
            crate::keys::grants(k.scopes.as_deref(), scope) && (scope != "*" || k.scopes.is_none())
        });
        let role_ok = match (self.user_id, self.role) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(role)) => {
                if scope == "*" {
                    role.scopes().is_none()
                } else {
                    role.grants(scope)
                }
            }
        };
        key_ok && role_ok
    }

    /// Whether the caller holds every scope (a key without scopes, a user whose role grants everything).
    pub fn unlimited(&self) -> bool {
        self.may_grant("*")
    }

    /// The caller's role in an organization (organization endpoints): a user's membership; a key without a user
    /// counts as an owner of its organization when unrestricted and as a viewer when restricted to a project.
    /// Anyone else gets 404, like an organization that does not exist.
    pub async fn organization_role(
        &self,
        state: &AppState,
        organization_id: i64,
    ) -> Result<(crate::auth::Role, Option<flywheel_store::Membership>), ApiError> {
        let missing = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "organization_not_found",
                format!(
                    "organization {organization_id} does not exist or you are not a member of it"
                ),
            )
        };
        if let Some(k) = &self.key {
            if k.organization_id != organization_id {
                return Err(missing());
            }
        }
        match self.user_id {
            Some(user_id) => {
                let m = state
                    .store
                    .membership(organization_id, user_id)
                    .await?
                    .ok_or_else(missing)?;
                let role = crate::auth::Role::parse(&m.role).ok_or_else(missing)?;
                Ok((role, Some(m)))
            }
            None => match &self.key {
                Some(k) if k.project_id.is_none() => Ok((crate::auth::Role::Owner, None)),
                Some(_) => Ok((crate::auth::Role::Viewer, None)),
                None => Err(missing()),
            },
        }
    }
}

pub(crate) fn parse_project(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_project_id",
            format!("project id `{raw}` is not a number"),
        )
    })
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    event: Option<String>,
    distinct_id: Option<String>,
    person_id: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

fn parse_time(name: &str, raw: &str) -> Result<i64, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_micros());
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(t.and_utc().timestamp_micros());
    }
    Err(ApiError::bad_request(
        "invalid_query",
        format!("`{name}` must be an ISO-8601 date or time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z), got `{raw}`"),
    ))
}

/// One candidate row while scanning: ordered by timestamp, then uuid.
struct Row {
    timestamp_us: i64,
    uuid: u128,
    event: String,
    distinct_id: String,
    properties: String,
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        (self.timestamp_us, self.uuid) == (other.timestamp_us, other.uuid)
    }
}
impl Eq for Row {}
impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Row {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timestamp_us, self.uuid).cmp(&(other.timestamp_us, other.uuid))
    }
}

async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let project_id = parse_project(&project_id)?;
    caller.authorize(&state, project_id).await?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}, got `{raw}`"),
                ))
            }
        },
    };
    let after = q
        .after
        .as_deref()
        .map(|r| parse_time("after", r))
        .transpose()?;
    let before = q
        .before
        .as_deref()
        .map(|r| parse_time("before", r))
        .transpose()?;
    // The event tables answer from the newest days; while they lag behind the log (a replay after a restart),
    // the log itself is scanned instead, newest first.
    let from_tables = state.tables_catch_up().await;
    if !from_tables {
        state.catch_up().await;
    }

    let mut distinct_ids: Option<HashSet<String>> =
        q.distinct_id.clone().map(|d| HashSet::from([d]));
    if let Some(person_id) = &q.person_id {
        let ids = state
            .store
            .distinct_ids_of_person(project_id, person_id)
            .await?
            .unwrap_or_default();
        let ids: HashSet<String> = ids.into_iter().collect();
        distinct_ids = Some(match distinct_ids {
            Some(d) => d.intersection(&ids).cloned().collect(),
            None => ids,
        });
    }
    if distinct_ids.as_ref().is_some_and(HashSet::is_empty) {
        return Ok(Json(json!({"results": [], "limit": limit})));
    }

    let intake = state.intake.clone();
    let tables = state.tables.clone();
    let event_filter = q.event.clone();
    let rows = tokio::task::spawn_blocking(move || {
        if from_tables {
            let filter = flywheel_engine::table::RecentFilter {
                event: event_filter,
                distinct_ids: distinct_ids.map(|d| d.into_iter().collect()),
                after_us: after,
                before_us: before,
            };
            return Ok(tables
                .recent(project_id, &filter, limit)?
                .into_iter()
                .map(|e| Row {
                    timestamp_us: e.timestamp_us,
                    uuid: e.uuid,
                    event: e.event,
                    distinct_id: e.distinct_id,
                    properties: e.properties,
                })
                .collect());
        }
        // Newest-first top-N by timestamp; a uuid seen twice (an SDK retry) keeps its first-stored copy, which the
        // reverse scan meets last.
        let mut heap: BinaryHeap<Reverse<Row>> = BinaryHeap::with_capacity(limit + 1);
        let mut in_heap: HashMap<u128, i64> = HashMap::with_capacity(limit + 1);
        intake.scan_rev(|ev| {
            if ev.project_id != project_id
                || event_filter.as_deref().is_some_and(|e| e != ev.event)
                || distinct_ids
                    .as_ref()
                    .is_some_and(|d| !d.contains(ev.distinct_id))
                || after.is_some_and(|a| ev.timestamp_us < a)
                || before.is_some_and(|b| ev.timestamp_us >= b)
            {
                return ControlFlow::Continue(());
            }
            if let Some(ts) = in_heap.get(&ev.uuid).copied() {
                // Replace the later-stored duplicate with this earlier one.
                let mut rows: Vec<_> = std::mem::take(&mut heap).into_vec();
                rows.retain(|Reverse(r)| !(r.uuid == ev.uuid && r.timestamp_us == ts));
                heap = rows.into();
                in_heap.remove(&ev.uuid);
            }
            let full = heap.len() >= limit;
            if full
                && heap.peek().is_some_and(|Reverse(min)| {
                    (ev.timestamp_us, ev.uuid) <= (min.timestamp_us, min.uuid)
                })
            {
                return ControlFlow::Continue(());
            }
            heap.push(Reverse(Row {
                timestamp_us: ev.timestamp_us,
                uuid: ev.uuid,
                event: ev.event.to_owned(),
                distinct_id: ev.distinct_id.to_owned(),
                properties: ev.properties.to_owned(),
            }));
            in_heap.insert(ev.uuid, ev.timestamp_us);
            if heap.len() > limit {
                if let Some(Reverse(evicted)) = heap.pop() {
                    in_heap.remove(&evicted.uuid);
                }
            }
            ControlFlow::Continue(())
        })?;
        let mut rows: Vec<Row> = heap.into_iter().map(|Reverse(r)| r).collect();
        rows.sort_by(|a, b| b.cmp(a));
        Ok::<_, flywheel_engine::EngineError>(rows)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;

    let dids: Vec<&str> = {
        let mut seen = HashSet::new();
        rows.iter()
            .map(|r| r.distinct_id.as_str())
            .filter(|d| seen.insert(*d))
            .collect()
    };
    let persons = state.store.person_ids_for(project_id, &dids).await?;
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            let properties: Value =
                serde_json::from_str(&r.properties).unwrap_or_else(|_| json!({}));
            json!({
                "uuid": uuid::Uuid::from_u128(r.uuid).to_string(),
                "event": r.event,
                "distinct_id": r.distinct_id,
                "person_id": persons.get(&r.distinct_id),
                "timestamp": DateTime::<Utc>::from_timestamp_micros(r.timestamp_us)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "properties": properties,
            })
        })
        .collect();
    Ok(Json(json!({"results": results, "limit": limit})))
}

async fn get_person(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, distinct_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = parse_project(&project_id)?;
    caller.authorize(&state, project_id).await?;
    state.catch_up().await;
    match state
        .store
        .person_by_distinct_id(project_id, &distinct_id)
        .await?
    {
        Some(person) => Ok(Json(
            serde_json::to_value(person).map_err(ApiError::internal)?,
        )),
        None => Err(ApiError::not_found(format!(
            "no person has distinct id `{distinct_id}` in project {project_id}"
        ))),
    }
}

/// A JSON request body of the native API, whatever the `Content-Type` says (`curl -d` sends a form type): an empty
/// body is 400 `empty_body`, text that is not JSON 400 `invalid_json`, JSON of the wrong shape (a missing or unknown
/// field, a wrong type) 400 `invalid_body`; each message names the problem and where it is.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        if bytes.trim_ascii().is_empty() {
            return Err(ApiError::bad_request(
                "empty_body",
                "the request needs a JSON body",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let code = if e.classify() == serde_json::error::Category::Data {
                "invalid_body"
            } else {
                "invalid_json"
            };
            ApiError::bad_request(code, format!("request body: {e}"))
        })
    }
}
