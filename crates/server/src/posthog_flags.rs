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
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use axum::routing::MethodFilter;
use axum::{Json, Router};
use flywheel_capture::RawRequest;
use flywheel_flags::{FeatureResult, Source};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::exposure::Exposure;
use crate::metrics_names as m;
use crate::serving::{resolve_key, FlagInfo, RuleKind, Snapshot};
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
        Ok(v) => Json(v).into_response(),
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
) -> Result<Value, ApiError> {
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
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let raw = RawRequest {
        method: if method == Method::GET {
            flywheel_capture::Method::Get
        } else {
            flywheel_capture::Method::Post
        },
        query: uri.query(),
        content_type: header_str(header::CONTENT_TYPE),
        content_encoding: header_str(header::CONTENT_ENCODING),
        body: &bytes,
        basic_auth_user: None,
    };
    let doc =
        flywheel_capture::posthog_document(&raw, &state.config.capture_limits).map_err(|err| {
            ApiError::new(
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
                err.code(),
                err.to_string(),
            )
        })?;
    let Value::Object(doc) = doc else {
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
    let object = |k: &str| -> Result<Map<String, Value>, ApiError> {
        match doc.get(k) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
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
    let stored = state
        .flags
        .subjects
        .get(&state.store, access.project_id, &distinct_id, &group_keys)
        .await?;
    let mut attrs = stored.person_properties.clone();
    attrs.extend(person_properties);
    attrs.insert("id".into(), json!(distinct_id));
    attrs.insert("distinct_id".into(), json!(distinct_id));
    if !group_keys.is_empty() {
        let mut gp = Map::new();
        for (t, _) in &group_keys {
            let mut props = stored.group_properties.get(t).cloned().unwrap_or_default();
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
    let ctx = flywheel_flags::EvalContext::new(&attributes);
    let now_us = state.clock.now().timestamp_micros();
    let mut out = Rendering::new(shape);
    for info in &snapshot.flags {
        if only.as_ref().is_some_and(|o| !o.contains(&info.key)) {
            continue;
        }
        let result = snapshot.set.evaluate(&info.key, &ctx);
        if let Some(x) = result
            .experiment_result
            .as_ref()
            .filter(|x| x.in_experiment)
        {
            state.exposures.record(
                &Exposure {
                    project_id: access.project_id,
                    distinct_id: &distinct_id,
                    flag: &info.key,
                    response: &response_value(result.value),
                    variant: Some(x.key),
                    experiment: result.experiment.map(|e| e.key()),
                    endpoint: "posthog",
                },
                now_us,
            );
        }
        out.push(info, &snapshot, &result);
    }
    metrics::counter!(m::FLAG_EVALUATIONS, m::LABEL_ENDPOINT => "posthog")
        .increment(snapshot.flags.len() as u64);
    let mut body = out.finish();
    if endpoint == Endpoint::Decide || query_param(uri, "config").is_some_and(|v| v == "true") {
        for (k, v) in decide_config() {
            body.entry(k).or_insert(v);
        }
    }
    Ok(Value::Object(body))
}

/// What `$feature_flag_response` reports: the variant, or whether the flag is enabled.
fn response_value(value: &Value) -> Value {
    let (enabled, variant, _) = legacy(value);
    variant.map(Value::String).unwrap_or(Value::Bool(enabled))
}

/// The settings PostHog's browser SDK reads from `/decide` (Flywheel has no session recording or surveys).
fn decide_config() -> Map<String, Value> {
    let Value::Object(m) = json!({
        "config": {"enable_collect_everything": true},
        "toolbarParams": {},
        "isAuthenticated": false,
        "supportedCompression": ["gzip", "gzip-js"],
        "sessionRecording": false,
        "capturePerformance": false,
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "heatmaps": false,
        "surveys": false,
        "siteApps": [],
        "elementsChainAsString": true,
    }) else {
        unreachable!("a JSON object literal")
    };
    m
}

/// `(enabled, variant, JSON payload)` of a typed value, as PostHog SDKs render typed `/flags?v=4` values.
fn legacy(value: &Value) -> (bool, Option<String>, Option<String>) {
    match value {
        Value::Null => (false, None, None),
        Value::Bool(b) => (*b, None, None),
        Value::String(s) => (true, Some(s.clone()), None),
        other => (true, None, Some(other.to_string())),
    }
}

/// PostHog's reason for a result.
fn reason(info: &FlagInfo, result: &FeatureResult<'_>) -> Value {
    if !info.served {
        return json!({"code": "flag_disabled", "condition_index": null,
                      "description": "Flag is disabled in this environment"});
    }
    let rule = info.rules.get(result.rule_id);
    match result.source {
        Source::Force | Source::Experiment => {
            let (index, kind) = rule.copied().unwrap_or((0, RuleKind::Force));
            let description = match kind {
                RuleKind::Force => format!("Matched rule {} ({})", index, result.rule_id),
                RuleKind::Rollout => {
                    format!("In the rollout of rule {} ({})", index, result.rule_id)
                }
                RuleKind::Experiment => format!(
                    "Assigned to variation {} of experiment rule {} ({})",
                    result
                        .experiment_result
                        .as_ref()
                        .map(|x| x.key)
                        .unwrap_or(""),
                    index,
                    result.rule_id
                ),
            };
            json!({"code": "condition_match", "condition_index": index, "description": description})
        }
        Source::Prerequisite => json!({"code": "no_condition_match", "condition_index": null,
                                       "description": "A prerequisite flag did not pass"}),
        Source::DefaultValue if info.rules.is_empty() => json!({"code": "condition_match",
            "condition_index": null, "description": "Default value (no rules)"}),
        _ => json!({"code": "no_condition_match", "condition_index": null,
                    "description": "No rule matched; default value"}),
    }
}

struct Rendering {
    shape: Shape,
    values: Map<String, Value>,
    payloads: Map<String, Value>,
    enabled_keys: Vec<Value>,
    records: Map<String, Value>,
    errors: bool,
}

impl Rendering {
    fn new(shape: Shape) -> Self {
        Self {
            shape,
            values: Map::new(),
            payloads: Map::new(),
            enabled_keys: Vec::new(),
            records: Map::new(),
            errors: false,
        }
    }

    fn push(&mut self, info: &FlagInfo, _snapshot: &Snapshot, result: &FeatureResult<'_>) {
        let failed = matches!(result.source, Source::CyclicPrerequisite);
        self.errors |= failed;
        let value = if info.served && !failed {
            result.value
        } else {
            &Value::Null
        };
        let (enabled, variant, payload) = legacy(value);
        match self.shape {
            Shape::KeyList => {
                if enabled {
                    self.enabled_keys.push(json!(info.key));
                }
            }
            Shape::Values | Shape::ValuesAndPayloads => {
                let v = variant
                    .clone()
                    .map(Value::String)
                    .unwrap_or(Value::Bool(enabled));
                self.values.insert(info.key.clone(), v);
                if let (Shape::ValuesAndPayloads, Some(p), true) = (self.shape, &payload, enabled) {
                    self.payloads.insert(info.key.clone(), json!(p));
                }
            }
            Shape::Records { typed } => {
                let mut metadata = json!({
                    "id": null,
                    "version": info.version,
                    "description": info.description,
                    "payload": payload,
                    "has_experiment": info.has_experiment,
                });
                let mut record = json!({
                    "key": info.key,
                    "enabled": enabled,
                    "variant": variant,
                    "failed": failed,
                    "reason": reason(info, result),
                });
                if typed {
                    // PostHog SDKs read typed values of these JSON types only; an array travels as the payload
                    // of an enabled flag.
                    if value.is_array() {
                        record["value"] = json!(true);
                    } else {
                        record["value"] = value.clone();
                        metadata["payload"] = Value::Null;
                    }
                    if !info.rules.is_empty() || !result.rule_id.is_empty() {
                        metadata["rule_id"] = json!(result.rule_id);
                    }
                }
                record["metadata"] = metadata;
                self.records.insert(info.key.clone(), record);
            }
        }
    }

    fn finish(self) -> Map<String, Value> {
        let mut out = Map::new();
        match self.shape {
            Shape::KeyList => {
                out.insert("featureFlags".into(), Value::Array(self.enabled_keys));
            }
            Shape::Values => {
                out.insert("featureFlags".into(), Value::Object(self.values));
            }
            Shape::ValuesAndPayloads => {
                out.insert("featureFlags".into(), Value::Object(self.values));
                out.insert("featureFlagPayloads".into(), Value::Object(self.payloads));
            }
            Shape::Records { .. } => {
                out.insert("flags".into(), Value::Object(self.records));
                out.insert("requestId".into(), json!(uuid::Uuid::new_v4().to_string()));
            }
        }
        out.insert("errorsWhileComputingFlags".into(), json!(self.errors));
        out.insert("quotaLimited".into(), json!([]));
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
        assert_eq!(legacy(&json!(true)), (true, None, None));
        assert_eq!(legacy(&json!(false)), (false, None, None));
        assert_eq!(legacy(&Value::Null), (false, None, None));
        assert_eq!(legacy(&json!("test")), (true, Some("test".into()), None));
        assert_eq!(legacy(&json!(0)), (true, None, Some("0".into())));
        assert_eq!(
            legacy(&json!({"a": [1]})),
            (true, None, Some(r#"{"a":[1]}"#.into()))
        );
    }
}
