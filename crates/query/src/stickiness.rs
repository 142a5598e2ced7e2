//! Stickiness: how many persons did an event on exactly N of the intervals (days by default) of
//! the range, for N = 1, 2, ….

use serde::Serialize;

use crate::date::{DateBound, RelativeUnit};
use crate::filter::{read_cohort_breakdown, read_event_key, Breakdown, EventRef, EventSpec};
use crate::read::{Errors, Obj};
use crate::{read_common, Common};

/// A stickiness insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickinessQuery {
    /// The event (a name, or an object with `event`, `name` and `properties`).
    pub event: EventSpec,
    /// A cohort breakdown (`{"type": "cohort", "ids": [..]}`): the answer once per cohort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
    /// Date range, filters, and the interval counted (default `day`).
    #[serde(flatten)]
    pub common: Common,
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> StickinessQuery {
    let event = read_event_key(o, "event", e);
    let breakdown = read_cohort_breakdown(o, e, "stickiness");
    let common = read_common(o, e);
    StickinessQuery {
        event: event.unwrap_or(EventSpec {
            event: EventRef::All,
            name: None,
            properties: Vec::new(),
        }),
        breakdown,
        common,
    }
}

impl StickinessQuery {
    /// Fills in defaults: `date_from` `-7d`, interval `day`. Idempotent.
    pub fn normalize(&mut self) {
        self.common.normalize(DateBound::Relative {
            amount: 7,
            unit: RelativeUnit::Day,
        });
    }
}
