//! Budget alerts in Redis, shared by every replica.
//!
//! Keys carry the `{alerts}` hash tag, so each script touches one Cluster
//! slot:
//! - `vg:{alerts}:fired:<alert id>`: the claim of one threshold of one
//!   budget in one period (the claimer's random token), expiring with the
//!   period's keys. Ids of earlier versions lack the budget, so their keys
//!   never collide with these.
//! - `vg:{alerts}:outbox`: hash, alert id → alert JSON, for alerts owed to
//!   the webhook.
//! - `vg:{alerts}:due`: sorted set, alert id by next attempt (Unix ms on
//!   viewgate's clock); taking an entry moves it a lease ahead, so two
//!   replicas never send one entry at once.
//! - `vg:{alerts}:attempts`: hash, alert id → attempts made.
//!
//! Firing is `alert_fire.lua` (SET NX, then the outbox, in one step) and
//! taking is `outbox_take.lua`; both are atomic on the server.

use std::time::Duration;

use ::redis::Value;

use super::Inner;
use super::keys::{expiry, ttl_ms};
use crate::config::Period;
use crate::ledger::{Alert, LedgerError, OutboxEntry};
use crate::redis::{Op, Retry};

const OUTBOX: &str = "vg:{alerts}:outbox";
const DUE: &str = "vg:{alerts}:due";
const ATTEMPTS: &str = "vg:{alerts}:attempts";

fn fired_key(id: &str) -> String {
    format!("vg:{{alerts}}:fired:{id}")
}

impl Inner {
    /// See [`crate::ledger::Ledger::alert_fire`].
    pub(super) async fn alert_fire(
        &self,
        alert: &Alert,
        deliver: bool,
    ) -> Result<bool, LedgerError> {
        let now = self.clock.wall();
        let period = match alert.period.as_str() {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            _ => Period::Total,
        };
        let json = if deliver {
            serde_json::to_string(alert).map_err(|e| self.failure(e))?
        } else {
            String::new()
        };
        let token = getrandom::u64().map_err(|e| self.failure(format!("no random token: {e}")))?;
        let mut invocation = self.scripts.alert_fire.prepare_invoke();
        invocation
            .key(fired_key(&alert.id))
            .key(OUTBOX)
            .key(DUE)
            .arg(&alert.id)
            .arg(json)
            .arg(now.as_millisecond())
            .arg(ttl_ms(expiry(period, now), now))
            .arg(format!("{token:016x}"));
        // Retried once: a resend finds its own token and answers the same.
        let fired: i64 = self.run(Op::Script(&invocation), Retry::Once).await?;
        Ok(fired == 1)
    }

    /// See [`crate::ledger::Ledger::outbox_take`].
    pub(super) async fn outbox_take(
        &self,
        now_ms: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, LedgerError> {
        let mut invocation = self.scripts.outbox_take.prepare_invoke();
        invocation
            .key(OUTBOX)
            .key(DUE)
            .key(ATTEMPTS)
            .arg(now_ms)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .arg(limit);
        // Never resent: a lost answer leaves its entries leased, and they
        // are taken again when the lease ends.
        let reply: Vec<Value> = self.run(Op::Script(&invocation), Retry::Never).await?;
        let mut out = Vec::with_capacity(reply.len() / 2);
        for pair in reply.chunks(2) {
            let (Value::BulkString(json), Some(Value::Int(attempts))) = (&pair[0], pair.get(1))
            else {
                return Err(self.failure("unexpected outbox reply"));
            };
            let alert: Alert = serde_json::from_slice(json)
                .map_err(|e| self.failure(format!("an outbox entry cannot be read: {e}")))?;
            out.push(OutboxEntry {
                alert,
                attempts: u32::try_from(*attempts).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    /// See [`crate::ledger::Ledger::outbox_done`].
    pub(super) async fn outbox_done(&self, id: &str) -> Result<(), LedgerError> {
        let mut pipeline = ::redis::pipe();
        pipeline
            .atomic()
            .cmd("HDEL")
            .arg(OUTBOX)
            .arg(id)
            .ignore()
            .cmd("ZREM")
            .arg(DUE)
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(ATTEMPTS)
            .arg(id)
            .ignore();
        self.run::<()>(Op::Pipeline(&pipeline), Retry::Once).await
    }

    /// See [`crate::ledger::Ledger::outbox_retry`].
    pub(super) async fn outbox_retry(
        &self,
        id: &str,
        next_attempt_ms: i64,
    ) -> Result<(), LedgerError> {
        let mut cmd = ::redis::cmd("ZADD");
        // XX: an entry another replica delivered meanwhile stays gone.
        cmd.arg(DUE).arg("XX").arg(next_attempt_ms).arg(id);
        self.run::<i64>(Op::Cmd(&cmd), Retry::Once).await.map(drop)
    }
}
