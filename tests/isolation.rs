//! Isolation between tenants, and between tenants and the operator.
//!
//! One table covers every endpoint (the tenant API on both listeners' sides,
//! `/admin/usage`, `/admin/cache/purge`, `/metrics`, `/healthz`, `/readyz`)
//! for every caller: two tenants with disjoint accounts and actions, no key,
//! and the admin key. Then the finer promises: an account a tenant may not
//! use answers exactly like one that does not exist, and no tenant can read
//! usage or purge another's cached pages.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{Reply, TenantSpec, World, WorldSpec, viewers};
use http::Method;
use serde_json::Value;

async fn two_tenants() -> World {
    World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("alpha", &["a-1", "a-2"]).budget(50, "day"),
            TenantSpec::new("beta", &["b-1", "shared-*"]).actions(&["get_viewers", "list_sent"]),
        ],
        ..WorldSpec::default()
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Alpha,
    Beta,
    NoKey,
    Admin,
}

const CALLERS: [Caller; 4] = [Caller::Alpha, Caller::Beta, Caller::NoKey, Caller::Admin];

/// The key a caller presents, if any.
fn key_of(w: &World, caller: Caller) -> Option<String> {
    match caller {
        Caller::Alpha => Some(w.key("alpha").to_string()),
        Caller::Beta => Some(w.key("beta").to_string()),
        Caller::NoKey => None,
        Caller::Admin => Some(w.admin_key.clone()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    /// `POST /v2/profiles get_viewers` on the caller's own account (alpha's for others).
    OwnViewers,
    /// `POST /v2/profiles get_viewers` on the other tenant's account.
    OthersViewers,
    /// `POST /v2/network list_sent` (beta's action, not alpha's).
    NetworkListSent,
    AdminUsage,
    AdminPurge,
    Metrics,
    Healthz,
    Readyz,
}

const ENDPOINTS: [Endpoint; 8] = [
    Endpoint::OwnViewers,
    Endpoint::OthersViewers,
    Endpoint::NetworkListSent,
    Endpoint::AdminUsage,
    Endpoint::AdminPurge,
    Endpoint::Metrics,
    Endpoint::Healthz,
    Endpoint::Readyz,
];

fn own_account(caller: Caller) -> &'static str {
    match caller {
        Caller::Beta => "b-1",
        _ => "a-1",
    }
}

fn others_account(caller: Caller) -> &'static str {
    match caller {
        Caller::Alpha => "b-1",
        _ => "a-2",
    }
}

/// Sends `endpoint` as `caller`; on the admin listener the key goes in `x-admin-key`.
async fn call(w: &World, caller: Caller, endpoint: Endpoint, offset: u32) -> Reply {
    let key = key_of(w, caller);
    let tenant_api = |path: &'static str, body: String| {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(k) = &key {
            headers.push(("x-api-key", k.clone()));
        }
        async move { w.request(Method::POST, path, &headers, &body).await }
    };
    let admin = |method: Method, path: &'static str, body: &'static str| {
        let key = key.clone();
        async move { w.admin(method, path, key.as_deref(), body).await }
    };
    match endpoint {
        Endpoint::OwnViewers => {
            tenant_api("/v2/profiles", viewers(own_account(caller), offset, 10)).await
        }
        Endpoint::OthersViewers => {
            tenant_api("/v2/profiles", viewers(others_account(caller), offset, 10)).await
        }
        Endpoint::NetworkListSent => {
            let body = serde_json::json!({
                "account_id": own_account(caller), "action": "list_sent",
                "params": {"count": 10, "offset": offset}
            });
            tenant_api("/v2/network", body.to_string()).await
        }
        Endpoint::AdminUsage => admin(Method::GET, "/admin/usage", "").await,
        Endpoint::AdminPurge => admin(Method::POST, "/admin/cache/purge", r#"{"all":true}"#).await,
        Endpoint::Metrics => admin(Method::GET, "/metrics", "").await,
        Endpoint::Healthz => admin(Method::GET, "/healthz", "").await,
        Endpoint::Readyz => admin(Method::GET, "/readyz", "").await,
    }
}

/// What each caller must get from each endpoint: status and error code ("" for success).
fn expected(caller: Caller, endpoint: Endpoint) -> (u16, &'static str) {
    use Caller::*;
    use Endpoint::*;
    match (endpoint, caller) {
        (OwnViewers | OthersViewers | NetworkListSent, NoKey | Admin) => (403, "INVALID_API_KEY"),
        (OwnViewers, Alpha | Beta) => (200, ""),
        (OthersViewers, Alpha | Beta) => (404, "INVALID_ACCOUNT"),
        (NetworkListSent, Alpha) => (403, "ACTION_NOT_ALLOWED"),
        (NetworkListSent, Beta) => (200, ""),
        (AdminUsage | AdminPurge, Admin) => (200, ""),
        (AdminUsage | AdminPurge, _) => (403, "INVALID_API_KEY"),
        (Metrics | Healthz | Readyz, _) => (200, ""),
    }
}

/// Whether a successful answer of `endpoint` reached the upstream.
fn reaches_upstream(endpoint: Endpoint) -> bool {
    matches!(endpoint, Endpoint::OwnViewers | Endpoint::NetworkListSent)
}

#[tokio::test]
async fn every_endpoint_for_every_caller() {
    let w = two_tenants().await;
    let secrets = [
        w.key("alpha").to_string(),
        w.key("beta").to_string(),
        w.admin_key.clone(),
        w.upstream_key.clone(),
    ];
    for (i, &endpoint) in ENDPOINTS.iter().enumerate() {
        for (j, &caller) in CALLERS.iter().enumerate() {
            // A fresh page per cell, so a 200 is a real miss.
            let offset = (i * CALLERS.len() + j) as u32 * 10;
            let calls_before = w.sim.calls_total();
            let reply = call(&w, caller, endpoint, offset).await;
            let (status, code) = expected(caller, endpoint);
            let cell = format!("{endpoint:?} as {caller:?}");
            assert_eq!(reply.status, status, "{cell}: {}", reply.text());
            if !code.is_empty() {
                assert_eq!(reply.code(), code, "{cell}");
                assert_eq!(reply.json()["success"], false, "{cell}");
                assert_eq!(reply.json()["metadata"]["credits_consumed"], 0, "{cell}");
            }
            let upstream_calls = w.sim.calls_total() - calls_before;
            let want_calls = u64::from(status == 200 && reaches_upstream(endpoint));
            assert_eq!(upstream_calls, want_calls, "{cell}: upstream calls");
            // No answer ever carries a key, the caller's own included.
            let text = reply.text();
            for secret in &secrets {
                assert!(!text.contains(secret.as_str()), "{cell}: a key in the body");
                for (name, value) in &reply.headers {
                    assert!(
                        !value
                            .as_bytes()
                            .windows(secret.len())
                            .any(|part| part == secret.as_bytes()),
                        "{cell}: a key in header {name}"
                    );
                }
            }
        }
    }
    // What the denied calls cost: nothing. Alpha paid for its one page.
    assert_eq!(w.used("alpha").await, 1);
    assert_eq!(w.reserved("alpha").await, 0);
}

/// The error body without what legitimately differs per request.
fn comparable(reply: &Reply) -> (u16, Value, Vec<(String, String)>) {
    let mut body = reply.json();
    body["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("timestamp");
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    headers.sort();
    (reply.status.as_u16(), body, headers)
}

async fn ask(w: &World, tenant: &str, path: &str, action: &str, account: &str) -> Reply {
    let body =
        serde_json::json!({"account_id": account, "action": action, "params": {"count": 10}});
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-api-key", w.key(tenant).to_string()),
    ];
    w.request(Method::POST, path, &headers, &body.to_string())
        .await
}

#[tokio::test]
async fn a_forbidden_account_answers_exactly_like_a_nonexistent_one() {
    let w = two_tenants().await;
    // Warm the other tenant's page, so "exists and is cached" is on the table too.
    let warm = w.post(Some("beta"), &viewers("b-1", 0, 10)).await;
    assert_eq!(warm.status, 200);
    let calls = w.sim.calls_total();
    let cases: [(&str, &str, &str, &str); 4] = [
        // (tenant, path, forbidden account, nonexistent account)
        ("alpha", "/v2/profiles", "b-1", "zz-no-such-account"),
        ("alpha", "/v2/profiles", "shared-7", "a-3"),
        ("beta", "/v2/profiles", "a-1", "zz-no-such-account"),
        ("beta", "/v2/network", "a-2", "b-2"),
    ];
    for (tenant, path, forbidden, missing) in cases {
        let action = if path == "/v2/network" {
            "list_sent"
        } else {
            "get_viewers"
        };
        let a = ask(&w, tenant, path, action, forbidden).await;
        let b = ask(&w, tenant, path, action, missing).await;
        assert_eq!(a.status, 404, "{tenant} {forbidden}: {}", a.text());
        assert_eq!(a.code(), "INVALID_ACCOUNT");
        assert_eq!(
            comparable(&a),
            comparable(&b),
            "{tenant}: {forbidden} and {missing} are told apart"
        );
        assert!(!a.text().contains(forbidden) && !b.text().contains(missing));
        // An action the tenant may not call does not reveal the account either.
        let other_action =
            serde_json::json!({"account_id": forbidden, "action": "invite"}).to_string();
        let c = w
            .request(
                Method::POST,
                "/v2/network",
                &[
                    ("content-type", "application/json".to_string()),
                    ("x-api-key", w.key(tenant).to_string()),
                ],
                &other_action,
            )
            .await;
        assert_eq!(c.status, 404, "{}", c.text());
        assert_eq!(c.code(), "INVALID_ACCOUNT");
    }
    assert_eq!(
        w.sim.calls_total(),
        calls,
        "a refused account reached the upstream"
    );
    assert_eq!(w.used("alpha").await, 0);
}

/// Timing class: an answer is either decided inside the gateway, from the
/// caller's own lists, or waits on the upstream. With the simulator slowed to
/// 25 ms a call the two classes are far apart, so a probe that timed the
/// answers could tell them apart at once. A forbidden account (one that
/// exists upstream and is cached for its owner) and a nonexistent one must
/// both be in the first class. The control, an account the tenant may use
/// but the upstream does not know, is a 404 INVALID_ACCOUNT in the second class:
/// it shows the measurement would catch a refusal that consulted anything
/// beyond the caller's lists (and tells the tenant only about its own accounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_account_is_refused_in_the_same_time_class_as_a_nonexistent_one() {
    const UPSTREAM_MS: u64 = 25;
    const ROUNDS: usize = 30;
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("alpha", &["a-*"]),
            TenantSpec::new("beta", &["b-1"]),
        ],
        upstream_accounts: vec!["a-1", "b-1"],
        ..WorldSpec::default()
    })
    .await;
    assert_eq!(
        w.post(Some("beta"), &viewers("b-1", 0, 10)).await.status,
        200
    );
    w.sim.set_fault(viewgate::sim::Fault::latency(UPSTREAM_MS));

    async fn timed(w: &World, account: &str) -> (std::time::Duration, Reply) {
        let started = std::time::Instant::now();
        let reply = w.post(Some("alpha"), &viewers(account, 0, 10)).await;
        (started.elapsed(), reply)
    }
    let median = |mut v: Vec<std::time::Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut forbidden, mut missing, mut control) = (Vec::new(), Vec::new(), Vec::new());
    let calls = w.sim.calls_total();
    for _ in 0..ROUNDS {
        // Interleaved, so any drift of the machine hits all three alike.
        let (t, a) = timed(&w, "b-1").await;
        forbidden.push(t);
        let (t, b) = timed(&w, "zz-no-such-account").await;
        missing.push(t);
        let (t, c) = timed(&w, "a-404").await;
        control.push(t);
        assert_eq!(comparable(&a), comparable(&b));
        assert_eq!(
            (c.status.as_u16(), c.code()),
            (404, a.code()),
            "the control is a 404 too"
        );
    }
    let (forbidden, missing, control) = (median(forbidden), median(missing), median(control));
    eprintln!(
        "median: forbidden {forbidden:?}, nonexistent {missing:?}, upstream-checked {control:?}"
    );
    let upstream = std::time::Duration::from_millis(UPSTREAM_MS);
    assert!(control >= upstream, "the control waited on the upstream");
    assert!(
        forbidden < upstream / 2 && missing < upstream / 2,
        "forbidden {forbidden:?} and nonexistent {missing:?} must both be answered without the upstream"
    );
    assert_eq!(
        w.sim.calls_total() - calls,
        ROUNDS as u64,
        "only the control reached the upstream"
    );
}

#[tokio::test]
async fn tenants_cannot_purge_or_read_usage_and_admins_can() {
    let w = two_tenants().await;
    let page = viewers("a-1", 0, 10);
    assert_eq!(
        w.post(Some("alpha"), &page).await.header("x-cache"),
        Some("MISS")
    );
    for tenant in ["alpha", "beta"] {
        let key = w.key(tenant).to_string();
        for body in [r#"{"all":true}"#, r#"{"account_id":"a-1"}"#] {
            let r = w
                .admin(Method::POST, "/admin/cache/purge", Some(&key), body)
                .await;
            assert_eq!(r.status, 403, "{tenant} purged: {}", r.text());
            assert_eq!(r.code(), "INVALID_API_KEY");
        }
        let r = w.admin(Method::GET, "/admin/usage", Some(&key), "").await;
        assert_eq!(r.status, 403);
        assert!(!r.text().contains("used"), "{}", r.text());
        // The tenant API has no admin paths either.
        let r = w
            .request(
                Method::GET,
                "/admin/usage",
                &[("x-api-key", key.clone()), ("x-admin-key", key.clone())],
                "",
            )
            .await;
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // Still cached: nobody but the admin purged it.
    let calls = w.sim.calls_total();
    assert_eq!(
        w.post(Some("alpha"), &page).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(w.sim.calls_total(), calls);
    let usage = w
        .admin(Method::GET, "/admin/usage", Some(&w.admin_key), "")
        .await;
    assert_eq!(usage.status, 200);
    let rows = usage.json()["tenants"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    let purge = w
        .admin(
            Method::POST,
            "/admin/cache/purge",
            Some(&w.admin_key),
            r#"{"account_id":"a-1"}"#,
        )
        .await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    assert_eq!(
        w.post(Some("alpha"), &page).await.header("x-cache"),
        Some("MISS")
    );
}

#[tokio::test]
async fn one_tenants_page_is_never_served_to_another() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("alpha", &["a-1"]),
            TenantSpec::new("beta", &["b-1"]),
            TenantSpec::new("both", &["a-1", "b-1"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    // Alpha caches a-1; beta asking for a-1 is refused even though it is cached.
    assert_eq!(
        w.post(Some("alpha"), &viewers("a-1", 0, 10)).await.status,
        200
    );
    let r = w.post(Some("beta"), &viewers("a-1", 0, 10)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "INVALID_ACCOUNT");
    assert!(r.json().get("data").is_none());
    // A tenant that may read it shares the cached page (the cache is per page, not per tenant).
    let shared = w.post(Some("both"), &viewers("a-1", 0, 10)).await;
    assert_eq!(shared.header("x-cache"), Some("HIT"));
    assert_eq!(w.sim.calls_total(), 1);
}

#[tokio::test]
async fn one_tenants_limits_never_throttle_another() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("alpha", &["a-1"])
                .rate("{ per_second: 1, burst: 2 }")
                .budget(1, "day"),
            TenantSpec::new("beta", &["b-1"]).rate("{ per_second: 1, burst: 2 }"),
        ],
        ..WorldSpec::default()
    })
    .await;
    // Alpha spends its budget, then its rate limit (the fake clock stands still).
    assert_eq!(
        w.post(Some("alpha"), &viewers("a-1", 0, 10)).await.status,
        200
    );
    let broke = w.post(Some("alpha"), &viewers("a-1", 10, 10)).await;
    assert_eq!(broke.status, 402, "{}", broke.text());
    let limited = w.post(Some("alpha"), &viewers("a-1", 20, 10)).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    // Beta's bucket and budget are its own.
    for offset in [0, 10] {
        let r = w.post(Some("beta"), &viewers("b-1", offset, 10)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        w.post(Some("beta"), &viewers("b-1", 20, 10)).await.status,
        429
    );
    assert_eq!(w.used("alpha").await, 1);
    assert_eq!(w.used("beta").await, 2);
}
