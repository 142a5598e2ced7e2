//! Lifecycle: per bucket, the persons doing an event who are new, returning, resurrecting or dormant.
//!
//! A person is *active* in a bucket when they have a row with the mask bit set in it. The buckets are
//! `buckets.starts[i]..bucket_end(i)`, and the bucket before the first one, `previous_start..starts[0]`, only serves
//! as the "previous" bucket of bucket 0 (a `previous_start` after `starts[0]` is taken as `starts[0]`: an empty
//! previous bucket). For each bucket `i`, a person active in it is exactly one of:
//!
//! - **new**: no matching row before `starts[i]` (this bucket holds their first matching row ever);
//! - **returning**: active in the previous bucket too;
//! - **resurrecting**: not active in the previous bucket, but with a matching row at some earlier time;
//!
//! and a person not active in it is **dormant** when active in the previous bucket (clients show it negative).
//!
//! "Ever" and "earlier" mean: in the blocks given, so the caller passes a person's whole history (all blocks from
//! the first event on), not only the range. Rows before `previous_start` are earlier activity (they make a person
//! resurrecting rather than new) but are in no bucket; rows at or after `buckets.end` are ignored. With calendar
//! buckets (every row in some bucket) this is `flywheel_truth::lifecycle`; with the project's own boundaries
//! (time zones) rows may fall before the previous bucket and still count as earlier activity.
//!
//! One pass over the rows, sharded by person, with one `u32` of state per person: the bucket of their last
//! matching row.

use crate::trends::{BreakdownSource, Cursor, Scan, Sink};
use crate::{Block, Buckets};

/// Lifecycle counts, one per bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Active in the bucket, with no matching row before it.
    pub new: Vec<u64>,
    /// Active in the bucket and in the one before.
    pub returning: Vec<u64>,
    /// Active in the bucket, not in the one before, and active at some earlier time.
    pub resurrecting: Vec<u64>,
    /// Active in the bucket before, not in this one.
    pub dormant: Vec<u64>,
}

impl Lifecycle {
    fn zeros(n: usize) -> Self {
        Lifecycle {
            new: vec![0; n],
            returning: vec![0; n],
            resurrecting: vec![0; n],
            dormant: vec![0; n],
        }
    }

    fn add(&mut self, o: &Lifecycle) {
        for (a, b) in [
            (&mut self.new, &o.new),
            (&mut self.returning, &o.returning),
            (&mut self.resurrecting, &o.resurrecting),
            (&mut self.dormant, &o.dormant),
        ] {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        }
    }
}

/// Lifecycle of the persons `0..persons` over `buckets`, for the rows with mask bit `bit`. `blocks` are in time
/// order (see the crate docs) and cover all history; `previous_start` is the start of the bucket before
/// `buckets.starts[0]`. Scans on up to `threads` threads.
pub fn lifecycle(
    blocks: &[Block<'_>],
    persons: u32,
    threads: usize,
    bit: u32,
    buckets: &Buckets,
    previous_start: i64,
) -> Lifecycle {
    let n = buckets.len();
    let Some(&first) = buckets.starts.first() else {
        return Lifecycle::default();
    };
    // Position of a timestamp among these: 0 before the previous bucket, 1 in it, 2 + i in bucket i, n + 2 after.
    let mut bounds = Vec::with_capacity(n + 2);
    bounds.push(previous_start.min(first));
    bounds.extend_from_slice(&buckets.starts);
    bounds.push(buckets.end);
    let scan = Scan {
        blocks,
        persons,
        threads,
        bit,
        breakdown: BreakdownSource::None,
        codes: 1,
    };
    let parts = scan.run(
        |shard| LifecycleSink {
            at: Cursor::new(&bounds),
            n,
            last: vec![NEVER; shard.len()],
            out: Lifecycle::zeros(n),
        },
        LifecycleSink::finish,
    );
    let mut out = Lifecycle::zeros(n);
    for part in &parts {
        out.add(part);
    }
    out
}

/// A person's last activity: [`NEVER`], or one plus the position (among the lifecycle bounds) of their last
/// matching row: 1 before the previous bucket, 2 in it, 3 + i in bucket i.
const NEVER: u32 = 0;

struct LifecycleSink<'b> {
    at: Cursor<'b>,
    n: usize,
    last: Vec<u32>,
    out: Lifecycle,
}

impl LifecycleSink<'_> {
    /// Persons whose last activity is the previous bucket or a bucket but the last are dormant in the next one.
    fn finish(mut self) -> Lifecycle {
        for &last in &self.last {
            if last >= 2 && ((last - 2) as usize) < self.n {
                self.out.dormant[(last - 2) as usize] += 1;
            }
        }
        self.out
    }
}

impl Sink for LifecycleSink<'_> {
    #[inline(always)]
    fn row(&mut self, person: usize, ts: i64, _code: u32, _value: f64) {
        let position = self.at.position(ts);
        if position > self.n + 1 {
            return;
        }
        let now = position as u32 + 1;
        let last = self.last[person];
        // Rows come in time order per person: `now < last` cannot happen, `now == last` adds nothing.
        if now <= last {
            return;
        }
        self.last[person] = now;
        if last >= 2 && last + 1 < now {
            // Active in `last`, not in the bucket after it.
            self.out.dormant[(last - 2) as usize] += 1;
        }
        if now >= 3 {
            let i = (now - 3) as usize;
            if last + 1 == now {
                self.out.returning[i] += 1;
            } else if last != NEVER {
                self.out.resurrecting[i] += 1;
            } else {
                self.out.new[i] += 1;
            }
        }
    }
}
