//! A real `redis-server` for one test: its own free port, killed when the
//! test ends. Tests can stop it (as a crash would) and start it again on the
//! same port: empty, or, for a durable server (append-only file, fsync on
//! every write, as an operator runs a ledger's Redis), with its data.

// Real deadlines for polling and timing; the gateway's time is the Clock it is given.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` child process.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    durable: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without a password, or `None` when `redis-server` is
    /// not installed and this is not CI (where it must run: then it panics).
    pub fn start_new() -> Option<RedisServer> {
        Self::start_with(None, false)
    }

    /// As [`RedisServer::start_new`], with an append-only file fsynced on
    /// every write: what was written survives [`RedisServer::stop`].
    pub fn start_durable() -> Option<RedisServer> {
        Self::start_with(None, true)
    }

    /// As [`RedisServer::start_new`], with `requirepass`.
    pub fn start_with_password(password: &str) -> Option<RedisServer> {
        Self::start_with(Some(password.to_string()), false)
    }

    fn start_with(password: Option<String>, durable: bool) -> Option<RedisServer> {
        if !installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI must run the Redis tests \
                 (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: try another.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                password: password.clone(),
                durable,
                dir: tempfile::tempdir().expect("a temporary directory"),
                child: None,
            };
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// The URL to connect to, with the password if there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server as a crash would (SIGKILL) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts it again on the same port (empty unless durable) and waits until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        if let Err(e) = self.try_start() {
            panic!(
                "redis-server did not start again on port {}: {e}",
                self.port
            );
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.durable { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&log).map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.answers_ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no PONG on port {}; its log:\n{}",
                    self.port,
                    read_log(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if let Some(password) = &self.password {
            if write!(stream, "AUTH {password}\r\n").is_err() {
                return false;
            }
            read_reply(&mut stream);
        }
        write!(stream, "PING\r\n").is_ok() && read_reply(&mut stream).starts_with("+PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would not die of SIGKILL any later, but thaw it anyway.
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.stop();
    }
}

/// Whether `redis-server` can be run.
fn installed() -> bool {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => false,
    }
}

/// A port nobody listens on now: bind port 0, read it, let it go.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// Reads what one small reply sends (enough for status lines and numbers).
fn read_reply(stream: &mut TcpStream) -> String {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
