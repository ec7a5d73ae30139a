//! The writer thread: owns the read-write connection and the authoritative
//! book, applies queued commands in order (answered closes queued in the
//! mirror first) and commits each batch in one transaction (one fsync)
//! before answering.

use crate::ledger::Saving;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};

use super::keys::{KeyWrites, PURGE_BATCH};
use super::owner::Ownership;
use super::{Closing, Command, Mirror, Reply, integer, lock, millis, unavailable};
use crate::clock::{Clock, rfc3339};
use crate::ledger::book::{Account, AccountKey, Book, Changes};
use crate::ledger::history::{Bucket, KEEP_MINUTES, minute_of};
use crate::ledger::{Balance, IdempotencyBegin, LedgerError, Reservation};
use crate::log_throttle::LogThrottle;

/// The most commands one transaction carries.
pub(super) const MAX_BATCH: usize = 512;

/// How long an answered settle, release or abandon may wait for a batch to
/// ride with; also how often the writer looks for queued closes while
/// reservations are open.
pub(super) const CLOSE_WRITE_DELAY: Duration = Duration::from_millis(50);

/// How often expired idempotency keys are looked for (on the ledger's clock).
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Log sites of the writer's repeating failures (see [`LogThrottle`]).
pub(super) const CLOSES_UNWRITTEN: &str = "ledger.closes_unwritten";
const HITS_UNWRITTEN: &str = "ledger.hits_unwritten";
const KEY_NOT_FREED: &str = "ledger.key_not_freed";

/// The thread that owns the read-write connection and the truth.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) clock: Clock,
    /// A failing disk fails every batch: each failure is logged once, then
    /// summed up every few seconds.
    pub(super) logs: Arc<LogThrottle>,
    pub(super) book: Book,
    pub(super) mirror: Arc<Mutex<Mirror>>,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) hit_flush_interval: Duration,
    /// When pending hit counts were last taken to be written (real time,
    /// like the channel's timeouts it rides on).
    pub(super) hits_written_at: Instant,
    /// Whether this batch must write pending hit counts.
    pub(super) hits_due: bool,
    /// When the book first held answered closes not yet on disk.
    pub(super) closes_waiting_since: Option<Instant>,
    /// Those closes: `(reservation id, actual)` (`None`: a release). Kept
    /// until written, and applied again if their write fails.
    pub(super) answered: Vec<(u64, Option<u64>)>,
    /// Idempotency-key changes not yet committed.
    pub(super) keys: KeyWrites,
    /// This open's random id, stamped on the keys it claims.
    pub(super) owner_id: i64,
    /// When expired keys are next deleted.
    pub(super) next_purge: Instant,
    /// The minute the history was last pruned in (memory and file).
    pub(super) pruned_minute: Option<i64>,
    /// The file's lock, held until the thread ends. Last, so it is dropped
    /// after `conn` is closed (see `owner`).
    pub(super) _owner: Ownership,
}

/// A command applied to the book, waiting for the commit to be answered.
enum Answer {
    Reserve(Reply<Reservation>, Result<Reservation, LedgerError>),
    Balance(Reply<Balance>, Balance),
    Begin(
        Reply<IdempotencyBegin>,
        Result<IdempotencyBegin, LedgerError>,
    ),
    Committed(Reply<()>),
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
            Answer::Begin(reply, result) => {
                let _ = reply.send(failure.map_or(result, |e| Err(e.clone())));
            }
            Answer::Committed(reply) => {
                let _ = reply.send(failure.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
    }
}

/// The closes their callers applied to the mirror that the book does not
/// hold yet (usually none, a few under load), by account.
struct Ahead<'m>(foldhash::HashMap<&'m AccountKey, Vec<(u64, Option<u64>)>>);

impl<'m> Ahead<'m> {
    fn of(ahead: &'m foldhash::HashMap<u64, (AccountKey, u64, Option<u64>)>) -> Self {
        let mut by_account = foldhash::HashMap::<&AccountKey, Vec<_>>::default();
        for (key, held, actual) in ahead.values() {
            by_account.entry(key).or_default().push((*held, *actual));
        }
        Ahead(by_account)
    }

    /// Applies to `account`, the book's `key`, what its callers were told.
    fn apply(&self, key: &AccountKey, account: &mut Account) {
        for &(held, actual) in self.0.get(key).into_iter().flatten() {
            account.close(held, actual);
        }
    }
}

/// Real monotonic time, for what rides on the channel's timeouts (which
/// are real time whatever the ledger's clock): the tick that writes
/// pending hit counts.
#[allow(clippy::disallowed_methods)]
pub(super) fn channel_now() -> Instant {
    Instant::now()
}

/// Marks the writer gone in the mirror when dropped.
struct WriterGone(Arc<Mutex<Mirror>>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        lock(&self.0).writer_gone = true;
    }
}

/// What the writer does after a batch.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

impl Writer {
    pub(super) fn run(mut self) {
        // However the thread ends (stop, crash, panic), closes can no
        // longer be queued for it.
        let _gone = WriterGone(Arc::clone(&self.mirror));
        loop {
            // While reservations are open, answered closes may be queued in
            // the mirror without waking this thread: look every
            // CLOSE_WRITE_DELAY (each is then written about CLOSE_WRITE_DELAY
            // after its answer). Twenty wake-ups a second while calls are
            // open, nothing while none is.
            let poll = if self.book.has_holds() {
                CLOSE_WRITE_DELAY
            } else {
                Duration::MAX
            };
            let wait = match self.closes_waiting_since {
                Some(since) => CLOSE_WRITE_DELAY.saturating_sub(self.since(since)),
                None => self.until_hits_due().min(poll),
            };
            let first = match self.commands.recv_timeout(wait) {
                Ok(command) => Some(command),
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
            // Taken after the channel, so a close queued before any command
            // taken here was sent is in: applied first, that command sees it.
            let closes = std::mem::take(&mut lock(&self.mirror).closes);
            // Pending hit counts are written at least every
            // hit_flush_interval, however many commands that need no
            // commit (alert outbox polls, closes) keep this thread busy.
            self.hits_due = self.until_hits_due().is_zero();
            let closes_due = self
                .closes_waiting_since
                .is_some_and(|since| self.since(since) >= CLOSE_WRITE_DELAY);
            if batch.is_empty() && closes.is_empty() && !self.hits_due && !closes_due {
                // A poll that found nothing to do.
                continue;
            }
            let batch = if closes.is_empty() {
                batch
            } else {
                closes.into_iter().chain(batch).collect()
            };
            if self.apply(batch) == Next::Stop {
                return;
            }
        }
    }

    /// Applies a batch to the book, commits it in one transaction, answers.
    /// Closes whose callers were answered more than [`CLOSE_WRITE_DELAY`]
    /// ago (they waited behind a long commit, or in the mirror for up to a
    /// poll) are written first, on their own: they are owed to the disk
    /// already. That costs a second commit only when a command arrives in
    /// the same wake-up.
    fn apply(&mut self, batch: Vec<Command>) -> Next {
        let overdue = |command: &Command| match command {
            Command::Close {
                reply: Closing::Answered(at),
                ..
            } => self.since(*at) >= CLOSE_WRITE_DELAY,
            _ => false,
        };
        if !batch.iter().any(overdue) {
            return self.apply_batch(batch);
        }
        let (overdue, rest): (Vec<Command>, Vec<Command>) = batch.into_iter().partition(overdue);
        self.apply_batch(overdue);
        if rest.is_empty() {
            return Next::Continue;
        }
        self.apply_batch(rest)
    }

    /// [`Self::apply`] of one batch.
    fn apply_batch(&mut self, batch: Vec<Command>) -> Next {
        let mut next = Next::Continue;
        let mut probe = false;
        let mut answers = Vec::with_capacity(batch.len());
        let due = |since| self.since(since) >= CLOSE_WRITE_DELAY;
        if !batch.is_empty() && self.closes_waiting_since.is_some_and(due) {
            // Closes past their delay are written before anything new.
            self.apply_batch(Vec::new());
        }
        // Closes answered earlier may still be in the book's open batch.
        if !self.book.in_batch() {
            self.book.begin();
        }
        let mut charged_in_batch = Vec::new();
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
                    match reply {
                        Closing::Answered(at) => {
                            // It gives back, and its caller applied it to
                            // the mirror and was answered (lost in a crash,
                            // the reservation is counted in full): it rides
                            // with the next durable batch.
                            let ahead = lock(&self.mirror).ahead.remove(&id);
                            if held.is_some() {
                                self.answered.push((id, actual));
                                let since = self.closes_waiting_since.get_or_insert(at);
                                *since = (*since).min(at);
                            } else if let Some((key, _, _)) = ahead {
                                // Not open in the book after all: the mirror
                                // shows the book's account again.
                                let account = self.book.account(&key.0, &key.1);
                                self.publish_one(key, account);
                            }
                        }
                        Closing::Committed(reply) if held.is_none() => {
                            // Closed already: nothing changed, nothing to
                            // write. Answered with what readers see.
                            let key = (tenant.to_string(), period);
                            let account = lock(&self.mirror).account(&key);
                            let _ = reply.send(Ok(account.balance(budget)));
                        }
                        Closing::Committed(reply) => {
                            // Sent only by a settle that charges more than was held.
                            let minute = minute_of(self.clock.wall());
                            if let Some(actual) = actual {
                                let mut mirror = lock(&self.mirror);
                                mirror.open.remove(&id);
                                let charge = Bucket::charged(actual);
                                mirror.record(&tenant, minute, charge);
                                drop(mirror);
                                // Taken back if the batch fails: its caller retries.
                                charged_in_batch.push((id, tenant.clone(), minute, charge));
                            }
                            let balance = self.book.account(&tenant, &period).balance(budget);
                            answers.push(Answer::Balance(reply, balance));
                        }
                    }
                }
                Command::KeyBegin {
                    id,
                    fingerprint,
                    ttl,
                    reply,
                } => {
                    let now_ms = self.clock.wall().as_millisecond();
                    let result = self
                        .keys
                        .begin(
                            &self.conn,
                            id,
                            &fingerprint,
                            self.owner_id,
                            now_ms,
                            millis(ttl),
                        )
                        .map_err(|e| unavailable(&self.path, format!("cannot read: {e}")));
                    answers.push(Answer::Begin(reply, result));
                }
                Command::KeyComplete {
                    id,
                    fingerprint,
                    answer,
                    ttl,
                    reply,
                } => {
                    let now_ms = self.clock.wall().as_millisecond();
                    self.keys.complete(
                        id,
                        &fingerprint,
                        answer,
                        self.owner_id,
                        now_ms,
                        millis(ttl),
                    );
                    answers.push(Answer::Committed(reply));
                }
                Command::KeyAbandon { id, fingerprint } => {
                    // Its caller did not wait: like a release, it rides with
                    // the next batch (see the `keys` module notes).
                    match self
                        .keys
                        .abandon(&self.conn, id, &fingerprint, self.owner_id)
                    {
                        Ok(true) => {
                            let now = self.clock.now();
                            self.closes_waiting_since.get_or_insert(now);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            if let Some(suppressed) = self.logs.admit(KEY_NOT_FREED) {
                                tracing::warn!(
                                    error = %unavailable(&self.path, e),
                                    suppressed,
                                    "ledger could not free an idempotency key; it stays claimed until it expires"
                                );
                            }
                        }
                    }
                }
                Command::Alert { command, reply } => {
                    // Its own transaction, committed before it is answered
                    // (no batch transaction is open while commands are applied).
                    let result = super::alerts::run(&mut self.conn, command).map_err(|e| {
                        unavailable(&self.path, format!("cannot write an alert: {e}"))
                    });
                    let _ = reply.send(result);
                }
                Command::Flush { reply } => answers.push(Answer::Committed(reply)),
                Command::Probe { reply } => {
                    probe = true;
                    answers.push(Answer::Committed(reply));
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
                #[cfg(test)]
                Command::Hold(reached, held) => {
                    let _ = reached.send(());
                    let _ = held.recv();
                }
            }
        }

        let closes_due = self
            .closes_waiting_since
            .map(|since| self.since(since) >= CLOSE_WRITE_DELAY);
        // Hit counts due are written now, unless closes wait their turn
        // (they are written within CLOSE_WRITE_DELAY, hits with them).
        let tick = self.hits_due && closes_due.is_none();
        let must_write = !answers.is_empty() || probe || tick || next == Next::Stop;
        if !must_write && closes_due != Some(true) {
            // Only answered closes: they ride with the next durable batch.
            return next;
        }
        // The mirror's lock is held for O(1) here, whatever the tenant count:
        // pending hits move to `flushing_hits` (still counted by `usage`
        // until the commit), and the changed minutes are taken, their
        // buckets read a chunk per lock.
        // Written or failed, the next tick is an interval away (a failing
        // disk is not retried in a loop).
        self.hits_written_at = channel_now();
        self.hits_due = false;
        let (hits, dirty) = {
            let mut mirror = lock(&self.mirror);
            let hits = Arc::new(std::mem::take(&mut mirror.pending_hits));
            mirror.flushing_hits = Arc::clone(&hits);
            (hits, std::mem::take(&mut mirror.history_dirty))
        };
        let mut history = HistoryWrite {
            buckets: self.read_buckets(&dirty),
            prune_before: None,
        };
        for (key, pending) in hits.iter() {
            let (cache, coalescing) = (Saving::Cache, Saving::Coalescing);
            self.book
                .saved(key, cache, pending.hits, pending.credits_saved);
            let (answers, saved) = (pending.coalesced, pending.credits_saved_coalesced);
            self.book.saved(key, coalescing, answers, saved);
        }
        self.closes_waiting_since = None;
        let now = self.clock.now();
        let wall = self.clock.wall();
        let purge_before = (now >= self.next_purge).then(|| wall.as_millisecond());
        // Minutes age out a minute at a time: prune once per minute.
        let minute = minute_of(wall);
        if purge_before.is_some() && self.pruned_minute != Some(minute) {
            history.prune_before = Some(minute - KEEP_MINUTES);
        }
        let keys_changed = !self.keys.is_empty();
        let written = {
            let changes = self.book.changes();
            if changes.is_empty()
                && self.keys.is_empty()
                && purge_before.is_none()
                && history.buckets.is_empty()
            {
                if probe {
                    probe_writes(&mut self.conn).map(|()| 0)
                } else {
                    Ok(0)
                }
            } else {
                write_batch(
                    &mut self.conn,
                    &changes,
                    &self.keys,
                    &history,
                    purge_before,
                    &rfc3339(wall),
                )
            }
        };
        match written {
            Ok(purged) => {
                let touched = self.book.commit();
                self.keys.committed();
                if purge_before.is_some() {
                    // A full purge batch means more may wait: go on with the next batch.
                    self.next_purge = if purged < PURGE_BATCH {
                        now + PURGE_EVERY
                    } else {
                        now
                    };
                }
                if history.prune_before.is_some() {
                    self.pruned_minute = Some(minute);
                }
                let opened = answers.iter().filter_map(|answer| match answer {
                    Answer::Reserve(_, Ok(reservation)) => Some(reservation.id),
                    _ => None,
                });
                self.publish(touched, opened, &history, keys_changed);
                for answer in answers {
                    answer.send(None);
                }
                self.log_recovery();
            }
            Err(e) => {
                self.book.rollback();
                self.keys.rollback();
                let mut mirror = lock(&self.mirror);
                // Not written: the hits wait again, the minutes stay to be written.
                mirror.flushing_hits = Arc::default();
                mirror.pending_hits.merge(&hits);
                for (tenant, minutes) in dirty {
                    mirror
                        .history_dirty
                        .entry(tenant)
                        .or_default()
                        .extend(minutes);
                }
                for (id, tenant, minute, charge) in &charged_in_batch {
                    mirror.history.take_back(tenant, *minute, *charge);
                    mirror.open.insert(*id);
                }
                drop(mirror);
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
                    // Retried every 50 ms or sooner while the fault lasts.
                    if let Some(suppressed) = self.logs.admit(CLOSES_UNWRITTEN) {
                        tracing::warn!(
                            error = %error,
                            closes = self.answered.len(),
                            suppressed,
                            "ledger could not write answered settles; they are kept and retried \
                             (a crash before they are written counts their reservations in full)"
                        );
                    }
                }
                if self.keys.has_freed() {
                    // Abandons answered: retried like the closes.
                    let now = self.clock.now();
                    self.closes_waiting_since = Some(now);
                } else if self.answered.is_empty() && answers.is_empty() {
                    // Only hit counts were in it; they stay pending for the next try.
                    if let Some(suppressed) = self.logs.admit(HITS_UNWRITTEN) {
                        tracing::warn!(
                            error = %error,
                            suppressed,
                            "ledger could not write cache-hit counts"
                        );
                    }
                }
                for answer in answers {
                    answer.send(Some(&error));
                }
            }
        }
        next
    }

    /// After a commit: says once that writes that kept failing got through,
    /// with how many failures went unlogged since the last line.
    fn log_recovery(&self) {
        for (site, what) in [
            (CLOSES_UNWRITTEN, "answered settles"),
            (HITS_UNWRITTEN, "cache-hit counts"),
        ] {
            if let Some(suppressed) = self.logs.clear(site) {
                tracing::info!(
                    suppressed,
                    written = what,
                    "ledger writes work again: what was kept is written"
                );
            }
        }
    }

    /// Time since `then` on the ledger's clock (fake in tests).
    /// How long until pending hit counts are due to be written (zero: due).
    fn until_hits_due(&self) -> Duration {
        let since = channel_now().saturating_duration_since(self.hits_written_at);
        self.hit_flush_interval.saturating_sub(since)
    }

    fn since(&self, then: Instant) -> Duration {
        self.clock.now().saturating_duration_since(then)
    }

    /// Shows committed accounts to readers and retires the hits written.
    fn publish(
        &mut self,
        touched: Vec<(AccountKey, Account)>,
        opened: impl Iterator<Item = u64>,
        history: &HistoryWrite,
        keys_changed: bool,
    ) {
        self.answered.clear();
        let mut guard = lock(&self.mirror);
        let mirror = &mut *guard;
        if !touched.is_empty() || keys_changed {
            mirror.commits += 1;
        }
        mirror.open.extend(opened);
        // In place, so no key is moved or freed under the lock; the accounts
        // now hold the hits written, so `flushing_hits` goes in the same hold.
        let mut new = Vec::new();
        let ahead = Ahead::of(&mirror.ahead);
        for (key, mut account) in touched {
            ahead.apply(&key, &mut account);
            match mirror.accounts.get_mut(&key) {
                Some(slot) => *slot = account,
                None => new.push((key, account)),
            }
        }
        mirror.accounts.extend(new);
        let written = std::mem::take(&mut mirror.flushing_hits);
        if history.prune_before.is_some() {
            let now = self.clock.wall();
            mirror.history.prune(now);
        }
        drop(guard);
        drop(written);
    }

    /// Shows one account of the book to readers, with the closes their
    /// callers applied that the book does not hold yet.
    fn publish_one(&self, key: AccountKey, mut account: Account) {
        let mut guard = lock(&self.mirror);
        let mirror = &mut *guard;
        Ahead::of(&mirror.ahead).apply(&key, &mut account);
        mirror.accounts.insert(key, account);
    }

    /// The buckets of the minutes in `dirty`, as recorded now (a minute
    /// changed again since it was taken is marked dirty again, and written
    /// with a later batch). Read a chunk per lock, so hits wait at most for
    /// a chunk.
    fn read_buckets(&self, dirty: &HashMap<String, HashSet<i64>>) -> Vec<((String, i64), Bucket)> {
        const CHUNK: usize = 256;
        let pairs: Vec<(&String, i64)> = dirty
            .iter()
            .flat_map(|(tenant, minutes)| minutes.iter().map(move |m| (tenant, *m)))
            .collect();
        let mut buckets = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(CHUNK) {
            let mirror = lock(&self.mirror);
            for &(tenant, minute) in chunk {
                buckets.push(((tenant.clone(), minute), mirror.history.get(tenant, minute)));
            }
        }
        buckets
    }
}

/// Spend-history minutes to write with a batch, as absolute values.
#[derive(Debug, Default)]
pub(super) struct HistoryWrite {
    /// `((tenant, minute), bucket)`.
    pub(super) buckets: Vec<((String, i64), Bucket)>,
    /// Delete the minutes before this one.
    pub(super) prune_before: Option<i64>,
}

/// Takes the write lock and runs a write statement that matches no row:
/// fails if the file no longer takes writes, changes nothing, costs no fsync.
fn probe_writes(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM reservations WHERE id < 0", [])?;
    tx.commit()
}

/// Writes a batch's changes in one `BEGIN IMMEDIATE … COMMIT`: accounts,
/// reservations, idempotency keys, and (when `purge_before` is set) a bounded
/// number of expired keys; returns how many of those were deleted. Accounts
/// are written as absolute values from the book, so disk and memory agree
/// exactly after the commit.
pub(super) fn write_batch(
    conn: &mut Connection,
    changes: &Changes<'_>,
    keys: &KeyWrites,
    history: &HistoryWrite,
    purge_before: Option<i64>,
    now: &str,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO accounts (tenant, period, used, requests, cache_hits, credits_saved,
                                   orphaned, coalesced, credits_saved_coalesced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant, period) DO UPDATE SET
                 used = excluded.used,
                 requests = excluded.requests,
                 cache_hits = excluded.cache_hits,
                 credits_saved = excluded.credits_saved,
                 orphaned = excluded.orphaned,
                 coalesced = excluded.coalesced,
                 credits_saved_coalesced = excluded.credits_saved_coalesced",
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
                integer(account.coalesced),
                integer(account.credits_saved_coalesced),
            ])?;
        }
        let mut minute = tx.prepare_cached(
            "INSERT INTO spend_minutes (tenant, minute, charged, saved_cache, saved_coalesced)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant, minute) DO UPDATE SET
                 charged = excluded.charged,
                 saved_cache = excluded.saved_cache,
                 saved_coalesced = excluded.saved_coalesced",
        )?;
        for ((tenant, at), bucket) in &history.buckets {
            minute.execute(params![
                tenant,
                at,
                integer(bucket.charged),
                integer(bucket.saved_cache),
                integer(bucket.saved_coalesced),
            ])?;
        }
        if let Some(before) = history.prune_before {
            tx.execute("DELETE FROM spend_minutes WHERE minute <= ?1", [before])?;
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
    let purged = keys.write(&tx, purge_before)?;
    // Dropping `tx` on any error above rolls the batch back.
    tx.commit()?;
    Ok(purged)
}
