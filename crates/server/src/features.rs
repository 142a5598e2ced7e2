//! Feature management (native API) and the GrowthBook SDK payload endpoint.
//!
//! A feature is one document: value type, default value, description, owner, tags, prerequisites, and per
//! environment an `enabled` switch and ordered rules (force, rollout, experiment). Every write is validated with
//! field-level errors (types, weights, coverage, conditions compiled by the flag engine, prerequisites that exist
//! and form no cycle), guarded by the feature's version (a stale write gets 409) and recorded in the audit log.
//! SDK connections hand out client keys that serve one environment's GrowthBook payload.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_store::{Actor, AuditFilter, FeatureRecord, WriteError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::api::{parse_project, Caller, JsonBody};
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
        .route(
            "/api/v1/projects/{project_id}/sdk-connections/{id}",
            axum::routing::delete(revoke_sdk_connection),
        )
        .route(
            "/api/v1/projects/{project_id}/saved-groups",
            get(list_saved_groups).post(create_saved_group),
        )
        .route(
            "/api/v1/projects/{project_id}/saved-groups/{key}",
            get(get_saved_group)
                .put(update_saved_group)
                .delete(delete_saved_group),
        )
        .route("/api/v1/projects/{project_id}/audit", get(list_audit))
        .route(
            "/api/v1/projects/{project_id}/evaluate",
            axum::routing::post(evaluate),
        )
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
        /// Audiences (saved groups) the user must also be in (or out of).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        saved_groups: Vec<SavedGroupRef>,
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
        /// Audiences (saved groups) the user must also be in (or out of).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        saved_groups: Vec<SavedGroupRef>,
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
        /// Audiences (saved groups) the user must also be in (or out of).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        saved_groups: Vec<SavedGroupRef>,
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
        /// Server-side evaluations keep each user's first variation when weights or coverage change (sticky
        /// bucketing); `false` buckets afresh every time (guarded rollouts, whose treatment grows).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        sticky: bool,
    },
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Rule {
    /// The rule's id.
    pub fn id(&self) -> &str {
        match self {
            Rule::Force { id, .. } | Rule::Rollout { id, .. } | Rule::Experiment { id, .. } => id,
        }
    }

    fn id_mut(&mut self) -> &mut String {
        match self {
            Rule::Force { id, .. } | Rule::Rollout { id, .. } | Rule::Experiment { id, .. } => id,
        }
    }

    fn targeting(&self) -> (&Option<Value>, &[SavedGroupRef]) {
        match self {
            Rule::Force {
                condition,
                saved_groups,
                ..
            }
            | Rule::Rollout {
                condition,
                saved_groups,
                ..
            }
            | Rule::Experiment {
                condition,
                saved_groups,
                ..
            } => (condition, saved_groups),
        }
    }
}

/// A rule's reference to saved groups: the user must be in `all`, `any` or `none` of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedGroupRef {
    #[serde(default = "match_all", rename = "match")]
    pub match_: GroupMatch,
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupMatch {
    All,
    Any,
    None,
}

fn match_all() -> GroupMatch {
    GroupMatch::All
}

/// A saved group (reusable audience): a list of values of one attribute, or a condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SavedGroup {
    List {
        #[serde(default)]
        name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        owner: String,
        attribute: String,
        values: Vec<Value>,
    },
    Condition {
        #[serde(default)]
        name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        owner: String,
        condition: Value,
    },
}

impl SavedGroup {
    /// The values of a list group (served as the payload's `savedGroups`).
    pub fn list_values(&self) -> Option<&[Value]> {
        match self {
            SavedGroup::List { values, .. } => Some(values),
            SavedGroup::Condition { .. } => None,
        }
    }

    /// The condition that tests membership of the group with key `key`.
    fn membership(&self, key: &str) -> Value {
        match self {
            SavedGroup::List { attribute, .. } => json!({ attribute: {"$inGroup": key} }),
            SavedGroup::Condition { condition, .. } => condition.clone(),
        }
    }
}

/// A rule's condition with its saved groups folded in (`None`: everyone).
pub fn rule_condition(
    condition: &Option<Value>,
    refs: &[SavedGroupRef],
    groups: &HashMap<String, SavedGroup>,
) -> Option<Value> {
    let mut all: Vec<Value> = condition.iter().cloned().collect();
    for r in refs {
        let members: Vec<Value> = r
            .ids
            .iter()
            .filter_map(|id| groups.get(id).map(|g| g.membership(id)))
            .collect();
        all.push(match r.match_ {
            GroupMatch::All => json!({ "$and": members }),
            GroupMatch::Any => json!({ "$or": members }),
            GroupMatch::None => json!({ "$nor": members }),
        });
    }
    match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(json!({ "$and": all })),
    }
}

pub use flywheel_query::FieldError;

fn field(errors: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    errors.push(FieldError {
        field: field.into(),
        message: message.into(),
    });
}

fn validation_failed(errors: Vec<FieldError>) -> ApiError {
    ApiError::validation("feature", &errors)
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
    groups: &HashMap<String, SavedGroup>,
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
            let (condition, refs) = rule.targeting();
            for (j, r) in refs.iter().enumerate() {
                if r.ids.is_empty() {
                    field(
                        &mut errors,
                        format!("{at}.saved_groups[{j}].ids"),
                        "name at least one saved group",
                    );
                }
                for id in &r.ids {
                    if !groups.contains_key(id) {
                        field(
                            &mut errors,
                            format!("{at}.saved_groups[{j}].ids"),
                            format!("no saved group `{id}` in this project"),
                        );
                    }
                }
            }
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
pub fn growthbook_feature(
    key: &str,
    def: &FeatureDefinition,
    env: &str,
    groups: &HashMap<String, SavedGroup>,
) -> Option<Value> {
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
                sticky,
                ..
            } => {
                if !sticky {
                    r.insert("disableStickyBucketing".into(), json!(true));
                }
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
        if let Some(c) = rule_condition(condition, rule.targeting().1, groups) {
            r.insert("condition".into(), c);
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

// ---------------------------------------------------------------------------------------------------------------
// Handlers

pub(crate) fn actor(caller: &Caller, headers: &HeaderMap, peer: std::net::SocketAddr) -> Actor {
    caller.actor(headers, peer)
}

/// A stored document as the API shows it: its bookkeeping members and its definition's, side by side.
fn document_json(mut head: Value, definition: &Value) -> Value {
    if let (Value::Object(o), Value::Object(d)) = (&mut head, definition) {
        for (k, v) in d {
            o.insert(k.clone(), v.clone());
        }
    }
    head
}

fn feature_json(r: &FeatureRecord) -> Value {
    let head = json!({
        "key": r.key, "version": r.version, "archived": r.archived,
        "created_at": r.created_at, "updated_at": r.updated_at,
    });
    document_json(head, &r.definition)
}

pub(crate) fn write_error(e: WriteError, what: &str) -> ApiError {
    match e {
        WriteError::NotFound => ApiError::not_found(format!("{what} not found")),
        WriteError::AlreadyExists => ApiError::new(StatusCode::CONFLICT, "already_exists", format!("{what} already exists")),
        WriteError::VersionConflict { current } => ApiError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            format!("{what} was changed by someone else: the current version is {current}; reload and retry"),
        ),
        WriteError::Invalid(message) => ApiError::bad_request("invalid_request", message),
        WriteError::Store(e) => ApiError::internal(e),
    }
}

pub(crate) async fn project_context(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<i64, ApiError> {
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

async fn saved_group_defs(
    state: &AppState,
    project_id: i64,
) -> Result<HashMap<String, SavedGroup>, ApiError> {
    Ok(state
        .store
        .saved_groups(project_id)
        .await?
        .into_iter()
        .filter_map(|g| {
            serde_json::from_value(g.definition)
                .ok()
                .map(|d| (g.key, d))
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
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
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
        &saved_group_defs(&state, project_id).await?,
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
    state.flags.refresh(&state.store, project_id).await;
    Ok((StatusCode::CREATED, Json(feature_json(&record))).into_response())
}

async fn update_feature(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let version = required_version(&body)?;
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
        &saved_group_defs(&state, project_id).await?,
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
    state.flags.refresh(&state.store, project_id).await;
    // The feature changed either way: a failure here is logged, not the request's.
    if let Err(e) = crate::experiments::feature_changed(
        &state,
        project_id,
        &key,
        &def,
        &actor(&caller, &headers, peer),
    )
    .await
    {
        tracing::warn!(project_id, feature = %key, error = %e.message, "experiment phases not updated");
    }
    Ok(Json(feature_json(&record)))
}

/// What an experiment's decision does to its rule.
pub(crate) enum RuleDecision {
    /// Everyone the rule matched gets this variation: the rule becomes a force rule of its value (same id,
    /// condition, audiences).
    Ship(usize),
    /// The rule is disabled: users get what they got before the experiment (the next rules, or the default).
    RollBack,
}

/// Changes feature `feature` with `change` (which returns what it wants to report), validates the result like any
/// feature change, writes it (audited as `feature.updated`) and refreshes the flags served. `Err` names what is
/// wrong; a concurrent change of the feature is a 409.
pub(crate) async fn change_feature<T>(
    state: &AppState,
    project_id: i64,
    feature: &str,
    actor: &Actor,
    change: impl FnOnce(&mut FeatureDefinition) -> Result<T, ApiError>,
) -> Result<(FeatureRecord, T), ApiError> {
    let current = state
        .store
        .feature(project_id, feature)
        .await?
        .filter(|f| !f.archived)
        .ok_or_else(|| ApiError::not_found(format!("feature `{feature}` not found")))?;
    let mut def: FeatureDefinition =
        serde_json::from_value(current.definition.clone()).map_err(ApiError::internal)?;
    let out = change(&mut def)?;
    let errors = validate(
        feature,
        &mut def,
        &environment_keys(state, project_id).await?,
        &others(state, project_id, feature).await?,
        &saved_group_defs(state, project_id).await?,
    );
    if !errors.is_empty() {
        return Err(validation_failed(errors));
    }
    let definition = serde_json::to_value(&def).map_err(ApiError::internal)?;
    let record = state
        .store
        .update_feature(
            project_id,
            feature,
            current.version,
            &definition,
            current.archived,
            "feature.updated",
            actor,
        )
        .await
        .map_err(|e| write_error(e, &format!("feature `{feature}`")))?;
    state.flags.refresh(&state.store, project_id).await;
    Ok((record, out))
}

/// The rule `rule_id` of `environment` in `def`, or a 404 naming it.
pub(crate) fn rule_mut<'a>(
    def: &'a mut FeatureDefinition,
    feature: &str,
    environment: &str,
    rule_id: &str,
) -> Result<&'a mut Rule, ApiError> {
    def.environments
        .get_mut(environment)
        .and_then(|env| env.rules.iter_mut().find(|r| r.id() == rule_id))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "feature `{feature}` has no rule `{rule_id}` in `{environment}`"
            ))
        })
}

/// Applies an experiment decision to rule `rule_id` of `feature` in `environment` (validated and audited like any
/// feature change, `feature.updated`), and refreshes the flags served. `Err` names what is wrong.
pub(crate) async fn decide_rule(
    state: &AppState,
    project_id: i64,
    feature: &str,
    environment: &str,
    rule_id: &str,
    decision: &RuleDecision,
    actor: &Actor,
) -> Result<FeatureRecord, ApiError> {
    let change = |def: &mut FeatureDefinition| {
        let rule = rule_mut(def, feature, environment, rule_id)?;
        let Rule::Experiment {
            id,
            description,
            condition,
            saved_groups,
            variations,
            enabled,
            ..
        } = rule.clone()
        else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_an_experiment_rule",
                format!("rule `{rule_id}` of feature `{feature}` is no longer an experiment rule"),
            ));
        };
        *rule = match decision {
            RuleDecision::Ship(i) => Rule::Force {
                id,
                description,
                condition,
                saved_groups,
                value: variations.get(*i).cloned().ok_or_else(|| {
                    ApiError::invalid_field(
                        "decision",
                        "variation",
                        format!("the rule has {} variations", variations.len()),
                    )
                })?,
                enabled,
            },
            RuleDecision::RollBack => {
                let mut r = rule.clone();
                if let Rule::Experiment { enabled, .. } = &mut r {
                    *enabled = false;
                }
                r
            }
        };
        Ok(())
    };
    Ok(change_feature(state, project_id, feature, actor, change)
        .await?
        .0)
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
    state.flags.refresh(&state.store, project_id).await;
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
    JsonBody(env): JsonBody<NewEnvironment>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
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
    /// Serve the payload encrypted (GrowthBook `encryptedFeatures`); the response carries the decryption key.
    #[serde(default)]
    encrypt: bool,
}

async fn create_sdk_connection(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(conn): JsonBody<NewSdkConnection>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let (record, key, decryption_key) = state
        .store
        .create_sdk_connection(
            project_id,
            &conn.environment,
            &conn.name,
            conn.encrypt,
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
    state.flags.keys_changed(&state.store).await;
    let mut out = serde_json::to_value(record).map_err(ApiError::internal)?;
    out["client_key"] = json!(key);
    if let Some(k) = decryption_key {
        out["decryption_key"] = json!(k);
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Revokes a client key; SDKs using it get 401/404 from the next request on.
async fn revoke_sdk_connection(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("SDK connection `{id}` not found")))?;
    state
        .store
        .revoke_sdk_connection(project_id, id, &actor(&caller, &headers, peer))
        .await
        .map_err(|e| write_error(e, &format!("SDK connection `{id}`")))?;
    state.flags.keys_changed(&state.store).await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Saved groups

fn saved_group_json(r: &flywheel_store::SavedGroupRecord) -> Value {
    let head = json!({
        "key": r.key, "version": r.version, "created_at": r.created_at, "updated_at": r.updated_at,
    });
    document_json(head, &r.definition)
}

/// Parses and checks a saved group body (the `key`, `version` and timestamps are not part of the definition).
fn parse_saved_group(mut body: Value) -> Result<Value, ApiError> {
    if let Value::Object(m) = &mut body {
        for k in ["key", "version", "created_at", "updated_at"] {
            m.remove(k);
        }
    }
    let group: SavedGroup = serde_json::from_value(body).map_err(|e| {
        validation_failed(vec![FieldError {
            field: "body".into(),
            message: e.to_string(),
        }])
    })?;
    let mut errors = Vec::new();
    match &group {
        SavedGroup::List {
            attribute, values, ..
        } => {
            if attribute.is_empty() {
                field(&mut errors, "attribute", "must not be empty");
            }
            for (i, v) in values.iter().enumerate() {
                if !(v.is_string() || v.is_number()) {
                    field(
                        &mut errors,
                        format!("values[{i}]"),
                        "must be a string or a number",
                    );
                }
            }
        }
        SavedGroup::Condition { condition, .. } => {
            if !condition.is_object() {
                field(&mut errors, "condition", "must be a condition object");
            } else {
                let probe = json!({"features": {"p": {"defaultValue": null, "rules": [{"condition": condition, "force": true}]}}});
                for d in compile_diagnostics(&probe) {
                    field(&mut errors, "condition", d);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(validation_failed(errors));
    }
    serde_json::to_value(&group).map_err(ApiError::internal)
}

/// Features whose rules reference the saved group `key`.
async fn features_using_group(
    state: &AppState,
    project_id: i64,
    key: &str,
) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .features(project_id, true)
        .await?
        .into_iter()
        .filter_map(|r| {
            let def: FeatureDefinition = serde_json::from_value(r.definition).ok()?;
            def.environments
                .values()
                .flat_map(|e| &e.rules)
                .any(|rule| {
                    rule.targeting()
                        .1
                        .iter()
                        .any(|g| g.ids.iter().any(|i| i == key))
                })
                .then_some(r.key)
        })
        .collect())
}

async fn list_saved_groups(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let groups = state.store.saved_groups(project_id).await?;
    Ok(Json(
        json!({"results": groups.iter().map(saved_group_json).collect::<Vec<_>>()}),
    ))
}

async fn get_saved_group(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    match state.store.saved_group(project_id, &key).await? {
        Some(r) => Ok(Json(saved_group_json(&r))),
        None => Err(ApiError::not_found(format!(
            "saved group `{key}` not found"
        ))),
    }
}

async fn create_saved_group(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let key = match body.get("key").and_then(Value::as_str) {
        Some(k) if valid_key(k) => k.to_owned(),
        _ => {
            return Err(validation_failed(vec![FieldError {
                field: "key".into(),
                message: "required: 1–100 characters of letters, digits and - _ . : | /".into(),
            }]))
        }
    };
    let definition = parse_saved_group(body)?;
    let record = state
        .store
        .write_saved_group(
            project_id,
            &key,
            None,
            Some(&definition),
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("saved group `{key}`")))?
        .ok_or_else(|| ApiError::internal("saved group write returned nothing"))?;
    state.flags.refresh(&state.store, project_id).await;
    Ok((StatusCode::CREATED, Json(saved_group_json(&record))).into_response())
}

async fn update_saved_group(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let version = required_version(&body)?;
    let definition = parse_saved_group(body)?;
    let record = state
        .store
        .write_saved_group(
            project_id,
            &key,
            Some(version),
            Some(&definition),
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("saved group `{key}`")))?
        .ok_or_else(|| ApiError::internal("saved group write returned nothing"))?;
    state.flags.refresh(&state.store, project_id).await;
    Ok(Json(saved_group_json(&record)))
}

/// Deletes a saved group no feature references (409 naming the features otherwise).
async fn delete_saved_group(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    caller: Caller,
    Path((project, key)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    let current = state
        .store
        .saved_group(project_id, &key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("saved group `{key}` not found")))?;
    let users = features_using_group(&state, project_id, &key).await?;
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "saved_group_in_use",
            format!(
                "saved group `{key}` is used by feature(s) {}; remove it from their rules first",
                users.join(", ")
            ),
        ));
    }
    state
        .store
        .write_saved_group(
            project_id,
            &key,
            Some(q.version.unwrap_or(current.version)),
            None,
            &actor(&caller, &headers, peer),
        )
        .await
        .map_err(|e| write_error(e, &format!("saved group `{key}`")))?;
    state.flags.refresh(&state.store, project_id).await;
    Ok(StatusCode::NO_CONTENT)
}

fn required_version(body: &Value) -> Result<i64, ApiError> {
    body.get("version").and_then(Value::as_i64).ok_or_else(|| {
        validation_failed(vec![FieldError {
            field: "version".into(),
            message: "required: the version you are updating (optimistic concurrency)".into(),
        }])
    })
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
    /// Record a `$feature_flag_called` exposure for each evaluated feature, for the user named by the `id`
    /// attribute (off by default: this endpoint is also the "test this user" tool).
    #[serde(default)]
    track: bool,
    /// Also say what each rule did, in order, up to the one that applied (`rules` per feature).
    #[serde(default)]
    explain: bool,
}

/// A rule trace as the API shows it, with a sentence for people.
fn trace_json(trace: &[flywheel_flags::RuleTrace<'_>]) -> Value {
    use flywheel_flags::RuleOutcome as O;
    trace
        .iter()
        .map(|t| {
            let reason = match t.outcome {
                O::Applied => "matched: this rule served the value",
                O::ConditionFalse => "the user does not match the rule's condition",
                O::OutsideRollout => "the user matches, but is outside the rollout percentage",
                O::PrerequisiteUnmet => "a prerequisite flag does not have the required value",
                O::FilteredOut => "the user's bucket is outside the rule's namespace or filters",
                O::NotInExperiment => {
                    "the user is not in the experiment (its condition, coverage or namespace, or no value to hash)"
                }
                O::Stopped(flywheel_flags::Source::CyclicPrerequisite) => {
                    "prerequisites form a cycle: the flag serves nothing"
                }
                O::Stopped(_) => "a required prerequisite is not met: the flag serves nothing",
                O::Empty => "the rule has nothing to serve",
            };
            json!({"index": t.index, "id": t.rule_id, "outcome": t.outcome.as_str(), "reason": reason})
        })
        .collect()
}

/// Server-side evaluation of a project's features for one set of attributes, saying why for each feature:
/// the engine behind every serving endpoint, and the "test this user" tool.
async fn evaluate(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(req): JsonBody<EvaluateRequest>,
) -> Result<Json<Value>, ApiError> {
    let project_id = project_context(&state, &caller, &project).await?;
    if !environment_keys(&state, project_id)
        .await?
        .contains(&req.environment)
    {
        return Err(validation_failed(vec![FieldError {
            field: "environment".into(),
            message: format!("no environment `{}` in this project", req.environment),
        }]));
    }
    let snapshot = state
        .flags
        .snapshot(&state.store, project_id, &req.environment)
        .await?;
    let user = match req.attributes.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let attributes = flywheel_flags::Attributes::from_map(req.attributes);
    let mut sticky = state.sticky.read_only(project_id);
    let mut ctx = flywheel_flags::EvalContext::new(&attributes);
    if let Some(s) = sticky.as_mut() {
        ctx = ctx.with_sticky(s);
    }
    let now_us = state.clock.now().timestamp_micros();
    let mut results = Map::new();
    let mut put = |key: &str, r: flywheel_flags::FeatureResult<'_>| {
        let in_experiment = r.experiment_result.as_ref().filter(|x| x.in_experiment);
        if let (Some(user), true) = (&user, req.track) {
            if snapshot.set.contains(key) {
                state.exposures.record(
                    &crate::exposure::Exposure {
                        project_id,
                        distinct_id: user,
                        flag: key,
                        response: r.value,
                        variant: in_experiment.map(|x| x.key),
                        experiment: r.experiment.map(|e| e.key()),
                        endpoint: "evaluate",
                    },
                    now_us,
                );
            }
        }
        let experiment = r.experiment_result.as_ref().map(|e| {
            json!({"key": e.key, "variation_id": e.variation_id, "in_experiment": e.in_experiment,
                   "hash_attribute": e.hash_attribute, "hash_value": e.hash_value, "bucket": e.bucket})
        });
        let mut entry = json!({"value": r.value, "on": r.on, "source": r.source.as_str(), "rule_id": r.rule_id,
                               "experiment": experiment});
        if req.explain {
            entry["rules"] = trace_json(&snapshot.set.explain(key, &ctx));
        }
        results.insert(key.to_owned(), entry);
    };
    match &req.features {
        Some(keys) => keys
            .iter()
            .for_each(|k| put(k, snapshot.set.evaluate(k, &ctx))),
        None => snapshot.set.evaluate_all(&ctx).for_each(|(k, r)| put(k, r)),
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
    before_id: Option<i64>,
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
        before_id: q.before_id,
        limit,
    };
    Ok(Json(
        json!({"results": state.store.audit(project_id, &filter).await?}),
    ))
}
