//! Personal API keys with scopes: which native endpoints a key may call, and the endpoints that manage keys.
//!
//! A scope is `<area>:read`, `<area>:write` (which includes read) or `*`. Areas and the path segments they cover
//! (after `/api/v1/projects/{id}`): `projects` (the project itself), `features` (features, environments,
//! sdk-connections, saved-groups, evaluate), `insights` (insights, cohorts, events, dashboards), `persons` (persons, their
//! export), `experiments` (metrics, experiments, power, rollouts), `growth` (referral programs, rewards, share links,
//! growth, groups, invitations, trials, PQL models), `webhooks` (webhooks, outbox), `audit`, `keys` (api-keys).
//! GET is a read; so are the POSTs that only compute (`insights/{kind}`, `evaluate`, `power`, a PQL `backtest`).
//! A key without scopes (the bootstrap key, keys made before scopes) may do everything.
//!
//! - `GET …/api-keys`: the personal keys that reach the project (never their text);
//! - `POST …/api-keys` `{"name", "scopes"?, "expires_in_days"?}`: a key restricted to this project, shown once; a
//!   caller cannot grant a scope it does not hold;
//! - `DELETE …/api-keys/{id}`: revokes one. Creation and revocation are audited.

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use flywheel_query::FieldError;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

/// Areas and the first path segments (after the project) they cover.
pub const AREAS: &[(&str, &[&str])] = &[
    ("projects", &[""]),
    (
        "features",
        &[
            "features",
            "environments",
            "sdk-connections",
            "saved-groups",
            "evaluate",
        ],
    ),
    ("insights", &["insights", "cohorts", "events", "dashboards"]),
    ("persons", &["persons"]),
    (
        "experiments",
        &["metrics", "experiments", "power", "rollouts"],
    ),
    (
        "growth",
        &[
            "referral-programs",
            "rewards",
            "share-links",
            "growth",
            "groups",
            "invitations",
            "trials",
            "pql-models",
        ],
    ),
    ("webhooks", &["webhooks", "outbox"]),
    ("audit", &["audit"]),
    ("keys", &["api-keys"]),
];

/// Areas of organization paths (`/api/v1/organizations/{id}/…`), not of a project.
pub const ORGANIZATION_AREAS: &[&str] = &["organization"];

/// The scope a request needs, for native project and organization endpoints (`None` for anything else).
/// Under `/api/v1/organizations/{id}`, `projects` needs `projects:*` and everything else (the organization,
/// members, invitations, audit) `organization:*`.
pub fn required_scope(method: &Method, path: &str) -> Option<String> {
    let read = method == Method::GET || method == Method::HEAD;
    if path == "/api/v1/organizations" && read {
        // The caller's own organizations.
        return None;
    }
    if let Some(rest) = path.strip_prefix("/api/v1/organizations") {
        let mut segments = rest.trim_start_matches('/').split('/');
        let area = match (segments.next(), segments.next()) {
            (Some(id), Some("projects")) if !id.is_empty() => "projects",
            _ => "organization",
        };
        return Some(format!("{area}:{}", if read { "read" } else { "write" }));
    }
    let rest = path.strip_prefix("/api/v1/projects/")?;
    let mut segments = rest.split('/');
    segments.next()?; // the project id
    let first = segments.next().unwrap_or("");
    let area = AREAS
        .iter()
        .find(|(_, segs)| segs.contains(&first))
        .map_or("projects", |(a, _)| *a);
    let computes = method == Method::POST
        && (matches!(first, "insights" | "evaluate" | "power") || path.ends_with("/backtest"));
    let read = read || computes;
    Some(format!("{area}:{}", if read { "read" } else { "write" }))
}

/// Whether `scopes` (`None`: all) grant `needed`.
pub fn grants(scopes: Option<&[String]>, needed: &str) -> bool {
    let Some(scopes) = scopes else { return true };
    let (area, _) = needed.split_once(':').unwrap_or((needed, ""));
    scopes.iter().any(|s| {
        s == "*" || s == needed || (needed.ends_with(":read") && *s == format!("{area}:write"))
    })
}

fn valid_scope(s: &str) -> bool {
    s == "*"
        || s.split_once(':').is_some_and(|(area, level)| {
            (AREAS.iter().any(|(a, _)| *a == area) || ORGANIZATION_AREAS.contains(&area))
                && matches!(level, "read" | "write")
        })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/api-keys",
            get(list).post(create),
        )
        .route(
            "/api/v1/projects/{project_id}/api-keys/{id}",
            delete(revoke),
        )
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut keys = state.store.personal_keys(project_id).await?;
    // Admins see every key; others see their own.
    if let Some(user_id) = caller.user_id.filter(|_| !caller.unlimited()) {
        keys.retain(|k| k.user_id == Some(user_id));
    }
    Ok(Json(json!({"results": keys})))
}

async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors =
        crate::experiments::unknown_fields(&body, &["name", "scopes", "expires_in_days"]);
    let mut problem = |field: String, message: String| errors.push(FieldError { field, message });
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.chars().count() <= 200 => {
            n.trim().to_owned()
        }
        _ => {
            problem(
                "name".into(),
                "is required: a name of 1 to 200 characters".into(),
            );
            String::new()
        }
    };
    let mut scopes: Option<Vec<String>> = None;
    match body.get("scopes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 50 => {
            let mut list = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v.as_str() {
                    Some(s) if valid_scope(s) => {
                        if caller.may_grant(s) {
                            list.push(s.to_owned());
                        } else {
                            problem(format!("scopes[{i}]"), format!("`{s}` is not a scope you hold, so you cannot grant it"));
                        }
                    }
                    _ => problem(
                        format!("scopes[{i}]"),
                        "must be `<area>:read`, `<area>:write` or `*` (areas: organization, projects, features, insights, persons, experiments, growth, webhooks, audit, keys)".into(),
                    ),
                }
            }
            scopes = Some(list);
        }
        Some(_) => problem("scopes".into(), "must be a list of 1 to 50 scopes".into()),
    }
    // A key without scopes may do everything: only a caller that may do everything makes one.
    if scopes.is_none() && !caller.unlimited() {
        problem(
            "scopes".into(),
            "is required: you do not hold every scope, so a key you make must list its scopes"
                .into(),
        );
    }
    let expires_at = match body.get("expires_in_days") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|d| (1..=3650).contains(d)) {
            Some(days) => Some(
                (state.clock.now() + chrono::Duration::days(days as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            None => {
                problem(
                    "expires_in_days".into(),
                    "must be a whole number from 1 to 3650".into(),
                );
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("API key", &errors));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let organization_id = state
        .store
        .project_organization(project_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    let (id, key) = state
        .store
        .create_scoped_key(
            organization_id,
            Some(project_id),
            &name,
            scopes.as_deref(),
            expires_at.as_deref(),
            caller.user_id,
            &actor,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "name": name, "key": key, "project_id": project_id, "scopes": scopes,
                    "expires_at": expires_at}),
        ),
    ))
}

async fn revoke(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let missing = || {
        ApiError::not_found(format!(
            "no active API key `{id}` reaches project {project_id}"
        ))
    };
    let id: i64 = id.parse().map_err(|_| missing())?;
    let actor = crate::features::actor(&caller, &headers, peer);
    if !state
        .store
        .revoke_personal_key(
            project_id,
            id,
            caller.user_id.filter(|_| !caller.unlimited()),
            &actor,
        )
        .await?
    {
        return Err(missing());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_need_the_scope_of_their_area() {
        let p = "/api/v1/projects/1";
        for (method, path, scope) in [
            (Method::GET, format!("{p}/features"), "features:read"),
            (Method::PUT, format!("{p}/features/x"), "features:write"),
            (
                Method::POST,
                format!("{p}/insights/trends"),
                "insights:read",
            ),
            (Method::POST, format!("{p}/evaluate"), "features:read"),
            (
                Method::POST,
                format!("{p}/pql-models/m/backtest"),
                "growth:read",
            ),
            (
                Method::POST,
                format!("{p}/pql-models/m/score"),
                "growth:write",
            ),
            (Method::GET, format!("{p}/persons/a/export"), "persons:read"),
            (Method::PATCH, p.to_owned(), "projects:write"),
            (Method::DELETE, format!("{p}/api-keys/3"), "keys:write"),
        ] {
            assert_eq!(
                required_scope(&method, &path).as_deref(),
                Some(scope),
                "{method} {path}"
            );
        }
        assert_eq!(required_scope(&Method::POST, "/batch"), None);
        let s = vec!["features:write".to_owned(), "insights:read".to_owned()];
        assert!(grants(Some(&s), "features:read"));
        assert!(grants(Some(&s), "features:write"));
        assert!(grants(Some(&s), "insights:read"));
        assert!(!grants(Some(&s), "insights:write"));
        assert!(!grants(Some(&s), "growth:read"));
        assert!(grants(None, "keys:write"));
        assert!(grants(Some(&["*".to_owned()]), "keys:write"));
        assert!(
            valid_scope("growth:read") && !valid_scope("growth:admin") && !valid_scope("nope:read")
        );
    }
}
