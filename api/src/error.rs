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
    /// 403: the credentials may not do this.
    #[error("{message}")]
    Forbidden {
        /// Error code.
        code: &'static str,
        /// What is not allowed.
        message: String,
    },
    /// 451: the request's data may not go where serving it would take it.
    #[error("{0}")]
    SovereigntyViolation(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 422: well-formed, but the chosen model cannot do what is asked.
    #[error("{message}")]
    Unprocessable {
        /// What cannot be done.
        message: String,
        /// Offending parameter.
        param: String,
    },
    /// 404: unknown model (the message, from [`isnad_inference::stages::model_not_found`]).
    #[error("{0}")]
    ModelNotFound(String),
    /// 413: body over the limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 429/502/503/504: the upstream failed.
    #[error("{message}")]
    Upstream {
        /// HTTP status for the client.
        status: u16,
        /// Error code.
        code: &'static str,
        /// Message.
        message: String,
    },
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

    /// A 403 for a role that may not call an endpoint.
    pub fn role_forbidden(role: crate::auth::Role, what: &str) -> Self {
        Self::Forbidden {
            code: "permission_denied",
            message: format!("the role `{}` may not {what}", role.as_str()),
        }
    }

    /// The refusal a request-path stage journaled, as the client sees it.
    pub fn from_refusal(r: &isnad_schemas::RequestRejected) -> Self {
        use isnad_inference::stages::{
            MODEL_NOT_FOUND, MODEL_NOT_PERMITTED, SOVEREIGNTY_VIOLATION,
        };
        match (r.status, r.code.as_str()) {
            (451, SOVEREIGNTY_VIOLATION) => Self::SovereigntyViolation(r.message.clone()),
            (404, MODEL_NOT_FOUND) => Self::ModelNotFound(r.message.clone()),
            (403, MODEL_NOT_PERMITTED) => Self::Forbidden {
                code: MODEL_NOT_PERMITTED,
                message: r.message.clone(),
            },
            _ => Self::Internal(format!("{} {}: {}", r.status, r.code, r.message)),
        }
    }

    /// HTTP status and machine-readable code, as journaled in `request.rejected`.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::BadRequest { .. } => (400, "invalid_request"),
            Self::Unauthorized => (401, "invalid_api_key"),
            Self::Forbidden { code, .. } => (403, code),
            Self::SovereigntyViolation(_) => (451, isnad_inference::stages::SOVEREIGNTY_VIOLATION),
            Self::NotFound(_) => (404, "not_found"),
            Self::ModelNotFound(_) => (404, isnad_inference::stages::MODEL_NOT_FOUND),
            Self::Unprocessable { .. } => (422, "unsupported_parameter"),
            Self::PayloadTooLarge(_) => (413, "payload_too_large"),
            Self::Upstream { status, code, .. } => (*status, code),
            Self::Unavailable => (503, "journal_unavailable"),
            Self::Internal(_) => (500, "internal_error"),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest {
            message: r.body_text(),
            param: None,
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
        let (status, code) = self.status_and_code();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let kind = match &self {
            Self::BadRequest { .. }
            | Self::NotFound(_)
            | Self::ModelNotFound(_)
            | Self::PayloadTooLarge(_)
            | Self::Unprocessable { .. } => "invalid_request_error",
            Self::Unauthorized => "authentication_error",
            Self::Forbidden { .. } => "permission_error",
            Self::SovereigntyViolation(_) => "sovereignty_error",
            Self::Upstream { status: 429, .. } => "rate_limit_error",
            Self::Upstream { .. } | Self::Unavailable | Self::Internal(_) => "server_error",
        };
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let param = match &self {
            Self::BadRequest { param, .. } => param.clone(),
            Self::ModelNotFound(_) => Some("model".to_owned()),
            Self::Unprocessable { param, .. } => Some(param.clone()),
            _ => None,
        };
        let body = json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } });
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isnad_inference::stages::{MODEL_NOT_FOUND, MODEL_NOT_PERMITTED, SOVEREIGNTY_VIOLATION};

    /// What the router journals as `request.rejected` is what the client gets: same status, same
    /// code, same message.
    #[test]
    fn router_refusals_answer_as_journaled() {
        for (status, code) in [
            (451, SOVEREIGNTY_VIOLATION),
            (403, MODEL_NOT_PERMITTED),
            (404, MODEL_NOT_FOUND),
        ] {
            let refusal = isnad_schemas::RequestRejected {
                endpoint: "/v1/chat/completions".into(),
                status,
                code: code.into(),
                message: format!("refused with {code}"),
            };
            let err = ApiError::from_refusal(&refusal);
            assert_eq!(err.status_and_code(), (status, code));
            assert_eq!(err.to_string(), refusal.message);
        }
    }
}
