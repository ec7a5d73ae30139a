//! `RawConfig` → `Config`: defaults, ranges, cross-references, secrets.
//!
//! One function per section (`sections`, `upstream`, `tenants`, `actions`),
//! scalar helpers in `values`, and here the entry points and the checks that
//! tie sections together. Problems are collected, not returned at the first
//! one, so an operator fixes a file in one pass. Relative paths
//! (`ledger.path`, `api_key_file`) are taken from the working directory, as
//! the process sees them.

mod actions;
mod alerts;
mod secrets;
mod sections;
mod tenants;
mod upstream;
mod values;

use std::net::{IpAddr, SocketAddr};

use serde_saphyr::Location;

use super::raw::RawConfig;
use super::*;

pub use secrets::{SecretRef, read_secret};

/// How validation reads upstream keys (the real sources, or a test's).
type Secrets<'a> = &'a dyn Fn(SecretRef<'_>) -> Result<String, String>;

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

/// Parses and validates YAML, reading upstream keys through `secrets`.
pub fn from_yaml_with_secrets(
    text: &str,
    file: &str,
    secrets: Secrets<'_>,
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

fn parse_and_validate(text: &str, file: &str, secrets: Secrets<'_>) -> Result<Config, ConfigError> {
    // The path to the value the parser refused (`server.workers`) names the
    // key; the parser's location gives its line.
    let mut key = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
            key = key_path(e.path());
            e.into_inner()
        })
    });
    let error = match parsed {
        Ok(raw) => return validated(&raw, file, secrets),
        Err(error) => error,
    };
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    // The parser's own message can quote the offending text; keep only its first line.
    let message = error.to_string();
    let first = message.lines().next().unwrap_or("invalid YAML");
    // Drop the parser's own "error: line N column M:" prefix: we print the place ourselves.
    let message = match first.strip_prefix("error: line ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
        None => first.to_string(),
    };
    Err(ConfigError {
        file: file.to_string(),
        problems: vec![Problem {
            line,
            column,
            key,
            message,
        }],
    })
}

/// A parse error's path as the README writes keys (`tenants[2].budget`);
/// empty at the top level, `?` for a map key it could not read. The parts
/// serde-saphyr adds for a value's location (`value`, `referenced`,
/// `defined`: no configuration key has those names) are left out.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if matches!(name.as_str(), "value" | "referenced" | "defined") {
                    continue;
                }
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            // A key the path could not read (a spanned map key).
            Segment::Unknown => key.push_str(if key.is_empty() { "?" } else { ".?" }),
        }
    }
    key
}

fn validated(raw: &RawConfig, file: &str, secrets: Secrets<'_>) -> Result<Config, ConfigError> {
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

/// Every section, then the checks that need more than one.
fn validate(raw: &RawConfig, p: &mut Problems, secrets: Secrets<'_>) -> Config {
    let server = sections::server(&raw.server, p);
    let admin = raw.admin.as_ref().map(|a| sections::admin(a, p));
    let upstream = upstream::upstream(&raw.upstream, p, secrets);
    let mut cache = sections::cache(&raw.cache, p);
    let ledger = sections::ledger(&raw.ledger, p);
    let tenants = tenants::tenants(&raw.tenants, server.max_in_flight, p);
    let actions = actions::actions(
        raw.upstream.estimates.as_ref(),
        raw.actions.as_ref(),
        cache.ttl,
        p,
    );
    cache.actions = actions::cached(&raw.cache, &actions, p);
    tenants::stale_mode_window(&raw.tenants, &cache, p);
    let idempotency_ttl = sections::idempotency(&raw.idempotency, p);
    let log_level = sections::log(&raw.log, p);
    let alerts = alerts::alerts(&raw.alerts, p, secrets);
    let mut tenants = tenants;
    alerts::tenant_thresholds(&raw.tenants, &mut tenants, &alerts.thresholds, p);
    let config = Config {
        server,
        admin,
        upstream,
        cache,
        ledger,
        tenants,
        actions,
        idempotency_ttl,
        log_level,
        alerts,
    };
    redis_only(raw, &config, p);
    admin_apart(raw, &config, p);
    config
}

/// What lives only in Redis needs the ledger there.
fn redis_only(raw: &RawConfig, config: &Config, p: &mut Problems) {
    if matches!(config.ledger, LedgerConfig::Redis { .. }) {
        return;
    }
    if config.cache.shared {
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
    let global = |rl: &Option<RateLimit>| rl.is_some_and(|r| r.scope == Some(Scope::Global));
    for (i, t) in config.tenants.iter().enumerate() {
        if global(&t.rate_limit) {
            p.nowhere(
                format!("tenants[{i}].rate_limit.scope"),
                "global rate limits live in Redis: set ledger.backend: redis",
            );
        }
    }
    for (i, k) in config.upstream.keys.iter().enumerate() {
        if global(&k.rate_limit) {
            p.nowhere(
                format!("upstream.keys[{i}].rate_limit.scope"),
                "global rate limits live in Redis: set ledger.backend: redis",
            );
        }
    }
}

/// The admin side must not be reachable the tenant way: not with a tenant's
/// key (it would open `/admin/` to that tenant), not on the tenant socket
/// (the second listener could not bind).
fn admin_apart(raw: &RawConfig, config: &Config, p: &mut Problems) {
    let (Some(admin), Some(raw_admin)) = (&config.admin, &raw.admin) else {
        return;
    };
    if let (Some(admin_hash), Some(at)) = (admin.key_sha256, &raw_admin.key_sha256) {
        for (i, t) in raw.tenants.iter().enumerate() {
            // From the raw text: an unparsable tenant hash is reported on its own.
            if KeyHash::from_hex(&t.key_sha256.value) == Some(admin_hash) {
                p.at(
                    &at.referenced,
                    "admin.key_sha256",
                    format!(
                        "is also tenants[{i}].key_sha256 ({:?}, line {}): that tenant's key would open /admin/; give the admin its own key",
                        t.id.value,
                        t.key_sha256.referenced.line()
                    ),
                );
            }
        }
    }
    if sockets_collide(admin.listen, config.server.listen) {
        // Point at whichever address the file wrote (both defaults cannot collide).
        let (loc, key) = match (&raw_admin.listen, &raw.server.listen) {
            (Some(a), _) => (a.referenced, "admin.listen"),
            (None, Some(s)) => (s.referenced, "server.listen"),
            (None, None) => (Location::UNKNOWN, "admin.listen"),
        };
        p.at(
            &loc,
            key,
            format!(
                "admin.listen ({}) and server.listen ({}) are the same socket: give the admin listener its own port",
                admin.listen, config.server.listen
            ),
        );
    }
}

/// Whether two listeners would fight over one socket: the same port (not 0,
/// which picks a free one each time) on the same address, or on an address
/// that a wildcard listener already covers.
fn sockets_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    x == y || covers(x, y) || covers(y, x)
}

/// Whether a listener on `wildcard` also takes connections to `ip`: `0.0.0.0`
/// covers every IPv4 address; `::` covers every address, since Linux binds
/// it dual-stack by default.
fn covers(wildcard: IpAddr, ip: IpAddr) -> bool {
    wildcard.is_unspecified() && (wildcard.is_ipv6() || ip.is_ipv4())
}

#[cfg(test)]
mod tests;
