//! The durable ledger: a SQLite file written by one thread in group commits.
//!
//! Async callers never touch the disk. Reserve, settle, release, flush and
//! idempotency keys go to the writer thread (over a channel; answered
//! closes through the mirror, below), which owns the read-write connection
//! and the authoritative [`Book`]. It takes every command already queued (up
//! to [`MAX_BATCH`] from the channel, and every queued close), applies them
//! to the book in order — so the budget check
//! is exact, one command after another — writes what changed in ONE
//! `BEGIN IMMEDIATE … COMMIT` (one fsync for the whole batch), and only then
//! answers. A reservation (or an idempotency key's claim) is therefore on
//! disk before the upstream is called.
//! If the commit fails the book is rolled back and the whole batch answers
//! `Unavailable`, so memory never holds what the disk does not.
//!
//! One exception, because it can only err toward over-counting: a settle that
//! charges no more than its reservation held, or a release, does not wait
//! for the writer, nor wake it. Its caller applies it to the mirror (below),
//! queues it there and is answered at once; the writer takes the queued
//! closes whenever it wakes (for a command, or every [`CLOSE_WRITE_DELAY`]
//! while reservations are open) and applies them to the book ahead of the
//! commands it took (so a reservation sent after a close sees it), then
//! writes them with the next batch that must be durable (the next
//! reservation) or after [`CLOSE_WRITE_DELAY`]. If
//! the process dies first, the reservation is still open on disk and the next
//! start counts its whole amount as spent (`orphaned`): the ledger may then
//! over-count by what those last closes gave back, never under-count. This
//! halves the fsyncs of a miss (one instead of two). A settle that charges
//! more than was held is answered only once it is on disk. An answered close
//! whose write fails is kept and retried with the next batch. Abandoning an
//! idempotency key's claim also rides with the next batch (see `keys`), but
//! goes over the channel. While any reservation is open the writer wakes
//! every [`CLOSE_WRITE_DELAY`] to look for queued closes.
//!
//! After each commit the writer copies the accounts it touched into a shared
//! mirror, which answers `balance` and `usage` without a disk read or a trip
//! through the writer. Closes applied to the mirror that the book does not
//! hold yet are applied again over each account copied, so no reader sees
//! one undone. A crash in the moment between a close's spend reaching the
//! mirror's history and its batch may leave that spend in the file's
//! history as well as its reservation's (statistics only, never the
//! accounts).
//!
//! One process writes a ledger file at a time: `open` locks the file itself
//! (`flock`), and while serving, the path is watched: if the file or its
//! directory vanishes or is replaced, new spend answers `Unavailable` and
//! `health` fails (see `owner`). Reports ([`read_usage`]) open the file
//! read-only and need no lock.
//!
//! Reservations are rows. A process killed between reserve and settle leaves
//! them behind; the next [`SqliteLedger::open`] counts them as spent (the
//! upstream may have billed them) and as `orphaned`, in one transaction that
//! also adds them to the spend history, at the minute each was made (its
//! `created_at`) while that minute is kept, else at the minute of the open.
//!
//! File layout (schema version 4, `PRAGMA user_version`; an older file is
//! migrated in place by `open`, in one transaction):
//! - `accounts(tenant, period, used, requests, cache_hits, credits_saved,
//!   orphaned, coalesced, credits_saved_coalesced)`, one row per tenant and
//!   period key; `reserved` is not stored, it is the sum of the tenant's
//!   open `reservations` rows.
//! - `spend_minutes(tenant, minute, charged, saved_cache, saved_coalesced)`
//!   (version 3), the spend history (see `ledger::history`): one row per
//!   tenant and minute with activity, written as absolute values with the
//!   batches, rows older than a day and an hour deleted.
//! - `reservations(id, tenant, period, amount, request_id, created_at)`, one
//!   row per open reservation, deleted when it is settled or released.
//! - `idempotency_keys(tenant, key, fingerprint, state, status, body, owner,
//!   expires_at)` (version 2), one row per key claimed (`in_flight`) or
//!   answered (`done`); `owner` is a random id per open of the file, so a
//!   claim whose owner is not this open was left by a process that died.
//! - `alerts_fired(id, tenant, period, threshold, fired_at)` and
//!   `alert_outbox(id, alert, attempts, next_attempt_ms)` (version 3):
//!   budget thresholds fired and webhook deliveries owed (see `alerts`).
//!
//! The parts: `writer` (the thread and its group commits), `keys`
//! (idempotency keys), `owner` (the file's lock and watch), `schema` (the
//! file's layout, opening, migration and crash recovery), `report`
//! (read-only usage reports beside a running server).
//!
//! [`Book`]: crate::ledger::book::Book
//! [`MAX_BATCH`]: writer::MAX_BATCH
//! [`CLOSE_WRITE_DELAY`]: writer::CLOSE_WRITE_DELAY

mod alerts;
mod api;
mod keys;
mod owner;
mod report;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::book::{Account, AccountKey, budget_period};
use super::history::{Bucket, History, minute_of};
use super::hits::PendingHits;
use super::{Balance, Ledger, LedgerError, Reservation, Usage, period_key};
use super::{Fingerprint, IdempotencyBegin, StoredAnswer};
use crate::clock::Clock;
use crate::config::Budget;
use crate::log_throttle::LogThrottle;
use writer::Writer;

pub use report::read_usage;

/// How often pending cache-hit counts are written when nothing else is.
const HIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

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
///
/// [`CLOSE_WRITE_DELAY`]: writer::CLOSE_WRITE_DELAY
#[derive(Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    clock: Clock,
    commands: mpsc::Sender<Command>,
    mirror: Arc<Mutex<Mirror>>,
    writer: Option<JoinHandle<()>>,
    /// Whether the path still names the file this ledger has open.
    watch: Arc<owner::Watch>,
    /// The writer's log throttle, for tests to see what it left out.
    #[cfg(test)]
    logs: Arc<LogThrottle>,
    /// Stops the watch thread when dropped, and its handle.
    watcher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// What async callers can read without asking the writer.
#[derive(Debug, Default)]
struct Mirror {
    /// Accounts as last committed, plus the answered closes not yet written.
    accounts: foldhash::HashMap<AccountKey, Account>,
    /// Cache hits counted but not yet committed.
    pending_hits: PendingHits,
    /// Cache hits the writer is committing (taken from `pending_hits`);
    /// counted by readers until the accounts hold them.
    flushing_hits: Arc<PendingHits>,
    /// Spend and savings by minute over the last day, as recorded (the
    /// writer adds settles, `hit` and `coalesced` their savings).
    history: History,
    /// Minutes of `history` changed since they were last written, by
    /// tenant (so a hit on an already-changed minute allocates nothing).
    history_dirty: HashMap<String, HashSet<i64>>,
    /// Batches committed that changed an account or an idempotency key,
    /// for tests of group commit.
    commits: u64,
    /// Reservations committed and not yet closed: a close that gives back
    /// is applied here by its caller only if its reservation is in it, so a
    /// second close of one reservation changes nothing, as in the book.
    open: foldhash::HashSet<u64>,
    /// Closes their callers applied to `accounts` that the writer has not
    /// yet applied to the book, by reservation id: `(account, held,
    /// actual)`. Applied again over each account the writer publishes, so
    /// readers never see one undone.
    ahead: foldhash::HashMap<u64, (AccountKey, u64, Option<u64>)>,
    /// Answered closes (`Command::Close` with `Closing::Answered`) waiting
    /// for the writer. They are not sent over the channel, because a send
    /// wakes the writer, and a close needs no answer: the writer takes them
    /// when it next wakes for anything (a reservation, its poll every
    /// [`CLOSE_WRITE_DELAY`] while reservations are open), ahead of the
    /// commands it took from the channel, so a command sent after a close
    /// sees it. (The other way round is not kept: a close answered after a
    /// command nobody waits for, such as a key's abandon, may be applied
    /// first; the two were concurrent.) One fewer thread wake-up per miss.
    ///
    /// [`CLOSE_WRITE_DELAY`]: writer::CLOSE_WRITE_DELAY
    closes: Vec<Command>,
    /// Set when the writer thread has ended (stopped, crashed or panicked):
    /// a close can no longer be queued.
    writer_gone: bool,
}

impl Mirror {
    /// The account under `key`, as readers see it (empty if none).
    fn account(&self, key: &AccountKey) -> Account {
        self.accounts.get(key).copied().unwrap_or_default()
    }

    /// Adds `event` to `tenant`'s bucket of `minute`, to be written.
    fn record(&mut self, tenant: &str, minute: i64, event: Bucket) {
        self.history.add(tenant, minute, event);
        match self.history_dirty.get_mut(tenant) {
            Some(minutes) => {
                minutes.insert(minute);
            }
            None => {
                self.history_dirty
                    .insert(tenant.to_string(), HashSet::from([minute]));
            }
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// How a close is answered.
#[derive(Debug)]
enum Closing {
    /// Its caller applied it to the mirror and was answered at this instant
    /// (see [`SqliteLedger::close`]): it rides with the next durable batch,
    /// and is written within [`CLOSE_WRITE_DELAY`] of that instant.
    ///
    /// [`CLOSE_WRITE_DELAY`]: writer::CLOSE_WRITE_DELAY
    Answered(Instant),
    /// Answered once committed, with the balance of `tenant` in `period`
    /// (the current one when the call was made).
    Committed(Reply<Balance>),
}

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
    /// Settle (`actual` is `Some`) or release.
    Close {
        id: u64,
        actual: Option<u64>,
        tenant: Arc<str>,
        period: String,
        budget: Option<Budget>,
        reply: Closing,
    },
    Flush {
        reply: Reply<()>,
    },
    /// Claims an idempotency key; answered after the claim is committed.
    KeyBegin {
        id: keys::KeyId,
        fingerprint: Fingerprint,
        ttl: Duration,
        reply: Reply<IdempotencyBegin>,
    },
    /// Stores a key's answer; answered after it is committed.
    KeyComplete {
        id: keys::KeyId,
        fingerprint: Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
        reply: Reply<()>,
    },
    /// Frees a key's claim; not answered (rides with the next batch).
    KeyAbandon {
        id: keys::KeyId,
        fingerprint: Fingerprint,
    },
    /// A budget alert or outbox step; answered after its own commit.
    Alert {
        command: alerts::AlertCommand,
        reply: Reply<alerts::AlertReply>,
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
    /// Holds the writer, mid-batch, until the sender is used or dropped;
    /// says on the first channel when it is held.
    #[cfg(test)]
    Hold(mpsc::Sender<()>, mpsc::Receiver<()>),
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
        let owner = owner::take_ownership(path)?;
        let watch = Arc::new(owner.watch(path));
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
        schema::configure(&conn).map_err(|e| unavailable(path, e))?;
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
            return Err(unavailable(
                path,
                "is read-only: the ledger must write to it",
            ));
        }
        schema::create_schema(&mut conn, path)?;
        let mut book =
            schema::load(&conn).map_err(|e| unavailable(path, format!("cannot read: {e}")))?;
        let mut history = schema::load_history(&conn, clock.wall())
            .map_err(|e| unavailable(path, format!("cannot read: {e}")))?;
        schema::recover(&mut conn, &mut book, &mut history, &clock)
            .map_err(|e| unavailable(path, format!("cannot recover open reservations: {e}")))?;
        let mirror = Arc::new(Mutex::new(Mirror {
            accounts: book.accounts().clone(),
            history,
            ..Mirror::default()
        }));
        // Tells this open's claims from those of a process that died holding the file.
        let owner_id = getrandom::u64()
            .map(|id| i64::from_ne_bytes(id.to_ne_bytes()))
            .map_err(|e| unavailable(path, format!("no random owner id: {e}")))?;
        let watcher = owner::spawn_watcher(Arc::clone(&watch), owner::WATCH_EVERY)
            .map_err(|e| unavailable(path, format!("cannot start the file watch thread: {e}")))?;
        let (commands, receiver) = mpsc::channel();
        // A full disk fails every batch, 20 or more a second: each failure
        // is logged once, then summed up.
        let logs = Arc::new(LogThrottle::new(clock.clone()));
        let writer = Writer {
            logs: Arc::clone(&logs),
            conn,
            path: path.to_path_buf(),
            clock: clock.clone(),
            book,
            mirror: Arc::clone(&mirror),
            commands: receiver,
            hit_flush_interval,
            hits_written_at: writer::channel_now(),
            hits_due: false,
            closes_waiting_since: None,
            answered: Vec::new(),
            keys: keys::KeyWrites::default(),
            owner_id,
            next_purge: clock.now(),
            pruned_minute: None,
            _owner: owner,
        };
        let writer = std::thread::Builder::new()
            .name("viewgate-ledger".into())
            .spawn(move || writer.run())
            .map_err(|e| unavailable(path, format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteLedger {
            path: path.to_path_buf(),
            clock,
            commands,
            mirror,
            writer: Some(writer),
            watch,
            #[cfg(test)]
            logs,
            watcher: Some(watcher),
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

    /// Holds the writer once it reaches this command, until the returned
    /// sender is used or dropped; the receiver hears when it is held.
    #[cfg(test)]
    fn hold(&self) -> (mpsc::Sender<()>, mpsc::Receiver<()>) {
        let (release, held) = mpsc::channel();
        let (reached, arrived) = mpsc::channel();
        let _ = self.commands.send(Command::Hold(reached, held));
        (release, arrived)
    }

    #[cfg(test)]
    fn logs(&self) -> &LogThrottle {
        &self.logs
    }

    #[cfg(test)]
    fn commits(&self) -> u64 {
        lock(&self.mirror).commits
    }

    /// Fails once the file was found removed or replaced: new spend and new
    /// claims would go to a file nobody can reach. One atomic load.
    fn still_owned(&self) -> Result<(), LedgerError> {
        self.watch.lost().map_or(Ok(()), |error| Err(error.clone()))
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

    /// A settle or release. One that gives back (charges no more than was
    /// held, or nothing) can only err toward over-counting if lost, so it
    /// is not written before it is answered (see the module notes), and it
    /// need not wait for the writer either: it is applied to the mirror
    /// here, so readers (and this answer) see it at once, and queued there
    /// for the writer (see [`Mirror::closes`]). One that charges more than
    /// was held waits for its commit.
    fn close(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
    ) -> BoxFuture<'_, Result<Balance, LedgerError>> {
        // The balance reported is the current period's, which may be a new one.
        let period = self.current_period(budget);
        let gives_back = actual.is_none_or(|actual| actual <= reservation.amount);
        if gives_back {
            let answered = self.close_in_mirror(reservation, actual, budget, period);
            return futures_util::future::ready(answered).boxed();
        }
        let (reply, answer) = oneshot::channel();
        let close = Command::Close {
            id: reservation.id,
            actual,
            tenant: reservation.tenant,
            period,
            budget,
            reply: Closing::Committed(reply),
        };
        // Boxed: the answer comes back from another thread after a commit.
        self.ask(close, answer).boxed()
    }

    /// Applies a close that gives back, answered now, to the mirror if its
    /// reservation is still open there, queues it for the writer (see
    /// [`Mirror::closes`]), and answers the balance of the tenant in `period`.
    fn close_in_mirror(
        &self,
        reservation: Reservation,
        actual: Option<u64>,
        budget: Option<Budget>,
        period: String,
    ) -> Result<Balance, LedgerError> {
        let now = self.clock.now();
        let minute = minute_of(self.clock.wall_at(now));
        let key = (reservation.tenant.to_string(), reservation.period.clone());
        let mut guard = lock(&self.mirror);
        let mirror = &mut *guard;
        if mirror.writer_gone {
            return Err(unavailable(&self.path, "the ledger writer has stopped"));
        }
        if mirror.open.remove(&reservation.id) {
            let account = mirror.accounts.entry(key.clone()).or_default();
            account.close(reservation.amount, actual);
            if let Some(actual) = actual {
                mirror.record(&reservation.tenant, minute, Bucket::charged(actual));
            }
            mirror
                .ahead
                .insert(reservation.id, (key.clone(), reservation.amount, actual));
        }
        let current = if key.1 == period {
            key
        } else {
            (key.0, period.clone())
        };
        let balance = mirror.account(&current).balance(budget);
        mirror.closes.push(Command::Close {
            id: reservation.id,
            actual,
            tenant: reservation.tenant,
            period,
            budget,
            reply: Closing::Answered(now),
        });
        Ok(balance)
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        // The watch first: closing the connection removes the write-ahead
        // files, which must not read as someone else removing them.
        if let Some((stop, watcher)) = self.watcher.take() {
            // A closed channel wakes the watch thread at once.
            drop(stop);
            let _ = watcher.join();
        }
        if let Some(writer) = self.writer.take() {
            let _ = self.commands.send(Command::Stop);
            // Waits for the last commit (milliseconds), so the file holds
            // everything and is closed once drop returns.
            let _ = writer.join();
        }
    }
}

/// A duration in whole milliseconds, as stored; saturates.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
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
