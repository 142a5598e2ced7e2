//! Growth loops, first part: referral programs, referral codes and the public click endpoint.
//!
//! - `…/projects/{project_id}/referral-programs`: programs ([`flywheel_query::growth::Program`]) are store
//!   documents of kind `referral_program` (versioned, audited, archived instead of deleted). `PATCH` merges the
//!   given fields and validates the whole.
//! - `…/referral-programs/{key}/codes`: `POST {"referrer": "<distinct id>"}` gives the referrer's generated code
//!   (created once: asking again returns it, 200), `POST {"referrer", "code": "ANNA-VIP"}` adds a vanity code
//!   (codes are unique across the installation without case: 409 when taken). `GET ?referrer=` lists codes with
//!   their click counts.
//! - `GET /r/{code}` (public): records the click (with a salted hash of the visitor's IP address and user agent,
//!   for fraud checks) and redirects (302) to the program's landing URL with `ref={code}&fw_click={token}`, setting
//!   the first-party cookie `fw_ref` for the attribution window. Unknown codes and codes of archived or inactive
//!   programs get 404.

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_query::growth::{check_code, parse_program, Program};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::experiments::document;
use crate::state::AppState;

pub(crate) const PROGRAM: &str = "referral_program";

/// Tells the referral consumer that what it watches changed.
fn bump(state: &AppState) {
    state
        .growth_epoch
        .fetch_add(1, std::sync::atomic::Ordering::Release);
}

/// Generated codes: 8 characters without look-alikes (no 0/o, 1/l/i).
const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
const CODE_LEN: usize = 8;
/// Longest referrer id.
const MAX_REFERRER: usize = 200;

pub fn router() -> Router<AppState> {
    crate::definitions::routes("/api/v1/projects/{project_id}/referral-programs", &PROGRAMS)
        .route(
            "/api/v1/projects/{project_id}/referral-programs/{key}/codes",
            get(list_codes).post(create_code),
        )
        .route("/r/{code}", get(click))
        .route(
            "/api/v1/projects/{project_id}/share-links",
            get(list_share_links).post(create_share_link),
        )
        .route("/s/{token}", get(share_click))
        .route(
            "/api/v1/projects/{project_id}/growth/path",
            get(growth_path),
        )
        .route(
            "/api/v1/projects/{project_id}/referral-programs/{key}/referrals",
            get(list_referrals),
        )
        .route(
            "/api/v1/projects/{project_id}/referral-programs/{key}/leaderboard",
            get(leaderboard),
        )
        .route(
            "/api/v1/projects/{project_id}/referral-programs/{key}/referrals/{id}/{action}",
            axum::routing::post(review_referral),
        )
        .route(
            "/api/v1/projects/{project_id}/rewards",
            get(list_rewards).post(create_reward),
        )
        .route(
            "/api/v1/projects/{project_id}/rewards/balances",
            get(reward_balances),
        )
        .route(
            "/api/v1/projects/{project_id}/rewards/{id}/{action}",
            axum::routing::post(reward_action),
        )
}

/// A referral program's definition: the query crate's checks, and the consumer's limit that the qualifying event
/// is tested on its own properties.
fn program_definition(body: &Value) -> crate::definitions::Parsed {
    let p = parse_program(body)?;
    let errors: Vec<flywheel_query::FieldError> = p
        .qualify
        .properties
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            !matches!(f, flywheel_query::Filter::Property(x)
                if x.property_type == flywheel_query::PropertyType::Event)
        })
        .map(|(i, _)| flywheel_query::FieldError {
            field: format!("qualify.properties[{i}]"),
            message: "only the event's own properties can qualify a referral".into(),
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((p.key.clone(), p.name.clone(), p.to_json()))
}

/// Referral programs are plain definition documents; every change tells the referral consumer (archiving one
/// stops its links).
static PROGRAMS: crate::definitions::Kind = crate::definitions::Kind {
    kind: PROGRAM,
    what: "referral program",
    parse: program_definition,
    changed: bump,
};

fn stored_program(doc: &flywheel_store::Document) -> Result<Program, ApiError> {
    parse_program(&doc.body).map_err(|_| {
        ApiError::internal(format!(
            "stored referral program `{}` does not parse",
            doc.key
        ))
    })
}

/// A program that exists and is not archived.
async fn live_program(state: &AppState, project_id: i64, key: &str) -> Result<Program, ApiError> {
    let doc = document(state, project_id, PROGRAM, key).await?;
    if doc.archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            format!("referral program `{key}` is archived"),
        ));
    }
    stored_program(&doc)
}

#[derive(serde::Deserialize)]
struct CodeParams {
    referrer: Option<String>,
}

async fn list_codes(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<CodeParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    document(&state, project_id, PROGRAM, &key).await?;
    let codes = state
        .store
        .referral_codes(project_id, &key, params.referrer.as_deref())
        .await?;
    Ok(Json(json!({ "results": codes })))
}

#[derive(serde::Deserialize)]
struct ReferralParams {
    referrer: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET …/referral-programs/{key}/referrals?referrer=&status=&limit=`: newest first.
async fn list_referrals(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<ReferralParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    document(&state, project_id, PROGRAM, &key).await?;
    let limit = crate::experiments::limit_param(params.limit, 100, "referral list")?;
    let referrals = state
        .store
        .referrals(
            project_id,
            &key,
            params.referrer.as_deref(),
            params.status.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(json!({ "results": referrals })))
}

#[derive(serde::Deserialize)]
struct LeaderboardParams {
    limit: Option<i64>,
}

/// `GET …/referral-programs/{key}/leaderboard?limit=`: referrers by qualified referrals, with the next milestone.
async fn leaderboard(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<LeaderboardParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let program = stored_program(&document(&state, project_id, PROGRAM, &key).await?)?;
    let limit = crate::experiments::limit_param(params.limit, 25, "leaderboard")?;
    let rows = state
        .store
        .referral_leaderboard(project_id, &key, limit)
        .await?;
    let results: Vec<Value> = rows
        .into_iter()
        .enumerate()
        .map(|(i, (referrer, qualified, referrals))| {
            let next = program
                .tiers
                .iter()
                .find(|t| t.qualified as i64 > qualified)
                .map(|t| json!({"qualified": t.qualified, "amount": t.reward.amount, "unit": t.reward.unit}));
            json!({"rank": i + 1, "referrer": referrer, "qualified": qualified, "referrals": referrals,
                   "next_milestone": next})
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// `POST …/referral-programs/{key}/referrals/{id}/approve|reject` (`{"reason": …}`): the review queue's decision.
/// Approving a held referral writes its rewards, pending for the program's hold from now.
async fn review_referral(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key, id, action)): Path<(String, String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let approve = match action.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "no referral action `{other}` (approve, reject)"
            )))
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no referral `{id}`")))?;
    let body = crate::experiments::optional_object(&body, "referral review")?;
    let mut errors = Vec::new();
    if let Some(k) = body.keys().find(|k| k.as_str() != "reason") {
        errors.push(flywheel_query::FieldError {
            field: k.clone(),
            message: "unknown field (reason)".into(),
        });
    }
    let reason = text_field(&body, "reason", true, &mut errors);
    let Some(reason) = reason.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation("referral review", &errors));
    };
    let program = stored_program(&document(&state, project_id, PROGRAM, &key).await?)?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let referral = state
        .store
        .review_referral(project_id, &key, id, approve, &reason, &actor)
        .await
        .map_err(|e| match e {
            flywheel_store::WriteError::Invalid(m) => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", m)
            }
            flywheel_store::WriteError::NotFound => {
                ApiError::not_found(format!("no referral {id} in program `{key}`"))
            }
            other => crate::features::write_error(other, "referral"),
        })?;
    if approve {
        let now = state.clock.now().timestamp_micros();
        crate::referral_consumer::write_rewards(&state, project_id, &program, &referral, now)
            .await?;
    }
    Ok(Json(json!(referral)))
}

fn generated_code() -> String {
    random_code(CODE_LEN)
}

/// `len` (at most 16) characters of [`ALPHABET`] from a v4 UUID's random bytes.
fn random_code(len: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..len.min(16)]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn code_json(code: &flywheel_store::ReferralCode) -> Value {
    let mut v = json!(code);
    v["link"] = json!(format!("/r/{}", code.code));
    v
}

async fn create_code(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = Vec::new();
    for k in body.keys() {
        if !["referrer", "code"].contains(&k.as_str()) {
            errors.push(flywheel_query::FieldError {
                field: k.clone(),
                message: "unknown field (referrer, code)".into(),
            });
        }
    }
    let referrer = match body.get("referrer") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_REFERRER => {
            Some(s.clone())
        }
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => {
            errors.push(flywheel_query::FieldError {
                field: "referrer".into(),
                message: format!(
                    "is required: the referrer's distinct id (at most {MAX_REFERRER} characters)"
                ),
            });
            None
        }
    };
    let vanity = match body.get("code") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => match check_code(c) {
            Ok(()) => Some(c.clone()),
            Err(m) => {
                errors.push(flywheel_query::FieldError {
                    field: "code".into(),
                    message: m,
                });
                None
            }
        },
        Some(_) => {
            errors.push(flywheel_query::FieldError {
                field: "code".into(),
                message: "must be a string".into(),
            });
            None
        }
    };
    let Some(referrer) = referrer.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation("referral code", &errors));
    };
    live_program(&state, project_id, &key).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    if let Some(code) = vanity {
        let created = state
            .store
            .create_referral_code(project_id, &key, &code, &referrer, true, &actor)
            .await
            .map_err(|e| match e {
                flywheel_store::WriteError::AlreadyExists => ApiError::new(
                    StatusCode::CONFLICT,
                    "code_taken",
                    format!("the code `{code}` is taken (codes are compared without case)"),
                ),
                other => crate::features::write_error(other, "referral code"),
            })?;
        return Ok((StatusCode::CREATED, Json(code_json(&created))).into_response());
    }
    if let Some(existing) = state
        .store
        .generated_referral_code(project_id, &key, &referrer)
        .await?
    {
        return Ok((StatusCode::OK, Json(code_json(&existing))).into_response());
    }
    for _ in 0..8 {
        match state
            .store
            .create_referral_code(
                project_id,
                &key,
                &generated_code(),
                &referrer,
                false,
                &actor,
            )
            .await
        {
            Ok(created) => {
                return Ok((StatusCode::CREATED, Json(code_json(&created))).into_response())
            }
            Err(flywheel_store::WriteError::AlreadyExists) => continue,
            Err(e) => return Err(crate::features::write_error(e, "referral code")),
        }
    }
    Err(ApiError::internal("no free referral code after 8 tries"))
}

/// The salted hash of a visitor's address and user agent.
pub(crate) async fn fingerprint(
    state: &AppState,
    ip: &str,
    user_agent: &str,
) -> Result<String, ApiError> {
    // Created (or read) once per process, not written on every click.
    let salt = state
        .click_salt
        .get_or_try_init(|| async {
            let candidate = uuid::Uuid::new_v4().simple().to_string();
            state
                .store
                .install_secret("click_fingerprint_salt", &candidate)
                .await
        })
        .await?;
    // The network part of the address (what capture keeps by default; a full address truncates to the same), so a
    // click and the same device's events hash alike whatever a project keeps.
    let ip = crate::privacy::IpCapture::Truncated
        .apply(ip)
        .unwrap_or_default();
    let mut h = sha2::Sha256::new();
    for part in [salt.as_bytes(), ip.as_bytes(), user_agent.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `landing` with `ref` and `fw_click` added to its query (before any fragment).
fn landing_with(landing: &str, code: &str, token: &str) -> String {
    let (base, fragment) = match landing.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (landing, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{sep}ref={code}&fw_click={token}");
    if let Some(f) = fragment {
        url.push('#');
        url.push_str(f);
    }
    url
}

/// `GET /r/{code}`.
async fn click(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no active referral link `{code}`"));
    if check_code(&code).is_err() {
        return Err(not_found());
    }
    let Some(found) = state.store.referral_code(&code).await? else {
        return Err(not_found());
    };
    let Some(doc) = state
        .store
        .document(found.project_id, PROGRAM, &found.program)
        .await?
        .filter(|d| !d.archived)
    else {
        return Err(not_found());
    };
    let program = stored_program(&doc)?;
    if !program.active {
        return Err(not_found());
    }
    let (ip, user_agent) = visitor(&headers, peer);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let fp = fingerprint(&state, &ip, &user_agent).await?;
    state
        .store
        .record_referral_click(&found, &token, &fp)
        .await?;
    let location = landing_with(&program.landing_url, &found.code, &token);
    let cookie = format!(
        "fw_ref={}.{token}; Max-Age={}; Path=/; SameSite=Lax",
        found.code,
        program.attribution_window_days * 86_400
    );
    let mut response = StatusCode::FOUND.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------------------------
// The reward ledger

/// Longest beneficiary id, reason or idempotency key.
const MAX_TEXT: usize = 500;

#[derive(serde::Deserialize)]
struct RewardParams {
    beneficiary: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

const STATUSES: &[&str] = &["pending", "approved", "fulfilled", "reversed"];

async fn list_rewards(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<RewardParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    if let Some(s) = params.status.as_deref().filter(|s| !STATUSES.contains(s)) {
        return Err(ApiError::invalid_field(
            "reward list",
            "status",
            format!("`{s}` is not one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = crate::experiments::limit_param(params.limit, 100, "reward list")?;
    let rewards = state
        .store
        .rewards(
            project_id,
            params.beneficiary.as_deref(),
            params.status.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(json!({ "results": rewards })))
}

#[derive(serde::Deserialize)]
struct BalanceParams {
    beneficiary: Option<String>,
}

/// `GET …/rewards/balances?beneficiary=`: per unit, the amounts and entries in each status.
async fn reward_balances(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<BalanceParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let Some(beneficiary) = params.beneficiary.filter(|b| !b.is_empty()) else {
        return Err(ApiError::invalid_field(
            "reward balances",
            "beneficiary",
            "is required",
        ));
    };
    let mut units = Map::new();
    for (unit, status, sum, n) in state
        .store
        .reward_balances(project_id, &beneficiary)
        .await?
    {
        let entry = units.entry(unit).or_insert_with(|| {
            json!(STATUSES
                .iter()
                .map(|s| (s.to_string(), json!({"amount": 0.0, "entries": 0})))
                .collect::<Map<String, Value>>())
        });
        entry[&status] = json!({"amount": sum, "entries": n});
    }
    Ok(Json(
        json!({"beneficiary": beneficiary, "balances": Value::Object(units)}),
    ))
}

fn text_field(
    body: &Map<String, Value>,
    key: &str,
    required: bool,
    errors: &mut Vec<flywheel_query::FieldError>,
) -> Option<String> {
    match body.get(key) {
        None | Some(Value::Null) if !required => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_TEXT => {
            Some(s.clone())
        }
        _ => {
            errors.push(flywheel_query::FieldError {
                field: key.into(),
                message: format!("must be a non-empty string of at most {MAX_TEXT} characters"),
            });
            None
        }
    }
}

/// `POST …/rewards`: a pending reward (`beneficiary`, `amount`, `unit`, `reason`, `idempotency_key`, optional
/// `program` and `hold_days`, by default the program's). A retry with the same key answers the same entry (200).
async fn create_reward(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    const FIELDS: &[&str] = &[
        "beneficiary",
        "amount",
        "unit",
        "reason",
        "idempotency_key",
        "program",
        "hold_days",
    ];
    let mut errors = crate::experiments::unknown_fields(&body, FIELDS);
    let beneficiary = text_field(&body, "beneficiary", true, &mut errors);
    let amount = match body.get("amount").and_then(Value::as_f64) {
        Some(a) if a > 0.0 && a.is_finite() => Some(a),
        _ => {
            errors.push(flywheel_query::FieldError {
                field: "amount".into(),
                message: "must be a number above 0".into(),
            });
            None
        }
    };
    let unit = text_field(&body, "unit", true, &mut errors);
    let reason = text_field(&body, "reason", true, &mut errors);
    let key = text_field(&body, "idempotency_key", true, &mut errors);
    let program = text_field(&body, "program", false, &mut errors);
    let hold_days = match body.get("hold_days") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_u64()
            .filter(|d| *d <= flywheel_query::growth::MAX_DAYS)
        {
            Some(d) => Some(d),
            None => {
                errors.push(flywheel_query::FieldError {
                    field: "hold_days".into(),
                    message: format!(
                        "must be a whole number from 0 to {}",
                        flywheel_query::growth::MAX_DAYS
                    ),
                });
                None
            }
        },
    };
    let (Some(beneficiary), Some(amount), Some(unit), Some(reason), Some(key)) =
        (beneficiary, amount, unit, reason, key)
    else {
        return Err(ApiError::validation("reward", &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("reward", &errors));
    }
    // A named program must exist and not be archived; its hold applies unless the body sets one.
    let hold_days = match &program {
        Some(p) => hold_days.unwrap_or(live_program(&state, project_id, p).await?.hold_days),
        None => hold_days.unwrap_or(0),
    };
    let hold_until = (state.clock.now() + chrono::Duration::days(hold_days as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let actor = crate::features::actor(&caller, &headers, peer);
    let new = flywheel_store::NewReward {
        beneficiary: &beneficiary,
        amount,
        unit: &unit,
        reason: &reason,
        program: program.as_deref(),
        idempotency_key: &key,
        hold_until: &hold_until,
    };
    let (entry, created) = state
        .store
        .create_reward(project_id, &new, &actor)
        .await
        .map_err(|e| match e {
            flywheel_store::WriteError::Invalid(m) => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", m)
            }
            other => crate::features::write_error(other, "reward"),
        })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(entry))).into_response())
}

/// `POST …/rewards/{id}/approve|fulfil|reverse` (`{"reason": …}`).
async fn reward_action(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let to = match action.as_str() {
        "approve" => "approved",
        "fulfil" | "fulfill" => "fulfilled",
        "reverse" => "reversed",
        other => {
            return Err(ApiError::not_found(format!(
                "no reward action `{other}` (approve, fulfil, reverse)"
            )))
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no reward `{id}`")))?;
    let body = crate::experiments::optional_object(&body, "reward")?;
    let mut errors = Vec::new();
    if let Some(k) = body.keys().find(|k| k.as_str() != "reason") {
        errors.push(flywheel_query::FieldError {
            field: k.clone(),
            message: "unknown field (reason)".into(),
        });
    }
    let reason = text_field(&body, "reason", false, &mut errors)
        .unwrap_or_else(|| format!("{action} by hand"));
    if !errors.is_empty() {
        return Err(ApiError::validation("reward", &errors));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let entry = state
        .store
        .transition_reward(project_id, id, to, &reason, &actor)
        .await
        .map_err(|e| match e {
            flywheel_store::WriteError::Invalid(m) => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", m)
            }
            flywheel_store::WriteError::NotFound => {
                ApiError::not_found(format!("no reward {id} in project {project_id}"))
            }
            other => crate::features::write_error(other, "reward"),
        })?;
    Ok(Json(json!(entry)))
}

/// Approves the rewards whose hold ended (nothing reversed them), every `interval` until shutdown.
pub async fn run_holds(state: AppState, interval: std::time::Duration) {
    let mut shutdown = state.shutdown.clone();
    let actor = flywheel_store::Actor {
        label: "system:reward-hold".into(),
        source_ip: None,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = state
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let due = match state.store.rewards_due(&now, 1000).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reward holds cannot be read");
                continue;
            }
        };
        for (project_id, id) in due {
            if let Err(e) = state
                .store
                .transition_reward(project_id, id, "approved", "hold period over", &actor)
                .await
            {
                // Reversed or approved by hand meanwhile: nothing to do.
                tracing::debug!(project_id, id, error = %e, "reward not approved");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Share links

#[derive(serde::Deserialize)]
struct ShareParams {
    sharer: Option<String>,
    object_type: Option<String>,
    object_id: Option<String>,
}

async fn list_share_links(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ShareParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let links = state
        .store
        .share_links(
            project_id,
            params.sharer.as_deref(),
            params.object_type.as_deref(),
            params.object_id.as_deref(),
        )
        .await?;
    let results: Vec<Value> = links.iter().map(share_json).collect();
    Ok(Json(json!({ "results": results })))
}

fn share_json(link: &flywheel_store::ShareLink) -> Value {
    let mut v = json!(link);
    v["link"] = json!(format!("/s/{}", link.token));
    v
}

/// `POST …/share-links` `{"sharer", "object_type", "object_id", "url"}`: the sharer's link to the object (made
/// once: asking again answers it, 200).
async fn create_share_link(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    const FIELDS: &[&str] = &["sharer", "object_type", "object_id", "url"];
    let mut errors = crate::experiments::unknown_fields(&body, FIELDS);
    let sharer = text_field(&body, "sharer", true, &mut errors);
    let object_type = text_field(&body, "object_type", true, &mut errors);
    let object_id = text_field(&body, "object_id", true, &mut errors);
    let url = text_field(&body, "url", true, &mut errors);
    if url
        .as_deref()
        .is_some_and(|u| !flywheel_query::growth::valid_url(u))
    {
        errors.push(flywheel_query::FieldError {
            field: "url".into(),
            message: "must be an absolute http:// or https:// URL without spaces".into(),
        });
    }
    let (Some(sharer), Some(object_type), Some(object_id), Some(url)) =
        (sharer, object_type, object_id, url)
    else {
        return Err(ApiError::validation("share link", &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation("share link", &errors));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let (link, created) = state
        .store
        .share_link_for(
            project_id,
            &sharer,
            (&object_type, &object_id),
            &url,
            &random_code(12),
            &actor,
        )
        .await
        .map_err(|e| crate::features::write_error(e, "share link"))?;
    bump(&state);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(share_json(&link))).into_response())
}

/// `GET /s/{token}`: counts the view and redirects to the object with `fw_share={token}`.
async fn share_click(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no share link `{token}`"));
    if check_code(&token).is_err() {
        return Err(not_found());
    }
    let Some(link) = state.store.share_link(&token).await? else {
        return Err(not_found());
    };
    let (ip, user_agent) = visitor(&headers, peer);
    let fp = fingerprint(&state, &ip, &user_agent).await?;
    state.store.record_share_view(link.id, &fp).await?;
    let (base, fragment) = match link.url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (link.url.as_str(), None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut location = format!("{base}{sep}fw_share={}", link.token);
    if let Some(f) = fragment {
        location.push('#');
        location.push_str(f);
    }
    let mut response = StatusCode::FOUND.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The visitor's address (first `X-Forwarded-For` entry, else the peer) and user agent.
fn visitor(headers: &HeaderMap, peer: std::net::SocketAddr) -> (String, String) {
    let ip = crate::capture::client_ip(headers, peer);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ip, user_agent)
}

// ---------------------------------------------------------------------------------------------------------------
// The growth graph

#[derive(serde::Deserialize)]
struct PathParams {
    person: Option<String>,
}

/// `GET …/growth/path?person=<distinct id>`: who brought this person, who brought that one, … back to the root of
/// the chain (referrals, accepted invitations and share-link visits; the earliest edge into each person). Stops at a
/// person met twice (`"cycle": true`) and after 100 steps.
async fn growth_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<PathParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let Some(start) = params.person.filter(|p| !p.is_empty()) else {
        return Err(ApiError::invalid_field(
            "growth path",
            "person",
            "is required: a distinct id",
        ));
    };
    let path = upstream(&state, project_id, &start).await?;
    let steps: Vec<Value> = path
        .steps
        .iter()
        .map(|e| json!({"person": e.to, "via": e.via, "from": e.from, "at": e.at, "context": e.context}))
        .collect();
    Ok(Json(
        json!({"person": start, "root": path.root, "steps": steps, "cycle": path.cycle}),
    ))
}

/// The chain of earliest edges into a person and its ancestors (see `growth_path`).
pub(crate) struct Upstream {
    /// From the person up: each step's `to` is the person brought, `from` who brought them.
    pub steps: Vec<flywheel_store::GraphEdge>,
    /// The distinct id the chain ends at.
    pub root: String,
    /// The chain met a person twice.
    pub cycle: bool,
}

/// Walks the earliest incoming edges from the person of distinct id `start`, at most 100 steps.
pub(crate) async fn upstream(
    state: &AppState,
    project_id: i64,
    start: &str,
) -> Result<Upstream, ApiError> {
    let mut steps = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut who = start.to_owned();
    let mut cycle = false;
    for _ in 0..100 {
        let person = state
            .store
            .person_ids_for(project_id, &[who.as_str()])
            .await?
            .remove(&who);
        let Some(person) = person else { break };
        if !seen.insert(person.clone()) {
            cycle = true;
            break;
        }
        let Some(edge) = state.store.incoming_edge(project_id, &person, &who).await? else {
            break;
        };
        let from = edge.from.clone();
        steps.push(flywheel_store::GraphEdge {
            via: edge.via,
            from: edge.from,
            to: who,
            at: edge.at,
            context: edge.context,
        });
        who = from;
    }
    Ok(Upstream {
        steps,
        root: who,
        cycle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landing_urls_keep_their_query_and_fragment() {
        assert_eq!(
            landing_with("https://x.io/join", "abc", "t1"),
            "https://x.io/join?ref=abc&fw_click=t1"
        );
        assert_eq!(
            landing_with("https://x.io/join?utm=a#top", "abc", "t1"),
            "https://x.io/join?utm=a&ref=abc&fw_click=t1#top"
        );
    }

    #[test]
    fn generated_codes_use_the_alphabet() {
        for _ in 0..100 {
            let c = generated_code();
            assert_eq!(c.len(), CODE_LEN);
            assert!(c.bytes().all(|b| ALPHABET.contains(&b)), "{c}");
            assert!(check_code(&c).is_ok());
        }
    }
}
