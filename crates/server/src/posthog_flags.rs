//! PostHog remote evaluation: `POST /flags` and `/decide`, so PostHog SDKs evaluate Flywheel's features unmodified.
//!
//! The request names a project key (`api_key`/`token`: a project API key serves the production environment, an
//! SDK client key its own environment), a `distinct_id`, and optionally person properties, groups and group
//! properties. Those are merged over what Flywheel has stored for the person and the groups (the request wins),
//! and every live feature of the environment is evaluated by the flag engine.
//!
//! Features are typed; PostHog flags are booleans, variants (strings) and payloads. The mapping follows the one
//! PostHog SDKs apply to typed `/flags?v=4` values: a boolean is `enabled`; a string is enabled with that variant;
//! a number or JSON value is enabled with the value as the JSON payload; `null` (off in this environment) is
//! disabled.
//!
//! Response shapes by endpoint and `v`: `/flags` v≥2 and `/decide` v≥4 → `{"flags": {key: {key, enabled, variant,
//! reason, metadata}}}` (v≥4 also `value`); `/flags` v1 and `/decide` v3 → `featureFlags` + `featureFlagPayloads`;
//! `/decide` v2 → `featureFlags` only; `/decide` v1 → the list of enabled keys.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use axum::routing::MethodFilter;
use axum::Router;
use flywheel_flags::{FeatureResult, Source};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::metrics_names as m;
use crate::serving::{push_json, push_json_str, resolve_key, FlagInfo, RuleKind};
use crate::state::AppState;

const BODY_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Flags,
    Decide,
}

pub fn router() -> Router<AppState> {
    let methods = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::OPTIONS);
    let flags = |s, c, m, u, h, b| handle(s, c, m, u, h, b, Endpoint::Flags);
    let decide = |s, c, m, u, h, b| handle(s, c, m, u, h, b, Endpoint::Decide);
    Router::new()
        .route("/flags", on(methods, flags))
        .route("/flags/", on(methods, flags))
        .route("/decide", on(methods, decide))
        .route("/decide/", on(methods, decide))
        .route(
            "/array/{token}/config",
            axum::routing::get(remote_config_json),
        )
        .route(
            "/array/{token}/config.js",
            axum::routing::get(remote_config_script),
        )
}

/// The remote configuration PostHog's browser SDK loads at start (`/array/{token}/config.js`, then
/// `/array/{token}/config` when the script form is not used): what Flywheel serves of PostHog's settings (no
/// session recording, surveys or site apps), the compression capture accepts, and that flags are to be loaded from
/// `/flags`. An unknown token is a 404 (the SDK then carries on with its defaults).
async fn remote_config(state: &AppState, token: &str) -> Result<Value, ApiError> {
    state
        .tokens
        .project_for(&state.store, token.trim())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_token",
                "no project has this API key (the project's public key, `fwpub_…`)",
            )
        })?;
    Ok(json!({
        "token": token,
        "hasFeatureFlags": true,
        "supportedCompression": ["gzip", "gzip-js"],
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "capturePerformance": false,
        "captureDeadClicks": false,
        "elementsChainAsString": true,
        "heatmaps": false,
        "sessionRecording": false,
        "surveys": false,
        "siteApps": [],
    }))
}

async fn remote_config_json(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let config = remote_config(&state, &token).await?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(config),
    )
        .into_response())
}

async fn remote_config_script(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let config = remote_config(&state, &token).await?;
    // JSON text is a JavaScript expression; the token goes in as a JSON string.
    let script = format!(
        "(function(){{var w=window;w._POSTHOG_REMOTE_CONFIG=w._POSTHOG_REMOTE_CONFIG||{{}};\
         w._POSTHOG_REMOTE_CONFIG[{}]={{config:{config},siteApps:[]}};}})();\n",
        Value::String(token)
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        script,
    )
        .into_response())
}

/// The response shape a request asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// `/decide?v=1`: enabled keys.
    KeyList,
    /// `/decide?v=2`: `featureFlags`.
    Values,
    /// `featureFlags` + `featureFlagPayloads`.
    ValuesAndPayloads,
    /// `flags` records; `typed`: with `value` (v≥4).
    Records { typed: bool },
}

fn shape(endpoint: Endpoint, v: Option<u32>) -> Shape {
    match (endpoint, v.unwrap_or(1)) {
        (Endpoint::Flags, 0 | 1) => Shape::ValuesAndPayloads,
        (Endpoint::Flags, v) => Shape::Records { typed: v >= 4 },
        (Endpoint::Decide, 0 | 1) => Shape::KeyList,
        (Endpoint::Decide, 2) => Shape::Values,
        (Endpoint::Decide, 3) => Shape::ValuesAndPayloads,
        (Endpoint::Decide, v) => Shape::Records { typed: v >= 5 },
    }
}

fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn handle(
    State(state): State<AppState>,
    ConnectInfo(_peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    match evaluate(&state, &method, &uri, &headers, body, endpoint).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn evaluate(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<Vec<u8>, ApiError> {
    let version = match query_param(uri, "v") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            ApiError::bad_request(
                "invalid_version",
                format!("query parameter `v` must be a number, got `{v}`"),
            )
        })?),
    };
    let shape = shape(endpoint, version);
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {BODY_LIMIT} bytes"),
        )
    })?;
    let raw = crate::capture::raw_request(method, uri, headers, &bytes, None);
    let doc = flywheel_capture::posthog_document(&raw, &state.config.capture_limits)
        .map_err(crate::capture::request_error)?;
    let Value::Object(mut doc) = doc else {
        return Err(ApiError::bad_request(
            "invalid_payload",
            "the request body must be a JSON object",
        ));
    };
    let token = ["api_key", "token", "$token"]
        .iter()
        .find_map(|k| doc.get(*k).and_then(Value::as_str))
        .or_else(|| query_param(uri, "token"))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "no API key: send the project API key (or an SDK client key) as `api_key` or `token`",
            )
        })?;
    let access = resolve_key(state, token).await?.ok_or_else(|| {
        ApiError::unauthorized(
            "invalid_token",
            "unknown API key: use the project's API key or an SDK client key",
        )
    })?;
    if let Err(secs) = state.flags.limiter.check(token) {
        metrics::counter!(m::SDK_RATE_LIMITED, m::LABEL_ENDPOINT => "posthog").increment(1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("rate limit exceeded for this key; retry in {secs} s"),
        )
        .with_retry_after(secs));
    }
    let distinct_id = match doc.get("distinct_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "missing_distinct_id",
                "`distinct_id` is required (a non-empty string)",
            ))
        }
    };
    let mut object = |k: &str| -> Result<Map<String, Value>, ApiError> {
        match doc.remove(k) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(ApiError::bad_request(
                "invalid_payload",
                format!("`{k}` must be an object"),
            )),
        }
    };
    let person_properties = object("person_properties")?;
    let groups = object("groups")?;
    let group_properties = object("group_properties")?;
    let only: Option<Vec<String>> = ["flag_keys_to_evaluate", "flag_keys"]
        .iter()
        .find_map(|k| doc.get(*k).and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });

    let group_keys: Vec<(String, String)> = groups
        .iter()
        .filter_map(|(t, k)| match k {
            Value::String(s) => Some((t.clone(), s.clone())),
            Value::Number(n) => Some((t.clone(), n.to_string())),
            _ => None,
        })
        .collect();
    let subjects = &state.flags.subjects;
    let mut attrs = (*subjects
        .person(&state.store, access.project_id, &distinct_id)
        .await?)
        .clone();
    attrs.extend(person_properties);
    attrs.insert("id".into(), json!(distinct_id));
    attrs.insert("distinct_id".into(), json!(distinct_id));
    if !group_keys.is_empty() {
        let mut gp = Map::new();
        for (t, k) in &group_keys {
            let mut props = (*subjects
                .group(&state.store, access.project_id, t, k)
                .await?)
                .clone();
            if let Some(Value::Object(given)) = group_properties.get(t) {
                props.extend(given.clone());
            }
            gp.insert(t.clone(), Value::Object(props));
        }
        attrs.insert(
            "$groups".into(),
            Value::Object(
                group_keys
                    .iter()
                    .map(|(t, k)| (t.clone(), json!(k)))
                    .collect(),
            ),
        );
        attrs.insert("$group_properties".into(), Value::Object(gp));
    }

    let snapshot = state
        .flags
        .snapshot(&state.store, access.project_id, &access.environment)
        .await?;
    let attributes = flywheel_flags::Attributes::from_map(attrs);
    let mut sticky = state.sticky.view(access.project_id);
    let mut ctx = flywheel_flags::EvalContext::new(&attributes);
    if let Some(s) = sticky.as_mut() {
        ctx = ctx.with_sticky(s);
    }
    // Records are ~300 bytes each; the legacy shapes far less.
    let mut out = Rendering::new(shape, 1024 + 320 * snapshot.flags.len());
    for info in &snapshot.flags {
        if only.as_ref().is_some_and(|o| !o.contains(&info.key)) {
            continue;
        }
        let result = snapshot.set.evaluate(&info.key, &ctx);
        out.push(info, &result);
    }
    metrics::counter!(m::FLAG_EVALUATIONS, m::LABEL_ENDPOINT => "posthog")
        .increment(snapshot.flags.len() as u64);
    let config =
        endpoint == Endpoint::Decide || query_param(uri, "config").is_some_and(|v| v == "true");
    Ok(out.finish(config))
}

/// The settings PostHog's browser SDK reads from `/decide` (Flywheel has no session recording or surveys), as
/// JSON object members.
const DECIDE_CONFIG: &str = concat!(
    r#""config":{"enable_collect_everything":true},"toolbarParams":{},"isAuthenticated":false,"#,
    r#""supportedCompression":["gzip","gzip-js"],"sessionRecording":false,"capturePerformance":false,"#,
    r#""autocapture_opt_out":false,"autocaptureExceptions":false,"heatmaps":false,"surveys":false,"#,
    r#""siteApps":[],"elementsChainAsString":true"#
);

/// A unique request id (a version-4 UUID): random per process, then counted, so that no request pays for a system
/// call to the random source.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static BASE: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (high, low) = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.wrapping_add(n).to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// `(enabled, variant, JSON payload)` of a typed value, as PostHog SDKs render typed `/flags?v=4` values.
/// The payload, when there is one, is the value itself ([`push_payload`]).
fn legacy(value: &Value) -> (bool, Option<&str>, bool) {
    match value {
        Value::Null => (false, None, false),
        Value::Bool(b) => (*b, None, false),
        Value::String(s) => (true, Some(s), false),
        _ => (true, None, true),
    }
}

/// Appends a value's JSON text as a JSON string literal (a PostHog payload), without building the text first.
fn push_payload(out: &mut Vec<u8>, value: &Value) {
    /// Escapes what compact JSON text can contain that a string literal cannot: quotes and backslashes (control
    /// characters are already escaped in JSON text).
    struct Escaping<'a>(&'a mut Vec<u8>);
    impl std::io::Write for Escaping<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            for &b in buf {
                if b == b'"' || b == b'\\' {
                    self.0.push(b'\\');
                }
                self.0.push(b);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    out.push(b'"');
    let _ = serde_json::to_writer(Escaping(out), value);
    out.push(b'"');
}

/// Appends PostHog's reason object for a result (PostHog's codes and wording; condition sets are the rules of the
/// environment, numbered from 1 in the description and from 0 in `condition_index`).
fn write_reason(out: &mut Vec<u8>, info: &FlagInfo, result: &FeatureResult<'_>) {
    let matched = |out: &mut Vec<u8>, index: usize, what: &str| {
        out.extend_from_slice(br#"{"code":"condition_match","condition_index":"#);
        push_usize(out, index);
        out.extend_from_slice(br#","description":""#);
        out.extend_from_slice(what.as_bytes());
        out.push(b' ');
        push_usize(out, index + 1);
        out.extend_from_slice(br#""}"#);
    };
    if !info.served {
        out.extend_from_slice(
            br#"{"code":"flag_disabled","condition_index":null,"description":"Flag is disabled in this environment"}"#,
        );
        return;
    }
    match result.source {
        Source::Force | Source::Experiment => {
            let (index, kind) = info
                .rules
                .get(result.rule_id)
                .unwrap_or((0, RuleKind::Force));
            let what = match kind {
                RuleKind::Force => "Matched condition set",
                RuleKind::Rollout => "In the rollout of condition set",
                RuleKind::Experiment => "In the experiment of condition set",
            };
            matched(out, index, what);
        }
        Source::Prerequisite => out.extend_from_slice(
            br#"{"code":"no_condition_match","condition_index":null,"description":"A prerequisite flag did not pass"}"#,
        ),
        Source::DefaultValue if info.rules.is_empty() => out.extend_from_slice(
            br#"{"code":"condition_match","condition_index":null,"description":"No conditions: default value"}"#,
        ),
        _ => out.extend_from_slice(
            br#"{"code":"no_condition_match","condition_index":null,"description":"No matching condition set"}"#,
        ),
    }
}

fn push_usize(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A comma before every member but the first (`open`: the length of the buffer before its first member).
fn sep(buf: &mut Vec<u8>, open: usize) {
    if buf.len() > open {
        buf.push(b',');
    }
}

/// The response body, written straight into its final buffer as flags are evaluated.
struct Rendering {
    shape: Shape,
    /// The body so far: the opening, then `flags` records, `featureFlags` members or enabled keys.
    main: Vec<u8>,
    /// Length of `main` before the first member.
    open: usize,
    /// `featureFlagPayloads` members.
    payloads: Vec<u8>,
    errors: bool,
}

impl Rendering {
    /// `capacity`: expected body size.
    fn new(shape: Shape, capacity: usize) -> Self {
        let mut main = Vec::with_capacity(capacity);
        main.extend_from_slice(match shape {
            Shape::KeyList => b"{\"featureFlags\":[".as_slice(),
            Shape::Values | Shape::ValuesAndPayloads => b"{\"featureFlags\":{",
            Shape::Records { .. } => b"{\"flags\":{",
        });
        Self {
            shape,
            open: main.len(),
            main,
            payloads: Vec::new(),
            errors: false,
        }
    }

    fn push(&mut self, info: &FlagInfo, result: &FeatureResult<'_>) {
        let failed = matches!(result.source, Source::CyclicPrerequisite);
        self.errors |= failed;
        let value = if info.served && !failed {
            result.value
        } else {
            &Value::Null
        };
        let (enabled, variant, payload) = legacy(value);
        let open = self.open;
        let out = &mut self.main;
        match self.shape {
            Shape::KeyList => {
                if enabled {
                    sep(out, open);
                    out.extend_from_slice(info.key_json.as_bytes());
                }
            }
            Shape::Values | Shape::ValuesAndPayloads => {
                sep(out, open);
                out.extend_from_slice(info.key_json.as_bytes());
                out.push(b':');
                match variant {
                    Some(v) => push_json_str(out, v),
                    None => push_bool(out, enabled),
                }
                if self.shape == Shape::ValuesAndPayloads && payload && enabled {
                    sep(&mut self.payloads, 0);
                    self.payloads.extend_from_slice(info.key_json.as_bytes());
                    self.payloads.push(b':');
                    push_payload(&mut self.payloads, value);
                }
            }
            Shape::Records { typed } => {
                sep(out, open);
                out.extend_from_slice(info.key_json.as_bytes());
                out.extend_from_slice(b":{\"key\":");
                out.extend_from_slice(info.key_json.as_bytes());
                out.extend_from_slice(b",\"enabled\":");
                push_bool(out, enabled);
                out.extend_from_slice(b",\"variant\":");
                match variant {
                    Some(v) => push_json_str(out, v),
                    None => out.extend_from_slice(b"null"),
                }
                if failed {
                    out.extend_from_slice(b",\"failed\":true");
                }
                out.extend_from_slice(b",\"reason\":");
                write_reason(out, info, result);
                // Typed records carry the value; PostHog SDKs read typed values of these JSON types only, so an
                // array travels as the payload of an enabled flag.
                let with_payload = if typed {
                    out.extend_from_slice(b",\"value\":");
                    if value.is_array() {
                        out.extend_from_slice(b"true");
                        payload
                    } else {
                        push_json(out, value);
                        false
                    }
                } else {
                    payload
                };
                out.extend_from_slice(b",\"metadata\":{");
                out.extend_from_slice(info.posthog_metadata.as_bytes());
                out.extend_from_slice(b",\"payload\":");
                if with_payload {
                    push_payload(out, value);
                } else {
                    out.extend_from_slice(b"null");
                }
                if typed && !result.rule_id.is_empty() {
                    out.extend_from_slice(b",\"rule_id\":");
                    push_json_str(out, result.rule_id);
                }
                out.extend_from_slice(b"}}");
            }
        }
    }

    /// The whole body; `config`: with the `/decide` settings.
    fn finish(self, config: bool) -> Vec<u8> {
        let mut out = self.main;
        match self.shape {
            Shape::KeyList => out.push(b']'),
            Shape::Values => out.push(b'}'),
            Shape::ValuesAndPayloads => {
                out.extend_from_slice(b"},\"featureFlagPayloads\":{");
                out.extend_from_slice(&self.payloads);
                out.push(b'}');
            }
            Shape::Records { .. } => {
                out.extend_from_slice(b"},\"requestId\":\"");
                out.extend_from_slice(request_id().as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"errorsWhileComputingFlags\":");
        push_bool(&mut out, self.errors);
        out.extend_from_slice(b",\"quotaLimited\":[]");
        if config {
            out.push(b',');
            out.extend_from_slice(DECIDE_CONFIG.as_bytes());
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_by_endpoint_and_version() {
        assert_eq!(shape(Endpoint::Flags, None), Shape::ValuesAndPayloads);
        assert_eq!(
            shape(Endpoint::Flags, Some(2)),
            Shape::Records { typed: false }
        );
        assert_eq!(
            shape(Endpoint::Flags, Some(4)),
            Shape::Records { typed: true }
        );
        assert_eq!(shape(Endpoint::Decide, None), Shape::KeyList);
        assert_eq!(shape(Endpoint::Decide, Some(2)), Shape::Values);
        assert_eq!(shape(Endpoint::Decide, Some(3)), Shape::ValuesAndPayloads);
        assert_eq!(
            shape(Endpoint::Decide, Some(4)),
            Shape::Records { typed: false }
        );
    }

    #[test]
    fn typed_values_render_like_the_sdks() {
        assert_eq!(legacy(&json!(true)), (true, None, false));
        assert_eq!(legacy(&json!(false)), (false, None, false));
        assert_eq!(legacy(&Value::Null), (false, None, false));
        assert_eq!(legacy(&json!("test")), (true, Some("test"), false));
        assert_eq!(legacy(&json!(0)), (true, None, true));
        assert_eq!(legacy(&json!({"a": [1]})), (true, None, true));
    }

    #[test]
    fn request_ids_are_distinct_v4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|i| uuid::Uuid::parse_str(i).unwrap().get_version_num() == 4));
    }

    #[test]
    fn payloads_are_json_text_in_a_string() {
        for v in [
            json!(0),
            json!({"a": "q\"uote", "b": "back\\slash\n"}),
            json!([1, "x"]),
        ] {
            let mut out = Vec::new();
            push_payload(&mut out, &v);
            let text: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        }
        let mut out = Vec::new();
        push_usize(&mut out, 0);
        out.push(b' ');
        push_usize(&mut out, 1234567);
        assert_eq!(out, b"0 1234567");
    }
}
