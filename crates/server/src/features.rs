//! Feature management (native API) and the GrowthBook SDK payload endpoint.
//!
//! A feature is one document: value type, default value, description, owner, tags, prerequisites, and per
//! environment an `enabled` switch and ordered rules (force, rollout, experiment). Every write is validated with
//! field-level errors (types, weights, coverage, conditions compiled by the flag engine, prerequisites that exist
//! and form no cycle), guarded by the feature's version (a stale write gets 409) and recorded in the audit log.
//! SDK connections hand out client keys that serve one environment's GrowthBook payload.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_store::{Actor, AuditFilter, FeatureRecord, WriteError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::api::{parse_project, Caller};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/features",
            get(list_features).post(create_feature),
        )
        .route(
            "/api/v1/projects/{project_id}/features/{key}",
            get(get_feature).put(update_feature).delete(archive_feature),
        )
        .route(
            "/api/v1/projects/{project_id}/environments",
            get(list_environments).post(create_environment),
        )
        .route(
            "/api/v1/projects/{project_id}/sdk-connections",
            get(list_sdk_connections).post(create_sdk_connection),
        )
        .route("/api/v1/projects/{project_id}/audit", get(list_audit))
        .route(
            "/api/v1/projects/{project_id}/evaluate",
            axum::routing::post(evaluate),
        )
}

/// The GrowthBook SDK endpoint (public: the client key is the credential).
pub fn sdk_router() -> Router<AppState> {
    Router::new()
        .route("/api/features/{client_key}", get(growthbook_payload))
        .route("/sub/{client_key}", get(growthbook_stream))
}

// ---------------------------------------------------------------------------------------------------------------
// The document

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Boolean,
    Number,
    String,
    Json,
}

impl ValueType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            ValueType::Boolean => v.is_boolean(),
            ValueType::Number => v.is_number(),
            ValueType::String => v.is_string(),
            ValueType::Json => true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDefinition {
    pub value_type: ValueType,
    pub default_value: Value,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Other features that must pass first (`condition` on their value, default `{"value": true}`).
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prerequisite {
    pub id: String,
    #[serde(default = "default_prerequisite_condition")]
    pub condition: Value,
}

fn default_prerequisite_condition() -> Value {
    json!({"value": true})
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn yes() -> bool {
    true
}
fn id_attribute() -> String {
    "id".to_owned()
}
fn full() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Rule {
    /// Everyone matching `condition` gets `value`.
    Force {
        #[serde(default)]
        id: String,
        #[serde(default)]
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Value>,
        value: Value,
        #[serde(default = "yes")]
        enabled: bool,
    },
    /// A share (`coverage`, 0–1) of those matching `condition` gets `value`, bucketed on `hash_attribute`.
    Rollout {
        #[serde(default)]
        id: String,
        #[serde(default)]
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Value>,
        value: Value,
        coverage: f64,
        #[serde(default = "id_attribute")]
        hash_attribute: String,
        #[serde(default = "yes")]
        enabled: bool,
    },
    /// An A/B/n experiment: `variations` with `weights` (equal when absent), within `coverage`.
    Experiment {
        #[serde(default)]
        id: String,
        #[serde(default)]
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        condition: Option<Value>,
        /// Experiment key reported with exposures (default: the feature key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_key: Option<String>,
        #[serde(default = "id_attribute")]
        hash_attribute: String,
        variations: Vec<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<Vec<f64>>,
        #[serde(default = "full")]
        coverage: f64,
        /// `[namespace id, start, end]`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<(String, f64, f64)>,
        #[serde(default = "yes")]
        enabled: bool,
    },
}

impl Rule {
    fn id_mut(&mut self) -> &mut String {
        match self {
            Rule::Force { id, .. } | Rule::Rollout { id, .. } | Rule::Experiment { id, .. } => id,
        }
    }
}

/// A field-level validation problem.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field(errors: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    errors.push(FieldError {
        field: field.into(),
        message: message.into(),
    });
}

fn validation_failed(errors: Vec<FieldError>) -> ApiError {
    let summary = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::bad_request(
        "validation_error",
        format!("the feature is invalid: {summary}"),
    )
    .with_errors(serde_json::to_value(&errors).unwrap_or_default())
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 100
        && key.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'|' | b'/')
        })
}

/// Parses a request body into a definition, naming the field a type error is in.
fn parse_definition(mut body: Value) -> Result<FeatureDefinition, ApiError> {
    if let Value::Object(m) = &mut body {
        for k in ["key", "version", "archived", "created_at", "updated_at"] {
            m.remove(k);
        }
    }
    serde_json::from_value(body).map_err(|e| {
        validation_failed(vec![FieldError {
            field: "body".into(),
            message: e.to_string(),
        }])
    })
}

/// Checks a definition against the project (environments, other features) and fills in missing rule ids.
fn validate(
    key: &str,
    def: &mut FeatureDefinition,
    environments: &HashSet<String>,
    others: &HashMap<String, FeatureDefinition>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !valid_key(key) {
        field(
            &mut errors,
            "key",
            "1–100 characters of letters, digits and - _ . : | /",
        );
    }
    let vt = def.value_type;
    if !vt.accepts(&def.default_value) {
        field(
            &mut errors,
            "default_value",
            format!("must be a {vt:?} value").to_lowercase(),
        );
    }
    for (i, p) in def.prerequisites.iter().enumerate() {
        if p.id == key {
            field(
                &mut errors,
                format!("prerequisites[{i}].id"),
                "a feature cannot be its own prerequisite",
            );
        } else if !others.contains_key(&p.id) {
            field(
                &mut errors,
                format!("prerequisites[{i}].id"),
                format!("no feature `{}` in this project", p.id),
            );
        }
        let probe = json!({"features": {"p": {"defaultValue": null, "rules": [{"condition": p.condition, "force": true}]}}});
        for d in compile_diagnostics(&probe) {
            field(&mut errors, format!("prerequisites[{i}].condition"), d);
        }
    }
    if let Some(cycle) = prerequisite_cycle(key, def, others) {
        field(
            &mut errors,
            "prerequisites",
            format!("cyclic prerequisites: {}", cycle.join(" → ")),
        );
    }
    for (env, settings) in def.environments.iter_mut() {
        if !environments.contains(env) {
            field(
                &mut errors,
                format!("environments.{env}"),
                "no such environment in this project",
            );
        }
        let mut seen_ids = HashSet::new();
        for (i, rule) in settings.rules.iter_mut().enumerate() {
            let at = format!("environments.{env}.rules[{i}]");
            if rule.id_mut().is_empty() {
                *rule.id_mut() = format!("{env}_rule_{i}");
            }
            if !seen_ids.insert(rule.id_mut().clone()) {
                field(&mut errors, format!("{at}.id"), "duplicate rule id");
            }
            match rule {
                Rule::Force { value, .. } => {
                    if !vt.accepts(value) {
                        field(
                            &mut errors,
                            format!("{at}.value"),
                            format!("must be a {vt:?} value").to_lowercase(),
                        );
                    }
                }
                Rule::Rollout {
                    value,
                    coverage,
                    hash_attribute,
                    ..
                } => {
                    if !vt.accepts(value) {
                        field(
                            &mut errors,
                            format!("{at}.value"),
                            format!("must be a {vt:?} value").to_lowercase(),
                        );
                    }
                    if !(0.0..=1.0).contains(coverage) {
                        field(
                            &mut errors,
                            format!("{at}.coverage"),
                            "must be between 0 and 1",
                        );
                    }
                    if hash_attribute.is_empty() {
                        field(
                            &mut errors,
                            format!("{at}.hash_attribute"),
                            "must not be empty",
                        );
                    }
                }
                Rule::Experiment {
                    variations,
                    weights,
                    coverage,
                    namespace,
                    hash_attribute,
                    ..
                } => {
                    if variations.len() < 2 {
                        field(
                            &mut errors,
                            format!("{at}.variations"),
                            "an experiment needs at least 2 variations",
                        );
                    }
                    for (j, v) in variations.iter().enumerate() {
                        if !vt.accepts(v) {
                            field(
                                &mut errors,
                                format!("{at}.variations[{j}]"),
                                format!("must be a {vt:?} value").to_lowercase(),
                            );
                        }
                    }
                    if let Some(w) = weights {
                        if w.len() != variations.len() {
                            field(
                                &mut errors,
                                format!("{at}.weights"),
                                format!("{} weights for {} variations", w.len(), variations.len()),
                            );
                        } else if w.iter().any(|x| !(0.0..=1.0).contains(x)) {
                            field(
                                &mut errors,
                                format!("{at}.weights"),
                                "each weight must be between 0 and 1",
                            );
                        } else if (w.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
                            field(
                                &mut errors,
                                format!("{at}.weights"),
                                format!("must sum to 1 (they sum to {})", w.iter().sum::<f64>()),
                            );
                        }
                    }
                    if !(0.0..=1.0).contains(coverage) {
                        field(
                            &mut errors,
                            format!("{at}.coverage"),
                            "must be between 0 and 1",
                        );
                    }
                    if let Some((_, start, end)) = namespace {
                        if !(0.0..=1.0).contains(start) || !(0.0..=1.0).contains(end) || start > end
                        {
                            field(
                                &mut errors,
                                format!("{at}.namespace"),
                                "range must satisfy 0 ≤ start ≤ end ≤ 1",
                            );
                        }
                    }
                    if hash_attribute.is_empty() {
                        field(
                            &mut errors,
                            format!("{at}.hash_attribute"),
                            "must not be empty",
                        );
                    }
                }
            }
            let condition = match rule {
                Rule::Force { condition, .. }
                | Rule::Rollout { condition, .. }
                | Rule::Experiment { condition, .. } => condition,
            };
            if let Some(c) = condition {
                if !c.is_object() {
                    field(
                        &mut errors,
                        format!("{at}.condition"),
                        "must be a condition object",
                    );
                    continue;
                }
                let probe = json!({"features": {"p": {"defaultValue": null, "rules": [{"condition": c, "force": true}]}}});
                for d in compile_diagnostics(&probe) {
                    field(&mut errors, format!("{at}.condition"), d);
                }
            }
        }
    }
    errors
}

fn compile_diagnostics(payload: &Value) -> Vec<String> {
    match flywheel_flags::FeatureSet::from_value(payload) {
        Ok(set) => set
            .diagnostics()
            .iter()
            .map(|d| d.message.clone())
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

/// A prerequisite path from `key` back to itself, if the definition would close one.
fn prerequisite_cycle(
    key: &str,
    def: &FeatureDefinition,
    others: &HashMap<String, FeatureDefinition>,
) -> Option<Vec<String>> {
    fn walk<'a>(
        node: &'a str,
        start: &str,
        edges: &dyn Fn(&str) -> Vec<&'a str>,
        path: &mut Vec<String>,
        seen: &mut HashSet<String>,
    ) -> bool {
        for next in edges(node) {
            path.push(next.to_owned());
            if next == start {
                return true;
            }
            if seen.insert(next.to_owned()) && walk(next, start, edges, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    let edges = |n: &str| -> Vec<&str> {
        let d = if n == key { Some(def) } else { others.get(n) };
        d.map(|d| d.prerequisites.iter().map(|p| p.id.as_str()).collect())
            .unwrap_or_default()
    };
    let mut path = vec![key.to_owned()];
    let mut seen = HashSet::new();
    walk(key, key, &edges, &mut path, &mut seen).then_some(path)
}

// ---------------------------------------------------------------------------------------------------------------
// The GrowthBook payload

/// The GrowthBook SDK definition of a feature in one environment; `None` when it is not served there (archived,
/// disabled, or not configured), which GrowthBook SDKs treat as an unknown feature.
pub fn growthbook_feature(key: &str, def: &FeatureDefinition, env: &str) -> Option<Value> {
    let settings = def.environments.get(env).filter(|s| s.enabled)?;
    let mut rules = Vec::new();
    if !def.prerequisites.is_empty() {
        let parents: Vec<Value> = def
            .prerequisites
            .iter()
            .map(|p| json!({"id": p.id, "condition": p.condition, "gate": true}))
            .collect();
        rules.push(json!({"id": "prerequisites", "parentConditions": parents}));
    }
    for rule in &settings.rules {
        let mut r = Map::new();
        let (id, condition) = match rule {
            Rule::Force { enabled: false, .. }
            | Rule::Rollout { enabled: false, .. }
            | Rule::Experiment { enabled: false, .. } => continue,
            Rule::Force {
                id,
                condition,
                value,
                ..
            } => {
                r.insert("force".into(), value.clone());
                (id, condition)
            }
            Rule::Rollout {
                id,
                condition,
                value,
                coverage,
                hash_attribute,
                ..
            } => {
                r.insert("force".into(), value.clone());
                // A half-open bucket range rather than `coverage`: SDKs disagree on `coverage` at the exact
                // boundary (the JavaScript SDK includes `n == coverage`, the Python SDK excludes it), while every
                // SDK tests ranges as `start <= n < end`.
                r.insert("range".into(), json!([0.0, coverage]));
                r.insert("hashAttribute".into(), json!(hash_attribute));
                (id, condition)
            }
            Rule::Experiment {
                id,
                condition,
                tracking_key,
                hash_attribute,
                variations,
                weights,
                coverage,
                namespace,
                ..
            } => {
                let tracking = tracking_key.clone().unwrap_or_else(|| key.to_owned());
                let n = variations.len();
                let weights = weights.clone().unwrap_or_else(|| vec![1.0 / n as f64; n]);
                r.insert("key".into(), json!(tracking));
                r.insert("variations".into(), json!(variations));
                r.insert("weights".into(), json!(weights));
                r.insert("coverage".into(), json!(coverage));
                r.insert("hashAttribute".into(), json!(hash_attribute));
                r.insert("hashVersion".into(), json!(2));
                r.insert("seed".into(), json!(tracking));
                r.insert(
                    "meta".into(),
                    json!((0..n)
                        .map(|i| json!({"key": i.to_string()}))
                        .collect::<Vec<_>>()),
                );
                r.insert("phase".into(), json!("0"));
                if let Some((ns, start, end)) = namespace {
                    r.insert("namespace".into(), json!([ns, start, end]));
                }
                (id, condition)
            }
        };
        r.insert("id".into(), json!(id));
        if let Some(c) = condition {
            r.insert("condition".into(), c.clone());
        }
        rules.push(Value::Object(r));
    }
    let mut f = Map::new();
    f.insert("defaultValue".into(), def.default_value.clone());
    if !rules.is_empty() {
        f.insert("rules".into(), Value::Array(rules));
    }
    Some(Value::Object(f))
}

/// Serialized payloads per (project, environment), rebuilt after a write to the project; every write is also
/// announced to open streams.
pub struct PayloadCache {
    entries: RwLock<HashMap<(i64, String), Arc<CachedPayload>>>,
    changes: tokio::sync::broadcast::Sender<i64>,
}

impl Default for PayloadCache {
    fn default() -> Self {
        Self {
            entries: RwLock::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

pub struct CachedPayload {
    pub etag: String,
    pub body: String,
    /// The payload compiled by the flag engine, for server-side evaluation.
    pub set: flywheel_flags::FeatureSet,
}

impl PayloadCache {
    pub fn invalidate(&self, project_id: i64) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _), _| *p != project_id);
        // No receiver (no open stream) is not an error.
        let _ = self.changes.send(project_id);
    }
}

async fn payload_for(
    state: &AppState,
    project_id: i64,
    env: &str,
) -> Result<Arc<CachedPayload>, ApiError> {
    let key = (project_id, env.to_owned());
    if let Some(hit) = state
        .payloads
        .entries
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(hit.clone());
    }
    let records = state.store.features(project_id, false).await?;
    let mut features = Map::new();
    let mut updated = String::new();
    for record in &records {
        updated = updated.max(record.updated_at.clone());
        let Ok(def) = serde_json::from_value::<FeatureDefinition>(record.definition.clone()) else {
            continue;
        };
        if let Some(f) = growthbook_feature(&record.key, &def, env) {
            features.insert(record.key.clone(), f);
        }
    }
    if updated.is_empty() {
        updated = "1970-01-01T00:00:00.000000Z".to_owned();
    }
    let body = json!({"status": 200, "features": features, "dateUpdated": updated}).to_string();
    let etag = format!("\"{}\"", hex_prefix(&sha2::Sha256::digest(body.as_bytes())));
    let set = flywheel_flags::FeatureSet::from_json(&body).map_err(ApiError::internal)?;
    let cached = Arc::new(CachedPayload { etag, body, set });
    state
        .payloads
        .entries
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, cached.clone());
    Ok(cached)
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

async fn growthbook_payload(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((project_id, env)) = state.store.sdk_connection_for_key(&client_key).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_client_key",
            "unknown or revoked SDK client key",
        ));
    };
    let payload = payload_for(&state, project_id, &env).await?;
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == payload.etag || t.trim() == "*")
        });
    let common = [
        (header::ETAG, payload.etag.clone()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        StatusCode::OK,
        common,
        [(header::CONTENT_TYPE, "application/json".to_owned())],
        payload.body.clone(),
    )
        .into_response())
}

/// Server-sent events for streaming GrowthBook SDKs (`{streamingHost}/sub/{clientKey}`): an `event: features`
/// with the whole payload whenever the environment's payload changes; a comment every 20 s keeps proxies open.
async fn growthbook_stream(
    State(state): State<AppState>,
    Path(client_key): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    let Some((project_id, env)) = state.store.sdk_connection_for_key(&client_key).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_client_key",
            "unknown or revoked SDK client key",
        ));
    };
    let changes = state.payloads.changes.subscribe();
    let etag = payload_for(&state, project_id, &env).await?.etag.clone();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (state, changes, shutdown, etag),
        move |(state, mut changes, mut shutdown, mut etag)| {
            let env = env.clone();
            async move {
                loop {
                    let changed = tokio::select! {
                        r = changes.recv() => r,
                        _ = shutdown.wait_for(|s| *s) => return None,
                    };
                    match changed {
                        Ok(p) if p != project_id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                    let payload = payload_for(&state, project_id, &env).await.ok()?;
                    if payload.etag != etag {
                        etag = payload.etag.clone();
                        let event = Event::default()
                            .event("features")
                            .data(payload.body.clone());
                        return Some((
                            Ok::<_, std::convert::Infallible>(event),
                            (state, changes, shutdown, etag),
                        ));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(20)))
        .into_response())
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers

fn actor(caller: &Caller, headers: &HeaderMap, peer: std::net::SocketAddr) -> Actor {
    let ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| peer.ip().to_string());
    Actor {
        label: format!("personal_key:{}", caller.0.id),
        source_ip: Some(ip),
    }
}

fn feature_json(r: &FeatureRecord) -> Value {
    let mut out = json!({
        "key": r.key, "version": r.version, "archived": r.archived,
        "created_at": r.created_at, "updated_at": r.updated_at,
    });
    if let (Value::Object(o), Value::Object(d)) = (&mut out, &r.definition) {
        for (k, v) in d {
            o.insert(k.clone(), v.clone());
        }
    }
    out
}

fn write_error(e: WriteError, what: &str) -> ApiError {
    match e {
        WriteError::NotFound => ApiError::not_found(format!("{what} not found")),
        WriteError::AlreadyExists => ApiError::new(StatusCode::CONFLICT, "already_exists", format!("{what} already exists")),
        WriteError::VersionConflict { current } => ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("{what} was changed by someone else: the current version is {current}; reload and retry"),
        ),
        WriteError::Store(e) => ApiError::internal(e),
    }
}

async fn project_context(state: &AppState, caller: &Caller, raw: &str) -> Result<i64, ApiError> {
    let project_id = parse_project(raw)?;
    caller.authorize(state, project_id).await?;
    Ok(project_id)
}

async fn others(
    state: &AppState,
    project_id: i64,
    except: &str,
) -> Result<HashMap<String, FeatureDefinition>, ApiError> {
    Ok(state
        .store
        .features(project_id, false)
        .await?
        .into_iter()
        .filter(|r| r.key != except)
        .filter_map(|r| {
            serde_json::from_value(r.definition)
                .ok()
                .map(|d| (r.key, d))
        })
        .collect())
}

async fn environment_keys(state: &AppState, project_id: i64) -> Result<HashSet<String>, ApiError> {
    Ok(state
        .store
        .environments(project_id)
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect())
}

#[derive(Deserialize)]
struct ListQuery {
    include_archived: Option<bool>,
}

async fn list_features(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let records = state
        .store
        .features(project_id, q.include_archived.unwrap_or(false))
        .await?;
    Ok(Json(
        json!({"results": records.iter().map(feature_json).collect::<Vec<_>>()}),
    ))
}

async fn get_feature(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    match state.store.feature(project_id, &key).await? {
        Some(r) => Ok(Json(feature_json(&r))),
        None => Err(ApiError::not_found(format!("feature `{key}` not found"))),
    }
}

async fn create_feature(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    let key = body
        .get("key")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            validation_failed(vec![FieldError {
                field: "key".into(),
                message: "required (a string)".into(),
            }])
        })?;
    let mut def = parse_definition(body)?;
    let errors = validate(
        &key,
        &mut def,
        &environment_keys(&state, project_id).await?,
        &others(&state, project_id, &key).await?,
    );
    if !errors.is_empty() {
        return Err(validation_failed(errors));
    }
    let definition = serde_json::to_value(&def).map_err(ApiError::internal)?;
    let record = state
        .store
        .create_feature(
            project_id,
            &key,
            &definition,
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("feature `{key}`")))?;
    state.payloads.invalidate(project_id);
    Ok((StatusCode::CREATED, Json(feature_json(&record))).into_response())
}

async fn update_feature(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let Json(body) = body.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    let version = body.get("version").and_then(Value::as_i64).ok_or_else(|| {
        validation_failed(vec![FieldError {
            field: "version".into(),
            message: "required: the version you are updating (optimistic concurrency)".into(),
        }])
    })?;
    let archived = match body.get("archived") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(validation_failed(vec![FieldError {
                field: "archived".into(),
                message: "must be true or false".into(),
            }]))
        }
    };
    let current = state
        .store
        .feature(project_id, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("feature `{key}` not found")))?;
    let mut def = parse_definition(body)?;
    let errors = validate(
        &key,
        &mut def,
        &environment_keys(&state, project_id).await?,
        &others(&state, project_id, &key).await?,
    );
    if !errors.is_empty() {
        return Err(validation_failed(errors));
    }
    let archived = archived.unwrap_or(current.archived);
    let action = match (current.archived, archived) {
        (false, true) => "feature.archived",
        (true, false) => "feature.unarchived",
        _ => "feature.updated",
    };
    let definition = serde_json::to_value(&def).map_err(ApiError::internal)?;
    let record = state
        .store
        .update_feature(
            project_id,
            &key,
            version,
            &definition,
            archived,
            action,
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("feature `{key}`")))?;
    state.payloads.invalidate(project_id);
    Ok(Json(feature_json(&record)))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

/// Archives a feature (it stops being served; the audit trail stays). `?version=` guards against stale deletes.
async fn archive_feature(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let current = state
        .store
        .feature(project_id, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("feature `{key}` not found")))?;
    let record = state
        .store
        .update_feature(
            project_id,
            &key,
            q.version.unwrap_or(current.version),
            &current.definition,
            true,
            "feature.archived",
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("feature `{key}`")))?;
    state.payloads.invalidate(project_id);
    Ok(Json(feature_json(&record)))
}

async fn list_environments(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    Ok(Json(
        json!({"results": state.store.environments(project_id).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnvironment {
    key: String,
    #[serde(default)]
    description: String,
}

async fn create_environment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NewEnvironment>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let Json(env) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    if !valid_key(&env.key) || env.key.contains('.') {
        return Err(validation_failed(vec![FieldError {
            field: "key".into(),
            message: "1–100 characters of letters, digits and - _ : | /".into(),
        }]));
    }
    let record = state
        .store
        .create_environment(
            project_id,
            &env.key,
            &env.description,
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("environment `{}`", env.key)))?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(record).map_err(ApiError::internal)?),
    )
        .into_response())
}

async fn list_sdk_connections(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    Ok(Json(
        json!({"results": state.store.sdk_connections(project_id).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSdkConnection {
    environment: String,
    #[serde(default)]
    name: String,
}

async fn create_sdk_connection(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Json<NewSdkConnection>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let Json(conn) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    let (record, key) = state
        .store
        .create_sdk_connection(
            project_id,
            &conn.environment,
            &conn.name,
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| match e {
            WriteError::NotFound => validation_failed(vec![FieldError {
                field: "environment".into(),
                message: format!("no environment `{}` in this project", conn.environment),
            }]),
            other => write_error(other, "SDK connection"),
        })?;
    let mut out = serde_json::to_value(record).map_err(ApiError::internal)?;
    out["client_key"] = json!(key);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateRequest {
    environment: String,
    #[serde(default)]
    attributes: Map<String, Value>,
    /// Only these features (all when absent).
    #[serde(default)]
    features: Option<Vec<String>>,
}

/// Server-side evaluation of a project's features for one set of attributes, saying why for each feature:
/// the engine behind every serving endpoint, and the "test this user" tool.
async fn evaluate(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    body: Result<Json<EvaluateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
    if !environment_keys(&state, project_id)
        .await?
        .contains(&req.environment)
    {
        return Err(validation_failed(vec![FieldError {
            field: "environment".into(),
            message: format!("no environment `{}` in this project", req.environment),
        }]));
    }
    let payload = payload_for(&state, project_id, &req.environment).await?;
    let attributes = flywheel_flags::Attributes::from_map(req.attributes);
    let ctx = flywheel_flags::EvalContext::new(&attributes);
    let mut results = Map::new();
    let mut put = |key: &str, r: flywheel_flags::FeatureResult<'_>| {
        let experiment = r.experiment_result.as_ref().map(|e| {
            json!({"key": e.key, "variation_id": e.variation_id, "in_experiment": e.in_experiment,
                   "hash_attribute": e.hash_attribute, "hash_value": e.hash_value, "bucket": e.bucket})
        });
        results.insert(
            key.to_owned(),
            json!({"value": r.value, "on": r.on, "source": r.source.as_str(), "rule_id": r.rule_id, "experiment": experiment}),
        );
    };
    match &req.features {
        Some(keys) => keys
            .iter()
            .for_each(|k| put(k, payload.set.evaluate(k, &ctx))),
        None => payload.set.evaluate_all(&ctx).for_each(|(k, r)| put(k, r)),
    }
    Ok(Json(
        json!({"environment": req.environment, "results": results}),
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    entity_type: Option<String>,
    entity_id: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be between 1 and 1000",
        ));
    }
    let filter = AuditFilter {
        entity_type: q.entity_type,
        entity_id: q.entity_id,
        actor: q.actor,
        action: q.action,
        after: q.after,
        before: q.before,
        limit,
    };
    Ok(Json(
        json!({"results": state.store.audit(project_id, &filter).await?}),
    ))
}
