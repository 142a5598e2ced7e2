//! Lifecycle (`crates/kernels/src/lifecycle.rs`): per bucket, the persons active in it who are new (no earlier
//! event ever), returning (active in the bucket before), resurrecting (active earlier, not in the bucket before),
//! and the dormant ones (active in the bucket before, not in this one).
//!
//! One pass over the person's whole history (the plan reads from the beginning): per person the set of active
//! bucket numbers (`-1`: the bucket before the range, `-2`: earlier) and the first event's time; then one row per
//! (person, bucket) classified with `multiIf`.

use flywheel_query::plan::Plan;

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

/// `previous_us` is the start of the bucket before the range's first one: the last bucket of the planner's previous
/// period, as the engine takes it (`crates/server/src/insights.rs`, `lifecycle`).
pub(super) fn compile(
    plan: &Plan,
    previous_us: i64,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let read = &plan.reads[0];
    let starts = &read.bucket_starts_us;
    let n = starts.len();
    let first_start = read
        .range
        .buckets
        .first()
        .map_or(read.range.from, |b| b.start);
    let previous = previous_us.min(first_start.timestamp_micros());
    let cond = expr::spec_condition(&plan.specs[0], &plan.common, target)?;
    let b = format!(
        "multiIf(timestamp_us < {previous}, -2, timestamp_us < {first}, -1, {bucket})",
        first = starts.first().copied().unwrap_or(read.end_us),
        bucket = expr::bucket(starts, "timestamp_us"),
    );
    let rows = expr::source(
        target,
        &format!("{PERSON} AS person, timestamp_us AS ts, toInt64({b}) AS b"),
        read.from_us,
        read.end_us,
        &cond,
    );
    let sql = format!(
        "SELECT status, i, count() FROM (
    SELECT i, multiIf(
        has(active, i) AND first_ts >= starts[i + 1], 0,
        has(active, i) AND has(active, i - 1), 1,
        has(active, i), 2,
        has(active, i - 1), 3,
        4) AS status
    FROM (
        SELECT active, first_ts, {starts} AS starts, toInt64(arrayJoin(range({n}))) AS i FROM (
            SELECT person, groupUniqArray(b) AS active, min(ts) AS first_ts FROM (
    {rows}
            ) GROUP BY person
        )
    )
) WHERE status < 4 GROUP BY status, i ORDER BY status, i",
        starts = expr::int_array(starts),
    );
    Ok(Compiled {
        attempts: None,
        statements: vec![Statement {
            sql,
            fill: Fill::Lifecycle,
        }],
        empty: Answer::Lifecycle(super::Lifecycle {
            new: vec![0; n],
            returning: vec![0; n],
            resurrecting: vec![0; n],
            dormant: vec![0; n],
        }),
    })
}
