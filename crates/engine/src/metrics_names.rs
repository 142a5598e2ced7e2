//! Names of the metrics the engine emits (through the `metrics` crate facade; install
//! any recorder, e.g. the Prometheus exporter, to collect them).

/// Histogram, seconds: latency of one group commit (the `write` plus, in
/// [`crate::SyncMode::Group`], the `fdatasync`).
pub const INTAKE_COMMIT_SECONDS: &str = "flywheel_intake_commit_seconds";
/// Histogram: number of batches written by one group commit.
pub const INTAKE_GROUP_BATCHES: &str = "flywheel_intake_group_batches";
/// Gauge: batches handed to the writer but not yet picked up by a group commit.
pub const INTAKE_QUEUE_DEPTH: &str = "flywheel_intake_queue_depth";
/// Counter: bytes committed to the WAL (record headers included).
pub const INTAKE_BYTES_TOTAL: &str = "flywheel_intake_bytes_total";
/// Counter: events committed to the WAL.
pub const INTAKE_EVENTS_TOTAL: &str = "flywheel_intake_events_total";

/// Register units and help text for all engine metrics with the installed recorder.
/// Optional; call once after installing the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        INTAKE_COMMIT_SECONDS,
        Unit::Seconds,
        "Latency of one WAL group commit (write + fdatasync)"
    );
    describe_histogram!(
        INTAKE_GROUP_BATCHES,
        Unit::Count,
        "Batches written per WAL group commit"
    );
    describe_gauge!(
        INTAKE_QUEUE_DEPTH,
        Unit::Count,
        "Batches waiting for the WAL writer"
    );
    describe_counter!(
        INTAKE_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes committed to the WAL"
    );
    describe_counter!(
        INTAKE_EVENTS_TOTAL,
        Unit::Count,
        "Events committed to the WAL"
    );
}
