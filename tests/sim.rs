//! The simulator over a real socket: start it on 127.0.0.1:0, talk to it with
//! a plain hyper client, and check it plays the V2 contract, bills and counts
//! as documented, and misbehaves on demand.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use viewgate::sim::{
    EchoVariant, Fault, FaultKind, SimConfig, SimHandle, SimKey, SimStats, Simulator,
};

const KEY_A: &str = "sk-alpha-secret";
const KEY_B: &str = "sk-beta-secret";
const ACCOUNT_A: &str = "acct-alpha";
const ACCOUNT_B: &str = "acct-beta";

/// Long enough for a loaded CI machine, short enough to fail fast.
const PATIENCE: Duration = Duration::from_secs(10);

fn config() -> SimConfig {
    SimConfig::default()
        .with_key(SimKey::new("alpha", KEY_A, [ACCOUNT_A, "acct-sleepy"]))
        .with_key(SimKey::new("beta", KEY_B, [ACCOUNT_B]))
        .with_key(SimKey::new("admin", "sk-admin-secret", ["*"]))
}

struct Harness {
    sim: SimHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn start(config: SimConfig) -> Harness {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let sim = Simulator::start(config, listen).await.expect("sim starts");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    Harness { sim, client }
}

impl Harness {
    async fn try_send(&self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        tokio::time::timeout(PATIENCE, self.try_send(request))
            .await
            .expect("simulator answers in time")
            .expect("request succeeds")
    }

    fn request(&self, method: Method, path: &str, key: Option<&str>) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sim.base_url()));
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder
    }

    fn action_request(&self, path: &str, key: Option<&str>, body: &Value) -> Request<Full<Bytes>> {
        self.request(Method::POST, path, key)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        self.send(self.action_request(path, key, &body)).await
    }

    async fn act(
        &self,
        key: &str,
        (category, action): (&str, &str),
        account: &str,
        params: Value,
    ) -> Reply {
        let body = json!({"account_id": account, "action": action, "params": params});
        self.post(&format!("/v2/{category}"), Some(key), body).await
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let request = self
            .request(Method::GET, path, key)
            .body(Full::default())
            .expect("request");
        self.send(request).await
    }

    /// Sends a request whose answer is expected to break off: the client's
    /// error, or a panic if it got a whole answer.
    async fn send_broken(&self, path: &str, key: &str, body: &Value) -> String {
        let request = self.action_request(path, Some(key), body);
        match tokio::time::timeout(PATIENCE, self.try_send(request)).await {
            Ok(Err(err)) => err,
            Ok(Ok(reply)) => panic!("expected a broken answer, got {}", reply.status),
            Err(_) => panic!("the simulator did not answer in time"),
        }
    }

    async fn viewers(&self, key: &str, account: &str, params: Value) -> Reply {
        let body = json!({"account_id": account, "action": "get_viewers", "params": params});
        self.post("/v2/profiles", Some(key), body).await
    }

    async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = self
            .request(method, path, None)
            .body(Full::new(body))
            .expect("request");
        self.send(request).await
    }
}

/// Waits, a bounded number of short rounds, until `done` holds (the
/// simulator works in its own tasks); false if it never did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

/// One HTTP/1.1 request over a bare socket, read until the server closes:
/// the head (status line and headers) and the body bytes that arrived.
async fn raw_post(addr: SocketAddr, path: &str, key: &str, body: &Value) -> (String, Vec<u8>) {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: sim\r\nx-api-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    // A reset after some bytes is fine: what arrived stays in `received`.
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the simulator closes the connection");
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&received[..split]).into_owned();
    (head, received[split + 4..].to_vec())
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length header")
}

fn assert_timestamp(value: &Value) {
    let ts = value.as_str().expect("timestamp is a string");
    assert_eq!(ts.len(), 20, "whole seconds, UTC: {ts}");
    assert!(ts.ends_with('Z'), "{ts}");
    assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
}

#[tokio::test]
async fn a_page_has_the_documented_shape_and_is_stable() {
    let h = start(config()).await;
    let first = h.viewers(KEY_A, ACCOUNT_A, json!({"count": 2})).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers[CONTENT_TYPE], "application/json");
    let page = first.json();
    assert_eq!(page["success"], true);
    assert_eq!(page["data"]["total_results"], 2);
    assert_eq!(
        page["data"]["pagination"],
        json!({"offset": 0, "count": 2, "total": 87, "has_more": true, "next_offset": 10})
    );
    let meta = &page["metadata"];
    assert_eq!(meta["action"], "get_viewers");
    assert_eq!(meta["account_id"], ACCOUNT_A);
    assert_eq!(meta["credits_consumed"], 1);
    assert_timestamp(&meta["timestamp"]);

    let viewers = page["data"]["viewers"].as_array().expect("viewers");
    assert_eq!(viewers.len(), 2);
    for viewer in viewers {
        let fields: Vec<&str> = viewer
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields.len(),
            6,
            "title, image_url, is_blurred, cta_action, profile_url, entity_urn: {fields:?}"
        );
    }

    let second = h.viewers(KEY_A, ACCOUNT_A, json!({"count": 2})).await;
    assert_eq!(second.json()["data"], page["data"]);

    // Across a big page some viewers are blurred and hide who they are.
    let big = h
        .viewers(KEY_A, ACCOUNT_A, json!({"count": 87}))
        .await
        .json();
    let viewers = big["data"]["viewers"].as_array().expect("viewers");
    assert_eq!(viewers.len(), 87);
    let blurred: Vec<&Value> = viewers.iter().filter(|v| v["is_blurred"] == true).collect();
    assert!(
        !blurred.is_empty() && blurred.len() < 60,
        "{}",
        blurred.len()
    );
    for v in blurred {
        assert!(v["profile_url"].is_null() && v["entity_urn"].is_null());
    }
    assert_eq!(big["data"]["pagination"]["has_more"], false);
    assert!(big["data"]["pagination"]["next_offset"].is_null());
    // Another account sees other people.
    let other = h
        .viewers(KEY_B, ACCOUNT_B, json!({"count": 2}))
        .await
        .json();
    assert_ne!(other["data"]["viewers"], page["data"]["viewers"]);
}

#[tokio::test]
async fn credits_follow_the_per_ten_rule_and_are_billed_per_key() {
    let h = start(config().with_total("acct-sleepy", 15)).await;
    let cases = [
        (json!({"count": 10}), 1),
        (json!({"count": 11}), 2),
        (json!({"count": 20}), 2),
        (json!({"offset": 80, "count": 20}), 1), // 7 results left
        (json!({"offset": 100, "count": 10}), 0), // empty page
    ];
    let mut expected_total = 0;
    for (params, cost) in cases {
        let reply = h.viewers(KEY_A, ACCOUNT_A, params.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{params}");
        assert_eq!(
            reply.json()["metadata"]["credits_consumed"],
            cost,
            "{params}"
        );
        expected_total += cost;
    }
    // A configured total: 15 viewers, so count 20 returns 15 for 2 credits.
    let small = h
        .viewers(KEY_A, "acct-sleepy", json!({"count": 20}))
        .await
        .json();
    assert_eq!(small["data"]["total_results"], 15);
    assert_eq!(small["metadata"]["credits_consumed"], 2);
    expected_total += 2;

    assert_eq!(h.sim.credits_for("alpha"), expected_total);
    assert_eq!(h.sim.credits_for("beta"), 0);
    assert_eq!(h.sim.credits_total(), expected_total);
    let stats = h.sim.stats();
    assert_eq!(stats.keys["alpha"].credits, expected_total);
}

#[tokio::test]
async fn a_foreign_or_unknown_account_is_not_found() {
    let h = start(config()).await;
    let foreign = h.viewers(KEY_A, ACCOUNT_B, json!({})).await;
    let unknown = h.viewers(KEY_A, "acct-nobody", json!({})).await;
    for reply in [&foreign, &unknown] {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        let body = reply.json();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "INVALID_ACCOUNT");
        assert_eq!(body["metadata"]["credits_consumed"], 0);
        assert_eq!(body["metadata"]["action"], "get_viewers");
        assert_timestamp(&body["metadata"]["timestamp"]);
    }
    // Same answer either way, so a key cannot probe for other accounts.
    assert_eq!(foreign.json()["error"], unknown.json()["error"]);
    // The wildcard key owns everything.
    let admin = h.viewers("sk-admin-secret", ACCOUNT_B, json!({})).await;
    assert_eq!(admin.status, StatusCode::OK);
    assert_eq!(h.sim.credits_for("alpha"), 0);
}

#[tokio::test]
async fn bad_missing_and_revoked_keys_are_refused() {
    let h = start(config()).await;
    let body = json!({"account_id": ACCOUNT_A, "action": "get_viewers"});
    for key in [Some("sk-wrong"), None, Some("")] {
        let reply = h.post("/v2/profiles", key, body.clone()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{key:?}");
        assert_eq!(reply.error_code(), "INVALID_API_KEY");
    }
    h.sim.set_key_revoked("alpha", true);
    let revoked = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert_eq!(revoked.status, StatusCode::FORBIDDEN);
    assert_eq!(revoked.error_code(), "INVALID_API_KEY");
    h.sim.set_key_revoked("alpha", false);
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );

    // The same switch over HTTP.
    let revoke = h
        .control(Method::POST, "/_sim/keys/beta/revoke", None)
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.viewers(KEY_B, ACCOUNT_B, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    h.control(Method::POST, "/_sim/keys/beta/unrevoke", None)
        .await;
    assert_eq!(
        h.viewers(KEY_B, ACCOUNT_B, json!({})).await.status,
        StatusCode::OK
    );
    let unknown = h
        .control(Method::POST, "/_sim/keys/nobody/revoke", None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // No refused request was billed; only authenticated ones count per key.
    assert_eq!(h.sim.credits_for("alpha"), 1);
    assert_eq!(h.sim.calls_for("alpha"), 1);
    assert_eq!(h.sim.calls_total(), 7);
}

#[tokio::test]
async fn counters_move_as_expected_and_reset() {
    let h = start(config()).await;
    // Defaults apply before counting: {} is offset 0, count 10.
    h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    h.viewers(KEY_A, ACCOUNT_A, json!({"offset": 0, "count": 10}))
        .await;
    h.viewers(KEY_A, ACCOUNT_A, json!({"offset": 10})).await;
    // Counted whatever the outcome: refused for a foreign account here.
    h.viewers(KEY_B, ACCOUNT_A, json!({"offset": 10})).await;
    assert_eq!(h.sim.page_calls(ACCOUNT_A, 0, 10), 2);
    assert_eq!(h.sim.page_calls(ACCOUNT_A, 10, 10), 2);
    assert_eq!(h.sim.page_calls(ACCOUNT_A, 20, 10), 0);
    assert_eq!(h.sim.calls_total(), 4);
    assert_eq!(h.sim.calls_for("alpha"), 3);
    assert_eq!(h.sim.calls_for("beta"), 1);
    assert_eq!(h.sim.credits_total(), 3);

    let stats: SimStats =
        serde_json::from_slice(&h.control(Method::GET, "/_sim/stats", None).await.body)
            .expect("stats json");
    assert_eq!(stats, h.sim.stats());
    assert_eq!(stats.errors.get("INVALID_ACCOUNT"), Some(&1));
    assert_eq!(stats.pages.len(), 2);
    // Control endpoints are not upstream calls.
    assert_eq!(h.sim.calls_total(), 4);

    h.control(Method::POST, "/_sim/reset", None).await;
    assert_eq!(h.sim.calls_total(), 0);
    assert_eq!(h.sim.credits_for("alpha"), 0);
    assert_eq!(h.sim.page_calls(ACCOUNT_A, 0, 10), 0);
    h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    h.sim.reset_stats();
    assert_eq!(h.sim.stats().calls_total, 0);
}

#[tokio::test]
async fn requests_are_checked_in_upstream_order() {
    let h = start(config()).await;

    // Wrong content type and malformed JSON.
    let text = h
        .request(Method::POST, "/v2/profiles", Some(KEY_A))
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(
            json!({"account_id": ACCOUNT_A, "action": "get_viewers"}).to_string(),
        )))
        .expect("request");
    let reply = h.send(text).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "INVALID_PARAMS");
    let broken = h
        .request(Method::POST, "/v2/profiles", Some(KEY_A))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{\"account_id\": ")))
        .expect("request");
    assert_eq!(h.send(broken).await.error_code(), "INVALID_PARAMS");

    // Auth comes before the body: a bad key with a bad body is a 403.
    let both_bad = h.post("/v2/profiles", Some("nope"), json!([1])).await;
    assert_eq!(both_bad.error_code(), "INVALID_API_KEY");

    // Bad params: strings, floats, negatives, zero, too large.
    for params in [
        json!({"count": "10"}),
        json!({"count": 2.5}),
        json!({"offset": -1}),
        json!({"count": 0}),
        json!({"count": 101}),
    ] {
        let reply = h.viewers(KEY_A, ACCOUNT_A, params.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{params}");
        assert_eq!(reply.error_code(), "INVALID_PARAMS", "{params}");
    }
    // Ownership is checked before the action and params.
    let foreign = h
        .post(
            "/v2/profiles",
            Some(KEY_A),
            json!({"account_id": ACCOUNT_B, "action": "nope", "params": {"count": 0}}),
        )
        .await;
    assert_eq!(foreign.error_code(), "INVALID_ACCOUNT");
    let unknown_action = h
        .post(
            "/v2/profiles",
            Some(KEY_A),
            json!({"account_id": ACCOUNT_A, "action": "list_sent"}),
        )
        .await;
    assert_eq!(unknown_action.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown_action.error_code(), "INVALID_ACTION");

    // Unknown path and wrong method, in the error envelope.
    let missing = h.post("/v2/nothing", Some(KEY_A), json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "NOT_FOUND");
    let get = h
        .request(Method::GET, "/v2/profiles", Some(KEY_A))
        .body(Full::default())
        .expect("request");
    let get = h.send(get).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers.get("allow").unwrap(), "POST");
    assert_eq!(get.error_code(), "METHOD_NOT_ALLOWED");
    assert_eq!(h.sim.credits_total(), 0);
}

#[tokio::test]
async fn inactive_accounts_are_refused() {
    let mut config = config();
    config.inactive_accounts.push("acct-sleepy".to_owned());
    let h = start(config).await;
    let reply = h.viewers(KEY_A, "acct-sleepy", json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "ACCOUNT_INACTIVE");
    // Someone else's inactive account is still just "not found".
    let foreign = h.viewers(KEY_B, "acct-sleepy", json!({})).await;
    assert_eq!(foreign.error_code(), "INVALID_ACCOUNT");

    let accounts = h
        .request(Method::GET, "/v2/accounts", Some(KEY_A))
        .body(Full::default())
        .expect("request");
    let accounts = h.send(accounts).await;
    assert_eq!(accounts.status, StatusCode::OK);
    let body = accounts.json();
    let items = body["data"]["items"].as_array().expect("items");
    let listed: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|a| {
            let field = |name: &str| a[name].as_str().unwrap_or_default();
            (field("account_id"), field("status"), field("platform"))
        })
        .collect();
    assert_eq!(
        listed,
        [
            (ACCOUNT_A, "active", "linkedin"),
            ("acct-sleepy", "inactive", "linkedin")
        ]
    );
    assert!(items.iter().all(|a| a["name"].is_string()));
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(body["metadata"]["credits_consumed"], 0);
}

#[tokio::test]
async fn other_actions_answer_in_the_same_envelope_and_are_billed() {
    let h = start(config()).await;
    let list = h
        .post(
            "/v2/network",
            Some(KEY_B),
            json!({"account_id": ACCOUNT_B, "action": "list_sent"}),
        )
        .await
        .json();
    assert_eq!(list["success"], true);
    assert!(
        !list["data"]["invitations"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    assert_eq!(list["metadata"]["credits_consumed"], 1);

    let invite = h
        .post(
            "/v2/network",
            Some(KEY_B),
            json!({"account_id": ACCOUNT_B, "action": "invite",
                   "params": {"profile_url": "https://www.linkedin.com/in/janedoe"}}),
        )
        .await
        .json();
    assert_eq!(invite["data"]["invitation_sent"], true);
    assert_eq!(invite["metadata"]["credits_consumed"], 1);
    let no_url = h
        .post(
            "/v2/network",
            Some(KEY_B),
            json!({"account_id": ACCOUNT_B, "action": "invite"}),
        )
        .await;
    assert_eq!(no_url.error_code(), "INVALID_PARAMS");

    let candidates = h
        .post(
            "/v2/recruiter",
            Some(KEY_B),
            json!({"account_id": ACCOUNT_B, "action": "get_candidates", "params": {"count": 15}}),
        )
        .await
        .json();
    assert_eq!(
        candidates["data"]["candidates"].as_array().map(Vec::len),
        Some(15)
    );
    assert_eq!(candidates["metadata"]["credits_consumed"], 2);
    assert_eq!(h.sim.credits_for("beta"), 4);
    // Only get_viewers pages are counted per page.
    assert!(h.sim.stats().pages.is_empty());
}

#[tokio::test]
async fn internal_error_rate_limited_and_garbage_faults() {
    let h = start(config()).await;

    h.sim.set_fault(Fault::new(FaultKind::InternalError));
    for _ in 0..2 {
        let reply = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.error_code(), "INTERNAL_ERROR");
        assert_eq!(reply.json()["metadata"]["credits_consumed"], 0);
    }

    h.sim
        .set_fault(Fault::new(FaultKind::RateLimited { retry_after_s: 7 }));
    let reply = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers[RETRY_AFTER], "7");
    assert_eq!(reply.error_code(), "RATE_LIMITED");

    h.sim.set_fault(Fault::new(FaultKind::Garbage));
    let reply = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers[CONTENT_TYPE]
            .to_str()
            .is_ok_and(|ct| ct.starts_with("text/html"))
    );
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());

    // A bad key is refused before any fault applies.
    let bad_key = h.viewers("sk-wrong", ACCOUNT_A, json!({})).await;
    assert_eq!(bad_key.error_code(), "INVALID_API_KEY");

    h.sim.clear_fault();
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
    // Faulted calls are counted, never billed.
    assert_eq!(h.sim.calls_total(), 6);
    assert_eq!(h.sim.page_calls(ACCOUNT_A, 0, 10), 6);
    assert_eq!(h.sim.credits_total(), 1);
    assert_eq!(h.sim.stats().faults_applied, 4);
}

#[tokio::test]
async fn a_fault_for_one_request_applies_once() {
    let h = start(config()).await;
    h.sim
        .set_fault(Fault::new(FaultKind::InternalError).times(1));
    let faulted = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert_eq!(faulted.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(h.sim.current_fault().is_none());
    for _ in 0..3 {
        assert_eq!(
            h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
            StatusCode::OK
        );
    }

    // The same over HTTP, with times 2.
    let set = h
        .control(
            Method::POST,
            "/_sim/fault",
            Some(json!({"kind": {"type": "internal_error"}, "times": 2})),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    let statuses = [
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK
        ]
    );
    let bad = h
        .control(
            Method::POST,
            "/_sim/fault",
            Some(json!({"kind": "explode"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    h.control(
        Method::POST,
        "/_sim/fault",
        Some(json!({"kind": {"type": "hang"}})),
    )
    .await;
    let cleared = h.control(Method::DELETE, "/_sim/fault", None).await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn latency_delays_a_normal_answer() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::latency(150).times(1));
    let started = tokio::time::Instant::now();
    let reply = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["metadata"]["credits_consumed"], 1);
}

#[tokio::test]
async fn reset_drops_the_connection_without_an_answer() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::new(FaultKind::Reset).times(1));
    let request = h.action_request(
        "/v2/profiles",
        Some(KEY_A),
        &json!({"account_id": ACCOUNT_A, "action": "get_viewers"}),
    );
    let result = tokio::time::timeout(PATIENCE, h.try_send(request))
        .await
        .expect("reset is immediate");
    assert!(result.is_err(), "expected a dropped connection");
    // The next request is answered normally on a new connection.
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(h.sim.credits_total(), 1);
}

#[tokio::test]
async fn hang_never_answers_until_shutdown() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::new(FaultKind::Hang));
    let request = h.action_request(
        "/v2/profiles",
        Some(KEY_A),
        &json!({"account_id": ACCOUNT_A, "action": "get_viewers"}),
    );
    let gave_up = tokio::time::timeout(Duration::from_millis(300), h.try_send(request)).await;
    assert!(gave_up.is_err(), "the client should time out");
    assert_eq!(h.sim.calls_for("alpha"), 1);

    // A hung request in flight ends when the simulator shuts down.
    let request = h.action_request(
        "/v2/profiles",
        Some(KEY_A),
        &json!({"account_id": ACCOUNT_A, "action": "get_viewers"}),
    );
    let client = h.client.clone();
    let in_flight = tokio::spawn(async move { client.request(request).await });
    // Bounded wait until the simulator has the request (no fixed sleep).
    for _ in 0..500 {
        if h.sim.calls_for("alpha") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(h.sim.calls_for("alpha"), 2);
    h.sim.shutdown();
    let ended = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("shutdown ends hung requests")
        .expect("task");
    assert!(ended.is_err(), "a hung request gets no answer");

    // And the listener closes (bounded retries: the accept loop stops
    // asynchronously).
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(h.sim.addr()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the simulator still accepts connections");
}

#[tokio::test]
async fn the_per_key_rate_limit_answers_429_with_retry_after() {
    let mut config = config();
    config.rate_limit_per_minute = Some(3);
    let h = start(config).await;
    for _ in 0..3 {
        assert_eq!(
            h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
            StatusCode::OK
        );
    }
    let limited = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "RATE_LIMITED");
    let retry_after: u32 = limited.headers[RETRY_AFTER]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Bad params are refused before the limit, not with it.
    let bad = h.viewers(KEY_A, ACCOUNT_A, json!({"count": 0})).await;
    assert_eq!(bad.error_code(), "INVALID_PARAMS");
    // Another key has its own budget.
    assert_eq!(
        h.viewers(KEY_B, ACCOUNT_B, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(h.sim.credits_for("alpha"), 3);

    h.sim.reset_rate_limits();
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let h = start(config()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = h.action_request(
        "/v2/profiles",
        Some(KEY_A),
        &json!({"account_id": ACCOUNT_A, "action": "get_viewers"}),
    );
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("in time")
        .expect("h2 request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn ambiguous_keys_are_refused_at_start() {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let twice = SimConfig::default()
        .with_key(SimKey::new("a", "sk-dup-value", ["x"]))
        .with_key(SimKey::new("b", "sk-dup-value", ["y"]));
    let err = Simulator::start(twice, listen)
        .await
        .expect_err("duplicate");
    assert!(
        !err.to_string().contains("sk-dup"),
        "never print a key value"
    );
    // Debug output hides key values too.
    assert!(!format!("{:?}", config()).contains(KEY_A));
}

/// How an action is priced, for the table below.
#[derive(Clone, Copy, Debug)]
enum Price {
    Fixed,
    Per(u64),
}

#[tokio::test]
async fn every_action_answers_its_shape_and_price() {
    let h = start(config()).await;
    let post = "https://www.linkedin.com/feed/update/urn:li:activity:7100000000000000001";
    let profile = "https://www.linkedin.com/in/janedoe";
    let company = "https://www.linkedin.com/company/x";
    // (category, action, params, field of `data` that must be there, price)
    #[rustfmt::skip]
    let cases = [
        ("profiles", "get", json!({"profile_url": profile}), "full_name", Price::Fixed),
        ("profiles", "search_people", json!({"keywords": "rust", "count": 25}), "people", Price::Per(10)),
        ("profiles", "search_people", json!({}), "people", Price::Per(10)),
        ("profiles", "search_companies", json!({"keywords": "energy"}), "companies", Price::Per(10)),
        ("profiles", "get_company", json!({"company_id": "1337"}), "industry", Price::Fixed),
        ("profiles", "get_company", json!({"company_url": company}), "company_id", Price::Fixed),
        ("profiles", "get_reactions", json!({"post_url": post, "count": 2}), "reactions", Price::Per(10)),
        ("network", "list_invitations", json!({"count": 100}), "invitations", Price::Per(50)),
        ("network", "list_sent", json!({"count": 100}), "invitations", Price::Per(50)),
        ("network", "invite", json!({"profile_url": profile}), "invitation_sent", Price::Fixed),
        ("messages", "send", json!({"profile_url": profile, "message": "Hello!"}), "message_id", Price::Fixed),
        ("messages", "list_inbox", json!({"count": 5}), "conversations", Price::Per(10)),
        ("messages", "get_conversation", json!({"conversation_id": "2-abc", "count": 1}), "messages", Price::Per(10)),
        ("content", "comment", json!({"post_url": post, "text": "Great post"}), "comment_urn", Price::Fixed),
        ("recruiter", "get_candidates", json!({"count": 20}), "candidates", Price::Per(10)),
    ];
    let mut billed = 0;
    for (category, action, params, field, price) in cases {
        let what = format!("{category} {action} {params}");
        let reply = h.act(KEY_B, (category, action), ACCOUNT_B, params).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}: {:?}", reply.body);
        let body = reply.json();
        assert_eq!(body["success"], true, "{what}");
        assert_eq!(body["metadata"]["action"], action, "{what}");
        assert_eq!(body["metadata"]["account_id"], ACCOUNT_B, "{what}");
        assert_timestamp(&body["metadata"]["timestamp"]);
        let data = &body["data"];
        assert!(data.get(field).is_some(), "{what}: no {field} in {data}");
        let credits = body["metadata"]["credits_consumed"]
            .as_u64()
            .expect("credits");
        let expected = match price {
            Price::Fixed => 1,
            Price::Per(per) => {
                let items = data[field].as_array().expect("a list").len() as u64;
                assert!(items > 0, "{what}: an empty first page");
                assert_eq!(data["total_results"], items, "{what}");
                items.div_ceil(per)
            }
        };
        assert_eq!(credits, expected, "{what}");
        billed += credits;
    }
    assert_eq!(h.sim.credits_for("beta"), billed);
    assert_eq!(h.sim.credits_total(), billed);
    // search_people at 25 results costs 3; get_candidates at 20 costs 2.
    assert!(billed >= 16, "{billed}");

    // A client may omit params entirely; a missing required param is 400
    // INVALID_PARAMS and costs nothing.
    let no_params = h
        .post(
            "/v2/messages",
            Some(KEY_B),
            json!({"account_id": ACCOUNT_B, "action": "list_inbox"}),
        )
        .await;
    assert_eq!(no_params.status, StatusCode::OK);
    let before = h.sim.credits_total();
    for (category, action, params) in [
        ("profiles", "get", json!({})),
        ("profiles", "get_company", json!({})),
        ("profiles", "get_reactions", json!({"count": 5})),
        ("profiles", "search_people", json!({"keywords": 3})),
        ("messages", "send", json!({"message": "hi"})),
        ("messages", "send", json!({"conversation_id": "2-a"})),
        ("messages", "get_conversation", json!({})),
        ("content", "comment", json!({"post_url": post})),
        ("network", "list_invitations", json!({"count": 101})),
    ] {
        let reply = h
            .act(KEY_B, (category, action), ACCOUNT_B, params.clone())
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{action} {params}");
        assert_eq!(reply.error_code(), "INVALID_PARAMS", "{action} {params}");
    }
    // An action of another category is unknown there.
    let wrong = h
        .act(KEY_B, ("content", "send"), ACCOUNT_B, json!({}))
        .await;
    assert_eq!(wrong.error_code(), "INVALID_ACTION");
    assert_eq!(h.sim.credits_total(), before);
    assert_eq!(h.sim.writes_total(), 3, "only the three performed writes");
}

#[tokio::test]
async fn reads_are_deterministic_per_account() {
    let h = start(config()).await;
    let admin = "sk-admin-secret";
    for (category, action, params) in [
        ("profiles", "search_people", json!({"keywords": "data"})),
        ("profiles", "search_companies", json!({})),
        ("network", "list_invitations", json!({})),
        ("messages", "list_inbox", json!({})),
        (
            "messages",
            "get_conversation",
            json!({"conversation_id": "2-q"}),
        ),
    ] {
        let first = h
            .act(admin, (category, action), ACCOUNT_A, params.clone())
            .await;
        let again = h
            .act(admin, (category, action), ACCOUNT_A, params.clone())
            .await;
        let other = h
            .act(admin, (category, action), ACCOUNT_B, params.clone())
            .await;
        assert_eq!(first.json()["data"], again.json()["data"], "{action}");
        assert_ne!(first.json()["data"], other.json()["data"], "{action}");
    }
    // A profile is the same whoever looks at it.
    let profile = json!({"profile_url": "https://www.linkedin.com/in/someone"});
    let seen_by_a = h
        .act(admin, ("profiles", "get"), ACCOUNT_A, profile.clone())
        .await;
    let seen_by_b = h.act(admin, ("profiles", "get"), ACCOUNT_B, profile).await;
    assert_eq!(seen_by_a.json()["data"], seen_by_b.json()["data"]);
    assert_eq!(seen_by_a.json()["data"]["public_identifier"], "someone");
}

#[tokio::test]
async fn cursors_walk_the_inbox_and_a_conversation() {
    let h = start(config()).await;
    let inbox = ("messages", "list_inbox");
    let whole = h
        .act(KEY_A, inbox, ACCOUNT_A, json!({"count": 100}))
        .await
        .json();
    assert!(whole["data"]["next_cursor"].is_null());
    let all = whole["data"]["conversations"]
        .as_array()
        .expect("list")
        .clone();

    let mut walked = Vec::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let params = json!({"count": 7, "cursor": cursor});
        let page = h.act(KEY_A, inbox, ACCOUNT_A, params).await.json();
        let items = page["data"]["conversations"].as_array().expect("list");
        assert_eq!(
            page["metadata"]["credits_consumed"].as_u64(),
            Some((items.len() as u64).div_ceil(10))
        );
        walked.extend(items.iter().cloned());
        pages += 1;
        cursor = page["data"]["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
        assert!(cursor.is_string(), "{cursor}");
        assert!(pages < 20, "the cursor never ends");
    }
    assert_eq!(walked, all);
    assert_eq!(pages, all.len().div_ceil(7));

    // A cursor is bound to its account and list.
    let first = h
        .act(KEY_A, inbox, ACCOUNT_A, json!({"count": 1}))
        .await
        .json();
    let cursor = first["data"]["next_cursor"].clone();
    let foreign = h
        .act(KEY_B, inbox, ACCOUNT_B, json!({"cursor": cursor.clone()}))
        .await;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST);
    assert_eq!(foreign.error_code(), "INVALID_PARAMS");
    let elsewhere = h
        .act(
            KEY_A,
            ("messages", "get_conversation"),
            ACCOUNT_A,
            json!({"conversation_id": "2-x", "cursor": cursor}),
        )
        .await;
    assert_eq!(elsewhere.error_code(), "INVALID_PARAMS");
    let made_up = h
        .act(KEY_A, inbox, ACCOUNT_A, json!({"cursor": "10.deadbeef"}))
        .await;
    assert_eq!(made_up.error_code(), "INVALID_PARAMS");

    // A conversation of the inbox pages the same way, newest first.
    let id = all[0]["conversation_id"].as_str().expect("id");
    let conversation = ("messages", "get_conversation");
    let page = h
        .act(
            KEY_A,
            conversation,
            ACCOUNT_A,
            json!({"conversation_id": id, "count": 1}),
        )
        .await
        .json();
    assert_eq!(page["data"]["conversation_id"], id);
    let message = &page["data"]["messages"][0];
    for field in [
        "message_id",
        "sender_name",
        "is_from_me",
        "text",
        "sent_days_ago",
    ] {
        assert!(message.get(field).is_some(), "{field}");
    }
    let params = json!({"conversation_id": id, "count": 100});
    let whole = h.act(KEY_A, conversation, ACCOUNT_A, params).await.json();
    assert_eq!(whole["data"]["messages"][0], *message);
    if let Some(next) = page["data"]["next_cursor"].as_str() {
        let params = json!({"conversation_id": id, "count": 1, "cursor": next});
        let second = h.act(KEY_A, conversation, ACCOUNT_A, params).await.json();
        assert_eq!(second["data"]["messages"][0], whole["data"]["messages"][1]);
    }
}

#[tokio::test]
async fn accounts_are_listed_in_pages_and_one_by_one() {
    let accounts: Vec<String> = (1..=7).map(|i| format!("acc-{i:02}")).collect();
    let h = start(config().with_key(SimKey::new("many", "sk-many-secret", accounts.clone()))).await;
    let key = Some("sk-many-secret");

    let ids = |reply: &Reply| -> Vec<String> {
        let body = reply.json();
        body["data"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|a| a["account_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let all = h.get("/v2/accounts", key).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(ids(&all), accounts);
    assert_eq!(all.json()["data"]["total"], 7);
    assert_eq!(all.json()["metadata"]["action"], "list_accounts");
    assert_eq!(all.json()["metadata"]["credits_consumed"], 0);

    let first = h.get("/v2/accounts?limit=3", key).await;
    assert_eq!(ids(&first), accounts[..3]);
    assert_eq!(first.json()["data"]["total"], 7);
    let last = h.get("/v2/accounts?limit=3&offset=6", key).await;
    assert_eq!(ids(&last), accounts[6..]);
    let past = h.get("/v2/accounts?offset=50&limit=500", key).await;
    assert!(ids(&past).is_empty());
    assert_eq!(past.json()["data"]["total"], 7);
    for bad in ["limit=501", "limit=0", "limit=x", "offset=-1"] {
        let reply = h.get(&format!("/v2/accounts?{bad}"), key).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "INVALID_PARAMS", "{bad}");
    }

    let one = h.get("/v2/accounts/acc-03", key).await;
    assert_eq!(one.status, StatusCode::OK);
    let body = one.json();
    assert_eq!(body["data"], all.json()["data"]["items"][2]);
    assert_eq!(body["data"]["status"], "active");
    assert_eq!(body["metadata"]["account_id"], "acc-03");
    assert_eq!(body["metadata"]["credits_consumed"], 0);
    for (path, key) in [
        ("/v2/accounts/acct-beta", Some(KEY_A)),
        ("/v2/accounts/acc-nobody", key),
    ] {
        let reply = h.get(path, key).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "INVALID_ACCOUNT", "{path}");
    }
    assert_eq!(
        h.get("/v2/accounts/acc-03", None).await.status,
        StatusCode::FORBIDDEN
    );
    let post = h.post("/v2/accounts/acc-03", key, json!({})).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.sim.credits_total(), 0);
    assert_eq!(h.sim.accounts_for("many"), accounts);
}

#[tokio::test]
async fn login_connects_an_account_to_the_calling_key() {
    let h = start(config()).await;
    let password = "hunter2-is-my-password";
    let login = |email: &str| {
        json!({"platform": "linkedin", "email": email, "password": password,
               "country": "FR", "account_name": "Jane (sales)"})
    };
    let reply = h
        .post("/v2/login", Some(KEY_A), login("Jane@Example.com"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let account = body["data"]["account_id"]
        .as_str()
        .expect("account id")
        .to_owned();
    assert!(account.starts_with("li-"), "{account}");
    assert_eq!(body["data"]["status"], "connected");
    assert_eq!(body["metadata"]["action"], "login");
    assert_eq!(body["metadata"]["credits_consumed"], 1);
    assert!(!String::from_utf8_lossy(&reply.body).contains(password));

    // The new account is the key's: listed, usable, and nobody else's.
    assert!(h.sim.accounts_for("alpha").contains(&account));
    let detail = h
        .get(&format!("/v2/accounts/{account}"), Some(KEY_A))
        .await
        .json();
    assert_eq!(detail["data"]["name"], "Jane (sales)");
    assert_eq!(
        h.viewers(KEY_A, &account, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.viewers(KEY_B, &account, json!({})).await.error_code(),
        "INVALID_ACCOUNT"
    );

    // Logging in again is free and names the same account.
    let again = h
        .post("/v2/login", Some(KEY_A), login("jane@example.com "))
        .await
        .json();
    assert_eq!(again["data"]["account_id"], account.as_str());
    assert_eq!(again["metadata"]["credits_consumed"], 0);
    assert_eq!(h.sim.writes("login", &account, "jane@example.com"), 2);
    // Another key connecting the same email is a new connection for it.
    let other = h
        .post("/v2/login", Some(KEY_B), login("jane@example.com"))
        .await
        .json();
    assert_eq!(other["metadata"]["credits_consumed"], 1);
    assert_eq!(h.sim.credits_for("alpha"), 2, "one login, one viewer page");
    assert_eq!(h.sim.credits_for("beta"), 1);

    // A login token does as well as a password.
    let token =
        json!({"platform": "linkedin", "email": "tok@example.com", "login_token": "AQEDAT-token"});
    assert_eq!(
        h.post("/v2/login", Some(KEY_A), token).await.status,
        StatusCode::OK
    );

    // Missing or wrong fields: 400, unbilled, and the secret never echoed.
    let credits = h.sim.credits_total();
    for bad in [
        json!({"platform": "linkedin", "email": "a@example.com"}),
        json!({"platform": "linkedin", "password": password}),
        json!({"platform": "facebook", "email": "a@example.com", "password": password}),
        json!({"email": "a@example.com", "password": password}),
        json!({"platform": "linkedin", "email": "a@example.com", "password": 1234}),
        json!(["not", "an", "object"]),
    ] {
        let reply = h.post("/v2/login", Some(KEY_A), bad.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "INVALID_PARAMS", "{bad}");
        assert!(!String::from_utf8_lossy(&reply.body).contains(password));
    }
    assert_eq!(
        h.post("/v2/login", None, login("a@example.com"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.get("/v2/login", Some(KEY_A)).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(h.sim.credits_total(), credits);
}

#[tokio::test]
async fn a_checkpoint_completes_a_login_that_asked_for_one() {
    let h = start(config().with_checkpoint("Check.Me@example.com")).await;
    let login = json!({"platform": "linkedin", "email": "check.me@example.com",
                       "password": "pw-123456789"});
    let started = h.post("/v2/login", Some(KEY_A), login.clone()).await.json();
    let account = started["data"]["account_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(started["data"]["status"], "checkpoint_required");
    assert_eq!(started["data"]["challenge_type"], "email_pin");
    assert_eq!(started["metadata"]["credits_consumed"], 1);
    // Not connected yet.
    assert!(!h.sim.accounts_for("alpha").contains(&account));
    assert_eq!(
        h.viewers(KEY_A, &account, json!({})).await.error_code(),
        "INVALID_ACCOUNT"
    );

    let checkpoint = |code: &str| json!({"account_id": account, "code": code});
    let wrong = h
        .post("/v2/checkpoint", Some(KEY_A), checkpoint("000000"))
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.error_code(), "INVALID_PARAMS");
    assert!(!String::from_utf8_lossy(&wrong.body).contains("000000"));
    let missing = h
        .post(
            "/v2/checkpoint",
            Some(KEY_A),
            json!({"account_id": account}),
        )
        .await;
    assert_eq!(missing.error_code(), "INVALID_PARAMS");
    // Another key cannot complete it.
    let foreign = h
        .post("/v2/checkpoint", Some(KEY_B), checkpoint("123456"))
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign.error_code(), "INVALID_ACCOUNT");
    assert_eq!(h.sim.writes("checkpoint", &account, &account), 0);

    let done = h
        .post("/v2/checkpoint", Some(KEY_A), checkpoint("123456"))
        .await;
    assert_eq!(done.status, StatusCode::OK);
    let body = done.json();
    assert_eq!(body["data"]["status"], "connected");
    assert_eq!(body["data"]["account_id"], account.as_str());
    assert_eq!(body["metadata"]["action"], "checkpoint");
    assert_eq!(body["metadata"]["credits_consumed"], 0);
    assert!(h.sim.accounts_for("alpha").contains(&account));
    assert_eq!(
        h.viewers(KEY_A, &account, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(h.sim.writes("checkpoint", &account, &account), 1);
    assert_eq!(h.sim.writes("login", &account, "check.me@example.com"), 1);

    // Once connected, a login is free; the challenge type asked for is kept.
    let again = h.post("/v2/login", Some(KEY_A), login).await.json();
    assert_eq!(again["data"]["status"], "connected");
    assert_eq!(again["metadata"]["credits_consumed"], 0);
    let mut config = config().with_checkpoint("sms@example.com");
    config.checkpoint_code = "4242".to_owned();
    let h2 = start(config).await;
    let sms = json!({"platform": "linkedin", "email": "sms@example.com",
                     "password": "pw", "challenge_type": "sms_pin"});
    let started = h2.post("/v2/login", Some(KEY_A), sms).await.json();
    assert_eq!(started["data"]["challenge_type"], "sms_pin");
    let account = started["data"]["account_id"].clone();
    let default_code = json!({"account_id": account, "code": "123456"});
    let configured_code = json!({"account_id": account, "code": "4242"});
    assert_eq!(
        h2.post("/v2/checkpoint", Some(KEY_A), default_code)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h2.post("/v2/checkpoint", Some(KEY_A), configured_code)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn writes_are_counted_per_action_account_and_target() {
    let h = start(config()).await;
    let profile = "https://www.linkedin.com/in/janedoe";
    let post = "https://www.linkedin.com/feed/update/urn:li:activity:1";
    let invite = json!({"profile_url": profile, "message": "Hi Jane"});
    for _ in 0..2 {
        let reply = h
            .act(KEY_B, ("network", "invite"), ACCOUNT_B, invite.clone())
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let send = json!({"conversation_id": "2-abc", "message": "Hello"});
    let first = h
        .act(KEY_B, ("messages", "send"), ACCOUNT_B, send.clone())
        .await
        .json();
    let second = h
        .act(KEY_B, ("messages", "send"), ACCOUNT_B, send)
        .await
        .json();
    assert_eq!(first["data"]["conversation_id"], "2-abc");
    assert_ne!(
        first["data"]["message_id"], second["data"]["message_id"],
        "a second send is a second message"
    );
    let to_profile = json!({"profile_url": profile, "message": "Hello"});
    h.act(KEY_B, ("messages", "send"), ACCOUNT_B, to_profile)
        .await;
    let comment = json!({"post_url": post, "text": "Congrats!"});
    h.act(KEY_B, ("content", "comment"), ACCOUNT_B, comment.clone())
        .await;
    // Refused writes are not performed, so not counted.
    h.act(
        KEY_B,
        ("content", "comment"),
        ACCOUNT_B,
        json!({"post_url": post}),
    )
    .await;
    h.act(KEY_A, ("content", "comment"), ACCOUNT_B, comment)
        .await;
    // Reads are not writes.
    h.act(KEY_B, ("messages", "list_inbox"), ACCOUNT_B, json!({}))
        .await;

    assert_eq!(h.sim.writes("invite", ACCOUNT_B, profile), 2);
    assert_eq!(h.sim.writes("send", ACCOUNT_B, "2-abc"), 2);
    assert_eq!(h.sim.writes("send", ACCOUNT_B, profile), 1);
    assert_eq!(h.sim.writes("comment", ACCOUNT_B, post), 1);
    assert_eq!(h.sim.writes("comment", ACCOUNT_A, post), 0);
    assert_eq!(h.sim.writes_total(), 6);
    let stats = h.sim.stats();
    let writes: Vec<(&str, &str, u64)> = stats
        .writes
        .iter()
        .map(|w| (w.action.as_str(), w.target.as_str(), w.count))
        .collect();
    assert_eq!(
        writes,
        [
            ("comment", post, 1),
            ("invite", profile, 2),
            ("send", "2-abc", 2),
            ("send", profile, 1),
        ]
    );
    assert!(stats.writes.iter().all(|w| w.account_id == ACCOUNT_B));
    let over_http: SimStats =
        serde_json::from_slice(&h.control(Method::GET, "/_sim/stats", None).await.body)
            .expect("stats json");
    assert_eq!(over_http.writes, stats.writes);
    h.sim.reset_stats();
    assert_eq!(h.sim.writes_total(), 0);
    assert!(h.sim.stats().writes.is_empty());
}

#[tokio::test]
async fn cut_short_sends_half_of_a_billed_answer() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::new(FaultKind::CutShort).times(1));
    let body = json!({"account_id": ACCOUNT_A, "action": "get_viewers", "params": {"count": 50}});
    let (head, received) = raw_post(h.sim.addr(), "/v2/profiles", KEY_A, &body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let announced = content_length(&head);
    assert!(
        !received.is_empty() && received.len() < announced,
        "{} of {announced} bytes",
        received.len()
    );
    // The work was done and billed: 50 results, 5 credits.
    assert_eq!(h.sim.credits_for("alpha"), 5);
    assert_eq!(h.sim.stats().faults_applied, 1);
    assert!(h.sim.current_fault().is_none());

    // A client sees an incomplete body; a write under the fault was performed.
    h.sim.set_fault(Fault::new(FaultKind::CutShort).times(1));
    let invite = json!({"account_id": ACCOUNT_A, "action": "invite",
                        "params": {"profile_url": "https://www.linkedin.com/in/x"}});
    let err = h.send_broken("/v2/network", KEY_A, &invite).await;
    assert!(!err.contains(KEY_A));
    assert_eq!(
        h.sim
            .writes("invite", ACCOUNT_A, "https://www.linkedin.com/in/x"),
        1
    );
    assert_eq!(h.sim.credits_for("alpha"), 6);

    // A refused call is answered normally and does not use the fault up.
    h.control(
        Method::POST,
        "/_sim/fault",
        Some(json!({"kind": {"type": "cut_short"}, "times": 1})),
    )
    .await;
    let refused = h.viewers(KEY_A, ACCOUNT_A, json!({"count": 0})).await;
    assert_eq!(refused.error_code(), "INVALID_PARAMS");
    assert!(h.sim.current_fault().is_some());
}

#[tokio::test]
async fn oversized_answers_are_valid_json_past_the_limit_and_billed() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::new(FaultKind::oversized()).times(1));
    let reply = h.viewers(KEY_A, ACCOUNT_A, json!({"count": 20})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.len() > 9_437_184, "{}", reply.body.len());
    let body = reply.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["viewers"].as_array().map(Vec::len), Some(20));
    assert_eq!(body["metadata"]["credits_consumed"], 2);
    assert_eq!(h.sim.credits_for("alpha"), 2);

    let set = h
        .control(
            Method::POST,
            "/_sim/fault",
            Some(json!({"kind": {"type": "oversized", "bytes": 20000}, "times": 1})),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    let reply = h.viewers(KEY_A, ACCOUNT_A, json!({})).await;
    assert!(reply.body.len() > 20_000 && reply.body.len() < 21_000);
    assert_eq!(reply.json()["success"], true);
    assert_eq!(h.sim.credits_for("alpha"), 3);
}

#[tokio::test]
async fn echo_key_errors_carry_the_key_and_cost_nothing() {
    const KEY_MIXED: &str = "sk-Gamma-SECRET-Key";
    let h = start(config().with_key(SimKey::new("gamma", KEY_MIXED, ["acct-gamma"]))).await;
    let invite = json!({"profile_url": "https://www.linkedin.com/in/x"});
    for (variant, echoed) in [
        (EchoVariant::Exact, KEY_MIXED.to_owned()),
        (EchoVariant::Lower, KEY_MIXED.to_lowercase()),
        (
            EchoVariant::MinusOne,
            KEY_MIXED[..KEY_MIXED.len() - 1].to_owned(),
        ),
    ] {
        h.sim
            .set_fault(Fault::new(FaultKind::echo_key(variant)).times(1));
        let reply = h
            .act(
                KEY_MIXED,
                ("network", "invite"),
                "acct-gamma",
                invite.clone(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{variant:?}"
        );
        let body = reply.json();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], echoed.as_str(), "{variant:?}");
        assert_eq!(
            body["error"]["message"],
            format!("key {echoed} is not allowed here")
        );
        assert_eq!(body["metadata"]["credits_consumed"], 0);
    }
    let set = h
        .control(
            Method::POST,
            "/_sim/fault",
            Some(json!({"kind": {"type": "echo_key", "variant": "lower", "status": 502}})),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    let reply = h.viewers(KEY_MIXED, "acct-gamma", json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), KEY_MIXED.to_lowercase());
    // Not executed, not billed, nothing written; the key is not in the stats.
    assert_eq!(h.sim.credits_total(), 0);
    assert_eq!(h.sim.writes_total(), 0);
    let stats = h.control(Method::GET, "/_sim/stats", None).await;
    assert!(
        !String::from_utf8_lossy(&stats.body)
            .to_lowercase()
            .contains("gamma-secret")
    );
}

#[tokio::test]
async fn reset_after_execute_drops_a_billed_answer() {
    let h = start(config()).await;
    h.sim
        .set_fault(Fault::new(FaultKind::ResetAfterExecute).times(1));
    let invite = json!({"account_id": ACCOUNT_A, "action": "invite",
                        "params": {"profile_url": "https://www.linkedin.com/in/y"}});
    h.send_broken("/v2/network", KEY_A, &invite).await;
    assert_eq!(
        h.sim
            .writes("invite", ACCOUNT_A, "https://www.linkedin.com/in/y"),
        1
    );
    assert_eq!(h.sim.credits_for("alpha"), 1);
    // The next call is answered normally on a new connection.
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(h.sim.credits_for("alpha"), 2);
}

#[tokio::test]
async fn hang_after_execute_bills_and_never_answers() {
    let h = start(config()).await;
    h.sim.set_fault(Fault::new(FaultKind::HangAfterExecute));
    let target = "https://www.linkedin.com/feed/update/urn:li:activity:9";
    let comment = h.action_request(
        "/v2/content",
        Some(KEY_A),
        &json!({"account_id": ACCOUNT_A, "action": "comment",
                "params": {"post_url": target, "text": "Nice"}}),
    );
    let client = h.client.clone();
    let in_flight = tokio::spawn(async move { client.request(comment).await });
    assert!(
        eventually(|| h.sim.writes("comment", ACCOUNT_A, target) == 1).await,
        "the comment was never performed"
    );
    assert_eq!(h.sim.credits_for("alpha"), 1);
    assert!(!in_flight.is_finished(), "a hung reply must not arrive");
    h.sim.shutdown();
    let ended = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("shutdown ends hung replies")
        .expect("task");
    assert!(ended.is_err(), "a hung reply gets no answer");
}

#[tokio::test]
async fn a_fault_can_target_one_account() {
    let h = start(config()).await;
    let admin = "sk-admin-secret";
    h.sim.set_fault(
        Fault::new(FaultKind::InternalError)
            .for_account(ACCOUNT_A)
            .times(1),
    );
    // Other accounts, and calls naming no account, are served normally and
    // do not use the fault up.
    assert_eq!(
        h.viewers(admin, ACCOUNT_B, json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/v2/accounts", Some(admin)).await.status,
        StatusCode::OK
    );
    assert_eq!(h.sim.current_fault().and_then(|f| f.times), Some(1));
    let faulted = h.viewers(admin, ACCOUNT_A, json!({})).await;
    assert_eq!(faulted.error_code(), "INTERNAL_ERROR");
    assert_eq!(
        h.viewers(admin, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );

    // Over HTTP, with an after-execute fault: only acct-beta's reply is lost.
    let set = h
        .control(
            Method::POST,
            "/_sim/fault",
            Some(json!({"kind": {"type": "reset_after_execute"}, "account_id": ACCOUNT_B})),
        )
        .await;
    assert_eq!(set.status, StatusCode::NO_CONTENT);
    let current = h.control(Method::GET, "/_sim/fault", None).await.json();
    assert_eq!(current["account_id"], ACCOUNT_B);
    assert_eq!(
        h.viewers(KEY_A, ACCOUNT_A, json!({})).await.status,
        StatusCode::OK
    );
    let body = json!({"account_id": ACCOUNT_B, "action": "get_viewers"});
    h.send_broken("/v2/profiles", KEY_B, &body).await;
    assert_eq!(h.sim.credits_for("beta"), 1, "executed and billed");
    // Faults on a detail call match its account.
    h.sim
        .set_fault(Fault::new(FaultKind::Reset).for_account(ACCOUNT_A));
    assert_eq!(
        h.get("/v2/accounts/acct-beta", Some(KEY_B)).await.status,
        StatusCode::OK
    );
    let detail = h
        .request(Method::GET, "/v2/accounts/acct-alpha", Some(KEY_A))
        .body(Full::default())
        .expect("request");
    assert!(
        tokio::time::timeout(PATIENCE, h.try_send(detail))
            .await
            .expect("in time")
            .is_err()
    );
}
