//! The gateway: its shared parts, and the request path as one tower stack.
//!
//! `build_stack` is the architecture in one function: read it top to bottom
//! to follow a request from the socket to the upstream and back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::accounts::AccountDirectory;
use crate::actions::ActionTable;
use crate::alerts::Alerts;
use crate::cache::PageCache;
use crate::cache::shared::SharedTier;
use crate::clock::Clock;
use crate::config::{Config, LedgerConfig};
use crate::credits::Credits;
use crate::layers::accounts::AccountsLayer;
use crate::layers::admission::AdmissionLayer;
use crate::layers::auth::AuthLayer;
use crate::layers::cache::CacheService;
use crate::layers::idempotency::IdempotencyLayer;
use crate::layers::parse::ParseLayer;
use crate::layers::policy::PolicyLayer;
use crate::layers::quote::QuoteLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::{KnownKeys, RequestIdLayer};
use crate::layers::rescue::RescueLayer;
use crate::layers::route::RouteLayer;
use crate::ledger::{Ledger, MemoryLedger, RedisLedger, SqliteLedger};
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::miss::{MissPath, MissService};
use crate::ratelimit::RedisGcra;
use crate::response::Body;
use crate::tenant::Tenants;
use crate::upstream::Upstream;

/// The whole request path as one cloneable service.
pub type Stack<B> = BoxCloneSyncService<Request<B>, Response<Body>, Infallible>;

/// Everything the request path shares, built once from a [`Config`].
#[derive(Clone)]
pub struct Gateway {
    /// The configuration it was built from.
    pub(crate) config: Arc<Config>,
    /// The clock every stage reads.
    pub(crate) clock: Clock,
    /// Tenants by key hash.
    pub(crate) tenants: Arc<Tenants>,
    /// Where credits are recorded.
    pub(crate) ledger: Arc<dyn Ledger>,
    /// Every ledger call of the request path (shared across reloads, so
    /// the last balances known survive them).
    pub(crate) credits: Arc<Credits>,
    /// The action table.
    pub(crate) actions: Arc<ActionTable>,
    /// The accounts each upstream key lists, held briefly.
    pub(crate) accounts: Arc<AccountDirectory>,
    /// The page cache.
    pub(crate) cache: PageCache,
    /// The upstream client.
    pub(crate) upstream: Arc<Upstream>,
    /// Prometheus metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Admission slots: `server.max_in_flight` requests at once.
    pub(crate) slots: Arc<Semaphore>,
    /// Shared rate-limit state, when the ledger is on Redis.
    pub(crate) redis: Option<Arc<RedisGcra>>,
    /// Errors the request path meets again and again (the ledger or the
    /// upstream down) are logged once, then summed up.
    pub(crate) logs: Arc<LogThrottle>,
    /// Work that goes on after its request has been answered or abandoned
    /// (a paid upstream call past the request deadline, an idempotent write
    /// whose client hung up): shared across reloads, and waited for at
    /// shutdown so no paid call is cut off unrecorded.
    pub(crate) detached: TaskTracker,
    /// Cancelled when shutdown begins (shared across reloads): an upstream
    /// call still waiting for its turn (the key's pace, a retry's backoff)
    /// is then not sent at all.
    pub(crate) stopping: CancellationToken,
}

impl Gateway {
    /// Builds the gateway's parts. Fails with a readable reason (never a key).
    /// With the Redis ledger, Redis need not be up: the gateway starts, is
    /// not ready, and serves cache hits until Redis answers.
    pub async fn new(config: Config, clock: Clock) -> Result<Self, String> {
        let mut redis = None;
        let ledger: Arc<dyn Ledger> = match &config.ledger {
            LedgerConfig::Memory => Arc::new(MemoryLedger::new(clock.clone())),
            LedgerConfig::Sqlite { path } => {
                Arc::new(SqliteLedger::open(path, clock.clone()).map_err(|e| e.to_string())?)
            }
            LedgerConfig::Redis { url } => {
                // A reservation open longer than any miss can take was left by a
                // crashed replica: count it as spent.
                let longest_miss = config.upstream.deadline + config.server.request_timeout;
                let ledger = RedisLedger::connect(url, clock.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .with_stale_after((longest_miss * 2).max(RedisLedger::DEFAULT_STALE_AFTER));
                ledger.spawn_sweeper(Duration::from_secs(30));
                redis = Some(RedisGcra::connect(url)?);
                Arc::new(ledger)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let longest_ttl = config
            .actions
            .rules()
            .iter()
            .filter_map(|r| r.cache_ttl)
            .max()
            .unwrap_or(config.cache.ttl);
        let mut cache = PageCache::new(&config.cache, clock.clone(), longest_ttl);
        let stopping = CancellationToken::new();
        let upstream = Arc::new(Upstream::new(
            &config.upstream,
            clock.clone(),
            Arc::clone(&metrics),
            redis.as_ref(),
            stopping.clone(),
        )?);
        if let (true, LedgerConfig::Redis { url }) = (config.cache.shared, &config.ledger) {
            cache = cache.with_shared(SharedTier::connect(url)?);
        }
        let alerts = Alerts::start(
            Arc::clone(&ledger),
            Arc::clone(&metrics),
            clock.clone(),
            &config.alerts,
        )?;
        let tenants = Arc::new(Tenants::new(&config.tenants, &clock, None, redis.as_ref()));
        // Balances are checked at start: spend a crash left behind fires its alerts.
        alerts.watch(Arc::clone(&tenants));
        Ok(Self {
            detached: TaskTracker::new(),
            stopping,
            logs: Arc::new(LogThrottle::new(clock.clone())),
            slots: Arc::new(Semaphore::new(config.server.max_in_flight)),
            tenants,
            cache,
            accounts: Arc::new(AccountDirectory::new(Arc::clone(&upstream), clock.clone())),
            upstream,
            redis,
            metrics,
            credits: Arc::new(Credits::new(Arc::clone(&ledger)).with_alerts(alerts)),
            actions: Arc::new(config.actions.clone()),
            ledger,
            clock,
            config: Arc::new(config),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Tenants by key hash.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// Where credits are recorded.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Admission slots free now (of `server.max_in_flight`).
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// This gateway recording credits in `ledger` instead (tests use it to
    /// put a failing ledger in place).
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        let mut credits = Credits::new(Arc::clone(&ledger));
        // Built before with this config, so it builds again; the old
        // delivery task stops with the old alerts.
        if let Ok(alerts) = Alerts::start(
            Arc::clone(&ledger),
            Arc::clone(&self.metrics),
            self.clock.clone(),
            &self.config.alerts,
        ) {
            alerts.watch(Arc::clone(&self.tenants));
            credits = credits.with_alerts(alerts);
        }
        self.credits = Arc::new(credits);
        self.ledger = ledger;
        self
    }

    /// The gateway `config` describes, built from this one: the clock,
    /// ledger, cache (pages and in-flight fetches) and metrics carry over;
    /// tenants are rebuilt, keeping the limiter state of those whose rate
    /// limit did not change; the upstream client is rebuilt only if its
    /// settings changed. Returns the settings that need a restart to change.
    pub fn reconfigure(&self, mut config: Config) -> Result<(Gateway, Vec<&'static str>), String> {
        let old = &self.config;
        // What cannot change in a running process keeps its running value, so
        // the configuration in force always describes what is really running.
        let mut ignored = Vec::new();
        if config.server.listen != old.server.listen {
            ignored.push("server.listen");
            config.server.listen = old.server.listen;
        }
        // The listener reads these once, when it starts accepting.
        let server = &mut config.server;
        let fixed = &old.server;
        if server.header_timeout != fixed.header_timeout {
            ignored.push("server.header_timeout_ms");
            server.header_timeout = fixed.header_timeout;
        }
        if server.idle_timeout != fixed.idle_timeout {
            ignored.push("server.idle_timeout_ms");
            server.idle_timeout = fixed.idle_timeout;
        }
        if server.max_connections != fixed.max_connections {
            ignored.push("server.max_connections");
            server.max_connections = fixed.max_connections;
        }
        if server.workers != fixed.workers {
            ignored.push("server.workers");
            server.workers = fixed.workers;
        }
        if server.shutdown_grace != fixed.shutdown_grace {
            ignored.push("server.shutdown_grace_s");
            server.shutdown_grace = fixed.shutdown_grace;
        }
        let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
        if admin_listen(&config) != admin_listen(old) {
            ignored.push("admin.listen");
            match (&mut config.admin, &old.admin) {
                (Some(new), Some(was)) => new.listen = was.listen,
                (new, was) => *new = was.clone(),
            }
        }
        if config.ledger != old.ledger {
            ignored.push("ledger");
            config.ledger = old.ledger.clone();
        }
        if config.alerts.webhook != old.alerts.webhook {
            // The delivery task holds its client and key from the start.
            ignored.push("alerts.webhook_*");
            config.alerts.webhook = old.alerts.webhook.clone();
        }
        if config.cache.shared != old.cache.shared {
            ignored.push("cache.shared");
            config.cache.shared = old.cache.shared;
        }
        if config.cache.max_bytes != old.cache.max_bytes {
            ignored.push("cache.max_bytes");
            config.cache.max_bytes = old.cache.max_bytes;
        }
        let upstream = if config.upstream == old.upstream {
            Arc::clone(&self.upstream)
        } else {
            Arc::new(Upstream::new(
                &config.upstream,
                self.clock.clone(),
                Arc::clone(&self.metrics),
                self.redis.as_ref(),
                self.stopping.clone(),
            )?)
        };
        // A new upstream client lists accounts afresh (its keys may differ).
        let accounts = if Arc::ptr_eq(&upstream, &self.upstream) {
            Arc::clone(&self.accounts)
        } else {
            Arc::new(AccountDirectory::new(
                Arc::clone(&upstream),
                self.clock.clone(),
            ))
        };
        let slots = if config.server.max_in_flight == old.server.max_in_flight {
            Arc::clone(&self.slots)
        } else {
            Arc::new(Semaphore::new(config.server.max_in_flight))
        };
        let tenants = Arc::new(Tenants::new(
            &config.tenants,
            &self.clock,
            Some(&self.tenants),
            self.redis.as_ref(),
        ));
        let gateway = Gateway {
            detached: self.detached.clone(),
            stopping: self.stopping.clone(),
            logs: Arc::clone(&self.logs),
            slots,
            tenants,
            redis: self.redis.clone(),
            cache: self.cache.retimed(&config.cache),
            accounts,
            upstream,
            ledger: Arc::clone(&self.ledger),
            credits: Arc::clone(&self.credits),
            actions: Arc::new(config.actions.clone()),
            metrics: Arc::clone(&self.metrics),
            clock: self.clock.clone(),
            config: Arc::new(config),
        };
        Ok((gateway, ignored))
    }

    /// The request path, outermost stage first.
    pub fn build_stack<B>(&self) -> Stack<B>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let miss = BoxCloneSyncService::new(MissService(Arc::new(MissPath {
            credits: Arc::clone(&self.credits),
            upstream: Arc::clone(&self.upstream),
            metrics: Arc::clone(&self.metrics),
            logs: Arc::clone(&self.logs),
        })));
        let stack = ServiceBuilder::new()
            // Outermost: every answer, errors included, gets an x-request-id,
            // exactly one access log line, and its metrics.
            .layer(RequestIdLayer::new(
                Arc::clone(&self.metrics),
                KnownKeys {
                    tenants: Arc::clone(&self.tenants),
                    admin: self.config.admin.as_ref().and_then(|a| a.key_sha256),
                    upstream: Arc::clone(&self.upstream),
                },
            ))
            // The single place a GatewayError becomes a V2 error body.
            .layer(RescueLayer::new(self.clock.clone(), Arc::clone(&self.logs)))
            // 404 / 405 before auth: which paths exist is no secret.
            .layer(RouteLayer)
            // x-api-key → tenant (exactly one key); nothing about the body
            // is read before this, and nothing before it waits or holds a slot.
            .layer(AuthLayer::new(Arc::clone(&self.tenants)))
            // Slots, right after auth so each is a known tenant's: its share
            // (429 past tenants[].max_in_flight), then the gateway's (503
            // past server.max_in_flight), held until the answer is ready; and
            // the overall request deadline, before any work is done for it.
            .layer(AdmissionLayer::new(
                Arc::clone(&self.slots),
                self.config.server.request_timeout,
            ))
            // Per-tenant GCRA, before any body is read: over-rate costs nothing
            // (a tenant in shadow mode goes on, its would-be 429 recorded).
            .layer(RateLimitLayer::new(
                self.clock.clone(),
                Arc::clone(&self.metrics),
            ))
            // GET /v2/accounts[/{id}]: answered here, filtered to the tenant's
            // grants; they have no body, so they leave before the body stages.
            .layer(AccountsLayer::new(
                Arc::clone(&self.accounts),
                self.clock.clone(),
            ))
            // Body limit (413), content type (415), a body that does not
            // arrive in time (408, its slots given back), JSON validation (400).
            .layer(ParseLayer::new(
                self.config.server.max_body_bytes,
                self.config.server.body_timeout,
                Arc::clone(&self.actions),
            ))
            // Account and action allow-lists (404 / 403).
            .layer(PolicyLayer)
            // x-viewgate-quote: 1 is priced here and answered: after every
            // check a real request meets, before anything that would claim
            // a key, hold credits or call the upstream.
            .layer(QuoteLayer::new(
                self.cache.clone(),
                Arc::clone(&self.credits),
                self.clock.clone(),
                self.config.cache.actions.clone(),
            ))
            // Idempotency-Key: a request sent again gets its first answer,
            // without an upstream call; claimed before anything is sent.
            .layer(IdempotencyLayer::new(
                Arc::clone(&self.ledger),
                self.config.idempotency_ttl,
                // An upstream call with all its retries, plus the ledger's
                // share, with room to spare.
                self.config.upstream.deadline * 2 + self.config.server.request_timeout,
                self.clock.clone(),
                self.detached.clone(),
            ))
            // Innermost: cache hit, single-flight miss (the miss path: cap →
            // grants and owner → reserve → upstream → settle → store), or
            // stale page; then the metadata rewrite.
            .service(CacheService::new(
                self.cache.clone(),
                miss,
                Arc::clone(&self.credits),
                Arc::clone(&self.logs),
                self.clock.clone(),
                self.config.cache.actions.clone(),
                self.detached.clone(),
            ));
        BoxCloneSyncService::new(stack)
    }
}
