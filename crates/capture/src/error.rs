//! Request-level and event-level errors.

use std::fmt;

use serde::Serialize;

/// Stable, snake_case codes used in [`EventError::code`].
pub mod codes {
    /// The batch element is not a JSON object.
    pub const NOT_AN_OBJECT: &str = "not_an_object";
    /// No token/API key/write key on the event, its properties or the batch.
    pub const MISSING_TOKEN: &str = "missing_token";
    /// A token field is present but is not a non-empty string.
    pub const INVALID_TOKEN: &str = "invalid_token";
    /// No event name (`event` absent, null or empty).
    pub const MISSING_EVENT: &str = "missing_event";
    /// The event name is not a string, or is longer than 200 characters.
    pub const INVALID_EVENT: &str = "invalid_event";
    /// No distinct id anywhere on the event.
    pub const MISSING_DISTINCT_ID: &str = "missing_distinct_id";
    /// The distinct id is null, empty, not a string/number, or too long.
    pub const INVALID_DISTINCT_ID: &str = "invalid_distinct_id";
    /// `properties` (or Segment `traits`) is not an object.
    pub const INVALID_PROPERTIES: &str = "invalid_properties";
    /// `uuid` does not parse as a (non-nil) UUID.
    pub const INVALID_UUID: &str = "invalid_uuid";
    /// A time field (`timestamp`, `offset`, `sent_at`, ...) is unusable.
    pub const INVALID_TIMESTAMP: &str = "invalid_timestamp";
    /// Segment: neither `userId` nor `anonymousId` (or no `userId` for alias).
    pub const MISSING_USER_ID: &str = "missing_user_id";
    /// Segment: a batch message without `type`.
    pub const MISSING_TYPE: &str = "missing_type";
    /// Segment: `type` is not one of track/identify/group/alias/page/screen.
    pub const INVALID_TYPE: &str = "invalid_type";
    /// Segment: `messageId` is neither a string nor a number.
    pub const INVALID_MESSAGE_ID: &str = "invalid_message_id";
    /// Segment: `context` is not an object.
    pub const INVALID_CONTEXT: &str = "invalid_context";
    /// Segment alias without `previousId`.
    pub const MISSING_PREVIOUS_ID: &str = "missing_previous_id";
    /// Segment group without `groupId`.
    pub const MISSING_GROUP_ID: &str = "missing_group_id";
}

/// One event of a request that was dropped, and why.
///
/// The rest of the batch is still accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventError {
    /// Position of the event in the request's batch (0 for single-event bodies).
    pub index: usize,
    /// Stable snake_case code, one of [`codes`].
    pub code: &'static str,
    /// Human-readable message naming the field, e.g. `batch[3].distinct_id: missing`.
    pub message: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EventError {}

/// The whole request is unusable.
///
/// Use [`RequestError::status`] for the HTTP status and [`RequestError::code`]
/// for a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No body and no `data` parameter, or a blank one.
    #[error("request contains no data: the body is empty and there is no `data` parameter")]
    EmptyBody,
    /// A form-encoded body without a `data` field.
    #[error("form-encoded body has no `data` field")]
    MissingData,
    /// Decompressed/decoded payload is larger than the limit.
    #[error("decoded payload is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured `max_decompressed_bytes`.
        limit: usize,
    },
    /// More events in one request than allowed.
    #[error("request has {count} events, more than the limit of {limit}")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The configured `max_events`.
        limit: usize,
    },
    /// Corrupt or truncated gzip data.
    #[error("invalid gzip data: {0}")]
    InvalidGzip(String),
    /// Corrupt lz-string (`compressToBase64`) data.
    #[error("invalid lz64 (lz-string base64) data: {0}")]
    InvalidLz64(String),
    /// Invalid base64.
    #[error("invalid base64 in {what}: {detail}")]
    InvalidBase64 {
        /// Where the data came from (`body`, `form field data`, ...).
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The payload is not UTF-8.
    #[error("{what} is not valid UTF-8 (invalid byte sequence at offset {offset})")]
    InvalidUtf8 {
        /// Where the data came from.
        what: &'static str,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The payload is not JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// JSON nesting deeper than `max_json_depth`.
    #[error("JSON is nested deeper than the limit of {limit} levels")]
    JsonTooDeep {
        /// The configured `max_json_depth`.
        limit: usize,
    },
    /// Valid JSON of the wrong shape (e.g. `batch` is not an array).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// `batch` (or a top-level array) has no events.
    #[error("the batch contains no events")]
    EmptyBatch,
    /// No token anywhere in the request.
    #[error("no API key or token in the request")]
    MissingToken,
    /// A batch-level token/API key/write key that is not a non-empty string.
    #[error("invalid `{field}`: expected a non-empty string")]
    InvalidToken {
        /// The field (`api_key`, `token`, `writeKey`).
        field: &'static str,
    },
    /// A `Content-Encoding` this crate cannot decode.
    #[error("unsupported Content-Encoding `{0}` (supported: gzip, identity)")]
    UnsupportedEncoding(String),
    /// A `Content-Type` this endpoint does not accept.
    #[error("unsupported Content-Type `{0}` (expected JSON)")]
    UnsupportedContentType(String),
    /// HTTP method not accepted by the endpoint (Segment endpoints are POST only).
    #[error("method not allowed: this endpoint only accepts POST")]
    MethodNotAllowed,
}

impl RequestError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::EmptyBody => "empty_body",
            RequestError::MissingData => "missing_data",
            RequestError::PayloadTooLarge { .. } => "payload_too_large",
            RequestError::TooManyEvents { .. } => "too_many_events",
            RequestError::InvalidGzip(_) => "invalid_gzip",
            RequestError::InvalidLz64(_) => "invalid_lz64",
            RequestError::InvalidBase64 { .. } => "invalid_base64",
            RequestError::InvalidUtf8 { .. } => "invalid_utf8",
            RequestError::InvalidJson(_) => "invalid_json",
            RequestError::JsonTooDeep { .. } => "json_too_deep",
            RequestError::InvalidPayload(_) => "invalid_payload",
            RequestError::EmptyBatch => "empty_batch",
            RequestError::MissingToken => "missing_token",
            RequestError::InvalidToken { .. } => "invalid_token",
            RequestError::UnsupportedEncoding(_) => "unsupported_encoding",
            RequestError::UnsupportedContentType(_) => "unsupported_content_type",
            RequestError::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// HTTP status the server should answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::PayloadTooLarge { .. } | RequestError::TooManyEvents { .. } => 413,
            RequestError::MissingToken | RequestError::InvalidToken { .. } => 401,
            RequestError::UnsupportedEncoding(_) | RequestError::UnsupportedContentType(_) => 415,
            RequestError::MethodNotAllowed => 405,
            RequestError::EmptyBody
            | RequestError::MissingData
            | RequestError::InvalidGzip(_)
            | RequestError::InvalidLz64(_)
            | RequestError::InvalidBase64 { .. }
            | RequestError::InvalidUtf8 { .. }
            | RequestError::InvalidJson(_)
            | RequestError::JsonTooDeep { .. }
            | RequestError::InvalidPayload(_)
            | RequestError::EmptyBatch => 400,
        }
    }
}
