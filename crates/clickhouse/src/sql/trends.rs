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
                &format!(
                    "{PERSON} AS person, {} AS ends, {windows}",
                    expr::int_array(&ends)
                ),
                read.from_us,
                read.to_us,
                cond,
            );
            format!("SELECT b, uniqExact(person) FROM (\n    {rows}\n) GROUP BY b ORDER BY b")
        }
        Math::PerUser => {
            let agg = match s.per_user.unwrap_or(PerUserMath::Avg) {
                PerUserMath::Avg => Agg::Plain("avg"),
                PerUserMath::Min => Agg::Plain("min"),
                PerUserMath::Max => Agg::Plain("max"),
                PerUserMath::Median => Agg::Percentile(50),
            };
            let per_person = format!(
                "SELECT b, person, count() AS v FROM (\n    {}\n    ) GROUP BY b, person",
                in_buckets(&format!("{bucket} AS b, {PERSON} AS person"), cond)
            );
            by_bucket(agg, &per_person)
        }
        Math::Sum
        | Math::Avg
        | Math::Min
        | Math::Max
        | Math::Median
        | Math::P90
        | Math::P95
        | Math::P99 => {
            let agg = match math {
                Math::Sum => Agg::Plain("sum"),
                Math::Avg => Agg::Plain("avg"),
                Math::Min => Agg::Plain("min"),
                Math::Max => Agg::Plain("max"),
                Math::Median => Agg::Percentile(50),
                Math::P90 => Agg::Percentile(90),
                Math::P95 => Agg::Percentile(95),
                _ => Agg::Percentile(99),
            };
            let key = s.math_property.as_deref().ok_or_else(|| {
                Unsupported::new(
                    format!("{field}.math_property"),
                    "is required for property math",
                )
            })?;
            let v = expr::property_number(key);
            // Events without a number are in no aggregate (a bucket with none stays 0).
            by_bucket(
                agg,
                &in_buckets(
                    &format!("{bucket} AS b, {v} AS v"),
                    &format!("{cond} AND NOT isNaN({v})"),
                ),
            )
        }
    })
}

/// How the values `v` of a bucket make its number.
#[derive(Debug, Clone, Copy)]
enum Agg {
    /// A ClickHouse aggregate function (`sum`, `avg`, `min`, `max`).
    Plain(&'static str),
    /// The kernel's percentile (`flywheel_kernels::trends::quantile`): rank `h = p / 100 × (n - 1)` with the
    /// fraction exact in hundredths, linear interpolation between the two closest values. ClickHouse's own
    /// quantile functions use other definitions, so the sorted values are interpolated here, in the same order of
    /// Float64 operations.
    Percentile(u32),
}

/// `SELECT b, number` per bucket over `rows` (columns `b` and `v`).
fn by_bucket(agg: Agg, rows: &str) -> String {
    match agg {
        Agg::Plain(f) => format!("SELECT b, {f}(v) FROM (\n    {rows}\n) GROUP BY b ORDER BY b"),
        Agg::Percentile(p) => format!(
            "SELECT b, if(frac > 0 AND length(s) > lo + 1 AND s[lo + 2] != s[lo + 1], \
             s[lo + 1] + (s[lo + 2] - s[lo + 1]) * frac, s[lo + 1]) FROM (
    SELECT b, s, intDiv({p} * (length(s) - 1), 100) AS lo, ({p} * (length(s) - 1)) % 100 / 100 AS frac FROM (
        SELECT b, arraySort(groupArray(toFloat64(v))) AS s FROM (
    {rows}
        ) GROUP BY b
    )
) ORDER BY b"
        ),
    }
}
