//! Idempotency keys in the ledger file, as the writer thread sees them.
//!
//! The table (`idempotency_keys`, see `schema`) holds what is committed; the
//! writer keeps the changes not yet committed here, so a command sees the
//! ones queued before it in the same batch (two claims of one key in one
//! batch: the first starts, the second finds it in flight). A claim or an
//! answer is answered only after its batch commits. An abandon is answered at
//! once and written with the next batch: lost in a crash, the claim stays in
//! flight on disk and reads as orphaned, so a crash can cost a retry its run,
//! never run a write twice.
//!
//! A row whose `expires_at` has passed reads as absent; expired rows are
//! deleted a bounded number at a time, with the batches the writer commits.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::ledger::{Fingerprint, IdempotencyBegin, StoredAnswer};

/// At most this many expired keys are deleted per commit.
pub(super) const PURGE_BATCH: usize = 256;

/// A key is per tenant: `(tenant, Idempotency-Key)`.
pub(super) type KeyId = (String, String);

/// One key's row.
#[derive(Debug, Clone)]
pub(super) struct KeyRow {
    fingerprint: Fingerprint,
    /// `None` while the claim is in flight.
    answer: Option<StoredAnswer>,
    /// The ledger open that claimed or answered it.
    owner: i64,
    /// Unix milliseconds on the ledger's clock.
    expires_at: i64,
}

/// Key changes not yet committed.
#[derive(Debug, Default)]
pub(super) struct KeyWrites {
    /// Claims freed by abandons already answered: kept until written, and
    /// across failed commits (their callers were told).
    freed: HashSet<KeyId>,
    /// The open batch's claims and answers: committed with it, or dropped
    /// with it (their callers are told it failed).
    batch: HashMap<KeyId, KeyRow>,
}

impl KeyWrites {
    /// Whether there is nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.freed.is_empty() && self.batch.is_empty()
    }

    /// Whether abandons wait to be written.
    pub(super) fn has_freed(&self) -> bool {
        !self.freed.is_empty()
    }

    /// After a failed commit: the batch's claims and answers are gone with it.
    pub(super) fn rollback(&mut self) {
        self.batch.clear();
    }

    /// After a commit: everything is on disk.
    pub(super) fn committed(&mut self) {
        self.freed.clear();
        self.batch.clear();
    }

    /// What `id` holds now, committed or not; expired rows included.
    fn lookup(&self, conn: &Connection, id: &KeyId) -> rusqlite::Result<Option<KeyRow>> {
        if let Some(row) = self.batch.get(id) {
            return Ok(Some(row.clone()));
        }
        if self.freed.contains(id) {
            return Ok(None);
        }
        read_row(conn, id)
    }

    /// Claims `id` for `fingerprint` on behalf of `owner`, or says what it holds.
    pub(super) fn begin(
        &mut self,
        conn: &Connection,
        id: KeyId,
        fingerprint: &Fingerprint,
        owner: i64,
        now_ms: i64,
        ttl_ms: i64,
    ) -> rusqlite::Result<IdempotencyBegin> {
        if let Some(row) = self.lookup(conn, &id)?.filter(|r| r.expires_at > now_ms) {
            return Ok(if &row.fingerprint != fingerprint {
                IdempotencyBegin::Mismatch
            } else {
                match row.answer {
                    Some(answer) => IdempotencyBegin::Replay(answer),
                    None if row.owner == owner => IdempotencyBegin::InFlight,
                    // Claimed by an earlier open of the file: that process
                    // died (it held the file's lock while alive).
                    None => IdempotencyBegin::Orphaned,
                }
            });
        }
        self.batch.insert(
            id,
            KeyRow {
                fingerprint: *fingerprint,
                answer: None,
                owner,
                expires_at: now_ms.saturating_add(ttl_ms),
            },
        );
        Ok(IdempotencyBegin::Started)
    }

    /// Stores the answer of `id`, replacing whatever it held (an orphaned
    /// claim included).
    pub(super) fn complete(
        &mut self,
        id: KeyId,
        fingerprint: &Fingerprint,
        answer: StoredAnswer,
        owner: i64,
        now_ms: i64,
        ttl_ms: i64,
    ) {
        self.batch.insert(
            id,
            KeyRow {
                fingerprint: *fingerprint,
                answer: Some(answer),
                owner,
                expires_at: now_ms.saturating_add(ttl_ms),
            },
        );
    }

    /// Frees `id` if it is `owner`'s claim in flight for `fingerprint`;
    /// returns whether it did. Anything else it holds is left alone.
    pub(super) fn abandon(
        &mut self,
        conn: &Connection,
        id: KeyId,
        fingerprint: &Fingerprint,
        owner: i64,
    ) -> rusqlite::Result<bool> {
        let ours = self.lookup(conn, &id)?.is_some_and(|row| {
            &row.fingerprint == fingerprint && row.answer.is_none() && row.owner == owner
        });
        if ours {
            self.batch.remove(&id);
            self.freed.insert(id);
        }
        Ok(ours)
    }

    /// Writes the changes inside the batch's transaction: first the expired
    /// rows (at most [`PURGE_BATCH`], when `purge_before` is set), then the
    /// freed claims, then the batch's rows. Returns how many expired rows
    /// were deleted.
    pub(super) fn write(
        &self,
        tx: &Transaction<'_>,
        purge_before: Option<i64>,
    ) -> rusqlite::Result<usize> {
        let mut purged = 0;
        if let Some(now_ms) = purge_before {
            let mut purge = tx.prepare_cached(
                "DELETE FROM idempotency_keys WHERE rowid IN (
                     SELECT rowid FROM idempotency_keys WHERE expires_at <= ?1 LIMIT ?2)",
            )?;
            purged = purge.execute(params![now_ms, PURGE_BATCH as i64])?;
        }
        let mut delete =
            tx.prepare_cached("DELETE FROM idempotency_keys WHERE tenant = ?1 AND key = ?2")?;
        for (tenant, key) in &self.freed {
            delete.execute(params![tenant, key])?;
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO idempotency_keys
                 (tenant, key, fingerprint, state, status, body, owner, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (tenant, key) DO UPDATE SET
                 fingerprint = excluded.fingerprint,
                 state = excluded.state,
                 status = excluded.status,
                 body = excluded.body,
                 owner = excluded.owner,
                 expires_at = excluded.expires_at",
        )?;
        for ((tenant, key), row) in &self.batch {
            let (state, status, body) = match &row.answer {
                Some(answer) => ("done", Some(answer.status), Some(&answer.body[..])),
                None => ("in_flight", None, None),
            };
            upsert.execute(params![
                tenant,
                key,
                &row.fingerprint[..],
                state,
                status,
                body,
                row.owner,
                row.expires_at,
            ])?;
        }
        Ok(purged)
    }
}

/// Reads one key's committed row.
fn read_row(conn: &Connection, (tenant, key): &KeyId) -> rusqlite::Result<Option<KeyRow>> {
    let mut select = conn.prepare_cached(
        "SELECT fingerprint, status, body, owner, expires_at
         FROM idempotency_keys WHERE tenant = ?1 AND key = ?2",
    )?;
    select
        .query_row(params![tenant, key], |row| {
            let stored: Vec<u8> = row.get(0)?;
            // The CHECK constraint keeps it 32 bytes; a shorter one never matches.
            let mut fingerprint = [0u8; 32];
            if stored.len() == fingerprint.len() {
                fingerprint.copy_from_slice(&stored);
            }
            let status: Option<u16> = row.get(1)?;
            let body: Option<Vec<u8>> = row.get(2)?;
            Ok(KeyRow {
                fingerprint,
                answer: status.zip(body).map(|(status, body)| StoredAnswer {
                    status,
                    body: Bytes::from(body),
                }),
                owner: row.get(3)?,
                expires_at: row.get(4)?,
            })
        })
        .optional()
}
