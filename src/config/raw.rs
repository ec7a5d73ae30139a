//! The configuration file exactly as written: serde structs with unknown keys denied.
//!
//! Scalars that validation may complain about are wrapped in [`Spanned`] so each
//! problem can name its line. Nothing here is interpreted; see `validate.rs`.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A value together with where it stands in the file.
pub(super) type S<T> = Spanned<T>;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<RawAdmin>,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub log: RawLog,
    pub actions: Option<S<HashMap<S<String>, RawAction>>>,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub alerts: RawAlerts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<S<String>>,
    pub max_body_bytes: Option<S<u64>>,
    pub header_timeout_ms: Option<S<u64>>,
    pub request_timeout_ms: Option<S<u64>>,
    pub shutdown_grace_s: Option<S<u64>>,
    pub max_connections: Option<S<u64>>,
    pub max_in_flight: Option<S<u64>>,
    pub idle_timeout_ms: Option<S<u64>>,
    pub body_timeout_ms: Option<S<u64>>,
    pub workers: Option<S<u64>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: S<String>,
    pub key_file: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<S<String>>,
    pub key_sha256: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub base_url: S<String>,
    pub timeout_ms: Option<S<u64>>,
    pub deadline_ms: Option<S<u64>>,
    pub max_retries: Option<S<u32>>,
    pub max_pace_wait_ms: Option<S<u64>>,
    pub ca_file: Option<S<String>>,
    pub breaker: Option<RawBreaker>,
    pub estimates: Option<S<BTreeMap<String, u64>>>,
    #[serde(default)]
    pub keys: Vec<RawUpstreamKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub failures: Option<S<u32>>,
    pub open_s: Option<S<u64>>,
    pub accounts: Option<S<u32>>,
    pub window_s: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamKey {
    pub name: S<String>,
    pub api_key_env: Option<S<String>>,
    pub api_key_file: Option<S<String>>,
    pub accounts: Option<S<Vec<String>>>,
    pub rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub scope: Option<S<String>>,
    pub per_second: Option<S<u32>>,
    pub per_minute: Option<S<u32>>,
    pub per_hour: Option<S<u32>>,
    pub burst: Option<S<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub ttl_s: Option<S<u64>>,
    pub max_bytes: Option<S<u64>>,
    pub stale_if_error_s: Option<S<u64>>,
    pub stale_while_revalidate_s: Option<S<u64>>,
    pub actions: Option<S<Vec<String>>>,
    pub shared: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLedger {
    pub backend: Option<S<String>>,
    pub path: Option<S<String>>,
    pub redis_url: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub id: S<String>,
    pub key_sha256: S<String>,
    pub accounts: S<Vec<String>>,
    pub actions: Option<S<Vec<String>>>,
    pub rate_limit: Option<RawRateLimit>,
    pub budget: Option<RawBudget>,
    pub max_in_flight: Option<S<u64>>,
    #[serde(default)]
    pub allow_refresh: bool,
    #[serde(default)]
    pub connect_accounts: bool,
    pub on_budget_exhausted: Option<S<String>>,
    pub enforce: Option<bool>,
    pub alert_thresholds: Option<S<Vec<u64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub credits: S<u64>,
    pub period: S<String>,
}

/// `alerts:`: budget thresholds and where they are sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub thresholds: Option<S<Vec<u64>>>,
    pub webhook_url: Option<S<String>>,
    pub webhook_secret_env: Option<S<String>>,
    pub webhook_secret_file: Option<S<String>>,
    pub webhook_timeout_ms: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdempotency {
    pub ttl_s: Option<S<u64>>,
}

/// One entry of `actions:`; every field optional so an override of a
/// built-in rule can change one thing and keep the rest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAction {
    pub price: Option<S<RawPrice>>,
    pub kind: Option<S<String>>,
    pub cache_ttl_s: Option<S<u64>>,
    pub endpoint: Option<S<String>>,
}

/// `free`, `{fixed: N}` or `{per: N, of: PARAM, default: D, max: M}`. Read as
/// loose terms so validation can say which term is wrong (serde's own
/// message for an untagged enum names no field).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawPrice {
    Word(String),
    Terms(BTreeMap<String, RawTerm>),
}

/// One term of a price: a count or a param name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawTerm {
    Number(u64),
    Text(String),
}
