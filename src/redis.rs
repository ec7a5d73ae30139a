//! Redis plumbing shared by the three parts of viewgate that use Redis: the
//! ledger (`ledger::RedisLedger`), the global rate limiter
//! (`ratelimit::RedisGcra`) and the shared cache tier (`cache::shared`).
//!
//! It opens one lazily connected, self-reconnecting connection per user with
//! short, bounded timeouts, runs commands, pipelines and Lua scripts within a
//! caller's time limit, and keeps the URL's password out of every message.
//! It knows nothing of what a failure means to its caller: each one turns a
//! [`RedisFailure`] into its own error and log wording ("ledger unavailable",
//! "rate limit store unavailable", "shared cache tier unavailable"), so an
//! operator reading a log line knows which part lost Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, FromRedisValue, Pipeline, RedisError, ScriptInvocation};

/// Each attempt to open a connection gives up after this.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Each command gives up waiting for its answer after this.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a Redis call failed, as a message that names no secret of the URL
/// (`redis: …`). Callers wrap it in their own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisFailure(String);

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A connection to one Redis server and the secrets of its URL.
///
/// Cloning is cheap and shares the connection (commands are multiplexed on it).
#[derive(Clone)]
pub(crate) struct Connection {
    conn: ConnectionManager,
    /// Strings that must never appear in a message (the password).
    secrets: Arc<[String]>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: the connection manager's own Debug would print the URL's password.
        f.write_str("redis::Connection")
    }
}

/// One request to Redis, sent again as is when a retry is safe.
pub(crate) enum Op<'a> {
    /// A Lua script, run by SHA and loaded again after a `NOSCRIPT`.
    Script(&'a ScriptInvocation<'a>),
    /// One command.
    Cmd(&'a Cmd),
    /// Several commands in one round trip.
    Pipeline(&'a Pipeline),
}

impl Op<'_> {
    async fn query<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<T, RedisError> {
        match self {
            Op::Script(invocation) => invocation.invoke_async(conn).await,
            Op::Cmd(cmd) => cmd.query_async(conn).await,
            Op::Pipeline(pipeline) => pipeline.query_async(conn).await,
        }
    }
}

/// Whether an operation may be sent a second time after a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, and scripts idempotent on what they are given.
    Once,
    /// Anything a second send could apply twice, or a caller that would
    /// rather fall back at once than wait for a reconnect.
    Never,
}

impl Connection {
    /// Prepares a connection to the Redis server at `url`
    /// (`redis://[:password@]host:port[/db]`) without connecting: it
    /// connects on first use and reconnects by itself, so a gateway can start
    /// while Redis is down. Fails only when `url` cannot be used at all.
    /// Connection attempts give up after [`CONNECT_TIMEOUT`], commands after
    /// [`RESPONSE_TIMEOUT`].
    pub(crate) fn open(url: &str) -> Result<Self, RedisFailure> {
        let secrets: Arc<[String]> = secrets_in(url).into();
        let client =
            ::redis::Client::open(url).map_err(|e| redact(&secrets, format!("bad url: {e}")))?;
        // No retries inside the connection manager: a call that finds the
        // connection lost triggers one reconnect and waits for it (bounded by
        // CONNECT_TIMEOUT) instead of a series of backoffs.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| redact(&secrets, e))?;
        Ok(Self { conn, secrets })
    }

    /// The connection itself, for commands the caller sends on its own.
    /// Their errors go through [`Connection::failure`] before they are shown.
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `reason` as a failure, with every secret of the URL replaced by `***`.
    pub(crate) fn failure(&self, reason: impl fmt::Display) -> RedisFailure {
        redact(&self.secrets, reason)
    }

    /// Runs `op` within `limit`, turning every failure into a
    /// [`RedisFailure`]. A lost connection is reconnected by the connection
    /// manager; with [`Retry::Once`] the op is sent again on the new one, so
    /// the first call after Redis comes back succeeds.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        op: Op<'_>,
        retry: Retry,
        limit: Duration,
    ) -> Result<T, RedisFailure> {
        let attempts = async {
            let mut conn = self.conn.clone();
            match op.query(&mut conn).await {
                Err(e) if retry == Retry::Once && connection_lost(&e) => op.query(&mut conn).await,
                result => result,
            }
        };
        match tokio::time::timeout(limit, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(e)),
            Err(_) => Err(self.failure(format!("no answer within {} ms", limit.as_millis()))),
        }
    }
}

/// Whether a failure means the connection is gone (the manager reconnects),
/// as opposed to an answer from a live server. A timeout is not: a server
/// that did not answer in time would not answer a second try sooner.
fn connection_lost(error: &RedisError) -> bool {
    !error.is_timeout()
        && (error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error())
}

/// The password of `url`, as written and percent-decoded, to keep out of messages.
fn secrets_in(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    // `redis://secret@host` is a username to Redis, but people write passwords there.
    let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
    let mut secrets = vec![password.to_string(), percent_decode(password)];
    secrets.retain(|s| !s.is_empty());
    secrets.dedup();
    secrets
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `redis: …` with every secret replaced by `***`.
fn redact(secrets: &[String], reason: impl fmt::Display) -> RedisFailure {
    let mut message = format!("redis: {reason}");
    for secret in secrets {
        message = message.replace(secret.as_str(), "***");
    }
    RedisFailure(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_message() {
        let secrets = secrets_in("redis://:s3cr%40t@db.internal:6379/0");
        assert_eq!(secrets, vec!["s3cr%40t".to_string(), "s3cr@t".to_string()]);
        let message = redact(&secrets, "AUTH s3cr@t failed for redis://:s3cr%40t@db");
        assert_eq!(
            message.to_string(),
            "redis: AUTH *** failed for redis://:***@db"
        );
        assert_eq!(secrets_in("redis://user:pw@host"), vec!["pw".to_string()]);
        assert!(secrets_in("redis://127.0.0.1:6379").is_empty());
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let failure = Connection::open("rediss+nope://:hunter2@db:6379").unwrap_err();
        assert!(
            failure.to_string().starts_with("redis: bad url"),
            "{failure}"
        );
        assert!(!failure.to_string().contains("hunter2"), "{failure}");
    }
}
