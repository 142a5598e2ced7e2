//! Funnels, `ordered` and `strict` (`crates/kernels/src/funnel.rs`, `flywheel_truth::funnel`): a person enters
//! with a first-step event inside the range and reaches, from the best such entry, as many steps as follow in
//! order within the conversion window (inclusive) of the entry; one event counts for one step. `strict` needs
//! each step to be the person's very next event.
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
use flywheel_query::{Aggregation, FunnelOrder, FunnelQuery};

use super::expr::{self, Target, PERSON};
use super::{Answer, Compiled, Fill, Statement, Unsupported};

pub(super) fn compile(
    f: &FunnelQuery,
    plan: &Plan,
    target: &Target,
) -> Result<Compiled, Unsupported> {
    let order = f.order.unwrap_or(FunnelOrder::Ordered);
    if order == FunnelOrder::Unordered {
        return Err(Unsupported::new(
            "order",
            "unordered funnels are not supported by the ClickHouse backend yet",
        ));
    }
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
    // Sorted per person, then the entries (first-step events in the range) as an array, joined out to one row each.
    let mut sql = format!(
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
    ) ARRAY JOIN entries AS e",
        entry = has("i", 0),
    );
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
    let sql = format!(
        "SELECT level, count() FROM (
    SELECT person, max({level}) AS level FROM (
    {sql}
    ) GROUP BY person
) GROUP BY level ORDER BY level"
    );
    Ok(Compiled {
        statements: vec![Statement {
            sql,
            fill: Fill::Funnel,
        }],
        empty: Answer::Funnel {
            reached: vec![0; steps],
        },
    })
}
