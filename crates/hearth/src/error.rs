//! The one error type every request path returns, and its mapping to Matrix errors.
//!
//! A client always gets `{"errcode": …, "error": …}` with the spec's status code. Faults
//! of our own (storage, bugs) are logged with the request's id and answered with a bare
//! 500 `M_UNKNOWN`; their details stay in the log.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A refusal the client should understand.
    #[error("{errcode}: {message}")]
    Matrix { status: StatusCode, errcode: &'static str, message: String, extra: Map<String, Value> },
    /// User-interactive authentication is (still) needed: 401 with the flows.
    #[error("user-interactive authentication required")]
    Uiaa(Value),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn matrix(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Error::Matrix { status, errcode, message: message.into(), extra: Map::new() }
    }

    /// Another server's client error, passed on to the client with its status and errcode
    /// (as Synapse passes on a failed `make_join`). An errcode that is not a plain
    /// `UPPER_CASE` code of at most 64 bytes becomes `M_UNKNOWN`.
    pub fn passed_through(status: StatusCode, errcode: &str, message: impl Into<String>) -> Self {
        let plain = !errcode.is_empty()
            && errcode.len() <= 64
            && errcode.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        let shown = if plain { errcode } else { "M_UNKNOWN" };
        Error::matrix(status, "M_UNKNOWN", message).with_field("errcode", Value::String(shown.to_owned()))
    }

    /// The same error again, for each of several waiters on one piece of work (storage
    /// and internal errors keep their words).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Matrix { status, errcode, message, extra } => {
                Error::Matrix { status: *status, errcode, message: message.clone(), extra: extra.clone() }
            }
            Error::Uiaa(v) => Error::Uiaa(v.clone()),
            Error::Store(e) => Error::Internal(format!("storage: {e}")),
            Error::Internal(s) => Error::Internal(s.clone()),
        }
    }

    /// The errcode another server gave, when this error passes one on.
    pub fn remote_errcode(&self) -> Option<&str> {
        match self {
            Error::Matrix { extra, .. } => extra.get("errcode").and_then(Value::as_str),
            _ => None,
        }
    }

    /// The HTTP status a client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Matrix { status, .. } => *status,
            Error::Uiaa(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    pub fn not_json(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }

    pub fn unrecognized(status: StatusCode, message: impl Into<String>) -> Self {
        Self::matrix(status, "M_UNRECOGNIZED", message)
    }

    pub fn missing_token() -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "Missing access token")
    }

    pub fn unknown_token() -> Self {
        let mut extra = Map::new();
        extra.insert("soft_logout".into(), Value::Bool(false));
        Error::Matrix {
            status: StatusCode::UNAUTHORIZED,
            errcode: "M_UNKNOWN_TOKEN",
            message: "Unknown or expired access token".into(),
            extra,
        }
    }

    /// A federation request whose signature cannot be accepted.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
    }

    /// Another server could not be reached or gave no usable answer.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// The errcode a client sees (used by logs and tests).
    /// Adds a field to a Matrix error's body (e.g. `room_version` of
    /// `M_INCOMPATIBLE_ROOM_VERSION`); other errors are left as they are.
    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        if let Error::Matrix { extra, .. } = &mut self {
            extra.insert(key.to_owned(), value);
        }
        self
    }

    pub fn errcode(&self) -> &'static str {
        match self {
            Error::Matrix { errcode, .. } => errcode,
            Error::Uiaa(_) => "M_FORBIDDEN",
            Error::Store(_) | Error::Internal(_) => "M_UNKNOWN",
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = (status, bytes).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix { status, errcode, message, extra } => {
                let mut body = extra;
                // An error passed through from another server keeps that server's errcode
                // ([`Error::passed_through`]).
                body.entry("errcode").or_insert_with(|| Value::String(errcode.into()));
                body.insert("error".into(), Value::String(message));
                json_response(status, &Value::Object(body))
            }
            Error::Uiaa(body) => json_response(StatusCode::UNAUTHORIZED, &body),
            Error::Store(e) => {
                tracing::error!(error = %e, "storage failure while serving a request");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}),
                )
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal failure while serving a request");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}),
                )
            }
        }
    }
}
