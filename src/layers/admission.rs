//! Admission: load shedding and the overall request deadline.
//!
//! Sits just inside the rescue layer. At most `server.max_in_flight`
//! requests are answered at once; one more is refused at once with 503
//! `SERVICE_UNAVAILABLE` rather than queued, so an overload never turns into
//! unbounded memory or latency. A request not answered within
//! `server.request_timeout_ms` gets 503 too; a paid fetch it was waiting on
//! carries on in its own task and still fills the cache.

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

/// Sheds load and bounds request time.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl AdmissionLayer {
    /// Admits what `slots` allows, for at most `timeout` each.
    pub fn new(slots: Arc<Semaphore>, timeout: Duration) -> Self {
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
pub struct Admission<S> {
    inner: S,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    // Boxed: it holds a timer and a permit around the inner future.
    type Future = Pin<Box<dyn Future<Output = StageResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let permit: Option<OwnedSemaphorePermit> = Arc::clone(&self.slots).try_acquire_owned().ok();
        let Some(permit) = permit else {
            return Box::pin(std::future::ready(Err(GatewayError::ServiceUnavailable {
                detail: "overloaded: server.max_in_flight requests already in flight".into(),
            })));
        };
        let timeout = self.timeout;
        let inner = self.inner.call(request);
        Box::pin(async move {
            let result = tokio::time::timeout(timeout, inner).await;
            drop(permit);
            result.unwrap_or_else(|_| {
                Err(GatewayError::ServiceUnavailable {
                    detail: format!("request not answered within {} ms", timeout.as_millis()),
                })
            })
        })
    }
}
