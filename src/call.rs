//! A tenant's call, parsed and validated: what the inner stages work on.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::actions::ActionRule;
use crate::cache::CacheKey;
use crate::ledger::Fingerprint;

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
    /// The action's rule (endpoint, kind, price, TTL).
    pub rule: Arc<ActionRule>,
    /// The most this call can cost, from its rule and params: what a miss reserves.
    pub bound: u64,
    /// The client's own cap on this call's price (`x-max-credits`).
    pub max_credits: Option<u64>,
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
    /// `POST /v2/login` or `/v2/checkpoint`: the whole body, sent as written
    /// (it holds passwords, tokens and codes: never logged, never kept).
    Connect(Box<RawValue>),
}

impl ApiCall {
    /// The refusal when the client's `x-max-credits` is below the price
    /// bound (the call could cost more than the client allows).
    pub fn above_cap(&self) -> Option<crate::error::GatewayError> {
        self.max_credits.filter(|cap| self.bound > *cap).map(|cap| {
            crate::error::GatewayError::PriceAboveCap {
                bound: self.bound,
                cap,
            }
        })
    }

    /// The path below the upstream's base URL.
    pub fn path(&self) -> String {
        format!("/v2/{}", self.category)
    }

    /// The cache key, for reads whose rule gives a cache TTL: `get_viewers`
    /// by (account_id, offset, count), others by their canonical params.
    pub fn cache_key(&self) -> Option<CacheKey> {
        if self.rule.is_write() || self.rule.cache_ttl.is_none() {
            return None;
        }
        let (offset, count, params) = match self.params {
            CallParams::Viewers { offset, count } => (offset, count, String::new()),
            CallParams::Other(_) | CallParams::Connect(_) => (0, 0, self.canonical_params()),
        };
        Some(CacheKey::new(
            &self.action,
            &self.account_id,
            offset,
            count,
            &params,
        ))
    }

    /// Whether it connects an account (`/v2/login`, `/v2/checkpoint`).
    pub fn is_connect(&self) -> bool {
        matches!(self.params, CallParams::Connect(_))
    }

    /// The account whose upstream key carries the call: none for account
    /// connection, which goes to the key that takes new accounts.
    pub fn routing_account(&self) -> &str {
        if self.is_connect() {
            ""
        } else {
            &self.account_id
        }
    }

    /// The body viewgate sends upstream: defaults written out, so the page
    /// fetched is exactly the page the cache key names.
    pub fn upstream_body(&self) -> Bytes {
        if let CallParams::Connect(raw) = &self.params {
            return Bytes::copy_from_slice(raw.get().as_bytes());
        }
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"account_id\":");
        let _ = serde_json::to_writer(&mut out, &self.account_id);
        out.extend_from_slice(b",\"action\":");
        let _ = serde_json::to_writer(&mut out, &self.action);
        out.extend_from_slice(b",\"params\":");
        match &self.params {
            CallParams::Viewers { offset, count } => {
                // Into the buffer directly: writing to a Vec cannot fail.
                let _ = write!(out, "{{\"count\":{count},\"offset\":{offset}}}");
            }
            CallParams::Other(Some(raw)) => out.extend_from_slice(raw.get().as_bytes()),
            CallParams::Other(None) | CallParams::Connect(_) => out.extend_from_slice(b"{}"),
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// Whether the call changes the world (sent once, never cached).
    pub fn is_write(&self) -> bool {
        self.rule.is_write()
    }

    /// The params in canonical form: keys sorted at every depth, no spaces,
    /// defaults written out for `get_viewers`. Two calls that mean the same
    /// thing have the same canonical params.
    pub fn canonical_params(&self) -> String {
        match &self.params {
            CallParams::Viewers { offset, count } => {
                format!("{{\"count\":{count},\"offset\":{offset}}}")
            }
            CallParams::Other(None) => "{}".to_string(),
            CallParams::Other(Some(raw)) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(value) => canonical_json(&value),
                // Parsing validated it; should it ever fail, the raw text is still a key.
                Err(_) => raw.get().to_string(),
            },
            // Secrets stay out of fingerprints: a retry of the same
            // connection is the same request whatever it types as a password.
            CallParams::Connect(raw) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::Object(mut map)) => {
                    for secret in CONNECT_SECRETS {
                        map.remove(*secret);
                    }
                    canonical_json(&Value::Object(map))
                }
                _ => String::new(),
            },
        }
    }

    /// What makes two requests "the same request" for an `Idempotency-Key`:
    /// endpoint, account, action and canonical params.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        for part in [
            self.category.as_str(),
            self.account_id.as_str(),
            self.action.as_str(),
            self.canonical_params().as_str(),
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }
}

/// Body fields of `/v2/login` and `/v2/checkpoint` that are secrets.
pub const CONNECT_SECRETS: &[&str] = &["password", "login_token", "code"];

/// `value` as JSON with object keys sorted at every depth.
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"y":1,"x":2}],"c":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "a" : {"c":null,"d":[{"x":2,"y":1}]}, "b":1 }"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":null,"d":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}
