//! The page cache: viewer pages by (action, account_id, offset, count).
//!
//! Pages live in a moka cache bounded by bytes. Each entry carries its own
//! `fresh_until` and `stale_until`, read from viewgate's clock, so freshness is
//! decided here (and testable with a fake clock) while moka only evicts: its
//! own TTL is set to the stale bound so nothing useful is dropped early.

pub(crate) mod shared;
mod single_flight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use jiff::Timestamp;

use shared::{SharedPage, SharedTier};
pub use single_flight::{Follower, Leader, Role, SingleFlight};

use crate::clock::Clock;
use crate::config::CacheConfig;

/// Which page: equal requests (after defaults are applied) share a key.
/// `get_viewers` pages are keyed by (account_id, offset, count); other reads
/// by their canonical params (keys sorted, no spaces).
///
/// A miss hashes its key about a dozen times (the flight table, moka's
/// lookups, inserts and rehashes) and clones it three times, so the key is
/// made for that: hashed once when it is made (hashing its strings each time
/// was 3-6 % of a miss's CPU), its hash seeded per process so tenants cannot
/// aim collisions at a bucket, and its text one shared allocation made once.
#[derive(Debug, Clone)]
pub struct CacheKey {
    /// `action`, `account_id` and `params`, back to back (each valid UTF-8).
    text: Arc<[u8]>,
    /// Where `action` ends and `account_id` starts.
    action_end: u32,
    /// Where `account_id` ends and `params` starts.
    account_end: u32,
    offset: u32,
    count: u32,
    digest: u64,
}

impl CacheKey {
    /// The key of one page: `params` is empty for `get_viewers`, whose page
    /// is (account_id, offset, count); other reads give their canonical
    /// params and 0 for offset and count.
    pub fn new(action: &str, account_id: &str, offset: u32, count: u32, params: &str) -> Self {
        use std::hash::BuildHasher as _;
        static SEED: std::sync::OnceLock<foldhash::quality::RandomState> =
            std::sync::OnceLock::new();
        let digest = SEED
            .get_or_init(Default::default)
            .hash_one((action, account_id, offset, count, params));
        // One allocation, sized exactly (the iterator knows its length).
        let text: Arc<[u8]> = action
            .bytes()
            .chain(account_id.bytes())
            .chain(params.bytes())
            .collect();
        // Request bodies are capped far below 4 GiB, so the offsets fit.
        let action_end = u32::try_from(action.len()).unwrap_or(u32::MAX);
        let account_end = u32::try_from(action.len() + account_id.len()).unwrap_or(u32::MAX);
        Self {
            text,
            action_end,
            account_end,
            offset,
            count,
            digest,
        }
    }

    /// The action (only cacheable ones).
    pub fn action(&self) -> &str {
        self.part(0, self.action_end)
    }

    /// The account.
    pub fn account_id(&self) -> &str {
        self.part(self.action_end, self.account_end)
    }

    /// Items skipped (`get_viewers`).
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Page size (`get_viewers`).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Canonical params of other reads; empty for `get_viewers`.
    pub fn params(&self) -> &str {
        self.part(self.account_end, u32::MAX)
    }

    /// The text from `from` to `to` (or its end): one of the three strings
    /// it was made of, so valid UTF-8 (read off the request path only).
    fn part(&self, from: u32, to: u32) -> &str {
        let end = self.text.len().min(to as usize);
        std::str::from_utf8(&self.text[from as usize..end]).unwrap_or_default()
    }

    fn weight(&self) -> usize {
        self.text.len() + 8
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        // The digest first: unequal keys almost always differ there.
        self.digest == other.digest
            && self.offset == other.offset
            && self.count == other.count
            && self.action_end == other.action_end
            && self.account_end == other.account_end
            && self.text == other.text
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// A stored page: the upstream's `data` bytes and when it was fetched.
#[derive(Debug)]
pub struct CachedPage {
    /// The upstream's status.
    pub status: StatusCode,
    /// The upstream's `data`, byte for byte.
    pub data: Bytes,
    /// What the upstream charged for it (what a hit saves).
    pub credits: u64,
    /// When it was fetched (wall clock).
    pub cached_at: Timestamp,
    /// Monotonic time it was fetched.
    pub fetched: Instant,
    /// Served as a hit until then.
    pub fresh_until: Instant,
    /// Served as stale (upstream failing) until then.
    pub stale_until: Instant,
    /// Served as stale while a background refresh runs until then.
    pub revalidate_until: Instant,
}

impl CachedPage {
    /// Whether it is fresh at `now`.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Whether it is expired but may be served while it is refreshed in the background.
    pub fn may_revalidate(&self, now: Instant) -> bool {
        !self.is_fresh(now) && now < self.revalidate_until
    }

    /// Whether it may stand in for a failed upstream at `now`.
    pub fn may_serve_stale(&self, now: Instant) -> bool {
        now < self.stale_until
    }

    /// Whole seconds since it was fetched, for the `age` header.
    pub fn age_s(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.fetched).as_secs()
    }
}

/// What an entry costs beyond its page bytes: the key's boxes, the Arc'd
/// page header, moka's node and frequency sketch share, and the allocator's
/// size-class rounding. Measured, not guessed: with a 160-byte estimate a
/// cache weighed at 128 MiB (45,100 pages of about 2.9 KB) held 177 MiB of
/// RSS above the process's base (bench/run, RSS part), so about 1.1 KB per
/// entry went uncounted. Counting it keeps `cache.max_bytes` a real bound.
const ENTRY_OVERHEAD: usize = 1_200;

/// What a single-flight fetch publishes to the requests waiting on it.
pub type Flight = Result<Arc<CachedPage>, crate::error::GatewayError>;

/// A table of page fetches: each carries its leader's request context, so
/// a follower can tell whether the call it waits for is on the wire.
pub(crate) type Flights = SingleFlight<CacheKey, Flight, Arc<crate::context::RequestContext>>;
/// A place in a [`Flights`] fetch.
pub(crate) type FlightRole = Role<CacheKey, Flight, Arc<crate::context::RequestContext>>;
/// The leader of a [`Flights`] fetch.
pub(crate) type FlightLeader = Leader<CacheKey, Flight, Arc<crate::context::RequestContext>>;
/// A follower of a [`Flights`] fetch.
pub(crate) type FlightFollower = Follower<Flight, Arc<crate::context::RequestContext>>;

/// The cache of pages, and the table of pages being fetched right now.
///
/// Clones share both, and so do reconfigured copies ([`PageCache::retimed`]),
/// so a configuration reload keeps every page and every in-flight fetch.
#[derive(Clone)]
pub struct PageCache {
    pages: moka::future::Cache<CacheKey, Arc<CachedPage>, foldhash::fast::RandomState>,
    /// Fetches in flight, by key: identical misses wait on one upstream call.
    pub(crate) flights: Flights,
    /// Fetches of requests whose leaders in `flights` were refused for their
    /// own budgets, again and again; only a request that can pay leads one.
    pub(crate) rescues: Flights,
    clock: Clock,
    ttl: Duration,
    stale_if_error: Duration,
    stale_while_revalidate: Duration,
    shared: Option<Arc<SharedTier>>,
}

impl PageCache {
    /// A cache following `config`, reading freshness from `clock`, whose
    /// pages are fresh for at most `longest_ttl` (the longest TTL of any
    /// action: moka may drop an entry once no window can still use it).
    pub fn new(config: &CacheConfig, clock: Clock, longest_ttl: Duration) -> Self {
        let pages = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<CachedPage>| {
                u32::try_from(k.weight() + v.data.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(
                longest_ttl.max(config.ttl)
                    + config.stale_if_error.max(config.stale_while_revalidate),
            )
            // Needed by purge_account (invalidate_entries_if).
            .support_invalidation_closures()
            // A fast seeded hasher: the key is short and hashed on every request.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            pages,
            flights: SingleFlight::default(),
            rescues: SingleFlight::default(),
            clock,
            ttl: config.ttl,
            stale_if_error: config.stale_if_error,
            stale_while_revalidate: config.stale_while_revalidate,
            shared: None,
        }
    }

    /// Adds the shared tier (pages in Redis, seen by every replica).
    pub fn with_shared(mut self, shared: Arc<SharedTier>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The same pages and flights with new freshness settings (after a
    /// reload). The size bound cannot change without a restart.
    pub fn retimed(&self, config: &CacheConfig) -> Self {
        Self {
            ttl: config.ttl,
            stale_if_error: config.stale_if_error,
            stale_while_revalidate: config.stale_while_revalidate,
            ..self.clone()
        }
    }

    /// The page stored under `key`, fresh or not. A page missing or expired
    /// here is looked up in the shared tier, if there is one, and kept here
    /// when that copy is fresher.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedPage>> {
        let local = self.pages.get(key).await;
        let Some(shared) = &self.shared else {
            return local;
        };
        if local.as_ref().is_some_and(|p| p.is_fresh(self.clock.now())) {
            return local;
        }
        let Some(remote) = shared.load(key).await else {
            return local;
        };
        if local
            .as_ref()
            .is_some_and(|p| p.cached_at >= remote.cached_at)
        {
            return local;
        }
        let page = Arc::new(self.page_fetched_at(
            remote.status,
            remote.data,
            remote.credits,
            remote.cached_at,
            remote.ttl.unwrap_or(self.ttl),
        ));
        self.pages.insert(key.clone(), Arc::clone(&page)).await;
        Some(page)
    }

    /// Whether [`PageCache::get`] may find a page: moka's answer without
    /// counting a read (a miss's second look, just after its first, would
    /// otherwise run moka's bookkeeping twice), or always with a shared
    /// tier, whose pages only a lookup knows.
    pub fn may_have(&self, key: &CacheKey) -> bool {
        self.shared.is_some() || self.pages.contains_key(key)
    }

    /// A page fetched at `cached_at` (wall clock), with its deadlines on the
    /// monotonic clock.
    fn page_fetched_at(
        &self,
        status: StatusCode,
        data: Bytes,
        credits: u64,
        cached_at: jiff::Timestamp,
        ttl: Duration,
    ) -> CachedPage {
        let now = self.clock.now();
        let age = self
            .clock
            .wall()
            .duration_since(cached_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let fetched = now.checked_sub(age).unwrap_or(now);
        let fresh_until = fetched + ttl;
        CachedPage {
            status,
            data,
            credits,
            cached_at,
            fetched,
            fresh_until,
            stale_until: fresh_until + self.stale_if_error,
            revalidate_until: fresh_until + self.stale_while_revalidate,
        }
    }

    /// Builds a page fetched now, fresh for `ttl` (`None`: `cache.ttl_s`), and stores it.
    pub async fn store(
        &self,
        key: CacheKey,
        status: StatusCode,
        data: Bytes,
        credits: u64,
        ttl: Option<Duration>,
    ) -> Arc<CachedPage> {
        let ttl = ttl.unwrap_or(self.ttl);
        // A slice of the upstream body can keep hyper's whole read buffer
        // (several times the page) alive for as long as the page is cached:
        // store an exact copy, so `cache.max_bytes` bounds real memory.
        let data = Bytes::copy_from_slice(&data);
        let page = Arc::new(self.page_fetched_at(status, data, credits, self.clock.wall(), ttl));
        if let Some(shared) = &self.shared {
            let keep = ttl + self.stale_if_error.max(self.stale_while_revalidate);
            let copy = SharedPage {
                status,
                credits,
                cached_at: page.cached_at,
                data: page.data.clone(),
                ttl: Some(ttl),
            };
            shared.save(&key, copy, keep);
        }
        self.pages.insert(key, Arc::clone(&page)).await;
        page
    }

    /// Drops every page of `account_id`.
    pub fn purge_account(&self, account_id: &str) {
        let account = account_id.to_string();
        // invalidate_entries_if only fails when support was not enabled at build time.
        let _ = self
            .pages
            .invalidate_entries_if(move |k, _| k.account_id() == account);
        if let Some(shared) = &self.shared {
            shared.purge(Some(account_id));
        }
    }

    /// Drops every page.
    pub fn purge_all(&self) {
        self.pages.invalidate_all();
        if let Some(shared) = &self.shared {
            shared.purge(None);
        }
    }

    /// Applies pending evictions and insertions so [`PageCache::size`] is exact.
    pub async fn sync(&self) {
        self.pages.run_pending_tasks().await;
    }

    /// Entries and weighted bytes (approximate until [`PageCache::sync`]).
    pub fn size(&self) -> (u64, u64) {
        (self.pages.entry_count(), self.pages.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::CacheKey;

    #[test]
    fn a_key_keeps_its_parts_and_equal_parts_make_equal_keys() {
        let key = CacheKey::new("search_people", "acc-1", 0, 0, r#"{"keywords":"a"}"#);
        assert_eq!(key.action(), "search_people");
        assert_eq!(key.account_id(), "acc-1");
        assert_eq!(key.params(), r#"{"keywords":"a"}"#);
        assert_eq!((key.offset(), key.count()), (0, 0));
        let same = CacheKey::new("search_people", "acc-1", 0, 0, r#"{"keywords":"a"}"#);
        assert_eq!(key, same);
        let state = foldhash::fast::RandomState::default();
        assert_eq!(state.hash_one(&key), state.hash_one(&same));
        assert_eq!(state.hash_one(key.clone()), state.hash_one(&same));
    }

    #[test]
    fn parts_moved_across_a_boundary_make_another_key() {
        // The text is the parts back to back: where each ends is part of the key.
        let a = CacheKey::new("get_viewers", "acc-1", 10, 10, "");
        let b = CacheKey::new("get_viewersa", "cc-1", 10, 10, "");
        let c = CacheKey::new("get_viewers", "acc-", 10, 10, "1");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_ne!(a, CacheKey::new("get_viewers", "acc-1", 20, 10, ""));
        assert_ne!(a, CacheKey::new("get_viewers", "acc-1", 10, 20, ""));
        assert_eq!(b.account_id(), "cc-1");
        assert_eq!(c.params(), "1");
    }
}
