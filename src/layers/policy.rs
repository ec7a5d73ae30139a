//! Policy: may this tenant read this account, and call this action?
//!
//! The account is checked first and answered exactly like an account that
//! does not exist (404 `INVALID_ACCOUNT`), so a tenant cannot probe which
//! accounts other tenants use.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::Request;
use tower::{Layer, Service};

use super::StageResult;
use crate::call::ApiCall;
use crate::error::GatewayError;
use crate::tenant::Tenant;

/// Enforces the tenant's account and action lists.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyLayer;

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Policy { inner }
    }
}

/// See [`PolicyLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Policy<S> {
    inner: S,
}

impl<S> Service<Request<ApiCall>> for Policy<S>
where
    S: Service<
            Request<ApiCall>,
            Response = http::Response<crate::response::Body>,
            Error = GatewayError,
        >,
{
    type Response = S::Response;
    type Error = GatewayError;
    type Future = Either<Ready<StageResult>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ApiCall>) -> Self::Future {
        let Some(tenant) = request.extensions().get::<Arc<Tenant>>() else {
            // Auth always runs first; without a tenant nothing is allowed.
            return Either::Left(ready(Err(GatewayError::InvalidApiKey)));
        };
        match tenant.permits(request.body()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refused) => Either::Left(ready(Err(refused))),
        }
    }
}
