//! Reading committed batches back: forward ([`WalReader`]) and newest-first
//! ([`crate::Intake::scan_rev`]).

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::EngineError;
use crate::event::{decode_batch, BatchRef, Event, EventRef};
use crate::intake::{SegmentMeta, Shared};
use crate::segment::{read_exact_at, RecordHeader, RECORD_HEADER_LEN};

/// Bytes fetched per positional read.
const CHUNK: u64 = 1 << 20;

fn corrupt(path: &Path, base: u64, offset: u64, reason: impl Into<String>) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        offset,
        lsn: base + offset,
        reason: reason.into(),
    }
}

fn read_err(path: &Path, offset: u64, e: std::io::Error) -> EngineError {
    EngineError::io(format!("reading {} at offset {offset}", path.display()), e)
}

/// A window of one segment file, filled by positional reads that never go past the
/// committed length (bytes beyond it may be a write in progress).
#[derive(Default)]
struct Window {
    buf: Vec<u8>,
    start: u64,
}

impl Window {
    /// Bytes `[off, off + n)` of `file`; `limit` is the readable length of the file.
    fn get(
        &mut self,
        file: &File,
        path: &Path,
        off: u64,
        n: u64,
        limit: u64,
    ) -> Result<&[u8], EngineError> {
        let end = self.start + self.buf.len() as u64;
        if off < self.start || off + n > end {
            let len = n.max(CHUNK).min(limit - off);
            self.buf.resize(len as usize, 0);
            read_exact_at(file, &mut self.buf, off).map_err(|e| read_err(path, off, e))?;
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(&self.buf[at..at + n as usize])
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

struct OpenSegment {
    base: u64,
    path: PathBuf,
    file: File,
    /// Committed end LSN of this segment, as last seen.
    end: u64,
    sealed: bool,
}

/// Iterator over committed batches, oldest first, as `(lsn_after_batch, events)`.
///
/// Created by [`crate::Intake::reader`]. It stops at the committed LSN captured when it
/// was created; [`WalReader::refresh`] moves that limit to the current committed LSN
/// so a tailing consumer can keep one reader. It reads segment files with positional
/// reads (≈1 MiB at a time) and verifies every record's CRC.
///
/// After an error the iterator is finished (returns `None`).
pub struct WalReader {
    shared: Arc<Shared>,
    pos: u64,
    end: u64,
    cur: Option<OpenSegment>,
    window: Window,
    failed: bool,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("position", &self.pos)
            .field("end_lsn", &self.end)
            .finish()
    }
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>, from_lsn: u64, end: u64) -> Self {
        WalReader {
            shared,
            pos: from_lsn,
            end,
            cur: None,
            window: Window::default(),
            failed: false,
        }
    }

    /// LSN of the next batch to be read (= LSN after the last batch returned).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The LSN where this reader stops.
    pub fn end_lsn(&self) -> u64 {
        self.end
    }

    /// Extend the limit to the current committed LSN; returns it.
    pub fn refresh(&mut self) -> u64 {
        self.end = self.end.max(self.shared.committed());
        self.end
    }

    /// Next committed batch as `(lsn_after_batch, payload)`, with the CRC verified but
    /// the payload not decoded: parse it with [`BatchRef::new`] for allocation-free
    /// access (e.g. when converting to columnar form).
    pub fn next_payload(&mut self) -> Option<Result<(u64, &[u8]), EngineError>> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        match self.advance() {
            Ok((lsn, range)) => Some(Ok((lsn, &self.window.buf[range]))),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// Read the record at `self.pos`; returns its end LSN and the payload's range in
    /// the window buffer.
    fn advance(&mut self) -> Result<(u64, std::ops::Range<usize>), EngineError> {
        self.position_segment()?;
        let seg = self.cur.as_ref().expect("positioned");
        let limit = seg.end.min(self.end) - seg.base;
        let off = self.pos - seg.base;
        let hdr = self
            .window
            .get(&seg.file, &seg.path, off, RECORD_HEADER_LEN as u64, limit)?;
        let hdr = RecordHeader::parse(hdr.first_chunk().expect("8 bytes"));
        hdr.check_len(limit - off)
            .map_err(|r| corrupt(&seg.path, seg.base, off, r))?;
        let payload = self.window.get(
            &seg.file,
            &seg.path,
            off + RECORD_HEADER_LEN as u64,
            u64::from(hdr.len),
            limit,
        )?;
        let crc = crc32fast::hash(payload);
        if crc != hdr.crc {
            return Err(corrupt(
                &seg.path,
                seg.base,
                off,
                format!(
                    "crc mismatch (stored {:#010x}, computed {crc:#010x})",
                    hdr.crc
                ),
            ));
        }
        let at = (off + RECORD_HEADER_LEN as u64 - self.window.start) as usize;
        self.pos += hdr.record_len();
        Ok((self.pos, at..at + hdr.len as usize))
    }

    /// Make `self.cur` the segment containing `self.pos`.
    fn position_segment(&mut self) -> Result<(), EngineError> {
        if let Some(seg) = &mut self.cur {
            if self.pos < seg.end {
                return Ok(());
            }
            if !seg.sealed {
                let segs = self.shared.read_segments();
                if segs.active.base == seg.base {
                    seg.end = segs.active.end;
                } else {
                    seg.sealed = true;
                    let i = segs.sealed.partition_point(|s| s.base < seg.base);
                    if let Some(s) = segs.sealed.get(i).filter(|s| s.base == seg.base) {
                        seg.end = s.end;
                    }
                }
                if self.pos < seg.end {
                    return Ok(());
                }
            }
            self.cur = None;
            self.window.reset();
        }
        let pos = self.pos;
        let (base, path, end, sealed) = {
            let segs = self.shared.read_segments();
            let Some((seg, sealed)) = segs.find(pos) else {
                return Err(EngineError::InvalidLsn {
                    lsn: pos,
                    reason: format!(
                        "before the oldest retained segment (lsn {})",
                        segs.oldest_lsn()
                    ),
                });
            };
            let off = pos - seg.base;
            let boundary = u32::try_from(off)
                .ok()
                .is_some_and(|o| seg.offsets.binary_search(&o).is_ok());
            if !boundary {
                return Err(EngineError::InvalidLsn {
                    lsn: pos,
                    reason: format!("not a batch boundary in segment {}", seg.path.display()),
                });
            }
            (seg.base, seg.path.clone(), seg.end, sealed)
        };
        let file = File::open(&path)
            .map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
        self.cur = Some(OpenSegment {
            base,
            path,
            file,
            end,
            sealed,
        });
        Ok(())
    }
}

impl Iterator for WalReader {
    type Item = Result<(u64, Vec<Event>), EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos;
        let (lsn, payload) = match self.next_payload()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        match decode_batch(payload) {
            Ok(events) => Some(Ok((lsn, events))),
            Err(e) => {
                self.failed = true;
                let (base, path) = self
                    .cur
                    .as_ref()
                    .map(|s| (s.base, s.path.clone()))
                    .unwrap_or_default();
                Some(Err(corrupt(
                    &path,
                    base,
                    start - base,
                    format!("undecodable batch with a valid crc: {e}"),
                )))
            }
        }
    }
}

/// See [`crate::Intake::scan_rev`].
pub(crate) fn scan_rev<F>(shared: &Shared, mut f: F) -> Result<(), EngineError>
where
    F: FnMut(EventRef<'_>) -> ControlFlow<()>,
{
    let end = shared.committed();
    let (sealed, active) = {
        let segs = shared.read_segments();
        let active = Arc::new(SegmentMeta {
            base: segs.active.base,
            path: segs.active.path.clone(),
            offsets: segs.active.offsets.clone(),
            end: segs.active.end,
            events: segs.active.events,
            summary: std::sync::OnceLock::new(),
        });
        (segs.sealed.clone(), active)
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut scratch: Vec<u32> = Vec::new();
    for seg in std::iter::once(&active).chain(sealed.iter().rev()) {
        let seg_end = seg.end.min(end);
        let n = seg
            .offsets
            .partition_point(|&o| seg.base + u64::from(o) < seg_end);
        if n == 0 {
            continue;
        }
        let offsets = &seg.offsets[..n];
        let file_end = seg_end - seg.base;
        let file = File::open(&seg.path)
            .map_err(|e| EngineError::io(format!("opening {}", seg.path.display()), e))?;
        let rec_end = |k: usize| offsets.get(k + 1).map_or(file_end, |&o| u64::from(o));
        let mut i = n;
        while i > 0 {
            // Window [offsets[j], rec_end(i - 1)): as many whole records as fit in CHUNK
            // (at least one).
            let win_end = rec_end(i - 1);
            let mut j = i - 1;
            while j > 0 && win_end - u64::from(offsets[j - 1]) <= CHUNK {
                j -= 1;
            }
            let win_start = u64::from(offsets[j]);
            buf.resize((win_end - win_start) as usize, 0);
            read_exact_at(&file, &mut buf, win_start)
                .map_err(|e| read_err(&seg.path, win_start, e))?;
            for k in (j..i).rev() {
                let off = u64::from(offsets[k]);
                let rec = &buf[(off - win_start) as usize..(rec_end(k) - win_start) as usize];
                let Some((hdr, payload)) = rec.split_first_chunk::<RECORD_HEADER_LEN>() else {
                    return Err(corrupt(
                        &seg.path,
                        seg.base,
                        off,
                        "record shorter than its header",
                    ));
                };
                let hdr = RecordHeader::parse(hdr);
                if hdr.len as usize != payload.len() {
                    return Err(corrupt(
                        &seg.path,
                        seg.base,
                        off,
                        format!(
                            "record length {} does not match the index ({} bytes)",
                            hdr.len,
                            payload.len()
                        ),
                    ));
                }
                let crc = crc32fast::hash(payload);
                if crc != hdr.crc {
                    return Err(corrupt(
                        &seg.path,
                        seg.base,
                        off,
                        format!(
                            "crc mismatch (stored {:#010x}, computed {crc:#010x})",
                            hdr.crc
                        ),
                    ));
                }
                let bad = |e| corrupt(&seg.path, seg.base, off, format!("undecodable batch: {e}"));
                let batch = BatchRef::new(payload).map_err(bad)?;
                for ev in batch.iter_rev(&mut scratch).map_err(bad)? {
                    if f(ev.map_err(bad)?).is_break() {
                        return Ok(());
                    }
                }
            }
            i = j;
        }
    }
    Ok(())
}
