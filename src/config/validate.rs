//! `RawConfig` → `Config`: defaults, ranges, cross-references, secrets.
//!
//! Problems are collected, not returned at the first one, so an operator fixes
//! a file in one pass. Relative paths (`ledger.path`, `api_key_file`) are taken
//! from the working directory, as the process sees them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::raw::{RawBudget, RawConfig, RawRateLimit, RawTenant};
use super::*;
use crate::keys::{KeyHash, Secret};

/// Actions viewgate knows how to key in the cache.
const CACHEABLE_ACTIONS: &[&str] = &["get_viewers"];

struct Problems(Vec<Problem>);

impl Problems {
    fn at(&mut self, loc: &Location, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            line: loc.line(),
            column: loc.column(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn nowhere(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            line: 0,
            column: 0,
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Parses and validates YAML text; `file` labels the problems.
pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
    from_yaml_with_secrets(text, file, &read_secret)
}

/// Where an upstream key is to be read from.
#[derive(Debug, Clone, Copy)]
pub enum SecretRef<'a> {
    /// `api_key_env`: an environment variable.
    Env(&'a str),
    /// `api_key_file`: a file.
    File(&'a str),
}

/// Reads upstream keys: the process environment, or a file that only its
/// owner may read (mode 0600 or stricter).
pub fn read_secret(source: SecretRef<'_>) -> Result<String, String> {
    let value = match source {
        SecretRef::Env(name) => std::env::var(name)
            .map_err(|_| format!("environment variable {name} is not set or empty"))?,
        SecretRef::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{path} is readable by others (mode {mode:04o}); a key file must be 0600 or stricter"
                    ));
                }
            }
            let _ = meta;
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(match source {
            SecretRef::Env(name) => format!("environment variable {name} is not set or empty"),
            SecretRef::File(path) => format!("{path} is empty"),
        });
    }
    Ok(value.to_string())
}

/// Parses and validates YAML, reading upstream keys through `secrets`.
pub fn from_yaml_with_secrets(
    text: &str,
    file: &str,
    secrets: &dyn Fn(SecretRef<'_>) -> Result<String, String>,
) -> Result<Config, ConfigError> {
    parse_and_validate(text, file, secrets)
}

/// As [`from_yaml`], with `api_key_env` variables looked up through `env`
/// (key files are read as usual).
pub fn from_yaml_with_env(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    from_yaml_with_secrets(text, file, &|source| match source {
        SecretRef::Env(name) => env(name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("environment variable {name} is not set or empty")),
        SecretRef::File(_) => read_secret(source),
    })
}

fn parse_and_validate(
    text: &str,
    file: &str,
    secrets: &dyn Fn(SecretRef<'_>) -> Result<String, String>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            // The parser's own message can quote the offending text; keep only its first line.
            let message = e.to_string();
            let first = message.lines().next().unwrap_or("invalid YAML");
            // Drop the parser's own "error: line N column M:" prefix: we print the place ourselves.
            let message = match first.strip_prefix("error: line ") {
                Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
                None => first.to_string(),
            };
            return Err(ConfigError {
                file: file.to_string(),
                problems: vec![Problem {
                    line,
                    column,
                    key: String::new(),
                    message,
                }],
            });
        }
    };
    let mut p = Problems(Vec::new());
    let config = validate(raw, &mut p, secrets);
    if p.0.is_empty() {
        Ok(config)
    } else {
        p.0.sort_by_key(|pr| (pr.line == 0, pr.line, pr.column));
        Err(ConfigError {
            file: file.to_string(),
            problems: p.0,
        })
    }
}

fn validate(
    raw: RawConfig,
    p: &mut Problems,
    secrets: &dyn Fn(SecretRef<'_>) -> Result<String, String>,
) -> Config {
    let server = ServerConfig {
        listen: addr(
            p,
            raw.server.listen.as_ref(),
            "server.listen",
            "127.0.0.1:8080",
        ),
        max_body_bytes: raw.server.max_body_bytes.as_ref().map_or(65536, |v| {
            if v.value == 0 || v.value > 16 * 1024 * 1024 {
                p.at(
                    &v.referenced,
                    "server.max_body_bytes",
                    "must be between 1 and 16777216",
                );
            }
            v.value as usize
        }),
        header_timeout: millis(
            p,
            raw.server.header_timeout_ms.as_ref(),
            "server.header_timeout_ms",
            10_000,
        ),
        request_timeout: millis(
            p,
            raw.server.request_timeout_ms.as_ref(),
            "server.request_timeout_ms",
            60_000,
        ),
        shutdown_grace: seconds(
            p,
            raw.server.shutdown_grace_s.as_ref(),
            "server.shutdown_grace_s",
            30,
            true,
        ),
        max_connections: count(
            p,
            raw.server.max_connections.as_ref(),
            "server.max_connections",
            10_000,
        ),
        max_in_flight: count(
            p,
            raw.server.max_in_flight.as_ref(),
            "server.max_in_flight",
            4_096,
        ),
    };

    let admin = raw.admin.as_ref().map(|a| AdminConfig {
        listen: addr(p, a.listen.as_ref(), "admin.listen", "127.0.0.1:9090"),
        key_sha256: a
            .key_sha256
            .as_ref()
            .and_then(|k| hash(p, k, "admin.key_sha256")),
    });

    let upstream = validate_upstream(&raw, p, secrets);

    let cache = CacheConfig {
        ttl: seconds(p, raw.cache.ttl_s.as_ref(), "cache.ttl_s", 300, false),
        max_bytes: raw.cache.max_bytes.as_ref().map_or(256 * 1024 * 1024, |v| {
            if v.value < 1024 {
                p.at(&v.referenced, "cache.max_bytes", "must be at least 1024");
            }
            v.value
        }),
        stale_if_error: seconds(
            p,
            raw.cache.stale_if_error_s.as_ref(),
            "cache.stale_if_error_s",
            3600,
            true,
        ),
        stale_while_revalidate: seconds(
            p,
            raw.cache.stale_while_revalidate_s.as_ref(),
            "cache.stale_while_revalidate_s",
            0,
            true,
        ),
        actions: match &raw.cache.actions {
            None => CACHEABLE_ACTIONS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                for a in &list.value {
                    if !CACHEABLE_ACTIONS.contains(&a.as_str()) {
                        p.at(
                            &list.referenced,
                            "cache.actions",
                            format!("viewgate cannot cache action {a:?}; cacheable: {CACHEABLE_ACTIONS:?}"),
                        );
                    }
                }
                list.value.iter().cloned().collect()
            }
        },
        shared: match &raw.cache.shared {
            None => false,
            Some(s) if s.value == "redis" => true,
            Some(s) if s.value == "none" => false,
            Some(s) => {
                p.at(&s.referenced, "cache.shared", "must be redis or none");
                false
            }
        },
    };

    let ledger = {
        let backend = raw.ledger.backend.as_ref();
        // design.md: the embedded default is a SQLite file.
        match backend.map(|b| b.value.as_str()).unwrap_or("sqlite") {
            "memory" => LedgerConfig::Memory,
            "sqlite" => LedgerConfig::Sqlite {
                path: PathBuf::from(
                    raw.ledger
                        .path
                        .as_ref()
                        .map_or("data/ledger.db", |s| s.value.as_str()),
                ),
            },
            "redis" => match &raw.ledger.redis_url {
                Some(url)
                    if url.value.starts_with("redis://") || url.value.starts_with("rediss://") =>
                {
                    LedgerConfig::Redis {
                        url: url.value.clone(),
                    }
                }
                Some(url) => {
                    p.at(
                        &url.referenced,
                        "ledger.redis_url",
                        "must start with redis:// or rediss://",
                    );
                    LedgerConfig::Memory
                }
                None => {
                    let loc = backend.map(|b| b.referenced).unwrap_or(Location::UNKNOWN);
                    p.at(
                        &loc,
                        "ledger.redis_url",
                        "is required when backend is redis",
                    );
                    LedgerConfig::Memory
                }
            },
            other => {
                let loc = backend.map(|b| b.referenced).unwrap_or(Location::UNKNOWN);
                p.at(
                    &loc,
                    "ledger.backend",
                    format!("unknown backend {other:?}; use memory, sqlite or redis"),
                );
                LedgerConfig::Memory
            }
        }
    };

    let tenants = validate_tenants(&raw.tenants, p);

    if cache.shared && !matches!(ledger, LedgerConfig::Redis { .. }) {
        let loc = raw
            .cache
            .shared
            .as_ref()
            .map_or(Location::UNKNOWN, |s| s.referenced);
        p.at(
            &loc,
            "cache.shared",
            "the shared cache tier lives in Redis: set ledger.backend: redis",
        );
    }
    if !matches!(ledger, LedgerConfig::Redis { .. }) {
        let global = |rl: &Option<RateLimit>| rl.is_some_and(|r| r.scope == Some(Scope::Global));
        for (i, t) in tenants.iter().enumerate() {
            if global(&t.rate_limit) {
                p.nowhere(
                    format!("tenants[{i}].rate_limit.scope"),
                    "global rate limits live in Redis: set ledger.backend: redis",
                );
            }
        }
        for (i, k) in upstream.keys.iter().enumerate() {
            if global(&k.rate_limit) {
                p.nowhere(
                    format!("upstream.keys[{i}].rate_limit.scope"),
                    "global rate limits live in Redis: set ledger.backend: redis",
                );
            }
        }
    }

    let log_level = raw.log.level.as_ref().map(|l| {
        if tracing_subscriber::EnvFilter::try_new(&l.value).is_err() {
            p.at(
                &l.referenced,
                "log.level",
                "is not a log filter (e.g. info, warn, viewgate=debug)",
            );
        }
        l.value.clone()
    });

    Config {
        server,
        admin,
        upstream,
        cache,
        ledger,
        tenants,
        log_level,
    }
}

fn validate_upstream(
    raw: &RawConfig,
    p: &mut Problems,
    secrets: &dyn Fn(SecretRef<'_>) -> Result<String, String>,
) -> UpstreamConfig {
    let u = &raw.upstream;
    let base_url = match u.base_url.value.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            uri
        }
        _ => {
            p.at(
                &u.base_url.referenced,
                "upstream.base_url",
                "must be an http:// or https:// URL with a host and no query",
            );
            http::Uri::from_static("http://invalid")
        }
    };
    let timeout = millis(p, u.timeout_ms.as_ref(), "upstream.timeout_ms", 15_000);
    let max_retries = u.max_retries.as_ref().map_or(2, |v| {
        if v.value > 10 {
            p.at(&v.referenced, "upstream.max_retries", "must be at most 10");
        }
        v.value
    });
    if u.keys.is_empty() {
        p.nowhere("upstream.keys", "at least one upstream key is required");
    }
    let mut names: HashMap<&str, u64> = HashMap::new();
    let mut keys = Vec::new();
    for (i, k) in u.keys.iter().enumerate() {
        let path = format!("upstream.keys[{i}]");
        if k.name.value.is_empty() {
            p.at(
                &k.name.referenced,
                format!("{path}.name"),
                "must not be empty",
            );
        }
        if let Some(first) = names.insert(&k.name.value, k.name.referenced.line()) {
            p.at(
                &k.name.referenced,
                format!("{path}.name"),
                format!(
                    "duplicate key name {:?} (first at line {first})",
                    k.name.value
                ),
            );
        }
        let secret = match (&k.api_key_env, &k.api_key_file) {
            (Some(var), None) => match secrets(SecretRef::Env(&var.value)) {
                Ok(v) => Some(Secret::new(v)),
                Err(e) => {
                    p.at(&var.referenced, format!("{path}.api_key_env"), e);
                    None
                }
            },
            (None, Some(file)) => match secrets(SecretRef::File(&file.value)) {
                Ok(v) => Some(Secret::new(v)),
                Err(e) => {
                    p.at(&file.referenced, format!("{path}.api_key_file"), e);
                    None
                }
            },
            _ => {
                p.at(
                    &k.name.referenced,
                    path.clone(),
                    "needs exactly one of api_key_env or api_key_file (keys are never written in this file)",
                );
                None
            }
        };
        let accounts = match &k.accounts {
            None => vec![AccountPattern::Any],
            Some(list) => patterns(p, list, &format!("{path}.accounts")),
        };
        let rate_limit = k
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(p, r, &format!("{path}.rate_limit"), &k.name.referenced));
        keys.push(UpstreamKeyConfig {
            name: k.name.value.clone(),
            secret: secret.unwrap_or_else(|| Secret::new("")),
            accounts,
            rate_limit,
        });
    }
    let deadline = millis(p, u.deadline_ms.as_ref(), "upstream.deadline_ms", 30_000);
    if let Some(d) = &u.deadline_ms
        && deadline < timeout
    {
        p.at(
            &d.referenced,
            "upstream.deadline_ms",
            "must be at least upstream.timeout_ms",
        );
    }
    let max_pace_wait = match &u.max_pace_wait_ms {
        None => Duration::from_millis(2_000),
        Some(v) if v.value <= 60_000 => Duration::from_millis(v.value),
        Some(v) => {
            p.at(
                &v.referenced,
                "upstream.max_pace_wait_ms",
                "must be at most 60000",
            );
            Duration::ZERO
        }
    };
    let breaker_failures = u
        .breaker
        .as_ref()
        .and_then(|b| b.failures.as_ref())
        .map_or(5, |v| {
            if v.value == 0 {
                p.at(
                    &v.referenced,
                    "upstream.breaker.failures",
                    "must be at least 1",
                );
            }
            v.value
        });
    let breaker_open = seconds(
        p,
        u.breaker.as_ref().and_then(|b| b.open_s.as_ref()),
        "upstream.breaker.open_s",
        30,
        false,
    );
    let estimates = match &u.estimates {
        None => Default::default(),
        Some(map) => {
            for (action, credits) in &map.value {
                if action == "get_viewers" {
                    p.at(
                        &map.referenced,
                        "upstream.estimates",
                        "get_viewers is always estimated as ceil(count / 10)",
                    );
                }
                if *credits == 0 {
                    p.at(
                        &map.referenced,
                        "upstream.estimates",
                        format!("the estimate for {action:?} must be at least 1"),
                    );
                }
            }
            map.value.clone()
        }
    };
    let ca_file = u.ca_file.as_ref().map(|f| {
        if let Err(e) = std::fs::metadata(&f.value) {
            p.at(
                &f.referenced,
                "upstream.ca_file",
                format!("cannot read {}: {e}", f.value),
            );
        }
        PathBuf::from(&f.value)
    });
    UpstreamConfig {
        base_url,
        timeout,
        max_retries,
        deadline,
        ca_file,
        max_pace_wait,
        breaker_failures,
        breaker_open,
        estimates,
        keys,
    }
}

fn validate_tenants(raw: &[RawTenant], p: &mut Problems) -> Vec<TenantConfig> {
    let mut ids: HashMap<&str, u64> = HashMap::new();
    let mut hashes: HashMap<KeyHash, u64> = HashMap::new();
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let path = format!("tenants[{i}]");
        let id_ok = !t.id.value.is_empty()
            && t.id.value.len() <= 64
            && t.id
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            p.at(
                &t.id.referenced,
                format!("{path}.id"),
                "must be 1 to 64 characters of A-Z a-z 0-9 - _ .",
            );
        }
        if let Some(first) = ids.insert(&t.id.value, t.id.referenced.line()) {
            p.at(
                &t.id.referenced,
                format!("{path}.id"),
                format!(
                    "duplicate tenant id {:?} (first at line {first})",
                    t.id.value
                ),
            );
        }
        let key_sha256 = hash(p, &t.key_sha256, &format!("{path}.key_sha256"));
        if let Some(h) = key_sha256
            && let Some(first) = hashes.insert(h, t.key_sha256.referenced.line())
        {
            p.at(
                &t.key_sha256.referenced,
                format!("{path}.key_sha256"),
                format!(
                    "duplicate key hash (first at line {first}); every tenant needs its own key"
                ),
            );
        }
        let accounts = patterns(p, &t.accounts, &format!("{path}.accounts"));
        if accounts.is_empty() {
            p.at(
                &t.accounts.referenced,
                format!("{path}.accounts"),
                "must list at least one account or \"*\"",
            );
        }
        let actions = match &t.actions {
            None => vec!["get_viewers".to_string()],
            Some(list) => {
                for a in &list.value {
                    let ok = a == "*"
                        || (!a.is_empty()
                            && a.len() <= 64
                            && a.bytes().all(|b| {
                                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
                            }));
                    if !ok {
                        p.at(
                            &list.referenced,
                            format!("{path}.actions"),
                            format!("{a:?} is not an action name (lower-case letters, digits, _) or \"*\""),
                        );
                    }
                }
                list.value.clone()
            }
        };
        let rate_limit = t
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(p, r, &format!("{path}.rate_limit"), &t.id.referenced));
        let budget = t
            .budget
            .as_ref()
            .and_then(|b| budget(p, b, &format!("{path}.budget")));
        out.push(TenantConfig {
            id: t.id.value.clone(),
            key_sha256: key_sha256.unwrap_or(KeyHash([0; 32])),
            accounts,
            actions,
            rate_limit,
            budget,
            allow_refresh: t.allow_refresh,
        });
    }
    out
}

fn addr(p: &mut Problems, v: Option<&Spanned<String>>, key: &str, default: &str) -> SocketAddr {
    let text = v.map_or(default, |v| v.value.as_str());
    text.parse().unwrap_or_else(|_| {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, format!("{text:?} is not an IP:port address"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn millis(p: &mut Problems, v: Option<&Spanned<u64>>, key: &str, default: u64) -> Duration {
    let ms = v.map_or(default, |v| v.value);
    if ms == 0 || ms > 3_600_000 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, "must be between 1 and 3600000 milliseconds");
    }
    Duration::from_millis(ms)
}

fn seconds(
    p: &mut Problems,
    v: Option<&Spanned<u64>>,
    key: &str,
    default: u64,
    zero_ok: bool,
) -> Duration {
    let s = v.map_or(default, |v| v.value);
    if (!zero_ok && s == 0) || s > 366 * 24 * 3600 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        let low = if zero_ok { 0 } else { 1 };
        p.at(
            &loc,
            key,
            format!("must be between {low} and 31622400 seconds"),
        );
    }
    Duration::from_secs(s)
}

fn count(p: &mut Problems, v: Option<&Spanned<u64>>, key: &str, default: u64) -> usize {
    let n = v.map_or(default, |v| v.value);
    if n == 0 || n > 1_000_000 {
        let loc = v.map(|v| v.referenced).unwrap_or(Location::UNKNOWN);
        p.at(&loc, key, "must be between 1 and 1000000");
    }
    n as usize
}

fn hash(p: &mut Problems, v: &Spanned<String>, key: &str) -> Option<KeyHash> {
    let h = KeyHash::from_hex(&v.value);
    if h.is_none() {
        p.at(
            &v.referenced,
            key,
            "must be 64 hex digits (the sha256 of the key; see `viewgate hash-key`)",
        );
    }
    h
}

fn patterns(p: &mut Problems, list: &Spanned<Vec<String>>, key: &str) -> Vec<AccountPattern> {
    let mut out = Vec::new();
    for a in &list.value {
        let pattern = if a == "*" {
            AccountPattern::Any
        } else if let Some(prefix) = a.strip_suffix('*') {
            AccountPattern::Prefix(prefix.to_string())
        } else {
            AccountPattern::Exact(a.clone())
        };
        let body = match &pattern {
            AccountPattern::Any => "x",
            AccountPattern::Prefix(s) | AccountPattern::Exact(s) => s.as_str(),
        };
        if !valid_account_id(body) || body.contains('*') {
            p.at(
                &list.referenced,
                key,
                format!("{a:?} is not an account id (1-128 printable ASCII, no spaces), a prefix ending in *, or *"),
            );
        }
        out.push(pattern);
    }
    out
}

fn rate_limit(
    p: &mut Problems,
    r: &RawRateLimit,
    key: &str,
    owner: &Location,
) -> Option<RateLimit> {
    let given: Vec<(&Spanned<u32>, Duration)> = [
        (r.per_second.as_ref(), Duration::from_secs(1)),
        (r.per_minute.as_ref(), Duration::from_secs(60)),
        (r.per_hour.as_ref(), Duration::from_secs(3600)),
    ]
    .into_iter()
    .filter_map(|(v, d)| v.map(|v| (v, d)))
    .collect();
    if given.len() != 1 {
        let loc = given.first().map_or(*owner, |(v, _)| v.referenced);
        p.at(
            &loc,
            key,
            "needs exactly one of per_second, per_minute or per_hour",
        );
        return None;
    }
    let (count, period) = given[0];
    let Some(count_nz) = NonZeroU32::new(count.value) else {
        p.at(&count.referenced, key, "the rate must be at least 1");
        return None;
    };
    let burst = match &r.burst {
        None => count_nz,
        Some(b) => match NonZeroU32::new(b.value) {
            Some(b) => b,
            None => {
                p.at(&b.referenced, format!("{key}.burst"), "must be at least 1");
                return None;
            }
        },
    };
    let scope = match &r.scope {
        None => None,
        Some(s) => match s.value.as_str() {
            "local" => Some(Scope::Local),
            "global" => Some(Scope::Global),
            other => {
                p.at(
                    &s.referenced,
                    format!("{key}.scope"),
                    format!("unknown scope {other:?}; use local or global"),
                );
                return None;
            }
        },
    };
    Some(RateLimit {
        scope,
        count: count_nz,
        period,
        burst,
    })
}

fn budget(p: &mut Problems, b: &RawBudget, key: &str) -> Option<Budget> {
    let period = match b.period.value.as_str() {
        "day" => Period::Day,
        "week" => Period::Week,
        "month" => Period::Month,
        "total" => Period::Total,
        other => {
            p.at(
                &b.period.referenced,
                format!("{key}.period"),
                format!("unknown period {other:?}; use day, week, month or total"),
            );
            return None;
        }
    };
    if b.credits.value > i64::MAX as u64 {
        p.at(
            &b.credits.referenced,
            format!("{key}.credits"),
            "is too large",
        );
        return None;
    }
    Some(Budget {
        credits: b.credits.value,
        period,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const HASH_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    /// Loads with TEST_UPSTREAM_KEY set (and nothing else).
    fn load(text: &str, file: &str) -> Result<Config, ConfigError> {
        from_yaml_with_env(text, file, &|name| {
            (name == "TEST_UPSTREAM_KEY").then(|| "k".to_string())
        })
    }

    fn yaml(tenants: &str) -> String {
        format!(
            "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: TEST_UPSTREAM_KEY\ntenants:\n{tenants}"
        )
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = load(
            &yaml(&format!(
                "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"acc-1\"]\n"
            )),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.upstream.timeout, Duration::from_millis(15000));
        assert_eq!(c.upstream.max_retries, 2);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert!(c.cache.actions.contains("get_viewers"));
        assert_eq!(c.tenants[0].actions, vec!["get_viewers"]);
        assert_eq!(c.tenants[0].budget, None);
        assert_eq!(
            c.ledger,
            LedgerConfig::Sqlite {
                path: PathBuf::from("data/ledger.db")
            }
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let text = yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"a\"]\n    budgett: {{credits: 1, period: day}}\n"
        ));
        let err = load(&text, "t.yaml").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("budgett"), "{shown}");
        assert_eq!(err.problems[0].line, 10, "{shown}");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"a\"]\n    budget: {{credits: 5, period: fortnight}}\n  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"b\"]\n    rate_limit: {{per_second: 0}}\n  - id: ops\n    key_sha256: \"{HASH_B}x\"\n    accounts: [\"has space\"]\n"
        ));
        let err = load(&text, "t.yaml").unwrap_err();
        let shown = err.to_string();
        for needle in [
            "t.yaml:10:",
            "tenants[0].budget.period: unknown period \"fortnight\"",
            "t.yaml:11:",
            "tenants[1].id: duplicate tenant id \"crm\" (first at line 7)",
            "tenants[1].key_sha256: duplicate key hash",
            "tenants[1].rate_limit: the rate must be at least 1",
            "tenants[2].key_sha256: must be 64 hex digits",
            "tenants[2].accounts: \"has space\" is not an account id",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
        }
    }

    #[test]
    fn upstream_keys_never_come_from_the_yaml() {
        let text = "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key: \"sk-live\"\n";
        let err = load(text, "t.yaml").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
        let text = "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: VIEWGATE_TEST_SURELY_UNSET_VARIABLE\n";
        let err = load(text, "t.yaml").unwrap_err();
        assert!(err.to_string().contains("t.yaml:5:"), "{err}");
        assert!(
            err.to_string()
                .contains("VIEWGATE_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_build_governor_quotas() {
        let text = yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"*\"]\n    rate_limit: {{per_minute: 120, burst: 3}}\n    budget: {{credits: 1000, period: week}}\n"
        ));
        let c = load(&text, "t.yaml").unwrap();
        let rl = c.tenants[0].rate_limit.unwrap();
        assert_eq!(rl.quota().replenish_interval(), Duration::from_millis(500));
        assert_eq!(rl.quota().burst_size().get(), 3);
        assert_eq!(
            c.tenants[0].budget,
            Some(Budget {
                credits: 1000,
                period: Period::Week
            })
        );
        assert_eq!(c.tenants[0].accounts, vec![AccountPattern::Any]);
    }
}
