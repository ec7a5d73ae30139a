//! The real binary, as an operator runs it: check, keygen, hash-key, serve, demo.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use viewgate::keys::KeyHash;

mod common;

use common::process::{Running, post, read_until};

const BIN: &str = env!("CARGO_BIN_EXE_viewgate");

fn viewgate(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    c
}

#[test]
fn check_accepts_the_example_config() {
    let out = viewgate(&["check", "--config", "config/viewgate.example.yaml"])
        .env("LINKUP_API_KEY", "test-placeholder")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 tenants"));
}

#[test]
fn check_warns_of_a_price_below_the_documented_one_and_still_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cheap.yaml");
    let example = std::fs::read_to_string("config/viewgate.example.yaml").unwrap();
    std::fs::write(
        &path,
        example.replacen("actions:\n", "actions:\n  invite: { price: free }\n", 1),
    )
    .unwrap();
    let out = viewgate(&["check", "--config", path.to_str().unwrap()])
        .env("LINKUP_API_KEY", "test-placeholder")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{}: warning: actions.invite: priced below the upstream's documented price",
            path.display()
        )),
        "{err}"
    );
    // The example itself is clean.
    let out = viewgate(&["check", "--config", "config/viewgate.example.yaml"])
        .env("LINKUP_API_KEY", "test-placeholder")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn check_names_every_problem_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "upstream:\n  base_url: \"ftp://nowhere\"\n  keys:\n    - name: primary\n      api_key_env: VIEWGATE_CLI_TEST_UNSET\ntenants:\n  - id: crm\n    key_sha256: \"abc\"\n    accounts: [\"*\"]\n    budget: { credits: 10, period: year }\n",
    )
    .unwrap();
    let out = viewgate(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for needle in [
        format!("{file}:2:13: upstream.base_url"),
        format!("{file}:5:20: upstream.keys[0].api_key_env"),
        format!("{file}:8:17: tenants[0].key_sha256"),
        format!("{file}:10:36: tenants[0].budget.period"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // A file that does not exist, and one that is not YAML.
    let out = viewgate(&["check", "--config", "/nonexistent/viewgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(&path, "upstream: [\n").unwrap();
    let out = viewgate(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1:"));
}

#[test]
fn check_refuses_admin_key_or_socket_shared_with_tenants_and_unsendable_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed-up.yaml");
    let hash = "4".repeat(64);
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: \"0.0.0.0:8080\"\nadmin:\n  listen: \"127.0.0.1:8080\"\n  key_sha256: \"{hash}\"\nupstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: VIEWGATE_CLI_TEST_PASTED_KEY\ntenants:\n  - id: crm\n    key_sha256: \"{hash}\"\n    accounts: [\"*\"]\n"
        ),
    )
    .unwrap();
    let out = viewgate(&["check", "--config", path.to_str().unwrap()])
        .env("VIEWGATE_CLI_TEST_PASTED_KEY", "sk-pasted\nsk-tail")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for needle in [
        format!("{file}:4:11: admin.listen"),
        format!("{file}:5:15: admin.key_sha256: is also tenants[0].key_sha256"),
        format!("{file}:10:20: upstream.keys[0].api_key_env: the key of \"primary\""),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        !err.contains("sk-pasted") && !err.contains("sk-tail"),
        "{err}"
    );
}

#[test]
fn keygen_and_hash_key_agree() {
    let out = viewgate(&["keygen"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    let key = field("key:");
    let hash = field("key_sha256:");
    assert!(key.starts_with("vg_"));
    assert_eq!(hash, KeyHash::of(key.as_bytes()).to_hex());

    let mut child = viewgate(&["hash-key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hash);
}

#[test]
fn the_demo_answers_the_readme_curl_and_every_curl_line_it_prints() {
    let mut child = Running(
        viewgate(&["demo", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut gateway = None;
    let mut key = None;
    let mut printed = Vec::new();
    let ((), _) = read_until(&mut child.0, |line| {
        printed.push(line.to_string());
        if let Some(url) = line.trim().strip_prefix("gateway:") {
            gateway = Some(url.trim().to_string());
        }
        if let Some(rest) = line.trim().strip_prefix("tenant crm") {
            key = rest.split("key:").nth(1).map(|k| k.trim().to_string());
        }
        line.contains("viewgate listening").then_some(())
    });
    let (gateway, key) = (gateway.unwrap(), key.unwrap());
    let body = r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}"#;
    let (status, first) = post(&gateway, &key, body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["metadata"]["cache"], "miss");
    assert_eq!(first["metadata"]["credits_consumed"], 1);
    let (_, second) = post(&gateway, &key, body);
    assert_eq!(second["metadata"]["cache"], "hit");
    assert_eq!(second["metadata"]["credits_consumed"], 0);
    assert_eq!(first["data"], second["data"]);

    // Every curl line the demo printed works as printed: sent here as the
    // request it describes (URL, headers, body), each answers 200.
    let mut curls = curl_commands(&printed);
    let paths: Vec<&str> = curls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v2/profiles",
            "/v2/accounts",
            "/v2/profiles",
            "/admin/usage"
        ],
        "the demo prints a viewer page, the accounts list, a search and the usage:\n{}",
        printed.join("\n")
    );
    let usage = curls.pop().unwrap();
    for curl in &curls {
        assert!(
            curl.url.starts_with(&gateway),
            "{} is not the gateway",
            curl.url
        );
        assert!(
            curl.headers
                .iter()
                .any(|(n, v)| n == "x-api-key" && *v == key),
            "the crm key is in every line"
        );
    }
    // The viewer page line: the page above, now a hit.
    let (status, page) = curls[0].send();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["metadata"]["cache"], "hit");
    // The accounts line: crm's accounts only (the key also has acc-3), free.
    let (status, accounts) = curls[1].send();
    assert_eq!(status, 200, "{accounts}");
    let ids: Vec<&str> = accounts["data"]["items"]
        .as_array()
        .expect("data.items")
        .iter()
        .filter_map(|a| a["account_id"].as_str())
        .collect();
    assert_eq!(ids, ["acc-1", "acc-2"], "{accounts}");
    assert_eq!(accounts["data"]["total"], 2);
    assert_eq!(accounts["metadata"]["credits_consumed"], 0);
    // The search line, twice: a charged miss, then a free hit of the same data.
    let (status, first) = curls[2].send();
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["metadata"]["action"], "search_people");
    assert_eq!(first["metadata"]["cache"], "miss");
    assert_eq!(first["metadata"]["credits_consumed"], 1);
    let (status, second) = curls[2].send();
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["metadata"]["cache"], "hit");
    assert_eq!(second["metadata"]["credits_consumed"], 0);
    assert_eq!(first["data"], second["data"]);
    // One page and one search were charged: 100 - 2 left today.
    assert_eq!(second["metadata"]["credits_remaining"], 98);
    // The usage line, on the admin listener the demo printed: crm's spend.
    let admin = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("admin:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo prints its admin listener")
        .to_string();
    assert!(usage.url.starts_with(&admin), "{} vs {admin}", usage.url);
    let (status, report) = usage.send();
    assert_eq!(status, 200, "{report}");
    let crm = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "crm")
        .expect("crm in the usage")
        .clone();
    assert_eq!(
        (crm["used"].as_u64(), crm["remaining"].as_u64()),
        (Some(2), Some(98))
    );
    assert_eq!(crm["cache_hits"].as_u64(), Some(3));
}

/// One `curl` command line as the demo prints it.
struct Curl {
    url: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// The curl commands in `lines`, with `\` continuations joined. Only what
/// the demo prints is understood: `-s`, `-H 'NAME: VALUE'`, `-d 'BODY'`, a URL.
fn curl_commands(lines: &[String]) -> Vec<Curl> {
    let mut commands = Vec::new();
    let mut lines = lines.iter().map(|l| l.trim());
    while let Some(line) = lines.next() {
        if !line.starts_with("curl ") {
            continue;
        }
        let mut text = line.to_string();
        while text.ends_with('\\') {
            text.pop();
            text.push(' ');
            text.push_str(lines.next().expect("a continued line goes on"));
        }
        commands.push(parse_curl(&text));
    }
    commands
}

fn parse_curl(text: &str) -> Curl {
    // Shell words: blanks separate, single quotes group (the demo uses no others).
    let mut words = Vec::new();
    let (mut word, mut quoted, mut started) = (String::new(), false, false);
    for c in text.chars() {
        match c {
            '\'' => (quoted, started) = (!quoted, true),
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    let mut words = words.into_iter();
    assert_eq!(words.next().as_deref(), Some("curl"));
    let (mut url, mut headers, mut body) = (None, Vec::new(), None);
    while let Some(word) = words.next() {
        match word.as_str() {
            "-s" => {}
            "-H" => {
                let header = words.next().expect("-H has a value");
                let (name, value) = header.split_once(':').expect("NAME: VALUE");
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            "-d" => body = Some(words.next().expect("-d has a value")),
            other if other.starts_with("http://") => url = Some(other.to_string()),
            other => panic!("the demo's curl line has {other:?}, which this test does not know"),
        }
    }
    let url = url.expect("a URL");
    let path = url
        .trim_start_matches("http://")
        .find('/')
        .map(|i| url.trim_start_matches("http://")[i..].to_string())
        .expect("a path");
    Curl {
        url,
        path,
        headers,
        body,
    }
}

impl Curl {
    /// Sends it as curl would (POST with a body, else GET) over a plain
    /// socket; returns the status and the JSON body.
    fn send(&self) -> (u16, serde_json::Value) {
        use std::io::Read;
        let addr = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut stream = std::net::TcpStream::connect(&addr).expect("the gateway accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let method = if self.body.is_some() { "POST" } else { "GET" };
        let body = self.body.as_deref().unwrap_or("");
        let mut head = format!("{method} {} HTTP/1.1\r\nhost: {addr}\r\n", self.path);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("a whole answer");
        let status = raw[9..12].parse().expect("a status line");
        let (_, json) = raw.split_once("\r\n\r\n").expect("a head and a body");
        (status, serde_json::from_str(json).expect("a JSON body"))
    }
}

#[test]
fn serve_runs_a_config_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime
        .block_on(viewgate::sim::Simulator::start(
            viewgate::sim::SimConfig::default().with_key(viewgate::sim::SimKey::new(
                "primary",
                "cli-test-upstream",
                ["*"],
            )),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let tenant_key = "vg_cli-test-tenant-key";
    let config = format!(
        "server:\n  listen: \"127.0.0.1:0\"\nledger:\n  backend: memory\nupstream:\n  base_url: \"{}\"\n  keys:\n    - name: primary\n      api_key_file: \"{}\"\ntenants:\n  - id: crm\n    key_sha256: \"{}\"\n    accounts: [\"*\"]\n    budget: {{ credits: 5, period: day }}\n",
        sim.base_url(),
        dir.path().join("upstream.key").display(),
        KeyHash::of(tenant_key.as_bytes()).to_hex()
    );
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "cli-test-upstream\n").unwrap();
    // A key file others can read is refused: show that, then fix it.
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let path = dir.path().join("viewgate.yaml");
    std::fs::write(&path, &config).unwrap();
    let refused = viewgate(&["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mode 0644"));
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut child = Running(
        viewgate(&["serve", "--config", path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (addr, _) = read_until(&mut child.0, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["msg"] == "viewgate listening").then(|| v["listen"].as_str().unwrap().to_string())
    });
    let (status, reply) = post(
        &format!("http://{addr}"),
        tenant_key,
        r#"{"account_id":"acc-1","action":"get_viewers"}"#,
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["metadata"]["credits_remaining"], 4);
    assert_eq!(sim.credits_total(), 1);
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
