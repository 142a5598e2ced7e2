//! Cohorts in the SQL: a cohort's membership as a condition on a person's uuid, so that a cohort filter is a set
//! of persons like a person-property filter (and a cohort breakdown, run by the caller as one filtered query per
//! cohort, needs nothing more).
//!
//! The caller resolves a cohort into a [`Membership`] at the query's minute, as the embedded evaluator does:
//! windows become UTC microsecond bounds (a calendar month in the project's time zone included), references to
//! other cohorts are inlined, and an uploaded list is its metadata-store person ids. Each behavioural condition is
//! a `GROUP BY` over the project's events with their overrides ([`super::expr::source`]), so the persons are the
//! resolved ones, whichever node captured the events.

use flywheel_query::{CountOp, EventRef, PropertyFilter};

use super::expr::{
    current_persons, person_filter, persons_where, property_filter, rows_of_project, source,
    string, Target,
};
use super::Unsupported;

/// Which persons belong to a cohort, resolved at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum Membership {
    /// All of these hold (everyone when empty).
    All(Vec<Membership>),
    /// One of these holds (no one when empty).
    Any(Vec<Membership>),
    /// This does not hold.
    Not(Box<Membership>),
    /// A person property (the person's current properties), with the person-property filter's semantics.
    Person(PropertyFilter),
    /// The person's events matching `event` and `filters` with times in `[from_us, to_us]` number `count`
    /// compared by `op` (a person without such events has 0).
    Performed {
        event: EventRef,
        filters: Vec<PropertyFilter>,
        from_us: i64,
        to_us: i64,
        op: CountOp,
        count: u64,
    },
    /// The person's first event ever matching `event` and `filters` is in `[from_us, to_us]`.
    FirstTime {
        event: EventRef,
        filters: Vec<PropertyFilter>,
        from_us: i64,
        to_us: i64,
    },
    /// An uploaded list: the metadata store's person ids (an erased person is no longer a member).
    Listed(Vec<i64>),
}

/// The condition that the person whose uuid is `who` belongs to `m`; `field` names the filter for errors.
pub fn condition(
    m: &Membership,
    who: &str,
    field: &str,
    t: &Target,
) -> Result<String, Unsupported> {
    Ok(match m {
        Membership::All(parts) | Membership::Any(parts) => {
            let and = matches!(m, Membership::All(_));
            if parts.is_empty() {
                return Ok(if and { "1" } else { "0" }.into());
            }
            let parts = parts
                .iter()
                .map(|p| condition(p, who, field, t))
                .collect::<Result<Vec<_>, _>>()?;
            format!("({})", parts.join(if and { " AND " } else { " OR " }))
        }
        Membership::Not(inner) => format!("NOT {}", condition(inner, who, field, t)?),
        Membership::Person(p) => person_filter(p, who, field, t)?,
        Membership::Performed {
            event,
            filters,
            from_us,
            to_us,
            op,
            count,
        } => {
            let cond = events(event, filters, field)?;
            let rows = source(
                t,
                &format!("{} AS member", super::expr::PERSON),
                *from_us,
                to_us.saturating_add(1),
                &cond,
            );
            let holds = format!("count() {} {count}", comparison(*op));
            // A person without such events has 0: decided without the events when 0 passes.
            if op.holds(0, *count) {
                format!(
                    "({who} NOT IN (SELECT member FROM ({rows}) GROUP BY member HAVING NOT ({holds})))"
                )
            } else {
                format!("({who} IN (SELECT member FROM ({rows}) GROUP BY member HAVING {holds}))")
            }
        }
        Membership::FirstTime {
            event,
            filters,
            from_us,
            to_us,
        } => {
            let cond = events(event, filters, field)?;
            let rows = source(
                t,
                &format!("{} AS member, timestamp_us", super::expr::PERSON),
                i64::MIN / 2,
                i64::MAX / 2,
                &cond,
            );
            format!(
                "({who} IN (SELECT member FROM ({rows}) GROUP BY member \
                 HAVING min(timestamp_us) >= {from_us} AND min(timestamp_us) <= {to_us}))"
            )
        }
        Membership::Listed(ids) => {
            if ids.is_empty() {
                return Ok("0".into());
            }
            let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
            format!(
                "({who} IN (SELECT pperson FROM ({persons}) WHERE gone = 0 AND pid IN ({ids})))",
                persons = current_persons(t, ", id AS pid"),
                ids = ids.join(", ")
            )
        }
    })
}

/// The members of cohort `id` (from [`Target::cohorts`]) as rows `(person id, uuid)` in person-id order: the
/// current persons (not erased) that the project's events reach through the overrides (a person merged away is
/// reached by none), as the embedded engine lists the persons of its identity mapping.
pub fn members(t: &Target, id: u64) -> Result<String, Unsupported> {
    let m = t
        .cohorts
        .get(&id)
        .ok_or_else(|| Unsupported::new("cohort", format!("cohort {id} was not loaded")))?;
    let member = condition(m, "pperson", "cohort", t)?;
    let reached = rows_of_project(t);
    Ok(persons_where(
        t,
        &format!("pperson IN (SELECT person FROM ({reached})) AND {member}"),
        None,
    ))
}

/// The rows a behavioural condition counts: the event (any with `$all`) and its own property filters.
fn events(
    event: &EventRef,
    filters: &[PropertyFilter],
    field: &str,
) -> Result<String, Unsupported> {
    let mut parts = vec![match event {
        EventRef::All => "1".to_string(),
        EventRef::Named(n) => format!("event = {}", string(n)),
    }];
    for f in filters {
        parts.push(property_filter(f, field)?);
    }
    Ok(parts.join(" AND "))
}

fn comparison(op: CountOp) -> &'static str {
    match op {
        CountOp::Gte => ">=",
        CountOp::Gt => ">",
        CountOp::Lte => "<=",
        CountOp::Lt => "<",
        CountOp::Exact => "=",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flywheel_query::{Operator, PropertyType};
    use serde_json::json;

    fn target() -> Target {
        Target {
            db: "fw".into(),
            project_id: 7,
            ..Target::default()
        }
    }

    fn performed(op: CountOp, count: u64) -> Membership {
        Membership::Performed {
            event: EventRef::Named("task".into()),
            filters: Vec::new(),
            from_us: 10,
            to_us: 20,
            op,
            count,
        }
    }

    #[test]
    fn counts_that_zero_satisfies_are_decided_by_those_failing() {
        let t = target();
        let at_least = condition(&performed(CountOp::Gte, 3), "p", "f", &t).unwrap();
        assert!(at_least.starts_with("(p IN (SELECT member"), "{at_least}");
        assert!(at_least.ends_with("HAVING count() >= 3))"), "{at_least}");
        assert!(
            at_least.contains("timestamp_us >= 10 AND timestamp_us < 21"),
            "the window's end is inclusive: {at_least}"
        );
        let fewer = condition(&performed(CountOp::Lt, 2), "p", "f", &t).unwrap();
        assert!(fewer.starts_with("(p NOT IN (SELECT member"), "{fewer}");
        assert!(fewer.ends_with("HAVING NOT (count() < 2)))"), "{fewer}");
    }

    #[test]
    fn groups_negations_and_lists() {
        let t = target();
        assert_eq!(
            condition(&Membership::All(Vec::new()), "p", "f", &t).unwrap(),
            "1"
        );
        assert_eq!(
            condition(&Membership::Any(Vec::new()), "p", "f", &t).unwrap(),
            "0"
        );
        assert_eq!(
            condition(&Membership::Listed(Vec::new()), "p", "f", &t).unwrap(),
            "0"
        );
        let listed = condition(
            &Membership::Not(Box::new(Membership::Listed(vec![4, 9]))),
            "p",
            "f",
            &t,
        )
        .unwrap();
        assert!(listed.starts_with("NOT (p IN (SELECT pperson"), "{listed}");
        assert!(listed.contains("gone = 0 AND pid IN (4, 9)"), "{listed}");
        let both = condition(
            &Membership::Any(vec![
                performed(CountOp::Gte, 1),
                Membership::Listed(vec![1]),
            ]),
            "p",
            "f",
            &t,
        )
        .unwrap();
        assert!(both.contains(") OR (p IN"), "{both}");
    }

    #[test]
    fn an_unsupported_operator_names_the_filter() {
        let m = Membership::Person(PropertyFilter {
            key: "email".into(),
            value: Some(json!(r"\ba")),
            operator: Operator::Regex,
            property_type: PropertyType::Person,
            group_type_index: None,
        });
        let e = condition(&m, "p", "properties[1]", &target()).unwrap_err();
        assert!(e.field.starts_with("properties[1]"), "{}", e.field);
        assert!(e.message.contains("regular expression"), "{}", e.message);
    }
}
