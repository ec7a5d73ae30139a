//! Budget periods as keys: a new period is a new key, so budgets reset with no job running.

use jiff::Timestamp;
use jiff::tz::Offset;

use crate::config::Period;

/// The key of the period containing `now` (UTC): `2026-11-27`, `2026-W48`, `2026-11` or `total`.
pub fn period_key(period: Period, now: Timestamp) -> String {
    // Asked on every cache hit: remember the last answer for the second.
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Period, i64, String)>> = const { std::cell::RefCell::new(None) };
    }
    let second = now.as_second();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((p, s, key)) = &*last
            && *p == period
            && *s == second
        {
            return key.clone();
        }
        let key = compute(period, now);
        *last = Some((period, second, key.clone()));
        key
    })
}

/// When the period containing `now` ends (the next one starts), UTC;
/// `None` for `total`, which never ends.
pub fn period_end(period: Period, now: Timestamp) -> Option<Timestamp> {
    use jiff::ToSpan;
    let date = Offset::UTC.to_datetime(now).date();
    let next = match period {
        Period::Day => date.tomorrow().ok()?,
        Period::Week => {
            let days_left = 7 - i64::from(date.weekday().to_monday_zero_offset());
            date.checked_add(days_left.days()).ok()?
        }
        Period::Month => date.last_of_month().tomorrow().ok()?,
        Period::Total => return None,
    };
    Offset::UTC
        .to_timestamp(next.to_datetime(jiff::civil::Time::midnight()))
        .ok()
}

fn compute(period: Period, now: Timestamp) -> String {
    let date = Offset::UTC.to_datetime(now).date();
    match period {
        Period::Day => format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()),
        Period::Week => {
            let iso = date.iso_week_date();
            format!("{:04}-W{:02}", iso.year(), iso.week())
        }
        Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
        Period::Total => "total".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn periods_follow_utc_calendars() {
        let t = at("2026-11-27T23:59:59Z");
        assert_eq!(period_key(Period::Day, t), "2026-11-27");
        assert_eq!(period_key(Period::Week, t), "2026-W48");
        assert_eq!(period_key(Period::Month, t), "2026-11");
        assert_eq!(period_key(Period::Total, t), "total");
        assert_eq!(
            period_key(Period::Day, at("2026-11-28T00:00:00Z")),
            "2026-11-28"
        );
    }

    #[test]
    fn periods_end_at_the_next_utc_midnight_monday_or_month() {
        let t = at("2026-11-27T10:00:00Z");
        assert_eq!(period_end(Period::Day, t), Some(at("2026-11-28T00:00:00Z")));
        assert_eq!(
            period_end(Period::Week, t),
            Some(at("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            period_end(Period::Week, at("2026-11-30T00:00:00Z")),
            Some(at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            period_end(Period::Month, t),
            Some(at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(period_end(Period::Total, t), None);
    }

    #[test]
    fn iso_weeks_start_on_monday_and_cross_years() {
        // Sunday 2026-11-29 is still week 48; Monday 2026-11-30 starts week 49.
        assert_eq!(
            period_key(Period::Week, at("2026-11-29T12:00:00Z")),
            "2026-W48"
        );
        assert_eq!(
            period_key(Period::Week, at("2026-11-30T00:00:00Z")),
            "2026-W49"
        );
        // 2027-01-01 is a Friday: it belongs to ISO week 53 of 2026.
        assert_eq!(
            period_key(Period::Week, at("2027-01-01T00:00:00Z")),
            "2026-W53"
        );
    }
}
