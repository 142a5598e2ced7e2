//! Experiment metrics and experiments: `…/projects/{project_id}/metrics`, `…/projects/{project_id}/experiments`.
//!
//! A metric is a [`flywheel_query::experiment::Metric`] kept as a store document of kind `metric` (key unique per
//! project, versioned, archived instead of deleted, every change audited as `metric.created` / `metric.updated` /
//! `metric.archived`). Creating takes the whole definition; `PATCH` takes the fields to change (and optionally the
//! `version` it read: a stale one gets 409), merges them into the stored definition and validates the result as a
//! whole, so an update can never leave an invalid metric. The key cannot change.
//!
//! An experiment ([`flywheel_query::experiment::Experiment`], a document of kind `experiment`) analyses the
//! experiment rule `rule_id` of a feature in one environment, with metrics named by key (they must exist and not
//! be archived). Its state is kept with the definition: `status` (`draft` → `running` ⇄ `stopped`) and `phases`,
//! each with its start, stop and the rule's weights and coverage when it started. `POST …/start` and
//! `POST …/stop` move it; the binding (feature, rule, environment) can only change in a draft; a running
//! experiment cannot be archived. Every change is audited (`experiment.created|updated|archived`).
//!
//! `POST …/decision` (`{"action": "ship", "variation": i}` or `{"action": "rollback"}`) ends a started
//! experiment: the rule becomes a force rule of variation `i`'s value, or is disabled (the feature change audited
//! as `feature.updated`, served at once), the experiment stops and records the decision (`experiment.updated`).

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use flywheel_query::experiment::parse_metric;
use flywheel_query::{FieldError, Named};
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) const METRIC: &str = "metric";
const EXPERIMENT: &str = "experiment";

pub fn router() -> Router<AppState> {
    crate::definitions::routes("/api/v1/projects/{project_id}/metrics", &METRICS)
        .route(
            "/api/v1/projects/{project_id}/experiments",
            get(list_experiments).post(create_experiment),
        )
        .route(
            "/api/v1/projects/{project_id}/experiments/{key}",
            get(get_experiment)
                .patch(patch_experiment)
                .delete(archive_experiment),
        )
        .route(
            "/api/v1/projects/{project_id}/experiments/{key}/decision",
            post(decide_experiment),
        )
        .route(
            "/api/v1/projects/{project_id}/experiments/{key}/{action}",
            post(experiment_action).get(experiment_view),
        )
}

/// The API's view of a document: its body's fields, then the document's.
pub(crate) fn document_json(doc: &flywheel_store::Document) -> Value {
    let mut v = doc.body.clone();
    v["id"] = json!(doc.id);
    v["key"] = json!(doc.key);
    v["name"] = json!(doc.name);
    v["version"] = json!(doc.version);
    v["archived"] = json!(doc.archived);
    v["created_at"] = json!(doc.created_at);
    v["updated_at"] = json!(doc.updated_at);
    v
}

/// Fields of the API's view that are the document's, not the definition's.
pub(crate) const DOCUMENT_FIELDS: &[&str] =
    &["id", "version", "archived", "created_at", "updated_at"];

/// Metrics are plain definition documents.
static METRICS: crate::definitions::Kind = crate::definitions::Kind {
    kind: METRIC,
    what: "metric",
    parse: |body| parse_metric(body).map(|m| (m.key.clone(), m.name.clone(), m.to_json())),
    changed: |_| {},
};

#[derive(serde::Deserialize)]
pub(crate) struct ListParams {
    pub(crate) archived: Option<String>,
}

pub(crate) fn archived_param(params: &ListParams, what: &str) -> Result<bool, ApiError> {
    match params.archived.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::invalid_field(
            what,
            "archived",
            format!("must be true or false, not `{other}`"),
        )),
    }
}

pub(crate) async fn document(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
) -> Result<flywheel_store::Document, ApiError> {
    state
        .store
        .document(project_id, kind, key)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("{kind} `{key}` not found in project {project_id}"))
        })
}

/// The optional `version` of an update body (removed from it).
pub(crate) fn take_version(
    body: &mut Map<String, Value>,
    what: &str,
) -> Result<Option<i64>, ApiError> {
    match body.remove("version") {
        None => Ok(None),
        Some(v) => Ok(Some(v.as_i64().filter(|&n| n >= 1).ok_or_else(|| {
            ApiError::invalid_field(
                what,
                "version",
                format!("must be the {what}'s current version (a whole number)"),
            )
        })?)),
    }
}

/// `stored` with the fields of `body` replaced (`null` removes one).
pub(crate) fn merge(stored: &Value, body: Map<String, Value>) -> Map<String, Value> {
    let mut merged = stored.as_object().cloned().unwrap_or_default();
    for (k, v) in body {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    merged
}

/// Parses a definition with `parse`, refusing the document's fields and the kind's `state` fields (set by the
/// server) by field, alongside the definition's own problems.
pub(crate) fn definition_without_state<T>(
    body: &Map<String, Value>,
    what: &str,
    state: &[&str],
    state_message: &str,
    parse: impl FnOnce(&Value) -> Result<T, Vec<FieldError>>,
) -> Result<T, ApiError> {
    let is_state = |k: &str| state.contains(&k);
    let is_document = |k: &str| DOCUMENT_FIELDS.contains(&k);
    let mut errors: Vec<FieldError> = body
        .keys()
        .filter(|k| is_document(k) || is_state(k))
        .map(|k| FieldError {
            field: k.clone(),
            message: if is_state(k) {
                state_message.into()
            } else {
                "cannot be set".into()
            },
        })
        .collect();
    let definition: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !is_document(k) && !is_state(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match parse(&Value::Object(definition)) {
        Ok(x) if errors.is_empty() => Ok(x),
        Ok(_) => Err(ApiError::validation(what, &errors)),
        Err(es) => {
            errors.extend(es);
            Err(ApiError::validation(what, &errors))
        }
    }
}

/// A `limit` query parameter: `default` when absent, else 1 to 1000.
pub(crate) fn limit_param(v: Option<i64>, default: i64, what: &str) -> Result<i64, ApiError> {
    bounded_param(what, "limit", v, default, 1000)
}

/// An integer query parameter `field`: `default` when absent, else 1 to `max`.
pub(crate) fn bounded_param(
    what: &str,
    field: &str,
    v: Option<i64>,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let n = v.unwrap_or(default);
    if !(1..=max).contains(&n) {
        return Err(ApiError::invalid_field(
            what,
            field,
            format!("must be from 1 to {max}"),
        ));
    }
    Ok(n)
}

/// A field error for every key of `body` that is not `known`.
pub(crate) fn unknown_fields(body: &Map<String, Value>, known: &[&str]) -> Vec<FieldError> {
    body.keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError {
            field: k.clone(),
            message: format!("unknown field ({})", known.join(", ")),
        })
        .collect()
}

/// An update body must not rename the document.
pub(crate) fn same_key(body: &Map<String, Value>, key: &str, what: &str) -> Result<(), ApiError> {
    if body.get("key").is_some_and(|k| k.as_str() != Some(key)) {
        return Err(ApiError::invalid_field(
            &format!("{what} update"),
            "key",
            "cannot be changed",
        ));
    }
    Ok(())
}

/// Creates a document of `kind` from its validated definition: 201 with its API view (`what` names it in errors).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_definition(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
    name: &str,
    body: &Value,
    actor: &flywheel_store::Actor,
    what: &str,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let doc = state
        .store
        .create_document(project_id, kind, key, name, body, actor)
        .await
        .map_err(|e| crate::features::write_error(e, what))?;
    Ok((StatusCode::CREATED, Json(document_json(&doc))))
}

/// Replaces a document's name and body (with the `version` the caller read, when given): its API view.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn save_definition(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
    version: Option<i64>,
    name: String,
    body: Value,
    actor: &flywheel_store::Actor,
    what: &str,
) -> Result<Json<Value>, ApiError> {
    let update = flywheel_store::DocumentUpdate {
        name: Some(name),
        body: Some(body),
        ..Default::default()
    };
    let doc = state
        .store
        .update_document(project_id, kind, key, version, &update, actor)
        .await
        .map_err(|e| crate::features::write_error(e, what))?;
    Ok(Json(document_json(&doc)))
}

/// Archives a document of `kind`; with `running_hint`, one that is `running` is refused (409 with the hint).
pub(crate) async fn archive_document(
    state: &AppState,
    project_id: i64,
    kind: &str,
    key: &str,
    running_hint: Option<&str>,
    actor: &flywheel_store::Actor,
) -> Result<StatusCode, ApiError> {
    let current = document(state, project_id, kind, key).await?;
    if let Some(hint) = running_hint.filter(|_| current.body["status"] == "running") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "running",
            format!("{kind} `{key}` is running: {hint}"),
        ));
    }
    let update = flywheel_store::DocumentUpdate {
        archived: Some(true),
        ..Default::default()
    };
    state
        .store
        .update_document(project_id, kind, key, Some(current.version), &update, actor)
        .await
        .map_err(|e| crate::features::write_error(e, kind))?;
    Ok(StatusCode::NO_CONTENT)
}

/// An optional JSON object body of an action (`POST …/{key}/{action}`): empty or `null` is an empty object.
pub(crate) fn optional_object(body: &[u8], what: &str) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(ApiError::invalid_field(what, "body", "must be an object")),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Experiments

/// Fields of an experiment's body that are its state, set by the server.
const STATE_FIELDS: &[&str] = &["status", "phases", "decision"];

/// The experiment rule an experiment analyses: its variations, weights and coverage.
struct BoundRule {
    /// The attribute users are bucketed on.
    hash_attribute: String,
    variations: usize,
    weights: Vec<f64>,
    coverage: f64,
    /// The variations' values.
    values: Vec<Value>,
    /// The key exposures report (the rule's tracking key, or the feature's key).
    tracking_key: String,
    /// The experiment's metric documents, in `Experiment::metric_keys` order.
    metrics: Vec<flywheel_store::Document>,
}

/// Checks the binding and the metrics of `x`; returns the rule and the metrics.
async fn check_experiment(
    state: &AppState,
    project_id: i64,
    x: &flywheel_query::experiment::Experiment,
) -> Result<BoundRule, ApiError> {
    let invalid =
        |field: &str, message: String| ApiError::invalid_field("experiment", field, message);
    let feature = state
        .store
        .feature(project_id, &x.feature)
        .await?
        .filter(|f| !f.archived)
        .ok_or_else(|| {
            invalid(
                "feature",
                format!("no feature `{}` in this project", x.feature),
            )
        })?;
    let definition: crate::features::FeatureDefinition =
        serde_json::from_value(feature.definition.clone()).map_err(ApiError::internal)?;
    let env = definition.environments.get(&x.environment).ok_or_else(|| {
        invalid(
            "environment",
            format!(
                "feature `{}` has no settings for environment `{}`",
                x.feature, x.environment
            ),
        )
    })?;
    let mut rule = env
        .rules
        .iter()
        .find_map(|r| match r {
            crate::features::Rule::Experiment {
                id,
                variations,
                weights,
                coverage,
                tracking_key,
                hash_attribute,
                ..
            } if *id == x.rule_id => Some(BoundRule {
                hash_attribute: hash_attribute.clone(),
                metrics: Vec::new(),
                values: variations.clone(),
                tracking_key: tracking_key.clone().unwrap_or_else(|| x.feature.clone()),
                variations: variations.len(),
                weights: weights.clone().unwrap_or_else(|| {
                    vec![1.0 / variations.len().max(1) as f64; variations.len()]
                }),
                coverage: *coverage,
            }),
            _ => None,
        })
        .ok_or_else(|| {
            invalid(
                "rule_id",
                format!(
                    "feature `{}` has no experiment rule `{}` in `{}`",
                    x.feature, x.rule_id, x.environment
                ),
            )
        })?;
    let mut errors = Vec::new();
    if let Some(unit) = x.unit.as_ref().filter(|_| rule.hash_attribute == "id") {
        errors.push(FieldError {
            field: "unit".into(),
            message: format!(
                "rule `{}` buckets users (hash attribute `id`): an experiment on `{unit}` needs a rule bucketed \
                 on the {unit}'s key (its `hash_attribute`), or every member would be assigned on their own",
                x.rule_id
            ),
        });
    }
    for (list, keys) in [
        ("primary", &x.primary),
        ("secondary", &x.secondary),
        ("guardrail", &x.guardrail),
    ] {
        for (i, k) in keys.iter().enumerate() {
            match state.store.document(project_id, METRIC, k).await? {
                Some(m) if !m.archived => rule.metrics.push(m),
                _ => errors.push(FieldError {
                    field: format!("metrics.{list}[{i}]"),
                    message: format!("no metric `{k}` (or it is archived)"),
                }),
            }
        }
    }
    // The kernel's limits: measures (a ratio is two) and mask bits (one per event scan).
    let parsed: Vec<_> = rule
        .metrics
        .iter()
        .filter_map(|d| parse_metric(&d.body).ok())
        .collect();
    let measures: usize = parsed
        .iter()
        .map(|m| 1 + usize::from(m.denominator.is_some()))
        .sum();
    let scans: usize = parsed
        .iter()
        .map(|m| 1 + usize::from(m.denominator.is_some()) + m.then.len())
        .sum();
    if measures > flywheel_kernels::experiment::MAX_METRICS || scans > 61 {
        errors.push(FieldError {
            field: "metrics".into(),
            message: format!(
                "{measures} measures (a ratio is two) over {scans} events (a funnel step is one): an experiment \
                 analyses at most {} measures and 61 events",
                flywheel_kernels::experiment::MAX_METRICS
            ),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("experiment", &errors));
    }
    Ok(rule)
}

/// Parses an experiment definition (`body` without document or state fields, which are refused).
fn experiment_definition(
    body: &Map<String, Value>,
) -> Result<flywheel_query::experiment::Experiment, ApiError> {
    definition_without_state(
        body,
        "experiment",
        STATE_FIELDS,
        "is set by …/start and …/stop",
        flywheel_query::experiment::parse_experiment,
    )
}

/// The stored body: the definition and the state.
fn experiment_body(
    x: &flywheel_query::experiment::Experiment,
    status: &str,
    phases: &Value,
) -> Value {
    let mut v = x.to_json();
    v["status"] = json!(status);
    v["phases"] = phases.clone();
    v
}

/// The state of a stored experiment, and its definition alone.
fn state_of(doc: &flywheel_store::Document) -> (String, Value, Value) {
    let mut definition = doc.body.clone();
    if let Some(o) = definition.as_object_mut() {
        for f in STATE_FIELDS {
            o.remove(*f);
        }
    }
    (
        doc.body["status"].as_str().unwrap_or("draft").to_owned(),
        doc.body.get("phases").cloned().unwrap_or_else(|| json!([])),
        definition,
    )
}

fn stored_experiment(
    key: &str,
    definition: &Value,
) -> Result<flywheel_query::experiment::Experiment, ApiError> {
    flywheel_query::experiment::parse_experiment(definition)
        .map_err(|_| ApiError::internal(format!("stored experiment `{key}` does not parse")))
}

async fn list_experiments(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let archived = archived_param(&params, "experiment list")?;
    let docs = state
        .store
        .documents(project_id, EXPERIMENT, archived)
        .await?;
    Ok(Json(
        json!({"results": docs.iter().map(document_json).collect::<Vec<_>>()}),
    ))
}

async fn get_experiment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    Ok(Json(document_json(
        &document(&state, project_id, EXPERIMENT, &key).await?,
    )))
}

async fn create_experiment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let x = experiment_definition(&body)?;
    check_experiment(&state, project_id, &x).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    create_definition(
        &state,
        project_id,
        EXPERIMENT,
        &x.key,
        &x.name,
        &experiment_body(&x, "draft", &json!([])),
        &actor,
        "experiment",
    )
    .await
}

async fn patch_experiment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = document(&state, project_id, EXPERIMENT, &key).await?;
    let version = take_version(&mut body, "experiment")?;
    same_key(&body, &key, "experiment")?;
    let (status, phases, stored) = state_of(&current);
    let before = stored_experiment(&key, &stored)?;
    let x = experiment_definition(&merge(&stored, body))?;
    if status != "draft"
        && (x.feature != before.feature
            || x.rule_id != before.rule_id
            || x.environment != before.environment)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "experiment_started",
            "the feature, rule and environment of an experiment that has started cannot change: \
             create a new experiment",
        ));
    }
    check_experiment(&state, project_id, &x).await?;
    let mut body = experiment_body(&x, &status, &phases);
    if let Some(d) = current.body.get("decision") {
        body["decision"] = d.clone();
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    save_definition(
        &state,
        project_id,
        EXPERIMENT,
        &key,
        version,
        x.name.clone(),
        body,
        &actor,
        "experiment",
    )
    .await
}

/// Moves an experiment to `to`: `running` opens a phase with the rule's weights now, `stopped` closes it.
async fn transition(
    state: &AppState,
    caller: &Caller,
    actor: flywheel_store::Actor,
    project_id: &str,
    key: &str,
    to: &str,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(state, caller, project_id).await?;
    let current = document(state, project_id, EXPERIMENT, key).await?;
    if current.archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            format!("experiment `{key}` is archived"),
        ));
    }
    let (status, phases, stored) = state_of(&current);
    let mut phases: Vec<Value> = phases.as_array().cloned().unwrap_or_default();
    let field = if to == "running" {
        "started_at"
    } else {
        "stopped_at"
    };
    let clock = state.clock.now();
    let when = at.unwrap_or(clock);
    if when > clock {
        return Err(ApiError::invalid_field(
            "experiment",
            field,
            "cannot be in the future",
        ));
    }
    // A phase starts after the previous one stopped, and stops after it started.
    let previous = phases.last().and_then(|p| {
        p[if to == "running" {
            "stopped_at"
        } else {
            "started_at"
        }]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    });
    if let Some(previous) = previous.filter(|p| when < *p) {
        return Err(ApiError::invalid_field(
            "experiment",
            field,
            format!("must not be before {}", previous.to_rfc3339()),
        ));
    }
    let now = when.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if to == "running" && current.body.get("decision").is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "decided",
            format!("experiment `{key}` has a decision: start a new experiment"),
        ));
    }
    match (status.as_str(), to) {
        ("draft" | "stopped", "running") => {
            let x = stored_experiment(key, &stored)?;
            let rule = check_experiment(state, project_id, &x).await?;
            phases.push(json!({
                "started_at": now,
                "stopped_at": null,
                "variations": rule.variations,
                "weights": rule.weights,
                "coverage": rule.coverage,
            }));
        }
        ("running", "stopped") => {
            if let Some(last) = phases.last_mut() {
                last["stopped_at"] = json!(now);
            }
        }
        (from, to) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                format!("experiment `{key}` is {from}: it cannot become {to}"),
            ))
        }
    }
    let mut body = current.body.clone();
    body["status"] = json!(to);
    body["phases"] = Value::Array(phases);
    let update = flywheel_store::DocumentUpdate {
        body: Some(body),
        ..Default::default()
    };
    let doc = state
        .store
        .update_document(
            project_id,
            EXPERIMENT,
            key,
            Some(current.version),
            &update,
            &actor,
        )
        .await
        .map_err(|e| crate::features::write_error(e, "experiment"))?;
    experiments_changed(state, project_id).await?;
    Ok(Json(document_json(&doc)))
}

/// `POST …/experiments/{key}/start` and `…/stop`.
async fn experiment_action(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let to = match action.as_str() {
        "start" => "running",
        "stop" => "stopped",
        other => {
            return Err(ApiError::not_found(format!(
                "no experiment action `{other}` (start, stop)"
            )))
        }
    };
    // Optional body: `{"started_at": …}` / `{"stopped_at": …}` (RFC 3339, not in the future), e.g. for an
    // experiment that ran before it was set up here.
    let field = if to == "running" {
        "started_at"
    } else {
        "stopped_at"
    };
    let obj = optional_object(&body, "experiment")?;
    if let Some(k) = obj.keys().find(|k| k.as_str() != field) {
        return Err(ApiError::invalid_field(
            "experiment",
            k,
            format!("unknown field (only `{field}`)"),
        ));
    }
    let at = match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(t) => Some(
            t.as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "experiment",
                        field,
                        "must be an RFC 3339 time such as 2026-01-01T00:00:00Z",
                    )
                })?,
        ),
    };
    let actor = crate::features::actor(&caller, &headers, peer);
    transition(&state, &caller, actor, &project_id, &key, to, at).await
}

async fn archive_experiment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    let tracking = match document(&state, project_id, EXPERIMENT, &key).await {
        Ok(doc) => match flywheel_query::experiment::parse_experiment(&state_of(&doc).2) {
            Ok(x) => tracking_key_of(&state, project_id, &x).await?,
            Err(_) => None,
        },
        Err(_) => None,
    };
    let archived = archive_document(
        &state,
        project_id,
        EXPERIMENT,
        &key,
        Some("stop it first"),
        &actor,
    )
    .await?;
    purge_sticky(&state, project_id, tracking).await;
    Ok(archived)
}

/// `GET …/experiments/{key}/results`. Complete answers are cached by the experiment's, its metrics' and the rule's
/// versions, the data version and the identity epoch (new events, merges or property changes make a new key; an
/// event timestamped in the future counts once its time has come and the data changed); `Cache-Control: no-cache`
/// computes again.
async fn experiment_view(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((project_id, key, view)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    if view != "results" {
        return Err(ApiError::not_found(format!(
            "no experiment view `{view}` (results)"
        )));
    }
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = document(&state, project_id, EXPERIMENT, &key).await?;
    let (_, phases, stored) = state_of(&current);
    let Some(phase) = phases.as_array().and_then(|p| p.last()).cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_started",
            format!("experiment `{key}` has not started: no results yet"),
        ));
    };
    let x = stored_experiment(&key, &stored)?;
    let rule = check_experiment(&state, project_id, &x).await?;
    let mut metrics = Vec::new();
    // The key names the data the answer will see: after the tables caught up with every accepted event.
    state.tables_catch_up().await;
    let mut cache_key = format!(
        "experiment-results|{project_id}|{key}|{}|{}|{}|{}",
        current.version,
        json!([rule.values, rule.weights, rule.tracking_key]),
        state.tables.version(project_id),
        state.flags.subjects.epoch(),
    );
    for doc in &rule.metrics {
        let k = &doc.key;
        cache_key.push_str(&format!("|{k}:{}", doc.version));
        metrics.push(
            parse_metric(&doc.body)
                .map_err(|_| ApiError::internal(format!("stored metric `{k}` does not parse")))?,
        );
    }
    let no_cache = headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("no-cache"));
    if !no_cache {
        if let Some(hit) = state.insights.result(&cache_key) {
            let mut out = (*hit).clone();
            out["cached"] = json!(true);
            return Ok(Json(out));
        }
    }
    let variations = crate::experiment_results::Variations {
        values: rule.values,
        tracking_key: rule.tracking_key,
    };
    let mut out =
        crate::experiment_results::results(&state, project_id, &x, &phase, variations, metrics)
            .await?;
    out["experiment"] = json!(key);
    out["engine"] = json!(x.analysis.engine.name());
    out["cached"] = json!(false);
    if out["complete"] == true {
        state
            .insights
            .keep_result(cache_key, std::sync::Arc::new(out.clone()));
    }
    Ok(Json(out))
}

/// `POST …/experiments/{key}/decision`.
async fn decide_experiment(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut errors = Vec::new();
    let decision = match body.get("action").and_then(Value::as_str) {
        Some("ship") => match body.get("variation").and_then(Value::as_u64) {
            Some(i) => Some(crate::features::RuleDecision::Ship(i as usize)),
            None => {
                errors.push(FieldError {
                    field: "variation".into(),
                    message: "is required to ship: the index of the variation (0 is the control)"
                        .into(),
                });
                None
            }
        },
        Some("rollback") => Some(crate::features::RuleDecision::RollBack),
        _ => {
            errors.push(FieldError {
                field: "action".into(),
                message: "must be `ship` or `rollback`".into(),
            });
            None
        }
    };
    for k in body.keys() {
        if !["action", "variation", "reason"].contains(&k.as_str()) {
            errors.push(FieldError {
                field: k.clone(),
                message: "unknown field (action, variation, reason)".into(),
            });
        }
    }
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(decision) = decision.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation("decision", &errors));
    };
    let current = document(&state, project_id, EXPERIMENT, &key).await?;
    let (status, phases, stored) = state_of(&current);
    if status == "draft" || current.archived || current.body.get("decision").is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_decidable",
            format!("experiment `{key}` is {status}{}: only a started experiment without a decision can be decided",
                if current.archived { " and archived" } else { "" }),
        ));
    }
    let x = stored_experiment(&key, &stored)?;
    let tracking = tracking_key_of(&state, project_id, &x).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    crate::features::decide_rule(
        &state,
        project_id,
        &x.feature,
        &x.environment,
        &x.rule_id,
        &decision,
        &actor,
    )
    .await?;
    let now = state
        .clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut phases: Vec<Value> = phases.as_array().cloned().unwrap_or_default();
    if let Some(last) = phases.last_mut().filter(|p| p["stopped_at"].is_null()) {
        last["stopped_at"] = json!(now);
    }
    let mut body = current.body.clone();
    body["status"] = json!("stopped");
    body["phases"] = Value::Array(phases);
    body["decision"] = match decision {
        crate::features::RuleDecision::Ship(i) => {
            json!({"action": "ship", "variation": i, "reason": reason, "decided_at": now, "by": actor.label})
        }
        crate::features::RuleDecision::RollBack => {
            json!({"action": "rollback", "reason": reason, "decided_at": now, "by": actor.label})
        }
    };
    // Announced for webhooks as `experiment.decided`, audited as `experiment.decided`.
    let mut announce = body["decision"].clone();
    announce["experiment"] = json!(key);
    let update = flywheel_store::DocumentUpdate {
        body: Some(body),
        action: Some("decided".to_owned()),
        announce: Some(("experiment.decided".to_owned(), announce)),
        ..Default::default()
    };
    let doc = state
        .store
        .update_document(project_id, EXPERIMENT, &key, None, &update, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "experiment"))?;
    experiments_changed(&state, project_id).await?;
    purge_sticky(&state, project_id, tracking).await;
    Ok(Json(document_json(&doc)))
}

/// After a feature change: each running experiment bound to one of its experiment rules whose variations, weights
/// or coverage changed gets a new phase now (the previous one stops), which continues the run: server-side
/// evaluations keep every assigned user in their variation (sticky bucketing), and the new phase analyses the
/// units that entered under the new weights (`run_started_at` keeps the run's start, so returning units are
/// recognised and reported as `carried_over`). Audited as `experiment.updated`.
pub(crate) async fn feature_changed(
    state: &AppState,
    project_id: i64,
    feature: &str,
    def: &crate::features::FeatureDefinition,
    actor: &flywheel_store::Actor,
) -> Result<(), ApiError> {
    let running = state
        .store
        .documents_with_status(EXPERIMENT, "running")
        .await?;
    for (_, doc) in running.into_iter().filter(|(p, _)| *p == project_id) {
        let (_, phases, stored) = state_of(&doc);
        let Ok(x) = flywheel_query::experiment::parse_experiment(&stored) else {
            continue;
        };
        if x.feature != feature {
            continue;
        }
        let Some(rule) = def.environments.get(&x.environment).and_then(|env| {
            env.rules.iter().find_map(|r| match r {
                crate::features::Rule::Experiment {
                    id,
                    variations,
                    weights,
                    coverage,
                    ..
                } if *id == x.rule_id => Some((
                    variations.len(),
                    weights.clone().unwrap_or_else(|| {
                        vec![1.0 / variations.len().max(1) as f64; variations.len()]
                    }),
                    *coverage,
                )),
                _ => None,
            })
        }) else {
            continue;
        };
        let mut phases: Vec<Value> = phases.as_array().cloned().unwrap_or_default();
        let Some(last) = phases.last_mut() else {
            continue;
        };
        let same = last["variations"].as_u64() == Some(rule.0 as u64)
            && last["coverage"].as_f64() == Some(rule.2)
            && last["weights"].as_array().is_some_and(|w| {
                w.iter()
                    .map(Value::as_f64)
                    .eq(rule.1.iter().map(|&x| Some(x)))
            });
        if same {
            continue;
        }
        let now = state
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let run_started_at = if last["run_started_at"].is_string() {
            last["run_started_at"].clone()
        } else {
            last["started_at"].clone()
        };
        last["stopped_at"] = json!(now);
        phases.push(json!({
            "started_at": now,
            "stopped_at": null,
            "variations": rule.0,
            "weights": rule.1,
            "coverage": rule.2,
            "run_started_at": run_started_at,
            "reason": "the rule's variations, weights or coverage changed",
        }));
        let mut body = doc.body.clone();
        body["phases"] = Value::Array(phases);
        let update = flywheel_store::DocumentUpdate {
            body: Some(body),
            ..Default::default()
        };
        state
            .store
            .update_document(
                project_id,
                EXPERIMENT,
                &doc.key,
                Some(doc.version),
                &update,
                actor,
            )
            .await
            .map_err(|e| crate::features::write_error(e, "experiment"))?;
    }
    experiments_changed(state, project_id).await
}

/// The key exposures and sticky assignments use for experiment `x`: its rule's tracking key, else the feature's
/// key (`None` when the rule is gone).
async fn tracking_key_of(
    state: &AppState,
    project_id: i64,
    x: &flywheel_query::experiment::Experiment,
) -> Result<Option<String>, ApiError> {
    let Some(feature) = state.store.feature(project_id, &x.feature).await? else {
        return Ok(None);
    };
    let rule = feature.definition["environments"][&x.environment]["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["id"] == json!(x.rule_id)).cloned());
    Ok(rule.map(|r| r["tracking_key"].as_str().unwrap_or(&x.feature).to_owned()))
}

/// Forgets the sticky assignments of an experiment that is over (decided or archived), off the async workers.
async fn purge_sticky(state: &AppState, project_id: i64, key: Option<String>) {
    // Another running experiment may report under the same key (two experiments on one feature): keep them.
    let Some(key) = key.filter(|k| !state.sticky.is_running(project_id, k)) else {
        return;
    };
    let sticky = state.sticky.clone();
    let purged = tokio::task::spawn_blocking(move || sticky.purge(project_id, &key)).await;
    if let Ok(n) = purged {
        tracing::info!(
            project_id,
            documents = n,
            "sticky assignments of a finished experiment dropped"
        );
    }
}

/// After this node started, stopped or decided experiments: its sticky store follows, and so do the other nodes'
/// (shared metadata: they refresh theirs when they hear the announcement, see `flag_sync`).
async fn experiments_changed(state: &AppState, project_id: i64) -> Result<(), ApiError> {
    refresh_sticky(state, project_id).await?;
    if let Err(e) = state.store.announce_flags(project_id).await {
        tracing::warn!(project_id, error = %e, "announcing an experiment change failed; other nodes poll for it");
    }
    Ok(())
}

/// Tells the sticky store the experiment keys of `project_id`'s running experiments (after a start, stop,
/// decision or feature change): server-side evaluations keep assignments for those only.
pub(crate) async fn refresh_sticky(state: &AppState, project_id: i64) -> Result<(), ApiError> {
    let mut keys = std::collections::HashSet::new();
    for (p, doc) in state
        .store
        .documents_with_status(EXPERIMENT, "running")
        .await?
    {
        if p != project_id {
            continue;
        }
        let (_, _, stored) = state_of(&doc);
        let Ok(x) = flywheel_query::experiment::parse_experiment(&stored) else {
            continue;
        };
        if let Some(k) = tracking_key_of(state, project_id, &x).await? {
            keys.insert(k);
        }
    }
    state.sticky.set_running(project_id, keys);
    Ok(())
}

/// [`refresh_sticky`] for every project with a running experiment (at start).
pub async fn refresh_sticky_all(state: &AppState) -> Result<(), ApiError> {
    let mut projects: Vec<i64> = state
        .store
        .documents_with_status(EXPERIMENT, "running")
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    projects.dedup();
    for p in projects {
        refresh_sticky(state, p).await?;
    }
    Ok(())
}
