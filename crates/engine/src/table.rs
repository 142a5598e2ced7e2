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
//! **Segments.** [`EventTables::seal`] writes each partition's tail as one Parquet segment (sorted by the person at
//! build time, see [`crate::columnar`]) and commits the manifest with the intake-log position the segments cover;
//! on start [`EventTables::open`] loads the segments' core columns, and the caller replays the log from
//! [`EventTables::lsn`] into the tail.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMicrosecondType};
use arrow_array::{Array, DictionaryArray};

use crate::columnar::{read_segment, write_segment, Manifest, SegmentMeta, SegmentRow};
use crate::{EngineError, EventRef};

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
    /// Rows of a sealed segment file, in file order.
    Segment { file: String, rows: Range<usize> },
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
        let mut keyed: Vec<(u32, i64, u32)> = (0..self.len())
            .map(|i| (resolved[self.did[i] as usize], self.ts[i], i as u32))
            .collect();
        keyed.sort_unstable();
        let sorted = Arc::new(Sorted {
            order: keyed.iter().map(|k| k.2).collect(),
            person: keyed.iter().map(|k| k.0).collect(),
            ts: keyed.iter().map(|k| k.1).collect(),
            event: keyed.iter().map(|k| self.event[k.2 as usize]).collect(),
        });
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
            Source::Segment { file, rows } => (file.as_str(), rows.clone()),
        })
    }
}

/// A string dictionary: value ↔ dense index.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    values: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
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
    dense_of: HashMap<i64, u32>,
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
    /// The project (for [`EventTables::distinct_ids`]).
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

struct State {
    manifest: Manifest,
    projects: HashMap<i64, Project>,
    /// Intake-log position of everything appended (sealed or in the tail).
    appended_lsn: u64,
    tail_rows: usize,
}

/// Every project's queryable events. Shared (`Arc`) between the consumer that appends and the queries.
pub struct EventTables {
    dir: PathBuf,
    state: RwLock<State>,
    /// Serializes `seal` (file writes happen outside the state lock).
    seal_lock: Mutex<()>,
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
        let mut projects: HashMap<i64, Project> = HashMap::new();
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
            }),
            seal_lock: Mutex::new(()),
        })
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
            // Build-time person of each row, then the order the file will have (stable: log order on ties).
            let person_of = |row: usize| {
                let dense = job.resolved[part.did[row] as usize];
                job.person_ids[dense as usize]
            };
            let mut order: Vec<usize> = job.rows.clone().collect();
            order.sort_by_key(|&r| (person_of(r), part.ts[r]));
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
        manifest.commit(&self.dir)?;
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
                file: meta.file.clone(),
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
        file: meta.file.clone(),
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
}
