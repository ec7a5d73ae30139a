//! The miss path: budget reserve → upstream forward (real key) → settle or release.
//!
//! A plain async function rather than a layer: it runs inside the cache
//! stage's single-flight task, once per upstream fetch, not once per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::call::ApiCall;
use crate::config::Budget;
use crate::error::GatewayError;
use crate::ledger::{Balance, Ledger, LedgerError, Reservation};
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
                    .settle(reservation.clone(), reply.credits, tenant.budget)
                    .await
                {
                    Ok(balance) => balance,
                    Err(e) => {
                        tracing::error!(
                            tenant = &*tenant.id,
                            held = reservation.amount,
                            charged = reply.credits,
                            error = %e,
                            "could not settle a charge; retrying in the background"
                        );
                        close_later(
                            Arc::clone(&self.ledger),
                            reservation,
                            Some(reply.credits),
                            tenant.budget,
                        );
                        Balance::default()
                    }
                };
                Ok(Charged { reply, balance })
            }
            Err(error) => {
                if let Err(e) = self
                    .ledger
                    .release(reservation.clone(), tenant.budget)
                    .await
                {
                    tracing::error!(tenant = &*tenant.id, error = %e, "could not release a reservation; retrying in the background");
                    close_later(Arc::clone(&self.ledger), reservation, None, tenant.budget);
                }
                Err(error)
            }
        }
    }
}

/// Settles (`Some(actual)`) or releases (`None`) a reservation once the
/// ledger takes it, retrying with backoff for as long as the process runs.
/// Until then the reservation stays open and counts in full; that is an
/// over-count unless the upstream charged more than was held, which only the
/// settle can record (settles are idempotent per reservation, so retrying is
/// safe). If the process stops first, the next start counts the reservation
/// as spent at its held amount: the error log line above names both amounts.
fn close_later(
    ledger: Arc<dyn Ledger>,
    reservation: Reservation,
    actual: Option<u64>,
    budget: Option<Budget>,
) {
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            let closed = match actual {
                Some(actual) => ledger.settle(reservation.clone(), actual, budget).await,
                None => ledger.release(reservation.clone(), budget).await,
            };
            if closed.is_ok() {
                tracing::info!(
                    tenant = &*reservation.tenant,
                    "a charge that had failed to settle is recorded"
                );
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    });
}
