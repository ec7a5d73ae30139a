//! `viewgate serve --config FILE`, and the run loop the demo shares.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::app::Gateway;
use crate::clock::Clock;
use crate::config::{Config, LedgerConfig};
use crate::listener::{self, ServerOptions, ServerTls, Workers};
use crate::live::Live;

/// How often the config file (and the certificate's files) are checked for changes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Loads the config, serves until SIGTERM / SIGINT, drains, returns.
pub(super) async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    crate::logging::set_level(config.log_level.as_deref());
    let listen = config.server.listen;
    let tls = match &config.server.tls {
        Some(files) => {
            Some(ServerTls::load(files).map_err(|e| anyhow::anyhow!("server.tls: {e}"))?)
        }
        None => None,
    };
    let gateway = Gateway::new(config, Clock::real())
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    run_gateway(
        Live::with_tls(gateway, Some(path), tls),
        listener,
        None,
        crate::cli::shutdown_signal(),
    )
    .await
}

/// Serves `live` on `listener` (and its admin listener, if configured) until
/// `shutdown` resolves; then drains in-flight requests, flushes the ledger
/// and returns. With a config file, SIGHUP and changes to the file reload it
/// (and the certificate, which also reloads when its files change).
pub(super) async fn run_gateway(
    live: Arc<Live>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = live.gateway();
    let options = ServerOptions::from_config(&gateway.config.server);
    let draining = Arc::new(AtomicBool::new(false));
    let admin = match &gateway.config.admin {
        Some(admin) => {
            let service = Admin::new(Arc::clone(&live), Arc::clone(&draining)).service();
            let service = listener::tower(service);
            // Bound already when the caller had to know its port (the demo).
            let server = match admin_listener {
                Some(bound) => listener::spawn_on(bound, service, options, None),
                None => listener::spawn(admin.listen, service, options).await,
            }
            .with_context(|| format!("cannot listen on {} (admin)", admin.listen))?;
            Some(server)
        }
        None => None,
    };
    announce(
        &gateway,
        listener.local_addr()?,
        admin.as_ref().map(|a| a.addr()),
    );
    let reloaders = [
        tokio::spawn(Arc::clone(&live).reload_on_sighup()),
        tokio::spawn(Arc::clone(&live).reload_on_change(WATCH_EVERY)),
        tokio::spawn(Arc::clone(&live).reload_certificate_on_change(WATCH_EVERY)),
    ];
    let flag = Arc::clone(&draining);
    // When the grace period began: detached calls get what is left of it.
    let asked_at = Arc::new(OnceLock::new());
    let (at, clock) = (Arc::clone(&asked_at), gateway.clock.clone());
    // A second SIGTERM / ctrl-c while draining stops the waiting.
    let (force, forced) = watch::channel(false);
    let stopping = gateway.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        // Listening for a second signal from now on, before anything else.
        let again = crate::cli::shutdown_signal();
        let _ = at.set(clock.now());
        // Calls still waiting for their turn upstream are not sent now.
        stopping.cancel();
        // /readyz turns 503 at once so load balancers stop sending new requests.
        flag.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested: draining in-flight requests");
        // Ends with the runtime if no second signal comes.
        tokio::spawn(async move {
            again.await;
            tracing::warn!(
                "second shutdown signal: not waiting any longer for in-flight requests and upstream calls (what they hold counts as spent)"
            );
            let _ = force.send(true);
        });
    };
    let workers = gateway.config.server.workers.unwrap_or_else(Workers::auto);
    let workers = Arc::new(Workers::start(workers).context("cannot start the serving threads")?);
    let serving = listener::serve(
        listener,
        live.service(),
        options,
        live.tls(),
        Some(Arc::clone(&workers)),
        shutdown,
    );
    tokio::select! {
        () = serving => {}
        () = signalled(forced.clone()) => {}
    }
    let gateway = live.gateway();
    tokio::select! {
        // A second signal already in means no wait (and no line saying so).
        biased;
        () = signalled(forced) => {}
        () = finish_detached(&gateway, asked_at.get().copied()) => {}
    }
    // Every connection has ended (or the grace is over): the threads can go.
    tokio::task::spawn_blocking(move || drop(workers))
        .await
        .ok();
    for task in reloaders {
        task.abort();
    }
    if let Some(alerts) = live.gateway().credits.alerts() {
        // What is owed stays in the outbox for the next start.
        alerts.stop();
    }
    if let Err(e) = live.gateway().ledger.flush().await {
        tracing::error!(error = %e, "could not flush the ledger at shutdown");
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!("viewgate stopped");
    Ok(())
}

/// Resolves once `flag` turns true (never if its sender goes without).
async fn signalled(mut flag: watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits, within what is left of `server.shutdown_grace_s` after `asked_at`,
/// for the work that outlived its request: upstream calls past the request
/// deadline are paid for, and must settle (and fill the cache) before the
/// serving threads that run them are stopped.
async fn finish_detached(gateway: &Gateway, asked_at: Option<Instant>) {
    let detached = &gateway.detached;
    detached.close();
    if detached.is_empty() {
        return;
    }
    let spent = asked_at.map_or(Duration::ZERO, |at| {
        gateway.clock.now().saturating_duration_since(at)
    });
    let left = gateway.config.server.shutdown_grace.saturating_sub(spent);
    // Counted in tasks: one per upstream call, plus one per request with an
    // Idempotency-Key (the task that keeps its answer under the key).
    tracing::info!(
        tasks = detached.len(),
        "waiting for upstream calls that outlived their requests"
    );
    if tokio::time::timeout(left, detached.wait()).await.is_err() {
        tracing::warn!(
            tasks = detached.len(),
            "shutdown grace period ended with upstream calls still running: what they hold counts as spent"
        );
    }
}

/// The start-up log line: where it listens and what is in force (never a key).
pub(super) fn announce(
    gateway: &Gateway,
    addr: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
) {
    let config = &gateway.config;
    let tenants: Vec<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();
    let keys: Vec<&str> = config
        .upstream
        .keys
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    let ledger = match &config.ledger {
        LedgerConfig::Memory => "memory".to_string(),
        LedgerConfig::Sqlite { path } => format!("sqlite:{}", path.display()),
        LedgerConfig::Redis { .. } => "redis".to_string(),
    };
    tracing::info!(
        listen = %addr,
        scheme = if config.server.tls.is_some() { "https" } else { "http" },
        admin = admin.map(|a| a.to_string()),
        upstream = %config.upstream.base_url,
        upstream_keys = keys.join(","),
        tenants = tenants.join(","),
        ledger = ledger.as_str(),
        cache_ttl_s = config.cache.ttl.as_secs(),
        max_in_flight = config.server.max_in_flight,
        max_connections = config.server.max_connections,
        workers = config.server.workers.unwrap_or_else(Workers::auto),
        idle_timeout_ms = config.server.idle_timeout.as_millis() as u64,
        // The failure policies in force, in one place.
        on_upstream_failure = format!(
            "retry 429/5xx/connect up to {} times within {} ms; an account's breaker opens after {} failures for it, the key's after {} connection failures or failures of {} accounts within {} s, for {} s; serve stale up to {} s after expiry",
            config.upstream.max_retries,
            config.upstream.deadline.as_millis(),
            config.upstream.breaker_failures,
            config.upstream.breaker_failures,
            config.upstream.breaker_accounts,
            config.upstream.breaker_window.as_secs(),
            config.upstream.breaker_open.as_secs(),
            config.cache.stale_if_error.as_secs()
        ),
        on_ledger_failure = "misses answer 503 SERVICE_UNAVAILABLE (credits fail closed); cache hits are still served",
        on_redis_failure = if gateway.redis.is_some() {
            "global rate limits fall back to this replica's local limiters; /readyz answers 503 until Redis is back"
        } else {
            "not used"
        },
        on_overload = "a tenant past its max_in_flight share answers 429; past server.max_in_flight requests answer 503 at once; a body not in by body_timeout_ms answers 408; past max_connections connections are closed",
        "viewgate listening"
    );
    config.log_warnings();
}
