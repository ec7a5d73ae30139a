//! Accounts: `GET /v2/accounts` and `GET /v2/accounts/{account_id}`.
//!
//! Sits after authentication and the rate limit (listing is free upstream,
//! but not free for viewgate), before the body stages: these requests have
//! no body. They are answered here from the [`AccountDirectory`]; every
//! other request goes on inward.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, StatusCode};
use tower::{Layer, Service};

use super::StageResult;
use crate::accounts::{AccountDirectory, percent_decode};
use crate::clock::{Clock, rfc3339};
use crate::config::valid_account_id;
use crate::error::GatewayError;
use crate::response::json_response;
use crate::tenant::Tenant;

/// Which accounts request the route stage found: the list, or one account
/// (its id as written in the path, still percent-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountsRoute(pub Option<String>);

/// Default and largest page of `GET /v2/accounts`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 500;

/// Answers the accounts endpoints.
#[derive(Clone)]
pub(crate) struct AccountsLayer {
    directory: Arc<AccountDirectory>,
    clock: Clock,
}

impl AccountsLayer {
    /// Answers from `directory`.
    pub(crate) fn new(directory: Arc<AccountDirectory>, clock: Clock) -> Self {
        Self { directory, clock }
    }
}

impl<S> Layer<S> for AccountsLayer {
    type Service = Accounts<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Accounts {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AccountsLayer`].
#[derive(Clone)]
pub(crate) struct Accounts<S> {
    inner: S,
    layer: AccountsLayer,
}

impl<S, B> Service<Request<B>> for Accounts<S>
where
    S: Service<Request<B>, Response = http::Response<crate::response::Body>, Error = GatewayError>,
{
    type Response = S::Response;
    type Error = GatewayError;
    // Boxed: upstream I/O.
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = StageResult> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(route) = request.extensions().get::<AccountsRoute>().cloned() else {
            return Either::Left(self.inner.call(request));
        };
        let tenant = request.extensions().get::<Arc<Tenant>>().cloned();
        let context = super::context(&request).cloned();
        let query = request.uri().query().map(str::to_string);
        let layer = self.layer.clone();
        // A quote promises no upstream call; listing accounts makes one.
        let quote = request.headers().contains_key("x-viewgate-quote");
        Either::Right(Box::pin(async move {
            let tenant = tenant.ok_or(GatewayError::InvalidApiKey)?;
            if quote {
                return Err(GatewayError::InvalidParams(
                    "x-viewgate-quote is for POST calls: listing accounts is free, nothing to quote"
                        .into(),
                ));
            }
            let request_id = context
                .as_ref()
                .map(|c| c.request_id.clone())
                .unwrap_or_else(|| http::HeaderValue::from_static("-"));
            let now = rfc3339(layer.clock.wall());
            match route.0 {
                None => {
                    if let Some(c) = &context {
                        c.fields().action = Some("list_accounts".into());
                    }
                    let (limit, offset) = paging(query.as_deref())?;
                    let all = layer.directory.list(&tenant, &request_id).await?;
                    let mut body = Vec::with_capacity(256);
                    body.extend_from_slice(b"{\"success\":true,\"data\":{\"items\":[");
                    for (i, account) in all.iter().skip(offset).take(limit).enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(account.item.get().as_bytes());
                    }
                    body.extend_from_slice(
                        format!(
                            "],\"total\":{}}},\"metadata\":{{\"action\":\"list_accounts\",\"credits_consumed\":0,\"timestamp\":\"{now}\"}}}}",
                            all.len()
                        )
                        .as_bytes(),
                    );
                    Ok(json_response(StatusCode::OK, Bytes::from(body)))
                }
                Some(raw) => {
                    let account_id = percent_decode(&raw)
                        .filter(|id| valid_account_id(id))
                        .ok_or(GatewayError::InvalidAccount)?;
                    if let Some(c) = &context {
                        let mut fields = c.fields();
                        fields.action = Some("get_account".into());
                        fields.account_id = Some(account_id.clone());
                    }
                    let data = layer
                        .directory
                        .detail(&tenant, &account_id, &request_id)
                        .await?;
                    let mut body = Vec::with_capacity(data.len() + 160);
                    body.extend_from_slice(b"{\"success\":true,\"data\":");
                    body.extend_from_slice(&data);
                    body.extend_from_slice(
                        b",\"metadata\":{\"action\":\"get_account\",\"account_id\":",
                    );
                    let _ = serde_json::to_writer(&mut body, &account_id);
                    body.extend_from_slice(
                        format!(",\"credits_consumed\":0,\"timestamp\":\"{now}\"}}}}").as_bytes(),
                    );
                    Ok(json_response(StatusCode::OK, Bytes::from(body)))
                }
            }
        }))
    }
}

/// `limit` (1 to 500, default 100) and `offset` (default 0) from the query.
fn paging(query: Option<&str>) -> Result<(usize, usize), GatewayError> {
    let (mut limit, mut offset) = (DEFAULT_LIMIT, 0usize);
    let mut seen = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || value.parse::<usize>().ok();
        // A repeated parameter has no one meaning (first wins? last?): refused.
        let repeated = match name {
            "limit" => std::mem::replace(&mut seen.0, true),
            "offset" => std::mem::replace(&mut seen.1, true),
            _ => false,
        };
        if repeated {
            return Err(GatewayError::InvalidParams(format!(
                "{name} is given more than once"
            )));
        }
        match name {
            "limit" => {
                limit = number()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        GatewayError::InvalidParams(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "offset" => {
                offset = number().ok_or_else(|| {
                    GatewayError::InvalidParams("offset must be a non-negative integer".into())
                })?;
            }
            // Other parameters mean nothing here; like the upstream, ignore them.
            _ => {}
        }
    }
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_has_defaults_and_bounds() {
        assert_eq!(paging(None).unwrap(), (100, 0));
        assert_eq!(paging(Some("limit=5&offset=10")).unwrap(), (5, 10));
        assert_eq!(paging(Some("offset=3&x=y")).unwrap(), (100, 3));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "offset=-1",
            "offset=",
            "limit=5&limit=6",
            "offset=1&limit=2&offset=1",
        ] {
            assert!(paging(Some(bad)).is_err(), "{bad}");
        }
    }
}
