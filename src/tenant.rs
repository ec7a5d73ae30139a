//! Tenants: who may call, resolved from the presented key.
//!
//! The registry maps SHA-256(key) to a [`Tenant`]. Lookup hashes the presented
//! key, finds the entry, then compares the stored hash in constant time, so
//! neither the map nor the comparison leaks how much of a key was right.
//!
//! A tenant owns its rate [`Limiter`]; the limiters know nothing of tenants
//! (upstream keys use them too), so this module depends on `ratelimit` and
//! not the other way round. It also owns its share of the gateway's
//! request slots ([`TenantSlots`]), so one tenant cannot hold them all.

use foldhash::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::call::ApiCall;
use crate::clock::Clock;
use crate::config::{AccountPattern, Budget, OnBudgetExhausted, RateLimit, TenantConfig};
use crate::error::GatewayError;
use crate::keys::KeyHash;
use crate::ratelimit::{Limiter, RedisGcra};

/// A tenant, as the request path sees it.
#[derive(Debug)]
pub struct Tenant {
    /// Stable id.
    pub id: Arc<str>,
    /// Accounts it may read.
    pub accounts: Vec<AccountPattern>,
    /// Actions it may call; `None` means all.
    pub actions: Option<HashSet<String>>,
    /// Its rate limiter, if it has a limit (shared with the previous
    /// generation of this tenant when its limit did not change).
    pub limiter: Option<Arc<Limiter>>,
    /// The limit the limiter enforces.
    pub rate_limit: Option<RateLimit>,
    /// Its budget; `None` is unlimited.
    pub budget: Option<Budget>,
    /// Requests of this tenant answered at once at most.
    pub max_in_flight: usize,
    /// Its requests being answered now (shared with the previous
    /// generation of this tenant, so a reload never forgets one).
    pub slots: Arc<TenantSlots>,
    /// Whether it may force a refresh.
    pub allow_refresh: bool,
    /// Whether it may connect accounts (`/v2/login`, `/v2/checkpoint`).
    pub connect_accounts: bool,
    /// What a cacheable read its budget cannot cover gets.
    pub on_budget_exhausted: OnBudgetExhausted,
    /// Whether its rate limit and budget refuse (false: shadow mode, see
    /// [`crate::shadow`]).
    pub enforce: bool,
    /// Budget percentages that fire an alert, ascending (see `alerts`).
    pub alert_thresholds: Arc<[u8]>,
}

impl Tenant {
    /// Builds a tenant from its configuration, keeping `previous`'s limiter
    /// (and so its state) when the rate limit is unchanged. With `redis`,
    /// limits whose scope is global keep their state there.
    pub fn new(
        config: &TenantConfig,
        clock: &Clock,
        previous: Option<&Tenant>,
        redis: Option<&Arc<RedisGcra>>,
    ) -> Self {
        let actions = if config.actions.iter().any(|a| a == "*") {
            None
        } else {
            Some(config.actions.iter().cloned().collect())
        };
        Self {
            id: Arc::from(config.id.as_str()),
            accounts: config.accounts.clone(),
            actions,
            limiter: match previous {
                Some(old) if old.rate_limit == config.rate_limit => old.limiter.clone(),
                _ => config.rate_limit.map(|rl| {
                    let key = || format!("vg:{{t:{}}}:rate", config.id);
                    Arc::new(Limiter::for_limit(&rl, redis, key, clock))
                }),
            },
            rate_limit: config.rate_limit,
            budget: config.budget,
            max_in_flight: config.max_in_flight,
            slots: previous
                .map(|old| Arc::clone(&old.slots))
                .unwrap_or_default(),
            allow_refresh: config.allow_refresh,
            connect_accounts: config.connect_accounts,
            on_budget_exhausted: config.on_budget_exhausted,
            enforce: config.enforce,
            alert_thresholds: Arc::from(config.alert_thresholds.as_slice()),
        }
    }

    /// Whether the tenant may read `account_id`.
    pub fn may_read(&self, account_id: &str) -> bool {
        self.accounts.iter().any(|p| p.matches(account_id))
    }

    /// Whether the tenant may call `action`.
    pub fn may_call(&self, action: &str) -> bool {
        self.actions.as_ref().is_none_or(|set| set.contains(action))
    }

    /// Whether the tenant may make `call`: the account first, refused
    /// exactly like an account that does not exist (404), so a tenant
    /// cannot probe which accounts others use; then the action (403).
    /// Connecting an account is its own grant: the account is not the
    /// tenant's yet (the operator grants it once it exists).
    pub fn permits(&self, call: &ApiCall) -> Result<(), GatewayError> {
        if call.is_connect() {
            return if self.connect_accounts {
                Ok(())
            } else {
                Err(GatewayError::ActionNotAllowed)
            };
        }
        if !self.may_read(&call.account_id) {
            return Err(GatewayError::InvalidAccount);
        }
        if !self.may_call(&call.action) {
            return Err(GatewayError::ActionNotAllowed);
        }
        Ok(())
    }
}

/// How many of a tenant's requests are being answered.
#[derive(Debug, Default)]
pub struct TenantSlots {
    taken: AtomicUsize,
}

impl TenantSlots {
    /// Takes a slot if fewer than `limit` are taken; it is given back when
    /// the returned guard is dropped (the request answered or abandoned).
    pub fn try_take(self: &Arc<Self>, limit: usize) -> Option<TenantSlot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| TenantSlot(Arc::clone(self)))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One request's slot among its tenant's; given back on drop.
#[derive(Debug)]
pub struct TenantSlot(Arc<TenantSlots>);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All tenants, by key hash.
#[derive(Debug, Default)]
pub struct Tenants {
    by_hash: HashMap<KeyHash, Arc<Tenant>>,
    by_id: HashMap<Arc<str>, Arc<Tenant>>,
    in_order: Vec<Arc<Tenant>>,
}

impl Tenants {
    /// Builds the registry from configuration. With `previous` (a reload),
    /// tenants whose id and rate limit are unchanged keep their limiter state.
    pub fn new(
        configs: &[TenantConfig],
        clock: &Clock,
        previous: Option<&Tenants>,
        redis: Option<&Arc<RedisGcra>>,
    ) -> Self {
        let mut by_hash = HashMap::default();
        let mut by_id = HashMap::default();
        let mut in_order = Vec::new();
        for config in configs {
            let old = previous.and_then(|p| p.by_id(&config.id));
            let tenant = Arc::new(Tenant::new(config, clock, old.map(|t| &**t), redis));
            by_hash.insert(config.key_sha256, Arc::clone(&tenant));
            by_id.insert(Arc::clone(&tenant.id), Arc::clone(&tenant));
            in_order.push(tenant);
        }
        Self {
            by_hash,
            by_id,
            in_order,
        }
    }

    /// The tenant a presented key belongs to, if any.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Arc<Tenant>> {
        let digest = KeyHash::of(presented);
        let (stored, tenant) = self.by_hash.get_key_value(&digest)?;
        stored.ct_eq(&digest).then(|| Arc::clone(tenant))
    }

    /// The tenant with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// Every tenant, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.in_order.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_share_of_slots() {
        let slots = Arc::new(TenantSlots::default());
        let first = slots.try_take(2).unwrap();
        let second = slots.try_take(2).unwrap();
        assert!(slots.try_take(2).is_none(), "past its share");
        assert_eq!(slots.taken(), 2);
        drop(first);
        let third = slots.try_take(2).expect("a slot came back");
        drop((second, third));
        assert_eq!(slots.taken(), 0);
    }
}
