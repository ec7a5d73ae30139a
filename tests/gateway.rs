//! The gateway end to end: real sockets, the real stack, the simulator upstream.
//! Every test asserts on the simulator's counters (calls, billed credits), not
//! only on status codes.

mod common;

use std::time::Duration;

use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;
use serde_json::Value;
use viewgate::sim::{Fault, FaultKind};

fn two_tenants() -> WorldSpec {
    WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["acc-1", "acc-2"]).budget(100, "day"),
            TenantSpec::new("ops", &["*"]),
        ],
        ..WorldSpec::default()
    }
}

#[tokio::test]
async fn a_miss_then_a_hit_costs_one_upstream_call() {
    let w = World::start(two_tenants()).await;
    let first = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(second.status, 200);

    assert_eq!(w.sim.calls_total(), 1, "the hit never reached the upstream");
    assert_eq!(w.sim.page_calls("acc-1", 0, 10), 1);
    assert_eq!(w.sim.credits_total(), 1);
    assert_eq!(
        first.json()["data"],
        second.json()["data"],
        "identical data"
    );
    assert_eq!(first.json()["success"], true);

    // Every metadata field of design.md, on the miss ...
    let m = first.meta();
    assert_eq!(m["action"], "get_viewers");
    assert_eq!(m["account_id"], "acc-1");
    assert_eq!(m["credits_consumed"], 1);
    assert_eq!(m["timestamp"], "2026-11-27T15:00:00Z");
    assert_eq!(m["cache"], "miss");
    assert_eq!(m["cached_at"], "2026-11-27T15:00:00Z");
    assert_eq!(m["credits_remaining"], 99);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("x-credits-remaining"), Some("99"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("age"), Some("0"));
    assert!(
        first
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );

    // ... and on the hit, 42 seconds later by the gateway's clock.
    w.clock.advance(Duration::from_secs(42));
    let third = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    let m = third.meta();
    assert_eq!(m["credits_consumed"], 0);
    assert_eq!(m["cache"], "hit");
    assert_eq!(m["cached_at"], "2026-11-27T15:00:00Z");
    assert_eq!(m["timestamp"], "2026-11-27T15:00:42Z");
    assert_eq!(m["credits_remaining"], 99);
    assert_eq!(third.header("x-cache"), Some("HIT"));
    assert_eq!(third.header("age"), Some("42"));
    assert_eq!(w.used("crm").await, 1, "the ledger charged the miss only");
    assert_eq!(w.sim.calls_total(), 1);
}

#[tokio::test]
async fn data_is_passed_through_byte_for_byte() {
    let w = World::start(two_tenants()).await;
    let r = w.post(Some("ops"), &viewers("acc-7", 10, 25)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data = &r.json()["data"];
    assert_eq!(data["total_results"], 25);
    assert_eq!(data["viewers"].as_array().unwrap().len(), 25);
    assert_eq!(data["pagination"]["offset"], 10);
    assert_eq!(data["pagination"]["count"], 25);
    // 25 results cost 3 credits upstream, and the tenant is charged exactly that.
    assert_eq!(w.sim.credits_total(), 3);
    assert_eq!(r.meta()["credits_consumed"], 3);
    assert_eq!(
        r.meta()["credits_remaining"],
        Value::Null,
        "unlimited tenant"
    );
    assert_eq!(r.header("x-credits-remaining"), None);
    // The tenant sees the upstream's data exactly (compare with a direct call).
    let direct = common_direct(&w, "acc-7", 10, 25).await;
    assert_eq!(data, &direct["data"]);
}

async fn common_direct(w: &World, account: &str, offset: u32, count: u32) -> Value {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(format!("{}/v2/profiles", w.sim.base_url()))
        .header("x-api-key", &w.upstream_key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(viewers(
            account, offset, count,
        ))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn defaults_share_a_page_with_explicit_values() {
    let w = World::start(two_tenants()).await;
    let a = w
        .post(
            Some("crm"),
            r#"{"account_id":"acc-1","action":"get_viewers"}"#,
        )
        .await;
    let b = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(a.meta()["cache"], "miss");
    assert_eq!(b.meta()["cache"], "hit");
    assert_eq!(w.sim.calls_total(), 1);
}

#[tokio::test]
async fn auth_failures_are_403_and_never_reach_the_upstream() {
    let w = World::start(two_tenants()).await;
    let none = w.post(None, &viewers("acc-1", 0, 10)).await;
    assert_eq!(none.status, 403);
    assert_eq!(none.code(), "INVALID_API_KEY");
    let wrong = w
        .request(
            Method::POST,
            "/v2/profiles",
            &[
                ("x-api-key", "vg_not-a-real-key".into()),
                ("content-type", "application/json".into()),
            ],
            &viewers("acc-1", 0, 10),
        )
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.code(), "INVALID_API_KEY");
    // Nothing about the body is read before auth: a garbage body still gets 403.
    let garbage = w
        .request(
            Method::POST,
            "/v2/profiles",
            &[("x-api-key", "nope".into())],
            "{{{{",
        )
        .await;
    assert_eq!(garbage.code(), "INVALID_API_KEY");
    // The upstream key is not a tenant key.
    let upstream = w
        .request(
            Method::POST,
            "/v2/profiles",
            &[
                ("x-api-key", w.upstream_key.clone()),
                ("content-type", "application/json".into()),
            ],
            &viewers("acc-1", 0, 10),
        )
        .await;
    assert_eq!(upstream.code(), "INVALID_API_KEY");
    let body = none.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["metadata"]["credits_consumed"], 0);
    assert!(body["metadata"]["timestamp"].is_string());
    assert_eq!(w.sim.calls_total(), 0);
}

#[tokio::test]
async fn a_tenant_cannot_read_a_cached_page_of_an_account_it_is_not_allowed() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["acc-1"]),
            TenantSpec::new("sales", &["acc-2"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    let owner = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(owner.status, 200);
    let intruder = w.post(Some("sales"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(intruder.status, 404);
    assert_eq!(intruder.code(), "INVALID_ACCOUNT");
    assert!(intruder.json().get("data").is_none(), "no page data leaks");
    assert!(!intruder.text().contains("total_results"));
    // Indistinguishable from an account that does not exist at all.
    let ghost = w
        .post(Some("sales"), &viewers("no-such-account", 0, 10))
        .await;
    assert_eq!(ghost.status, intruder.status);
    assert_eq!(ghost.json()["error"], intruder.json()["error"]);
    assert_eq!(
        w.sim.calls_total(),
        1,
        "only the owner's miss reached the upstream"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_spare_other_tenants() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).rate("{ per_second: 1, burst: 2 }"),
            TenantSpec::new("ops", &["*"]).rate("{ per_second: 1, burst: 2 }"),
        ],
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    assert_eq!(w.post(Some("crm"), &body).await.status, 200);
    assert_eq!(w.post(Some("crm"), &body).await.status, 200);
    let limited = w.post(Some("crm"), &body).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.code(), "RATE_LIMITED");
    assert_eq!(limited.header("retry-after"), Some("1"));
    // Another tenant has its own bucket.
    assert_eq!(w.post(Some("ops"), &body).await.status, 200);
    // One second on the gateway's clock refills one cell.
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(w.post(Some("crm"), &body).await.status, 200);
    assert_eq!(w.post(Some("crm"), &body).await.status, 429);
    assert_eq!(
        w.sim.calls_total(),
        1,
        "one miss, everything else hits or is refused"
    );
}

#[tokio::test]
async fn retry_after_rounds_up_for_slow_rates() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).rate("{ per_minute: 2, burst: 1 }")],
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    assert_eq!(w.post(Some("crm"), &body).await.status, 200);
    let limited = w.post(Some("crm"), &body).await;
    assert_eq!(limited.header("retry-after"), Some("30"));
    w.clock.advance(Duration::from_millis(29_500));
    assert_eq!(
        w.post(Some("crm"), &body).await.header("retry-after"),
        Some("1")
    );
}

#[tokio::test]
async fn a_spent_budget_gets_402_but_cached_pages_stay_served() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(2, "day")],
        ..WorldSpec::default()
    })
    .await;
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 10, 10)).await.status,
        200
    );
    let broke = w.post(Some("crm"), &viewers("acc-1", 20, 10)).await;
    assert_eq!(broke.status, 402);
    assert_eq!(broke.code(), "INSUFFICIENT_CREDITS");
    assert_eq!(w.sim.calls_total(), 2, "no upstream call without credits");
    let hit = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.meta()["cache"], "hit");
    assert_eq!(hit.meta()["credits_remaining"], 0);
    // A page bigger than what is left is refused by its estimate: 20 results need 2.
    assert_eq!(w.used("crm").await, 2);
    // The next day brings a fresh budget, with no job running.
    w.clock.advance(Duration::from_secs(24 * 3600));
    let next_day = w.post(Some("crm"), &viewers("acc-1", 20, 20)).await;
    assert_eq!(next_day.status, 200, "{}", next_day.text());
    assert_eq!(next_day.meta()["credits_remaining"], 0);
    assert_eq!(w.sim.credits_total(), 4);
}

#[tokio::test]
async fn fifty_identical_concurrent_misses_make_one_upstream_call() {
    let mut spec = two_tenants();
    spec.sim = spec.sim.clone();
    let w = World::start(spec).await;
    // Slow the upstream so all fifty arrive while the first is in flight.
    w.sim.set_fault(Fault::latency(300));
    let body = viewers("acc-2", 0, 10);
    let replies = futures_util::future::join_all((0..50).map(|i| {
        let tenant = if i % 2 == 0 { "crm" } else { "ops" };
        w.post(Some(tenant), &body)
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(w.sim.calls_total(), 1);
    assert_eq!(w.sim.page_calls("acc-2", 0, 10), 1);
    assert_eq!(w.sim.credits_total(), 1);
    let charged: u64 = replies
        .iter()
        .map(|r| r.meta()["credits_consumed"].as_u64().unwrap())
        .sum();
    assert_eq!(charged, 1, "one credit charged in all");
    let outcomes: Vec<String> = replies
        .iter()
        .map(|r| r.meta()["cache"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes.iter().filter(|c| *c == "miss").count(), 1);
    assert!(
        outcomes.iter().filter(|c| *c == "coalesced").count() >= 40,
        "{outcomes:?}"
    );
    let coalesced = replies
        .iter()
        .find(|r| r.meta()["cache"] == "coalesced")
        .unwrap();
    assert_eq!(coalesced.header("x-cache"), Some("COALESCED"));
    assert_eq!(w.used("crm").await + w.used("ops").await, 1);
}

#[tokio::test]
async fn sixty_distinct_misses_never_overspend_a_budget_of_ten() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(10, "day")],
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::latency(50));
    let bodies: Vec<String> = (0..60)
        .map(|i| viewers(&format!("acc-{i}"), 0, 10))
        .collect();
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| w.post(Some("crm"), b))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count() as u64;
    let refused = replies.iter().filter(|r| r.status == 402).count() as u64;
    assert_eq!(ok + refused, 60);
    assert!(
        w.sim.credits_total() <= 10,
        "billed {}",
        w.sim.credits_total()
    );
    assert_eq!(
        w.sim.credits_total(),
        ok,
        "every success cost exactly one credit"
    );
    assert_eq!(ok, 10, "the whole budget is usable");
    assert_eq!(w.used("crm").await, 10);
    assert_eq!(w.reserved("crm").await, 0, "no reservation left behind");
}

#[tokio::test]
async fn a_page_expires_after_its_ttl() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ttl_s: 60,
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    w.post(Some("crm"), &body).await;
    w.clock.advance(Duration::from_secs(59));
    assert_eq!(w.post(Some("crm"), &body).await.meta()["cache"], "hit");
    w.clock.advance(Duration::from_secs(1));
    let refreshed = w.post(Some("crm"), &body).await;
    assert_eq!(refreshed.meta()["cache"], "miss");
    assert_eq!(refreshed.meta()["cached_at"], "2026-11-27T15:01:00Z");
    assert_eq!(w.sim.calls_total(), 2);
}

#[tokio::test]
async fn an_expired_page_stands_in_when_the_upstream_fails() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(10, "day")],
        ttl_s: 60,
        stale_if_error_s: 600,
        max_retries: 0,
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    w.post(Some("crm"), &body).await;
    w.clock.advance(Duration::from_secs(120));
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    let stale = w.post(Some("crm"), &body).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.meta()["cache"], "stale");
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.meta()["credits_consumed"], 0);
    assert_eq!(stale.header("age"), Some("120"));
    assert_eq!(w.used("crm").await, 1, "the failed refresh was not charged");
    // Past the stale window the error shows.
    w.clock.advance(Duration::from_secs(600));
    let failed = w.post(Some("crm"), &body).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.code(), "INTERNAL_ERROR");
    assert_eq!(w.sim.calls_total(), 3);
    assert_eq!(w.used("crm").await, 1);
}

#[tokio::test]
async fn forced_refresh_needs_permission() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).allow_refresh(),
            TenantSpec::new("ops", &["*"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    w.post(Some("crm"), &body).await;
    let headers = |t: &str| {
        vec![
            ("x-api-key", w.key(t).to_string()),
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-cache".to_string()),
        ]
    };
    let refused = w
        .request(Method::POST, "/v2/profiles", &headers("ops"), &body)
        .await;
    assert_eq!(
        refused.meta()["cache"],
        "hit",
        "ops may not force a refresh"
    );
    let forced = w
        .request(Method::POST, "/v2/profiles", &headers("crm"), &body)
        .await;
    assert_eq!(forced.meta()["cache"], "miss");
    assert_eq!(forced.meta()["credits_consumed"], 1);
    assert_eq!(w.sim.calls_total(), 2);
}
