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

use futures_util::future::{Either, Ready, ready};
use http::Request;
use tower::{Layer, Service};

use super::StageResult;
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::ratelimit::{Decision, ceil_secs};
use crate::tenant::Tenant;

/// Answers 429 `RATE_LIMITED` when the tenant's bucket is empty.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    clock: Clock,
}

impl RateLimitLayer {
    /// Limits against `clock` (the limiters were built with the same clock).
    pub(crate) fn new(clock: Clock) -> Self {
        Self { clock }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            clock: self.clock.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    clock: Clock,
}

fn limited(decision: Decision) -> Result<(), GatewayError> {
    match decision {
        Decision::Allowed => Ok(()),
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
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<Ready<StageResult>, Either<S::Future, GlobalCheck>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limiter = request
            .extensions()
            .get::<Arc<Tenant>>()
            .and_then(|t| t.limiter.clone());
        let Some(limiter) = limiter else {
            return Either::Right(Either::Left(self.inner.call(request)));
        };
        match limiter.check_local(&self.clock) {
            Some(decision) => match limited(decision) {
                Ok(()) => Either::Right(Either::Left(self.inner.call(request))),
                Err(e) => Either::Left(ready(Err(e))),
            },
            None => {
                // The clone that was polled ready goes with this request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let clock = self.clock.clone();
                Either::Right(Either::Right(Box::pin(async move {
                    limited(limiter.check(&clock).await)?;
                    inner.call(request).await
                })))
            }
        }
    }
}
