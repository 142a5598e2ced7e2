//! Insights over the embedded engine: an [`InsightQuery`] (parsed and validated by `flywheel-query`) runs as
//! kernels (`flywheel-kernels`) over a snapshot of the project's event tables.
//!
//! Planning is small and explicit: every event spec of the query (a series, a funnel step, an exclusion, a
//! retention start or return event) gets a bit; each partition's sorted view gets a per-row mask of the specs it
//! matches (by event name, looked up once per event name); the partitions the date range needs become the kernel's
//! blocks. Persons are the engine's dense persons (identity merges applied at read time).
//!
//! Filters on event properties (read column by column from the segments) and on person properties (read once per
//! query from the metadata store, cached per identity epoch) clear the bit of the rows they reject; see
//! `insight_filters` for their semantics.
//!
//! Cohort filters are per-person passes like person-property filters (memberships from `cohorts`); a cohort
//! breakdown runs the query once per cohort.
//!
//! Not yet supported (answered with `400 unsupported`, naming the field, rather than a wrong number): event and
//! group breakdowns of retention, breakdowns of group aggregations.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use flywheel_engine::table::{Partition, Snapshot, Sorted};
use flywheel_engine::EngineError;
use flywheel_kernels as k;
use flywheel_query::plan::{Plan, Read};
use flywheel_query::{
    BreakdownBy, EventRef, EventSpec, Filter, FunnelOrder, InsightQuery, Math, PerUserMath,
    RetentionCohort, RetentionMode,
};
use serde_json::{json, Value};

use crate::insight_render::{self as render, SeriesRows};

/// A problem with a definition that parsing could not see (it depends on the engine), naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub field: String,
    pub message: String,
}

/// Why a query did not run.
#[derive(Debug)]
pub enum RunError {
    /// The definition asks for something this engine cannot answer (a 400 naming the field).
    Unsupported(Unsupported),
    /// Reading the segments failed (a 500).
    Storage(EngineError),
}

impl From<Unsupported> for RunError {
    fn from(u: Unsupported) -> Self {
        RunError::Unsupported(u)
    }
}

impl From<EngineError> for RunError {
    fn from(e: EngineError) -> Self {
        RunError::Storage(e)
    }
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Unsupported {
    Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// One person property of every person of a project: the distinct values (as breakdown labels) and each
/// person's value index.
#[derive(Debug, Default)]
pub struct PersonColumn {
    /// Metadata-store person id → index into `values`.
    pub by_person: std::collections::HashMap<i64, u32>,
    /// Distinct values, as labels (strings as they are, other JSON as its text).
    pub values: Vec<String>,
    /// The value index of each dense person of the engine (`values.len()`: none), built on first use and
    /// extended as dense persons are added (their ids never change).
    dense: std::sync::Mutex<Arc<Vec<u32>>>,
}

impl PersonColumn {
    /// Each dense person's value index (`values.len()` when the person has none).
    fn dense_codes(&self, person_ids: &[i64]) -> Arc<Vec<u32>> {
        let mut dense = self.dense.lock().expect("dense codes");
        if dense.len() != person_ids.len() {
            let none = self.values.len() as u32;
            let have = dense.len().min(person_ids.len());
            let mut codes: Vec<u32> = dense[..have].to_vec();
            codes.extend(
                person_ids[have..]
                    .iter()
                    .map(|id| self.by_person.get(id).copied().unwrap_or(none)),
            );
            *dense = Arc::new(codes);
        }
        dense.clone()
    }

    /// A copy with `changes` applied: `(person, value)`, `Null` when the person no longer has the property.
    fn with_changes(&self, changes: Vec<(i64, Value)>) -> PersonColumn {
        let mut col = PersonColumn {
            by_person: self.by_person.clone(),
            values: self.values.clone(),
            dense: Default::default(),
        };
        let mut index: std::collections::HashMap<String, u32> = col
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32))
            .collect();
        for (person, v) in changes {
            col.set(&mut index, person, &v);
        }
        col
    }

    /// Sets (or, for `Null`, clears) the value of `person`; `index` maps labels to their value index.
    fn set(&mut self, index: &mut std::collections::HashMap<String, u32>, person: i64, v: &Value) {
        if v.is_null() {
            self.by_person.remove(&person);
            return;
        }
        let label = label_of(v);
        let next = index.len() as u32;
        let code = *index.entry(label.clone()).or_insert_with(|| {
            self.values.push(label);
            next
        });
        self.by_person.insert(person, code);
    }

    const MAGIC: &'static [u8] = b"FWPCOL01";

    /// The file that keeps the column of `key` of `project_id` under `dir` between restarts.
    fn path(dir: &std::path::Path, project_id: i64, key: &str) -> std::path::PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("p{project_id}"))
            .join(format!("{name}.col"))
    }

    /// Writes the column (as of identity sequence number `seq`) to its file.
    fn save(
        &self,
        dir: &std::path::Path,
        project_id: i64,
        key: &str,
        seq: i64,
    ) -> std::io::Result<()> {
        let mut w = flywheel_engine::sidecar::Writer::new(Self::MAGIC);
        w.str(key);
        w.i64(seq);
        w.u64(self.values.len() as u64);
        for v in &self.values {
            w.str(v);
        }
        w.u64(self.by_person.len() as u64);
        for (&person, &code) in &self.by_person {
            w.i64(person);
            w.u32(code);
        }
        flywheel_engine::sidecar::write(&Self::path(dir, project_id, key), w.bytes)
    }

    /// The column saved by [`PersonColumn::save`] and its sequence number; `None` when there is none or it is
    /// unusable (logged; it is read again from the store).
    fn load(dir: &std::path::Path, project_id: i64, key: &str) -> Option<(i64, PersonColumn)> {
        let path = Self::path(dir, project_id, key);
        let parse = |body: &[u8]| -> Result<(i64, PersonColumn), String> {
            let mut r = flywheel_engine::sidecar::Reader::new(body);
            if r.str()? != key {
                return Err("another property's column".into());
            }
            let seq = r.i64()?;
            let mut col = PersonColumn::default();
            for _ in 0..r.count(4)? {
                col.values.push(r.str()?.to_owned());
            }
            let n = r.count(12)?;
            col.by_person.reserve(n);
            for _ in 0..n {
                let (person, code) = (r.i64()?, r.u32()?);
                if code as usize >= col.values.len() {
                    return Err("a value index out of range".into());
                }
                col.by_person.insert(person, code);
            }
            if !r.is_empty() {
                return Err("trailing bytes".into());
            }
            Ok((seq, col))
        };
        match flywheel_engine::sidecar::read(&path, Self::MAGIC)
            .and_then(|b| b.map(|b| parse(&b)).transpose())
        {
            Ok(found) => found,
            Err(reason) => {
                tracing::warn!(reason, path = %path.display(), "insights: ignoring an unusable saved person-property column");
                None
            }
        }
    }
}

/// Value of the "other values" breakdown row (PostHog's marker, so its clients label it).
pub const BREAKDOWN_OTHER: &str = "$$_posthog_breakdown_other_$$";

pub(crate) fn label_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A person-property column as of an identity epoch and sequence number (see [`InsightsCache::person_column`]).
#[derive(Clone)]
struct CachedColumn {
    epoch: u64,
    seq: i64,
    /// The sequence number of its saved file (`None`: not saved).
    saved: Option<i64>,
    column: Arc<PersonColumn>,
}

/// (project, key) → column.
type ColumnCache = std::collections::HashMap<(i64, String), CachedColumn>;

/// Person-property columns, cached per (project, key) and brought up to date from the store's identity changes
/// when the identity epoch moved (any new person, property change or merge), and answers.
#[derive(Default)]
pub struct InsightsCache {
    columns: std::sync::Mutex<ColumnCache>,
    /// Where person-property columns are saved between restarts (`None`: not saved, e.g. in unit tests).
    columns_dir: Option<std::path::PathBuf>,
    /// Answers by (project, definition, resolved range, data version, identity epoch): any new event, merge or
    /// property change makes a different key, so an entry is never stale, only unused.
    results: std::sync::Mutex<std::collections::HashMap<String, Arc<Value>>>,
}

const COLUMN_CACHE_ENTRIES: usize = 32;
const RESULT_CACHE_ENTRIES: usize = 512;

impl InsightsCache {
    pub(crate) fn result(&self, key: &str) -> Option<Arc<Value>> {
        self.results.lock().expect("result cache").get(key).cloned()
    }

    pub(crate) fn keep_result(&self, key: String, value: Arc<Value>) {
        let mut cache = self.results.lock().expect("result cache");
        if cache.len() >= RESULT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, value);
    }

    /// An empty cache whose person-property columns are saved under `dir` (see [`InsightsCache::save_columns`]).
    pub fn with_columns_dir(dir: std::path::PathBuf) -> InsightsCache {
        InsightsCache {
            columns_dir: Some(dir),
            ..Default::default()
        }
    }

    /// The column of `key` for `project_id` as of identity `epoch`: cached for it; or the cached (or saved) column
    /// with the persons changed since its sequence number re-read from the store; or, the first time, every person
    /// read from the store (about a second per million persons: a million JSON documents; then saved in the
    /// background, so a restart reads only what changed).
    pub async fn person_column(
        &self,
        store: &flywheel_store::Store,
        project_id: i64,
        key: &str,
        epoch: u64,
    ) -> Result<Arc<PersonColumn>, flywheel_store::StoreError> {
        let cache_key = (project_id, key.to_owned());
        let cached = self
            .columns
            .lock()
            .expect("column cache")
            .get(&cache_key)
            .cloned();
        if let Some(c) = &cached {
            if c.epoch == epoch {
                return Ok(c.column.clone());
            }
        }
        let base = match cached {
            Some(c) => Some((c.seq, c.saved, c.column)),
            None => match &self.columns_dir {
                Some(dir) => {
                    let (dir, k) = (dir.clone(), key.to_owned());
                    tokio::task::spawn_blocking(move || PersonColumn::load(&dir, project_id, &k))
                        .await
                        .ok()
                        .flatten()
                        .map(|(seq, col)| (seq, Some(seq), Arc::new(col)))
                }
                None => None,
            },
        };
        let entry = match base {
            Some((since, saved, column)) => {
                let mut changes = Vec::new();
                let read = store
                    .read_person_property(project_id, key, Some(since), |person, v| {
                        changes.push((person, v))
                    })
                    .await?;
                let column = if changes.is_empty() {
                    column
                } else {
                    Arc::new(column.with_changes(changes))
                };
                CachedColumn {
                    epoch,
                    seq: read.seq.max(since),
                    saved,
                    column,
                }
            }
            None => {
                let mut col = PersonColumn::default();
                let mut index = std::collections::HashMap::new();
                let read = store
                    .read_person_property(project_id, key, None, |person, v| {
                        col.set(&mut index, person, &v)
                    })
                    .await?;
                CachedColumn {
                    epoch,
                    seq: read.seq,
                    saved: None,
                    column: Arc::new(col),
                }
            }
        };
        let column = entry.column.clone();
        let first_read = entry.saved.is_none();
        {
            let mut cache = self.columns.lock().expect("column cache");
            if cache.len() >= COLUMN_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(cache_key, entry);
        }
        if first_read {
            // Saved at once, so that a restart never reads every person again (tens of ms next to the read).
            self.save_column(project_id, key).await;
        }
        Ok(column)
    }

    /// Saves the column of (project, key) if it changed since it was last saved; failures are logged (the next
    /// start reads it from the store).
    async fn save_column(&self, project_id: i64, key: &str) {
        let cache_key = (project_id, key.to_owned());
        let job = self.columns_dir.clone().and_then(|dir| {
            let cache = self.columns.lock().expect("column cache");
            let c = cache.get(&cache_key)?;
            (c.saved != Some(c.seq)).then(|| (dir, c.seq, c.column.clone()))
        });
        let Some((dir, seq, column)) = job else {
            return;
        };
        let k = key.to_owned();
        match tokio::task::spawn_blocking(move || column.save(&dir, project_id, &k, seq)).await {
            Ok(Ok(())) => {
                if let Some(c) = self
                    .columns
                    .lock()
                    .expect("column cache")
                    .get_mut(&cache_key)
                {
                    if c.seq == seq {
                        c.saved = Some(seq);
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, project_id, key, "insights: cannot save a person-property column")
            }
            Err(err) => tracing::warn!(error = %err, "insights: column save task failed"),
        }
    }

    /// Forgets everything cached about `project_id`'s persons — its person-property columns, in memory and their
    /// saved files — and every cached answer (a GDPR erasure: the columns held the erased person's values, and
    /// answers such as funnel persons their distinct ids). The columns are read again from the store when used.
    pub async fn forget_project(&self, project_id: i64) {
        self.columns
            .lock()
            .expect("column cache")
            .retain(|(p, _), _| *p != project_id);
        self.results.lock().expect("result cache").clear();
        if let Some(dir) = &self.columns_dir {
            let dir = dir.join(format!("p{project_id}"));
            let removed =
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                })
                .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(
                    project_id,
                    "insights: cannot delete the saved person-property columns"
                );
            }
        }
    }

    /// Saves every cached person-property column that changed since it was saved (on shutdown).
    pub async fn save_columns(&self) {
        let keys: Vec<(i64, String)> = self
            .columns
            .lock()
            .expect("column cache")
            .keys()
            .cloned()
            .collect();
        for (project_id, key) in keys {
            self.save_column(project_id, &key).await;
        }
    }
}

/// A person-property breakdown resolved for one query: each dense person's code, and each code's label.
struct PersonCodes {
    codes: Vec<u32>,
    labels: Vec<Value>,
}

/// Ranks the values of `col` by the rows matching `bits` in `blocks` (most first, then by value), keeps the top
/// `limit` (values without rows are left out), folds the rest into [`BREAKDOWN_OTHER`], and persons without the
/// property into a `null` row.
fn person_codes(
    snap: &Snapshot,
    col: &PersonColumn,
    blocks: &[k::Block<'_>],
    bits: u64,
    limit: usize,
) -> PersonCodes {
    let raw = col.dense_codes(&snap.person_ids);
    let mut counts = vec![0u64; col.values.len() + 1];
    for b in blocks {
        for (i, &m) in b.mask.iter().enumerate() {
            if m & bits != 0 {
                counts[raw[b.person[i] as usize] as usize] += 1;
            }
        }
    }
    let (remap, labels) = rank_codes(&counts, &col.values, limit);
    PersonCodes {
        codes: raw.iter().map(|&c| remap[c as usize]).collect(),
        labels,
    }
}

/// Ranks breakdown values by their matching rows (`counts[i]` for value `i`, the last entry for rows without a
/// value): the top `limit` values with rows keep a code each (most rows first, then by value), the rest share
/// [`BREAKDOWN_OTHER`], rows without a value get the `null` code. Returns the old → new code map and the labels.
fn rank_codes(counts: &[u64], values: &[String], limit: usize) -> (Vec<u32>, Vec<Value>) {
    let none = values.len() as u32;
    let mut ranked: Vec<u32> = (0..none).filter(|&c| counts[c as usize] > 0).collect();
    ranked.sort_by(|&a, &b| {
        counts[b as usize]
            .cmp(&counts[a as usize])
            .then_with(|| values[a as usize].cmp(&values[b as usize]))
    });
    let kept = ranked.len().min(limit);
    let mut remap = vec![u32::MAX; values.len() + 1];
    let mut labels: Vec<Value> = Vec::new();
    for (i, &c) in ranked[..kept].iter().enumerate() {
        remap[c as usize] = i as u32;
        labels.push(Value::String(values[c as usize].clone()));
    }
    if ranked.len() > kept {
        let other = labels.len() as u32;
        for &c in &ranked[kept..] {
            remap[c as usize] = other;
        }
        labels.push(Value::String(BREAKDOWN_OTHER.into()));
    }
    // Values without matching rows count nowhere: any code will do; they share the null row's.
    let none_code = labels.len() as u32;
    labels.push(Value::Null);
    for r in remap.iter_mut() {
        if *r == u32::MAX {
            *r = none_code;
        }
    }
    (remap, labels)
}

/// Event-property breakdown codes for prepared partitions: per partition, a code per sorted row (see
/// [`rank_codes`]), and the labels.
fn event_codes(
    snap: &Snapshot,
    prepared: &[Prepared],
    key: &str,
    bits: u64,
    limit: usize,
) -> Result<(Vec<Vec<u32>>, Vec<Value>), EngineError> {
    row_codes(snap, prepared, key, bits, limit, |v| Some(label_of(v)))
}

/// Group-property breakdown codes: each row's value is its group's (of the column's type, from `$groups`).
fn group_codes(
    snap: &Snapshot,
    prepared: &[Prepared],
    column: &GroupColumn,
    bits: u64,
    limit: usize,
) -> Result<(Vec<Vec<u32>>, Vec<Value>), EngineError> {
    let Some(type_name) = column.type_name.as_deref() else {
        return row_codes(snap, prepared, "$groups", bits, limit, |_| None);
    };
    row_codes(snap, prepared, "$groups", bits, limit, |v| {
        let key = v.get(type_name)?.as_str()?;
        column
            .by_key
            .get(key)
            .filter(|v| !v.is_null())
            .map(label_of)
    })
}

/// Per prepared partition a breakdown code per row, and each code's label.
type RowCodes = (Vec<Vec<u32>>, Vec<Value>);

/// Per-row codes of an event- or group-property breakdown (`None` for other breakdowns, or a group property of a
/// type the project does not have), ranked by the rows matching `bits`.
fn row_breakdown(
    snap: &Snapshot,
    prepared: &[Prepared],
    breakdown: &Option<flywheel_query::Breakdown>,
    columns: &Columns,
    bits: u64,
) -> Result<Option<RowCodes>, EngineError> {
    let Some(b) = breakdown else {
        return Ok(None);
    };
    let limit = b
        .limit
        .unwrap_or(flywheel_query::filter::DEFAULT_BREAKDOWN_LIMIT) as usize;
    Ok(match &b.by {
        BreakdownBy::Event { property } => {
            Some(event_codes(snap, prepared, property, bits, limit)?)
        }
        BreakdownBy::Group {
            group_type_index,
            property,
        } => match columns.groups.get(&(*group_type_index, property.clone())) {
            Some(col) => Some(group_codes(snap, prepared, col, bits, limit)?),
            None => None,
        },
        BreakdownBy::Person { .. } | BreakdownBy::Cohort { .. } => None,
    })
}

/// Breakdown codes from the event property `key` of each row, labelled by `label` (`None`: no value).
fn row_codes(
    snap: &Snapshot,
    prepared: &[Prepared],
    key: &str,
    bits: u64,
    limit: usize,
    mut label: impl FnMut(&Value) -> Option<String>,
) -> Result<(Vec<Vec<u32>>, Vec<Value>), EngineError> {
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut values: Vec<String> = Vec::new();
    let mut per_part = Vec::with_capacity(prepared.len());
    for p in prepared {
        let storage =
            crate::insight_filters::map_event_property(snap, &p.part, key, u32::MAX, |v| {
                let Some(label) = label(v) else {
                    return u32::MAX;
                };
                let next = values.len() as u32;
                *index.entry(label.clone()).or_insert_with(|| {
                    values.push(label);
                    next
                })
            })?;
        per_part.push(
            p.storage_rows()
                .iter()
                .map(|&r| storage[r as usize])
                .collect::<Vec<u32>>(),
        );
    }
    let none = values.len() as u32;
    let mut counts = vec![0u64; values.len() + 1];
    for (p, codes) in prepared.iter().zip(&mut per_part) {
        for (c, &m) in codes.iter_mut().zip(&p.mask) {
            if *c == u32::MAX {
                *c = none;
            }
            if m & bits != 0 {
                counts[*c as usize] += 1;
            }
        }
    }
    let (remap, labels) = rank_codes(&counts, &values, limit);
    for codes in &mut per_part {
        for c in codes.iter_mut() {
            *c = remap[*c as usize];
        }
    }
    Ok((per_part, labels))
}

/// Numbers of the event property `key` per sorted row of each prepared partition (`NaN` where there is none).
fn event_numbers(
    snap: &Snapshot,
    prepared: &[Prepared],
    key: &str,
) -> Result<Vec<Vec<f64>>, EngineError> {
    prepared
        .iter()
        .map(|p| {
            let storage =
                crate::insight_filters::map_event_property(snap, &p.part, key, f64::NAN, |v| {
                    crate::insight_filters::number(v).unwrap_or(f64::NAN)
                })?;
            Ok(p.storage_rows()
                .iter()
                .map(|&r| storage[r as usize])
                .collect())
        })
        .collect()
}

/// The person column a query needs, if any (its breakdown's property).
pub fn person_breakdown_key(q: &InsightQuery) -> Option<&str> {
    let b = match q {
        InsightQuery::Trends(t) => t.breakdown.as_ref(),
        InsightQuery::Funnel(f) => f.breakdown.as_ref(),
        InsightQuery::Retention(r) => r.breakdown.as_ref(),
        InsightQuery::Stickiness(_) | InsightQuery::Lifecycle(_) => None,
    }?;
    match &b.by {
        BreakdownBy::Person { property } => Some(property),
        _ => None,
    }
}

fn person_breakdown_key_of(b: &Option<flywheel_query::Breakdown>) -> Option<&str> {
    match &b.as_ref()?.by {
        BreakdownBy::Person { property } => Some(property),
        _ => None,
    }
}

fn check_breakdown(
    b: &Option<flywheel_query::Breakdown>,
    event_ok: bool,
) -> Result<(), Unsupported> {
    match b.as_ref().map(|b| &b.by) {
        None | Some(BreakdownBy::Person { .. }) => Ok(()),
        Some(BreakdownBy::Event { .. } | BreakdownBy::Group { .. }) if event_ok => Ok(()),
        // Run once per cohort by `by_cohorts`.
        Some(BreakdownBy::Cohort { .. }) => Ok(()),
        Some(_) => Err(unsupported(
            "breakdown.type",
            "only person-property and cohort breakdowns are supported by the embedded engine for this kind yet",
        )),
    }
}

/// One partition prepared for a kernel: its sorted rows with their masks — only the rows some spec matches,
/// unless the kernel needs every row (strict funnels).
pub(crate) struct Prepared {
    part: Arc<Partition>,
    sorted: Arc<Sorted>,
    pub(crate) mask: Vec<u64>,
    kept: Option<Kept>,
}

/// The rows of a sorted view that match some spec.
struct Kept {
    /// Index in the sorted view of each kept row.
    rows: Vec<u32>,
    person: Vec<u32>,
    ts: Vec<i64>,
}

impl Prepared {
    /// The partition.
    pub(crate) fn partition(&self) -> &Partition {
        &self.part
    }

    pub(crate) fn person(&self) -> &[u32] {
        self.kept
            .as_ref()
            .map_or(&self.sorted.person, |k| &k.person)
    }

    pub(crate) fn ts(&self) -> &[i64] {
        self.kept.as_ref().map_or(&self.sorted.ts, |k| &k.ts)
    }

    /// The storage row (in the partition) of each prepared row.
    pub(crate) fn storage_rows(&self) -> Vec<u32> {
        match &self.kept {
            Some(k) => k
                .rows
                .iter()
                .map(|&i| self.sorted.order[i as usize])
                .collect(),
            None => self.sorted.order.clone(),
        }
    }
}

/// The person- and group-property columns a query needs.
#[derive(Debug, Default)]
pub struct Columns {
    /// Person properties by key.
    pub persons: std::collections::HashMap<String, Arc<PersonColumn>>,
    /// Group properties by (group type index, key).
    pub groups: std::collections::HashMap<(u8, String), GroupColumn>,
    /// The cohorts the query uses (loaded by the caller).
    pub cohort_defs: crate::cohorts::Cohorts,
    /// Each used cohort's membership per dense person (computed by [`run`] from `cohort_defs`).
    pub cohorts: std::collections::HashMap<u64, Arc<Vec<bool>>>,
}

impl Columns {
    /// The person column of `key`.
    pub fn get(&self, key: &str) -> Option<&Arc<PersonColumn>> {
        self.persons.get(key)
    }
}

/// One property of every group of a type: the type's name (to find an event's group in `$groups`) and each
/// group key's value.
#[derive(Debug, Default)]
pub struct GroupColumn {
    /// `None`: the project has no group type of that index (no event has such a group).
    pub type_name: Option<String>,
    pub by_key: std::collections::HashMap<String, Value>,
}

/// The group property a trends, funnel or retention query breaks down by: (group type index, property).
pub(crate) fn group_breakdown(q: &InsightQuery) -> Option<(u8, &str)> {
    let breakdown = match q {
        InsightQuery::Trends(t) => t.breakdown.as_ref(),
        InsightQuery::Funnel(f) => f.breakdown.as_ref(),
        InsightQuery::Retention(r) => r.breakdown.as_ref(),
        _ => None,
    }?;
    match &breakdown.by {
        BreakdownBy::Group {
            group_type_index,
            property,
        } => Some((*group_type_index, property.as_str())),
        _ => None,
    }
}

/// The group properties a query filters on: (group type index, key).
pub fn group_keys(q: &InsightQuery) -> Vec<(u8, String)> {
    let mut out: Vec<(u8, String)> = all_filters(q)
        .into_iter()
        .filter_map(|f| match f {
            Filter::Property(p) if p.property_type == flywheel_query::PropertyType::Group => {
                Some((p.group_type_index.unwrap_or(0), p.key.clone()))
            }
            _ => None,
        })
        .collect();
    if let Some((index, property)) = group_breakdown(q) {
        out.push((index, property.to_owned()));
    }
    out.sort();
    out.dedup();
    out
}

/// A compiled filter and where its value comes from.
enum Source {
    /// The event's property: evaluated per partition.
    Event(crate::insight_filters::Compiled),
    /// The person's property or cohort membership: evaluated once per dense person.
    Person(Vec<bool>),
    /// The property of the event's group of a type (named in `$groups`): tested once per group, looked up per row.
    Group {
        type_name: Option<String>,
        pass: std::collections::HashMap<String, bool>,
        missing: bool,
    },
}

/// The event specs of a query, compiled against a snapshot's event dictionary.
pub(crate) struct Specs {
    /// Per event-name index: the bits of the specs that accept it.
    by_event: Vec<u64>,
    /// Distinct filters of all specs.
    filters: Vec<Source>,
    /// Per spec bit: the indexes into `filters` that must hold.
    needs: Vec<Vec<usize>>,
}

impl Specs {
    /// `common` filters apply to every spec.
    pub(crate) fn new(
        snap: &Snapshot,
        plan: &Plan,
        columns: &Columns,
    ) -> Result<Specs, Unsupported> {
        let common = &plan.common[..];
        let mut by_event = vec![0u64; snap.events.len()];
        let mut filters: Vec<Source> = Vec::new();
        let mut seen: Vec<&Filter> = Vec::new();
        let mut needs = Vec::new();
        for (bit, scan) in plan.specs.iter().enumerate() {
            let spec = &scan.spec;
            match &spec.event {
                EventRef::All => by_event.iter_mut().for_each(|m| *m |= 1 << bit),
                EventRef::Named(name) => {
                    if let Some(i) = snap.events.get(name) {
                        by_event[i as usize] |= 1 << bit;
                    }
                }
            }
            let mut mine = Vec::new();
            for f in spec.properties.iter().chain(common) {
                let at = match seen.iter().position(|x| *x == f) {
                    Some(at) => at,
                    None => {
                        let pf = match f {
                            Filter::Property(pf) => pf,
                            Filter::Cohort { id, negate } => {
                                let members = columns.cohorts.get(id).ok_or_else(|| {
                                    unsupported("properties", format!("cohort {id} was not loaded"))
                                })?;
                                seen.push(f);
                                filters.push(Source::Person(
                                    members.iter().map(|&m| m != *negate).collect(),
                                ));
                                mine.push(filters.len() - 1);
                                continue;
                            }
                        };
                        let compiled = crate::insight_filters::Compiled::new(pf);
                        let source = match pf.property_type {
                            flywheel_query::PropertyType::Person => {
                                Source::Person(person_pass(snap, columns.get(&pf.key), &compiled))
                            }
                            flywheel_query::PropertyType::Group => {
                                let col = columns
                                    .groups
                                    .get(&(pf.group_type_index.unwrap_or(0), pf.key.clone()));
                                Source::Group {
                                    type_name: col.and_then(|c| c.type_name.clone()),
                                    pass: col
                                        .map(|c| {
                                            c.by_key
                                                .iter()
                                                .map(|(k, v)| {
                                                    (k.clone(), compiled.matches(Some(v)))
                                                })
                                                .collect()
                                        })
                                        .unwrap_or_default(),
                                    missing: compiled.matches(None),
                                }
                            }
                            flywheel_query::PropertyType::Event => Source::Event(compiled),
                        };
                        seen.push(f);
                        filters.push(source);
                        filters.len() - 1
                    }
                };
                mine.push(at);
            }
            needs.push(mine);
        }
        Ok(Specs {
            by_event,
            filters,
            needs,
        })
    }

    /// The partitions overlapping `[from, to)` (all of them for `None`), sorted and masked; with `compact`, only
    /// the rows that match some spec (every kernel but the strict funnel ignores the others).
    pub(crate) fn prepare(
        &self,
        snap: &Snapshot,
        range: Option<(i64, i64)>,
        compact: bool,
    ) -> Result<Vec<Prepared>, EngineError> {
        let parts: Vec<&Arc<Partition>> = match range {
            Some((from, to)) => snap.partitions_in(from, to).map(|(_, p)| p).collect(),
            None => snap.partitions.values().collect(),
        };
        // Partitions are independent: prepare them on every core (the kernels are parallel by person after).
        let threads = k::default_threads().min(parts.len()).max(1);
        let prepared: Vec<Result<Vec<(usize, Prepared)>, EngineError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let parts = &parts;
                        scope.spawn(move || {
                            (t..parts.len())
                                .step_by(threads)
                                .map(|i| Ok((i, self.prepare_one(snap, parts[i], compact)?)))
                                .collect()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("prepare thread panicked"))
                    .collect()
            });
        let mut out: Vec<(usize, Prepared)> = Vec::with_capacity(parts.len());
        for chunk in prepared {
            out.extend(chunk?);
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    fn prepare_one(
        &self,
        snap: &Snapshot,
        p: &Arc<Partition>,
        compact: bool,
    ) -> Result<Prepared, EngineError> {
        let sorted = snap.sorted(p);
        if compact && self.filters.is_empty() {
            // The event's bits decide; only matching rows are copied, into vectors sized by a counting pass first
            // (growing them by doubling touched twice the memory, and fresh memory costs its page faults: on a
            // cold start most of a query's time was the kernel zeroing pages).
            let n = sorted
                .event
                .iter()
                .filter(|&&e| self.by_event[e as usize] != 0)
                .count();
            let mut kept = Kept {
                rows: Vec::with_capacity(n),
                person: Vec::with_capacity(n),
                ts: Vec::with_capacity(n),
            };
            let mut mask = Vec::with_capacity(n);
            for (i, &e) in sorted.event.iter().enumerate() {
                let m = self.by_event[e as usize];
                if m != 0 {
                    kept.rows.push(i as u32);
                    kept.person.push(sorted.person[i]);
                    kept.ts.push(sorted.ts[i]);
                    mask.push(m);
                }
            }
            return Ok(Prepared {
                part: p.clone(),
                sorted,
                mask,
                kept: Some(kept),
            });
        }
        let mut mask: Vec<u64> = sorted
            .event
            .iter()
            .map(|&e| self.by_event[e as usize])
            .collect();
        if !self.filters.is_empty() {
            // Which rows pass each filter (event filters in storage order, person filters by person).
            let mut event_pass: Vec<Option<Vec<bool>>> = Vec::with_capacity(self.filters.len());
            for source in &self.filters {
                event_pass.push(match source {
                    Source::Event(f) => Some(crate::insight_filters::event_pass(snap, p, f)?),
                    Source::Person(_) => None,
                    Source::Group {
                        type_name,
                        pass,
                        missing,
                    } => Some(match type_name {
                        None => vec![*missing; p.len()],
                        Some(t) => crate::insight_filters::map_event_property(
                            snap,
                            p,
                            "$groups",
                            *missing,
                            |v| match v.get(t).and_then(Value::as_str) {
                                Some(key) => pass.get(key).copied().unwrap_or(*missing),
                                None => *missing,
                            },
                        )?,
                    }),
                });
            }
            for (bit, needs) in self.needs.iter().enumerate() {
                for &fi in needs {
                    let clear = !(1u64 << bit);
                    match (&self.filters[fi], &event_pass[fi]) {
                        (Source::Person(pass), _) => {
                            for (m, &person) in mask.iter_mut().zip(&sorted.person) {
                                if !pass[person as usize] {
                                    *m &= clear;
                                }
                            }
                        }
                        (Source::Event(_) | Source::Group { .. }, Some(pass)) => {
                            for (m, &row) in mask.iter_mut().zip(&sorted.order) {
                                if !pass[row as usize] {
                                    *m &= clear;
                                }
                            }
                        }
                        (Source::Event(_) | Source::Group { .. }, None) => {}
                    }
                }
            }
        }
        let kept = compact.then(|| {
            let rows: Vec<u32> = (0..mask.len() as u32)
                .filter(|&i| mask[i as usize] != 0)
                .collect();
            Kept {
                person: rows.iter().map(|&i| sorted.person[i as usize]).collect(),
                ts: rows.iter().map(|&i| sorted.ts[i as usize]).collect(),
                rows,
            }
        });
        if let Some(k) = &kept {
            mask = k.rows.iter().map(|&i| mask[i as usize]).collect();
        }
        Ok(Prepared {
            part: p.clone(),
            sorted,
            mask,
            kept,
        })
    }
}

fn blocks(prepared: &[Prepared]) -> Vec<k::Block<'_>> {
    prepared
        .iter()
        .map(|p| k::Block {
            person: p.person(),
            ts: p.ts(),
            mask: &p.mask,
            breakdown: None,
            value: None,
        })
        .collect()
}

/// Each dense person's pass of a person-property filter: tested once per distinct value of the column, then
/// looked up per person (`None`: no person has the property).
pub(crate) fn person_pass(
    snap: &Snapshot,
    col: Option<&Arc<PersonColumn>>,
    compiled: &crate::insight_filters::Compiled,
) -> Vec<bool> {
    match col {
        Some(col) => {
            let by_value: Vec<bool> = col
                .values
                .iter()
                .map(|v| compiled.matches(Some(&Value::String(v.clone()))))
                .chain([compiled.matches(None)])
                .collect();
            col.dense_codes(&snap.person_ids)
                .iter()
                .map(|&c| by_value[c as usize])
                .collect()
        }
        None => vec![compiled.matches(None); snap.person_ids.len()],
    }
}

/// The person properties a query reads (breakdown and filters), to load before running it.
pub fn person_keys(q: &InsightQuery) -> Vec<String> {
    let mut keys: Vec<String> = all_filters(q)
        .into_iter()
        .filter_map(|f| match f {
            Filter::Property(p) if p.property_type == flywheel_query::PropertyType::Person => {
                Some(p.key.clone())
            }
            _ => None,
        })
        .collect();
    keys.extend(person_breakdown_key(q).map(str::to_owned));
    keys.sort();
    keys.dedup();
    keys
}

/// Every filter of a query: common, per series and per step.
pub(crate) fn all_filters(q: &InsightQuery) -> Vec<&Filter> {
    let mut filters: Vec<&Filter> = Vec::new();
    let mut specs: Vec<&EventSpec> = Vec::new();
    let common: &[Filter] = match q {
        InsightQuery::Trends(t) => {
            for s in &t.series {
                filters.extend(&s.properties);
            }
            &t.common.properties
        }
        InsightQuery::Funnel(f) => {
            specs.extend(&f.steps);
            specs.extend(f.exclusions.iter().map(|x| &x.step));
            &f.common.properties
        }
        InsightQuery::Retention(r) => {
            specs.push(&r.start_event);
            specs.push(&r.return_event);
            &r.properties
        }
        InsightQuery::Stickiness(s) => {
            specs.push(&s.event);
            &s.common.properties
        }
        InsightQuery::Lifecycle(l) => {
            specs.push(&l.event);
            &l.common.properties
        }
    };
    filters.extend(common);
    for s in specs {
        filters.extend(&s.properties);
    }
    filters
}

fn check_common(c: &flywheel_query::Common) -> Result<(), Unsupported> {
    if c.filter_test_accounts {
        return Err(unsupported(
            "filter_test_accounts",
            "the project's test-account filters were not applied to this query",
        ));
    }
    Ok(())
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// `blocks` with per-row breakdown codes (`codes[i]` for block `i`), when there are any.
fn with_breakdown<'a>(
    blocks: Vec<k::Block<'a>>,
    codes: Option<&'a [Vec<u32>]>,
) -> Vec<k::Block<'a>> {
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| k::Block {
            breakdown: codes.map(|c| &c[i][..]),
            ..b
        })
        .collect()
}

/// Kernel buckets of a planned read (the first clamped to the range's start, the last ending at its end).
pub(crate) fn buckets(read: &Read) -> k::Buckets {
    k::Buckets {
        starts: read.bucket_starts_us.clone(),
        end: read.end_us,
    }
}

/// Prepares the rows a planned read needs.
fn prepare_read(
    snap: &Snapshot,
    specs: &Specs,
    plan: &Plan,
    read: &Read,
) -> Result<Vec<Prepared>, EngineError> {
    specs.prepare(snap, Some((read.from_us, read.to_us)), !plan.every_row)
}

/// One prepared partition's rows keyed by the event's group (see [`group_rows`]).
#[derive(Default)]
pub(crate) struct GroupRows {
    pub(crate) group: Vec<u32>,
    pub(crate) ts: Vec<i64>,
    pub(crate) mask: Vec<u64>,
    /// The prepared row each row comes from (to carry per-row breakdown codes over).
    pub(crate) from: Vec<u32>,
}

/// Rows keyed by groups: per prepared partition, the rows; and each group's key (by group index).
pub(crate) struct Grouped {
    pub(crate) parts: Vec<GroupRows>,
    pub(crate) keys: Vec<String>,
}

impl Grouped {
    /// Kernel blocks (groups in the place of persons), with per-row breakdown codes of the prepared rows
    /// (`codes[part][prepared row]`) carried over.
    fn blocks<'a>(
        &'a self,
        codes: Option<&'a [Vec<u32>]>,
    ) -> (Vec<k::Block<'a>>, Option<Vec<Vec<u32>>>) {
        let carried: Option<Vec<Vec<u32>>> = codes.map(|codes| {
            self.parts
                .iter()
                .zip(codes)
                .map(|(g, c)| g.from.iter().map(|&i| c[i as usize]).collect())
                .collect()
        });
        let blocks = self
            .parts
            .iter()
            .map(|g| k::Block {
                person: &g.group,
                ts: &g.ts,
                mask: &g.mask,
                breakdown: None,
                value: None,
            })
            .collect();
        (blocks, carried)
    }
}

/// Per prepared partition, its rows keyed by the event's group of type `group_type` (from `$groups`) and sorted by
/// (group, time, person order); rows without such a group are left out.
pub(crate) fn group_rows(
    snap: &Snapshot,
    prepared: &[Prepared],
    group_type: Option<&str>,
) -> Result<Grouped, EngineError> {
    let Some(group_type) = group_type else {
        return Ok(Grouped {
            parts: prepared.iter().map(|_| GroupRows::default()).collect(),
            keys: Vec::new(),
        });
    };
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    let mut parts = Vec::with_capacity(prepared.len());
    for p in prepared {
        let storage =
            crate::insight_filters::map_event_property(snap, &p.part, "$groups", u32::MAX, |v| {
                match v.get(group_type).and_then(Value::as_str) {
                    Some(key) => *index.entry(key.to_owned()).or_insert_with(|| {
                        keys.push(key.to_owned());
                        keys.len() as u32 - 1
                    }),
                    None => u32::MAX,
                }
            })?;
        let (ts, mask) = (p.ts(), &p.mask);
        let mut keyed: Vec<(u32, i64, u32)> = p
            .storage_rows()
            .iter()
            .enumerate()
            .filter_map(|(i, &row)| {
                let g = storage[row as usize];
                (g != u32::MAX).then_some((g, ts[i], i as u32))
            })
            .collect();
        keyed.sort_unstable();
        parts.push(GroupRows {
            group: keyed.iter().map(|k| k.0).collect(),
            ts: keyed.iter().map(|k| k.1).collect(),
            mask: keyed.iter().map(|k| mask[k.2 as usize]).collect(),
            from: keyed.iter().map(|k| k.2).collect(),
        });
    }
    Ok(Grouped { parts, keys })
}

/// Looks up the names of distinct ids (indexes as in [`Snapshot::resolved`]).
pub type Names<'a> = &'a dyn Fn(&[u32]) -> Vec<String>;

/// Request options beyond the definition (URL parameters of the endpoint).
#[derive(Debug, Clone)]
pub struct Options {
    /// For `aggregation: group:<i>`: the group type's name (`None` when the project has no such type: no groups).
    pub group_type: Option<String>,
    /// The project's time zone (buckets start at its local midnights).
    pub tz: chrono_tz::Tz,
    /// Funnels: list the persons who reached step `n` (1-based), or with `-n` those who reached step `n - 1` but
    /// not step `n` (PostHog's `funnelStep`).
    pub funnel_step: Option<i32>,
    /// Most persons listed.
    pub persons_limit: usize,
}

/// Runs a validated query over a snapshot (`None`: the project has no events yet, every count is zero).
pub fn run(
    snap: Option<&Snapshot>,
    q: &InsightQuery,
    now: DateTime<Utc>,
    threads: usize,
    mut columns: Columns,
    options: &Options,
    names: Names<'_>,
) -> Result<Value, RunError> {
    let tz = options.tz;
    let options = options.clone();
    let empty;
    let snap = match snap {
        Some(s) => s,
        None => {
            empty = Snapshot::empty();
            &empty
        }
    };
    let range = q
        .resolve(now, &tz)
        .map_err(|e| RunError::Unsupported(unsupported(e.field, e.message)))?;
    // Each cohort the query uses, evaluated once.
    // The caller loaded exactly the cohorts the query reaches (references of references included).
    let used: Vec<u64> = columns.cohort_defs.by_id.keys().copied().collect();
    if !used.is_empty() {
        let cohort_now = crate::cohorts::minute_of(now);
        let mut eval =
            crate::cohorts::Evaluator::new(snap, &columns.cohort_defs, &columns, cohort_now, tz);
        let mut members = std::collections::HashMap::new();
        for id in used {
            members.insert(id, eval.members(id)?);
        }
        columns.cohorts = members;
    }
    let columns = &columns;
    let one = |q: &InsightQuery| {
        let plan = flywheel_query::plan::plan(q, &range, &tz);
        match q {
            InsightQuery::Trends(t) => trends(snap, t, &plan, threads, columns),
            InsightQuery::Funnel(f) => {
                funnel(snap, f, &plan, threads, columns, options.clone(), names)
            }
            InsightQuery::Retention(r) => retention(snap, r, &plan, threads, columns, &options),
            InsightQuery::Stickiness(s) => stickiness(snap, s, &plan, threads, columns),
            InsightQuery::Lifecycle(l) => lifecycle(snap, l, &plan, threads, columns, tz),
        }
    };
    let mut out = match flywheel_query::plan::cohort_parts(q) {
        Some(parts) => {
            if options.funnel_step.is_some() {
                return Err(unsupported(
                    "funnel_step",
                    "cannot be combined with a cohort breakdown: filter by the cohort instead",
                )
                .into());
            }
            let answers = parts
                .into_iter()
                .map(|(id, part)| Ok((id, one(&part)?)))
                .collect::<Result<Vec<_>, RunError>>()?;
            by_cohorts(q, answers)
        }
        None => one(q)?,
    };
    render::with_range(&mut out, &range);
    Ok(out)
}

/// A cohort breakdown: the answer of each cohort's part (see `flywheel_query::plan::cohort_parts`), labelled
/// with the cohort's id as its `breakdown_value`. Every requested cohort is listed, even when it counts nothing.
pub(crate) fn by_cohorts(q: &InsightQuery, answers: Vec<(u64, Value)>) -> Value {
    let mut rows: Vec<Value> = Vec::new();
    for (id, v) in answers {
        match q {
            InsightQuery::Trends(_) => {
                for mut item in v["result"].as_array().cloned().unwrap_or_default() {
                    item["breakdown_value"] = json!(id);
                    rows.push(item);
                }
            }
            InsightQuery::Retention(_) => {
                rows.push(json!({"breakdown_value": id, "cohorts": v["result"]}));
            }
            _ => {
                let mut result = v["result"].clone();
                result["breakdown_value"] = json!(id);
                rows.push(result);
            }
        }
    }
    json!({"kind": q.kind(), "result": rows})
}

fn trends(
    snap: &Snapshot,
    t: &flywheel_query::TrendsQuery,
    plan: &Plan,
    threads: usize,
    columns: &Columns,
) -> Result<Value, RunError> {
    check_common(&t.common)?;
    check_breakdown(&t.breakdown, true)?;
    let mut maths = Vec::new();
    for s in &t.series {
        let math = match s.math.unwrap_or(Math::Total) {
            Math::Total => k::trends::TrendMath::Total,
            Math::Dau => k::trends::TrendMath::Unique,
            Math::WeeklyActive => k::trends::TrendMath::Rolling { days: 7 },
            Math::MonthlyActive => k::trends::TrendMath::Rolling { days: 30 },
            Math::PerUser => k::trends::TrendMath::PerUser(match s.per_user {
                Some(PerUserMath::Min) => k::trends::Agg::Min,
                Some(PerUserMath::Max) => k::trends::Agg::Max,
                Some(PerUserMath::Median) => k::trends::Agg::Median,
                Some(PerUserMath::Avg) | None => k::trends::Agg::Avg,
            }),
            Math::Sum => k::trends::TrendMath::Property(k::trends::Agg::Sum),
            Math::Avg => k::trends::TrendMath::Property(k::trends::Agg::Avg),
            Math::Min => k::trends::TrendMath::Property(k::trends::Agg::Min),
            Math::Max => k::trends::TrendMath::Property(k::trends::Agg::Max),
            Math::Median => k::trends::TrendMath::Property(k::trends::Agg::Median),
            Math::P90 => k::trends::TrendMath::Property(k::trends::Agg::P90),
            Math::P95 => k::trends::TrendMath::Property(k::trends::Agg::P95),
            Math::P99 => k::trends::TrendMath::Property(k::trends::Agg::P99),
        };
        maths.push(math);
    }
    let compiled = Specs::new(snap, plan, columns)?;
    let all_bits = (1u64 << t.series.len()) - 1;
    let limit = t.breakdown.as_ref().and_then(|b| b.limit).unwrap_or(25) as usize;
    // Per series: one row per breakdown label (a single unlabeled row without a breakdown).
    let run_read = |read: &Read| -> Result<SeriesRows, EngineError> {
        let b = buckets(read);
        let prepared = prepare_read(snap, &compiled, plan, read)?;
        let plain = blocks(&prepared);
        let column = person_breakdown_key_of(&t.breakdown).and_then(|k| columns.get(k));
        let codes = column.map(|col| person_codes(snap, col, &plain, all_bits, limit));
        let row_codes = row_breakdown(snap, &prepared, &t.breakdown, columns, all_bits)?;
        let (source, values, labels) = match (&codes, &row_codes) {
            (Some(c), _) => (
                k::trends::BreakdownSource::Person(&c.codes),
                c.labels.len() as u32,
                c.labels.iter().cloned().map(Some).collect(),
            ),
            (None, Some((_, labels))) => (
                k::trends::BreakdownSource::Row,
                labels.len() as u32,
                labels.iter().cloned().map(Some).collect(),
            ),
            (None, None) => (k::trends::BreakdownSource::None, 1, vec![None]),
        };
        let mut per_series = Vec::with_capacity(maths.len());
        for (bit, &math) in maths.iter().enumerate() {
            // Property math reads the series' numeric property for every row of the range.
            let numbers = match (&math, &t.series[bit].math_property) {
                (k::trends::TrendMath::Property(_), Some(key)) => {
                    Some(event_numbers(snap, &prepared, key)?)
                }
                _ => None,
            };
            let blocks: Vec<k::Block<'_>> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| k::Block {
                    breakdown: row_codes.as_ref().map(|(c, _)| &c[i][..]),
                    value: numbers.as_ref().map(|n| &n[i][..]),
                    ..*b
                })
                .collect();
            let spec = k::trends::TrendSpec {
                bit: bit as u32,
                math,
                buckets: b.clone(),
                breakdown: source,
                breakdown_values: values,
            };
            per_series.push(k::trends::trend(&blocks, snap.persons(), threads, &spec));
        }
        Ok((labels, per_series))
    };
    let reads = plan
        .reads
        .iter()
        .map(run_read)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(render::trends(t, plan, reads))
}

fn funnel(
    snap: &Snapshot,
    f: &flywheel_query::FunnelQuery,
    plan: &Plan,
    threads: usize,
    columns: &Columns,
    options: Options,
    names: Names<'_>,
) -> Result<Value, RunError> {
    check_common(&f.common)?;
    check_breakdown(&f.breakdown, true)?;
    let by_group = matches!(f.aggregation, Some(flywheel_query::Aggregation::Group(_)));
    if by_group && person_breakdown_key_of(&f.breakdown).is_some() {
        return Err(unsupported(
            "breakdown.type",
            "a group-aggregated funnel breaks down by event or group properties (or cohorts), not person properties",
        )
        .into());
    }
    let compiled = Specs::new(snap, plan, columns)?;
    let window = flywheel_query::plan::funnel_window_us(f.conversion_window);
    let read = &plan.reads[0];
    let range = &read.range;
    let (from, to) = (us(range.from), us(range.to));
    let prepared = prepare_read(snap, &compiled, plan, read)?;
    let steps = f.steps.len();
    let limit = f.breakdown.as_ref().and_then(|b| b.limit).unwrap_or(25) as usize;
    let column = person_breakdown_key_of(&f.breakdown).and_then(|k| columns.get(k));
    let person_codes = column.map(|col| person_codes(snap, col, &blocks(&prepared), 1, limit));
    // Event-property breakdowns: ranked by the rows of the first step; attributed as asked.
    let row_codes = row_breakdown(snap, &prepared, &f.breakdown, columns, 1)?;
    // Account-level funnels: the same rows keyed by the event's group (`$groups`) instead of its person.
    let grouped = if by_group {
        Some(group_rows(snap, &prepared, options.group_type.as_deref())?)
    } else {
        None
    };
    let (blocks, units, carried) = match &grouped {
        Some(g) => {
            let (blocks, carried) = g.blocks(row_codes.as_ref().map(|(c, _)| &c[..]));
            (blocks, g.keys.len() as u32, carried)
        }
        None => (blocks(&prepared), snap.persons(), None),
    };
    let codes: Option<&[Vec<u32>]> = carried
        .as_deref()
        .or(row_codes.as_ref().map(|(c, _)| &c[..]));
    let blocks = with_breakdown(blocks, codes);
    let labels: Option<&Vec<Value>> = person_codes
        .as_ref()
        .map(|c| &c.labels)
        .or(row_codes.as_ref().map(|(_, l)| l));
    let spec = k::funnel::FunnelSpec {
        steps: (0..steps as u32).collect(),
        order: match f.order.unwrap_or(FunnelOrder::Ordered) {
            FunnelOrder::Ordered => k::funnel::Order::Ordered,
            FunnelOrder::Strict => k::funnel::Order::Strict,
            FunnelOrder::Unordered => k::funnel::Order::Unordered,
        },
        window_us: window,
        entry: from..to,
        exclusions: f
            .exclusions
            .iter()
            .enumerate()
            .map(|(i, x)| k::funnel::Exclusion {
                bit: (steps + i) as u32,
                from_step: x.from_step,
                to_step: x.to_step,
            })
            .collect(),
        breakdown: match (&person_codes, &row_codes) {
            (Some(c), _) => k::trends::BreakdownSource::Person(&c.codes),
            (None, Some(_)) => k::trends::BreakdownSource::Row,
            (None, None) => k::trends::BreakdownSource::None,
        },
        breakdown_values: labels.map_or(1, |l| l.len() as u32),
        attribution: kernel_attribution(f.breakdown_attribution),
        trend: f.trends.then(|| buckets(read)),
        collect_persons: options.funnel_step.is_some(),
    };
    let r = k::funnel::funnel(&blocks, units, threads, &spec);
    let mut out = render::funnel(f, range, labels.map(|l| &l[..]), &r);
    if let Some(step) = options.funnel_step {
        let chosen = reached_step(&r.persons, step, steps)?;
        let listed = match &grouped {
            // Account-level: the groups, by key.
            Some(g) => chosen
                .iter()
                .take(options.persons_limit)
                .map(|&i| json!({"group_key": g.keys[i as usize]}))
                .collect(),
            None => list_persons(snap, &chosen, options.persons_limit, names),
        };
        out["persons"] = json!({"step": step, "count": chosen.len(), "results": listed});
    }
    Ok(out)
}

/// A funnel breakdown's attribution as the kernel takes it (first touch by default).
pub(crate) fn kernel_attribution(a: Option<flywheel_query::Attribution>) -> k::funnel::Attribution {
    match a {
        Some(flywheel_query::Attribution::LastTouch) => k::funnel::Attribution::LastTouch,
        Some(flywheel_query::Attribution::Step(n)) => k::funnel::Attribution::Step(n),
        Some(flywheel_query::Attribution::FirstTouch) | None => k::funnel::Attribution::FirstTouch,
    }
}

/// Whether `step` names a step of a funnel of `steps` (see [`Options::funnel_step`]).
pub(crate) fn check_funnel_step(step: i32, steps: usize) -> Result<(), Unsupported> {
    let n = step.unsigned_abs() as usize;
    if n == 0 || n > steps || (step < 0 && n == 1) {
        return Err(unsupported(
            "funnel_step",
            format!(
                "must be 1..={steps} (reached the step) or -2..=-{steps} (dropped off before it)"
            ),
        ));
    }
    Ok(())
}

/// The persons (or groups) of a funnel step (see [`Options::funnel_step`]).
pub(crate) fn reached_step(
    persons: &[(u32, u8)],
    step: i32,
    steps: usize,
) -> Result<Vec<u32>, Unsupported> {
    check_funnel_step(step, steps)?;
    let n = step.unsigned_abs() as usize;
    let chosen: Vec<u32> = persons
        .iter()
        .filter(|&&(_, reached)| {
            let reached = reached as usize;
            if step > 0 {
                reached >= n
            } else {
                reached == n - 1
            }
        })
        .map(|&(p, _)| p)
        .collect();
    Ok(chosen)
}

/// The first `limit` of `chosen` (dense persons) with their person ids and distinct ids.
pub(crate) fn list_persons(
    snap: &Snapshot,
    chosen: &[u32],
    limit: usize,
    names: Names<'_>,
) -> Vec<Value> {
    let listed: std::collections::HashMap<u32, usize> = chosen
        .iter()
        .take(limit)
        .enumerate()
        .map(|(i, &p)| (p, i))
        .collect();
    let mut indexes: Vec<Vec<u32>> = vec![Vec::new(); listed.len()];
    for (did, &p) in snap.resolved.iter().enumerate() {
        if let Some(&i) = listed.get(&p) {
            indexes[i].push(did as u32);
        }
    }
    let dids: Vec<Vec<String>> = indexes.iter().map(|d| names(d)).collect();
    chosen
        .iter()
        .take(limit)
        .zip(dids)
        .map(|(&p, d)| {
            let id = snap.person_ids[p as usize];
            json!({"person_id": (id >= 0).then_some(id), "distinct_ids": d})
        })
        .collect()
}

fn retention(
    snap: &Snapshot,
    r: &flywheel_query::RetentionQuery,
    plan: &Plan,
    threads: usize,
    columns: &Columns,
    options: &Options,
) -> Result<Value, RunError> {
    if r.filter_test_accounts {
        return Err(unsupported(
            "filter_test_accounts",
            "the project's test-account filters were not applied to this query",
        )
        .into());
    }
    check_breakdown(&r.breakdown, true)?;
    let by_group = matches!(r.aggregation, Some(flywheel_query::Aggregation::Group(_)));
    if by_group && person_breakdown_key_of(&r.breakdown).is_some() {
        return Err(unsupported(
            "breakdown.type",
            "a group-aggregated retention table breaks down by event or group properties (or cohorts), not person properties",
        )
        .into());
    }
    let compiled = Specs::new(snap, plan, columns)?;
    let cohorting = match r.cohort.unwrap_or(RetentionCohort::FirstTime) {
        RetentionCohort::FirstTime => k::retention::Cohorting::FirstTime,
        RetentionCohort::Recurring => k::retention::Cohorting::Recurring,
    };
    let read = &plan.reads[0];
    let range = &read.range;
    let prepared = prepare_read(snap, &compiled, plan, read)?;
    let blocks = blocks(&prepared);
    let limit = r.breakdown.as_ref().and_then(|b| b.limit).unwrap_or(25) as usize;
    let column = person_breakdown_key_of(&r.breakdown).and_then(|k| columns.get(k));
    let codes = column.map(|col| person_codes(snap, col, &blocks, 1, limit));
    // Event- and group-property breakdowns: the value on the start event that put the person in the cohort,
    // ranked by start events.
    let row_codes = row_breakdown(snap, &prepared, &r.breakdown, columns, 1)?;
    let labels: Option<&Vec<Value>> = codes
        .as_ref()
        .map(|c| &c.labels)
        .or(row_codes.as_ref().map(|(_, l)| l));
    let spec = k::retention::RetentionSpec {
        start_bit: 0,
        return_bit: 1,
        cohorting,
        periods: buckets(read),
        on_or_after: r.mode == Some(RetentionMode::OnOrAfter),
        breakdown: match (&codes, &row_codes) {
            (Some(c), _) => k::trends::BreakdownSource::Person(&c.codes),
            (None, Some(_)) => k::trends::BreakdownSource::Row,
            (None, None) => k::trends::BreakdownSource::None,
        },
        breakdown_values: labels.map_or(1, |l| l.len() as u32),
    };
    let row_code_slices = row_codes.as_ref().map(|(c, _)| &c[..]);
    let tables = if by_group {
        // Account-level: the rows keyed by the events' group (see `group_rows`).
        let grouped = group_rows(snap, &prepared, options.group_type.as_deref())?;
        let (blocks, carried) = grouped.blocks(row_code_slices);
        let blocks = with_breakdown(blocks, carried.as_deref());
        k::retention::retention(&blocks, grouped.keys.len() as u32, threads, &spec)
    } else {
        let blocks = with_breakdown(blocks, row_code_slices);
        k::retention::retention(&blocks, snap.persons(), threads, &spec)
    };
    Ok(render::retention(range, labels.map(|l| &l[..]), &tables))
}

fn stickiness(
    snap: &Snapshot,
    s: &flywheel_query::StickinessQuery,
    plan: &Plan,
    threads: usize,
    columns: &Columns,
) -> Result<Value, RunError> {
    check_common(&s.common)?;
    let compiled = Specs::new(snap, plan, columns)?;
    let read = &plan.reads[0];
    let range = &read.range;
    let prepared = prepare_read(snap, &compiled, plan, read)?;
    let blocks = blocks(&prepared);
    let b = buckets(read);
    let counts = k::stickiness::stickiness(
        &blocks,
        snap.persons(),
        threads,
        0,
        &b,
        k::trends::BreakdownSource::None,
        1,
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    Ok(render::stickiness(s, range, &counts))
}

fn lifecycle(
    snap: &Snapshot,
    l: &flywheel_query::LifecycleQuery,
    plan: &Plan,
    threads: usize,
    columns: &Columns,
    tz: chrono_tz::Tz,
) -> Result<Value, RunError> {
    check_common(&l.common)?;
    let compiled = Specs::new(snap, plan, columns)?;
    let read = &plan.reads[0];
    let range = &read.range;
    let prepared = prepare_read(snap, &compiled, plan, read)?;
    let blocks = blocks(&prepared);
    let b = buckets(read);
    let first = range
        .buckets
        .first()
        .map_or(us(range.from), |b| us(b.start));
    let previous = us(range
        .previous_period(&tz)
        .buckets
        .last()
        .map_or(range.from, |b| b.start));
    let previous = previous.min(first);
    let out = k::lifecycle::lifecycle(&blocks, snap.persons(), threads, 0, &b, previous);
    Ok(render::lifecycle(range, &out))
}

/// With `filter_test_accounts`, the project's test-account filters join the definition's common filters (so the
/// cache key and the planner see them like any other filter).
fn apply_test_account_filters(
    query: &mut InsightQuery,
    filters: &Value,
) -> Result<(), crate::error::ApiError> {
    let (flag, common) = match query {
        InsightQuery::Trends(t) => (&mut t.common.filter_test_accounts, &mut t.common.properties),
        InsightQuery::Funnel(f) => (&mut f.common.filter_test_accounts, &mut f.common.properties),
        InsightQuery::Stickiness(s) => {
            (&mut s.common.filter_test_accounts, &mut s.common.properties)
        }
        InsightQuery::Lifecycle(l) => {
            (&mut l.common.filter_test_accounts, &mut l.common.properties)
        }
        InsightQuery::Retention(r) => (&mut r.filter_test_accounts, &mut r.properties),
    };
    if !*flag {
        return Ok(());
    }
    let probe = json!({"series": [{"event": "$pageview"}], "properties": filters});
    let parsed = flywheel_query::parse(flywheel_query::InsightKind::Trends, &probe).map_err(|_| {
        crate::error::ApiError::bad_request(
            "invalid_settings",
            "the project's test_account_filters are not valid filters; fix them with PATCH /api/v1/projects/{id}",
        )
    })?;
    let InsightQuery::Trends(t) = parsed else {
        return Ok(());
    };
    common.extend(t.common.properties);
    *flag = false;
    Ok(())
}

/// Most persons a funnel-step request lists.
const MAX_PERSONS: usize = 10_000;

fn parse_options(
    params: &std::collections::HashMap<String, String>,
    query: &InsightQuery,
) -> Result<Options, crate::error::ApiError> {
    use crate::error::ApiError;
    let bad = |field: &str, message: String| {
        ApiError::bad_request("invalid_query", format!("{field}: {message}"))
            .with_errors(json!([{"field": field, "message": message}]))
    };
    let mut options = Options {
        group_type: None,
        tz: chrono_tz::UTC,
        funnel_step: None,
        persons_limit: 100,
    };
    for (k, v) in params {
        match k.as_str() {
            "funnel_step" => {
                if !matches!(query, InsightQuery::Funnel(_)) {
                    return Err(bad(k, "applies to funnels only".into()));
                }
                options.funnel_step = Some(v.parse().map_err(|_| {
                    bad(
                        k,
                        format!(
                            "must be a whole number (a step, negative for drop-offs), got `{v}`"
                        ),
                    )
                })?);
            }
            "limit" => {
                options.persons_limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PERSONS).contains(n))
                    .ok_or_else(|| {
                        bad(
                            k,
                            format!("must be a whole number from 1 to {MAX_PERSONS}, got `{v}`"),
                        )
                    })?;
            }
            _ => return Err(bad(k, "unknown parameter (use funnel_step, limit)".into())),
        }
    }
    Ok(options)
}

/// `POST /api/v1/projects/{project_id}/insights/{kind}`: runs an insight definition. Waits (bounded) until the
/// tables hold every event acknowledged before the request, so a client sees its own writes. Complete answers are
/// cached by definition, resolved range and data version (`"cached": true`); `Cache-Control: no-cache` bypasses
/// the cache. With `--events-url` the answer comes from ClickHouse instead (`insights_clickhouse`: same JSON,
/// never cached).
pub async fn post_insight(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
    caller: crate::api::Caller,
    axum::extract::Path((project_id, kind)): axum::extract::Path<(String, String)>,
    crate::api::JsonBody(body): crate::api::JsonBody<Value>,
) -> Result<axum::Json<Value>, crate::error::ApiError> {
    use crate::error::ApiError;
    let project_id = crate::api::parse_project(&project_id)?;
    caller.authorize(&state, project_id).await?;
    // `query_ms` counts everything from here: reading person-property columns and cohorts included.
    let started = std::time::Instant::now();
    let query = flywheel_query::parse_kind(&kind, &body)
        .map_err(|errors| ApiError::validation("insight definition", &errors))?;
    let options = parse_options(&params, &query)?;
    // The project's time zone and test-account filters.
    let settings = state
        .store
        .project_settings(project_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    let tz = flywheel_query::parse_time_zone(&settings.time_zone).unwrap_or(chrono_tz::UTC);
    let aggregation = match &query {
        InsightQuery::Funnel(f) => f.aggregation,
        InsightQuery::Retention(r) => r.aggregation,
        _ => None,
    };
    let group_type = match aggregation {
        Some(flywheel_query::Aggregation::Group(i)) => {
            state.store.group_type_name(project_id, i).await?
        }
        _ => None,
    };
    let options = Options {
        tz,
        group_type,
        ..options
    };
    let mut query = query;
    apply_test_account_filters(&mut query, &settings.test_account_filters)?;
    // Scale-out: every node's events are in ClickHouse; this node's tables hold only its own.
    if let Some(reader) = &state.clickhouse {
        let (v, complete) =
            crate::insights_clickhouse::answer(&state, reader, project_id, &query, &options)
                .await?;
        return Ok(respond(&v, complete, false, started));
    }
    let complete = state.tables_catch_up().await;
    let epoch = state.flags.subjects.epoch();
    let mut columns = Columns {
        cohort_defs: crate::cohorts::load(
            &state,
            project_id,
            &crate::cohorts::references(&json!(query)),
        )
        .await?,
        ..Default::default()
    };
    let mut keys = person_keys(&query);
    keys.extend(columns.cohort_defs.person_keys());
    load_person_columns(&state, project_id, &keys, epoch, &mut columns).await?;
    for (index, key) in group_keys(&query) {
        let column = GroupColumn {
            type_name: state.store.group_type_name(project_id, index).await?,
            by_key: state
                .store
                .group_property_values(project_id, index, &key)
                .await?
                .into_iter()
                .collect(),
        };
        columns.groups.insert((index, key), column);
    }
    let snapshot = state.tables.snapshot(project_id);
    let now = state.clock.now();
    let range = query
        .resolve(now, &tz)
        .map_err(|e| ApiError::validation("insight definition", &[e]))?;
    let cache_key = format!(
        "{project_id}|{options:?}|{}|{}|{}|{}|{epoch}|{}",
        serde_json::to_string(&query).unwrap_or_default(),
        range.from.timestamp_micros(),
        range.to.timestamp_micros(),
        snapshot.as_ref().map_or(0, |s| s.version),
        columns.cohort_defs.cache_key(now),
    );
    let respond = |v: &Value, cached: bool| respond(v, complete, cached, started);
    // `Cache-Control: no-cache` computes the answer again (benchmarks, or a client that distrusts the cache).
    let no_cache = headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        });
    if !no_cache {
        if let Some(hit) = state.insights.result(&cache_key) {
            return Ok(respond(&hit, true));
        }
    }
    let threads = k::default_threads();
    let tables = state.tables.clone();
    let result = tokio::task::spawn_blocking(move || {
        let names = |dids: &[u32]| tables.distinct_id_names(project_id, dids);
        run(
            snapshot.as_ref(),
            &query,
            now,
            threads,
            columns,
            &options,
            &names,
        )
    })
    .await
    .map_err(ApiError::internal)?;
    match result {
        Ok(v) => {
            let v = Arc::new(v);
            // Only complete answers are kept: an incomplete one is missing events the next call will have.
            if complete {
                state.insights.keep_result(cache_key, v.clone());
            }
            Ok(respond(&v, false))
        }
        Err(e) => Err(run_error(e)),
    }
}

/// An answer with whether it holds every acknowledged event, whether it came from the cache, and the time spent.
fn respond(
    v: &Value,
    complete: bool,
    cached: bool,
    started: std::time::Instant,
) -> axum::Json<Value> {
    let mut v = v.clone();
    v["complete"] = json!(complete);
    v["cached"] = json!(cached);
    v["query_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
    axum::Json(v)
}

/// The API's answer to a query that did not run: `400 unsupported` naming the field, or a 500.
pub(crate) fn run_error(e: RunError) -> crate::error::ApiError {
    use crate::error::ApiError;
    match e {
        RunError::Unsupported(u) => {
            ApiError::bad_request("unsupported", format!("{}: {}", u.field, u.message))
                .with_errors(json!([{"field": u.field, "message": u.message}]))
        }
        RunError::Storage(e) => ApiError::internal(e),
    }
}

/// Loads the person-property columns `keys` of a project into `columns` (cached per identity epoch).
pub(crate) async fn load_person_columns(
    state: &crate::state::AppState,
    project_id: i64,
    keys: &[String],
    epoch: u64,
    columns: &mut Columns,
) -> Result<(), flywheel_store::StoreError> {
    for key in keys {
        if columns.persons.contains_key(key) {
            continue;
        }
        let col = state
            .insights
            .person_column(&state.store, project_id, key, epoch)
            .await?;
        columns.persons.insert(key.clone(), col);
    }
    Ok(())
}
