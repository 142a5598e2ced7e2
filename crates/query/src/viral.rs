//! K-factor and viral cycle time per sign-up cohort and invite channel: the pure part of
//! `GET /api/v1/projects/{id}/growth/k-factor` (the store reads the rows, this module buckets and measures them).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use flywheel_query::viral::{k_factor, Channel, Converted, KFactorParams, Sent};
//!
//! let params = KFactorParams::parse([("interval", "week"), ("date_from", "2026-11-02"),
//!     ("date_to", "2026-11-15")]).unwrap();
//! let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
//! let range = params.resolve(now, &chrono_tz::UTC).unwrap();
//! assert_eq!(range.buckets.len(), 2); // the weeks of 2 and 9 November
//!
//! let us = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap().timestamp_micros();
//! let joins = [us(2, 9), us(3, 10), us(10, 12)]; // two persons join in the first week, one in the second
//! let sent = [Sent { channel: Channel::Invitation, sender_joined_us: us(2, 9), count: 4 }];
//! let converted = [Converted { channel: Channel::Invitation, sender_joined_us: us(2, 9),
//!     receiver_joined_us: Some(us(3, 9)), converted_at_us: us(3, 9) }];
//! let report = k_factor(&params, &range, &joins, &sent, &converted);
//! let first = &report.cohorts[0];
//! assert_eq!(first.users, 2);
//! let invitation = first.channels.invitation.as_ref().unwrap();
//! assert_eq!((invitation.sent, invitation.converted), (4, 1));
//! assert_eq!(invitation.k_factor, Some(0.5)); // 1 converted / 2 users
//! assert_eq!(invitation.cycle_time.p50, Some(24.0)); // hours from the sender's join to the receiver's
//! ```
//!
//! # Semantics
//!
//! * **Cohorts** are the `interval` buckets (`day`, `week` starting on Monday, `month`) of the project's time zone
//!   covering `date_from ..= date_to` in whole buckets (`date_from` is moved back to the start of its bucket,
//!   `date_to` forward to the end of its own). Without `date_from` the range is the 12 buckets ending with the one
//!   holding `date_to` (by default today). Every bucket is reported, in time order, zeros where nothing happened.
//! * A sender's cohort is the bucket holding the sender person's join time (`persons.created_at`: their first
//!   event; after a merge the earliest of the merged persons'). `users` of a cohort is every person of the project
//!   who joined in it, whether they invited anyone or not.
//! * Per cohort and channel, `sent` counts every invite the cohort's members ever sent (up to now, not only
//!   inside the range) and `converted` those that brought a person in: for `referral` the clicks on the sender's
//!   referral links plus the referrals attributed without a click, and the referrals not `rejected`; for
//!   `invitation` the invitations created (a resend is the same invitation) and the accepted ones; for `share` the
//!   views of the sender's share links and the persons who came through them. `all` adds the three up.
//! * `invites_per_user = sent / users`, `conversion = converted / sent`, `k_factor = converted / users` (equal to
//!   `invites_per_user × conversion` whenever `sent > 0`); each is `null` when its denominator is 0.
//! * **Viral cycle time** of a converted invite: from the sender's join to the receiver's join (the receiver
//!   person's `created_at`; when that person is unknown, the time of the conversion), in hours, 0 when the
//!   receiver joined first (possible after merges). Reported as `count`, `p50`, `p90` (linear interpolation
//!   between the closest ranks, as NumPy's default), `mean`, and a histogram (`<1d`, `1–3d`, `3–7d`, `7–14d`,
//!   `14–30d`, `≥30d`; each bin holds `min_hours <= t < max_hours`).
//! * `totals` sums the cohorts of the range; its cycle times are over every converted invite of the range's
//!   cohorts (not an average of the cohorts' percentiles).

use chrono::{DateTime, Days, Duration, Months, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Serialize;

use crate::date::{floor, local_to_utc, next_boundary, Bucket, Interval, TimeRange};
use crate::read::{named_enum, Named};
use crate::FieldError;

named_enum! {
    /// How an invite travels from a sender to a new person.
    pub enum Channel {
        /// A referral link or code.
        Referral = "referral",
        /// An invitation to a group (an account).
        Invitation = "invitation",
        /// A share link to a product object.
        Share = "share",
    }
}

impl Channel {
    /// Every channel, in report order.
    pub const ALL: [Channel; 3] = [Channel::Referral, Channel::Invitation, Channel::Share];

    fn index(self) -> usize {
        match self {
            Channel::Referral => 0,
            Channel::Invitation => 1,
            Channel::Share => 2,
        }
    }
}

/// Cohorts reported when `date_from` is left out.
pub const DEFAULT_COHORTS: usize = 12;
/// Most cohorts in one report.
pub const MAX_COHORTS: usize = 1000;
/// The query parameters, in documentation order.
pub const PARAMETERS: &[&str] = &["interval", "date_from", "date_to", "channel"];

/// Earliest date accepted in `date_from` / `date_to`.
fn min_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// Latest date accepted.
fn max_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX)
}

/// The query of a K-factor report, as parsed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KFactorParams {
    /// Cohort width (`week` by default).
    pub interval: Interval,
    /// First day of the range (in the project's time zone).
    pub date_from: Option<NaiveDate>,
    /// Last day of the range, inclusive (today by default).
    pub date_to: Option<NaiveDate>,
    /// One channel only (`None`: each channel and `all`).
    pub channel: Option<Channel>,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn parse_date(field: &str, value: &str) -> Result<NaiveDate, FieldError> {
    let bad = || {
        field_error(
            field,
            format!("`{value}` is not a date: use YYYY-MM-DD (from 1970-01-01 to 9999-12-31)"),
        )
    };
    // `%Y` alone would also take signs and more than four digits.
    if value.len() != 10 || !value.is_ascii() {
        return Err(bad());
    }
    let d = NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| bad())?;
    if d < min_date() || d > max_date() {
        return Err(bad());
    }
    Ok(d)
}

impl KFactorParams {
    /// Reads the query parameters (name, value), reporting every problem at once, each naming its parameter:
    /// unknown names, a name given twice, an `interval` other than `day`, `week` or `month`, a date that is not
    /// `YYYY-MM-DD`, a `channel` other than `referral`, `invitation` or `share`, `date_from` after `date_to`.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        let mut out = KFactorParams {
            interval: Interval::Week,
            date_from: None,
            date_to: None,
            channel: None,
        };
        for (name, value) in params {
            if !PARAMETERS.contains(&name) {
                errors.push(field_error(
                    name,
                    format!("unknown parameter (use {})", PARAMETERS.join(", ")),
                ));
                continue;
            }
            if seen.contains(&name) {
                errors.push(field_error(name, "is given more than once"));
                continue;
            }
            seen.push(name);
            match name {
                "interval" => match Interval::from_name(value) {
                    Some(i @ (Interval::Day | Interval::Week | Interval::Month)) => {
                        out.interval = i
                    }
                    _ => errors.push(field_error(
                        "interval",
                        format!("`{value}` is not one of day, week, month"),
                    )),
                },
                "date_from" => match parse_date("date_from", value) {
                    Ok(d) => out.date_from = Some(d),
                    Err(e) => errors.push(e),
                },
                "date_to" => match parse_date("date_to", value) {
                    Ok(d) => out.date_to = Some(d),
                    Err(e) => errors.push(e),
                },
                _ => match Channel::from_name(value) {
                    Some(c) => out.channel = Some(c),
                    None => errors.push(field_error(
                        "channel",
                        format!(
                            "`{value}` is not one of {} (leave it out for all of them)",
                            Channel::NAMES.join(", ")
                        ),
                    )),
                },
            }
        }
        if let (Some(from), Some(to)) = (out.date_from, out.date_to) {
            if from > to {
                errors.push(field_error(
                    "date_from",
                    format!("{from} is after date_to ({to})"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// The cohorts: whole buckets of `interval` in `tz` from the bucket holding `date_from` (by default
    /// [`DEFAULT_COHORTS`] buckets back) to the bucket holding `date_to` (by default the day of `now`). `from` and
    /// `to` of the range are the first and last buckets' bounds. Errors name `date_from` (after today, when
    /// `date_to` is left out) or `interval` (more than [`MAX_COHORTS`] buckets).
    pub fn resolve<Tz: TimeZone>(
        &self,
        now: DateTime<Utc>,
        tz: &Tz,
    ) -> Result<TimeRange, FieldError> {
        let interval = self.interval;
        let day_start = |d: NaiveDate| local_to_utc(d.and_time(NaiveTime::MIN), tz);
        let to_day = match self.date_to {
            Some(d) => d,
            None => now.with_timezone(tz).date_naive(),
        };
        if let Some(from) = self.date_from.filter(|from| *from > to_day) {
            return Err(field_error(
                "date_from",
                format!("{from} is after date_to (by default today, {to_day})"),
            ));
        }
        let last = floor(day_start(to_day), interval, tz);
        let first = match self.date_from {
            Some(d) => floor(day_start(d), interval, tz),
            None => {
                let mut start = last;
                for _ in 1..DEFAULT_COHORTS {
                    start = floor(start - Duration::seconds(1), interval, tz);
                }
                start
            }
        };
        let too_many = || {
            field_error(
                "interval",
                format!(
                    "the range holds more than {MAX_COHORTS} {interval} cohorts: choose a longer interval or a shorter range"
                ),
            )
        };
        let mut buckets = Vec::new();
        let mut start = first;
        while start <= last {
            if buckets.len() == MAX_COHORTS {
                return Err(too_many());
            }
            let end = next_boundary(start, interval, tz);
            buckets.push(Bucket {
                start,
                end,
                label: start.with_timezone(tz).naive_local(),
            });
            start = end;
        }
        let (Some(from), Some(to)) = (buckets.first(), buckets.last()) else {
            return Err(too_many()); // unreachable: `first <= last`
        };
        Ok(TimeRange {
            from: from.start,
            to: to.end,
            interval,
            buckets,
        })
    }
}

/// Invites sent by one sender: how many, on which channel, and when the sender joined (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub channel: Channel,
    pub sender_joined_us: i64,
    pub count: u64,
}

/// One converted invite (µs since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub channel: Channel,
    pub sender_joined_us: i64,
    /// The receiver person's join time, when the person is known.
    pub receiver_joined_us: Option<i64>,
    /// When the invite converted (attribution, acceptance, visit): the receiver's join when unknown.
    pub converted_at_us: i64,
}

/// One bin of the cycle-time histogram: `min_hours <= t < max_hours` (`max_hours` null: no upper bound).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBin {
    pub bucket: &'static str,
    pub min_hours: f64,
    pub max_hours: Option<f64>,
    pub count: u64,
}

/// The histogram's bins: label and lower bound in hours (each bin ends where the next starts).
const BINS: [(&str, f64); 6] = [
    ("<1d", 0.0),
    ("1–3d", 24.0),
    ("3–7d", 72.0),
    ("7–14d", 168.0),
    ("14–30d", 336.0),
    ("≥30d", 720.0),
];

/// Viral cycle times of a cohort and channel, in hours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleTime {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub mean: Option<f64>,
    pub histogram: Vec<HistogramBin>,
}

/// The `q` quantile (0–1) of sorted values, interpolating linearly between the closest ranks.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * q;
    let lo = (h.floor() as usize).min(last);
    let hi = (lo + 1).min(last);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

impl CycleTime {
    fn of(mut hours: Vec<f64>) -> Self {
        hours.sort_by(f64::total_cmp);
        let mut histogram: Vec<HistogramBin> = BINS
            .iter()
            .enumerate()
            .map(|(i, (bucket, min))| HistogramBin {
                bucket,
                min_hours: *min,
                max_hours: BINS.get(i + 1).map(|b| b.1),
                count: 0,
            })
            .collect();
        for h in &hours {
            let bin = BINS.iter().rposition(|(_, min)| h >= min).unwrap_or(0);
            histogram[bin].count += 1;
        }
        let n = hours.len();
        CycleTime {
            count: n as u64,
            p50: quantile(&hours, 0.5),
            p90: quantile(&hours, 0.9),
            mean: (n > 0).then(|| hours.iter().sum::<f64>() / n as f64),
            histogram,
        }
    }
}

/// A cohort's (or the totals') numbers on one channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelMetrics {
    pub sent: u64,
    pub converted: u64,
    pub invites_per_user: Option<f64>,
    pub conversion: Option<f64>,
    pub k_factor: Option<f64>,
    pub cycle_time: CycleTime,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl ChannelMetrics {
    fn of(users: u64, acc: &Acc) -> Self {
        ChannelMetrics {
            sent: acc.sent,
            converted: acc.hours.len() as u64,
            invites_per_user: ratio(acc.sent, users),
            conversion: ratio(acc.hours.len() as u64, acc.sent),
            k_factor: ratio(acc.hours.len() as u64, users),
            cycle_time: CycleTime::of(acc.hours.clone()),
        }
    }
}

/// The channels reported: each of the three and `all`, or the one asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelSet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referral: Option<ChannelMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invitation: Option<ChannelMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<ChannelMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<ChannelMetrics>,
}

impl ChannelSet {
    /// The numbers of `channel`.
    pub fn get(&self, channel: Channel) -> Option<&ChannelMetrics> {
        match channel {
            Channel::Referral => self.referral.as_ref(),
            Channel::Invitation => self.invitation.as_ref(),
            Channel::Share => self.share.as_ref(),
        }
    }
}

/// One cohort's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortMetrics {
    /// The bucket's first day (in the project's time zone).
    pub cohort: NaiveDate,
    pub users: u64,
    pub channels: ChannelSet,
}

/// The range's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub users: u64,
    pub channels: ChannelSet,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KFactorReport {
    pub interval: Interval,
    /// First day of the first cohort.
    pub date_from: NaiveDate,
    /// Last day of the last cohort.
    pub date_to: NaiveDate,
    pub cohorts: Vec<CohortMetrics>,
    pub totals: Totals,
}

/// Sent invites and cycle times (hours) of one cohort and channel.
#[derive(Debug, Clone, Default)]
struct Acc {
    sent: u64,
    hours: Vec<f64>,
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.sent = self.sent.saturating_add(other.sent);
        self.hours.extend_from_slice(&other.hours);
    }
}

fn channel_set(params: &KFactorParams, users: u64, accs: &[Acc; 3]) -> ChannelSet {
    let wanted = |c: Channel| {
        (params.channel.is_none() || params.channel == Some(c))
            .then(|| ChannelMetrics::of(users, &accs[c.index()]))
    };
    let all = params.channel.is_none().then(|| {
        let mut all = Acc::default();
        for a in accs {
            all.add(a);
        }
        ChannelMetrics::of(users, &all)
    });
    ChannelSet {
        referral: wanted(Channel::Referral),
        invitation: wanted(Channel::Invitation),
        share: wanted(Channel::Share),
        all,
    }
}

const MICROS_PER_HOUR: f64 = 3_600_000_000.0;

/// The last day of the bucket whose first day is `first`.
fn last_day(first: NaiveDate, interval: Interval) -> NaiveDate {
    let next = match interval {
        Interval::Week => first.checked_add_days(Days::new(7)),
        Interval::Month => first.checked_add_months(Months::new(1)),
        Interval::Day | Interval::Hour => None,
    };
    next.and_then(|d| d.pred_opt()).unwrap_or(first)
}

/// Buckets the joins, sent and converted invites by the cohort of the (sending) person and measures each cohort
/// and channel; rows outside `range` are left out. See the module documentation for the definitions.
pub fn k_factor(
    params: &KFactorParams,
    range: &TimeRange,
    joins: &[i64],
    sent: &[Sent],
    converted: &[Converted],
) -> KFactorReport {
    let n = range.buckets.len();
    let cohort_of = |us: i64| DateTime::from_timestamp_micros(us).and_then(|t| range.bucket_of(t));
    let mut users = vec![0u64; n];
    for &j in joins {
        if let Some(i) = cohort_of(j) {
            users[i] += 1;
        }
    }
    let mut accs: Vec<[Acc; 3]> = vec![Default::default(); n];
    for s in sent {
        if let Some(i) = cohort_of(s.sender_joined_us) {
            let acc = &mut accs[i][s.channel.index()];
            acc.sent = acc.sent.saturating_add(s.count);
        }
    }
    for c in converted {
        if let Some(i) = cohort_of(c.sender_joined_us) {
            let receiver = c.receiver_joined_us.unwrap_or(c.converted_at_us);
            let micros = receiver.saturating_sub(c.sender_joined_us).max(0);
            accs[i][c.channel.index()]
                .hours
                .push(micros as f64 / MICROS_PER_HOUR);
        }
    }
    let mut total_accs: [Acc; 3] = Default::default();
    let cohorts = range
        .buckets
        .iter()
        .zip(users.iter().zip(&accs))
        .map(|(b, (&u, a))| {
            for (t, x) in total_accs.iter_mut().zip(a) {
                t.add(x);
            }
            CohortMetrics {
                cohort: b.label.date(),
                users: u,
                channels: channel_set(params, u, a),
            }
        })
        .collect();
    let total_users = users.iter().sum();
    let date_from = range
        .buckets
        .first()
        .map_or(range.from.date_naive(), |b| b.label.date());
    let date_to = range.buckets.last().map_or(range.to.date_naive(), |b| {
        last_day(b.label.date(), range.interval)
    });
    KFactorReport {
        interval: range.interval,
        date_from,
        date_to,
        cohorts,
        totals: Totals {
            users: total_users,
            channels: channel_set(params, total_users, &total_accs),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn params(q: &[(&str, &str)]) -> Result<KFactorParams, Vec<FieldError>> {
        KFactorParams::parse(q.iter().copied())
    }

    fn fields(q: &[(&str, &str)]) -> Vec<String> {
        params(q)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn us(y: i32, m: u32, d: u32, h: u32) -> i64 {
        utc(y, m, d, h).timestamp_micros()
    }

    fn labels(r: &TimeRange) -> Vec<String> {
        r.buckets
            .iter()
            .map(|b| b.label.date().to_string())
            .collect()
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let p = params(&[]).unwrap();
        assert_eq!(
            (p.interval, p.date_from, p.date_to, p.channel),
            (Interval::Week, None, None, None)
        );
        let p = params(&[
            ("interval", "month"),
            ("channel", "share"),
            ("date_to", "2026-02-28"),
        ])
        .unwrap();
        assert_eq!(
            (p.interval, p.channel, p.date_to),
            (
                Interval::Month,
                Some(Channel::Share),
                NaiveDate::from_ymd_opt(2026, 2, 28)
            )
        );
        assert_eq!(fields(&[("interval", "hour")]), ["interval"]);
        assert_eq!(fields(&[("interval", "")]), ["interval"]);
        assert_eq!(fields(&[("channel", "email")]), ["channel"]);
        assert_eq!(fields(&[("date_from", "2026-02-30")]), ["date_from"]);
        assert_eq!(fields(&[("date_to", "+12026-02-01")]), ["date_to"]);
        assert_eq!(fields(&[("date_to", "1969-12-31")]), ["date_to"]);
        assert_eq!(fields(&[("date_to", "-7d")]), ["date_to"]);
        assert_eq!(fields(&[("date_to", "2026-1-01")]), ["date_to"]);
        assert_eq!(
            fields(&[("date_from", "2026-03-02"), ("date_to", "2026-03-01")]),
            ["date_from"]
        );
        assert_eq!(
            fields(&[("interval", "day"), ("interval", "week")]),
            ["interval"]
        );
        // Every problem at once.
        assert_eq!(
            fields(&[("person", "x"), ("interval", "year"), ("channel", "")]),
            ["person", "interval", "channel"]
        );
        let e = params(&[("interval", "year")]).unwrap_err();
        assert!(e[0].message.contains("day, week, month"), "{e:?}");
    }

    #[test]
    fn default_range_is_twelve_buckets_ending_with_today() {
        // Wednesday 2026-11-18.
        let now = utc(2026, 11, 18, 15);
        let r = params(&[]).unwrap().resolve(now, &chrono_tz::UTC).unwrap();
        assert_eq!(r.buckets.len(), 12);
        assert_eq!(labels(&r)[11], "2026-11-16", "weeks start on Monday");
        assert_eq!(labels(&r)[0], "2026-08-31");
        assert_eq!((r.from, r.to), (utc(2026, 8, 31, 0), utc(2026, 11, 23, 0)));
        let r = params(&[("interval", "month")])
            .unwrap()
            .resolve(now, &chrono_tz::UTC)
            .unwrap();
        assert_eq!(labels(&r)[0], "2025-12-01");
        assert_eq!(labels(&r)[11], "2026-11-01");
        let r = params(&[("interval", "day"), ("date_to", "2026-03-01")])
            .unwrap()
            .resolve(now, &chrono_tz::UTC)
            .unwrap();
        assert_eq!(labels(&r)[0], "2026-02-18");
        assert_eq!(labels(&r)[11], "2026-03-01");
    }

    #[test]
    fn explicit_ranges_are_whole_buckets_in_the_project_zone() {
        let now = utc(2026, 11, 18, 15);
        let berlin = chrono_tz::Europe::Berlin;
        let r = params(&[("date_from", "2026-10-21"), ("date_to", "2026-11-03")])
            .unwrap()
            .resolve(now, &berlin)
            .unwrap();
        assert_eq!(labels(&r), ["2026-10-19", "2026-10-26", "2026-11-02"]);
        // Berlin's midnight is 22:00 or 23:00 UTC; the week of 19 October is an hour longer (summer time ends on
        // the 25th).
        assert_eq!(
            r.from,
            Utc.with_ymd_and_hms(2026, 10, 18, 22, 0, 0).unwrap()
        );
        assert_eq!(r.to, Utc.with_ymd_and_hms(2026, 11, 8, 23, 0, 0).unwrap());
        assert_eq!(
            r.buckets[0].end - r.buckets[0].start,
            Duration::hours(7 * 24 + 1)
        );
        assert_eq!(
            r.buckets[1].end - r.buckets[1].start,
            Duration::hours(7 * 24)
        );
        let p = params(&[("date_from", "2026-11-19")]).unwrap();
        assert_eq!(
            p.resolve(now, &berlin).unwrap_err().field,
            "date_from",
            "after today"
        );
        let p = params(&[("interval", "day"), ("date_from", "1970-01-01")]).unwrap();
        assert_eq!(p.resolve(now, &berlin).unwrap_err().field, "interval");
        // The widest range accepted resolves without trouble.
        let p = params(&[
            ("interval", "month"),
            ("date_from", "9940-01-01"),
            ("date_to", "9999-12-31"),
        ])
        .unwrap();
        assert_eq!(
            p.resolve(now, &chrono_tz::Pacific::Kiritimati)
                .unwrap()
                .buckets
                .len(),
            720
        );
        let p = params(&[
            ("interval", "day"),
            ("date_from", "1970-01-01"),
            ("date_to", "1970-01-01"),
        ])
        .unwrap();
        assert_eq!(
            p.resolve(now, &chrono_tz::Pacific::Pago_Pago)
                .unwrap()
                .buckets
                .len(),
            1
        );
    }

    fn week_range() -> (KFactorParams, TimeRange) {
        let p = params(&[("date_from", "2026-11-02"), ("date_to", "2026-11-22")]).unwrap();
        let r = p.resolve(utc(2026, 12, 1, 0), &chrono_tz::UTC).unwrap();
        (p, r)
    }

    fn conv(channel: Channel, sender: i64, receiver: Option<i64>, at: i64) -> Converted {
        Converted {
            channel,
            sender_joined_us: sender,
            receiver_joined_us: receiver,
            converted_at_us: at,
        }
    }

    #[test]
    fn cohorts_channels_ratios_and_totals() {
        let (p, r) = week_range();
        let a = us(2026, 11, 2, 0); // the first instant of the first week (2–8 November)
        let b = us(2026, 11, 15, 23); // the last hour of the second week
        let joins = [
            a,
            us(2026, 11, 8, 23),
            b,
            us(2026, 11, 1, 23),
            us(2026, 11, 23, 0),
        ];
        let sent = [
            Sent {
                channel: Channel::Referral,
                sender_joined_us: a,
                count: 3,
            },
            Sent {
                channel: Channel::Referral,
                sender_joined_us: a,
                count: 1,
            },
            Sent {
                channel: Channel::Share,
                sender_joined_us: a,
                count: 2,
            },
            Sent {
                channel: Channel::Invitation,
                sender_joined_us: b,
                count: 5,
            },
            // Out of range: left out.
            Sent {
                channel: Channel::Invitation,
                sender_joined_us: us(2026, 11, 1, 23),
                count: 7,
            },
        ];
        let converted = [
            conv(Channel::Referral, a, Some(a + 3_600_000_000), 0),
            conv(Channel::Referral, a, Some(a + 30 * 3_600_000_000), 0),
            conv(Channel::Share, a, None, a + 2 * 3_600_000_000), // no person: the visit's time
            conv(Channel::Invitation, b, Some(b - 5), 0),         // joined before: 0
            conv(Channel::Invitation, us(2026, 11, 23, 0), Some(0), 0),
        ];
        let report = k_factor(&p, &r, &joins, &sent, &converted);
        assert_eq!(report.cohorts.len(), 3);
        assert_eq!(
            (report.date_from.to_string(), report.date_to.to_string()),
            ("2026-11-02".into(), "2026-11-22".into())
        );
        let users: Vec<u64> = report.cohorts.iter().map(|c| c.users).collect();
        assert_eq!(users, [2, 1, 0]);
        let first = &report.cohorts[0].channels;
        let referral = first.referral.as_ref().unwrap();
        assert_eq!((referral.sent, referral.converted), (4, 2));
        assert_eq!(referral.invites_per_user, Some(2.0));
        assert_eq!(referral.conversion, Some(0.5));
        assert_eq!(referral.k_factor, Some(1.0));
        assert_eq!(referral.cycle_time.p50, Some(15.5));
        assert_eq!(referral.cycle_time.mean, Some(15.5));
        let share = first.share.as_ref().unwrap();
        assert_eq!(
            (share.sent, share.converted, share.cycle_time.p50),
            (2, 1, Some(2.0))
        );
        let all = first.all.as_ref().unwrap();
        assert_eq!((all.sent, all.converted, all.k_factor), (6, 3, Some(1.5)));
        assert_eq!(all.cycle_time.p50, Some(2.0));
        let invitation = first.invitation.as_ref().unwrap();
        assert_eq!(
            (invitation.sent, invitation.conversion, invitation.k_factor),
            (0, None, Some(0.0))
        );
        assert_eq!(invitation.cycle_time.p50, None);
        let second = report.cohorts[1].channels.invitation.as_ref().unwrap();
        assert_eq!(
            (second.sent, second.converted, second.cycle_time.p90),
            (5, 1, Some(0.0))
        );
        // An empty cohort: zeros, ratios null.
        let empty = report.cohorts[2].channels.all.as_ref().unwrap();
        assert_eq!(
            (empty.sent, empty.invites_per_user, empty.k_factor),
            (0, None, None)
        );
        // Totals over the range's cohorts.
        assert_eq!(report.totals.users, 3);
        let t = report.totals.channels.all.as_ref().unwrap();
        assert_eq!((t.sent, t.converted), (11, 4));
        assert_eq!(t.k_factor, Some(4.0 / 3.0));
        assert_eq!(t.cycle_time.count, 4);
        // 0, 1, 2, 30 hours.
        assert_eq!(t.cycle_time.p50, Some(1.5));
        assert!((t.cycle_time.p90.unwrap() - (2.0 + 0.7 * 28.0)).abs() < 1e-9);
        assert_eq!(t.cycle_time.mean, Some(33.0 / 4.0));
    }

    #[test]
    fn one_channel_asked_for_reports_it_alone() {
        let (_, r) = week_range();
        let p = params(&[("channel", "invitation")]).unwrap();
        let report = k_factor(&p, &r, &[], &[], &[]);
        let json = serde_json::to_value(&report).unwrap();
        let keys: Vec<&String> = json["totals"]["channels"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["invitation"]);
        assert_eq!(json["cohorts"][0]["cohort"], "2026-11-02");
        assert_eq!(json["interval"], "week");
        assert!(json["totals"]["channels"]["invitation"]["k_factor"].is_null());
    }

    #[test]
    fn histogram_bins_are_half_open() {
        let h = |hours: &[f64]| {
            CycleTime::of(hours.to_vec())
                .histogram
                .iter()
                .map(|b| b.count)
                .collect::<Vec<_>>()
        };
        assert_eq!(h(&[0.0, 23.99, 24.0]), [2, 1, 0, 0, 0, 0]);
        assert_eq!(
            h(&[71.9, 72.0, 167.0, 168.0, 335.0, 336.0, 719.9, 720.0, 1e6]),
            [0, 1, 2, 2, 2, 2]
        );
        let c = CycleTime::of(vec![]);
        assert_eq!((c.count, c.p50, c.p90, c.mean), (0, None, None, None));
        assert_eq!(c.histogram.len(), 6);
        assert_eq!(c.histogram[5].max_hours, None);
        assert_eq!(c.histogram[1].max_hours, Some(72.0));
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[4.0], 0.9), Some(4.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 10.0], 0.5), Some(2.5));
        assert!((quantile(&[0.0, 10.0], 0.9).unwrap() - 9.0).abs() < 1e-12);
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.9), Some(10.0));
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let (p, r) = week_range();
        let extremes = [i64::MIN, i64::MAX, 0, -1];
        let sent: Vec<Sent> = extremes
            .iter()
            .map(|&t| Sent {
                channel: Channel::Share,
                sender_joined_us: t,
                count: u64::MAX / 8,
            })
            .collect();
        let converted: Vec<Converted> = extremes
            .iter()
            .flat_map(|&a| {
                extremes
                    .iter()
                    .map(move |&b| conv(Channel::Referral, a, Some(b), b))
            })
            .collect();
        let report = k_factor(&p, &r, &extremes, &sent, &converted);
        assert_eq!(report.totals.users, 0);
        // In range with a receiver at the end of time.
        let a = us(2026, 11, 3, 0);
        let report = k_factor(
            &p,
            &r,
            &[a],
            &[],
            &[conv(Channel::Referral, a, Some(i64::MAX), 0)],
        );
        let c = &report.totals.channels.referral.as_ref().unwrap().cycle_time;
        assert_eq!(c.histogram[5].count, 1);
        assert!(c.p50.unwrap().is_finite());
    }
}
