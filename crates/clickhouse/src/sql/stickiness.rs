//! Stickiness: persons by the number of buckets in which they did the event (`crates/kernels/src/stickiness.rs`).

use flywheel_query::plan::Plan;

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

pub(super) fn compile(plan: &Plan, target: &Target) -> Result<Compiled, Unsupported> {
    let read = &plan.reads[0];
    let starts = &read.bucket_starts_us;
    let first = starts.first().copied().unwrap_or(read.end_us);
    let cond = expr::spec_condition(&plan.specs[0], &plan.common, target)?;
    let rows = expr::source(
        target,
        &format!(
            "{PERSON} AS person, {} AS b",
            expr::bucket(starts, "timestamp_us")
        ),
        first,
        read.end_us,
        &cond,
    );
    let sql = format!(
        "SELECT n, count() FROM (\n    SELECT person, uniqExact(b) AS n FROM (\n    {rows}\n    ) GROUP BY person\n) GROUP BY n ORDER BY n"
    );
    Ok(Compiled {
        attempts: None,
        statements: vec![Statement {
            sql,
            fill: Fill::Stickiness,
        }],
        empty: Answer::Stickiness(vec![0; starts.len()]),
    })
}
