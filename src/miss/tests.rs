//! The miss path driven by a fake upstream (a `tower::service_fn`), an
//! in-memory ledger and a fake clock: every ledger outcome of a miss,
//! without a socket.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::clock::Clock;
use crate::config::{AccountPattern, Budget, Period, TenantConfig};
use crate::layers::parse::parse_call;
use crate::ledger::MemoryLedger;

/// What a fake upstream answers with: any service from a call to a reply.
trait Answers:
    Service<UpstreamCall, Response = UpstreamReply, Error = UpstreamError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Answers for S where
    S: Service<UpstreamCall, Response = UpstreamReply, Error = UpstreamError, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// An upstream standing in for LinkupAPI: owns the accounts listed, answers
/// every call with `answer`, and keeps each call it was sent.
struct FakeUpstream<S> {
    owned: &'static [&'static str],
    answer: S,
    sent: Mutex<Vec<UpstreamCall>>,
}

impl<S: Answers> Forward for FakeUpstream<S> {
    fn owns(&self, account_id: &str) -> bool {
        self.owned.contains(&account_id)
    }

    fn forward(
        &self,
        call: &UpstreamCall,
    ) -> impl Future<Output = Result<UpstreamReply, UpstreamError>> + Send {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call.clone());
        self.answer.clone().oneshot(call.clone())
    }
}

/// A page the upstream says cost `credits` (or says nothing, with `None`).
fn page(credits: Option<u64>) -> UpstreamReply {
    UpstreamReply {
        status: StatusCode::OK,
        data: Bytes::from_static(br#"{"viewers":[]}"#),
        credits,
        upstream_ms: 3,
        headers: Vec::new(),
    }
}

/// Everything one test needs: the miss path, its ledger's view, its metrics.
struct World<S> {
    clock: Clock,
    path: Arc<MissPath<FakeUpstream<S>>>,
    metrics: Arc<Metrics>,
}

fn world<S, F>(answer: S) -> World<tower::util::ServiceFn<S>>
where
    S: FnMut(UpstreamCall) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<UpstreamReply, UpstreamError>> + Send + 'static,
{
    let clock = Clock::fake("2026-11-30T08:00:00Z".parse().unwrap());
    let metrics = Arc::new(Metrics::new());
    let path = Arc::new(MissPath {
        credits: Arc::new(Credits::new(Arc::new(MemoryLedger::new(clock.clone())))),
        upstream: Arc::new(FakeUpstream {
            owned: &["acc-1", "acc-2"],
            answer: tower::service_fn(answer),
            sent: Mutex::new(Vec::new()),
        }),
        metrics: Arc::clone(&metrics),
        logs: Arc::new(LogThrottle::new(clock.clone())),
    });
    World {
        clock,
        path,
        metrics,
    }
}

/// A tenant with `budget` credits a day, granted `accounts`.
fn tenant(clock: &Clock, budget: u64, accounts: &[&str]) -> Arc<Tenant> {
    let config = TenantConfig {
        accounts: accounts
            .iter()
            .map(|a| AccountPattern::Exact((*a).to_string()))
            .collect(),
        actions: vec!["get_viewers".into()],
        budget: Some(Budget {
            credits: budget,
            period: Period::Day,
        }),
        ..TenantConfig::test("crm")
    };
    Arc::new(Tenant::new(&config, clock, None, None))
}

/// `get_viewers` for `account` with `count` 30: a price bound of 3.
fn viewers(account: &str) -> Arc<ApiCall> {
    let body =
        format!(r#"{{"account_id":"{account}","action":"get_viewers","params":{{"count":30}}}}"#);
    let call = parse_call("profiles", body.as_bytes()).unwrap();
    assert_eq!(call.bound, 3);
    Arc::new(call)
}

impl<S: Answers> World<S> {
    /// One miss through [`MissService`], as the cache stage sends it.
    async fn miss(
        &self,
        tenant: &Arc<Tenant>,
        call: Arc<ApiCall>,
    ) -> (Result<Charged, GatewayError>, Arc<RequestContext>) {
        let context = RequestContext::new(HeaderValue::from_static("req-1"), self.clock.now());
        let miss = Miss {
            tenant: Arc::clone(tenant),
            call,
            context: Arc::clone(&context),
        };
        let result = MissService(Arc::clone(&self.path)).oneshot(miss).await;
        (result, context)
    }

    async fn balance(&self, tenant: &Tenant) -> Balance {
        self.path.credits.balance(tenant).await
    }

    fn sent(&self) -> usize {
        self.path.upstream.sent.lock().unwrap().len()
    }
}

#[tokio::test]
async fn a_reply_settles_to_the_upstreams_charge() {
    let w = world(|_| async { Ok(page(Some(2))) });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    let charged = result.unwrap();
    assert_eq!(
        charged.credits, 2,
        "the upstream's figure, not the bound of 3"
    );
    let settled = Balance {
        used: 2,
        reserved: 0,
        limit: Some(100),
    };
    assert_eq!(charged.balance, settled);
    assert_eq!(w.balance(&t).await, settled);
    assert_eq!(context.fields().credits_charged, 2);
    assert!(context.upstream_started());
    let sent = w.path.upstream.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v2/profiles");
    assert_eq!(sent[0].account_id, "acc-1");
    assert_eq!(sent[0].request_id, "req-1");
    assert!(!sent[0].write);
}

#[tokio::test]
async fn a_reply_without_a_charge_costs_what_was_held() {
    let w = world(|_| async { Ok(page(None)) });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    assert_eq!(result.unwrap().credits, 3);
    assert_eq!(w.balance(&t).await.used, 3);
    assert_eq!(context.fields().credits_charged, 3);
}

#[tokio::test]
async fn a_free_failure_releases_the_reservation() {
    let w = world(|_| async {
        Err(UpstreamError::Free(GatewayError::UpstreamUnavailable {
            detail: "connection refused".into(),
        }))
    });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    assert_eq!(result.unwrap_err().code(), "UPSTREAM_UNAVAILABLE");
    assert_eq!(w.sent(), 1);
    assert_eq!(
        w.balance(&t).await,
        Balance {
            used: 0,
            reserved: 0,
            limit: Some(100),
        }
    );
    assert_eq!(context.fields().credits_charged, 0);
}

#[tokio::test]
async fn an_unknown_outcome_keeps_the_reservation_as_spend() {
    let w = world(|_| async {
        Err(UpstreamError::Unknown {
            timeout: true,
            detail: "no answer within upstream.timeout_ms".into(),
        })
    });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    match result.unwrap_err() {
        GatewayError::OutcomeUnknown {
            timeout, credits, ..
        } => assert!(timeout && credits == 3),
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert_eq!(
        w.balance(&t).await,
        Balance {
            used: 3,
            reserved: 0,
            limit: Some(100),
        },
        "the upstream may have billed: what was held is spent, not released"
    );
    assert_eq!(context.fields().credits_charged, 3);
}

#[tokio::test]
async fn a_charge_above_the_bound_is_recorded_in_full_and_counted() {
    let w = world(|_| async { Ok(page(Some(7))) });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    assert_eq!(result.unwrap().credits, 7);
    assert_eq!(w.balance(&t).await.used, 7, "more than the 3 held");
    assert_eq!(context.fields().credits_charged, 7);
    let metrics = w.metrics.render();
    assert!(
        metrics.contains(r#"viewgate_price_overruns_total{action="get_viewers"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_budget_that_cannot_cover_the_bound_refuses_without_a_call() {
    let w = world(|_| async { Ok(page(Some(1))) });
    // 2 left: the upstream might charge only 1, but the bound is 3.
    let t = tenant(&w.clock, 2, &["acc-1"]);
    let (result, context) = w.miss(&t, viewers("acc-1")).await;
    match result.unwrap_err() {
        GatewayError::InsufficientCredits { needed, remaining } => {
            assert_eq!((needed, remaining), (3, 2));
        }
        other => panic!("expected insufficient credits, got {other:?}"),
    }
    assert_eq!(w.sent(), 0);
    assert!(!context.upstream_started());
    assert_eq!(w.balance(&t).await.used, 0);
}

#[tokio::test]
async fn grants_and_ownership_are_checked_before_any_reservation() {
    let w = world(|_| async { Ok(page(Some(1))) });
    // A budget of 0 refuses every reservation: a refusal other than
    // INSUFFICIENT_CREDITS shows the check came before the ledger.
    let t = tenant(&w.clock, 0, &["acc-1", "acc-9"]);
    // Not granted to the tenant (owned upstream, though).
    let (result, _) = w.miss(&t, viewers("acc-2")).await;
    assert_eq!(result.unwrap_err().code(), "INVALID_ACCOUNT");
    // Granted, but no upstream key owns it.
    let (result, _) = w.miss(&t, viewers("acc-9")).await;
    assert_eq!(result.unwrap_err().code(), "INVALID_ACCOUNT");
    // An action outside the tenant's list.
    let get = parse_call(
        "profiles",
        br#"{"account_id":"acc-1","action":"get","params":{"profile_url":"u"}}"#,
    )
    .unwrap();
    let (result, _) = w.miss(&t, Arc::new(get)).await;
    assert_eq!(result.unwrap_err().code(), "ACTION_NOT_ALLOWED");
    // The same tenant on a granted, owned account reaches the ledger.
    let (result, _) = w.miss(&t, viewers("acc-1")).await;
    assert_eq!(result.unwrap_err().code(), "INSUFFICIENT_CREDITS");
    assert_eq!(w.sent(), 0);
}

#[tokio::test]
async fn a_price_above_the_clients_cap_is_refused_before_the_ledger() {
    let w = world(|_| async { Ok(page(Some(1))) });
    let t = tenant(&w.clock, 0, &["acc-1"]);
    let mut call = (*viewers("acc-1")).clone();
    call.max_credits = Some(2);
    let (result, _) = w.miss(&t, Arc::new(call)).await;
    match result.unwrap_err() {
        GatewayError::PriceAboveCap { bound, cap } => assert_eq!((bound, cap), (3, 2)),
        other => panic!("expected the cap to refuse, got {other:?}"),
    }
    assert_eq!(w.sent(), 0);
}

/// A charge that settles after the answer was logged goes on its own
/// settle line and is counted by the miss path itself.
#[tokio::test]
async fn a_late_charge_is_counted_by_the_miss_path() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let w = world(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok(page(Some(2))) }
    });
    let t = tenant(&w.clock, 100, &["acc-1"]);
    let context = RequestContext::new(HeaderValue::from_static("req-2"), w.clock.now());
    // The request was answered (its deadline passed) before the call settled.
    context.fields().answered = true;
    w.path.fetch(&t, &viewers("acc-1"), &context).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        context.fields().credits_charged,
        0,
        "not on the access line"
    );
    let metrics = w.metrics.render();
    assert!(
        metrics.contains(r#"viewgate_credits_charged_total{tenant="crm"} 2"#),
        "{metrics}"
    );
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(w.balance(&t).await.used, 2);
}
