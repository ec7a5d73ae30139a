//! A circuit breaker per upstream key.
//!
//! Closed: calls pass; consecutive transport failures (unreachable, reset,
//! timeout, 5xx) are counted, and a success resets the count. At
//! `upstream.breaker.failures` the breaker opens: calls fail fast for
//! `upstream.breaker.open_s` without touching the upstream. Then one probe
//! is let through (half-open): its success closes the breaker, its failure
//! opens it again. Time comes from viewgate's clock, so tests move it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead.
    Allowed,
    /// Go ahead: this call is the probe of a half-open breaker.
    Probe,
    /// Fail fast; the breaker reopens its door in this long.
    Refused(Duration),
}

/// The breaker of one key.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
    clock: Clock,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration, clock: Clock) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call.
    pub fn permit(&self) -> Permit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } => {
                let now = self.clock.now();
                if now >= until {
                    *state = State::HalfOpen;
                    Permit::Probe
                } else {
                    Permit::Refused(until - now)
                }
            }
            // One probe at a time; the others wait for its verdict.
            State::HalfOpen => Permit::Refused(Duration::from_secs(1)),
        }
    }

    /// Records how a permitted call went; returns true when this opened the breaker.
    pub fn record(&self, healthy: bool) -> bool {
        let mut state = self.lock();
        let next = match (*state, healthy) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open {
                until: self.clock.now() + self.open_for,
            },
        };
        let opened = matches!(next, State::Open { .. }) && !matches!(*state, State::Open { .. });
        *state = next;
        opened
    }

    /// Gives back a probe permit that was never used (the call did not go
    /// out), so the next call probes instead.
    pub fn abandon_probe(&self) {
        let mut state = self.lock();
        if *state == State::HalfOpen {
            *state = State::Open {
                until: self.clock.now(),
            };
        }
    }

    /// Whether calls are being refused now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_probes_before_closing() {
        let clock = Clock::fake("2026-11-27T12:00:00Z".parse().unwrap());
        let b = Breaker::new(3, Duration::from_secs(30), clock.clone());
        assert_eq!(b.permit(), Permit::Allowed);
        assert!(!b.record(false));
        assert!(!b.record(false));
        b.record(true); // a success resets the count
        assert!(!b.record(false));
        assert!(!b.record(false));
        assert!(b.record(false), "third consecutive failure opens it");
        assert_eq!(b.permit(), Permit::Refused(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(29));
        assert!(matches!(b.permit(), Permit::Refused(_)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.permit(), Permit::Probe);
        assert!(
            matches!(b.permit(), Permit::Refused(_)),
            "one probe at a time"
        );
        // A failed probe opens it again for a full period.
        assert!(b.record(false));
        assert_eq!(b.permit(), Permit::Refused(Duration::from_secs(30)));
        clock.advance(Duration::from_secs(30));
        assert_eq!(b.permit(), Permit::Probe);
        b.record(true);
        assert_eq!(b.permit(), Permit::Allowed);
        assert!(!b.is_open());
    }
}
