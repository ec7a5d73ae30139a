//! Rate limiters: GCRA in this process (governor), or shared by every
//! replica through Redis.
//!
//! A `local` limit is a governor limiter on viewgate's clock: exact for one
//! process, free of I/O. A `global` limit keeps the GCRA's theoretical
//! arrival time in Redis and updates it in one Lua script that reads the
//! Redis server's own clock, so N replicas together allow the configured
//! rate. When Redis cannot be reached, a global limiter falls back to its
//! local twin (each replica then allows the full rate on its own) and says
//! so in the log; it goes back to Redis by itself on the next call that
//! reaches it. Its Redis failures read "rate limit store unavailable", so
//! they are not mistaken for the ledger's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use redis::Script;

use crate::clock::Clock;
use crate::config::RateLimit;
use crate::redis::{Connection, Op, RedisFailure, Retry};

/// A GCRA limiter in this process, on viewgate's clock (one per tenant or
/// upstream key: their quotas differ).
pub(crate) type LocalLimiter =
    governor::RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Instant>>;

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead (one cell taken).
    Allowed,
    /// Not before this long.
    Wait(Duration),
}

/// GCRA state in Redis, shared by the replicas.
pub struct RedisGcra {
    redis: Connection,
    script: Script,
    /// True while Redis is unreachable and limits run locally.
    degraded: AtomicBool,
}

impl std::fmt::Debug for RedisGcra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisGcra")
    }
}

/// Whole call bound: a slow Redis must not stall the request path.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The GCRA step: `KEYS[1]` holds the theoretical arrival time (µs, server
/// clock); `ARGV[1]` is the emission interval and `ARGV[2]` the burst
/// tolerance, both in µs. Returns `{1, 0}` when allowed, `{0, wait_µs}` when not.
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
"#;

impl RedisGcra {
    /// A limiter store on the Redis at `url` (connects lazily, reconnects by itself).
    pub fn connect(url: &str) -> Result<Arc<Self>, String> {
        let redis = Connection::open(url).map_err(unavailable)?;
        Ok(Arc::new(Self {
            redis,
            script: Script::new(GCRA_LUA),
            degraded: AtomicBool::new(false),
        }))
    }

    async fn check(&self, key: &str, limit: &RateLimit) -> Result<Decision, String> {
        let emission = (limit.period.as_micros() / u128::from(limit.count.get())).max(1) as u64;
        let tolerance = emission.saturating_mul(u64::from(limit.burst.get()) - 1);
        let mut invocation = self.script.key(key);
        invocation.arg(emission).arg(tolerance);
        // Never resent: a limiter that cannot ask Redis at once falls back
        // to its local twin rather than wait for a reconnect.
        let reply = self
            .redis
            .run::<(i64, i64)>(Op::Script(&invocation), Retry::Never, CALL_TIMEOUT)
            .await;
        match reply {
            Ok((1, _)) => Ok(Decision::Allowed),
            Ok((_, wait_us)) => Ok(Decision::Wait(Duration::from_micros(wait_us.max(1) as u64))),
            Err(failure) => Err(unavailable(failure)),
        }
    }

    /// Whether limits are running locally because Redis is unreachable.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }
}

/// A rate limiter of one tenant or one upstream key.
#[derive(Debug)]
pub enum Limiter {
    /// This process only.
    Local(Arc<LocalLimiter>),
    /// Shared by all replicas through Redis; `fallback` while Redis is down.
    Global {
        /// Where the state lives.
        store: Arc<RedisGcra>,
        /// The Redis key (hash-tagged per tenant or key).
        key: String,
        /// The limit.
        limit: RateLimit,
        /// Used while Redis is unreachable.
        fallback: Arc<LocalLimiter>,
    },
}

impl Limiter {
    /// A local limiter for `limit` on `clock`.
    pub fn local(limit: &RateLimit, clock: &Clock) -> Self {
        Limiter::Local(Arc::new(governor::RateLimiter::direct_with_clock(
            limit.quota(),
            clock.clone(),
        )))
    }

    /// A global limiter stored under `key`.
    pub fn global(store: Arc<RedisGcra>, key: String, limit: &RateLimit, clock: &Clock) -> Self {
        Limiter::Global {
            store,
            key,
            limit: *limit,
            fallback: Arc::new(governor::RateLimiter::direct_with_clock(
                limit.quota(),
                clock.clone(),
            )),
        }
    }

    /// The limiter `limit` asks for: global under `key` when a Redis store is
    /// configured and the limit's scope is global, local otherwise.
    pub fn for_limit(
        limit: &RateLimit,
        redis: Option<&Arc<RedisGcra>>,
        key: impl FnOnce() -> String,
        clock: &Clock,
    ) -> Self {
        match redis {
            Some(store) if limit.is_global(true) => {
                Limiter::global(Arc::clone(store), key(), limit, clock)
            }
            _ => Limiter::local(limit, clock),
        }
    }

    /// Takes a cell now, or says how long to wait (local limiters only;
    /// `None` for a global one, which needs [`Limiter::check`]).
    pub fn check_local(&self, clock: &Clock) -> Option<Decision> {
        match self {
            Limiter::Local(l) => Some(check_governor(l, clock)),
            Limiter::Global { .. } => None,
        }
    }

    /// Takes a cell, or says how long to wait.
    pub async fn check(&self, clock: &Clock) -> Decision {
        match self {
            Limiter::Local(l) => check_governor(l, clock),
            Limiter::Global {
                store,
                key,
                limit,
                fallback,
            } => match store.check(key, limit).await {
                Ok(decision) => {
                    if store.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("Redis is back: rate limits are global again");
                    }
                    decision
                }
                Err(reason) => {
                    if !store.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            reason = reason.as_str(),
                            "Redis unreachable: rate limits fall back to this replica's local limiters"
                        );
                    }
                    check_governor(fallback, clock)
                }
            },
        }
    }
}

/// What the log and `connect`'s error say when Redis fails the limiter.
fn unavailable(failure: RedisFailure) -> String {
    format!("rate limit store unavailable: {failure}")
}

fn check_governor(limiter: &LocalLimiter, clock: &Clock) -> Decision {
    match limiter.check() {
        Ok(()) => Decision::Allowed,
        Err(not_until) => Decision::Wait(not_until.wait_time_from(clock.now())),
    }
}

/// Whole seconds, rounded up, at least 1 (for `retry-after`).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Waits for `limiter` until `give_up` (an instant of `clock`); `Err(wait)`
/// when the wait would pass it.
pub(crate) async fn wait_for(
    limiter: &Limiter,
    clock: &Clock,
    give_up: Instant,
) -> Result<(), Duration> {
    loop {
        match limiter.check(clock).await {
            Decision::Allowed => return Ok(()),
            Decision::Wait(wait) => {
                if clock.now() + wait > give_up {
                    return Err(wait);
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}
