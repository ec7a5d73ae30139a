//! `tenants:`: who may call, with which key, accounts, actions and limits.

use std::collections::HashMap;

use super::Problems;
use super::actions::valid_action_name;
use super::values::{budget, count, hash, patterns, rate_limit};
use crate::config::raw::RawTenant;
use crate::config::{CacheConfig, OnBudgetExhausted, TenantConfig};
use crate::keys::KeyHash;

/// `tenants:`, in file order (other sections refer to them by index).
/// `server_max_in_flight` gives a tenant without its own `max_in_flight`
/// its default share: half the server's slots (at least 1), so no one
/// tenant can take them all.
pub(super) fn tenants(
    raw: &[RawTenant],
    server_max_in_flight: usize,
    p: &mut Problems,
) -> Vec<TenantConfig> {
    let default_share = (server_max_in_flight / 2).max(1) as u64;
    let mut ids: HashMap<&str, u64> = HashMap::new();
    let mut hashes: HashMap<KeyHash, u64> = HashMap::new();
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let path = format!("tenants[{i}]");
        let id_ok = !t.id.value.is_empty()
            && t.id.value.len() <= 64
            && t.id
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            p.at(
                &t.id.referenced,
                format!("{path}.id"),
                "must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
            );
        }
        if let Some(first) = ids.insert(&t.id.value, t.id.referenced.line()) {
            p.at(
                &t.id.referenced,
                format!("{path}.id"),
                format!(
                    "duplicate tenant id {:?} (first at line {first})",
                    t.id.value
                ),
            );
        }
        let key_sha256 = hash(p, &t.key_sha256, &format!("{path}.key_sha256"));
        if let Some(h) = key_sha256
            && let Some(first) = hashes.insert(h, t.key_sha256.referenced.line())
        {
            p.at(
                &t.key_sha256.referenced,
                format!("{path}.key_sha256"),
                format!(
                    "duplicate key hash (first at line {first}); every tenant needs its own key"
                ),
            );
        }
        let accounts = patterns(p, &t.accounts, &format!("{path}.accounts"));
        if accounts.is_empty() {
            p.at(
                &t.accounts.referenced,
                format!("{path}.accounts"),
                "must list at least one account or \"*\"",
            );
        }
        let actions = match &t.actions {
            None => vec!["get_viewers".to_string()],
            Some(list) => {
                for a in &list.value {
                    if a != "*" && !valid_action_name(a) {
                        p.at(
                            &list.referenced,
                            format!("{path}.actions"),
                            format!("{a:?} is not an action name (lower-case letters, digits, _) or \"*\""),
                        );
                    }
                }
                list.value.clone()
            }
        };
        let rate_limit = t
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(p, r, &format!("{path}.rate_limit"), &t.id.referenced));
        let budget = t
            .budget
            .as_ref()
            .and_then(|b| budget(p, b, &format!("{path}.budget")));
        let max_in_flight = count(
            p,
            t.max_in_flight.as_ref(),
            &format!("{path}.max_in_flight"),
            default_share,
        );
        let on_budget_exhausted = match &t.on_budget_exhausted {
            None => OnBudgetExhausted::Refuse,
            Some(v) => match v.value.as_str() {
                "refuse" => OnBudgetExhausted::Refuse,
                "stale" => OnBudgetExhausted::Stale,
                other => {
                    p.at(
                        &v.referenced,
                        format!("{path}.on_budget_exhausted"),
                        format!("unknown value {other:?} (refuse or stale)"),
                    );
                    OnBudgetExhausted::Refuse
                }
            },
        };
        out.push(TenantConfig {
            id: t.id.value.clone(),
            key_sha256: key_sha256.unwrap_or(KeyHash([0; 32])),
            accounts,
            actions,
            rate_limit,
            budget,
            max_in_flight,
            allow_refresh: t.allow_refresh,
            connect_accounts: t.connect_accounts,
            on_budget_exhausted,
            enforce: t.enforce.unwrap_or(true),
            // Filled in by `alerts::thresholds`, which knows the default.
            alert_thresholds: Vec::new(),
        });
    }
    out
}

/// `on_budget_exhausted: stale` serves expired pages the cache holds for
/// `max(cache.stale_if_error_s, cache.stale_while_revalidate_s)` after their
/// expiry: with both 0 it could never serve one.
pub(super) fn stale_mode_window(raw: &[RawTenant], cache: &CacheConfig, p: &mut Problems) {
    if !cache.stale_if_error.is_zero() || !cache.stale_while_revalidate.is_zero() {
        return;
    }
    for (i, t) in raw.iter().enumerate() {
        if let Some(mode) = &t.on_budget_exhausted
            && mode.value == "stale"
        {
            p.at(
                &mode.referenced,
                format!("tenants[{i}].on_budget_exhausted"),
                "stale serves expired pages held for max(cache.stale_if_error_s, \
                 cache.stale_while_revalidate_s), and both are 0",
            );
        }
    }
}
