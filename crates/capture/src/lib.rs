//! Decoding and normalisation of PostHog- and Segment-compatible capture
//! requests.
//!
//! Pure functions, no I/O: the HTTP server extracts the request parts into a
//! [`RawRequest`] and calls [`parse_posthog`] or [`parse_segment`], which
//! return the normalised events, the events that were dropped and why, or a
//! [`RequestError`] that carries its HTTP status.
//!
//! ```
//! use chrono::Utc;
//! use flywheel_capture::{parse_posthog, Limits, RawRequest};
//!
//! let body = br#"{"api_key": "phc_test", "batch": [
//!     {"event": "$pageview", "distinct_id": 42, "properties": {"$current_url": "https://example.com"}},
//!     {"event": "signed_up"}
//! ]}"#;
//! let payload = parse_posthog(&RawRequest::post(body), &Limits::default(), Utc::now()).unwrap();
//!
//! assert_eq!(payload.events.len(), 1);
//! let event = &payload.events[0];
//! assert_eq!((event.token.as_str(), event.distinct_id.as_str()), ("phc_test", "42"));
//! assert_eq!(event.properties_map()["$current_url"], "https://example.com");
//!
//! // The second event has no distinct id: dropped, and reported.
//! assert_eq!(payload.rejected[0].index, 1);
//! assert_eq!(payload.rejected[0].code, "missing_distinct_id");
//! assert_eq!(payload.rejected[0].message, "batch[1].distinct_id: missing");
//!
//! // Whole-request problems map to an HTTP status.
//! let err = parse_posthog(&RawRequest::post(b"{\"batch\": 5}"), &Limits::default(), Utc::now())
//!     .unwrap_err();
//! assert_eq!((err.status(), err.code()), (400, "invalid_payload"));
//! ```
//!
//! # Limits
//! Every decompressor (gzip, lz64, base64) stops as soon as its output exceeds
//! [`Limits::max_decompressed_bytes`]; JSON nesting deeper than
//! [`Limits::max_json_depth`] is refused without ever recursing deeply (the
//! parser stops at 127 levels whatever the limit); a request may hold at most
//! [`Limits::max_events`].

mod common;
mod decode;
mod error;
mod fast;
mod lz64;
mod posthog;
mod segment;
mod time;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use decode::posthog_document;
pub use error::{codes, EventError, RequestError};
pub use posthog::parse_posthog;
pub use segment::{message_id_uuid, parse_segment, SegmentCall};

/// Resource limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of the decoded payload (after gzip, lz64 or base64), in bytes.
    /// Default 100 MiB.
    pub max_decompressed_bytes: usize,
    /// Maximum JSON nesting depth (arrays and objects; `[]` is depth 1).
    /// Default 64. Values above 127 act as 127 (serde_json's own limit).
    pub max_json_depth: usize,
    /// Maximum number of events in one request. Default 10 000.
    pub max_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decompressed_bytes: 100 << 20,
            max_json_depth: 64,
            max_events: 10_000,
        }
    }
}

/// HTTP method of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET` (PostHog only: payload in `?data=`).
    Get,
    /// `POST`.
    Post,
}

/// Parts of an HTTP request the server extracted.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// HTTP method.
    pub method: Method,
    /// Raw query string (without `?`), not decoded.
    pub query: Option<&'a str>,
    /// `Content-Type` header.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding` header. Gzip bodies are detected by their magic
    /// bytes whatever this says.
    pub content_encoding: Option<&'a str>,
    /// Raw body.
    pub body: &'a [u8],
    /// User part of `Authorization: Basic`, already base64-decoded (Segment write key).
    pub basic_auth_user: Option<&'a str>,
}

impl<'a> RawRequest<'a> {
    /// A `POST` with only a body.
    pub fn post(body: &'a [u8]) -> Self {
        RawRequest {
            method: Method::Post,
            query: None,
            content_type: None,
            content_encoding: None,
            body,
            basic_auth_user: None,
        }
    }

    /// A `GET` with only a query string.
    pub fn get(query: &'a str) -> Self {
        RawRequest {
            method: Method::Get,
            query: Some(query),
            content_type: None,
            content_encoding: None,
            body: b"",
            basic_auth_user: None,
        }
    }
}

/// The outcome of a request that was usable as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Valid events, in request order.
    pub events: Vec<CapturedEvent>,
    /// Invalid events, dropped and reported, in request order.
    pub rejected: Vec<EventError>,
    /// `beacon=1` in the query or the form: the server answers 204.
    pub beacon: bool,
    /// `historical_migration: true` on the batch (no clock-skew correction).
    pub historical_migration: bool,
}

/// One normalised event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedEvent {
    /// Position in the request's batch (0 for single-event bodies).
    pub index: usize,
    /// API key / token / write key (not validated here).
    pub token: String,
    /// Given by the client, derived from a Segment `messageId`, or a fresh v7.
    pub uuid: uuid::Uuid,
    /// Event name (`$identify`, `$pageview`, ... for mapped Segment calls).
    pub event: String,
    /// Distinct id; numbers are converted to their decimal text.
    pub distinct_id: String,
    /// After clock-skew correction and the 23 h future clamp.
    pub timestamp: DateTime<Utc>,
    /// Normalised properties as JSON object text, ready to store (`token`, `$token`, `api_key`, `distinct_id`
    /// and `$distinct_id` removed; top-level `$set`/`$set_once`/`$unset` merged in). Plain JSON bodies keep the
    /// client's text and member order; see [`CapturedEvent::properties_map`] to inspect them.
    pub properties: String,
}

impl CapturedEvent {
    /// The properties parsed into a map.
    pub fn properties_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.properties).unwrap_or_default()
    }
}
