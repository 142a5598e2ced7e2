//! Rewriting sealed WAL segments in place, for GDPR erasure and data retention ([`crate::Intake::rewrite`]).
//!
//! The log's positions are load-bearing: every consumer (identity, the insights tables, referrals, event webhooks)
//! keeps a checkpoint that is an LSN at a batch boundary, and readers check that a position they are given is one.
//! So a rewrite never moves a byte of the log's *structure*: each record keeps its offset and its length, and only
//! the payloads of the records that change are replaced —
//!
//! - the events that stay are re-encoded at the start of the payload, followed by zero bytes up to the old length
//!   (a *padded* batch, format version 2, see [`crate::event`]); the record header gets the new CRC;
//! - a record whose every event goes is a padded batch of no events: its header, five bytes, and zeros.
//!
//! The file is written to `<segment>.wal.tmp` (records that do not change are copied byte for byte; long zero runs
//! are left as holes, so a segment emptied by retention frees its disk blocks), synced, and renamed over the
//! segment, then the directory is synced: a crash leaves either file, whole. [`crate::Intake::open`] deletes a
//! leftover temporary file. Only sealed segments are rewritten ([`crate::Intake::seal_active`] seals the active one
//! first); appends continue meanwhile into the new active segment.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError};

use crate::error::EngineError;
use crate::event::{encode_padded_batch, BatchRef, EventRef};
use crate::intake::{SegmentMeta, Shared};
use crate::segment::{read_exact_at, sync_dir, RecordHeader, RECORD_HEADER_LEN};

/// Suffix of a segment being rewritten.
const TMP_SUFFIX: &str = ".wal.tmp";
/// Bytes read at a time.
const CHUNK: u64 = 4 << 20;
/// Zero runs at least this long are skipped with a seek (a hole) instead of written.
const HOLE_BYTES: usize = 64 << 10;

/// What a sealed segment holds, per project: learned when a rewrite pass reads it, kept in memory so that later
/// passes skip the segments they cannot change (an hourly retention pass reads each segment once, not every hour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Project → its events in the segment.
    pub projects: BTreeMap<i64, ProjectSpan>,
}

/// One project's events in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectSpan {
    pub events: u64,
    pub min_timestamp_us: i64,
    pub max_timestamp_us: i64,
}

impl SegmentSummary {
    fn add(&mut self, e: &EventRef<'_>) {
        self.projects
            .entry(e.project_id)
            .and_modify(|s| {
                s.events += 1;
                s.min_timestamp_us = s.min_timestamp_us.min(e.timestamp_us);
                s.max_timestamp_us = s.max_timestamp_us.max(e.timestamp_us);
            })
            .or_insert(ProjectSpan {
                events: 1,
                min_timestamp_us: e.timestamp_us,
                max_timestamp_us: e.timestamp_us,
            });
    }
}

/// What happens to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It stays as it is.
    Keep,
    /// It goes.
    Drop,
    /// It stays with these properties (JSON object text, at most as long as the old one).
    Properties(String),
}

/// What a rewrite did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RewriteStats {
    /// Sealed segments read.
    pub segments_read: usize,
    /// Sealed segments skipped on their summary.
    pub segments_skipped: usize,
    /// Segments replaced by a rewritten file.
    pub segments_rewritten: usize,
    /// Records (batches) rewritten.
    pub records_rewritten: usize,
    /// Events dropped.
    pub events_dropped: u64,
    /// Events kept with new properties.
    pub events_changed: u64,
}

/// Deletes temporary files of rewrites cut short (on open; best effort).
pub(crate) fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_tmp = name
            .strip_suffix(TMP_SUFFIX)
            .is_some_and(|base| base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit()));
        if is_tmp && std::fs::remove_file(entry.path()).is_ok() {
            tracing::warn!(file = %entry.path().display(), "WAL: removed the temporary file of an interrupted rewrite");
        }
    }
}

fn corrupt(seg: &SegmentMeta, offset: u64, reason: impl Into<String>) -> EngineError {
    EngineError::Corrupt {
        path: seg.path.clone(),
        offset,
        lsn: seg.base + offset,
        reason: reason.into(),
    }
}

/// A changed record: its offset, its bytes up to the last non-zero one, and its full length.
struct Changed {
    offset: u64,
    head: Vec<u8>,
    len: u64,
}

/// See [`crate::Intake::rewrite`].
pub(crate) fn rewrite(
    shared: &Shared,
    up_to: u64,
    skip: impl Fn(&SegmentSummary) -> bool,
    mut verdict: impl FnMut(&EventRef<'_>) -> Verdict,
) -> Result<RewriteStats, EngineError> {
    let _one = shared
        .rewrite_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let segments: Vec<Arc<SegmentMeta>> = shared
        .read_segments()
        .sealed
        .iter()
        .filter(|s| s.end <= up_to)
        .cloned()
        .collect();
    let mut stats = RewriteStats::default();
    for seg in segments {
        if seg.summary.get().is_some_and(|s| skip(s)) {
            stats.segments_skipped += 1;
            continue;
        }
        stats.segments_read += 1;
        let (changes, summary, events) = plan(&seg, &mut verdict, &mut stats)?;
        if changes.is_empty() {
            let _ = seg.summary.set(Arc::new(summary));
            continue;
        }
        write_segment(&seg, &changes)?;
        stats.segments_rewritten += 1;
        stats.records_rewritten += changes.len();
        let replaced = Arc::new(SegmentMeta {
            base: seg.base,
            path: seg.path.clone(),
            offsets: seg.offsets.clone(),
            end: seg.end,
            events,
            summary: OnceLock::from(Arc::new(summary)),
        });
        let mut segs = shared.write_segments();
        if let Some(slot) = segs.sealed.iter_mut().find(|s| s.base == seg.base) {
            *slot = replaced;
        }
    }
    Ok(stats)
}

/// Reads every record of `seg` (CRC checked), asks for each event's verdict, and returns the records that change,
/// the summary of what the segment holds afterwards and its event count.
fn plan(
    seg: &SegmentMeta,
    verdict: &mut impl FnMut(&EventRef<'_>) -> Verdict,
    stats: &mut RewriteStats,
) -> Result<(Vec<Changed>, SegmentSummary, u64), EngineError> {
    let file = File::open(&seg.path)
        .map_err(|e| EngineError::io(format!("opening {}", seg.path.display()), e))?;
    let len = seg.end - seg.base;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = 0u64;
    let mut changes = Vec::new();
    let mut summary = SegmentSummary::default();
    let mut events = 0u64;
    let mut verdicts: Vec<Verdict> = Vec::new();
    for (i, &off) in seg.offsets.iter().enumerate() {
        let off = u64::from(off);
        let end = seg.offsets.get(i + 1).map_or(len, |&o| u64::from(o));
        if off < buf_start || end > buf_start + buf.len() as u64 {
            let n = CHUNK.max(end - off).min(len - off);
            buf.resize(n as usize, 0);
            read_exact_at(&file, &mut buf, off).map_err(|e| {
                EngineError::io(format!("reading {} at offset {off}", seg.path.display()), e)
            })?;
            buf_start = off;
        }
        let record = &buf[(off - buf_start) as usize..(end - buf_start) as usize];
        let Some((hdr, payload)) = record.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(corrupt(seg, off, "record shorter than its header"));
        };
        let hdr = RecordHeader::parse(hdr);
        if hdr.len as usize != payload.len() {
            return Err(corrupt(seg, off, "record length does not match the index"));
        }
        let crc = crc32fast::hash(payload);
        if crc != hdr.crc {
            return Err(corrupt(
                seg,
                off,
                format!(
                    "crc mismatch (stored {:#010x}, computed {crc:#010x})",
                    hdr.crc
                ),
            ));
        }
        let bad = |e| corrupt(seg, off, format!("undecodable batch: {e}"));
        let batch = BatchRef::new(payload).map_err(bad)?;
        verdicts.clear();
        let mut changed = false;
        for ev in batch.iter() {
            let ev = ev.map_err(bad)?;
            let v = verdict(&ev);
            changed |= v != Verdict::Keep;
            verdicts.push(v);
        }
        if !changed {
            for ev in batch.iter() {
                summary.add(&ev.map_err(bad)?);
            }
            events += verdicts.len() as u64;
            continue;
        }
        let mut kept: Vec<EventRef<'_>> = Vec::with_capacity(verdicts.len());
        for (ev, v) in batch.iter().zip(&verdicts) {
            let ev = ev.map_err(bad)?;
            match v {
                Verdict::Keep => kept.push(ev),
                Verdict::Drop => stats.events_dropped += 1,
                Verdict::Properties(p) => {
                    stats.events_changed += 1;
                    kept.push(EventRef {
                        properties: p.as_str(),
                        ..ev
                    });
                }
            }
        }
        for ev in &kept {
            summary.add(ev);
        }
        events += kept.len() as u64;
        let mut record = Vec::with_capacity(record.len());
        record.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        encode_padded_batch(&kept, payload.len(), &mut record)
            .map_err(|e| corrupt(seg, off, format!("rewriting the batch: {e}")))?;
        let crc = crc32fast::hash(&record[RECORD_HEADER_LEN..]);
        record[..4].copy_from_slice(&hdr.len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        let full = record.len() as u64;
        let last = record.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        record.truncate(last);
        changes.push(Changed {
            offset: off,
            head: record,
            len: full,
        });
    }
    Ok((changes, summary, events))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Writes `seg` with `changes` applied to its temporary file, syncs it and renames it over the segment.
fn write_segment(seg: &SegmentMeta, changes: &[Changed]) -> Result<(), EngineError> {
    let tmp = tmp_path(&seg.path);
    let result = (|| -> Result<(), EngineError> {
        let io = |what: &str, e| EngineError::io(format!("{what} {}", tmp.display()), e);
        let old = File::open(&seg.path)
            .map_err(|e| EngineError::io(format!("opening {}", seg.path.display()), e))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io("creating", e))?;
        let len = seg.end - seg.base;
        let mut pos = 0u64;
        let mut copy = vec![0u8; CHUNK as usize];
        let mut copy_range = |out: &mut File, from: u64, to: u64| -> Result<(), EngineError> {
            let mut at = from;
            while at < to {
                let n = (to - at).min(CHUNK) as usize;
                read_exact_at(&old, &mut copy[..n], at).map_err(|e| {
                    EngineError::io(format!("reading {} at offset {at}", seg.path.display()), e)
                })?;
                out.write_all(&copy[..n]).map_err(|e| io("writing", e))?;
                at += n as u64;
            }
            Ok(())
        };
        for c in changes {
            copy_range(&mut out, pos, c.offset)?;
            out.write_all(&c.head).map_err(|e| io("writing", e))?;
            let zeros = (c.len - c.head.len() as u64) as usize;
            if zeros >= HOLE_BYTES {
                out.seek(SeekFrom::Current(zeros as i64))
                    .map_err(|e| io("seeking in", e))?;
            } else {
                out.write_all(&vec![0u8; zeros])
                    .map_err(|e| io("writing", e))?;
            }
            pos = c.offset + c.len;
        }
        copy_range(&mut out, pos, len)?;
        // A trailing hole is only made by the length.
        out.set_len(len).map_err(|e| io("sizing", e))?;
        out.sync_all().map_err(|e| io("syncing", e))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &seg.path)
        .map_err(|e| EngineError::io(format!("renaming {} into place", tmp.display()), e))?;
    let dir = seg.path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Masks the mentions of a person (their distinct ids, person uuids, email…) in the JSON properties of *other*
/// events, keeping the text's length (so a WAL batch can be rewritten in place):
///
/// - a JSON string (value or key) equal to one of the values becomes `null` (a value) or `""` (a key, or a value
///   shorter than `null`), padded with spaces — still valid JSON;
/// - a value of at least [`Redactor::SUBSTRING_MIN`] bytes inside a longer string (a URL, a message) is masked
///   with `*`, byte for byte.
///
/// A text is only examined when it holds one of the values in its plain (unescaped) spelling; whole strings are
/// then compared as decoded. Numbers are never touched.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    exact: std::collections::HashSet<String>,
    /// Plain spellings, for the quick check and for masking inside strings.
    finders: Vec<memchr::memmem::Finder<'static>>,
}

impl Redactor {
    /// Values shorter than this are replaced only where they are a whole string (`"42"` inside a URL is left).
    pub const SUBSTRING_MIN: usize = 8;

    /// A redactor of `values` (empty ones are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut exact = std::collections::HashSet::new();
        for v in values {
            if !v.is_empty() {
                exact.insert(v);
            }
        }
        let mut finders: Vec<memchr::memmem::Finder<'static>> = exact
            .iter()
            .map(|v| memchr::memmem::Finder::new(v.as_bytes()).into_owned())
            .collect();
        // Longest first, so a value that contains another is masked whole.
        finders.sort_by_key(|f| std::cmp::Reverse(f.needle().len()));
        Redactor { exact, finders }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    /// Whether `text` mentions one of the values (in its plain spelling).
    pub fn mentions(&self, text: &str) -> bool {
        self.finders
            .iter()
            .any(|f| f.find(text.as_bytes()).is_some())
    }

    /// `json` with the mentions masked (same length), or `None` when it has none.
    pub fn redact(&self, json: &str) -> Option<String> {
        if !self.mentions(json) {
            return None;
        }
        let mut out = json.as_bytes().to_vec();
        let bytes = json.as_bytes();
        let mut changed = false;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'"' {
                i += 1;
                continue;
            }
            // A string token [i, end].
            let mut j = i + 1;
            let mut escaped = false;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    escaped = true;
                    j += 1;
                }
                j += 1;
            }
            if j >= bytes.len() {
                break;
            }
            let token = &json[i..=j];
            let decoded: Option<std::borrow::Cow<'_, str>> = if escaped {
                serde_json::from_str::<String>(token).ok().map(Into::into)
            } else {
                Some(json[i + 1..j].into())
            };
            let is_key = bytes[j + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b':');
            if decoded.as_deref().is_some_and(|d| self.exact.contains(d)) {
                let n = token.len();
                let replacement: &[u8] = if !is_key && n >= 4 { b"null" } else { b"\"\"" };
                out[i..i + replacement.len()].copy_from_slice(replacement);
                out[i + replacement.len()..=j].fill(b' ');
                changed = true;
            } else if !escaped {
                let inner = i + 1..j;
                for f in &self.finders {
                    if f.needle().len() < Self::SUBSTRING_MIN {
                        continue;
                    }
                    let mut from = inner.start;
                    while let Some(at) = f.find(&out[from..inner.end]) {
                        let at = from + at;
                        out[at..at + f.needle().len()].fill(b'*');
                        changed = true;
                        from = at + f.needle().len();
                    }
                }
            }
            i = j + 1;
        }
        // Only ASCII replaced whole UTF-8 sequences: still valid UTF-8.
        changed.then(|| String::from_utf8(out).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_masked_in_place_and_the_json_stays_valid() {
        let r = Redactor::new([
            "erase-me-42".to_owned(),
            "x".to_owned(),
            "a@b.io".to_owned(),
        ]);
        let text = r#"{"inviter": "erase-me-42", "url": "https://x.io/?ref=erase-me-42&u=1", "erase-me-42": 1,
            "short": "x", "keep": "xx", "n": 42, "esc": "erase\u002dme-42", "mail":"a@b.io"}"#;
        let out = r.redact(text).unwrap();
        assert_eq!(out.len(), text.len());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["inviter"], serde_json::Value::Null);
        assert_eq!(v["url"], "https://x.io/?ref=***********&u=1");
        assert_eq!(v[""], 1, "a key becomes the empty key");
        assert_eq!(v["short"], "", "too short for null");
        assert_eq!(v["keep"], "xx");
        assert_eq!(v["n"], 42);
        assert_eq!(
            v["esc"],
            serde_json::Value::Null,
            "escaped spellings compare decoded"
        );
        assert_eq!(v["mail"], serde_json::Value::Null);
        assert!(!out.contains("erase-me-42"));
        assert_eq!(r.redact(r#"{"plan": "pro"}"#), None);
        assert!(Redactor::new(Vec::new()).is_empty());
    }
}
