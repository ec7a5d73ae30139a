//! Per-tenant rate limit: GCRA (governor), one limiter per tenant.
//!
//! Sits right after authentication so a tenant over its rate costs no body
//! read, no parse and no cache lookup. `retry-after` is whole seconds,
//! rounded up, at least 1.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::Request;
use tower::{Layer, Service};

use super::StageResult;
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::tenant::Tenant;

/// Answers 429 `RATE_LIMITED` when the tenant's bucket is empty.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    clock: Clock,
}

impl RateLimitLayer {
    /// Limits against `clock` (the limiters were built with the same clock).
    pub fn new(clock: Clock) -> Self {
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
pub struct RateLimit<S> {
    inner: S,
    clock: Clock,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<Ready<StageResult>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limiter = request
            .extensions()
            .get::<Arc<Tenant>>()
            .and_then(|t| t.limiter.as_ref());
        if let Some(limiter) = limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Either::Left(ready(Err(GatewayError::RateLimited {
                retry_after_s: secs.max(1),
            })));
        }
        Either::Right(self.inner.call(request))
    }
}
