//! One error type for the whole request path, and the one place it becomes a response.
//!
//! Layers fail with [`GatewayError`]; the rescue layer calls
//! [`GatewayError::to_response`]. `code()` is the stable string used in the
//! body, the log line and metrics. Internal details (socket errors, parse
//! errors of upstream bodies) are logged, never sent to the client.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use jiff::Timestamp;

use crate::clock::rfc3339;
use crate::response::{Body, json_response};

/// Everything that can stop a request, grouped by who caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    // ---- the client -------------------------------------------------------
    /// No `x-api-key`, or one that matches no tenant.
    #[error("missing or invalid API key")]
    InvalidApiKey,
    /// The body is not a valid call.
    #[error("{0}")]
    InvalidParams(String),
    /// The body did not arrive in full within `server.body_timeout_ms`.
    #[error("the request body did not arrive within {after_ms} ms")]
    RequestTimeout {
        /// The timeout in force.
        after_ms: u64,
    },
    /// The body is larger than `server.max_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The content type is not JSON.
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The action has no price rule (not built in, not in `actions:`), or
    /// is sent to another endpoint than its own.
    #[error("{0}")]
    InvalidAction(String),
    /// The `Idempotency-Key` was used before for a different request.
    #[error(
        "this Idempotency-Key was used for a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// The `Idempotency-Key`'s first request is still being answered.
    #[error("a request with this Idempotency-Key is still in flight; retry after it is answered")]
    IdempotencyKeyInUse,
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route takes, for the `allow` header (RFC 9110 §15.5.6).
        allow: &'static str,
    },

    // ---- the tenant's policy ---------------------------------------------
    /// The account is not on the tenant's list (or does not exist: never said which).
    #[error("account not found")]
    InvalidAccount,
    /// The action is not on the tenant's list.
    #[error("action not allowed for this key")]
    ActionNotAllowed,
    /// An endpoint only the gateway's operator uses (webhooks).
    #[error("{0}")]
    OperatorOnly(&'static str),
    /// The tenant's rate limit is exhausted.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited {
        /// Whole seconds, at least 1.
        retry_after_s: u64,
    },
    /// The tenant already has `tenants[].max_in_flight` requests being
    /// answered: its share of the gateway's slots is taken.
    #[error(
        "too many requests in flight for this key (at most {limit} at once); retry after {retry_after_s} s"
    )]
    TooManyInFlight {
        /// The tenant's share.
        limit: usize,
        /// Whole seconds, at least 1.
        retry_after_s: u64,
    },
    /// The tenant's remaining budget cannot cover the estimate.
    #[error("insufficient credits: this request needs {needed}, {remaining} remaining this period")]
    InsufficientCredits {
        /// What the request would reserve.
        needed: u64,
        /// What is left.
        remaining: u64,
    },

    /// The request's price bound is above the client's own `x-max-credits`.
    #[error("this request may cost up to {bound} credits, more than x-max-credits {cap}")]
    PriceAboveCap {
        /// The action's price bound for these params.
        bound: u64,
        /// The client's cap.
        cap: u64,
    },

    // ---- the upstream -----------------------------------------------------
    /// Could not connect, the connection broke, or the answer was not the V2 format.
    #[error("upstream unavailable")]
    UpstreamUnavailable {
        /// For the log only.
        detail: String,
    },
    /// The upstream rejected viewgate's own key.
    #[error("upstream rejected the gateway's credentials")]
    UpstreamAuthFailed,
    /// The upstream did not answer within `upstream.timeout_ms`.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream key's pace (the plan's rate) would make this request
    /// wait longer than `upstream.max_pace_wait_ms`.
    #[error("the upstream's rate for this key is used up; retry after {retry_after_s} s")]
    UpstreamPaced {
        /// Whole seconds, at least 1.
        retry_after_s: u64,
    },
    /// A circuit breaker is open: the upstream kept failing, for the whole
    /// key or for the account the call names.
    #[error("{}", circuit_open_message(*.retry_after_s, *.account))]
    UpstreamCircuitOpen {
        /// When the breaker lets a probe through.
        retry_after_s: u64,
        /// Whether it is the account's breaker (else the key's).
        account: bool,
    },
    /// The request may have reached the upstream, and then the exchange
    /// failed (timeout, reset, a cut-short or oversized body, a write's 5xx):
    /// whether the upstream acted or billed is unknown, so it is never sent
    /// again and its reservation is kept as spend.
    #[error("{}", outcome_unknown_message(*.timeout, *.credits))]
    OutcomeUnknown {
        /// Whether the upstream timed out (504) rather than failed (502).
        timeout: bool,
        /// Credits kept as spent for it.
        credits: u64,
        /// For the log only.
        detail: String,
    },
    /// The first request with this `Idempotency-Key` was a write cut off by
    /// a crash of the gateway while it was being sent: it is never sent again.
    #[error(
        "the first request with this Idempotency-Key was interrupted by a gateway restart while it was being sent; its outcome is unknown, so it is not sent again"
    )]
    IdempotencyOrphaned,
    /// The request's deadline (`server.request_timeout_ms`) passed while its
    /// upstream call was still running: that call goes on, so what it does
    /// upstream is not known yet.
    #[error(
        "the request's deadline ({after_ms} ms) passed while its upstream call was still running: \
         its outcome is unknown (it may still act and be billed; a charge is logged when it settles), \
         so retry a write only with its Idempotency-Key"
    )]
    DeadlinePassedInFlight {
        /// The deadline, in milliseconds.
        after_ms: u64,
    },
    /// The request's deadline passed while the upstream call it waited for,
    /// another request's for the same page (coalesced), was out.
    #[error(
        "the request's deadline ({after_ms} ms) passed while the upstream call it was waiting for \
         (another request's, for the same page) had not answered; this request was not charged, \
         and that call goes on: its page is cached when it comes"
    )]
    DeadlinePassedWaiting {
        /// The deadline, in milliseconds.
        after_ms: u64,
    },
    /// Any other V2 error, passed through.
    #[error("{message}")]
    Upstream {
        /// The upstream's status.
        status: StatusCode,
        /// The upstream's code.
        code: String,
        /// The upstream's message (already scrubbed of keys).
        message: String,
        /// The upstream's `Retry-After`, if any.
        retry_after_s: Option<u64>,
    },

    // ---- viewgate itself --------------------------------------------------
    /// The ledger is unreachable, or viewgate is shutting down or overloaded.
    #[error("service unavailable")]
    ServiceUnavailable {
        /// For the log only.
        detail: String,
    },
}

impl GatewayError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidApiKey => StatusCode::FORBIDDEN,
            InvalidParams(_) | InvalidAction(_) => StatusCode::BAD_REQUEST,
            RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            IdempotencyKeyInUse => StatusCode::CONFLICT,
            PriceAboveCap { .. } => StatusCode::PAYMENT_REQUIRED,
            OutcomeUnknown { timeout: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            OutcomeUnknown { timeout: false, .. } | IdempotencyOrphaned => StatusCode::BAD_GATEWAY,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            InvalidAccount => StatusCode::NOT_FOUND,
            ActionNotAllowed | OperatorOnly(_) => StatusCode::FORBIDDEN,
            RateLimited { .. } | UpstreamPaced { .. } | TooManyInFlight { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            UpstreamUnavailable { .. } | UpstreamAuthFailed => StatusCode::BAD_GATEWAY,
            UpstreamTimeout | DeadlinePassedInFlight { .. } | DeadlinePassedWaiting { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamCircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Upstream { status, .. } => *status,
            ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code of design.md's error table.
    pub fn code(&self) -> &str {
        use GatewayError::*;
        match self {
            InvalidApiKey => "INVALID_API_KEY",
            InvalidParams(_) => "INVALID_PARAMS",
            // Not in design.md's table (it predates the body timeout): a
            // stable code of its own, documented in the README and openapi.yaml.
            RequestTimeout { .. } => "REQUEST_TIMEOUT",
            InvalidAction(_) => "INVALID_ACTION",
            IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
            PriceAboveCap { .. } => "INSUFFICIENT_CREDITS",
            OutcomeUnknown { timeout: true, .. } => "UPSTREAM_TIMEOUT",
            OutcomeUnknown { timeout: false, .. } | IdempotencyOrphaned => "UPSTREAM_UNAVAILABLE",
            PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            NotFound => "NOT_FOUND",
            MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            InvalidAccount => "INVALID_ACCOUNT",
            ActionNotAllowed | OperatorOnly(_) => "ACTION_NOT_ALLOWED",
            RateLimited { .. } | UpstreamPaced { .. } | TooManyInFlight { .. } => "RATE_LIMITED",
            InsufficientCredits { .. } => "INSUFFICIENT_CREDITS",
            UpstreamUnavailable { .. } => "UPSTREAM_UNAVAILABLE",
            UpstreamAuthFailed => "UPSTREAM_AUTH_FAILED",
            UpstreamTimeout | DeadlinePassedInFlight { .. } | DeadlinePassedWaiting { .. } => {
                "UPSTREAM_TIMEOUT"
            }
            UpstreamCircuitOpen { .. } => "SERVICE_UNAVAILABLE",
            Upstream { code, .. } => code,
            ServiceUnavailable { .. } => "SERVICE_UNAVAILABLE",
        }
    }

    /// Whether the failure belongs to the upstream (a stale page may stand in).
    pub fn is_upstream_failure(&self) -> bool {
        use GatewayError::*;
        match self {
            UpstreamUnavailable { .. }
            | UpstreamTimeout
            | UpstreamAuthFailed
            | OutcomeUnknown { .. }
            | UpstreamCircuitOpen { .. }
            // The key's plan used up: like an open breaker, viewgate's own
            // refusal to call an upstream that would refuse (429) itself.
            | UpstreamPaced { .. } => true,
            Upstream { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Who caused it, for metrics and the access log: the same code (say
    /// `RATE_LIMITED`) can be the tenant's own limit or the upstream's.
    pub fn source(&self) -> ErrorSource {
        use GatewayError::*;
        match self {
            InvalidApiKey
            | InvalidParams(_)
            | InvalidAction(_)
            | IdempotencyKeyReused
            | IdempotencyKeyInUse
            | PayloadTooLarge { .. }
            | UnsupportedMediaType
            | NotFound
            | MethodNotAllowed { .. }
            | PriceAboveCap { .. }
            | RequestTimeout { .. } => ErrorSource::Client,
            InvalidAccount
            | ActionNotAllowed
            | OperatorOnly(_)
            | RateLimited { .. }
            | TooManyInFlight { .. }
            | InsufficientCredits { .. } => ErrorSource::Policy,
            UpstreamUnavailable { .. }
            | UpstreamAuthFailed
            | UpstreamTimeout
            | UpstreamPaced { .. }
            | UpstreamCircuitOpen { .. }
            | OutcomeUnknown { .. }
            | IdempotencyOrphaned
            | DeadlinePassedInFlight { .. }
            | DeadlinePassedWaiting { .. }
            | Upstream { .. } => ErrorSource::Upstream,
            ServiceUnavailable { .. } => ErrorSource::Internal,
        }
    }

    /// Credits this error charged the tenant: 0, except for a call whose
    /// outcome is unknown (its reservation is kept as spend).
    pub fn credits(&self) -> u64 {
        match self {
            GatewayError::OutcomeUnknown { credits, .. } => *credits,
            _ => 0,
        }
    }

    /// The same error as seen by a request that was not charged for it (a
    /// follower of the single-flight whose leader's call failed).
    pub fn without_charge(self) -> Self {
        match self {
            GatewayError::OutcomeUnknown {
                timeout, detail, ..
            } => GatewayError::OutcomeUnknown {
                timeout,
                credits: 0,
                detail,
            },
            other => other,
        }
    }

    /// Whether this answer is final for an `Idempotency-Key`: the upstream
    /// answered (a V2 4xx other than 429), or may have acted (outcome
    /// unknown). Other failures changed nothing, so a retry may run again.
    pub fn is_final(&self) -> bool {
        match self {
            GatewayError::OutcomeUnknown { .. } | GatewayError::IdempotencyOrphaned => true,
            GatewayError::Upstream { status, .. } => {
                status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Seconds a client should wait, for the `retry-after` header.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after_s }
            | GatewayError::UpstreamPaced { retry_after_s }
            | GatewayError::TooManyInFlight { retry_after_s, .. }
            | GatewayError::UpstreamCircuitOpen { retry_after_s, .. } => Some(*retry_after_s),
            GatewayError::Upstream { retry_after_s, .. } => *retry_after_s,
            GatewayError::IdempotencyKeyInUse => Some(1),
            _ => None,
        }
    }

    /// The V2 error response: `{"success": false, "error": {...}, "metadata": {...}}`.
    pub fn to_response(&self, action: Option<&str>, now: Timestamp) -> Response<Body> {
        let mut response = json_response(self.status(), self.body(action, now));
        if let Some(secs) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let GatewayError::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let GatewayError::RequestTimeout { .. } = self {
            // The rest of the body may still come: the connection cannot
            // carry another request (HTTP/2 drops this header; its stream
            // ends with the answer).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl GatewayError {
    /// The V2 error body alone (what an idempotent replay sends again).
    pub fn body(&self, action: Option<&str>, now: Timestamp) -> Bytes {
        let body = ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
            metadata: ErrorMetadata {
                action,
                credits_consumed: self.credits(),
                timestamp: rfc3339(now),
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

fn circuit_open_message(retry_after_s: u64, account: bool) -> String {
    let whom = if account {
        "for this account"
    } else {
        "for every account of its key"
    };
    format!(
        "upstream unavailable (circuit open: it kept failing {whom}); retry after {retry_after_s} s"
    )
}

fn outcome_unknown_message(timeout: bool, credits: u64) -> String {
    let what = if timeout {
        "the upstream did not answer in time after the request was sent"
    } else {
        "the upstream connection failed after the request was sent"
    };
    // Nothing held: a coalesced follower of the call, or a call priced at nothing.
    let (billed, charge) = if credits == 0 {
        ("", "nothing was charged to this request for it".to_string())
    } else {
        (
            " and billed",
            format!("{credits} credits held for it are kept as spent"),
        )
    };
    format!(
        "{what}: its outcome is unknown (it may have acted{billed}), so it was not retried; {charge}"
    )
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself (malformed, unknown route, idempotency misuse).
    Client,
    /// The tenant's own limits and grants.
    Policy,
    /// The upstream, or viewgate's care of it (pace, breaker).
    Upstream,
    /// viewgate itself (ledger, overload, deadline).
    Internal,
}

impl ErrorSource {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Policy => "policy",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Internal => "internal",
        }
    }
}

/// The V2 error envelope, fields in the upstream's order.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: ErrorDetail<'a>,
    metadata: ErrorMetadata<'a>,
}

#[derive(serde::Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

#[derive(serde::Serialize)]
struct ErrorMetadata<'a> {
    action: Option<&'a str>,
    credits_consumed: u64,
    timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_outcome_says_what_this_request_was_charged() {
        let leader = GatewayError::OutcomeUnknown {
            timeout: true,
            credits: 3,
            detail: String::new(),
        };
        assert!(
            leader
                .to_string()
                .contains("3 credits held for it are kept as spent")
        );
        // What a coalesced follower of that call is told.
        let follower = leader.without_charge().to_string();
        assert!(
            follower.contains("nothing was charged to this request"),
            "{follower}"
        );
        assert!(!follower.contains("kept as spent"), "{follower}");
    }

    #[test]
    fn errors_render_in_the_v2_format() {
        let now: Timestamp = "2026-04-26T10:35:00.5Z".parse().unwrap();
        let r =
            GatewayError::RateLimited { retry_after_s: 3 }.to_response(Some("get_viewers"), now);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.into_body();
        let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(body))
            .unwrap()
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "success": false,
                "error": {"code": "RATE_LIMITED", "message": "rate limit exceeded; retry after 3 s"},
                "metadata": {"action": "get_viewers", "credits_consumed": 0, "timestamp": "2026-04-26T10:35:00Z"}
            })
        );
    }

    #[test]
    fn a_late_body_is_408_and_closes_the_connection() {
        let now: Timestamp = "2026-04-26T10:35:00Z".parse().unwrap();
        let e = GatewayError::RequestTimeout { after_ms: 250 };
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT")
        );
        let r = e.to_response(None, now);
        assert_eq!(r.headers()["connection"], "close");
        let share = GatewayError::TooManyInFlight {
            limit: 4,
            retry_after_s: 1,
        };
        let r = share.to_response(None, now);
        assert_eq!(
            (r.status(), share.code()),
            (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
        );
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn internal_details_stay_out_of_the_message() {
        let e = GatewayError::UpstreamUnavailable {
            detail: "connection refused at 10.0.0.1".into(),
        };
        assert_eq!(e.to_string(), "upstream unavailable");
        assert_eq!(e.status(), 502);
    }
}
