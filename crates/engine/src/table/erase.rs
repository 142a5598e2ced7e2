//! Removing rows from the tables and their segments: GDPR erasure of a person, and data retention.
//!
//! [`EventTables::erase`] works like a compaction of the days it touches (under the seal lock, files written outside
//! the state lock): every sealed segment of such a day is read whole and the day written again as one segment
//! without the removed rows (and with the mentions of an erased person masked in the rows that stay); a day left
//! without rows has no segment any more. The manifest commit replaces the day's files at once; the old files are
//! retired and deleted as soon as no snapshot reads them. The tail (rows not sealed yet) is filtered in memory
//! under the state lock. The distinct ids of an erased person leave the dictionary — their entries become
//! tombstones, so no other index moves — and the identity mapping saved next to the segments is written again
//! whole, so neither a restart nor the files keep them.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::RecordBatch;
use arrow_schema::DataType;

use super::{dictionary_value, segment_error, EventTables, RowColumns, Source, TailRow, DAY_US};
use crate::columnar::{
    read_segment, row_properties, write_segment, PropertyType, SegmentMeta, SegmentRow,
    PROPERTY_PREFIX,
};
use crate::rewrite::Redactor;
use crate::EngineError;

/// What [`EventTables::erase`] removes from one project.
#[derive(Debug, Clone, Default)]
pub struct Erase {
    /// Rows of these distinct ids go, and the ids leave the distinct-id dictionary.
    pub distinct_ids: Vec<String>,
    /// The metadata store's ids of the erased person (and of the persons merged into it): the mapping forgets
    /// them.
    pub person_ids: Vec<i64>,
    /// Rows whose time is before this (µs) go (retention).
    pub before_us: Option<i64>,
    /// Mentions masked in the properties of the rows that stay.
    pub redactor: Option<Redactor>,
}

/// What [`EventTables::erase`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EraseStats {
    /// Rows removed (sealed and tail).
    pub rows_removed: u64,
    /// Rows kept with masked properties.
    pub rows_redacted: u64,
    /// Days whose segments were written again.
    pub days_rewritten: usize,
    /// Segment files replaced or dropped.
    pub segments_replaced: usize,
    /// Segment files written.
    pub segments_written: usize,
    /// Replaced files deleted during the call.
    pub files_deleted: usize,
    /// Replaced files still read by a query when the call returned (deleted at the next seal, compaction or
    /// start).
    pub files_pending: usize,
}

/// How long [`EventTables::erase`] waits for queries still reading replaced files.
const RETIRED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One day to write again.
struct DayJob {
    day: i32,
    /// The day's sealed segments when it was planned.
    merged: Vec<(Arc<str>, Range<usize>)>,
    did: Vec<u32>,
    ts: Vec<i64>,
    /// Per sealed row: it goes.
    remove: Vec<bool>,
    /// Per segment, its property columns that hold text (strings, JSON): where a mention can be.
    text_columns: Vec<Vec<String>>,
}

/// A day written again, not committed yet.
struct DayDone {
    day: i32,
    merged: Vec<(Arc<str>, Range<usize>)>,
    /// The new segment (`None`: the day has no sealed rows left).
    meta: Option<SegmentMeta>,
    /// Old storage row of each row of the new segment.
    order: Vec<u32>,
    removed: u64,
    redacted: u64,
}

/// Whether a segment's property columns mention one of the redactor's values.
fn mentions(batches: &[RecordBatch], redactor: &Redactor) -> bool {
    batches.iter().any(|b| {
        b.schema()
            .fields()
            .iter()
            .zip(b.columns())
            .filter(|(f, _)| f.name().starts_with(PROPERTY_PREFIX))
            .any(|(f, c)| match f.data_type() {
                DataType::Dictionary(_, _) => c
                    .as_dictionary_opt::<Int32Type>()
                    .and_then(|d| d.values().as_string_opt::<i32>())
                    .is_some_and(|v| v.iter().flatten().any(|s| redactor.mentions(s))),
                DataType::Utf8 => c
                    .as_string_opt::<i32>()
                    .is_some_and(|v| v.iter().flatten().any(|s| redactor.mentions(s))),
                _ => false,
            })
    })
}

impl EventTables {
    /// Removes from `project_id` the rows of `spec.distinct_ids` and those older than `spec.before_us`, masks
    /// `spec.redactor`'s values in the rows that stay, and forgets the erased distinct ids and persons (see the
    /// module docs). Seals and compactions wait; appends and queries go on. Blocking I/O.
    pub fn erase(&self, project_id: i64, spec: &Erase) -> Result<EraseStats, EngineError> {
        self.collect_retired();
        let redactor = spec.redactor.as_ref().filter(|r| !r.is_empty());
        let _one = self.seal_lock.lock().expect("seal lock");
        // 1. What to look at: per day with sealed rows, its segments and which of their rows go.
        let (jobs, dids, resolved, person_ids, generation) = {
            let mut guard = self.write();
            let st = &mut *guard;
            let generation = st.manifest.generation + 1;
            let Some(p) = st.projects.get_mut(&project_id) else {
                return Ok(EraseStats::default());
            };
            let text_columns = |file: &str| -> Vec<String> {
                st.manifest
                    .segments
                    .iter()
                    .find(|m| m.file == file)
                    .map(|m| {
                        m.properties
                            .iter()
                            .filter(|(_, t)| matches!(t, PropertyType::String | PropertyType::Json))
                            .map(|(k, _)| format!("{PROPERTY_PREFIX}{k}"))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let dids: HashSet<u32> = spec
                .distinct_ids
                .iter()
                .filter_map(|d| p.dids.get(d))
                .collect();
            let mut jobs = Vec::new();
            for (&day, part) in &p.partitions {
                let Some(sealed) = part
                    .sources
                    .last()
                    .map(|Source::Segment { rows, .. }| rows.end)
                else {
                    continue;
                };
                // A day entirely on one side of the cutoff needs no look at its rows.
                let day_start = i64::from(day) * DAY_US;
                let day_end = day_start + DAY_US;
                let by_time = match spec.before_us {
                    Some(b) if day_end <= b => Some(true),
                    Some(b) if day_start >= b => Some(false),
                    _ => None,
                };
                let remove: Vec<bool> = match by_time {
                    Some(true) => vec![true; sealed],
                    Some(false) if dids.is_empty() => vec![false; sealed],
                    _ => (0..sealed)
                        .map(|r| {
                            dids.contains(&part.did[r])
                                || spec.before_us.is_some_and(|b| part.ts[r] < b)
                        })
                        .collect(),
                };
                if redactor.is_none() && !remove.contains(&true) {
                    continue;
                }
                jobs.push(DayJob {
                    day,
                    merged: part
                        .sources
                        .iter()
                        .map(|Source::Segment { file, rows }| (file.clone(), rows.clone()))
                        .collect(),
                    did: part.did[..sealed].to_vec(),
                    ts: part.ts[..sealed].to_vec(),
                    remove,
                    text_columns: part
                        .sources
                        .iter()
                        .map(|Source::Segment { file, .. }| text_columns(file))
                        .collect(),
                });
            }
            (jobs, dids, p.resolved(), p.person_ids.clone(), generation)
        };
        // 2. Write the days again (no lock held).
        let mut done: Vec<DayDone> = Vec::new();
        let written = (|| -> Result<(), EngineError> {
            for job in &jobs {
                if let Some(d) = self.rewrite_day(
                    project_id,
                    job,
                    redactor,
                    &resolved,
                    &person_ids,
                    generation,
                )? {
                    done.push(d);
                }
            }
            Ok(())
        })();
        if let Err(e) = written {
            for d in &done {
                if let Some(m) = &d.meta {
                    let _ = std::fs::remove_file(self.dir.join(&m.file));
                }
            }
            return Err(e);
        }
        // 3. Commit and swap in.
        let mut stats = EraseStats::default();
        let mut retired: Vec<Arc<str>> = Vec::new();
        {
            let mut guard = self.write();
            let st = &mut *guard;
            if !done.is_empty() {
                let unchanged = st.manifest.generation + 1 == generation
                    && done.iter().all(|d| {
                        st.projects
                            .get(&project_id)
                            .and_then(|p| p.partitions.get(&d.day))
                            .is_some_and(|part| super::starts_with(&part.sources, &d.merged))
                    });
                let drop_new = |done: &[DayDone]| {
                    for d in done {
                        if let Some(m) = &d.meta {
                            let _ = std::fs::remove_file(self.dir.join(&m.file));
                        }
                    }
                };
                if !unchanged {
                    drop_new(&done);
                    return Err(segment_error(
                        &self.dir.join("manifest.json"),
                        "changed while rows were being erased; nothing was erased",
                    ));
                }
                let old: HashSet<&str> = done
                    .iter()
                    .flat_map(|d| d.merged.iter().map(|(f, _)| &**f))
                    .collect();
                let mut manifest = st.manifest.clone();
                let mut segments = Vec::with_capacity(manifest.segments.len());
                let mut fresh: Vec<SegmentMeta> =
                    done.iter().filter_map(|d| d.meta.clone()).collect();
                for m in std::mem::take(&mut manifest.segments) {
                    if old.contains(m.file.as_str()) {
                        // The new files go where the first replaced one was.
                        segments.append(&mut fresh);
                    } else {
                        segments.push(m);
                    }
                }
                segments.append(&mut fresh);
                manifest.segments = segments;
                if let Err(e) = manifest.commit(&self.dir) {
                    st.manifest.generation = manifest.generation;
                    return Err(e);
                }
                st.manifest = manifest;
            }
            let p = st
                .projects
                .get_mut(&project_id)
                .expect("the project is still there");
            for d in done {
                let part = Arc::make_mut(p.partitions.get_mut(&d.day).expect("partition of a day"));
                let sealed = d.merged.last().map_or(0, |(_, rows)| rows.end);
                let mut did = Vec::with_capacity(part.len());
                let mut ts = Vec::with_capacity(part.len());
                let mut event = Vec::with_capacity(part.len());
                for &r in &d.order {
                    did.push(part.did[r as usize]);
                    ts.push(part.ts[r as usize]);
                    event.push(part.event[r as usize]);
                }
                did.extend_from_slice(&part.did[sealed..]);
                ts.extend_from_slice(&part.ts[sealed..]);
                event.extend_from_slice(&part.event[sealed..]);
                part.did = did;
                part.ts = ts;
                part.event = event;
                let n = part.sources.len();
                retired.extend(
                    part.sources
                        .drain(..)
                        .map(|Source::Segment { file, .. }| file),
                );
                if let Some(m) = &d.meta {
                    part.sources.push(Source::Segment {
                        file: Arc::from(m.file.as_str()),
                        rows: 0..d.order.len(),
                    });
                    stats.segments_written += 1;
                }
                *part.sorted.get_mut().expect("sorted view lock") = None;
                stats.days_rewritten += 1;
                stats.segments_replaced += n;
                stats.rows_removed += d.removed;
                stats.rows_redacted += d.redacted;
            }
            // The tail, in memory.
            let mut tail_removed = 0usize;
            for part in p.partitions.values_mut() {
                let sealed = part.len() - part.tail.len();
                let goes = |did: u32, ts: i64| {
                    dids.contains(&did) || spec.before_us.is_some_and(|b| ts < b)
                };
                let any_goes = (sealed..part.len()).any(|r| goes(part.did[r], part.ts[r]));
                let any_mention =
                    redactor.is_some_and(|r| part.tail.iter().any(|t| r.mentions(&t.properties)));
                if !any_goes && !any_mention {
                    continue;
                }
                let part = Arc::make_mut(part);
                let mut keep_rows: Vec<usize> = (0..sealed).collect();
                keep_rows.extend((sealed..part.len()).filter(|&r| !goes(part.did[r], part.ts[r])));
                let removed = part.len() - keep_rows.len();
                let tail: Vec<TailRow> = keep_rows[sealed..]
                    .iter()
                    .map(|&r| {
                        let row = &part.tail[r - sealed];
                        match redactor.and_then(|x| x.redact(&row.properties)) {
                            Some(masked) => {
                                stats.rows_redacted += 1;
                                TailRow {
                                    uuid: row.uuid,
                                    properties: masked.into(),
                                }
                            }
                            None => row.clone(),
                        }
                    })
                    .collect();
                part.did = keep_rows.iter().map(|&r| part.did[r]).collect();
                part.ts = keep_rows.iter().map(|&r| part.ts[r]).collect();
                part.event = keep_rows.iter().map(|&r| part.event[r]).collect();
                part.tail = tail;
                *part.sorted.get_mut().expect("sorted view lock") = None;
                tail_removed += removed;
            }
            p.partitions.retain(|_, part| !part.is_empty());
            stats.rows_removed += tail_removed as u64;
            // The erased distinct ids and persons leave the mapping.
            for &d in &dids {
                p.dids.tombstone(d);
            }
            for id in &spec.person_ids {
                if let Some(dense) = p.dense_of.remove(id) {
                    Arc::make_mut(&mut p.person_ids)[dense as usize] = -1;
                }
            }
            p.identity_version += 1;
            p.identity_dirty = true;
            p.version += 1;
            st.tail_rows -= tail_removed;
        }
        drop(jobs);
        // The replaced files are deleted as soon as no snapshot reads them (queries are short): waited for here,
        // a little, so that an erasure normally returns with the person's old files gone.
        // By name: a clone of the shared name would itself keep the file alive.
        let names: Vec<String> = retired.iter().map(|f| f.to_string()).collect();
        self.retired
            .lock()
            .expect("retired files lock")
            .extend(retired);
        let waited = std::time::Instant::now();
        loop {
            stats.files_deleted += self.collect_retired();
            let pending = {
                let list = self.retired.lock().expect("retired files lock");
                names
                    .iter()
                    .filter(|n| list.iter().any(|f| &**f == n.as_str()))
                    .count()
            };
            stats.files_pending = pending;
            if pending == 0 || waited.elapsed() >= RETIRED_WAIT {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if stats.files_pending > 0 {
            tracing::warn!(
                project_id,
                files = stats.files_pending,
                "erase: replaced segment files are still read by a query; deleted at the next seal or start"
            );
        }
        if !spec.distinct_ids.is_empty() {
            self.rewrite_identity(project_id)?;
        }
        Ok(stats)
    }

    /// Writes day `job.day` again without its removed rows (and with mentions masked); `None` when nothing in
    /// it changes.
    fn rewrite_day(
        &self,
        project_id: i64,
        job: &DayJob,
        redactor: Option<&Redactor>,
        resolved: &[u32],
        person_ids: &[i64],
        generation: u64,
    ) -> Result<Option<DayDone>, EngineError> {
        let removed = job.remove.iter().filter(|&&r| r).count() as u64;
        if removed == job.remove.len() as u64 {
            // Every row goes: no file to read or write.
            return Ok(Some(DayDone {
                day: job.day,
                merged: job.merged.clone(),
                meta: None,
                order: Vec::new(),
                removed,
                redacted: 0,
            }));
        }
        // Nothing removed: the day is written again only if its text columns mention the person (read first,
        // alone).
        if removed == 0 {
            let Some(r) = redactor else {
                return Ok(None);
            };
            let mut mentioned = false;
            for ((file, _), columns) in job.merged.iter().zip(&job.text_columns) {
                if columns.is_empty() {
                    continue;
                }
                let names: Vec<&str> = columns.iter().map(String::as_str).collect();
                if mentions(&read_segment(&self.dir.join(&**file), Some(&names))?, r) {
                    mentioned = true;
                    break;
                }
            }
            if !mentioned {
                return Ok(None);
            }
        }
        let mut files = Vec::with_capacity(job.merged.len());
        for (file, rows) in &job.merged {
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
        // Per kept storage row: uuid, event, distinct id, properties (masked where they mention the person).
        let mut kept: Vec<u32> = Vec::new();
        let mut cells: Vec<(u128, String, String)> = Vec::new();
        let mut properties: Vec<String> = Vec::new();
        let mut redacted = 0u64;
        for (path, start, batches) in &files {
            let mut row = *start;
            for b in batches {
                let cols = RowColumns::of(b, path)?;
                let (times, event, distinct_id) = (cols.times, cols.event, cols.distinct_id);
                for i in 0..b.num_rows() {
                    if times.value(i) != job.ts[row] {
                        return Err(segment_error(path, "does not match its partition's rows"));
                    }
                    if !job.remove[row] {
                        let uuid = cols.uuid(i);
                        let mut props = serde_json::Value::Object(row_properties(b, i)).to_string();
                        if let Some(masked) = redactor.and_then(|r| r.redact(&props)) {
                            props = masked;
                            redacted += 1;
                        }
                        kept.push(row as u32);
                        cells.push((
                            uuid,
                            dictionary_value(event, i, path)?.to_owned(),
                            dictionary_value(distinct_id, i, path)?.to_owned(),
                        ));
                        properties.push(props);
                    }
                    row += 1;
                }
            }
        }
        // The sorted view's order, as compaction writes it: (dense) person now, time, previous storage order.
        let mut order: Vec<usize> = (0..kept.len()).collect();
        order.sort_unstable_by_key(|&k| {
            let r = kept[k] as usize;
            (resolved[job.did[r] as usize], job.ts[r], r)
        });
        let mut rows: Vec<SegmentRow<'_>> = order
            .iter()
            .map(|&k| {
                let r = kept[k] as usize;
                let (uuid, event, distinct_id) = &cells[k];
                SegmentRow {
                    person: person_ids[resolved[job.did[r] as usize] as usize],
                    timestamp_us: job.ts[r],
                    event,
                    distinct_id,
                    uuid: *uuid,
                    properties: &properties[k],
                }
            })
            .collect();
        let file = format!("p{project_id}/d{}-g{generation}.parquet", job.day);
        let mut meta = write_segment(&self.dir.join(&file), &mut rows)?;
        meta.file = file;
        meta.project_id = project_id;
        meta.partition = job.day;
        Ok(Some(DayDone {
            day: job.day,
            merged: job.merged.clone(),
            meta: Some(meta),
            order: order.iter().map(|&k| kept[k]).collect(),
            removed,
            redacted,
        }))
    }

    /// Writes the saved identity mapping again whole (the `.dids` file of `project_id` rewritten from the first
    /// value), so that erased distinct ids are in no file. When nothing usable was saved and the load from the
    /// store is not done, the project's files are deleted instead (the next start reads the mapping from the
    /// store).
    fn rewrite_identity(&self, project_id: i64) -> Result<(), EngineError> {
        let mut saved = self.saved_identity.lock().expect("identity save lock");
        let (seq, copies) = {
            let st = self.read();
            let seq = if st.identity.complete {
                Some(st.identity.seq)
            } else {
                st.identity.saved
            };
            let Some(seq) = seq else {
                drop(st);
                super::identity::forget(&self.dir, project_id);
                saved.files.remove(&project_id);
                saved.last = None;
                return Ok(());
            };
            saved.files.remove(&project_id);
            saved.last = None;
            let mut ids: Vec<i64> = st.projects.keys().copied().collect();
            ids.sort_unstable();
            let copies: Vec<super::identity::ProjectCopy> = ids
                .iter()
                .map(|id| super::identity::ProjectCopy::of(*id, &st.projects[id], &saved))
                .collect();
            (seq, copies)
        };
        super::identity::save(&self.dir, seq, &copies, &mut saved)
    }
}
