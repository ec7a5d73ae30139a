//! `viewgate serve --config FILE`, and the run loop the demo shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::app::Gateway;
use crate::clock::Clock;
use crate::config::{Config, LedgerConfig};
use crate::listener;

/// Loads the config, serves until SIGTERM / SIGINT, drains, returns.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let listen = config.server.listen;
    let gateway = Gateway::new(config, Clock::real()).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    run_gateway(gateway, listener, crate::cli::shutdown_signal()).await
}

/// Serves `gateway` on `listener` (and its admin listener, if configured)
/// until `shutdown` resolves; then drains in-flight requests and returns.
pub async fn run_gateway(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let admin = match &gateway.config.admin {
        Some(admin) => {
            let service = Admin::new(gateway.clone(), Arc::clone(&draining)).service();
            let server =
                listener::spawn(admin.listen, service, gateway.config.server.header_timeout)
                    .await
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
    let flag = Arc::clone(&draining);
    let shutdown = async move {
        shutdown.await;
        // /readyz turns 503 at once so load balancers stop sending new requests.
        flag.store(true, Ordering::SeqCst);
        tracing::info!("shutdown requested: draining in-flight requests");
    };
    listener::serve(
        listener,
        gateway.build_stack(),
        gateway.config.server.header_timeout,
        shutdown,
    )
    .await;
    if let Err(e) = gateway.ledger.flush().await {
        tracing::error!(error = %e, "could not flush the ledger at shutdown");
    }
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!("viewgate stopped");
    Ok(())
}

/// The start-up log line: where it listens and what is in force (never a key).
pub fn announce(
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
        admin = admin.map(|a| a.to_string()),
        upstream = %config.upstream.base_url,
        upstream_keys = keys.join(","),
        tenants = tenants.join(","),
        ledger = ledger.as_str(),
        cache_ttl_s = config.cache.ttl.as_secs(),
        stale_if_error_s = config.cache.stale_if_error.as_secs(),
        max_retries = config.upstream.max_retries,
        "viewgate listening"
    );
}
