//! The V2 response envelope and error codes, as upstream writes them.
//!
//! Success: `{"success": true, "data", "metadata": {action, account_id,
//! credits_consumed, timestamp}}`. Error: `{"success": false, "error": {code,
//! message}, "metadata": {action, credits_consumed: 0, timestamp}}`. Errors
//! never cost credits. Every answer is built here so the shape has one owner.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

pub(crate) use super::body::SimBody;

/// The error codes the simulator answers with: the V2 ones plus routing
/// errors for paths and methods that do not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    InvalidApiKey,
    InvalidAccount,
    AccountInactive,
    InvalidAction,
    InvalidParams,
    RateLimited,
    InternalError,
    NotFound,
    MethodNotAllowed,
}

impl ErrorCode {
    /// Every code, in a fixed order; `index` is the position in this list.
    pub(crate) const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidApiKey,
        ErrorCode::InvalidAccount,
        ErrorCode::AccountInactive,
        ErrorCode::InvalidAction,
        ErrorCode::InvalidParams,
        ErrorCode::RateLimited,
        ErrorCode::InternalError,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The string used in the body's `error.code`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidApiKey => "INVALID_API_KEY",
            ErrorCode::InvalidAccount => "INVALID_ACCOUNT",
            ErrorCode::AccountInactive => "ACCOUNT_INACTIVE",
            ErrorCode::InvalidAction => "INVALID_ACTION",
            ErrorCode::InvalidParams => "INVALID_PARAMS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            // V2 has no 401: a missing or bad key is a 403.
            ErrorCode::InvalidApiKey | ErrorCode::AccountInactive => StatusCode::FORBIDDEN,
            ErrorCode::InvalidAccount | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::InvalidAction | ErrorCode::InvalidParams => StatusCode::BAD_REQUEST,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// An error answer waiting to be written: code, message and, for 429, the
/// `Retry-After` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SimError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_s: Option<u32>,
}

impl SimError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SimError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub(crate) fn rate_limited(retry_after_s: u32) -> Self {
        SimError {
            code: ErrorCode::RateLimited,
            message: "Rate limit exceeded, retry later".to_owned(),
            // A zero would invite an immediate retry storm.
            retry_after_s: Some(retry_after_s.max(1)),
        }
    }
}

/// Now, as upstream prints it: RFC 3339 UTC, whole seconds, `Z`.
pub(crate) fn timestamp() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

#[derive(Serialize)]
struct SuccessEnvelope<'a, T> {
    success: bool,
    data: T,
    metadata: SuccessMetadata<'a>,
}

#[derive(Serialize)]
struct SuccessMetadata<'a> {
    action: &'a str,
    account_id: Option<&'a str>,
    credits_consumed: u64,
    timestamp: String,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    success: bool,
    error: ErrorBody<'a>,
    metadata: ErrorMetadata<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorMetadata<'a> {
    action: Option<&'a str>,
    credits_consumed: u64,
    timestamp: String,
}

/// The bytes of a success envelope around `data`, to be sent as a 200
/// (possibly spoiled by a fault first).
pub(crate) fn success_body<T: Serialize>(
    action: &str,
    account_id: Option<&str>,
    credits_consumed: u64,
    data: T,
) -> Bytes {
    let envelope = SuccessEnvelope {
        success: true,
        data,
        metadata: SuccessMetadata {
            action,
            account_id,
            credits_consumed,
            timestamp: timestamp(),
        },
    };
    json_bytes(&envelope).unwrap_or_else(|| Bytes::from_static(SERIALISATION_FAILED))
}

/// A 200 JSON answer with these bytes.
pub(crate) fn ok_json(body: Bytes) -> Response<SimBody> {
    with_body(StatusCode::OK, "application/json", body)
}

/// An error envelope with the code's status (and `Retry-After` for 429).
pub(crate) fn error(err: &SimError, action: Option<&str>) -> Response<SimBody> {
    let mut response = error_as(err.code.status(), err.code.as_str(), &err.message, action);
    if let Some(seconds) = err.retry_after_s {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An error envelope with any status, code and message: the V2 codes go
/// through [`error`]; this is for answers a fault makes up.
pub(crate) fn error_as(
    status: StatusCode,
    code: &str,
    message: &str,
    action: Option<&str>,
) -> Response<SimBody> {
    let envelope = ErrorEnvelope {
        success: false,
        error: ErrorBody { code, message },
        metadata: ErrorMetadata {
            action,
            credits_consumed: 0,
            timestamp: timestamp(),
        },
    };
    json(status, &envelope)
}

/// What is answered in the unlikely case one of our own types fails to
/// serialise.
const SERIALISATION_FAILED: &[u8] = br#"{"success":false,"error":{"code":"INTERNAL_ERROR","message":"serialisation failed"},"metadata":{"action":null,"credits_consumed":0}}"#;

fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Option<Bytes> {
    serde_json::to_vec(value).ok().map(Bytes::from)
}

/// Any serialisable value as a JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<SimBody> {
    match json_bytes(value) {
        Some(body) => with_body(status, "application/json", body),
        // Our own types always serialise; answer rather than panic if not.
        None => with_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            Bytes::from_static(SERIALISATION_FAILED),
        ),
    }
}

/// A response with a fixed content type.
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<SimBody> {
    let mut response = Response::new(SimBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An empty 204, for control endpoints.
pub(crate) fn no_content() -> Response<SimBody> {
    let mut response = Response::new(SimBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_indexed_in_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
        }
    }

    #[test]
    fn timestamp_is_whole_seconds_utc() {
        let ts = timestamp();
        // e.g. 2026-04-26T10:35:00Z
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && !ts.contains('.'), "{ts}");
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let response = error(&SimError::rate_limited(0), Some("get_viewers"));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }
}
