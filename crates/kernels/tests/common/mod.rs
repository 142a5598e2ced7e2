//! Shared by the kernel tests: rows laid out as the engine lays them out.

use std::collections::BTreeMap;

use flywheel_kernels::DAY_US;
use flywheel_truth as truth;
use proptest::prelude::*;

const H: i64 = 3_600_000_000;

/// The indexes of `n` rows grouped into time partitions `width` µs wide (in time order), each partition sorted by
/// (person, time, input position) — the order the kernels rely on. `key(i)` is row `i`'s (person, time).
pub fn layout(n: usize, width: i64, key: impl Fn(usize) -> (u32, i64)) -> Vec<Vec<usize>> {
    let mut parts: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        parts.entry(key(i).1.div_euclid(width)).or_default().push(i);
    }
    parts
        .into_values()
        .map(|mut idx| {
            idx.sort_by_key(|&i| {
                let (person, ts) = key(i);
                (person, ts, i)
            });
            idx
        })
        .collect()
}

/// Partition widths to lay rows out with: days, several days, hours, one huge partition.
#[allow(dead_code)] // not every test file uses every helper
pub fn arb_width() -> impl Strategy<Value = i64> {
    prop::sample::select(vec![DAY_US, 3 * DAY_US, 7 * DAY_US, 5 * H, 1000 * DAY_US])
}

/// The truth's calendar intervals.
#[allow(dead_code)]
pub fn arb_interval() -> impl Strategy<Value = truth::Interval> {
    prop::sample::select(vec![
        truth::Interval::Day,
        truth::Interval::Week,
        truth::Interval::Month,
    ])
}
