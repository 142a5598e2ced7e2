//! What every request goes through after routing, as one middleware: a layer costs every request a clone of the
//! service below it and a boxed future, so the concerns below share one (measured: four layers cost a 50-flag
//! `/flags` request ≈ 6 µs of its ≈ 32 µs of server CPU; see BENCHMARKS.md).
//!
//! From the outside in: request metrics ([`ops::record`]), security headers ([`tls::security_headers`]), the one
//! JSON error shape ([`error::uniform`]), the native API's rate limits ([`limits::check_api`]).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;
use crate::{error, limits, ops, tls};

pub async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = match limits::check_api(&state, req.uri(), req.headers()).await {
        Ok(()) => next.run(req).await,
        Err(refused) => refused,
    };
    let mut resp = error::uniform(resp).await;
    tls::security_headers(&state, resp.headers_mut());
    ops::record(&method, route.as_ref(), resp.status(), start);
    resp
}
