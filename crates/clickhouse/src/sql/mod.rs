//! The insight planner's ClickHouse SQL.
//!
//! [`compile`] takes a normalized, resolved insight and its [`Plan`] (the same plan the embedded engine runs:
//! specs, filters, rows to read, bucket boundaries in UTC microseconds) and returns the statements that answer
//! it; [`Compiled::run`] runs them and decodes an [`Answer`], the numbers the embedded kernels compute, ready for
//! the same rendering. Compiling is pure, so the statements can be inspected, logged or checked on another
//! ClickHouse (the tests run every one on current ClickHouse through chdb).
//!
//! Supported: trends (`total`, `dau`, `weekly_active`, `monthly_active`, `per_user`, property maths including
//! percentiles; `compare`; formulas are evaluated on the returned series by the caller), funnels (`ordered`,
//! `strict`, `unordered`; exclusions; conversion windows; step counts, conversion times, trends), retention
//! (first-time and recurring, `on` and `on_or_after`), stickiness, lifecycle; event- and person-property breakdowns
//! of trends, funnels and retention; event- and person-property filters (`exact`, `is_not`, `is_set`, `is_not_set`,
//! `gt`, `gte`, `lt`, `lte`, `contains`, `not_contains`; a person's current properties, from the `persons` table). Everything else returns [`Unsupported`] naming the field; see
//! `docs/clickhouse.md`.

mod breakdown;
mod cohort;
mod expr;
mod funnel;
mod group;
mod lifecycle;
mod regex;
mod retention;
mod stickiness;
mod trends;

use chrono::{DateTime, TimeZone, Utc};
use flywheel_query::plan::Plan;
use flywheel_query::{Breakdown, FieldError, InsightQuery};

use crate::client::{ClickHouseError, Client};
pub use breakdown::BREAKDOWN_OTHER;
pub use cohort::{members as cohort_members, Membership};
pub use expr::{float, persons_where, rows_of_project, string as quote, Target};
pub use funnel::{funnel_needs_rows, read_funnel_rows, KernelRows};
pub use group::{filter_key as group_filter_key, GroupLabels, GroupPass, Groups};

/// A part of a definition the ClickHouse backend cannot answer exactly (yet). Named like the API's field
/// errors, so a caller can report it the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Unsupported {
    pub field: String,
    pub message: String,
}

impl Unsupported {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Unsupported {
        Unsupported {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why running an insight failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    /// A row of an answer that the statement cannot produce (a bug, reported rather than ignored).
    #[error("unexpected answer to an insight statement: {0}")]
    Shape(String),
}

/// Why an insight could not be answered by [`run_insight`].
#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    /// The date range does not resolve (as the API reports it).
    #[error("{}: {}", .0.field, .0.message)]
    Field(FieldError),
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Answers a normalized insight at `now` in the project's time zone `tz`: resolves its range, plans it as the
/// embedded engine does, compiles and runs the statements.
pub async fn run_insight<Tz: TimeZone>(
    client: &Client,
    target: &Target,
    q: &InsightQuery,
    now: DateTime<Utc>,
    tz: &Tz,
) -> Result<Answer, InsightError> {
    let range = q.resolve(now, tz).map_err(InsightError::Field)?;
    let plan = flywheel_query::plan::plan(q, &range, tz);
    let compiled = compile(q, &plan, tz, target)?;
    Ok(compiled.run(client).await?)
}

/// Lifecycle counts per bucket (dormant as a positive count, as the kernels give it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub new: Vec<u64>,
    pub returning: Vec<u64>,
    pub resurrecting: Vec<u64>,
    pub dormant: Vec<u64>,
}

/// The numbers of an insight, as the embedded kernels give them.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Per planned read (the range, then the previous period with `compare`), per series, one value per bucket.
    Trends(Vec<Vec<Vec<f64>>>),
    /// A trends insight with a breakdown: per planned read, its labels and numbers.
    TrendsBreakdown(Vec<SplitRead>),
    /// A retention table with a breakdown: per label (as in [`SplitRead`]) its table.
    RetentionBreakdown(Vec<RetentionSplit>),
    /// A funnel with a breakdown: its labels (as in [`SplitRead`]) and per label the steps.
    FunnelBreakdown(Vec<FunnelSplit>),
    /// Per step: the persons reaching it (`reached[0]`: entered the funnel), and the mean and median time in
    /// microseconds from the step before, over them (`None` for the first step and for a step nobody reached).
    /// With `trends`, per bucket `(entered, completed)`.
    Funnel {
        reached: Vec<u64>,
        avg_time_us: Vec<Option<f64>>,
        median_time_us: Vec<Option<f64>>,
        trend: Option<Vec<(u64, u64)>>,
    },
    /// `table[p][k]`: of period `p`'s cohort, the persons returning `k` periods later (`k = 0`: the cohort).
    Retention(Vec<Vec<u64>>),
    /// `counts[n - 1]`: persons active in exactly `n` buckets.
    Stickiness(Vec<u64>),
    /// Per bucket.
    Lifecycle(Lifecycle),
}

/// One breakdown label of a retention table: the memberships placed by a start row with that label.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionSplit {
    pub label: serde_json::Value,
    /// As [`Answer::Retention`].
    pub table: Vec<Vec<u64>>,
}

/// One breakdown label of a funnel: per step, the persons counted under it reaching the step, and the mean and
/// median time from the step before (as [`Answer::Funnel`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelSplit {
    pub label: serde_json::Value,
    pub reached: Vec<u64>,
    pub avg_time_us: Vec<Option<f64>>,
    pub median_time_us: Vec<Option<f64>>,
}

/// One read of a trends insight with a breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRead {
    /// The breakdown labels in the engine's order: the ranked values (strings), then
    /// [`BREAKDOWN_OTHER`] when more values had rows than the limit, then `null` (no value).
    pub labels: Vec<serde_json::Value>,
    /// How many of the labels are ranked values (the others label and `null` follow).
    pub ranked: usize,
    /// Per series, per label, one value per bucket.
    pub series: Vec<Vec<Vec<f64>>>,
}

/// How one statement's rows fill the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Rows `(bucket, value)` into trends read `read`, series `series`.
    Series { read: usize, series: usize },
    /// Rows `(value, rows)` ranking a breakdown's values for read `read` (at most `limit + 1`).
    Ranking {
        read: usize,
        limit: usize,
        series: usize,
        buckets: usize,
    },
    /// Rows `(kind, value, bucket, number)` into a breakdown's read `read`, series `series`.
    SplitSeries { read: usize, series: usize },
    /// Rows `(step, persons, mean time, median time)`.
    Funnel,
    /// Rows `(bucket, entered, completed)`.
    FunnelTrend,
    /// Rows `(value, rows)` ranking a funnel breakdown's values (at most `limit + 1`).
    FunnelRanking { limit: usize, steps: usize },
    /// Rows `(kind, value, step, persons, mean time, median time)`.
    SplitFunnel,
    /// Rows `(value, rows)` ranking a retention breakdown's values (at most `limit + 1`).
    RetentionRanking { limit: usize, periods: usize },
    /// Rows `(kind, value, p, k, persons)`.
    SplitRetention,
    /// Rows `(p, k, persons)`.
    Retention,
    /// Rows `(buckets active, persons)`.
    Stickiness,
    /// Rows `(status, bucket, persons)`, status 0 new, 1 returning, 2 resurrecting, 3 dormant.
    Lifecycle,
}

/// One statement and where its rows go.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    fill: Fill,
}

/// The statements of an insight and the shape of its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub statements: Vec<Statement>,
    empty: Answer,
    /// A funnel's attempts (rows `person, lvl, …`: each attempt's person or group key and the steps it reached),
    /// for [`Compiled::funnel_members`].
    attempts: Option<String>,
}

/// The statements answering `q` (normalized) as planned by `flywheel_query::plan::plan` in the project's time zone
/// `tz`, over the events of `target`.
pub fn compile<Tz: TimeZone>(
    q: &InsightQuery,
    plan: &Plan,
    tz: &Tz,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    match q {
        InsightQuery::Trends(t) => {
            no_test_accounts(t.common.filter_test_accounts)?;
            trends::compile(t, plan, target)
        }
        InsightQuery::Funnel(f) => {
            no_test_accounts(f.common.filter_test_accounts)?;
            funnel::compile(f, plan, target)
        }
        InsightQuery::Retention(r) => {
            no_test_accounts(r.filter_test_accounts)?;
            retention::compile(r, plan, target)
        }
        InsightQuery::Stickiness(s) => {
            no_breakdown(&s.breakdown)?;
            no_test_accounts(s.common.filter_test_accounts)?;
            stickiness::compile(plan, target)
        }
        InsightQuery::Lifecycle(l) => {
            no_breakdown(&l.breakdown)?;
            no_test_accounts(l.common.filter_test_accounts)?;
            let range = &plan.reads[0].range;
            let previous = range
                .previous_period(tz)
                .buckets
                .last()
                .map_or(range.from, |b| b.start);
            lifecycle::compile(plan, previous.timestamp_micros(), target)
        }
    }
}

fn no_breakdown(b: &Option<Breakdown>) -> Result<(), Unsupported> {
    match b {
        None => Ok(()),
        Some(_) => Err(Unsupported::new(
            "breakdown",
            "breakdowns are not supported by the ClickHouse backend yet",
        )),
    }
}

fn no_test_accounts(on: bool) -> Result<(), Unsupported> {
    if on {
        Err(Unsupported::new(
            "filter_test_accounts",
            "apply the project's test-account filters to the definition's properties before compiling",
        ))
    } else {
        Ok(())
    }
}

fn field<T: std::str::FromStr>(row: &[String], i: usize, sql: &str) -> Result<T, RunError> {
    row.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RunError::Shape(format!("row {row:?} (column {i}) of `{sql}`")))
}

fn slot<'a, T>(v: &'a mut [T], i: i64, sql: &str) -> Result<&'a mut T, RunError> {
    usize::try_from(i)
        .ok()
        .and_then(|i| v.get_mut(i))
        .ok_or_else(|| RunError::Shape(format!("index {i} out of range in `{sql}`")))
}

impl Compiled {
    /// For a funnel: the persons (or, aggregated by groups, the group keys) whose best attempt reached step `step`
    /// (1-based), or for a negative `step` those who stopped right before step `-step`, as rows `(member)` (the
    /// uuid, or the key), as the kernel lists them (`?funnel_step=`). `None` for another kind.
    pub fn funnel_members(&self, step: i32) -> Option<String> {
        let attempts = self.attempts.as_ref()?;
        let n = step.unsigned_abs();
        let reached = if step > 0 {
            format!("level >= {n}")
        } else {
            format!("level = {}", n.saturating_sub(1))
        };
        Some(format!(
            "SELECT toString(person) AS member FROM (\n    SELECT person, max(lvl) AS level FROM (\n    {attempts}\n    ) GROUP BY person\n) WHERE level > 0 AND {reached}"
        ))
    }

    /// The SQL of every statement, in order.
    pub fn sql(&self) -> impl Iterator<Item = &str> {
        self.statements.iter().map(|s| s.sql.as_str())
    }

    /// Runs the statements one after the other and assembles the answer.
    pub async fn run(&self, client: &Client) -> Result<Answer, RunError> {
        Ok(self.run_traced(client).await?.0)
    }

    /// [`Compiled::run`], also returning each statement's rows as ClickHouse sent them (for logs and for
    /// checking the same statements on another ClickHouse).
    pub async fn run_traced(
        &self,
        client: &Client,
    ) -> Result<(Answer, Vec<Vec<Vec<String>>>), RunError> {
        let mut answer = self.empty.clone();
        let mut trace = Vec::with_capacity(self.statements.len());
        // How many of a funnel's or retention table's breakdown labels are ranked values.
        let mut split_ranked = 0;
        for st in &self.statements {
            let rows = client.query_rows(&st.sql).await?;
            trace.push(rows.clone());
            let sql = st.sql.as_str();
            if let (
                Answer::TrendsBreakdown(reads),
                Fill::Ranking {
                    read,
                    limit,
                    series,
                    buckets,
                },
            ) = (&mut answer, st.fill)
            {
                if read != reads.len() {
                    return Err(RunError::Shape(format!(
                        "ranking of read {read} out of order"
                    )));
                }
                let (labels, ranked) = breakdown::labels(&rows, limit);
                let n = labels.len();
                reads.push(SplitRead {
                    labels,
                    ranked,
                    series: vec![vec![vec![0.0; buckets]; n]; series],
                });
                continue;
            }
            if let (Answer::RetentionBreakdown(splits), Fill::RetentionRanking { limit, periods }) =
                (&mut answer, st.fill)
            {
                let (labels, ranked) = breakdown::labels(&rows, limit);
                split_ranked = ranked;
                *splits = labels
                    .into_iter()
                    .map(|label| RetentionSplit {
                        label,
                        table: vec![vec![0; periods]; periods],
                    })
                    .collect();
                continue;
            }
            if let (Answer::FunnelBreakdown(splits), Fill::FunnelRanking { limit, steps }) =
                (&mut answer, st.fill)
            {
                let (labels, ranked) = breakdown::labels(&rows, limit);
                split_ranked = ranked;
                *splits = labels
                    .into_iter()
                    .map(|label| FunnelSplit {
                        label,
                        reached: vec![0; steps],
                        avg_time_us: vec![None; steps],
                        median_time_us: vec![None; steps],
                    })
                    .collect();
                continue;
            }
            for row in rows {
                match (&mut answer, st.fill) {
                    (Answer::RetentionBreakdown(splits), Fill::SplitRetention) => {
                        let labels: Vec<serde_json::Value> =
                            splits.iter().map(|s| s.label.clone()).collect();
                        let at = split_of(&labels, split_ranked, &row, sql)?;
                        let (p, k): (i64, i64) = (field(&row, 2, sql)?, field(&row, 3, sql)?);
                        *slot(slot(&mut splits[at].table, p, sql)?, k, sql)? = field(&row, 4, sql)?;
                    }
                    (Answer::FunnelBreakdown(splits), Fill::SplitFunnel) => {
                        let labels: Vec<serde_json::Value> =
                            splits.iter().map(|s| s.label.clone()).collect();
                        let at = split_of(&labels, split_ranked, &row, sql)?;
                        let split = &mut splits[at];
                        let i: i64 = field(&row, 2, sql)?;
                        *slot(&mut split.reached, i, sql)? = field(&row, 3, sql)?;
                        if i > 0 {
                            *slot(&mut split.avg_time_us, i, sql)? = Some(field(&row, 4, sql)?);
                            *slot(&mut split.median_time_us, i, sql)? = Some(field(&row, 5, sql)?);
                        }
                    }
                    (Answer::TrendsBreakdown(reads), Fill::SplitSeries { read, series }) => {
                        let r = reads
                            .get_mut(read)
                            .ok_or_else(|| RunError::Shape("read without a ranking".into()))?;
                        let kind: u8 = field(&row, 0, sql)?;
                        let label = breakdown::label_index(
                            &r.labels,
                            r.ranked,
                            kind,
                            row.get(1).map(String::as_str),
                        )
                        .ok_or_else(|| {
                            RunError::Shape(format!("label {row:?} not ranked in `{sql}`"))
                        })?;
                        let data = r
                            .series
                            .get_mut(series)
                            .and_then(|s| s.get_mut(label))
                            .ok_or_else(|| RunError::Shape("series out of range".into()))?;
                        *slot(data, field(&row, 2, sql)?, sql)? = field(&row, 3, sql)?;
                    }
                    (Answer::Trends(reads), Fill::Series { read, series }) => {
                        let data = reads
                            .get_mut(read)
                            .and_then(|r| r.get_mut(series))
                            .ok_or_else(|| RunError::Shape("series out of range".into()))?;
                        *slot(data, field(&row, 0, sql)?, sql)? = field(&row, 1, sql)?;
                    }
                    (
                        Answer::Funnel {
                            trend: Some(trend), ..
                        },
                        Fill::FunnelTrend,
                    ) => {
                        let b: i64 = field(&row, 0, sql)?;
                        *slot(trend, b, sql)? = (field(&row, 1, sql)?, field(&row, 2, sql)?);
                    }
                    (
                        Answer::Funnel {
                            reached,
                            avg_time_us,
                            median_time_us,
                            ..
                        },
                        Fill::Funnel,
                    ) => {
                        let i: i64 = field(&row, 0, sql)?;
                        *slot(reached, i, sql)? = field(&row, 1, sql)?;
                        if i > 0 {
                            *slot(avg_time_us, i, sql)? = Some(field(&row, 2, sql)?);
                            *slot(median_time_us, i, sql)? = Some(field(&row, 3, sql)?);
                        }
                    }
                    (Answer::Retention(table), Fill::Retention) => {
                        let p: i64 = field(&row, 0, sql)?;
                        let k: i64 = field(&row, 1, sql)?;
                        *slot(slot(table, p, sql)?, k, sql)? = field(&row, 2, sql)?;
                    }
                    (Answer::Stickiness(counts), Fill::Stickiness) => {
                        let n: i64 = field(&row, 0, sql)?;
                        *slot(counts, n - 1, sql)? = field(&row, 1, sql)?;
                    }
                    (Answer::Lifecycle(l), Fill::Lifecycle) => {
                        let status: u8 = field(&row, 0, sql)?;
                        let list = match status {
                            0 => &mut l.new,
                            1 => &mut l.returning,
                            2 => &mut l.resurrecting,
                            3 => &mut l.dormant,
                            _ => {
                                return Err(RunError::Shape(format!("status {status} in `{sql}`")))
                            }
                        };
                        *slot(list, field(&row, 1, sql)?, sql)? = field(&row, 2, sql)?;
                    }
                    _ => return Err(RunError::Shape("statement of another kind".into())),
                }
            }
        }
        Ok((answer, trace))
    }
}

/// The split a row of a split answer belongs to: its label kind (column 0) and value (column 1), among `labels`
/// of which the first `ranked` are values.
fn split_of(
    labels: &[serde_json::Value],
    ranked: usize,
    row: &[String],
    sql: &str,
) -> Result<usize, RunError> {
    let kind: u8 = field(row, 0, sql)?;
    breakdown::label_index(labels, ranked, kind, row.get(1).map(String::as_str))
        .ok_or_else(|| RunError::Shape(format!("label {row:?} not ranked in `{sql}`")))
}
