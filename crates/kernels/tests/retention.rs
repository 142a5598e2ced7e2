//! Retention kernel against `flywheel-truth`: first-time and recurring cohorts, `on` and `on or after`, day, week
//! and month periods, person breakdowns (the truth run on each code's persons), event-property (row) breakdowns
//! (against `truth::retention_by_row`), up to 120 periods.

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
    /// Row breakdown codes, when the block has them.
    code: Option<Vec<u32>>,
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
            code: None,
        })
        .collect()
}

fn blocks(cols: &[Columns]) -> Vec<Block<'_>> {
    cols.iter()
        .map(|c| Block {
            person: &c.person,
            ts: &c.ts,
            mask: &c.mask,
            breakdown: c.code.as_deref(),
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

/// Rows laid out in partitions `width` µs wide with row breakdown codes; the blocks whose index has its bit set in
/// `no_codes` (modulo 8) carry no codes. Also returns each row's code as the kernel sees it (`u32::MAX` in a block
/// without codes), by input position, for the truth.
fn partition_with_codes(
    evs: &[Ev],
    codes: &[u32],
    width: i64,
    no_codes: u8,
) -> (Vec<Columns>, Vec<u32>) {
    let mut labels = vec![u32::MAX; evs.len()];
    let parts = common::layout(evs.len(), width, |i| (evs[i].person, evs[i].ts))
        .into_iter()
        .enumerate()
        .map(|(b, idx)| {
            let cols = Columns {
                person: idx.iter().map(|&i| evs[i].person).collect(),
                ts: idx.iter().map(|&i| evs[i].ts).collect(),
                mask: idx
                    .iter()
                    .map(|&i| {
                        u64::from(evs[i].event == 0)
                            | u64::from(evs[i].event == 1) << 1
                            | 1 << NOISE
                    })
                    .collect(),
                code: None,
            };
            if no_codes >> (b % 8) & 1 == 0 {
                for &i in &idx {
                    labels[i] = codes[i];
                }
                Columns {
                    code: Some(idx.iter().map(|&i| codes[i]).collect()),
                    ..cols
                }
            } else {
                cols
            }
        })
        .collect();
    (parts, labels)
}

/// Row breakdown with 3 codes (codes 3 and 4 count nowhere) against `truth::retention_by_row`, for both
/// cohortings, `on` and `on or after`, on 1 to 3 threads. Start rows are event 0, return rows event 1.
#[allow(clippy::too_many_arguments)]
fn check_by_row(
    evs: &[Ev],
    codes: &[u32],
    width: i64,
    no_codes: u8,
    interval: truth::Interval,
    from_us: i64,
    count: usize,
) -> Result<(), TestCaseError> {
    let (parts, labels) = partition_with_codes(evs, codes, width, no_codes);
    let blocks = blocks(&parts);
    let rows = truth_rows(evs);
    for first_time in [false, true] {
        for on_or_after in [false, true] {
            let q = truth::Retention {
                start_event: NAMES[0],
                return_event: NAMES[1],
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
            let want = truth::retention_by_row(&rows, &labels, 3, q);
            let spec = RetentionSpec {
                start_bit: 0,
                return_bit: 1,
                cohorting: if first_time {
                    Cohorting::FirstTime
                } else {
                    Cohorting::Recurring
                },
                periods: periods(from_us, interval, count),
                on_or_after,
                breakdown: BreakdownSource::Row,
                breakdown_values: 3,
            };
            for threads in 1..=3 {
                let got = retention(&blocks, 7, threads, &spec);
                prop_assert_eq!(
                    &got,
                    &want,
                    "first time {}, on or after {}, {} threads",
                    first_time,
                    on_or_after,
                    threads
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Row breakdowns: rows over 100 days on a 6-hour grid, or on a daily grid (`coarse`: many start rows of one
    /// person at the same instant, in different partitions' orders by input position), codes 0..5 per row, some
    /// partitions without codes, partitions of several widths.
    #[test]
    fn row_breakdowns_match_the_truth(
        rows in prop::collection::vec((0u32..6, 0i64..400, 0usize..3, 0u32..5), 0..80),
        coarse in any::<bool>(),
        width in common::arb_width(),
        no_codes in prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        interval in common::arb_interval(),
        from_hours in 0i64..1440,
        count in 1usize..8,
    ) {
        let step = if coarse { 4 } else { 1 };
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, g, event, _)| Ev { person, ts: base() + g / step * step * 6 * H, event })
            .collect();
        let codes: Vec<u32> = rows.iter().map(|r| r.3).collect();
        check_by_row(&evs, &codes, width, no_codes, interval, base() + from_hours * H, count)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// Row breakdowns over up to 120 daily periods.
    #[test]
    fn row_breakdowns_over_many_periods_match_the_truth(
        rows in prop::collection::vec((0u32..6, 0i64..130, 0usize..3, 0u32..5), 0..150),
        width in common::arb_width(),
        no_codes in prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        count in 60usize..=120,
    ) {
        let evs: Vec<Ev> = rows
            .iter()
            .map(|&(person, d, event, _)| Ev { person, ts: base() + d * DAY_US + 5 * H, event })
            .collect();
        let codes: Vec<u32> = rows.iter().map(|r| r.3).collect();
        check_by_row(&evs, &codes, width, no_codes, truth::Interval::Day, base() + 2 * DAY_US, count)?;
    }
}

/// A recurring person entering two periods with different codes counts under each period's first start row's
/// code; first-time, under their first start row's code only.
#[test]
fn recurring_person_counts_under_each_periods_first_code() {
    let ev = |person, day: i64, hour: i64, event| Ev {
        person,
        ts: base() + day * DAY_US + hour * H,
        event,
    };
    // Person 1: starts on day 0 with code 1 (then code 0 later that day), on day 2 with code 0 (then code 2),
    // returns on days 1 and 3. Person 2: starts on day 1 in a block without codes, and on day 1 again with code 2
    // (counts nowhere: the period's first start row has no code), returns on day 3.
    let evs = [
        ev(1, 0, 1, 0),
        ev(1, 0, 5, 0),
        ev(1, 1, 1, 1),
        ev(1, 2, 1, 0),
        ev(1, 2, 5, 0),
        ev(1, 3, 1, 1),
        ev(2, 1, 1, 0),
        ev(2, 1, 7, 0),
        ev(2, 3, 1, 1),
    ];
    let codes = [1, 0, 0, 0, 2, 0, 0, 2, 0];
    // 5-hour partitions: person 2's day-1 rows at 01:00 and 07:00 fall in different blocks; the block holding
    // day 1, 01:00 is found, then laid out again without codes.
    let (parts, _) = partition_with_codes(&evs, &codes, 5 * H, 0);
    let day1 = parts
        .iter()
        .position(|c| c.ts[0] == base() + DAY_US + H)
        .expect("a block at day 1, 01:00");
    let (parts, labels) = partition_with_codes(&evs, &codes, 5 * H, 1 << (day1 % 8));
    assert_eq!(labels[6], u32::MAX);
    assert_eq!(
        parts.iter().filter(|c| c.code.is_none()).count(),
        1,
        "only day 1, 01:00 lacks codes"
    );
    let blocks = blocks(&parts);
    let mut spec = RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting: Cohorting::Recurring,
        periods: periods(base(), truth::Interval::Day, 4),
        on_or_after: false,
        breakdown: BreakdownSource::Row,
        breakdown_values: 3,
    };
    let z = vec![0u64; 4];
    for threads in [1, 2] {
        let t = retention(&blocks, 3, threads, &spec);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            vec![z.clone(), z.clone(), vec![1, 1, 0, 0], z.clone()]
        );
        assert_eq!(
            t[1],
            vec![vec![1, 1, 0, 1], z.clone(), z.clone(), z.clone()]
        );
        assert_eq!(t[2], vec![z.clone(); 4]);
    }
    spec.cohorting = Cohorting::FirstTime;
    let t = retention(&blocks, 3, 2, &spec);
    assert_eq!(t[0], vec![z.clone(); 4]);
    assert_eq!(
        t[1],
        vec![vec![1, 1, 0, 1], z.clone(), z.clone(), z.clone()]
    );
    assert_eq!(t[2], vec![z.clone(); 4]);
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
