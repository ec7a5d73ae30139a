//! Delivering alerts: the outbox in the ledger, drained by one task per
//! gateway, each alert POSTed as JSON and signed.
//!
//! Every attempt sends the alert (its JSON as stored) with
//! `x-viewgate-timestamp: <unix seconds>`, `x-viewgate-alert-id: <id>` and
//! `x-viewgate-signature: sha256=<hex>`, the HMAC-SHA256 under the webhook
//! key of `"<timestamp>.<body>"`: the receiver recomputes it ([`verify`]),
//! and rejects old timestamps to refuse replays. A 2xx answer removes the
//! alert from the outbox; anything else (or no answer within the timeout)
//! sets its next attempt 1 s, 2 s, 4 s, ... (at most [`MAX_BACKOFF`]) later,
//! in the ledger, so a restart resumes the schedule instead of losing or
//! repeating it. An alert still undelivered [`GIVE_UP_AFTER`] after it fired
//! is dropped with an error line.
//!
//! Taking an entry leases it (see [`Ledger::outbox_take`]), so replicas
//! sharing a Redis ledger never send one entry at once. Delivery is at least
//! once: a process killed after the receiver answered 2xx but before the
//! outbox heard of it sends that alert again after the lease; the alert id
//! lets a receiver tell.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::{Request, header};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::config::WebhookConfig;
use crate::keys::Secret;
use crate::ledger::{Ledger, OutboxEntry};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How often the outbox is looked at when nothing wakes the task.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// The longest wait between two attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// An alert undelivered this long after it fired is dropped.
pub(super) const GIVE_UP_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);

/// Entries taken from the outbox per look.
const TAKE_AT_MOST: usize = 16;

/// `x-viewgate-signature: sha256=<hex>` for `body` sent at `timestamp`
/// (Unix seconds): HMAC-SHA256 under `key` of `"<timestamp>.<body>"`.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// Whether `signature` (the header's value) signs `body` at `timestamp`
/// under `key`; compared in constant time.
pub fn verify(key: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = sign(key, timestamp, body);
    expected.as_bytes().ct_eq(signature.as_bytes()).into()
}

/// The wait before attempt `attempts + 1`: 1 s doubling, at most [`MAX_BACKOFF`].
pub(super) fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// The delivery task's parts.
pub(super) struct Sender {
    url: http::Uri,
    secret: Secret,
    timeout: Duration,
    ledger: Arc<dyn Ledger>,
    clock: Clock,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Sender {
    pub(super) fn new(
        config: &WebhookConfig,
        ledger: Arc<dyn Ledger>,
        clock: Clock,
    ) -> Result<Sender, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("alerts.webhook_url: cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(config.timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Sender {
            url: config.url.clone(),
            secret: config.secret.clone(),
            timeout: config.timeout,
            ledger,
            clock,
            client,
        })
    }

    /// Delivers what is due until `stopped` turns true or its sender is dropped.
    pub(super) async fn run(self, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
        loop {
            if *stopped.borrow() {
                return;
            }
            self.deliver_due().await;
            tokio::select! {
                changed = stopped.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }

    /// One look at the outbox: sends the entries due now, at most
    /// [`TAKE_AT_MOST`]. Each is taken (leased) just before it is sent, one
    /// at a time: a lease taken for a whole batch would run out while the
    /// batch's first entries were still being sent, and another replica
    /// would send the last ones too.
    async fn deliver_due(&self) {
        // Long enough for the attempt and its bookkeeping; after it, an
        // entry whose sender died is due again for everyone.
        let lease = self.timeout + Duration::from_secs(30);
        for _ in 0..TAKE_AT_MOST {
            let now = self.clock.wall();
            let entry = match self
                .ledger
                .outbox_take(now.as_millisecond(), lease, 1)
                .await
            {
                Ok(mut entries) => entries.pop(),
                Err(error) => {
                    tracing::debug!(%error, "the alert outbox cannot be read now");
                    return;
                }
            };
            let Some(entry) = entry else { return };
            self.deliver(entry).await;
        }
    }

    async fn deliver(&self, entry: OutboxEntry) {
        let id = entry.alert.id.as_str();
        let sent = self.post(&entry).await;
        let now = self.clock.wall();
        let recorded = match &sent {
            Ok(()) => {
                tracing::info!(
                    alert_id = id,
                    attempts = entry.attempts,
                    "budget alert delivered to the webhook"
                );
                self.ledger.outbox_done(id).await
            }
            Err(reason) => {
                let fired = entry.alert.fired_at.parse::<Timestamp>().unwrap_or(now);
                let age = now.duration_since(fired).unsigned_abs();
                if age >= GIVE_UP_AFTER {
                    tracing::error!(
                        alert_id = id,
                        attempts = entry.attempts,
                        reason = reason.as_str(),
                        "budget alert given up: the webhook did not take it in 3 days"
                    );
                    self.ledger.outbox_done(id).await
                } else {
                    let wait = backoff(entry.attempts);
                    let next = now.checked_add(wait).unwrap_or(now).as_millisecond();
                    let recorded = self.ledger.outbox_retry(id, next).await;
                    tracing::warn!(
                        alert_id = id,
                        attempts = entry.attempts,
                        reason = reason.as_str(),
                        retry_in_s = wait.as_secs(),
                        "budget alert not delivered to the webhook; retrying"
                    );
                    recorded
                }
            }
        };
        if let Err(error) = recorded {
            // The lease still holds it: it is taken again once the lease ends.
            tracing::warn!(alert_id = id, %error, "could not record a webhook attempt in the outbox");
        }
    }

    /// One signed POST; `Err` says why it did not count as delivered (never
    /// the key, never the receiver's body).
    async fn post(&self, entry: &OutboxEntry) -> Result<(), String> {
        let body = serde_json::to_vec(&entry.alert).map_err(|e| e.to_string())?;
        let timestamp = self.clock.wall().as_second();
        let signature = sign(self.secret.expose().as_bytes(), timestamp, &body);
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("viewgate/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-viewgate-timestamp", timestamp)
            .header("x-viewgate-alert-id", entry.alert.id.as_str())
            .header("x-viewgate-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!(
                "the webhook answered {}",
                response.status().as_u16()
            )),
            Ok(Err(e)) => Err(format!("the webhook could not be reached: {e}")),
            Err(_) => Err(format!(
                "the webhook did not answer within {} ms",
                self.timeout.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_timestamp_and_body() {
        let key = b"test-webhook-key-0123456789";
        let sig = sign(key, 1_800_000_000, br#"{"id":"a"}"#);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(key, 1_800_000_000, br#"{"id":"a"}"#, &sig));
        assert!(!verify(key, 1_800_000_001, br#"{"id":"a"}"#, &sig));
        assert!(!verify(key, 1_800_000_000, br#"{"id":"b"}"#, &sig));
        assert!(!verify(
            b"another-key-of-some-length",
            1_800_000_000,
            br#"{"id":"a"}"#,
            &sig
        ));
    }

    #[test]
    fn signatures_match_an_independent_hmac() {
        // Computed apart from this code (Python's hmac module) over
        // "1800000000.{\"id\":\"crm:2026-11-27:50\"}".
        assert_eq!(
            sign(
                b"test-webhook-key-0123456789",
                1_800_000_000,
                br#"{"id":"crm:2026-11-27:50"}"#
            ),
            "sha256=c1d2b2932df3eb260dbfd1077099abab143ff074a6dc75aef16d326e5c205825"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
