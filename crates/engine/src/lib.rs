//! Flywheel's embedded event engine. This first part is the **durable intake log**: a
//! segmented write-ahead log (WAL) of event batches with group commit and crash
//! recovery. Columnar segments and query kernels will be built on top of it, reading
//! committed batches with [`WalReader`] and dropping converted WAL segments with
//! [`Intake::drop_segments_before`].
//!
//! ```
//! use std::ops::ControlFlow;
//! use flywheel_engine::{Event, Intake, IntakeConfig, SyncMode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), flywheel_engine::EngineError> {
//! let dir = tempfile::tempdir().unwrap();
//! let mut cfg = IntakeConfig::new(dir.path());
//! cfg.sync = SyncMode::Group; // the default: acknowledged = survives power loss
//! let (intake, report) = Intake::open(cfg)?;
//! assert_eq!(report.end_lsn, 0);
//!
//! let batch = vec![Event {
//!     uuid: 1,
//!     project_id: 7,
//!     timestamp_us: 1_700_000_000_000_000,
//!     received_us: 1_700_000_000_000_100,
//!     event: "$pageview".into(),
//!     distinct_id: "user-1".into(),
//!     properties: r#"{"path":"/pricing"}"#.into(),
//! }];
//! let lsn = intake.append(&batch).await?; // resolves once fdatasync'ed
//! assert_eq!(intake.committed_lsn(), lsn);
//!
//! // Stream committed batches from any batch boundary (0 = the beginning).
//! for item in intake.reader(0) {
//!     let (lsn_after, events) = item?;
//!     assert_eq!((lsn_after, events), (lsn, batch.clone()));
//! }
//!
//! // Newest-first scan without allocating per event.
//! let mut newest = None;
//! intake.scan_rev(|ev| {
//!     newest = Some(ev.distinct_id.to_owned());
//!     ControlFlow::Break(())
//! })?;
//! assert_eq!(newest.as_deref(), Some("user-1"));
//!
//! intake.shutdown().await?;
//!
//! // Reopening recovers the log.
//! let (intake, report) = Intake::open(IntakeConfig::new(dir.path()))?;
//! assert_eq!((report.batches, report.events, report.end_lsn), (1, 1, lsn));
//! intake.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! * [`columnar`]: columnar segments (Parquet, sorted by person and time, shredded properties) and the manifest
//!   that lists them.
//! * [`event`]: the [`Event`] model and its compact batch encoding (format described
//!   there), with an allocation-free decoder ([`BatchRef`], [`EventRef`]).
//! * [`intake`]: the WAL: on-disk format, group commit, durability of each
//!   [`SyncMode`], recovery rules.
//! * [`metrics_names`]: metric names emitted through the `metrics` facade.
//! * [`rewrite`]: rewriting sealed WAL segments in place (GDPR erasure, retention) without moving an LSN.
//! * [`table`]: every project's events in memory by UTC day (distinct id, time, event name), persons resolved at
//!   read time, sorted views for the kernels, sealing into segments.

pub mod columnar;
pub mod error;
pub mod event;
pub mod intake;
pub mod metrics_names;
mod reader;
pub mod rewrite;
mod segment;
pub mod sidecar;
pub mod table;

pub use error::EngineError;
pub use event::{
    decode_batch, encode_batch, encode_padded_batch, encoded_len, BatchIter, BatchRef,
    BatchRevIter, DecodeError, Event, EventRef,
};
pub use intake::{
    Intake, IntakeConfig, RecoveryReport, SegmentInfo, SyncMode, WalReader, MAX_RECORD_BYTES,
};
