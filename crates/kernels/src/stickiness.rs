//! Stickiness: how many persons did an event in exactly `n` of the buckets, for `n = 1..=buckets`.
//!
//! A person is active in a bucket when they have at least one row with the mask bit set whose timestamp the
//! bucket holds ([`Buckets::index`]; rows outside all buckets are ignored, so a bucket list starting at the range's
//! start and ending at its end gives `flywheel_truth::stickiness`). Persons active in no bucket are not counted.
//!
//! Breakdowns ([`BreakdownSource`], as in trends): each code gets its own histogram, computed as if the rows were
//! filtered to that code. With a person breakdown a person counts once, under their code. With row codes a person
//! counts once per code they used, with the number of buckets in which they had a row of that code: a person
//! active on Monday with code 0 and on Tuesday with codes 0 and 1 is in `out[0][1]` (2 days) and `out[1][0]`
//! (1 day). Rows whose code is `>= breakdown_values` are ignored; without a breakdown there is one histogram.
//!
//! One pass over the rows, sharded by person; per person (or per person and row code) the last active bucket and
//! the number of active buckets.

use crate::trends::{
    bucket_bounds, series_count, BreakdownSource, BucketAt, CodeSlots, OnePerPerson, PersonState,
    Scan, Sink,
};
use crate::{Block, Buckets};

/// `out[code][n - 1]`: the persons active (at least one row with mask bit `bit`) in exactly `n` of the `buckets`,
/// one histogram per breakdown code (one without a breakdown), each `buckets.len()` long. `blocks` are in time
/// order (see the crate docs); persons are `0..persons`, scanned on up to `threads` threads.
pub fn stickiness(
    blocks: &[Block<'_>],
    persons: u32,
    threads: usize,
    bit: u32,
    buckets: &Buckets,
    breakdown: BreakdownSource<'_>,
    breakdown_values: u32,
) -> Vec<Vec<u64>> {
    let codes = series_count(breakdown, breakdown_values);
    let n = buckets.len();
    if n == 0 {
        return vec![Vec::new(); codes as usize];
    }
    let bounds = bucket_bounds(buckets);
    let scan = Scan {
        blocks,
        persons,
        threads,
        bit,
        breakdown,
        codes,
    };
    let parts = match breakdown {
        BreakdownSource::None | BreakdownSource::Person(_) => scan.run(
            |shard| ActiveSink {
                at: BucketAt::new(&bounds),
                active: OnePerPerson::new(shard, Active::NONE, breakdown),
            },
            |s| s.histogram(codes, n),
        ),
        BreakdownSource::Row => scan.run(
            |shard| ActiveSink {
                at: BucketAt::new(&bounds),
                active: CodeSlots::new(shard, Active::NONE),
            },
            |s| s.histogram(codes, n),
        ),
    };
    let mut out = vec![vec![0; n]; codes as usize];
    for part in parts {
        for (o, p) in out.iter_mut().zip(part) {
            for (o, p) in o.iter_mut().zip(p) {
                *o += p;
            }
        }
    }
    out
}

/// A (person, code)'s last active bucket and number of active buckets.
#[derive(Debug, Clone, Copy)]
struct Active {
    last: u32,
    buckets: u32,
}

impl Active {
    const NONE: Active = Active {
        last: u32::MAX,
        buckets: 0,
    };
}

struct ActiveSink<'b, S> {
    at: BucketAt<'b>,
    active: S,
}

impl<S: PersonState<Active>> ActiveSink<'_, S> {
    fn histogram(self, codes: u32, n: usize) -> Vec<Vec<u64>> {
        let mut out = vec![vec![0; n]; codes as usize];
        self.active.for_each(|code, a| {
            if a.buckets > 0 {
                out[code as usize][a.buckets as usize - 1] += 1;
            }
        });
        out
    }
}

impl<S: PersonState<Active>> Sink for ActiveSink<'_, S> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, code: u32, _value: f64) {
        let Some(b) = self.at.index(ts) else { return };
        let a = self.active.get(person, code);
        // A person's rows come in time order, so a bucket once left is never seen again.
        if a.last != b as u32 {
            a.last = b as u32;
            a.buckets += 1;
        }
    }
}
