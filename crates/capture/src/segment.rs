//! Segment HTTP tracking API (`/v1/batch`, `/v1/track`, `/v1/identify`,
//! `/v1/group`, `/v1/alias`, `/v1/page`, `/v1/screen`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::common::{
    describe, id_string, kind, take, token_string, too_long, Loc, MAX_ID_CHARS, STRIPPED_PROPERTIES,
};
use crate::decode;
use crate::error::{codes, EventError};
use crate::time::{self, TimeInputs};
use crate::{CapturedEvent, Limits, Payload, RawRequest, RequestError};

/// Which Segment endpoint was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentCall {
    /// `/v1/batch`: `{"batch": [messages]}`, each message with a `type`.
    Batch,
    /// `/v1/track`
    Track,
    /// `/v1/identify`
    Identify,
    /// `/v1/group`
    Group,
    /// `/v1/alias`
    Alias,
    /// `/v1/page`
    Page,
    /// `/v1/screen`
    Screen,
}

impl SegmentCall {
    /// The call for the last path segment (`"batch"`, `"track"`, ... ;
    /// `"import"` is Segment's alias of `batch`). Case-insensitive.
    pub fn from_name(name: &str) -> Option<SegmentCall> {
        const NAMES: [(&str, SegmentCall); 8] = [
            ("batch", SegmentCall::Batch),
            ("import", SegmentCall::Batch),
            ("track", SegmentCall::Track),
            ("identify", SegmentCall::Identify),
            ("group", SegmentCall::Group),
            ("alias", SegmentCall::Alias),
            ("page", SegmentCall::Page),
            ("screen", SegmentCall::Screen),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, c)| c)
    }
}

/// Batch-level settings.
struct Envelope<'a> {
    token: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    context: Option<Map<String, Value>>,
    basic_auth: Option<&'a str>,
}

/// Decodes and normalises a Segment tracking-API request into PostHog-model
/// events.
///
/// The write key comes from the message's `writeKey`, else the batch's
/// `writeKey`, else the HTTP Basic user. Single-call endpoints take one
/// message whose type is implied by `call` (a `type` field is ignored).
pub fn parse_segment(
    call: SegmentCall,
    req: &RawRequest<'_>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Payload, RequestError> {
    let value = decode::segment_value(req, limits)?;
    let Value::Object(mut root) = value else {
        return Err(RequestError::InvalidPayload(format!(
            "expected a JSON object, got {}",
            kind(&value)
        )));
    };
    let mut env = Envelope {
        token: None,
        sent_at: None,
        context: None,
        basic_auth: req.basic_auth_user.filter(|u| !u.is_empty()),
    };

    let (messages, forced, single) = if call == SegmentCall::Batch {
        let messages = match root.remove("batch") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(RequestError::InvalidPayload(format!(
                    "`batch` must be an array, got {}",
                    kind(&other)
                )))
            }
            None => {
                return Err(RequestError::InvalidPayload(
                    "missing `batch` array".to_owned(),
                ))
            }
        };
        if let Some(v) = take(&mut root, "writeKey") {
            match v {
                Value::String(s) if !s.is_empty() => env.token = Some(s),
                _ => return Err(RequestError::InvalidToken { field: "writeKey" }),
            }
        }
        if let Some(v) = take(&mut root, "sentAt") {
            env.sent_at = Some(time::parse_time_value(&v).ok_or_else(|| {
                RequestError::InvalidPayload(format!(
                    "`sentAt` is not a valid timestamp: {}",
                    describe(&v)
                ))
            })?);
        }
        match take(&mut root, "context") {
            None => {}
            Some(Value::Object(c)) => env.context = Some(c),
            Some(other) => {
                return Err(RequestError::InvalidPayload(format!(
                    "`context` must be an object, got {}",
                    kind(&other)
                )))
            }
        }
        (messages, None, false)
    } else {
        let kind = match call {
            SegmentCall::Track | SegmentCall::Batch => Kind::Track,
            SegmentCall::Identify => Kind::Identify,
            SegmentCall::Group => Kind::Group,
            SegmentCall::Alias => Kind::Alias,
            SegmentCall::Page => Kind::Page,
            SegmentCall::Screen => Kind::Screen,
        };
        (vec![Value::Object(root)], Some(kind), true)
    };

    if messages.is_empty() {
        return Err(RequestError::EmptyBatch);
    }
    if messages.len() > limits.max_events {
        return Err(RequestError::TooManyEvents {
            count: messages.len(),
            limit: limits.max_events,
        });
    }
    let mut any_token = env.token.is_some() || env.basic_auth.is_some();
    let mut events = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (i, msg) in messages.into_iter().enumerate() {
        let loc = if single { Loc::Single } else { Loc::Batch(i) };
        match normalise(msg, forced, &env, loc, now, &mut any_token) {
            Ok(e) => events.push(e),
            Err(e) => rejected.push(e),
        }
    }
    if !any_token {
        return Err(RequestError::MissingToken);
    }
    Ok(Payload {
        events,
        rejected,
        beacon: false,
        historical_migration: false,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Track,
    Identify,
    Group,
    Alias,
    Page,
    Screen,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        const KINDS: [(&str, Kind); 6] = [
            ("track", Kind::Track),
            ("identify", Kind::Identify),
            ("group", Kind::Group),
            ("alias", Kind::Alias),
            ("page", Kind::Page),
            ("screen", Kind::Screen),
        ];
        KINDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(_, k)| k)
    }
}

/// An optional id field: null/absent/empty string are "absent".
fn optional_id(
    m: &mut Map<String, Value>,
    field: &str,
    loc: Loc,
) -> Result<Option<String>, EventError> {
    match take(m, field) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => id_string(v)
            .map(Some)
            .map_err(|d| loc.err(codes::INVALID_DISTINCT_ID, field, d)),
    }
}

/// An object-valued field (`properties`, `traits`, `context`); absent/null is empty.
fn object_field(
    m: &mut Map<String, Value>,
    field: &str,
    code: &'static str,
    loc: Loc,
) -> Result<Map<String, Value>, EventError> {
    match take(m, field) {
        None => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(loc.err(
            code,
            field,
            format_args!("expected an object, got {}", kind(&other)),
        )),
    }
}

/// A stable UUID for a Segment `messageId`: the id itself when it is a UUID,
/// else the first 16 bytes of SHA-256("segment:" + messageId) with the
/// version (8, custom) and RFC 4122 variant bits set. Retries of one message
/// therefore map to the same UUID, so they deduplicate.
pub fn message_id_uuid(message_id: &str) -> Uuid {
    if let Ok(u) = Uuid::parse_str(message_id) {
        if !u.is_nil() {
            return u;
        }
    }
    let mut h = Sha256::new();
    h.update(b"segment:");
    h.update(message_id.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// Inserts `v` under `key` unless `props` already has a non-null value there.
fn put(props: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    let Some(v) = v else { return };
    if v.is_null() {
        return;
    }
    match props.get_mut(key) {
        Some(existing) if !existing.is_null() => {}
        Some(existing) => *existing = v,
        None => {
            props.insert(key.to_owned(), v);
        }
    }
}

fn sub(ctx: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match ctx.remove(key) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

/// Copies the useful parts of a Segment `context` into PostHog properties.
/// Explicit properties win.
fn apply_context(props: &mut Map<String, Value>, mut ctx: Map<String, Value>) {
    put(props, "$ip", ctx.remove("ip"));
    put(props, "$raw_user_agent", ctx.remove("userAgent"));
    put(props, "$locale", ctx.remove("locale"));
    put(props, "$timezone", ctx.remove("timezone"));
    let mut library = sub(&mut ctx, "library");
    put(props, "$lib", library.remove("name"));
    put(props, "$lib_version", library.remove("version"));
    let mut page = sub(&mut ctx, "page");
    put(props, "$current_url", page.remove("url"));
    put(props, "$referrer", page.remove("referrer"));
    put(props, "$pathname", page.remove("path"));
    let mut os = sub(&mut ctx, "os");
    put(props, "$os", os.remove("name"));
    put(props, "$os_version", os.remove("version"));
    let mut app = sub(&mut ctx, "app");
    put(props, "$app_name", app.remove("name"));
    put(props, "$app_version", app.remove("version"));
    let mut device = sub(&mut ctx, "device");
    put(props, "$device_type", device.remove("type"));
    put(props, "$device_manufacturer", device.remove("manufacturer"));
    put(props, "$device_model", device.remove("model"));
    let mut screen = sub(&mut ctx, "screen");
    put(props, "$screen_width", screen.remove("width"));
    put(props, "$screen_height", screen.remove("height"));
    let mut campaign = sub(&mut ctx, "campaign");
    for (from, to) in [
        ("name", "utm_campaign"),
        ("source", "utm_source"),
        ("medium", "utm_medium"),
        ("term", "utm_term"),
        ("content", "utm_content"),
    ] {
        put(props, to, campaign.remove(from));
    }
}

fn normalise(
    msg: Value,
    forced: Option<Kind>,
    env: &Envelope<'_>,
    loc: Loc,
    now: DateTime<Utc>,
    any_token: &mut bool,
) -> Result<CapturedEvent, EventError> {
    let Value::Object(mut m) = msg else {
        return Err(loc.err(
            codes::NOT_AN_OBJECT,
            "",
            format_args!("expected a message object, got {}", kind(&msg)),
        ));
    };

    let token = match take(&mut m, "writeKey") {
        Some(v) => {
            *any_token = true;
            token_string(v, loc, "writeKey")?
        }
        None => match (&env.token, env.basic_auth) {
            (Some(t), _) => t.clone(),
            (None, Some(b)) => b.to_owned(),
            (None, None) => {
                return Err(loc.err(
                    codes::MISSING_TOKEN,
                    "writeKey",
                    "no write key in the message, the batch or HTTP Basic auth",
                ))
            }
        },
    };

    let msg_kind = match forced {
        Some(k) => k,
        None => match take(&mut m, "type") {
            None => return Err(loc.err(codes::MISSING_TYPE, "type", "missing")),
            Some(v @ Value::String(_)) => {
                match v.as_str().and_then(Kind::parse) {
                    Some(k) => k,
                    None => return Err(loc.err(
                        codes::INVALID_TYPE,
                        "type",
                        format_args!(
                            "unknown message type {}, expected track, identify, group, alias, page or screen",
                            describe(&v)
                        ),
                    )),
                }
            }
            Some(other) => {
                return Err(loc.err(
                    codes::INVALID_TYPE,
                    "type",
                    format_args!("expected a string, got {}", kind(&other)),
                ))
            }
        },
    };

    let user_id = optional_id(&mut m, "userId", loc)?;
    let anonymous_id = optional_id(&mut m, "anonymousId", loc)?;
    let mut props = object_field(&mut m, "properties", codes::INVALID_PROPERTIES, loc)?;
    let mut ctx = object_field(&mut m, "context", codes::INVALID_CONTEXT, loc)?;
    if let Some(batch_ctx) = &env.context {
        for (k, v) in batch_ctx {
            if !ctx.contains_key(k) {
                ctx.insert(k.clone(), v.clone());
            }
        }
    }

    let (event, distinct_id) = match msg_kind {
        Kind::Alias => {
            let Some(user_id) = user_id else {
                return Err(loc.err(codes::MISSING_USER_ID, "userId", "required for alias"));
            };
            let previous = match take(&mut m, "previousId") {
                None => {
                    return Err(loc.err(
                        codes::MISSING_PREVIOUS_ID,
                        "previousId",
                        "required for alias",
                    ))
                }
                Some(v) => id_string(v)
                    .map_err(|d| loc.err(codes::MISSING_PREVIOUS_ID, "previousId", d))?,
            };
            props.insert("alias".to_owned(), Value::String(previous));
            ("$create_alias".to_owned(), user_id)
        }
        other => {
            let mut anonymous_id = anonymous_id;
            // When both are present `anonymous_id` stays for `$anon_distinct_id`.
            let distinct_id = match user_id.or_else(|| anonymous_id.take()) {
                Some(id) => id,
                None => {
                    return Err(loc.err(
                        codes::MISSING_USER_ID,
                        "userId",
                        "one of userId or anonymousId is required",
                    ))
                }
            };
            let event = match other {
                Kind::Track => match take(&mut m, "event") {
                    None => return Err(loc.err(codes::MISSING_EVENT, "event", "missing")),
                    Some(Value::String(s)) if s.is_empty() => {
                        return Err(loc.err(codes::MISSING_EVENT, "event", "must not be empty"))
                    }
                    Some(Value::String(s)) if too_long(&s, MAX_ID_CHARS) => {
                        return Err(loc.err(
                            codes::INVALID_EVENT,
                            "event",
                            format_args!("longer than {MAX_ID_CHARS} characters"),
                        ))
                    }
                    Some(Value::String(s)) => s,
                    Some(other) => {
                        return Err(loc.err(
                            codes::INVALID_EVENT,
                            "event",
                            format_args!("expected a string, got {}", kind(&other)),
                        ))
                    }
                },
                Kind::Identify => {
                    let traits = object_field(&mut m, "traits", codes::INVALID_PROPERTIES, loc)?;
                    crate::common::merge_into(&mut props, "$set", Value::Object(traits));
                    if let Some(a) = anonymous_id {
                        props.insert("$anon_distinct_id".to_owned(), Value::String(a));
                    }
                    "$identify".to_owned()
                }
                Kind::Group => {
                    let group_key = match take(&mut m, "groupId") {
                        None => {
                            return Err(loc.err(
                                codes::MISSING_GROUP_ID,
                                "groupId",
                                "required for group",
                            ))
                        }
                        Some(v) => id_string(v)
                            .map_err(|d| loc.err(codes::MISSING_GROUP_ID, "groupId", d))?,
                    };
                    let mut traits =
                        object_field(&mut m, "traits", codes::INVALID_PROPERTIES, loc)?;
                    let group_type = match traits.remove("$group_type") {
                        Some(Value::String(s)) if !s.is_empty() => s,
                        _ => "company".to_owned(),
                    };
                    let mut groups = match props.remove("$groups") {
                        Some(Value::Object(g)) => g,
                        _ => Map::new(),
                    };
                    groups.insert(group_type.clone(), Value::String(group_key.clone()));
                    props.insert("$groups".to_owned(), Value::Object(groups));
                    props.insert("$group_type".to_owned(), Value::String(group_type));
                    props.insert("$group_key".to_owned(), Value::String(group_key));
                    props.insert("$group_set".to_owned(), Value::Object(traits));
                    "$groupidentify".to_owned()
                }
                Kind::Page => {
                    put(&mut props, "name", take(&mut m, "name"));
                    put(&mut props, "category", take(&mut m, "category"));
                    let url = props.get("url").filter(|v| !v.is_null()).cloned();
                    put(&mut props, "$current_url", url);
                    let path = props.get("path").filter(|v| !v.is_null()).cloned();
                    put(&mut props, "$pathname", path);
                    "$pageview".to_owned()
                }
                Kind::Screen => {
                    let name = take(&mut m, "name")
                        .or_else(|| props.get("name").filter(|v| !v.is_null()).cloned());
                    put(&mut props, "$screen_name", name);
                    put(&mut props, "category", take(&mut m, "category"));
                    "$screen".to_owned()
                }
                Kind::Alias => unreachable!("handled above"),
            };
            (event, distinct_id)
        }
    };
    apply_context(&mut props, ctx);
    for key in STRIPPED_PROPERTIES {
        props.remove(key);
    }

    let uuid = match take(&mut m, "messageId") {
        None => Uuid::now_v7(),
        Some(Value::String(s)) if s.is_empty() => Uuid::now_v7(),
        Some(Value::String(s)) => message_id_uuid(&s),
        Some(Value::Number(n)) => message_id_uuid(&n.to_string()),
        Some(other) => {
            return Err(loc.err(
                codes::INVALID_MESSAGE_ID,
                "messageId",
                format_args!("expected a string, got {}", kind(&other)),
            ))
        }
    };

    let mut t = TimeInputs {
        sent_at: env.sent_at,
        ..TimeInputs::default()
    };
    for field in ["timestamp", "originalTimestamp"] {
        if let Some(v) = take(&mut m, field) {
            t.timestamp = Some(time::parse_time_value(&v).ok_or_else(|| bad_time(loc, field, &v))?);
            break;
        }
    }
    if let Some(v) = take(&mut m, "sentAt") {
        t.sent_at = Some(time::parse_time_value(&v).ok_or_else(|| bad_time(loc, "sentAt", &v))?);
    }
    let timestamp = time::resolve(t, now, false).ok_or_else(|| {
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
        event,
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
        format_args!("not an ISO-8601 timestamp: {}", describe(v)),
    )
}
