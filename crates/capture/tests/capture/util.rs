//! Shared test helpers.

use std::io::Write;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use flywheel_capture::{
    parse_posthog, parse_segment, Limits, Method, Payload, RawRequest, RequestError, SegmentCall,
};

/// The server clock in every test.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Percent-encodes everything but unreserved characters (like JS
/// `encodeURIComponent`).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A hand-built lz-string stream that expands to ~repeats²/2 characters.
pub fn lz64_bomb(repeats: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: Vec<bool> = Vec::new();
    let put = |value: u64, n: u32, bits: &mut Vec<bool>| {
        for i in 0..n {
            bits.push(value >> i & 1 == 1);
        }
    };
    put(0, 2, &mut bits);
    put(u64::from(b'['), 8, &mut bits);
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

/// An owned request, for tables.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub body: Vec<u8>,
    pub basic_auth_user: Option<String>,
}

impl Req {
    pub fn post(body: impl Into<Vec<u8>>) -> Self {
        Req {
            method: Method::Post,
            query: None,
            content_type: None,
            content_encoding: None,
            body: body.into(),
            basic_auth_user: None,
        }
    }

    pub fn get(query: impl Into<String>) -> Self {
        Req {
            method: Method::Get,
            query: Some(query.into()),
            ..Req::post(Vec::new())
        }
    }

    pub fn query(mut self, q: impl Into<String>) -> Self {
        self.query = Some(q.into());
        self
    }

    pub fn content_type(mut self, ct: &str) -> Self {
        self.content_type = Some(ct.to_owned());
        self
    }

    pub fn content_encoding(mut self, ce: &str) -> Self {
        self.content_encoding = Some(ce.to_owned());
        self
    }

    pub fn basic(mut self, user: &str) -> Self {
        self.basic_auth_user = Some(user.to_owned());
        self
    }

    pub fn raw(&self) -> RawRequest<'_> {
        RawRequest {
            method: self.method,
            query: self.query.as_deref(),
            content_type: self.content_type.as_deref(),
            content_encoding: self.content_encoding.as_deref(),
            body: &self.body,
            basic_auth_user: self.basic_auth_user.as_deref(),
        }
    }

    pub fn posthog(&self) -> Result<Payload, RequestError> {
        parse_posthog(&self.raw(), &Limits::default(), now())
    }

    pub fn segment(&self, call: SegmentCall) -> Result<Payload, RequestError> {
        parse_segment(call, &self.raw(), &Limits::default(), now())
    }
}

/// Parses with PostHog rules and expects exactly one good event.
pub fn one_posthog(req: &Req) -> flywheel_capture::CapturedEvent {
    let p = req
        .posthog()
        .unwrap_or_else(|e| panic!("request error: {e}"));
    assert!(p.rejected.is_empty(), "rejected: {:?}", p.rejected);
    assert_eq!(p.events.len(), 1);
    p.events.into_iter().next().unwrap()
}

/// Parses with Segment rules and expects exactly one good event.
pub fn one_segment(call: SegmentCall, req: &Req) -> flywheel_capture::CapturedEvent {
    let p = req
        .segment(call)
        .unwrap_or_else(|e| panic!("request error: {e}"));
    assert!(p.rejected.is_empty(), "rejected: {:?}", p.rejected);
    assert_eq!(p.events.len(), 1);
    p.events.into_iter().next().unwrap()
}
