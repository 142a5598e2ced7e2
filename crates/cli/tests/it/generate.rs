//! `flywheel generate` into a fresh data directory, then `flywheel serve` on it: the events are readable through
//! the native API and the identity consumer resolves the generated merges and companies on start.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{get_json, Serve, BIN};

fn generate(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["generate", "--data-dir"])
        .arg(dir)
        .args(["--events", "20000", "--persons", "2000", "--seed", "9"])
        .args(["--days", "30", "--end", "2026-01-01", "--json"])
        .args(extra)
        .output()
        .unwrap()
}

/// Polls `/persons/{distinct_id}` until `check` holds (identity is applied asynchronously); returns the person.
fn person_until(
    serve: &Serve,
    project: i64,
    key: &str,
    distinct_id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, person) = get_json(
            &serve.addr,
            &format!("/api/v1/projects/{project}/persons/{distinct_id}"),
            key,
        );
        if status == 200 && check(&person) {
            return person;
        }
        assert!(
            Instant::now() < deadline,
            "person {distinct_id}: last answer {status} {person}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn generated_history_is_served_with_merged_persons_and_companies() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), &["--quiet"]);
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["events"], 20_000);
    assert!(summary["persons"].as_u64().unwrap() <= 2_000);
    assert!(summary["merges"].as_u64().unwrap() > 0);
    let project = summary["project_id"].as_i64().unwrap();
    let key = summary["personal_api_key"].as_str().unwrap().to_owned();
    let counts = summary["by_event"].as_object().unwrap();
    assert_eq!(
        counts.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        20_000
    );

    let serve = Serve::start(dir.path(), &[]);

    // While the server runs, a second generate is refused with a clear message.
    let refused = generate(dir.path(), &["--quiet"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("in use by a running flywheel server"), "{err}");

    // Every event of a few kinds is there, exactly as many as generated.
    for name in [
        "signed_up",
        "trial_started",
        "subscription_upgraded",
        "$identify",
    ] {
        let expected = counts[name].as_u64().unwrap();
        assert!(expected > 0 && expected < 10_000, "{name}: {expected}");
        let (status, body) = get_json(
            &serve.addr,
            &format!("/api/v1/projects/{project}/events?event={name}&limit=10000"),
            &key,
        );
        assert_eq!(status, 200, "{body}");
        let rows = body["results"].as_array().unwrap();
        assert_eq!(rows.len() as u64, expected, "{name}");
        for row in rows {
            let ts = row["timestamp"].as_str().unwrap();
            assert!(("2025-12-02".."2026-01-01").contains(&ts), "{ts}");
        }
    }

    // Sign-up merges (with $set) and later-device merges (without): the anonymous id resolves to the user.
    let (_, identifies) = get_json(
        &serve.addr,
        &format!("/api/v1/projects/{project}/events?event=$identify&limit=10000"),
        &key,
    );
    let identifies = identifies["results"].as_array().unwrap();
    let signup = identifies
        .iter()
        .find(|e| e["properties"]["$set"].is_object())
        .expect("a sign-up identify");
    let device = identifies
        .iter()
        .find(|e| e["properties"]["$set"].is_null())
        .expect("a second-device identify");
    for identify in [signup, device] {
        let user = identify["distinct_id"].as_str().unwrap();
        let anon = identify["properties"]["$anon_distinct_id"]
            .as_str()
            .unwrap();
        let person = person_until(&serve, project, &key, anon, |p| {
            p["distinct_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|d| d == user))
        });
        assert_eq!(person["is_identified"], true, "{person}");
        // Signed-up users belong to their company, which has the properties of its $groupidentify.
        let company = identify["properties"]["$groups"]["company"]
            .as_str()
            .unwrap();
        let person = person_until(&serve, project, &key, user, |p| {
            p["groups"].as_array().is_some_and(|g| !g.is_empty())
        });
        let groups = person["groups"].as_array().unwrap();
        assert!(
            groups.iter().any(|g| g["group_key"] == company
                && g["group_type"] == "company"
                && g["properties"]["name"].is_string()),
            "{person}"
        );
        // Person properties from $set / $set_once.
        assert!(person["properties"]["plan"].is_string(), "{person}");
        assert!(person["properties"]["country"].is_string(), "{person}");
    }
    let status = serve.terminate();
    assert!(status.success());
}

/// The uuids of a data directory's events, in log order.
fn log_order(dir: &std::path::Path) -> Vec<u128> {
    let (intake, _) = flywheel_engine::Intake::open(flywheel_engine::IntakeConfig::new(
        dir.join("events").join("wal"),
    ))
    .unwrap();
    let mut reader = intake.reader(0);
    let mut out = Vec::new();
    while let Some(item) = reader.next_payload() {
        let (_, payload) = item.unwrap();
        for e in flywheel_engine::BatchRef::new(payload).unwrap().iter() {
            out.push(e.unwrap().uuid);
        }
    }
    out
}

/// Identity applies `$set` in log order, so the same seed must give the same log order, not only the same events
/// (concurrent appends once let batches reach the log in any order).
#[test]
fn the_same_seed_writes_the_same_log_order() {
    let small = ["--batch", "500", "--quiet"];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(generate(a.path(), &small).status.success());
    assert!(generate(b.path(), &small).status.success());
    let (la, lb) = (log_order(a.path()), log_order(b.path()));
    assert_eq!(la.len(), 20_000);
    assert!(la == lb, "same seed, different log order");
}
