//! Rate limits: token buckets per key, and the limits of capture (events per second per project) and of the native
//! API (requests per second per credential and per project). Every limit is off at `0`, the default; a refused
//! request gets `429 rate_limited` with `Retry-After` and counts in `flywheel_rate_limited_total{scope}`.
//!
//! A bucket holds one second's worth of tokens (`limit`) and refills continuously. A capture request takes one token
//! per event, all or nothing: a batch is accepted when the bucket holds as many tokens as it has events (or is full,
//! for a batch larger than a second's worth, which then leaves the bucket in debt), else refused whole, so nothing
//! of it is written and the SDK's retry sends it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::metrics_names as m;
use crate::state::AppState;

/// Keys kept before the buckets are forgotten (bounded memory whatever the keys).
const KEYS: usize = 100_000;

/// A token bucket per key: `limit` tokens per second, at most `limit` in store. `0` turns it off.
pub struct RateLimiter {
    limit: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
        }
    }

    /// `Ok` when a request may proceed (one token), otherwise the whole seconds to wait before retrying.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.take(key, 1)
    }

    /// Takes `n` tokens (all or nothing; a full bucket lends what a request larger than it needs).
    pub fn take(&self, key: &str, n: u64) -> Result<(), u64> {
        self.take_limited(key, n, self.limit)
    }

    /// [`take`](Self::take) with a limit of its own for this key (a project's override).
    pub fn take_limited(&self, key: &str, n: u64, limit: u32) -> Result<(), u64> {
        if limit == 0 || n == 0 {
            return Ok(());
        }
        let rate = f64::from(limit);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= KEYS && !buckets.contains_key(key) {
            buckets.clear();
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        let needed = (n as f64).min(rate);
        if *tokens >= needed {
            *tokens -= n as f64;
            Ok(())
        } else {
            Err(((needed - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// The server's limits (from its configuration).
pub struct Limits {
    /// Captured events per second per project.
    pub capture: RateLimiter,
    /// Native API requests per second per credential.
    pub api_key: RateLimiter,
    /// Native API requests per second per project.
    pub api_project: RateLimiter,
}

impl Limits {
    pub fn new(config: &crate::Config) -> Self {
        Self {
            capture: RateLimiter::new(config.capture_events_per_second),
            api_key: RateLimiter::new(config.api_requests_per_second),
            api_project: RateLimiter::new(config.project_api_requests_per_second),
        }
    }
}

/// The `429` of a limit.
pub fn refused(scope: &'static str, what: String, secs: u64) -> ApiError {
    metrics::counter!(m::RATE_LIMITED, "scope" => scope).increment(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("rate limit exceeded for {what}; retry in {secs} s"),
    )
    .with_retry_after(secs)
}

/// The native API's limits per credential and per project: the refusal when a request is over one (see
/// [`crate::edge`]).
pub async fn check_api(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<(), Response> {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        if let Some(key) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Err(secs) = state.limits.api_key.check(key) {
                return Err(refused("api_key", "this API key".into(), secs).into_response());
            }
        }
        if let Some(project) = rest
            .strip_prefix("projects/")
            .and_then(|r| r.split('/').next())
            .filter(|p| !p.is_empty())
        {
            // The project's own limit (its `ingestion.api_requests_per_second`), else the server's.
            let limit = match project.parse::<i64>() {
                Ok(id) => match state.policies.get(state, id).await {
                    Ok(policy) => policy.api_requests_per_second,
                    Err(e) => return Err(e.into_response()),
                },
                Err(_) => state.config.project_api_requests_per_second,
            };
            if let Err(secs) = state.limits.api_project.take_limited(project, 1, limit) {
                return Err(
                    refused("api_project", format!("project {project}"), secs).into_response()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_batches_take_all_or_nothing() {
        let l = RateLimiter::new(100);
        assert_eq!(l.take("p", 60), Ok(()));
        assert_eq!(l.take("p", 60), Err(1), "40 left: refused whole");
        assert_eq!(l.take("p", 40), Ok(()));
        assert_eq!(l.take("q", 100), Ok(()), "another key has its own bucket");
        // Larger than a second's worth: accepted on a full bucket, which goes into debt.
        let big = RateLimiter::new(10);
        assert_eq!(big.take("p", 25), Ok(()));
        assert_eq!(big.take("p", 1), Err(2));
        assert_eq!(RateLimiter::new(0).take("p", 1_000_000), Ok(()));
    }
}
