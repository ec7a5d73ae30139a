//! `viewgate sim --listen ADDR [--config FILE]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::keys::mint_tenant_key;
use crate::sim::{SimConfig, SimKey};

/// Runs the simulator until ctrl-c.
pub(super) async fn run(listen: SocketAddr, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_saphyr::from_str::<SimConfig>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            let key = match std::env::var("VIEWGATE_SIM_KEY") {
                Ok(k) if !k.is_empty() => k,
                _ => {
                    let k = mint_tenant_key()?.replacen("vg_", "sim_", 1);
                    // A simulator key opens only this simulator: printing it is how you use it.
                    println!("simulator key (demo, owns every account): {k}");
                    k
                }
            };
            SimConfig::default().with_key(SimKey::new("demo", key, ["*"]))
        }
    };
    crate::sim::run(listen, config).await
}
