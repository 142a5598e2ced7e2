//! Turning raw request parts into one `serde_json::Value`.
//!
//! Every decompression step is capped while it runs, JSON is parsed exactly
//! once (serde_json's own recursion limit, 127 levels, keeps the parser off the
//! stack's edge), and the configured nesting limit is then checked by an
//! iterative walk of the parsed value.

use std::borrow::Cow;
use std::io::Read;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::Value;

use crate::lz64::{self, Lz64Error};
use crate::{Limits, Method, RawRequest, RequestError};

/// Standard alphabet, padding optional, lenient about trailing bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// `compression` values sent by posthog-js and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Lz64,
    Base64,
    Gzip,
    /// Absent or unknown: detect.
    Auto,
}

impl Compression {
    fn parse(v: &[u8]) -> Self {
        let v = v.trim_ascii();
        if v.eq_ignore_ascii_case(b"lz64") || v.eq_ignore_ascii_case(b"lz-string") {
            Compression::Lz64
        } else if v.eq_ignore_ascii_case(b"base64") {
            Compression::Base64
        } else if v.eq_ignore_ascii_case(b"gzip-js") || v.eq_ignore_ascii_case(b"gzip") {
            Compression::Gzip
        } else {
            Compression::Auto
        }
    }
}

/// The fields of a query string or form body that capture cares about.
#[derive(Debug, Default)]
pub(crate) struct FormFields<'a> {
    pub data: Option<Cow<'a, [u8]>>,
    pub compression: Option<Compression>,
    pub beacon: bool,
}

impl<'a> FormFields<'a> {
    /// Parses `a=b&c=d`. The first occurrence of a key wins; keys other than
    /// `data`, `compression` and `beacon` (`ver`, `_`, `ip`, ...) are ignored
    /// without being decoded.
    pub(crate) fn parse(input: &'a [u8]) -> Self {
        let mut out = FormFields::default();
        let mut seen_compression = false;
        let mut seen_beacon = false;
        for pair in input.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            let key = url_decode(key);
            match &*key {
                b"data" if out.data.is_none() => out.data = Some(url_decode(value)),
                b"compression" if !seen_compression => {
                    seen_compression = true;
                    out.compression = Some(Compression::parse(&url_decode(value)));
                }
                b"beacon" if !seen_beacon => {
                    seen_beacon = true;
                    let v = url_decode(value);
                    out.beacon = &*v == b"1" || v.eq_ignore_ascii_case(b"true");
                }
                _ => {}
            }
        }
        out
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%xx` a
/// byte. Malformed `%` escapes are kept literally. Borrows when there is
/// nothing to decode.
pub(crate) fn url_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let decoded = match (input.get(i + 1), input.get(i + 2)) {
                    (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                };
                match decoded {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

pub(crate) fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// First byte that is not ASCII whitespace, after an optional UTF-8 BOM.
fn first_significant(b: &[u8]) -> Option<u8> {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    b.iter().copied().find(|c| !c.is_ascii_whitespace())
}

fn looks_like_json(b: &[u8]) -> bool {
    matches!(first_significant(b), Some(b'{' | b'['))
}

fn is_blank(b: &[u8]) -> bool {
    first_significant(b).is_none()
}

/// `type/subtype` of a Content-Type header, lower-cased comparisons left to callers.
fn mime_essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

fn is_form_content_type(ct: Option<&str>) -> bool {
    ct.is_some_and(|ct| mime_essence(ct).eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// Decompresses gzip (possibly multi-member), failing as soon as the output
/// exceeds `limit`.
pub(crate) fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, RequestError> {
    let decoder = flate2::read::MultiGzDecoder::new(data);
    let initial = data.len().saturating_mul(4).min(limit).min(16 << 20);
    let mut out = Vec::with_capacity(initial);
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| RequestError::InvalidGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(RequestError::PayloadTooLarge { limit });
    }
    Ok(out)
}

/// Lenient base64: standard or URL-safe alphabet, optional padding, spaces
/// read as `+` (an unescaped `+` in a form field), line breaks ignored.
pub(crate) fn decode_base64(data: &[u8], what: &'static str) -> Result<Vec<u8>, RequestError> {
    let data = data.trim_ascii();
    let needs_fixing = data
        .iter()
        .any(|&b| matches!(b, b' ' | b'\r' | b'\n' | b'\t' | b'-' | b'_'));
    let input: Cow<'_, [u8]> = if needs_fixing {
        Cow::Owned(
            data.iter()
                .filter_map(|&b| match b {
                    b' ' | b'-' => Some(b'+'),
                    b'_' => Some(b'/'),
                    b'\r' | b'\n' | b'\t' => None,
                    b => Some(b),
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(data)
    };
    BASE64
        .decode(&*input)
        .map_err(|e| RequestError::InvalidBase64 {
            what,
            detail: e.to_string(),
        })
}

/// UTF-8 check, a single serde parse, and the depth check.
pub(crate) fn parse_json(
    bytes: &[u8],
    what: &'static str,
    limits: &Limits,
) -> Result<Value, RequestError> {
    if bytes.len() > limits.max_decompressed_bytes {
        return Err(RequestError::PayloadTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| RequestError::InvalidUtf8 {
        what,
        offset: e.valid_up_to(),
    })?;
    parse_json_str(text, what, limits)
}

pub(crate) fn parse_json_str(
    text: &str,
    what: &'static str,
    limits: &Limits,
) -> Result<Value, RequestError> {
    if text.len() > limits.max_decompressed_bytes {
        return Err(RequestError::PayloadTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    // serde_json refuses to nest deeper than 127 (its own recursion limit), so
    // parsing cannot overflow the stack; the configured limit is then checked
    // on the parsed value without recursion. Walking the parsed containers is
    // much cheaper than a byte scan of the text.
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            RequestError::JsonTooDeep {
                limit: limits.max_json_depth.min(SERDE_MAX_DEPTH),
            }
        } else {
            RequestError::InvalidJson(format!("{what}: {e}"))
        }
    })?;
    if exceeds_depth(&value, limits.max_json_depth) {
        return Err(RequestError::JsonTooDeep {
            limit: limits.max_json_depth,
        });
    }
    Ok(value)
}

/// Deepest nesting serde_json accepts (its recursion limit of 128 fails on the 128th level).
const SERDE_MAX_DEPTH: usize = 127;

/// Whether arrays/objects nest deeper than `max_depth` (`[]` is depth 1).
/// Iterative: an explicit stack of containers still to visit.
pub(crate) fn exceeds_depth(value: &Value, max_depth: usize) -> bool {
    fn push<'v>(stack: &mut Vec<(&'v Value, usize)>, v: &'v Value, depth: usize) {
        if matches!(v, Value::Array(_) | Value::Object(_)) {
            stack.push((v, depth));
        }
    }
    let mut stack = Vec::new();
    push(&mut stack, value, 1);
    while let Some((v, depth)) = stack.pop() {
        if depth > max_depth {
            return true;
        }
        match v {
            Value::Array(items) => items.iter().for_each(|c| push(&mut stack, c, depth + 1)),
            Value::Object(map) => map.values().for_each(|c| push(&mut stack, c, depth + 1)),
            _ => {}
        }
    }
    false
}

/// Checks `Content-Encoding` for a body that is not gzip (gzip is detected by
/// magic bytes whatever the header says). A mislabelled plain body is accepted.
fn check_encoding(encoding: Option<&str>, body: &[u8]) -> Result<(), RequestError> {
    let Some(enc) = encoding else { return Ok(()) };
    let all_known = enc.split(',').map(str::trim).all(|e| {
        e.is_empty()
            || e.eq_ignore_ascii_case("identity")
            || e.eq_ignore_ascii_case("gzip")
            || e.eq_ignore_ascii_case("x-gzip")
    });
    if all_known || looks_like_json(body) || body.trim_ascii_start().starts_with(b"data=") {
        Ok(())
    } else {
        Err(RequestError::UnsupportedEncoding(enc.to_owned()))
    }
}

/// Decodes one payload (a body or a `data` field) according to `compression`.
fn decode_data(
    data: &[u8],
    compression: Compression,
    what: &'static str,
    limits: &Limits,
) -> Result<Value, RequestError> {
    let limit = limits.max_decompressed_bytes;
    if is_blank(data) {
        return Err(RequestError::EmptyBody);
    }
    // `{` and `[` are outside every base64 alphabet: such a payload is JSON
    // whatever the `compression` parameter claims.
    if looks_like_json(data) {
        return parse_json(data, what, limits);
    }
    match compression {
        Compression::Lz64 => {
            let text = lz64::decompress_from_base64(data, limit).map_err(|e| match e {
                Lz64Error::TooLarge => RequestError::PayloadTooLarge { limit },
                Lz64Error::Invalid(m) => RequestError::InvalidLz64(format!("{what}: {m}")),
            })?;
            parse_json_str(&text, "lz64-decompressed data", limits)
        }
        Compression::Base64 => {
            let bytes = decode_base64(data, what)?;
            parse_json(&bytes, "base64-decoded data", limits)
        }
        Compression::Gzip | Compression::Auto if is_gzip(data) => {
            let bytes = gunzip(data, limit)?;
            parse_json(&bytes, "gzip-decompressed data", limits)
        }
        Compression::Gzip => Err(RequestError::InvalidGzip(format!(
            "{what} is declared gzip but has no gzip header"
        ))),
        Compression::Auto => {
            // Older posthog-js: the body is base64-encoded JSON.
            match decode_base64(data, what) {
                Ok(bytes) if looks_like_json(&bytes) => {
                    parse_json(&bytes, "base64-decoded data", limits)
                }
                // A JSON scalar (`42`, `"x"`, `null`) is valid JSON of the
                // wrong shape: let the caller say so.
                _ => parse_json(data, what, limits).map_err(|_| {
                    RequestError::InvalidJson(format!(
                        "{what} is neither JSON nor base64-encoded JSON"
                    ))
                }),
            }
        }
    }
}

/// Everything a PostHog request carries, decoded into one JSON value.
/// A decoded PostHog payload: plain JSON text (parsed by the caller, possibly on the fast path) or a value
/// already parsed from a form field, query parameter or compressed encoding.
pub(crate) enum Decoded<'a> {
    Text(std::borrow::Cow<'a, str>, &'static str),
    Value(Value),
}

/// UTF-8 text of a JSON payload, size-checked, without a byte-order mark.
fn json_text<'a>(
    bytes: std::borrow::Cow<'a, [u8]>,
    what: &'static str,
    limits: &Limits,
) -> Result<std::borrow::Cow<'a, str>, RequestError> {
    use std::borrow::Cow;
    if bytes.len() > limits.max_decompressed_bytes {
        return Err(RequestError::PayloadTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    let invalid = |e: std::str::Utf8Error| RequestError::InvalidUtf8 {
        what,
        offset: e.valid_up_to(),
    };
    match bytes {
        Cow::Borrowed(b) => {
            let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
            std::str::from_utf8(b).map(Cow::Borrowed).map_err(invalid)
        }
        Cow::Owned(mut v) => {
            if v.starts_with(b"\xEF\xBB\xBF") {
                v.drain(..3);
            }
            String::from_utf8(v)
                .map(Cow::Owned)
                .map_err(|e| invalid(e.utf8_error()))
        }
    }
}

pub(crate) fn posthog_decoded<'a>(
    req: &RawRequest<'a>,
    limits: &Limits,
) -> Result<(Decoded<'a>, bool), RequestError> {
    let query = req
        .query
        .map(|q| FormFields::parse(q.as_bytes()))
        .unwrap_or_default();
    let mut beacon = query.beacon;
    let query_compression = query.compression.unwrap_or(Compression::Auto);

    if let Some(data) = &query.data {
        if req.method == Method::Get || is_blank(req.body) {
            let v = decode_data(data, query_compression, "query parameter `data`", limits)?;
            return Ok((Decoded::Value(v), beacon));
        }
    }
    if is_blank(req.body) {
        return Err(RequestError::EmptyBody);
    }

    let (body, what): (std::borrow::Cow<'a, [u8]>, &'static str) = if is_gzip(req.body) {
        let gunzipped = gunzip(req.body, limits.max_decompressed_bytes)?;
        (gunzipped.into(), "gzip-decompressed body")
    } else {
        check_encoding(req.content_encoding, req.body)?;
        (req.body.into(), "body")
    };
    if looks_like_json(&body) {
        return Ok((Decoded::Text(json_text(body, what, limits)?, what), beacon));
    }
    let body: &[u8] = &body;

    let form = !looks_like_json(body)
        && (is_form_content_type(req.content_type)
            || body.trim_ascii_start().starts_with(b"data="));
    if form {
        let fields = FormFields::parse(body.trim_ascii());
        beacon |= fields.beacon;
        let Some(data) = fields.data else {
            return Err(RequestError::MissingData);
        };
        let compression = fields.compression.unwrap_or(query_compression);
        let v = decode_data(&data, compression, "form field `data`", limits)?;
        return Ok((Decoded::Value(v), beacon));
    }
    Ok((
        Decoded::Value(decode_data(body, query_compression, what, limits)?),
        beacon,
    ))
}

/// A Segment request body decoded into one JSON value.
pub(crate) fn segment_value(req: &RawRequest<'_>, limits: &Limits) -> Result<Value, RequestError> {
    if req.method != Method::Post {
        return Err(RequestError::MethodNotAllowed);
    }
    if is_blank(req.body) {
        return Err(RequestError::EmptyBody);
    }
    let gunzipped;
    let (body, what): (&[u8], &'static str) = if is_gzip(req.body) {
        gunzipped = gunzip(req.body, limits.max_decompressed_bytes)?;
        (&gunzipped, "gzip-decompressed body")
    } else {
        check_encoding(req.content_encoding, req.body)?;
        (req.body, "body")
    };
    if !looks_like_json(body) {
        if let Some(ct) = req.content_type {
            let essence = mime_essence(ct);
            if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
                || essence.eq_ignore_ascii_case("multipart/form-data")
            {
                return Err(RequestError::UnsupportedContentType(essence.to_owned()));
            }
        }
    }
    parse_json(body, what, limits)
}

/// The JSON document of a PostHog SDK request (`/flags`, `/decide`): the same encodings as capture (plain or
/// gzip JSON, `data=` form fields or query parameters, base64, lz64), size- and depth-limited.
pub fn posthog_document(req: &RawRequest<'_>, limits: &Limits) -> Result<Value, RequestError> {
    match posthog_decoded(req, limits)?.0 {
        Decoded::Text(text, what) => parse_json_str(&text, what, limits),
        Decoded::Value(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decode_plus_and_percent() {
        assert_eq!(&*url_decode(b"a+b%2Bc%7b%7D"), b"a b+c{}");
        // Malformed escapes stay literal.
        assert_eq!(&*url_decode(b"100%+%zz%4"), b"100% %zz%4");
        assert!(matches!(url_decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn form_fields_first_wins_and_ignores_others() {
        let f = FormFields::parse(b"ver=1.2&data=abc&compression=lz64&data=zzz&_=123&beacon=1");
        assert_eq!(f.data.as_deref(), Some(&b"abc"[..]));
        assert_eq!(f.compression, Some(Compression::Lz64));
        assert!(f.beacon);
        let f = FormFields::parse(b"d%61ta=x%20y&beacon=0");
        assert_eq!(f.data.as_deref(), Some(&b"x y"[..]));
        assert!(!f.beacon);
    }

    #[test]
    fn depth_counts_containers_not_brackets_in_strings() {
        let limits = |d| Limits {
            max_json_depth: d,
            ..Limits::default()
        };
        let parse = |s: &str, d| parse_json(s.as_bytes(), "body", &limits(d));
        assert!(parse(r#"{"a":"[[[[[[[[[[[[[[[[[[[[{{{{"}"#, 1).is_ok());
        assert!(parse(r#"[[[]]]"#, 3).is_ok());
        assert!(parse(r#"[1, {"a": [true]}]"#, 3).is_ok());
        assert_eq!(
            parse(r#"[1, {"a": [[true]]}]"#, 3),
            Err(RequestError::JsonTooDeep { limit: 3 })
        );
        // Far deeper than serde's own limit: refused without recursing.
        let deep = "[".repeat(1_000_000);
        assert_eq!(
            parse(&deep, 64),
            Err(RequestError::JsonTooDeep { limit: 64 })
        );
    }

    /// Recursive reference (fine for the shallow values generated below).
    fn reference_depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(reference_depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(reference_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn nested() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![Just(Value::Null), any::<i32>().prop_map(Value::from)];
        leaf.prop_recursive(10, 200, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-c]", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn depth_walk_matches_reference(v in nested()) {
            let depth = reference_depth(&v);
            proptest::prop_assert!(!exceeds_depth(&v, depth));
            if depth > 0 {
                proptest::prop_assert!(exceeds_depth(&v, depth - 1));
            }
        }
    }

    #[test]
    fn serde_recursion_limit_maps_to_too_deep() {
        let limits = Limits {
            max_json_depth: 10_000,
            ..Limits::default()
        };
        let nest = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(parse_json(nest(SERDE_MAX_DEPTH).as_bytes(), "body", &limits).is_ok());
        assert!(parse_json(nest(SERDE_MAX_DEPTH + 1).as_bytes(), "body", &limits).is_err());
        let deep = nest(500);
        assert_eq!(
            parse_json(deep.as_bytes(), "body", &limits)
                .unwrap_err()
                .code(),
            "json_too_deep"
        );
    }

    #[test]
    fn base64_lenient_variants() {
        let json = br#"{"event":"x?>"}"#;
        let std = BASE64.encode(json);
        assert_eq!(decode_base64(std.as_bytes(), "t").unwrap(), json);
        let unpadded = std.trim_end_matches('=');
        assert_eq!(decode_base64(unpadded.as_bytes(), "t").unwrap(), json);
        let spaced = std.replace('+', " ");
        assert_eq!(decode_base64(spaced.as_bytes(), "t").unwrap(), json);
        let urlsafe = std.replace('+', "-").replace('/', "_");
        assert_eq!(decode_base64(urlsafe.as_bytes(), "t").unwrap(), json);
        assert_eq!(
            decode_base64(b"!!!", "t").unwrap_err().code(),
            "invalid_base64"
        );
    }

    #[test]
    fn gunzip_caps_output_while_decoding() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 8 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        assert_eq!(
            gunzip(&bomb, 1 << 20),
            Err(RequestError::PayloadTooLarge { limit: 1 << 20 })
        );
        assert_eq!(gunzip(&bomb, 8 << 20).unwrap().len(), 8 << 20);
    }

    #[test]
    fn encoding_header_checks() {
        assert!(check_encoding(Some("gzip"), b"{}").is_ok());
        assert!(check_encoding(Some("identity"), b"xyz").is_ok());
        assert!(check_encoding(Some("br"), b" [1]").is_ok());
        assert_eq!(
            check_encoding(Some("br"), b"\x0b\x00binary")
                .unwrap_err()
                .status(),
            415
        );
    }
}
