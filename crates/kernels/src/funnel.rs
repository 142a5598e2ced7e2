//! Funnels: how far persons get through a sequence of steps within a conversion window.
//!
//! Every answer is derived from a person's **attempts**; a person counts once, through their best valid attempt.
//! Where `flywheel_truth::funnel` asks the same question (no exclusions), the step counts are exactly its answers.
//!
//! # Rows and steps
//!
//! A person's rows are taken in (time, log order), as the blocks deliver them (see the crate docs). Step `i`
//! matches a row when the row's `mask` has bit [`FunnelSpec::steps`]`[i]` (a bit of 64 or more matches nothing).
//! Several steps may share a bit (the same event twice in a funnel), and a row may match several steps: one row
//! still counts for at most one step of an attempt.
//!
//! # Attempts
//!
//! An attempt starts at an **entry** row whose timestamp lies in [`FunnelSpec::entry`] (`[start, end)`), and its
//! later steps must come at most [`FunnelSpec::window_us`] after the entry (inclusive: exactly `window_us` later
//! still counts). Its rows, `s[0]` (the entry) to `s[L - 1]` for an attempt reaching `L` steps, are:
//!
//! - [`Order::Ordered`]: the entry matches step 0; then, greedily, `s[i]` is the first row after `s[i - 1]`
//!   within the window that matches step `i` (other rows may come between). Greedy choices reach as far as any.
//! - [`Order::Strict`]: the entry matches step 0; `s[i]` is the row right after `s[i - 1]`, if it is within the
//!   window and matches step `i`; the attempt stops at the first row that does not continue it. *Every* row of
//!   the person counts here, whatever its mask: the caller passes all of a person's rows.
//! - [`Order::Unordered`]: the entry matches any step. The attempt reaches as many steps as can be given distinct
//!   rows among the rows from the entry on that lie within the window (a maximum matching of steps to rows; with
//!   one bit per event name this is, per event, the smaller of its steps and its rows). Its rows are the earliest
//!   that achieve it — scanning the window in order, a row joins when the rows joined so far and it can still be
//!   given distinct steps — so `s[0]` is the entry and `s[i]` is the `i`-th of them in time order ("step `i`" of
//!   an unordered funnel is the `i`-th step done, whichever it was). With a negative window no row, not even the
//!   entry, is within it: unordered attempts then reach nothing (ordered and strict ones reach their entry), as
//!   in the truth.
//!
//! # Exclusions
//!
//! An [`Exclusion`] `{bit, from_step: f, to_step: t}` makes an ordered or strict attempt **invalid** when a row
//! with `bit` comes strictly after its row `s[f]` and
//! - strictly before `s[t]`, when the attempt reached step `t`;
//! - while the attempt was still open, when it reached step `f` but not step `t`: for ordered funnels, any later
//!   row within the window; for strict funnels, only the row that stopped the attempt, if it was within the
//!   window (the attempt was over after it).
//!
//! Attempts that did not reach step `f` are not affected. Rows are rows: a row that is one of the attempt's own
//! steps strictly between `s[f]` and `s[t]` excludes it too if it has the bit (the API refuses an exclusion equal
//! to a step it spans, but property filters can overlap). An invalid attempt counts for nothing — not for its
//! entry step either — but the person may still count through another attempt. The attempt's rows are chosen as
//! above regardless of exclusions (a later repeat of a step does not rescue an attempt whose greedy row was
//! followed by an excluded event). Unordered funnels ignore exclusions (the query API refuses them, as PostHog
//! does).
//!
//! # Per person
//!
//! A person **enters** when they have a valid attempt, and their **best attempt** is the valid attempt reaching
//! the most steps, the earliest entry among equals. Everything else follows from it:
//!
//! - [`StepStats::reached`]: persons whose best attempt reaches step `i` (so the person counts for every step
//!   up to the furthest; for the truth's questions, exactly `flywheel_truth::funnel`).
//! - **Time to convert** to step `i ≥ 1`: `ts(s[i]) - ts(s[i - 1])` of the person's best attempt, over the persons
//!   reaching step `i`; [`StepStats::avg_time_us`] is its mean and [`StepStats::median_time_us`] its median (the
//!   mean of the two middle values for an even count). Both are `None` for step 0 and for a step nobody reached.
//! - **Breakdown** ([`FunnelSpec::breakdown`], the same [`BreakdownSource`] as trends): the person counts under one
//!   code. [`BreakdownSource::None`] gives one group; [`BreakdownSource::Person`] uses the person's code;
//!   [`BreakdownSource::Row`] uses the [`Block::breakdown`] code of a row of the best attempt chosen by
//!   [`FunnelSpec::attribution`]: [`Attribution::FirstTouch`] the entry `s[0]`, [`Attribution::LastTouch`] the
//!   furthest step reached `s[L - 1]`, [`Attribution::Step`]`(i)` the row `s[i]`, or the entry's when the best
//!   attempt stopped before step `i`. A person whose code is `>= breakdown_values` (or who is beyond the end of a
//!   person table, or whose chosen row is in a block without codes) is left out of
//!   [`FunnelResult::by_breakdown`] only; trend and persons still count them.
//! - **Trend** ([`FunnelSpec::trend`]): for each bucket, `entered` counts the persons with a valid attempt whose
//!   entry lies in the bucket, and `completed` those of them with such an attempt reaching the last step (a
//!   person can count in several buckets; entries outside every bucket are not counted).
//! - **Persons** ([`FunnelSpec::collect_persons`]): every entered person with the number of steps of their best
//!   attempt, in person order.
//!
//! # Cost
//!
//! Sharded by person ([`crate::par_shards`]). Each thread gathers the rows of a chunk of its persons (about
//! sixteen thousand rows) from every block into a scratch buffer in (person, time, log order) — a counting sort
//! by person, branch-free — with a compact mask per row (bit `k`: matches step `k`); only the rows the order
//! needs are kept (rows matching a step or an exclusion; every row for strict funnels). Then each person's rows,
//! from their first possible entry on:
//!
//! - strict: each entry's attempt is spelled out; it is at most `steps` consecutive rows.
//! - ordered, up to 32 gathered rows: each entry's attempt is spelled out, scanning its window.
//! - ordered, longer histories: all open attempts advance together, in one pass. Attempts are kept in entry
//!   order, and the levels they reached never increase along that order (an earlier entry is at least as far),
//!   so the attempts at one level are a contiguous run: a row matching step `k` moves the whole run at level `k`
//!   to `k + 1` by moving one boundary, and attempts whose window has passed are final. This stays exact per
//!   attempt — which the best attempt (earliest entry among the furthest) and the per-bucket trend need, and
//!   which windowFunnel's "latest entry per level" state cannot give — at O(steps) per row and per attempt.
//! - unordered: a sliding window over the entries with a count per step bit (a small bipartite matching when a
//!   row matches several step bits).
//!
//! No allocation or hashing per row: the scratch buffers are reused across persons and chunks. Extra memory is
//! the chunk's rows (about 20 bytes each; more when one person alone has more rows) plus, per thread, the open
//! attempts of the current person (`4 × steps + 24` bytes each) and one `i64` per (person, step reached) for the
//! median times.

use std::ops::Range;

use crate::trends::BreakdownSource;
use crate::{par_shards, Block, Buckets};

/// Most steps in a funnel.
pub const MAX_STEPS: usize = 20;

/// How steps must follow each other (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// In order; other rows may come between steps.
    Ordered,
    /// In order, with no other row of the person between consecutive steps.
    Strict,
    /// In any order, within the window from the entry.
    Unordered,
}

/// Rows with `bit` between two steps of an attempt invalidate it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    /// The `mask` bit of the excluded rows (64 or more matches nothing).
    pub bit: u32,
    /// The step after which the exclusion applies (0-based).
    pub from_step: usize,
    /// The step before which it applies; `from_step < to_step < steps.len()`.
    pub to_step: usize,
}

/// Which row of the best attempt gives its breakdown code, for [`BreakdownSource::Row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// The entry row (step 0).
    FirstTouch,
    /// The row of the furthest step reached.
    LastTouch,
    /// The row of this step (0-based), or the entry row when the attempt did not reach it.
    Step(usize),
}

/// A funnel question.
#[derive(Debug, Clone)]
pub struct FunnelSpec<'a> {
    /// The mask bit of each step, 1 to [`MAX_STEPS`] of them; several steps may share a bit.
    pub steps: Vec<u32>,
    /// How the steps must follow each other.
    pub order: Order,
    /// The conversion window in microseconds, inclusive.
    pub window_us: i64,
    /// The entry row's timestamp must lie in `[start, end)`.
    pub entry: Range<i64>,
    /// Rows that invalidate attempts (ordered and strict funnels only; at most 32).
    pub exclusions: Vec<Exclusion>,
    /// Where breakdown codes come from.
    pub breakdown: BreakdownSource<'a>,
    /// Number of breakdown codes (`0..breakdown_values`); ignored without a breakdown.
    pub breakdown_values: u32,
    /// Which row gives the code with [`BreakdownSource::Row`].
    pub attribution: Attribution,
    /// Entered and completed persons per bucket of the entry.
    pub trend: Option<Buckets>,
    /// Return each entered person with their furthest step.
    pub collect_persons: bool,
}

/// One step of a funnel, for one breakdown code.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    /// Persons whose best attempt reached this step.
    pub reached: u64,
    /// Mean time from the previous step, in µs, over the persons reaching this step (`None` for step 0 or nobody).
    pub avg_time_us: Option<f64>,
    /// Median time from the previous step, in µs (the mean of the two middle values for an even count).
    pub median_time_us: Option<f64>,
}

/// The answer to a [`FunnelSpec`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FunnelResult {
    /// `[code][step]`: one list of steps per breakdown code (one list without a breakdown).
    pub by_breakdown: Vec<Vec<StepStats>>,
    /// Per bucket of [`FunnelSpec::trend`]: `(entered, completed)` persons.
    pub trend: Option<Vec<(u64, u64)>>,
    /// With [`FunnelSpec::collect_persons`]: `(person, steps reached)` of every entered person, by person.
    pub persons: Vec<(u32, u8)>,
}

/// Computes a funnel over `blocks` (in time order, see the crate docs) for the dense persons `0..persons` (rows of
/// other persons are ignored), on up to `threads` threads.
///
/// # Panics
///
/// When the spec has no steps or more than [`MAX_STEPS`], an exclusion whose steps are not
/// `from_step < to_step < steps.len()`, more than 32 exclusions (ordered and strict funnels), or an
/// [`Attribution::Step`] beyond the last step.
pub fn funnel(
    blocks: &[Block<'_>],
    persons: u32,
    threads: usize,
    spec: &FunnelSpec<'_>,
) -> FunnelResult {
    let plan = Plan::new(spec);
    let parts = par_shards(persons, threads, |shard| {
        let mut acc = Acc::new(&plan);
        let mut work = Work::new(&plan);
        for_each_person(blocks, &shard, &plan, |person, rows| {
            work.person(&plan, person, rows, &mut acc);
        });
        acc
    });
    merge(&plan, parts)
}

// -----------------------------------------------------------------------------------------------------------------
// The spec, compiled.

/// A position or attempt index that is not there.
const NONE: u32 = u32::MAX;

/// Most exclusions (their bits take the upper half of a compact mask).
const MAX_EXCLUSIONS: usize = 32;

/// An exclusion, as a compact-mask bit.
struct Excl {
    bit: u64,
    from: usize,
    to: usize,
}

/// The spec, compiled. A person's pass sees **compact masks**: for ordered and strict funnels bit `k` is set when
/// the row matches step `k` and bit `32 + j` when it has exclusion `j`'s bit; for unordered funnels bit `c` is
/// set when the row has the `c`-th distinct step bit (a "class": steps sharing a mask bit share a class).
struct Plan<'a> {
    order: Order,
    n: usize,
    /// The compact bit of each step.
    step: [u64; MAX_STEPS],
    /// Ordered: the compact bits of steps 1 and later.
    later: u64,
    excl: Vec<Excl>,
    window: i64,
    entry: Range<i64>,
    compactor: Compactor,
    /// Keep every row (strict funnels), not only those with a compact bit.
    all_rows: bool,
    /// Unordered: the number of steps of each class.
    demand: Vec<u32>,
    breakdown: BreakdownSource<'a>,
    groups: usize,
    attribution: Attribution,
    trend: Option<&'a Buckets>,
    collect_persons: bool,
}

impl<'a> Plan<'a> {
    fn new(spec: &'a FunnelSpec<'a>) -> Plan<'a> {
        let n = spec.steps.len();
        assert!(
            (1..=MAX_STEPS).contains(&n),
            "a funnel has 1 to {MAX_STEPS} steps, not {n}"
        );
        for x in &spec.exclusions {
            assert!(
                x.from_step < x.to_step && x.to_step < n,
                "an exclusion spans steps from_step < to_step < {n}, not {}..{}",
                x.from_step,
                x.to_step
            );
        }
        if let Attribution::Step(i) = spec.attribution {
            assert!(i < n, "attribution to step {i} of a {n}-step funnel");
        }
        let unordered = spec.order == Order::Unordered;
        let exclusions: &[Exclusion] = if unordered { &[] } else { &spec.exclusions };
        assert!(
            exclusions.len() <= MAX_EXCLUSIONS,
            "at most {MAX_EXCLUSIONS} exclusions"
        );
        // What each mask bit contributes to the compact mask.
        let mut contrib = [0u64; 64];
        let mut step = [0u64; MAX_STEPS];
        let mut demand = Vec::new();
        let mut class_of_bit = [usize::MAX; 64];
        for (k, &bit) in spec.steps.iter().enumerate() {
            if bit >= 64 {
                continue;
            }
            let b = bit as usize;
            if unordered {
                if class_of_bit[b] == usize::MAX {
                    class_of_bit[b] = demand.len();
                    demand.push(0);
                }
                demand[class_of_bit[b]] += 1;
                step[k] = 1 << class_of_bit[b];
            } else {
                step[k] = 1 << k;
            }
            contrib[b] |= step[k];
        }
        let excl = exclusions
            .iter()
            .enumerate()
            .map(|(j, x)| {
                let bit = 1u64 << (32 + j);
                if x.bit < 64 {
                    contrib[x.bit as usize] |= bit;
                }
                Excl {
                    bit,
                    from: x.from_step,
                    to: x.to_step,
                }
            })
            .collect();
        let groups = match spec.breakdown {
            BreakdownSource::None => 1,
            BreakdownSource::Row | BreakdownSource::Person(_) => spec.breakdown_values as usize,
        };
        Plan {
            order: spec.order,
            n,
            step,
            later: step[1..n].iter().fold(0, |a, s| a | s),
            excl,
            window: spec.window_us,
            entry: spec.entry.clone(),
            compactor: Compactor::new(&contrib),
            all_rows: spec.order == Order::Strict,
            demand,
            breakdown: spec.breakdown,
            groups,
            attribution: spec.attribution,
            trend: spec.trend.as_ref(),
            collect_persons: spec.collect_persons,
        }
    }
}

/// Turns row masks into compact masks: one lookup table per byte of the mask holding a contributing bit (usually
/// one byte: the planner numbers its specs from 0).
struct Compactor {
    /// `(shift, table)`: `table[(mask >> shift) & 0xff]` is what that byte contributes.
    bytes: Vec<(u32, Box<[u64; 256]>)>,
    /// The contributing bits.
    bits: u64,
}

impl Compactor {
    fn new(contrib: &[u64; 64]) -> Compactor {
        let bits = (0..64).fold(0u64, |a, b| a | u64::from(contrib[b] != 0) << b);
        let bytes = (0..8u32)
            .filter(|&byte| (bits >> (8 * byte)) & 0xff != 0)
            .map(|byte| {
                let mut table = Box::new([0u64; 256]);
                for (v, out) in table.iter_mut().enumerate() {
                    for bit in 0..8 {
                        if v >> bit & 1 != 0 {
                            *out |= contrib[(8 * byte + bit) as usize];
                        }
                    }
                }
                (8 * byte, table)
            })
            .collect();
        Compactor { bytes, bits }
    }

    #[inline]
    fn apply(&self, mask: u64) -> u64 {
        match &self.bytes[..] {
            [(shift, table)] => table[((mask >> shift) & 0xff) as usize],
            bytes => bytes.iter().fold(0, |c, (shift, table)| {
                c | table[((mask >> shift) & 0xff) as usize]
            }),
        }
    }
}

// -----------------------------------------------------------------------------------------------------------------
// Gathering each person's rows.

/// One person's rows (those the pass needs), in (time, log order).
#[derive(Clone, Copy)]
struct Rows<'r> {
    ts: &'r [i64],
    /// Compact masks (see [`Plan`]).
    mask: &'r [u64],
    /// Row breakdown codes (`u32::MAX` from a block without codes); empty unless the breakdown is by row.
    code: &'r [u32],
}

/// Rows per gathered chunk of persons (on average): the chunk's buffers stay in the core's cache.
const CHUNK_ROWS: u64 = 1 << 14;

/// Calls `f` for every person of `shard` with at least one row the plan needs, in person order, with those rows
/// in (time, log order). The persons are taken a chunk at a time; each chunk's rows are copied from every block
/// (a counting sort by person: blocks are in time order, rows in a block are sorted by person).
fn for_each_person(
    blocks: &[Block<'_>],
    shard: &Range<u32>,
    plan: &Plan<'_>,
    mut f: impl FnMut(u32, Rows<'_>),
) {
    let codes = matches!(plan.breakdown, BreakdownSource::Row);
    let (compactor, all_rows) = (&plan.compactor, plan.all_rows);
    let ranges: Vec<Range<usize>> = blocks.iter().map(|b| b.rows_of(shard)).collect();
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    if total == 0 || (compactor.bits == 0 && !all_rows) {
        return;
    }
    let span = u64::from(shard.end - shard.start);
    let chunk = (CHUNK_ROWS * span / total as u64).clamp(1, span) as u32;
    let mut cursor: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    let mut hi = vec![0usize; blocks.len()];
    let (mut start, mut fill) = (Vec::<usize>::new(), Vec::<usize>::new());
    let (mut ts, mut mask, mut code) = (Vec::<i64>::new(), Vec::<u64>::new(), Vec::<u32>::new());
    let mut p0 = shard.start;
    while p0 < shard.end {
        let p1 = p0.saturating_add(chunk).min(shard.end);
        let width = (p1 - p0) as usize;
        // Count the chunk's rows per person (`start[i + 1]` counts person `p0 + i`), finding where the chunk
        // ends in each block on the way.
        start.clear();
        start.resize(width + 1, 0);
        for (b, block) in blocks.iter().enumerate() {
            let persons = &block.person[cursor[b]..ranges[b].end];
            let mut len = 0;
            while len < persons.len() && persons[len] < p1 {
                start[(persons[len] - p0) as usize + 1] += 1;
                len += 1;
            }
            hi[b] = cursor[b] + len;
        }
        for i in 0..width {
            start[i + 1] += start[i];
        }
        let rows = start[width];
        ts.resize(rows, 0);
        mask.resize(rows, 0);
        if codes {
            code.resize(rows, 0);
        }
        // Every row is written to its person's next slot, which only moves on for the rows the pass needs
        // (no branch on the mask).
        fill.clear();
        fill.extend_from_slice(&start[..width]);
        for (b, block) in blocks.iter().enumerate() {
            let run = cursor[b]..hi[b];
            let cols = Cols {
                person: &block.person[run.clone()],
                mask: &block.mask[run.clone()],
                ts: &block.ts[run.clone()],
            };
            let code = codes.then(|| (&mut code[..], block.breakdown.map(|c| &c[run.clone()])));
            scatter_block(
                cols, p0, &mut fill, &mut ts, &mut mask, code, all_rows, compactor,
            );
        }
        for i in 0..width {
            let (a, z) = (start[i], fill[i]);
            if a < z {
                let rows = Rows {
                    ts: &ts[a..z],
                    mask: &mask[a..z],
                    code: if codes { &code[a..z] } else { &[] },
                };
                f(p0 + i as u32, rows);
            }
        }
        cursor.copy_from_slice(&hi);
        p0 = p1;
    }
}

/// A block's rows for a chunk.
#[derive(Clone, Copy)]
struct Cols<'b> {
    person: &'b [u32],
    mask: &'b [u64],
    ts: &'b [i64],
}

/// Copies a block's rows for a chunk: every row is written to its person's next slot `fill[person - p0]`, which
/// only moves on for the rows the pass needs (no branch on the mask); `code(d, j)` copies row `j`'s code to slot
/// `d`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn scatter(
    cols: Cols<'_>,
    p0: u32,
    fill: &mut [usize],
    ts: &mut [i64],
    mask: &mut [u64],
    all_rows: bool,
    compact: impl Fn(u64) -> u64,
    mut code: impl FnMut(usize, usize),
) {
    let n = cols.person.len();
    let (masks, times) = (&cols.mask[..n], &cols.ts[..n]);
    for (j, &p) in cols.person.iter().enumerate() {
        let c = compact(masks[j]);
        let i = (p - p0) as usize;
        let d = fill[i];
        ts[d] = times[j];
        mask[d] = c;
        code(d, j);
        fill[i] = d + usize::from(all_rows | (c != 0));
    }
}

/// [`scatter`] with the compaction and the codes resolved once per block.
#[allow(clippy::too_many_arguments)]
fn scatter_block(
    cols: Cols<'_>,
    p0: u32,
    fill: &mut [usize],
    ts: &mut [i64],
    mask: &mut [u64],
    code: Option<(&mut [u32], Option<&[u32]>)>,
    all_rows: bool,
    compactor: &Compactor,
) {
    match (&compactor.bytes[..], code) {
        ([(shift, table)], None) => {
            let (shift, table) = (*shift, &**table);
            let compact = |m: u64| table[((m >> shift) & 0xff) as usize];
            scatter(cols, p0, fill, ts, mask, all_rows, compact, |_, _| {});
        }
        (_, None) => {
            let compact = |m| compactor.apply(m);
            scatter(cols, p0, fill, ts, mask, all_rows, compact, |_, _| {});
        }
        (_, Some((out, Some(codes)))) => {
            let compact = |m| compactor.apply(m);
            scatter(cols, p0, fill, ts, mask, all_rows, compact, |d, j| {
                out[d] = codes[j]
            });
        }
        (_, Some((out, None))) => {
            let compact = |m| compactor.apply(m);
            scatter(cols, p0, fill, ts, mask, all_rows, compact, |d, _| {
                out[d] = u32::MAX
            });
        }
    }
}

// -----------------------------------------------------------------------------------------------------------------
// One person.

/// An attempt, by the position of its entry among the person's rows.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// The entry's time.
    ts: i64,
    pos: u32,
    /// Steps reached (set when done).
    level: u8,
    valid: bool,
    /// No further step or exclusion can change it.
    done: bool,
}

/// Ordered funnels over at most this many gathered rows of a person scan each entry's window; longer histories
/// advance all open attempts together (linear in rows whatever the number of entries).
const SMALL: usize = 32;

/// Drop finished attempts from the front of the scratch arena once this many have piled up.
const COMPACT_AT: usize = 64;

/// Per-thread scratch for one person at a time.
struct Work {
    n: usize,
    /// The person's attempts in entry order; `path[i * n + k]` is attempt `i`'s row for step `k`.
    att: Vec<Attempt>,
    path: Vec<u32>,
    /// Attempts before `head` are folded into the person's results.
    head: usize,
    /// Per exclusion, the position of the last row with its bit so far (-1: none).
    last_x: Vec<i64>,
    best_level: usize,
    best_pos: u32,
    best_path: [u32; MAX_STEPS],
    /// The trend bucket of the entries being folded, and whether one of them completed.
    bucket: Option<usize>,
    bucket_done: bool,
    // Unordered: a slot per row (its step class, or a multi-step pattern after the classes), and per slot its
    // mask and count of rows in the window.
    slot: Vec<u32>,
    slot_mask: Vec<u64>,
    count: Vec<u32>,
    multi_in_window: u32,
    used: Vec<u32>,
    seen: Vec<bool>,
}

impl Work {
    fn new(plan: &Plan<'_>) -> Work {
        Work {
            n: plan.n,
            att: Vec::new(),
            path: Vec::new(),
            head: 0,
            last_x: vec![-1; plan.excl.len()],
            best_level: 0,
            best_pos: 0,
            best_path: [0; MAX_STEPS],
            bucket: None,
            bucket_done: false,
            slot: Vec::new(),
            slot_mask: Vec::new(),
            count: Vec::new(),
            multi_in_window: 0,
            used: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn person(&mut self, plan: &Plan<'_>, person: u32, rows: Rows<'_>, acc: &mut Acc) {
        // Rows before the first entry change nothing: every attempt and exclusion span starts at an entry.
        let can_enter = match plan.order {
            Order::Ordered | Order::Strict => plan.step[0],
            Order::Unordered => u64::MAX,
        };
        let Some(first) = rows
            .mask
            .iter()
            .zip(rows.ts)
            .position(|(&m, t)| m & can_enter != 0 && plan.entry.contains(t))
        else {
            return;
        };
        let rows = Rows {
            ts: &rows.ts[first..],
            mask: &rows.mask[first..],
            code: rows.code.get(first..).unwrap_or(&[]),
        };
        self.att.clear();
        self.path.clear();
        self.head = 0;
        self.last_x.fill(-1);
        self.best_level = 0;
        self.bucket = None;
        self.bucket_done = false;
        match plan.order {
            Order::Ordered if rows.ts.len() > SMALL => self.ordered(plan, rows.ts, rows.mask, acc),
            Order::Ordered | Order::Strict => self.each_entry(plan, rows.ts, rows.mask, acc),
            Order::Unordered => self.unordered(plan, rows.ts, rows.mask, acc),
        }
        self.finish_person(plan, person, rows, acc);
    }

    /// Ordered: the open attempts, in entry order from `lo`, have non-increasing levels; `end[k]` (`k` in
    /// `1..=n`) is the first attempt whose level is below `k`, read as `max(end[k], lo)` (`end[n + 1]` stays 0,
    /// i.e. `lo`), so the attempts at level `k` are `end[k + 1]..end[k]`.
    fn ordered(&mut self, plan: &Plan<'_>, ts: &[i64], mask: &[u64], acc: &mut Acc) {
        let n = self.n;
        let window = plan.window;
        let mut end = [0u32; MAX_STEPS + 2];
        let mut lo = 0usize;
        // After this time the oldest open attempt is over.
        let mut deadline = i64::MAX;
        for (r, (&t, &m)) in ts.iter().zip(mask).enumerate() {
            // Attempts whose window has passed are final (checked at every gathered row: exclusion rows too).
            if t > deadline {
                while lo < self.att.len() && t - self.att[lo].ts > window {
                    let level = (1..=n).rev().find(|&k| lo < end[k] as usize).unwrap_or(1);
                    self.close(plan, lo, level);
                    lo += 1;
                }
                deadline = self
                    .att
                    .get(lo)
                    .map_or(i64::MAX, |a| a.ts.saturating_add(window));
                self.fold_done(plan, ts, acc);
                if self.head == self.att.len() {
                    self.att.clear();
                    self.path.clear();
                    self.head = 0;
                    lo = 0;
                    end = [0; MAX_STEPS + 2];
                } else if self.head >= COMPACT_AT && 2 * self.head >= self.att.len() {
                    let h = self.head;
                    self.compact();
                    lo -= h;
                    for e in &mut end {
                        *e = e.saturating_sub(h as u32);
                    }
                }
            }
            // The steps this row matches, from the last: each attempt moves at most one step per row.
            let mut later = m & plan.later;
            while later != 0 {
                let k = 63 - later.leading_zeros() as usize;
                later &= !(1 << k);
                let (a, b) = ((end[k + 1] as usize).max(lo), (end[k] as usize).max(lo));
                if a < b {
                    for i in a..b {
                        self.path[i * n + k] = r as u32;
                        self.reached(plan, i, k);
                    }
                    end[k + 1] = b as u32;
                }
            }
            if !plan.excl.is_empty() {
                self.note_exclusions(plan, r, m);
            }
            if m & plan.step[0] != 0 && plan.entry.contains(&t) {
                if lo == self.att.len() {
                    deadline = t.saturating_add(window);
                }
                self.open(r, t);
                end[1] = self.att.len() as u32;
            }
        }
        for i in lo..self.att.len() {
            let level = (1..=n).rev().find(|&k| i < end[k] as usize).unwrap_or(1);
            self.close(plan, i, level);
        }
        self.fold_done(plan, ts, acc);
    }

    /// Ordered and strict funnels, one entry at a time: each attempt spelled out as in the module docs, in entry
    /// order. Strict attempts take at most `n` rows; ordered ones are only taken this way for small histories
    /// (at most [`SMALL`] rows), each scanning its window.
    fn each_entry(&mut self, plan: &Plan<'_>, ts: &[i64], mask: &[u64], acc: &mut Acc) {
        let n = self.n;
        let strict = plan.order == Order::Strict;
        let mut path = [0u32; MAX_STEPS];
        for (e, (&t0, &m0)) in ts.iter().zip(mask).enumerate() {
            if m0 & plan.step[0] == 0 || !plan.entry.contains(&t0) {
                continue;
            }
            path[0] = e as u32;
            let mut level = 1;
            // Ends at the first row beyond the window, or (strict) at the row that did not continue the attempt.
            let mut r = e + 1;
            while level < n && r < ts.len() && ts[r] - t0 <= plan.window {
                if mask[r] & plan.step[level] != 0 {
                    path[level] = r as u32;
                    level += 1;
                } else if strict {
                    break;
                }
                r += 1;
            }
            // The rows after the last step while the attempt was open: up to the window's end, or the row that
            // stopped a strict attempt.
            let open_until = if strict && r < ts.len() && ts[r] - t0 <= plan.window {
                r + 1
            } else {
                r
            };
            let valid = plan.excl.iter().all(|x| {
                if x.from >= level {
                    return true;
                }
                let until = if x.to < level {
                    path[x.to] as usize
                } else {
                    open_until
                };
                let from = path[x.from] as usize + 1;
                mask[from..until.max(from)].iter().all(|&m| m & x.bit == 0)
            });
            if self.fold(plan, e as u32, level, valid, ts, acc) {
                self.best_path[..level].copy_from_slice(&path[..level]);
            }
        }
    }

    /// Unordered: entries in order, with the rows of the current entry's window counted per slot.
    fn unordered(&mut self, plan: &Plan<'_>, ts: &[i64], mask: &[u64], acc: &mut Acc) {
        let classes = plan.demand.len();
        self.slot_mask.clear();
        self.slot_mask.extend((0..classes).map(|c| 1u64 << c));
        self.slot.clear();
        for &p in mask {
            let s = if p.is_power_of_two() {
                p.trailing_zeros() as usize
            } else {
                match self.slot_mask[classes..].iter().position(|&q| q == p) {
                    Some(j) => classes + j,
                    None => {
                        self.slot_mask.push(p);
                        self.slot_mask.len() - 1
                    }
                }
            };
            self.slot.push(s as u32);
        }
        self.count.clear();
        self.count.resize(self.slot_mask.len(), 0);
        self.multi_in_window = 0;
        let (mut lo, mut hi) = (0usize, 0usize);
        for e in 0..ts.len() {
            if !plan.entry.contains(&ts[e]) {
                continue;
            }
            while lo < e {
                if lo < hi {
                    self.window_row(lo, classes, false);
                }
                lo += 1;
            }
            hi = hi.max(lo);
            while hi < ts.len() && ts[hi] - ts[e] <= plan.window {
                self.window_row(hi, classes, true);
                hi += 1;
            }
            let level = self.window_reach(plan);
            if level > 0 {
                self.fold(plan, e as u32, level, true, ts, acc);
            }
        }
        if self.best_level > 0 {
            self.unordered_path(plan, ts, mask);
        }
    }

    fn window_row(&mut self, r: usize, classes: usize, add: bool) {
        let s = self.slot[r] as usize;
        let multi = u32::from(s >= classes);
        if add {
            self.count[s] += 1;
            self.multi_in_window += multi;
        } else {
            self.count[s] -= 1;
            self.multi_in_window -= multi;
        }
    }

    /// Steps reached in the current window: a maximum matching of steps to the counted rows.
    fn window_reach(&mut self, plan: &Plan<'_>) -> usize {
        if self.multi_in_window == 0 {
            return plan
                .demand
                .iter()
                .zip(&self.count)
                .map(|(&d, &c)| d.min(c) as usize)
                .sum();
        }
        let slots = self.slot_mask.len();
        self.used.clear();
        self.used.resize(slots, 0);
        let mut assign = [NONE; MAX_STEPS];
        let mut reached = 0;
        for s in 0..plan.n {
            self.seen.clear();
            self.seen.resize(slots, false);
            if augment_slot(
                s,
                &plan.step[..plan.n],
                &self.slot_mask,
                &self.count,
                &mut self.used,
                &mut assign,
                &mut self.seen,
            ) {
                reached += 1;
            }
        }
        reached
    }

    /// The rows of the best unordered attempt: scanning its window in order, a row joins when the rows joined so
    /// far and it can be given distinct steps.
    fn unordered_path(&mut self, plan: &Plan<'_>, ts: &[i64], mask: &[u64]) {
        let e = self.best_pos as usize;
        let classes = plan.demand.len();
        // With one class per row (the usual case), a row joins while its class has steps left.
        let single = self.slot_mask.len() == classes;
        let mut left = [0u32; MAX_STEPS];
        left[..classes].copy_from_slice(&plan.demand);
        let mut owner = [NONE; MAX_STEPS];
        let mut joined = 0;
        for r in e..ts.len() {
            if joined == self.best_level || ts[r] - ts[e] > plan.window {
                break;
            }
            let joins = if single {
                let c = self.slot[r] as usize;
                let free = left[c] > 0;
                left[c] -= u32::from(free);
                free
            } else {
                let mut seen = [false; MAX_STEPS];
                augment_row(r, mask, &plan.step[..plan.n], &mut owner, &mut seen)
            };
            if joins {
                self.best_path[joined] = r as u32;
                joined += 1;
            }
        }
        debug_assert_eq!(joined, self.best_level);
    }

    /// Starts an attempt at row `r`; returns its index.
    fn open(&mut self, r: usize, ts: i64) -> usize {
        self.att.push(Attempt {
            ts,
            pos: r as u32,
            level: 0,
            valid: true,
            done: false,
        });
        self.path.extend(std::iter::repeat_n(r as u32, self.n));
        self.att.len() - 1
    }

    /// Attempt `i` just reached step `k` (its row is in `path`): exclusions ending at `k` look for a row since
    /// step `from`.
    fn reached(&mut self, plan: &Plan<'_>, i: usize, k: usize) {
        let base = i * self.n;
        for (x, &last) in plan.excl.iter().zip(&self.last_x) {
            if x.to == k && last > i64::from(self.path[base + x.from]) {
                self.att[i].valid = false;
            }
        }
    }

    /// Attempt `i` ends with `level` steps: exclusions it reached the start of but not the end of look for a row
    /// since step `from` among the rows so far.
    fn close(&mut self, plan: &Plan<'_>, i: usize, level: usize) {
        let base = i * self.n;
        for (x, &last) in plan.excl.iter().zip(&self.last_x) {
            if x.from < level && level <= x.to && last > i64::from(self.path[base + x.from]) {
                self.att[i].valid = false;
            }
        }
        let a = &mut self.att[i];
        a.level = level as u8;
        a.done = true;
    }

    fn note_exclusions(&mut self, plan: &Plan<'_>, r: usize, m: u64) {
        for (x, last) in plan.excl.iter().zip(&mut self.last_x) {
            if m & x.bit != 0 {
                *last = r as i64;
            }
        }
    }

    /// Folds the done attempts at the front, in entry order.
    fn fold_done(&mut self, plan: &Plan<'_>, ts: &[i64], acc: &mut Acc) {
        while self.head < self.att.len() && self.att[self.head].done {
            let a = self.att[self.head];
            if self.fold(plan, a.pos, a.level as usize, a.valid, ts, acc) {
                let base = self.head * self.n;
                let level = a.level as usize;
                self.best_path[..level].copy_from_slice(&self.path[base..base + level]);
            }
            self.head += 1;
        }
    }

    /// Drops the folded attempts.
    fn compact(&mut self) {
        self.att.drain(..self.head);
        self.path.drain(..self.head * self.n);
        self.head = 0;
    }

    /// Takes a finished attempt (in entry order) into the person's results; true when it is the new best.
    fn fold(
        &mut self,
        plan: &Plan<'_>,
        pos: u32,
        level: usize,
        valid: bool,
        ts: &[i64],
        acc: &mut Acc,
    ) -> bool {
        if !valid || level == 0 {
            return false;
        }
        if let Some(b) = plan.trend.and_then(|b| b.index(ts[pos as usize])) {
            if self.bucket != Some(b) {
                self.flush_bucket(acc);
                self.bucket = Some(b);
            }
            self.bucket_done |= level == plan.n;
        }
        if level > self.best_level {
            self.best_level = level;
            self.best_pos = pos;
            true
        } else {
            false
        }
    }

    fn flush_bucket(&mut self, acc: &mut Acc) {
        if let Some(b) = self.bucket.take() {
            acc.trend[b].0 += 1;
            acc.trend[b].1 += u64::from(self.bucket_done);
            self.bucket_done = false;
        }
    }

    fn finish_person(&mut self, plan: &Plan<'_>, person: u32, rows: Rows<'_>, acc: &mut Acc) {
        self.flush_bucket(acc);
        let level = self.best_level;
        if level == 0 {
            return;
        }
        let path = &self.best_path[..level];
        let code = match plan.breakdown {
            BreakdownSource::None => Some(0),
            BreakdownSource::Person(codes) => codes.get(person as usize).copied(),
            BreakdownSource::Row => {
                let row = match plan.attribution {
                    Attribution::FirstTouch => path[0],
                    Attribution::LastTouch => path[level - 1],
                    Attribution::Step(i) => path.get(i).copied().unwrap_or(path[0]),
                };
                Some(rows.code[row as usize])
            }
        };
        if let Some(code) = code.map(|c| c as usize).filter(|&c| c < plan.groups) {
            let base = code * plan.n;
            for r in &mut acc.reached[base..base + level] {
                *r += 1;
            }
            for i in 1..level {
                let dt = rows.ts[path[i] as usize] - rows.ts[path[i - 1] as usize];
                acc.times[base + i].push(dt);
            }
        }
        if plan.collect_persons {
            acc.persons.push((person, level as u8));
        }
    }
}

/// Kuhn's augmenting path for step `s` over row slots with capacities (`count`), `used` of them taken.
fn augment_slot(
    s: usize,
    step: &[u64],
    slot_mask: &[u64],
    count: &[u32],
    used: &mut [u32],
    assign: &mut [u32; MAX_STEPS],
    seen: &mut [bool],
) -> bool {
    for j in 0..slot_mask.len() {
        if seen[j] || count[j] == 0 || slot_mask[j] & step[s] == 0 {
            continue;
        }
        seen[j] = true;
        if used[j] < count[j] {
            used[j] += 1;
            assign[s] = j as u32;
            return true;
        }
        for s2 in 0..step.len() {
            if assign[s2] == j as u32
                && augment_slot(s2, step, slot_mask, count, used, assign, seen)
            {
                assign[s] = j as u32;
                return true;
            }
        }
    }
    false
}

/// Kuhn's augmenting path for row `r` over the steps (`owner[s]`: the row holding step `s`).
fn augment_row(
    r: usize,
    mask: &[u64],
    step: &[u64],
    owner: &mut [u32; MAX_STEPS],
    seen: &mut [bool; MAX_STEPS],
) -> bool {
    for s in 0..step.len() {
        if seen[s] || mask[r] & step[s] == 0 {
            continue;
        }
        seen[s] = true;
        if owner[s] == NONE || augment_row(owner[s] as usize, mask, step, owner, seen) {
            owner[s] = r as u32;
            return true;
        }
    }
    false
}

// -----------------------------------------------------------------------------------------------------------------
// Results.

/// One thread's results.
struct Acc {
    /// `[code * n + step]`.
    reached: Vec<u64>,
    times: Vec<Vec<i64>>,
    trend: Vec<(u64, u64)>,
    persons: Vec<(u32, u8)>,
}

impl Acc {
    fn new(plan: &Plan<'_>) -> Acc {
        let cells = plan.groups * plan.n;
        Acc {
            reached: vec![0; cells],
            times: vec![Vec::new(); cells],
            trend: vec![(0, 0); plan.trend.map_or(0, Buckets::len)],
            persons: Vec::new(),
        }
    }
}

fn merge(plan: &Plan<'_>, parts: Vec<Acc>) -> FunnelResult {
    let mut parts = parts.into_iter();
    let mut all = parts.next().expect("at least one shard");
    for p in parts {
        for (a, b) in all.reached.iter_mut().zip(&p.reached) {
            *a += b;
        }
        for (a, b) in all.times.iter_mut().zip(p.times) {
            a.extend(b);
        }
        for (a, b) in all.trend.iter_mut().zip(&p.trend) {
            a.0 += b.0;
            a.1 += b.1;
        }
        all.persons.extend(p.persons);
    }
    let n = plan.n;
    let by_breakdown = (0..plan.groups)
        .map(|g| {
            (0..n)
                .map(|i| {
                    let times = &mut all.times[g * n + i];
                    StepStats {
                        reached: all.reached[g * n + i],
                        avg_time_us: mean(times),
                        median_time_us: median(times),
                    }
                })
                .collect()
        })
        .collect();
    FunnelResult {
        by_breakdown,
        trend: plan.trend.map(|_| all.trend),
        persons: all.persons,
    }
}

fn mean(v: &[i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let sum: i128 = v.iter().map(|&x| i128::from(x)).sum();
    Some(sum as f64 / v.len() as f64)
}

/// The median (the mean of the two middle values for an even count); reorders `v`.
fn median(v: &mut [i64]) -> Option<f64> {
    let len = v.len();
    if len == 0 {
        return None;
    }
    let (_, &mut hi, _) = v.select_nth_unstable(len / 2);
    if len % 2 == 1 {
        return Some(hi as f64);
    }
    let lo = *v[..len / 2].iter().max().expect("not empty");
    Some((i128::from(lo) + i128::from(hi)) as f64 / 2.0)
}
