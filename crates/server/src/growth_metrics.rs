//! Growth metrics of the growth graph: K-factor and viral cycle time per sign-up cohort and channel, over time.
//!
//! `GET /api/v1/projects/{project_id}/growth/k-factor?interval=&date_from=&date_to=&channel=` (read access to the
//! project, as `…/growth/path`):
//!
//! - `interval`: `day`, `week` (default; weeks start on Monday) or `month`, counted in the project's time zone
//!   (its `time_zone` setting, as insights; UTC by default). `date_from` / `date_to`: `YYYY-MM-DD` days of that
//!   zone, widened to whole buckets; by default the 12 buckets ending with the one holding today. `channel`:
//!   `referral`, `invitation` or `share` reports that channel alone; by default each of them and `all`.
//! - A sender's **cohort** is the bucket of the sender person's join (`persons.created_at`, the time of their first
//!   event; a sender's distinct id resolves to its current person, so merged persons count once, with the earliest
//!   join). `users` counts every person of the project who joined in the bucket.
//! - `sent` / `converted` per cohort and channel, over everything the cohort's members ever sent: referral = clicks
//!   on their referral links + referrals attributed without a click / referrals not `rejected`; invitation =
//!   invitations created (a resend is not a new one) / accepted; share = views of their share links / persons who
//!   came through them. Senders without a person (a distinct id that never sent an event) belong to no cohort and
//!   are left out.
//! - `invites_per_user = sent / users`, `conversion = converted / sent`, `k_factor = converted / users` (=
//!   `invites_per_user × conversion`), `null` when the denominator is 0.
//! - `cycle_time`: from the sender's join to the receiver's join (the receiver person's `created_at`, else the
//!   conversion time), in hours, clamped at 0: `count`, `p50`, `p90`, `mean`, `histogram` (`<1d` … `≥30d`).
//! - `totals` are over the range's cohorts. Every bucket of the range is present, in time order; the answer names
//!   the `time_zone` it was counted in.
//!
//! Bad parameters are `400 validation_error` naming each parameter. The rows are read by
//! [`flywheel_store::Store::growth_invites`] (three set-based statements, one snapshot); the cohorts, ratios,
//! percentiles and histograms are computed by the pure [`flywheel_query::viral`].

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use flywheel_query::viral::{self, Channel, KFactorParams};
use flywheel_store::InviteChannel;
use serde_json::{json, Value};

use crate::api::Caller;
use crate::error::ApiError;
use crate::state::AppState;

const WHAT: &str = "k-factor query";

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/projects/{project_id}/growth/k-factor",
        get(k_factor),
    )
}

fn channel(c: InviteChannel) -> Channel {
    match c {
        InviteChannel::Referral => Channel::Referral,
        InviteChannel::Invitation => Channel::Invitation,
        InviteChannel::Share => Channel::Share,
    }
}

/// `GET …/growth/k-factor`: see the module documentation.
async fn k_factor(
    State(state): State<AppState>,
    caller: Caller,
    Path(project_id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let params = KFactorParams::parse(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|errors| ApiError::validation(WHAT, &errors))?;
    let settings = state
        .store
        .project_settings(project_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {project_id} not found")))?;
    let tz = flywheel_query::parse_time_zone(&settings.time_zone).unwrap_or(chrono_tz::UTC);
    let range = params
        .resolve(state.clock.now(), &tz)
        .map_err(|e| ApiError::validation(WHAT, &[e]))?;
    // Persons and merges applied up to what was acknowledged before this read.
    state.catch_up().await;
    let rows = state
        .store
        .growth_invites(
            project_id,
            range.from.timestamp_micros(),
            range.to.timestamp_micros(),
        )
        .await?;
    if rows.unreadable > 0 {
        tracing::warn!(
            rows = rows.unreadable,
            "growth metrics: rows with unreadable times left out"
        );
    }
    let sent: Vec<viral::Sent> = rows
        .sent
        .iter()
        .map(|s| viral::Sent {
            channel: channel(s.channel),
            sender_joined_us: s.sender_joined_us,
            count: s.count,
        })
        .collect();
    let converted: Vec<viral::Converted> = rows
        .converted
        .iter()
        .map(|c| viral::Converted {
            channel: channel(c.channel),
            sender_joined_us: c.sender_joined_us,
            receiver_joined_us: c.receiver_joined_us,
            converted_at_us: c.converted_at_us,
        })
        .collect();
    let report = viral::k_factor(&params, &range, &rows.joins, &sent, &converted);
    let mut body = serde_json::to_value(&report).map_err(ApiError::internal)?;
    body["time_zone"] = json!(tz.name());
    Ok(Json(body))
}
