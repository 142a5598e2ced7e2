//! `flywheel users`: list, and an operator's password reset beside a running server.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{http, init, Serve, BIN};

fn users(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let dir = dir.to_str().unwrap();
    users_with(&[args, &["--data-dir", dir]].concat(), stdin)
}

/// `flywheel users <args>` with `stdin`: (success, stdout, stderr).
fn users_with(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("users")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn login(addr: &str, password: &str) -> u16 {
    let body = serde_json::json!({"email": "ops@example.com", "password": password}).to_string();
    http(
        addr,
        "POST",
        "/api/v1/auth/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
    .0
}

#[test]
fn an_operator_lists_users_and_resets_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let (ok, out, _) = users(dir.path(), &["list"], "");
    assert!(ok && out.contains("no users yet"), "{out}");

    let mut serve = Serve::start(dir.path(), &[]);
    serve.wait_ready();
    let addr = serve.addr.clone();
    let auth = format!("Bearer {}", keys.personal_key);
    let body = serde_json::json!({"email": "ops@example.com", "password": "the first password"})
        .to_string();
    let (status, answer) = http(
        &addr,
        "POST",
        "/api/v1/auth/setup",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(login(&addr, "the first password"), 200);

    let (ok, out, _) = users(dir.path(), &["list"], "");
    assert!(ok, "{out}");
    assert!(
        out.contains("ops@example.com") && out.contains(": owner"),
        "{out}"
    );

    // Bad input is refused with a message; nothing changes.
    let (ok, _, err) = users(
        dir.path(),
        &["set-password", "--email", "ops@example.com"],
        "short\n",
    );
    assert!(!ok && err.contains("10 to 256 characters"), "{err}");
    let (ok, _, err) = users(
        dir.path(),
        &["set-password", "--email", "nobody@example.com"],
        "long enough password\n",
    );
    assert!(!ok && err.contains("no user has the email"), "{err}");
    assert_eq!(login(&addr, "the first password"), 200);

    // The reset works while the server runs.
    let (ok, _, err) = users(
        dir.path(),
        &["set-password", "--email", "ops@example.com"],
        "the operator's new one\n",
    );
    assert!(ok, "{err}");
    assert_eq!(login(&addr, "the first password"), 401);
    assert_eq!(login(&addr, "the operator's new one"), 200);
    serve.terminate();
}

/// With `--metadata-url` the commands work on a scaled-out deployment's PostgreSQL (no data directory involved).
#[test]
fn users_work_on_the_shared_postgres_metadata() {
    let url = flywheel_store::test_support::TestPostgres::shared()
        .unwrap()
        .create_database("cli_users")
        .unwrap();
    let run = |args: &[&str], stdin: &str| {
        users_with(
            &[
                args,
                &[
                    "--metadata-url",
                    &url,
                    "--data-dir",
                    "/nonexistent/flywheel",
                ],
            ]
            .concat(),
            stdin,
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(flywheel_store::Store::connect_postgres(&url))
        .unwrap();
    rt.block_on(store.create_user("ops@example.com", "Ops", "not-a-hash"))
        .unwrap()
        .unwrap();
    let (ok, out, err) = run(&["list"], "");
    assert!(ok && out.contains("ops@example.com"), "{out} {err}");
    let (ok, _, err) = run(
        &["set-password", "--email", "ops@example.com"],
        "a brand new password\n",
    );
    assert!(ok, "{err}");
    let user = rt
        .block_on(store.user_by_email("ops@example.com"))
        .unwrap()
        .unwrap();
    assert!(
        user.password_hash.starts_with("$argon2id$"),
        "the password was set: {}",
        user.password_hash
    );
    assert!(!std::path::Path::new("/nonexistent/flywheel").exists());
}
