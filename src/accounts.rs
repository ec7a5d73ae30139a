//! The accounts a tenant may use: `GET /v2/accounts` and `/v2/accounts/{id}`.
//!
//! The upstream lists the accounts of one key. A tenant's list is gathered
//! from every upstream key that could own one of its grants, keeping each
//! account only under the key that routing gives it (so an account two keys
//! claim is listed once, where its calls go) and only if the tenant may use
//! it; `total` is counted after that filter. Each key's full list is held
//! for [`HOLD`] and fetched by one call at a time (single-flight), so a
//! client paging through a long list does not multiply upstream calls. A
//! key that fails to list is logged and skipped: the others still answer.
//! Listing is free upstream, so nothing here touches the ledger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cache::{Role, SingleFlight};
use crate::clock::Clock;
use crate::error::GatewayError;
use crate::tenant::Tenant;
use crate::upstream::{Upstream, UpstreamCall, UpstreamError, UpstreamKey};

/// How long a key's list is reused.
pub(crate) const HOLD: Duration = Duration::from_secs(30);

/// Upstream page size when gathering a key's list (the documented maximum).
const PAGE: u64 = 500;

/// The most upstream pages read for one key's list (bounds the work).
const MAX_PAGES: u64 = 100;

/// One account as the upstream listed it.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    /// Its id.
    pub account_id: String,
    /// The upstream's item, byte for byte.
    pub item: Box<RawValue>,
}

type Listing = Result<Arc<Vec<Account>>, GatewayError>;

/// A key's list and when it was fetched.
type Held = (Instant, Arc<Vec<Account>>);

/// Lists of accounts per upstream key, held briefly.
pub(crate) struct AccountDirectory {
    upstream: Arc<Upstream>,
    clock: Clock,
    held: Mutex<HashMap<String, Held>>,
    flights: SingleFlight<String, Listing>,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    items: Vec<Box<RawValue>>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Deserialize)]
struct Item {
    account_id: String,
}

impl AccountDirectory {
    /// A directory over `upstream`'s keys.
    pub(crate) fn new(upstream: Arc<Upstream>, clock: Clock) -> Self {
        Self {
            upstream,
            clock,
            held: Mutex::new(HashMap::new()),
            flights: SingleFlight::default(),
        }
    }

    /// Every account `tenant` may use, in key order then the upstream's.
    pub(crate) async fn list(
        &self,
        tenant: &Tenant,
        request_id: &HeaderValue,
    ) -> Result<Vec<Account>, GatewayError> {
        let keys: Vec<&UpstreamKey> = self
            .upstream
            .keys()
            .iter()
            .filter(|k| k.may_own_any_of(&tenant.accounts))
            .collect();
        let mut out = Vec::new();
        let mut failures = 0;
        for key in &keys {
            match self.of_key(key, request_id).await {
                Ok(accounts) => out.extend(
                    accounts
                        .iter()
                        .filter(|a| {
                            tenant.may_read(&a.account_id)
                                && self
                                    .upstream
                                    .keys()
                                    .route(&a.account_id)
                                    .is_some_and(|owner| owner.name == key.name)
                        })
                        .cloned(),
                ),
                Err(error) => {
                    failures += 1;
                    tracing::warn!(
                        request_id = request_id.to_str().unwrap_or("-"),
                        upstream_key = %key.name,
                        error_code = error.code(),
                        "could not list this key's accounts; skipped"
                    );
                }
            }
        }
        if failures > 0 && failures == keys.len() {
            return Err(GatewayError::UpstreamUnavailable {
                detail: "no upstream key could list its accounts".into(),
            });
        }
        Ok(out)
    }

    /// One account, if `tenant` may use it and a key owns it: the upstream's
    /// `data`.
    pub(crate) async fn detail(
        &self,
        tenant: &Tenant,
        account_id: &str,
        request_id: &HeaderValue,
    ) -> Result<Bytes, GatewayError> {
        if !tenant.may_read(account_id) {
            return Err(GatewayError::InvalidAccount);
        }
        let key = self
            .upstream
            .keys()
            .route(account_id)
            .ok_or(GatewayError::InvalidAccount)?;
        let call = listing_call(
            format!("/v2/accounts/{}", percent_encode(account_id)),
            request_id,
        );
        let reply = self
            .upstream
            .call_via(key, &call)
            .await
            .map_err(free_error)?;
        Ok(reply.data)
    }

    /// The whole list of `key`, held for [`HOLD`].
    async fn of_key(
        &self,
        key: &UpstreamKey,
        request_id: &HeaderValue,
    ) -> Result<Arc<Vec<Account>>, GatewayError> {
        for _ in 0..3 {
            if let Some(list) = self.held(&key.name) {
                return Ok(list);
            }
            match self.flights.join(&key.name) {
                Role::Leader(leader) => {
                    let result = self.fetch(key, request_id).await.map(Arc::new);
                    if let Ok(list) = &result {
                        self.held
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key.name.clone(), (self.clock.now(), Arc::clone(list)));
                    }
                    leader.complete(result.clone());
                    return result;
                }
                Role::Follower(follower) => match follower.wait().await {
                    Some(result) => return result,
                    // The leader vanished (its client hung up): try again.
                    None => continue,
                },
            }
        }
        Err(GatewayError::ServiceUnavailable {
            detail: "the accounts list could not be gathered".into(),
        })
    }

    fn held(&self, key: &str) -> Option<Arc<Vec<Account>>> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(key)
            .filter(|(at, _)| self.clock.now().saturating_duration_since(*at) < HOLD)
            .map(|(_, list)| Arc::clone(list))
    }

    /// Pages through the upstream's list of `key`'s accounts.
    async fn fetch(
        &self,
        key: &UpstreamKey,
        request_id: &HeaderValue,
    ) -> Result<Vec<Account>, GatewayError> {
        let mut accounts = Vec::new();
        for page in 0..MAX_PAGES {
            let offset = page * PAGE;
            let call = listing_call(
                format!("/v2/accounts?limit={PAGE}&offset={offset}"),
                request_id,
            );
            let reply = self
                .upstream
                .call_via(key, &call)
                .await
                .map_err(free_error)?;
            let listed: ListPage = serde_json::from_slice(&reply.data).map_err(|e| {
                GatewayError::UpstreamUnavailable {
                    detail: format!("the accounts list is not the V2 shape: {e}"),
                }
            })?;
            let got = listed.items.len() as u64;
            for item in listed.items {
                // An item without an id cannot be filtered, so it is not shown.
                if let Ok(Item { account_id }) = serde_json::from_str(item.get()) {
                    accounts.push(Account { account_id, item });
                }
            }
            let done = got < PAGE || listed.total.is_some_and(|t| offset + got >= t);
            if done {
                break;
            }
        }
        Ok(accounts)
    }
}

/// A free `GET` of the accounts API: the key is chosen by the caller.
fn listing_call(path: String, request_id: &HeaderValue) -> UpstreamCall {
    UpstreamCall {
        path,
        account_id: String::new(),
        body: Bytes::new(),
        request_id: request_id.clone(),
        write: false,
        get: true,
        context: None,
    }
}

/// Listing and reading accounts is free upstream, so an unknown outcome
/// costs nothing either: it is a plain failure.
fn free_error(error: UpstreamError) -> GatewayError {
    match error {
        UpstreamError::Free(e) => e,
        UpstreamError::Unknown { timeout: true, .. } => GatewayError::UpstreamTimeout,
        UpstreamError::Unknown { detail, .. } => GatewayError::UpstreamUnavailable { detail },
    }
}

/// `id` with every byte that is not unreserved in a URL path percent-encoded.
fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        // `.` too: an id of `.` or `..` must not become a dot-segment that
        // a server or proxy resolves to another path.
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` if one is malformed or the result is not UTF-8.
pub(crate) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_the_path() {
        for id in ["acc-1", "a/b", "x%y", "é?#", "..", "a.b"] {
            assert_eq!(percent_decode(&percent_encode(id)).as_deref(), Some(id));
        }
        // Found by a review: `..` went upstream as a dot-segment.
        assert_eq!(percent_encode(".."), "%2E%2E");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
