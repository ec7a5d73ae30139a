//! The [`Ledger`] trait over the SQLite ledger: answers from the in-memory
//! mirror where it can, and everything durable through the writer thread.

use super::*;
use crate::ledger::Saving;

impl Ledger for SqliteLedger {
    fn reserve<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        budget: Option<Budget>,
        estimate: u64,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, LedgerError>> {
        if let Err(error) = self.still_owned() {
            return futures_util::future::ready(Err(error)).boxed();
        }
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
        let account = lock(&self.mirror).account(&key);
        futures_util::future::ready(Ok(account.balance(budget))).boxed()
    }

    fn saved<'a>(
        &'a self,
        tenant: &'a str,
        budget: Option<Budget>,
        by: Saving,
        credits_saved: u64,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        // One key, one lock: the hit path's whole ledger cost. Savings are
        // statistics, not money: they wait in memory for the next batch (at
        // most HIT_FLUSH_INTERVAL) instead of costing an fsync each. A kill -9
        // loses up to that last second of counts; spend is never lost this way.
        let now = self.clock.wall();
        let key = (tenant.to_string(), period_key(budget_period(budget), now));
        let mut mirror = lock(&self.mirror);
        let account = mirror.account(&key);
        let minute = minute_of(now);
        mirror.pending_hits.count(key, by, credits_saved, ());
        mirror.record(tenant, minute, Bucket::saved(by, credits_saved));
        futures_util::future::ready(Ok(account.balance(budget))).boxed()
    }

    fn usage<'a>(
        &'a self,
        tenants: &'a [(String, Option<Budget>)],
    ) -> BoxFuture<'a, Result<Vec<Usage>, LedgerError>> {
        let now = self.clock.wall();
        let mirror = lock(&self.mirror);
        let out = tenants
            .iter()
            .map(|(tenant, budget)| {
                let period_key = self.current_period(*budget);
                let key = (tenant.clone(), period_key);
                let mut account = mirror.account(&key);
                mirror.pending_hits.add_to(&key, &mut account);
                mirror.flushing_hits.add_to(&key, &mut account);
                let recent = mirror.history.recent(tenant, now);
                account.usage(tenant, *budget, key.1, recent)
            })
            .collect();
        futures_util::future::ready(Ok(out)).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        SqliteLedger::flush(self).boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), LedgerError>> {
        // Checked now as well as every second: readiness is not the hot path.
        if let Err(error) = self.watch.check() {
            return futures_util::future::ready(Err(error)).boxed();
        }
        let (reply, answer) = oneshot::channel();
        // Boxed: the answer comes back from another thread. The probe queues
        // behind real work, so a stuck writer shows as a slow or failed check.
        self.ask(Command::Probe { reply }, answer).boxed()
    }

    fn idempotency_begin<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<IdempotencyBegin, LedgerError>> {
        if let Err(error) = self.still_owned() {
            return futures_util::future::ready(Err(error)).boxed();
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::KeyBegin {
            id: (tenant.to_string(), key.to_string()),
            fingerprint: *fingerprint,
            ttl,
            reply,
        };
        // Boxed: the answer comes back from another thread after a commit.
        self.ask(command, answer).boxed()
    }

    fn idempotency_complete<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        answer: StoredAnswer,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        if let Err(error) = self.still_owned() {
            return futures_util::future::ready(Err(error)).boxed();
        }
        let (reply, committed) = oneshot::channel();
        let command = Command::KeyComplete {
            id: (tenant.to_string(), key.to_string()),
            fingerprint: *fingerprint,
            answer,
            ttl,
            reply,
        };
        // Boxed: the answer comes back from another thread after a commit.
        self.ask(command, committed).boxed()
    }

    fn idempotency_abandon<'a>(
        &'a self,
        tenant: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        // Queued behind every earlier command and ahead of every later one,
        // so a later claim of the key sees it freed: no need to wait.
        let command = Command::KeyAbandon {
            id: (tenant.to_string(), key.to_string()),
            fingerprint: *fingerprint,
        };
        let sent = self
            .commands
            .send(command)
            .map_err(|_| unavailable(&self.path, "the ledger writer has stopped"));
        futures_util::future::ready(sent).boxed()
    }

    fn alert_fire<'a>(
        &'a self,
        alert: &'a crate::ledger::Alert,
        deliver: bool,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        self.fire_alert(alert, deliver)
    }

    fn outbox_take(
        &self,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<crate::ledger::OutboxEntry>, LedgerError>> {
        self.take_outbox(now_ms, lease, limit)
    }

    fn outbox_done<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.alert_step(alerts::AlertCommand::Done { id: id.to_string() })
    }

    fn outbox_retry<'a>(
        &'a self,
        id: &'a str,
        next_attempt_ms: i64,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        let id = id.to_string();
        self.alert_step(alerts::AlertCommand::Retry {
            id,
            next_attempt_ms,
        })
    }
}
