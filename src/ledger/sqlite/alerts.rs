//! Budget alerts in the ledger file: thresholds fired and the webhook outbox
//! (added in schema version 3, see `schema`).
//!
//! Each call is its own `BEGIN IMMEDIATE … COMMIT` on the writer thread,
//! answered once committed: firing inserts the `alerts_fired` row and (with
//! a webhook) the `alert_outbox` row together, so an alert on disk as fired
//! is on disk as owed. Alerts are rare (a few per tenant and period) and the
//! outbox is polled every second or so, so they do not ride with the group
//! commits of the request path.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Command, SqliteLedger, millis, unavailable};
use crate::ledger::{Alert, LedgerError, OutboxEntry};

impl SqliteLedger {
    /// Runs an alert command on the writer thread.
    async fn alert(&self, command: AlertCommand) -> Result<AlertReply, LedgerError> {
        self.still_owned()?;
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Alert { command, reply }, answer).await
    }

    fn out_of_turn(&self) -> LedgerError {
        unavailable(
            &self.path,
            "the writer answered an alert command out of turn",
        )
    }

    /// See [`crate::ledger::Ledger::alert_fire`].
    pub(super) fn fire_alert<'a>(
        &'a self,
        alert: &'a Alert,
        deliver: bool,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        let command = AlertCommand::Fire {
            alert: alert.clone(),
            deliver,
            now_ms: self.clock.wall().as_millisecond(),
        };
        // Boxed: the answer comes back from another thread after a commit.
        async move {
            match self.alert(command).await? {
                AlertReply::Fired(fired) => Ok(fired),
                _ => Err(self.out_of_turn()),
            }
        }
        .boxed()
    }

    /// See [`crate::ledger::Ledger::outbox_take`].
    pub(super) fn take_outbox(
        &self,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>, LedgerError>> {
        let command = AlertCommand::Take {
            now_ms,
            lease,
            limit,
        };
        async move {
            match self.alert(command).await? {
                AlertReply::Taken(entries) => Ok(entries),
                _ => Err(self.out_of_turn()),
            }
        }
        .boxed()
    }

    /// An outbox step answered with nothing but whether it committed.
    pub(super) fn alert_step(
        &self,
        command: AlertCommand,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        self.alert(command).map(|r| r.map(drop)).boxed()
    }
}

/// What the writer is asked to do with alerts.
#[derive(Debug)]
pub(super) enum AlertCommand {
    /// Fire an alert (queue it when `deliver`); answers whether this call fired it.
    Fire {
        alert: Alert,
        deliver: bool,
        now_ms: i64,
    },
    /// Lease and return due entries.
    Take {
        now_ms: i64,
        lease: Duration,
        limit: usize,
    },
    /// Delete an entry.
    Done { id: String },
    /// Move an entry's next attempt.
    Retry { id: String, next_attempt_ms: i64 },
}

/// What an [`AlertCommand`] answers.
#[derive(Debug)]
pub(super) enum AlertReply {
    Fired(bool),
    Taken(Vec<OutboxEntry>),
    Done,
}

/// Runs `command` in one transaction.
pub(super) fn run(conn: &mut Connection, command: AlertCommand) -> rusqlite::Result<AlertReply> {
    if let AlertCommand::Take { now_ms, .. } = &command {
        // The outbox is polled every half second and is nearly always
        // empty: look before taking the write lock.
        let due: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM alert_outbox WHERE next_attempt_ms <= ?1 LIMIT 1")?
            .query_row([now_ms], |row| row.get(0))
            .optional()?;
        if due.is_none() {
            return Ok(AlertReply::Taken(Vec::new()));
        }
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let reply = match command {
        AlertCommand::Fire {
            alert,
            deliver,
            now_ms,
        } => {
            let inserted = tx.execute(
                "INSERT INTO alerts_fired (id, tenant, period, threshold, fired_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
                params![
                    alert.id,
                    alert.tenant,
                    alert.period_key,
                    alert.threshold_pct,
                    alert.fired_at
                ],
            )?;
            if inserted == 1 && deliver {
                let json = serde_json::to_string(&alert)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                tx.execute(
                    "INSERT INTO alert_outbox (id, alert, attempts, next_attempt_ms)
                     VALUES (?1, ?2, 0, ?3)",
                    params![alert.id, json, now_ms],
                )?;
            }
            AlertReply::Fired(inserted == 1)
        }
        AlertCommand::Take {
            now_ms,
            lease,
            limit,
        } => {
            let mut due = tx.prepare_cached(
                "SELECT id, alert, attempts FROM alert_outbox
                 WHERE next_attempt_ms <= ?1 ORDER BY next_attempt_ms LIMIT ?2",
            )?;
            let rows: Vec<(String, String, i64)> = due
                .query_map(
                    params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            drop(due);
            let mut lease_it = tx.prepare_cached(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_ms = ?2 WHERE id = ?1",
            )?;
            let mut taken = Vec::with_capacity(rows.len());
            for (id, json, attempts) in rows {
                lease_it.execute(params![id, now_ms.saturating_add(millis(lease))])?;
                match serde_json::from_str::<Alert>(&json) {
                    Ok(alert) => taken.push(OutboxEntry {
                        alert,
                        attempts: u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX),
                    }),
                    // Written by this code, so unreadable only if damaged: never sendable.
                    Err(e) => {
                        tracing::error!(id, error = %e, "an alert in the outbox cannot be read; dropped");
                        tx.execute("DELETE FROM alert_outbox WHERE id = ?1", [&id])?;
                    }
                }
            }
            drop(lease_it);
            AlertReply::Taken(taken)
        }
        AlertCommand::Done { id } => {
            tx.execute("DELETE FROM alert_outbox WHERE id = ?1", [&id])?;
            AlertReply::Done
        }
        AlertCommand::Retry {
            id,
            next_attempt_ms,
        } => {
            tx.execute(
                "UPDATE alert_outbox SET next_attempt_ms = ?2 WHERE id = ?1",
                params![id, next_attempt_ms],
            )?;
            AlertReply::Done
        }
    };
    tx.commit()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::clock::Clock;
    use crate::ledger::sqlite::SqliteLedger;
    use crate::ledger::{Alert, Ledger};

    fn alert(pct: u8) -> Alert {
        Alert {
            id: Alert::id_of("crm", "2026-11-27", 100, pct),
            tenant: "crm".into(),
            threshold_pct: pct,
            used: 80,
            budget: 100,
            period: "day".into(),
            period_key: "2026-11-27".into(),
            fired_at: "2026-11-27T15:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn fired_alerts_and_the_outbox_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let now = clock.wall().as_millisecond();
        let lease = Duration::from_secs(30);
        let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
        assert!(ledger.alert_fire(&alert(50), true).await.unwrap());
        assert!(!ledger.alert_fire(&alert(50), true).await.unwrap());
        assert!(ledger.alert_fire(&alert(80), false).await.unwrap());
        ledger.crash();

        let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
        assert!(
            !ledger.alert_fire(&alert(50), true).await.unwrap(),
            "fired before the crash"
        );
        let taken = ledger.outbox_take(now, lease, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "only the alert with a webhook is owed");
        assert_eq!((taken[0].alert.clone(), taken[0].attempts), (alert(50), 1));
        assert!(ledger.outbox_take(now, lease, 10).await.unwrap().is_empty());
        ledger
            .outbox_retry(&taken[0].alert.id, now + 2_000)
            .await
            .unwrap();
        ledger.crash();

        let ledger = SqliteLedger::open(&path, clock).unwrap();
        assert!(
            ledger
                .outbox_take(now + 1_999, lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = ledger.outbox_take(now + 2_000, lease, 10).await.unwrap();
        assert_eq!(again[0].attempts, 2);
        ledger.outbox_done(&again[0].alert.id).await.unwrap();
        drop(ledger);
        let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
        assert!(
            ledger
                .outbox_take(i64::MAX, lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn rows_of_ids_without_the_budget_keep_working_beside_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let now = clock.wall().as_millisecond();
        drop(SqliteLedger::open(&path, clock.clone()).unwrap());
        // What the previous version wrote at schema version 4: ids without
        // the budget, one fired and still owed to the webhook.
        let mut old = alert(50);
        old.id = "crm:2026-11-27:50".into();
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO alerts_fired (id, tenant, period, threshold, fired_at)
                 VALUES (?1, 'crm', '2026-11-27', 50, '2026-11-27T15:00:00Z')",
                [&old.id],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO alert_outbox (id, alert, next_attempt_ms) VALUES (?1, ?2, ?3)",
                rusqlite::params![old.id, serde_json::to_string(&old).unwrap(), now],
            )
            .unwrap();
        }
        let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
        // The new id names another alert: it fires, and is owed too.
        assert!(ledger.alert_fire(&alert(50), true).await.unwrap());
        assert!(!ledger.alert_fire(&alert(50), true).await.unwrap());
        let lease = Duration::from_secs(30);
        let mut owed: Vec<Alert> = (ledger.outbox_take(now, lease, 10).await.unwrap())
            .into_iter()
            .map(|e| e.alert)
            .collect();
        owed.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(owed, vec![alert(50), old.clone()]);
        ledger.outbox_done(&old.id).await.unwrap();
        drop(ledger);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 4, "no table changed: the layout is the same");
    }
}
