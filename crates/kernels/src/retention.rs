//! Retention: of the persons who did the start event in a period (a cohort), how many did the return event in
//! each later period.
//!
//! The answer is `table[code][p][k]`, for cohort period `p` and `k` periods later, exactly
//! `flywheel_truth::retention` per breakdown code:
//!
//! - **Periods** are the buckets of [`RetentionSpec::periods`] (period `i` is bucket `i`, half-open); rows outside
//!   every period place nobody in a cohort and count as no return.
//! - **Cohorts**: a row is a start row when its `mask` has [`RetentionSpec::start_bit`], a return row when it has
//!   [`RetentionSpec::return_bit`] (a row may be both; a bit of 64 or more matches nothing). With
//!   [`Cohorting::FirstTime`] a person belongs to the cohort of the period holding their first start row
//!   **ever**, and to none when that row lies outside the periods (before the first one, typically): the caller
//!   passes every block that may hold a start row, not only those of the periods. With [`Cohorting::Recurring`]
//!   a person belongs to the cohort of every period in which they have a start row.
//! - **Cells**: `k = 0` is the cohort's size; for `k >= 1` a member counts when they have a return row in period
//!   `p + k` or, with [`RetentionSpec::on_or_after`], in `p + k` or any later period. A return in the cohort's
//!   own period does not count, and columns past the last period (`k >= periods - p`) stay 0.
//! - **Breakdown** ([`RetentionSpec::breakdown`], the trends' [`BreakdownSource`]): [`BreakdownSource::None`]
//!   gives one table; [`BreakdownSource::Person`] one table per code, a person counting in the table of their
//!   code (persons beyond the end of the code table, or with a code `>= breakdown_values`, count nowhere).
//!   Event-property breakdowns ([`BreakdownSource::Row`]) are not supported.
//!
//! # Cost
//!
//! One pass over the rows, sharded by person ([`crate::par_shards`]); per thread, two flat arrays over the shard's
//! persons (a set of return periods, and either the first-time cohort in a byte or a set of start periods; a set
//! is the smallest integer with a bit per period: a byte for up to 8 periods), then `O(cohorts × periods)` per
//! person at the end. No allocation or hashing per row; the last period found is remembered (a block's rows
//! mostly fall in one period), otherwise a binary search over the period starts.

use crate::trends::BreakdownSource;
use crate::{par_shards, Block, Buckets};

/// Most periods (the period sets are 128-bit).
pub const MAX_PERIODS: usize = 128;

/// Who forms a cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cohorting {
    /// The persons whose first start row ever lies in the period.
    FirstTime,
    /// The persons with a start row in the period.
    Recurring,
}

/// A retention question.
#[derive(Debug, Clone)]
pub struct RetentionSpec<'a> {
    /// The mask bit of start rows.
    pub start_bit: u32,
    /// The mask bit of return rows.
    pub return_bit: u32,
    /// Who forms a cohort.
    pub cohorting: Cohorting,
    /// The periods: period `i` is bucket `i`; at most [`MAX_PERIODS`].
    pub periods: Buckets,
    /// A return in period `p + k` or any later one counts for column `k`.
    pub on_or_after: bool,
    /// Where breakdown codes come from ([`BreakdownSource::None`] or [`BreakdownSource::Person`]).
    pub breakdown: BreakdownSource<'a>,
    /// Number of breakdown codes (`0..breakdown_values`); ignored without a breakdown.
    pub breakdown_values: u32,
}

/// Computes a retention table over `blocks` (in time order, see the crate docs) for the dense persons
/// `0..persons` (rows of other persons are ignored), on up to `threads` threads. Returns
/// `[code][cohort period p][k]`, one `periods × periods` table per breakdown code (one table without a
/// breakdown).
///
/// # Panics
///
/// With more than [`MAX_PERIODS`] periods, or a [`BreakdownSource::Row`] breakdown.
pub fn retention(
    blocks: &[Block<'_>],
    persons: u32,
    threads: usize,
    spec: &RetentionSpec<'_>,
) -> Vec<Vec<Vec<u64>>> {
    let periods = spec.periods.len();
    assert!(
        periods <= MAX_PERIODS,
        "retention over {periods} periods: at most {MAX_PERIODS}"
    );
    let groups = match spec.breakdown {
        BreakdownSource::None => 1,
        BreakdownSource::Person(_) => spec.breakdown_values as usize,
        BreakdownSource::Row => {
            panic!("retention does not support event-property (row) breakdowns")
        }
    };
    let cells = groups * periods * periods;
    let parts = par_shards(persons, threads, |shard| {
        let mut table = vec![0u64; cells];
        if periods > 0 && groups > 0 {
            scan(blocks, &shard, spec, &mut table);
        }
        table
    });
    let mut table = vec![0u64; cells];
    for part in parts {
        for (a, b) in table.iter_mut().zip(part) {
            *a += b;
        }
    }
    if periods == 0 {
        return vec![Vec::new(); groups];
    }
    table
        .chunks(periods * periods)
        .map(|t| t.chunks(periods).map(<[u64]>::to_vec).collect())
        .collect()
}

/// First-time cohort byte: no start row seen yet.
const UNSEEN: u8 = u8::MAX;
/// First-time cohort byte: the first start row lies outside the periods.
const NO_COHORT: u8 = u8::MAX - 1;

fn bit_mask(bit: u32) -> u64 {
    1u64.checked_shl(bit).unwrap_or(0)
}

/// A set of periods, one bit each: the smallest integer holding them all, so that the per-person arrays stay
/// small (8 periods take a byte per person).
trait PeriodSet: Copy + Default {
    fn insert(&mut self, period: usize);
    fn bits(self) -> u128;
}

macro_rules! period_set {
    ($($t:ty),*) => {$(
        impl PeriodSet for $t {
            #[inline]
            fn insert(&mut self, period: usize) {
                *self |= 1 << period;
            }
            #[inline]
            fn bits(self) -> u128 {
                u128::from(self)
            }
        }
    )*};
}
period_set!(u8, u16, u32, u64, u128);

/// One shard: collects each person's periods, then adds their cells to `table` (`[code][p][k]`, flat).
fn scan(
    blocks: &[Block<'_>],
    shard: &std::ops::Range<u32>,
    spec: &RetentionSpec<'_>,
    table: &mut [u64],
) {
    match spec.periods.len() {
        0..=8 => scan_with::<u8>(blocks, shard, spec, table),
        9..=16 => scan_with::<u16>(blocks, shard, spec, table),
        17..=32 => scan_with::<u32>(blocks, shard, spec, table),
        33..=64 => scan_with::<u64>(blocks, shard, spec, table),
        _ => scan_with::<u128>(blocks, shard, spec, table),
    }
}

/// The period of a timestamp, remembering the last one found (a block's rows mostly fall in one period).
struct PeriodAt<'b> {
    buckets: &'b Buckets,
    /// The last period found and its bounds.
    last: Option<(usize, i64, i64)>,
}

impl PeriodAt<'_> {
    #[inline]
    fn of(&mut self, ts: i64) -> Option<usize> {
        if let Some((p, lo, hi)) = self.last {
            if lo <= ts && ts < hi {
                return Some(p);
            }
        }
        let p = self.buckets.index(ts)?;
        self.last = Some((p, self.buckets.starts[p], self.buckets.bucket_end(p)));
        Some(p)
    }
}

fn scan_with<S: PeriodSet>(
    blocks: &[Block<'_>],
    shard: &std::ops::Range<u32>,
    spec: &RetentionSpec<'_>,
    table: &mut [u64],
) {
    let (start_bit, return_bit) = (bit_mask(spec.start_bit), bit_mask(spec.return_bit));
    let either = start_bit | return_bit;
    let width = (shard.end - shard.start) as usize;
    let first_time = spec.cohorting == Cohorting::FirstTime;
    let mut first = if first_time {
        vec![UNSEEN; width]
    } else {
        Vec::new()
    };
    let mut starts = if first_time {
        Vec::new()
    } else {
        vec![S::default(); width]
    };
    let mut returns = vec![S::default(); width];
    let mut at = PeriodAt {
        buckets: &spec.periods,
        last: None,
    };
    for block in blocks {
        let rows = block.rows_of(shard);
        let cols = block.person[rows.clone()]
            .iter()
            .zip(&block.ts[rows.clone()])
            .zip(&block.mask[rows]);
        for ((&p, &ts), &m) in cols {
            if m & either == 0 {
                continue;
            }
            let i = (p - shard.start) as usize;
            if m & start_bit != 0 {
                if first_time {
                    if first[i] == UNSEEN {
                        first[i] = at.of(ts).map_or(NO_COHORT, |b| b as u8);
                    }
                } else if let Some(b) = at.of(ts) {
                    starts[i].insert(b);
                }
            }
            if m & return_bit != 0 {
                if let Some(b) = at.of(ts) {
                    returns[i].insert(b);
                }
            }
        }
    }
    let periods = spec.periods.len();
    let groups = table.len() / (periods * periods);
    for i in 0..width {
        let cohorts = if first_time {
            match first[i] {
                UNSEEN | NO_COHORT => 0,
                b => 1u128 << b,
            }
        } else {
            starts[i].bits()
        };
        if cohorts == 0 {
            continue;
        }
        let code = match spec.breakdown {
            BreakdownSource::Person(codes) => {
                match codes.get(shard.start as usize + i).map(|&c| c as usize) {
                    Some(c) if c < groups => c,
                    _ => continue,
                }
            }
            _ => 0,
        };
        let ret = returns[i].bits();
        let mut left = cohorts;
        while left != 0 {
            let p = left.trailing_zeros() as usize;
            left &= left - 1;
            let row = &mut table[(code * periods + p) * periods..][..periods];
            row[0] += 1;
            // Returns after the cohort's period, as offsets from it (bit j: period p + 1 + j).
            let later = ret.checked_shr(p as u32 + 1).unwrap_or(0);
            if later == 0 {
                continue;
            }
            if spec.on_or_after {
                let furthest = 128 - later.leading_zeros() as usize;
                for cell in &mut row[1..=furthest] {
                    *cell += 1;
                }
            } else {
                let mut bits = later;
                while bits != 0 {
                    row[1 + bits.trailing_zeros() as usize] += 1;
                    bits &= bits - 1;
                }
            }
        }
    }
}
