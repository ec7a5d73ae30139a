//! Raw-socket helpers for the hostile-client tests: the bytes on the wire
//! are exactly the test's, every read has a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TenantSpec, World, WorldSpec};

/// A world with one tenant, `crm`, on every account, and extra `server:` lines.
pub fn world(server_yaml: &'static str) -> WorldSpec {
    WorldSpec {
        tenants: vec![TenantSpec::new("crm", &["*"])],
        server_yaml,
        ..WorldSpec::default()
    }
}

/// What the server sent until it closed the connection or `within` passed.
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the deadline.
    pub closed: bool,
}

impl Exchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    pub fn status_line(&self) -> String {
        self.text().lines().next().unwrap_or("").to_string()
    }
    /// Responses in the stream (one per status line).
    pub fn responses(&self) -> usize {
        self.text().matches("HTTP/1.1 ").count()
    }
    /// Header lines of the first response, lower-cased names.
    pub fn headers(&self) -> Vec<(String, String)> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
    pub fn body_json(&self) -> Value {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    }
}

pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Exchange {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `raw` on a fresh connection and reads until the server closes (or 5 s).
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before taking everything: not an error here.
    let _ = stream.write_all(raw).await;
    read_until_closed(&mut stream, Duration::from_secs(5)).await
}

pub fn post(w: &World, extra_headers: &str, body: &str) -> String {
    format!(
        "POST /v2/profiles HTTP/1.1\r\nhost: gw\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        w.key("crm"),
        body.len()
    )
}

pub fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}
