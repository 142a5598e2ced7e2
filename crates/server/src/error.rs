//! One JSON error body for every endpoint: `{"type", "code", "message"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to the client. Internal details are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Field-level problems (`[{field, message}]`), when there are any.
    pub errors: Option<serde_json::Value>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: None,
            retry_after: None,
        }
    }

    pub fn with_errors(mut self, errors: serde_json::Value) -> Self {
        self.errors = Some(errors);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// `400 validation_error` naming every problem: "the {what} is invalid: field: message; …", with the list
    /// in `errors`.
    pub fn validation(what: &str, errors: &[flywheel_query::FieldError]) -> Self {
        let summary: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        Self::bad_request(
            "validation_error",
            format!("the {what} is invalid: {}", summary.join("; ")),
        )
        .with_errors(json!(errors))
    }

    /// [`ApiError::validation`] of one field.
    pub fn invalid_field(what: &str, field: &str, message: impl Into<String>) -> Self {
        Self::validation(
            what,
            &[flywheel_query::FieldError {
                field: field.into(),
                message: message.into(),
            }],
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Logs `err` and answers a bare 500 (storage failures, bugs).
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }

    /// Storage temporarily unable to accept writes: clients should retry.
    pub fn unavailable(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "storage unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "events could not be stored; retry later",
        )
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found",
            400..=499 => "invalid_request",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"type": self.kind(), "code": self.code, "message": self.message});
        if let Some(errors) = self.errors {
            body["errors"] = errors;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

impl From<flywheel_store::StoreError> for ApiError {
    fn from(err: flywheel_store::StoreError) -> Self {
        Self::internal(err)
    }
}

/// An error answered by the framework rather than a handler (an unknown path, a method the path does not take, a
/// query string that does not parse, a body that is too large…) is plain text; it gets the one JSON shape too, with a
/// code from its status, keeping its message (see [`crate::edge`]).
pub async fn uniform(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut err = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            err.headers_mut().insert(name.clone(), value.clone());
        }
    }
    err
}
