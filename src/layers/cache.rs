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

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, header};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use super::StageResult;
use crate::cache::{CacheKey, CachedPage, Flight, Leader, PageCache, Role};
use crate::call::ApiCall;
use crate::clock::Clock;
use crate::context::RequestContext;
use crate::credits::Credits;
use crate::degraded;
use crate::error::GatewayError;
use crate::ledger::Balance;
use crate::log_throttle::LogThrottle;
use crate::miss::{Charged, Miss, MissFetcher};
use crate::response::{Body, CacheStatus, PageMeta, page_body, page_response};
use crate::tenant::Tenant;

static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static X_CREDITS_REMAINING: HeaderName = HeaderName::from_static("x-credits-remaining");

/// How many times a request re-joins the single-flight after its leader
/// could not produce a page for it (leader out of budget, leader vanished).
const MAX_JOINS: usize = 3;

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
    cached_actions: HashSet<String>,
}

impl CacheService {
    /// The stage over `cache`, fetching misses through `miss`, counting
    /// hits in `credits`, its repeating warnings throttled by `logs`.
    pub(crate) fn new(
        cache: PageCache,
        miss: MissFetcher,
        credits: Arc<Credits>,
        logs: Arc<LogThrottle>,
        clock: Clock,
        cached_actions: HashSet<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cache,
                miss,
                credits,
                logs,
                clock,
                cached_actions,
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
            shared.serve(tenant, context, Arc::new(call), refresh).await
        })
    }
}

/// The account a login or checkpoint answer names, and whether it is
/// connected now (not waiting for a checkpoint).
fn connected_account(data: &[u8]) -> Option<(String, bool)> {
    #[derive(serde::Deserialize)]
    struct Connected {
        account_id: String,
        #[serde(default)]
        status: Option<String>,
    }
    let c: Connected = serde_json::from_slice(data).ok()?;
    let done = c.status.as_deref() != Some("checkpoint_required");
    Some((c.account_id, done))
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
    async fn serve(
        self: Arc<Self>,
        tenant: Arc<Tenant>,
        context: Arc<RequestContext>,
        call: Arc<ApiCall>,
        refresh: bool,
    ) -> StageResult {
        let key = call
            .cache_key()
            .filter(|_| !call.is_write() && self.cached_actions.contains(&call.action));
        let Some(key) = key else {
            let task = self.fetch(Miss {
                tenant: Arc::clone(&tenant),
                call: Arc::clone(&call),
                context: Arc::clone(&context),
            });
            let charged = match task.await {
                Ok(result) => result?,
                Err(join) => {
                    return Err(GatewayError::ServiceUnavailable {
                        detail: format!("miss task failed: {join}"),
                    });
                }
            };
            note(&context, None, Some(charged.reply.upstream_ms));
            let connected = call
                .is_connect()
                .then(|| connected_account(&charged.reply.data))
                .flatten();
            if let Some((account_id, true)) = &connected {
                tracing::info!(
                    request_id = context.request_id_str(),
                    tenant = &*tenant.id,
                    account_id = account_id.as_str(),
                    "account connected"
                );
            }
            let meta = PageMeta {
                action: &call.action,
                account_id: connected
                    .as_ref()
                    .map_or(call.account_id.as_str(), |(id, _)| id.as_str()),
                credits_consumed: charged.credits,
                timestamp: self.clock.wall(),
                cache: None,
                credits_remaining: charged.balance.remaining(),
            };
            let mut response =
                page_response(charged.reply.status, page_body(&charged.reply.data, &meta));
            pass_headers(&mut response, &charged.reply.headers);
            remaining_header(&mut response, &tenant, &charged.balance);
            return Ok(response);
        };

        let mut stale: Option<Arc<CachedPage>> = None;
        for _ in 0..MAX_JOINS {
            if !refresh && let Some(page) = self.cache.get(&key).await {
                if page.is_fresh(self.clock.now()) {
                    return self.hit(&tenant, &context, &call, &page).await;
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
                if let Role::Leader(leader) = self.cache.flights.join(&key) {
                    drop(self.spawn_fetch(leader, &key, &tenant, &call, &context));
                }
                return self
                    .answer(&tenant, &context, &call, page, CacheStatus::Stale, 0, None)
                    .await;
            }
            let outcome = match self.cache.flights.join(&key) {
                Role::Leader(leader) => {
                    // Check again now that we lead: a leader that finished
                    // between our cache lookup and our join has stored the
                    // page already (it stores before it leaves the table), and
                    // fetching it again would be a second paid call.
                    if !refresh
                        && let Some(page) = self.cache.get(&key).await
                        && page.is_fresh(self.clock.now())
                    {
                        leader.complete(Ok(Arc::clone(&page)));
                        return self.hit(&tenant, &context, &call, &page).await;
                    }
                    let task = self.spawn_fetch(leader, &key, &tenant, &call, &context);
                    match task.await {
                        Ok(Ok((charged, page))) => {
                            let credits = charged.credits;
                            let ms = Some(charged.reply.upstream_ms);
                            let mut response = self.answer_with(
                                &tenant,
                                &context,
                                &call,
                                &page,
                                CacheStatus::Miss,
                                credits,
                                ms,
                                charged.balance,
                            )?;
                            pass_headers(&mut response, &charged.reply.headers);
                            return Ok(response);
                        }
                        Ok(Err(e)) => e,
                        Err(join) => GatewayError::ServiceUnavailable {
                            detail: format!("miss task failed: {join}"),
                        },
                    }
                }
                Role::Follower(follower) => match follower.wait().await {
                    Some(Ok(page)) => {
                        // Counted apart from cache hits: what coalescing saved.
                        let balance = self.credits.coalesced(&tenant, page.credits).await;
                        return self.answer_with(
                            &tenant,
                            &context,
                            &call,
                            &page,
                            CacheStatus::Coalesced,
                            0,
                            None,
                            balance,
                        );
                    }
                    // The leader's budget was not ours: try again, perhaps as
                    // leader; in stale mode, out of budget ourselves, degrade.
                    Some(Err(GatewayError::InsufficientCredits { .. })) | None => {
                        let now = self.clock.now();
                        if let Some(page) = &stale
                            && degraded::follower_stands_in(
                                &self.credits,
                                &tenant,
                                &call,
                                page,
                                now,
                            )
                            .await
                        {
                            return self.degraded(&tenant, &context, &call, page).await;
                        }
                        continue;
                    }
                    // The leader's charge is the leader's.
                    Some(Err(e)) => e.without_charge(),
                },
            };
            // Out of budget in stale mode: an expired page, at no charge.
            if let Some(page) = &stale
                && degraded::stands_in(&tenant, &outcome, page, self.clock.now())
            {
                return self.degraded(&tenant, &context, &call, page).await;
            }
            // The fetch failed: an expired page may stand in for an upstream failure.
            if outcome.is_upstream_failure()
                && let Some(page) = stale.filter(|p| p.may_serve_stale(self.clock.now()))
            {
                if let Some(suppressed) = self.logs.admit("cache.stale_on_error") {
                    tracing::warn!(
                        request_id = context.request_id_str(),
                        error_code = outcome.code(),
                        suppressed,
                        "upstream failed; serving a stale page"
                    );
                }
                // A fetch whose outcome is unknown was charged what it held: say so.
                let credits = outcome.credits();
                return self
                    .answer(
                        &tenant,
                        &context,
                        &call,
                        &page,
                        CacheStatus::Stale,
                        credits,
                        None,
                    )
                    .await;
            }
            return Err(outcome);
        }
        Err(GatewayError::ServiceUnavailable {
            detail: "the page could not be fetched after repeated single-flight joins".into(),
        })
    }

    /// Runs the miss path in its own task: a client that hangs up, or a
    /// deadline that passes, never cuts a paid call in half.
    fn fetch(&self, miss: Miss) -> JoinHandle<Result<Charged, GatewayError>> {
        let fetcher = self.miss.clone();
        tokio::spawn(fetcher.oneshot(miss))
    }

    /// Runs the miss path for `key` in its own task: a leader whose client
    /// hangs up still finishes the paid call, stores the page and feeds its
    /// followers.
    fn spawn_fetch(
        self: &Arc<Self>,
        leader: Leader<CacheKey, Flight>,
        key: &CacheKey,
        tenant: &Arc<Tenant>,
        call: &Arc<ApiCall>,
        context: &Arc<RequestContext>,
    ) -> JoinHandle<Result<(Charged, Arc<CachedPage>), GatewayError>> {
        let this = Arc::clone(self);
        let key = key.clone();
        let miss = Miss {
            tenant: Arc::clone(tenant),
            call: Arc::clone(call),
            context: Arc::clone(context),
        };
        let call = Arc::clone(call);
        let fetcher = self.miss.clone();
        tokio::spawn(async move {
            let result = fetcher.oneshot(miss).await;
            let flight = match &result {
                Ok(c) => Ok(this
                    .cache
                    .store(
                        key,
                        c.reply.status,
                        c.reply.data.clone(),
                        c.credits,
                        call.rule.cache_ttl,
                    )
                    .await),
                Err(e) => Err(e.clone()),
            };
            leader.complete(flight.clone());
            result.and_then(|charged| flight.map(|page| (charged, page)))
        })
    }

    /// Answers with a fresh cached page: no charge, a hit counted with what it saved.
    async fn hit(
        &self,
        tenant: &Tenant,
        context: &RequestContext,
        call: &ApiCall,
        page: &CachedPage,
    ) -> StageResult {
        let balance = self.credits.hit(tenant, page.credits).await;
        context.fields().credits_saved = page.credits;
        self.answer_with(
            tenant,
            context,
            call,
            page,
            CacheStatus::Hit,
            0,
            None,
            balance,
        )
    }

    /// Answers with an expired page for a tenant out of budget in stale
    /// mode: no charge, marked degraded (see [`crate::degraded`]).
    async fn degraded(
        &self,
        tenant: &Tenant,
        context: &RequestContext,
        call: &ApiCall,
        page: &CachedPage,
    ) -> StageResult {
        let response = self
            .answer(tenant, context, call, page, CacheStatus::Stale, 0, None)
            .await?;
        Ok(degraded::mark(response, context))
    }

    /// Answers with a page, reading the tenant's balance for the metadata.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        tenant: &Tenant,
        context: &RequestContext,
        call: &ApiCall,
        page: &CachedPage,
        status: CacheStatus,
        credits: u64,
        upstream_ms: Option<u64>,
    ) -> StageResult {
        let balance = self.credits.balance(tenant).await;
        self.answer_with(
            tenant,
            context,
            call,
            page,
            status,
            credits,
            upstream_ms,
            balance,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_with(
        &self,
        tenant: &Tenant,
        context: &RequestContext,
        call: &ApiCall,
        page: &CachedPage,
        status: CacheStatus,
        credits: u64,
        upstream_ms: Option<u64>,
        balance: Balance,
    ) -> StageResult {
        note(context, Some(status), upstream_ms);
        let meta = PageMeta {
            action: &call.action,
            account_id: &call.account_id,
            credits_consumed: credits,
            timestamp: self.clock.wall(),
            cache: Some((status, page.cached_at)),
            credits_remaining: balance.remaining(),
        };
        let mut response = page_response(page.status, page_body(&page.data, &meta));
        let headers = response.headers_mut();
        headers.insert(X_CACHE.clone(), status.header());
        headers.insert(header::AGE, HeaderValue::from(page.age_s(self.clock.now())));
        remaining_header(&mut response, tenant, &balance);
        Ok(response)
    }
}

/// The upstream's headers a client may act on, on the answer it fetched.
fn pass_headers(response: &mut Response<Body>, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
}

fn remaining_header(response: &mut Response<Body>, tenant: &Tenant, balance: &Balance) {
    if tenant.budget.is_some()
        && let Some(remaining) = balance.remaining()
    {
        response
            .headers_mut()
            .insert(X_CREDITS_REMAINING.clone(), HeaderValue::from(remaining));
    }
}

/// Records how the request was answered; its charge was recorded by the
/// miss path itself ([`RequestContext::charge`]).
fn note(context: &RequestContext, cache: Option<CacheStatus>, upstream_ms: Option<u64>) {
    let mut fields = context.fields();
    fields.cache = cache;
    fields.upstream_ms = upstream_ms;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::StatusCode;
    use tokio::sync::Semaphore;
    use tower::util::BoxCloneSyncService;

    use crate::config::{AccountPattern, CacheConfig, TenantConfig};
    use crate::keys::KeyHash;
    use crate::layers::parse::parse_call;
    use crate::ledger::MemoryLedger;
    use crate::upstream::UpstreamReply;

    /// A miss path standing in for the upstream: counts its fetches, can be
    /// held at a gate and made to fail.
    #[derive(Clone, Default)]
    struct FakeUpstream {
        fetches: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
        gate: Option<Arc<Semaphore>>,
    }

    impl FakeUpstream {
        fn fetcher(&self) -> MissFetcher {
            let this = self.clone();
            BoxCloneSyncService::new(tower::service_fn(move |_miss: Miss| {
                let this = this.clone();
                async move {
                    this.fetches.fetch_add(1, Ordering::SeqCst);
                    if let Some(gate) = &this.gate {
                        let _ = gate.acquire().await;
                    }
                    if this.failing.load(Ordering::SeqCst) {
                        return Err(GatewayError::UpstreamUnavailable {
                            detail: "down".into(),
                        });
                    }
                    Ok(Charged {
                        reply: UpstreamReply {
                            status: StatusCode::OK,
                            data: Bytes::from_static(br#"{"viewers":[]}"#),
                            credits: Some(1),
                            upstream_ms: 1,
                            headers: Vec::new(),
                        },
                        credits: 1,
                        balance: Balance::default(),
                    })
                }
            }))
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    fn stage(upstream: &FakeUpstream, clock: &Clock) -> CacheService {
        let config = CacheConfig {
            ttl: Duration::from_secs(300),
            max_bytes: 1 << 20,
            stale_if_error: Duration::from_secs(3600),
            stale_while_revalidate: Duration::ZERO,
            actions: ["get_viewers".to_string()].into(),
            shared: false,
        };
        let credits = Arc::new(Credits::new(Arc::new(MemoryLedger::new(clock.clone()))));
        CacheService::new(
            PageCache::new(&config, clock.clone(), config.ttl),
            upstream.fetcher(),
            credits,
            Arc::new(LogThrottle::new(clock.clone())),
            clock.clone(),
            config.actions.clone(),
        )
    }

    fn tenant(clock: &Clock) -> Arc<Tenant> {
        let config = TenantConfig {
            id: "crm".into(),
            key_sha256: KeyHash::of(b"test-only"),
            accounts: vec![AccountPattern::Any],
            actions: vec!["*".into()],
            rate_limit: None,
            budget: None,
            allow_refresh: false,
            connect_accounts: false,
            max_in_flight: 4,
            on_budget_exhausted: Default::default(),
            enforce: true,
            alert_thresholds: Vec::new(),
        };
        Arc::new(Tenant::new(&config, clock, None, None))
    }

    async fn ask(
        stage: &CacheService,
        clock: &Clock,
        category: &str,
        body: &str,
    ) -> Response<Body> {
        let mut request = Request::new(parse_call(category, body.as_bytes()).unwrap());
        request.extensions_mut().insert(tenant(clock));
        stage.clone().call(request).await.unwrap()
    }

    fn x_cache(response: &Response<Body>) -> &str {
        response
            .headers()
            .get("x-cache")
            .map_or("none", |v| v.to_str().unwrap())
    }

    const PAGE: &str = r#"{"account_id":"acc-1","action":"get_viewers"}"#;

    fn clock() -> Clock {
        Clock::fake("2026-11-27T15:00:00Z".parse().unwrap())
    }

    #[tokio::test]
    async fn a_miss_fetches_once_then_hits_until_the_ttl() {
        let (clock, upstream) = (clock(), FakeUpstream::default());
        let stage = stage(&upstream, &clock);
        assert_eq!(
            x_cache(&ask(&stage, &clock, "profiles", PAGE).await),
            "MISS"
        );
        assert_eq!(x_cache(&ask(&stage, &clock, "profiles", PAGE).await), "HIT");
        assert_eq!(upstream.fetches(), 1);
        clock.advance(Duration::from_secs(301));
        assert_eq!(
            x_cache(&ask(&stage, &clock, "profiles", PAGE).await),
            "MISS"
        );
        assert_eq!(upstream.fetches(), 2);
    }

    #[tokio::test]
    async fn identical_misses_share_one_fetch() {
        let clock = clock();
        let gate = Arc::new(Semaphore::new(0));
        let upstream = FakeUpstream {
            gate: Some(Arc::clone(&gate)),
            ..FakeUpstream::default()
        };
        let stage = stage(&upstream, &clock);
        let asks: Vec<_> = (0..5)
            .map(|_| {
                let (stage, clock) = (stage.clone(), clock.clone());
                tokio::spawn(async move { ask(&stage, &clock, "profiles", PAGE).await })
            })
            .collect();
        // Held at the gate: whoever arrives meanwhile follows the one fetch.
        for _ in 0..100_000 {
            if upstream.fetches() > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Open for good: a second fetch, were there one, must not hang the test.
        gate.add_permits(Semaphore::MAX_PERMITS / 2);
        let mut seen = Vec::new();
        for ask in asks {
            seen.push(x_cache(&ask.await.unwrap()).to_string());
        }
        assert_eq!(upstream.fetches(), 1, "{seen:?}");
        assert_eq!(seen.iter().filter(|s| *s == "MISS").count(), 1, "{seen:?}");
        assert!(
            seen.iter()
                .all(|s| ["MISS", "COALESCED", "HIT"].contains(&s.as_str())),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn an_expired_page_stands_in_when_the_upstream_fails() {
        let (clock, upstream) = (clock(), FakeUpstream::default());
        let stage = stage(&upstream, &clock);
        ask(&stage, &clock, "profiles", PAGE).await;
        clock.advance(Duration::from_secs(301));
        upstream.failing.store(true, Ordering::SeqCst);
        let stale = ask(&stage, &clock, "profiles", PAGE).await;
        assert_eq!(x_cache(&stale), "STALE");
        assert_eq!(upstream.fetches(), 2, "the refresh was tried");
        // Past the stale window, the failure is the answer.
        clock.advance(Duration::from_secs(3600));
        let mut request = Request::new(parse_call("profiles", PAGE.as_bytes()).unwrap());
        request.extensions_mut().insert(tenant(&clock));
        let failed = stage.clone().call(request).await.unwrap_err();
        assert_eq!(failed.code(), "UPSTREAM_UNAVAILABLE");
    }

    #[tokio::test]
    async fn writes_always_go_to_the_miss_path() {
        let (clock, upstream) = (clock(), FakeUpstream::default());
        let stage = stage(&upstream, &clock);
        let invite = r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"u"}}"#;
        for _ in 0..2 {
            assert_eq!(
                x_cache(&ask(&stage, &clock, "network", invite).await),
                "none"
            );
        }
        assert_eq!(upstream.fetches(), 2);
    }

    #[test]
    fn refresh_directives() {
        let mut h = http::HeaderMap::new();
        assert!(!wants_refresh(&h));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-stale, No-Cache"),
        );
        assert!(wants_refresh(&h));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        assert!(wants_refresh(&h));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(!wants_refresh(&h));
    }
}
