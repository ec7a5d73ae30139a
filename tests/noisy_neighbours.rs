//! Noisy neighbours: no tenant, account or client can degrade service for
//! the others. On the real stack, against the simulator's faults: an account
//! the upstream keeps failing, a tenant whose bodies never arrive, a request
//! with two keys, a ledger that fails every write. Breaker time moves on the
//! gateway's fake clock; waits are bounded polls.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{TenantSpec, World, WorldSpec, raw, viewers};
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viewgate::sim::{Fault, FaultKind};

/// The value of the one series `series` (name and labels) in `/metrics`.
async fn metric(w: &World, series: &str) -> f64 {
    let text = w.admin(Method::GET, "/metrics", None, "").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

const KEY_OPEN: &str = r#"viewgate_breaker_open{key="primary",scope="key"}"#;
const ACCOUNTS_OPEN: &str = r#"viewgate_breaker_open{key="primary",scope="account"}"#;

/// Regression: five 500s for one account opened the key's only breaker, and
/// every tenant got 503 "circuit open" for 30 s, healthy accounts too.
#[tokio::test]
async fn one_accounts_failures_open_its_own_breaker_and_the_others_are_served() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("noisy", &["*"]),
            TenantSpec::new("quiet", &["acc-good"]),
        ],
        max_retries: 0,
        ..WorldSpec::default()
    })
    .await;
    w.sim
        .set_fault(Fault::new(FaultKind::InternalError).for_account("acc-evil"));
    for offset in 0..5 {
        let r = w
            .post(Some("noisy"), &viewers("acc-evil", offset * 10, 10))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (500, "INTERNAL_ERROR".into())
        );
    }
    assert_eq!(w.sim.calls_total(), 5);
    // That account now fails fast, without an upstream call...
    let fast = w.post(Some("noisy"), &viewers("acc-evil", 0, 10)).await;
    assert_eq!(fast.status, 503, "{}", fast.text());
    assert_eq!(fast.code(), "SERVICE_UNAVAILABLE");
    assert_eq!(fast.header("retry-after"), Some("30"));
    assert!(fast.text().contains("for this account"), "{}", fast.text());
    assert_eq!(w.sim.calls_total(), 5);
    // ...and every other account of the key is served, for every tenant.
    let quiet = w.post(Some("quiet"), &viewers("acc-good", 0, 10)).await;
    assert_eq!(quiet.status, 200, "{}", quiet.text());
    let other = w.post(Some("noisy"), &viewers("acc-other", 0, 10)).await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(metric(&w, KEY_OPEN).await, 0.0);
    assert_eq!(metric(&w, ACCOUNTS_OPEN).await, 1.0);
    assert_eq!(
        metric(
            &w,
            r#"viewgate_upstream_requests_total{key="primary",outcome="account_circuit_open"}"#
        )
        .await,
        1.0
    );
    // After open_s one probe goes through; the account has healed.
    w.sim.clear_fault();
    w.clock.advance(Duration::from_secs(30));
    let probe = w.post(Some("noisy"), &viewers("acc-evil", 0, 10)).await;
    assert_eq!(probe.status, 200, "{}", probe.text());
    assert_eq!(metric(&w, ACCOUNTS_OPEN).await, 0.0);
}

#[tokio::test]
async fn failures_across_several_accounts_open_the_whole_keys_breaker() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 0,
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    for account in ["acc-1", "acc-2"] {
        let r = w.post(Some("crm"), &viewers(account, 0, 10)).await;
        assert_eq!(r.status, 500);
    }
    assert_eq!(
        metric(&w, KEY_OPEN).await,
        0.0,
        "two accounts are not enough"
    );
    // A third account failing with no success between: the upstream is
    // failing for everyone, so the whole key fails fast.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-3", 0, 10)).await.status,
        500
    );
    let fast = w.post(Some("crm"), &viewers("acc-4", 0, 10)).await;
    assert_eq!(fast.status, 503, "{}", fast.text());
    assert_eq!(fast.header("retry-after"), Some("30"));
    assert!(fast.text().contains("every account"), "{}", fast.text());
    assert_eq!(w.sim.calls_total(), 3);
    assert_eq!(metric(&w, KEY_OPEN).await, 1.0);
    w.sim.clear_fault();
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-4", 0, 10)).await.status,
        200
    );
    assert_eq!(metric(&w, KEY_OPEN).await, 0.0);
}

/// Reads one whole HTTP/1.1 response (head and `content-length` body), or
/// `None` if nothing came within `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            _ => return (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

fn taken(w: &World, tenant: &str) -> usize {
    w.live
        .gateway()
        .tenants()
        .by_id(tenant)
        .unwrap()
        .slots
        .taken()
}

/// Regression: with `server.max_in_flight: 8`, one tenant opened 8 requests
/// whose bodies never came, and another tenant's request got 503 at once.
#[tokio::test]
async fn stalled_bodies_hold_only_their_tenants_share_and_get_408() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("noisy", &["*"]),
            TenantSpec::new("quiet", &["*"]),
        ],
        server_yaml: "  max_in_flight: 8\n  body_timeout_ms: 4000\n",
        ..WorldSpec::default()
    })
    .await;
    // Headers promising a body that never comes.
    let head = format!(
        "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n",
        w.key("noisy")
    );
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    // Past its share (half of 8), the tenant is told at once to come back.
    let answers = futures_util::future::join_all(
        stalled
            .iter_mut()
            .map(|s| read_response(s, Duration::from_millis(1500))),
    )
    .await;
    let mut held = Vec::new();
    for (stream, answer) in stalled.into_iter().zip(answers) {
        match answer {
            Some(text) => {
                assert!(text.starts_with("HTTP/1.1 429"), "{text}");
                assert!(text.contains("\"RATE_LIMITED\""), "{text}");
                assert!(
                    text.to_ascii_lowercase().contains("retry-after: 1\r\n"),
                    "{text}"
                );
            }
            None => held.push(stream),
        }
    }
    assert_eq!(held.len(), 4, "a share of 4");
    assert_eq!(taken(&w, "noisy"), 4);
    // Another tenant is answered at once, while those four still wait.
    let quiet = w.post(Some("quiet"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(quiet.status, 200, "{}", quiet.text());
    assert_eq!(
        taken(&w, "noisy"),
        4,
        "answered while the stalled ones held their slots"
    );
    // The stalled ones get 408 after server.body_timeout_ms, and their
    // connections are closed (the rest of a body might still come).
    for mut stream in held {
        let exchange = raw::read_until_closed(&mut stream, Duration::from_secs(15)).await;
        assert!(
            exchange.status_line().starts_with("HTTP/1.1 408"),
            "{}",
            exchange.text()
        );
        assert_eq!(exchange.body_json()["error"]["code"], "REQUEST_TIMEOUT");
        assert_eq!(exchange.header("connection").as_deref(), Some("close"));
        assert!(exchange.closed);
    }
    // Their slots came back: the tenant is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while taken(&w, "noisy") > 0 {
        assert!(Instant::now() < deadline, "slots not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = w.post(Some("noisy"), &viewers("acc-2", 0, 10)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        w.sim.calls_total(),
        2,
        "no stalled request reached the upstream"
    );
}

#[tokio::test]
async fn a_request_with_more_than_one_api_key_is_refused() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("alpha", &["*"]),
            TenantSpec::new("beta", &["*"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    let (alpha, beta) = (w.key("alpha").to_string(), w.key("beta").to_string());
    let wrong = "vg_not-a-key".to_string();
    for (first, second) in [
        (&alpha, &alpha),
        (&alpha, &wrong),
        (&wrong, &alpha),
        (&alpha, &beta),
    ] {
        let headers = [
            ("x-api-key", first.clone()),
            ("x-api-key", second.clone()),
            ("content-type", "application/json".to_string()),
        ];
        let r = w
            .request(
                Method::POST,
                "/v2/profiles",
                &headers,
                &viewers("acc-1", 0, 10),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.code(), "INVALID_API_KEY");
    }
    assert_eq!(w.sim.calls_total(), 0);
    assert_eq!(
        w.post(Some("alpha"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
}

/// Regression: with the ledger failing, every miss logged its failure (the
/// ledger's own writer about 30 lines a second): now each site writes one
/// line, then at most one summary per 5 s with a `suppressed` count.
#[tokio::test]
async fn a_failing_ledger_is_logged_once_then_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger").join("ledger.db");
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ledger_yaml: Some(format!(
            "  backend: sqlite\n  path: \"{}\"\n",
            path.display()
        )),
        ..WorldSpec::default()
    })
    .await;
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-0", 0, 10)).await.status,
        200
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.admin(Method::GET, "/readyz", None, "").await.status != 503 {
        assert!(
            Instant::now() < deadline,
            "the ledger's loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let miss = |i: usize| {
        let headers = [
            ("x-api-key", w.key("crm").to_string()),
            ("content-type", "application/json".to_string()),
            ("x-request-id", format!("ledger-gone-{i}")),
        ];
        let w = &w;
        async move {
            let r = w
                .request(
                    Method::POST,
                    "/v2/profiles",
                    &headers,
                    &viewers(&format!("acc-{}", i + 1), 0, 10),
                )
                .await;
            assert_eq!(r.status, 503, "{}", r.text());
        }
    };
    for i in 0..100 {
        miss(i).await;
    }
    let lines = || -> Vec<Value> {
        common::logs()
            .lines()
            .filter(|l| l.contains("\"request failed\"") && l.contains("ledger-gone-"))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let first = lines();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["suppressed"], 0);
    assert_eq!(first[0]["error_code"], "SERVICE_UNAVAILABLE");
    // Five seconds on, the next failure writes one line summing up the rest.
    w.clock.advance(Duration::from_secs(5));
    miss(100).await;
    let second = lines();
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[1]["suppressed"], 99);
    // Every request still has its own access line with its error code.
    let access = common::logs()
        .lines()
        .filter(|l| l.contains("\"viewgate::access\"") && l.contains("ledger-gone-"))
        .count();
    assert_eq!(access, 101);
}

/// Red team: a tenant that cannot pay for a page (its budget spent, or its
/// own `x-max-credits` below the price) asks for it again and again while
/// another tenant asks. The payer is served (never the other's 402 or a
/// 503 for lost races), the others get their own 402 or the payer's page for
/// nothing, and only the payer's fetches reach the upstream.
#[tokio::test]
async fn a_tenant_that_cannot_pay_never_fails_another_tenants_request_for_the_page() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("broke", &["acc-1"]).budget(1, "day"),
            TenantSpec::new("capped", &["acc-1"]),
            TenantSpec::new("payer", &["acc-1"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    // Slow enough that the askers overlap; the assertions hold either way.
    w.sim.set_fault(Fault::latency(20));
    for round in 0..3u32 {
        // 25 viewers (acc-1 has 87): 3 credits, more than "broke" has and
        // "capped" allows.
        let page = viewers("acc-1", round * 25, 25);
        let key = |t: &str| ("x-api-key", w.key(t).to_string());
        let json = ("content-type", "application/json".to_string());
        let broke_headers = [key("broke"), json.clone()];
        let capped_headers = [
            key("capped"),
            json.clone(),
            ("x-max-credits", "0".to_string()),
        ];
        let payer_headers = [key("payer"), json];
        let ask = |headers| w.request(Method::POST, "/v2/profiles", headers, &page);
        // The others ask without pause (eight loops each, 20 asks a loop)
        // while the payer's three requests go in among them.
        let others = |headers| {
            futures_util::future::join_all((0..8).map(move |_| async move {
                let mut replies = Vec::new();
                for _ in 0..20 {
                    replies.push(ask(headers).await);
                }
                replies
            }))
        };
        let payer = async {
            tokio::task::yield_now().await;
            futures_util::future::join_all((0..3).map(|_| ask(&payer_headers))).await
        };
        let (capped, broke, payer) =
            tokio::join!(others(&capped_headers), others(&broke_headers), payer);
        let (capped, broke): (Vec<_>, Vec<_>) = (
            capped.into_iter().flatten().collect(),
            broke.into_iter().flatten().collect(),
        );
        for r in &payer {
            assert_eq!(r.status, 200, "payer, round {round}: {}", r.text());
        }
        // Their own refusal, or the payer's page for nothing (a follower's
        // coalesced answer, or a hit once it is stored): never a 503.
        for r in broke.iter().chain(&capped) {
            match r.status.as_u16() {
                402 => assert_eq!(r.json()["error"]["code"], "INSUFFICIENT_CREDITS"),
                200 => {
                    assert_eq!(r.meta()["credits_consumed"], 0);
                    let how = r.meta()["cache"].as_str().unwrap_or("").to_string();
                    assert!(how == "coalesced" || how == "hit", "{how}");
                }
                other => panic!("round {round}: {other} {}", r.text()),
            }
        }
    }
    // One fetch per round, two at most: a payer that lost every join to a
    // refused leader fetches in the rescue flight, which the payer's other
    // requests join (they must not each pay for the page).
    let calls = w.sim.calls_total();
    assert!((3..=6).contains(&calls), "{calls} upstream calls");
    assert_eq!(w.sim.credits_total(), 3 * calls);
    assert_eq!(w.used("payer").await, 3 * calls);
    assert_eq!(w.used("broke").await, 0);
    assert_eq!(w.used("capped").await, 0);
}
