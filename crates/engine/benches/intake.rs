//! Append throughput of the intake WAL: 16 concurrent appenders, 100-event batches with
//! ~300-byte properties, in both sync modes.
//!
//! `cargo bench -p flywheel-engine --bench intake` (criterion), followed by a one-line
//! summary per mode measured over a fixed load. The WAL lives in a temp dir under
//! `$FLYWHEEL_BENCH_DIR` if set, else the system temp dir: put it on the disk you care
//! about (a tmpfs makes `SyncMode::Group` meaningless).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use flywheel_engine::{Event, Intake, IntakeConfig, SyncMode};

const TASKS: usize = 16;
const EVENTS_PER_BATCH: usize = 100;

fn batch(seed: u64) -> Vec<Event> {
    (0..EVENTS_PER_BATCH)
        .map(|i| {
            let i = i as u64 + seed * 1000;
            let properties = format!(
                concat!(
                    r#"{{"$current_url":"https://example.com/pricing?ref=campaign-{}","#,
                    r#""$browser":"Firefox","$os":"Linux","$device_type":"Desktop","#,
                    r#""$screen_width":1920,"$screen_height":1080,"plan":"growth","#,
                    r#""utm_source":"newsletter","utm_medium":"email","#,
                    r#""$lib":"flywheel-js","$lib_version":"1.42.0","seq":{:08}}}"#
                ),
                i % 97,
                i
            );
            Event {
                uuid: u128::from(i) * 0x9e37_79b9_7f4a_7c15,
                project_id: 1,
                timestamp_us: 1_700_000_000_000_000 + i as i64,
                received_us: 1_700_000_000_000_500 + i as i64,
                event: "$pageview".into(),
                distinct_id: format!("0190a8d2-7c3e-7b4a-9f1e-{:012x}", i % 5000),
                properties,
            }
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("FLYWHEEL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("temp dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// `TASKS` tasks each append `per_task` batches; returns the wall time.
fn load(
    rt: &tokio::runtime::Runtime,
    intake: &Intake,
    batches: &[Arc<Vec<Event>>],
    per_task: usize,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..TASKS)
            .map(|t| {
                let intake = intake.clone();
                let b = batches[t % batches.len()].clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        intake.append(&b).await.expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
        let elapsed = start.elapsed();
        // Keep disk usage bounded: converted-and-dropped is what production will do.
        intake
            .drop_segments_before(intake.committed_lsn())
            .expect("drop segments");
        elapsed
    })
}

fn open(mode: SyncMode, dir: &tempfile::TempDir) -> Intake {
    let mut cfg = IntakeConfig::new(dir.path());
    cfg.sync = mode;
    Intake::open(cfg).expect("open").0
}

fn modes() -> [(&'static str, SyncMode); 2] {
    [("group_fsync", SyncMode::Group), ("os", SyncMode::Os)]
}

fn bench_append(c: &mut Criterion, batches: &[Arc<Vec<Event>>]) {
    let rt = runtime();
    let mut g = c.benchmark_group("intake_append_16x100");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    const PER_TASK: usize = 20;
    g.throughput(Throughput::Elements(
        (TASKS * PER_TASK * EVENTS_PER_BATCH) as u64,
    ));
    for (name, mode) in modes() {
        let dir = bench_dir();
        let intake = open(mode, &dir);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| load(&rt, &intake, batches, PER_TASK))
                    .sum()
            })
        });
        rt.block_on(intake.shutdown()).expect("shutdown");
    }
    g.finish();
}

fn summary(batches: &[Arc<Vec<Event>>]) {
    let rt = runtime();
    let bytes_per_batch = flywheel_engine::encoded_len(&batches[0]) + 8;
    for (name, mode) in modes() {
        let dir = bench_dir();
        let intake = open(mode, &dir);
        load(&rt, &intake, batches, 10); // warm up
        let commits_before = intake.committed_lsn();
        let per_task = 200;
        let elapsed = load(&rt, &intake, batches, per_task);
        let batches_total = TASKS * per_task;
        let events = batches_total * EVENTS_PER_BATCH;
        let secs = elapsed.as_secs_f64();
        let mb = (intake.committed_lsn() - commits_before) as f64 / (1 << 20) as f64;
        println!(
            "intake summary [{name}]: {TASKS} appenders x {per_task} batches x {EVENTS_PER_BATCH} events \
             ({bytes_per_batch} B/batch): {:.0} events/s, {:.0} batches/s, {:.1} MiB/s, {:.1} ms",
            events as f64 / secs,
            batches_total as f64 / secs,
            mb / secs,
            secs * 1e3
        );
        rt.block_on(intake.shutdown()).expect("shutdown");
    }
}

fn main() {
    let batches: Vec<Arc<Vec<Event>>> = (0..TASKS as u64).map(|s| Arc::new(batch(s))).collect();
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c, &batches);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--test" || a == "--list") {
        summary(&batches);
    }
}
