//! `viewgate usage --config FILE`: each tenant's credits this period.
//!
//! Reads the SQLite ledger file read-only, so it works while `viewgate serve`
//! runs on the same file. Open reservations show as `reserved`. Besides the
//! period's figures it prints the spend of the last hour and day, the hit
//! ratio, what coalescing saved, and when the budget runs out at the recent
//! rate (see `ledger::history::forecast`).

use std::path::Path;

use anyhow::Context as _;

use crate::admin::UsageRow;
use crate::clock::Clock;
use crate::config::{Budget, Config, LedgerConfig};
use crate::ledger::read_usage;

/// Prints the usage table (or JSON).
pub(super) fn run(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load_without_secrets(path)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let ledger = match &config.ledger {
        LedgerConfig::Sqlite { path } => path,
        // Named, never printed: a Redis URL may carry a password.
        other => anyhow::bail!(
            "`viewgate usage` reads the SQLite ledger; this config's ledger is {}. \
             Ask the running gateway instead: GET /admin/usage on the admin listener",
            match other {
                LedgerConfig::Memory => "in the gateway's memory",
                _ => "on Redis",
            }
        ),
    };
    let tenants: Vec<(String, Option<Budget>)> = config
        .tenants
        .iter()
        .map(|t| (t.id.clone(), t.budget))
        .collect();
    let usage = read_usage(ledger, &tenants, &Clock::real())
        .with_context(|| format!("cannot read the ledger {}", ledger.display()))?;
    let rows: Vec<UsageRow> = usage.iter().map(UsageRow::from).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "tenants": rows }))?
        );
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// The forecast in one cell: when the budget runs out, or why it does not
/// (`spent`: nothing left now; `outlasts_period`, `no_spend`, `unlimited`).
fn forecast_cell(row: &UsageRow) -> String {
    match (&row.runs_out_at, row.forecast.as_str()) {
        (Some(at), "runs_out") => at.clone(),
        _ => row.forecast.clone(),
    }
}

/// The rows as an aligned text table.
pub(super) fn table(rows: &[UsageRow]) -> String {
    let header = [
        "tenant",
        "period",
        "period_key",
        "budget",
        "used",
        "reserved",
        "remaining",
        "requests",
        "cache_hits",
        "credits_saved",
        "orphaned",
        "coalesced",
        "saved_coalesced",
        "hit_ratio",
        "spent_1h",
        "spent_24h",
        "runs_out",
    ];
    let opt = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.period.clone(),
                r.period_key.clone(),
                opt(r.budget),
                r.used.to_string(),
                r.reserved.to_string(),
                opt(r.remaining),
                r.requests.to_string(),
                r.cache_hits.to_string(),
                r.credits_saved.to_string(),
                r.orphaned.to_string(),
                r.coalesced.to_string(),
                r.credits_saved_coalesced.to_string(),
                r.hit_ratio
                    .map_or("-".to_string(), |h| format!("{:.0}%", h * 100.0)),
                r.spent_last_hour.to_string(),
                r.spent_last_day.to_string(),
                forecast_cell(r),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let parts: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 3 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
