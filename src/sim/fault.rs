//! Faults the simulator injects on demand, so the gateway's retry, timeout
//! and error paths can be tested against the misbehaviour upstream shows.
//!
//! One fault is active at a time. It is applied to `/v2/` requests once their
//! key has been accepted, can be limited to the next N such requests and to
//! one account. Each kind says when it strikes ([`FaultKind::phase`]):
//! *before* the action runs (nothing is executed or billed, as with a real
//! upstream error) or *after* it ran and was billed (only the reply is
//! spoiled, so the caller cannot tell whether the call happened).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A fault to inject: what goes wrong, after how long, how many times, and
/// for which account.
///
/// As JSON (for `POST /_sim/fault`):
/// `{"kind": {"type": "rate_limited", "retry_after_s": 3}, "latency_ms": 0, "times": 1, "account_id": "acc-1"}`;
/// `latency_ms`, `times` and `account_id` may be left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Delay before answering (or before dropping the connection). For a
    /// fault applied after the action, the delay comes after the action ran.
    #[serde(default)]
    pub latency_ms: u64,
    /// Applies to the next N authenticated `/v2/` requests it matches; `None`
    /// until cleared. `Some(0)` is the same as no fault.
    #[serde(default)]
    pub times: Option<u32>,
    /// Applies only to requests for this account (the body's `account_id`,
    /// the account of `GET /v2/accounts/{account_id}`, the account a login
    /// connects); other requests, and those naming no account, are served
    /// normally and do not use up `times`. `None` applies to every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

impl Fault {
    /// A fault of this kind, with no latency, until cleared.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            latency_ms: 0,
            times: None,
            account_id: None,
        }
    }

    /// Only added latency: requests are answered normally, late.
    pub fn latency(latency_ms: u64) -> Self {
        Fault::new(FaultKind::None).with_latency(latency_ms)
    }

    /// Sets the delay before answering.
    pub fn with_latency(mut self, latency_ms: u64) -> Self {
        self.latency_ms = latency_ms;
        self
    }

    /// Limits the fault to the next `times` requests.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }

    /// Limits the fault to requests for `account_id`.
    pub fn for_account(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = Some(account_id.into());
        self
    }

    /// Whether the fault applies to a request for `account_id` (`None`: the
    /// request names no account).
    pub(crate) fn matches(&self, account_id: Option<&str>) -> bool {
        match &self.account_id {
            None => true,
            Some(wanted) => account_id == Some(wanted.as_str()),
        }
    }
}

/// When a fault strikes, relative to the action it spoils.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPhase {
    /// Before the action runs: nothing is executed, written or billed.
    BeforeAction,
    /// After the action ran, was counted and billed: only the reply is
    /// spoiled. Applied only to calls that succeeded; a refused call is
    /// answered normally and does not use the fault up.
    AfterAction,
}

/// Which form of the key an [`FaultKind::EchoKey`] answer carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EchoVariant {
    /// The key as it was sent.
    #[default]
    Exact,
    /// The key in lower case.
    Lower,
    /// The key without its last character.
    MinusOne,
}

impl EchoVariant {
    /// The echoed form of `key`.
    pub(crate) fn apply(self, key: &str) -> String {
        match self {
            EchoVariant::Exact => key.to_owned(),
            EchoVariant::Lower => key.to_lowercase(),
            EchoVariant::MinusOne => {
                let mut echoed = key.to_owned();
                echoed.pop();
                echoed
            }
        }
    }
}

/// What goes wrong with a faulted request. As JSON, an object tagged by
/// `type` in snake case, e.g. `{"type": "cut_short"}`,
/// `{"type": "oversized", "bytes": 9437184}`,
/// `{"type": "echo_key", "variant": "minus_one", "status": 502}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Before the action: nothing goes wrong, only the latency applies
    /// (then the action runs and is answered normally).
    #[default]
    None,
    /// Before the action: 500 `INTERNAL_ERROR` in the V2 error envelope.
    InternalError,
    /// Before the action: 429 `RATE_LIMITED` with a `Retry-After` header of
    /// this many seconds (at least 1).
    RateLimited {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_s: u32,
    },
    /// Before the action: never answers; the connection is held until the
    /// client gives up or the simulator shuts down.
    Hang,
    /// Before the action: drops the connection without any response.
    Reset,
    /// Before the action: 200 with a non-JSON body and
    /// `content-type: text/html`, like a proxy error page.
    Garbage,
    /// Before the action (V2 errors cost nothing, so nothing runs): an error
    /// answer that echoes the `x-api-key` it was sent, in the form `variant`
    /// says, as its `error.code` and in its message (`key <k> is not
    /// allowed here`). What a careless upstream or proxy does; the gateway
    /// must never pass it on.
    EchoKey {
        /// Which form of the key is echoed (default `exact`).
        #[serde(default)]
        variant: EchoVariant,
        /// HTTP status of the answer (default 500; anything outside
        /// 400..=599 is answered as 500).
        #[serde(default = "default_echo_status")]
        status: u16,
    },
    /// After the action (executed and billed): a 200 that sends
    /// `Content-Length` of the whole success body, writes about half of it,
    /// then closes the connection.
    CutShort,
    /// After the action (executed and billed): a 200 whose body is the
    /// action's valid V2 success envelope padded (a top-level `padding`
    /// string) to more than `bytes` bytes (default 9437184, 9 MiB; at most
    /// 256 MiB).
    Oversized {
        /// The body is longer than this.
        #[serde(default = "default_oversized_bytes")]
        bytes: u64,
    },
    /// After the action (executed and billed): the reply never comes, as
    /// when upstream times out after the call was sent.
    HangAfterExecute,
    /// After the action (executed and billed): the connection is dropped
    /// without a response.
    ResetAfterExecute,
}

impl FaultKind {
    /// Default size past which an [`FaultKind::Oversized`] body is padded:
    /// 9 MiB, above the 8 MiB the gateway reads.
    pub const OVERSIZED_DEFAULT_BYTES: u64 = 9 * 1024 * 1024;

    /// Largest `bytes` an oversized body is padded to, so a typo cannot make
    /// the simulator allocate gigabytes.
    pub const OVERSIZED_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// An oversized reply of the default size.
    pub fn oversized() -> Self {
        FaultKind::Oversized {
            bytes: Self::OVERSIZED_DEFAULT_BYTES,
        }
    }

    /// An error answer echoing the key in the form `variant`, with status 500.
    pub fn echo_key(variant: EchoVariant) -> Self {
        FaultKind::EchoKey {
            variant,
            status: default_echo_status(),
        }
    }

    /// Whether this kind strikes before or after the action runs.
    pub fn phase(&self) -> FaultPhase {
        match self {
            FaultKind::None
            | FaultKind::InternalError
            | FaultKind::RateLimited { .. }
            | FaultKind::Hang
            | FaultKind::Reset
            | FaultKind::Garbage
            | FaultKind::EchoKey { .. } => FaultPhase::BeforeAction,
            FaultKind::CutShort
            | FaultKind::Oversized { .. }
            | FaultKind::HangAfterExecute
            | FaultKind::ResetAfterExecute => FaultPhase::AfterAction,
        }
    }
}

fn default_echo_status() -> u16 {
    500
}

fn default_oversized_bytes() -> u64 {
    FaultKind::OVERSIZED_DEFAULT_BYTES
}

/// The active fault and how many more requests it applies to.
#[derive(Debug, Default)]
pub(crate) struct FaultSlot {
    active: Mutex<Option<Fault>>,
}

impl FaultSlot {
    /// Replaces the active fault.
    pub(crate) fn set(&self, fault: Fault) {
        let fault = (fault.times != Some(0)).then_some(fault);
        *self.lock() = fault;
    }

    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    /// The active fault, if any, without using one of its applications.
    pub(crate) fn current(&self) -> Option<Fault> {
        self.lock().clone()
    }

    /// Takes one application of the active fault if it strikes in `phase`
    /// and matches a request for `account_id`: a `times`-limited fault is
    /// counted down and removed when used up. A fault that does not match is
    /// left untouched.
    pub(crate) fn take(&self, phase: FaultPhase, account_id: Option<&str>) -> Option<Fault> {
        let mut slot = self.lock();
        let fault = slot.as_mut()?;
        if fault.kind.phase() != phase || !fault.matches(account_id) {
            return None;
        }
        let applied = fault.clone();
        if let Some(times) = fault.times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                *slot = None;
            }
        }
        Some(applied)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        // A panic elsewhere cannot leave an `Option<Fault>` half-written, so
        // a poisoned lock is still usable.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: FaultPhase = FaultPhase::BeforeAction;
    const AFTER: FaultPhase = FaultPhase::AfterAction;

    #[test]
    fn limited_fault_runs_out() {
        let slot = FaultSlot::default();
        slot.set(Fault::new(FaultKind::InternalError).times(2));
        assert!(slot.take(BEFORE, None).is_some());
        assert_eq!(slot.current().and_then(|f| f.times), Some(1));
        assert!(slot.take(BEFORE, Some("a")).is_some());
        assert!(slot.take(BEFORE, None).is_none());
    }

    #[test]
    fn unlimited_fault_stays_until_cleared() {
        let slot = FaultSlot::default();
        slot.set(Fault::latency(5));
        for _ in 0..5 {
            assert_eq!(slot.take(BEFORE, None), Some(Fault::latency(5)));
        }
        slot.clear();
        assert!(slot.take(BEFORE, None).is_none());
        slot.set(Fault::new(FaultKind::Hang).times(0));
        assert!(slot.take(BEFORE, None).is_none());
    }

    #[test]
    fn a_fault_is_taken_only_in_its_phase() {
        let slot = FaultSlot::default();
        slot.set(Fault::new(FaultKind::CutShort).times(1));
        assert!(slot.take(BEFORE, None).is_none());
        assert_eq!(slot.current().and_then(|f| f.times), Some(1));
        assert!(slot.take(AFTER, None).is_some());
        assert!(slot.current().is_none());
    }

    #[test]
    fn an_account_fault_skips_other_requests_without_using_them_up() {
        let slot = FaultSlot::default();
        slot.set(Fault::new(FaultKind::Reset).for_account("acc-1").times(1));
        assert!(slot.take(BEFORE, Some("acc-2")).is_none());
        assert!(slot.take(BEFORE, None).is_none());
        assert_eq!(slot.current().and_then(|f| f.times), Some(1));
        assert!(slot.take(BEFORE, Some("acc-1")).is_some());
        assert!(slot.current().is_none());
    }

    #[test]
    fn phases_of_every_kind() {
        for kind in [
            FaultKind::None,
            FaultKind::InternalError,
            FaultKind::RateLimited { retry_after_s: 1 },
            FaultKind::Hang,
            FaultKind::Reset,
            FaultKind::Garbage,
            FaultKind::echo_key(EchoVariant::Exact),
        ] {
            assert_eq!(kind.phase(), BEFORE, "{kind:?}");
        }
        for kind in [
            FaultKind::CutShort,
            FaultKind::oversized(),
            FaultKind::HangAfterExecute,
            FaultKind::ResetAfterExecute,
        ] {
            assert_eq!(kind.phase(), AFTER, "{kind:?}");
        }
    }

    #[test]
    fn echo_variants() {
        assert_eq!(EchoVariant::Exact.apply("Sk-AbC"), "Sk-AbC");
        assert_eq!(EchoVariant::Lower.apply("Sk-AbC"), "sk-abc");
        assert_eq!(EchoVariant::MinusOne.apply("Sk-AbC"), "Sk-Ab");
        assert_eq!(EchoVariant::MinusOne.apply(""), "");
    }

    #[test]
    fn json_shape() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":{"type":"rate_limited","retry_after_s":3}}"#)
                .expect("fault json");
        assert_eq!(
            fault,
            Fault::new(FaultKind::RateLimited { retry_after_s: 3 })
        );
        let json = serde_json::to_value(Fault::new(FaultKind::Garbage).times(1)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"kind":{"type":"garbage"},"latency_ms":0,"times":1})
        );
    }

    #[test]
    fn json_of_the_reply_faults() {
        let parse = |s: &str| serde_json::from_str::<Fault>(s).expect(s);
        assert_eq!(
            parse(r#"{"kind":{"type":"cut_short"},"account_id":"acc-1"}"#),
            Fault::new(FaultKind::CutShort).for_account("acc-1")
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"oversized"}}"#).kind,
            FaultKind::Oversized { bytes: 9_437_184 }
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"oversized","bytes":1000}}"#).kind,
            FaultKind::Oversized { bytes: 1000 }
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"echo_key"}}"#).kind,
            FaultKind::EchoKey {
                variant: EchoVariant::Exact,
                status: 500
            }
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"echo_key","variant":"minus_one","status":502}}"#).kind,
            FaultKind::EchoKey {
                variant: EchoVariant::MinusOne,
                status: 502
            }
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"hang_after_execute"}}"#).kind,
            FaultKind::HangAfterExecute
        );
        assert_eq!(
            parse(r#"{"kind":{"type":"reset_after_execute"}}"#).kind,
            FaultKind::ResetAfterExecute
        );
        let json =
            serde_json::to_value(Fault::new(FaultKind::Reset).for_account("a")).expect("json");
        assert_eq!(json["account_id"], "a");
    }
}
