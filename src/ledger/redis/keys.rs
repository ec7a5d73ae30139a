//! Where the Redis ledger keeps things: key names and how long they live.
//!
//! Every key of a tenant starts with `vg:{t:<tenant>}:`; the hash tag keeps
//! a tenant in one Cluster slot, so each script touches one slot. The layout
//! is in the notes of the parent module. Period keys expire 35 days after
//! their period ends, counted on viewgate's clock, not Redis's.

use jiff::civil::Time;
use jiff::tz::Offset;
use jiff::{SignedDuration, Span, Timestamp};

use crate::config::Period;

/// How long a period's keys outlive the period, for reports on past periods.
const KEEP_AFTER_PERIOD: SignedDuration = SignedDuration::from_hours(35 * 24);

/// The moment the keys of `period` containing `now` expire: 35 days after the
/// period ends. `None` for `total`, which never expires.
pub(super) fn expiry(period: Period, now: Timestamp) -> Option<Timestamp> {
    let date = Offset::UTC.to_datetime(now).date();
    let end = match period {
        Period::Day => date.tomorrow().ok()?,
        Period::Week => {
            let days_left = 7 - i64::from(date.weekday().to_monday_zero_offset());
            date.checked_add(Span::new().days(days_left)).ok()?
        }
        Period::Month => date.last_of_month().tomorrow().ok()?,
        Period::Total => return None,
    };
    let end = Offset::UTC
        .to_timestamp(end.to_datetime(Time::midnight()))
        .ok()?;
    end.checked_add(KEEP_AFTER_PERIOD).ok()
}

/// Milliseconds from `now` until `expires_at` (at least 1), or 0 for never.
/// Relative, so the keys' lifetime follows viewgate's clock, not Redis's.
pub(super) fn ttl_ms(expires_at: Option<Timestamp>, now: Timestamp) -> u64 {
    expires_at.map_or(0, |at| {
        u64::try_from(at.as_millisecond().saturating_sub(now.as_millisecond()))
            .unwrap_or(0)
            .max(1)
    })
}

pub(super) fn tenant_prefix(tenant: &str) -> String {
    format!("vg:{{t:{tenant}}}:")
}

pub(super) fn period_hash(tenant: &str, period: &str) -> String {
    format!("{}p:{period}", tenant_prefix(tenant))
}

pub(super) fn reservation_hash(tenant: &str, id: u64) -> String {
    format!("{}r:{}", tenant_prefix(tenant), id_hex(id))
}

pub(super) fn open_set(tenant: &str) -> String {
    format!("{}open", tenant_prefix(tenant))
}

pub(super) fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// The tenant named in a key prefix `vg:{t:<tenant>}:`.
pub(super) fn tenant_of(prefix: &str) -> &str {
    prefix
        .strip_prefix("vg:{t:")
        .and_then(|rest| rest.strip_suffix("}:"))
        .unwrap_or(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        assert_eq!(period_hash("crm", "2026-11-27"), "vg:{t:crm}:p:2026-11-27");
        assert_eq!(
            reservation_hash("crm", 255),
            "vg:{t:crm}:r:00000000000000ff"
        );
        assert_eq!(open_set("crm"), "vg:{t:crm}:open");
        assert_eq!(tenant_of("vg:{t:crm}:"), "crm");
    }

    #[test]
    fn period_keys_expire_35_days_after_the_period_ends() {
        let now = at("2026-11-27T10:00:00Z");
        let day = SignedDuration::from_hours(24);
        let after = |end: &str| at(end).checked_add(KEEP_AFTER_PERIOD).unwrap();
        assert_eq!(
            expiry(Period::Day, now),
            Some(after("2026-11-28T00:00:00Z"))
        );
        // Friday: week 48 ends when Monday 2026-11-30 starts.
        assert_eq!(
            expiry(Period::Week, now),
            Some(after("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            expiry(Period::Week, at("2026-11-30T00:00:00Z")),
            Some(after("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            expiry(Period::Month, now),
            Some(after("2026-12-01T00:00:00Z"))
        );
        assert_eq!(expiry(Period::Total, now), None);
        let ttl = ttl_ms(expiry(Period::Day, now), now);
        let expected = (day * 35 + SignedDuration::from_hours(14)).as_millis();
        assert_eq!(i128::from(ttl), expected);
        assert_eq!(ttl_ms(None, now), 0);
    }
}
