//! Operations endpoints: liveness, readiness, Prometheus metrics, and the request metrics middleware.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::metrics_names as m;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

async fn readyz(State(state): State<AppState>) -> Response {
    // A PostgreSQL that does not answer within 2 s counts as down (its pool would wait 10 s for a connection).
    let metadata = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping())
        .await
        .unwrap_or(false);
    let events = state.intake.is_healthy();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    // Shared metadata (PostgreSQL) away: the node still serves flags from its last snapshots and accepts events
    // into its log, so it stays in the load balancer, `degraded`. A local SQLite file that fails is fatal.
    let degraded = !metadata && events && state.store.is_postgres();
    let (status, word_status) = if metadata && events {
        (StatusCode::OK, "ok")
    } else if degraded {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let mut body =
        json!({"status": word_status, "metadata": word(metadata), "events": word(events)});
    if degraded {
        body["flags"] = json!("serving the last compiled snapshots");
    }
    if let Some(spool) = &state.spool {
        // The node accepts events while ClickHouse is away (they wait in its log): reported, not a failure.
        let backlog = spool.backlog(state.intake.committed_lsn());
        metrics::gauge!(crate::metrics_names::CLICKHOUSE_BACKLOG).set(backlog as f64);
        body["clickhouse"] = json!({
            "status": if spool.healthy() { "ok" } else if spool.opened() { "retrying" } else { "unreachable" },
            "backlog_bytes": backlog,
        });
    }
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("flywheel_intake_group_batches".into()), &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]))
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only Flywheel's own view");
            }
            handle
        })
        .clone()
}

/// Counts a request by method, route template (`None`: no route matched) and status, and times it (see
/// [`crate::edge`]). Metric handles are looked up once per (method, route, status) and kept, so that a request
/// allocates nothing here.
pub fn record(method: &Method, route: Option<&MatchedPath>, status: StatusCode, start: Instant) {
    let route = route.map(MatchedPath::as_str).unwrap_or("unmatched");
    let (requests, duration) = handles(method, route, status);
    requests.increment(1);
    duration.record(start.elapsed().as_secs_f64());
}

/// Per route template: (method, status) → the request counter and duration histogram.
type RouteHandles = Vec<(
    axum::http::Method,
    u16,
    metrics::Counter,
    metrics::Histogram,
)>;

fn handles(
    method: &axum::http::Method,
    route: &str,
    status: StatusCode,
) -> (metrics::Counter, metrics::Histogram) {
    use std::collections::HashMap;
    use std::sync::RwLock;
    static HANDLES: OnceLock<RwLock<HashMap<String, RouteHandles>>> = OnceLock::new();
    let map = HANDLES.get_or_init(Default::default);
    let status = status.as_u16();
    let find = |v: &RouteHandles| {
        v.iter()
            .find(|(m, s, _, _)| m == method && *s == status)
            .map(|(_, _, c, h)| (c.clone(), h.clone()))
    };
    if let Some(hit) = map
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(route)
        .and_then(find)
    {
        return hit;
    }
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    let entries = map.entry(route.to_owned()).or_default();
    if let Some(hit) = find(entries) {
        return hit;
    }
    let (m_label, r_label) = (method.as_str().to_owned(), route.to_owned());
    let counter = metrics::counter!(m::HTTP_REQUESTS, "method" => m_label.clone(), "route" => r_label.clone(),
                                    "status" => status.to_string());
    let histogram = metrics::histogram!(m::HTTP_DURATION, "method" => m_label, "route" => r_label);
    entries.push((method.clone(), status, counter.clone(), histogram.clone()));
    (counter, histogram)
}
