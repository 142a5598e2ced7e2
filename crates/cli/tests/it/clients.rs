//! Real published SDKs (posthog-python, segment-analytics-python, growthbook; versions pinned in
//! tests/clients/requirements.txt) send realistic sessions to a real `flywheel serve`; the Python scripts read
//! the data back through the native API and assert every event, merge and property.

use std::process::Command;

use crate::{init, repo_root, Serve};

fn python() -> String {
    std::env::var("FLYWHEEL_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FLYWHEEL_TEST_PYTHON is not set: run the suite with scripts/test, which installs the pinned SDKs \
             (scripts/setup-test-env prints the interpreter to use)"
        )
    })
}

fn run_session(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let out = Command::new(python())
        .arg(script)
        .current_dir(repo_root().join("tests/clients"))
        .env("FLYWHEEL_URL", serve.url())
        .env("FLYWHEEL_PROJECT_ID", keys.project_id.to_string())
        .env("FLYWHEEL_PROJECT_KEY", &keys.project_key)
        .env("FLYWHEEL_PERSONAL_KEY", &keys.personal_key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    eprintln!("{stdout}");
    assert!(serve.terminate().success());
}

#[test]
fn posthog_python_session_round_trips() {
    run_session("posthog_session.py");
}

#[test]
fn segment_python_session_round_trips() {
    run_session("segment_session.py");
}

#[test]
fn growthbook_python_sdk_agrees_with_server_side_evaluation() {
    run_session("growthbook_differential.py");
}
