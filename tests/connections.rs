//! Connections that pooled clients keep: `server.idle_timeout_ms` against
//! `server.header_timeout_ms`, over HTTP/1.1 and h2c, on real sockets.
//!
//! The timeouts are made small (a few hundred milliseconds) so nothing waits
//! a minute. Time does have to pass for a timeout to matter, so the waits
//! here are real; each is bounded, and assertions are about order and
//! outcome (still open after the header timeout, closed cleanly after the
//! idle one), with generous upper bounds that a loaded machine keeps.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{exchange, post, read_until_closed, world};
use common::{World, viewers};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use viewgate::sim::Fault;

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(10);

/// Reads one HTTP/1.1 response (head and content-length body) off `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let left = SOON.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("closed before a whole response: {text:?}"),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e} before a whole response: {text:?}"),
            Err(_) => panic!("no whole response within {SOON:?}: {text:?}"),
        }
    }
}

/// How the server ended a connection the client kept open.
#[derive(Debug, PartialEq)]
enum End {
    /// A clean close (FIN): what a keep-alive client expects between requests.
    Eof,
    /// A reset.
    Reset,
    /// Still open at the deadline.
    Open,
}

async fn wait_for_end(stream: &mut TcpStream, within: Duration) -> End {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) => End::Eof,
        Ok(Ok(n)) => panic!(
            "unexpected bytes from an idle connection: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(_)) => End::Reset,
        Err(_) => End::Open,
    }
}

/// An h2c connection: the request handle and the connection's own task,
/// which ends `Ok` when the server closes it gracefully (GOAWAY).
async fn h2c(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(connection))
}

/// One request over h2: its status and body.
async fn h2_request(
    send: &h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Option<String>,
) -> (u16, String) {
    let mut ready = send
        .clone()
        .ready()
        .await
        .expect("the connection takes a stream");
    let (response, mut stream) = ready.send_request(request, body.is_none()).unwrap();
    if let Some(body) = body {
        stream.send_data(Bytes::from(body), true).unwrap();
    }
    let response = tokio::time::timeout(SOON, response)
        .await
        .expect("answered")
        .unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn h2_not_found(w: &World) -> http::Request<()> {
    http::Request::get(format!("http://{}/nope", w.server.addr()))
        .body(())
        .unwrap()
}

fn h2_viewers(w: &World) -> http::Request<()> {
    http::Request::post(format!("http://{}/v2/profiles", w.server.addr()))
        .header("x-api-key", w.key("crm"))
        .header("content-type", "application/json")
        .body(())
        .unwrap()
}

/// Waits for an h2c connection's task: `Ok` when the server sent GOAWAY and
/// closed, anything else is a failure the message explains.
async fn h2_closed_gracefully(connection: JoinHandle<Result<(), h2::Error>>) {
    let ended = tokio::time::timeout(SOON, connection)
        .await
        .expect("the idle h2c connection was not closed");
    ended
        .unwrap()
        .expect("the server closed the h2c connection without a clean GOAWAY");
}

/// Regression: an idle keep-alive HTTP/1.1 connection was cut by the header
/// timeout (hyper's header timer runs while a connection waits for its next
/// request), so a pooled client's next POST met a closed socket.
#[tokio::test]
async fn a_connection_idle_past_the_header_timeout_is_still_usable() {
    let w = World::start(world(
        "  header_timeout_ms: 200\n  idle_timeout_ms: 30000\n",
    ))
    .await;
    let addr = w.server.addr();
    let header_timeout = Duration::from_millis(200);
    // Raw HTTP/1.1: the same socket, before and after a quiet spell.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(post(&w, "", &viewers("acc-1", 0, 10)).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut raw).await.starts_with("HTTP/1.1 200"));
    // A pooled client (hyper's, one connection) and an h2c client, both quiet too.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut pooled, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let pooled_post = |account: &str| {
        http::Request::post(format!("http://{addr}/v2/profiles"))
            .header("host", addr.to_string())
            .header("x-api-key", w.key("crm"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(viewers(account, 0, 10))))
            .unwrap()
    };
    let first = pooled.send_request(pooled_post("acc-2")).await.unwrap();
    assert_eq!(first.status(), 200);
    first.into_body().collect().await.unwrap();
    let (h2, h2_connection) = h2c(addr).await;
    assert_eq!(h2_request(&h2, h2_not_found(&w), None).await.0, 404);

    // Well past the header timeout, well within the idle one.
    tokio::time::sleep(header_timeout * 4).await;

    raw.write_all(post(&w, "", &viewers("acc-1", 0, 10)).as_bytes())
        .await
        .unwrap();
    let again = read_response(&mut raw).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert!(again.contains("x-cache: HIT"), "{again}");
    pooled
        .ready()
        .await
        .expect("the pooled connection is still open");
    let second = pooled.send_request(pooled_post("acc-2")).await.unwrap();
    assert_eq!(second.status(), 200);
    let (status, body) = h2_request(&h2, h2_viewers(&w), Some(viewers("acc-1", 0, 10))).await;
    assert_eq!(status, 200, "{body}");
    assert!(!h2_connection.is_finished());
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_cleanly_after_the_idle_timeout() {
    let idle = Duration::from_millis(400);
    let w = World::start(world("  header_timeout_ms: 200\n  idle_timeout_ms: 400\n")).await;
    let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
    // Taken before the last request is sent: the server's idle time starts
    // only once that answer has gone out, so no close can come sooner than
    // `idle` after this, however late this test task runs.
    let mut last_sent = Instant::now();
    for account in ["acc-1", "acc-2"] {
        last_sent = Instant::now();
        stream
            .write_all(post(&w, "", &viewers(account, 0, 10)).as_bytes())
            .await
            .unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    }
    // Between requests: a FIN, no reset, no stray bytes.
    assert_eq!(wait_for_end(&mut stream, SOON).await, End::Eof);
    assert!(
        last_sent.elapsed() >= idle,
        "closed {:?} after the last request was sent, before the idle timeout",
        last_sent.elapsed()
    );
    // Later clients are served as usual.
    assert_eq!(
        w.post(Some("crm"), &viewers("acc-1", 0, 10)).await.status,
        200
    );
}

#[tokio::test]
async fn an_idle_h2c_connection_gets_a_goaway_after_the_idle_timeout() {
    let idle = Duration::from_millis(400);
    let w = World::start(world("  header_timeout_ms: 200\n  idle_timeout_ms: 400\n")).await;
    let (send, connection) = h2c(w.server.addr()).await;
    // Before the request: the stream's end, where idle time starts, is later.
    let sent = Instant::now();
    assert_eq!(h2_request(&send, h2_not_found(&w), None).await.0, 404);
    h2_closed_gracefully(connection).await;
    assert!(
        sent.elapsed() >= idle,
        "closed {:?} after the request was sent, before the idle timeout",
        sent.elapsed()
    );
    let refused = send.ready().await.expect_err("no new stream after GOAWAY");
    assert!(refused.is_go_away(), "{refused}");
    assert_eq!(refused.reason(), Some(h2::Reason::NO_ERROR));
}

#[tokio::test]
async fn a_request_in_flight_longer_than_the_idle_timeout_keeps_its_connection() {
    let w = World::start(world("  header_timeout_ms: 200\n  idle_timeout_ms: 300\n")).await;
    // Each upstream call takes 1.2 s: four idle timeouts.
    w.sim.set_fault(Fault::latency(1_200));
    let (send, connection) = h2c(w.server.addr()).await;
    let started = Instant::now();
    let (status, body) = h2_request(&send, h2_viewers(&w), Some(viewers("acc-1", 0, 10))).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1_200));
    // The same over HTTP/1.1.
    let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
    stream
        .write_all(post(&w, "", &viewers("acc-2", 0, 10)).as_bytes())
        .await
        .unwrap();
    let reply = read_response(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Once nothing is in flight, both are closed for idling.
    h2_closed_gracefully(connection).await;
    assert_eq!(wait_for_end(&mut stream, SOON).await, End::Eof);
}

#[tokio::test]
async fn slow_headers_of_a_next_request_are_cut_at_the_header_timeout() {
    let header_timeout = Duration::from_millis(300);
    let w = World::start(world(
        "  header_timeout_ms: 300\n  idle_timeout_ms: 60000\n",
    ))
    .await;
    let mut stream = TcpStream::connect(w.server.addr()).await.unwrap();
    stream
        .write_all(post(&w, "", &viewers("acc-1", 0, 10)).as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // The next request's head trickles in, a byte every 50 ms: 2 s in all.
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for &b in b"POST /v2/profiles HTTP/1.1\r\nx-slow: aaaaaaaaaaaa".iter() {
            if writer.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started
    });
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(SOON, reader.read_to_end(&mut rest)).await;
    let cut_at = Instant::now();
    assert!(ended.is_ok(), "trickling headers kept the connection open");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let trickle_started = trickle.await.unwrap();
    // Cut by the header timeout (60 s of idle timeout would not cut it yet).
    assert!(cut_at.duration_since(trickle_started) >= header_timeout);
}

/// Regression: idle HTTP/2 connections were never closed; 20 h2c connections
/// that had each sent one request held a gateway with `max_connections: 20`
/// full for good.
#[tokio::test]
async fn idle_connections_give_their_max_connections_slots_back() {
    let w = World::start(world(
        "  header_timeout_ms: 200\n  idle_timeout_ms: 400\n  max_connections: 20\n",
    ))
    .await;
    let addr = w.server.addr();
    let mut h1 = Vec::new();
    for i in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(post(&w, "", &viewers("acc-1", 0, 10 + i)).as_bytes())
            .await
            .unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        h1.push(stream);
    }
    let mut h2 = Vec::new();
    for _ in 0..10 {
        let (send, connection) = h2c(addr).await;
        assert_eq!(h2_request(&send, h2_not_found(&w), None).await.0, 404);
        h2.push((send, connection));
    }
    let one_more = || async {
        exchange(
            addr,
            post(&w, "connection: close\r\n", &viewers("acc-1", 0, 10)).as_bytes(),
        )
        .await
    };
    // All 20 slots are taken: one more connection is refused, unless an idle
    // one has already been closed (then its slot was rightly given back).
    let got = one_more().await;
    if !got.bytes.is_empty() {
        let h2_closed = h2.iter().filter(|(_, c)| c.is_finished()).count();
        let mut h1_closed = 0;
        for s in &mut h1 {
            let mut buf = [0u8; 1];
            match s.try_read(&mut buf) {
                Ok(0) => h1_closed += 1,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => h1_closed += 1,
                _ => {}
            }
        }
        assert!(
            h1_closed + h2_closed > 0,
            "a 21st connection was served while 20 were open: {}",
            got.text()
        );
    }
    // The clients keep their sockets; the gateway closes them once idle, and
    // a new connection is served again.
    let deadline = Instant::now() + SOON;
    loop {
        let got = one_more().await;
        if got.status_line().starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot came back: {:?}",
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, connection) in h2 {
        h2_closed_gracefully(connection).await;
    }
    for mut stream in h1 {
        assert_eq!(wait_for_end(&mut stream, SOON).await, End::Eof);
    }
}

/// A connection that never sends a whole first request is still closed at
/// the header timeout, not the (longer) idle timeout.
#[tokio::test]
async fn a_silent_new_connection_is_closed_at_the_header_timeout() {
    let w = World::start(world(
        "  header_timeout_ms: 300\n  idle_timeout_ms: 60000\n",
    ))
    .await;
    let mut silent = TcpStream::connect(w.server.addr()).await.unwrap();
    let mut half = TcpStream::connect(w.server.addr()).await.unwrap();
    half.write_all(b"POST /v2/profiles HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut half] {
        let got = read_until_closed(stream, SOON).await;
        assert!(got.closed, "still open: {}", got.text());
        assert!(got.bytes.is_empty(), "{}", got.text());
    }
}
