//! `flywheel init`, first-run bootstrap, `--help`, configuration errors.

use std::process::Command;

use crate::{get_json, http, init, Serve, BIN};

#[test]
fn init_prints_keys_once_and_refuses_a_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    assert!(keys.project_key.starts_with("fwpub_") && keys.personal_key.starts_with("fwsec_"));
    let again = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
    // The keys work against a server on that directory.
    let serve = Serve::start(dir.path(), &[]);
    let body = format!(
        r#"{{"api_key":"{}","batch":[{{"event":"e","distinct_id":"d"}}]}}"#,
        keys.project_key
    );
    let (status, _) = http(
        &serve.addr,
        "POST",
        "/batch",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, v) = get_json(
        &serve.addr,
        &format!("/api/v1/projects/{}/events", keys.project_id),
        &keys.personal_key,
    );
    assert_eq!(status, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert!(serve.terminate().success());
}

#[test]
fn first_serve_of_an_empty_dir_prints_working_keys_once_and_never_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(
        dir.path(),
        &["--log-level", "debug", "--log-format", "json"],
    );
    let addr = serve.addr.clone();
    let pid = serve.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    serve.child.wait().unwrap();
    let stderr = serve.stderr_after_exit();
    let key_after = |label: &str| -> String {
        let line = stderr
            .lines()
            // The banner, not a JSON log line that happens to mention the words.
            .find(|l| l.contains(label) && !l.starts_with('{'))
            .unwrap_or_else(|| panic!("no {label} in {stderr}"));
        line.split_whitespace()
            .find(|w| w.starts_with("fw"))
            .unwrap()
            .to_owned()
    };
    let personal = key_after("personal API key");
    let project = key_after("project API key");
    assert!(stderr.contains(&format!("http://{addr}")));
    let log_lines_with_secret = stderr
        .lines()
        .filter(|l| l.starts_with('{') && l.contains(&personal))
        .count();
    assert_eq!(
        log_lines_with_secret, 0,
        "the secret key appears in a log line"
    );
    drop(serve);

    let mut again = Serve::start(dir.path(), &[]);
    let (status, _) = get_json(&again.addr, "/api/v1/projects/1/events", &personal);
    assert_eq!(status, 200, "the printed personal key works");
    let body = format!(r#"{{"api_key":"{project}","event":"e","distinct_id":"d"}}"#);
    let (status, _) = http(&again.addr, "POST", "/e/", &[], body.as_bytes()).unwrap();
    assert_eq!(status, 200, "the printed project key works");
    let pid = again.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    again.child.wait().unwrap();
    assert!(
        !again.stderr_after_exit().contains("personal API key"),
        "keys are printed only on the first start"
    );
}

#[test]
fn help_documents_every_option() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--data-dir",
        "--listen",
        "--log-format",
        "--log-level",
        "--fsync",
        "--segment-mb",
        "--dedupe-window",
        "--max-json-depth",
        "--max-decompressed-mb",
        "--request-timeout-secs",
    ] {
        assert!(help.contains(option), "serve --help lacks {option}");
    }
    assert!(
        help.contains("FLYWHEEL_DATA_DIR"),
        "env variables are documented"
    );
}

#[test]
fn configuration_file_and_bad_values_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("flywheel.toml");
    std::fs::write(&cfg, "fsync = \"sometimes\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fsync"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
