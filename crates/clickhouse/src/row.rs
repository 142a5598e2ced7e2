//! An event as the `events` table stores it.
//!
//! Besides the properties' JSON text, a row carries its **top-level properties indexed for filters**, as four
//! parallel arrays: the keys, each value's text and each value's number, plus the text in lower case where that
//! differs from it (`''` otherwise, which costs nothing once compressed). ClickHouse 18.16 has no JSON functions
//! (its `visitParam*` functions match a key at any depth and do not unescape keys, so they would give wrong
//! answers), so the writer computes the forms the insight filters compare, with exactly the embedded engine's
//! rules (`crates/server/src/insight_filters.rs`):
//!
//! - text: a string is itself, any other value its JSON text (`"7"` and `7` both read `7`);
//! - number: a JSON number, or a string that parses as one after trimming; otherwise NaN (no comparison holds);
//! - lower case: Rust's `to_lowercase` of the text, which `contains` compares with (ClickHouse's `lowerUTF8` folds
//!   some letters differently, e.g. a final sigma);
//! - `null` values are left out, as the engine reads them as missing.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// One row of the `events` table, serialized for `INSERT … FORMAT JSONEachRow`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub uuid: Uuid,
    pub project_id: u64,
    pub event: String,
    pub distinct_id: String,
    /// The person the distinct id belonged to when the event was written (later merges go to
    /// `person_overrides`).
    pub person_id: Uuid,
    /// Microseconds since the Unix epoch, UTC (from 1970 to 2105: the range of ClickHouse's `DateTime`, which the
    /// table's partition key uses).
    pub timestamp_us: i64,
    /// The event's properties as JSON text.
    pub properties: String,
    pub prop_keys: Vec<String>,
    pub prop_texts: Vec<String>,
    pub prop_numbers: Vec<Number>,
    pub prop_lower: Vec<String>,
}

/// A property's number, NaN when it has none. Serialized so that ClickHouse reads every value: JSON has no NaN or
/// infinities, so those are written as the strings ClickHouse parses (`"nan"`, `"inf"`, `"-inf"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_nan() {
            s.serialize_str("nan")
        } else if x.is_infinite() {
            s.serialize_str(if x > 0.0 { "inf" } else { "-inf" })
        } else {
            s.serialize_f64(x)
        }
    }
}

/// The text a filter compares (the engine's rule: strings as themselves, other values as JSON).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The number a filter compares (a string holding a number counts), NaN without one.
pub fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.trim().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// The top-level properties of a JSON object, indexed as the tables store them: per property (in the object's
/// order, `null`s left out) its key, text, number and lower-case text (`''` where it equals the text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropIndex {
    pub keys: Vec<String>,
    pub texts: Vec<String>,
    pub numbers: Vec<Number>,
    pub lower: Vec<String>,
}

impl PropIndex {
    pub fn new(properties: &Map<String, Value>) -> PropIndex {
        let mut ix = PropIndex {
            keys: Vec::with_capacity(properties.len()),
            texts: Vec::with_capacity(properties.len()),
            numbers: Vec::with_capacity(properties.len()),
            lower: Vec::with_capacity(properties.len()),
        };
        for (k, v) in properties {
            if v.is_null() {
                continue;
            }
            ix.keys.push(k.clone());
            let t = text(v);
            let lower = t.to_lowercase();
            ix.lower
                .push(if lower == t { String::new() } else { lower });
            ix.texts.push(t);
            ix.numbers.push(Number(number(v)));
        }
        ix
    }
}

impl EventRow {
    /// A row for an event; the property index is computed from `properties`.
    pub fn new(
        uuid: Uuid,
        project_id: u64,
        event: &str,
        distinct_id: &str,
        person_id: Uuid,
        timestamp_us: i64,
        properties: &Map<String, Value>,
    ) -> EventRow {
        let ix = PropIndex::new(properties);
        EventRow {
            uuid,
            project_id,
            event: event.to_string(),
            distinct_id: distinct_id.to_string(),
            person_id,
            timestamp_us,
            properties: Value::Object(properties.clone()).to_string(),
            prop_keys: ix.keys,
            prop_texts: ix.texts,
            prop_numbers: ix.numbers,
            prop_lower: ix.lower,
        }
    }
}

/// One row of the `persons` table: a person's properties as of identity change `version`, or (`deleted = 1`, no
/// properties) the person's erasure. The newest version of a person id wins.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PersonRow {
    pub project_id: u64,
    /// The metadata store's person id.
    pub id: i64,
    pub uuid: Uuid,
    pub prop_keys: Vec<String>,
    pub prop_texts: Vec<String>,
    pub prop_numbers: Vec<Number>,
    pub prop_lower: Vec<String>,
    pub deleted: u8,
    pub version: u64,
}

impl PersonRow {
    /// A person's current properties, indexed as an event's (the embedded engine compares a person's value as it
    /// compares an event's).
    pub fn new(
        project_id: u64,
        id: i64,
        uuid: Uuid,
        properties: &Map<String, Value>,
        version: u64,
    ) -> PersonRow {
        let ix = PropIndex::new(properties);
        PersonRow {
            project_id,
            id,
            uuid,
            prop_keys: ix.keys,
            prop_texts: ix.texts,
            prop_numbers: ix.numbers,
            prop_lower: ix.lower,
            deleted: 0,
            version,
        }
    }

    /// The erasure of person `id` at `version`: it has no properties any more, and no uuid is kept.
    pub fn deleted(project_id: u64, id: i64, version: u64) -> PersonRow {
        PersonRow {
            project_id,
            id,
            uuid: Uuid::nil(),
            prop_keys: Vec::new(),
            prop_texts: Vec::new(),
            prop_numbers: Vec::new(),
            prop_lower: Vec::new(),
            deleted: 1,
            version,
        }
    }
}

/// A person override: from `version` on, `distinct_id`'s events belong to `person_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonOverride {
    pub project_id: u64,
    pub distinct_id: String,
    pub person_id: Uuid,
    /// Higher wins; the identity writer's sequence of the merge.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_are_indexed_as_the_engine_compares_them() {
        let props =
            json!({"plan": "pro", "n": 7, "s": " 2.5 ", "gone": null, "o": {"a": 1}, "b": true});
        let row = EventRow::new(
            Uuid::nil(),
            1,
            "e",
            "d",
            Uuid::nil(),
            0,
            props.as_object().unwrap(),
        );
        let i = |k: &str| row.prop_keys.iter().position(|x| x == k).unwrap();
        assert!(!row.prop_keys.contains(&"gone".to_string()));
        assert_eq!(row.prop_texts[i("plan")], "pro");
        assert_eq!(row.prop_lower[i("plan")], "", "already lower case");
        assert_eq!(row.prop_lower[i("o")], "");
        assert_eq!(row.prop_texts[i("n")], "7");
        assert_eq!(row.prop_texts[i("o")], r#"{"a":1}"#);
        assert_eq!(row.prop_numbers[i("s")], Number(2.5));
        assert!(row.prop_numbers[i("plan")].0.is_nan());
        let j = serde_json::to_string(&row).unwrap();
        assert!(j.contains(r#""prop_numbers":["#), "{j}");
        assert!(j.contains(r#""nan""#), "{j}");
    }
}
