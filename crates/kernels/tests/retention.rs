//! Retention kernel against `flywheel-truth`: first-time and recurring cohorts, `on` and `on or after`, day, week
//! and month periods, person breakdowns (the truth run on each code's persons), up to 120 periods.

mod common;

use std::time::Instant;

use flywheel_kernels::retention::{retention, Cohorting, RetentionSpec};
use flywheel_kernels::trends::BreakdownSource;
use flywheel_kernels::{Block, Buckets, DAY_US};
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;
const NAMES: [&str; 3] = ["a", "b", "c"];
/// Every row also has this bit (never the start or return bit).
const NOISE: u32 = 5;

/// 2026-01-05, a Monday.
fn base() -> i64 {
    truth::days_from_civil(2026, 1, 5) * DAY_US
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    person: u32,
    ts: i64,
    event: usize,
}

struct Columns {
    person: Vec<u32>,
    ts: Vec<i64>,
    mask: Vec<u64>,
}

/// Rows as the engine lays them out: partitioned by UTC day, each partition sorted by (person, ts, log order);
/// bit 0 marks start rows, bit 1 return rows.
fn partition(evs: &[Ev], start: usize, ret: usize) -> Vec<Columns> {
    common::layout(evs.len(), DAY_US, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .map(|idx| Columns {
            person: idx.iter().map(|&i| evs[i].person).collect(),
            ts: idx.iter().map(|&i| evs[i].ts).collect(),
            mask: idx
                .iter()
                .map(|&i| {
                    let e = evs[i].event;
                    u64::from(e == start) | u64::from(e == ret) << 1 | 1 << NOISE
                })
                .collect(),
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

fn truth_rows(evs: &[Ev]) -> Vec<truth::Row<'static>> {
    evs.iter()
        .map(|e| truth::Row {
            person: u64::from(e.person),
            ts_us: e.ts,
            event: NAMES[e.event],
        })
        .collect()
}

/// The truth's periods as buckets.
fn periods(from_us: i64, interval: truth::Interval, count: usize) -> Buckets {
    let mut starts = vec![truth::bucket_start(from_us, interval)];
    while starts.len() < count {
        starts.push(truth::next_bucket(
            *starts.last().expect("a period"),
            interval,
        ));
    }
    let end = truth::next_bucket(*starts.last().expect("a period"), interval);
    Buckets { starts, end }
}

#[allow(clippy::too_many_arguments)]
fn check(
    evs: &[Ev],
    start: usize,
    ret: usize,
    first_time: bool,
    on_or_after: bool,
    interval: truth::Interval,
    from_us: i64,
    count: usize,
    person_codes: &[u32],
    threads: usize,
) -> Result<(), TestCaseError> {
    let cols = partition(evs, start, ret);
    let blocks = blocks(&cols);
    let cohorting = if first_time {
        Cohorting::FirstTime
    } else {
        Cohorting::Recurring
    };
    let q = truth::Retention {
        start_event: NAMES[start],
        return_event: NAMES[ret],
        cohorting: if first_time {
            truth::Cohorting::FirstTime
        } else {
            truth::Cohorting::Recurring
        },
        interval,
        from_us,
        periods: count,
        on_or_after,
    };
    let persons = 7;
    let mut spec = RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting,
        periods: periods(from_us, interval, count),
        on_or_after,
        breakdown: BreakdownSource::None,
        breakdown_values: 0,
    };
    let got = retention(&blocks, persons, threads, &spec);
    prop_assert_eq!(got, vec![truth::retention(&truth_rows(evs), q)]);
    // By person code: 3 codes; code 3 and persons beyond the table count nowhere.
    spec.breakdown = BreakdownSource::Person(person_codes);
    spec.breakdown_values = 3;
    let got = retention(&blocks, persons, threads, &spec);
    prop_assert_eq!(got.len(), 3);
    for (code, table) in got.iter().enumerate() {
        let mine: Vec<Ev> = evs
            .iter()
            .copied()
            .filter(|e| person_codes.get(e.person as usize) == Some(&(code as u32)))
            .collect();
        prop_assert_eq!(
            table,
            &truth::retention(&truth_rows(&mine), q),
            "code {}",
            code
        );
    }
    Ok(())
}

fn interval() -> impl Strategy<Value = truth::Interval> {
    prop_oneof![
        Just(truth::Interval::Day),
        Just(truth::Interval::Week),
        Just(truth::Interval::Month),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Rows over 100 days on a 6-hour grid; the periods start up to 60 days in, so first-time cohorts often
    /// began before them.
    #[test]
    fn matches_the_truth(
        rows in prop::collection::vec((0u32..6, 0i64..400, 0usize..3), 0..80),
        start in 0usize..3,
        ret in 0usize..3,
        first_time in any::<bool>(),
        on_or_after in any::<bool>(),
        interval in interval(),
        from_hours in 0i64..1440,
        count in 1usize..8,
        person_codes in prop::collection::vec(0u32..4, 0..7),
        threads in 1usize..=3,
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, g, event)| Ev { person, ts: base() + g * 6 * H, event })
            .collect();
        check(
            &evs, start, ret, first_time, on_or_after, interval,
            base() + from_hours * H, count, &person_codes, threads,
        )?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Up to 120 daily periods: the period sets' upper bits.
    #[test]
    fn many_periods_match_the_truth(
        rows in prop::collection::vec((0u32..6, 0i64..130, 0usize..3), 0..150),
        start in 0usize..3,
        ret in 0usize..3,
        first_time in any::<bool>(),
        on_or_after in any::<bool>(),
        count in 60usize..=120,
        person_codes in prop::collection::vec(0u32..4, 0..7),
        threads in 1usize..=3,
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, d, event)| Ev { person, ts: base() + d * DAY_US + 5 * H, event })
            .collect();
        check(
            &evs, start, ret, first_time, on_or_after, truth::Interval::Day,
            base() + 2 * DAY_US, count, &person_codes, threads,
        )?;
    }
}

#[test]
fn the_truths_example() {
    let evs = [
        Ev {
            person: 1,
            ts: base(),
            event: 0,
        },
        Ev {
            person: 1,
            ts: base() + DAY_US,
            event: 1,
        },
        Ev {
            person: 1,
            ts: base() + 3 * DAY_US,
            event: 1,
        },
        Ev {
            person: 2,
            ts: base() + DAY_US,
            event: 0,
        },
        Ev {
            person: 2,
            ts: base() + 3 * DAY_US,
            event: 1,
        },
        Ev {
            person: 3,
            ts: base() - 5 * DAY_US,
            event: 0,
        },
        Ev {
            person: 3,
            ts: base() + 2 * DAY_US,
            event: 0,
        },
        Ev {
            person: 3,
            ts: base() + 2 * DAY_US,
            event: 1,
        },
    ];
    let cols = partition(&evs, 0, 1);
    let mut spec = RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting: Cohorting::FirstTime,
        periods: periods(base(), truth::Interval::Day, 4),
        on_or_after: false,
        breakdown: BreakdownSource::None,
        breakdown_values: 0,
    };
    let t = retention(&blocks(&cols), 4, 2, &spec);
    assert_eq!(
        t[0],
        vec![
            vec![1, 1, 0, 1],
            vec![1, 0, 1, 0],
            vec![0, 0, 0, 0],
            vec![0, 0, 0, 0]
        ]
    );
    spec.cohorting = Cohorting::Recurring;
    assert_eq!(
        retention(&blocks(&cols), 4, 2, &spec)[0][2],
        vec![1, 0, 0, 0]
    );
    spec.cohorting = Cohorting::FirstTime;
    spec.on_or_after = true;
    assert_eq!(
        retention(&blocks(&cols), 4, 2, &spec)[0][0],
        vec![1, 1, 1, 1]
    );
}

#[test]
fn no_periods_no_cells() {
    let spec = RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting: Cohorting::Recurring,
        periods: Buckets {
            starts: Vec::new(),
            end: base(),
        },
        on_or_after: false,
        breakdown: BreakdownSource::None,
        breakdown_values: 0,
    };
    assert_eq!(retention(&[], 3, 2, &spec), vec![Vec::<Vec<u64>>::new()]);
}

#[test]
#[should_panic(expected = "row) breakdowns")]
fn row_breakdowns_are_refused() {
    let spec = RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting: Cohorting::Recurring,
        periods: periods(base(), truth::Interval::Day, 3),
        on_or_after: false,
        breakdown: BreakdownSource::Row,
        breakdown_values: 2,
    };
    retention(&[], 3, 1, &spec);
}

/// 10M rows, 1M persons, 30 daily partitions, weekly retention over 5 weeks. Run with
/// `cargo test --release -p flywheel-kernels --test retention -- --ignored --nocapture`.
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
    let evs: Vec<Ev> = (0..ROWS)
        .map(|_| {
            let r = next();
            Ev {
                person: ((r >> 44) % u64::from(PERSONS)) as u32,
                ts: base() + (r % (DAYS * DAY_US) as u64) as i64,
                event: (next() % 3) as usize,
            }
        })
        .collect();
    let cols = partition(&evs, 0, 1);
    drop(evs);
    let blocks = blocks(&cols);
    let threads = flywheel_kernels::default_threads().min(2);
    for cohorting in [Cohorting::FirstTime, Cohorting::Recurring] {
        let spec = RetentionSpec {
            start_bit: 0,
            return_bit: 1,
            cohorting,
            periods: periods(base(), truth::Interval::Week, 5),
            on_or_after: false,
            breakdown: BreakdownSource::None,
            breakdown_values: 0,
        };
        let mut best = std::time::Duration::MAX;
        let mut out = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            out = retention(&blocks, PERSONS, threads, &spec);
            best = best.min(t.elapsed());
        }
        eprintln!(
            "{cohorting:?}: {best:?} ({threads} threads) {:?}",
            out[0][0]
        );
    }
}
