//! Degraded mode: a tenant with `on_budget_exhausted: stale` whose budget
//! cannot cover a cacheable read gets an expired page of it instead of a
//! 402, when the cache still holds one.
//!
//! The cache stage asks here once a miss failed for want of credits. The
//! page is answered as any stale page (`metadata.cache: "stale"`,
//! `x-cache: STALE`, `age`), at no charge, with `x-viewgate-degraded:
//! budget`; the access line says `cache: "stale"` and `degraded: "budget"`.
//! Only the tenant's budget counts: the client's own `x-max-credits` cap is
//! its choice, not an exhausted budget, and stays a 402; writes and uncached
//! reads never reach this (nothing expired exists for them).
//!
//! Which pages qualify: an expired page of the same key that the cache
//! still holds, that is up to `max(cache.stale_if_error_s,
//! cache.stale_while_revalidate_s)` past its expiry, the window the cache
//! keeps every page for (see [`crate::cache::PageCache::new`]).

use std::time::Instant;

use http::{HeaderName, HeaderValue, Response};

use crate::cache::CachedPage;
use crate::call::ApiCall;
use crate::config::OnBudgetExhausted;
use crate::context::RequestContext;
use crate::credits::Credits;
use crate::error::GatewayError;
use crate::response::Body;
use crate::tenant::Tenant;

/// The header a degraded answer carries.
pub(crate) static X_VIEWGATE_DEGRADED: HeaderName = HeaderName::from_static("x-viewgate-degraded");

/// Why an answer is degraded (header value and log field).
pub(crate) const BUDGET: &str = "budget";

/// Whether `page` is an expired page the cache still holds at `now`: one
/// degraded mode may serve, and a quote calls `stale`.
pub(crate) fn is_held_stale(page: &CachedPage, now: Instant) -> bool {
    !page.is_fresh(now) && now < page.stale_until.max(page.revalidate_until)
}

/// Whether the tenant answers a want of credits with an expired page.
fn wants_stale(tenant: &Tenant) -> bool {
    tenant.on_budget_exhausted == OnBudgetExhausted::Stale
}

/// Whether `page` stands in for the failed fetch `outcome`: the tenant is
/// in stale mode, its budget could not cover the call, and the page is held.
pub(crate) fn stands_in(
    tenant: &Tenant,
    outcome: &GatewayError,
    page: &CachedPage,
    now: Instant,
) -> bool {
    wants_stale(tenant)
        && matches!(outcome, GatewayError::InsufficientCredits { .. })
        && is_held_stale(page, now)
}

/// Whether a follower whose leader ran out of credits takes `page` too: it
/// does when it is in stale mode and its own budget cannot cover the call
/// either (the leader's budget may not be its own; if its own covers the
/// call, it tries again and may lead the fetch itself).
pub(crate) async fn follower_stands_in(
    credits: &Credits,
    tenant: &Tenant,
    call: &ApiCall,
    page: &CachedPage,
    now: Instant,
) -> bool {
    if !wants_stale(tenant) || !is_held_stale(page, now) {
        return false;
    }
    let balance = credits.balance(tenant).await;
    balance.remaining().is_some_and(|left| left < call.bound)
}

/// Marks `response` (a stale page answered at no charge) as degraded, on
/// the wire and on the access line.
pub(crate) fn mark(mut response: Response<Body>, context: &RequestContext) -> Response<Body> {
    context.fields().degraded = Some(BUDGET);
    response.headers_mut().insert(
        X_VIEWGATE_DEGRADED.clone(),
        HeaderValue::from_static(BUDGET),
    );
    response
}
