//! Request id and access log: the outermost stage.
//!
//! Echoes a client's `x-request-id` when it is 1 to 128 characters of
//! `A-Z a-z 0-9 . _ -`, otherwise generates one; puts a [`RequestContext`] in
//! the request's extensions; and, when the response is ready, sets the
//! `x-request-id` header, writes the one JSON access log line and records
//! the request's metrics (in-flight, count, latency, credits).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::context::RequestContext;
use crate::metrics::{InFlight, Metrics};
use crate::response::Body;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds the request id, the access log line and the request metrics.
#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    metrics: Arc<Metrics>,
}

impl RequestIdLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Whether a client-sent id may be echoed (it ends up in a header and a log line).
pub fn acceptable_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn generate_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| getrandom::u64().unwrap_or(0x5eed));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    for (i, word) in [prefix, n].into_iter().enumerate() {
        for j in 0..16 {
            let nibble = (word >> (60 - 4 * j)) & 0xf;
            id[i * 16 + j] = b"0123456789abcdef"[nibble as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

impl<S, B> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        // The header is viewgate's: remove the client's before deciding.
        let id = match request.headers_mut().remove(&X_REQUEST_ID) {
            Some(v) if acceptable_request_id(v.as_bytes()) => v,
            _ => generate_request_id(),
        };
        let context = RequestContext::new(id, started);
        request.extensions_mut().insert(Arc::clone(&context));
        ResponseFuture {
            inner: self.inner.call(request),
            context,
            in_flight: self.metrics.request_started(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

pin_project_lite::pin_project! {
    /// Sets the header and logs once the inner response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        context: Arc<RequestContext>,
        in_flight: InFlight,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), this.context.request_id.clone());
        let status = response.status().as_u16();
        log_access(this.context, status);
        record(this.metrics, this.context, status);
        Poll::Ready(Ok(response))
    }
}

fn record(metrics: &Metrics, context: &RequestContext, status: u16) {
    let f = context.fields();
    metrics.request_done(
        f.tenant.as_deref(),
        status,
        f.cache,
        context.started.elapsed(),
    );
    if let Some(tenant) = f.tenant.as_deref() {
        metrics.charged(tenant, f.credits_charged);
        if f.credits_saved > 0 {
            metrics.saved(tenant, f.credits_saved);
        }
    }
}

fn log_access(context: &RequestContext, status: u16) {
    let mut f = context.fields();
    // From here on, a charge goes on a settle line of its own (see `RequestContext::charge`).
    f.answered = true;
    let total_ms = context.started.elapsed().as_secs_f64() * 1000.0;
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "viewgate::access",
                $level,
                request_id = context.request_id_str(),
                tenant = f.tenant.as_deref(),
                action = f.action.as_deref(),
                account_id = f.account_id.as_deref(),
                offset = f.offset,
                count = f.count,
                status,
                cache = f.cache.map(|c| c.as_str()),
                credits_charged = f.credits_charged,
                upstream_ms = f.upstream_ms,
                total_ms = (total_ms * 1000.0).round() / 1000.0,
                error_code = f.error_code.as_deref(),
            )
        };
    }
    if status >= 500 {
        line!(tracing::Level::WARN);
    } else {
        line!(tracing::Level::INFO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_ids_are_echoed() {
        assert!(acceptable_request_id(b"abc-123_X.y"));
        assert!(!acceptable_request_id(b""));
        assert!(!acceptable_request_id(&[b'a'; 129]));
        assert!(!acceptable_request_id(b"a b"));
        assert!(!acceptable_request_id(b"a\r\nx-evil: 1"));
        assert!(!acceptable_request_id("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_unique_and_acceptable() {
        let a = generate_request_id();
        let b = generate_request_id();
        assert_ne!(a, b);
        assert!(acceptable_request_id(a.as_bytes()));
    }
}
