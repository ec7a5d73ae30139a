//! Upstream resilience, with the simulator's faults: the key's pace, the
//! circuit breaker, the overall deadline, stale-while-revalidate, per-action
//! estimates. Time moves on the gateway's fake clock, never by sleeping.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;
use viewgate::sim::{Fault, FaultKind};

#[tokio::test]
async fn an_upstream_key_is_never_called_faster_than_its_plan() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(100, "day")],
        key_yaml: "      rate_limit: { per_minute: 5, burst: 5 }\n",
        upstream_yaml: "  max_pace_wait_ms: 0\n",
        ..WorldSpec::default()
    })
    .await;
    // A tenant burst of 20 distinct pages against a key allowed 5 a minute.
    let bodies: Vec<String> = (0..20)
        .map(|i| viewers(&format!("acc-{i}"), 0, 10))
        .collect();
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| w.post(Some("crm"), b))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 5);
    assert_eq!(
        w.sim.calls_total(),
        5,
        "the upstream never saw more than the plan"
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.code(), "RATE_LIMITED");
        assert_eq!(r.header("retry-after"), Some("12"), "one cell every 12 s");
    }
    assert_eq!(w.used("crm").await, 5, "paced-out requests cost nothing");
    assert_eq!(w.reserved("crm").await, 0);
    // The plan refills with time.
    w.clock.advance(Duration::from_secs(12));
    assert_eq!(w.post(Some("crm"), &bodies[19]).await.status, 200);
    assert_eq!(w.post(Some("crm"), &bodies[18]).await.status, 429);
    assert_eq!(w.sim.calls_total(), 6);
}

/// The key's plan used up stands in for the upstream's own 429: an expired
/// page within `cache.stale_if_error_s` is served, as for an open breaker.
#[tokio::test]
async fn a_paced_out_read_gets_its_expired_page_as_an_open_breaker_would() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(100, "day")],
        ttl_s: 10,
        key_yaml: "      rate_limit: { per_minute: 1, burst: 1 }\n",
        upstream_yaml: "  max_pace_wait_ms: 0\n",
        ..WorldSpec::default()
    })
    .await;
    let cached = viewers("acc-1", 0, 10);
    assert_eq!(w.post(Some("crm"), &cached).await.status, 200);
    // The page expires; the plan's next call is 60 s away.
    w.clock.advance(Duration::from_secs(20));
    let r = w.post(Some("crm"), &cached).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.meta()["cache"], "stale");
    assert_eq!(r.meta()["credits_consumed"], 0);
    // A page never fetched has nothing to stand in: the pace's 429.
    let other = w.post(Some("crm"), &viewers("acc-2", 0, 10)).await;
    assert_eq!(
        (other.status.as_u16(), other.code().as_str()),
        (429, "RATE_LIMITED"),
        "{}",
        other.text()
    );
    assert_eq!(w.sim.calls_total(), 1, "the plan was never exceeded");
    assert_eq!(w.used("crm").await, 1);
}

/// Two requests for one page while the key's pace holds its call back (not
/// on the wire): at the deadline the leader is told its outcome is unknown
/// (the call goes on), the follower 503, not an upstream timeout: the
/// upstream was never slow. Whichever of the two leads.
#[tokio::test]
async fn a_follower_of_a_paced_call_is_not_told_the_upstream_timed_out() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]),
            TenantSpec::new("ops", &["*"]),
        ],
        key_yaml: "      rate_limit: { per_minute: 6, burst: 1 }\n",
        upstream_yaml: "  max_pace_wait_ms: 20000\n",
        server_yaml: "  request_timeout_ms: 300\n",
        ..WorldSpec::default()
    })
    .await;
    // The key's one cell: the next call may go out 10 s from now.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    let page = viewers("acc-3", 0, 10);
    let (a, b) = tokio::join!(w.post(Some("crm"), &page), w.post(Some("ops"), &page));
    let mut answers = [a, b];
    answers.sort_by_key(|r| r.status);
    let [follower, leader] = answers;
    assert_eq!(
        (follower.status.as_u16(), follower.code().as_str()),
        (503, "SERVICE_UNAVAILABLE"),
        "{}",
        follower.text()
    );
    assert_eq!(
        (leader.status.as_u16(), leader.code().as_str()),
        (504, "UPSTREAM_TIMEOUT")
    );
    assert!(
        leader.text().contains("outcome is unknown"),
        "{}",
        leader.text()
    );
    assert_eq!(w.sim.calls_total(), 1, "the paced call has not gone out");
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_recovers_after_a_probe() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 0,
        upstream_yaml: "  breaker: { failures: 3, open_s: 30 }\n",
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    for i in 0..3 {
        let r = w
            .post(Some("crm"), &viewers(&format!("acc-{i}"), 0, 10))
            .await;
        assert_eq!(r.code(), "INTERNAL_ERROR");
    }
    assert_eq!(w.sim.calls_total(), 3);
    // Open: fail fast, the upstream is left alone.
    let fast = w.post(Some("crm"), &viewers("acc-9", 0, 10)).await;
    assert_eq!(fast.status, 503);
    assert_eq!(fast.code(), "SERVICE_UNAVAILABLE");
    assert_eq!(fast.header("retry-after"), Some("30"));
    assert_eq!(
        w.sim.calls_total(),
        3,
        "an open breaker sends nothing upstream"
    );
    // After open_s, one probe goes through; the upstream has healed.
    w.sim.clear_fault();
    w.clock.advance(Duration::from_secs(30));
    let probe = w.post(Some("crm"), &viewers("acc-9", 0, 10)).await;
    assert_eq!(probe.status, 200, "{}", probe.text());
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-8", 0, 10)).await.status,
        200
    );
    assert_eq!(w.sim.calls_total(), 5);
    let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
    assert!(
        metrics.contains(
            r#"viewgate_upstream_requests_total{key="primary",outcome="circuit_open"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failed_probe_keeps_the_breaker_open_and_stale_pages_fill_in() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 0,
        ttl_s: 10,
        upstream_yaml: "  breaker: { failures: 2, open_s: 30 }\n",
        ..WorldSpec::default()
    })
    .await;
    let cached = viewers("acc-1", 0, 10);
    assert_eq!(w.post(Some("crm"), &cached).await.status, 200);
    w.clock.advance(Duration::from_secs(60));
    w.sim.set_fault(Fault::new(FaultKind::Reset));
    // Two failures open the breaker; the expired page stands in each time.
    for _ in 0..2 {
        let r = w.post(Some("crm"), &cached).await;
        assert_eq!(r.meta()["cache"], "stale");
    }
    assert_eq!(w.sim.calls_total(), 3);
    let r = w.post(Some("crm"), &cached).await;
    assert_eq!(
        r.meta()["cache"],
        "stale",
        "open breaker: stale without an upstream call"
    );
    assert_eq!(w.sim.calls_total(), 3);
    // The probe fails: open again for a full period.
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-2", 0, 10)).await.status,
        502
    );
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-2", 0, 10)).await.status,
        503
    );
    assert_eq!(w.sim.calls_total(), 4);
}

#[tokio::test]
async fn retries_stop_at_the_overall_deadline() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        timeout_ms: 1000,
        max_retries: 5,
        upstream_yaml: "  deadline_ms: 1500\n",
        ..WorldSpec::default()
    })
    .await;
    // The upstream asks to come back in 2 s: past the deadline, so no retry.
    w.sim
        .set_fault(Fault::new(FaultKind::RateLimited { retry_after_s: 2 }));
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "RATE_LIMITED");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(
        w.sim.calls_total(),
        1,
        "a retry that cannot finish in time is not made"
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).budget(10, "day")],
        ttl_s: 60,
        cache_yaml: "  stale_while_revalidate_s: 120\n",
        ..WorldSpec::default()
    })
    .await;
    let body = viewers("acc-1", 0, 10);
    w.post(Some("crm"), &body).await;
    w.clock.advance(Duration::from_secs(90));
    // Slow the refresh so the next requests arrive while it runs.
    w.sim.set_fault(Fault::latency(300));
    let replies = futures_util::future::join_all((0..5).map(|_| w.post(Some("crm"), &body))).await;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(r.meta()["cache"], "stale");
        assert_eq!(r.meta()["credits_consumed"], 0);
        assert_eq!(r.meta()["cached_at"], "2026-11-27T15:00:00Z");
    }
    // Wait (bounded) for the one background refresh to land.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.sim.calls_total() < 2 || w.used("crm").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never happened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = w.post(Some("crm"), &body).await;
    assert_eq!(fresh.meta()["cache"], "hit");
    assert_eq!(fresh.meta()["cached_at"], "2026-11-27T15:01:30Z");
    assert_eq!(w.sim.calls_total(), 2, "one refresh for five stale answers");
    assert_eq!(
        w.used("crm").await,
        2,
        "the refresh was charged to the tenant that triggered it"
    );
    // Past the revalidation window an expired page is a plain miss.
    w.clock.advance(Duration::from_secs(60 + 121));
    w.sim.clear_fault();
    assert_eq!(w.post(Some("crm"), &body).await.meta()["cache"], "miss");
}

#[tokio::test]
async fn other_actions_reserve_their_configured_estimate() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("net", &["*"])
                .actions(&["invite", "list_sent"])
                .budget(3, "day"),
        ],
        upstream_yaml: "  estimates: { invite: 2, list_sent: 5 }\n",
        ..WorldSpec::default()
    })
    .await;
    let headers = [
        ("x-api-key", w.key("net").to_string()),
        ("content-type", "application/json".into()),
    ];
    let list = w
        .request(
            Method::POST,
            "/v2/network",
            &headers,
            r#"{"account_id":"acc-1","action":"list_sent"}"#,
        )
        .await;
    assert_eq!(
        list.status, 402,
        "an estimate of 5 does not fit a budget of 3"
    );
    assert_eq!(w.sim.calls_total(), 0);
    let invite = r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"https://www.linkedin.com/in/x"}}"#;
    let first = w
        .request(Method::POST, "/v2/network", &headers, invite)
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    // Reserved 2, settled to what the upstream billed (1).
    assert_eq!(first.meta()["credits_consumed"], 1);
    assert_eq!(first.meta()["credits_remaining"], 2);
    assert_eq!(w.post_as_network(&headers, invite).await, 200);
    assert_eq!(
        w.post_as_network(&headers, invite).await,
        402,
        "1 left < estimate 2"
    );
    assert_eq!(w.sim.credits_total(), 2);
}

trait NetworkPost {
    async fn post_as_network(&self, headers: &[(&str, String)], body: &str) -> u16;
}

impl NetworkPost for World {
    async fn post_as_network(&self, headers: &[(&str, String)], body: &str) -> u16 {
        self.request(Method::POST, "/v2/network", headers, body)
            .await
            .status
            .as_u16()
    }
}
