//! Funnels (`crates/kernels/src/funnel.rs`, `flywheel_truth::funnel`). Ordered and strict: a person enters
//! with a first-step event inside the range and reaches, from the best such entry, as many steps as follow in
//! order within the conversion window (inclusive) of the entry; one event counts for one step. `strict` needs
//! each step to be the person's very next event. Unordered: see [`unordered`].
//!
//! Per person, the events are sorted by (time, uuid) into arrays; each entry becomes a row (`ARRAY JOIN`); then
//! one subquery per step finds the position of the next step (`arrayFirst` over the positions, 0 when there is
//! none) from the previous one. Step by step in subqueries because ClickHouse 18.16 cannot nest a higher-order
//! function in a lambda over the query's columns, and drops a subquery's columns that the query above uses only
//! inside a lambda (each step's expression therefore also names them outside its lambda). Persons are counted at
//! their best entry.
//!
//! Events of one person with the same microsecond are ordered by uuid here, by log order in the embedded engine.

use flywheel_query::plan::{funnel_window_us, Plan};
use flywheel_query::{Aggregation, EventRef, FunnelOrder, FunnelQuery};

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

pub(super) fn compile(
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let order = f.order.unwrap_or(FunnelOrder::Ordered);
    if !f.exclusions.is_empty() {
        return Err(Unsupported::new(
            "exclusions",
            "funnel exclusions are not supported by the ClickHouse backend yet",
        ));
    }
    if f.trends {
        return Err(Unsupported::new(
            "trends",
            "funnel trends are not supported by the ClickHouse backend yet",
        ));
    }
    if matches!(f.aggregation, Some(Aggregation::Group(_))) {
        return Err(Unsupported::new(
            "aggregation",
            "group aggregation is not supported by the ClickHouse backend yet",
        ));
    }
    if order == FunnelOrder::Strict && !plan.common.is_empty() {
        return Err(Unsupported::new(
            "properties",
            "strict funnels with filters are not supported by the ClickHouse backend yet",
        ));
    }
    if order == FunnelOrder::Unordered {
        return unordered(f, plan, target);
    }
    let steps = f.steps.len();
    let read = &plan.reads[0];
    let window = funnel_window_us(f.conversion_window);
    let (from, to) = (
        read.range.from.timestamp_micros(),
        read.range.to.timestamp_micros(),
    );
    let conds = plan.specs[..steps]
        .iter()
        .map(|s| expr::spec_condition(s, &plan.common))
        .collect::<Result<Vec<_>, _>>()?;
    let flags = conds
        .iter()
        .enumerate()
        .map(|(i, c)| format!("bitShiftLeft(toUInt64({c}), {i})"))
        .collect::<Vec<_>>()
        .join(" + ");
    // Strict funnels look at every event of the person: any other event breaks the chain.
    let wanted = if order == FunnelOrder::Strict {
        "1".to_string()
    } else {
        conds
            .iter()
            .map(|c| format!("({c})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let rows = expr::source(
        target,
        &format!("{PERSON} AS person, timestamp_us AS ts, uuid, toUInt64({flags}) AS flags"),
        read.from_us,
        read.to_us,
        &wanted,
    );
    let has = |pos: &str, step: usize| format!("bitAnd(f[{pos}], {}) != 0", 1u64 << step);
    let mut sql = entries(&rows, &has("i", 0), from, to);
    for k in 1..steps {
        let prev = format!("s{}", k - 1);
        let next = match order {
            FunnelOrder::Strict => format!(
                "if({prev} > 0 AND {prev} < length(t) AND {} AND t[{prev} + 1] - t[s0] <= {window}, {prev} + 1, 0)",
                has(&format!("{prev} + 1"), k)
            ),
            // `0 * (…)` names the lambda's captured columns outside it: ClickHouse 18.16 drops a subquery's
            // columns that are only used inside a lambda of the query above (`Unknown identifier`).
            _ => format!(
                "arrayFirst(j -> {prev} > 0 AND j > {prev} AND {} AND t[j] - t[s0] <= {window}, arrayEnumerate(t)) \
                 + 0 * (length(f) + s0 + {prev})",
                has("j", k)
            ),
        };
        let carried: String = (0..k).map(|i| format!(", s{i}")).collect();
        sql = format!("SELECT person, t, f{carried}, {next} AS s{k} FROM (\n    {sql}\n)");
    }
    let level: String = (0..steps)
        .map(|i| format!("(s{i} > 0)"))
        .collect::<Vec<_>>()
        .join(" + ");
    let positions: String = (0..steps)
        .map(|i| format!("toUInt64(s{i})"))
        .collect::<Vec<_>>()
        .join(", ");
    let attempts =
        format!("SELECT person, t, {level} AS lvl, s0, [{positions}] AS sel FROM (\n    {sql}\n)");
    Ok(answer(&attempts, steps))
}

/// The funnel's statement over `attempts` (one row per attempt: `person`, the person's times `t`, the attempt's
/// level `lvl`, entry `s0` and step positions `sel`, in time order, those past `lvl` unused): each person's best
/// attempt (the furthest, the earliest entry among equals), then per step the persons reaching it and the mean and
/// median time from the step before (the kernel's `mean` and `median`: integer sums, the mean of the two middle
/// values for an even count).
fn answer(attempts: &str, steps: usize) -> Compiled {
    let sql = format!(
        "SELECT i, n, total / n, if(n % 2 = 1, toFloat64(s[intDiv(n, 2) + 1]), (s[intDiv(n, 2)] + s[intDiv(n, 2) + 1]) / 2)
FROM (
    SELECT i, count() AS n, arraySort(groupArray(dt)) AS s, sum(dt) AS total FROM (
        SELECT i, if(i = 0, toInt64(0), dts[i]) AS dt FROM (
            SELECT person, max(lvl) AS level, argMax(dts, toInt64(lvl) * 4294967296 - toInt64(s0)) AS dts FROM (
                SELECT person, lvl, s0,
                    arrayMap(k -> t[sel[k + 2]] - t[sel[k + 1]], range(toUInt64(length(sel) - 1 + 0 * length(t)))) AS dts
                FROM (
    {attempts}
                )
            ) GROUP BY person
        ) ARRAY JOIN range(toUInt64(level)) AS i
    ) GROUP BY i
) ORDER BY i"
    );
    Compiled {
        statements: vec![Statement {
            sql,
            fill: Fill::Funnel,
        }],
        empty: Answer::Funnel {
            reached: vec![0; steps],
            avg_time_us: vec![None; steps],
            median_time_us: vec![None; steps],
        },
    }
}

/// One row per entry (`s0`, a position in the person's arrays `t` of times and `f` of flags, 1-based): each
/// person's `rows` sorted by (time, uuid) into arrays, and the positions of the events with `entry` (a condition on
/// position `i`) inside `[from, to)` joined out.
fn entries(rows: &str, entry: &str, from: i64, to: i64) -> String {
    format!(
        "SELECT person, t, f, e AS s0 FROM (
        SELECT person, t, f, arrayFilter(i -> {entry} AND t[i] >= {from} AND t[i] < {to}, arrayEnumerate(t)) AS entries
        FROM (
            SELECT person, arrayMap(x -> tupleElement(x, 1), evs) AS t, arrayMap(x -> tupleElement(x, 3), evs) AS f
            FROM (
                SELECT person, arraySort(groupArray((ts, uuid, flags))) AS evs FROM (
    {rows}
                ) GROUP BY person
            )
        )
    ) ARRAY JOIN entries AS e"
    )
}

/// Unordered funnels: an attempt enters at any step's event in the range and reaches as many steps as the events
/// from it on within the window can be given, one event per step. When every event matches at most one distinct
/// step definition, that is, per definition, the smaller of its steps and its events in the window (the kernel's
/// matching reduces to it); definitions that could share an event (the same event name with different filters,
/// `$all`) would need the general matching and are refused.
fn unordered(f: &FunnelQuery, plan: &Plan, target: &Target) -> Result<Compiled, Unsupported> {
    let steps = f.steps.len();
    // Distinct step definitions, with how many steps each is.
    let mut groups: Vec<(usize, usize)> = Vec::new(); // (index of its first step, multiplicity)
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
            return Err(Unsupported::new(
                format!("steps[{i}]"),
                "in an unordered funnel, steps that can match the same event with different filters (or $all) are \
                 not supported by the ClickHouse backend yet",
            ));
        }
        groups.push((i, 1));
    }
    let read = &plan.reads[0];
    let window = funnel_window_us(f.conversion_window);
    let conds = groups
        .iter()
        .map(|g| expr::spec_condition(&plan.specs[g.0], &plan.common))
        .collect::<Result<Vec<_>, _>>()?;
    let flags = conds
        .iter()
        .enumerate()
        .map(|(i, c)| format!("bitShiftLeft(toUInt64({c}), {i})"))
        .collect::<Vec<_>>()
        .join(" + ");
    let wanted = conds
        .iter()
        .map(|c| format!("({c})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let rows = expr::source(
        target,
        &format!("{PERSON} AS person, timestamp_us AS ts, uuid, toUInt64({flags}) AS flags"),
        read.from_us,
        read.to_us,
        &wanted,
    );
    let per_entry = entries(
        &rows,
        "f[i] != 0",
        read.range.from.timestamp_micros(),
        read.range.to.timestamp_micros(),
    );
    // `0 * (…)`: the captured columns named outside the lambdas (see the module docs).
    let level = groups
        .iter()
        .enumerate()
        .map(|(g, &(_, m))| {
            format!(
                "least(arrayCount(j -> bitAnd(f[j], {bit}) != 0 AND t[j] >= t[s0] AND t[j] - t[s0] <= {window}, \
                 arrayEnumerate(t)), {m})",
                bit = 1u64 << g
            )
        })
        .collect::<Vec<_>>()
        .join(" + ");
    // The attempt's rows: per definition the first events (as many as its steps) from the entry on in the window.
    let rows_of = groups
        .iter()
        .enumerate()
        .map(|(g, &(_, m))| {
            format!(
                "arraySlice(arrayFilter(j -> bitAnd(f[j], {bit}) != 0 AND j >= s0 AND t[j] - t[s0] <= {window}, \
                 arrayEnumerate(t)), 1, {m})",
                bit = 1u64 << g
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let attempts = format!(
        "SELECT person, t, {level} + 0 * (length(f) + s0) AS lvl, s0, arraySort(arrayConcat({rows_of})) AS sel FROM (
    {per_entry}
    )"
    );
    Ok(answer(&attempts, steps))
}
