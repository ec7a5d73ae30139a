//! Routing: only `POST /v2/{category}` is the tenant API.
//!
//! Decided before authentication: which paths exist is no secret, and a
//! wrong URL deserves a 404 whatever key came with it.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{Method, Request};
use http_body::Body as HttpBody;
use tower::{Layer, Service};

use super::StageResult;
use super::accounts::AccountsRoute;
use super::discard::refuse;
use super::parse::CONNECT_ENDPOINTS;
use crate::error::GatewayError;

/// The category of `/v2/{category}`, for later stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Category(pub String);

/// Answers 404 / 405 for anything but the tenant API.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Route { inner }
    }
}

/// See [`RouteLayer`].
#[derive(Debug, Clone)]
pub(crate) struct Route<S> {
    inner: S,
}

/// `/v2/accounts` (the list) or `/v2/accounts/{account_id}` (one account).
pub(crate) fn accounts_route(path: &str) -> Option<AccountsRoute> {
    let rest = path.strip_prefix("/v2/accounts")?;
    match rest {
        "" => Some(AccountsRoute(None)),
        _ => {
            let id = rest.strip_prefix('/')?;
            (!id.is_empty() && !id.contains('/')).then(|| AccountsRoute(Some(id.to_string())))
        }
    }
}

/// The category of a tenant API path, if it is one.
pub(crate) fn category(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let ok = !rest.is_empty()
        && rest.len() <= 32
        && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    ok.then_some(rest)
}

impl<S, B> Service<Request<B>> for Route<S>
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
        if let Some(route) = accounts_route(request.uri().path()) {
            if request.method() != Method::GET {
                return Either::Left(refuse(
                    request,
                    GatewayError::MethodNotAllowed { allow: "GET" },
                ));
            }
            request.extensions_mut().insert(route);
            return Either::Right(self.inner.call(request));
        }
        let Some(category) = category(request.uri().path()) else {
            return Either::Left(refuse(request, GatewayError::NotFound));
        };
        // An endpoint that is its own action names it from here on, in
        // every answer and access line, refusals before the body included.
        if CONNECT_ENDPOINTS.contains(&category)
            && let Some(context) = super::context(&request)
        {
            context.fields().action = Some(category.to_string());
        }
        // Webhooks are the operator's: refused once the caller is known (any method).
        if request.method() != Method::POST && category != "webhooks" {
            return Either::Left(refuse(
                request,
                GatewayError::MethodNotAllowed { allow: "POST" },
            ));
        }
        let category = Category(category.to_string());
        request.extensions_mut().insert(category);
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_v2_categories_route() {
        assert_eq!(category("/v2/profiles"), Some("profiles"));
        assert_eq!(category("/v2/network"), Some("network"));
        assert_eq!(category("/v2/"), None);
        assert_eq!(category("/v2/profiles/x"), None);
        assert_eq!(category("/v1/profiles"), None);
        assert_eq!(category("/"), None);
        assert_eq!(accounts_route("/v2/accounts"), Some(AccountsRoute(None)));
        assert_eq!(
            accounts_route("/v2/accounts/acc%2D1"),
            Some(AccountsRoute(Some("acc%2D1".into())))
        );
        assert_eq!(accounts_route("/v2/accounts/"), None);
        assert_eq!(accounts_route("/v2/accounts/a/b"), None);
        assert_eq!(accounts_route("/v2/accountsx"), None);
    }
}
