//! Idempotency keys in Redis, shared by every replica.
//!
//! One hash per tenant and key, `vg:{t:<tenant>}:i:<key as hex>` (hex, so no
//! key a client picks can look like another kind of ledger key to a `SCAN`
//! pattern), with fields `fingerprint, state (in_flight | done), status,
//! body, started_ms, claim`, expiring (`PEXPIRE`) after the key's TTL. Each
//! step is one Lua script (`key_*.lua` beside this file), atomic on the
//! server: two replicas claiming one key at once never both start.
//!
//! A claim records when it started on the server's clock. A replica that
//! dies leaves its claims in flight; one older than the ledger's
//! `stale_after` reads as [`IdempotencyBegin::Orphaned`]. Each begin carries
//! a random claim token, so a call resent after a lost answer finds its own
//! claim instead of reporting it in flight; a begin whose outcome is unknown
//! frees its claim (by token) in the background, as its caller was told
//! the ledger is unavailable.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;

use super::keys::tenant_prefix;
use super::{Inner, MAX_COUNT};
use crate::ledger::{Fingerprint, IdempotencyBegin, LedgerError, StoredAnswer};
use crate::redis::{Op, RESPONSE_TIMEOUT, Retry};

impl Inner {
    /// See [`crate::ledger::Ledger::idempotency_begin`]; `stale_after` is
    /// when an unanswered claim counts as orphaned.
    pub(super) async fn idempotency_begin(
        self: Arc<Self>,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        ttl: Duration,
        stale_after: Duration,
    ) -> Result<IdempotencyBegin, LedgerError> {
        let token =
            getrandom::u64().map_err(|e| self.failure(format!("no random claim token: {e}")))?;
        let token = format!("{token:016x}");
        let name = key_hash(tenant, key);
        let mut invocation = self.scripts.key_begin.prepare_invoke();
        invocation
            .key(&name)
            .arg(&fingerprint[..])
            .arg(millis(ttl))
            .arg(millis(stale_after))
            .arg(&token);
        let reply = self
            .run::<Vec<Value>>(Op::Script(&invocation), Retry::Once)
            .await;
        match reply.and_then(|reply| self.begin_reply(&reply)) {
            Ok(found) => Ok(found),
            Err(error) => {
                // The script may have run with its answer lost: free the
                // claim it may hold, as its caller will not run the request.
                self.abandon_later(name, *fingerprint, token);
                Err(error)
            }
        }
    }

    /// See [`crate::ledger::Ledger::idempotency_complete`].
    pub(super) async fn idempotency_complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
    ) -> Result<(), LedgerError> {
        let mut invocation = self.scripts.key_complete.prepare_invoke();
        invocation
            .key(key_hash(tenant, key))
            .arg(&fingerprint[..])
            .arg(answer.status)
            .arg(&answer.body[..])
            .arg(millis(ttl));
        // Retried once: storing the same answer twice stores it once.
        self.run::<i64>(Op::Script(&invocation), Retry::Once)
            .await
            .map(drop)
    }

    /// See [`crate::ledger::Ledger::idempotency_abandon`]. `token` narrows
    /// it to one claim; empty frees any claim of this fingerprint.
    pub(super) async fn idempotency_abandon(
        &self,
        name: &str,
        fingerprint: &Fingerprint,
        token: &str,
    ) -> Result<(), LedgerError> {
        let mut invocation = self.scripts.key_abandon.prepare_invoke();
        invocation.key(name).arg(&fingerprint[..]).arg(token);
        self.run::<i64>(Op::Script(&invocation), Retry::Once)
            .await
            .map(drop)
    }

    /// Frees claim `token` of key `name` in the background, after a begin
    /// whose outcome is unknown. Freeing a claim never made changes nothing.
    fn abandon_later(self: &Arc<Self>, name: String, fingerprint: Fingerprint, token: String) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(RESPONSE_TIMEOUT).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let freed = inner.idempotency_abandon(&name, &fingerprint, &token);
                if freed.await.is_ok() {
                    return;
                }
            }
            // Still unreachable: the claim reads as orphaned once stale, and
            // goes with its TTL.
        });
    }

    /// Reads what `key_begin.lua` answered.
    fn begin_reply(&self, reply: &[Value]) -> Result<IdempotencyBegin, LedgerError> {
        let found = match reply {
            [state] => match text(state) {
                Some(b"started") => Some(IdempotencyBegin::Started),
                Some(b"in_flight") => Some(IdempotencyBegin::InFlight),
                Some(b"orphaned") => Some(IdempotencyBegin::Orphaned),
                Some(b"mismatch") => Some(IdempotencyBegin::Mismatch),
                _ => None,
            },
            [state, status, body] if text(state) == Some(b"replay") => {
                let status = text(status)
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse().ok());
                status.zip(text(body)).map(|(status, body)| {
                    IdempotencyBegin::Replay(StoredAnswer {
                        status,
                        body: bytes::Bytes::copy_from_slice(body),
                    })
                })
            }
            _ => None,
        };
        // Never the body in the message: it is a client's answer.
        found.ok_or_else(|| {
            self.failure(format!(
                "unexpected idempotency script reply ({} values)",
                reply.len()
            ))
        })
    }
}

/// The bytes of a string reply.
fn text(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes.as_slice()),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// The Redis key holding `key` of `tenant`.
pub(super) fn key_hash(tenant: &str, key: &str) -> String {
    let mut name = tenant_prefix(tenant);
    name.push_str("i:");
    for byte in key.bytes() {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// Whole milliseconds, at least 1 (`PEXPIRE 0` would delete the key at
/// once), at most what Lua and `PEXPIRE` take.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(MAX_COUNT)
        .clamp(1, MAX_COUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_under_the_tenant_hash_tag() {
        assert_eq!(key_hash("crm", "a}:open"), "vg:{t:crm}:i:617d3a6f70656e");
    }
}
