//! The shared ledger: budgets in Redis, so several gateway replicas spend one budget.
//!
//! Reserve, settle, release and the crash sweep are Lua scripts (the
//! `*.lua` files in this folder), each atomic on the server: the budget
//! check `used + reserved + estimate <= budget` and the hold happen in one
//! step, so replicas reserving at once can never together overspend. Scripts
//! run by SHA and are loaded again when the server answers `NOSCRIPT` (after
//! a restart). One multiplexed connection per ledger reconnects by itself.
//!
//! Every script is idempotent on the reservation id, which the replica draws
//! (64 random bits) before calling: a call whose answer was lost can be sent
//! again without holding or charging twice, and a reservation whose outcome
//! is unknown is released in the background.
//!
//! The request path never waits on Redis for a cache hit: `hit` counts it
//! in memory and a task adds the counts to Redis every second (a replica
//! crash loses at most that second of hit counts, never spend), and `balance`
//! answers from a local view of each tenant's period, refreshed in the
//! background once it is older than a second. `credits_remaining` on a hit
//! may therefore lag what other replicas spent by about a second.
//!
//! A replica that dies between reserve and settle leaves its reservations
//! open. [`RedisLedger::spawn_sweeper`] (any replica, several at once is
//! safe) counts those older than `stale_after` as spent and `orphaned`.
//!
//! Key layout (the `{t:<tenant>}` hash tag keeps a tenant in one Cluster slot):
//! - `vg:{t:<tenant>}:p:<period>`: hash `used, reserved, requests,
//!   cache_hits, credits_saved, orphaned`; expires 35 days after the period
//!   ends (computed from viewgate's [`Clock`]); `total` never expires.
//! - `vg:{t:<tenant>}:r:<id>`: hash `tenant, period, amount, created_ms,
//!   request_id`, one per open reservation; `<id>` is 16 hex digits.
//! - `vg:{t:<tenant>}:open`: sorted set of open reservation ids, scored by
//!   creation time in milliseconds on the server's clock.
//! - `vg:{t:<tenant>}:i:<key as hex>`: hash of one idempotency key, claimed
//!   or answered; expires with the key's TTL (see `idempotency`).
//! - `vg:{alerts}:*`: budget alerts fired and the webhook outbox (see `alerts`).
//! - `vg:{t:<tenant>}:s:<hour since the epoch>`: hash of the spend history
//!   of one hour, fields `c<mm>`, `h<mm>`, `k<mm>` per minute (see `history`);
//!   expires 26 hours after its last write. The period hash also counts
//!   `coalesced` and `credits_saved_coalesced`.
//!
//! Any Redis failure answers [`LedgerError::Unavailable`] (`redis: …`, never
//! the URL's password) within [`RedisLedger::CALL_TIMEOUT`]; the gateway turns it into 503.
//! Redis is the ledger of record here: charges survive a Redis restart only
//! as far as its own persistence (AOF/RDB) keeps them.
//!
//! The parts: `spend` (reserve, settle, release), `views` (the local
//! balances behind `balance`), `hits` (cache-hit counts and their writer
//! task), `history` (spend per minute), `sweeper` (reservations of crashed replicas), `idempotency`
//! (idempotency keys), `scripts` (the Lua scripts and their replies), `keys`
//! (key names and lifetimes). The connection itself, its timeouts and the
//! URL's redaction are `crate::redis`, shared with the rate limiter and the
//! shared cache tier.

mod alerts;
mod history;
mod hits;
mod idempotency;
mod keys;
mod scripts;
mod spend;
mod sweeper;
mod views;

use crate::ledger::Saving;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::redis::FromRedisValue;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use jiff::Timestamp;

use super::book::{Account, AccountKey, budget_period};
use super::hits::PendingHits;
use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use super::{Fingerprint, IdempotencyBegin, StoredAnswer};
use crate::clock::Clock;
use crate::config::Budget;
use crate::redis::{Connection, Op, RedisFailure, Retry};
use hits::{Expiry, write_hits_every_second};
use keys::{expiry, period_hash};
use scripts::Scripts;
use views::View;

/// See [`RedisLedger::CALL_TIMEOUT`].
const CALL_TIMEOUT: Duration = RedisLedger::CALL_TIMEOUT;

/// Lua numbers are doubles: counts are exact up to 2^53, and capped there.
const MAX_COUNT: u64 = (1 << 53) - 1;

/// The ledger on a Redis server shared by every replica.
///
/// Create it with [`RedisLedger::connect`] (it starts even when Redis is
/// down), start [`RedisLedger::spawn_sweeper`] on every replica, and call
/// [`Ledger::flush`] at graceful shutdown to write the last second of hit
/// counts. Dropping it stops its background tasks without writing them.
pub struct RedisLedger {
    inner: Arc<Inner>,
    stale_after: Duration,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: the connection's own Debug would print the URL's password.
        f.debug_struct("RedisLedger")
            .field("stale_after", &self.stale_after)
            .finish_non_exhaustive()
    }
}

/// What the ledger and its background tasks share.
struct Inner {
    redis: Connection,
    clock: Clock,
    scripts: Scripts,
    /// Each tenant's period as last seen in Redis, for `balance`.
    views: Mutex<HashMap<AccountKey, View>>,
    /// Cache hits counted here but not yet added in Redis.
    pending_hits: Mutex<PendingHits<Expiry>>,
    /// Spend-history minutes counted here but not yet added in Redis.
    pending_minutes: Mutex<history::PendingMinutes>,
    /// Held while hit counts are written, and by `usage` so that it never
    /// counts hits both in Redis and as pending.
    flushing: tokio::sync::Mutex<()>,
}

impl RedisLedger {
    /// How long a reservation may stay open before the sweeper counts it as
    /// spent, unless [`RedisLedger::with_stale_after`] says otherwise: far
    /// longer than any upstream call with its retries.
    pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10 * 60);

    /// The longest one ledger call waits on Redis, reconnecting and one retry
    /// included. Past it the call fails with [`LedgerError::Unavailable`].
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

    /// Prepares a ledger on the Redis server at `url` (`redis://[:password@]host:port[/db]`).
    ///
    /// Succeeds whether or not Redis answers now, so a gateway can start and
    /// report not-ready while Redis is down: calls answer
    /// [`LedgerError::Unavailable`] until it is reachable, and the connection
    /// is retried on each call. Fails only when `url` cannot be used at all.
    /// Connection attempts give up after 1 s, commands after 1 s, and a whole
    /// call after [`RedisLedger::CALL_TIMEOUT`].
    pub async fn connect(url: &str, clock: Clock) -> Result<RedisLedger, LedgerError> {
        let redis = Connection::open(url).map_err(unavailable)?;
        let inner = Arc::new(Inner {
            redis,
            clock,
            scripts: Scripts::new(),
            views: Mutex::new(HashMap::new()),
            pending_hits: Mutex::new(PendingHits::default()),
            pending_minutes: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(write_hits_every_second(Arc::downgrade(&inner)));
        if let Err(error) = inner.ping().await {
            tracing::warn!(%error, "the Redis ledger is unreachable; misses answer 503 until it is back");
        }
        Ok(RedisLedger {
            inner,
            stale_after: Self::DEFAULT_STALE_AFTER,
        })
    }

    /// Sets how long a reservation may stay open before the sweeper counts it
    /// as spent, and an idempotency key's claim before it reads as orphaned
    /// ([`RedisLedger::DEFAULT_STALE_AFTER`] unless set). Keep it well above
    /// the longest a miss can take (upstream timeout × attempts, plus waits).
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }
}

impl Inner {
    fn current_period(&self, budget: Option<Budget>) -> (String, Option<Timestamp>) {
        let now = self.clock.wall();
        let period = budget_period(budget);
        (period_key(period, now), expiry(period, now))
    }

    /// Runs `op` within [`CALL_TIMEOUT`], turning every failure into
    /// `Unavailable` (see [`Connection::run`] for when it is sent again).
    async fn run<T: FromRedisValue>(&self, op: Op<'_>, retry: Retry) -> Result<T, LedgerError> {
        self.redis
            .run(op, retry, CALL_TIMEOUT)
            .await
            .map_err(unavailable)
    }

    /// `Unavailable` for `reason`, without the URL's secrets.
    fn failure(&self, reason: impl fmt::Display) -> LedgerError {
        unavailable(self.redis.failure(reason))
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.run::<String>(Op::Cmd(&::redis::cmd("PING")), Retry::Once)
            .await
            .map(drop)
    }

    async fn usage(&self, tenants: &[(String, Option<Budget>)]) -> Result<Vec<Usage>, LedgerError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.wall();
        let periods: Vec<String> = tenants
            .iter()
            .map(|(_, budget)| period_key(budget_period(*budget), now))
            .collect();
        // Per tenant: its period's hash, then 25 hours of history.
        const PER_TENANT: usize = 26;
        let mut pipeline = ::redis::pipe();
        for ((tenant, _), period) in tenants.iter().zip(&periods) {
            pipeline.cmd("HGETALL").arg(period_hash(tenant, period));
            Inner::read_recent(&mut pipeline, tenant, now);
        }
        // Not while hit counts are being written: they would count twice.
        let _flushing = self.flushing.lock().await;
        let replies = self
            .run::<Vec<HashMap<String, i64>>>(Op::Pipeline(&pipeline), Retry::Once)
            .await?;
        if replies.len() != tenants.len() * PER_TENANT {
            return Err(self.failure("unexpected reply to the usage pipeline"));
        }
        let pending = lock(&self.pending_hits);
        let minutes = lock(&self.pending_minutes);
        let mut out = Vec::with_capacity(tenants.len());
        for (((tenant, budget), period), replies) in
            tenants.iter().zip(periods).zip(replies.chunks(PER_TENANT))
        {
            let fields = &replies[0];
            let field = |name: &str| count(fields.get(name).copied().unwrap_or(0));
            let key = (tenant.clone(), period);
            let mut account = Account {
                used: field("used"),
                reserved: field("reserved"),
                requests: field("requests"),
                cache_hits: field("cache_hits"),
                credits_saved: field("credits_saved"),
                orphaned: field("orphaned"),
                coalesced: field("coalesced"),
                credits_saved_coalesced: field("credits_saved_coalesced"),
            };
            pending.add_to(&key, &mut account);
            self.remember(key.clone(), account.used, account.reserved);
            let recent = self.recent_from(tenant, now, &replies[1..], &minutes);
            out.push(account.usage(tenant, *budget, key.1, recent));
        }
        Ok(out)
    }
}

impl Ledger for RedisLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        // Boxed: a round trip to Redis.
        Arc::clone(&self.inner)
            .reserve(Arc::clone(tenant), budget, estimate, request_id.to_string())
            .boxed()
    }

    fn settle(
        &self,
        reservation: Reservation,
        actual: u64,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        self.inner.close(reservation, Some(actual), budget).boxed()
    }

    fn release(
        &self,
        reservation: Reservation,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        self.inner.close(reservation, None, budget).boxed()
    }

    fn balance<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        self.inner.balance(tenant, budget)
    }

    fn saved<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        by: Saving,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        self.inner.count_saved(tenant, budget, by, credits_saved);
        self.inner.balance(tenant, budget)
    }

    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        self.inner.usage(tenants).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        self.inner.write_hits().boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        self.inner.ping().boxed()
    }

    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<IdempotencyBegin, LedgerError>> {
        // Boxed: a round trip to Redis.
        Arc::clone(&self.inner)
            .idempotency_begin(tenant, key, fingerprint, ttl, self.stale_after)
            .boxed()
    }

    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner
            .idempotency_complete(tenant, key, fingerprint, answer, ttl)
            .boxed()
    }

    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        async move {
            let name = idempotency::key_hash(tenant, key);
            self.inner.idempotency_abandon(&name, fingerprint, "").await
        }
        .boxed()
    }

    fn alert_fire<'a>(
        &'a self,
        alert: &'a super::Alert,
        deliver: bool,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        // Boxed: a round trip to Redis.
        self.inner.alert_fire(alert, deliver).boxed()
    }

    fn outbox_take(
        &self,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<super::OutboxEntry>, LedgerError>> {
        self.inner.outbox_take(now_ms, lease, limit).boxed()
    }

    fn outbox_done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner.outbox_done(id).boxed()
    }

    fn outbox_retry<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner.outbox_retry(id, next_attempt_ms).boxed()
    }
}

/// Redis counts are never negative; a negative one reads as 0.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The ledger's answer to a Redis failure: the gateway turns it into 503.
fn unavailable(failure: RedisFailure) -> LedgerError {
    LedgerError::Unavailable(failure.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a plain map write; a panic cannot
    // leave one half-done, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
