//! Idempotency keys: a POST sent again with the same `Idempotency-Key` gets
//! the first answer again, with no upstream call and no charge.
//!
//! Sits after the policy stage (the tenant and the parsed call are known, and
//! refusals that changed nothing are not worth remembering) and before the
//! cache stage. The key is claimed in the ledger before anything is sent
//! (durably, so a write claimed here is never sent twice, even across a
//! crash or another replica), and completed with the answer. The request
//! runs in its own task, so a client that hangs up or a deadline that passes
//! still leaves the key with its answer rather than claimed forever.
//!
//! What is kept: every answer the upstream gave (2xx and its 4xx other than
//! 429, which are final), cache hits, and outcome-unknown errors. What frees
//! the key for a retry: failures that changed nothing (budget or rate
//! refusals, the ledger unavailable, an upstream 429 or a read's 5xx, a
//! connection refused).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use super::StageResult;
use crate::call::ApiCall;
use crate::clock::Clock;
use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::ledger::{Fingerprint, IdempotencyBegin, Ledger, StoredAnswer};
use crate::response::{Body, CacheStatus, json_response};
use crate::tenant::Tenant;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Keeps answers per tenant and `Idempotency-Key`.
#[derive(Clone)]
pub(crate) struct IdempotencyLayer {
    ledger: Arc<dyn Ledger>,
    ttl: Duration,
    /// How long a claim is held before its answer: never shorter than the
    /// longest a call can take, or a retry could find the key expired and
    /// send a write still in flight a second time.
    claim_ttl: Duration,
    clock: Clock,
    /// Runs each claim-answer-complete sequence (waited for at shutdown).
    detached: TaskTracker,
}

impl IdempotencyLayer {
    /// Keys kept in `ledger` for `ttl`; a call takes at most `longest_call`.
    pub(crate) fn new(
        ledger: Arc<dyn Ledger>,
        ttl: Duration,
        longest_call: Duration,
        clock: Clock,
        detached: TaskTracker,
    ) -> Self {
        Self {
            ledger,
            ttl,
            claim_ttl: ttl.max(longest_call),
            clock,
            detached,
        }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`IdempotencyLayer`].
#[derive(Clone)]
pub(crate) struct Idempotency<S> {
    inner: S,
    layer: IdempotencyLayer,
}

impl<S> Service<Request<ApiCall>> for Idempotency<S>
where
    S: Service<Request<ApiCall>, Response = Response<Body>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    // Boxed: ledger I/O around the inner call.
    type Future =
        futures_util::future::Either<S::Future, Pin<Box<dyn Future<Output = StageResult> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ApiCall>) -> Self::Future {
        use futures_util::future::Either;
        let key = match idempotency_key(request.headers()) {
            Ok(None) => return Either::Left(self.inner.call(request)),
            Ok(Some(key)) => key,
            Err(e) => return Either::Right(Box::pin(std::future::ready(Err(e)))),
        };
        // The clone that was polled ready goes with this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // The whole claim-answer-complete sequence runs in its own task: a
        // client that hangs up (or a deadline that passes) after the claim
        // must not leave the key claimed with nothing running behind it.
        let task = self
            .layer
            .detached
            .spawn(guarded(self.layer.clone(), inner, request, key));
        Either::Right(Box::pin(async move {
            task.await.unwrap_or_else(|join| {
                Err(GatewayError::ServiceUnavailable {
                    detail: format!("idempotent request task failed: {join}"),
                })
            })
        }))
    }
}

/// The `Idempotency-Key` header: absent, or 1 to 255 printable ASCII characters, once.
pub(super) fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let ok = values.next().is_none()
        && (1..=255).contains(&bytes.len())
        && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if !ok {
        return Err(GatewayError::InvalidParams(
            "Idempotency-Key must be sent once, as 1 to 255 printable ASCII characters".into(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

async fn guarded<S>(
    layer: IdempotencyLayer,
    mut inner: S,
    request: Request<ApiCall>,
    key: String,
) -> StageResult
where
    S: Service<Request<ApiCall>, Response = Response<Body>, Error = GatewayError>,
    S::Future: Send + 'static,
{
    let tenant = request
        .extensions()
        .get::<Arc<Tenant>>()
        .cloned()
        .ok_or(GatewayError::InvalidApiKey)?;
    let fingerprint = request.body().fingerprint();
    let action = request.body().action.clone();
    let write = request.body().is_write();
    let context = super::context(&request).cloned();
    let found = layer
        .ledger
        .idempotency_begin(&tenant.id, &key, &fingerprint, layer.claim_ttl)
        .await
        .map_err(|e| GatewayError::ServiceUnavailable {
            detail: format!("idempotency key store: {e}"),
        })?;
    match found {
        IdempotencyBegin::Started => {}
        // A read has no effect to repeat: run it again, and keep its answer.
        IdempotencyBegin::Orphaned if !write => {}
        IdempotencyBegin::Orphaned => {
            let error = GatewayError::IdempotencyOrphaned;
            let answer = StoredAnswer {
                status: error.status().as_u16(),
                body: error.body(Some(&action), layer.clock.wall()),
            };
            complete(&layer, &tenant, &key, &fingerprint, answer).await;
            return Err(error);
        }
        IdempotencyBegin::Replay(answer) => {
            if let Some(context) = &context {
                context.fields().error_code = error_code_of(&answer);
            }
            return Ok(replayed(answer));
        }
        IdempotencyBegin::Mismatch => return Err(GatewayError::IdempotencyKeyReused),
        IdempotencyBegin::InFlight => return Err(GatewayError::IdempotencyKeyInUse),
    }
    match inner.call(request).await {
        // A read not answered by an upstream reply of its own and not
        // charged (a cache hit, another request's fetch, a stale page
        // standing in for a call that failed at no cost) has nothing to
        // keep: the key is freed (a retry runs again, most likely from the
        // cache), so answers that cost nothing never pile up in the ledger.
        Ok(response) if !write && !context.as_deref().is_some_and(answered_upstream) => {
            abandon(&layer, &tenant, &key, &fingerprint).await;
            Ok(response)
        }
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let answer = StoredAnswer {
                status: parts.status.as_u16(),
                body: bytes.clone(),
            };
            complete(&layer, &tenant, &key, &fingerprint, answer).await;
            Ok(Response::from_parts(parts, Body::new(bytes)))
        }
        Err(error) if error.is_final() => {
            let answer = StoredAnswer {
                status: error.status().as_u16(),
                body: error.body(Some(&action), layer.clock.wall()),
            };
            complete(&layer, &tenant, &key, &fingerprint, answer).await;
            Err(error)
        }
        Err(error) => {
            abandon(&layer, &tenant, &key, &fingerprint).await;
            Err(error)
        }
    }
}

/// Whether the request's answer is the upstream's reply to its own call (a
/// miss, or an uncached read that went upstream), or was charged (a stale
/// page standing in for a call whose outcome is unknown): either is kept,
/// so a retry under the key is neither sent nor charged again.
fn answered_upstream(context: &RequestContext) -> bool {
    let fields = context.fields();
    fields.credits_charged > 0
        || match fields.cache {
            Some(cache) => cache == CacheStatus::Miss,
            None => context.upstream_started(),
        }
}

/// Frees `key`: nothing is kept for it, and the next request with it runs.
async fn abandon(layer: &IdempotencyLayer, tenant: &Tenant, key: &str, fingerprint: &Fingerprint) {
    if let Err(e) = layer
        .ledger
        .idempotency_abandon(&tenant.id, key, fingerprint)
        .await
    {
        tracing::warn!(tenant = &*tenant.id, error = %e, "could not free an idempotency key; it stays in flight until it expires");
    }
}

async fn complete(
    layer: &IdempotencyLayer,
    tenant: &Tenant,
    key: &str,
    fingerprint: &Fingerprint,
    answer: StoredAnswer,
) {
    if let Err(e) = layer
        .ledger
        .idempotency_complete(&tenant.id, key, fingerprint, answer, layer.ttl)
        .await
    {
        // The key stays claimed: a retry is refused (409) rather than sent again.
        tracing::error!(tenant = &*tenant.id, error = %e, "could not store the answer of an idempotency key; retries are refused until it expires");
    }
}

/// A kept answer, sent again.
fn replayed(answer: StoredAnswer) -> Response<Body> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = json_response(status, answer.body);
    response
        .headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// The V2 error code of a kept error answer, for the access line.
fn error_code_of(answer: &StoredAnswer) -> Option<String> {
    if answer.status < 400 {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(serde::Deserialize)]
    struct Detail {
        code: String,
    }
    serde_json::from_slice::<Envelope>(&answer.body)
        .ok()
        .map(|e| e.error.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_sent_once() {
        let mut h = http::HeaderMap::new();
        assert_eq!(idempotency_key(&h), Ok(None));
        h.insert("idempotency-key", HeaderValue::from_static("order 42/a"));
        assert_eq!(idempotency_key(&h), Ok(Some("order 42/a".into())));
        h.append("idempotency-key", HeaderValue::from_static("other"));
        assert!(idempotency_key(&h).is_err());
        let mut h = http::HeaderMap::new();
        h.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
        let mut h = http::HeaderMap::new();
        h.insert(
            "idempotency-key",
            HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
    }
}
