//! The balance task: checks every budgeted tenant's balance against its
//! thresholds, so spend no settle here reported still fires its alerts.
//!
//! A settle on this gateway is checked as it happens ([`Alerts::check`]).
//! Spend can also grow behind its back: reservations a crash left open are
//! counted as spent when the SQLite ledger reopens its file, or by the Redis
//! sweeper (the tenant may then be refused every later request, so no
//! settle would ever look again), and other replicas charge the same
//! budgets. So this task reads each budgeted tenant's balance and hands it
//! to the same check: once the gateway gives it its tenants (at start),
//! again after each reload, and every [`CHECK_EVERY`] on the gateway's
//! clock. The check's memory of what fired keeps a quiet round to one
//! balance read per budgeted tenant; firing stays the ledger's atomic
//! claim, so replicas watching the same ledger fire each threshold once.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::Alerts;
use crate::clock::Clock;

/// How often balances are checked, on the gateway's clock.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(30);

/// How often the task looks at the gateway's clock (real time): a fake
/// clock moved past [`CHECK_EVERY`] is noticed within this.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Runs until `stopped` says so (or its sender, or the alerts, are dropped).
pub(super) async fn run(
    alerts: Weak<Alerts>,
    clock: Clock,
    recheck: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    // None: check at the next look (no round yet, or new tenants).
    let mut next: Option<Instant> = None;
    loop {
        if *stopped.borrow() {
            return;
        }
        if next.is_none_or(|at| clock.now() >= at) {
            let Some(alerts) = alerts.upgrade() else {
                return;
            };
            if alerts.check_all().await {
                next = Some(clock.now() + CHECK_EVERY);
            }
        }
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = recheck.notified() => next = None,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

impl Alerts {
    /// One round: every budgeted tenant's balance through [`Alerts::check`].
    /// False when there are no tenants to check yet.
    async fn check_all(&self) -> bool {
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(tenants) = tenants else {
            return false;
        };
        for tenant in tenants.iter() {
            let Some(budget) = tenant.budget.filter(|b| b.credits > 0) else {
                continue;
            };
            match self.ledger.balance(&tenant.id, Some(budget)).await {
                Ok(balance) => self.check(tenant, balance).await,
                // The ledger down: the next round (or settle) looks again.
                Err(error) => {
                    tracing::debug!(tenant = &*tenant.id, %error, "balance not checked for alerts");
                }
            }
        }
        true
    }
}
