//! Why the gateway refuses a request: a closed set, so every refusal a client can receive (and
//! every `request.rejected` code in the journal) is listed here once.
//!
//! The HTTP status each gets is noted on its variant but mapped in the `api` crate, the one place
//! that knows HTTP. Failures of a model or upstream that was tried (`upstream_timeout`, …) are
//! not refusals and are not listed.

wire_enum! {
    /// A reason the gateway refuses a request. On the wire (serde, [`as_str`](Self::as_str),
    /// `FromStr`) it is the OpenAI-style `code` of the error body, e.g. `model_not_found`.
    pub enum RefusalCode {
        /// 400: the body is malformed or a parameter is invalid.
        InvalidRequest = "invalid_request",
        /// 401: no API key, or one the gateway does not know.
        InvalidApiKey = "invalid_api_key",
        /// 403: the key's role may not call this endpoint.
        PermissionDenied = "permission_denied",
        /// 403: the key is not accepted from the client's address (its CIDR allowlist).
        AddressNotAllowed = "address_not_allowed",
        /// 403: the key may not use the model asked for.
        ModelNotPermitted = "model_not_permitted",
        /// 404: no model with that id (of the endpoint's kind).
        ModelNotFound = "model_not_found",
        /// 413: the body is over the configured limit.
        PayloadTooLarge = "payload_too_large",
        /// 422: the chosen model cannot honour a parameter (tools, dimensions, …).
        UnsupportedParameter = "unsupported_parameter",
        /// 451: serving the request would take its data outside the boundary.
        SovereigntyViolation = "sovereignty_violation",
        /// 451: the request carries data its team's guardrail policy blocks (`block`).
        PiiDetected = "pii_detected",
        /// 429: the key sent more requests than its rate allows; retrying later helps.
        RateLimitExceeded = "rate_limit_exceeded",
        /// 429: the key's budget is spent; retrying does not help until it is raised or renewed.
        BudgetExceeded = "budget_exceeded",
        /// 503: the model has no room for another request now.
        ModelOverloaded = "model_overloaded",
    }
}

impl RefusalCode {
    /// The OpenAI error `type` that goes with the code in the error body.
    pub const fn error_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::ModelNotFound
            | Self::PayloadTooLarge
            | Self::UnsupportedParameter => "invalid_request_error",
            Self::InvalidApiKey => "authentication_error",
            Self::PermissionDenied | Self::ModelNotPermitted | Self::AddressNotAllowed => {
                "permission_error"
            }
            Self::SovereigntyViolation | Self::PiiDetected => "sovereignty_error",
            Self::RateLimitExceeded => "rate_limit_error",
            // OpenAI's type (and code) for a spent quota; clients that special-case it know not
            // to retry.
            Self::BudgetExceeded => "insufficient_quota",
            Self::ModelOverloaded => "server_error",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The codes clients and the journal already know do not change.
    #[test]
    fn codes_in_use_keep_their_strings() {
        for (code, wire, kind) in [
            (
                RefusalCode::InvalidRequest,
                "invalid_request",
                "invalid_request_error",
            ),
            (
                RefusalCode::InvalidApiKey,
                "invalid_api_key",
                "authentication_error",
            ),
            (
                RefusalCode::PermissionDenied,
                "permission_denied",
                "permission_error",
            ),
            (
                RefusalCode::ModelNotPermitted,
                "model_not_permitted",
                "permission_error",
            ),
            (
                RefusalCode::ModelNotFound,
                "model_not_found",
                "invalid_request_error",
            ),
            (
                RefusalCode::PayloadTooLarge,
                "payload_too_large",
                "invalid_request_error",
            ),
            (
                RefusalCode::UnsupportedParameter,
                "unsupported_parameter",
                "invalid_request_error",
            ),
            (
                RefusalCode::SovereigntyViolation,
                "sovereignty_violation",
                "sovereignty_error",
            ),
            (
                RefusalCode::ModelOverloaded,
                "model_overloaded",
                "server_error",
            ),
        ] {
            assert_eq!((code.as_str(), code.error_type()), (wire, kind));
        }
    }

    #[test]
    fn serde_and_from_str_agree_with_as_str() {
        for &code in RefusalCode::ALL {
            // The wire string is the variant's name in snake_case, as a serde derive would give.
            let mut snake = String::new();
            for (i, c) in format!("{code:?}").chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(snake, code.as_str());
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()));
            assert_eq!(serde_json::from_value::<RefusalCode>(json).unwrap(), code);
            assert_eq!(code.as_str().parse::<RefusalCode>().unwrap(), code);
        }
        let err = "teapot".parse::<RefusalCode>().unwrap_err();
        assert!(
            err.message.contains("invalid_request, invalid_api_key"),
            "{err}"
        );
    }
}
