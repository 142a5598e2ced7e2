//! Date-range resolution: relative bounds, absolute bounds, bucket boundaries across DST and
//! month ends, comparison periods, retention periods.

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::{America::New_York, America::Santiago, Europe::Berlin, Tz};
use flywheel_query::*;
use serde_json::json;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn naive(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap()
}

fn range(from: Option<&str>, to: Option<&str>) -> DateRange {
    DateRange {
        date_from: from.map(|s| s.parse().unwrap()),
        date_to: to.map(|s| s.parse().unwrap()),
    }
}

fn resolve<Z: TimeZone>(
    from: Option<&str>,
    to: Option<&str>,
    now: &str,
    tz: &Z,
    interval: Interval,
) -> TimeRange {
    range(from, to)
        .resolve(utc(now), tz, interval)
        .unwrap_or_else(|e| panic!("{from:?}..{to:?}: {e:?}"))
}

/// Buckets are contiguous, ordered, and cover the range.
fn well_formed(r: &TimeRange) {
    assert!(!r.buckets.is_empty());
    assert!(r.buckets[0].start <= r.from && r.from < r.buckets[0].end);
    assert!(r.buckets.last().unwrap().end >= r.to);
    for w in r.buckets.windows(2) {
        assert_eq!(w[0].end, w[1].start);
        assert!(w[0].start < w[0].end);
    }
}

#[test]
fn relative_ranges_in_utc() {
    // (date_from, date_to, interval, now, from, to, buckets)
    let cases = [
        // -7d includes today: the 7 previous days and today, 8 buckets (PostHog's semantics).
        (
            "-7d",
            None,
            Interval::Day,
            "2024-03-15T12:34:56Z",
            "2024-03-08T00:00:00Z",
            "2024-03-16T00:00:00Z",
            8,
        ),
        (
            "-0d",
            None,
            Interval::Day,
            "2024-03-15T12:34:56Z",
            "2024-03-15T00:00:00Z",
            "2024-03-16T00:00:00Z",
            1,
        ),
        (
            "-30d",
            None,
            Interval::Day,
            "2024-03-15T00:00:00Z",
            "2024-02-14T00:00:00Z",
            "2024-03-16T00:00:00Z",
            31,
        ),
        // -24h is exact hours, rounded to the hour.
        (
            "-24h",
            None,
            Interval::Hour,
            "2024-03-15T12:22:23Z",
            "2024-03-14T12:00:00Z",
            "2024-03-15T13:00:00Z",
            25,
        ),
        // -12w by week: back 84 days (a Wednesday), rounded to its Monday.
        (
            "-12w",
            None,
            Interval::Week,
            "2024-03-13T09:00:00Z",
            "2023-12-18T00:00:00Z",
            "2024-03-18T00:00:00Z",
            13,
        ),
        // Months are calendar months, clamped to the month's last day.
        (
            "-1m",
            None,
            Interval::Day,
            "2024-03-31T10:00:00Z",
            "2024-02-29T00:00:00Z",
            "2024-04-01T00:00:00Z",
            32,
        ),
        (
            "-6m",
            None,
            Interval::Month,
            "2024-08-31T10:00:00Z",
            "2024-02-01T00:00:00Z",
            "2024-09-01T00:00:00Z",
            7,
        ),
        (
            "-1y",
            None,
            Interval::Day,
            "2024-02-29T10:00:00Z",
            "2023-02-28T00:00:00Z",
            "2024-03-01T00:00:00Z",
            367,
        ),
        (
            "mtd",
            None,
            Interval::Day,
            "2024-03-15T10:00:00Z",
            "2024-03-01T00:00:00Z",
            "2024-03-16T00:00:00Z",
            15,
        ),
        (
            "ytd",
            None,
            Interval::Month,
            "2024-03-15T10:00:00Z",
            "2024-01-01T00:00:00Z",
            "2024-04-01T00:00:00Z",
            3,
        ),
        // A relative date_to ends with the bucket holding it.
        (
            "-14d",
            Some("-7d"),
            Interval::Day,
            "2024-03-15T10:00:00Z",
            "2024-03-01T00:00:00Z",
            "2024-03-09T00:00:00Z",
            8,
        ),
        // Absolute dates are whole days, date_to included.
        (
            "2024-01-01",
            Some("2024-01-31"),
            Interval::Day,
            "2024-03-15T10:00:00Z",
            "2024-01-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
            31,
        ),
        // An absolute range by week: buckets are whole weeks reaching outside the range.
        (
            "2024-01-03",
            Some("2024-01-10"),
            Interval::Week,
            "2024-03-15T10:00:00Z",
            "2024-01-03T00:00:00Z",
            "2024-01-11T00:00:00Z",
            2,
        ),
        // Date-times are exact, not rounded.
        (
            "2024-03-01T10:30:00Z",
            Some("2024-03-01T12:15:00+01:00"),
            Interval::Hour,
            "2024-03-15T10:00:00Z",
            "2024-03-01T10:30:00Z",
            "2024-03-01T11:15:00Z",
            2,
        ),
    ];
    for (from, to, interval, now, want_from, want_to, n) in cases {
        let r = resolve(Some(from), to, now, &Utc, interval);
        assert_eq!(
            (r.from, r.to, r.buckets.len()),
            (utc(want_from), utc(want_to), n),
            "{from}..{to:?} by {interval} at {now}"
        );
        well_formed(&r);
    }
}

#[test]
fn missing_date_from_is_seven_days() {
    let r = range(None, None)
        .resolve(utc("2024-03-15T12:00:00Z"), &Utc, Interval::Day)
        .unwrap();
    assert_eq!(r.from, utc("2024-03-08T00:00:00Z"));
}

#[test]
fn relative_ranges_follow_the_project_zone() {
    // 22:00 on 14 March in New York (EDT, -4) is already 15 March in UTC.
    let r = resolve(
        Some("-7d"),
        None,
        "2024-03-15T02:00:00Z",
        &New_York,
        Interval::Day,
    );
    // 7 March is still EST (-5); 14 March's day ends at 15 March 00:00 EDT.
    assert_eq!(r.from, utc("2024-03-07T05:00:00Z"));
    assert_eq!(r.to, utc("2024-03-15T04:00:00Z"));
    assert_eq!(r.buckets.len(), 8);
    assert_eq!(r.buckets[0].label, naive("2024-03-07T00:00"));
    // The bucket of 10 March (spring forward) is 23 hours long.
    let b = r
        .buckets
        .iter()
        .find(|b| b.label == naive("2024-03-10T00:00"))
        .unwrap();
    assert_eq!(b.end - b.start, Duration::hours(23));
    well_formed(&r);
}

/// (zone, local day, UTC start, hours in the day)
fn check_days(tz: Tz, days: &[(&str, &str, i64)]) {
    for (day, start, hours) in days {
        let r = resolve(
            Some(day),
            Some(day),
            "2025-01-01T00:00:00Z",
            &tz,
            Interval::Day,
        );
        assert_eq!(r.buckets.len(), 1, "{tz} {day}");
        let b = r.buckets[0];
        assert_eq!(b.start, utc(start), "{tz} {day}");
        assert_eq!(b.end - b.start, Duration::hours(*hours), "{tz} {day}");
        assert_eq!((r.from, r.to), (b.start, b.end));
    }
}

#[test]
fn days_across_dst() {
    check_days(
        New_York,
        &[
            ("2024-03-09", "2024-03-09T05:00:00Z", 24),
            ("2024-03-10", "2024-03-10T05:00:00Z", 23),
            ("2024-03-11", "2024-03-11T04:00:00Z", 24),
            ("2024-11-03", "2024-11-03T04:00:00Z", 25),
            ("2024-11-04", "2024-11-04T05:00:00Z", 24),
        ],
    );
    check_days(
        Berlin,
        &[
            ("2024-03-31", "2024-03-30T23:00:00Z", 23),
            ("2024-04-01", "2024-03-31T22:00:00Z", 24),
            ("2024-10-27", "2024-10-26T22:00:00Z", 25),
        ],
    );
    // Chile moves its clocks at midnight: 8 September 2024 starts at 01:00 (-03).
    check_days(
        Santiago,
        &[
            ("2024-09-07", "2024-09-07T04:00:00Z", 24),
            ("2024-09-08", "2024-09-08T04:00:00Z", 23),
        ],
    );
}

#[test]
fn hours_across_dst() {
    // Fall back in New York: 01:00 happens twice, as two buckets.
    let r = resolve(
        Some("2024-11-03T00:00"),
        Some("2024-11-03T03:00"),
        "2025-01-01T00:00:00Z",
        &New_York,
        Interval::Hour,
    );
    assert_eq!(
        (r.from, r.to),
        (utc("2024-11-03T04:00:00Z"), utc("2024-11-03T08:00:00Z"))
    );
    let labels: Vec<_> = r.buckets.iter().map(|b| b.label).collect();
    assert_eq!(
        labels,
        [
            "2024-11-03T00:00",
            "2024-11-03T01:00",
            "2024-11-03T01:00",
            "2024-11-03T02:00"
        ]
        .map(naive)
    );
    assert!(r
        .buckets
        .iter()
        .all(|b| b.end - b.start == Duration::hours(1)));
    // Spring forward: there is no 02:00.
    let r = resolve(
        Some("2024-03-10T00:00"),
        Some("2024-03-10T04:00"),
        "2025-01-01T00:00:00Z",
        &New_York,
        Interval::Hour,
    );
    let labels: Vec<_> = r.buckets.iter().map(|b| b.label).collect();
    assert_eq!(
        labels,
        ["2024-03-10T00:00", "2024-03-10T01:00", "2024-03-10T03:00"].map(naive)
    );
    // A wall-clock time inside the gap means the instant after the gap.
    let r = resolve(
        Some("2024-03-10T02:30"),
        Some("2024-03-10T04:00"),
        "2025-01-01T00:00:00Z",
        &New_York,
        Interval::Hour,
    );
    assert_eq!(r.from, utc("2024-03-10T07:30:00Z"));
}

#[test]
fn weeks_start_on_monday_across_dst() {
    let r = resolve(
        Some("2024-03-20"),
        Some("2024-04-03"),
        "2025-01-01T00:00:00Z",
        &Berlin,
        Interval::Week,
    );
    let starts: Vec<_> = r.buckets.iter().map(|b| (b.label, b.start)).collect();
    assert_eq!(
        starts,
        [
            (naive("2024-03-18T00:00"), utc("2024-03-17T23:00:00Z")),
            (naive("2024-03-25T00:00"), utc("2024-03-24T23:00:00Z")),
            (naive("2024-04-01T00:00"), utc("2024-03-31T22:00:00Z")),
        ]
    );
    assert_eq!(
        r.buckets[1].end - r.buckets[1].start,
        Duration::hours(7 * 24 - 1)
    );
    well_formed(&r);
}

#[test]
fn months_end_on_their_last_day() {
    let r = resolve(
        Some("2024-01-15"),
        Some("2024-12-31"),
        "2025-01-01T00:00:00Z",
        &Berlin,
        Interval::Month,
    );
    assert_eq!(r.buckets.len(), 12);
    let days: Vec<i64> = r
        .buckets
        .iter()
        .map(|b| ((b.end - b.start).num_minutes() as f64 / 1440.0).round() as i64)
        .collect();
    assert_eq!(days, [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]);
    assert!(r
        .buckets
        .iter()
        .all(|b| b.label.format("%d %H:%M").to_string() == "01 00:00"));
    assert_eq!(r.buckets[1].end, utc("2024-02-29T23:00:00Z"));
    assert_eq!(r.buckets[3].start, utc("2024-03-31T22:00:00Z"));
    assert_eq!(r.to, utc("2024-12-31T23:00:00Z"));
    well_formed(&r);
}

#[test]
fn comparison_period_is_the_same_number_of_buckets_before() {
    let r = resolve(
        Some("-7d"),
        None,
        "2024-03-15T12:00:00Z",
        &Utc,
        Interval::Day,
    );
    let p = r.previous_period(&Utc);
    assert_eq!(p.buckets.len(), 8);
    assert_eq!(
        (p.from, p.to),
        (utc("2024-02-29T00:00:00Z"), utc("2024-03-08T00:00:00Z"))
    );
    let r = resolve(
        Some("-2m"),
        None,
        "2024-03-15T12:00:00Z",
        &Berlin,
        Interval::Month,
    );
    let p = r.previous_period(&Berlin);
    assert_eq!(p.buckets.len(), 3);
    assert_eq!(p.buckets[0].label, naive("2023-10-01T00:00"));
    assert_eq!(p.to, r.buckets[0].start);
    well_formed(&p);
}

#[test]
fn bucket_lookup() {
    let r = resolve(
        Some("-7d"),
        None,
        "2024-03-15T12:00:00Z",
        &Utc,
        Interval::Day,
    );
    assert_eq!(r.bucket_of(utc("2024-03-08T00:00:00Z")), Some(0));
    assert_eq!(r.bucket_of(utc("2024-03-08T23:59:59Z")), Some(0));
    assert_eq!(r.bucket_of(utc("2024-03-15T23:00:00Z")), Some(7));
    assert_eq!(r.bucket_of(utc("2024-03-07T23:59:59Z")), None);
    assert_eq!(r.bucket_of(utc("2024-03-16T00:00:00Z")), None);
}

#[test]
fn resolution_errors_name_the_field() {
    let now = utc("2024-03-15T12:00:00Z");
    let e = range(Some("-7d"), Some("-10d"))
        .resolve(now, &Utc, Interval::Day)
        .unwrap_err();
    assert_eq!(e.field, "date_to");
    let e = range(Some("-2y"), None)
        .resolve(now, &Utc, Interval::Hour)
        .unwrap_err();
    assert_eq!(e.field, "interval");
    assert!(range(Some("-1y"), None)
        .resolve(now, &Utc, Interval::Hour)
        .is_ok());
    let e = parse_time_zone("Mars/Olympus_Mons").unwrap_err();
    assert_eq!(e.field, "timezone");
    assert_eq!(parse_time_zone("Europe/Berlin").unwrap(), Berlin);
}

#[test]
fn bounds_print_as_they_parse() {
    for s in [
        "-7d",
        "-24h",
        "-12w",
        "-6m",
        "-1y",
        "mtd",
        "ytd",
        "2024-03-01",
        "2024-03-01T10:30:00",
        "2024-03-01T10:30:00+02:00",
    ] {
        let b: DateBound = s.parse().unwrap();
        assert_eq!(b.to_string().parse::<DateBound>().unwrap(), b, "{s}");
    }
    assert_eq!(
        "2024-03-01T10:30:00Z"
            .parse::<DateBound>()
            .unwrap()
            .to_string(),
        "2024-03-01T10:30:00+00:00"
    );
    for s in [
        "",
        "-",
        "-d",
        "-7",
        "+7d",
        "-7D",
        "- 7d",
        "7d",
        "-1.5d",
        "2024-13-01",
        "yesterday",
    ] {
        assert!(s.parse::<DateBound>().is_err(), "{s}");
    }
}

#[test]
fn insight_resolve_uses_its_interval() {
    let now = utc("2024-03-13T09:00:00Z");
    let q = parse(
        InsightKind::Trends,
        &json!({"series": [{"event": "a"}], "date_from": "-3w", "interval": "week"}),
    )
    .unwrap();
    let r = q.resolve(now, &Utc).unwrap();
    assert_eq!((r.interval, r.buckets.len()), (Interval::Week, 4));
    assert_eq!(r.from, utc("2024-02-19T00:00:00Z"));
}

#[test]
fn retention_covers_its_periods() {
    let now = utc("2024-03-13T09:00:00Z");
    // 8 weeks ending with the current one (Monday 11 March).
    let q = parse(
        InsightKind::Retention,
        &json!({"start_event": "a", "return_event": "b"}),
    )
    .unwrap();
    let r = q.resolve(now, &Utc).unwrap();
    assert_eq!(r.buckets.len(), 8);
    assert_eq!(
        (r.from, r.to),
        (utc("2024-01-22T00:00:00Z"), utc("2024-03-18T00:00:00Z"))
    );
    // 3 months ending with February, in Berlin.
    let q = parse(
        InsightKind::Retention,
        &json!({"start_event": "a", "return_event": "b", "period": "month", "periods": 3, "date_to": "2024-02-29"}),
    )
    .unwrap();
    let r = q.resolve(now, &Berlin).unwrap();
    let labels: Vec<_> = r.buckets.iter().map(|b| b.label).collect();
    assert_eq!(
        labels,
        ["2023-12-01T00:00", "2024-01-01T00:00", "2024-02-01T00:00"].map(naive)
    );
    assert_eq!(r.to, utc("2024-02-29T23:00:00Z"));
    // A date_to inside a period extends to the period's end.
    let q = parse(
        InsightKind::Retention,
        &json!({"start_event": "a", "return_event": "b", "period": "day", "periods": 2, "date_to": "2024-03-01T10:00:00Z"}),
    )
    .unwrap();
    let r = q.resolve(now, &Utc).unwrap();
    assert_eq!(
        (r.from, r.to),
        (utc("2024-02-29T00:00:00Z"), utc("2024-03-02T00:00:00Z"))
    );
}

/// Found by the robustness proptest: a relative range ending in a multi-byte character was split inside it.
#[test]
fn relative_ranges_ending_in_multibyte_characters_are_errors() {
    for s in [
        "-1\u{202e}",
        "-\u{202e}",
        "-30d\u{301}",
        "-\u{3934d}",
        "X\t%¥-F\"\u{3934d}\u{202e}",
    ] {
        assert!(s.parse::<flywheel_query::DateBound>().is_err(), "{s:?}");
    }
    assert!("-30d".parse::<flywheel_query::DateBound>().is_ok());
}
