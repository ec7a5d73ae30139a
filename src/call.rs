//! A tenant's call, parsed and validated: what the inner stages work on.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::cache::CacheKey;
use crate::ledger::estimate_viewers;

/// Largest `count` viewgate accepts for `get_viewers` (the simulator's documented maximum).
pub const MAX_COUNT: u32 = 100;
/// `count` when the call does not say.
pub const DEFAULT_COUNT: u32 = 10;

/// A validated call to `POST /v2/{category}`.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// The endpoint's category: `profiles` for `/v2/profiles`.
    pub category: String,
    /// The account.
    pub account_id: String,
    /// The action.
    pub action: String,
    /// The parameters.
    pub params: CallParams,
}

/// Parameters, typed where viewgate understands them.
#[derive(Debug, Clone)]
pub enum CallParams {
    /// `get_viewers`, with defaults applied.
    Viewers {
        /// Items to skip.
        offset: u32,
        /// Page size.
        count: u32,
    },
    /// Any other action: passed through as written.
    Other(Option<Box<RawValue>>),
}

impl ApiCall {
    /// The path below the upstream's base URL.
    pub fn path(&self) -> String {
        format!("/v2/{}", self.category)
    }

    /// The cache key, for calls viewgate knows how to cache.
    pub fn cache_key(&self) -> Option<CacheKey> {
        match self.params {
            CallParams::Viewers { offset, count } => Some(CacheKey {
                action: self.action.as_str().into(),
                account_id: self.account_id.as_str().into(),
                offset,
                count,
            }),
            CallParams::Other(_) => None,
        }
    }

    /// Credits to reserve before calling the upstream: `ceil(count / 10)` for
    /// `get_viewers`, else the configured estimate of the action (default 1).
    pub fn estimate(&self, estimates: &BTreeMap<String, u64>) -> u64 {
        match self.params {
            CallParams::Viewers { count, .. } => estimate_viewers(count),
            CallParams::Other(_) => estimates.get(&self.action).copied().unwrap_or(1),
        }
    }

    /// The body viewgate sends upstream: defaults written out, so the page
    /// fetched is exactly the page the cache key names.
    pub fn upstream_body(&self) -> Bytes {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"account_id\":");
        let _ = serde_json::to_writer(&mut out, &self.account_id);
        out.extend_from_slice(b",\"action\":");
        let _ = serde_json::to_writer(&mut out, &self.action);
        out.extend_from_slice(b",\"params\":");
        match &self.params {
            CallParams::Viewers { offset, count } => {
                out.extend_from_slice(
                    format!("{{\"count\":{count},\"offset\":{offset}}}").as_bytes(),
                );
            }
            CallParams::Other(Some(raw)) => out.extend_from_slice(raw.get().as_bytes()),
            CallParams::Other(None) => out.extend_from_slice(b"{}"),
        }
        out.push(b'}');
        Bytes::from(out)
    }
}
