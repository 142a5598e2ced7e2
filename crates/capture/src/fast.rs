//! The fast path for plain-JSON PostHog bodies: one pass over the text, properties kept as raw JSON.
//!
//! Building a `serde_json::Value` tree for every property of every event (and serialising it again for storage)
//! was most of the ingest cost. This path parses the envelope and each event's small top-level fields as values,
//! but reads `properties` as a list of (key, raw JSON value) spans, drops the keys that normalisation strips, and
//! writes the rest back by copying bytes. Validation stays in one place: the small fields go through the same
//! [`normalise`](crate::posthog) as the slow path.
//!
//! Whenever a body is not of the common shape (escaped keys, person operations on the event object, a `batch`
//! that is not an array, JSON nested beyond the limit, ...), the fast path declines and the caller takes the
//! general path, which owns every error message.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::common::STRIPPED_PROPERTIES;

/// An event object (or the root object): its top-level fields as values, `properties` as raw spans.
#[derive(Default)]
pub(crate) struct Fields<'a> {
    pub scalars: Map<String, Value>,
    pub props: Option<Props<'a>>,
    /// Only at the root: the `batch` array.
    pub batch: Option<Vec<Fields<'a>>>,
}

pub(crate) enum Props<'a> {
    /// An object: its members in order, values unparsed.
    Pairs(Vec<(&'a str, &'a RawValue)>),
    /// Anything else (null, a string, ...): normalisation decides.
    Other(Value),
}

/// The top of a body: an array of events or an object (a batch envelope or one event).
pub(crate) enum Root<'a> {
    Array(Vec<Fields<'a>>),
    Object(Fields<'a>),
}

/// Parses `text` in one pass, or `None` when the body is not of the shape the fast path handles.
pub(crate) fn parse(text: &str, max_depth: usize) -> Option<Root<'_>> {
    if exceeds_depth(text.as_bytes(), max_depth) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let root = RootSeed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(root)
}

impl Props<'_> {
    /// Splits properties into the JSON text to store (stripped keys removed) and a small map of the stripped keys
    /// (for the token and distinct id look-ups of normalisation), or the non-object value itself.
    pub(crate) fn split(self) -> (Option<String>, Value) {
        match self {
            Props::Other(v) => (None, v),
            Props::Pairs(pairs) => {
                let mut kept = String::with_capacity(
                    pairs
                        .iter()
                        .map(|(k, v)| k.len() + v.get().len() + 4)
                        .sum::<usize>()
                        + 2,
                );
                let mut stripped = Map::new();
                kept.push('{');
                for (k, v) in pairs {
                    if STRIPPED_PROPERTIES.contains(&k) {
                        if let Ok(value) = serde_json::from_str(v.get()) {
                            stripped.insert(k.to_owned(), value);
                        }
                        continue;
                    }
                    if kept.len() > 1 {
                        kept.push(',');
                    }
                    kept.push('"');
                    kept.push_str(k);
                    kept.push_str("\":");
                    kept.push_str(v.get());
                }
                kept.push('}');
                (Some(kept), Value::Object(stripped))
            }
        }
    }
}

/// True when JSON text nests deeper than `max_depth` (a byte scan; strings are skipped).
pub(crate) fn exceeds_depth(bytes: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Jump to the closing quote, skipping escaped characters.
                i += 1;
                while let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                    i += at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

struct RootSeed;

impl<'de> DeserializeSeed<'de> for RootSeed {
    type Value = Root<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(RootVisitor)
    }
}

struct RootVisitor;

impl<'de> Visitor<'de> for RootVisitor {
    type Value = Root<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object, an array of events or a batch object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        events(seq).map(Root::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        fields(map, true).map(Root::Object)
    }
}

fn events<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<Fields<'de>>, A::Error> {
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16));
    while let Some(f) = seq.next_element::<EventFields<'de>>()? {
        out.push(f.0);
    }
    Ok(out)
}

fn fields<'de, A: MapAccess<'de>>(mut map: A, root: bool) -> Result<Fields<'de>, A::Error> {
    let mut out = Fields::default();
    while let Some(key) = map.next_key::<&'de str>()? {
        match key {
            "properties" => out.props = Some(map.next_value::<PropsField<'de>>()?.0),
            "batch" if root => out.batch = Some(map.next_value::<BatchField<'de>>()?.0),
            _ => {
                let value: Value = map.next_value()?;
                out.scalars.insert(key.to_owned(), value);
            }
        }
    }
    Ok(out)
}

struct EventFields<'a>(Fields<'a>);

impl<'de> Deserialize<'de> for EventFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                fields(map, false).map(EventFields)
            }
        }
        d.deserialize_map(V)
    }
}

struct BatchField<'a>(Vec<Fields<'a>>);

impl<'de> Deserialize<'de> for BatchField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of event objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                events(seq).map(BatchField)
            }
        }
        d.deserialize_seq(V)
    }
}

struct PropsField<'a>(Props<'a>);

impl<'de> Deserialize<'de> for PropsField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PropsField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("event properties")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(key) = map.next_key::<&'de str>()? {
                    pairs.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(PropsField(Props::Pairs(pairs)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(Value::Null)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(Value::Bool(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(v.into())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(v.into())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PropsField(Props::Other(Value::String(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(v);
                }
                Ok(PropsField(Props::Other(Value::Array(items))))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_skips_strings_and_escapes() {
        assert!(!exceeds_depth(br#"{"a":"[[[[[[","b":"\"[[["}"#, 1));
        assert!(exceeds_depth(br#"{"a":[{"b":1}]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":[{"b":1}]}"#, 3));
    }

    #[test]
    fn properties_keep_order_and_drop_stripped_keys() {
        let Some(Root::Object(f)) = parse(
            r#"{"event":"e","properties":{"b":[1,{"x":2}],"token":"t","a":"s","distinct_id":7}}"#,
            64,
        ) else {
            panic!("fast path declined")
        };
        let (kept, stripped) = f.props.unwrap().split();
        assert_eq!(kept.unwrap(), r#"{"b":[1,{"x":2}],"a":"s"}"#);
        assert_eq!(
            stripped,
            serde_json::json!({"token": "t", "distinct_id": 7})
        );
    }

    #[test]
    fn escaped_keys_and_bad_batches_decline() {
        assert!(parse(r#"{"event":"e","properties":{"a\"b":1}}"#, 64).is_none());
        assert!(parse(r#"{"batch": 5}"#, 64).is_none());
        assert!(parse(r#"[[[1]]]"#, 2).is_none());
    }
}
