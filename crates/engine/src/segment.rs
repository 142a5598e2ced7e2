//! WAL segment files: naming, record framing, positional reads and recovery scans.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::EngineError;
use crate::event::{
    self, BatchRef, Event, BATCH_FORMAT_VERSION, BATCH_HEADER_LEN, PADDED_BATCH_FORMAT_VERSION,
};

/// `[u32 len][u32 crc32]`, little-endian.
pub(crate) const RECORD_HEADER_LEN: usize = 8;

/// Largest accepted record payload (one encoded batch). Larger appends are rejected
/// with [`EngineError::BatchTooLarge`]; a larger length read back from disk is
/// corruption.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Record header plus the batch header (version byte + event count): what the header
/// scan of sealed segments reads per record.
const RECORD_PREFIX_LEN: usize = RECORD_HEADER_LEN + BATCH_HEADER_LEN;

/// Smallest encoded event (fixed part + three empty strings), see [`crate::event`].
const MIN_EVENT_LEN: usize = 43;

pub(crate) const SEGMENT_EXT: &str = "wal";

/// `00000000000000012345.wal` for base LSN 12345.
pub(crate) fn segment_file_name(base_lsn: u64) -> String {
    format!("{base_lsn:020}.{SEGMENT_EXT}")
}

/// Inverse of [`segment_file_name`]; `None` for anything else.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frame `events` as one WAL record (header + payload), appended to `out`.
pub(crate) fn encode_record(events: &[Event], out: &mut Vec<u8>) -> Result<(), EngineError> {
    let payload_len = event::encoded_len(events);
    if payload_len > MAX_RECORD_BYTES {
        return Err(EngineError::BatchTooLarge {
            size: payload_len,
            max: MAX_RECORD_BYTES,
        });
    }
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + payload_len);
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    event::encode_batch(events, out);
    debug_assert_eq!(out.len() - start - RECORD_HEADER_LEN, payload_len);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Parsed record header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
}

impl RecordHeader {
    pub fn parse(b: &[u8; RECORD_HEADER_LEN]) -> Self {
        RecordHeader {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Total bytes of the record on disk.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// Structural check of the length against the bytes available after the header
    /// start (`avail`).
    pub fn check_len(&self, avail: u64) -> Result<(), String> {
        let len = self.len as usize;
        if len < BATCH_HEADER_LEN {
            return Err(format!("record length {len} is below the minimum"));
        }
        if len > MAX_RECORD_BYTES {
            return Err(format!(
                "record length {len} exceeds the maximum {MAX_RECORD_BYTES}"
            ));
        }
        if self.record_len() > avail {
            return Err(format!(
                "record of {} bytes extends past the end of the data ({avail} bytes left)",
                self.record_len()
            ));
        }
        Ok(())
    }
}

/// Verify a record payload's CRC and full decodability.
pub(crate) fn verify_payload(hdr: RecordHeader, payload: &[u8]) -> Result<u32, String> {
    let actual = crc32fast::hash(payload);
    if actual != hdr.crc {
        return Err(format!(
            "crc mismatch (stored {:#010x}, computed {actual:#010x})",
            hdr.crc
        ));
    }
    let batch = BatchRef::new(payload).map_err(|e| format!("undecodable batch: {e}"))?;
    batch
        .validate()
        .map_err(|e| format!("undecodable batch: {e}"))?;
    Ok(batch.len() as u32)
}

/// Positional read that fills `buf` completely.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_read(&mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// fsync a directory so that file creations/removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| EngineError::io(format!("fsyncing directory {}", dir.display()), e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// All `*.wal` segment files in `dir`, sorted by base LSN.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, EngineError> {
    let ctx = || format!("listing WAL directory {}", dir.display());
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| EngineError::io(ctx(), e))? {
        let entry = entry.map_err(|e| EngineError::io(ctx(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_name(name) {
            Some(base) => out.push((base, entry.path())),
            None if name.ends_with(".wal") => {
                tracing::warn!(file = %entry.path().display(), "ignoring .wal file with a malformed name");
            }
            None => {}
        }
    }
    out.sort_unstable_by_key(|(base, _)| *base);
    Ok(out)
}

/// What a recovery scan learned about one segment.
#[derive(Debug, Default)]
pub(crate) struct ScannedSegment {
    /// Valid bytes (the file is truncated to this when the tail was bad).
    pub len: u64,
    /// Start offset of each record inside the file.
    pub offsets: Vec<u32>,
    /// Events declared by the batch headers.
    pub events: u64,
}

fn corrupt(path: &Path, base: u64, offset: u64, reason: String) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        offset,
        lsn: base + offset,
        reason,
    }
}

fn offset_u32(path: &Path, base: u64, offset: u64) -> Result<u32, EngineError> {
    u32::try_from(offset).map_err(|_| {
        corrupt(
            path,
            base,
            offset,
            "segment larger than 4 GiB (not written by this engine)".into(),
        )
    })
}

/// Check the 5-byte batch header found right after a record header, without the
/// payload: version byte and a count that can fit in `payload_len`.
fn check_batch_prefix(prefix: &[u8], payload_len: u32) -> Result<u32, String> {
    if prefix[0] != BATCH_FORMAT_VERSION && prefix[0] != PADDED_BATCH_FORMAT_VERSION {
        return Err(format!("unsupported batch format version {}", prefix[0]));
    }
    let count = u32::from_le_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    let room = payload_len as usize - BATCH_HEADER_LEN;
    if count as usize > room / MIN_EVENT_LEN {
        return Err(format!(
            "event count {count} cannot fit in a {payload_len}-byte batch"
        ));
    }
    Ok(count)
}

/// Fast scan of a sealed segment: follows the length chain reading only the record
/// header and batch header of each record (no CRC). Any structural problem is
/// corruption of committed data and is returned as [`EngineError::Corrupt`].
///
/// Reads are windowed: small records are walked through 256 KiB windows, large
/// records (≥ 16 KiB) are skipped with one 13-byte positional read each, so the
/// cost is O(records), not O(bytes), when batches are large.
pub(crate) fn scan_headers(
    file: &File,
    path: &Path,
    base: u64,
    file_len: u64,
) -> Result<ScannedSegment, EngineError> {
    const WINDOW: u64 = 256 << 10;
    const LARGE_RECORD: u64 = 16 << 10;
    let mut out = ScannedSegment::default();
    let mut win: Vec<u8> = Vec::new();
    let mut win_start = 0u64;
    let mut pos = 0u64;
    let mut last_len = 0u64;
    while pos < file_len {
        let left = file_len - pos;
        if left < RECORD_PREFIX_LEN as u64 {
            return Err(corrupt(
                path,
                base,
                pos,
                format!("{left} trailing bytes are too short for a record"),
            ));
        }
        let in_window =
            pos >= win_start && pos + RECORD_PREFIX_LEN as u64 <= win_start + win.len() as u64;
        if !in_window {
            let want = if last_len >= LARGE_RECORD {
                RECORD_PREFIX_LEN as u64
            } else {
                WINDOW
            };
            win.resize(want.min(left) as usize, 0);
            read_exact_at(file, &mut win, pos).map_err(|e| {
                EngineError::io(format!("reading {} at offset {pos}", path.display()), e)
            })?;
            win_start = pos;
        }
        let at = (pos - win_start) as usize;
        let prefix = &win[at..at + RECORD_PREFIX_LEN];
        let hdr_bytes = prefix
            .first_chunk::<RECORD_HEADER_LEN>()
            .expect("prefix is 13 bytes");
        let hdr = RecordHeader::parse(hdr_bytes);
        hdr.check_len(left)
            .map_err(|reason| corrupt(path, base, pos, reason))?;
        let count = check_batch_prefix(&prefix[RECORD_HEADER_LEN..], hdr.len)
            .map_err(|reason| corrupt(path, base, pos, reason))?;
        out.offsets.push(offset_u32(path, base, pos)?);
        out.events += u64::from(count);
        last_len = hdr.record_len();
        pos += last_len;
    }
    out.len = pos;
    Ok(out)
}

/// Full scan of the last segment: every record's length, CRC and batch encoding is
/// verified. Returns the scan up to the first bad record and, if there is one, its
/// offset and what is wrong with it (the caller truncates there).
pub(crate) fn scan_full(
    file: &File,
    path: &Path,
    base: u64,
    file_len: u64,
) -> Result<(ScannedSegment, Option<(u64, String)>), EngineError> {
    const CHUNK: u64 = 4 << 20;
    let mut out = ScannedSegment::default();
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_start = 0u64;
    let mut pos = 0u64;
    let mut bad = None;
    while pos < file_len {
        let left = file_len - pos;
        if left < RECORD_HEADER_LEN as u64 {
            bad = Some((pos, format!("torn record header ({left} bytes)")));
            break;
        }
        let chunk_end = chunk_start + chunk.len() as u64;
        if pos < chunk_start || pos + RECORD_HEADER_LEN as u64 > chunk_end {
            let n = CHUNK.min(left) as usize;
            chunk.resize(n, 0);
            read_exact_at(file, &mut chunk, pos).map_err(|e| {
                EngineError::io(format!("reading {} at offset {pos}", path.display()), e)
            })?;
            chunk_start = pos;
        }
        let at = (pos - chunk_start) as usize;
        let hdr = RecordHeader::parse(
            chunk[at..]
                .first_chunk::<RECORD_HEADER_LEN>()
                .expect("checked above"),
        );
        if let Err(reason) = hdr.check_len(left) {
            bad = Some((pos, reason));
            break;
        }
        let rec_len = hdr.record_len();
        if pos + rec_len > chunk_start + chunk.len() as u64 {
            // Reload so the whole record is in the buffer.
            let n = CHUNK.max(rec_len).min(left) as usize;
            chunk.resize(n, 0);
            read_exact_at(file, &mut chunk, pos).map_err(|e| {
                EngineError::io(format!("reading {} at offset {pos}", path.display()), e)
            })?;
            chunk_start = pos;
        }
        let at = (pos - chunk_start) as usize;
        let payload = &chunk[at + RECORD_HEADER_LEN..at + rec_len as usize];
        match verify_payload(hdr, payload) {
            Ok(count) => {
                out.offsets.push(offset_u32(path, base, pos)?);
                out.events += u64::from(count);
                pos += rec_len;
            }
            Err(reason) => {
                bad = Some((pos, reason));
                break;
            }
        }
    }
    out.len = pos;
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        assert_eq!(segment_file_name(0), "00000000000000000000.wal");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.wal");
        for v in [0, 1, 4096, u64::MAX] {
            assert_eq!(parse_segment_name(&segment_file_name(v)), Some(v));
        }
        assert_eq!(parse_segment_name("0000000000000000000.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000000.log"), None);
        assert_eq!(parse_segment_name("99999999999999999999.wal"), None);
    }
}
