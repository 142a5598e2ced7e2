//! Retention (`crates/kernels/src/retention.rs`): periods are the plan's buckets; a first-time person belongs to
//! the cohort of the period holding their first start event ever (none when it is before the first period), a
//! recurring one to every period with a start event; cell `(p, k)` counts the members with a return event in
//! period `p + k` (or, `on_or_after`, in any period from `p + k` on); `k = 0` is the cohort's size. An
//! event- or person-property breakdown ([`super::breakdown`], ranked by the start rows) puts each membership under the label
//! of the start row that placed the person in that cohort; returns count whatever their labels.

use flywheel_query::plan::Plan;
use flywheel_query::{Aggregation, BreakdownBy, RetentionCohort, RetentionMode, RetentionQuery};

use super::breakdown::{By, Split};
use super::expr::{self, Target, LOG_ORDER};
use super::group;
use super::{Answer, Compiled, Fill, Statement, Unsupported};

pub(super) fn compile(
    r: &RetentionQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    if matches!(r.aggregation, Some(Aggregation::Group(_)))
        && matches!(
            r.breakdown.as_ref().map(|b| &b.by),
            Some(BreakdownBy::Person { .. })
        )
    {
        return Err(Unsupported::new(
            "breakdown.type",
            "a group-aggregated retention table breaks down by event or group properties (or cohorts), not person \
             properties",
        ));
    }
    let read = &plan.reads[0];
    let starts = &read.bucket_starts_us;
    let n = starts.len();
    let first = starts.first().copied().unwrap_or(read.end_us);
    let start = expr::spec_condition(&plan.specs[0], &plan.common, target)?;
    let back = expr::spec_condition(&plan.specs[1], &plan.common, target)?;
    let bucket = |ts: &str| {
        format!(
            "if({ts} >= {first} AND {ts} < {end}, {b}, -1)",
            end = read.end_us,
            b = expr::bucket(starts, ts)
        )
    };
    // A breakdown ranks the start rows read (all history for first-time cohorts).
    let (split, limit) = match &r.breakdown {
        None => (None, 0),
        Some(b) => {
            let (by, limit) = By::of(b, "retention", target)?;
            let split = Split::new(by, limit, read.from_us, read.to_us, &start, target);
            (Some(split), limit)
        }
    };
    let extra = split.as_ref().map_or(String::new(), Split::columns);
    // Persons, or groups: each row's group key instead of its person.
    let (counted, has) = group::counted(r.aggregation, &target.groups);
    let select = format!(
        "{counted} AS person, timestamp_us AS ts, {LOG_ORDER} AS ord, toUInt8({start}) AS is_start, \
         toUInt8({back}) AS is_return, toInt64({}) AS b{extra}",
        bucket("timestamp_us")
    );
    let wanted = format!("(({start}) OR ({back})) AND {has}");
    let rows = match &split {
        Some(b) => b.rows(target, &select, read.from_us, read.to_us, &wanted),
        None => expr::source(target, &select, read.from_us, read.to_us, &wanted),
    };
    let returned = match r.mode.unwrap_or(RetentionMode::On) {
        RetentionMode::On => "has(returns, p + toInt64(k))",
        RetentionMode::OnOrAfter => "arrayExists(x -> x >= p + toInt64(k), returns)",
    };
    let first_time = r.cohort.unwrap_or(RetentionCohort::FirstTime) == RetentionCohort::FirstTime;
    let placed = format!("starts_n > 0 AND first_start >= {first}");
    let Some(b) = split else {
        let cohorts = if first_time {
            format!(
                "if({placed}, [toInt64({})], emptyArrayInt64())",
                bucket("first_start")
            )
        } else {
            "start_periods".to_string()
        };
        let sql = format!(
            "SELECT p, k, count() FROM (
    SELECT p, k, returns FROM (
        SELECT arrayJoin({cohorts}) AS p, returns FROM (
            SELECT person, countIf(is_start = 1) AS starts_n, minIf(ts, is_start = 1) AS first_start,
                groupUniqArrayIf(b, is_start = 1 AND b >= 0) AS start_periods,
                groupUniqArrayIf(b, is_return = 1 AND b >= 0) AS returns
            FROM (
    {rows}
            ) GROUP BY person
        )
    ) ARRAY JOIN range(toUInt64({n} - p)) AS k
) WHERE k = 0 OR {returned} GROUP BY p, k ORDER BY p, k"
        );
        return Ok(Compiled {
            attempts: None,
            statements: vec![Statement {
                sql,
                fill: Fill::Retention,
            }],
            empty: Answer::Retention(vec![vec![0; n]; n]),
        });
    };
    // With a breakdown: each membership (person, cohort period) with the label of the start row that placed the
    // person there — first-time: their first start row ever; recurring: their first start row in that period
    // (first by (time, uuid); the start rows sorted by (period, time, uuid), a period's first is where the period
    // changes).
    let (per_person, memberships) = if first_time {
        (
            "argMinIf(kind, (ts, ord), is_start = 1) AS first_kind, \
             argMinIf(label, (ts, ord), is_start = 1) AS first_label"
                .to_string(),
            format!(
                "if({placed}, [toInt64({})], emptyArrayInt64()) AS ps, \
                 if({placed}, [first_kind], emptyArrayUInt8()) AS ks, \
                 if({placed}, [first_label], emptyArrayString()) AS ls",
                bucket("first_start")
            ),
        )
    } else {
        (
            "arraySort(groupArrayIf((b, ts, ord, kind, label), is_start = 1 AND b >= 0)) AS ss".to_string(),
            "arrayMap(x -> tupleElement(x, 1), ss) AS bs, \
             arrayMap((cur, prev) -> cur != prev, bs, arrayResize(arrayPushFront(bs, -1), length(bs))) AS firsts, \
             arrayFilter((x, y) -> y, bs, firsts) AS ps, \
             arrayFilter((x, y) -> y, arrayMap(x -> tupleElement(x, 4), ss), firsts) AS ks, \
             arrayFilter((x, y) -> y, arrayMap(x -> tupleElement(x, 5), ss), firsts) AS ls"
                .to_string(),
        )
    };
    let sql = format!(
        "SELECT kind, label, p, k, count() FROM (
    SELECT kind, label, p, k, returns FROM (
        SELECT p, kind, label, returns FROM (
            SELECT returns, {memberships} FROM (
                SELECT person, countIf(is_start = 1) AS starts_n, minIf(ts, is_start = 1) AS first_start,
                    {per_person},
                    groupUniqArrayIf(b, is_return = 1 AND b >= 0) AS returns
                FROM (
    {rows}
                ) GROUP BY person
            )
        ) ARRAY JOIN ps AS p, ks AS kind, ls AS label
    ) ARRAY JOIN range(toUInt64({n} - p)) AS k
) WHERE k = 0 OR {returned} GROUP BY kind, label, p, k ORDER BY kind, label, p, k"
    );
    Ok(Compiled {
        attempts: None,
        statements: vec![
            Statement {
                sql: b.ranking(),
                fill: Fill::RetentionRanking { limit, periods: n },
            },
            Statement {
                sql,
                fill: Fill::SplitRetention,
            },
        ],
        empty: Answer::RetentionBreakdown(Vec::new()),
    })
}
