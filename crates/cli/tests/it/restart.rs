//! Restarts keep every merge: the identity mapping saved next to the segments on shutdown, plus what changed in the
//! metadata store after it (a merge followed by `kill -9`, which saves nothing), must resolve persons exactly as a
//! server that never stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::insights::request;
use crate::{http, init, Keys, Serve};

fn post_batch(serve: &Serve, keys: &Keys, events: Value) {
    let body = json!({"api_key": keys.project_key, "batch": events});
    let (status, out) = http(
        &serve.addr,
        "POST",
        "/batch",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
}

fn pageview(distinct_id: &str) -> Value {
    json!({"event": "$pageview", "distinct_id": distinct_id, "timestamp": "2026-01-10T12:00:00Z"})
}

fn set_plan(distinct_id: &str, plan: &str) -> Value {
    json!({"event": "$set", "distinct_id": distinct_id, "timestamp": "2026-01-10T14:00:00Z",
           "properties": {"$set": {"plan": plan}}})
}

fn identify(user: &str, anon: &str) -> Value {
    json!({"event": "$identify", "distinct_id": user, "timestamp": "2026-01-10T13:00:00Z",
           "properties": {"$anon_distinct_id": anon}})
}

/// Viewers of a page on 2026-01-10 (`breakdown`: none or a breakdown definition), once the tables have every
/// accepted event.
fn viewers_query(serve: &Serve, keys: &Keys, breakdown: Value) -> Value {
    let mut body = json!({"series": [{"event": "$pageview", "math": "dau"}], "interval": "day",
                          "date_from": "2026-01-10", "date_to": "2026-01-10"});
    if !breakdown.is_null() {
        body["breakdown"] = breakdown;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = request(
            serve,
            &keys.personal_key,
            "POST",
            &format!("/api/v1/projects/{}/insights/trends", keys.project_id),
            &body,
        );
        assert_eq!(status, 200, "{v}");
        if v["complete"] == true {
            return v;
        }
        assert!(Instant::now() < deadline, "the tables never caught up: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unique persons who viewed a page on 2026-01-10.
fn viewers(serve: &Serve, keys: &Keys) -> u64 {
    let v = viewers_query(serve, keys, Value::Null);
    v["result"][0]["data"][0]
        .as_f64()
        .map(|n| n as u64)
        .unwrap_or_else(|| panic!("no count in {v}"))
}

/// Viewers by their person's `plan` ("none" for persons without one).
fn viewers_by_plan(serve: &Serve, keys: &Keys) -> BTreeMap<String, u64> {
    let v = viewers_query(serve, keys, json!({"type": "person", "property": "plan"}));
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let label = r["breakdown_value"].as_str().unwrap_or("none").to_owned();
            (label, r["data"][0].as_f64().unwrap() as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn plans(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Waits until the breakdown by plan is `want` (person properties apply shortly after the event is accepted).
fn wait_plans(serve: &Serve, keys: &Keys, want: &BTreeMap<String, u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = viewers_by_plan(serve, keys);
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {want:?}, last {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the answer is `want` (the identity consumer applies a merge shortly after the event is accepted).
fn wait_viewers(serve: &Serve, keys: &Keys, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while viewers(serve, keys) != want {
        assert!(Instant::now() < deadline, "never saw {want} viewers");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The "identity mapping loaded" log line of a server's run.
fn load_line(serve: Serve) -> String {
    let mut serve = serve;
    let pid = serve.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(serve.child.wait().unwrap().success());
    let log = plain(&serve.stderr_after_exit());
    log.lines()
        .find(|l| l.contains("identity mapping loaded"))
        .unwrap_or_else(|| panic!("no load line in:\n{log}"))
        .to_owned()
}

#[test]
fn merges_and_person_properties_survive_restarts_with_and_without_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());

    // 1. Five distinct ids, anon-1 identified as user-1: four persons. A clean stop saves the mapping.
    let serve = Serve::start(dir.path(), &[]);
    post_batch(
        &serve,
        &keys,
        json!([
            pageview("anon-1"),
            pageview("anon-2"),
            pageview("anon-3"),
            pageview("user-1"),
            pageview("user-2"),
            identify("user-1", "anon-1")
        ]),
    );
    wait_viewers(&serve, &keys, 4);
    // The first breakdown by plan reads every person and saves the column.
    post_batch(
        &serve,
        &keys,
        json!([set_plan("user-1", "pro"), set_plan("user-2", "free")]),
    );
    wait_plans(
        &serve,
        &keys,
        &plans(&[("pro", 1), ("free", 1), ("none", 2)]),
    );
    // A later change is read as a change, not as a new read of every person.
    post_batch(&serve, &keys, json!([set_plan("anon-3", "team")]));
    wait_plans(
        &serve,
        &keys,
        &plans(&[("pro", 1), ("free", 1), ("team", 1), ("none", 1)]),
    );
    let line = load_line(serve);
    assert!(line.contains("incremental=false"), "{line}");

    // 2. From the saved mapping and column. Then anon-2 becomes user-2, whose plan changes, and the server is
    // killed: nothing saved this time.
    let mut serve = Serve::start(dir.path(), &[]);
    assert_eq!(
        viewers(&serve, &keys),
        4,
        "the saved mapping keeps the first merge"
    );
    assert_eq!(
        viewers_by_plan(&serve, &keys),
        plans(&[("pro", 1), ("free", 1), ("team", 1), ("none", 1)]),
        "the saved column (saved on shutdown with the last change)"
    );
    post_batch(
        &serve,
        &keys,
        json!([identify("user-2", "anon-2"), set_plan("user-2", "pro")]),
    );
    wait_viewers(&serve, &keys, 3);
    wait_plans(&serve, &keys, &plans(&[("pro", 2), ("team", 1)]));
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();

    // 3. The saved mapping and column are older than the second merge: the changes are read from the store.
    let serve = Serve::start(dir.path(), &[]);
    assert_eq!(
        viewers(&serve, &keys),
        3,
        "the merge after the save is read back"
    );
    assert_eq!(
        viewers_by_plan(&serve, &keys),
        plans(&[("pro", 2), ("team", 1)]),
        "the property change after the save is read back"
    );
    post_batch(&serve, &keys, json!([identify("user-1", "anon-3")]));
    wait_viewers(&serve, &keys, 2);
    let line = load_line(serve);
    assert!(line.contains("incremental=true"), "{line}");
    assert!(
        line.contains("rows=1"),
        "only anon-2 changed after the save: {line}"
    );

    // 4. Everything saved on the clean stop; nothing left to read.
    let serve = Serve::start(dir.path(), &[]);
    assert_eq!(viewers(&serve, &keys), 2);
    assert_eq!(viewers_by_plan(&serve, &keys), plans(&[("pro", 2)]));
    let columns = dir.path().join("events/columnar/person-columns");
    assert!(
        std::fs::read_dir(&columns).is_ok_and(|mut d| d.next().is_some()),
        "columns saved under {}",
        columns.display()
    );
    let line = load_line(serve);
    assert!(
        line.contains("incremental=true") && line.contains("rows=0"),
        "{line}"
    );
}
