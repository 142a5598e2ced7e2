//! SQL fragments shared by every insight: literals, property filters, event specs, bucket numbers and the rows
//! source (events joined to the person overrides).
//!
//! Everything here is written for ClickHouse 18.16 as well as current releases. Two limits of 18.16 shape it:
//! a higher-order function nested in a lambda cannot see the query's columns (`Unknown identifier`), so every
//! lambda here is single-level; and it has no JSON functions, so filters read the indexed top-level properties
//! (`prop_keys`, `prop_texts`, `prop_numbers`, `prop_lower`: see [`crate::row`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use flywheel_query::plan::Scan;
use flywheel_query::{EventRef, Filter, Operator, PropertyFilter, PropertyType};
use serde_json::Value;

use super::cohort::{self, Membership};
use super::group::{self, Groups};
use super::Unsupported;
use crate::row::{number, text};
use crate::schema::{ident, EVENTS, PERSONS, PERSON_OVERRIDES};

/// Where a query reads: the database and the project, and the cohorts its filters may name.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub db: String,
    pub project_id: u64,
    /// The membership of every cohort the query reaches, resolved at the query's minute by the caller.
    pub cohorts: Arc<BTreeMap<u64, Membership>>,
    /// The group filters the query uses, decided per group, and the group properties it breaks down by.
    pub groups: Arc<Groups>,
}

/// A string literal: quotes and backslashes escaped (ClickHouse reads C-style escapes in literals).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A Float64 literal (`inf`, `-inf` and `nan` are literals in ClickHouse).
pub fn float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("toFloat64({x:?})")
    }
}

/// A constant `Array(Int64)` (typed: a literal of large positive numbers would be `Array(UInt64)`).
pub fn int_array(xs: &[i64]) -> String {
    let items: Vec<String> = xs.iter().map(i64::to_string).collect();
    format!("CAST([{}] AS Array(Int64))", items.join(", "))
}

/// The person of a row: the override of its distinct id when there is one, else the person it was written with.
pub const PERSON: &str = "if(overridden = 1, override_person_id, person_id)";

/// The newest override per distinct id, joined at read time: a merge never rewrites events.
fn overrides(t: &Target) -> String {
    format!(
        "SELECT distinct_id, argMax(person_id, version) AS override_person_id, toUInt8(1) AS overridden \
         FROM {db}.{table} WHERE project_id = {p} GROUP BY distinct_id",
        db = ident(&t.db),
        table = ident(PERSON_OVERRIDES),
        p = t.project_id,
    )
}

/// Largest instant a `DateTime` holds (2106-02-07), in seconds.
const DATETIME_MAX_S: i64 = u32::MAX as i64;

/// `SELECT {select}` over the project's events with times in `[from_us, to_us)` that satisfy `cond`, each with
/// its resolved person available as the expression [`PERSON`]. The whole-second `timestamp` bounds let ClickHouse
/// skip partitions and index ranges; `timestamp_us` decides.
pub fn source(t: &Target, select: &str, from_us: i64, to_us: i64, cond: &str) -> String {
    let mut time = format!("timestamp_us >= {from_us} AND timestamp_us < {to_us}");
    let from_s = from_us.div_euclid(1_000_000);
    let to_s = to_us.div_euclid(1_000_000) + 1;
    if (0..=DATETIME_MAX_S).contains(&from_s) {
        time.push_str(&format!(" AND timestamp >= toDateTime({from_s}, 'UTC')"));
    }
    if (0..=DATETIME_MAX_S).contains(&to_s) {
        time.push_str(&format!(" AND timestamp <= toDateTime({to_s}, 'UTC')"));
    }
    format!(
        "SELECT {select}\n    FROM {db}.{events}\n    ANY LEFT JOIN ({overrides}) AS overrides USING distinct_id\n    \
         WHERE project_id = {p} AND {time} AND ({cond})",
        db = ident(&t.db),
        events = ident(EVENTS),
        overrides = overrides(t),
        p = t.project_id,
    )
}

/// The columns of a [`source`] row that a query above it may read (with [`PERSON`] computable from them).
const ROW_COLUMNS: &str =
    "uuid, event, distinct_id, person_id, timestamp_us, prop_keys, prop_texts, prop_numbers, \
                           prop_lower, overridden, override_person_id, _lsn, _idx";

/// A row's place among one person's rows of the same microsecond: the node's log order (`_lsn`, `_idx`), then the
/// uuid (rows written without a log position, and rows of different nodes).
pub const LOG_ORDER: &str = "(_lsn, _idx, uuid)";

/// [`source`] with its resolved person's columns `person_columns` joined (each `argMax(…, version) AS name` over
/// the persons table, see [`current_persons`]; their type's default for a person without a row or erased).
/// `select` sees the rows' columns and the persons'. ClickHouse 18.16 joins one table per `SELECT`, so the events
/// with their overrides are a subquery.
pub fn source_with_person(
    t: &Target,
    select: &str,
    from_us: i64,
    to_us: i64,
    cond: &str,
    person_columns: &str,
    person_names: &str,
) -> String {
    let rows = source(
        t,
        &format!("{ROW_COLUMNS}, {PERSON} AS _person"),
        from_us,
        to_us,
        cond,
    );
    format!(
        "SELECT {select} FROM (\n    {rows}\n    ) AS rows\n    ANY LEFT JOIN (SELECT pperson AS _person, {person_names} FROM ({persons}) WHERE gone = 0) AS persons USING _person",
        persons = current_persons(t, person_columns),
    )
}

/// Every event of the project with its resolved person (`person`) and its written one (`person_id`): the rows
/// source with no time bounds, for checks and tools.
pub fn rows_of_project(t: &Target) -> String {
    source(
        t,
        &format!("{PERSON} AS person, person_id"),
        i64::MIN / 2,
        i64::MAX / 2,
        "1",
    )
}

/// The bucket number (0-based) of `ts_expr` for bucket starts `starts`; `-1` before the first. The caller bounds
/// the rows to `[starts[0], end)`. Exact in every time zone: the boundaries are the planner's own.
pub fn bucket(starts: &[i64], ts_expr: &str) -> String {
    format!("({} - 1)", count_le(starts, ts_expr))
}

/// Above this many constants, [`count_le`] counts in two levels.
const FLAT_COUNT: usize = 16;

/// How many of the ascending constants `xs` are `<= value_expr`, as an `Int64` expression.
///
/// ClickHouse 18.16 has no binary search over an array, and a linear `arrayCount` costs a comparison per constant
/// per row (an hour-bucketed month is 720 of them). Above [`FLAT_COUNT`] constants, the count is done in two
/// levels of about `√n` each: the blocks whose first constant is `<=` the value, then inside the last of those
/// blocks. Neither level captures an array in its lambda (only the value).
pub fn count_le(xs: &[i64], value_expr: &str) -> String {
    // The value is also named outside the lambdas (`+ 0 * value`): ClickHouse 18.16 drops a subquery's column that
    // the query above uses only inside a lambda.
    if xs.len() <= FLAT_COUNT {
        return format!(
            "(toInt64(arrayCount(x -> x <= {value_expr}, {})) + 0 * {value_expr})",
            int_array(xs)
        );
    }
    let block = (xs.len() as f64).sqrt().ceil() as usize;
    let firsts: Vec<i64> = xs.iter().step_by(block).copied().collect();
    // The last block starting at or before the value (the first one when none does: its count is then 0).
    let g = format!(
        "(greatest(toInt64(arrayCount(x -> x <= {value_expr}, {})), 1) - 1)",
        int_array(&firsts)
    );
    format!(
        "({g} * {block} + toInt64(arrayCount(x -> x <= {value_expr}, arraySlice({}, {g} * {block} + 1, {block}))) + 0 * {value_expr})",
        int_array(xs)
    )
}

/// The condition of an event spec with its own filters and the common ones.
pub fn spec_condition(scan: &Scan, common: &[Filter], t: &Target) -> Result<String, Unsupported> {
    let mut parts = vec![match &scan.spec.event {
        EventRef::All => "1".to_string(),
        EventRef::Named(n) => format!("event = {}", string(n)),
    }];
    for (j, f) in scan.spec.properties.iter().enumerate() {
        parts.push(filter(f, &format!("{}.properties[{j}]", scan.field), t)?);
    }
    parts.push(filters(common, "properties", t)?);
    Ok(parts.join(" AND "))
}

/// All of `filters` (the list at `field`), as one condition (`1` when empty).
pub fn filters(fs: &[Filter], field: &str, t: &Target) -> Result<String, Unsupported> {
    if fs.is_empty() {
        return Ok("1".into());
    }
    let parts = fs
        .iter()
        .enumerate()
        .map(|(j, f)| filter(f, &format!("{field}[{j}]"), t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("({})", parts.join(" AND ")))
}

/// One filter at `field`, a condition on a row of [`source`]. Event and person properties, cohorts (from
/// [`Target::cohorts`]) and group properties (decided by the caller, [`Target::groups`]).
pub fn filter(f: &Filter, field: &str, t: &Target) -> Result<String, Unsupported> {
    match f {
        Filter::Cohort { id, negate } => {
            let Some(m) = t.cohorts.get(id) else {
                return Err(Unsupported::new(
                    field,
                    format!("cohort {id} was not loaded"),
                ));
            };
            let member = cohort::condition(m, PERSON, field, t).map_err(|e| {
                Unsupported::new(field, format!("cohort {id}: {}: {}", e.field, e.message))
            })?;
            Ok(if *negate {
                format!("NOT {member}")
            } else {
                member
            })
        }
        Filter::Property(p) => match p.property_type {
            PropertyType::Event => property_filter(p, field),
            PropertyType::Person => person_filter(p, PERSON, field, t),
            PropertyType::Group => match t.groups.filters.get(&group::filter_key(p)) {
                Some(g) => Ok(group::condition(g)),
                None => Err(Unsupported::new(
                    format!("{field}.type"),
                    "the groups of this group property filter were not loaded",
                )),
            },
        },
    }
}

/// The persons of the project as of their newest version: one row per person id with `pperson` (its uuid),
/// `gone` (erased) and the aggregates `columns` (each `argMax(…, version) AS name` over a row of the persons
/// table, whose property arrays are named as the events').
pub fn current_persons(t: &Target, columns: &str) -> String {
    format!(
        "SELECT argMax(uuid, version) AS pperson, argMax(deleted, version) AS gone{columns} \
         FROM {db}.{table} WHERE project_id = {p} GROUP BY id",
        db = ident(&t.db),
        table = ident(PERSONS),
        p = t.project_id,
    )
}

/// `(person id, uuid)` of the project's current persons (not erased) whose uuid `pperson` satisfies `cond`, in
/// person-id order, at most `limit`.
pub fn persons_where(t: &Target, cond: &str, limit: Option<usize>) -> String {
    let limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}"));
    format!(
        "SELECT pid, toString(pperson) FROM ({persons}) WHERE gone = 0 AND {cond} ORDER BY pid{limit}",
        persons = current_persons(t, ", id AS pid"),
    )
}

/// A person-property filter, with the embedded engine's semantics: the person's current properties (the newest
/// version of the person the row resolves to, through the overrides) are tested as an event's would be; a person
/// without the property, without a row in `persons` (not shipped, personless events) or erased is tested as
/// missing. As a set of persons: those passing (`IN`), or, when a missing property passes, all but those failing
/// (`NOT IN`), so that persons without a row are decided without a join. `who` is the tested person's uuid.
pub(super) fn person_filter(
    p: &PropertyFilter,
    who: &str,
    field: &str,
    t: &Target,
) -> Result<String, Unsupported> {
    let test = property_filter(p, field)?;
    let missing_passes = matches!(
        p.operator,
        Operator::IsNot | Operator::IsNotSet | Operator::NotContains
    );
    let (op, want) = if missing_passes {
        ("NOT IN", 0)
    } else {
        ("IN", 1)
    };
    let persons = current_persons(t, &format!(", argMax(toUInt8({test}), version) AS pass"));
    Ok(format!(
        "({who} {op} (SELECT pperson FROM ({persons}) WHERE gone = 0 AND pass = {want}))"
    ))
}

fn values(p: &PropertyFilter) -> Vec<&Value> {
    match &p.value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    }
}

/// A property filter over a row's indexed properties (an event's, or a person's in the persons table), with the
/// engine's semantics (`crates/server/src/insight_filters.rs`): `exact` is
/// equality of the texts, `contains` a substring of the lower-case texts, numbers compare as Float64 (NaN compares
/// false), a missing property fails every
/// positive operator and passes its negation.
pub(super) fn property_filter(p: &PropertyFilter, field: &str) -> Result<String, Unsupported> {
    let key = string(&p.key);
    let has = format!("has(prop_keys, {key})");
    let at = format!("indexOf(prop_keys, {key})");
    let exact = || {
        let texts: Vec<String> = values(p).into_iter().map(|v| string(&text(v))).collect();
        if texts.is_empty() {
            "0".to_string()
        } else {
            format!("({has} AND prop_texts[{at}] IN ({}))", texts.join(", "))
        }
    };
    let compare = |op: &str| {
        let x = values(p).first().map_or(f64::NAN, |v| number(v));
        if x.is_nan() {
            "0".to_string()
        } else {
            format!("({has} AND prop_numbers[{at}] {op} {})", float(x))
        }
    };
    // Case-insensitive: the row's lower-case text (stored by the writer, Rust's folding) holds the lower-case value.
    let contains = || {
        let needle = values(p)
            .first()
            .map(|v| text(v).to_lowercase())
            .unwrap_or_default();
        format!(
            "({has} AND position(if(prop_lower[{at}] = '', prop_texts[{at}], prop_lower[{at}]), {}) > 0)",
            string(&needle)
        )
    };
    Ok(match p.operator {
        Operator::Exact => exact(),
        Operator::IsNot => format!("NOT {}", exact()),
        Operator::IsSet => has,
        Operator::IsNotSet => format!("NOT {has}"),
        Operator::Gt => compare(">"),
        Operator::Gte => compare(">="),
        Operator::Lt => compare("<"),
        Operator::Lte => compare("<="),
        Operator::Contains => contains(),
        Operator::NotContains => format!("NOT {}", contains()),
        Operator::Regex | Operator::NotRegex => {
            // Without a string there is no regular expression: it matches nothing (as in the engine).
            let Some(pattern) = values(p).first().and_then(|v| v.as_str()) else {
                return Ok(if p.operator == Operator::Regex {
                    "0"
                } else {
                    "1"
                }
                .into());
            };
            let re2 = super::regex::to_re2(pattern).map_err(|why| {
                Unsupported::new(
                    format!("{field}.value"),
                    format!("this regular expression cannot be run by ClickHouse with the same meaning: {why}"),
                )
            })?;
            let test = format!("({has} AND match(prop_texts[{at}], {}))", string(&re2));
            if p.operator == Operator::Regex {
                test
            } else {
                format!("NOT {test}")
            }
        }
    })
}

/// A numeric event property of a row, NaN when missing or not a number.
pub fn property_number(key: &str) -> String {
    let key = string(key);
    format!("if(has(prop_keys, {key}), prop_numbers[indexOf(prop_keys, {key})], nan)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pf(op: Operator, value: Option<Value>) -> Filter {
        Filter::Property(PropertyFilter {
            key: "plan".into(),
            value,
            operator: op,
            property_type: PropertyType::Event,
            group_type_index: None,
        })
    }

    #[test]
    fn literals_escape_and_type() {
        assert_eq!(string(r"it's \ ok"), r"'it\'s \\ ok'");
        assert_eq!(float(2.0), "toFloat64(2.0)");
        assert_eq!(float(f64::NEG_INFINITY), "-inf");
        assert_eq!(int_array(&[1, -2]), "CAST([1, -2] AS Array(Int64))");
    }

    #[test]
    fn filters_compare_texts_and_numbers() {
        let t = Target {
            db: "fw".into(),
            project_id: 7,
            ..Target::default()
        };
        let f = filter(
            &pf(Operator::Exact, Some(json!(["pro", 7]))),
            "properties[0]",
            &t,
        )
        .unwrap();
        assert!(
            f.contains("prop_texts[indexOf(prop_keys, 'plan')] IN ('pro', '7')"),
            "{f}"
        );
        let f = filter(&pf(Operator::Gt, Some(json!("x"))), "p", &t).unwrap();
        assert_eq!(f, "0", "a bound that is not a number matches nothing");
        let e = filter(
            &pf(Operator::Regex, Some(json!(r"\ba"))),
            "series[0].properties[1]",
            &t,
        )
        .unwrap_err();
        assert_eq!(e.field, "series[0].properties[1].value");
        let f = filter(&pf(Operator::NotRegex, Some(json!("^a.*"))), "p", &t).unwrap();
        assert!(
            f.starts_with("NOT (has(prop_keys, 'plan') AND match("),
            "{f}"
        );
        let e = filter(
            &Filter::Cohort {
                id: 3,
                negate: false,
            },
            "properties[2]",
            &t,
        )
        .unwrap_err();
        assert_eq!(e.field, "properties[2]");
    }

    #[test]
    fn person_filters_are_sets_of_persons_that_decide_missing_ones() {
        let t = Target {
            db: "fw".into(),
            project_id: 7,
            ..Target::default()
        };
        let person = |op, value| {
            let Filter::Property(mut p) = pf(op, value) else {
                unreachable!()
            };
            p.property_type = PropertyType::Person;
            filter(&Filter::Property(p), "properties[0]", &t).unwrap()
        };
        let f = person(Operator::Exact, Some(json!("pro")));
        assert!(
            f.starts_with(&format!("({PERSON} IN (SELECT pperson")),
            "{f}"
        );
        assert!(
            f.contains("FROM `fw`.`persons` WHERE project_id = 7 GROUP BY id"),
            "{f}"
        );
        assert!(f.contains("gone = 0 AND pass = 1"), "{f}");
        // A person without the property passes `is_not`: everyone but those failing it.
        let f = person(Operator::IsNot, Some(json!("pro")));
        assert!(
            f.starts_with(&format!("({PERSON} NOT IN (SELECT pperson")),
            "{f}"
        );
        assert!(f.contains("pass = 0"), "{f}");
        let Filter::Property(mut g) = pf(Operator::Exact, Some(json!("x"))) else {
            unreachable!()
        };
        g.property_type = PropertyType::Group;
        let e = filter(&Filter::Property(g), "properties[1]", &t).unwrap_err();
        assert_eq!(e.field, "properties[1].type");
    }
}
