//! Helpers for tests that run the real `viewgate` binary as a child process.

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::time::{Duration, Instant};

/// `viewgate serve --config CONFIG` (the real binary), once it says where it
/// listens: the process, that address (`host:port`), and its stdout lines
/// so far and to come.
pub fn serve(config: &std::path::Path) -> (Running, String, Lines) {
    let mut child = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_viewgate"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ((addr, _), lines) = read_until(&mut child.0, listening);
    (child, addr, lines)
}

/// Kills the child when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until `done` returns a value (bounded by time).
/// Every line the child printed so far; it keeps filling until the child exits.
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

pub fn read_until<T>(child: &mut Child, mut done: impl FnMut(&str) -> Option<T>) -> (T, Lines) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(line.clone());
        if let Some(v) = done(&line) {
            // Keep reading in the background so the child never blocks on a
            // full pipe, and so the test can look at later lines.
            let lines: Lines = std::sync::Arc::new(std::sync::Mutex::new(seen));
            let more = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in rx {
                    more.lock().unwrap().push(line);
                }
            });
            return (v, lines);
        }
    }
    panic!("expected output never came; saw:\n{}", seen.join("\n"));
}

pub fn post(url: &str, key: &str, body: &str) -> (u16, serde_json::Value) {
    try_post(url, key, body).expect("the gateway answered")
}

/// As [`post`], but `None` when the connection fails or breaks (a killed gateway).
pub fn try_post(url: &str, key: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    try_request(url, "/v2/profiles", &[("x-api-key", key)], body).map(|r| (r.status, r.json))
}

/// One answer of [`try_request`].
pub struct RawReply {
    pub status: u16,
    /// The response head's header lines, lower-cased.
    pub head: String,
    pub json: serde_json::Value,
}

/// POSTs `body` to `path` with `headers` over a plain socket; `None` when the
/// connection fails or breaks (a killed gateway).
pub fn try_request(
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<RawReply> {
    // A blocking client is enough here: one request at a time over a plain socket.
    use std::io::Read;
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()?
        .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    let (head, json) = raw.split_once("\r\n\r\n")?;
    Some(RawReply {
        status,
        head: head.to_ascii_lowercase(),
        json: serde_json::from_str(json).ok()?,
    })
}

/// Writes a file only its owner can read (as upstream key files must be).
pub fn write_private(path: &std::path::Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The start-up line of `viewgate serve`: its tenant and admin addresses.
pub fn listening(line: &str) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["msg"] == "viewgate listening").then(|| {
        (
            v["listen"].as_str().unwrap().to_string(),
            v["admin"].as_str().map(str::to_string),
        )
    })
}

/// Sends SIGKILL or SIGTERM to a child.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits (bounded) for a child to exit and returns its status.
pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
