//! The shared cache tier: pages in Redis, so a page one replica fetched is a
//! hit on the others (`cache.shared: redis`).
//!
//! moka stays the first tier; Redis is asked only when a page is missing or
//! expired locally, and only briefly (a slow or absent Redis is a miss, never
//! an error). A page is written to Redis in the background after a fetch,
//! with the same freshness and stale windows as the local copy. Pages are
//! stored as `VG1`, the status (2 bytes), the credits (8), the fetch time in
//! Unix milliseconds (8), then the upstream's `data` bytes. Its Redis
//! failures read "shared cache tier unavailable", never the URL's password.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use jiff::Timestamp;
use redis::AsyncCommands;

use sha2::{Digest, Sha256};

use super::CacheKey;
use crate::redis::{Connection, RedisFailure};

/// How long a lookup may take before it counts as a miss.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);

/// A page as the shared tier holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPage {
    /// The upstream's status.
    pub status: StatusCode,
    /// What the upstream charged for it.
    pub credits: u64,
    /// When it was fetched.
    pub cached_at: Timestamp,
    /// The upstream's `data`.
    pub data: Bytes,
    /// How long it is fresh from `cached_at` (`None`: the reader's
    /// `cache.ttl_s`, for pages written before TTLs were per action).
    pub ttl: Option<Duration>,
}

/// Pages in Redis.
pub struct SharedTier {
    redis: Connection,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTier")
    }
}

/// The Redis key of a page; the account is a hash tag, so one account's
/// pages share a Cluster slot and a purge pattern.
fn redis_key(key: &CacheKey) -> String {
    if key.params().is_empty() {
        return format!(
            "vg:page:{{{}}}:{}:{}:{}",
            tag(key.account_id()),
            key.action(),
            key.offset(),
            key.count()
        );
    }
    // Params can be long and hold any character: their digest names them.
    let digest = Sha256::digest(key.params().as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "vg:page:{{{}}}:{}:p:{hex}",
        tag(key.account_id()),
        key.action()
    )
}

/// An account id as its keys' hash tag: `}` would end the tag early (and
/// let the purge pattern of `acc-1` match account `acc-1}:x`), so it is
/// written `%7D`, and `%` itself `%25`, which keeps the mapping one to one.
fn tag(account_id: &str) -> std::borrow::Cow<'_, str> {
    if !account_id.contains(['}', '%']) {
        return std::borrow::Cow::Borrowed(account_id);
    }
    std::borrow::Cow::Owned(account_id.replace('%', "%25").replace('}', "%7D"))
}

/// The SCAN pattern of one account's pages (every page with `None`).
fn purge_pattern(account_id: Option<&str>) -> String {
    match account_id {
        Some(account) => format!("vg:page:{{{}}}:*", glob_escape(&tag(account))),
        None => "vg:page:*".to_string(),
    }
}

/// Escapes glob characters so an account id matches itself only in SCAN.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Encodes a page for Redis (`VG2`: status, credits, cached_at, TTL, data).
pub(crate) fn encode(page: &SharedPage) -> Bytes {
    let mut out = BytesMut::with_capacity(29 + page.data.len());
    out.put_slice(b"VG2");
    out.put_u16(page.status.as_u16());
    out.put_u64(page.credits);
    out.put_i64(page.cached_at.as_millisecond());
    let ttl_ms = page.ttl.map_or(u64::MAX, |t| t.as_millis() as u64);
    out.put_u64(ttl_ms);
    out.put_slice(&page.data);
    out.freeze()
}

/// Decodes a page written by [`encode`] (or by a replica still writing
/// `VG1`, without a TTL); anything else is `None`.
pub(crate) fn decode(mut raw: Bytes) -> Option<SharedPage> {
    let version = raw.get(..3)?;
    let with_ttl = match version {
        b"VG1" => false,
        b"VG2" => true,
        _ => return None,
    };
    if raw.len() < if with_ttl { 29 } else { 21 } {
        return None;
    }
    raw.advance(3);
    let status = StatusCode::from_u16(raw.get_u16()).ok()?;
    let credits = raw.get_u64();
    let cached_at = Timestamp::from_millisecond(raw.get_i64()).ok()?;
    let ttl = if with_ttl {
        Some(raw.get_u64())
            .filter(|&ms| ms != u64::MAX)
            .map(Duration::from_millis)
    } else {
        None
    };
    Some(SharedPage {
        status,
        credits,
        cached_at,
        data: raw,
        ttl,
    })
}

impl SharedTier {
    /// The tier on the Redis at `url` (connects lazily, reconnects by itself).
    pub fn connect(url: &str) -> Result<Arc<Self>, String> {
        let redis = Connection::open(url).map_err(unavailable)?;
        Ok(Arc::new(Self { redis }))
    }

    /// The page under `key`, if Redis has it and answers quickly.
    pub async fn load(&self, key: &CacheKey) -> Option<SharedPage> {
        let mut conn = self.redis.manager();
        let name = redis_key(key);
        let get = conn.get::<_, Option<Vec<u8>>>(name);
        match tokio::time::timeout(LOOKUP_TIMEOUT, get).await {
            Ok(Ok(Some(raw))) => decode(Bytes::from(raw)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                let error = unavailable(self.redis.failure(e));
                tracing::debug!(%error, "shared cache lookup failed; treating it as a miss");
                None
            }
            Err(_) => None,
        }
    }

    /// Writes a page in the background, kept for `keep`.
    pub fn save(self: &Arc<Self>, key: &CacheKey, page: SharedPage, keep: Duration) {
        let this = Arc::clone(self);
        let name = redis_key(key);
        tokio::spawn(async move {
            let mut conn = this.redis.manager();
            let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
            let result: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&name)
                .arg(encode(&page).as_ref())
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await;
            if let Err(e) = result {
                let error = unavailable(this.redis.failure(e));
                tracing::debug!(%error, "shared cache write failed");
            }
        });
    }

    /// Deletes the pages of one account (or all, with `None`) in the background.
    pub fn purge(self: &Arc<Self>, account_id: Option<&str>) {
        let pattern = purge_pattern(account_id);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut conn = this.redis.manager();
            let mut cursor: u64 = 0;
            // Bounded: SCAN visits each key at most a few times; stop after many rounds regardless.
            for _ in 0..100_000 {
                let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await;
                let Ok((next, keys)) = scanned else {
                    tracing::warn!("shared cache purge interrupted: Redis unreachable");
                    return;
                };
                if !keys.is_empty() {
                    let _: redis::RedisResult<u64> = conn.del(keys).await;
                }
                if next == 0 {
                    return;
                }
                cursor = next;
            }
        });
    }
}

/// The tier's wording of a Redis failure, so its log lines are not read as
/// the ledger's or the rate limiter's.
fn unavailable(failure: RedisFailure) -> String {
    format!("shared cache tier unavailable: {failure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_garbage_is_refused() {
        let page = SharedPage {
            status: StatusCode::OK,
            credits: 2,
            cached_at: Timestamp::from_millisecond(1_795_000_000_123).unwrap(),
            data: Bytes::from_static(br#"{"viewers":[]}"#),
            ttl: Some(Duration::from_secs(600)),
        };
        assert_eq!(decode(encode(&page)), Some(page));
        assert_eq!(decode(Bytes::from_static(b"not a page at all, no")), None);
        assert_eq!(decode(Bytes::new()), None);
    }

    #[test]
    fn a_purge_pattern_reaches_its_own_account_only() {
        let page = |account: &str| redis_key(&CacheKey::new("get_viewers", account, 0, 10, ""));
        assert_eq!(purge_pattern(Some("acc-1")), "vg:page:{acc-1}:*");
        // With no glob character in these, the pattern is a prefix.
        let prefix = |account: &str| {
            purge_pattern(Some(account))
                .trim_end_matches('*')
                .to_string()
        };
        let accounts = ["acc-1", "acc-1}:x", "acc-1%7D:x", "acc-1}", "acc-1x"];
        for a in accounts {
            for b in accounts {
                assert_eq!(
                    page(b).starts_with(&prefix(a)),
                    a == b,
                    "purge {a} vs page of {b}"
                );
            }
        }
        assert_eq!(page("acc-1}:x"), "vg:page:{acc-1%7D:x}:get_viewers:0:10");
        assert_eq!(purge_pattern(None), "vg:page:*");
    }

    #[test]
    fn account_ids_cannot_widen_a_purge() {
        assert_eq!(glob_escape("acc-*"), "acc-\\*");
        let key = CacheKey::new("get_viewers", "acc-1", 10, 20, "");
        assert_eq!(redis_key(&key), "vg:page:{acc-1}:get_viewers:10:20");
        let search = CacheKey::new("search_people", "acc-*", 0, 0, r#"{"keywords":"a*b"}"#);
        let k = redis_key(&search);
        assert!(k.starts_with("vg:page:{acc-*}:search_people:p:"), "{k}");
        assert_eq!(k.len(), "vg:page:{acc-*}:search_people:p:".len() + 32);
    }
}
