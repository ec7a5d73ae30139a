//! Configuration: YAML read raw ([`raw`]), then validated into typed values.
//!
//! Everything the request path needs is parsed here once (durations, URIs,
//! hashes, quotas, secrets); the hot path never touches the YAML. Every
//! problem in a file is reported together, each with its line and column.

mod raw;
mod validate;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::actions::ActionTable;
use crate::keys::{KeyHash, Secret};

pub use validate::{SecretRef, from_yaml, from_yaml_with_env, from_yaml_with_secrets, read_secret};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tenant listener.
    pub server: ServerConfig,
    /// The admin listener, when configured.
    pub admin: Option<AdminConfig>,
    /// The real upstream and its keys.
    pub upstream: UpstreamConfig,
    /// The page cache.
    pub cache: CacheConfig,
    /// Where credits are recorded.
    pub ledger: LedgerConfig,
    /// Who may call, and with what limits.
    pub tenants: Vec<TenantConfig>,
    /// Every action viewgate forwards: the built-in V2 rules, with the fixed
    /// prices of `upstream.estimates` and the `actions:` section applied.
    pub actions: ActionTable,
    /// `idempotency.ttl_s`: how long an `Idempotency-Key`'s first answer is
    /// kept (default 24 h, 1 s to 30 days).
    pub idempotency_ttl: Duration,
    /// `log.level` (an env-filter directive such as `info` or `viewgate=debug`);
    /// `RUST_LOG`, when set, wins.
    pub log_level: Option<String>,
    /// `alerts:`: budget thresholds and the webhook they are sent to.
    pub alerts: AlertsConfig,
}

/// `alerts:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// `alerts.thresholds`: percentages of a period's budget that fire an
    /// alert, ascending (default 50, 80, 95, 100). A tenant's own
    /// `alert_thresholds` replaces them ([`TenantConfig::alert_thresholds`]).
    pub thresholds: Vec<u8>,
    /// Where fired alerts are POSTed, if anywhere.
    pub webhook: Option<WebhookConfig>,
}

/// `alerts.webhook_*`: the receiver of alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `alerts.webhook_url` (http or https).
    pub url: http::Uri,
    /// The HMAC-SHA256 key the body is signed with (`webhook_secret_env` or
    /// `webhook_secret_file`); never logged.
    pub secret: Secret,
    /// One delivery attempt's bound (`webhook_timeout_ms`, default 5000).
    pub timeout: Duration,
}

/// `server:`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the tenant listener.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A request's headers must arrive within this (slowloris); a new
    /// connection's first request too.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress (HTTP/2: no open
    /// stream) for this long is closed (HTTP/2: with a GOAWAY).
    pub idle_timeout: Duration,
    /// A request not answered by then gets 503.
    pub request_timeout: Duration,
    /// A request whose body has not arrived in full by then (from when its
    /// head arrived) gets 408 and gives its slot back.
    pub body_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Open connections at most; further ones are closed at once.
    pub max_connections: usize,
    /// Requests being answered at most; further ones get 503 at once.
    /// Each tenant also has its own share ([`TenantConfig::max_in_flight`]).
    pub max_in_flight: usize,
    /// Serving threads (`server.workers`); `None`: one per vCPU.
    pub workers: Option<usize>,
    /// `server.tls`: serve HTTPS with this certificate, else plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// `server.tls`: where the tenant listener's certificate and key are read
/// from (at start, on SIGHUP, and whenever either file changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf.
    pub key_file: PathBuf,
}

/// `admin:`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// SHA-256 of the admin key, if admin calls are enabled.
    pub key_sha256: Option<KeyHash>,
}

/// `upstream:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Scheme and authority (and optional path prefix) of the upstream.
    pub base_url: http::Uri,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries of free failures (429, 5xx, connect errors).
    pub max_retries: u32,
    /// Bound on one logical call, all attempts and waits included.
    pub deadline: Duration,
    /// How long a request may wait for its key's pace before 429.
    pub max_pace_wait: Duration,
    /// Consecutive failures that open a key's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub breaker_open: Duration,
    /// Distinct accounts whose failures, with no healthy answer between
    /// them, open the whole key's breaker (`upstream.breaker.accounts`).
    pub breaker_accounts: u32,
    /// How far back those account failures count (`upstream.breaker.window_s`).
    pub breaker_window: Duration,
    /// Extra trusted root certificates (PEM), on top of the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// `upstream.estimates` as written: fixed prices of actions other than
    /// `get_viewers`. They are also folded into [`Config::actions`], which
    /// is the one place to read an action's price from.
    pub estimates: std::collections::BTreeMap<String, u64>,
    /// The real keys.
    pub keys: Vec<UpstreamKeyConfig>,
}

/// One real upstream key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamKeyConfig {
    /// Name used in logs and metrics instead of the key.
    pub name: String,
    /// The key itself.
    pub secret: Secret,
    /// Accounts it owns: exact ids, `prefix*` patterns or `*`.
    pub accounts: Vec<AccountPattern>,
    /// The upstream plan's pace for this key.
    pub rate_limit: Option<RateLimit>,
}

/// `cache:`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long a page is fresh.
    pub ttl: Duration,
    /// Upper bound of the cache's size.
    pub max_bytes: u64,
    /// How long after expiry a page may still be served when the upstream fails.
    pub stale_if_error: Duration,
    /// How long after expiry a page is served while it refreshes in the background.
    pub stale_while_revalidate: Duration,
    /// Actions whose answers are cached (`cache.actions`; each is a read
    /// with a cache TTL in [`Config::actions`]).
    pub actions: HashSet<String>,
    /// Whether pages are shared by replicas through Redis (`cache.shared: redis`).
    pub shared: bool,
}

/// `ledger:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerConfig {
    /// In process memory: spend is lost on restart.
    Memory,
    /// A SQLite file.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A Redis server shared by replicas.
    Redis {
        /// Connection URL.
        url: String,
    },
}

/// One tenant.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Stable id, used in logs, metrics and the ledger.
    pub id: String,
    /// SHA-256 of its key.
    pub key_sha256: KeyHash,
    /// Accounts it may read.
    pub accounts: Vec<AccountPattern>,
    /// Actions it may call (`*` for all).
    pub actions: Vec<String>,
    /// Its request rate.
    pub rate_limit: Option<RateLimit>,
    /// Its credit budget; `None` is unlimited.
    pub budget: Option<Budget>,
    /// Requests of this tenant answered at once at most
    /// (`tenants[].max_in_flight`, default half of `server.max_in_flight`,
    /// at least 1); past it the tenant gets 429.
    pub max_in_flight: usize,
    /// Whether it may force a refresh with `cache-control: no-cache`.
    pub allow_refresh: bool,
    /// Whether it may connect LinkedIn accounts (`POST /v2/login` and
    /// `/v2/checkpoint`); default false.
    pub connect_accounts: bool,
    /// What a cacheable read its budget cannot cover gets
    /// (`tenants[].on_budget_exhausted`, default `refuse`).
    pub on_budget_exhausted: OnBudgetExhausted,
    /// Whether its rate limit and budget refuse requests
    /// (`tenants[].enforce`, default true); false is shadow mode: nothing
    /// is refused, what would have been is logged and counted.
    pub enforce: bool,
    /// Budget percentages that fire an alert, ascending: its own
    /// `alert_thresholds`, else `alerts.thresholds`; empty for none.
    pub alert_thresholds: Vec<u8>,
}

#[cfg(test)]
impl TenantConfig {
    /// A tenant for unit tests: every account and action, no rate limit or
    /// budget, enforced, no alerts; a test changes what it is about with
    /// `..TenantConfig::test("id")`.
    pub(crate) fn test(id: &str) -> Self {
        Self {
            id: id.into(),
            key_sha256: crate::keys::KeyHash::of(b"test-only"),
            accounts: vec![AccountPattern::Any],
            actions: vec!["*".into()],
            rate_limit: None,
            budget: None,
            max_in_flight: 4,
            allow_refresh: false,
            connect_accounts: false,
            on_budget_exhausted: OnBudgetExhausted::Refuse,
            enforce: true,
            alert_thresholds: Vec::new(),
        }
    }
}

/// What a tenant's cacheable read gets when its budget cannot cover it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnBudgetExhausted {
    /// 402 `INSUFFICIENT_CREDITS`.
    #[default]
    Refuse,
    /// An expired page still held by the cache, at no charge, marked
    /// `x-viewgate-degraded: budget`; 402 when there is none.
    Stale,
}

/// Where a rate limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In this process: each replica allows the full rate.
    Local,
    /// In Redis: all replicas together allow the rate.
    Global,
}

/// A GCRA quota: `count` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `scope` as written; `None` means global when the ledger is on Redis.
    pub scope: Option<Scope>,
    /// Requests per period.
    pub count: NonZeroU32,
    /// The period.
    pub period: Duration,
    /// Bucket capacity.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// Whether this limit is kept in Redis, given whether Redis is configured.
    pub fn is_global(&self, redis: bool) -> bool {
        match self.scope {
            Some(Scope::Global) => true,
            Some(Scope::Local) => false,
            None => redis,
        }
    }

    /// The governor quota for this limit.
    pub fn quota(&self) -> governor::Quota {
        let per_cell = self.period / self.count.get();
        governor::Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .expect("period is never zero")
            .allow_burst(self.burst)
    }
}

/// A credit budget per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Credits per period.
    pub credits: u64,
    /// The period.
    pub period: Period,
}

/// Budget periods, all in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A calendar day.
    Day,
    /// An ISO week, starting Monday.
    Week,
    /// A calendar month.
    Month,
    /// Never resets.
    Total,
}

impl Period {
    /// The name used in config and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }
}

/// An account pattern: one id, ids starting with a prefix (`acc-*`), or all (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountPattern {
    /// Every account.
    Any,
    /// Accounts starting with this prefix.
    Prefix(String),
    /// Exactly this account.
    Exact(String),
}

impl AccountPattern {
    /// Whether `account` matches.
    pub fn matches(&self, account: &str) -> bool {
        match self {
            AccountPattern::Any => true,
            AccountPattern::Prefix(p) => account.starts_with(p.as_str()),
            AccountPattern::Exact(a) => a == account,
        }
    }

    /// Whether some account matches both patterns.
    pub fn overlaps(&self, other: &AccountPattern) -> bool {
        use AccountPattern::*;
        match (self, other) {
            (Any, _) | (_, Any) => true,
            (Exact(a), p) | (p, Exact(a)) => p.matches(a),
            (Prefix(a), Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
        }
    }

    /// Higher is more specific: exact beats a longer prefix beats a shorter one beats `*`.
    pub fn specificity(&self) -> usize {
        match self {
            AccountPattern::Any => 0,
            AccountPattern::Prefix(p) => 1 + p.len(),
            AccountPattern::Exact(_) => usize::MAX,
        }
    }
}

/// Whether `account_id` is well formed: 1 to 128 printable ASCII characters, no spaces.
pub fn valid_account_id(account_id: &str) -> bool {
    !account_id.is_empty()
        && account_id.len() <= 128
        && account_id.bytes().all(|b| b.is_ascii_graphic())
}

/// A configuration that could not be loaded: every problem found, with its place.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file it came from (or a label such as `<demo>`).
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// The key, as a path such as `tenants[1].budget.credits`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line > 0 {
                write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?;
            } else {
                write!(f, "{}: ", self.file)?;
            }
            if p.key.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, file) = read(path)?;
        from_yaml(&text, &file)
    }

    /// Reads and validates a configuration file without reading any secret
    /// (upstream keys, the webhook key), for commands that use none, such
    /// as `usage`. Each secret reads as a placeholder that passes every
    /// check a real one must (header-safe, long enough).
    pub fn load_without_secrets(path: &Path) -> Result<Config, ConfigError> {
        let (text, file) = read(path)?;
        from_yaml_with_secrets(&text, &file, &|_| {
            Ok("not-loaded-by-this-command".to_string())
        })
    }

    /// Logs each of [`Config::warnings`] (at start and on each reload).
    pub(crate) fn log_warnings(&self) {
        for warning in self.warnings() {
            tracing::warn!(warning = warning.as_str(), "configuration warning");
        }
    }

    /// What is valid but likely a mistake, one sentence each: `check`
    /// prints these and `serve` logs them, and neither refuses the file.
    pub fn warnings(&self) -> Vec<String> {
        let documented = ActionTable::builtin(self.cache.ttl);
        self.actions
            .priced_below(&documented)
            .into_iter()
            .map(|(action, ours, theirs, asked)| {
                format!(
                    "actions.{action}: priced below the upstream's documented price \
                     ({ours} credit(s) instead of {theirs} for {asked} result(s)): a call \
                     holds less than it may be charged, so a budget can be overrun by \
                     the difference and a crash before it settles counts only what was held"
                )
            })
            .collect()
    }
}

fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((text, file)),
        Err(e) => Err(ConfigError {
            file,
            problems: vec![Problem {
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}
