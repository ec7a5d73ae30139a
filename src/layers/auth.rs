//! Authentication: `x-api-key` → [`Tenant`].
//!
//! Nothing about the body is read before this stage, so an unauthenticated
//! client learns nothing but 403. The key header is removed from the request
//! once used: no later stage can forward or log it by mistake.
//!
//! A request carries exactly one `x-api-key`. Two or more are refused
//! whatever they hold, even two copies of one valid key: which one a proxy,
//! a log or a later stage would read is anybody's guess, and a request must
//! never be able to speak for two tenants.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderName, Request};
use http_body::Body as HttpBody;
use tower::{Layer, Service};

use super::StageResult;
use super::discard::refuse;
use crate::error::GatewayError;
use crate::tenant::{Tenant, Tenants};

/// The header a tenant presents its key in.
pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Resolves the tenant or answers 403 `INVALID_API_KEY`.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    tenants: Arc<Tenants>,
}

impl AuthLayer {
    /// Authenticates against `tenants`.
    pub(crate) fn new(tenants: Arc<Tenants>) -> Self {
        Self { tenants }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            tenants: Arc::clone(&self.tenants),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    tenants: Arc<Tenants>,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    // A refusal reads the rest of the body first (see `discard`).
    type Future = Either<BoxFuture<'static, StageResult>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let copies = request.headers().get_all(&X_API_KEY).iter().count();
        // `remove` takes every copy out and returns the first.
        let presented = request.headers_mut().remove(&X_API_KEY);
        let tenant: Option<Arc<Tenant>> = presented
            .as_ref()
            .filter(|_| copies == 1)
            .and_then(|key| self.tenants.authenticate(key.as_bytes()));
        let Some(tenant) = tenant else {
            return Either::Left(refuse(request, GatewayError::InvalidApiKey));
        };
        if let Some(context) = super::context(&request) {
            context.fields().tenant = Some(Arc::clone(&tenant.id));
        }
        request.extensions_mut().insert(tenant);
        Either::Right(self.inner.call(request))
    }
}
