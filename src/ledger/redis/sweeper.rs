//! The sweep: reservations a crashed replica left open become spend.
//!
//! A replica that dies between reserve and settle leaves its reservations
//! open in Redis. Any replica's sweeper (several at once is safe: each sweep
//! is one atomic script per tenant) counts those older than `stale_after`
//! as spent and `orphaned`: the upstream may have billed them. The same
//! script adds them to the spend history, at the minute each was made while
//! that minute is kept (else the current one), so `spent_last_*` and the
//! forecast count them like any charge.

use std::sync::Arc;
use std::time::Duration;

use super::history::KEEP_MS;
use super::keys::tenant_of;
use super::{Inner, MAX_COUNT, RedisLedger};
use crate::ledger::LedgerError;
use crate::ledger::history::KEEP_MINUTES;
use crate::redis::{Op, Retry};

/// The most reservations one sweep call looks at.
const SWEEP_BATCH: u64 = 100;

/// How many keys one `SCAN` step asks for while the sweeper finds tenants.
const SCAN_COUNT: u64 = 500;

impl RedisLedger {
    /// Starts a task that, every `every` (the first time right away), counts
    /// reservations open longer than `stale_after` as spent and `orphaned`.
    /// Run one on every replica: sweeps are atomic per tenant, so replicas
    /// sweeping at once count each reservation once. The task ends when the
    /// ledger is dropped, or when the handle is aborted.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let inner = Arc::downgrade(&self.inner);
        let stale_after = self.stale_after;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if let Err(error) = inner.sweep(stale_after).await {
                    tracing::debug!(%error, "reservation sweep failed; retrying next time");
                }
            }
        })
    }

    /// Counts every reservation open for at least `older_than` (on the Redis
    /// server's clock) as spent and `orphaned`, in every tenant. Returns how
    /// many reservations it closed.
    pub async fn sweep_now(&self, older_than: Duration) -> Result<u64, LedgerError> {
        self.inner.sweep(older_than).await
    }
}

impl Inner {
    /// Finds every tenant with open reservations and sweeps the stale ones.
    async fn sweep(&self, older_than: Duration) -> Result<u64, LedgerError> {
        let older_than_ms = u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX);
        let mut swept = 0;
        for open in self.open_sets().await? {
            let prefix = open.trim_end_matches("open");
            loop {
                let mut invocation = self.scripts.sweep.prepare_invoke();
                invocation
                    .key(&open)
                    .arg(prefix)
                    .arg(older_than_ms.min(MAX_COUNT))
                    .arg(SWEEP_BATCH)
                    .arg(self.clock.wall().as_millisecond())
                    .arg(KEEP_MINUTES * 60_000)
                    .arg(KEEP_MS);
                let reply = self
                    .run::<Vec<i64>>(Op::Script(&invocation), Retry::Once)
                    .await?;
                let (reservations, credits, looked_at) = self.triple(&reply)?;
                if reservations > 0 {
                    tracing::warn!(
                        tenant = tenant_of(prefix),
                        reservations,
                        credits,
                        "reservations left open by a crashed replica counted as spent"
                    );
                    swept += reservations;
                }
                if looked_at < SWEEP_BATCH {
                    break;
                }
            }
        }
        Ok(swept)
    }

    /// The keys of every tenant's open-reservation set (a `SCAN`: on a
    /// Cluster it would have to run on each primary).
    async fn open_sets(&self) -> Result<Vec<String>, LedgerError> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = ::redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg("vg:{t:*}:open")
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found) = self
                .run::<(u64, Vec<String>)>(Op::Cmd(&cmd), Retry::Once)
                .await?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}
