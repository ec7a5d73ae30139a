//! The admin listener: health, readiness, metrics, and the `/admin/*` API.
//!
//! It runs on its own address (`admin.listen`), meant to be private.
//! `/healthz`, `/readyz` and `/metrics` need no key; everything under
//! `/admin/` needs `x-admin-key`, whose sha256 must equal
//! `admin.key_sha256` (compared in constant time). A tenant key is not an
//! admin key, and without `admin.key_sha256` the admin API is closed.
//! A browser cannot send `x-admin-key`, so the admin key is also accepted as
//! the password of HTTP Basic auth (any user name); the credits page
//! (`GET /admin/`, see `page`) asks a browser for it with a 401.

mod page;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::config::valid_account_id;
use crate::error::GatewayError;
use crate::keys::KeyHash;
use crate::ledger::{Usage, history, period_end};
use crate::listener::HttpService;
use crate::live::Live;
use crate::response::{Body, json_response};

/// What the admin endpoints read: the gateway in force (after any reload).
#[derive(Clone)]
pub struct Admin {
    live: Arc<Live>,
    draining: Arc<AtomicBool>,
}

/// One tenant's usage, as `/admin/usage` and `viewgate usage` report it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRow {
    /// Tenant id.
    pub tenant: String,
    /// `day`, `week`, `month`, or `total` (also for unlimited tenants).
    pub period: String,
    /// The current period's key, e.g. `2026-11-27`.
    pub period_key: String,
    /// Credits per period; `null` when unlimited.
    pub budget: Option<u64>,
    /// Credits settled (including orphaned reservations).
    pub used: u64,
    /// Credits held by in-flight calls.
    pub reserved: u64,
    /// What can still be reserved; `null` when unlimited.
    pub remaining: Option<u64>,
    /// Upstream calls settled.
    pub requests: u64,
    /// Cache hits served.
    pub cache_hits: u64,
    /// What those hits would have cost.
    pub credits_saved: u64,
    /// Credits of reservations a crash left open, counted as spent.
    pub orphaned: u64,
    /// What cache hits saved in the period (the same figure as `credits_saved`).
    #[serde(default)]
    pub credits_saved_cache: u64,
    /// Answers coalesced onto another request's upstream call in the period.
    #[serde(default)]
    pub coalesced: u64,
    /// What those coalesced answers would have cost.
    #[serde(default)]
    pub credits_saved_coalesced: u64,
    /// `cache_hits / (cache_hits + coalesced + requests)`; `null` before any.
    #[serde(default)]
    pub hit_ratio: Option<f64>,
    /// Credits charged in the last hour (60 minute buckets, the current one included).
    #[serde(default)]
    pub spent_last_hour: u64,
    /// Credits charged in the last day (1440 minute buckets).
    #[serde(default)]
    pub spent_last_day: u64,
    /// Credits charged in each of the last 24 hours, oldest first.
    #[serde(default)]
    pub spent_by_hour: Vec<u64>,
    /// What the cache saved over the last day.
    #[serde(default)]
    pub saved_cache_last_day: u64,
    /// What coalescing saved over the last day.
    #[serde(default)]
    pub saved_coalesced_last_day: u64,
    /// `runs_out`, `outlasts_period`, `spent`, `no_spend` or `unlimited`.
    #[serde(default)]
    pub forecast: String,
    /// When the budget runs out at the recent rate (RFC 3339 UTC); `null`
    /// unless `forecast` is `runs_out` or `spent`.
    #[serde(default)]
    pub runs_out_at: Option<String>,
    /// The rate the forecast used: `last_hour`, `last_day`, or `null`.
    #[serde(default)]
    pub forecast_basis: Option<String>,
    /// When these figures were read (RFC 3339 UTC).
    #[serde(default)]
    pub as_of: String,
}

impl From<&Usage> for UsageRow {
    fn from(u: &Usage) -> Self {
        let recent = &u.recent;
        let forecast = history::forecast(
            u.balance.remaining(),
            recent,
            period_end(u.period, recent.as_of),
        );
        let answers = u
            .cache_hits
            .saturating_add(u.coalesced)
            .saturating_add(u.requests);
        #[allow(clippy::cast_precision_loss, reason = "a ratio for people to read")]
        let hit_ratio = (answers > 0).then(|| u.cache_hits as f64 / answers as f64);
        Self {
            credits_saved_cache: u.credits_saved,
            coalesced: u.coalesced,
            credits_saved_coalesced: u.credits_saved_coalesced,
            hit_ratio,
            spent_last_hour: recent.spent_last_hour,
            spent_last_day: recent.spent_last_day,
            spent_by_hour: recent.hourly.clone(),
            saved_cache_last_day: recent.saved_cache_last_day,
            saved_coalesced_last_day: recent.saved_coalesced_last_day,
            forecast: forecast.outlook.as_str().to_string(),
            runs_out_at: forecast.runs_out_at.map(rfc3339),
            forecast_basis: forecast.basis.map(|b| b.as_str().to_string()),
            as_of: rfc3339(recent.as_of),
            tenant: u.tenant.clone(),
            period: u.period.as_str().to_string(),
            period_key: u.period_key.clone(),
            budget: u.balance.limit,
            used: u.balance.used,
            reserved: u.balance.reserved,
            remaining: u.balance.remaining(),
            requests: u.requests,
            cache_hits: u.cache_hits,
            credits_saved: u.credits_saved,
            orphaned: u.orphaned,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Absent, or a string: `null` is refused like any other wrong type.
    #[serde(default, deserialize_with = "some_string")]
    account_id: Option<String>,
    #[serde(default)]
    all: bool,
}

fn some_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

impl Admin {
    /// The admin API over `live`; `draining` turns `/readyz` to 503 during shutdown.
    pub fn new(live: Arc<Live>, draining: Arc<AtomicBool>) -> Self {
        Self { live, draining }
    }

    /// The admin endpoints as a service for the listener.
    pub fn service(self) -> HttpService {
        let admin = Arc::new(self);
        tower::util::BoxCloneSyncService::new(tower::service_fn(
            move |request: Request<hyper::body::Incoming>| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.handle(request).await) }
            },
        ))
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let now = self.live.gateway().clock.wall();
        let path = request.uri().path().to_string();
        let result = match (request.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => {
                Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
            }
            (Method::GET, "/readyz") => Ok(self.readyz().await),
            (Method::GET, "/metrics") => Ok(self.metrics().await),
            (Method::GET, "/admin/" | "/admin") => Ok(self.credits_page(&request).await),
            (_, "/admin") => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (_, p) if p.starts_with("/admin/") => match self.authorize(&request) {
                Err(e) => Err(e),
                Ok(()) => self.admin_api(request, &path).await,
            },
            (_, "/healthz" | "/readyz" | "/metrics") => {
                Err(GatewayError::MethodNotAllowed { allow: "GET" })
            }
            _ => Err(GatewayError::NotFound),
        };
        result.unwrap_or_else(|e| e.to_response(None, now))
    }

    /// The admin key's hash; `None` when the admin API is closed.
    fn admin_key(&self) -> Option<KeyHash> {
        self.live
            .gateway()
            .config
            .admin
            .as_ref()
            .and_then(|a| a.key_sha256)
    }

    fn authorize<B>(&self, request: &Request<B>) -> Result<(), GatewayError> {
        let expected = self.admin_key().ok_or(GatewayError::InvalidApiKey)?;
        // Every credential presented must be the admin key, in every copy of
        // its header: a wrong one beside a right one is refused, not
        // overlooked, whatever their order.
        let headers = request.headers();
        let mut presented = Vec::with_capacity(2);
        for key in headers.get_all("x-admin-key") {
            presented.push(key.as_bytes().to_vec());
        }
        for value in headers.get_all(header::AUTHORIZATION) {
            presented.push(basic_password(value).ok_or(GatewayError::InvalidApiKey)?);
        }
        let mut all_match = !presented.is_empty();
        for key in &presented {
            // `&`, not `&&`: every key is hashed and compared.
            all_match &= KeyHash::of(key).ct_eq(&expected);
        }
        if all_match {
            Ok(())
        } else {
            Err(GatewayError::InvalidApiKey)
        }
    }

    /// The credits page; a request without a valid admin key gets 401 and
    /// a Basic challenge, so a browser asks for it.
    async fn credits_page<B>(&self, request: &Request<B>) -> Response<Body> {
        if self.admin_key().is_none() {
            // Closed: no password can open it, so a browser is not asked for one.
            let now = self.live.gateway().clock.wall();
            return GatewayError::InvalidApiKey.to_response(None, now);
        }
        if self.authorize(request).is_err() {
            let mut response = Response::new(Body::new(Bytes::from_static(
                b"The credits page needs the admin key as the password (any user name).\n",
            )));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            let headers = response.headers_mut();
            headers.insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"viewgate admin\", charset=\"UTF-8\""),
            );
            headers.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return response;
        }
        let now = rfc3339(self.live.gateway().clock.wall());
        let html = match self.usage().await {
            Ok(rows) => page::render(&rows, &now),
            Err(e) => {
                return e.to_response(None, self.live.gateway().clock.wall());
            }
        };
        let mut response = Response::new(Body::new(Bytes::from(html)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // Figures of one moment: never from a cache. No script may run on it.
        headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
            ),
        );
        response
    }

    async fn admin_api<B>(
        &self,
        request: Request<B>,
        path: &str,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match (request.method().clone(), path) {
            (Method::GET, "/admin/usage") => {
                let rows = self.usage().await?;
                let mut response = json(
                    StatusCode::OK,
                    &serde_json::json!({"generated_at": rfc3339(self.live.gateway().clock.wall()), "tenants": rows}),
                );
                // Figures of one moment, like the page: never from a cache.
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                Ok(response)
            }
            (Method::POST, "/admin/cache/purge") => {
                let body = Limited::new(request.into_body(), 4096)
                    .collect()
                    .await
                    .map_err(|_| GatewayError::InvalidParams("could not read the body".into()))?
                    .to_bytes();
                let purge: PurgeRequest = serde_json::from_slice(&body).map_err(|_| {
                    GatewayError::InvalidParams(
                        r#"send {"account_id": "..."} or {"all": true}"#.into(),
                    )
                })?;
                let (entries_before, _) = self.live.gateway().cache.size();
                let scope = match (purge.account_id, purge.all) {
                    // An empty id matched nothing and still answered 200: a
                    // script with an unset variable must hear it did nothing.
                    (Some(account), false) if !valid_account_id(&account) => {
                        return Err(GatewayError::InvalidParams(
                            "account_id must be 1 to 128 printable ASCII characters without spaces"
                                .into(),
                        ));
                    }
                    (Some(account), false) => {
                        self.live.gateway().cache.purge_account(&account);
                        serde_json::json!({"purged": "account", "account_id": account})
                    }
                    (None, true) => {
                        self.live.gateway().cache.purge_all();
                        serde_json::json!({"purged": "all"})
                    }
                    _ => {
                        return Err(GatewayError::InvalidParams(
                            r#"send {"account_id": "..."} or {"all": true}, not both"#.into(),
                        ));
                    }
                };
                tracing::info!(scope = %scope, entries_before, "cache purged by an admin call");
                Ok(json(StatusCode::OK, &scope))
            }
            (_, "/admin/usage" | "/admin/") => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
            (_, "/admin/cache/purge") => Err(GatewayError::MethodNotAllowed { allow: "POST" }),
            _ => Err(GatewayError::NotFound),
        }
    }

    /// Every tenant's usage in its current period.
    pub async fn usage(&self) -> Result<Vec<UsageRow>, GatewayError> {
        let gateway = self.live.gateway();
        let tenants: Vec<(String, Option<crate::config::Budget>)> = gateway
            .config
            .tenants
            .iter()
            .map(|t| (t.id.clone(), t.budget))
            .collect();
        let usage =
            gateway
                .ledger
                .usage(&tenants)
                .await
                .map_err(|e| GatewayError::ServiceUnavailable {
                    detail: e.to_string(),
                })?;
        Ok(usage.iter().map(UsageRow::from).collect())
    }

    async fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        self.live
            .gateway()
            .ledger
            .health()
            .await
            .map_err(|e| e.to_string())
    }

    async fn readyz(&self) -> Response<Body> {
        match self.ready().await {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not ready", "reason": reason}),
            ),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let g = &self.live.gateway();
        g.metrics.set_ready(self.ready().await.is_ok());
        g.cache.sync().await;
        let (entries, bytes) = g.cache.size();
        g.metrics.set_cache(entries, bytes);
        for key in g.upstream.keys().iter() {
            let (key_open, accounts_open) = key.breakers.open_counts();
            g.metrics.set_breakers(&key.name, key_open, accounts_open);
        }
        for tenant in g.tenants.iter() {
            if let Some(budget) = tenant.budget
                && let Ok(balance) = g.ledger.balance(&tenant.id, Some(budget)).await
            {
                g.metrics
                    .set_credits(&tenant.id, budget.credits, balance.remaining().unwrap_or(0));
            }
        }
        let mut response = Response::new(Body::new(Bytes::from(g.metrics.render())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// The password of an `Authorization: Basic` header (the user name is not
/// looked at), if there is one.
fn basic_password(value: &http::HeaderValue) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}
