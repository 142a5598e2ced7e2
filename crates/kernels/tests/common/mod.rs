//! Shared by the kernel tests: rows laid out as the engine lays them out.

use std::collections::BTreeMap;

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
