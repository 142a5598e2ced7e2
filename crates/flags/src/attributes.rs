//! User attributes with a lookup table tuned for condition evaluation.
//!
//! Conditions and rules refer to attributes by name. Names are hashed once
//! when a feature set is loaded ([`AttrKey`]) and once when an
//! [`Attributes`] value is built, so a lookup during evaluation is a probe
//! into a small open-addressing table comparing two words (names of up to
//! 15 bytes); small tables pick the hash bits that put every name in its
//! first slot.

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

/// `a * b` as a 128-bit product folded to 64 bits: a fast, well-mixed
/// combination of two words.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The table hash of a name whose words are `words`. Names of up to 15
/// bytes hash their words (already computed for the comparison), longer
/// names every byte.
#[inline(always)]
fn words_hash(words: &NameWords, s: &str) -> u64 {
    if words.complete() {
        fold_mul(words.w0 ^ SEED, words.w1 ^ SEED2)
    } else {
        hash_bytes(s.len() as u64, s.as_bytes()).wrapping_mul(SEED)
    }
}

const SEED2: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
pub(crate) fn key_hash(s: &str) -> u64 {
    words_hash(&NameWords::of(s), s)
}

/// A name prepared for lookups: its words and hash.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameKey {
    pub words: NameWords,
    pub hash: u64,
}

impl NameKey {
    #[inline(always)]
    pub(crate) fn of(s: &str) -> NameKey {
        let words = NameWords::of(s);
        NameKey {
            hash: words_hash(&words, s),
            words,
        }
    }
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

/// A name as two words. Names of up to [`SHORT_NAME`] bytes are their
/// bytes (little endian, zero padded) with the length in the top byte of
/// `w1`, so that two integer comparisons prove equality without touching
/// the heap. Longer names keep their first 15 bytes and [`LONG_NAME`] in
/// the top byte: equal words then only say "compare the names".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct NameWords {
    w0: u64,
    w1: u64,
}

/// The longest name held entirely in its [`NameWords`].
const SHORT_NAME: usize = 15;
/// Top byte of `w1` for longer names.
const LONG_NAME: u64 = 0xfe;
/// Top byte of `w1` in an empty table slot.
const EMPTY_SLOT: u64 = 0xff;

impl NameWords {
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
        // Overlapping reads assemble the exact little-endian bytes.
        let (w0, w1) = if n > SHORT_NAME {
            (rd8(0), (rd8(8) & !(0xff << 56)) | LONG_NAME << 56)
        } else if n >= 8 {
            // Bytes 8..n are the top `n - 8` bytes of the word at `n - 8`.
            let hi = rd8(n - 8).checked_shr(8 * (16 - n) as u32).unwrap_or(0);
            (rd8(0), hi | (n as u64) << 56)
        } else if n >= 4 {
            (rd4(0) | rd4(n - 4) << (8 * (n - 4)), (n as u64) << 56)
        } else if n > 0 {
            let byte = |i: usize| (b[i] as u64) << (8 * i);
            (byte(0) | byte(n / 2) | byte(n - 1), (n as u64) << 56)
        } else {
            (0, 0)
        };
        NameWords { w0, w1 }
    }

    /// Whether equal words prove equal names.
    #[inline(always)]
    pub(crate) fn complete(&self) -> bool {
        self.w1 >> 56 <= SHORT_NAME as u64
    }

    /// Whether these are the words of an empty table slot.
    #[inline(always)]
    fn is_empty_slot(&self) -> bool {
        self.w1 >> 56 == EMPTY_SLOT
    }

    const EMPTY_SLOT: NameWords = NameWords {
        w0: 0,
        w1: EMPTY_SLOT << 56,
    };
}

/// An open-addressing index from names to entry positions (linear probing,
/// load factor <= 1/2). Names up to 15 bytes are compared inside the slot.
#[derive(Clone, Debug, Default)]
pub(crate) struct NameIndex {
    slots: Vec<Slot>,
    /// `slots.len() - 1` (0 while there are no slots).
    mask: usize,
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
            self.slots.resize(cap, Slot::EMPTY);
            self.mask = cap - 1;
            for (i, (h, n)) in all.enumerate().take(entry) {
                self.place(h, n, i);
            }
        }
        self.place(hash, name, entry);
    }

    fn place(&mut self, hash: u64, name: &str, entry: usize) {
        let mask = self.mask;
        let mut s = slot_of(hash, mask);
        while !self.slots[s].words.is_empty_slot() {
            s = (s + 1) & mask;
        }
        self.slots[s] = Slot {
            words: NameWords::of(name),
            entry: entry as u32,
        };
    }

    /// The entry of `name`; `full` gives an entry's name (only consulted
    /// for names longer than 15 bytes).
    #[inline(always)]
    pub fn find<'n>(
        &self,
        hash: u64,
        words: NameWords,
        name: &str,
        full: impl Fn(usize) -> &'n str,
    ) -> Option<usize> {
        let mask = self.mask;
        let mut s = slot_of(hash, mask);
        loop {
            let slot = self.slots.get(s)?;
            if slot.words == words {
                let i = slot.entry as usize;
                if words.complete() || full(i) == name {
                    return Some(i);
                }
            } else if slot.words.is_empty_slot() {
                return None;
            }
            s = (s + 1) & mask;
        }
    }
}

/// One slot of a name table: the name's words (an [`EMPTY_SLOT`] marker in
/// empty slots) and the entry index.
#[derive(Clone, Copy, Debug)]
struct Slot {
    words: NameWords,
    entry: u32,
}

impl Slot {
    const EMPTY: Slot = Slot {
        words: NameWords::EMPTY_SLOT,
        entry: 0,
    };
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
        let key = NameKey::of(name);
        AttrKey {
            name: name.into(),
            hash: key.hash,
            words: key.words,
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
    /// Open-addressing table (linear probing, load factor <= 1/2) from
    /// name words to entries.
    slots: Vec<Slot>,
    /// `slots.len() - 1` (0 while there are no slots).
    mask: usize,
    /// Which bits of a name's hash choose its slot (see [`best_shift`]).
    shift: u32,
    /// The attributes, in insertion order.
    entries: Vec<Entry>,
}

/// One attribute.
#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    name: Box<str>,
}

/// Hash bits used for slots when no better choice was made.
const DEFAULT_SHIFT: u32 = 40;

/// Tables up to this size choose their hash bits (see [`best_shift`]).
const TUNED_CAPACITY: usize = 64;

/// The slot count for `n` attributes (load factor <= 1/2).
fn capacity_for(n: usize) -> usize {
    (n * 2).next_power_of_two().max(8)
}

/// Chooses which bits of the hashes select slots in a small table so that
/// as many names as possible sit in their first slot: a lookup is then a
/// single probe. Linear probing is simulated on a 64-bit occupancy mask.
fn best_shift(hashes: &[u64], mask: usize) -> u32 {
    if mask >= TUNED_CAPACITY || hashes.len() > TUNED_CAPACITY / 2 {
        return DEFAULT_SHIFT;
    }
    let mut best = (usize::MAX, DEFAULT_SHIFT);
    for shift in [DEFAULT_SHIFT, 0, 6, 12, 18, 24, 30, 34, 46, 52, 58] {
        let mut occupied = 0u64;
        let mut displaced = 0;
        for &h in hashes {
            let mut s = (h >> shift) as usize & mask;
            while occupied & (1 << s) != 0 {
                s = (s + 1) & mask;
                displaced += 1;
            }
            occupied |= 1 << s;
        }
        if displaced < best.0 {
            best = (displaced, shift);
            if displaced == 0 {
                break;
            }
        }
    }
    best.1
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
            ..Attributes::default()
        };
        let mut hashes = [0u64; TUNED_CAPACITY / 2];
        let hashes = match hashes.get_mut(..map.len()) {
            Some(hashes) => {
                for (h, k) in hashes.iter_mut().zip(map.keys()) {
                    *h = key_hash(k);
                }
                Some(&*hashes)
            }
            None => None,
        };
        a.rebuild(capacity_for(map.len()), hashes);
        for (k, v) in map {
            // Map keys are distinct.
            a.push(NameKey::of(&k), k.into_boxed_str(), v);
        }
        a
    }

    /// Sets an attribute, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        let name: String = name.into();
        let key = NameKey::of(&name);
        if let Some(i) = self.find(key.hash, key.words, &name) {
            self.entries[i].value = value;
            return;
        }
        self.push(key, name.into_boxed_str(), value);
    }

    /// Rebuilds the table with `cap` slots for the current entries, choosing
    /// the hash bits from `hashes` (the hashes of every name the table is
    /// meant for) when given.
    fn rebuild(&mut self, cap: usize, hashes: Option<&[u64]>) {
        self.slots.clear();
        self.slots.resize(cap, Slot::EMPTY);
        self.mask = cap - 1;
        self.shift = hashes.map_or(DEFAULT_SHIFT, |h| best_shift(h, self.mask));
        for i in 0..self.entries.len() {
            let key = NameKey::of(&self.entries[i].name);
            self.place(key, i);
        }
    }

    fn place(&mut self, key: NameKey, entry: usize) {
        let mut s = (key.hash >> self.shift) as usize & self.mask;
        while !self.slots[s].words.is_empty_slot() {
            s = (s + 1) & self.mask;
        }
        self.slots[s] = Slot {
            words: key.words,
            entry: entry as u32,
        };
    }

    /// Adds an attribute known to be absent.
    fn push(&mut self, key: NameKey, name: Box<str>, value: Value) {
        let n = self.entries.len() + 1;
        if n * 2 > self.slots.len() {
            let mut hashes = [0u64; TUNED_CAPACITY / 2];
            let hashes = match hashes.get_mut(..n) {
                Some(hashes) => {
                    for (h, e) in hashes.iter_mut().zip(&self.entries) {
                        *h = key_hash(&e.name);
                    }
                    hashes[n - 1] = key.hash;
                    Some(&*hashes)
                }
                None => None,
            };
            self.rebuild(capacity_for(n), hashes);
        }
        self.place(key, n - 1);
        self.entries.push(Entry { value, name });
    }

    /// Builder-style [`Attributes::insert`].
    pub fn with(mut self, name: impl Into<String>, value: Value) -> Attributes {
        self.insert(name, value);
        self
    }

    /// The value of a top-level attribute.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let key = NameKey::of(name);
        self.find(key.hash, key.words, name)
            .map(|i| &self.entries[i].value)
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
        self.entries.iter().map(|e| (&*e.name, &e.value))
    }

    /// The attributes as a JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    /// The entry named `name`.
    fn find(&self, hash: u64, words: NameWords, name: &str) -> Option<usize> {
        let mut s = (hash >> self.shift) as usize & self.mask;
        loop {
            let slot = self.slots.get(s)?;
            if slot.words == words {
                let i = slot.entry as usize;
                if words.complete() || *self.entries[i].name == *name {
                    return Some(i);
                }
            } else if slot.words.is_empty_slot() {
                return None;
            }
            s = (s + 1) & self.mask;
        }
    }

    /// The value of a top-level attribute whose name was prepared when the
    /// feature set was loaded: names of up to 15 bytes are found by one
    /// probe comparing two words.
    #[inline(always)]
    pub(crate) fn get_key(&self, key: &AttrKey) -> Option<&Value> {
        if !key.words.complete() {
            return self.get_long(key);
        }
        let mut s = (key.hash >> self.shift) as usize & self.mask;
        loop {
            let slot = self.slots.get(s)?;
            if slot.words == key.words {
                return self.entries.get(slot.entry as usize).map(|e| &e.value);
            }
            if slot.words.is_empty_slot() {
                return None;
            }
            s = (s + 1) & self.mask;
        }
    }

    #[inline(never)]
    fn get_long(&self, key: &AttrKey) -> Option<&Value> {
        self.find(key.hash, key.words, &key.name)
            .map(|i| &self.entries[i].value)
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
        let order: Vec<&str> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(&order[..3], ["a", "b", "k0"]);
        assert_eq!(order[51], "k49");
    }

    /// Names of up to 15 bytes are equal exactly when their words are;
    /// longer names never have the words of a shorter one.
    #[test]
    fn name_words_are_exact() {
        let mut names = vec![String::new()];
        for len in 1..=20 {
            let base: Vec<char> = "xyzw0123456789abcdefghij".chars().take(len).collect();
            for fill in ['a', 'b', '\0', '\u{e9}'] {
                let mut v = base.clone();
                names.push(v.iter().collect());
                v[len - 1] = fill;
                names.push(v.iter().collect());
                v[0] = fill;
                names.push(v.iter().collect());
                v[len / 2] = fill;
                names.push(v.iter().collect());
            }
        }
        for a in &names {
            let wa = NameWords::of(a);
            assert_eq!(wa.complete(), a.len() <= SHORT_NAME, "{a:?}");
            assert!(!wa.is_empty_slot());
            for b in &names {
                let wb = NameWords::of(b);
                if wa.complete() && wb.complete() {
                    assert_eq!(wa == wb, a == b, "{a:?} {b:?}");
                } else if a == b {
                    assert_eq!(wa, wb);
                } else {
                    assert!(wa != wb || a.len() > SHORT_NAME && b.len() > SHORT_NAME);
                }
            }
        }
    }

    /// Every name stays reachable whatever hash bits the table picked,
    /// including long names and names sharing their first 15 bytes.
    #[test]
    fn lookups_across_table_sizes() {
        for n in 0..80 {
            let names: Vec<String> = (0..n)
                .map(|i| match i % 3 {
                    0 => format!("k{i}"),
                    1 => format!("a-rather-long-attribute-name-{i}"),
                    _ => format!("{i:0>15}"),
                })
                .collect();
            let map: Map<String, Value> = names
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), json!(i)))
                .collect();
            let mut a = Attributes::from_map(map);
            let mut b = Attributes::new();
            for (i, k) in names.iter().enumerate() {
                b.insert(k.clone(), json!(i));
            }
            for attrs in [&mut a, &mut b] {
                for (i, k) in names.iter().enumerate() {
                    assert_eq!(attrs.get(k), Some(&json!(i)), "{n} {k}");
                    assert_eq!(attrs.get_key(&AttrKey::new(k)), Some(&json!(i)));
                }
                assert_eq!(attrs.get("missing"), None);
                assert_eq!(attrs.get("a-rather-long-attribute-name-x"), None);
                assert_eq!(attrs.len(), n);
            }
        }
    }
}
