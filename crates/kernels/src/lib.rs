//! Flywheel's analytics kernels: single-pass scans over events laid out by person and time.
//!
//! The embedded engine keeps events in time partitions; in memory each partition is one [`Block`] whose rows are
//! sorted by (person, timestamp, log order). Blocks are given to a kernel **in time order and with disjoint time
//! ranges**, so visiting the blocks in order and, inside each, the rows of one person in order, yields that person's
//! events in (time, log order). Kernels rely on this to keep per-person state in flat arrays indexed by the dense
//! person id instead of hashing events by person at query time.
//!
//! Parallelism is by person: [`shard`] splits the dense person ids into contiguous ranges, one per thread; each
//! thread visits every block but only the rows of its range (found by binary search, the rows being sorted by
//! person), so no two threads share a person and per-person state needs no locks. The results of the threads are
//! merged by the kernel.
//!
//! What the caller prepares (the engine's planner):
//! - dense person ids `0..persons` with identity merges already applied (a merged person's rows carry the
//!   survivor's id, and the block is sorted by that id);
//! - `mask`: per row, bit `i` set when the row matches the caller's event spec `i` (a funnel step, a series, an
//!   exclusion, a retention start/return event, …): event name and property filters are evaluated by the caller;
//! - optional breakdown codes (per row, or per person) in `0..breakdown_values`, and numeric values per row for
//!   property math (`NaN` when the row has no number);
//! - time buckets as UTC microsecond boundaries (already resolved in the project's time zone).
//!
//! This crate has no dependencies and does no I/O; it is checked against `flywheel-truth`.

pub mod experiment;
pub mod funnel;
pub mod lifecycle;
pub mod retention;
pub mod stickiness;
pub mod trends;

use std::ops::Range;

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// One time partition's events, sorted by (person, ts, log order). All slices have the same length.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    /// Dense person id (merges applied).
    pub person: &'a [u32],
    /// Event time, microseconds since the Unix epoch (UTC).
    pub ts: &'a [i64],
    /// Bit `i` set when the row matches the caller's spec `i`.
    pub mask: &'a [u64],
    /// Breakdown code per row (event-property breakdowns), in `0..breakdown_values`.
    pub breakdown: Option<&'a [u32]>,
    /// Numeric value per row for property math; `NaN` when the row has none.
    pub value: Option<&'a [f64]>,
}

impl<'a> Block<'a> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.person.len()
    }

    /// True when the block has no rows.
    pub fn is_empty(&self) -> bool {
        self.person.is_empty()
    }

    /// The rows of the persons in `persons` (a contiguous row range, rows being sorted by person).
    pub fn rows_of(&self, persons: &Range<u32>) -> Range<usize> {
        let lo = self.person.partition_point(|&p| p < persons.start);
        let hi = lo + self.person[lo..].partition_point(|&p| p < persons.end);
        lo..hi
    }
}

/// Time buckets: `starts[i]..starts[i + 1]` is bucket `i`, the last one ends at `end` (all UTC µs, increasing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    pub starts: Vec<i64>,
    pub end: i64,
}

impl Buckets {
    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// True when there are no buckets.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The bucket holding `ts`, if any.
    #[inline]
    pub fn index(&self, ts: i64) -> Option<usize> {
        if ts >= self.end || self.starts.first().is_none_or(|&s| ts < s) {
            return None;
        }
        Some(self.starts.partition_point(|&s| s <= ts) - 1)
    }

    /// End of bucket `i`.
    pub fn bucket_end(&self, i: usize) -> i64 {
        self.starts.get(i + 1).copied().unwrap_or(self.end)
    }
}

/// Splits `0..persons` into at most `threads` contiguous ranges of similar size (never an empty range, at least
/// one range even when `persons` is 0).
pub fn shard(persons: u32, threads: usize) -> Vec<Range<u32>> {
    let threads = threads.clamp(1, 256) as u32;
    let n = threads.min(persons.max(1));
    let per = persons.div_ceil(n).max(1);
    (0..n)
        .map(|i| (i * per).min(persons)..((i + 1) * per).min(persons))
        .filter(|r| !r.is_empty() || persons == 0)
        .take(n as usize)
        .collect()
}

/// Runs `f` once per person shard, on scoped threads (the calling thread takes the first shard), and returns the
/// results in shard order. `f` gets the shard's person range.
pub fn par_shards<T: Send>(
    persons: u32,
    threads: usize,
    f: impl Fn(Range<u32>) -> T + Sync,
) -> Vec<T> {
    let shards = shard(persons, threads);
    if shards.len() == 1 {
        return vec![f(shards[0].clone())];
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = shards[1..]
            .iter()
            .cloned()
            .map(|r| s.spawn(move || f(r)))
            .collect();
        let mut out = vec![f(shards[0].clone())];
        out.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("kernel thread panicked")),
        );
        out
    })
}

/// The number of threads kernels use by default: the machine's parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_person_once() {
        for persons in [0u32, 1, 2, 3, 7, 100, 1001] {
            for threads in [1, 2, 3, 8] {
                let s = shard(persons, threads);
                assert!(!s.is_empty());
                let mut next = 0;
                for r in &s {
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, persons, "{persons} persons, {threads} threads");
            }
        }
    }

    #[test]
    fn bucket_index_is_half_open() {
        let b = Buckets {
            starts: vec![10, 20, 30],
            end: 40,
        };
        assert_eq!(b.index(9), None);
        assert_eq!(b.index(10), Some(0));
        assert_eq!(b.index(19), Some(0));
        assert_eq!(b.index(20), Some(1));
        assert_eq!(b.index(39), Some(2));
        assert_eq!(b.index(40), None);
        assert_eq!(b.bucket_end(2), 40);
    }

    #[test]
    fn rows_of_a_person_range() {
        let person = [0, 0, 2, 3, 3, 5];
        let z = [0i64; 6];
        let m = [0u64; 6];
        let b = Block {
            person: &person,
            ts: &z,
            mask: &m,
            breakdown: None,
            value: None,
        };
        assert_eq!(b.rows_of(&(0..1)), 0..2);
        assert_eq!(b.rows_of(&(1..3)), 2..3);
        assert_eq!(b.rows_of(&(3..6)), 3..6);
        assert_eq!(b.rows_of(&(6..9)), 6..6);
    }

    #[test]
    fn par_shards_returns_in_order() {
        let out = par_shards(10, 3, |r| r.start);
        assert_eq!(out, vec![0, 4, 8]);
    }
}
