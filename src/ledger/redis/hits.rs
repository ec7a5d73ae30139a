//! Cache-hit counts: counted in memory, added to Redis every second.
//!
//! A hit never waits on Redis. Its count waits here and a task adds the
//! counts to Redis every [`HIT_FLUSH_INTERVAL`] (a replica crash loses at
//! most that second of hit counts, never spend); `flush` writes them at
//! graceful shutdown.

use crate::ledger::Saving;
use std::sync::Weak;
use std::time::Duration;

use jiff::Timestamp;

use super::keys::{period_hash, ttl_ms};
use super::{Inner, MAX_COUNT, lock};
use crate::config::Budget;
use crate::ledger::LedgerError;
use crate::ledger::book::AccountKey;
use crate::ledger::history::Bucket;
use crate::ledger::hits::Hits;
use crate::redis::{Op, Retry};

/// How often cache-hit counts are added to Redis.
const HIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// When a period's keys expire (`None` for `total`), the note kept with its
/// waiting hits: the write that adds them may create the period's hash, and
/// gives it this lifetime.
pub(super) type Expiry = Option<Timestamp>;

impl Inner {
    /// Counts a cache hit or coalesced answer; it is written with the next
    /// second's batch.
    pub(super) fn count_saved(&self, tenant: &str, budget: Option<Budget>, by: Saving, saved: u64) {
        let (period, expires_at) = self.current_period(budget);
        let key = (tenant.to_string(), period);
        lock(&self.pending_hits).count(key, by, saved, expires_at);
        self.record(tenant, Bucket::saved(by, saved));
    }

    /// Adds the hit counts counted here to Redis. Counts stay pending until
    /// Redis confirms them, so an outage delays them instead of losing them.
    pub(super) async fn write_hits(&self) -> Result<(), LedgerError> {
        let _flushing = self.flushing.lock().await;
        let snapshot: Vec<(AccountKey, Hits<Expiry>)> = lock(&self.pending_hits)
            .iter()
            .map(|(key, hits)| (key.clone(), *hits))
            .collect();
        for ((tenant, period), hits) in snapshot {
            let mut invocation = self.scripts.hits.prepare_invoke();
            invocation
                .key(period_hash(&tenant, &period))
                .arg(hits.hits.min(MAX_COUNT))
                .arg(hits.credits_saved.min(MAX_COUNT))
                .arg(ttl_ms(hits.note, self.clock.wall()))
                .arg(hits.coalesced.min(MAX_COUNT))
                .arg(hits.credits_saved_coalesced.min(MAX_COUNT));
            // Never resent: a lost answer may mean they were added. If the
            // call fails anyway they are sent again next second, so a lost
            // answer can count one second of hits twice (statistics, not money).
            self.run::<i64>(Op::Script(&invocation), Retry::Never)
                .await?;
            lock(&self.pending_hits).written(&(tenant, period), &hits);
        }
        self.write_minutes().await
    }
}

/// Adds hit counts to Redis every second until the ledger is dropped.
pub(super) async fn write_hits_every_second(inner: Weak<Inner>) {
    let mut ticks = tokio::time::interval(HIT_FLUSH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.forget_idle_views();
        if lock(&inner.pending_hits).is_empty() && lock(&inner.pending_minutes).is_empty() {
            continue;
        }
        if let Err(error) = inner.write_hits().await {
            tracing::debug!(%error, "hit counts not written; retrying next second");
        }
    }
}
