//! Lifecycle: per interval, the persons doing an event who are new (first time ever), returning
//! (also active in the previous interval), resurrecting (active before, but not in the previous
//! interval) and dormant (active in the previous interval, not in this one; counted negative).

use serde::Serialize;

use crate::date::{DateBound, RelativeUnit};
use crate::filter::{read_cohort_breakdown, read_event_key, Breakdown, EventRef, EventSpec};
use crate::read::{Errors, Obj};
use crate::{read_common, Common};

/// A lifecycle insight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleQuery {
    /// The event (a name, or an object with `event`, `name` and `properties`).
    pub event: EventSpec,
    /// A cohort breakdown (`{"type": "cohort", "ids": [..]}`): the answer once per cohort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
    /// Date range, filters, interval (default `day`).
    #[serde(flatten)]
    pub common: Common,
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> LifecycleQuery {
    let event = read_event_key(o, "event", e);
    let breakdown = read_cohort_breakdown(o, e, "lifecycle");
    let common = read_common(o, e);
    LifecycleQuery {
        event: event.unwrap_or(EventSpec {
            event: EventRef::All,
            name: None,
            properties: Vec::new(),
        }),
        breakdown,
        common,
    }
}

impl LifecycleQuery {
    /// Fills in defaults: `date_from` `-7d`, interval `day`. Idempotent.
    pub fn normalize(&mut self) {
        self.common.normalize(DateBound::Relative {
            amount: 7,
            unit: RelativeUnit::Day,
        });
    }
}
