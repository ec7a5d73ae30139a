//! The durable ledger: a SQLite file written by one thread in group commits.
//!
//! Async callers never touch the disk. Reserve, settle, release and flush go
//! over a channel to the writer thread, which owns the read-write connection
//! and the authoritative [`Book`]. It takes every command already queued (up
//! to [`MAX_BATCH`]), applies them to the book in order — so the budget check
//! is exact, one command after another — writes what changed in ONE
//! `BEGIN IMMEDIATE … COMMIT` (one fsync for the whole batch), and only then
//! answers. A reservation is therefore on disk before the upstream is called.
//! If the commit fails the book is rolled back and the whole batch answers
//! `Unavailable`, so memory never holds what the disk does not.
//!
//! One exception, because it can only err toward over-counting: a settle that
//! charges no more than its reservation held, or a release, is answered as
//! soon as it is applied to the book, and written with the next batch that
//! must be durable (the next reservation) or after [`CLOSE_WRITE_DELAY`]. If
//! the process dies first, the reservation is still open on disk and the next
//! start counts its whole amount as spent (`orphaned`): the ledger may then
//! over-count by what those last closes gave back, never under-count. This
//! halves the fsyncs of a miss (one instead of two). A settle that charges
//! more than was held is answered only once it is on disk. An answered close
//! whose write fails is kept and retried with the next batch.
//!
//! After each commit the writer copies the accounts it touched into a shared
//! mirror, which answers `balance` and `usage` without a disk read or a trip
//! through the writer.
//!
//! One process writes a ledger file at a time: `open` locks `<file>-lock`.
//! Reports ([`read_usage`]) open the file read-only and need no lock.
//!
//! Reservations are rows. A process killed between reserve and settle leaves
//! them behind; the next [`SqliteLedger::open`] counts them as spent (the
//! upstream may have billed them) and as `orphaned`, in one transaction.
//!
//! File layout (schema version 1, `PRAGMA user_version`):
//! - `accounts(tenant, period, used, requests, cache_hits, credits_saved,
//!   orphaned)`, one row per tenant and period key; `reserved` is not stored,
//!   it is the sum of the tenant's open `reservations` rows.
//! - `reservations(id, tenant, period, amount, request_id, created_at)`, one
//!   row per open reservation, deleted when it is settled or released.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::book::{Account, AccountKey, Book, Changes, Hold, budget_period};
use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use crate::clock::{Clock, rfc3339};
use crate::config::Budget;

/// The layout this code reads and writes; stored as `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Marks the file as a viewgate ledger (`PRAGMA application_id`, "VGL1").
const APPLICATION_ID: i64 = 0x5647_4C31;

/// The most commands one transaction carries.
const MAX_BATCH: usize = 512;

/// How long a connection waits for another one's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often pending cache-hit counts are written when nothing else is.
const HIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an answered settle or release may wait for a batch to ride with.
const CLOSE_WRITE_DELAY: Duration = Duration::from_millis(50);

const SCHEMA: &str = "
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

/// The durable ledger on a SQLite file.
///
/// One thread (`viewgate-ledger`) owns the file; calls queue to it and are
/// answered after their batch is committed and fsynced, so a reservation is
/// durable before the upstream is called (settles that charge no more than
/// was held, and releases, are answered at once and written within
/// [`CLOSE_WRITE_DELAY`]: see the module notes). `balance` and `usage` read an
/// in-memory copy of what is committed. Cache hits are written with the next
/// batch or within a second. Reservations a crash left open are counted as
/// spent (and `orphaned`) by the next [`SqliteLedger::open`].
///
/// Call [`SqliteLedger::flush`] at graceful shutdown. Dropping it also stops
/// the writer after committing everything already sent, blocking for that
/// last commit.
#[derive(Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    clock: Clock,
    commands: mpsc::Sender<Command>,
    mirror: Arc<Mutex<Mirror>>,
    writer: Option<JoinHandle<()>>,
    keys: super::idempotency::MemoryKeys,
}

/// What async callers can read without asking the writer.
#[derive(Debug, Default)]
struct Mirror {
    /// Accounts as last committed, plus the answered closes not yet written.
    accounts: HashMap<AccountKey, Account>,
    /// Cache hits counted but not yet committed.
    pending_hits: HashMap<AccountKey, Hits>,
    /// Batches committed that changed an account, for tests of group commit.
    commits: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Hits {
    hits: u64,
    credits_saved: u64,
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

#[derive(Debug)]
enum Command {
    Reserve {
        tenant: Arc<str>,
        period: String,
        limit: Option<u64>,
        estimate: u64,
        request_id: String,
        reply: Reply<Reservation>,
    },
    /// Settle (`actual` is `Some`) or release; answers with the balance of
    /// `tenant` in `period`, the current one when the call was made.
    Close {
        id: u64,
        actual: Option<u64>,
        tenant: Arc<str>,
        period: String,
        budget: Option<Budget>,
        reply: Reply<Balance>,
    },
    Flush {
        reply: Reply<()>,
    },
    /// Checks the file still takes writes, without changing it.
    Probe {
        reply: Reply<()>,
    },
    /// Commit what is queued, then exit.
    Stop,
    /// Exit at once, committing nothing more (tests of crash recovery).
    Crash,
    /// Makes every later write fail (`true`) or succeed again (`false`).
    #[cfg(test)]
    BreakWrites(bool),
}

impl SqliteLedger {
    /// Opens (or creates) the ledger file at `path`, creating its directory if
    /// missing, converts reservations a previous process left open into spend,
    /// and starts the writer thread.
    ///
    /// Fails with [`LedgerError::Unavailable`] naming the path and the reason
    /// when the file cannot be opened, is not a viewgate ledger, is corrupt,
    /// or is newer than this build understands.
    pub fn open(path: &Path, clock: Clock) -> Result<SqliteLedger, LedgerError> {
        Self::open_with(path, clock, HIT_FLUSH_INTERVAL)
    }

    fn open_with(
        path: &Path,
        clock: Clock,
        hit_flush_interval: Duration,
    ) -> Result<SqliteLedger, LedgerError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if parent.exists() && !parent.is_dir() {
                return Err(unavailable(
                    path,
                    format!("{} is not a directory", parent.display()),
                ));
            }
            std::fs::create_dir_all(parent)
                .map_err(|e| unavailable(path, format!("cannot create its directory: {e}")))?;
        }
        if path.is_dir() {
            return Err(unavailable(path, "is a directory, not a file"));
        }
        let owner = take_ownership(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
        configure(&conn).map_err(|e| unavailable(path, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(unavailable(
                path,
                "is read-only: the ledger must write to it",
            ));
        }
        create_schema(&mut conn, path)?;
        let mut book = load(&conn).map_err(|e| unavailable(path, format!("cannot read: {e}")))?;
        recover(&mut conn, &mut book, &clock)
            .map_err(|e| unavailable(path, format!("cannot recover open reservations: {e}")))?;

        let mirror = Arc::new(Mutex::new(Mirror {
            accounts: book.accounts().clone(),
            ..Mirror::default()
        }));
        let (commands, receiver) = mpsc::channel();
        let writer = Writer {
            _owner: owner,
            conn,
            path: path.to_path_buf(),
            clock: clock.clone(),
            book,
            mirror: Arc::clone(&mirror),
            commands: receiver,
            hit_flush_interval,
            closes_waiting_since: None,
            answered: Vec::new(),
        };
        let writer = std::thread::Builder::new()
            .name("viewgate-ledger".into())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(path, format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteLedger {
            path: path.to_path_buf(),
            keys: super::idempotency::MemoryKeys::new(clock.clone()),
            clock,
            commands,
            mirror,
            writer: Some(writer),
        })
    }

    /// Waits until everything sent so far, pending cache-hit counts included,
    /// is committed. Call it at graceful shutdown, after the last request.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Flush { reply }, answer).await
    }

    /// Stops the writer as a `kill -9` would: queued commands and pending hit
    /// counts are dropped, open reservations stay in the file. Tests only.
    #[doc(hidden)]
    pub fn crash(mut self) {
        let _ = self.commands.send(Command::Crash);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }

    #[cfg(test)]
    fn break_writes(&self, broken: bool) {
        let _ = self.commands.send(Command::BreakWrites(broken));
    }

    #[cfg(test)]
    fn commits(&self) -> u64 {
        lock(&self.mirror).commits
    }

    fn current_period(&self, budget: Option<Budget>) -> String {
        period_key(budget_period(budget), self.clock.wall())
    }

    async fn ask<T>(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        let stopped = || unavailable(&self.path, "the ledger writer has stopped");
        self.commands.send(command).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    fn close(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Close {
            id: reservation.id,
            actual,
            tenant: reservation.tenant,
            // The balance reported is the current period's, which may be a new one.
            period: self.current_period(budget),
            budget,
            reply,
        };
        // Boxed: the answer comes back from another thread after a commit.
        self.ask(command, answer).boxed()
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = self.commands.send(Command::Stop);
            // Waits for the last commit (milliseconds), so the file holds
            // everything and is closed once drop returns.
            let _ = writer.join();
        }
    }
}

impl Ledger for SqliteLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Reserve {
            tenant: Arc::clone(tenant),
            period: self.current_period(budget),
            limit: budget.map(|b| b.credits),
            estimate,
            request_id: request_id.to_string(),
            reply,
        };
        // Boxed: the answer comes back from another thread after a commit.
        self.ask(command, answer).boxed()
    }

    fn settle(
        &self,
        reservation: Reservation,
        actual: u64,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        self.close(reservation, Some(actual), budget)
    }

    fn release(
        &self,
        reservation: Reservation,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        self.close(reservation, None, budget)
    }

    fn balance<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        let key = (tenant.to_string(), self.current_period(budget));
        let account = lock(&self.mirror)
            .accounts
            .get(&key)
            .copied()
            .unwrap_or_default();
        futures_util::future::ready(Ok(account.balance(budget))).boxed()
    }

    fn hit<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        // One key, one lock: the hit path's whole ledger cost.
        let key = (tenant.to_string(), self.current_period(budget));
        let mut mirror = lock(&self.mirror);
        let account = mirror.accounts.get(&key).copied().unwrap_or_default();
        let pending = mirror.pending_hits.entry(key).or_default();
        pending.hits = pending.hits.saturating_add(1);
        pending.credits_saved = pending.credits_saved.saturating_add(credits_saved);
        futures_util::future::ready(Ok(account.balance(budget))).boxed()
    }

    fn record_hit<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        // Hits are statistics, not money: they wait in memory for the next
        // batch (at most HIT_FLUSH_INTERVAL) instead of costing an fsync each.
        // A kill -9 loses up to that last second of hit counts; spend is
        // never lost this way.
        let key = (tenant.to_string(), self.current_period(budget));
        let mut mirror = lock(&self.mirror);
        let pending = mirror.pending_hits.entry(key).or_default();
        pending.hits = pending.hits.saturating_add(1);
        pending.credits_saved = pending.credits_saved.saturating_add(credits_saved);
        futures_util::future::ready(Ok(())).boxed()
    }

    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        let mirror = lock(&self.mirror);
        let out = tenants
            .iter()
            .map(|(tenant, budget)| {
                let period_key = self.current_period(*budget);
                let key = (tenant.clone(), period_key);
                let mut account = mirror.accounts.get(&key).copied().unwrap_or_default();
                if let Some(pending) = mirror.pending_hits.get(&key) {
                    account.cache_hits = account.cache_hits.saturating_add(pending.hits);
                    account.credits_saved =
                        account.credits_saved.saturating_add(pending.credits_saved);
                }
                account.usage(tenant, *budget, key.1)
            })
            .collect();
        futures_util::future::ready(Ok(out)).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        SqliteLedger::flush(self).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        let (reply, answer) = oneshot::channel();
        // Boxed: the answer comes back from another thread. The probe queues
        // behind real work, so a stuck writer shows as a slow or failed check.
        self.ask(Command::Probe { reply }, answer).boxed()
    }

    // Interim: kept in memory until the durable table lands.
    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a super::Fingerprint,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<super::IdempotencyBegin, LedgerError>> {
        let found = self.keys.begin(tenant, key, fingerprint, ttl);
        Box::pin(async move { Ok(found) })
    }

    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a super::Fingerprint,
        answer: super::StoredAnswer,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.keys.complete(tenant, key, fingerprint, answer, ttl);
        Box::pin(async move { Ok(()) })
    }

    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a super::Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.keys.abandon(tenant, key, fingerprint);
        Box::pin(async move { Ok(()) })
    }
}

/// Reports usage from the ledger file at `path` without writing to it: the
/// file is opened read-only, so this works while `viewgate serve` holds it
/// open, takes no write lock and runs no recovery. Reservations still open in
/// the file count as `reserved`. Hit counts the server has not written yet
/// (at most its last second) are not seen.
pub fn read_usage(
    path: &Path,
    tenants: &[(String, Option<Budget>)],
    clock: &Clock,
) -> Result<Vec<Usage>, LedgerError> {
    if path.is_dir() {
        return Err(unavailable(path, "is a directory, not a file"));
    }
    if !path.exists() {
        return Err(unavailable(path, "no such file"));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
    read_usage_from(&mut conn, tenants, clock).map_err(|e| unavailable(path, e))
}

fn read_usage_from(
    conn: &mut Connection,
    tenants: &[(String, Option<Budget>)],
    clock: &Clock,
) -> Result<Vec<Usage>, String> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    // One read transaction: accounts and reservations from the same snapshot.
    let tx = conn
        .transaction()
        .map_err(|e| format!("cannot read: {e}"))?;
    let version = schema_version(&tx).map_err(|e| format!("cannot read: {e}"))?;
    let now = clock.wall();
    if version == 0 {
        // Created but never initialised: nothing was ever recorded.
        return Ok(tenants
            .iter()
            .map(|(tenant, budget)| {
                Account::default().usage(tenant, *budget, period_key(budget_period(*budget), now))
            })
            .collect());
    }
    check_version(&tx, version)?;
    let mut account_query = tx
        .prepare(
            "SELECT used, requests, cache_hits, credits_saved, orphaned
             FROM accounts WHERE tenant = ?1 AND period = ?2",
        )
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut reserved_query = tx
        .prepare(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations
             WHERE tenant = ?1 AND period = ?2",
        )
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut out = Vec::with_capacity(tenants.len());
    for (tenant, budget) in tenants {
        let period = period_key(budget_period(*budget), now);
        let account = read_account(&mut account_query, &mut reserved_query, tenant, &period)
            .map_err(|e| format!("cannot read: {e}"))?;
        out.push(account.usage(tenant, *budget, period));
    }
    Ok(out)
}

fn read_account(
    account_query: &mut rusqlite::Statement<'_>,
    reserved_query: &mut rusqlite::Statement<'_>,
    tenant: &str,
    period: &str,
) -> rusqlite::Result<Account> {
    let mut account = account_query
        .query_row(params![tenant, period], |row| {
            Ok(Account {
                used: count(row.get(0)?),
                requests: count(row.get(1)?),
                cache_hits: count(row.get(2)?),
                credits_saved: count(row.get(3)?),
                orphaned: count(row.get(4)?),
                reserved: 0,
            })
        })
        .optional()?
        .unwrap_or_default();
    account.reserved = count(reserved_query.query_row(params![tenant, period], |row| row.get(0))?);
    Ok(account)
}

/// The thread that owns the read-write connection and the truth.
struct Writer {
    /// Held until the thread ends, after its last commit.
    _owner: File,
    conn: Connection,
    path: PathBuf,
    clock: Clock,
    book: Book,
    mirror: Arc<Mutex<Mirror>>,
    commands: mpsc::Receiver<Command>,
    hit_flush_interval: Duration,
    /// When the book first held answered closes not yet on disk.
    closes_waiting_since: Option<Instant>,
    /// Those closes: `(reservation id, actual)` (`None`: a release). Kept
    /// until written, and applied again if their write fails.
    answered: Vec<(u64, Option<u64>)>,
}

/// A command applied to the book, waiting for the commit to be answered.
enum Answer {
    Reserve(Reply<Reservation>, Result<Reservation, LedgerError>),
    Balance(Reply<Balance>, Balance),
    Flush(Reply<()>),
}

impl Answer {
    /// Sends the result, or `failure` when the batch did not commit. A caller
    /// that stopped waiting is no one's concern.
    fn send(self, failure: Option<&LedgerError>) {
        match self {
            Answer::Reserve(reply, result) => {
                let _ = reply.send(failure.map_or(result, |e| Err(e.clone())));
            }
            Answer::Balance(reply, balance) => {
                let _ = reply.send(failure.map_or(Ok(balance), |e| Err(e.clone())));
            }
            Answer::Flush(reply) => {
                let _ = reply.send(failure.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
    }
}

/// What the writer does after a batch.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

impl Writer {
    fn run(mut self) {
        loop {
            let wait = match self.closes_waiting_since {
                Some(since) => CLOSE_WRITE_DELAY.saturating_sub(self.since(since)),
                None => self.hit_flush_interval,
            };
            let first = match self.commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                // Nothing came: a good moment to write pending hit counts.
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Stop),
            };
            let mut batch: Vec<Command> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if self.apply(batch) == Next::Stop {
                return;
            }
        }
    }

    /// Applies a batch to the book, commits it in one transaction, answers.
    fn apply(&mut self, batch: Vec<Command>) -> Next {
        let mut next = Next::Continue;
        let mut probe = false;
        let mut answers = Vec::with_capacity(batch.len());
        let due = |since| self.since(since) >= CLOSE_WRITE_DELAY;
        if !batch.is_empty() && self.closes_waiting_since.is_some_and(due) {
            // Closes past their delay are written before anything new.
            self.apply(Vec::new());
        }
        // Closes answered earlier may still be in the book's open batch.
        if !self.book.in_batch() {
            self.book.begin();
        }
        let quiet = batch.is_empty();
        for command in batch {
            match command {
                Command::Reserve {
                    tenant,
                    period,
                    limit,
                    estimate,
                    request_id,
                    reply,
                } => {
                    let result = self
                        .book
                        .reserve(&tenant, period, limit, estimate, &request_id);
                    answers.push(Answer::Reserve(reply, result));
                }
                Command::Close {
                    id,
                    actual,
                    tenant,
                    period,
                    budget,
                    reply,
                } => {
                    // An id that is no longer open changes nothing.
                    let held = self.book.held(id);
                    self.book.finish(id, actual);
                    let gives_back = match (actual, &held) {
                        (Some(actual), Some((_, held))) => actual <= *held,
                        _ => true,
                    };
                    if gives_back {
                        // Lost in a crash, the reservation is counted in full:
                        // answer now. Readers (the mirror: what is committed)
                        // see this close, and nothing else uncommitted, before
                        // the caller is told.
                        let mut mirror = lock(&self.mirror);
                        if let Some((key, held)) = held {
                            mirror.accounts.entry(key).or_default().close(held, actual);
                            self.answered.push((id, actual));
                        }
                        let balance = mirror
                            .accounts
                            .get(&(tenant.to_string(), period))
                            .copied()
                            .unwrap_or_default()
                            .balance(budget);
                        drop(mirror);
                        let now = self.clock.now();
                        self.closes_waiting_since.get_or_insert(now);
                        let _ = reply.send(Ok(balance));
                    } else {
                        let balance = self.book.account(&tenant, &period).balance(budget);
                        answers.push(Answer::Balance(reply, balance));
                    }
                }
                Command::Flush { reply } => answers.push(Answer::Flush(reply)),
                Command::Probe { reply } => {
                    probe = true;
                    answers.push(Answer::Flush(reply));
                }
                Command::Stop => next = Next::Stop,
                Command::Crash => {
                    // Dropping the answers tells their callers the writer stopped.
                    self.book.rollback();
                    return Next::Stop;
                }
                #[cfg(test)]
                Command::BreakWrites(broken) => {
                    let _ = self.conn.pragma_update(None, "query_only", broken);
                }
            }
        }

        let closes_due = self
            .closes_waiting_since
            .map(|since| self.since(since) >= CLOSE_WRITE_DELAY);
        // A quiet tick writes pending hit counts, unless closes wait their turn.
        let tick = quiet && closes_due.is_none();
        let must_write = !answers.is_empty() || probe || tick || next == Next::Stop;
        if !must_write && closes_due != Some(true) {
            // Only answered closes: they ride with the next durable batch.
            return next;
        }
        // A copy, not a take: until the commit, `usage` still sees them as pending.
        let hits = lock(&self.mirror).pending_hits.clone();
        for (key, pending) in &hits {
            self.book.hit(key, pending.hits, pending.credits_saved);
        }
        self.closes_waiting_since = None;
        let written = {
            let changes = self.book.changes();
            if changes.is_empty() {
                if probe {
                    probe_writes(&mut self.conn)
                } else {
                    Ok(())
                }
            } else {
                write_changes(&mut self.conn, &changes, &rfc3339(self.clock.wall()))
            }
        };
        match written {
            Ok(()) => {
                let touched = self.book.commit();
                self.publish(touched, &hits);
                for answer in answers {
                    answer.send(None);
                }
            }
            Err(e) => {
                self.book.rollback();
                let error = unavailable(&self.path, format!("cannot commit: {e}"));
                if !self.answered.is_empty() {
                    // Their callers were told: apply them again, to be
                    // written with the next batch (readers kept seeing them).
                    self.book.begin();
                    for &(id, actual) in &self.answered {
                        self.book.finish(id, actual);
                    }
                    let now = self.clock.now();
                    self.closes_waiting_since = Some(now);
                    tracing::warn!(
                        error = %error,
                        closes = self.answered.len(),
                        "ledger could not write answered settles; they are kept and retried \
                         (a crash before they are written counts their reservations in full)"
                    );
                } else if answers.is_empty() {
                    // Only hit counts were in it; they stay pending for the next try.
                    tracing::warn!(error = %error, "ledger could not write cache-hit counts");
                }
                for answer in answers {
                    answer.send(Some(&error));
                }
            }
        }
        next
    }

    /// Time since `then` on the ledger's clock (fake in tests).
    fn since(&self, then: Instant) -> Duration {
        self.clock.now().saturating_duration_since(then)
    }

    /// Shows committed accounts to readers and retires the hits written.
    fn publish(&mut self, touched: Vec<(AccountKey, Account)>, hits: &HashMap<AccountKey, Hits>) {
        self.answered.clear();
        let mut mirror = lock(&self.mirror);
        if !touched.is_empty() {
            mirror.commits += 1;
        }
        mirror.accounts.extend(touched);
        for (key, written) in hits {
            if let Some(pending) = mirror.pending_hits.get_mut(key) {
                pending.hits = pending.hits.saturating_sub(written.hits);
                pending.credits_saved = pending.credits_saved.saturating_sub(written.credits_saved);
                if pending.hits == 0 && pending.credits_saved == 0 {
                    mirror.pending_hits.remove(key);
                }
            }
        }
    }
}

/// Locks `<path>-lock` for as long as the returned file is open, so one
/// process at a time writes the ledger. Two writers would each trust their
/// own in-memory balances (overspending together), and the second would
/// count the first's in-flight reservations as orphans. The operating system
/// drops the lock when the process dies, even by `kill -9`.
fn take_ownership(path: &Path) -> Result<File, LedgerError> {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| unavailable(path, format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(unavailable(
            path,
            format!(
                "is in use by another ledger (a viewgate process holds {})",
                lock_path.display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(unavailable(
            path,
            format!("cannot lock {}: {e}", lock_path.display()),
        )),
    }
}

/// Pragmas every read-write connection needs.
fn configure(conn: &Connection) -> Result<(), String> {
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

/// Creates the tables in a new file, or checks an existing file is ours.
fn create_schema(conn: &mut Connection, path: &Path) -> Result<(), LedgerError> {
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
        tx.execute_batch(SCHEMA).map_err(fail)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(fail)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail)?;
    } else {
        check_version(&tx, version).map_err(|e| unavailable(path, e))?;
    }
    tx.commit().map_err(fail)
}

fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Accepts only files this build wrote. A later version adds its migrations here.
fn check_version(conn: &Connection, version: i64) -> Result<(), String> {
    let application: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    if application != APPLICATION_ID {
        return Err("is a SQLite database but not a viewgate ledger".into());
    }
    if version != SCHEMA_VERSION {
        return Err(format!(
            "has schema version {version}; this viewgate reads version {SCHEMA_VERSION}"
        ));
    }
    Ok(())
}

/// Reads every account and open reservation into a book.
fn load(conn: &Connection) -> rusqlite::Result<Book> {
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
        "SELECT tenant, period, used, requests, cache_hits, credits_saved, orphaned FROM accounts",
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

/// Counts reservations a previous process left open as spent, in one transaction.
fn recover(conn: &mut Connection, book: &mut Book, clock: &Clock) -> rusqlite::Result<()> {
    book.begin();
    let orphans = book.orphan_all();
    if orphans.is_empty() {
        book.commit();
        return Ok(());
    }
    if let Err(e) = write_changes(conn, &book.changes(), &rfc3339(clock.wall())) {
        book.rollback();
        return Err(e);
    }
    book.commit();
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

/// Takes the write lock and runs a write statement that matches no row:
/// fails if the file no longer takes writes, changes nothing, costs no fsync.
fn probe_writes(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM reservations WHERE id < 0", [])?;
    tx.commit()
}

/// Writes a batch's changes in one `BEGIN IMMEDIATE … COMMIT`. Accounts are
/// written as absolute values from the book, so disk and memory agree
/// exactly after the commit.
fn write_changes(conn: &mut Connection, changes: &Changes<'_>, now: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO accounts (tenant, period, used, requests, cache_hits, credits_saved, orphaned)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tenant, period) DO UPDATE SET
                 used = excluded.used,
                 requests = excluded.requests,
                 cache_hits = excluded.cache_hits,
                 credits_saved = excluded.credits_saved,
                 orphaned = excluded.orphaned",
        )?;
        for ((tenant, period), account) in &changes.accounts {
            upsert.execute(params![
                tenant,
                period,
                integer(account.used),
                integer(account.requests),
                integer(account.cache_hits),
                integer(account.credits_saved),
                integer(account.orphaned),
            ])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO reservations (id, tenant, period, amount, request_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (id, hold) in &changes.opened {
            insert.execute(params![
                integer(*id),
                hold.key.0,
                hold.key.1,
                integer(hold.amount),
                &*hold.request_id,
                now,
            ])?;
        }
        let mut delete = tx.prepare_cached("DELETE FROM reservations WHERE id = ?1")?;
        for id in &changes.closed {
            delete.execute([integer(*id)])?;
        }
    }
    // Dropping `tx` on any error above rolls the batch back.
    tx.commit()
}

/// SQLite integers are signed; credits beyond `i64::MAX` are stored as `i64::MAX`.
fn integer(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads back a stored count; the CHECK constraints keep them non-negative.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn unavailable(path: &Path, reason: impl Display) -> LedgerError {
    LedgerError::Unavailable(format!("{}: {reason}", path.display()))
}

fn lock(mirror: &Mutex<Mirror>) -> MutexGuard<'_, Mirror> {
    // Every update under this lock is a plain map write; a panic cannot
    // leave it half-done, so a poisoned lock is still usable.
    mirror.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Period;

    fn budget(credits: u64) -> Option<Budget> {
        Some(Budget {
            credits,
            period: Period::Total,
        })
    }

    #[tokio::test]
    async fn a_failed_commit_answers_unavailable_and_answered_closes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
        let t: Arc<str> = Arc::from("crm");
        let b = budget(10);
        let held = ledger.reserve(&t, b, 4, "r1").await.unwrap();
        let before = ledger.balance("crm", b).await.unwrap();

        ledger.break_writes(true);
        // A settle charging more than was held must be on disk to be answered.
        let (settled, reserved) = futures_util::join!(
            ledger.settle(held.clone(), 5, b),
            ledger.reserve(&t, b, 1, "r2")
        );
        for error in [settled.unwrap_err(), reserved.unwrap_err()] {
            let LedgerError::Unavailable(message) = error else {
                panic!("expected Unavailable, got {error:?}");
            };
            assert!(message.contains("ledger.db"), "{message}");
        }
        assert!(ledger.health().await.is_err());
        assert_eq!(ledger.balance("crm", b).await.unwrap(), before);
        // One charging no more than was held is answered at once. Its write
        // fails (with the flush, or on its own after 50 ms): it is kept, and
        // readers go on seeing what its caller was told.
        let early = ledger.settle(held.clone(), 4, b).await.unwrap();
        assert_eq!((early.used, early.reserved), (4, 0));
        ledger.flush().await.unwrap_err();
        ledger.flush().await.unwrap_err();
        assert_eq!(ledger.balance("crm", b).await.unwrap(), early);

        // Once writes work again it is written; settling again changes nothing.
        ledger.break_writes(false);
        ledger.flush().await.unwrap();
        assert!(ledger.health().await.is_ok());
        let after = ledger.settle(held.clone(), 4, b).await.unwrap();
        assert_eq!(after, early);
        assert_eq!(ledger.settle(held, 4, b).await.unwrap(), after);
        drop(ledger);
        let usage = read_usage(&path, &[("crm".into(), b)], &Clock::real()).unwrap();
        assert_eq!(usage[0].balance, after);
        assert_eq!(usage[0].requests, 1);
    }

    #[tokio::test]
    async fn concurrent_commands_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), Clock::real()).unwrap();
        let t: Arc<str> = Arc::from("crm");
        let reservations =
            futures_util::future::join_all((0..64).map(|_| ledger.reserve(&t, None, 1, "r"))).await;
        assert!(reservations.iter().all(Result::is_ok));
        // All 64 are queued before the writer wakes, give or take the first one.
        assert!(ledger.commits() <= 8, "{} commits", ledger.commits());
    }

    #[tokio::test]
    async fn hit_counts_reach_the_file_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let interval = Duration::from_millis(20);
        let ledger = SqliteLedger::open_with(&path, Clock::real(), interval).unwrap();
        ledger.record_hit("crm", None, 3).await.unwrap();
        // Seen at once by the ledger itself, and by the file within the interval.
        let usage = ledger.usage(&[("crm".into(), None)]).await.unwrap();
        assert_eq!((usage[0].cache_hits, usage[0].credits_saved), (1, 3));
        let tenants = [("crm".to_string(), None)];
        let mut seen = 0;
        for _ in 0..200 {
            seen = read_usage(&path, &tenants, &Clock::real()).unwrap()[0].cache_hits;
            if seen == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, 1);
        let usage = ledger.usage(&[("crm".into(), None)]).await.unwrap();
        assert_eq!(usage[0].cache_hits, 1, "written hits are not counted twice");
    }

    #[test]
    fn another_application_s_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE notes (text TEXT)")
            .unwrap();
        let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
        assert!(
            error.to_string().contains("not a viewgate ledger"),
            "{error}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        drop(SqliteLedger::open(&path, Clock::real()).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
        assert!(error.to_string().contains("schema version 2"), "{error}");
        let error = read_usage(&path, &[], &Clock::real()).unwrap_err();
        assert!(error.to_string().contains("schema version 2"), "{error}");
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let first = SqliteLedger::open(&path, Clock::real()).unwrap();
        let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
        assert!(error.to_string().contains("in use"), "{error}");
        assert!(read_usage(&path, &[], &Clock::real()).is_ok());
        drop(first);
        assert!(SqliteLedger::open(&path, Clock::real()).is_ok());
    }
}
