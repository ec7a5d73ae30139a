//! A ledger in process memory: exact under concurrency, forgotten on restart.
//!
//! One mutex guards all balances; every operation is a few map lookups, so
//! the lock is held for well under a microsecond.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use crate::clock::Clock;
use crate::config::{Budget, Period};

#[derive(Debug, Default, Clone, Copy)]
struct Account {
    used: u64,
    reserved: u64,
    requests: u64,
    cache_hits: u64,
    credits_saved: u64,
}

/// The in-memory ledger.
#[derive(Debug)]
pub struct MemoryLedger {
    clock: Clock,
    next_id: AtomicU64,
    accounts: Mutex<HashMap<(String, String), Account>>,
}

impl MemoryLedger {
    /// An empty ledger reading periods from `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            next_id: AtomicU64::new(1),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Account>> {
        // A panic while holding this lock cannot leave an account half-written
        // (every update is a plain field write), so a poisoned lock is still usable.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_period(&self, budget: Option<Budget>) -> String {
        period_key(
            budget.map_or(Period::Total, |b| b.period),
            self.clock.wall(),
        )
    }

    fn balance_of(account: &Account, budget: Option<Budget>) -> Balance {
        Balance {
            used: account.used,
            reserved: account.reserved,
            limit: budget.map(|b| b.credits),
        }
    }

    fn finish(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> Balance {
        let mut accounts = self.lock();
        let entry = accounts
            .entry((reservation.tenant.to_string(), reservation.period.clone()))
            .or_default();
        entry.reserved = entry.reserved.saturating_sub(reservation.amount);
        if let Some(actual) = actual {
            entry.used = entry.used.saturating_add(actual);
            entry.requests += 1;
        }
        // The balance reported is the current period's, which may be a new one.
        let now = self.current_period(budget);
        if now == reservation.period {
            Self::balance_of(entry, budget)
        } else {
            let current = accounts
                .get(&(reservation.tenant.to_string(), now))
                .copied();
            Self::balance_of(&current.unwrap_or_default(), budget)
        }
    }
}

impl Ledger for MemoryLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        _request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        let period = self.current_period(budget);
        let mut accounts = self.lock();
        let entry = accounts
            .entry((tenant.to_string(), period.clone()))
            .or_default();
        let balance = Self::balance_of(entry, budget);
        let result = match balance.remaining() {
            Some(remaining) if remaining < estimate => Err(LedgerError::Insufficient {
                needed: estimate,
                remaining,
            }),
            _ => {
                entry.reserved = entry.reserved.saturating_add(estimate);
                Ok(Reservation {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    tenant: Arc::clone(tenant),
                    period,
                    amount: estimate,
                })
            }
        };
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
        let account = self
            .lock()
            .get(&(tenant.to_string(), period))
            .copied()
            .unwrap_or_default();
        ready(Ok(Self::balance_of(&account, budget))).boxed()
    }

    fn record_hit<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let period = self.current_period(budget);
        let mut accounts = self.lock();
        let entry = accounts.entry((tenant.to_string(), period)).or_default();
        entry.cache_hits += 1;
        entry.credits_saved = entry.credits_saved.saturating_add(credits_saved);
        ready(Ok(())).boxed()
    }

    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        let accounts = self.lock();
        let out = tenants
            .iter()
            .map(|(tenant, budget)| {
                let period_key = self.current_period(*budget);
                let account = accounts
                    .get(&(tenant.clone(), period_key.clone()))
                    .copied()
                    .unwrap_or_default();
                Usage {
                    tenant: tenant.clone(),
                    period: budget.map_or(Period::Total, |b| b.period),
                    period_key,
                    balance: Self::balance_of(&account, *budget),
                    requests: account.requests,
                    cache_hits: account.cache_hits,
                    credits_saved: account.credits_saved,
                    orphaned: 0,
                }
            })
            .collect();
        ready(Ok(out)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        ledger.record_hit("ops", None, 1).await.unwrap();
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
}
