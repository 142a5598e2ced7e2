//! Organizations, their projects, members and team invitations (see [`crate::auth`] for roles).
//!
//! - `GET /api/v1/organizations`: the caller's organizations; `POST` `{"name"}` makes one with the signed-in user as
//!   its owner.
//! - `GET /api/v1/organizations/{org}`: the organization and the caller's role in it.
//! - `GET …/projects`: the projects the caller may open; `POST` `{"name"}` (admin) makes one and answers its public
//!   SDK key (shown once).
//! - `GET …/members`; `PATCH …/members/{user_id}` `{"role", "projects"}` (admin; only an owner touches owners);
//!   `DELETE …/members/{user_id}` (admin, or anyone leaving) — their keys in the organization are revoked. The last
//!   owner can neither leave nor be demoted.
//! - `GET/POST …/invitations` `{"email", "role", "projects"?, "expires_in_days"?}` (admin; an owner invites owners)
//!   answers the token once; `DELETE …/invitations/{id}` revokes a pending one.
//! - `GET …/audit` (admin): the organization's audit log, newest first (`limit`, `before` an id).

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch};
use axum::{Json, Router};
use flywheel_query::FieldError;
use flywheel_store::MemberError;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/organizations",
            get(list_organizations).post(create_organization),
        )
        .route("/api/v1/organizations/{org_id}", get(get_organization))
        .route(
            "/api/v1/organizations/{org_id}/projects",
            get(list_projects).post(create_project),
        )
        .route("/api/v1/organizations/{org_id}/members", get(list_members))
        .route(
            "/api/v1/organizations/{org_id}/members/{user_id}",
            patch(update_member).delete(remove_member),
        )
        .route(
            "/api/v1/organizations/{org_id}/invitations",
            get(list_invitations).post(invite),
        )
        .route(
            "/api/v1/organizations/{org_id}/invitations/{id}",
            delete(revoke_invitation),
        )
        .route("/api/v1/organizations/{org_id}/audit", get(audit))
}

fn parse_id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::bad_request("invalid_id", format!("{what} id `{raw}` is not a number"))
    })
}

fn needs(role: Role, at_least: Role, what: &str) -> Result<(), ApiError> {
    if role >= at_least {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_role",
            format!(
                "your role `{}` cannot {what}; it needs `{}` or above",
                role.as_str(),
                at_least.as_str()
            ),
        ))
    }
}

/// The organization of the path and the caller's role in it.
async fn context(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<(i64, Role, Option<flywheel_store::Membership>), ApiError> {
    let org = parse_id("organization", raw)?;
    let (role, membership) = caller.organization_role(state, org).await?;
    if state.store.organization(org).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "organization_not_found",
            format!("organization {org} does not exist or you are not a member of it"),
        ));
    }
    Ok((org, role, membership))
}

async fn list_organizations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut results = Vec::new();
    match caller.user_id {
        Some(user_id) => {
            for m in state.store.memberships_of(user_id).await? {
                if caller
                    .key
                    .as_ref()
                    .is_none_or(|k| k.organization_id == m.organization_id)
                {
                    results.push(json!({"id": m.organization_id, "name": m.organization_name,
                                        "role": m.role}));
                }
            }
        }
        None => {
            if let Some(k) = &caller.key {
                let (role, _) = caller.organization_role(&state, k.organization_id).await?;
                if let Some(o) = state.store.organization(k.organization_id).await? {
                    results.push(json!({"id": o.id, "name": o.name, "role": role.as_str()}));
                }
            }
        }
    }
    Ok(Json(json!({"results": results})))
}

fn name_field(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> String {
    match body.get("name").and_then(Value::as_str).map(str::trim) {
        Some(n) if !n.is_empty() && n.chars().count() <= 200 => n.to_owned(),
        _ => {
            errors.push(FieldError {
                field: "name".into(),
                message: "is required: text of 1 to 200 characters".into(),
            });
            String::new()
        }
    }
}

async fn create_organization(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(user_id) = caller.user_id.filter(|_| caller.key.is_none()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "creating an organization needs a signed-in user, not an API key",
        ));
    };
    let mut errors = crate::experiments::unknown_fields(&body, &["name"]);
    let name = name_field(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("organization", &errors));
    }
    let actor = caller.actor(&headers, peer);
    let id = state
        .store
        .create_organization_for(&name, user_id, &actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": name, "role": "owner"})),
    ))
}

async fn get_organization(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    let o = state
        .store
        .organization(org)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("organization {org} not found")))?;
    Ok(Json(
        json!({"id": o.id, "name": o.name, "created_at": o.created_at, "role": role.as_str()}),
    ))
}

async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, _, membership) = context(&state, &caller, &org).await?;
    let restricted_key = caller.key.as_ref().and_then(|k| k.project_id);
    let projects: Vec<_> = state
        .store
        .organization_projects(org)
        .await?
        .into_iter()
        .filter(|p| membership.as_ref().is_none_or(|m| m.reaches(p.id)))
        .filter(|p| restricted_key.is_none_or(|r| r == p.id))
        .collect();
    Ok(Json(json!({"results": projects})))
}

async fn create_project(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "create projects")?;
    let mut errors = crate::experiments::unknown_fields(&body, &["name"]);
    let name = name_field(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("project", &errors));
    }
    let (id, api_key) = state.store.create_project(org, &name).await?;
    let actor = caller.actor(&headers, peer);
    state
        .store
        .record_org_audit(
            org,
            &actor,
            "project.created",
            "project",
            &id.to_string(),
            Some(&json!({"name": name})),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "organization_id": org, "name": name, "api_key": api_key})),
    ))
}

fn member_json(m: &flywheel_store::Membership) -> Value {
    json!({"user_id": m.user_id, "email": m.email, "name": m.name, "role": m.role,
           "projects": m.projects, "joined_at": m.created_at})
}

async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, _, _) = context(&state, &caller, &org).await?;
    let members = state.store.members(org).await?;
    Ok(Json(
        json!({"results": members.iter().map(member_json).collect::<Vec<_>>()}),
    ))
}

/// Reads `role` (required or optional) and `projects` (a list of the organization's project ids, or null for all).
async fn role_and_projects(
    state: &AppState,
    org: i64,
    body: &Map<String, Value>,
    role_required: bool,
    errors: &mut Vec<FieldError>,
) -> Result<(Option<Role>, Option<Option<Vec<i64>>>), ApiError> {
    let role = match body.get("role") {
        None if !role_required => None,
        Some(Value::String(r)) if Role::parse(r).is_some() => Role::parse(r),
        _ => {
            errors.push(FieldError {
                field: "role".into(),
                message: "must be one of owner, admin, member, viewer".into(),
            });
            None
        }
    };
    let projects = match body.get("projects") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 1000 => {
            let known: Vec<i64> = state
                .store
                .organization_projects(org)
                .await?
                .iter()
                .map(|p| p.id)
                .collect();
            let mut ids = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v.as_i64() {
                    Some(id) if known.contains(&id) => {
                        if !ids.contains(&id) {
                            ids.push(id)
                        }
                    }
                    _ => errors.push(FieldError {
                        field: format!("projects[{i}]"),
                        message: format!("`{v}` is not a project of organization {org}"),
                    }),
                }
            }
            Some(Some(ids))
        }
        Some(_) => {
            errors.push(FieldError {
                field: "projects".into(),
                message: "must be a list of 1 to 1000 project ids, or null for every project"
                    .into(),
            });
            None
        }
    };
    Ok((role, projects))
}

fn member_missing(user_id: &str, org: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "member_not_found",
        format!("user {user_id} is not a member of organization {org}"),
    )
}

fn last_owner() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "last_owner",
        "the organization would have no owner left; make someone else an owner first",
    )
}

async fn update_member(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((org, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "change members")?;
    let target = parse_id("user", &user_id)?;
    let current = state
        .store
        .membership(org, target)
        .await?
        .ok_or_else(|| member_missing(&user_id, org))?;
    let mut errors = crate::experiments::unknown_fields(&body, &["role", "projects"]);
    let (new_role, projects) = role_and_projects(&state, org, &body, false, &mut errors).await?;
    if !errors.is_empty() {
        return Err(ApiError::validation("member", &errors));
    }
    let new_role = new_role
        .or(Role::parse(&current.role))
        .unwrap_or(Role::Viewer);
    if (current.role == "owner" || new_role == Role::Owner) && role < Role::Owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_role",
            "only an owner can make or change owners",
        ));
    }
    let projects = projects.unwrap_or(current.projects.clone());
    let actor = caller.actor(&headers, peer);
    match state
        .store
        .update_member(org, target, new_role.as_str(), projects.as_deref(), &actor)
        .await?
    {
        Ok(m) => Ok(Json(member_json(&m))),
        Err(MemberError::LastOwner) => Err(last_owner()),
        Err(_) => Err(member_missing(&user_id, org)),
    }
}

async fn remove_member(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((org, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    let target = parse_id("user", &user_id)?;
    let leaving = caller.user_id == Some(target);
    if !leaving {
        needs(role, Role::Admin, "remove members")?;
    }
    let current = state
        .store
        .membership(org, target)
        .await?
        .ok_or_else(|| member_missing(&user_id, org))?;
    if current.role == "owner" && role < Role::Owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_role",
            "only an owner can remove an owner",
        ));
    }
    let actor = caller.actor(&headers, peer);
    match state.store.remove_member(org, target, &actor).await? {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(MemberError::LastOwner) => Err(last_owner()),
        Err(_) => Err(member_missing(&user_id, org)),
    }
}

async fn list_invitations(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "see invitations")?;
    let now = state
        .clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let results: Vec<Value> = state
        .store
        .team_invitations(org)
        .await?
        .into_iter()
        .map(|i| {
            let status = if i.accepted_at.is_some() {
                "accepted"
            } else if i.revoked_at.is_some() {
                "revoked"
            } else if i.expires_at <= now {
                "expired"
            } else {
                "pending"
            };
            let mut v = json!(i);
            v["status"] = status.into();
            v
        })
        .collect();
    Ok(Json(json!({"results": results})))
}

async fn invite(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "invite members")?;
    let mut errors = crate::experiments::unknown_fields(
        &body,
        &["email", "role", "projects", "expires_in_days"],
    );
    let email = match body
        .get("email")
        .and_then(Value::as_str)
        .and_then(crate::auth::parse_email)
    {
        Some(e) => e,
        None => {
            errors.push(FieldError {
                field: "email".into(),
                message: "is required: an email address".into(),
            });
            String::new()
        }
    };
    let (new_role, projects) = role_and_projects(&state, org, &body, true, &mut errors).await?;
    let days = match body.get("expires_in_days") {
        None | Some(Value::Null) => 7,
        Some(v) => match v.as_i64().filter(|d| (1..=30).contains(d)) {
            Some(d) => d,
            None => {
                errors.push(FieldError {
                    field: "expires_in_days".into(),
                    message: "must be a whole number from 1 to 30".into(),
                });
                7
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("invitation", &errors));
    }
    let new_role = new_role.unwrap_or(Role::Viewer);
    if new_role == Role::Owner && role < Role::Owner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_role",
            "only an owner can invite an owner",
        ));
    }
    if let Some(user) = state.store.user_by_email(&email).await? {
        if state.store.membership(org, user.id).await?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_member",
                format!("{email} is already a member of organization {org}"),
            ));
        }
    }
    let expires = (state.clock.now() + chrono::Duration::days(days))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let actor = caller.actor(&headers, peer);
    let (invitation, token) = state
        .store
        .create_team_invitation(
            org,
            &email,
            new_role.as_str(),
            projects.flatten().as_deref(),
            &expires,
            &actor,
        )
        .await?;
    let mut v = json!(invitation);
    v["token"] = token.into();
    v["status"] = "pending".into();
    Ok((StatusCode::CREATED, Json(v)))
}

async fn revoke_invitation(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "revoke invitations")?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invitation_not_found",
            format!("organization {org} has no pending invitation `{id}`"),
        )
    };
    let n: i64 = id.parse().map_err(|_| missing())?;
    let actor = caller.actor(&headers, peer);
    if state.store.revoke_team_invitation(org, n, &actor).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing())
    }
}

#[derive(serde::Deserialize)]
struct AuditParams {
    limit: Option<String>,
    before: Option<String>,
}

async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(org): Path<String>,
    Query(q): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let (org, role, _) = context(&state, &caller, &org).await?;
    needs(role, Role::Admin, "read the organization's audit log")?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "audit query",
                    "limit",
                    "must be a whole number from 1 to 1000",
                )
            })?,
    };
    let before = q
        .before
        .as_deref()
        .map(|raw| {
            raw.parse::<i64>().map_err(|_| {
                ApiError::invalid_field("audit query", "before", "must be an entry id")
            })
        })
        .transpose()?;
    let results = state.store.org_audit(org, before, limit).await?;
    Ok(Json(json!({"results": results})))
}
