//! Cache-hit counts waiting to be written, the same for the SQLite and the
//! Redis ledger.
//!
//! A hit is statistics, not money, so neither durable ledger pays an fsync or
//! a round trip per hit: both count hits here, per tenant and period, and
//! their writer adds the counts to the store in batches (SQLite with its next
//! commit, Redis every second). Counts leave only once the store confirmed
//! them, and hits counted meanwhile stay, so a failed write delays counts
//! instead of losing them; `usage` adds what still waits to what is stored.

use crate::ledger::Saving;
use foldhash::HashMap;

use super::book::{Account, AccountKey};

/// The hits of one account waiting to be written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hits<Note = ()> {
    /// Cache hits served.
    pub(crate) hits: u64,
    /// Credits those hits saved.
    pub(crate) credits_saved: u64,
    /// Coalesced answers served.
    pub(crate) coalesced: u64,
    /// Credits those coalesced answers saved.
    pub(crate) credits_saved_coalesced: u64,
    /// What the writer needs besides the counts, fixed by the account's first
    /// hit (the Redis ledger: when the period's keys expire).
    pub(crate) note: Note,
}

/// Hits counted but not yet written, per account.
#[derive(Debug, Clone)]
pub(crate) struct PendingHits<Note = ()> {
    by_account: HashMap<AccountKey, Hits<Note>>,
}

impl<Note> Default for PendingHits<Note> {
    // Not derived: that would ask `Note: Default`, which no caller needs.
    fn default() -> Self {
        Self {
            by_account: HashMap::default(),
        }
    }
}

impl<Note: Copy> PendingHits<Note> {
    /// Counts one answer of `key`, spared its upstream call `by` the cache
    /// or coalescing, that saved `credits_saved`; `note` is kept only if
    /// nothing was waiting for `key` yet.
    pub(crate) fn count(&mut self, key: AccountKey, by: Saving, credits_saved: u64, note: Note) {
        let waiting = self.waiting(key, note);
        let (count, saved) = match by {
            Saving::Cache => (&mut waiting.hits, &mut waiting.credits_saved),
            Saving::Coalescing => (&mut waiting.coalesced, &mut waiting.credits_saved_coalesced),
        };
        *count = count.saturating_add(1);
        *saved = saved.saturating_add(credits_saved);
    }

    fn waiting(&mut self, key: AccountKey, note: Note) -> &mut Hits<Note> {
        self.by_account.entry(key).or_insert(Hits {
            hits: 0,
            credits_saved: 0,
            coalesced: 0,
            credits_saved_coalesced: 0,
            note,
        })
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_account.is_empty()
    }

    /// Every account with hits waiting, and its counts.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&AccountKey, &Hits<Note>)> {
        self.by_account.iter()
    }

    /// Adds what waits for `key` to `account` as read from the store.
    pub(crate) fn add_to(&self, key: &AccountKey, account: &mut Account) {
        if let Some(waiting) = self.by_account.get(key) {
            account.cache_hits = account.cache_hits.saturating_add(waiting.hits);
            account.credits_saved = account.credits_saved.saturating_add(waiting.credits_saved);
            account.coalesced = account.coalesced.saturating_add(waiting.coalesced);
            account.credits_saved_coalesced = account
                .credits_saved_coalesced
                .saturating_add(waiting.credits_saved_coalesced);
        }
    }

    /// Takes `written` (counts the store confirmed) off what waits for `key`;
    /// hits counted since they were read stay.
    pub(crate) fn written(&mut self, key: &AccountKey, written: &Hits<Note>) {
        if let Some(left) = self.by_account.get_mut(key) {
            left.hits = left.hits.saturating_sub(written.hits);
            left.credits_saved = left.credits_saved.saturating_sub(written.credits_saved);
            left.coalesced = left.coalesced.saturating_sub(written.coalesced);
            left.credits_saved_coalesced = left
                .credits_saved_coalesced
                .saturating_sub(written.credits_saved_coalesced);
            if left.hits == 0
                && left.credits_saved == 0
                && left.coalesced == 0
                && left.credits_saved_coalesced == 0
            {
                self.by_account.remove(key);
            }
        }
    }

    /// Adds `other`'s counts back (a write of them failed); a note already
    /// waiting for an account is kept.
    pub(crate) fn merge(&mut self, other: &PendingHits<Note>) {
        for (key, hits) in other.iter() {
            let waiting = self.waiting(key.clone(), hits.note);
            waiting.hits = waiting.hits.saturating_add(hits.hits);
            waiting.credits_saved = waiting.credits_saved.saturating_add(hits.credits_saved);
            waiting.coalesced = waiting.coalesced.saturating_add(hits.coalesced);
            waiting.credits_saved_coalesced = waiting
                .credits_saved_coalesced
                .saturating_add(hits.credits_saved_coalesced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str) -> AccountKey {
        (tenant.to_string(), "total".to_string())
    }

    #[test]
    fn hits_counted_during_a_write_are_kept() {
        let mut pending = PendingHits::default();
        pending.count(key("crm"), Saving::Cache, 2, 7);
        pending.count(key("crm"), Saving::Cache, 3, 9);
        pending.count(key("ops"), Saving::Cache, 1, 5);
        pending.count(key("crm"), Saving::Coalescing, 6, 0);
        let (_, crm) = pending.iter().find(|(k, _)| **k == key("crm")).unwrap();
        assert_eq!((crm.hits, crm.credits_saved, crm.note), (2, 5, 7));

        let read = pending.clone();
        pending.count(key("crm"), Saving::Cache, 4, 0);
        for (key, hits) in read.iter() {
            pending.written(key, hits);
        }
        let mut account = Account::default();
        pending.add_to(&key("crm"), &mut account);
        assert_eq!((account.cache_hits, account.credits_saved), (1, 4));
        assert_eq!(
            (account.coalesced, account.credits_saved_coalesced),
            (0, 0),
            "the coalesced answer was read and written"
        );
        let mut ops = Account::default();
        pending.add_to(&key("ops"), &mut ops);
        assert_eq!(ops, Account::default(), "written in full, so gone");

        let (_, left) = pending.iter().next().unwrap();
        let left = *left;
        pending.written(&key("crm"), &left);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_failed_write_merges_back_and_keeps_the_first_note() {
        let mut taken = PendingHits::default();
        taken.count(key("crm"), Saving::Cache, 2, 7);
        taken.count(key("ops"), Saving::Coalescing, 3, 1);
        let mut pending = PendingHits::default();
        pending.count(key("crm"), Saving::Cache, 4, 9);
        pending.merge(&taken);
        let mut crm = Account::default();
        pending.add_to(&key("crm"), &mut crm);
        assert_eq!((crm.cache_hits, crm.credits_saved), (2, 6));
        let (_, waiting) = pending.iter().find(|(k, _)| **k == key("crm")).unwrap();
        assert_eq!(waiting.note, 9, "the note of the hit already waiting stays");
        let mut ops = Account::default();
        pending.add_to(&key("ops"), &mut ops);
        assert_eq!((ops.coalesced, ops.credits_saved_coalesced), (1, 3));
    }
}
