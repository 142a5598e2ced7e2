//! Dynamic cohorts: saved sets of persons defined by their person properties and their behaviour,
//! in PostHog's format (the `filters` object of a cohort).
//!
//! ```
//! use flywheel_query::cohort::{parse_cohort_filters, CohortNode};
//! use serde_json::json;
//!
//! let c = parse_cohort_filters(&json!({"properties": {"type": "AND", "values": [
//!     {"type": "person", "key": "plan", "value": "pro"},
//!     {"type": "behavioral", "key": "$pageview", "value": "performed_event",
//!      "time_value": 30, "time_interval": "day"},
//!     {"type": "cohort", "key": "id", "value": 4, "negation": true},
//! ]}})).unwrap();
//! assert_eq!(c.cohort_ids(), [4]);
//! assert_eq!(c.person_keys(), ["plan"]);
//! assert!(c.has_behaviour());
//!
//! let errors = parse_cohort_filters(&json!({"properties": {"type": "OR", "values": [
//!     {"type": "event", "key": "$browser", "value": "Chrome"},
//! ]}})).unwrap_err();
//! assert_eq!(errors[0].field, "properties.values[0].type");
//! ```
//!
//! # Format
//!
//! * `properties` is a group: `{"type": "AND" | "OR", "values": [node, …]}`, 1 to
//!   [`MAX_GROUP_VALUES`] nodes each, groups nested at most [`MAX_DEPTH`] deep.
//! * `{"type": "person", "key", "operator", "value"}`: a person-property filter, read and checked
//!   exactly as an insight's property filters are ([`PropertyFilter`]).
//! * `{"type": "cohort", "key": "id", "value": 4}`: membership of another cohort (resolved by the
//!   caller, who must also refuse cycles).
//! * `{"type": "behavioral", "key": <event>, "value": <kind>, …}`: the person did an event in a
//!   time window; see [`Behavioral`]. Of PostHog's kinds, `performed_event`,
//!   `performed_event_multiple` and `performed_event_first_time` are supported.
//! * Every leaf takes `"negation": true` to keep the persons who do *not* match it.
//!
//! As for insights, every problem is reported at once with the path of its field
//! (`properties.values[0].values[1].operator_value`), and unknown fields are reported.
//! Serializing a parsed definition gives the same format back (normalized: the operator of a
//! person filter and the `key` of a cohort leaf are always written, `negation` only when true,
//! `event_type` always as `events`); parsing that again gives the same value.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::date::{read_bound, resolve_from, shift_back, DateBound, Interval, RelativeUnit};
use crate::filter::{
    read_property_filter, EventRef, PropertyFilter, PropertyType, MAX_FILTERS, MAX_NAME,
};
use crate::read::{choice_value, index, named_enum, type_name, Errors, Named, Obj};
use crate::FieldError;

/// Most nodes in one group.
pub const MAX_GROUP_VALUES: usize = 100;
/// Groups nest at most this deep (the top-level group counts as one).
pub const MAX_DEPTH: usize = 5;
/// Largest `time_value` of a behavioural window (ten years of days).
pub const MAX_TIME_VALUE: u32 = 3650;
/// Largest cohort id, and largest `operator_value` (they must fit a signed 64-bit integer).
const MAX_ID: u64 = i64::MAX as u64;

/// The node types, for messages.
const NODE_TYPES: &str = "AND, OR, person, cohort, behavioral";
/// The supported behavioural kinds, for messages.
const KINDS: &str = "performed_event, performed_event_multiple, performed_event_first_time";
/// PostHog's behavioural kinds that Flywheel does not evaluate yet.
const UNSUPPORTED_KINDS: &[&str] = &[
    "performed_event_sequence",
    "performed_event_regularly",
    "stopped_performing_event",
    "restarted_performing_event",
];

named_enum! {
    /// How the nodes of a group combine.
    pub enum GroupOp {
        /// Every node must match.
        And = "AND",
        /// At least one node must match.
        Or = "OR",
    }
}

named_enum! {
    /// How a `performed_event_multiple` count is compared with its target (`operator`; `eq` is
    /// read as `exact`).
    pub enum CountOp {
        /// At least the target.
        Gte = "gte",
        /// More than the target.
        Gt = "gt",
        /// At most the target.
        Lte = "lte",
        /// Fewer than the target.
        Lt = "lt",
        /// Exactly the target.
        Exact = "exact",
    }
}

impl CountOp {
    /// Whether a count `n` satisfies this comparison with `target`.
    pub fn holds(&self, n: u64, target: u64) -> bool {
        match self {
            CountOp::Gte => n >= target,
            CountOp::Gt => n > target,
            CountOp::Lte => n <= target,
            CountOp::Lt => n < target,
            CountOp::Exact => n == target,
        }
    }
}

named_enum! {
    /// The unit of a relative behavioural window (`time_interval`).
    pub enum WindowUnit {
        /// Exactly 3600 seconds.
        Hour = "hour",
        /// Exactly 86 400 seconds (not a calendar day: a DST change does not stretch it).
        Day = "day",
        /// Exactly 7 × 86 400 seconds.
        Week = "week",
        /// A calendar month in the project's time zone.
        Month = "month",
        /// A calendar year in the project's time zone.
        Year = "year",
    }
}

/// The time window a behavioural condition looks at; it always ends now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// `"time_value": 30, "time_interval": "day"`: the last `amount` `unit`s.
    Relative {
        /// How many units (1 to [`MAX_TIME_VALUE`]).
        amount: u32,
        /// Which unit.
        unit: WindowUnit,
    },
    /// `"explicit_datetime": "-30d"` or `"2025-12-15"`: from this bound (read and resolved as a
    /// `date_from`) to now.
    Since(DateBound),
}

impl Window {
    /// The first instant of the window, given the current time and the project's time zone.
    ///
    /// * `Relative`: `now` minus the amount; hours, days and weeks are exact durations, months and
    ///   years calendar ones in `tz` (31 March minus one month is the last day of February, at the
    ///   same local time).
    /// * `Since`: the bound resolved as a `date_from` by day ([`crate::DateRange::resolve`]): a
    ///   date is its local midnight in `tz`; `-30d`, `-2w`, `-1m` the start of the local day that
    ///   far back; `-24h` (hours) the start of the hour that far back; an instant is itself.
    ///
    /// Saturates at the earliest representable instant if the window reaches beyond it.
    pub fn start<Tz: TimeZone>(&self, now: DateTime<Utc>, tz: &Tz) -> DateTime<Utc> {
        let start = match *self {
            Window::Relative { amount, unit } => {
                let n = i64::from(amount);
                match unit {
                    WindowUnit::Hour => now.checked_sub_signed(Duration::hours(n)),
                    WindowUnit::Day => now.checked_sub_signed(Duration::days(n)),
                    WindowUnit::Week => now.checked_sub_signed(Duration::weeks(n)),
                    WindowUnit::Month => shift_back(now, amount, RelativeUnit::Month, tz),
                    WindowUnit::Year => shift_back(now, amount, RelativeUnit::Year, tz),
                }
            }
            Window::Since(bound) => {
                let by = match bound {
                    DateBound::Relative {
                        unit: RelativeUnit::Hour,
                        ..
                    } => Interval::Hour,
                    _ => Interval::Day,
                };
                resolve_from(bound, now, tz, by).ok()
            }
        };
        start.unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            Window::Relative { amount, unit } => {
                m.serialize_entry("time_value", amount)?;
                m.serialize_entry("time_interval", unit)?;
            }
            Window::Since(bound) => m.serialize_entry("explicit_datetime", bound)?,
        }
        m.end()
    }
}

/// What a behavioural condition asks of the person's events in the window (`value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BehavioralKind {
    /// `performed_event`: at least once.
    Performed,
    /// `performed_event_multiple`: a number of times, compared with `operator` against
    /// `operator_value`.
    PerformedMultiple {
        /// The comparison (`operator`).
        op: CountOp,
        /// The target count (`operator_value`).
        count: u64,
    },
    /// `performed_event_first_time`: the person's first such event ever falls in the window.
    FirstTime,
}

impl BehavioralKind {
    /// The kind's name, as in `value`.
    pub fn name(&self) -> &'static str {
        match self {
            BehavioralKind::Performed => "performed_event",
            BehavioralKind::PerformedMultiple { .. } => "performed_event_multiple",
            BehavioralKind::FirstTime => "performed_event_first_time",
        }
    }

    /// Whether a person with `n` matching events in the window matches (for
    /// [`BehavioralKind::FirstTime`], `n` counts the events in the window that are the person's
    /// first ever: 0 or 1).
    pub fn matches_count(&self, n: u64) -> bool {
        match self {
            BehavioralKind::Performed | BehavioralKind::FirstTime => n >= 1,
            BehavioralKind::PerformedMultiple { op, count } => op.holds(n, *count),
        }
    }
}

impl Serialize for BehavioralKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("value", self.name())?;
        if let BehavioralKind::PerformedMultiple { op, count } = self {
            m.serialize_entry("operator", op)?;
            m.serialize_entry("operator_value", count)?;
        }
        m.end()
    }
}

/// A behavioural condition: the person did (`negate`: did not) an event, filtered by its
/// properties, as `kind` asks within `window`. Serializes as the whole leaf,
/// `{"type": "behavioral", "key": …, "value": …, …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavioral {
    /// The event (`key`; `"$all"` is any event).
    pub event: EventRef,
    /// What is asked of the events (`value`, with `operator` and `operator_value`).
    pub kind: BehavioralKind,
    /// When (`time_value` and `time_interval`, or `explicit_datetime`).
    pub window: Window,
    /// Filters on the event's own properties (all must hold); each of type `event`.
    pub event_filters: Vec<PropertyFilter>,
    /// True to keep the persons for whom the condition does *not* hold (`negation`).
    pub negate: bool,
}

impl Serialize for Behavioral {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct B<'a> {
            #[serde(rename = "type")]
            t: &'static str,
            key: &'a EventRef,
            #[serde(flatten)]
            kind: &'a BehavioralKind,
            #[serde(flatten)]
            window: &'a Window,
            event_type: &'static str,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            event_filters: &'a [PropertyFilter],
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            negation: bool,
        }
        B {
            t: "behavioral",
            key: &self.event,
            kind: &self.kind,
            window: &self.window,
            event_type: "events",
            event_filters: &self.event_filters,
            negation: self.negate,
        }
        .serialize(s)
    }
}

/// A node of a cohort definition: a group of nodes, or a condition on the person.
#[derive(Debug, Clone, PartialEq)]
pub enum CohortNode {
    /// `{"type": "AND" | "OR", "values": [...]}`.
    Group {
        /// How the nodes combine.
        op: GroupOp,
        /// 1 to [`MAX_GROUP_VALUES`] nodes.
        values: Vec<CohortNode>,
    },
    /// `{"type": "person", "key", "operator", "value"}`: a person property.
    Person {
        /// The filter; its `property_type` is [`PropertyType::Person`].
        filter: PropertyFilter,
        /// True to keep the persons who do *not* match the filter (`negation`).
        negate: bool,
    },
    /// `{"type": "cohort", "key": "id", "value": 4}`: membership of another cohort.
    Cohort {
        /// The cohort's id.
        id: u64,
        /// True to keep the persons *not* in that cohort (`negation`).
        negate: bool,
    },
    /// `{"type": "behavioral", ...}`: what the person did.
    Behavioral(Behavioral),
}

impl Serialize for CohortNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CohortNode::Group { op, values } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", op)?;
                m.serialize_entry("values", values)?;
                m.end()
            }
            CohortNode::Person { filter, negate } => {
                #[derive(Serialize)]
                struct P<'a> {
                    #[serde(flatten)]
                    filter: &'a PropertyFilter,
                    #[serde(skip_serializing_if = "std::ops::Not::not")]
                    negation: bool,
                }
                P {
                    filter,
                    negation: *negate,
                }
                .serialize(s)
            }
            CohortNode::Cohort { id, negate } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "cohort")?;
                m.serialize_entry("key", "id")?;
                m.serialize_entry("value", id)?;
                if *negate {
                    m.serialize_entry("negation", &true)?;
                }
                m.end()
            }
            CohortNode::Behavioral(b) => b.serialize(s),
        }
    }
}

impl CohortNode {
    /// Calls `f` on this node and every node below it, parents first.
    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a CohortNode)) {
        f(self);
        if let CohortNode::Group { values, .. } = self {
            for v in values {
                v.walk(f);
            }
        }
    }
}

/// A dynamic cohort's definition (its `filters`): serializes as `{"properties": root}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortDefinition {
    /// The top-level group (parsing requires a group here).
    #[serde(rename = "properties")]
    pub root: CohortNode,
}

impl CohortDefinition {
    /// The ids of the cohorts the definition refers to, sorted, without duplicates.
    pub fn cohort_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        self.root.walk(&mut |n| {
            if let CohortNode::Cohort { id, .. } = n {
                ids.push(*id);
            }
        });
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The person property keys the definition reads, sorted, without duplicates (event filters
    /// of behavioural conditions read event properties and are not included).
    pub fn person_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.root.walk(&mut |n| {
            if let CohortNode::Person { filter, .. } = n {
                keys.push(filter.key.clone());
            }
        });
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Whether any condition is behavioural (so membership changes with new events, not only
    /// with person properties).
    pub fn has_behaviour(&self) -> bool {
        let mut found = false;
        self.root
            .walk(&mut |n| found |= matches!(n, CohortNode::Behavioral(_)));
        found
    }
}

/// Parses and validates a cohort's `filters` object (`{"properties": {...}}`). Returns every
/// problem found, each naming its field (`properties.values[0].values[1].operator_value`).
pub fn parse_cohort_filters(v: &Value) -> Result<CohortDefinition, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(v, "", &mut e) else {
        return Err(e.0);
    };
    let root = match o.get("properties") {
        Some(p) => read_node(p, &o.at("properties"), 0, &mut e),
        None => {
            e.push(o.at("properties"), "is required");
            None
        }
    };
    o.finish(&mut e);
    match root {
        Some(root) if e.0.is_empty() => Ok(CohortDefinition { root }),
        _ => {
            if e.0.is_empty() {
                // Every path that yields no node reports why; this only guards that promise.
                e.push("properties", "is not a valid cohort definition");
            }
            Err(e.0)
        }
    }
}

/// Keys PostHog derives from a condition and stores with it.
const POSTHOG_DERIVED: [&str; 3] = ["conditionHash", "bytecode", "bytecode_error"];

/// Reads the node at `at`, inside `depth` groups (0: the top-level `properties`, which must be a
/// group).
fn read_node(v: &Value, at: &str, depth: usize, e: &mut Errors) -> Option<CohortNode> {
    let mut o = Obj::new(v, at, e)?;
    // What PostHog stores next to a condition (a hash of it, its compiled HogQL): definitions exported from
    // PostHog carry them; they are derived, so they are ignored.
    for derived in POSTHOG_DERIVED {
        o.allow(derived);
    }
    let t = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            e.push(
                o.at("type"),
                format!("must be one of {NODE_TYPES}, not {}", type_name(other)),
            );
            return None;
        }
        None => {
            e.push(o.at("type"), format!("is required: one of {NODE_TYPES}"));
            return None;
        }
    };
    if let Some(op) = GroupOp::from_name(t) {
        return read_group(o, op, depth, e);
    }
    if depth == 0 {
        e.push(
            o.at("type"),
            format!("must be AND or OR, not `{t}`: the top of a cohort definition is a group"),
        );
        return None;
    }
    match t {
        "person" => read_person(o, e),
        "cohort" => read_cohort(o, e),
        "behavioral" => read_behavioral(o, e),
        "event" | "group" => {
            e.push(
                o.at("type"),
                format!(
                    "cohorts are defined by person properties and behaviour: {t} properties \
                     are not allowed here (use type person, or behavioral with event_filters)"
                ),
            );
            // Still check the rest of the filter, to report every problem at once.
            read_property_filter(&mut o, e);
            o.boolean("negation", e);
            o.finish(e);
            None
        }
        _ => {
            e.push(
                o.at("type"),
                format!("must be one of {NODE_TYPES}, not `{t}`"),
            );
            None
        }
    }
}

fn read_group(mut o: Obj<'_>, op: GroupOp, depth: usize, e: &mut Errors) -> Option<CohortNode> {
    if depth >= MAX_DEPTH {
        e.push(
            o.path.clone(),
            format!("groups must not nest more than {MAX_DEPTH} deep"),
        );
        return None;
    }
    let values = match o.array("values", MAX_GROUP_VALUES, e) {
        Some((at, [])) => {
            e.push(at, "must have at least one entry");
            None
        }
        Some((at, items)) => {
            let mut nodes = Vec::with_capacity(items.len());
            let mut all = true;
            for (i, v) in items.iter().enumerate() {
                match read_node(v, &index(&at, i), depth + 1, e) {
                    Some(n) => nodes.push(n),
                    None => all = false,
                }
            }
            all.then_some(nodes)
        }
        None => {
            if !o.has("values") {
                e.push(o.at("values"), "is required");
            }
            None
        }
    };
    o.finish(e);
    Some(CohortNode::Group {
        op,
        values: values?,
    })
}

fn read_negation(o: &mut Obj<'_>, e: &mut Errors) -> bool {
    o.boolean("negation", e).unwrap_or(false)
}

fn read_person(mut o: Obj<'_>, e: &mut Errors) -> Option<CohortNode> {
    let filter = read_property_filter(&mut o, e);
    let negate = read_negation(&mut o, e);
    o.finish(e);
    Some(CohortNode::Person {
        filter: filter?,
        negate,
    })
}

fn read_cohort(mut o: Obj<'_>, e: &mut Errors) -> Option<CohortNode> {
    if let Some(k) = o.get("key") {
        if k.as_str() != Some("id") {
            e.push(
                o.at("key"),
                "must be `id` (or left out) for a cohort filter",
            );
        }
    }
    let id = if o.has("value") {
        o.integer("value", 1, MAX_ID, e)
    } else {
        o.allow("value");
        e.push(
            o.at("value"),
            "is required for a cohort filter: the cohort's id",
        );
        None
    };
    let negate = read_negation(&mut o, e);
    o.finish(e);
    Some(CohortNode::Cohort { id: id?, negate })
}

/// A behavioural `value`, before its `operator` and `operator_value` are read.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Performed,
    Multiple,
    FirstTime,
    /// One of [`UNSUPPORTED_KINDS`] (reported).
    Unsupported,
}

/// Reads the behavioural `value`; `None` when it is missing or unknown (reported).
fn read_kind(o: &mut Obj<'_>, e: &mut Errors) -> Option<Kind> {
    if !o.has("value") {
        o.allow("value");
        e.push(o.at("value"), format!("is required: one of {KINDS}"));
        return None;
    }
    let at = o.at("value");
    let kind = match o.get("value") {
        Some(Value::String(s)) => match s.as_str() {
            "performed_event" => Some(Kind::Performed),
            "performed_event_multiple" => Some(Kind::Multiple),
            "performed_event_first_time" => Some(Kind::FirstTime),
            s if UNSUPPORTED_KINDS.contains(&s) => {
                e.push(
                    at,
                    format!("`{s}` is not supported yet: use one of {KINDS}"),
                );
                Some(Kind::Unsupported)
            }
            s => {
                e.push(at, format!("must be one of {KINDS}, not `{s}`"));
                None
            }
        },
        Some(other) => {
            e.push(
                at,
                format!("must be one of {KINDS}, not {}", type_name(other)),
            );
            None
        }
        None => None,
    };
    kind
}

/// Reads `operator`, accepting `eq` for `exact`.
fn read_count_op(o: &mut Obj<'_>, e: &mut Errors) -> Option<CountOp> {
    let v = o.get("operator")?;
    if v.as_str() == Some("eq") {
        return Some(CountOp::Exact);
    }
    choice_value(v, &o.at("operator"), e)
}

fn read_window(o: &mut Obj<'_>, e: &mut Errors) -> Option<Window> {
    let has_value = o.has("time_value");
    let has_interval = o.has("time_interval");
    let has_explicit = o.has("explicit_datetime");
    // PostHog's UI stores the number as text (`"30"`).
    let amount = o
        .integer_or_digits("time_value", 1, MAX_TIME_VALUE as u64, e)
        .map(|n| n as u32);
    let unit = o.choice::<WindowUnit>("time_interval", e);
    let since = read_bound(o, "explicit_datetime", e);
    match (has_value || has_interval, has_explicit) {
        (true, true) => {
            e.push(
                o.at("explicit_datetime"),
                "cannot be combined with time_value and time_interval: give one or the other",
            );
            None
        }
        (false, false) => {
            e.push(
                o.at("time_value"),
                "is required (with time_interval), unless explicit_datetime is given",
            );
            None
        }
        (true, false) => {
            if !has_value {
                e.push(o.at("time_value"), "is required with time_interval");
            }
            if !has_interval {
                e.push(o.at("time_interval"), "is required with time_value");
            }
            Some(Window::Relative {
                amount: amount?,
                unit: unit?,
            })
        }
        (false, true) => since.map(Window::Since),
    }
}

/// Reads one entry of `event_filters`: a property filter of type `event`.
fn read_event_filter(v: &Value, at: &str, e: &mut Errors) -> Option<PropertyFilter> {
    let mut o = Obj::new(v, at, e)?;
    if let Some(t) = o.get("type").and_then(Value::as_str) {
        if t != PropertyType::Event.name() {
            e.push(
                o.at("type"),
                format!(
                    "must be `event`, not `{t}`: event_filters filter the event's own properties"
                ),
            );
        }
    }
    let filter = read_property_filter(&mut o, e);
    o.finish(e);
    filter.filter(|f| f.property_type == PropertyType::Event)
}

fn read_behavioral(mut o: Obj<'_>, e: &mut Errors) -> Option<CohortNode> {
    let event = o.required_string("key", MAX_NAME, e).map(EventRef::parse);
    let kind = read_kind(&mut o, e);
    if kind == Some(Kind::Unsupported) {
        // It has keys of its own (`seq_event`, `min_periods`, ...): stop here rather than call
        // them unknown.
        return None;
    }
    let (op, count) = match kind {
        Some(Kind::Multiple) => {
            for key in ["operator", "operator_value"] {
                if !o.has(key) {
                    e.push(o.at(key), "is required for performed_event_multiple");
                }
            }
            (
                read_count_op(&mut o, e),
                o.integer("operator_value", 0, MAX_ID, e),
            )
        }
        Some(_) => {
            for key in ["operator", "operator_value"] {
                o.allow(key);
                if o.has(key) {
                    e.push(o.at(key), "is only used with performed_event_multiple");
                }
            }
            (None, None)
        }
        // The kind is wrong: whether these belong cannot be told.
        None => {
            o.allow("operator");
            o.allow("operator_value");
            (None, None)
        }
    };
    let window = read_window(&mut o, e);
    if let Some(v) = o.get("event_type") {
        if v.as_str() != Some("events") {
            let msg = match v.as_str() {
                Some("actions") => "must be `events`: actions are not supported yet",
                _ => "must be `events`",
            };
            e.push(o.at("event_type"), msg);
        }
    }
    let mut event_filters = Vec::new();
    let mut filters_ok = true;
    if let Some((at, items)) = o.array("event_filters", MAX_FILTERS, e) {
        for (i, v) in items.iter().enumerate() {
            match read_event_filter(v, &index(&at, i), e) {
                Some(f) => event_filters.push(f),
                None => filters_ok = false,
            }
        }
    }
    let negate = read_negation(&mut o, e);
    o.finish(e);
    let kind = match kind? {
        Kind::Unsupported => return None,
        Kind::Performed => BehavioralKind::Performed,
        Kind::FirstTime => BehavioralKind::FirstTime,
        Kind::Multiple => BehavioralKind::PerformedMultiple {
            op: op?,
            count: count?,
        },
    };
    if !filters_ok {
        return None;
    }
    Some(CohortNode::Behavioral(Behavioral {
        event: event?,
        kind,
        window: window?,
        event_filters,
        negate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Operator;
    use chrono::NaiveDate;
    use chrono_tz::America::New_York;
    use serde_json::json;

    fn only_error(v: Value) -> FieldError {
        let errors = parse_cohort_filters(&v).expect_err("should not parse");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap()
    }

    fn assert_error(v: Value, field: &str, message: &str) {
        let e = only_error(v);
        assert_eq!(e.field, field, "{e:?}");
        assert!(e.message.contains(message), "{e:?} should say {message:?}");
    }

    fn fields(v: Value) -> Vec<String> {
        parse_cohort_filters(&v)
            .expect_err("should not parse")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    /// A definition with one node in a top-level AND group.
    fn one(node: Value) -> Value {
        json!({"properties": {"type": "AND", "values": [node]}})
    }

    /// A valid behavioural leaf with `changes` applied (`null` removes a key).
    fn beh(changes: Value) -> Value {
        let mut v = json!({"type": "behavioral", "key": "a", "value": "performed_event",
                           "time_value": 7, "time_interval": "day"});
        for (k, x) in changes.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        v
    }

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    #[test]
    fn round_trip_of_a_rich_definition() {
        let input = json!({"properties": {"type": "OR", "values": [
            {"type": "AND", "values": [
                {"type": "person", "key": "plan", "operator": "exact", "value": "pro"},
                {"type": "person", "key": "email", "operator": "is_set", "negation": false},
                {"type": "person", "key": "age", "operator": "gte", "value": 18, "negation": true},
                {"type": "behavioral", "value": "performed_event_multiple", "key": "task_completed",
                 "operator": "gte", "operator_value": 3, "time_value": 30, "time_interval": "day"},
                {"type": "cohort", "key": "id", "value": 4, "negation": true},
                {"type": "cohort", "value": 9, "negation": false}
            ]},
            {"type": "behavioral", "value": "performed_event", "key": "$pageview",
             "explicit_datetime": "2025-12-15", "event_type": "events",
             "event_filters": [{"key": "$browser", "operator": "exact", "value": "Chrome", "type": "event"}]},
            {"type": "behavioral", "value": "performed_event_multiple", "key": "$all", "operator": "eq",
             "operator_value": 0, "time_value": 2, "time_interval": "month", "negation": true},
            {"type": "behavioral", "value": "performed_event_first_time", "key": "signed_up",
             "explicit_datetime": "-30d", "operator": null},
            {"type": "behavioral", "value": "performed_event", "key": "purchase",
             "explicit_datetime": "2025-12-15T10:00:00+01:00",
             "event_filters": [{"key": "amount", "operator": "gt", "value": 10}]}
        ]}});
        let parsed = parse_cohort_filters(&input).unwrap();

        let CohortNode::Group { op, values } = &parsed.root else {
            panic!("root is not a group: {parsed:?}")
        };
        assert_eq!(*op, GroupOp::Or);
        assert_eq!(values.len(), 5);
        let CohortNode::Group { op, values: inner } = &values[0] else {
            panic!("{:?}", values[0])
        };
        assert_eq!(*op, GroupOp::And);
        assert_eq!(
            inner[2],
            CohortNode::Person {
                filter: PropertyFilter {
                    key: "age".into(),
                    value: Some(json!(18)),
                    operator: Operator::Gte,
                    property_type: PropertyType::Person,
                    group_type_index: None,
                },
                negate: true,
            }
        );
        assert_eq!(
            inner[5],
            CohortNode::Cohort {
                id: 9,
                negate: false
            }
        );
        assert_eq!(
            values[1],
            CohortNode::Behavioral(Behavioral {
                event: EventRef::Named("$pageview".into()),
                kind: BehavioralKind::Performed,
                window: Window::Since(DateBound::Date(
                    NaiveDate::from_ymd_opt(2025, 12, 15).unwrap()
                )),
                event_filters: vec![PropertyFilter {
                    key: "$browser".into(),
                    value: Some(json!("Chrome")),
                    operator: Operator::Exact,
                    property_type: PropertyType::Event,
                    group_type_index: None,
                }],
                negate: false,
            })
        );
        assert_eq!(
            values[2],
            CohortNode::Behavioral(Behavioral {
                event: EventRef::All,
                kind: BehavioralKind::PerformedMultiple {
                    op: CountOp::Exact,
                    count: 0
                },
                window: Window::Relative {
                    amount: 2,
                    unit: WindowUnit::Month
                },
                event_filters: vec![],
                negate: true,
            })
        );

        let out = serde_json::to_value(&parsed).unwrap();
        let expected = json!({"properties": {"type": "OR", "values": [
            {"type": "AND", "values": [
                {"type": "person", "key": "plan", "operator": "exact", "value": "pro"},
                {"type": "person", "key": "email", "operator": "is_set"},
                {"type": "person", "key": "age", "operator": "gte", "value": 18, "negation": true},
                {"type": "behavioral", "key": "task_completed", "value": "performed_event_multiple",
                 "operator": "gte", "operator_value": 3, "time_value": 30, "time_interval": "day",
                 "event_type": "events"},
                {"type": "cohort", "key": "id", "value": 4, "negation": true},
                {"type": "cohort", "key": "id", "value": 9}
            ]},
            {"type": "behavioral", "key": "$pageview", "value": "performed_event",
             "explicit_datetime": "2025-12-15", "event_type": "events",
             "event_filters": [{"key": "$browser", "operator": "exact", "value": "Chrome", "type": "event"}]},
            {"type": "behavioral", "key": "$all", "value": "performed_event_multiple",
             "operator": "exact", "operator_value": 0, "time_value": 2, "time_interval": "month",
             "event_type": "events", "negation": true},
            {"type": "behavioral", "key": "signed_up", "value": "performed_event_first_time",
             "explicit_datetime": "-30d", "event_type": "events"},
            {"type": "behavioral", "key": "purchase", "value": "performed_event",
             "explicit_datetime": "2025-12-15T10:00:00+01:00", "event_type": "events",
             "event_filters": [{"key": "amount", "operator": "gt", "value": 10, "type": "event"}]}
        ]}});
        assert_eq!(out, expected);
        assert_eq!(parse_cohort_filters(&out), Ok(parsed));
    }

    #[test]
    fn whole_body_errors() {
        assert_error(json!([]), "body", "must be an object");
        assert_error(json!({}), "properties", "is required");
        assert_error(json!({"properties": []}), "properties", "must be an object");
        assert_error(
            json!({"properties": {"type": "person", "key": "plan", "value": "pro"}}),
            "properties.type",
            "must be AND or OR",
        );
        assert_error(
            json!({"properties": {"values": [{"type": "cohort", "value": 1}]}}),
            "properties.type",
            "is required",
        );
    }

    #[test]
    fn group_errors() {
        assert_error(
            json!({"properties": {"type": "AND", "values": []}}),
            "properties.values",
            "at least one",
        );
        assert_error(
            json!({"properties": {"type": "OR"}}),
            "properties.values",
            "is required",
        );
        assert_error(
            json!({"properties": {"type": "OR", "values": {"type": "cohort", "value": 1}}}),
            "properties.values",
            "must be an array",
        );
        let many = vec![json!({"type": "cohort", "value": 1}); MAX_GROUP_VALUES + 1];
        assert_error(
            json!({"properties": {"type": "OR", "values": many}}),
            "properties.values",
            "at most 100",
        );
        let hundred = vec![json!({"type": "cohort", "value": 1}); MAX_GROUP_VALUES];
        assert!(
            parse_cohort_filters(&json!({"properties": {"type": "OR", "values": hundred}})).is_ok()
        );
        assert_error(
            one(json!({"type": "and", "values": [{"type": "cohort", "value": 1}]})),
            "properties.values[0].type",
            "must be one of AND, OR, person, cohort, behavioral, not `and`",
        );
        assert_error(
            one(json!({"type": 1})),
            "properties.values[0].type",
            "not a number",
        );
    }

    #[test]
    fn depth_limit() {
        fn nest(groups: usize) -> Value {
            let mut v = json!({"type": "person", "key": "plan", "value": "pro"});
            for _ in 0..groups {
                v = json!({"type": "AND", "values": [v]});
            }
            json!({ "properties": v })
        }
        assert!(parse_cohort_filters(&nest(MAX_DEPTH)).is_ok());
        assert_error(
            nest(MAX_DEPTH + 1),
            "properties.values[0].values[0].values[0].values[0].values[0]",
            "must not nest more than 5 deep",
        );
        // Far deeper input is cut off at the limit, with one error.
        assert_eq!(fields(nest(100)).len(), 1);
    }

    #[test]
    fn event_and_group_properties_are_refused() {
        assert_error(
            one(json!({"type": "event", "key": "$browser", "value": "Chrome"})),
            "properties.values[0].type",
            "cohorts are defined by person properties and behaviour",
        );
        assert_error(
            one(json!({"type": "group", "group_type_index": 0, "key": "plan", "value": "pro"})),
            "properties.values[0].type",
            "cohorts are defined by person properties and behaviour",
        );
        // The rest of such a leaf is still checked.
        assert_eq!(
            fields(one(
                json!({"type": "event", "key": "$browser", "operator": "like"})
            )),
            [
                "properties.values[0].type",
                "properties.values[0].operator",
                "properties.values[0].value"
            ]
        );
    }

    #[test]
    fn person_leaf_errors() {
        let p = |extra: Value| {
            let mut v = json!({"type": "person", "key": "plan", "value": "pro"});
            for (k, x) in extra.as_object().unwrap() {
                if x.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            one(v)
        };
        assert_error(
            p(json!({"operator": "between"})),
            "properties.values[0].operator",
            "must be one of exact",
        );
        assert_error(
            p(json!({"value": null})),
            "properties.values[0].value",
            "is required",
        );
        assert_error(
            p(json!({"operator": "gt", "value": "many"})),
            "properties.values[0].value",
            "must be a number",
        );
        assert_error(
            p(json!({"key": null})),
            "properties.values[0].key",
            "is required",
        );
        assert_error(
            p(json!({"negation": "yes"})),
            "properties.values[0].negation",
            "must be true or false",
        );
        assert_error(
            p(json!({"group_type_index": 0})),
            "properties.values[0].group_type_index",
            "only allowed with type group",
        );
        assert_error(
            p(json!({"label": "Plan"})),
            "properties.values[0].label",
            "unknown field",
        );
        // Negation defaults to false.
        let c = parse_cohort_filters(&p(json!({}))).unwrap();
        let CohortNode::Group { values, .. } = &c.root else {
            panic!()
        };
        assert!(matches!(
            values[0],
            CohortNode::Person { negate: false, .. }
        ));
    }

    #[test]
    fn cohort_leaf_errors() {
        assert_error(
            one(json!({"type": "cohort", "key": "id"})),
            "properties.values[0].value",
            "is required",
        );
        assert_error(
            one(json!({"type": "cohort", "value": 0})),
            "properties.values[0].value",
            "must be a whole number from 1",
        );
        assert_error(
            one(json!({"type": "cohort", "value": "4"})),
            "properties.values[0].value",
            "must be a whole number, not a string",
        );
        assert_error(
            one(json!({"type": "cohort", "key": "name", "value": 4})),
            "properties.values[0].key",
            "must be `id`",
        );
        assert_error(
            one(json!({"type": "cohort", "value": 4, "negation": 1})),
            "properties.values[0].negation",
            "must be true or false",
        );
        // The insight form of a cohort reference is not this one.
        assert_eq!(
            fields(one(json!({"type": "cohort", "id": 4}))),
            ["properties.values[0].value", "properties.values[0].id"]
        );
    }

    #[test]
    fn behavioral_kind_errors() {
        assert!(parse_cohort_filters(&one(beh(json!({})))).is_ok());
        assert_error(
            one(beh(json!({"key": null}))),
            "properties.values[0].key",
            "is required",
        );
        assert_error(
            one(beh(json!({"value": null}))),
            "properties.values[0].value",
            "is required",
        );
        assert_error(
            one(beh(json!({"value": "did_stuff"}))),
            "properties.values[0].value",
            "must be one of performed_event, performed_event_multiple, performed_event_first_time, not `did_stuff`",
        );
        assert_error(
            one(beh(json!({"value": true}))),
            "properties.values[0].value",
            "not a boolean",
        );
        for kind in UNSUPPORTED_KINDS {
            // Their own keys are not reported as unknown.
            assert_error(
                one(beh(
                    json!({"value": kind, "seq_event": "b", "seq_time_value": 3, "min_periods": 2}),
                )),
                "properties.values[0].value",
                &format!("`{kind}` is not supported yet"),
            );
        }
    }

    #[test]
    fn behavioral_count_errors() {
        let multiple = |x: Value| {
            let mut v = beh(
                json!({"value": "performed_event_multiple", "operator": "gte",
                                   "operator_value": 3}),
            );
            for (k, x) in x.as_object().unwrap() {
                if x.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            v
        };
        assert!(parse_cohort_filters(&one(multiple(json!({})))).is_ok());
        // The path from the brief: a second leaf of a nested group.
        assert_error(
            json!({"properties": {"type": "OR", "values": [{"type": "AND", "values": [
                {"type": "person", "key": "plan", "value": "pro"},
                multiple(json!({"operator_value": null})),
            ]}]}}),
            "properties.values[0].values[1].operator_value",
            "is required for performed_event_multiple",
        );
        assert_error(
            one(multiple(json!({"operator": null}))),
            "properties.values[0].operator",
            "is required for performed_event_multiple",
        );
        assert_error(
            one(multiple(json!({"operator": "ne"}))),
            "properties.values[0].operator",
            "must be one of gte, gt, lte, lt, exact, not `ne`",
        );
        assert_error(
            one(multiple(json!({"operator_value": -1}))),
            "properties.values[0].operator_value",
            "must be a whole number from 0",
        );
        assert_error(
            one(multiple(json!({"operator_value": 2.5}))),
            "properties.values[0].operator_value",
            "must be a whole number from 0",
        );
        for kind in ["performed_event", "performed_event_first_time"] {
            assert_error(
                one(beh(json!({"value": kind, "operator": "gte"}))),
                "properties.values[0].operator",
                "is only used with performed_event_multiple",
            );
            assert_error(
                one(beh(json!({"value": kind, "operator_value": 2}))),
                "properties.values[0].operator_value",
                "is only used with performed_event_multiple",
            );
        }
    }

    #[test]
    fn behavioral_window_errors() {
        assert_error(
            one(beh(json!({"time_value": 0}))),
            "properties.values[0].time_value",
            "from 1 to 3650",
        );
        assert_error(
            one(beh(json!({"time_value": 3651}))),
            "properties.values[0].time_value",
            "from 1 to 3650",
        );
        assert!(parse_cohort_filters(&one(beh(json!({"time_value": 3650})))).is_ok());
        // PostHog's UI writes the number as text; other text is refused.
        let text = parse_cohort_filters(&one(beh(json!({"time_value": "30"})))).unwrap();
        let number = parse_cohort_filters(&one(beh(json!({"time_value": 30})))).unwrap();
        assert_eq!(text, number);
        assert_error(
            one(beh(json!({"time_value": "thirty"}))),
            "properties.values[0].time_value",
            "not `thirty`",
        );
        // PostHog's derived keys are ignored, not reported as unknown.
        assert!(parse_cohort_filters(&one(beh(
            json!({"conditionHash": "ab12", "bytecode": ["_H", 1], "bytecode_error": null})
        )))
        .is_ok());
        assert_error(
            one(beh(json!({"time_interval": "minute"}))),
            "properties.values[0].time_interval",
            "must be one of hour, day, week, month, year, not `minute`",
        );
        assert_error(
            one(beh(json!({"explicit_datetime": "-30d"}))),
            "properties.values[0].explicit_datetime",
            "cannot be combined with time_value and time_interval",
        );
        assert_error(
            one(beh(
                json!({"time_value": null, "explicit_datetime": "-30d"}),
            )),
            "properties.values[0].explicit_datetime",
            "cannot be combined",
        );
        assert_error(
            one(beh(json!({"time_value": null, "time_interval": null}))),
            "properties.values[0].time_value",
            "unless explicit_datetime is given",
        );
        assert_error(
            one(beh(json!({"time_interval": null}))),
            "properties.values[0].time_interval",
            "is required with time_value",
        );
        assert_error(
            one(beh(json!({"time_value": null}))),
            "properties.values[0].time_value",
            "is required with time_interval",
        );
        let since = |d: Value| {
            one(beh(json!({"time_value": null, "time_interval": null,
                                              "explicit_datetime": d})))
        };
        for ok in [
            "-30d",
            "-2w",
            "-24h",
            "2025-12-15",
            "2025-12-15T10:00:00Z",
            "mtd",
        ] {
            assert!(parse_cohort_filters(&since(json!(ok))).is_ok(), "{ok}");
        }
        assert_error(
            since(json!("yesterday")),
            "properties.values[0].explicit_datetime",
            "is not a date",
        );
        assert_error(
            since(json!(20251215)),
            "properties.values[0].explicit_datetime",
            "must be a string",
        );
    }

    #[test]
    fn behavioral_event_type_and_filter_errors() {
        assert!(parse_cohort_filters(&one(beh(json!({"event_type": "events"})))).is_ok());
        assert_error(
            one(beh(json!({"event_type": "actions"}))),
            "properties.values[0].event_type",
            "actions are not supported yet",
        );
        assert_error(
            one(beh(json!({"event_type": 1}))),
            "properties.values[0].event_type",
            "must be `events`",
        );
        assert_error(
            one(beh(json!({"negation": "no"}))),
            "properties.values[0].negation",
            "must be true or false",
        );
        assert_error(
            one(beh(
                json!({"event_filters": [{"type": "person", "key": "plan", "value": "pro"}]}),
            )),
            "properties.values[0].event_filters[0].type",
            "must be `event`, not `person`",
        );
        assert_error(
            one(beh(json!({"event_filters": [
                {"key": "$browser", "value": "Chrome"},
                {"key": "$browser", "operator": "like", "value": "Chrome"}
            ]}))),
            "properties.values[0].event_filters[1].operator",
            "must be one of exact",
        );
        assert_error(
            one(beh(json!({"event_filters": {"key": "$browser"}}))),
            "properties.values[0].event_filters",
            "must be an array",
        );
        let many = vec![json!({"key": "$browser", "value": "Chrome"}); MAX_FILTERS + 1];
        assert_error(
            one(beh(json!({ "event_filters": many }))),
            "properties.values[0].event_filters",
            "at most 100",
        );
        // An event filter without a type is an event filter.
        let c = parse_cohort_filters(&one(beh(
            json!({"event_filters": [{"key": "$browser", "value": "Chrome"}]}),
        )))
        .unwrap();
        let CohortNode::Group { values, .. } = &c.root else {
            panic!()
        };
        let CohortNode::Behavioral(b) = &values[0] else {
            panic!()
        };
        assert_eq!(b.event_filters[0].property_type, PropertyType::Event);
    }

    #[test]
    fn unknown_keys_are_reported() {
        let v = json!({"properties": {"type": "AND", "label": "x", "values": [
            {"type": "person", "key": "plan", "value": "pro", "label": "Plan"},
            {"type": "cohort", "value": 3, "name": "Power users"},
            {"type": "behavioral", "key": "a", "value": "performed_event",
             "time_value": 7, "time_interval": "day", "seq_event": "b",
             "event_filters": [{"key": "$browser", "value": "Chrome", "negation": true}]}
        ]}, "groups": []});
        assert_eq!(
            fields(v),
            [
                "properties.values[0].label",
                "properties.values[1].name",
                "properties.values[2].event_filters[0].negation",
                "properties.values[2].seq_event",
                "properties.label",
                "groups",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let v = json!({"properties": {"type": "OR", "values": [
            {"type": "person", "key": "plan", "operator": "gt", "value": "x"},
            {"type": "AND", "values": []},
            {"type": "cohort", "value": -4},
            beh(json!({"value": "performed_event_multiple", "time_interval": "fortnight"})),
        ]}});
        assert_eq!(
            fields(v),
            [
                "properties.values[0].value",
                "properties.values[1].values",
                "properties.values[2].value",
                "properties.values[3].operator",
                "properties.values[3].operator_value",
                "properties.values[3].time_interval",
            ]
        );
    }

    #[test]
    fn cohort_ids_person_keys_and_behaviour() {
        let c = parse_cohort_filters(&json!({"properties": {"type": "OR", "values": [
            {"type": "cohort", "value": 9},
            {"type": "AND", "values": [
                {"type": "person", "key": "plan", "value": "pro"},
                {"type": "cohort", "value": 4, "negation": true},
                {"type": "person", "key": "email", "operator": "is_set"},
                {"type": "OR", "values": [
                    {"type": "cohort", "value": 9},
                    {"type": "person", "key": "plan", "operator": "is_not", "value": "free"},
                ]},
            ]},
            {"type": "cohort", "value": 2},
        ]}}))
        .unwrap();
        assert_eq!(c.cohort_ids(), [2, 4, 9]);
        assert_eq!(c.person_keys(), ["email", "plan"]);
        assert!(!c.has_behaviour());

        let b = parse_cohort_filters(&json!({"properties": {"type": "AND", "values": [
            {"type": "OR", "values": [beh(json!({
                "event_filters": [{"key": "$browser", "value": "Chrome"}]
            }))]},
        ]}}))
        .unwrap();
        assert!(b.has_behaviour());
        assert!(b.cohort_ids().is_empty());
        // Event filters read event properties, not person ones.
        assert!(b.person_keys().is_empty());
    }

    #[test]
    fn relative_window_starts() {
        let now = at(2026, 3, 31, 12, 0);
        let rel = |amount, unit| Window::Relative { amount, unit }.start(now, &Utc);
        assert_eq!(rel(5, WindowUnit::Hour), at(2026, 3, 31, 7, 0));
        assert_eq!(rel(2, WindowUnit::Day), at(2026, 3, 29, 12, 0));
        assert_eq!(rel(1, WindowUnit::Week), at(2026, 3, 24, 12, 0));
        // No 31 February: the month's last day.
        assert_eq!(rel(1, WindowUnit::Month), at(2026, 2, 28, 12, 0));
        assert_eq!(rel(3, WindowUnit::Month), at(2025, 12, 31, 12, 0));
        assert_eq!(rel(2, WindowUnit::Year), at(2024, 3, 31, 12, 0));
        let leap = Window::Relative {
            amount: 1,
            unit: WindowUnit::Year,
        };
        assert_eq!(
            leap.start(at(2024, 2, 29, 12, 0), &Utc),
            at(2023, 2, 28, 12, 0)
        );

        // Days are exact: across New York's DST start (02:00 on 8 March 2026) a day is still 24
        // hours (the calendar day before 08:00 EDT on 8 March would be 08:00 EST, 13:00Z).
        let day = Window::Relative {
            amount: 1,
            unit: WindowUnit::Day,
        };
        assert_eq!(
            day.start(at(2026, 3, 8, 12, 0), &New_York),
            at(2026, 3, 7, 12, 0)
        );
        // Months are calendar months at the same local time: 08:00 EDT on 31 March is 08:00 EST
        // on 28 February.
        let month = Window::Relative {
            amount: 1,
            unit: WindowUnit::Month,
        };
        assert_eq!(month.start(now, &New_York), at(2026, 2, 28, 13, 0));

        // Saturates instead of failing.
        let near_start = DateTime::<Utc>::MIN_UTC + Duration::hours(1);
        let hours = Window::Relative {
            amount: 2,
            unit: WindowUnit::Hour,
        };
        assert_eq!(hours.start(near_start, &Utc), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn explicit_window_starts() {
        let since = |s: &str| Window::Since(s.parse().unwrap());
        let now = at(2026, 3, 31, 12, 34);
        // A date is its local midnight: EST is UTC-5 in December.
        assert_eq!(
            since("2025-12-15").start(now, &New_York),
            at(2025, 12, 15, 5, 0)
        );
        assert_eq!(since("2025-12-15").start(now, &Utc), at(2025, 12, 15, 0, 0));
        // Relative days: the start of the local day that far back (1 March, still EST).
        assert_eq!(since("-30d").start(now, &New_York), at(2026, 3, 1, 5, 0));
        // 17 March is after the DST change: EDT, UTC-4.
        assert_eq!(since("-2w").start(now, &New_York), at(2026, 3, 17, 4, 0));
        assert_eq!(since("-1m").start(now, &Utc), at(2026, 2, 28, 0, 0));
        // Hours keep the hour.
        assert_eq!(since("-24h").start(now, &Utc), at(2026, 3, 30, 12, 0));
        assert_eq!(
            since("2025-12-15T10:00:00+01:00").start(now, &New_York),
            at(2025, 12, 15, 9, 0)
        );
        assert_eq!(
            since("2025-12-15T09:30:00").start(now, &New_York),
            at(2025, 12, 15, 14, 30)
        );
        assert_eq!(since("mtd").start(now, &New_York), at(2026, 3, 1, 5, 0));
    }

    #[test]
    fn count_ops() {
        let cases = [
            (CountOp::Gte, 3, 3, true),
            (CountOp::Gte, 2, 3, false),
            (CountOp::Gt, 3, 3, false),
            (CountOp::Gt, 4, 3, true),
            (CountOp::Lte, 3, 3, true),
            (CountOp::Lte, 4, 3, false),
            (CountOp::Lt, 2, 3, true),
            (CountOp::Lt, 3, 3, false),
            (CountOp::Exact, 3, 3, true),
            (CountOp::Exact, 4, 3, false),
            (CountOp::Exact, 0, 0, true),
            (CountOp::Lt, 0, 0, false),
        ];
        for (op, n, target, want) in cases {
            assert_eq!(op.holds(n, target), want, "{n} {op} {target}");
        }
        let twice = BehavioralKind::PerformedMultiple {
            op: CountOp::Gte,
            count: 2,
        };
        assert!(!twice.matches_count(1));
        assert!(twice.matches_count(2));
        assert!(!BehavioralKind::Performed.matches_count(0));
        assert!(BehavioralKind::FirstTime.matches_count(1));
    }
}
