//! Test harness: the simulator and the real gateway stack, both on 127.0.0.1:0.
//!
//! Each test builds its own world: a simulator with one upstream key, a gateway
//! configured from YAML (as an operator would write it) and tenants with fresh
//! random keys. Logs go to a shared in-memory buffer so tests can search them.

#![allow(dead_code)]
// Tests poll for conditions against real deadlines; the gateway's own
// time comes from the Clock they inject.
#![allow(clippy::disallowed_methods)]

pub mod process;
pub mod raw;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use viewgate::app::Gateway;
use viewgate::clock::Clock;
use viewgate::config::Config;
use viewgate::keys::{KeyHash, mint_tenant_key};
use viewgate::ledger::Ledger;
use viewgate::listener::{self, RunningServer};
use viewgate::live::Live;
use viewgate::sim::{SimConfig, SimHandle, SimKey, Simulator};

/// A fixed start for fake clocks: a Friday afternoon, UTC.
pub const T0: &str = "2026-11-27T15:00:00Z";

/// One tenant of a test world.
#[derive(Clone)]
pub struct TenantSpec {
    pub id: &'static str,
    pub accounts: Vec<&'static str>,
    pub actions: Vec<&'static str>,
    /// YAML flow mapping, e.g. `{ per_second: 1, burst: 2 }`.
    pub rate_limit: Option<&'static str>,
    pub budget: Option<(u64, &'static str)>,
    pub allow_refresh: bool,
    pub connect_accounts: bool,
    /// `tenants[].max_in_flight` (default: half of `server.max_in_flight`).
    pub max_in_flight: Option<u32>,
    /// Extra YAML lines for this tenant (indented four spaces).
    pub extra_yaml: &'static str,
}

impl TenantSpec {
    pub fn new(id: &'static str, accounts: &[&'static str]) -> Self {
        Self {
            id,
            accounts: accounts.to_vec(),
            actions: vec!["get_viewers"],
            rate_limit: None,
            budget: None,
            allow_refresh: false,
            connect_accounts: false,
            max_in_flight: None,
            extra_yaml: "",
        }
    }
    pub fn budget(mut self, credits: u64, period: &'static str) -> Self {
        self.budget = Some((credits, period));
        self
    }
    pub fn rate(mut self, yaml: &'static str) -> Self {
        self.rate_limit = Some(yaml);
        self
    }
    pub fn actions(mut self, actions: &[&'static str]) -> Self {
        self.actions = actions.to_vec();
        self
    }
    pub fn allow_refresh(mut self) -> Self {
        self.allow_refresh = true;
        self
    }
    pub fn connect_accounts(mut self) -> Self {
        self.connect_accounts = true;
        self
    }
    /// Adds YAML lines to the tenant (each indented four spaces, ending in a newline).
    pub fn yaml(mut self, lines: &'static str) -> Self {
        self.extra_yaml = lines;
        self
    }
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = Some(n);
        self
    }
}

/// How to build a world.
pub struct WorldSpec {
    pub tenants: Vec<TenantSpec>,
    pub sim: SimConfig,
    /// Accounts the gateway's upstream key owns (in the simulator too).
    pub upstream_accounts: Vec<&'static str>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub ttl_s: u64,
    pub stale_if_error_s: u64,
    pub max_body_bytes: u64,
    /// Use a fake clock starting at [`T0`].
    pub fake_clock: bool,
    /// Replace the ledger (e.g. with a failing one).
    pub ledger: Option<Arc<dyn Ledger>>,
    /// Point the gateway somewhere other than the simulator.
    pub base_url: Option<String>,
    /// The `ledger:` section's lines (indented two spaces; default memory).
    pub ledger_yaml: Option<String>,
    /// Tenant keys to use instead of fresh ones (replicas share tenants).
    pub tenant_keys: Option<HashMap<&'static str, String>>,
    /// The upstream key (default: a random one).
    pub upstream_key: Option<String>,
    /// Extra YAML lines under `upstream:` (indented two spaces).
    pub upstream_yaml: &'static str,
    /// Extra YAML lines under the upstream key (indented six spaces).
    pub key_yaml: &'static str,
    /// Extra YAML lines under `server:` (indented two spaces).
    pub server_yaml: &'static str,
    /// Extra YAML lines under `cache:` (indented two spaces).
    pub cache_yaml: &'static str,
    /// Top-level YAML sections appended after `tenants:` (e.g. `alerts:`).
    pub extra_yaml: String,
}

impl Default for WorldSpec {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            sim: SimConfig::default(),
            upstream_accounts: vec!["*"],
            timeout_ms: 5_000,
            max_retries: 2,
            ttl_s: 300,
            stale_if_error_s: 3600,
            max_body_bytes: 65536,
            fake_clock: true,
            ledger: None,
            base_url: None,
            upstream_key: None,
            ledger_yaml: None,
            tenant_keys: None,
            upstream_yaml: "",
            key_yaml: "",
            cache_yaml: "",
            server_yaml: "",
            extra_yaml: String::new(),
        }
    }
}

/// A running simulator + gateway.
pub struct World {
    pub sim: SimHandle,
    /// The gateway as first built (its ledger, cache and clock outlive reloads).
    pub gateway: Gateway,
    /// The configuration in force, reloadable.
    pub live: Arc<Live>,
    /// Holds the config and key files.
    pub dir: tempfile::TempDir,
    /// The configuration file (`live.reload()` reads it).
    pub config_file: std::path::PathBuf,
    /// The YAML the world was started with.
    pub yaml: String,
    pub server: RunningServer,
    pub clock: Clock,
    pub keys: HashMap<&'static str, String>,
    pub upstream_key: String,
    pub admin: RunningServer,
    pub admin_key: String,
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn meta(&self) -> Value {
        self.json()["metadata"].clone()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The standard get_viewers body.
pub fn viewers(account: &str, offset: u32, count: u32) -> String {
    format!(
        r#"{{"account_id":"{account}","action":"get_viewers","params":{{"count":{count},"offset":{offset}}}}}"#
    )
}

impl World {
    pub async fn start(spec: WorldSpec) -> World {
        install_log_capture();
        let upstream_key = spec
            .upstream_key
            .clone()
            .unwrap_or_else(|| format!("test-upstream-{}", &mint_tenant_key().unwrap()[3..15]));
        let mut sim_config = spec.sim.clone();
        sim_config.keys.push(SimKey::new(
            "primary",
            upstream_key.clone(),
            spec.upstream_accounts.iter().copied(),
        ));
        let sim = Simulator::start(sim_config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("simulator starts");

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("upstream.key");
        std::fs::write(&key_file, &upstream_key).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut keys = HashMap::new();
        let admin_key = mint_tenant_key().unwrap();
        let mut yaml = format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  max_body_bytes: {}\n{}admin:\n  listen: \"127.0.0.1:0\"\n  key_sha256: \"{}\"\nupstream:\n  base_url: \"{}\"\n  timeout_ms: {}\n  max_retries: {}\n{}  keys:\n    - name: primary\n      api_key_file: \"{}\"\n      accounts: [\"*\"]\n{}cache:\n  ttl_s: {}\n  stale_if_error_s: {}\n{}ledger:\n{}tenants:\n",
            spec.max_body_bytes,
            spec.server_yaml,
            KeyHash::of(admin_key.as_bytes()).to_hex(),
            spec.base_url.clone().unwrap_or_else(|| sim.base_url()),
            spec.timeout_ms,
            spec.max_retries,
            spec.upstream_yaml,
            key_file.display(),
            spec.key_yaml,
            spec.ttl_s,
            spec.stale_if_error_s,
            spec.cache_yaml,
            spec.ledger_yaml.as_deref().unwrap_or("  backend: memory\n"),
        );
        for t in &spec.tenants {
            let key = spec
                .tenant_keys
                .as_ref()
                .and_then(|keys| keys.get(t.id).cloned())
                .unwrap_or_else(|| mint_tenant_key().unwrap());
            let accounts: Vec<String> = t.accounts.iter().map(|a| format!("\"{a}\"")).collect();
            let actions: Vec<String> = t.actions.iter().map(|a| format!("\"{a}\"")).collect();
            yaml.push_str(&format!(
                "  - id: {}\n    key_sha256: \"{}\"\n    accounts: [{}]\n    actions: [{}]\n    allow_refresh: {}\n    connect_accounts: {}\n",
                t.id,
                KeyHash::of(key.as_bytes()).to_hex(),
                accounts.join(", "),
                actions.join(", "),
                t.allow_refresh,
                t.connect_accounts
            ));
            if let Some(rl) = t.rate_limit {
                yaml.push_str(&format!("    rate_limit: {rl}\n"));
            }
            if let Some(n) = t.max_in_flight {
                yaml.push_str(&format!("    max_in_flight: {n}\n"));
            }
            if let Some((credits, period)) = t.budget {
                yaml.push_str(&format!(
                    "    budget: {{ credits: {credits}, period: {period} }}\n"
                ));
            }
            yaml.push_str(t.extra_yaml);
            keys.insert(t.id, key);
        }
        yaml.push_str(&spec.extra_yaml);
        let config_file = dir.path().join("viewgate.yaml");
        std::fs::write(&config_file, &yaml).unwrap();
        let config = Config::load(&config_file)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"));
        let clock = if spec.fake_clock {
            Clock::fake(T0.parse().unwrap())
        } else {
            Clock::real()
        };
        let mut gateway = Gateway::new(config, clock.clone())
            .await
            .expect("gateway builds");
        if let Some(ledger) = spec.ledger {
            gateway = gateway.with_ledger(ledger);
        }
        let options = listener::ServerOptions::from_config(&gateway.config().server);
        let live = Live::new(gateway.clone(), Some(config_file.clone()));
        let server = listener::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            live.service(),
            options,
        )
        .await
        .expect("gateway listens");
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = listener::spawn(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            listener::tower(
                viewgate::admin::Admin::new(Arc::clone(&live), Arc::clone(&draining)).service(),
            ),
            options,
        )
        .await
        .expect("admin listens");
        World {
            dir,
            config_file,
            yaml,
            live,
            admin,
            admin_key,
            draining,
            sim,
            gateway,
            server,
            clock,
            keys,
            upstream_key,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.addr(), path)
    }

    /// A request to the admin listener.
    pub async fn admin(&self, method: Method, path: &str, key: Option<&str>, body: &str) -> Reply {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(k) = key {
            headers.push(("x-admin-key", k.to_string()));
        }
        let url = format!("http://{}{}", self.admin.addr(), path);
        self.send(method, url, &headers, body).await
    }

    /// A request to the admin listener with these headers.
    pub async fn admin_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
    ) -> Reply {
        let url = format!("http://{}{}", self.admin.addr(), path);
        self.send(method, url, headers, "").await
    }

    pub fn key(&self, tenant: &str) -> &str {
        &self.keys[tenant]
    }

    /// `POST /v2/profiles` as `tenant` (or with no key when `None`).
    pub async fn post(&self, tenant: Option<&str>, body: &str) -> Reply {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(t) = tenant {
            headers.push(("x-api-key", self.key(t).to_string()));
        }
        self.request(Method::POST, "/v2/profiles", &headers, body)
            .await
    }

    /// Any request.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> Reply {
        self.send(method, self.url(path), headers, body).await
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, String)],
        body: &str,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("gateway answers within 30 s")
            .expect("request succeeds");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        // Every answer of every test is checked: no configured key, tenant,
        // admin or upstream, ever comes back.
        self.assert_no_key_in(&reply.body, "a response body");
        for (name, value) in &reply.headers {
            self.assert_no_key_in(value.as_bytes(), name.as_str());
        }
        reply
    }

    /// The keys this world configured (tenant, admin, upstream).
    pub fn secrets(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.keys.values().map(String::as_str).collect();
        all.push(&self.admin_key);
        all.push(&self.upstream_key);
        all
    }

    fn assert_no_key_in(&self, haystack: &[u8], what: &str) {
        for secret in self.secrets() {
            let needle = secret.as_bytes();
            assert!(
                !haystack.windows(needle.len()).any(|w| w == needle),
                "a configured key appeared in {what}"
            );
        }
    }

    /// The ledger's balance of `tenant` in its current period.
    pub async fn balance(&self, tenant: &str) -> viewgate::ledger::Balance {
        let budget = self
            .gateway
            .tenants()
            .by_id(tenant)
            .expect("a configured tenant")
            .budget;
        self.gateway.ledger().balance(tenant, budget).await.unwrap()
    }

    /// Credits the ledger says `tenant` has used this period.
    pub async fn used(&self, tenant: &str) -> u64 {
        self.balance(tenant).await.used
    }

    /// Credits held by in-flight reservations of `tenant`.
    pub async fn reserved(&self, tenant: &str) -> u64 {
        self.balance(tenant).await.reserved
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // At the end of every test, its keys must not be in any log line
        // (the log buffer is shared by the test binary, keys are per world).
        if std::thread::panicking() {
            return;
        }
        let logs = logs();
        for secret in self.secrets() {
            assert!(
                !logs.contains(secret),
                "a configured key appeared in the logs"
            );
        }
    }
}

/// Every log line written by this test binary so far.
pub fn logs() -> String {
    let buffer = LOGS.get_or_init(Default::default);
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_log_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buffer = Arc::clone(LOGS.get_or_init(Default::default));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .event_format(viewgate::logging::JsonLines)
            .with_writer(move || Capture(Arc::clone(&buffer)))
            .try_init();
    });
}

/// The `i`-th call of a burst of mixed actions: (path, body), each priced
/// differently (viewer pages of 20: 2 credits; candidates of 30: 3;
/// sent invitations of 100: 2; an invite: 1), none answered from the cache.
pub fn mixed_call(i: usize) -> (&'static str, String) {
    match i % 4 {
        0 => ("/v2/profiles", viewers("acc-1", (i * 20) as u32, 20)),
        1 => (
            "/v2/recruiter",
            format!(
                r#"{{"account_id":"acc-{i}","action":"get_candidates","params":{{"count":30}}}}"#
            ),
        ),
        2 => (
            "/v2/network",
            format!(r#"{{"account_id":"acc-{i}","action":"list_sent","params":{{"count":100}}}}"#),
        ),
        _ => (
            "/v2/network",
            format!(
                r#"{{"account_id":"acc-1","action":"invite","params":{{"profile_url":"https://www.linkedin.com/in/p{i}"}}}}"#
            ),
        ),
    }
}

/// The actions [`mixed_call`] uses.
pub const MIXED_ACTIONS: &[&str] = &["get_viewers", "get_candidates", "list_sent", "invite"];

/// Sends `n` [`mixed_call`]s at once as `tenant`, spread over `worlds`
/// (replicas), and returns their statuses.
pub async fn mixed_burst(worlds: &[&World], tenant: &str, n: usize) -> Vec<u16> {
    let calls = (0..n).map(|i| {
        let w = worlds[i % worlds.len()];
        let (path, body) = mixed_call(i);
        async move {
            let headers = [
                ("x-api-key", w.key(tenant).to_string()),
                ("content-type", "application/json".to_string()),
            ];
            w.request(Method::POST, path, &headers, &body)
                .await
                .status
                .as_u16()
        }
    });
    futures_util::future::join_all(calls).await
}

/// `promtool check metrics` accepts the exposition (skipped with a note
/// where promtool is not installed, never in CI).
pub fn promtool_accepts(body: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").is_err(),
            "promtool must be installed in CI"
        );
        eprintln!("promtool not installed: skipping the exposition-format check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
