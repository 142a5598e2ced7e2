//! The web dashboard: plain HTML, CSS and JavaScript modules from `dashboard/` at the repository root, embedded in
//! the binary by `build.rs` (no Node toolchain, no bundler) and served by the same server as the API.
//!
//! - `GET /` and `GET /app/…` answer `index.html` (the dashboard routes on the client); `index.html` names its assets
//!   under `/assets/<version>/…`, where the version is a hash of every embedded file, so asset answers are
//!   `immutable` and a new binary changes every asset URL at once. Relative imports between modules stay under the
//!   same version. `index.html` itself is `no-cache` with an ETag (304 when unchanged).
//! - Answers are gzip-compressed (computed once, on first use) when the client accepts it and it is smaller.
//! - Every dashboard answer carries a strict Content-Security-Policy (scripts, styles and connections from this
//!   origin only; no inline script or style; no framing), `X-Frame-Options: DENY`, `nosniff` and `no-referrer`.
//!   The dashboard talks to the native API with the session cookie and the `X-CSRF-Token` header.
//! - `FLYWHEEL_DASHBOARD_DIR=<dir>` serves the files from disk instead (read on every request, `no-cache`): edit the
//!   JavaScript, reload the page, no rebuild.
//!
//! These routes are pages, not API operations: they are registered with path constants so the OpenAPI coverage
//! test (which scans for `.route("…"` literals) leaves them out.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// The Content-Security-Policy of every dashboard answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The placeholder in `index.html` replaced by the versioned asset prefix (`/assets/<version>`).
const ASSETS_PLACEHOLDER: &str = "{{ASSETS}}";
/// The placeholder in `index.html` replaced by a `modulepreload` link per JavaScript module, so the browser fetches
/// every module at once instead of discovering the imports one level at a time.
const PRELOAD_PLACEHOLDER: &str = "{{PRELOAD}}";

const ROOT: &str = "/";
const APP: &str = "/app";
const APP_ROUTES: &str = "/app/{*route}";
const ASSETS: &str = "/assets/{version}/{*path}";

/// One file ready to serve.
struct Asset {
    content_type: &'static str,
    raw: bytes::Bytes,
    gzip: Option<bytes::Bytes>,
    etag: String,
}

impl Asset {
    fn new(path: &str, raw: Vec<u8>) -> Asset {
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&raw))[..20]);
        let gzip = compressible(path).then(|| gzip(&raw)).flatten();
        Asset {
            content_type: content_type(path),
            raw: raw.into(),
            gzip: gzip.map(Into::into),
            etag,
        }
    }
}

/// The dashboard's files: `index.html` (with its asset prefix filled in) and the assets by path.
struct Bundle {
    version: String,
    index: Asset,
    assets: HashMap<String, Asset>,
    /// Served from disk (development): nothing is cached by the browser.
    dev: bool,
}

impl Bundle {
    fn build(files: Vec<(String, Vec<u8>)>, dev: bool) -> Bundle {
        let version = if dev {
            "dev".to_owned()
        } else {
            let mut h = Sha256::new();
            for (path, bytes) in &files {
                h.update((path.len() as u64).to_le_bytes());
                h.update(path.as_bytes());
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(bytes);
            }
            hex::encode(h.finalize())[..12].to_owned()
        };
        let preload: String = files
            .iter()
            .filter(|(p, _)| p.ends_with(".js"))
            .map(|(p, _)| format!("<link rel=\"modulepreload\" href=\"/assets/{version}/{p}\">\n"))
            .collect();
        let mut index = None;
        let mut assets = HashMap::new();
        for (path, bytes) in files {
            if path == "index.html" {
                let html = String::from_utf8_lossy(&bytes)
                    .replace(PRELOAD_PLACEHOLDER, preload.trim_end())
                    .replace(ASSETS_PLACEHOLDER, &format!("/assets/{version}"));
                index = Some(Asset::new(&path, html.into_bytes()));
            } else {
                assets.insert(path.clone(), Asset::new(&path, bytes));
            }
        }
        let index = index.unwrap_or_else(|| {
            Asset::new(
                "index.html",
                b"<!doctype html><title>Flywheel</title><p>The dashboard is missing from this build.</p>".to_vec(),
            )
        });
        Bundle {
            version,
            index,
            assets,
            dev,
        }
    }
}

fn embedded_bundle() -> &'static Arc<Bundle> {
    static BUNDLE: OnceLock<Arc<Bundle>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        Arc::new(Bundle::build(
            embedded::ASSETS
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_vec()))
                .collect(),
            false,
        ))
    })
}

/// The directory named by `FLYWHEEL_DASHBOARD_DIR`, if any (read once).
fn dev_dir() -> Option<&'static std::path::Path> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os("FLYWHEEL_DASHBOARD_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
    })
    .as_deref()
}

fn read_dir_files(root: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                out.push((rel, std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// The bundle to serve: the embedded one, or the development directory read afresh.
async fn bundle() -> Result<Arc<Bundle>, ApiError> {
    match dev_dir() {
        None => Ok(embedded_bundle().clone()),
        Some(dir) => {
            let dir = dir.to_owned();
            let files = tokio::task::spawn_blocking(move || read_dir_files(&dir))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| {
                    ApiError::internal(format!("FLYWHEEL_DASHBOARD_DIR cannot be read: {e}"))
                })?;
            Ok(Arc::new(Bundle::build(files, true)))
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn compressible(path: &str) -> bool {
    matches!(
        path.rsplit_once('.').map(|(_, ext)| ext),
        Some("html" | "js" | "mjs" | "css" | "svg" | "json" | "txt")
    )
}

/// Gzip at the best compression, or `None` when it would not be smaller.
fn gzip(raw: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(raw).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < raw.len()).then_some(out)
}

/// Whether `Accept-Encoding` accepts gzip (a `q=0` refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// The security headers of every dashboard answer.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// An asset's answer: 304 when the client holds this representation, else the (possibly gzipped) body.
fn answer(asset: &Asset, headers: &HeaderMap, cache: &'static str) -> Response {
    let gz = asset.gzip.as_ref().filter(|_| accepts_gzip(headers));
    // Each representation has its own validator.
    let etag = match gz {
        Some(_) => format!("{}-gz\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.clone(),
    };
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == etag || t == "*"
        });
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = gz.unwrap_or(&asset.raw).clone();
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if gz.is_some() {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    secure(h);
    resp
}

async fn index(headers: HeaderMap) -> Result<Response, ApiError> {
    let bundle = bundle().await?;
    Ok(answer(&bundle.index, &headers, "no-cache"))
}

async fn app_route(headers: HeaderMap, Path(_route): Path<String>) -> Result<Response, ApiError> {
    index(headers).await
}

async fn asset(
    headers: HeaderMap,
    Path((version, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bundle = bundle().await?;
    let Some(asset) = bundle.assets.get(path.as_str()) else {
        return Err(ApiError::not_found(format!(
            "the dashboard has no asset `{path}`"
        )));
    };
    // Current assets never change under their URL; an older version's URL gets today's file, revalidated.
    let cache = if !bundle.dev && version == bundle.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok(answer(asset, &headers, cache))
}

/// The dashboard's pages and assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(ROOT, get(index))
        .route(APP, get(index))
        .route(APP_ROUTES, get(app_route))
        .route(ASSETS, get(asset))
}

/// What the embedded dashboard ships: (files, bytes, gzip bytes) of its JavaScript and CSS.
pub fn shipped_script_and_style() -> (usize, usize, usize) {
    let b = embedded_bundle();
    let mut files = 0;
    let (mut raw, mut gz) = (0, 0);
    for (path, a) in &b.assets {
        if path.ends_with(".js") || path.ends_with(".css") {
            files += 1;
            raw += a.raw.len();
            gz += a.gzip.as_ref().map_or(a.raw.len(), |g| g.len());
        }
    }
    (files, raw, gz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_negotiated() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, deflate"),
        );
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("*"));
        assert!(accepts_gzip(&h));
    }

    #[test]
    fn the_embedded_dashboard_is_complete_and_small() {
        let b = embedded_bundle();
        let html = String::from_utf8_lossy(&b.index.raw);
        assert!(
            !html.contains(ASSETS_PLACEHOLDER) && !html.contains(PRELOAD_PLACEHOLDER),
            "placeholders filled"
        );
        assert!(
            html.contains(&format!("/assets/{}/js/router.js", b.version)),
            "modules are preloaded"
        );
        assert!(
            html.contains(&format!("/assets/{}/", b.version)),
            "index.html names its versioned assets"
        );
        // No inline script or style: the CSP forbids them.
        assert!(!html.contains("<style"), "no inline style element");
        assert!(!html.contains(" style="), "no inline style attribute");
        for tag in html.split("<script").skip(1) {
            assert!(tag.contains("src="), "no inline script: <script{tag}");
        }
        // Every asset index.html names exists.
        for part in html.split(&format!("/assets/{}/", b.version)).skip(1) {
            let path: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(b.assets.contains_key(&path), "index.html names {path}");
        }
        let (files, raw, gz) = shipped_script_and_style();
        assert!(files >= 5, "{files} script and style files");
        assert!(gz < 300 * 1024, "{gz} bytes of gzip JS+CSS (raw {raw})");
    }

    #[test]
    fn every_module_import_names_an_embedded_file() {
        let b = embedded_bundle();
        let from = regex::Regex::new(r#"from\s*['"]([^'"]+)['"]"#).unwrap();
        let mut checked = 0;
        for (path, a) in &b.assets {
            if !path.ends_with(".js") {
                continue;
            }
            let text = String::from_utf8_lossy(&a.raw);
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            // The module's header: comments and import statements, up to the first other line (code snippets in
            // template strings further down are not imports).
            let mut header = String::new();
            let mut in_import = false;
            for line in text.lines() {
                let t = line.trim();
                if in_import || t.starts_with("import ") {
                    header.push_str(line);
                    header.push('\n');
                    in_import = !t.ends_with(';');
                } else if !(t.is_empty() || t.starts_with("//")) {
                    break;
                }
            }
            for cap in from.captures_iter(&header) {
                let spec = &cap[1];
                assert!(
                    spec.starts_with("./") || spec.starts_with("../"),
                    "{path}: import `{spec}` must be relative"
                );
                let mut parts: Vec<&str> = if dir.is_empty() {
                    vec![]
                } else {
                    dir.split('/').collect()
                };
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    b.assets.contains_key(&target),
                    "{path}: import `{spec}` → `{target}` is not embedded"
                );
                checked += 1;
            }
        }
        assert!(checked > 5, "{checked} imports checked");
    }

    #[test]
    fn answers_are_cached_revalidated_and_secured() {
        let a = Asset::new("app.js", b"console.log('x');".repeat(50));
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let r = answer(&a, &h, "no-cache");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        let etag = r.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            answer(&a, &h, "no-cache").status(),
            StatusCode::NOT_MODIFIED
        );
        // The identity representation has another validator.
        h.remove(header::ACCEPT_ENCODING);
        assert_eq!(answer(&a, &h, "no-cache").status(), StatusCode::OK);
    }
}
