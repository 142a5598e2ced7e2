//! Experiment analysis: per-arm sufficient statistics of each metric, from exposure and metric rows.
//!
//! The answer is one [`Arm`] per variation with the number of units, the units excluded for multiple exposures,
//! and per metric the sums the stats crate (`flywheel_stats::ArmData`) needs. `flywheel_truth::experiment`
//! computes exactly the same from raw rows. A *unit* is a dense person (or a group when the caller keys rows by
//! group, as for account-level funnels).
//!
//! # Exposures
//!
//! - An **exposure row** has bit [`ExperimentSpec::exposure_bit`] in its `mask` and a timestamp in
//!   `[exposure_from_us, exposure_to_us)` (the phase's start and stop). Its variation is its [`Block::breakdown`]
//!   code; a code `>= variations`, or a block without codes, makes the row **not a valid exposure**: it is ignored.
//!   Exposure rows outside the window are ignored entirely too — they neither expose a unit nor count towards
//!   multiple exposures (an exposure in another phase says nothing about this one).
//! - A unit is **exposed** from its first valid exposure row at time `t0` (first in time, then block order, then
//!   row order — the order the blocks deliver), with that row's variation.
//! - **Carried over**: a unit first exposed before [`ExperimentSpec::entry_from_us`] is in no arm and counted in
//!   [`Arm::carried_over`] of its first variation (before the multiple-exposure check).
//! - **Multiple exposures**: a unit with valid exposure rows of two or more different variations is excluded from
//!   every arm (not in `n`, no metric values) and counted in [`Arm::multiple_exposures`] of the variation of its
//!   first exposure.
//!
//! # Metrics
//!
//! Every metric gives each exposed unit a **value** from its rows with bit [`Metric::bit`] whose timestamp lies in
//! the metric's window and before [`ExperimentSpec::analysis_end_us`] (rows at or after it never count, for any
//! window):
//!
//! - **window** `[t0 + delay_us, t0 + delay_us + window_us)`, or `[t0 + delay_us, analysis_end_us)` when
//!   [`Metric::window_us`] is `None` (a negative delay reaches before the exposure);
//! - **aggregation** ([`Aggregation`]): `Conversion` is 1 with at least one row in the window, else 0; `Steps` is
//!   1 when the window's rows, in order (time, then block order, then row order), show step 1, then step 2, …
//!   (a row completes at most one step), else 0; `Count` the number of rows; `Sum` the sum of the rows' values (the metric's value column, see [`experiment`]; `NaN`
//!   values, and rows of blocks without the column, add nothing);
//! - **capping** ([`Metric::cap`]): a value above the cap is set to the cap (absolute capping, applied to the
//!   unit's value, never to single rows);
//! - units without any row in the window have the value 0 and count in `n` like every exposed unit.
//!
//! A metric's sums over the units of an arm ([`MetricSums`]) always hold Σvalue and Σvalue². Optionally:
//!
//! - **ratio** ([`Metric::denominator`] = metric `d`): the unit's *denominator* is metric `d`'s value (with `d`'s
//!   own window, aggregation and cap); adds Σden, Σden² and Σvalue·den for the delta method.
//! - **CUPED** ([`Metric::cuped_pre_window_us`] = `pre`): the unit's *pre value* is the same metric (same bit,
//!   aggregation, value column and cap) over `[t0 - pre, t0)` (still only rows before `analysis_end_us`); adds
//!   Σpre, Σpre² and Σvalue·pre. A ratio metric with CUPED also gets the *pre denominator*, metric `d`'s rows
//!   (its aggregation, value column and cap) over the same pre-exposure window `[t0 - pre, t0)` of the ratio
//!   metric, and every cross sum of (value, denominator, pre, pre denominator) — what
//!   `ArmData::CupedRatio` needs.
//! - **unit values** ([`Metric::unit_values`], for quantile metrics): the capped value of every unit of the arm,
//!   in dense person order, for `flywheel_stats::sample`.
//!
//! Mapping to `flywheel_stats::ArmData`: `Conversion` → `Proportion { sum: value.sum }`; `Count`/`Sum` →
//! `Mean { value }`; ratio → `Ratio { numerator: value, denominator, cross_sum: cross.value_denominator }`;
//! CUPED → `Cuped { post: value, pre, cross_sum: cross.value_pre }`; ratio with CUPED → `CupedRatio` with
//! `numerator = value`, `pre_numerator = pre` and [`CrossSums`] named after `RatioCrossSums` with `value` for
//! `numerator` and `pre` for `pre_numerator`.
//!
//! Sums are `f64`, accumulated per person shard in dense person order and added in shard order: their last bits
//! may depend on the thread count (integer-valued data is exact whatever the threads).
//!
//! # Cost
//!
//! Sharded by person ([`crate::par_shards`]); each thread takes its units a chunk of 4,096 at a time, finding the
//! chunk's rows in every block from a cursor per block (rows are sorted by person), and makes two passes over
//! them — a pre-exposure window must know `t0` before it sees the rows that precede it:
//!
//! 1. exposure rows only: per unit its variation (4 bytes, with a flag for multiple exposures) and `t0` (8 bytes);
//! 2. metric rows: one `f64` per (unit, accumulator), an accumulator being a distinct (bit, aggregation, value
//!    column for sums, window) — a metric's post window, its pre window, a ratio's pre denominator. Metrics that
//!    ask for the same thing share one (a denominator is its metric's accumulator; a count and a conversion of
//!    the same rows and window are not the same thing, two counts are).
//!
//! So `12 + 8 × accumulators` bytes per unit of the chunk, reused from chunk to chunk and small enough to stay in
//! the core's cache (5 metrics, one with CUPED: 6 accumulators, 240 KB), and the chunk's rows are still cached
//! for the second pass. A row visits only the accumulators of its bits (they are grouped by bit) and updates
//! them without branches on its window. No allocation or hashing per row. Then each unit of the chunk adds its
//! values to its arm's sums.
//!
//! Measured (`cargo bench -p flywheel-kernels --bench experiment`): 1M exposed units, 2 variations, 5 metrics
//! (conversion, count with CUPED, sum, ratio, count) over 10M rows in 28 daily blocks: ≈ 145 ms on 2 threads,
//! ≈ 250 ms on 1 (shared 2-core VM; runs vary by ±20% with the other load).

use std::ops::Range;

use crate::{par_shards, Block};

/// Most metrics per call.
pub const MAX_METRICS: usize = 16;

/// Most variations (a variation is kept in 31 bits).
pub const MAX_VARIATIONS: u32 = 1 << 31;

/// How a unit's rows in a window become its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// 1 when there is at least one row, else 0.
    Conversion,
    /// The number of rows.
    Count,
    /// The sum of the rows' values (`NaN` skipped).
    Sum,
    /// 1 when the rows show every step in order (an ordered funnel), else 0. [`Metric::bit`] is not used.
    Steps(Steps),
}

/// Most steps of a [`Aggregation::Steps`] metric.
pub const MAX_STEPS: usize = 10;

/// The mask bits of an ordered funnel's steps: `bits[..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub bits: [u8; MAX_STEPS],
    pub len: u8,
}

impl Steps {
    /// The steps of these bits (at most [`MAX_STEPS`], each below 64; `None` otherwise).
    pub fn new(bits: &[u32]) -> Option<Self> {
        if bits.is_empty() || bits.len() > MAX_STEPS || bits.iter().any(|&b| b >= 64) {
            return None;
        }
        let mut out = Steps {
            bits: [0; MAX_STEPS],
            len: bits.len() as u8,
        };
        for (o, &b) in out.bits.iter_mut().zip(bits) {
            *o = b as u8;
        }
        Some(out)
    }

    /// Every step's bit, as one mask.
    fn mask(&self) -> u64 {
        self.bits[..self.len as usize]
            .iter()
            .fold(0, |m, &b| m | bit_mask(u32::from(b)))
    }
}

/// One metric of an experiment (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// The mask bit of the metric's rows (a bit of 64 or more matches nothing).
    pub bit: u32,
    /// How the rows in the window make the unit's value.
    pub aggregation: Aggregation,
    /// The window starts `delay_us` after the exposure (may be negative).
    pub delay_us: i64,
    /// Length of the window; `None`: until [`ExperimentSpec::analysis_end_us`].
    pub window_us: Option<i64>,
    /// Per-unit values above the cap are set to it.
    pub cap: Option<f64>,
    /// Ratio metric: the index of the metric whose value is the denominator.
    pub denominator: Option<usize>,
    /// CUPED: length of the pre-exposure window `[t0 - pre, t0)` of the covariate.
    pub cuped_pre_window_us: Option<i64>,
    /// Return every unit's value ([`MetricSums::unit_values`]), e.g. for a quantile metric.
    pub unit_values: bool,
}

/// An experiment analysis (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentSpec {
    /// The mask bit of exposure rows; their [`Block::breakdown`] code is the variation.
    pub exposure_bit: u32,
    /// Number of variations (arms): codes `0..variations`; at most [`MAX_VARIATIONS`].
    pub variations: u32,
    /// Exposures at or after this time count.
    pub exposure_from_us: i64,
    /// Exposures before this time count.
    pub exposure_to_us: i64,
    /// Units first exposed before this time are *carried over* (in no arm, counted in [`Arm::carried_over`]): a
    /// phase that continues a run with sticky assignment analyses only the units that entered in it, all assigned
    /// with its weights. `exposure_from_us` (or earlier) analyses every unit.
    pub entry_from_us: i64,
    /// Metric rows before this time count.
    pub analysis_end_us: i64,
    /// The metrics, at most [`MAX_METRICS`].
    pub metrics: Vec<Metric>,
}

/// Σx and Σx² of one per-unit variable over an arm's units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Σx.
    pub sum: f64,
    /// Σx².
    pub sum_squares: f64,
}

impl Moments {
    #[inline]
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.sum_squares += x * x;
    }

    fn merge(&mut self, o: &Moments) {
        self.sum += o.sum;
        self.sum_squares += o.sum_squares;
    }
}

/// Σ of products of a unit's value, denominator, pre value and pre denominator (0 where a variable does not
/// apply). Named as `flywheel_stats::RatioCrossSums`, with `value` for its `numerator` and `pre` for its
/// `pre_numerator`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CrossSums {
    /// Σ value·denominator (ratio metrics).
    pub value_denominator: f64,
    /// Σ value·pre (CUPED).
    pub value_pre: f64,
    /// Σ value·pre denominator (ratio with CUPED).
    pub value_pre_denominator: f64,
    /// Σ denominator·pre (ratio with CUPED).
    pub denominator_pre: f64,
    /// Σ denominator·pre denominator (ratio with CUPED).
    pub denominator_pre_denominator: f64,
    /// Σ pre·pre denominator (ratio with CUPED).
    pub pre_pre_denominator: f64,
}

impl CrossSums {
    fn merge(&mut self, o: &CrossSums) {
        self.value_denominator += o.value_denominator;
        self.value_pre += o.value_pre;
        self.value_pre_denominator += o.value_pre_denominator;
        self.denominator_pre += o.denominator_pre;
        self.denominator_pre_denominator += o.denominator_pre_denominator;
        self.pre_pre_denominator += o.pre_pre_denominator;
    }
}

/// One metric's sums over the units of one arm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricSums {
    /// The unit's (capped) value.
    pub value: Moments,
    /// Ratio metrics: the denominator metric's value.
    pub denominator: Option<Moments>,
    /// CUPED: the metric's value over the pre-exposure window.
    pub pre: Option<Moments>,
    /// Ratio metrics with CUPED: the denominator metric over the pre-exposure window.
    pub pre_denominator: Option<Moments>,
    /// Cross sums (see [`CrossSums`]).
    pub cross: CrossSums,
    /// With [`Metric::unit_values`]: every unit's value, in dense person order; otherwise empty.
    pub unit_values: Vec<f64>,
}

impl MetricSums {
    fn merge(&mut self, o: MetricSums) {
        self.value.merge(&o.value);
        for (a, b) in [
            (&mut self.denominator, &o.denominator),
            (&mut self.pre, &o.pre),
            (&mut self.pre_denominator, &o.pre_denominator),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                a.merge(b);
            }
        }
        self.cross.merge(&o.cross);
        self.unit_values.extend(o.unit_values);
    }
}

/// One variation's units and sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arm {
    /// Units exposed to this variation only.
    pub n: u64,
    /// Units first exposed to this variation, then to another one: excluded from every arm.
    pub multiple_exposures: u64,
    /// Units first exposed to this variation before [`ExperimentSpec::entry_from_us`]: excluded from every arm.
    pub carried_over: u64,
    /// Per metric of [`ExperimentSpec::metrics`], in order.
    pub metrics: Vec<MetricSums>,
}

/// A window relative to `t0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// `[t0 + delay, t0 + delay + len)`, or to the end of the analysis.
    Post { delay: i64, len: Option<i64> },
    /// `[t0 - len, t0)`.
    Pre { len: i64 },
}

impl Window {
    /// The window as offsets `[lo, hi)` from the exposure (saturating: no window reaches 2^63 µs).
    #[inline]
    fn offsets(self) -> (i64, i64) {
        match self {
            Window::Post { delay, len } => {
                (delay, len.map_or(i64::MAX, |l| delay.saturating_add(l)))
            }
            Window::Pre { len } => (len.saturating_neg(), 0),
        }
    }
}

/// Rows of one bit in one window, aggregated per unit into one `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Accumulator {
    bit: u64,
    aggregation: Aggregation,
    /// The value column (a metric index; `usize::MAX` unless the aggregation is a sum).
    column: usize,
    window: Window,
}

/// Which accumulators make a metric's four variables, and their caps.
#[derive(Debug, Clone, Copy)]
struct Plan {
    value: usize,
    cap: Option<f64>,
    denominator: Option<(usize, Option<f64>)>,
    pre: Option<usize>,
    pre_denominator: Option<usize>,
}

fn bit_mask(bit: u32) -> u64 {
    1u64.checked_shl(bit).unwrap_or(0)
}

/// The distinct accumulators of a spec and each metric's plan.
fn plan(spec: &ExperimentSpec) -> (Vec<Accumulator>, Vec<Plan>) {
    let mut accs: Vec<Accumulator> = Vec::new();
    let mut slot = |a: Accumulator| match accs.iter().position(|b| *b == a) {
        Some(i) => i,
        None => {
            accs.push(a);
            accs.len() - 1
        }
    };
    let post = |i: usize| {
        let m = &spec.metrics[i];
        Accumulator {
            bit: match m.aggregation {
                Aggregation::Steps(steps) => steps.mask(),
                _ => bit_mask(m.bit),
            },
            aggregation: m.aggregation,
            // Only sums read a column: other aggregations of the same rows share an accumulator.
            column: if m.aggregation == Aggregation::Sum {
                i
            } else {
                usize::MAX
            },
            window: Window::Post {
                delay: m.delay_us,
                len: m.window_us,
            },
        }
    };
    let plans = spec
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pre_of = |j: usize, len: i64| Accumulator {
                window: Window::Pre { len },
                ..post(j)
            };
            Plan {
                value: slot(post(i)),
                cap: m.cap,
                denominator: m.denominator.map(|d| (slot(post(d)), spec.metrics[d].cap)),
                pre: m.cuped_pre_window_us.map(|len| slot(pre_of(i, len))),
                pre_denominator: match (m.denominator, m.cuped_pre_window_us) {
                    (Some(d), Some(len)) => Some(slot(pre_of(d, len))),
                    _ => None,
                },
            }
        })
        .collect::<Vec<Plan>>();
    // Accumulators of the same bit side by side, so that a row visits only those of its bits.
    let mut order: Vec<usize> = (0..accs.len()).collect();
    order.sort_by_key(|&i| accs[i].bit);
    let mut at = vec![0; accs.len()];
    for (new, &old) in order.iter().enumerate() {
        at[old] = new;
    }
    let plans = plans
        .into_iter()
        .map(|p| Plan {
            value: at[p.value],
            denominator: p.denominator.map(|(a, cap)| (at[a], cap)),
            pre: p.pre.map(|a| at[a]),
            pre_denominator: p.pre_denominator.map(|a| at[a]),
            ..p
        })
        .collect();
    (order.iter().map(|&i| accs[i]).collect(), plans)
}

/// The runs of accumulators sharing a bit (accumulators sorted by bit), without the bit-less ones.
fn groups(accs: &[Accumulator]) -> Vec<(u64, Range<usize>)> {
    let mut out: Vec<(u64, Range<usize>)> = Vec::new();
    for (i, a) in accs.iter().enumerate() {
        match out.last_mut() {
            Some((bit, r)) if *bit == a.bit => r.end = i + 1,
            _ => out.push((a.bit, i..i + 1)),
        }
    }
    out.retain(|g| g.0 != 0);
    out
}

/// Unit state: no valid exposure yet.
const UNEXPOSED: u32 = u32::MAX;
/// Unit state flag: exposed to two or more variations (the low bits keep the first one).
const MULTIPLE: u32 = 1 << 31;

/// Analyses an experiment over `blocks` (in time order, see the crate docs) for the dense persons `0..persons`
/// (rows of other persons are ignored), on up to `threads` threads. `values[b][m]` is metric `m`'s value column
/// in block `b` (read for its `Sum` rows only, `NaN` = no value); a missing entry (short `values` or
/// `values[b]`, or `None`) means the metric has no values in that block. [`Block::value`] is not used. Returns
/// one [`Arm`] per variation `0..variations`.
///
/// # Panics
///
/// With more than [`MAX_METRICS`] metrics, `variations > MAX_VARIATIONS`, a denominator index out of range, or a
/// block's `breakdown` or value column shorter than its rows.
pub fn experiment(
    blocks: &[Block<'_>],
    values: &[Vec<Option<&[f64]>>],
    persons: u32,
    threads: usize,
    spec: &ExperimentSpec,
) -> Vec<Arm> {
    let metrics = spec.metrics.len();
    assert!(
        metrics <= MAX_METRICS,
        "{metrics} metrics: at most {MAX_METRICS}"
    );
    assert!(
        spec.variations <= MAX_VARIATIONS,
        "{} variations: at most {MAX_VARIATIONS}",
        spec.variations
    );
    for (i, m) in spec.metrics.iter().enumerate() {
        if let Some(d) = m.denominator {
            assert!(d < metrics, "metric {i}: denominator {d} out of range");
        }
    }
    let (accs, plans) = plan(spec);
    let parts = par_shards(persons, threads, |shard| {
        scan(blocks, values, &shard, spec, &accs, &plans)
    });
    let mut arms = empty_arms(spec, &plans);
    for part in parts {
        for (a, b) in arms.iter_mut().zip(part) {
            a.n += b.n;
            a.multiple_exposures += b.multiple_exposures;
            a.carried_over += b.carried_over;
            for (x, y) in a.metrics.iter_mut().zip(b.metrics) {
                x.merge(y);
            }
        }
    }
    arms
}

fn empty_arms(spec: &ExperimentSpec, plans: &[Plan]) -> Vec<Arm> {
    let sums: Vec<MetricSums> = plans
        .iter()
        .map(|p| MetricSums {
            denominator: p.denominator.map(|_| Moments::default()),
            pre: p.pre.map(|_| Moments::default()),
            pre_denominator: p.pre_denominator.map(|_| Moments::default()),
            ..MetricSums::default()
        })
        .collect();
    (0..spec.variations)
        .map(|_| Arm {
            metrics: sums.clone(),
            ..Arm::default()
        })
        .collect()
}

/// Units per chunk: a chunk's per-unit state (12 + 8 × accumulators bytes a unit) stays in the core's cache while
/// every block's rows of the chunk go through it.
const CHUNK: u32 = 4096;

/// Each accumulator's value column in one block (only sums read one).
type Columns<'a> = [Option<&'a [f64]>; MAX_METRICS * 3];

/// One shard, a chunk of units at a time: exposures, then metric rows, then the units' values into their arms.
fn scan(
    blocks: &[Block<'_>],
    values: &[Vec<Option<&[f64]>>],
    shard: &Range<u32>,
    spec: &ExperimentSpec,
    accs: &[Accumulator],
    plans: &[Plan],
) -> Vec<Arm> {
    let mut arms = empty_arms(spec, plans);
    if shard.is_empty() || spec.variations == 0 {
        return arms;
    }
    let columns: Vec<Columns<'_>> = blocks
        .iter()
        .enumerate()
        .map(|(b, block)| {
            let mut columns: Columns<'_> = [None; MAX_METRICS * 3];
            for (c, a) in columns.iter_mut().zip(accs) {
                if a.aggregation == Aggregation::Sum {
                    *c = values
                        .get(b)
                        .and_then(|v| v.get(a.column).copied().flatten());
                    if let Some(col) = c {
                        assert!(
                            col.len() >= block.len(),
                            "value column shorter than block {b}"
                        );
                    }
                }
            }
            columns
        })
        .collect();
    // Each block's first row of the next chunk.
    let mut cursor: Vec<usize> = blocks.iter().map(|b| b.rows_of(shard).start).collect();
    let mut rows: Vec<Range<usize>> = vec![0..0; blocks.len()];
    let k = accs.len();
    let chunk = CHUNK.min(shard.end - shard.start) as usize;
    let mut state = vec![UNEXPOSED; chunk];
    let mut t0 = vec![0i64; chunk];
    let mut acc_values = vec![0.0f64; chunk * k];
    let mut lo = shard.start;
    while lo < shard.end {
        let hi = lo.saturating_add(CHUNK).min(shard.end);
        let width = (hi - lo) as usize;
        for ((r, c), block) in rows.iter_mut().zip(&mut cursor).zip(blocks) {
            let end = *c + block.person[*c..].partition_point(|&p| p < hi);
            *r = *c..end;
            *c = end;
        }
        state[..width].fill(UNEXPOSED);
        acc_values[..width * k].fill(0.0);
        exposures(blocks, &rows, lo, spec, &mut state, &mut t0);
        accumulate(
            blocks,
            &columns,
            &rows,
            lo,
            spec,
            accs,
            &state,
            &t0,
            &mut acc_values,
        );
        finish_steps(accs, &mut acc_values[..width * k]);
        add_units(
            &state[..width],
            &t0[..width],
            &acc_values[..width * k],
            k,
            spec,
            plans,
            &mut arms,
        );
        lo = hi;
    }
    arms
}

/// Turns the step counts of [`Aggregation::Steps`] accumulators into 1 (every step done) or 0.
fn finish_steps(accs: &[Accumulator], acc_values: &mut [f64]) {
    let k = accs.len();
    for (a, acc) in accs.iter().enumerate() {
        if let Aggregation::Steps(steps) = acc.aggregation {
            let all = f64::from(steps.len);
            for unit in acc_values.chunks_exact_mut(k) {
                unit[a] = f64::from(u8::from(unit[a] >= all));
            }
        }
    }
}

/// Adds each unit of a chunk to its arm: `n` or `multiple_exposures`, and its metrics' variables.
fn add_units(
    state: &[u32],
    t0: &[i64],
    acc_values: &[f64],
    k: usize,
    spec: &ExperimentSpec,
    plans: &[Plan],
    arms: &mut [Arm],
) {
    let capped = |v: f64, cap: Option<f64>| cap.map_or(v, |c| v.min(c));
    for (i, &s) in state.iter().enumerate() {
        if s == UNEXPOSED {
            continue;
        }
        if t0[i] < spec.entry_from_us {
            arms[(s & !MULTIPLE) as usize].carried_over += 1;
            continue;
        }
        if s & MULTIPLE != 0 {
            arms[(s & !MULTIPLE) as usize].multiple_exposures += 1;
            continue;
        }
        let arm = &mut arms[s as usize];
        arm.n += 1;
        let unit = &acc_values[i * k..(i + 1) * k];
        for ((sums, p), m) in arm.metrics.iter_mut().zip(plans).zip(&spec.metrics) {
            let v = capped(unit[p.value], p.cap);
            sums.value.add(v);
            if m.unit_values {
                sums.unit_values.push(v);
            }
            let den = p.denominator.map(|(a, cap)| capped(unit[a], cap));
            let pre = p.pre.map(|a| capped(unit[a], p.cap));
            let pre_den = p
                .pre_denominator
                .zip(p.denominator)
                .map(|(a, (_, cap))| capped(unit[a], cap));
            if let (Some(s), Some(d)) = (&mut sums.denominator, den) {
                s.add(d);
                sums.cross.value_denominator += v * d;
            }
            if let (Some(s), Some(x)) = (&mut sums.pre, pre) {
                s.add(x);
                sums.cross.value_pre += v * x;
            }
            if let (Some(s), Some(pd)) = (&mut sums.pre_denominator, pre_den) {
                let (d, x) = (den.unwrap_or(0.0), pre.unwrap_or(0.0));
                s.add(pd);
                sums.cross.value_pre_denominator += v * pd;
                sums.cross.denominator_pre += d * x;
                sums.cross.denominator_pre_denominator += d * pd;
                sums.cross.pre_pre_denominator += x * pd;
            }
        }
    }
}

/// First pass over a chunk (units from `base`, rows `rows[b]` of block `b`): each unit's state ([`UNEXPOSED`],
/// its variation, or [`MULTIPLE`] with the first variation) and the time of its first valid exposure.
fn exposures(
    blocks: &[Block<'_>],
    rows: &[Range<usize>],
    base: u32,
    spec: &ExperimentSpec,
    state: &mut [u32],
    t0: &mut [i64],
) {
    let bit = bit_mask(spec.exposure_bit);
    let window = spec.exposure_from_us..spec.exposure_to_us;
    for (block, rows) in blocks.iter().zip(rows) {
        let Some(codes) = block.breakdown else {
            continue;
        };
        let cols = block.person[rows.clone()]
            .iter()
            .zip(&block.ts[rows.clone()])
            .zip(&block.mask[rows.clone()])
            .zip(&codes[rows.clone()]);
        for (((&p, &ts), &m), &code) in cols {
            if m & bit == 0 || code >= spec.variations || !window.contains(&ts) {
                continue;
            }
            let i = (p - base) as usize;
            let s = state[i];
            if s == UNEXPOSED {
                state[i] = code;
                t0[i] = ts;
            } else if s & !MULTIPLE != code {
                state[i] = s | MULTIPLE;
            }
        }
    }
}

/// Second pass over a chunk: per (unit, accumulator) the aggregate of the rows in its window, into `out`
/// (`[unit][accumulator]` flat, zeroed).
#[allow(clippy::too_many_arguments)]
fn accumulate(
    blocks: &[Block<'_>],
    columns: &[Columns<'_>],
    rows: &[Range<usize>],
    base: u32,
    spec: &ExperimentSpec,
    accs: &[Accumulator],
    state: &[u32],
    t0: &[i64],
    out: &mut [f64],
) {
    let k = accs.len();
    let groups = groups(accs);
    let any = groups.iter().fold(0u64, |a, g| a | g.0);
    if any == 0 {
        return;
    }
    let offsets: Vec<(i64, i64)> = accs.iter().map(|a| a.window.offsets()).collect();
    let end = spec.analysis_end_us;
    for ((block, rows), columns) in blocks.iter().zip(rows).zip(columns) {
        for r in rows.clone() {
            let m = block.mask[r];
            if m & any == 0 {
                continue;
            }
            let ts = block.ts[r];
            if ts >= end {
                continue;
            }
            let i = (block.person[r] - base) as usize;
            if state[i] & MULTIPLE != 0 {
                // Unexposed or excluded.
                continue;
            }
            // Offsets from the exposure (saturating: no window reaches 2^63 µs).
            let rel = ts.saturating_sub(t0[i]);
            let unit = &mut out[i * k..(i + 1) * k];
            for (bit, range) in &groups {
                if m & bit == 0 {
                    continue;
                }
                // Branch-free updates: whether a row lies in a window is unpredictable.
                for a in range.clone() {
                    let (lo, hi) = offsets[a];
                    let hit = (lo <= rel) & (rel < hi);
                    let slot = &mut unit[a];
                    match accs[a].aggregation {
                        Aggregation::Conversion => *slot = slot.max(f64::from(u8::from(hit))),
                        Aggregation::Count => *slot += f64::from(u8::from(hit)),
                        Aggregation::Sum => {
                            let v = columns[a].map_or(f64::NAN, |c| c[r]);
                            *slot += if hit && !v.is_nan() { v } else { 0.0 };
                        }
                        // The slot counts the steps done so far; a row completes at most the next one.
                        Aggregation::Steps(steps) => {
                            let done = *slot as usize;
                            if hit
                                && done < usize::from(steps.len)
                                && m & bit_mask(u32::from(steps.bits[done])) != 0
                            {
                                *slot += 1.0;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `(person, ts, mask, code)` of one block, sorted as the engine sorts them.
    struct Rows {
        person: Vec<u32>,
        ts: Vec<i64>,
        mask: Vec<u64>,
        code: Vec<u32>,
    }

    fn rows(mut r: Vec<(u32, i64, u64, u32)>) -> Rows {
        r.sort_by_key(|&(p, t, _, _)| (p, t));
        Rows {
            person: r.iter().map(|x| x.0).collect(),
            ts: r.iter().map(|x| x.1).collect(),
            mask: r.iter().map(|x| x.2).collect(),
            code: r.iter().map(|x| x.3).collect(),
        }
    }

    fn block(r: &Rows, codes: bool) -> Block<'_> {
        Block {
            person: &r.person,
            ts: &r.ts,
            mask: &r.mask,
            breakdown: codes.then_some(&r.code[..]),
            value: None,
        }
    }

    fn metric(bit: u32, aggregation: Aggregation) -> Metric {
        Metric {
            bit,
            aggregation,
            delay_us: 0,
            window_us: None,
            cap: None,
            denominator: None,
            cuped_pre_window_us: None,
            unit_values: false,
        }
    }

    fn spec(variations: u32, from: i64, to: i64, end: i64, metrics: Vec<Metric>) -> ExperimentSpec {
        ExperimentSpec {
            exposure_bit: 0,
            variations,
            exposure_from_us: from,
            exposure_to_us: to,
            entry_from_us: from,
            analysis_end_us: end,
            metrics,
        }
    }

    #[test]
    fn exposures_first_valid_in_window_and_multiple_excluded() {
        const X: u64 = 1;
        // Blocks [0, 300) with codes, [300, 400) without, [400, 500) with codes; phase [100, 400).
        let a = rows(vec![
            (0, 100, X, 0), // at the phase start: counts
            (0, 150, X, 0),
            (1, 99, X, 1), // before the phase: ignored, so no multiple exposure
            (1, 120, X, 0),
            (2, 110, X, 1), // first variation 1, then 0: excluded, counted under 1
            (2, 130, X, 0),
            (3, 110, X, 5), // code 5 >= 2 variations: ignored
            (3, 140, X, 1),
            (5, 120, 2, 1), // not an exposure row (bit 1 only)
        ]);
        let b = rows(vec![(4, 310, X, 0), (0, 320, X, 1)]); // no codes: ignored
        let c = rows(vec![(5, 400, X, 0)]); // at the phase end: ignored
        let blocks = [block(&a, true), block(&b, false), block(&c, true)];
        for threads in [1, 2, 4] {
            let arms = experiment(&blocks, &[], 6, threads, &spec(2, 100, 400, 1000, vec![]));
            assert_eq!(arms.len(), 2);
            assert_eq!((arms[0].n, arms[0].multiple_exposures), (2, 0), "{threads}");
            assert_eq!((arms[1].n, arms[1].multiple_exposures), (1, 1), "{threads}");
        }
    }

    #[test]
    fn metric_windows_aggregations_caps_and_analysis_end() {
        const X: u64 = 1;
        const M: u64 = 2;
        // Person 0 exposed at 1000; person 1 at 2000 with no metric rows (counts with zeros).
        let r = rows(vec![
            (0, 1000, X, 0),
            (0, 999, M, 0),
            (0, 1000, M, 0),
            (0, 1010, M, 0),
            (0, 1020, M, 0),
            (0, 1500, M, 0), // at the analysis end: never counts
            (1, 2000, X, 0),
        ]);
        // Values in row order: person 0's rows sorted by time (999, 1000, 1000, 1010, 1020, 1500), then person 1.
        let values: Vec<f64> = vec![7.0, 99.0, 2.0, f64::NAN, 4.0, 50.0, 99.0];
        // The exposure row at 1000 has no metric bit: its value (99) must not count.
        let windowed = |bit, agg, delay, window| Metric {
            delay_us: delay,
            window_us: window,
            ..metric(bit, agg)
        };
        let metrics = vec![
            windowed(1, Aggregation::Conversion, 0, Some(20)), // rows 1000, 1010 -> 1
            windowed(1, Aggregation::Count, 0, Some(20)),      // 2
            windowed(1, Aggregation::Sum, 0, Some(20)),        // 2 + NaN -> 2
            windowed(1, Aggregation::Count, 10, None),         // 1010, 1020 -> 2
            Metric {
                cap: Some(5.0),
                ..windowed(1, Aggregation::Sum, 0, None) // 2 + 4 = 6, capped to 5
            },
            windowed(1, Aggregation::Count, -1, Some(2)), // [999, 1001): 999, 1000 -> 2
            windowed(1, Aggregation::Conversion, 0, Some(0)), // empty window -> 0
        ];
        let cols: Vec<Option<&[f64]>> = vec![Some(&values); metrics.len()];
        let s = spec(1, 0, 5000, 1500, metrics);
        let arms = experiment(&[block(&r, true)], &[cols], 2, 1, &s);
        let arm = &arms[0];
        assert_eq!((arm.n, arm.multiple_exposures), (2, 0));
        let got: Vec<(f64, f64)> = arm
            .metrics
            .iter()
            .map(|m| (m.value.sum, m.value.sum_squares))
            .collect();
        assert_eq!(
            got,
            vec![
                (1.0, 1.0),
                (2.0, 4.0),
                (2.0, 4.0),
                (2.0, 4.0),
                (5.0, 25.0),
                (2.0, 4.0),
                (0.0, 0.0)
            ]
        );
        assert!(arm
            .metrics
            .iter()
            .all(|m| m.denominator.is_none() && m.pre.is_none() && m.unit_values.is_empty()));
    }

    #[test]
    fn ratio_with_cuped_gives_every_cross_sum() {
        const X: u64 = 1;
        const REV: u64 = 2;
        const ORD: u64 = 4;
        let r = rows(vec![
            (0, 1000, X, 0),
            (0, 899, REV, 0), // before the pre window [900, 1000)
            (0, 950, REV, 0),
            (0, 1005, REV, 0),
            (0, 920, ORD, 0),
            (0, 930, ORD, 0),
            (0, 940, ORD, 0),
            (0, 1001, ORD, 0),
            (0, 1002, ORD, 0),
            (0, 1003, ORD, 0),
            (1, 1000, X, 1),
            (1, 1100, REV | ORD, 0),
        ]);
        // Revenue per row, in the sorted order: person 0 at 899, 920, 930, 940, 950, 1000, 1001, 1002, 1003,
        // 1005; person 1 at 1000, 1100.
        let rev = [
            100.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 1.5,
        ];
        assert_eq!(r.ts[4], 950);
        let revenue = Metric {
            denominator: Some(1),
            cuped_pre_window_us: Some(100),
            unit_values: true,
            ..metric(1, Aggregation::Sum)
        };
        let orders = Metric {
            cap: Some(2.0),
            ..metric(2, Aggregation::Count)
        };
        let s = spec(2, 0, 5000, 5000, vec![revenue, orders]);
        let values = vec![vec![Some(&rev[..]), None]];
        let arms = experiment(&[block(&r, true)], &values, 2, 1, &s);
        // Person 0: revenue 10, orders 3 capped to 2, pre revenue 3, pre orders 3 capped to 2.
        let a = &arms[0].metrics[0];
        assert_eq!(arms[0].n, 1);
        assert_eq!((a.value.sum, a.value.sum_squares), (10.0, 100.0));
        assert_eq!(
            a.denominator,
            Some(Moments {
                sum: 2.0,
                sum_squares: 4.0
            })
        );
        assert_eq!(
            a.pre,
            Some(Moments {
                sum: 3.0,
                sum_squares: 9.0
            })
        );
        assert_eq!(
            a.pre_denominator,
            Some(Moments {
                sum: 2.0,
                sum_squares: 4.0
            })
        );
        assert_eq!(
            a.cross,
            CrossSums {
                value_denominator: 20.0,
                value_pre: 30.0,
                value_pre_denominator: 20.0,
                denominator_pre: 6.0,
                denominator_pre_denominator: 4.0,
                pre_pre_denominator: 6.0,
            }
        );
        assert_eq!(a.unit_values, vec![10.0]);
        // The orders metric alone: 2 for person 0.
        assert_eq!(arms[0].metrics[1].value.sum, 2.0);
        // Person 1: revenue 1.5 over 1 order, nothing before exposure.
        let b = &arms[1].metrics[0];
        assert_eq!(arms[1].n, 1);
        assert_eq!((b.value.sum, b.value.sum_squares), (1.5, 2.25));
        assert_eq!(
            b.denominator,
            Some(Moments {
                sum: 1.0,
                sum_squares: 1.0
            })
        );
        assert_eq!(b.pre, Some(Moments::default()));
        assert_eq!(b.cross.value_denominator, 1.5);
        assert_eq!(b.cross.value_pre, 0.0);
        assert_eq!(b.unit_values, vec![1.5]);
    }

    #[test]
    fn accumulators_are_shared() {
        let m = metric(1, Aggregation::Count);
        let s = spec(
            2,
            0,
            1,
            1,
            vec![
                m,
                Metric {
                    denominator: Some(0),
                    cuped_pre_window_us: Some(5),
                    ..metric(2, Aggregation::Sum)
                },
                Metric {
                    cuped_pre_window_us: Some(5),
                    ..m
                },
            ],
        );
        // Metric 0's post; metric 1's post, pre and pre denominator (= metric 0's pre, shared with metric 2).
        let (accs, plans) = plan(&s);
        assert_eq!(accs.len(), 4);
        assert_eq!(plans[1].denominator.map(|d| d.0), Some(plans[0].value));
        assert_eq!(plans[1].pre_denominator, plans[2].pre);
    }
}
