//! Credits: every ledger call a request makes, in one place.
//!
//! The cache stage (hits) and the miss path (reserve, then settle or
//! release) both go through [`Credits`], so budget logic has one home. It
//! also keeps the last balance the ledger reported for each tenant, so an
//! answer can always say what a budgeted tenant has left (design.md: never
//! `null`), even while the ledger cannot be reached; and it retries settles
//! the ledger refused until they are recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alerts::Alerts;
use crate::config::Budget;
use crate::error::GatewayError;
use crate::ledger::{Balance, Ledger, LedgerError, Reservation};
use crate::tenant::Tenant;

/// The request path's view of the ledger.
pub(crate) struct Credits {
    ledger: Arc<dyn Ledger>,
    /// The last balance read per tenant, for answers the ledger cannot give.
    last: Mutex<HashMap<Arc<str>, Balance>>,
    /// Budget alerts, checked after each settle.
    alerts: Option<Arc<Alerts>>,
}

impl Credits {
    /// Credits recorded in `ledger`.
    pub(crate) fn new(ledger: Arc<dyn Ledger>) -> Self {
        Self {
            ledger,
            last: Mutex::new(HashMap::new()),
            alerts: None,
        }
    }

    /// These credits, firing budget alerts through `alerts`.
    pub(crate) fn with_alerts(mut self, alerts: Arc<Alerts>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// The budget alerts, when they are checked.
    pub(crate) fn alerts(&self) -> Option<&Arc<Alerts>> {
        self.alerts.as_ref()
    }

    /// The ledger underneath.
    pub(crate) fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Holds `amount` credits for one upstream call.
    pub(crate) async fn reserve(
        &self,
        tenant: &Tenant,
        amount: u64,
        request_id: &str,
    ) -> Result<Reservation, GatewayError> {
        self.ledger
            .reserve(&tenant.id, tenant.budget, amount, request_id)
            .await
            .map_err(|e| match e {
                LedgerError::Insufficient { needed, remaining } => {
                    self.remember(
                        tenant,
                        Balance {
                            used: tenant
                                .budget
                                .map_or(0, |b| b.credits.saturating_sub(remaining)),
                            reserved: 0,
                            limit: tenant.budget.map(|b| b.credits),
                        },
                    );
                    GatewayError::InsufficientCredits { needed, remaining }
                }
                LedgerError::Unavailable(detail) => GatewayError::ServiceUnavailable { detail },
            })
    }

    /// Records `actual` credits for `reservation` (more or less than held).
    /// If the ledger refuses, the settle is retried in the background until
    /// it is recorded, and the balance answered is the ledger's (or the last
    /// one known) with this charge taken off.
    pub(crate) async fn settle(
        &self,
        tenant: &Tenant,
        reservation: Reservation,
        actual: u64,
    ) -> Balance {
        match self
            .ledger
            .settle(reservation.clone(), actual, tenant.budget)
            .await
        {
            Ok(balance) => {
                // Spend only grows here (and on an unknown outcome, which
                // settles at what was held): the one place a threshold is crossed.
                if let Some(alerts) = &self.alerts {
                    alerts.check(tenant, balance).await;
                }
                self.remember(tenant, balance)
            }
            Err(e) => {
                tracing::error!(
                    tenant = &*tenant.id,
                    held = reservation.amount,
                    charged = actual,
                    error = %e,
                    "could not settle a charge; retrying in the background"
                );
                let held = reservation.amount;
                close_later(
                    Arc::clone(&self.ledger),
                    reservation,
                    Some(actual),
                    tenant.budget,
                );
                // The reservation is still open in the ledger and counts as
                // held; what the upstream charged beyond it is not in yet.
                let mut balance = self.balance(tenant).await;
                balance.used = balance.used.saturating_add(actual.saturating_sub(held));
                balance
            }
        }
    }

    /// Frees `reservation` after a call that cost nothing.
    pub(crate) async fn release(&self, tenant: &Tenant, reservation: Reservation) -> Balance {
        match self
            .ledger
            .release(reservation.clone(), tenant.budget)
            .await
        {
            Ok(balance) => self.remember(tenant, balance),
            Err(e) => {
                tracing::error!(tenant = &*tenant.id, error = %e, "could not release a reservation; retrying in the background");
                close_later(Arc::clone(&self.ledger), reservation, None, tenant.budget);
                self.last_known(tenant)
            }
        }
    }

    /// Counts a cache hit that saved `saved` credits; the tenant's balance.
    pub(crate) async fn hit(&self, tenant: &Tenant, saved: u64) -> Balance {
        match self.ledger.hit(&tenant.id, tenant.budget, saved).await {
            Ok(balance) => self.remember(tenant, balance),
            // A hit is served even when the ledger cannot be read.
            Err(_) => self.last_known(tenant),
        }
    }

    /// Counts an answer coalesced onto another request's upstream call that
    /// saved `saved` credits; the tenant's balance.
    pub(crate) async fn coalesced(&self, tenant: &Tenant, saved: u64) -> Balance {
        match self
            .ledger
            .coalesced(&tenant.id, tenant.budget, saved)
            .await
        {
            Ok(balance) => self.remember(tenant, balance),
            Err(_) => self.last_known(tenant),
        }
    }

    /// The tenant's balance (the last one known if the ledger cannot answer).
    pub(crate) async fn balance(&self, tenant: &Tenant) -> Balance {
        match self.ledger.balance(&tenant.id, tenant.budget).await {
            Ok(balance) => self.remember(tenant, balance),
            Err(_) => self.last_known(tenant),
        }
    }

    fn remember(&self, tenant: &Tenant, balance: Balance) -> Balance {
        if tenant.budget.is_some() {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            match last.get_mut(&tenant.id) {
                Some(slot) => *slot = balance,
                None => {
                    last.insert(Arc::clone(&tenant.id), balance);
                }
            }
        }
        balance
    }

    /// The last balance known for `tenant`, with its budget as configured
    /// now. Never unlimited for a budgeted tenant: before any figure is
    /// known, nothing is known to be left.
    fn last_known(&self, tenant: &Tenant) -> Balance {
        let Some(budget) = tenant.budget else {
            return Balance::default();
        };
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get(&tenant.id) {
            Some(balance) => Balance {
                limit: Some(budget.credits),
                ..*balance
            },
            None => Balance {
                used: budget.credits,
                reserved: 0,
                limit: Some(budget.credits),
            },
        }
    }
}

/// Settles (`Some(actual)`) or releases (`None`) a reservation once the
/// ledger takes it, retrying with backoff for as long as the process runs.
/// Until then the reservation stays open and counts in full; that is an
/// over-count unless the upstream charged more than was held, which only the
/// settle can record (settles are idempotent per reservation, so retrying is
/// safe). If the process stops first, the next start counts the reservation
/// as spent at its held amount: the error log line names both amounts.
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
