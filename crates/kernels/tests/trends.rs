//! Trends kernel against `flywheel-truth` (total, unique persons, rolling active) and, for what the truth does not
//! cover (per-user and property math, breakdowns, arbitrary bucket boundaries), against a brute-force reference
//! written here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use flywheel_kernels::trends::{quantile, trend, Agg, BreakdownSource, TrendMath, TrendSpec};
use flywheel_kernels::{Block, Buckets, DAY_US};
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;
const MINUTE: i64 = 60_000_000;
const EVENTS: [&str; 3] = ["a", "b", "c"];
/// Every row has this mask bit as well as its event's (an "all events" series).
const ALL: u32 = 3;

/// 2026-01-26, a Monday; the generated rows span 70 days from it (three month boundaries, ten weeks).
fn base() -> i64 {
    truth::days_from_civil(2026, 1, 26) * DAY_US
}

#[derive(Debug, Clone)]
struct Ev {
    person: u32,
    ts: i64,
    event: usize,
    /// Raw breakdown code: reduced modulo `breakdown_values + 1`, so some are out of range.
    code: u32,
    value: f64,
}

/// Rows as the engine lays them out: partitioned by time, each partition sorted by (person, ts, log order).
struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Vec<u32>,
    value: Vec<f64>,
}

fn partition(evs: &[Ev], width: i64, breakdown_values: u32) -> Vec<Columns> {
    common::layout(evs.len(), width, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| {
            let rows = idx.iter().map(|&i| &evs[i]);
            Columns {
                person: rows.clone().map(|e| e.person).collect(),
                ts: rows.clone().map(|e| e.ts).collect(),
                mask: rows.clone().map(|e| 1 << e.event | 1 << ALL).collect(),
                code: rows
                    .clone()
                    .map(|e| e.code % (breakdown_values + 1))
                    .collect(),
                value: rows.map(|e| e.value).collect(),
            }
        })
        .collect()
}

fn blocks(cols: &[Columns]) -> Vec<Block<'_>> {
    cols.iter()
        .map(|c| Block {
            person: &c.person,
            ts: &c.ts,
            mask: &c.mask,
            breakdown: Some(&c.code),
            value: Some(&c.value),
        })
        .collect()
}

fn truth_rows(evs: &[Ev]) -> Vec<truth::Row<'static>> {
    evs.iter()
        .map(|e| truth::Row {
            person: u64::from(e.person),
            ts_us: e.ts,
            event: EVENTS[e.event],
        })
        .collect()
}

fn arb_ts() -> impl Strategy<Value = i64> {
    let fixed: Vec<i64> = [3 * DAY_US + 5 * H, 9 * DAY_US, 33 * DAY_US + 23 * H]
        .iter()
        .map(|t| base() + t)
        .collect();
    prop_oneof![
        4 => (0i64..70 * 24 * 60).prop_map(|m| base() + m * MINUTE),
        // Exactly at midnight: day, week and month boundaries.
        2 => (0i64..70).prop_map(|d| base() + d * DAY_US),
        // Identical timestamps, within and across persons.
        1 => prop::sample::select(fixed),
    ]
}

fn arb_evs() -> impl Strategy<Value = (u32, Vec<Ev>)> {
    (1u32..8).prop_flat_map(|persons| {
        let ev = (
            0..persons,
            arb_ts(),
            0usize..EVENTS.len(),
            0u32..72,
            prop_oneof![1 => Just(f64::NAN), 4 => (-10i32..40).prop_map(|v| f64::from(v) * 0.25)],
        )
            .prop_map(|(person, ts, event, code, value)| Ev {
                person,
                ts,
                event,
                code,
                value,
            });
        (Just(persons), prop::collection::vec(ev, 0..160))
    })
}

fn arb_range() -> impl Strategy<Value = truth::Range> {
    (0i64..60 * 24, 1i64..45 * 24, any::<bool>()).prop_map(|(from_h, len_h, aligned)| {
        let from = if aligned {
            base() + from_h / 24 * DAY_US
        } else {
            base() + from_h * H
        };
        truth::Range {
            from_us: from,
            to_us: from + len_h * H,
        }
    })
}

/// Arbitrary increasing boundaries inside (and around) the data's span.
fn arb_buckets() -> impl Strategy<Value = Buckets> {
    prop::collection::btree_set(-5i64..75 * 24, 2..9).prop_map(|hours| {
        let mut b: Vec<i64> = hours.into_iter().map(|h| base() + h * H).collect();
        let end = b.pop().expect("at least two");
        Buckets { starts: b, end }
    })
}

/// The truth's buckets of a range, as kernel buckets: the first one starts at the range's start, the last one
/// ends at its end (the truth only counts rows inside the range).
fn range_buckets(range: truth::Range, interval: truth::Interval) -> Buckets {
    let mut starts = truth::buckets(range, interval);
    starts[0] = range.from_us;
    Buckets {
        starts,
        end: range.to_us,
    }
}

fn spec(bit: u32, math: TrendMath, buckets: Buckets) -> TrendSpec<'static> {
    TrendSpec {
        bit,
        math,
        buckets,
        breakdown: BreakdownSource::None,
        breakdown_values: 1,
    }
}

fn as_f64(v: Vec<u64>) -> Vec<f64> {
    v.into_iter().map(|x| x as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Total, unique and rolling-active series equal the truth's, whatever the partitioning and thread count.
    #[test]
    fn matches_the_truth(
        (persons, evs) in arb_evs(),
        range in arb_range(),
        interval in common::arb_interval(),
        width in common::arb_width(),
        extra_persons in 0u32..3,
        days in 1i64..40,
    ) {
        let cols = partition(&evs, width, 1);
        let blocks = blocks(&cols);
        let rows = truth_rows(&evs);
        let persons = persons + extra_persons;
        let buckets = range_buckets(range, interval);
        let days_of_range = truth::buckets(range, truth::Interval::Day);
        let rolling_buckets = Buckets {
            end: days_of_range.last().expect("a day") + DAY_US,
            starts: days_of_range,
        };
        for (bit, event) in EVENTS.iter().enumerate() {
            let bit = bit as u32;
            let total = as_f64(truth::total(&rows, event, range, interval));
            let unique = as_f64(truth::unique_persons(&rows, event, range, interval));
            for threads in 1..=3 {
                let run = |math, buckets: &Buckets| {
                    let out = trend(&blocks, persons, threads, &spec(bit, math, buckets.clone()));
                    prop_assert_eq!(out.len(), 1);
                    Ok(out.into_iter().next().expect("one series"))
                };
                prop_assert_eq!(&run(TrendMath::Total, &buckets)?, &total, "total, {} threads", threads);
                prop_assert_eq!(&run(TrendMath::Unique, &buckets)?, &unique, "unique, {} threads", threads);
                for days in [7, 30, days] {
                    let want = as_f64(truth::rolling_active(&rows, event, range, days));
                    let got = run(TrendMath::Rolling { days }, &rolling_buckets)?;
                    prop_assert_eq!(got, want, "rolling {} days, {} threads", days, threads);
                }
            }
        }
    }

    /// Every math, with and without breakdowns, on arbitrary boundaries, against the brute-force reference.
    #[test]
    fn matches_the_reference(
        (persons, evs) in arb_evs(),
        buckets in arb_buckets(),
        width in common::arb_width(),
        bit in 0u32..=ALL,
        breakdown_values in prop::sample::select(vec![1u32, 3, 70]),
        person_codes in prop::collection::vec(0u32..72, 0..8),
        days in -1i64..20,
    ) {
        let cols = partition(&evs, width, breakdown_values);
        let blocks = blocks(&cols);
        let person_codes: Vec<u32> = person_codes.iter().map(|c| c % (breakdown_values + 1)).collect();
        let mut maths = vec![TrendMath::Total, TrendMath::Unique, TrendMath::Rolling { days }];
        for agg in [Agg::Sum, Agg::Avg, Agg::Min, Agg::Max, Agg::Median, Agg::P90, Agg::P95, Agg::P99] {
            maths.push(TrendMath::PerUser(agg));
            maths.push(TrendMath::Property(agg));
        }
        let sources = [
            BreakdownSource::None,
            BreakdownSource::Row,
            BreakdownSource::Person(&person_codes),
        ];
        for math in maths {
            for breakdown in sources {
                let spec = TrendSpec { bit, math, buckets: buckets.clone(), breakdown, breakdown_values };
                let want = reference(&evs, &spec);
                for threads in 1..=3 {
                    let got = trend(&blocks, persons, threads, &spec);
                    prop_assert!(
                        close(&got, &want),
                        "{:?} by {:?}, {} threads: {:?} != {:?}", math, breakdown, threads, got, want
                    );
                }
            }
        }
    }
}

fn close(a: &[Vec<f64>], b: &[Vec<f64>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-9 * x.abs().max(1.0))
        })
}

// -----------------------------------------------------------------------------------------------------------------
// Brute-force reference

fn bucket_of(b: &Buckets, ts: i64) -> Option<usize> {
    (0..b.starts.len()).find(|&i| b.starts[i] <= ts && ts < b.bucket_end(i))
}

/// The row's code under `spec`'s breakdown, if it counts.
fn code_of(e: &Ev, spec: &TrendSpec<'_>) -> Option<u32> {
    let code = match spec.breakdown {
        BreakdownSource::None => return Some(0),
        BreakdownSource::Row => e.code % (spec.breakdown_values + 1),
        BreakdownSource::Person(codes) => *codes.get(e.person as usize)?,
    };
    (code < spec.breakdown_values).then_some(code)
}

fn reference(evs: &[Ev], spec: &TrendSpec<'_>) -> Vec<Vec<f64>> {
    let codes = match spec.breakdown {
        BreakdownSource::None => 1,
        _ => spec.breakdown_values,
    };
    let n = spec.buckets.len();
    let matching: Vec<(&Ev, u32)> = evs
        .iter()
        .filter(|e| e.event as u32 == spec.bit || spec.bit == ALL)
        .filter_map(|e| Some((e, code_of(e, spec)?)))
        .collect();
    let mut out = vec![vec![0.0; n]; codes as usize];
    if let TrendMath::Rolling { days } = spec.math {
        for (i, cell) in (0..n).flat_map(|i| (0..codes).map(move |c| (i, c))) {
            let end = spec.buckets.bucket_end(i);
            let persons: BTreeSet<u32> = matching
                .iter()
                .filter(|(e, c)| *c == cell && e.ts < end && e.ts >= end - days * DAY_US)
                .map(|(e, _)| e.person)
                .collect();
            out[cell as usize][i] = persons.len() as f64;
        }
        return out;
    }
    // (code, bucket) -> person -> their matching rows' values.
    let mut cells: BTreeMap<(u32, usize), BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for (e, c) in matching {
        if let Some(b) = bucket_of(&spec.buckets, e.ts) {
            cells
                .entry((c, b))
                .or_default()
                .entry(e.person)
                .or_default()
                .push(e.value);
        }
    }
    for ((c, b), persons) in cells {
        out[c as usize][b] = match spec.math {
            TrendMath::Total => persons.values().map(Vec::len).sum::<usize>() as f64,
            TrendMath::Unique => persons.len() as f64,
            TrendMath::PerUser(agg) => {
                aggregate(persons.values().map(|v| v.len() as f64).collect(), agg)
            }
            TrendMath::Property(agg) => aggregate(
                persons
                    .values()
                    .flatten()
                    .copied()
                    .filter(|v| !v.is_nan())
                    .collect(),
                agg,
            ),
            TrendMath::Rolling { .. } => unreachable!(),
        };
    }
    out
}

fn aggregate(mut v: Vec<f64>, agg: Agg) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let percentile = |p: usize| {
        // Rank p/100·(n-1), split exactly into its integer part and hundredths.
        let (lo, hundredths) = (p * (n - 1) / 100, p * (n - 1) % 100);
        if hundredths == 0 {
            v[lo]
        } else {
            v[lo] + (v[lo + 1] - v[lo]) * hundredths as f64 / 100.0
        }
    };
    match agg {
        Agg::Sum => v.iter().sum(),
        Agg::Avg => v.iter().sum::<f64>() / n as f64,
        Agg::Min => v[0],
        Agg::Max => v[n - 1],
        Agg::Median => percentile(50),
        Agg::P90 => percentile(90),
        Agg::P95 => percentile(95),
        Agg::P99 => percentile(99),
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Examples

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12 * b.abs().max(1.0)
}

#[test]
fn quantiles_interpolate_between_closest_ranks() {
    assert_eq!(quantile(&[], 50), 0.0);
    for p in [0, 50, 90, 95, 99, 100] {
        assert_eq!(quantile(&[7.5], p), 7.5, "one value is its own p{p}");
    }
    assert_eq!(
        quantile(&[1.0, 2.0], 50),
        1.5,
        "median of two is their mean"
    );
    assert!(approx(quantile(&[1.0, 2.0], 90), 1.9));
    assert!(approx(quantile(&[10.0, 20.0], 99), 19.9));
    assert_eq!(
        quantile(&[1.0, 3.0, 100.0], 50),
        3.0,
        "odd count: the middle"
    );
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 50), 2.5);
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    // numpy.percentile(range(1, 101), q): 50.5, 90.1, 95.05, 99.01.
    assert_eq!(quantile(&hundred, 50), 50.5);
    assert!(approx(quantile(&hundred, 90), 90.1));
    assert!(approx(quantile(&hundred, 95), 95.05));
    assert!(approx(quantile(&hundred, 99), 99.01));
    assert_eq!(quantile(&hundred, 0), 1.0);
    assert_eq!(quantile(&hundred, 100), 100.0);
    // 101 values: the ranks are whole, no interpolation.
    let hundred_one: Vec<f64> = (0..=100).map(f64::from).collect();
    for p in [50, 90, 95, 99] {
        assert_eq!(quantile(&hundred_one, p), f64::from(p));
    }
}

/// `(person, ts, mask, code, value)`.
type RawRow = (u32, i64, u64, u32, f64);

struct Owned {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Vec<u32>,
    value: Vec<f64>,
}

impl Owned {
    /// One block from rows `(person, ts, mask, code, value)`, sorted as the engine sorts them.
    fn new(mut rows: Vec<RawRow>) -> Owned {
        rows.sort_by_key(|r| (r.0, r.1));
        Owned {
            person: rows.iter().map(|r| r.0).collect(),
            ts: rows.iter().map(|r| r.1).collect(),
            mask: rows.iter().map(|r| r.2).collect(),
            code: rows.iter().map(|r| r.3).collect(),
            value: rows.iter().map(|r| r.4).collect(),
        }
    }

    fn block(&self) -> Block<'_> {
        Block {
            person: &self.person,
            ts: &self.ts,
            mask: &self.mask,
            breakdown: Some(&self.code),
            value: Some(&self.value),
        }
    }
}

fn days(n: usize) -> Buckets {
    Buckets {
        starts: (0..n as i64).map(|d| base() + d * DAY_US).collect(),
        end: base() + n as i64 * DAY_US,
    }
}

#[test]
fn per_user_counts_many_rows_per_person() {
    // Day 0: person 0 has 100 rows, person 1 one, person 2 three, person 3 eighty; day 1: person 0 has 70.
    let mut rows: Vec<_> = (0..100).map(|i| (0, base() + i, 1, 0, 1.0)).collect();
    rows.extend((0..70).map(|i| (0, base() + DAY_US + i, 1, 0, 1.0)));
    rows.push((1, base() + H, 1, 0, 1.0));
    rows.extend((0..3).map(|i| (2, base() + 2 * H + i, 1, 0, 1.0)));
    rows.extend((0..80).map(|i| (3, base() + 3 * H + i, 1, 0, 1.0)));
    let data = Owned::new(rows);
    let blocks = [data.block()];
    let per_user = |agg, threads| {
        trend(
            &blocks,
            4,
            threads,
            &spec(0, TrendMath::PerUser(agg), days(3)),
        )
        .remove(0)
    };
    for threads in 1..=3 {
        assert_eq!(per_user(Agg::Sum, threads), vec![184.0, 70.0, 0.0]);
        assert_eq!(per_user(Agg::Avg, threads), vec![46.0, 70.0, 0.0]);
        assert_eq!(per_user(Agg::Min, threads), vec![1.0, 70.0, 0.0]);
        assert_eq!(per_user(Agg::Max, threads), vec![100.0, 70.0, 0.0]);
        // Counts 1, 3, 80, 100.
        assert_eq!(per_user(Agg::Median, threads), vec![41.5, 70.0, 0.0]);
        // Rank 0.9 · 3 = 2.7: 80 + 0.7 · 20.
        assert!(approx(per_user(Agg::P90, threads)[0], 94.0));
    }
}

#[test]
fn breakdown_by_row_counts_a_person_once_per_code_and_bucket() {
    // Person 0 uses codes 0 and 1 on day 0 (code 0 twice), code 1 on day 1; person 1 uses code 1 on day 0 and a
    // code out of range (2) on day 1.
    let rows = vec![
        (0, base() + H, 1, 0, 1.0),
        (0, base() + 2 * H, 1, 1, 2.0),
        (0, base() + 3 * H, 1, 0, 3.0),
        (0, base() + DAY_US, 1, 1, 4.0),
        (1, base() + 5 * H, 1, 1, 5.0),
        (1, base() + DAY_US + H, 1, 2, 6.0),
    ];
    let data = Owned::new(rows);
    let blocks = [data.block()];
    let run = |math| {
        trend(
            &blocks,
            2,
            2,
            &TrendSpec {
                bit: 0,
                math,
                buckets: days(2),
                breakdown: BreakdownSource::Row,
                breakdown_values: 2,
            },
        )
    };
    assert_eq!(run(TrendMath::Total), vec![vec![2.0, 0.0], vec![2.0, 1.0]]);
    assert_eq!(run(TrendMath::Unique), vec![vec![1.0, 0.0], vec![2.0, 1.0]]);
    assert_eq!(
        run(TrendMath::Rolling { days: 2 }),
        vec![vec![1.0, 1.0], vec![2.0, 2.0]]
    );
    assert_eq!(
        run(TrendMath::PerUser(Agg::Max)),
        vec![vec![2.0, 0.0], vec![1.0, 1.0]]
    );
    assert_eq!(
        run(TrendMath::Property(Agg::Sum)),
        vec![vec![4.0, 0.0], vec![7.0, 4.0]]
    );
    assert_eq!(
        run(TrendMath::Property(Agg::Median)),
        vec![vec![2.0, 0.0], vec![3.5, 4.0]]
    );
}

#[test]
fn degenerate_inputs() {
    let data = Owned::new(vec![(0, base(), 1, 0, 1.0), (1, base(), 1, 0, f64::NAN)]);
    let blocks = [data.block()];
    // A bit beyond the mask matches nothing.
    assert_eq!(
        trend(&blocks, 2, 1, &spec(64, TrendMath::Total, days(1))),
        vec![vec![0.0]]
    );
    // No persons, more threads than persons, no blocks, no buckets.
    assert_eq!(
        trend(&blocks, 0, 2, &spec(0, TrendMath::Unique, days(1))),
        vec![vec![0.0]]
    );
    assert_eq!(
        trend(&blocks, 2, 8, &spec(0, TrendMath::Unique, days(1))),
        vec![vec![2.0]]
    );
    assert_eq!(
        trend(&[], 2, 2, &spec(0, TrendMath::Total, days(2))),
        vec![vec![0.0, 0.0]]
    );
    let none = Buckets {
        starts: vec![],
        end: base(),
    };
    assert_eq!(
        trend(&blocks, 2, 2, &spec(0, TrendMath::Total, none)),
        vec![Vec::<f64>::new()]
    );
    // NaN values are skipped, a block without values has none.
    assert_eq!(
        trend(
            &blocks,
            2,
            1,
            &spec(0, TrendMath::Property(Agg::Avg), days(1))
        ),
        vec![vec![1.0]]
    );
    let no_values = [Block {
        value: None,
        ..data.block()
    }];
    assert_eq!(
        trend(
            &no_values,
            2,
            1,
            &spec(0, TrendMath::Property(Agg::Max), days(1))
        ),
        vec![vec![0.0]]
    );
}

/// The lead's scale: 10M rows, 1M persons, 30 daily partitions. Run with
/// `cargo test --release -p flywheel-kernels --test trends -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn ten_million_rows() {
    const PERSONS: u32 = 1_000_000;
    const ROWS: usize = 10_000_000;
    const DAYS: i64 = 30;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut parts: Vec<Vec<RawRow>> = vec![Vec::new(); DAYS as usize];
    for _ in 0..ROWS {
        let r = next();
        let day = (r % DAYS as u64) as i64;
        let ts = base() + day * DAY_US + ((r >> 8) % DAY_US as u64) as i64;
        let person = ((r >> 40) % u64::from(PERSONS)) as u32;
        let mask = 1 << (next() % 4);
        parts[day as usize].push((person, ts, mask, (r % 20) as u32, (r % 1000) as f64));
    }
    let blocks_data: Vec<Owned> = parts.into_iter().map(Owned::new).collect();
    let blocks: Vec<Block<'_>> = blocks_data.iter().map(Owned::block).collect();
    let matching = blocks_data
        .iter()
        .flat_map(|b| &b.mask)
        .filter(|&&m| m & 1 != 0)
        .count();
    let threads = flywheel_kernels::default_threads().min(2);
    let timed = |name: &str, math: TrendMath, breakdown: BreakdownSource<'_>| {
        let spec = TrendSpec {
            bit: 0,
            math,
            buckets: days(DAYS as usize),
            breakdown,
            breakdown_values: 20,
        };
        // The best of five runs: the machine may be shared.
        let mut best = std::time::Duration::MAX;
        let mut out = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            out = trend(&blocks, PERSONS, threads, &spec);
            best = best.min(t.elapsed());
        }
        eprintln!("{name}: {best:?} ({threads} threads)");
        out
    };
    let total = timed("total", TrendMath::Total, BreakdownSource::None);
    assert_eq!(total[0].iter().sum::<f64>(), matching as f64);
    timed("unique", TrendMath::Unique, BreakdownSource::None);
    timed(
        "weekly active",
        TrendMath::Rolling { days: 7 },
        BreakdownSource::None,
    );
    timed(
        "per user avg",
        TrendMath::PerUser(Agg::Avg),
        BreakdownSource::None,
    );
    timed(
        "per user median",
        TrendMath::PerUser(Agg::Median),
        BreakdownSource::None,
    );
    timed(
        "property sum",
        TrendMath::Property(Agg::Sum),
        BreakdownSource::None,
    );
    timed(
        "property p99",
        TrendMath::Property(Agg::P99),
        BreakdownSource::None,
    );
    let by_row = timed("unique by row", TrendMath::Unique, BreakdownSource::Row);
    assert_eq!(by_row.len(), 20);
    timed(
        "weekly active by row",
        TrendMath::Rolling { days: 7 },
        BreakdownSource::Row,
    );
    timed(
        "per user median by row",
        TrendMath::PerUser(Agg::Median),
        BreakdownSource::Row,
    );
}
