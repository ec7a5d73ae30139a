//! The simulator's HTTP side: the accept loop (HTTP/1.1 and h2c on one
//! port), routing, the V2 request path in upstream's order of checks, and
//! the `/_sim/` control endpoints.
//!
//! Order of checks on `POST /v2/{category}`, as upstream answers:
//! key -> body -> account owned by the key -> account active -> action known
//! -> params valid -> per-key rate limit -> answer. An injected fault is
//! applied right after the key is accepted.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::actions::{self, Action, CATEGORIES};
use super::envelope::{self, ErrorCode, SimBody, SimError};
use super::fault::{Fault, FaultKind};
use super::handle::{KeyIndex, Shared};
use super::request::{self, ParsedBody};

/// Bodies larger than this are refused with `INVALID_PARAMS`; real requests
/// are a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The action name `GET /v2/accounts` reports in its metadata.
const LIST_ACCOUNTS: &str = "list_accounts";

/// What the Garbage fault answers: an HTML error page a proxy might serve.
const GARBAGE_BODY: &[u8] =
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>";

/// Returned by the service to make hyper drop the connection without an
/// answer (the Reset and Hang faults, shutdown during a delayed request).
#[derive(Debug)]
pub(crate) struct Dropped(&'static str);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Dropped {}

type Handled = Result<Response<SimBody>, Dropped>;

/// Accepts connections until shutdown, one task per connection.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop_signal(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            Err(err) => {
                // Usually a connection aborted before accept, or out of file
                // descriptors; back off a moment instead of spinning.
                tracing::debug!(error = %err, "sim: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!("sim: stopped accepting");
}

/// Resolves once shutdown is asked for. Returns `()` so no lock guard of
/// the watch channel is kept across an await.
async fn stop_signal(receiver: &mut watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small JSON answers: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.subscribe_shutdown();
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "sim: connection ended with an error");
            }
        }
        () = stop_signal(&mut shutdown) => {
            // Idle connections close now; requests still running see the
            // same signal and end, so this wait is short.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Handled {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v2/") {
        shared.counters.record_call();
        let rest = rest.to_owned();
        // Like a real upstream, a call that has started runs to the end and is
        // billed even if the client hangs up: its own task, not the connection's.
        let call = tokio::spawn(async move { v2(&shared, req, &rest).await });
        return match call.await {
            Ok(handled) => handled,
            Err(_) => Err(Dropped("the call task ended without an answer")),
        };
    }
    if path.starts_with("/_sim/") {
        return Ok(control(&shared, req).await);
    }
    Ok(reject(
        &shared,
        &SimError::new(ErrorCode::NotFound, "No such endpoint"),
        None,
    ))
}

/// Writes an error answer and counts it.
fn reject(shared: &Shared, err: &SimError, action: Option<&str>) -> Response<SimBody> {
    shared.counters.record_error(err.code);
    envelope::error(err, action)
}

fn invalid_api_key() -> SimError {
    SimError::new(ErrorCode::InvalidApiKey, "Invalid or missing API key")
}

async fn v2(shared: &Shared, req: Request<Incoming>, route: &str) -> Handled {
    let method = req.method().clone();
    if route == "accounts" {
        if method != Method::GET {
            return Ok(method_not_allowed(shared, "GET"));
        }
        let key = shared.authenticate(api_key(req.headers()));
        return list_accounts(shared, key).await;
    }
    let Some(category) = CATEGORIES.iter().copied().find(|c| *c == route) else {
        let err = SimError::new(ErrorCode::NotFound, "No such endpoint");
        return Ok(reject(shared, &err, None));
    };
    if method != Method::POST {
        return Ok(method_not_allowed(shared, "POST"));
    }
    run_action(shared, req, category).await
}

/// 405 with the `allow` header RFC 9110 requires.
fn method_not_allowed(shared: &Shared, allow: &'static str) -> Response<SimBody> {
    let err = SimError::new(
        ErrorCode::MethodNotAllowed,
        "Method not allowed on this endpoint",
    );
    let mut response = reject(shared, &err, None);
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn api_key(headers: &http::HeaderMap) -> Option<&str> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

#[derive(Serialize)]
struct AccountsData {
    accounts: Vec<AccountEntry>,
}

#[derive(Serialize)]
struct AccountEntry {
    account_id: String,
    status: &'static str,
}

async fn list_accounts(shared: &Shared, key: Option<KeyIndex>) -> Handled {
    let Some(key) = key else {
        return Ok(reject(shared, &invalid_api_key(), Some(LIST_ACCOUNTS)));
    };
    shared.counters.record_key_call(key);
    if let Some(response) = apply_fault(shared, Some(LIST_ACCOUNTS)).await? {
        return Ok(response);
    }
    if let Err(seconds) = shared.limiter.check(key) {
        let err = SimError::rate_limited(seconds);
        return Ok(reject(shared, &err, Some(LIST_ACCOUNTS)));
    }
    let accounts = shared
        .accounts_of(key)
        .into_iter()
        .map(|account_id| AccountEntry {
            status: if shared.is_inactive(&account_id) {
                "inactive"
            } else {
                "active"
            },
            account_id,
        })
        .collect();
    Ok(envelope::success(
        LIST_ACCOUNTS,
        None,
        0,
        AccountsData { accounts },
    ))
}

async fn run_action(shared: &Shared, req: Request<Incoming>, category: &str) -> Handled {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let ParsedBody {
        action_hint,
        request,
    } = request::parse_body(parts.headers.get(CONTENT_TYPE), body.as_deref());
    let action_hint = action_hint.as_deref();

    // Pages are counted before any check so that "how often was this page
    // asked for" holds whatever the outcome, faults and refusals included.
    if let Ok(r) = &request
        && category == "profiles"
        && r.action == "get_viewers"
        && let Ok(page) = request::page_params(
            &r.params,
            shared.config.default_count,
            shared.config.max_count,
        )
    {
        shared
            .counters
            .record_page(&r.account_id, page.offset, page.count);
    }

    let Some(key) = shared.authenticate(api_key(&parts.headers)) else {
        return Ok(reject(shared, &invalid_api_key(), action_hint));
    };
    shared.counters.record_key_call(key);
    if let Some(response) = apply_fault(shared, action_hint).await? {
        return Ok(response);
    }
    Ok(match answer_action(shared, key, category, request) {
        Ok(response) => response,
        Err(err) => reject(shared, &err, action_hint),
    })
}

/// The checks after authentication and the answer itself.
fn answer_action(
    shared: &Shared,
    key: KeyIndex,
    category: &str,
    request: Result<request::ActionRequest, String>,
) -> Result<Response<SimBody>, SimError> {
    let request = request.map_err(|m| SimError::new(ErrorCode::InvalidParams, m))?;
    let account_id = request.account_id.as_str();
    // Same answer whether the account belongs to another key or to nobody,
    // so a key cannot probe for other customers' accounts.
    if !shared.owns(key, account_id) {
        return Err(SimError::new(
            ErrorCode::InvalidAccount,
            "Account not found for this API key",
        ));
    }
    if shared.is_inactive(account_id) {
        return Err(SimError::new(
            ErrorCode::AccountInactive,
            "Account is inactive",
        ));
    }
    let action = Action::find(category, &request.action).ok_or_else(|| {
        SimError::new(
            ErrorCode::InvalidAction,
            format!("Unknown action for /v2/{category}"),
        )
    })?;
    let prepared = action
        .prepare(&request.params, &shared.config)
        .map_err(|m| SimError::new(ErrorCode::InvalidParams, m))?;
    shared.limiter.check(key).map_err(SimError::rate_limited)?;
    let answer = actions::execute(
        prepared,
        account_id,
        shared.viewers_total(account_id),
        &shared.config,
    );
    shared.counters.bill(key, answer.credits);
    Ok(envelope::success(
        &request.action,
        Some(account_id),
        answer.credits,
        &answer.data,
    ))
}

/// Applies one use of the active fault, if any. `Ok(None)` means carry on
/// normally (no fault, or latency only); `Err` drops the connection.
async fn apply_fault(
    shared: &Shared,
    action: Option<&str>,
) -> Result<Option<Response<SimBody>>, Dropped> {
    let Some(Fault {
        kind, latency_ms, ..
    }) = shared.fault.take()
    else {
        return Ok(None);
    };
    shared.counters.record_fault();
    if latency_ms > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(latency_ms)) => {}
            () = shared.shutdown_requested() => return Err(Dropped("simulator shutting down")),
        }
    }
    match kind {
        FaultKind::None => Ok(None),
        FaultKind::InternalError => {
            let err = SimError::new(ErrorCode::InternalError, "An internal error occurred");
            Ok(Some(reject(shared, &err, action)))
        }
        FaultKind::RateLimited { retry_after_s } => {
            let err = SimError::rate_limited(retry_after_s);
            Ok(Some(reject(shared, &err, action)))
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
    }
}

/// The whole body, `None` if it is larger than `MAX_BODY_BYTES`; `Err` if
/// the client broke off mid-body.
async fn read_body(body: Incoming) -> Result<Option<Bytes>, Dropped> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Ok(None),
        Err(_) => Err(Dropped("request body could not be read")),
    }
}

/// `/_sim/` control endpoints. No key: the simulator is a loopback test tool.
async fn control(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let not_allowed = |allow| method_not_allowed(shared, allow);
    match path.as_str() {
        "/_sim/stats" => match method {
            Method::GET => envelope::json(StatusCode::OK, &shared.counters.snapshot()),
            _ => not_allowed("GET"),
        },
        "/_sim/fault" => match method {
            Method::GET => envelope::json(StatusCode::OK, &shared.fault.current()),
            Method::POST => set_fault(shared, req.into_body()).await,
            Method::DELETE => {
                shared.fault.clear();
                envelope::no_content()
            }
            _ => not_allowed("GET, POST, DELETE"),
        },
        "/_sim/reset" => match method {
            Method::POST => {
                shared.counters.reset();
                envelope::no_content()
            }
            _ => not_allowed("POST"),
        },
        other => {
            let revoke = other
                .strip_prefix("/_sim/keys/")
                .and_then(|rest| rest.rsplit_once('/'));
            let revoked = match revoke {
                Some((_, "revoke")) => true,
                Some((_, "unrevoke")) => false,
                _ => {
                    let err = SimError::new(ErrorCode::NotFound, "No such endpoint");
                    return reject(shared, &err, None);
                }
            };
            if method != Method::POST {
                return not_allowed("POST");
            }
            let name = revoke.map(|(name, _)| name).unwrap_or_default();
            if shared.set_revoked(name, revoked) {
                envelope::no_content()
            } else {
                let err = SimError::new(ErrorCode::NotFound, "No key with this name");
                reject(shared, &err, None)
            }
        }
    }
}

async fn set_fault(shared: &Shared, body: Incoming) -> Response<SimBody> {
    let parsed = match read_body(body).await {
        Ok(Some(bytes)) => serde_json::from_slice::<Fault>(&bytes).map_err(|e| e.to_string()),
        Ok(None) => Err("body too large".to_owned()),
        Err(err) => Err(err.to_string()),
    };
    match parsed {
        Ok(fault) => {
            tracing::info!(?fault, "sim: fault set");
            shared.fault.set(fault);
            envelope::no_content()
        }
        Err(message) => {
            let err = SimError::new(
                ErrorCode::InvalidParams,
                format!("invalid fault: {message}"),
            );
            reject(shared, &err, None)
        }
    }
}
