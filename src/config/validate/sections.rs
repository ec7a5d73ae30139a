//! The small sections: `server`, `admin`, `cache`, `ledger`, `idempotency`
//! and `log`. Each reads its own raw section and nothing else; checks that
//! tie sections together are in `mod.rs`.

use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Location;

use super::Problems;
use super::values::{addr, count, hash, millis, seconds};
use crate::config::raw::{
    RawAdmin, RawCache, RawIdempotency, RawLedger, RawLog, RawServer, RawTls,
};
use crate::config::{AdminConfig, CacheConfig, LedgerConfig, ServerConfig, TlsFiles};
use crate::listener::tls::{PairProblem, read_pair};

/// `server:`.
pub(super) fn server(raw: &RawServer, p: &mut Problems) -> ServerConfig {
    ServerConfig {
        listen: addr(p, raw.listen.as_ref(), "server.listen", "127.0.0.1:8080"),
        max_body_bytes: raw.max_body_bytes.as_ref().map_or(65536, |v| {
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
            raw.header_timeout_ms.as_ref(),
            "server.header_timeout_ms",
            10_000,
        ),
        request_timeout: millis(
            p,
            raw.request_timeout_ms.as_ref(),
            "server.request_timeout_ms",
            60_000,
        ),
        body_timeout: millis(
            p,
            raw.body_timeout_ms.as_ref(),
            "server.body_timeout_ms",
            10_000,
        ),
        shutdown_grace: seconds(
            p,
            raw.shutdown_grace_s.as_ref(),
            "server.shutdown_grace_s",
            30,
            true,
        ),
        max_connections: count(
            p,
            raw.max_connections.as_ref(),
            "server.max_connections",
            10_000,
        ),
        max_in_flight: count(p, raw.max_in_flight.as_ref(), "server.max_in_flight", 4_096),
        idle_timeout: millis(
            p,
            raw.idle_timeout_ms.as_ref(),
            "server.idle_timeout_ms",
            75_000,
        ),
        workers: raw.workers.as_ref().map(|v| {
            if v.value == 0 || v.value > 1024 {
                p.at(
                    &v.referenced,
                    "server.workers",
                    "must be between 1 and 1024",
                );
            }
            v.value as usize
        }),
        tls: raw.tls.as_ref().map(|t| tls(t, p)),
    }
}

/// `server.tls`: both files are read, parsed and matched here, so `check`
/// and a reload refuse a pair the listener could not serve, at the line that
/// names the bad file. (Reasons never quote the key file's contents.)
fn tls(raw: &RawTls, p: &mut Problems) -> TlsFiles {
    let files = TlsFiles {
        cert_file: PathBuf::from(&raw.cert_file.value),
        key_file: PathBuf::from(&raw.key_file.value),
    };
    if let Err(e) = read_pair(&files) {
        let (at, key) = match e.problem {
            PairProblem::Certificate => (&raw.cert_file, "server.tls.cert_file"),
            PairProblem::Key => (&raw.key_file, "server.tls.key_file"),
        };
        p.at(&at.referenced, key, e.reason);
    }
    files
}

/// `admin:`.
pub(super) fn admin(raw: &RawAdmin, p: &mut Problems) -> AdminConfig {
    AdminConfig {
        listen: addr(p, raw.listen.as_ref(), "admin.listen", "127.0.0.1:9090"),
        key_sha256: raw
            .key_sha256
            .as_ref()
            .and_then(|k| hash(p, k, "admin.key_sha256")),
    }
}

/// `cache:`, except which actions are cached: that needs the action table,
/// which needs this section's TTL (see `actions::cached`).
pub(super) fn cache(raw: &RawCache, p: &mut Problems) -> CacheConfig {
    CacheConfig {
        ttl: seconds(p, raw.ttl_s.as_ref(), "cache.ttl_s", 300, false),
        max_bytes: raw.max_bytes.as_ref().map_or(256 * 1024 * 1024, |v| {
            if v.value < 1024 {
                p.at(&v.referenced, "cache.max_bytes", "must be at least 1024");
            }
            v.value
        }),
        stale_if_error: seconds(
            p,
            raw.stale_if_error_s.as_ref(),
            "cache.stale_if_error_s",
            3600,
            true,
        ),
        stale_while_revalidate: seconds(
            p,
            raw.stale_while_revalidate_s.as_ref(),
            "cache.stale_while_revalidate_s",
            0,
            true,
        ),
        actions: Default::default(),
        shared: match &raw.shared {
            None => false,
            Some(s) if s.value == "redis" => true,
            Some(s) if s.value == "none" => false,
            Some(s) => {
                p.at(&s.referenced, "cache.shared", "must be redis or none");
                false
            }
        },
    }
}

/// `ledger:`.
pub(super) fn ledger(raw: &RawLedger, p: &mut Problems) -> LedgerConfig {
    let backend = raw.backend.as_ref();
    let backend_at = backend.map_or(Location::UNKNOWN, |b| b.referenced);
    // design.md: the embedded default is a SQLite file.
    match backend.map_or("sqlite", |b| b.value.as_str()) {
        "memory" => LedgerConfig::Memory,
        "sqlite" => LedgerConfig::Sqlite {
            path: PathBuf::from(
                raw.path
                    .as_ref()
                    .map_or("data/ledger.db", |s| s.value.as_str()),
            ),
        },
        "redis" => match &raw.redis_url {
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
                p.at(
                    &backend_at,
                    "ledger.redis_url",
                    "is required when backend is redis",
                );
                LedgerConfig::Memory
            }
        },
        other => {
            p.at(
                &backend_at,
                "ledger.backend",
                format!("unknown backend {other:?}; use memory, sqlite or redis"),
            );
            LedgerConfig::Memory
        }
    }
}

/// Shortest and longest time an `Idempotency-Key`'s answer may be kept: a
/// client retries within seconds to hours; a month is more than any retry
/// policy needs, and every kept answer costs ledger space.
const IDEMPOTENCY_TTL_S: (u64, u64) = (1, 30 * 24 * 3600);

/// `idempotency:`: how long an `Idempotency-Key`'s first answer is kept.
pub(super) fn idempotency(raw: &RawIdempotency, p: &mut Problems) -> Duration {
    let (low, high) = IDEMPOTENCY_TTL_S;
    let Some(ttl) = &raw.ttl_s else {
        return Duration::from_secs(24 * 3600);
    };
    if !(low..=high).contains(&ttl.value) {
        p.at(
            &ttl.referenced,
            "idempotency.ttl_s",
            format!("must be between {low} and {high} seconds (30 days)"),
        );
    }
    Duration::from_secs(ttl.value.clamp(low, high))
}

/// `log:`.
pub(super) fn log(raw: &RawLog, p: &mut Problems) -> Option<String> {
    raw.level.as_ref().map(|l| {
        if tracing_subscriber::EnvFilter::try_new(&l.value).is_err() {
            p.at(
                &l.referenced,
                "log.level",
                "is not a log filter (e.g. info, warn, viewgate=debug)",
            );
        }
        l.value.clone()
    })
}
