//! The credit ledger: reserve before the upstream call, settle or release after.
//!
//! A miss reserves its estimate; the reservation succeeds only if
//! `used + reserved + estimate <= budget`, atomically, so concurrent requests
//! can never together overspend. Settling records what the upstream really
//! charged; releasing (on any error) frees the reservation. Budgets are passed
//! with every call, so a budget changed in the config applies at once.

mod alerts;
mod book;
pub mod history;
mod hits;
mod idempotency;
mod memory;
mod period;
mod redis;
mod sqlite;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{Budget, Period};

pub use self::redis::RedisLedger;
pub use alerts::{Alert, OutboxEntry};
pub use idempotency::{Fingerprint, IdempotencyBegin, IdempotencyTable, StoredAnswer};
pub use memory::MemoryLedger;
pub use period::{period_end, period_key};
pub use sqlite::{SqliteLedger, read_usage};

/// Credits held for one in-flight upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique per ledger.
    pub id: u64,
    /// The tenant charged.
    pub tenant: Arc<str>,
    /// The budget period the credits count in (e.g. `2026-11-27`, `2026-W48`).
    pub period: String,
    /// Credits held.
    pub amount: u64,
}

/// A tenant's position in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    /// Credits settled.
    pub used: u64,
    /// Credits held by in-flight calls.
    pub reserved: u64,
    /// The budget; `None` is unlimited.
    pub limit: Option<u64>,
}

impl Balance {
    /// What can still be reserved; `None` when unlimited.
    pub fn remaining(&self) -> Option<u64> {
        self.limit
            .map(|l| l.saturating_sub(self.used.saturating_add(self.reserved)))
    }
}

/// A tenant's usage for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The tenant.
    pub tenant: String,
    /// Budget period (`day`, ..., or `total` when unlimited).
    pub period: Period,
    /// The period's key.
    pub period_key: String,
    /// Balance in that period.
    pub balance: Balance,
    /// Upstream calls settled in the period.
    pub requests: u64,
    /// Cache hits served in the period.
    pub cache_hits: u64,
    /// Credits the upstream would have charged for those hits.
    pub credits_saved: u64,
    /// Requests answered from another request's upstream call (coalesced)
    /// in the period.
    pub coalesced: u64,
    /// Credits those coalesced answers would have cost.
    pub credits_saved_coalesced: u64,
    /// Spend and savings of the last hour and day, minute by minute.
    pub recent: history::Recent,
    /// Credits of reservations left open by a crash, counted as spent
    /// (the upstream may have billed them). Included in `balance.used`.
    pub orphaned: u64,
}

/// What spared a request its own upstream call, for the savings statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    /// A fresh cached page answered (`cache: hit`).
    Cache,
    /// Another request's upstream call answered (`cache: coalesced`).
    Coalescing,
}

/// Why the ledger said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The budget cannot cover the estimate.
    #[error("insufficient credits: need {needed}, {remaining} remaining")]
    Insufficient {
        /// The estimate.
        needed: u64,
        /// What was left.
        remaining: u64,
    },
    /// The ledger's store cannot be reached.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// Where credits and idempotency keys are recorded. Implementations:
/// [`MemoryLedger`], [`SqliteLedger`], [`RedisLedger`].
pub trait Ledger: Send + Sync + 'static {
    /// Holds `estimate` credits for `tenant`, or fails with [`LedgerError::Insufficient`].
    /// `request_id` is recorded with the reservation for audit. A durable ledger
    /// returns only once the reservation would survive a crash.
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>>;

    /// Turns a reservation into spend of `actual` credits (lower or higher than held).
    /// Settling or releasing a reservation that is already settled or released
    /// changes nothing (idempotent per reservation).
    fn settle(
        &self,
        reservation: Reservation,
        actual: u64,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>>;

    /// Frees a reservation after a failed call.
    fn release(
        &self,
        reservation: Reservation,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>>;

    /// The tenant's balance in the current period.
    fn balance<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>>;

    /// Counts a request answered without an upstream call of its own, by
    /// `by`, that saved `credits_saved`, and returns the tenant's balance:
    /// all such an answer asks of the ledger, in one call (under one lock
    /// where the implementation has one). These counts are statistics: a
    /// durable ledger may keep them in memory for a second before writing.
    fn saved<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        by: Saving,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>>;

    /// [`Ledger::saved`] by a cache hit.
    fn hit<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        self.saved(tenant, budget, Saving::Cache, credits_saved)
    }

    /// [`Ledger::saved`] by coalescing (answered from another request's call).
    fn coalesced<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        self.saved(tenant, budget, Saving::Coalescing, credits_saved)
    }

    /// Usage of each `(tenant, budget)` in its current period.
    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>>;

    /// Claims `key` (an `Idempotency-Key`, per tenant) for the request whose
    /// fingerprint is `fingerprint`, or says what the key already holds.
    /// [`IdempotencyBegin::Started`] is returned only once the claim would
    /// survive a crash, so a write claimed here is never sent twice: after a
    /// crash the claim reads as [`IdempotencyBegin::Orphaned`]. Claims and
    /// answers are kept for `ttl`, then forgotten.
    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<IdempotencyBegin, LedgerError>>;

    /// Stores the answer of a claimed key (or replaces an orphaned claim's),
    /// durably before it returns; kept for `ttl` from now.
    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        answer: StoredAnswer,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Gives a claim up: the request ended in a way that changed nothing
    /// (refused before the upstream, or a failure the upstream never acted
    /// on), so a retry with the same key may run it again.
    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Fires `alert` unless its id (tenant, period key, budget and
    /// threshold) already fired (on any replica, before any restart): `Ok(true)` only for the
    /// one call that fired it. With `deliver`, the alert is queued in the
    /// outbox in the same atomic step, so it is sent once it has fired.
    fn alert_fire<'a>(
        &'a self,
        alert: &'a Alert,
        deliver: bool,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        let _ = (alert, deliver);
        Box::pin(std::future::ready(Err(no_alerts())))
    }

    /// Up to `limit` outbox entries due at `now_ms` (Unix milliseconds),
    /// each leased for `lease`: not due again for anyone until then, unless
    /// [`Ledger::outbox_retry`] says otherwise.
    fn outbox_take(
        &self,
        now_ms: i64,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, LedgerError>> {
        let _ = (now_ms, lease, limit);
        Box::pin(std::future::ready(Err(no_alerts())))
    }

    /// Removes a delivered (or abandoned) entry from the outbox.
    fn outbox_done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        let _ = id;
        Box::pin(std::future::ready(Err(no_alerts())))
    }

    /// Sets when an entry is next attempted (Unix milliseconds).
    fn outbox_retry<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let _ = (id, next_attempt_ms);
        Box::pin(std::future::ready(Err(no_alerts())))
    }

    /// Waits until everything recorded so far is durable (at shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether the ledger's store can be reached now (for `/readyz`).
    fn health(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// What a ledger without an alert store answers (a test's wrapper, say):
/// alerts are then not fired, and the gateway says so in its log.
fn no_alerts() -> LedgerError {
    LedgerError::Unavailable("this ledger keeps no budget alerts".into())
}

/// What a request to the upstream is expected to cost: `ceil(count / 10)`, at least 1.
pub fn estimate_viewers(count: u32) -> u64 {
    u64::from(count).div_ceil(10).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_price_list() {
        assert_eq!(estimate_viewers(0), 1);
        assert_eq!(estimate_viewers(1), 1);
        assert_eq!(estimate_viewers(10), 1);
        assert_eq!(estimate_viewers(11), 2);
        assert_eq!(estimate_viewers(100), 10);
    }
}
