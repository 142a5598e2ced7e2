//! Hashing and bucketing: FNV-1a 32 based hashes (v1 and v2), bucket ranges,
//! namespaces and variation choice, as defined by the GrowthBook spec.

use crate::js::{self, StackStr};
use serde_json::Value;
use std::fmt::Write as _;

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// Incremental FNV-1a 32 over UTF-16 code units (what JavaScript's
/// `charCodeAt` iterates, so non-ASCII input hashes like the reference SDK).
#[derive(Clone, Copy)]
struct Fnv32(u32);

impl Fnv32 {
    fn new() -> Self {
        Fnv32(FNV32_OFFSET)
    }
    #[inline]
    fn feed(&mut self, s: &str) {
        let mut h = self.0;
        if s.is_ascii() {
            for &b in s.as_bytes() {
                h ^= b as u32;
                h = h.wrapping_mul(FNV32_PRIME);
            }
        } else {
            for u in s.encode_utf16() {
                h ^= u as u32;
                h = h.wrapping_mul(FNV32_PRIME);
            }
        }
        self.0 = h;
    }
}

/// FNV-1a 32-bit hash of a string (UTF-16 code units, as JavaScript does).
pub fn fnv1a32(s: &str) -> u32 {
    let mut h = Fnv32::new();
    h.feed(s);
    h.0
}

/// `hash(seed, value, version)` from the spec: a number in `[0, 1)`, or
/// `None` for an unknown hash version.
///
/// * v1: `(fnv32a(value + seed) % 1000) / 1000`
/// * v2: `(fnv32a(str(fnv32a(seed + value))) % 10000) / 10000`
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    let mut h = Fnv32::new();
    match version {
        1 => {
            h.feed(value);
            h.feed(seed);
            Some((h.0 % 1000) as f64 / 1000.0)
        }
        2 => {
            h.feed(seed);
            h.feed(value);
            let mut buf = StackStr::new();
            let _ = write!(buf, "{}", h.0);
            Some((fnv1a32(buf.as_str()) % 10000) as f64 / 10000.0)
        }
        _ => None,
    }
}

/// [`hash`] with the value given as a JSON attribute value (numbers are
/// stringified like JavaScript does, without allocating).
pub fn hash_value(seed: &str, value: &Value, version: u32) -> Option<f64> {
    js::with_js_string(value, |s| hash(seed, s, version))
}

/// `getEqualWeights(n)`: `n` weights of `1/n` (empty for `n <= 0`).
pub fn get_equal_weights(n: i64) -> Vec<f64> {
    if n <= 0 {
        return Vec::new();
    }
    vec![1.0 / n as f64; n as usize]
}

/// `getBucketRanges(numVariations, coverage, weights)`.
///
/// Coverage is clamped to `[0, 1]`; weights that are missing, of the wrong
/// length or that do not sum to 1 (±0.01) are replaced by equal weights.
pub fn get_bucket_ranges(
    num_variations: usize,
    coverage: f64,
    weights: Option<&[f64]>,
) -> Vec<(f64, f64)> {
    let coverage = if coverage.is_nan() || coverage < 0.0 {
        0.0
    } else if coverage > 1.0 {
        1.0
    } else {
        coverage
    };
    let equal = get_equal_weights(num_variations as i64);
    let mut w: &[f64] = weights.unwrap_or(&equal);
    if w.len() != num_variations {
        w = &equal;
    }
    let total: f64 = w.iter().sum();
    if !(0.99..=1.01).contains(&total) {
        w = &equal;
    }
    let mut cumulative = 0.0;
    w.iter()
        .map(|&weight| {
            let start = cumulative;
            cumulative += weight;
            (start, start + coverage * weight)
        })
        .collect()
}

/// `inRange(n, range)`: `start <= n < end`.
#[inline]
pub fn in_range(n: f64, range: (f64, f64)) -> bool {
    n >= range.0 && n < range.1
}

/// `chooseVariation(n, ranges)`: index of the first range containing `n`.
pub fn choose_variation(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges.iter().position(|&r| in_range(n, r))
}

/// `inNamespace(hashValue, [id, start, end])`.
pub fn in_namespace(hash_value: &str, namespace_id: &str, start: f64, end: f64) -> bool {
    // hash("__" + id, hashValue, 1), i.e. fnv(hashValue + "__" + id)
    let mut h = Fnv32::new();
    h.feed(hash_value);
    h.feed("__");
    h.feed(namespace_id);
    let n = (h.0 % 1000) as f64 / 1000.0;
    n >= start && n < end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hashes() {
        assert_eq!(hash("", "a", 1), Some(0.22));
        assert_eq!(hash("seed", "a", 2), Some(0.0505));
        assert_eq!(hash("abc", "def", 99), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(
            get_bucket_ranges(2, 0.5, None),
            vec![(0.0, 0.25), (0.5, 0.75)]
        );
        assert_eq!(
            choose_variation(0.5, &[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)]),
            Some(2)
        );
    }
}
