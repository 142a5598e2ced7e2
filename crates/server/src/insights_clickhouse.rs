//! With `--events-url`: the insight endpoint answers from ClickHouse, where every node ships its events, instead
//! of the node's embedded tables (which hold only the events captured through this node).
//!
//! The definition is planned as the embedded engine plans it, compiled to SQL and run by `flywheel-clickhouse`,
//! and its numbers are rendered by the same code as the kernels' (`insight_render`): one definition gets the same
//! JSON from either engine. Cohorts are resolved here (`cohorts::membership`) and tested in the SQL; a cohort
//! breakdown is one query per cohort. Group filters are decided here per group (groups live in the metadata
//! store) and a group breakdown's labels read here; the SQL looks up each row's group. What the SQL cannot answer
//! exactly (regular expressions, listing a funnel step's persons…) is a `400 unsupported` naming the field, never an answer from the
//! node's own tables, which would silently count only this node's events. ClickHouse unreachable is a 503.
//!
//! Read-your-writes: before reading, the request waits (bounded by `read_barrier_timeout`) until this node's
//! shipper has put into ClickHouse every event the node acknowledged before the request, and the person mapping
//! as of them; `complete` says whether it did.
//!
//! No answer is cached here: an embedded answer is keyed by the node's data version, but ClickHouse also changes
//! with every other node's shipments, which this node does not see. (A key would need ClickHouse's own version of
//! the project's data, e.g. the shipments table's newest row per node, read on every request.)

use flywheel_clickhouse::sql::{
    group_filter_key, quote, Answer, FunnelSplit, GroupLabels, GroupPass, Groups, Membership,
    Target,
};
use flywheel_clickhouse::{ClickHouseError, Client, InsightError};
use flywheel_kernels as k;
use flywheel_query::plan::Plan;
use flywheel_query::{Aggregation, Filter, InsightQuery, PropertyType};
use serde_json::Value;

use crate::error::ApiError;
use crate::insight_render as render;
use crate::insights::{run_error, Options, RunError, Unsupported};
use crate::state::AppState;

/// Seconds a client is asked to wait before retrying when ClickHouse is unreachable.
const RETRY_AFTER_SECS: u64 = 10;

/// Where insights read: ClickHouse and its database.
#[derive(Clone)]
pub struct Reader {
    pub client: Client,
    pub db: String,
}

/// Answers a validated definition (the project's test-account filters already applied) from ClickHouse: the
/// answer as the embedded engine renders it, and whether ClickHouse held every event acknowledged before the
/// request.
pub(crate) async fn answer(
    state: &AppState,
    reader: &Reader,
    project_id: i64,
    query: &InsightQuery,
    options: &Options,
) -> Result<(Value, bool), ApiError> {
    let complete = read_barrier(state).await;
    let now = state.clock.now();
    let tz = options.tz;
    let range = query
        .resolve(now, &tz)
        .map_err(|e| ApiError::validation("insight definition", &[e]))?;
    // The cohorts the filters reach, resolved at the minute as the embedded evaluator resolves them.
    let loaded = crate::cohorts::load(
        state,
        project_id,
        &crate::cohorts::references(&serde_json::json!(query)),
    )
    .await?;
    let target = Target {
        db: reader.db.clone(),
        project_id: project_id.max(0) as u64,
        cohorts: memberships(&loaded, now, &tz)?,
        groups: std::sync::Arc::new(groups(state, project_id, query).await?),
    };
    let (target, resolved) = (&target, &range);
    let one = |q: InsightQuery| async move {
        let plan = flywheel_query::plan::plan(&q, resolved, &tz);
        if let InsightQuery::Funnel(f) = &q {
            if flywheel_clickhouse::sql::funnel_needs_rows(f) {
                return funnel_in_node(state, reader, target, project_id, f, &plan, options).await;
            }
        }
        let numbers = flywheel_clickhouse::run_insight(&reader.client, target, &q, now, &tz)
            .await
            .map_err(error)?;
        rendered(&q, &plan, numbers).map_err(ApiError::internal)
    };
    // A cohort breakdown is one query per cohort, filtered by it, as on the embedded engine.
    let mut out = match flywheel_query::plan::cohort_parts(query) {
        Some(_) if options.funnel_step.is_some() => {
            return Err(unsupported(
                "funnel_step",
                "cannot be combined with a cohort breakdown: filter by the cohort instead",
            ))
        }
        Some(parts) => {
            let mut answers = Vec::with_capacity(parts.len());
            for (id, part) in parts {
                answers.push((id, one(part).await?));
            }
            crate::insights::by_cohorts(query, answers)
        }
        None => one(query.clone()).await?,
    };
    // A funnel answered in the node lists its step's persons itself.
    let listed = out.get("persons").is_some();
    if let (Some(step), InsightQuery::Funnel(f), false) = (options.funnel_step, query, listed) {
        crate::insights::check_funnel_step(step, f.steps.len())
            .map_err(|u| unsupported(&u.field, &u.message))?;
        let plan = flywheel_query::plan::plan(query, &range, &tz);
        let members = flywheel_clickhouse::compile(query, &plan, &tz, target)
            .map_err(|u| unsupported(&u.field, &u.message))?
            .funnel_members(step)
            .ok_or_else(|| ApiError::internal("a funnel compiled without its attempts"))?;
        out["persons"] =
            step_members(state, reader, target, project_id, &members, f, options).await?;
    }
    render::with_range(&mut out, &range);
    Ok((out, complete))
}

/// A funnel the SQL cannot answer ([`flywheel_clickhouse::sql::funnel_needs_rows`]: an unordered funnel whose
/// steps can match the same event): its rows are read from ClickHouse — every node's events — and the embedded
/// engine's kernel runs on them here, so the answer (breakdown, trend, a step's persons) is the embedded engine's.
async fn funnel_in_node(
    state: &AppState,
    reader: &Reader,
    target: &Target,
    project_id: i64,
    f: &flywheel_query::FunnelQuery,
    plan: &Plan,
    options: &Options,
) -> Result<Value, ApiError> {
    let rows = flywheel_clickhouse::sql::read_funnel_rows(&reader.client, f, plan, target)
        .await
        .map_err(error)?;
    let read = &plan.reads[0];
    let range = &read.range;
    let steps = f.steps.len();
    let labels = rows.codes.is_some().then_some(&rows.labels[..]);
    let spec = k::funnel::FunnelSpec {
        steps: (0..steps as u32).collect(),
        order: k::funnel::Order::Unordered,
        window_us: flywheel_query::plan::funnel_window_us(f.conversion_window),
        entry: range.from.timestamp_micros()..range.to.timestamp_micros(),
        exclusions: Vec::new(),
        breakdown: if labels.is_some() {
            k::trends::BreakdownSource::Row
        } else {
            k::trends::BreakdownSource::None
        },
        breakdown_values: labels.map_or(1, |l| l.len() as u32),
        attribution: crate::insights::kernel_attribution(f.breakdown_attribution),
        trend: f.trends.then(|| crate::insights::buckets(read)),
        collect_persons: options.funnel_step.is_some(),
    };
    let block = k::Block {
        person: &rows.member,
        ts: &rows.ts,
        mask: &rows.mask,
        breakdown: rows.codes.as_deref(),
        value: None,
    };
    let members = &rows.members;
    let r = k::funnel::funnel(&[block], members.len() as u32, k::default_threads(), &spec);
    let mut out = render::funnel(f, range, labels, &r);
    if let Some(step) = options.funnel_step {
        let chosen = crate::insights::reached_step(&r.persons, step, steps)
            .map_err(|u| unsupported(&u.field, &u.message))?;
        let list: Vec<String> = chosen
            .iter()
            .map(|&i| quote(&members[i as usize]))
            .collect();
        let in_list = if list.is_empty() {
            "SELECT '' AS member WHERE 0".to_owned()
        } else {
            format!("SELECT arrayJoin([{}]) AS member", list.join(", "))
        };
        out["persons"] =
            step_members(state, reader, target, project_id, &in_list, f, options).await?;
    }
    Ok(out)
}

/// The persons (or groups) of a funnel step as the embedded path lists them: the step, how many, and the first
/// `limit` — persons in person-id order with their distinct ids (from the metadata store), groups by key.
async fn step_members(
    state: &AppState,
    reader: &Reader,
    target: &Target,
    project_id: i64,
    members: &str,
    f: &flywheel_query::FunnelQuery,
    options: &Options,
) -> Result<Value, ApiError> {
    let (step, limit) = (options.funnel_step.unwrap_or(1), options.persons_limit);
    let by_group = matches!(f.aggregation, Some(Aggregation::Group(_)));
    let count = rows(reader, &format!("SELECT count() FROM ({members})"))
        .await?
        .first()
        .and_then(|r| r.first())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| ApiError::internal("ClickHouse answered a count with something else"))?;
    let results: Vec<Value> = if by_group {
        rows(
            reader,
            &format!("SELECT member FROM ({members}) ORDER BY member LIMIT {limit}"),
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .map(|key| serde_json::json!({"group_key": key}))
        .collect()
    } else {
        let sql = flywheel_clickhouse::sql::persons_where(
            target,
            &format!("toString(pperson) IN ({members})"),
            Some(limit),
        );
        with_distinct_ids(state, project_id, &persons(reader, &sql).await?).await?
    };
    Ok(serde_json::json!({"step": step, "count": count, "results": results}))
}

/// The groups a query's group filters, group breakdown and group aggregation need, from the metadata store: each
/// filter decided per group key as the embedded engine decides it (`Source::Group`), the breakdown's property as
/// labels, the aggregated type's name.
async fn groups(
    state: &AppState,
    project_id: i64,
    query: &InsightQuery,
) -> Result<Groups, ApiError> {
    let mut columns = std::collections::HashMap::new();
    for (index, key) in crate::insights::group_keys(query) {
        let type_name = state.store.group_type_name(project_id, index).await?;
        let values = state
            .store
            .group_property_values(project_id, index, &key)
            .await?;
        columns.insert((index, key), (type_name, values));
    }
    let mut out = Groups::default();
    let aggregation = match query {
        InsightQuery::Funnel(f) => f.aggregation,
        InsightQuery::Retention(r) => r.aggregation,
        _ => None,
    };
    if let Some(Aggregation::Group(index)) = aggregation {
        if let Some(name) = state.store.group_type_name(project_id, index).await? {
            out.type_names.insert(index, name);
        }
    }
    for f in crate::insights::all_filters(query) {
        let Filter::Property(p) = f else { continue };
        if p.property_type != PropertyType::Group {
            continue;
        }
        let Some((type_name, values)) =
            columns.get(&(p.group_type_index.unwrap_or(0), p.key.clone()))
        else {
            continue;
        };
        let compiled = crate::insight_filters::Compiled::new(p);
        let mut pass = GroupPass {
            type_name: type_name.clone(),
            missing: compiled.matches(None),
            ..GroupPass::default()
        };
        for (key, value) in values {
            if compiled.matches(Some(value)) {
                pass.passing.push(key.clone());
            } else {
                pass.failing.push(key.clone());
            }
        }
        out.filters.insert(group_filter_key(p), pass);
    }
    if let Some((index, property)) = crate::insights::group_breakdown(query) {
        let at = (index, property.to_owned());
        if let Some((type_name, values)) = columns.get(&at) {
            let labels = values
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), crate::insights::label_of(v)))
                .collect();
            out.labels.insert(
                at,
                GroupLabels {
                    type_name: type_name.clone(),
                    labels,
                },
            );
        }
    }
    Ok(out)
}

/// Waits (bounded by `read_barrier_timeout`) until ClickHouse holds every event this node acknowledged so far,
/// and the person mapping as of them; whether it does.
async fn read_barrier(state: &AppState) -> bool {
    match &state.spool {
        Some(spool) => {
            spool
                .wait_readable(
                    state.intake.committed_lsn(),
                    state.config.read_barrier_timeout,
                )
                .await
        }
        None => false,
    }
}

/// The members of cohort `id` now (`cohorts` holds it and what it reaches), from ClickHouse: `(person id, uuid)`
/// in person-id order, and whether ClickHouse held every event this node acknowledged before the request. The
/// cohort API's `count` and `/persons` on a node with `--events-url`.
pub(crate) async fn cohort_members(
    state: &AppState,
    reader: &Reader,
    project_id: i64,
    cohorts: &crate::cohorts::Cohorts,
    id: u64,
    tz: chrono_tz::Tz,
) -> Result<(Vec<(i64, String)>, bool), ApiError> {
    let complete = read_barrier(state).await;
    let target = Target {
        db: reader.db.clone(),
        project_id: project_id.max(0) as u64,
        cohorts: memberships(cohorts, state.clock.now(), &tz)?,
        ..Target::default()
    };
    let sql = flywheel_clickhouse::sql::cohort_members(&target, id)
        .map_err(|u| unsupported(&u.field, &u.message))?;
    Ok((persons(reader, &sql).await?, complete))
}

/// Every cohort of `cohorts` as the SQL tests it, resolved at `now`'s minute as the embedded evaluator does.
fn memberships(
    cohorts: &crate::cohorts::Cohorts,
    now: chrono::DateTime<chrono::Utc>,
    tz: &chrono_tz::Tz,
) -> Result<std::sync::Arc<std::collections::BTreeMap<u64, Membership>>, ApiError> {
    let minute = crate::cohorts::minute_of(now);
    let mut out = std::collections::BTreeMap::new();
    for &id in cohorts.by_id.keys() {
        out.insert(
            id,
            crate::cohorts::membership(cohorts, id, minute, tz).map_err(run_error)?,
        );
    }
    Ok(std::sync::Arc::new(out))
}

/// Runs a `SELECT` on ClickHouse, its failures as the API reports them (503 when ClickHouse is away).
async fn rows(reader: &Reader, sql: &str) -> Result<Vec<Vec<String>>, ApiError> {
    reader
        .client
        .query_rows(sql)
        .await
        .map_err(|e| error(InsightError::Run(e.into())))
}

/// The rows `(person id, uuid)` of a statement of `sql::persons_where`.
async fn persons(reader: &Reader, sql: &str) -> Result<Vec<(i64, String)>, ApiError> {
    rows(reader, sql)
        .await?
        .into_iter()
        .map(
            |row| match (row.first().and_then(|x| x.parse().ok()), row.get(1)) {
                (Some(pid), Some(uuid)) => Ok((pid, uuid.clone())),
                _ => Err(ApiError::internal(format!(
                    "ClickHouse answered persons with {row:?}"
                ))),
            },
        )
        .collect()
}

/// Persons `(person id, uuid)` as the API lists them: `{"person_id", "distinct_ids"}`, the distinct ids (sorted)
/// from the metadata store.
pub(crate) async fn with_distinct_ids(
    state: &AppState,
    project_id: i64,
    persons: &[(i64, String)],
) -> Result<Vec<Value>, ApiError> {
    let uuids: Vec<&str> = persons.iter().map(|(_, u)| u.as_str()).collect();
    let mut names = state
        .store
        .distinct_ids_of_persons(project_id, &uuids)
        .await?;
    Ok(persons
        .iter()
        .map(|(id, uuid)| {
            let mut dids = names.remove(uuid).unwrap_or_default();
            dids.sort();
            serde_json::json!({"person_id": id, "distinct_ids": dids})
        })
        .collect())
}

fn unsupported(field: &str, message: &str) -> ApiError {
    run_error(RunError::Unsupported(Unsupported {
        field: field.into(),
        message: message.into(),
    }))
}

/// The API's answer to a definition ClickHouse did not answer.
fn error(e: InsightError) -> ApiError {
    use flywheel_clickhouse::sql::RunError as SqlError;
    match e {
        InsightError::Field(e) => ApiError::validation("insight definition", &[e]),
        InsightError::Unsupported(u) => unsupported(&u.field, &u.message),
        InsightError::Run(SqlError::ClickHouse(
            e @ (ClickHouseError::Unreachable { .. } | ClickHouseError::Timeout { .. }),
        )) => {
            tracing::warn!(error = %e, "insights: ClickHouse did not answer");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "events_unavailable",
                "the event store (ClickHouse) is unreachable or did not answer in time; retry later",
            )
            .with_retry_after(RETRY_AFTER_SECS)
        }
        e => ApiError::internal(e),
    }
}

/// The JSON of ClickHouse's numbers for `q` as planned by `plan` (an error when they do not fit the kind: a bug).
fn rendered(q: &InsightQuery, plan: &Plan, answer: Answer) -> Result<Value, String> {
    let range = &plan.reads[0].range;
    Ok(match (q, answer) {
        (InsightQuery::Trends(t), Answer::Trends(reads)) => {
            let reads = reads
                .into_iter()
                .map(|series| {
                    (
                        vec![None],
                        series.into_iter().map(|row| vec![row]).collect(),
                    )
                })
                .collect();
            render::trends(t, plan, reads)
        }
        (InsightQuery::Trends(t), Answer::TrendsBreakdown(reads)) => {
            let reads = reads
                .into_iter()
                .map(|r| (r.labels.into_iter().map(Some).collect(), r.series))
                .collect();
            render::trends(t, plan, reads)
        }
        (
            InsightQuery::Funnel(f),
            Answer::Funnel {
                reached,
                avg_time_us,
                median_time_us,
                trend,
            },
        ) => {
            let steps = steps(&FunnelSplit {
                label: Value::Null,
                reached,
                avg_time_us,
                median_time_us,
            });
            let r = k::funnel::FunnelResult {
                by_breakdown: vec![steps],
                trend,
                persons: Vec::new(),
            };
            render::funnel(f, range, None, &r)
        }
        (InsightQuery::Funnel(f), Answer::FunnelBreakdown(splits)) => {
            let labels: Vec<Value> = splits.iter().map(|s| s.label.clone()).collect();
            let r = k::funnel::FunnelResult {
                by_breakdown: splits.iter().map(steps).collect(),
                ..Default::default()
            };
            render::funnel(f, range, Some(&labels), &r)
        }
        (InsightQuery::Retention(_), Answer::Retention(table)) => {
            render::retention(range, None, &[table])
        }
        (InsightQuery::Retention(_), Answer::RetentionBreakdown(splits)) => {
            let (labels, tables): (Vec<Value>, Vec<_>) =
                splits.into_iter().map(|s| (s.label, s.table)).unzip();
            render::retention(range, Some(&labels), &tables)
        }
        (InsightQuery::Stickiness(s), Answer::Stickiness(counts)) => {
            render::stickiness(s, range, &counts)
        }
        (InsightQuery::Lifecycle(_), Answer::Lifecycle(l)) => {
            let counts = k::lifecycle::Lifecycle {
                new: l.new,
                returning: l.returning,
                resurrecting: l.resurrecting,
                dormant: l.dormant,
            };
            render::lifecycle(range, &counts)
        }
        (q, a) => {
            return Err(format!(
                "ClickHouse answered a {} insight with {a:?}",
                q.kind()
            ))
        }
    })
}

/// One label's funnel steps as the kernel gives them.
fn steps(s: &FunnelSplit) -> Vec<k::funnel::StepStats> {
    s.reached
        .iter()
        .zip(&s.avg_time_us)
        .zip(&s.median_time_us)
        .map(|((&reached, &avg), &median)| k::funnel::StepStats {
            reached,
            avg_time_us: avg,
            median_time_us: median,
        })
        .collect()
}
