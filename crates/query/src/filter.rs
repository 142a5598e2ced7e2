//! The parts every insight shares: events, property filters, cohort references, breakdowns and
//! aggregation targets.

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::read::{index, named_enum, type_name, Errors, Obj};

/// Longest event name, property key or label accepted (characters).
pub const MAX_NAME: usize = 400;
/// Most filters in one list.
pub const MAX_FILTERS: usize = 100;
/// Most values in an `exact`/`is_not` list.
pub const MAX_VALUES: usize = 1000;
/// Group type indexes run from 0 to this (PostHog's limit of five group types).
pub const MAX_GROUP_TYPE_INDEX: u8 = 4;
/// Breakdown limit when none is given.
pub const DEFAULT_BREAKDOWN_LIMIT: u32 = 25;
/// Largest breakdown limit.
pub const MAX_BREAKDOWN_LIMIT: u32 = 1000;

/// Which events a series or step counts: one event name, or every event (`"$all"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventRef {
    /// Every event.
    All,
    /// Events of this name.
    Named(String),
}

impl EventRef {
    /// An event name as written: `"$all"` is every event.
    pub(crate) fn parse(s: String) -> Self {
        if s == "$all" {
            EventRef::All
        } else {
            EventRef::Named(s)
        }
    }
}

impl Serialize for EventRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventRef::All => s.serialize_str("$all"),
            EventRef::Named(n) => s.serialize_str(n),
        }
    }
}

/// Reads the required `event` key of an object.
pub(crate) fn read_event(o: &mut Obj<'_>, e: &mut Errors) -> Option<EventRef> {
    o.required_string("event", MAX_NAME, e).map(EventRef::parse)
}

named_enum! {
    /// How a property filter compares.
    pub enum Operator {
        /// Equal to the value, or to any of a list of values.
        Exact = "exact",
        /// Not equal to the value (nor any of a list).
        IsNot = "is_not",
        /// The string contains the value (case-insensitive, as PostHog's `icontains`).
        Contains = "contains",
        /// The string does not contain the value (case-insensitive).
        NotContains = "not_contains",
        /// Matches the regular expression.
        Regex = "regex",
        /// Does not match the regular expression.
        NotRegex = "not_regex",
        /// Greater than a number.
        Gt = "gt",
        /// Greater than or equal to a number.
        Gte = "gte",
        /// Less than a number.
        Lt = "lt",
        /// Less than or equal to a number.
        Lte = "lte",
        /// The property is present (and not null).
        IsSet = "is_set",
        /// The property is absent or null.
        IsNotSet = "is_not_set",
    }
}

named_enum! {
    /// Whose property a filter or breakdown reads.
    pub enum PropertyType {
        /// A property of the event.
        Event = "event",
        /// A property of the (merged) person.
        Person = "person",
        /// A property of a group (with `group_type_index`).
        Group = "group",
    }
}

/// One property filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyFilter {
    /// Property name.
    pub key: String,
    /// The operand; absent for `is_set` / `is_not_set`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// How to compare (default `exact`).
    pub operator: Operator,
    /// Whose property (default `event`).
    #[serde(rename = "type")]
    pub property_type: PropertyType,
    /// Which group type, for `type: group`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_type_index: Option<u8>,
}

/// An entry of a `properties` list: a property filter, or membership of a saved cohort.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// A property filter.
    Property(PropertyFilter),
    /// `{"type": "cohort", "id": 7}`: the person is in cohort 7 (`"negate": true`: is not). The
    /// cohort itself is resolved by the caller; this crate only holds the reference.
    Cohort {
        /// The cohort's id.
        id: u64,
        /// True to keep persons *not* in the cohort.
        negate: bool,
    },
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Filter::Property(p) => p.serialize(s),
            Filter::Cohort { id, negate } => {
                #[derive(Serialize)]
                struct C {
                    #[serde(rename = "type")]
                    t: &'static str,
                    id: u64,
                    #[serde(skip_serializing_if = "std::ops::Not::not")]
                    negate: bool,
                }
                C {
                    t: "cohort",
                    id: *id,
                    negate: *negate,
                }
                .serialize(s)
            }
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Reads a group type index in 0..=4.
pub(crate) fn read_group_type_index(o: &mut Obj<'_>, e: &mut Errors) -> Option<u8> {
    o.integer("group_type_index", 0, MAX_GROUP_TYPE_INDEX as u64, e)
        .map(|n| n as u8)
}

/// Reads a property type with its group type index, which is required for `group` and refused
/// otherwise.
fn read_property_type(o: &mut Obj<'_>, e: &mut Errors) -> (PropertyType, Option<u8>) {
    let t = o
        .choice::<PropertyType>("type", e)
        .unwrap_or(PropertyType::Event);
    let has_index = o.has("group_type_index");
    let gti = read_group_type_index(o, e);
    match t {
        PropertyType::Group if !has_index => {
            e.push(o.at("group_type_index"), "is required for type group");
        }
        PropertyType::Event | PropertyType::Person if has_index => {
            e.push(o.at("group_type_index"), "is only allowed with type group");
        }
        _ => {}
    }
    (t, gti.filter(|_| t == PropertyType::Group))
}

/// Reads one filter at `at`.
pub(crate) fn read_filter(v: &Value, at: &str, e: &mut Errors) -> Option<Filter> {
    let mut o = Obj::new(v, at, e)?;
    if o.get("type").and_then(Value::as_str) == Some("cohort") {
        let id = if o.has("id") {
            o.integer("id", 1, i64::MAX as u64, e)
        } else {
            o.allow("id");
            e.push(o.at("id"), "is required for a cohort filter");
            None
        };
        let negate = o.boolean("negate", e).unwrap_or(false);
        o.finish(e);
        return id.map(|id| Filter::Cohort { id, negate });
    }
    let p = read_property_filter(&mut o, e);
    o.finish(e);
    p.map(Filter::Property)
}

/// Reads the keys of a property filter (`key`, `operator`, `type`, `group_type_index`, `value`)
/// from an object, leaving its other keys to the caller (who then calls [`Obj::finish`]).
pub(crate) fn read_property_filter(o: &mut Obj<'_>, e: &mut Errors) -> Option<PropertyFilter> {
    let key = o.required_string("key", MAX_NAME, e);
    let operator = o
        .choice::<Operator>("operator", e)
        .unwrap_or(Operator::Exact);
    let (property_type, group_type_index) = read_property_type(o, e);
    let value = o.get("value").cloned();
    let vat = o.at("value");
    match operator {
        Operator::IsSet | Operator::IsNotSet => {
            if value.is_some() {
                e.push(vat, format!("must be left out for operator {operator}"));
            }
        }
        Operator::Exact | Operator::IsNot => match &value {
            None => e.push(vat, "is required"),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    e.push(vat, "must not be an empty list");
                } else if items.len() > MAX_VALUES {
                    e.push(vat, format!("must have at most {MAX_VALUES} values"));
                } else if let Some(i) = items.iter().position(|v| !is_scalar(v)) {
                    e.push(index(&vat, i), "must be a string, number or boolean");
                }
            }
            Some(v) if !is_scalar(v) => {
                e.push(vat, "must be a string, number, boolean or a list of them")
            }
            Some(_) => {}
        },
        Operator::Contains | Operator::NotContains => match &value {
            None => e.push(vat, "is required"),
            Some(Value::String(s)) if s.is_empty() => e.push(vat, "must not be empty"),
            Some(Value::String(_)) => {}
            Some(v) => e.push(vat, format!("must be a string, not {}", type_name(v))),
        },
        Operator::Regex | Operator::NotRegex => match &value {
            None => e.push(vat, "is required"),
            Some(Value::String(s)) => {
                if let Err(err) = regex::RegexBuilder::new(s).size_limit(1 << 20).build() {
                    let msg = err.to_string();
                    let last = msg.lines().last().unwrap_or("").trim().to_string();
                    e.push(vat, format!("is not a valid regular expression: {last}"));
                }
            }
            Some(v) => e.push(vat, format!("must be a string, not {}", type_name(v))),
        },
        Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => match &value {
            None => e.push(vat, "is required"),
            Some(Value::Number(_)) => {}
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {}
            Some(_) => e.push(vat, format!("must be a number for operator {operator}")),
        },
    }
    Some(PropertyFilter {
        key: key?,
        value,
        operator,
        property_type,
        group_type_index,
    })
}

/// Reads an optional `properties` list of filters.
pub(crate) fn read_filters(o: &mut Obj<'_>, e: &mut Errors) -> Vec<Filter> {
    let Some((at, items)) = o.array("properties", MAX_FILTERS, e) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read_filter(v, &index(&at, i), e))
        .collect()
}

/// What a breakdown splits by.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BreakdownBy {
    /// An event property.
    Event {
        /// Property name.
        property: String,
    },
    /// A person property.
    Person {
        /// Property name.
        property: String,
    },
    /// A property of a group of one type.
    Group {
        /// Which group type.
        group_type_index: u8,
        /// Property name.
        property: String,
    },
    /// Membership of saved cohorts: one breakdown value per cohort (a person in two cohorts
    /// counts in both).
    Cohort {
        /// The cohorts, by id.
        ids: Vec<u64>,
    },
}

/// A breakdown: the top `limit` values by volume each get their own result, the rest are summed
/// into one "other" value (`$$_posthog_breakdown_other_$$` in PostHog, `$other` here).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    /// What to split by.
    #[serde(flatten)]
    pub by: BreakdownBy,
    /// How many values to keep (default 25; not used for cohorts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most cohorts in one cohort breakdown.
pub const MAX_BREAKDOWN_COHORTS: usize = 50;

/// Reads an optional `breakdown` object.
pub(crate) fn read_breakdown(o: &mut Obj<'_>, e: &mut Errors) -> Option<Breakdown> {
    let v = o.get("breakdown")?;
    let at = o.at("breakdown");
    let mut b = Obj::new(v, &at, e)?;
    let t = b.get("type").and_then(Value::as_str);
    let by = if t == Some("cohort") {
        b.allow("type");
        let ids = match b.array("ids", MAX_BREAKDOWN_COHORTS, e) {
            Some((_, [])) => {
                e.push(b.at("ids"), "must name at least one cohort");
                None
            }
            Some((ids_at, items)) => {
                let mut ids = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    match v.as_u64().filter(|&n| n >= 1) {
                        Some(id) if ids.contains(&id) => {
                            e.push(index(&ids_at, i), "duplicate cohort");
                        }
                        Some(id) => ids.push(id),
                        None => e.push(
                            index(&ids_at, i),
                            "must be a cohort id (a positive whole number)",
                        ),
                    }
                }
                Some(ids)
            }
            None => {
                if !b.has("ids") {
                    e.push(b.at("ids"), "is required for a cohort breakdown");
                }
                None
            }
        };
        if b.has("limit") {
            b.allow("limit");
            e.push(b.at("limit"), "is not used by a cohort breakdown");
        }
        b.finish(e);
        return ids.map(|ids| Breakdown {
            by: BreakdownBy::Cohort { ids },
            limit: None,
        });
    } else {
        let property = b.required_string("property", MAX_NAME, e);
        let (t, gti) = read_property_type(&mut b, e);
        property.map(|property| match t {
            PropertyType::Event => BreakdownBy::Event { property },
            PropertyType::Person => BreakdownBy::Person { property },
            PropertyType::Group => BreakdownBy::Group {
                group_type_index: gti.unwrap_or(0),
                property,
            },
        })
    };
    let limit = b
        .integer("limit", 1, MAX_BREAKDOWN_LIMIT as u64, e)
        .map(|n| n as u32);
    b.finish(e);
    Some(Breakdown { by: by?, limit })
}

/// Reads an optional `breakdown` that must be by cohorts (`kind` names the insight kind in the error).
pub(crate) fn read_cohort_breakdown(
    o: &mut Obj<'_>,
    e: &mut Errors,
    kind: &str,
) -> Option<Breakdown> {
    let b = read_breakdown(o, e)?;
    if !matches!(b.by, BreakdownBy::Cohort { .. }) {
        e.push(
            o.at("breakdown.type"),
            format!(
                "{kind} breaks down by cohorts only (`{{\"type\": \"cohort\", \"ids\": [..]}}`)"
            ),
        );
        return None;
    }
    Some(b)
}

/// Whose conversions or returns are counted: persons, or groups of one type (account-level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Aggregation {
    /// Unique persons (after identity merges).
    #[default]
    Person,
    /// Unique groups of this type.
    Group(u8),
}

impl Serialize for Aggregation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Aggregation::Person => s.serialize_str("person"),
            Aggregation::Group(i) => s.serialize_str(&format!("group:{i}")),
        }
    }
}

/// Reads an optional `aggregation`: `"person"` or `"group:<index>"`.
pub(crate) fn read_aggregation(o: &mut Obj<'_>, e: &mut Errors) -> Option<Aggregation> {
    let v = o.get("aggregation")?;
    let at = o.at("aggregation");
    let parsed = match v.as_str() {
        Some("person") => Some(Aggregation::Person),
        Some(s) => s
            .strip_prefix("group:")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|&n| n <= MAX_GROUP_TYPE_INDEX && !s.contains('+'))
            .map(Aggregation::Group),
        None => None,
    };
    if parsed.is_none() {
        e.push(
            at,
            format!("must be `person` or `group:<0-{MAX_GROUP_TYPE_INDEX}>`"),
        );
    }
    parsed
}

/// An event with its own filters: a funnel step, a retention event, a stickiness or lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSpec {
    /// The event.
    pub event: EventRef,
    /// A display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Filters on this event only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Filter>,
}

/// Reads an event spec at `at`; `extra` reads further keys of the same object.
pub(crate) fn read_event_spec<'a, T>(
    v: &'a Value,
    at: &str,
    e: &mut Errors,
    extra: impl FnOnce(&mut Obj<'a>, &mut Errors) -> T,
) -> Option<(EventSpec, T)> {
    let mut o = Obj::new(v, at, e)?;
    let event = read_event(&mut o, e);
    let name = o.string("name", MAX_NAME, e);
    let properties = read_filters(&mut o, e);
    let t = extra(&mut o, e);
    o.finish(e);
    Some((
        EventSpec {
            event: event?,
            name,
            properties,
        },
        t,
    ))
}

/// Reads a required event-spec key of an object.
/// A string is shorthand for `{"event": <string>}`.
pub(crate) fn read_event_key(
    o: &mut Obj<'_>,
    key: &'static str,
    e: &mut Errors,
) -> Option<EventSpec> {
    match o.get(key) {
        Some(Value::String(_)) => o.string(key, MAX_NAME, e).map(|s| EventSpec {
            event: EventRef::parse(s),
            name: None,
            properties: Vec::new(),
        }),
        Some(v) => read_event_spec(v, &o.at(key), e, |_, _| ()).map(|(s, ())| s),
        None => {
            e.push(o.at(key), "is required");
            None
        }
    }
}
