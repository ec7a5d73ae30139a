//! The miss path: the client's price cap → the tenant's grants and the
//! account's owner → budget reserve → upstream forward (real key) → settle,
//! keep, or release.
//!
//! A `Service<Miss>` ([`MissService`]) rather than a layer: the cache stage
//! calls it once per upstream fetch, not once per request, each time in its
//! own task, so a client that hangs up or a request deadline that passes
//! never cuts a paid call in half: the call still settles, and its charge
//! still reaches the ledger and the log. Being a service, it can be stood in
//! for by a mock in the cache stage's tests.
//!
//! Below it, the upstream is a port ([`Forward`]): [`Upstream`] in
//! production, statically dispatched (no allocation beyond the one boxed
//! future of [`MissService`]); a fake in this module's tests, which drive
//! every ledger outcome without a socket.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::Service;
use tower::util::BoxCloneSyncService;

use crate::call::ApiCall;
use crate::context::RequestContext;
use crate::credits::Credits;
use crate::error::GatewayError;
use crate::ledger::Balance;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::tenant::Tenant;
use crate::upstream::{Upstream, UpstreamCall, UpstreamError, UpstreamReply};

/// An upstream answer and what it cost the tenant who fetched it.
#[derive(Debug, Clone)]
pub(crate) struct Charged {
    /// The upstream's answer.
    pub reply: UpstreamReply,
    /// Credits charged for it (the upstream's own figure, or what was held
    /// when it gave none).
    pub credits: u64,
    /// The tenant's balance after settling.
    pub balance: Balance,
}

/// One fetch: who asks, for what, and the request it belongs to.
#[derive(Clone)]
pub(crate) struct Miss {
    /// The tenant charged.
    pub tenant: Arc<Tenant>,
    /// The call.
    pub call: Arc<ApiCall>,
    /// The request (its id, and where its charge is logged).
    pub context: Arc<RequestContext>,
}

/// The miss path as the cache stage sees it: any service from [`Miss`] to
/// what it was charged.
pub(crate) type MissFetcher = BoxCloneSyncService<Miss, Charged, GatewayError>;

/// What the miss path needs of the upstream: whether some key owns an
/// account, and one logical call (retries included).
pub(crate) trait Forward: Send + Sync + 'static {
    /// Whether some upstream key owns `account_id`.
    fn owns(&self, account_id: &str) -> bool;

    /// Sends `call` upstream.
    fn forward(
        &self,
        call: &UpstreamCall,
    ) -> impl Future<Output = Result<UpstreamReply, UpstreamError>> + Send;
}

impl Forward for Upstream {
    fn owns(&self, account_id: &str) -> bool {
        Upstream::owns(self, account_id)
    }

    fn forward(
        &self,
        call: &UpstreamCall,
    ) -> impl Future<Output = Result<UpstreamReply, UpstreamError>> + Send {
        self.call(call)
    }
}

/// [`MissPath`] as a service.
pub(crate) struct MissService<U = Upstream>(pub Arc<MissPath<U>>);

// Not derived: a derive would ask `U: Clone`, and only the `Arc` is cloned.
impl<U> Clone for MissService<U> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<U: Forward> Service<Miss> for MissService<U> {
    type Response = Charged;
    type Error = GatewayError;
    // Boxed: ledger and upstream I/O.
    type Future = BoxFuture<'static, Result<Charged, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, miss: Miss) -> Self::Future {
        let path = Arc::clone(&self.0);
        Box::pin(async move { path.fetch(&miss.tenant, &miss.call, &miss.context).await })
    }
}

/// What the miss path needs.
pub(crate) struct MissPath<U = Upstream> {
    /// Every ledger call.
    pub credits: Arc<Credits>,
    /// The upstream.
    pub upstream: Arc<U>,
    /// Where overruns and late charges are counted.
    pub metrics: Arc<Metrics>,
    /// Failures that repeat while the upstream is down: logged once, then summed up.
    pub logs: Arc<LogThrottle>,
}

impl<U: Forward> MissPath<U> {
    /// Checks the tenant's grants and the account's owner, reserves the
    /// call's price bound, calls the upstream, then settles to what it
    /// reported, keeps the reservation as spend when the outcome is unknown,
    /// or releases it when the call provably cost nothing.
    pub(crate) async fn fetch(
        &self,
        tenant: &Tenant,
        call: &ApiCall,
        context: &Arc<RequestContext>,
    ) -> Result<Charged, GatewayError> {
        if let Some(capped) = call.above_cap() {
            return Err(capped);
        }
        // Before reserving: a call the tenant may not make, or for an account
        // no upstream key owns, costs no ledger write. (The policy stage
        // refused the first already; checked again because whoever calls
        // the miss path, a background refresh too, must not spend for it.)
        tenant.permits(call)?;
        if !self.upstream.owns(call.routing_account()) {
            return Err(GatewayError::InvalidAccount);
        }
        // A tenant in shadow mode is held past its budget (logged, counted).
        let reservation =
            crate::shadow::reserve(&self.credits, &self.metrics, tenant, call.bound, context)
                .await?;
        let upstream_call = UpstreamCall {
            path: call.path(),
            account_id: call.routing_account().to_string(),
            body: call.upstream_body(),
            request_id: context.request_id.clone(),
            write: call.is_write(),
            get: false,
            context: Some(Arc::clone(context)),
        };
        context.mark_upstream_started();
        match self.upstream.forward(&upstream_call).await {
            Ok(reply) => {
                let held = reservation.amount;
                let credits = reply.credits.unwrap_or_else(|| {
                    tracing::warn!(
                        request_id = context.request_id_str(),
                        action = call.action.as_str(),
                        held,
                        "the upstream reported no credits_consumed; charging what was held"
                    );
                    held
                });
                if credits > held {
                    tracing::warn!(
                        request_id = context.request_id_str(),
                        tenant = &*tenant.id,
                        action = call.action.as_str(),
                        bound = held,
                        charged = credits,
                        "the upstream charged more than the action's price bound; recorded in full"
                    );
                    self.metrics.price_overrun(&call.action);
                }
                let balance = self.credits.settle(tenant, reservation, credits).await;
                self.charge(tenant, context, credits);
                Ok(Charged {
                    reply,
                    credits,
                    balance,
                })
            }
            Err(UpstreamError::Unknown { timeout, detail }) => {
                // The upstream may have acted and billed: what was held is spent.
                let credits = reservation.amount;
                // Each one's charge is on its access or settle line anyway.
                if let Some(suppressed) = self.logs.admit("miss.outcome_unknown") {
                    tracing::warn!(
                        request_id = context.request_id_str(),
                        tenant = &*tenant.id,
                        action = call.action.as_str(),
                        credits,
                        detail = detail.as_str(),
                        suppressed,
                        "upstream outcome unknown; not retried, reservation kept as spend"
                    );
                }
                self.credits.settle(tenant, reservation, credits).await;
                self.charge(tenant, context, credits);
                Err(GatewayError::OutcomeUnknown {
                    timeout,
                    credits,
                    detail,
                })
            }
            Err(UpstreamError::Free(error)) => {
                self.credits.release(tenant, reservation).await;
                Err(error)
            }
        }
    }

    fn charge(&self, tenant: &Tenant, context: &RequestContext, credits: u64) {
        if context.charge(credits) {
            // The access line and its metrics are written already.
            self.metrics.charged(&tenant.id, credits);
        }
    }
}

#[cfg(test)]
mod tests;
