//! An app written apart from the crate, in another language, against the
//! real gateway: `tests/app_client/client.mjs` (Node.js, its built-in
//! fetch with a pooled keep-alive connection, no packages) lists its
//! accounts, pages through one account's viewers by `next_offset`, runs a
//! search twice and sends one invite with an `Idempotency-Key`, then retries
//! it. It checks every answer itself and prints a summary; this test checks
//! the summary against what the simulator saw and what the ledger holds, so
//! neither side can agree with itself by mistake.
//!
//! Without `node` the test says SKIPPED, except under CI (`CI` set), where
//! `.ci/run` installs Debian's `nodejs` and a missing `node` is a failure.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TenantSpec, World, WorldSpec};
use serde_json::Value;
use viewgate::sim::SimConfig;

/// The whole client run, however the gateway behaves.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Viewers of the account the client pages through: five pages of ten, the
/// last one short, so paging has to stop on `has_more`, not on a short page.
const VIEWERS: u32 = 45;
const PAGE_SIZE: u32 = 10;

/// `node --version`, when a Node.js with a global `fetch` (18+) is installed.
fn node_version() -> Option<String> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_string();
    let major: u32 = version.strip_prefix('v')?.split('.').next()?.parse().ok()?;
    (out.status.success() && major >= 18).then_some(version)
}

/// What the client printed and how it ended.
struct ClientRun {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the client against `url` as the tenant with `key`, bounded by
/// [`CLIENT_TIMEOUT`].
fn run_client(url: &str, key: &str) -> ClientRun {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app_client/client.mjs");
    let child = Command::new("node")
        .arg(script)
        // The key goes by environment, never on a command line others can read.
        .env("VIEWGATE_URL", url)
        .env("VIEWGATE_KEY", key)
        .env("VIEWGATE_PAGE_SIZE", PAGE_SIZE.to_string())
        // Nothing from the caller's environment may reroute or alter the
        // client: straight to the gateway on loopback.
        .env_remove("NODE_OPTIONS")
        .env_remove("NODE_USE_ENV_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let pid = child.id();
    // wait_with_output drains both pipes while it waits, so a chatty client
    // cannot block; the channel bounds the wait.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(CLIENT_TIMEOUT) {
        Ok(output) => output.expect("node ran"),
        Err(_) => {
            // Ours to stop: the child this test started, by its id.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the Node client did not finish within {CLIENT_TIMEOUT:?}");
        }
    };
    ClientRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_app_lists_pages_searches_and_invites_through_viewgate() {
    let Some(version) = node_version() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "node (18 or later) is not installed, and CI must run this test: .ci/run installs Debian's nodejs"
        );
        eprintln!("SKIPPED: node (18 or later) is not installed (apt-get install nodejs)");
        return;
    };
    eprintln!("node {version}");
    // The upstream key has three accounts; the app's tenant is granted two,
    // may read viewers, search and invite, and has a budget, so every answer
    // carries what it has left.
    let w = World::start(WorldSpec {
        tenants: vec![
            TenantSpec::new("app", &["acc-1", "acc-2"])
                .actions(&["get_viewers", "search_people", "invite"])
                .budget(100, "day"),
        ],
        upstream_accounts: vec!["acc-1", "acc-2", "acc-3"],
        sim: SimConfig::default().with_total("acc-1", VIEWERS),
        ..Default::default()
    })
    .await;
    let (url, key) = (w.url(""), w.key("app").to_string());
    let run = {
        let (url, key) = (url.clone(), key.clone());
        tokio::task::spawn_blocking(move || run_client(&url, &key))
            .await
            .unwrap()
    };
    for (what, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(!text.contains(&key), "the client printed the key on {what}");
    }
    assert!(
        run.success,
        "the client failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let line = run.stdout.lines().last().expect("a summary line");
    eprintln!("client summary: {line}");
    let summary: Value = serde_json::from_str(line).expect("the summary is JSON");
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["retries"], 0,
        "nothing here should need a retry: {summary}"
    );

    // Accounts: the tenant's two, not the key's third.
    assert_eq!(summary["accounts"]["total"], 2, "{summary}");
    assert_eq!(
        summary["accounts"]["listed"],
        serde_json::json!(["acc-1", "acc-2"])
    );
    assert_eq!(summary["account"], "acc-1");

    // Viewers: every item once, each page fetched upstream exactly once,
    // and no page the client did not ask for.
    let offsets: Vec<u32> = summary["viewers"]["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o.as_u64().expect("an offset") as u32)
        .collect();
    assert_eq!(summary["viewers"]["items"], VIEWERS, "{summary}");
    assert_eq!(offsets.len(), VIEWERS.div_ceil(PAGE_SIZE) as usize);
    for offset in &offsets {
        assert_eq!(
            w.sim.page_calls("acc-1", *offset, PAGE_SIZE),
            1,
            "page at offset {offset}"
        );
    }
    let pages_fetched: u64 = w.sim.stats().pages.iter().map(|p| p.calls).sum();
    assert_eq!(pages_fetched, offsets.len() as u64);

    // The search: a charged miss, then a free hit.
    assert_eq!(summary["search"]["first_cache"], "miss", "{summary}");
    assert_eq!(summary["search"]["second_cache"], "hit");
    assert_eq!(summary["search"]["second_credits"], 0);

    // The invite: performed once upstream, the retry replayed.
    let profile_url = summary["invite"]["profile_url"]
        .as_str()
        .expect("the invited profile");
    assert_eq!(summary["invite"]["replayed"], true);
    assert_eq!(w.sim.writes("invite", "acc-1", profile_url), 1);
    assert_eq!(w.sim.writes_total(), 1, "{:?}", w.sim.stats().writes);

    // Upstream calls: one account listing, the pages, ONE search (the
    // second was the cache's) and ONE invite (the retry was the ledger's).
    assert_eq!(
        w.sim.calls_total(),
        1 + offsets.len() as u64 + 1 + 1,
        "{:?}",
        w.sim.stats()
    );

    // Credits: what the upstream billed (a credit per page of up to ten,
    // one for the search's ten, one for the invite) is what the ledger
    // charged and what the answers told the app, and what it has left.
    let billed = w.sim.credits_total();
    assert_eq!(billed, offsets.len() as u64 + 1 + 1);
    assert_eq!(w.used("app").await, billed);
    assert_eq!(w.reserved("app").await, 0, "no reservation left open");
    assert_eq!(summary["credits_consumed"], billed, "{summary}");
    assert_eq!(summary["credits_remaining"], 100 - billed);
}
