//! Group properties in the SQL. Groups (accounts, companies…) live in the metadata store, not in ClickHouse: the
//! caller reads the groups a query needs and decides each group filter per group key, as the embedded engine does
//! (`crates/server/src/insights.rs`, `Source::Group`); the SQL then only finds each row's group key in its
//! `$groups` property and looks it up in constant lists.
//!
//! A row's `$groups` is indexed as any object property: its JSON text (the writer's compact serialization, so a
//! type's key is found by `visitParamExtractString`, on 18.16 as on current releases). A group key is a JSON
//! string; a row whose `$groups` lacks the type, or holds something else than a string under it, has no group of
//! that type, as in the engine. A funnel or retention table aggregated by groups counts each row's group key
//! instead of its person ([`counted`]).

use std::collections::BTreeMap;

use flywheel_query::PropertyFilter;

use super::expr::string;

/// What the caller decided for the groups of a query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Groups {
    /// Per group filter (by [`filter_key`]): which group keys pass it.
    pub filters: BTreeMap<String, GroupPass>,
    /// Per (group type index, property) a breakdown reads: each group's label.
    pub labels: BTreeMap<(u8, String), GroupLabels>,
    /// The names of the group types a funnel or retention table aggregates by (by index; a type the project
    /// does not have is absent).
    pub type_names: BTreeMap<u8, String>,
}

/// One group filter, decided per group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPass {
    /// The group type's name (its key in `$groups`); `None` when the project has no type of that index.
    pub type_name: Option<String>,
    /// The keys of the groups passing the filter, and of those failing it.
    pub passing: Vec<String>,
    pub failing: Vec<String>,
    /// Whether a row without a group of the type (or with a group the store does not know) passes.
    pub missing: bool,
}

/// One group property as breakdown labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupLabels {
    /// As [`GroupPass::type_name`].
    pub type_name: Option<String>,
    /// `(group key, label)` of every group with a value (a string as itself, another value as its JSON).
    pub labels: Vec<(String, String)>,
}

/// The key of a group filter in [`Groups::filters`].
pub fn filter_key(p: &PropertyFilter) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

/// Whether a row has a group of type `type_name`, and its key (valid when it has).
fn key_of(type_name: &str) -> (String, String) {
    let groups = "prop_texts[indexOf(prop_keys, '$groups')]";
    let name = string(type_name);
    (
        format!(
            "(has(prop_keys, '$groups') AND substring(visitParamExtractRaw({groups}, {name}), 1, 1) = '\"')"
        ),
        format!("visitParamExtractString({groups}, {name})"),
    )
}

fn list(keys: &[String]) -> String {
    let items: Vec<String> = keys.iter().map(|k| string(k)).collect();
    items.join(", ")
}

/// The condition of a decided group filter on a row.
pub(super) fn condition(g: &GroupPass) -> String {
    let Some(type_name) = &g.type_name else {
        return if g.missing { "1" } else { "0" }.into();
    };
    let (has, key) = key_of(type_name);
    if g.missing {
        if g.failing.is_empty() {
            "1".into()
        } else {
            format!("NOT ({has} AND {key} IN ({}))", list(&g.failing))
        }
    } else if g.passing.is_empty() {
        "0".into()
    } else {
        format!("({has} AND {key} IN ({}))", list(&g.passing))
    }
}

/// What a funnel or retention table counts, as `(key, condition)` for its rows: the resolved person of every row,
/// or, aggregated by groups of type `index`, the row's group key, rows without one left out (as the engine's
/// `group_rows`). A type the project does not have leaves no row.
pub(super) fn counted(
    aggregation: Option<flywheel_query::Aggregation>,
    groups: &Groups,
) -> (String, String) {
    match aggregation {
        Some(flywheel_query::Aggregation::Group(index)) => match groups.type_names.get(&index) {
            Some(name) => {
                let (has, key) = key_of(name);
                (key, has)
            }
            None => ("''".into(), "0".into()),
        },
        _ => (super::expr::PERSON.into(), "1".into()),
    }
}

/// Whether a row's group has a label, and the label (`''` without one).
pub(super) fn label(g: &GroupLabels) -> (String, String) {
    let Some(type_name) = &g.type_name else {
        return ("0".into(), "''".into());
    };
    if g.labels.is_empty() {
        return ("0".into(), "''".into());
    }
    let (has, key) = key_of(type_name);
    let keys: Vec<String> = g.labels.iter().map(|(k, _)| k.clone()).collect();
    let texts: Vec<String> = g.labels.iter().map(|(_, l)| l.clone()).collect();
    (
        format!("({has} AND {key} IN ({}))", list(&keys)),
        format!(
            "transform({key}, [{}], [{}], '')",
            list(&keys),
            list(&texts)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(missing: bool, passing: &[&str], failing: &[&str]) -> GroupPass {
        GroupPass {
            type_name: Some("company".into()),
            passing: passing.iter().map(|s| s.to_string()).collect(),
            failing: failing.iter().map(|s| s.to_string()).collect(),
            missing,
        }
    }

    #[test]
    fn a_filter_is_a_list_of_keys_passing_or_failing() {
        let c = condition(&pass(false, &["acme", "it's"], &["globex"]));
        assert!(c.contains("visitParamExtractString(prop_texts[indexOf(prop_keys, '$groups')], 'company') IN ('acme', 'it\\'s')"), "{c}");
        let c = condition(&pass(true, &["acme"], &["globex"]));
        assert!(c.starts_with("NOT ((has(prop_keys, '$groups')"), "{c}");
        assert!(c.ends_with("IN ('globex'))"), "{c}");
        assert_eq!(condition(&pass(true, &["acme"], &[])), "1");
        assert_eq!(condition(&pass(false, &[], &["acme"])), "0");
        let none = GroupPass {
            type_name: None,
            missing: true,
            ..GroupPass::default()
        };
        assert_eq!(condition(&none), "1");
    }

    #[test]
    fn labels_map_keys_to_texts() {
        let g = GroupLabels {
            type_name: Some("company".into()),
            labels: vec![("acme".into(), "pro".into()), ("globex".into(), "7".into())],
        };
        let (has, text) = label(&g);
        assert!(has.ends_with("IN ('acme', 'globex'))"), "{has}");
        assert!(
            text.ends_with("['acme', 'globex'], ['pro', '7'], '')"),
            "{text}"
        );
        assert_eq!(label(&GroupLabels::default()), ("0".into(), "''".into()));
    }
}
