//! `kill -9` durability: a child process (this test binary, re-executed with an env
//! var) appends from several tasks and prints every acknowledged batch; the parent
//! SIGKILLs it mid-load, reopens the WAL and checks that every acknowledged batch is
//! there, exactly once and in order per task.
//!
//! This proves crash consistency against process death only. Power loss (which
//! `SyncMode::Group` also claims to survive, via fdatasync) cannot be simulated here.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flywheel_engine::{Intake, SyncMode};

const CHILD_DIR: &str = "FLYWHEEL_KILL9_CHILD_DIR";
const CHILD_MODE: &str = "FLYWHEEL_KILL9_CHILD_MODE";
const TASKS: u32 = 8;

/// Child side; a no-op unless started by [`run_kill9`].
#[test]
fn kill9_child_helper() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let sync = match std::env::var(CHILD_MODE).as_deref() {
        Ok("os") => SyncMode::Os,
        _ => SyncMode::Group,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async move {
        let (intake, _) = Intake::open(small_cfg(dir.as_ref(), 256 << 10, sync)).unwrap();
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let intake = intake.clone();
                tokio::spawn(async move {
                    for seq in 0.. {
                        let lsn = intake
                            .append(&batch(task, seq, 1 + seq % 7, 200))
                            .await
                            .unwrap();
                        // Bypass the test harness' output capture; one write per line.
                        let line = format!("ACK {task} {seq} {lsn}\n");
                        let mut out = std::io::stdout().lock();
                        out.write_all(line.as_bytes()).unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
}

fn run_kill9(mode: &str, sync: SyncMode) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "kill9_child_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_MODE, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked: Vec<(u32, u32, u64)> = Vec::new();
    let mut line = String::new();
    let started = Instant::now();
    let target = 1500;
    let mut killed = false;
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break; // EOF: child is gone
        }
        // A line cut by the kill has no newline: it was not fully reported, skip it.
        if let Some(rest) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) {
            let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acked.push((v[0] as u32, v[1] as u32, v[2]));
        }
        if !killed && (acked.len() >= target || started.elapsed() > Duration::from_secs(60)) {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "child exited on its own: {status:?}");
    assert!(!status.success());
    assert!(
        acked.len() >= 100,
        "only {} acks before the kill",
        acked.len()
    );

    let (intake, report) = Intake::open(small_cfg(dir.path(), 256 << 10, sync)).unwrap();
    let mut present: BTreeMap<u32, Vec<(u32, u64)>> = BTreeMap::new();
    for (lsn, events) in read_all(&intake) {
        let (task, seq, _) = ids(&events[0]);
        assert_eq!(
            events,
            batch(task, seq, 1 + seq % 7, 200),
            "batch content intact"
        );
        present.entry(task).or_default().push((seq, lsn));
    }
    // Per task: exactly the seqs 0..k, in order (a task appends sequentially, so
    // nothing after a missing batch can exist).
    for (task, seqs) in &present {
        for (i, (seq, _)) in seqs.iter().enumerate() {
            assert_eq!(*seq as usize, i, "task {task}: gap or duplicate");
        }
    }
    // Every acknowledged batch is present, at the LSN it was acknowledged with.
    for (task, seq, lsn) in &acked {
        let got = present
            .get(task)
            .and_then(|s| s.get(*seq as usize))
            .copied();
        assert_eq!(
            got,
            Some((*seq, *lsn)),
            "acked batch task {task} seq {seq} lost"
        );
    }
    let total: usize = present.values().map(Vec::len).sum();
    eprintln!(
        "kill9 [{mode}]: {} acked, {total} recovered, {} segments, truncated {} bytes",
        acked.len(),
        report.segments,
        report.truncated_bytes
    );
    // The recovered WAL accepts new appends.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        intake.append(&batch(99, 0, 1, 1)).await.unwrap();
        intake.shutdown().await.unwrap();
    });
}

#[test]
fn kill9_group_mode_keeps_every_acked_batch() {
    run_kill9("group", SyncMode::Group);
}

#[test]
fn kill9_os_mode_keeps_every_acked_batch() {
    run_kill9("os", SyncMode::Os);
}
