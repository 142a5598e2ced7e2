//! `flywheel serve` configuration: command-line flags, then `FLYWHEEL_*` environment variables, then the TOML file
//! (`--config`), then defaults. Every option is documented here; the doc comments are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// fdatasync after every group commit: acknowledged events survive a crash and a power loss.
    Group,
    /// write() only: acknowledged events survive a crash (kill -9) but not a power loss.
    Os,
}

#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the options below (snake_case keys); flags and environment override it.
    #[arg(long, env = "FLYWHEEL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory (metadata database and event log) [default: ./flywheel-data].
    #[arg(long, env = "FLYWHEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "FLYWHEEL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Log format [default: text].
    #[arg(long, env = "FLYWHEEL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,flywheel_server=debug` [default: info].
    #[arg(long, env = "FLYWHEEL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Durability of acknowledged events [default: group].
    #[arg(long, env = "FLYWHEEL_FSYNC", value_enum)]
    pub fsync: Option<Fsync>,
    /// Size at which the intake log starts a new segment file, in MiB [default: 64].
    #[arg(long, env = "FLYWHEEL_SEGMENT_MB")]
    pub segment_mb: Option<u64>,
    /// Recent event uuids remembered to drop SDK retries [default: 1000000].
    #[arg(long, env = "FLYWHEEL_DEDUPE_WINDOW")]
    pub dedupe_window: Option<usize>,
    /// Most nesting levels accepted in a captured JSON body [default: 64].
    #[arg(long, env = "FLYWHEEL_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,
    /// Most bytes a capture body may expand to when decompressed, in MiB [default: 100].
    #[arg(long, env = "FLYWHEEL_MAX_DECOMPRESSED_MB")]
    pub max_decompressed_mb: Option<usize>,
    /// Seconds a request may take before it is cut off [default: 60].
    #[arg(long, env = "FLYWHEEL_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Requests per second per key on the flag-serving endpoints (OFREP, /flags, /decide); excess requests get
    /// 429 with Retry-After. 0 turns the limit off [default: 0].
    #[arg(long, env = "FLYWHEEL_SDK_RATE_LIMIT")]
    pub sdk_rate_limit: Option<u32>,
    /// Seconds between two checks of the running guarded rollouts' guardrails [default: 30].
    #[arg(long, env = "FLYWHEEL_ROLLOUT_CHECK_SECS")]
    pub rollout_check_secs: Option<f64>,
    /// Seconds between two approvals of the rewards whose hold period ended [default: 60].
    #[arg(long, env = "FLYWHEEL_REWARD_CHECK_SECS")]
    pub reward_check_secs: Option<f64>,
    /// Seconds between two passes of the PQL scorer over every live model [default: 60].
    #[arg(long, env = "FLYWHEEL_PQL_CHECK_SECS")]
    pub pql_check_secs: Option<f64>,
    /// Seconds between two passes of data retention, which drop the events older than their project's
    /// `retention_days` [default: 3600].
    #[arg(long, env = "FLYWHEEL_RETENTION_CHECK_SECS")]
    pub retention_check_secs: Option<f64>,
    /// Networks (CIDRs or addresses, comma-separated) that webhooks may call although they are not public, e.g.
    /// `10.0.0.0/8,127.0.0.1`; by default only public addresses are called.
    #[arg(long, env = "FLYWHEEL_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Option<Vec<String>>,
    /// Seconds before the first retry of a failed webhook delivery (doubling after each failure, at most 6 h)
    /// [default: 10].
    #[arg(long, env = "FLYWHEEL_WEBHOOK_RETRY_BASE_SECS")]
    pub webhook_retry_base_secs: Option<f64>,
    /// Attempts before a webhook message is dead [default: 18, about a day and a half of retries].
    #[arg(long, env = "FLYWHEEL_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<u32>,
    /// Captured events per second per project; a request over it gets 429 with Retry-After, whole (0: unlimited)
    /// [default: 0].
    #[arg(long, env = "FLYWHEEL_CAPTURE_EVENTS_PER_SECOND")]
    pub capture_events_per_second: Option<u32>,
    /// Native API requests per second per API key (0: unlimited) [default: 0].
    #[arg(long, env = "FLYWHEEL_API_REQUESTS_PER_SECOND")]
    pub api_requests_per_second: Option<u32>,
    /// Native API requests per second per project (0: unlimited) [default: 0].
    #[arg(long, env = "FLYWHEEL_PROJECT_API_REQUESTS_PER_SECOND")]
    pub project_api_requests_per_second: Option<u32>,
    /// What capture keeps of IP addresses: `truncated` (network part only: a.b.c.0, IPv6 /48), `full` or `off`
    /// [default: truncated].
    #[arg(long, env = "FLYWHEEL_CAPTURE_IP")]
    pub capture_ip: Option<String>,
    /// Property keys removed from every captured event (and its `$set`/`$set_once`) before it is stored,
    /// comma-separated, e.g. `email,phone`.
    #[arg(long, env = "FLYWHEEL_SCRUB_PROPERTIES", value_delimiter = ',')]
    pub scrub_properties: Option<Vec<String>>,
    /// PEM certificate chain: serve HTTPS (with --tls-key) instead of HTTP.
    #[arg(long, env = "FLYWHEEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FLYWHEEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// ClickHouse HTTP URL (e.g. `http://127.0.0.1:8123`): ship every event there too, exactly once, from this
    /// node's intake log, and answer insights from it (every node's events; see docs/clickhouse.md).
    #[arg(long, env = "FLYWHEEL_EVENTS_URL")]
    pub events_url: Option<String>,
    /// PostgreSQL URL of the metadata (postgres://user:password@host:5432/database), shared by every node;
    /// without it the metadata is the data directory's SQLite file (see docs/postgres.md).
    #[arg(long, env = "FLYWHEEL_METADATA_URL")]
    pub metadata_url: Option<String>,
    /// ClickHouse database of the events [default: flywheel].
    #[arg(long, env = "FLYWHEEL_EVENTS_DATABASE")]
    pub events_database: Option<String>,
    /// Most MB of intake log not yet shipped to ClickHouse before capture answers 503 with Retry-After
    /// [default: 10240].
    #[arg(long, env = "FLYWHEEL_SPOOL_LIMIT_MB")]
    pub spool_limit_mb: Option<u64>,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub fsync: Fsync,
    pub segment_mb: u64,
    pub dedupe_window: usize,
    pub max_json_depth: usize,
    pub max_decompressed_mb: usize,
    pub request_timeout_secs: u64,
    pub sdk_rate_limit: u32,
    pub rollout_check_secs: f64,
    pub reward_check_secs: f64,
    pub pql_check_secs: f64,
    pub retention_check_secs: f64,
    pub webhook_allow: Vec<flywheel_server::webhooks::Cidr>,
    pub webhook_retry_base_secs: f64,
    pub webhook_max_attempts: u32,
    pub capture_events_per_second: u32,
    pub api_requests_per_second: u32,
    pub project_api_requests_per_second: u32,
    pub privacy: flywheel_server::privacy::Privacy,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub events_url: Option<String>,
    pub metadata_url: Option<String>,
    pub events_database: String,
    pub spool_limit_mb: u64,
}

impl ServeArgs {
    /// Layers flags/environment over the TOML file over defaults, and validates once.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let settings = Settings {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./flywheel-data")),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level: self
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            fsync: self.fsync.or(file.fsync).unwrap_or(Fsync::Group),
            segment_mb: self.segment_mb.or(file.segment_mb).unwrap_or(64),
            dedupe_window: self
                .dedupe_window
                .or(file.dedupe_window)
                .unwrap_or(1_000_000),
            max_json_depth: self.max_json_depth.or(file.max_json_depth).unwrap_or(64),
            max_decompressed_mb: self
                .max_decompressed_mb
                .or(file.max_decompressed_mb)
                .unwrap_or(100),
            request_timeout_secs: self
                .request_timeout_secs
                .or(file.request_timeout_secs)
                .unwrap_or(60),
            sdk_rate_limit: self.sdk_rate_limit.or(file.sdk_rate_limit).unwrap_or(0),
            rollout_check_secs: self
                .rollout_check_secs
                .or(file.rollout_check_secs)
                .unwrap_or(30.0),
            reward_check_secs: self
                .reward_check_secs
                .or(file.reward_check_secs)
                .unwrap_or(60.0),
            pql_check_secs: self.pql_check_secs.or(file.pql_check_secs).unwrap_or(60.0),
            retention_check_secs: self
                .retention_check_secs
                .or(file.retention_check_secs)
                .unwrap_or(3600.0),
            webhook_allow: self
                .webhook_allow
                .or(file.webhook_allow)
                .unwrap_or_default()
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|e: String| anyhow::anyhow!("webhook_allow: {e}"))
                })
                .collect::<anyhow::Result<_>>()?,
            webhook_retry_base_secs: self
                .webhook_retry_base_secs
                .or(file.webhook_retry_base_secs)
                .unwrap_or(10.0),
            webhook_max_attempts: self
                .webhook_max_attempts
                .or(file.webhook_max_attempts)
                .unwrap_or(18),
            capture_events_per_second: self
                .capture_events_per_second
                .or(file.capture_events_per_second)
                .unwrap_or(0),
            api_requests_per_second: self
                .api_requests_per_second
                .or(file.api_requests_per_second)
                .unwrap_or(0),
            project_api_requests_per_second: self
                .project_api_requests_per_second
                .or(file.project_api_requests_per_second)
                .unwrap_or(0),
            tls: match (
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => anyhow::bail!("tls_cert and tls_key go together"),
            },
            events_url: self
                .events_url
                .or(file.events_url)
                .filter(|u| !u.trim().is_empty()),
            metadata_url: self
                .metadata_url
                .or(file.metadata_url)
                .filter(|u| !u.trim().is_empty()),
            events_database: self
                .events_database
                .or(file.events_database)
                .unwrap_or_else(|| "flywheel".to_owned()),
            spool_limit_mb: self
                .spool_limit_mb
                .or(file.spool_limit_mb)
                .unwrap_or(10_240),
            privacy: flywheel_server::privacy::Privacy {
                capture_ip: match self.capture_ip.or(file.capture_ip) {
                    Some(text) => text.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                    None => Default::default(),
                },
                scrub: self
                    .scrub_properties
                    .or(file.scrub_properties)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect(),
            },
        };
        anyhow::ensure!(settings.segment_mb >= 1, "segment_mb must be at least 1");
        anyhow::ensure!(
            settings.spool_limit_mb >= 1,
            "spool_limit_mb must be at least 1"
        );
        if let Some(url) = &settings.events_url {
            anyhow::ensure!(
                url.starts_with("http://"),
                "events_url must be ClickHouse's HTTP URL, http://host:8123 (plain HTTP: put a TLS proxy in \
                 front of a remote server), not `{url}`"
            );
        }
        if let Some(url) = &settings.metadata_url {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "metadata_url must be a PostgreSQL URL, postgres://user:password@host:5432/database (without it \
                 the metadata is the data directory's SQLite file)"
            );
        }
        anyhow::ensure!(
            !settings.events_database.is_empty()
                && settings
                    .events_database
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "events_database must be letters, digits and _"
        );
        anyhow::ensure!(
            settings.max_json_depth >= 2,
            "max_json_depth must be at least 2"
        );
        anyhow::ensure!(
            settings.max_decompressed_mb >= 1,
            "max_decompressed_mb must be at least 1"
        );
        anyhow::ensure!(
            settings.request_timeout_secs >= 1,
            "request_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            (0.05..=86_400.0).contains(&settings.rollout_check_secs),
            "rollout_check_secs must be from 0.05 to 86400"
        );
        anyhow::ensure!(
            (0.05..=86_400.0).contains(&settings.reward_check_secs),
            "reward_check_secs must be from 0.05 to 86400"
        );
        anyhow::ensure!(
            (0.05..=86_400.0).contains(&settings.pql_check_secs),
            "pql_check_secs must be from 0.05 to 86400"
        );
        anyhow::ensure!(
            (0.05..=86_400.0).contains(&settings.retention_check_secs),
            "retention_check_secs must be from 0.05 to 86400"
        );
        anyhow::ensure!(
            (0.01..=3600.0).contains(&settings.webhook_retry_base_secs),
            "webhook_retry_base_secs must be from 0.01 to 3600"
        );
        anyhow::ensure!(
            (1..=100).contains(&settings.webhook_max_attempts),
            "webhook_max_attempts must be from 1 to 100"
        );
        Ok(settings)
    }
}

impl Settings {
    pub fn server_config(&self) -> flywheel_server::Config {
        let mut config = flywheel_server::Config::for_tests(self.data_dir.clone());
        config.listen = self.listen;
        config.sync = match self.fsync {
            Fsync::Group => flywheel_engine::SyncMode::Group,
            Fsync::Os => flywheel_engine::SyncMode::Os,
        };
        config.segment_bytes = self.segment_mb * 1024 * 1024;
        config.dedupe_window = self.dedupe_window;
        config.capture_limits.max_json_depth = self.max_json_depth;
        config.capture_limits.max_decompressed_bytes = self.max_decompressed_mb * 1024 * 1024;
        config.request_timeout = Duration::from_secs(self.request_timeout_secs);
        config.sdk_rate_limit = self.sdk_rate_limit;
        config.rollout_check_interval = Duration::from_secs_f64(self.rollout_check_secs);
        config.reward_check_interval = Duration::from_secs_f64(self.reward_check_secs);
        config.pql_check_interval = Duration::from_secs_f64(self.pql_check_secs);
        config.retention_check_interval = Duration::from_secs_f64(self.retention_check_secs);
        config.webhook_allow = self.webhook_allow.clone();
        config.webhook_retry_base = Duration::from_secs_f64(self.webhook_retry_base_secs);
        config.webhook_max_attempts = self.webhook_max_attempts;
        config.capture_events_per_second = self.capture_events_per_second;
        config.api_requests_per_second = self.api_requests_per_second;
        config.project_api_requests_per_second = self.project_api_requests_per_second;
        config.privacy = self.privacy.clone();
        config.tls = self.tls.clone();
        config.events_url = self.events_url.clone();
        config.events_database = self.events_database.clone();
        config.metadata_url = self.metadata_url.clone();
        config.spool_limit_bytes = self.spool_limit_mb * 1024 * 1024;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flywheel.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nfsync = \"os\"\nsegment_mb = 8\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            segment_mb: Some(16),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.fsync, Fsync::Os);
        assert_eq!(s.segment_mb, 16, "the flag wins over the file");
        assert_eq!(s.max_json_depth, 64, "default");
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flywheel.toml");
        std::fs::write(&path, "lissen = \"127.0.0.1:9999\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("lissen"), "{err:#}");
    }
}
