//! The simulator's HTTP side: the accept loop (HTTP/1.1 and h2c on one
//! port), routing, and the V2 action path in upstream's order of checks.
//!
//! Order of checks on `POST /v2/{category}`, as upstream answers:
//! key -> body -> account owned by the key -> account active -> action known
//! -> params valid -> per-key rate limit -> answer. An injected fault is
//! applied right after the key is accepted, or after the answer was made and
//! billed, as its kind says (see `call`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::account_api;
use super::actions::{Action, CATEGORIES};
use super::answers;
use super::body::Dropped;
use super::call::{self, Call, Handled, reject};
use super::control;
use super::envelope::{self, ErrorCode, SimBody, SimError};
use super::handle::{KeyIndex, Shared};
use super::request::{self, ActionRequest, ParsedBody};

/// Bodies larger than this are refused with `INVALID_PARAMS`; real requests
/// are a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

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
        return Ok(control::control(&shared, req).await);
    }
    Ok(not_found(&shared))
}

fn not_found(shared: &Shared) -> Response<SimBody> {
    reject(
        shared,
        &SimError::new(ErrorCode::NotFound, "No such endpoint"),
        None,
    )
}

/// `%XX` escapes decoded; `None` if one is malformed or the result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Routes a `/v2/` request by the rest of its path.
async fn v2(shared: &Shared, req: Request<Incoming>, route: &str) -> Handled {
    let get = req.method() == Method::GET;
    let post = req.method() == Method::POST;
    if let Some(account_id) = route.strip_prefix("accounts/") {
        if !get {
            return Ok(method_not_allowed(shared, "GET"));
        }
        // Like any HTTP server, the id in the path is percent-decoded.
        let Some(account_id) = percent_decoded(account_id) else {
            return Ok(not_found(shared));
        };
        return account_api::detail(shared, req, &account_id).await;
    }
    match route {
        "accounts" if get => account_api::list(shared, req).await,
        "accounts" => Ok(method_not_allowed(shared, "GET")),
        "login" if post => account_api::login(shared, req).await,
        "checkpoint" if post => account_api::checkpoint(shared, req).await,
        "login" | "checkpoint" => Ok(method_not_allowed(shared, "POST")),
        category => match CATEGORIES.iter().copied().find(|c| *c == category) {
            None => Ok(not_found(shared)),
            Some(category) if post => run_action(shared, req, category).await,
            Some(_) => Ok(method_not_allowed(shared, "POST")),
        },
    }
}

/// 405 with the `allow` header RFC 9110 requires.
pub(crate) fn method_not_allowed(shared: &Shared, allow: &'static str) -> Response<SimBody> {
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

/// The `x-api-key` header, if it is text.
pub(crate) fn api_key(headers: &http::HeaderMap) -> Option<&str> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

pub(crate) fn invalid_api_key() -> SimError {
    SimError::new(ErrorCode::InvalidApiKey, "Invalid or missing API key")
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

    let api_key = api_key(&parts.headers);
    let Some(key) = shared.authenticate(api_key) else {
        return Ok(reject(shared, &invalid_api_key(), action_hint));
    };
    let call = Call {
        key,
        api_key: api_key.unwrap_or_default(),
        action: action_hint,
        account_id: request.as_ref().ok().map(|r| r.account_id.as_str()),
    };
    call::serve(shared, call, || {
        let request = request
            .as_ref()
            .map_err(|m| SimError::new(ErrorCode::InvalidParams, m.as_str()))?;
        answer_action(shared, key, category, request)
    })
    .await
}

/// The checks after authentication and the answer itself: performs the
/// action, counts it if it is a write, bills it.
fn answer_action(
    shared: &Shared,
    key: KeyIndex,
    category: &str,
    request: &ActionRequest,
) -> Result<Bytes, SimError> {
    let account_id = request.account_id.as_str();
    // Same answer whether the account belongs to another key or to nobody,
    // so a key cannot probe for other customers' accounts.
    if !shared.accounts.owns(key, account_id) {
        return Err(SimError::new(
            ErrorCode::InvalidAccount,
            "Account not found for this API key",
        ));
    }
    if shared.accounts.is_inactive(account_id) {
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
        .prepare(&request.params, account_id, &shared.config)
        .map_err(|m| SimError::new(ErrorCode::InvalidParams, m))?;
    shared.limiter.check(key).map_err(SimError::rate_limited)?;
    let nth_write = prepared.write_target().map_or(0, |target| {
        shared
            .counters
            .record_write(&request.action, account_id, target)
    });
    let answer = answers::execute(
        prepared,
        account_id,
        shared.viewers_total(account_id),
        &shared.config,
        nth_write,
    );
    shared.counters.bill(key, answer.credits);
    Ok(envelope::success_body(
        &request.action,
        Some(account_id),
        answer.credits,
        &answer.data,
    ))
}

/// The whole body, `None` if it is larger than `MAX_BODY_BYTES`; `Err` if
/// the client broke off mid-body.
pub(crate) async fn read_body(body: Incoming) -> Result<Option<Bytes>, Dropped> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Ok(None),
        Err(_) => Err(Dropped("request body could not be read")),
    }
}
