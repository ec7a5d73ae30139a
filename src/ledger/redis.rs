//! The shared ledger: budgets in Redis, so several gateway replicas spend one budget.
//!
//! Reserve, settle, release and the crash sweep are Lua scripts (in
//! `redis/*.lua` beside this file), each atomic on the server: the budget
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
//! The request path never waits on Redis for a cache hit: `record_hit` counts
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
//!
//! Any Redis failure answers [`LedgerError::Unavailable`] (`redis: …`, never
//! the URL's password) within [`RedisLedger::CALL_TIMEOUT`]; the gateway turns it into 503.
//! Redis is the ledger of record here: charges survive a Redis restart only
//! as far as its own persistence (AOF/RDB) keeps them.

mod idempotency;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ::redis::{FromRedisValue, Script};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};
use jiff::civil::Time;
use jiff::tz::Offset;
use jiff::{SignedDuration, Span, Timestamp};

use super::book::{Account, AccountKey, budget_period};
use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use super::{Fingerprint, IdempotencyBegin, StoredAnswer};
use crate::clock::Clock;
use crate::config::{Budget, Period};
use crate::redis::{Connection, Op, RESPONSE_TIMEOUT, RedisFailure, Retry};

/// See [`RedisLedger::CALL_TIMEOUT`].
const CALL_TIMEOUT: Duration = RedisLedger::CALL_TIMEOUT;

/// A local balance older than this is refreshed from Redis (in the background).
const VIEW_MAX_AGE: Duration = Duration::from_secs(1);

/// A local balance nobody asked for in this long is forgotten.
const VIEW_IDLE_LIMIT: Duration = Duration::from_secs(10 * 60);

/// How often cache-hit counts are added to Redis.
const HIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a period's keys outlive the period, for reports on past periods.
const KEEP_AFTER_PERIOD: SignedDuration = SignedDuration::from_hours(35 * 24);

/// Lua numbers are doubles: counts are exact up to 2^53, and capped there.
const MAX_COUNT: u64 = (1 << 53) - 1;

/// The most reservations one sweep call looks at.
const SWEEP_BATCH: u64 = 100;

/// How many keys one `SCAN` step asks for while the sweeper finds tenants.
const SCAN_COUNT: u64 = 500;

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
    pending_hits: Mutex<HashMap<AccountKey, PendingHits>>,
    /// Held while hit counts are written, and by `usage` so that it never
    /// counts hits both in Redis and as pending.
    flushing: tokio::sync::Mutex<()>,
}

struct Scripts {
    reserve: Script,
    close: Script,
    sweep: Script,
    hits: Script,
    key_begin: Script,
    key_complete: Script,
    key_abandon: Script,
}

/// A tenant's period as Redis last answered it.
#[derive(Debug, Clone, Copy)]
struct View {
    used: u64,
    reserved: u64,
    /// No background refresh before this (one at a time, and at most one a
    /// second while Redis is unreachable).
    next_refresh: Instant,
    /// When `balance` last read it.
    read_at: Instant,
}

#[derive(Debug, Default, Clone, Copy)]
struct PendingHits {
    hits: u64,
    credits_saved: u64,
    /// When the period's keys expire; `None` for `total`.
    expires_at: Option<Timestamp>,
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
            scripts: Scripts {
                reserve: Script::new(include_str!("redis/reserve.lua")),
                close: Script::new(include_str!("redis/close.lua")),
                sweep: Script::new(include_str!("redis/sweep.lua")),
                hits: Script::new(include_str!("redis/hits.lua")),
                key_begin: Script::new(include_str!("redis/key_begin.lua")),
                key_complete: Script::new(include_str!("redis/key_complete.lua")),
                key_abandon: Script::new(include_str!("redis/key_abandon.lua")),
            },
            views: Mutex::new(HashMap::new()),
            pending_hits: Mutex::new(HashMap::new()),
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

    /// Starts a task that, every `every` (the first time right away), counts
    /// reservations open longer than `stale_after` as spent and `orphaned`.
    /// Run one on every replica: sweeps are atomic per tenant, so replicas
    /// sweeping at once count each reservation once. The task ends when the
    /// ledger is dropped, or when the handle is aborted.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let inner = Arc::downgrade(&self.inner);
        let stale_after = self.stale_after;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if let Err(error) = inner.sweep(stale_after).await {
                    tracing::debug!(%error, "reservation sweep failed; retrying next time");
                }
            }
        })
    }

    /// Counts every reservation open for at least `older_than` (on the Redis
    /// server's clock) as spent and `orphaned`, in every tenant. Returns how
    /// many reservations it closed.
    pub async fn sweep_now(&self, older_than: Duration) -> Result<u64, LedgerError> {
        self.inner.sweep(older_than).await
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

    async fn reserve(
        self: Arc<Self>,
        tenant: Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: String,
    ) -> Result<Reservation, LedgerError> {
        let (period, expires_at) = self.current_period(budget);
        let estimate = estimate.min(MAX_COUNT);
        let id =
            getrandom::u64().map_err(|e| self.failure(format!("no random reservation id: {e}")))?;
        let limit = budget.map_or_else(
            || "-1".to_string(),
            |b| b.credits.min(MAX_COUNT).to_string(),
        );
        let ttl = ttl_ms(expires_at, self.clock.wall());
        let mut invocation = self.scripts.reserve.prepare_invoke();
        invocation
            .key(period_hash(&tenant, &period))
            .key(reservation_hash(&tenant, id))
            .key(open_set(&tenant))
            .arg(limit)
            .arg(estimate)
            .arg(id_hex(id))
            .arg(&period)
            .arg(&request_id)
            .arg(ttl)
            .arg(&*tenant);
        let reply = self
            .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
            .await;
        let (held, used, reserved) = match reply.and_then(|r| self.triple(&r)) {
            Ok(triple) => triple,
            Err(error) => {
                // The script may have run with its answer lost: free what it
                // may hold rather than leave it for the sweeper to charge.
                self.release_later(Arc::clone(&tenant), period, id);
                return Err(error);
            }
        };
        self.remember((tenant.to_string(), period.clone()), used, reserved);
        if held == 0 {
            let remaining = budget
                .map_or(u64::MAX, |b| b.credits)
                .saturating_sub(used.saturating_add(reserved));
            return Err(LedgerError::Insufficient {
                needed: estimate,
                remaining,
            });
        }
        Ok(Reservation {
            id,
            tenant,
            period,
            amount: estimate,
        })
    }

    /// Releases reservation `id` in the background after a reserve whose
    /// outcome is unknown. Releasing an id that was never held changes nothing.
    fn release_later(self: &Arc<Self>, tenant: Arc<str>, period: String, id: u64) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            let reservation = Reservation {
                id,
                tenant,
                period,
                amount: 0,
            };
            for _ in 0..3 {
                tokio::time::sleep(RESPONSE_TIMEOUT).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if inner.close(reservation.clone(), None, None).await.is_ok() {
                    return;
                }
            }
            // Still unreachable: the sweeper will count it, if it exists.
        });
    }

    /// Settles (`actual` is `Some`) or releases; answers the current period's balance.
    async fn close(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> Result<Balance, LedgerError> {
        let tenant = &reservation.tenant;
        let (current, _) = self.current_period(budget);
        let mut invocation = self.scripts.close.prepare_invoke();
        invocation
            .key(reservation_hash(tenant, reservation.id))
            .key(open_set(tenant))
            .key(period_hash(tenant, &reservation.period))
            .key(period_hash(tenant, &current))
            .arg(id_hex(reservation.id))
            .arg(actual.map_or_else(String::new, |a| a.min(MAX_COUNT).to_string()));
        let reply = self
            .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
            .await?;
        let (_, used, reserved) = self.triple(&reply)?;
        self.remember((tenant.to_string(), current), used, reserved);
        Ok(Balance {
            used,
            reserved,
            limit: budget.map(|b| b.credits),
        })
    }

    /// Reads `used` and `reserved` of one tenant's period from Redis.
    async fn fetch_view(&self, key: &AccountKey) -> Result<(u64, u64), LedgerError> {
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(period_hash(&key.0, &key.1))
            .arg("used")
            .arg("reserved");
        let (used, reserved) = self
            .run::<(Option<i64>, Option<i64>)>(Op::Cmd(&cmd), Retry::Once)
            .await?;
        let (used, reserved) = (count(used.unwrap_or(0)), count(reserved.unwrap_or(0)));
        self.remember(key.clone(), used, reserved);
        Ok((used, reserved))
    }

    /// Refreshes a stale view without making the caller wait.
    fn refresh_later(self: &Arc<Self>, key: AccountKey) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(inner) = inner.upgrade() {
                // On failure the last known balance stays; the next attempt
                // waits for `next_refresh`.
                let _ = inner.fetch_view(&key).await;
            }
        });
    }

    /// Records what Redis just said about a tenant's period.
    fn remember(&self, key: AccountKey, used: u64, reserved: u64) {
        let now = self.clock.now();
        let mut views = lock(&self.views);
        let view = views.entry(key).or_insert(View {
            used,
            reserved,
            next_refresh: now,
            read_at: now,
        });
        view.used = used;
        view.reserved = reserved;
        view.next_refresh = now + VIEW_MAX_AGE;
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
        let mut pipeline = ::redis::pipe();
        for ((tenant, _), period) in tenants.iter().zip(&periods) {
            pipeline.cmd("HGETALL").arg(period_hash(tenant, period));
        }
        // Not while hit counts are being written: they would count twice.
        let _flushing = self.flushing.lock().await;
        let replies = self
            .run::<Vec<HashMap<String, i64>>>(Op::Pipeline(&pipeline), Retry::Once)
            .await?;
        let pending = lock(&self.pending_hits);
        let mut out = Vec::with_capacity(tenants.len());
        for (((tenant, budget), period), fields) in tenants.iter().zip(periods).zip(replies) {
            let field = |name: &str| count(fields.get(name).copied().unwrap_or(0));
            let key = (tenant.clone(), period);
            let mut account = Account {
                used: field("used"),
                reserved: field("reserved"),
                requests: field("requests"),
                cache_hits: field("cache_hits"),
                credits_saved: field("credits_saved"),
                orphaned: field("orphaned"),
            };
            if let Some(hits) = pending.get(&key) {
                account.cache_hits = account.cache_hits.saturating_add(hits.hits);
                account.credits_saved = account.credits_saved.saturating_add(hits.credits_saved);
            }
            self.remember(key.clone(), account.used, account.reserved);
            out.push(account.usage(tenant, *budget, key.1));
        }
        Ok(out)
    }

    /// Adds the hit counts counted here to Redis. Counts stay pending until
    /// Redis confirms them, so an outage delays them instead of losing them.
    async fn write_hits(&self) -> Result<(), LedgerError> {
        let _flushing = self.flushing.lock().await;
        let snapshot: Vec<(AccountKey, PendingHits)> = lock(&self.pending_hits)
            .iter()
            .map(|(key, hits)| (key.clone(), *hits))
            .collect();
        for ((tenant, period), hits) in snapshot {
            let mut invocation = self.scripts.hits.prepare_invoke();
            invocation
                .key(period_hash(&tenant, &period))
                .arg(hits.hits.min(MAX_COUNT))
                .arg(hits.credits_saved.min(MAX_COUNT))
                .arg(ttl_ms(hits.expires_at, self.clock.wall()));
            // Never resent: a lost answer may mean they were added. If the
            // call fails anyway they are sent again next second, so a lost
            // answer can count one second of hits twice (statistics, not money).
            self.run::<i64>(Op::Script(&invocation), Retry::Never)
                .await?;
            let key = (tenant, period);
            let mut pending = lock(&self.pending_hits);
            if let Some(left) = pending.get_mut(&key) {
                left.hits = left.hits.saturating_sub(hits.hits);
                left.credits_saved = left.credits_saved.saturating_sub(hits.credits_saved);
                if left.hits == 0 && left.credits_saved == 0 {
                    pending.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Finds every tenant with open reservations and sweeps the stale ones.
    async fn sweep(&self, older_than: Duration) -> Result<u64, LedgerError> {
        let older_than_ms = u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX);
        let mut swept = 0;
        for open in self.open_sets().await? {
            let prefix = open.trim_end_matches("open");
            loop {
                let mut invocation = self.scripts.sweep.prepare_invoke();
                invocation
                    .key(&open)
                    .arg(prefix)
                    .arg(older_than_ms.min(MAX_COUNT))
                    .arg(SWEEP_BATCH);
                let reply = self
                    .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
                    .await?;
                let (reservations, credits, looked_at) = self.triple(&reply)?;
                if reservations > 0 {
                    tracing::warn!(
                        tenant = tenant_of(prefix),
                        reservations,
                        credits,
                        "reservations left open by a crashed replica counted as spent"
                    );
                    swept += reservations;
                }
                if looked_at < SWEEP_BATCH {
                    break;
                }
            }
        }
        Ok(swept)
    }

    /// The keys of every tenant's open-reservation set (a `SCAN`: on a
    /// Cluster it would have to run on each primary).
    async fn open_sets(&self) -> Result<Vec<String>, LedgerError> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = ::redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg("vg:{t:*}:open")
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found) = self
                .run::<(u64, Vec<String>)>(Op::Cmd(&cmd), Retry::Once)
                .await?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// The three counts every script answers with.
    fn triple(&self, reply: &[i64]) -> Result<(u64, u64, u64), LedgerError> {
        match reply {
            [a, b, c] => Ok((count(*a), count(*b), count(*c))),
            _ => Err(self.failure(format!("unexpected script reply {reply:?}"))),
        }
    }

    /// Forgets views nobody read for a while (old periods, removed tenants).
    fn forget_idle_views(&self) {
        let now = self.clock.now();
        lock(&self.views).retain(|_, view| now.duration_since(view.read_at) < VIEW_IDLE_LIMIT);
    }
}

/// Adds hit counts to Redis every second until the ledger is dropped.
async fn write_hits_every_second(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(HIT_FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.forget_idle_views();
        if lock(&inner.pending_hits).is_empty() {
            continue;
        }
        if let Err(error) = inner.write_hits().await {
            tracing::debug!(%error, "hit counts not written; retrying next second");
        }
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
        let limit = budget.map(|b| b.credits);
        let (period, _) = self.inner.current_period(budget);
        let key = (tenant.to_string(), period);
        let now = self.inner.clock.now();
        let known = {
            let mut views = lock(&self.inner.views);
            views.get_mut(&key).map(|view| {
                view.read_at = now;
                let stale = now >= view.next_refresh;
                if stale {
                    view.next_refresh = now + VIEW_MAX_AGE;
                }
                (view.used, view.reserved, stale)
            })
        };
        match known {
            // On the cache-hit path: answer from the view, refresh it behind.
            Some((used, reserved, stale)) => {
                if stale {
                    self.inner.refresh_later(key);
                }
                ready(Ok(Balance {
                    used,
                    reserved,
                    limit,
                }))
                .boxed()
            }
            // Never seen: ask Redis once. Boxed: a round trip.
            None => async move {
                let (used, reserved) = self.inner.fetch_view(&key).await?;
                Ok(Balance {
                    used,
                    reserved,
                    limit,
                })
            }
            .boxed(),
        }
    }

    fn record_hit<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        // Counted here; written with the next second's batch (see write_hits).
        let (period, expires_at) = self.inner.current_period(budget);
        let mut pending = lock(&self.inner.pending_hits);
        let hits = pending
            .entry((tenant.to_string(), period))
            .or_insert(PendingHits {
                expires_at,
                ..PendingHits::default()
            });
        hits.hits = hits.hits.saturating_add(1);
        hits.credits_saved = hits.credits_saved.saturating_add(credits_saved);
        ready(Ok(())).boxed()
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
}

/// The moment the keys of `period` containing `now` expire: 35 days after the
/// period ends. `None` for `total`, which never expires.
fn expiry(period: Period, now: Timestamp) -> Option<Timestamp> {
    let date = Offset::UTC.to_datetime(now).date();
    let end = match period {
        Period::Day => date.tomorrow().ok()?,
        Period::Week => {
            let days_left = 7 - i64::from(date.weekday().to_monday_zero_offset());
            date.checked_add(Span::new().days(days_left)).ok()?
        }
        Period::Month => date.last_of_month().tomorrow().ok()?,
        Period::Total => return None,
    };
    let end = Offset::UTC
        .to_timestamp(end.to_datetime(Time::midnight()))
        .ok()?;
    end.checked_add(KEEP_AFTER_PERIOD).ok()
}

/// Milliseconds from `now` until `expires_at` (at least 1), or 0 for never.
/// Relative, so the keys' lifetime follows viewgate's clock, not Redis's.
fn ttl_ms(expires_at: Option<Timestamp>, now: Timestamp) -> u64 {
    expires_at.map_or(0, |at| {
        u64::try_from(at.as_millisecond().saturating_sub(now.as_millisecond()))
            .unwrap_or(0)
            .max(1)
    })
}

fn tenant_prefix(tenant: &str) -> String {
    format!("vg:{{t:{tenant}}}:")
}

fn period_hash(tenant: &str, period: &str) -> String {
    format!("{}p:{period}", tenant_prefix(tenant))
}

fn reservation_hash(tenant: &str, id: u64) -> String {
    format!("{}r:{}", tenant_prefix(tenant), id_hex(id))
}

fn open_set(tenant: &str) -> String {
    format!("{}open", tenant_prefix(tenant))
}

fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// The tenant named in a key prefix `vg:{t:<tenant>}:`.
fn tenant_of(prefix: &str) -> &str {
    prefix
        .strip_prefix("vg:{t:")
        .and_then(|rest| rest.strip_suffix("}:"))
        .unwrap_or(prefix)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        assert_eq!(period_hash("crm", "2026-11-27"), "vg:{t:crm}:p:2026-11-27");
        assert_eq!(
            reservation_hash("crm", 255),
            "vg:{t:crm}:r:00000000000000ff"
        );
        assert_eq!(open_set("crm"), "vg:{t:crm}:open");
        assert_eq!(tenant_of("vg:{t:crm}:"), "crm");
    }

    #[test]
    fn period_keys_expire_35_days_after_the_period_ends() {
        let now = at("2026-11-27T10:00:00Z");
        let day = SignedDuration::from_hours(24);
        let after = |end: &str| at(end).checked_add(KEEP_AFTER_PERIOD).unwrap();
        assert_eq!(
            expiry(Period::Day, now),
            Some(after("2026-11-28T00:00:00Z"))
        );
        // Friday: week 48 ends when Monday 2026-11-30 starts.
        assert_eq!(
            expiry(Period::Week, now),
            Some(after("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            expiry(Period::Week, at("2026-11-30T00:00:00Z")),
            Some(after("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            expiry(Period::Month, now),
            Some(after("2026-12-01T00:00:00Z"))
        );
        assert_eq!(expiry(Period::Total, now), None);
        let ttl = ttl_ms(expiry(Period::Day, now), now);
        let expected = (day * 35 + SignedDuration::from_hours(14)).as_millis();
        assert_eq!(i128::from(ttl), expected);
        assert_eq!(ttl_ms(None, now), 0);
    }
}
