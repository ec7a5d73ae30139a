//! The miss path: budget reserve → upstream forward (real key) → settle or release.
//!
//! A plain async function rather than a layer: it runs inside the cache
//! stage's single-flight task, once per upstream fetch, not once per request.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderValue;

use crate::call::ApiCall;
use crate::error::GatewayError;
use crate::ledger::{Balance, Ledger, LedgerError};
use crate::tenant::Tenant;
use crate::upstream::{Upstream, UpstreamCall, UpstreamReply};

/// An upstream answer and what it cost the tenant who fetched it.
#[derive(Debug, Clone)]
pub struct Charged {
    /// The upstream's answer.
    pub reply: UpstreamReply,
    /// The tenant's balance after settling.
    pub balance: Balance,
}

/// What the miss path needs.
pub struct MissPath {
    /// Where credits are recorded.
    pub ledger: Arc<dyn Ledger>,
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// Estimates of actions other than `get_viewers`.
    pub estimates: BTreeMap<String, u64>,
}

impl MissPath {
    /// Reserves the call's estimate, calls the upstream, and settles to what
    /// it reported (or releases the reservation on any error).
    pub async fn fetch(
        &self,
        tenant: &Tenant,
        call: &ApiCall,
        request_id: &HeaderValue,
    ) -> Result<Charged, GatewayError> {
        let estimate = call.estimate(&self.estimates);
        let reservation = self
            .ledger
            .reserve(
                &tenant.id,
                tenant.budget,
                estimate,
                request_id.to_str().unwrap_or("-"),
            )
            .await
            .map_err(|e| match e {
                LedgerError::Insufficient { needed, remaining } => {
                    GatewayError::InsufficientCredits { needed, remaining }
                }
                LedgerError::Unavailable(detail) => GatewayError::ServiceUnavailable { detail },
            })?;
        let upstream_call = UpstreamCall {
            path: call.path(),
            account_id: call.account_id.clone(),
            body: call.upstream_body(),
            request_id: request_id.clone(),
        };
        match self.upstream.call(&upstream_call).await {
            Ok(reply) => {
                let balance = match self
                    .ledger
                    .settle(reservation, reply.credits, tenant.budget)
                    .await
                {
                    Ok(balance) => balance,
                    Err(e) => {
                        // The reservation stays open and counts as spent: over-count, never under.
                        tracing::error!(tenant = &*tenant.id, error = %e, "could not settle a charge");
                        Balance::default()
                    }
                };
                Ok(Charged { reply, balance })
            }
            Err(error) => {
                if let Err(e) = self.ledger.release(reservation, tenant.budget).await {
                    tracing::error!(tenant = &*tenant.id, error = %e, "could not release a reservation");
                }
                Err(error)
            }
        }
    }
}
