//! Spend history in Redis: each tenant's charges and savings per minute,
//! shared by every replica.
//!
//! A settle adds its charge in its own script (`close.lua`), so every
//! replica sees it at once, like the spend itself. Savings are statistics:
//! a replica adds them in memory ([`PendingMinutes`]) and writes them every
//! second with the hit counts (a hit never waits on Redis for them). One hash per tenant and hour, `vg:{t:<tenant>}:s:<hour since the
//! epoch>`, fields `c<mm>` (charged), `h<mm>` (saved by the cache) and
//! `k<mm>` (saved by coalescing) for minute `mm` of the hour; it expires
//! [`KEEP_MS`] after its last write, so a day of history is about 25 hashes.

use std::collections::HashMap;

use jiff::Timestamp;

use super::keys::tenant_prefix;
use super::{Inner, MAX_COUNT, count, lock};
use crate::ledger::LedgerError;
use crate::ledger::history::{Bucket, DAY_MINUTES, Recent, minute_of};
use crate::redis::{Op, Retry};

/// How long an hour's hash lives after its last write: a day and two hours.
pub(super) const KEEP_MS: u64 = 26 * 3600 * 1000;

/// Events counted here, not yet added in Redis: `(tenant, minute)` → bucket.
pub(super) type PendingMinutes = HashMap<(String, i64), Bucket>;

/// The hash of `tenant`'s hour `hour` (hours since the epoch).
fn hour_hash(tenant: &str, hour: i64) -> String {
    format!("{}s:{hour}", tenant_prefix(tenant))
}

/// The hash and field a charge at `now` is added to.
pub(super) fn charge_field(tenant: &str, now: Timestamp) -> (String, String) {
    let minute = minute_of(now);
    (
        hour_hash(tenant, minute.div_euclid(60)),
        format!("c{}", minute.rem_euclid(60)),
    )
}

impl Inner {
    /// Counts `event` in `tenant`'s current minute; written within a second.
    pub(super) fn record(&self, tenant: &str, event: Bucket) {
        let minute = minute_of(self.clock.wall());
        lock(&self.pending_minutes)
            .entry((tenant.to_string(), minute))
            .or_default()
            .add(event);
    }

    /// Adds the minutes counted here to Redis, in one pipeline; they leave
    /// only once Redis confirmed them. Call with `flushing` held.
    pub(super) async fn write_minutes(&self) -> Result<(), LedgerError> {
        let snapshot: Vec<((String, i64), Bucket)> = lock(&self.pending_minutes)
            .iter()
            .map(|(key, bucket)| (key.clone(), *bucket))
            .collect();
        if snapshot.is_empty() {
            return Ok(());
        }
        let mut pipeline = ::redis::pipe();
        for ((tenant, minute), bucket) in &snapshot {
            let hour = minute.div_euclid(60);
            let mm = minute.rem_euclid(60);
            let key = hour_hash(tenant, hour);
            for (field, value) in [
                ('c', bucket.charged),
                ('h', bucket.saved_cache),
                ('k', bucket.saved_coalesced),
            ] {
                if value > 0 {
                    pipeline
                        .cmd("HINCRBY")
                        .arg(&key)
                        .arg(format!("{field}{mm}"))
                        .arg(value.min(MAX_COUNT))
                        .ignore();
                }
            }
            pipeline.cmd("PEXPIRE").arg(&key).arg(KEEP_MS).ignore();
        }
        // Never resent: a lost answer may mean they were added (statistics).
        self.run::<()>(Op::Pipeline(&pipeline), Retry::Never)
            .await?;
        let mut pending = lock(&self.pending_minutes);
        for (key, written) in snapshot {
            if let Some(left) = pending.get_mut(&key) {
                left.charged = left.charged.saturating_sub(written.charged);
                left.saved_cache = left.saved_cache.saturating_sub(written.saved_cache);
                left.saved_coalesced = left.saved_coalesced.saturating_sub(written.saved_coalesced);
                if left.is_empty() {
                    pending.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Adds the commands reading `tenant`'s last day to `pipeline`: one
    /// `HGETALL` per hour, 25 in all, oldest first.
    pub(super) fn read_recent(pipeline: &mut ::redis::Pipeline, tenant: &str, now: Timestamp) {
        let current = minute_of(now).div_euclid(60);
        for hour in current - 24..=current {
            pipeline.cmd("HGETALL").arg(hour_hash(tenant, hour));
        }
    }

    /// The figures of [`Inner::read_recent`]'s 25 replies for `tenant`, with
    /// what waits here to be written.
    pub(super) fn recent_from(
        &self,
        tenant: &str,
        now: Timestamp,
        hours: &[HashMap<String, i64>],
        pending: &PendingMinutes,
    ) -> Recent {
        let current = minute_of(now).div_euclid(60);
        let mut buckets: HashMap<i64, Bucket> = HashMap::new();
        for (hour, fields) in (current - 24..=current).zip(hours) {
            for (field, value) in fields {
                let (kind, mm) = field.split_at(1.min(field.len()));
                let Ok(mm) = mm.parse::<i64>() else {
                    continue;
                };
                let bucket = buckets.entry(hour * 60 + mm).or_default();
                let value = count(*value);
                match kind {
                    "c" => bucket.charged = bucket.charged.saturating_add(value),
                    "h" => bucket.saved_cache = bucket.saved_cache.saturating_add(value),
                    "k" => bucket.saved_coalesced = bucket.saved_coalesced.saturating_add(value),
                    _ => {}
                }
            }
        }
        let oldest = minute_of(now) - DAY_MINUTES;
        for ((t, minute), bucket) in pending {
            if t == tenant && *minute > oldest {
                buckets.entry(*minute).or_default().add(*bucket);
            }
        }
        Recent::from_buckets(now, buckets)
    }
}
