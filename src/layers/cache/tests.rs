//! Unit tests of the cache stage over a fake miss path.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;

use crate::config::{CacheConfig, TenantConfig};
use crate::layers::parse::parse_call;
use crate::ledger::{Balance, MemoryLedger};
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
        tokio_util::task::TaskTracker::new(),
    )
}

fn tenant(clock: &Clock) -> Arc<Tenant> {
    let config = TenantConfig::test("crm");
    Arc::new(Tenant::new(&config, clock, None, None))
}

async fn ask(stage: &CacheService, clock: &Clock, category: &str, body: &str) -> Response<Body> {
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
