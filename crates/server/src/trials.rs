//! Trials: definitions (documents of kind `trial`, parsed by [`flywheel_query::pql::parse_trial`]), the lifecycle of
//! each entity's trial from events, and the trial→paid report.
//!
//! - `…/trials` (list, create, get, update, archive, `versions`, `diff`: see [`crate::definitions`]);
//! - `POST …/trials/{key}/transitions` `{"distinct_id", "state": "started"|"activated"|"converted", "group_key"?}`:
//!   records a transition from the API (a backend that knows when a trial started or was paid) as an event
//!   `$trial_started|activated|converted` with `trial` = the key (and `$groups` for account trials), which counts
//!   like the definition's own events;
//! - `GET …/trials/{key}/report?date_from=&date_to=&interval=day|week|month`: the trials that started in the range
//!   (default the last 90 days, by week): started, activated, converted (within the trial or later), expired and
//!   still active, the activation and trial→paid rates, the time to activate and to convert, per start cohort;
//! - `GET …/trials/{key}/entities?state=&limit=` (same range parameters): the entities with their lifecycle.
//!
//! An entity's trial starts at its first start event in the range; it is activated at its first activation event
//! after the start, converts at its first conversion event after the start (`converted_in_trial` when before the
//! trial's end), and expires `length_days` after the start without a conversion by then.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Datelike, NaiveDate};
use flywheel_kernels as k;
use flywheel_query::pql::{parse_trial, Step, Trial};
use flywheel_query::{EventRef, FieldError, Filter, Operator, PropertyFilter, PropertyType};
use serde_json::{json, Map, Value};

use crate::api::{Caller, JsonBody};
use crate::definitions::Kind;
use crate::error::ApiError;
use crate::pql::rate;
use crate::state::AppState;

pub(crate) const TRIAL: &str = "trial";
const DAY_US: i64 = k::DAY_US;
const STATES: [&str; 3] = ["started", "activated", "converted"];

static TRIALS: Kind = Kind {
    kind: TRIAL,
    what: "trial",
    parse: |body| parse_trial(body).map(|t| (t.key.clone(), t.name.clone(), t.to_json())),
    changed: |_| {},
};

pub fn router() -> Router<AppState> {
    crate::definitions::routes("/api/v1/projects/{project_id}/trials", &TRIALS)
        .route(
            "/api/v1/projects/{project_id}/trials/{key}/transitions",
            post(transition),
        )
        .route(
            "/api/v1/projects/{project_id}/trials/{key}/report",
            get(report),
        )
        .route(
            "/api/v1/projects/{project_id}/trials/{key}/entities",
            get(entities),
        )
}

async fn live_trial(state: &AppState, project_id: i64, key: &str) -> Result<Trial, ApiError> {
    let doc = crate::experiments::document(state, project_id, TRIAL, key).await?;
    parse_trial(&doc.body)
        .map_err(|_| ApiError::internal(format!("stored trial `{key}` does not parse")))
}

/// The API's transition event for `state` of trial `key`.
fn api_step(key: &str, state: &str) -> Step {
    Step {
        event: EventRef::Named(format!("$trial_{state}")),
        properties: vec![Filter::Property(PropertyFilter {
            key: "trial".into(),
            operator: Operator::Exact,
            value: Some(json!(key)),
            property_type: PropertyType::Event,
            group_type_index: None,
        })],
    }
}

async fn transition(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let trial = live_trial(&state, project_id, &key).await?;
    let mut errors =
        crate::experiments::unknown_fields(&body, &["distinct_id", "state", "group_key"]);
    let text = |field: &str, errors: &mut Vec<FieldError>| -> Option<String> {
        match body.get(field) {
            Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 200 => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError {
                    field: field.into(),
                    message: "must be a string of 1 to 200 characters".into(),
                });
                None
            }
            None => None,
        }
    };
    let distinct_id = text("distinct_id", &mut errors);
    if !body.contains_key("distinct_id") {
        errors.push(FieldError {
            field: "distinct_id".into(),
            message: "is required: who made the transition".into(),
        });
    }
    let to = text("state", &mut errors);
    if to.as_deref().is_some_and(|s| !STATES.contains(&s)) || !body.contains_key("state") {
        errors.push(FieldError {
            field: "state".into(),
            message: "must be one of started, activated, converted".into(),
        });
    }
    let group_key = text("group_key", &mut errors);
    match (&trial.unit, &group_key) {
        (Some(u), None) if !body.contains_key("group_key") => errors.push(FieldError {
            field: "group_key".into(),
            message: format!("is required: the trial is per `{u}`"),
        }),
        (None, Some(_)) => errors.push(FieldError {
            field: "group_key".into(),
            message: "does not apply: the trial is per person".into(),
        }),
        _ => {}
    }
    let (Some(distinct_id), Some(to), true) = (distinct_id, to, errors.is_empty()) else {
        return Err(ApiError::validation("trial transition", &errors));
    };
    let mut props = json!({"trial": key});
    if let (Some(u), Some(g)) = (&trial.unit, &group_key) {
        props["$groups"] = json!({u: g});
    }
    let event = format!("$trial_{to}");
    crate::invitations::record(&state, project_id, &distinct_id, &event, props.clone()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event": event, "distinct_id": distinct_id, "properties": props})),
    ))
}

/// One entity's trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lifecycle {
    pub started: i64,
    pub activated: Option<i64>,
    pub converted: Option<i64>,
    pub ends: i64,
}

impl Lifecycle {
    pub fn state(&self, now_us: i64) -> &'static str {
        if self.converted.is_some() {
            "converted"
        } else if now_us >= self.ends {
            "expired"
        } else if self.activated.is_some() {
            "activated"
        } else {
            "started"
        }
    }
}

/// Scan bits: per state, the definition's step and the API's event.
const STARTED: u64 = 0b11;
const ACTIVATED: u64 = 0b1100;
const CONVERTED: u64 = 0b110000;

/// The trial of an entity from its events (time and scan bits, in time order): `None` when it never started.
pub(crate) fn lifecycle(rows: &[(i64, u64)], length_days: u64) -> Option<Lifecycle> {
    let started = rows.iter().find(|(_, m)| m & STARTED != 0)?.0;
    let first = |bits: u64| {
        rows.iter()
            .find(|(ts, m)| *ts >= started && m & bits != 0)
            .map(|(ts, _)| *ts)
    };
    Some(Lifecycle {
        started,
        activated: first(ACTIVATED),
        converted: first(CONVERTED),
        ends: started + length_days as i64 * DAY_US,
    })
}

#[derive(serde::Deserialize)]
struct RangeParams {
    date_from: Option<String>,
    date_to: Option<String>,
    interval: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Interval {
    Day,
    Week,
    Month,
}

fn bucket(d: NaiveDate, i: Interval) -> NaiveDate {
    match i {
        Interval::Day => d,
        Interval::Week => d - chrono::Duration::days(d.weekday().num_days_from_monday() as i64),
        Interval::Month => d.with_day(1).expect("day 1"),
    }
}

fn next_bucket(d: NaiveDate, i: Interval) -> NaiveDate {
    match i {
        Interval::Day => d + chrono::Duration::days(1),
        Interval::Week => d + chrono::Duration::days(7),
        Interval::Month => d
            .checked_add_months(chrono::Months::new(1))
            .expect("in range"),
    }
}

fn date_param(v: Option<&str>, field: &str, default: i64) -> Result<i64, ApiError> {
    let Some(text) = v else { return Ok(default) };
    crate::pql::time_or_date(text).ok_or_else(|| {
        ApiError::invalid_field(
            "trial report",
            field,
            "must be a date (YYYY-MM-DD) or an RFC 3339 time",
        )
    })
}

/// The trials that started in the range of `params`, by entity label, and the range.
async fn trials_in_range(
    state: &AppState,
    project_id: i64,
    trial: &Trial,
    key: &str,
    params: &RangeParams,
) -> Result<(Vec<(String, Lifecycle)>, i64, i64, i64), ApiError> {
    let now = state.clock.now().timestamp_micros();
    let to = date_param(params.date_to.as_deref(), "date_to", now)?;
    let from = date_param(params.date_from.as_deref(), "date_from", to - 90 * DAY_US)?;
    if from >= to {
        return Err(ApiError::invalid_field(
            "trial report",
            "date_from",
            "must be before date_to",
        ));
    }
    let api: Vec<Step> = STATES.iter().map(|s| api_step(key, s)).collect();
    // An unset activation step matches nothing but the API's event.
    let never = Step {
        event: EventRef::Named("$trial_never".into()),
        properties: Vec::new(),
    };
    let steps: Vec<&Step> = vec![
        &trial.started,
        &api[0],
        trial.activated.as_ref().unwrap_or(&never),
        &api[1],
        &trial.converted,
        &api[2],
    ];
    state.tables_catch_up().await;
    // Conversions may come after the range: read up to now.
    let rows = crate::pql::entity_rows(
        state,
        project_id,
        &steps,
        from,
        to.max(now) + 1,
        trial.unit.as_deref(),
    )
    .await?;
    let mut out: Vec<(String, Lifecycle)> = rows
        .labels
        .into_iter()
        .zip(&rows.rows)
        .filter_map(|(label, r)| {
            lifecycle(r, trial.length_days)
                .filter(|l| l.started < to)
                .map(|l| (label, l))
        })
        .collect();
    out.sort_by(|a, b| a.1.started.cmp(&b.1.started).then(a.0.cmp(&b.0)));
    Ok((out, from, to, now))
}

fn hours_summary(mut hours: Vec<f64>) -> Value {
    if hours.is_empty() {
        return json!({"count": 0, "p50": null, "p90": null, "mean": null});
    }
    hours.sort_by(f64::total_cmp);
    let mean = hours.iter().sum::<f64>() / hours.len() as f64;
    json!({"count": hours.len(), "p50": k::trends::quantile(&hours, 50),
           "p90": k::trends::quantile(&hours, 90), "mean": mean})
}

/// Counts of a set of trials.
fn summary(trials: &[&Lifecycle], now: i64, detailed: bool) -> Value {
    let started = trials.len();
    let count = |s: &str| trials.iter().filter(|l| l.state(now) == s).count();
    let activated = trials.iter().filter(|l| l.activated.is_some()).count();
    let converted = count("converted");
    let expired = count("expired");
    let in_trial = trials
        .iter()
        .filter(|l| l.converted.is_some_and(|c| c < l.ends))
        .count();
    let mut v = json!({
        "started": started, "activated": activated, "converted": converted,
        "converted_in_trial": in_trial, "expired": expired, "active": started - converted - expired,
        "activation_rate": rate(activated, started),
        "conversion_rate": rate(converted, started),
        "conversion_rate_of_ended": rate(converted, converted + expired),
    });
    if detailed {
        let hours = |f: fn(&Lifecycle) -> Option<i64>| -> Vec<f64> {
            trials
                .iter()
                .filter_map(|l| f(l).map(|t| (t - l.started) as f64 / 3_600_000_000.0))
                .collect()
        };
        v["time_to_convert_hours"] = hours_summary(hours(|l| l.converted));
        v["time_to_activate_hours"] = hours_summary(hours(|l| l.activated));
    }
    v
}

fn interval_param(v: Option<&str>) -> Result<Interval, ApiError> {
    match v {
        None | Some("week") => Ok(Interval::Week),
        Some("day") => Ok(Interval::Day),
        Some("month") => Ok(Interval::Month),
        Some(_) => Err(ApiError::invalid_field(
            "trial report",
            "interval",
            "must be day, week or month",
        )),
    }
}

fn date_of(us: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .date_naive()
}

fn time_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<RangeParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let trial = live_trial(&state, project_id, &key).await?;
    let interval = interval_param(params.interval.as_deref())?;
    let (trials, from, to, now) =
        trials_in_range(&state, project_id, &trial, &key, &params).await?;
    let all: Vec<&Lifecycle> = trials.iter().map(|(_, l)| l).collect();
    let mut cohorts = Vec::new();
    // From the first trial when the range starts long before it (`date_from=2000-01-01`).
    let first = all.first().map_or(from, |l| l.started.max(from));
    let mut start = bucket(date_of(first), interval);
    let last = date_of(to - 1);
    while start <= last && cohorts.len() < 1000 {
        let end = next_bucket(start, interval);
        let members: Vec<&Lifecycle> = all
            .iter()
            .copied()
            .filter(|l| {
                let d = date_of(l.started);
                d >= start && d < end
            })
            .collect();
        let mut c = summary(&members, now, false);
        c["start"] = json!(start.to_string());
        cohorts.push(c);
        start = end;
    }
    Ok(Json(json!({
        "trial": key,
        "unit": trial.unit.as_deref().unwrap_or("person"),
        "length_days": trial.length_days,
        "date_from": time_text(from),
        "date_to": time_text(to),
        "totals": summary(&all, now, true),
        "cohorts": cohorts,
    })))
}

async fn entities(
    State(state): State<AppState>,
    caller: Caller,
    Path((project_id, key)): Path<(String, String)>,
    Query(params): Query<RangeParams>,
) -> Result<Json<Value>, ApiError> {
    let project_id = crate::features::project_context(&state, &caller, &project_id).await?;
    let trial = live_trial(&state, project_id, &key).await?;
    if let Some(s) = params.state.as_deref() {
        if !["started", "activated", "converted", "expired"].contains(&s) {
            return Err(ApiError::invalid_field(
                "trial entity list",
                "state",
                "must be one of started, activated, converted, expired",
            ));
        }
    }
    let limit = crate::experiments::limit_param(params.limit, 100, "trial entity list")?;
    let (trials, _, _, now) = trials_in_range(&state, project_id, &trial, &key, &params).await?;
    let results: Vec<Value> = trials
        .iter()
        .filter(|(_, l)| params.state.as_deref().is_none_or(|s| l.state(now) == s))
        .take(limit as usize)
        .map(|(label, l)| {
            json!({"entity": label, "state": l.state(now), "started_at": time_text(l.started),
                   "activated_at": l.activated.map(time_text), "converted_at": l.converted.map(time_text),
                   "ends_at": time_text(l.ends),
                   "converted_in_trial": l.converted.is_some_and(|c| c < l.ends)})
        })
        .collect();
    Ok(Json(json!({"results": results})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycles_follow_the_first_events_after_the_start() {
        let d = DAY_US;
        // Activation before the start does not count; the second start is ignored.
        let rows = [
            (d, ACTIVATED),
            (2 * d, 1),
            (3 * d, 2),
            (4 * d, 4),
            (20 * d, 16),
        ];
        let l = lifecycle(&rows, 14).unwrap();
        assert_eq!(
            (l.started, l.activated, l.converted, l.ends),
            (2 * d, Some(4 * d), Some(20 * d), 16 * d)
        );
        assert_eq!(l.state(30 * d), "converted");
        let l = lifecycle(&rows[..4], 14).unwrap();
        assert_eq!((l.state(5 * d), l.state(16 * d)), ("activated", "expired"));
        assert_eq!(lifecycle(&[(d, CONVERTED)], 14), None);
    }

    #[test]
    fn buckets_start_on_mondays_and_first_days() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap(); // a Thursday
        assert_eq!(bucket(d, Interval::Week).to_string(), "2026-11-23");
        assert_eq!(bucket(d, Interval::Month).to_string(), "2026-11-01");
        assert_eq!(
            next_bucket(bucket(d, Interval::Month), Interval::Month).to_string(),
            "2026-12-01"
        );
    }
}
