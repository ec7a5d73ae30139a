//! `viewgate demo`: the simulator and the gateway on loopback, ready for curl.

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::app::Gateway;
use crate::clock::Clock;
use crate::config::{AdminConfig, from_yaml_with_env};
use crate::keys::{KeyHash, mint_tenant_key};
use crate::sim::{SimConfig, SimKey, Simulator};

/// The demo configuration, embedded.
pub(super) const DEMO_CONFIG: &str = include_str!("../../config/demo.yaml");

/// Where the demo's admin listener goes when it is free.
const DEMO_ADMIN_PORT: u16 = 9090;

/// Binds `addr`, or a free loopback port when it is taken (said on stderr).
async fn bind_or_any(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) => {
            eprintln!("viewgate demo: {addr}{what} is not free ({e}); using a free port instead");
            Ok(tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?)
        }
    }
}

/// Accounts the simulator's key has connected, so `GET /v2/accounts` lists
/// something (it owns every other account too, through `*`).
const CONNECTED_ACCOUNTS: [&str; 3] = ["acc-1", "acc-2", "acc-3"];

/// The demo's example calls, as curl lines for `key` at `addr`: a viewer
/// page, the accounts list, and a search (every line is one request; tests
/// run them as printed).
fn curl_lines(addr: SocketAddr, key: &str) -> [(&'static str, String); 3] {
    let post = |body: &str| {
        format!(
            "  curl -s http://{addr}/v2/profiles -H 'x-api-key: {key}' -H 'content-type: application/json' \\\n    -d '{body}'"
        )
    };
    [
        (
            "Ask for a page twice: the first is a miss (1 credit), the second a hit (0 credits):",
            post(
                r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}"#,
            ),
        ),
        (
            "List the accounts crm may use (free; acc-3 is the upstream key's, but not crm's):",
            format!("  curl -s http://{addr}/v2/accounts -H 'x-api-key: {key}'"),
        ),
        (
            "Search people twice: searches are cached by their params, so the second is a hit too:",
            post(
                r#"{"account_id":"acc-1","action":"search_people","params":{"keywords":"product manager","count":10}}"#,
            ),
        ),
    ]
}

/// Runs the demo until ctrl-c.
pub(super) async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let upstream_key = mint_tenant_key()?.replacen("vg_", "sim_", 1);
    let owned = CONNECTED_ACCOUNTS.iter().copied().chain(["*"]);
    let sim = Simulator::start(
        SimConfig::default().with_key(SimKey::new("primary", upstream_key.clone(), owned)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .context("cannot start the simulator")?;

    let mut config = from_yaml_with_env(DEMO_CONFIG, "config/demo.yaml", &|name| {
        (name == "LINKUP_API_KEY").then(|| upstream_key.clone())
    })
    .map_err(|e| anyhow::anyhow!("the embedded demo config is invalid:\n{e}"))?;
    config.upstream.base_url = sim.base_url().parse().context("simulator URL")?;
    let mut keys = Vec::new();
    for tenant in &mut config.tenants {
        let key = mint_tenant_key()?;
        tenant.key_sha256 = KeyHash::of(key.as_bytes());
        keys.push((tenant.id.clone(), key));
    }
    config.server.listen = listen;
    let listener = bind_or_any(listen, "").await?;
    let addr = listener.local_addr()?;
    // The admin listener (credits page, usage, metrics) beside it: 9090, or
    // a free port when that is taken or the gateway itself took a free one.
    let admin_key = mint_tenant_key()?.replacen("vg_", "adm_", 1);
    let admin_port = if listen.port() == 0 {
        0
    } else {
        DEMO_ADMIN_PORT
    };
    let admin_listener =
        bind_or_any(SocketAddr::from(([127, 0, 0, 1], admin_port)), " (admin)").await?;
    let admin_addr = admin_listener.local_addr()?;
    config.admin = Some(AdminConfig {
        listen: admin_addr,
        key_sha256: Some(KeyHash::of(admin_key.as_bytes())),
    });
    let gateway = Gateway::new(config, Clock::real())
        .await
        .map_err(anyhow::Error::msg)?;

    println!("viewgate demo");
    println!("  simulator (the upstream): {}", sim.base_url());
    println!("  gateway:                  http://{addr}");
    println!("  admin:                    http://{admin_addr}  key: {admin_key}");
    for (id, key) in &keys {
        println!("  tenant {id:<10} key: {key}");
    }
    let (_, crm_key) = &keys[0];
    for (what, curl) in curl_lines(addr, crm_key) {
        println!();
        println!("{what}");
        println!();
        println!("{curl}");
    }
    println!();
    println!(
        "What each tenant spent and saved: the credits page at http://{admin_addr}/admin/ \
         (in a browser: any user name, the admin key as password), or as JSON:"
    );
    println!();
    println!("  curl -s http://{admin_addr}/admin/usage -H 'x-admin-key: {admin_key}'");
    println!();
    println!(
        "Simulator counters: curl -s {}/_sim/stats    Stop: ctrl-c",
        sim.base_url()
    );
    println!();

    crate::cli::serve::run_gateway(
        crate::live::Live::new(gateway, None),
        listener,
        Some(admin_listener),
        crate::cli::shutdown_signal(),
    )
    .await?;
    sim.shutdown();
    Ok(())
}
