//! The queryable side of the embedded engine: every project's events in memory, by UTC day, in a compact form the
//! kernels scan, backed by columnar segments on disk.
//!
//! **What is in memory.** Per event: its distinct id (an index into the project's distinct-id dictionary), its time
//! and its event name (an index into the project's event-name dictionary) — 16 bytes. Properties stay in the
//! segments and are read column by column when a query filters or breaks down by them; events not yet sealed into
//! a segment (the *tail*) keep their properties text in memory.
//!
//! **Persons.** Events store distinct ids; the person of a row is resolved when a query runs, from the mapping the
//! identity consumer maintains ([`EventTables::assign`], [`EventTables::merge`], fed by the metadata store's
//! change feed). A merge therefore changes the person of every past event of the merged person at once, with no
//! rewrite: the *person-id override* of the design brief is this mapping. Each person gets a dense id (`u32`) for
//! the kernels; a distinct id that never got a person (events with `$process_person_profile: false`) is its own
//! person.
//!
//! **Sorted views.** The kernels want each partition sorted by (person, time, log order). A partition keeps a
//! cached sorted view; a query re-sorts a partition only when rows were added to it or when a merge changed the
//! person of one of its rows (checked against the cached view, a linear pass), so static data is sorted once.
//!
//! **Segments.** [`EventTables::seal`] writes each partition's tail as one Parquet segment (in sorted-view order:
//! by the dense person at build time, then time; see [`crate::columnar`]) and commits the manifest with the intake-log position the segments cover;
//! on start [`EventTables::open`] loads the segments' core columns, and the caller replays the log from
//! [`EventTables::lsn`] into the tail.
//!
//! **Compaction.** Sealing every few minutes leaves many small segments per day, and a property read opens each.
//! [`EventTables::compact`] merges all the sealed segments of a day into one, once the day is over
//! ([`COMPACT_AFTER_DAY_END_US`] after its end; late additions to a past day wait until they are an eighth of it
//! or [`COMPACT_ENDED_SEGMENTS`] segments) or as soon as it has [`COMPACT_SEGMENTS`] of them: rows sorted by
//! the person *now* (merges since the seals applied), then time, then previous storage order, every column kept.
//! The file is written outside the state lock (under the seal lock, one day at a time); the manifest commit swaps
//! the new segment in for the old ones, ahead of any newer segment or tail of the day. A replaced file is only
//! *retired*: it is deleted once no copy of a partition that lists it (a snapshot's) is alive, checked on every
//! `compact`, `seal` and [`EventTables::collect_retired`]. A crash between writing and committing leaves the new
//! file unlisted; after the commit, the old ones; [`EventTables::open`] deletes segment files the manifest does not
//! list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, DictionaryArray};

use crate::columnar::{
    read_segment, row_properties, write_segment, Manifest, SegmentMeta, SegmentRow,
};
use crate::{EngineError, EventRef};

mod erase;
mod identity;
mod recent;
pub use erase::{Erase, EraseStats};
pub use recent::{RecentFilter, StoredEvent};

/// Microseconds in a day.
pub const DAY_US: i64 = 86_400_000_000;

/// Marks a distinct id without a person yet.
const NO_PERSON: u32 = u32::MAX;

/// The UTC day of a time.
pub fn partition_of(ts_us: i64) -> i32 {
    ts_us.div_euclid(DAY_US) as i32
}

/// Where a partition's rows come from, in storage order.
#[derive(Debug, Clone)]
enum Source {
    /// Rows of a sealed segment file, in file order. The file name (relative to the segment directory) is shared by
    /// every copy of the partition that lists the file — the tables' and every snapshot's — so its strong count
    /// tells whether anything may still read the file once compaction replaced it (see
    /// [`EventTables::collect_retired`]).
    Segment { file: Arc<str>, rows: Range<usize> },
}

/// An unsealed event's remaining fields.
#[derive(Debug, Clone)]
struct TailRow {
    uuid: u128,
    properties: Box<str>,
}

/// One UTC day of one project.
#[derive(Debug, Default)]
pub struct Partition {
    /// Distinct-id index per row, storage order.
    did: Vec<u32>,
    /// Time per row.
    ts: Vec<i64>,
    /// Event-name index per row.
    event: Vec<u32>,
    /// Sealed rows come first, described by `sources`; the tail follows.
    sources: Vec<Source>,
    tail: Vec<TailRow>,
    /// The cached sorted view and the identity version it was last known valid for.
    sorted: Mutex<Option<(u64, Arc<Sorted>)>>,
}

impl Clone for Partition {
    fn clone(&self) -> Self {
        Partition {
            did: self.did.clone(),
            ts: self.ts.clone(),
            event: self.event.clone(),
            sources: self.sources.clone(),
            tail: self.tail.clone(),
            sorted: Mutex::new(self.sorted.lock().expect("sorted view lock").clone()),
        }
    }
}

/// A partition sorted for the kernels: rows by (person, time, storage order).
#[derive(Debug)]
pub struct Sorted {
    /// Storage row of each sorted row.
    pub order: Vec<u32>,
    /// Dense person per sorted row.
    pub person: Vec<u32>,
    /// Time per sorted row.
    pub ts: Vec<i64>,
    /// Event-name index per sorted row.
    pub event: Vec<u32>,
}

impl Partition {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// True when the partition has no rows.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Rows not sealed yet.
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// The view sorted by (person, time, storage order) under `resolved` (distinct id → dense person) at
    /// `identity_version`; cached until rows are added or a merge moves one of the partition's rows to another
    /// person. Same version: no check at all; a newer one: a linear check, and a re-sort only if a row moved.
    pub fn sorted(&self, resolved: &[u32], identity_version: u64) -> Arc<Sorted> {
        let mut cache = self.sorted.lock().expect("sorted view lock");
        if let Some((version, s)) = cache.as_mut() {
            if s.order.len() == self.len() {
                let still_valid = *version == identity_version
                    || s.order
                        .iter()
                        .zip(&s.person)
                        .all(|(&row, &p)| resolved[self.did[row as usize] as usize] == p);
                if still_valid {
                    *version = (*version).max(identity_version);
                    return s.clone();
                }
            }
        }
        let person: Vec<u32> = self.did.iter().map(|&d| resolved[d as usize]).collect();
        // Segments are written in view order (see `EventTables::seal`) and a compacted day is one segment: often
        // the storage order already is the view's, found in one pass without building sort keys.
        let in_order =
            (1..self.len()).all(|i| (person[i - 1], self.ts[i - 1]) <= (person[i], self.ts[i]));
        let sorted = if in_order {
            Arc::new(Sorted {
                order: (0..self.len() as u32).collect(),
                person,
                ts: self.ts.clone(),
                event: self.event.clone(),
            })
        } else {
            let mut keyed: Vec<(u32, i64, u32)> = (0..self.len())
                .map(|i| (person[i], self.ts[i], i as u32))
                .collect();
            // The stable sort finds and merges runs: a partition of k segments costs a k-way merge, not a full
            // sort (keys are unique: same result as any sort).
            keyed.sort();
            Arc::new(Sorted {
                order: keyed.iter().map(|k| k.2).collect(),
                person: keyed.iter().map(|k| k.0).collect(),
                ts: keyed.iter().map(|k| k.1).collect(),
                event: keyed.iter().map(|k| self.event[k.2 as usize]).collect(),
            })
        };
        *cache = Some((identity_version, sorted.clone()));
        sorted
    }

    /// The properties of storage row `row` as JSON text, when it is in the tail (sealed rows are read from
    /// their segment instead).
    pub fn tail_properties(&self, row: usize) -> Option<&str> {
        let sealed = self.len() - self.tail.len();
        row.checked_sub(sealed)
            .map(|i| self.tail[i].properties.as_ref())
    }

    /// The sealed segments of the partition and the storage rows each covers.
    pub fn segments(&self) -> impl Iterator<Item = (&str, Range<usize>)> {
        self.sources.iter().map(|s| match s {
            Source::Segment { file, rows } => (file.as_ref(), rows.clone()),
        })
    }
}

/// A string dictionary: value ↔ dense index.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    values: Vec<Arc<str>>,
    /// foldhash instead of SipHash: interning was a quarter of a restart's CPU (1.3M distinct ids, per segment).
    index: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
}

impl Dictionary {
    /// The index of `value`, added if new.
    pub fn intern(&mut self, value: &str) -> u32 {
        if let Some(&i) = self.index.get(value) {
            return i;
        }
        let i = self.values.len() as u32;
        let v: Arc<str> = Arc::from(value);
        self.values.push(v.clone());
        self.index.insert(v, i);
        i
    }

    /// The index of `value`, if present.
    pub fn get(&self, value: &str) -> Option<u32> {
        self.index.get(value).copied()
    }

    /// The value at `i`.
    pub fn value(&self, i: u32) -> &str {
        &self.values[i as usize]
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Makes room for `additional` more values.
    pub fn reserve(&mut self, additional: usize) {
        self.values.reserve(additional);
        self.index.reserve(additional);
    }

    /// Replaces the value at `i` by a tombstone that names no one (`"\0erased:<i>"`, unique per index, so every
    /// other index stays); the old value is no longer found (interning it again gives a new index).
    pub(crate) fn tombstone(&mut self, i: u32) {
        let Some(old) = self.values.get(i as usize).cloned() else {
            return;
        };
        if self.index.get(&old) == Some(&i) {
            self.index.remove(&old);
        }
        let t: Arc<str> = Arc::from(format!("\0erased:{i}").as_str());
        self.values[i as usize] = t.clone();
        self.index.insert(t, i);
    }
}

/// One project's events and identity mapping.
#[derive(Debug, Default)]
struct Project {
    events: Dictionary,
    dids: Dictionary,
    /// Distinct-id index → dense person at assignment (`NO_PERSON` when none yet).
    did_person: Vec<u32>,
    /// Dense person → the person it was merged into (itself when not merged).
    parent: Vec<u32>,
    /// Dense person → the metadata store's person id (`-1`: a distinct id without a person).
    person_ids: Arc<Vec<i64>>,
    dense_of: HashMap<i64, u32, foldhash::fast::RandomState>,
    /// Grows whenever the person of a distinct id that may already have rows changes (a merge, or a first
    /// assignment of a distinct id that was its own person): sorted views of an older version are checked.
    identity_version: u64,
    /// `resolved` is stale when set.
    identity_dirty: bool,
    resolved: Arc<Vec<u32>>,
    partitions: BTreeMap<i32, Arc<Partition>>,
    /// Grows with every change that can alter a query's answer.
    version: u64,
}

impl Project {
    fn dense(&mut self, person_id: i64) -> u32 {
        if let Some(&d) = self.dense_of.get(&person_id) {
            return d;
        }
        let d = self.parent.len() as u32;
        self.parent.push(d);
        Arc::make_mut(&mut self.person_ids).push(person_id);
        self.dense_of.insert(person_id, d);
        d
    }

    fn set_person(&mut self, distinct_id: &str, person_id: i64) {
        let did = self.did(distinct_id);
        let dense = self.dense(person_id);
        let before = self.did_person[did as usize];
        if before != dense {
            if before != NO_PERSON {
                self.identity_version += 1;
            }
            self.did_person[did as usize] = dense;
            self.identity_dirty = true;
            self.version += 1;
        }
    }

    fn did(&mut self, distinct_id: &str) -> u32 {
        let i = self.dids.intern(distinct_id);
        if i as usize == self.did_person.len() {
            self.did_person.push(NO_PERSON);
            self.identity_dirty = true;
        }
        i
    }

    fn find(&mut self, mut p: u32) -> u32 {
        let mut root = p;
        while self.parent[root as usize] != root {
            root = self.parent[root as usize];
        }
        while self.parent[p as usize] != root {
            let next = self.parent[p as usize];
            self.parent[p as usize] = root;
            p = next;
        }
        root
    }

    /// Distinct id → final dense person, recomputed when identity changed.
    fn resolved(&mut self) -> Arc<Vec<u32>> {
        if self.identity_dirty {
            let mut out = Vec::with_capacity(self.did_person.len());
            for did in 0..self.did_person.len() {
                let mut p = self.did_person[did];
                if p == NO_PERSON {
                    // Its own person until the store assigns one.
                    p = self.parent.len() as u32;
                    self.parent.push(p);
                    Arc::make_mut(&mut self.person_ids).push(-1);
                    self.did_person[did] = p;
                }
                out.push(self.find(p));
            }
            self.resolved = Arc::new(out);
            self.identity_dirty = false;
        }
        self.resolved.clone()
    }
}

/// A consistent, immutable view of one project for a query.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Partitions by UTC day.
    pub partitions: BTreeMap<i32, Arc<Partition>>,
    /// Distinct-id index → dense person.
    pub resolved: Arc<Vec<u32>>,
    /// Dense person → the metadata store's person id (`-1` for a distinct id without a person).
    pub person_ids: Arc<Vec<i64>>,
    /// Event names.
    pub events: Arc<Dictionary>,
    /// The project (for [`EventTables::distinct_id_names`]).
    pub project_id: i64,
    /// See `Project::identity_version`.
    pub identity_version: u64,
    /// The project's data version (changes with every append, merge or seal).
    pub version: u64,
    /// Directory of the segment files.
    pub dir: PathBuf,
}

impl Snapshot {
    /// The sorted view of one of this snapshot's partitions (see [`Partition::sorted`]).
    pub fn sorted(&self, part: &Partition) -> Arc<Sorted> {
        part.sorted(&self.resolved, self.identity_version)
    }

    /// A project without events.
    pub fn empty() -> Snapshot {
        Snapshot {
            partitions: BTreeMap::new(),
            resolved: Arc::new(Vec::new()),
            person_ids: Arc::new(Vec::new()),
            events: Arc::new(Dictionary::default()),
            project_id: 0,
            identity_version: 0,
            version: 0,
            dir: PathBuf::new(),
        }
    }

    /// Number of dense persons (kernel arrays are this long).
    pub fn persons(&self) -> u32 {
        self.person_ids.len() as u32
    }

    /// The partitions whose day overlaps `[from_us, to_us)`, in time order.
    pub fn partitions_in(
        &self,
        from_us: i64,
        to_us: i64,
    ) -> impl Iterator<Item = (i32, &Arc<Partition>)> {
        let lo = partition_of(from_us);
        let hi = partition_of(to_us.saturating_sub(1));
        self.partitions.range(lo..=hi.max(lo)).map(|(d, p)| (*d, p))
    }

    /// Total rows.
    pub fn rows(&self) -> usize {
        self.partitions.values().map(|p| p.len()).sum()
    }
}

/// Sealing statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealStats {
    pub segments: usize,
    pub rows: usize,
    pub bytes: u64,
}

/// A day with 2 or more segments is compacted once it ended this long ago (µs), so today's data is not rewritten
/// after every seal...
pub const COMPACT_AFTER_DAY_END_US: i64 = 3_600_000_000;
/// ... or as soon as it has this many segments.
pub const COMPACT_SEGMENTS: usize = 16;
/// An ended day whose extra segments are small (late events) waits for this many segments.
pub const COMPACT_ENDED_SEGMENTS: usize = 8;

/// Compaction statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactStats {
    /// (project, day) partitions compacted.
    pub days: usize,
    /// Segments merged (and retired).
    pub segments_in: usize,
    /// Segments written (one per day).
    pub segments_out: usize,
    /// Rows rewritten.
    pub rows: usize,
    /// On-disk bytes of the merged segments.
    pub bytes_before: u64,
    /// On-disk bytes of the segments written.
    pub bytes_after: u64,
    /// Retired files deleted during the call (this call's or earlier ones' that no snapshot reads any more).
    pub files_deleted: usize,
}

/// Whether day `day` with sealed segments `sources` is due for compaction at `now_us`: at
/// [`COMPACT_SEGMENTS`] segments; or, an hour after the day ended, when the segments besides the largest hold at
/// least an eighth of its rows (the day's own segments, merged once after it ends) or there are
/// [`COMPACT_ENDED_SEGMENTS`] of them — so a trickle of late events for a past day (each seal adds a small
/// segment) rewrites the day every few seals, not at every one.
fn compaction_due(day: i32, sources: &[Source], now_us: i64) -> bool {
    let segments = sources.len();
    if segments < 2 {
        return false;
    }
    if segments >= COMPACT_SEGMENTS {
        return true;
    }
    let over = (i64::from(day) + 1)
        .saturating_mul(DAY_US)
        .saturating_add(COMPACT_AFTER_DAY_END_US)
        <= now_us;
    let rows: Vec<usize> = sources
        .iter()
        .map(|Source::Segment { rows, .. }| rows.len())
        .collect();
    let largest = rows.iter().copied().max().unwrap_or(0);
    let rest: usize = rows.iter().sum::<usize>() - largest;
    over && (rest.saturating_mul(8) >= largest || segments >= COMPACT_ENDED_SEGMENTS)
}

/// A day's merged segment, written and not committed yet.
struct Compacted {
    project_id: i64,
    day: i32,
    /// The segments merged: the partition's first sources when the file was written.
    merged: Vec<(Arc<str>, Range<usize>)>,
    /// The manifest generation that is to list it (its file is named after it).
    generation: u64,
    meta: SegmentMeta,
    /// Old storage row of each row of the new segment.
    order: Vec<u32>,
}

struct State {
    manifest: Manifest,
    projects: HashMap<i64, Project>,
    /// Intake-log position of everything appended (sealed or in the tail).
    appended_lsn: u64,
    tail_rows: usize,
    identity: IdentityProgress,
}

/// How much of the metadata store's identity mapping the tables hold, by its 'identity' sequence numbers.
#[derive(Debug, Default, Clone, Copy)]
struct IdentityProgress {
    /// What the mapping saved next to the segments covered when it was loaded (`None`: nothing was saved).
    saved: Option<i64>,
    /// The store's load ([`EventTables::identity_loaded`]) is done: the mapping is complete up to `seq`.
    complete: bool,
    /// Every change numbered up to this is applied (the load's number, then the change feed's).
    seq: i64,
}

/// Every project's queryable events. Shared (`Arc`) between the consumer that appends and the queries.
pub struct EventTables {
    dir: PathBuf,
    state: RwLock<State>,
    /// Serializes `seal` and the compaction of each day (file writes happen outside the state lock).
    seal_lock: Mutex<()>,
    /// Files of segments replaced by compaction, deleted once nothing holds their name (see [`Source`]).
    retired: Mutex<Vec<Arc<str>>>,
    /// The identity mapping's files as last saved; serializes saves.
    saved_identity: Mutex<identity::Saved>,
}

impl std::fmt::Debug for EventTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTables")
            .field("dir", &self.dir)
            .finish()
    }
}

fn segment_error(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Segment {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Dictionary keys of an Arrow dictionary column mapped into a project dictionary.
fn intern_column(
    column: &DictionaryArray<Int32Type>,
    path: &Path,
    mut intern: impl FnMut(&str) -> u32,
) -> Result<Vec<u32>, EngineError> {
    let values = column.values().as_string::<i32>();
    let map: Vec<u32> = (0..values.len()).map(|i| intern(values.value(i))).collect();
    column
        .keys()
        .iter()
        .map(|k| {
            k.and_then(|k| map.get(k as usize).copied())
                .ok_or_else(|| segment_error(path, "a null or out-of-range dictionary key"))
        })
        .collect()
}

impl EventTables {
    /// Opens the segment directory (created if missing) and loads every segment's core columns.
    pub fn open(dir: &Path) -> Result<EventTables, EngineError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        let manifest = Manifest::load(dir)?;
        remove_orphans(dir, &manifest);
        let mut projects: HashMap<i64, Project> = HashMap::new();
        // The saved identity mapping first: its dictionary order is kept, and the segments only look values up.
        let (saved_seq, saved_identity) = match identity::load(dir, &mut projects) {
            Ok(Some((seq, saved))) => (Some(seq), saved),
            Ok(None) => (None, identity::Saved::default()),
            Err(reason) => {
                tracing::warn!(
                    reason,
                    "insights: the saved identity mapping is unusable; loading it from the metadata store"
                );
                projects.clear();
                (None, identity::Saved::default())
            }
        };
        for meta in &manifest.segments {
            let project = projects.entry(meta.project_id).or_default();
            load_segment(dir, meta, project)?;
        }
        let lsn = manifest.lsn;
        Ok(EventTables {
            dir: dir.to_path_buf(),
            state: RwLock::new(State {
                manifest,
                projects,
                appended_lsn: lsn,
                tail_rows: 0,
                identity: IdentityProgress {
                    saved: saved_seq,
                    complete: false,
                    seq: saved_seq.unwrap_or(0),
                },
            }),
            seal_lock: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            saved_identity: Mutex::new(saved_identity),
        })
    }

    /// The metadata store's 'identity' sequence number that the mapping loaded from the segment directory covers:
    /// load only the mapping rows changed after it (`Store::read_distinct_ids(Some(seq))`). `None`: nothing was
    /// saved (or it was unusable): load the whole mapping.
    pub fn identity_seq(&self) -> Option<i64> {
        self.read().identity.saved
    }

    /// The load of the mapping from the metadata store is done and covers every change numbered up to `seq`.
    /// Until then [`EventTables::save_identity`] saves nothing.
    pub fn identity_loaded(&self, seq: i64) {
        let mut st = self.write();
        st.identity.complete = true;
        st.identity.seq = st.identity.seq.max(seq);
    }

    /// The change feed applied every mapping change numbered up to `seq`.
    pub fn note_identity_seq(&self, seq: i64) {
        let mut st = self.write();
        st.identity.seq = st.identity.seq.max(seq);
    }

    /// Saves the identity mapping next to the segments (see `table/identity.rs`), unless the load from the store
    /// is not done or nothing changed since the last save. Returns whether it wrote. The copy is taken under the
    /// state lock (a few milliseconds per million distinct ids), the files are written outside it.
    pub fn save_identity(&self) -> Result<bool, EngineError> {
        let mut saved = self.saved_identity.lock().expect("identity save lock");
        let (seq, copies) = {
            let st = self.read();
            if !st.identity.complete {
                return Ok(false);
            }
            let mut ids: Vec<i64> = st.projects.keys().copied().collect();
            ids.sort_unstable();
            let copies: Vec<identity::ProjectCopy> = ids
                .iter()
                .map(|id| identity::ProjectCopy::of(*id, &st.projects[id], &saved))
                .collect();
            (st.identity.seq, copies)
        };
        if saved.unchanged(seq, &copies) {
            return Ok(false);
        }
        identity::save(&self.dir, seq, &copies, &mut saved)?;
        Ok(true)
    }

    /// Calls `f(project_id, distinct_id)` for every distinct id the tables know (from events, the saved mapping
    /// or the identity feed), without holding the state lock while `f` runs.
    pub fn for_each_distinct_id(&self, mut f: impl FnMut(i64, &str)) {
        let projects: Vec<(i64, Vec<Arc<str>>)> = {
            let st = self.read();
            st.projects
                .iter()
                .map(|(id, p)| (*id, p.dids.values.clone()))
                .collect()
        };
        for (id, dids) in &projects {
            for d in dids {
                f(*id, d);
            }
        }
    }

    /// The intake-log position the segments cover: replay the log from here into the tail on start.
    pub fn lsn(&self) -> u64 {
        self.read().manifest.lsn
    }

    /// The intake-log position of everything appended so far.
    pub fn appended_lsn(&self) -> u64 {
        self.read().appended_lsn
    }

    /// Rows appended and not sealed yet.
    pub fn tail_rows(&self) -> usize {
        self.read().tail_rows
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("event tables lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("event tables lock")
    }

    /// `distinct_id` of `project_id` belongs to the store's person `person_id` (identity change feed, or the
    /// initial load of the mapping).
    pub fn assign(&self, project_id: i64, distinct_id: &str, person_id: i64) {
        let mut st = self.write();
        let p = st.projects.entry(project_id).or_default();
        p.set_person(distinct_id, person_id);
    }

    /// Assigns many distinct ids at once (the initial load): `(project, distinct id, person id)`.
    pub fn assign_all<'a>(&self, items: impl IntoIterator<Item = (i64, &'a str, i64)>) {
        let mut st = self.write();
        for (project_id, distinct_id, person_id) in items {
            st.projects
                .entry(project_id)
                .or_default()
                .set_person(distinct_id, person_id);
        }
    }

    /// The store merged person `from` into `into`.
    pub fn merge(&self, project_id: i64, from: i64, into: i64) {
        let mut st = self.write();
        let p = st.projects.entry(project_id).or_default();
        let from = p.dense(from);
        let into = p.dense(into);
        let (rf, ri) = (p.find(from), p.find(into));
        if rf != ri {
            p.parent[rf as usize] = ri;
            p.identity_version += 1;
        }
        p.identity_dirty = true;
        p.version += 1;
    }

    /// Appends events read from the intake log up to `lsn` (the position after them). Call after the identity
    /// consumer applied them, so their distinct ids have persons.
    pub fn append<'a>(&self, events: impl IntoIterator<Item = EventRef<'a>>, lsn: u64) {
        let mut st = self.write();
        let mut added = 0;
        for e in events {
            let p = st.projects.entry(e.project_id).or_default();
            let did = p.did(e.distinct_id);
            let event = p.events.intern(e.event);
            let part = Arc::make_mut(
                p.partitions
                    .entry(partition_of(e.timestamp_us))
                    .or_default(),
            );
            part.did.push(did);
            part.ts.push(e.timestamp_us);
            part.event.push(event);
            part.tail.push(TailRow {
                uuid: e.uuid,
                properties: e.properties.into(),
            });
            p.version += 1;
            added += 1;
        }
        st.tail_rows += added;
        st.appended_lsn = st.appended_lsn.max(lsn);
    }

    /// A consistent view of `project_id` for one query (`None` when it has no events).
    pub fn snapshot(&self, project_id: i64) -> Option<Snapshot> {
        let mut st = self.write();
        let p = st.projects.get_mut(&project_id)?;
        let resolved = p.resolved();
        Some(Snapshot {
            partitions: p.partitions.clone(),
            resolved,
            person_ids: p.person_ids.clone(),
            events: Arc::new(p.events.clone()),
            project_id,
            identity_version: p.identity_version,
            version: p.version,
            dir: self.dir.clone(),
        })
    }

    /// Builds the sorted view of every partition of every project now (on start, so the first queries do not pay
    /// for it). Returns the rows sorted.
    pub fn warm(&self) -> usize {
        let projects: Vec<i64> = self.read().projects.keys().copied().collect();
        let mut rows = 0;
        for project_id in projects {
            if let Some(snap) = self.snapshot(project_id) {
                for part in snap.partitions.values() {
                    rows += snap.sorted(part).order.len();
                }
            }
        }
        rows
    }

    /// The names of distinct ids (indexes as in [`Snapshot::resolved`]) of a project; unknown indexes are left
    /// out.
    pub fn distinct_id_names(&self, project_id: i64, dids: &[u32]) -> Vec<String> {
        let st = self.read();
        let Some(p) = st.projects.get(&project_id) else {
            return Vec::new();
        };
        dids.iter()
            .filter(|&&d| (d as usize) < p.dids.len())
            .map(|&d| p.dids.value(d).to_owned())
            .collect()
    }

    /// The data version of a project (for result caches), 0 when it has no events.
    pub fn version(&self, project_id: i64) -> u64 {
        self.read()
            .projects
            .get(&project_id)
            .map_or(0, |p| p.version)
    }

    /// Writes every partition's tail as a segment (person at build time from the current mapping), commits the
    /// manifest with the log position they cover, and turns the tail rows into sealed rows. Returns what it
    /// wrote. Appends may continue meanwhile; rows appended during the seal stay in the tail.
    pub fn seal(&self) -> Result<SealStats, EngineError> {
        self.collect_retired();
        let _one = self.seal_lock.lock().expect("seal lock");
        // 1. Take what to write: per (project, partition) the tail rows present now.
        struct Job {
            project_id: i64,
            day: i32,
            part: Arc<Partition>,
            rows: Range<usize>,
            events: Arc<Dictionary>,
            dids: Arc<Dictionary>,
            resolved: Arc<Vec<u32>>,
            person_ids: Arc<Vec<i64>>,
        }
        let (jobs, lsn, generation) = {
            let mut st = self.write();
            let lsn = st.appended_lsn;
            let generation = st.manifest.generation + 1;
            let mut jobs = Vec::new();
            for (&project_id, p) in st.projects.iter_mut() {
                let resolved = p.resolved();
                let events = Arc::new(p.events.clone());
                let dids = Arc::new(p.dids.clone());
                for (&day, part) in &p.partitions {
                    if part.tail.is_empty() {
                        continue;
                    }
                    let sealed = part.len() - part.tail.len();
                    jobs.push(Job {
                        project_id,
                        day,
                        part: part.clone(),
                        rows: sealed..part.len(),
                        events: events.clone(),
                        dids: dids.clone(),
                        resolved: resolved.clone(),
                        person_ids: p.person_ids.clone(),
                    });
                }
            }
            (jobs, lsn, generation)
        };
        if jobs.is_empty() {
            let mut st = self.write();
            if st.manifest.lsn < lsn {
                st.manifest.lsn = lsn;
                st.manifest.commit(&self.dir)?;
            }
            return Ok(SealStats::default());
        }
        // 2. Write the files (no lock held).
        let mut written: Vec<(usize, SegmentMeta, Vec<u32>)> = Vec::new();
        let mut stats = SealStats::default();
        for (j, job) in jobs.iter().enumerate() {
            let dir = self.dir.join(format!("p{}", job.project_id));
            std::fs::create_dir_all(&dir)
                .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
            let file = format!("p{}/d{}-g{}.parquet", job.project_id, job.day, generation);
            let part = &job.part;
            let sealed = job.rows.start;
            // Build-time person of each row, then the order the file will have (stable: log order on ties): by
            // dense person, the order of the sorted views — dense ids are kept across restarts with the saved
            // identity mapping, so a loaded segment is already in view order and sorting the views on start is a
            // linear pass (see `Partition::sorted`).
            let dense_of = |row: usize| job.resolved[part.did[row] as usize];
            let person_of = |row: usize| job.person_ids[dense_of(row) as usize];
            let mut order: Vec<usize> = job.rows.clone().collect();
            order.sort_by_key(|&r| (dense_of(r), part.ts[r]));
            let mut rows: Vec<SegmentRow<'_>> = order
                .iter()
                .map(|&r| SegmentRow {
                    person: person_of(r),
                    timestamp_us: part.ts[r],
                    event: job.events.value(part.event[r]),
                    distinct_id: job.dids.value(part.did[r]),
                    uuid: part.tail[r - sealed].uuid,
                    properties: &part.tail[r - sealed].properties,
                })
                .collect();
            let mut meta = write_segment(&self.dir.join(&file), &mut rows)?;
            meta.file = file;
            meta.project_id = job.project_id;
            meta.partition = job.day;
            stats.segments += 1;
            stats.rows += rows.len();
            stats.bytes += meta.bytes;
            written.push((j, meta, order.iter().map(|&r| r as u32).collect()));
        }
        // 3. Commit the manifest, then swap the sealed rows in (in file order) ahead of anything appended since.
        let mut st = self.write();
        let mut manifest = st.manifest.clone();
        manifest.lsn = lsn;
        manifest
            .segments
            .extend(written.iter().map(|(_, m, _)| m.clone()));
        if let Err(e) = manifest.commit(&self.dir) {
            // The rows stay in the tail (the next seal writes them again); the files written stay until the next
            // open deletes the unlisted ones. Their generation is never reused, so no later file takes their name.
            st.manifest.generation = manifest.generation;
            return Err(e);
        }
        st.manifest = manifest;
        for (j, meta, order) in written {
            let job = &jobs[j];
            let p = st
                .projects
                .get_mut(&job.project_id)
                .expect("project of a sealed job");
            let part = Arc::make_mut(p.partitions.get_mut(&job.day).expect("partition of a job"));
            let sealed = job.rows.start;
            let n = job.rows.len();
            // Rows [sealed, sealed + n) were the tail when the job was taken; rows after are newer tail.
            let mut did = Vec::with_capacity(part.len());
            let mut ts = Vec::with_capacity(part.len());
            let mut event = Vec::with_capacity(part.len());
            did.extend_from_slice(&part.did[..sealed]);
            ts.extend_from_slice(&part.ts[..sealed]);
            event.extend_from_slice(&part.event[..sealed]);
            for &r in &order {
                did.push(part.did[r as usize]);
                ts.push(part.ts[r as usize]);
                event.push(part.event[r as usize]);
            }
            did.extend_from_slice(&part.did[sealed + n..]);
            ts.extend_from_slice(&part.ts[sealed + n..]);
            event.extend_from_slice(&part.event[sealed + n..]);
            part.did = did;
            part.ts = ts;
            part.event = event;
            part.tail.drain(..n);
            part.sources.push(Source::Segment {
                file: Arc::from(meta.file.as_str()),
                rows: sealed..sealed + n,
            });
            *part.sorted.get_mut().expect("sorted view lock") = None;
            p.version += 1;
            st.tail_rows -= n;
        }
        Ok(stats)
    }

    /// On-disk bytes of all segments.
    pub fn segment_bytes(&self) -> u64 {
        self.read().manifest.segments.iter().map(|s| s.bytes).sum()
    }

    /// Rows in segments.
    pub fn segment_rows(&self) -> u64 {
        self.read().manifest.segments.iter().map(|s| s.rows).sum()
    }

    /// Merges the sealed segments of every (project, day) that has 2 or more of them and is due — the day ended
    /// at least [`COMPACT_AFTER_DAY_END_US`] before `now_us`, or it has [`COMPACT_SEGMENTS`] segments — into one
    /// segment per day (see the module docs), one day at a time. Queries, appends and identity changes go on
    /// meanwhile; a seal waits for the day being merged. The replaced files are retired, and deleted once no
    /// snapshot can read them. On an error the day keeps its segments (nothing is lost) and the days after it wait
    /// for the next call; the days merged before it stay merged.
    pub fn compact(&self, now_us: i64) -> Result<CompactStats, EngineError> {
        self.compact_unless(now_us, &AtomicBool::new(false))
    }

    /// [`EventTables::compact`], stopping between two days once `stop` is set (shutdown need not wait for every
    /// due day).
    pub fn compact_unless(
        &self,
        now_us: i64,
        stop: &AtomicBool,
    ) -> Result<CompactStats, EngineError> {
        let mut stats = CompactStats {
            files_deleted: self.collect_retired(),
            ..CompactStats::default()
        };
        let mut due: Vec<(i64, i32)> = {
            let st = self.read();
            st.projects
                .iter()
                .flat_map(|(&project_id, p)| {
                    p.partitions
                        .iter()
                        .filter(|(&day, part)| compaction_due(day, &part.sources, now_us))
                        .map(move |(&day, _)| (project_id, day))
                })
                .collect()
        };
        due.sort_unstable();
        for (project_id, day) in due {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let merged = {
                let _one = self.seal_lock.lock().expect("seal lock");
                match self.write_compacted(project_id, day, now_us)? {
                    Some(c) => self.install_compacted(c)?,
                    None => None,
                }
            };
            if let Some(d) = merged {
                stats.days += d.days;
                stats.segments_in += d.segments_in;
                stats.segments_out += d.segments_out;
                stats.rows += d.rows;
                stats.bytes_before += d.bytes_before;
                stats.bytes_after += d.bytes_after;
            }
            stats.files_deleted += self.collect_retired();
        }
        Ok(stats)
    }

    /// Deletes the retired files (segments replaced by compaction) that no partition lists any more — no snapshot
    /// taken before their compaction is alive. Best effort: a file that cannot be deleted stays retired (and
    /// [`EventTables::open`] deletes it as an orphan). Returns the files deleted.
    pub fn collect_retired(&self) -> usize {
        let unused: Vec<Arc<str>> = {
            let mut retired = self.retired.lock().expect("retired files lock");
            if retired.is_empty() {
                return 0;
            }
            // Only the list holds the name: every copy of a partition listing the file is gone, and none can
            // be made again (the tables' partitions no longer list it).
            let (unused, held) = std::mem::take(&mut *retired)
                .into_iter()
                .partition(|file| Arc::strong_count(file) == 1);
            *retired = held;
            unused
        };
        let mut deleted = 0;
        let mut failed = Vec::new();
        for file in unused {
            match std::fs::remove_file(self.dir.join(&*file)) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => failed.push(file),
            }
        }
        if !failed.is_empty() {
            self.retired
                .lock()
                .expect("retired files lock")
                .extend(failed);
        }
        deleted
    }

    /// Writes the merged segment of `(project_id, day)` when the day is (still) due, from its segment files and
    /// the identity mapping now. Takes the state lock only to look; the caller holds the seal lock.
    fn write_compacted(
        &self,
        project_id: i64,
        day: i32,
        now_us: i64,
    ) -> Result<Option<Compacted>, EngineError> {
        // The sealed rows' distinct ids and times are copied rather than the partition shared: an append would
        // then copy all of it, tail included.
        let (merged, did, ts, resolved, person_ids, generation) = {
            let mut st = self.write();
            let generation = st.manifest.generation + 1;
            let Some(p) = st.projects.get_mut(&project_id) else {
                return Ok(None);
            };
            let Some(part) = p.partitions.get(&day) else {
                return Ok(None);
            };
            if !compaction_due(day, &part.sources, now_us) {
                return Ok(None);
            }
            let merged: Vec<(Arc<str>, Range<usize>)> = part
                .sources
                .iter()
                .map(|s| match s {
                    Source::Segment { file, rows } => (file.clone(), rows.clone()),
                })
                .collect();
            let sealed = merged.last().map_or(0, |(_, rows)| rows.end);
            let (did, ts) = (part.did[..sealed].to_vec(), part.ts[..sealed].to_vec());
            (
                merged,
                did,
                ts,
                p.resolved(),
                p.person_ids.clone(),
                generation,
            )
        };
        let sealed = ts.len();
        // Every column of the merged segments; a segment's rows are its storage rows, in order.
        let mut files = Vec::with_capacity(merged.len());
        for (file, rows) in &merged {
            let path = self.dir.join(&**file);
            let batches = read_segment(&path, None)?;
            let n: usize = batches.iter().map(|b| b.num_rows()).sum();
            if n != rows.len() {
                return Err(segment_error(
                    &path,
                    format!("holds {n} rows, its partition {}", rows.len()),
                ));
            }
            files.push((path, rows.start, batches));
        }
        // Per storage row: uuid, event name, distinct id, and the properties rebuilt as JSON text.
        let mut cells: Vec<(u128, &str, &str)> = Vec::with_capacity(sealed);
        let mut properties: Vec<String> = Vec::with_capacity(sealed);
        for (path, start, batches) in &files {
            let mut row = *start;
            for b in batches {
                let cols = RowColumns::of(b, path)?;
                let (times, event, distinct_id) = (cols.times, cols.event, cols.distinct_id);
                for i in 0..b.num_rows() {
                    if times.value(i) != ts[row] {
                        return Err(segment_error(path, "does not match its partition's rows"));
                    }
                    let uuid = cols.uuid(i);
                    cells.push((
                        uuid,
                        dictionary_value(event, i, path)?,
                        dictionary_value(distinct_id, i, path)?,
                    ));
                    properties.push(serde_json::Value::Object(row_properties(b, i)).to_string());
                    row += 1;
                }
            }
        }
        // The order of the new file: (dense) person now, time, previous storage order — the sorted view's order,
        // as for a seal.
        let person_of = |r: usize| person_ids[resolved[did[r] as usize] as usize];
        let mut order: Vec<u32> = (0..sealed as u32).collect();
        order.sort_unstable_by_key(|&r| (resolved[did[r as usize] as usize], ts[r as usize], r));
        let mut rows: Vec<SegmentRow<'_>> = order
            .iter()
            .map(|&r| {
                let r = r as usize;
                let (uuid, event, distinct_id) = cells[r];
                SegmentRow {
                    person: person_of(r),
                    timestamp_us: ts[r],
                    event,
                    distinct_id,
                    uuid,
                    properties: &properties[r],
                }
            })
            .collect();
        let file = format!("p{project_id}/d{day}-g{generation}.parquet");
        // Sorts stably by (person, time): the order above stays.
        let mut meta = write_segment(&self.dir.join(&file), &mut rows)?;
        meta.file = file;
        meta.project_id = project_id;
        meta.partition = day;
        Ok(Some(Compacted {
            project_id,
            day,
            merged,
            generation,
            meta,
            order,
        }))
    }

    /// Commits a merged segment in place of the segments it merged and swaps it into the partition; the old files
    /// are retired. `None` (and the new file deleted) when the day's first segments are no longer the merged ones
    /// or another commit came first. The caller holds the seal lock (so neither happens).
    fn install_compacted(&self, c: Compacted) -> Result<Option<CompactStats>, EngineError> {
        let path = self.dir.join(&c.meta.file);
        let mut guard = self.write();
        let st = &mut *guard;
        // Never delete a listed file (the name could only be reused if a commit slipped in since the write).
        let drop_file = |manifest: &Manifest| {
            if !manifest.segments.iter().any(|m| m.file == c.meta.file) {
                let _ = std::fs::remove_file(&path);
            }
        };
        let unchanged = st.manifest.generation + 1 == c.generation
            && st
                .projects
                .get(&c.project_id)
                .and_then(|p| p.partitions.get(&c.day))
                .is_some_and(|part| starts_with(&part.sources, &c.merged));
        if !unchanged {
            drop_file(&st.manifest);
            return Ok(None);
        }
        let Some((mut manifest, bytes_before)) = compacted_manifest(&st.manifest, &c) else {
            drop_file(&st.manifest);
            return Err(segment_error(
                &self.dir.join("manifest.json"),
                format!(
                    "does not list every segment of project {} day {}",
                    c.project_id, c.day
                ),
            ));
        };
        if let Err(e) = manifest.commit(&self.dir) {
            // The new file stays: if the commit got as far as the rename, the manifest on disk lists it (when it
            // does not, the next open deletes it). Its generation is never reused for another file.
            st.manifest.generation = manifest.generation;
            return Err(e);
        }
        st.manifest = manifest;
        let p = st
            .projects
            .get_mut(&c.project_id)
            .expect("project of a compacted day");
        let part = Arc::make_mut(
            p.partitions
                .get_mut(&c.day)
                .expect("partition of a compacted day"),
        );
        // The merged rows in the new file's order; newer segments and the tail follow unchanged.
        part.did = reordered(&part.did, &c.order);
        part.ts = reordered(&part.ts, &c.order);
        part.event = reordered(&part.event, &c.order);
        let old: Vec<Arc<str>> = part
            .sources
            .drain(..c.merged.len())
            .map(|s| match s {
                Source::Segment { file, .. } => file,
            })
            .collect();
        part.sources.insert(
            0,
            Source::Segment {
                file: Arc::from(c.meta.file.as_str()),
                rows: 0..c.order.len(),
            },
        );
        *part.sorted.get_mut().expect("sorted view lock") = None;
        p.version += 1;
        drop(guard);
        self.retired.lock().expect("retired files lock").extend(old);
        Ok(Some(CompactStats {
            days: 1,
            segments_in: c.merged.len(),
            segments_out: 1,
            rows: c.order.len(),
            bytes_before,
            bytes_after: c.meta.bytes,
            files_deleted: 0,
        }))
    }
}

/// Whether a partition's sources start with exactly the `merged` segments.
fn starts_with(sources: &[Source], merged: &[(Arc<str>, Range<usize>)]) -> bool {
    sources.len() >= merged.len()
        && sources
            .iter()
            .zip(merged)
            .all(|(Source::Segment { file, rows }, (f, r))| file == f && rows == r)
}

/// `manifest` with `c`'s segment in place of the segments it merged (where the first of them was), and the bytes
/// of those; `None` when the manifest does not list every one of them.
fn compacted_manifest(manifest: &Manifest, c: &Compacted) -> Option<(Manifest, u64)> {
    let names: HashSet<&str> = c.merged.iter().map(|(f, _)| &**f).collect();
    let mut out = manifest.clone();
    let mut at = None;
    let mut removed = 0;
    let mut bytes = 0;
    out.segments.clear();
    for m in &manifest.segments {
        if names.contains(m.file.as_str()) {
            at.get_or_insert(out.segments.len());
            removed += 1;
            bytes += m.bytes;
        } else {
            out.segments.push(m.clone());
        }
    }
    if removed != c.merged.len() {
        return None;
    }
    out.segments.insert(at?, c.meta.clone());
    Some((out, bytes))
}

/// `column` with its first `order.len()` rows put in `order` (old row of each), the rest unchanged.
fn reordered<T: Copy>(column: &[T], order: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(column.len());
    out.extend(order.iter().map(|&r| column[r as usize]));
    out.extend_from_slice(&column[order.len()..]);
    out
}

/// The columns of a segment batch that its rows are rebuilt from (a day written again by compaction or erasure).
pub(crate) struct RowColumns<'b> {
    pub times: &'b arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    pub event: &'b DictionaryArray<Int32Type>,
    pub distinct_id: &'b DictionaryArray<Int32Type>,
    pub high: &'b arrow_array::PrimitiveArray<Int64Type>,
    pub low: &'b arrow_array::PrimitiveArray<Int64Type>,
}

impl<'b> RowColumns<'b> {
    pub(crate) fn of(b: &'b arrow_array::RecordBatch, path: &Path) -> Result<Self, EngineError> {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| segment_error(path, format!("no column `{name}`")))
        };
        let half = |name: &str| {
            col(name)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| segment_error(path, format!("`{name}` is not an int64")))
        };
        Ok(Self {
            times: col("timestamp")?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| segment_error(path, "`timestamp` is not a µs timestamp"))?,
            event: col("event")?
                .as_dictionary_opt::<Int32Type>()
                .ok_or_else(|| segment_error(path, "`event` is not a dictionary"))?,
            distinct_id: col("distinct_id")?
                .as_dictionary_opt::<Int32Type>()
                .ok_or_else(|| segment_error(path, "`distinct_id` is not a dictionary"))?,
            high: half("uuid_high")?,
            low: half("uuid_low")?,
        })
    }

    /// The event uuid of row `i`.
    pub(crate) fn uuid(&self, i: usize) -> u128 {
        (u128::from(self.high.value(i) as u64) << 64) | u128::from(self.low.value(i) as u64)
    }
}

/// The string of row `i` of a dictionary column.
fn dictionary_value<'a>(
    column: &'a DictionaryArray<Int32Type>,
    i: usize,
    path: &Path,
) -> Result<&'a str, EngineError> {
    let values = column
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| segment_error(path, "a dictionary of non-strings"))?;
    column
        .is_valid(i)
        .then(|| column.keys().value(i))
        .and_then(|k| usize::try_from(k).ok())
        .filter(|&k| k < values.len())
        .map(|k| values.value(k))
        .ok_or_else(|| segment_error(path, "a null or out-of-range dictionary key"))
}

/// Deletes the segment files that `manifest` does not list — written by a seal or compaction that did not commit,
/// or retired and never deleted — and returns how many. Only names exactly as the engine writes them
/// (`p<project>/d<day>-g<generation>.parquet`, and the same with `.tmp` for a write cut short) are touched, and
/// nothing before a first commit (a directory whose manifest went missing keeps its files). Best effort.
fn remove_orphans(dir: &Path, manifest: &Manifest) -> usize {
    if manifest.generation == 0 {
        return 0;
    }
    let live: HashSet<&str> = manifest.segments.iter().map(|m| m.file.as_str()).collect();
    let Ok(projects) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for project in projects.flatten() {
        let name = project.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !canonical::<i64>(name.strip_prefix('p'))
            || !project.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let Ok(files) = std::fs::read_dir(project.path()) else {
            continue;
        };
        for f in files.flatten() {
            let file = f.file_name();
            let Some(file) = file.to_str() else {
                continue;
            };
            // A segment the manifest does not list, or a segment's temporary file (a write cut short: never
            // live, the file is only renamed into place once complete).
            let orphan = (is_segment_name(file)
                && !live.contains(format!("{name}/{file}").as_str()))
                || file.strip_suffix(".tmp").is_some_and(is_segment_name);
            if orphan
                && f.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(f.path()).is_ok()
            {
                deleted += 1;
            }
        }
    }
    deleted
}

/// Whether `text` is an integer as `format!` writes it.
fn canonical<T: std::str::FromStr + ToString>(text: Option<&str>) -> bool {
    text.is_some_and(|t| t.parse::<T>().is_ok_and(|v| v.to_string() == t))
}

/// Whether `file` is `d<day>-g<generation>.parquet`.
fn is_segment_name(file: &str) -> bool {
    let Some((day, generation)) = file
        .strip_prefix('d')
        .and_then(|f| f.strip_suffix(".parquet"))
        .and_then(|f| f.rsplit_once("-g"))
    else {
        return false;
    };
    canonical::<i32>(Some(day)) && canonical::<u64>(Some(generation))
}

/// Appends a segment's rows (core columns) to its partition.
fn load_segment(dir: &Path, meta: &SegmentMeta, project: &mut Project) -> Result<(), EngineError> {
    let path = dir.join(&meta.file);
    let batches = read_segment(&path, Some(&["timestamp", "event", "distinct_id"]))?;
    let mut did = Vec::with_capacity(meta.rows as usize);
    let mut ts = Vec::with_capacity(meta.rows as usize);
    let mut event = Vec::with_capacity(meta.rows as usize);
    for b in &batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| segment_error(&path, format!("no column `{name}`")))
        };
        let t = col("timestamp")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| segment_error(&path, "`timestamp` is not a µs timestamp"))?;
        ts.extend(t.values().iter().copied());
        let e = col("event")?
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| segment_error(&path, "`event` is not a dictionary"))?;
        event.extend(intern_column(e, &path, |v| project.events.intern(v))?);
        let d = col("distinct_id")?
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| segment_error(&path, "`distinct_id` is not a dictionary"))?;
        did.extend(intern_column(d, &path, |v| project.did(v))?);
    }
    if ts.iter().any(|&t| partition_of(t) != meta.partition) {
        return Err(segment_error(
            &path,
            "holds events outside its partition's day",
        ));
    }
    let part = Arc::make_mut(project.partitions.entry(meta.partition).or_default());
    if !part.tail.is_empty() {
        return Err(segment_error(&path, "loaded after unsealed rows"));
    }
    let start = part.len();
    part.did.extend(did);
    part.ts.extend(ts);
    part.event.extend(event);
    part.sources.push(Source::Segment {
        file: Arc::from(meta.file.as_str()),
        rows: start..part.len(),
    });
    project.version += 1;
    Ok(())
}

/// Writes every event of a snapshot to one Parquet file, persons resolved: columns `person_id` (the metadata
/// store's person id after all merges; a distinct id without a person gets a negative id of its own),
/// `timestamp` (µs, UTC), `event`, and one nullable string column per entry of `person_columns` (a value per
/// dense person). Rows are ordered by partition (day), then person, then time. Returns the rows written.
pub fn export_parquet(
    snap: &Snapshot,
    path: &Path,
    person_columns: &[(String, Vec<Option<String>>)],
) -> Result<u64, EngineError> {
    use arrow_array::builder::{StringBuilder, StringDictionaryBuilder};
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    let mut fields = vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            "event",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
    ];
    for (name, _) in person_columns {
        fields.push(Field::new(name, DataType::Utf8, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let file = std::fs::File::create(path)
        .map_err(|e| EngineError::io(format!("creating {}", path.display()), e))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
        .map_err(|e| segment_error(path, e))?;
    let person_id = |dense: u32| match snap.person_ids[dense as usize] {
        id if id >= 0 => id,
        _ => -(i64::from(dense) + 1),
    };
    let mut rows = 0u64;
    for part in snap.partitions.values() {
        let v = snap.sorted(part);
        if v.order.is_empty() {
            continue;
        }
        let mut events = StringDictionaryBuilder::<Int32Type>::new();
        for &e in &v.event {
            events.append_value(snap.events.value(e));
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(
                v.person.iter().map(|&p| person_id(p)).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMicrosecondArray::from(v.ts.clone()).with_timezone("UTC")),
            Arc::new(events.finish()),
        ];
        for (_, values) in person_columns {
            let mut b = StringBuilder::new();
            for &p in &v.person {
                b.append_option(values.get(p as usize).and_then(|x| x.as_deref()));
            }
            columns.push(Arc::new(b.finish()));
        }
        let batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| segment_error(path, e))?;
        writer.write(&batch).map_err(|e| segment_error(path, e))?;
        rows += v.order.len() as u64;
    }
    writer.close().map_err(|e| segment_error(path, e))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(project: i64, did: &'a str, event: &'a str, ts: i64, props: &'a str) -> EventRef<'a> {
        EventRef {
            uuid: ts as u128 * 1000 + did.len() as u128,
            project_id: project,
            timestamp_us: ts,
            received_us: ts,
            event,
            distinct_id: did,
            properties: props,
        }
    }

    fn rows_of(s: &Snapshot) -> Vec<(i64, i64, String)> {
        let mut out = Vec::new();
        for part in s.partitions.values() {
            let v = s.sorted(part);
            for i in 0..v.order.len() {
                out.push((
                    s.person_ids[v.person[i] as usize],
                    v.ts[i],
                    s.events.value(v.event[i]).to_owned(),
                ));
            }
        }
        out
    }

    #[test]
    fn merges_move_past_rows_and_resort() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.assign(1, "anon", 10);
        t.assign(1, "user", 20);
        t.append(
            [
                ev(1, "anon", "view", 5, "{}"),
                ev(1, "user", "signup", 3, "{}"),
                ev(1, "anon", "view", DAY_US + 1, "{}"),
            ],
            7,
        );
        let s = t.snapshot(1).unwrap();
        assert_eq!(
            rows_of(&s),
            [
                (10, 5, "view".into()),
                (20, 3, "signup".into()),
                (10, DAY_US + 1, "view".into())
            ]
        );
        t.merge(1, 10, 20);
        let s2 = t.snapshot(1).unwrap();
        assert_eq!(
            rows_of(&s2),
            [
                (20, 3, "signup".into()),
                (20, 5, "view".into()),
                (20, DAY_US + 1, "view".into())
            ],
            "anon's events now belong to user, in time order"
        );
        // The old snapshot is unchanged.
        assert_eq!(rows_of(&s)[0].0, 10);
        assert_eq!(t.appended_lsn(), 7);
    }

    /// Person id of each row, by (distinct id, time), for comparing mappings across restarts.
    fn persons_by_row(t: &EventTables, project: i64) -> Vec<(String, i64, i64)> {
        let s = t.snapshot(project).unwrap();
        let mut out = Vec::new();
        for part in s.partitions.values() {
            for r in 0..part.len() {
                let did = t.distinct_id_names(project, &[part.did[r]]).remove(0);
                let person = s.person_ids[s.resolved[part.did[r] as usize] as usize];
                out.push((did, part.ts[r], person));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_identity_mapping_is_saved_and_loaded_with_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), None, "nothing saved yet");
        t.assign_all([
            (1, "anon", 10),
            (1, "user", 20),
            (1, "other", 30),
            (2, "x", 40),
        ]);
        t.append(
            [
                ev(1, "anon", "view", 5, "{}"),
                ev(1, "user", "signup", 6, "{}"),
                ev(1, "other", "view", 7, "{}"),
                ev(1, "nobody", "view", 8, "{}"),
                ev(2, "x", "view", 9, "{}"),
            ],
            3,
        );
        assert!(
            !t.save_identity().unwrap(),
            "not before the store's load is done"
        );
        t.identity_loaded(4);
        t.merge(1, 10, 20);
        t.note_identity_seq(6);
        t.seal().unwrap();
        assert!(t.save_identity().unwrap());
        assert!(!t.save_identity().unwrap(), "nothing changed since");
        let before = persons_by_row(&t, 1);
        assert_eq!(before.iter().filter(|r| r.2 == 20).count(), 2, "{before:?}");
        drop(t);

        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(6));
        assert_eq!(persons_by_row(&t, 1), before);
        assert_eq!(persons_by_row(&t, 2)[0].2, 40);
        // Changes after the save (read from the store as a delta) apply on top; new distinct ids are appended to
        // the dictionary file at the next save.
        t.identity_loaded(7);
        t.assign(1, "nobody", 50);
        t.merge(1, 30, 50);
        t.append([ev(1, "late", "view", 10, "{}")], 4);
        t.assign(1, "late", 50);
        t.note_identity_seq(8);
        assert!(t.save_identity().unwrap());
        let after = persons_by_row(&t, 1);
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(8));
        // The tail ("late") was not sealed: replayed from the log on a real start; here only the mapping counts.
        t.append([ev(1, "late", "view", 10, "{}")], 4);
        assert_eq!(persons_by_row(&t, 1), after);
        assert_eq!(after.iter().filter(|r| r.2 == 50).count(), 3, "{after:?}");
    }

    #[test]
    fn an_unusable_saved_mapping_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.assign_all([(1, "a", 10), (1, "b", 20)]);
        t.append([ev(1, "a", "x", 1, "{}"), ev(1, "b", "x", 2, "{}")], 1);
        t.identity_loaded(3);
        t.seal().unwrap();
        assert!(t.save_identity().unwrap());
        drop(t);
        let dids = dir.path().join("identity/p1.dids");
        let map = dir.path().join("identity/map");

        // A torn append (bytes past what the map lists) is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&dids)
            .unwrap();
        std::io::Write::write_all(&mut f, &[7, 0, 0]).unwrap();
        drop(f);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(3));
        t.identity_loaded(3);
        t.assign(1, "c", 30);
        t.append([ev(1, "c", "x", 3, "{}")], 2);
        assert!(
            t.save_identity().unwrap(),
            "the next save appends over the torn bytes"
        );
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(3));
        t.append([ev(1, "c", "x", 3, "{}")], 2);
        let persons: Vec<i64> = persons_by_row(&t, 1).iter().map(|r| r.2).collect();
        assert_eq!(persons, [10, 20, 30]);
        drop(t);

        // A flipped byte in the map, a truncated dictionary: load everything from the store instead.
        let mut bytes = std::fs::read(&map).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&map, &bytes).unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), None);
        let persons: Vec<i64> = persons_by_row(&t, 1).iter().map(|r| r.2).collect();
        assert_eq!(
            persons,
            [-1, -1],
            "no persons until the store's mapping is loaded"
        );
        t.assign_all([(1, "a", 10), (1, "b", 20)]);
        t.identity_loaded(3);
        assert!(t.save_identity().unwrap(), "rewritten from scratch");
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(3));
        drop(t);
        let len = std::fs::metadata(&dids).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dids)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), None);
    }

    #[test]
    fn personless_distinct_ids_are_their_own_person() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.append([ev(1, "a", "x", 1, "{}"), ev(1, "b", "x", 2, "{}")], 1);
        let s = t.snapshot(1).unwrap();
        let v = s.sorted(&s.partitions[&0]);
        assert_ne!(v.person[0], v.person[1]);
        assert_eq!(s.person_ids[v.person[0] as usize], -1);
        // A later assignment gives it the real person.
        t.assign(1, "a", 5);
        t.assign(1, "b", 5);
        let s = t.snapshot(1).unwrap();
        let v = s.sorted(&s.partitions[&0]);
        assert_eq!(v.person[0], v.person[1]);
    }

    #[test]
    fn seal_and_reopen_keep_every_row_and_the_tail_replays_from_the_manifest_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.assign(1, "a", 1);
        t.assign(1, "b", 2);
        t.assign(2, "a", 3);
        t.append(
            [
                ev(1, "b", "signup", 10, r#"{"plan":"pro"}"#),
                ev(1, "a", "view", 10, r#"{"n":1}"#),
                ev(2, "a", "view", DAY_US * 3, "{}"),
                ev(1, "a", "view", DAY_US + 4, "{}"),
            ],
            100,
        );
        let before = rows_of(&t.snapshot(1).unwrap());
        let stats = t.seal().unwrap();
        assert_eq!(stats.segments, 3);
        assert_eq!(stats.rows, 4);
        assert_eq!(t.tail_rows(), 0);
        assert_eq!(t.lsn(), 100);
        assert_eq!(
            rows_of(&t.snapshot(1).unwrap()),
            before,
            "sealing keeps the rows"
        );
        // Appends after the seal stay in the tail.
        t.append([ev(1, "a", "late", 11, r#"{"k":"v"}"#)], 120);
        let s = t.snapshot(1).unwrap();
        let part = &s.partitions[&0];
        assert_eq!(part.tail_len(), 1);
        assert_eq!(part.tail_properties(2), Some(r#"{"k":"v"}"#));
        assert_eq!(part.tail_properties(0), None);
        assert_eq!(part.segments().count(), 1);

        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.lsn(), 100, "the tail is not in the manifest");
        t.assign_all([(1, "a", 1), (1, "b", 2), (2, "a", 3)]);
        assert_eq!(rows_of(&t.snapshot(1).unwrap()), before);
        assert_eq!(t.snapshot(2).unwrap().rows(), 1);
        assert_eq!(t.segment_rows(), 4);
        assert!(t.segment_bytes() > 0);
    }

    #[test]
    fn partitions_in_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.append((0..5).map(|d| ev(1, "a", "x", d * DAY_US + 7, "{}")), 1);
        let s = t.snapshot(1).unwrap();
        let days: Vec<i32> = s
            .partitions_in(DAY_US, 3 * DAY_US)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(days, [1, 2]);
        let days: Vec<i32> = s
            .partitions_in(DAY_US + 5, 3 * DAY_US + 1)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(days, [1, 2, 3]);
    }

    // ---- compaction ----

    use arrow_array::types::Int64Type;
    use serde_json::Value;

    /// The day the compaction tests write to, and a time well after it.
    const D: i32 = 10;
    const LATER: i64 = (D as i64 + 3) * DAY_US;

    /// One event of project 1 with an explicit uuid.
    fn evu<'a>(uuid: u128, did: &'a str, event: &'a str, ts: i64, props: &'a str) -> EventRef<'a> {
        EventRef {
            uuid,
            project_id: 1,
            timestamp_us: ts,
            received_us: ts,
            event,
            distinct_id: did,
            properties: props,
        }
    }

    /// What a row is: distinct id, time, event name, properties.
    type Row = (String, i64, String, Value);

    /// The events of round `round` (6 per round, day `day`): times interleave with other rounds' and repeat, the
    /// properties vary in keys and types (`mixed` is a string in even rounds and a number in odd ones).
    fn round(round: u32, day: i32) -> Vec<(u128, &'static str, &'static str, i64, String)> {
        (0..6u32)
            .map(|i| {
                let did = ["a", "b", "c", "anon"][(i % 4) as usize];
                let event = ["view", "click", "signup"][((i + round) % 3) as usize];
                let ts = i64::from(day) * DAY_US + i64::from((i * 7 + round * 3) % 20) * 1_000;
                let mixed = if round.is_multiple_of(2) {
                    Value::from(format!("m{i}"))
                } else {
                    Value::from(i)
                };
                let mut props = serde_json::json!({"round": round, "i": i, "mixed": mixed});
                match i % 3 {
                    0 => props["plan"] = Value::from(["free", "pro"][(round % 2) as usize]),
                    1 => props["nested"] = serde_json::json!({"a": [1, "x"], "round": round}),
                    _ => {
                        props["ok"] = Value::Bool(round.is_multiple_of(2));
                        props["n"] = Value::from(2.5 + f64::from(round));
                        props["gone"] = Value::Null;
                    }
                }
                let uuid = u128::from(round) << 64 | u128::from(i) | 1 << 100;
                (uuid, did, event, ts, props.to_string())
            })
            .collect()
    }

    /// Appends `rounds` rounds on day `day`, sealing after each; returns every event by uuid as written.
    fn sealed_rounds(
        t: &EventTables,
        rounds: std::ops::Range<u32>,
        day: i32,
    ) -> BTreeMap<u128, Row> {
        let mut all = BTreeMap::new();
        for r in rounds {
            let events = round(r, day);
            t.append(
                events.iter().map(|(u, d, e, ts, p)| evu(*u, d, e, *ts, p)),
                u64::from(r) + 1,
            );
            t.seal().unwrap();
            for (u, d, e, ts, p) in events {
                let props: Value = serde_json::from_str(&p).unwrap();
                all.insert(u, (d.to_owned(), ts, e.to_owned(), props));
            }
        }
        all
    }

    fn identity(t: &EventTables) {
        t.assign_all([(1, "a", 1), (1, "b", 2), (1, "c", 3)]);
    }

    /// Every row of day `day` of snapshot `s` by uuid: sealed rows read from their segment files through
    /// `segments()` + `read_segment` (checking that each file row is its storage row: same time, distinct id and
    /// event as in memory), tail rows from memory.
    fn rows_by_uuid(t: &EventTables, s: &Snapshot, day: i32) -> BTreeMap<u128, Row> {
        let part = &s.partitions[&day];
        let did_name = |row: usize| {
            t.distinct_id_names(s.project_id, &[part.did[row]])
                .remove(0)
        };
        let mut out = BTreeMap::new();
        let mut covered = 0;
        for (file, rows) in part.segments() {
            assert_eq!(
                rows.start, covered,
                "segments cover the sealed rows in order"
            );
            covered = rows.end;
            let mut row = rows.start;
            for b in read_segment(&s.dir.join(file), None).unwrap() {
                let ts = b
                    .column_by_name("timestamp")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>();
                let event = b
                    .column_by_name("event")
                    .unwrap()
                    .as_dictionary::<Int32Type>();
                let did = b
                    .column_by_name("distinct_id")
                    .unwrap()
                    .as_dictionary::<Int32Type>();
                let high = b
                    .column_by_name("uuid_high")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                let low = b
                    .column_by_name("uuid_low")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    let path = Path::new(file);
                    let event_name = dictionary_value(event, i, path).unwrap();
                    let did_value = dictionary_value(did, i, path).unwrap();
                    assert_eq!(ts.value(i), part.ts[row], "{file} row {i}: time");
                    assert_eq!(did_value, did_name(row), "{file} row {i}: distinct id");
                    assert_eq!(
                        event_name,
                        s.events.value(part.event[row]),
                        "{file} row {i}: event"
                    );
                    let uuid =
                        u128::from(high.value(i) as u64) << 64 | u128::from(low.value(i) as u64);
                    let props = Value::Object(row_properties(&b, i));
                    let prev = out.insert(
                        uuid,
                        (
                            did_value.to_owned(),
                            ts.value(i),
                            event_name.to_owned(),
                            props,
                        ),
                    );
                    assert!(prev.is_none(), "uuid {uuid:x} twice");
                    row += 1;
                }
            }
            assert_eq!(row, rows.end, "{file}: row count");
        }
        assert_eq!(covered + part.tail_len(), part.len());
        for (i, tail) in part.tail.iter().enumerate() {
            let row = covered + i;
            let props: Value = serde_json::from_str(&tail.properties).unwrap();
            let prev = out.insert(
                tail.uuid,
                (
                    did_name(row),
                    part.ts[row],
                    s.events.value(part.event[row]).to_owned(),
                    props,
                ),
            );
            assert!(prev.is_none(), "uuid {:x} twice", tail.uuid);
        }
        out
    }

    fn manifest_files(t: &EventTables, day: i32) -> Vec<String> {
        t.read()
            .manifest
            .segments
            .iter()
            .filter(|m| m.partition == day)
            .map(|m| m.file.clone())
            .collect()
    }

    fn segment_files(s: &Snapshot, day: i32) -> Vec<PathBuf> {
        s.partitions[&day]
            .segments()
            .map(|(f, _)| s.dir.join(f))
            .collect()
    }

    #[test]
    fn compaction_merges_a_days_segments_into_one_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..4, D);
        // Another day with a single segment: nothing to merge.
        t.append([evu(7, "a", "view", (D + 1) as i64 * DAY_US, "{}")], 10);
        t.seal().unwrap();
        let before = t.snapshot(1).unwrap();
        let rows_before = rows_of(&before);
        assert_eq!(before.partitions[&D].segments().count(), 4);
        assert_eq!(manifest_files(&t, D).len(), 4);
        assert_eq!(rows_by_uuid(&t, &before, D), written);
        let version = t.version(1);

        let stats = t.compact(LATER).unwrap();
        assert_eq!(
            (
                stats.days,
                stats.segments_in,
                stats.segments_out,
                stats.rows
            ),
            (1, 4, 1, 24)
        );
        assert!(
            stats.bytes_before > stats.bytes_after && stats.bytes_after > 0,
            "{stats:?}"
        );
        assert!(t.version(1) > version, "a new data version");
        let after = t.snapshot(1).unwrap();
        let part = &after.partitions[&D];
        assert_eq!(part.segments().count(), 1);
        assert_eq!(part.segments().next().unwrap().1, 0..24);
        assert_eq!(
            after.partitions[&(D + 1)].segments().count(),
            1,
            "one segment: left alone"
        );
        assert_eq!(
            rows_by_uuid(&t, &after, D),
            written,
            "every row and property, by uuid"
        );
        assert_eq!(
            rows_of(&after),
            rows_before,
            "same persons, times and events"
        );
        assert_eq!(
            rows_of(&before),
            rows_before,
            "the old snapshot is unchanged"
        );
        let files = manifest_files(&t, D);
        assert_eq!(files.len(), 1);
        assert!(files[0].starts_with(&format!("p1/d{D}-g")), "{files:?}");
        assert_eq!(t.segment_rows(), 25);
        assert_eq!(t.lsn(), 10, "the manifest keeps its log position");
        assert_eq!(t.compact(LATER).unwrap().days, 0, "nothing left to merge");

        drop((before, after));
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let reopened = t.snapshot(1).unwrap();
        assert_eq!(manifest_files(&t, D), files);
        assert_eq!(rows_by_uuid(&t, &reopened, D), written);
        assert_eq!(t.segment_rows(), 25);
        assert_eq!(t.lsn(), 10);
        // The merged files were deleted (by the collection at the end of `compact`, or as orphans on open).
        let left: Vec<_> = std::fs::read_dir(dir.path().join("p1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_snapshot_taken_before_compaction_keeps_its_files_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..3, D);
        let old = t.snapshot(1).unwrap();
        let old_files = segment_files(&old, D);
        assert_eq!(old_files.len(), 3);

        let stats = t.compact(LATER).unwrap();
        assert_eq!((stats.days, stats.files_deleted), (1, 0));
        assert_eq!(
            t.collect_retired(),
            0,
            "the old snapshot still lists the files"
        );
        t.seal().unwrap();
        assert!(old_files.iter().all(|f| f.exists()));
        assert_eq!(
            rows_by_uuid(&t, &old, D),
            written,
            "the old snapshot reads every property"
        );
        let clone = old.clone();
        drop(old);
        assert_eq!(
            t.collect_retired(),
            0,
            "a clone of the snapshot holds them too"
        );
        assert_eq!(rows_by_uuid(&t, &clone, D), written);

        drop(clone);
        assert_eq!(t.collect_retired(), 3);
        assert!(old_files.iter().all(|f| !f.exists()));
        assert!(t.retired.lock().unwrap().is_empty());
        let now = t.snapshot(1).unwrap();
        assert_eq!(rows_by_uuid(&t, &now, D), written);
    }

    #[test]
    fn a_snapshot_of_an_older_copy_of_the_partition_keeps_its_files() {
        // The snapshot's partition is not the one compaction replaces: an append made the tables copy it.
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..2, D);
        let old = t.snapshot(1).unwrap();
        t.append(
            [evu(
                99,
                "a",
                "late",
                D as i64 * DAY_US + 5,
                r#"{"late":true}"#,
            )],
            50,
        );
        let old_files = segment_files(&old, D);
        assert_eq!(t.compact(LATER).unwrap().days, 1);
        assert_eq!(t.collect_retired(), 0);
        assert!(old_files.iter().all(|f| f.exists()));
        assert_eq!(rows_by_uuid(&t, &old, D), written);
        drop(old);
        assert_eq!(t.collect_retired(), 2);
        assert!(old_files.iter().all(|f| !f.exists()));
    }

    #[test]
    fn compaction_keeps_the_tail_appended_before_and_during_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let mut written = sealed_rounds(&t, 0..3, D);
        let mut tail = |uuid: u128, did: &'static str, ts: i64, props: &'static str| {
            t.append([evu(uuid, did, "late", ts, props)], 60 + uuid as u64);
            let row = (
                did.into(),
                ts,
                "late".into(),
                serde_json::from_str(props).unwrap(),
            );
            written.insert(uuid, row);
        };
        tail(98, "a", D as i64 * DAY_US + 2, r#"{"late":"before"}"#);
        // The merged segment is written; rows are appended before it is swapped in.
        let c = t.write_compacted(1, D, LATER).unwrap().unwrap();
        tail(99, "b", D as i64 * DAY_US + 3, r#"{"late":"during"}"#);
        let stats = t.install_compacted(c).unwrap().unwrap();
        assert_eq!((stats.segments_in, stats.rows), (3, 18));
        let s = t.snapshot(1).unwrap();
        let part = &s.partitions[&D];
        let segments: Vec<_> = part.segments().map(|(_, rows)| rows).collect();
        assert_eq!(segments, vec![0..18_usize]);
        assert_eq!(part.tail_len(), 2);
        assert_eq!(part.tail_properties(18), Some(r#"{"late":"before"}"#));
        assert_eq!(part.tail_properties(19), Some(r#"{"late":"during"}"#));
        assert_eq!(rows_by_uuid(&t, &s, D), written);
        assert_eq!(t.tail_rows(), 2);

        // Sealed, the tail is a newer segment after the merged one, in memory and in the manifest; the next
        // compaction merges both.
        t.seal().unwrap();
        let s = t.snapshot(1).unwrap();
        let files: Vec<String> = s.partitions[&D]
            .segments()
            .map(|(f, _)| f.to_owned())
            .collect();
        assert_eq!(
            manifest_files(&t, D),
            files,
            "manifest order is storage order"
        );
        assert_eq!(files.len(), 2);
        assert_eq!(rows_by_uuid(&t, &s, D), written);
        drop(s);
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
        // Two late rows beside 18 are a trickle: the day waits (no rewrite for every late event)...
        assert_eq!(t.compact(LATER).unwrap().days, 0);
        // ... until the late rows reach an eighth of the day's segment.
        t.append(
            [evu(
                97,
                "c",
                "late",
                D as i64 * DAY_US + 4,
                r#"{"late":"after"}"#,
            )],
            100,
        );
        t.seal().unwrap();
        written.insert(
            97,
            (
                "c".into(),
                D as i64 * DAY_US + 4,
                "late".into(),
                serde_json::json!({"late": "after"}),
            ),
        );
        let stats = t.compact(LATER).unwrap();
        assert_eq!((stats.segments_in, stats.rows), (3, 21));
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
    }

    /// A past day with small late segments is merged once they are many, even when they stay small.
    #[test]
    fn late_trickles_wait_for_several_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let mut written = sealed_rounds(&t, 0..10, D);
        assert_eq!(
            t.compact(LATER).unwrap().days,
            1,
            "the day's own segments merge once"
        );
        for i in 0..(COMPACT_ENDED_SEGMENTS as u128 - 1) {
            let ts = D as i64 * DAY_US + 5 + i as i64;
            t.append([evu(500 + i, "a", "late", ts, "{}")], 200 + i as u64);
            t.seal().unwrap();
            written.insert(
                500 + i,
                ("a".into(), ts, "late".into(), serde_json::json!({})),
            );
            let due = i as usize + 2 >= COMPACT_ENDED_SEGMENTS;
            assert_eq!(
                t.compact(LATER).unwrap().days,
                usize::from(due),
                "after {} late segments",
                i + 1
            );
        }
        assert_eq!(manifest_files(&t, D).len(), 1);
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
    }

    #[test]
    fn today_is_compacted_an_hour_after_it_ends_or_at_16_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..3, D);
        let end = (D as i64 + 1) * DAY_US;
        for now in [
            D as i64 * DAY_US + 20_000,
            end,
            end + COMPACT_AFTER_DAY_END_US - 1,
        ] {
            assert_eq!(t.compact(now).unwrap(), CompactStats::default(), "at {now}");
        }
        assert_eq!(manifest_files(&t, D).len(), 3);
        assert_eq!(t.compact(end + COMPACT_AFTER_DAY_END_US).unwrap().days, 1);
        assert_eq!(manifest_files(&t, D).len(), 1);

        // Today again (another day): 15 segments wait, the 16th triggers a merge.
        let today = D + 5;
        let now = today as i64 * DAY_US + DAY_US / 2;
        let mut today_rows = sealed_rounds(&t, 0..15, today);
        assert_eq!(t.compact(now).unwrap().days, 0);
        assert_eq!(manifest_files(&t, today).len(), 15);
        today_rows.extend(sealed_rounds(&t, 15..16, today));
        let stats = t.compact(now).unwrap();
        assert_eq!((stats.days, stats.segments_in), (1, 16));
        assert_eq!(manifest_files(&t, today).len(), 1);
        let s = t.snapshot(1).unwrap();
        assert_eq!(rows_by_uuid(&t, &s, today), today_rows);
        assert_eq!(rows_by_uuid(&t, &s, D), written);
        // One segment is never rewritten, however old.
        assert_eq!(t.compact(LATER * 10).unwrap().days, 0);
    }

    #[test]
    fn merges_between_seals_are_reflected_in_the_compacted_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..2, D);
        t.merge(1, 3, 1); // c's person merged into a's
        t.assign(1, "anon", 2); // anon identified as b
        let written_after = sealed_rounds(&t, 2..3, D);
        let s = t.snapshot(1).unwrap();
        let first = segment_files(&s, D).remove(0);
        let persons = |path: &Path| -> Vec<(i64, i64, String)> {
            let mut out = Vec::new();
            for b in read_segment(path, None).unwrap() {
                let p = b
                    .column_by_name("person_id")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                let ts = b
                    .column_by_name("timestamp")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>();
                let did = b
                    .column_by_name("distinct_id")
                    .unwrap()
                    .as_dictionary::<Int32Type>();
                for i in 0..b.num_rows() {
                    let d = dictionary_value(did, i, path).unwrap().to_owned();
                    out.push((p.value(i), ts.value(i), d));
                }
            }
            out
        };
        let old = persons(&first);
        assert!(
            old.iter().any(|(p, _, d)| d == "c" && *p == 3),
            "built before the merge"
        );
        assert!(old.iter().any(|(p, _, d)| d == "anon" && *p == -1));
        // A cached sorted view, in terms of the old storage order.
        let v = s.sorted(&s.partitions[&D]);
        assert_ne!(v.order, (0..18).collect::<Vec<u32>>());
        drop(s);

        assert_eq!(t.compact(LATER).unwrap().days, 1);
        let s = t.snapshot(1).unwrap();
        let merged = persons(&segment_files(&s, D)[0]);
        assert_eq!(merged.len(), 18);
        let now = |d: &str| match d {
            "a" | "c" => 1,
            _ => 2,
        };
        for (p, _, d) in &merged {
            assert_eq!(*p, now(d), "{d}: the person now");
        }
        let keys: Vec<(i64, i64)> = merged.iter().map(|(p, ts, _)| (*p, *ts)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "sorted by (person now, time)");
        let mut all = written;
        all.extend(written_after);
        assert_eq!(rows_by_uuid(&t, &s, D), all);
        // The sorted view (rebuilt) agrees with the file: storage order is now the kernels' order.
        let v = s.sorted(&s.partitions[&D]);
        assert_eq!(v.order, (0..18).collect::<Vec<u32>>());
    }

    #[test]
    fn a_crash_before_the_manifest_commit_leaves_the_new_file_an_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..3, D);
        let old_files = manifest_files(&t, D);
        let c = t.write_compacted(1, D, LATER).unwrap().unwrap();
        let new_file = dir.path().join(&c.meta.file);
        assert!(new_file.exists());
        drop(c);
        drop(t); // the process dies here

        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        assert!(!new_file.exists(), "the unlisted file was deleted on open");
        assert_eq!(manifest_files(&t, D), old_files);
        assert!(old_files.iter().all(|f| dir.path().join(f).exists()));
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
        assert_eq!(t.segment_rows(), 18);
        // And compaction works from there.
        assert_eq!(t.compact(LATER).unwrap().days, 1);
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
    }

    #[test]
    fn a_crash_after_the_manifest_commit_leaves_the_old_files_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..3, D);
        let old_files = manifest_files(&t, D);
        let c = t.write_compacted(1, D, LATER).unwrap().unwrap();
        let (mut manifest, bytes) = compacted_manifest(&t.read().manifest, &c).unwrap();
        assert!(bytes > 0);
        manifest.commit(dir.path()).unwrap();
        let new_file = c.meta.file.clone();
        drop(c);
        drop(t); // the process dies here: the partition still lists the old files, none was retired

        assert!(old_files.iter().all(|f| dir.path().join(f).exists()));
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        assert_eq!(manifest_files(&t, D), [new_file]);
        assert!(
            old_files.iter().all(|f| !dir.path().join(f).exists()),
            "orphans deleted"
        );
        assert_eq!(rows_by_uuid(&t, &t.snapshot(1).unwrap(), D), written);
        assert_eq!(t.segment_rows(), 18, "nothing duplicated");
        assert_eq!(t.lsn(), 3);
    }

    #[test]
    fn a_stale_merge_is_dropped_without_touching_the_live_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let written = sealed_rounds(&t, 0..3, D);
        let stale = t.write_compacted(1, D, LATER).unwrap().unwrap();
        // Another compaction of the day commits first (the seal lock normally prevents this); it even reuses the
        // stale merge's file name.
        assert_eq!(t.compact(LATER).unwrap().days, 1);
        assert_eq!(manifest_files(&t, D), vec![stale.meta.file.clone()]);
        assert_eq!(t.install_compacted(stale).unwrap(), None);
        let s = t.snapshot(1).unwrap();
        assert!(
            segment_files(&s, D).iter().all(|f| f.exists()),
            "the live file is kept"
        );
        assert_eq!(rows_by_uuid(&t, &s, D), written);
    }

    /// A seal whose manifest commit fails keeps its rows in the tail; the next seal writes them under a new
    /// generation (never the failed one's file names), and a restart finds every row exactly once.
    #[test]
    fn a_failed_seal_commit_loses_nothing_and_reuses_no_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        sealed_rounds(&t, 0..1, D);
        let events = round(1, D);
        t.append(
            events.iter().map(|(u, d, e, ts, p)| evu(*u, d, e, *ts, p)),
            2,
        );
        // The manifest's temporary file cannot be created: the commit fails after the segment was written.
        let blocker = dir.path().join("manifest.json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        assert!(t.seal().is_err());
        assert_eq!(t.tail_rows(), 6, "the rows stay in memory");
        let failed: Vec<String> = std::fs::read_dir(dir.path().join("p1"))
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        std::fs::remove_dir(&blocker).unwrap();
        t.seal().unwrap();
        assert_eq!(t.tail_rows(), 0);
        let listed: Vec<String> = t
            .read()
            .manifest
            .segments
            .iter()
            .map(|m| m.file.clone())
            .collect();
        for f in &failed {
            let path = format!("p1/{f}");
            assert!(
                !listed.contains(&path) || f.ends_with("-g1.parquet"),
                "{path}: a failed seal's name is not reused ({listed:?})"
            );
        }
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.segment_rows(), 12, "every row once");
    }

    #[test]
    fn open_deletes_only_unlisted_files_named_like_segments() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        sealed_rounds(&t, 0..1, D);
        sealed_rounds(&t, 0..1, -3); // a day before 1970: `d-3-g2.parquet`
        let listed: Vec<String> = t
            .read()
            .manifest
            .segments
            .iter()
            .map(|m| m.file.clone())
            .collect();
        assert_eq!(listed.len(), 2);
        drop(t);
        let orphans = [
            "p1/d10-g99.parquet",
            "p1/d-3-g7.parquet",
            "p5/d0-g1.parquet",
            "p1/d10-g99.parquet.tmp",
        ];
        let kept = [
            "p1/notes.parquet.tmp",
            "p1/notes.parquet",
            "p1/d10-g1.parquet.bak",
            "p1/d010-g1.parquet",
            "p1/x/d1-g1.parquet",
            "px/d10-g1.parquet",
            "d10-g1.parquet",
            "other.parquet",
        ];
        for f in orphans.iter().chain(&kept) {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let t = EventTables::open(dir.path()).unwrap();
        for f in &orphans {
            assert!(!dir.path().join(f).exists(), "{f} deleted");
        }
        for f in kept.iter().map(|f| f.to_string()).chain(listed) {
            assert!(dir.path().join(&f).exists(), "{f} kept");
        }
        assert_eq!(t.segment_rows(), 12);
    }

    #[test]
    fn no_manifest_means_no_orphan_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let stray = dir.path().join("p1/d10-g1.parquet");
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(&stray, b"x").unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        assert!(stray.exists(), "nothing is deleted before a first commit");
        assert_eq!(t.segment_rows(), 0);
    }

    /// Every file under `dir`, recursively.
    fn all_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Every string of every segment file under `dir`, decoded (dictionary values included).
    fn segment_strings(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for f in all_files(dir) {
            if f.extension().is_none_or(|x| x != "parquet") {
                continue;
            }
            for b in read_segment(&f, None).unwrap() {
                for c in b.columns() {
                    if let Some(d) = c.as_dictionary_opt::<Int32Type>() {
                        if let Some(v) = d.values().as_string_opt::<i32>() {
                            out.extend(v.iter().flatten().map(str::to_owned));
                        }
                    } else if let Some(v) = c.as_string_opt::<i32>() {
                        out.extend(v.iter().flatten().map(str::to_owned));
                    }
                }
            }
        }
        out
    }

    fn raw_mentions(dir: &Path, needle: &str) -> Vec<PathBuf> {
        all_files(dir)
            .into_iter()
            .filter(|f| f.extension().is_none_or(|x| x != "parquet"))
            .filter(|f| {
                std::fs::read(f)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            })
            .collect()
    }

    #[test]
    fn erasing_a_person_removes_their_rows_everywhere_and_masks_their_mentions() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.assign_all([
            (1, "anon-erase-me", 1),
            (1, "user-erase-me", 1),
            (1, "b", 2),
            (1, "c", 3),
        ]);
        t.identity_loaded(1);
        let person = ["anon-erase-me", "user-erase-me"];
        // Day D: two sealed segments; day D + 1: one; both days also get a tail. Some rows of others mention
        // the person.
        let mut expected: BTreeMap<u128, (String, i64)> = BTreeMap::new();
        let mut uuid = 0u128;
        let mut add = |t: &EventTables, did: &str, day: i32, props: &str, lsn: u64| {
            uuid += 1;
            let ts = i64::from(day) * DAY_US + uuid as i64;
            t.append([evu(uuid, did, "view", ts, props)], lsn);
            if !person.contains(&did) {
                expected.insert(uuid, (did.to_owned(), ts));
            }
        };
        for round in 0..3u64 {
            for (i, did) in ["anon-erase-me", "b", "user-erase-me", "c"]
                .iter()
                .enumerate()
            {
                let props = if i == 1 {
                    r#"{"inviter": "user-erase-me", "url": "https://x.io/?u=anon-erase-me"}"#
                } else {
                    r#"{"plan": "pro"}"#
                };
                add(&t, did, D + (round as i32 % 2), props, round + 1);
            }
            if round == 1 {
                // Day D + 2: none of the person's rows, but b's row mentions them (the day is written again).
                add(&t, "b", D + 2, r#"{"inviter": "user-erase-me"}"#, round + 1);
                add(&t, "c", D + 2, r#"{"plan": "pro"}"#, round + 1);
            }
            if round < 2 {
                t.seal().unwrap();
                t.save_identity().unwrap();
            }
        }
        assert!(t.tail_rows() > 0);
        assert!(
            !raw_mentions(dir.path(), "anon-erase-me").is_empty(),
            "saved in the identity files"
        );
        // A query's snapshot reads the old files while the erasure runs; it ends a little later.
        let snap_before = t.snapshot(1).unwrap();
        let query = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(snap_before);
        });
        let stats = t
            .erase(
                1,
                &Erase {
                    distinct_ids: person.iter().map(|d| d.to_string()).collect(),
                    person_ids: vec![1],
                    before_us: None,
                    redactor: Some(crate::rewrite::Redactor::new(
                        person.iter().map(|d| d.to_string()),
                    )),
                },
            )
            .unwrap();
        assert_eq!(stats.rows_removed, 6);
        assert_eq!(stats.rows_redacted, 4);
        assert_eq!(stats.days_rewritten, 3);
        query.join().unwrap();
        assert_eq!(stats.files_pending, 0, "waited for the query: {stats:?}");
        assert_eq!(stats.files_deleted, stats.segments_replaced, "{stats:?}");

        let check = |t: &EventTables, expected: &BTreeMap<u128, (String, i64)>| {
            let s = t.snapshot(1).unwrap();
            let mut got: BTreeMap<u128, (String, i64)> = BTreeMap::new();
            for day in s.partitions.keys() {
                for (u, (did, ts, _, props)) in rows_by_uuid(t, &s, *day) {
                    if did == "b" {
                        assert_eq!(props["inviter"], Value::Null, "{props}");
                        if let Some(url) = props.get("url") {
                            assert_eq!(url, "https://x.io/?u=*************");
                        }
                    }
                    got.insert(u, (did, ts));
                }
            }
            assert_eq!(&got, expected);
            let strings = segment_strings(dir.path());
            assert!(!strings.is_empty());
            for p in person {
                assert!(!strings.iter().any(|v| v.contains(p)), "{p} in a segment");
                assert!(
                    raw_mentions(dir.path(), p).is_empty(),
                    "{p} in {:?}",
                    raw_mentions(dir.path(), p)
                );
            }
        };
        check(&t, &expected);
        assert_eq!(t.read().projects[&1].dense_of.get(&1), None);
        assert_eq!(t.read().projects[&1].dids.get("anon-erase-me"), None);
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(t.identity_seq(), Some(1));
        assert_eq!(t.read().projects[&1].dids.get("user-erase-me"), None);
        // The tail is replayed from the (rewritten) log on a real start: here only the sealed rows are back.
        let sealed: BTreeMap<u128, (String, i64)> = expected
            .iter()
            .filter(|(u, _)| **u <= 10)
            .map(|(u, r)| (*u, r.clone()))
            .collect();
        assert_eq!(sealed.len(), 6, "the two sealed rounds' rows of b and c");
        check(&t, &sealed);
    }

    #[test]
    fn retention_drops_whole_days_and_cuts_the_day_that_straddles_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        identity(&t);
        let mut lsn = 0;
        let mut all: Vec<(i64, i64)> = Vec::new();
        for project in [1, 2] {
            for day in D..D + 4 {
                for h in 0..4i64 {
                    lsn += 1;
                    let ts = i64::from(day) * DAY_US + h * 6 * 3_600_000_000;
                    t.append(
                        [EventRef {
                            project_id: project,
                            ..evu(lsn as u128, "a", "view", ts, "{}")
                        }],
                        lsn,
                    );
                    all.push((project, ts));
                }
            }
            t.seal().unwrap();
        }
        // A tail row on an old day too.
        t.append(
            [evu(999, "b", "view", i64::from(D) * DAY_US + 1, "{}")],
            lsn + 1,
        );
        all.push((1, i64::from(D) * DAY_US + 1));
        let cutoff = i64::from(D + 2) * DAY_US + 12 * 3_600_000_000;
        let files_before = t.read().manifest.segments.len();
        let stats = t
            .erase(
                1,
                &Erase {
                    before_us: Some(cutoff),
                    ..Erase::default()
                },
            )
            .unwrap();
        let expected_removed = all.iter().filter(|(p, ts)| *p == 1 && *ts < cutoff).count();
        assert_eq!(stats.rows_removed, expected_removed as u64);
        assert_eq!(
            stats.segments_written, 1,
            "only the straddling day is written again"
        );
        let count = |t: &EventTables, project: i64| -> Vec<(i32, usize)> {
            t.snapshot(project)
                .unwrap()
                .partitions
                .iter()
                .map(|(d, p)| (*d, p.len()))
                .collect()
        };
        assert_eq!(count(&t, 1), vec![(D + 2, 2), (D + 3, 4)]);
        assert_eq!(count(&t, 2), (D..D + 4).map(|d| (d, 4)).collect::<Vec<_>>());
        assert_eq!(
            t.read().manifest.segments.len(),
            files_before - 2,
            "two old days of project 1 dropped, the straddling one replaced"
        );
        assert!(t
            .read()
            .manifest
            .segments
            .iter()
            .all(|m| m.project_id == 2 || m.min_timestamp_us >= cutoff));
        drop(t);
        let t = EventTables::open(dir.path()).unwrap();
        assert_eq!(count(&t, 1), vec![(D + 2, 2), (D + 3, 4)]);
        assert_eq!(count(&t, 2), (D..D + 4).map(|d| (d, 4)).collect::<Vec<_>>());
    }
}
