//! Every call as safe as get_viewers: prices bound every action, writes are
//! sent once, idempotency keys replay, and the logs add up to the ledger.
//!
//! Each test asserts on the simulator's counters (what reached the upstream,
//! what it billed) and on the ledger, not only on status codes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Reply, TenantSpec, World, WorldSpec, viewers};
use http::Method;
use serde_json::Value;
use viewgate::sim::{Fault, FaultKind};

const INVITE: &str = r#"{"account_id":"acc-1","action":"invite","params":{"profile_url":"https://www.linkedin.com/in/someone"}}"#;

async fn call(w: &World, tenant: &str, path: &str, body: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![
        ("x-api-key", w.key(tenant).to_string()),
        ("content-type", "application/json".to_string()),
    ];
    for (name, value) in extra {
        headers.push((name, value.to_string()));
    }
    w.request(Method::POST, path, &headers, body).await
}

fn candidates(count: u64) -> String {
    format!(r#"{{"account_id":"acc-1","action":"get_candidates","params":{{"count":{count}}}}}"#)
}

/// Finding 1: other actions reserved a fixed estimate whatever their params
/// said (budget 5, `count: 100` was charged 6).
#[tokio::test]
async fn a_price_bound_over_the_budget_is_refused_before_the_upstream() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"])
                .actions(&["get_candidates"])
                .budget(5, "day"),
        ],
        ..WorldSpec::default()
    })
    .await;
    let r = call(&w, "crm", "/v2/recruiter", &candidates(100), &[]).await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.code(), "INSUFFICIENT_CREDITS");
    assert_eq!(w.sim.calls_total(), 0, "no upstream call");
    // A count above the documented maximum, or not a count, is refused as such.
    for bad in [r#"101"#, r#""ten""#, "-1", "2.5"] {
        let body = format!(
            r#"{{"account_id":"acc-1","action":"get_candidates","params":{{"count":{bad}}}}}"#
        );
        let r = call(&w, "crm", "/v2/recruiter", &body, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (400, "INVALID_PARAMS".into()),
            "{bad}"
        );
    }
    // Within the budget: reserved 5 (count 50), settled to what was billed.
    let r = call(&w, "crm", "/v2/recruiter", &candidates(50), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.sim.calls_total(), 1);
    assert_eq!(w.used("crm").await, w.sim.credits_total());
    assert!(w.used("crm").await <= 5);
}

#[tokio::test]
async fn actions_without_a_rule_or_on_another_endpoint_are_invalid_action() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"]).actions(&["*"])],
        ..WorldSpec::default()
    })
    .await;
    let unknown = r#"{"account_id":"acc-1","action":"frobnicate"}"#;
    let r = call(&w, "crm", "/v2/profiles", unknown, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "INVALID_ACTION".into())
    );
    let misplaced = viewers("acc-1", 0, 10);
    let r = call(&w, "crm", "/v2/network", &misplaced, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "INVALID_ACTION".into())
    );
    assert!(r.text().contains("/v2/profiles"), "{}", r.text());
    assert_eq!(w.sim.calls_total(), 0);
}

#[tokio::test]
async fn x_max_credits_caps_one_request_and_never_a_hit() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let page = viewers("acc-1", 0, 50);
    let r = call(&w, "crm", "/v2/profiles", &page, &[("x-max-credits", "4")]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (402, "INSUFFICIENT_CREDITS".into())
    );
    assert!(r.text().contains("x-max-credits 4"), "{}", r.text());
    assert_eq!(w.sim.calls_total(), 0);
    let r = call(&w, "crm", "/v2/profiles", &page, &[("x-max-credits", "5")]).await;
    assert_eq!(r.status, 200);
    let r = call(&w, "crm", "/v2/profiles", &page, &[("x-max-credits", "0")]).await;
    assert_eq!(r.meta()["cache"], "hit", "a hit costs 0: any cap allows it");
    for bad in ["-1", "many", "1.5"] {
        let r = call(&w, "crm", "/v2/profiles", &page, &[("x-max-credits", bad)]).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(w.sim.calls_total(), 1);
}

/// An upstream charge above the price bound is recorded in full, logged as
/// a warning and counted.
#[tokio::test]
async fn an_upstream_charge_above_the_bound_is_recorded_logged_and_counted() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("net", &["*"]).actions(&["get_candidates"])],
        // A fixed price of 1 for a list the upstream bills 1 per 10 results
        // (the simulator has at least 20 candidates per account).
        upstream_yaml: "  estimates: { get_candidates: 1 }\n",
        ..WorldSpec::default()
    })
    .await;
    let r = call(&w, "net", "/v2/recruiter", &candidates(100), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let billed = w.sim.credits_total();
    assert!(billed > 1, "the simulator billed {billed}");
    assert_eq!(r.meta()["credits_consumed"], billed);
    assert_eq!(w.used("net").await, billed, "recorded in full");
    let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
    assert!(
        metrics.contains(r#"viewgate_price_overruns_total{action="get_candidates"} 1"#),
        "{metrics}"
    );
    assert!(common::logs().contains("more than the action's price bound"));
}

/// Finding 2: an invite that met an upstream 500 or a reset was sent again.
#[tokio::test]
async fn a_write_is_sent_once_whatever_goes_wrong() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("net", &["*"]).actions(&["invite"])],
        max_retries: 2,
        timeout_ms: 400,
        ..WorldSpec::default()
    })
    .await;
    let cases = [
        (FaultKind::InternalError, 502, "UPSTREAM_UNAVAILABLE"),
        (FaultKind::Reset, 502, "UPSTREAM_UNAVAILABLE"),
        (FaultKind::Hang, 504, "UPSTREAM_TIMEOUT"),
    ];
    for (n, (fault, status, code)) in cases.into_iter().enumerate() {
        w.sim.set_fault(Fault::new(fault.clone()));
        let r = call(&w, "net", "/v2/network", INVITE, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code.into()),
            "{fault:?}"
        );
        assert!(r.text().contains("outcome is unknown"), "{}", r.text());
        // What was held is kept as spend, and the answer says so.
        assert_eq!(r.json()["metadata"]["credits_consumed"], 1);
        assert_eq!(
            w.sim.calls_total(),
            n as u64 + 1,
            "{fault:?}: exactly one upstream call"
        );
        assert_eq!(w.used("net").await, n as u64 + 1);
    }
    // An upstream 429 means it did nothing: that one is retried.
    w.sim
        .set_fault(Fault::new(FaultKind::RateLimited { retry_after_s: 1 }).times(1));
    let r = call(&w, "net", "/v2/network", INVITE, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(w.sim.calls_total(), 5);
    w.sim.shutdown();
}

/// A read that met an upstream 5xx is retried: V2 errors cost nothing.
#[tokio::test]
async fn a_read_is_retried_after_a_5xx_but_not_after_a_reset() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 2,
        ..WorldSpec::default()
    })
    .await;
    w.sim
        .set_fault(Fault::new(FaultKind::InternalError).times(1));
    let r = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(r.status, 200);
    assert_eq!(w.sim.calls_total(), 2);
    w.sim.set_fault(Fault::new(FaultKind::Reset).times(1));
    let r = w.post(Some("crm"), &viewers("acc-1", 10, 10)).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        w.sim.calls_total(),
        3,
        "a reset after sending is not retried"
    );
}

fn idempotent(key: &str) -> [(&'static str, &str); 1] {
    [("idempotency-key", key)]
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_without_a_call_or_a_charge() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("net", &["*"]).actions(&["invite", "get_viewers"]),
            TenantSpec::new("crm", &["*"]).actions(&["invite"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    let first = call(&w, "net", "/v2/network", INVITE, &idempotent("order-1")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = call(&w, "net", "/v2/network", INVITE, &idempotent("order-1")).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the first answer, byte for byte");
    assert_eq!(w.sim.calls_total(), 1, "no second upstream call");
    assert_eq!(w.used("net").await, 1, "no second charge");
    // Another request under the same key is refused; keys are per tenant.
    let other = INVITE.replace("someone", "someone-else");
    let r = call(&w, "net", "/v2/network", &other, &idempotent("order-1")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "IDEMPOTENCY_KEY_REUSED".into())
    );
    let r = call(&w, "crm", "/v2/network", INVITE, &idempotent("order-1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("idempotent-replayed"), None);
    assert_eq!(w.sim.calls_total(), 2);
    // The same params written in another order are the same request.
    let reordered = r#"{"params":{"profile_url":"https://www.linkedin.com/in/someone"},"action":"invite","account_id":"acc-1"}"#;
    let r = call(&w, "net", "/v2/network", reordered, &idempotent("order-1")).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    // Malformed keys.
    for bad in ["", &"k".repeat(256)] {
        let r = call(&w, "net", "/v2/network", INVITE, &idempotent(bad)).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (400, "INVALID_PARAMS".into())
        );
    }
    assert_eq!(w.sim.calls_total(), 2);
}

/// Red team s25: cache hits sent with a fresh Idempotency-Key each stored a
/// whole page per key in the ledger at no charge (26 MB for 1,000 hits).
#[tokio::test]
async fn a_read_answered_without_an_upstream_call_keeps_nothing_under_its_key() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let page = viewers("acc-1", 0, 10);
    let other = viewers("acc-1", 10, 10);
    // The miss's answer is the upstream's: kept, replayed.
    let miss = call(&w, "crm", "/v2/profiles", &page, &idempotent("read-1")).await;
    assert_eq!(miss.meta()["cache"], "miss");
    let again = call(&w, "crm", "/v2/profiles", &page, &idempotent("read-1")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, miss.body);
    let r = call(&w, "crm", "/v2/profiles", &other, &idempotent("read-1")).await;
    assert_eq!(r.code(), "IDEMPOTENCY_KEY_REUSED");
    // Hits under fresh keys keep nothing: a key used on a hit is free again
    // (another request under it runs instead of getting 422).
    for i in 0..20 {
        let key = format!("hit-{i}");
        let hit = call(&w, "crm", "/v2/profiles", &page, &idempotent(&key)).await;
        assert_eq!(hit.status, 200, "{}", hit.text());
        assert_eq!(hit.meta()["cache"], "hit");
        assert_eq!(hit.header("idempotent-replayed"), None);
        let r = call(&w, "crm", "/v2/profiles", &other, &idempotent(&key)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("idempotent-replayed"), None);
    }
    // One miss for each page, nothing else reached the upstream.
    assert_eq!(w.sim.calls_total(), 2);
    assert_eq!(w.used("crm").await, 2);
    // Red team s25b: a stale page standing in for a failed call is not the
    // upstream's answer either (its failed call cost nothing).
    w.clock.advance(Duration::from_secs(301));
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    for i in 0..10 {
        let key = format!("stale-{i}");
        let stale = call(&w, "crm", "/v2/profiles", &page, &idempotent(&key)).await;
        assert_eq!(stale.status, 200, "{}", stale.text());
        assert_eq!(stale.meta()["cache"], "stale");
        let r = call(&w, "crm", "/v2/profiles", &other, &idempotent(&key)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("idempotent-replayed"), None);
    }
    assert_eq!(w.used("crm").await, 2);
}

/// Review s25: a stale page standing in for a call whose outcome is unknown
/// was charged what it held; its key must keep it, or a retry under the
/// key would be sent and charged again.
#[tokio::test]
async fn a_charged_stale_answer_is_kept_under_its_key() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        timeout_ms: 300,
        ..WorldSpec::default()
    })
    .await;
    let page = viewers("acc-1", 0, 10);
    assert_eq!(w.post(Some("crm"), &page).await.status, 200);
    w.clock.advance(Duration::from_secs(301));
    // Billed upstream, never answered: the outcome is unknown.
    w.sim.set_fault(Fault::new(FaultKind::HangAfterExecute));
    let stale = call(&w, "crm", "/v2/profiles", &page, &idempotent("k-stale")).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.meta()["cache"], "stale");
    assert_eq!(stale.meta()["credits_consumed"], 1);
    let calls = w.sim.calls_total();
    w.sim.clear_fault();
    let again = call(&w, "crm", "/v2/profiles", &page, &idempotent("k-stale")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, stale.body);
    assert_eq!(w.sim.calls_total(), calls, "not sent again");
    assert_eq!(w.used("crm").await, 2, "not charged again");
}

#[tokio::test]
async fn an_outcome_unknown_write_is_kept_so_a_retry_never_sends_it_again() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("net", &["*"]).actions(&["invite"])],
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::new(FaultKind::InternalError));
    let first = call(&w, "net", "/v2/network", INVITE, &idempotent("k-500")).await;
    assert_eq!(first.status, 502);
    w.sim.clear_fault();
    let retry = call(&w, "net", "/v2/network", INVITE, &idempotent("k-500")).await;
    assert_eq!(retry.status, 502);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["error"], first.json()["error"]);
    assert_eq!(w.sim.calls_total(), 1);
    assert_eq!(
        w.used("net").await,
        1,
        "charged once, for the unknown outcome"
    );
    // A failure that changed nothing frees the key: an upstream 429 with no retries left.
    w.sim
        .set_fault(Fault::new(FaultKind::RateLimited { retry_after_s: 1 }).times(3));
    let r = call(&w, "net", "/v2/network", INVITE, &idempotent("k-429")).await;
    assert_eq!(r.status, 429);
    w.sim.clear_fault();
    let r = call(&w, "net", "/v2/network", INVITE, &idempotent("k-429")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn a_key_whose_first_request_is_in_flight_is_409() {
    let w = Arc::new(
        World::start(WorldSpec {
            tenants: vec![TenantSpec::new("net", &["*"]).actions(&["invite"])],
            ..WorldSpec::default()
        })
        .await,
    );
    w.sim.set_fault(Fault::latency(1_500));
    let first = {
        let w = Arc::clone(&w);
        tokio::spawn(
            async move { call(&w, "net", "/v2/network", INVITE, &idempotent("slow")).await },
        )
    };
    // Wait (bounded) until the first request reached the upstream.
    for _ in 0..200 {
        if w.sim.calls_total() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.sim.calls_total(), 1);
    let second = call(&w, "net", "/v2/network", INVITE, &idempotent("slow")).await;
    assert_eq!(
        (second.status.as_u16(), second.code()),
        (409, "IDEMPOTENCY_KEY_IN_USE".into())
    );
    assert!(second.header("retry-after").is_some());
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(w.sim.calls_total(), 1);
}

/// Finding 5: when `server.request_timeout_ms` expired while the upstream
/// call went on, the access line said 0 and the ledger later charged.
#[tokio::test]
async fn the_logs_add_up_to_the_ledger_after_a_deadline_expiry() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"])
                .actions(&["get_viewers", "invite"])
                .budget(1000, "day"),
        ],
        server_yaml: "  request_timeout_ms: 300\n",
        fake_clock: false,
        ..WorldSpec::default()
    })
    .await;
    let id = |n: u32| format!("deadline-test-{n}");
    let mut n = 0;
    let mut send = async |body: &str, path: &str| {
        n += 1;
        call(&w, "crm", path, body, &[("x-request-id", &id(n))]).await
    };
    assert_eq!(
        send(&viewers("acc-1", 0, 30), "/v2/profiles").await.status,
        200
    );
    w.sim.set_fault(Fault::latency(800));
    let late = send(&viewers("acc-1", 30, 20), "/v2/profiles").await;
    assert_eq!(late.status, 504, "{}", late.text());
    // Red team: a bare 503 here read as "nothing happened" and a retried
    // invite went out twice; the answer says the outcome is unknown.
    let late_write = send(INVITE, "/v2/network").await;
    assert_eq!(late_write.status, 504, "{}", late_write.text());
    assert_eq!(late_write.code(), "UPSTREAM_TIMEOUT");
    assert!(
        late_write.text().contains("Idempotency-Key"),
        "{}",
        late_write.text()
    );
    w.sim.clear_fault();
    // Wait (bounded) until both late calls have settled.
    for _ in 0..300 {
        if w.reserved("crm").await == 0 && w.sim.calls_total() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let used = w.used("crm").await;
    assert_eq!(used, w.sim.credits_total());
    assert_eq!(used, 3 + 2 + 1);
    // Every credit the ledger holds is on exactly one line of this test's requests.
    let mut logged = 0;
    let mut settle_lines = 0;
    for _ in 0..300 {
        (logged, settle_lines) = (0, 0);
        for line in common::logs().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let ours = v["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("deadline-test-"));
            if ours && let Some(c) = v["credits_charged"].as_u64() {
                logged += c;
                settle_lines += u64::from(v["msg"] == "settle");
            }
        }
        if logged == used {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logged, used, "log lines sum to the ledger");
    assert_eq!(settle_lines, 2, "one settle line per late charge");
}

/// Finding 1, concurrently: 20 calls of mixed actions and prices at once on
/// the SQLite ledger never overspend a budget of 20 (was `used` 18 of 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_actions_never_overspend_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"])
                .actions(common::MIXED_ACTIONS)
                .budget(20, "day"),
        ],
        ledger_yaml: Some(format!(
            "  backend: sqlite\n  path: \"{}\"\n",
            dir.path().join("ledger.db").display()
        )),
        fake_clock: false,
        ..WorldSpec::default()
    })
    .await;
    let statuses = common::mixed_burst(&[&w], "crm", 20).await;
    assert!(
        statuses.iter().all(|s| [200, 402].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&402),
        "the burst asked for more than the budget"
    );
    let used = w.used("crm").await;
    assert!(used <= 20, "used {used} of 20");
    assert_eq!(w.reserved("crm").await, 0);
    assert_eq!(
        used,
        w.sim.credits_total(),
        "the ledger holds what was billed"
    );
}

const SOMEONE: &str = "https://www.linkedin.com/in/someone";

/// Findings 2 and 3 with the upstream really acting: an invite the upstream
/// carried out and billed, then a timeout, a reset, a cut-short or an
/// oversized body. Exactly one invitation, charged, never sent again.
#[tokio::test]
async fn an_invite_whose_reply_is_lost_is_sent_exactly_once() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("net", &["*"]).actions(&["invite"])],
        max_retries: 2,
        timeout_ms: 400,
        ..WorldSpec::default()
    })
    .await;
    let cases = [
        (FaultKind::HangAfterExecute, 504),
        (FaultKind::ResetAfterExecute, 502),
        (FaultKind::CutShort, 502),
        (FaultKind::oversized(), 502),
        (FaultKind::InternalError, 502),
    ];
    for (n, (fault, status)) in cases.into_iter().enumerate() {
        let target = format!("{SOMEONE}-{n}");
        let body = INVITE.replace(SOMEONE, &target);
        w.sim.set_fault(Fault::new(fault.clone()));
        let r = call(&w, "net", "/v2/network", &body, &[]).await;
        assert_eq!(r.status, status, "{fault:?}: {}", r.text());
        assert!(r.text().contains("outcome is unknown"), "{}", r.text());
        assert_eq!(r.json()["metadata"]["credits_consumed"], 1);
        assert_eq!(
            w.sim.calls_total(),
            n as u64 + 1,
            "{fault:?}: one upstream call"
        );
        let executed = u64::from(fault != FaultKind::InternalError);
        assert_eq!(
            w.sim.writes("invite", "acc-1", &target),
            executed,
            "{fault:?}"
        );
        assert_eq!(w.used("net").await, n as u64 + 1);
        assert!(w.sim.credits_total() <= w.used("net").await);
    }
    w.sim.shutdown();
}

/// Finding 3: a billed page whose reply is cut short or oversized was
/// retried as if free (3 billed calls, 0 charged).
#[tokio::test]
async fn a_billed_read_whose_reply_is_spoiled_is_charged_and_not_retried() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 2,
        ..WorldSpec::default()
    })
    .await;
    for (n, fault) in [FaultKind::CutShort, FaultKind::oversized()]
        .into_iter()
        .enumerate()
    {
        w.sim.set_fault(Fault::new(fault.clone()));
        let r = w
            .post(Some("crm"), &viewers("acc-1", n as u32 * 30, 30))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (502, "UPSTREAM_UNAVAILABLE".into())
        );
        assert_eq!(r.json()["metadata"]["credits_consumed"], 3, "{fault:?}");
        assert_eq!(w.sim.calls_total(), n as u64 + 1, "{fault:?}: not retried");
        assert_eq!(
            w.sim.credits_total(),
            3 * (n as u64 + 1),
            "the upstream billed it"
        );
        assert_eq!(
            w.used("crm").await,
            w.sim.credits_total(),
            "and so did the ledger"
        );
    }
}

/// Finding 4: an upstream error echoing the upstream key (whole, in lower
/// case, or minus a character) reached the tenant and the access log.
#[tokio::test]
async fn an_upstream_error_echoing_the_key_is_scrubbed_everywhere() {
    use viewgate::sim::EchoVariant;
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        max_retries: 0,
        ..WorldSpec::default()
    })
    .await;
    let key = w.upstream_key.clone();
    let fragments = [
        key.clone(),
        key.to_lowercase(),
        key.to_uppercase(),
        key[..key.len() - 1].to_string(),
        key[key.len() - 8..].to_string(),
        key[..8].to_string(),
    ];
    for (n, variant) in [
        EchoVariant::Exact,
        EchoVariant::Lower,
        EchoVariant::MinusOne,
    ]
    .into_iter()
    .enumerate()
    {
        for status in [400u16, 500] {
            w.sim
                .set_fault(Fault::new(FaultKind::EchoKey { variant, status }));
            let r = w
                .post(Some("crm"), &viewers("acc-1", n as u32 * 10, 10))
                .await;
            assert_eq!(r.status, status);
            assert_eq!(r.code(), "UPSTREAM_ERROR", "{}", r.text());
            let text = r.text().to_lowercase();
            for fragment in &fragments {
                assert!(
                    !text.contains(&fragment.to_lowercase()),
                    "{variant:?}: a fragment of the key reached the tenant: {text}"
                );
            }
        }
    }
    let logs = common::logs().to_lowercase();
    for fragment in &fragments {
        assert!(
            !logs.contains(&fragment.to_lowercase()),
            "a fragment of the key was logged"
        );
    }
    assert_eq!(w.used("crm").await, 0, "errors cost nothing");
}

/// Sends `body` to `path` over a raw connection with `headers`, then hangs
/// up once `sent` says the upstream has the call (or at once).
async fn hang_up_after(
    w: &World,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
    sent: impl Fn() -> bool,
) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        w.key("net"),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    for _ in 0..500 {
        if sent() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
}

/// Red team: a client that hung up right after sending left its
/// Idempotency-Key claimed for good (409 for a day), though nothing ran.
#[tokio::test]
async fn a_client_that_hangs_up_never_leaves_its_idempotency_key_stuck() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("net", &["*"]).actions(&["invite"])],
        ..WorldSpec::default()
    })
    .await;
    for n in 0..20 {
        let key = format!("hang-up-{n}");
        let body = INVITE.replace(SOMEONE, &format!("{SOMEONE}-{n}"));
        hang_up_after(
            &w,
            "/v2/network",
            &body,
            &[("idempotency-key", &key)],
            || true,
        )
        .await;
    }
    for n in 0..20 {
        let key = format!("hang-up-{n}");
        let target = format!("{SOMEONE}-{n}");
        let body = INVITE.replace(SOMEONE, &target);
        let mut last = None;
        for _ in 0..300 {
            let r = call(&w, "net", "/v2/network", &body, &idempotent(&key)).await;
            if r.status != 409 {
                last = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = last.expect("the key is answered within 3 s");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            w.sim.writes("invite", "acc-1", &target) <= 1,
            "never sent twice"
        );
    }
}

/// Red team: charges of calls whose client hung up mid-call were on no log
/// line at all.
#[tokio::test]
async fn a_call_whose_client_hung_up_is_still_logged_and_its_charge_settled() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("net", &["*"])
                .actions(&["get_candidates"])
                .budget(100, "day"),
        ],
        fake_clock: false,
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::latency(300));
    for n in 0..3u64 {
        let id = format!("hung-up-{n}");
        // Three different pages: identical ones would be served from the cache.
        hang_up_after(
            &w,
            "/v2/recruiter",
            &candidates(50).replace("acc-1", &format!("acc-{n}")),
            &[("x-request-id", &id)],
            || w.sim.calls_total() > n,
        )
        .await;
    }
    for _ in 0..300 {
        if w.reserved("net").await == 0 && w.used("net").await == w.sim.credits_total() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let used = w.used("net").await;
    assert_eq!(used, w.sim.credits_total());
    let mut logged = 0;
    for _ in 0..300 {
        logged = 0;
        for line in common::logs().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("hung-up-"))
            {
                logged += v["credits_charged"].as_u64().unwrap_or(0);
            }
        }
        if logged == used {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logged, used, "every credit is on a log line");
    assert!(common::logs().contains("\"status\":499"));
}

/// Finding 10: generated request ids were a counter, so a tenant could
/// count other tenants' requests between two of its own.
#[tokio::test]
async fn generated_request_ids_reveal_nothing_about_other_traffic() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]),
            TenantSpec::new("ops", &["*"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    let id = |r: &Reply| r.header("x-request-id").unwrap().to_string();
    let first = id(&w.post(Some("crm"), &viewers("acc-1", 0, 10)).await);
    for _ in 0..5 {
        w.post(Some("ops"), &viewers("acc-2", 0, 10)).await;
    }
    let second = id(&w.post(Some("crm"), &viewers("acc-1", 0, 10)).await);
    for id in [&first, &second] {
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
    // 128 random bits each: no shared prefix beyond what chance gives, and
    // no way to subtract one from the other to count the requests between.
    let shared = first
        .bytes()
        .zip(second.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(shared < 8, "{first} vs {second}");
    let differing = first
        .bytes()
        .zip(second.bytes())
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 16, "{first} vs {second}");
}
