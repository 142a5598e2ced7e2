//! Funnels (`crates/kernels/src/funnel.rs`, `flywheel_truth::funnel`).
//!
//! - Ordered and strict: an attempt enters with a first-step event inside the range and reaches as many steps as
//!   follow in order within the conversion window (inclusive) of the entry, greedily; one event counts for one
//!   step; `strict` needs each step to be the person's very next event. An exclusion invalidates an attempt
//!   ([`exclusion`]).
//! - Unordered: see [`unordered`].
//!
//! A person counts through their best valid attempt (the furthest, the earliest entry among equals): for the step
//! counts, and for the mean and median time between consecutive steps. With `trends`, per bucket of the range the
//! persons entering (a valid attempt starting in it) and completing (such an attempt reaching the last step).
//!
//! Per person, the events are sorted by (time, uuid) into arrays `t` (times) and `f` (flags: bit `i` for step
//! definition `i`, then the exclusions); each entry becomes a row (`ARRAY JOIN`), `s0` its position (1-based) and
//! `t0` its time; then one subquery per step finds the position of the next step (`arrayFirst`, 0 when there is
//! none). ClickHouse 18.16 shapes this:
//!
//! - one subquery per step: a higher-order function cannot be nested in a lambda over the query's columns;
//! - the arrays are the lambdas' arguments (`(j, tj, fj) -> …, arrayEnumerate(t), t, f`), never captured: a
//!   captured array is copied once per element, which made the attempts quadratic in memory traffic;
//! - the scalars a lambda captures (`t0`, the previous step) are also named outside it (`+ 0 * t0`): 18.16 drops a
//!   subquery's columns that the query above uses only inside a lambda (`Unknown identifier`).
//!
//! Events of one person with the same microsecond are ordered by log order ([`expr::LOG_ORDER`]), as in the
//! embedded engine.

use flywheel_query::plan::{funnel_window_us, Plan};
use flywheel_query::{
    Aggregation, Attribution, BreakdownBy, EventRef, Exclusion, FunnelOrder, FunnelQuery,
};

use super::breakdown::{By, Split};
use super::expr::{self, Target, LOG_ORDER};
use super::group;
use super::{Answer, Compiled, Fill, InsightError, RunError, Statement, Unsupported};
use crate::client::Client;

/// An event- or person-property breakdown of a funnel: ranked by the first step's rows, each person counted under
/// the label of one row of their best attempt (`attribution`; a person property's label is the same on every row).
struct Breakdown {
    split: Split,
    limit: usize,
    attribution: Attribution,
}

fn breakdown(
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Option<Breakdown>, Unsupported> {
    let Some(b) = &f.breakdown else {
        return Ok(None);
    };
    // With a breakdown, `trends` is not part of the answer (the embedded engine renders the trend of a funnel
    // without one only): the statements for it are not made.
    let (by, limit) = By::of(b, "funnels", target)?;
    let read = &plan.reads[0];
    let first_step = expr::spec_condition(&plan.specs[0], &plan.common, target)?;
    Ok(Some(Breakdown {
        split: Split::new(by, limit, read.from_us, read.to_us, &first_step, target),
        limit,
        attribution: f.breakdown_attribution.unwrap_or(Attribution::FirstTouch),
    }))
}

pub(super) fn compile(
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let order = f.order.unwrap_or(FunnelOrder::Ordered);
    if matches!(f.aggregation, Some(Aggregation::Group(_)))
        && matches!(
            f.breakdown.as_ref().map(|b| &b.by),
            Some(BreakdownBy::Person { .. })
        )
    {
        return Err(Unsupported::new(
            "breakdown.type",
            "a group-aggregated funnel breaks down by event or group properties (or cohorts), not person properties",
        ));
    }
    let split = breakdown(f, plan, target)?;
    if order == FunnelOrder::Unordered {
        return unordered(f, plan, target, split);
    }
    let steps = f.steps.len();
    let window = funnel_window_us(f.conversion_window);
    // Steps are flag bits 0.., then the exclusions: the plan's specs, in the same order.
    let conds = plan
        .specs
        .iter()
        .map(|s| expr::spec_condition(s, &plan.common, target))
        .collect::<Result<Vec<_>, _>>()?;
    // Strict funnels look at every event of the person: any other event breaks the chain, including one that fails
    // the filters (as in the engine, which keeps every row and clears its bits).
    let rows = rows(
        plan,
        target,
        &conds,
        order == FunnelOrder::Strict,
        split.as_ref(),
        f.aggregation,
    );
    let arrays = arrays(split.as_ref());
    let mut sql = entries(&rows, "bitAnd(fi, 1) != 0", plan, split.as_ref());
    for k in 1..steps {
        let prev = format!("s{}", k - 1);
        let bit = 1u64 << k;
        let next = match order {
            FunnelOrder::Strict => format!(
                "if({prev} > 0 AND {prev} < length(t) AND bitAnd(f[{prev} + 1], {bit}) != 0 \
                 AND t[{prev} + 1] - t0 <= {window}, {prev} + 1, 0)"
            ),
            _ => format!(
                "if({prev} = 0, 0, arrayFirst((j, tj, fj) -> j > {prev} AND bitAnd(fj, {bit}) != 0 \
                 AND tj - t0 <= {window}, arrayEnumerate(t), t, f)) + 0 * t0"
            ),
        };
        let carried: String = (0..k).map(|i| format!(", s{i}")).collect();
        sql = format!("SELECT person, {arrays}, t0{carried}, {next} AS s{k} FROM (\n    {sql}\n)");
    }
    let level: String = (0..steps)
        .map(|i| format!("(s{i} > 0)"))
        .collect::<Vec<_>>()
        .join(" + ");
    let positions: String = (0..steps)
        .map(|i| format!("toUInt64(s{i})"))
        .collect::<Vec<_>>()
        .join(", ");
    // An attempt hit by an exclusion counts for nothing (level 0).
    let valid = f
        .exclusions
        .iter()
        .enumerate()
        .map(|(x, ex)| exclusion(ex, 1u64 << (steps + x), order, window, &level))
        .collect::<Vec<_>>();
    let level = if valid.is_empty() {
        level
    } else {
        format!("if({}, {level}, 0) + 0 * t0", valid.join(" AND "))
    };
    let attempts = format!(
        "SELECT person, {arrays}, {level} AS lvl, s0, t0, [{positions}] AS sel FROM (\n    {sql}\n)"
    );
    Ok(answer(
        &attempts,
        steps,
        f.trends.then_some((plan, attempts.as_str())),
        split,
    ))
}

/// The rows a funnel reads: person (or group key, by `aggregation`), time, uuid and flags (bit `i`: `conds[i]`);
/// only rows with a flag unless `every_row`.
fn rows(
    plan: &Plan,
    target: &Target,
    conds: &[String],
    every_row: bool,
    split: Option<&Breakdown>,
    aggregation: Option<Aggregation>,
) -> String {
    let read = &plan.reads[0];
    let flags = conds
        .iter()
        .enumerate()
        .map(|(i, c)| format!("bitShiftLeft(toUInt64({c}), {i})"))
        .collect::<Vec<_>>()
        .join(" + ");
    let wanted = if every_row {
        "1".to_string()
    } else {
        conds
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    // Persons, or groups: each row's group key instead of its person.
    let (counted, has) = group::counted(aggregation, &target.groups);
    let wanted = format!("({wanted}) AND {has}");
    let select = format!(
        "{counted} AS person, timestamp_us AS ts, {LOG_ORDER} AS ord, toUInt64({flags}) AS flags"
    );
    match split {
        Some(b) => b.split.rows(
            target,
            &format!("{select}{}", b.split.columns()),
            read.from_us,
            read.to_us,
            &wanted,
        ),
        None => expr::source(target, &select, read.from_us, read.to_us, &wanted),
    }
}

/// The per-person arrays carried along: times and flags, and with a breakdown each event's label kind and value.
fn arrays(split: Option<&Breakdown>) -> &'static str {
    match split {
        Some(_) => "t, f, k, l",
        None => "t, f",
    }
}

/// One row per entry: each person's `rows` sorted by (time, uuid) into the arrays `t` and `f`, and the positions
/// `i` whose flags `fi` satisfy `entry` and whose time lies in the range joined out as `s0` (1-based), with their
/// time `t0`.
fn entries(rows: &str, entry: &str, plan: &Plan, split: Option<&Breakdown>) -> String {
    let range = &plan.reads[0].range;
    let (from, to) = (range.from.timestamp_micros(), range.to.timestamp_micros());
    let arrays = arrays(split);
    let (tuple, unpack) = match split {
        Some(_) => (
            "(ts, ord, flags, kind, label)",
            ", arrayMap(x -> tupleElement(x, 4), evs) AS k, arrayMap(x -> tupleElement(x, 5), evs) AS l",
        ),
        None => ("(ts, ord, flags)", ""),
    };
    format!(
        "SELECT person, {arrays}, e AS s0, t[e] AS t0 FROM (
        SELECT person, {arrays},
            arrayFilter((i, ti, fi) -> {entry} AND ti >= {from} AND ti < {to}, arrayEnumerate(t), t, f) AS entries
        FROM (
            SELECT person, arrayMap(x -> tupleElement(x, 1), evs) AS t, arrayMap(x -> tupleElement(x, 3), evs) AS f{unpack}
            FROM (
                SELECT person, arraySort(groupArray({tuple})) AS evs FROM (
    {rows}
                ) GROUP BY person
            )
        )
    ) ARRAY JOIN entries AS e"
    )
}

/// The funnel's statement over `attempts` (one row per attempt: `person`, the person's times `t`, the attempt's
/// level `lvl` (0: invalid), entry `s0` and step positions `sel` in time order, those past `lvl` unused): each
/// person's best attempt (the furthest, the earliest entry among equals), then per step the persons reaching it
/// and the mean and median time from the step before (the kernel's `mean` and `median`: integer sums, the mean of
/// the two middle values for an even count).
///
/// With `trend` (a funnel with `trends`), a second statement: per bucket of the plan, the persons with a valid
/// attempt entering in it, and those of them with such an attempt reaching the last step (the kernel's trend).
///
/// `trend` carries the plan and the attempts for the trend (every attempt's `lvl` and `t0`; `attempts` itself may
/// have been reduced to each person's best).
fn answer(
    attempts: &str,
    steps: usize,
    trend: Option<(&Plan, &str)>,
    split: Option<Breakdown>,
) -> Compiled {
    // With a breakdown, the person's label is that of one row of the best attempt (see `Attribution`).
    let (keys, per_person, label) = match &split {
        None => ("", "", String::new()),
        Some(b) => {
            let row = match b.attribution {
                Attribution::FirstTouch => "best[1]".to_string(),
                Attribution::LastTouch => "best[level]".to_string(),
                Attribution::Step(n) => format!("if(level > {n}, best[{}], best[1])", n + 1),
            };
            (
                "kind, label, ",
                ", any(k) AS kinds, any(l) AS labels",
                format!(", kinds[{row}] AS kind, if(kind = 0, labels[{row}], '') AS label"),
            )
        }
    };
    let sql = format!(
        "SELECT {keys}i, n, total / n, if(n % 2 = 1, toFloat64(s[intDiv(n, 2) + 1]), (s[intDiv(n, 2)] + s[intDiv(n, 2) + 1]) / 2)
FROM (
    SELECT {keys}i, count() AS n, arraySort(groupArray(dt)) AS s, sum(dt) AS total FROM (
        SELECT {keys}i, if(i = 0, toInt64(0), times[best[i + 1]] - times[best[i]]) AS dt FROM (
            SELECT person, level, best, times{label} FROM (
                SELECT person, max(lvl) AS level, argMax(sel, toInt64(lvl) * 4294967296 - toInt64(s0)) AS best,
                    any(t) AS times{per_person}
                FROM (
    {attempts}
                ) GROUP BY person
            )
        ) ARRAY JOIN range(toUInt64(level)) AS i
    ) GROUP BY {keys}i
) ORDER BY {keys}i"
    );
    if let Some(b) = split {
        return Compiled {
            statements: vec![
                Statement {
                    sql: b.split.ranking(),
                    fill: Fill::FunnelRanking {
                        limit: b.limit,
                        steps,
                    },
                },
                Statement {
                    sql,
                    fill: Fill::SplitFunnel,
                },
            ],
            empty: Answer::FunnelBreakdown(Vec::new()),
            attempts: Some(attempts.to_owned()),
        };
    }
    let mut statements = vec![Statement {
        sql,
        fill: Fill::Funnel,
    }];
    let buckets = trend.map(|(plan, attempts)| {
        let read = &plan.reads[0];
        let starts = &read.bucket_starts_us;
        let first = starts.first().copied().unwrap_or(read.end_us);
        let sql = format!(
            "SELECT b, countIf(entered = 1), countIf(completed = 1) FROM (
    SELECT person, b, max(lvl > 0) AS entered, max(lvl = {steps}) AS completed FROM (
        SELECT person, lvl, {bucket} + 0 * t0 AS b FROM (
    {attempts}
        ) WHERE t0 >= {first} AND t0 < {end}
    ) GROUP BY person, b
) GROUP BY b ORDER BY b",
            bucket = expr::bucket(starts, "t0"),
            end = read.end_us,
        );
        statements.push(Statement {
            sql,
            fill: Fill::FunnelTrend,
        });
        starts.len()
    });
    Compiled {
        statements,
        attempts: Some(attempts.to_owned()),
        empty: Answer::Funnel {
            reached: vec![0; steps],
            avg_time_us: vec![None; steps],
            median_time_us: vec![None; steps],
            trend: buckets.map(|n| vec![(0, 0); n]),
        },
    }
}

/// An unordered funnel's distinct step definitions, each as (index of its first step, how many steps it is), or the
/// index of the first step that can match an event another definition matches too (the same event with other
/// filters, or `$all`): then an attempt's reach is a matching of rows to steps, which the SQL does not compute.
fn step_classes(f: &FunnelQuery) -> Result<Vec<(usize, usize)>, usize> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, step) in f.steps.iter().enumerate() {
        let same = |g: &(usize, usize)| {
            let other = &f.steps[g.0];
            other.event == step.event && other.properties == step.properties
        };
        if let Some(g) = groups.iter_mut().find(|g| same(g)) {
            g.1 += 1;
            continue;
        }
        let clash = groups.iter().any(|g| f.steps[g.0].event == step.event);
        if clash || step.event == EventRef::All {
            return Err(i);
        }
        groups.push((i, 1));
    }
    Ok(groups)
}

/// Whether `f` is an unordered funnel whose steps can match the same event: answered by the embedded engine's
/// kernel over the rows of [`read_funnel_rows`] instead of by SQL.
pub fn funnel_needs_rows(f: &FunnelQuery) -> bool {
    f.order == Some(FunnelOrder::Unordered) && step_classes(f).is_err()
}

/// A funnel's rows as the embedded kernel takes them (see [`funnel_needs_rows`]): dense members in the rows'
/// order, and per row its member, time, step bits (bit `i`: step `i`) and, with a breakdown, its label's code.
#[derive(Debug, Clone, Default)]
pub struct KernelRows {
    /// Each dense member: a person's uuid, or a group key when the funnel is aggregated by groups.
    pub members: Vec<String>,
    pub member: Vec<u32>,
    pub ts: Vec<i64>,
    pub mask: Vec<u64>,
    /// With a breakdown: each row's code, an index in `labels` (ranked as the SQL funnels rank them).
    pub codes: Option<Vec<u32>>,
    pub labels: Vec<serde_json::Value>,
}

/// Reads `f`'s rows (every node's events) sorted by member, time and log order, with the breakdown's labels.
pub async fn read_funnel_rows(
    client: &Client,
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
) -> Result<KernelRows, InsightError> {
    let split = breakdown(f, plan, target)?;
    let conds = plan
        .specs
        .iter()
        .map(|s| expr::spec_condition(s, &plan.common, target))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = rows(plan, target, &conds, false, split.as_ref(), f.aggregation);
    let extra = if split.is_some() { ", kind, label" } else { "" };
    let sql = format!(
        "SELECT toString(person), ts, flags{extra} FROM (\n    {rows}\n) ORDER BY person, ts, ord"
    );
    let mut out = KernelRows::default();
    let mut ranked = 0;
    if let Some(b) = &split {
        let ranking = b.split.ranking();
        let top = client.query_rows(&ranking).await.map_err(RunError::from)?;
        (out.labels, ranked) = super::breakdown::labels(&top, b.limit);
        out.codes = Some(Vec::new());
    }
    let shape = |row: &[String]| RunError::Shape(format!("funnel row {row:?} of `{sql}`"));
    for row in client.query_rows(&sql).await.map_err(RunError::from)? {
        let (Some(m), Some(t), Some(flags)) = (row.first(), row.get(1), row.get(2)) else {
            return Err(shape(&row).into());
        };
        if out.members.last() != Some(m) {
            out.members.push(m.clone());
        }
        out.member.push(out.members.len() as u32 - 1);
        out.ts.push(t.parse().map_err(|_| shape(&row))?);
        out.mask.push(flags.parse().map_err(|_| shape(&row))?);
        if let Some(codes) = &mut out.codes {
            let kind: u8 = row
                .get(3)
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| shape(&row))?;
            let code = super::breakdown::label_index(
                &out.labels,
                ranked,
                kind,
                row.get(4).map(String::as_str),
            )
            .ok_or_else(|| shape(&row))?;
            codes.push(code as u32);
        }
    }
    Ok(out)
}

/// Whether an ordered or strict attempt (columns `s0`.., its `level`) escapes an exclusion (flag `bit`), as the
/// kernel rules: no excluded event strictly between the attempt's rows of `from_step` and `to_step` when the
/// attempt reached `to_step`; when it reached `from_step` only, none after that row within the window (ordered),
/// or the row that stopped the attempt is not one (strict, if that row is within the window).
fn exclusion(ex: &Exclusion, bit: u64, order: FunnelOrder, window: i64, level: &str) -> String {
    let (from, to) = (ex.from_step, ex.to_step);
    let open = match order {
        FunnelOrder::Strict => {
            let stop = format!("(s0 + ({level}))");
            format!(
                "NOT ({stop} <= length(t) AND bitAnd(f[{stop}], {bit}) != 0 AND t[{stop}] - t0 <= {window})"
            )
        }
        _ => format!(
            "NOT arrayExists((j, tj, fj) -> j > s{from} AND bitAnd(fj, {bit}) != 0 AND tj - t0 <= {window}, \
             arrayEnumerate(t), t, f)"
        ),
    };
    format!(
        "multiIf(s{from} = 0, 1, s{to} > 0, \
         NOT arrayExists((j, fj) -> j > s{from} AND j < s{to} AND bitAnd(fj, {bit}) != 0, arrayEnumerate(f), f), \
         {open})"
    )
}

/// Unordered funnels: an attempt enters at any step's event in the range and reaches as many steps as the events
/// from it on within the window can be given, one event per step. When every event matches at most one distinct
/// step definition, that is, per definition, the smaller of its steps and its events in the window (the kernel's
/// matching reduces to it), and the attempt's rows are, per definition, its first events from the entry on;
/// definitions that could share an event (the same event name with different filters, `$all`) would need the
/// general matching and are refused. Exclusions are refused by the query API for unordered funnels.
///
/// Counting events by time from the entry's time (not by position) also counts the entry's ties that sort before
/// it; the attempt of the first of those ties counts them all the same, and is the earlier entry, so the best
/// attempt is unchanged.
fn unordered(
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
    split: Option<Breakdown>,
) -> Result<Compiled, Unsupported> {
    let steps = f.steps.len();
    let groups = step_classes(f).map_err(|i| {
        Unsupported::new(
            format!("steps[{i}]"),
            "in an unordered funnel, steps that can match the same event with different filters (or $all) are \
             answered from the rows (`read_funnel_rows`), not by this SQL",
        )
    })?;
    let window = funnel_window_us(f.conversion_window);
    let conds = groups
        .iter()
        .map(|g| expr::spec_condition(&plan.specs[g.0], &plan.common, target))
        .collect::<Result<Vec<_>, _>>()?;
    let per_entry = entries(
        &rows(plan, target, &conds, false, split.as_ref(), f.aggregation),
        "fi != 0",
        plan,
        split.as_ref(),
    );
    let arrays = arrays(split.as_ref());
    let level = groups
        .iter()
        .enumerate()
        .map(|(g, &(_, m))| {
            format!(
                "least(arrayCount((tj, fj) -> bitAnd(fj, {bit}) != 0 AND tj >= t0 AND tj - t0 <= {window}, t, f), {m})",
                bit = 1u64 << g
            )
        })
        .collect::<Vec<_>>()
        .join(" + ");
    let rows_of = groups
        .iter()
        .enumerate()
        .map(|(g, &(_, m))| {
            format!(
                "arraySlice(arrayFilter((j, tj, fj) -> bitAnd(fj, {bit}) != 0 AND j >= s0 AND tj - t0 <= {window}, \
                 arrayEnumerate(t), t, f), 1, {m})",
                bit = 1u64 << g
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let levels = format!(
        "SELECT person, {arrays}, {level} + 0 * (t0 + s0) AS lvl, s0, t0 FROM (
    {per_entry}
    )"
    );
    // The rows of an attempt are only needed for each person's best one (the furthest, the earliest entry among
    // equals): reduce first, then pick them.
    let carried: String = arrays
        .split(", ")
        .map(|a| format!("any({a}) AS {a}_, "))
        .collect();
    let renamed: String = arrays
        .split(", ")
        .map(|a| format!("{a}_ AS {a}, "))
        .collect();
    let attempts = format!(
        "SELECT person, {renamed}lvl_ + 0 * (t0_ + s0_) AS lvl, s0_ AS s0, t0_ AS t0, arraySort(arrayConcat({rows_of})) AS sel FROM (
    SELECT person, {carried}max(lvl) AS lvl_, argMax(s0, toInt64(lvl) * 4294967296 - toInt64(s0)) AS s0_,
        argMax(t0, toInt64(lvl) * 4294967296 - toInt64(s0)) AS t0_
    FROM (
    {levels}
    ) GROUP BY person
    )"
    );
    Ok(answer(
        &attempts,
        steps,
        f.trends.then_some((plan, levels.as_str())),
        split,
    ))
}
