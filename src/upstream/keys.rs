//! The real upstream keys and which account each one serves.
//!
//! Routing picks the most specific pattern that matches an account: an exact
//! id beats a longer `prefix*`, which beats a shorter one, which beats `*`.
//! Ties go to the key listed first. Each key carries its own pace (the
//! upstream plan's rate, a GCRA limiter on viewgate's clock) and its own
//! circuit breakers (one for the key, one per failing account).

use std::sync::Arc;

use http::HeaderValue;

use super::key_breakers::{BreakerSettings, KeyBreakers};
use crate::clock::Clock;
use crate::config::{AccountPattern, UpstreamKeyConfig};
use crate::ratelimit::{Limiter, RedisGcra};

/// One upstream key, ready to put on a request.
#[derive(Debug)]
pub(crate) struct UpstreamKey {
    /// Its name, for logs and metrics.
    pub name: String,
    /// The `x-api-key` header value, marked sensitive so it never prints.
    pub header: HeaderValue,
    /// The upstream plan's pace for this key, if configured (global: shared
    /// by all replicas through Redis).
    pub pace: Option<Limiter>,
    /// Fail calls fast while the upstream keeps failing for this key, or
    /// for one of its accounts.
    pub breakers: KeyBreakers,
    accounts: Vec<AccountPattern>,
}

impl UpstreamKey {
    /// Whether this key could own an account some of `grants` match.
    pub(crate) fn may_own_any_of(&self, grants: &[AccountPattern]) -> bool {
        self.accounts
            .iter()
            .any(|own| grants.iter().any(|grant| own.overlaps(grant)))
    }
}

/// All upstream keys.
#[derive(Debug, Default)]
pub(crate) struct KeyPool {
    keys: Vec<UpstreamKey>,
}

impl KeyPool {
    /// Builds the pool; a key that is not a valid header value is an error naming the key.
    pub(crate) fn new(
        configs: &[UpstreamKeyConfig],
        clock: &Clock,
        breaker: BreakerSettings,
        redis: Option<&Arc<RedisGcra>>,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        for c in configs {
            let mut header = HeaderValue::from_str(c.secret.expose()).map_err(|_| {
                format!(
                    "upstream key {:?} contains characters not allowed in a header",
                    c.name
                )
            })?;
            header.set_sensitive(true);
            keys.push(UpstreamKey {
                name: c.name.clone(),
                header,
                pace: c.rate_limit.map(|rl| {
                    let key = || format!("vg:{{k:{}}}:pace", c.name);
                    Limiter::for_limit(&rl, redis, key, clock)
                }),
                breakers: KeyBreakers::new(breaker, clock.clone()),
                accounts: c.accounts.clone(),
            });
        }
        Ok(Self { keys })
    }

    /// The key that owns `account_id`, if any; for `""` (an account being
    /// connected, not known yet), the key that takes new accounts: the first
    /// one owning `*`, else the first one.
    pub(crate) fn route(&self, account_id: &str) -> Option<&UpstreamKey> {
        if account_id.is_empty() {
            return self
                .keys
                .iter()
                .find(|k| k.accounts.contains(&AccountPattern::Any))
                .or(self.keys.first());
        }
        let mut best: Option<(usize, &UpstreamKey)> = None;
        for key in &self.keys {
            for pattern in &key.accounts {
                if pattern.matches(account_id) {
                    let s = pattern.specificity();
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, key));
                    }
                }
            }
        }
        best.map(|(_, k)| k)
    }

    /// Every key, in config order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &UpstreamKey> {
        self.keys.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Secret;
    use std::time::Duration;

    const BREAKER: BreakerSettings = BreakerSettings {
        failures: 5,
        open_for: Duration::from_secs(30),
        accounts: 3,
        window: Duration::from_secs(60),
    };

    fn key(name: &str, accounts: Vec<AccountPattern>) -> UpstreamKeyConfig {
        UpstreamKeyConfig {
            name: name.into(),
            secret: Secret::new(format!("secret-{name}")),
            accounts,
            rate_limit: None,
        }
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        use AccountPattern::*;
        let pool = KeyPool::new(
            &[
                key("fallback", vec![Any]),
                key("team", vec![Prefix("team-".into())]),
                key("team-eu", vec![Prefix("team-eu-".into())]),
                key("vip", vec![Exact("team-eu-1".into())]),
            ],
            &Clock::real(),
            BREAKER,
            None,
        )
        .unwrap();
        let name = |a: &str| pool.route(a).map(|k| k.name.as_str());
        assert_eq!(name("acc-9"), Some("fallback"));
        assert_eq!(name("team-us-1"), Some("team"));
        assert_eq!(name("team-eu-2"), Some("team-eu"));
        assert_eq!(name("team-eu-1"), Some("vip"));
    }

    #[test]
    fn unowned_accounts_have_no_key_and_keys_never_print() {
        let pool = KeyPool::new(
            &[key("only", vec![AccountPattern::Exact("a".into())])],
            &Clock::real(),
            BREAKER,
            None,
        )
        .unwrap();
        assert!(pool.route("b").is_none());
        let shown = format!("{pool:?}");
        assert!(!shown.contains("secret-only"), "{shown}");
    }
}
