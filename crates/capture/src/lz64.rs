//! A size-capped decompressor for lz-string's `compressToBase64` format.
//!
//! lz-string is an LZW variant that emits variable-width codes, least
//! significant bit first, packed 6 bits per base64 character. Code `0` is a
//! literal 8-bit UTF-16 unit, `1` a literal 16-bit unit, `2` the end of the
//! stream; anything else refers to a dictionary entry.
//!
//! Every dictionary entry is a contiguous run of the output produced so far
//! (an entry is always "previous phrase + first unit of the next phrase", and
//! those two sit next to each other in the output), so the dictionary is kept
//! as `(start, len)` ranges into the output instead of owned strings. Memory is
//! therefore bounded by the output cap plus 8 bytes per code read.

use std::fmt;

/// Why decompression stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lz64Error {
    /// Output would exceed the cap.
    TooLarge,
    /// Corrupt input.
    Invalid(&'static str),
}

impl fmt::Display for Lz64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lz64Error::TooLarge => f.write_str("output too large"),
            Lz64Error::Invalid(m) => f.write_str(m),
        }
    }
}

const INVALID: u8 = 0xff;
/// Sentinel for characters that are skipped (line breaks).
const SKIP: u8 = 0xfe;

const fn build_table() -> [u8; 256] {
    let mut t = [INVALID; 256];
    let mut i = 0u8;
    while i < 26 {
        t[(b'A' + i) as usize] = i;
        t[(b'a' + i) as usize] = 26 + i;
        i += 1;
    }
    let mut d = 0u8;
    while d < 10 {
        t[(b'0' + d) as usize] = 52 + d;
        d += 1;
    }
    t[b'+' as usize] = 62;
    // A `+` that went through form decoding without being percent-encoded.
    t[b' ' as usize] = 62;
    t[b'/' as usize] = 63;
    // lz-string's alphabet has `=` at index 64: only padding, all 6 bits zero.
    t[b'=' as usize] = 0;
    t[b'\r' as usize] = SKIP;
    t[b'\n' as usize] = SKIP;
    t
}

static TABLE: [u8; 256] = build_table();

struct BitReader<'a> {
    input: &'a [u8],
    pos: usize,
    val: u32,
    /// Next bit to read from `val` (32, 16, ..., 1); 0 = fetch a character.
    mask: u32,
}

impl BitReader<'_> {
    fn fetch(&mut self) -> Result<u32, Lz64Error> {
        loop {
            let Some(&b) = self.input.get(self.pos) else {
                return Err(Lz64Error::Invalid(
                    "input ends before the end-of-stream marker",
                ));
            };
            self.pos += 1;
            match TABLE[b as usize] {
                INVALID => return Err(Lz64Error::Invalid("character outside the base64 alphabet")),
                SKIP => continue,
                v => return Ok(u32::from(v)),
            }
        }
    }

    fn read(&mut self, bits: u32) -> Result<u32, Lz64Error> {
        let mut out = 0u32;
        for i in 0..bits {
            if self.mask == 0 {
                self.val = self.fetch()?;
                self.mask = 32;
            }
            if self.val & self.mask != 0 {
                out |= 1 << i;
            }
            self.mask >>= 1;
        }
        Ok(out)
    }
}

/// Decompresses lz-string `compressToBase64` output.
///
/// Stops with [`Lz64Error::TooLarge`] as soon as the output would exceed
/// `max_bytes` (UTF-8 bytes of the result). Unpaired surrogates become U+FFFD.
pub(crate) fn decompress_from_base64(input: &[u8], max_bytes: usize) -> Result<String, Lz64Error> {
    let input = input.trim_ascii();
    if input.is_empty() {
        return Ok(String::new());
    }
    let mut reader = BitReader {
        input,
        pos: 0,
        val: 0,
        mask: 0,
    };
    // Each UTF-16 unit is at least one UTF-8 byte, so capping units at
    // `max_bytes` bounds memory while decompressing; the exact byte count is
    // checked after conversion.
    let max_units = max_bytes.min(u32::MAX as usize);
    let mut out: Vec<u16> = Vec::with_capacity(input.len().saturating_mul(2).min(max_units));
    // Entries 0..=2 are the reserved codes; never looked up.
    let mut dict: Vec<(u32, u32)> = vec![(0, 0); 3];
    let mut enlarge_in: u64 = 4;
    let mut num_bits: u32 = 3;

    let first = match reader.read(2)? {
        0 => reader.read(8)?,
        1 => reader.read(16)?,
        2 => return Ok(String::new()),
        _ => return Err(Lz64Error::Invalid("invalid first code")),
    };
    if max_units == 0 {
        return Err(Lz64Error::TooLarge);
    }
    out.push(first as u16);
    dict.push((0, 1));
    // The previous phrase, as a range of `out`; always the most recent output.
    let mut w: (usize, usize) = (0, 1);

    loop {
        if num_bits > 32 {
            return Err(Lz64Error::Invalid("dictionary too large"));
        }
        let code = reader.read(num_bits)? as usize;
        let entry: (usize, usize);
        match code {
            2 => break,
            0 | 1 => {
                let unit = reader.read(if code == 0 { 8 } else { 16 })? as u16;
                if out.len() + 1 > max_units {
                    return Err(Lz64Error::TooLarge);
                }
                let pos = out.len();
                out.push(unit);
                dict.push((pos as u32, 1));
                entry = (pos, 1);
                enlarge_in -= 1;
                if enlarge_in == 0 {
                    enlarge_in = 1u64 << num_bits;
                    num_bits += 1;
                }
            }
            _ => {
                if enlarge_in == 0 {
                    // Unreachable in well-formed streams; kept for symmetry.
                    enlarge_in = 1u64 << num_bits;
                    num_bits += 1;
                }
                let pos = out.len();
                if code < dict.len() {
                    let (start, len) = dict[code];
                    let (start, len) = (start as usize, len as usize);
                    if pos + len > max_units {
                        return Err(Lz64Error::TooLarge);
                    }
                    out.extend_from_within(start..start + len);
                    entry = (pos, len);
                } else if code == dict.len() {
                    // The KwKwK case: previous phrase + its own first unit.
                    let (ws, wl) = w;
                    if pos + wl + 1 > max_units {
                        return Err(Lz64Error::TooLarge);
                    }
                    out.extend_from_within(ws..ws + wl);
                    out.push(out[ws]);
                    entry = (pos, wl + 1);
                } else {
                    return Err(Lz64Error::Invalid(
                        "reference to an undefined dictionary entry",
                    ));
                }
            }
        }
        // New entry: previous phrase + first unit of this one. They are
        // adjacent in `out`, so it is the range extending `w` by one.
        // Both fit in u32: `out` never grows past `max_units <= u32::MAX`.
        let (ws, wl) = w;
        dict.push((ws as u32, (wl + 1) as u32));
        enlarge_in -= 1;
        w = entry;
        if enlarge_in == 0 {
            enlarge_in = 1u64 << num_bits;
            num_bits += 1;
        }
    }

    let s = String::from_utf16_lossy(&out);
    if s.len() > max_bytes {
        return Err(Lz64Error::TooLarge);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(s: &str) {
        let compressed = lz_str::compress_to_base64(s);
        let got = decompress_from_base64(compressed.as_bytes(), usize::MAX).unwrap();
        assert_eq!(got, s, "compressed: {compressed}");
        // The oracle agrees on the same bytes.
        let oracle = lz_str::decompress_from_base64(&compressed).unwrap();
        assert_eq!(String::from_utf16(&oracle).unwrap(), got);
    }

    #[test]
    fn known_strings_roundtrip() {
        for s in [
            "",
            "a",
            "ab",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "{\"event\":\"$pageview\",\"properties\":{\"distinct_id\":\"abc\"}}",
            "héllo wörld ✓ 日本語 🎉🎉🎉 emoji",
            "\u{0}\u{1}\u{ffff}",
            &"abcabcabcabd".repeat(500),
        ] {
            roundtrip(s);
        }
    }

    #[test]
    fn known_vector_from_javascript() {
        // LZString.compressToBase64("hello") in the reference JS library.
        assert_eq!(
            decompress_from_base64(b"BYUwNmD2Q===", 100).unwrap(),
            "hello"
        );
    }

    #[test]
    fn space_is_plus_and_newlines_are_skipped() {
        let s = "{\"some\":\"json with + and / in it\",\"n\":[1,2,3,4,5,6,7,8,9]}".repeat(20);
        let c = lz_str::compress_to_base64(s.as_str());
        assert!(c.contains('+') || c.contains('/'));
        let mangled: String = c
            .chars()
            .map(|ch| if ch == '+' { ' ' } else { ch })
            .collect::<String>()
            .as_bytes()
            .chunks(10)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            decompress_from_base64(mangled.as_bytes(), usize::MAX).unwrap(),
            s
        );
    }

    /// Hand-built lz-string stream: one literal `a`, then `repeats` codes that
    /// each mean "previous phrase + its first unit" (the longest possible
    /// expansion per code), then end-of-stream. Output is ~repeats²/2 units.
    fn bomb(repeats: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits: Vec<bool> = Vec::new();
        let put = |value: u64, n: u32, bits: &mut Vec<bool>| {
            for i in 0..n {
                bits.push(value >> i & 1 == 1);
            }
        };
        put(0, 2, &mut bits);
        put(u64::from(b'a'), 8, &mut bits);
        let (mut dict_len, mut enlarge_in, mut num_bits) = (4u64, 4u64, 3u32);
        for _ in 0..repeats {
            put(dict_len, num_bits, &mut bits);
            dict_len += 1;
            enlarge_in -= 1;
            if enlarge_in == 0 {
                enlarge_in = 1 << num_bits;
                num_bits += 1;
            }
        }
        put(2, num_bits, &mut bits);
        bits.chunks(6)
            .map(|c| {
                let v = c
                    .iter()
                    .enumerate()
                    .fold(0usize, |acc, (i, &b)| acc | usize::from(b) << (5 - i));
                ALPHABET[v] as char
            })
            .collect()
    }

    #[test]
    fn bomb_stops_at_cap() {
        // 3000 codes expand to ~4.5 M units from ~7 KB of input.
        let b = bomb(3000);
        assert!(b.len() < 8 << 10, "bomb is small: {}", b.len());
        assert_eq!(
            decompress_from_base64(b.as_bytes(), 1 << 20),
            Err(Lz64Error::TooLarge)
        );
        // The same stream under a big enough cap decodes fully, and agrees
        // with the oracle: the bomb is a well-formed stream.
        let full = decompress_from_base64(b.as_bytes(), 8 << 20).unwrap();
        assert_eq!(full.len(), 1 + (2..=3001).sum::<usize>());
        assert!(full.bytes().all(|c| c == b'a'));
        let oracle = lz_str::decompress_from_base64(&b).unwrap();
        assert_eq!(oracle.len(), full.len());
    }

    #[test]
    fn long_runs_match_the_oracle() {
        let s = "a".repeat(64 << 10);
        roundtrip(&s);
    }

    #[test]
    fn cap_counts_utf8_bytes() {
        let s = "é".repeat(100); // 200 UTF-8 bytes, 100 UTF-16 units
        let c = lz_str::compress_to_base64(s.as_str());
        assert_eq!(
            decompress_from_base64(c.as_bytes(), 199),
            Err(Lz64Error::TooLarge)
        );
        assert_eq!(decompress_from_base64(c.as_bytes(), 200).unwrap(), s);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(matches!(
            decompress_from_base64(b"!!!!", 100),
            Err(Lz64Error::Invalid(_))
        ));
        let c = lz_str::compress_to_base64("hello world, hello world, hello world");
        let truncated = &c.as_bytes()[..c.len() / 2];
        assert!(matches!(
            decompress_from_base64(truncated, 1000),
            Err(Lz64Error::Invalid(_))
        ));
    }

    proptest! {
        #[test]
        fn random_strings_roundtrip(s in any::<String>()) {
            let compressed = lz_str::compress_to_base64(s.as_str());
            let got = decompress_from_base64(compressed.as_bytes(), usize::MAX).unwrap();
            prop_assert_eq!(got, s);
        }

        #[test]
        fn random_repetitive_strings_roundtrip(parts in proptest::collection::vec("[a-c日🎉]{1,4}", 0..200)) {
            let s = parts.concat();
            let compressed = lz_str::compress_to_base64(s.as_str());
            let got = decompress_from_base64(compressed.as_bytes(), usize::MAX).unwrap();
            prop_assert_eq!(got, s);
        }

        #[test]
        fn random_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decompress_from_base64(&input, 10_000);
        }

        #[test]
        fn random_base64_never_panics(input in "[A-Za-z0-9+/=]{0,300}") {
            let r = decompress_from_base64(input.as_bytes(), 10_000);
            if let Ok(s) = r { prop_assert!(s.len() <= 10_000); }
        }
    }
}
