//! Funnels: how many persons (or groups) go through a sequence of steps within a conversion window.

use chrono::Duration;
use serde::{Serialize, Serializer};

use crate::date::{DateBound, RelativeUnit};
use crate::filter::{
    read_aggregation, read_breakdown, read_event_spec, Aggregation, Breakdown, EventSpec,
};
use crate::read::{index, named_enum, Errors, Obj};
use crate::{normalize_breakdown, read_common, Common};

/// Fewest steps.
pub const MIN_STEPS: usize = 2;
/// Most steps.
pub const MAX_STEPS: usize = 20;
/// Most exclusions.
pub const MAX_EXCLUSIONS: usize = 20;
/// Longest conversion window, in days.
pub const MAX_WINDOW_DAYS: i64 = 366;

named_enum! {
    /// How steps must follow each other.
    pub enum FunnelOrder {
        /// In this order, other events allowed in between.
        Ordered = "ordered",
        /// In this order, with no other event of the person in between.
        Strict = "strict",
        /// All steps, in any order.
        Unordered = "unordered",
    }
}

named_enum! {
    /// The unit of a conversion window.
    pub enum WindowUnit {
        /// Seconds.
        Second = "second",
        /// Minutes.
        Minute = "minute",
        /// Hours.
        Hour = "hour",
        /// Days (24 hours).
        Day = "day",
        /// Weeks (7 × 24 hours).
        Week = "week",
        /// Months, counted as 30 days.
        Month = "month",
    }
}

/// How long a person has from the first step to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConversionWindow {
    /// How many units (at least 1).
    pub value: u32,
    /// Which unit.
    pub unit: WindowUnit,
}

impl ConversionWindow {
    /// The default: 14 days.
    pub const DEFAULT: ConversionWindow = ConversionWindow {
        value: 14,
        unit: WindowUnit::Day,
    };

    /// The window as a duration (months are 30 days).
    pub fn duration(&self) -> Duration {
        let v = self.value as i64;
        match self.unit {
            WindowUnit::Second => Duration::seconds(v),
            WindowUnit::Minute => Duration::minutes(v),
            WindowUnit::Hour => Duration::hours(v),
            WindowUnit::Day => Duration::days(v),
            WindowUnit::Week => Duration::weeks(v),
            WindowUnit::Month => Duration::days(30 * v),
        }
    }
}

/// A step that must *not* happen between two steps; persons who do it are left out of the
/// funnel from `from_step` on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exclusion {
    /// The excluded event, with its filters.
    #[serde(flatten)]
    pub step: EventSpec,
    /// First step of the span (0-based; default 0).
    pub from_step: usize,
    /// Last step of the span (default the last step).
    pub to_step: usize,
}

/// Which step's breakdown value a person is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The value at the first step.
    FirstTouch,
    /// The value at the last step reached.
    LastTouch,
    /// The value at this step (0-based).
    Step(usize),
}

impl Serialize for Attribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Attribution::FirstTouch => s.serialize_str("first_touch"),
            Attribution::LastTouch => s.serialize_str("last_touch"),
            Attribution::Step(n) => s.serialize_str(&format!("step:{n}")),
        }
    }
}

/// A funnel insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelQuery {
    /// 2 to 20 steps.
    pub steps: Vec<EventSpec>,
    /// Date range (of the first step), filters, interval (for `trends`).
    #[serde(flatten)]
    pub common: Common,
    /// Default 14 days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion_window: Option<ConversionWindow>,
    /// Default `ordered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<FunnelOrder>,
    /// Steps that disqualify.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<Exclusion>,
    /// Split by a property or cohorts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
    /// Default `first_touch` when there is a breakdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown_attribution: Option<Attribution>,
    /// Default `person`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<Aggregation>,
    /// Conversion rate per interval (by the bucket of the first step) instead of the steps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trends: bool,
}

fn read_window(o: &mut Obj<'_>, e: &mut Errors) -> Option<ConversionWindow> {
    let v = o.get("conversion_window")?;
    let mut w = Obj::new(v, &o.at("conversion_window"), e)?;
    let value = if w.has("value") {
        w.integer("value", 1, u32::MAX as u64, e)
    } else {
        w.allow("value");
        e.push(w.at("value"), "is required");
        None
    };
    let unit = if w.has("unit") {
        w.choice::<WindowUnit>("unit", e)
    } else {
        w.allow("unit");
        e.push(w.at("unit"), "is required");
        None
    };
    let at_value = w.at("value");
    w.finish(e);
    let window = ConversionWindow {
        value: value? as u32,
        unit: unit?,
    };
    if window.duration() > Duration::days(MAX_WINDOW_DAYS) {
        e.push(
            at_value,
            format!("the window must be at most {MAX_WINDOW_DAYS} days"),
        );
        return None;
    }
    Some(window)
}

fn read_attribution(o: &mut Obj<'_>, e: &mut Errors) -> Option<Attribution> {
    let v = o.get("breakdown_attribution")?;
    let parsed = match v.as_str() {
        Some("first_touch") => Some(Attribution::FirstTouch),
        Some("last_touch") => Some(Attribution::LastTouch),
        Some(s) => s
            .strip_prefix("step:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<usize>().ok())
            .map(Attribution::Step),
        None => None,
    };
    if parsed.is_none() {
        e.push(
            o.at("breakdown_attribution"),
            "must be first_touch, last_touch or step:<index>",
        );
    }
    parsed
}

fn read_step_index(o: &mut Obj<'_>, key: &'static str, e: &mut Errors) -> Option<usize> {
    o.integer(key, 0, (MAX_STEPS - 1) as u64, e)
        .map(|n| n as usize)
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> FunnelQuery {
    let mut steps = Vec::new();
    match o.array("steps", MAX_STEPS, e) {
        Some((at, items)) => {
            for (i, v) in items.iter().enumerate() {
                if let Some((s, ())) = read_event_spec(v, &index(&at, i), e, |_, _| ()) {
                    steps.push(s);
                }
            }
            if items.len() < MIN_STEPS {
                e.push(
                    at,
                    format!("must have from {MIN_STEPS} to {MAX_STEPS} steps"),
                );
            }
        }
        None if !o.has("steps") => e.push(o.at("steps"), "is required"),
        None => {}
    }
    let mut exclusions = Vec::new();
    if let Some((at, items)) = o.array("exclusions", MAX_EXCLUSIONS, e) {
        for (i, v) in items.iter().enumerate() {
            let r = read_event_spec(v, &index(&at, i), e, |x, e| {
                (
                    read_step_index(x, "from_step", e),
                    read_step_index(x, "to_step", e),
                    x.has("from_step"),
                    x.has("to_step"),
                )
            });
            if let Some((step, (from, to, has_from, has_to))) = r {
                if (has_from && from.is_none()) || (has_to && to.is_none()) {
                    continue;
                }
                exclusions.push(Exclusion {
                    step,
                    from_step: from.unwrap_or(0),
                    // Filled with the last step by `normalize`.
                    to_step: to.unwrap_or(usize::MAX),
                });
            }
        }
    }
    let common = read_common(o, e);
    let conversion_window = read_window(o, e);
    let order = o.choice::<FunnelOrder>("order", e);
    let breakdown = read_breakdown(o, e);
    let breakdown_attribution = read_attribution(o, e);
    let aggregation = read_aggregation(o, e);
    let trends = o.boolean("trends", e).unwrap_or(false);
    FunnelQuery {
        steps,
        common,
        conversion_window,
        order,
        exclusions,
        breakdown,
        breakdown_attribution,
        aggregation,
        trends,
    }
}

impl FunnelQuery {
    /// Fills in defaults: `date_from` `-7d`, interval `day`, window 14 days, order `ordered`,
    /// aggregation `person`, attribution `first_touch` (with a breakdown), breakdown limit 25,
    /// exclusions spanning to the last step. Idempotent.
    pub fn normalize(&mut self) {
        self.common.normalize(DateBound::Relative {
            amount: 7,
            unit: RelativeUnit::Day,
        });
        self.conversion_window
            .get_or_insert(ConversionWindow::DEFAULT);
        self.order.get_or_insert(FunnelOrder::Ordered);
        self.aggregation.get_or_insert(Aggregation::Person);
        if self.breakdown.is_some() {
            self.breakdown_attribution
                .get_or_insert(Attribution::FirstTouch);
        }
        normalize_breakdown(&mut self.breakdown);
        let last = self.steps.len().saturating_sub(1);
        for x in &mut self.exclusions {
            if x.to_step == usize::MAX {
                x.to_step = last.max(1);
            }
        }
    }

    pub(crate) fn check(&self, e: &mut Errors) {
        let n = self.steps.len();
        if self.order == Some(FunnelOrder::Unordered) && !self.exclusions.is_empty() {
            e.push("exclusions", "are not supported by unordered funnels");
        }
        for (i, x) in self.exclusions.iter().enumerate() {
            let at = index("exclusions", i);
            if n >= MIN_STEPS && x.to_step >= n {
                e.push(
                    format!("{at}.to_step"),
                    format!("must be a step index below {n}"),
                );
            } else if x.from_step >= x.to_step {
                e.push(format!("{at}.from_step"), "must be before to_step");
            } else if let Some(j) = (x.from_step..=x.to_step.min(n.saturating_sub(1))).find(|&j| {
                self.steps[j].event == x.step.event && self.steps[j].properties == x.step.properties
            }) {
                e.push(
                    format!("{at}.event"),
                    format!(
                        "is the same as step {j}: an exclusion cannot be one of the steps it spans"
                    ),
                );
            }
        }
        match self.breakdown_attribution {
            Some(_) if self.breakdown.is_none() => {
                e.push("breakdown_attribution", "is only used with a breakdown");
            }
            Some(Attribution::Step(s)) if n >= MIN_STEPS && s >= n => {
                e.push(
                    "breakdown_attribution",
                    format!("step:{s} names no step: steps run from 0 to {}", n - 1),
                );
            }
            _ => {}
        }
    }
}
