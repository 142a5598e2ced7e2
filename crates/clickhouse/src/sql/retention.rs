//! Retention (`crates/kernels/src/retention.rs`): periods are the plan's buckets; a first-time person belongs to
//! the cohort of the period holding their first start event ever (none when it is before the first period), a
//! recurring one to every period with a start event; cell `(p, k)` counts the members with a return event in
//! period `p + k` (or, `on_or_after`, in any period from `p + k` on); `k = 0` is the cohort's size.

use flywheel_query::plan::Plan;
use flywheel_query::{Aggregation, RetentionCohort, RetentionMode, RetentionQuery};

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

pub(super) fn compile(
    r: &RetentionQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    if matches!(r.aggregation, Some(Aggregation::Group(_))) {
        return Err(Unsupported::new(
            "aggregation",
            "group aggregation is not supported by the ClickHouse backend yet",
        ));
    }
    let read = &plan.reads[0];
    let starts = &read.bucket_starts_us;
    let n = starts.len();
    let first = starts.first().copied().unwrap_or(read.end_us);
    let start = expr::spec_condition(&plan.specs[0], &plan.common)?;
    let back = expr::spec_condition(&plan.specs[1], &plan.common)?;
    let bucket = |ts: &str| {
        format!(
            "if({ts} >= {first} AND {ts} < {end}, {b}, -1)",
            end = read.end_us,
            b = expr::bucket(starts, ts)
        )
    };
    let rows = expr::source(
        target,
        &format!(
            "{PERSON} AS person, timestamp_us AS ts, toUInt8({start}) AS is_start, toUInt8({back}) AS is_return, \
             toInt64({}) AS b",
            bucket("timestamp_us")
        ),
        read.from_us,
        read.to_us,
        &format!("({start}) OR ({back})"),
    );
    let cohorts = match r.cohort.unwrap_or(RetentionCohort::FirstTime) {
        RetentionCohort::FirstTime => format!(
            "if(starts_n > 0 AND first_start >= {first}, [toInt64({})], emptyArrayInt64())",
            bucket("first_start")
        ),
        RetentionCohort::Recurring => "start_periods".to_string(),
    };
    let returned = match r.mode.unwrap_or(RetentionMode::On) {
        RetentionMode::On => "has(returns, p + toInt64(k))",
        RetentionMode::OnOrAfter => "arrayExists(x -> x >= p + toInt64(k), returns)",
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
    Ok(Compiled {
        statements: vec![Statement {
            sql,
            fill: Fill::Retention,
        }],
        empty: Answer::Retention(vec![vec![0; n]; n]),
    })
}
