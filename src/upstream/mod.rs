//! The upstream: a pooled HTTP/1.1 + HTTP/2 client over rustls (or plain HTTP),
//! key routing, retries of free failures.
//!
//! One call = one logical request to LinkupAPI, possibly several attempts.
//! Only failures the upstream never bills are retried (429, 5xx, connect
//! errors and resets), never sooner than its `Retry-After`. Answers are
//! parsed just enough to find `data` (kept as a zero-copy slice of the body)
//! and `metadata.credits_consumed`, the truth about what was billed.
//! Each attempt's [`Health`] feeds the key's breakers, scoped like the
//! failure: one account's, or the whole key's (see [`KeyBreakers`]).
//!
//! Here: the client, routing, the retry loop, pacing. One attempt (the
//! request sent, its answer read and judged) is `attempt.rs`; the key pool
//! `keys.rs`; the breakers `key_breakers.rs` and `breaker.rs`.

// Network timing is real time: attempt timeouts, the call's deadline and
// latency metrics measure the wire, which a test's fake clock does not move.
#![allow(clippy::disallowed_methods)]

mod attempt;
mod breaker;
mod key_breakers;
mod keys;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use thread_local::ThreadLocal;
use tokio_util::sync::CancellationToken;

pub(crate) use key_breakers::{BreakerSettings, Health, Scope};
pub(crate) use keys::{KeyPool, UpstreamKey};

use attempt::Attempt;

use crate::clock::Clock;
use crate::config::UpstreamConfig;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::ratelimit::{RedisGcra, ceil_secs};
use crate::scrub::Scrubber;

/// One logical call to the upstream.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamCall {
    /// Path below the base URL, e.g. `/v2/profiles`.
    pub path: String,
    /// The account (selects the key).
    pub account_id: String,
    /// The JSON body to send.
    pub body: Bytes,
    /// The request id, forwarded for correlation.
    pub request_id: HeaderValue,
    /// Whether it changes the world: then it is never retried once a byte
    /// may have reached the upstream, and any doubt is an unknown outcome.
    pub write: bool,
    /// A `GET` (account listings) rather than a `POST` with a body.
    pub get: bool,
    /// The request it is made for, told while an attempt is on the wire
    /// (its coalesced followers look); none for the gateway's own calls.
    pub context: Option<Arc<RequestContext>>,
}

/// Tells a request's context that an attempt of its call is on the wire,
/// until dropped (the attempt ended, or its task was cancelled).
struct OnWire<'a>(Option<&'a RequestContext>);

impl<'a> OnWire<'a> {
    fn new(context: Option<&'a RequestContext>) -> Self {
        if let Some(context) = context {
            context.set_on_wire(true);
        }
        OnWire(context)
    }
}

impl Drop for OnWire<'_> {
    fn drop(&mut self) {
        if let Some(context) = self.0 {
            context.set_on_wire(false);
        }
    }
}

/// Why a call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// Nothing reached the upstream, or it answered an error (V2 errors cost
    /// nothing): the tenant is not charged.
    Free(GatewayError),
    /// The request may have reached the upstream and the exchange then
    /// failed: it may have acted and billed. Never retried.
    Unknown {
        /// Whether it was a timeout (504) rather than a failure (502).
        timeout: bool,
        /// For the log only.
        detail: String,
    },
}

/// A successful upstream answer.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamReply {
    /// The upstream's status (2xx).
    pub status: StatusCode,
    /// The raw `data` JSON.
    pub data: Bytes,
    /// `metadata.credits_consumed`, or `None` when the upstream did not say.
    pub credits: Option<u64>,
    /// Time spent on the upstream, all attempts.
    pub upstream_ms: u64,
    /// Response headers a client may act on (`retry-after`, `x-ratelimit-*`).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// The pooled client of one thread.
type PooledClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The pooled clients and everything needed to reach the upstream.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// How every thread's client connects (TLS settings included).
    connector: HttpsConnector<HttpConnector>,
    /// One client, so one connection pool, per thread that calls: a pooled
    /// connection's task runs on the thread that opened it, so sharing a
    /// pool across serving threads would send each call to another
    /// thread and back (see `listener::Workers`).
    clients: ThreadLocal<PooledClient>,
    /// `scheme://authority[/prefix]` without a trailing slash.
    base: String,
    keys: KeyPool,
    timeout: Duration,
    deadline: Duration,
    max_retries: u32,
    max_pace_wait: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
    scrubber: Scrubber,
    /// Failures repeat while the upstream is down: logged once, then summed up.
    logs: LogThrottle,
    /// Cancelled at shutdown: a call still waiting for its turn is not sent.
    stopping: CancellationToken,
}

impl Upstream {
    /// Whether `bytes` hold a fragment of an upstream key.
    pub(crate) fn holds_a_key(&self, bytes: &[u8]) -> bool {
        self.scrubber.leaks(bytes)
    }

    /// Builds the client from configuration.
    pub(crate) fn new(
        config: &UpstreamConfig,
        clock: Clock,
        metrics: Arc<Metrics>,
        redis: Option<&Arc<RedisGcra>>,
        stopping: CancellationToken,
    ) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        // The TLS wrapper below decides per URI; without this https:// is refused.
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout.min(Duration::from_secs(10))));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config.ca_file.as_deref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let uri = &config.base_url;
        let prefix = uri.path().trim_end_matches('/');
        let base = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str()),
            prefix
        );
        Ok(Self {
            connector,
            clients: ThreadLocal::new(),
            base,
            keys: KeyPool::new(
                &config.keys,
                &clock,
                BreakerSettings {
                    failures: config.breaker_failures,
                    open_for: config.breaker_open,
                    accounts: config.breaker_accounts,
                    window: config.breaker_window,
                },
                redis,
            )?,
            timeout: config.timeout,
            deadline: config.deadline,
            max_retries: config.max_retries,
            max_pace_wait: config.max_pace_wait,
            scrubber: Scrubber::new(config.keys.iter().map(|k| k.secret.expose().as_bytes())),
            logs: LogThrottle::new(clock.clone()),
            clock,
            metrics,
            stopping,
        })
    }

    /// This thread's client.
    fn client(&self) -> &PooledClient {
        self.clients.get_or(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(64)
                .build(self.connector.clone())
        })
    }

    /// The key pool.
    pub(crate) fn keys(&self) -> &KeyPool {
        &self.keys
    }

    /// Whether some upstream key owns `account_id`.
    pub(crate) fn owns(&self, account_id: &str) -> bool {
        self.keys.route(account_id).is_some()
    }

    /// Calls the upstream, retrying free failures, within the key's pace and
    /// breaker and the overall deadline.
    ///
    /// Retried (they cost nothing and changed nothing): a connection that
    /// failed before any byte was sent, an upstream 429, and for reads an
    /// upstream 5xx. Never retried: anything after which the upstream may
    /// have acted or billed ([`UpstreamError::Unknown`]).
    pub(crate) async fn call(&self, call: &UpstreamCall) -> Result<UpstreamReply, UpstreamError> {
        let key = self
            .keys
            .route(&call.account_id)
            .ok_or(UpstreamError::Free(GatewayError::InvalidAccount))?;
        self.call_via(key, call).await
    }

    /// [`Upstream::call`] with `key`, whatever account the call names (the
    /// accounts listing asks each key for its own).
    pub(crate) async fn call_via(
        &self,
        key: &UpstreamKey,
        call: &UpstreamCall,
    ) -> Result<UpstreamReply, UpstreamError> {
        let started = Instant::now();
        let deadline = started + self.deadline;
        let mut attempt = 0u32;
        loop {
            let ticket = match key.breakers.permit(&call.account_id) {
                Ok(ticket) => ticket,
                Err(refused) => {
                    let (label, account) = match refused.scope {
                        Scope::Key => ("circuit_open", false),
                        Scope::Account => ("account_circuit_open", true),
                    };
                    self.metrics.upstream_refused(&key.name, label);
                    return Err(UpstreamError::Free(GatewayError::UpstreamCircuitOpen {
                        retry_after_s: ceil_secs(refused.wait),
                        account,
                    }));
                }
            };
            // A call whose turn is now goes out (shutdown drains in-flight
            // requests); one still waiting for it when shutdown begins does not.
            let paced = tokio::select! {
                biased;
                paced = self.pace(key, deadline) => paced.map_err(Some),
                () = self.stopping.cancelled() => Err(None),
            };
            if let Err(paced) = paced {
                key.breakers.abandon(ticket, &call.account_id);
                let error = match paced {
                    Some(e) => {
                        self.metrics.upstream_refused(&key.name, "paced");
                        e
                    }
                    None => not_sent_at_shutdown(),
                };
                return Err(UpstreamError::Free(error));
            }
            let attempt_started = Instant::now();
            let budget = self
                .timeout
                .min(deadline.saturating_duration_since(attempt_started));
            let give_up = attempt_started + budget;
            let on_wire = OnWire::new(call.context.as_deref());
            let (result, health) = self.attempt(call, key, started, give_up).await;
            drop(on_wire);
            let outcome = match &result {
                Attempt::Done(Ok(_)) => "ok",
                Attempt::Done(Err(UpstreamError::Unknown { timeout: true, .. })) => "timeout",
                Attempt::Done(Err(UpstreamError::Unknown { .. })) => "unknown",
                Attempt::Done(Err(UpstreamError::Free(e))) | Attempt::Retry(e, _) => outcome(e),
            };
            self.metrics
                .upstream(&key.name, outcome, attempt_started.elapsed());
            match key.breakers.record(ticket, &call.account_id, health) {
                Some(Scope::Key) => tracing::warn!(
                    upstream_key = %key.name,
                    "circuit breaker opened for the whole key: the upstream keeps failing"
                ),
                Some(Scope::Account) => tracing::warn!(
                    upstream_key = %key.name,
                    account_id = call.account_id.as_str(),
                    "circuit breaker opened for one account: the upstream keeps failing for it"
                ),
                None => {}
            }
            match result {
                Attempt::Done(result) => return result,
                Attempt::Retry(error, retry_after) => {
                    let wait = backoff(attempt).max(retry_after.unwrap_or_default());
                    if attempt >= self.max_retries || Instant::now() + wait >= deadline {
                        return Err(UpstreamError::Free(error));
                    }
                    if let Some(suppressed) = self.logs.admit("upstream.retry") {
                        tracing::warn!(
                            request_id = call.request_id.to_str().unwrap_or_default(),
                            upstream_key = %key.name,
                            attempt = attempt + 1,
                            error_code = error.code(),
                            wait_ms = wait.as_millis() as u64,
                            suppressed,
                            "upstream failure that cost nothing, retrying"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.stopping.cancelled() => {
                            return Err(UpstreamError::Free(not_sent_at_shutdown()));
                        }
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Waits for the key's pace, up to `upstream.max_pace_wait_ms` (and the
    /// deadline); past that the request gets 429 with the time to wait.
    async fn pace(&self, key: &UpstreamKey, deadline: Instant) -> Result<(), GatewayError> {
        let Some(pace) = &key.pace else {
            return Ok(());
        };
        // The pace runs on viewgate's clock (a test's fake one too); the
        // deadline is real time: what is left of it bounds the wait.
        let left = deadline.saturating_duration_since(Instant::now());
        let give_up = self.clock.now() + self.max_pace_wait.min(left);
        crate::ratelimit::wait_for(pace, &self.clock, give_up)
            .await
            .map_err(|wait| GatewayError::UpstreamPaced {
                retry_after_s: ceil_secs(wait),
            })
    }
}

/// The metrics label of a failed attempt.
fn outcome(error: &GatewayError) -> &'static str {
    match error {
        GatewayError::UpstreamTimeout => "timeout",
        GatewayError::UpstreamAuthFailed => "auth_failed",
        GatewayError::Upstream { status, .. } if status.as_u16() == 429 => "rate_limited",
        GatewayError::Upstream { status, .. } if status.is_server_error() => "error_5xx",
        GatewayError::Upstream { .. } => "error_4xx",
        _ => "unavailable",
    }
}

/// TLS for the upstream: the web PKI roots compiled in, plus `ca_file`'s.
/// The crypto provider is named explicitly, so two providers in the
/// dependency tree can never make rustls pick one at run time (or panic).
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "upstream.ca_file {}: no certificate in it",
                path.display()
            ));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Exponential backoff with jitter: about 100 ms, 200 ms, 400 ms, ... capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let jitter = getrandom::u32().unwrap_or(0) as u64 % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter + base / 4)
}

/// Why a call still waiting for its turn (the key's pace, a retry's
/// backoff) when shutdown began was not sent: nothing reached the upstream,
/// so the reservation is released and an idempotency key freed.
fn not_sent_at_shutdown() -> GatewayError {
    GatewayError::ServiceUnavailable {
        detail: "viewgate is shutting down; the upstream call was not sent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d >= Duration::from_millis(50), "{d:?}");
            assert!(d <= Duration::from_millis(6_250), "{d:?}");
        }
        assert!(backoff(0) < Duration::from_millis(200));
    }
}
