//! The one clock every time-dependent part of viewgate reads.
//!
//! Rate limiters, cache freshness, budget periods and response timestamps all
//! ask this clock, never `Instant::now()` directly, so tests can swap in a
//! [`Clock::fake`] and cross a rate-limit window, a TTL or a period boundary
//! without sleeping. `.clippy.toml` forbids reading the system clocks
//! anywhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;

/// A monotonic clock paired with a UTC wall clock; real, or fake for tests.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    Real,
    Fake {
        base_instant: Instant,
        base_wall: Timestamp,
        offset_nanos: AtomicU64,
    },
}

impl Default for Clock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock {
    /// The system clock.
    pub fn real() -> Self {
        Self {
            inner: Arc::new(Inner::Real),
        }
    }

    /// A clock frozen at `wall` that only moves when [`Clock::advance`] is called.
    #[allow(
        clippy::disallowed_methods,
        reason = "a fake clock's instants need a real one to start from; only the offset moves"
    )]
    pub fn fake(wall: Timestamp) -> Self {
        Self {
            inner: Arc::new(Inner::Fake {
                base_instant: Instant::now(),
                base_wall: wall,
                offset_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves a fake clock forward. Does nothing on the real clock.
    pub fn advance(&self, by: Duration) {
        if let Inner::Fake { offset_nanos, .. } = &*self.inner {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            offset_nanos.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    /// Monotonic now.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the system's monotonic clock"
    )]
    pub fn now(&self) -> Instant {
        match &*self.inner {
            Inner::Real => Instant::now(),
            Inner::Fake {
                base_instant,
                offset_nanos,
                ..
            } => *base_instant + Duration::from_nanos(offset_nanos.load(Ordering::SeqCst)),
        }
    }

    /// Wall-clock now, in UTC.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the system's wall clock"
    )]
    pub fn wall(&self) -> Timestamp {
        match &*self.inner {
            Inner::Real => Timestamp::now(),
            Inner::Fake {
                base_wall,
                offset_nanos,
                ..
            } => {
                let offset = Duration::from_nanos(offset_nanos.load(Ordering::SeqCst));
                base_wall.checked_add(offset).unwrap_or(*base_wall)
            }
        }
    }
}

impl Clock {
    /// The wall-clock time at `at`, an instant of this clock: what
    /// [`Clock::wall`] said, says or will say then. A request that has read
    /// [`Clock::now`] gets its timestamps from that one reading instead of
    /// reading the system clock again for each.
    pub fn wall_at(&self, at: Instant) -> Timestamp {
        match &*self.inner {
            Inner::Real => real_wall_at(at),
            Inner::Fake {
                base_instant,
                base_wall,
                ..
            } => {
                let offset = at.saturating_duration_since(*base_instant);
                base_wall.checked_add(offset).unwrap_or(*base_wall)
            }
        }
    }
}

/// How long one thread's pairing of the monotonic and wall clocks is used
/// before it is read again: a wall-clock step (NTP, an operator) shows in
/// converted times within this, and the two clocks' drift (parts per
/// million) stays far under the second that timestamps are written in.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

/// The system's wall-clock time at the real instant `at`, converted through
/// this thread's last reading of both clocks (taken again when `at` is past
/// it by [`ANCHOR_FOR`]), so a conversion costs no clock read.
#[allow(
    clippy::disallowed_methods,
    reason = "the real clock's pairing of its monotonic and wall readings"
)]
pub(crate) fn real_wall_at(at: Instant) -> Timestamp {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(Instant, Timestamp)>> =
            const { std::cell::Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        let (instant, wall) = match anchor.get() {
            Some((instant, wall)) if at.saturating_duration_since(instant) < ANCHOR_FOR => {
                (instant, wall)
            }
            _ => {
                let fresh = (Instant::now(), Timestamp::now());
                anchor.set(Some(fresh));
                fresh
            }
        };
        if at >= instant {
            wall.checked_add(at - instant).unwrap_or(wall)
        } else {
            wall.checked_sub(instant - at).unwrap_or(wall)
        }
    })
}

impl governor::clock::Clock for Clock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        Clock::now(self)
    }
}

/// Formats a timestamp as design.md wants it: RFC 3339, UTC, whole seconds, `Z`.
pub fn rfc3339(ts: Timestamp) -> String {
    let bytes = rfc3339_bytes(ts);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// [`rfc3339`] as 20 ASCII bytes, without allocating: it is written into
/// every response. Years are 0000 to 9999 (jiff's range is wider; the ones
/// outside never occur on a real clock).
pub fn rfc3339_bytes(ts: Timestamp) -> [u8; 20] {
    // A page's metadata writes the time now and the time it was fetched:
    // each thread keeps the last two seconds it formatted.
    thread_local! {
        static RECENT: std::cell::Cell<[(i64, [u8; 20]); 2]> =
            const { std::cell::Cell::new([(i64::MIN, [0; 20]); 2]) };
    }
    // Whole seconds only name one text from 1970 on (before, a fraction
    // rounds the other way); earlier times are formatted each time.
    if ts.subsec_nanosecond() < 0 || ts.as_second() < 0 {
        return format_rfc3339(ts);
    }
    let second = ts.as_second();
    RECENT.with(|recent| {
        let mut seen = recent.get();
        if let Some((_, text)) = seen.iter().find(|(s, _)| *s == second) {
            return *text;
        }
        let text = format_rfc3339(ts);
        seen = [(second, text), seen[0]];
        recent.set(seen);
        text
    })
}

/// [`rfc3339_bytes`], formatted.
fn format_rfc3339(ts: Timestamp) -> [u8; 20] {
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, value: i32, digits: usize| {
        let mut v = value.clamp(0, 9999) as u32;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, i32::from(dt.year()), 4);
    put(5, i32::from(dt.month()), 2);
    put(8, i32::from(dt.day()), 2);
    put(11, i32::from(dt.hour()), 2);
    put(14, i32::from(dt.minute()), 2);
    put(17, i32::from(dt.second()), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let start: Timestamp = "2026-04-26T10:35:00Z".parse().unwrap();
        let clock = Clock::fake(start);
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, Duration::from_secs(90));
        assert_eq!(rfc3339(clock.wall()), "2026-04-26T10:36:30Z");
    }

    #[test]
    fn instants_convert_to_the_wall_time_of_their_moment() {
        let start: Timestamp = "2026-04-26T10:35:00Z".parse().unwrap();
        let clock = Clock::fake(start);
        let t0 = clock.now();
        clock.advance(Duration::from_secs(90));
        assert_eq!(rfc3339(clock.wall_at(t0)), "2026-04-26T10:35:00Z");
        assert_eq!(clock.wall_at(clock.now()), clock.wall());

        // The real clock: a conversion agrees with a reading of the wall
        // clock taken around it, to within the time between the readings.
        #[allow(clippy::disallowed_methods)]
        let (before, at, after) = (Timestamp::now(), Instant::now(), Timestamp::now());
        let converted = Clock::real().wall_at(at);
        let slack = jiff::SignedDuration::from_millis(50);
        assert!(converted >= before - slack && converted <= after + slack);
        // An instant a minute earlier converts to a minute earlier, from
        // this thread's pairing, without a new reading.
        if let Some(earlier) = at.checked_sub(Duration::from_secs(60)) {
            let back = Clock::real().wall_at(earlier);
            assert_eq!(converted.duration_since(back).as_secs(), 60);
        }
    }

    #[test]
    fn fast_formatting_agrees_with_jiff() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-02-28T23:59:59Z",
            "2028-02-29T12:34:56Z",
            "9000-01-01T01:02:03Z",
            "1969-12-31T23:59:58.5Z",
        ] {
            let ts: Timestamp = s.parse().unwrap();
            assert_eq!(rfc3339(ts), ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        // Through the thread's two remembered seconds: three times taking
        // turns, each formatted as itself every time.
        let times: Vec<Timestamp> = [
            "2026-11-30T20:00:00Z",
            "2026-11-30T20:00:01.5Z",
            "2025-01-01T00:00:00Z",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for round in 0..4 {
            for (i, ts) in times.iter().enumerate() {
                let ts = times[(i + round) % times.len()].max(*ts);
                assert_eq!(rfc3339(ts), ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
        }
    }

    #[test]
    fn timestamps_drop_fractions() {
        let ts: Timestamp = "2026-04-26T10:35:00.987654Z".parse().unwrap();
        assert_eq!(rfc3339(ts), "2026-04-26T10:35:00Z");
    }
}
