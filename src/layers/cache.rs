//! The cache stage, innermost: hit, single-flight miss, or stale; then the response.
//!
//! A fresh page is served at no charge (even when the budget is spent). On a
//! miss, the first request for a key leads: it runs the miss path in its own
//! task, stores the page and publishes it; identical requests arriving
//! meanwhile follow and are answered from the leader's page at no charge. If
//! the upstream fails and an expired page is still within
//! `cache.stale_if_error_s`, that page is served as stale. Within
//! `cache.stale_while_revalidate_s` after expiry, the expired page is served
//! as stale at once while one background refresh runs, charged to the tenant
//! whose request triggered it. Uncached actions go straight to the miss path.

mod answer;
#[cfg(test)]
mod tests;
mod uncached;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, header};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use self::answer::Answer;
use super::StageResult;
use crate::cache::{
    CacheKey, CachedPage, FlightFollower, FlightLeader, FlightRole, PageCache, Role,
};
use crate::call::ApiCall;
use crate::clock::Clock;
use crate::context::RequestContext;
use crate::credits::Credits;
use crate::degraded;
use crate::error::GatewayError;
use crate::log_throttle::LogThrottle;
use crate::miss::{Charged, Miss, MissFetcher};
use crate::response::{Body, CacheStatus};
use crate::tenant::Tenant;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");

/// How many times a request re-joins the single-flight after its leader
/// could not produce a page for it (leader out of budget, leader vanished).
const MAX_JOINS: usize = 3;

/// One request as the cache stage sees it.
struct Asked {
    tenant: Arc<Tenant>,
    context: Arc<RequestContext>,
    call: Arc<ApiCall>,
}

/// What a follower got from its flight's leader.
enum Joined {
    /// An answer (the leader's page).
    Answered(StageResult),
    /// Nothing for it: its leader ran out of its own budget or vanished.
    Again,
    /// The leader's failure, which may still be answered from a stale page.
    Failed(GatewayError),
}

/// The cache stage (the innermost service).
#[derive(Clone)]
pub(crate) struct CacheService {
    shared: Arc<Shared>,
}

struct Shared {
    cache: PageCache,
    miss: MissFetcher,
    credits: Arc<Credits>,
    logs: Arc<LogThrottle>,
    clock: Clock,
    /// Looked up on every request: a fast hasher (the set is the operator's).
    cached_actions: foldhash::HashSet<String>,
    /// Runs each miss path (waited for at shutdown).
    detached: TaskTracker,
}

impl CacheService {
    /// The stage over `cache`, fetching misses through `miss`, counting
    /// hits in `credits`, its repeating warnings throttled by `logs`; the
    /// miss paths run as tasks of `detached`.
    pub(crate) fn new(
        cache: PageCache,
        miss: MissFetcher,
        credits: Arc<Credits>,
        logs: Arc<LogThrottle>,
        clock: Clock,
        cached_actions: HashSet<String>,
        detached: TaskTracker,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                miss,
                credits,
                logs,
                clock,
                cached_actions: cached_actions.into_iter().collect(),
                detached,
            }),
        }
    }
}

impl Service<Request<ApiCall>> for CacheService {
    type Response = Response<Body>;
    type Error = GatewayError;
    // Boxed: ledger and upstream I/O, and waiting on another request's fetch.
    type Future = Pin<Box<dyn Future<Output = StageResult> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ApiCall>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let (parts, call) = request.into_parts();
            let tenant = parts
                .extensions
                .get::<Arc<Tenant>>()
                .cloned()
                .ok_or(GatewayError::InvalidApiKey)?;
            let context = parts
                .extensions
                .get::<Arc<RequestContext>>()
                .cloned()
                .unwrap_or_else(|| {
                    RequestContext::new(HeaderValue::from_static("-"), shared.clock.now())
                });
            let refresh = tenant.allow_refresh && wants_refresh(&parts.headers);
            let asked = Asked {
                tenant,
                context,
                call: Arc::new(call),
            };
            shared.serve(asked, refresh).await
        })
    }
}

/// `cache-control: no-cache` (or `max-age=0`) asks for a fresh page.
fn wants_refresh(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("max-age=0")
        })
}

impl Shared {
    /// Uncached calls go to the miss path; cached reads to [`Shared::cached`].
    async fn serve(self: Arc<Self>, asked: Asked, refresh: bool) -> StageResult {
        let key = asked
            .call
            .cache_key()
            .filter(|_| !asked.call.is_write() && self.cached_actions.contains(&asked.call.action));
        // The paths that call the upstream are boxed, each where it
        // starts: inline, their state would make every request's future
        // (moved whole into its box) as large as a miss's, hits included.
        match key {
            None => Box::pin(self.uncached(&asked)).await,
            Some(key) => self.cached(&asked, key, refresh).await,
        }
    }

    /// Lookup, then hit, stale-while-revalidate, or a single-flight join as
    /// leader or follower; a failure may still be answered from an expired
    /// page ([`Shared::fall_back`]).
    async fn cached(self: &Arc<Self>, asked: &Asked, key: CacheKey, refresh: bool) -> StageResult {
        let mut stale: Option<Arc<CachedPage>> = None;
        for _ in 0..MAX_JOINS {
            if !refresh && let Some(page) = self.cache.get(&key).await {
                let now = self.clock.now();
                if page.is_fresh(now) {
                    return self.hit(asked, &page, now).await;
                }
                stale = Some(page);
            }
            if let Some(page) = &stale
                && !refresh
                && page.may_revalidate(self.clock.now())
            {
                // Stale-while-revalidate: answer now with the expired page and
                // refresh it in the background, once (single-flight), charged
                // to this tenant. An in-flight refresh is simply not repeated.
                if let Role::Leader(leader) =
                    self.cache.flights.join_as(&key, Arc::clone(&asked.context))
                {
                    drop(self.spawn_fetch(leader, &key, asked));
                }
                return self
                    .answer(asked, page, Answer::free(CacheStatus::Stale))
                    .await;
            }
            let role = self.cache.flights.join_as(&key, Arc::clone(&asked.context));
            match Box::pin(self.fly(role, &key, asked, refresh, stale.as_ref())).await {
                Joined::Answered(answer) => return answer,
                Joined::Again => continue,
                Joined::Failed(failure) => {
                    return Box::pin(self.fall_back(asked, stale, failure)).await;
                }
            }
        }
        Box::pin(self.rescue(asked, key, refresh, stale)).await
    }

    /// After [`MAX_JOINS`] leaders were refused for their own budgets.
    async fn rescue(
        self: &Arc<Self>,
        asked: &Asked,
        key: CacheKey,
        refresh: bool,
        stale: Option<Arc<CachedPage>>,
    ) -> StageResult {
        // Every leader it joined was refused for its own budget (a tenant
        // out of credits asking for the same page, again and again). If its
        // own budget cannot cover the call either, that is its answer;
        // else it fetches with the others in its place, in a flight only a
        // request that can pay leads, so another tenant's empty budget is
        // never this one's failure, and the page is still fetched once.
        if let Some(capped) = asked.call.above_cap() {
            return Err(capped);
        }
        let bound = asked.call.bound;
        if asked.tenant.enforce
            && let Some(remaining) = self.credits.balance(&asked.tenant).await.remaining()
            && remaining < bound
        {
            let failure = GatewayError::InsufficientCredits {
                needed: bound,
                remaining,
            };
            return self.fall_back(asked, stale, failure).await;
        }
        let role = self.cache.rescues.join_as(&key, Arc::clone(&asked.context));
        let joined = match self.fly(role, &key, asked, refresh, stale.as_ref()).await {
            // Its leader's budget went between check and reserve: fetch
            // alone rather than wait on a third table.
            Joined::Again => {
                let alone = Role::Leader(self.cache.flights.alone());
                self.fly(alone, &key, asked, refresh, stale.as_ref()).await
            }
            joined => joined,
        };
        let failure = match joined {
            Joined::Answered(answer) => return answer,
            Joined::Failed(failure) => failure,
            // A leader's flight ends answered or failed.
            Joined::Again => GatewayError::ServiceUnavailable {
                detail: "the page could not be fetched".into(),
            },
        };
        self.fall_back(asked, stale, failure).await
    }

    /// Takes `role` in a flight for `key`: as leader, fetch (unless the
    /// client's `x-max-credits` is below the price: it never leads a fetch
    /// it will not pay for, or its followers would inherit a refusal that
    /// was its client's choice; dropping the leader frees the key); as
    /// follower, wait for the leader's page.
    async fn fly(
        self: &Arc<Self>,
        role: FlightRole,
        key: &CacheKey,
        asked: &Asked,
        refresh: bool,
        stale: Option<&Arc<CachedPage>>,
    ) -> Joined {
        match role {
            Role::Leader(leader) => {
                if let Some(capped) = asked.call.above_cap() {
                    drop(leader);
                    return Joined::Answered(Err(capped));
                }
                match self.lead(leader, key, asked, refresh).await {
                    Ok(response) => Joined::Answered(Ok(response)),
                    Err(failure) => Joined::Failed(failure),
                }
            }
            Role::Follower(follower) => self.follow(follower, asked, stale).await,
        }
    }

    /// As the flight's leader: fetch, store, publish, answer `miss`.
    async fn lead(
        self: &Arc<Self>,
        leader: FlightLeader,
        key: &CacheKey,
        asked: &Asked,
        refresh: bool,
    ) -> StageResult {
        // Check again now that we lead: a leader that finished between our
        // cache lookup and our join has stored the page already (it stores
        // before it leaves the table), and fetching it again would be a
        // second paid call.
        let now = self.clock.now();
        if !refresh
            && self.cache.may_have(key)
            && let Some(page) = self.cache.get(key).await
            && page.is_fresh(now)
        {
            leader.complete(Ok(Arc::clone(&page)));
            return self.hit(asked, &page, now).await;
        }
        match self.spawn_fetch(leader, key, asked).await {
            Ok(Ok((charged, page))) => {
                let answer = Answer {
                    status: CacheStatus::Miss,
                    credits: charged.credits,
                    upstream_ms: Some(charged.reply.upstream_ms),
                };
                let mut response =
                    self.answer_with(asked, &page, answer, charged.balance, self.clock.now())?;
                answer::pass_headers(&mut response, &charged.reply.headers);
                Ok(response)
            }
            Ok(Err(e)) => Err(e),
            Err(join) => Err(GatewayError::ServiceUnavailable {
                detail: format!("miss task failed: {join}"),
            }),
        }
    }

    /// As a follower: the leader's page at no charge, counted as coalesced.
    async fn follow(
        &self,
        follower: FlightFollower,
        asked: &Asked,
        stale: Option<&Arc<CachedPage>>,
    ) -> Joined {
        // Should its deadline pass while the leader's call is out, the
        // answer says the upstream was slow, as the leader's does.
        asked.context.wait_on(follower.leader());
        match follower.wait().await {
            Some(Ok(page)) => {
                // Counted apart from cache hits: what coalescing saved.
                let balance = self.credits.coalesced(&asked.tenant, page.credits).await;
                let answer = Answer::free(CacheStatus::Coalesced);
                Joined::Answered(self.answer_with(asked, &page, answer, balance, self.clock.now()))
            }
            // The leader's budget was not ours: try again, perhaps as leader;
            // in stale mode, out of budget ourselves, degrade.
            Some(Err(
                GatewayError::InsufficientCredits { .. } | GatewayError::PriceAboveCap { .. },
            ))
            | None => {
                if let Some(page) = stale
                    && degraded::follower_stands_in(
                        &self.credits,
                        &asked.tenant,
                        &asked.call,
                        page,
                        self.clock.now(),
                    )
                    .await
                {
                    return Joined::Answered(self.degraded(asked, page).await);
                }
                Joined::Again
            }
            // The leader's charge is the leader's.
            Some(Err(e)) => Joined::Failed(e.without_charge()),
        }
    }

    /// After a failed fetch: an expired page for a tenant out of budget in
    /// stale mode, or one within `cache.stale_if_error_s` for an upstream
    /// failure; else the failure.
    async fn fall_back(
        &self,
        asked: &Asked,
        stale: Option<Arc<CachedPage>>,
        failure: GatewayError,
    ) -> StageResult {
        let Some(page) = stale else {
            return Err(failure);
        };
        let now = self.clock.now();
        if degraded::stands_in(&asked.tenant, &failure, &page, now) {
            return self.degraded(asked, &page).await;
        }
        if !failure.is_upstream_failure() || !page.may_serve_stale(now) {
            return Err(failure);
        }
        if let Some(suppressed) = self.logs.admit("cache.stale_on_error") {
            tracing::warn!(
                request_id = asked.context.request_id_str(),
                error_code = failure.code(),
                suppressed,
                "upstream failed; serving a stale page"
            );
        }
        // A fetch whose outcome is unknown was charged what it held: say so.
        let answer = Answer {
            credits: failure.credits(),
            ..Answer::free(CacheStatus::Stale)
        };
        self.answer(asked, &page, answer).await
    }

    /// Runs the miss path in its own task: a client that hangs up, or a
    /// deadline that passes, never cuts a paid call in half.
    fn fetch(&self, miss: Miss) -> JoinHandle<Result<Charged, GatewayError>> {
        let fetcher = self.miss.clone();
        self.detached.spawn(fetcher.oneshot(miss))
    }

    /// Runs the miss path for `key` in its own task: a leader whose client
    /// hangs up still finishes the paid call, stores the page and feeds its
    /// followers.
    fn spawn_fetch(
        self: &Arc<Self>,
        leader: FlightLeader,
        key: &CacheKey,
        asked: &Asked,
    ) -> JoinHandle<Result<(Charged, Arc<CachedPage>), GatewayError>> {
        let this = Arc::clone(self);
        let key = key.clone();
        let miss = asked.miss();
        let ttl = asked.call.rule.cache_ttl;
        let fetcher = self.miss.clone();
        self.detached.spawn(async move {
            let result = fetcher.oneshot(miss).await;
            let flight = match &result {
                Ok(c) => Ok(this
                    .cache
                    .store(key, c.reply.status, c.reply.data.clone(), c.credits, ttl)
                    .await),
                Err(e) => Err(e.clone()),
            };
            leader.complete(flight.clone());
            result.and_then(|charged| flight.map(|page| (charged, page)))
        })
    }
}

impl Asked {
    /// The miss path's request for this one.
    fn miss(&self) -> Miss {
        Miss {
            tenant: Arc::clone(&self.tenant),
            call: Arc::clone(&self.call),
            context: Arc::clone(&self.context),
        }
    }
}
