//! Credits survive crashes and restarts: the real binary on the SQLite ledger,
//! killed with SIGKILL in the middle of concurrent misses, restarted, and
//! compared with what the simulator billed.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{
    Running, listening, post, read_until, signal, try_post, try_request, wait_exit, write_private,
};
use viewgate::keys::KeyHash;
use viewgate::sim::{Fault, FaultKind, SimConfig, SimHandle, SimKey, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_viewgate");
const TENANT_KEY: &str = "vg_durability-test-tenant";

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn setup(sim: &SimHandle, budget: u64) -> Setup {
    setup_with(sim, budget, "")
}

/// [`setup`] with extra lines under the tenant (indented four spaces).
fn setup_with(sim: &SimHandle, budget: u64, tenant_yaml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream.key");
    write_private(&key_file, "durability-upstream");
    let config = dir.path().join("viewgate.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\nupstream:\n  base_url: \"{}\"\n  timeout_ms: 10000\n  keys:\n    - name: primary\n      api_key_file: \"{}\"\nledger:\n  backend: sqlite\n  path: \"{}\"\ntenants:\n  - id: crm\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n    budget: {{ credits: {budget}, period: total }}\n{tenant_yaml}",
            sim.base_url(),
            key_file.display(),
            dir.path().join("ledger.db").display(),
            KeyHash::of(TENANT_KEY.as_bytes()).to_hex()
        ),
    )
    .unwrap();
    Setup { dir, config }
}

fn serve(config: &Path) -> (Running, String) {
    let (child, addr, _) = common::process::serve(config);
    (child, format!("http://{addr}"))
}

/// `viewgate usage [extra] --config CONFIG`'s output; it must succeed.
fn run_usage(config: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("usage")
        .args(extra)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first tenant's row of `viewgate usage --json`.
fn usage(config: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&run_usage(config, &["--json"])).unwrap();
    v["tenants"][0].clone()
}

fn body(account: &str) -> String {
    format!(
        r#"{{"account_id":"{account}","action":"get_viewers","params":{{"count":10,"offset":0}}}}"#
    )
}

async fn sim() -> SimHandle {
    Simulator::start(
        SimConfig::default().with_key(SimKey::new("primary", "durability-upstream", ["*"])),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_preserves_remaining_credits_exactly() {
    let sim = sim().await;
    let s = setup(&sim, 10);
    let (mut gw, url) = serve(&s.config);
    for i in 0..3 {
        let (status, _) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || post(&url, TENANT_KEY, &body(&format!("acc-{i}")))
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    signal(&gw.0, "TERM");
    assert!(wait_exit(&mut gw.0, Duration::from_secs(20)).success());
    let row = usage(&s.config);
    assert_eq!(
        (row["used"].as_u64(), row["remaining"].as_u64()),
        (Some(3), Some(7))
    );
    assert_eq!(row["orphaned"], 0, "a clean stop leaves nothing open");

    let (_gw, url) = serve(&s.config);
    let (status, reply) =
        tokio::task::spawn_blocking(move || post(&url, TENANT_KEY, &body("acc-9")))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert_eq!(reply["metadata"]["credits_remaining"], 6, "{reply}");
    assert_eq!(sim.credits_total(), 4);
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_traffic_never_under_counts_what_the_upstream_billed() {
    let sim = sim().await;
    let s = setup(&sim, 1000);
    let (mut gw, url) = serve(&s.config);
    // First, misses that complete: settled before the crash.
    let first = 10;
    for i in 0..first {
        let url = url.clone();
        let (status, _) = tokio::task::spawn_blocking(move || {
            post(&url, TENANT_KEY, &body(&format!("done-{i}")))
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    // Then slow answers keep many misses in flight when the gateway dies; the
    // simulator, like the real upstream, bills them anyway.
    sim.set_fault(Fault::latency(400));
    let requests = 30;
    let mut clients = Vec::new();
    for i in 0..requests {
        let url = url.clone();
        clients.push(std::thread::spawn(move || {
            try_post(&url, TENANT_KEY, &body(&format!("acc-{i}")))
        }));
    }
    // Kill once some calls reached the upstream, while the rest are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.calls_total() < first + 20 {
        assert!(
            Instant::now() < deadline,
            "traffic never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&gw.0, "KILL");
    wait_exit(&mut gw.0, Duration::from_secs(10));
    let answered = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap())
        .filter(|(status, _)| *status == 200)
        .count() as u64;
    // The simulator finishes (and bills) the calls it had started: wait until
    // every call it received has been billed, bounded in time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.credits_total() < sim.calls_total() {
        assert!(
            Instant::now() < deadline,
            "the simulator never finished its calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let billed = sim.credits_total();

    // Read-only, before any restart: open reservations show as reserved.
    let before = usage(&s.config);
    let settled = before["used"].as_u64().unwrap();
    let open = before["reserved"].as_u64().unwrap();
    assert!(
        settled >= first + answered,
        "every answered miss was settled before it was answered"
    );
    assert!(open > 0, "the crash left reservations open");
    assert!(
        settled + open >= billed,
        "settled {settled} + open {open} < billed {billed}"
    );

    // A restart counts every open reservation as spent.
    let (_gw, _url) = serve(&s.config);
    let after = usage(&s.config);
    let used = after["used"].as_u64().unwrap();
    let orphaned = after["orphaned"].as_u64().unwrap();
    assert_eq!(after["reserved"], 0);
    assert_eq!(orphaned, open, "open reservations became orphaned spend");
    assert!(
        used >= billed,
        "the ledger under-counts: used {used} < billed {billed}"
    );
    assert!(
        billed > first,
        "the upstream billed calls the gateway never settled"
    );
    assert!(
        used - billed <= requests,
        "over-count {} is more than the requests in flight",
        used - billed
    );
    eprintln!(
        "answered {answered}, billed {billed}, settled {settled}, open {open}, used {used}, orphaned {orphaned}"
    );
    assert_eq!(after["remaining"].as_u64().unwrap(), 1000 - used);
    sim.clear_fault();
}

#[test]
fn a_corrupted_or_unwritable_ledger_is_a_clear_start_up_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime.block_on(sim());
    let s = setup(&sim, 10);
    let ledger = s.dir.path().join("ledger.db");
    std::fs::write(
        &ledger,
        b"this is not a sqlite database, it is garbage ".repeat(200),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ledger.db"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A ledger path that cannot be created.
    std::fs::remove_file(&ledger).unwrap();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(ledger.to_str().unwrap(), "/dev/null/ledger.db");
    std::fs::write(&s.config, text).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/null/ledger.db"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn usage_reads_no_secret_and_never_prints_a_redis_url() {
    let sim = sim().await;
    let s = setup(&sim, 50);
    // A ledger file to read.
    drop(
        viewgate::ledger::SqliteLedger::open(
            &s.dir.path().join("ledger.db"),
            viewgate::clock::Clock::real(),
        )
        .unwrap(),
    );
    // An alerts webhook whose key is in no environment: `usage` needs no
    // secret, so it must not ask for this one either.
    let yaml = std::fs::read_to_string(&s.config).unwrap();
    let with_webhook = format!(
        "{yaml}alerts:\n  webhook_url: \"http://127.0.0.1:9/hook\"\n  webhook_secret_env: VIEWGATE_TEST_UNSET_WEBHOOK_KEY\n"
    );
    std::fs::write(&s.config, &with_webhook).unwrap();
    let row = usage(&s.config);
    assert_eq!(
        (row["tenant"].as_str(), row["used"].as_u64()),
        (Some("crm"), Some(0))
    );

    // On Redis, `usage` says to ask the gateway, without the URL's password.
    let redis = with_webhook.replace(
        "  backend: sqlite\n",
        "  backend: redis\n  redis_url: \"redis://:a-redis-password-here@127.0.0.1:6399\"\n#",
    );
    std::fs::write(&s.config, redis).unwrap();
    let out = Command::new(BIN)
        .args(["usage", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("on Redis") && said.contains("/admin/usage"),
        "{said}"
    );
    assert!(!said.contains("a-redis-password-here"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_works_while_serve_runs_and_prints_a_table() {
    let sim = sim().await;
    let s = setup(&sim, 50);
    let (_gw, url) = serve(&s.config);
    let (status, _) = tokio::task::spawn_blocking(move || {
        post(&url, TENANT_KEY, &body("acc-1"));
        post(&url, TENANT_KEY, &body("acc-1"))
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    // A settle is written with the next reservation or within 50 ms: until
    // then the file shows the credit as reserved. Poll, bounded.
    let mut table = run_usage(&s.config, &[]);
    for _ in 0..100 {
        if table
            .lines()
            .nth(1)
            .is_some_and(|row| row.split_whitespace().nth(5) == Some("0"))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        table = run_usage(&s.config, &[]);
    }
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "tenant",
            "period",
            "period_key",
            "budget",
            "used",
            "reserved",
            "remaining",
            "requests",
            "cache_hits",
            "credits_saved",
            "orphaned",
            "coalesced",
            "saved_coalesced",
            "hit_ratio",
            "spent_1h",
            "spent_24h",
            "runs_out"
        ]
    );
    let crm: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &crm[..8],
        ["crm", "total", "total", "50", "1", "0", "49", "1"],
        "{table}"
    );
    // The charge is in the spend history, written with the settle.
    assert_eq!(&crm[14..16], ["1", "1"], "spent_1h and spent_24h: {table}");
    assert!(
        crm[16].ends_with('Z'),
        "a forecast at 1 credit an hour: {table}"
    );
}

/// `GET path` on `addr`: the status code.
fn get_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `setup`, with the ledger in its own directory and an admin listener.
fn setup_in_subdirectory(sim: &SimHandle) -> (Setup, PathBuf) {
    let s = setup(sim, 100);
    let old = s.dir.path().join("ledger.db");
    let new = s.dir.path().join("data").join("ledger.db");
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(old.to_str().unwrap(), new.to_str().unwrap())
        + "admin:\n  listen: \"127.0.0.1:0\"\n";
    std::fs::write(&s.config, text).unwrap();
    (s, new)
}

#[test]
fn a_second_serve_on_the_same_file_exits_1_naming_it_even_without_lock_files() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime.block_on(sim());
    let s = setup(&sim, 10);
    let ledger = s.dir.path().join("ledger.db");
    // A stray lock file such as earlier versions kept beside the ledger.
    let stray = s.dir.path().join("ledger.db-lock");
    std::fs::write(&stray, b"").unwrap();
    let (_first, url) = serve(&s.config);
    // Every side file that can go without harming the running server: the
    // lock file. (SQLite's -wal and -shm are its live state: deleting them
    // would corrupt the first server, so they are no lock to rely on either.)
    std::fs::remove_file(&stray).unwrap();
    let twin = Command::new(BIN)
        .args(["serve", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(twin.status.code(), Some(1));
    let err = String::from_utf8_lossy(&twin.stderr);
    assert!(err.contains(ledger.to_str().unwrap()), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The first goes on serving, and reports still read the file.
    let (status, _) = post(&url, TENANT_KEY, &body("acc-1"));
    assert_eq!(status, 200);
    // Held or settled, depending on whether its settle was written yet.
    let row = usage(&s.config);
    let charged = row["used"].as_u64().unwrap() + row["reserved"].as_u64().unwrap();
    assert_eq!(charged, 1, "{row}");
}

#[test]
fn a_vanished_ledger_turns_misses_and_readiness_503_and_is_logged_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime.block_on(sim());
    let (s, ledger) = setup_in_subdirectory(&sim);
    let mut gw = Running(
        Command::new(BIN)
            .args(["serve", "--config", s.config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ((addr, admin), lines) = read_until(&mut gw.0, listening);
    let (url, admin) = (format!("http://{addr}"), admin.expect("an admin listener"));
    assert_eq!(post(&url, TENANT_KEY, &body("acc-1")).0, 200);
    assert_eq!(get_status(&admin, "/readyz"), 200);

    std::fs::remove_dir_all(ledger.parent().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_status(&admin, "/readyz") != 503 {
        assert!(Instant::now() < deadline, "/readyz still 200 after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 2..6 {
        let (status, reply) = post(&url, TENANT_KEY, &body(&format!("acc-{i}")));
        assert_eq!(status, 503, "{reply}");
        assert_eq!(reply["error"]["code"], "SERVICE_UNAVAILABLE", "{reply}");
        assert_eq!(get_status(&admin, "/readyz"), 503);
    }
    // A cached page is still served.
    assert_eq!(post(&url, TENANT_KEY, &body("acc-1")).0, 200);

    // Every request above has its access line; the loss has one error line.
    let count = |needle: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while count("\"SERVICE_UNAVAILABLE\"") < 4 {
        assert!(Instant::now() < deadline, "access lines missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count("the ledger file is gone"), 1);
    let error_line = lines
        .lock()
        .unwrap()
        .iter()
        .find(|line| line.contains("the ledger file is gone"))
        .cloned()
        .unwrap();
    assert!(error_line.contains("\"level\":\"error\""), "{error_line}");
    assert!(
        error_line.contains(ledger.to_str().unwrap()),
        "{error_line}"
    );
    assert_eq!(sim.credits_total(), 1, "no upstream call without a ledger");
}

fn invite(target: &str) -> String {
    format!(r#"{{"account_id":"acc-1","action":"invite","params":{{"profile_url":"{target}"}}}}"#)
}

/// An `Idempotency-Key` POST of an invite, off the async runtime.
async fn invite_once(
    url: &str,
    key: &'static str,
    target: &str,
) -> Option<common::process::RawReply> {
    let (url, body) = (url.to_string(), invite(target));
    tokio::task::spawn_blocking(move || {
        try_request(
            &url,
            "/v2/network",
            &[("x-api-key", TENANT_KEY), ("idempotency-key", key)],
            &body,
        )
    })
    .await
    .unwrap()
}

/// An answered Idempotency-Key replays after `kill -9`; a write cut off by
/// `kill -9` while the upstream was carrying it out is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_survive_kill_9_and_a_cut_off_write_is_never_resent() {
    let sim = sim().await;
    let s = setup_with(&sim, 100, "    actions: [\"invite\"]\n");
    let (mut gw, url) = serve(&s.config);
    let first = invite_once(&url, "order-1", "https://www.linkedin.com/in/a")
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.json);
    signal(&gw.0, "KILL");
    wait_exit(&mut gw.0, Duration::from_secs(10));

    let (mut gw, url) = serve(&s.config);
    let again = invite_once(&url, "order-1", "https://www.linkedin.com/in/a")
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    assert!(
        again.head.contains("idempotent-replayed: true"),
        "{}",
        again.head
    );
    assert_eq!(again.json, first.json, "the first answer, again");
    assert_eq!(
        sim.writes("invite", "acc-1", "https://www.linkedin.com/in/a"),
        1
    );

    // The upstream carries the next invite out, then its reply never comes;
    // the gateway is killed while it waits.
    sim.set_fault(Fault::new(FaultKind::HangAfterExecute));
    let target = "https://www.linkedin.com/in/b";
    let pending = tokio::spawn({
        let url = url.clone();
        async move { invite_once(&url, "order-2", target).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.writes("invite", "acc-1", target) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sim.writes("invite", "acc-1", target),
        1,
        "the upstream acted"
    );
    signal(&gw.0, "KILL");
    wait_exit(&mut gw.0, Duration::from_secs(10));
    assert!(
        pending.await.unwrap().is_none(),
        "the client saw the connection die"
    );
    sim.clear_fault();

    let (_gw, url) = serve(&s.config);
    let retry = invite_once(&url, "order-2", target).await.unwrap();
    assert_eq!(retry.status, 502, "{}", retry.json);
    assert_eq!(retry.json["error"]["code"], "UPSTREAM_UNAVAILABLE");
    let once_more = invite_once(&url, "order-2", target).await.unwrap();
    assert_eq!(once_more.status, 502);
    assert!(once_more.head.contains("idempotent-replayed: true"));
    assert_eq!(sim.writes("invite", "acc-1", target), 1, "never sent twice");
    assert_eq!(sim.calls_total(), 2);
    let row = usage(&s.config);
    assert_eq!(
        row["orphaned"], 1,
        "the cut-off call's reservation counts as spent"
    );
    assert_eq!(row["used"], 2);
}
