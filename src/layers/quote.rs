//! Quotes: a request with `x-viewgate-quote: 1` is priced, not run.
//!
//! Sits after the policy stage, so authentication, the rate limit, parsing
//! and the tenant's allow-lists apply as to any request (and their errors
//! are answered as usual), and before idempotency and the cache stage, so a
//! quote never claims an `Idempotency-Key`, reserves or charges credits, or
//! calls the upstream. It answers 200 in the V2 success shape:
//!
//! ```json
//! {"success": true,
//!  "data": {"quote": {"price_bound": 3, "cached": "stale", "would_charge": 3,
//!                     "degraded": false, "credits_remaining": 40, "budget_covers": true}},
//!  "metadata": {"action": "get_viewers", "account_id": "acc-1", "credits_consumed": 0,
//!               "timestamp": "2026-11-27T15:00:00Z", "quote": true}}
//! ```
//!
//! - `price_bound`: what a miss would reserve (the action's price rule).
//! - `cached`: `fresh` (a hit would answer), `stale` (an expired page the
//!   cache still holds), or `none` (writes and uncached reads always).
//! - `would_charge`: at most what the request would cost now: 0 when a
//!   fresh page would answer, or when the tenant is out of budget in stale
//!   mode and a stale page would answer (`degraded: true`); else the bound.
//! - `credits_remaining`: the tenant's budget left (`null` when unlimited).
//! - `budget_covers`: whether that covers `would_charge` (as the budget
//!   reads, also for a tenant in shadow mode, which is never refused).
//!
//! `/v2/login` and `/v2/checkpoint` cannot be quoted (400): their bodies are
//! judged by the upstream alone, so a quote could not tell a good one from
//! a bad one. A quote does not look at `cache-control` or `x-max-credits`. The answer
//! carries `x-viewgate-quote: 1`; any other value of the request header is
//! 400 `INVALID_PARAMS`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use serde_json::json;
use tower::{Layer, Service};

use super::{StageResult, context};
use crate::cache::PageCache;
use crate::call::{ApiCall, CallParams};
use crate::clock::{Clock, rfc3339};
use crate::config::OnBudgetExhausted;
use crate::credits::Credits;
use crate::degraded;
use crate::error::GatewayError;
use crate::response::{Body, json_response};
use crate::tenant::Tenant;

/// The request header asking for a quote, and the answer's mark.
pub(crate) static X_VIEWGATE_QUOTE: HeaderName = HeaderName::from_static("x-viewgate-quote");

/// Answers quotes; passes every other request on.
#[derive(Clone)]
pub(crate) struct QuoteLayer {
    shared: Arc<Shared>,
}

struct Shared {
    cache: PageCache,
    credits: Arc<Credits>,
    clock: Clock,
    cached_actions: HashSet<String>,
}

impl QuoteLayer {
    /// Quotes from `cache` (what is held) and `credits` (what is left), for
    /// the cache stage's `cached_actions`.
    pub(crate) fn new(
        cache: PageCache,
        credits: Arc<Credits>,
        clock: Clock,
        cached_actions: HashSet<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                credits,
                clock,
                cached_actions,
            }),
        }
    }
}

impl<S> Layer<S> for QuoteLayer {
    type Service = Quote<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Quote {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// See [`QuoteLayer`].
#[derive(Clone)]
pub(crate) struct Quote<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Whether the request asks for a quote: `Ok(false)` without the header,
/// 400 for a value other than `1`.
fn asks_for_quote(headers: &http::HeaderMap) -> Result<bool, GatewayError> {
    let mut values = headers.get_all(&X_VIEWGATE_QUOTE).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(false),
        (Some(v), None) if v.as_bytes() == b"1" => Ok(true),
        _ => Err(GatewayError::InvalidParams(
            "x-viewgate-quote must be 1 (sent once) to ask for a quote".into(),
        )),
    }
}

impl<S> Service<Request<ApiCall>> for Quote<S>
where
    S: Service<Request<ApiCall>, Response = http::Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = GatewayError;
    // Other requests pass through unboxed; a quote (it reads the cache and
    // the ledger: real I/O with the shared tier or Redis) is boxed.
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = StageResult> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ApiCall>) -> Self::Future {
        // A quote claims no Idempotency-Key, but one it was sent must still
        // be well formed: the same request without the quote would be 400.
        let asked = asks_for_quote(request.headers()).and_then(|asked| {
            if asked {
                super::idempotency::idempotency_key(request.headers())?;
                // A connection's body is judged by the upstream alone, which a
                // quote never asks: a quote of it could only say "fine".
                if matches!(request.body().params, CallParams::Connect(_)) {
                    return Err(GatewayError::InvalidParams(format!(
                        "/v2/{} connects an account and cannot be quoted; its price is fixed (see the README)",
                        request.body().action
                    )));
                }
            }
            Ok(asked)
        });
        match asked {
            Ok(false) => Either::Left(self.inner.call(request)),
            Err(e) => Either::Right(Box::pin(std::future::ready(Err(e)))),
            Ok(true) => {
                let shared = Arc::clone(&self.shared);
                if let Some(context) = context(&request) {
                    context.fields().quote = true;
                }
                Either::Right(Box::pin(async move { shared.quote(request).await }))
            }
        }
    }
}

/// How the cache stands for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    Fresh,
    Stale,
    None,
}

impl Cached {
    fn as_str(self) -> &'static str {
        match self {
            Cached::Fresh => "fresh",
            Cached::Stale => "stale",
            Cached::None => "none",
        }
    }
}

impl Shared {
    async fn quote(&self, request: Request<ApiCall>) -> StageResult {
        let tenant = request
            .extensions()
            .get::<Arc<Tenant>>()
            .cloned()
            .ok_or(GatewayError::InvalidApiKey)?;
        let call = request.body();
        let cached = self.cached(call).await;
        let balance = self.credits.balance(&tenant).await;
        let remaining = balance.remaining();
        let covers = |credits: u64| remaining.is_none_or(|left| left >= credits);
        let degraded = cached == Cached::Stale
            && tenant.on_budget_exhausted == OnBudgetExhausted::Stale
            && tenant.enforce
            && !covers(call.bound);
        let would_charge = if cached == Cached::Fresh || degraded {
            0
        } else {
            call.bound
        };
        let body = json!({
            "success": true,
            "data": {"quote": {
                "price_bound": call.bound,
                "cached": cached.as_str(),
                "would_charge": would_charge,
                "degraded": degraded,
                "credits_remaining": remaining,
                "budget_covers": covers(would_charge),
            }},
            "metadata": {
                "action": call.action,
                "account_id": call.account_id,
                "credits_consumed": 0,
                "timestamp": rfc3339(self.clock.wall()),
                "credits_remaining": remaining,
                "quote": true,
            },
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = json_response(StatusCode::OK, Bytes::from(bytes));
        let headers = response.headers_mut();
        headers.insert(X_VIEWGATE_QUOTE.clone(), HeaderValue::from_static("1"));
        if tenant.budget.is_some()
            && let Some(left) = remaining
        {
            headers.insert(
                HeaderName::from_static("x-credits-remaining"),
                HeaderValue::from(left),
            );
        }
        Ok(response)
    }

    /// What the cache holds for `call`, judged as the cache stage would.
    async fn cached(&self, call: &ApiCall) -> Cached {
        // The cache stage's own rule: reads of a cached action with a key.
        let key = call
            .cache_key()
            .filter(|_| !call.is_write() && self.cached_actions.contains(&call.action));
        let Some(key) = key else {
            return Cached::None;
        };
        let Some(page) = self.cache.get(&key).await else {
            return Cached::None;
        };
        let now = self.clock.now();
        if page.is_fresh(now) {
            Cached::Fresh
        } else if degraded::is_held_stale(&page, now) {
            Cached::Stale
        } else {
            Cached::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_one_asks_for_a_quote() {
        let mut h = http::HeaderMap::new();
        assert!(!asks_for_quote(&h).unwrap());
        h.insert(&X_VIEWGATE_QUOTE, HeaderValue::from_static("1"));
        assert!(asks_for_quote(&h).unwrap());
        h.insert(&X_VIEWGATE_QUOTE, HeaderValue::from_static("yes"));
        assert!(asks_for_quote(&h).is_err());
        h.insert(&X_VIEWGATE_QUOTE, HeaderValue::from_static("1"));
        h.append(&X_VIEWGATE_QUOTE, HeaderValue::from_static("1"));
        assert!(asks_for_quote(&h).is_err(), "sent twice");
    }
}
