//! Which accounts each key owns: those its configuration names, plus those
//! connected to it through `POST /v2/login` (and, when a checkpoint is
//! asked for, `POST /v2/checkpoint`). Also what `GET /v2/accounts` lists.
//!
//! A key whose accounts include `*` owns every account, but only the
//! accounts it names or connected count as *connected* to it: logging in to
//! one of the others is a new connection (billed) like for any other key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use serde::Serialize;

use super::SimConfig;
use super::catalog;
use super::handle::KeyIndex;

/// The `accounts` entry that means "owns every account".
pub(crate) const ANY_ACCOUNT: &str = "*";

/// One account as `GET /v2/accounts` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct AccountEntry {
    pub(crate) account_id: String,
    pub(crate) name: String,
    /// `active`, or `inactive` for the configured inactive accounts.
    pub(crate) status: &'static str,
    pub(crate) platform: &'static str,
}

/// The accounts of every key. Connections only grow: nothing disconnects.
#[derive(Debug)]
pub(crate) struct AccountBook {
    owns_all: Vec<bool>,
    /// Per key: the accounts connected to it and their display names.
    connected: Vec<RwLock<BTreeMap<String, String>>>,
    /// Logins waiting for their checkpoint, per (key, account): the name the
    /// account will get.
    pending: Mutex<HashMap<(KeyIndex, String), String>>,
    /// Every account the configuration names, for keys that own `*`.
    configured: BTreeSet<String>,
    inactive: HashSet<String>,
}

impl AccountBook {
    pub(crate) fn new(config: &SimConfig) -> Self {
        let named = |id: &String| (id.clone(), catalog::account_name(id));
        let connected = config
            .keys
            .iter()
            .map(|k| {
                let accounts = k.accounts.iter().filter(|a| *a != ANY_ACCOUNT);
                RwLock::new(accounts.map(named).collect())
            })
            .collect();
        let configured = config
            .keys
            .iter()
            .flat_map(|k| k.accounts.iter())
            .chain(config.totals.keys())
            .chain(config.inactive_accounts.iter())
            .filter(|a| a.as_str() != ANY_ACCOUNT)
            .cloned()
            .collect();
        AccountBook {
            owns_all: config
                .keys
                .iter()
                .map(|k| k.accounts.iter().any(|a| a == ANY_ACCOUNT))
                .collect(),
            connected,
            pending: Mutex::new(HashMap::new()),
            configured,
            inactive: config.inactive_accounts.iter().cloned().collect(),
        }
    }

    /// Whether `key` may act for `account_id`.
    pub(crate) fn owns(&self, key: KeyIndex, account_id: &str) -> bool {
        self.owns_all.get(key).copied().unwrap_or(false) || self.is_connected(key, account_id)
    }

    /// Whether `account_id` is connected to `key` (named in its
    /// configuration or logged in), as opposed to owned through `*`.
    pub(crate) fn is_connected(&self, key: KeyIndex, account_id: &str) -> bool {
        self.connected
            .get(key)
            .is_some_and(|c| read(c).contains_key(account_id))
    }

    pub(crate) fn is_inactive(&self, account_id: &str) -> bool {
        self.inactive.contains(account_id)
    }

    /// Connects `account_id` to `key` under `name`, ending any checkpoint
    /// it was waiting for.
    pub(crate) fn connect(&self, key: KeyIndex, account_id: &str, name: String) {
        self.lock_pending().remove(&(key, account_id.to_owned()));
        if let Some(connected) = self.connected.get(key) {
            write(connected).insert(account_id.to_owned(), name);
        }
    }

    /// Records a login of `account_id` to `key` that waits for a checkpoint.
    pub(crate) fn await_checkpoint(&self, key: KeyIndex, account_id: &str, name: String) {
        self.lock_pending()
            .insert((key, account_id.to_owned()), name);
    }

    /// The name a login waiting for its checkpoint will connect under.
    pub(crate) fn pending_name(&self, key: KeyIndex, account_id: &str) -> Option<String> {
        self.lock_pending()
            .get(&(key, account_id.to_owned()))
            .cloned()
    }

    /// The accounts `key` lists, sorted by id: those connected to it, or
    /// for a key owning `*`, every account configured or connected anywhere.
    pub(crate) fn accounts_of(&self, key: KeyIndex) -> Vec<AccountEntry> {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        if self.owns_all.get(key).copied().unwrap_or(false) {
            for id in &self.configured {
                names.insert(id.clone(), catalog::account_name(id));
            }
            for connected in &self.connected {
                names.extend(read(connected).iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        if let Some(connected) = self.connected.get(key) {
            names.extend(read(connected).iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        names
            .into_iter()
            .map(|(account_id, name)| self.entry(account_id, name))
            .collect()
    }

    /// One account of `key`, or `None` if `key` does not own it.
    pub(crate) fn account_of(&self, key: KeyIndex, account_id: &str) -> Option<AccountEntry> {
        if !self.owns(key, account_id) {
            return None;
        }
        let name = self
            .connected
            .get(key)
            .and_then(|c| read(c).get(account_id).cloned())
            .or_else(|| {
                self.connected
                    .iter()
                    .find_map(|c| read(c).get(account_id).cloned())
            })
            .unwrap_or_else(|| catalog::account_name(account_id));
        Some(self.entry(account_id.to_owned(), name))
    }

    fn entry(&self, account_id: String, name: String) -> AccountEntry {
        AccountEntry {
            status: if self.is_inactive(&account_id) {
                "inactive"
            } else {
                "active"
            },
            account_id,
            name,
            platform: "linkedin",
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<(KeyIndex, String), String>> {
        // A panic elsewhere cannot leave the map half-written; keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read(
    lock: &RwLock<BTreeMap<String, String>>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, String>> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write(
    lock: &RwLock<BTreeMap<String, String>>,
) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, String>> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimKey;

    fn book() -> AccountBook {
        let mut config = SimConfig::default()
            .with_key(SimKey::new("a", "ka", ["acc-1", "acc-2"]))
            .with_key(SimKey::new("b", "kb", ["acc-3"]))
            .with_key(SimKey::new("all", "kc", ["*"]))
            .with_total("acc-9", 5);
        config.inactive_accounts.push("acc-2".to_owned());
        AccountBook::new(&config)
    }

    fn ids(entries: &[AccountEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.account_id.as_str()).collect()
    }

    #[test]
    fn configured_accounts_are_owned_and_listed() {
        let book = book();
        assert!(book.owns(0, "acc-1") && !book.owns(0, "acc-3"));
        assert!(book.owns(2, "anything") && !book.is_connected(2, "anything"));
        let listed = book.accounts_of(0);
        assert_eq!(ids(&listed), ["acc-1", "acc-2"]);
        assert_eq!(listed[1].status, "inactive");
        assert_eq!(listed[0].platform, "linkedin");
        assert_eq!(
            ids(&book.accounts_of(2)),
            ["acc-1", "acc-2", "acc-3", "acc-9"]
        );
        assert!(book.account_of(1, "acc-1").is_none());
        assert_eq!(book.account_of(0, "acc-1"), Some(listed[0].clone()));
    }

    #[test]
    fn logins_connect_after_their_checkpoint() {
        let book = book();
        book.await_checkpoint(1, "li-x", "Jane".to_owned());
        assert!(!book.owns(1, "li-x"));
        assert_eq!(book.pending_name(1, "li-x").as_deref(), Some("Jane"));
        assert_eq!(book.pending_name(0, "li-x"), None);
        book.connect(1, "li-x", "Jane".to_owned());
        assert!(book.owns(1, "li-x") && !book.owns(0, "li-x"));
        assert_eq!(book.pending_name(1, "li-x"), None);
        assert_eq!(ids(&book.accounts_of(1)), ["acc-3", "li-x"]);
        // The wildcard key lists every connected account, with its name.
        let all = book.accounts_of(2);
        assert!(
            all.iter()
                .any(|e| e.account_id == "li-x" && e.name == "Jane")
        );
        assert_eq!(
            book.account_of(2, "li-x").map(|e| e.name).as_deref(),
            Some("Jane")
        );
    }
}
