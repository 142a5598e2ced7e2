//! JavaScript value semantics used by the GrowthBook specification.
//!
//! The reference SDK is written in JavaScript and the specification pins a
//! number of JavaScript behaviours: loose string/number coercions, strict
//! equality, relational comparisons between mixed types and truthiness. The
//! helpers here reproduce them on `serde_json::Value` without allocating for
//! scalars (strings are borrowed, numbers are formatted on the stack).

use serde_json::Value;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// Maximum nesting followed when stringifying attribute arrays.
const MAX_STRINGIFY_DEPTH: usize = 32;

#[inline(always)]
fn word8(s: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn word4(s: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[i..i + 4]);
    u32::from_le_bytes(w)
}

/// String equality without a `memcmp` call for short strings (attribute
/// names and typical targeting values).
#[inline(always)]
pub fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n > 16 {
        return a == b;
    }
    if n >= 8 {
        return word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8);
    }
    if n >= 4 {
        return word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// JavaScript truthiness (`!!value`).
#[inline(always)]
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            f != 0.0 && !f.is_nan()
        }
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Number as `f64`, the only number type JavaScript has.
#[inline]
pub fn num(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// A small stack buffer used to format numbers without heap allocation.
pub struct StackStr {
    buf: [u8; 40],
    len: usize,
}

impl StackStr {
    pub const fn new() -> Self {
        StackStr {
            buf: [0; 40],
            len: 0,
        }
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written (see `write_str`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for StackStr {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        if self.len + b.len() > self.buf.len() || !s.is_ascii() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }
}

/// Formats a number the way JavaScript's `String(number)` does.
pub fn write_number<W: std::fmt::Write>(out: &mut W, f: f64) -> std::fmt::Result {
    if f.is_nan() {
        return out.write_str("NaN");
    }
    if f.is_infinite() {
        return out.write_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if f == 0.0 {
        return out.write_str("0");
    }
    let abs = f.abs();
    if abs.fract() == 0.0 && abs < 9.007_199_254_740_992e15 {
        return write!(out, "{}", f as i64);
    }
    if (1e-6..1e21).contains(&abs) {
        // Rust prints the shortest round-tripping digits without exponent,
        // which is what JavaScript does in this range.
        return write!(out, "{f}");
    }
    // Exponential notation: Rust gives `1e21` / `1.5e-7`, JavaScript `1e+21` / `1.5e-7`.
    let mut tmp = StackStr::new();
    write!(tmp, "{f:e}")?;
    let s = tmp.as_str();
    match s.find('e') {
        Some(i) if !s[i + 1..].starts_with('-') => {
            out.write_str(&s[..=i])?;
            out.write_str("+")?;
            out.write_str(&s[i + 1..])
        }
        _ => out.write_str(s),
    }
}

/// Calls `f` with `String(value)` as JavaScript would produce it.
///
/// Strings are borrowed, numbers/booleans/null are formatted on the stack;
/// only arrays and objects allocate.
#[inline]
pub fn with_js_string<R>(v: &Value, f: impl FnOnce(&str) -> R) -> R {
    match v {
        Value::String(s) => f(s),
        Value::Null => f("null"),
        Value::Bool(true) => f("true"),
        Value::Bool(false) => f("false"),
        Value::Number(n) => {
            let mut buf = StackStr::new();
            if write_number(&mut buf, num(n)).is_ok() {
                f(buf.as_str())
            } else {
                let mut s = String::new();
                let _ = write_number(&mut s, num(n));
                f(&s)
            }
        }
        Value::Array(_) | Value::Object(_) => {
            let mut s = String::new();
            stringify_into(v, &mut s, 0);
            f(&s)
        }
    }
}

/// `String(value)` into an owned string.
pub fn to_js_string(v: &Value) -> String {
    with_js_string(v, |s| s.to_owned())
}

fn stringify_into(v: &Value, out: &mut String, depth: usize) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write_number(out, num(n));
        }
        Value::Object(_) => out.push_str("[object Object]"),
        Value::Array(items) => {
            if depth >= MAX_STRINGIFY_DEPTH {
                return;
            }
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // Array.prototype.join renders null/undefined as "".
                if !item.is_null() {
                    stringify_into(item, out, depth + 1);
                }
            }
        }
    }
}

fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}' | '\u{a}' | '\u{b}' | '\u{c}' | '\u{d}' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// JavaScript `Number(string)` (StringToNumber).
#[inline]
pub fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_whitespace);
    if t.is_empty() {
        return 0.0;
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let b = t.as_bytes();
    if b.len() > 2 && b[0] == b'0' {
        let radix = match b[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            let mut acc = 0f64;
            for &c in &b[2..] {
                match (c as char).to_digit(radix) {
                    Some(d) => acc = acc * radix as f64 + d as f64,
                    None => return f64::NAN,
                }
            }
            return acc;
        }
    }
    // Decimal literal: [+-] digits [. digits] [e [+-] digits]
    let mut i = 0;
    if b[0] == b'+' || b[0] == b'-' {
        i = 1;
    }
    let mut digits = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return f64::NAN;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return f64::NAN;
        }
    }
    if i != b.len() {
        return f64::NAN;
    }
    // Rust does not accept a trailing "." before an exponent ("1.e5"), normalise.
    if let Ok(f) = t.parse::<f64>() {
        return f;
    }
    let fixed = t.replacen(".e", "e", 1).replacen(".E", "E", 1);
    fixed.parse::<f64>().unwrap_or(f64::NAN)
}

/// JavaScript `Number(value)` / `value * 1`.
#[inline]
pub fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => {
            if *b {
                1.0
            } else {
                0.0
            }
        }
        Value::Number(n) => num(n),
        Value::String(s) => string_to_number(s),
        Value::Array(a) => match a.len() {
            0 => 0.0,
            1 => with_js_string(v, string_to_number),
            _ => f64::NAN,
        },
        Value::Object(_) => f64::NAN,
    }
}

/// JavaScript strict equality (`===`). Arrays and objects are never equal
/// because JavaScript compares them by reference.
#[inline]
pub fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => num(x) == num(y),
        (Value::String(x), Value::String(y)) => str_eq(x, y),
        _ => false,
    }
}

/// Equality of `JSON.stringify(a) === JSON.stringify(b)` (numbers compared as
/// `f64`, object keys compared as sets).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Number(x), Value::Number(y)) => num(x) == num(y),
        _ => a == b,
    }
}

/// Compares two strings by UTF-16 code units, like JavaScript.
pub fn cmp_js_str(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A primitive produced by JavaScript's ToPrimitive for relational comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Prim {
    Str(String),
    Num(f64),
}

impl Prim {
    /// ToPrimitive of a JSON value (hint "number").
    pub fn of(v: &Value) -> Prim {
        match v {
            Value::String(s) => Prim::Str(s.clone()),
            Value::Array(_) | Value::Object(_) => Prim::Str(to_js_string(v)),
            other => Prim::Num(to_number(other)),
        }
    }
}

/// JavaScript abstract relational comparison of `actual` with a primitive.
/// Returns `None` when JavaScript would answer `false` to every comparison
/// (a NaN is involved).
#[inline]
pub fn js_compare(actual: &Value, expected: &Prim) -> Option<Ordering> {
    match (actual, expected) {
        (Value::String(a), Prim::Str(b)) => Some(cmp_js_str(a, b)),
        (Value::Array(_) | Value::Object(_), Prim::Str(b)) => {
            with_js_string(actual, |a| Some(cmp_js_str(a, b)))
        }
        (_, Prim::Str(b)) => cmp_num(to_number(actual), string_to_number(b)),
        (Value::Array(_) | Value::Object(_), Prim::Num(b)) => {
            with_js_string(actual, |a| cmp_num(string_to_number(a), *b))
        }
        (_, Prim::Num(b)) => cmp_num(to_number(actual), *b),
    }
}

/// `actual <op> n` for a number `n`: JavaScript relational comparison.
#[inline]
pub fn to_number_cmp(actual: &Value, n: f64) -> Option<Ordering> {
    js_compare(actual, &Prim::Num(n))
}

#[inline]
fn cmp_num(a: f64, b: f64) -> Option<Ordering> {
    a.partial_cmp(&b)
}

/// `typeof`-like type name used by the `$type` operator.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JavaScript `parseInt(s)` for base 10; `None` for NaN.
pub fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start_matches(is_js_whitespace);
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits: &str = &rest[..rest
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    if digits.is_empty() {
        return None;
    }
    let mut acc: i64 = 0;
    for c in digits.bytes() {
        acc = acc.saturating_mul(10).saturating_add((c - b'0') as i64);
    }
    Some(if neg { -acc } else { acc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_format_like_js() {
        let f = |x: f64| {
            let mut s = String::new();
            write_number(&mut s, x).unwrap();
            s
        };
        assert_eq!(f(123.0), "123");
        assert_eq!(f(-0.0), "0");
        assert_eq!(f(1.5), "1.5");
        assert_eq!(f(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(f(1e21), "1e+21");
        assert_eq!(f(1.5e-7), "1.5e-7");
        assert_eq!(f(123456789012345680000.0), "123456789012345680000");
    }

    #[test]
    fn string_to_number_like_js() {
        assert_eq!(string_to_number(" 12 "), 12.0);
        assert_eq!(string_to_number(""), 0.0);
        assert_eq!(string_to_number("0x10"), 16.0);
        assert_eq!(string_to_number("1."), 1.0);
        assert_eq!(string_to_number(".5"), 0.5);
        assert!(string_to_number("inf").is_nan());
        assert!(string_to_number("1e").is_nan());
        assert!(string_to_number("abc").is_nan());
        assert_eq!(to_number(&json!([" 5"])), 5.0);
        assert!(to_number(&json!({})).is_nan());
    }

    #[test]
    fn compare_like_js() {
        assert_eq!(
            js_compare(&json!("8"), &Prim::Num(5.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            js_compare(&json!("10"), &Prim::Str("9".into())),
            Some(Ordering::Less)
        );
        assert_eq!(
            js_compare(&json!(null), &Prim::Num(-1.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(js_compare(&json!("x"), &Prim::Num(1.0)), None);
        assert_eq!(parse_int("2.054"), Some(2));
        assert_eq!(parse_int("foo"), None);
    }
}
