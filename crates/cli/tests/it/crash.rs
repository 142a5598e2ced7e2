//! Durability: `kill -9` in the middle of a load loses nothing that was acknowledged; SIGTERM drains cleanly.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flywheel_engine::{Intake, IntakeConfig};

use crate::{get_json, http, init, Serve};

const WRITERS: usize = 6;
const BATCH: usize = 50;

/// Posts batches with unique uuids from several threads until `stop`; returns the acknowledged uuids.
fn load(
    addr: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<Vec<String>>>, Arc<Mutex<u64>>) {
    let failures = Arc::new(Mutex::new(0u64));
    let handles = (0..WRITERS)
        .map(|w| {
            let (addr, token, stop, failures) = (addr.clone(), token.clone(), stop.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let uuids: Vec<String> = (0..BATCH).map(|i| format!("{:08x}-0000-4000-8000-{:012x}", w, n * 1000 + i as u64)).collect();
                    let events: Vec<String> = uuids
                        .iter()
                        .map(|u| format!(r#"{{"event":"load","distinct_id":"writer-{w}","uuid":"{u}","properties":{{"n":{n}}}}}"#))
                        .collect();
                    let body = format!(r#"{{"api_key":"{token}","batch":[{}]}}"#, events.join(","));
                    match http(&addr, "POST", "/batch", &[("Content-Type", "application/json")], body.as_bytes()) {
                        Ok((200, resp)) => {
                            let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
                            assert_eq!(v["accepted"], BATCH as u64, "{v}");
                            acked.extend(uuids);
                        }
                        Ok((status, _)) => panic!("unexpected status {status}"),
                        // The server died: this batch was never acknowledged.
                        Err(_) => *failures.lock().unwrap() += 1,
                    }
                }
                acked
            })
        })
        .collect();
    (handles, failures)
}

fn stored_uuids(dir: &std::path::Path) -> HashSet<String> {
    let (intake, report) = Intake::open(IntakeConfig::new(dir.join("events").join("wal"))).unwrap();
    let mut out = HashSet::new();
    for item in intake.reader(0) {
        let (_, events) = item.unwrap();
        out.extend(
            events
                .iter()
                .map(|e| uuid::Uuid::from_u128(e.uuid).to_string()),
        );
    }
    assert_eq!(
        report.events as usize,
        out.len(),
        "every stored event has a distinct uuid"
    );
    out
}

#[test]
fn kill_9_mid_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, _) = load(serve.addr.clone(), keys.project_key.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    // SIGKILL while requests are in flight.
    let mut serve = serve;
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(
        acked.len() >= 1000,
        "the load ran (only {} events acknowledged)",
        acked.len()
    );

    // Restart: recovery succeeds, the server answers, and every acknowledged event is readable.
    let serve = Serve::start(dir.path(), &[]);
    let (status, v) = get_json(
        &serve.addr,
        &format!(
            "/api/v1/projects/{}/events?distinct_id=writer-0&limit=5",
            keys.project_id
        ),
        &keys.personal_key,
    );
    assert_eq!(status, 200, "{v}");
    assert!(!v["results"].as_array().unwrap().is_empty());
    assert!(serve.terminate().success());
    let stored = stored_uuids(dir.path());
    let missing: Vec<&String> = acked.iter().filter(|u| !stored.contains(*u)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(3)]
    );
    eprintln!(
        "kill -9: {} acknowledged, {} stored, all acknowledged present",
        acked.len(),
        stored.len()
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &["--fsync", "os"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, _) = load(serve.addr.clone(), keys.project_key.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(800));
    let status = serve.terminate();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let acked: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stored = stored_uuids(dir.path());
    assert!(
        acked.iter().all(|u| stored.contains(u)),
        "every acknowledged event is stored"
    );
    // Identity caught up before exit: the checkpoint covers the whole log.
    let serve = Serve::start(dir.path(), &[]);
    for w in 0..WRITERS {
        let (status, v) = get_json(
            &serve.addr,
            &format!("/api/v1/projects/{}/persons/writer-{w}", keys.project_id),
            &keys.personal_key,
        );
        assert!(status == 200 || acked.is_empty(), "{v}");
    }
    assert!(serve.terminate().success());
}
