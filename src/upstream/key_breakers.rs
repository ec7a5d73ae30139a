//! An upstream key's circuit breakers, scoped like the failures they see.
//!
//! The upstream can fail for one LinkedIn account (a V2 error answer to a
//! call naming it) while serving every other account of the same key. A
//! single breaker per key would turn one tenant's broken account into 503s
//! for every tenant, so each attempt's [`Health`] decides which breaker
//! counts it:
//!
//! - **account failures** (a 5xx with a V2 body, or a 2xx/4xx answer that is
//!   not V2, to a call naming an account) count toward *that account's*
//!   breaker: `upstream.breaker.failures` in a row open it for
//!   `upstream.breaker.open_s`, for that account only;
//! - **connection failures** (connect errors, timeouts, resets, a 5xx that
//!   is not V2: the upstream itself, whichever account was asked) count
//!   toward the *key's* breaker: `upstream.breaker.failures` in a row open it;
//! - the key's breaker also opens when account failures come from
//!   `upstream.breaker.accounts` distinct accounts (default 3) within
//!   `upstream.breaker.window_s`, with no healthy answer on the key between
//!   them: then the upstream is failing for everyone, not for one account.
//!
//! A call that names no account (listing a key's accounts, connecting a new
//! one) cannot be pinned on an account: its failures count for the key.
//!
//! The account table only holds accounts that failed recently or whose
//! breaker is open; a healthy answer removes the account, entries idle for
//! `open_s + window_s` are dropped, and it never holds more than
//! [`MAX_ACCOUNT_BREAKERS`] (when full of open breakers, a further failing
//! account is not tracked alone, and counts toward the key-wide rule only).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::breaker::{Circuit, Permit};
use crate::clock::Clock;

/// Most account breakers kept per key.
pub(super) const MAX_ACCOUNT_BREAKERS: usize = 1024;

/// The breaker settings of `upstream.breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Failures in a row that open a breaker (`failures`).
    pub failures: u32,
    /// How long an open breaker refuses calls (`open_s`).
    pub open_for: Duration,
    /// Distinct failing accounts that open the key's breaker (`accounts`).
    pub accounts: u32,
    /// How far back those failures count (`window_s`).
    pub window: Duration,
}

/// What one attempt says about the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// An answer the upstream meant: a success or a V2 4xx (the caller's
    /// mistake, a 429, a refused key): nothing to hold against anyone.
    Healthy,
    /// The exchange itself failed: connect error, timeout, reset, a cut-short
    /// reply, a 5xx that is not V2 (a proxy in front of the upstream).
    ConnectionFailed,
    /// The upstream answered, wrongly, for the account the call names: a
    /// 5xx in the V2 format, or a 2xx/4xx that is not V2.
    AccountFailed,
    /// Nothing was learned about the upstream (the request could not even
    /// be built): as if the call had not been made.
    Inconclusive,
}

/// Which breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole upstream key.
    Key,
    /// One account of the key.
    Account,
}

/// A call refused by an open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The breaker that refused it.
    pub scope: Scope,
    /// When that breaker lets a probe through.
    pub wait: Duration,
}

/// A permitted call, to hand back with its verdict: which breakers it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a permitted call's verdict must be recorded or the call abandoned"]
pub(crate) struct Ticket {
    key_probe: bool,
    account_probe: bool,
}

/// An account's breaker and when it was last asked or told anything.
#[derive(Debug)]
struct AccountCircuit {
    circuit: Circuit,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    key: Circuit,
    /// Accounts with failures since the key's last healthy answer, and when
    /// each last failed (fewer than `accounts` of them: reaching it trips
    /// the key and empties the list).
    failing: Vec<(Box<str>, Instant)>,
    accounts: HashMap<Box<str>, AccountCircuit>,
}

/// One key's breakers.
#[derive(Debug)]
pub(crate) struct KeyBreakers {
    settings: BreakerSettings,
    clock: Clock,
    state: Mutex<State>,
}

impl KeyBreakers {
    /// Closed breakers.
    pub(crate) fn new(settings: BreakerSettings, clock: Clock) -> Self {
        Self {
            settings,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values: a panic elsewhere cannot leave them half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long an account breaker may go unused before it is forgotten.
    fn idle_after(&self) -> Duration {
        self.settings.open_for + self.settings.window
    }

    /// Asks to call the upstream for `account` (`""`: no account).
    pub(crate) fn permit(&self, account: &str) -> Result<Ticket, Refused> {
        let now = self.clock.now();
        let open_for = self.settings.open_for;
        let mut state = self.lock();
        let State { key, accounts, .. } = &mut *state;
        let key_probe = match key.permit(now, open_for) {
            Permit::Allowed => false,
            Permit::Probe => true,
            Permit::Refused(wait) => {
                return Err(Refused {
                    scope: Scope::Key,
                    wait,
                });
            }
        };
        let account_probe = match accounts.get_mut(account) {
            None => false,
            Some(entry) => {
                entry.last_seen = now;
                match entry.circuit.permit(now, open_for) {
                    Permit::Allowed => false,
                    Permit::Probe => true,
                    Permit::Refused(wait) => {
                        // The key's probe is better spent on another account.
                        if key_probe {
                            key.abandon_probe(now);
                        }
                        return Err(Refused {
                            scope: Scope::Account,
                            wait,
                        });
                    }
                }
            }
        };
        Ok(Ticket {
            key_probe,
            account_probe,
        })
    }

    /// A permitted call that never went out (refused by the key's pace).
    pub(crate) fn abandon(&self, ticket: Ticket, account: &str) {
        let now = self.clock.now();
        let mut state = self.lock();
        if ticket.key_probe {
            state.key.abandon_probe(now);
        }
        if ticket.account_probe
            && let Some(entry) = state.accounts.get_mut(account)
        {
            entry.circuit.abandon_probe(now);
        }
    }

    /// Records how a permitted call for `account` went; returns the breaker
    /// this opened, if any.
    pub(crate) fn record(&self, ticket: Ticket, account: &str, health: Health) -> Option<Scope> {
        let now = self.clock.now();
        let BreakerSettings {
            failures,
            open_for,
            accounts: spread,
            window,
        } = self.settings;
        let idle_after = self.idle_after();
        if health == Health::Inconclusive {
            self.abandon(ticket, account);
            return None;
        }
        let mut state = self.lock();
        match health {
            Health::Inconclusive => None,
            Health::Healthy => {
                state.key.succeeded();
                state.failing.clear();
                state.accounts.remove(account);
                None
            }
            // Nothing ties it to an account: the key counts it.
            Health::ConnectionFailed | Health::AccountFailed if account.is_empty() => state
                .key
                .failed(now, failures, open_for)
                .then_some(Scope::Key),
            Health::ConnectionFailed => {
                // Says nothing about the account: its probe is given back.
                if ticket.account_probe
                    && let Some(entry) = state.accounts.get_mut(account)
                {
                    entry.circuit.abandon_probe(now);
                }
                state
                    .key
                    .failed(now, failures, open_for)
                    .then_some(Scope::Key)
            }
            Health::AccountFailed => {
                let opened_account = state
                    .entry(account, now, idle_after)
                    .is_some_and(|entry| entry.circuit.failed(now, failures, open_for));
                state
                    .failing
                    .retain(|(_, at)| now.saturating_duration_since(*at) < window);
                match state.failing.iter_mut().find(|(a, _)| &**a == account) {
                    Some((_, at)) => *at = now,
                    None => state.failing.push((account.into(), now)),
                }
                // Several accounts failing together, or the key's probe
                // failing: the upstream is failing for everyone.
                if state.failing.len() >= spread as usize || ticket.key_probe {
                    state.failing.clear();
                    if state.key.trip(now, open_for) {
                        return Some(Scope::Key);
                    }
                }
                opened_account.then_some(Scope::Account)
            }
        }
    }

    /// Whether the key's breaker is open, and how many of its accounts'
    /// breakers are (idle entries are dropped first).
    pub(crate) fn open_counts(&self) -> (bool, usize) {
        let now = self.clock.now();
        let idle_after = self.idle_after();
        let mut state = self.lock();
        state.forget_idle(now, idle_after);
        let accounts = state
            .accounts
            .values()
            .filter(|e| e.circuit.is_open())
            .count();
        (state.key.is_open(), accounts)
    }
}

impl State {
    /// The breaker of `account`, created if there is room for it.
    fn entry(
        &mut self,
        account: &str,
        now: Instant,
        idle_after: Duration,
    ) -> Option<&mut AccountCircuit> {
        if !self.accounts.contains_key(account) && self.accounts.len() >= MAX_ACCOUNT_BREAKERS {
            self.forget_idle(now, idle_after);
            if self.accounts.len() >= MAX_ACCOUNT_BREAKERS {
                // A closed breaker only counts failures: the least recent goes.
                let oldest = self
                    .accounts
                    .iter()
                    .filter(|(_, e)| !e.circuit.is_open())
                    .min_by_key(|(_, e)| e.last_seen)
                    .map(|(a, _)| a.clone());
                self.accounts.remove(&oldest?);
            }
        }
        let entry = self
            .accounts
            .entry(account.into())
            .or_insert_with(|| AccountCircuit {
                circuit: Circuit::closed(),
                last_seen: now,
            });
        entry.last_seen = now;
        Some(entry)
    }

    fn forget_idle(&mut self, now: Instant, idle_after: Duration) {
        self.accounts.retain(|_, e| {
            !e.circuit.is_pristine() && now.saturating_duration_since(e.last_seen) < idle_after
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(clock: &Clock) -> KeyBreakers {
        KeyBreakers::new(
            BreakerSettings {
                failures: 3,
                open_for: Duration::from_secs(30),
                accounts: 3,
                window: Duration::from_secs(60),
            },
            clock.clone(),
        )
    }

    fn clock() -> Clock {
        Clock::fake("2026-11-27T12:00:00Z".parse().unwrap())
    }

    /// Makes one call for `account` that ends with `health`.
    fn call(b: &KeyBreakers, account: &str, health: Health) -> Result<Option<Scope>, Refused> {
        let ticket = b.permit(account)?;
        Ok(b.record(ticket, account, health))
    }

    #[test]
    fn one_failing_account_opens_its_own_breaker_only() {
        let clock = clock();
        let b = breakers(&clock);
        for _ in 0..2 {
            assert_eq!(call(&b, "evil", Health::AccountFailed), Ok(None));
            // Others succeed between its failures: the key stays healthy.
            assert_eq!(call(&b, "good", Health::Healthy), Ok(None));
        }
        assert_eq!(
            call(&b, "evil", Health::AccountFailed),
            Ok(Some(Scope::Account))
        );
        let refused = b.permit("evil").unwrap_err();
        assert_eq!(refused.scope, Scope::Account);
        assert_eq!(refused.wait, Duration::from_secs(30));
        assert_eq!(call(&b, "good", Health::Healthy), Ok(None));
        assert_eq!(b.open_counts(), (false, 1));
        // After open_s one probe for the account; its success closes it.
        clock.advance(Duration::from_secs(30));
        assert_eq!(call(&b, "evil", Health::Healthy), Ok(None));
        assert_eq!(b.open_counts(), (false, 0));
    }

    #[test]
    fn failures_from_several_accounts_open_the_key() {
        let clock = clock();
        let b = breakers(&clock);
        assert_eq!(call(&b, "a", Health::AccountFailed), Ok(None));
        assert_eq!(call(&b, "a", Health::AccountFailed), Ok(None));
        assert_eq!(call(&b, "b", Health::AccountFailed), Ok(None));
        assert_eq!(
            call(&b, "c", Health::AccountFailed),
            Ok(Some(Scope::Key)),
            "a third distinct account opens the key"
        );
        assert_eq!(b.permit("d").unwrap_err().scope, Scope::Key);
        assert_eq!(b.open_counts(), (true, 0));
        // The probe succeeds: the key closes.
        clock.advance(Duration::from_secs(30));
        assert_eq!(call(&b, "d", Health::Healthy), Ok(None));
        assert_eq!(b.open_counts(), (false, 0));
    }

    #[test]
    fn account_failures_far_apart_or_between_successes_never_open_the_key() {
        let clock = clock();
        let b = breakers(&clock);
        for account in ["a", "b"] {
            assert_eq!(call(&b, account, Health::AccountFailed), Ok(None));
        }
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            call(&b, "c", Health::AccountFailed),
            Ok(None),
            "a, b expired"
        );
        assert_eq!(call(&b, "d", Health::AccountFailed), Ok(None));
        assert_eq!(call(&b, "e", Health::Healthy), Ok(None));
        assert_eq!(call(&b, "f", Health::AccountFailed), Ok(None), "reset");
        assert_eq!(b.open_counts(), (false, 0));
    }

    #[test]
    fn connection_failures_open_the_key_whatever_the_accounts() {
        let clock = clock();
        let b = breakers(&clock);
        assert_eq!(call(&b, "a", Health::ConnectionFailed), Ok(None));
        assert_eq!(call(&b, "a", Health::ConnectionFailed), Ok(None));
        assert_eq!(
            call(&b, "a", Health::ConnectionFailed),
            Ok(Some(Scope::Key))
        );
        assert_eq!(b.open_counts(), (true, 0));
        // A failed probe keeps it open for another period.
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            call(&b, "b", Health::ConnectionFailed),
            Ok(Some(Scope::Key))
        );
        assert_eq!(b.permit("b").unwrap_err().wait, Duration::from_secs(30));
    }

    #[test]
    fn calls_naming_no_account_count_for_the_key() {
        let clock = clock();
        let b = breakers(&clock);
        assert_eq!(call(&b, "", Health::AccountFailed), Ok(None));
        assert_eq!(call(&b, "", Health::AccountFailed), Ok(None));
        assert_eq!(call(&b, "", Health::AccountFailed), Ok(Some(Scope::Key)));
    }

    #[test]
    fn the_account_table_stays_bounded_and_forgets_idle_entries() {
        let clock = clock();
        let b = breakers(&clock);
        for i in 0..MAX_ACCOUNT_BREAKERS + 10 {
            let account = format!("acc-{i}");
            let ticket = b.permit(&account).unwrap();
            b.record(ticket, &account, Health::AccountFailed);
            // A success between them keeps the key closed.
            let ticket = b.permit("ok").unwrap();
            b.record(ticket, "ok", Health::Healthy);
        }
        assert!(b.lock().accounts.len() <= MAX_ACCOUNT_BREAKERS);
        clock.advance(Duration::from_secs(91));
        assert_eq!(b.open_counts(), (false, 0));
        assert!(b.lock().accounts.is_empty(), "idle entries are dropped");
    }
}
