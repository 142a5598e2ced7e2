//! Users and sign-in: passwords (argon2id), sessions for the dashboard, roles, and who a request comes from.
//!
//! A native API request carries either `Authorization: Bearer <personal API key>` or the session cookie
//! `flywheel_session` set by `POST /api/v1/auth/login`. A cookie-authenticated request that changes something
//! (any method but GET, HEAD, OPTIONS) must also send the session's CSRF token in `X-CSRF-Token` (the login answer
//! and `GET /api/v1/auth/me` return it). Sessions last 7 days from their last use, at most 30 days.
//!
//! Roles per organization (owner > admin > member > viewer) grant what the scopes of [`crate::keys`] name:
//! a viewer reads (projects, features, insights, persons, experiments, growth, the organization) and changes
//! nothing; a member also writes features, insights, experiments and growth, reads webhooks and the audit log and
//! makes personal keys of their own; an admin may do everything in the organization's projects and manage members
//! and invitations (but not owners); an owner may do everything. A personal key made by a user acts with at most that
//! user's current role; a member restricted to some projects sees only those.
//!
//! Endpoints: `POST /api/v1/auth/setup` (the first owner of an organization, authorised by the organization's
//! unrestricted personal key, e.g. the bootstrap key), `POST …/login`, `POST …/logout`, `GET …/me`,
//! `POST …/password`, `POST …/accept-invitation` (a team invitation's token; creates the user or, for an existing
//! one, checks their password). Failed sign-ins are limited per email (5 per 15 minutes) and per address (30), with
//! `429` and `Retry-After`; an unknown email costs the same hashing time as a wrong password.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flywheel_query::FieldError;
use flywheel_store::{Actor, MemberError, Membership, UserRecord};
use rand::RngCore;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "flywheel_session";
/// The header carrying the CSRF token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";
const SESSION_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
const SESSION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 256;

/// A role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "member" => Role::Member,
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The scopes the role holds (`None`: every scope).
    pub fn scopes(self) -> Option<&'static [&'static str]> {
        const VIEWER: &[&str] = &[
            "organization:read",
            "projects:read",
            "features:read",
            "insights:read",
            "persons:read",
            "experiments:read",
            "growth:read",
        ];
        const MEMBER: &[&str] = &[
            "organization:read",
            "projects:read",
            "features:write",
            "insights:write",
            "persons:read",
            "experiments:write",
            "growth:write",
            "webhooks:read",
            "audit:read",
            "keys:write",
        ];
        match self {
            Role::Viewer => Some(VIEWER),
            Role::Member => Some(MEMBER),
            Role::Admin | Role::Owner => None,
        }
    }

    /// Whether the role grants a scope (`<area>:read|write`).
    pub fn grants(self, needed: &str) -> bool {
        let Some(scopes) = self.scopes() else {
            return true;
        };
        let (area, _) = needed.split_once(':').unwrap_or((needed, ""));
        scopes.iter().any(|s| {
            *s == needed || (needed.ends_with(":read") && *s == format!("{area}:write").as_str())
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Passwords

fn argon2() -> Argon2<'static> {
    // argon2id, 19 MiB, 2 passes, 1 lane: OWASP's recommended minimum.
    Argon2::default()
}

/// The PHC string of a password (argon2id, random 16-byte salt).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(ApiError::internal)?
        .to_string())
}

/// Whether `password` matches a stored PHC string (argon2 compares in constant time).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash to check unknown emails against, so that they take as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

async fn hash_blocking(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(ApiError::internal)?
}

async fn verify_blocking(password: String, phc: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => {
            verify_password(&password, decoy_hash());
            false
        }
    })
    .await
    .map_err(ApiError::internal)
}

/// Constant-time equality of two secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn check_password_rules(
    password: &str,
    email: &str,
    field: &str,
    errors: &mut Vec<FieldError>,
) {
    let n = password.chars().count();
    let message = if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        Some(format!(
            "must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"
        ))
    } else if password.eq_ignore_ascii_case(email) {
        Some("must not be the email address".to_owned())
    } else {
        None
    };
    if let Some(message) = message {
        errors.push(FieldError {
            field: field.into(),
            message,
        });
    }
}

/// Normalises and checks an email address (one `@`, a dot in the domain, no spaces, at most 254 characters).
pub fn parse_email(raw: &str) -> Option<String> {
    let email = raw.trim();
    let (local, domain) = email.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| email.to_owned())
}

// ---------------------------------------------------------------------------------------------------------------
// Failed sign-ins

/// Failed sign-ins per email and per address in a sliding window.
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    window: Duration,
}

const PER_EMAIL: usize = 5;
const PER_ADDRESS: usize = 30;

impl Default for LoginLimiter {
    fn default() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
            window: Duration::from_secs(15 * 60),
        }
    }
}

impl LoginLimiter {
    /// Seconds to wait when either key is over its limit.
    fn blocked(&self, email: &str, address: &str) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = None;
        for (key, limit) in [
            (format!("e:{email}"), PER_EMAIL),
            (format!("a:{address}"), PER_ADDRESS),
        ] {
            if let Some(q) = map.get_mut(&key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() >= limit {
                    let oldest = *q.front().unwrap_or(&now);
                    let secs = (self.window - now.duration_since(oldest)).as_secs().max(1);
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait
    }

    fn failed(&self, email: &str, address: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Forget everything rather than grow without bound under a spray of addresses.
            map.clear();
        }
        for key in [format!("e:{email}"), format!("a:{address}")] {
            map.entry(key).or_default().push_back(now);
        }
    }

    fn succeeded(&self, email: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("e:{email}"));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions

/// The session cookie's value in a request, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

fn secure_request(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.tls.is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A signed-in session, resolved from the cookie; `None` when there is no live session for it.
pub struct SessionCaller {
    pub session_id: i64,
    pub user_id: i64,
    pub csrf_token: String,
}

/// Looks up the session of a cookie value, extending it when it was last seen over an hour ago.
pub async fn resolve_session(
    state: &AppState,
    token: &str,
) -> Result<Option<SessionCaller>, ApiError> {
    let now = state.clock.now();
    let Some(s) = state.store.session(token, &time_text(now)).await? else {
        return Ok(None);
    };
    let stale = chrono::DateTime::parse_from_rfc3339(&s.last_seen_at)
        .map(|t| now.signed_duration_since(t) > chrono::Duration::hours(1))
        .unwrap_or(true);
    if stale {
        let created = chrono::DateTime::parse_from_rfc3339(&s.created_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now);
        let idle = now + chrono::Duration::from_std(SESSION_IDLE).unwrap_or_default();
        let cap = created + chrono::Duration::from_std(SESSION_MAX).unwrap_or_default();
        state
            .store
            .touch_session(s.id, &time_text(now), &time_text(idle.min(cap)))
            .await?;
    }
    Ok(Some(SessionCaller {
        session_id: s.id,
        user_id: s.user_id,
        csrf_token: s.csrf_token,
    }))
}

fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    user: &UserRecord,
    status: StatusCode,
    extra: Value,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let expires = now + chrono::Duration::from_std(SESSION_IDLE).unwrap_or_default();
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let ip = crate::capture::client_ip(headers, peer);
    let (_, token, csrf) = state
        .store
        .create_session(user.id, &time_text(expires), Some(&ip), agent)
        .await?;
    let memberships = state.store.memberships_of(user.id).await?;
    let mut body = json!({
        "user": user_json(user),
        "csrf_token": csrf,
        "expires_at": time_text(expires),
        "organizations": memberships.iter().map(membership_json).collect::<Vec<_>>(),
    });
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(
            &token,
            SESSION_IDLE.as_secs(),
            secure_request(state, headers),
        ),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub fn user_json(user: &UserRecord) -> Value {
    json!({"id": user.id, "email": user.email, "name": user.name})
}

pub fn membership_json(m: &Membership) -> Value {
    json!({"organization_id": m.organization_id, "organization_name": m.organization_name,
           "role": m.role, "projects": m.projects})
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/setup", post(setup))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/accept-invitation", post(accept_invitation))
        .route("/api/v1/auth/invitation", post(invitation_info))
}

/// What an invitation token is for, so the acceptance page can say so (and whether to ask for a new password or the
/// existing user's). The token travels in the body, never in a URL that logs keep.
async fn invitation_info(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let mut errors = crate::experiments::unknown_fields(&body, &["token"]);
    let token = text_field(&body, "token", &mut errors).trim().to_owned();
    if !errors.is_empty() {
        return Err(ApiError::validation("invitation", &errors));
    }
    let invitation = state
        .store
        .team_invitation_by_token(&token)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invitation_not_found",
                "no invitation has this token",
            )
        })?;
    let now = time_text(state.clock.now());
    let status = if invitation.accepted_at.is_some() {
        "accepted"
    } else if invitation.revoked_at.is_some() {
        "revoked"
    } else if invitation.expires_at <= now {
        "expired"
    } else {
        "pending"
    };
    let organization = state
        .store
        .organization(invitation.organization_id)
        .await?
        .map(|o| o.name);
    let user_exists = state
        .store
        .user_by_email(&invitation.email)
        .await?
        .is_some();
    Ok(Json(json!({
        "email": invitation.email,
        "role": invitation.role,
        "organization_id": invitation.organization_id,
        "organization_name": organization,
        "expires_at": invitation.expires_at,
        "status": status,
        "user_exists": user_exists,
    })))
}

fn text_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> &'a str {
    match body.get(field) {
        Some(Value::String(s)) => s,
        _ => {
            errors.push(FieldError {
                field: field.into(),
                message: "is required: text".into(),
            });
            ""
        }
    }
}

fn optional_name(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> String {
    match body.get("name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(n)) if n.chars().count() <= 200 => n.trim().to_owned(),
        Some(_) => {
            errors.push(FieldError {
                field: "name".into(),
                message: "must be text of at most 200 characters".into(),
            });
            String::new()
        }
    }
}

fn email_field(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> String {
    let raw = text_field(body, "email", errors);
    if raw.is_empty() && errors.iter().any(|e| e.field == "email") {
        return String::new();
    }
    parse_email(raw).unwrap_or_else(|| {
        errors.push(FieldError {
            field: "email".into(),
            message: format!("`{raw}` is not an email address"),
        });
        String::new()
    })
}

async fn setup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let Some(key) = caller
        .key
        .as_ref()
        .filter(|k| k.user_id.is_none() && k.project_id.is_none() && k.scopes.is_none())
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "setup_needs_organization_key",
            "setting up the first owner needs the organization's unrestricted personal API key (the bootstrap key)",
        ));
    };
    let organization_id = key.organization_id;
    if state.store.organization_has_owner(organization_id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_set_up",
            "this organization already has an owner; invite more people from the organization's members page",
        ));
    }
    let mut errors = crate::experiments::unknown_fields(&body, &["email", "password", "name"]);
    let email = email_field(&body, &mut errors);
    let password = text_field(&body, "password", &mut errors).to_owned();
    check_password_rules(&password, &email, "password", &mut errors);
    let name = optional_name(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("setup", &errors));
    }
    let hash = hash_blocking(password).await?;
    let user_id = match state.store.create_user(&email, &name, &hash).await? {
        Ok(id) => id,
        Err(_) => state
            .store
            .user_by_email(&email)
            .await?
            .map(|u| u.id)
            .ok_or_else(|| ApiError::internal("user vanished"))?,
    };
    let actor = caller.actor(&headers, peer);
    match state
        .store
        .add_member(organization_id, user_id, "owner", None, &actor)
        .await?
    {
        Ok(()) | Err(MemberError::Exists) => {}
        Err(e) => return Err(ApiError::internal(e)),
    }
    let user = state
        .store
        .user(user_id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    start_session(
        &state,
        &headers,
        peer,
        &user,
        StatusCode::CREATED,
        json!({"organization_id": organization_id}),
    )
    .await
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let mut errors = crate::experiments::unknown_fields(&body, &["email", "password"]);
    let email = text_field(&body, "email", &mut errors)
        .trim()
        .to_lowercase();
    let password = text_field(&body, "password", &mut errors).to_owned();
    if !errors.is_empty() {
        return Err(ApiError::validation("sign-in", &errors));
    }
    let address = crate::capture::client_ip(&headers, peer);
    let user = check_credentials(&state, &email, &address, password).await?;
    let actor = Actor {
        label: format!("user:{}", user.id),
        source_ip: Some(address),
    };
    for m in state.store.memberships_of(user.id).await? {
        state
            .store
            .record_org_audit(
                m.organization_id,
                &actor,
                "user.signed_in",
                "user",
                &user.id.to_string(),
                None,
            )
            .await?;
    }
    start_session(&state, &headers, peer, &user, StatusCode::OK, json!({})).await
}

/// Checks an email and password under the failed sign-in limits: the user, or 401 (wrong email and wrong
/// password answer alike) or 429.
async fn check_credentials(
    state: &AppState,
    email: &str,
    address: &str,
    password: String,
) -> Result<UserRecord, ApiError> {
    if let Some(secs) = state.login_limiter.blocked(email, address) {
        return Err(crate::limits::refused(
            "login",
            "sign-in attempts".into(),
            secs,
        ));
    }
    let user = state.store.user_by_email(email).await?;
    let ok = verify_blocking(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    match user {
        Some(user) if ok => {
            state.login_limiter.succeeded(email);
            Ok(user)
        }
        _ => {
            state.login_limiter.failed(email, address);
            metrics::counter!(crate::metrics_names::LOGIN_FAILURES).increment(1);
            Err(ApiError::unauthorized(
                "invalid_credentials",
                "the email or the password is wrong",
            ))
        }
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, caller: Caller) -> Response {
    if let Some(s) = &caller.session {
        if let Err(e) = state.store.delete_session(s.session_id).await {
            return ApiError::from(e).into_response();
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0, secure_request(&state, &headers)),
    );
    response
}

async fn me(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let mut body = Map::new();
    if let Some(user_id) = caller.user_id {
        let user = state.store.user(user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_session", "the user no longer exists")
        })?;
        body.insert("user".into(), user_json(&user));
        let memberships = state.store.memberships_of(user_id).await?;
        body.insert(
            "organizations".into(),
            memberships.iter().map(membership_json).collect(),
        );
    }
    if let Some(s) = &caller.session {
        body.insert("csrf_token".into(), s.csrf_token.clone().into());
    }
    if let Some(k) = &caller.key {
        body.insert(
            "api_key".into(),
            json!({"id": k.id, "organization_id": k.organization_id, "project_id": k.project_id,
                   "scopes": k.scopes}),
        );
    }
    let mut response = Json(Value::Object(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<StatusCode, ApiError> {
    let Some(session) = &caller.session else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "changing a password needs a signed-in session, not an API key",
        ));
    };
    let mut errors =
        crate::experiments::unknown_fields(&body, &["current_password", "new_password"]);
    let current = text_field(&body, "current_password", &mut errors).to_owned();
    let new = text_field(&body, "new_password", &mut errors).to_owned();
    let user =
        state.store.user(session.user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_session", "the user no longer exists")
        })?;
    check_password_rules(&new, &user.email, "new_password", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("password change", &errors));
    }
    let address = crate::capture::client_ip(&headers, peer);
    check_credentials(&state, &user.email.to_lowercase(), &address, current).await?;
    let hash = hash_blocking(new).await?;
    state
        .store
        .set_password(user.id, &hash, Some(session.session_id))
        .await?;
    let actor = caller.actor(&headers, peer);
    for m in state.store.memberships_of(user.id).await? {
        state
            .store
            .record_org_audit(
                m.organization_id,
                &actor,
                "user.password_changed",
                "user",
                &user.id.to_string(),
                None,
            )
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn accept_invitation(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let mut errors = crate::experiments::unknown_fields(&body, &["token", "password", "name"]);
    let token = text_field(&body, "token", &mut errors).trim().to_owned();
    let password = text_field(&body, "password", &mut errors).to_owned();
    let name = optional_name(&body, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation("invitation", &errors));
    }
    let gone = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invitation_not_found",
            "this invitation does not exist, was revoked, was already used or has expired",
        )
    };
    let invitation = state
        .store
        .team_invitation_by_token(&token)
        .await?
        .ok_or_else(gone)?;
    let now = time_text(state.clock.now());
    if invitation.accepted_at.is_some()
        || invitation.revoked_at.is_some()
        || invitation.expires_at <= now
    {
        return Err(gone());
    }
    let email = invitation.email.to_lowercase();
    let address = crate::capture::client_ip(&headers, peer);
    let user = match state.store.user_by_email(&email).await? {
        // An existing user proves who they are with their password.
        Some(_) => check_credentials(&state, &email, &address, password).await?,
        None => {
            let mut errors = Vec::new();
            check_password_rules(&password, &email, "password", &mut errors);
            if !errors.is_empty() {
                return Err(ApiError::validation("invitation", &errors));
            }
            let hash = hash_blocking(password).await?;
            match state
                .store
                .create_user(&invitation.email, &name, &hash)
                .await?
            {
                Ok(id) => state.store.user(id).await?,
                Err(_) => None,
            }
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "user_exists",
                    "a user with this email was just created; sign in and accept again",
                )
            })?
        }
    };
    if !state
        .store
        .accept_team_invitation(&invitation, user.id)
        .await?
    {
        return Err(gone());
    }
    start_session(
        &state,
        &headers,
        peer,
        &user,
        StatusCode::OK,
        json!({"organization_id": invitation.organization_id, "role": invitation.role}),
    )
    .await
}

/// The actor label of a request for audit entries.
pub fn actor_label(caller: &Caller) -> String {
    match (&caller.key, caller.user_id) {
        (Some(k), _) => format!("personal_key:{}", k.id),
        (None, Some(u)) => format!("user:{u}"),
        (None, None) => "anonymous".to_owned(),
    }
}

impl Caller {
    /// Who did it and from where, for the audit log.
    pub fn actor(&self, headers: &HeaderMap, peer: std::net::SocketAddr) -> Actor {
        Actor {
            label: actor_label(self),
            source_ip: Some(crate::capture::client_ip(headers, peer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn roles_grant_their_scopes() {
        assert!(Role::Viewer.grants("features:read"));
        assert!(!Role::Viewer.grants("features:write"));
        assert!(!Role::Viewer.grants("keys:write"));
        assert!(!Role::Viewer.grants("webhooks:read"));
        assert!(Role::Member.grants("features:read") && Role::Member.grants("features:write"));
        assert!(!Role::Member.grants("webhooks:write") && Role::Member.grants("webhooks:read"));
        assert!(!Role::Member.grants("persons:write") && !Role::Member.grants("projects:write"));
        assert!(Role::Admin.grants("persons:write") && Role::Owner.grants("organization:write"));
        assert!(
            Role::Owner > Role::Admin && Role::Admin > Role::Member && Role::Member > Role::Viewer
        );
    }

    #[test]
    fn emails_and_cookies_parse() {
        assert_eq!(
            parse_email(" Ann@Example.com ").as_deref(),
            Some("Ann@Example.com")
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "ann@x",
            "a b@x.com",
            "ann@.com",
            "a@b@c.com",
        ] {
            assert_eq!(parse_email(bad), None, "{bad}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; flywheel_session=fwses_abc ; b=2"),
        );
        assert_eq!(session_token(&h), Some("fwses_abc"));
        assert!(
            secrets_equal("abc", "abc")
                && !secrets_equal("abc", "abd")
                && !secrets_equal("ab", "abc")
        );
    }

    #[test]
    fn failed_sign_ins_are_limited_per_email() {
        let l = LoginLimiter::default();
        for _ in 0..PER_EMAIL {
            assert_eq!(l.blocked("a@x.com", "1.2.3.4"), None);
            l.failed("a@x.com", "1.2.3.4");
        }
        let wait = l.blocked("a@x.com", "5.6.7.8").expect("blocked");
        assert!(wait > 0 && wait <= 900, "{wait}");
        assert_eq!(l.blocked("b@x.com", "5.6.7.8"), None);
        l.succeeded("a@x.com");
        assert_eq!(l.blocked("a@x.com", "5.6.7.8"), None);
    }
}
