//! Building responses: the body type, JSON responses, and the metadata splice.
//!
//! A cached page is stored as the upstream's `data` bytes. Every answer is
//! written as `{"success":true,"data":` + those bytes + fresh metadata, so a
//! cache hit never parses or re-serialises the page.

use std::io::Write;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use jiff::Timestamp;

use crate::clock::rfc3339_bytes;

/// The response body type of the whole gateway: a page is always in memory.
pub type Body = Full<Bytes>;

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
    response
}

/// How a page was served, for `metadata.cache` and `x-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream for this request.
    Miss,
    /// Waited on another request's miss.
    Coalesced,
    /// Expired page served because the upstream failed.
    Stale,
}

impl CacheStatus {
    /// The `metadata.cache` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Stale => "stale",
        }
    }

    /// The `x-cache` header value.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Stale => "STALE",
        })
    }
}

/// The metadata viewgate writes next to a page.
#[derive(Debug, Clone)]
pub struct PageMeta<'a> {
    /// The action called.
    pub action: &'a str,
    /// The account asked for.
    pub account_id: &'a str,
    /// Credits charged to this tenant for this request.
    pub credits_consumed: u64,
    /// When viewgate answered.
    pub timestamp: Timestamp,
    /// Cache outcome and when the page was fetched; `None` for uncached actions.
    pub cache: Option<(CacheStatus, Timestamp)>,
    /// Remaining budget; `None` when unlimited (written as `null`).
    pub credits_remaining: Option<u64>,
}

/// Writes `{"success":true,"data":DATA,"metadata":{...}}` around `data`.
pub fn splice(data: &[u8], meta: &PageMeta<'_>) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 256);
    out.extend_from_slice(b"{\"success\":true,\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"metadata\":{\"action\":");
    // Strings go through serde_json so every character is escaped correctly.
    let _ = serde_json::to_writer(&mut out, meta.action);
    out.extend_from_slice(b",\"account_id\":");
    let _ = serde_json::to_writer(&mut out, meta.account_id);
    let _ = write!(
        out,
        ",\"credits_consumed\":{},\"timestamp\":\"",
        meta.credits_consumed
    );
    out.extend_from_slice(&rfc3339_bytes(meta.timestamp));
    if let Some((status, cached_at)) = meta.cache {
        out.extend_from_slice(b"\",\"cache\":\"");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"cached_at\":\"");
        out.extend_from_slice(&rfc3339_bytes(cached_at));
    }
    out.push(b'"');
    match meta.credits_remaining {
        Some(n) => {
            let _ = write!(out, ",\"credits_remaining\":{n}");
        }
        None => out.extend_from_slice(b",\"credits_remaining\":null"),
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_writes_valid_json_with_every_field() {
        let now: Timestamp = "2026-04-26T10:35:00Z".parse().unwrap();
        let fetched: Timestamp = "2026-04-26T10:30:00Z".parse().unwrap();
        let body = splice(
            br#"{"viewers":[],"total_results":0}"#,
            &PageMeta {
                action: "get_viewers",
                account_id: "acc-\"1\"",
                credits_consumed: 0,
                timestamp: now,
                cache: Some((CacheStatus::Hit, fetched)),
                credits_remaining: Some(7),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "success": true,
                "data": {"viewers": [], "total_results": 0},
                "metadata": {
                    "action": "get_viewers", "account_id": "acc-\"1\"", "credits_consumed": 0,
                    "timestamp": "2026-04-26T10:35:00Z", "cache": "hit",
                    "cached_at": "2026-04-26T10:30:00Z", "credits_remaining": 7
                }
            })
        );
    }

    #[test]
    fn unlimited_tenants_see_null_remaining() {
        let now: Timestamp = "2026-04-26T10:35:00Z".parse().unwrap();
        let body = splice(
            b"{}",
            &PageMeta {
                action: "invite",
                account_id: "a",
                credits_consumed: 1,
                timestamp: now,
                cache: None,
                credits_remaining: None,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["metadata"]["credits_remaining"], serde_json::Value::Null);
        assert!(v["metadata"].get("cache").is_none());
    }
}
