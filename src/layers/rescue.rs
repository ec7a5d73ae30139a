//! Rescue: the one place a [`GatewayError`] becomes a V2 error response.
//!
//! Everything inside returns `Result<Response, GatewayError>`; this stage
//! turns errors into `{"success": false, ...}` bodies, records the code for
//! the access log, and logs internal details (never sent to the client) once.
//! Those details repeat while a dependency is down (every miss meets the
//! same unreachable ledger or upstream): one line per error code, then one
//! summary with a `suppressed` count every few seconds; the access lines
//! still give every request's `error_code`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::clock::Clock;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::log_throttle::LogThrottle;
use crate::response::Body;

/// Turns errors into responses.
#[derive(Debug, Clone)]
pub(crate) struct RescueLayer {
    clock: Clock,
    logs: Arc<LogThrottle>,
}

impl RescueLayer {
    /// A rescue layer stamping error bodies with `clock`'s time, logging
    /// internal details through `logs`.
    pub(crate) fn new(clock: Clock, logs: Arc<LogThrottle>) -> Self {
        Self { clock, logs }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            clock: self.clock.clone(),
            logs: Arc::clone(&self.logs),
        }
    }
}

/// See [`RescueLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    clock: Clock,
    logs: Arc<LogThrottle>,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Inner stages are always ready; an error here would be a bug, answered at call time.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let context = super::context(&request).cloned();
        let profiles = request.uri().path() == "/v2/profiles";
        ResponseFuture {
            inner: self.inner.call(request),
            context,
            profiles,
            clock: self.clock.clone(),
            logs: Arc::clone(&self.logs),
        }
    }
}

pin_project_lite::pin_project! {
    /// Maps the inner error, if any.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        context: Option<Arc<RequestContext>>,
        // Whether the request was for the get_viewers endpoint.
        profiles: bool,
        clock: Clock,
        logs: Arc<LogThrottle>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let error = match ready!(this.inner.poll(cx)) {
            Ok(response) => return Poll::Ready(Ok(response)),
            Err(error) => error,
        };
        let action = match this.context {
            Some(context) => {
                let mut fields = context.fields();
                fields.error_code = Some(error.code().to_string());
                fields.error_source = Some(error.source().as_str());
                log_detail(&error, context.request_id_str(), this.logs);
                // Before the body is read the action is unknown; on the
                // get_viewers endpoint it is, in all likelihood, get_viewers.
                let profiles = *this.profiles;
                fields
                    .action
                    .clone()
                    .or_else(|| profiles.then(|| "get_viewers".to_string()))
            }
            None => None,
        };
        Poll::Ready(Ok(error.to_response(action.as_deref(), this.clock.wall())))
    }
}

fn log_detail(error: &GatewayError, request_id: &str, logs: &LogThrottle) {
    let (GatewayError::UpstreamUnavailable { detail }
    | GatewayError::ServiceUnavailable { detail }) = error
    else {
        return;
    };
    if let Some(suppressed) = logs.admit(error.code()) {
        tracing::warn!(
            request_id,
            error_code = error.code(),
            detail = detail.as_str(),
            suppressed,
            "request failed"
        );
    }
}
