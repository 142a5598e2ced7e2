//! Lifecycle kernel against `flywheel-truth` (calendar buckets) and, for arbitrary boundaries (project time zones,
//! rows before the previous bucket), against a brute-force reference written here.

mod common;

use std::collections::BTreeMap;

use flywheel_kernels::lifecycle::{lifecycle, Lifecycle};
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
}

/// Rows as the engine lays them out: partitioned by time, each partition sorted by (person, ts, log order).
struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
}

fn partition(evs: &[Ev], width: i64) -> Vec<Columns> {
    common::layout(evs.len(), width, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| {
            let rows = idx.iter().map(|&i| &evs[i]);
            Columns {
                person: rows.clone().map(|e| e.person).collect(),
                ts: rows.clone().map(|e| e.ts).collect(),
                mask: rows.map(|e| 1 << e.event).collect(),
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
            breakdown: None,
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
        let ev = (0..persons, arb_ts(), 0usize..EVENTS.len()).prop_map(|(person, ts, event)| Ev {
            person,
            ts,
            event,
        });
        (Just(persons), prop::collection::vec(ev, 0..160))
    })
}

fn arb_range() -> impl Strategy<Value = truth::Range> {
    (0i64..60 * 24, 1i64..45 * 24).prop_map(|(from_h, len_h)| truth::Range {
        from_us: base() + from_h * H,
        to_us: base() + (from_h + len_h) * H,
    })
}

/// Arbitrary boundaries, and a previous-bucket start anywhere from well before the first bucket to after it.
fn arb_buckets() -> impl Strategy<Value = (Buckets, i64)> {
    (
        prop::collection::btree_set(-5i64..75 * 24, 2..9),
        -3 * 24i64..24,
    )
        .prop_map(|(hours, previous)| {
            let mut b: Vec<i64> = hours.into_iter().map(|h| base() + h * H).collect();
            let end = b.pop().expect("at least two");
            let previous_start = b[0] + previous * H;
            (Buckets { starts: b, end }, previous_start)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over a range's calendar buckets (whole buckets: lifecycle looks at all of a person's history), the truth's
    /// counts, whatever the partitioning and thread count.
    #[test]
    fn matches_the_truth(
        (persons, evs) in arb_evs(),
        range in arb_range(),
        interval in common::arb_interval(),
        width in common::arb_width(),
    ) {
        let cols = partition(&evs, width);
        let blocks = blocks(&cols);
        let rows: Vec<truth::Row<'_>> = evs
            .iter()
            .map(|e| truth::Row { person: u64::from(e.person), ts_us: e.ts, event: EVENTS[e.event] })
            .collect();
        let starts = truth::buckets(range, interval);
        let last = *starts.last().expect("a bucket");
        let previous_start = truth::bucket_start(starts[0] - 1, interval);
        let buckets = Buckets { starts, end: truth::next_bucket(last, interval) };
        for (bit, event) in EVENTS.iter().enumerate() {
            let t = truth::lifecycle(&rows, event, range, interval);
            let want = Lifecycle { new: t.new, returning: t.returning, resurrecting: t.resurrecting, dormant: t.dormant };
            for threads in 1..=3 {
                let got = lifecycle(&blocks, persons, threads, bit as u32, &buckets, previous_start);
                prop_assert_eq!(&got, &want, "{} threads", threads);
            }
        }
    }

    /// Arbitrary boundaries (rows before the previous bucket, after the end, a previous start after the first
    /// bucket's) against the brute-force reference.
    #[test]
    fn matches_the_reference(
        (persons, evs) in arb_evs(),
        (buckets, previous_start) in arb_buckets(),
        width in common::arb_width(),
        bit in 0u32..3,
    ) {
        let cols = partition(&evs, width);
        let blocks = blocks(&cols);
        let want = reference(&evs, bit, &buckets, previous_start);
        for threads in 1..=3 {
            let got = lifecycle(&blocks, persons, threads, bit, &buckets, previous_start);
            prop_assert_eq!(&got, &want, "{} threads", threads);
        }
    }
}

/// The module's definitions, literally: per person and bucket, look at all their matching timestamps.
fn reference(evs: &[Ev], bit: u32, buckets: &Buckets, previous_start: i64) -> Lifecycle {
    let n = buckets.len();
    let mut out = Lifecycle {
        new: vec![0; n],
        returning: vec![0; n],
        resurrecting: vec![0; n],
        dormant: vec![0; n],
    };
    let mut by_person: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.event as u32 == bit) {
        by_person.entry(e.person).or_default().push(e.ts);
    }
    for ts in by_person.values() {
        let any_in = |from: i64, to: i64| ts.iter().any(|&t| from <= t && t < to);
        for i in 0..n {
            let start = buckets.starts[i];
            let now = any_in(start, buckets.bucket_end(i));
            let before = if i == 0 {
                any_in(previous_start.min(start), start)
            } else {
                any_in(buckets.starts[i - 1], start)
            };
            let earlier = any_in(i64::MIN, start);
            match (now, before, earlier) {
                (true, _, false) => out.new[i] += 1,
                (true, true, _) => out.returning[i] += 1,
                (true, false, true) => out.resurrecting[i] += 1,
                (false, true, _) => out.dormant[i] += 1,
                (false, false, _) => {}
            }
        }
    }
    out
}

#[test]
fn earlier_activity_outside_the_buckets() {
    // Buckets from noon (a project time zone): [day 1 12:00, day 2 12:00), [day 2 12:00, day 3 12:00); the
    // previous bucket is [day 0 12:00, day 1 12:00).
    let noon = |d: i64| base() + d * DAY_US + 12 * H;
    let rows = [
        // 0: active long before the previous bucket, then in bucket 1: resurrecting there.
        (0, base(), 1),
        (0, noon(2) + H, 1),
        // 1: in the previous bucket and bucket 0: returning, then dormant in bucket 1.
        (1, noon(0), 1),
        (1, noon(1), 1),
        // 2: first ever in bucket 0 (twice), again in bucket 1; a row after the end changes nothing.
        (2, noon(1) + H, 1),
        (2, noon(1) + 2 * H, 1),
        (2, noon(2), 1),
        (2, noon(3), 1),
        // 3: only in the previous bucket: dormant in bucket 0; another event (bit 1) in bucket 1 is not counted.
        (3, noon(1) - 1, 1),
        (3, noon(2), 2),
        // 4: only after the end.
        (4, noon(4), 1),
    ];
    let person: Vec<u32> = rows.iter().map(|r| r.0).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let mask: Vec<u64> = rows.iter().map(|r| r.2).collect();
    let block = Block {
        person: &person,
        ts: &ts,
        mask: &mask,
        breakdown: None,
        value: None,
    };
    let buckets = Buckets {
        starts: vec![noon(1), noon(2)],
        end: noon(3),
    };
    for threads in 1..=3 {
        let got = lifecycle(&[block], 5, threads, 0, &buckets, noon(0));
        assert_eq!(
            got,
            Lifecycle {
                new: vec![1, 0],
                returning: vec![1, 1],
                resurrecting: vec![0, 1],
                dormant: vec![1, 1],
            }
        );
    }
    // With no previous bucket (its start at the first bucket's), person 1 resurrects and person 3 is not dormant.
    let got = lifecycle(&[block], 5, 2, 0, &buckets, noon(1));
    assert_eq!(
        got,
        Lifecycle {
            new: vec![1, 0],
            returning: vec![0, 1],
            resurrecting: vec![1, 1],
            dormant: vec![0, 1],
        }
    );
    // No buckets.
    let none = Buckets {
        starts: vec![],
        end: noon(3),
    };
    assert_eq!(
        lifecycle(&[block], 5, 2, 0, &none, noon(0)),
        Lifecycle::default()
    );
}

/// The lead's scale: 10M rows, 1M persons, 60 daily partitions, lifecycle over the last 30 days. Run with
/// `cargo test --release -p flywheel-kernels --test lifecycle -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn ten_million_rows() {
    const PERSONS: u32 = 1_000_000;
    const DAYS: i64 = 60;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut parts: Vec<Vec<(u32, i64, u64)>> = vec![Vec::new(); DAYS as usize];
    for _ in 0..10_000_000 {
        let r = next();
        let day = (r % DAYS as u64) as i64;
        let ts = base() + day * DAY_US + ((r >> 8) % DAY_US as u64) as i64;
        parts[day as usize].push(((r >> 40) as u32 % PERSONS, ts, 1 << (next() % 4)));
    }
    let cols: Vec<Columns> = parts
        .into_iter()
        .map(|mut p| {
            p.sort_unstable();
            Columns {
                person: p.iter().map(|r| r.0).collect(),
                ts: p.iter().map(|r| r.1).collect(),
                mask: p.iter().map(|r| r.2).collect(),
            }
        })
        .collect();
    let blocks = blocks(&cols);
    let first = base() + (DAYS - 30) * DAY_US;
    let buckets = Buckets {
        starts: (0..30).map(|d| first + d * DAY_US).collect(),
        end: first + 30 * DAY_US,
    };
    let threads = flywheel_kernels::default_threads().min(2);
    let mut best = std::time::Duration::MAX;
    let mut out = Lifecycle::default();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        out = lifecycle(&blocks, PERSONS, threads, 0, &buckets, first - DAY_US);
        best = best.min(t.elapsed());
    }
    eprintln!("lifecycle: {best:?} ({threads} threads)");
    // Every person active on a day is exactly one of new, returning or resurrecting.
    let mut active_day_0 = std::collections::BTreeSet::new();
    for c in &cols {
        for i in 0..c.person.len() {
            if c.mask[i] & 1 != 0 && buckets.index(c.ts[i]) == Some(0) {
                active_day_0.insert(c.person[i]);
            }
        }
    }
    assert_eq!(
        out.new[0] + out.returning[0] + out.resurrecting[0],
        active_day_0.len() as u64
    );
}
