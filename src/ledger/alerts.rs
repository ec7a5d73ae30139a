//! Budget alerts as the ledger keeps them: which thresholds have fired in
//! which period, and the outbox of webhook deliveries still owed.
//!
//! Firing is a claim: the first call for a (tenant, period key, budget,
//! threshold), that is for an alert id, wins, in the ledger's one atomic
//! step that also queues the webhook, so replicas and restarts neither
//! repeat nor lose an alert. The outbox holds
//! each undelivered alert with the time of its next attempt; taking an entry
//! moves that time forward by a lease, so two replicas never send one entry
//! at once, and an entry whose sender died is taken again when the lease ends.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One budget threshold crossed by one tenant in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per alert: `<tenant>:<period_key>:<budget>:<threshold_pct>`.
    /// The budget is part of it, so a budget changed mid-period fires its
    /// thresholds again for the new figure. Ids of earlier versions had no
    /// budget (`<tenant>:<period_key>:<threshold_pct>`, one `:` less), so
    /// they never equal one of these.
    pub id: String,
    /// The tenant.
    pub tenant: String,
    /// The percentage of the budget crossed.
    pub threshold_pct: u8,
    /// Credits used in the period when it fired.
    pub used: u64,
    /// The period's budget.
    pub budget: u64,
    /// `day`, `week`, `month` or `total`.
    pub period: String,
    /// The period's key (`2026-11-27`, `2026-W48`, ...).
    pub period_key: String,
    /// When it fired, RFC 3339 UTC.
    pub fired_at: String,
}

impl Alert {
    /// The id of `tenant`'s alert for `threshold_pct` of a `budget`-credit
    /// budget in `period_key`. Unambiguous: tenant ids and period keys
    /// contain no `:`.
    pub fn id_of(tenant: &str, period_key: &str, budget: u64, threshold_pct: u8) -> String {
        format!("{tenant}:{period_key}:{budget}:{threshold_pct}")
    }
}

/// An alert owed to the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The alert.
    pub alert: Alert,
    /// Attempts made, this one included.
    pub attempts: u32,
}

/// The outbox in process memory (the memory ledger's; also how the other
/// backends behave, stated once).
#[derive(Debug, Default)]
pub(super) struct MemoryAlerts {
    fired: HashSet<String>,
    /// By id: the entry and its next attempt, Unix milliseconds.
    outbox: BTreeMap<String, (OutboxEntry, i64)>,
}

impl MemoryAlerts {
    /// Claims `alert`; queues it when `deliver`. Whether this call fired it.
    pub(super) fn fire(&mut self, alert: &Alert, deliver: bool, now_ms: i64) -> bool {
        if !self.fired.insert(alert.id.clone()) {
            return false;
        }
        if deliver {
            let entry = OutboxEntry {
                alert: alert.clone(),
                attempts: 0,
            };
            self.outbox.insert(alert.id.clone(), (entry, now_ms));
        }
        true
    }

    /// Up to `limit` entries due at `now_ms`, leased for `lease`.
    pub(super) fn take(&mut self, now_ms: i64, lease: Duration, limit: usize) -> Vec<OutboxEntry> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut due: Vec<(&String, &i64)> = self
            .outbox
            .iter()
            .filter(|(_, (_, at))| *at <= now_ms)
            .map(|(id, (_, at))| (id, at))
            .collect();
        due.sort_by_key(|(_, at)| **at);
        let ids: Vec<String> = due
            .into_iter()
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect();
        let mut taken = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some((entry, at)) = self.outbox.get_mut(id) {
                entry.attempts = entry.attempts.saturating_add(1);
                *at = now_ms.saturating_add(lease_ms);
                taken.push(entry.clone());
            }
        }
        taken
    }

    /// Forgets a delivered (or given up) entry.
    pub(super) fn done(&mut self, id: &str) {
        self.outbox.remove(id);
    }

    /// Sets an entry's next attempt.
    pub(super) fn retry(&mut self, id: &str, next_attempt_ms: i64) {
        if let Some((_, at)) = self.outbox.get_mut(id) {
            *at = next_attempt_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn alert(pct: u8) -> Alert {
        Alert {
            id: Alert::id_of("crm", "2026-11-27", 100, pct),
            tenant: "crm".into(),
            threshold_pct: pct,
            used: 50,
            budget: 100,
            period: "day".into(),
            period_key: "2026-11-27".into(),
            fired_at: "2026-11-27T15:00:00Z".into(),
        }
    }

    #[test]
    fn an_alert_fires_once_and_is_leased_until_done() {
        let mut alerts = MemoryAlerts::default();
        assert!(alerts.fire(&alert(50), true, 1_000));
        assert!(!alerts.fire(&alert(50), true, 1_000));
        assert!(alerts.fire(&alert(80), false, 1_000));
        let taken = alerts.take(1_000, Duration::from_secs(30), 10);
        assert_eq!(taken.len(), 1, "only the one with a webhook is queued");
        assert_eq!(taken[0].attempts, 1);
        assert!(alerts.take(2_000, Duration::from_secs(30), 10).is_empty());
        alerts.retry(&taken[0].alert.id, 5_000);
        assert_eq!(
            alerts.take(5_000, Duration::from_secs(30), 10)[0].attempts,
            2
        );
        alerts.done(&taken[0].alert.id);
        assert!(alerts.take(100_000, Duration::from_secs(30), 10).is_empty());
    }
}
