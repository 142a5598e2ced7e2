//! OpenFeature Remote Evaluation Protocol 0.3.0: `POST /ofrep/v1/evaluate/flags/{key}` and the bulk
//! `POST /ofrep/v1/evaluate/flags`, so any OpenFeature SDK with an OFREP provider evaluates Flywheel's features.
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
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flywheel_flags::{FeatureResult, Source};
use serde_json::{json, Map, Value};

use crate::exposure::Exposure;
use crate::metrics_names as m;
use crate::serving::{
    if_none_match, resolve_key, strong_etag, Access, FlagInfo, RuleKind, Snapshot,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ofrep/v1/evaluate/flags", post(bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(single))
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
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
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

/// The success object of one evaluated flag.
fn success(info: &FlagInfo, snapshot: &Snapshot, result: &FeatureResult<'_>) -> Value {
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(info.version));
    metadata.insert("environment".into(), json!(snapshot.environment));
    metadata.insert("source".into(), json!(result.source.as_str()));
    if !info.description.is_empty() {
        metadata.insert("description".into(), json!(info.description));
    }
    if !info.owner.is_empty() {
        metadata.insert("owner".into(), json!(info.owner));
    }
    if !info.tags.is_empty() {
        metadata.insert("tags".into(), json!(info.tags.join(",")));
    }
    if !info.served {
        return json!({"key": info.key, "reason": "DISABLED", "variant": "disabled", "metadata": metadata});
    }
    let rule = info.rules.get(result.rule_id).map(|&(_, kind)| kind);
    let (reason, variant) = match (result.source, rule) {
        (Source::Experiment, _) => (
            "SPLIT",
            result
                .experiment_result
                .as_ref()
                .map(|x| x.key.to_owned())
                .unwrap_or_default(),
        ),
        (Source::Force, Some(RuleKind::Rollout)) => ("SPLIT", result.rule_id.to_owned()),
        (Source::Force, _) => ("TARGETING_MATCH", result.rule_id.to_owned()),
        (Source::DefaultValue, _) if info.rules.is_empty() => ("STATIC", "default".to_owned()),
        (Source::Prerequisite, _) => ("TARGETING_MATCH", "prerequisite".to_owned()),
        _ => ("TARGETING_MATCH", "default".to_owned()),
    };
    if !result.rule_id.is_empty() {
        metadata.insert("ruleId".into(), json!(result.rule_id));
    }
    let mut out =
        json!({"key": info.key, "reason": reason, "variant": variant, "metadata": metadata});
    // `null` has no OFREP type: the provider falls back to the code default.
    if !result.value.is_null() {
        out["value"] = result.value.clone();
    }
    out
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
    let ctx = flywheel_flags::EvalContext::new(&attributes);
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
    Ok(Json(success(info, &snapshot, &result)).into_response())
}

async fn bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let access = authorize(&state, &headers).await?;
    let (targeting_key, attrs) = context(&body, None)?;
    let snapshot = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    // The answer depends on the flags and on the context: the ETag covers both.
    let context_text = Value::Object(attrs.clone()).to_string();
    let etag = strong_etag(&[snapshot.etag.as_bytes(), context_text.as_bytes()]);
    if if_none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let attributes = flywheel_flags::Attributes::from_map(attrs);
    let ctx = flywheel_flags::EvalContext::new(&attributes);
    let now_us = state.clock.now().timestamp_micros();
    let flags: Vec<Value> = snapshot
        .flags
        .iter()
        .map(|info| {
            let result = snapshot.set.evaluate(&info.key, &ctx);
            record_exposure(&state, &access, &targeting_key, info, &result, now_us);
            success(info, &snapshot, &result)
        })
        .collect();
    metrics::counter!(m::FLAG_EVALUATIONS, m::LABEL_ENDPOINT => "ofrep")
        .increment(flags.len() as u64);
    let body = json!({
        "flags": flags,
        "metadata": {"environment": snapshot.environment, "version": snapshot.etag.trim_matches('"')},
    });
    Ok((StatusCode::OK, [(header::ETAG, etag)], Json(body)).into_response())
}
