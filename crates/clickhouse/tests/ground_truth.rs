//! Ground truth on a real ClickHouse 18.16 (Debian's server, started by `test_support::start`): seeded events, with
//! merges recorded as person overrides, are inserted; every supported insight kind runs over several definitions
//! (intervals, time zones including one with DST and one with a half-hour offset, filters, `compare`); each answer
//! is compared with `flywheel-truth` on the same rows (buckets in a time zone: the truth's UTC calendar applied to
//! wall-clock times), or, where the engine's semantics are not the truth's calendar (rolling windows of 24-hour
//! days, hour buckets), with a brute force of the kernel's rule written here.
//!
//! Every statement run here, with its answer, is written to `$CARGO_TARGET_TMPDIR/clickhouse/statements.json`, and
//! then run again on current ClickHouse through chdb (`tests/clickhouse/chdb_check.py`), which must give the same
//! answers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use flywheel_clickhouse::row::{number, text, PersonOverride, PersonRow};
use flywheel_clickhouse::sql::{Answer, Target};
use flywheel_clickhouse::test_support;
use flywheel_clickhouse::{compile, schema, Client, EventRow};
use flywheel_query::{parse, plan, InsightKind, InsightQuery};
use flywheel_truth as truth;
use serde_json::{json, Map, Value};
use uuid::Uuid;

const DB: &str = "flywheel_test";
const PROJECT: u64 = 7;
const OTHER_PROJECT: u64 = 8;
const DAY_US: i64 = 86_400_000_000;
const MINUTE_US: i64 = 60_000_000;
const EVENTS: [&str; 3] = ["a", "b", "c"];

/// A deterministic xorshift64 generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated event: the person it finally belongs to (after merges) and what ClickHouse stores.
struct Event {
    person: u64,
    ts: i64,
    event: &'static str,
    props: Map<String, Value>,
    row: EventRow,
}

fn person_uuid(p: u64) -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0000 | u128::from(p))
}

/// 2026-03-02 (a Monday); events span 70 days from it: three month boundaries, Berlin's switch to summer time
/// (2026-03-29).
fn base() -> i64 {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .unwrap()
        .timestamp_micros()
}

/// Events and person overrides. Persons 1..=30; each writes with `d{p}`, some also with ids that were merged:
/// `m{p}` was written as person 100+p and re-pointed to p; `x{p}` went to 300+p (version 1) then p (version 2);
/// `y{p}`'s overrides arrive newest first (version 5 → p, then version 3 → 500+p): the version decides.
fn generate() -> (Vec<Event>, Vec<PersonOverride>) {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut overrides = Vec::new();
    let ov = |d: String, p: u64, v: u64| PersonOverride {
        project_id: PROJECT,
        distinct_id: d,
        person_id: person_uuid(p),
        version: v,
    };
    for p in 1..=6 {
        overrides.push(ov(format!("m{p}"), p, 1));
    }
    for p in 7..=9 {
        overrides.push(ov(format!("x{p}"), 300 + p, 1));
        overrides.push(ov(format!("x{p}"), p, 2));
    }
    for p in 10..=12 {
        overrides.push(ov(format!("y{p}"), p, 5));
        overrides.push(ov(format!("y{p}"), 500 + p, 3));
    }
    // The same distinct id in another project is re-pointed elsewhere: it must not leak into this one.
    overrides.push(PersonOverride {
        project_id: OTHER_PROJECT,
        distinct_id: "d1".into(),
        person_id: person_uuid(999),
        version: 9,
    });
    let fixed: Vec<i64> = [
        3 * DAY_US + 5 * 60 * MINUTE_US,
        27 * DAY_US,
        40 * DAY_US + 77 * MINUTE_US,
    ]
    .iter()
    .map(|t| base() + t)
    .collect();
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let mut events = Vec::new();
    for i in 0..4000u64 {
        // Skewed: low-numbered persons are busier.
        let spread = rng.below(30) + 1;
        let p = 1 + rng.below(spread);
        let ts = match rng.below(20) {
            0..=1 => base() + rng.below(70) as i64 * DAY_US, // UTC midnight
            2 => {
                // Berlin midnight
                let d = rng.below(70) as i64;
                let day = DateTime::from_timestamp_micros(base() + d * DAY_US)
                    .unwrap()
                    .date_naive();
                flywheel_query::date::local_to_utc(day.and_hms_opt(0, 0, 0).unwrap(), &berlin)
                    .timestamp_micros()
            }
            3 => fixed[rng.below(3) as usize],
            _ => base() + rng.below(70 * 24 * 60) as i64 * MINUTE_US + rng.below(1000) as i64,
        };
        let (distinct, written_as) = match (p, rng.below(3)) {
            (1..=6, 0) => (format!("m{p}"), 100 + p),
            (7..=9, 0) => (format!("x{p}"), 200 + p),
            (10..=12, 0) => (format!("y{p}"), 400 + p),
            _ => (format!("d{p}"), p),
        };
        let event = EVENTS[rng.below(3) as usize];
        let mut props = Map::new();
        match rng.below(5) {
            0 => {}
            1 => {
                props.insert("plan".into(), json!(7));
            }
            2 => {
                props.insert("plan".into(), json!("free"));
            }
            _ => {
                props.insert("plan".into(), json!("pro"));
            }
        }
        match rng.below(6) {
            0 => {}
            1 => {
                props.insert("amount".into(), json!(" 2.5"));
            }
            2 => {
                props.insert("amount".into(), json!("x"));
            }
            3 => {
                props.insert("amount".into(), Value::Null);
            }
            _ => {
                props.insert("amount".into(), json!(rng.below(40) as f64 * 0.25));
            }
        }
        props.insert("note".into(), json!("it's a \\ \"quoted\"\ttext"));
        let cities = ["Zürich", "ΌΣΟΣ", "İstanbul", "BERLIN", "berlin-mitte"];
        let c = rng.below(6) as usize;
        if c < cities.len() {
            props.insert("city".into(), json!(cities[c]));
        }
        let row = EventRow::new(
            // Both halves increase with the input order: ties in time sort as the truth sorts them.
            Uuid::from_u64_pair(i + 1, i + 1),
            PROJECT,
            event,
            &distinct,
            person_uuid(written_as),
            ts,
            &props,
        );
        events.push(Event {
            person: p,
            ts,
            event,
            props,
            row,
        });
    }
    (events, overrides)
}

/// Rows of another project, the same distinct ids: counted nowhere.
fn other_project_rows() -> Vec<EventRow> {
    (0..50)
        .map(|i| {
            EventRow::new(
                Uuid::from_u64_pair(1_000_000 + i, 1_000_000 + i),
                OTHER_PROJECT,
                EVENTS[(i % 3) as usize],
                "d1",
                person_uuid(1),
                base() + i as i64 * DAY_US,
                &Map::new(),
            )
        })
        .collect()
}

/// A simple event-property predicate of the test's definitions, evaluated in Rust.
#[derive(Clone, Copy)]
enum Pred {
    Any,
    PlanIs(&'static str),
    AmountGt(f64),
    AmountSet,
    /// Rust's case folding, as the engine's `contains`.
    CityContains(&'static str),
}

fn holds(e: &Event, p: Pred) -> bool {
    match p {
        Pred::Any => true,
        Pred::PlanIs(v) => e.props.get("plan").is_some_and(|x| text(x) == v),
        Pred::AmountGt(x) => e
            .props
            .get("amount")
            .filter(|v| !v.is_null())
            .is_some_and(|v| number(v) > x),
        Pred::AmountSet => e.props.get("amount").is_some_and(|v| !v.is_null()),
        Pred::CityContains(x) => e
            .props
            .get("city")
            .is_some_and(|v| text(v).to_lowercase().contains(&x.to_lowercase())),
    }
}

fn offset_us(tz: &Tz, ts: i64) -> i64 {
    let t = DateTime::from_timestamp_micros(ts).unwrap().naive_utc();
    i64::from(tz.offset_from_utc_datetime(&t).fix().local_minus_utc()) * 1_000_000
}

/// The truth's rows: wall-clock times in `tz` (so its UTC calendar is the zone's), filtered by `pred`.
fn rows<'a>(events: &'a [Event], tz: &Tz, pred: Pred) -> Vec<truth::Row<'a>> {
    local_rows(events.iter().filter(|e| holds(e, pred)), tz)
}

/// The truth's rows of these events, with wall-clock times in `tz`.
fn local_rows<'a>(events: impl Iterator<Item = &'a Event>, tz: &Tz) -> Vec<truth::Row<'a>> {
    events
        .map(|e| truth::Row {
            person: e.person,
            ts_us: e.ts + offset_us(tz, e.ts),
            event: e.event,
        })
        .collect()
}

/// The truth's rows of these events, in UTC (funnels read whole UTC days).
fn utc_rows<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<truth::Row<'a>> {
    events
        .map(|e| truth::Row {
            person: e.person,
            ts_us: e.ts,
            event: e.event,
        })
        .collect()
}

fn local_range(r: &flywheel_query::TimeRange, tz: &Tz) -> truth::Range {
    let (f, t) = (r.from.timestamp_micros(), r.to.timestamp_micros());
    truth::Range {
        from_us: f + offset_us(tz, f),
        to_us: t + offset_us(tz, t),
    }
}

fn interval(i: flywheel_query::Interval) -> truth::Interval {
    match i {
        flywheel_query::Interval::Day => truth::Interval::Day,
        flywheel_query::Interval::Week => truth::Interval::Week,
        flywheel_query::Interval::Month => truth::Interval::Month,
        flywheel_query::Interval::Hour => panic!("the truth has no hour buckets"),
    }
}

fn f64s(v: Vec<u64>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

/// Runs definitions on the server and remembers every statement with its answer (for the chdb check).
struct Runner {
    client: Client,
    target: Target,
    now: DateTime<Utc>,
    dump: Vec<Value>,
    checks: usize,
}

impl Runner {
    async fn run(
        &mut self,
        kind: InsightKind,
        body: Value,
        tz: &Tz,
    ) -> (InsightQuery, plan::Plan, Answer) {
        let q = parse(kind, &body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        let range = q.resolve(self.now, tz).unwrap();
        let p = plan::plan(&q, &range, tz);
        let compiled = compile(&q, &p, tz, &self.target).unwrap_or_else(|e| panic!("{body}: {e}"));
        let t0 = Instant::now();
        let (answer, trace) = compiled.run_traced(&self.client).await.unwrap_or_else(|e| {
            let file = out_dir().join("failed.sql");
            let all: Vec<&str> = compiled.sql().collect();
            std::fs::write(&file, all.join(";\n\n")).unwrap();
            panic!("{body}: {e} (statements in {})", file.display())
        });
        if t0.elapsed().as_millis() > 1000 {
            eprintln!("slow ({:.1?}): {body} in {}", t0.elapsed(), tz.name());
        }
        for (sql, rows) in compiled.sql().zip(trace) {
            self.dump
                .push(json!({"sql": sql, "rows": rows, "definition": body, "tz": tz.name()}));
        }
        self.checks += 1;
        (q, p, answer)
    }
}

fn series(a: &Answer) -> &Vec<Vec<Vec<f64>>> {
    match a {
        Answer::Trends(t) => t,
        other => panic!("not trends: {other:?}"),
    }
}

/// Distinct persons with a matching event in `[end(i) - days × 24 h, end(i))`, per bucket, reading only
/// `[read.from_us, read.to_us)`: the trends kernel's rolling windows.
fn rolling(events: &[Event], event: &str, pred: Pred, read: &plan::Read, days: i64) -> Vec<f64> {
    let s = &read.bucket_starts_us;
    let ends: Vec<i64> = s.iter().skip(1).copied().chain([read.end_us]).collect();
    ends.iter()
        .map(|&end| {
            events
                .iter()
                .filter(|e| e.event == event && holds(e, pred))
                .filter(|e| read.from_us <= e.ts && e.ts < read.to_us)
                .filter(|e| end - days * DAY_US <= e.ts && e.ts < end)
                .map(|e| e.person)
                .collect::<BTreeSet<_>>()
                .len() as f64
        })
        .collect()
}

fn date(s: &str) -> Value {
    json!(s)
}

async fn check_trends(r: &mut Runner, events: &[Event], tz: &Tz) {
    // Day buckets: totals, DAU, rolling windows (which reach before the range).
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}, {"event": "b", "math": "dau"}, {"event": "c", "math": "weekly_active"},
                              {"event": "a", "math": "monthly_active"}],
                   "date_from": date("2026-03-20"), "date_to": date("2026-04-10")}),
            tz,
        )
        .await;
    let read = &p.reads[0];
    let range = local_range(&read.range, tz);
    let all = rows(events, tz, Pred::Any);
    let got = &series(&a)[0];
    assert_eq!(
        got[0],
        f64s(truth::total(&all, "a", range, truth::Interval::Day)),
        "total in {tz}"
    );
    assert_eq!(
        got[1],
        f64s(truth::unique_persons(
            &all,
            "b",
            range,
            truth::Interval::Day
        )),
        "dau in {tz}"
    );
    assert_eq!(
        got[2],
        rolling(events, "c", Pred::Any, read, 7),
        "weekly active in {tz}"
    );
    assert_eq!(
        got[3],
        rolling(events, "a", Pred::Any, read, 30),
        "monthly active in {tz}"
    );
    if tz.name() == "UTC" {
        // In UTC the kernel's 24-hour days are the truth's calendar days.
        assert_eq!(got[2], f64s(truth::rolling_active(&all, "c", range, 7)));
        assert_eq!(got[3], f64s(truth::rolling_active(&all, "a", range, 30)));
    }

    // Weeks and months, unique persons per bucket.
    for (interval_name, from, to) in [
        ("week", "2026-03-04", "2026-05-03"),
        ("month", "2026-03-01", "2026-05-31"),
    ] {
        let (q, p, a) = r
            .run(
                InsightKind::Trends,
                json!({"series": [{"event": "a"}, {"event": "c", "math": "dau"}, {"event": "$all"}],
                       "interval": interval_name, "date_from": from, "date_to": to}),
                tz,
            )
            .await;
        let InsightQuery::Trends(t) = &q else {
            unreachable!()
        };
        let iv = interval(t.common.interval.unwrap());
        let range = local_range(&p.reads[0].range, tz);
        let got = &series(&a)[0];
        let every: Vec<truth::Row<'_>> = all
            .iter()
            .map(|x| truth::Row { event: "*", ..*x })
            .collect();
        assert_eq!(
            got[0],
            f64s(truth::total(&all, "a", range, iv)),
            "{interval_name} total in {tz}"
        );
        assert_eq!(
            got[1],
            f64s(truth::unique_persons(&all, "c", range, iv)),
            "{interval_name} unique in {tz}"
        );
        assert_eq!(
            got[2],
            f64s(truth::total(&every, "*", range, iv)),
            "{interval_name} $all in {tz}"
        );
    }

    // Compare with the previous period; filters (common and per series).
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a", "math": "dau"},
                              {"event": "b", "properties": [{"key": "amount", "operator": "gt", "value": 2}]},
                              {"event": "c", "properties": [{"key": "amount", "operator": "is_set"}]}],
                   "properties": [{"key": "plan", "value": "pro"}],
                   "compare": true, "date_from": "2026-04-01", "date_to": "2026-04-14"}),
            tz,
        )
        .await;
    assert_eq!(p.reads.len(), 2);
    for (i, read) in p.reads.iter().enumerate() {
        let range = local_range(&read.range, tz);
        let pro = rows(events, tz, Pred::PlanIs("pro"));
        let pro_events: Vec<&Event> = events
            .iter()
            .filter(|e| holds(e, Pred::PlanIs("pro")))
            .collect();
        let subset = |pred: Pred| -> Vec<truth::Row<'_>> {
            local_rows(pro_events.iter().copied().filter(|e| holds(e, pred)), tz)
        };
        let got = &series(&a)[i];
        assert_eq!(
            got[0],
            f64s(truth::unique_persons(
                &pro,
                "a",
                range,
                truth::Interval::Day
            )),
            "compare {i} in {tz}"
        );
        assert_eq!(
            got[1],
            f64s(truth::total(
                &subset(Pred::AmountGt(2.0)),
                "b",
                range,
                truth::Interval::Day
            )),
            "gt filter, period {i} in {tz}"
        );
        assert_eq!(
            got[2],
            f64s(truth::total(
                &subset(Pred::AmountSet),
                "c",
                range,
                truth::Interval::Day
            )),
            "is_set filter, period {i} in {tz}"
        );
    }

    // Case-insensitive substrings, with letters whose folding differs between Rust and ClickHouse's lowerUTF8.
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a", "properties": [{"key": "city", "operator": "contains", "value": "ς"}]},
                              {"event": "b", "properties": [{"key": "city", "operator": "not_contains", "value": "BERLIN"}]},
                              {"event": "c", "properties": [{"key": "city", "operator": "contains", "value": "İST"}]}],
                   "date_from": "2026-03-02", "date_to": "2026-05-10", "interval": "week"}),
            tz,
        )
        .await;
    let range = local_range(&p.reads[0].range, tz);
    let got = &series(&a)[0];
    let week = truth::Interval::Week;
    let not_berlin = local_rows(
        events
            .iter()
            .filter(|e| !holds(e, Pred::CityContains("berlin"))),
        tz,
    );
    assert_eq!(
        got[0],
        f64s(truth::total(
            &rows(events, tz, Pred::CityContains("ς")),
            "a",
            range,
            week
        ))
    );
    assert_eq!(got[1], f64s(truth::total(&not_berlin, "b", range, week)));
    assert_eq!(
        got[2],
        f64s(truth::total(
            &rows(events, tz, Pred::CityContains("İST")),
            "c",
            range,
            week
        ))
    );
    assert!(got[0].iter().sum::<f64>() > 0.0 && got[2].iter().sum::<f64>() > 0.0);

    // Hour buckets over the day Berlin moves its clocks (23 hours there), against the plan's own buckets.
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}, {"event": "b", "math": "dau"}, {"event": "c", "math": "weekly_active"}],
                   "interval": "hour", "date_from": "2026-03-29", "date_to": "2026-03-29"}),
            tz,
        )
        .await;
    let range = &p.reads[0].range;
    let mut want_total = vec![0.0; range.buckets.len()];
    let mut want_persons = vec![BTreeSet::new(); range.buckets.len()];
    for e in events {
        if let Some(i) = range.bucket_of(DateTime::from_timestamp_micros(e.ts).unwrap()) {
            match e.event {
                "a" => want_total[i] += 1.0,
                "b" => {
                    want_persons[i].insert(e.person);
                }
                _ => {}
            }
        }
    }
    let got = &series(&a)[0];
    assert_eq!(got[0], want_total, "hourly total in {tz}");
    assert_eq!(
        got[1],
        want_persons
            .iter()
            .map(|s| s.len() as f64)
            .collect::<Vec<_>>(),
        "hourly unique in {tz}"
    );
    assert_eq!(
        got[2],
        rolling(events, "c", Pred::Any, &p.reads[0], 7),
        "hourly weekly active in {tz}"
    );

    // Thousands of hour buckets (over a year): statements beyond ClickHouse's default size limit, two-level
    // bucket counts.
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}, {"event": "c", "math": "weekly_active"}], "interval": "hour",
                   "date_from": "2025-04-01", "date_to": "2026-04-30"}),
            tz,
        )
        .await;
    let range = &p.reads[0].range;
    assert!(range.buckets.len() > 9000);
    let mut want_total = vec![0.0; range.buckets.len()];
    for e in events.iter().filter(|e| e.event == "a") {
        if let Some(i) = range.bucket_of(DateTime::from_timestamp_micros(e.ts).unwrap()) {
            want_total[i] += 1.0;
        }
    }
    let got = &series(&a)[0];
    assert_eq!(got[0], want_total, "hourly total over a year in {tz}");
    assert_eq!(
        got[1],
        rolling(events, "c", Pred::Any, &p.reads[0], 7),
        "hourly weekly active over a year in {tz}"
    );

    // Per-person and property maths, against a brute force over the plan's buckets.
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a", "math": "per_user", "per_user": "max"},
                              {"event": "b", "math": "per_user"},
                              {"event": "c", "math": "sum", "math_property": "amount"},
                              {"event": "c", "math": "max", "math_property": "amount"},
                              {"event": "c", "math": "median", "math_property": "amount"},
                              {"event": "c", "math": "p90", "math_property": "amount"},
                              {"event": "a", "math": "per_user", "per_user": "median"}],
                   "date_from": "2026-04-20", "date_to": "2026-05-03", "interval": "week"}),
            tz,
        )
        .await;
    let read = &p.reads[0];
    let range = &read.range;
    let n = range.buckets.len();
    let bucket = |e: &Event| {
        let t = DateTime::from_timestamp_micros(e.ts).unwrap();
        range.bucket_of(t)
    };
    let mut per: Vec<BTreeMap<(&str, u64), f64>> = vec![BTreeMap::new(); n];
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); n];
    for e in events {
        if let Some(i) = bucket(e) {
            *per[i].entry((e.event, e.person)).or_default() += 1.0;
            if e.event == "c" {
                let x = e
                    .props
                    .get("amount")
                    .filter(|v| !v.is_null())
                    .map_or(f64::NAN, number);
                if !x.is_nan() {
                    values[i].push(x);
                }
            }
        }
    }
    let agg = |i: usize, ev: &str, f: fn(&[f64]) -> f64| {
        let c: Vec<f64> = per[i]
            .iter()
            .filter(|((e, _), _)| *e == ev)
            .map(|(_, &c)| c)
            .collect();
        if c.is_empty() {
            0.0
        } else {
            f(&c)
        }
    };
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let got = &series(&a)[0];
    for i in 0..n {
        assert_eq!(
            got[0][i],
            agg(i, "a", max),
            "per_user max, bucket {i} in {tz}"
        );
        assert!(
            (got[1][i] - agg(i, "b", mean)).abs() < 1e-9,
            "per_user avg, bucket {i} in {tz}"
        );
        let sum: f64 = values[i].iter().sum();
        assert!(
            (got[2][i] - sum).abs() < 1e-9,
            "sum, bucket {i} in {tz}: {} vs {sum}",
            got[2][i]
        );
        let m = if values[i].is_empty() {
            0.0
        } else {
            max(&values[i])
        };
        assert_eq!(got[3][i], m, "max, bucket {i} in {tz}");
        let mut sorted = values[i].clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(
            got[4][i],
            percentile(&sorted, 50),
            "median, bucket {i} in {tz}"
        );
        assert_eq!(
            got[5][i],
            percentile(&sorted, 90),
            "p90, bucket {i} in {tz}"
        );
        let mut counts: Vec<f64> = per[i]
            .iter()
            .filter(|((e, _), _)| *e == "a")
            .map(|(_, &c)| c)
            .collect();
        counts.sort_by(f64::total_cmp);
        assert_eq!(
            got[6][i],
            percentile(&counts, 50),
            "per_user median, bucket {i} in {tz}"
        );
    }
}

/// The kernel's percentile (`flywheel_kernels::trends::quantile`), restated: rank `p / 100 × (n - 1)`, linear
/// interpolation; 0 without values.
fn percentile(sorted: &[f64], p: u64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let scaled = p * (sorted.len() as u64 - 1);
    let (lo, frac) = ((scaled / 100) as usize, (scaled % 100) as f64 / 100.0);
    match sorted.get(lo + 1) {
        Some(&hi) if frac > 0.0 && hi != sorted[lo] => sorted[lo] + (hi - sorted[lo]) * frac,
        _ => sorted[lo],
    }
}

/// The kernel's funnel answer restated by brute force (`crates/kernels/src/funnel.rs`, "Attempts" and "Per
/// person"): per person the best attempt (furthest, earliest entry among equals) and its rows; then per step the
/// persons reaching it and the mean and median time from the step before.
type FunnelStats = (Vec<u64>, Vec<Option<f64>>, Vec<Option<f64>>);

fn funnel_stats(
    rows: &[truth::Row<'_>],
    steps: &[&str],
    window: i64,
    order: truth::Order,
    range: truth::Range,
    exclusions: &[(&str, usize, usize)],
) -> FunnelStats {
    funnel_attempts(
        rows,
        steps,
        window,
        order,
        range,
        exclusions,
        &mut Vec::new(),
    )
}

/// [`funnel_stats`], also listing every valid attempt as (person, entry time, steps reached).
fn funnel_attempts(
    rows: &[truth::Row<'_>],
    steps: &[&str],
    window: i64,
    order: truth::Order,
    range: truth::Range,
    exclusions: &[(&str, usize, usize)],
    valid: &mut Vec<(u64, i64, usize)>,
) -> FunnelStats {
    funnel_best(
        rows,
        steps,
        window,
        order,
        range,
        exclusions,
        valid,
        &mut Vec::new(),
    )
}

/// [`funnel_attempts`], also listing each person's best attempt as indexes into `rows`.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)] // positions are the point: an attempt is a list of them
fn funnel_best(
    rows: &[truth::Row<'_>],
    steps: &[&str],
    window: i64,
    order: truth::Order,
    range: truth::Range,
    exclusions: &[(&str, usize, usize)],
    valid: &mut Vec<(u64, i64, usize)>,
    bests: &mut Vec<(u64, Vec<usize>)>,
) -> FunnelStats {
    let mut persons: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        persons.entry(r.person).or_default().push(i);
    }
    let n = steps.len();
    let mut times: Vec<Vec<i64>> = vec![Vec::new(); n];
    let mut reached = vec![0u64; n];
    for idx in persons.values_mut() {
        idx.sort_by_key(|&i| (rows[i].ts_us, i));
        let evs: Vec<&truth::Row<'_>> = idx.iter().map(|&i| &rows[i]).collect();
        let mut best: Vec<usize> = Vec::new();
        for e in 0..evs.len() {
            if !range.contains(evs[e].ts_us) || !steps.contains(&evs[e].event) {
                continue;
            }
            let within = |j: usize| evs[j].ts_us - evs[e].ts_us <= window;
            let mut at = Vec::new();
            match order {
                truth::Order::Ordered | truth::Order::Strict => {
                    if evs[e].event != steps[0] {
                        continue;
                    }
                    at.push(e);
                    for j in e + 1..evs.len() {
                        if at.len() == n || !within(j) {
                            break;
                        }
                        if evs[j].event == steps[at.len()] {
                            at.push(j);
                        } else if order == truth::Order::Strict {
                            break;
                        }
                    }
                }
                truth::Order::Unordered => {
                    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
                    for s in steps {
                        *left.entry(s).or_default() += 1;
                    }
                    for j in e..evs.len() {
                        if !within(j) {
                            break;
                        }
                        if let Some(k) = left.get_mut(evs[j].event).filter(|k| **k > 0) {
                            *k -= 1;
                            at.push(j);
                        }
                    }
                }
            }
            // The kernel's exclusion rule (ordered and strict attempts).
            let level = at.len();
            let excluded = exclusions.iter().any(|&(x, f, t)| {
                let is_x = |j: usize| evs[j].event == x;
                if level <= f {
                    false
                } else if level > t {
                    (at[f] + 1..at[t]).any(is_x)
                } else if order == truth::Order::Strict {
                    let stop = at[level - 1] + 1;
                    stop < evs.len() && within(stop) && is_x(stop)
                } else {
                    (at[f] + 1..evs.len()).any(|j| within(j) && is_x(j))
                }
            });
            if !excluded {
                valid.push((evs[e].person, evs[e].ts_us, at.len()));
                if at.len() > best.len() {
                    best = at;
                }
            }
        }
        for (k, w) in best.windows(2).enumerate() {
            times[k + 1].push(evs[w[1]].ts_us - evs[w[0]].ts_us);
        }
        if !best.is_empty() {
            bests.push((evs[best[0]].person, best.iter().map(|&j| idx[j]).collect()));
        }
        for r in reached.iter_mut().take(best.len()) {
            *r += 1;
        }
    }
    let mean = |v: &[i64]| {
        (!v.is_empty())
            .then(|| v.iter().map(|&x| i128::from(x)).sum::<i128>() as f64 / v.len() as f64)
    };
    let median = |v: &[i64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        let len = v.len();
        match len {
            0 => None,
            _ if len % 2 == 1 => Some(v[len / 2] as f64),
            _ => Some((i128::from(v[len / 2 - 1]) + i128::from(v[len / 2])) as f64 / 2.0),
        }
    };
    (
        reached,
        times.iter().map(|v| mean(v)).collect(),
        times.iter().map(|v| median(v)).collect(),
    )
}

/// Checks a funnel answer: the truth's step counts, and the brute force's counts and times.
fn assert_funnel(a: &Answer, want: Vec<u64>, stats: FunnelStats, what: &str) {
    assert_eq!(
        stats.0, want,
        "the brute force agrees with the truth: {what}"
    );
    assert!(want[want.len() - 1] > 0, "someone completes {what}");
    match a {
        Answer::Funnel {
            reached,
            avg_time_us,
            median_time_us,
            ..
        } => assert_eq!(
            (reached.clone(), avg_time_us.clone(), median_time_us.clone()),
            stats,
            "{what}"
        ),
        other => panic!("not a funnel: {other:?}"),
    }
}

/// Event-property breakdowns of trends, against a brute force of the engine's ranking (`rank_codes`) and maths.
async fn check_breakdowns(r: &mut Runner, events: &[Event], tz: &Tz) {
    let (_, p, a) = r
        .run(
            InsightKind::Trends,
            json!({"series": [{"event": "a"}, {"event": "b", "math": "dau"}, {"event": "a", "math": "weekly_active"},
                              {"event": "b", "math": "sum", "math_property": "amount"}],
                   "breakdown": {"property": "city", "limit": 3}, "compare": true,
                   "date_from": "2026-04-01", "date_to": "2026-04-14"}),
            tz,
        )
        .await;
    let Answer::TrendsBreakdown(got) = &a else {
        panic!("{a:?}")
    };
    assert_eq!(got.len(), 2);
    let label = |e: &Event| e.props.get("city").filter(|v| !v.is_null()).map(text);
    for (read, got) in p.reads.iter().zip(got) {
        let rows: Vec<&Event> = events
            .iter()
            .filter(|e| {
                read.from_us <= e.ts && e.ts < read.to_us && (e.event == "a" || e.event == "b")
            })
            .collect();
        // The engine ranks the rows of the whole UTC days (its partitions) the read touches.
        let (day_from, day_to) = (
            read.from_us.div_euclid(DAY_US) * DAY_US,
            ((read.to_us - 1).div_euclid(DAY_US) + 1) * DAY_US,
        );
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| day_from <= e.ts && e.ts < day_to && (e.event == "a" || e.event == "b"))
        {
            if let Some(l) = label(e) {
                *counts.entry(l).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        let top: Vec<String> = ranked.iter().take(3).map(|x| x.0.clone()).collect();
        let mut labels: Vec<Value> = top.iter().map(|l| json!(l)).collect();
        if ranked.len() > 3 {
            labels.push(json!("$$_posthog_breakdown_other_$$"));
        }
        labels.push(Value::Null);
        assert_eq!(got.labels, labels, "labels in {tz}");
        let code = |e: &Event| match label(e) {
            None => labels.len() - 1,
            Some(l) => top.iter().position(|t| *t == l).unwrap_or(3),
        };
        let n = read.bucket_starts_us.len();
        let bucket = |ts: i64| {
            read.range
                .bucket_of(DateTime::from_timestamp_micros(ts).unwrap())
        };
        let ends: Vec<i64> = read
            .bucket_starts_us
            .iter()
            .skip(1)
            .copied()
            .chain([read.end_us])
            .collect();
        let mut want = vec![vec![vec![0.0; n]; labels.len()]; 4];
        let mut persons = vec![vec![BTreeSet::new(); n]; labels.len()];
        let mut rolling = vec![vec![BTreeSet::new(); n]; labels.len()];
        for e in &rows {
            let c = code(e);
            if e.event == "a" {
                for (i, &end) in ends.iter().enumerate() {
                    if end - 7 * DAY_US <= e.ts && e.ts < end {
                        rolling[c][i].insert(e.person);
                    }
                }
            }
            let Some(i) = bucket(e.ts) else { continue };
            match e.event {
                "a" => want[0][c][i] += 1.0,
                _ => {
                    persons[c][i].insert(e.person);
                    let x = e
                        .props
                        .get("amount")
                        .filter(|v| !v.is_null())
                        .map_or(f64::NAN, number);
                    if !x.is_nan() {
                        want[3][c][i] += x;
                    }
                }
            }
        }
        for c in 0..labels.len() {
            for i in 0..n {
                want[1][c][i] = persons[c][i].len() as f64;
                want[2][c][i] = rolling[c][i].len() as f64;
            }
        }
        for (k, name) in ["total", "dau", "weekly_active"].iter().enumerate() {
            assert_eq!(got.series[k], want[k], "{name} by city in {tz}");
        }
        for (g, w) in got.series[3].iter().flatten().zip(want[3].iter().flatten()) {
            assert!((g - w).abs() < 1e-9, "sum by city in {tz}: {g} vs {w}");
        }
    }
}

async fn check_funnels(r: &mut Runner, events: &[Event], tz: &Tz) {
    let utc_rows = |pred_for: &dyn Fn(&Event) -> bool| -> Vec<truth::Row<'_>> {
        utc_rows(events.iter().filter(|e| pred_for(e)))
    };
    for (order, window_days, truth_order) in [
        ("ordered", 3, truth::Order::Ordered),
        ("strict", 1, truth::Order::Strict),
        ("ordered", 14, truth::Order::Ordered),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Funnel,
                json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "order": order,
                       "conversion_window": {"value": window_days, "unit": "day"},
                       "date_from": "2026-03-10", "date_to": "2026-04-10"}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let want = truth::funnel(
            &utc_rows(&|_| true),
            &["a", "b", "c"],
            window_days * DAY_US,
            truth_order,
            truth::Range {
                from_us: range.from.timestamp_micros(),
                to_us: range.to.timestamp_micros(),
            },
        );
        let stats = funnel_stats(
            &utc_rows(&|_| true),
            &["a", "b", "c"],
            window_days * DAY_US,
            truth_order,
            truth::Range {
                from_us: range.from.timestamp_micros(),
                to_us: range.to.timestamp_micros(),
            },
            &[],
        );
        let what = format!("{order} funnel, {window_days} days, in {tz}");
        assert_funnel(&a, want, stats, &what);
    }
    for steps in [["a", "b", "c"], ["a", "b", "a"]] {
        let (_, p, a) = r
            .run(
                InsightKind::Funnel,
                json!({"steps": steps.iter().map(|e| json!({"event": e})).collect::<Vec<_>>(), "order": "unordered",
                       "conversion_window": {"value": 36, "unit": "hour"},
                       "date_from": "2026-03-25", "date_to": "2026-04-20"}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let want = truth::funnel(
            &utc_rows(&|_| true),
            &steps,
            36 * 3_600_000_000,
            truth::Order::Unordered,
            truth::Range {
                from_us: range.from.timestamp_micros(),
                to_us: range.to.timestamp_micros(),
            },
        );
        let stats = funnel_stats(
            &utc_rows(&|_| true),
            &steps,
            36 * 3_600_000_000,
            truth::Order::Unordered,
            truth::Range {
                from_us: range.from.timestamp_micros(),
                to_us: range.to.timestamp_micros(),
            },
            &[],
        );
        let what = format!("unordered funnel {steps:?} in {tz}");
        assert_funnel(&a, want, stats, &what);
    }
    // A step with its own filter: other `b` events are not steps (they are simply skipped in an ordered funnel).
    let (_, p, a) = r
        .run(
            InsightKind::Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b", "properties": [{"key": "plan", "value": "pro"}]}, {"event": "a"}],
                   "conversion_window": {"value": 2, "unit": "day"}, "date_from": "2026-04-01", "date_to": "2026-04-30"}),
            tz,
        )
        .await;
    let range = &p.reads[0].range;
    // The truth knows events by name: a `b` without the filter becomes another event.
    let renamed: Vec<truth::Row<'_>> = events
        .iter()
        .map(|e| truth::Row {
            person: e.person,
            ts_us: e.ts,
            event: if e.event == "b" && !holds(e, Pred::PlanIs("pro")) {
                "other"
            } else {
                e.event
            },
        })
        .collect();
    let want = truth::funnel(
        &renamed,
        &["a", "b", "a"],
        2 * DAY_US,
        truth::Order::Ordered,
        truth::Range {
            from_us: range.from.timestamp_micros(),
            to_us: range.to.timestamp_micros(),
        },
    );
    let stats = funnel_stats(
        &renamed,
        &["a", "b", "a"],
        2 * DAY_US,
        truth::Order::Ordered,
        truth::Range {
            from_us: range.from.timestamp_micros(),
            to_us: range.to.timestamp_micros(),
        },
        &[],
    );
    assert_funnel(&a, want, stats, &format!("filtered funnel in {tz}"));

    // A strict funnel with a filter on every event: an event failing it still breaks the chain.
    let (_, p, a) = r
        .run(
            InsightKind::Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b"}], "order": "strict",
                   "properties": [{"key": "plan", "operator": "is_not", "value": "free"}],
                   "conversion_window": {"value": 1, "unit": "day"}, "date_from": "2026-03-15", "date_to": "2026-04-15"}),
            tz,
        )
        .await;
    let range = &p.reads[0].range;
    let renamed: Vec<truth::Row<'_>> = events
        .iter()
        .map(|e| truth::Row {
            person: e.person,
            ts_us: e.ts,
            event: if holds(e, Pred::PlanIs("free")) {
                "other"
            } else {
                e.event
            },
        })
        .collect();
    let range = truth::Range {
        from_us: range.from.timestamp_micros(),
        to_us: range.to.timestamp_micros(),
    };
    let want = truth::funnel(&renamed, &["a", "b"], DAY_US, truth::Order::Strict, range);
    let stats = funnel_stats(
        &renamed,
        &["a", "b"],
        DAY_US,
        truth::Order::Strict,
        range,
        &[],
    );
    assert_funnel(&a, want, stats, &format!("filtered strict funnel in {tz}"));

    // Exclusions: an attempt with the excluded event inside its span (or, not completed, after its start within the
    // window) counts for nothing; against the brute force only (the truth has no exclusions).
    for (order, steps, exclusion, days, from, to) in [
        (
            "ordered",
            vec!["a", "b", "c"],
            ("c", 0, 1),
            3,
            "2026-03-10",
            "2026-04-25",
        ),
        (
            "ordered",
            vec!["a", "b", "c"],
            ("a", 1, 2),
            2,
            "2026-03-10",
            "2026-04-25",
        ),
        (
            "strict",
            vec!["a", "c"],
            ("b", 0, 1),
            1,
            "2026-04-01",
            "2026-04-02",
        ),
        (
            "strict",
            vec!["a", "b", "c"],
            ("a", 1, 2),
            2,
            "2026-03-20",
            "2026-03-23",
        ),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Funnel,
                json!({"steps": steps.iter().map(|e| json!({"event": e})).collect::<Vec<_>>(), "order": order,
                       "exclusions": [{"event": exclusion.0, "from_step": exclusion.1, "to_step": exclusion.2}],
                       "conversion_window": {"value": days, "unit": "day"},
                       "date_from": from, "date_to": to}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let truth_order = if order == "strict" {
            truth::Order::Strict
        } else {
            truth::Order::Ordered
        };
        let range = truth::Range {
            from_us: range.from.timestamp_micros(),
            to_us: range.to.timestamp_micros(),
        };
        let all = utc_rows(&|_| true);
        let stats = funnel_stats(
            &all,
            &steps,
            days * DAY_US,
            truth_order,
            range,
            &[exclusion],
        );
        let unexcluded = funnel_stats(&all, &steps, days * DAY_US, truth_order, range, &[]);
        assert_ne!(stats, unexcluded, "the exclusion changes the answer");
        assert!(stats.0[steps.len() - 1] > 0, "someone completes");
        let what = format!("{order} funnel {steps:?} excluding {exclusion:?} in {tz}");
        assert_eq!(
            match &a {
                Answer::Funnel {
                    reached,
                    avg_time_us,
                    median_time_us,
                    ..
                } => (reached.clone(), avg_time_us.clone(), median_time_us.clone()),
                other => panic!("{other:?}"),
            },
            stats,
            "{what}"
        );
    }
}

/// Funnel breakdowns: ranked by the first step's rows (in the read's UTC days), each person under the label of one
/// row of their best attempt.
async fn check_funnel_breakdowns(r: &mut Runner, events: &[Event], tz: &Tz) {
    let all = utc_rows(events.iter());
    let label = |i: usize| {
        events[i]
            .props
            .get("city")
            .filter(|v| !v.is_null())
            .map(text)
    };
    for (order, truth_order, steps, attribution) in [
        (
            "ordered",
            truth::Order::Ordered,
            vec!["a", "b", "c"],
            "first_touch",
        ),
        ("strict", truth::Order::Strict, vec!["a", "b"], "last_touch"),
        (
            "unordered",
            truth::Order::Unordered,
            vec!["a", "b", "c"],
            "step:1",
        ),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Funnel,
                json!({"steps": steps.iter().map(|e| json!({"event": e})).collect::<Vec<_>>(), "order": order,
                       "breakdown": {"property": "city", "limit": 3}, "breakdown_attribution": attribution,
                       "conversion_window": {"value": 2, "unit": "day"},
                       "date_from": "2026-03-20", "date_to": "2026-04-20"}),
                tz,
            )
            .await;
        let read = &p.reads[0];
        let (day_from, day_to) = (
            read.from_us.div_euclid(DAY_US) * DAY_US,
            ((read.to_us - 1).div_euclid(DAY_US) + 1) * DAY_US,
        );
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            if e.event == steps[0] && day_from <= e.ts && e.ts < day_to {
                if let Some(l) = label(i) {
                    *counts.entry(l).or_default() += 1;
                }
            }
        }
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        let top: Vec<String> = ranked.iter().take(3).map(|x| x.0.clone()).collect();
        let mut labels: Vec<Value> = top.iter().map(|l| json!(l)).collect();
        if ranked.len() > 3 {
            labels.push(json!("$$_posthog_breakdown_other_$$"));
        }
        labels.push(Value::Null);
        let range = truth::Range {
            from_us: read.range.from.timestamp_micros(),
            to_us: read.range.to.timestamp_micros(),
        };
        let mut bests = Vec::new();
        funnel_best(
            &all,
            &steps,
            2 * DAY_US,
            truth_order,
            range,
            &[],
            &mut Vec::new(),
            &mut bests,
        );
        // Per label, the best attempts of its persons.
        let mut by_label: Vec<Vec<Vec<usize>>> = vec![Vec::new(); labels.len()];
        for (_, best) in bests {
            let row = match attribution {
                "first_touch" => best[0],
                "last_touch" => best[best.len() - 1],
                _ => *best.get(1).unwrap_or(&best[0]),
            };
            let code = match label(row) {
                None => labels.len() - 1,
                Some(l) => top.iter().position(|t| *t == l).unwrap_or(3),
            };
            by_label[code].push(best);
        }
        let Answer::FunnelBreakdown(got) = &a else {
            panic!("{a:?}")
        };
        assert_eq!(
            got.iter().map(|g| g.label.clone()).collect::<Vec<_>>(),
            labels,
            "{order} labels in {tz}"
        );
        for (g, attempts) in got.iter().zip(&by_label) {
            let mut reached = vec![0u64; steps.len()];
            let mut times: Vec<Vec<i64>> = vec![Vec::new(); steps.len()];
            for best in attempts {
                for r in reached.iter_mut().take(best.len()) {
                    *r += 1;
                }
                for (k, w) in best.windows(2).enumerate() {
                    times[k + 1].push(events[w[1]].ts - events[w[0]].ts);
                }
            }
            let mean = |v: &Vec<i64>| {
                (!v.is_empty())
                    .then(|| v.iter().map(|&x| i128::from(x)).sum::<i128>() as f64 / v.len() as f64)
            };
            let median = |v: &Vec<i64>| {
                let mut v = v.clone();
                v.sort_unstable();
                let n = v.len();
                match n {
                    0 => None,
                    _ if n % 2 == 1 => Some(v[n / 2] as f64),
                    _ => Some((i128::from(v[n / 2 - 1]) + i128::from(v[n / 2])) as f64 / 2.0),
                }
            };
            let what = format!(
                "{order} funnel by city ({attribution}), label {} in {tz}",
                g.label
            );
            assert_eq!(g.reached, reached, "{what}");
            assert_eq!(
                g.avg_time_us,
                times.iter().map(mean).collect::<Vec<_>>(),
                "{what}"
            );
            assert_eq!(
                g.median_time_us,
                times.iter().map(median).collect::<Vec<_>>(),
                "{what}"
            );
        }
        assert!(
            got.iter().filter(|g| g.reached[0] > 0).count() > 2,
            "several labels count someone"
        );
    }
}

/// Funnel trends: per bucket, the persons with a valid attempt entering in it, and those completing such an attempt.
async fn check_funnel_trends(r: &mut Runner, events: &[Event], tz: &Tz) {
    let all = utc_rows(events.iter());
    for (order, truth_order, interval_name, from, to) in [
        (
            "ordered",
            truth::Order::Ordered,
            "week",
            "2026-03-04",
            "2026-04-30",
        ),
        (
            "strict",
            truth::Order::Strict,
            "day",
            "2026-03-26",
            "2026-04-02",
        ),
        (
            "unordered",
            truth::Order::Unordered,
            "day",
            "2026-03-26",
            "2026-04-02",
        ),
    ] {
        let steps = ["a", "b", "c"];
        let (_, p, a) = r
            .run(
                InsightKind::Funnel,
                json!({"steps": steps.iter().map(|e| json!({"event": e})).collect::<Vec<_>>(), "order": order,
                       "trends": true, "interval": interval_name, "conversion_window": {"value": 1, "unit": "day"},
                       "date_from": from, "date_to": to}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let mut valid = Vec::new();
        let stats = funnel_attempts(
            &all,
            &steps,
            DAY_US,
            truth_order,
            truth::Range {
                from_us: range.from.timestamp_micros(),
                to_us: range.to.timestamp_micros(),
            },
            &[],
            &mut valid,
        );
        let mut sets = vec![(BTreeSet::new(), BTreeSet::new()); range.buckets.len()];
        for (person, entry, level) in valid {
            let b = range
                .bucket_of(DateTime::from_timestamp_micros(entry).unwrap())
                .unwrap();
            sets[b].0.insert(person);
            if level == steps.len() {
                sets[b].1.insert(person);
            }
        }
        let want: Vec<(u64, u64)> = sets
            .iter()
            .map(|(e, c)| (e.len() as u64, c.len() as u64))
            .collect();
        assert!(want.iter().any(|w| w.1 > 0), "someone completes");
        match &a {
            Answer::Funnel { reached, trend, .. } => {
                assert_eq!(reached, &stats.0, "{order} funnel steps in {tz}");
                assert_eq!(
                    trend.as_ref(),
                    Some(&want),
                    "{order} funnel trend by {interval_name} in {tz}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

async fn check_retention(r: &mut Runner, events: &[Event], tz: &Tz) {
    let all = rows(events, tz, Pred::Any);
    for (cohort, mode, period, periods, date_to) in [
        ("first_time", "on", "week", 6, "2026-04-26"),
        ("recurring", "on_or_after", "day", 10, "2026-04-12"),
        ("first_time", "on_or_after", "month", 3, "2026-05-10"),
        ("recurring", "on", "week", 4, "2026-05-10"),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Retention,
                json!({"start_event": {"event": "a"}, "return_event": {"event": "b"}, "cohort": cohort,
                       "mode": mode, "period": period, "periods": periods, "date_to": date_to}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        assert_eq!(range.buckets.len(), periods);
        let want = truth::retention(
            &all,
            truth::Retention {
                start_event: "a",
                return_event: "b",
                cohorting: if cohort == "first_time" {
                    truth::Cohorting::FirstTime
                } else {
                    truth::Cohorting::Recurring
                },
                interval: interval(range.interval),
                from_us: local_range(range, tz).from_us,
                periods,
                on_or_after: mode == "on_or_after",
            },
        );
        assert_eq!(
            a,
            Answer::Retention(want),
            "{cohort} {mode} {period} retention in {tz}"
        );
    }
}

/// Retention breakdowns: ranked by the start rows the read covers, each membership under the label of the start
/// row that placed the person in that cohort (`flywheel_truth::retention_by_row`).
async fn check_retention_breakdowns(r: &mut Runner, events: &[Event], tz: &Tz) {
    let all = rows(events, tz, Pred::Any);
    let label = |e: &Event| e.props.get("city").filter(|v| !v.is_null()).map(text);
    for (cohort, mode, period, periods, date_to, limit) in [
        ("first_time", "on", "week", 6, "2026-04-26", 3),
        ("recurring", "on_or_after", "day", 10, "2026-04-12", 2),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Retention,
                json!({"start_event": {"event": "a"}, "return_event": {"event": "b"}, "cohort": cohort,
                       "mode": mode, "period": period, "periods": periods, "date_to": date_to,
                       "breakdown": {"property": "city", "limit": limit}}),
                tz,
            )
            .await;
        let read = &p.reads[0];
        let (day_from, day_to) = (
            read.from_us.div_euclid(DAY_US) * DAY_US,
            ((read.to_us - 1).div_euclid(DAY_US) + 1) * DAY_US,
        );
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for e in events {
            if e.event == "a" && day_from <= e.ts && e.ts < day_to {
                if let Some(l) = label(e) {
                    *counts.entry(l).or_default() += 1;
                }
            }
        }
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        let top: Vec<String> = ranked.iter().take(limit).map(|x| x.0.clone()).collect();
        let mut labels: Vec<Value> = top.iter().map(|l| json!(l)).collect();
        if ranked.len() > limit {
            labels.push(json!("$$_posthog_breakdown_other_$$"));
        }
        labels.push(Value::Null);
        let codes: Vec<u32> = events
            .iter()
            .map(|e| match label(e) {
                None => labels.len() as u32 - 1,
                Some(l) => top.iter().position(|t| *t == l).unwrap_or(limit) as u32,
            })
            .collect();
        let range = &read.range;
        let tables = truth::retention_by_row(
            &all,
            &codes,
            labels.len(),
            truth::Retention {
                start_event: "a",
                return_event: "b",
                cohorting: if cohort == "first_time" {
                    truth::Cohorting::FirstTime
                } else {
                    truth::Cohorting::Recurring
                },
                interval: interval(range.interval),
                from_us: local_range(range, tz).from_us,
                periods,
                on_or_after: mode == "on_or_after",
            },
        );
        let Answer::RetentionBreakdown(got) = &a else {
            panic!("{a:?}")
        };
        let what = format!("{cohort} {mode} {period} retention by city in {tz}");
        assert_eq!(
            got.iter().map(|g| g.label.clone()).collect::<Vec<_>>(),
            labels,
            "{what}"
        );
        for (g, t) in got.iter().zip(&tables) {
            assert_eq!(&g.table, t, "{what}, label {}", g.label);
        }
        assert!(
            tables.iter().filter(|t| t[0][0] > 0).count() > 1,
            "several labels have a cohort"
        );
    }
}

async fn check_stickiness_and_lifecycle(r: &mut Runner, events: &[Event], tz: &Tz) {
    for (interval_name, from, to) in [
        ("day", "2026-04-01", "2026-04-20"),
        ("week", "2026-03-02", "2026-05-10"),
        ("month", "2026-02-01", "2026-05-31"),
    ] {
        let (_, p, a) = r
            .run(
                InsightKind::Stickiness,
                json!({"event": {"event": "a"}, "interval": interval_name, "date_from": from, "date_to": to}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let want = truth::stickiness(
            &rows(events, tz, Pred::Any),
            "a",
            local_range(range, tz),
            interval(range.interval),
        );
        assert_eq!(
            a,
            Answer::Stickiness(want),
            "{interval_name} stickiness in {tz}"
        );

        let (_, p, a) = r
            .run(
                InsightKind::Lifecycle,
                json!({"event": {"event": "b", "properties": [{"key": "plan", "operator": "is_not", "value": "free"}]},
                       "interval": interval_name, "date_from": from, "date_to": to}),
                tz,
            )
            .await;
        let range = &p.reads[0].range;
        let kept = local_rows(
            events.iter().filter(|e| !holds(e, Pred::PlanIs("free"))),
            tz,
        );
        let want = truth::lifecycle(&kept, "b", local_range(range, tz), interval(range.interval));
        let Answer::Lifecycle(got) = a else {
            panic!("not lifecycle")
        };
        assert_eq!(
            (got.new, got.returning, got.resurrecting, got.dormant),
            (want.new, want.returning, want.resurrecting, want.dormant),
            "{interval_name} lifecycle in {tz}"
        );
    }
}

/// Project whose events mirror `PROJECT`'s with each event's final person's current properties copied into the
/// event (`ptier`, `page`): its event-property answers (checked against the truth above) are what the person-property
/// answers of `PROJECT` must be.
const MIRROR_PROJECT: u64 = 9;

/// The current properties of person `p` (1..=30): `tier` a string, a number, a text with case folding, or missing;
/// `age` a number or a string holding one. Person 5 is erased (no properties).
fn person_props(p: u64) -> Map<String, Value> {
    let mut m = Map::new();
    if p == 5 {
        return m;
    }
    match p % 5 {
        0 => m.insert("tier".into(), json!("gold")),
        1 => m.insert("tier".into(), json!("silver")),
        2 => m.insert("tier".into(), json!(7)),
        3 => m.insert("tier".into(), json!("İNK")),
        _ => None,
    };
    if p.is_multiple_of(4) {
        m.insert("age".into(), json!(format!(" {}", p * 3)));
    } else {
        m.insert("age".into(), json!(p * 3));
    }
    m
}

/// The persons table (versions out of order, stale versions, an erased person, persons merged away whose rows are
/// never reached, another project's person with the same uuid) and the mirror project's events and overrides.
fn person_fixture(
    events: &[Event],
    overrides: &[PersonOverride],
) -> (Vec<PersonRow>, Vec<EventRow>, Vec<PersonOverride>) {
    let ghost: Map<String, Value> = [("tier".to_string(), json!("ghost"))].into_iter().collect();
    let stale: Map<String, Value> = [
        ("tier".to_string(), json!("stale")),
        ("age".to_string(), json!(1)),
    ]
    .into_iter()
    .collect();
    let mut persons = Vec::new();
    for p in 1..=30u64 {
        let id = p as i64;
        let current = if p == 5 {
            PersonRow::deleted(PROJECT, id, 50)
        } else {
            PersonRow::new(PROJECT, id, person_uuid(p), &person_props(p), 10 + p)
        };
        let old = PersonRow::new(PROJECT, id, person_uuid(p), &stale, 1);
        // The newest row first for some persons: the version decides, not the order.
        if p.is_multiple_of(2) {
            persons.extend([current, old]);
        } else {
            persons.extend([old, current]);
        }
    }
    for x in [
        101, 102, 103, 104, 105, 106, 307, 308, 309, 207, 208, 209, 410, 411, 412, 510, 511, 512,
    ] {
        persons.push(PersonRow::new(
            PROJECT,
            1000 + x as i64,
            person_uuid(x),
            &ghost,
            3,
        ));
    }
    persons.push(PersonRow::new(OTHER_PROJECT, 1, person_uuid(1), &ghost, 99));
    let mirror = events
        .iter()
        .map(|e| {
            let mut props = e.props.clone();
            let current = person_props(e.person);
            if let Some(v) = current.get("tier") {
                props.insert("ptier".into(), v.clone());
            }
            if let Some(v) = current.get("age") {
                props.insert("page".into(), v.clone());
            }
            let r = &e.row;
            EventRow::new(
                r.uuid,
                MIRROR_PROJECT,
                &r.event,
                &r.distinct_id,
                r.person_id,
                r.timestamp_us,
                &props,
            )
        })
        .collect();
    let mirror_overrides = overrides
        .iter()
        .filter(|o| o.project_id == PROJECT)
        .map(|o| PersonOverride {
            project_id: MIRROR_PROJECT,
            ..o.clone()
        })
        .collect();
    (persons, mirror, mirror_overrides)
}

/// Person-property filters and breakdowns of every kind: each definition on `PROJECT` answers as its event-property
/// twin on the mirror project (the persons' current properties copied into their events).
async fn check_person_properties(r: &mut Runner, tz: &Tz) {
    let person = |key: &str, op: &str, value: Value| json!({"key": key, "type": "person", "operator": op, "value": value});
    let event = |key: &str, op: &str, value: Value| json!({"key": key, "type": "event", "operator": op, "value": value});
    let filters: Vec<(Value, Value)> = vec![
        (
            person("tier", "exact", json!(["gold", 7])),
            event("ptier", "exact", json!(["gold", 7])),
        ),
        (
            person("tier", "is_not", json!("gold")),
            event("ptier", "is_not", json!("gold")),
        ),
        (
            person("tier", "is_set", Value::Null),
            event("ptier", "is_set", Value::Null),
        ),
        (
            person("tier", "is_not_set", Value::Null),
            event("ptier", "is_not_set", Value::Null),
        ),
        (
            person("tier", "contains", json!("i̇n")),
            event("ptier", "contains", json!("i̇n")),
        ),
        (
            person("tier", "not_contains", json!("IL")),
            event("ptier", "not_contains", json!("IL")),
        ),
        (
            person("age", "gt", json!(40)),
            event("page", "gt", json!(40)),
        ),
        (
            person("age", "gte", json!("48")),
            event("page", "gte", json!("48")),
        ),
        (
            person("age", "lt", json!(20)),
            event("page", "lt", json!(20)),
        ),
        (
            person("age", "lte", json!(21)),
            event("page", "lte", json!(21)),
        ),
    ];
    let person_by = json!({"type": "person", "property": "tier", "limit": 2});
    let event_by = json!({"type": "event", "property": "ptier", "limit": 2});
    let range = json!({"date_from": "2026-03-20", "date_to": "2026-04-20"});
    let with_range = |mut v: Value| {
        for (k, x) in range.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let mut pairs: Vec<(InsightKind, Value, Value)> = Vec::new();
    for (i, (pf, ef)) in filters.iter().enumerate() {
        let math = ["total", "dau", "weekly_active"][i % 3];
        pairs.push((
            InsightKind::Trends,
            with_range(json!({"series": [{"event": "a", "math": math}], "properties": [pf]})),
            with_range(json!({"series": [{"event": "a", "math": math}], "properties": [ef]})),
        ));
    }
    // Per step and per series too, beside event filters.
    pairs.push((
        InsightKind::Trends,
        with_range(json!({"series": [{"event": "b", "properties": [filters[0].0, {"key": "plan", "value": "pro"}]}, {"event": "c", "math": "dau"}], "breakdown": person_by})),
        with_range(json!({"series": [{"event": "b", "properties": [filters[0].1, {"key": "plan", "value": "pro"}]}, {"event": "c", "math": "dau"}], "breakdown": event_by})),
    ));
    for math in ["total", "weekly_active"] {
        pairs.push((
            InsightKind::Trends,
            with_range(json!({"series": [{"event": "a", "math": math}], "breakdown": {"type": "person", "property": "tier"}, "properties": [filters[1].0]})),
            with_range(json!({"series": [{"event": "a", "math": math}], "breakdown": {"type": "event", "property": "ptier"}, "properties": [filters[1].1]})),
        ));
    }
    for order in ["ordered", "strict", "unordered"] {
        pairs.push((
            InsightKind::Funnel,
            with_range(json!({"steps": [{"event": "a"}, {"event": "b", "properties": [filters[6].0]}], "order": order, "properties": [filters[3].0]})),
            with_range(json!({"steps": [{"event": "a"}, {"event": "b", "properties": [filters[6].1]}], "order": order, "properties": [filters[3].1]})),
        ));
        pairs.push((
            InsightKind::Funnel,
            with_range(json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "order": order, "breakdown": person_by, "breakdown_attribution": "last_touch"})),
            with_range(json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "order": order, "breakdown": event_by, "breakdown_attribution": "last_touch"})),
        ));
    }
    for cohort in ["first_time", "recurring"] {
        pairs.push((
            InsightKind::Retention,
            json!({"start_event": "a", "return_event": "b", "period": "week", "periods": 4, "date_to": "2026-04-20", "cohort": cohort, "breakdown": {"type": "person", "property": "tier"}, "properties": [filters[9].0]}),
            json!({"start_event": "a", "return_event": "b", "period": "week", "periods": 4, "date_to": "2026-04-20", "cohort": cohort, "breakdown": {"type": "event", "property": "ptier"}, "properties": [filters[9].1]}),
        ));
    }
    pairs.push((
        InsightKind::Stickiness,
        with_range(json!({"event": {"event": "a"}, "properties": [filters[5].0]})),
        with_range(json!({"event": {"event": "a"}, "properties": [filters[5].1]})),
    ));
    pairs.push((
        InsightKind::Lifecycle,
        with_range(
            json!({"event": {"event": "a", "properties": [filters[0].0]}, "interval": "week"}),
        ),
        with_range(
            json!({"event": {"event": "a", "properties": [filters[0].1]}, "interval": "week"}),
        ),
    ));
    let mut nonzero = 0;
    for (kind, by_person, by_event) in pairs {
        r.target.project_id = MIRROR_PROJECT;
        let (_, _, want) = r.run(kind, by_event, tz).await;
        r.target.project_id = PROJECT;
        let (_, _, got) = r.run(kind, by_person.clone(), tz).await;
        assert_eq!(got, want, "{by_person} in {}", tz.name());
        if format!("{got:?}").chars().any(|c| ('1'..='9').contains(&c)) {
            nonzero += 1;
        }
    }
    assert!(nonzero > 20, "the definitions count something ({nonzero})");
}

/// Cohort filters: memberships of every form (counts in a window with event filters, a count zero satisfies, first
/// time, an uploaded list with an erased and an unknown person, a person property, groups and negation) as filters
/// (and negated) of a trends insight; each answer against the events of the members found by brute force here.
async fn check_cohorts(r: &mut Runner, events: &[Event], tz: &Tz) {
    use flywheel_clickhouse::sql::Membership;
    use flywheel_query::{CountOp, EventRef, Operator, PropertyFilter, PropertyType};
    let day = |d: i64| base() + d * DAY_US;
    let event_filter = |key: &str, operator, value: Value| PropertyFilter {
        key: key.into(),
        value: Some(value),
        operator,
        property_type: PropertyType::Event,
        group_type_index: None,
    };
    let pro_b = Membership::Performed {
        event: EventRef::Named("b".into()),
        filters: vec![event_filter("plan", Operator::Exact, json!("pro"))],
        from_us: day(10),
        to_us: day(40),
        op: CountOp::Gte,
        count: 5,
    };
    let few_c = Membership::Performed {
        event: EventRef::Named("c".into()),
        filters: Vec::new(),
        from_us: day(10),
        to_us: day(40),
        op: CountOp::Lt,
        count: 3,
    };
    let idle = Membership::Performed {
        event: EventRef::All,
        filters: Vec::new(),
        from_us: day(60),
        to_us: day(62),
        op: CountOp::Exact,
        count: 0,
    };
    let first_berlin = Membership::FirstTime {
        event: EventRef::Named("a".into()),
        filters: vec![event_filter("city", Operator::Contains, json!("BERLIN"))],
        from_us: day(20),
        to_us: day(50),
    };
    let listed = Membership::Listed(vec![1, 2, 3, 5, 17, 999]);
    let gold = Membership::Person(PropertyFilter {
        key: "tier".into(),
        value: Some(json!("gold")),
        operator: Operator::Exact,
        property_type: PropertyType::Person,
        group_type_index: None,
    });
    let mixed = Membership::All(vec![
        Membership::Any(vec![pro_b.clone(), listed.clone()]),
        Membership::Not(Box::new(gold.clone())),
    ]);

    // The same rules in Rust, over persons 1..=30 (person 5 is erased: no properties, not listed).
    let count = |p: u64, event: Option<&str>, pred: Pred, from: i64, to: i64| {
        events
            .iter()
            .filter(|e| e.person == p && event.is_none_or(|n| e.event == n) && holds(e, pred))
            .filter(|e| e.ts >= from && e.ts <= to)
            .count()
    };
    let persons =
        |test: &dyn Fn(u64) -> bool| -> BTreeSet<u64> { (1..=30).filter(|&p| test(p)).collect() };
    let sets = [
        persons(&|p| count(p, Some("b"), Pred::PlanIs("pro"), day(10), day(40)) >= 5),
        persons(&|p| count(p, Some("c"), Pred::Any, day(10), day(40)) < 3),
        persons(&|p| count(p, None, Pred::Any, day(60), day(62)) == 0),
        persons(&|p| {
            events
                .iter()
                .filter(|e| {
                    e.person == p && e.event == "a" && holds(e, Pred::CityContains("BERLIN"))
                })
                .map(|e| e.ts)
                .min()
                .is_some_and(|t| (day(20)..=day(50)).contains(&t))
        }),
        persons(&|p| [1, 2, 3, 17].contains(&p)),
        persons(&|p| p != 5 && person_props(p).get("tier") == Some(&json!("gold"))),
    ];
    let mixed_set =
        persons(&|p| (sets[0].contains(&p) || sets[4].contains(&p)) && !sets[5].contains(&p));
    let cohorts = [
        (1, pro_b, sets[0].clone()),
        (2, few_c, sets[1].clone()),
        (3, idle, sets[2].clone()),
        (4, first_berlin, sets[3].clone()),
        (5, listed, sets[4].clone()),
        (6, gold, sets[5].clone()),
        (7, mixed, mixed_set),
        (8, Membership::Any(Vec::new()), BTreeSet::new()),
        (9, Membership::All(Vec::new()), (1..=30).collect()),
    ];
    r.target.cohorts =
        std::sync::Arc::new(cohorts.iter().map(|(id, m, _)| (*id, m.clone())).collect());
    let mut partial = 0;
    for (id, _, set) in &cohorts {
        if !set.is_empty() && set.len() < 30 {
            partial += 1;
        }
        for negate in [false, true] {
            let body = json!({"series": [{"event": "a"}], "date_from": "2026-03-20", "date_to": "2026-04-20",
                              "interval": "week", "properties": [{"type": "cohort", "id": id, "negate": negate}]});
            let (_, p, answer) = r.run(InsightKind::Trends, body.clone(), tz).await;
            let (from, to) = (p.reads[0].bucket_starts_us[0], p.reads[0].end_us);
            let want = events
                .iter()
                .filter(|e| e.event == "a" && e.ts >= from && e.ts < to)
                .filter(|e| set.contains(&e.person) != negate)
                .count() as f64;
            let got: f64 = series(&answer)[0][0].iter().sum();
            assert_eq!(got, want, "{body} in {}", tz.name());
        }
    }
    assert!(
        partial >= 6,
        "the cohorts split the persons ({partial} partial)"
    );
    r.target.cohorts = Default::default();
}

/// `regex` and `not_regex` on event properties, against Rust's `regex` on the same texts: Unicode classes, case
/// folding of non-ASCII letters, `.` and newlines, escapes.
async fn check_regex(r: &mut Runner, events: &[Event], tz: &Tz) {
    let cases = [
        ("city", "(?i)berlin"),
        ("city", "^.{6}$"),
        ("city", r"^\w+-\w+$"),
        ("city", "(?i)zürich|όσοσ"),
        ("city", "(?i)istanbul"),
        ("plan", r"^\d$"),
        ("amount", r"^\s*\d+(\.\d+)?$"),
        ("note", r#"\\ "quoted"\t"#),
        ("note", "quoted.text"),
    ];
    let mut nonzero = 0;
    for (key, pattern) in cases {
        let re = regex::Regex::new(pattern).unwrap();
        for operator in ["regex", "not_regex"] {
            let body = json!({"series": [{"event": "a"}], "date_from": "2026-03-10", "date_to": "2026-04-20",
                              "properties": [{"key": key, "operator": operator, "value": pattern}]});
            let (_, p, answer) = r.run(InsightKind::Trends, body.clone(), tz).await;
            let (from, to) = (p.reads[0].bucket_starts_us[0], p.reads[0].end_us);
            let want = events
                .iter()
                .filter(|e| e.event == "a" && e.ts >= from && e.ts < to)
                .filter(|e| {
                    let hit = e
                        .props
                        .get(key)
                        .filter(|v| !v.is_null())
                        .is_some_and(|v| re.is_match(&text(v)));
                    hit == (operator == "regex")
                })
                .count() as f64;
            let got: f64 = series(&answer)[0][0].iter().sum();
            assert_eq!(got, want, "{body}");
            if want > 0.0 {
                nonzero += 1;
            }
        }
    }
    assert!(nonzero >= 14, "the patterns match something ({nonzero})");
}

/// The project of the group checks' events.
const GROUP_PROJECT: u64 = 10;

/// Companies of the group checks (a quote, a backslash, non-ASCII) and each one's `plan` in the metadata store
/// (`None`: the store has the company without a plan value; "ghost" is not in the store at all).
const COMPANIES: [(&str, Option<&str>); 5] = [
    ("acme", Some("\"pro\"")),
    ("globex", Some("\"free\"")),
    ("it's \\ \"odd\"", Some("7")),
    ("Zürich GmbH", Some("null")),
    ("ghost", None),
];

/// Events of `GROUP_PROJECT` with every shape of `$groups`: a known company, an unknown one, a team only, a key
/// that is a number or an object (no group), none at all. Returns the rows and each row's company key, if any.
fn group_rows() -> (Vec<EventRow>, Vec<Option<&'static str>>) {
    let mut rng = Rng(0x0960_0095);
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    for i in 0..900u64 {
        let p = 1 + rng.below(20);
        // Distinct minutes (4801 is prime to the 86,400 minutes of 60 days): no ties within a group.
        let ts = base() + (i * 4801 % (60 * 24 * 60)) as i64 * MINUTE_US;
        let event = EVENTS[rng.below(3) as usize];
        let mut props = Map::new();
        let key = match rng.below(9) {
            0 => None,
            1 => {
                props.insert("$groups".into(), json!({"company": 42}));
                None
            }
            2 => {
                props.insert("$groups".into(), json!({"company": {"name": "acme"}}));
                None
            }
            3 => {
                props.insert("$groups".into(), json!({"team": "red"}));
                None
            }
            _ => {
                let c = COMPANIES[rng.below(5) as usize].0;
                props.insert("$groups".into(), json!({"team": "blue", "company": c}));
                Some(c)
            }
        };
        rows.push(EventRow::new(
            Uuid::from_u64_pair(0x9000 + i, i),
            GROUP_PROJECT,
            event,
            &format!("g{p}"),
            person_uuid(p),
            ts,
            &props,
        ));
        keys.push(key);
    }
    (rows, keys)
}

/// Group filters and a group breakdown (`Target::groups`, decided here as the server decides them from the
/// metadata store) against the rows' company keys counted here.
async fn check_groups(r: &mut Runner, rows: &[EventRow], keys: &[Option<&str>], tz: &Tz) {
    use flywheel_clickhouse::sql::{group_filter_key, GroupLabels, GroupPass, Groups};
    use flywheel_query::{Operator, PropertyFilter, PropertyType};
    let plan_of = |c: &str| -> Option<Value> {
        COMPANIES
            .iter()
            .find(|(k, _)| *k == c)
            .and_then(|(_, v)| v.map(|v| serde_json::from_str(v).unwrap()))
    };
    let known: Vec<(&str, Value)> = COMPANIES
        .iter()
        .filter_map(|(k, _)| plan_of(k).map(|v| (*k, v)))
        .collect();
    let filter = |operator, value: Option<Value>| PropertyFilter {
        key: "plan".into(),
        value,
        operator,
        property_type: PropertyType::Group,
        group_type_index: Some(0),
    };
    // (filter, passes for a known company's plan, passes without a known company)
    type Case = (PropertyFilter, fn(&Value) -> bool, bool);
    let pro = filter(Operator::Exact, Some(json!("pro")));
    let not_pro = filter(Operator::IsNot, Some(json!("pro")));
    let cases: Vec<Case> = vec![
        (pro.clone(), |v| v == "pro", false),
        (not_pro.clone(), |v| v != "pro", true),
    ];
    let mut groups = Groups::default();
    for (f, test, missing) in &cases {
        let mut pass = GroupPass {
            type_name: Some("company".into()),
            missing: *missing,
            ..GroupPass::default()
        };
        for (k, v) in &known {
            if test(v) {
                pass.passing.push(k.to_string());
            } else {
                pass.failing.push(k.to_string());
            }
        }
        groups.filters.insert(group_filter_key(f), pass);
    }
    let label = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    groups.labels.insert(
        (0, "plan".into()),
        GroupLabels {
            type_name: Some("company".into()),
            labels: known
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.to_string(), label(v)))
                .collect(),
        },
    );
    r.target.project_id = GROUP_PROJECT;
    r.target.groups = std::sync::Arc::new(groups);
    let range = json!({"date_from": "2026-03-10", "date_to": "2026-04-20", "interval": "week"});
    for (f, test, missing) in &cases {
        let mut body = json!({"series": [{"event": "a"}], "properties": [f]});
        body.as_object_mut()
            .unwrap()
            .extend(range.as_object().unwrap().clone());
        let (_, p, answer) = r.run(InsightKind::Trends, body.clone(), tz).await;
        let (from, to) = (p.reads[0].bucket_starts_us[0], p.reads[0].end_us);
        let want = rows
            .iter()
            .zip(keys)
            .filter(|(row, _)| {
                row.event == "a" && row.timestamp_us >= from && row.timestamp_us < to
            })
            .filter(|(_, k)| match k.and_then(plan_of) {
                Some(v) => test(&v),
                None => *missing,
            })
            .count() as f64;
        let got: f64 = series(&answer)[0][0].iter().sum();
        assert_eq!(got, want, "{body}");
        assert!(want > 0.0);
    }
    let mut body = json!({"series": [{"event": "a"}], "breakdown": {"type": "group", "group_type_index": 0, "property": "plan", "limit": 10}});
    body.as_object_mut()
        .unwrap()
        .extend(range.as_object().unwrap().clone());
    let (_, p, answer) = r.run(InsightKind::Trends, body.clone(), tz).await;
    let (from, to) = (p.reads[0].bucket_starts_us[0], p.reads[0].end_us);
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for (row, k) in rows.iter().zip(keys) {
        if row.event == "a" && row.timestamp_us >= from && row.timestamp_us < to {
            let l = k
                .and_then(plan_of)
                .filter(|v| !v.is_null())
                .map_or("null".to_string(), |v| label(&v));
            *want.entry(l).or_default() += 1.0;
        }
    }
    let Answer::TrendsBreakdown(reads) = &answer else {
        panic!("{answer:?}")
    };
    let got: BTreeMap<String, f64> = reads[0]
        .labels
        .iter()
        .zip(&reads[0].series[0])
        .map(|(l, data)| (l.as_str().unwrap_or("null").to_string(), data.iter().sum()))
        .filter(|(_, n): &(String, f64)| *n > 0.0)
        .collect();
    assert_eq!(got, want, "{body}");
    assert_eq!(want.len(), 4, "pro, free, 7 and null: {want:?}");

    // Aggregated by company: a funnel and a retention table count companies (rows without one left out).
    let company: BTreeMap<&str, u64> = COMPANIES
        .iter()
        .zip(1..)
        .map(|((k, _), i)| (*k, i))
        .collect();
    let by_company: Vec<truth::Row<'_>> = rows
        .iter()
        .zip(keys)
        .filter_map(|(row, k)| {
            k.map(|k| truth::Row {
                person: company[k],
                ts_us: row.timestamp_us,
                event: &row.event,
            })
        })
        .collect();
    r.target.groups = std::sync::Arc::new(Groups {
        type_names: [(0, "company".to_string())].into_iter().collect(),
        ..Groups::default()
    });
    let (_, p, answer) = r
        .run(
            InsightKind::Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}], "aggregation": "group:0",
                   "conversion_window": {"value": 2, "unit": "day"}, "date_from": "2026-03-10", "date_to": "2026-04-10"}),
            &chrono_tz::UTC,
        )
        .await;
    let range = &p.reads[0].range;
    let want = truth::funnel(
        &by_company,
        &["a", "b", "c"],
        2 * DAY_US,
        truth::Order::Ordered,
        truth::Range {
            from_us: range.from.timestamp_micros(),
            to_us: range.to.timestamp_micros(),
        },
    );
    let Answer::Funnel { reached, .. } = &answer else {
        panic!("{answer:?}")
    };
    assert_eq!(reached, &want, "group-aggregated funnel");
    assert!(want[2] > 0, "{want:?}");
    // A type the project does not have: nothing to count.
    let (_, _, answer) = r
        .run(
            InsightKind::Funnel,
            json!({"steps": [{"event": "a"}, {"event": "b"}], "aggregation": "group:3", "date_from": "2026-03-10", "date_to": "2026-04-10"}),
            &chrono_tz::UTC,
        )
        .await;
    let Answer::Funnel { reached, .. } = &answer else {
        panic!("{answer:?}")
    };
    assert_eq!(reached, &[0, 0]);
    r.target.project_id = PROJECT;
    r.target.groups = Default::default();
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("clickhouse");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the dumped statements on current ClickHouse (chdb) over the same rows; they must answer the same.
fn check_on_current_clickhouse(dump: &Value) {
    let file = out_dir().join("statements.json");
    std::fs::write(&file, serde_json::to_vec(dump).unwrap()).unwrap();
    // chdb lives in the insight benchmark's venv (scripts/setup-test-env installs it there).
    let python = std::env::var("FLYWHEEL_CHDB_PYTHON").unwrap_or_else(|_| {
        let venv = std::env::var("FLYWHEEL_BENCH_VENV").unwrap_or_else(|_| {
            format!(
                "{}/.cache/flywheel/bench-venv",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        format!("{venv}/bin/python")
    });
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clickhouse/chdb_check.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {python} (a Python with chdb: scripts/setup-test-env installs it into the benchmark's venv; or set FLYWHEEL_CHDB_PYTHON): {e}"
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "current ClickHouse (chdb) disagrees or fails on the statements in {}:\n{stdout}\n{stderr}",
        file.display()
    );
    eprintln!("{}", stdout.trim());
}

#[tokio::test(flavor = "current_thread")]
async fn insights_match_the_truth_on_clickhouse_18_and_current() {
    let started = Instant::now();
    let server = test_support::start();
    let client = Client::new(&server.url).unwrap();
    let version = client.query_rows("SELECT version()").await.unwrap();
    eprintln!("ClickHouse {} at {}", version[0][0], server.url);
    let mut ddl = schema::create_all(DB);
    ddl.insert(0, format!("DROP DATABASE IF EXISTS {}", schema::ident(DB)));
    for s in &ddl {
        client.execute(s).await.unwrap();
    }
    let (events, overrides) = generate();
    let event_rows: Vec<EventRow> = events
        .iter()
        .map(|e| e.row.clone())
        .chain(other_project_rows())
        .collect();
    let events_table = format!("{}.{}", schema::ident(DB), schema::ident(schema::EVENTS));
    let overrides_table = format!(
        "{}.{}",
        schema::ident(DB),
        schema::ident(schema::PERSON_OVERRIDES)
    );
    // In several batches (several parts): answers must not depend on merges having happened.
    for chunk in event_rows.chunks(1500) {
        client.insert(&events_table, chunk).await.unwrap();
    }
    for o in &overrides {
        client
            .insert(&overrides_table, std::slice::from_ref(o))
            .await
            .unwrap();
    }
    let (person_rows, mirror_rows, mirror_overrides) = person_fixture(&events, &overrides);
    let (group_rows, group_keys) = group_rows();
    let persons_table = format!("{}.{}", schema::ident(DB), schema::ident(schema::PERSONS));
    // One insert per row, never merged (a merge would keep only each person's newest row): the readers' argMax
    // must pick it among stale ones.
    client
        .execute(&format!("SYSTEM STOP MERGES {persons_table}"))
        .await
        .unwrap();
    for row in &person_rows {
        client
            .insert(&persons_table, std::slice::from_ref(row))
            .await
            .unwrap();
    }
    client.insert(&events_table, &mirror_rows).await.unwrap();
    client.insert(&events_table, &group_rows).await.unwrap();
    client
        .insert(&overrides_table, &mirror_overrides)
        .await
        .unwrap();
    let count = client
        .query_rows(&format!(
            "SELECT count() FROM {events_table} WHERE project_id = {PROJECT}"
        ))
        .await
        .unwrap();
    assert_eq!(count[0][0], events.len().to_string());

    // Persons resolve through the overrides: 30 persons, although the events were written with more person ids.
    let persons = |expr: &str| {
        format!(
            "SELECT uniqExact({expr}) FROM ({})",
            flywheel_clickhouse::sql::rows_of_project(&Target {
                db: DB.into(),
                project_id: PROJECT,
                ..Target::default()
            })
        )
    };
    let resolved = client.query_rows(&persons("person")).await.unwrap();
    let written = client.query_rows(&persons("person_id")).await.unwrap();
    assert_eq!(resolved[0][0], "30");
    assert!(written[0][0].parse::<u32>().unwrap() > 30, "{written:?}");

    let mut r = Runner {
        client: client.clone(),
        target: Target {
            db: DB.into(),
            project_id: PROJECT,
            ..Target::default()
        },
        now: Utc.with_ymd_and_hms(2026, 5, 20, 12, 0, 0).unwrap(),
        dump: Vec::new(),
        checks: 0,
    };
    for tz_name in ["UTC", "Europe/Berlin", "Asia/Kolkata"] {
        let tz: Tz = tz_name.parse().unwrap();
        check_trends(&mut r, &events, &tz).await;
        check_breakdowns(&mut r, &events, &tz).await;
        check_funnels(&mut r, &events, &tz).await;
        check_funnel_trends(&mut r, &events, &tz).await;
        check_funnel_breakdowns(&mut r, &events, &tz).await;
        check_retention(&mut r, &events, &tz).await;
        check_retention_breakdowns(&mut r, &events, &tz).await;
        check_stickiness_and_lifecycle(&mut r, &events, &tz).await;
    }
    for tz_name in ["UTC", "Europe/Berlin"] {
        check_person_properties(&mut r, &tz_name.parse().unwrap()).await;
    }
    check_cohorts(&mut r, &events, &"Europe/Berlin".parse().unwrap()).await;
    check_regex(&mut r, &events, &chrono_tz::UTC).await;
    check_groups(
        &mut r,
        &group_rows,
        &group_keys,
        &"Europe/Berlin".parse().unwrap(),
    )
    .await;
    // The one-call entry point gives the same answers.
    let q = parse(InsightKind::Trends, &json!({"series": [{"event": "a", "math": "dau"}], "date_from": "2026-04-01", "date_to": "2026-04-07"})).unwrap();
    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let one = flywheel_clickhouse::run_insight(&client, &r.target, &q, r.now, &berlin)
        .await
        .unwrap();
    let (_, _, two) = r.run(InsightKind::Trends, json!({"series": [{"event": "a", "math": "dau"}], "date_from": "2026-04-01", "date_to": "2026-04-07"}), &berlin).await;
    assert_eq!(one, two);

    eprintln!(
        "{} definitions, {} statements checked against the truth on ClickHouse {} in {:.1?}",
        r.checks,
        r.dump.len(),
        version[0][0],
        started.elapsed()
    );
    let to_lines = |rows: &[_]| -> String {
        rows.iter()
            .map(|x: &EventRow| serde_json::to_string(x).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let dump = json!({
        "database": DB,
        "ddl": schema::create_all(DB),
        "inserts": [
            {"table": events_table, "rows": to_lines(&event_rows)},
            {"table": overrides_table, "rows": overrides.iter().chain(&mirror_overrides).map(|o| serde_json::to_string(o).unwrap()).collect::<Vec<_>>().join("\n")},
            {"table": events_table, "rows": to_lines(&mirror_rows)},
            {"table": events_table, "rows": to_lines(&group_rows)},
            {"table": persons_table, "rows": person_rows.iter().map(|o| serde_json::to_string(o).unwrap()).collect::<Vec<_>>().join("\n")},
        ],
        "statements": r.dump,
    });
    check_on_current_clickhouse(&dump);
}
