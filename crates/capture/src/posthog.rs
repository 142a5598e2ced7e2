//! PostHog capture (`/batch`, `/e`, `/i/v0/e`, `/capture`, `/track`, `/engage`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::common::{
    describe, id_string, kind, merge_into, take, token_string, too_long, Loc, MAX_ID_CHARS,
    STRIPPED_PROPERTIES,
};
use crate::decode::{self, Decoded};
use crate::error::{codes, EventError};
use crate::fast::{self, Fields, Props, Root};
use crate::time::{self, TimeInputs};
use crate::{CapturedEvent, Limits, Payload, RawRequest, RequestError};

/// Person operations that may sit on the event object and are merged into properties.
const PERSON_OPS: [&str; 3] = ["$set", "$set_once", "$unset"];

/// Batch-level settings.
#[derive(Default)]
struct Envelope {
    token: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    historical: bool,
}

/// Decodes and normalises a PostHog capture request.
///
/// Accepted bodies: one event object, a JSON array of events, or
/// `{"api_key"|"token": ..., "batch": [...], "sent_at": ..., "historical_migration": ...}`;
/// raw, gzip (detected by magic bytes), base64, lz64 (`compression=lz64`),
/// form-encoded (`data=...`) or in the `data` query parameter of a GET.
/// Mixpanel-style `/engage` objects (no `event`, top-level `$set`,
/// `$set_once` or `$unset`) become `$set` events.
///
/// Events that are individually invalid are reported in
/// [`Payload::rejected`]; the others are kept, in request order.
pub fn parse_posthog(
    req: &RawRequest<'_>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Payload, RequestError> {
    let (decoded, beacon) = decode::posthog_decoded(req, limits)?;
    match decoded {
        Decoded::Text(text, what) => {
            if let Some(root) = fast::parse(&text, limits.max_json_depth) {
                if let Some(result) = build_fast(root, beacon, limits, now) {
                    return result;
                }
            }
            let value = decode::parse_json_str(&text, what, limits)?;
            build(value, beacon, limits, now)
        }
        Decoded::Value(value) => build(value, beacon, limits, now),
    }
}

/// The fast path's counterpart of [`build`]: the same envelope rules and the same [`normalise`], with
/// properties kept as raw JSON. `None` sends the request down the general path.
fn build_fast(
    root: Root<'_>,
    beacon: bool,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Option<Result<Payload, RequestError>> {
    let mut env = Envelope::default();
    let (events, single) = match root {
        Root::Array(events) => (events, false),
        Root::Object(mut f) => {
            env.historical = f.scalars.get("historical_migration") == Some(&Value::Bool(true));
            match f.batch.take() {
                Some(events) => {
                    env.token = match batch_token(&mut f.scalars) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    };
                    env.sent_at = match batch_sent_at(&mut f.scalars) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    };
                    (events, false)
                }
                None => (vec![f], true),
            }
        }
    };
    if events.is_empty() || events.len() > limits.max_events {
        return None;
    }
    let mut out = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    let mut any_token = env.token.is_some();
    for (i, f) in events.into_iter().enumerate() {
        let loc = if single { Loc::Single } else { Loc::Batch(i) };
        let Fields {
            mut scalars, props, ..
        } = f;
        let person_ops = PERSON_OPS.iter().any(|k| scalars.contains_key(*k));
        let kept = match props {
            // Person operations on the event object are merged into properties: the general path does that.
            Some(Props::Pairs(pairs)) if person_ops => {
                let mut map = Map::new();
                for (k, v) in pairs {
                    map.insert(k.to_owned(), serde_json::from_str(v.get()).ok()?);
                }
                scalars.insert("properties".to_owned(), Value::Object(map));
                None
            }
            Some(props) => {
                let (kept, value) = props.split();
                scalars.insert("properties".to_owned(), value);
                kept
            }
            None => None,
        };
        match normalise(Value::Object(scalars), &env, loc, now, &mut any_token) {
            Ok(mut ev) => {
                if let Some(kept) = kept {
                    ev.properties = kept;
                }
                out.push(ev);
            }
            Err(e) => rejected.push(e),
        }
    }
    if !any_token {
        return Some(Err(RequestError::MissingToken));
    }
    Some(Ok(Payload {
        events: out,
        rejected,
        beacon,
        historical_migration: env.historical,
    }))
}

fn batch_token(root: &mut Map<String, Value>) -> Result<Option<String>, RequestError> {
    for field in ["api_key", "token"] {
        if let Some(v) = take(root, field) {
            return match v {
                Value::String(s) if !s.is_empty() => Ok(Some(s)),
                _ => Err(RequestError::InvalidToken { field }),
            };
        }
    }
    Ok(None)
}

fn batch_sent_at(root: &mut Map<String, Value>) -> Result<Option<DateTime<Utc>>, RequestError> {
    for field in ["sent_at", "sentAt"] {
        if let Some(v) = take(root, field) {
            return match time::parse_time_value(&v) {
                Some(t) => Ok(Some(t)),
                None => Err(RequestError::InvalidPayload(format!(
                    "`{field}` is not a valid timestamp: {}",
                    describe(&v)
                ))),
            };
        }
    }
    Ok(None)
}

fn build(
    value: Value,
    beacon: bool,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Payload, RequestError> {
    let mut env = Envelope::default();
    let (events, single) = match value {
        Value::Array(events) => (events, false),
        Value::Object(mut root) => match root.remove("batch") {
            Some(Value::Array(events)) => {
                env.token = batch_token(&mut root)?;
                env.sent_at = batch_sent_at(&mut root)?;
                env.historical = root.get("historical_migration") == Some(&Value::Bool(true));
                (events, false)
            }
            Some(other) => {
                return Err(RequestError::InvalidPayload(format!(
                    "`batch` must be an array, got {}",
                    kind(&other)
                )))
            }
            None => {
                env.historical = root.get("historical_migration") == Some(&Value::Bool(true));
                (vec![Value::Object(root)], true)
            }
        },
        other => {
            return Err(RequestError::InvalidPayload(format!(
                "expected an event object, an array of events or a batch object, got {}",
                kind(&other)
            )))
        }
    };
    if events.is_empty() {
        return Err(RequestError::EmptyBatch);
    }
    if events.len() > limits.max_events {
        return Err(RequestError::TooManyEvents {
            count: events.len(),
            limit: limits.max_events,
        });
    }

    let mut out = Vec::with_capacity(events.len());
    let mut rejected = Vec::new();
    let mut any_token = env.token.is_some();
    for (i, event) in events.into_iter().enumerate() {
        let loc = if single { Loc::Single } else { Loc::Batch(i) };
        match normalise(event, &env, loc, now, &mut any_token) {
            Ok(e) => out.push(e),
            Err(e) => rejected.push(e),
        }
    }
    if !any_token {
        return Err(RequestError::MissingToken);
    }
    Ok(Payload {
        events: out,
        rejected,
        beacon,
        historical_migration: env.historical,
    })
}

/// The event-level token: `api_key`, `token`, `$token`, then `properties.token`.
fn take_event_token(m: &mut Map<String, Value>) -> Option<(Value, &'static str)> {
    for field in ["api_key", "token", "$token"] {
        if let Some(v) = take(m, field) {
            return Some((v, field));
        }
    }
    if let Some(Value::Object(p)) = m.get_mut("properties") {
        if let Some(v) = take(p, "token") {
            return Some((v, "properties.token"));
        }
    }
    None
}

fn normalise(
    event: Value,
    env: &Envelope,
    loc: Loc,
    now: DateTime<Utc>,
    any_token: &mut bool,
) -> Result<CapturedEvent, EventError> {
    let Value::Object(mut m) = event else {
        return Err(loc.err(
            codes::NOT_AN_OBJECT,
            "",
            format_args!("expected an event object, got {}", kind(&event)),
        ));
    };

    // Token first, so that the request-level "no token at all" check sees it
    // even when the event is rejected for another reason.
    let token = match take_event_token(&mut m) {
        Some((v, field)) => {
            *any_token = true;
            token_string(v, loc, field)?
        }
        None => match &env.token {
            Some(t) => t.clone(),
            None => {
                return Err(loc.err(
                    codes::MISSING_TOKEN,
                    "",
                    "no api_key or token on the event or the batch",
                ))
            }
        },
    };

    let has_person_ops = PERSON_OPS.iter().any(|k| m.contains_key(*k));
    let event_name = match take(&mut m, "event") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(loc.err(codes::MISSING_EVENT, "event", "must not be empty"));
        }
        Some(Value::String(s)) => {
            if too_long(&s, MAX_ID_CHARS) {
                return Err(loc.err(
                    codes::INVALID_EVENT,
                    "event",
                    format_args!("longer than {MAX_ID_CHARS} characters"),
                ));
            }
            s
        }
        Some(other) => {
            return Err(loc.err(
                codes::INVALID_EVENT,
                "event",
                format_args!("expected a string, got {}", kind(&other)),
            ));
        }
        // Mixpanel-style /engage person update.
        None if has_person_ops => "$set".to_owned(),
        None => return Err(loc.err(codes::MISSING_EVENT, "event", "missing")),
    };

    let mut props = match m.remove("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(loc.err(
                codes::INVALID_PROPERTIES,
                "properties",
                format_args!("expected an object, got {}", kind(&other)),
            ));
        }
    };

    // distinct_id: first non-null of the four places; all are consumed.
    let candidates = [
        ("distinct_id", m.remove("distinct_id")),
        ("$distinct_id", m.remove("$distinct_id")),
        ("properties.distinct_id", props.remove("distinct_id")),
        ("properties.$distinct_id", props.remove("$distinct_id")),
    ];
    let mut saw_null = None;
    let mut found = None;
    for (field, v) in candidates {
        match v {
            Some(Value::Null) => {
                saw_null.get_or_insert(field);
            }
            Some(v) => {
                found = Some((field, v));
                break;
            }
            None => {}
        }
    }
    let distinct_id = match (found, saw_null) {
        (Some((field, v)), _) => {
            id_string(v).map_err(|detail| loc.err(codes::INVALID_DISTINCT_ID, field, detail))?
        }
        (None, Some(field)) => {
            return Err(loc.err(codes::INVALID_DISTINCT_ID, field, "must not be null"))
        }
        (None, None) => return Err(loc.err(codes::MISSING_DISTINCT_ID, "distinct_id", "missing")),
    };

    for key in STRIPPED_PROPERTIES {
        props.remove(key);
    }
    if has_person_ops {
        for key in PERSON_OPS {
            if let Some(v) = m.remove(key) {
                merge_into(&mut props, key, v);
            }
        }
    }

    let uuid = match take(&mut m, "uuid")
        .map(|v| ("uuid", v))
        .or_else(|| take(&mut m, "$uuid").map(|v| ("$uuid", v)))
    {
        None => Uuid::now_v7(),
        Some((field, v)) => parse_uuid(&v).ok_or_else(|| {
            loc.err(
                codes::INVALID_UUID,
                field,
                format_args!("not a valid UUID: {}", describe(&v)),
            )
        })?,
    };

    let mut t = TimeInputs {
        sent_at: env.sent_at,
        ..TimeInputs::default()
    };
    if let Some(v) = take(&mut m, "timestamp") {
        t.timestamp =
            Some(time::parse_time_value(&v).ok_or_else(|| bad_time(loc, "timestamp", &v))?);
    }
    if let Some(v) = take(&mut m, "offset") {
        let ms = match &v {
            Value::Number(n) => time::number_millis(n),
            _ => None,
        };
        t.offset_ms = Some(ms.ok_or_else(|| bad_time(loc, "offset", &v))?);
    }
    for field in ["sent_at", "sentAt"] {
        if let Some(v) = take(&mut m, field) {
            t.sent_at = Some(time::parse_time_value(&v).ok_or_else(|| bad_time(loc, field, &v))?);
            break;
        }
    }
    let timestamp = time::resolve(t, now, env.historical).ok_or_else(|| {
        loc.err(
            codes::INVALID_TIMESTAMP,
            "timestamp",
            "out of range after clock-skew correction",
        )
    })?;

    Ok(CapturedEvent {
        index: loc.index(),
        token,
        uuid,
        event: event_name,
        distinct_id,
        timestamp,
        properties: serde_json::to_string(&props).unwrap_or_else(|_| "{}".to_owned()),
    })
}

#[cold]
fn bad_time(loc: Loc, field: &str, v: &Value) -> EventError {
    loc.err(
        codes::INVALID_TIMESTAMP,
        field,
        format_args!(
            "not an ISO-8601 timestamp or epoch milliseconds: {}",
            describe(v)
        ),
    )
}

/// A non-nil UUID in any of the textual forms the `uuid` crate accepts.
fn parse_uuid(v: &Value) -> Option<Uuid> {
    match v {
        Value::String(s) => Uuid::parse_str(s).ok().filter(|u| !u.is_nil()),
        _ => None,
    }
}
