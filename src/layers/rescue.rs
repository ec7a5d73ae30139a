//! Rescue: the one place a [`GatewayError`] becomes a V2 error response.
//!
//! Everything inside returns `Result<Response, GatewayError>`; this stage
//! turns errors into `{"success": false, ...}` bodies, records the code for
//! the access log, and logs internal details (never sent to the client) once.

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
use crate::response::Body;

/// Turns errors into responses.
#[derive(Debug, Clone)]
pub struct RescueLayer {
    clock: Clock,
}

impl RescueLayer {
    /// A rescue layer stamping error bodies with `clock`'s time.
    pub fn new(clock: Clock) -> Self {
        Self { clock }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            clock: self.clock.clone(),
        }
    }
}

/// See [`RescueLayer`].
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    clock: Clock,
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
                log_detail(&error, context.request_id_str());
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

fn log_detail(error: &GatewayError, request_id: &str) {
    match error {
        GatewayError::UpstreamUnavailable { detail }
        | GatewayError::ServiceUnavailable { detail } => {
            tracing::warn!(
                request_id,
                error_code = error.code(),
                detail = detail.as_str(),
                "request failed"
            );
        }
        _ => {}
    }
}
