//! Trends: one statement per (read, series), rows `(bucket, value)`; empty buckets stay 0.
//!
//! The maths follow the trends kernel (`crates/kernels/src/trends.rs`): buckets are the plan's (the first starts
//! at the range's start, the last ends at its end); `weekly_active` / `monthly_active` count, for bucket `i`, the
//! distinct persons with an event in `[end(i) - days × 24 h, end(i))`, reaching before the range; property maths
//! ignore events without a number.
//!
//! An event- or person-property breakdown ([`super::breakdown`]) ranks the values of the rows matching any series, per read
//! (rolling reach included); each series statement returns rows `(kind, value, bucket, number)`. A person counts
//! once per (label, bucket) in the per-person maths, as with the kernel's row codes.

use flywheel_query::plan::{Plan, Read};
use flywheel_query::{Math, PerUserMath, TrendsQuery};

use super::breakdown::{By, Split};
use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

const DAY_US: i64 = 86_400_000_000;

pub(super) fn compile(
    t: &TrendsQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let breakdown = t
        .breakdown
        .as_ref()
        .map(|b| By::of(b, "trends", target))
        .transpose()?;
    let conds = t
        .series
        .iter()
        .zip(&plan.specs)
        .map(|(_, scan)| expr::spec_condition(scan, &plan.common, target))
        .collect::<Result<Vec<_>, _>>()?;
    let any_series = conds
        .iter()
        .map(|c| format!("({c})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut statements = Vec::new();
    for (r, read) in plan.reads.iter().enumerate() {
        let split = breakdown.map(|(by, limit)| {
            let split = Split::new(by, limit, read.from_us, read.to_us, &any_series, target);
            statements.push(Statement {
                sql: split.ranking(),
                fill: Fill::Ranking {
                    read: r,
                    limit,
                    series: t.series.len(),
                    buckets: read.bucket_starts_us.len(),
                },
            });
            split
        });
        for (i, (s, cond)) in t.series.iter().zip(&conds).enumerate() {
            let field = format!("series[{i}]");
            let sql = series(s, &field, read, cond, split.as_ref(), target)?;
            let fill = match split {
                None => Fill::Series { read: r, series: i },
                Some(_) => Fill::SplitSeries { read: r, series: i },
            };
            statements.push(Statement { sql, fill });
        }
    }
    let empty = match breakdown {
        None => Answer::Trends(
            plan.reads
                .iter()
                .map(|read| vec![vec![0.0; read.bucket_starts_us.len()]; t.series.len()])
                .collect(),
        ),
        // Filled when each read's ranking arrives.
        Some(_) => Answer::TrendsBreakdown(Vec::new()),
    };
    Ok(Compiled {
        statements,
        empty,
        attempts: None,
    })
}

fn series(
    s: &flywheel_query::Series,
    field: &str,
    read: &Read,
    cond: &str,
    split: Option<&Split>,
    target: &Target,
) -> Result<String, Unsupported> {
    let starts = &read.bucket_starts_us;
    let (first, end) = (starts.first().copied().unwrap_or(read.end_us), read.end_us);
    let bucket = expr::bucket(starts, "timestamp_us");
    // With a breakdown, every row also has its label (`kind`, `label`) and every grouping starts with it.
    let (extra, keys) = match split {
        Some(sp) => (sp.columns(), "kind, label, "),
        None => (String::new(), ""),
    };
    let rows = |select: &str, from: i64, to: i64, cond: &str| match split {
        Some(sp) => sp.rows(target, &format!("{select}{extra}"), from, to, cond),
        None => expr::source(target, select, from, to, cond),
    };
    let in_buckets = |select: &str, cond: &str| rows(select, first, end, cond);
    let math = s.math.unwrap_or(Math::Total);
    Ok(match math {
        Math::Total => format!(
            "SELECT {keys}b, count() FROM (\n    {}\n) GROUP BY {keys}b ORDER BY {keys}b",
            in_buckets(&format!("{bucket} AS b"), cond)
        ),
        Math::Dau => persons_by_bucket(
            &in_buckets(&format!("{bucket} AS b, {PERSON} AS person"), cond),
            keys,
        ),
        Math::WeeklyActive | Math::MonthlyActive => {
            let days = if math == Math::WeeklyActive { 7 } else { 30 };
            let ends: Vec<i64> = starts
                .iter()
                .skip(1)
                .copied()
                .chain(std::iter::once(end))
                .collect();
            // Each event counts in every bucket whose window holds it: end(i) - width <= ts < end(i), i.e. the
            // buckets from the first ending after ts to the last ending at or before ts + width (the ends
            // ascend). No lambda over the ends: a captured array is copied once per element.
            let windows = format!(
                "arrayJoin(arraySlice(range(toUInt64({hi})), {lo} + 1)) AS b",
                lo = expr::count_le(&ends, "timestamp_us"),
                hi = expr::count_le(&ends, &format!("(timestamp_us + {})", days * DAY_US)),
            );
            let rows = rows(
                &format!("{PERSON} AS person, {windows}"),
                read.from_us,
                read.to_us,
                cond,
            );
            persons_by_bucket(&rows, keys)
        }
        Math::PerUser => {
            let agg = match s.per_user.unwrap_or(PerUserMath::Avg) {
                PerUserMath::Avg => Agg::Plain("avg"),
                PerUserMath::Min => Agg::Plain("min"),
                PerUserMath::Max => Agg::Plain("max"),
                PerUserMath::Median => Agg::Percentile(50),
            };
            let per_person = format!(
                "SELECT {keys}b, person, count() AS v FROM (\n    {}\n    ) GROUP BY {keys}b, person",
                in_buckets(&format!("{bucket} AS b, {PERSON} AS person"), cond)
            );
            by_bucket(agg, &per_person, keys)
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
                keys,
            )
        }
    })
}

/// Distinct persons per (label and) bucket of `rows` (columns `keys`, `b`, `person`). Grouped, then counted:
/// ClickHouse 18.16's `uniqExact` of a `UUID` is two orders of magnitude slower (3 s for 200,000 rows).
fn persons_by_bucket(rows: &str, keys: &str) -> String {
    format!(
        "SELECT {keys}b, count() FROM (
    SELECT {keys}b, person FROM (
    {rows}
    ) GROUP BY {keys}b, person
) GROUP BY {keys}b ORDER BY {keys}b"
    )
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

/// `SELECT {keys}b, number` per (label and) bucket over `rows` (columns `keys`, `b` and `v`).
fn by_bucket(agg: Agg, rows: &str, keys: &str) -> String {
    match agg {
        Agg::Plain(f) => format!(
            "SELECT {keys}b, {f}(v) FROM (\n    {rows}\n) GROUP BY {keys}b ORDER BY {keys}b"
        ),
        Agg::Percentile(p) => format!(
            "SELECT {keys}b, if(frac > 0 AND length(s) > lo + 1 AND s[lo + 2] != s[lo + 1], \
             s[lo + 1] + (s[lo + 2] - s[lo + 1]) * frac, s[lo + 1]) FROM (
    SELECT {keys}b, s, intDiv({p} * (length(s) - 1), 100) AS lo, ({p} * (length(s) - 1)) % 100 / 100 AS frac FROM (
        SELECT {keys}b, arraySort(groupArray(toFloat64(v))) AS s FROM (
    {rows}
        ) GROUP BY {keys}b
    )
) ORDER BY {keys}b"
        ),
    }
}
