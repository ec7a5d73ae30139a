//! Distributed mode: two gateway replicas sharing one Redis (ledger, rate
//! limits, upstream pace) in front of one simulator. Redis is a real
//! `redis-server` started by the test on a free port.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::{Reply, TenantSpec, World, WorldSpec, viewers};
use http::Method;
use redis_server::RedisServer;

/// Replica A (with its own simulator) and replica B, which shares A's
/// simulator, upstream key, tenant keys and the Redis at `redis`; both are
/// otherwise built from `spec`.
async fn replicas(redis: &RedisServer, spec: impl Fn() -> WorldSpec) -> (World, World) {
    let ledger = format!("  backend: redis\n  redis_url: \"{}\"\n", redis.url());
    let a = World::start(WorldSpec {
        ledger_yaml: Some(ledger.clone()),
        ..spec()
    })
    .await;
    let b = World::start(WorldSpec {
        ledger_yaml: Some(ledger),
        base_url: Some(a.sim.base_url()),
        upstream_key: Some(a.upstream_key.clone()),
        tenant_keys: Some(a.keys.clone()),
        ..spec()
    })
    .await;
    (a, b)
}

/// [`replicas`] with only `tenants` configured.
async fn two_replicas(redis: &RedisServer, tenants: Vec<TenantSpec>) -> (World, World) {
    replicas(redis, || WorldSpec {
        tenants: tenants.clone(),
        ..WorldSpec::default()
    })
    .await
}

/// How many keys match `pattern` (redis-cli comes with redis-server).
fn redis_keys(redis: &RedisServer, pattern: &str) -> usize {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--scan",
            "--pattern",
            pattern,
        ])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

async fn used(w: &World, tenant: &str) -> u64 {
    let usage = w
        .admin(Method::GET, "/admin/usage", Some(&w.admin_key), "")
        .await
        .json();
    usage["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == tenant)
        .map(|r| r["used"].as_u64().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforce_one_budget() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let (a, b) = two_replicas(
        &redis,
        vec![TenantSpec::new("crm", &["*"]).budget(10, "total")],
    )
    .await;
    a.sim.set_fault(viewgate::sim::Fault::latency(50));
    // 40 distinct misses, concurrent, spread over both replicas.
    let bodies: Vec<String> = (0..40)
        .map(|i| viewers(&format!("acc-{i}"), 0, 10))
        .collect();
    let (ra, rb) = (&a, &b);
    let replies: Vec<Reply> =
        futures_util::future::join_all(bodies.iter().enumerate().map(|(i, body)| async move {
            let replica = if i % 2 == 0 { ra } else { rb };
            replica.post(Some("crm"), body).await
        }))
        .await;
    let ok = replies.iter().filter(|r| r.status == 200).count() as u64;
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 || r.code() == "INSUFFICIENT_CREDITS")
    );
    assert_eq!(ok, 10, "one budget of 10 for both replicas together");
    assert_eq!(
        a.sim.credits_total(),
        10,
        "the upstream billed 10 credits in all"
    );
    assert_eq!(used(&a, "crm").await, 10);
    assert_eq!(
        used(&b, "crm").await,
        10,
        "both replicas see the same ledger"
    );
}

/// Finding 1 on Redis: mixed actions and prices through two replicas at once
/// never overspend one budget (was `used` 35 of 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_overspend_with_mixed_actions() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let (a, b) = two_replicas(
        &redis,
        vec![
            TenantSpec::new("crm", &["*"])
                .actions(common::MIXED_ACTIONS)
                .budget(20, "total"),
        ],
    )
    .await;
    a.sim.set_fault(viewgate::sim::Fault::latency(20));
    let statuses = common::mixed_burst(&[&a, &b], "crm", 20).await;
    assert!(
        statuses.iter().all(|s| [200, 402].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&402),
        "the burst asked for more than the budget"
    );
    let used_a = used(&a, "crm").await;
    assert!(used_a <= 20, "used {used_a} of 20");
    assert_eq!(
        used_a,
        a.sim.credits_total(),
        "the ledger holds what was billed"
    );
    assert_eq!(
        used(&b, "crm").await,
        used_a,
        "one ledger for both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rate_limit_holds_across_replicas() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let (a, b) = two_replicas(
        &redis,
        vec![TenantSpec::new("crm", &["*"]).rate("{ per_minute: 5, burst: 5 }")],
    )
    .await;
    let body = viewers("acc-1", 0, 10);
    let mut allowed = 0;
    for i in 0..20 {
        let r = if i % 2 == 0 {
            a.post(Some("crm"), &body).await
        } else {
            b.post(Some("crm"), &body).await
        };
        match r.status.as_u16() {
            200 => allowed += 1,
            429 => assert!(r.header("retry-after").is_some()),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    // 5 at once, then one every 12 s: the test runs far shorter than that.
    assert_eq!(
        allowed, 5,
        "N replicas together allow the configured rate, not N times it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_key_pace_is_global_too() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let (a, b) = replicas(&redis, || WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        key_yaml: "      rate_limit: { per_minute: 4, burst: 4 }\n",
        upstream_yaml: "  max_pace_wait_ms: 0\n",
        ..WorldSpec::default()
    })
    .await;
    for i in 0..12 {
        let body = viewers(&format!("acc-{i}"), 0, 10);
        let _ = if i % 2 == 0 {
            a.post(Some("crm"), &body).await
        } else {
            b.post(Some("crm"), &body).await
        };
    }
    assert_eq!(
        a.sim.calls_total(),
        4,
        "both replicas together kept the key's plan"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_misses_fail_closed_hits_are_served_and_service_resumes() {
    let Some(mut redis) = RedisServer::start_durable() else {
        return;
    };
    let (a, b) = two_replicas(
        &redis,
        vec![
            TenantSpec::new("crm", &["*"])
                .budget(100, "total")
                .rate("{ per_second: 100, burst: 100 }"),
        ],
    )
    .await;
    let cached = viewers("acc-1", 0, 10);
    assert_eq!(a.post(Some("crm"), &cached).await.status, 200);
    assert_eq!(
        b.post(Some("crm"), &viewers("acc-2", 0, 10)).await.status,
        200
    );
    assert_eq!(a.admin(Method::GET, "/readyz", None, "").await.status, 200);

    redis.stop();
    // Misses: credits fail closed.
    let miss = a.post(Some("crm"), &viewers("acc-3", 0, 10)).await;
    assert_eq!(miss.status, 503, "{}", miss.text());
    assert_eq!(miss.code(), "SERVICE_UNAVAILABLE");
    // Hits: still served (the rate limit falls back to this replica's own).
    let hit = a.post(Some("crm"), &cached).await;
    assert_eq!(hit.status, 200, "{}", hit.text());
    assert_eq!(hit.meta()["cache"], "hit");
    let ready = a.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(ready.status, 503);
    let metrics = a.admin(Method::GET, "/metrics", None, "").await.text();
    assert!(metrics.contains("viewgate_ready 0"), "{metrics}");
    assert!(
        common::logs().contains("Redis unreachable"),
        "the fallback is logged"
    );
    assert_eq!(
        a.sim.calls_total(),
        2,
        "no upstream call without a reservation"
    );

    // Redis comes back (with its data): service resumes by itself.
    redis.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = b.post(Some("crm"), &viewers("acc-4", 0, 10)).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not resume: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.admin(Method::GET, "/readyz", None, "").await.status, 200);
    // No spend lost or doubled: the ledger agrees with what the upstream billed.
    assert_eq!(a.sim.credits_total(), 3);
    assert_eq!(used(&a, "crm").await, 3);
    assert_eq!(used(&b, "crm").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shared_tier_a_page_fetched_by_one_replica_is_a_hit_on_the_other() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let (a, b) = replicas(&redis, || WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(100, "total")],
        cache_yaml: "  shared: redis\n",
        ..WorldSpec::default()
    })
    .await;
    // Ten pages fetched through A...
    for i in 0..10 {
        assert_eq!(
            a.post(Some("crm"), &viewers(&format!("acc-{i}"), 0, 10))
                .await
                .meta()["cache"],
            "miss"
        );
    }
    // ...once A's background writes have landed in Redis (bounded wait)...
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_keys(&redis, "vg:page:*") < 10 {
        assert!(
            Instant::now() < deadline,
            "the pages never reached the shared tier"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...are hits on B.
    for i in 0..10 {
        let r = b
            .post(Some("crm"), &viewers(&format!("acc-{i}"), 0, 10))
            .await;
        assert_eq!(r.meta()["cache"], "hit", "page {i}");
        assert_eq!(r.meta()["credits_consumed"], 0);
        assert_eq!(
            r.meta()["cached_at"],
            "2026-11-27T15:00:00Z",
            "B keeps A's fetch time"
        );
    }
    // What the tier saved: 10 credits billed for 20 answers, not 20.
    assert_eq!(a.sim.calls_total(), 10);
    assert_eq!(a.sim.credits_total(), 10);
    assert_eq!(used(&b, "crm").await, 10, "B was charged nothing");
}
