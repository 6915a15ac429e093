//! Errors: [`ServerError`] for starting and reloading the server, [`ApiError`]
//! for HTTP answers. Every API error kind maps to its status code and `type`
//! string in one table ([`ErrorKind::status`]), so handlers never pick codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use casetag_engine::EngineError;
use serde::Serialize;

/// Failures of starting, running or reloading the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address is malformed or cannot be bound.
    #[error("address '{addr}': {message}")]
    Address { addr: String, message: String },
    /// Flags that could never serve a request.
    #[error("{0}")]
    Config(String),
    /// A model bundle could not be resolved or loaded.
    /// (The engine's message already names the bundle directory.)
    #[error("{0}")]
    Model(#[from] EngineError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// Bad input or usage (bad address, bad bundle, bad flags) as opposed to
    /// an internal failure; the CLI exits 2 for these.
    pub fn is_input(&self) -> bool {
        match self {
            ServerError::Address { .. } | ServerError::Config(_) => true,
            ServerError::Model(e) => e.is_input(),
            ServerError::Io(_) | ServerError::Internal(_) => false,
        }
    }
}

/// Longest message [`log_safe`] lets through, in characters.
const MAX_MESSAGE_CHARS: usize = 400;

/// A message made safe for a log line or an error body: control and
/// text-reordering characters escaped ([`casetag_core::printable`]), so one
/// message stays one line and cannot restyle a terminal, and the length
/// capped.
pub fn log_safe(s: &str) -> String {
    let p = casetag_core::printable(s);
    match p.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &p[..cut]),
        None => p.into_owned(),
    }
}

/// A panic message with every quoted span (`` `...` `` or `"..."`) masked:
/// the standard library quotes the values it panics on (a string sliced
/// at a bad index, the two sides of a failed assertion), and on a model
/// thread those values are case text.
pub fn mask_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut open: Option<(char, usize)> = None;
    for c in s.chars() {
        match open {
            Some((q, n)) if c == q => {
                out.push_str(&format!("<{n} chars>"));
                out.push(q);
                open = None;
            }
            Some((q, n)) => open = Some((q, n + 1)),
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    open = Some((c, 0));
                }
            }
        }
    }
    if let Some((_, n)) = open {
        out.push_str(&format!("<{n} chars>"));
    }
    log_safe(&out)
}

/// What went wrong with a request, independent of how it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON.
    MalformedJson,
    /// The body is over `--max-body-bytes`.
    PayloadTooLarge,
    /// The body did not arrive within `--body-timeout-ms`.
    RequestTimeout,
    /// Every connection slot is taken (`--max-connections`).
    TooManyConnections,
    /// The JSON is well-formed but a field is missing or invalid.
    InvalidField,
    /// The queue is full.
    Overloaded,
    /// No model is loaded (yet).
    NotReady,
    /// The server is shutting down.
    ShuttingDown,
    /// The primary model missed the deadline and there is no fallback.
    DeadlineExceeded,
    /// Missing or wrong admin bearer token.
    Unauthorized,
    /// The admin API is off (`CASETAG_ADMIN_TOKEN` unset).
    AdminDisabled,
    /// A reload found a bad bundle (the old model keeps serving).
    BadBundle,
    NotFound,
    MethodNotAllowed,
    /// The model failed or panicked on this request, or another server fault.
    Internal,
}

impl ErrorKind {
    /// The one table from error kinds to HTTP status codes and `type` strings.
    pub fn status(self) -> (StatusCode, &'static str) {
        use ErrorKind::*;
        match self {
            MalformedJson => (StatusCode::BAD_REQUEST, "malformed_json"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            InvalidField => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "deadline_exceeded"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            BadBundle => (StatusCode::UNPROCESSABLE_ENTITY, "bad_bundle"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// An API error: `{"error": {"type": "...", "message": "..."}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An error whose message is made safe to show and log ([`log_safe`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: log_safe(&message.into()),
        }
    }

    /// A 422 naming the field at fault, e.g. `cases[2].text: must be a string`.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidField, format!("{field}: {problem}"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The JSON body `{"error": {"type", "message"}}`.
    pub(crate) fn json_body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorBody {
            error: ErrorDetail {
                kind: self.kind.status().1,
                message: &self.message,
            },
        })
        .unwrap_or_else(|_| br#"{"error":{"type":"internal","message":""}}"#.to_vec())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.status().1, self.message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.kind.status();
        let mut resp = (status, self.json_body()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self.kind {
            // Overload clears quickly: a short hint keeps retries from stampeding.
            ErrorKind::Overloaded => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ErrorKind::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is never read: the connection cannot be
            // reused (RFC 9110 15.5.9, 15.5.14).
            ErrorKind::PayloadTooLarge | ErrorKind::RequestTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_the_contract_statuses() {
        assert_eq!(ErrorKind::MalformedJson.status().0.as_u16(), 400);
        assert_eq!(ErrorKind::PayloadTooLarge.status().0.as_u16(), 413);
        assert_eq!(ErrorKind::InvalidField.status().0.as_u16(), 422);
        assert_eq!(ErrorKind::Overloaded.status().0.as_u16(), 429);
        assert_eq!(ErrorKind::NotReady.status().0.as_u16(), 503);
    }

    #[test]
    fn messages_carry_no_control_characters_and_panics_no_values() {
        let e = ApiError::new(ErrorKind::Internal, "bad\u{1b}[31m red\nline\0");
        assert!(!e.message.chars().any(char::is_control), "{}", e.message);
        assert!(
            e.message.contains("\\u{1b}[31m") && e.message.contains("\\u{a}line"),
            "{}",
            e.message
        );
        let long = "x".repeat(10_000);
        assert!(log_safe(&long).chars().count() <= MAX_MESSAGE_CHARS + 1);
        let p = "byte index 3 is not a char boundary; it is inside 'é' of `my secret order 42`";
        let m = mask_quoted(p);
        assert!(!m.contains("secret"), "{m}");
        assert!(m.contains("`<18 chars>`"), "{m}");
        let m = mask_quoted("assertion failed: left: \"card 4111\" right: \"x\"");
        assert!(!m.contains("4111"), "{m}");
        assert_eq!(
            mask_quoted("unterminated `secret"),
            "unterminated `<6 chars>"
        );
    }

    #[test]
    fn input_errors_are_told_apart() {
        let addr = ServerError::Address {
            addr: "x".into(),
            message: "invalid".into(),
        };
        assert!(addr.is_input());
        assert!(!ServerError::Internal("boom".into()).is_input());
        assert!(ServerError::Model(EngineError::Input("bad".into())).is_input());
        assert!(!ServerError::Model(EngineError::Internal("bad".into())).is_input());
    }
}
