//! Budget alerts through the real stack: thresholds fire once each per
//! period (on one gateway, and across two replicas on one Redis), and the
//! signed webhook is retried with backoff from the ledger's outbox until it
//! is delivered once, even across a `kill -9` of the real binary.

// Real deadlines for polling; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{post, signal, wait_exit, write_private};
use common::{TenantSpec, World, WorldSpec, logs, viewers};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use redis_server::RedisServer;
use serde_json::Value;
use viewgate::clock::Clock;
use viewgate::keys::KeyHash;
use viewgate::ledger::{Ledger, SqliteLedger};
use viewgate::sim::{SimConfig, SimKey, Simulator};

const HOOK_KEY: &str = "test-only-webhook-signing-key";

/// A webhook receiver on 127.0.0.1:0 that checks every signature.
struct Receiver {
    addr: SocketAddr,
    /// Answers 503 while set.
    failing: AtomicBool,
    /// POSTs whose signature verified.
    attempts: AtomicU64,
    /// POSTs whose signature did not.
    forged: AtomicU64,
    /// 2xx answers given, by alert id, and the bodies delivered.
    delivered: Mutex<HashMap<String, u64>>,
    bodies: Mutex<Vec<Value>>,
}

impl Receiver {
    async fn start(failing: bool) -> Arc<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Arc::new(Receiver {
            addr: listener.local_addr().unwrap(),
            failing: AtomicBool::new(failing),
            attempts: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            delivered: Mutex::new(HashMap::new()),
            bodies: Mutex::new(Vec::new()),
        });
        let serving = Arc::clone(&receiver);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let receiver = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let receiver = Arc::clone(&receiver);
                        async move { Ok::<_, std::convert::Infallible>(receiver.take(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/viewgate", self.addr)
    }

    async fn take(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (timestamp, signature, id) = (
            header("x-viewgate-timestamp"),
            header("x-viewgate-signature"),
            header("x-viewgate-alert-id"),
        );
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let timestamp: i64 = timestamp.and_then(|t| t.parse().ok()).unwrap_or(-1);
        let genuine = signature.is_some_and(|sig| {
            viewgate::alerts::verify(HOOK_KEY.as_bytes(), timestamp, &body, &sig)
        });
        let answer = |status: StatusCode| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        if !genuine {
            self.forged.fetch_add(1, Ordering::SeqCst);
            return answer(StatusCode::UNAUTHORIZED);
        }
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return answer(StatusCode::SERVICE_UNAVAILABLE);
        }
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["id"].as_str(),
            id.as_deref(),
            "the id header names the body's alert"
        );
        *self
            .delivered
            .lock()
            .unwrap()
            .entry(id.unwrap_or_default())
            .or_default() += 1;
        self.bodies.lock().unwrap().push(json);
        answer(StatusCode::NO_CONTENT)
    }

    fn delivered(&self) -> HashMap<String, u64> {
        self.delivered.lock().unwrap().clone()
    }

    /// The `alerts:` section pointing at this receiver, the key in a file in `dir`.
    fn yaml(&self, dir: &Path) -> String {
        let key_file = dir.join("webhook.key");
        write_private(&key_file, HOOK_KEY);
        format!(
            "alerts:\n  webhook_url: \"{}\"\n  webhook_secret_file: \"{}\"\n  webhook_timeout_ms: 2000\n",
            self.url(),
            key_file.display()
        )
    }
}

/// Waits (bounded) until `done` holds.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `budget_threshold` lines of `tenant` logged by this test binary.
fn alert_lines(tenant: &str) -> Vec<Value> {
    logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["msg"] == "budget_threshold" && v["tenant"] == tenant)
        .collect()
}

/// How many lines fired each threshold.
fn fired_per_threshold(lines: &[Value]) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for line in lines {
        *out.entry(line["threshold_pct"].as_u64().unwrap())
            .or_default() += 1;
    }
    out
}

/// `n` misses of 1 credit each for `tenant`, `at_once` at a time, spread
/// over `worlds`, on accounts named from `tag` (so none is a cache hit).
async fn spend(worlds: &[&World], tenant: &str, tag: &str, n: usize, at_once: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(at_once) {
        let calls = chunk.iter().map(|&i| {
            let w = worlds[i % worlds.len()];
            let body = viewers(&format!("acc-{tag}-{i}"), 0, 10);
            async move { w.post(Some(tenant), &body).await.status.as_u16() }
        });
        statuses.extend(futures_util::future::join_all(calls).await);
    }
    statuses
}

async fn metrics(w: &World) -> String {
    w.admin(Method::GET, "/metrics", None, "").await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_fires_once_per_period_as_spend_crosses_it() {
    let tenant = "alerts-once";
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new(tenant, &["*"]).budget(20, "day")],
        ..WorldSpec::default()
    })
    .await;
    // 24 misses of 1 credit, 4 at a time: the budget covers 20 of them.
    let statuses = spend(&[&w], tenant, "p1", 24, 4).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 402).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(w.sim.credits_total(), 20);
    assert_eq!(w.used(tenant).await, 20);

    let lines = alert_lines(tenant);
    assert_eq!(
        fired_per_threshold(&lines),
        HashMap::from([(50, 1), (80, 1), (95, 1), (100, 1)]),
        "{lines:#?}"
    );
    for line in &lines {
        let pct = line["threshold_pct"].as_u64().unwrap();
        let used = line["used"].as_u64().unwrap();
        assert!(used * 100 >= pct * 20 && used <= 20, "{line}");
        assert_eq!(line["budget"], 20);
        assert_eq!(line["period"], "day");
        assert_eq!(line["period_key"], "2026-11-27");
        assert_eq!(line["event"], "budget_threshold");
        assert_eq!(line["level"], "warn", "{line}");
    }
    let shown = metrics(&w).await;
    for pct in [50, 80, 95, 100] {
        let series =
            format!("viewgate_budget_alerts_total{{tenant=\"{tenant}\",threshold=\"{pct}\"}} 1");
        assert!(shown.contains(&series), "{series} not in:\n{shown}");
    }

    // The next day is a new period: its thresholds fire again, once.
    w.clock.advance(Duration::from_secs(24 * 3600));
    let statuses = spend(&[&w], tenant, "p2", 12, 4).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(w.sim.credits_total(), 32);
    let lines = alert_lines(tenant);
    assert_eq!(
        fired_per_threshold(&lines),
        HashMap::from([(50, 2), (80, 1), (95, 1), (100, 1)]),
        "{lines:#?}"
    );
    let new = lines.last().unwrap();
    assert_eq!(
        (new["threshold_pct"].as_u64(), new["period_key"].as_str()),
        (Some(50), Some("2026-11-28"))
    );
    let series = format!("viewgate_budget_alerts_total{{tenant=\"{tenant}\",threshold=\"50\"}} 2");
    assert!(metrics(&w).await.contains(&series));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_raised_mid_period_fires_the_thresholds_of_the_new_figure() {
    let tenant = "alerts-raised";
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new(tenant, &["*"]).budget(20, "day")],
        fake_clock: true,
        ..WorldSpec::default()
    })
    .await;
    let statuses = spend(&[&w], tenant, "a", 20, 4).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(alert_lines(tenant).len(), 4);

    // Raised to 40 by a reload: 20 used is 50 % of it, fired without a charge.
    let mut config = (**w.live.gateway().config()).clone();
    let raised = config.tenants.iter_mut().find(|t| t.id == tenant).unwrap();
    raised.budget = Some(viewgate::config::Budget {
        credits: 40,
        period: viewgate::config::Period::Day,
    });
    w.live.apply(config).unwrap();
    wait_for("50 % of the new budget", || alert_lines(tenant).len() == 5).await;
    let statuses = spend(&[&w], tenant, "b", 12, 4).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(w.sim.credits_total(), 32);
    let lines = alert_lines(tenant);
    assert_eq!(
        fired_per_threshold(&lines),
        HashMap::from([(50, 2), (80, 2), (95, 1), (100, 1)]),
        "{lines:#?}"
    );
    let new: Vec<&str> = lines[4..]
        .iter()
        .map(|l| l["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        new,
        [
            format!("{tenant}:2026-11-27:40:50"),
            format!("{tenant}:2026-11-27:40:80")
        ]
    );
    assert!(lines[4..].iter().all(|l| l["budget"] == 40), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_left_spend_fires_its_thresholds_at_restart_and_later_spend_each_round() {
    let (orphans, later) = ("alerts-orphans", "alerts-later");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = Clock::fake(common::T0.parse().unwrap());
    let budget = Some(viewgate::config::Budget {
        credits: 100,
        period: viewgate::config::Period::Day,
    });
    // A previous run: 57 charged (50 % fired), 43 still held when it died.
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let t: Arc<str> = Arc::from(orphans);
    let held = ledger.reserve(&t, budget, 57, "r1").await.unwrap();
    ledger.settle(held, 57, budget).await.unwrap();
    let fifty = viewgate::ledger::Alert {
        id: viewgate::ledger::Alert::id_of(orphans, "2026-11-27", 100, 50),
        tenant: orphans.into(),
        threshold_pct: 50,
        used: 57,
        budget: 100,
        period: "day".into(),
        period_key: "2026-11-27".into(),
        fired_at: common::T0.into(),
    };
    assert!(ledger.alert_fire(&fifty, false).await.unwrap());
    ledger.reserve(&t, budget, 43, "r2").await.unwrap();
    ledger.crash();

    // The restart counts the 43 as spent (used 100: every request would get
    // 402, so no settle could cross a threshold): the start's check fires them.
    let w = World::start(WorldSpec {
        // `later` first: once `orphans` fired, the start's round is past it.
        tenants: vec![
            TenantSpec::new(later, &["*"]).budget(10, "day"),
            TenantSpec::new(orphans, &["*"]).budget(100, "day"),
        ],
        fake_clock: true,
        ledger_yaml: Some(format!(
            "  backend: sqlite\n  path: \"{}\"\n",
            path.display()
        )),
        ..WorldSpec::default()
    })
    .await;
    assert_eq!(w.used(orphans).await, 100);
    wait_for("the thresholds the orphans crossed", || {
        alert_lines(orphans).len() >= 3
    })
    .await;
    let lines = alert_lines(orphans);
    assert_eq!(
        fired_per_threshold(&lines),
        HashMap::from([(80, 1), (95, 1), (100, 1)]),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["used"] == 100), "{lines:#?}");
    assert_eq!(w.sim.credits_total(), 0, "no request was made");

    // Spend no settle here reported (as another replica's would be): fired
    // on the next round, 30 s later on the gateway's clock.
    let t: Arc<str> = Arc::from(later);
    let b = Some(viewgate::config::Budget {
        credits: 10,
        period: viewgate::config::Period::Day,
    });
    let held = w.gateway.ledger().reserve(&t, b, 9, "r3").await.unwrap();
    w.gateway.ledger().settle(held, 9, b).await.unwrap();
    assert!(alert_lines(later).is_empty(), "not before the next round");
    w.clock.advance(Duration::from_secs(30));
    wait_for("the next round", || alert_lines(later).len() >= 2).await;
    assert_eq!(
        fired_per_threshold(&alert_lines(later)),
        HashMap::from([(50, 1), (80, 1)]),
    );
    assert_eq!(
        fired_per_threshold(&alert_lines(orphans)).len(),
        3,
        "each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_fire_and_deliver_each_threshold_once() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let tenant = "alerts-replicas";
    let receiver = Receiver::start(false).await;
    let hooks = tempfile::tempdir().unwrap();
    let ledger = format!("  backend: redis\n  redis_url: \"{}\"\n", redis.url());
    let spec = || WorldSpec {
        tenants: vec![TenantSpec::new(tenant, &["*"]).budget(20, "total")],
        ledger_yaml: Some(ledger.clone()),
        extra_yaml: receiver.yaml(hooks.path()),
        ..WorldSpec::default()
    };
    let a = World::start(spec()).await;
    let b = World::start(WorldSpec {
        base_url: Some(a.sim.base_url()),
        upstream_key: Some(a.upstream_key.clone()),
        tenant_keys: Some(a.keys.clone()),
        ..spec()
    })
    .await;
    // 24 misses alternating between the replicas, 6 at a time.
    let statuses = spend(&[&a, &b], tenant, "r", 24, 6).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(a.sim.credits_total(), 20, "one budget for both replicas");

    let lines = alert_lines(tenant);
    assert_eq!(
        fired_per_threshold(&lines),
        HashMap::from([(50, 1), (80, 1), (95, 1), (100, 1)]),
        "{lines:#?}"
    );
    wait_for("four deliveries", || receiver.delivered().len() == 4).await;
    // Both replicas poll the one outbox; once it is empty nothing more can be sent.
    for w in [&a, &b] {
        let far = w.clock.wall().as_millisecond() + 10 * 24 * 3600 * 1000;
        let left = w
            .gateway
            .ledger()
            .outbox_take(far, Duration::from_secs(1), 100);
        assert_eq!(left.await.unwrap(), Vec::new());
    }
    let delivered = receiver.delivered();
    assert!(delivered.values().all(|&n| n == 1), "{delivered:?}");
    for pct in [50, 80, 95, 100] {
        assert!(
            delivered.contains_key(&format!("{tenant}:total:20:{pct}")),
            "{delivered:?}"
        );
    }
    assert_eq!(receiver.forged.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_with_backoff_until_delivered_once() {
    let tenant = "alerts-retry";
    let receiver = Receiver::start(true).await;
    let hooks = tempfile::tempdir().unwrap();
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new(tenant, &["*"]).budget(10, "day")],
        extra_yaml: receiver.yaml(hooks.path()),
        ..WorldSpec::default()
    })
    .await;
    let statuses = spend(&[&w], tenant, "w", 5, 5).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(w.sim.credits_total(), 5);
    let id = format!("{tenant}:2026-11-27:10:50");
    let retrying = |n: usize| {
        let id = id.clone();
        move || {
            logs()
                .lines()
                .filter(|l| l.contains("retrying") && l.contains(&format!("\"alert_id\":\"{id}\"")))
                .count()
                >= n
        }
    };

    wait_for("the first attempt to fail", retrying(1)).await;
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 1);
    // The next attempt waits 1 s on the gateway's clock.
    w.clock.advance(Duration::from_secs(1));
    wait_for("the second attempt to fail", retrying(2)).await;
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 2);

    receiver.failing.store(false, Ordering::SeqCst);
    // Then 2 s.
    w.clock.advance(Duration::from_secs(2));
    wait_for("the delivery", || !receiver.delivered().is_empty()).await;
    assert_eq!(receiver.delivered(), HashMap::from([(id.clone(), 1)]));
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(receiver.forged.load(Ordering::SeqCst), 0);
    let body = receiver.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body,
        serde_json::json!({
            "id": id, "tenant": tenant, "threshold_pct": 50, "used": 5, "budget": 10,
            "period": "day", "period_key": "2026-11-27", "fired_at": "2026-11-27T15:00:00Z"
        })
    );
    // Delivered: gone from the outbox, so never sent again. The sender
    // removes it once the receiver's answer is in, a moment after the
    // receiver counted it: wait for that (a loaded machine stretches it).
    let far = w.clock.wall().as_millisecond() + 10 * 24 * 3600 * 1000;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = w
            .gateway
            .ledger()
            .outbox_take(far, Duration::from_secs(1), 100)
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still in the outbox: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        receiver.attempts.load(Ordering::SeqCst),
        3,
        "sent once more"
    );
    assert!(
        !logs().contains(HOOK_KEY),
        "the webhook key is never logged"
    );
}

const TENANT_KEY: &str = "vg_alerts-test-tenant";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_owed_at_kill_9_is_delivered_exactly_once_after_restart() {
    let sim = Simulator::start(
        SimConfig::default().with_key(SimKey::new("primary", "alerts-upstream", ["*"])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let receiver = Receiver::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream.key");
    write_private(&key_file, "alerts-upstream");
    let ledger_file = dir.path().join("ledger.db");
    let config = dir.path().join("viewgate.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\nupstream:\n  base_url: \"{}\"\n  keys:\n    - name: primary\n      api_key_file: \"{}\"\nledger:\n  backend: sqlite\n  path: \"{}\"\ntenants:\n  - id: crm\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n    budget: {{ credits: 10, period: total }}\n{}",
            sim.base_url(),
            key_file.display(),
            ledger_file.display(),
            KeyHash::of(TENANT_KEY.as_bytes()).to_hex(),
            receiver.yaml(dir.path()),
        ),
    )
    .unwrap();
    let serve = || {
        let (child, addr, lines) = common::process::serve(&config);
        (child, format!("http://{addr}"), lines)
    };
    let spend = |url: String, from: usize, n: usize| async move {
        tokio::task::spawn_blocking(move || {
            (from..from + n)
                .map(|i| post(&url, TENANT_KEY, &viewers(&format!("acc-{i}"), 0, 10)).0)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    let id = "crm:total:10:50";
    let has = |lines: &common::process::Lines, needle: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };

    let (mut first, url, lines) = serve();
    assert_eq!(spend(url, 0, 5).await, vec![200; 5]);
    // Logs reach stdout through a writer thread: wait for the line.
    wait_for("the alert line", || {
        has(&lines, "\"msg\":\"budget_threshold\"") == 1
    })
    .await;
    // The receiver refuses; the retry is scheduled in the ledger, then the process dies.
    wait_for("a refused attempt", || has(&lines, "retrying") >= 1).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(receiver.delivered().is_empty());
    let refused = receiver.attempts.load(Ordering::SeqCst);
    assert!(refused >= 1);

    receiver.failing.store(false, Ordering::SeqCst);
    let (mut second, url, lines) = serve();
    wait_for("the delivery after restart", || {
        !receiver.delivered().is_empty()
    })
    .await;
    // One more charge after the restart crosses nothing new: no second line.
    assert_eq!(spend(url, 5, 1).await, vec![200]);
    signal(&second.0, "TERM");
    assert!(wait_exit(&mut second.0, Duration::from_secs(20)).success());
    assert_eq!(
        has(&lines, "\"msg\":\"budget_threshold\""),
        0,
        "fired once, before the crash"
    );
    assert_eq!(has(&lines, HOOK_KEY), 0, "the webhook key is never logged");
    assert_eq!(receiver.delivered(), HashMap::from([(id.to_string(), 1)]));
    assert_eq!(receiver.forged.load(Ordering::SeqCst), 0);
    assert_eq!(sim.credits_total(), 6);
    // Nothing is owed any more: no later start can send it again.
    let ledger = SqliteLedger::open(&ledger_file, Clock::real()).unwrap();
    let left = ledger.outbox_take(i64::MAX, Duration::from_secs(1), 100);
    assert_eq!(left.await.unwrap(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_one_replica_fires_and_one_at_a_time_holds_an_outbox_entry() {
    let Some(redis) = RedisServer::start_new() else {
        return;
    };
    let clock = Clock::fake(common::T0.parse().unwrap());
    let a = viewgate::ledger::RedisLedger::connect(&redis.url(), clock.clone())
        .await
        .unwrap();
    let b = viewgate::ledger::RedisLedger::connect(&redis.url(), clock.clone())
        .await
        .unwrap();
    let alert = viewgate::ledger::Alert {
        id: viewgate::ledger::Alert::id_of("crm", "2026-11", 100, 95),
        tenant: "crm".into(),
        threshold_pct: 95,
        used: 96,
        budget: 100,
        period: "month".into(),
        period_key: "2026-11".into(),
        fired_at: common::T0.into(),
    };
    // Both replicas cross 95 % at once: one fires.
    let (x, y) = tokio::join!(a.alert_fire(&alert, true), b.alert_fire(&alert, true));
    assert_eq!(u8::from(x.unwrap()) + u8::from(y.unwrap()), 1);

    let now = clock.wall().as_millisecond();
    let lease = Duration::from_secs(30);
    let (x, y) = tokio::join!(a.outbox_take(now, lease, 10), b.outbox_take(now, lease, 10));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(
        x.len() + y.len(),
        1,
        "one replica holds the entry: {x:?} {y:?}"
    );
    assert_eq!([x, y].concat()[0].alert, alert);
    // Its holder died: once the lease ends, anyone may take it again.
    drop(a);
    assert!(
        b.outbox_take(now + 29_999, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = b.outbox_take(now + 30_000, lease, 10).await.unwrap();
    assert_eq!(again[0].attempts, 2);
    b.outbox_retry(&alert.id, now + 31_000).await.unwrap();
    b.outbox_done(&alert.id).await.unwrap();
    assert!(b.outbox_take(i64::MAX, lease, 10).await.unwrap().is_empty());
    // A replica started later finds it fired.
    let c = viewgate::ledger::RedisLedger::connect(&redis.url(), clock)
        .await
        .unwrap();
    assert!(!c.alert_fire(&alert, true).await.unwrap());
}
