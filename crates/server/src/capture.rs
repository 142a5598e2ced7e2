//! PostHog- and Segment-compatible capture endpoints.
//!
//! Decoding and normalisation live in the pure `flywheel-capture` crate; this module reads the body within the
//! route's limit, resolves tokens to projects, drops duplicates, and acknowledges only after the intake log has
//! made the batch durable. A bad event is dropped and reported while the rest of the batch is kept (SDKs do not
//! retry 4xx answers and would lose the whole batch).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use base64::Engine as _;
use flywheel_capture::{CapturedEvent, EventError, Payload, RawRequest, SegmentCall};
use flywheel_engine::Event;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics_names as m;
use crate::state::AppState;

/// The wait capture asks for when the ClickHouse spool is full.
const SPOOL_RETRY_AFTER_SECS: u64 = 10;

/// Batch endpoints accept up to 20 MB on the wire.
pub const BATCH_LIMIT: usize = 20 * 1024 * 1024;
/// Single-event endpoints accept up to 2 MB on the wire.
pub const SINGLE_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Clone, Copy)]
enum Flavor {
    PostHog,
    Segment(SegmentCall),
}

/// PostHog's capture paths and their size limits.
pub(crate) const POSTHOG_ROUTES: [(&str, usize); 6] = [
    ("/batch", BATCH_LIMIT),
    ("/e", BATCH_LIMIT),
    ("/i/v0/e", BATCH_LIMIT),
    ("/capture", BATCH_LIMIT),
    ("/track", BATCH_LIMIT),
    ("/engage", SINGLE_LIMIT),
];

/// Segment's capture paths, their calls and size limits.
pub(crate) const SEGMENT_ROUTES: [(&str, SegmentCall, usize); 7] = [
    ("/v1/batch", SegmentCall::Batch, BATCH_LIMIT),
    ("/v1/track", SegmentCall::Track, SINGLE_LIMIT),
    ("/v1/identify", SegmentCall::Identify, SINGLE_LIMIT),
    ("/v1/group", SegmentCall::Group, SINGLE_LIMIT),
    ("/v1/alias", SegmentCall::Alias, SINGLE_LIMIT),
    ("/v1/page", SegmentCall::Page, SINGLE_LIMIT),
    ("/v1/screen", SegmentCall::Screen, SINGLE_LIMIT),
];

/// The capture routes, with and without trailing slash, for GET, POST and OPTIONS (CORS preflight).
pub fn router() -> Router<AppState> {
    let methods = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::OPTIONS);
    let mut router = Router::new();
    for (path, limit) in POSTHOG_ROUTES {
        let handler = move |s, c, m, u, h, b| capture(s, c, m, u, h, b, Flavor::PostHog, limit);
        router = router
            .route(path, on(methods, handler))
            .route(&format!("{path}/"), on(methods, handler));
    }
    for (path, call, limit) in SEGMENT_ROUTES {
        let handler =
            move |s, c, m, u, h, b| capture(s, c, m, u, h, b, Flavor::Segment(call), limit);
        router = router
            .route(path, on(methods, handler))
            .route(&format!("{path}/"), on(methods, handler));
    }
    router
}

#[allow(clippy::too_many_arguments)]
async fn capture(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    flavor: Flavor,
    limit: usize,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    match capture_inner(&state, peer, method, uri, headers, body, flavor, limit).await {
        Ok(resp) => resp,
        Err(err) => {
            metrics::counter!(m::EVENTS_DROPPED, m::LABEL_REASON => err.code).increment(1);
            err.into_response()
        }
    }
}

/// The parts of an HTTP request the capture crate's decoders read.
pub(crate) fn raw_request<'a>(
    method: &Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a [u8],
    basic_auth_user: Option<&'a str>,
) -> RawRequest<'a> {
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    RawRequest {
        method: if method == Method::GET {
            flywheel_capture::Method::Get
        } else {
            flywheel_capture::Method::Post
        },
        query: uri.query(),
        content_type: header_str(header::CONTENT_TYPE),
        content_encoding: header_str(header::CONTENT_ENCODING),
        body,
        basic_auth_user,
    }
}

/// A request the capture crate refused as a whole, as an API error with its status and code.
pub(crate) fn request_error(err: flywheel_capture::RequestError) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
        err.code(),
        err.to_string(),
    )
}

#[allow(clippy::too_many_arguments)]
async fn capture_inner(
    state: &AppState,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    flavor: Flavor,
    limit: usize,
) -> Result<Response, ApiError> {
    let body = read_body(body, limit).await?;
    let basic_user = basic_auth_user(&headers);
    let raw = raw_request(&method, &uri, &headers, &body, basic_user.as_deref());
    let now = state.clock.now();
    let limits = &state.config.capture_limits;
    let parsed = match flavor {
        Flavor::PostHog => flywheel_capture::parse_posthog(&raw, limits, now),
        Flavor::Segment(call) => flywheel_capture::parse_segment(call, &raw, limits, now),
    }
    .map_err(request_error)?;
    let Payload {
        events,
        mut rejected,
        beacon,
        ..
    } = parsed;
    let source = match flavor {
        Flavor::PostHog => "posthog",
        Flavor::Segment(_) => "segment",
    };

    // Resolve every distinct token once (a request nearly always carries one).
    let mut projects: Vec<(String, Option<i64>)> = Vec::with_capacity(1);
    let mut event_projects = Vec::with_capacity(events.len());
    for ev in &events {
        let project = match projects.iter().find(|(t, _)| *t == ev.token) {
            Some((_, p)) => *p,
            None => {
                let p = state.tokens.project_for(&state.store, &ev.token).await?;
                projects.push((ev.token.clone(), p));
                p
            }
        };
        event_projects.push(project);
    }
    if !events.is_empty() && projects.iter().all(|(_, p)| p.is_none()) {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "unknown API key: no project has this token (use the project's public API key)",
        ));
    }

    // Each project's ingestion policy (the server's settings with the project's overrides), and the address in the
    // form it keeps.
    let raw_ip = client_ip(&headers, peer);
    let mut policies: Vec<(i64, Arc<crate::privacy::Policy>, Option<String>)> =
        Vec::with_capacity(1);
    for pid in projects.iter().filter_map(|(_, p)| *p) {
        let policy = state.policies.get(state, pid).await?;
        let ip = policy.privacy.capture_ip.apply(&raw_ip);
        policies.push((pid, policy, ip));
    }
    // Events per second per project: the request is taken whole or refused whole (nothing written).
    for (pid, policy, _) in &policies {
        let n = event_projects.iter().filter(|p| **p == Some(*pid)).count() as u64;
        if let Err(secs) =
            state
                .limits
                .capture
                .take_limited(&pid.to_string(), n, policy.capture_events_per_second)
        {
            return Err(crate::limits::refused(
                "capture",
                format!("the events of project {pid}"),
                secs,
            ));
        }
    }

    let received_us = now.timestamp_micros();
    let mut records = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut in_request = crate::state::KeySet::default();
    let mut duplicates = 0usize;
    let candidate_keys: Vec<(i64, u128)> = events
        .iter()
        .zip(&event_projects)
        .map(|(ev, p)| (p.unwrap_or(0), ev.uuid.as_u128()))
        .collect();
    let seen_before = state.dedupe.seen_all(&candidate_keys);
    for ((ev, project), seen) in events.into_iter().zip(event_projects).zip(seen_before) {
        let Some(project_id) = project else {
            rejected.push(EventError {
                index: ev.index,
                code: "invalid_token",
                message: format!("batch[{}].token: unknown API key", ev.index),
            });
            continue;
        };
        let key = (project_id, ev.uuid.as_u128());
        if !in_request.insert(key) || seen {
            duplicates += 1;
            continue;
        }
        keys.push(key);
        let Some((_, policy, ip)) = policies.iter().find(|(p, _, _)| *p == project_id) else {
            continue;
        };
        records.push(to_record(
            project_id,
            ev,
            ip.as_deref(),
            received_us,
            &policy.privacy,
        ));
    }

    if !records.is_empty() {
        if let Some(spool) = &state.spool {
            // ClickHouse has been away long enough that the unshipped log reached its bound: the SDK keeps the
            // events and retries, rather than this node filling its disk.
            if spool.full(state.intake.committed_lsn()) {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "spool_full",
                    "the event store is unreachable and this node's spool is full; retry later",
                )
                .with_retry_after(SPOOL_RETRY_AFTER_SECS));
            }
        }
        state
            .intake
            .append(&records)
            .await
            .map_err(ApiError::unavailable)?;
        state.dedupe.remember(&keys);
    }

    metrics::counter!(m::EVENTS_ACCEPTED, m::LABEL_SOURCE => source)
        .increment(records.len() as u64);
    if duplicates > 0 {
        metrics::counter!(m::EVENTS_DUPLICATE, m::LABEL_SOURCE => source)
            .increment(duplicates as u64);
    }
    for err in &rejected {
        metrics::counter!(m::EVENTS_DROPPED, m::LABEL_REASON => err.code).increment(1);
    }
    if !rejected.is_empty() {
        tracing::debug!(
            rejected = rejected.len(),
            accepted = records.len(),
            "capture dropped bad events"
        );
    }
    if beacon {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    rejected.sort_by_key(|e| e.index);
    let rejected: Vec<Value> = rejected
        .iter()
        .map(|e| json!({"index": e.index, "code": e.code, "message": e.message}))
        .collect();
    let mut body = json!({
        "accepted": records.len(),
        "duplicates": duplicates,
        "rejected": rejected,
    });
    match flavor {
        Flavor::PostHog => body["status"] = json!(1),
        Flavor::Segment(_) => body["success"] = json!(true),
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Reads the body, refusing (413) anything above `limit` without buffering it all.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let too_large = std::error::Error::source(&err)
            .is_some_and(|src| src.is::<http_body_util::LengthLimitError>())
            || err.to_string().contains("length limit");
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than the {} MB this endpoint accepts",
                    limit / (1024 * 1024)
                ),
            )
        } else {
            ApiError::bad_request(
                "body_read_failed",
                format!("could not read the request body: {err}"),
            )
        }
    })
}

fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next().unwrap_or("");
    (!user.is_empty()).then(|| user.to_owned())
}

/// The client's address: the first `X-Forwarded-For` entry, else the peer.
pub(crate) fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| peer.ip().to_string())
}

fn to_record(
    project_id: i64,
    ev: CapturedEvent,
    ip: Option<&str>,
    received_us: i64,
    privacy: &crate::privacy::Privacy,
) -> Event {
    let mut properties = privacy.clean(ev.properties);
    // `$ip` from the connection unless the client set one (a textual check: a nested `"$ip"` key also counts).
    if let Some(ip) = ip.filter(|_| !properties.contains("\"$ip\"")) {
        let ip = Value::String(ip.to_owned()).to_string();
        let rest = &properties[1..];
        let sep = if rest.trim_start().starts_with('}') {
            ""
        } else {
            ","
        };
        properties = format!("{{\"$ip\":{ip}{sep}{rest}");
    }
    Event {
        uuid: ev.uuid.as_u128(),
        project_id,
        timestamp_us: ev.timestamp.timestamp_micros(),
        received_us,
        event: ev.event,
        distinct_id: ev.distinct_id,
        properties,
    }
}
