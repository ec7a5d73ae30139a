//! The simulator's own per-key rate limit: N admitted requests per fixed
//! one-minute window (V1 documented 300 per minute per key; V2 gives no
//! numbers). Over the limit the answer is 429 `RATE_LIMITED` with a
//! `Retry-After` of the seconds left in the window.
//!
//! Time is `tokio::time::Instant`, so a test on a paused clock can move
//! through windows without sleeping.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    admitted: u32,
}

/// One fixed window per key index.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: Option<u32>,
    windows: Vec<Mutex<Option<Window>>>,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: Option<u32>, keys: usize) -> Self {
        RateLimiter {
            per_minute,
            windows: (0..keys).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Admits one request for `key`, or says how many whole seconds (at
    /// least 1) until its window reopens.
    pub(crate) fn check(&self, key: usize) -> Result<(), u32> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: usize, now: Instant) -> Result<(), u32> {
        let (Some(limit), Some(slot)) = (self.per_minute, self.windows.get(key)) else {
            return Ok(());
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let window = match *slot {
            Some(w) if now.saturating_duration_since(w.started) < WINDOW => slot.insert(w),
            _ => slot.insert(Window {
                started: now,
                admitted: 0,
            }),
        };
        if window.admitted < limit {
            window.admitted += 1;
            return Ok(());
        }
        let left = WINDOW.saturating_sub(now.saturating_duration_since(window.started));
        let seconds = left.as_millis().div_ceil(1000);
        Err(u32::try_from(seconds).unwrap_or(u32::MAX).max(1))
    }

    /// Forgets every window, so every key starts afresh.
    pub(crate) fn reset(&self) {
        for slot in &self.windows {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_per_key() {
        let limiter = RateLimiter::new(Some(2), 2);
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(0, t0), Ok(()));
        assert_eq!(limiter.check_at(0, t0), Ok(()));
        assert_eq!(limiter.check_at(0, t0), Err(60));
        // Other keys have their own window.
        assert_eq!(limiter.check_at(1, t0), Ok(()));
        assert_eq!(
            limiter.check_at(0, t0 + Duration::from_millis(59_500)),
            Err(1)
        );
        assert_eq!(limiter.check_at(0, t0 + Duration::from_secs(45)), Err(15));
        assert_eq!(limiter.check_at(0, t0 + WINDOW), Ok(()));
    }

    #[test]
    fn no_limit_and_zero_limit() {
        let none = RateLimiter::new(None, 1);
        for _ in 0..1000 {
            assert_eq!(none.check(0), Ok(()));
        }
        let zero = RateLimiter::new(Some(0), 1);
        assert!(zero.check(0).is_err());
        // An index outside the key table is never limited.
        assert_eq!(zero.check(5), Ok(()));
    }

    #[test]
    fn reset_reopens_windows() {
        let limiter = RateLimiter::new(Some(1), 1);
        assert_eq!(limiter.check(0), Ok(()));
        assert!(limiter.check(0).is_err());
        limiter.reset();
        assert_eq!(limiter.check(0), Ok(()));
    }
}
