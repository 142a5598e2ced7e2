//! The web dashboard against a real `flywheel serve`: first the answers' headers (CSP and security headers,
//! client routes served `index.html`, immutable versioned assets, gzip, 304 revalidation), then
//! `tests/browser/dashboard.mjs` driving Debian's Chromium with playwright-core and axe-core (pinned in
//! tests/browser/package-lock.json; `scripts/setup-test-env` installs them and Chromium), and
//! `tests/browser/analytics.mjs` on a `flywheel generate` history (insights, dashboards, experiments, persons, growth,
//! settings). The scripts fail on any broken check, serious accessibility violation, uncaught error or CSP violation;
//! so do these tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{init, repo_root, Serve, BIN};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One GET: status, headers (lower-case names) and the raw body.
fn fetch(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
}

#[test]
fn dashboard_pages_are_served_with_strict_headers_and_cached_assets() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    for path in [
        "/",
        "/app",
        "/app/signin",
        "/app/projects/1/flags/new-checkout/test",
    ] {
        let (status, h, body) = fetch(&serve.addr, path, &[]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&h, "content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(header(&h, "content-security-policy"), Some(CSP), "{path}");
        assert_eq!(header(&h, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&h, "referrer-policy"), Some("no-referrer"));
        assert_eq!(header(&h, "cache-control"), Some("no-cache"));
        let html = String::from_utf8(body).unwrap();
        assert!(
            html.contains("<script type=\"module\" src=\"/assets/"),
            "{html}"
        );
        assert!(!html.contains("{{"), "placeholders filled: {html}");
    }
    let (_, _, body) = fetch(&serve.addr, "/", &[]);
    let html = String::from_utf8(body).unwrap();
    let marker = "rel=\"stylesheet\" href=\"";
    let css_at = html.find(marker).unwrap() + marker.len();
    let css: String = html[css_at..].chars().take_while(|c| *c != '"').collect();
    assert!(
        css.starts_with("/assets/") && css.ends_with("/app.css"),
        "{css}"
    );
    let (status, h, body) = fetch(&serve.addr, &css, &[("Accept-Encoding", "gzip, br")]);
    assert_eq!(status, 200, "{css}");
    assert_eq!(header(&h, "content-encoding"), Some("gzip"));
    assert_eq!(
        header(&h, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(body[..2], [0x1f, 0x8b], "a gzip body");
    let etag = header(&h, "etag").unwrap().to_owned();
    let (status, h, body) = fetch(
        &serve.addr,
        &css,
        &[("Accept-Encoding", "gzip"), ("If-None-Match", &etag)],
    );
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    let (status, h, _) = fetch(&serve.addr, &css, &[]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-encoding"),
        None,
        "identity without Accept-Encoding"
    );
    let (status, h, body) = fetch(&serve.addr, "/assets/0/js/nope.js", &[]);
    assert_eq!(status, 404);
    assert!(header(&h, "content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(String::from_utf8_lossy(&body).contains("not_found"));
    // The API keeps its own, stricter policy.
    let (_, h, _) = fetch(&serve.addr, "/api/v1/auth/me", &[]);
    assert_eq!(
        header(&h, "content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert!(serve.terminate().success());
}

/// Fails the test with a clear message when the browser test tools are missing (never a silent skip).
fn browser_tools() -> PathBuf {
    let dir_js = repo_root().join("tests/browser");
    assert!(
        dir_js.join("node_modules/playwright-core").exists() && dir_js.join("node_modules/axe-core").exists(),
        "playwright-core and axe-core are not installed: run the suite with scripts/test (scripts/setup-test-env runs \
         npm ci in tests/browser)"
    );
    assert!(
        chromium().exists(),
        "{} is missing: scripts/setup-test-env installs Debian's chromium (apt-get install chromium, as root)",
        chromium().display()
    );
    dir_js
}

fn artifacts() -> PathBuf {
    std::env::var("FLYWHEEL_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("flywheel-dashboard-artifacts"))
}

#[test]
fn dashboard_in_chromium_sign_in_flags_roles_and_accessibility() {
    let dir_js = browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let keys = init(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let artifacts = artifacts();
    let out = Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&dir_js)
        .env("FLYWHEEL_URL", serve.url())
        .env("FLYWHEEL_BOOTSTRAP_KEY", &keys.personal_key)
        .env("FLYWHEEL_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dashboard.mjs failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    eprintln!("{stdout}");
    assert!(serve.terminate().success());
}

/// The analytics pages on a generated history: 30,000 events of 3,000 persons over the last 30 days (small enough
/// for a debug build; `scripts/bench-dashboard` measures the same pages on a million events).
#[test]
fn dashboard_analytics_in_chromium_on_generated_data() {
    let dir_js = browser_tools();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["generate", "--data-dir"])
        .arg(dir.path())
        .args(["--events", "30000", "--persons", "3000", "--seed", "7"])
        .args(["--days", "30", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let out = Command::new("node")
        .arg("analytics.mjs")
        .current_dir(&dir_js)
        .env("FLYWHEEL_URL", serve.url())
        .env(
            "FLYWHEEL_BOOTSTRAP_KEY",
            summary["personal_api_key"].as_str().unwrap(),
        )
        .env(
            "FLYWHEEL_PROJECT_KEY",
            summary["project_api_key"].as_str().unwrap(),
        )
        .env(
            "FLYWHEEL_PROJECT_ID",
            summary["project_id"].as_i64().unwrap().to_string(),
        )
        .env("FLYWHEEL_ARTIFACTS", artifacts())
        .env("CHROMIUM", chromium())
        .env_remove("FLYWHEEL_BENCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "analytics.mjs failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    eprintln!("{stdout}");
    assert!(serve.terminate().success());
}
