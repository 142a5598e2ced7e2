//! Property filters of insights: compiled predicates, and their evaluation over a partition's event properties
//! (read column by column from its segments, and from the JSON text of its unsealed tail).
//!
//! Semantics (PostHog's): `exact` holds when the property equals the value or one of a list of values — equal as
//! JSON, or equal once both are written as text (`"7"` matches `7`); `contains` is case-insensitive on the text;
//! `regex` searches the text; `gt`/`gte`/`lt`/`lte` compare numbers (a string holding a number counts);
//! `is_set` means present and not `null`. Every positive operator fails on a missing property, and its negation
//! (`is_not`, `not_contains`, `not_regex`, `is_not_set`) holds on one.

use flywheel_engine::table::{Partition, Snapshot};
use flywheel_engine::EngineError;
use flywheel_query::{Operator, PropertyFilter};
use serde_json::Value;

/// A filter ready to test values.
#[derive(Debug)]
pub struct Compiled {
    pub key: String,
    op: Operator,
    values: Vec<Value>,
    texts: Vec<String>,
    needle: String,
    regex: Option<regex::Regex>,
    number: f64,
}

fn text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// A number from a property value (a string holding a number counts).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Compiled {
    /// Compiles a validated filter (the query crate checked the value's shape and the regex).
    pub fn new(f: &PropertyFilter) -> Compiled {
        let values: Vec<Value> = match &f.value {
            Some(Value::Array(items)) => items.clone(),
            Some(v) => vec![v.clone()],
            None => Vec::new(),
        };
        let texts = values.iter().map(|v| text(v).into_owned()).collect();
        let first = values.first();
        Compiled {
            key: f.key.clone(),
            op: f.operator,
            needle: first.map(|v| text(v).to_lowercase()).unwrap_or_default(),
            regex: match f.operator {
                Operator::Regex | Operator::NotRegex => first
                    .and_then(|v| v.as_str())
                    .and_then(|s| regex::RegexBuilder::new(s).size_limit(1 << 20).build().ok()),
                _ => None,
            },
            number: first.and_then(number).unwrap_or(f64::NAN),
            values,
            texts,
        }
    }

    /// The property the filter tests.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether a property value (`None`: the property is missing) passes.
    pub fn matches(&self, v: Option<&Value>) -> bool {
        let v = v.filter(|v| !v.is_null());
        match self.op {
            Operator::IsSet => v.is_some(),
            Operator::IsNotSet => v.is_none(),
            Operator::Exact => v.is_some_and(|v| self.exact(v)),
            Operator::IsNot => !v.is_some_and(|v| self.exact(v)),
            Operator::Contains => v.is_some_and(|v| self.contains(v)),
            Operator::NotContains => !v.is_some_and(|v| self.contains(v)),
            Operator::Regex => v.is_some_and(|v| self.regex(v)),
            Operator::NotRegex => !v.is_some_and(|v| self.regex(v)),
            Operator::Gt => v.and_then(number).is_some_and(|x| x > self.number),
            Operator::Gte => v.and_then(number).is_some_and(|x| x >= self.number),
            Operator::Lt => v.and_then(number).is_some_and(|x| x < self.number),
            Operator::Lte => v.and_then(number).is_some_and(|x| x <= self.number),
        }
    }

    fn exact(&self, v: &Value) -> bool {
        if self.values.iter().any(|x| x == v) {
            return true;
        }
        let t = text(v);
        self.texts.iter().any(|x| *x == *t)
    }

    fn contains(&self, v: &Value) -> bool {
        text(v).to_lowercase().contains(&self.needle)
    }

    fn regex(&self, v: &Value) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(&text(v)))
    }
}

/// Evaluates `filter` on the event property `filter.key` of every row of `part`, in storage order.
pub fn event_pass(
    snap: &Snapshot,
    part: &Partition,
    filter: &Compiled,
) -> Result<Vec<bool>, EngineError> {
    map_event_property(snap, part, &filter.key, filter.matches(None), |v| {
        filter.matches(Some(v))
    })
}

/// `f` of the event property `key` of every row of `part`, in storage order; `missing` where the row does not
/// have it (or has `null`). A dictionary-encoded column calls `f` once per distinct value.
pub fn map_event_property<T: Clone>(
    snap: &Snapshot,
    part: &Partition,
    key: &str,
    missing: T,
    mut f: impl FnMut(&Value) -> T,
) -> Result<Vec<T>, EngineError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type};
    use arrow_array::Array;
    use arrow_schema::DataType;

    let mut out = vec![missing.clone(); part.len()];
    let column = format!("{}{}", flywheel_engine::columnar::PROPERTY_PREFIX, key);
    for (file, rows) in part.segments() {
        let batches = flywheel_engine::columnar::read_segment(
            &snap.dir.join(file),
            Some(&[column.as_str()]),
        )?;
        let mut at = rows.start;
        for b in &batches {
            let n = b.num_rows();
            if let Some(c) = b.column_by_name(&column) {
                let slots = &mut out[at..at + n];
                match c.data_type() {
                    DataType::Dictionary(_, _) => {
                        let dict = c.as_dictionary::<Int32Type>();
                        let values = dict.values().as_string::<i32>();
                        let mapped: Vec<T> = (0..values.len())
                            .map(|i| f(&Value::String(values.value(i).to_owned())))
                            .collect();
                        for (slot, k) in slots.iter_mut().zip(dict.keys().iter()) {
                            if let Some(k) = k {
                                *slot = mapped[k as usize].clone();
                            }
                        }
                    }
                    DataType::Float64 => {
                        let a = c.as_primitive::<Float64Type>();
                        for (i, slot) in slots.iter_mut().enumerate() {
                            if !a.is_null(i) {
                                let x = a.value(i);
                                let v = if x.fract() == 0.0 && x.abs() <= (1u64 << 53) as f64 {
                                    Value::from(x as i64)
                                } else {
                                    Value::from(x)
                                };
                                *slot = f(&v);
                            }
                        }
                    }
                    DataType::Boolean => {
                        let a = c.as_boolean();
                        for (i, slot) in slots.iter_mut().enumerate() {
                            if !a.is_null(i) {
                                *slot = f(&Value::Bool(a.value(i)));
                            }
                        }
                    }
                    _ => {
                        let a = c.as_string::<i32>();
                        for (i, slot) in slots.iter_mut().enumerate() {
                            if !a.is_null(i) {
                                match serde_json::from_str::<Value>(a.value(i)) {
                                    Ok(Value::Null) | Err(_) => {}
                                    Ok(v) => *slot = f(&v),
                                }
                            }
                        }
                    }
                }
            }
            at += n;
        }
    }
    let sealed = part.len() - part.tail_len();
    for (row, slot) in out.iter_mut().enumerate().skip(sealed) {
        let props = part.tail_properties(row).unwrap_or("{}");
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(props) {
            match m.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => *slot = f(v),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flywheel_query::PropertyType;
    use serde_json::json;

    fn f(op: Operator, value: Option<Value>) -> Compiled {
        Compiled::new(&PropertyFilter {
            key: "k".into(),
            value,
            operator: op,
            property_type: PropertyType::Event,
            group_type_index: None,
        })
    }

    #[test]
    fn operators_follow_posthog() {
        let exact = f(Operator::Exact, Some(json!(["pro", 7])));
        assert!(exact.matches(Some(&json!("pro"))));
        assert!(exact.matches(Some(&json!("7"))), "text equality");
        assert!(exact.matches(Some(&json!(7))));
        assert!(!exact.matches(Some(&json!("Pro"))));
        assert!(!exact.matches(None));
        let not = f(Operator::IsNot, Some(json!("pro")));
        assert!(
            not.matches(None)
                && not.matches(Some(&json!("free")))
                && !not.matches(Some(&json!("pro")))
        );
        let c = f(Operator::Contains, Some(json!("PRI")));
        assert!(c.matches(Some(&json!("/pricing"))) && !c.matches(None));
        assert!(f(Operator::NotContains, Some(json!("x"))).matches(None));
        let r = f(Operator::Regex, Some(json!("^/docs/\\d+$")));
        assert!(r.matches(Some(&json!("/docs/12"))) && !r.matches(Some(&json!("/docs/a"))));
        assert!(f(Operator::NotRegex, Some(json!("a"))).matches(None));
        let gt = f(Operator::Gt, Some(json!(10)));
        assert!(gt.matches(Some(&json!(10.5))) && gt.matches(Some(&json!("11"))));
        assert!(
            !gt.matches(Some(&json!(10))) && !gt.matches(Some(&json!("abc"))) && !gt.matches(None)
        );
        assert!(f(Operator::Gte, Some(json!(10))).matches(Some(&json!(10))));
        assert!(f(Operator::Lte, Some(json!(10))).matches(Some(&json!(-1))));
        assert!(!f(Operator::Lt, Some(json!(10))).matches(Some(&json!(10))));
        let set = f(Operator::IsSet, None);
        assert!(
            set.matches(Some(&json!(0))) && !set.matches(Some(&Value::Null)) && !set.matches(None)
        );
        assert!(f(Operator::IsNotSet, None).matches(Some(&Value::Null)));
    }
}
