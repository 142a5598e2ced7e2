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
//!   [`BreakdownSource::Row`] (event-property breakdowns) gives one table per code too, each cohort membership
//!   taking the [`Block::breakdown`] code of **the start row that placed the person in that cohort**: with
//!   [`Cohorting::FirstTime`] their first start row ever (the one deciding their cohort, first in time, then
//!   block order, then row order); with [`Cohorting::Recurring`], for each cohort period, their first start row
//!   in that period, so a recurring person may count under different codes in different cohort periods. The
//!   membership's cells (size and returns, from all the person's return rows whatever their codes) go to that
//!   code's table; a code `>= breakdown_values` counts nowhere, and rows of a block without codes have code
//!   `u32::MAX` (a first-time person whose first start row is such a row counts nowhere, not under a later row's
//!   code).
//!
//! # Cost
//!
//! One pass over the rows, sharded by person ([`crate::par_shards`]); per thread, two flat arrays over the shard's
//! persons (a set of return periods, and either the first-time cohort in a byte or a set of start periods; a set
//! is the smallest integer with a bit per period: a byte for up to 8 periods), then `O(cohorts × periods)` per
//! person at the end. No allocation or hashing per row; the last period found is remembered (a block's rows
//! mostly fall in one period), otherwise a binary search over the period starts. Row breakdowns add, per thread,
//! a flat array of the first-time code (4 bytes a person) or, for recurring cohorts, a list of (person, period,
//! code) appended when a person's start period is first seen (12 bytes a cohort membership); a row's code is only
//! read when it places a person in a cohort.

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
    /// Where breakdown codes come from (with [`BreakdownSource::Row`], the code of the start row that placed the
    /// person in the cohort).
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
/// With more than [`MAX_PERIODS`] periods, or when a block's `breakdown` slice is shorter than its rows (with
/// [`BreakdownSource::Row`]).
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
        BreakdownSource::Person(_) | BreakdownSource::Row => spec.breakdown_values as usize,
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

/// A recurring cohort membership under a row breakdown: the person (offset in the shard), the cohort period and
/// the code of their first start row in it.
#[derive(Clone, Copy)]
struct Entry {
    person: u32,
    code: u32,
    period: u8,
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
    let by_row = matches!(spec.breakdown, BreakdownSource::Row);
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
    // Row breakdowns: the code of each first-time cohort's first start row, or the recurring memberships.
    let mut first_code = if by_row && first_time {
        vec![u32::MAX; width]
    } else {
        Vec::new()
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut at = PeriodAt {
        buckets: &spec.periods,
        last: None,
    };
    for block in blocks {
        let rows = block.rows_of(shard);
        let codes = if by_row {
            block.breakdown.map(|c| &c[rows.clone()])
        } else {
            None
        };
        let code_of = |r: usize| codes.map_or(u32::MAX, |c| c[r]);
        let cols = block.person[rows.clone()]
            .iter()
            .zip(&block.ts[rows.clone()])
            .zip(&block.mask[rows])
            .enumerate();
        for (r, ((&p, &ts), &m)) in cols {
            if m & either == 0 {
                continue;
            }
            let i = (p - shard.start) as usize;
            if m & start_bit != 0 {
                if first_time {
                    if first[i] == UNSEEN {
                        first[i] = match at.of(ts) {
                            Some(b) => {
                                if by_row {
                                    first_code[i] = code_of(r);
                                }
                                b as u8
                            }
                            None => NO_COHORT,
                        };
                    }
                } else if let Some(b) = at.of(ts) {
                    if by_row {
                        // The first start row of the period: its code is the membership's.
                        if (starts[i].bits() >> b) & 1 == 0 {
                            entries.push(Entry {
                                person: i as u32,
                                code: code_of(r),
                                period: b as u8,
                            });
                        }
                    }
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
    let on_or_after = spec.on_or_after;
    if by_row && !first_time {
        for e in entries {
            if (e.code as usize) < groups {
                let ret = returns[e.person as usize].bits();
                add_member(
                    table,
                    periods,
                    e.code as usize,
                    e.period as usize,
                    ret,
                    on_or_after,
                );
            }
        }
        return;
    }
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
                codes.get(shard.start as usize + i).map(|&c| c as usize)
            }
            BreakdownSource::Row => Some(first_code[i] as usize),
            BreakdownSource::None => Some(0),
        };
        let code = match code {
            Some(c) if c < groups => c,
            _ => continue,
        };
        let ret = returns[i].bits();
        let mut left = cohorts;
        while left != 0 {
            let p = left.trailing_zeros() as usize;
            left &= left - 1;
            add_member(table, periods, code, p, ret, on_or_after);
        }
    }
}

/// Adds one member of cohort period `p` with return periods `ret` to the table of `code` (`table` is
/// `[code][p][k]`, flat).
#[inline]
fn add_member(
    table: &mut [u64],
    periods: usize,
    code: usize,
    p: usize,
    ret: u128,
    on_or_after: bool,
) {
    let row = &mut table[(code * periods + p) * periods..][..periods];
    row[0] += 1;
    // Returns after the cohort's period, as offsets from it (bit j: period p + 1 + j).
    let later = ret.checked_shr(p as u32 + 1).unwrap_or(0);
    if later == 0 {
        return;
    }
    if on_or_after {
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
