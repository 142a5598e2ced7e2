//! Metric names and label keys, in one place. Labels stay low-cardinality: never a distinct id or a key.

pub const HTTP_REQUESTS: &str = "flywheel_http_requests_total";
pub const HTTP_DURATION: &str = "flywheel_http_request_duration_seconds";
pub const EVENTS_ACCEPTED: &str = "flywheel_events_accepted_total";
pub const EVENTS_DROPPED: &str = "flywheel_events_dropped_total";
pub const EVENTS_DUPLICATE: &str = "flywheel_events_duplicate_total";
pub const IDENTITY_LAG: &str = "flywheel_identity_lag_bytes";
pub const IDENTITY_MERGES: &str = "flywheel_identity_merges_total";
pub const IDENTITY_MERGES_REFUSED: &str = "flywheel_identity_merges_refused_total";
pub const IDENTITY_ERRORS: &str = "flywheel_identity_errors_total";
/// Identity changes skipped because they failed alone while the rest of their chunk applied.
pub const IDENTITY_OPS_SKIPPED: &str = "flywheel_identity_ops_skipped_total";

pub const LABEL_SOURCE: &str = "source";
pub const LABEL_REASON: &str = "reason";
pub const FLAG_EVALUATIONS: &str = "flywheel_flag_evaluations_total";
pub const EXPOSURES_RECORDED: &str = "flywheel_exposures_recorded_total";
pub const EXPOSURES_DROPPED: &str = "flywheel_exposures_dropped_total";
pub const SDK_RATE_LIMITED: &str = "flywheel_sdk_rate_limited_total";
pub const LABEL_ENDPOINT: &str = "endpoint";
/// Sticky assignments kept in memory only (queue full or write failed): lost at a restart.
pub const STICKY_DROPPED: &str = "flywheel_sticky_assignments_dropped_total";
/// Bytes of the intake log the referral consumer has still to read.
pub const REFERRALS_LAG: &str = "flywheel_referrals_lag_bytes";
/// Webhook delivery attempts, by outcome (`delivered`, `retry`, `dead`).
pub const WEBHOOK_ATTEMPTS: &str = "flywheel_webhook_attempts_total";
/// Requests refused by a rate limit, by `scope` (`capture`, `api_key`, `api_project`).
pub const RATE_LIMITED: &str = "flywheel_rate_limited_total";
/// Sign-ins refused for a wrong email or password.
pub const LOGIN_FAILURES: &str = "flywheel_login_failures_total";
/// Events dropped from the intake log by data retention (projects' `retention_days`).
pub const RETENTION_EVENTS_DROPPED: &str = "flywheel_retention_events_dropped_total";
/// Events shipped into ClickHouse (`--events-url`).
pub const CLICKHOUSE_EVENTS_SHIPPED: &str = "flywheel_clickhouse_events_shipped_total";
/// Bytes of the intake log not yet in ClickHouse.
pub const CLICKHOUSE_BACKLOG: &str = "flywheel_clickhouse_backlog_bytes";
