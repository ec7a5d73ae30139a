//! One circuit breaker's state machine: closed, open, half-open.
//!
//! Closed: calls pass; failures are counted, and a healthy answer resets the
//! count. At the threshold it opens: calls fail fast for the open period
//! without touching the upstream. Then one probe is let through
//! (half-open): its success closes the breaker, its failure opens it again.
//!
//! A [`Circuit`] holds no lock and reads no clock: its owner
//! ([`super::key_breakers::KeyBreakers`], one for a key and one per failing
//! account) passes the time in under its own lock, so tests move time with
//! a fake clock and the key's and accounts' breakers change together.

use std::time::{Duration, Instant};

/// How long a caller is told to wait while another call is the probe.
const PROBE_PENDING_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe went out at `since`.
    HalfOpen {
        since: Instant,
    },
}

/// What a circuit says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Permit {
    /// Go ahead.
    Allowed,
    /// Go ahead: this call is the probe of a half-open breaker.
    Probe,
    /// Fail fast; the breaker lets a probe through in this long.
    Refused(Duration),
}

/// One breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Circuit {
    state: State,
}

impl Default for Circuit {
    fn default() -> Self {
        Self::closed()
    }
}

impl Circuit {
    /// A closed breaker with no failure counted.
    pub(super) fn closed() -> Self {
        Self {
            state: State::Closed { failures: 0 },
        }
    }

    /// Asks to make a call at `now`.
    pub(super) fn permit(&mut self, now: Instant, open_for: Duration) -> Permit {
        match self.state {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until } if now < until => Permit::Refused(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen { since: now };
                Permit::Probe
            }
            // A probe whose verdict never came (its caller was dropped
            // mid-call) is replaced after an open period: a lost probe must
            // not leave the breaker refusing for ever.
            State::HalfOpen { since } if now.saturating_duration_since(since) >= open_for => {
                self.state = State::HalfOpen { since: now };
                Permit::Probe
            }
            // One probe at a time; the others wait for its verdict.
            State::HalfOpen { .. } => Permit::Refused(PROBE_PENDING_WAIT),
        }
    }

    /// A healthy answer: closes the breaker and forgets past failures.
    pub(super) fn succeeded(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    /// A failure at `now`; returns true when it opened the breaker.
    pub(super) fn failed(&mut self, now: Instant, threshold: u32, open_for: Duration) -> bool {
        match self.state {
            State::Closed { failures } if failures + 1 < threshold.max(1) => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // A call let through before it opened changes nothing.
            State::Open { .. } => false,
            // The threshold reached, or the probe failed: open for a full period.
            State::Closed { .. } | State::HalfOpen { .. } => {
                self.state = State::Open {
                    until: now + open_for,
                };
                true
            }
        }
    }

    /// Opens the breaker at once, whatever it counted (a failure seen
    /// elsewhere says the upstream is unhealthy); true when it was not open.
    pub(super) fn trip(&mut self, now: Instant, open_for: Duration) -> bool {
        if matches!(self.state, State::Open { .. }) {
            return false;
        }
        self.state = State::Open {
            until: now + open_for,
        };
        true
    }

    /// Gives back a probe permit whose call never went out, or whose answer
    /// says nothing about this breaker: the next call probes instead.
    pub(super) fn abandon_probe(&mut self, now: Instant) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::Open { until: now };
        }
    }

    /// Whether the breaker is open or half-open (not yet closed by a probe).
    pub(super) fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Whether it is closed with no failure counted: nothing worth keeping.
    pub(super) fn is_pristine(&self) -> bool {
        self.state == State::Closed { failures: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_repeated_failures_and_probes_before_closing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Circuit::closed();
        assert_eq!(c.permit(at(0), OPEN), Permit::Allowed);
        assert!(!c.failed(at(0), 3, OPEN));
        assert!(!c.failed(at(0), 3, OPEN));
        c.succeeded(); // a success resets the count
        assert!(!c.failed(at(0), 3, OPEN));
        assert!(!c.failed(at(0), 3, OPEN));
        assert!(
            c.failed(at(0), 3, OPEN),
            "third consecutive failure opens it"
        );
        assert_eq!(c.permit(at(0), OPEN), Permit::Refused(OPEN));
        assert!(matches!(c.permit(at(29), OPEN), Permit::Refused(_)));
        assert_eq!(c.permit(at(30), OPEN), Permit::Probe);
        assert!(
            matches!(c.permit(at(30), OPEN), Permit::Refused(_)),
            "one probe at a time"
        );
        // A failed probe opens it again for a full period.
        assert!(c.failed(at(30), 3, OPEN));
        assert_eq!(c.permit(at(30), OPEN), Permit::Refused(OPEN));
        assert_eq!(c.permit(at(60), OPEN), Permit::Probe);
        c.succeeded();
        assert_eq!(c.permit(at(60), OPEN), Permit::Allowed);
        assert!(!c.is_open());
        assert!(c.is_pristine());
    }

    #[test]
    fn a_lost_probe_is_replaced_and_an_abandoned_one_is_given_back() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Circuit::closed();
        assert!(c.trip(at(0), OPEN));
        assert!(!c.trip(at(1), OPEN), "already open");
        assert_eq!(c.permit(at(30), OPEN), Permit::Probe);
        // The probe's caller vanished: after another period, a new probe.
        assert!(matches!(c.permit(at(59), OPEN), Permit::Refused(_)));
        assert_eq!(c.permit(at(60), OPEN), Permit::Probe);
        // A probe that never went out: the very next call probes.
        c.abandon_probe(at(60));
        assert_eq!(c.permit(at(60), OPEN), Permit::Probe);
        assert!(c.is_open());
    }
}
