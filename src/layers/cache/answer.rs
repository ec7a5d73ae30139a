//! Answers of the cache stage: a page with its metadata rewritten for the
//! tenant, and the headers that go with it.

use std::time::Instant;

use http::{HeaderName, HeaderValue, Response, header};

use super::{Asked, Shared, StageResult, X_CACHE, X_CREDITS_REMAINING};
use crate::cache::CachedPage;
use crate::context::RequestContext;
use crate::degraded;
use crate::ledger::Balance;
use crate::response::{Body, CacheStatus, PageMeta, page_body, page_response};
use crate::tenant::Tenant;

/// How a page answers: its cache status, what the tenant was charged for
/// it, and the upstream time when this request called the upstream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answer {
    pub(super) status: CacheStatus,
    pub(super) credits: u64,
    pub(super) upstream_ms: Option<u64>,
}

impl Answer {
    /// An answer that cost the tenant nothing and called no upstream.
    pub(super) fn free(status: CacheStatus) -> Self {
        Self {
            status,
            credits: 0,
            upstream_ms: None,
        }
    }
}

impl Shared {
    /// Answers with a fresh cached page: no charge, a hit counted with what it saved.
    /// `now` is the reading of the clock that found the page fresh.
    pub(super) async fn hit(&self, asked: &Asked, page: &CachedPage, now: Instant) -> StageResult {
        let balance = self.credits.hit(&asked.tenant, page.credits).await;
        asked.context.fields().credits_saved = page.credits;
        self.answer_with(asked, page, Answer::free(CacheStatus::Hit), balance, now)
    }

    /// Answers with an expired page for a tenant out of budget in stale
    /// mode: no charge, marked degraded (see [`crate::degraded`]).
    pub(super) async fn degraded(&self, asked: &Asked, page: &CachedPage) -> StageResult {
        let response = self
            .answer(asked, page, Answer::free(CacheStatus::Stale))
            .await?;
        Ok(degraded::mark(response, &asked.context))
    }

    /// Answers with a page, reading the tenant's balance for the metadata.
    pub(super) async fn answer(
        &self,
        asked: &Asked,
        page: &CachedPage,
        answer: Answer,
    ) -> StageResult {
        let balance = self.credits.balance(&asked.tenant).await;
        self.answer_with(asked, page, answer, balance, self.clock.now())
    }

    /// Answers with a page, given the tenant's balance, as of `now` (its
    /// timestamp and age).
    pub(super) fn answer_with(
        &self,
        asked: &Asked,
        page: &CachedPage,
        answer: Answer,
        balance: Balance,
        now: Instant,
    ) -> StageResult {
        note(&asked.context, Some(answer.status), answer.upstream_ms);
        let meta = PageMeta {
            action: &asked.call.action,
            account_id: &asked.call.account_id,
            credits_consumed: answer.credits,
            timestamp: self.clock.wall_at(now),
            cache: Some((answer.status, page.cached_at)),
            credits_remaining: balance.remaining(),
        };
        let mut response = page_response(page.status, page_body(&page.data, &meta));
        let headers = response.headers_mut();
        headers.insert(X_CACHE.clone(), answer.status.header());
        headers.insert(header::AGE, HeaderValue::from(page.age_s(now)));
        remaining_header(&mut response, &asked.tenant, &balance);
        Ok(response)
    }
}

/// The upstream's headers a client may act on, on the answer it fetched.
pub(super) fn pass_headers(response: &mut Response<Body>, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
}

/// `x-credits-remaining` for a tenant with a budget.
pub(super) fn remaining_header(response: &mut Response<Body>, tenant: &Tenant, balance: &Balance) {
    if tenant.budget.is_some()
        && let Some(remaining) = balance.remaining()
    {
        response
            .headers_mut()
            .insert(X_CREDITS_REMAINING.clone(), HeaderValue::from(remaining));
    }
}

/// Records how the request was answered; its charge was recorded by the
/// miss path itself ([`RequestContext::charge`]).
pub(super) fn note(context: &RequestContext, cache: Option<CacheStatus>, upstream_ms: Option<u64>) {
    let mut fields = context.fields();
    fields.cache = cache;
    fields.upstream_ms = upstream_ms;
}
