//! The API's error type and its one mapping to HTTP: the OpenAI error shape
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

/// An error as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed or invalid input.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// Offending parameter.
        param: Option<String>,
    },
    /// 401: missing or wrong credentials.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 503: the journal cannot take or serve requests now.
    #[error("the activity journal is unavailable")]
    Unavailable,
    /// 500: something broke inside; details go to the log, not the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming a parameter.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }
}

impl From<isnad_journal::Error> for ApiError {
    fn from(e: isnad_journal::Error) -> Self {
        use isnad_journal::Error as J;
        match e {
            J::Invalid(m) => Self::BadRequest {
                message: m,
                param: None,
            },
            J::Proof(p) => Self::BadRequest {
                message: p.to_string(),
                param: None,
            },
            J::NotFound(m) => Self::NotFound(m),
            J::Closed => Self::Unavailable,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code) = match &self {
            Self::BadRequest { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "journal_unavailable",
            ),
            Self::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal_error",
                )
            }
        };
        let param = match &self {
            Self::BadRequest { param, .. } => param.clone(),
            _ => None,
        };
        let body = json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } });
        (status, Json(body)).into_response()
    }
}
