//! The newest events of a project, for `GET /api/v1/projects/{id}/events`: read from the event tables (days newest
//! first, stopping once enough have matched) instead of scanning the whole intake log.

use std::collections::{HashMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::RecordBatch;

use super::{EventTables, Partition, Source, DAY_US};
use crate::columnar::{read_segment_rows, row_properties};
use crate::EngineError;

/// Which events [`EventTables::recent`] returns (all optional).
#[derive(Debug, Clone, Default)]
pub struct RecentFilter {
    /// Only events of this name.
    pub event: Option<String>,
    /// Only events of these distinct ids.
    pub distinct_ids: Option<Vec<String>>,
    /// Only events at or after this time (µs).
    pub after_us: Option<i64>,
    /// Only events before this time (µs).
    pub before_us: Option<i64>,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub uuid: u128,
    pub timestamp_us: i64,
    pub event: String,
    pub distinct_id: String,
    /// The properties, a JSON object as text.
    pub properties: String,
}

impl Partition {
    /// `f` of each of `rows` (storage rows, any order): tail rows from memory, sealed rows from their segment file
    /// (each file read once, only `columns`).
    fn row_values<T>(
        &self,
        dir: &std::path::Path,
        rows: &[usize],
        columns: Option<&[&str]>,
        tail: impl Fn(&super::TailRow) -> T,
        sealed: impl Fn(&RecordBatch, usize) -> T,
    ) -> Result<Vec<T>, EngineError> {
        let first_tail = self.len() - self.tail.len();
        let mut out: Vec<Option<T>> = rows.iter().map(|_| None).collect();
        // Sealed rows by segment.
        let mut by_source: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for (i, &r) in rows.iter().enumerate() {
            if r >= first_tail {
                out[i] = Some(tail(&self.tail[r - first_tail]));
                continue;
            }
            // Sources cover the sealed rows in storage order.
            let s = Some(
                self.sources
                    .partition_point(|Source::Segment { rows, .. }| rows.end <= r),
            )
            .filter(|&s| s < self.sources.len())
            .ok_or_else(|| EngineError::Segment {
                path: dir.to_path_buf(),
                reason: format!("storage row {r} is in no segment"),
            })?;
            by_source.entry(s).or_default().push((i, r));
        }
        for (s, wanted) in by_source {
            let Source::Segment { file, rows: range } = &self.sources[s];
            // Only the wanted rows are decoded; the k-th smallest offset is the k-th row read.
            let mut offsets: Vec<usize> = wanted.iter().map(|&(_, r)| r - range.start).collect();
            offsets.sort_unstable();
            offsets.dedup();
            let batches = read_segment_rows(&dir.join(file.as_ref()), columns, &offsets)?;
            let mut starts = Vec::with_capacity(batches.len());
            let mut at = 0;
            for b in &batches {
                starts.push(at);
                at += b.num_rows();
            }
            for (i, r) in wanted {
                let k = offsets
                    .binary_search(&(r - range.start))
                    .expect("offset selected");
                let b = starts.partition_point(|&s| s <= k) - 1;
                out[i] = Some(sealed(&batches[b], k - starts[b]));
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every row read"))
            .collect())
    }
}

fn uuid_of(batch: &RecordBatch, i: usize) -> u128 {
    let half = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .map_or(0, |c| c.value(i) as u64)
    };
    (u128::from(half("uuid_high")) << 64) | u128::from(half("uuid_low"))
}

impl EventTables {
    /// The newest `limit` events of `project_id` that pass `filter`, newest first (by time, then uuid); an event
    /// stored twice (the same uuid) is returned once.
    pub fn recent(
        &self,
        project_id: i64,
        filter: &RecentFilter,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, EngineError> {
        let Some(snap) = self.snapshot(project_id) else {
            return Ok(Vec::new());
        };
        let event = match &filter.event {
            Some(name) => match snap.events.get(name) {
                Some(i) => Some(i),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let dids: Option<HashSet<u32>> = match &filter.distinct_ids {
            Some(names) => {
                let st = self.read();
                let set: HashSet<u32> = st
                    .projects
                    .get(&project_id)
                    .map(|p| names.iter().filter_map(|n| p.dids.get(n)).collect())
                    .unwrap_or_default();
                if set.is_empty() {
                    return Ok(Vec::new());
                }
                Some(set)
            }
            None => None,
        };
        let (lo, hi) = (
            filter.after_us.unwrap_or(i64::MIN),
            filter.before_us.unwrap_or(i64::MAX),
        );
        // (time, uuid, day, storage row) of the matches, newest days first; days are disjoint in time, so once
        // `limit` events matched, older days cannot hold newer ones.
        let mut found: Vec<(i64, u128, i32, usize)> = Vec::new();
        for (&day, part) in snap.partitions.iter().rev() {
            let start = day as i64 * DAY_US;
            if start >= hi {
                continue;
            }
            if start.saturating_add(DAY_US) <= lo || found.len() >= limit {
                break;
            }
            let rows: Vec<usize> = (0..part.len())
                .filter(|&r| {
                    let ts = part.ts[r];
                    ts >= lo
                        && ts < hi
                        && event.is_none_or(|e| part.event[r] == e)
                        && dids.as_ref().is_none_or(|d| d.contains(&part.did[r]))
                })
                .collect();
            let uuids = part.row_values(
                &snap.dir,
                &rows,
                Some(&["uuid_high", "uuid_low"]),
                |t| t.uuid,
                uuid_of,
            )?;
            // The same uuid twice (an SDK retry stored twice): keep the first stored.
            let mut seen: HashSet<u128> = HashSet::new();
            for (&r, u) in rows.iter().zip(uuids) {
                if seen.insert(u) {
                    found.push((part.ts[r], u, day, r));
                }
            }
        }
        found.sort_unstable_by_key(|f| std::cmp::Reverse((f.0, f.1)));
        found.truncate(limit);
        // Everything else of the chosen rows, per day.
        let mut out: Vec<Option<StoredEvent>> = found.iter().map(|_| None).collect();
        let mut by_day: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, f) in found.iter().enumerate() {
            by_day.entry(f.2).or_default().push(i);
        }
        for (day, chosen) in by_day {
            let part = &snap.partitions[&day];
            let rows: Vec<usize> = chosen.iter().map(|&i| found[i].3).collect();
            let properties = part.row_values(
                &snap.dir,
                &rows,
                None,
                |t| t.properties.to_string(),
                |b, i| serde_json::Value::Object(row_properties(b, i)).to_string(),
            )?;
            let dids: Vec<u32> = rows.iter().map(|&r| part.did[r]).collect();
            let names = self.distinct_id_names(project_id, &dids);
            for (((&i, &r), properties), distinct_id) in
                chosen.iter().zip(&rows).zip(properties).zip(names)
            {
                out[i] = Some(StoredEvent {
                    uuid: found[i].1,
                    timestamp_us: part.ts[r],
                    event: snap.events.value(part.event[r]).to_owned(),
                    distinct_id,
                    properties,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventRef;
    use serde_json::{json, Value};

    const DAY: i64 = 20_000; // a day number in 2024

    /// Event `i`: day `DAY + i % 3`, distinct id `u<i % 4>`, event `view`/`click`, properties with the index.
    fn events(range: std::ops::Range<u32>) -> Vec<(u128, String, &'static str, i64, String)> {
        range
            .map(|i| {
                let ts = (DAY + i64::from(i % 3)) * DAY_US + i64::from(i) * 1_000;
                let event = if i % 2 == 0 { "view" } else { "click" };
                let props = json!({"i": i, "tag": format!("t{}", i % 5), "nested": {"i": [i]}});
                (
                    1 << 90 | u128::from(i),
                    format!("u{}", i % 4),
                    event,
                    ts,
                    props.to_string(),
                )
            })
            .collect()
    }

    fn append(t: &EventTables, evs: &[(u128, String, &'static str, i64, String)], lsn: u64) {
        t.append(
            evs.iter().map(|(uuid, did, event, ts, props)| EventRef {
                uuid: *uuid,
                project_id: 1,
                timestamp_us: *ts,
                received_us: *ts,
                event,
                distinct_id: did,
                properties: props,
            }),
            lsn,
        );
    }

    /// The truth: every event passing `keep`, newest first (time, then uuid), at most `limit`.
    fn expected(
        all: &[(u128, String, &'static str, i64, String)],
        keep: impl Fn(&(u128, String, &'static str, i64, String)) -> bool,
        limit: usize,
    ) -> Vec<(u128, i64, String, String, Value)> {
        let mut v: Vec<_> = all
            .iter()
            .filter(|e| keep(e))
            .map(|(u, d, e, ts, p)| {
                (
                    *u,
                    *ts,
                    e.to_string(),
                    d.clone(),
                    serde_json::from_str(p).unwrap(),
                )
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse((e.1, e.0)));
        v.truncate(limit);
        v
    }

    fn got(events: Vec<StoredEvent>) -> Vec<(u128, i64, String, String, Value)> {
        events
            .into_iter()
            .map(|e| {
                (
                    e.uuid,
                    e.timestamp_us,
                    e.event,
                    e.distinct_id,
                    serde_json::from_str(&e.properties).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn newest_events_come_from_segments_and_the_tail_with_every_filter() {
        let dir = tempfile::tempdir().unwrap();
        let t = EventTables::open(dir.path()).unwrap();
        t.assign_all([(1, "u0", 1), (1, "u1", 2), (1, "u2", 3), (1, "u3", 4)]);
        let sealed = events(0..60);
        append(&t, &sealed, 1);
        t.seal().unwrap();
        let tail = events(60..90);
        append(&t, &tail, 2);
        // The same event stored again (an SDK retry): listed once.
        append(&t, &tail[..1], 3);
        let all: Vec<_> = sealed.iter().chain(&tail).cloned().collect();
        let f = RecentFilter::default();
        assert_eq!(
            got(t.recent(1, &f, 10).unwrap()),
            expected(&all, |_| true, 10)
        );
        assert_eq!(
            got(t.recent(1, &f, 1000).unwrap()),
            expected(&all, |_| true, 1000)
        );
        let clicks = RecentFilter {
            event: Some("click".into()),
            distinct_ids: Some(vec!["u1".into(), "u3".into(), "nobody".into()]),
            ..Default::default()
        };
        assert_eq!(
            got(t.recent(1, &clicks, 7).unwrap()),
            expected(&all, |e| e.2 == "click" && (e.1 == "u1" || e.1 == "u3"), 7)
        );
        // A time window that only sealed rows of the middle day satisfy.
        let (lo, hi) = ((DAY + 1) * DAY_US, (DAY + 1) * DAY_US + 40_000);
        let window = RecentFilter {
            after_us: Some(lo),
            before_us: Some(hi),
            ..Default::default()
        };
        let want = expected(&all, |e| e.3 >= lo && e.3 < hi, 100);
        assert!(!want.is_empty());
        assert_eq!(got(t.recent(1, &window, 100).unwrap()), want);
        // Nothing matches: an unknown event, an unknown distinct id, another project.
        let none = RecentFilter {
            event: Some("nope".into()),
            ..Default::default()
        };
        assert!(t.recent(1, &none, 10).unwrap().is_empty());
        let nobody = RecentFilter {
            distinct_ids: Some(vec!["nobody".into()]),
            ..Default::default()
        };
        assert!(t.recent(1, &nobody, 10).unwrap().is_empty());
        assert!(t.recent(2, &f, 10).unwrap().is_empty());
    }
}
