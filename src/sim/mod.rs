//! A faithful LinkupAPI V2 simulator: the upstream viewgate sits in front of,
//! played locally so tests, the demo and the benchmarks never need the real
//! service.
//!
//! It speaks the V2 contract (`POST /v2/{category}` with `{"account_id",
//! "action", "params"}` for every documented action, `GET /v2/accounts` and
//! `/v2/accounts/{account_id}`, `POST /v2/login` and `/v2/checkpoint`, the
//! success and error envelopes, `x-api-key` auth, per-key account
//! ownership), generates deterministic items per account, bills credits by
//! upstream's rules and counts what it billed per key, how often each viewer
//! page was asked for and how often each write was performed. Faults
//! (latency, 500, 429, hang, reset, non-JSON, an echoed key; and after a
//! billed action: a cut or oversized body, a hang, a reset), for every call
//! or one account, can be switched on from a test through [`SimHandle`] or
//! over HTTP on `/_sim/`.
//!
//! The simulator knows nothing of the gateway: nothing here imports from
//! outside `crate::sim`.
//!
//! Behaviour upstream leaves undocumented, as decided here (all
//! configurable through [`SimConfig`]): default `count` 10, maximum 100;
//! an empty page costs 0; `next_offset` is `offset + count` rounded up to a
//! multiple of 10; a 429 carries `Retry-After` in whole seconds; a bad body
//! or content type is 400 `INVALID_PARAMS`; `GET /v2/accounts` pages with
//! `limit` (default 100, at most 500) and `offset`; a checkpoint code is
//! `123456`.
//!
//! Modules, in request order: `server` (accept loop, routing, the action
//! path), `request` (bodies and params), `call` (faults around one call),
//! `actions` (which actions exist, their params), `answers` (what they
//! answer and cost), `catalog` (the synthetic items), `accounts` and
//! `account_api` (ownership, login, the account endpoints), `envelope` and
//! `body` (what is written back), `stats`, `rate_limit`, `fault`, `control`
//! (`/_sim/`), `handle` (shared state and [`SimHandle`]).

// The simulator stands for another service: it keeps its own (real) time.
#![allow(clippy::disallowed_methods)]

mod account_api;
mod accounts;
mod actions;
mod answers;
mod body;
mod call;
mod catalog;
mod control;
mod envelope;
mod fault;
mod handle;
mod rate_limit;
mod request;
mod server;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::net::TcpListener;

pub use fault::{EchoVariant, Fault, FaultKind, FaultPhase};
pub use handle::SimHandle;
pub use stats::{KeyStats, PageStats, SimStats, WriteStats};

/// One upstream API key the simulator accepts and the accounts it owns.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKey {
    /// Name used in counters and logs; the key value is never shown.
    pub name: String,
    /// The secret clients send in `x-api-key`.
    pub key: String,
    /// Accounts this key owns; `"*"` owns every account.
    pub accounts: Vec<String>,
}

impl SimKey {
    /// A key named `name` with value `key`, owning `accounts`.
    pub fn new(
        name: impl Into<String>,
        key: impl Into<String>,
        accounts: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        SimKey {
            name: name.into(),
            key: key.into(),
            accounts: accounts.into_iter().map(Into::into).collect(),
        }
    }
}

impl std::fmt::Debug for SimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key value is a secret: never print it.
        f.debug_struct("SimKey")
            .field("name", &self.name)
            .field("key", &"***")
            .field("accounts", &self.accounts)
            .finish()
    }
}

/// How the simulator behaves. `Default` has no keys and the values below.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The accepted keys.
    pub keys: Vec<SimKey>,
    /// Viewers per account unless `totals` says otherwise (87, as in the sample).
    pub default_total: u32,
    /// Viewers of specific accounts.
    pub totals: HashMap<String, u32>,
    /// `count` when the request gives none (10).
    pub default_count: u32,
    /// Largest accepted `count` (100); a larger count, or 0, is 400
    /// `INVALID_PARAMS`.
    pub max_count: u32,
    /// `next_offset` is `offset + count` rounded up to a multiple of this
    /// (10); 0 or 1 means no rounding.
    pub next_offset_step: u32,
    /// Credits for a page with no results (0).
    pub empty_page_cost: u32,
    /// Admitted requests per key per minute; over it, 429 `RATE_LIMITED`
    /// with `Retry-After`. `None` (the default) means no limit.
    pub rate_limit_per_minute: Option<u32>,
    /// Accounts that answer 403 `ACCOUNT_INACTIVE`.
    pub inactive_accounts: Vec<String>,
    /// Emails whose `POST /v2/login` answers `checkpoint_required`: the
    /// account is connected only by a `POST /v2/checkpoint` with
    /// `checkpoint_code`. Compared trimmed and without regard to case.
    pub checkpoint_emails: Vec<String>,
    /// The code `POST /v2/checkpoint` accepts (`123456`); any other is 400
    /// `INVALID_PARAMS`.
    pub checkpoint_code: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            keys: Vec::new(),
            default_total: 87,
            totals: HashMap::new(),
            default_count: 10,
            max_count: 100,
            next_offset_step: 10,
            empty_page_cost: 0,
            rate_limit_per_minute: None,
            inactive_accounts: Vec::new(),
            checkpoint_emails: Vec::new(),
            checkpoint_code: "123456".to_owned(),
        }
    }
}

impl SimConfig {
    /// Adds a key.
    pub fn with_key(mut self, key: SimKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Makes logins with this email wait for a checkpoint.
    pub fn with_checkpoint(mut self, email: impl Into<String>) -> Self {
        self.checkpoint_emails.push(email.into());
        self
    }

    /// Sets the number of viewers of one account.
    pub fn with_total(mut self, account_id: impl Into<String>, total: u32) -> Self {
        self.totals.insert(account_id.into(), total);
        self
    }
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds `listen` (port 0 picks a free port), spawns the server on the
    /// current tokio runtime and returns at once. Fails if the address
    /// cannot be bound or the keys are ambiguous (empty, or a name or value
    /// used twice).
    pub async fn start(config: SimConfig, listen: SocketAddr) -> std::io::Result<SimHandle> {
        let shared = Arc::new(handle::Shared::new(config)?);
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(server::accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(%addr, "sim: listening");
        Ok(SimHandle { shared, addr })
    }
}

/// Runs a simulator until ctrl-c (`viewgate sim --listen ADDR`). Prints
/// `viewgate sim listening on http://ADDR` with the real bound address, then
/// one `key NAME owns ACCOUNTS` line per key (accounts comma-separated, `-`
/// for none; the key value is never printed).
pub async fn run(listen: SocketAddr, config: SimConfig) -> anyhow::Result<()> {
    let owners: Vec<(String, String)> = config
        .keys
        .iter()
        .map(|k| {
            let accounts = if k.accounts.is_empty() {
                "-".to_owned()
            } else {
                k.accounts.join(",")
            };
            (k.name.clone(), accounts)
        })
        .collect();
    let handle = Simulator::start(config, listen)
        .await
        .with_context(|| format!("cannot start the simulator on {listen}"))?;
    println!("viewgate sim listening on http://{}", handle.addr());
    for (name, accounts) in owners {
        println!("key {name} owns {accounts}");
    }
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for ctrl-c")?;
    handle.shutdown();
    Ok(())
}
