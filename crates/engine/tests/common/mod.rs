#![allow(dead_code)]

use std::path::{Path, PathBuf};

use flywheel_engine::{Event, Intake, IntakeConfig, SyncMode};

/// Event `i` of batch `seq` appended by `task`; everything is recoverable from it.
pub fn ev(task: u32, seq: u32, i: u32, prop_len: usize) -> Event {
    Event {
        uuid: (u128::from(task) << 64) | (u128::from(seq) << 32) | u128::from(i),
        project_id: i64::from(task % 4),
        timestamp_us: 1_700_000_000_000_000 + i64::from(seq) * 1000 + i64::from(i),
        received_us: 1_700_000_000_000_000 + i64::from(seq) * 1000,
        event: format!("ev-{}", i % 3),
        distinct_id: format!("task-{task}"),
        properties: format!(
            "{{\"task\":{task},\"seq\":{seq},\"i\":{i},\"pad\":\"{}\"}}",
            "p".repeat(prop_len)
        ),
    }
}

pub fn batch(task: u32, seq: u32, n: u32, prop_len: usize) -> Vec<Event> {
    (0..n).map(|i| ev(task, seq, i, prop_len)).collect()
}

/// (task, seq, i) of an event built by [`ev`].
pub fn ids(e: &Event) -> (u32, u32, u32) {
    ((e.uuid >> 64) as u32, (e.uuid >> 32) as u32, e.uuid as u32)
}

pub fn cfg(dir: &Path) -> IntakeConfig {
    IntakeConfig::new(dir)
}

pub fn small_cfg(dir: &Path, segment_bytes: u64, sync: SyncMode) -> IntakeConfig {
    let mut c = IntakeConfig::new(dir);
    c.segment_bytes = segment_bytes;
    c.sync = sync;
    c
}

/// Everything committed, via a reader from the oldest LSN.
pub fn read_all(intake: &Intake) -> Vec<(u64, Vec<Event>)> {
    intake
        .reader(intake.oldest_lsn())
        .collect::<Result<Vec<_>, _>>()
        .expect("read WAL")
}

pub fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}
