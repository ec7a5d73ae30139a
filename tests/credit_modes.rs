//! Credit modes end to end (issue #15, points 3 to 5): degraded mode
//! (`on_budget_exhausted: stale`), shadow mode (`enforce: false`) and quotes
//! (`x-viewgate-quote: 1`), through the real stack against the simulator,
//! on a fake clock. Every test asserts on the simulator's counters (upstream
//! calls and billed credits) and on the ledger.

// Real deadlines for the test's redis-server; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::{TenantSpec, World, WorldSpec, logs, viewers};
use http::Method;
use redis_server::RedisServer;
use serde_json::Value;

const STALE: &str = "    on_budget_exhausted: stale\n";
const SHADOW: &str = "    enforce: false\n";

/// A request to `path` as `tenant` with extra headers.
async fn send(
    w: &World,
    tenant: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> common::Reply {
    let mut headers = vec![
        ("x-api-key", w.key(tenant).to_string()),
        ("content-type", "application/json".to_string()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
    w.request(Method::POST, path, &headers, body).await
}

/// The JSON log lines whose `msg` is `msg`.
fn log_lines(msg: &str) -> Vec<Value> {
    logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == msg)
        .collect()
}

/// The access line of the request with this id.
fn access_line(request_id: &str) -> Value {
    logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["request_id"] == request_id && v.get("status").is_some())
        .unwrap_or_else(|| panic!("no access line for {request_id}"))
}

/// The value of `viewgate_shadow_blocks_total` for `tenant` and `kind` (0 when absent).
fn shadow_blocks(metrics: &str, tenant: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("viewgate_shadow_blocks_total{"))
        .filter(|l| {
            l.contains(&format!("tenant=\"{tenant}\"")) && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn stale_mode_serves_an_expired_page_at_no_charge_and_refuse_mode_still_402s() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("lean", &["acc-1"])
                .budget(3, "day")
                .yaml(STALE),
            TenantSpec::new("strict", &["acc-2"]).budget(3, "day"),
        ],
        ..WorldSpec::default()
    })
    .await;
    // Each spends its whole budget on one page of 25 (3 credits).
    for (tenant, account) in [("lean", "acc-1"), ("strict", "acc-2")] {
        let r = w.post(Some(tenant), &viewers(account, 0, 25)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.meta()["credits_consumed"], 3);
        assert_eq!(r.meta()["credits_remaining"], 0);
    }
    assert_eq!((w.sim.calls_total(), w.sim.credits_total()), (2, 6));

    // Past the TTL (300 s), within the window expired pages are held (3600 s).
    w.clock.advance(Duration::from_secs(301));
    let r = send(
        &w,
        "lean",
        "/v2/profiles",
        &[("x-request-id", "degraded-1")],
        &viewers("acc-1", 0, 25),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-viewgate-degraded"), Some("budget"));
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert_eq!(r.header("age"), Some("301"));
    assert_eq!(r.header("x-credits-remaining"), Some("0"));
    assert_eq!(r.meta()["cache"], "stale");
    assert_eq!(r.meta()["credits_consumed"], 0);
    assert_eq!(r.meta()["credits_remaining"], 0);
    assert_eq!(
        r.json()["data"]["viewers"].as_array().map(Vec::len),
        Some(25)
    );
    let line = access_line("degraded-1");
    assert_eq!(line["cache"], "stale");
    assert_eq!(line["degraded"], "budget");
    assert_eq!(line["credits_charged"], 0);

    // No expired page for this key: 402 as in refuse mode.
    let r = w.post(Some("lean"), &viewers("acc-1", 25, 25)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (402, "INSUFFICIENT_CREDITS".into())
    );
    assert_eq!(r.header("x-viewgate-degraded"), None);
    // The client's own cap is not an exhausted budget: still 402.
    let r = send(
        &w,
        "lean",
        "/v2/profiles",
        &[("x-max-credits", "1")],
        &viewers("acc-1", 0, 25),
    )
    .await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.header("x-viewgate-degraded"), None);
    // Refuse mode (the default) with the same expired page: 402.
    let r = w.post(Some("strict"), &viewers("acc-2", 0, 25)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (402, "INSUFFICIENT_CREDITS".into())
    );
    assert_eq!(r.header("x-viewgate-degraded"), None);

    // Past the held window the page no longer qualifies.
    w.clock.advance(Duration::from_secs(3600));
    let r = w.post(Some("lean"), &viewers("acc-1", 0, 25)).await;
    assert_eq!(r.status, 402, "{}", r.text());

    assert_eq!(
        (w.sim.calls_total(), w.sim.credits_total()),
        (2, 6),
        "nothing after the first two pages reached the upstream"
    );
    assert_eq!((w.used("lean").await, w.used("strict").await), (3, 3));
    assert_eq!(
        (w.reserved("lean").await, w.reserved("strict").await),
        (0, 0)
    );
}

/// A stale-mode tenant "lean" (3 credits a day) that spent its budget on
/// acc-1's 25-viewer page, which has since expired (still held).
async fn lean_with_an_expired_page() -> World {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("lean", &["acc-1"])
                .budget(3, "day")
                .yaml(STALE),
        ],
        ..WorldSpec::default()
    })
    .await;
    assert_eq!(
        w.post(Some("lean"), &viewers("acc-1", 0, 25)).await.status,
        200
    );
    w.clock.advance(Duration::from_secs(301));
    w
}

#[tokio::test]
async fn concurrent_requests_out_of_budget_all_get_the_stale_page() {
    let w = lean_with_an_expired_page().await;
    let page = viewers("acc-1", 0, 25);
    let replies = futures_util::future::join_all((0..8).map(|_| w.post(Some("lean"), &page))).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-viewgate-degraded"), Some("budget"));
        assert_eq!(r.meta()["credits_consumed"], 0);
    }
    assert_eq!((w.sim.calls_total(), w.sim.credits_total()), (1, 3));
    assert_eq!(w.used("lean").await, 3);
}

#[tokio::test]
async fn shadow_mode_refuses_nothing_and_records_what_enforcement_would_have() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("shadow", &["acc-s"])
                .rate("{ per_second: 1, burst: 2 }")
                .budget(5, "day")
                .yaml(SHADOW),
            TenantSpec::new("rated", &["acc-r"]).rate("{ per_second: 1, burst: 2 }"),
            TenantSpec::new("budgeted", &["acc-b"]).budget(5, "day"),
        ],
        ..WorldSpec::default()
    })
    .await;
    // The same four pages of 20 (2 credits each) for each tenant, the clock
    // standing still: the bucket holds 2, the budget covers 2 pages.
    let mut statuses = std::collections::HashMap::new();
    for (tenant, account) in [
        ("shadow", "acc-s"),
        ("rated", "acc-r"),
        ("budgeted", "acc-b"),
    ] {
        let mut got = Vec::new();
        for i in 0..4u32 {
            let id = format!("{tenant}-{i}");
            let r = send(
                &w,
                tenant,
                "/v2/profiles",
                &[("x-request-id", &id)],
                &viewers(account, i * 20, 20),
            )
            .await;
            got.push(r.status.as_u16());
        }
        statuses.insert(tenant, got);
    }
    assert_eq!(statuses["rated"], [200, 200, 429, 429]);
    assert_eq!(statuses["budgeted"], [200, 200, 402, 402]);
    assert_eq!(statuses["shadow"], [200, 200, 200, 200], "nothing refused");

    // Every page of the shadow tenant was fetched and recorded exactly.
    assert_eq!(w.sim.calls_total(), 4 + 2 + 2);
    assert_eq!(w.sim.credits_total(), 8 + 4 + 4);
    let balance = w.balance("shadow").await;
    assert_eq!((balance.used, balance.reserved), (8, 0));
    assert_eq!(
        balance.remaining(),
        Some(0),
        "above the budget, not wrapped"
    );
    let usage = w
        .gateway
        .ledger()
        .usage(&[(
            "shadow".to_string(),
            w.gateway.tenants().by_id("shadow").unwrap().budget,
        )])
        .await
        .unwrap();
    assert_eq!((usage[0].balance.used, usage[0].requests), (8, 4));

    // What enforcement refused is what shadow mode logged and counted.
    let refused =
        |tenant: &str, status: u16| statuses[tenant].iter().filter(|s| **s == status).count();
    // This test's requests only: the log is the test binary's, and another
    // test has a tenant named "shadow" too.
    let lines: Vec<Value> = log_lines("would_block")
        .into_iter()
        .filter(|v| v["tenant"] == "shadow")
        .filter(|v| {
            v["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("shadow-"))
        })
        .collect();
    let of_kind = |kind: &str| {
        lines
            .iter()
            .filter(|v| v["kind"] == kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(of_kind("rate_limit").len(), refused("rated", 429));
    assert_eq!(of_kind("budget").len(), refused("budgeted", 402));
    let rate_ids: Vec<&str> = of_kind("rate_limit")
        .iter()
        .filter_map(|v| v["request_id"].as_str())
        .collect();
    assert_eq!(rate_ids, ["shadow-2", "shadow-3"]);
    let budget: Vec<(u64, u64, &str)> = of_kind("budget")
        .iter()
        .map(|v| {
            (
                v["needed"].as_u64().unwrap(),
                v["remaining"].as_u64().unwrap(),
                v["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(budget, [(2, 1, "shadow-2"), (2, 0, "shadow-3")]);

    let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
    assert_eq!(
        shadow_blocks(&metrics, "shadow", "rate_limit"),
        2,
        "{metrics}"
    );
    assert_eq!(shadow_blocks(&metrics, "shadow", "budget"), 2);
    assert_eq!(
        shadow_blocks(&metrics, "rated", "rate_limit"),
        0,
        "enforced tenants are not counted"
    );
    assert!(metrics.contains("# TYPE viewgate_shadow_blocks_total counter"));
    assert!(
        metrics.contains("# HELP viewgate_shadow_blocks_total Requests of tenants in shadow mode")
    );
    common::promtool_accepts(&metrics);
}

#[tokio::test]
async fn a_quote_prices_without_calling_or_charging() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("q", &["acc-1"])
                .budget(10, "day")
                .actions(&["get_viewers", "invite"])
                .connect_accounts(),
            TenantSpec::new("poor", &["acc-2"]).budget(2, "day"),
        ],
        ..WorldSpec::default()
    })
    .await;
    let quote = |tenant: &'static str, path: &'static str, body: String| {
        let w = &w;
        async move { send(w, tenant, path, &[("x-viewgate-quote", "1")], &body).await }
    };
    let page = viewers("acc-1", 0, 25);

    let r = quote("q", "/v2/profiles", page.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-viewgate-quote"), Some("1"));
    assert_eq!(r.header("x-credits-remaining"), Some("10"));
    let q = &r.json()["data"]["quote"];
    assert_eq!(q["price_bound"], 3);
    assert_eq!(q["cached"], "none");
    assert_eq!(q["would_charge"], 3);
    assert_eq!(q["credits_remaining"], 10);
    assert_eq!(q["budget_covers"], true);
    assert_eq!(r.json()["success"], true);
    assert_eq!(r.meta()["quote"], true);
    assert_eq!(r.meta()["credits_consumed"], 0);
    assert_eq!(r.meta()["action"], "get_viewers");
    assert_eq!(r.meta()["account_id"], "acc-1");
    assert_eq!(
        (w.sim.calls_total(), w.sim.credits_total()),
        (0, 0),
        "no upstream call"
    );
    assert_eq!(
        (w.used("q").await, w.reserved("q").await),
        (0, 0),
        "no charge"
    );

    // The page fetched for real (3 credits): the quote sees it fresh...
    assert_eq!(w.post(Some("q"), &page).await.meta()["credits_consumed"], 3);
    let q = quote("q", "/v2/profiles", page.clone()).await.json()["data"]["quote"].clone();
    assert_eq!(
        (q["cached"].as_str(), q["would_charge"].as_u64()),
        (Some("fresh"), Some(0))
    );
    assert_eq!(q["credits_remaining"], 7);
    // ...stale once expired...
    w.clock.advance(Duration::from_secs(301));
    let q = quote("q", "/v2/profiles", page.clone()).await.json()["data"]["quote"].clone();
    assert_eq!(
        (q["cached"].as_str(), q["would_charge"].as_u64()),
        (Some("stale"), Some(3))
    );
    // ...and gone past the window expired pages are held.
    w.clock.advance(Duration::from_secs(3600));
    let q = quote("q", "/v2/profiles", page.clone()).await.json()["data"]["quote"].clone();
    assert_eq!(q["cached"], "none");

    // A write: its fixed price, never cached.
    let invite = r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"https://www.linkedin.com/in/someone"}}"#;
    let r = quote("q", "/v2/network", invite.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = &r.json()["data"]["quote"];
    assert_eq!(
        (q["price_bound"].as_u64(), q["cached"].as_str()),
        (Some(1), Some("none"))
    );
    assert_eq!(
        w.sim
            .writes("invite", "acc-1", "https://www.linkedin.com/in/someone"),
        0
    );

    // A login is the upstream's to judge: it cannot be quoted, and is not sent.
    let login = r#"{"platform":"linkedin","email":"q@example.com","password":"not-a-real-one","country":"FR"}"#;
    let calls = w.sim.calls_total();
    let r = quote("q", "/v2/login", login.to_string()).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "INVALID_PARAMS".into()),
        "{}",
        r.text()
    );
    assert_eq!(w.sim.calls_total(), calls);

    // A budget that cannot cover the bound says so.
    let q = quote("poor", "/v2/profiles", viewers("acc-2", 0, 25))
        .await
        .json()["data"]["quote"]
        .clone();
    assert_eq!(
        (
            q["budget_covers"].as_bool(),
            q["credits_remaining"].as_u64()
        ),
        (Some(false), Some(2))
    );

    // The usual checks apply; other header values are refused.
    let r = quote("poor", "/v2/network", invite.replace("acc-1", "acc-2")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "ACTION_NOT_ALLOWED".into())
    );
    let r = send(
        &w,
        "q",
        "/v2/profiles",
        &[("x-viewgate-quote", "yes")],
        &page,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "INVALID_PARAMS".into())
    );

    // A quote claims no Idempotency-Key, but a malformed one is still 400.
    let r = send(
        &w,
        "q",
        "/v2/profiles",
        &[("x-viewgate-quote", "1"), ("idempotency-key", "tab\there")],
        &page,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "INVALID_PARAMS".into())
    );
    // A well-formed one is not claimed: the same key then runs for real.
    let other = viewers("acc-1", 25, 10);
    let r = send(
        &w,
        "q",
        "/v2/profiles",
        &[("x-viewgate-quote", "1"), ("idempotency-key", "k-1")],
        &other,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &w,
        "q",
        "/v2/profiles",
        &[("idempotency-key", "k-1")],
        &other,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("idempotent-replayed")),
        (200, None)
    );
    assert_eq!(r.meta()["credits_consumed"], 1);

    assert_eq!(
        (w.sim.calls_total(), w.sim.credits_total()),
        (2, 4),
        "only the two real requests"
    );
    assert_eq!(w.used("q").await, 4);
}

#[tokio::test]
async fn a_quote_in_stale_mode_says_the_answer_would_be_degraded() {
    let w = lean_with_an_expired_page().await;
    let r = send(
        &w,
        "lean",
        "/v2/profiles",
        &[("x-viewgate-quote", "1")],
        &viewers("acc-1", 0, 25),
    )
    .await;
    let q = &r.json()["data"]["quote"];
    assert_eq!(q["cached"], "stale");
    assert_eq!(q["degraded"], true);
    assert_eq!(q["would_charge"], 0);
    assert_eq!(q["budget_covers"], true);
    assert_eq!((w.sim.calls_total(), w.sim.credits_total()), (1, 3));
}

/// Shadow mode on the durable ledgers: the spend past the budget is held and
/// settled in the budget's own period, read back with nothing remaining; on
/// Redis, a global rate limit's would-be 429 is recorded too.
#[tokio::test]
async fn shadow_spend_is_recorded_past_the_budget_on_sqlite_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_new();
    let mut ledgers = vec![format!(
        "  backend: sqlite\n  path: \"{}\"\n",
        dir.path().join("ledger.db").display()
    )];
    if let Some(redis) = &redis {
        ledgers.push(format!(
            "  backend: redis\n  redis_url: \"{}\"\n",
            redis.url()
        ));
    }
    for ledger in ledgers {
        let w = World::start(WorldSpec {
            // On Redis the rate limit is global (Redis's own clock): a
            // minute per cell keeps the third request over it.
            tenants: vec![
                TenantSpec::new("shadow", &["acc-1"])
                    .budget(3, "day")
                    .rate("{ per_minute: 1, burst: 2 }")
                    .yaml(SHADOW),
            ],
            ledger_yaml: Some(ledger.clone()),
            ..WorldSpec::default()
        })
        .await;
        for i in 0..3u32 {
            let r = w.post(Some("shadow"), &viewers("acc-1", i * 20, 20)).await;
            assert_eq!(r.status, 200, "{ledger}: {}", r.text());
            assert_eq!(r.meta()["credits_consumed"], 2);
        }
        assert_eq!(
            (w.sim.calls_total(), w.sim.credits_total()),
            (3, 6),
            "{ledger}"
        );
        let balance = w.balance("shadow").await;
        assert_eq!(
            (balance.used, balance.reserved, balance.remaining()),
            (6, 0, Some(0)),
            "{ledger}"
        );
        let budget = w.gateway.tenants().by_id("shadow").unwrap().budget;
        let usage = w
            .gateway
            .ledger()
            .usage(&[("shadow".to_string(), budget)])
            .await
            .unwrap();
        assert_eq!(
            (usage[0].balance.used, usage[0].requests),
            (6, 3),
            "{ledger}"
        );
        let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
        assert_eq!(shadow_blocks(&metrics, "shadow", "budget"), 2, "{ledger}");
        assert_eq!(
            shadow_blocks(&metrics, "shadow", "rate_limit"),
            1,
            "{ledger}"
        );
    }
}
