//! Faults the simulator injects on demand, so the gateway's retry, timeout
//! and error paths can be tested against the misbehaviour upstream shows.
//!
//! One fault is active at a time. It is applied to `/v2/` requests once their
//! key has been accepted, and can be limited to the next N such requests.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A fault to inject: what goes wrong, after how long, and how many times.
///
/// As JSON (for `POST /_sim/fault`):
/// `{"kind": {"type": "rate_limited", "retry_after_s": 3}, "latency_ms": 0, "times": 1}`;
/// `latency_ms` and `times` may be left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What goes wrong.
    pub kind: FaultKind,
    /// Delay before answering (or before dropping the connection).
    #[serde(default)]
    pub latency_ms: u64,
    /// Applies to the next N authenticated `/v2/` requests; `None` until
    /// cleared. `Some(0)` is the same as no fault.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    /// A fault of this kind, with no latency, until cleared.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            latency_ms: 0,
            times: None,
        }
    }

    /// Only added latency: requests are answered normally, late.
    pub fn latency(latency_ms: u64) -> Self {
        Fault {
            kind: FaultKind::None,
            latency_ms,
            times: None,
        }
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
}

/// What goes wrong with a faulted request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Nothing goes wrong: only the latency applies.
    #[default]
    None,
    /// 500 `INTERNAL_ERROR` in the V2 error envelope.
    InternalError,
    /// 429 `RATE_LIMITED` with a `Retry-After` header of this many seconds
    /// (at least 1).
    RateLimited {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_s: u32,
    },
    /// Never answers: the connection is held until the client gives up or
    /// the simulator shuts down.
    Hang,
    /// Drops the connection without any response.
    Reset,
    /// 200 with a non-JSON body and `content-type: text/html`, like a proxy
    /// error page.
    Garbage,
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

    /// Takes one application of the active fault: a `times`-limited fault is
    /// counted down and removed when used up.
    pub(crate) fn take(&self) -> Option<Fault> {
        let mut slot = self.lock();
        let fault = slot.as_mut()?;
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

    #[test]
    fn limited_fault_runs_out() {
        let slot = FaultSlot::default();
        slot.set(Fault::new(FaultKind::InternalError).times(2));
        assert!(slot.take().is_some());
        assert_eq!(slot.current().and_then(|f| f.times), Some(1));
        assert!(slot.take().is_some());
        assert!(slot.take().is_none());
    }

    #[test]
    fn unlimited_fault_stays_until_cleared() {
        let slot = FaultSlot::default();
        slot.set(Fault::latency(5));
        for _ in 0..5 {
            assert_eq!(slot.take(), Some(Fault::latency(5)));
        }
        slot.clear();
        assert!(slot.take().is_none());
        slot.set(Fault::new(FaultKind::Hang).times(0));
        assert!(slot.take().is_none());
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
}
