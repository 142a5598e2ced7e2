//! Captured events for webhooks: a consumer of the intake log (after the identity consumer, checkpoint
//! `event_webhooks`) that announces, in the outbox, the events matching some active subscription's `events`
//! filters (`[{"event", "properties"?}]`, event properties only). One outbox entry per matching event, topic
//! `event.<name>`, payload `{uuid, event, distinct_id, timestamp, properties, webhooks}` where `webhooks` lists the
//! subscriptions it matched: the delivery worker gives an `event.*` message only to those, so each subscription
//! gets exactly the events of its own filters. Projects without such subscriptions cost a map lookup per event;
//! properties are parsed only for events whose name some filter names.

use std::collections::HashMap;
use std::time::Duration;

use flywheel_engine::{BatchRef, Intake};
use flywheel_query::{EventRef, Filter, PropertyType};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::insight_filters::Compiled;
use crate::state::AppState;

/// Name of this consumer's checkpoint in the metadata store.
pub const CONSUMER: &str = "event_webhooks";
const CHUNK_BATCHES: usize = 256;
/// How long the subscriptions map is kept.
const RELOAD: Duration = Duration::from_secs(2);

/// A subscription's filter: an event name (or every event) and event-property filters.
pub struct Spec {
    pub event: EventRef,
    pub filters: Vec<Compiled>,
}

fn as_metric(v: &Value) -> Value {
    json!({"key": "k", "name": "n", "kind": "conversion", "event": v.get("event"),
           "properties": v.get("properties")})
}

/// Parses a subscription's `events` (validated by [`check`] when written).
pub fn specs(events: &Value) -> Vec<Spec> {
    let Some(items) = events.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|v| {
            let m = flywheel_query::experiment::parse_metric(&as_metric(v)).ok()?;
            let filters = m
                .measure
                .properties
                .iter()
                .filter_map(|f| match f {
                    Filter::Property(p) if p.property_type == PropertyType::Event => {
                        Some(Compiled::new(p))
                    }
                    _ => None,
                })
                .collect();
            Some(Spec {
                event: m.measure.event,
                filters,
            })
        })
        .collect()
}

/// Validates a subscription's `events`: a list of 1–20 `{event, properties?}` with event-property filters.
pub fn check(events: &Value) -> Vec<flywheel_query::FieldError> {
    let mut errors = Vec::new();
    let Some(items) = events.as_array().filter(|a| !a.is_empty() && a.len() <= 20) else {
        return vec![flywheel_query::FieldError {
            field: "events".into(),
            message: "must be a list of 1 to 20 `{\"event\", \"properties\"?}` filters".into(),
        }];
    };
    for (i, v) in items.iter().enumerate() {
        // The metric parser checks an event and its filters the same way.
        let body = as_metric(v);
        let extra: Vec<&String> = v
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| *k != "event" && *k != "properties")
                    .collect()
            })
            .unwrap_or_default();
        for k in extra {
            errors.push(flywheel_query::FieldError {
                field: format!("events[{i}].{k}"),
                message: "unknown field (event, properties)".into(),
            });
        }
        if !v.is_object() {
            errors.push(flywheel_query::FieldError {
                field: format!("events[{i}]"),
                message: "must be an object with `event`".into(),
            });
            continue;
        }
        if let Err(es) = flywheel_query::experiment::parse_metric(&body) {
            for e in es {
                errors.push(flywheel_query::FieldError {
                    field: format!("events[{i}].{}", e.field),
                    message: e.message,
                });
            }
        }
        let non_event = v
            .get("properties")
            .and_then(Value::as_array)
            .is_some_and(|fs| {
                fs.iter()
                    .any(|f| f.get("type").is_some_and(|t| t != "event"))
            });
        if non_event {
            errors.push(flywheel_query::FieldError {
                field: format!("events[{i}].properties"),
                message: "only the event's own properties can be tested".into(),
            });
        }
    }
    errors
}

/// Per project: (subscription id, specs).
type Subscriptions = HashMap<i64, Vec<(i64, Vec<Spec>)>>;

async fn load(state: &AppState) -> Option<Subscriptions> {
    let hooks = match state.store.active_webhooks().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "event webhooks: cannot read the subscriptions");
            return None;
        }
    };
    let mut out: Subscriptions = HashMap::new();
    for w in hooks {
        if let Some(events) = &w.events {
            let s = specs(events);
            if !s.is_empty() {
                out.entry(w.project_id).or_default().push((w.id, s));
            }
        }
    }
    Some(out)
}

fn matches(spec: &Spec, event: &str, props: &Value) -> bool {
    let named = match &spec.event {
        EventRef::All => true,
        EventRef::Named(n) => n == event,
    };
    named && spec.filters.iter().all(|f| f.matches(props.get(f.key())))
}

/// Follows the log until shutdown.
pub async fn run(state: AppState, intake: Intake, mut identity: watch::Receiver<u64>) {
    let mut lsn = match state.store.checkpoint(CONSUMER).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "event webhooks: cannot read the checkpoint; not running");
            return;
        }
    };
    let mut subs: Subscriptions = HashMap::new();
    let mut loaded: Option<std::time::Instant> = None;
    let mut saved: Option<std::time::Instant> = None;
    // The position the saved checkpoint holds.
    let mut saved_lsn = lsn;
    let mut seen_epoch = u64::MAX;
    let mut shutdown = state.shutdown.clone();
    loop {
        let target = *identity.borrow_and_update();
        if lsn < target {
            let epoch = state
                .webhook_epoch
                .load(std::sync::atomic::Ordering::Acquire);
            if epoch != seen_epoch || loaded.is_none_or(|t| t.elapsed() >= RELOAD) {
                seen_epoch = epoch;
                if let Some(s) = load(&state).await {
                    subs = s;
                }
                loaded = Some(std::time::Instant::now());
            }
            if subs.is_empty() {
                // Nothing to announce: skip what was written (new subscriptions take events from now on); the
                // checkpoint follows at most every few seconds, not once per batch.
                lsn = target;
                if saved.is_none_or(|t| t.elapsed() >= RELOAD)
                    && state.store.set_checkpoint(CONSUMER, lsn).await.is_ok()
                {
                    saved = Some(std::time::Instant::now());
                    saved_lsn = lsn;
                }
                continue;
            }
            let (from, log) = (lsn, intake.clone());
            let read = {
                let subs_ref = &subs;
                let mut announce: Vec<(i64, String, Value)> = Vec::new();
                let result = (|| -> Result<u64, flywheel_engine::EngineError> {
                    let mut reader = log.reader(from);
                    let mut reached = from;
                    for _ in 0..CHUNK_BATCHES {
                        let Some(item) = reader.next_payload() else {
                            break;
                        };
                        let (end, payload) = item?;
                        if end > target {
                            break;
                        }
                        for e in BatchRef::new(payload)?.iter() {
                            let e = e?;
                            let Some(list) = subs_ref.get(&e.project_id) else {
                                continue;
                            };
                            let named = list.iter().any(|(_, specs)| {
                                specs.iter().any(|s| match &s.event {
                                    EventRef::All => true,
                                    EventRef::Named(n) => n == e.event,
                                })
                            });
                            if !named {
                                continue;
                            }
                            let props: Value =
                                serde_json::from_str(e.properties).unwrap_or(Value::Null);
                            let ids: Vec<i64> = list
                                .iter()
                                .filter(|(_, specs)| {
                                    specs.iter().any(|s| matches(s, e.event, &props))
                                })
                                .map(|(id, _)| *id)
                                .collect();
                            if ids.is_empty() {
                                continue;
                            }
                            let timestamp = chrono::DateTime::from_timestamp_micros(e.timestamp_us)
                                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                            announce.push((
                                e.project_id,
                                format!("event.{}", e.event),
                                json!({"uuid": uuid::Uuid::from_u128(e.uuid).to_string(), "event": e.event,
                                       "distinct_id": e.distinct_id, "timestamp": timestamp,
                                       "properties": props, "webhooks": ids}),
                            ));
                        }
                        reached = end;
                    }
                    Ok(reached)
                })();
                result.map(|end| (end, announce))
            };
            match read {
                Ok((end, announce)) if end > from => {
                    if let Err(e) = state.store.enqueue_outbox(&announce).await {
                        tracing::warn!(error = %e, "event webhooks: announcing failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    lsn = end;
                    match state.store.set_checkpoint(CONSUMER, lsn).await {
                        Ok(()) => saved_lsn = lsn,
                        Err(e) => {
                            tracing::warn!(error = %e, "event webhooks: checkpoint not saved")
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "event webhooks: reading the log failed"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Idle: a position skipped without saving is saved after a while (a rewrite of the log waits for every
        // consumer's checkpoint to pass it, see `gdpr::wait_for_consumers`).
        let unsaved = saved_lsn < lsn;
        let save = tokio::select! {
            changed = identity.changed() => if changed.is_err() { return } else { false },
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(RELOAD), if unsaved => true,
        };
        if save && state.store.set_checkpoint(CONSUMER, lsn).await.is_ok() {
            saved = Some(std::time::Instant::now());
            saved_lsn = lsn;
        }
    }
}
