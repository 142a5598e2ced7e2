//! Guarded rollouts: `…/projects/{project_id}/rollouts`.
//!
//! A rollout ([`flywheel_query::rollout::Rollout`], a store document of kind `rollout`) gives a feature's new value
//! to a growing share of users by a plan of steps, and watches guardrail metrics on the way. Its state is kept with
//! the definition: `status` (`draft` → `running` → `completed` | `rolled_back` | `stopped`), the current `step`,
//! when it started (`step_started_at`) and a `history` of what happened.
//!
//! `POST …/start` puts an experiment rule `rollout-{key}` first in the environment's rules: variations
//! `[control value, new value]` with weights `[1 − p, p]` (coverage 1, bucketed on `hash_attribute`). The
//! treatment's share of the hash range is its end, `[1 − p, 1)`, so raising `p` only moves control users into the
//! treatment: whoever got the new value keeps it at every later step, in every SDK, with no stored state (sticky
//! across steps). Server-side evaluations record exposures; SDKs report theirs (`$feature_flag_called`,
//! `experiment_viewed`), like for any experiment.
//!
//! A watcher checks every running rollout each `rollout_check_interval` (and `POST …/check` checks one now): the
//! current step is analysed as an experiment phase from `step_started_at` (exposures in the step; absolute lift;
//! the sequential test, whose always-valid p-values allow looking continuously). A guardrail regresses when the
//! treatment is significantly worse at `alpha` (each guardrail at `alpha`, uncorrected: a needless rollback is the
//! safe error), or when the step's treatment has `min_units` and its value crosses the guardrail's `threshold`.
//! Then the rollout rolls back by itself: the rule is disabled (everyone gets what they got before), the rollout
//! becomes `rolled_back` with the reason, the change is audited (`feature.updated`, `rollout.rolled_back`) and
//! announced in the outbox (topic `rollout.rolled_back`) in the same transaction as the state change. Otherwise,
//! once the step ran `min_duration_secs` and its treatment has `min_units` exposed units, the rollout advances
//! (`rollout.advanced`); reaching 100 % ships the value (the rule becomes a force rule; `rollout.completed`).
//! Checks on data still being indexed decide nothing. `POST …/rollback` rolls back by hand (with a `reason`).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use flywheel_query::experiment::{parse_metric, Analysis, Experiment, Lift, StatsEngine};
use flywheel_query::rollout::{parse_rollout, Rollout};
use flywheel_query::FieldError;
use flywheel_store::{Actor, Document, DocumentUpdate};
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::experiments::{
    archive_document, archived_param, create_definition, definition_without_state, document,
    document_json, merge, optional_object, same_key, save_definition, take_version, ListParams,
    METRIC,
};
use crate::features::{change_feature, rule_mut, Rule};
use crate::state::AppState;

pub(crate) const ROLLOUT: &str = "rollout";

/// Fields of a rollout's body that are its state, set by the server.
const STATE_FIELDS: &[&str] = &["status", "step", "step_started_at", "history"];

/// The last check of each running rollout, by (project, key), and a lock so that one check runs at a time.
#[derive(Default)]
pub struct Checks {
    last: Mutex<HashMap<(i64, String), Value>>,
    running: tokio::sync::Mutex<()>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/rollouts",
            get(list_rollouts).post(create_rollout),
        )
        .route(
            "/api/v1/projects/{project_id}/rollouts/{key}",
            get(get_rollout)
                .patch(patch_rollout)
                .delete(archive_rollout),
        )
        .route(
            "/api/v1/projects/{project_id}/rollouts/{key}/{action}",
            post(rollout_action),
        )
        .route("/api/v1/projects/{project_id}/outbox", get(list_outbox))
}

fn now_text(state: &AppState) -> String {
    state
        .clock
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses a definition (`body` without document or state fields, which are refused).
fn rollout_definition(body: &Map<String, Value>) -> Result<Rollout, ApiError> {
    definition_without_state(
        body,
        "rollout",
        STATE_FIELDS,
        "is set by the server as the rollout runs",
        parse_rollout,
    )
}

/// The definition of a stored rollout, and its status.
fn stored(doc: &Document) -> Result<(Rollout, String), ApiError> {
    let mut definition = doc.body.clone();
    if let Some(o) = definition.as_object_mut() {
        for f in STATE_FIELDS {
            o.remove(*f);
        }
    }
    let r = parse_rollout(&definition)
        .map_err(|_| ApiError::internal(format!("stored rollout `{}` does not parse", doc.key)))?;
    let status = doc.body["status"].as_str().unwrap_or("draft").to_owned();
    Ok((r, status))
}

/// Checks that the feature, its environment and the guardrail metrics exist; returns the metric documents.
async fn check_binding(
    state: &AppState,
    project_id: i64,
    r: &Rollout,
) -> Result<Vec<Document>, ApiError> {
    let invalid = |field: &str, message: String| ApiError::invalid_field("rollout", field, message);
    let feature = state
        .store
        .feature(project_id, &r.feature)
        .await?
        .filter(|f| !f.archived)
        .ok_or_else(|| {
            invalid(
                "feature",
                format!("no feature `{}` in this project", r.feature),
            )
        })?;
    if feature.definition["environments"][&r.environment].is_null() {
        return Err(invalid(
            "environment",
            format!(
                "feature `{}` has no settings for environment `{}`",
                r.feature, r.environment
            ),
        ));
    }
    let mut metrics = Vec::new();
    let mut errors = Vec::new();
    for (i, g) in r.guardrails.iter().enumerate() {
        match state.store.document(project_id, METRIC, &g.metric).await? {
            Some(m) if !m.archived => metrics.push(m),
            _ => errors.push(FieldError {
                field: format!("guardrails[{i}].metric"),
                message: format!("no metric `{}` (or it is archived)", g.metric),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation("rollout", &errors));
    }
    Ok(metrics)
}

async fn list_rollouts(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let archived = archived_param(&params, "rollout list")?;
    let docs = state.store.documents(project_id, ROLLOUT, archived).await?;
    let results: Vec<Value> = docs.iter().map(|d| view(&state, project_id, d)).collect();
    Ok(Json(json!({ "results": results })))
}

/// The API's view: the document, and the last check while it runs.
fn view(state: &AppState, project_id: i64, doc: &Document) -> Value {
    let mut v = document_json(doc);
    if doc.body["status"] == "running" {
        let last = state.rollouts.last.lock().expect("rollout checks");
        if let Some(check) = last.get(&(project_id, doc.key.clone())) {
            v["last_check"] = check.clone();
        }
    }
    v
}

async fn get_rollout(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let doc = document(&state, project_id, ROLLOUT, &key).await?;
    Ok(Json(view(&state, project_id, &doc)))
}

fn draft_body(r: &Rollout) -> Value {
    let mut v = r.to_json();
    v["status"] = json!("draft");
    v["step"] = Value::Null;
    v["step_started_at"] = Value::Null;
    v["history"] = json!([]);
    v
}

async fn create_rollout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let r = rollout_definition(&body)?;
    check_binding(&state, project_id, &r).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    create_definition(
        &state,
        project_id,
        ROLLOUT,
        &r.key,
        &r.name,
        &draft_body(&r),
        &actor,
        "rollout",
    )
    .await
}

async fn patch_rollout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = document(&state, project_id, ROLLOUT, &key).await?;
    let version = take_version(&mut body, "rollout")?;
    same_key(&body, &key, "rollout")?;
    let (before, status) = stored(&current)?;
    if status != "draft" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_started",
            format!("rollout `{key}` is {status}: only a draft can change (create a new rollout)"),
        ));
    }
    let r = rollout_definition(&merge(&before.to_json(), body))?;
    check_binding(&state, project_id, &r).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    save_definition(
        &state,
        project_id,
        ROLLOUT,
        &key,
        version,
        r.name.clone(),
        draft_body(&r),
        &actor,
        "rollout",
    )
    .await
}

async fn archive_rollout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    archive_document(
        &state,
        project_id,
        ROLLOUT,
        &key,
        Some("roll it back first"),
        &actor,
    )
    .await
}

/// The weights of the rollout's rule at `percent`.
fn weights(percent: f64) -> Vec<f64> {
    let p = percent / 100.0;
    vec![1.0 - p, p]
}

/// `POST …/rollouts/{key}/start`, `…/rollback` (`{"reason": …}`) and `…/check`.
async fn rollout_action(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, key, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let body = optional_object(&body, "rollout")?;
    let allowed: &[&str] = if action == "rollback" {
        &["reason"]
    } else {
        &[]
    };
    if let Some(k) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid_field(
            "rollout",
            k,
            format!("unknown field for `{action}`"),
        ));
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let _one_at_a_time = state.rollouts.running.lock().await;
    let doc = document(&state, project_id, ROLLOUT, &key).await?;
    if doc.archived {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "archived",
            format!("rollout `{key}` is archived"),
        ));
    }
    match action.as_str() {
        "start" => {
            let doc = start(&state, project_id, doc, &actor).await?;
            Ok(Json(view(&state, project_id, &doc)))
        }
        "rollback" => {
            let (_, status) = stored(&doc)?;
            if status != "running" {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_running",
                    format!("rollout `{key}` is {status}: only a running rollout rolls back"),
                ));
            }
            let reason = match body.get("reason") {
                None => "rolled back by hand".to_owned(),
                Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 1000 => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        "rollout",
                        "reason",
                        "must be a non-empty string of at most 1000 characters",
                    ))
                }
            };
            let doc = roll_back(&state, project_id, doc, &reason, json!([]), &actor).await?;
            Ok(Json(view(&state, project_id, &doc)))
        }
        "check" => {
            let (_, status) = stored(&doc)?;
            if status != "running" {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_running",
                    format!("rollout `{key}` is {status}: only a running rollout is checked"),
                ));
            }
            let (doc, check) = check(&state, project_id, doc).await?;
            let mut v = view(&state, project_id, &doc);
            v["last_check"] = check;
            Ok(Json(v))
        }
        other => Err(ApiError::not_found(format!(
            "no rollout action `{other}` (start, rollback, check)"
        ))),
    }
}

/// Writes the rollout's new state with an audit action and an outbox announcement.
async fn record(
    state: &AppState,
    project_id: i64,
    doc: &Document,
    body: Value,
    action: &str,
    announce: Value,
    actor: &Actor,
) -> Result<Document, ApiError> {
    let update = DocumentUpdate {
        body: Some(body),
        action: Some(action.to_owned()),
        announce: Some((format!("{ROLLOUT}.{action}"), announce)),
        ..Default::default()
    };
    state
        .store
        .update_document(
            project_id,
            ROLLOUT,
            &doc.key,
            Some(doc.version),
            &update,
            actor,
        )
        .await
        .map_err(|e| crate::features::write_error(e, "rollout"))
}

fn history_entry(state: &AppState, action: &str, step: usize, percent: f64) -> Value {
    json!({"at": now_text(state), "action": action, "step": step, "percent": percent})
}

fn announcement(r: &Rollout, step: usize, percent: f64) -> Value {
    json!({"rollout": r.key, "feature": r.feature, "environment": r.environment,
           "step": step, "percent": percent})
}

/// Draft → running: the rule goes first in the environment's rules at the first step's share.
async fn start(
    state: &AppState,
    project_id: i64,
    doc: Document,
    actor: &Actor,
) -> Result<Document, ApiError> {
    let (r, status) = stored(&doc)?;
    if status != "draft" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            format!("rollout `{}` is {status}: only a draft starts", r.key),
        ));
    }
    check_binding(state, project_id, &r).await?;
    let percent = r.steps[0].percent;
    let rule_id = r.rule_id();
    change_feature(state, project_id, &r.feature, actor, |def| {
        let control = r
            .control_value
            .clone()
            .unwrap_or_else(|| def.default_value.clone());
        let env = def.environments.get_mut(&r.environment).ok_or_else(|| {
            ApiError::invalid_field(
                "rollout",
                "environment",
                format!(
                    "feature `{}` has no `{}` settings",
                    r.feature, r.environment
                ),
            )
        })?;
        if !env.enabled {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "environment_disabled",
                format!(
                    "feature `{}` is disabled in `{}`: nobody would get the rollout",
                    r.feature, r.environment
                ),
            ));
        }
        if env.rules.iter().any(|x| x.id() == rule_id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "rule_exists",
                format!("feature `{}` already has a rule `{rule_id}`", r.feature),
            ));
        }
        env.rules.insert(
            0,
            Rule::Experiment {
                id: rule_id.clone(),
                description: format!("Guarded rollout `{}`", r.key),
                condition: r.condition.clone(),
                saved_groups: Vec::new(),
                tracking_key: None,
                hash_attribute: r.hash_attribute.clone(),
                variations: vec![control, r.value.clone()],
                weights: Some(weights(percent)),
                coverage: 1.0,
                namespace: None,
                enabled: true,
                // The treatment grows step by step: bucketed afresh (its range only grows, so nobody loses it).
                sticky: false,
            },
        );
        Ok(())
    })
    .await?;
    let mut body = doc.body.clone();
    body["status"] = json!("running");
    body["step"] = json!(0);
    body["step_started_at"] = json!(now_text(state));
    body["history"] = json!([history_entry(state, "started", 0, percent)]);
    record(
        state,
        project_id,
        &doc,
        body,
        "started",
        announcement(&r, 0, percent),
        actor,
    )
    .await
}

/// Running → rolled back: the rule is disabled (users get what they got before the rollout).
async fn roll_back(
    state: &AppState,
    project_id: i64,
    doc: Document,
    reason: &str,
    guardrails: Value,
    actor: &Actor,
) -> Result<Document, ApiError> {
    let (r, _) = stored(&doc)?;
    let step = doc.body["step"].as_u64().unwrap_or(0) as usize;
    let percent = r.steps.get(step).map_or(0.0, |s| s.percent);
    let rule_id = r.rule_id();
    let disabled = change_feature(state, project_id, &r.feature, actor, |def| {
        match rule_mut(def, &r.feature, &r.environment, &rule_id) {
            Ok(Rule::Experiment { enabled, .. }) => {
                *enabled = false;
                Ok(true)
            }
            // Removed or replaced by hand: nothing of the rollout is served any more.
            _ => Ok(false),
        }
    })
    .await;
    match disabled {
        Ok(_) => {}
        // The feature was archived or deleted: nothing is served.
        Err(e) if e.status == StatusCode::NOT_FOUND => {}
        Err(e) => return Err(e),
    }
    let mut body = doc.body.clone();
    body["status"] = json!("rolled_back");
    let mut entry = history_entry(state, "rolled_back", step, percent);
    entry["reason"] = json!(reason);
    entry["by"] = json!(actor.label);
    push_history(&mut body, entry);
    let mut message = announcement(&r, step, percent);
    message["reason"] = json!(reason);
    message["guardrails"] = guardrails;
    forget(state, project_id, &doc.key);
    record(state, project_id, &doc, body, "rolled_back", message, actor).await
}

/// Who the watcher's changes are by.
fn watcher() -> Actor {
    Actor {
        label: "system:rollout-guard".into(),
        source_ip: None,
    }
}

/// Micros since the epoch of an RFC 3339 time.
fn micros(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_micros())
}

/// Judges each guardrail of an analysed step: (report, regression messages).
fn judge(r: &Rollout, results: &Value, min_units: u64) -> (Vec<Value>, Vec<String>) {
    let treatment_units = results["units"][1].as_u64().unwrap_or(0);
    let mut reports = Vec::new();
    let mut regressions = Vec::new();
    for (g, m) in r.guardrails.iter().zip(
        results["metrics"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    ) {
        let inverse = m["inverse"].as_bool().unwrap_or(false);
        let analysis = &m["analysis"];
        let comparison = &analysis["comparisons"][0];
        let result = &comparison["result"];
        let mut report = json!({"metric": g.metric, "inverse": inverse,
            "control": analysis["control_value"], "treatment": comparison["value"],
            "units": results["units"], "threshold": g.threshold});
        let mut problems = Vec::new();
        if result.is_object() {
            let (lo, hi) = (
                result["ci"]["lower"].as_f64(),
                result["ci"]["upper"].as_f64(),
            );
            report["difference"] = result["estimate"].clone();
            report["ci"] = result["ci"].clone();
            report["p_value"] = result["p_value"].clone();
            let worse = if inverse {
                lo.is_some_and(|l| l > 0.0)
            } else {
                hi.is_some_and(|h| h < 0.0)
            };
            if worse {
                problems.push(format!(
                    "guardrail `{}` regressed: the treatment is significantly {} than the control \
                     (difference {}, p = {})",
                    g.metric,
                    if inverse { "higher" } else { "lower" },
                    result["estimate"],
                    result["p_value"],
                ));
            }
        } else {
            report["note"] = json!(analysis["error"]
                .as_str()
                .or(comparison["error"]["message"].as_str())
                .unwrap_or("not enough data yet"));
        }
        if let (Some(t), Some(value)) = (g.threshold, comparison["value"].as_f64()) {
            let crossed = if inverse { value > t } else { value < t };
            if crossed && treatment_units >= min_units.max(1) {
                problems.push(format!(
                    "guardrail `{}` crossed its threshold: the treatment's value {value} is {} {t}",
                    g.metric,
                    if inverse { "above" } else { "below" },
                ));
            }
        }
        report["status"] = json!(if problems.is_empty() {
            "ok"
        } else {
            "regressed"
        });
        regressions.extend(problems);
        reports.push(report);
    }
    (reports, regressions)
}

/// Checks a running rollout now: rolls it back on a regression, advances it when its step is done. Returns the
/// (possibly changed) document and the check's report.
async fn check(
    state: &AppState,
    project_id: i64,
    doc: Document,
) -> Result<(Document, Value), ApiError> {
    let (r, _) = stored(&doc)?;
    let step = doc.body["step"].as_u64().unwrap_or(0) as usize;
    let Some(current) = r.steps.get(step) else {
        return Err(ApiError::internal(format!(
            "rollout `{}` is at a step it does not have",
            r.key
        )));
    };
    let started_us = micros(&doc.body["step_started_at"])
        .ok_or_else(|| ApiError::internal("a running rollout without a step start"))?;
    let now = state.clock.now();
    let mut report = json!({"at": now_text(state), "step": step, "percent": current.percent});

    // The rule must still be the rollout's.
    let feature = state.store.feature(project_id, &r.feature).await?;
    let rule = feature.as_ref().filter(|f| !f.archived).and_then(|f| {
        f.definition["environments"][&r.environment]["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|x| x["id"] == json!(r.rule_id())))
            .cloned()
    });
    if rule
        .as_ref()
        .is_none_or(|x| x["type"] != "experiment" || x["enabled"] == false)
    {
        let reason = format!(
            "rule `{}` of feature `{}` was removed, disabled or replaced by hand",
            r.rule_id(),
            r.feature
        );
        let doc = stop(state, project_id, doc, &r, step, &reason).await?;
        report["decision"] = json!("stopped");
        report["reason"] = json!(reason);
        return Ok((doc, report));
    }

    let mut metrics = Vec::new();
    for g in &r.guardrails {
        let m = state
            .store
            .document(project_id, METRIC, &g.metric)
            .await?
            .ok_or_else(|| {
                ApiError::internal(format!("guardrail metric `{}` is gone", g.metric))
            })?;
        metrics.push(parse_metric(&m.body).map_err(|_| {
            ApiError::internal(format!("stored metric `{}` does not parse", g.metric))
        })?);
    }
    let x = Experiment {
        key: r.key.clone(),
        name: r.name.clone(),
        hypothesis: String::new(),
        feature: r.feature.clone(),
        rule_id: r.rule_id(),
        environment: r.environment.clone(),
        primary: Vec::new(),
        secondary: Vec::new(),
        guardrail: r.guardrails.iter().map(|g| g.metric.clone()).collect(),
        analysis: Analysis {
            engine: StatsEngine::Sequential,
            cuped: false,
            alpha: r.alpha,
            correction: flywheel_query::experiment::Correction::None,
            sequential_tuning: r.sequential_tuning,
            lift: Lift::Absolute,
            ..Analysis::default()
        },
        unit: None,
    };
    let started_at = doc.body["step_started_at"].clone();
    let phase = json!({"started_at": started_at, "stopped_at": null,
                       "weights": weights(current.percent), "coverage": 1.0});
    let values = rule
        .as_ref()
        .and_then(|x| x["variations"].as_array().cloned())
        .unwrap_or_default();
    let variations = crate::experiment_results::Variations {
        values,
        tracking_key: r.feature.clone(),
    };
    let results =
        crate::experiment_results::results(state, project_id, &x, &phase, variations, metrics)
            .await?;
    let units: Vec<u64> = results["units"]
        .as_array()
        .map(|u| u.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    report["units"] = json!(units);
    report["srm"] = results["srm"].clone();
    report["warnings"] = results["warnings"].clone();
    if results["complete"] != true {
        report["decision"] = json!("wait");
        report["reason"] = json!("events are still being indexed");
        return Ok((doc, remember(state, project_id, &r.key, report)));
    }
    let (guardrails, regressions) = judge(&r, &results, current.min_units);
    report["guardrails"] = json!(guardrails);
    if !regressions.is_empty() {
        let reason = regressions.join("; ");
        let doc = roll_back(
            state,
            project_id,
            doc,
            &reason,
            report["guardrails"].clone(),
            &watcher(),
        )
        .await?;
        report["decision"] = json!("rolled_back");
        report["reason"] = json!(reason);
        return Ok((doc, report));
    }
    let ran_secs = (now.timestamp_micros() - started_us).max(0) as u64 / 1_000_000;
    let treatment = units.get(1).copied().unwrap_or(0);
    if ran_secs < current.min_duration_secs || treatment < current.min_units {
        report["decision"] = json!("wait");
        report["reason"] = json!(format!(
            "the step ran {ran_secs} of {} s and its treatment has {treatment} of {} units",
            current.min_duration_secs, current.min_units
        ));
        return Ok((doc, remember(state, project_id, &r.key, report)));
    }
    let doc = advance(
        state,
        project_id,
        doc,
        &r,
        step,
        report["guardrails"].clone(),
    )
    .await?;
    report["decision"] = json!(if doc.body["status"] == "completed" {
        "completed"
    } else {
        "advanced"
    });
    let report = if doc.body["status"] == "running" {
        remember(state, project_id, &r.key, report)
    } else {
        report
    };
    Ok((doc, report))
}

/// Drops the last check of a rollout that stopped running.
fn forget(state: &AppState, project_id: i64, key: &str) {
    state
        .rollouts
        .last
        .lock()
        .expect("rollout checks")
        .remove(&(project_id, key.to_owned()));
}

fn push_history(body: &mut Value, entry: Value) {
    if let Some(h) = body["history"].as_array_mut() {
        h.push(entry);
    }
}

fn remember(state: &AppState, project_id: i64, key: &str, report: Value) -> Value {
    state
        .rollouts
        .last
        .lock()
        .expect("rollout checks")
        .insert((project_id, key.to_owned()), report.clone());
    report
}

/// The next step: new weights on the rule, or, at 100 %, the value shipped (a force rule) and the rollout completed.
async fn advance(
    state: &AppState,
    project_id: i64,
    doc: Document,
    r: &Rollout,
    step: usize,
    guardrails: Value,
) -> Result<Document, ApiError> {
    let next = step + 1;
    let percent = r.steps[next].percent;
    let rule_id = r.rule_id();
    let actor = watcher();
    let done = percent >= 100.0;
    change_feature(state, project_id, &r.feature, &actor, |def| {
        let rule = rule_mut(def, &r.feature, &r.environment, &rule_id)?;
        let Rule::Experiment {
            id,
            description,
            condition,
            saved_groups,
            variations,
            weights: w,
            enabled,
            ..
        } = rule
        else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_an_experiment_rule",
                format!("rule `{rule_id}` is no longer the rollout's experiment rule"),
            ));
        };
        if done {
            *rule = Rule::Force {
                id: id.clone(),
                description: description.clone(),
                condition: condition.clone(),
                saved_groups: saved_groups.clone(),
                value: variations.get(1).cloned().unwrap_or(Value::Null),
                enabled: *enabled,
            };
        } else {
            *w = Some(weights(percent));
        }
        Ok(())
    })
    .await?;
    let mut body = doc.body.clone();
    let action = if done { "completed" } else { "advanced" };
    let mut entry = history_entry(state, action, next, percent);
    entry["guardrails"] = guardrails;
    push_history(&mut body, entry);
    body["step"] = json!(next);
    body["step_started_at"] = json!(now_text(state));
    if done {
        body["status"] = json!("completed");
        forget(state, project_id, &doc.key);
    }
    record(
        state,
        project_id,
        &doc,
        body,
        action,
        announcement(r, next, percent),
        &actor,
    )
    .await
}

/// Running → stopped: the rule is no longer the rollout's (changed by hand), so the rollout stops watching.
async fn stop(
    state: &AppState,
    project_id: i64,
    doc: Document,
    r: &Rollout,
    step: usize,
    reason: &str,
) -> Result<Document, ApiError> {
    let percent = r.steps.get(step).map_or(0.0, |s| s.percent);
    let mut body = doc.body.clone();
    body["status"] = json!("stopped");
    let mut entry = history_entry(state, "stopped", step, percent);
    entry["reason"] = json!(reason);
    push_history(&mut body, entry);
    let mut message = announcement(r, step, percent);
    message["reason"] = json!(reason);
    forget(state, project_id, &doc.key);
    record(
        state,
        project_id,
        &doc,
        body,
        "stopped",
        message,
        &watcher(),
    )
    .await
}

/// The watcher: checks every running rollout each `interval` until shutdown.
pub async fn run(state: AppState, interval: std::time::Duration) {
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let running = match state.store.documents_with_status(ROLLOUT, "running").await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "rollout watcher cannot list rollouts");
                continue;
            }
        };
        for (project_id, doc) in running {
            let _one_at_a_time = state.rollouts.running.lock().await;
            // Re-read under the lock: a request may have changed it.
            let doc = match state.store.document(project_id, ROLLOUT, &doc.key).await {
                Ok(Some(d)) if d.body["status"] == "running" && !d.archived => d,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "rollout watcher cannot read a rollout");
                    continue;
                }
            };
            let key = doc.key.clone();
            match check(&state, project_id, doc).await {
                Ok((doc, report)) => {
                    let decision = report["decision"].as_str().unwrap_or_default();
                    if decision != "wait" {
                        tracing::info!(project_id, rollout = %key, decision,
                            status = doc.body["status"].as_str().unwrap_or_default(),
                            reason = report["reason"].as_str().unwrap_or_default(),
                            "rollout checked");
                    }
                }
                Err(e) => {
                    tracing::warn!(project_id, rollout = %key, error = %e.message, "rollout check failed")
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct OutboxParams {
    topic: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET …/outbox?topic=&after=&limit=`: the project's announcements, oldest first.
async fn list_outbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(params): Query<OutboxParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let limit = crate::experiments::limit_param(params.limit, 100, "outbox")?;
    let entries = state
        .store
        .outbox(
            project_id,
            params.topic.as_deref(),
            params.after.unwrap_or(0),
            limit,
        )
        .await?;
    Ok(Json(json!({ "results": entries })))
}
