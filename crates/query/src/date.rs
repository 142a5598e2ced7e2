//! Date ranges, intervals and their resolution to UTC instants in the project's time zone.
//!
//! # Semantics (PostHog's, where PostHog has them)
//!
//! * A range is half-open, `[from, to)`, in UTC instants.
//! * `date_from` relative (`-7d`, `-12w`, `-6m`, `-1y`, `-24h`): *now* minus that much, in calendar
//!   terms in the project's time zone (`-1m` on 31 March is 29 February in a leap year, the
//!   month's last day when the day does not exist; `-24h` is exactly 24 hours), then **rounded down
//!   to the start of its interval bucket**. So `-7d` by day covers the 7 previous whole days plus
//!   today so far: 8 buckets, as PostHog's "Last 7 days". `mtd` / `ytd`: the start of the current
//!   month / year.
//! * `date_to` left out: the end of the bucket holding *now* (the current, partial bucket is
//!   included). Relative `date_to`: the end of the bucket holding *now* minus that much.
//! * Absolute dates (`2024-03-01`) are whole days in the project's time zone: `date_from` at the
//!   start of the day, `date_to` at the end of the day (inclusive). Date-times without an offset
//!   (`2024-03-01T09:30:00`) are wall-clock times in the project's zone, with an offset or `Z` exact
//!   instants; neither is rounded.
//! * Buckets are whole calendar buckets in the project's zone: hours, days (midnight to midnight,
//!   23 or 25 hours long across DST), weeks **starting on Monday** (ISO 8601; PostHog's default is
//!   Sunday, configurable per project — Flywheel fixes Monday for now), months. The first and last
//!   bucket may reach outside `[from, to)` when a bound is not on a bucket boundary; only events in
//!   `[from, to)` are counted.
//! * A local midnight that does not exist (a DST gap at midnight) is replaced by the first instant
//!   after the gap; an ambiguous local time (DST fall-back) by its earlier instant. Hour buckets
//!   follow real hours: the repeated hour of a fall-back is two buckets.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, LocalResult, Months, NaiveDate, NaiveDateTime,
    NaiveTime, Offset, TimeZone, Timelike, Utc,
};
use serde::{Serialize, Serializer};

use crate::read::{named_enum, type_name, Errors, Obj};
use crate::FieldError;

/// At most this many buckets in one resolved range.
pub const MAX_BUCKETS: usize = 10_000;
/// Largest amount in a relative bound (`-10000d`).
pub const MAX_RELATIVE: u32 = 10_000;

named_enum! {
    /// The width of a time bucket.
    pub enum Interval {
        /// One hour.
        Hour = "hour",
        /// One local calendar day.
        Day = "day",
        /// One week, Monday to Sunday.
        Week = "week",
        /// One calendar month.
        Month = "month",
    }
}

/// The unit of a relative bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelativeUnit {
    /// `h`: exact hours.
    Hour,
    /// `d`: calendar days.
    Day,
    /// `w`: 7 calendar days.
    Week,
    /// `m`: calendar months.
    Month,
    /// `y`: calendar years.
    Year,
}

impl RelativeUnit {
    fn letter(self) -> char {
        match self {
            RelativeUnit::Hour => 'h',
            RelativeUnit::Day => 'd',
            RelativeUnit::Week => 'w',
            RelativeUnit::Month => 'm',
            RelativeUnit::Year => 'y',
        }
    }
}

/// One end of a date range, as written in a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DateBound {
    /// `2024-03-01`: a whole day in the project's time zone.
    Date(NaiveDate),
    /// `2024-03-01T09:30:00`: a wall-clock time in the project's time zone.
    LocalDateTime(NaiveDateTime),
    /// `2024-03-01T09:30:00Z`, `…+02:00`: an exact instant.
    Instant(DateTime<FixedOffset>),
    /// `-7d`: now minus `amount` `unit`s (`-0d` is today).
    Relative {
        /// How many units back.
        amount: u32,
        /// Which unit.
        unit: RelativeUnit,
    },
    /// `mtd`: the start of the current month.
    MonthToDate,
    /// `ytd`: the start of the current year.
    YearToDate,
}

/// Why a date bound did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateBoundError(pub String);

impl fmt::Display for DateBoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DateBoundError {}

impl FromStr for DateBound {
    type Err = DateBoundError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DateBoundError(format!(
                "`{s}` is not a date: use YYYY-MM-DD, an ISO 8601 date-time, -N followed by h, d, w, m or y (e.g. -30d), mtd or ytd"
            ))
        };
        match s {
            "mtd" => return Ok(DateBound::MonthToDate),
            "ytd" => return Ok(DateBound::YearToDate),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix('-') {
            // The unit is the last character (not byte: the text may be any Unicode).
            let split = rest.char_indices().last().map_or(0, |(i, _)| i);
            let (digits, unit) = rest.split_at(split);
            let unit = match unit {
                "h" => RelativeUnit::Hour,
                "d" => RelativeUnit::Day,
                "w" => RelativeUnit::Week,
                "m" => RelativeUnit::Month,
                "y" => RelativeUnit::Year,
                _ => return Err(bad()),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let amount = digits
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= MAX_RELATIVE)
                .ok_or_else(|| {
                    DateBoundError(format!(
                        "`{s}` reaches too far back (at most {MAX_RELATIVE} units)"
                    ))
                })?;
            return Ok(DateBound::Relative { amount, unit });
        }
        if s.len() == 10 {
            return NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(DateBound::Date)
                .map_err(|_| bad());
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(DateBound::Instant(t));
        }
        for f in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%d %H:%M",
        ] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                return Ok(DateBound::LocalDateTime(t));
            }
        }
        Err(bad())
    }
}

impl fmt::Display for DateBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DateBound::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            DateBound::LocalDateTime(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f")),
            DateBound::Instant(t) => f.write_str(&t.to_rfc3339()),
            DateBound::Relative { amount, unit } => write!(f, "-{amount}{}", unit.letter()),
            DateBound::MonthToDate => f.write_str("mtd"),
            DateBound::YearToDate => f.write_str("ytd"),
        }
    }
}

impl Serialize for DateBound {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A date range as written: `date_from` and `date_to` at the top level of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct DateRange {
    /// Start; filled with the kind's default by `normalize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_from: Option<DateBound>,
    /// End; left out means "now" (the end of the current bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_to: Option<DateBound>,
}

/// Reads an optional date bound (`-30d`, `2024-03-01`, …) at `key`.
pub(crate) fn read_bound(o: &mut Obj<'_>, key: &'static str, e: &mut Errors) -> Option<DateBound> {
    let v = o.get(key)?;
    match v.as_str() {
        Some(s) => match s.parse::<DateBound>() {
            Ok(b) => Some(b),
            Err(err) => {
                e.push(o.at(key), err.0);
                None
            }
        },
        None => {
            e.push(o.at(key), format!("must be a string, not {}", type_name(v)));
            None
        }
    }
}

/// Reads `date_from` / `date_to` and checks what can be checked without a clock.
pub(crate) fn read_date_range(o: &mut Obj<'_>, e: &mut Errors) -> DateRange {
    let date_from = read_bound(o, "date_from", e);
    let date_to = read_bound(o, "date_to", e);
    if matches!(
        date_to,
        Some(DateBound::MonthToDate | DateBound::YearToDate)
    ) {
        e.push(o.at("date_to"), "mtd and ytd are only allowed in date_from");
    }
    // Absolute bounds in the same terms can be ordered now; the rest is checked by `resolve`.
    let naive_start = |b: &DateBound| match b {
        DateBound::Date(d) => Some(d.and_time(NaiveTime::MIN)),
        DateBound::LocalDateTime(t) => Some(*t),
        _ => None,
    };
    let naive_end = |b: &DateBound| match b {
        DateBound::Date(d) => d.succ_opt().map(|d| d.and_time(NaiveTime::MIN)),
        DateBound::LocalDateTime(t) => Some(*t),
        _ => None,
    };
    if let (Some(f), Some(t)) = (&date_from, &date_to) {
        let out_of_order = match (f, t) {
            (DateBound::Instant(a), DateBound::Instant(b)) => a >= b,
            _ => match (naive_start(f), naive_end(t)) {
                (Some(a), Some(b)) => a >= b,
                _ => false,
            },
        };
        if out_of_order {
            e.push(o.at("date_to"), "must be after date_from");
        }
    }
    DateRange { date_from, date_to }
}

/// One time bucket: `[start, end)` in UTC, labelled by its local start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Bucket {
    /// First instant of the bucket.
    pub start: DateTime<Utc>,
    /// First instant after the bucket.
    pub end: DateTime<Utc>,
    /// The bucket's start as a wall-clock time in the project's time zone (the chart label).
    pub label: NaiveDateTime,
}

/// A resolved range: the instants to count events in, and the buckets to group them by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeRange {
    /// First instant counted.
    pub from: DateTime<Utc>,
    /// First instant not counted.
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub interval: Interval,
    /// The buckets covering `[from, to)`, in order, contiguous.
    pub buckets: Vec<Bucket>,
}

impl TimeRange {
    /// The index of the bucket holding `t`, if `t` is in `[from, to)`.
    pub fn bucket_of(&self, t: DateTime<Utc>) -> Option<usize> {
        if t < self.from || t >= self.to {
            return None;
        }
        let i = self.buckets.partition_point(|b| b.end <= t);
        (i < self.buckets.len()).then_some(i)
    }

    /// The comparison period: as many whole buckets, immediately before this range's first bucket.
    pub fn previous_period<Tz: TimeZone>(&self, tz: &Tz) -> TimeRange {
        let n = self.buckets.len();
        let mut starts = Vec::with_capacity(n + 1);
        let mut b = self.buckets.first().map_or(self.from, |b| b.start);
        starts.push(b);
        for _ in 0..n {
            b = floor(b - Duration::seconds(1), self.interval, tz);
            starts.push(b);
        }
        starts.reverse();
        let buckets = starts
            .windows(2)
            .map(|w| Bucket {
                start: w[0],
                end: w[1],
                label: local(w[0], tz),
            })
            .collect::<Vec<_>>();
        TimeRange {
            from: starts[0],
            to: starts[n],
            interval: self.interval,
            buckets,
        }
    }
}

fn local<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> NaiveDateTime {
    t.with_timezone(tz).naive_local()
}

/// The UTC instant of a wall-clock time: the earlier of two when ambiguous, the end of the gap
/// when it does not exist.
pub fn local_to_utc<Tz: TimeZone>(t: NaiveDateTime, tz: &Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(x) => x.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
        LocalResult::None => {
            // Read the time with the offset in force before the gap: that lands after the jump.
            let before = tz
                .offset_from_utc_datetime(&(t - Duration::days(1)))
                .fix()
                .local_minus_utc();
            (t - Duration::seconds(before as i64)).and_utc()
        }
    }
}

/// The start of the bucket holding `t`.
pub fn floor<Tz: TimeZone>(t: DateTime<Utc>, interval: Interval, tz: &Tz) -> DateTime<Utc> {
    match interval {
        Interval::Hour => {
            let off = tz
                .offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc() as i64;
            let l = t.naive_utc() + Duration::seconds(off);
            let l = l.date().and_hms_opt(l.hour(), 0, 0).unwrap_or(l);
            (l - Duration::seconds(off)).and_utc()
        }
        Interval::Day | Interval::Week | Interval::Month => {
            let d = local(t, tz).date();
            local_to_utc(day_floor(d, interval).and_time(NaiveTime::MIN), tz)
        }
    }
}

fn day_floor(d: NaiveDate, interval: Interval) -> NaiveDate {
    match interval {
        Interval::Week => d - Duration::days(d.weekday().num_days_from_monday() as i64),
        Interval::Month => d.with_day(1).unwrap_or(d),
        _ => d,
    }
}

/// The start of the bucket after the one starting at `start` (a bucket boundary).
pub fn next_boundary<Tz: TimeZone>(
    start: DateTime<Utc>,
    interval: Interval,
    tz: &Tz,
) -> DateTime<Utc> {
    let next = match interval {
        Interval::Hour => floor(start + Duration::hours(1), Interval::Hour, tz),
        Interval::Day | Interval::Week | Interval::Month => {
            let d = day_floor(local(start, tz).date(), interval);
            let n = match interval {
                Interval::Day => d.succ_opt(),
                Interval::Week => d.checked_add_signed(Duration::days(7)),
                _ => d.checked_add_months(Months::new(1)),
            };
            match n {
                Some(n) => local_to_utc(n.and_time(NaiveTime::MIN), tz),
                None => start + Duration::days(31),
            }
        }
    };
    // Never stand still, whatever a zone's rules do.
    if next <= start {
        start + Duration::hours(1)
    } else {
        next
    }
}

fn out_of_range(field: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: "is out of the supported date range".into(),
    }
}

/// `now` moved back by a relative amount, in the project's calendar.
pub(crate) fn shift_back<Tz: TimeZone>(
    now: DateTime<Utc>,
    amount: u32,
    unit: RelativeUnit,
    tz: &Tz,
) -> Option<DateTime<Utc>> {
    let l = local(now, tz);
    let shifted = match unit {
        RelativeUnit::Hour => return now.checked_sub_signed(Duration::hours(amount as i64)),
        RelativeUnit::Day => l.checked_sub_signed(Duration::days(amount as i64))?,
        RelativeUnit::Week => l.checked_sub_signed(Duration::days(7 * amount as i64))?,
        RelativeUnit::Month => l.checked_sub_months(Months::new(amount))?,
        RelativeUnit::Year => l.checked_sub_months(Months::new(amount.checked_mul(12)?))?,
    };
    Some(local_to_utc(shifted, tz))
}

/// The first instant of a range starting at `bound` (a `date_from`), bucketed by `interval`.
/// Errors name `date_from`.
pub(crate) fn resolve_from<Tz: TimeZone>(
    bound: DateBound,
    now: DateTime<Utc>,
    tz: &Tz,
    interval: Interval,
) -> Result<DateTime<Utc>, FieldError> {
    Ok(match bound {
        DateBound::Date(d) => local_to_utc(d.and_time(NaiveTime::MIN), tz),
        DateBound::LocalDateTime(t) => local_to_utc(t, tz),
        DateBound::Instant(t) => t.with_timezone(&Utc),
        DateBound::Relative { amount, unit } => {
            let t = shift_back(now, amount, unit, tz).ok_or_else(|| out_of_range("date_from"))?;
            floor(t, interval, tz)
        }
        DateBound::MonthToDate => floor(now, Interval::Month, tz),
        DateBound::YearToDate => {
            let d = local(now, tz).date();
            let jan1 =
                NaiveDate::from_ymd_opt(d.year(), 1, 1).ok_or_else(|| out_of_range("date_from"))?;
            local_to_utc(jan1.and_time(NaiveTime::MIN), tz)
        }
    })
}

impl DateRange {
    /// Resolves the range to UTC instants and buckets, given the current time and the project's
    /// time zone. A missing `date_from` is read as `-7d`.
    ///
    /// Errors name `date_from`, `date_to` or `interval` (too many buckets).
    pub fn resolve<Tz: TimeZone>(
        &self,
        now: DateTime<Utc>,
        tz: &Tz,
        interval: Interval,
    ) -> Result<TimeRange, FieldError> {
        let from_bound = self.date_from.unwrap_or(DateBound::Relative {
            amount: 7,
            unit: RelativeUnit::Day,
        });
        let from = resolve_from(from_bound, now, tz, interval)?;
        let to = self.resolve_to(now, tz, interval)?;
        if from >= to {
            return Err(FieldError {
                field: "date_to".into(),
                message: format!("must be after date_from (the range resolves to {from} .. {to})"),
            });
        }
        let mut buckets = Vec::new();
        let mut start = floor(from, interval, tz);
        while start < to {
            if buckets.len() == MAX_BUCKETS {
                return Err(FieldError {
                    field: "interval".into(),
                    message: format!(
                        "the date range holds more than {MAX_BUCKETS} {interval} buckets: choose a longer interval or a shorter range"
                    ),
                });
            }
            let end = next_boundary(start, interval, tz);
            buckets.push(Bucket {
                start,
                end,
                label: local(start, tz),
            });
            start = end;
        }
        Ok(TimeRange {
            from,
            to,
            interval,
            buckets,
        })
    }
    /// The end (exclusive) of the range alone; see [`DateRange::resolve`].
    pub fn resolve_to<Tz: TimeZone>(
        &self,
        now: DateTime<Utc>,
        tz: &Tz,
        interval: Interval,
    ) -> Result<DateTime<Utc>, FieldError> {
        Ok(match self.date_to {
            None => next_boundary(floor(now, interval, tz), interval, tz),
            Some(DateBound::Date(d)) => {
                let next = d.succ_opt().ok_or_else(|| out_of_range("date_to"))?;
                local_to_utc(next.and_time(NaiveTime::MIN), tz)
            }
            Some(DateBound::LocalDateTime(t)) => local_to_utc(t, tz),
            Some(DateBound::Instant(t)) => t.with_timezone(&Utc),
            Some(DateBound::Relative { amount, unit }) => {
                let t = shift_back(now, amount, unit, tz).ok_or_else(|| out_of_range("date_to"))?;
                next_boundary(floor(t, interval, tz), interval, tz)
            }
            Some(DateBound::MonthToDate | DateBound::YearToDate) => {
                return Err(FieldError {
                    field: "date_to".into(),
                    message: "mtd and ytd are only allowed in date_from".into(),
                })
            }
        })
    }
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`), naming the field `timezone` when it
/// is unknown.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, FieldError> {
    name.parse::<chrono_tz::Tz>().map_err(|_| FieldError {
        field: "timezone".into(),
        message: format!("`{name}` is not an IANA time zone name (e.g. Europe/Berlin, UTC)"),
    })
}
