//! User attributes with a lookup table tuned for condition evaluation.
//!
//! Conditions and rules refer to attributes by name. Names are hashed once
//! when a feature set is loaded ([`AttrKey`]) and once when an
//! [`Attributes`] value is built, so a lookup during evaluation is a probe
//! into a small open-addressing table plus one string comparison.

use serde_json::{Map, Value};
use std::hash::{BuildHasher, Hasher};

/// A fast word-at-a-time string hasher (FxHash-style) for internal tables.
/// Keys are strings from the loaded payload; only lookups use
/// caller-provided strings, so hash flooding is not a concern.
#[derive(Clone, Copy, Default, Debug)]
pub struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(SEED)
}

#[inline(always)]
fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
    }
    h
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = mix(self.0, i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = mix(self.0, i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = mix(self.0, i as u64);
    }
}

/// [`BuildHasher`] for [`FastHasher`].
#[derive(Clone, Copy, Default, Debug)]
pub struct FastBuild;

impl BuildHasher for FastBuild {
    type Hasher = FastHasher;
    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

/// A `HashMap` keyed by strings using [`FastBuild`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastBuild>;

#[inline]
pub(crate) fn key_hash(s: &str) -> u64 {
    hash_bytes(s.len() as u64, s.as_bytes()).wrapping_mul(SEED)
}

/// Table slot of a hash (its well-mixed high bits).
#[inline(always)]
fn slot_of(hash: u64, mask: usize) -> usize {
    (hash >> 40) as usize & mask
}

/// An attribute name with its precomputed hash (and array index, when the
/// name is a canonical non-negative integer, for paths into arrays).
#[derive(Clone, Debug)]
pub(crate) struct AttrKey {
    pub name: Box<str>,
    pub hash: u64,
    pub words: NameWords,
    pub index: Option<u32>,
}

/// A name's length and first 16 bytes as two words: names of up to 16
/// bytes compare with three integer comparisons, without touching the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct NameWords {
    w0: u64,
    w1: u64,
    len: u64,
}

impl NameWords {
    /// Words covering the first 16 bytes (overlapping reads, so that equal
    /// words and length prove equal names of up to 16 bytes).
    #[inline(always)]
    pub(crate) fn of(s: &str) -> NameWords {
        let b = s.as_bytes();
        let n = b.len();
        let rd8 = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let rd4 = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(w) as u64
        };
        let (w0, w1) = if n >= 16 {
            (rd8(0), rd8(8))
        } else if n >= 8 {
            (rd8(0), rd8(n - 8))
        } else if n >= 4 {
            (rd4(0), rd4(n - 4))
        } else {
            let mut w = 0u64;
            for (i, &c) in b.iter().enumerate() {
                w |= (c as u64) << (8 * i);
            }
            (w, 0)
        };
        NameWords {
            w0,
            w1,
            len: n as u64,
        }
    }

    /// Whether equal words prove equal names.
    #[inline(always)]
    fn complete(&self) -> bool {
        self.len <= 16
    }
}

/// An open-addressing index from names to entry positions (linear probing,
/// load factor <= 1/2). Names up to 16 bytes are compared inside the slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct NameIndex {
    slots: Vec<Slot>,
}

impl NameIndex {
    /// Inserts a name known to be absent; grows as needed. `names` gives
    /// every entry's (hash, name) for rehashing.
    pub fn insert<'n>(
        &mut self,
        hash: u64,
        name: &str,
        entry: usize,
        all: impl Iterator<Item = (u64, &'n str)>,
    ) {
        if (entry + 1) * 2 > self.slots.len() {
            let cap = ((entry + 1) * 2).next_power_of_two().max(8);
            self.slots.clear();
            self.slots.resize(cap, Slot::default());
            for (i, (h, n)) in all.enumerate().take(entry) {
                self.place(h, n, i);
            }
        }
        self.place(hash, name, entry);
    }

    fn place(&mut self, hash: u64, name: &str, entry: usize) {
        let mask = self.slots.len() - 1;
        let mut s = slot_of(hash, mask);
        while self.slots[s].entry != 0 {
            s = (s + 1) & mask;
        }
        self.slots[s] = Slot {
            words: NameWords::of(name),
            entry: entry as u32 + 1,
        };
    }

    /// The entry of `name`; `full` gives an entry's name (only consulted
    /// for names longer than 16 bytes).
    #[inline(always)]
    pub fn find<'n>(
        &self,
        hash: u64,
        words: NameWords,
        name: &str,
        full: impl Fn(usize) -> &'n str,
    ) -> Option<usize> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut s = slot_of(hash, mask);
        loop {
            let slot = *self.slots.get(s)?;
            if slot.entry == 0 {
                return None;
            }
            if slot.words == words {
                let i = slot.entry as usize - 1;
                if words.complete() || full(i) == name {
                    return Some(i);
                }
            }
            s = (s + 1) & mask;
        }
    }
}

/// One slot of the attribute table: the name's words and entry index + 1
/// (0 = empty).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    words: NameWords,
    entry: u32,
}

impl AttrKey {
    pub fn new(name: &str) -> AttrKey {
        let index = if name == "0" || (!name.starts_with('0') && !name.is_empty()) {
            if name.bytes().all(|b| b.is_ascii_digit()) && name.len() < 10 {
                name.parse().ok()
            } else {
                None
            }
        } else {
            None
        };
        AttrKey {
            name: name.into(),
            hash: key_hash(name),
            words: NameWords::of(name),
            index,
        }
    }
}

/// Something conditions can look top-level names up in.
pub(crate) trait Root {
    fn lookup(&self, key: &AttrKey) -> Option<&Value>;
}

impl Root for Value {
    #[inline]
    fn lookup(&self, key: &AttrKey) -> Option<&Value> {
        child(self, key)
    }
}

/// `obj[key]` when `key in obj` holds in JavaScript.
#[inline]
pub(crate) fn child<'v>(v: &'v Value, key: &AttrKey) -> Option<&'v Value> {
    match v {
        // Small objects: a linear scan with inline comparisons beats the
        // B-tree search and its `memcmp` calls.
        Value::Object(m) if m.len() <= 8 => {
            for (k, v) in m {
                if crate::js::str_eq(k, &key.name) {
                    return Some(v);
                }
            }
            None
        }
        Value::Object(m) => m.get(&*key.name),
        Value::Array(a) => key.index.and_then(|i| a.get(i as usize)),
        _ => None,
    }
}

/// The object `{ value: <parent value> }` prerequisite conditions test.
pub(crate) struct ValueRoot<'v>(pub &'v Value);

impl Root for ValueRoot<'_> {
    #[inline]
    fn lookup(&self, key: &AttrKey) -> Option<&Value> {
        if &*key.name == "value" {
            Some(self.0)
        } else {
            None
        }
    }
}

/// The attributes of the user (or other unit) being evaluated.
///
/// Build once per request and reuse for every feature evaluated; building
/// hashes the top-level names, evaluation then never allocates for lookups.
///
/// ```
/// use flywheel_flags::Attributes;
/// let attrs = Attributes::from_json(&serde_json::json!({"id": "u1", "plan": "pro"}));
/// assert_eq!(attrs.get("plan"), Some(&serde_json::json!("pro")));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    entries: Vec<(u64, Box<str>, Value)>,
    index: NameIndex,
}

impl Attributes {
    /// No attributes.
    pub fn new() -> Attributes {
        Attributes::default()
    }

    /// Builds attributes from a JSON object (cloned). A non-object value
    /// yields empty attributes.
    pub fn from_json(value: &Value) -> Attributes {
        match value {
            Value::Object(m) => Self::from_map(m.clone()),
            _ => Attributes::new(),
        }
    }

    /// Builds attributes from an owned JSON value without cloning.
    pub fn from_value(value: Value) -> Attributes {
        match value {
            Value::Object(m) => Self::from_map(m),
            _ => Attributes::new(),
        }
    }

    /// Builds attributes from an owned JSON map.
    pub fn from_map(map: Map<String, Value>) -> Attributes {
        let mut a = Attributes {
            entries: Vec::with_capacity(map.len()),
            index: NameIndex::default(),
        };
        for (k, v) in map {
            a.push(key_hash(&k), k.into_boxed_str(), v);
        }
        a
    }

    /// Sets an attribute, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        let name: String = name.into();
        let h = key_hash(&name);
        if let Some(i) = self.find(h, NameWords::of(&name), &name) {
            self.entries[i].2 = value;
            return;
        }
        self.push(h, name.into_boxed_str(), value);
    }

    fn push(&mut self, hash: u64, name: Box<str>, value: Value) {
        let entry = self.entries.len();
        self.index.insert(
            hash,
            &name,
            entry,
            self.entries.iter().map(|(h, n, _)| (*h, &**n)),
        );
        self.entries.push((hash, name, value));
    }

    /// Builder-style [`Attributes::insert`].
    pub fn with(mut self, name: impl Into<String>, value: Value) -> Attributes {
        self.insert(name, value);
        self
    }

    /// The value of a top-level attribute.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.find(key_hash(name), NameWords::of(name), name)
            .map(|i| &self.entries[i].2)
    }

    /// Number of top-level attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(_, k, v)| (&**k, v))
    }

    /// The attributes as a JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.entries
                .iter()
                .map(|(_, k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[inline(always)]
    fn find(&self, hash: u64, words: NameWords, name: &str) -> Option<usize> {
        self.index.find(hash, words, name, |i| &self.entries[i].1)
    }

    #[inline(always)]
    pub(crate) fn get_key(&self, key: &AttrKey) -> Option<&Value> {
        self.find(key.hash, key.words, &key.name)
            .map(|i| &self.entries[i].2)
    }
}

impl Root for Attributes {
    #[inline(always)]
    fn lookup(&self, key: &AttrKey) -> Option<&Value> {
        self.get_key(key)
    }
}

impl From<Value> for Attributes {
    fn from(v: Value) -> Self {
        Attributes::from_value(v)
    }
}

impl From<Map<String, Value>> for Attributes {
    fn from(m: Map<String, Value>) -> Self {
        Attributes::from_map(m)
    }
}

impl<K: Into<String>> FromIterator<(K, Value)> for Attributes {
    fn from_iter<T: IntoIterator<Item = (K, Value)>>(iter: T) -> Self {
        let mut map = Map::new();
        for (k, v) in iter {
            map.insert(k.into(), v);
        }
        Attributes::from_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_and_insert() {
        let mut a = Attributes::from_json(&json!({"a": 1, "b": "x"}));
        assert_eq!(a.get("a"), Some(&json!(1)));
        assert_eq!(a.get("c"), None);
        for i in 0..50 {
            a.insert(format!("k{i}"), json!(i));
        }
        a.insert("a", json!(2));
        assert_eq!(a.get("a"), Some(&json!(2)));
        assert_eq!(a.get("k49"), Some(&json!(49)));
        assert_eq!(a.len(), 52);
        assert_eq!(AttrKey::new("01").index, None);
        assert_eq!(AttrKey::new("10").index, Some(10));
    }
}
