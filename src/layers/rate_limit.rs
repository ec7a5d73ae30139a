//! Per-tenant rate limit: GCRA, one limiter per tenant.
//!
//! Sits right after authentication so a tenant over its rate costs no body
//! read, no parse and no cache lookup. A local limit (governor) decides at
//! once; a global one asks Redis, shared by all replicas (see
//! [`crate::ratelimit`]). `retry-after` is whole seconds, rounded up, at
//! least 1.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::Request;
use http_body::Body as HttpBody;
use tower::{Layer, Service};

use super::discard::refuse;
use super::{StageResult, context};
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, ceil_secs};
use crate::shadow;
use crate::tenant::Tenant;

/// Answers 429 `RATE_LIMITED` when the tenant's bucket is empty (a tenant
/// in shadow mode goes on, its would-be 429 logged and counted).
#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    /// Limits against `clock` (the limiters were built with the same clock),
    /// counting shadow-mode would-be refusals in `metrics`.
    pub(crate) fn new(clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self { clock, metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            clock: self.clock.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// What the limiter's `decision` means for this request: a tenant in shadow
/// mode is never refused, only recorded (see [`crate::shadow`]).
fn limited<B>(
    decision: Decision,
    tenant: &Tenant,
    request: &Request<B>,
    metrics: &Metrics,
) -> Result<(), GatewayError> {
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Wait(_) if !tenant.enforce => {
            let request_id = context(request).map_or("-", |c| c.request_id_str());
            shadow::would_block(metrics, tenant, shadow::Kind::RateLimit, request_id, None);
            Ok(())
        }
        Decision::Wait(wait) => Err(GatewayError::RateLimited {
            retry_after_s: ceil_secs(wait),
        }),
    }
}

/// Boxed only for global limits: asking Redis is real I/O.
type GlobalCheck = Pin<Box<dyn Future<Output = StageResult> + Send>>;

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    // A refusal reads the rest of the body first (see `discard`).
    type Future = Either<BoxFuture<'static, StageResult>, Either<S::Future, GlobalCheck>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let tenant = request.extensions().get::<Arc<Tenant>>().cloned();
        let Some((tenant, limiter)) = tenant.and_then(|t| t.limiter.clone().map(|l| (t, l))) else {
            return Either::Right(Either::Left(self.inner.call(request)));
        };
        match limiter.check_local(&self.clock) {
            Some(decision) => match limited(decision, &tenant, &request, &self.metrics) {
                Ok(()) => Either::Right(Either::Left(self.inner.call(request))),
                Err(e) => Either::Left(refuse(request, e)),
            },
            None => {
                // The clone that was polled ready goes with this request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let clock = self.clock.clone();
                let metrics = Arc::clone(&self.metrics);
                Either::Right(Either::Right(Box::pin(async move {
                    if let Err(e) =
                        limited(limiter.check(&clock).await, &tenant, &request, &metrics)
                    {
                        return refuse(request, e).await;
                    }
                    inner.call(request).await
                })))
            }
        }
    }
}
