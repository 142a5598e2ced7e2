//! Event-, person- and group-property breakdowns, as the embedded engine ranks them (`crates/server/src/insights.rs`, `rank_codes`
//! and `row_codes`).
//!
//! A row's label is its property's text (a string as itself, another value as its JSON: the engine's
//! `label_of`). The values of the rows a kind ranks (trends: rows matching any series; funnels: first-step rows)
//! are ranked by their rows, most first, then by value (byte order); the first `limit` keep a label each, the
//! others share the "other" label, rows without the property get the `null` label. One statement lists the
//! ranking (the labels' order); the statements that split by it rank again in a scalar subquery (`WITH (…) AS
//! top`), so each is self-contained, and give each row a `kind` (0: a ranked value, 1: other, 2: no value) and a
//! `label` (the value for kind 0, `''` otherwise).

use super::expr::{self, Target};
use super::group::{self, GroupLabels};

const DAY_US: i64 = 86_400_000_000;

/// The label of the breakdown row of the values beyond the limit (PostHog's marker, as the engine uses it).
pub const BREAKDOWN_OTHER: &str = "$$_posthog_breakdown_other_$$";

/// What a breakdown splits by.
#[derive(Debug, Clone, Copy)]
pub(super) enum By<'a> {
    /// An event property: each row's own value.
    Event(&'a str),
    /// A person property: the current value of the person each row resolves to (the same for all of a person's
    /// rows, as the engine's person codes), joined from the persons table ([`expr::source_with_person`]).
    Person(&'a str),
    /// A group property: the value of the row's group of a type (from `$groups`), looked up in the labels the
    /// caller read from the metadata store ([`super::group`]).
    Group(&'a GroupLabels),
}

impl<'a> By<'a> {
    /// The breakdown of a definition's `breakdown`, if the ClickHouse backend has it (`what`: the insight kind,
    /// for the message).
    pub(super) fn of(
        b: &'a flywheel_query::Breakdown,
        what: &str,
        target: &'a Target,
    ) -> Result<(By<'a>, usize), super::Unsupported> {
        let limit =
            b.limit
                .unwrap_or(flywheel_query::filter::DEFAULT_BREAKDOWN_LIMIT) as usize;
        match &b.by {
            flywheel_query::BreakdownBy::Event { property } => Ok((By::Event(property), limit)),
            flywheel_query::BreakdownBy::Person { property } => Ok((By::Person(property), limit)),
            flywheel_query::BreakdownBy::Group {
                group_type_index,
                property,
            } => match target
                .groups
                .labels
                .get(&(*group_type_index, property.clone()))
            {
                Some(labels) => Ok((By::Group(labels), limit)),
                None => Err(super::Unsupported::new(
                    "breakdown.type",
                    "the groups of this group-property breakdown were not loaded",
                )),
            },
            _ => Err(super::Unsupported::new(
                "breakdown.type",
                format!(
                    "only event-, person- and group-property breakdowns of {what} are supported by the ClickHouse \
                     backend (a cohort breakdown is one query per cohort, run by the caller)"
                ),
            )),
        }
    }
}

/// A breakdown over one read.
pub(super) struct Split {
    /// A row's value: whether it has one and its text (an event's or a group's property), or, for a person
    /// property, the key as a literal (the value is joined).
    value: Value,
    /// The ranking statement with `limit + 1` rows (the last, when present, says there are others).
    ranking: String,
    /// `(SELECT groupArray(v) …)`: the ranked values that keep a label.
    top: String,
}

/// Where a row's breakdown value comes from.
enum Value {
    Row { has: String, text: String },
    Person { key: String },
}

/// The person columns a person-property breakdown joins: whether the person has `key`, and its text.
fn person_columns(key: &str) -> String {
    format!(
        ", argMax(toUInt8(has(prop_keys, {key})), version) AS pp_has_, \
         argMax(if(has(prop_keys, {key}), prop_texts[indexOf(prop_keys, {key})], ''), version) AS pp_text_"
    )
}
const PERSON_NAMES: &str = "pp_has_ AS pp_has, pp_text_ AS pp_text";

impl Split {
    /// The breakdown `by` of the rows satisfying `ranked` read in `[from_us, to_us)`.
    ///
    /// The rows ranked are those of the whole UTC days the read touches, not only the read's instants: the
    /// embedded engine ranks the rows of the day partitions it prepares for the read (`prepare_read`), which reach
    /// past the range's ends when the project's time zone is not UTC. A person-property breakdown ranks its values
    /// by the same rows (each counting for its person's value), as the engine's `person_codes`.
    pub(super) fn new(
        by: By<'_>,
        limit: usize,
        from_us: i64,
        to_us: i64,
        ranked: &str,
        target: &Target,
    ) -> Split {
        let from = from_us.div_euclid(DAY_US) * DAY_US;
        let to = ((to_us - 1).div_euclid(DAY_US) + 1) * DAY_US;
        let row_value = |has: String, text: String| {
            let rows = expr::source(
                target,
                &format!("{text} AS v"),
                from,
                to,
                &format!("({ranked}) AND {has}"),
            );
            (Value::Row { has, text }, rows)
        };
        let (value, rows) = match by {
            By::Event(property) => {
                let key = expr::string(property);
                row_value(
                    format!("has(prop_keys, {key})"),
                    format!("prop_texts[indexOf(prop_keys, {key})]"),
                )
            }
            By::Group(labels) => {
                let (has, text) = group::label(labels);
                row_value(has, text)
            }
            By::Person(property) => {
                let key = expr::string(property);
                let rows = expr::source_with_person(
                    target,
                    "pp_text AS v, pp_has AS h",
                    from,
                    to,
                    ranked,
                    &person_columns(&key),
                    PERSON_NAMES,
                );
                let rows = format!("SELECT v FROM (\n    {rows}\n    ) WHERE h = 1");
                (Value::Person { key }, rows)
            }
        };
        let ranking = |limit: usize| {
            format!(
                "SELECT v, count() AS c FROM (\n    {rows}\n) GROUP BY v ORDER BY c DESC, v ASC LIMIT {limit}"
            )
        };
        Split {
            top: format!("(SELECT groupArray(v) FROM ({}))", ranking(limit)),
            ranking: ranking(limit + 1),
            value,
        }
    }

    /// The ranking statement: rows `(value, rows)`, at most `limit + 1`.
    pub(super) fn ranking(&self) -> String {
        self.ranking.clone()
    }

    /// `source` (a `SELECT`) with the ranked values available as `top`.
    fn with(&self, source: String) -> String {
        format!("WITH {} AS top {source}", self.top)
    }

    /// [`expr::source`]'s rows (`select` may end with [`Split::columns`]) with the ranked values available as
    /// `top`, and, for a person property, the person's value joined.
    pub(super) fn rows(
        &self,
        target: &Target,
        select: &str,
        from_us: i64,
        to_us: i64,
        cond: &str,
    ) -> String {
        let rows = match &self.value {
            Value::Person { key } => expr::source_with_person(
                target,
                select,
                from_us,
                to_us,
                cond,
                &person_columns(key),
                PERSON_NAMES,
            ),
            Value::Row { .. } => expr::source(target, select, from_us, to_us, cond),
        };
        self.with(rows)
    }

    /// The columns `kind` and `label` of a row, to append to a select list of [`Split::rows`].
    pub(super) fn columns(&self) -> String {
        match &self.value {
            Value::Person { .. } => {
                ", multiIf(pp_has = 0, 2, has(top, pp_text), 0, 1) AS kind, if(kind = 0, pp_text, '') AS label"
                    .to_string()
            }
            Value::Row { has, text } => format!(
                ", multiIf(NOT {has}, 2, has(top, {text}), 0, 1) AS kind, if(kind = 0, {text}, '') AS label"
            ),
        }
    }
}

/// The labels of a ranking statement's rows, in the engine's order, and how many are ranked values.
pub(super) fn labels(rows: &[Vec<String>], limit: usize) -> (Vec<serde_json::Value>, usize) {
    let mut labels: Vec<serde_json::Value> = rows
        .iter()
        .take(limit)
        .map(|r| serde_json::Value::String(r.first().cloned().unwrap_or_default()))
        .collect();
    let ranked = labels.len();
    if rows.len() > limit {
        labels.push(serde_json::Value::String(BREAKDOWN_OTHER.into()));
    }
    labels.push(serde_json::Value::Null);
    (labels, ranked)
}

/// The index in `labels` (with `ranked` ranked values) of a row's `(kind, value)`.
pub(super) fn label_index(
    labels: &[serde_json::Value],
    ranked: usize,
    kind: u8,
    value: Option<&str>,
) -> Option<usize> {
    let n = labels.len();
    match kind {
        0 => labels[..ranked].iter().position(|l| l.as_str() == value),
        // The engine's code for a value outside the ranking is the slot after the ranked ones: the "other" label,
        // or — without one, which happens only when a funnel attributes to a later step (`step:<i>`) a value the
        // first step's rows did not rank — the `null` label, as the embedded engine shows it.
        1 if ranked < n => Some(ranked),
        2 => Some(n - 1),
        _ => None,
    }
}
