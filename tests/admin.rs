//! The admin listener over a real socket: health, readiness, metrics, usage, purge.

mod common;

use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;

fn spec() -> WorldSpec {
    WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).budget(50, "day"),
            TenantSpec::new("ops", &["*"]),
        ],
        ..WorldSpec::default()
    }
}

#[tokio::test]
async fn health_and_readiness_need_no_key() {
    let w = World::start(spec()).await;
    let health = w.admin(Method::GET, "/healthz", None, "").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = w.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(ready.status, 200);
    // While draining, readiness fails so load balancers stop sending traffic.
    w.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    let draining = w.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(draining.status, 503);
    assert_eq!(w.admin(Method::GET, "/nope", None, "").await.status, 404);
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key_and_no_other() {
    let w = World::start(spec()).await;
    let none = w.admin(Method::GET, "/admin/usage", None, "").await;
    assert_eq!(none.status, 403);
    assert_eq!(none.code(), "INVALID_API_KEY");
    let tenant = w
        .admin(Method::GET, "/admin/usage", Some(w.key("crm")), "")
        .await;
    assert_eq!(tenant.status, 403, "a tenant key is not an admin key");
    let purge = w
        .admin(
            Method::POST,
            "/admin/cache/purge",
            Some(w.key("ops")),
            r#"{"all":true}"#,
        )
        .await;
    assert_eq!(purge.status, 403);
    let ok = w
        .admin(Method::GET, "/admin/usage", Some(&w.admin_key), "")
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test]
async fn usage_reports_spend_hits_and_savings_per_tenant() {
    let w = World::start(spec()).await;
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await; // miss: 2 credits
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await; // hit: saves 2
    w.post(Some("ops"), &viewers("acc-1", 0, 20)).await; // hit for ops, saves 2
    w.post(Some("ops"), &viewers("acc-2", 0, 10)).await; // miss: 1 credit
    let usage = w
        .admin(Method::GET, "/admin/usage", Some(&w.admin_key), "")
        .await
        .json();
    let row = |t: &str| {
        usage["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tenant"] == t)
            .unwrap()
            .clone()
    };
    let crm = row("crm");
    assert_eq!(crm["period"], "day");
    assert_eq!(crm["period_key"], "2026-11-27");
    assert_eq!(crm["budget"], 50);
    assert_eq!(crm["used"], 2);
    assert_eq!(crm["reserved"], 0);
    assert_eq!(crm["remaining"], 48);
    assert_eq!(crm["requests"], 1);
    assert_eq!(crm["cache_hits"], 1);
    assert_eq!(crm["credits_saved"], 2);
    let ops = row("ops");
    assert_eq!(ops["period"], "total");
    assert_eq!(ops["budget"], serde_json::Value::Null);
    assert_eq!(ops["remaining"], serde_json::Value::Null);
    assert_eq!(
        (ops["used"].as_u64(), ops["cache_hits"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        w.sim.credits_total(),
        3,
        "usage agrees with what the upstream billed"
    );
}

#[tokio::test]
async fn purging_an_account_makes_its_pages_miss_again() {
    let w = World::start(spec()).await;
    w.post(Some("ops"), &viewers("acc-1", 0, 10)).await;
    w.post(Some("ops"), &viewers("acc-2", 0, 10)).await;
    let purge = w
        .admin(
            Method::POST,
            "/admin/cache/purge",
            Some(&w.admin_key),
            r#"{"account_id":"acc-1"}"#,
        )
        .await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-1", 0, 10)).await.meta()["cache"],
        "miss"
    );
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-2", 0, 10)).await.meta()["cache"],
        "hit"
    );
    let all = w
        .admin(
            Method::POST,
            "/admin/cache/purge",
            Some(&w.admin_key),
            r#"{"all":true}"#,
        )
        .await;
    assert_eq!(all.status, 200);
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-2", 0, 10)).await.meta()["cache"],
        "miss"
    );
    assert_eq!(w.sim.calls_total(), 4);
    let bad = w
        .admin(
            Method::POST,
            "/admin/cache/purge",
            Some(&w.admin_key),
            r#"{"everything":1}"#,
        )
        .await;
    assert_eq!(bad.code(), "INVALID_PARAMS");
    // `null` is not an account (found by schemathesis: the spec says string).
    for body in [
        r#"{"account_id":null,"all":true}"#,
        r#"{"account_id":null}"#,
    ] {
        let null = w
            .admin(Method::POST, "/admin/cache/purge", Some(&w.admin_key), body)
            .await;
        assert_eq!(null.code(), "INVALID_PARAMS", "{body}");
    }
    // Regression: an empty account_id matched nothing and answered 200.
    w.post(Some("ops"), &viewers("acc-2", 0, 10)).await;
    for body in [
        r#"{"account_id":""}"#,
        r#"{"account_id":"has space"}"#,
        r#"{"account_id":"acc\u0001"}"#,
    ] {
        let refused = w
            .admin(Method::POST, "/admin/cache/purge", Some(&w.admin_key), body)
            .await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text());
        assert_eq!(refused.code(), "INVALID_PARAMS", "{body}");
    }
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-2", 0, 10)).await.meta()["cache"],
        "hit",
        "a refused purge dropped nothing"
    );
    let wrong = w
        .admin(Method::GET, "/admin/cache/purge", Some(&w.admin_key), "")
        .await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
}

#[tokio::test]
async fn metrics_count_requests_credits_and_upstream_calls() {
    let w = World::start(spec()).await;
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await;
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await;
    w.post(None, &viewers("acc-1", 0, 20)).await;
    let text = w.admin(Method::GET, "/metrics", None, "").await;
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let body = text.text();
    for needle in [
        r#"viewgate_requests_total{tenant="crm",status="200",cache="miss"} 1"#,
        r#"viewgate_requests_total{tenant="crm",status="200",cache="hit"} 1"#,
        r#"viewgate_requests_total{tenant="-",status="403",cache="none"} 1"#,
        r#"viewgate_credits_charged_total{tenant="crm"} 2"#,
        r#"viewgate_credits_saved_total{tenant="crm"} 2"#,
        r#"viewgate_credits_remaining{tenant="crm"} 48"#,
        r#"viewgate_credit_budget{tenant="crm"} 50"#,
        r#"viewgate_upstream_requests_total{key="primary",outcome="ok"} 1"#,
        "viewgate_cache_entries 1",
        "viewgate_ready 1",
        "viewgate_in_flight_requests 0",
        "viewgate_request_duration_seconds_bucket",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    assert!(!body.contains(w.key("crm")));
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let w = World::start(spec()).await;
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await;
    w.post(Some("crm"), &viewers("acc-1", 0, 20)).await;
    w.post(Some("crm"), r#"{"bad":1}"#).await;
    let body = w.admin(Method::GET, "/metrics", None, "").await.text();
    common::promtool_accepts(&body);
}
