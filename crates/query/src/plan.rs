//! Logical plans: what an insight reads, independent of the engine that runs it (the embedded kernels now,
//! ClickHouse SQL in the scale-out).
//!
//! A [`Plan`] names the event specs of a query (spec `i` is bit `i` of the engine's per-row mask: a series, a
//! funnel step or exclusion, a retention start or return event), the filters each spec needs (its own, then the
//! query's common ones), and per answered period (the range, and for trends with `compare` the previous period)
//! the span of rows to read and the bucket boundaries in UTC microseconds. [`cohort_parts`] turns a cohort
//! breakdown into one query per cohort with that cohort as a filter.
//!
//! ```
//! use flywheel_query::{parse, plan, InsightKind};
//! use chrono::{TimeZone, Utc};
//! use serde_json::json;
//!
//! let q = parse(InsightKind::Funnel, &json!({
//!     "steps": [{"event": "signed_up"}, {"event": "paid"}],
//!     "date_from": "2026-01-01", "date_to": "2026-01-31",
//!     "conversion_window": {"value": 7, "unit": "day"},
//! })).unwrap();
//! let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
//! let range = q.resolve(now, &chrono_tz::UTC).unwrap();
//! let p = plan::plan(&q, &range, &chrono_tz::UTC);
//! assert_eq!(p.specs.len(), 2);
//! // A conversion may complete up to 7 days after the last entry.
//! let read = &p.reads[0];
//! assert_eq!(read.to_us - read.range.to.timestamp_micros(), 7 * 86_400_000_000);
//! ```

use chrono::{DateTime, TimeZone, Utc};

use crate::{
    BreakdownBy, ConversionWindow, EventSpec, Filter, FunnelOrder, InsightQuery, Math,
    RetentionCohort, TimeRange,
};

/// The earliest instant a read may need (first-time retention, lifecycle: "first ever" looks at all history).
pub const BEGINNING_US: i64 = i64::MIN / 2;
/// Rolling windows (`weekly_active`, `monthly_active`) look back at most this many days before a bucket.
pub const ROLLING_REACH_DAYS: i64 = 30;
const DAY_US: i64 = 86_400_000_000;

/// One event spec: which events, and the filters they must pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Where the spec is in the definition (`series[1]`, `steps[0]`, `exclusions[0]`, `start_event`, `event`).
    pub field: String,
    /// The spec.
    pub spec: EventSpec,
}

/// Which period a read answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The requested range.
    Current,
    /// The period before it (trends with `compare`).
    Previous,
}

/// The rows one answered period needs, and its buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub period: Period,
    /// The resolved range of the period.
    pub range: TimeRange,
    /// Rows with times in `[from_us, to_us)` are read (wider than the range where the question looks back or
    /// ahead: rolling windows, conversion windows, first-time cohorts, lifecycle's "new").
    pub from_us: i64,
    pub to_us: i64,
    /// Bucket starts (the first clamped to the range's start: earlier events of its bucket are not counted), and
    /// the end of the last bucket (the range's end).
    pub bucket_starts_us: Vec<i64>,
    pub end_us: i64,
}

/// What an insight reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Spec `i` is mask bit `i`.
    pub specs: Vec<Scan>,
    /// Filters every spec must pass (the definition's `properties`, test-account filters included).
    pub common: Vec<Filter>,
    /// Rows that match no spec matter (strict funnels: any other event between two steps breaks the chain);
    /// otherwise an engine may drop them before aggregating.
    pub every_row: bool,
    /// One per answered period, current first.
    pub reads: Vec<Read>,
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn read(period: Period, range: &TimeRange, from_us: i64, to_us: i64) -> Read {
    let mut bucket_starts_us: Vec<i64> = range.buckets.iter().map(|b| us(b.start)).collect();
    if let Some(first) = bucket_starts_us.first_mut() {
        *first = (*first).max(us(range.from));
    }
    Read {
        period,
        range: range.clone(),
        from_us,
        to_us,
        bucket_starts_us,
        end_us: us(range.to),
    }
}

fn scan(field: String, spec: &EventSpec) -> Scan {
    Scan {
        field,
        spec: spec.clone(),
    }
}

/// The plan of a normalized, resolved query (`range` from [`InsightQuery::resolve`] in the project's `tz`).
pub fn plan<Tz: TimeZone>(q: &InsightQuery, range: &TimeRange, tz: &Tz) -> Plan {
    let (from, to) = (us(range.from), us(range.to));
    match q {
        InsightQuery::Trends(t) => {
            let specs = t
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| Scan {
                    field: format!("series[{i}]"),
                    spec: EventSpec {
                        event: s.event.clone(),
                        name: s.name.clone(),
                        properties: s.properties.clone(),
                    },
                })
                .collect();
            let rolling = t
                .series
                .iter()
                .any(|s| matches!(s.math, Some(Math::WeeklyActive) | Some(Math::MonthlyActive)));
            let reach = if rolling {
                ROLLING_REACH_DAYS * DAY_US
            } else {
                0
            };
            let mut reads = vec![read(Period::Current, range, from - reach, to)];
            if t.compare {
                let previous = range.previous_period(tz);
                let (pf, pt) = (us(previous.from), us(previous.to));
                reads.push(read(Period::Previous, &previous, pf - reach, pt));
            }
            Plan {
                specs,
                common: t.common.properties.clone(),
                every_row: false,
                reads,
            }
        }
        InsightQuery::Funnel(f) => {
            let mut specs: Vec<Scan> = f
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| scan(format!("steps[{i}]"), s))
                .collect();
            specs.extend(
                f.exclusions
                    .iter()
                    .enumerate()
                    .map(|(i, x)| scan(format!("exclusions[{i}]"), &x.step)),
            );
            // A person entering at the end of the range may convert up to a window later.
            let window = funnel_window_us(f.conversion_window);
            Plan {
                specs,
                common: f.common.properties.clone(),
                every_row: f.order == Some(FunnelOrder::Strict),
                reads: vec![read(
                    Period::Current,
                    range,
                    from,
                    to.saturating_add(window),
                )],
            }
        }
        InsightQuery::Retention(r) => {
            // First-time cohorts need every earlier start event (a person's first may precede the range).
            let first_from = match r.cohort.unwrap_or(RetentionCohort::FirstTime) {
                RetentionCohort::FirstTime => BEGINNING_US,
                RetentionCohort::Recurring => from,
            };
            Plan {
                specs: vec![
                    scan("start_event".into(), &r.start_event),
                    scan("return_event".into(), &r.return_event),
                ],
                common: r.properties.clone(),
                every_row: false,
                reads: vec![read(Period::Current, range, first_from, to)],
            }
        }
        InsightQuery::Stickiness(s) => Plan {
            specs: vec![scan("event".into(), &s.event)],
            common: s.common.properties.clone(),
            every_row: false,
            reads: vec![read(Period::Current, range, from, to)],
        },
        // "New" means first ever: every earlier event.
        InsightQuery::Lifecycle(l) => Plan {
            specs: vec![scan("event".into(), &l.event)],
            common: l.common.properties.clone(),
            every_row: false,
            reads: vec![read(Period::Current, range, BEGINNING_US, to)],
        },
    }
}

/// A funnel's conversion window in microseconds (the default when none is given).
pub fn funnel_window_us(w: Option<ConversionWindow>) -> i64 {
    w.unwrap_or(ConversionWindow::DEFAULT)
        .duration()
        .num_microseconds()
        .unwrap_or(i64::MAX / 4)
}

/// A cohort breakdown as one query per cohort: the query without its breakdown, filtered to the cohort's members
/// (`None` without a cohort breakdown). A person in several cohorts counts in each, as in PostHog.
pub fn cohort_parts(q: &InsightQuery) -> Option<Vec<(u64, InsightQuery)>> {
    let b = match q {
        InsightQuery::Trends(t) => t.breakdown.as_ref(),
        InsightQuery::Funnel(f) => f.breakdown.as_ref(),
        InsightQuery::Retention(r) => r.breakdown.as_ref(),
        InsightQuery::Stickiness(s) => s.breakdown.as_ref(),
        InsightQuery::Lifecycle(l) => l.breakdown.as_ref(),
    }?;
    let BreakdownBy::Cohort { ids } = &b.by else {
        return None;
    };
    Some(
        ids.iter()
            .map(|&id| {
                let mut q = q.clone();
                let member = Filter::Cohort { id, negate: false };
                let (breakdown, filters) = match &mut q {
                    InsightQuery::Trends(t) => (&mut t.breakdown, &mut t.common.properties),
                    InsightQuery::Funnel(f) => (&mut f.breakdown, &mut f.common.properties),
                    InsightQuery::Retention(r) => (&mut r.breakdown, &mut r.properties),
                    InsightQuery::Stickiness(s) => (&mut s.breakdown, &mut s.common.properties),
                    InsightQuery::Lifecycle(l) => (&mut l.breakdown, &mut l.common.properties),
                };
                *breakdown = None;
                filters.push(member);
                (id, q)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, InsightKind};
    use serde_json::json;

    fn planned(kind: InsightKind, body: serde_json::Value) -> (InsightQuery, Plan) {
        let q = parse(kind, &body).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap();
        let range = q.resolve(now, &chrono_tz::UTC).unwrap();
        let p = plan(&q, &range, &chrono_tz::UTC);
        (q, p)
    }

    const JAN1: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

    #[test]
    fn trends_read_back_for_rolling_windows_and_compare() {
        let (_, p) = planned(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}, {"event": "b", "math": "weekly_active", "properties": [{"key": "x", "value": 1}]}],
                   "date_from": "2026-01-01", "date_to": "2026-01-07", "compare": true,
                   "properties": [{"key": "plan", "type": "person", "value": "pro"}]}),
        );
        assert_eq!(p.specs.len(), 2);
        assert_eq!(p.specs[1].field, "series[1]");
        assert_eq!(p.specs[1].spec.properties.len(), 1);
        assert_eq!(p.common.len(), 1);
        assert!(!p.every_row);
        assert_eq!(p.reads.len(), 2);
        let (cur, prev) = (&p.reads[0], &p.reads[1]);
        assert_eq!(
            (cur.period, prev.period),
            (Period::Current, Period::Previous)
        );
        assert_eq!(cur.from_us, JAN1 - 30 * DAY_US, "30 days of reach");
        assert_eq!(cur.end_us, JAN1 + 7 * DAY_US);
        assert_eq!(cur.bucket_starts_us.len(), 7);
        assert_eq!(
            prev.end_us, JAN1,
            "the previous period ends where the range starts"
        );
        assert_eq!(prev.bucket_starts_us[0], JAN1 - 7 * DAY_US);
    }

    #[test]
    fn funnels_read_a_window_past_the_range_and_strict_ones_every_row() {
        let (_, p) = planned(
            InsightKind::Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b"}], "exclusions": [{"event": "x", "from_step": 0, "to_step": 1}],
                   "order": "strict", "date_from": "2026-01-01", "date_to": "2026-01-01"}),
        );
        assert_eq!(
            p.specs.iter().map(|s| s.field.as_str()).collect::<Vec<_>>(),
            ["steps[0]", "steps[1]", "exclusions[0]"]
        );
        assert!(p.every_row);
        assert_eq!(
            p.reads[0].to_us,
            JAN1 + DAY_US + 14 * DAY_US,
            "default window 14 days"
        );
    }

    #[test]
    fn first_time_questions_read_all_history() {
        let (_, p) = planned(
            InsightKind::Retention,
            json!({"start_event": {"event": "a"}, "return_event": {"event": "b"}, "periods": 4, "date_to": "2026-01-28"}),
        );
        assert_eq!(p.reads[0].from_us, BEGINNING_US);
        let (_, p) = planned(
            InsightKind::Retention,
            json!({"start_event": {"event": "a"}, "return_event": {"event": "b"}, "periods": 4, "date_to": "2026-01-28", "cohort": "recurring"}),
        );
        assert_eq!(p.reads[0].from_us, p.reads[0].range.from.timestamp_micros());
        let (_, p) = planned(InsightKind::Lifecycle, json!({"event": "a"}));
        assert_eq!(p.reads[0].from_us, BEGINNING_US);
        let (_, p) = planned(InsightKind::Stickiness, json!({"event": "a"}));
        assert_eq!(p.reads[0].from_us, p.reads[0].range.from.timestamp_micros());
    }

    #[test]
    fn cohort_breakdowns_become_one_filtered_query_per_cohort() {
        let (q, _) = planned(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}], "breakdown": {"type": "cohort", "ids": [4, 9]}}),
        );
        let parts = cohort_parts(&q).unwrap();
        assert_eq!(parts.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [4, 9]);
        let InsightQuery::Trends(t) = &parts[1].1 else {
            panic!()
        };
        assert!(t.breakdown.is_none());
        assert_eq!(
            t.common.properties,
            [Filter::Cohort {
                id: 9,
                negate: false
            }]
        );
        let (q, _) = planned(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}], "breakdown": {"property": "plan", "type": "person"}}),
        );
        assert!(cohort_parts(&q).is_none());
    }
}
