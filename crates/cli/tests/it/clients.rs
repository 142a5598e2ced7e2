//! Real published SDKs against a real `flywheel serve`: posthog-python (capture and remote flag evaluation),
//! segment-analytics-python, growthbook, openfeature-sdk with the OFREP provider, and from npm the JavaScript OFREP
//! providers, the GrowthBook SDK, posthog-node and posthog-js (in Debian's Chromium) (versions pinned in
//! tests/clients/requirements.txt, tests/clients/js/package-lock.json and tests/browser/package-lock.json); plus
//! schemathesis checking the OFREP endpoints against the spec in ../shared/conformance/ofrep and fuzzing every
//! operation of Flywheel's own OpenAPI document for server errors. Each script asserts every value it reads back.

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
    run_client(&python(), script, "tests/clients");
}

/// Runs a client program (`interpreter script`) in `dir` against a fresh `flywheel serve`; it must exit 0 and
/// print "all checks passed".
fn run_client(interpreter: &str, script: &str, dir_in_repo: &str) {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let out = Command::new(interpreter)
        .arg(script)
        .current_dir(repo_root().join(dir_in_repo))
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

#[test]
fn posthog_python_remote_flag_evaluation() {
    run_session("posthog_flags.py");
}

#[test]
fn openfeature_python_ofrep_provider() {
    run_session("openfeature_ofrep.py");
}

#[test]
fn ofrep_conforms_to_the_spec_under_schemathesis() {
    run_session("ofrep_schemathesis.py");
}

#[test]
fn no_server_error_anywhere_under_schemathesis() {
    run_session("native_schemathesis.py");
}

/// Runs a client script of tests/clients/js (its shared helpers in `flywheel.mjs`) that drives the npm package
/// `package`, which must be installed.
fn run_js(package: &str, script: &str) {
    run_js_in("tests/clients/js", package, script);
}

fn run_js_in(dir: &str, package: &str, script: &str) {
    let installed = repo_root().join(dir).join("node_modules").join(package);
    assert!(
        installed.exists(),
        "{package} is not installed: run the suite with scripts/test (scripts/setup-test-env runs npm ci in {dir})"
    );
    run_client("node", script, dir);
}

#[test]
fn openfeature_javascript_ofrep_providers() {
    run_js("@openfeature/ofrep-web-provider", "ofrep_clients.mjs");
}

// The published GrowthBook JavaScript SDK: local evaluation equal to the server's for 300 users × 8 features, a
// change over the `/sub` stream within a second without a refetch, and an encrypted payload.
#[test]
fn growthbook_javascript_sdk_streams_and_agrees() {
    run_js("@growthbook/growthbook", "growthbook_js.mjs");
}

// The published PostHog Node SDK: a session sent gzip-compressed to /batch/ and read back through the native API,
// remote flag evaluation (values, variants, payloads, caller and stored person and group properties, the newer
// evaluateFlags), `$feature_flag_called` captured once per (user, flag, value).
#[test]
fn posthog_node_session_and_remote_flags() {
    run_js("posthog-node", "posthog_node.mjs");
}

// The published PostHog browser SDK (posthog-js) in Debian's Chromium, embedded in a page of another origin: its
// remote configuration, flags from /flags (before and after identify), pageviews, identify and a custom event read
// back under one person; no console error.
#[test]
fn posthog_js_in_a_browser() {
    run_js_in("tests/browser", "posthog-js", "posthog_js.mjs");
}
