//! OpenFeature Remote Evaluation Protocol 0.3.0: `POST /ofrep/v1/evaluate/flags/{key}` and the bulk
//! `POST /ofrep/v1/evaluate/flags`, so any OpenFeature SDK with an OFREP provider evaluates Flywheel's features;
//! bulk answers advertise `GET /ofrep/v1/events/{key}`, a server-sent-events stream of change notifications.
//!
//! Credentials: `Authorization: Bearer <key>` or `X-API-Key: <key>`, an SDK client key (its environment) or a
//! project API key (production). The context's `targetingKey` is required (the spec's schema says so) and becomes
//! the `id` attribute; every other context field is an attribute as given.
//!
//! Reasons: `STATIC` for a feature without rules, `TARGETING_MATCH` when a force rule matched or rules were
//! evaluated and none matched (the spec has no `DEFAULT`), `SPLIT` for rollouts and experiments, `DISABLED` for a
//! feature switched off in the environment (no value: the provider uses the code default). The variant names what
//! decided: the rule id, the experiment's variation key, or `default`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flywheel_flags::{FeatureResult, Source};
use serde_json::{json, Map, Value};

use crate::exposure::Exposure;
use crate::metrics_names as m;
use crate::serving::{
    if_none_match, push_json, push_json_str, resolve_key, strong_etag, Access, FlagInfo, RuleKind,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ofrep/v1/evaluate/flags", post(bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(single))
        .route("/ofrep/v1/events/{key}", axum::routing::get(events))
}

/// The credential of a request, as sent (for the event stream's address).
fn credential(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// RFC 3986's unreserved characters stay, everything else is percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `GET /ofrep/v1/events/{key}`: the change notifications a bulk answer advertises in `eventStreams` (OFREP
/// ADR-0008). A `refetchEvaluation` message, with the flag configuration's ETag and last-modified time, whenever
/// the key's environment changes. EventSource cannot send headers, so the (public, SDK) key is in the path, as in
/// GrowthBook's `/sub/{client_key}`.
async fn events(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Response, Failure> {
    let access = resolve_key(&state, &key).await?.ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "GENERAL",
            "unknown or revoked key: use an SDK client key or the project API key",
        )
    })?;
    Ok(crate::serving::change_stream(state, access, |snapshot, _| {
        let etag = snapshot.etag.trim_matches('"').to_owned();
        let mut data = json!({"type": "refetchEvaluation", "etag": etag});
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&snapshot.date_updated) {
            data["lastModified"] = json!(t.timestamp().max(0));
        }
        let event = axum::response::sse::Event::default().data(data.to_string());
        Some((etag, event))
    })
    .await?)
}

/// An OFREP error response.
struct Failure {
    status: StatusCode,
    /// The flag key (single evaluation); `None` for bulk failures and authentication errors.
    key: Option<String>,
    code: &'static str,
    details: String,
    retry_after: Option<u64>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Self {
        Self {
            status,
            key: None,
            code,
            details: details.into(),
            retry_after: None,
        }
    }

    fn for_key(mut self, key: Option<&str>) -> Self {
        self.key = key.map(str::to_owned);
        self
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut body = json!({"errorCode": self.code, "errorDetails": self.details});
        if let Some(k) = &self.key {
            body["key"] = json!(k);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<crate::error::ApiError> for Failure {
    fn from(e: crate::error::ApiError) -> Self {
        tracing::error!(error = ?e, "OFREP evaluation failed");
        Failure::new(e.status, "GENERAL", e.message)
    }
}

/// The credential, checked and rate limited.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Access, Failure> {
    let key = credential(headers).ok_or_else(|| {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                "GENERAL",
                "missing credentials: send an SDK client key as `Authorization: Bearer <key>` or `X-API-Key`",
            )
        })?;
    let access = resolve_key(state, key).await?.ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "GENERAL",
            "unknown or revoked key: use an SDK client key or the project API key",
        )
    })?;
    if let Err(secs) = state.flags.limiter.check(key) {
        metrics::counter!(m::SDK_RATE_LIMITED, m::LABEL_ENDPOINT => "ofrep").increment(1);
        let mut f = Failure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "GENERAL",
            format!("rate limit exceeded for this key; retry in {secs} s"),
        );
        f.retry_after = Some(secs);
        return Err(f);
    }
    Ok(access)
}

/// The evaluation context of a request body: `(targetingKey, attributes)`.
fn context(body: &[u8], key: Option<&str>) -> Result<(String, Map<String, Value>), Failure> {
    let bad = |code: &'static str, details: String| {
        Failure::new(StatusCode::BAD_REQUEST, code, details).for_key(key)
    };
    let doc: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            "PARSE_ERROR",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut doc) = doc else {
        return Err(bad(
            "INVALID_CONTEXT",
            "the request body must be an object with a `context` object".into(),
        ));
    };
    let mut ctx = match doc.remove("context") {
        Some(Value::Object(c)) => c,
        Some(_) => return Err(bad("INVALID_CONTEXT", "`context` must be an object".into())),
        None => {
            return Err(bad(
                "INVALID_CONTEXT",
                "the request body has no `context` object".into(),
            ))
        }
    };
    let targeting_key = match ctx.get("targetingKey") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(bad(
                "INVALID_CONTEXT",
                "`context.targetingKey` must be a string".into(),
            ))
        }
        None => return Err(bad(
            "TARGETING_KEY_MISSING",
            "`context.targetingKey` is required (it identifies the user for targeting and splits)"
                .into(),
        )),
    };
    ctx.insert("id".into(), json!(targeting_key));
    Ok((targeting_key, ctx))
}

/// Appends the success object of one evaluated flag.
fn write_success(out: &mut Vec<u8>, info: &FlagInfo, result: &FeatureResult<'_>) {
    out.extend_from_slice(b"{\"key\":");
    out.extend_from_slice(info.key_json.as_bytes());
    if !info.served {
        out.extend_from_slice(b",\"reason\":\"DISABLED\",\"variant\":\"disabled\",\"metadata\":{");
        out.extend_from_slice(info.ofrep_metadata.as_bytes());
        out.extend_from_slice(b"}}");
        return;
    }
    let rule = info.rules.get(result.rule_id).map(|(_, kind)| kind);
    let (reason, variant): (&str, &str) = match (result.source, rule) {
        (Source::Experiment, _) => (
            "SPLIT",
            result
                .experiment_result
                .as_ref()
                .map(|x| x.key)
                .unwrap_or(""),
        ),
        (Source::Force, Some(RuleKind::Rollout)) => ("SPLIT", result.rule_id),
        (Source::Force, _) => ("TARGETING_MATCH", result.rule_id),
        (Source::DefaultValue, _) if info.rules.is_empty() => ("STATIC", "default"),
        (Source::Prerequisite, _) => ("TARGETING_MATCH", "prerequisite"),
        _ => ("TARGETING_MATCH", "default"),
    };
    out.extend_from_slice(b",\"reason\":\"");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\",\"variant\":");
    push_json_str(out, variant);
    out.extend_from_slice(b",\"metadata\":{");
    out.extend_from_slice(info.ofrep_metadata.as_bytes());
    out.extend_from_slice(b",\"source\":\"");
    out.extend_from_slice(result.source.as_str().as_bytes());
    out.push(b'"');
    if !result.rule_id.is_empty() {
        out.extend_from_slice(b",\"ruleId\":");
        push_json_str(out, result.rule_id);
    }
    out.push(b'}');
    // `null` has no OFREP type: the provider falls back to the code default.
    if !result.value.is_null() {
        out.extend_from_slice(b",\"value\":");
        push_json(out, result.value);
    }
    out.push(b'}');
}

fn json_response(status: StatusCode, etag: Option<String>, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, e);
    }
    resp
}

fn record_exposure(
    state: &AppState,
    access: &Access,
    targeting_key: &str,
    info: &FlagInfo,
    result: &FeatureResult<'_>,
    now_us: i64,
) {
    if let Some(x) = result
        .experiment_result
        .as_ref()
        .filter(|x| x.in_experiment)
    {
        state.exposures.record(
            &Exposure {
                project_id: access.project_id,
                distinct_id: targeting_key,
                flag: &info.key,
                response: result.value,
                variant: Some(x.key),
                experiment: result.experiment.map(|e| e.key()),
                endpoint: "ofrep",
            },
            now_us,
        );
    }
}

async fn single(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let access = authorize(&state, &headers).await?;
    let (targeting_key, attrs) = context(&body, Some(&key))?;
    let snapshot = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    let Some(info) = snapshot.flag(&key) else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "FLAG_NOT_FOUND",
            format!(
                "flag `{key}` was not found in environment `{}`",
                access.environment
            ),
        )
        .for_key(Some(&key)));
    };
    let attributes = flywheel_flags::Attributes::from_map(attrs);
    let mut sticky = state.sticky.view(access.project_id);
    let mut ctx = flywheel_flags::EvalContext::new(&attributes);
    if let Some(s) = sticky.as_mut() {
        ctx = ctx.with_sticky(s);
    }
    let result = snapshot.set.evaluate(&key, &ctx);
    record_exposure(
        &state,
        &access,
        &targeting_key,
        info,
        &result,
        state.clock.now().timestamp_micros(),
    );
    metrics::counter!(m::FLAG_EVALUATIONS, m::LABEL_ENDPOINT => "ofrep").increment(1);
    let mut out = Vec::with_capacity(256);
    write_success(&mut out, info, &result);
    Ok(json_response(StatusCode::OK, None, out))
}

/// The bulk endpoint's optional query (change-notification metadata; `flagConfigEtag`, any string, is accepted
/// and not needed: every answer is computed from the current snapshot), checked against the spec's types.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkQuery {
    flag_config_last_modified: Option<String>,
}

fn check_bulk_query(q: &BulkQuery) -> Result<(), Failure> {
    if let Some(lm) = &q.flag_config_last_modified {
        let epoch_seconds = !lm.is_empty() && lm.bytes().all(|b| b.is_ascii_digit());
        if !epoch_seconds && chrono::DateTime::parse_from_rfc3339(lm).is_err() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "PARSE_ERROR",
                format!(
                    "`flagConfigLastModified` must be Unix seconds (≥ 0) or an RFC 3339 date-time, got `{lm}`"
                ),
            ));
        }
    }
    Ok(())
}

async fn bulk(
    State(state): State<AppState>,
    query: Result<Query<BulkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let access = authorize(&state, &headers).await?;
    let Query(query) =
        query.map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "PARSE_ERROR", e.body_text()))?;
    check_bulk_query(&query)?;
    // A bulk answer is a prefetch, not an exposure: the app may never read most flags. Exposures are recorded by
    // single evaluations (the app asked for that flag now) or reported by the client when it reads a flag.
    let (_, attrs) = context(&body, None)?;
    let snapshot = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    // The answer depends on the flags and on the context: the ETag covers both (the context as sent).
    let etag = strong_etag(&[snapshot.etag.as_bytes(), &body]);
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let attributes = flywheel_flags::Attributes::from_map(attrs);
    let mut sticky = state.sticky.view(access.project_id);
    let mut ctx = flywheel_flags::EvalContext::new(&attributes);
    if let Some(s) = sticky.as_mut() {
        ctx = ctx.with_sticky(s);
    }
    let mut out = Vec::with_capacity(64 + 200 * snapshot.flags.len());
    out.extend_from_slice(b"{\"flags\":[");
    for (i, info) in snapshot.flags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let result = snapshot.set.evaluate(&info.key, &ctx);
        write_success(&mut out, info, &result);
    }
    out.extend_from_slice(b"],\"metadata\":{\"environment\":");
    push_json_str(&mut out, &snapshot.environment);
    out.extend_from_slice(b",\"version\":");
    push_json_str(&mut out, snapshot.etag.trim_matches('"'));
    // Change notifications: the provider's own origin and this path (so no public address needs configuring).
    out.extend_from_slice(b"},\"eventStreams\":[{\"type\":\"sse\",\"endpoint\":{\"requestUri\":");
    let uri = format!(
        "/ofrep/v1/events/{}",
        // Percent-encoded: keys are unreserved characters, but the address must be valid anyway.
        percent_encoding::utf8_percent_encode(credential(&headers).unwrap_or_default(), UNRESERVED)
    );
    push_json_str(&mut out, &uri);
    out.extend_from_slice(b"},\"inactivityDelaySec\":120}]}");
    metrics::counter!(m::FLAG_EVALUATIONS, m::LABEL_ENDPOINT => "ofrep")
        .increment(snapshot.flags.len() as u64);
    Ok(json_response(StatusCode::OK, Some(etag), out))
}
