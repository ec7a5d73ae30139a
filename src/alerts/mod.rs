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
//!
//! Spend that never passes through a settle here (reservations a crash left
//! open, counted as spent when SQLite reopens its file or by the Redis
//! sweeper; another replica's charges) is caught by [`balances`]: every
//! budgeted tenant's balance is checked the same way when the gateway
//! starts, after each reload, and every [`balances::CHECK_EVERY`] on the
//! gateway's clock.
//!
//! An alert is one threshold of one budget figure in one period: its id
//! carries the budget, so a budget changed mid-period fires the thresholds
//! of the new figure (once each), whatever fired for the old one.

mod balances;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::clock::{Clock, rfc3339};
use crate::config::AlertsConfig;
use crate::ledger::{Alert, Balance, Ledger, period_key};
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::tenant::{Tenant, Tenants};

pub use webhook::{sign, verify};

/// The log target of `budget_threshold` lines.
pub const TARGET: &str = "viewgate::alerts";

/// Log site of alerts the ledger could not fire (see [`LogThrottle`]).
const NOT_FIRED: &str = "alerts.not_fired";

/// What a gateway knows has fired for one tenant.
struct Known {
    period_key: String,
    /// The budget it was worked out for: another figure has alerts of its own.
    budget: u64,
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
    /// Stops the delivery and balance tasks (also stopped when this is dropped).
    stop: watch::Sender<bool>,
    /// The tenants whose balances the balance task checks (the latest
    /// configuration's; none until the gateway says).
    tenants: Mutex<Option<Arc<Tenants>>>,
    /// Wakes the balance task for a check now (new tenants).
    recheck: Arc<Notify>,
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
    /// Alerts recorded in `ledger`, the task that checks balances (see
    /// [`Alerts::watch`]) and (with a webhook configured) the task that
    /// delivers them, started on the current runtime. Fails only when the
    /// webhook's HTTP client cannot be built.
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
            tokio::spawn(sender.run(Arc::clone(&wake), stopped.clone()));
        }
        let recheck = Arc::new(Notify::new());
        let alerts = Arc::new(Alerts {
            logs: LogThrottle::new(clock.clone()),
            ledger,
            metrics,
            clock: clock.clone(),
            deliver: config.webhook.is_some(),
            known: Mutex::new(HashMap::new()),
            wake,
            stop,
            tenants: Mutex::new(None),
            recheck: Arc::clone(&recheck),
        });
        tokio::spawn(balances::run(
            Arc::downgrade(&alerts),
            clock,
            recheck,
            stopped,
        ));
        Ok(alerts)
    }

    /// Checks `tenants`' balances from now on: at once, then every
    /// [`balances::CHECK_EVERY`]. The gateway calls it when it is built and
    /// after each reload, with the tenants then in force.
    pub(crate) fn watch(&self, tenants: Arc<Tenants>) {
        *self.tenants.lock().unwrap_or_else(|e| e.into_inner()) = Some(tenants);
        self.recheck.notify_one();
    }

    /// Stops the delivery and balance tasks (at shutdown); what is owed stays in the outbox.
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
                        && k.budget == budget.credits
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
                id: Alert::id_of(&tenant.id, &period_key, budget.credits, pct),
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
                budget: budget.credits,
                thresholds: Arc::clone(&tenant.alert_thresholds),
                highest: 0,
            };
            let slot = known.entry(Arc::clone(&tenant.id)).or_insert_with(fresh);
            if slot.period_key != period_key
                || slot.budget != budget.credits
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

    fn config(credits: u64, thresholds: &[u8]) -> TenantConfig {
        TenantConfig {
            budget: Some(Budget {
                credits,
                period: Period::Day,
            }),
            alert_thresholds: thresholds.to_vec(),
            ..TenantConfig::test("crm")
        }
    }

    fn tenant(thresholds: &[u8], clock: &Clock) -> Tenant {
        Tenant::new(&config(10, thresholds), clock, None, None)
    }

    fn no_webhook() -> AlertsConfig {
        AlertsConfig {
            thresholds: vec![50, 100],
            webhook: None,
        }
    }

    /// Waits (bounded, in real time) until `metrics` counts `pct` fired `n` times.
    async fn until_fired(metrics: &Metrics, pct: u8, n: u64) {
        for _ in 0..500 {
            if fired(metrics, pct) == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{pct} % fired {} times, not {n}", fired(metrics, pct));
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
        let config = no_webhook();
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

    #[tokio::test]
    async fn a_changed_budget_fires_the_thresholds_of_the_new_figure() {
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(clock.clone()));
        let metrics = Arc::new(Metrics::new());
        let alerts = Alerts::start(ledger, Arc::clone(&metrics), clock.clone(), &no_webhook());
        let alerts = alerts.unwrap();
        let thresholds = [50, 80, 95, 100];
        let at = |credits: u64| Tenant::new(&config(credits, &thresholds), &clock, None, None);
        let balance = |used: u64, limit: u64| Balance {
            used,
            reserved: 0,
            limit: Some(limit),
        };
        alerts.check(&at(100), balance(100, 100)).await;
        for pct in thresholds {
            assert_eq!(fired(&metrics, pct), 1, "{pct} % of 100");
        }
        // Raised to 200 mid-period: 100 used is 50 % of the new figure.
        let raised = at(200);
        alerts.check(&raised, balance(100, 200)).await;
        assert_eq!((fired(&metrics, 50), fired(&metrics, 80)), (2, 1));
        alerts.check(&raised, balance(150, 200)).await;
        assert_eq!(fired(&metrics, 80), 1, "75 % of 200");
        alerts.check(&raised, balance(190, 200)).await;
        let counts = thresholds.map(|pct| fired(&metrics, pct));
        assert_eq!(counts, [2, 2, 2, 1]);
        // Back to 100: its thresholds fired already this period.
        alerts.check(&at(100), balance(190, 100)).await;
        assert_eq!(thresholds.map(|pct| fired(&metrics, pct)), counts);
        assert_eq!(
            Alert::id_of("crm", "2026-11-27", 200, 95),
            "crm:2026-11-27:200:95"
        );
    }

    #[tokio::test]
    async fn spend_no_settle_reported_fires_at_start_and_every_round() {
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(clock.clone()));
        let crm: Arc<str> = Arc::from("crm");
        let b = config(10, &[50, 100]).budget;
        // Charged behind the alerts' back (a crash's orphans, another replica).
        let held = ledger.reserve(&crm, b, 6, "r1").await.unwrap();
        ledger.settle(held, 6, b).await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let alerts = Alerts::start(
            Arc::clone(&ledger),
            Arc::clone(&metrics),
            clock.clone(),
            &no_webhook(),
        )
        .unwrap();
        let tenants = Arc::new(Tenants::new(&[config(10, &[50, 100])], &clock, None, None));
        alerts.watch(Arc::clone(&tenants));
        until_fired(&metrics, 50, 1).await;

        let held = ledger.reserve(&crm, b, 4, "r2").await.unwrap();
        ledger.settle(held, 4, b).await.unwrap();
        // Not yet the next round on the gateway's clock.
        assert_eq!(fired(&metrics, 100), 0);
        clock.advance(balances::CHECK_EVERY);
        until_fired(&metrics, 100, 1).await;
        assert_eq!(fired(&metrics, 50), 1, "each once");

        // Stopped at shutdown: spend after it fires nothing.
        alerts.stop();
        let other = Tenants::new(&[config(5, &[50])], &clock, None, None);
        alerts.watch(Arc::new(other));
        clock.advance(balances::CHECK_EVERY * 2);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!((fired(&metrics, 50), fired(&metrics, 100)), (1, 1));
    }
}
