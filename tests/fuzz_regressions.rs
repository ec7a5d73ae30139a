//! The fuzz targets of `fuzz/` as plain tests, so they run on stable in every
//! `cargo test`: each replays its seed corpus (`fuzz/corpus/<target>/`) and
//! then a bounded, fixed-seed stream of mutations of it. The properties are
//! the targets' own (`fuzz/fuzz_targets/checks.rs`, shared, not copied).
//!
//! Inputs that once broke something are kept below as named regressions.
//! Upstream bodies have no public parser, so the last test feeds mutated
//! upstream answers to the real gateway through a fake upstream socket.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TenantSpec, World, WorldSpec, viewers};
use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Iterations of the mutation loop per target (the YAML loader is slower
/// per input in a debug build: fewer, to keep the suite quick).
const ITERATIONS: usize = 20_000;
const CONFIG_ITERATIONS: usize = 6_000;
/// A mutation loop stops early past this, whatever the machine's speed.
const TIME_BOX: Duration = Duration::from_secs(60);

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that matter to JSON and YAML parsers, inserted whole.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    ",",
    ":",
    "null",
    "true",
    "-0",
    "1e400",
    "1.5",
    "18446744073709551616",
    "4294967296",
    "4294967295",
    "100",
    "101",
    "\"params\"",
    "\"count\"",
    "\"offset\"",
    "\"account_id\"",
    "\"action\"",
    "\"get_viewers\"",
    "\n",
    "\r",
    "\t",
    " ",
    "- ",
    "? ",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "<<: ",
    "---\n",
    "...\n",
    "|\n",
    ">-\n",
    "~",
    "0x10",
    "0o17",
    "1_000",
    ".inf",
    "'",
    "#",
    "%YAML 1.2\n",
    "\u{feff}",
    "\u{2028}",
    "é",
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(seeds.len() >= 3, "corpus {target} has too few seeds");
    seeds
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                data.insert(at, rng.next() as u8);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                data.drain(at..at + n);
            }
            4 | 5 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(len + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.truncate(rng.below(len + 1)),
        }
    }
    data
}

/// Replays the corpus, then mutations, through `check`; a panic names the input.
fn run(target: &str, seed: u64, iterations: usize, check: impl Fn(&[u8])) {
    let seeds = corpus(target);
    for (i, input) in seeds.iter().enumerate() {
        guarded(target, &format!("seed {i}"), input, &check);
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut done = 0;
    while done < iterations && started.elapsed() < TIME_BOX {
        let input = mutate(&mut rng, &seeds);
        guarded(target, &format!("mutation {done}"), &input, &check);
        done += 1;
    }
    assert!(
        done >= 1_000,
        "{target}: only {done} iterations in the time box"
    );
}

fn guarded(target: &str, what: &str, input: &[u8], check: &impl Fn(&[u8])) {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{target} {what} failed: {message}\ninput (escaped): {input:?}");
    }
}

#[test]
fn parse_call_survives_its_corpus_and_mutations() {
    run(
        "parse_call",
        0x5eed_0001,
        ITERATIONS,
        checks::parse_call_bytes,
    );
}

#[test]
fn config_loader_survives_its_corpus_and_mutations() {
    run("config", 0x5eed_0002, CONFIG_ITERATIONS, |bytes| {
        checks::config_text(&String::from_utf8_lossy(bytes))
    });
}

#[test]
fn splice_survives_its_corpus_and_mutations() {
    run("splice", 0x5eed_0003, ITERATIONS, checks::splice_bytes);
}

/// The brief's loader entry point, exactly: environment lookups through a closure.
#[test]
fn the_env_loader_reads_every_seed_config_without_panicking() {
    for seed in corpus("config") {
        let text = String::from_utf8_lossy(&seed);
        let _ = viewgate::config::from_yaml_with_env(&text, "fuzz.yaml", &|_| Some("k".into()));
    }
}

// ---- regressions: inputs worth keeping -----------------------------------------

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // serde_json stops at 128 levels; the body must be a 400, not a crash.
    let mut body = b"p{\"account_id\":\"a\",\"action\":\"x\",\"params\":".to_vec();
    body.extend(std::iter::repeat_n(b'[', 100_000));
    checks::parse_call_bytes(&body);
    let mut yaml = String::from("server:\n  listen: ");
    yaml.push_str(&"[".repeat(10_000));
    checks::config_text(&yaml);
    let mut yaml = String::from("tenants:\n");
    yaml.push_str(&"- ".repeat(5_000));
    checks::config_text(&yaml);
}

#[test]
fn yaml_aliases_cannot_blow_up() {
    // A "billion laughs" document: expansion must be bounded or refused.
    let mut yaml = String::from("a0: &a0 [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    yaml.push_str("tenants: *a9\n");
    let started = Instant::now();
    checks::config_text(&yaml);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn odd_but_valid_viewer_bodies_parse_to_their_page() {
    for (body, offset, count) in [
        (
            r#"{"params":{"offset":7,"count":20},"action":"get_viewers","account_id":"a"}"#,
            7,
            20,
        ),
        (
            r#"{"account_id":"a","action":"get_viewers","params":{"count":100,"offset":4294967295}}"#,
            4_294_967_295,
            100,
        ),
        (
            "\n\t {\"account_id\" : \"a\" ,\"action\":\"get_viewers\",\"params\":{ } } \n",
            0,
            10,
        ),
    ] {
        let call = viewgate::layers::parse::parse_call("profiles", body.as_bytes()).unwrap();
        let key = call.cache_key().unwrap();
        assert_eq!((key.offset(), key.count()), (offset, count), "{body}");
    }
}

// ---- upstream answers through the real gateway -----------------------------------

/// A world whose upstream is [`fake_upstream`]; set the returned answer.
async fn over_fake_upstream(upstream_yaml: &'static str) -> (Arc<Mutex<(u16, Vec<u8>)>>, World) {
    let next = Arc::new(Mutex::new((200u16, Vec::new())));
    let base_url = fake_upstream(Arc::clone(&next)).await;
    let w = World::start(WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        base_url: Some(base_url),
        max_retries: 0,
        upstream_yaml,
        ..WorldSpec::default()
    })
    .await;
    (next, w)
}

/// A one-request-per-connection HTTP/1.1 server answering whatever `next`
/// holds, with a JSON content type that has a parameter and a rate-limit
/// header, as a real API might send.
async fn fake_upstream(next: Arc<Mutex<(u16, Vec<u8>)>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                // Read the request head and its content-length body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body_end = loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head_text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                        let length = head_text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break head + 4 + length;
                    }
                };
                while buf.len() < body_end {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, body) = next.lock().unwrap().clone();
                let mut answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=utf-8\r\nx-ratelimit-remaining: 42\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(&body);
                let _ = socket.write_all(&answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Whether `v` is exactly the V2 success envelope the gateway must accept.
fn clean_success(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    o.get("success") == Some(&Value::Bool(true))
        && o.get("data").is_some_and(|d| !d.is_null())
        && o.keys()
            .all(|k| k == "success" || k == "data" || k == "metadata")
        && o.get("metadata").is_none_or(|m| {
            m.as_object()
                .is_some_and(|m| m.get("credits_consumed").is_none_or(Value::is_u64))
        })
}

#[tokio::test]
async fn mutated_upstream_answers_never_break_the_gateway() {
    let (next, w) = over_fake_upstream("  breaker:\n    failures: 1000000\n").await;
    let seeds = corpus("splice");
    let mut rng = Rng(0x5eed_0004);
    let statuses = [200u16, 200, 200, 200, 400, 404, 429, 500, 503];
    for i in 0..200u32 {
        // A real envelope around a generated or seeded `data`, then maybe mutated bytes.
        let seed = &seeds[rng.below(seeds.len())];
        let data: Value = serde_json::from_slice(seed).unwrap_or_else(|_| {
            let noise: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
            checks::Input::new(&noise).value(0)
        });
        let envelope = if rng.below(3) == 0 {
            json!({"success": false, "error": {"code": "INTERNAL_ERROR", "message": "boom"},
                   "metadata": {"action": "get_viewers", "credits_consumed": 0}})
        } else {
            json!({"success": true, "data": data,
                   "metadata": {"action": "get_viewers", "account_id": "acc-1",
                                "credits_consumed": rng.below(4), "timestamp": "2026-11-27T15:00:00Z"}})
        };
        let mut body = serde_json::to_vec(&envelope).unwrap();
        if rng.below(2) == 0 {
            body = mutate(&mut rng, &[body]);
        }
        let status = statuses[rng.below(statuses.len())];
        *next.lock().unwrap() = (status, body.clone());
        // A fresh page each time: nothing comes from the cache.
        let reply = w.post(Some("crm"), &common::viewers("acc-1", i, 10)).await;
        let upstream: Option<Value> = serde_json::from_slice(&body).ok();
        let context = format!(
            "upstream {status} {:?} → {} {}",
            String::from_utf8_lossy(&body),
            reply.status,
            reply.text()
        );
        match reply.status.as_u16() {
            200 => {
                assert_eq!(status, 200, "{context}");
                match &upstream {
                    Some(upstream) => {
                        let v = reply.json();
                        assert_eq!(v["data"], upstream["data"], "{context}");
                        assert_eq!(v["metadata"]["cache"], "miss", "{context}");
                    }
                    // Grammatical JSON a strict reader refuses (a lone surrogate,
                    // 1e400): forwarded unparsed, as the upstream wrote it.
                    None => assert!(reply.text().starts_with(r#"{"success":true,"data":"#)),
                }
            }
            502 => {
                assert_eq!(reply.code(), "UPSTREAM_UNAVAILABLE", "{context}");
                let clean = upstream.as_ref().is_some_and(clean_success);
                assert!(
                    !(status == 200 && clean),
                    "a clean success was refused: {context}"
                );
            }
            s => {
                assert_eq!(s, status, "{context}");
                assert_eq!(reply.json()["success"], false, "{context}");
            }
        }
    }
    // Nothing leaked into the ledger's reservations.
    assert_eq!(w.reserved("crm").await, 0);
}

/// An upstream `data` with a lone surrogate escape (`"\ud800"`) follows the
/// JSON grammar but names no character: strict readers (serde_json's `Value`
/// among them) refuse it. viewgate passes `data` through unparsed, so it can
/// only forward it byte for byte or refuse it (502); it must not mangle it.
#[tokio::test]
async fn upstream_data_with_a_lone_surrogate_is_forwarded_verbatim_or_refused() {
    let (next, w) = over_fake_upstream("").await;
    let data = r#"{"viewers":[{"name":"\ud800"}],"total_results":1}"#;
    let body = format!(r#"{{"success":true,"data":{data},"metadata":{{"credits_consumed":1}}}}"#);
    *next.lock().unwrap() = (200, body.into_bytes());
    let reply = w.post(Some("crm"), &common::viewers("acc-1", 0, 10)).await;
    eprintln!("lone surrogate → {} {}", reply.status, reply.text());
    match reply.status.as_u16() {
        200 => assert!(reply.text().contains(data), "{}", reply.text()),
        502 => assert_eq!(reply.code(), "UPSTREAM_UNAVAILABLE"),
        other => panic!("{other}: {}", reply.text()),
    }
}

/// Finding 7: `viewgate_credits_charged_total` went backwards after an
/// absurd upstream charge (a 64-bit wrap). The charge is recorded in full,
/// saturating, and the counter never decreases.
#[tokio::test]
async fn an_absurd_upstream_charge_saturates_instead_of_wrapping() {
    let (next, w) = over_fake_upstream("").await;
    let counter = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("viewgate_credits_charged_total{tenant=\"crm\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut last = 0.0;
    for (offset, charge) in [(0u32, "18446744073709551610"), (10, "10"), (20, "1e30")] {
        *next.lock().unwrap() = (
            200,
            format!(
                r#"{{"success":true,"data":{{"viewers":[]}},"metadata":{{"action":"get_viewers","credits_consumed":{charge}}}}}"#
            )
            .into_bytes(),
        );
        let r = w.post(Some("crm"), &viewers("acc-1", offset, 10)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let metrics = w.admin(Method::GET, "/metrics", None, "").await.text();
        let now = counter(&metrics);
        assert!(now >= last, "the counter went back from {last} to {now}");
        last = now;
    }
    assert_eq!(last, u64::MAX as f64);
    assert_eq!(
        w.used("crm").await,
        u64::MAX,
        "recorded in full, saturating"
    );
}

/// Red team: a key the upstream echoed in a success body or a passed-through
/// header reached the tenant (and a page with it would have been cached).
#[tokio::test]
async fn a_key_echoed_in_a_page_never_reaches_a_tenant() {
    let (next, w) = over_fake_upstream("").await;
    let key = w.upstream_key.clone();
    for (n, echoed) in [key.clone(), key.to_lowercase(), key[2..12].to_string()]
        .into_iter()
        .enumerate()
    {
        *next.lock().unwrap() = (
            200,
            format!(
                r#"{{"success":true,"data":{{"viewers":[],"note":"your key is {echoed}"}},"metadata":{{"credits_consumed":1}}}}"#
            )
            .into_bytes(),
        );
        // A fresh page each time: never a hit on the page scrubbed before.
        let r = w
            .post(Some("crm"), &viewers("acc-1", n as u32 * 10, 10))
            .await;
        assert_eq!(r.meta()["cache"], "miss");
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text().to_lowercase();
        assert!(!text.contains(&echoed.to_lowercase()), "{text}");
        assert!(text.contains("your key is ***"), "{text}");
    }
}

/// Upstream headers a client may act on pass through on the answer fetched
/// from the upstream, and the content type keeps its parameters.
#[tokio::test]
async fn rate_limit_headers_and_content_type_parameters_pass_through() {
    let (next, w) = over_fake_upstream("").await;
    *next.lock().unwrap() = (
        200,
        br#"{"success":true,"data":{"viewers":[]},"metadata":{"credits_consumed":1}}"#.to_vec(),
    );
    let miss = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(
        miss.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(miss.header("x-ratelimit-remaining"), Some("42"));
    let hit = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(hit.meta()["cache"], "hit");
    assert_eq!(
        hit.header("x-ratelimit-remaining"),
        None,
        "a hit says nothing of the upstream's limits"
    );
}
