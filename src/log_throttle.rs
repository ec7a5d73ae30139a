//! Rate-limited logging for errors that repeat.
//!
//! When a fault lasts (the ledger's disk is full, Redis is down, the
//! upstream fails every call), the same error comes back many times a
//! second. Logged each time, it buries every other line and makes the logs
//! unreadable exactly when they are needed. A [`LogThrottle`] lets the
//! first occurrence at each call site through, then at most one line per
//! period ([`SUMMARY_EVERY`], 5 s) carrying how many occurrences were
//! `suppressed` since the previous line; when the fault ends, the caller may
//! [`LogThrottle::clear`] the site and log the recovery with the last count.
//!
//! Sites are named by their callers (`"ledger.settles_unwritten"`), a fixed
//! set, so the table stays small. Time comes from viewgate's clock, so tests
//! move it instead of sleeping. Each part that logs owns its throttle (the
//! ledger's writer, the upstream client, the request path): one gateway's
//! faults never silence another's lines.
//!
//! ```text
//! if let Some(suppressed) = logs.admit("ledger.hits_unwritten") {
//!     tracing::warn!(suppressed, "ledger could not write cache-hit counts");
//! }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// At most one line per site per this long.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Sites remembered at most (the callers name a handful; this only guards
/// against a caller that builds site names from data).
const MAX_SITES: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Site {
    /// When the site's last line was written.
    logged_at: Instant,
    /// Occurrences since then, not written.
    suppressed: u64,
}

/// Decides which occurrences of a repeating error are logged.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    clock: Clock,
    every: Duration,
    sites: Mutex<HashMap<Box<str>, Site>>,
}

impl LogThrottle {
    /// A throttle writing at most one line per site every [`SUMMARY_EVERY`].
    pub(crate) fn new(clock: Clock) -> Self {
        Self::with_period(clock, SUMMARY_EVERY)
    }

    /// A throttle writing at most one line per site every `every`.
    pub(crate) fn with_period(clock: Clock, every: Duration) -> Self {
        Self {
            clock,
            every,
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn sites(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Site>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.sites.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One occurrence at `site`: `Some(suppressed)` when it should be
    /// logged, with the number of occurrences left out since the site's
    /// previous line (0 for the first); `None` when it is to be left out.
    pub(crate) fn admit(&self, site: &str) -> Option<u64> {
        let now = self.clock.now();
        let mut sites = self.sites();
        if let Some(entry) = sites.get_mut(site) {
            if now.saturating_duration_since(entry.logged_at) < self.every {
                entry.suppressed = entry.suppressed.saturating_add(1);
                return None;
            }
            let suppressed = entry.suppressed;
            *entry = Site {
                logged_at: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if sites.len() >= MAX_SITES {
            let every = self.every;
            sites.retain(|_, s| now.saturating_duration_since(s.logged_at) < every);
        }
        sites.insert(
            site.into(),
            Site {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    /// Occurrences at `site` left out since its last line, or `None` when
    /// nothing was logged there (tests wait on it).
    #[cfg(test)]
    pub(crate) fn suppressed(&self, site: &str) -> Option<u64> {
        self.sites().get(site).map(|s| s.suppressed)
    }

    /// The fault at `site` is over: forgets the site (its next occurrence is
    /// logged at once) and returns the occurrences left out since its last
    /// line, or `None` when nothing was logged there.
    pub(crate) fn clear(&self, site: &str) -> Option<u64> {
        self.sites().remove(site).map(|s| s.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock::fake("2026-11-27T12:00:00Z".parse().unwrap())
    }

    #[test]
    fn the_first_occurrence_is_logged_then_one_summary_per_period() {
        let clock = clock();
        let logs = LogThrottle::new(clock.clone());
        assert_eq!(logs.admit("disk"), Some(0));
        // 30 a second for a minute: 1,800 occurrences.
        let mut lines = vec![0];
        for _ in 0..1_799 {
            clock.advance(Duration::from_millis(33));
            if let Some(suppressed) = logs.admit("disk") {
                lines.push(suppressed);
            }
        }
        // One line, then one every 5 s: 12 in the minute; every occurrence
        // is written, counted in a later line, or still pending.
        assert_eq!(lines.len(), 12, "{lines:?}");
        assert!(lines[1..].iter().all(|&n| n == 151), "{lines:?}");
        let pending = logs.clear("disk").unwrap();
        assert_eq!(
            lines.iter().sum::<u64>() + lines.len() as u64 + pending,
            1_800
        );
    }

    #[test]
    fn sites_are_throttled_apart() {
        let clock = clock();
        let logs = LogThrottle::new(clock.clone());
        assert_eq!(logs.admit("ledger"), Some(0));
        assert_eq!(
            logs.admit("redis"),
            Some(0),
            "another site has its own first line"
        );
        assert_eq!(logs.admit("ledger"), None);
        assert_eq!(logs.admit("ledger"), None);
        clock.advance(SUMMARY_EVERY);
        assert_eq!(logs.admit("ledger"), Some(2));
        assert_eq!(logs.admit("redis"), Some(0));
    }

    #[test]
    fn clearing_a_site_reports_what_was_left_out_and_starts_over() {
        let clock = clock();
        let logs = LogThrottle::new(clock.clone());
        assert_eq!(logs.clear("disk"), None, "nothing was failing");
        assert_eq!(logs.admit("disk"), Some(0));
        assert_eq!(logs.admit("disk"), None);
        assert_eq!(logs.clear("disk"), Some(1));
        assert_eq!(logs.admit("disk"), Some(0), "a new fault is logged at once");
    }

    #[test]
    fn the_site_table_stays_bounded() {
        let clock = clock();
        let logs = LogThrottle::new(clock.clone());
        for i in 0..MAX_SITES * 4 {
            logs.admit(&format!("site-{i}"));
            if i % MAX_SITES == 0 {
                clock.advance(SUMMARY_EVERY);
            }
        }
        assert!(logs.sites().len() <= MAX_SITES + 1);
    }
}
