//! `viewgate serve --config FILE`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::app::Gateway;
use crate::clock::Clock;
use crate::config::Config;
use crate::listener;

/// Loads the config, serves until SIGTERM / SIGINT, drains, returns.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let gateway = Gateway::new(config, Clock::real()).map_err(anyhow::Error::msg)?;
    serve(gateway, crate::cli::shutdown_signal()).await
}

/// Serves `gateway` on its configured address until `shutdown` resolves.
pub async fn serve(gateway: Gateway, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = &gateway.config;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    announce(&gateway, listener.local_addr()?);
    listener::serve(
        listener,
        gateway.build_stack(),
        config.server.header_timeout,
        shutdown,
    )
    .await;
    tracing::info!("viewgate stopped");
    Ok(())
}

/// The start-up log line: where it listens and what is in force (never a key).
pub fn announce(gateway: &Gateway, addr: std::net::SocketAddr) {
    let config = &gateway.config;
    let tenants: Vec<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();
    let keys: Vec<&str> = config
        .upstream
        .keys
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    let ledger = match &config.ledger {
        crate::config::LedgerConfig::Memory => "memory".to_string(),
        crate::config::LedgerConfig::Sqlite { path } => format!("sqlite:{}", path.display()),
        crate::config::LedgerConfig::Redis { .. } => "redis".to_string(),
    };
    tracing::info!(
        listen = %addr,
        upstream = %config.upstream.base_url,
        upstream_keys = keys.join(","),
        tenants = tenants.join(","),
        ledger = ledger.as_str(),
        cache_ttl_s = config.cache.ttl.as_secs(),
        "viewgate listening"
    );
}
