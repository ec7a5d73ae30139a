//! The simulator's shared state and the handle tests hold to steer it:
//! counters, the active fault, revoked keys, connected accounts and shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::SimConfig;
use super::accounts::AccountBook;
use super::fault::{Fault, FaultSlot};
use super::rate_limit::RateLimiter;
use super::stats::{Counters, SimStats};

/// Index of a configured key in `SimConfig::keys`.
pub(crate) type KeyIndex = usize;

/// State shared by the accept loop, every connection and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) counters: Counters,
    pub(crate) fault: FaultSlot,
    pub(crate) limiter: RateLimiter,
    pub(crate) accounts: AccountBook,
    key_by_value: HashMap<String, KeyIndex>,
    key_by_name: HashMap<String, KeyIndex>,
    revoked: Vec<AtomicBool>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Indexes the configuration; refuses duplicate or empty key names and
    /// values, which would make billing ambiguous.
    pub(crate) fn new(config: SimConfig) -> io::Result<Self> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let mut key_by_value = HashMap::new();
        let mut key_by_name = HashMap::new();
        for (index, key) in config.keys.iter().enumerate() {
            if key.name.is_empty() || key.key.is_empty() {
                return Err(invalid(format!(
                    "simulator key #{index} needs a non-empty name and key"
                )));
            }
            if key_by_name.insert(key.name.clone(), index).is_some() {
                return Err(invalid(format!(
                    "simulator key name {:?} is used twice",
                    key.name
                )));
            }
            // Name the key, never print its value.
            if key_by_value.insert(key.key.clone(), index).is_some() {
                return Err(invalid(format!(
                    "simulator key {:?} has the same value as another key",
                    key.name
                )));
            }
        }
        let (shutdown, _) = watch::channel(false);
        Ok(Shared {
            counters: Counters::new(config.keys.iter().map(|k| k.name.clone())),
            fault: FaultSlot::default(),
            limiter: RateLimiter::new(config.rate_limit_per_minute, config.keys.len()),
            accounts: AccountBook::new(&config),
            key_by_value,
            key_by_name,
            revoked: config.keys.iter().map(|_| AtomicBool::new(false)).collect(),
            shutdown,
            config,
        })
    }

    /// The key an `x-api-key` value belongs to, unless unknown or revoked.
    pub(crate) fn authenticate(&self, api_key: Option<&str>) -> Option<KeyIndex> {
        let index = *self.key_by_value.get(api_key?)?;
        let revoked = self.revoked.get(index)?.load(Ordering::Relaxed);
        (!revoked).then_some(index)
    }

    pub(crate) fn key_index(&self, name: &str) -> Option<KeyIndex> {
        self.key_by_name.get(name).copied()
    }

    /// Marks a key revoked or not; false if no key has that name.
    pub(crate) fn set_revoked(&self, name: &str, revoked: bool) -> bool {
        let Some(flag) = self.key_index(name).and_then(|i| self.revoked.get(i)) else {
            return false;
        };
        flag.store(revoked, Ordering::Relaxed);
        true
    }

    /// Number of viewers of an account.
    pub(crate) fn viewers_total(&self, account_id: &str) -> u64 {
        u64::from(
            self.config
                .totals
                .get(account_id)
                .copied()
                .unwrap_or(self.config.default_total),
        )
    }

    /// Whether a login with this email (trimmed, lower case) must pass a
    /// checkpoint before its account is connected.
    pub(crate) fn needs_checkpoint(&self, email: &str) -> bool {
        self.config
            .checkpoint_emails
            .iter()
            .any(|e| e.trim().eq_ignore_ascii_case(email))
    }

    pub(crate) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has been asked for.
    pub(crate) async fn shutdown_requested(&self) {
        let mut receiver = self.subscribe_shutdown();
        // The sender lives in `self`, so this can only end by shutdown.
        let _ = receiver.wait_for(|stop| *stop).await;
    }

    fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// A handle on a running simulator: where it listens, what it counted, and
/// the switches tests flip (faults, revoked keys, shutdown). Cheap to clone;
/// dropping it does not stop the simulator.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The address the simulator is bound to (the real port when asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, with an unspecified bind address (`0.0.0.0`, `::`)
    /// replaced by loopback so the URL can be dialled.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> SimStats {
        self.shared.counters.snapshot()
    }

    /// Every request that reached a `/v2/` path, whatever the outcome.
    pub fn calls_total(&self) -> u64 {
        self.shared.counters.calls_total()
    }

    /// Credits billed, all keys.
    pub fn credits_total(&self) -> u64 {
        self.shared.counters.credits_total()
    }

    /// Credits billed to the key with this name (0 for an unknown name).
    pub fn credits_for(&self, key_name: &str) -> u64 {
        self.shared
            .key_index(key_name)
            .map_or(0, |i| self.shared.counters.key_credits(i))
    }

    /// Requests authenticated as the key with this name (0 for an unknown name).
    pub fn calls_for(&self, key_name: &str) -> u64 {
        self.shared
            .key_index(key_name)
            .map_or(0, |i| self.shared.counters.key_calls(i))
    }

    /// `get_viewers` requests for this page (offset and count after
    /// defaults), whatever the outcome.
    pub fn page_calls(&self, account_id: &str, offset: u32, count: u32) -> u64 {
        self.shared.counters.page_calls(account_id, offset, count)
    }

    /// Times this write was performed: `action` (`invite`, `send`,
    /// `comment`, `login`, `checkpoint`) by `account_id` to `target` (see
    /// [`WriteStats`](super::WriteStats) for what the target of each is).
    /// Counted when the simulator performed it, even if a fault then spoiled
    /// the reply.
    pub fn writes(&self, action: &str, account_id: &str, target: &str) -> u64 {
        self.shared.counters.writes(action, account_id, target)
    }

    /// Writes performed, all actions, accounts and targets.
    pub fn writes_total(&self) -> u64 {
        self.shared.counters.writes_total()
    }

    /// The account ids `GET /v2/accounts` lists for the key with this name
    /// (empty for an unknown name): configured ones and those connected
    /// through login.
    pub fn accounts_for(&self, key_name: &str) -> Vec<String> {
        self.shared
            .key_index(key_name)
            .map_or_else(Vec::new, |key| {
                let listed = self.shared.accounts.accounts_of(key);
                listed.into_iter().map(|a| a.account_id).collect()
            })
    }

    /// Replaces the active fault.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.set(fault);
    }

    /// Removes the active fault.
    pub fn clear_fault(&self) {
        self.shared.fault.clear();
    }

    /// The active fault, with its remaining `times`.
    pub fn current_fault(&self) -> Option<Fault> {
        self.shared.fault.current()
    }

    /// Zeroes every counter, writes included (not the rate-limit windows,
    /// nor the accounts connected through login).
    pub fn reset_stats(&self) {
        self.shared.counters.reset();
    }

    /// Reopens every key's rate-limit window.
    pub fn reset_rate_limits(&self) {
        self.shared.limiter.reset();
    }

    /// Revokes (or restores) a key: a revoked key gets 403 `INVALID_API_KEY`.
    /// An unknown name is ignored.
    pub fn set_key_revoked(&self, key_name: &str, revoked: bool) {
        if !self.shared.set_revoked(key_name, revoked) {
            tracing::warn!(key = key_name, "sim: no key with this name to revoke");
        }
    }

    /// Stops accepting connections and closes the open ones: idle
    /// connections at once, hung and delayed requests without an answer.
    /// Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}
