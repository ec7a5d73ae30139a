//! What the simulator counted: calls, credits billed per key, calls per page,
//! errors per code, and writes per (action, account, target). Tests of the
//! gateway assert on these to prove what reached upstream (a cache hit must
//! not move them, a write must be performed once).
//!
//! Counters are atomics except the per-page and per-write maps, each behind
//! one short `Mutex`. Keys are counted by their configured name, never by
//! key value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::envelope::ErrorCode;

/// A snapshot of the simulator's counters (`GET /_sim/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every request that reached a `/v2/` path, whatever the outcome.
    pub calls_total: u64,
    /// Credits billed, all keys.
    pub credits_total: u64,
    /// Requests a fault was applied to.
    pub faults_applied: u64,
    /// Per key name: requests authenticated as that key and credits billed.
    pub keys: BTreeMap<String, KeyStats>,
    /// Error answers per V2 error code (codes never seen are left out).
    pub errors: BTreeMap<String, u64>,
    /// `get_viewers` requests per page, sorted by account, offset, count.
    pub pages: Vec<PageStats>,
    /// Writes the simulator performed (`invite`, `send`, `comment`, `login`,
    /// `checkpoint`), sorted by action, account, target. A write sent twice
    /// shows a count of 2.
    #[serde(default)]
    pub writes: Vec<WriteStats>,
}

/// How many times one write was performed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// `invite`, `send`, `comment`, `login` or `checkpoint`.
    pub action: String,
    /// The account that wrote (for `login`, the account the email connects).
    pub account_id: String,
    /// What it wrote to: `invite` the `profile_url`, `send` the
    /// `conversation_id` or `profile_url`, `comment` the `post_url`, `login`
    /// the email (trimmed, lower case), `checkpoint` the `account_id`.
    pub target: String,
    /// Times performed, including those whose reply a fault then spoiled.
    pub count: u64,
}

/// Counters of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStats {
    /// Requests authenticated as this key.
    pub calls: u64,
    /// Credits billed to this key.
    pub credits: u64,
}

/// How many `get_viewers` requests one page got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageStats {
    /// The account the page belongs to.
    pub account_id: String,
    /// Requested offset, after defaults.
    pub offset: u32,
    /// Requested count, after defaults.
    pub count: u32,
    /// Requests for this page, any outcome.
    pub calls: u64,
}

#[derive(Debug)]
struct KeyCounters {
    name: String,
    calls: AtomicU64,
    credits: AtomicU64,
}

/// Calls per `(offset, count)` per account. Nested so a lookup by `&str`
/// needs no allocation.
type PageMap = HashMap<String, HashMap<(u32, u32), u64>>;

/// Performed writes per `(action, account_id, target)`; ordered, so the
/// snapshot comes out sorted.
type WriteMap = BTreeMap<(String, String, String), u64>;

/// The live counters. Key indexes are those of the configured key list.
#[derive(Debug)]
pub(crate) struct Counters {
    calls_total: AtomicU64,
    credits_total: AtomicU64,
    faults_applied: AtomicU64,
    keys: Vec<KeyCounters>,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    pages: Mutex<PageMap>,
    writes_total: AtomicU64,
    writes: Mutex<WriteMap>,
}

impl Counters {
    pub(crate) fn new(key_names: impl IntoIterator<Item = String>) -> Self {
        Counters {
            calls_total: AtomicU64::new(0),
            credits_total: AtomicU64::new(0),
            faults_applied: AtomicU64::new(0),
            keys: key_names
                .into_iter()
                .map(|name| KeyCounters {
                    name,
                    calls: AtomicU64::new(0),
                    credits: AtomicU64::new(0),
                })
                .collect(),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            pages: Mutex::new(HashMap::new()),
            writes_total: AtomicU64::new(0),
            writes: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn record_call(&self) {
        self.calls_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_key_call(&self, key: usize) {
        if let Some(k) = self.keys.get(key) {
            k.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn bill(&self, key: usize, credits: u64) {
        if credits == 0 {
            return;
        }
        self.credits_total.fetch_add(credits, Ordering::Relaxed);
        if let Some(k) = self.keys.get(key) {
            k.credits.fetch_add(credits, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_fault(&self) {
        self.faults_applied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, code: ErrorCode) {
        if let Some(counter) = self.errors.get(code.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_page(&self, account_id: &str, offset: u32, count: u32) {
        let mut pages = self.lock_pages();
        if let Some(account) = pages.get_mut(account_id) {
            *account.entry((offset, count)).or_default() += 1;
        } else {
            pages.insert(account_id.to_owned(), HashMap::from([((offset, count), 1)]));
        }
    }

    /// Counts one performed write and returns how many times it has now
    /// been performed.
    pub(crate) fn record_write(&self, action: &str, account_id: &str, target: &str) -> u64 {
        self.writes_total.fetch_add(1, Ordering::Relaxed);
        let key = (action.to_owned(), account_id.to_owned(), target.to_owned());
        let mut writes = self.lock_writes();
        let count = writes.entry(key).or_default();
        *count += 1;
        *count
    }

    pub(crate) fn writes(&self, action: &str, account_id: &str, target: &str) -> u64 {
        // Writes are few; building the key to look it up is cheap enough.
        let key = (action.to_owned(), account_id.to_owned(), target.to_owned());
        self.lock_writes().get(&key).copied().unwrap_or(0)
    }

    pub(crate) fn writes_total(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    pub(crate) fn calls_total(&self) -> u64 {
        self.calls_total.load(Ordering::Relaxed)
    }

    pub(crate) fn credits_total(&self) -> u64 {
        self.credits_total.load(Ordering::Relaxed)
    }

    pub(crate) fn key_calls(&self, key: usize) -> u64 {
        self.keys
            .get(key)
            .map_or(0, |k| k.calls.load(Ordering::Relaxed))
    }

    pub(crate) fn key_credits(&self, key: usize) -> u64 {
        self.keys
            .get(key)
            .map_or(0, |k| k.credits.load(Ordering::Relaxed))
    }

    pub(crate) fn page_calls(&self, account_id: &str, offset: u32, count: u32) -> u64 {
        self.lock_pages()
            .get(account_id)
            .and_then(|account| account.get(&(offset, count)))
            .copied()
            .unwrap_or(0)
    }

    /// Zeroes everything. Not atomic as a whole: a request finishing during
    /// a reset may be half counted, which tests avoid by resetting while idle.
    pub(crate) fn reset(&self) {
        self.calls_total.store(0, Ordering::Relaxed);
        self.credits_total.store(0, Ordering::Relaxed);
        self.faults_applied.store(0, Ordering::Relaxed);
        for k in &self.keys {
            k.calls.store(0, Ordering::Relaxed);
            k.credits.store(0, Ordering::Relaxed);
        }
        for e in &self.errors {
            e.store(0, Ordering::Relaxed);
        }
        self.lock_pages().clear();
        self.writes_total.store(0, Ordering::Relaxed);
        self.lock_writes().clear();
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                let stats = KeyStats {
                    calls: k.calls.load(Ordering::Relaxed),
                    credits: k.credits.load(Ordering::Relaxed),
                };
                (k.name.clone(), stats)
            })
            .collect();
        let errors = ErrorCode::ALL
            .iter()
            .filter_map(|code| {
                let n = self.errors.get(code.index())?.load(Ordering::Relaxed);
                (n > 0).then(|| (code.as_str().to_owned(), n))
            })
            .collect();
        let mut pages: Vec<PageStats> = self
            .lock_pages()
            .iter()
            .flat_map(|(account_id, account)| {
                account.iter().map(|(&(offset, count), &calls)| PageStats {
                    account_id: account_id.clone(),
                    offset,
                    count,
                    calls,
                })
            })
            .collect();
        pages.sort_by(|a, b| {
            (a.account_id.as_str(), a.offset, a.count).cmp(&(
                b.account_id.as_str(),
                b.offset,
                b.count,
            ))
        });
        SimStats {
            calls_total: self.calls_total(),
            credits_total: self.credits_total(),
            faults_applied: self.faults_applied.load(Ordering::Relaxed),
            keys,
            errors,
            pages,
            writes: self
                .lock_writes()
                .iter()
                .map(|((action, account_id, target), &count)| WriteStats {
                    action: action.clone(),
                    account_id: account_id.clone(),
                    target: target.clone(),
                    count,
                })
                .collect(),
        }
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, WriteMap> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pages(&self) -> std::sync::MutexGuard<'_, PageMap> {
        // Counters stay meaningful after a panic elsewhere; keep using them.
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_resets() {
        let counters = Counters::new(["a".to_owned(), "b".to_owned()]);
        counters.record_call();
        counters.record_key_call(1);
        counters.bill(1, 3);
        counters.bill(7, 1); // unknown key index: total only
        counters.record_page("acct", 0, 10);
        counters.record_page("acct", 0, 10);
        counters.record_page("acct", 10, 10);
        counters.record_error(ErrorCode::RateLimited);

        assert_eq!(counters.calls_total(), 1);
        assert_eq!(counters.credits_total(), 4);
        assert_eq!(counters.key_credits(1), 3);
        assert_eq!(counters.key_calls(1), 1);
        assert_eq!(counters.key_calls(0), 0);
        assert_eq!(counters.page_calls("acct", 0, 10), 2);
        assert_eq!(counters.page_calls("acct", 0, 20), 0);
        assert_eq!(counters.page_calls("other", 0, 10), 0);

        let stats = counters.snapshot();
        assert_eq!(stats.keys["b"].credits, 3);
        assert_eq!(stats.errors.get("RATE_LIMITED"), Some(&1));
        assert_eq!(stats.pages.len(), 2);
        assert_eq!((stats.pages[0].offset, stats.pages[0].calls), (0, 2));

        assert_eq!(counters.record_write("send", "acct", "c-2"), 1);
        assert_eq!(counters.record_write("send", "acct", "c-1"), 1);
        assert_eq!(counters.record_write("send", "acct", "c-2"), 2);
        assert_eq!(counters.record_write("invite", "acct", "u"), 1);
        assert_eq!(counters.writes("send", "acct", "c-2"), 2);
        assert_eq!(counters.writes("send", "other", "c-2"), 0);
        assert_eq!(counters.writes_total(), 4);
        let writes = counters.snapshot().writes;
        let order: Vec<(&str, &str, u64)> = writes
            .iter()
            .map(|w| (w.action.as_str(), w.target.as_str(), w.count))
            .collect();
        assert_eq!(
            order,
            [("invite", "u", 1), ("send", "c-1", 1), ("send", "c-2", 2)]
        );

        counters.reset();
        assert_eq!(counters.snapshot().calls_total, 0);
        assert_eq!(counters.writes_total(), 0);
        assert!(counters.snapshot().writes.is_empty());
        assert!(counters.snapshot().pages.is_empty());
        assert_eq!(counters.snapshot().keys["b"], KeyStats::default());
    }
}
