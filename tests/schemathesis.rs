//! Schemathesis (PyPI) against `openapi.yaml` and the real gateway.
//!
//! Schemathesis generates requests from the spec, valid and invalid, sends
//! them to the running gateway (which calls the simulator), and checks every
//! answer: no 5xx, status, headers, content type and body as the spec says,
//! schema-violating requests refused, schema-valid ones accepted, and calls
//! without a key refused. Every tenant route is reached: `/v2/profiles`,
//! `/v2/{category}`, `/v2/accounts` and `/v2/accounts/{account_id}`,
//! `/v2/login` and `/v2/checkpoint`, and the refused `/v2/webhooks`.
//! Bounded: a fixed number of examples per operation, a fixed seed, and a
//! time limit on the whole run.
//!
//! `.ci/run` installs schemathesis into `target/tools/schemathesis`; set
//! `VIEWGATE_SCHEMATHESIS` to use another. Without one, the test says it was
//! skipped, except under CI (`CI` set), where a missing tool is a failure.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TenantSpec, World, WorldSpec};

/// Examples per operation and phase; small enough for CI, big enough to reach
/// every response the spec lists for the tenant endpoints.
const EXAMPLES: &str = "150";
const SEED: &str = "20261127";

fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VIEWGATE_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/schemathesis");
    if installed.exists() {
        return Some(installed);
    }
    let on_path = Command::new("schemathesis").arg("--version").output();
    on_path
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("schemathesis"))
}

/// The whole run's hard stop, whatever the tool does.
const TIME_LIMIT: Duration = Duration::from_secs(300);

/// One `schemathesis run` over the operations tagged with any of `tags`, at
/// `url`, with `header` sent on every request. Returns (passed, everything
/// it printed).
fn run(tool: &Path, scratch: &Path, tags: &[&str], url: &str, header: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // To a file, not a pipe: a long report must not block the tool.
    let log_path = scratch.join(format!("schemathesis-{}.log", tags.join("-")));
    let log = std::fs::File::create(&log_path).expect("a log file");
    let mut command = Command::new(tool);
    command
        .current_dir(scratch)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(root.join("openapi.yaml"))
        .args(["--url", url, "--header", header]);
    for tag in tags {
        command.args(["--include-tag", tag]);
    }
    let mut child = command
        .args([
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
        ])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--no-shrink", "--generation-database", "none"])
        .stdout(log.try_clone().expect("a log file"))
        .stderr(log)
        .spawn()
        .expect("schemathesis starts");
    // Bounded even if the tool hangs.
    let deadline = std::time::Instant::now() + TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(status) => (status.success(), text),
        None => (false, format!("stopped after {TIME_LIMIT:?}\n{text}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_openapi_yaml() {
    let Some(tool) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed: .ci/run installs it into target/tools/schemathesis"
        );
        eprintln!(
            "skipped: schemathesis not found (.ci/run installs it; or set VIEWGATE_SCHEMATHESIS)"
        );
        return;
    };
    // One tenant that may use every account and every action, and connect
    // accounts (so /v2/login, /v2/checkpoint and the account endpoints are
    // reached past the policy stage), without a rate limit or budget: a 402
    // or 429 would hide the rest of the answer space (tests/errors.rs covers
    // those answers). The upstream key names a few accounts, so the lists
    // are not empty.
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("schemathesis", &["*"])
                .actions(&["*"])
                .allow_refresh()
                .connect_accounts(),
        ],
        upstream_accounts: vec!["*", "acc-1", "acc-2", "acc-3"],
        ..Default::default()
    })
    .await;
    let scratch = tempfile::tempdir().unwrap();

    let tenant_header = format!("x-api-key: {}", w.key("schemathesis"));
    let admin_header = format!("x-admin-key: {}", w.admin_key);
    let tenant_url = format!("http://{}", w.server.addr());
    let admin_url = format!("http://{}", w.admin.addr());
    let (tool2, dir) = (tool.clone(), scratch.path().to_path_buf());
    let (tenant, admin) = tokio::task::spawn_blocking(move || {
        let tenant = run(
            &tool2,
            &dir,
            &["tenant", "operator"],
            &tenant_url,
            &tenant_header,
        );
        let admin = run(&tool2, &dir, &["admin"], &admin_url, &admin_header);
        (tenant, admin)
    })
    .await
    .unwrap();

    assert!(tenant.0, "tenant endpoints:\n{}", tenant.1);
    assert!(admin.0, "admin endpoints:\n{}", admin.1);
    // The runs did reach the upstream, and every credit it billed was
    // charged to the tenant: nothing lost, nothing invented.
    let calls = w.sim.calls_total();
    assert!(
        calls > 0,
        "schemathesis never got past the gateway:\n{}",
        tenant.1
    );
    assert_eq!(w.used("schemathesis").await, w.sim.credits_total());
    assert_eq!(
        w.reserved("schemathesis").await,
        0,
        "no reservation left open"
    );
    // Every tenant route got past the gateway's own checks at least once
    // (a run that only ever saw 400s would prove little about the rest).
    let answered = answered_routes();
    for (action, status) in [
        ("get_viewers", 200),
        ("list_accounts", 200),
        ("get_account", 200),
        ("login", 200),
        ("checkpoint", 400),
    ] {
        assert!(
            answered.contains(&(action.to_string(), status)),
            "no {action} answered {status}; answered: {answered:?}"
        );
    }
}

/// (action, status) of every access line the gateway wrote in this test.
fn answered_routes() -> std::collections::BTreeSet<(String, u16)> {
    common::logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["target"] == "viewgate::access")
        .filter_map(|v| {
            let action = v["action"].as_str()?.to_string();
            Some((action, u16::try_from(v["status"].as_u64()?).ok()?))
        })
        .collect()
}
