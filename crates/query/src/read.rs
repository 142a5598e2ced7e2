//! A small reader over `serde_json::Value` that knows where it is (the field path), collects every
//! problem instead of stopping at the first, and reports fields it was not asked about.
//!
//! serde's derived `Deserialize` stops at the first error and names a line and column, not a field;
//! definitions are small, so walking the value by hand costs nothing and gives exact paths.

use serde_json::{Map, Value};

use crate::FieldError;

/// The problems found so far. At most one problem is kept per field: a field that failed to parse
/// is left out of the definition, and the checks after it would otherwise report it missing too.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        if self.0.iter().any(|e| e.field == field) {
            return;
        }
        self.0.push(FieldError {
            field,
            message: message.into(),
        });
    }
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One JSON object being read. Every key read is remembered; [`Obj::finish`] reports the rest.
pub(crate) struct Obj<'a> {
    pub(crate) path: String,
    map: &'a Map<String, Value>,
    seen: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// The object at `path`, or an error there when `v` is not an object.
    pub(crate) fn new(v: &'a Value, path: &str, e: &mut Errors) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj {
                path: path.to_string(),
                map,
                seen: Vec::new(),
            }),
            other => {
                let at = if path.is_empty() { "body" } else { path };
                e.push(at, format!("must be an object, not {}", type_name(other)));
                None
            }
        }
    }

    /// The path of a key of this object.
    pub(crate) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `null` counts as absent.
    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.seen.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Marks a key as known without reading it (it is read elsewhere, e.g. a tag).
    pub(crate) fn allow(&mut self, key: &'static str) {
        self.seen.push(key);
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// A string of 1..=`max` characters.
    pub(crate) fn string(
        &mut self,
        key: &'static str,
        max: usize,
        e: &mut Errors,
    ) -> Option<String> {
        let v = self.get(key)?;
        match v {
            Value::String(s) if s.is_empty() => {
                e.push(self.at(key), "must not be empty");
                None
            }
            Value::String(s) if s.chars().count() > max => {
                e.push(self.at(key), format!("must be at most {max} characters"));
                None
            }
            Value::String(s) => Some(s.clone()),
            other => {
                e.push(
                    self.at(key),
                    format!("must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A required string.
    pub(crate) fn required_string(
        &mut self,
        key: &'static str,
        max: usize,
        e: &mut Errors,
    ) -> Option<String> {
        if !self.has(key) {
            self.seen.push(key);
            e.push(self.at(key), "is required");
            return None;
        }
        self.string(key, max, e)
    }

    pub(crate) fn boolean(&mut self, key: &'static str, e: &mut Errors) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                e.push(
                    self.at(key),
                    format!("must be true or false, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A finite number in `min..=max`.
    pub(crate) fn number(
        &mut self,
        key: &'static str,
        min: f64,
        max: f64,
        e: &mut Errors,
    ) -> Option<f64> {
        let v = self.get(key)?;
        match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Some(n),
            _ => {
                e.push(
                    self.at(key),
                    format!("must be a number from {min} to {max}"),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn integer(
        &mut self,
        key: &'static str,
        min: u64,
        max: u64,
        e: &mut Errors,
    ) -> Option<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ if v.is_number() => {
                e.push(
                    self.at(key),
                    format!("must be a whole number from {min} to {max}"),
                );
                None
            }
            _ => {
                e.push(
                    self.at(key),
                    format!("must be a whole number, not {}", type_name(v)),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`, also given as text of decimal digits (`"30"`).
    pub(crate) fn integer_or_digits(
        &mut self,
        key: &'static str,
        min: u64,
        max: u64,
        e: &mut Errors,
    ) -> Option<u64> {
        if let Some(Value::String(text)) = self.map.get(key) {
            self.seen.push(key);
            return match text.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    e.push(
                        self.at(key),
                        format!("must be a whole number from {min} to {max}, not `{text}`"),
                    );
                    None
                }
            };
        }
        self.integer(key, min, max, e)
    }

    /// One of a fixed set of names.
    pub(crate) fn choice<T: Named>(&mut self, key: &'static str, e: &mut Errors) -> Option<T> {
        let v = self.get(key)?;
        let at = self.at(key);
        choice_value(v, &at, e)
    }

    /// An array (possibly empty) and its path.
    pub(crate) fn array(
        &mut self,
        key: &'static str,
        max: usize,
        e: &mut Errors,
    ) -> Option<(String, &'a [Value])> {
        let v = self.get(key)?;
        let at = self.at(key);
        match v {
            Value::Array(items) if items.len() > max => {
                e.push(at, format!("must have at most {max} entries"));
                None
            }
            Value::Array(items) => Some((at, items.as_slice())),
            other => {
                e.push(at, format!("must be an array, not {}", type_name(other)));
                None
            }
        }
    }

    /// Reports every key that was not read as an unknown field.
    pub(crate) fn finish(self, e: &mut Errors) {
        for key in self.map.keys() {
            if !self.seen.contains(&key.as_str()) {
                e.push(join(&self.path, key), "unknown field");
            }
        }
    }
}

/// Reads one of a fixed set of names at `at`.
pub(crate) fn choice_value<T: Named>(v: &Value, at: &str, e: &mut Errors) -> Option<T> {
    match v.as_str() {
        Some(s) => match T::from_name(s) {
            Some(t) => Some(t),
            None => {
                e.push(
                    at,
                    format!("must be one of {}, not `{s}`", T::NAMES.join(", ")),
                );
                None
            }
        },
        None => {
            e.push(
                at,
                format!(
                    "must be one of {}, not {}",
                    T::NAMES.join(", "),
                    type_name(v)
                ),
            );
            None
        }
    }
}

/// A closed set of names, spelt as in the JSON definitions.
pub trait Named: Sized + Copy + 'static {
    /// Every accepted name, in documentation order.
    const NAMES: &'static [&'static str];
    /// The value a name stands for.
    fn from_name(name: &str) -> Option<Self>;
    /// The name of a value.
    fn name(self) -> &'static str;
}

/// Declares a fieldless enum whose JSON form is a fixed name, with [`Named`] and `Serialize`.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $ty:ident { $($(#[$vmeta:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ty { $($(#[$vmeta])* $var),+ }

        impl $crate::read::Named for $ty {
            const NAMES: &'static [&'static str] = &[$($s),+];
            fn from_name(name: &str) -> Option<Self> {
                match name { $($s => Some($ty::$var),)+ _ => None }
            }
            fn name(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::read::Named::name(*self))
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::read::Named::name(*self))
            }
        }
    };
}
pub(crate) use named_enum;
