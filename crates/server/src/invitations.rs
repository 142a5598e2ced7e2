//! In-product invitations to a group (an account) and domain auto-join.
//!
//! - `POST …/projects/{id}/groups/{type}/{key}/invitations` `{"email", "inviter", "role"?, "expires_in_days"?}`
//!   (role `member`, 7 days by default; `expires_in_seconds` for short-lived ones) answers the invitation with its single-use `token`, shown this once (only
//!   its SHA-256 is stored). `GET` on the same path lists the group's invitations.
//! - `POST …/invitations/{id}/resend` gives a new token and expiry (the old token stops working);
//!   `POST …/invitations/{id}/revoke` ends it.
//! - `POST …/invitations/accept` `{"token", "distinct_id"}`: the invitee joins. An unknown token is 404; a used,
//!   revoked or expired one is 410. Accepting appends an `$invitation_accepted` event for the invitee (with
//!   `$groups`, the inviter and the role), so analytics and the growth graph see the inviter → invitee edge.
//! - `PUT …/groups/{type}/{key}/domains/{domain}` (`{"role"?}`) verifies an email domain for the group (an admin's
//!   call); `POST …/invitations/auto-join` `{"distinct_id", "email"}` joins the group of the email's verified
//!   domain (404 when none) and appends `$group_auto_joined`.
//!
//! Every change is audited (`invitation.created|resent|revoked|accepted`, `group_domain.verified`).

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use flywheel_query::FieldError;
use flywheel_store::{InvitationChange, NewInvitation, WriteError};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

const DEFAULT_DAYS: u64 = 7;
const MAX_DAYS: u64 = 90;
const MAX_TEXT: usize = 320;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/groups/{group_type}/{group_key}/invitations",
            get(list).post(create),
        )
        .route(
            "/api/v1/projects/{project_id}/groups/{group_type}/{group_key}/domains/{domain}",
            put(verify_domain),
        )
        .route(
            "/api/v1/projects/{project_id}/invitations/accept",
            post(accept),
        )
        .route(
            "/api/v1/projects/{project_id}/invitations/auto-join",
            post(auto_join),
        )
        .route(
            "/api/v1/projects/{project_id}/invitations/{id}/{action}",
            post(change),
        )
}

fn token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn expiry(state: &AppState, seconds: u64) -> String {
    (state.clock.now() + chrono::Duration::seconds(seconds as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A required string field of at most [`MAX_TEXT`] characters.
fn text(body: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_TEXT => {
            Some(s.trim().to_owned())
        }
        _ => {
            errors.push(FieldError {
                field: key.into(),
                message: format!(
                    "is required: a non-empty string of at most {MAX_TEXT} characters"
                ),
            });
            None
        }
    }
}

fn unknown(body: &Map<String, Value>, known: &[&str], errors: &mut Vec<FieldError>) {
    errors.extend(crate::experiments::unknown_fields(body, known));
}

/// The domain of a plausible email address, lower case.
fn email_domain(email: &str) -> Option<String> {
    let (local, domain) = email.rsplit_once('@')?;
    let domain = domain.trim().to_lowercase();
    (!local.is_empty() && domain.contains('.') && !domain.contains(char::is_whitespace))
        .then_some(domain)
}

fn role(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> String {
    match body.get("role") {
        None | Some(Value::Null) => "member".into(),
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 50 => r.clone(),
        _ => {
            errors.push(FieldError {
                field: "role".into(),
                message: "must be a non-empty string of at most 50 characters".into(),
            });
            "member".into()
        }
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, group_type, group_key)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let list = state
        .store
        .invitations(project_id, &group_type, &group_key)
        .await?;
    Ok(Json(json!({ "results": list })))
}

async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, group_type, group_key)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = Vec::new();
    unknown(
        &body,
        &[
            "email",
            "inviter",
            "role",
            "expires_in_days",
            "expires_in_seconds",
        ],
        &mut errors,
    );
    let email = text(&body, "email", &mut errors);
    if email.as_deref().is_some_and(|e| email_domain(e).is_none()) {
        errors.push(FieldError {
            field: "email".into(),
            message: "is not an email address".into(),
        });
    }
    let inviter = text(&body, "inviter", &mut errors);
    let role = role(&body, &mut errors);
    // The lifetime: `expires_in_days` (default 7) or, for short-lived invitations, `expires_in_seconds`.
    let mut seconds = DEFAULT_DAYS * 86_400;
    for (key, unit) in [("expires_in_days", 86_400), ("expires_in_seconds", 1)] {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v
                .as_u64()
                .filter(|n| (1..=MAX_DAYS * 86_400 / unit).contains(n))
            {
                Some(n) => seconds = n * unit,
                None => errors.push(FieldError {
                    field: key.into(),
                    message: format!(
                        "must be a whole number from 1 to {} ({MAX_DAYS} days)",
                        MAX_DAYS * 86_400 / unit
                    ),
                }),
            },
        }
    }
    if body.get("expires_in_days").is_some() && body.get("expires_in_seconds").is_some() {
        errors.push(FieldError {
            field: "expires_in_seconds".into(),
            message: "give `expires_in_days` or `expires_in_seconds`, not both".into(),
        });
    }
    let (Some(email), Some(inviter)) = (email, inviter) else {
        return Err(ApiError::validation("invitation", &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("invitation", &errors));
    }
    let token = token();
    let expires_at = expiry(&state, seconds);
    let actor = crate::features::actor(&caller, &headers, peer);
    let inv = state
        .store
        .create_invitation(
            project_id,
            &NewInvitation {
                group_type: &group_type,
                group_key: &group_key,
                email: &email,
                role: &role,
                inviter: &inviter,
                token_hash: &hash(&token),
                expires_at: &expires_at,
            },
            &actor,
        )
        .await
        .map_err(|e| crate::features::write_error(e, "invitation"))?;
    let mut v = json!(inv);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

fn change_error(e: WriteError) -> ApiError {
    match e {
        WriteError::NotFound => ApiError::not_found("no such invitation (or token)"),
        WriteError::Invalid(m) => ApiError::new(StatusCode::GONE, "invitation_closed", m),
        other => crate::features::write_error(other, "invitation"),
    }
}

/// `POST …/invitations/{id}/revoke|resend`.
async fn change(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id, action)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no invitation `{id}`")))?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let token = token();
    let token_hash = hash(&token);
    let expires_at = expiry(&state, DEFAULT_DAYS * 86_400);
    let (change, new_token) = match action.as_str() {
        "revoke" => (InvitationChange::Revoke { id }, None),
        "resend" => (
            InvitationChange::Resend {
                id,
                token_hash: &token_hash,
                expires_at: &expires_at,
            },
            Some(token.clone()),
        ),
        other => {
            return Err(ApiError::not_found(format!(
                "no invitation action `{other}` (revoke, resend)"
            )))
        }
    };
    let inv = state
        .store
        .change_invitation(project_id, change, &actor)
        .await
        .map_err(change_error)?;
    let mut v = json!(inv);
    if let Some(t) = new_token {
        v["token"] = json!(t);
    }
    Ok(Json(v))
}

/// Appends an event for `distinct_id` (a server-made fact: joining a group).
pub(crate) async fn record(
    state: &AppState,
    project_id: i64,
    distinct_id: &str,
    event: &str,
    properties: Value,
) -> Result<(), ApiError> {
    let now = state.clock.now().timestamp_micros();
    let e = flywheel_engine::Event {
        uuid: uuid::Uuid::new_v4().as_u128(),
        project_id,
        timestamp_us: now,
        received_us: now,
        event: event.to_owned(),
        distinct_id: distinct_id.to_owned(),
        properties: properties.to_string(),
    };
    state
        .intake
        .append(&[e])
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

async fn accept(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = Vec::new();
    unknown(&body, &["token", "distinct_id"], &mut errors);
    let token = text(&body, "token", &mut errors);
    let who = text(&body, "distinct_id", &mut errors);
    let (Some(token), Some(who)) = (token, who) else {
        return Err(ApiError::validation("invitation", &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("invitation", &errors));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let inv = state
        .store
        .change_invitation(
            project_id,
            InvitationChange::Accept {
                token_hash: &hash(&token),
                accepted_by: &who,
            },
            &actor,
        )
        .await
        .map_err(change_error)?;
    record(
        &state,
        project_id,
        &who,
        "$invitation_accepted",
        json!({"$groups": {&inv.group_type: &inv.group_key}, "inviter": inv.inviter,
               "role": inv.role, "invitation_id": inv.id}),
    )
    .await?;
    Ok(Json(json!(inv)))
}

async fn verify_domain(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, group_type, group_key, domain)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let body = crate::experiments::optional_object(&body, "domain")?;
    let mut errors = Vec::new();
    unknown(&body, &["role"], &mut errors);
    let role = role(&body, &mut errors);
    let domain = domain.trim().to_lowercase();
    if email_domain(&format!("x@{domain}")).is_none() {
        errors.push(FieldError {
            field: "domain".into(),
            message: "is not a domain name".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("domain", &errors));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    state
        .store
        .verify_group_domain(
            project_id,
            &domain,
            (&group_type, &group_key),
            &role,
            &actor,
        )
        .await
        .map_err(|e| crate::features::write_error(e, "domain"))?;
    Ok(Json(
        json!({"domain": domain, "group_type": group_type, "group_key": group_key, "role": role, "verified": true}),
    ))
}

async fn auto_join(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = Vec::new();
    unknown(&body, &["distinct_id", "email"], &mut errors);
    let who = text(&body, "distinct_id", &mut errors);
    let email = text(&body, "email", &mut errors);
    let domain = email.as_deref().and_then(email_domain);
    if email.is_some() && domain.is_none() {
        errors.push(FieldError {
            field: "email".into(),
            message: "is not an email address".into(),
        });
    }
    let (Some(who), Some(domain)) = (who, domain) else {
        return Err(ApiError::validation("auto-join", &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("auto-join", &errors));
    }
    let Some((group_type, group_key, role)) =
        state.store.group_for_domain(project_id, &domain).await?
    else {
        return Err(ApiError::not_found(format!(
            "no verified domain `{domain}` in this project"
        )));
    };
    record(
        &state,
        project_id,
        &who,
        "$group_auto_joined",
        json!({"$groups": {&group_type: &group_key}, "role": role, "domain": domain}),
    )
    .await?;
    Ok(Json(
        json!({"group_type": group_type, "group_key": group_key, "role": role, "joined": true}),
    ))
}
