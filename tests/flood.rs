//! A connection flood against `server.max_connections`, alone in its test
//! binary so the process's RSS measures this gateway and nothing else.

mod common;

use std::time::Duration;

use common::raw::{exchange, post, vm_rss_kib, world};
use common::{World, viewers};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_connection_flood_is_capped_and_the_gateway_recovers() {
    let w = World::start(world("  max_connections: 100\n")).await;
    let addr = w.server.addr();
    let rss_before = vm_rss_kib();
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Each idle connection is either closed by the gateway or held open.
    let probes = idle.iter_mut().map(|s| async move {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(1_500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    });
    let closed: Vec<bool> = futures_util::future::join_all(probes).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert!(
        open <= 100,
        "{open} connections held open, max_connections is 100"
    );
    assert!(open >= 90, "only {open} connections were kept");
    // The first ones got the slots, the later ones were closed at once.
    assert!(
        closed[250..].iter().all(|c| *c),
        "late connections were kept"
    );
    // While the slots are full, one more connection is closed at once.
    let got = exchange(addr, post(&w, "", &viewers("acc-1", 0, 10)).as_bytes()).await;
    assert!(got.closed && got.bytes.is_empty(), "{}", got.text());
    // The client lets some go; a normal request is served again.
    let mut kept: Vec<TcpStream> = idle
        .into_iter()
        .zip(closed)
        .filter(|(_, c)| !c)
        .map(|(s, _)| s)
        .collect();
    kept.truncate(kept.len() - 10);
    let mut served = None;
    for _ in 0..100 {
        let got = exchange(
            addr,
            post(&w, "connection: close\r\n", &viewers("acc-1", 0, 10)).as_bytes(),
        )
        .await;
        if !got.bytes.is_empty() {
            served = Some(got);
            break;
        }
        // The gateway notices the closed sockets asynchronously.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = served.expect("no request served after connections were freed");
    assert!(
        served.status_line().starts_with("HTTP/1.1 200"),
        "{}",
        served.text()
    );
    let grown_mib = vm_rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");
    drop(kept);
}
