//! Trials and product-qualified leads (PQL): the JSON bodies of `POST /api/v1/projects/{id}/trials` and
//! `POST /api/v1/projects/{id}/pql-models`, parsed like every definition (every problem at once, by field).
//!
//! ```
//! use flywheel_query::pql::{parse_model, parse_trial, RuleKind};
//! use serde_json::json;
//!
//! let t = parse_trial(&json!({"key": "pro", "name": "Pro trial",
//!     "started": {"event": "trial_started"}, "converted": {"event": "subscription_started"}})).unwrap();
//! assert_eq!((t.length_days, t.unit), (14, None));
//!
//! let m = parse_model(&json!({"key": "pql", "name": "PQL", "threshold": 50, "half_life_days": 14,
//!     "rules": [
//!         {"id": "active", "event": "$pageview", "window_days": 14, "min_count": 5, "points": 20},
//!         {"id": "invites", "event": "invite_sent", "per_event": true, "points": 5, "max_points": 25},
//!         {"id": "big", "where": [{"key": "employees", "operator": "gt", "value": 50}], "points": 15},
//!     ],
//!     "disqualifiers": [{"id": "staff", "where": [{"key": "email", "operator": "contains", "value": "@us.com"}]}],
//! })).unwrap();
//! assert!(matches!(m.rules[0].kind, RuleKind::Event { min_count: 5, .. }));
//!
//! let errors = parse_model(&json!({"key": "x", "name": "X", "threshold": 0, "rules": [{"id": "a", "points": 1}]}))
//!     .unwrap_err();
//! assert_eq!(errors[0].field, "threshold");
//! assert_eq!(errors[1].field, "rules[0]");
//! ```
//!
//! **Trials** (`unit`: persons, or the groups of a group type for accounts): an entity's trial starts at its first
//! `started` event, is activated at its first `activated` event after that, converts at its first `converted`
//! event after the start, and expires `length_days` after the start when it has not converted by then.
//!
//! **PQL models** score entities from their events and properties: an event rule earns its `points` when the entity
//! did the event (with `properties`) at least `min_count` times in the last `window_days`, or, with `per_event`,
//! `points` per occurrence up to `max_points`; a property rule earns them when every filter of `where` holds for the
//! entity's properties (person properties, or the group's). With `half_life_days`, points earned by events decay
//! from when they were earned (halved every `half_life_days`). A matching disqualifier sets the score to 0. An
//! entity whose score reaches `threshold` is a product-qualified lead.

use serde_json::{json, Value};

use crate::experiment::{read_key, MAX_KEY, MAX_NAME};
use crate::filter::{read_event, read_filter, read_filters, EventRef, Filter, PropertyType};
use crate::read::{index, Errors, Obj};
use crate::FieldError;

/// Longest window, in days.
pub const MAX_DAYS: u64 = 365;
/// Most rules of a model.
pub const MAX_RULES: usize = 40;
/// Most disqualifiers of a model.
pub const MAX_DISQUALIFIERS: usize = 10;
/// Most filters of a property rule.
pub const MAX_WHERE: usize = 10;

/// An event with filters on its own properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub event: EventRef,
    pub properties: Vec<Filter>,
}

impl Step {
    fn to_json(&self) -> Value {
        let mut v = json!({"event": self.event});
        if !self.properties.is_empty() {
            v["properties"] = json!(self.properties);
        }
        v
    }
}

/// Reads `event` and `properties` (event properties only: the step is matched on the event).
fn read_step_fields(o: &mut Obj<'_>, e: &mut Errors) -> Option<Step> {
    let event = read_event(o, e);
    let properties = read_filters(o, e);
    let at = o.at("properties");
    for (i, f) in properties.iter().enumerate() {
        if !matches!(f, Filter::Property(p) if p.property_type == PropertyType::Event) {
            e.push(
                index(&at, i),
                "only the event's own properties can be tested here",
            );
        }
    }
    Some(Step {
        event: event?,
        properties,
    })
}

fn read_step(o: &mut Obj<'_>, key: &'static str, required: bool, e: &mut Errors) -> Option<Step> {
    let Some(v) = o.get(key) else {
        if required {
            e.push(o.at(key), "is required (an object with `event`)");
        }
        return None;
    };
    let mut s = Obj::new(v, &o.at(key), e)?;
    let step = read_step_fields(&mut s, e);
    s.finish(e);
    step
}

/// A trial definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub key: String,
    pub name: String,
    pub description: String,
    /// The group type whose groups have trials (accounts); `None`: persons.
    pub unit: Option<String>,
    pub started: Step,
    pub activated: Option<Step>,
    pub converted: Step,
    pub length_days: u64,
}

fn read_unit(o: &mut Obj<'_>, e: &mut Errors) -> Option<String> {
    o.string("unit", MAX_KEY, e).filter(|u| u != "person")
}

/// Parses a trial definition.
pub fn parse_trial(body: &Value) -> Result<Trial, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    let unit = read_unit(&mut o, &mut e);
    let started = read_step(&mut o, "started", true, &mut e);
    let activated = read_step(&mut o, "activated", false, &mut e);
    let converted = read_step(&mut o, "converted", true, &mut e);
    let length_days = o.integer("length_days", 1, MAX_DAYS, &mut e).unwrap_or(14);
    o.finish(&mut e);
    match (key, name, started, converted) {
        (Some(key), Some(name), Some(started), Some(converted)) if e.0.is_empty() => Ok(Trial {
            key,
            name,
            description,
            unit,
            started,
            activated,
            converted,
            length_days,
        }),
        _ => Err(e.0),
    }
}

impl Trial {
    /// The definition in its API form (parses back to the same trial).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "key": self.key,
            "name": self.name,
            "started": self.started.to_json(),
            "converted": self.converted.to_json(),
            "length_days": self.length_days,
        });
        if let Some(a) = &self.activated {
            v["activated"] = a.to_json();
        }
        if let Some(u) = &self.unit {
            v["unit"] = json!(u);
        }
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        v
    }
}

/// What a rule or disqualifier tests.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// The entity's events in the last `window_days`.
    Event {
        step: Step,
        window_days: u64,
        /// Occurrences needed (not with `per_event`).
        min_count: u64,
        /// Points per occurrence instead of once.
        per_event: bool,
        /// The most a `per_event` rule earns.
        max_points: Option<f64>,
    },
    /// The entity's properties: every filter holds.
    Property { filters: Vec<Filter> },
}

/// A scoring rule (`points` earned) or a disqualifier (`points` is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: String,
    pub points: f64,
    pub kind: RuleKind,
}

/// A PQL scoring model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub key: String,
    pub name: String,
    pub description: String,
    /// The group type whose groups are scored (accounts); `None`: persons.
    pub unit: Option<String>,
    /// The score at which an entity is a product-qualified lead.
    pub threshold: f64,
    /// Points earned by events halve every this many days.
    pub half_life_days: Option<f64>,
    pub rules: Vec<Rule>,
    pub disqualifiers: Vec<Rule>,
}

fn read_rule(v: &Value, at: &str, scoring: bool, e: &mut Errors) -> Option<Rule> {
    let mut o = Obj::new(v, at, e)?;
    let id = o.required_string("id", MAX_KEY, e);
    let points = if scoring {
        if !o.has("points") {
            o.allow("points");
            e.push(o.at("points"), "is required");
        }
        o.number("points", -1e6, 1e6, e)
    } else {
        Some(0.0)
    };
    let kind = if o.has("event") {
        let step = read_step_fields(&mut o, e);
        let window_days = o.integer("window_days", 1, MAX_DAYS, e).unwrap_or(30);
        let (mut min_count, mut per_event, mut max_points) = (1, false, None);
        if scoring {
            per_event = o.boolean("per_event", e).unwrap_or(false);
            if per_event {
                max_points = o.number("max_points", 0.0, 1e9, e);
                if o.has("min_count") {
                    o.allow("min_count");
                    e.push(o.at("min_count"), "does not apply to a per_event rule");
                }
            } else {
                min_count = o.integer("min_count", 1, 1_000_000, e).unwrap_or(1);
                if o.has("max_points") {
                    o.allow("max_points");
                    e.push(o.at("max_points"), "applies only to a per_event rule");
                }
            }
        }
        step.map(|step| RuleKind::Event {
            step,
            window_days,
            min_count,
            per_event,
            max_points,
        })
    } else if let Some((wat, items)) = o.array("where", MAX_WHERE, e) {
        if items.is_empty() {
            e.push(wat.clone(), "must have at least one filter");
        }
        let filters: Vec<Filter> = items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| read_filter(v, &index(&wat, i), e))
            .collect();
        for (i, f) in filters.iter().enumerate() {
            if matches!(f, Filter::Cohort { .. }) {
                e.push(index(&wat, i), "must be a property filter");
            }
        }
        Some(RuleKind::Property { filters })
    } else {
        o.allow("where");
        e.push(
            at,
            "needs `event` (an event rule) or `where` (a property rule)",
        );
        None
    };
    o.finish(e);
    Some(Rule {
        id: id?,
        points: points?,
        kind: kind?,
    })
}

fn read_rules(
    o: &mut Obj<'_>,
    key: &'static str,
    max: usize,
    scoring: bool,
    e: &mut Errors,
) -> Vec<Rule> {
    let Some((at, items)) = o.array(key, max, e) else {
        return Vec::new();
    };
    let rules: Vec<Rule> = items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read_rule(v, &index(&at, i), scoring, e))
        .collect();
    for (i, r) in rules.iter().enumerate() {
        if rules[..i].iter().any(|x| x.id == r.id) {
            e.push(
                format!("{}.id", index(&at, i)),
                format!("`{}` is used twice", r.id),
            );
        }
    }
    rules
}

/// Parses a PQL model.
pub fn parse_model(body: &Value) -> Result<Model, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    let key = read_key(&mut o, &mut e);
    let name = o.required_string("name", MAX_NAME, &mut e);
    let description = o.string("description", 10_000, &mut e).unwrap_or_default();
    let unit = read_unit(&mut o, &mut e);
    let threshold = match o.get("threshold") {
        None => {
            e.push("threshold", "is required: the score of a qualified lead");
            None
        }
        Some(v) => match v.as_f64() {
            Some(t) if t > 0.0 && t <= 1e9 => Some(t),
            _ => {
                e.push("threshold", "must be a number above 0");
                None
            }
        },
    };
    let half_life_days = o.number("half_life_days", 0.01, MAX_DAYS as f64, &mut e);
    let rules = read_rules(&mut o, "rules", MAX_RULES, true, &mut e);
    if !o.has("rules") {
        e.push("rules", "is required: at least one scoring rule");
    }
    let disqualifiers = read_rules(&mut o, "disqualifiers", MAX_DISQUALIFIERS, false, &mut e);
    o.finish(&mut e);
    match (key, name, threshold) {
        (Some(key), Some(name), Some(threshold)) if e.0.is_empty() => Ok(Model {
            key,
            name,
            description,
            unit,
            threshold,
            half_life_days,
            rules,
            disqualifiers,
        }),
        _ => Err(e.0),
    }
}

fn rule_json(r: &Rule, scoring: bool) -> Value {
    let mut v = json!({"id": r.id});
    if scoring {
        v["points"] = json!(r.points);
    }
    match &r.kind {
        RuleKind::Event {
            step,
            window_days,
            min_count,
            per_event,
            max_points,
        } => {
            v["event"] = json!(step.event);
            if !step.properties.is_empty() {
                v["properties"] = json!(step.properties);
            }
            v["window_days"] = json!(window_days);
            if scoring {
                if *per_event {
                    v["per_event"] = json!(true);
                    if let Some(m) = max_points {
                        v["max_points"] = json!(m);
                    }
                } else {
                    v["min_count"] = json!(min_count);
                }
            }
        }
        RuleKind::Property { filters } => v["where"] = json!(filters),
    }
    v
}

impl Model {
    /// The definition in its API form (parses back to the same model).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "key": self.key,
            "name": self.name,
            "threshold": self.threshold,
            "rules": self.rules.iter().map(|r| rule_json(r, true)).collect::<Vec<_>>(),
            "disqualifiers": self.disqualifiers.iter().map(|r| rule_json(r, false)).collect::<Vec<_>>(),
        });
        if let Some(h) = self.half_life_days {
            v["half_life_days"] = json!(h);
        }
        if let Some(u) = &self.unit {
            v["unit"] = json!(u);
        }
        if !self.description.is_empty() {
            v["description"] = json!(self.description);
        }
        v
    }

    /// The event-based rules and disqualifiers, in the order of their scan bits (rules first).
    pub fn event_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .chain(&self.disqualifiers)
            .filter(|r| matches!(r.kind, RuleKind::Event { .. }))
    }

    /// The longest event window of the model, in days.
    pub fn longest_window_days(&self) -> u64 {
        self.event_rules()
            .filter_map(|r| match r.kind {
                RuleKind::Event { window_days, .. } => Some(window_days),
                RuleKind::Property { .. } => None,
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<impl std::fmt::Debug, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn models_round_trip() {
        let body = json!({"key": "pql", "name": "PQL", "threshold": 40, "half_life_days": 7, "unit": "company",
            "rules": [
                {"id": "a", "event": "x", "properties": [{"key": "plan", "value": "pro", "operator": "exact", "type": "event"}],
                 "window_days": 14, "min_count": 3, "points": 10},
                {"id": "b", "event": "y", "per_event": true, "points": 2.5, "max_points": 10, "window_days": 30},
                {"id": "c", "where": [{"key": "size", "operator": "gt", "value": 10, "type": "group", "group_type_index": 0}], "points": -5},
            ],
            "disqualifiers": [{"id": "d", "event": "deleted", "window_days": 90}]});
        let m = parse_model(&body).unwrap();
        assert_eq!(parse_model(&m.to_json()).unwrap(), m);
        assert_eq!(m.event_rules().count(), 3);
        assert_eq!(m.longest_window_days(), 90);
    }

    #[test]
    fn model_problems_are_reported_per_field() {
        assert_eq!(
            fields(parse_model(
                &json!({"key": "k", "name": "n", "threshold": 10,
                "rules": [{"id": "a", "event": "x", "points": 1, "max_points": 3},
                          {"id": "a", "event": "x", "points": 1, "per_event": true, "min_count": 2},
                          {"id": "c", "where": [], "points": "1"}],
                "disqualifiers": [{"id": "d", "event": "x", "points": 3}]})
            )),
            [
                "rules[0].max_points",
                "rules[1].min_count",
                "rules[2].points",
                "rules[2].where",
                "rules[1].id",
                "disqualifiers[0].points"
            ]
        );
        assert_eq!(
            fields(parse_model(&json!({"key": "k", "name": "n"}))),
            ["threshold", "rules"]
        );
        assert_eq!(
            fields(parse_model(
                &json!({"key": "k", "name": "n", "threshold": 5, "rules": [
                {"id": "a", "event": "x", "points": 1, "properties": [{"key": "e", "value": 1, "type": "person"}]}]})
            )),
            ["rules[0].properties[0]"]
        );
    }

    #[test]
    fn trials_round_trip_and_report_problems() {
        let t = parse_trial(&json!({"key": "t", "name": "T", "unit": "company", "length_days": 30,
            "started": {"event": "a"}, "activated": {"event": "b"},
            "converted": {"event": "c", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]}}))
        .unwrap();
        assert_eq!(parse_trial(&t.to_json()).unwrap(), t);
        assert_eq!(
            fields(parse_trial(
                &json!({"key": "t", "name": "T", "length_days": 0, "started": "a", "x": 1})
            )),
            ["started", "converted", "length_days", "x"]
        );
    }
}
