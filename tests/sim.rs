//! The simulator over a real socket: start it on 127.0.0.1:0, talk to it with
//! a plain hyper client, and check it plays the V2 contract, bills and counts
//! as documented, and misbehaves on demand.

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
use viewgate::sim::{Fault, FaultKind, SimConfig, SimHandle, SimKey, SimStats, Simulator};

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
    assert_eq!(
        body["data"]["accounts"],
        json!([
            {"account_id": ACCOUNT_A, "status": "active"},
            {"account_id": "acct-sleepy", "status": "inactive"}
        ])
    );
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
