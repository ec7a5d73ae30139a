//! Request id and access log: the outermost stage.
//!
//! Echoes a client's `x-request-id` when it is 1 to 128 characters of
//! `A-Z a-z 0-9 . _ -`, otherwise generates one from the OS's CSPRNG (a
//! counter would let a tenant count other tenants' requests); puts a
//! [`RequestContext`] in
//! the request's extensions; and, when the response is ready, sets the
//! `x-request-id` header, writes the one JSON access log line and records
//! the request's metrics (in-flight, count, latency, credits).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::auth::X_API_KEY;
use crate::context::RequestContext;
use crate::keys::KeyHash;
use crate::logging::AccessLine;
use crate::metrics::{Done, InFlight, Metrics};
use crate::response::Body;
use crate::tenant::Tenants;
use crate::upstream::Upstream;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_ADMIN_KEY: HeaderName = HeaderName::from_static("x-admin-key");

/// Adds the request id, the access log line and the request metrics.
#[derive(Debug, Clone)]
pub(crate) struct RequestIdLayer {
    metrics: Arc<Metrics>,
    keys: KnownKeys,
}

impl RequestIdLayer {
    /// Records into `metrics`; a client-sent id that holds one of `keys`
    /// is never echoed.
    pub(crate) fn new(metrics: Arc<Metrics>, keys: KnownKeys) -> Self {
        Self { metrics, keys }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            metrics: Arc::clone(&self.metrics),
            keys: self.keys.clone(),
        }
    }
}

/// The keys this gateway knows, which a client-sent `x-request-id` must not
/// hold (it would be echoed and logged): a tenant's or the admin key, whole
/// (stored hashed, so only a whole one can be recognised), and any
/// fragment of an upstream key (held in the clear, like the scrubber's).
#[derive(Debug, Clone)]
pub(crate) struct KnownKeys {
    pub(crate) tenants: Arc<Tenants>,
    pub(crate) admin: Option<KeyHash>,
    pub(crate) upstream: Arc<Upstream>,
}

impl KnownKeys {
    /// Whether `id` is, or holds, one of these keys.
    fn in_id(&self, id: &[u8]) -> bool {
        // Looked up as auth looks up a presented key.
        self.tenants.authenticate(id).is_some()
            || self
                .admin
                .is_some_and(|admin| admin.ct_eq(&KeyHash::of(id)))
            || self.upstream.holds_a_key(id)
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestId<S> {
    inner: S,
    metrics: Arc<Metrics>,
    keys: KnownKeys,
}

/// Whether a client-sent id may be echoed (it ends up in a header and a log line).
pub(crate) fn acceptable_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Bytes of a presented credential an id may not share: the upstream
/// scrubber's rule for key fragments is 8, but an id is the client's own
/// text and short runs (`req-2026`) are common; 16 characters of a random
/// key already carry far too much of it to be echoed.
const KEY_RUN: usize = 16;

/// The longest credential worth looking for in an id.
const MAX_CREDENTIAL: usize = 256;

/// Whether a client-sent id holds part of a credential the same request
/// presents (a client that put its key in the wrong header, whole or cut):
/// such an id would be echoed and logged, so a fresh one replaces it.
fn carries_a_key(id: &[u8], headers: &http::HeaderMap) -> bool {
    let tokens = [&X_API_KEY, &X_ADMIN_KEY, &http::header::AUTHORIZATION]
        .into_iter()
        .flat_map(|name| headers.get_all(name))
        // A value may list several keys (`k1, k2`) or carry a scheme
        // (`Bearer k`): each token is checked.
        .flat_map(|value| value.as_bytes().split(|&b| b == b',' || b == b' '))
        // Shorter than any credential (a scheme word such as `Bearer`), or
        // longer than any (this runs before auth: a 16 KiB header must not
        // cost more than a real key does).
        .filter(|token| (8..=MAX_CREDENTIAL).contains(&token.len()));
    let mut id_runs: Option<foldhash::HashSet<&[u8]>> = None;
    for token in tokens {
        if token.len() < KEY_RUN {
            if id.windows(token.len()).any(|w| w == token) {
                return true;
            }
            continue;
        }
        // The id's runs once (at most 113), then one lookup per run of the token.
        let runs = id_runs.get_or_insert_with(|| id.windows(KEY_RUN).collect());
        if token.windows(KEY_RUN).any(|part| runs.contains(part)) {
            return true;
        }
    }
    false
}

/// Random bytes per generated id: 128 bits, as many as a UUIDv4 carries
/// (122), so ids neither collide nor can be guessed.
const ID_BYTES: usize = 16;

/// Random bytes drawn from the OS at a time: one `getrandom` call serves 256
/// ids, so the hot path makes no syscall per request.
const POOL_BYTES: usize = 4096;

/// One thread's supply of random bytes; each byte is handed out once.
struct Pool {
    bytes: [u8; POOL_BYTES],
    used: usize,
}

thread_local! {
    // Per thread, so no lock is shared between requests; const-initialised
    // and without a destructor, so it is usable for the whole thread.
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bytes: [0; POOL_BYTES],
            used: POOL_BYTES,
        })
    };
}

impl Pool {
    fn take(&mut self) -> [u8; ID_BYTES] {
        if self.used + ID_BYTES > POOL_BYTES {
            if let Err(error) = getrandom::fill(&mut self.bytes) {
                fallback_fill(&mut self.bytes, error);
            }
            self.used = 0;
        }
        let mut out = [0; ID_BYTES];
        out.copy_from_slice(&self.bytes[self.used..self.used + ID_BYTES]);
        self.used += ID_BYTES;
        out
    }
}

/// Fills `bytes` when the OS random source fails (it should not, once the
/// system has booted): SipHash keyed by std's `RandomState` (a secret key,
/// fresh for each refill), so ids stay unique and hard to guess instead of
/// the request failing for want of an id.
fn fallback_fill(bytes: &mut [u8], error: getrandom::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::error!(%error, "the OS random source failed; request ids fall back to a keyed hash");
    }
    let key = std::collections::hash_map::RandomState::new();
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = key.build_hasher();
        hasher.write_usize(i);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
    }
}

/// A new id: 16 random bytes as 32 lower-case hex digits.
fn generate_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = POOL.with_borrow_mut(Pool::take);
    let mut id = [0u8; 2 * ID_BYTES];
    for (digits, byte) in id.chunks_exact_mut(2).zip(random) {
        digits[0] = HEX[usize::from(byte >> 4)];
        digits[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

impl<S, B> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Latency is measured in real time, whatever clock the path runs on.
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        // The header is viewgate's: remove the client's before deciding.
        let id = match request.headers_mut().remove(&X_REQUEST_ID) {
            Some(v)
                if acceptable_request_id(v.as_bytes())
                    && !carries_a_key(v.as_bytes(), request.headers())
                    // A key sent here instead of in its own header.
                    && !self.keys.in_id(v.as_bytes()) =>
            {
                v
            }
            _ => generate_request_id(),
        };
        let context = RequestContext::new(id, started);
        request.extensions_mut().insert(Arc::clone(&context));
        ResponseFuture {
            inner: self.inner.call(request),
            context,
            in_flight: self.metrics.request_started(),
            metrics: Arc::clone(&self.metrics),
            logged: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// Sets the header and logs once the inner response is ready; logs the
    /// request as abandoned if the client hangs up first.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        context: Arc<RequestContext>,
        in_flight: InFlight,
        metrics: Arc<Metrics>,
        logged: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.logged {
                // The client went away before its answer: every request still
                // gets its one access line (nginx's 499), and a charge its
                // call settles later goes on a settle line of its own.
                this.context.fields().error_code = Some(CLIENT_CLOSED.to_string());
                let took = this.context.started.elapsed();
                log_access(this.context, CLIENT_CLOSED_STATUS, took);
                record(this.metrics, this.context, CLIENT_CLOSED_STATUS, took);
            }
        }
    }
}

/// Status logged for a request whose client hung up before its answer.
const CLIENT_CLOSED_STATUS: u16 = 499;
/// Error code logged for it.
const CLIENT_CLOSED: &str = "CLIENT_CLOSED_REQUEST";

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), this.context.request_id.clone());
        if this.context.closes_connection() {
            // A refused body that could not be read to its end: the
            // connection closes after this answer, and says so.
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let status = response.status().as_u16();
        *this.logged = true;
        // One reading of the clock times the line, the metric and the log.
        let took = this.context.started.elapsed();
        log_access(this.context, status, took);
        record(this.metrics, this.context, status, took);
        Poll::Ready(Ok(response))
    }
}

fn record(metrics: &Metrics, context: &RequestContext, status: u16, took: Duration) {
    let f = context.fields();
    // Credits of a request without a tenant go nowhere (there are none).
    let credits = match f.tenant {
        Some(_) => (f.credits_charged, f.credits_saved),
        None => (0, 0),
    };
    metrics.request_done(Done {
        tenant: f.tenant.as_deref(),
        status,
        cache: f.cache,
        error: f.error_code.as_deref().zip(f.error_source),
        took,
        credits,
    });
}

fn log_access(context: &RequestContext, status: u16, took: Duration) {
    let mut f = context.fields();
    // From here on, a charge goes on a settle line of its own (see `RequestContext::charge`).
    f.answered = true;
    let total_ms = took.as_secs_f64() * 1000.0;
    AccessLine {
        request_id: context.request_id_str(),
        tenant: f.tenant.as_deref(),
        action: f.action.as_deref(),
        account_id: f.account_id.as_deref(),
        offset: f.offset,
        count: f.count,
        status,
        cache: f.cache.map(|c| c.as_str()),
        credits_charged: f.credits_charged,
        upstream_ms: f.upstream_ms,
        total_ms: (total_ms * 1000.0).round() / 1000.0,
        error_code: f.error_code.as_deref(),
        degraded: f.degraded,
        quote: f.quote.then_some(true),
    }
    .write(context.started + took);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_ids_are_echoed() {
        assert!(acceptable_request_id(b"abc-123_X.y"));
        assert!(!acceptable_request_id(b""));
        assert!(!acceptable_request_id(&[b'a'; 129]));
        assert!(!acceptable_request_id(b"a b"));
        assert!(!acceptable_request_id(b"a\r\nx-evil: 1"));
        assert!(!acceptable_request_id("é".as_bytes()));
    }

    #[test]
    fn ids_holding_part_of_a_presented_key_are_not_echoed() {
        let key = "vg_Jkoesc-aJwVqg1FZppGwmPcrZ5QBiFjTRMNszh_Ke9k";
        let mut headers = http::HeaderMap::new();
        headers.insert(
            &X_API_KEY,
            format!("other-key-0123456789abcdef, {key}")
                .parse()
                .unwrap(),
        );
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer adm_0123456789ABCDEFGHIJ".parse().unwrap(),
        );
        for held in [
            key,
            &key[3..],
            &key[..20],
            "x-adm_0123456789ABCDEF-y",
            "abcother-key-0123456789",
        ] {
            assert!(carries_a_key(held.as_bytes(), &headers), "{held}");
        }
        // Ids sharing less than 16 characters with any key are echoed.
        for free in ["trace-42", "vg_Jkoesc-aJwVq", "Bearer-req-7"] {
            assert!(!carries_a_key(free.as_bytes(), &headers), "{free}");
        }
    }

    /// Regression: generated ids were a per-process prefix plus a counter,
    /// so a tenant could count the requests other tenants made between two
    /// of its own.
    #[test]
    fn generated_ids_are_unique_well_formed_and_unrelated() {
        let ids: Vec<String> = (0..10_000)
            .map(|_| generate_request_id().to_str().unwrap().to_string())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            assert!(acceptable_request_id(id.as_bytes()));
        }
        for pair in ids.windows(2) {
            let (a, b) = (pair[0].as_bytes(), pair[1].as_bytes());
            // A counter keeps the front and changes the end; 16 equal leading
            // hex digits happen by chance once in 2^64 pairs.
            let common_prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            assert!(common_prefix < 16, "{} then {}", pair[0], pair[1]);
            // Independent digits are equal 1 time in 16: 2 of 32 on average.
            let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
            assert!(equal <= 16, "{} then {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn threads_draw_different_ids() {
        let other =
            std::thread::spawn(|| (0..300).map(|_| generate_request_id()).collect::<Vec<_>>())
                .join()
                .unwrap();
        let here: std::collections::HashSet<_> = (0..300).map(|_| generate_request_id()).collect();
        assert!(other.iter().all(|id| !here.contains(id)));
    }

    #[test]
    fn a_failed_os_source_still_yields_distinct_bytes() {
        let error = getrandom::Error::UNSUPPORTED;
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fallback_fill(&mut a, error);
        fallback_fill(&mut b, error);
        assert_ne!(a, b);
        assert_ne!(a[..16], a[16..32]);
    }
}
