//! Admission: each tenant's share of the gateway, load shedding, and the
//! overall request deadline.
//!
//! Sits right after authentication, so every slot it hands out belongs to a
//! known tenant. Nothing before it takes a slot or waits: the stack is
//! called once hyper has the whole request head (whose arrival
//! `server.header_timeout_ms` bounds), and route and auth decide at once,
//! in the same call. An unauthenticated client holds no slot at all.
//!
//! In order:
//! 1. the tenant's share: at most `tenants[].max_in_flight` of its
//!    requests are answered at once (default half of `server.max_in_flight`);
//!    one more gets 429 `RATE_LIMITED` with `retry-after`. A tenant past its
//!    share is told so, and cannot take the slots the others need;
//! 2. the gateway's slots: at most `server.max_in_flight` requests in all;
//!    one more is refused at once with 503 `SERVICE_UNAVAILABLE` rather
//!    than queued, so an overload never turns into unbounded memory or
//!    latency;
//! 3. the deadline: a request not answered within
//!    `server.request_timeout_ms` gets 504 `UPSTREAM_TIMEOUT` if its own
//!    upstream call was started (the outcome is unknown: it goes on), or
//!    the one it waits for as a coalesced follower is on the wire (the
//!    upstream is slow), else 503; a paid fetch it was waiting on carries
//!    on in its own task and still fills the cache.
//!
//! Both slots are held until the response is ready (or the request is
//! dropped), whatever stage it is in: a request whose body never comes
//! holds them until the parse stage's `server.body_timeout_ms` answers 408.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::StageResult;
use crate::error::GatewayError;
use crate::tenant::{Tenant, TenantSlot};

/// How long a tenant past its share is asked to wait: a slot comes back as
/// soon as one of its requests is answered, which is usually well within it.
const SHARE_RETRY_AFTER_S: u64 = 1;

/// Gives each tenant its share, sheds load and bounds request time.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl AdmissionLayer {
    /// Admits what `slots` allows, for at most `timeout` each.
    pub(crate) fn new(slots: Arc<Semaphore>, timeout: Duration) -> Self {
        Self { slots, timeout }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            slots: Arc::clone(&self.slots),
            timeout: self.timeout,
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

/// The slots one request holds until it is answered.
struct Held {
    _tenant: Option<TenantSlot>,
    _gateway: OwnedSemaphorePermit,
}

impl<S> Admission<S> {
    fn admit<B>(&self, request: &Request<B>) -> Result<Held, GatewayError> {
        // Auth put the tenant there; without one (a stack built without
        // auth, in tests) only the gateway's slots apply.
        let tenant = match request.extensions().get::<Arc<Tenant>>() {
            Some(tenant) => Some(tenant.slots.try_take(tenant.max_in_flight).ok_or(
                GatewayError::TooManyInFlight {
                    limit: tenant.max_in_flight,
                    retry_after_s: SHARE_RETRY_AFTER_S,
                },
            )?),
            None => None,
        };
        let gateway = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            GatewayError::ServiceUnavailable {
                detail: "overloaded: server.max_in_flight requests already in flight".into(),
            }
        })?;
        Ok(Held {
            _tenant: tenant,
            _gateway: gateway,
        })
    }
}

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    // Boxed: it holds a timer and the slots around the inner future.
    type Future = Pin<Box<dyn Future<Output = StageResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let held = match self.admit(&request) {
            Ok(held) => held,
            Err(refused) => return Box::pin(std::future::ready(Err(refused))),
        };
        let timeout = self.timeout;
        let context = super::context(&request).cloned();
        let inner = self.inner.call(request);
        Box::pin(async move {
            // A hit is answered in its first poll, without a timer.
            let result = super::timeout_unless_ready(timeout, inner).await;
            drop(held);
            result.unwrap_or_else(|_| {
                // A call already sent goes on in its own task: the client
                // must not read this as "nothing happened" and send it again.
                if context.as_ref().is_some_and(|c| c.upstream_started()) {
                    return Err(GatewayError::DeadlinePassedInFlight {
                        after_ms: timeout.as_millis() as u64,
                    });
                }
                // A follower of a fetch whose call is on the wire: the
                // upstream is slow (504), not the gateway overloaded (503).
                // It was not charged.
                if context.is_some_and(|c| c.waits_on_upstream()) {
                    return Err(GatewayError::DeadlinePassedWaiting {
                        after_ms: timeout.as_millis() as u64,
                    });
                }
                Err(GatewayError::ServiceUnavailable {
                    detail: format!("request not answered within {} ms", timeout.as_millis()),
                })
            })
        })
    }
}
