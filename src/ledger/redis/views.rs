//! Each tenant's balance as Redis last answered it, so a cache hit never
//! waits on Redis.
//!
//! `balance` answers from a local view of the tenant's period and, once the
//! view is older than [`VIEW_MAX_AGE`], refreshes it in the background (one
//! refresh at a time). `credits_remaining` on a hit may therefore lag what
//! other replicas spent by about a second; reservations are always exact.
//! Every script's answer updates the view too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::keys::period_hash;
use super::{Inner, count, lock};
use crate::config::Budget;
use crate::ledger::book::AccountKey;
use crate::ledger::{Balance, LedgerError};
use crate::redis::{Op, Retry};

/// A local balance older than this is refreshed from Redis (in the background).
const VIEW_MAX_AGE: Duration = Duration::from_secs(1);

/// A local balance nobody asked for in this long is forgotten.
const VIEW_IDLE_LIMIT: Duration = Duration::from_secs(10 * 60);

/// A tenant's period as Redis last answered it.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    used: u64,
    reserved: u64,
    /// No background refresh before this (one at a time, and at most one a
    /// second while Redis is unreachable).
    next_refresh: Instant,
    /// When `balance` last read it.
    read_at: Instant,
}

impl Inner {
    /// See [`crate::ledger::Ledger::balance`]: from the view when there is
    /// one (refreshed behind the caller once stale), else from Redis.
    pub(super) fn balance<'a>(
        self: &'a Arc<Self>,
        tenant: &'a str,
        budget: Option<Budget>,
    ) -> BoxFuture<'a, Result<Balance, LedgerError>> {
        let limit = budget.map(|b| b.credits);
        let (period, _) = self.current_period(budget);
        let key = (tenant.to_string(), period);
        let now = self.clock.now();
        let known = {
            let mut views = lock(&self.views);
            views.get_mut(&key).map(|view| {
                view.read_at = now;
                let stale = now >= view.next_refresh;
                if stale {
                    view.next_refresh = now + VIEW_MAX_AGE;
                }
                (view.used, view.reserved, stale)
            })
        };
        match known {
            // On the cache-hit path: answer from the view, refresh it behind.
            Some((used, reserved, stale)) => {
                if stale {
                    self.refresh_later(key);
                }
                ready(Ok(Balance {
                    used,
                    reserved,
                    limit,
                }))
                .boxed()
            }
            // Never seen: ask Redis once. Boxed: a round trip.
            None => async move {
                let (used, reserved) = self.fetch_view(&key).await?;
                Ok(Balance {
                    used,
                    reserved,
                    limit,
                })
            }
            .boxed(),
        }
    }

    /// Reads `used` and `reserved` of one tenant's period from Redis.
    pub(super) async fn fetch_view(&self, key: &AccountKey) -> Result<(u64, u64), LedgerError> {
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(period_hash(&key.0, &key.1))
            .arg("used")
            .arg("reserved");
        let (used, reserved) = self
            .run::<(Option<i64>, Option<i64>)>(Op::Cmd(&cmd), Retry::Once)
            .await?;
        let (used, reserved) = (count(used.unwrap_or(0)), count(reserved.unwrap_or(0)));
        self.remember(key.clone(), used, reserved);
        Ok((used, reserved))
    }

    /// Refreshes a stale view without making the caller wait.
    pub(super) fn refresh_later(self: &Arc<Self>, key: AccountKey) {
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(inner) = inner.upgrade() {
                // On failure the last known balance stays; the next attempt
                // waits for `next_refresh`.
                let _ = inner.fetch_view(&key).await;
            }
        });
    }

    /// Records what Redis just said about a tenant's period.
    pub(super) fn remember(&self, key: AccountKey, used: u64, reserved: u64) {
        let now = self.clock.now();
        let mut views = lock(&self.views);
        let view = views.entry(key).or_insert(View {
            used,
            reserved,
            next_refresh: now,
            read_at: now,
        });
        view.used = used;
        view.reserved = reserved;
        view.next_refresh = now + VIEW_MAX_AGE;
    }

    /// Forgets views nobody read for a while (old periods, removed tenants).
    pub(super) fn forget_idle_views(&self) {
        let now = self.clock.now();
        lock(&self.views).retain(|_, view| now.duration_since(view.read_at) < VIEW_IDLE_LIMIT);
    }
}
