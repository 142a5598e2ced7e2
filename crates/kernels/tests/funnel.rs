//! Funnel kernel against `flywheel-truth` (ordered, strict and unordered reach) and, for what the truth does not
//! cover (exclusions, breakdown attribution, time to convert, trend, persons, rows matching several steps),
//! against a brute-force reference written here that enumerates every attempt of every person.

mod common;

use std::ops::Range;
use std::time::Instant;

use flywheel_kernels::funnel::{
    funnel, Attribution, Exclusion, FunnelResult, FunnelSpec, Order, StepStats,
};
use flywheel_kernels::trends::BreakdownSource;
use flywheel_kernels::{Block, Buckets, DAY_US};
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;
/// Generated timestamps fall on a 6-hour grid, give or take a microsecond now and then: ties, rows exactly at the
/// window's edge and entries exactly at the range's edges are common.
const GRID: i64 = 6 * H;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "z"];
const ORDERS: [Order; 3] = [Order::Ordered, Order::Strict, Order::Unordered];

/// 2026-01-05, a Monday.
fn base() -> i64 {
    truth::days_from_civil(2026, 1, 5) * DAY_US
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    person: u32,
    ts: i64,
    mask: u64,
    code: u32,
}

/// Rows as the engine lays them out: partitioned by UTC day, each partition sorted by (person, ts, log order).
struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Vec<u32>,
}

fn partition(evs: &[Ev]) -> Vec<Columns> {
    common::layout(evs.len(), DAY_US, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| Columns {
            person: idx.iter().map(|&i| evs[i].person).collect(),
            ts: idx.iter().map(|&i| evs[i].ts).collect(),
            mask: idx.iter().map(|&i| evs[i].mask).collect(),
            code: idx.iter().map(|&i| evs[i].code).collect(),
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
            value: None,
        })
        .collect()
}

fn spec(steps: &[u32], order: Order, window_us: i64, entry: Range<i64>) -> FunnelSpec<'static> {
    FunnelSpec {
        steps: steps.to_vec(),
        order,
        window_us,
        entry,
        exclusions: Vec::new(),
        breakdown: BreakdownSource::None,
        breakdown_values: 0,
        attribution: Attribution::FirstTouch,
        trend: None,
        collect_persons: false,
    }
}

fn run(evs: &[Ev], persons: u32, threads: usize, spec: &FunnelSpec<'_>) -> FunnelResult {
    let cols = partition(evs);
    funnel(&blocks(&cols), persons, threads, spec)
}

fn reached(r: &FunnelResult) -> Vec<u64> {
    r.by_breakdown[0].iter().map(|s| s.reached).collect()
}

fn grid_ts() -> impl Strategy<Value = i64> {
    (
        0i64..84,
        prop_oneof![6 => Just(0i64), 1 => Just(1), 1 => Just(-1)],
    )
        .prop_map(|(g, jitter)| base() + g * GRID + jitter)
}

fn grid_range() -> impl Strategy<Value = Range<i64>> {
    (0i64..84, 0i64..84)
        .prop_map(|(a, b)| base() + a.min(b) * GRID..base() + a.max(b) * GRID + GRID)
}

fn window() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(GRID),
        Just(2 * GRID),
        Just(4 * GRID),
        Just(3 * DAY_US),
        Just(30 * DAY_US),
    ]
}

// -----------------------------------------------------------------------------------------------------------------
// Against the truth.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Rows named after events ("z" is never a step, so it only matters to strict funnels); masks either give
    /// each step its own bit (a row of an event used twice then matches two steps) or each event its own bit
    /// (steps share it).
    #[test]
    fn reach_matches_the_truth(
        rows in prop::collection::vec((0u32..4, grid_ts(), 0usize..5), 0..60),
        steps in prop::collection::vec(0usize..4, 2..=5),
        bit_per_step in any::<bool>(),
        window_us in window(),
        entry in grid_range(),
        threads in 1usize..=3,
        extra_persons in 0u32..3,
    ) {
        let mask_of = |event: usize| -> u64 {
            if bit_per_step {
                steps.iter().enumerate().filter(|(_, &s)| s == event).fold(0, |m, (i, _)| m | 1 << i)
            } else {
                1 << event
            }
        };
        let bits: Vec<u32> = if bit_per_step {
            (0..steps.len() as u32).collect()
        } else {
            steps.iter().map(|&s| s as u32).collect()
        };
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, ts, event)| Ev { person, ts, mask: mask_of(event), code: 0 })
            .collect();
        let truth_rows: Vec<truth::Row<'_>> = rows
            .iter()
            .map(|&(person, ts_us, event)| truth::Row { person: u64::from(person), ts_us, event: NAMES[event] })
            .collect();
        let names: Vec<&str> = steps.iter().map(|&s| NAMES[s]).collect();
        let range = truth::Range { from_us: entry.start, to_us: entry.end };
        let persons = 4 + extra_persons;
        for (order, truth_order) in ORDERS.into_iter().zip([truth::Order::Ordered, truth::Order::Strict, truth::Order::Unordered]) {
            let got = run(&evs, persons, threads, &spec(&bits, order, window_us, entry.clone()));
            let want = truth::funnel(&truth_rows, &names, window_us, truth_order, range);
            prop_assert_eq!(reached(&got), want, "{:?}", order);
        }
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Against a brute-force reference: every attempt of every person, spelled out.

/// One attempt: its rows (indexes into the person's rows) and whether exclusions leave it valid.
struct RefAttempt {
    path: Vec<usize>,
    valid: bool,
}

/// Can every row of `masks` get its own step?
fn assignable(masks: &[u64], steps: &[u64], used: &mut [bool]) -> bool {
    let Some((&m, rest)) = masks.split_first() else {
        return true;
    };
    for s in 0..steps.len() {
        if !used[s] && m & steps[s] != 0 {
            used[s] = true;
            let ok = assignable(rest, steps, used);
            used[s] = false;
            if ok {
                return true;
            }
        }
    }
    false
}

/// The attempt entering at row `e`, if `e` can be an entry.
fn ref_attempt(rows: &[Ev], e: usize, spec: &FunnelSpec<'_>) -> Option<RefAttempt> {
    let steps: Vec<u64> = spec.steps.iter().map(|&b| 1u64 << b).collect();
    let n = steps.len();
    let t0 = rows[e].ts;
    if !spec.entry.contains(&t0) {
        return None;
    }
    let within = |r: usize| rows[r].ts - t0 <= spec.window_us;
    let (path, open_end) = match spec.order {
        Order::Ordered | Order::Strict => {
            if rows[e].mask & steps[0] == 0 {
                return None;
            }
            let mut path = vec![e];
            for (r, row) in rows.iter().enumerate().skip(e + 1) {
                if path.len() == n || !within(r) {
                    break;
                }
                if row.mask & steps[path.len()] != 0 {
                    path.push(r);
                } else if spec.order == Order::Strict {
                    break;
                }
            }
            let last = *path.last().expect("entry");
            let open_end = if spec.order == Order::Ordered {
                (e..rows.len()).rev().find(|&r| within(r)).unwrap_or(e)
            } else if path.len() < n && last + 1 < rows.len() && within(last + 1) {
                last + 1
            } else {
                last
            };
            (path, open_end)
        }
        Order::Unordered => {
            if rows[e].mask & steps.iter().fold(0, |a, s| a | s) == 0 {
                return None;
            }
            let mut chosen: Vec<usize> = Vec::new();
            for r in e..rows.len() {
                if chosen.len() == n || !within(r) {
                    break;
                }
                let masks: Vec<u64> = chosen.iter().chain([&r]).map(|&i| rows[i].mask).collect();
                if assignable(&masks, &steps, &mut vec![false; n]) {
                    chosen.push(r);
                }
            }
            if chosen.is_empty() {
                return None;
            }
            return Some(RefAttempt {
                path: chosen,
                valid: true,
            });
        }
    };
    let level = path.len();
    let valid = spec.exclusions.iter().all(|x| {
        if x.from_step >= level {
            return true;
        }
        let until = if x.to_step < level {
            path[x.to_step]
        } else {
            open_end + 1
        };
        (path[x.from_step] + 1..until).all(|r| rows[r].mask & (1u64 << x.bit) == 0)
    });
    Some(RefAttempt { path, valid })
}

fn ref_median(mut v: Vec<i64>) -> Option<f64> {
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0),
    }
}

fn reference(evs: &[Ev], persons: u32, spec: &FunnelSpec<'_>) -> FunnelResult {
    let n = spec.steps.len();
    let groups = match spec.breakdown {
        BreakdownSource::None => 1,
        _ => spec.breakdown_values as usize,
    };
    let mut reached = vec![vec![0u64; n]; groups];
    let mut times = vec![vec![Vec::<i64>::new(); n]; groups];
    let mut trend = spec.trend.as_ref().map(|b| vec![(0u64, 0u64); b.len()]);
    let mut persons_out = Vec::new();
    for p in 0..persons {
        let mut idx: Vec<usize> = (0..evs.len()).filter(|&i| evs[i].person == p).collect();
        idx.sort_by_key(|&i| (evs[i].ts, i));
        let rows: Vec<Ev> = idx.iter().map(|&i| evs[i]).collect();
        let attempts: Vec<RefAttempt> = (0..rows.len())
            .filter_map(|e| ref_attempt(&rows, e, spec))
            .filter(|a| a.valid)
            .collect();
        if let (Some(buckets), Some(trend)) = (&spec.trend, &mut trend) {
            for (b, cell) in trend.iter_mut().enumerate() {
                let here: Vec<&RefAttempt> = attempts
                    .iter()
                    .filter(|a| buckets.index(rows[a.path[0]].ts) == Some(b))
                    .collect();
                if !here.is_empty() {
                    cell.0 += 1;
                    cell.1 += u64::from(here.iter().any(|a| a.path.len() == n));
                }
            }
        }
        // The most steps; the earliest entry among equals (attempts are in entry order).
        let Some(best) = attempts.iter().fold(None::<&RefAttempt>, |b, a| match b {
            Some(b) if b.path.len() >= a.path.len() => Some(b),
            _ => Some(a),
        }) else {
            continue;
        };
        let level = best.path.len();
        persons_out.push((p, level as u8));
        let code = match spec.breakdown {
            BreakdownSource::None => Some(0),
            BreakdownSource::Person(codes) => codes.get(p as usize).copied(),
            BreakdownSource::Row => {
                let row = match spec.attribution {
                    Attribution::FirstTouch => best.path[0],
                    Attribution::LastTouch => best.path[level - 1],
                    Attribution::Step(i) if i < level => best.path[i],
                    Attribution::Step(_) => best.path[0],
                };
                Some(rows[row].code)
            }
        };
        let Some(code) = code.map(|c| c as usize).filter(|&c| c < groups) else {
            continue;
        };
        for i in 0..level {
            reached[code][i] += 1;
            if i > 0 {
                times[code][i].push(rows[best.path[i]].ts - rows[best.path[i - 1]].ts);
            }
        }
    }
    let by_breakdown = reached
        .into_iter()
        .zip(times)
        .map(|(r, t)| {
            r.into_iter()
                .zip(t)
                .map(|(reached, t)| StepStats {
                    reached,
                    avg_time_us: (!t.is_empty())
                        .then(|| t.iter().map(|&x| x as f64).sum::<f64>() / t.len() as f64),
                    median_time_us: ref_median(t),
                })
                .collect()
        })
        .collect();
    FunnelResult {
        by_breakdown,
        trend,
        persons: if spec.collect_persons {
            persons_out
        } else {
            Vec::new()
        },
    }
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        (a, b) => a == b,
    }
}

fn assert_same(got: &FunnelResult, want: &FunnelResult) -> Result<(), TestCaseError> {
    prop_assert_eq!(&got.trend, &want.trend);
    prop_assert_eq!(&got.persons, &want.persons);
    prop_assert_eq!(got.by_breakdown.len(), want.by_breakdown.len());
    for (g, w) in got.by_breakdown.iter().zip(&want.by_breakdown) {
        prop_assert_eq!(g.len(), w.len());
        for (g, w) in g.iter().zip(w) {
            prop_assert_eq!(g.reached, w.reached, "{:?} {:?}", got, want);
            prop_assert!(close(g.avg_time_us, w.avg_time_us), "{:?} {:?}", g, w);
            prop_assert!(close(g.median_time_us, w.median_time_us), "{:?} {:?}", g, w);
        }
    }
    Ok(())
}

/// A row mask over 6 bits: often one bit, sometimes none, sometimes several (a row matching several steps, or a
/// step and an exclusion).
fn row_mask() -> impl Strategy<Value = u64> {
    prop_oneof![4 => (0u32..6).prop_map(|b| 1u64 << b), 1 => Just(0u64), 2 => 0u64..64]
}

fn attribution() -> impl Strategy<Value = Attribution> {
    prop_oneof![
        Just(Attribution::FirstTouch),
        Just(Attribution::LastTouch),
        (0usize..4).prop_map(Attribution::Step),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]

    #[test]
    fn everything_matches_the_reference(
        rows in prop::collection::vec((0u32..5, grid_ts(), row_mask(), 0u32..4), 0..50),
        steps in prop::collection::vec(0u32..4, 2..=4),
        exclusions in prop::collection::vec((0u32..6, 0usize..4, 0usize..4), 0..3),
        order in 0usize..3,
        window_us in window(),
        entry in grid_range(),
        attribution in attribution(),
        breakdown in 0usize..3,
        person_codes in prop::collection::vec(0u32..4, 0..6),
        trend in prop::option::of((0i64..8, 1usize..8, 0i64..2)),
        threads in 1usize..=3,
    ) {
        let n = steps.len();
        let evs: Vec<Ev> = rows.iter().map(|&(person, ts, mask, code)| Ev { person, ts, mask, code }).collect();
        let exclusions: Vec<Exclusion> = exclusions
            .into_iter()
            .filter(|&(_, f, t)| f < t && t < n)
            .map(|(bit, from_step, to_step)| Exclusion { bit, from_step, to_step })
            .collect();
        let attribution = match attribution {
            Attribution::Step(i) => Attribution::Step(i % n),
            a => a,
        };
        let trend = trend.map(|(first, count, cut)| {
            let starts: Vec<i64> = (0..count as i64).map(|d| base() + (first + d) * DAY_US).collect();
            // Sometimes the last bucket ends mid-day.
            let end = *starts.last().expect("a bucket") + DAY_US - cut * GRID;
            Buckets { starts, end }
        });
        let spec = FunnelSpec {
            steps,
            order: ORDERS[order],
            window_us,
            entry,
            exclusions,
            // Codes 0..4 with 3 values: code 3 is out of range; persons beyond the table have none.
            breakdown: match breakdown {
                0 => BreakdownSource::None,
                1 => BreakdownSource::Row,
                _ => BreakdownSource::Person(&person_codes),
            },
            breakdown_values: 3,
            attribution,
            trend,
            collect_persons: true,
        };
        let persons = 6;
        let got = run(&evs, persons, threads, &spec);
        let want = reference(&evs, persons, &spec);
        assert_same(&got, &want)?;
        // Without persons the rest is unchanged.
        let quiet = FunnelSpec { collect_persons: false, ..spec.clone() };
        let got = run(&evs, persons, threads, &quiet);
        prop_assert!(got.persons.is_empty());
        assert_same(&got, &FunnelResult { persons: Vec::new(), ..want })?;
    }

    /// Long, dense histories (hundreds of entries, many of them open at a time) on one thread: ordered funnels
    /// then advance all open attempts together, and the per-person scratch is compacted while attempts are open.
    #[test]
    fn long_histories_match_the_reference(
        rows in prop::collection::vec(
            (0u32..2, 0i64..1000, prop_oneof![6 => Just(1u64), 3 => row_mask()], 0u32..4),
            1000..2000,
        ),
        steps in prop::collection::vec(prop_oneof![3 => Just(0u32), 1 => 0u32..3], 2..=3),
        exclusions in prop::collection::vec((0u32..6, 0usize..3, 0usize..3), 0..3),
        order in 0usize..3,
        attribution in attribution(),
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, t, mask, code)| Ev { person, ts: base() + t * 60_000_000, mask, code })
            .collect();
        let spec = long_spec(&steps, exclusions, ORDERS[order], attribution, 300);
        let got = run(&evs, 2, 1, &spec);
        assert_same(&got, &reference(&evs, 2, &spec))?;
    }

    /// Histories of a few dozen rows: some persons take the per-entry path, some the all-attempts path.
    #[test]
    fn medium_histories_match_the_reference(
        rows in prop::collection::vec((0u32..4, 0i64..300, row_mask(), 0u32..4), 100..300),
        steps in prop::collection::vec(0u32..4, 2..=4),
        exclusions in prop::collection::vec((0u32..6, 0usize..4, 0usize..4), 0..3),
        attribution in attribution(),
        threads in 1usize..=3,
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, t, mask, code)| Ev { person, ts: base() + t * 60_000_000, mask, code })
            .collect();
        let spec = long_spec(&steps, exclusions, Order::Ordered, attribution, 60);
        let got = run(&evs, 4, threads, &spec);
        assert_same(&got, &reference(&evs, 4, &spec))?;
    }
}

/// A spec over minute timestamps from `base()`: a window of `window_min` minutes, entries in the first 800,
/// valid random exclusions, row codes, a trend by 100-minute buckets, persons.
fn long_spec(
    steps: &[u32],
    exclusions: Vec<(u32, usize, usize)>,
    order: Order,
    attribution: Attribution,
    window_min: i64,
) -> FunnelSpec<'static> {
    let n = steps.len();
    let minute = 60_000_000;
    FunnelSpec {
        exclusions: exclusions
            .into_iter()
            .filter(|&(_, f, t)| f < t && t < n)
            .map(|(bit, from_step, to_step)| Exclusion {
                bit,
                from_step,
                to_step,
            })
            .collect(),
        breakdown: BreakdownSource::Row,
        breakdown_values: 3,
        attribution: match attribution {
            Attribution::Step(i) => Attribution::Step(i % n),
            a => a,
        },
        trend: Some(Buckets {
            starts: (0..10).map(|i| base() + i * 100 * minute).collect(),
            end: base() + 1000 * minute,
        }),
        collect_persons: true,
        ..spec(
            steps,
            order,
            window_min * minute,
            base()..base() + 800 * minute,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Strict funnels whose steps are mostly the same event, over long runs of it: an attempt then stays open
    /// from row to row, the scratch never empties and is compacted under open attempts.
    #[test]
    fn strict_long_runs_match_the_reference(
        rows in prop::collection::vec((0i64..600, prop_oneof![40 => Just(1u64), 1 => row_mask()]), 300..600),
        steps in prop::collection::vec(prop_oneof![6 => Just(0u32), 1 => 0u32..3], 2..=4),
        exclusion in prop::option::of(0u32..6),
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(t, mask)| Ev { person: 0, ts: base() + t * 60_000_000, mask, code: 0 })
            .collect();
        let n = steps.len();
        let spec = FunnelSpec {
            exclusions: exclusion
                .map(|bit| Exclusion { bit, from_step: n - 2, to_step: n - 1 })
                .into_iter()
                .collect(),
            collect_persons: true,
            ..spec(&steps, Order::Strict, 5 * 60_000_000, base()..base() + 500 * 60_000_000)
        };
        let got = run(&evs, 1, 1, &spec);
        assert_same(&got, &reference(&evs, 1, &spec))?;
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Worked examples of the documented semantics.

fn ev(person: u32, ts: i64, bits: &[u32]) -> Ev {
    Ev {
        person,
        ts,
        mask: bits.iter().fold(0, |m, &b| m | 1 << b),
        code: 0,
    }
}

const A: u32 = 0;
const B: u32 = 1;
const C: u32 = 2;
const X: u32 = 3;
const NOISE: u32 = 4;

fn day(n: i64) -> i64 {
    base() + n * DAY_US
}

/// The truth's own example, through the kernel.
#[test]
fn the_truths_example() {
    let rows = [
        ev(1, day(0), &[A]),
        ev(1, day(0) + H, &[NOISE]),
        ev(1, day(0) + 2 * H, &[B]),
        ev(1, day(1), &[C]),
        ev(2, day(0), &[A]),
        ev(2, day(0) + H, &[C]),
        ev(2, day(0) + 2 * H, &[B]),
        ev(3, day(0), &[A]),
        ev(3, day(3), &[A]),
        ev(3, day(3) + H, &[B]),
        ev(4, day(2), &[A]),
        ev(4, day(2), &[B]),
        ev(4, day(2), &[C]),
        ev(5, day(-1), &[A]),
        ev(5, day(0), &[B]),
    ];
    let f = |order| {
        reached(&run(
            &rows,
            6,
            2,
            &spec(&[A, B, C], order, DAY_US, day(0)..day(5)),
        ))
    };
    assert_eq!(f(Order::Ordered), vec![4, 4, 2]);
    assert_eq!(f(Order::Strict), vec![4, 2, 1]);
    assert_eq!(f(Order::Unordered), vec![5, 4, 3]);
}

fn with_exclusion(order: Order, from_step: usize, to_step: usize) -> FunnelSpec<'static> {
    FunnelSpec {
        exclusions: vec![Exclusion {
            bit: X,
            from_step,
            to_step,
        }],
        collect_persons: true,
        ..spec(&[A, B, C], order, DAY_US, day(0)..day(9))
    }
}

#[test]
fn exclusions_invalidate_attempts() {
    // (hour and step of each row, from_step, to_step, steps reached by the person if they entered)
    type Case = (&'static [(i64, u32)], usize, usize, Option<u8>);
    let cases: [Case; 8] = [
        // X between B and C: the attempt is invalid, the person never entered.
        (&[(0, A), (1, B), (2, X), (3, C)], 1, 2, None),
        // X after C: valid.
        (&[(0, A), (1, B), (2, C), (3, X)], 1, 2, Some(3)),
        // X before B, outside the span 1..2: valid.
        (&[(0, A), (1, X), (2, B), (3, C)], 1, 2, Some(3)),
        // ... but inside the span 0..2.
        (&[(0, A), (1, X), (2, B), (3, C)], 0, 2, None),
        // C never comes: an X while the attempt could still reach it invalidates it.
        (&[(0, A), (1, B), (2, X)], 1, 2, None),
        // X after the window (25 h): the attempt had ended at B.
        (&[(0, A), (1, B), (25, X)], 1, 2, Some(2)),
        // The attempt's greedy B is followed by X; a later B does not rescue it.
        (&[(0, A), (1, B), (2, X), (3, B), (4, C)], 1, 2, None),
        // A later entry converts cleanly.
        (
            &[(0, A), (1, B), (2, X), (3, A), (4, B), (5, C)],
            1,
            2,
            Some(3),
        ),
    ];
    for (i, (rows, from, to, want)) in cases.into_iter().enumerate() {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(h, b)| ev(0, day(0) + h * H, &[b]))
            .collect();
        let got = run(&evs, 1, 1, &with_exclusion(Order::Ordered, from, to));
        assert_eq!(got.persons.first().map(|p| p.1), want, "case {i}: {rows:?}");
    }
    // A step row carrying the exclusion's bit strictly inside the span excludes; at its ends it does not.
    let evs = [
        ev(0, day(0), &[A]),
        ev(0, day(0) + H, &[B, X]),
        ev(0, day(0) + 2 * H, &[C]),
    ];
    assert!(run(&evs, 1, 1, &with_exclusion(Order::Ordered, 0, 2))
        .persons
        .is_empty());
    for (from, to) in [(1, 2), (0, 1)] {
        assert_eq!(
            run(&evs, 1, 1, &with_exclusion(Order::Ordered, from, to)).persons,
            vec![(0, 3)]
        );
    }
}

#[test]
fn strict_exclusions_look_at_the_row_that_ends_the_attempt() {
    // A B X: X stops the strict attempt within the window, before C could come.
    let stopped_by_x = [
        ev(0, day(0), &[A]),
        ev(0, day(0) + H, &[B]),
        ev(0, day(0) + 2 * H, &[X]),
    ];
    assert!(
        run(&stopped_by_x, 1, 1, &with_exclusion(Order::Strict, 1, 2))
            .persons
            .is_empty()
    );
    // A B Y X: Y ended the attempt at B; the later X is not part of it.
    let stopped_by_noise = [
        ev(0, day(0), &[A]),
        ev(0, day(0) + H, &[B]),
        ev(0, day(0) + 2 * H, &[NOISE]),
        ev(0, day(0) + 3 * H, &[X]),
    ];
    assert_eq!(
        run(
            &stopped_by_noise,
            1,
            1,
            &with_exclusion(Order::Strict, 1, 2)
        )
        .persons,
        vec![(0, 2)]
    );
}

#[test]
fn best_attempt_time_and_attribution() {
    let mut rows = vec![
        // Two entries reach C: the earlier one is the best attempt (3 h to B, 1 h to C).
        ev(0, day(0), &[A]),
        ev(0, day(0) + H, &[A]),
        ev(0, day(0) + 3 * H, &[B]),
        ev(0, day(0) + 4 * H, &[C]),
        // Reaches B only, 2 h after A.
        ev(1, day(0), &[A]),
        ev(1, day(0) + 2 * H, &[B]),
    ];
    rows[0].code = 2;
    rows[1].code = 1;
    rows[3].code = 0;
    rows[4].code = 1;
    rows[5].code = 2;
    let mut s = spec(&[A, B, C], Order::Ordered, DAY_US, day(0)..day(1));
    let r = run(&rows, 2, 1, &s);
    let steps = &r.by_breakdown[0];
    assert_eq!(reached(&r), vec![2, 2, 1]);
    assert_eq!(steps[0].avg_time_us, None);
    assert_eq!(steps[1].avg_time_us, Some(2.5 * H as f64));
    assert_eq!(steps[1].median_time_us, Some(2.5 * H as f64));
    assert_eq!(steps[2].median_time_us, Some(H as f64));
    s.breakdown = BreakdownSource::Row;
    s.breakdown_values = 3;
    let by = |attribution| -> Vec<Vec<u64>> {
        let r = run(
            &rows,
            2,
            2,
            &FunnelSpec {
                attribution,
                ..s.clone()
            },
        );
        r.by_breakdown
            .iter()
            .map(|steps| steps.iter().map(|s| s.reached).collect())
            .collect()
    };
    // First touch: person 0's best entry has code 2, person 1's code 1.
    assert_eq!(
        by(Attribution::FirstTouch),
        vec![vec![0, 0, 0], vec![1, 1, 0], vec![1, 1, 1]]
    );
    // Last touch: person 0's C has code 0, person 1's B code 2.
    assert_eq!(
        by(Attribution::LastTouch),
        vec![vec![1, 1, 1], vec![0, 0, 0], vec![1, 1, 0]]
    );
    // Step 2: person 1 never reached it and falls back to the entry's code.
    assert_eq!(
        by(Attribution::Step(2)),
        vec![vec![1, 1, 1], vec![1, 1, 0], vec![0, 0, 0]]
    );
}

#[test]
fn trend_by_bucket_of_entry() {
    let rows = [
        // Day 0: enters and completes within the window (the conversion ends on day 1).
        ev(0, day(0) + 20 * H, &[A]),
        ev(0, day(1) + 2 * H, &[B]),
        ev(0, day(1) + 3 * H, &[C]),
        // Day 1: person 1 enters, never completes; person 0 re-enters on day 1 with that same B and C.
        ev(1, day(1), &[A]),
        ev(0, day(1), &[A]),
    ];
    let s = FunnelSpec {
        trend: Some(Buckets {
            starts: vec![day(0), day(1), day(2)],
            end: day(3),
        }),
        ..spec(&[A, B, C], Order::Ordered, DAY_US, day(0)..day(3))
    };
    assert_eq!(
        run(&rows, 2, 2, &s).trend,
        Some(vec![(1, 1), (2, 1), (0, 0)])
    );
}

#[test]
fn unordered_rows_matching_several_steps_count_once() {
    // Steps 0 and 1 both match a row with bits {0, 1}: one such row reaches one step, two reach both.
    let one = [ev(0, day(0), &[A, B])];
    let s = spec(&[A, B], Order::Unordered, DAY_US, day(0)..day(1));
    assert_eq!(reached(&run(&one, 1, 1, &s)), vec![1, 0]);
    let two = [ev(0, day(0), &[A, B]), ev(0, day(0) + H, &[A, B])];
    assert_eq!(reached(&run(&two, 1, 1, &s)), vec![1, 1]);
    // A {0, 1} row then a {0} row: the first takes step 1 so that the second can take step 0.
    let swap = [ev(0, day(0), &[A, B]), ev(0, day(0) + H, &[A])];
    let r = run(&swap, 1, 1, &s);
    assert_eq!(reached(&r), vec![1, 1]);
    assert_eq!(r.by_breakdown[0][1].avg_time_us, Some(H as f64));
}

#[test]
#[should_panic(expected = "exclusion spans steps")]
fn exclusions_must_span_steps() {
    let s = with_exclusion(Order::Ordered, 2, 1);
    run(&[], 1, 1, &s);
}

#[test]
fn no_rows_no_persons() {
    let s = spec(&[A, B], Order::Ordered, DAY_US, day(0)..day(1));
    let r = run(&[], 0, 2, &s);
    assert_eq!(reached(&r), vec![0, 0]);
    assert_eq!(r.by_breakdown[0][1].median_time_us, None);
}

/// This process's CPU time (all threads) in ms, where `/proc` tells it (Linux; 10 ms resolution).
fn cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

/// The lead's scale: 10M rows, 1M persons, 30 daily partitions. Run with
/// `cargo test --release -p flywheel-kernels --test funnel -- --ignored --nocapture`.
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
    let mut evs = Vec::with_capacity(ROWS);
    for _ in 0..ROWS {
        let r = next();
        let ts = base() + (r % (DAYS * DAY_US) as u64) as i64;
        let person = ((r >> 44) % u64::from(PERSONS)) as u32;
        // Four step events and as many other events.
        let mask = 1u64 << (next() % 8);
        evs.push(Ev {
            person,
            ts,
            mask,
            code: (r % 5) as u32,
        });
    }
    let t = Instant::now();
    let cols = partition(&evs);
    eprintln!("partitioned in {:?}", t.elapsed());
    drop(evs);
    let blocks = blocks(&cols);
    let threads = flywheel_kernels::default_threads().min(2);
    let timed = |name: &str, spec: &FunnelSpec<'_>| {
        // The best of five runs (the machine may be shared), and the CPU time of all five.
        let mut best = std::time::Duration::MAX;
        let mut out = FunnelResult::default();
        let cpu = cpu_ms();
        for _ in 0..5 {
            let t = Instant::now();
            out = funnel(&blocks, PERSONS, threads, spec);
            best = best.min(t.elapsed());
        }
        let cpu = cpu_ms().zip(cpu).map(|(b, a)| (b - a) / 5);
        eprintln!(
            "{name}: {best:?} ({threads} threads; {cpu:?} ms of CPU per run) {:?}",
            reached(&out)
        );
        out
    };
    let four = spec(&[0, 1, 2, 3], Order::Ordered, 7 * DAY_US, day(0)..day(DAYS));
    let ordered = timed("ordered, 4 steps", &four);
    assert!(ordered.by_breakdown[0][3].reached > 0);
    timed(
        "strict, 4 steps",
        &FunnelSpec {
            order: Order::Strict,
            ..four.clone()
        },
    );
    timed(
        "unordered, 4 steps",
        &FunnelSpec {
            order: Order::Unordered,
            ..four.clone()
        },
    );
    timed(
        "ordered, exclusion",
        &FunnelSpec {
            exclusions: vec![Exclusion {
                bit: 4,
                from_step: 1,
                to_step: 3,
            }],
            ..four.clone()
        },
    );
    timed(
        "ordered, row breakdown, trend, persons",
        &FunnelSpec {
            breakdown: BreakdownSource::Row,
            breakdown_values: 5,
            attribution: Attribution::LastTouch,
            trend: Some(Buckets {
                starts: (0..DAYS).map(day).collect(),
                end: day(DAYS),
            }),
            collect_persons: true,
            ..four.clone()
        },
    );
}
