//! One authenticated V2 call from its key check to its reply, with the
//! active fault applied in its phase:
//!
//! key accepted -> fault *before* the action (latency, an error, a hang, a
//! reset, garbage, an echoed key: nothing runs, nothing is billed) -> the
//! action's own checks, rate limit, execution and billing -> fault *after*
//! the action (a cut body, an oversized body, a hang, a reset: the work is
//! done and billed, only the reply is spoiled) -> reply.
//!
//! Every endpoint (actions, accounts, login, checkpoint) goes through
//! [`serve`], so every fault behaves the same way on all of them.

use bytes::{BufMut, Bytes, BytesMut};
use http::{Response, StatusCode};
use std::time::Duration;

use super::body::{Dropped, SimBody};
use super::envelope::{self, ErrorCode, SimError};
use super::fault::{Fault, FaultKind, FaultPhase};
use super::handle::{KeyIndex, Shared};

/// What the service answers: a response, or a dropped connection.
pub(crate) type Handled = Result<Response<SimBody>, Dropped>;

/// What the Garbage fault answers: an HTML error page a proxy might serve.
const GARBAGE_BODY: &[u8] =
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>";

/// An authenticated call, as far as faults and error metadata need to know
/// it. Deliberately not `Debug`: it holds the key.
pub(crate) struct Call<'a> {
    /// The key it was authenticated as.
    pub(crate) key: KeyIndex,
    /// The `x-api-key` value, only ever used by the echo-key fault.
    pub(crate) api_key: &'a str,
    /// The action named in error metadata.
    pub(crate) action: Option<&'a str>,
    /// The account the call is for, matched against a fault's account.
    pub(crate) account_id: Option<&'a str>,
}

/// Writes an error answer and counts it.
pub(crate) fn reject(shared: &Shared, err: &SimError, action: Option<&str>) -> Response<SimBody> {
    shared.counters.record_error(err.code);
    envelope::error(err, action)
}

/// Serves `call`: applies the active fault in its phase around `run`, which
/// does the call's checks and work and returns the success body (already
/// billed) or the error to answer.
pub(crate) async fn serve(
    shared: &Shared,
    call: Call<'_>,
    run: impl FnOnce() -> Result<Bytes, SimError>,
) -> Handled {
    shared.counters.record_key_call(call.key);
    if let Some(fault) = shared.fault.take(FaultPhase::BeforeAction, call.account_id)
        && let Some(answer) = before_action(shared, &call, fault).await?
    {
        return Ok(answer);
    }
    let body = match run() {
        Ok(body) => body,
        Err(err) => return Ok(reject(shared, &err, call.action)),
    };
    match shared.fault.take(FaultPhase::AfterAction, call.account_id) {
        Some(fault) => after_action(shared, fault, body).await,
        None => Ok(envelope::ok_json(body)),
    }
}

/// Waits the fault's latency; a shutdown meanwhile drops the connection.
async fn delay(shared: &Shared, fault: &Fault) -> Result<(), Dropped> {
    shared.counters.record_fault();
    if fault.latency_ms == 0 {
        return Ok(());
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(fault.latency_ms)) => Ok(()),
        () = shared.shutdown_requested() => Err(Dropped("simulator shutting down")),
    }
}

/// Applies a fault before the action. `Ok(None)` means carry on normally
/// (latency only); `Err` drops the connection.
async fn before_action(
    shared: &Shared,
    call: &Call<'_>,
    fault: Fault,
) -> Result<Option<Response<SimBody>>, Dropped> {
    delay(shared, &fault).await?;
    match fault.kind {
        FaultKind::InternalError => {
            let err = SimError::new(ErrorCode::InternalError, "An internal error occurred");
            Ok(Some(reject(shared, &err, call.action)))
        }
        FaultKind::RateLimited { retry_after_s } => {
            let err = SimError::rate_limited(retry_after_s);
            Ok(Some(reject(shared, &err, call.action)))
        }
        FaultKind::Hang => {
            shared.shutdown_requested().await;
            Err(Dropped("hung request ended by shutdown"))
        }
        FaultKind::Reset => Err(Dropped("connection reset by injected fault")),
        FaultKind::Garbage => Ok(Some(envelope::with_body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(GARBAGE_BODY),
        ))),
        FaultKind::EchoKey { variant, status } => {
            // The one place the simulator puts a key in an answer, on
            // purpose; it is never logged.
            let echoed = variant.apply(call.api_key);
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = format!("key {echoed} is not allowed here");
            Ok(Some(envelope::error_as(
                status,
                &echoed,
                &message,
                call.action,
            )))
        }
        // Latency only; and kinds of the other phase are never taken here.
        FaultKind::None
        | FaultKind::CutShort
        | FaultKind::Oversized { .. }
        | FaultKind::HangAfterExecute
        | FaultKind::ResetAfterExecute => Ok(None),
    }
}

/// Spoils the reply of a call that ran and was billed.
async fn after_action(shared: &Shared, fault: Fault, body: Bytes) -> Handled {
    delay(shared, &fault).await?;
    match fault.kind {
        FaultKind::CutShort => {
            let mut response = envelope::ok_json(Bytes::new());
            *response.body_mut() = SimBody::cut_short(body);
            Ok(response)
        }
        FaultKind::Oversized { bytes } => Ok(envelope::ok_json(padded(&body, bytes))),
        FaultKind::HangAfterExecute => {
            shared.shutdown_requested().await;
            Err(Dropped("hung reply ended by shutdown"))
        }
        FaultKind::ResetAfterExecute => Err(Dropped("reply dropped by injected fault")),
        // Kinds of the other phase are never taken here.
        _ => Ok(envelope::ok_json(body)),
    }
}

/// `body` (a JSON object) with a top-level `padding` string that makes it
/// longer than `bytes` (capped at [`FaultKind::OVERSIZED_MAX_BYTES`]).
fn padded(body: &[u8], bytes: u64) -> Bytes {
    const OPEN: &[u8] = br#","padding":""#;
    const CLOSE: &[u8] = br#""}"#;
    let wanted = bytes.min(FaultKind::OVERSIZED_MAX_BYTES);
    let wanted = usize::try_from(wanted)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    // Our success bodies are JSON objects: drop the closing brace, add a
    // member, close again.
    let object = body.strip_suffix(b"}").unwrap_or(body);
    let base = object.len() + OPEN.len() + CLOSE.len();
    let padding = wanted.saturating_sub(base);
    let mut out = BytesMut::with_capacity(base + padding);
    out.put_slice(object);
    out.put_slice(OPEN);
    out.put_bytes(b' ', padding);
    out.put_slice(CLOSE);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_keeps_the_body_valid_json_and_makes_it_longer() {
        let body = br#"{"success":true,"data":{"a":1},"metadata":{}}"#;
        for bytes in [0, 10, 1000, 65_536] {
            let out = padded(body, bytes);
            assert!(out.len() as u64 > bytes, "{bytes}: {}", out.len());
            let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(value["success"], true);
            assert_eq!(value["data"]["a"], 1);
            assert!(value["padding"].is_string());
        }
        assert!(padded(body, 1000).len() <= 1001 + body.len());
    }
}
