//! The durable intake log: a segmented write-ahead log with group commit and
//! crash recovery.
//!
//! # On-disk layout
//!
//! The WAL directory holds segment files named by the LSN of their first byte,
//! zero-padded to 20 digits: `00000000000000000000.wal`, `00000000000067109012.wal`, …
//! A segment is a plain concatenation of records (no file header):
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 (IEEE, crc32fast) of the payload
//! payload one encoded batch (see crate::event: version byte, count, events)
//! ```
//!
//! The **LSN** of a byte is its global position in the log: segment base + offset in
//! the segment. Segments are contiguous: a segment's base equals the previous
//! segment's base + length. [`Intake::append`] returns the LSN just past the batch's
//! record, which is also where the next record starts, so any returned LSN can be
//! handed to [`Intake::reader`] to resume after that batch.
//!
//! The writer rotates to a new segment after a group commit leaves the current one at
//! or above `segment_bytes` (a segment can therefore exceed `segment_bytes` by at most
//! one group). Before rotating it makes the old segment durable (`fdatasync`, in both
//! sync modes), creates the new file and fsyncs the directory. Sealed segments are
//! immutable; once their contents have been converted elsewhere they can be removed
//! with [`Intake::drop_segments_before`].
//!
//! # Durability
//!
//! * [`SyncMode::Group`] (default): the writer thread collects every pending batch
//!   (up to `max_group_bytes`), writes them with one `write`, calls `fdatasync`, and
//!   only then resolves the `append` futures. An acknowledged batch survives process
//!   crashes, `kill -9`, kernel panics and power loss (assuming the storage honours
//!   flushes).
//! * [`SyncMode::Os`]: the same group write, without the `fdatasync`. An acknowledged
//!   batch is in the OS page cache: it survives the process crashing or being killed,
//!   but **not** a kernel crash or power loss (the last seconds of acknowledged data
//!   can be lost). Segments are still synced when they are sealed and on shutdown.
//!
//! If a `write` or `fdatasync` fails, the affected appends fail (they are never
//! acknowledged) and the writer is poisoned: every later append fails with
//! [`EngineError::Poisoned`], because after a failed fsync the kernel may have
//! dropped dirty pages and the file contents are unknown. Reopen the intake to
//! recover from what is actually on disk. Note that a batch whose append failed may
//! still turn up after recovery (its bytes may have reached the disk): failed means
//! "not known to be durable", not "known to be absent".
//!
//! # Recovery
//!
//! [`Intake::open`] lists the segments and checks that they are contiguous, then:
//!
//! * **sealed segments** (all but the last) are scanned by following the length chain
//!   and reading only the 8-byte record header and 5-byte batch header of each record
//!   (no CRC). This keeps start-up O(number of records) instead of O(bytes): a
//!   multi-GB WAL of 100-event batches opens in milliseconds. Any structural problem
//!   there (bad length, record running past the end, bad batch header, gap between
//!   segments) is corruption of committed data and fails the open with
//!   [`EngineError::Corrupt`] naming the file and offset; nothing is dropped.
//!   CRCs of sealed segments are verified later, whenever the data is read
//!   ([`WalReader`], [`Intake::scan_rev`]), which also report [`EngineError::Corrupt`].
//! * **the last segment** is fully verified: length, CRC and a complete decode of
//!   every batch. At the first bad record (a torn or partial write from a crash, or
//!   garbage) the file is truncated there, the truncation is fsynced, logged at `warn`
//!   and reported in [`RecoveryReport::truncated_bytes`]. A crash can only tear the
//!   last group written, which was never acknowledged in [`SyncMode::Group`].
//!
//! The recovered record offsets form an in-memory index (4 bytes per batch), used to
//! validate reader positions and to iterate batches newest-first in
//! [`Intake::scan_rev`].
//!
//! # Single writer
//!
//! Opening a directory that is already open — in this process or in another one —
//! fails with [`EngineError::AlreadyOpen`]: the directory's `LOCK` file holds an OS
//! advisory lock for as long as the intake is open (released by the OS if the process
//! dies).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::EngineError;
use crate::event::{Event, EventRef};
use crate::metrics_names as names;
use crate::reader;
use crate::segment::{self, segment_file_name, sync_dir};

pub use crate::reader::WalReader;
pub use crate::segment::MAX_RECORD_BYTES;

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default cap on the bytes written by one group commit: 8 MiB.
pub const DEFAULT_MAX_GROUP_BYTES: usize = 8 << 20;
/// Default bound on batches queued for the writer.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

const MIN_SEGMENT_BYTES: u64 = 1024;
/// Record offsets are kept as u32; a segment is at most this + one group.
const MAX_SEGMENT_BYTES: u64 = 2 << 30;
const MAX_GROUP_BYTES: usize = 512 << 20;

/// When an append is acknowledged. See the [module docs](self#durability).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` after each group commit: acknowledged batches survive power loss.
    #[default]
    Group,
    /// `write()` only: acknowledged batches survive a process crash or `kill -9`, not
    /// a kernel crash or power loss.
    Os,
}

/// Configuration of an [`Intake`].
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// WAL directory (created if missing).
    pub dir: PathBuf,
    /// Rotate to a new segment once the current one reaches this size (1 KiB..=2 GiB).
    pub segment_bytes: u64,
    /// Durability of acknowledged appends.
    pub sync: SyncMode,
    /// Cap on the bytes written by one group commit. A single batch larger than this
    /// is written alone.
    pub max_group_bytes: usize,
    /// Batches that may wait for the writer; further appends wait (backpressure).
    /// Memory held by the queue is bounded by this × the batch size.
    pub queue_capacity: usize,
}

impl IntakeConfig {
    /// Defaults (64 MiB segments, [`SyncMode::Group`], 8 MiB groups, 1024 queued
    /// batches) for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        IntakeConfig {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync: SyncMode::Group,
            max_group_bytes: DEFAULT_MAX_GROUP_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(EngineError::Config(format!(
                "segment_bytes must be within {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            )));
        }
        if self.max_group_bytes == 0 || self.max_group_bytes > MAX_GROUP_BYTES {
            return Err(EngineError::Config(format!(
                "max_group_bytes must be within 1..={MAX_GROUP_BYTES}, got {}",
                self.max_group_bytes
            )));
        }
        if self.queue_capacity == 0 {
            return Err(EngineError::Config("queue_capacity must be > 0".into()));
        }
        Ok(())
    }
}

/// What [`Intake::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in the WAL.
    pub segments: usize,
    /// Committed batches (records).
    pub batches: u64,
    /// Committed events (for sealed segments, as declared by the batch headers).
    pub events: u64,
    /// Bytes cut from the end of the last segment (torn or corrupt tail).
    pub truncated_bytes: u64,
    /// The LSN where the next append starts (= committed LSN).
    pub end_lsn: u64,
}

/// Description of one segment, from [`Intake::segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// LSN of the segment's first byte (also its file name).
    pub base_lsn: u64,
    /// LSN just past its last committed record.
    pub end_lsn: u64,
    /// File path.
    pub path: PathBuf,
    /// Committed batches in it.
    pub batches: usize,
    /// Committed events in it.
    pub events: u64,
    /// `false` for the segment currently written to.
    pub sealed: bool,
}

// ---------------------------------------------------------------------------------
// Shared state

pub(crate) struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    /// Start offset (inside the file) of every committed record.
    pub offsets: Vec<u32>,
    /// LSN just past the last committed record.
    pub end: u64,
    pub events: u64,
    /// The projects and time spans of a sealed segment's events, learned by the first rewrite pass that read it
    /// (see [`Intake::rewrite`]): later passes skip segments they cannot change without reading them.
    pub summary: OnceLock<Arc<crate::rewrite::SegmentSummary>>,
}

impl SegmentMeta {
    fn info(&self, sealed: bool) -> SegmentInfo {
        SegmentInfo {
            base_lsn: self.base,
            end_lsn: self.end,
            path: self.path.clone(),
            batches: self.offsets.len(),
            events: self.events,
            sealed,
        }
    }
}

pub(crate) struct Segments {
    /// Oldest first; immutable.
    pub sealed: Vec<Arc<SegmentMeta>>,
    pub active: SegmentMeta,
}

impl Segments {
    /// The segment holding `lsn` (`lsn` may equal the active segment's end), with
    /// whether it is sealed; `None` if `lsn` is before the oldest retained segment.
    pub fn find(&self, lsn: u64) -> Option<(&SegmentMeta, bool)> {
        if lsn >= self.active.base {
            return Some((&self.active, false));
        }
        let idx = self.sealed.partition_point(|s| s.base <= lsn);
        if idx == 0 {
            None
        } else {
            Some((&self.sealed[idx - 1], true))
        }
    }

    pub fn oldest_lsn(&self) -> u64 {
        self.sealed.first().map_or(self.active.base, |s| s.base)
    }
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub committed: AtomicU64,
    watch_tx: watch::Sender<u64>,
    pub segments: RwLock<Segments>,
    poison: OnceLock<String>,
    closed: AtomicBool,
    /// Set to `true` once the writer thread has finished (file synced and closed).
    stopped: watch::Sender<bool>,
    queued: AtomicUsize,
    /// Serializes rewrites of sealed segments ([`Intake::rewrite`]) and their removal.
    pub rewrite_lock: Mutex<()>,
    /// Test-only fault injection: 1 = fail the next write, 2 = fail the next fsync.
    #[cfg(test)]
    pub fault: std::sync::atomic::AtomicU8,
}

impl Shared {
    pub fn read_segments(&self) -> RwLockReadGuard<'_, Segments> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_segments(&self) -> RwLockWriteGuard<'_, Segments> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    fn poisoned(&self) -> Option<EngineError> {
        self.poison.get().map(|m| EngineError::Poisoned(m.clone()))
    }

    /// Error for an append/shutdown that found the writer gone.
    fn stopped_error(&self) -> EngineError {
        self.poisoned().unwrap_or(EngineError::Closed)
    }

    #[cfg(test)]
    fn take_fault(&self, kind: u8) -> bool {
        self.fault
            .compare_exchange(kind, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn set_queued(&self, delta: isize) {
        let now = if delta >= 0 {
            self.queued.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
        } else {
            let d = delta.unsigned_abs();
            self.queued.fetch_sub(d, Ordering::Relaxed) - d
        };
        metrics::gauge!(names::INTAKE_QUEUE_DEPTH).set(now as f64);
    }
}

/// Directories opened by an [`Intake`] in this process.
static OPEN_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Exclusive use of a WAL directory: a process-local registry (two opens in one process) plus an OS advisory lock
/// on `LOCK` (two processes). The OS releases the lock when the process dies, so a `kill -9` never leaves it stale.
struct DirGuard(PathBuf, #[allow(dead_code)] File);

impl DirGuard {
    /// How long a lock held by another process is waited for before the directory counts as in use. A child
    /// process forked elsewhere in this process holds a copy of the lock's descriptor until it execs, so a lock
    /// just released can look held for a moment.
    const CONTENDED_WAIT: Duration = Duration::from_millis(1500);

    fn acquire(dir: &Path) -> Result<DirGuard, EngineError> {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(PoisonError::into_inner);
        if open.iter().any(|d| d == dir) {
            return Err(EngineError::AlreadyOpen(dir.to_path_buf()));
        }
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| EngineError::io(format!("opening {}", lock_path.display()), e))?;
        let deadline = Instant::now() + Self::CONTENDED_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(EngineError::AlreadyOpen(dir.to_path_buf()))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(EngineError::io(
                        format!("locking {}", lock_path.display()),
                        e,
                    ))
                }
            }
        }
        open.push(dir.to_path_buf());
        Ok(DirGuard(dir.to_path_buf(), lock))
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|d| d != &self.0);
    }
}

// ---------------------------------------------------------------------------------
// The handle

/// Handle to an open intake log. Cheap to clone (an `Arc` inside); `Send + Sync`.
///
/// Dropping the last clone stops the writer thread after it has committed (and
/// fsynced) everything already queued; prefer [`Intake::shutdown`], which reports
/// errors.
#[derive(Clone)]
pub struct Intake {
    h: Arc<Handle>,
}

struct Handle {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the channel makes the writer commit what is queued and exit.
        drop(self.tx.take());
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("dir", &self.h.shared.dir)
            .field("committed_lsn", &self.committed_lsn())
            .finish()
    }
}

struct Pending {
    record: Vec<u8>,
    events: u32,
    done: oneshot::Sender<Result<u64, EngineError>>,
}

enum Msg {
    Append(Pending),
    Shutdown(oneshot::Sender<Result<(), EngineError>>),
    /// Seal the active segment (when it holds anything) after committing what is queued before this message;
    /// answered with the committed LSN, which every sealed segment then ends at or before.
    Rotate(oneshot::Sender<Result<u64, EngineError>>),
}

impl Intake {
    /// Open (or create) the WAL in `cfg.dir`, recover it (see the
    /// [module docs](self#recovery)) and start the writer thread.
    pub fn open(cfg: IntakeConfig) -> Result<(Intake, RecoveryReport), EngineError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| {
            EngineError::io(format!("creating WAL directory {}", cfg.dir.display()), e)
        })?;
        let dir = cfg.dir.canonicalize().map_err(|e| {
            EngineError::io(format!("resolving WAL directory {}", cfg.dir.display()), e)
        })?;
        let guard = DirGuard::acquire(&dir)?;
        let started = Instant::now();

        crate::rewrite::remove_leftovers(&dir);
        let mut files = segment::list_segments(&dir)?;
        if files.is_empty() {
            let path = dir.join(segment_file_name(0));
            create_segment_file(&path)?;
            sync_dir(&dir)?;
            files.push((0, path));
        }

        let mut report = RecoveryReport {
            segments: files.len(),
            ..RecoveryReport::default()
        };
        let mut sealed = Vec::with_capacity(files.len() - 1);
        let (last_base, last_path) = files.pop().expect("at least one segment");
        let mut expected_base: Option<u64> = None;
        for (base, path) in files {
            check_contiguous(&path, base, expected_base)?;
            let file = File::open(&path)
                .map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
            let len = file_len(&file, &path)?;
            let scan = segment::scan_headers(&file, &path, base, len)?;
            report.batches += scan.offsets.len() as u64;
            report.events += scan.events;
            expected_base = Some(base + scan.len);
            sealed.push(Arc::new(SegmentMeta {
                base,
                path,
                offsets: scan.offsets,
                end: base + scan.len,
                events: scan.events,
                summary: OnceLock::new(),
            }));
        }

        check_contiguous(&last_path, last_base, expected_base)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last_path)
            .map_err(|e| EngineError::io(format!("opening {}", last_path.display()), e))?;
        let len = file_len(&file, &last_path)?;
        let (scan, bad) = segment::scan_full(&file, &last_path, last_base, len)?;
        if let Some((offset, reason)) = bad {
            let cut = len - offset;
            tracing::warn!(
                file = %last_path.display(),
                offset,
                lsn = last_base + offset,
                truncated_bytes = cut,
                %reason,
                "WAL recovery: truncating torn/corrupt tail of the last segment"
            );
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| EngineError::io(format!("truncating {}", last_path.display()), e))?;
            report.truncated_bytes = cut;
        }
        report.batches += scan.offsets.len() as u64;
        report.events += scan.events;
        let end_lsn = last_base + scan.len;
        report.end_lsn = end_lsn;

        let (watch_tx, _) = watch::channel(end_lsn);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            committed: AtomicU64::new(end_lsn),
            watch_tx,
            segments: RwLock::new(Segments {
                sealed,
                active: SegmentMeta {
                    base: last_base,
                    path: last_path,
                    offsets: scan.offsets,
                    end: end_lsn,
                    events: scan.events,
                    summary: OnceLock::new(),
                },
            }),
            poison: OnceLock::new(),
            closed: AtomicBool::new(false),
            stopped: watch::Sender::new(false),
            queued: AtomicUsize::new(0),
            rewrite_lock: Mutex::new(()),
            #[cfg(test)]
            fault: std::sync::atomic::AtomicU8::new(0),
        });

        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let writer = Writer {
            shared: shared.clone(),
            rx,
            file: Some(file),
            base: last_base,
            len: scan.len,
            sync: cfg.sync,
            segment_bytes: cfg.segment_bytes,
            max_group_bytes: cfg.max_group_bytes,
            buf: Vec::new(),
            carry: None,
            shutdown_waiters: Vec::new(),
            guard: Some(guard),
        };
        let thread = std::thread::Builder::new()
            .name("flywheel-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| EngineError::io("spawning the WAL writer thread", e))?;

        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            batches = report.batches,
            events = report.events,
            truncated_bytes = report.truncated_bytes,
            end_lsn,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "WAL opened"
        );
        let intake = Intake {
            h: Arc::new(Handle {
                tx: Some(tx),
                thread: Mutex::new(Some(thread)),
                shared,
            }),
        };
        Ok((intake, report))
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.h.shared
    }

    /// Append one batch. The batch is encoded (and checksummed) on the calling task,
    /// then handed to the writer thread; the future resolves once the batch is durable
    /// per the configured [`SyncMode`], with the LSN just past the batch.
    ///
    /// Waits (asynchronously) when `queue_capacity` batches are already queued. An
    /// empty slice writes nothing and returns the current committed LSN. If the future
    /// is dropped after the batch was queued, the batch is still written.
    pub async fn append(&self, events: &[Event]) -> Result<u64, EngineError> {
        let shared = self.shared();
        if let Some(e) = shared.poisoned() {
            return Err(e);
        }
        if shared.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        if events.is_empty() {
            return Ok(shared.committed());
        }
        let mut record = Vec::new();
        segment::encode_record(events, &mut record)?;
        let (done, wait) = oneshot::channel();
        let msg = Msg::Append(Pending {
            record,
            events: events.len() as u32,
            done,
        });
        let tx = self.h.tx.as_ref().ok_or(EngineError::Closed)?;
        shared.set_queued(1);
        if tx.send(msg).await.is_err() {
            shared.set_queued(-1);
            return Err(shared.stopped_error());
        }
        match wait.await {
            Ok(res) => res,
            Err(_) => Err(shared.stopped_error()),
        }
    }

    /// False once the writer has failed (appends are refused until the log is reopened).
    pub fn is_healthy(&self) -> bool {
        self.shared().poisoned().is_none()
    }

    /// LSN up to which everything is committed (durable per the [`SyncMode`]).
    pub fn committed_lsn(&self) -> u64 {
        self.shared().committed()
    }

    /// Receiver of committed-LSN updates (one per group commit).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared().watch_tx.subscribe()
    }

    /// Reader of committed batches from `from_lsn` (a batch boundary: 0, a segment
    /// base, or an LSN returned by [`Intake::append`]) up to the committed LSN now
    /// ([`WalReader::refresh`] extends it). It reads the segment files, so positions
    /// remembered before a restart stay valid.
    pub fn reader(&self, from_lsn: u64) -> WalReader {
        WalReader::new(self.shared().clone(), from_lsn, self.committed_lsn())
    }

    /// Visit committed events newest first (batches from newest to oldest, events
    /// inside a batch from last to first) until `f` returns `Break`. Only data
    /// committed when the scan starts is visited.
    ///
    /// This is blocking file I/O: call it from `spawn_blocking` in async code. Reads
    /// are positional and coalesced (≈1 MiB per read); CRCs are verified.
    pub fn scan_rev<F>(&self, f: F) -> Result<(), EngineError>
    where
        F: FnMut(EventRef<'_>) -> ControlFlow<()>,
    {
        reader::scan_rev(self.shared(), f)
    }

    /// The retained segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segs = self.shared().read_segments();
        segs.sealed
            .iter()
            .map(|s| s.info(true))
            .chain(std::iter::once(segs.active.info(false)))
            .collect()
    }

    /// LSN of the oldest retained byte (the base of the oldest segment).
    pub fn oldest_lsn(&self) -> u64 {
        self.shared().read_segments().oldest_lsn()
    }

    /// The WAL directory (canonicalized).
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// Delete sealed segments that lie entirely before `lsn` (their end LSN ≤ `lsn`),
    /// e.g. once their contents have been converted to columnar segments. The active
    /// segment is never deleted. Returns how many files were removed.
    ///
    /// Readers already inside a deleted segment keep working (the open file stays
    /// readable on Unix); readers that reach a deleted segment get an error.
    pub fn drop_segments_before(&self, lsn: u64) -> Result<usize, EngineError> {
        let shared = self.shared();
        let _rewrites = shared
            .rewrite_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let removed: Vec<Arc<SegmentMeta>> = {
            let mut segs = shared.write_segments();
            let n = segs.sealed.partition_point(|s| s.end <= lsn);
            segs.sealed.drain(..n).collect()
        };
        for seg in &removed {
            std::fs::remove_file(&seg.path)
                .map_err(|e| EngineError::io(format!("removing {}", seg.path.display()), e))?;
        }
        if !removed.is_empty() {
            sync_dir(&shared.dir)?;
        }
        Ok(removed.len())
    }

    /// Seals the active segment (when it holds anything): every batch committed before the call is then in a
    /// sealed segment, which [`Intake::rewrite`] can rewrite. Returns the committed LSN at that point (every
    /// sealed segment ends at or before it). Appends queued before the call are committed first.
    pub async fn seal_active(&self) -> Result<u64, EngineError> {
        let shared = self.shared();
        if let Some(e) = shared.poisoned() {
            return Err(e);
        }
        if shared.closed.load(Ordering::Acquire) {
            return Err(EngineError::Closed);
        }
        let tx = self.h.tx.as_ref().ok_or(EngineError::Closed)?;
        let (done, wait) = oneshot::channel();
        if tx.send(Msg::Rotate(done)).await.is_err() {
            return Err(shared.stopped_error());
        }
        wait.await.unwrap_or_else(|_| Err(shared.stopped_error()))
    }

    /// Rewrites the sealed segments that end at or before `up_to` (call [`Intake::seal_active`] first to include
    /// everything committed): `verdict` decides for each event whether it stays, goes, or stays with other
    /// properties (no longer than before). Every changed batch keeps its exact length and position — its
    /// remaining events are written as a zero-padded batch (format version 2, see [`crate::event`]) — so every
    /// LSN, batch boundary and consumer checkpoint stays valid; a changed file is written whole to a temporary
    /// name, synced and renamed over the old one (a crash leaves the old or the new file, never a mix). Segments
    /// for which `skip` says nothing can change (from what an earlier pass learned of them) are not read.
    ///
    /// Blocking file I/O (run it on a blocking thread); one rewrite at a time. Readers that had a segment open
    /// keep reading its old contents until they move to the next segment.
    pub fn rewrite(
        &self,
        up_to: u64,
        skip: impl Fn(&crate::rewrite::SegmentSummary) -> bool,
        verdict: impl FnMut(&EventRef<'_>) -> crate::rewrite::Verdict,
    ) -> Result<crate::rewrite::RewriteStats, EngineError> {
        crate::rewrite::rewrite(self.shared(), up_to, skip, verdict)
    }

    /// Stop accepting appends, commit everything already queued, fsync, close the
    /// segment and stop the writer thread. Later appends fail with
    /// [`EngineError::Closed`]. Returns the poison error if the writer had failed.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let shared = self.shared();
        shared.closed.store(true, Ordering::Release);
        let Some(tx) = self.h.tx.as_ref() else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        if tx.send(Msg::Shutdown(done)).await.is_ok() {
            if let Ok(res) = wait.await {
                return res;
            }
        }
        // Another shutdown got there first, or the writer stopped on its own: wait
        // until it has really finished.
        let mut stopped = shared.stopped.subscribe();
        let _ = stopped.wait_for(|s| *s).await;
        shared.poisoned().map_or(Ok(()), Err)
    }
}

fn create_segment_file(path: &Path) -> Result<File, EngineError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path)
        .map_err(|e| EngineError::io(format!("creating segment {}", path.display()), e))
}

fn file_len(file: &File, path: &Path) -> Result<u64, EngineError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| EngineError::io(format!("stat {}", path.display()), e))
}

fn check_contiguous(path: &Path, base: u64, expected: Option<u64>) -> Result<(), EngineError> {
    match expected {
        Some(exp) if exp != base => Err(EngineError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            lsn: base,
            reason: format!(
                "segment chain is broken: previous segment ends at lsn {exp}, this one starts at {base}"
            ),
        }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// The writer thread

struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    file: Option<File>,
    /// Base LSN and committed length of the active segment.
    base: u64,
    len: u64,
    sync: SyncMode,
    segment_bytes: u64,
    max_group_bytes: usize,
    /// Reused group buffer.
    buf: Vec<u8>,
    /// An append that did not fit in the previous group.
    carry: Option<Pending>,
    shutdown_waiters: Vec<oneshot::Sender<Result<(), EngineError>>>,
    guard: Option<DirGuard>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Runs before the receiver is dropped, so appends that lose their reply see
        // the poison instead of a plain "closed".
        if std::thread::panicking() {
            self.poison("the WAL writer thread panicked".into());
        }
        self.shared.stopped.send_replace(true);
    }
}

impl Writer {
    fn recv(&mut self, block: bool) -> Option<Msg> {
        let msg = if block {
            self.rx.blocking_recv()
        } else {
            self.rx.try_recv().ok()
        };
        if let Some(Msg::Append(_)) = msg {
            self.shared.set_queued(-1);
        }
        msg
    }

    fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(p) => Msg::Append(p),
                None => {
                    // Block for work, unless shutting down: then drain what is left.
                    let block = self.shutdown_waiters.is_empty();
                    match self.recv(block) {
                        Some(m) => m,
                        None => break,
                    }
                }
            };
            let mut group: Vec<Pending> = Vec::new();
            let mut bytes = 0usize;
            let mut next = Some(first);
            let mut rotate = None;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(p) => {
                        if !group.is_empty() && bytes + p.record.len() > self.max_group_bytes {
                            self.carry = Some(p);
                            break;
                        }
                        bytes += p.record.len();
                        group.push(p);
                    }
                    Msg::Shutdown(done) => {
                        // Stop new sends; everything already queued is still committed.
                        self.rx.close();
                        self.shutdown_waiters.push(done);
                    }
                    Msg::Rotate(done) => {
                        // Commit what came before, then seal.
                        rotate = Some(done);
                        break;
                    }
                }
                next = self.recv(false);
            }
            if !group.is_empty() && !self.commit(group) {
                if let Some(done) = rotate {
                    let _ = done.send(Err(self.shared.stopped_error()));
                }
                break;
            }
            if let Some(done) = rotate {
                let end = self.base + self.len;
                let sealed = if self.len == 0 {
                    Ok(end)
                } else {
                    self.rotate().map(|()| end)
                };
                match sealed {
                    Ok(end) => {
                        let _ = done.send(Ok(end));
                    }
                    Err(e) => {
                        self.poison(format!("segment rotation at lsn {end} failed: {e}"));
                        let _ = done.send(Err(e));
                        break;
                    }
                }
            }
        }
        self.finish();
    }

    fn poison(&self, what: String) {
        tracing::error!(error = %what, "WAL writer poisoned; appends will fail until reopened");
        let _ = self.shared.poison.set(what);
    }

    fn write_group(&mut self, group: &[Pending]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("segment file is closed"))?;
        #[cfg(test)]
        if self.shared.take_fault(1) {
            return Err(io::Error::other("injected write failure"));
        }
        if let [one] = group {
            file.write_all(&one.record)?;
        } else {
            self.buf.clear();
            for p in group {
                self.buf.extend_from_slice(&p.record);
            }
            file.write_all(&self.buf)?;
            if self.buf.capacity() > 2 * self.max_group_bytes.max(1 << 20) {
                self.buf = Vec::new();
            }
        }
        if self.sync == SyncMode::Group {
            #[cfg(test)]
            if self.shared.take_fault(2) {
                return Err(io::Error::other("injected fsync failure"));
            }
            file.sync_data()?;
        }
        Ok(())
    }

    /// Write and (per sync mode) fsync one group, publish the new committed LSN and
    /// acknowledge. Returns `false` if the writer is now poisoned.
    fn commit(&mut self, group: Vec<Pending>) -> bool {
        let started = Instant::now();
        if let Err(e) = self.write_group(&group) {
            let path = self.shared.read_segments().active.path.clone();
            let what = format!(
                "group commit of {} batches to {} at lsn {} failed: {e}",
                group.len(),
                path.display(),
                self.base + self.len
            );
            self.poison(what.clone());
            for p in group {
                let _ = p.done.send(Err(EngineError::io(
                    what.clone(),
                    io::Error::new(e.kind(), e.to_string()),
                )));
            }
            return false;
        }
        let elapsed = started.elapsed();

        let mut pos = self.len;
        let mut events = 0u64;
        let mut offsets = Vec::with_capacity(group.len());
        for p in &group {
            offsets.push(pos as u32);
            pos += p.record.len() as u64;
            events += u64::from(p.events);
        }
        let bytes = pos - self.len;
        let first_lsn = self.base + self.len;
        self.len = pos;
        let end = self.base + pos;
        {
            let mut segs = self.shared.write_segments();
            segs.active.offsets.extend_from_slice(&offsets);
            segs.active.end = end;
            segs.active.events += events;
        }
        self.shared.committed.store(end, Ordering::Release);
        self.shared.watch_tx.send_replace(end);

        metrics::histogram!(names::INTAKE_COMMIT_SECONDS).record(elapsed.as_secs_f64());
        metrics::histogram!(names::INTAKE_GROUP_BATCHES).record(group.len() as f64);
        metrics::counter!(names::INTAKE_BYTES_TOTAL).increment(bytes);
        metrics::counter!(names::INTAKE_EVENTS_TOTAL).increment(events);

        let mut lsn = first_lsn;
        for p in group {
            lsn += p.record.len() as u64;
            let _ = p.done.send(Ok(lsn));
        }

        if self.len >= self.segment_bytes {
            if let Err(e) = self.rotate() {
                self.poison(format!("segment rotation at lsn {end} failed: {e}"));
                return false;
            }
        }
        true
    }

    fn rotate(&mut self) -> Result<(), EngineError> {
        let old_path = self.shared.read_segments().active.path.clone();
        if let Some(file) = &self.file {
            // In Group mode the last commit already synced; in Os mode seal durably so
            // that only the last segment can ever have a torn tail.
            if self.sync == SyncMode::Os {
                file.sync_data()
                    .map_err(|e| EngineError::io(format!("syncing {}", old_path.display()), e))?;
            }
        }
        let new_base = self.base + self.len;
        let path = self.shared.dir.join(segment_file_name(new_base));
        let file = create_segment_file(&path)?;
        sync_dir(&self.shared.dir)?;
        {
            let mut segs = self.shared.write_segments();
            let old = std::mem::replace(
                &mut segs.active,
                SegmentMeta {
                    base: new_base,
                    path: path.clone(),
                    offsets: Vec::new(),
                    end: new_base,
                    events: 0,
                    summary: OnceLock::new(),
                },
            );
            segs.sealed.push(Arc::new(old));
        }
        self.file = Some(file);
        self.base = new_base;
        self.len = 0;
        tracing::debug!(segment = %path.display(), "WAL rotated to a new segment");
        Ok(())
    }

    /// Final sync and close, then answer everything still waiting.
    fn finish(mut self) {
        self.rx.close();
        let mut leftovers: Vec<Pending> = self.carry.take().into_iter().collect();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Append(p) => {
                    self.shared.set_queued(-1);
                    leftovers.push(p);
                }
                Msg::Shutdown(done) => self.shutdown_waiters.push(done),
                Msg::Rotate(done) => {
                    let _ = done.send(Err(EngineError::Closed));
                }
            }
        }
        let mut result: Result<(), String> = Ok(());
        if let Some(file) = self.file.take() {
            if self.shared.poison.get().is_none() {
                if let Err(e) = file.sync_data() {
                    let what = format!("final fsync of the WAL failed: {e}");
                    self.poison(what.clone());
                    result = Err(what);
                }
            }
        }
        // Release the directory before anyone is told the shutdown finished.
        drop(self.guard.take());
        self.shared.stopped.send_replace(true);
        let stopped = || self.shared.stopped_error();
        for p in leftovers {
            let _ = p.done.send(Err(stopped()));
        }
        for w in self.shutdown_waiters.drain(..) {
            let res = match (&result, self.shared.poisoned()) {
                (_, Some(e)) => Err(e),
                (Err(m), None) => Err(EngineError::Poisoned(m.clone())),
                (Ok(()), None) => Ok(()),
            };
            let _ = w.send(res);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize, tag: &str) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                uuid: i as u128,
                project_id: 1,
                timestamp_us: i as i64,
                received_us: i as i64,
                event: "e".into(),
                distinct_id: tag.into(),
                properties: "{}".into(),
            })
            .collect()
    }

    async fn poison_on(fault: u8) {
        let dir = tempfile::tempdir().unwrap();
        let (intake, _) = Intake::open(IntakeConfig::new(dir.path())).unwrap();
        let lsn1 = intake.append(&events(3, "ok")).await.unwrap();
        intake.shared().fault.store(fault, Ordering::SeqCst);
        let err = intake.append(&events(2, "bad")).await.unwrap_err();
        assert!(matches!(err, EngineError::Io { .. }), "{err}");
        assert_eq!(
            intake.committed_lsn(),
            lsn1,
            "failed group must not advance"
        );
        let err = intake.append(&events(1, "after")).await.unwrap_err();
        assert!(matches!(err, EngineError::Poisoned(_)), "{err}");
        assert!(matches!(
            intake.shutdown().await,
            Err(EngineError::Poisoned(_))
        ));
        drop(intake);
        // Reopen recovers what is on disk; only the acknowledged batch is guaranteed.
        let (intake, report) = Intake::open(IntakeConfig::new(dir.path())).unwrap();
        assert!(report.end_lsn >= lsn1);
        let first = intake.reader(0).next().unwrap().unwrap();
        assert_eq!(first.0, lsn1);
        assert_eq!(first.1, events(3, "ok"));
        intake.append(&events(1, "again")).await.unwrap();
        intake.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn write_failure_poisons() {
        poison_on(1).await;
    }

    #[tokio::test]
    async fn fsync_failure_poisons_and_never_acks() {
        poison_on(2).await;
    }

    #[tokio::test]
    async fn double_open_in_process_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = Intake::open(IntakeConfig::new(dir.path())).unwrap();
        assert!(matches!(
            Intake::open(IntakeConfig::new(dir.path())),
            Err(EngineError::AlreadyOpen(_))
        ));
        a.shutdown().await.unwrap();
        let (b, _) = Intake::open(IntakeConfig::new(dir.path())).unwrap();
        drop(b);
        let (_c, _) = Intake::open(IntakeConfig::new(dir.path())).unwrap();
    }

    #[test]
    fn handles_are_send_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        fn check_send<T: Send>() {}
        fn check_send_val<T: Send>(_: T) {}
        check::<Intake>();
        check_send::<WalReader>();
        // The futures can be spawned on a multi-threaded runtime.
        let _ = |i: &Intake| check_send_val(i.append(&[]));
        let _ = |i: &Intake| check_send_val(i.shutdown());
    }

    #[test]
    fn config_is_validated() {
        let mut cfg = IntakeConfig::new("/nonexistent-flywheel");
        cfg.segment_bytes = 10;
        assert!(matches!(Intake::open(cfg), Err(EngineError::Config(_))));
    }
}
