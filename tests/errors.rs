//! Every row of design.md's error table, produced for real: each answer is in
//! the V2 error format, charges nothing, caches nothing, and the simulator's
//! counters show what reached the upstream.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Reply, TenantSpec, World, WorldSpec, viewers};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viewgate::clock::Clock;
use viewgate::config::Budget;
use viewgate::ledger::{Balance, Ledger, LedgerError, MemoryLedger, Reservation, Saving, Usage};
use viewgate::sim::{Fault, FaultKind, SimConfig};

fn assert_v2_error(r: &Reply, status: u16, code: &str) {
    assert_v2_error_charging(r, status, code, 0);
}

fn assert_v2_error_charging(r: &Reply, status: u16, code: &str, credits: u64) {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(body["metadata"]["credits_consumed"], credits, "{body}");
    assert!(
        body["metadata"]["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
}

fn world(spec: WorldSpec) -> WorldSpec {
    WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).budget(100, "day"),
            TenantSpec::new("net", &["*"]).actions(&["get_viewers", "invite"]),
        ],
        ..spec
    }
}

async fn post_raw(w: &World, tenant: &str, content_type: &str, body: &str) -> Reply {
    w.request(
        Method::POST,
        "/v2/profiles",
        &[
            ("x-api-key", w.key(tenant).to_string()),
            ("content-type", content_type.to_string()),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn client_errors_are_400_413_415_404_405_403() {
    let w = World::start(world(WorldSpec {
        max_body_bytes: 1024,
        ..WorldSpec::default()
    }))
    .await;
    for body in [
        "not json",
        "[]",
        r#"{"action":"get_viewers"}"#,
        r#"{"account_id":"acc-1"}"#,
        r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":-1}}"#,
        r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":1000}}"#,
        r#"{"account_id":"acc-1","action":"get_viewers","params":{"offset":"ten"}}"#,
        r#"{"account_id":"has space","action":"get_viewers"}"#,
    ] {
        assert_v2_error(
            &post_raw(&w, "crm", "application/json", body).await,
            400,
            "INVALID_PARAMS",
        );
    }
    let big = format!(
        r#"{{"account_id":"acc-1","action":"get_viewers","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    assert_v2_error(
        &post_raw(&w, "crm", "application/json", &big).await,
        413,
        "PAYLOAD_TOO_LARGE",
    );
    assert_v2_error(
        &post_raw(&w, "crm", "text/plain", &viewers("acc-1", 0, 10)).await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    // Two content types: which one the body is in would be a guess.
    let twice = [
        ("x-api-key", w.key("crm").to_string()),
        ("content-type", "application/json".to_string()),
        ("content-type", "text/plain".to_string()),
    ];
    assert_v2_error(
        &w.request(
            Method::POST,
            "/v2/profiles",
            &twice,
            &viewers("acc-1", 0, 10),
        )
        .await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    let key = vec![("x-api-key", w.key("crm").to_string())];
    assert_v2_error(
        &w.request(Method::POST, "/v1/profiles", &key, "").await,
        404,
        "NOT_FOUND",
    );
    assert_v2_error(
        &w.request(Method::GET, "/", &key, "").await,
        404,
        "NOT_FOUND",
    );
    let get = w.request(Method::GET, "/v2/profiles", &key, "").await;
    assert_v2_error(&get, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(
        get.header("allow"),
        Some("POST"),
        "RFC 9110: a 405 names the allowed methods"
    );
    // An action the tenant's list does not allow.
    let invite = w
        .request(
            Method::POST,
            "/v2/network",
            &[
                ("x-api-key", w.key("crm").to_string()),
                ("content-type", "application/json".into()),
            ],
            r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"https://x"}}"#,
        )
        .await;
    assert_v2_error(&invite, 403, "ACTION_NOT_ALLOWED");
    assert_eq!(
        w.sim.calls_total(),
        0,
        "no client error reaches the upstream"
    );
    assert_eq!(w.used("crm").await, 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_off_with_413() {
    let w = World::start(world(WorldSpec {
        max_body_bytes: 1024,
        ..WorldSpec::default()
    }))
    .await;
    let mut stream = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v2/profiles HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        w.key("crm")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = "x".repeat(600);
    for _ in 0..3 {
        let _ = stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let w = World::start(world(WorldSpec::default())).await;
    let mut stream = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v2/profiles HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "y".repeat(20 * 1024)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
}

/// A reset after the request was sent may follow a billed call: it is not
/// retried, and what was held stays spent. A complete answer that is not V2
/// JSON (a proxy's error page) carries no bill: nothing is charged.
#[tokio::test]
async fn upstream_resets_keep_the_reservation_and_garbage_costs_nothing() {
    let w = World::start(world(WorldSpec {
        max_retries: 2,
        ..WorldSpec::default()
    }))
    .await;
    w.sim.set_fault(Fault::new(FaultKind::Reset));
    let reset = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_v2_error_charging(&reset, 502, "UPSTREAM_UNAVAILABLE", 1);
    assert!(
        reset.text().contains("outcome is unknown"),
        "{}",
        reset.text()
    );
    assert_eq!(
        w.sim.calls_total(),
        1,
        "a reset after sending is never retried"
    );
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (1, 0));
    w.sim.set_fault(Fault::new(FaultKind::Garbage));
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-1", 0, 10)).await,
        502,
        "UPSTREAM_UNAVAILABLE",
    );
    assert_eq!(w.sim.calls_total(), 2);
    assert_eq!(w.sim.credits_total(), 0);
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (1, 0));
    // Nothing was cached: once the upstream heals, the page is a miss.
    w.sim.clear_fault();
    let healed = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(healed.meta()["cache"], "miss");
    assert_eq!(w.used("crm").await, 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let w = World::start(world(WorldSpec {
        max_retries: 1,
        base_url: Some(base_url),
        ..WorldSpec::default()
    }))
    .await;
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-1", 0, 10)).await,
        502,
        "UPSTREAM_UNAVAILABLE",
    );
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (0, 0));
}

#[tokio::test]
async fn a_hanging_upstream_is_504_after_the_timeout() {
    let w = World::start(world(WorldSpec {
        timeout_ms: 300,
        max_retries: 0,
        ..WorldSpec::default()
    }))
    .await;
    w.sim.set_fault(Fault::new(FaultKind::Hang));
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    // The upstream may have acted after all: what was held stays spent.
    assert_v2_error_charging(&r, 504, "UPSTREAM_TIMEOUT", 1);
    assert_eq!(
        w.sim.calls_total(),
        1,
        "a timeout after sending is never retried"
    );
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (1, 0));
    w.sim.shutdown();
}

#[tokio::test]
async fn a_revoked_upstream_key_is_502_upstream_auth_failed() {
    let w = World::start(world(WorldSpec::default())).await;
    w.sim.set_key_revoked("primary", true);
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_v2_error(&r, 502, "UPSTREAM_AUTH_FAILED");
    assert_eq!(w.sim.calls_total(), 1, "auth failures are not retried");
    assert_eq!(w.used("crm").await, 0);
}

#[tokio::test]
async fn other_upstream_errors_pass_through_with_status_and_code() {
    let w = World::start(world(WorldSpec {
        upstream_accounts: vec!["acc-1", "acc-off"],
        sim: SimConfig {
            inactive_accounts: vec!["acc-off".into()],
            ..SimConfig::default()
        },
        max_retries: 2,
        ..WorldSpec::default()
    }))
    .await;
    // The tenant may use any account, but the upstream key owns only two.
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-9", 0, 10)).await,
        404,
        "INVALID_ACCOUNT",
    );
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-off", 0, 10)).await,
        403,
        "ACCOUNT_INACTIVE",
    );
    assert_eq!(
        w.sim.calls_total(),
        2,
        "client-side upstream errors are not retried"
    );
    // A persistent 500 is retried max_retries times, then passed through.
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-1", 0, 10)).await,
        500,
        "INTERNAL_ERROR",
    );
    assert_eq!(w.sim.calls_total(), 5);
    assert_eq!(w.sim.credits_total(), 0);
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (0, 0));
}

#[tokio::test]
async fn one_upstream_429_with_retry_after_is_retried_and_served() {
    let w = World::start(world(WorldSpec {
        fake_clock: false,
        ..WorldSpec::default()
    }))
    .await;
    w.sim
        .set_fault(Fault::new(FaultKind::RateLimited { retry_after_s: 1 }).times(1));
    let started = std::time::Instant::now();
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After was honoured"
    );
    assert_eq!(w.sim.calls_total(), 2);
    assert_eq!(w.sim.credits_total(), 1);
    assert_eq!(r.meta()["credits_consumed"], 1);
}

#[tokio::test]
async fn when_the_leader_fails_its_followers_get_the_same_error_and_nobody_pays() {
    let w = World::start(world(WorldSpec {
        max_retries: 0,
        ..WorldSpec::default()
    }))
    .await;
    w.sim
        .set_fault(Fault::new(FaultKind::InternalError).with_latency(300));
    let body = viewers("acc-3", 0, 10);
    let replies = futures_util::future::join_all((0..10).map(|_| w.post(Some("crm"), &body))).await;
    for r in &replies {
        assert_v2_error(r, 500, "INTERNAL_ERROR");
    }
    assert_eq!(w.sim.calls_total(), 1, "one upstream call for all ten");
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (0, 0));
}

#[tokio::test]
async fn other_actions_are_forwarded_uncached_and_charged_what_the_upstream_says() {
    let w = World::start(world(WorldSpec::default())).await;
    let body = r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"https://www.linkedin.com/in/someone"}}"#;
    let headers = [
        ("x-api-key", w.key("net").to_string()),
        ("content-type", "application/json".into()),
    ];
    let first = w.request(Method::POST, "/v2/network", &headers, body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.meta()["action"], "invite");
    assert_eq!(first.meta()["credits_consumed"], 1);
    assert!(first.meta().get("cache").is_none());
    assert!(first.header("x-cache").is_none());
    let second = w.request(Method::POST, "/v2/network", &headers, body).await;
    assert_eq!(second.status, 200);
    assert_eq!(w.sim.calls_total(), 2, "not cached");
    assert_eq!(w.sim.credits_total(), 2);
    assert_eq!(w.used("net").await, 2);
}

/// A ledger that can be switched off, to play an unreachable store, or
/// made to fail its next settles.
struct SwitchableLedger {
    inner: MemoryLedger,
    down: AtomicBool,
    failing_settles: AtomicU32,
}

impl SwitchableLedger {
    fn check(&self) -> Result<(), LedgerError> {
        if self.down.load(Ordering::SeqCst) {
            Err(LedgerError::Unavailable("switched off by the test".into()))
        } else {
            Ok(())
        }
    }
}

impl Ledger for SwitchableLedger {
    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a viewgate::ledger::Fingerprint,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<viewgate::ledger::IdempotencyBegin, LedgerError>> {
        match self.check() {
            Ok(()) => self.inner.idempotency_begin(tenant, key, fingerprint, ttl),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }
    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a viewgate::ledger::Fingerprint,
        answer: viewgate::ledger::StoredAnswer,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner
            .idempotency_complete(tenant, key, fingerprint, answer, ttl)
    }
    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a viewgate::ledger::Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner.idempotency_abandon(tenant, key, fingerprint)
    }
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        match self.check() {
            Ok(()) => self.inner.reserve(tenant, budget, estimate, request_id),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }
    fn settle(
        &self,
        r: Reservation,
        actual: u64,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        let failing = self.failing_settles.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_settles.store(failing - 1, Ordering::SeqCst);
            return async {
                Err(LedgerError::Unavailable(
                    "settle refused by the test".into(),
                ))
            }
            .boxed();
        }
        self.inner.settle(r, actual, budget)
    }
    fn release(
        &self,
        r: Reservation,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        self.inner.release(r, budget)
    }
    fn balance<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        match self.check() {
            Ok(()) => self.inner.balance(tenant, budget),
            Err(e) => async move { Err(e) }.boxed(),
        }
    }
    fn saved<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        by: Saving,
        saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        // Counted even while "down", like a ledger that counts hits in
        // memory; only the balance is refused.
        async move {
            let balance = self.inner.saved(tenant, budget, by, saved).await;
            self.check()?;
            balance
        }
        .boxed()
    }
    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        self.inner.usage(tenants)
    }
}

#[tokio::test]
async fn an_unreachable_ledger_refuses_misses_with_503_and_still_serves_hits() {
    let ledger = Arc::new(SwitchableLedger {
        inner: MemoryLedger::new(Clock::real()),
        down: AtomicBool::new(false),
        failing_settles: AtomicU32::new(0),
    });
    let w = World::start(world(WorldSpec {
        ledger: Some(ledger.clone()),
        ..WorldSpec::default()
    }))
    .await;
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    ledger.down.store(true, Ordering::SeqCst);
    assert_v2_error(
        &w.post(Some("crm"), &viewers("acc-1", 10, 10)).await,
        503,
        "SERVICE_UNAVAILABLE",
    );
    let hit = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.meta()["cache"], "hit");
    assert_eq!(
        w.sim.calls_total(),
        1,
        "no upstream call without a reservation"
    );
}

/// A settle the ledger refuses is retried until it is recorded: the charge
/// the upstream billed ends up in the ledger exactly (here 3 credits held,
/// 2 charged by a short last page), not left as an open reservation.
#[tokio::test]
async fn a_settle_the_ledger_refuses_is_retried_until_recorded() {
    let ledger = Arc::new(SwitchableLedger {
        inner: MemoryLedger::new(Clock::real()),
        down: AtomicBool::new(false),
        failing_settles: AtomicU32::new(2),
    });
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["acc-1"]).budget(100, "day")],
        sim: SimConfig::default().with_total("acc-1", 25),
        ledger: Some(ledger.clone()),
        ..WorldSpec::default()
    })
    .await;
    let page = w.post(Some("crm"), &viewers("acc-1", 10, 30)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    // Finding 6: a budgeted tenant never sees "unlimited" because a settle
    // failed; the 3 credits held are still counted.
    assert_eq!(page.meta()["credits_remaining"], 97, "{}", page.text());
    assert_eq!(w.sim.credits_total(), 2);
    // Retries after 100 and 200 ms; bounded wait for them.
    for _ in 0..100 {
        if w.reserved("crm").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger.failing_settles.load(Ordering::SeqCst), 0);
    assert_eq!((w.used("crm").await, w.reserved("crm").await), (2, 0));
    assert!(common::logs().contains("could not settle a charge; retrying"));
}

#[tokio::test]
async fn request_ids_are_echoed_only_when_safe() {
    let w = World::start(world(WorldSpec::default())).await;
    let with = |id: &str| {
        vec![
            ("x-api-key", w.key("crm").to_string()),
            ("content-type", "application/json".to_string()),
            ("x-request-id", id.to_string()),
        ]
    };
    let body = viewers("acc-1", 0, 10);
    let echoed = w
        .request(Method::POST, "/v2/profiles", &with("trace-42.a_b"), &body)
        .await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-42.a_b"));
    for bad in ["has space", "semi;colon", &"x".repeat(129)] {
        let r = w
            .request(Method::POST, "/v2/profiles", &with(bad), &body)
            .await;
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    }
    // Errors carry it too.
    let err = w.request(Method::GET, "/nowhere", &with("err-1"), "").await;
    assert_eq!(err.header("x-request-id"), Some("err-1"));
    // A client that puts its own key there (alone or within an id) gets a
    // fresh id: the key is neither echoed nor logged.
    let key = w.key("crm").to_string();
    // (It would be echoed otherwise: the characters of an acceptable id.)
    assert!(
        key.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "{key}"
    );
    // The tenant's own key whole, within an id, cut at either end; the
    // admin key, and the upstream's (which a client should not have, but
    // may have leaked), whole or cut, beside a valid tenant key: a fresh
    // id, the key neither echoed nor logged (`request` also checks every
    // response for every key).
    let upstream = w.upstream_key.clone();
    for (secret, sent) in [
        (&key, key.clone()),
        (&key, format!("req-{key}-7")),
        (&key, key[..key.len() - 1].to_string()),
        (&key, key[3..].to_string()),
        (&w.admin_key, w.admin_key.clone()),
        (&upstream, upstream.clone()),
        (
            &upstream,
            format!("id-{}", &upstream[2..upstream.len() - 2]),
        ),
    ] {
        assert!(acceptable_id(&sent), "{sent}");
        let r = w
            .request(Method::POST, "/v2/profiles", &with(&sent), &body)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, sent);
        assert!(!shares_a_run(id, secret), "{id}");
    }
    assert!(!shares_a_run(&common::logs(), &w.admin_key));
    assert!(!shares_a_run(&common::logs(), &upstream));
    // Sent there instead of in x-api-key: refused, and still not echoed.
    let r = w
        .request(
            Method::POST,
            "/v2/profiles",
            &[
                ("content-type", "application/json".to_string()),
                ("x-request-id", key.clone()),
            ],
            &body,
        )
        .await;
    assert_eq!(r.code(), "INVALID_API_KEY", "{}", r.text());
    assert_ne!(r.header("x-request-id"), Some(key.as_str()));
    assert!(
        !shares_a_run(&common::logs(), &key),
        "a log line holds part of the key"
    );
}

/// Whether viewgate would echo `id` if it held no key.
fn acceptable_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `text` holds 16 consecutive characters of `key`.
fn shares_a_run(text: &str, key: &str) -> bool {
    key.as_bytes()
        .windows(16)
        .any(|run| text.as_bytes().windows(16).any(|w| w == run))
}

#[tokio::test]
async fn hostile_bodies_never_crash_the_gateway() {
    let w = World::start(world(WorldSpec::default())).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = format!(
        r#"{{"account_id":"a","action":"get_viewers","params":{}}}"#,
        "{\"a\":".repeat(200) + "1" + &"}".repeat(200)
    );
    for body in [
        deep.as_str(),
        nested.as_str(),
        "\u{0}\u{1}\u{2}",
        r#"{"account_id":"\u0000","action":"get_viewers"}"#,
        r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":1e400}}"#,
        r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":18446744073709551616}}"#,
        r#"{"account_id":"ü","action":"get_viewers"}"#,
        "{",
        "{}",
    ] {
        let r = post_raw(&w, "crm", "application/json", body).await;
        assert_eq!(r.status, 400, "{body:.60}: {}", r.text());
    }
    // Still healthy.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
}

#[tokio::test]
async fn no_key_ever_appears_in_a_log_line_or_a_response() {
    let w = World::start(world(WorldSpec {
        max_retries: 0,
        ..WorldSpec::default()
    }))
    .await;
    let mut bodies = Vec::new();
    // Successes, hits, each kind of failure, with both tenants.
    for tenant in ["crm", "net"] {
        bodies.push(w.post(Some(tenant), &viewers("acc-1", 0, 10)).await);
        bodies.push(w.post(Some(tenant), &viewers("acc-1", 0, 10)).await);
        bodies.push(post_raw(&w, tenant, "application/json", "garbage").await);
    }
    for kind in [
        FaultKind::InternalError,
        FaultKind::Garbage,
        FaultKind::Reset,
    ] {
        w.sim.set_fault(Fault::new(kind));
        bodies.push(w.post(Some("crm"), &viewers("acc-2", 0, 10)).await);
    }
    w.sim.clear_fault();
    w.sim.set_key_revoked("primary", true);
    bodies.push(w.post(Some("crm"), &viewers("acc-3", 0, 10)).await);
    let logs = common::logs();
    assert!(logs.contains("\"status\":502"), "the failures were logged");
    let mut secrets: Vec<&str> = w.keys.values().map(|k| k.as_str()).collect();
    secrets.push(&w.upstream_key);
    for secret in secrets {
        assert!(!logs.contains(secret), "a key leaked into the logs");
        for r in &bodies {
            assert!(!r.text().contains(secret), "a key leaked into a response");
            for (_, v) in r.headers.iter() {
                assert!(
                    !v.as_bytes()
                        .windows(secret.len())
                        .any(|w| w == secret.as_bytes())
                );
            }
        }
    }
}

#[tokio::test]
async fn every_request_writes_one_access_line_with_the_documented_fields() {
    let w = World::start(world(WorldSpec::default())).await;
    let headers = vec![
        ("x-api-key", w.key("crm").to_string()),
        ("content-type", "application/json".to_string()),
        ("x-request-id", "access-line-test-1".to_string()),
    ];
    w.request(
        Method::POST,
        "/v2/profiles",
        &headers,
        &viewers("acc-5", 20, 10),
    )
    .await;
    let logs = common::logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("access-line-test-1"))
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    // Exactly design.md's fields, plus `target` (documented in the README's
    // example line): no more, no fewer.
    let mut fields: Vec<&str> = line
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut expected = vec![
        "ts",
        "level",
        "request_id",
        "tenant",
        "action",
        "account_id",
        "offset",
        "count",
        "status",
        "cache",
        "credits_charged",
        "upstream_ms",
        "total_ms",
        "error_code",
        "target",
    ];
    expected.sort_unstable();
    assert_eq!(fields, expected, "{line}");
    assert_eq!(line["tenant"], "crm");
    assert_eq!(line["account_id"], "acc-5");
    assert_eq!(line["offset"], 20);
    assert_eq!(line["count"], 10);
    assert_eq!(line["status"], 200);
    assert_eq!(line["cache"], "miss");
    assert_eq!(line["credits_charged"], 1);
    assert_eq!(line["error_code"], serde_json::Value::Null);
    assert!(line["upstream_ms"].is_u64());
}

/// The access line of the request whose id is `id`.
fn access_line(id: &str) -> serde_json::Value {
    common::logs()
        .lines()
        .find(|l| l.contains(id))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("no access line for {id}"))
}

#[tokio::test]
async fn a_refused_call_is_answered_and_logged_as_the_action_it_named() {
    // On /v2/profiles an error whose body was never read says get_viewers;
    // one whose body named another action says that action, in the answer's
    // metadata and in its access line alike.
    let w = World::start(world(WorldSpec::default())).await;
    let cases = [
        (
            "named-action-1",
            r#"{"account_id":"acc-1","action":"search_people","params":{"x":1.2345678901234567}}"#,
            "search_people",
        ),
        (
            "named-action-2",
            r#"{"account_id":"acc-1","action":"invite","params":{}}"#,
            "invite",
        ),
        (
            "named-action-3",
            r#"{"account_id":"acc-1","action":7}"#,
            "get_viewers",
        ),
    ];
    for (id, body, action) in cases {
        let headers = vec![
            ("x-api-key", w.key("crm").to_string()),
            ("content-type", "application/json".to_string()),
            ("x-request-id", id.to_string()),
        ];
        let reply = w
            .request(Method::POST, "/v2/profiles", &headers, body)
            .await;
        assert_eq!(reply.status, 400, "{id}: {}", reply.text());
        assert_eq!(reply.meta()["action"], action, "{id}: {}", reply.text());
        let line = access_line(id);
        let logged = if action == "get_viewers" {
            serde_json::Value::Null
        } else {
            serde_json::Value::from(action)
        };
        assert_eq!(line["action"], logged, "{id}: {line}");
    }
    assert_eq!(w.sim.calls_total(), 0);
}

#[tokio::test]
async fn connect_endpoints_name_their_action_in_every_refusal() {
    // /v2/login and /v2/checkpoint are their own action: a refusal before
    // the body is read (bad key) or of a body that is not JSON says so too.
    let w = World::start(world(WorldSpec::default())).await;
    let cases = [
        (
            "connect-action-1",
            "/v2/login",
            "vg_not_a_key".to_string(),
            "{}",
        ),
        (
            "connect-action-2",
            "/v2/checkpoint",
            w.key("crm").to_string(),
            "notjson",
        ),
    ];
    for (id, path, key, body) in cases {
        let headers = vec![
            ("x-api-key", key),
            ("content-type", "application/json".to_string()),
            ("x-request-id", id.to_string()),
        ];
        let reply = w.request(Method::POST, path, &headers, body).await;
        assert!(reply.status.as_u16() >= 400, "{id}: {}", reply.text());
        let action = path.trim_start_matches("/v2/");
        assert_eq!(reply.meta()["action"], action, "{id}: {}", reply.text());
        let line = access_line(id);
        assert_eq!(line["action"], action, "{id}: {line}");
    }
    assert_eq!(w.sim.calls_total(), 0);
}
