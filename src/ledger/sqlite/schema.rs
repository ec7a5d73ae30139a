//! The ledger file: its layout, opening and migrating it, and counting
//! what a crashed process left open.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::keys::KeyWrites;
use super::writer::write_batch;
use super::{count, unavailable};
use crate::clock::{Clock, rfc3339};
use crate::ledger::LedgerError;
use crate::ledger::book::{Account, Book, Hold};
use crate::ledger::history::{Bucket, History, KEEP_MINUTES, minute_of};

/// The layout this code reads and writes; stored as `PRAGMA user_version`.
/// Version 1 had no idempotency keys, version 2 no budget alerts, version 3
/// no spend history; an older
/// file is migrated on open.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// Marks the file as a viewgate ledger (`PRAGMA application_id`, "VGL1").
pub(super) const APPLICATION_ID: i64 = 0x5647_4C31;

/// How long a connection waits for another one's lock before failing.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 1: accounts and open reservations.
pub(super) const SCHEMA_V1: &str = "
CREATE TABLE accounts (
    tenant        TEXT    NOT NULL,
    period        TEXT    NOT NULL,
    used          INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    requests      INTEGER NOT NULL DEFAULT 0 CHECK (requests >= 0),
    cache_hits    INTEGER NOT NULL DEFAULT 0 CHECK (cache_hits >= 0),
    credits_saved INTEGER NOT NULL DEFAULT 0 CHECK (credits_saved >= 0),
    orphaned      INTEGER NOT NULL DEFAULT 0 CHECK (orphaned >= 0 AND orphaned <= used),
    PRIMARY KEY (tenant, period)
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT so an id never names two reservations, even across restarts.
CREATE TABLE reservations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT    NOT NULL,
    period     TEXT    NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    request_id TEXT    NOT NULL,
    created_at TEXT    NOT NULL
) STRICT;

CREATE INDEX reservations_by_account ON reservations (tenant, period);
";

/// What version 2 adds: idempotency keys, claimed (in flight) or answered.
/// Not WITHOUT ROWID: rows carry whole response bodies. `owner` is the
/// random id of the ledger open that claimed the key, so a claim left by a
/// dead process is told from a live one. `expires_at` is in Unix
/// milliseconds on the ledger's clock.
const MIGRATE_V2: &str = "
CREATE TABLE idempotency_keys (
    tenant      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    state       TEXT    NOT NULL CHECK (state IN ('in_flight', 'done')),
    status      INTEGER CHECK (status BETWEEN 100 AND 999),
    body        BLOB,
    owner       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    CHECK ((state = 'done') = (status IS NOT NULL AND body IS NOT NULL)),
    PRIMARY KEY (tenant, key)
) STRICT;

CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at);
";

/// What version 3 adds: budget alerts fired (one row per tenant, period key
/// and threshold, ever) and the webhook outbox (one row per alert not yet
/// delivered; `alert` is its JSON, `next_attempt_ms` Unix milliseconds on
/// the ledger's clock).
const MIGRATE_V3: &str = "
CREATE TABLE alerts_fired (
    id        TEXT    PRIMARY KEY,
    tenant    TEXT    NOT NULL,
    period    TEXT    NOT NULL,
    threshold INTEGER NOT NULL CHECK (threshold BETWEEN 1 AND 100),
    fired_at  TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE alert_outbox (
    id              TEXT    PRIMARY KEY,
    alert           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX alert_outbox_by_due ON alert_outbox (next_attempt_ms);
";

/// What the spend-history migration adds (version 4): coalesced answers per period, and each
/// tenant's spend and savings per minute (`minute` counts minutes since the
/// Unix epoch on the ledger's clock), kept for about a day.
const MIGRATE_V4_SPEND_HISTORY: &str = "
ALTER TABLE accounts ADD COLUMN coalesced INTEGER NOT NULL DEFAULT 0 CHECK (coalesced >= 0);
ALTER TABLE accounts ADD COLUMN credits_saved_coalesced INTEGER NOT NULL DEFAULT 0
    CHECK (credits_saved_coalesced >= 0);

CREATE TABLE spend_minutes (
    tenant          TEXT    NOT NULL,
    minute          INTEGER NOT NULL,
    charged         INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0),
    saved_cache     INTEGER NOT NULL DEFAULT 0 CHECK (saved_cache >= 0),
    saved_coalesced INTEGER NOT NULL DEFAULT 0 CHECK (saved_coalesced >= 0),
    PRIMARY KEY (tenant, minute)
) STRICT, WITHOUT ROWID;

CREATE INDEX spend_minutes_by_minute ON spend_minutes (minute);
";

/// The schema version that has the spend history.
pub(super) const SPEND_HISTORY_VERSION: i64 = 4;

/// Pragmas every read-write connection needs.
pub(super) fn configure(conn: &Connection) -> Result<(), String> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    // The first statement reads the file header: a corrupt file fails here.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| format!("cannot use it as a database: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot use WAL journaling (got {mode})"));
    }
    // FULL: each commit is fsynced, so a charge survives power loss, not only kill -9.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| format!("cannot set synchronous=FULL: {e}"))
}

/// Creates the tables in a new file, or checks an existing file is ours and
/// migrates it to [`SCHEMA_VERSION`], all in one transaction: a failed
/// migration leaves the file as it was.
pub(super) fn create_schema(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
    let fail = |e: rusqlite::Error| unavailable(path, format!("cannot create the schema: {e}"));
    // IMMEDIATE: two processes opening a new file at once create it once.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let version = schema_version(&tx).map_err(fail)?;
    if version == 0 {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(fail)?;
        if tables > 0 {
            return Err(unavailable(
                path,
                "is a SQLite database but not a viewgate ledger",
            ));
        }
        tx.execute_batch(SCHEMA_V1).map_err(fail)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(fail)?;
    } else {
        check_version(&tx, version).map_err(|e| unavailable(path, e))?;
    }
    if version < 2 {
        tx.execute_batch(MIGRATE_V2).map_err(fail)?;
    }
    if version < 3 {
        tx.execute_batch(MIGRATE_V3).map_err(fail)?;
    }
    if version < SPEND_HISTORY_VERSION {
        tx.execute_batch(MIGRATE_V4_SPEND_HISTORY).map_err(fail)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail)?;
    }
    tx.commit().map_err(fail)
}

pub(super) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Accepts viewgate ledgers of this version or an older one (their accounts
/// and reservations read the same; `create_schema` migrates them). A later
/// version adds its migration to `create_schema`.
pub(super) fn check_version(conn: &Connection, version: i64) -> Result<(), String> {
    let application: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    if application != APPLICATION_ID {
        return Err("is a SQLite database but not a viewgate ledger".into());
    }
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(format!(
            "has schema version {version}; this viewgate reads version {SCHEMA_VERSION}"
        ));
    }
    Ok(())
}

/// Reads every account and open reservation into a book.
pub(super) fn load(conn: &Connection) -> rusqlite::Result<Book> {
    // Continue after the highest id ever handed out, even if its row is gone.
    let last_id: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'reservations'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let mut book = Book::new(count(last_id.unwrap_or(0)).saturating_add(1));
    let mut accounts = conn.prepare(
        "SELECT tenant, period, used, requests, cache_hits, credits_saved, orphaned,
                coalesced, credits_saved_coalesced FROM accounts",
    )?;
    let mut rows = accounts.query([])?;
    while let Some(row) = rows.next()? {
        let key = (row.get(0)?, row.get(1)?);
        book.load_account(
            key,
            Account {
                used: count(row.get(2)?),
                reserved: 0,
                requests: count(row.get(3)?),
                cache_hits: count(row.get(4)?),
                credits_saved: count(row.get(5)?),
                orphaned: count(row.get(6)?),
                coalesced: count(row.get(7)?),
                credits_saved_coalesced: count(row.get(8)?),
            },
        );
    }
    let mut holds =
        conn.prepare("SELECT id, tenant, period, amount, request_id FROM reservations")?;
    let mut rows = holds.query([])?;
    while let Some(row) = rows.next()? {
        let hold = Hold {
            key: (row.get(1)?, row.get(2)?),
            amount: count(row.get(3)?),
            request_id: row.get::<_, String>(4)?.into(),
        };
        book.load_hold(count(row.get(0)?), hold);
    }
    Ok(book)
}

/// Reads the spend history of the last [`KEEP_MINUTES`] before `now`.
pub(super) fn load_history(conn: &Connection, now: jiff::Timestamp) -> rusqlite::Result<History> {
    let mut history = History::default();
    let mut query = conn.prepare(
        "SELECT tenant, minute, charged, saved_cache, saved_coalesced
         FROM spend_minutes WHERE minute > ?1",
    )?;
    let mut rows = query.query([minute_of(now) - KEEP_MINUTES])?;
    while let Some(row) = rows.next()? {
        let tenant: String = row.get(0)?;
        let bucket = Bucket {
            charged: count(row.get(2)?),
            saved_cache: count(row.get(3)?),
            saved_coalesced: count(row.get(4)?),
        };
        history.add(&tenant, row.get(1)?, bucket);
    }
    Ok(history)
}

/// Counts reservations a previous process left open as spent, in one
/// transaction, and adds them to the spend history: at the minute each was
/// made (its `created_at`) while that minute is still kept, else at the
/// minute of this recovery, so `spent_last_*` and the forecast include them.
pub(super) fn recover(
    conn: &mut Connection,
    book: &mut Book,
    history: &mut History,
    clock: &Clock,
) -> rusqlite::Result<()> {
    let now = clock.wall();
    let charges = orphan_minutes(conn, now)?;
    book.begin();
    let orphans = book.orphan_all();
    if orphans.is_empty() {
        book.commit();
        return Ok(());
    }
    let keys = KeyWrites::default();
    // Absolute values, as the writer writes them: what is kept plus the orphans.
    let write = super::writer::HistoryWrite {
        buckets: charges
            .iter()
            .map(|((tenant, minute), credits)| {
                let mut bucket = history.get(tenant, *minute);
                bucket.add(Bucket::charged(*credits));
                ((tenant.clone(), *minute), bucket)
            })
            .collect(),
        prune_before: None,
    };
    if let Err(e) = write_batch(conn, &book.changes(), &keys, &write, None, &rfc3339(now)) {
        book.rollback();
        return Err(e);
    }
    book.commit();
    for ((tenant, minute), credits) in charges {
        history.add(&tenant, minute, Bucket::charged(credits));
    }
    for ((tenant, period), credits) in orphans {
        tracing::warn!(
            tenant = %tenant,
            period = %period,
            credits,
            "reservations left open by a previous run counted as spent"
        );
    }
    Ok(())
}

/// The open reservations' credits by tenant and history minute: the minute
/// of `created_at` when it is within [`KEEP_MINUTES`] before `now` (and not
/// after it), else `now`'s minute (also for a `created_at` that does not parse).
fn orphan_minutes(
    conn: &Connection,
    now: jiff::Timestamp,
) -> rusqlite::Result<BTreeMap<(String, i64), u64>> {
    let current = minute_of(now);
    let mut minutes = BTreeMap::new();
    let mut query = conn.prepare("SELECT tenant, amount, created_at FROM reservations")?;
    let mut rows = query.query([])?;
    while let Some(row) = rows.next()? {
        let tenant: String = row.get(0)?;
        let amount = count(row.get(1)?);
        let created: String = row.get(2)?;
        let minute = created
            .parse::<jiff::Timestamp>()
            .map(minute_of)
            .ok()
            .filter(|m| *m > current - KEEP_MINUTES && *m <= current)
            .unwrap_or(current);
        if amount > 0 {
            *minutes.entry((tenant, minute)).or_insert(0u64) += amount;
        }
    }
    Ok(minutes)
}
