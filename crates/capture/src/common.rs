//! Helpers shared by the PostHog and Segment normalisers.

use std::fmt::Display;

use serde_json::{Map, Value};

use crate::error::{codes, EventError};

/// Maximum length, in characters, of an event name or distinct id.
pub(crate) const MAX_ID_CHARS: usize = 200;

/// Properties removed from every event (PostHog and Segment): they are
/// represented by [`crate::CapturedEvent::token`] and
/// [`crate::CapturedEvent::distinct_id`], and downstream code must not read a
/// second, conflicting copy.
pub(crate) const STRIPPED_PROPERTIES: [&str; 5] =
    ["token", "$token", "api_key", "distinct_id", "$distinct_id"];

/// Where an event sits in the request, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// The body was a single event object.
    Single,
    /// Element `i` of a batch or top-level array.
    Batch(usize),
}

impl Loc {
    pub(crate) fn index(self) -> usize {
        match self {
            Loc::Single => 0,
            Loc::Batch(i) => i,
        }
    }

    /// An error naming `field` (empty: the event itself).
    #[cold]
    pub(crate) fn err(self, code: &'static str, field: &str, detail: impl Display) -> EventError {
        let message = match (self, field.is_empty()) {
            (Loc::Single, true) => format!("event: {detail}"),
            (Loc::Single, false) => format!("{field}: {detail}"),
            (Loc::Batch(i), true) => format!("batch[{i}]: {detail}"),
            (Loc::Batch(i), false) => format!("batch[{i}].{field}: {detail}"),
        };
        EventError {
            index: self.index(),
            code,
            message,
        }
    }
}

/// JSON type name for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `s` is longer than `max` characters (cheap for ASCII-length strings).
pub(crate) fn too_long(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

/// Removes `key`, treating JSON `null` as absent.
pub(crate) fn take(map: &mut Map<String, Value>, key: &str) -> Option<Value> {
    map.remove(key).filter(|v| !v.is_null())
}

/// An id (distinct id, user id, group key, ...): a non-empty string of at most
/// 200 characters, or a number (converted to its decimal text).
pub(crate) fn id_string(v: Value) -> Result<String, String> {
    let s = match v {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        other => return Err(format!("expected a string or number, got {}", kind(&other))),
    };
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if too_long(&s, MAX_ID_CHARS) {
        return Err(format!("longer than {MAX_ID_CHARS} characters"));
    }
    Ok(s)
}

/// A token value: a non-empty string.
pub(crate) fn token_string(v: Value, loc: Loc, field: &str) -> Result<String, EventError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s),
        other => Err(loc.err(
            codes::INVALID_TOKEN,
            field,
            format_args!("expected a non-empty string, got {}", describe(&other)),
        )),
    }
}

/// Short description of a value for messages: strings quoted and truncated.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "an empty string".to_owned(),
        Value::String(s) => {
            let mut end = s.len().min(64);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            if end < s.len() {
                format!("\"{}…\"", &s[..end])
            } else {
                format!("\"{s}\"")
            }
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_owned(),
    }
}

/// Merges a top-level person operation (`$set`, `$set_once`, `$unset`) into
/// `properties[key]`. Properties win on conflicts: objects are merged key by
/// key, arrays are concatenated without duplicates, otherwise the value in
/// properties is kept.
pub(crate) fn merge_into(props: &mut Map<String, Value>, key: &str, top: Value) {
    if top.is_null() {
        return;
    }
    match props.get_mut(key) {
        None | Some(Value::Null) => {
            props.insert(key.to_owned(), top);
        }
        Some(Value::Object(existing)) => {
            if let Value::Object(top) = top {
                for (k, v) in top {
                    existing.entry(k).or_insert(v);
                }
            }
        }
        Some(Value::Array(existing)) => {
            if let Value::Array(top) = top {
                for v in top {
                    if !existing.contains(&v) {
                        existing.push(v);
                    }
                }
            }
        }
        Some(_) => {}
    }
}
