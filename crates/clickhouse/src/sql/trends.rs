//! Trends: one statement per (read, series), rows `(bucket, value)`; empty buckets stay 0.
//!
//! The maths follow the trends kernel (`crates/kernels/src/trends.rs`): buckets are the plan's (the first starts
//! at the range's start, the last ends at its end); `weekly_active` / `monthly_active` count, for bucket `i`, the
//! distinct persons with an event in `[end(i) - days × 24 h, end(i))`, reaching before the range; property maths
//! ignore events without a number.

use flywheel_query::plan::{Plan, Read};
use flywheel_query::{Math, PerUserMath, TrendsQuery};

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

const DAY_US: i64 = 86_400_000_000;

pub(super) fn compile(
    t: &TrendsQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let mut statements = Vec::new();
    for (r, read) in plan.reads.iter().enumerate() {
        for (i, (s, scan)) in t.series.iter().zip(&plan.specs).enumerate() {
            let cond = expr::spec_condition(scan, &plan.common)?;
            let field = format!("series[{i}]");
            let sql = series(s, &field, read, &cond, target)?;
            statements.push(Statement {
                sql,
                fill: Fill::Series { read: r, series: i },
            });
        }
    }
    let empty = plan
        .reads
        .iter()
        .map(|read| vec![vec![0.0; read.bucket_starts_us.len()]; t.series.len()])
        .collect();
    Ok(Compiled {
        statements,
        empty: Answer::Trends(empty),
    })
}

fn series(
    s: &flywheel_query::Series,
    field: &str,
    read: &Read,
    cond: &str,
    target: &Target,
) -> Result<String, Unsupported> {
    let starts = &read.bucket_starts_us;
    let (first, end) = (starts.first().copied().unwrap_or(read.end_us), read.end_us);
    let bucket = expr::bucket(starts, "timestamp_us");
    let in_buckets = |select: &str, cond: &str| expr::source(target, select, first, end, cond);
    let math = s.math.unwrap_or(Math::Total);
    Ok(match math {
        Math::Total => format!(
            "SELECT b, count() FROM (\n    {}\n) GROUP BY b ORDER BY b",
            in_buckets(&format!("{bucket} AS b"), cond)
        ),
        Math::Dau => format!(
            "SELECT b, uniqExact(person) FROM (\n    {}\n) GROUP BY b ORDER BY b",
            in_buckets(&format!("{bucket} AS b, {PERSON} AS person"), cond)
        ),
        Math::WeeklyActive | Math::MonthlyActive => {
            let days = if math == Math::WeeklyActive { 7 } else { 30 };
            let ends: Vec<i64> = starts
                .iter()
                .skip(1)
                .copied()
                .chain(std::iter::once(end))
                .collect();
            // Each event counts in every bucket whose window holds it: end(i) - width <= ts < end(i).
            let windows = format!(
                "arrayJoin(arrayFilter(i -> ends[i] > timestamp_us AND ends[i] - {w} <= timestamp_us, \
                 arrayEnumerate(ends))) - 1 AS b",
                w = days * DAY_US
            );
            let rows = expr::source(
                target,
                &format!("{PERSON} AS person, {} AS ends, {windows}", expr::int_array(&ends)),
                read.from_us,
                read.to_us,
                cond,
            );
            format!("SELECT b, uniqExact(person) FROM (\n    {rows}\n) GROUP BY b ORDER BY b")
        }
        Math::PerUser => {
            let agg = match s.per_user.unwrap_or(PerUserMath::Avg) {
                PerUserMath::Avg => "avg",
                PerUserMath::Min => "min",
                PerUserMath::Max => "max",
                PerUserMath::Median => {
                    return Err(Unsupported::new(
                        format!("{field}.per_user"),
                        "median is not supported by the ClickHouse backend yet (ClickHouse's quantiles interpolate differently from the engine's)",
                    ))
                }
            };
            format!(
                "SELECT b, {agg}(c) FROM (\n    SELECT b, person, count() AS c FROM (\n    {}\n    ) GROUP BY b, person\n) GROUP BY b ORDER BY b",
                in_buckets(&format!("{bucket} AS b, {PERSON} AS person"), cond)
            )
        }
        Math::Sum | Math::Avg | Math::Min | Math::Max => {
            let agg = match math {
                Math::Sum => "sum",
                Math::Avg => "avg",
                Math::Min => "min",
                _ => "max",
            };
            let key = s.math_property.as_deref().ok_or_else(|| {
                Unsupported::new(format!("{field}.math_property"), "is required for property math")
            })?;
            let v = expr::property_number(key);
            format!(
                "SELECT b, {agg}(v) FROM (\n    {}\n) GROUP BY b ORDER BY b",
                in_buckets(
                    &format!("{bucket} AS b, {v} AS v"),
                    &format!("{cond} AND NOT isNaN({v})")
                )
            )
        }
        Math::Median | Math::P90 | Math::P95 | Math::P99 => {
            return Err(Unsupported::new(
                format!("{field}.math"),
                format!("{math} is not supported by the ClickHouse backend yet (ClickHouse's quantiles interpolate differently from the engine's)"),
            ))
        }
    })
}
