//! Spend history: what each tenant was charged, and what the cache and
//! coalescing saved it, minute by minute over the last day; and the burn-rate
//! forecast built on it.
//!
//! Every ledger records an event in the minute bucket of the moment it
//! happens (on the ledger's clock): a settle adds what the upstream charged,
//! a cache hit what it saved, a coalesced answer what it saved. Buckets older
//! than [`KEEP_MINUTES`] are dropped. `usage` sums them into [`Recent`].
//!
//! The forecast ([`forecast`]) divides what is left of the budget by the
//! recent burn rate: the spend of the last hour per second when there was
//! any, else the spend of the last day per second.

use crate::ledger::Saving;
use foldhash::HashMap;
use std::collections::BTreeMap;

use jiff::Timestamp;

/// How long buckets are kept: a day, and an hour to spare.
pub const KEEP_MINUTES: i64 = 25 * 60;

/// Minutes summed as "the last hour" (the current minute and the 59 before).
const HOUR_MINUTES: i64 = 60;

/// Minutes summed as "the last day".
pub const DAY_MINUTES: i64 = 24 * 60;

/// One tenant's minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Credits the upstream charged (settles).
    pub charged: u64,
    /// Credits cache hits saved.
    pub saved_cache: u64,
    /// Credits coalesced answers saved.
    pub saved_coalesced: u64,
}

impl Bucket {
    /// Adds `other` to this bucket.
    pub fn add(&mut self, other: Bucket) {
        self.charged = self.charged.saturating_add(other.charged);
        self.saved_cache = self.saved_cache.saturating_add(other.saved_cache);
        self.saved_coalesced = self.saved_coalesced.saturating_add(other.saved_coalesced);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        *self == Bucket::default()
    }

    /// A bucket holding one charge of `credits`.
    pub fn charged(credits: u64) -> Bucket {
        Bucket {
            charged: credits,
            ..Bucket::default()
        }
    }

    /// A bucket holding one cache hit's saving.
    pub fn saved(by: Saving, credits: u64) -> Bucket {
        match by {
            Saving::Cache => Bucket {
                saved_cache: credits,
                ..Bucket::default()
            },
            Saving::Coalescing => Bucket {
                saved_coalesced: credits,
                ..Bucket::default()
            },
        }
    }
}

/// The minute (since the Unix epoch) containing `at`.
pub fn minute_of(at: Timestamp) -> i64 {
    at.as_second().div_euclid(60)
}

/// What a tenant spent and saved recently, as of [`Recent::as_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    /// When these figures were read.
    pub as_of: Timestamp,
    /// Credits charged in the current minute and the 59 before it.
    pub spent_last_hour: u64,
    /// Credits charged in the current minute and the 1439 before it.
    pub spent_last_day: u64,
    /// Credits cache hits saved over the last day.
    pub saved_cache_last_day: u64,
    /// Credits coalesced answers saved over the last day.
    pub saved_coalesced_last_day: u64,
    /// Credits charged in each of the last 24 hours, oldest first; the last
    /// entry is the 60 minutes ending with the current one.
    pub hourly: Vec<u64>,
}

impl Recent {
    /// Nothing recorded, as of `as_of`.
    pub fn empty(as_of: Timestamp) -> Recent {
        Recent {
            as_of,
            spent_last_hour: 0,
            spent_last_day: 0,
            saved_cache_last_day: 0,
            saved_coalesced_last_day: 0,
            hourly: vec![0; 24],
        }
    }

    /// Sums `buckets` (minute, bucket) as seen at `now`; minutes outside the
    /// last day, or in the future, are left out.
    pub fn from_buckets(
        now: Timestamp,
        buckets: impl IntoIterator<Item = (i64, Bucket)>,
    ) -> Recent {
        let mut recent = Recent::empty(now);
        let current = minute_of(now);
        for (minute, bucket) in buckets {
            let age = current - minute;
            if !(0..DAY_MINUTES).contains(&age) {
                continue;
            }
            if age < HOUR_MINUTES {
                recent.spent_last_hour = recent.spent_last_hour.saturating_add(bucket.charged);
            }
            recent.spent_last_day = recent.spent_last_day.saturating_add(bucket.charged);
            recent.saved_cache_last_day = recent
                .saved_cache_last_day
                .saturating_add(bucket.saved_cache);
            recent.saved_coalesced_last_day = recent
                .saved_coalesced_last_day
                .saturating_add(bucket.saved_coalesced);
            // age 0..59 is the last entry (23), 1380..1439 the first (0).
            let hour = 23 - usize::try_from(age / HOUR_MINUTES).unwrap_or(23);
            recent.hourly[hour] = recent.hourly[hour].saturating_add(bucket.charged);
        }
        recent
    }
}

/// Every tenant's minute buckets, in memory (the memory ledger's record, and
/// the SQLite ledger's working copy).
#[derive(Debug, Default, Clone)]
pub struct History {
    tenants: HashMap<String, BTreeMap<i64, Bucket>>,
}

impl History {
    /// Adds `event` to `tenant`'s bucket of `minute`; returns the bucket's new value.
    pub fn add(&mut self, tenant: &str, minute: i64, event: Bucket) -> Bucket {
        let buckets = match self.tenants.get_mut(tenant) {
            Some(buckets) => buckets,
            None => self.tenants.entry(tenant.to_string()).or_default(),
        };
        let bucket = buckets.entry(minute).or_default();
        bucket.add(event);
        // Once a minute per tenant at most: the oldest entries go.
        if buckets.len() > usize::try_from(KEEP_MINUTES).unwrap_or(usize::MAX) {
            let oldest = minute - KEEP_MINUTES;
            buckets.retain(|&m, _| m > oldest);
        }
        buckets.get(&minute).copied().unwrap_or_default()
    }

    /// Takes `event` back off `tenant`'s bucket of `minute` (a recorded
    /// charge whose commit failed).
    pub fn take_back(&mut self, tenant: &str, minute: i64, event: Bucket) {
        if let Some(bucket) = self
            .tenants
            .get_mut(tenant)
            .and_then(|b| b.get_mut(&minute))
        {
            bucket.charged = bucket.charged.saturating_sub(event.charged);
            bucket.saved_cache = bucket.saved_cache.saturating_sub(event.saved_cache);
            bucket.saved_coalesced = bucket.saved_coalesced.saturating_sub(event.saved_coalesced);
        }
    }

    /// The bucket of `tenant` in `minute`.
    pub fn get(&self, tenant: &str, minute: i64) -> Bucket {
        self.tenants
            .get(tenant)
            .and_then(|b| b.get(&minute))
            .copied()
            .unwrap_or_default()
    }

    /// Drops buckets older than [`KEEP_MINUTES`] before `now`.
    pub fn prune(&mut self, now: Timestamp) {
        let oldest = minute_of(now) - KEEP_MINUTES;
        self.tenants.retain(|_, buckets| {
            buckets.retain(|&m, _| m > oldest);
            !buckets.is_empty()
        });
    }

    /// `tenant`'s recent figures as of `now`.
    pub fn recent(&self, tenant: &str, now: Timestamp) -> Recent {
        let from = minute_of(now) - DAY_MINUTES;
        match self.tenants.get(tenant) {
            Some(buckets) => {
                Recent::from_buckets(now, buckets.range(from..).map(|(&m, &b)| (m, b)))
            }
            None => Recent::empty(now),
        }
    }
}

/// How the forecast's rate was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForecastBasis {
    /// The spend of the last hour.
    LastHour,
    /// The spend of the last day (nothing was spent in the last hour).
    LastDay,
}

impl ForecastBasis {
    /// `last_hour` or `last_day`, as reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForecastBasis::LastHour => "last_hour",
            ForecastBasis::LastDay => "last_day",
        }
    }
}

/// What the forecast says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlook {
    /// No budget: nothing to run out of.
    Unlimited,
    /// Nothing charged over the last day: no rate to project.
    NoSpend,
    /// Nothing is left now.
    Spent,
    /// At the recent rate, the budget runs out at `runs_out_at`.
    RunsOut,
    /// At the recent rate, the budget lasts past the end of its period.
    OutlastsPeriod,
}

impl Outlook {
    /// The word reports use: `unlimited`, `no_spend`, `spent`, `runs_out`, `outlasts_period`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outlook::Unlimited => "unlimited",
            Outlook::NoSpend => "no_spend",
            Outlook::Spent => "spent",
            Outlook::RunsOut => "runs_out",
            Outlook::OutlastsPeriod => "outlasts_period",
        }
    }
}

/// When a budget runs out at its recent burn rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forecast {
    /// What the forecast says.
    pub outlook: Outlook,
    /// When the budget runs out: set for [`Outlook::RunsOut`] (and
    /// [`Outlook::Spent`]: now), else `None`.
    pub runs_out_at: Option<Timestamp>,
    /// The rate used, when there was one.
    pub basis: Option<ForecastBasis>,
}

/// Forecasts when `remaining` credits (`None`: unlimited) run out at the
/// recent rate, as of `recent.as_of`, for a period ending at `period_end`
/// (`None`: never).
///
/// rate = `spent_last_hour` / 3600 s if that is not 0, else
/// `spent_last_day` / 86400 s; runs out at now + remaining / rate, rounded
/// up to the whole second. If that is at or after the period's end, the
/// budget outlasts the period (it is renewed first).
pub fn forecast(
    remaining: Option<u64>,
    recent: &Recent,
    period_end: Option<Timestamp>,
) -> Forecast {
    let now = recent.as_of;
    let Some(remaining) = remaining else {
        return Forecast {
            outlook: Outlook::Unlimited,
            runs_out_at: None,
            basis: None,
        };
    };
    let (spent, window_s, basis) = if recent.spent_last_hour > 0 {
        (recent.spent_last_hour, 3600, ForecastBasis::LastHour)
    } else if recent.spent_last_day > 0 {
        (recent.spent_last_day, 86_400, ForecastBasis::LastDay)
    } else if remaining == 0 {
        return Forecast {
            outlook: Outlook::Spent,
            runs_out_at: Some(now),
            basis: None,
        };
    } else {
        return Forecast {
            outlook: Outlook::NoSpend,
            runs_out_at: None,
            basis: None,
        };
    };
    if remaining == 0 {
        return Forecast {
            outlook: Outlook::Spent,
            runs_out_at: Some(now),
            basis: Some(basis),
        };
    }
    // remaining / (spent / window) seconds, in integers: exact, rounded up.
    let seconds = (u128::from(remaining) * window_s).div_ceil(u128::from(spent));
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|s| now.checked_add(jiff::SignedDuration::from_secs(s)).ok());
    match (at, period_end) {
        (Some(at), Some(end)) if at < end => Forecast {
            outlook: Outlook::RunsOut,
            runs_out_at: Some(at),
            basis: Some(basis),
        },
        (Some(at), None) => Forecast {
            outlook: Outlook::RunsOut,
            runs_out_at: Some(at),
            basis: Some(basis),
        },
        // Past the period's end, or past the end of time.
        _ => Forecast {
            outlook: Outlook::OutlastsPeriod,
            runs_out_at: None,
            basis: Some(basis),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The hand-computed case of the README: a 1000-credit day budget, 340
    /// credits spent at 02:00 and 30 each at 11:10 and 11:40.
    fn history() -> History {
        let mut history = History::default();
        for (when, credits) in [
            ("2026-11-27T02:00:30Z", 340),
            ("2026-11-27T11:10:00Z", 30),
            ("2026-11-27T11:40:59Z", 30),
        ] {
            history.add("crm", minute_of(at(when)), Bucket::charged(credits));
        }
        history.add(
            "crm",
            minute_of(at("2026-11-27T11:40:00Z")),
            Bucket::saved(Saving::Cache, 7),
        );
        history.add(
            "crm",
            minute_of(at("2026-11-27T11:41:00Z")),
            Bucket::saved(Saving::Coalescing, 2),
        );
        history
    }

    #[test]
    fn the_last_hour_and_day_are_summed_from_minutes() {
        let recent = history().recent("crm", at("2026-11-27T12:00:00Z"));
        assert_eq!(recent.spent_last_hour, 60);
        assert_eq!(recent.spent_last_day, 400);
        assert_eq!(recent.saved_cache_last_day, 7);
        assert_eq!(recent.saved_coalesced_last_day, 2);
        assert_eq!(recent.hourly.len(), 24);
        // 12:00 is minute 0 of the last hour; 11:10 and 11:40 are in it, and
        // 02:00 is 10 hours back: entry 23 - 10.
        assert_eq!(recent.hourly[23], 60);
        assert_eq!(recent.hourly[13], 340);
        assert_eq!(recent.hourly.iter().sum::<u64>(), 400);
        assert_eq!(
            history()
                .recent("ops", at("2026-11-27T12:00:00Z"))
                .spent_last_day,
            0
        );
    }

    #[test]
    fn forecast_divides_what_is_left_by_the_last_hours_rate() {
        // 600 left at 60 credits an hour: 10 hours, before midnight.
        let recent = history().recent("crm", at("2026-11-27T12:00:00Z"));
        let end = Some(at("2026-11-28T00:00:00Z"));
        let f = forecast(Some(600), &recent, end);
        assert_eq!(f.outlook, Outlook::RunsOut);
        assert_eq!(f.basis, Some(ForecastBasis::LastHour));
        assert_eq!(f.runs_out_at, Some(at("2026-11-27T22:00:00Z")));
        // 601 left: 601 * 3600 / 60 = 36060 s, 10 h 1 min.
        let f = forecast(Some(601), &recent, end);
        assert_eq!(f.runs_out_at, Some(at("2026-11-27T22:01:00Z")));
        // 1 credit at 7 an hour: 514.28… s, rounded up to 515 s.
        let mut slow = Recent::empty(at("2026-11-27T12:00:00Z"));
        slow.spent_last_hour = 7;
        slow.spent_last_day = 7;
        assert_eq!(
            forecast(Some(1), &slow, None).runs_out_at,
            Some(at("2026-11-27T12:08:35Z"))
        );
    }

    #[test]
    fn forecast_falls_back_to_the_last_days_rate() {
        // At 13:30 nothing was charged for more than an hour (11:40 is 110
        // minutes back): 400 credits a day, 600 left is 1.5 days.
        let recent = history().recent("crm", at("2026-11-27T13:30:00Z"));
        assert_eq!(recent.spent_last_hour, 0);
        let f = forecast(Some(600), &recent, None);
        assert_eq!(f.basis, Some(ForecastBasis::LastDay));
        assert_eq!(f.runs_out_at, Some(at("2026-11-29T01:30:00Z")));
        // A day budget renews at midnight first.
        let f = forecast(Some(600), &recent, Some(at("2026-11-28T00:00:00Z")));
        assert_eq!(f.outlook, Outlook::OutlastsPeriod);
        assert_eq!(
            (f.runs_out_at, f.basis),
            (None, Some(ForecastBasis::LastDay))
        );
    }

    #[test]
    fn forecast_without_a_budget_or_a_rate() {
        let quiet = Recent::empty(at("2026-11-27T12:00:00Z"));
        assert_eq!(forecast(None, &quiet, None).outlook, Outlook::Unlimited);
        let f = forecast(Some(5), &quiet, None);
        assert_eq!(
            (f.outlook, f.runs_out_at, f.basis),
            (Outlook::NoSpend, None, None)
        );
        let f = forecast(Some(0), &quiet, None);
        assert_eq!(f.outlook, Outlook::Spent);
        assert_eq!(f.runs_out_at, Some(at("2026-11-27T12:00:00Z")));
    }

    #[test]
    fn old_buckets_are_pruned() {
        let mut history = history();
        let later = at("2026-11-28T03:30:00Z");
        history.prune(later);
        // 02:00 the day before is 25.5 hours back: gone; 11:10 stays.
        assert_eq!(
            history.get("crm", minute_of(at("2026-11-27T02:00:30Z"))),
            Bucket::default()
        );
        assert_eq!(
            history
                .get("crm", minute_of(at("2026-11-27T11:10:00Z")))
                .charged,
            30
        );
        // And the day's sums leave out what is older than 24 hours.
        assert_eq!(history.recent("crm", later).spent_last_day, 30 + 30);
    }
}
