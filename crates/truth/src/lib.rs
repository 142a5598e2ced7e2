//! Ground truth for insights: deliberately plain, brute-force computations over raw event rows.
//!
//! The embedded engine answers insights with single-pass kernels over columnar segments, and the scale-out backend
//! with ClickHouse SQL; both are checked against this crate on the same events. It is written separately from the
//! query planner and the kernels, favours obviousness over speed (quadratic loops are fine), and states every
//! semantic choice here, once:
//!
//! - **Rows** are already resolved to persons (`person`: identity merges applied by the caller) and already
//!   filtered (properties, test accounts). Times are microseconds since the Unix epoch, UTC.
//! - **Ordering**: a person's events are ordered by time, then by their position in the input (the log order), so
//!   events with identical timestamps keep a deterministic order. One event occurrence never counts for two steps.
//! - **Buckets** are UTC: days start at midnight, weeks on Monday, months on the 1st. A [`Range`] is half-open,
//!   `[from, to)`, and its buckets are those whose start lies in it (the first one aligned down to its bucket).
//! - **Conversion windows** are inclusive: a step `window` after the first step still counts.
//! - **Experiments** ([`experiment`]): a unit is exposed from its first exposure in the phase; units exposed to two
//!   variations are excluded and counted; metric windows are half-open and relative to that first exposure; see
//!   the function for the whole statement.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One event of one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub person: u64,
    pub ts_us: i64,
    pub event: &'a str,
}

pub const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Day,
    Week,
    Month,
}

/// A half-open time range `[from_us, to_us)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from_us: i64,
    pub to_us: i64,
}

impl Range {
    pub fn contains(&self, ts_us: i64) -> bool {
        self.from_us <= ts_us && ts_us < self.to_us
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil-days algorithm, rewritten).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Start (µs) of the bucket holding `ts_us`.
pub fn bucket_start(ts_us: i64, interval: Interval) -> i64 {
    let day = ts_us.div_euclid(DAY_US);
    let start_day = match interval {
        Interval::Day => day,
        // 1970-01-01 was a Thursday: Monday-based weekday is (day + 3) mod 7.
        Interval::Week => day - (day + 3).rem_euclid(7),
        Interval::Month => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1)
        }
    };
    start_day * DAY_US
}

/// Start (µs) of the bucket after the one starting at `start_us`.
pub fn next_bucket(start_us: i64, interval: Interval) -> i64 {
    match interval {
        Interval::Day => start_us + DAY_US,
        Interval::Week => start_us + 7 * DAY_US,
        Interval::Month => {
            let (y, m, _) = civil_from_days(start_us.div_euclid(DAY_US));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) * DAY_US
        }
    }
}

/// The bucket starts of a range, in order.
pub fn buckets(range: Range, interval: Interval) -> Vec<i64> {
    let mut out = Vec::new();
    let mut b = bucket_start(range.from_us, interval);
    while b < range.to_us {
        out.push(b);
        b = next_bucket(b, interval);
    }
    out
}

/// Each person's rows, ordered by (time, input position).
fn by_person<'a>(rows: &[Row<'a>]) -> BTreeMap<u64, Vec<Row<'a>>> {
    by_person_indexes(rows)
        .into_iter()
        .map(|(p, v)| (p, v.into_iter().map(|i| rows[i]).collect()))
        .collect()
}

/// Each person's row indexes (into `rows`), ordered by (time, input position): [`by_person`]'s order.
fn by_person_indexes(rows: &[Row<'_>]) -> BTreeMap<u64, Vec<usize>> {
    let mut out: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        out.entry(r.person).or_default().push(i);
    }
    for v in out.values_mut() {
        v.sort_by_key(|&i| (rows[i].ts_us, i));
    }
    out
}

fn index_of(buckets: &[i64], ts_us: i64, interval: Interval) -> Option<usize> {
    buckets.binary_search(&bucket_start(ts_us, interval)).ok()
}

// -----------------------------------------------------------------------------------------------------------------
// Trends

/// Events named `event` per bucket of `range`.
pub fn total(rows: &[Row<'_>], event: &str, range: Range, interval: Interval) -> Vec<u64> {
    let b = buckets(range, interval);
    let mut out = vec![0; b.len()];
    for r in rows
        .iter()
        .filter(|r| r.event == event && range.contains(r.ts_us))
    {
        if let Some(i) = index_of(&b, r.ts_us, interval) {
            out[i] += 1;
        }
    }
    out
}

/// Distinct persons who did `event` per bucket of `range` (DAU for days, WAU for weeks, MAU for months).
pub fn unique_persons(rows: &[Row<'_>], event: &str, range: Range, interval: Interval) -> Vec<u64> {
    let b = buckets(range, interval);
    let mut sets = vec![BTreeSet::new(); b.len()];
    for r in rows
        .iter()
        .filter(|r| r.event == event && range.contains(r.ts_us))
    {
        if let Some(i) = index_of(&b, r.ts_us, interval) {
            sets[i].insert(r.person);
        }
    }
    sets.iter().map(|s| s.len() as u64).collect()
}

/// For each day of `range`, the distinct persons who did `event` in the `days` days ending with it (7: weekly
/// active, 30: monthly active). Events before the range count towards its first days.
pub fn rolling_active(rows: &[Row<'_>], event: &str, range: Range, days: i64) -> Vec<u64> {
    buckets(range, Interval::Day)
        .into_iter()
        .map(|day| {
            let window = Range {
                from_us: day - (days - 1) * DAY_US,
                to_us: day + DAY_US,
            };
            rows.iter()
                .filter(|r| r.event == event && window.contains(r.ts_us))
                .map(|r| r.person)
                .collect::<BTreeSet<_>>()
                .len() as u64
        })
        .collect()
}

// -----------------------------------------------------------------------------------------------------------------
// Funnels

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Steps in order; other events may come between them.
    Ordered,
    /// Steps in order with none of the person's other events between them.
    Strict,
    /// Steps in any order, within the window from the earliest of them.
    Unordered,
}

/// Persons reaching at least step `k` (index `k`; index 0 is step 1): a person enters with a first-step event inside
/// `range` and reaches as far as the best such entry allows within `window_us`.
pub fn funnel(
    rows: &[Row<'_>],
    steps: &[&str],
    window_us: i64,
    order: Order,
    range: Range,
) -> Vec<u64> {
    let mut reached_counts = vec![0u64; steps.len()];
    for events in by_person(rows).values() {
        let best = (0..events.len())
            .map(|i| reach_from(events, i, steps, window_us, order, range))
            .max()
            .unwrap_or(0);
        for c in reached_counts.iter_mut().take(best) {
            *c += 1;
        }
    }
    reached_counts
}

/// How many steps a person reaches when entering at their `i`-th event.
fn reach_from(
    events: &[Row<'_>],
    i: usize,
    steps: &[&str],
    window_us: i64,
    order: Order,
    range: Range,
) -> usize {
    let start = events[i];
    if !range.contains(start.ts_us) {
        return 0;
    }
    let within = |r: &Row<'_>| r.ts_us - start.ts_us <= window_us;
    match order {
        Order::Ordered | Order::Strict => {
            if start.event != steps[0] {
                return 0;
            }
            let mut reached = 1;
            for e in &events[i + 1..] {
                if reached == steps.len() || !within(e) {
                    break;
                }
                if e.event == steps[reached] {
                    reached += 1;
                } else if order == Order::Strict {
                    break;
                }
            }
            reached
        }
        Order::Unordered => {
            // The entry event must be one of the steps; then every step needs its own occurrence in the window.
            if !steps.contains(&start.event) {
                return 0;
            }
            let mut available: HashMap<&str, usize> = HashMap::new();
            for e in events[i..].iter().take_while(|e| within(e)) {
                *available.entry(e.event).or_default() += 1;
            }
            let mut reached = 0;
            for step in steps {
                match available.get_mut(step) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        reached += 1;
                    }
                    _ => {}
                }
            }
            reached
        }
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Retention

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cohorting {
    /// A person belongs to the cohort of the period of their first start event ever (any time, not only in range).
    FirstTime,
    /// A person belongs to the cohort of every period in which they did the start event.
    Recurring,
}

/// A retention question.
#[derive(Debug, Clone, Copy)]
pub struct Retention<'a> {
    pub start_event: &'a str,
    pub return_event: &'a str,
    pub cohorting: Cohorting,
    pub interval: Interval,
    /// The first period is the bucket holding this instant.
    pub from_us: i64,
    pub periods: usize,
    /// Returning in period `p + k` *or any later period* counts for column `k`.
    pub on_or_after: bool,
}

/// The retention table: `table[p][k]` counts the persons of period `p`'s cohort who did the return event `k`
/// periods later (`k = 0`: the cohort's size; a return in the cohort's own period does not count). Returns are
/// looked for up to the end of the last period.
pub fn retention(rows: &[Row<'_>], q: Retention<'_>) -> Vec<Vec<u64>> {
    let Retention {
        start_event,
        return_event,
        cohorting,
        periods,
        ..
    } = q;
    let period_of = retention_periods(q);
    let mut table = vec![vec![0u64; periods]; periods];
    for events in by_person(rows).values() {
        let cohorts: BTreeSet<usize> = match cohorting {
            Cohorting::FirstTime => events
                .iter()
                .find(|e| e.event == start_event)
                .and_then(|e| period_of(e.ts_us))
                .into_iter()
                .collect(),
            Cohorting::Recurring => events
                .iter()
                .filter(|e| e.event == start_event)
                .filter_map(|e| period_of(e.ts_us))
                .collect(),
        };
        let returned: BTreeSet<usize> = events
            .iter()
            .filter(|e| e.event == return_event)
            .filter_map(|e| period_of(e.ts_us))
            .collect();
        for &p in &cohorts {
            count_member(&mut table[p], p, &returned, q);
        }
    }
    table
}

/// Retention per breakdown label: the person's cohort in period p counts under the label of the start row that
/// placed them there (first-time: their first start row ever; recurring: their first start row in period p).
/// `labels[i]` is the label of `rows[i]` (values `>= n_labels` count nowhere). Returns `[label][p][k]`.
///
/// "First" is in the person's order of [`retention`] (time, then input position). A first-time person whose first
/// start row has a label `>= n_labels` counts nowhere (not under a later row's label). Returns are counted from all
/// the person's return rows, whatever their labels.
///
/// # Panics
///
/// When `labels` and `rows` differ in length.
pub fn retention_by_row(
    rows: &[Row<'_>],
    labels: &[u32],
    n_labels: usize,
    q: Retention<'_>,
) -> Vec<Vec<Vec<u64>>> {
    assert_eq!(rows.len(), labels.len(), "one label per row");
    let Retention {
        start_event,
        return_event,
        cohorting,
        periods,
        ..
    } = q;
    let period_of = retention_periods(q);
    let mut tables = vec![vec![vec![0u64; periods]; periods]; n_labels];
    for events in by_person_indexes(rows).values() {
        let mut start_rows = events.iter().filter(|&&i| rows[i].event == start_event);
        // Cohort period -> the label of the start row placing the person in it.
        let mut cohorts: BTreeMap<usize, u32> = BTreeMap::new();
        match cohorting {
            Cohorting::FirstTime => {
                if let Some(&i) = start_rows.next() {
                    if let Some(p) = period_of(rows[i].ts_us) {
                        cohorts.insert(p, labels[i]);
                    }
                }
            }
            Cohorting::Recurring => {
                for &i in start_rows {
                    if let Some(p) = period_of(rows[i].ts_us) {
                        cohorts.entry(p).or_insert(labels[i]);
                    }
                }
            }
        }
        let returned: BTreeSet<usize> = events
            .iter()
            .filter(|&&i| rows[i].event == return_event)
            .filter_map(|&i| period_of(rows[i].ts_us))
            .collect();
        for (&p, &label) in &cohorts {
            if let Some(table) = tables.get_mut(label as usize) {
                count_member(&mut table[p], p, &returned, q);
            }
        }
    }
    tables
}

/// The period index of an instant, for a retention question's periods.
fn retention_periods(q: Retention<'_>) -> impl Fn(i64) -> Option<usize> {
    let Retention {
        interval,
        from_us,
        periods,
        ..
    } = q;
    let mut starts = vec![bucket_start(from_us, interval)];
    while starts.len() < periods {
        let next = next_bucket(*starts.last().expect("not empty"), interval);
        starts.push(next);
    }
    move |ts: i64| starts.binary_search(&bucket_start(ts, interval)).ok()
}

/// Adds one member of period `p`'s cohort to its table row, given the periods the person returned in.
fn count_member(row: &mut [u64], p: usize, returned: &BTreeSet<usize>, q: Retention<'_>) {
    for (k, cell) in row.iter_mut().enumerate().take(q.periods - p) {
        let counted = k == 0
            || if q.on_or_after {
                returned.range(p + k..).next().is_some()
            } else {
                returned.contains(&(p + k))
            };
        if counted {
            *cell += 1;
        }
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Stickiness and lifecycle

/// `out[n - 1]` counts the persons who did `event` in exactly `n` of the range's buckets.
pub fn stickiness(rows: &[Row<'_>], event: &str, range: Range, interval: Interval) -> Vec<u64> {
    let b = buckets(range, interval);
    let mut out = vec![0u64; b.len()];
    for events in by_person(rows).values() {
        let active: BTreeSet<usize> = events
            .iter()
            .filter(|e| e.event == event && range.contains(e.ts_us))
            .filter_map(|e| index_of(&b, e.ts_us, interval))
            .collect();
        if !active.is_empty() {
            out[active.len() - 1] += 1;
        }
    }
    out
}

/// Lifecycle per bucket of the range, for one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Active in the bucket, which holds their first event ever.
    pub new: Vec<u64>,
    /// Active in the bucket and in the one before.
    pub returning: Vec<u64>,
    /// Active in the bucket, not in the one before, and active at some earlier time.
    pub resurrecting: Vec<u64>,
    /// Active in the bucket before and not in this one (shown as a negative count by clients).
    pub dormant: Vec<u64>,
}

pub fn lifecycle(rows: &[Row<'_>], event: &str, range: Range, interval: Interval) -> Lifecycle {
    let b = buckets(range, interval);
    let mut out = Lifecycle {
        new: vec![0; b.len()],
        returning: vec![0; b.len()],
        resurrecting: vec![0; b.len()],
        dormant: vec![0; b.len()],
    };
    for events in by_person(rows).values() {
        let mine: Vec<i64> = events
            .iter()
            .filter(|e| e.event == event)
            .map(|e| bucket_start(e.ts_us, interval))
            .collect();
        let Some(&first) = mine.first() else { continue };
        let active: BTreeSet<i64> = mine.into_iter().collect();
        for (i, &start) in b.iter().enumerate() {
            let previous = if i > 0 {
                b[i - 1]
            } else {
                // The bucket before the range's first one.
                let mut p = bucket_start(start - 1, interval);
                while next_bucket(p, interval) < start {
                    p = next_bucket(p, interval);
                }
                p
            };
            let now = active.contains(&start);
            let before = active.contains(&previous);
            match (now, before) {
                (true, _) if first == start => out.new[i] += 1,
                (true, true) => out.returning[i] += 1,
                (true, false) => out.resurrecting[i] += 1,
                (false, true) => out.dormant[i] += 1,
                (false, false) => {}
            }
        }
    }
    out
}

// -----------------------------------------------------------------------------------------------------------------
// Experiments

/// One event for an experiment analysis: an exposure (with the variation it showed) or a metric event (with an
/// optional numeric property).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExperimentRow<'a> {
    pub person: u64,
    pub ts_us: i64,
    pub event: &'a str,
    /// The variation index an exposure event carries (`None`: the event has none).
    pub variation: Option<u32>,
    /// The numeric value a `Sum` metric adds (`None`: no number).
    pub value: Option<f64>,
}

/// How a unit's metric events in a window make its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentAggregation {
    /// 1 when there is at least one event, else 0.
    Conversion,
    /// The number of events.
    Count,
    /// The sum of the events' values (events without one add nothing).
    Sum,
}

/// A metric: the events named `event` in `[t0 + delay_us, t0 + delay_us + window_us)` (to the analysis end when
/// `window_us` is `None`), aggregated and capped per unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExperimentMetric<'a> {
    pub event: &'a str,
    pub aggregation: ExperimentAggregation,
    pub delay_us: i64,
    pub window_us: Option<i64>,
    /// A unit's value above it becomes it.
    pub cap: Option<f64>,
    /// Ratio: the metric (index) whose value is the denominator.
    pub denominator: Option<usize>,
    /// CUPED: the same metric over `[t0 - pre, t0)`.
    pub pre_window_us: Option<i64>,
    /// An ordered funnel (with `Conversion`): 1 when the window's events, in order, show `event`, then `then[0]`,
    /// then `then[1]`, … (an event completes at most one step); empty: an ordinary metric.
    pub then: &'a [&'a str],
}

/// An experiment analysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Experiment<'a> {
    pub exposure_event: &'a str,
    /// Valid variations are `0..variations`.
    pub variations: u32,
    /// Exposures count in `[exposure_from_us, exposure_to_us)`.
    pub exposure_from_us: i64,
    pub exposure_to_us: i64,
    /// Persons first exposed before it are carried over: in no arm, counted in `carried_over`.
    pub entry_from_us: i64,
    /// Metric events at or after it never count.
    pub analysis_end_us: i64,
    pub metrics: &'a [ExperimentMetric<'a>],
}

/// One unit's variables for one metric (`None` where the metric has no such variable).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExperimentUnit {
    pub value: f64,
    pub denominator: Option<f64>,
    pub pre: Option<f64>,
    pub pre_denominator: Option<f64>,
}

/// One variation's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExperimentArm {
    /// Units exposed to this variation only.
    pub n: u64,
    /// Units whose first exposure was this variation and who later saw another one (excluded).
    pub multiple_exposures: u64,
    /// Units whose first exposure (this variation) was before `entry_from_us` (excluded).
    pub carried_over: u64,
    /// Per metric, every unit of the arm in person order.
    pub units: Vec<Vec<ExperimentUnit>>,
}

/// An experiment's per-unit values, per variation.
///
/// - A person's events are ordered by (time, input position). Exposures are the `exposure_event` events with a
///   variation `< variations` and a time in `[exposure_from_us, exposure_to_us)`; every other exposure event is
///   ignored, including for the multiple-exposure check.
/// - A person with exposures is a unit of the variation of the first one (`t0` its time), unless their exposures
///   show two or more variations: then they are in no arm and counted in `multiple_exposures` of the first one's;
///   before that, a person whose `t0` is before `entry_from_us` is in no arm and counted in `carried_over`.
/// - A metric's value for a unit: its events (by name) before `analysis_end_us` in its window relative to `t0`,
///   aggregated (an ordered funnel: 1 when the window's events in order show every step), then capped (`min(value, cap)`); 0 without events. The denominator of a ratio is the
///   denominator metric's value; the pre value (CUPED) is the metric over `[t0 - pre, t0)`; the pre denominator
///   (ratio with CUPED) is the denominator metric's events, aggregation and cap over the ratio's pre window.
pub fn experiment(rows: &[ExperimentRow<'_>], q: &Experiment<'_>) -> Vec<ExperimentArm> {
    let mut arms: Vec<ExperimentArm> = (0..q.variations)
        .map(|_| ExperimentArm {
            units: vec![Vec::new(); q.metrics.len()],
            ..ExperimentArm::default()
        })
        .collect();
    let mut persons: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        persons.entry(r.person).or_default().push(i);
    }
    for idx in persons.values_mut() {
        idx.sort_by_key(|&i| (rows[i].ts_us, i));
    }
    for idx in persons.values() {
        let mine: Vec<ExperimentRow<'_>> = idx.iter().map(|&i| rows[i]).collect();
        let exposures: Vec<(i64, u32)> = mine
            .iter()
            .filter(|r| r.event == q.exposure_event)
            .filter(|r| q.exposure_from_us <= r.ts_us && r.ts_us < q.exposure_to_us)
            .filter_map(|r| {
                r.variation
                    .filter(|&v| v < q.variations)
                    .map(|v| (r.ts_us, v))
            })
            .collect();
        let Some(&(t0, first)) = exposures.first() else {
            continue;
        };
        let seen: BTreeSet<u32> = exposures.iter().map(|e| e.1).collect();
        let arm = &mut arms[first as usize];
        if t0 < q.entry_from_us {
            arm.carried_over += 1;
            continue;
        }
        if seen.len() > 1 {
            arm.multiple_exposures += 1;
            continue;
        }
        arm.n += 1;
        // The value of metric `m` over the events in `[lo, hi)` (in i128: no overflow at any delay).
        let value = |m: &ExperimentMetric<'_>, lo: i128, hi: i128| {
            let in_window = |r: &&ExperimentRow<'_>| {
                r.ts_us < q.analysis_end_us && lo <= i128::from(r.ts_us) && i128::from(r.ts_us) < hi
            };
            if !m.then.is_empty() {
                let steps: Vec<&str> = std::iter::once(m.event)
                    .chain(m.then.iter().copied())
                    .collect();
                let mut done = 0;
                for r in mine.iter().filter(in_window) {
                    if done < steps.len() && r.event == steps[done] {
                        done += 1;
                    }
                }
                let v = if done == steps.len() { 1.0 } else { 0.0 };
                return match m.cap {
                    Some(c) if v > c => c,
                    _ => v,
                };
            }
            let hits: Vec<&ExperimentRow<'_>> = mine
                .iter()
                .filter(|r| r.event == m.event)
                .filter(in_window)
                .collect();
            let v = match m.aggregation {
                ExperimentAggregation::Conversion => {
                    if hits.is_empty() {
                        0.0
                    } else {
                        1.0
                    }
                }
                ExperimentAggregation::Count => hits.len() as f64,
                ExperimentAggregation::Sum => hits.iter().filter_map(|r| r.value).sum(),
            };
            match m.cap {
                Some(c) if v > c => c,
                _ => v,
            }
        };
        let t0 = i128::from(t0);
        let post = |m: &ExperimentMetric<'_>| {
            let lo = t0 + i128::from(m.delay_us);
            let hi = m.window_us.map_or(i128::MAX, |w| lo + i128::from(w));
            value(m, lo, hi)
        };
        let pre = |m: &ExperimentMetric<'_>, len: i64| value(m, t0 - i128::from(len), t0);
        for (k, m) in q.metrics.iter().enumerate() {
            let den = m.denominator.map(|d| &q.metrics[d]);
            arm.units[k].push(ExperimentUnit {
                value: post(m),
                denominator: den.map(post),
                pre: m.pre_window_us.map(|len| pre(m, len)),
                pre_denominator: den.zip(m.pre_window_us).map(|(d, len)| pre(d, len)),
            });
        }
    }
    arms
}

#[cfg(test)]
mod tests {
    /// A deterministic xorshift64 generator of test inputs.
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    use super::*;

    const H: i64 = 3_600_000_000;

    fn day(n: i64) -> i64 {
        // 2026-01-05 is a Monday.
        (days_from_civil(2026, 1, 5) + n) * DAY_US
    }

    fn row(person: u64, ts_us: i64, event: &str) -> Row<'_> {
        Row {
            person,
            ts_us,
            event,
        }
    }

    #[test]
    fn civil_dates_round_trip_and_buckets_align() {
        for d in [-800_000, -1, 0, 59, 365 * 30, 20_000, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(
            days_from_civil(2024, 2, 29) + 1,
            days_from_civil(2024, 3, 1)
        );
        let ts = day(3) + 5 * H; // Thursday 05:00
        assert_eq!(bucket_start(ts, Interval::Day), day(3));
        assert_eq!(bucket_start(ts, Interval::Week), day(0));
        assert_eq!(
            bucket_start(ts, Interval::Month),
            days_from_civil(2026, 1, 1) * DAY_US
        );
        assert_eq!(
            next_bucket(days_from_civil(2025, 12, 1) * DAY_US, Interval::Month),
            days_from_civil(2026, 1, 1) * DAY_US
        );
        let r = Range {
            from_us: day(0) + H,
            to_us: day(3),
        };
        assert_eq!(buckets(r, Interval::Day), vec![day(0), day(1), day(2)]);
    }

    #[test]
    fn trends_count_events_and_persons() {
        let rows = [
            row(1, day(0) + H, "a"),
            row(1, day(0) + 2 * H, "a"),
            row(2, day(0) + 3 * H, "a"),
            row(2, day(1), "a"),
            row(3, day(1), "b"),
            row(3, day(9), "a"),
        ];
        let r = Range {
            from_us: day(0),
            to_us: day(3),
        };
        assert_eq!(total(&rows, "a", r, Interval::Day), vec![3, 1, 0]);
        assert_eq!(unique_persons(&rows, "a", r, Interval::Day), vec![2, 1, 0]);
        assert_eq!(unique_persons(&rows, "a", r, Interval::Week), vec![2]);
        let r = Range {
            from_us: day(6),
            to_us: day(10),
        };
        // Day 6's 7-day window is days 0–6 (persons 1 and 2); day 7's is 1–7 (person 2); day 9: 3–9 (person 3).
        assert_eq!(rolling_active(&rows, "a", r, 7), vec![2, 1, 0, 1]);
    }

    #[test]
    fn funnel_orders_and_windows() {
        let steps = ["visit", "signup", "pay"];
        let rows = [
            // 1: all three, with noise between.
            row(1, day(0), "visit"),
            row(1, day(0) + H, "noise"),
            row(1, day(0) + 2 * H, "signup"),
            row(1, day(1), "pay"),
            // 2: pays before signing up: ordered stops at signup.
            row(2, day(0), "visit"),
            row(2, day(0) + H, "pay"),
            row(2, day(0) + 2 * H, "signup"),
            // 3: signup outside a one-day window; a later visit starts a better entry.
            row(3, day(0), "visit"),
            row(3, day(3), "visit"),
            row(3, day(3) + H, "signup"),
            // 4: identical timestamps, in log order.
            row(4, day(2), "visit"),
            row(4, day(2), "signup"),
            row(4, day(2), "pay"),
            // 5: starts before the range: not counted.
            row(5, day(-1), "visit"),
            row(5, day(0), "signup"),
        ];
        let r = Range {
            from_us: day(0),
            to_us: day(5),
        };
        assert_eq!(
            funnel(&rows, &steps, DAY_US, Order::Ordered, r),
            vec![4, 4, 2]
        );
        // Strict: person 1's noise and person 2's early payment break their chains after the visit.
        assert_eq!(
            funnel(&rows, &steps, DAY_US, Order::Strict, r),
            vec![4, 2, 1]
        );
        // Unordered: person 2 has all three within the window; person 5 enters with the sign-up inside the range.
        assert_eq!(
            funnel(&rows, &steps, DAY_US, Order::Unordered, r),
            vec![5, 4, 3]
        );
        // The window is inclusive.
        let edge = [row(9, day(0), "visit"), row(9, day(1), "signup")];
        assert_eq!(
            funnel(&edge, &steps[..2], DAY_US, Order::Ordered, r),
            vec![1, 1]
        );
        assert_eq!(
            funnel(&edge, &steps[..2], DAY_US - 1, Order::Ordered, r),
            vec![1, 0]
        );
    }

    #[test]
    fn retention_tables() {
        let rows = [
            row(1, day(0), "start"),
            row(1, day(1), "back"),
            row(1, day(3), "back"),
            row(2, day(1), "start"),
            row(2, day(3), "back"),
            row(3, day(-5), "start"),
            row(3, day(2), "start"),
            row(3, day(2), "back"),
        ];
        let q = Retention {
            start_event: "start",
            return_event: "back",
            cohorting: Cohorting::FirstTime,
            interval: Interval::Day,
            from_us: day(0),
            periods: 4,
            on_or_after: false,
        };
        let t = retention(&rows, q);
        assert_eq!(
            t,
            vec![
                vec![1, 1, 0, 1],
                vec![1, 0, 1, 0],
                vec![0, 0, 0, 0],
                vec![0, 0, 0, 0]
            ]
        );
        let t = retention(
            &rows,
            Retention {
                cohorting: Cohorting::Recurring,
                ..q
            },
        );
        assert_eq!(
            t[2],
            vec![1, 0, 0, 0],
            "person 3 recurs on day 2 (a same-period return is not counted)"
        );
        let t = retention(
            &rows,
            Retention {
                on_or_after: true,
                ..q
            },
        );
        assert_eq!(
            t[0],
            vec![1, 1, 1, 1],
            "on or after: a later return counts for earlier columns"
        );
    }

    #[test]
    fn retention_by_row_labels_the_placing_start_row() {
        // Labels: 0 and 1; 7 counts nowhere.
        let rows = [
            // 1: first start on day 0 (label 1; a tie at the same instant, later in the input, has label 0),
            //    starts again on day 2 with label 0 then 1, returns on days 1 and 3.
            row(1, day(0), "start"),
            row(1, day(0), "start"),
            row(1, day(1), "back"),
            row(1, day(2), "start"),
            row(1, day(2) + H, "start"),
            row(1, day(3), "back"),
            // 2: first start ever before the periods: no first-time cohort; recurring on day 1 (label 0).
            row(2, day(-3), "start"),
            row(2, day(1), "start"),
            row(2, day(2), "back"),
            // 3: first start has label 7 (nowhere), a later one label 0.
            row(3, day(1), "start"),
            row(3, day(1) + H, "start"),
        ];
        let labels = [1, 0, 0, 0, 1, 0, 1, 0, 0, 7, 0];
        let q = Retention {
            start_event: "start",
            return_event: "back",
            cohorting: Cohorting::FirstTime,
            interval: Interval::Day,
            from_us: day(0),
            periods: 4,
            on_or_after: false,
        };
        let t = retention_by_row(&rows, &labels, 2, q);
        let empty = vec![0; 4];
        assert_eq!(t[0], vec![empty.clone(); 4]);
        assert_eq!(
            t[1],
            vec![
                vec![1, 1, 0, 1],
                empty.clone(),
                empty.clone(),
                empty.clone()
            ]
        );
        let t = retention_by_row(
            &rows,
            &labels,
            2,
            Retention {
                cohorting: Cohorting::Recurring,
                ..q
            },
        );
        // Person 1: day 0 under label 1, day 2 under label 0; person 2: day 1 under 0; person 3: day 1 under 7.
        assert_eq!(
            t[0],
            vec![
                empty.clone(),
                vec![1, 1, 0, 0],
                vec![1, 1, 0, 0],
                empty.clone()
            ]
        );
        assert_eq!(
            t[1],
            vec![
                vec![1, 1, 0, 1],
                empty.clone(),
                empty.clone(),
                empty.clone()
            ]
        );
    }

    /// With every label in range, the cohort sizes (and every cell) summed over labels are `retention`'s, and a
    /// single label gives `retention`'s tables.
    #[test]
    fn retention_by_row_adds_up_to_retention() {
        let names = ["a", "b", "c"];
        let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
        let rows: Vec<Row<'_>> = (0..2000)
            .map(|_| {
                row(
                    next() % 100,
                    day(-5) + (next() % (30 * 4)) as i64 * 6 * H,
                    names[(next() % 3) as usize],
                )
            })
            .collect();
        let labels: Vec<u32> = rows.iter().map(|_| (next() % 4) as u32).collect();
        for cohorting in [Cohorting::FirstTime, Cohorting::Recurring] {
            for on_or_after in [false, true] {
                let q = Retention {
                    start_event: "a",
                    return_event: "b",
                    cohorting,
                    interval: Interval::Week,
                    from_us: day(0),
                    periods: 4,
                    on_or_after,
                };
                let whole = retention(&rows, q);
                let zeros = vec![0u32; rows.len()];
                assert_eq!(retention_by_row(&rows, &zeros, 1, q), vec![whole.clone()]);
                let t = retention_by_row(&rows, &labels, 4, q);
                for p in 0..4 {
                    let size: u64 = t.iter().map(|table| table[p][0]).sum();
                    assert_eq!(size, whole[p][0], "{cohorting:?}, period {p}");
                    // Each cohort membership has one label, so every cell adds up too.
                    for k in 0..4 {
                        let cell: u64 = t.iter().map(|table| table[p][k]).sum();
                        assert_eq!(cell, whole[p][k], "{cohorting:?}, period {p}, column {k}");
                    }
                }
                // A label out of range drops those memberships.
                let dropped = retention_by_row(&rows, &labels, 3, q);
                assert_eq!(dropped[..], t[..3]);
            }
        }
    }

    #[test]
    fn stickiness_and_lifecycle() {
        let rows = [
            row(1, day(0), "use"),
            row(1, day(1), "use"),
            row(1, day(2), "use"),
            row(2, day(0), "use"),
            row(2, day(2), "use"),
            row(3, day(-3), "use"),
            row(3, day(1), "use"),
        ];
        let r = Range {
            from_us: day(0),
            to_us: day(3),
        };
        assert_eq!(stickiness(&rows, "use", r, Interval::Day), vec![1, 1, 1]);
        let l = lifecycle(&rows, "use", r, Interval::Day);
        assert_eq!(l.new, vec![2, 0, 0]);
        assert_eq!(l.returning, vec![0, 1, 1]);
        assert_eq!(l.resurrecting, vec![0, 1, 1]);
        assert_eq!(l.dormant, vec![0, 1, 1]);
    }

    /// Invariants on pseudo-random data: funnel counts never grow with the step, unordered ≥ ordered ≥ strict, the
    /// stickiness histogram adds up to the persons active in the range.
    #[test]
    fn invariants_on_random_rows() {
        let names = ["a", "b", "c", "d"];
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64);
        let rows: Vec<Row<'_>> = (0..3000)
            .map(|_| {
                row(
                    next() % 200,
                    day(0) + (next() % (20 * 24)) as i64 * H,
                    names[(next() % 4) as usize],
                )
            })
            .collect();
        let r = Range {
            from_us: day(2),
            to_us: day(15),
        };
        let steps = ["a", "b", "c"];
        let [o, s, u] = [Order::Ordered, Order::Strict, Order::Unordered]
            .map(|order| funnel(&rows, &steps, 3 * DAY_US, order, r));
        for f in [&o, &s, &u] {
            assert!(f.windows(2).all(|w| w[0] >= w[1]), "{f:?}");
        }
        for k in 0..3 {
            assert!(u[k] >= o[k] && o[k] >= s[k], "{u:?} {o:?} {s:?}");
        }
        let st = stickiness(&rows, "a", r, Interval::Day);
        let active: BTreeSet<u64> = rows
            .iter()
            .filter(|e| e.event == "a" && r.contains(e.ts_us))
            .map(|e| e.person)
            .collect();
        assert_eq!(st.iter().sum::<u64>(), active.len() as u64);
        let q = Retention {
            start_event: "a",
            return_event: "b",
            cohorting: Cohorting::Recurring,
            interval: Interval::Week,
            from_us: day(0),
            periods: 3,
            on_or_after: true,
        };
        let t = retention(&rows, q);
        assert!(t.iter().all(|row| row[1..].iter().all(|&n| n <= row[0])));
    }

    #[test]
    fn experiment_funnel_metrics_need_the_steps_in_order() {
        let row = |person: u64, ts_us: i64, event: &'static str| ExperimentRow {
            person,
            ts_us,
            event,
            variation: (event == "x").then_some(0),
            value: None,
        };
        let rows = [
            // a, then b: converts (the b before the a does not count, the one after does).
            row(1, 10, "x"),
            row(1, 11, "b"),
            row(1, 12, "a"),
            row(1, 15, "b"),
            // b, then a: does not.
            row(2, 10, "x"),
            row(2, 11, "b"),
            row(2, 12, "a"),
            // a, then b after the window: does not.
            row(3, 10, "x"),
            row(3, 12, "a"),
            row(3, 40, "b"),
        ];
        let metrics = [ExperimentMetric {
            event: "a",
            aggregation: ExperimentAggregation::Conversion,
            delay_us: 0,
            window_us: Some(20),
            cap: None,
            denominator: None,
            pre_window_us: None,
            then: &["b"],
        }];
        let q = Experiment {
            exposure_event: "x",
            variations: 1,
            exposure_from_us: 0,
            exposure_to_us: 100,
            entry_from_us: 0,
            analysis_end_us: 100,
            metrics: &metrics,
        };
        let arms = experiment(&rows, &q);
        let values: Vec<f64> = arms[0].units[0].iter().map(|u| u.value).collect();
        assert_eq!(values, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn experiment_by_hand() {
        let r = |person, ts_us, event, variation, value| ExperimentRow {
            person,
            ts_us,
            event,
            variation,
            value,
        };
        let rows = [
            // Person 1: exposed to 0 at 10 (the exposure at 5 is before the phase), buys 4 at 12, 3 at 30
            // (outside the 10 µs window), and 9 at 8 (before exposure: the pre window [0, 10)).
            r(1, 5, "x", Some(1), None),
            r(1, 10, "x", Some(0), None),
            r(1, 12, "buy", None, Some(4.0)),
            r(1, 30, "buy", None, Some(3.0)),
            r(1, 8, "buy", None, Some(9.0)),
            // Person 2: variation 1 then 0: excluded, counted under 1.
            r(2, 11, "x", Some(1), None),
            r(2, 12, "x", Some(0), None),
            r(2, 13, "buy", None, Some(100.0)),
            // Person 3: variation 7 is not one of the 2: ignored; then variation 1 at 20, buys without a value.
            r(3, 15, "x", Some(7), None),
            r(3, 20, "x", Some(1), None),
            r(3, 20, "buy", None, None),
            // Person 4: exposed at the phase end: not exposed.
            r(4, 50, "x", Some(0), None),
        ];
        let metrics = [
            ExperimentMetric {
                event: "buy",
                aggregation: ExperimentAggregation::Sum,
                delay_us: 0,
                window_us: Some(10),
                cap: Some(3.5),
                denominator: Some(1),
                pre_window_us: Some(10),
                then: &[],
            },
            ExperimentMetric {
                event: "buy",
                aggregation: ExperimentAggregation::Count,
                delay_us: 0,
                window_us: None,
                cap: None,
                denominator: None,
                pre_window_us: None,
                then: &[],
            },
        ];
        let q = Experiment {
            exposure_event: "x",
            variations: 2,
            exposure_from_us: 6,
            exposure_to_us: 50,
            entry_from_us: 6,
            analysis_end_us: 30,
            metrics: &metrics,
        };
        let arms = experiment(&rows, &q);
        assert_eq!((arms[0].n, arms[0].multiple_exposures), (1, 0));
        assert_eq!((arms[1].n, arms[1].multiple_exposures), (1, 1));
        // Person 1: sum 4 capped to 3.5; 1 purchase before the end (30 is the analysis end); pre: 9 capped to 3.5
        // over 1 purchase.
        let unit = |value, denominator, pre, pre_denominator| ExperimentUnit {
            value,
            denominator,
            pre,
            pre_denominator,
        };
        assert_eq!(
            arms[0].units,
            vec![
                vec![unit(3.5, Some(1.0), Some(3.5), Some(1.0))],
                vec![unit(1.0, None, None, None)]
            ]
        );
        // Person 3: a purchase at t0 without a value: sum 0, count 1.
        assert_eq!(
            arms[1].units,
            vec![
                vec![unit(0.0, Some(1.0), Some(0.0), Some(0.0))],
                vec![unit(1.0, None, None, None)]
            ]
        );
    }
}
