//! A ledger in process memory: exact under concurrency, forgotten on restart.
//!
//! One mutex guards a [`Book`] (the accounting shared with the SQLite
//! ledger); every operation is a few map lookups, so the lock is held for
//! well under a microsecond.

use crate::ledger::Saving;
use jiff::Timestamp;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::alerts::MemoryAlerts;
use super::book::{Book, budget_period};
use super::history::{Bucket, History, minute_of};
use super::idempotency::MemoryKeys;
use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use super::{Fingerprint, IdempotencyBegin, StoredAnswer};
use crate::clock::Clock;
use crate::config::Budget;

/// The in-memory ledger.
#[derive(Debug)]
pub struct MemoryLedger {
    clock: Clock,
    book: Mutex<Book>,
    /// Spend and savings by minute (locked after `book` when both are);
    /// boxed to keep the ledger small where it is held by value.
    history: Box<Mutex<History>>,
    keys: MemoryKeys,
    // Boxed: rarely used, so it need not make every ledger value larger.
    alerts: Box<Mutex<MemoryAlerts>>,
}

impl MemoryLedger {
    /// An empty ledger reading periods from `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            keys: MemoryKeys::new(clock.clone()),
            clock,
            book: Mutex::new(Book::default()),
            alerts: Box::default(),
            history: Box::new(Mutex::new(History::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // A panic while holding this lock cannot leave an account half-written
        // (every update is a plain field write), so a poisoned lock is still usable.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `event` to `tenant`'s minute of `now` (a reading of the wall clock).
    fn record(&self, tenant: &str, now: Timestamp, event: Bucket) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.add(tenant, minute_of(now), event);
    }

    fn current_period(&self, budget: Option<Budget>) -> String {
        Self::period_at(budget, self.clock.wall())
    }

    /// The key of the budget period containing `now`.
    fn period_at(budget: Option<Budget>, now: Timestamp) -> String {
        period_key(budget_period(budget), now)
    }

    fn finish(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> Balance {
        let now = self.clock.wall();
        let mut book = self.lock();
        // Closing an id that is no longer open changes nothing.
        if book.finish(reservation.id, actual)
            && let Some(actual) = actual
        {
            self.record(&reservation.tenant, now, Bucket::charged(actual));
        }
        // The balance reported is the current period's, which may be a new one.
        book.account(&reservation.tenant, &Self::period_at(budget, now))
            .balance(budget)
    }
}

impl Ledger for MemoryLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        let period = self.current_period(budget);
        let limit = budget.map(|b| b.credits);
        let result = self
            .lock()
            .reserve(tenant, period, limit, estimate, request_id);
        ready(result).boxed()
    }

    fn settle(
        &self,
        reservation: Reservation,
        actual: u64,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        ready(Ok(self.finish(reservation, Some(actual), budget))).boxed()
    }

    fn release(
        &self,
        reservation: Reservation,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        ready(Ok(self.finish(reservation, None, budget))).boxed()
    }

    fn balance<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        let period = self.current_period(budget);
        let account = self.lock().account(tenant, &period);
        ready(Ok(account.balance(budget))).boxed()
    }

    fn saved<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        by: Saving,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        let now = self.clock.wall();
        let key = (tenant.to_string(), Self::period_at(budget, now));
        let mut book = self.lock();
        book.saved(&key, by, 1, credits_saved);
        self.record(tenant, now, Bucket::saved(by, credits_saved));
        let balance = book.account(&key.0, &key.1).balance(budget);
        ready(Ok(balance)).boxed()
    }

    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        let book = self.lock();
        let now = self.clock.wall();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.prune(now);
        let out = tenants
            .iter()
            .map(|(tenant, budget)| {
                let period_key = self.current_period(*budget);
                book.account(tenant, &period_key).usage(
                    tenant,
                    *budget,
                    period_key,
                    history.recent(tenant, now),
                )
            })
            .collect();
        ready(Ok(out)).boxed()
    }

    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<IdempotencyBegin, LedgerError>> {
        ready(Ok(self.keys.begin(tenant, key, fingerprint, ttl))).boxed()
    }

    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        answer: StoredAnswer,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.keys.complete(tenant, key, fingerprint, answer, ttl);
        ready(Ok(())).boxed()
    }

    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.keys.abandon(tenant, key, fingerprint);
        ready(Ok(())).boxed()
    }

    fn alert_fire<'a>(
        &'a self,
        alert: &'a super::Alert,
        deliver: bool,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        let now_ms = self.clock.wall().as_millisecond();
        let fired = self.alerts().fire(alert, deliver, now_ms);
        ready(Ok(fired)).boxed()
    }

    fn outbox_take(
        &self,
        now_ms: i64,
        lease: std::time::Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<super::OutboxEntry>, LedgerError>> {
        ready(Ok(self.alerts().take(now_ms, lease, limit))).boxed()
    }

    fn outbox_done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.alerts().done(id);
        ready(Ok(())).boxed()
    }

    fn outbox_retry<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.alerts().retry(id, next_attempt_ms);
        ready(Ok(())).boxed()
    }
}

impl MemoryLedger {
    fn alerts(&self) -> MutexGuard<'_, MemoryAlerts> {
        // Plain map writes: a poisoned lock is still usable.
        self.alerts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Period;

    fn budget(credits: u64, period: Period) -> Option<Budget> {
        Some(Budget { credits, period })
    }

    #[tokio::test]
    async fn reservations_never_overspend() {
        let ledger = MemoryLedger::new(Clock::real());
        let t: Arc<str> = Arc::from("crm");
        let b = budget(10, Period::Day);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(ledger.reserve(&t, b, 1, "test").await.unwrap());
        }
        assert_eq!(
            ledger.reserve(&t, b, 1, "test").await,
            Err(LedgerError::Insufficient {
                needed: 1,
                remaining: 0
            })
        );
        // Settling below the estimate frees the difference; releasing frees it all.
        let first = held.pop().unwrap();
        let bal = ledger.settle(first, 0, b).await.unwrap();
        assert_eq!(bal.remaining(), Some(1));
        let second = held.pop().unwrap();
        ledger.release(second, b).await.unwrap();
        assert_eq!(ledger.balance("crm", b).await.unwrap().remaining(), Some(2));
    }

    #[tokio::test]
    async fn settle_records_the_truth_even_above_the_estimate() {
        let ledger = MemoryLedger::new(Clock::real());
        let t: Arc<str> = Arc::from("crm");
        let b = budget(5, Period::Total);
        let r = ledger.reserve(&t, b, 1, "test").await.unwrap();
        let bal = ledger.settle(r, 3, b).await.unwrap();
        assert_eq!((bal.used, bal.reserved, bal.remaining()), (3, 0, Some(2)));
    }

    #[tokio::test]
    async fn a_new_day_brings_a_fresh_budget() {
        let clock = Clock::fake("2026-11-27T23:59:00Z".parse().unwrap());
        let ledger = MemoryLedger::new(clock.clone());
        let t: Arc<str> = Arc::from("crm");
        let b = budget(2, Period::Day);
        let r = ledger.reserve(&t, b, 2, "test").await.unwrap();
        ledger.settle(r, 2, b).await.unwrap();
        assert!(ledger.reserve(&t, b, 1, "test").await.is_err());
        clock.advance(Duration::from_secs(60));
        assert_eq!(ledger.balance("crm", b).await.unwrap().remaining(), Some(2));
        assert!(ledger.reserve(&t, b, 2, "test").await.is_ok());
    }

    #[tokio::test]
    async fn unlimited_tenants_are_counted_but_never_refused() {
        let ledger = MemoryLedger::new(Clock::real());
        let t: Arc<str> = Arc::from("ops");
        let r = ledger.reserve(&t, None, 1_000_000, "test").await.unwrap();
        let bal = ledger.settle(r, 7, None).await.unwrap();
        assert_eq!((bal.used, bal.remaining()), (7, None));
        ledger.hit("ops", None, 1).await.unwrap();
        let usage = ledger.usage(&[("ops".into(), None)]).await.unwrap();
        assert_eq!(
            (
                usage[0].requests,
                usage[0].cache_hits,
                usage[0].credits_saved
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn closing_a_reservation_twice_changes_nothing() {
        let ledger = MemoryLedger::new(Clock::real());
        let t: Arc<str> = Arc::from("crm");
        let b = budget(10, Period::Total);
        let r = ledger.reserve(&t, b, 4, "test").await.unwrap();
        let other = ledger.reserve(&t, b, 2, "test").await.unwrap();
        let first = ledger.settle(r.clone(), 3, b).await.unwrap();
        assert_eq!((first.used, first.reserved), (3, 2));
        assert_eq!(ledger.settle(r.clone(), 3, b).await.unwrap(), first);
        assert_eq!(ledger.release(r, b).await.unwrap(), first);
        let usage = ledger.usage(&[("crm".into(), b)]).await.unwrap();
        assert_eq!(usage[0].requests, 1);
        ledger.release(other.clone(), b).await.unwrap();
        let after = ledger.settle(other, 9, b).await.unwrap();
        assert_eq!((after.used, after.reserved), (3, 0));
    }
}
