//! The gateway: its shared parts, and the request path as one tower stack.
//!
//! `build_stack` is the architecture in one function: read it top to bottom
//! to follow a request from the socket to the upstream and back.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::cache::PageCache;
use crate::clock::Clock;
use crate::config::{Config, LedgerConfig};
use crate::layers::auth::AuthLayer;
use crate::layers::cache::CacheService;
use crate::layers::parse::ParseLayer;
use crate::layers::policy::PolicyLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::route::RouteLayer;
use crate::ledger::{Ledger, MemoryLedger, SqliteLedger};
use crate::metrics::Metrics;
use crate::miss::MissPath;
use crate::response::Body;
use crate::tenant::Tenants;
use crate::upstream::Upstream;

/// The whole request path as one cloneable service.
pub type Stack<B> = BoxCloneSyncService<Request<B>, Response<Body>, Infallible>;

/// Everything the request path shares, built once from a [`Config`].
#[derive(Clone)]
pub struct Gateway {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// The clock every stage reads.
    pub clock: Clock,
    /// Tenants by key hash.
    pub tenants: Arc<Tenants>,
    /// Where credits are recorded.
    pub ledger: Arc<dyn Ledger>,
    /// The page cache.
    pub cache: PageCache,
    /// The upstream client.
    pub upstream: Arc<Upstream>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// Builds the gateway's parts. Fails with a readable reason (never a key).
    pub fn new(config: Config, clock: Clock) -> Result<Self, String> {
        let ledger: Arc<dyn Ledger> = match &config.ledger {
            LedgerConfig::Memory => Arc::new(MemoryLedger::new(clock.clone())),
            LedgerConfig::Sqlite { path } => {
                Arc::new(SqliteLedger::open(path, clock.clone()).map_err(|e| e.to_string())?)
            }
            other => {
                return Err(format!(
                    "ledger backend {other:?} is not available in this build"
                ));
            }
        };
        let metrics = Arc::new(Metrics::new());
        Ok(Self {
            tenants: Arc::new(Tenants::new(&config.tenants, &clock)),
            cache: PageCache::new(&config.cache, clock.clone()),
            upstream: Arc::new(Upstream::new(
                &config.upstream,
                clock.clone(),
                Arc::clone(&metrics),
            )?),
            metrics,
            ledger,
            clock,
            config: Arc::new(config),
        })
    }

    /// The request path, outermost stage first.
    pub fn build_stack<B>(&self) -> Stack<B>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let miss = Arc::new(MissPath {
            ledger: Arc::clone(&self.ledger),
            upstream: Arc::clone(&self.upstream),
            estimates: self.config.upstream.estimates.clone(),
        });
        let stack = ServiceBuilder::new()
            // Outermost: every answer, errors included, gets an x-request-id,
            // exactly one access log line, and its metrics.
            .layer(RequestIdLayer::new(Arc::clone(&self.metrics)))
            // The single place a GatewayError becomes a V2 error body.
            .layer(RescueLayer::new(self.clock.clone()))
            // 404 / 405 before auth: which paths exist is no secret.
            .layer(RouteLayer)
            // x-api-key → tenant; nothing about the body is read before this.
            .layer(AuthLayer::new(Arc::clone(&self.tenants)))
            // Per-tenant GCRA, before any body is read: over-rate costs nothing.
            .layer(RateLimitLayer::new(self.clock.clone()))
            // Body limit (413), content type (415), JSON validation (400).
            .layer(ParseLayer::new(self.config.server.max_body_bytes))
            // Account and action allow-lists (404 / 403).
            .layer(PolicyLayer)
            // Innermost: cache hit, single-flight miss (reserve → upstream →
            // settle → store), or stale page; then the metadata rewrite.
            .service(CacheService::new(
                self.cache.clone(),
                miss,
                self.clock.clone(),
                self.config.cache.actions.clone(),
            ));
        BoxCloneSyncService::new(stack)
    }
}
