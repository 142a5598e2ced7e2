//! Trends: one number per time bucket (and per breakdown value) for one series.
//!
//! # Which rows count
//!
//! A row counts for a series when its `mask` has bit [`TrendSpec::bit`] set (a bit of 64 or more matches nothing)
//! and [`Buckets::index`] puts its timestamp in a bucket: buckets are half-open, `[starts[i], starts[i + 1])`, the
//! last one ending at `end`, and rows outside all of them are ignored, except by [`TrendMath::Rolling`], whose
//! windows reach back before the first bucket. Rows of persons `>= persons` are ignored. Every math gives `0` for an
//! empty bucket.
//!
//! # Maths
//!
//! - [`TrendMath::Total`]: matching rows per bucket (`flywheel_truth::total`).
//! - [`TrendMath::Unique`]: distinct persons with a matching row in the bucket (DAU, WAU or MAU depending on the
//!   bucket width; `flywheel_truth::unique_persons`).
//! - [`TrendMath::Rolling`]: for bucket `i`, the distinct persons with a matching row in
//!   `[bucket_end(i) - days * DAY_US, bucket_end(i))`, whether or not that row lies in a bucket: the caller passes
//!   the blocks before `starts[0]` it wants counted. With day buckets and `end` at a midnight this is
//!   `flywheel_truth::rolling_active`; when `end` cuts the last day short (a range ending mid-day) the last window
//!   ends at `end` too. `days <= 0` gives empty windows (all zeros).
//! - [`TrendMath::PerUser`]: per bucket, the number of matching rows of each person with at least one, summarised
//!   with an [`Agg`] over those persons (`Sum` is then the total and `Avg` the mean events per active person).
//! - [`TrendMath::Property`]: per bucket, an [`Agg`] over [`Block::value`] of the matching rows whose value is not
//!   `NaN`; a block without a value column has no numbers. `Sum` and `Avg` are `f64` sums, accumulated per person
//!   shard then added in shard order: their last bits may depend on the thread count (every other result,
//!   including `Min`, `Max` and the quantiles, is exact and independent of it).
//!
//! # Aggregates and quantiles
//!
//! `Sum`, `Avg` (arithmetic mean), `Min`, `Max`; `Median`, `P90`, `P95` and `P99` are exact quantiles with linear
//! interpolation between the closest ranks (numpy's default `linear` method, ClickHouse's
//! `quantileExactInclusive`): with the `n` values sorted as `x[0] <= … <= x[n - 1]` and `p` the percentile, the
//! rank is `h = p / 100 · (n - 1)` (computed exactly in integers) and the result is
//! `x[⌊h⌋] + (x[⌊h⌋ + 1] - x[⌊h⌋]) · (h - ⌊h⌋)`. One value is its own quantile; the median of an even count is
//! the mean of the two middle values. See [`quantile`].
//!
//! # Breakdowns
//!
//! [`BreakdownSource::None`] gives one series (`breakdown_values` is then ignored). [`BreakdownSource::Row`] takes
//! each row's code from [`Block::breakdown`] (a block without codes contributes nothing);
//! [`BreakdownSource::Person`] takes it from a per-person table (persons beyond its end contribute nothing). Rows
//! whose code is `>= breakdown_values` are ignored. Each code gets its own series, computed as if the series were
//! filtered to that code: a person counts once per (code, bucket) for `Unique`, `Rolling` and `PerUser`, so with
//! row codes a person who did the event with two codes in one bucket counts in both series.
//!
//! # Cost
//!
//! One pass over the rows, sharded by person ([`crate::par_shards`]); per-thread state is a few flat arrays sized
//! to the shard's persons, plus, for row breakdowns of the per-person maths, one small record per (person, code)
//! seen. No hashing per row in the common paths: `Unique` with row codes keeps a 64-bit set of the codes a person
//! had in their current bucket when there are at most 64 codes. Quantiles of property values keep the values of
//! each (code, bucket) and select in linear time; quantiles of per-person counts use a histogram.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use crate::{par_shards, Block, Buckets, DAY_US};

/// How a series summarises numbers (per-person counts or property values) in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    /// Sum of the values.
    Sum,
    /// Arithmetic mean.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// 50th percentile (the mean of the two middle values for an even count).
    Median,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
}

impl Agg {
    /// The percentile of a quantile aggregate (`Median` is 50), `None` for the others.
    pub fn percent(self) -> Option<u32> {
        match self {
            Agg::Median => Some(50),
            Agg::P90 => Some(90),
            Agg::P95 => Some(95),
            Agg::P99 => Some(99),
            Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => None,
        }
    }
}

/// What a series computes per bucket (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrendMath {
    /// Matching rows.
    Total,
    /// Distinct persons with a matching row.
    Unique,
    /// Distinct persons with a matching row in the `days` days ending with the bucket's end (7: weekly active, 30:
    /// monthly active).
    Rolling {
        /// Window length in days.
        days: i64,
    },
    /// An aggregate of the matching rows per person, over the persons with at least one.
    PerUser(Agg),
    /// An aggregate of [`Block::value`] over the matching rows with a value.
    Property(Agg),
}

/// Where a row's breakdown code comes from.
#[derive(Debug, Clone, Copy)]
pub enum BreakdownSource<'a> {
    /// No breakdown: one series.
    None,
    /// The row's [`Block::breakdown`] code (event- and group-property breakdowns; funnels and retention take it
    /// from the row their attribution names).
    Row,
    /// The person's code, indexed by dense person id (person-property breakdowns).
    Person(&'a [u32]),
}

/// One trends series.
#[derive(Debug, Clone)]
pub struct TrendSpec<'a> {
    /// The `mask` bit of the series' rows.
    pub bit: u32,
    /// What to compute per bucket.
    pub math: TrendMath,
    /// The time buckets.
    pub buckets: Buckets,
    /// Where breakdown codes come from.
    pub breakdown: BreakdownSource<'a>,
    /// Number of breakdown codes (`0..breakdown_values`); ignored without a breakdown.
    pub breakdown_values: u32,
}

/// Computes one trends series over `blocks` (in time order, see the crate docs) for the dense persons
/// `0..persons`, on up to `threads` threads. Returns `[code][bucket]`: one row per breakdown code (one row without
/// a breakdown), one value per bucket.
pub fn trend(
    blocks: &[Block<'_>],
    persons: u32,
    threads: usize,
    spec: &TrendSpec<'_>,
) -> Vec<Vec<f64>> {
    let codes = series_count(spec.breakdown, spec.breakdown_values);
    let n = spec.buckets.len();
    if n == 0 || codes == 0 {
        return vec![Vec::new(); codes as usize];
    }
    let bounds = bucket_bounds(&spec.buckets);
    let cells = codes as usize * n;
    let scan = Scan {
        blocks,
        persons,
        threads,
        bit: spec.bit,
        breakdown: spec.breakdown,
        codes,
    };
    let flat: Vec<f64> = match spec.math {
        TrendMath::Total => {
            let parts = scan.run(
                |_| TotalSink {
                    at: BucketAt::new(&bounds),
                    n,
                    counts: vec![0; cells],
                },
                |s| s.counts,
            );
            to_f64(add_counts(parts, cells))
        }
        TrendMath::Unique => to_f64(unique(&scan, &bounds, cells)),
        TrendMath::Rolling { days } => to_f64(rolling(&scan, &spec.buckets, days)),
        TrendMath::PerUser(agg) => per_user(&scan, &bounds, cells)
            .iter_mut()
            .map(|h| h.aggregate(agg))
            .collect(),
        TrendMath::Property(agg) => property(&scan, &bounds, cells, agg),
    };
    flat.chunks(n).map(<[f64]>::to_vec).collect()
}

/// The `percent`-th percentile (0 to 100) of `sorted` (ascending, no `NaN`), with linear interpolation between the
/// closest ranks (see the module docs); `0.0` for no values.
pub fn quantile(sorted: &[f64], percent: u32) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let (lo, frac) = rank(sorted.len(), percent);
    interpolate(sorted[lo], sorted.get(lo + 1).copied(), frac)
}

/// The number of series for a breakdown.
pub(crate) fn series_count(breakdown: BreakdownSource<'_>, breakdown_values: u32) -> u32 {
    match breakdown {
        BreakdownSource::None => 1,
        BreakdownSource::Row | BreakdownSource::Person(_) => breakdown_values,
    }
}

/// `(⌊h⌋, h - ⌊h⌋)` for the rank `h = percent / 100 · (n - 1)` of `n > 0` values, the fraction exact in hundredths.
fn rank(n: usize, percent: u32) -> (usize, f64) {
    let scaled = percent.min(100) as u128 * (n as u128 - 1);
    let lo = (scaled / 100) as usize;
    (lo, (scaled % 100) as f64 / 100.0)
}

fn interpolate(lo: f64, hi: Option<f64>, frac: f64) -> f64 {
    match hi {
        Some(hi) if frac > 0.0 && hi != lo => lo + (hi - lo) * frac,
        _ => lo,
    }
}

/// `starts` followed by `end`: the position of a timestamp among these is its bucket index plus one.
pub(crate) fn bucket_bounds(buckets: &Buckets) -> Vec<i64> {
    let mut b = Vec::with_capacity(buckets.len() + 1);
    b.extend_from_slice(&buckets.starts);
    b.push(buckets.end);
    b
}

fn to_f64(counts: Vec<u64>) -> Vec<f64> {
    counts.into_iter().map(|c| c as f64).collect()
}

fn add_counts(parts: Vec<Vec<u64>>, cells: usize) -> Vec<u64> {
    let mut out = vec![0; cells];
    for part in parts {
        for (o, c) in out.iter_mut().zip(part) {
            *o += c;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Total and unique

struct TotalSink<'b> {
    at: BucketAt<'b>,
    n: usize,
    counts: Vec<u64>,
}

impl Sink for TotalSink<'_> {
    #[inline(always)]
    fn row(&mut self, _person: usize, ts: i64, code: u32, _value: f64) {
        if let Some(b) = self.at.index(ts) {
            self.counts[code as usize * self.n + b] += 1;
        }
    }
}

const NO_BUCKET: u32 = u32::MAX;

fn unique(scan: &Scan<'_, '_>, bounds: &[i64], cells: usize) -> Vec<u64> {
    let n = bounds.len() - 1;
    let parts = match scan.breakdown {
        BreakdownSource::None | BreakdownSource::Person(_) => scan.run(
            |shard| UniqueSink {
                at: BucketAt::new(bounds),
                n,
                last: OnePerPerson::new(shard, NO_BUCKET, scan.breakdown),
                counts: vec![0; cells],
            },
            |s| s.counts,
        ),
        BreakdownSource::Row if scan.codes <= 64 => scan.run(
            |shard| UniqueBitsSink {
                at: BucketAt::new(bounds),
                n,
                last: vec![NO_BUCKET; shard.len()],
                seen: vec![0; shard.len()],
                counts: vec![0; cells],
            },
            |s| s.counts,
        ),
        BreakdownSource::Row => scan.run(
            |shard| UniqueSink {
                at: BucketAt::new(bounds),
                n,
                last: CodeSlots::new(shard, NO_BUCKET),
                counts: vec![0; cells],
            },
            |s| s.counts,
        ),
    };
    add_counts(parts, cells)
}

/// Distinct persons per (code, bucket), with the last bucket counted per (person, code).
struct UniqueSink<'b, S> {
    at: BucketAt<'b>,
    n: usize,
    last: S,
    counts: Vec<u64>,
}

impl<S: PersonState<u32>> Sink for UniqueSink<'_, S> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, code: u32, _value: f64) {
        let Some(b) = self.at.index(ts) else { return };
        let last = self.last.get(person, code);
        if *last != b as u32 {
            *last = b as u32;
            self.counts[code as usize * self.n + b] += 1;
        }
    }
}

/// Distinct persons per (code, bucket) for row codes below 64: per person, the current bucket and the set of codes
/// already counted in it.
struct UniqueBitsSink<'b> {
    at: BucketAt<'b>,
    n: usize,
    last: Vec<u32>,
    seen: Vec<u64>,
    counts: Vec<u64>,
}

impl Sink for UniqueBitsSink<'_> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, code: u32, _value: f64) {
        let Some(b) = self.at.index(ts) else { return };
        if self.last[person] != b as u32 {
            self.last[person] = b as u32;
            self.seen[person] = 0;
        }
        let bit = 1u64 << code;
        if self.seen[person] & bit == 0 {
            self.seen[person] |= bit;
            self.counts[code as usize * self.n + b] += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Rolling windows

fn rolling(scan: &Scan<'_, '_>, buckets: &Buckets, days: i64) -> Vec<u64> {
    let n = buckets.len();
    let ends: Vec<i64> = (0..n).map(|i| buckets.bucket_end(i)).collect();
    let width = days.saturating_mul(DAY_US);
    let cells = scan.codes as usize * (n + 1);
    let parts = match scan.breakdown {
        BreakdownSource::None | BreakdownSource::Person(_) => scan.run(
            |shard| {
                RollingSink::new(
                    &ends,
                    width,
                    OnePerPerson::new(shard, 0, scan.breakdown),
                    cells,
                )
            },
            |s| s.diff,
        ),
        BreakdownSource::Row => scan.run(
            |shard| RollingSink::new(&ends, width, CodeSlots::new(shard, 0), cells),
            |s| s.diff,
        ),
    };
    let mut diff = vec![0i64; cells];
    for part in parts {
        for (d, p) in diff.iter_mut().zip(part) {
            *d += p;
        }
    }
    let mut out = Vec::with_capacity(scan.codes as usize * n);
    for series in diff.chunks(n + 1) {
        let mut active = 0i64;
        for d in &series[..n] {
            active += d;
            out.push(active as u64);
        }
    }
    out
}

/// Bucket `i`'s window is `[ends[i] - width, ends[i])`, so a row at `ts` is in the windows of the buckets
/// `lo..hi` with `lo` the first end after `ts` and `hi` the first end after `ts + width`. A person's rows come in
/// time order, so both only grow: each (person, code) keeps the bucket its windows are counted up to and adds the
/// rest of the range to a difference array.
struct RollingSink<'b, S> {
    lo: Cursor<'b>,
    hi: Cursor<'b>,
    width: i64,
    n: usize,
    upto: S,
    diff: Vec<i64>,
}

impl<'b, S> RollingSink<'b, S> {
    fn new(ends: &'b [i64], width: i64, upto: S, cells: usize) -> Self {
        RollingSink {
            lo: Cursor::new(ends),
            hi: Cursor::new(ends),
            width,
            n: ends.len(),
            upto,
            diff: vec![0; cells],
        }
    }
}

impl<S: PersonState<u32>> Sink for RollingSink<'_, S> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, code: u32, _value: f64) {
        let hi = self.hi.position(ts.saturating_add(self.width));
        let lo = self.lo.position(ts);
        if hi <= lo {
            return;
        }
        let upto = self.upto.get(person, code);
        let from = lo.max(*upto as usize);
        if hi > from {
            let series = code as usize * (self.n + 1);
            self.diff[series + from] += 1;
            self.diff[series + hi] -= 1;
            *upto = hi as u32;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Per-person counts

fn per_user(scan: &Scan<'_, '_>, bounds: &[i64], cells: usize) -> Vec<CountHistogram> {
    let n = bounds.len() - 1;
    let parts = match scan.breakdown {
        BreakdownSource::None | BreakdownSource::Person(_) => scan.run(
            |shard| PerUserSink {
                at: BucketAt::new(bounds),
                n,
                open: OnePerPerson::new(shard, Open::NONE, scan.breakdown),
                hists: vec![CountHistogram::default(); cells],
            },
            PerUserSink::finish,
        ),
        BreakdownSource::Row => scan.run(
            |shard| PerUserSink {
                at: BucketAt::new(bounds),
                n,
                open: CodeSlots::new(shard, Open::NONE),
                hists: vec![CountHistogram::default(); cells],
            },
            PerUserSink::finish,
        ),
    };
    let mut parts = parts.into_iter();
    let mut out = parts.next().unwrap_or_default();
    for part in parts {
        for (o, h) in out.iter_mut().zip(part) {
            o.merge(h);
        }
    }
    out
}

/// A (person, code)'s count of rows in its current bucket.
#[derive(Debug, Clone, Copy)]
struct Open {
    bucket: u32,
    rows: u32,
}

impl Open {
    const NONE: Open = Open {
        bucket: NO_BUCKET,
        rows: 0,
    };
}

struct PerUserSink<'b, S> {
    at: BucketAt<'b>,
    n: usize,
    open: S,
    hists: Vec<CountHistogram>,
}

impl<S: PersonState<Open>> PerUserSink<'_, S> {
    /// Closes every (person, code)'s last bucket.
    fn finish(mut self) -> Vec<CountHistogram> {
        let (hists, n) = (&mut self.hists, self.n);
        self.open.for_each(|code, open| {
            if open.rows > 0 {
                hists[code as usize * n + open.bucket as usize].add(open.rows);
            }
        });
        self.hists
    }
}

impl<S: PersonState<Open>> Sink for PerUserSink<'_, S> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, code: u32, _value: f64) {
        let Some(b) = self.at.index(ts) else { return };
        let open = self.open.get(person, code);
        if open.bucket == b as u32 {
            open.rows = open.rows.saturating_add(1);
            return;
        }
        let closed = std::mem::replace(
            open,
            Open {
                bucket: b as u32,
                rows: 1,
            },
        );
        if closed.rows > 0 {
            self.hists[code as usize * self.n + closed.bucket as usize].add(closed.rows);
        }
    }
}

/// A multiset of positive counts: a dense histogram of the small ones, the others listed.
#[derive(Debug, Clone, Default)]
struct CountHistogram {
    /// `small[c]`: how many times the count `c` occurs (`c < SMALL`).
    small: Vec<u64>,
    /// Counts `>= SMALL`, unordered.
    large: Vec<u32>,
}

impl CountHistogram {
    const SMALL: u32 = 64;

    fn add(&mut self, count: u32) {
        if count < Self::SMALL {
            let c = count as usize;
            if self.small.len() <= c {
                self.small.resize(c + 1, 0);
            }
            self.small[c] += 1;
        } else {
            self.large.push(count);
        }
    }

    fn merge(&mut self, other: CountHistogram) {
        if self.small.len() < other.small.len() {
            self.small.resize(other.small.len(), 0);
        }
        for (s, o) in self.small.iter_mut().zip(other.small) {
            *s += o;
        }
        self.large.extend(other.large);
    }

    fn aggregate(&mut self, agg: Agg) -> f64 {
        let n_small: u64 = self.small.iter().sum();
        let n = n_small + self.large.len() as u64;
        if n == 0 {
            return 0.0;
        }
        self.large.sort_unstable();
        let sum = || -> u64 {
            let small: u64 = (0..).zip(&self.small).map(|(c, k)| c * k).sum();
            small + self.large.iter().map(|&c| u64::from(c)).sum::<u64>()
        };
        match agg {
            Agg::Sum => sum() as f64,
            Agg::Avg => sum() as f64 / n as f64,
            Agg::Min => self.kth(0) as f64,
            Agg::Max => self.kth(n - 1) as f64,
            Agg::Median | Agg::P90 | Agg::P95 | Agg::P99 => {
                let percent = agg.percent().unwrap_or(50);
                let (lo, frac) = rank(n as usize, percent);
                let lo = lo as u64;
                let hi = (lo + 1 < n).then(|| self.kth(lo + 1) as f64);
                interpolate(self.kth(lo) as f64, hi, frac)
            }
        }
    }

    /// The `k`-th smallest count (0-based, `k` below the size; `large` sorted).
    fn kth(&self, k: u64) -> u32 {
        let mut seen = 0;
        for (c, &times) in self.small.iter().enumerate() {
            seen += times;
            if k < seen {
                return c as u32;
            }
        }
        self.large[(k - seen) as usize]
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Property values

fn property(scan: &Scan<'_, '_>, bounds: &[i64], cells: usize, agg: Agg) -> Vec<f64> {
    let n = bounds.len() - 1;
    if let Some(percent) = agg.percent() {
        let parts = scan.run(
            |_| ValuesSink {
                at: BucketAt::new(bounds),
                n,
                values: vec![Vec::new(); cells],
            },
            |s| s.values,
        );
        let mut parts = parts.into_iter();
        let mut values = parts.next().unwrap_or_default();
        for part in parts {
            for (v, p) in values.iter_mut().zip(part) {
                v.extend(p);
            }
        }
        return values
            .iter_mut()
            .map(|v| select_quantile(v, percent))
            .collect();
    }
    let parts = scan.run(
        |_| StatsSink {
            at: BucketAt::new(bounds),
            n,
            stats: vec![Stats::EMPTY; cells],
        },
        |s| s.stats,
    );
    let mut stats = vec![Stats::EMPTY; cells];
    for part in parts {
        for (s, p) in stats.iter_mut().zip(part) {
            s.merge(&p);
        }
    }
    stats.iter().map(|s| s.aggregate(agg)).collect()
}

/// [`quantile`] of unsorted values, in linear time (reorders them).
fn select_quantile(values: &mut [f64], percent: u32) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let (lo, frac) = rank(values.len(), percent);
    let (_, &mut at, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let next = (frac > 0.0)
        .then(|| above.iter().copied().min_by(f64::total_cmp))
        .flatten();
    interpolate(at, next, frac)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

impl Stats {
    const EMPTY: Stats = Stats {
        sum: 0.0,
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    fn merge(&mut self, o: &Stats) {
        self.sum += o.sum;
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    fn aggregate(&self, agg: Agg) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        match agg {
            Agg::Sum => self.sum,
            Agg::Avg => self.sum / self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            // Quantiles keep their values (see `property`).
            Agg::Median | Agg::P90 | Agg::P95 | Agg::P99 => f64::NAN,
        }
    }
}

struct StatsSink<'b> {
    at: BucketAt<'b>,
    n: usize,
    stats: Vec<Stats>,
}

impl Sink for StatsSink<'_> {
    const VALUES: bool = true;

    #[inline(always)]
    fn row(&mut self, _person: usize, ts: i64, code: u32, value: f64) {
        if value.is_nan() {
            return;
        }
        let Some(b) = self.at.index(ts) else { return };
        let s = &mut self.stats[code as usize * self.n + b];
        s.sum += value;
        s.count += 1;
        s.min = s.min.min(value);
        s.max = s.max.max(value);
    }
}

struct ValuesSink<'b> {
    at: BucketAt<'b>,
    n: usize,
    values: Vec<Vec<f64>>,
}

impl Sink for ValuesSink<'_> {
    const VALUES: bool = true;

    #[inline(always)]
    fn row(&mut self, _person: usize, ts: i64, code: u32, value: f64) {
        if value.is_nan() {
            return;
        }
        if let Some(b) = self.at.index(ts) {
            self.values[code as usize * self.n + b].push(value);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scanning machinery shared by the kernels of this crate (trends, stickiness, lifecycle)

/// Receives the matching rows of one person shard, each person's in time order.
pub(crate) trait Sink {
    /// Whether the sink uses row values (otherwise `value` is `NaN` and the column is not read).
    const VALUES: bool = false;

    /// One matching row: `person` relative to the shard's start, a breakdown `code` below the series count.
    fn row(&mut self, person: usize, ts: i64, code: u32, value: f64);
}

/// A scan of blocks for one mask bit and breakdown.
pub(crate) struct Scan<'a, 'b> {
    pub blocks: &'a [Block<'b>],
    pub persons: u32,
    pub threads: usize,
    pub bit: u32,
    pub breakdown: BreakdownSource<'a>,
    /// Codes `>= codes` are skipped.
    pub codes: u32,
}

impl Scan<'_, '_> {
    /// Feeds each person shard's matching rows to a sink made by `make` and turns it into a result with `finish`,
    /// one thread per shard; results in shard order.
    pub fn run<S: Sink, R: Send>(
        &self,
        make: impl Fn(&Range<u32>) -> S + Sync,
        finish: impl Fn(S) -> R + Sync,
    ) -> Vec<R> {
        par_shards(self.persons, self.threads, |shard| {
            let mut sink = make(&shard);
            self.feed(&shard, &mut sink);
            finish(sink)
        })
    }

    fn feed<S: Sink>(&self, shard: &Range<u32>, sink: &mut S) {
        let Some(want) = 1u64.checked_shl(self.bit) else {
            return;
        };
        for block in self.blocks {
            let r = block.rows_of(shard);
            if r.is_empty() {
                continue;
            }
            let rows = Rows {
                person: &block.person[r.clone()],
                ts: &block.ts[r.clone()],
                mask: &block.mask[r.clone()],
                value: if S::VALUES {
                    block.value.map(|v| &v[r.clone()])
                } else {
                    None
                },
                want,
                base: shard.start,
                codes: self.codes,
            };
            match self.breakdown {
                BreakdownSource::None => rows.feed(sink, |_, _| 0),
                BreakdownSource::Row => {
                    if let Some(codes) = block.breakdown {
                        let codes = &codes[r];
                        rows.feed(sink, |i, _| codes[i]);
                    }
                }
                BreakdownSource::Person(codes) => rows.feed(sink, |_, p| {
                    codes.get(p as usize).copied().unwrap_or(u32::MAX)
                }),
            }
        }
    }
}

/// One block's rows of one shard.
struct Rows<'r> {
    person: &'r [u32],
    ts: &'r [i64],
    mask: &'r [u64],
    value: Option<&'r [f64]>,
    want: u64,
    base: u32,
    codes: u32,
}

impl Rows<'_> {
    #[inline(always)]
    fn feed<S: Sink>(&self, sink: &mut S, code: impl Fn(usize, u32) -> u32) {
        let rows = self.person.iter().zip(self.ts).zip(self.mask).enumerate();
        for (i, ((&p, &ts), &mask)) in rows {
            if mask & self.want == 0 {
                continue;
            }
            let c = code(i, p);
            if c >= self.codes {
                continue;
            }
            let value = self.value.map_or(f64::NAN, |v| v[i]);
            sink.row((p - self.base) as usize, ts, c, value);
        }
    }
}

/// The position of timestamps among sorted boundaries (how many are `<=` the timestamp), remembering the last
/// interval: a person's rows are in time order, so consecutive lookups mostly fall in the same one.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'b> {
    bounds: &'b [i64],
    lo: i64,
    hi: i64,
    at: usize,
}

impl<'b> Cursor<'b> {
    /// A cursor over `bounds` (non-decreasing).
    pub fn new(bounds: &'b [i64]) -> Self {
        Cursor {
            bounds,
            lo: i64::MAX,
            hi: i64::MIN,
            at: 0,
        }
    }

    /// How many boundaries are `<= x`.
    #[inline]
    pub fn position(&mut self, x: i64) -> usize {
        if self.lo <= x && x < self.hi {
            return self.at;
        }
        self.seek(x)
    }

    fn seek(&mut self, x: i64) -> usize {
        let at = self.bounds.partition_point(|&b| b <= x);
        self.at = at;
        self.lo = if at == 0 {
            i64::MIN
        } else {
            self.bounds[at - 1]
        };
        self.hi = self.bounds.get(at).copied().unwrap_or(i64::MAX);
        at
    }
}

/// [`Buckets::index`] with a [`Cursor`] over [`bucket_bounds`].
#[derive(Debug, Clone)]
pub(crate) struct BucketAt<'b> {
    cursor: Cursor<'b>,
    n: usize,
}

impl<'b> BucketAt<'b> {
    /// Lookups in the buckets whose [`bucket_bounds`] are `bounds`.
    pub fn new(bounds: &'b [i64]) -> Self {
        BucketAt {
            cursor: Cursor::new(bounds),
            n: bounds.len().saturating_sub(1),
        }
    }

    /// The bucket holding `ts`, if any.
    #[inline]
    pub fn index(&mut self, ts: i64) -> Option<usize> {
        let p = self.cursor.position(ts);
        (p >= 1 && p <= self.n).then(|| p - 1)
    }
}

/// Per-(person, code) state of a shard.
pub(crate) trait PersonState<T> {
    /// The state of `person` (relative to the shard) for `code`, created with the initial value on first use.
    fn get(&mut self, person: usize, code: u32) -> &mut T;

    /// Every state with its code (untouched persons included where the state is per person; codes may then be
    /// out of range, and the states are the initial value).
    fn for_each(&self, f: impl FnMut(u32, &T));
}

/// One state per person, for breakdowns where the code is the same for all of a person's rows (none, or a
/// person's code).
pub(crate) struct OnePerPerson<'a, T> {
    states: Vec<T>,
    base: usize,
    codes: Option<&'a [u32]>,
}

impl<'a, T: Copy> OnePerPerson<'a, T> {
    /// States for the persons of `shard`. `breakdown` must not be [`BreakdownSource::Row`] (whose code varies by
    /// row); it gives the codes reported by [`PersonState::for_each`].
    pub fn new(shard: &Range<u32>, init: T, breakdown: BreakdownSource<'a>) -> Self {
        debug_assert!(!matches!(breakdown, BreakdownSource::Row));
        OnePerPerson {
            states: vec![init; shard.len()],
            base: shard.start as usize,
            codes: match breakdown {
                BreakdownSource::Person(codes) => Some(codes),
                BreakdownSource::None | BreakdownSource::Row => None,
            },
        }
    }
}

impl<T> PersonState<T> for OnePerPerson<'_, T> {
    #[inline]
    fn get(&mut self, person: usize, _code: u32) -> &mut T {
        &mut self.states[person]
    }

    fn for_each(&self, mut f: impl FnMut(u32, &T)) {
        for (p, s) in self.states.iter().enumerate() {
            let code = match self.codes {
                None => 0,
                Some(codes) => codes.get(self.base + p).copied().unwrap_or(u32::MAX),
            };
            f(code, s);
        }
    }
}

/// States per (person, code) for row codes. Each person has [`CodeSlots::INLINE`] slots in a flat array (read in
/// person order, as the rows come), then a linked list of further codes in an arena; a person with more than
/// [`CodeSlots::LIST`] codes has the others found through a hash map, which bounds the cost of a row.
pub(crate) struct CodeSlots<T> {
    /// `INLINE` slots per person: `(code, state)`, [`NO_CODE`] when free.
    inline: Vec<(u32, T)>,
    /// First arena slot of each person's list.
    head: Vec<u32>,
    slots: Vec<Slot<T>>,
    overflow: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    init: T,
}

struct Slot<T> {
    code: u32,
    next: u32,
    value: T,
}

const NO_SLOT: u32 = u32::MAX;
/// Never a row's code: codes are below the series count, itself a `u32`.
const NO_CODE: u32 = u32::MAX;

impl<T: Copy> CodeSlots<T> {
    /// Slots per person in the flat array.
    const INLINE: usize = 2;
    /// Codes a person keeps in the flat array and their list before the overflow map.
    const LIST: usize = 16;

    /// No states yet for the persons of `shard`.
    pub fn new(shard: &Range<u32>, init: T) -> Self {
        CodeSlots {
            inline: vec![(NO_CODE, init); shard.len() * Self::INLINE],
            head: vec![NO_SLOT; shard.len()],
            slots: Vec::new(),
            overflow: HashMap::default(),
            init,
        }
    }

    fn push(&mut self, code: u32, next: u32) -> u32 {
        let at = u32::try_from(self.slots.len())
            .ok()
            .filter(|&at| at != NO_SLOT)
            .expect("fewer than 2^32 - 1 (person, code) states per thread");
        self.slots.push(Slot {
            code,
            next,
            value: self.init,
        });
        at
    }

    /// The arena slot of a person's code beyond the flat array.
    #[cold]
    fn spilled(&mut self, person: usize, code: u32) -> u32 {
        let mut at = self.head[person];
        let mut listed = Self::INLINE;
        while at != NO_SLOT {
            let slot = &self.slots[at as usize];
            if slot.code == code {
                return at;
            }
            at = slot.next;
            listed += 1;
        }
        if listed < Self::LIST {
            let at = self.push(code, self.head[person]);
            self.head[person] = at;
            return at;
        }
        let key = (person as u64) << 32 | u64::from(code);
        match self.overflow.get(&key) {
            Some(&at) => at,
            None => {
                let at = self.push(code, NO_SLOT);
                self.overflow.insert(key, at);
                at
            }
        }
    }
}

impl<T: Copy> PersonState<T> for CodeSlots<T> {
    #[inline]
    fn get(&mut self, person: usize, code: u32) -> &mut T {
        let first = person * Self::INLINE;
        let mut free = None;
        for i in first..first + Self::INLINE {
            let c = self.inline[i].0;
            if c == code {
                return &mut self.inline[i].1;
            }
            if c == NO_CODE && free.is_none() {
                free = Some(i);
            }
        }
        if let Some(i) = free {
            self.inline[i].0 = code;
            return &mut self.inline[i].1;
        }
        let at = self.spilled(person, code);
        &mut self.slots[at as usize].value
    }

    fn for_each(&self, mut f: impl FnMut(u32, &T)) {
        for (code, value) in &self.inline {
            if *code != NO_CODE {
                f(*code, value);
            }
        }
        for s in &self.slots {
            f(s.code, &s.value);
        }
    }
}

/// A fast hasher for the overflow map's integer keys (dense ids, not attacker-chosen).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let h = (self.0.rotate_left(5) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}
