//! Spending credits in Redis: reserve, then settle or release.
//!
//! Each step is one script run on the server (`reserve.lua`, `close.lua`):
//! the budget check and the hold happen atomically, so replicas reserving at
//! once can never together overspend. The reservation id is drawn here
//! (64 random bits) before the call, so a call whose answer was lost is sent
//! again without holding or charging twice, and a reservation whose outcome
//! is unknown is released in the background.

use std::sync::Arc;

use super::history::{KEEP_MS, charge_field};
use super::keys::{id_hex, open_set, period_hash, reservation_hash, ttl_ms};
use super::{Inner, MAX_COUNT};
use crate::config::Budget;
use crate::ledger::{Balance, LedgerError, Reservation};
use crate::redis::{Op, RESPONSE_TIMEOUT, Retry};

impl Inner {
    pub(super) async fn reserve(
        self: Arc<Self>,
        tenant: Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: String,
    ) -> Result<Reservation, LedgerError> {
        let (period, expires_at) = self.current_period(budget);
        let estimate = estimate.min(MAX_COUNT);
        let id =
            getrandom::u64().map_err(|e| self.failure(format!("no random reservation id: {e}")))?;
        let limit = budget.map_or_else(
            || "-1".to_string(),
            |b| b.credits.min(MAX_COUNT).to_string(),
        );
        let ttl = ttl_ms(expires_at, self.clock.wall());
        let mut invocation = self.scripts.reserve.prepare_invoke();
        invocation
            .key(period_hash(&tenant, &period))
            .key(reservation_hash(&tenant, id))
            .key(open_set(&tenant))
            .arg(limit)
            .arg(estimate)
            .arg(id_hex(id))
            .arg(&period)
            .arg(&request_id)
            .arg(ttl)
            .arg(&*tenant);
        let reply = self
            .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
            .await;
        let (held, used, reserved) = match reply.and_then(|r| self.triple(&r)) {
            Ok(triple) => triple,
            Err(error) => {
                // The script may have run with its answer lost: free what it
                // may hold rather than leave it for the sweeper to charge.
                self.release_later(Arc::clone(&tenant), period, id);
                return Err(error);
            }
        };
        self.remember((tenant.to_string(), period.clone()), used, reserved);
        if held == 0 {
            let remaining = budget
                .map_or(u64::MAX, |b| b.credits)
                .saturating_sub(used.saturating_add(reserved));
            return Err(LedgerError::Insufficient {
                needed: estimate,
                remaining,
            });
        }
        Ok(Reservation {
            id,
            tenant,
            period,
            amount: estimate,
        })
    }

    /// Releases reservation `id` in the background after a reserve whose
    /// outcome is unknown. Releasing an id that was never held changes nothing.
    fn release_later(self: &Arc<Self>, tenant: Arc<str>, period: String, id: u64) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            let reservation = Reservation {
                id,
                tenant,
                period,
                amount: 0,
            };
            for _ in 0..3 {
                tokio::time::sleep(RESPONSE_TIMEOUT).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if inner.close(reservation.clone(), None, None).await.is_ok() {
                    return;
                }
            }
            // Still unreachable: the sweeper will count it, if it exists.
        });
    }

    /// Settles (`actual` is `Some`) or releases; answers the current period's balance.
    pub(super) async fn close(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> Result<Balance, LedgerError> {
        let tenant = &reservation.tenant;
        let (current, _) = self.current_period(budget);
        // A charge goes into the spend history in the same step.
        let (history_hash, history_field) = charge_field(tenant, self.clock.wall());
        let mut invocation = self.scripts.close.prepare_invoke();
        invocation
            .key(reservation_hash(tenant, reservation.id))
            .key(open_set(tenant))
            .key(period_hash(tenant, &reservation.period))
            .key(period_hash(tenant, &current))
            .key(history_hash)
            .arg(id_hex(reservation.id))
            .arg(actual.map_or_else(String::new, |a| a.min(MAX_COUNT).to_string()))
            .arg(history_field)
            .arg(KEEP_MS);
        let reply = self
            .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
            .await?;
        let (_, used, reserved) = self.triple(&reply)?;
        self.remember((tenant.to_string(), current), used, reserved);
        Ok(Balance {
            used,
            reserved,
            limit: budget.map(|b| b.credits),
        })
    }
}
