//! Webhooks: subscriptions of a project to outbox topics, delivered by a worker with signatures, retries and a
//! dead-letter list.
//!
//! - `GET/POST …/webhooks` (`{"url", "topics": ["reward.*", "pql.qualified", "audit.*", "*"], "description"?,
//!   "active"?}`; the answer to `POST` carries the signing `secret`, shown this once), `GET/PATCH/DELETE
//!   …/webhooks/{id}`, `POST …/webhooks/{id}/rotate-secret` (a new secret, shown once); every change audited.
//! - `GET …/webhooks/{id}/deliveries?status=pending|delivered|dead&limit=` (the delivery log, newest first; `dead`
//!   is the dead-letter list), `GET …/deliveries/{delivery_id}` (with every attempt: its id, time, status code or
//!   error, duration), `POST …/deliveries/{delivery_id}/replay` (a dead or delivered message goes back in the queue
//!   with fresh attempts).
//!
//! **Delivery.** Messages are the project's outbox entries (rollbacks, reward transitions, PQL thresholds, every
//! audited change as `audit.<action>`, …) whose topic matches a pattern of the subscription, in outbox order per
//! endpoint: a message is attempted only once every earlier one was delivered or given up (dead). A `POST` of
//! `{"id", "topic", "project_id", "created_at", "payload"}` with the headers `Flywheel-Message-Id` (the outbox id,
//! the same on every attempt: the receiver's idempotency key), `Flywheel-Attempt-Id` (unique per attempt),
//! `Flywheel-Topic` and `Flywheel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (receivers check the HMAC and refuse a `t` far from now: replay-safe). A 2xx answer within 10 s delivers it;
//! anything else is retried after `retry_base × 2^(attempt−1)` (at most 6 h) times a random factor in
//! [0.75, 1.25]; after `max_attempts` (default 18: with the 10 s base the schedule spans at least ≈ 35 h) the
//! message is dead. Delivery state is in the store, so a restart resumes where it stopped.
//!
//! **SSRF.** Every address the host resolves to is checked before connecting, and the connection goes to the
//! checked address (no second lookup): loopback, private, link-local, unique-local, shared (CGNAT), unspecified,
//! multicast and broadcast addresses are refused unless the server's `webhook_allow` list (CIDRs) contains them.
//! A URL naming such an address literally is refused when the subscription is written.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use flywheel_query::FieldError;
use flywheel_store::{Delivery, Outcome, Webhook, WebhookUpdate};
use hmac::Mac;
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

const MAX_URL: usize = 2048;
const MAX_TOPICS: usize = 20;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// How long an attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages one endpoint gets per round of the worker (then the others get their turn).
const PER_ROUND: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/webhooks",
            get(list).post(create),
        )
        .route(
            "/api/v1/projects/{project_id}/webhooks/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .route(
            "/api/v1/projects/{project_id}/webhooks/{id}/deliveries",
            get(deliveries),
        )
        .route(
            "/api/v1/projects/{project_id}/webhooks/{id}/rotate-secret",
            post(rotate_secret),
        )
        .route(
            "/api/v1/projects/{project_id}/webhooks/{id}/deliveries/{delivery_id}",
            get(delivery),
        )
        .route(
            "/api/v1/projects/{project_id}/webhooks/{id}/deliveries/{delivery_id}/replay",
            post(replay),
        )
}

// ---------------------------------------------------------------------------------------------------------------
// Addresses

/// An allowed network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Why an address may not be called (`None`: a public unicast address).
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_private() {
                Some("a private address")
            } else if a.is_link_local() {
                Some("a link-local address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (carrier-grade NAT) address")
            } else if a.is_unspecified() || o[0] == 0 {
                Some("an unspecified address")
            } else if a.is_multicast() || a.is_broadcast() || o[0] >= 240 {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let first = a.segments()[0];
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_unspecified() {
                Some("an unspecified address")
            } else if a.is_multicast() {
                Some("not a unicast address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a unique-local address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

fn refused(ip: IpAddr, allow: &[Cidr]) -> Option<String> {
    let why = non_public(ip)?;
    if allow.iter().any(|c| c.contains(ip)) {
        return None;
    }
    Some(format!(
        "{ip} is {why}; the server's webhook allow-list (--webhook-allow) does not include it"
    ))
}

/// The parts of a webhook URL.
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if authority.contains('@') {
        return Err("must not carry credentials (user@host)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has an unclosed `[`")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p.parse().map_err(|_| format!("has a bad port `{p}`"))?,
    };
    Ok(Target {
        https,
        host: host.to_lowercase(),
        port,
        path,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers

/// A signing secret: 256 random bits.
fn new_secret() -> String {
    format!(
        "whsec_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `POST …/webhooks/{id}/rotate-secret`: a new signing secret, shown this once; the old one stops signing at once.
async fn rotate_secret(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    let secret = new_secret();
    let actor = crate::features::actor(&caller, &headers, peer);
    state
        .store
        .rotate_webhook_secret(project_id, w.id, &secret, &actor)
        .await?;
    Ok(Json(json!({"id": w.id, "secret": secret})))
}

/// Tells the captured-events announcer that subscriptions changed.
fn changed(state: &AppState) {
    state
        .webhook_epoch
        .fetch_add(1, std::sync::atomic::Ordering::Release);
}

fn webhook_json(w: &Webhook) -> Value {
    json!(w)
}

async fn found(state: &AppState, project_id: i64, id: &str) -> Result<Webhook, ApiError> {
    let missing = || ApiError::not_found(format!("no webhook `{id}` in project {project_id}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    state
        .store
        .webhook(project_id, id)
        .await?
        .ok_or_else(missing)
}

/// Checks the writable fields of a body (all of them for a creation).
fn read_fields(
    body: &Map<String, Value>,
    creating: bool,
    allow: &[Cidr],
) -> Result<WebhookUpdate, ApiError> {
    let mut errors = crate::experiments::unknown_fields(
        body,
        &["url", "topics", "events", "description", "active"],
    );
    let mut problem = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.into(),
            message,
        })
    };
    let mut change = WebhookUpdate::default();
    match body.get("url") {
        None if creating => problem("url", "is required".into()),
        None => {}
        Some(Value::String(u)) if u.chars().count() <= MAX_URL => match parse_url(u) {
            Err(why) => problem("url", why),
            Ok(t) => {
                let literal: Option<IpAddr> = t.host.parse().ok();
                match literal.and_then(|ip| refused(ip, allow)) {
                    Some(why) => problem("url", format!("is refused: {why}")),
                    None => change.url = Some(u.clone()),
                }
            }
        },
        Some(_) => problem(
            "url",
            format!("must be a URL of at most {MAX_URL} characters"),
        ),
    }
    let with_events = body.get("events").is_some_and(|e| !e.is_null());
    match body.get("topics") {
        None if creating && !with_events => problem(
            "topics",
            "is required (or `events`): the outbox topics to deliver (e.g. `reward.*`, `pql.qualified`, `*`)"
                .into(),
        ),
        None if creating => change.topics = Some(Vec::new()),
        None => {}
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_TOPICS => {
            let mut topics = Vec::new();
            for (i, v) in items.iter().enumerate() {
                let ok = v.as_str().filter(|t| {
                    !t.is_empty()
                        && t.len() <= 200
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-$*".contains(c))
                        && (!t.contains('*')
                            || *t == "*"
                            || (t.ends_with(".*") && t.matches('*').count() == 1))
                });
                match ok {
                    Some(t) => topics.push(t.to_owned()),
                    None => problem(
                        &format!("topics[{i}]"),
                        "must be a topic (`reward.approved`), a prefix (`reward.*`) or `*`".into(),
                    ),
                }
            }
            change.topics = Some(topics);
        }
        Some(_) => problem(
            "topics",
            format!("must be a list of 1 to {MAX_TOPICS} topics"),
        ),
    }
    match body.get("events") {
        None => {}
        Some(Value::Null) => change.events = Some(Value::Null),
        Some(v) => {
            let problems = crate::event_hooks::check(v);
            if problems.is_empty() {
                change.events = Some(v.clone());
            }
            for p in problems {
                problem(&p.field, p.message);
            }
        }
    }
    match body.get("description") {
        None => {}
        Some(Value::String(d)) if d.chars().count() <= 1000 => change.description = Some(d.clone()),
        Some(_) => problem(
            "description",
            "must be a string of at most 1000 characters".into(),
        ),
    }
    match body.get("active") {
        None => {}
        Some(Value::Bool(b)) => change.active = Some(*b),
        Some(_) => problem("active", "must be true or false".into()),
    }
    if errors.is_empty() {
        Ok(change)
    } else {
        Err(ApiError::validation("webhook", &errors))
    }
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let hooks = state.store.webhooks(project_id).await?;
    Ok(Json(
        json!({"results": hooks.iter().map(webhook_json).collect::<Vec<_>>()}),
    ))
}

async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let change = read_fields(&body, true, &state.config.webhook_allow)?;
    let secret = new_secret();
    let actor = crate::features::actor(&caller, &headers, peer);
    let w = state
        .store
        .create_webhook(project_id, &secret, &change, &actor)
        .await?;
    changed(&state);
    let mut v = webhook_json(&w);
    v["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    Ok(Json(webhook_json(&found(&state, project_id, &id).await?)))
}

async fn update(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    let change = read_fields(&body, false, &state.config.webhook_allow)?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let w = state
        .store
        .update_webhook(project_id, w.id, &change, &actor)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook `{id}`")))?;
    changed(&state);
    Ok(Json(webhook_json(&w)))
}

async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    state.store.delete_webhook(project_id, w.id, &actor).await?;
    changed(&state);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct DeliveryParams {
    status: Option<String>,
    limit: Option<i64>,
}

fn delivery_json(d: &Delivery) -> Value {
    let mut v = json!(d);
    v["payload"] = d.payload.clone();
    v
}

async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, id)): Path<(String, String)>,
    Query(params): Query<DeliveryParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    if let Some(s) = params.status.as_deref() {
        if !["pending", "delivered", "dead"].contains(&s) {
            return Err(ApiError::invalid_field(
                "webhook delivery list",
                "status",
                "must be pending, delivered or dead",
            ));
        }
    }
    let limit = crate::experiments::limit_param(params.limit, 100, "webhook delivery list")?;
    let list = state
        .store
        .webhook_deliveries(w.id, params.status.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({"results": list.iter().map(delivery_json).collect::<Vec<_>>()}),
    ))
}

async fn delivery_of(
    state: &AppState,
    w: &Webhook,
    delivery_id: &str,
) -> Result<(Delivery, Vec<flywheel_store::Attempt>), ApiError> {
    let missing =
        || ApiError::not_found(format!("no delivery `{delivery_id}` of webhook {}", w.id));
    let did: i64 = delivery_id.parse().map_err(|_| missing())?;
    state
        .store
        .webhook_delivery(w.id, did)
        .await?
        .ok_or_else(missing)
}

async fn delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, id, delivery_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    let (d, attempts) = delivery_of(&state, &w, &delivery_id).await?;
    let mut v = delivery_json(&d);
    v["attempt_log"] = json!(attempts);
    Ok(Json(v))
}

async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, id, delivery_id)): Path<(String, String, String)>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let w = found(&state, project_id, &id).await?;
    let (d, _) = delivery_of(&state, &w, &delivery_id).await?;
    if !state.store.replay_webhook_delivery(w.id, d.id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pending",
            format!("delivery {} is still pending: it is being attempted", d.id),
        ));
    }
    let (d, _) = delivery_of(&state, &w, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery_json(&d))))
}

// ---------------------------------------------------------------------------------------------------------------
// The worker

/// The wait before attempt `attempt + 1` after `attempt` failures: exponential, capped, with jitter.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base
        .checked_mul(1u32 << attempt.saturating_sub(1).min(20))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF);
    let jitter = 0.75 + (uuid::Uuid::new_v4().as_u128() % 10_000) as f64 / 20_000.0;
    exp.mul_f64(jitter)
}

/// The signature header's value for a body sent at `t` (unix seconds).
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers every endpoint's due messages, until shutdown. Endpoints are worked on concurrently (one task each at
/// most), each in its own outbox order.
pub async fn run(state: AppState) {
    let busy: Arc<Mutex<HashSet<i64>>> = Default::default();
    let mut shutdown = state.shutdown.clone();
    loop {
        match state.store.active_webhooks().await {
            Ok(hooks) => {
                for w in hooks {
                    if !busy.lock().expect("busy set").insert(w.id) {
                        continue;
                    }
                    let (state, busy) = (state.clone(), busy.clone());
                    tokio::spawn(async move {
                        let id = w.id;
                        if let Err(e) = pump(&state, w).await {
                            tracing::warn!(webhook = id, error = %e.message, "webhooks: delivery round failed");
                        }
                        busy.lock().expect("busy set").remove(&id);
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the subscriptions"),
        }
        tokio::select! {
            _ = tokio::time::sleep(state.config.webhook_poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn now_text(state: &AppState) -> String {
    state
        .clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One endpoint's round: its due messages in order, stopping at one that must wait for a retry. Several nodes
/// sharing the metadata take turns per endpoint (`Store::lock_webhook`): each message is sent by one of them.
async fn pump(state: &AppState, w: Webhook) -> Result<(), ApiError> {
    let Some(lock) = state.store.lock_webhook(w.id).await? else {
        return Ok(());
    };
    let result = pump_locked(state, w).await;
    lock.release().await;
    result
}

async fn pump_locked(state: &AppState, mut w: Webhook) -> Result<(), ApiError> {
    for _ in 0..PER_ROUND {
        // The subscription as it is now (topics and cursor for taking the next message).
        if !refresh(state, &mut w).await? {
            return Ok(());
        }
        let head = match state.store.webhook_head(w.id).await? {
            Some(d) => d,
            None => match state.store.take_webhook_message(&mut w).await? {
                Some(d) => d,
                None => return Ok(()),
            },
        };
        if head.next_attempt_at > now_text(state) {
            return Ok(());
        }
        // Read again once the message is known: a secret rotated (a URL changed, a deactivation) while it was taken
        // applies to it — a message created after a rotation is never signed with the old secret.
        if !refresh(state, &mut w).await? {
            return Ok(());
        }
        let outcome = attempt(state, &w, &head).await?;
        if !matches!(outcome, Outcome::Delivered | Outcome::Dead) {
            return Ok(());
        }
    }
    Ok(())
}

/// Brings `w` up to the stored subscription; false when it is gone or inactive.
async fn refresh(state: &AppState, w: &mut Webhook) -> Result<bool, ApiError> {
    match state.store.webhook(w.project_id, w.id).await? {
        Some(fresh) if fresh.active => {
            w.url = fresh.url;
            w.secret = fresh.secret;
            w.topics = fresh.topics;
            w.cursor = w.cursor.max(fresh.cursor);
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn attempt(state: &AppState, w: &Webhook, d: &Delivery) -> Result<Outcome, ApiError> {
    let mut payload = d.payload.clone();
    // A captured event's list of matched subscriptions is the worker's business.
    if let Some(p) = payload
        .as_object_mut()
        .filter(|_| d.topic.starts_with("event."))
    {
        p.remove("webhooks");
    }
    let body = json!({"id": d.outbox_id, "topic": d.topic, "project_id": w.project_id,
                      "created_at": d.message_created_at, "payload": payload})
    .to_string();
    let attempt_id = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let sent = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        send(state, w, d, &attempt_id, Bytes::from(body)),
    )
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())));
    let duration_ms = started.elapsed().as_millis() as i64;
    let (status, error) = match sent {
        Ok(code) if (200..300).contains(&code) => (Some(i64::from(code)), None),
        Ok(code) => (Some(i64::from(code)), Some(format!("answered {code}"))),
        Err(e) => (None, Some(e)),
    };
    let attempts = d.attempts as u32 + 1;
    let outcome = if error.is_none() {
        Outcome::Delivered
    } else if attempts >= state.config.webhook_max_attempts {
        Outcome::Dead
    } else {
        let wait = backoff(state.config.webhook_retry_base, attempts);
        let at = state.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
        Outcome::Retry(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    metrics::counter!(crate::metrics_names::WEBHOOK_ATTEMPTS,
        "outcome" => match outcome { Outcome::Delivered => "delivered", Outcome::Retry(_) => "retry", Outcome::Dead => "dead" })
    .increment(1);
    state
        .store
        .record_webhook_attempt(
            d.id,
            &attempt_id,
            status,
            error.as_deref(),
            duration_ms,
            &outcome,
        )
        .await?;
    Ok(outcome)
}

fn tls_connector() -> &'static tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    })
}

/// Sends one attempt to a checked address; the answer's status code, or why there was none.
async fn send(
    state: &AppState,
    w: &Webhook,
    d: &Delivery,
    attempt_id: &str,
    body: Bytes,
) -> Result<u16, String> {
    let target = parse_url(&w.url)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let allow = &state.config.webhook_allow;
    // Every address must be allowed (a name that resolves to one private address is refused outright).
    if let Some(why) = addrs.iter().find_map(|a| refused(a.ip(), allow)) {
        return Err(format!("refused: {why}"));
    }
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{} resolves to no address", target.host))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let t = state.clock.now().timestamp();
    let host_header =
        if (target.https && target.port == 443) || (!target.https && target.port == 80) {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.port)
        };
    let request = hyper::Request::post(&target.path)
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "Flywheel-Webhooks/1")
        .header("flywheel-message-id", d.outbox_id.to_string())
        .header("flywheel-attempt-id", attempt_id)
        .header("flywheel-topic", &d.topic)
        .header("flywheel-signature", signature(&w.secret, t, &body))
        .body(http_body_util::Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let status = if target.https {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("bad TLS name {}: {e}", target.host))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        exchange(hyper_util::rt::TokioIo::new(tls), request).await?
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    Ok(status)
}

async fn exchange<I>(
    io: I,
    request: hyper::Request<http_body_util::Full<Bytes>>,
) -> Result<u16, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"));
    driver.abort();
    Ok(answer?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
            ("2001:4860:4860::8888", true),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(non_public(ip).is_none(), public, "{ip}");
        }
        let allow: Vec<Cidr> = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(refused("127.0.0.5".parse().unwrap(), &allow), None);
        assert_eq!(refused("::1".parse().unwrap(), &allow), None);
        assert!(refused("10.0.0.1".parse().unwrap(), &allow).is_some());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn urls_are_parsed() {
        let t = parse_url("https://Hooks.Example.com/in?x=1#frag").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path.as_str()),
            (true, "hooks.example.com", 443, "/in?x=1")
        );
        let t = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@x/",
            "http://x:99999/",
            "http://x y/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_secs(10);
        for attempt in 1..=18 {
            let nominal = base
                .checked_mul(1 << (attempt - 1).min(20))
                .unwrap()
                .min(MAX_BACKOFF);
            let d = backoff(base, attempt);
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{attempt}: {d:?}"
            );
        }
        // The default schedule spans more than a day even with the shortest jitter.
        let least: Duration = (1..18)
            .map(|a| {
                base.checked_mul(1 << (a - 1))
                    .unwrap()
                    .min(MAX_BACKOFF)
                    .mul_f64(0.75)
            })
            .sum();
        assert!(least > Duration::from_secs(24 * 3600), "{least:?}");
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // Computed independently (Python's hmac module).
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }
}
