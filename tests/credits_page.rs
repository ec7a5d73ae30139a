//! Watching spend: the burn-rate forecast through `/admin/usage` (fake
//! clock, figures computed by hand), savings by the cache and by coalescing
//! reported apart, and the credits page (`GET /admin/`) rendered by a real
//! headless Chromium against a running gateway.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;
use serde_json::Value;
use viewgate::sim::Fault;

fn spec() -> WorldSpec {
    WorldSpec {
        tenants: vec![
            TenantSpec::new("crm", &["*"]).budget(25, "day"),
            TenantSpec::new("ops", &["*"]),
        ],
        ..WorldSpec::default()
    }
}

async fn usage(w: &World) -> Value {
    let reply = w
        .admin(Method::GET, "/admin/usage", Some(&w.admin_key), "")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn row(usage: &Value, tenant: &str) -> Value {
    usage["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no row for {tenant}: {usage}"))
        .clone()
}

#[tokio::test]
async fn the_forecast_matches_a_hand_computed_case() {
    let w = World::start(spec()).await;
    // 15:00: 50 viewers of acc-1 cost 5 credits; 15:30: 50 of acc-2, 5 more.
    let first = w.post(Some("crm"), &viewers("acc-1", 0, 50)).await;
    assert_eq!(first.meta()["credits_consumed"], 5, "{}", first.text());
    w.clock.advance(Duration::from_secs(30 * 60));
    let second = w.post(Some("crm"), &viewers("acc-2", 0, 50)).await;
    assert_eq!(second.meta()["credits_consumed"], 5);
    assert_eq!(w.sim.credits_total(), 10);

    // 10 credits in the last hour, 15 of 25 left: 15 / (10 per 3600 s) =
    // 5400 s after 15:30, so 17:00, before the day's budget renews.
    let crm = row(&usage(&w).await, "crm");
    assert_eq!(
        (crm["used"].as_u64(), crm["remaining"].as_u64()),
        (Some(10), Some(15))
    );
    assert_eq!(crm["spent_last_hour"], 10);
    assert_eq!(crm["spent_last_day"], 10);
    assert_eq!(crm["forecast"], "runs_out");
    assert_eq!(crm["forecast_basis"], "last_hour");
    assert_eq!(crm["runs_out_at"], "2026-11-27T17:00:00Z");
    let hours = crm["spent_by_hour"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    assert_eq!(hours[23], 10, "both charges are within the last 60 minutes");
    let ops = row(&usage(&w).await, "ops");
    assert_eq!(ops["forecast"], "unlimited");
    assert_eq!(ops["runs_out_at"], Value::Null);

    // 17:30: nothing charged for two hours, so the day's rate: 10 credits a
    // day leaves 15 for 1.5 days, past midnight: the budget outlasts its day.
    w.clock.advance(Duration::from_secs(2 * 3600));
    let crm = row(&usage(&w).await, "crm");
    assert_eq!(crm["spent_last_hour"], 0);
    assert_eq!(crm["spent_last_day"], 10);
    assert_eq!(crm["forecast"], "outlasts_period");
    assert_eq!(crm["forecast_basis"], "last_day");
    assert_eq!(crm["runs_out_at"], Value::Null);
    assert_eq!(crm["spent_by_hour"][21], 10, "two hours back");
}

#[tokio::test]
async fn savings_by_the_cache_and_by_coalescing_are_reported_apart() {
    let w = World::start(spec()).await;
    // Slow the upstream so the identical requests arrive while the first is in flight.
    w.sim.set_fault(Fault::latency(300));
    let body = viewers("acc-1", 0, 20);
    let replies = futures_util::future::join_all((0..8).map(|_| w.post(Some("ops"), &body))).await;
    w.sim.clear_fault();
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(w.sim.calls_total(), 1);
    let coalesced = replies
        .iter()
        .filter(|r| r.meta()["cache"] == "coalesced")
        .count() as u64;
    assert!(coalesced >= 1, "no request was coalesced");
    // Two hits afterwards, each saving the page's 2 credits.
    for _ in 0..2 {
        let hit = w.post(Some("ops"), &body).await;
        assert_eq!(hit.meta()["cache"], "hit");
    }
    assert_eq!(w.sim.calls_total(), 1);
    let ops = row(&usage(&w).await, "ops");
    assert_eq!(ops["requests"], 1);
    assert_eq!(ops["cache_hits"].as_u64().unwrap(), 8 - 1 - coalesced + 2);
    assert_eq!(ops["coalesced"].as_u64(), Some(coalesced));
    assert_eq!(ops["credits_saved_coalesced"].as_u64(), Some(2 * coalesced));
    let hits = ops["cache_hits"].as_u64().unwrap();
    assert_eq!(ops["credits_saved_cache"].as_u64(), Some(2 * hits));
    assert_eq!(ops["credits_saved"], ops["credits_saved_cache"]);
    assert_eq!(
        ops["saved_coalesced_last_day"].as_u64(),
        Some(2 * coalesced)
    );
    let ratio = ops["hit_ratio"].as_f64().unwrap();
    let expected = hits as f64 / (hits + coalesced + 1) as f64;
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
}

#[tokio::test]
async fn a_browser_is_asked_for_the_admin_key() {
    let w = World::start(spec()).await;
    let none = w.admin(Method::GET, "/admin/", None, "").await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Basic realm=\"viewgate admin\", charset=\"UTF-8\"")
    );
    let wrong = basic(&w, "admin", "not-the-key").await;
    assert_eq!(wrong.status, 401);
    let tenant_key = w.key("crm").to_string();
    assert_eq!(basic(&w, "admin", &tenant_key).await.status, 401);
    let page = basic(&w, "anyone", &w.admin_key).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("<h2 id=\"tenant-0\">crm</h2>"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    // `/admin` is the same page; other methods are 405.
    let bare = w
        .admin_with(
            Method::GET,
            "/admin",
            &[("authorization", basic_header("a", &w.admin_key))],
        )
        .await;
    assert_eq!((bare.status.as_u16(), bare.text()), (200, page.text()));
    let post = w
        .admin_with(
            Method::POST,
            "/admin/",
            &[("authorization", basic_header("a", &w.admin_key))],
        )
        .await;
    assert_eq!(post.status, 405);
    // Basic auth works for the JSON API too (World checks every reply for keys).
    let json = w
        .admin_with(
            Method::GET,
            "/admin/usage",
            &[("authorization", basic_header("x", &w.admin_key))],
        )
        .await;
    assert_eq!(json.status, 200);
    // A wrong credential beside the right one is refused, not overlooked.
    let both = w
        .admin_with(
            Method::GET,
            "/admin/usage",
            &[
                ("authorization", basic_header("x", "wrong")),
                ("x-admin-key", w.admin_key.clone()),
            ],
        )
        .await;
    assert_eq!(both.status, 403);
    // Every copy of a header counts, in either order.
    for pair in [
        [w.admin_key.clone(), "wrong".to_string()],
        ["wrong".to_string(), w.admin_key.clone()],
    ] {
        let twice = w
            .admin_with(
                Method::GET,
                "/admin/usage",
                &[
                    ("x-admin-key", pair[0].clone()),
                    ("x-admin-key", pair[1].clone()),
                ],
            )
            .await;
        assert_eq!(twice.status, 403, "{pair:?}");
        let basic_twice = w
            .admin_with(
                Method::GET,
                "/admin/",
                &[
                    ("authorization", basic_header("a", &pair[0])),
                    ("authorization", basic_header("a", &pair[1])),
                ],
            )
            .await;
        assert_eq!(basic_twice.status, 401, "{pair:?}");
    }
    let bearer_too = w
        .admin_with(
            Method::GET,
            "/admin/usage",
            &[
                ("authorization", basic_header("a", &w.admin_key)),
                ("authorization", "Bearer something".to_string()),
            ],
        )
        .await;
    assert_eq!(bearer_too.status, 403);
    assert_eq!(json.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn without_an_admin_key_the_page_is_closed_not_a_password_prompt() {
    let w = World::start(spec()).await;
    // The same gateway with `admin.key_sha256` taken out.
    let mut config = (**w.live.gateway().config()).clone();
    if let Some(admin) = config.admin.as_mut() {
        admin.key_sha256 = None;
    }
    w.live.apply(config).expect("valid");
    let page = basic(&w, "admin", &w.admin_key).await;
    assert_eq!(page.status, 403);
    assert_eq!(page.header("www-authenticate"), None);
    assert_eq!(page.code(), "INVALID_API_KEY");
}

async fn basic(w: &World, user: &str, password: &str) -> common::Reply {
    w.admin_with(
        Method::GET,
        "/admin/",
        &[("authorization", basic_header(user, password))],
    )
    .await
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Chromium, from Debian's `chromium` package (`.ci/run` installs it).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "chromium is not installed: the credits page is tested in a real browser. \
         Install Debian's `chromium` package (.ci/run does)."
    );
}

/// Runs headless Chromium with `args` and `url`; its stdout. Bounded: killed
/// after two minutes of real time (a browser runs on the system clock).
#[allow(
    clippy::disallowed_methods,
    reason = "bounds a real browser process, which no fake clock drives"
)]
fn run_chromium(profile: &std::path::Path, args: &[String], url: &str) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap().unwrap()
}

/// The text of the `<dd data-figure="{figure}">` in `tenant`'s section.
fn figure(dom: &str, tenant: &str, figure: &str) -> String {
    let start = dom
        .find(&format!("data-tenant=\"{tenant}\""))
        .unwrap_or_else(|| panic!("no section for {tenant} in the DOM:\n{dom}"));
    let section = &dom[start..];
    let section = &section[..section.find("</section>").unwrap()];
    let marker = format!("data-figure=\"{figure}\">");
    let at = section
        .find(&marker)
        .unwrap_or_else(|| panic!("no {figure} for {tenant}"))
        + marker.len();
    let text = &section[at..];
    text[..text.find("</dd>").unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credits_page_renders_in_a_real_browser() {
    let chromium_path = chromium();
    let w = World::start(spec()).await;
    // crm: two misses (5 + 2 credits), one hit saving 2; ops: a miss and two hits.
    // At 15:00 ops gets crm's page from the cache; 20 minutes later the rest.
    w.post(Some("crm"), &viewers("acc-1", 0, 50)).await;
    let shared = w.post(Some("ops"), &viewers("acc-1", 0, 50)).await;
    assert_eq!(shared.meta()["cache"], "hit");
    w.clock.advance(Duration::from_secs(20 * 60));
    w.post(Some("crm"), &viewers("acc-2", 0, 20)).await;
    let hit = w.post(Some("crm"), &viewers("acc-2", 0, 20)).await;
    assert_eq!(hit.meta()["cache"], "hit");
    w.post(Some("ops"), &viewers("acc-3", 0, 30)).await;
    w.post(Some("ops"), &viewers("acc-3", 0, 30)).await;
    assert_eq!(w.sim.calls_total(), 3);
    assert_eq!(w.sim.credits_total(), 10);
    // The figures the page must show, as /admin/usage gives them.
    let usage = usage(&w).await;
    let crm = row(&usage, "crm");
    assert_eq!(
        (crm["used"].as_u64(), crm["remaining"].as_u64()),
        (Some(7), Some(18))
    );
    assert_eq!(crm["runs_out_at"], "2026-11-27T17:54:18Z");

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://admin:{}@{}/admin/", w.admin_key, w.admin.addr());
    let dom = {
        let (profile, url) = (profile.path().to_path_buf(), url.clone());
        tokio::task::spawn_blocking(move || {
            run_chromium(&profile, &["--dump-dom".to_string()], &url)
        })
        .await
        .unwrap()
    };
    assert!(dom.contains("<h1>Credits</h1>"), "not the page:\n{dom}");
    assert!(
        !dom.to_ascii_lowercase().contains("<script"),
        "a script on the page"
    );
    // crm: 7 of 25 used, 18 left, 2 saved by one hit (1 of 3 answers);
    // 7 credits in the last 20 minutes: 18 / (7 per hour) = 9258 s after 15:20.
    assert_eq!(figure(&dom, "crm", "used"), "7 credits");
    assert_eq!(figure(&dom, "crm", "left"), "18 credits");
    assert_eq!(figure(&dom, "crm", "spent-hour"), "7 credits");
    assert_eq!(figure(&dom, "crm", "saved-cache"), "2 credits (1 hit)");
    assert_eq!(figure(&dom, "crm", "hit-ratio"), "33%");
    assert_eq!(
        figure(&dom, "crm", "forecast"),
        "runs out at 2026-11-27T17:54:18Z at the last hour's rate"
    );
    // ops: unlimited; one miss of 3 credits, two hits of 3 and 5 credits.
    assert_eq!(figure(&dom, "ops", "used"), "3 credits");
    assert_eq!(figure(&dom, "ops", "left"), "unlimited");
    assert_eq!(figure(&dom, "ops", "saved-cache"), "8 credits (2 hits)");
    assert_eq!(figure(&dom, "ops", "hit-ratio"), "67%");
    assert_eq!(figure(&dom, "ops", "forecast"), "unlimited");
    // The charts speak: the budget bar's title and the hourly table.
    assert!(dom.contains("crm: 7 of 25 credits used, 0 reserved, 18 left this day"));
    assert!(dom.contains("Credits charged per hour for crm"));

    if std::env::var_os("VIEWGATE_SCREENSHOT").is_some() {
        let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/credits-page.png");
        let _ = std::fs::remove_file(&png);
        let args = vec![
            format!("--screenshot={}", png.display()),
            "--window-size=1100,820".to_string(),
        ];
        let profile = profile.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_chromium(&profile, &args, &url))
            .await
            .unwrap();
        assert!(png.is_file(), "no screenshot at {}", png.display());
    }
    let _ = chromium_path;
}
