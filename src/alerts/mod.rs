//! Budget alerts: a tenant's spend crossing 50, 80, 95 and 100 % (or its own
//! thresholds) of the period's budget is said once per period, across
//! replicas and restarts, as one `budget_threshold` log line, a metric, and
//! (with `alerts.webhook_url`) a signed POST to the operator's receiver.
//!
//! [`Credits`](crate::credits::Credits) hands every balance a settle
//! returns to [`Alerts::check`]. Most settles cross nothing new: a map of
//! the highest threshold known fired per tenant and period answers them with
//! one lock and no ledger call. When a threshold is crossed, the ledger is
//! asked to fire it ([`Ledger::alert_fire`]); the one caller that wins —
//! on this replica or any other, before or after a restart — writes the log
//! line and counts the metric, and the webhook delivery was queued in the
//! ledger's outbox in the same atomic step. [`webhook`] drains that outbox.

mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::clock::{Clock, rfc3339};
use crate::config::AlertsConfig;
use crate::ledger::{Alert, Balance, Ledger, period_key};
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::tenant::Tenant;

pub use webhook::{sign, verify};

/// The log target of `budget_threshold` lines.
pub const TARGET: &str = "viewgate::alerts";

/// Log site of alerts the ledger could not fire (see [`LogThrottle`]).
const NOT_FIRED: &str = "alerts.not_fired";

/// What a gateway knows has fired for one tenant.
struct Known {
    period_key: String,
    /// The thresholds it was worked out for: a reload that changes them
    /// (a new lower one, say) makes the next charge look again.
    thresholds: Arc<[u8]>,
    highest: u8,
}

/// Budget alerts of one gateway: the check after each settle, and the
/// webhook delivery task.
pub struct Alerts {
    ledger: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// Whether fired alerts are queued for a webhook.
    deliver: bool,
    /// Per tenant: the highest threshold known fired in a period.
    known: Mutex<HashMap<Arc<str>, Known>>,
    /// Wakes the delivery task when an alert is queued.
    wake: Arc<Notify>,
    /// Stops the delivery task (also stopped when this is dropped).
    stop: watch::Sender<bool>,
    logs: LogThrottle,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not derived: the ledger and the metrics registry print nothing useful.
        f.debug_struct("Alerts")
            .field("deliver", &self.deliver)
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Alerts recorded in `ledger`, and (with a webhook configured) the task
    /// that delivers them, started on the current runtime. Fails only when
    /// the webhook's HTTP client cannot be built.
    pub(crate) fn start(
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        clock: Clock,
        config: &AlertsConfig,
    ) -> Result<Arc<Alerts>, String> {
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        if let Some(hook) = &config.webhook {
            let sender = webhook::Sender::new(hook, Arc::clone(&ledger), clock.clone())?;
            tokio::spawn(sender.run(Arc::clone(&wake), stopped));
        }
        Ok(Arc::new(Alerts {
            logs: LogThrottle::new(clock.clone()),
            ledger,
            metrics,
            clock,
            deliver: config.webhook.is_some(),
            known: Mutex::new(HashMap::new()),
            wake,
            stop,
        }))
    }

    /// Stops the delivery task (at shutdown); what is owed stays in the outbox.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Fires each of `tenant`'s thresholds that `balance` (its current
    /// period's, just settled) has crossed and that has not fired yet.
    pub async fn check(&self, tenant: &Tenant, balance: Balance) {
        let Some(budget) = tenant.budget else { return };
        if budget.credits == 0 {
            return;
        }
        let crossed = |pct: u8| {
            u128::from(balance.used) * 100 >= u128::from(pct) * u128::from(budget.credits)
        };
        let Some(highest) = tenant
            .alert_thresholds
            .iter()
            .copied()
            .filter(|&pct| crossed(pct))
            .max()
        else {
            return;
        };
        let period_key = period_key(budget.period, self.clock.wall());
        let known = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            match known.get(&tenant.id) {
                Some(k)
                    if k.period_key == period_key
                        && Arc::ptr_eq(&k.thresholds, &tenant.alert_thresholds) =>
                {
                    k.highest
                }
                _ => 0,
            }
        };
        if known >= highest {
            return;
        }
        let mut queued = false;
        for &pct in tenant.alert_thresholds.iter() {
            if pct <= known || !crossed(pct) {
                continue;
            }
            let alert = Alert {
                id: Alert::id_of(&tenant.id, &period_key, pct),
                tenant: tenant.id.to_string(),
                threshold_pct: pct,
                used: balance.used,
                budget: budget.credits,
                period: budget.period.as_str().to_string(),
                period_key: period_key.clone(),
                fired_at: rfc3339(self.clock.wall()),
            };
            match self.ledger.alert_fire(&alert, self.deliver).await {
                Ok(true) => {
                    self.announce(&alert);
                    queued |= self.deliver;
                }
                // Fired before: by another replica, an earlier run, or a
                // concurrent settle here.
                Ok(false) => {}
                Err(error) => {
                    // Not remembered as fired: the next settle tries again.
                    if let Some(suppressed) = self.logs.admit(NOT_FIRED) {
                        tracing::warn!(
                            tenant = &*tenant.id,
                            threshold_pct = pct,
                            %error,
                            suppressed,
                            "a budget alert could not be recorded; it is tried again with the next charge"
                        );
                    }
                    break;
                }
            }
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = || Known {
                period_key: period_key.clone(),
                thresholds: Arc::clone(&tenant.alert_thresholds),
                highest: 0,
            };
            let slot = known.entry(Arc::clone(&tenant.id)).or_insert_with(fresh);
            if slot.period_key != period_key
                || !Arc::ptr_eq(&slot.thresholds, &tenant.alert_thresholds)
            {
                *slot = fresh();
            }
            slot.highest = slot.highest.max(pct);
        }
        if queued {
            self.wake.notify_one();
        }
    }

    /// The one log line and the metric of a fired alert.
    fn announce(&self, alert: &Alert) {
        self.metrics
            .budget_alert(&alert.tenant, alert.threshold_pct);
        tracing::warn!(
            target: TARGET,
            event = "budget_threshold",
            alert_id = alert.id.as_str(),
            tenant = alert.tenant.as_str(),
            threshold_pct = alert.threshold_pct,
            used = alert.used,
            budget = alert.budget,
            period = alert.period.as_str(),
            period_key = alert.period_key.as_str(),
            "budget_threshold"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Budget, Period, TenantConfig};

    use crate::ledger::MemoryLedger;

    fn tenant(thresholds: &[u8], clock: &Clock) -> Tenant {
        let config = TenantConfig {
            budget: Some(Budget {
                credits: 10,
                period: Period::Day,
            }),
            alert_thresholds: thresholds.to_vec(),
            ..TenantConfig::test("crm")
        };
        Tenant::new(&config, clock, None, None)
    }

    fn used(used: u64) -> Balance {
        Balance {
            used,
            reserved: 0,
            limit: Some(10),
        }
    }

    fn fired(metrics: &Metrics, pct: u8) -> u64 {
        let series = format!("viewgate_budget_alerts_total{{tenant=\"crm\",threshold=\"{pct}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&series).map(|n| n.parse().unwrap()))
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn replicas_on_one_ledger_fire_each_threshold_once_and_a_reload_looks_again() {
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(clock.clone()));
        let config = AlertsConfig {
            thresholds: vec![50, 100],
            webhook: None,
        };
        let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        let one =
            Alerts::start(Arc::clone(&ledger), Arc::clone(&m1), clock.clone(), &config).unwrap();
        let two =
            Alerts::start(Arc::clone(&ledger), Arc::clone(&m2), clock.clone(), &config).unwrap();
        let crm = tenant(&[50, 100], &clock);
        one.check(&crm, used(4)).await;
        assert_eq!(fired(&m1, 50), 0, "below 50 %");
        one.check(&crm, used(5)).await;
        one.check(&crm, used(6)).await;
        two.check(&crm, used(7)).await;
        assert_eq!((fired(&m1, 50), fired(&m2, 50)), (1, 0));
        two.check(&crm, used(12)).await;
        one.check(&crm, used(12)).await;
        assert_eq!((fired(&m1, 100), fired(&m2, 100)), (0, 1));

        // A reload adds 30 %: the next charge fires it, nothing else.
        let reloaded = tenant(&[30, 50, 100], &clock);
        one.check(&reloaded, used(12)).await;
        assert_eq!((fired(&m1, 30), fired(&m1, 50), fired(&m1, 100)), (1, 1, 0));

        // A new day is a new period.
        clock.advance(std::time::Duration::from_secs(24 * 3600));
        two.check(&reloaded, used(3)).await;
        assert_eq!((fired(&m2, 30), fired(&m2, 50)), (1, 0));
    }
}
