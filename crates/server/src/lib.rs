//! Flywheel's HTTP server: capture (PostHog, Segment), identity, the native API and operations endpoints.
//!
//! [`Server::start`] opens the storage in a data directory (SQLite metadata, the embedded engine's intake log),
//! replays what derived state has not applied yet, and serves; [`Server::shutdown`] stops accepting, drains
//! in-flight requests, commits the last batches and checkpoints.

pub mod accounts;
pub mod api;
pub mod auth;
pub mod capture;
pub mod clickhouse_ship;
pub mod cohorts;
pub mod dashboard;
pub mod dashboards;
pub mod definitions;
pub mod edge;
pub mod erasure_sync;
pub mod error;
pub mod event_hooks;
pub mod events_table;
pub mod experiment_results;
pub mod experiments;
pub mod exposure;
pub mod features;
pub mod flag_sync;
pub mod fraud;
pub mod gdpr;
pub mod growth;
pub mod growth_graph;
pub mod growth_metrics;
pub mod identity;
pub mod insight_filters;
pub mod insight_render;
pub mod insights;
pub mod insights_clickhouse;
pub mod invitations;
pub mod keys;
pub mod limits;
pub mod metrics_names;
pub mod migrate;
pub mod ofrep;
pub mod openapi;
pub mod ops;
pub mod person_search;
pub mod planning;
pub mod posthog_flags;
pub mod pql;
pub mod privacy;
pub mod projects;
pub mod referral_consumer;
pub mod retention;
pub mod rollouts;
pub mod serving;
pub mod state;
pub mod sticky;
pub mod team;
pub mod tls;
pub mod trials;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use flywheel_engine::table::EventTables;
use flywheel_engine::{Intake, IntakeConfig, SyncMode};
use flywheel_store::{Bootstrap, Store};
use tokio::sync::watch;
use tower_http::cors::CorsLayer;

pub use state::{AppState, Clock, SystemClock};

/// Server configuration (the CLI fills it from flags, environment and the TOML file).
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub sync: SyncMode,
    pub segment_bytes: u64,
    pub capture_limits: flywheel_capture::Limits,
    /// How many recent event uuids per node are remembered to drop SDK retries.
    pub dedupe_window: usize,
    /// How long a read waits for identity state to catch up with acknowledged writes.
    pub read_barrier_timeout: Duration,
    /// Time a request may take before it is answered 408/503.
    pub request_timeout: Duration,
    /// Requests per second per credential on the flag-serving endpoints (`0`: unlimited).
    pub sdk_rate_limit: u32,
    /// Captured events per second per project (`0`: unlimited).
    pub capture_events_per_second: u32,
    /// Native API requests per second per credential (`0`: unlimited).
    pub api_requests_per_second: u32,
    /// Native API requests per second per project (`0`: unlimited).
    pub project_api_requests_per_second: u32,
    /// How often the guarded-rollout watcher checks running rollouts.
    pub rollout_check_interval: Duration,
    /// How often rewards whose hold ended are approved.
    pub reward_check_interval: Duration,
    /// How often the PQL scorer scores every live model.
    pub pql_check_interval: Duration,
    /// How often projects' data retention drops their old events.
    pub retention_check_interval: Duration,
    /// Networks webhooks may call although they are not public (loopback, private…); empty: public addresses only.
    pub webhook_allow: Vec<webhooks::Cidr>,
    /// The first retry's wait; each later one doubles (capped at 6 h), with jitter.
    pub webhook_retry_base: Duration,
    /// Attempts before a message is dead (the dead-letter list).
    pub webhook_max_attempts: u32,
    /// How often the delivery worker looks for new messages.
    pub webhook_poll: Duration,
    /// What capture keeps of IP addresses, and the properties it scrubs.
    pub privacy: privacy::Privacy,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// ClickHouse's HTTP URL: ship every event there too (`clickhouse_ship`) and answer insights from it
    /// (`insights_clickhouse`).
    pub events_url: Option<String>,
    /// The ClickHouse database of the events.
    pub events_database: String,
    /// PostgreSQL URL of the metadata, shared by every node (`None`: the data directory's SQLite file).
    pub metadata_url: Option<String>,
    /// Most bytes of intake log not yet in ClickHouse before capture answers 503.
    pub spool_limit_bytes: u64,
}

impl Config {
    /// Defaults for a data directory; used by tests.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sync: SyncMode::Group,
            segment_bytes: 64 * 1024 * 1024,
            capture_limits: flywheel_capture::Limits::default(),
            dedupe_window: 1_000_000,
            read_barrier_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            sdk_rate_limit: 0,
            capture_events_per_second: 0,
            api_requests_per_second: 0,
            project_api_requests_per_second: 0,
            rollout_check_interval: Duration::from_secs(30),
            reward_check_interval: Duration::from_secs(60),
            pql_check_interval: Duration::from_secs(60),
            retention_check_interval: Duration::from_secs(3600),
            webhook_allow: Vec::new(),
            webhook_retry_base: Duration::from_secs(10),
            webhook_max_attempts: 18,
            webhook_poll: Duration::from_millis(250),
            privacy: privacy::Privacy::default(),
            tls: None,
            events_url: None,
            events_database: "flywheel".to_owned(),
            metadata_url: None,
            spool_limit_bytes: 10 * 1024 * 1024 * 1024,
        }
    }

    pub fn metadata_path(&self) -> PathBuf {
        self.data_dir.join("metadata.db")
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("events").join("wal")
    }

    /// Directory of the columnar segments.
    pub fn columnar_dir(&self) -> PathBuf {
        self.data_dir.join("events").join("columnar")
    }
}

/// Opens the metadata store of a data directory, creating the directory.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    match &config.metadata_url {
        Some(url) => {
            // Each node keeps its own intake log: its consumers' positions are its own in the shared database.
            let node = clickhouse_ship::node_id(&config.data_dir).with_context(|| {
                format!(
                    "cannot read or create {}/node-id",
                    config.data_dir.display()
                )
            })?;
            let store = Store::connect_postgres(url)
                .await
                .with_context(|| format!("cannot open metadata database {}", redact_url(url)))?;
            Ok(store.with_node(&node))
        }
        None => Store::open(&config.metadata_path()).await.with_context(|| {
            format!(
                "cannot open metadata database {}",
                config.metadata_path().display()
            )
        }),
    }
}

/// A URL without its password, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Creates the default organization and project when the store is empty.
pub async fn bootstrap_if_empty(store: &Store) -> anyhow::Result<Option<Bootstrap>> {
    Ok(store
        .bootstrap_if_empty("Default organization", "Default project")
        .await?)
}

/// The whole HTTP application for a state.
pub fn app(state: AppState) -> Router {
    let timeout = state.config.request_timeout;
    let sdk = capture::router()
        .route(
            "/api/features/{client_key}",
            axum::routing::get(serving::growthbook_payload),
        )
        .route(
            "/sub/{client_key}",
            axum::routing::get(serving::growthbook_stream),
        )
        .merge(posthog_flags::router())
        .merge(ofrep::router())
        // Browser SDKs must read the ETag (OFREP and GrowthBook revalidation), Retry-After and GrowthBook's
        // streaming flag cross-origin.
        .layer(CorsLayer::very_permissive().expose_headers([
            axum::http::header::ETAG,
            axum::http::header::RETRY_AFTER,
            serving::SSE_SUPPORT,
        ]));
    Router::new()
        .merge(sdk)
        .merge(api::router())
        .merge(projects::router())
        .merge(cohorts::router())
        .merge(experiments::router())
        .merge(rollouts::router())
        .merge(planning::router())
        .merge(growth::router())
        .merge(growth_graph::router())
        .merge(accounts::router())
        .merge(growth_metrics::router())
        .merge(invitations::router())
        .merge(pql::router())
        .merge(trials::router())
        .merge(dashboards::router())
        .merge(webhooks::router())
        .merge(openapi::router())
        .merge(gdpr::router())
        .merge(person_search::router())
        .merge(retention::router())
        .merge(keys::router())
        .merge(auth::router())
        .merge(team::router())
        .merge(features::router())
        .merge(ops::router())
        // The web dashboard's pages and assets (not API operations).
        .merge(dashboard::router())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    pub state: AppState,
    shutdown_tx: watch::Sender<bool>,
    serve_task: tokio::task::JoinHandle<std::io::Result<()>>,
    identity_task: tokio::task::JoinHandle<()>,
    tables_task: tokio::task::JoinHandle<()>,
    exposure_task: tokio::task::JoinHandle<()>,
    rollout_task: tokio::task::JoinHandle<()>,
    reward_task: tokio::task::JoinHandle<()>,
    pql_task: tokio::task::JoinHandle<()>,
    webhook_task: tokio::task::JoinHandle<()>,
    flag_sync_task: tokio::task::JoinHandle<()>,
    erasure_sync_task: tokio::task::JoinHandle<()>,
    event_hook_task: tokio::task::JoinHandle<()>,
    referral_task: tokio::task::JoinHandle<()>,
    sticky_task: tokio::task::JoinHandle<()>,
    retention_task: tokio::task::JoinHandle<()>,
    ship_task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Opens storage (recovering the intake log), starts the identity consumer and binds the listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        Self::start_with_store(config, store).await
    }

    pub async fn start_with_store(config: Config, store: Store) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        let intake_config = IntakeConfig {
            dir: config.wal_dir(),
            segment_bytes: config.segment_bytes,
            sync: config.sync,
            ..IntakeConfig::new(config.wal_dir())
        };
        let (intake, report) = tokio::task::spawn_blocking(move || Intake::open(intake_config))
            .await?
            .context("cannot open the event intake log")?;
        tracing::info!(
            segments = report.segments,
            batches = report.batches,
            truncated_bytes = report.truncated_bytes,
            end_lsn = report.end_lsn,
            "intake log recovered"
        );
        let columnar_dir = config.columnar_dir();
        let person_columns = columnar_dir.join("person-columns");
        let tables = tokio::task::spawn_blocking(move || EventTables::open(&columnar_dir))
            .await?
            .context("cannot open the columnar segments")?;
        let tables = Arc::new(tables);
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let (tables_tx, tables_rx) = watch::channel(0u64);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let rate_limits = limits::Limits::new(&config);
        let flags = Arc::new(serving::FlagRegistry::new(config.sdk_rate_limit));
        let identity_task = tokio::spawn(identity::run(
            store.clone(),
            intake.clone(),
            progress_tx,
            shutdown_rx.clone(),
            flags.subjects.clone(),
            tables.clone(),
        ));
        let tables_task = tokio::spawn(events_table::run(
            store.clone(),
            intake.clone(),
            tables.clone(),
            progress_rx.clone(),
            tables_tx,
            flags.subjects.clone(),
        ));
        let compiled = flags
            .warm(&store)
            .await
            .map_err(|e| anyhow::anyhow!("compiling feature flags: {}", e.message))?;
        tracing::info!(projects = compiled, "feature flags compiled");
        let (exposures, exposure_task) = exposure::Exposures::start(intake.clone());
        let (sticky, sticky_task) = sticky::StickyStore::open(store.clone())
            .await
            .context("cannot load sticky assignments")?;
        // Shipping to ClickHouse: the node's name and the spool's bound (the log since this start counts as unshipped
        // until ClickHouse says where this node stands).
        let shipping = match &config.events_url {
            Some(url) => {
                let client = flywheel_clickhouse::Client::new(url)
                    .map_err(|e| anyhow::anyhow!("--events-url {url}: {e}"))?;
                let node = clickhouse_ship::node_id(&config.data_dir)
                    .context("cannot read or make the node id")?;
                let spool = Arc::new(clickhouse_ship::Spool::new(
                    config.spool_limit_bytes,
                    intake.committed_lsn(),
                ));
                Some((client, node, spool))
            }
            None => None,
        };
        let spool = shipping.as_ref().map(|(_, _, s)| s.clone());
        let clickhouse = shipping
            .as_ref()
            .map(|(client, _, _)| insights_clickhouse::Reader {
                client: client.clone(),
                db: config.events_database.clone(),
            });
        // The flag endpoints' filter of known distinct ids is filled by the insights consumer's identity load.
        let state = AppState::new(state::Shared {
            dedupe: Arc::new(state::Dedupe::new(config.dedupe_window)),
            config: Arc::new(config),
            store,
            intake,
            tokens: Arc::new(state::TokenCache::default()),
            flags,
            exposures: Arc::new(exposures),
            clock: Arc::new(SystemClock),
            identity_progress: progress_rx,
            tables,
            tables_progress: tables_rx,
            insights: Arc::new(crate::insights::InsightsCache::with_columns_dir(
                person_columns,
            )),
            metrics: ops::prometheus(),
            shutdown: shutdown_rx.clone(),
            rollouts: Arc::new(rollouts::Checks::default()),
            sticky: Arc::new(sticky),
            growth_epoch: Default::default(),
            webhook_epoch: Default::default(),
            limits: rate_limits,
            policies: Default::default(),
            click_salt: Default::default(),
            login_limiter: Default::default(),
            spool,
            clickhouse,
        });
        experiments::refresh_sticky_all(&state)
            .await
            .map_err(|e| anyhow::anyhow!("reading running experiments: {}", e.message))?;
        let rollout_task = tokio::spawn(rollouts::run(
            state.clone(),
            state.config.rollout_check_interval,
        ));
        let reward_task = tokio::spawn(growth::run_holds(
            state.clone(),
            state.config.reward_check_interval,
        ));
        let pql_task = tokio::spawn(pql::run_scorer(
            state.clone(),
            state.config.pql_check_interval,
        ));
        let webhook_task = tokio::spawn(webhooks::run(state.clone()));
        // Shared metadata: flags and SDK keys changed by other nodes (nothing to do on SQLite).
        let flag_sync_task = tokio::spawn(flag_sync::run(
            state.clone(),
            Duration::from_secs(2),
            shutdown_rx.clone(),
        ));
        // Shared metadata: erasures run on other nodes, applied to this node's own events.
        let erasure_sync_task = tokio::spawn(erasure_sync::run(
            state.clone(),
            Duration::from_secs(1),
            shutdown_rx.clone(),
        ));
        let retention_task = tokio::spawn(retention::run(
            state.clone(),
            state.config.retention_check_interval,
        ));
        let event_hook_task = tokio::spawn(event_hooks::run(
            state.clone(),
            state.intake.clone(),
            state.identity_progress.clone(),
        ));
        let referral_task = tokio::spawn(referral_consumer::run(
            state.clone(),
            state.intake.clone(),
            state.identity_progress.clone(),
        ));
        let ship_task = shipping.map(|(client, node, spool)| {
            tokio::spawn(clickhouse_ship::run(
                state.clone(),
                spool,
                client,
                state.config.events_database.clone(),
                node,
            ))
        });
        let listener = tokio::net::TcpListener::bind(state.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.listen))?;
        let local_addr = listener.local_addr()?;
        let serve_task = match &state.config.tls {
            Some((cert, key)) => {
                let acceptor = tls::acceptor(cert, key)?;
                tokio::spawn(tls::serve(
                    listener,
                    acceptor,
                    app(state.clone()),
                    shutdown_rx,
                ))
            }
            None => {
                let app = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
                let mut stop = shutdown_rx;
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })
                        .await
                })
            }
        };
        tracing::info!(%local_addr, elapsed_ms = started.elapsed().as_millis() as u64, "flywheel is ready");
        Ok(Self {
            local_addr,
            state,
            shutdown_tx,
            serve_task,
            identity_task,
            tables_task,
            exposure_task,
            rollout_task,
            reward_task,
            pql_task,
            webhook_task,
            flag_sync_task,
            erasure_sync_task,
            event_hook_task,
            referral_task,
            sticky_task,
            retention_task,
            ship_task,
        })
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests (their batches commit), let the identity
    /// consumer apply everything, write checkpoints, close storage.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown_tx.send(true);
        // A check in flight finishes its writes (each is one transaction) or is cut before them.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.rollout_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.reward_task).await;
        // Its checkpoint trails what it processed: a restart replays at most a chunk, idempotently.
        self.referral_task.abort();
        // Each pass writes in one transaction: cutting it loses nothing (the next pass scores again).
        self.pql_task.abort();
        // A retention pass in progress finishes (its files are replaced whole or not at all either way).
        let _ = tokio::time::timeout(Duration::from_secs(60), self.retention_task).await;
        // An attempt cut here is not recorded: it is made again after the restart (receivers deduplicate by
        // message id).
        self.webhook_task.abort();
        self.flag_sync_task.abort();
        self.erasure_sync_task.abort();
        // Announcing is idempotent per chunk only up to duplicates: a cut chunk is announced again (receivers
        // deduplicate by the event's uuid).
        self.event_hook_task.abort();
        // Shipping is exactly once whenever it is cut: the next start asks ClickHouse what arrived.
        if let Some(task) = self.ship_task {
            task.abort();
        }
        match tokio::time::timeout(Duration::from_secs(30), self.serve_task).await {
            Ok(joined) => joined?.context("HTTP server failed")?,
            Err(_) => tracing::warn!("in-flight requests did not finish within 30 s"),
        }
        // Exposures recorded by the last requests reach the log before it closes.
        self.state.exposures.flush().await;
        self.exposure_task.abort();
        self.state.sticky.flush().await;
        self.sticky_task.abort();
        self.state
            .intake
            .shutdown()
            .await
            .context("closing the intake log")?;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.identity_task).await;
        // The insights consumer appends what identity applied last, then seals its tail into segments.
        let _ = tokio::time::timeout(Duration::from_secs(60), self.tables_task).await;
        // Person-property columns brought up to date since they were saved: the next start reads less.
        self.state.insights.save_columns().await;
        self.state.store.close().await;
        Ok(())
    }
}
