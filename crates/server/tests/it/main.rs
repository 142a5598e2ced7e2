//! Integration tests of the server, driven through the real router (no network) on a real data directory.

mod api;
mod authz;
mod capture;
mod clickhouse;
mod clickhouse_insights;
mod dashboards;
mod devices;
mod erasure;
mod experiments;
mod features;
mod gdpr;
mod growth;
mod growth_metrics;
mod keys;
mod limits;
mod malformed;
mod migrate;
mod person_search;
mod pql;
mod retention;
mod rollouts;
mod scale_out;
mod serving;
mod tls;
mod users;
mod webhooks;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use flywheel_server::{Config, Server};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub struct TestServer {
    pub server: Option<Server>,
    pub project_id: i64,
    pub token: String,
    pub personal_key: String,
    pub organization_id: i64,
    pub dir: tempfile::TempDir,
}

/// The metadata backend of the suite: `FLYWHEEL_TEST_METADATA=postgres` runs every test server on a database of
/// its own on one throwaway PostgreSQL per test binary (`scripts/test` runs the suite both ways); unset or
/// `sqlite`: the data directory's SQLite file.
pub fn test_metadata_url() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DATABASES: AtomicUsize = AtomicUsize::new(0);
    match std::env::var("FLYWHEEL_TEST_METADATA").as_deref() {
        Err(_) | Ok("" | "sqlite") => None,
        Ok("postgres") => {
            let pg = flywheel_store::test_support::TestPostgres::shared()
                .expect("FLYWHEEL_TEST_METADATA=postgres: cannot start PostgreSQL");
            let name = format!("t{}", DATABASES.fetch_add(1, Ordering::Relaxed));
            Some(
                pg.create_database(&name)
                    .expect("cannot create a test database"),
            )
        }
        Ok(other) => panic!("FLYWHEEL_TEST_METADATA must be sqlite or postgres, not {other}"),
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().to_path_buf());
        config.metadata_url = test_metadata_url();
        adjust(&mut config);
        let store = flywheel_server::open_store(&config).await.unwrap();
        let boot = flywheel_server::bootstrap_if_empty(&store)
            .await
            .unwrap()
            .unwrap();
        let server = Server::start_with_store(config, store).await.unwrap();
        Self {
            server: Some(server),
            project_id: boot.project_id,
            token: boot.project_api_key,
            personal_key: boot.personal_api_key,
            organization_id: boot.organization_id,
            dir,
        }
    }

    /// Another node of `first`'s deployment: the same metadata database (PostgreSQL), its own data directory.
    pub async fn another_node(first: &TestServer, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().to_path_buf());
        config.metadata_url = first.server().state.config.metadata_url.clone();
        assert!(config.metadata_url.is_some(), "nodes share PostgreSQL");
        adjust(&mut config);
        let store = flywheel_server::open_store(&config).await.unwrap();
        assert!(
            flywheel_server::bootstrap_if_empty(&store)
                .await
                .unwrap()
                .is_none(),
            "the first node bootstrapped the shared database"
        );
        let server = Server::start_with_store(config, store).await.unwrap();
        Self {
            server: Some(server),
            project_id: first.project_id,
            token: first.token.clone(),
            personal_key: first.personal_key.clone(),
            organization_id: first.organization_id,
            dir,
        }
    }

    /// A server shipping its events to (and answering insights from) the ClickHouse `ch`, database `db`.
    pub async fn on_clickhouse(ch: &flywheel_clickhouse::test_support::Server, db: &str) -> Self {
        let (url, db) = (ch.url.clone(), db.to_owned());
        Self::start_with(|c| {
            c.events_url = Some(url);
            c.events_database = db;
        })
        .await
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Stops gracefully and starts again on the same data directory.
    pub async fn restart(&mut self) {
        let server = self.server.take().unwrap();
        let config = (*server.state.config).clone();
        server.shutdown().await.unwrap();
        self.server = Some(Server::start(config).await.unwrap());
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = req;
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5555))));
        let app = flywheel_server::app(self.server().state.clone());
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, json, headers)
    }

    pub async fn post(&self, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let (s, v, _) = self.send(req).await;
        (s, v)
    }

    pub async fn get_api(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        let (s, v, _) = self.send(req).await;
        (s, v)
    }

    pub async fn events(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get_api(
                &format!("/api/v1/projects/{}/events?{query}", self.project_id),
                &self.personal_key,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["results"].as_array().unwrap().clone()
    }

    pub async fn person(&self, distinct_id: &str) -> (StatusCode, Value) {
        self.get_api(
            &format!("/api/v1/projects/{}/persons/{distinct_id}", self.project_id),
            &self.personal_key,
        )
        .await
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A small deterministic generator (64-bit LCG), so that tests feeding several servers give each the same events
/// without a dependency.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}
