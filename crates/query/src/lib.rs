//! Flywheel's insight definitions: the JSON bodies that
//! `POST /api/v1/projects/{project_id}/insights/{kind}` accepts, for the kinds `trends`, `funnel`,
//! `retention`, `stickiness` and `lifecycle`; their parsing, validation and normalisation; and the
//! resolution of their date ranges to UTC instants and buckets in the project's time zone. Also
//! the definitions of dynamic cohorts (persons selected by person properties and behaviour), in
//! the [`cohort`] module. Pure: no I/O, no async, no global state.
//!
//! ```
//! use flywheel_query::{parse, InsightKind, InsightQuery};
//! use serde_json::json;
//!
//! let q = parse(InsightKind::Trends, &json!({
//!     "series": [{"event": "$pageview", "math": "dau"}, {"event": "signed_up"}],
//!     "formula": "B/A",
//!     "date_from": "-30d",
//! })).unwrap();
//! let InsightQuery::Trends(t) = &q else { unreachable!() };
//! assert_eq!(t.common.interval, Some(flywheel_query::Interval::Day)); // filled by normalize
//!
//! let errors = parse(InsightKind::Funnel, &json!({"steps": [{"event": "a"}], "order": "any"}))
//!     .unwrap_err();
//! assert_eq!(errors[0].field, "steps");
//! assert_eq!(errors[1].field, "order");
//! ```
//!
//! # Design
//!
//! * [`parse`] walks the JSON value by hand (module `read`) instead of using a derived
//!   `Deserialize`, so that it reports **every** problem at once, each with the path of its field
//!   (`series[1].math_property`, `exclusions[0].to_step`), and names unknown fields. A field that
//!   fails to read is reported once; the checks that depend on it do not report it again.
//! * Defaults are kept out of the parsed value (`Option`s, so a definition serializes back as the
//!   user wrote it) and filled in by `normalize`, which [`parse`] runs before the cross-field
//!   checks. Serializing a normalized definition and parsing it again gives the same value.
//! * Date ranges resolve with [`InsightQuery::resolve`]; see the [`date`] module for the exact
//!   semantics (PostHog's: relative starts are rounded down to their bucket, `-7d` by day is 8
//!   buckets ending with today; weeks start on Monday).
//! * In insights, cohorts appear only as references (`{"type": "cohort", "id": 7}` in
//!   `properties`, a `{"type": "cohort", "ids": [..]}` breakdown); resolving them is the caller's
//!   job. A dynamic cohort's own definition (PostHog's `filters`: AND/OR groups of person-property,
//!   cohort-membership and behavioural conditions) parses with [`parse_cohort_filters`], which
//!   reports problems in the same way, to a [`CohortDefinition`].

pub mod cohort;
pub mod dashboard;
pub mod date;
pub mod experiment;
pub mod filter;
pub mod formula;
pub mod funnel;
pub mod growth;
pub mod lifecycle;
pub mod plan;
pub mod pql;
mod read;
pub mod retention;
pub mod rollout;
pub mod stickiness;
pub mod trends;
pub mod viral;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

pub use cohort::{
    parse_cohort_filters, Behavioral, BehavioralKind, CohortDefinition, CohortNode, CountOp,
    GroupOp, Window, WindowUnit as CohortWindowUnit,
};
pub use date::{parse_time_zone, Bucket, DateBound, DateRange, Interval, TimeRange};
pub use filter::{
    Aggregation, Breakdown, BreakdownBy, EventRef, EventSpec, Filter, Operator, PropertyFilter,
    PropertyType,
};
pub use formula::{parse_formula, BinOp, Expr, FormulaError};
pub use funnel::{Attribution, ConversionWindow, Exclusion, FunnelOrder, FunnelQuery, WindowUnit};
pub use lifecycle::LifecycleQuery;
pub use read::Named;
pub use retention::{RetentionCohort, RetentionMode, RetentionPeriod, RetentionQuery};
pub use stickiness::StickinessQuery;
pub use trends::{Formula, Math, PerUserMath, Series, TrendsQuery};

use read::{named_enum, Errors, Obj};

/// A field-level validation problem, as the API reports it: `{"field": "series[1].math_property",
/// "message": "is required for math sum"}`. The same shape as the feature API's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field: keys joined by `.`, list positions as `[i]`; `body` for the whole body.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

named_enum! {
    /// The kinds of insight (the `{kind}` of the API path).
    pub enum InsightKind {
        /// [`TrendsQuery`].
        Trends = "trends",
        /// [`FunnelQuery`].
        Funnel = "funnel",
        /// [`RetentionQuery`].
        Retention = "retention",
        /// [`StickinessQuery`].
        Stickiness = "stickiness",
        /// [`LifecycleQuery`].
        Lifecycle = "lifecycle",
    }
}

/// The parts shared by trends, funnels, stickiness and lifecycle.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Common {
    /// `date_from` / `date_to`.
    #[serde(flatten)]
    pub date_range: DateRange,
    /// Bucket width; default `day`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// Filters on every event (all must hold).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Filter>,
    /// Leave out the project's test accounts (its configured filters, applied by the caller).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub filter_test_accounts: bool,
}

impl Common {
    fn normalize(&mut self, default_from: DateBound) {
        self.date_range.date_from.get_or_insert(default_from);
        self.interval.get_or_insert(Interval::Day);
    }
}

pub(crate) fn read_common(o: &mut Obj<'_>, e: &mut Errors) -> Common {
    Common {
        date_range: date::read_date_range(o, e),
        interval: o.choice::<Interval>("interval", e),
        properties: filter::read_filters(o, e),
        filter_test_accounts: o.boolean("filter_test_accounts", e).unwrap_or(false),
    }
}

pub(crate) fn normalize_breakdown(b: &mut Option<Breakdown>) {
    if let Some(b) = b {
        if !matches!(b.by, BreakdownBy::Cohort { .. }) {
            b.limit.get_or_insert(filter::DEFAULT_BREAKDOWN_LIMIT);
        }
    }
}

/// A parsed insight definition of any kind. Serializes with a `kind` tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InsightQuery {
    /// A trends insight.
    Trends(TrendsQuery),
    /// A funnel.
    Funnel(FunnelQuery),
    /// A retention table.
    Retention(RetentionQuery),
    /// A stickiness insight.
    Stickiness(StickinessQuery),
    /// A lifecycle insight.
    Lifecycle(LifecycleQuery),
}

impl InsightQuery {
    /// The kind.
    pub fn kind(&self) -> InsightKind {
        match self {
            InsightQuery::Trends(_) => InsightKind::Trends,
            InsightQuery::Funnel(_) => InsightKind::Funnel,
            InsightQuery::Retention(_) => InsightKind::Retention,
            InsightQuery::Stickiness(_) => InsightKind::Stickiness,
            InsightQuery::Lifecycle(_) => InsightKind::Lifecycle,
        }
    }

    /// Fills in every default (see each kind's `normalize`). Idempotent.
    pub fn normalize(&mut self) {
        match self {
            InsightQuery::Trends(q) => q.normalize(),
            InsightQuery::Funnel(q) => q.normalize(),
            InsightQuery::Retention(q) => q.normalize(),
            InsightQuery::Stickiness(q) => q.normalize(),
            InsightQuery::Lifecycle(q) => q.normalize(),
        }
    }

    /// The cross-field problems of a definition built in code (parsing checks types and fields
    /// itself). Empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut e = Errors::default();
        self.check(&mut e);
        e.0
    }

    fn check(&self, e: &mut Errors) {
        match self {
            InsightQuery::Trends(q) => q.check(e),
            InsightQuery::Funnel(q) => q.check(e),
            InsightQuery::Retention(_)
            | InsightQuery::Stickiness(_)
            | InsightQuery::Lifecycle(_) => {}
        }
    }

    /// Resolves the date range to UTC instants and buckets, given the current time and the
    /// project's time zone (e.g. from [`parse_time_zone`]). Retention resolves to its periods.
    pub fn resolve<Tz: TimeZone>(
        &self,
        now: DateTime<Utc>,
        tz: &Tz,
    ) -> Result<TimeRange, FieldError> {
        let common = match self {
            InsightQuery::Trends(q) => &q.common,
            InsightQuery::Funnel(q) => &q.common,
            InsightQuery::Stickiness(q) => &q.common,
            InsightQuery::Lifecycle(q) => &q.common,
            InsightQuery::Retention(q) => return q.resolve(now, tz),
        };
        common
            .date_range
            .resolve(now, tz, common.interval.unwrap_or(Interval::Day))
    }
}

/// Parses, normalizes and validates a definition of `kind`. Returns every problem found, each
/// naming its field. The body may repeat the kind as `"kind"`; it must then match.
pub fn parse(kind: InsightKind, body: &Value) -> Result<InsightQuery, Vec<FieldError>> {
    let mut e = Errors::default();
    let Some(mut o) = Obj::new(body, "", &mut e) else {
        return Err(e.0);
    };
    if let Some(v) = o.get("kind") {
        if v.as_str() != Some(kind.name()) {
            e.push(
                "kind",
                format!("must be `{kind}` (the kind in the path) when given"),
            );
        }
    }
    let mut q = match kind {
        InsightKind::Trends => InsightQuery::Trends(trends::read(&mut o, &mut e)),
        InsightKind::Funnel => InsightQuery::Funnel(funnel::read(&mut o, &mut e)),
        InsightKind::Retention => InsightQuery::Retention(retention::read(&mut o, &mut e)),
        InsightKind::Stickiness => InsightQuery::Stickiness(stickiness::read(&mut o, &mut e)),
        InsightKind::Lifecycle => InsightQuery::Lifecycle(lifecycle::read(&mut o, &mut e)),
    };
    o.finish(&mut e);
    q.normalize();
    q.check(&mut e);
    if e.0.is_empty() {
        Ok(q)
    } else {
        Err(e.0)
    }
}

/// [`parse`] with the kind given by name (the API path segment); an unknown kind is reported on
/// the field `kind`.
pub fn parse_kind(kind: &str, body: &Value) -> Result<InsightQuery, Vec<FieldError>> {
    match InsightKind::from_name(kind) {
        Some(k) => parse(k, body),
        None => Err(vec![FieldError {
            field: "kind".into(),
            message: format!(
                "`{kind}` is not an insight kind: use one of {}",
                InsightKind::NAMES.join(", ")
            ),
        }]),
    }
}
