//! Scalar values shared by the sections: addresses, durations, counts,
//! hashes, account patterns, rate limits and budgets. Each helper reports its
//! own problem at the value's line and still returns something usable, so
//! validation goes on and finds every other problem in the same pass.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::Problems;
use crate::config::raw::{RawBudget, RawRateLimit};
use crate::config::{AccountPattern, Budget, Period, RateLimit, Scope, valid_account_id};
use crate::keys::KeyHash;

pub(super) fn addr(
    p: &mut Problems,
    v: Option<&Spanned<String>>,
    key: &str,
    default: &str,
) -> SocketAddr {
    let text = v.map_or(default, |v| v.value.as_str());
    text.parse().unwrap_or_else(|_| {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, format!("{text:?} is not an IP:port address"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

pub(super) fn millis(
    p: &mut Problems,
    v: Option<&Spanned<u64>>,
    key: &str,
    default: u64,
) -> Duration {
    let ms = v.map_or(default, |v| v.value);
    if ms == 0 || ms > 3_600_000 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, "must be between 1 and 3600000 milliseconds");
    }
    Duration::from_millis(ms)
}

pub(super) fn seconds(
    p: &mut Problems,
    v: Option<&Spanned<u64>>,
    key: &str,
    default: u64,
    zero_ok: bool,
) -> Duration {
    let s = v.map_or(default, |v| v.value);
    if (!zero_ok && s == 0) || s > 366 * 24 * 3600 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        let low = if zero_ok { 0 } else { 1 };
        p.at(
            &loc,
            key,
            format!("must be between {low} and 31622400 seconds"),
        );
    }
    Duration::from_secs(s)
}

pub(super) fn count(p: &mut Problems, v: Option<&Spanned<u64>>, key: &str, default: u64) -> usize {
    let n = v.map_or(default, |v| v.value);
    if n == 0 || n > 1_000_000 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, "must be between 1 and 1000000");
    }
    n as usize
}

pub(super) fn hash(p: &mut Problems, v: &Spanned<String>, key: &str) -> Option<KeyHash> {
    let h = KeyHash::from_hex(&v.value);
    if h.is_none() {
        p.at(
            &v.referenced,
            key,
            "must be 64 hex digits (the sha256 of the key; see `viewgate hash-key`)",
        );
    }
    h
}

pub(super) fn patterns(
    p: &mut Problems,
    list: &Spanned<Vec<String>>,
    key: &str,
) -> Vec<AccountPattern> {
    let mut out = Vec::new();
    for a in &list.value {
        let pattern = if a == "*" {
            AccountPattern::Any
        } else if let Some(prefix) = a.strip_suffix('*') {
            AccountPattern::Prefix(prefix.to_string())
        } else {
            AccountPattern::Exact(a.clone())
        };
        let body = match &pattern {
            AccountPattern::Any => "x",
            AccountPattern::Prefix(s) | AccountPattern::Exact(s) => s.as_str(),
        };
        if !valid_account_id(body) || body.contains('*') {
            p.at(
                &list.referenced,
                key,
                format!("{a:?} is not an account id (1-128 printable ASCII, no spaces), a prefix ending in *, or *"),
            );
        }
        out.push(pattern);
    }
    out
}

pub(super) fn rate_limit(
    p: &mut Problems,
    r: &RawRateLimit,
    key: &str,
    owner: &Location,
) -> Option<RateLimit> {
    let given: Vec<(&Spanned<u32>, Duration)> = [
        (r.per_second.as_ref(), Duration::from_secs(1)),
        (r.per_minute.as_ref(), Duration::from_secs(60)),
        (r.per_hour.as_ref(), Duration::from_secs(3600)),
    ]
    .into_iter()
    .filter_map(|(v, d)| v.map(|v| (v, d)))
    .collect();
    if given.len() != 1 {
        let loc = given.first().map_or(*owner, |(v, _)| v.referenced);
        p.at(
            &loc,
            key,
            "needs exactly one of per_second, per_minute or per_hour",
        );
        return None;
    }
    let (count, period) = given[0];
    let Some(count_nz) = NonZeroU32::new(count.value) else {
        p.at(&count.referenced, key, "the rate must be at least 1");
        return None;
    };
    let burst = match &r.burst {
        None => count_nz,
        Some(b) => match NonZeroU32::new(b.value) {
            Some(b) => b,
            None => {
                p.at(&b.referenced, format!("{key}.burst"), "must be at least 1");
                return None;
            }
        },
    };
    let scope = match &r.scope {
        None => None,
        Some(s) => match s.value.as_str() {
            "local" => Some(Scope::Local),
            "global" => Some(Scope::Global),
            other => {
                p.at(
                    &s.referenced,
                    format!("{key}.scope"),
                    format!("unknown scope {other:?}; use local or global"),
                );
                return None;
            }
        },
    };
    Some(RateLimit {
        scope,
        count: count_nz,
        period,
        burst,
    })
}

pub(super) fn budget(p: &mut Problems, b: &RawBudget, key: &str) -> Option<Budget> {
    let period = match b.period.value.as_str() {
        "day" => Period::Day,
        "week" => Period::Week,
        "month" => Period::Month,
        "total" => Period::Total,
        other => {
            p.at(
                &b.period.referenced,
                format!("{key}.period"),
                format!("unknown period {other:?}; use day, week, month or total"),
            );
            return None;
        }
    };
    if b.credits.value > i64::MAX as u64 {
        p.at(
            &b.credits.referenced,
            format!("{key}.credits"),
            "is too large",
        );
        return None;
    }
    Some(Budget {
        credits: b.credits.value,
        period,
    })
}
