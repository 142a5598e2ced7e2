//! Product-qualified leads: PQL models (documents of kind `pql_model`, definitions in [`flywheel_query::pql`]),
//! the scorer that keeps every active entity's score, and the backtest.
//!
//! - `…/pql-models` (list, create, get, update, archive, `versions`, `diff`: see [`crate::definitions`]);
//! - `GET …/pql-models/{key}/scores` (`?qualified=true`, `limit`): the stored scores, highest first, each with the
//!   explanation of its points; `GET …/pql-models/{key}/scores/{entity}` one of them (a person's id or one of its
//!   distinct ids, or a group key);
//! - `POST …/pql-models/{key}/score`: scores the model now (the scorer does it every `--pql-check-secs`);
//! - `POST …/pql-models/{key}/backtest` `{"as_of", "converted": {"event", "properties"?}, "horizon_days"?,
//!   "version"?, "bands"?}`: scores the entities as they were at `as_of` (with the current model, or an earlier
//!   `version`) and reports how the scores predicted conversion in the following `horizon_days`.
//!
//! **Scoring** reads the events of the model's event rules in its longest window from the event engine, so the
//! ingestion path does no work for it (the scorer follows ingestion in periodic passes). The entities scored are
//! those with an event of some event rule in its window, and those scored before (whose points decay or lapse).
//! Property rules read the entity's current properties (person properties, or the group's). When an entity's score
//! reaches the model's threshold, the pass writes its score and a `pql.qualified` outbox entry (the model, its
//! version, the entity, the score and its explanation) in one transaction; an entity that falls below it and
//! reaches it again is announced again.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use flywheel_kernels as k;
use flywheel_query::plan::{Plan, Scan};
use flywheel_query::pql::{parse_model, Model, Rule, RuleKind, Step};
use flywheel_query::{EventSpec, FieldError, Filter};
use serde_json::{json, Value};

use crate::api::{Caller, JsonBody};
use crate::definitions::Kind;
use crate::error::ApiError;
use crate::insight_filters::Compiled;
use crate::insights::{Columns, Specs};
use crate::state::AppState;

pub(crate) const MODEL: &str = "pql_model";
/// The outbox topic of a newly qualified entity.
pub const QUALIFIED_TOPIC: &str = "pql.qualified";
const DAY_US: i64 = k::DAY_US;

fn parse_definition(body: &Value) -> crate::definitions::Parsed {
    let m = parse_model(body)?;
    if !m.rules.iter().any(is_event_rule) {
        return Err(vec![FieldError {
            field: "rules".into(),
            message:
                "needs at least one event rule: a model scores the entities that did its events"
                    .into(),
        }]);
    }
    Ok((m.key.clone(), m.name.clone(), m.to_json()))
}

fn is_event_rule(r: &Rule) -> bool {
    matches!(r.kind, RuleKind::Event { .. })
}

static MODELS: Kind = Kind {
    kind: MODEL,
    what: "PQL model",
    parse: parse_definition,
    changed: |_| {},
};

pub fn router() -> Router<AppState> {
    crate::definitions::routes("/api/v1/projects/{project_id}/pql-models", &MODELS)
        .route(
            "/api/v1/projects/{project_id}/pql-models/{key}/scores",
            get(list_scores),
        )
        .route(
            "/api/v1/projects/{project_id}/pql-models/{key}/scores/{entity}",
            get(one_score),
        )
        .route(
            "/api/v1/projects/{project_id}/pql-models/{key}/score",
            post(score_now),
        )
        .route(
            "/api/v1/projects/{project_id}/pql-models/{key}/backtest",
            post(backtest),
        )
}

// ---------------------------------------------------------------------------------------------------------------
// Entities and their events

/// The events of some steps per entity (a person, or a group of a type), read from the event engine.
#[derive(Debug, Default)]
pub(crate) struct EntityRows {
    /// A person's id as text, or the group key.
    pub keys: Vec<String>,
    /// A distinct id of the person, or the group key.
    pub labels: Vec<String>,
    /// The persons' ids (persons only).
    pub person_ids: Vec<i64>,
    /// Per entity: (time, bit `i` set when the event matches step `i`), in time order.
    pub rows: Vec<Vec<(i64, u64)>>,
}

/// The events in `[from_us, to_us)` that match one of `steps` (at most 63), by entity: persons, or the groups of
/// type `unit` (from the events' `$groups`).
pub(crate) async fn entity_rows(
    state: &AppState,
    project_id: i64,
    steps: &[&Step],
    from_us: i64,
    to_us: i64,
    unit: Option<&str>,
) -> Result<EntityRows, ApiError> {
    if steps.is_empty() || steps.len() > 63 {
        return Err(ApiError::internal("between 1 and 63 steps are scanned"));
    }
    let Some(snap) = state.tables.snapshot(project_id) else {
        return Ok(EntityRows::default());
    };
    let plan = Plan {
        specs: steps
            .iter()
            .enumerate()
            .map(|(i, s)| Scan {
                field: format!("steps[{i}]"),
                spec: EventSpec {
                    event: s.event.clone(),
                    name: None,
                    properties: s.properties.clone(),
                },
            })
            .collect(),
        common: Vec::new(),
        every_row: false,
        reads: Vec::new(),
    };
    let snap = Arc::new(snap);
    let task_unit = unit.map(str::to_owned);
    let task_snap = snap.clone();
    type Found = (HashMap<u32, Vec<(i64, u64)>>, Vec<String>);
    let (by, group_keys): Found =
        tokio::task::spawn_blocking(move || -> Result<Found, ApiError> {
            let snap = task_snap;
            let specs = Specs::new(&snap, &plan, &Columns::default())
                .map_err(|u| crate::insights::run_error(u.into()))?;
            let prepared = specs
                .prepare(&snap, Some((from_us, to_us)), true)
                .map_err(ApiError::internal)?;
            let mut by: HashMap<u32, Vec<(i64, u64)>> = HashMap::new();
            let mut keep = |entity: u32, ts: i64, mask: u64| {
                if mask != 0 && (from_us..to_us).contains(&ts) {
                    by.entry(entity).or_default().push((ts, mask));
                }
            };
            let keys = match task_unit {
                None => {
                    for p in &prepared {
                        for ((&person, &ts), &mask) in p.person().iter().zip(p.ts()).zip(&p.mask) {
                            keep(person, ts, mask);
                        }
                    }
                    Vec::new()
                }
                Some(u) => {
                    let grouped = crate::insights::group_rows(&snap, &prepared, Some(&u))
                        .map_err(ApiError::internal)?;
                    for g in &grouped.parts {
                        for ((&group, &ts), &mask) in g.group.iter().zip(&g.ts).zip(&g.mask) {
                            keep(group, ts, mask);
                        }
                    }
                    grouped.keys
                }
            };
            for rows in by.values_mut() {
                rows.sort_unstable();
            }
            Ok((by, keys))
        })
        .await
        .map_err(ApiError::internal)??;

    let mut out = EntityRows::default();
    let mut entities: Vec<(u32, Vec<(i64, u64)>)> = by.into_iter().collect();
    entities.sort_unstable_by_key(|(e, _)| *e);
    if unit.is_some() {
        for (g, rows) in entities {
            let key = group_keys[g as usize].clone();
            out.labels.push(key.clone());
            out.keys.push(key);
            out.rows.push(rows);
        }
        return Ok(out);
    }
    // A distinct id per person, to show.
    let wanted: HashMap<u32, usize> = entities
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (*p, i))
        .collect();
    let mut first_did: Vec<Option<u32>> = vec![None; entities.len()];
    for (did, p) in snap.resolved.iter().enumerate() {
        if let Some(&i) = wanted.get(p) {
            first_did[i].get_or_insert(did as u32);
        }
    }
    let dids: Vec<u32> = first_did.iter().map(|d| d.unwrap_or(0)).collect();
    let names = state.tables.distinct_id_names(project_id, &dids);
    for ((i, (p, rows)), name) in entities.into_iter().enumerate().zip(names) {
        let id = snap.person_ids.get(p as usize).copied().unwrap_or(-1);
        if id < 0 || first_did[i].is_none() {
            continue;
        }
        out.keys.push(id.to_string());
        out.labels.push(name);
        out.person_ids.push(id);
        out.rows.push(rows);
    }
    Ok(out)
}

/// The current properties of entities (by key): persons by id, or groups of type `unit` by key.
async fn entity_properties(
    state: &AppState,
    project_id: i64,
    unit: Option<&str>,
    keys: &[&str],
) -> Result<HashMap<String, Value>, ApiError> {
    Ok(match unit {
        Some(u) => {
            state
                .store
                .properties_of_groups(project_id, u, keys)
                .await?
        }
        None => {
            let ids: Vec<i64> = keys.iter().filter_map(|k| k.parse().ok()).collect();
            state
                .store
                .properties_of_persons(project_id, &ids)
                .await?
                .into_iter()
                .map(|(id, v)| (id.to_string(), v))
                .collect()
        }
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring

/// An entity's score at a time, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scored {
    pub score: f64,
    /// The disqualifier that matched, if any (the score is 0 then).
    pub disqualified_by: Option<String>,
    /// Per rule that earned points: `{rule, points, count?}`.
    pub explanation: Vec<Value>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn all_hold(filters: &[Filter], props: &Value) -> bool {
    filters.iter().all(|f| match f {
        Filter::Property(p) => Compiled::new(p).matches(props.get(&p.key)),
        Filter::Cohort { .. } => false,
    })
}

/// The scan bit of each rule and disqualifier of `model` (`None` for property rules), in [`Model::event_rules`]
/// order.
fn rule_bits(model: &Model) -> (Vec<Option<u32>>, Vec<Option<u32>>) {
    let mut next = 0u32;
    let mut bits = |rules: &[Rule]| -> Vec<Option<u32>> {
        rules
            .iter()
            .map(|r| {
                is_event_rule(r).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    let rules = bits(&model.rules);
    let disqualifiers = bits(&model.disqualifiers);
    (rules, disqualifiers)
}

/// The steps scanned for `model`: its event rules' events, in bit order.
fn model_steps(model: &Model) -> Vec<&Step> {
    model
        .event_rules()
        .filter_map(|r| match &r.kind {
            RuleKind::Event { step, .. } => Some(step),
            RuleKind::Property { .. } => None,
        })
        .collect()
}

/// Scores an entity from its events (`rows`: time and scan bits, in time order) and properties, as of `as_of_us`
/// (events after it are ignored).
pub(crate) fn score(model: &Model, rows: &[(i64, u64)], props: &Value, as_of_us: i64) -> Scored {
    let (rule_bits, disqualifier_bits) = rule_bits(model);
    let occurrences = |bit: u32, window_days: u64| -> Vec<i64> {
        let from = as_of_us - window_days as i64 * DAY_US;
        rows.iter()
            .filter(|(ts, mask)| *ts > from && *ts <= as_of_us && mask & (1 << bit) != 0)
            .map(|(ts, _)| *ts)
            .collect()
    };
    for (d, bit) in model.disqualifiers.iter().zip(&disqualifier_bits) {
        let hit = match (&d.kind, bit) {
            (RuleKind::Event { window_days, .. }, Some(bit)) => {
                !occurrences(*bit, *window_days).is_empty()
            }
            (RuleKind::Property { filters }, _) => all_hold(filters, props),
            _ => false,
        };
        if hit {
            return Scored {
                score: 0.0,
                disqualified_by: Some(d.id.clone()),
                explanation: vec![json!({"rule": d.id, "disqualified": true})],
            };
        }
    }
    let decay = |ts: i64| match model.half_life_days {
        Some(h) => 0.5f64.powf((as_of_us - ts) as f64 / DAY_US as f64 / h),
        None => 1.0,
    };
    let mut total = 0.0;
    let mut explanation = Vec::new();
    for (r, bit) in model.rules.iter().zip(&rule_bits) {
        let (earned, count) = match (&r.kind, bit) {
            (
                RuleKind::Event {
                    window_days,
                    min_count,
                    per_event,
                    max_points,
                    ..
                },
                Some(bit),
            ) => {
                let occ = occurrences(*bit, *window_days);
                let earned = if *per_event {
                    let sum: f64 = occ.iter().map(|&ts| r.points * decay(ts)).sum();
                    match max_points {
                        Some(m) => sum.clamp(-m, *m),
                        None => sum,
                    }
                } else if occ.len() as u64 >= *min_count {
                    // Earned when the `min_count`-th most recent occurrence happened.
                    r.points * decay(occ[occ.len() - *min_count as usize])
                } else {
                    0.0
                };
                (earned, Some(occ.len()))
            }
            (RuleKind::Property { filters }, _) => (
                if all_hold(filters, props) {
                    r.points
                } else {
                    0.0
                },
                None,
            ),
            _ => (0.0, None),
        };
        if earned != 0.0 {
            total += earned;
            let mut e = json!({"rule": r.id, "points": round2(earned)});
            if let Some(c) = count {
                e["count"] = json!(c);
            }
            explanation.push(e);
        }
    }
    Scored {
        score: round2(total),
        disqualified_by: None,
        explanation,
    }
}

/// Every entity's score under `model` as of `as_of_us`, with the rows read (for callers that need more bits,
/// `extra` steps are scanned after the model's, up to `extra_to_us`).
struct Scoring {
    rows: EntityRows,
    scores: Vec<Scored>,
}

async fn score_entities(
    state: &AppState,
    project_id: i64,
    model: &Model,
    as_of_us: i64,
    extra: Option<(&Step, i64)>,
) -> Result<Scoring, ApiError> {
    let mut steps = model_steps(model);
    let mut to_us = as_of_us + 1;
    if let Some((step, until)) = extra {
        steps.push(step);
        to_us = to_us.max(until);
    }
    let from_us = as_of_us - model.longest_window_days() as i64 * DAY_US;
    let rows = entity_rows(
        state,
        project_id,
        &steps,
        from_us,
        to_us,
        model.unit.as_deref(),
    )
    .await?;
    let needs_props = model
        .rules
        .iter()
        .chain(&model.disqualifiers)
        .any(|r| !is_event_rule(r));
    let props = if needs_props {
        let keys: Vec<&str> = rows.keys.iter().map(String::as_str).collect();
        entity_properties(state, project_id, model.unit.as_deref(), &keys).await?
    } else {
        HashMap::new()
    };
    let empty = json!({});
    let scores = rows
        .keys
        .iter()
        .zip(&rows.rows)
        .map(|(key, r)| score(model, r, props.get(key).unwrap_or(&empty), as_of_us))
        .collect();
    Ok(Scoring { rows, scores })
}

/// What a scoring pass did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PassStats {
    pub scored: usize,
    pub changed: usize,
    pub qualified: usize,
    pub newly_qualified: usize,
}

/// Scores one model now, writes the changed scores and announces the newly qualified entities.
pub(crate) async fn score_model(
    state: &AppState,
    project_id: i64,
    doc: &flywheel_store::Document,
) -> Result<PassStats, ApiError> {
    let model = parse_model(&doc.body).map_err(|_| {
        ApiError::internal(format!("stored PQL model `{}` does not parse", doc.key))
    })?;
    let now = state.clock.now();
    let now_us = now.timestamp_micros();
    let now_text = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let Scoring { rows, mut scores } =
        score_entities(state, project_id, &model, now_us, None).await?;
    let mut keys = rows.keys;
    let mut labels = rows.labels;
    // Entities scored before but without events in the window now: their event points lapsed.
    let stored = state.store.pql_states(project_id, &doc.key).await?;
    let seen: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    let lapsed: Vec<(String, String)> = stored
        .iter()
        .filter(|(k, _)| !seen.contains(k.as_str()))
        .map(|(k, (_, _, label))| (k.clone(), label.clone()))
        .collect();
    if !lapsed.is_empty() {
        let lapsed_keys: Vec<&str> = lapsed.iter().map(|(k, _)| k.as_str()).collect();
        let props =
            entity_properties(state, project_id, model.unit.as_deref(), &lapsed_keys).await?;
        let empty = json!({});
        for (key, label) in lapsed {
            scores.push(score(
                &model,
                &[],
                props.get(&key).unwrap_or(&empty),
                now_us,
            ));
            keys.push(key);
            labels.push(label);
        }
    }
    let mut stats = PassStats {
        scored: keys.len(),
        ..Default::default()
    };
    let mut changed = Vec::new();
    let mut announce = Vec::new();
    for ((key, label), s) in keys.into_iter().zip(labels).zip(scores) {
        let qualified = s.disqualified_by.is_none() && s.score >= model.threshold;
        stats.qualified += usize::from(qualified);
        let before = stored.get(&key);
        let was_qualified = before.is_some_and(|b| b.1);
        let same = before.is_some_and(|b| (b.0 - s.score).abs() < 0.005 && b.1 == qualified);
        if same || (before.is_none() && s.score == 0.0 && s.disqualified_by.is_none()) {
            continue;
        }
        let explanation = json!({"items": s.explanation, "disqualified_by": s.disqualified_by});
        if qualified && !was_qualified {
            stats.newly_qualified += 1;
            announce.push(json!({
                "model": doc.key, "version": doc.version, "unit": model.unit.as_deref().unwrap_or("person"),
                "entity": key, "label": label, "score": s.score, "threshold": model.threshold,
                "explanation": explanation["items"], "at": now_text,
            }));
        }
        changed.push(flywheel_store::PqlScore {
            entity: key,
            label,
            score: s.score,
            qualified,
            version: doc.version,
            explanation,
            qualified_at: qualified.then(|| now_text.clone()),
            updated_at: now_text.clone(),
        });
    }
    stats.changed = changed.len();
    state
        .store
        .save_pql_scores(project_id, &doc.key, &changed, QUALIFIED_TOPIC, &announce)
        .await?;
    Ok(stats)
}

/// The share of one core the scorer may use: after a pass that took `d`, the next starts at least
/// `d × (1 / BUSY_SHARE − 1)` later (and never sooner than the interval), so scoring cannot starve ingestion however
/// many events the windows hold; scores then lag by at most the interval or ten passes' time.
const BUSY_SHARE: f64 = 0.1;

/// The scorer: scores every live model every `interval` (or less often, see [`BUSY_SHARE`]).
pub async fn run_scorer(state: AppState, interval: std::time::Duration) {
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        let started = std::time::Instant::now();
        let docs = match state.store.all_documents(MODEL).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "pql: cannot read the models");
                wait = interval;
                continue;
            }
        };
        for (project_id, doc) in docs.iter().filter(|(_, d)| !d.archived) {
            match score_model(&state, *project_id, doc).await {
                Ok(s) if s.newly_qualified > 0 => tracing::info!(
                    project_id, model = %doc.key, scored = s.scored, newly_qualified = s.newly_qualified,
                    "pql: entities qualified"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(project_id, model = %doc.key, error = %e.message, "pql: scoring failed")
                }
            }
        }
        wait = interval.max(started.elapsed().mul_f64(1.0 / BUSY_SHARE - 1.0));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers

async fn live_model(
    state: &AppState,
    project_id: i64,
    key: &str,
) -> Result<flywheel_store::Document, ApiError> {
    crate::experiments::document(state, project_id, MODEL, key).await
}

#[derive(serde::Deserialize)]
struct ScoreParams {
    qualified: Option<String>,
    limit: Option<i64>,
}

fn score_json(s: &flywheel_store::PqlScore) -> Value {
    json!({"entity": s.entity, "label": s.label, "score": s.score, "qualified": s.qualified,
           "version": s.version, "explanation": s.explanation["items"],
           "disqualified_by": s.explanation["disqualified_by"],
           "qualified_at": s.qualified_at, "updated_at": s.updated_at})
}

async fn list_scores(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<ScoreParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    live_model(&state, project_id, &key).await?;
    let qualified = match params.qualified.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "PQL score list",
                "qualified",
                "must be true or false",
            ))
        }
    };
    let limit = crate::experiments::limit_param(params.limit, 100, "PQL score list")?;
    let scores = state
        .store
        .pql_scores(project_id, &key, qualified, limit)
        .await?;
    Ok(Json(
        json!({"results": scores.iter().map(score_json).collect::<Vec<_>>()}),
    ))
}

async fn one_score(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key, entity)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    live_model(&state, project_id, &key).await?;
    let mut found = state.store.pql_score(project_id, &key, &entity).await?;
    if found.is_none() {
        // A distinct id of a scored person.
        if let Some(id) = state
            .store
            .person_numbers_for(project_id, &[entity.as_str()])
            .await?
            .get(&entity)
        {
            found = state
                .store
                .pql_score(project_id, &key, &id.to_string())
                .await?;
        }
    }
    let s = found.ok_or_else(|| {
        ApiError::not_found(format!(
            "`{entity}` has no score under PQL model `{key}` (yet)"
        ))
    })?;
    Ok(Json(score_json(&s)))
}

async fn score_now(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let doc = live_model(&state, project_id, &key).await?;
    if doc.archived {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "archived",
            format!("PQL model `{key}` is archived"),
        ));
    }
    // The caller's own events count.
    state.catch_up().await;
    state.tables_catch_up().await;
    Ok(Json(json!(score_model(&state, project_id, &doc).await?)))
}

/// The share of (converter, non-converter) pairs in which the converter scored higher (ties count half): the
/// area under the ROC curve. `None` without both kinds.
pub(crate) fn auc(scored: &[(f64, bool)]) -> Option<f64> {
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = sorted.iter().filter(|x| x.1).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Mann–Whitney: the rank sum of the positives, ties given their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let average_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += average_rank * sorted[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Score bands of about equal size (score quantiles; equal scores stay in one band), lowest first.
pub(crate) fn bands(scored: &[(f64, bool)], n: usize) -> Vec<Value> {
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    let mut start = 0;
    for b in 1..=n {
        let mut end = (sorted.len() * b / n).max(start);
        // Keep ties together.
        while end > start && end < sorted.len() && sorted[end].0 == sorted[end - 1].0 {
            end += 1;
        }
        if end > start {
            let part = &sorted[start..end];
            let converted = part.iter().filter(|x| x.1).count();
            out.push(
                json!({"min_score": part[0].0, "max_score": part[part.len() - 1].0,
                "entities": part.len(), "converted": converted,
                "conversion_rate": converted as f64 / part.len() as f64}),
            );
        }
        start = end;
    }
    out
}

/// An RFC 3339 time or a date (`YYYY-MM-DD`, midnight UTC), in microseconds.
pub(crate) fn time_or_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_micros())
        })
}

/// `a / b`, null when `b` is 0.
pub(crate) fn rate(a: usize, b: usize) -> Value {
    if b == 0 {
        Value::Null
    } else {
        json!(a as f64 / b as f64)
    }
}

async fn backtest(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    const WHAT: &str = "PQL backtest";
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let doc = live_model(&state, project_id, &key).await?;
    let mut errors = crate::experiments::unknown_fields(
        &body,
        &["as_of", "converted", "horizon_days", "version", "bands"],
    );
    let mut problem = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        })
    };
    let as_of = match body.get("as_of").and_then(Value::as_str) {
        None => {
            problem(
                "as_of",
                "is required: an RFC 3339 time or a date (YYYY-MM-DD)",
            );
            None
        }
        Some(text) => {
            let parsed = time_or_date(text);
            if parsed.is_none() {
                problem("as_of", "must be an RFC 3339 time or a date (YYYY-MM-DD)");
            }
            parsed
        }
    };
    let whole = |v: Option<&Value>, min: i64, max: i64| {
        v.map(|v| v.as_i64().filter(|n| (min..=max).contains(n)))
    };
    let horizon_days = match whole(body.get("horizon_days"), 1, 365) {
        None => 30,
        Some(Some(n)) => n,
        Some(None) => {
            problem("horizon_days", "must be a whole number from 1 to 365");
            30
        }
    };
    let n_bands = match whole(body.get("bands"), 2, 20) {
        None => 5,
        Some(Some(n)) => n as usize,
        Some(None) => {
            problem("bands", "must be a whole number from 2 to 20");
            5
        }
    };
    let version = match whole(body.get("version"), 1, doc.version) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            problem(
                "version",
                &format!("must be a version of the model, 1 to {}", doc.version),
            );
            None
        }
    };
    // The conversion event, read like a trial's step.
    let converted = match body.get("converted") {
        None => {
            problem("converted", "is required: the event that makes a lead a customer ({\"event\", \"properties\"?})");
            None
        }
        Some(v) => match flywheel_query::pql::parse_trial(&json!({"key": "k", "name": "n",
                "started": {"event": "x"}, "converted": v}))
        {
            Ok(t) => Some(t.converted),
            Err(es) => {
                for e in es {
                    errors.push(e);
                }
                None
            }
        },
    };
    let (Some(as_of_us), Some(converted)) = (as_of, converted) else {
        return Err(ApiError::validation(WHAT, &errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(WHAT, &errors));
    }
    let body_of = match version {
        Some(v) if v != doc.version => {
            crate::definitions::version_body(&state, project_id, MODEL, &key, v).await?
        }
        _ => doc.body.clone(),
    };
    let model = parse_model(&body_of)
        .map_err(|_| ApiError::internal(format!("version of PQL model `{key}` does not parse")))?;
    if model_steps(&model).len() >= 63 {
        return Err(ApiError::bad_request(
            "too_many_rules",
            "the model has too many event rules to backtest",
        ));
    }
    let horizon_end = as_of_us + horizon_days * DAY_US;
    state.catch_up().await;
    state.tables_catch_up().await;
    let conversion_bit = model_steps(&model).len() as u32;
    let Scoring { rows, scores } = score_entities(
        &state,
        project_id,
        &model,
        as_of_us,
        Some((&converted, horizon_end)),
    )
    .await?;
    let mut scored: Vec<(f64, bool)> = Vec::new();
    let mut already = 0usize;
    let mut population = 0usize;
    for (r, s) in rows.rows.iter().zip(&scores) {
        let conversions = r.iter().filter(|(_, m)| m & (1 << conversion_bit) != 0);
        let mut before = false;
        let mut after = false;
        let mut in_window = false;
        for &(ts, _) in conversions {
            before |= ts <= as_of_us;
            after |= ts > as_of_us && ts < horizon_end;
        }
        // Only entities with a rule event in their window are leads at `as_of`.
        for &(ts, m) in r {
            in_window |= ts <= as_of_us && m & !(1 << conversion_bit) != 0;
        }
        if !in_window {
            continue;
        }
        population += 1;
        if before {
            already += 1;
            continue;
        }
        scored.push((s.score, after));
    }
    let converted_n = scored.iter().filter(|x| x.1).count();
    let qualified: Vec<&(f64, bool)> = scored.iter().filter(|x| x.0 >= model.threshold).collect();
    let qualified_converted = qualified.iter().filter(|x| x.1).count();
    let below = scored.len() - qualified.len();
    let below_converted = converted_n - qualified_converted;
    let base = if scored.is_empty() {
        None
    } else {
        Some(converted_n as f64 / scored.len() as f64)
    };
    let precision =
        (!qualified.is_empty()).then(|| qualified_converted as f64 / qualified.len() as f64);
    let mut warnings = Vec::new();
    if horizon_end > state.clock.now().timestamp_micros() {
        warnings.push(json!({"code": "incomplete", "message": "the horizon reaches past now: conversions still to come are missing"}));
    }
    if model
        .rules
        .iter()
        .chain(&model.disqualifiers)
        .any(|r| !is_event_rule(r))
    {
        warnings.push(json!({"code": "current_properties", "message": "property rules were tested on the entities' current properties, not those they had at as_of"}));
    }
    Ok(Json(json!({
        "model": key,
        "version": version.unwrap_or(doc.version),
        "as_of": chrono::DateTime::from_timestamp_micros(as_of_us).map(|t| t.to_rfc3339()),
        "horizon_days": horizon_days,
        "threshold": model.threshold,
        "entities": scored.len(),
        "already_converted": already,
        "active": population,
        "converted": converted_n,
        "base_rate": base,
        "qualified": {"entities": qualified.len(), "converted": qualified_converted,
                      "conversion_rate": precision,
                      "recall": rate(qualified_converted, converted_n),
                      "lift": match (precision, base) { (Some(p), Some(b)) if b > 0.0 => json!(p / b), _ => Value::Null }},
        "not_qualified": {"entities": below, "converted": below_converted, "conversion_rate": rate(below_converted, below)},
        "auc": auc(&scored),
        "bands": bands(&scored, n_bands),
        "warnings": warnings,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flywheel_query::pql::parse_model;

    const H: i64 = 3_600_000_000;

    fn model(body: Value) -> Model {
        parse_model(&body).unwrap()
    }

    #[test]
    fn rules_earn_points_and_decay() {
        let m = model(
            json!({"key": "m", "name": "m", "threshold": 10, "half_life_days": 1,
            "rules": [
                {"id": "a", "event": "x", "min_count": 2, "window_days": 7, "points": 10},
                {"id": "b", "event": "y", "per_event": true, "points": 4, "max_points": 6},
                {"id": "c", "where": [{"key": "plan", "value": "pro"}], "points": 5},
            ]}),
        );
        let now = 100 * DAY_US;
        // Two `x` one and two days ago: earned when the second most recent happened (two days ago): 10 / 4.
        let rows = [(now - 2 * DAY_US, 1), (now - DAY_US, 1), (now, 2), (now, 2)];
        let s = score(&m, &rows, &json!({"plan": "pro"}), now);
        assert_eq!(s.score, 2.5 + 6.0 + 5.0);
        assert_eq!(
            s.explanation[0],
            json!({"rule": "a", "points": 2.5, "count": 2})
        );
        assert_eq!(
            s.explanation[1],
            json!({"rule": "b", "points": 6.0, "count": 2})
        );
        // Events after `as_of` and outside the window do not count.
        let s = score(&m, &rows, &json!({}), now - DAY_US - H);
        assert_eq!(s.score, 0.0);
        assert!(s.explanation.is_empty());
    }

    #[test]
    fn disqualifiers_zero_the_score() {
        let m = model(json!({"key": "m", "name": "m", "threshold": 1,
            "rules": [{"id": "a", "event": "x", "points": 10}],
            "disqualifiers": [{"id": "gone", "event": "deleted", "window_days": 3},
                              {"id": "staff", "where": [{"key": "email", "operator": "contains", "value": "@us.io"}]}]}));
        let now = 10 * DAY_US;
        assert_eq!(score(&m, &[(now, 1)], &json!({}), now).score, 10.0);
        let s = score(&m, &[(now - DAY_US, 2), (now, 1)], &json!({}), now);
        assert_eq!((s.score, s.disqualified_by.as_deref()), (0.0, Some("gone")));
        let s = score(&m, &[(now - 4 * DAY_US, 2), (now, 1)], &json!({}), now);
        assert_eq!(
            s.score, 10.0,
            "the disqualifying event is outside its window"
        );
        let s = score(&m, &[(now, 1)], &json!({"email": "Ann@US.io"}), now);
        assert_eq!(s.disqualified_by.as_deref(), Some("staff"));
    }

    #[test]
    fn auc_matches_counting_pairs() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let scored: Vec<(f64, bool)> = (0..300)
            .map(|_| ((next() % 20) as f64, next() % 3 == 0))
            .collect();
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for a in scored.iter().filter(|x| x.1) {
            for b in scored.iter().filter(|x| !x.1) {
                pairs += 1.0;
                wins += if a.0 > b.0 {
                    1.0
                } else if a.0 == b.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert!((auc(&scored).unwrap() - wins / pairs).abs() < 1e-12);
        assert_eq!(auc(&[(1.0, true)]), None);
        let b = bands(&scored, 5);
        let total: u64 = b.iter().map(|x| x["entities"].as_u64().unwrap()).sum();
        assert_eq!(total, 300);
        for w in b.windows(2) {
            assert!(w[0]["max_score"].as_f64() < w[1]["min_score"].as_f64());
        }
    }
}
