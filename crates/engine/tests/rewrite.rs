//! Rewriting sealed WAL segments (erasure, retention): positions stay valid, the rewritten events are gone from
//! every reader and from the files' bytes, and everything else reads back unchanged, also after a reopen.

mod common;

use std::collections::BTreeMap;

use common::*;
use flywheel_engine::rewrite::Verdict;
use flywheel_engine::{Event, Intake, SyncMode};

/// Every event of the log with the LSN after its batch.
fn all_events(intake: &Intake) -> Vec<(u64, Event)> {
    read_all(intake)
        .into_iter()
        .flat_map(|(lsn, evs)| evs.into_iter().map(move |e| (lsn, e)))
        .collect()
}

fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in wal_files(dir) {
        all.extend(std::fs::read(f).unwrap());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn erasing_events_keeps_every_position_and_checkpoint_valid() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    // Four tasks (distinct ids `task-0`..`task-3`), batches mixing them, over several segments.
    let mut lsns = Vec::new();
    for seq in 0..60u32 {
        let mut b = Vec::new();
        for task in 0..4 {
            b.extend(batch(task, seq, 1 + (seq + task) % 3, 30));
        }
        // One batch holds only task-2's events: it becomes an empty padded batch.
        if seq == 7 {
            b = batch(2, seq, 3, 30);
        }
        lsns.push(intake.append(&b).await.unwrap());
    }
    let before = all_events(&intake);
    // Non-empty segments (the active one may be empty, just rotated).
    let segments_before: Vec<(u64, u64)> = intake
        .segments()
        .iter()
        .filter(|s| s.end_lsn > s.base_lsn)
        .map(|s| (s.base_lsn, s.end_lsn))
        .collect();
    assert!(segments_before.len() > 3, "{segments_before:?}");
    let end = intake.seal_active().await.unwrap();
    assert_eq!(end, intake.committed_lsn());
    assert!(intake
        .segments()
        .iter()
        .all(|s| s.sealed || s.base_lsn == end));
    // Sealing an empty active segment changes nothing.
    assert_eq!(intake.seal_active().await.unwrap(), end);

    let dropped_expected = before
        .iter()
        .filter(|(_, e)| e.distinct_id == "task-2")
        .count() as u64;
    let stats = intake
        .rewrite(
            end,
            |_| false,
            |e| {
                if e.distinct_id == "task-2" {
                    Verdict::Drop
                } else if e.distinct_id == "task-1" && e.properties.contains("\"seq\":3,") {
                    // Same length, other text.
                    Verdict::Properties(e.properties.replace("\"seq\":3,", "\"seq\":0,"))
                } else {
                    Verdict::Keep
                }
            },
        )
        .unwrap();
    assert_eq!(stats.events_dropped, dropped_expected);
    assert!(stats.events_changed > 0);
    assert!(stats.segments_rewritten > 0);

    let check = |intake: &Intake| {
        let after = all_events(intake);
        let expected: Vec<(u64, Event)> = before
            .iter()
            .filter(|(_, e)| e.distinct_id != "task-2")
            .map(|(lsn, e)| {
                let mut e = e.clone();
                if e.distinct_id == "task-1" && e.properties.contains("\"seq\":3,") {
                    e.properties = e.properties.replace("\"seq\":3,", "\"seq\":0,");
                }
                (*lsn, e)
            })
            .collect();
        assert_eq!(after, expected, "same events, same batch positions");
        // Every position handed out by an append is still a batch boundary; a reader from there sees the rest.
        for (k, &lsn) in lsns.iter().enumerate() {
            let rest: Vec<(u64, Event)> = intake
                .reader(lsn)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
                .into_iter()
                .flat_map(|(l, evs)| evs.into_iter().map(move |e| (l, e)))
                .collect();
            let want: Vec<(u64, Event)> = expected
                .iter()
                .filter(|(l, _)| *l > lsns[k])
                .cloned()
                .collect();
            assert_eq!(rest, want, "reader from lsn {lsn}");
        }
        let mut newest = Vec::new();
        intake
            .scan_rev(|e| {
                newest.push(e.distinct_id.to_owned());
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(newest.len(), expected.len());
        assert!(!newest.iter().any(|d| d == "task-2"));
        let segs: Vec<(u64, u64)> = intake
            .segments()
            .iter()
            .filter(|s| s.end_lsn > s.base_lsn)
            .map(|s| (s.base_lsn, s.end_lsn))
            .collect();
        assert_eq!(segs, segments_before, "segment boundaries unchanged");
        let events: u64 = intake.segments().iter().map(|s| s.events).sum();
        assert_eq!(events, expected.len() as u64);
    };
    check(&intake);
    let bytes = file_bytes(dir.path());
    assert!(
        !contains(&bytes, "task-2"),
        "erased distinct id still in the files"
    );
    assert!(contains(&bytes, "task-3"));
    assert!(!dir.path().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));

    // Appends go on after a rewrite; a reopen recovers the rewritten log (headers and padded batches).
    let lsn = intake.append(&batch(3, 99, 2, 10)).await.unwrap();
    let after = all_events(&intake);
    intake.shutdown().await.unwrap();
    drop(intake);
    let (intake, report) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    assert_eq!(report.end_lsn, lsn);
    assert_eq!(report.events, before.len() as u64 - dropped_expected + 2);
    assert_eq!(all_events(&intake), after);
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_passes_skip_segments_they_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(small_cfg(dir.path(), 2048, SyncMode::Os)).unwrap();
    // Project = task % 4; timestamps grow with seq.
    for seq in 0..40u32 {
        intake.append(&batch(seq % 2, seq, 4, 20)).await.unwrap();
    }
    let end = intake.seal_active().await.unwrap();
    let cutoff = 1_700_000_000_000_000 + 20 * 1000;
    let old_of_project_1 =
        |e: &flywheel_engine::EventRef<'_>| e.project_id == 1 && e.timestamp_us < cutoff;
    let expected_dropped = all_events(&intake)
        .iter()
        .filter(|(_, e)| old_of_project_1(&e.as_event_ref()))
        .count() as u64;
    assert!(expected_dropped > 0);
    let skip = |s: &flywheel_engine::rewrite::SegmentSummary| {
        s.projects
            .get(&1)
            .is_none_or(|p| p.min_timestamp_us >= cutoff)
    };
    let verdict = |e: &flywheel_engine::EventRef<'_>| {
        if old_of_project_1(e) {
            Verdict::Drop
        } else {
            Verdict::Keep
        }
    };
    let first = intake.rewrite(end, skip, verdict).unwrap();
    assert_eq!(first.events_dropped, expected_dropped);
    assert_eq!(
        first.segments_skipped, 0,
        "nothing is known before the first pass"
    );
    let segments = intake.segments().iter().filter(|s| s.sealed).count();
    assert_eq!(first.segments_read, segments);
    // The second pass reads nothing: every segment's summary says it holds no old event of project 1.
    let second = intake.rewrite(end, skip, verdict).unwrap();
    assert_eq!(second.events_dropped, 0);
    assert_eq!(second.segments_read, 0);
    assert_eq!(second.segments_skipped, segments);
    let per_project: BTreeMap<i64, usize> =
        all_events(&intake)
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, e)| {
                *m.entry(e.project_id).or_default() += 1;
                m
            });
    assert_eq!(
        per_project[&0],
        20 * 4,
        "the other project keeps everything"
    );
    assert_eq!(per_project[&1], 20 * 4 - expected_dropped as usize);
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_leftover_temporary_file_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    intake.append(&batch(1, 1, 3, 5)).await.unwrap();
    intake.shutdown().await.unwrap();
    drop(intake);
    let tmp = dir.path().join("00000000000000000000.wal.tmp");
    std::fs::write(&tmp, b"half a rewrite").unwrap();
    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert!(!tmp.exists());
    assert_eq!(report.events, 3);
    intake.shutdown().await.unwrap();
}
