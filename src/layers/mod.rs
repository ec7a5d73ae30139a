//! The request path's stages, one tower layer each, in the order `app::build_stack` lists them.

pub(crate) mod accounts;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod cache;
mod discard;
pub(crate) mod idempotency;
pub mod parse;
pub(crate) mod policy;
pub(crate) mod quote;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub(crate) mod route;
mod unambiguous;

use std::sync::Arc;

use http::Request;

use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::response::Body;

/// What every stage inside the rescue layer returns.
pub type StageResult = Result<http::Response<Body>, GatewayError>;

/// The request's context, which the request-id layer always inserts.
pub(crate) fn context<B>(request: &Request<B>) -> Option<&Arc<RequestContext>> {
    request.extensions().get::<Arc<RequestContext>>()
}

/// `tokio::time::timeout(after, future)`, counted from the first time
/// `future` is not ready: a future that completes on its first poll (a
/// cache hit, a body that came with its headers) costs no timer and no
/// clock reading. The deadline starts that one poll later.
pub(crate) async fn timeout_unless_ready<F: std::future::Future>(
    after: std::time::Duration,
    future: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout(after, future).await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::timeout_unless_ready;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_needs_no_timer_and_a_slow_one_times_out() {
        let ready = timeout_unless_ready(Duration::from_secs(1), async { 7 }).await;
        assert_eq!(ready.unwrap(), 7);
        // Ready on its second poll, within the time.
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let waiting = tokio::spawn(timeout_unless_ready(Duration::from_secs(5), rx));
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(1).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().unwrap(), 1);
        // Never ready: elapsed after the time, measured on the paused clock.
        #[allow(clippy::disallowed_methods, reason = "tokio's paused test clock")]
        let started = tokio::time::Instant::now();
        let never =
            timeout_unless_ready(Duration::from_secs(3), std::future::pending::<()>()).await;
        assert!(never.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
