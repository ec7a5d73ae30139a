//! The accounting every ledger shares: balances and open reservations in memory.
//!
//! A [`Book`] applies reserve, settle, release and hits to a map of
//! `(tenant, period)` accounts. [`MemoryLedger`](super::MemoryLedger) keeps one
//! behind a mutex and is done; the SQLite writer keeps one as its working copy
//! and wraps each batch in [`Book::begin`] / [`Book::commit`] /
//! [`Book::rollback`], so a batch whose disk commit fails leaves no trace in
//! memory either. The journal of a batch is also the list of what to write.

use crate::ledger::Saving;
use foldhash::HashMap;
use std::sync::Arc;

use super::history::Recent;
use super::{Balance, LedgerError, Reservation, Usage};
use crate::config::{Budget, Period};

/// `(tenant, period key)`.
pub(crate) type AccountKey = (String, String);

/// One tenant's counters in one period.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Account {
    /// Credits settled, orphans included.
    pub(crate) used: u64,
    /// Credits held by open reservations.
    pub(crate) reserved: u64,
    /// Upstream calls settled.
    pub(crate) requests: u64,
    /// Cache hits served.
    pub(crate) cache_hits: u64,
    /// Credits those hits saved.
    pub(crate) credits_saved: u64,
    /// Credits of reservations a crash left open, counted as spent.
    pub(crate) orphaned: u64,
    /// Answers coalesced onto another request's upstream call.
    pub(crate) coalesced: u64,
    /// Credits those coalesced answers saved.
    pub(crate) credits_saved_coalesced: u64,
}

impl Account {
    /// Closes a reservation of `held` credits: spends `actual` (a settle) or
    /// nothing (a release, `None`).
    pub(crate) fn close(&mut self, held: u64, actual: Option<u64>) {
        self.reserved = self.reserved.saturating_sub(held);
        if let Some(actual) = actual {
            self.used = self.used.saturating_add(actual);
            self.requests = self.requests.saturating_add(1);
        }
    }

    /// The balance against `budget`.
    pub(crate) fn balance(&self, budget: Option<Budget>) -> Balance {
        Balance {
            used: self.used,
            reserved: self.reserved,
            limit: budget.map(|b| b.credits),
        }
    }

    /// The report line for `tenant` in the period `period_key` of `budget`,
    /// with its `recent` spend.
    pub(crate) fn usage(
        &self,
        tenant: &str,
        budget: Option<Budget>,
        period_key: String,
        recent: Recent,
    ) -> Usage {
        Usage {
            tenant: tenant.to_string(),
            period: budget_period(budget),
            period_key,
            balance: self.balance(budget),
            requests: self.requests,
            cache_hits: self.cache_hits,
            credits_saved: self.credits_saved,
            orphaned: self.orphaned,
            coalesced: self.coalesced,
            credits_saved_coalesced: self.credits_saved_coalesced,
            recent,
        }
    }
}

/// The period a budget counts in; unlimited tenants count in `total`.
pub(crate) fn budget_period(budget: Option<Budget>) -> Period {
    budget.map_or(Period::Total, |b| b.period)
}

/// Credits held for one in-flight call, as the book remembers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// The account charged.
    pub(crate) key: AccountKey,
    /// Credits held.
    pub(crate) amount: u64,
    /// The request that reserved them, for audit.
    pub(crate) request_id: Box<str>,
}

/// Values as they were before the current batch touched them.
#[derive(Debug, Default)]
struct Journal {
    accounts: HashMap<AccountKey, Option<Account>>,
    holds: HashMap<u64, Option<Hold>>,
}

/// What a batch changed, to be written to disk.
#[derive(Debug, Default)]
pub(crate) struct Changes<'a> {
    /// Accounts with their new values.
    pub(crate) accounts: Vec<(&'a AccountKey, &'a Account)>,
    /// Reservations opened (and still open).
    pub(crate) opened: Vec<(u64, &'a Hold)>,
    /// Reservations that were open before the batch and are closed now.
    pub(crate) closed: Vec<u64>,
}

impl Changes<'_> {
    /// Whether the batch left everything as it was.
    pub(crate) fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.opened.is_empty() && self.closed.is_empty()
    }
}

/// Accounts and open reservations.
#[derive(Debug)]
pub(crate) struct Book {
    accounts: HashMap<AccountKey, Account>,
    holds: HashMap<u64, Hold>,
    next_id: u64,
    journal: Option<Journal>,
}

impl Default for Book {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Book {
    /// An empty book whose first reservation gets `first_id`.
    pub(crate) fn new(first_id: u64) -> Self {
        Self {
            accounts: HashMap::default(),
            holds: HashMap::default(),
            next_id: first_id.max(1),
            journal: None,
        }
    }

    /// Puts back an account read from disk (no journal: loading is not a change).
    pub(crate) fn load_account(&mut self, key: AccountKey, account: Account) {
        self.accounts.insert(key, account);
    }

    /// Puts back a reservation read from disk, holding its credits again.
    pub(crate) fn load_hold(&mut self, id: u64, hold: Hold) {
        let account = self.accounts.entry(hold.key.clone()).or_default();
        account.reserved = account.reserved.saturating_add(hold.amount);
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.holds.insert(id, hold);
    }

    /// The account of `tenant` in `period`, zero if never touched.
    pub(crate) fn account(&self, tenant: &str, period: &str) -> Account {
        // The tuple key needs owned strings; building it costs two small
        // allocations, far below the cost of anything else a request does.
        self.accounts
            .get(&(tenant.to_string(), period.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// Every account, for publishing a freshly loaded book.
    pub(crate) fn accounts(&self) -> &HashMap<AccountKey, Account> {
        &self.accounts
    }

    /// Holds `estimate` credits in `tenant`'s `period` if `used + reserved +
    /// estimate <= limit` (always when `limit` is `None`).
    pub(crate) fn reserve(
        &mut self,
        tenant: &Arc<str>,
        period: String,
        limit: Option<u64>,
        estimate: u64,
        request_id: &str,
    ) -> Result<Reservation, LedgerError> {
        let key = (tenant.to_string(), period);
        let current = self.accounts.get(&key).copied().unwrap_or_default();
        if let Some(limit) = limit {
            let remaining = limit.saturating_sub(current.used.saturating_add(current.reserved));
            if remaining < estimate {
                return Err(LedgerError::Insufficient {
                    needed: estimate,
                    remaining,
                });
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.touch_hold(id);
        self.update(&key, |a| a.reserved = a.reserved.saturating_add(estimate));
        let period = key.1.clone();
        self.holds.insert(
            id,
            Hold {
                key,
                amount: estimate,
                request_id: request_id.into(),
            },
        );
        Ok(Reservation {
            id,
            tenant: Arc::clone(tenant),
            period,
            amount: estimate,
        })
    }

    /// The account reservation `id` holds credits in, and how many, if it is open.
    pub(crate) fn held(&self, id: u64) -> Option<(AccountKey, u64)> {
        self.holds
            .get(&id)
            .map(|hold| (hold.key.clone(), hold.amount))
    }

    /// Whether any reservation is open.
    pub(crate) fn has_holds(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Whether changes since [`Book::begin`] are waiting to be kept or undone.
    pub(crate) fn in_batch(&self) -> bool {
        self.journal.is_some()
    }

    /// Closes reservation `id`: turns it into spend of `actual` (a settle) or
    /// frees it (`None`, a release). False if it was not open.
    pub(crate) fn finish(&mut self, id: u64, actual: Option<u64>) -> bool {
        self.close(id, |account, held| account.close(held, actual))
    }

    #[cfg(test)]
    fn settle(&mut self, id: u64, actual: u64) -> bool {
        self.finish(id, Some(actual))
    }

    #[cfg(test)]
    fn release(&mut self, id: u64) -> bool {
        self.finish(id, None)
    }

    /// Counts every open reservation as spent and orphaned (the process that
    /// held them died; the upstream may have billed them). Returns what was
    /// converted per account.
    pub(crate) fn orphan_all(&mut self) -> Vec<(AccountKey, u64)> {
        let mut ids: Vec<u64> = self.holds.keys().copied().collect();
        ids.sort_unstable();
        let mut converted: HashMap<AccountKey, u64> = HashMap::default();
        for id in ids {
            let Some(hold) = self.holds.get(&id) else {
                continue;
            };
            *converted.entry(hold.key.clone()).or_default() += hold.amount;
            self.close(id, |account, held| {
                account.reserved = account.reserved.saturating_sub(held);
                account.used = account.used.saturating_add(held);
                account.orphaned = account.orphaned.saturating_add(held);
            });
        }
        let mut converted: Vec<_> = converted.into_iter().collect();
        converted.sort();
        converted
    }

    /// Adds `hits` cache hits that saved `credits_saved` to `key`.
    pub(crate) fn saved(&mut self, key: &AccountKey, by: Saving, answers: u64, credits_saved: u64) {
        self.update(key, |a| {
            let (count, saved) = match by {
                Saving::Cache => (&mut a.cache_hits, &mut a.credits_saved),
                Saving::Coalescing => (&mut a.coalesced, &mut a.credits_saved_coalesced),
            };
            *count = count.saturating_add(answers);
            *saved = saved.saturating_add(credits_saved);
        });
    }

    /// Starts recording what changes, so the batch can be written or undone.
    pub(crate) fn begin(&mut self) {
        self.journal = Some(Journal::default());
    }

    /// What changed since [`Book::begin`].
    pub(crate) fn changes(&self) -> Changes<'_> {
        let Some(journal) = &self.journal else {
            return Changes::default();
        };
        let mut changes = Changes::default();
        for (key, before) in &journal.accounts {
            if let Some((key, now)) = self.accounts.get_key_value(key)
                && before.as_ref() != Some(now)
            {
                changes.accounts.push((key, now));
            }
        }
        for (&id, before) in &journal.holds {
            match (before, self.holds.get(&id)) {
                (None, Some(hold)) => changes.opened.push((id, hold)),
                (Some(_), None) => changes.closed.push(id),
                // Opened and closed within the batch, or untouched in the end.
                _ => {}
            }
        }
        changes.opened.sort_by_key(|(id, _)| *id);
        changes.closed.sort_unstable();
        changes
    }

    /// Keeps the batch; returns the accounts it touched with their new values.
    pub(crate) fn commit(&mut self) -> Vec<(AccountKey, Account)> {
        let Some(journal) = self.journal.take() else {
            return Vec::new();
        };
        journal
            .accounts
            .into_keys()
            .filter_map(|key| {
                let account = self.accounts.get(&key).copied()?;
                Some((key, account))
            })
            .collect()
    }

    /// Undoes every change since [`Book::begin`]. Reservation ids handed out
    /// stay used, so an id never names two reservations.
    pub(crate) fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for (key, before) in journal.accounts {
            match before {
                Some(account) => self.accounts.insert(key, account),
                None => self.accounts.remove(&key),
            };
        }
        for (id, before) in journal.holds {
            match before {
                Some(hold) => self.holds.insert(id, hold),
                None => self.holds.remove(&id),
            };
        }
    }

    fn close(&mut self, id: u64, apply: impl FnOnce(&mut Account, u64)) -> bool {
        if !self.holds.contains_key(&id) {
            return false;
        }
        self.touch_hold(id);
        let Some(hold) = self.holds.remove(&id) else {
            return false;
        };
        self.update(&hold.key, |a| apply(a, hold.amount));
        true
    }

    fn update(&mut self, key: &AccountKey, apply: impl FnOnce(&mut Account)) {
        if let Some(journal) = &mut self.journal
            && !journal.accounts.contains_key(key)
        {
            journal
                .accounts
                .insert(key.clone(), self.accounts.get(key).copied());
        }
        match self.accounts.get_mut(key) {
            Some(account) => apply(account),
            None => {
                let mut account = Account::default();
                apply(&mut account);
                self.accounts.insert(key.clone(), account);
            }
        }
    }

    fn touch_hold(&mut self, id: u64) {
        if let Some(journal) = &mut self.journal {
            journal
                .holds
                .entry(id)
                .or_insert_with(|| self.holds.get(&id).cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str) -> AccountKey {
        (t.to_string(), "total".to_string())
    }

    #[test]
    fn settle_and_release_close_a_reservation_once() {
        let mut book = Book::default();
        let t: Arc<str> = Arc::from("crm");
        let a = book.reserve(&t, "total".into(), Some(5), 2, "r1").unwrap();
        let b = book.reserve(&t, "total".into(), Some(5), 2, "r2").unwrap();
        assert!(book.settle(a.id, 3));
        assert!(!book.settle(a.id, 3));
        assert!(!book.release(a.id));
        assert!(book.release(b.id));
        assert!(!book.settle(b.id, 1));
        let account = book.account("crm", "total");
        assert_eq!(
            (account.used, account.reserved, account.requests),
            (3, 0, 1)
        );
    }

    #[test]
    fn refusal_touches_nothing() {
        let mut book = Book::default();
        book.begin();
        let t: Arc<str> = Arc::from("crm");
        assert_eq!(
            book.reserve(&t, "total".into(), Some(1), 2, "r"),
            Err(LedgerError::Insufficient {
                needed: 2,
                remaining: 1
            })
        );
        assert!(book.changes().is_empty());
    }

    #[test]
    fn rollback_restores_accounts_and_reservations() {
        let mut book = Book::default();
        let t: Arc<str> = Arc::from("crm");
        let kept = book.reserve(&t, "total".into(), Some(10), 4, "r1").unwrap();
        book.begin();
        book.settle(kept.id, 1);
        let fresh = book.reserve(&t, "total".into(), Some(10), 2, "r2").unwrap();
        book.saved(&key("ops"), Saving::Cache, 1, 5);
        assert!(!book.changes().is_empty());
        book.rollback();
        assert_eq!(book.account("crm", "total").reserved, 4);
        assert_eq!(book.account("ops", "total"), Account::default());
        assert!(
            !book.release(fresh.id),
            "the rolled-back reservation is gone"
        );
        assert!(book.release(kept.id), "the rolled-back settle is undone");
        // Ids are never reused, even after a rollback.
        let next = book.reserve(&t, "total".into(), None, 1, "r3").unwrap();
        assert!(next.id > fresh.id);
    }

    #[test]
    fn changes_list_what_to_write() {
        let mut book = Book::default();
        let t: Arc<str> = Arc::from("crm");
        let old = book.reserve(&t, "total".into(), None, 1, "r1").unwrap();
        book.begin();
        let new = book.reserve(&t, "total".into(), None, 2, "r2").unwrap();
        let gone = book.reserve(&t, "total".into(), None, 3, "r3").unwrap();
        book.release(gone.id);
        book.settle(old.id, 1);
        let changes = book.changes();
        assert_eq!(changes.opened.len(), 1);
        assert_eq!(changes.opened[0].0, new.id);
        assert_eq!(changes.closed, vec![old.id]);
        assert_eq!(changes.accounts.len(), 1);
        assert_eq!(changes.accounts[0].1.reserved, 2);
        let touched = book.commit();
        assert_eq!(touched, vec![(key("crm"), book.account("crm", "total"))]);
    }

    #[test]
    fn orphans_count_as_spent() {
        let mut book = Book::default();
        book.load_account(
            key("crm"),
            Account {
                used: 5,
                ..Account::default()
            },
        );
        for (id, amount) in [(7, 2), (9, 3)] {
            book.load_hold(
                id,
                Hold {
                    key: key("crm"),
                    amount,
                    request_id: "r".into(),
                },
            );
        }
        assert_eq!(book.account("crm", "total").reserved, 5);
        book.begin();
        assert_eq!(book.orphan_all(), vec![(key("crm"), 5)]);
        let changes = book.changes();
        assert_eq!(changes.closed, vec![7, 9]);
        let account = book.account("crm", "total");
        assert_eq!(
            (account.used, account.reserved, account.orphaned),
            (10, 0, 5)
        );
        // New ids continue after the highest loaded one.
        let t: Arc<str> = Arc::from("crm");
        assert_eq!(
            book.reserve(&t, "total".into(), None, 1, "r").unwrap().id,
            10
        );
    }
}
