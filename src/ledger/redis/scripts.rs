//! The ledger's Lua scripts (the `*.lua` files beside this one) and how
//! their replies are read.
//!
//! Each script is atomic on the server. Those that spend or claim are
//! idempotent on the id they are given (a reservation id, an idempotency
//! key's fingerprint and claim token), which is what makes it safe to send
//! them again after a lost answer; `hits.lua` adds counts and is never sent
//! twice. They run by SHA; the client loads a script again when the server
//! answers `NOSCRIPT` (after a restart).

use ::redis::Script;

use super::{Inner, count};
use crate::ledger::LedgerError;

/// Every script the ledger runs.
pub(super) struct Scripts {
    pub(super) reserve: Script,
    pub(super) close: Script,
    pub(super) sweep: Script,
    pub(super) hits: Script,
    pub(super) key_begin: Script,
    pub(super) key_complete: Script,
    pub(super) key_abandon: Script,
    pub(super) alert_fire: Script,
    pub(super) outbox_take: Script,
}

impl Scripts {
    /// The scripts, compiled into the binary.
    pub(super) fn new() -> Self {
        Self {
            reserve: Script::new(include_str!("reserve.lua")),
            close: Script::new(include_str!("close.lua")),
            sweep: Script::new(include_str!("sweep.lua")),
            hits: Script::new(include_str!("hits.lua")),
            key_begin: Script::new(include_str!("key_begin.lua")),
            key_complete: Script::new(include_str!("key_complete.lua")),
            key_abandon: Script::new(include_str!("key_abandon.lua")),
            alert_fire: Script::new(include_str!("alert_fire.lua")),
            outbox_take: Script::new(include_str!("outbox_take.lua")),
        }
    }
}

impl Inner {
    /// The three counts every script answers with.
    pub(super) fn triple(&self, reply: &[i64]) -> Result<(u64, u64, u64), LedgerError> {
        match reply {
            [a, b, c] => Ok((count(*a), count(*b), count(*c))),
            _ => Err(self.failure(format!("unexpected script reply {reply:?}"))),
        }
    }
}
