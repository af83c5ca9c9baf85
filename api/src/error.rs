//! The API's error type and its one mapping to HTTP: status, the OpenAI error shape
//! `{"error": {"message", "type", "param", "code"}}`, `Retry-After` and `x-should-retry`, and
//! the same body as an SSE error frame. Every status a client can receive is decided in
//! [`ApiError::status`], an exhaustive match with no catch-all arm.

use axum::{
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use isnad_pipeline::policy::Refusal;
use isnad_schemas::{openai::WireError, RefusalCode};
use serde_json::json;

/// An error as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The gateway refuses the request (bad input, credentials, policy): see [`RefusalCode`].
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// No such endpoint or resource (not a model: an unknown model is a refusal).
    #[error("{0}")]
    NotFound(String),
    /// The resource exists already, or is in a state that does not allow the change.
    #[error("{0}")]
    Conflict(String),
    /// The model or upstream that was tried failed.
    #[error("{message}")]
    Upstream {
        /// HTTP status for the client (from the inference stage's outcome).
        status: u16,
        /// Error code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// A rate limit (requests per minute of a key or an address, tokens per minute or day of a
    /// key or a team) is reached.
    #[error("{}", rate_limited_message(.0))]
    RateLimited(isnad_pipeline::access::Limited),
    /// The gateway is at its concurrency limit (load shedding).
    #[error("isnad is at its concurrency limit; retry shortly")]
    Overloaded,
    /// The request took longer than the configured limit to its response headers.
    #[error("the request took too long")]
    Timeout,
    /// The journal cannot take or serve requests now.
    #[error("the activity journal is unavailable")]
    Unavailable,
    /// Something broke inside; details go to the log, not the client.
    #[error("internal error")]
    Internal(String),
}

fn rate_limited_message(l: &isnad_pipeline::access::Limited) -> String {
    let w = &l.window;
    let per = if w.window_s == 60 { "minute" } else { "day" };
    match l.retry_after_ms {
        Some(ms) => format!(
            "rate limit of {} {} per {per} reached for {}; retry in {ms} ms",
            w.limit, w.unit, l.scope
        ),
        None => format!(
            "the request needs up to {} {}, more than the limit of {} per {per} of {}; lower max_tokens",
            l.needed, w.unit, w.limit, l.scope
        ),
    }
}

impl ApiError {
    /// A refusal with a message and no parameter.
    pub fn refuse(code: RefusalCode, message: impl Into<String>) -> Self {
        Self::Refused(Refusal::new(code, message))
    }

    /// A 400 naming a parameter.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self::Refused(Refusal::new(RefusalCode::InvalidRequest, message).param(param))
    }

    /// A 400 for a request whose `X-Request-Id` another request in flight has.
    pub fn request_in_flight(request_id: &str) -> Self {
        Self::bad(
            "x-request-id",
            format!("a request with X-Request-Id {request_id} is in flight"),
        )
    }

    /// A 401: no key, or one the gateway does not know.
    pub fn unauthorized() -> Self {
        Self::refuse(RefusalCode::InvalidApiKey, "invalid or missing API key")
    }

    /// The refusal of a key access control does not accept: 401, or 403 for a client
    /// address outside the key's allowlist.
    pub fn denied(d: isnad_pipeline::access::Denied) -> Self {
        use isnad_pipeline::access::Denied as D;
        let code = match d {
            D::Unknown | D::Revoked | D::Rotated | D::Expired => RefusalCode::InvalidApiKey,
            D::Address => RefusalCode::AddressNotAllowed,
        };
        Self::refuse(code, d.message())
    }

    /// A 429 for a spent budget: which one, what the request needed and what is left.
    pub fn budget_exceeded(e: &isnad_pipeline::access::Exceeded) -> Self {
        let unit = if e.unit == "tokens" {
            "tokens"
        } else {
            "micro-units of cost"
        };
        Self::refuse(
            RefusalCode::BudgetExceeded,
            format!(
                "the budget of {} is spent for this period: the request needs up to {} {unit}, {} are left; it renews at {}",
                e.scope,
                e.needed,
                e.available,
                e.resets_at_us.div_euclid(1_000_000)
            ),
        )
    }

    /// A 403 for a role that may not call an endpoint.
    pub fn role_forbidden(role: isnad_pipeline::access::Role, what: &str) -> Self {
        Self::refuse(
            RefusalCode::PermissionDenied,
            format!("the role `{}` may not {what}", role.as_str()),
        )
    }

    /// The refusal, if this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The HTTP status: the one place that decides it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Refused(r) => match r.code {
                RefusalCode::InvalidRequest => StatusCode::BAD_REQUEST,
                RefusalCode::InvalidApiKey => StatusCode::UNAUTHORIZED,
                RefusalCode::PermissionDenied
                | RefusalCode::ModelNotPermitted
                | RefusalCode::AddressNotAllowed => StatusCode::FORBIDDEN,
                RefusalCode::ModelNotFound => StatusCode::NOT_FOUND,
                RefusalCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                RefusalCode::UnsupportedParameter => StatusCode::UNPROCESSABLE_ENTITY,
                RefusalCode::SovereigntyViolation | RefusalCode::PiiDetected => {
                    StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS
                }
                RefusalCode::RateLimitExceeded | RefusalCode::BudgetExceeded => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                RefusalCode::ModelOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Upstream { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Self::Overloaded | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code, as the body and `request.rejected` carry it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code.as_str(),
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Upstream { code, .. } => code,
            Self::RateLimited(_) => RefusalCode::RateLimitExceeded.as_str(),
            Self::Overloaded => "server_overloaded",
            Self::Timeout => "request_timeout",
            Self::Unavailable => "journal_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.code.error_type(),
            Self::NotFound(_) | Self::Conflict(_) => "invalid_request_error",
            Self::Upstream { status: 429, .. } | Self::RateLimited(_) => "rate_limit_error",
            Self::Upstream { .. }
            | Self::Overloaded
            | Self::Timeout
            | Self::Unavailable
            | Self::Internal(_) => "server_error",
        }
    }

    /// Seconds a client should wait before it retries, where retrying helps.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::RateLimited(l) => l
                .retry_after_ms
                .map(|ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1)),
            Self::Overloaded | Self::Unavailable => Some(1),
            Self::Refused(r) => match r.code {
                RefusalCode::RateLimitExceeded | RefusalCode::ModelOverloaded => Some(1),
                RefusalCode::InvalidRequest
                | RefusalCode::InvalidApiKey
                | RefusalCode::PermissionDenied
                | RefusalCode::ModelNotPermitted
                | RefusalCode::AddressNotAllowed
                | RefusalCode::ModelNotFound
                | RefusalCode::PayloadTooLarge
                | RefusalCode::UnsupportedParameter
                | RefusalCode::SovereigntyViolation
                | RefusalCode::PiiDetected
                | RefusalCode::BudgetExceeded => None,
            },
            Self::NotFound(_)
            | Self::Conflict(_)
            | Self::Upstream { .. }
            | Self::Timeout
            | Self::Internal(_) => None,
        }
    }

    /// Whether an OpenAI SDK should retry it (`x-should-retry`): the SDKs retry 408, 409, 429
    /// and 5xx by default, which is wrong for a spent budget and right for load shedding.
    fn should_retry(&self) -> bool {
        match self {
            Self::Refused(r) => {
                r.code == RefusalCode::RateLimitExceeded || r.code == RefusalCode::ModelOverloaded
            }
            Self::Overloaded | Self::Unavailable | Self::Timeout => true,
            Self::RateLimited(l) => l.retry_after_ms.is_some(),
            Self::Upstream { status, .. } => *status == 429 || *status >= 500,
            Self::NotFound(_) | Self::Conflict(_) | Self::Internal(_) => false,
        }
    }

    /// The parameter at fault, if one is.
    fn param(&self) -> Option<&str> {
        match self {
            Self::Refused(r) => r.param.as_deref(),
            _ => None,
        }
    }

    /// The error body.
    pub fn body(&self) -> serde_json::Value {
        if let Self::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        json!({ "error": {
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
            "code": self.code(),
        }})
    }

    /// The same error as an SSE frame, for a stream whose headers already went out.
    pub fn sse_frame(&self) -> String {
        let mut body = self.body();
        body["error"]["status"] = self.status().as_u16().into();
        format!("data: {body}\n\n")
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        let refusal = Refusal::new(RefusalCode::InvalidRequest, e.message);
        Self::Refused(match e.param {
            Some(p) => refusal.param(p),
            None => refusal,
        })
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::refuse(RefusalCode::InvalidRequest, r.body_text())
    }
}

impl From<isnad_journal::Error> for ApiError {
    fn from(e: isnad_journal::Error) -> Self {
        use isnad_journal::Error as J;
        match e {
            J::Invalid(m) => Self::refuse(RefusalCode::InvalidRequest, m),
            J::Proof(p) => Self::refuse(RefusalCode::InvalidRequest, p.to_string()),
            J::NotFound(m) => Self::NotFound(m),
            J::Closed => Self::Unavailable,
            e @ (J::Io { .. }
            | J::Storage(_)
            | J::Key(_)
            | J::KeyMismatch { .. }
            | J::Corrupt { .. }
            | J::Schema(_)
            | J::ReadOnly) => Self::Internal(e.to_string()),
        }
    }
}

impl From<isnad_pipeline::access::AccessError> for ApiError {
    fn from(e: isnad_pipeline::access::AccessError) -> Self {
        use isnad_pipeline::access::AccessError as A;
        match e {
            A::Invalid { field, reason } => Self::bad(field, format!("{field}: {reason}")),
            A::Forbidden(m) => Self::refuse(RefusalCode::PermissionDenied, m),
            A::NotFound(m) => Self::NotFound(m),
            A::Conflict(m) => Self::Conflict(m),
            A::Journal(j) => j.into(),
            A::Encode(e) => Self::Internal(e.to_string()),
        }
    }
}

impl From<&isnad_inference::Error> for ApiError {
    /// What the client is told when the model that was tried failed.
    fn from(e: &isnad_inference::Error) -> Self {
        use isnad_inference::Error as I;
        let upstream = |status: u16, code: &'static str| Self::Upstream {
            status,
            code,
            message: e.to_string(),
        };
        match e {
            I::Timeout => upstream(504, "upstream_timeout"),
            I::Connect(_) => upstream(503, "upstream_unavailable"),
            I::Status { status: 429, .. } => upstream(429, "upstream_rate_limited"),
            I::Status { .. } | I::Stream(_) => upstream(502, "upstream_error"),
            I::Egress(_) => upstream(502, "egress_refused"),
            // A local model's own checks and capacity: refusals, not upstream failures.
            I::BadRequest(m) => Self::refuse(RefusalCode::InvalidRequest, m.clone()),
            I::Overloaded(m) => Self::refuse(RefusalCode::ModelOverloaded, m.clone()),
            I::Stopped(_) => upstream(503, "model_unavailable"),
            I::Journal(_) => Self::Unavailable,
            I::Config(_) | I::ModelFiles(_) | I::Runtime(_) | I::Internal(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

/// The status and code a failure of the inference stage is answered with, for the
/// `request.rejected` it journals: the same mapping as the answer.
pub fn classify(e: &isnad_inference::Error) -> (u16, &'static str) {
    let err = ApiError::from(e);
    (err.status().as_u16(), err.code())
}

impl From<isnad_pipeline::Error> for ApiError {
    fn from(e: isnad_pipeline::Error) -> Self {
        use isnad_pipeline::Error as P;
        match e {
            P::Journal(j) => j.into(),
            // Another request in flight holds the id (`Bus::attach_new`).
            P::RequestInFlight(id) => Self::request_in_flight(&id),
            e @ (P::RequestStage { .. } | P::Timeout { .. } | P::Closed) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

/// The code and message of an error response, on the response, for layers that journal it.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The error code.
    pub code: &'static str,
    /// What the client was told.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, Json(self.body())).into_response();
        resp.extensions_mut().insert(Refused {
            code: self.code(),
            message: self.to_string(),
        });
        let headers = resp.headers_mut();
        if let Some(s) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Self::RateLimited(l) = &self {
            if let Some(ms) = l.retry_after_ms {
                headers.insert(
                    HeaderName::from_static("retry-after-ms"),
                    HeaderValue::from(ms),
                );
            }
        }
        headers.insert(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static(if self.should_retry() { "true" } else { "false" }),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every refusal code answers with the status its documentation gives, and a spent budget
    /// tells SDKs not to retry while a rate limit does.
    #[test]
    fn each_refusal_has_its_status_and_retry_advice() {
        let expect = [
            (RefusalCode::InvalidRequest, 400, false),
            (RefusalCode::InvalidApiKey, 401, false),
            (RefusalCode::PermissionDenied, 403, false),
            (RefusalCode::AddressNotAllowed, 403, false),
            (RefusalCode::ModelNotPermitted, 403, false),
            (RefusalCode::ModelNotFound, 404, false),
            (RefusalCode::PayloadTooLarge, 413, false),
            (RefusalCode::UnsupportedParameter, 422, false),
            (RefusalCode::SovereigntyViolation, 451, false),
            (RefusalCode::PiiDetected, 451, false),
            (RefusalCode::RateLimitExceeded, 429, true),
            (RefusalCode::BudgetExceeded, 429, false),
            (RefusalCode::ModelOverloaded, 503, true),
        ];
        assert_eq!(expect.len(), RefusalCode::ALL.len());
        for (code, status, retry) in expect {
            let resp = ApiError::refuse(code, "no").into_response();
            assert_eq!(resp.status().as_u16(), status, "{code}");
            assert_eq!(
                resp.headers()["x-should-retry"],
                if retry { "true" } else { "false" },
                "{code}"
            );
            assert_eq!(resp.headers().contains_key("retry-after"), retry, "{code}");
        }
        let shed = ApiError::Overloaded.into_response();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
    }
}
