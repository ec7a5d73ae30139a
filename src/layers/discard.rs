//! Reading the rest of a body the gateway refuses before reading it.
//!
//! The route, auth and rate-limit stages answer before the parse stage
//! reads the body. Dropping it unread, hyper drains only what it already
//! buffered and, when more is still to come, closes the connection after the
//! answer without saying so: a keep-alive client's next request on it then
//! fails, and a write sent without an Idempotency-Key looks "maybe done".
//! Like nginx (which discards such bodies) and Go's net/http, a refusal
//! first reads and throws away up to [`DISCARD_MAX`] bytes for up to
//! [`DISCARD_WAIT`]; a body bigger or slower than that gets its answer with
//! `connection: close`, so the client knows. HTTP/2 streams end on their
//! own and are refused at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Version};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};

use super::StageResult;
use crate::context::RequestContext;
use crate::error::GatewayError;

/// The most a refusal reads to keep its connection open.
pub(crate) const DISCARD_MAX: usize = 64 * 1024;
/// How long a refusal waits for the rest of the body.
pub(crate) const DISCARD_WAIT: Duration = Duration::from_secs(1);

/// Refuses `request` with `error` once its body is read and discarded (or
/// found too big or too slow: then the answer closes the connection).
pub(crate) fn refuse<B>(request: Request<B>, error: GatewayError) -> BoxFuture<'static, StageResult>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    Box::pin(async move {
        let (parts, body) = request.into_parts();
        // A client that asked to be told before it sends the body is not
        // asked for it (no 100 Continue): the answer closes instead.
        let expects = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if parts.version <= Version::HTTP_11 && (expects || !discard(body).await) {
            close_after_answer(&parts);
        }
        Err(error)
    })
}

/// Asks that the answer to this HTTP/1.x request close the connection and
/// say so (part of its body is left unread).
pub(crate) fn close_after_answer(parts: &http::request::Parts) {
    if parts.version <= Version::HTTP_11
        && let Some(context) = parts.extensions.get::<Arc<RequestContext>>()
    {
        context.close_connection();
    }
}

/// Whether the whole body was read within the limits.
async fn discard<B>(body: B) -> bool
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if body.is_end_stream() {
        return true;
    }
    let read = Limited::new(body, DISCARD_MAX).collect();
    matches!(tokio::time::timeout(DISCARD_WAIT, read).await, Ok(Ok(_)))
}
