//! Hostile clients on real sockets: slowloris, header floods, connection
//! floods, request smuggling, injection through ids, and oversized bodies.
//!
//! Everything goes through raw `TcpStream`s so the bytes on the wire are
//! exactly the attacker's. Every read has a deadline and every loop a bound;
//! the only waits are the listener's own header timeout (real time, set to
//! a few hundred milliseconds), which no fake clock can drive.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::raw::{exchange, post, read_until_closed, world};
use common::{World, WorldSpec, viewers};
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Each log line is one JSON object; returns them.
fn log_lines() -> Vec<Value> {
    common::logs()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

// ---- slowloris -------------------------------------------------------------------

#[tokio::test]
async fn slowloris_headers_are_cut_off_while_others_are_served() {
    let w = World::start(world("  header_timeout_ms: 300\n")).await;
    let stream = TcpStream::connect(w.server.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Headers trickle in, one byte every 50 ms: 40 bytes would take 2 s.
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"POST /v2/profiles HTTP/1.1\r\n").await;
        for &b in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Meanwhile another client gets its page, on a pooled connection that
    // the last request below reuses after it idled past the header timeout
    // (tests/connections.rs has the idle timeout's own tests).
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-api-key", w.key("crm").to_string()),
    ];
    let reply = w
        .request(
            Method::POST,
            "/v2/profiles",
            &headers,
            &viewers("acc-1", 0, 10),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "slow headers kept the connection open");
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "closed only after {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text:?}");
    trickle.abort();
    // The gateway still answers afterwards.
    let reply = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(reply.header("x-cache"), Some("HIT"));
}

/// design.md: "viewgate closes connections whose headers do not arrive within
/// `server.header_timeout_ms`". Regression: a client that connected and sent
/// nothing, or only the first bytes of the HTTP/2 preface, or the whole
/// preface and no request, was never closed (the protocol sniffing before
/// the HTTP/1 header timer had no deadline, and HTTP/2 has no header timer),
/// so `server.max_connections` silent sockets could lock every client out.
#[tokio::test]
async fn silent_connections_are_closed_after_the_header_timeout() {
    let w = World::start(world(
        "  header_timeout_ms: 300
  max_connections: 30
",
    ))
    .await;
    let addr = w.server.addr();
    let mut attackers = Vec::new();
    for i in 0..30 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(),
            _ => s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                .await
                .unwrap(),
        }
        attackers.push(s);
    }
    let probes = attackers
        .iter_mut()
        .map(|s| async move { read_until_closed(s, Duration::from_secs(3)).await.closed });
    let closed: Vec<bool> = futures_util::future::join_all(probes).await;
    let kinds = [
        "silent",
        "half an HTTP/2 preface",
        "an HTTP/2 preface, no request",
    ];
    let still_open: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            (
                kind,
                closed.iter().skip(i).step_by(3).filter(|c| !**c).count(),
            )
        })
        .filter(|(_, open)| *open > 0)
        .map(|(kind, open)| format!("{open}/10 {kind}"))
        .collect();
    assert!(
        still_open.is_empty(),
        "still open after 3 s: {still_open:?}"
    );
    let got = exchange(
        addr,
        post(&w, "connection: close\r\n", &viewers("acc-1", 0, 10)).as_bytes(),
    )
    .await;
    assert!(
        got.status_line().starts_with("HTTP/1.1 200"),
        "{}",
        got.text()
    );
}

// ---- header floods ------------------------------------------------------------------

#[tokio::test]
async fn header_floods_over_16_kib_get_431() {
    let w = World::start(world("")).await;
    let addr = w.server.addr();
    // One huge header, then many ordinary ones adding up past 16 KiB.
    let huge = format!("x-filler: {}\r\n", "y".repeat(17 * 1024));
    let many: String = (0..90)
        .map(|i| format!("x-pad-{i}: {}\r\n", "z".repeat(200)))
        .collect();
    for extra in [huge, many] {
        let raw = post(&w, &extra, &viewers("acc-1", 0, 10));
        let got = exchange(addr, raw.as_bytes()).await;
        assert!(
            got.status_line().starts_with("HTTP/1.1 431"),
            "{:?}",
            got.status_line()
        );
        assert!(got.closed, "the connection stays open after a 431");
    }
    // Just under the limit is a normal request.
    let fine = format!("x-filler: {}\r\n", "y".repeat(12 * 1024));
    let got = exchange(
        addr,
        post(
            &w,
            &format!("{fine}connection: close\r\n"),
            &viewers("acc-1", 0, 10),
        )
        .as_bytes(),
    )
    .await;
    assert!(
        got.status_line().starts_with("HTTP/1.1 200"),
        "{}",
        got.text()
    );
    assert_eq!(w.sim.calls_total(), 1);
}

// ---- request smuggling ------------------------------------------------------------------

/// A valid request with a marker id: if it is ever processed, logs say so.
fn smuggled(w: &World, marker: &str) -> String {
    post(
        w,
        &format!("x-request-id: {marker}\r\n"),
        &viewers("acc-smuggled", 0, 10),
    )
}

fn processed(marker: &str) -> bool {
    common::logs().contains(marker)
}

#[tokio::test]
async fn conflicting_framing_is_refused_and_closes_the_connection() {
    let w = World::start(world("")).await;
    let addr = w.server.addr();
    let head = |framing: &str| {
        format!(
            "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\n{framing}\r\n",
            w.key("crm")
        )
    };
    let body = viewers("acc-1", 0, 10);
    let cases: Vec<(&str, String)> = vec![
        (
            "two content-lengths",
            format!(
                "{}{body}",
                head(&format!(
                    "content-length: {}\r\ncontent-length: {}\r\n",
                    body.len(),
                    body.len() + 5
                ))
            ),
        ),
        (
            "a content-length list",
            format!(
                "{}{body}",
                head(&format!("content-length: {}, 7\r\n", body.len()))
            ),
        ),
        (
            "a signed content-length",
            format!(
                "{}{body}",
                head(&format!("content-length: +{}\r\n", body.len()))
            ),
        ),
        (
            "chunked then identity",
            format!(
                "{}{:x}\r\n{body}\r\n0\r\n\r\n",
                head("transfer-encoding: chunked, identity\r\n"),
                body.len()
            ),
        ),
        (
            "identity alone",
            format!("{}{body}", head("transfer-encoding: identity\r\n")),
        ),
        (
            "two transfer-encodings, last not chunked",
            format!(
                "{}{body}",
                head("transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n")
            ),
        ),
        (
            "a misspelt coding",
            format!("{}{body}", head("transfer-encoding: xchunked\r\n")),
        ),
        (
            "space before the colon",
            format!(
                "{}{:x}\r\n{body}\r\n0\r\n\r\n",
                head("transfer-encoding : chunked\r\n"),
                body.len()
            ),
        ),
        (
            "transfer-encoding in HTTP/1.0",
            format!(
                "{}{:x}\r\n{body}\r\n0\r\n\r\n",
                head("transfer-encoding: chunked\r\n").replacen("HTTP/1.1", "HTTP/1.0", 1),
                body.len()
            ),
        ),
    ];
    for (i, (name, first)) in cases.into_iter().enumerate() {
        let marker = format!("smuggled-{i}");
        let raw = format!("{first}{}", smuggled(&w, &marker));
        let got = exchange(addr, raw.as_bytes()).await;
        assert!(
            got.status_line().starts_with("HTTP/1.1 400"),
            "{name}: {:?}",
            got.text()
        );
        assert!(got.closed, "{name}: the connection stayed open");
        assert_eq!(got.responses(), 1, "{name}: {}", got.text());
        assert!(
            !processed(&marker),
            "{name}: the second request was processed"
        );
    }
    assert_eq!(w.sim.calls_total(), 0);
}

/// Content-Length and Transfer-Encoding together: hyper frames the body by
/// the chunked encoding alone (RFC 9112 §6.1 allows it) and then MUST close
/// the connection, so whatever hides after the chunked body is never read
/// as a request. The classic CL.TE shape gets 400 (its chunked body is empty).
#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunks_then_closed() {
    let w = World::start(world("")).await;
    let addr = w.server.addr();
    let body = viewers("acc-1", 0, 10);
    let head = |framing: &str| {
        format!(
            "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\n{framing}\r\n",
            w.key("crm")
        )
    };
    // CL.TE: a front end trusting Content-Length would forward the smuggled request.
    let marker = "smuggled-clte";
    let smuggle = smuggled(&w, marker);
    let raw = format!(
        "{}0\r\n\r\n{smuggle}",
        head(&format!(
            "content-length: {}\r\ntransfer-encoding: chunked\r\n",
            5 + smuggle.len()
        ))
    );
    let got = exchange(addr, raw.as_bytes()).await;
    assert!(
        got.status_line().starts_with("HTTP/1.1 400"),
        "{}",
        got.text()
    );
    assert_eq!(got.body_json()["error"]["code"], "INVALID_PARAMS");
    assert!(got.closed && got.responses() == 1, "{}", got.text());
    assert!(!processed(marker));
    // TE.CL, chunks holding a real call: answered, then closed.
    let marker = "smuggled-tecl";
    let raw = format!(
        "{}{:x}\r\n{body}\r\n0\r\n\r\n{}",
        head("transfer-encoding: chunked\r\ncontent-length: 4\r\n"),
        body.len(),
        smuggled(&w, marker)
    );
    let got = exchange(addr, raw.as_bytes()).await;
    assert!(
        got.status_line().starts_with("HTTP/1.1 200"),
        "{}",
        got.text()
    );
    assert!(got.closed && got.responses() == 1, "{}", got.text());
    assert!(!processed(marker));
    assert_eq!(w.sim.page_calls("acc-smuggled", 0, 10), 0);
}

// ---- injection through ids ------------------------------------------------------------

fn acceptable_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[tokio::test]
async fn control_characters_in_ids_never_reach_headers_or_break_log_lines() {
    let w = World::start(world("")).await;
    let addr = w.server.addr();
    let body = viewers("acc-1", 0, 10);
    // Request ids as raw header bytes (after `x-request-id: `).
    let ids: Vec<Vec<u8>> = vec![
        b"ok-id\r\nx-injected: yes".to_vec(),
        b"bare\nx-injected: lf".to_vec(),
        b"tab\there".to_vec(),
        b"has space".to_vec(),
        b"ctl\x01char".to_vec(),
        b"del\x7fchar".to_vec(),
        b"esc\x1b[31mred".to_vec(),
        b"nul\x00byte".to_vec(),
        b"obs\xff\xfetext".to_vec(),
        "utf8-\u{2028}-sep".as_bytes().to_vec(),
        vec![b'a'; 129],
        br#"quote"and\backslash"#.to_vec(),
    ];
    for id in &ids {
        let mut raw = format!(
            "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\nx-request-id: ",
            w.key("crm"),
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(id);
        raw.extend_from_slice(b"\r\n\r\n");
        raw.extend_from_slice(body.as_bytes());
        let got = exchange(addr, &raw).await;
        let shown = String::from_utf8_lossy(id);
        let status = got.status_line();
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.1 400"),
            "{shown:?}: {status:?}"
        );
        assert!(
            got.headers().iter().all(|(n, _)| n != "x-injected"),
            "{shown:?} injected a header: {}",
            got.text()
        );
        if status.starts_with("HTTP/1.1 200") {
            // The gateway answered: its id is safe, and not the hostile one.
            let echoed = got.header("x-request-id").expect("x-request-id");
            assert!(acceptable_id(&echoed), "{shown:?} → {echoed:?}");
            // A value that reached the gateway whole (no line break split it)
            // is unacceptable, so a generated id replaces it.
            if !id.contains(&b'\n') {
                assert!(
                    echoed.len() == 32 && echoed.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{shown:?} was echoed as {echoed:?}"
                );
            }
            let lines = log_lines();
            let line = lines
                .iter()
                .find(|l| l["request_id"] == echoed.as_str() && l["status"] == 200)
                .unwrap_or_else(|| panic!("no access log line for {echoed}"));
            assert_eq!(line["account_id"], "acc-1");
        }
    }
    // Account ids with control characters: 400, never in a header, logs intact.
    for account in [
        "acc\r\nx-injected: yes",
        "acc\u{0}",
        "acc\u{1b}[2J",
        "acc\u{7f}",
        "acc\u{2028}x",
        "acc\u{85}",
        "acc \"quoted\"",
    ] {
        let body = serde_json::json!({"account_id": account, "action": "get_viewers"}).to_string();
        let got = exchange(addr, post(&w, "connection: close\r\n", &body).as_bytes()).await;
        assert!(
            got.status_line().starts_with("HTTP/1.1 400"),
            "{account:?}: {}",
            got.text()
        );
        assert_eq!(got.body_json()["error"]["code"], "INVALID_PARAMS");
        for (name, value) in got.headers() {
            assert!(name != "x-injected", "{account:?}");
            assert!(!value.contains(account), "{account:?} in header {name}");
            assert!(
                value.bytes().all(|b| b >= 0x20 && b != 0x7f),
                "control character in header {name}: {value:?}"
            );
        }
        let id = got.header("x-request-id").expect("x-request-id");
        let lines = log_lines();
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no access log line for {id}"));
        assert_eq!(line["status"], 400);
        assert_eq!(line["error_code"], "INVALID_PARAMS");
    }
    // Every line written so far is still one JSON object.
    let _ = log_lines();
    assert_eq!(w.sim.calls_total(), 1);
}

// ---- oversized bodies -----------------------------------------------------------------

#[tokio::test]
async fn a_one_megabyte_account_id_is_refused_before_the_body_is_read() {
    let w = World::start(world("")).await;
    let addr = w.server.addr();
    let huge = "a".repeat(1024 * 1024);
    let body = format!(r#"{{"account_id":"{huge}","action":"get_viewers"}}"#);
    // Declared: 413 from the headers alone, after 1 KiB of the body was sent.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = post(&w, "", "");
    let head = head.replace(
        "content-length: 0",
        &format!("content-length: {}", body.len()),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..1024]).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(
        got.status_line().starts_with("HTTP/1.1 413"),
        "{}",
        got.text()
    );
    assert_eq!(got.body_json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Chunked, no length: refused once the limit is crossed, long before 1 MB.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        w.key("crm")
    );
    let chunks = body.as_bytes()[..128 * 1024].to_vec();
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        for piece in chunks.chunks(8 * 1024) {
            let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        // Never finished: the rest of the megabyte is not coming.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut answer))
        .await
        .expect("answered before the body ended")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    sender.abort();
    assert_eq!(w.sim.calls_total(), 0);
}

#[tokio::test]
async fn a_one_megabyte_account_id_within_the_body_limit_is_a_cheap_400() {
    let w = World::start(WorldSpec {
        max_body_bytes: 2 * 1024 * 1024,
        ..world("")
    })
    .await;
    let huge = "a".repeat(1024 * 1024);
    let body = format!(r#"{{"account_id":"{huge}","action":"get_viewers"}}"#);
    let started = Instant::now();
    let reply = w.post(Some("crm"), &body).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.code(), "INVALID_PARAMS");
    assert!(
        !reply.text().contains("aaaaaaaaaa"),
        "the id is echoed back"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(w.sim.calls_total(), 0);
    let _ = log_lines();
}

#[tokio::test]
async fn deeply_nested_params_are_a_400_not_a_crash() {
    // Each level of params is walked by a parser of its own (see
    // `unambiguous`): unbounded, 100,000 levels overflowed the thread's stack
    // and aborted the whole process (found by the red team at 10,000).
    let w = World::start(WorldSpec {
        max_body_bytes: 512 * 1024,
        ..world("")
    })
    .await;
    let depth = 100_000;
    let body = format!(
        r#"{{"account_id":"acc-1","action":"search_people","params":{{"x":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let reply = w.post(Some("crm"), &body).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.code(), "INVALID_PARAMS");
    assert!(reply.text().contains("nest deeper"), "{}", reply.text());
    // Still serving, and nothing was sent upstream for the refused call.
    assert_eq!(w.sim.calls_total(), 0);
    let page = w.post(Some("crm"), &viewers("acc-1", 0, 10)).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(w.sim.calls_total(), 1);
    let _ = log_lines();
}

// ---- refusals before the body is read ------------------------------------------------

/// Reads one HTTP/1.1 response (head and content-length body) off `stream`;
/// `None` if the connection closed first.
async fn one_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return Some((head, body));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no whole response within 10 s: {buf:?}");
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no whole response within 10 s: {buf:?}"),
        }
    }
}

#[tokio::test]
async fn a_refusal_before_the_body_keeps_the_connection_or_says_it_closes() {
    // Found by the red team: a 403 sent before the body arrived closed the
    // keep-alive connection without `connection: close`, so a pooled
    // client's next request failed.
    let w = World::start(world("")).await;
    let body = viewers("acc-1", 0, 10);
    let head = |key: &str| {
        format!(
            "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
    };
    let good = format!("{}{body}", head(w.key("crm")));

    // The body comes in a second write, right behind the headers: it is
    // read and discarded, and the connection serves the next request.
    let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
    stream
        .write_all(head("vg_not_a_key").as_bytes())
        .await
        .unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let (refused, _) = one_response(&mut stream).await.expect("a 403");
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    assert!(!refused.contains("connection: close"), "{refused}");
    stream.write_all(good.as_bytes()).await.unwrap();
    let (served, page) = one_response(&mut stream)
        .await
        .expect("the same connection serves on");
    assert!(served.starts_with("http/1.1 200"), "{served} {page}");

    // A client that waits for the answer before sending its body: the
    // refusal waits for the body a while, then answers and says it closes.
    let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
    stream
        .write_all(head("vg_not_a_key").as_bytes())
        .await
        .unwrap();
    let (refused, _) = one_response(&mut stream).await.expect("a 403");
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.write_all(good.as_bytes()).await;
    assert!(
        one_response(&mut stream).await.is_none(),
        "closed, as it said"
    );
    assert_eq!(
        w.sim.calls_total(),
        1,
        "only the served page called upstream"
    );
}
