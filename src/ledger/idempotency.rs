//! Idempotency keys: what a key holds, and the in-memory table the memory
//! ledger keeps them in (the SQLite and Redis ledgers store the same states
//! durably).
//!
//! A key is claimed (in flight) before the request does anything that costs
//! or changes something, and completed with the answer that request got. A
//! claim whose process died is orphaned: its outcome is unknown, and the
//! request is never run again under that key.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::clock::Clock;

/// SHA-256 of what makes two requests "the same request" (endpoint and
/// canonical body), so a key reused for another request is recognised.
pub type Fingerprint = [u8; 32];

/// An answer kept for replay: the status and the exact body sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// The key was free (new or expired): the caller now holds it.
    Started,
    /// The same request was answered before: answer this again.
    Replay(StoredAnswer),
    /// The key holds a different request (in flight or answered).
    Mismatch,
    /// The same request is still being answered by a live process.
    InFlight,
    /// The same request was claimed by a process that died before it
    /// answered: what happened upstream is unknown.
    Orphaned,
}

#[derive(Debug, Clone)]
enum State {
    InFlight,
    Done(StoredAnswer),
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    expires: Instant,
}

/// Idempotency keys in memory, by (tenant, key). Expired entries are
/// dropped as they are met and by [`IdempotencyTable::purge`].
#[derive(Debug, Default)]
pub struct IdempotencyTable {
    entries: HashMap<(String, String), Entry>,
}

impl IdempotencyTable {
    /// Claims `key` for `fingerprint` at `now`, or says what it holds.
    pub fn begin(
        &mut self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        ttl: Duration,
        now: Instant,
    ) -> IdempotencyBegin {
        let id = (tenant.to_string(), key.to_string());
        if let Some(entry) = self.entries.get(&id).filter(|e| e.expires > now) {
            return if &entry.fingerprint != fingerprint {
                IdempotencyBegin::Mismatch
            } else {
                match &entry.state {
                    State::InFlight => IdempotencyBegin::InFlight,
                    State::Done(answer) => IdempotencyBegin::Replay(answer.clone()),
                }
            };
        }
        self.entries.insert(
            id,
            Entry {
                fingerprint: *fingerprint,
                state: State::InFlight,
                expires: now + ttl,
            },
        );
        IdempotencyBegin::Started
    }

    /// Stores the answer for `key`, kept `ttl` from `now`.
    pub fn complete(
        &mut self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
        now: Instant,
    ) {
        self.entries.insert(
            (tenant.to_string(), key.to_string()),
            Entry {
                fingerprint: *fingerprint,
                state: State::Done(answer),
                expires: now + ttl,
            },
        );
    }

    /// Frees a claim that is still in flight for `fingerprint`.
    pub fn abandon(&mut self, tenant: &str, key: &str, fingerprint: &Fingerprint) {
        let id = (tenant.to_string(), key.to_string());
        if self
            .entries
            .get(&id)
            .is_some_and(|e| &e.fingerprint == fingerprint && matches!(e.state, State::InFlight))
        {
            self.entries.remove(&id);
        }
    }

    /// Drops every entry expired at `now`.
    pub fn purge(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
    }

    /// How many keys are held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An [`IdempotencyTable`] behind a lock, on a clock: the memory ledger's
/// idempotency store.
#[derive(Debug)]
pub(crate) struct MemoryKeys {
    clock: Clock,
    table: Mutex<IdempotencyTable>,
}

impl MemoryKeys {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            clock,
            table: Mutex::new(IdempotencyTable::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, IdempotencyTable> {
        // Every update is one map insert or remove: a panic cannot leave it half done.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        ttl: Duration,
    ) -> IdempotencyBegin {
        let now = self.clock.now();
        let mut table = self.lock();
        // Bounded: expired keys go before the table grows past what a TTL's traffic leaves.
        if table.len() >= PURGE_AT && table.len().is_power_of_two() {
            table.purge(now);
        }
        table.begin(tenant, key, fingerprint, ttl, now)
    }

    pub(crate) fn complete(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
    ) {
        let now = self.clock.now();
        self.lock()
            .complete(tenant, key, fingerprint, answer, ttl, now);
    }

    pub(crate) fn abandon(&self, tenant: &str, key: &str, fingerprint: &Fingerprint) {
        self.lock().abandon(tenant, key, fingerprint);
    }
}

/// Table size from which expired keys are purged (at each doubling).
const PURGE_AT: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_goes_from_claimed_to_answered_to_forgotten() {
        let mut t = IdempotencyTable::default();
        let now = Clock::fake("2026-11-27T10:00:00Z".parse().unwrap()).now();
        let ttl = Duration::from_secs(60);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(t.begin("t", "k", &a, ttl, now), IdempotencyBegin::Started);
        assert_eq!(t.begin("t", "k", &a, ttl, now), IdempotencyBegin::InFlight);
        assert_eq!(t.begin("t", "k", &b, ttl, now), IdempotencyBegin::Mismatch);
        // Keys are per tenant.
        assert_eq!(t.begin("u", "k", &b, ttl, now), IdempotencyBegin::Started);
        let answer = StoredAnswer {
            status: 200,
            body: Bytes::from_static(b"{}"),
        };
        t.complete("t", "k", &a, answer.clone(), ttl, now);
        assert_eq!(
            t.begin("t", "k", &a, ttl, now),
            IdempotencyBegin::Replay(answer)
        );
        assert_eq!(t.begin("t", "k", &b, ttl, now), IdempotencyBegin::Mismatch);
        // Abandoning an answered key changes nothing; past the TTL it is free.
        t.abandon("t", "k", &a);
        assert!(matches!(
            t.begin("t", "k", &a, ttl, now),
            IdempotencyBegin::Replay(_)
        ));
        let later = now + ttl + Duration::from_secs(1);
        assert_eq!(t.begin("t", "k", &b, ttl, later), IdempotencyBegin::Started);
        t.abandon("t", "k", &b);
        assert_eq!(t.begin("t", "k", &a, ttl, later), IdempotencyBegin::Started);
        t.purge(later + ttl * 2);
        assert!(t.is_empty());
    }
}
