//! Shadow mode: a tenant with `enforce: false` is never refused by its rate
//! limit or its budget; what enforcement would have refused is logged and
//! counted instead.
//!
//! Two stages consult it: the rate-limit layer (a would-be 429) and the miss
//! path's reserve (a would-be 402). Each would-be refusal writes one
//! `would_block` line (tenant, kind, request_id; for the budget also the
//! credits needed and remaining) and adds one to
//! `viewgate_shadow_blocks_total{tenant,kind}`. The request then goes on as
//! if the tenant had room, and its spend is recorded in full in the tenant's
//! period, so `usage` shows the period's real use above the budget (with
//! nothing remaining, never a wrapped figure).
//!
//! What protects the gateway rather than the tenant's plan stays enforced in
//! shadow mode: `tenants[].max_in_flight`, `server.max_in_flight`, and the
//! client's own `x-max-credits` cap.

use crate::config::Budget;
use crate::context::RequestContext;
use crate::credits::Credits;
use crate::error::GatewayError;
use crate::ledger::{LedgerError, Reservation};
use crate::metrics::Metrics;
use crate::tenant::Tenant;

/// Target of the `would_block` lines.
pub(crate) const SHADOW_TARGET: &str = "viewgate::shadow";

/// Which enforcement would have refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The tenant's rate limit (a 429).
    RateLimit,
    /// The tenant's budget (a 402).
    Budget,
}

impl Kind {
    /// The `kind` label and log field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::RateLimit => "rate_limit",
            Kind::Budget => "budget",
        }
    }
}

/// Records that enforcement would have refused this request: one
/// `would_block` line and one count.
pub(crate) fn would_block(
    metrics: &Metrics,
    tenant: &Tenant,
    kind: Kind,
    request_id: &str,
    credits: Option<(u64, u64)>,
) {
    metrics.shadow_block(&tenant.id, kind.as_str());
    let (needed, remaining) = credits.unzip();
    tracing::info!(
        target: SHADOW_TARGET,
        request_id,
        tenant = &*tenant.id,
        kind = kind.as_str(),
        needed,
        remaining,
        "would_block"
    );
}

/// Holds `amount` credits for one upstream call. A tenant in shadow mode
/// whose budget cannot cover them gets them held anyway, in its budget's
/// period, after a `would_block` line; everyone else gets what
/// [`Credits::reserve`] gives.
pub(crate) async fn reserve(
    credits: &Credits,
    metrics: &Metrics,
    tenant: &Tenant,
    amount: u64,
    context: &RequestContext,
) -> Result<Reservation, GatewayError> {
    let request_id = context.request_id_str();
    let refused = match credits.reserve(tenant, amount, request_id).await {
        Err(GatewayError::InsufficientCredits { needed, remaining }) if !tenant.enforce => {
            (needed, remaining)
        }
        other => return other,
    };
    would_block(metrics, tenant, Kind::Budget, request_id, Some(refused));
    // The same period, with no ceiling: the ledger records the spend where
    // the budget counts it, and the balance read against the real budget
    // shows use above it and nothing left (saturating, never wrapping).
    let unbounded = tenant.budget.map(|b| Budget {
        credits: u64::MAX,
        period: b.period,
    });
    credits
        .ledger()
        .reserve(&tenant.id, unbounded, amount, request_id)
        .await
        .map_err(|e| match e {
            LedgerError::Unavailable(detail) => GatewayError::ServiceUnavailable { detail },
            // Cannot happen with no ceiling; answered as it would be enforced.
            LedgerError::Insufficient { needed, remaining } => {
                GatewayError::InsufficientCredits { needed, remaining }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use http::HeaderValue;

    use crate::clock::Clock;
    use crate::config::{Period, TenantConfig};

    use crate::ledger::{Ledger, MemoryLedger};

    fn tenant(clock: &Clock, enforce: bool) -> Tenant {
        let config = TenantConfig {
            budget: Some(Budget {
                credits: 5,
                period: Period::Day,
            }),
            enforce,
            ..TenantConfig::test("crm")
        };
        Tenant::new(&config, clock, None, None)
    }

    #[tokio::test]
    async fn shadow_reserves_past_the_budget_and_enforced_does_not() {
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(clock.clone()));
        let credits = Credits::new(Arc::clone(&ledger));
        let metrics = Metrics::new();
        let context = RequestContext::new(HeaderValue::from_static("r1"), clock.now());

        let enforced = tenant(&clock, true);
        let refused = reserve(&credits, &metrics, &enforced, 6, &context).await;
        assert!(matches!(
            refused,
            Err(GatewayError::InsufficientCredits {
                needed: 6,
                remaining: 5
            })
        ));

        let shadow = tenant(&clock, false);
        let held = reserve(&credits, &metrics, &shadow, 6, &context)
            .await
            .expect("shadow mode holds past the budget");
        let balance = credits.settle(&shadow, held, 7).await;
        assert_eq!(balance.used, 7, "the spend is recorded exactly");
        assert_eq!(balance.remaining(), Some(0), "nothing left, not wrapped");
        let read = ledger.balance("crm", shadow.budget).await.unwrap();
        assert_eq!((read.used, read.remaining()), (7, Some(0)));
        let text = metrics.render();
        assert!(
            text.contains(r#"viewgate_shadow_blocks_total{tenant="crm",kind="budget"} 1"#),
            "{text}"
        );
    }
}
