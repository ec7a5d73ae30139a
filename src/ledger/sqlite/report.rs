//! Usage reports read straight from the ledger file, read-only, beside a
//! running server (`viewgate usage`).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::schema::{BUSY_TIMEOUT, SPEND_HISTORY_VERSION, check_version, schema_version};
use super::{count, unavailable};
use crate::clock::Clock;
use crate::config::Budget;
use crate::ledger::book::{Account, budget_period};
use crate::ledger::history::{Bucket, DAY_MINUTES, Recent, minute_of};
use crate::ledger::{LedgerError, Usage, period_key};

/// Reports usage from the ledger file at `path` without writing to it: the
/// file is opened read-only, so this works while `viewgate serve` holds it
/// open, takes no write lock and runs no recovery. Reservations still open in
/// the file count as `reserved`. Hit counts the server has not written yet
/// (at most its last second) are not seen.
pub fn read_usage(
    path: &Path,
    tenants: &[(String, Option<Budget>)],
    clock: &Clock,
) -> Result<Vec<Usage>, LedgerError> {
    if path.is_dir() {
        return Err(unavailable(path, "is a directory, not a file"));
    }
    if !path.exists() {
        return Err(unavailable(path, "no such file"));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| unavailable(path, format!("cannot open: {e}")))?;
    read_usage_from(&mut conn, tenants, clock).map_err(|e| unavailable(path, e))
}

pub(super) fn read_usage_from(
    conn: &mut Connection,
    tenants: &[(String, Option<Budget>)],
    clock: &Clock,
) -> Result<Vec<Usage>, String> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| format!("cannot set busy_timeout: {e}"))?;
    // One read transaction: accounts and reservations from the same snapshot.
    let tx = conn
        .transaction()
        .map_err(|e| format!("cannot read: {e}"))?;
    let version = schema_version(&tx).map_err(|e| format!("cannot read: {e}"))?;
    let now = clock.wall();
    if version == 0 {
        // Created but never initialised: nothing was ever recorded.
        return Ok(tenants
            .iter()
            .map(|(tenant, budget)| {
                Account::default().usage(
                    tenant,
                    *budget,
                    period_key(budget_period(*budget), now),
                    Recent::empty(now),
                )
            })
            .collect());
    }
    check_version(&tx, version)?;
    // A file the server has not migrated yet has no coalesced counts and no
    // history: they read as 0.
    let has_history = version >= SPEND_HISTORY_VERSION;
    let account_sql = if has_history {
        "SELECT used, requests, cache_hits, credits_saved, orphaned, coalesced,
                credits_saved_coalesced
         FROM accounts WHERE tenant = ?1 AND period = ?2"
    } else {
        "SELECT used, requests, cache_hits, credits_saved, orphaned, 0, 0
         FROM accounts WHERE tenant = ?1 AND period = ?2"
    };
    let mut account_query = tx
        .prepare(account_sql)
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut reserved_query = tx
        .prepare(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations
             WHERE tenant = ?1 AND period = ?2",
        )
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut out = Vec::with_capacity(tenants.len());
    for (tenant, budget) in tenants {
        let period = period_key(budget_period(*budget), now);
        let account = read_account(&mut account_query, &mut reserved_query, tenant, &period)
            .map_err(|e| format!("cannot read: {e}"))?;
        let recent = if has_history {
            read_recent(&tx, tenant, now).map_err(|e| format!("cannot read: {e}"))?
        } else {
            Recent::empty(now)
        };
        out.push(account.usage(tenant, *budget, period, recent));
    }
    Ok(out)
}

fn read_account(
    account_query: &mut rusqlite::Statement<'_>,
    reserved_query: &mut rusqlite::Statement<'_>,
    tenant: &str,
    period: &str,
) -> rusqlite::Result<Account> {
    let mut account = account_query
        .query_row(params![tenant, period], |row| {
            Ok(Account {
                used: count(row.get(0)?),
                requests: count(row.get(1)?),
                cache_hits: count(row.get(2)?),
                credits_saved: count(row.get(3)?),
                orphaned: count(row.get(4)?),
                coalesced: count(row.get(5)?),
                credits_saved_coalesced: count(row.get(6)?),
                reserved: 0,
            })
        })
        .optional()?
        .unwrap_or_default();
    account.reserved = count(reserved_query.query_row(params![tenant, period], |row| row.get(0))?);
    Ok(account)
}

/// `tenant`'s spend history of the last day, as written (the server writes
/// it within a second).
fn read_recent(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    now: jiff::Timestamp,
) -> rusqlite::Result<Recent> {
    let mut query = tx.prepare_cached(
        "SELECT minute, charged, saved_cache, saved_coalesced FROM spend_minutes
         WHERE tenant = ?1 AND minute > ?2 AND minute <= ?3",
    )?;
    let current = minute_of(now);
    let rows = query.query_map(params![tenant, current - DAY_MINUTES, current], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            Bucket {
                charged: count(row.get(1)?),
                saved_cache: count(row.get(2)?),
                saved_coalesced: count(row.get(3)?),
            },
        ))
    })?;
    let buckets = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Recent::from_buckets(now, buckets))
}
