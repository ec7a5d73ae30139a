//! Building responses: the body type, JSON responses, and the metadata splice.
//!
//! A cached page is stored as the upstream's `data` bytes. Every answer is
//! written as `{"success":true,"data":` + those bytes + fresh metadata, so a
//! cache hit never parses or re-serialises the page, and never copies it
//! either: the body is three buffers (head, the shared page bytes, the
//! metadata tail) that hyper writes out with one vectored write.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use jiff::Timestamp;

use crate::clock::rfc3339_bytes;
use crate::logging::itoa;

/// The response body of the whole gateway: up to three in-memory buffers.
#[derive(Debug, Default)]
pub struct Body {
    chunks: [Bytes; 3],
    next: usize,
}

impl Body {
    /// A body of one buffer.
    pub fn new(bytes: Bytes) -> Self {
        Self {
            chunks: [bytes, Bytes::new(), Bytes::new()],
            next: 0,
        }
    }

    /// A page: `head`, then `data` (shared, not copied), then `tail`.
    pub fn page(head: Bytes, data: Bytes, tail: Bytes) -> Self {
        Self {
            chunks: [head, data, tail],
            next: 0,
        }
    }

    fn remaining(&self) -> u64 {
        self.chunks[self.next.min(3)..]
            .iter()
            .map(|c| c.len() as u64)
            .sum()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        while self.next < 3 {
            let i = self.next;
            self.next += 1;
            let chunk = std::mem::take(&mut self.chunks[i]);
            if !chunk.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    page_response(status, Body::new(body))
}

/// A response with a JSON body made of parts.
pub fn page_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
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

/// The constant start of every success body.
static PAGE_HEAD: Bytes = Bytes::from_static(b"{\"success\":true,\"data\":");

/// The body `{"success":true,"data":DATA,"metadata":{...}}` around `data`,
/// without copying `data`.
pub fn page_body(data: &Bytes, meta: &PageMeta<'_>) -> Body {
    Body::page(PAGE_HEAD.clone(), data.clone(), metadata_tail(meta))
}

/// [`page_body`] as one buffer.
pub fn splice(data: &[u8], meta: &PageMeta<'_>) -> Bytes {
    let tail = metadata_tail(meta);
    let mut out = Vec::with_capacity(PAGE_HEAD.len() + data.len() + tail.len());
    out.extend_from_slice(&PAGE_HEAD);
    out.extend_from_slice(data);
    out.extend_from_slice(&tail);
    Bytes::from(out)
}

/// `,"metadata":{...}}`: what follows the page's `data`.
fn metadata_tail(meta: &PageMeta<'_>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b",\"metadata\":{\"action\":");
    // Strings go through serde_json so every character is escaped correctly.
    let _ = serde_json::to_writer(&mut out, meta.action);
    out.extend_from_slice(b",\"account_id\":");
    let _ = serde_json::to_writer(&mut out, meta.account_id);
    out.extend_from_slice(b",\"credits_consumed\":");
    out.extend_from_slice(itoa(meta.credits_consumed, &mut [0; 20]).as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
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
            out.extend_from_slice(b",\"credits_remaining\":");
            out.extend_from_slice(itoa(n, &mut [0; 20]).as_bytes());
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
