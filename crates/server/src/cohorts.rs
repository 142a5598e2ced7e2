//! Cohorts: saved, named sets of persons, usable as a filter (`{"type": "cohort", "id": 7}` in any `properties`
//! list) and as a breakdown (`{"type": "cohort", "ids": [7, 9]}`) of every insight.
//!
//! * **Dynamic** cohorts hold a definition (`flywheel_query::cohort`): person properties, behaviour ("did
//!   `task_completed` at least 3 times in the last 30 days", "first did `signed_up` in the last week") and other
//!   cohorts, combined with AND/OR and negation. They are evaluated over the event tables when used, so they are
//!   never stale: a person who qualifies now is in, whatever happened since the cohort was saved.
//! * **Static** cohorts are uploaded lists of persons (by distinct id or person id); identity merges carry the
//!   membership to the surviving person.
//!
//! Membership is a flag per dense person of the snapshot, computed once per query per cohort. Relative windows
//! are measured from the current minute, so a cohort's answers (and its size, `count`) are cached per minute, per
//! data version and per cohort version. Person properties are the current ones (as in every insight).
//!
//! With `--events-url` (scale-out) membership is decided by ClickHouse over every node's events
//! (`insights_clickhouse::cohort_members`), with the rules resolved by [`membership`].
//!
//! API (personal key): `GET/POST /api/v1/projects/{p}/cohorts`, `GET/PATCH/DELETE /api/v1/projects/{p}/cohorts/{id}`
//! (GET computes `count`), `GET /api/v1/projects/{p}/cohorts/{id}/persons?limit=&offset=` and
//! `POST/DELETE /api/v1/projects/{p}/cohorts/{id}/members` (static cohorts: `{"distinct_ids": [..]}` or
//! `{"person_ids": [..]}`, or a CSV). Changes are audited (`cohort.*`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, DurationRound, Utc};
use flywheel_clickhouse::sql::Membership;
use flywheel_engine::table::Snapshot;
use flywheel_engine::EngineError;
use flywheel_query::{
    Behavioral, BehavioralKind, CohortDefinition, CohortNode, CountOp, EventRef, FieldError,
    GroupOp,
};
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::error::ApiError;
use crate::insights::{person_pass, Columns, RunError, Unsupported};
use crate::state::AppState;

/// Most cohorts a definition may reach through references (itself included).
const MAX_REACHED: usize = 100;
/// Longest chain of cohort references.
const MAX_DEPTH: usize = 16;

/// A cohort as evaluation needs it.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// The person ids of an uploaded list.
    Static(HashSet<i64>),
    /// A definition.
    Dynamic(CohortDefinition),
}

/// The cohorts a query uses (directly or through references), with their versions.
#[derive(Debug, Clone, Default)]
pub struct Cohorts {
    pub by_id: HashMap<u64, (i64, Loaded)>,
}

impl Cohorts {
    /// Person properties the definitions read.
    pub fn person_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .by_id
            .values()
            .filter_map(|(_, l)| match l {
                Loaded::Dynamic(d) => Some(d.person_keys()),
                Loaded::Static(_) => None,
            })
            .flatten()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// What answers that use these cohorts depend on besides the data: each cohort's version, and the minute
    /// when a definition reads behaviour (its windows move with time).
    pub fn cache_key(&self, now: DateTime<Utc>) -> String {
        let mut ids: Vec<(&u64, &i64)> = self.by_id.iter().map(|(id, (v, _))| (id, v)).collect();
        ids.sort();
        let behaviour = self
            .by_id
            .values()
            .any(|(_, l)| matches!(l, Loaded::Dynamic(d) if d.has_behaviour()));
        let minute = if behaviour {
            minute_of(now).timestamp()
        } else {
            0
        };
        format!("{ids:?}@{minute}")
    }
}

/// Cohort windows are measured from the start of the current minute.
pub fn minute_of(now: DateTime<Utc>) -> DateTime<Utc> {
    now.duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(now)
}

/// Every cohort reference of an insight definition, with the path of the field that holds it (found in the
/// normalized definition's JSON: filters `{"type": "cohort", "id": n}`, breakdowns `{"type": "cohort", "ids": [..]}`).
pub fn references(definition: &Value) -> Vec<(String, u64)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, u64)>) {
        match v {
            Value::Object(o) => {
                if o.get("type").and_then(Value::as_str) == Some("cohort") {
                    if let Some(id) = o.get("id").and_then(Value::as_u64) {
                        out.push((at.to_owned(), id));
                    }
                    for (i, id) in o
                        .get("ids")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        if let Some(id) = id.as_u64() {
                            out.push((format!("{at}.ids[{i}]"), id));
                        }
                    }
                }
                for (k, v) in o {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    walk(v, &path, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(definition, "", &mut out);
    out
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::invalid_field("request", field, message)
}

/// Loads the cohorts referenced at `roots` (field, id) and every cohort they reach. A missing cohort is a 400
/// naming the field that refers to it.
pub async fn load(
    state: &AppState,
    project_id: i64,
    roots: &[(String, u64)],
) -> Result<Cohorts, ApiError> {
    let mut out = Cohorts::default();
    let mut queue: Vec<(String, u64)> = roots.to_vec();
    while let Some((field, id)) = queue.pop() {
        if out.by_id.contains_key(&id) {
            continue;
        }
        if out.by_id.len() >= MAX_REACHED {
            return Err(invalid(
                &field,
                format!("reaches more than {MAX_REACHED} cohorts through references"),
            ));
        }
        let record = match i64::try_from(id) {
            Ok(n) => state.store.cohort(project_id, n).await?,
            Err(_) => None,
        };
        let Some(record) = record else {
            return Err(invalid(
                &field,
                format!("cohort {id} does not exist in this project"),
            ));
        };
        let loaded = match &record.filters {
            None => Loaded::Static(
                state
                    .store
                    .cohort_people(record.id)
                    .await?
                    .into_iter()
                    .collect(),
            ),
            Some(filters) => {
                let definition = flywheel_query::parse_cohort_filters(filters).map_err(|e| {
                    invalid(
                        &field,
                        format!(
                            "cohort {id}'s stored definition is not valid any more ({}); update it",
                            e.first()
                                .map_or(String::new(), |e| format!("{}: {}", e.field, e.message))
                        ),
                    )
                })?;
                queue.extend(
                    definition
                        .cohort_ids()
                        .into_iter()
                        .map(|c| (field.clone(), c)),
                );
                Loaded::Dynamic(definition)
            }
        };
        out.by_id.insert(id, (record.version, loaded));
    }
    Ok(out)
}

/// Evaluates cohorts over a snapshot: a flag per dense person.
pub struct Evaluator<'a> {
    pub snap: &'a Snapshot,
    pub cohorts: &'a Cohorts,
    pub columns: &'a Columns,
    /// The instant relative windows end at (see [`minute_of`]).
    pub now: DateTime<Utc>,
    pub tz: chrono_tz::Tz,
    memo: HashMap<u64, Arc<Vec<bool>>>,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        snap: &'a Snapshot,
        cohorts: &'a Cohorts,
        columns: &'a Columns,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Self {
        Evaluator {
            snap,
            cohorts,
            columns,
            now,
            tz,
            memo: HashMap::new(),
        }
    }

    /// Each dense person's membership of cohort `id`.
    pub fn members(&mut self, id: u64) -> Result<Arc<Vec<bool>>, RunError> {
        self.cohort(id, 0)
    }

    fn cohort(&mut self, id: u64, depth: usize) -> Result<Arc<Vec<bool>>, RunError> {
        if let Some(m) = self.memo.get(&id) {
            return Ok(m.clone());
        }
        if depth > MAX_DEPTH {
            return Err(RunError::Unsupported(Unsupported {
                field: "cohort".into(),
                message: format!(
                    "cohort {id}: its references form a cycle or a chain deeper than {MAX_DEPTH}"
                ),
            }));
        }
        let Some((_, loaded)) = self.cohorts.by_id.get(&id) else {
            return Err(RunError::Unsupported(Unsupported {
                field: "cohort".into(),
                message: format!("cohort {id} was not loaded"),
            }));
        };
        let members = match loaded {
            Loaded::Static(people) => self
                .snap
                .person_ids
                .iter()
                .map(|p| people.contains(p))
                .collect(),
            Loaded::Dynamic(d) => self.node(&d.root, depth)?,
        };
        let members = Arc::new(members);
        self.memo.insert(id, members.clone());
        Ok(members)
    }

    fn node(&mut self, node: &CohortNode, depth: usize) -> Result<Vec<bool>, RunError> {
        let n = self.snap.person_ids.len();
        Ok(match node {
            CohortNode::Group { op, values } => {
                let and = *op == GroupOp::And;
                let mut acc = vec![and; n];
                for v in values {
                    let m = self.node(v, depth)?;
                    for (a, b) in acc.iter_mut().zip(m) {
                        *a = if and { *a && b } else { *a || b };
                    }
                }
                acc
            }
            CohortNode::Person { filter, negate } => {
                let compiled = crate::insight_filters::Compiled::new(filter);
                let mut pass = person_pass(self.snap, self.columns.get(&filter.key), &compiled);
                if *negate {
                    pass.iter_mut().for_each(|p| *p = !*p);
                }
                pass
            }
            CohortNode::Cohort { id, negate } => {
                let m = self.cohort(*id, depth + 1)?;
                m.iter().map(|&x| x != *negate).collect()
            }
            CohortNode::Behavioral(b) => {
                let mut pass = behaviour(self.snap, b, self.now, &self.tz)?;
                if b.negate {
                    pass.iter_mut().for_each(|p| *p = !*p);
                }
                pass
            }
        })
    }
}

/// Cohort `id` as the ClickHouse SQL tests it (insights with `--events-url`): the [`Evaluator`]'s rules, resolved
/// at `now` (the minute, see [`minute_of`]) in the project's time zone, references inlined.
pub fn membership(
    cohorts: &Cohorts,
    id: u64,
    now: DateTime<Utc>,
    tz: &chrono_tz::Tz,
) -> Result<Membership, RunError> {
    fn cohort(
        cohorts: &Cohorts,
        id: u64,
        depth: usize,
        now: DateTime<Utc>,
        tz: &chrono_tz::Tz,
    ) -> Result<Membership, RunError> {
        let unsupported = |message: String| {
            RunError::Unsupported(Unsupported {
                field: "cohort".into(),
                message,
            })
        };
        if depth > MAX_DEPTH {
            return Err(unsupported(format!(
                "cohort {id}: its references form a cycle or a chain deeper than {MAX_DEPTH}"
            )));
        }
        match cohorts.by_id.get(&id) {
            None => Err(unsupported(format!("cohort {id} was not loaded"))),
            Some((_, Loaded::Static(people))) => {
                let mut ids: Vec<i64> = people.iter().copied().collect();
                ids.sort_unstable();
                Ok(Membership::Listed(ids))
            }
            Some((_, Loaded::Dynamic(d))) => node(cohorts, &d.root, depth, now, tz),
        }
    }
    fn node(
        cohorts: &Cohorts,
        n: &CohortNode,
        depth: usize,
        now: DateTime<Utc>,
        tz: &chrono_tz::Tz,
    ) -> Result<Membership, RunError> {
        let negated = |m: Membership, negate: bool| {
            if negate {
                Membership::Not(Box::new(m))
            } else {
                m
            }
        };
        Ok(match n {
            CohortNode::Group { op, values } => {
                let parts = values
                    .iter()
                    .map(|v| node(cohorts, v, depth, now, tz))
                    .collect::<Result<Vec<_>, _>>()?;
                match op {
                    GroupOp::And => Membership::All(parts),
                    GroupOp::Or => Membership::Any(parts),
                }
            }
            CohortNode::Person { filter, negate } => {
                negated(Membership::Person(filter.clone()), *negate)
            }
            CohortNode::Cohort { id, negate } => {
                negated(cohort(cohorts, *id, depth + 1, now, tz)?, *negate)
            }
            CohortNode::Behavioral(b) => {
                let (from_us, to_us) = (
                    b.window.start(now, tz).timestamp_micros(),
                    now.timestamp_micros(),
                );
                let (event, filters) = (b.event.clone(), b.event_filters.clone());
                let m = match b.kind {
                    BehavioralKind::Performed => Membership::Performed {
                        event,
                        filters,
                        from_us,
                        to_us,
                        op: CountOp::Gte,
                        count: 1,
                    },
                    BehavioralKind::PerformedMultiple { op, count } => Membership::Performed {
                        event,
                        filters,
                        from_us,
                        to_us,
                        op,
                        count,
                    },
                    BehavioralKind::FirstTime => Membership::FirstTime {
                        event,
                        filters,
                        from_us,
                        to_us,
                    },
                };
                negated(m, b.negate)
            }
        })
    }
    cohort(cohorts, id, 0, now, tz)
}

/// Which dense persons did what `b` describes, in its window ending at `now`.
fn behaviour(
    snap: &Snapshot,
    b: &Behavioral,
    now: DateTime<Utc>,
    tz: &chrono_tz::Tz,
) -> Result<Vec<bool>, EngineError> {
    let n = snap.person_ids.len();
    let start = b.window.start(now, tz).timestamp_micros();
    let end = now.timestamp_micros();
    let event: Option<Option<u32>> = match &b.event {
        EventRef::All => None,
        EventRef::Named(name) => Some(snap.events.get(name)),
    };
    if event == Some(None) {
        // Nobody ever did it.
        return Ok(vec![
            matches!(b.kind, BehavioralKind::PerformedMultiple { op, count } if op.holds(0, count));
            n
        ]);
    }
    let event = event.flatten();
    let filters: Vec<crate::insight_filters::Compiled> = b
        .event_filters
        .iter()
        .map(crate::insight_filters::Compiled::new)
        .collect();
    let first_time = matches!(b.kind, BehavioralKind::FirstTime);
    // Counts in the window, or for "first time" the first time ever.
    let mut counts = vec![0u32; n];
    let mut first = vec![i64::MAX; n];
    let from = if first_time { i64::MIN } else { start };
    for (&day, part) in &snap.partitions {
        let day_start = day as i64 * DAY_US;
        if day_start > end || day_start.saturating_add(DAY_US) <= from {
            continue;
        }
        let sorted = snap.sorted(part);
        // Rows failing an event filter, in storage order.
        let mut pass: Option<Vec<bool>> = None;
        for f in &filters {
            let p = crate::insight_filters::event_pass(snap, part, f)?;
            pass = Some(match pass {
                None => p,
                Some(mut acc) => {
                    acc.iter_mut().zip(p).for_each(|(a, b)| *a &= b);
                    acc
                }
            });
        }
        for i in 0..sorted.person.len() {
            if event.is_some_and(|e| sorted.event[i] != e) {
                continue;
            }
            let ts = sorted.ts[i];
            if ts < from || ts > end {
                continue;
            }
            if pass.as_ref().is_some_and(|p| !p[sorted.order[i] as usize]) {
                continue;
            }
            let person = sorted.person[i] as usize;
            if first_time {
                first[person] = first[person].min(ts);
            } else {
                counts[person] += 1;
            }
        }
    }
    Ok(match b.kind {
        BehavioralKind::Performed => counts.iter().map(|&c| c > 0).collect(),
        BehavioralKind::PerformedMultiple { op, count } => {
            counts.iter().map(|&c| op.holds(c as u64, count)).collect()
        }
        BehavioralKind::FirstTime => first.iter().map(|&t| t >= start && t <= end).collect(),
    })
}

/// Partitions are UTC days: day `d` starts at `d * DAY_US`.
const DAY_US: i64 = 86_400_000_000;

/// The dense persons who are members: roots of the identity mapping (merged-away persons are not separate) that
/// have a person record, in person-id order.
pub fn member_list(snap: &Snapshot, members: &[bool]) -> Vec<u32> {
    let mut root = vec![false; snap.person_ids.len()];
    for &p in snap.resolved.iter() {
        root[p as usize] = true;
    }
    let mut out: Vec<u32> = (0..members.len() as u32)
        .filter(|&d| members[d as usize] && root[d as usize] && snap.person_ids[d as usize] >= 0)
        .collect();
    out.sort_by_key(|&d| snap.person_ids[d as usize]);
    out
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{project_id}/cohorts",
            get(list_cohorts).post(create_cohort),
        )
        .route(
            "/api/v1/projects/{project_id}/cohorts/{cohort_id}",
            get(get_cohort).patch(patch_cohort).delete(delete_cohort),
        )
        .route(
            "/api/v1/projects/{project_id}/cohorts/{cohort_id}/persons",
            get(cohort_persons),
        )
        .route(
            "/api/v1/projects/{project_id}/cohorts/{cohort_id}/members",
            post(add_members).delete(remove_members),
        )
}

/// Longest cohort name (characters).
const MAX_NAME: usize = 400;
/// Longest description (characters).
const MAX_DESCRIPTION: usize = 4000;
/// Most persons in one members request.
const MAX_MEMBERS_PER_REQUEST: usize = 10_000;
/// Most persons one `/persons` page lists.
const MAX_PAGE: usize = 1000;

/// A create or update body, validated field by field.
#[derive(Default)]
struct CohortBody {
    name: Option<String>,
    description: Option<String>,
    is_static: Option<bool>,
    filters: Option<(Value, CohortDefinition)>,
    version: Option<i64>,
}

fn read_body(body: &Map<String, Value>, creating: bool) -> Result<CohortBody, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut out = CohortBody::default();
    let err = |field: &str, message: &str| FieldError {
        field: field.into(),
        message: message.into(),
    };
    for (k, v) in body {
        match k.as_str() {
            "name" => match v.as_str().map(str::trim) {
                Some(n) if !n.is_empty() && n.chars().count() <= MAX_NAME => {
                    out.name = Some(n.to_owned())
                }
                _ => errors.push(err("name", "must be text of 1 to 400 characters")),
            },
            "description" => match v.as_str() {
                Some(d) if d.chars().count() <= MAX_DESCRIPTION => {
                    out.description = Some(d.to_owned())
                }
                _ => errors.push(err(
                    "description",
                    "must be text of at most 4000 characters",
                )),
            },
            "is_static" if creating => match v.as_bool() {
                Some(b) => out.is_static = Some(b),
                None => errors.push(err("is_static", "must be true or false")),
            },
            "filters" => match flywheel_query::parse_cohort_filters(v) {
                Ok(d) => out.filters = Some((v.clone(), d)),
                Err(es) => errors.extend(es.into_iter().map(|e| FieldError {
                    field: format!("filters.{}", e.field),
                    message: e.message,
                })),
            },
            "version" if !creating => match v.as_i64() {
                Some(n) if n >= 1 => out.version = Some(n),
                _ => errors.push(err(
                    "version",
                    "must be the cohort's current version (a whole number)",
                )),
            },
            "is_static" => errors.push(err(k, "cannot be changed: create a new cohort")),
            "id" | "created_at" | "updated_at" | "count" => errors.push(err(k, "cannot be set")),
            other => errors.push(err(
                other,
                "unknown field (use name, description, filters, is_static, version)",
            )),
        }
    }
    if creating {
        if out.name.is_none() && !body.contains_key("name") {
            errors.push(err("name", "is required"));
        }
        let is_static = out.is_static.unwrap_or(false);
        if is_static && body.contains_key("filters") {
            errors.push(err(
                "filters",
                "a static cohort has members, not a definition",
            ));
        }
        if !is_static && !body.contains_key("filters") {
            errors.push(err(
                "filters",
                "is required for a dynamic cohort (or set is_static: true)",
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Checks that a definition's references exist and do not lead back to cohort `own` (when updating it).
async fn check_references(
    state: &AppState,
    project_id: i64,
    definition: &CohortDefinition,
    own: Option<u64>,
) -> Result<(), ApiError> {
    let refs: Vec<(String, u64)> = definition
        .cohort_ids()
        .into_iter()
        .map(|id| ("filters".to_owned(), id))
        .collect();
    if let Some(own) = own {
        if refs.iter().any(|(_, id)| *id == own) {
            return Err(invalid(
                "filters",
                format!("cohort {own} cannot contain itself"),
            ));
        }
    }
    let reached = load(state, project_id, &refs).await?;
    if let Some(own) = own.filter(|id| reached.by_id.contains_key(id)) {
        return Err(invalid(
            "filters",
            format!("the references lead back to cohort {own} (a cycle)"),
        ));
    }
    Ok(())
}

fn parse_cohort_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_cohort_id",
            format!("cohort id `{raw}` is not a positive whole number"),
        )
    })
}

async fn cohort_record(
    state: &AppState,
    project_id: i64,
    raw: &str,
) -> Result<flywheel_store::CohortRecord, ApiError> {
    let id = parse_cohort_id(raw)?;
    state.store.cohort(project_id, id).await?.ok_or_else(|| {
        ApiError::not_found(format!("cohort {id} not found in project {project_id}"))
    })
}

/// Cohort `id` of a project and every cohort it reaches (see [`load`]).
async fn load_one(state: &AppState, project_id: i64, id: i64) -> Result<Cohorts, ApiError> {
    load(state, project_id, &[("cohort".to_owned(), id as u64)]).await
}

/// Evaluates cohort `id` (loaded with what it reaches in `cohorts`) over the current tables: the snapshot and each
/// dense person's membership. Waits (bounded) for every acknowledged event first, as insights do.
async fn evaluate(
    state: &AppState,
    project_id: i64,
    cohorts: Cohorts,
    id: i64,
) -> Result<(Option<Snapshot>, Arc<Vec<bool>>, bool), ApiError> {
    let complete = state.tables_catch_up().await;
    let epoch = state.flags.subjects.epoch();
    let mut columns = Columns::default();
    crate::insights::load_person_columns(
        state,
        project_id,
        &cohorts.person_keys(),
        epoch,
        &mut columns,
    )
    .await?;
    let tz = project_tz(state, project_id).await?;
    let snapshot = state.tables.snapshot(project_id);
    let now = minute_of(state.clock.now());
    let snap = snapshot.clone();
    let members = tokio::task::spawn_blocking(move || {
        let empty = Snapshot::empty();
        let snap = snap.as_ref().unwrap_or(&empty);
        Evaluator::new(snap, &cohorts, &columns, now, tz).members(id as u64)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(crate::insights::run_error)?;
    Ok((snapshot, members, complete))
}

/// The project's time zone (UTC when it has none that parses).
async fn project_tz(state: &AppState, project_id: i64) -> Result<chrono_tz::Tz, ApiError> {
    Ok(state
        .store
        .project_settings(project_id)
        .await?
        .and_then(|s| flywheel_query::parse_time_zone(&s.time_zone).ok())
        .unwrap_or(chrono_tz::UTC))
}

/// The members now from ClickHouse (every node's events; `--events-url`): `(person id, uuid)` in person-id order.
async fn clickhouse_members(
    state: &AppState,
    reader: &crate::insights_clickhouse::Reader,
    project_id: i64,
    id: i64,
) -> Result<(Vec<(i64, String)>, bool), ApiError> {
    let cohorts = load_one(state, project_id, id).await?;
    let tz = project_tz(state, project_id).await?;
    crate::insights_clickhouse::cohort_members(state, reader, project_id, &cohorts, id as u64, tz)
        .await
}

/// The number of persons in a cohort now, cached per cohort version, data version, identity epoch and minute
/// (from ClickHouse with `--events-url`, never cached: other nodes' events change it).
async fn count(
    state: &AppState,
    project_id: i64,
    record: &flywheel_store::CohortRecord,
) -> Result<u64, ApiError> {
    if let Some(reader) = &state.clickhouse {
        let (members, _) = clickhouse_members(state, reader, project_id, record.id).await?;
        return Ok(members.len() as u64);
    }
    let cohorts = load_one(state, project_id, record.id).await?;
    let cohorts_key = cohorts.cache_key(state.clock.now());
    let version = state.tables.version(project_id);
    let key = format!(
        "cohort-count|{project_id}|{}|{cohorts_key}|{version}|{}",
        record.id,
        state.flags.subjects.epoch()
    );
    if let Some(hit) = state.insights.result(&key) {
        if let Some(n) = hit.as_u64() {
            return Ok(n);
        }
    }
    let (snapshot, members, complete) = evaluate(state, project_id, cohorts, record.id).await?;
    let n = snapshot.map_or(0, |s| member_list(&s, &members).len() as u64);
    if complete {
        state.insights.keep_result(key, Arc::new(json!(n)));
    }
    Ok(n)
}

fn with_count(record: &flywheel_store::CohortRecord, count: u64) -> Value {
    let mut v = json!(record);
    v["count"] = json!(count);
    v
}

async fn list_cohorts(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let mut out = Vec::new();
    for record in state.store.cohorts(project_id).await? {
        let n = count(&state, project_id, &record).await?;
        out.push(with_count(&record, n));
    }
    Ok(Json(json!({"results": out})))
}

async fn get_cohort(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, cohort_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let record = cohort_record(&state, project_id, &cohort_id).await?;
    let n = count(&state, project_id, &record).await?;
    Ok(Json(with_count(&record, n)))
}

async fn create_cohort(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(project_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let b = read_body(&body, true).map_err(|e| ApiError::validation("cohort", &e))?;
    if let Some((_, definition)) = &b.filters {
        check_references(&state, project_id, definition, None).await?;
    }
    let actor = crate::features::actor(&caller, &headers, peer);
    let record = state
        .store
        .create_cohort(
            project_id,
            b.name.as_deref().unwrap_or_default(),
            b.description.as_deref().unwrap_or_default(),
            b.filters.as_ref().map(|(raw, _)| raw),
            &actor,
        )
        .await?;
    let n = count(&state, project_id, &record).await?;
    Ok((StatusCode::CREATED, Json(with_count(&record, n))))
}

async fn patch_cohort(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, cohort_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let current = cohort_record(&state, project_id, &cohort_id).await?;
    let b = read_body(&body, false).map_err(|e| ApiError::validation("cohort update", &e))?;
    if let Some((_, definition)) = &b.filters {
        if current.is_static {
            return Err(invalid(
                "filters",
                "a static cohort has members, not a definition".into(),
            ));
        }
        check_references(&state, project_id, definition, Some(current.id as u64)).await?;
    }
    let update = flywheel_store::CohortUpdate {
        name: b.name,
        description: b.description,
        filters: b.filters.map(|(raw, _)| raw),
    };
    let actor = crate::features::actor(&caller, &headers, peer);
    let record = state
        .store
        .update_cohort(project_id, current.id, b.version, &update, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "cohort"))?;
    let n = count(&state, project_id, &record).await?;
    Ok(Json(with_count(&record, n)))
}

async fn delete_cohort(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path((project_id, cohort_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let record = cohort_record(&state, project_id, &cohort_id).await?;
    let actor = crate::features::actor(&caller, &headers, peer);
    state
        .store
        .delete_cohort(project_id, record.id, &actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct Page {
    limit: Option<String>,
    offset: Option<String>,
}

fn page_number(
    raw: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                invalid(
                    name,
                    format!("must be a whole number from 0 to {max}, got `{s}`"),
                )
            }),
    }
}

/// `GET …/cohorts/{id}/persons`: the members now, by person id, each with their distinct ids.
async fn cohort_persons(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, cohort_id)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let record = cohort_record(&state, project_id, &cohort_id).await?;
    let limit = page_number(page.limit.as_deref(), "limit", 100, MAX_PAGE)?.max(1);
    let offset = page_number(page.offset.as_deref(), "offset", 0, usize::MAX)?;
    if let Some(reader) = &state.clickhouse {
        let (members, complete) = clickhouse_members(&state, reader, project_id, record.id).await?;
        let chosen = &members[offset.min(members.len())..];
        let chosen = &chosen[..limit.min(chosen.len())];
        let results =
            crate::insights_clickhouse::with_distinct_ids(&state, project_id, chosen).await?;
        return Ok(Json(json!({
            "count": members.len(),
            "offset": offset,
            "limit": limit,
            "results": results,
            "complete": complete,
        })));
    }
    let cohorts = load_one(&state, project_id, record.id).await?;
    let (snapshot, members, complete) = evaluate(&state, project_id, cohorts, record.id).await?;
    let Some(snap) = snapshot else {
        return Ok(Json(
            json!({"count": 0, "results": [], "complete": complete}),
        ));
    };
    let list = member_list(&snap, &members);
    let chosen = &list[offset.min(list.len())..];
    let tables = state.tables.clone();
    let names = |dids: &[u32]| tables.distinct_id_names(project_id, dids);
    let results = crate::insights::list_persons(&snap, chosen, limit, &names);
    Ok(Json(json!({
        "count": list.len(),
        "offset": offset,
        "limit": limit,
        "results": results,
        "complete": complete,
    })))
}

/// The persons of a members request: JSON (`{"distinct_ids": [..]}` or `{"person_ids": [..]}`), or CSV
/// (`Content-Type: text/csv`, as exported from a spreadsheet or a CRM: the first column of each line, an optional
/// header `distinct_id` or `person_id` saying which; distinct ids by default).
struct Members(Vec<String>, Vec<i64>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Members {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let csv = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/csv"));
        if !csv {
            let JsonBody(body) = JsonBody::<Map<String, Value>>::from_request(req, state).await?;
            let (dids, ids) = read_members(&body)?;
            return Ok(Members(dids, ids));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| invalid("body", "the CSV is not UTF-8 text".into()))?;
        let (dids, ids) = read_csv_members(text)?;
        Ok(Members(dids, ids))
    }
}

/// The first column of each non-empty line of a CSV (quotes around a cell removed); a first line `distinct_id` or
/// `person_id` is a header saying which the cells are.
fn read_csv_members(text: &str) -> Result<(Vec<String>, Vec<i64>), ApiError> {
    let mut cells = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let cell = line.split(',').next().unwrap_or("").trim();
            let cell = cell
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(cell);
            (i + 1, cell)
        })
        .filter(|(_, c)| !c.is_empty())
        .peekable();
    let persons = match cells.peek().map(|(_, c)| c.to_ascii_lowercase()) {
        Some(h) if h == "person_id" => {
            cells.next();
            true
        }
        Some(h) if h == "distinct_id" => {
            cells.next();
            false
        }
        _ => false,
    };
    let (mut dids, mut ids) = (Vec::new(), Vec::new());
    for (line, cell) in cells {
        if dids.len() + ids.len() >= MAX_MEMBERS_PER_REQUEST {
            return Err(invalid(
                "body",
                format!(
                    "at most {MAX_MEMBERS_PER_REQUEST} persons per request; send several requests"
                ),
            ));
        }
        if persons {
            match cell.parse::<i64>().ok().filter(|&n| n > 0) {
                Some(n) => ids.push(n),
                None => {
                    return Err(invalid(
                        &format!("line {line}"),
                        format!("`{cell}` is not a person id (a positive whole number)"),
                    ))
                }
            }
        } else if cell.len() > 200 {
            return Err(invalid(
                &format!("line {line}"),
                "a distinct id is at most 200 bytes".into(),
            ));
        } else {
            dids.push(cell.to_owned());
        }
    }
    if dids.is_empty() && ids.is_empty() {
        return Err(invalid(
            "body",
            "the CSV lists no persons (one distinct id per line, first column)".into(),
        ));
    }
    Ok((dids, ids))
}

/// A members request: distinct ids or person ids (not both).
fn read_members(body: &Map<String, Value>) -> Result<(Vec<String>, Vec<i64>), ApiError> {
    let mut dids = Vec::new();
    let mut ids = Vec::new();
    for (k, v) in body {
        let Some(items) = v.as_array() else {
            return Err(invalid(k, "must be a list".into()));
        };
        if items.len() > MAX_MEMBERS_PER_REQUEST {
            return Err(invalid(
                k,
                format!("at most {MAX_MEMBERS_PER_REQUEST} per request; send several requests"),
            ));
        }
        match k.as_str() {
            "distinct_ids" => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().filter(|s| !s.is_empty() && s.len() <= 200) {
                        Some(s) => dids.push(s.to_owned()),
                        None => {
                            return Err(invalid(
                                &format!("distinct_ids[{i}]"),
                                "must be a distinct id (text of 1 to 200 bytes)".into(),
                            ))
                        }
                    }
                }
            }
            "person_ids" => {
                for (i, item) in items.iter().enumerate() {
                    match item.as_i64().filter(|&n| n > 0) {
                        Some(n) => ids.push(n),
                        None => {
                            return Err(invalid(
                                &format!("person_ids[{i}]"),
                                "must be a person id (a positive whole number)".into(),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(invalid(
                    other,
                    "unknown field (use distinct_ids or person_ids)".into(),
                ))
            }
        }
    }
    if dids.is_empty() && ids.is_empty() {
        return Err(invalid(
            "distinct_ids",
            "give the persons as distinct_ids or person_ids (a non-empty list)".into(),
        ));
    }
    Ok((dids, ids))
}

async fn change_members(
    state: AppState,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    caller: Caller,
    (project_id, cohort_id): (String, String),
    Members(dids, mut ids): Members,
    add: bool,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let record = cohort_record(&state, project_id, &cohort_id).await?;
    if !record.is_static {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "cohort {} is dynamic: its members follow its definition (create a static cohort to upload persons)",
                record.id
            ),
        ));
    }
    let refs: Vec<&str> = dids.iter().map(String::as_str).collect();
    let found = state.store.person_numbers_for(project_id, &refs).await?;
    let unknown: Vec<&str> = refs
        .iter()
        .copied()
        .filter(|d| !found.contains_key(*d))
        .collect();
    ids.extend(found.values());
    let actor = crate::features::actor(&caller, &headers, peer);
    let (changed, record) = state
        .store
        .change_cohort_people(project_id, record.id, &ids, add, &actor)
        .await
        .map_err(|e| crate::features::write_error(e, "cohort"))?;
    let n = count(&state, project_id, &record).await?;
    let mut out = json!({
        "unknown_distinct_ids": unknown,
        "cohort": with_count(&record, n),
    });
    out[if add { "added" } else { "removed" }] = json!(changed);
    Ok(Json(out))
}

/// `POST …/cohorts/{id}/members`: adds persons to a static cohort. Distinct ids without a person are listed in
/// `unknown_distinct_ids` (nothing is added for them).
async fn add_members(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(path): Path<(String, String)>,
    members: Members,
) -> Result<Json<Value>, ApiError> {
    change_members(state, peer, headers, caller, path, members, true).await
}

/// `DELETE …/cohorts/{id}/members`: removes persons from a static cohort.
async fn remove_members(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(path): Path<(String, String)>,
    members: Members,
) -> Result<Json<Value>, ApiError> {
    change_members(state, peer, headers, caller, path, members, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: ApiError) -> Vec<String> {
        e.errors
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn csv_members_take_the_first_column_with_an_optional_header() {
        let (dids, ids) =
            read_csv_members("distinct_id,email\r\nuser_1,a@x.io\n\n\"user 2\",b@x.io\nuser_3\n")
                .unwrap();
        assert_eq!(
            (dids, ids),
            (
                vec!["user_1".into(), "user 2".into(), "user_3".into()],
                vec![]
            )
        );
        let (dids, ids) = read_csv_members("Person_ID\n7\n 9 \n").unwrap();
        assert_eq!((dids, ids), (vec![], vec![7, 9]));
        // No header: every line is a distinct id.
        let (dids, _) = read_csv_members("a\nb").unwrap();
        assert_eq!(dids, ["a", "b"]);
        assert_eq!(
            fields(read_csv_members("person_id\n7\nseven\n").unwrap_err()),
            ["line 3"]
        );
        assert_eq!(
            fields(read_csv_members("distinct_id\n\n").unwrap_err()),
            ["body"]
        );
        let many = "x\n".repeat(MAX_MEMBERS_PER_REQUEST + 1);
        assert_eq!(fields(read_csv_members(&many).unwrap_err()), ["body"]);
    }
}
