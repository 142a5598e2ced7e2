//! Retention: of the persons who did the start event in a period (a cohort), how many did the
//! return event in each following period.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Serialize;

use crate::date::{floor, next_boundary, DateBound, DateRange, Interval, TimeRange};
use crate::filter::{
    read_aggregation, read_breakdown, read_event_key, read_filters, Aggregation, Breakdown,
    EventSpec, Filter,
};
use crate::read::{named_enum, Errors, Obj};
use crate::{normalize_breakdown, FieldError};

/// Periods when none are given.
pub const DEFAULT_PERIODS: u32 = 8;
/// Most periods.
pub const MAX_PERIODS: u32 = 120;

named_enum! {
    /// Who forms a cohort.
    pub enum RetentionCohort {
        /// Persons doing the start event for the first time ever in that period.
        FirstTime = "first_time",
        /// Persons doing the start event in that period, whether or not they did it before.
        Recurring = "recurring",
    }
}

named_enum! {
    /// The retention period.
    pub enum RetentionPeriod {
        /// Days.
        Day = "day",
        /// Weeks (Monday to Sunday).
        Week = "week",
        /// Calendar months.
        Month = "month",
    }
}

impl RetentionPeriod {
    /// The bucket interval of this period.
    pub fn interval(self) -> Interval {
        match self {
            RetentionPeriod::Day => Interval::Day,
            RetentionPeriod::Week => Interval::Week,
            RetentionPeriod::Month => Interval::Month,
        }
    }
}

named_enum! {
    /// When a return counts for period N.
    pub enum RetentionMode {
        /// Returned in period N itself.
        On = "on",
        /// Returned in period N or any later one ("unbounded" retention).
        OnOrAfter = "on_or_after",
    }
}

/// A retention insight. Its range is not a `date_from`: it is the `periods` periods ending with
/// the one holding `date_to` (default now), as in PostHog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionQuery {
    /// What puts a person in a cohort.
    pub start_event: EventSpec,
    /// What counts as coming back.
    pub return_event: EventSpec,
    /// Default `first_time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cohort: Option<RetentionCohort>,
    /// Default `week`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<RetentionPeriod>,
    /// Number of periods (cohorts, and columns of the table); default 8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub periods: Option<u32>,
    /// Default `on`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<RetentionMode>,
    /// The end of the last period (default: now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_to: Option<DateBound>,
    /// Filters on every event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Filter>,
    /// Leave out the project's test accounts.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub filter_test_accounts: bool,
    /// Split cohorts by a property or cohorts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<Breakdown>,
    /// Default `person`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<Aggregation>,
}

pub(crate) fn read(o: &mut Obj<'_>, e: &mut Errors) -> RetentionQuery {
    let start_event = read_event_key(o, "start_event", e);
    let return_event = read_event_key(o, "return_event", e);
    let cohort = o.choice::<RetentionCohort>("cohort", e);
    let period = o.choice::<RetentionPeriod>("period", e);
    let periods = o
        .integer("periods", 1, MAX_PERIODS as u64, e)
        .map(|n| n as u32);
    let mode = o.choice::<RetentionMode>("mode", e);
    if o.has("date_from") {
        o.allow("date_from");
        e.push(
            o.at("date_from"),
            "retention covers `periods` periods ending at date_to; set those instead",
        );
    }
    if o.has("interval") {
        o.allow("interval");
        e.push(o.at("interval"), "retention uses `period`, not interval");
    }
    let range = crate::date::read_date_range(o, e);
    let properties = read_filters(o, e);
    let filter_test_accounts = o.boolean("filter_test_accounts", e).unwrap_or(false);
    let breakdown = read_breakdown(o, e);
    let aggregation = read_aggregation(o, e);
    let placeholder = || EventSpec {
        event: crate::filter::EventRef::All,
        name: None,
        properties: Vec::new(),
    };
    RetentionQuery {
        start_event: start_event.unwrap_or_else(placeholder),
        return_event: return_event.unwrap_or_else(placeholder),
        cohort,
        period,
        periods,
        mode,
        date_to: range.date_to,
        properties,
        filter_test_accounts,
        breakdown,
        aggregation,
    }
}

impl RetentionQuery {
    /// Fills in defaults: cohort `first_time`, period `week`, 8 periods, mode `on`,
    /// aggregation `person`, breakdown limit 25. Idempotent.
    pub fn normalize(&mut self) {
        self.cohort.get_or_insert(RetentionCohort::FirstTime);
        self.period.get_or_insert(RetentionPeriod::Week);
        self.periods.get_or_insert(DEFAULT_PERIODS);
        self.mode.get_or_insert(RetentionMode::On);
        self.aggregation.get_or_insert(Aggregation::Person);
        normalize_breakdown(&mut self.breakdown);
    }

    /// The `periods` whole periods ending with the one holding `date_to` (or now).
    pub fn resolve<Tz: TimeZone>(
        &self,
        now: DateTime<Utc>,
        tz: &Tz,
    ) -> Result<TimeRange, FieldError> {
        let interval = self.period.unwrap_or(RetentionPeriod::Week).interval();
        let periods = self.periods.unwrap_or(DEFAULT_PERIODS).max(1);
        let end = DateRange {
            date_from: None,
            date_to: self.date_to,
        }
        .resolve_to(now, tz, interval)?;
        let second = Duration::seconds(1);
        // The end of the period holding the last instant of the range.
        let to = next_boundary(floor(end - second, interval, tz), interval, tz);
        let mut from = floor(to - second, interval, tz);
        for _ in 1..periods {
            from = floor(from - second, interval, tz);
        }
        DateRange {
            date_from: Some(DateBound::Instant(from.fixed_offset())),
            date_to: Some(DateBound::Instant(to.fixed_offset())),
        }
        .resolve(now, tz, interval)
    }
}
