//! One attempt at the upstream: the request sent, the answer read within
//! the attempt's timeout, and judged: a page, a free failure (retried or
//! not), or an outcome the upstream may have acted on; and what it says of
//! the key's health.

// Network timing is real time (see the parent module).
#![allow(clippy::disallowed_methods)]

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Health, Upstream, UpstreamCall, UpstreamError, UpstreamKey, UpstreamReply};
use crate::error::GatewayError;
use crate::scrub::{Known, Scrubber};

/// Largest upstream body viewgate will read.
const MAX_UPSTREAM_BODY: usize = 8 * 1024 * 1024;

#[derive(Deserialize)]
struct Envelope<'a> {
    success: bool,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    error: Option<ErrorBody>,
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    credits_consumed: Option<&'a RawValue>,
}

/// `metadata.credits_consumed` as a whole number of credits: a fraction is
/// rounded up and anything past `u64::MAX` saturates (an absurd charge is
/// recorded, never wrapped or dropped). `None` when it is missing or not a
/// number: the caller then counts what it held.
fn reported_credits(metadata: Option<Metadata<'_>>) -> Option<u64> {
    let raw = metadata?.credits_consumed?;
    let text = raw.get().trim();
    // The largest charge any ledger can store (SQLite integers are i64):
    // clamped here, so the ledger, the logs and the metrics agree on it.
    const MOST: u64 = i64::MAX as u64;
    if let Ok(n) = text.parse::<u64>() {
        return Some(n.min(MOST));
    }
    let n: f64 = serde_json::from_str(text).ok()?;
    if n.is_nan() {
        return None;
    }
    // `as` saturates: negatives become 0, huge values u64::MAX.
    Some((n.ceil() as u64).min(MOST))
}

/// What one attempt produced.
pub(super) enum Attempt {
    Done(Result<UpstreamReply, UpstreamError>),
    /// A free failure worth retrying, with the upstream's `Retry-After` if it sent one.
    Retry(GatewayError, Option<Duration>),
}

// Named once: a name given as text is parsed, and copied, on every request.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Upstream {
    pub(super) async fn attempt(
        &self,
        call: &UpstreamCall,
        key: &UpstreamKey,
        started: Instant,
        give_up: Instant,
    ) -> (Attempt, Health) {
        use Health::{AccountFailed, ConnectionFailed, Healthy};
        let uri = format!("{}{}", self.base, call.path);
        let method = if call.get { Method::GET } else { Method::POST };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                header::USER_AGENT,
                concat!("viewgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(X_API_KEY, key.header.clone())
            .header(X_REQUEST_ID, call.request_id.clone());
        if !call.get {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = match request.body(Full::new(call.body.clone())) {
            Ok(r) => r,
            Err(e) => {
                let error = GatewayError::UpstreamUnavailable {
                    detail: format!("cannot build the upstream request: {e}"),
                };
                // viewgate's own fault: nothing learned about the upstream.
                return (
                    Attempt::Done(Err(UpstreamError::Free(error))),
                    Health::Inconclusive,
                );
            }
        };
        // Both waits end at `give_up`: no clock is read to arm them.
        let give_up_at = tokio::time::Instant::from_std(give_up);
        // Until the response head arrives, a failure is free only if it is a
        // connect error: then not a byte of the request left viewgate.
        // (Requests on a pooled connection the upstream had closed are
        // re-sent by the client itself only when nothing was written.)
        // Until then every failure is the connection's, whatever the account.
        let response =
            match tokio::time::timeout_at(give_up_at, self.client().request(request)).await {
                Err(_) => {
                    return (
                        unknown(true, "no answer within upstream.timeout_ms"),
                        ConnectionFailed,
                    );
                }
                Ok(Err(e)) if e.is_connect() => {
                    let error = GatewayError::UpstreamUnavailable {
                        detail: error_chain(&e),
                    };
                    return (Attempt::Retry(error, None), ConnectionFailed);
                }
                Ok(Err(e)) => return (unknown(false, &error_chain(&e)), ConnectionFailed),
                Ok(Ok(response)) => response,
            };
        let (parts, body) = response.into_parts();
        let collect = Limited::new(body, MAX_UPSTREAM_BODY).collect();
        let body = match tokio::time::timeout_at(give_up_at, collect).await {
            Err(_) => {
                let detail = "the body did not arrive within upstream.timeout_ms";
                return (unknown(true, detail), ConnectionFailed);
            }
            // A whole answer, too big for this call: the account's.
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                let detail = format!("the upstream answered a body over {MAX_UPSTREAM_BODY} bytes");
                return (unknown(false, &detail), AccountFailed);
            }
            Ok(Err(e)) => {
                let detail = format!("the body was cut short: {}", error_chain(&*e));
                return (unknown(false, &detail), ConnectionFailed);
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let upstream_ms = started.elapsed().as_millis() as u64;
        let status = parts.status;
        // One UTF-8 check of the whole body: parsed from a `str`, serde
        // checks neither each string again nor the page it hands back raw.
        let envelope = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| serde_json::from_str::<Envelope<'_>>(text).ok());
        let Some(envelope) = envelope else {
            let detail = format!("upstream answered {status} with a body that is not V2 JSON");
            // A 5xx page that is not V2 comes from in front of the upstream
            // (a proxy or load balancer): it says nothing about the account.
            let health = if status.is_server_error() {
                ConnectionFailed
            } else {
                AccountFailed
            };
            let attempt = if call.write {
                // Whatever a proxy or a broken upstream says, the write may have happened.
                unknown(false, &detail)
            } else if status.is_server_error() {
                Attempt::Retry(GatewayError::UpstreamUnavailable { detail }, None)
            } else {
                Attempt::Done(Err(UpstreamError::Free(
                    GatewayError::UpstreamUnavailable { detail },
                )))
            };
            return (attempt, health);
        };
        if envelope.success
            && status.is_success()
            && let Some(data) = envelope.data
        {
            let mut data = body.slice_ref(data.get().as_bytes());
            // A page is shown to tenants and cached for others: it must not
            // carry a key either, whatever the upstream put in it.
            // Runs the tenant sent itself are left (no news to it; see Known).
            if let Cow::Owned(clean) = self.scrubber.json(&data, &Known::new(&call.body)) {
                tracing::warn!(
                    upstream_key = %key.name,
                    "the upstream's answer held a fragment of a key; scrubbed"
                );
                data = Bytes::from(clean);
            }
            let reply = UpstreamReply {
                status,
                data,
                credits: reported_credits(envelope.metadata),
                upstream_ms,
                headers: passed_headers(&parts.headers, &self.scrubber),
            };
            return (Attempt::Done(Ok(reply)), Healthy);
        }
        if status.is_success() {
            // `success: false` (or no `data`) with a 2xx status is not the V2 contract.
            let detail = format!("upstream answered {status} without a V2 success body");
            let attempt = if call.write {
                unknown(false, &detail)
            } else {
                Attempt::Done(Err(UpstreamError::Free(
                    GatewayError::UpstreamUnavailable { detail },
                )))
            };
            return (attempt, AccountFailed);
        }
        let (code, message) = match envelope.error {
            Some(e) => (e.code, e.message),
            None => ("INTERNAL_ERROR".to_string(), "upstream error".to_string()),
        };
        if code == "INVALID_API_KEY" {
            tracing::error!(upstream_key = %key.name, "the upstream rejected this upstream key");
            // The upstream is up and answering: the key is the operator's to fix.
            let attempt = Attempt::Done(Err(UpstreamError::Free(GatewayError::UpstreamAuthFailed)));
            return (attempt, Healthy);
        }
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // A 429 always tells the client when to come back.
            .or((status == StatusCode::TOO_MANY_REQUESTS).then_some(1));
        let error = GatewayError::Upstream {
            status,
            code: self.scrubber.code(&code),
            message: self
                .scrubber
                .message(&message, &Known::new(&call.body))
                .into_owned(),
            retry_after_s: retry_after,
        };
        // A V2 5xx is the upstream failing this call, for this account.
        if status == StatusCode::TOO_MANY_REQUESTS {
            (
                Attempt::Retry(error, retry_after.map(Duration::from_secs)),
                Healthy,
            )
        } else if status.is_server_error() && call.write {
            // V2 errors cost nothing, but a write that met a 5xx may still
            // have been carried out: never send it again.
            let detail = format!("the upstream answered {status} to a write");
            (unknown(false, &detail), AccountFailed)
        } else if status.is_server_error() {
            (
                Attempt::Retry(error, retry_after.map(Duration::from_secs)),
                AccountFailed,
            )
        } else {
            (Attempt::Done(Err(UpstreamError::Free(error))), Healthy)
        }
    }
}

/// An attempt after which the upstream may have acted or billed.
fn unknown(timeout: bool, detail: &str) -> Attempt {
    Attempt::Done(Err(UpstreamError::Unknown {
        timeout,
        detail: detail.to_string(),
    }))
}

/// Upstream response headers a client may act on, passed through (never
/// one whose name or value carries a fragment of a key): `retry-after`, `x-ratelimit-*`,
/// and a JSON content type that has parameters.
fn passed_headers(
    headers: &http::HeaderMap,
    scrubber: &Scrubber,
) -> Vec<(http::HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(name, value)| {
            let name = name.as_str();
            // A JSON content type keeps its parameters (a charset, say).
            let json_with_parameters = name == "content-type"
                && value.to_str().is_ok_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
                        && v.contains(';')
                });
            (name == "retry-after" || name.starts_with("x-ratelimit-") || json_with_parameters)
                && !scrubber.leaks(name.as_bytes())
                && !scrubber.leaks(value.as_bytes())
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credits(metadata: &str) -> Option<u64> {
        let metadata: Metadata<'_> = serde_json::from_str(metadata).unwrap();
        reported_credits(Some(metadata))
    }

    #[test]
    fn headers_named_or_valued_with_a_key_fragment_are_dropped() {
        let scrubber = Scrubber::new([b"lk_Q7vXr9TzpW2mKd73915028".as_slice()]);
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-q7vxr9tz", "1"),
            ("x-ratelimit-reset", "lk_q7vxr9tzpw"),
            ("retry-after", "2"),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let passed: Vec<String> = passed_headers(&headers, &scrubber)
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(passed, ["x-ratelimit-remaining", "retry-after"]);
    }

    #[test]
    fn reported_credits_round_up_and_saturate() {
        assert_eq!(credits(r#"{"credits_consumed":3}"#), Some(3));
        assert_eq!(credits(r#"{"credits_consumed":2.1}"#), Some(3));
        assert_eq!(credits(r#"{"credits_consumed":-4}"#), Some(0));
        assert_eq!(
            credits(r#"{"credits_consumed":1e30}"#),
            Some(i64::MAX as u64)
        );
        assert_eq!(
            credits(r#"{"credits_consumed":99999999999999999999}"#),
            Some(i64::MAX as u64)
        );
        assert_eq!(credits(r#"{"credits_consumed":"3"}"#), None);
        assert_eq!(credits(r#"{}"#), None);
        assert_eq!(reported_credits(None), None);
    }
}
