//! Stickiness: how many persons did an event on exactly N of the intervals (days by default) of
//! the range, for N = 1, 2, ….

use serde::Serialize;

use crate::date::{DateBound, RelativeUnit};
use crate::filter::{read_event_key, EventRef, EventSpec};
use crate::read::{Errors, Obj};
use crate::{read_common, Common};

/// A stickiness insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickinessQuery {
    /// The event (a name, or an object with `event`, `name` and `properties`).
    pub event: EventSpec,
    /// Date range, filters, and the interval counted (default `day`).
    #[serde(flatten)]
    pub common: Common,
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> StickinessQuery {
    let event = read_event_key(o, "event", e);
    let common = read_common(o, e);
    StickinessQuery {
        event: event.unwrap_or(EventSpec {
            event: EventRef::All,
            name: None,
            properties: Vec::new(),
        }),
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
