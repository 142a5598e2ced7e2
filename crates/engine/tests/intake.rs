mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;

use common::*;
use flywheel_engine::{EngineError, Event, Intake, SyncMode, MAX_RECORD_BYTES};

async fn concurrent_appends_survive_reopen(sync: SyncMode) {
    const TASKS: u32 = 32;
    const BATCHES: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.sync = sync;
    c.queue_capacity = 16; // exercise backpressure
    let (intake, report) = Intake::open(c).unwrap();
    assert_eq!(report.end_lsn, 0);
    let mut rx = intake.subscribe();

    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let intake = intake.clone();
            tokio::spawn(async move {
                let mut lsns = Vec::new();
                for seq in 0..BATCHES {
                    let n = 1 + (task + seq) % 4;
                    let lsn = intake.append(&batch(task, seq, n, 40)).await.unwrap();
                    assert!(intake.committed_lsn() >= lsn);
                    lsns.push(lsn);
                }
                lsns
            })
        })
        .collect();
    let mut acked: HashMap<u64, (u32, u32)> = HashMap::new();
    for (task, h) in handles.into_iter().enumerate() {
        let lsns = h.await.unwrap();
        assert!(
            lsns.windows(2).all(|w| w[0] < w[1]),
            "per-task LSNs increase"
        );
        for (seq, lsn) in lsns.into_iter().enumerate() {
            assert!(
                acked.insert(lsn, (task as u32, seq as u32)).is_none(),
                "LSN reused"
            );
        }
    }
    let end = intake.committed_lsn();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), end);
    intake.shutdown().await.unwrap();
    assert!(matches!(
        intake.append(&batch(0, 0, 1, 1)).await,
        Err(EngineError::Closed)
    ));
    drop(intake);

    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(report.end_lsn, end);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.batches, u64::from(TASKS * BATCHES));
    let expected_events: u32 = (0..TASKS)
        .flat_map(|t| (0..BATCHES).map(move |s| 1 + (t + s) % 4))
        .sum();
    assert_eq!(report.events, u64::from(expected_events));

    let mut per_task: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut prev = 0;
    for (lsn, events) in read_all(&intake) {
        assert!(lsn > prev);
        prev = lsn;
        let (task, seq, _) = ids(&events[0]);
        assert_eq!(
            acked.get(&lsn),
            Some(&(task, seq)),
            "batch at the LSN it was acked with"
        );
        assert_eq!(events, batch(task, seq, 1 + (task + seq) % 4, 40));
        per_task.entry(task).or_default().push(seq);
    }
    assert_eq!(per_task.len(), TASKS as usize);
    for seqs in per_task.values() {
        assert_eq!(
            *seqs,
            (0..BATCHES).collect::<Vec<_>>(),
            "exactly once, in order"
        );
    }
    intake.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_survive_reopen_group() {
    concurrent_appends_survive_reopen(SyncMode::Group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_survive_reopen_os() {
    concurrent_appends_survive_reopen(SyncMode::Os).await;
}

/// Write 20 batches, close, then damage the tail of the last segment with `tail`.
async fn torn_tail_case(name: &str, tail: impl Fn(&[u8]) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    let mut lsns = Vec::new();
    for seq in 0..20 {
        lsns.push(intake.append(&batch(1, seq, 3, 50)).await.unwrap());
    }
    intake.shutdown().await.unwrap();
    drop(intake);

    let files = wal_files(dir.path());
    assert_eq!(files.len(), 1);
    let seg = &files[0];
    let bytes = std::fs::read(seg).unwrap();
    // The last record, for cases that build on a real record.
    let last_rec = &bytes[lsns[18] as usize..];
    let garbage = tail(last_rec);
    let mut f = OpenOptions::new().append(true).open(seg).unwrap();
    f.write_all(&garbage).unwrap();
    drop(f);

    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, garbage.len() as u64, "{name}");
    assert_eq!(report.end_lsn, lsns[19], "{name}");
    assert_eq!(report.batches, 20, "{name}");
    assert_eq!(
        std::fs::metadata(seg).unwrap().len(),
        lsns[19],
        "{name}: file truncated"
    );
    let all = read_all(&intake);
    assert_eq!(all.len(), 20, "{name}");
    for (seq, (lsn, events)) in all.iter().enumerate() {
        assert_eq!(*lsn, lsns[seq]);
        assert_eq!(*events, batch(1, seq as u32, 3, 50));
    }
    // New appends continue right after the intact data.
    let next = intake.append(&batch(2, 0, 2, 10)).await.unwrap();
    assert!(next > lsns[19]);
    intake.shutdown().await.unwrap();
    drop(intake);

    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(report.truncated_bytes, 0, "{name}");
    assert_eq!(report.end_lsn, next, "{name}");
    let all = read_all(&intake);
    assert_eq!(all.len(), 21);
    assert_eq!(all[20].1, batch(2, 0, 2, 10));
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn torn_tail_partial_record() {
    torn_tail_case("partial record", |rec| rec[..rec.len() / 2].to_vec()).await;
}

#[tokio::test]
async fn torn_tail_partial_header() {
    torn_tail_case("partial header", |rec| rec[..5].to_vec()).await;
}

#[tokio::test]
async fn torn_tail_crc_mismatch() {
    torn_tail_case("flipped payload byte", |rec| {
        let mut r = rec.to_vec();
        let last = r.len() - 1;
        r[last] ^= 0x40;
        r
    })
    .await;
}

#[tokio::test]
async fn torn_tail_zero_fill() {
    torn_tail_case("zeros", |_| vec![0u8; 4096]).await;
}

#[tokio::test]
async fn torn_tail_garbage() {
    torn_tail_case("garbage", |_| {
        let mut x = 0x1234_5678_u32;
        (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
    .await;
}

#[tokio::test]
async fn torn_tail_huge_length() {
    torn_tail_case("huge length", |_| {
        let mut r = u32::MAX.to_le_bytes().to_vec();
        r.extend_from_slice(&[0; 12]);
        r
    })
    .await;
}

#[tokio::test]
async fn torn_tail_valid_crc_but_undecodable() {
    torn_tail_case("bad batch with good crc", |_| {
        let payload = [9u8, 0, 0, 0, 0]; // unknown format version
        let mut r = (payload.len() as u32).to_le_bytes().to_vec();
        r.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        r.extend_from_slice(&payload);
        r
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_reader_from_mid_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    let mut lsns = Vec::new();
    for seq in 0..300 {
        lsns.push(intake.append(&batch(0, seq, 2, 100)).await.unwrap());
    }
    let segs = intake.segments();
    assert!(segs.len() >= 10, "rotated into {} segments", segs.len());
    for w in segs.windows(2) {
        assert_eq!(w[0].end_lsn, w[1].base_lsn, "segments are contiguous");
        assert!(w[0].sealed);
        assert!(w[0].end_lsn - w[0].base_lsn >= 4096);
    }
    assert!(!segs.last().unwrap().sealed);
    assert_eq!(segs.iter().map(|s| s.batches).sum::<usize>(), 300);
    for s in &segs {
        let name = s.path.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(name, format!("{:020}.wal", s.base_lsn));
    }
    assert_eq!(wal_files(dir.path()).len(), segs.len());

    fn check_from(intake: &Intake, lsns: &[u64], k: usize) {
        let got: Vec<(u64, Vec<Event>)> = intake.reader(lsns[k]).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), lsns.len() - k - 1);
        for (j, (lsn, events)) in got.into_iter().enumerate() {
            let seq = k + 1 + j;
            assert_eq!(lsn, lsns[seq]);
            assert_eq!(events, batch(0, seq as u32, 2, 100));
        }
    }
    check_from(&intake, &lsns, 137);
    // A segment base is a boundary too.
    let mid = &segs[segs.len() / 2];
    let first = intake.reader(mid.base_lsn).next().unwrap().unwrap();
    assert_eq!(
        Some(first.0),
        lsns.iter().copied().find(|&l| l > mid.base_lsn)
    );

    // Not a batch boundary.
    let mut bad = intake.reader(lsns[10] + 1);
    assert!(matches!(
        bad.next(),
        Some(Err(EngineError::InvalidLsn { .. }))
    ));
    assert!(bad.next().is_none());

    // A tailing reader picks up new commits after refresh.
    let mut tail = intake.reader(lsns[299]);
    assert!(tail.next().is_none());
    let more = intake.append(&batch(0, 300, 2, 100)).await.unwrap();
    assert!(tail.next().is_none(), "limit fixed at creation");
    assert_eq!(tail.refresh(), more);
    let (lsn, events) = tail.next().unwrap().unwrap();
    assert_eq!((lsn, events), (more, batch(0, 300, 2, 100)));
    lsns.push(more);

    intake.shutdown().await.unwrap();
    drop(intake);

    // After a restart the same LSNs still work.
    let (intake, report) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    assert_eq!(report.segments, segs.len());
    assert_eq!(report.batches, 301);
    assert_eq!(report.events, 602);
    check_from(&intake, &lsns, 200);
    assert_eq!(read_all(&intake).len(), 301);

    // Drop converted segments; what remains is readable, older LSNs are rejected.
    let cut = lsns[150];
    let removed = intake.drop_segments_before(cut).unwrap();
    assert!(removed > 0);
    let oldest = intake.oldest_lsn();
    assert!(oldest > 0 && oldest <= cut);
    assert!(matches!(
        intake.reader(0).next(),
        Some(Err(EngineError::InvalidLsn { .. }))
    ));
    check_from(&intake, &lsns, 150);
    intake.shutdown().await.unwrap();
    drop(intake);
    let (intake, report) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    assert_eq!(intake.oldest_lsn(), oldest);
    assert_eq!(report.segments, segs.len() - removed);
    check_from(&intake, &lsns, 200);
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn scan_rev_returns_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(small_cfg(dir.path(), 8192, SyncMode::Os)).unwrap();
    // Empty log: nothing visited.
    intake.scan_rev(|_| panic!("no events expected")).unwrap();
    for seq in 0..120 {
        intake.append(&batch(3, seq, 5, 60)).await.unwrap();
    }
    assert!(intake.segments().len() > 3);
    let expected: Vec<(u32, u32)> = (0..120u32)
        .rev()
        .flat_map(|s| (0..5u32).rev().map(move |i| (s, i)))
        .collect();
    let collect = |intake: &Intake, limit: usize| {
        let mut got = Vec::new();
        intake
            .scan_rev(|e| {
                let ev = e.to_event();
                let (_, seq, i) = ids(&ev);
                assert_eq!(ev, ev_with(seq, i));
                got.push((seq, i));
                if got.len() == limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        got
    };
    fn ev_with(seq: u32, i: u32) -> Event {
        ev(3, seq, i, 60)
    }
    assert_eq!(collect(&intake, usize::MAX), expected);
    assert_eq!(collect(&intake, 7), expected[..7]);

    // "Newest N matching a predicate".
    let mut odd = Vec::new();
    intake
        .scan_rev(|e| {
            if e.event == "ev-1" {
                odd.push(e.uuid);
            }
            if odd.len() == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(odd.len(), 10);
    assert_eq!(odd[0], ev(3, 119, 4, 60).uuid);

    intake.shutdown().await.unwrap();
    drop(intake);
    let (intake, _) = Intake::open(small_cfg(dir.path(), 8192, SyncMode::Os)).unwrap();
    assert_eq!(collect(&intake, usize::MAX), expected);
    intake.shutdown().await.unwrap();
}

fn make_segments(dir: &std::path::Path) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (intake, _) = Intake::open(small_cfg(dir, 4096, SyncMode::Group)).unwrap();
        let mut lsns = Vec::new();
        for seq in 0..60 {
            lsns.push(intake.append(&batch(0, seq, 2, 100)).await.unwrap());
        }
        intake.shutdown().await.unwrap();
        lsns
    })
}

#[test]
fn bad_header_in_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    make_segments(dir.path());
    let files = wal_files(dir.path());
    assert!(files.len() > 2);
    // Damage the length of the 3rd record of the first segment.
    let bytes = std::fs::read(&files[0]).unwrap();
    let mut off = 0usize;
    for _ in 0..2 {
        off += 8 + u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    }
    let mut f = OpenOptions::new().write(true).open(&files[0]).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(off as u64)).unwrap();
    f.write_all(&(MAX_RECORD_BYTES as u32 + 1).to_le_bytes())
        .unwrap();
    drop(f);
    match Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)) {
        Err(EngineError::Corrupt {
            path, offset, lsn, ..
        }) => {
            assert_eq!(path.file_name(), files[0].file_name());
            assert_eq!(offset, off as u64);
            assert_eq!(lsn, off as u64); // first segment has base 0
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was truncated.
    assert_eq!(std::fs::read(&files[0]).unwrap().len(), bytes.len());
}

#[test]
fn truncated_sealed_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    make_segments(dir.path());
    let files = wal_files(dir.path());
    let len = std::fs::metadata(&files[1]).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let err = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap_err();
    assert!(
        matches!(err, EngineError::Corrupt { ref path, .. } if path.file_name() == files[1].file_name()),
        "{err}"
    );
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    make_segments(dir.path());
    let files = wal_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    let err = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap_err();
    assert!(
        matches!(err, EngineError::Corrupt { ref reason, .. } if reason.contains("chain")),
        "{err}"
    );
}

#[test]
fn payload_corruption_in_sealed_segment_is_reported_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = make_segments(dir.path());
    let files = wal_files(dir.path());
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.len() - 3; // inside the last record's payload
    bytes[at] ^= 0xFF;
    std::fs::write(&files[0], &bytes).unwrap();
    // Open only checks headers of sealed segments (documented), so it succeeds...
    let (intake, report) = Intake::open(small_cfg(dir.path(), 4096, SyncMode::Group)).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.end_lsn, *lsns.last().unwrap());
    // ...and the reader reports the bad record instead of skipping it.
    let results: Vec<_> = intake.reader(0).collect();
    let err = results.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(err, EngineError::Corrupt { reason, path, .. } if reason.contains("crc") && path.file_name() == files[0].file_name()),
        "{err}"
    );
    let scan = intake.scan_rev(|_| ControlFlow::Continue(()));
    assert!(matches!(scan, Err(EngineError::Corrupt { .. })));
}

#[tokio::test]
async fn append_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(intake.append(&[]).await.unwrap(), 0);
    let lsn = intake.append(&batch(0, 0, 1, 0)).await.unwrap();
    assert_eq!(intake.append(&[]).await.unwrap(), lsn);
    let mut huge = ev(0, 1, 0, 0);
    huge.properties = "x".repeat(MAX_RECORD_BYTES);
    assert!(matches!(
        intake.append(&[huge]).await,
        Err(EngineError::BatchTooLarge { .. })
    ));
    assert_eq!(intake.committed_lsn(), lsn);
    // A batch bigger than max_group_bytes is still written (alone).
    let big = batch(0, 2, 4, 3 << 20);
    let lsn2 = intake.append(&big).await.unwrap();
    assert_eq!(read_all(&intake)[1], (lsn2, big));
    intake.shutdown().await.unwrap();
    intake.shutdown().await.unwrap(); // idempotent
}

#[tokio::test]
async fn small_group_cap_still_commits_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_group_bytes = 1; // every group holds exactly one batch
    let (intake, _) = Intake::open(c).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let intake = intake.clone();
            tokio::spawn(async move {
                for seq in 0..20 {
                    intake.append(&batch(t, seq, 1, 10)).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(read_all(&intake).len(), 160);
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_commits_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    let lsn = intake.append(&batch(0, 0, 2, 10)).await.unwrap();
    drop(intake);
    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(report.end_lsn, lsn);
    intake.shutdown().await.unwrap();
}

#[tokio::test]
async fn foreign_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README"), "x").unwrap();
    std::fs::write(dir.path().join("bogus.wal"), "x").unwrap();
    let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
    assert_eq!(report.segments, 1);
    intake.append(&batch(0, 0, 1, 1)).await.unwrap();
    intake.shutdown().await.unwrap();
}

/// Start-up time on a large WAL. `cargo test -p flywheel-engine --release --test intake
/// -- --ignored --nocapture recovery_time`; size via FLYWHEEL_RECOVERY_MB (default 1024).
#[test]
#[ignore = "writes ~1 GiB; run manually"]
fn recovery_time_large_wal() {
    let mb: u64 = std::env::var("FLYWHEEL_RECOVERY_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let batches: Vec<Vec<Event>> = (0..16).map(|t| batch(t, 0, 100, 300)).collect();
    let written = std::time::Instant::now();
    rt.block_on(async {
        let mut c = cfg(dir.path());
        c.sync = SyncMode::Os;
        let (intake, _) = Intake::open(c).unwrap();
        while intake.committed_lsn() < mb << 20 {
            let hs: Vec<_> = batches
                .iter()
                .map(|b| {
                    let intake = intake.clone();
                    let b = b.clone();
                    tokio::spawn(async move {
                        for _ in 0..20 {
                            intake.append(&b).await.unwrap();
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        }
        intake.shutdown().await.unwrap();
    });
    println!("wrote {mb} MiB in {:?}", written.elapsed());
    for round in 0..3 {
        let t = std::time::Instant::now();
        let (intake, report) = Intake::open(cfg(dir.path())).unwrap();
        let elapsed = t.elapsed();
        println!("open #{round}: {elapsed:?} ({report:?})");
        let t = std::time::Instant::now();
        let mut n = 0;
        intake
            .scan_rev(|_| {
                n += 1;
                if n == 1000 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        println!("newest 1000 via scan_rev: {:?}", t.elapsed());
        rt.block_on(intake.shutdown()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_races_with_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let intake = intake.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                loop {
                    match intake.append(&batch(t, ok, 2, 10)).await {
                        Ok(_) => ok += 1,
                        Err(EngineError::Closed) => return ok,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let other = intake.clone();
    let (a, b) = tokio::join!(intake.shutdown(), other.shutdown());
    a.unwrap();
    b.unwrap();
    let mut acked = Vec::new();
    for h in handles {
        acked.push(h.await.unwrap());
    }
    drop((intake, other));
    let (intake, _) = Intake::open(cfg(dir.path())).unwrap();
    let mut per_task = vec![0u32; 8];
    for (_, events) in read_all(&intake) {
        let (t, seq, _) = ids(&events[0]);
        assert_eq!(seq, per_task[t as usize], "in order, no gaps");
        per_task[t as usize] += 1;
    }
    // Batches queued before the shutdown are committed and acknowledged; later ones
    // are rejected with Closed and never written.
    assert_eq!(per_task, acked);
    intake.shutdown().await.unwrap();
}
