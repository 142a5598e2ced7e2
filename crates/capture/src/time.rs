//! Timestamp parsing, clock-skew correction and clamping.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde_json::{Number, Value};

/// Timestamps further than this in the future are replaced by `now`.
pub const MAX_FUTURE: TimeDelta = TimeDelta::hours(23);

/// Parses an ISO-8601 / RFC 3339 string. Without an offset the time is UTC.
/// Accepts `T`, `t` or a space between date and time, `+hh:mm`, `+hhmm` or
/// `Z` offsets, any number of fractional digits, and a bare date (midnight).
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    parse_iso_slow(s)
}

#[cold]
fn parse_iso_slow(s: &str) -> Option<DateTime<Utc>> {
    const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    const NAIVE: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    let s = s.trim();
    for f in WITH_OFFSET {
        if let Ok(dt) = DateTime::parse_from_str(s, f) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    // Tolerate a lower-case `t` / `z`.
    let naive_src = s.strip_suffix(['Z', 'z']).unwrap_or(s).replace('t', "T");
    for f in NAIVE {
        if let Ok(dt) = NaiveDateTime::parse_from_str(&naive_src, f) {
            return Some(dt.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc())
}

/// Integral milliseconds from a JSON number (floats are truncated).
pub fn number_millis(n: &Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // Beyond ±2^63 the `as` cast would saturate; refuse instead.
    (f.is_finite() && f.abs() < 9.2e18).then_some(f as i64)
}

/// A JSON time value: ISO string or epoch milliseconds.
pub fn parse_time_value(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => parse_iso(s),
        Value::Number(n) => number_millis(n).and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

/// The time inputs of one event.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeInputs {
    pub timestamp: Option<DateTime<Utc>>,
    /// Milliseconds before `now` (posthog-js `offset`).
    pub offset_ms: Option<i64>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Computes the event time:
/// - `timestamp` and `sent_at`: `now + (timestamp - sent_at)` (clock-skew correction);
/// - else `offset`: `now - offset`;
/// - else `timestamp` as is; else `now`.
///
/// With `historical` the timestamp is used as is (offset/now as fallbacks).
/// Results more than [`MAX_FUTURE`] after `now` become `now`. `None` only on
/// arithmetic overflow.
pub fn resolve(t: TimeInputs, now: DateTime<Utc>, historical: bool) -> Option<DateTime<Utc>> {
    let ts = match (t.timestamp, t.sent_at, t.offset_ms) {
        (Some(ts), _, _) if historical => ts,
        (Some(ts), Some(sent), _) => now.checked_add_signed(ts.signed_duration_since(sent))?,
        (_, _, Some(off)) => now.checked_sub_signed(TimeDelta::try_milliseconds(off)?)?,
        (Some(ts), None, None) => ts,
        (None, _, None) => now,
    };
    match now.checked_add_signed(MAX_FUTURE) {
        Some(limit) if ts > limit => Some(now),
        _ => Some(ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn iso_variants() {
        let want = utc(2024, 3, 1, 12, 30, 0);
        for s in [
            "2024-03-01T12:30:00Z",
            "2024-03-01T12:30:00.000Z",
            "2024-03-01T12:30:00+00:00",
            "2024-03-01T14:30:00+02:00",
            "2024-03-01T14:30:00+0200",
            "2024-03-01T12:30:00",
            "2024-03-01 12:30:00",
            "2024-03-01t12:30:00z",
            "2024-03-01T12:30",
        ] {
            assert_eq!(parse_iso(s), Some(want), "{s}");
        }
        assert_eq!(
            parse_iso("2024-03-01T12:30:00.123456789Z")
                .unwrap()
                .timestamp_subsec_nanos(),
            123_456_789
        );
        assert_eq!(parse_iso("2024-03-01"), Some(utc(2024, 3, 1, 0, 0, 0)));
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "1700000000000",
            "2024-03-01T25:00:00Z",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_are_epoch_millis() {
        assert_eq!(
            parse_time_value(&serde_json::json!(1_700_000_000_123i64)),
            DateTime::from_timestamp_millis(1_700_000_000_123)
        );
        assert_eq!(
            parse_time_value(&serde_json::json!(1_700_000_000_123.9f64)),
            DateTime::from_timestamp_millis(1_700_000_000_123)
        );
        assert_eq!(parse_time_value(&serde_json::json!(1e300)), None);
        assert_eq!(parse_time_value(&serde_json::json!(true)), None);
    }

    #[test]
    fn skew_correction_arithmetic() {
        let now = utc(2024, 6, 1, 12, 0, 0);
        // Client clock is 1 h behind: it sent at 10:00 (its clock) an event
        // captured 5 minutes earlier (09:55 its clock) → 11:55 server time.
        let t = TimeInputs {
            timestamp: Some(utc(2024, 6, 1, 9, 55, 0)),
            sent_at: Some(utc(2024, 6, 1, 10, 0, 0)),
            offset_ms: Some(999_999), // ignored when both are present
        };
        assert_eq!(resolve(t, now, false), Some(utc(2024, 6, 1, 11, 55, 0)));
        // Historical: as is.
        assert_eq!(resolve(t, now, true), Some(utc(2024, 6, 1, 9, 55, 0)));
        // Offset only.
        let t = TimeInputs {
            offset_ms: Some(90_000),
            ..TimeInputs::default()
        };
        assert_eq!(resolve(t, now, false), Some(utc(2024, 6, 1, 11, 58, 30)));
        // Offset wins over a bare timestamp.
        let t = TimeInputs {
            timestamp: Some(utc(2020, 1, 1, 0, 0, 0)),
            offset_ms: Some(1000),
            sent_at: None,
        };
        assert_eq!(resolve(t, now, false), Some(utc(2024, 6, 1, 11, 59, 59)));
        // Bare timestamp.
        let t = TimeInputs {
            timestamp: Some(utc(2020, 1, 1, 0, 0, 0)),
            ..TimeInputs::default()
        };
        assert_eq!(resolve(t, now, false), Some(utc(2020, 1, 1, 0, 0, 0)));
        // Nothing.
        assert_eq!(resolve(TimeInputs::default(), now, false), Some(now));
        // Overflow is None, not a panic.
        let t = TimeInputs {
            offset_ms: Some(i64::MAX),
            ..TimeInputs::default()
        };
        assert_eq!(resolve(t, now, false), None);
    }

    #[test]
    fn future_clamp_at_23_hours() {
        let now = utc(2024, 6, 1, 12, 0, 0);
        let at = |ts| TimeInputs {
            timestamp: Some(ts),
            ..TimeInputs::default()
        };
        let just_inside = now + TimeDelta::hours(23);
        assert_eq!(resolve(at(just_inside), now, false), Some(just_inside));
        let outside = just_inside + TimeDelta::seconds(1);
        assert_eq!(resolve(at(outside), now, false), Some(now));
        // Also for historical imports.
        assert_eq!(resolve(at(outside), now, true), Some(now));
        // Negative offset into the far future is clamped too.
        let t = TimeInputs {
            offset_ms: Some(-48 * 3600 * 1000),
            ..TimeInputs::default()
        };
        assert_eq!(resolve(t, now, false), Some(now));
    }
}
