//! Stickiness kernel against `flywheel-truth` and, for breakdowns and arbitrary bucket boundaries, against a
//! brute-force reference written here.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use flywheel_kernels::stickiness::stickiness;
use flywheel_kernels::trends::BreakdownSource;
use flywheel_kernels::{Block, Buckets, DAY_US};
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;
const MINUTE: i64 = 60_000_000;
const EVENTS: [&str; 3] = ["a", "b", "c"];

/// 2026-01-26, a Monday; the generated rows span 70 days from it.
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
}

/// Rows as the engine lays them out: partitioned by time, each partition sorted by (person, ts, log order).
struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
    code: Vec<u32>,
}

fn partition(evs: &[Ev], width: i64, breakdown_values: u32) -> Vec<Columns> {
    common::layout(evs.len(), width, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| {
            let rows = idx.iter().map(|&i| &evs[i]);
            Columns {
                person: rows.clone().map(|e| e.person).collect(),
                ts: rows.clone().map(|e| e.ts).collect(),
                mask: rows.clone().map(|e| 1 << e.event).collect(),
                code: rows.map(|e| e.code % (breakdown_values + 1)).collect(),
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
            value: None,
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
        2 => (0i64..70).prop_map(|d| base() + d * DAY_US),
        1 => prop::sample::select(fixed),
    ]
}

fn arb_evs() -> impl Strategy<Value = (u32, Vec<Ev>)> {
    (1u32..8).prop_flat_map(|persons| {
        let ev = (0..persons, arb_ts(), 0usize..EVENTS.len(), 0u32..72).prop_map(
            |(person, ts, event, code)| Ev {
                person,
                ts,
                event,
                code,
            },
        );
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

fn arb_buckets() -> impl Strategy<Value = Buckets> {
    prop::collection::btree_set(-5i64..75 * 24, 2..9).prop_map(|hours| {
        let mut b: Vec<i64> = hours.into_iter().map(|h| base() + h * H).collect();
        let end = b.pop().expect("at least two");
        Buckets { starts: b, end }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Without a breakdown, over a range's calendar buckets: the truth's histogram, whatever the partitioning and
    /// thread count.
    #[test]
    fn matches_the_truth(
        (persons, evs) in arb_evs(),
        range in arb_range(),
        interval in common::arb_interval(),
        width in common::arb_width(),
    ) {
        let cols = partition(&evs, width, 1);
        let blocks = blocks(&cols);
        let rows: Vec<truth::Row<'_>> = evs
            .iter()
            .map(|e| truth::Row { person: u64::from(e.person), ts_us: e.ts, event: EVENTS[e.event] })
            .collect();
        // The truth counts the rows inside the range: the first bucket starts at its start, the last ends at its end.
        let mut starts = truth::buckets(range, interval);
        starts[0] = range.from_us;
        let buckets = Buckets { starts, end: range.to_us };
        for (bit, event) in EVENTS.iter().enumerate() {
            let want = truth::stickiness(&rows, event, range, interval);
            for threads in 1..=3 {
                let got = stickiness(&blocks, persons, threads, bit as u32, &buckets, BreakdownSource::None, 1);
                prop_assert_eq!(&got, &vec![want.clone()], "{} threads", threads);
            }
        }
    }

    /// With and without breakdowns, on arbitrary boundaries, against the brute-force reference.
    #[test]
    fn matches_the_reference(
        (persons, evs) in arb_evs(),
        buckets in arb_buckets(),
        width in common::arb_width(),
        bit in 0u32..3,
        breakdown_values in prop::sample::select(vec![1u32, 3, 70]),
        person_codes in prop::collection::vec(0u32..72, 0..8),
    ) {
        let cols = partition(&evs, width, breakdown_values);
        let blocks = blocks(&cols);
        let person_codes: Vec<u32> = person_codes.iter().map(|c| c % (breakdown_values + 1)).collect();
        for breakdown in [BreakdownSource::None, BreakdownSource::Row, BreakdownSource::Person(&person_codes)] {
            let want = reference(&evs, bit, &buckets, breakdown, breakdown_values);
            for threads in 1..=3 {
                let got = stickiness(&blocks, persons, threads, bit, &buckets, breakdown, breakdown_values);
                prop_assert_eq!(&got, &want, "by {:?}, {} threads", breakdown, threads);
            }
        }
    }
}

/// Per (code, person) the set of buckets with a matching row of that code; `out[code][set size - 1]` counts them.
fn reference(
    evs: &[Ev],
    bit: u32,
    buckets: &Buckets,
    breakdown: BreakdownSource<'_>,
    breakdown_values: u32,
) -> Vec<Vec<u64>> {
    let codes = match breakdown {
        BreakdownSource::None => 1,
        _ => breakdown_values,
    };
    let mut active: BTreeMap<(u32, u32), BTreeSet<usize>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.event as u32 == bit) {
        let code = match breakdown {
            BreakdownSource::None => 0,
            BreakdownSource::Row => e.code % (breakdown_values + 1),
            BreakdownSource::Person(codes) => match codes.get(e.person as usize) {
                Some(&c) => c,
                None => continue,
            },
        };
        if code >= codes {
            continue;
        }
        let bucket =
            (0..buckets.len()).find(|&i| buckets.starts[i] <= e.ts && e.ts < buckets.bucket_end(i));
        if let Some(b) = bucket {
            active.entry((code, e.person)).or_default().insert(b);
        }
    }
    let mut out = vec![vec![0; buckets.len()]; codes as usize];
    for ((code, _), set) in active {
        out[code as usize][set.len() - 1] += 1;
    }
    out
}

#[test]
fn row_codes_count_a_person_once_per_code() {
    // Person 0: code 0 on day 0, codes 0 and 1 on day 1; person 1: code 1 on days 0, 1 and 2 (twice on day 2),
    // then code 0 outside the buckets.
    let rows = [
        (0, base() + H, 0),
        (0, base() + DAY_US, 1),
        (0, base() + DAY_US + H, 0),
        (1, base(), 1),
        (1, base() + DAY_US + 2 * H, 1),
        (1, base() + 2 * DAY_US, 1),
        (1, base() + 3 * DAY_US - 1, 1),
        (1, base() + 3 * DAY_US, 0),
    ];
    let person: Vec<u32> = rows.iter().map(|r| r.0).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let code: Vec<u32> = rows.iter().map(|r| r.2).collect();
    let mask = vec![1u64; rows.len()];
    let block = Block {
        person: &person,
        ts: &ts,
        mask: &mask,
        breakdown: Some(&code),
        value: None,
    };
    let buckets = Buckets {
        starts: vec![base(), base() + DAY_US, base() + 2 * DAY_US],
        end: base() + 3 * DAY_US,
    };
    for threads in [1, 2] {
        let run =
            |breakdown, values| stickiness(&[block], 2, threads, 0, &buckets, breakdown, values);
        assert_eq!(
            run(BreakdownSource::Row, 2),
            vec![vec![0, 1, 0], vec![1, 0, 1]]
        );
        assert_eq!(run(BreakdownSource::None, 7), vec![vec![0, 1, 1]]);
        assert_eq!(
            run(BreakdownSource::Person(&[1, 0]), 2),
            vec![vec![0, 0, 1], vec![0, 1, 0]]
        );
        // Mask bit 1: nobody.
        assert_eq!(
            stickiness(&[block], 2, threads, 1, &buckets, BreakdownSource::None, 1),
            vec![vec![0, 0, 0]]
        );
    }
}
