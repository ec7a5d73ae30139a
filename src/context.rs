//! Per-request context: the request id and what the access log line will say.
//!
//! The request-id layer creates one [`RequestContext`] per request and puts it
//! in the request's extensions; later stages fill in what they learn (tenant,
//! account, cache outcome, charge) and the log line is written from it once
//! the response is ready, whether it is a page or an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http::HeaderValue;

use crate::response::CacheStatus;

/// Target of the line that records a charge settled after the answer was logged.
pub(crate) const SETTLE_TARGET: &str = "viewgate::settle";

/// What the access log line records, filled in as the request moves inward.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogFields {
    /// The tenant, once authenticated.
    pub tenant: Option<Arc<str>>,
    /// The action, once parsed.
    pub action: Option<String>,
    /// The account, once parsed.
    pub account_id: Option<String>,
    /// The page offset (get_viewers).
    pub offset: Option<u32>,
    /// The page size (get_viewers).
    pub count: Option<u32>,
    /// How the cache answered.
    pub cache: Option<CacheStatus>,
    /// Credits charged to the tenant.
    pub credits_charged: u64,
    /// Credits a cache hit saved (what the upstream charged for the page).
    pub credits_saved: u64,
    /// Time spent on the upstream, when it was called.
    pub upstream_ms: Option<u64>,
    /// The error code, when the answer is an error.
    pub error_code: Option<String>,
    /// Who caused the error (`client`, `policy`, `upstream`, `internal`).
    pub error_source: Option<&'static str>,
    /// Why a page was served degraded (`budget`: out of credits, stale mode).
    pub degraded: Option<&'static str>,
    /// Whether the request was a quote (`x-viewgate-quote: 1`).
    pub quote: bool,
    /// Whether the access line is written: a charge settled after it goes
    /// on a `settle` line of its own.
    pub answered: bool,
}

/// One request's context.
#[derive(Debug)]
pub(crate) struct RequestContext {
    /// The request id (client's when valid, else generated).
    pub request_id: HeaderValue,
    /// When the request arrived.
    pub started: Instant,
    fields: Mutex<LogFields>,
    /// Whether a call for this request has gone to the upstream.
    upstream_started: AtomicBool,
    /// Whether an attempt of that call is on the wire now (not waiting for
    /// the key's pace or between retries).
    on_wire: AtomicBool,
    /// The leader of the fetch this request waits for as a follower (the
    /// latest, if it followed more than one).
    waiting_on: Mutex<Option<Arc<RequestContext>>>,
    /// Whether its answer must close the connection (its body was refused
    /// unread and could not be discarded: see `layers::discard`).
    close: AtomicBool,
}

impl RequestContext {
    /// A new context.
    pub(crate) fn new(request_id: HeaderValue, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            request_id,
            started,
            fields: Mutex::new(LogFields::default()),
            upstream_started: AtomicBool::new(false),
            on_wire: AtomicBool::new(false),
            waiting_on: Mutex::new(None),
            close: AtomicBool::new(false),
        })
    }

    /// Asks for the answer to close the connection.
    pub(crate) fn close_connection(&self) {
        self.close.store(true, Ordering::Relaxed);
    }

    /// Whether the answer must close the connection.
    pub(crate) fn closes_connection(&self) -> bool {
        self.close.load(Ordering::Relaxed)
    }

    /// The fields, to read or update.
    pub(crate) fn fields(&self) -> MutexGuard<'_, LogFields> {
        // Fields are plain values; a panic elsewhere cannot leave them inconsistent.
        self.fields.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `credits` charged for this request. Before the answer is
    /// logged they join the access line; after it (the request's deadline
    /// passed while its upstream call went on), they are written on a
    /// `settle` line with the same `request_id`, so that every credit the
    /// ledger holds appears on exactly one log line. Returns whether the
    /// charge came late (the caller then counts it in the metrics itself).
    pub(crate) fn charge(&self, credits: u64) -> bool {
        let mut fields = self.fields();
        if !fields.answered {
            fields.credits_charged = fields.credits_charged.saturating_add(credits);
            return false;
        }
        let (tenant, action, account_id) = (
            fields.tenant.clone(),
            fields.action.clone(),
            fields.account_id.clone(),
        );
        drop(fields);
        tracing::info!(
            target: SETTLE_TARGET,
            request_id = self.request_id_str(),
            tenant = tenant.as_deref(),
            action = action.as_deref(),
            account_id = account_id.as_deref(),
            credits_charged = credits,
            "settle"
        );
        true
    }

    /// Marks that a call for this request is being sent upstream.
    pub(crate) fn mark_upstream_started(&self) {
        self.upstream_started.store(true, Ordering::Release);
    }

    /// Whether a call for this request has gone to the upstream (then a
    /// deadline that passes must not read as "nothing happened").
    pub(crate) fn upstream_started(&self) -> bool {
        self.upstream_started.load(Ordering::Acquire)
    }

    /// Marks that this request waits for the fetch `leader` leads.
    pub(crate) fn wait_on(&self, leader: &Arc<RequestContext>) {
        // Its own context is never its leader (a leader does not follow itself).
        *self.waiting_on.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(leader));
    }

    /// Marks whether an attempt of this request's upstream call is on the
    /// wire (set around each attempt by the upstream client).
    pub(crate) fn set_on_wire(&self, on: bool) {
        self.on_wire.store(on, Ordering::Release);
    }

    /// Whether this request waits for another's upstream call that is on the
    /// wire (its deadline then passed because the upstream is slow, not the
    /// key's pace or a retry's back-off).
    pub(crate) fn waits_on_upstream(&self) -> bool {
        self.waiting_on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|leader| leader.on_wire.load(Ordering::Acquire))
    }

    /// The request id as text (always ASCII: it was validated or generated).
    pub(crate) fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Arc<RequestContext> {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        RequestContext::new(HeaderValue::from_static("t"), now)
    }

    #[test]
    fn a_follower_waits_on_the_upstream_only_while_its_leaders_call_is_on_the_wire() {
        let (leader, follower) = (context(), context());
        assert!(!follower.waits_on_upstream(), "it follows nobody yet");
        follower.wait_on(&leader);
        // Started (reserved, then waiting for the key's pace): not on the wire.
        leader.mark_upstream_started();
        assert!(!follower.waits_on_upstream());
        leader.set_on_wire(true);
        assert!(follower.waits_on_upstream());
        // Between retries: waiting on the back-off, not on the upstream.
        leader.set_on_wire(false);
        assert!(!follower.waits_on_upstream());
    }
}
