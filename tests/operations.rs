//! Operating viewgate: reloads under traffic, graceful shutdown, load
//! shedding, the request deadline, the connection cap, HTTP/2, log levels.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{serve, signal, try_post, wait_exit, write_private};
use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncReadExt;
use viewgate::keys::KeyHash;
use viewgate::sim::{Fault, FaultKind, SimConfig, SimKey, Simulator};

/// Appends a tenant with key `key` to the world's YAML.
fn with_tenant(yaml: &str, id: &str, key: &str, extra: &str) -> String {
    format!(
        "{yaml}  - id: {id}\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n{extra}",
        KeyHash::of(key.as_bytes()).to_hex()
    )
}

async fn post_with_key(w: &World, key: &str, body: &str) -> common::Reply {
    w.request(
        Method::POST,
        "/v2/profiles",
        &[
            ("x-api-key", key.to_string()),
            ("content-type", "application/json".into()),
        ],
        body,
    )
    .await
}

#[tokio::test]
async fn a_reload_adds_changes_and_removes_tenants_at_once() {
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).rate("{ per_minute: 2, burst: 2 }"),
            TenantSpec::new("ops", &["acc-1"]),
        ],
        ..WorldSpec::default()
    })
    .await;
    // crm spends one of its two cells before the reload.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );

    // The new file: crm unchanged, ops may now read acc-2, and a new tenant.
    let new_key = "vg_reload-test-new-tenant";
    let base = w
        .yaml
        .replace("accounts: [\"acc-1\"]", "accounts: [\"acc-1\", \"acc-2\"]");
    std::fs::write(&w.config_file, with_tenant(&base, "bi", new_key, "")).unwrap();
    w.live.reload().expect("the new file is valid");

    assert_eq!(
        post_with_key(&w, new_key, &viewers("acc-3", 0, 10))
            .await
            .status,
        200,
        "new tenant"
    );
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-2", 0, 10)).await.status,
        200,
        "changed tenant"
    );
    // crm's limiter kept its state: one cell left, not a fresh bucket of two.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        429
    );
    // Cached pages survive a reload.
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-1", 0, 10)).await.meta()["cache"],
        "hit"
    );

    // Remove ops: its key stops working at once.
    let without_ops = with_tenant(&w.yaml, "bi", new_key, "")
        .replace(&format!("  - id: ops\n    key_sha256: \"{}\"", KeyHash::of(w.key("ops").as_bytes()).to_hex()), "  - id: gone\n    key_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"");
    std::fs::write(&w.config_file, without_ops).unwrap();
    w.live.reload().unwrap();
    assert_eq!(
        w.post(Some("ops"), &viewers("acc-1", 0, 10)).await.code(),
        "INVALID_API_KEY"
    );
    assert_eq!(
        post_with_key(&w, new_key, &viewers("acc-1", 0, 10))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_reload_names_the_listener_settings_that_wait_for_a_restart() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let before = w.live.gateway().config().server.clone();
    let mut config = (**w.live.gateway().config()).clone();
    config.server.idle_timeout += Duration::from_secs(1);
    config.server.header_timeout += Duration::from_secs(1);
    config.server.max_connections += 1;
    config.server.shutdown_grace += Duration::from_secs(1);
    config.server.max_body_bytes += 1;
    let ignored = w.live.apply(config).expect("valid");
    assert_eq!(
        ignored,
        [
            "server.header_timeout_ms",
            "server.idle_timeout_ms",
            "server.max_connections",
            "server.shutdown_grace_s"
        ]
    );
    // The configuration in force says what really runs: the listener's
    // settings as they were, the body limit (read per request) as asked.
    let now = w.live.gateway().config().server.clone();
    assert_eq!(now.idle_timeout, before.idle_timeout);
    assert_eq!(now.header_timeout, before.header_timeout);
    assert_eq!(now.max_connections, before.max_connections);
    assert_eq!(now.shutdown_grace, before.shutdown_grace);
    assert_eq!(now.max_body_bytes, before.max_body_bytes + 1);
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
    assert_eq!(w.sim.calls_total(), 1);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_config_and_says_why() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    std::fs::write(
        &w.config_file,
        w.yaml.replace("tenants:\n", "tenants:\n  - id: broken\n"),
    )
    .unwrap();
    let err = w.live.reload().unwrap_err();
    assert!(
        err.contains("viewgate.yaml:"),
        "names the file and line: {err}"
    );
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200,
        "still serving"
    );
    let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
    assert!(
        metrics.contains(r#"viewgate_config_reloads_total{outcome="error"} 1"#),
        "{metrics}"
    );
    assert!(common::logs().contains("reload failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_continuous_traffic_fails_no_request() {
    let w = Arc::new(
        World::start(WorldSpec {
            tenants: vec![
                TenantSpec::new("crm", &["*"]).budget(1_000_000, "day"),
                TenantSpec::new("ops", &["*"]),
            ],
            ..WorldSpec::default()
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let (w, stop, ok, failed) = (
            Arc::clone(&w),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        clients.push(tokio::spawn(async move {
            // Bounded: at most 2,000 requests per client, and until told to
            // stop, but each client asks for all 50 pages at least once, so
            // the page count below does not depend on how far the clients
            // got before the reloads ended (on a loaded machine, not far).
            for i in 0..2_000u32 {
                if stop.load(Ordering::SeqCst) && i >= 50 {
                    break;
                }
                let tenant = if c % 2 == 0 { "crm" } else { "ops" };
                let r = w
                    .post(Some(tenant), &viewers(&format!("acc-{}", i % 50), 0, 10))
                    .await;
                if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Twenty reloads, alternating two valid files, while the clients run.
    let budget_a = w.yaml.clone();
    let budget_b = w.yaml.replace("credits: 1000000", "credits: 2000000");
    for i in 0..20 {
        std::fs::write(
            &w.config_file,
            if i % 2 == 0 { &budget_b } else { &budget_a },
        )
        .unwrap();
        w.live.reload().expect("valid");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert!(ok.load(Ordering::SeqCst) > 100, "traffic kept flowing");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed during reloads"
    );
    let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
    assert!(metrics.contains(r#"viewgate_config_reloads_total{outcome="ok"} 20"#));
    // Also pins a race fixed in the cache stage: a request that missed the
    // cache just before a leader finished used to lead a second paid fetch.
    assert_eq!(
        w.sim.calls_total(),
        50,
        "pages and single-flight survived every reload"
    );
}

#[tokio::test]
async fn past_max_in_flight_requests_are_shed_with_503() {
    let w = World::start(WorldSpec {
        // crm's share is the whole server: the server's slots run out first.
        tenants: vec![
            TenantSpec::new("crm", &["*"]).max_in_flight(2),
            TenantSpec::new("ops", &["*"]),
        ],
        server_yaml: "  max_in_flight: 2\n",
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::latency(300));
    let bodies: Vec<String> = (0..6)
        .map(|i| viewers(&format!("acc-{i}"), 0, 10))
        .collect();
    let slow = futures_util::future::join_all(bodies[..2].iter().map(|b| w.post(Some("crm"), b)));
    let shed = async {
        // Once crm holds both slots, anyone else is shed at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.live.gateway().free_slots() > 0 {
            assert!(Instant::now() < deadline, "the slow requests never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        futures_util::future::join_all(bodies[2..].iter().map(|b| w.post(Some("ops"), b))).await
    };
    let (slow, shed) = futures_util::join!(slow, shed);
    assert!(slow.iter().all(|r| r.status == 200));
    assert_eq!(shed.len(), 4);
    assert!(shed.iter().all(|r| r.status == 503), "{shed:?}");
    assert!(shed.iter().all(|r| r.code() == "SERVICE_UNAVAILABLE"));
    assert_eq!(
        w.sim.calls_total(),
        2,
        "shed requests cost the upstream nothing"
    );
    assert_eq!(w.used("crm").await, 2);
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_504_and_its_fetch_still_fills_the_cache() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        server_yaml: "  request_timeout_ms: 200\n",
        ..WorldSpec::default()
    })
    .await;
    w.sim.set_fault(Fault::latency(600));
    let slow = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    // Its upstream call was already sent: an unknown outcome, not "nothing happened".
    assert_eq!(slow.status, 504);
    assert_eq!(slow.code(), "UPSTREAM_TIMEOUT");
    assert!(
        slow.text().contains("outcome is unknown"),
        "{}",
        slow.text()
    );
    // The paid fetch carried on: once it lands, the page is a hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.used("crm").await < 1 {
        assert!(Instant::now() < deadline, "the fetch never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.sim.clear_fault();
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.meta()["cache"],
        "hit"
    );
    assert_eq!(w.sim.calls_total(), 1);
}

/// A coalesced follower whose deadline passes while the call it waits for
/// is out is told what its leader is told (504 UPSTREAM_TIMEOUT: the
/// upstream is slow), not 503 (the gateway overloaded); it is not charged.
#[tokio::test]
async fn a_follower_past_its_deadline_gets_504_like_its_leader_and_pays_nothing() {
    let w = Arc::new(
        World::start(WorldSpec {
            tenants: vec![
                TenantSpec::new("crm", &["*"]),
                TenantSpec::new("ops", &["*"]),
            ],
            server_yaml: "  request_timeout_ms: 300\n",
            ..WorldSpec::default()
        })
        .await,
    );
    w.sim.set_fault(Fault::latency(2_500));
    let leader = {
        let w = Arc::clone(&w);
        tokio::spawn(async move { w.post(Some("crm"), &viewers("acc-1", 0, 10)).await })
    };
    // Wait (bounded) until the leader's call reached the upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.sim.calls_total() < 1 {
        assert!(
            Instant::now() < deadline,
            "the leader's call never went out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let follower = w.post(Some("ops"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(
        (follower.status.as_u16(), follower.code().as_str()),
        (504, "UPSTREAM_TIMEOUT"),
        "{}",
        follower.text()
    );
    assert_eq!(follower.meta()["credits_consumed"], 0);
    assert!(
        !follower.text().contains("outcome is unknown"),
        "a follower sent nothing: {}",
        follower.text()
    );
    assert!(
        follower.text().contains("was not charged"),
        "{}",
        follower.text()
    );
    let leader = leader.await.unwrap();
    assert_eq!(
        (leader.status.as_u16(), leader.code().as_str()),
        (504, "UPSTREAM_TIMEOUT")
    );
    assert!(
        leader.text().contains("outcome is unknown"),
        "{}",
        leader.text()
    );
    // One call; once it lands, the leader's tenant paid for it, the follower's nothing.
    while w.used("crm").await < 1 {
        assert!(Instant::now() < deadline, "the fetch never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.sim.calls_total(), 1);
    assert_eq!(w.used("ops").await, 0);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        server_yaml: "  max_connections: 2\n",
        ..WorldSpec::default()
    })
    .await;
    let _a = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let _b = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let mut c = tokio::net::TcpStream::connect(w.server.addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed without an answer");
    drop((_a, _b));
}

#[tokio::test]
async fn the_tenant_port_speaks_http2_without_tls() {
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        ..WorldSpec::default()
    })
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(w.url("/v2/profiles"))
        .header("x-api-key", w.key("crm"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(viewers("acc-1", 0, 10))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["metadata"]["cache"], "miss");
}

/// A config file for the real binary in `dir`, against `sim_url`.
/// `server_extra` is more YAML under `server:` (indented two spaces).
fn binary_config(
    dir: &std::path::Path,
    sim_url: &str,
    tenants: &str,
    server_extra: &str,
) -> std::path::PathBuf {
    let key_file = dir.join("upstream.key");
    write_private(&key_file, "ops-test-upstream");
    let path = dir.join("viewgate.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\n{server_extra}upstream:\n  base_url: \"{sim_url}\"\n  keys:\n    - name: primary\n      api_key_file: \"{}\"\nledger:\n  backend: memory\ntenants:\n{tenants}",
            key_file.display()
        ),
    )
    .unwrap();
    path
}

/// A binary config with tenant `crm` (key `key`, a total budget of 100) on a
/// SQLite ledger in `dir`; `upstream_extra` goes into the upstream section.
fn sqlite_config(
    dir: &std::path::Path,
    sim_url: &str,
    key: &str,
    server_extra: &str,
    upstream_extra: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ledger = dir.join("ledger.db");
    let tenants = tenant_yaml("crm", key) + "    budget: { credits: 100, period: total }\n";
    let path = binary_config(dir, sim_url, &tenants, server_extra);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "  backend: memory\n",
            &format!("  backend: sqlite\n  path: \"{}\"\n", ledger.display()),
        )
        .replace("  keys:\n", &format!("{upstream_extra}  keys:\n"));
    std::fs::write(&path, text).unwrap();
    (path, ledger)
}

/// `crm`'s (used, reserved, orphaned, requests) as the file says, read the
/// way `viewgate usage` reads it.
fn crm_on_disk(ledger: &std::path::Path) -> (u64, u64, u64, u64) {
    let budget = viewgate::config::Budget {
        credits: 100,
        period: viewgate::config::Period::Total,
    };
    let usage = viewgate::ledger::read_usage(
        ledger,
        &[("crm".to_string(), Some(budget))],
        &viewgate::clock::Clock::real(),
    )
    .unwrap();
    let u = &usage[0];
    (u.balance.used, u.balance.reserved, u.orphaned, u.requests)
}

/// Starts the binary on `path`, makes one miss that outlives its request
/// (504), then sends SIGTERM.
async fn a_504_then_sigterm(
    path: &std::path::Path,
    key: &'static str,
) -> (common::process::Running, common::process::Lines) {
    let (child, addr, lines) = serve(path);
    let url = format!("http://{addr}");
    let (status, reply) = tokio::task::spawn_blocking(move || try_post(&url, key, &body("acc-1")))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(status, 504, "{reply}");
    signal(&child.0, "TERM");
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_paid_call_past_its_deadline_and_records_it() {
    let sim = upstream().await;
    // The call outlives its request (504 at 300 ms) by seconds: SIGTERM
    // lands while it is still running upstream.
    sim.set_fault(Fault::latency(3_000));
    let dir = tempfile::tempdir().unwrap();
    let key = "vg_ops-test-detached";
    let (path, ledger) = sqlite_config(
        dir.path(),
        &sim.base_url(),
        key,
        "  request_timeout_ms: 300\n",
        "",
    );
    let (mut child, lines) = a_504_then_sigterm(&path, key).await;
    assert_eq!(sim.calls_total(), 1);
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(30)).success(),
        "exit 0"
    );
    // The call was billed once, and the ledger recorded exactly that: settled,
    // nothing left held for the next start to count as spent.
    assert_eq!(sim.credits_total(), 1);
    assert_eq!(crm_on_disk(&ledger), (1, 0, 0, 1));
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("waiting for upstream calls that outlived their requests")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_the_wait_and_what_was_cut_off_stays_held() {
    let sim = upstream().await;
    // The upstream never answers; the grace and the upstream timeout are a
    // minute: only the second signal can end the wait within the test.
    sim.set_fault(Fault::new(FaultKind::Hang));
    let dir = tempfile::tempdir().unwrap();
    let key = "vg_ops-test-second-signal";
    let (path, ledger) = sqlite_config(
        dir.path(),
        &sim.base_url(),
        key,
        "  request_timeout_ms: 300\n  shutdown_grace_s: 60\n",
        "  timeout_ms: 60000\n  deadline_ms: 60000\n",
    );
    let (mut child, lines) = a_504_then_sigterm(&path, key).await;
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has("waiting for upstream calls that outlived their requests") {
        assert!(Instant::now() < deadline, "never waited for the call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&child.0, "TERM");
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(20)).success(),
        "exit 0"
    );
    assert!(has("second shutdown signal"));
    // The call cut off stays held: the next start counts it as spent.
    assert_eq!(sim.credits_total(), 0);
    let (used, reserved, _, _) = crm_on_disk(&ledger);
    assert_eq!((used, reserved), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_still_waiting_for_the_keys_pace_at_sigterm_is_never_sent() {
    let sim = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key = "vg_ops-test-paced";
    // One call per 10 s on the key: the second miss waits for its turn long
    // after its request's 504.
    let (path, ledger) = sqlite_config(
        dir.path(),
        &sim.base_url(),
        key,
        "  request_timeout_ms: 300\n",
        "  max_pace_wait_ms: 20000\n",
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "      api_key_file:",
        "      rate_limit: { per_minute: 6, burst: 1 }\n      api_key_file:",
    );
    std::fs::write(&path, text).unwrap();
    let (mut child, addr, _lines) = serve(&path);
    let url = format!("http://{addr}");
    let first = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || try_post(&url, key, &body("acc-1")))
            .await
            .unwrap()
            .expect("answered")
    };
    assert_eq!(first.0, 200, "{}", first.1);
    let second = tokio::task::spawn_blocking(move || try_post(&url, key, &body("acc-2")))
        .await
        .unwrap()
        .expect("answered");
    assert_eq!(second.0, 504, "{}", second.1);
    signal(&child.0, "TERM");
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(30)).success(),
        "exit 0"
    );
    // The waiting call was dropped, not sent at its turn; its reservation
    // was released.
    assert_eq!(sim.calls_total(), 1);
    assert_eq!(crm_on_disk(&ledger), (1, 0, 0, 1));
}

/// The simulator the real binary's tests call, knowing the key that
/// [`binary_config`] gives the gateway.
async fn upstream() -> viewgate::sim::SimHandle {
    Simulator::start(
        SimConfig::default().with_key(SimKey::new("primary", "ops-test-upstream", ["*"])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn tenant_yaml(id: &str, key: &str) -> String {
    format!(
        "  - id: {id}\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n",
        KeyHash::of(key.as_bytes()).to_hex()
    )
}

fn body(account: &str) -> String {
    format!(r#"{{"account_id":"{account}","action":"get_viewers"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_the_real_binary() {
    let sim = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let old_key = "vg_ops-test-first";
    let path = binary_config(
        dir.path(),
        &sim.base_url(),
        &tenant_yaml("first", old_key),
        "",
    );
    let (mut child, addr, _) = serve(&path);
    let url = format!("http://{addr}");
    let post = |key: &'static str, account: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || try_post(&url, key, &body(account)).map(|(s, _)| s))
    };
    assert_eq!(post(old_key, "acc-1").await.unwrap(), Some(200));

    // SIGHUP: a second tenant.
    let second = "vg_ops-test-second";
    let tenants = tenant_yaml("first", old_key) + &tenant_yaml("second", second);
    binary_config(dir.path(), &sim.base_url(), &tenants, "");
    signal(&child.0, "HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while post(second, "acc-2").await.unwrap() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not load the second tenant"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file change alone (no signal): a third tenant, the first removed.
    let third = "vg_ops-test-third";
    let tenants = tenant_yaml("second", second) + &tenant_yaml("third", third);
    binary_config(dir.path(), &sim.base_url(), &tenants, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while post(third, "acc-3").await.unwrap() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        post(old_key, "acc-1").await.unwrap(),
        Some(403),
        "removed tenant refused"
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "still running: SIGHUP reloads, it does not kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_one_cache_and_one_fetch_per_page() {
    let sim = upstream().await;
    // Slow enough that two askers of a page usually overlap; the counts
    // below hold whether they do (one joins the other's fetch) or not.
    sim.set_fault(Fault::latency(50));
    let dir = tempfile::tempdir().unwrap();
    let key = "vg_ops-test-threads";
    let path = binary_config(
        dir.path(),
        &sim.base_url(),
        &tenant_yaml("crm", key),
        "  workers: 3\n",
    );
    let (mut child, addr, lines) = serve(&path);
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"workers\":3")),
        "the start-up line names the serving threads"
    );
    let url = format!("http://{addr}");
    // Twelve connections (each call its own), three asks of each of four pages.
    let asks: Vec<_> = (0..12)
        .map(|i| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                try_post(&url, key, &body(&format!("acc-{}", i % 4)))
            })
        })
        .collect();
    for ask in asks {
        let (status, reply) = ask.await.unwrap().expect("answered");
        assert_eq!(status, 200, "{reply}");
    }
    assert_eq!(
        sim.calls_total(),
        4,
        "one upstream call per page, whichever thread asked"
    );
    assert_eq!(sim.credits_total(), 4);
    signal(&child.0, "TERM");
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(20)).success(),
        "exit 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let sim = upstream().await;
    sim.set_fault(Fault::latency(1_000));
    let dir = tempfile::tempdir().unwrap();
    let key = "vg_ops-test-drain";
    let path = binary_config(dir.path(), &sim.base_url(), &tenant_yaml("crm", key), "");
    // log.level keeps the start-up line but silences access lines.
    let text =
        std::fs::read_to_string(&path).unwrap() + "log:\n  level: \"info,viewgate::access=warn\"\n";
    std::fs::write(&path, text).unwrap();
    let (mut child, addr, lines) = serve(&path);
    let url = format!("http://{addr}");
    let in_flight = tokio::task::spawn_blocking(move || try_post(&url, key, &body("acc-1")));
    // SIGTERM once the call has reached the (slow) upstream.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.calls_total() == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&child.0, "TERM");
    let (status, reply) = in_flight.await.unwrap().expect("answered, not cut off");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["metadata"]["cache"], "miss");
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(20)).success(),
        "exit 0"
    );
    assert_eq!(sim.credits_total(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("viewgate stopped"))
    {
        assert!(Instant::now() < deadline, "no final log line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("draining in-flight requests"))
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"target\":\"viewgate::access\"")),
        "log.level silenced the access lines: {lines:?}"
    );
}
