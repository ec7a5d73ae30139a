//! Property tests (proptest): the ledger against a reference model, and the
//! cache key against every way of writing the same page.
//!
//! Ledger: any interleaving of reserve / settle / release / settle-again /
//! a new day, and for the SQLite ledger a graceful restart or a crash
//! followed by a reopen, keeps the ledger exactly equal to a plain model.
//! From that follow the two promises: `used + reserved` never exceeds a
//! budget (unless the upstream itself charged more than was held), and a
//! settled charge is never under-counted.
//!
//! Cache key: bodies equal after defaults (field order, explicit defaults or
//! none, whitespace, escapes) map to one key; different (account, offset,
//! count) never share one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use viewgate::cache::CacheKey;
use viewgate::clock::Clock;
use viewgate::config::{Budget, Period};
use viewgate::layers::parse::parse_call;
use viewgate::ledger::{Ledger, LedgerError, MemoryLedger, Reservation, SqliteLedger};

// ---- the ledger ----------------------------------------------------------------

/// Three tenants: a daily budget, a total budget, and unlimited.
const TENANTS: [&str; 3] = ["daily", "total", "free"];

fn budget_of(tenant: usize, daily: u64, total: u64) -> Option<Budget> {
    match tenant {
        0 => Some(Budget {
            credits: daily,
            period: Period::Day,
        }),
        1 => Some(Budget {
            credits: total,
            period: Period::Total,
        }),
        _ => None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        tenant: usize,
        estimate: u64,
    },
    /// Settles the `pick`-th reservation ever made (modulo), open or not.
    Settle {
        pick: usize,
        extra: u64,
        under: u64,
    },
    Release {
        pick: usize,
    },
    /// The fake clock moves to the next UTC day.
    NextDay,
    /// Graceful stop and reopen (SQLite only).
    Restart,
    /// `kill -9` and reopen (SQLite only).
    Crash,
}

fn op(durable: bool) -> impl Strategy<Value = Op> {
    let restart_weight = if durable { 1 } else { 0 };
    prop_oneof![
        6 => (0..3usize, 0..6u64).prop_map(|(tenant, estimate)| Op::Reserve { tenant, estimate }),
        4 => (any::<usize>(), 0..3u64, 0..3u64)
            .prop_map(|(pick, extra, under)| Op::Settle { pick, extra, under }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::NextDay),
        restart_weight => Just(Op::Restart),
        restart_weight => Just(Op::Crash),
    ]
}

/// The reference model: what each (tenant, period) account must hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Account {
    used: u64,
    reserved: u64,
    /// What settles charged, orphans excluded.
    settled: u64,
    /// What the upstream billed for every settle ever answered: only grows,
    /// even when a crash undoes a settle not yet written.
    billed: u64,
    orphaned: u64,
    /// A settle charged more than its reservation held (the upstream's truth).
    overcharged: bool,
}

struct Held {
    reservation: Reservation,
    tenant: usize,
    period: String,
    open: bool,
}

#[derive(Default)]
struct Model {
    accounts: HashMap<(usize, String), Account>,
    held: Vec<Held>,
    /// Closes the SQLite ledger answered but has not written yet (it writes
    /// them with the next reservation, an over-budget settle, or a restart;
    /// its fake clock never makes them due): a crash undoes them.
    unwritten: Vec<(usize, Option<u64>)>,
}

enum Store {
    Memory(MemoryLedger),
    Sqlite(SqliteLedger),
}

impl Store {
    fn ledger(&self) -> &dyn Ledger {
        match self {
            Store::Memory(l) => l,
            Store::Sqlite(l) => l,
        }
    }
}

fn period_of(tenant: usize, clock: &Clock) -> String {
    let period = match tenant {
        0 => Period::Day,
        _ => Period::Total,
    };
    viewgate::ledger::period_key(period, clock.wall())
}

fn run_ledger(durable: bool, ops: Vec<Op>, daily: u64, total: u64) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
    let open = |clock: &Clock| -> Store {
        if durable {
            Store::Sqlite(SqliteLedger::open(&path, clock.clone()).expect("ledger opens"))
        } else {
            Store::Memory(MemoryLedger::new(clock.clone()))
        }
    };
    let names: Vec<Arc<str>> = TENANTS.iter().map(|t| Arc::from(*t)).collect();
    runtime.block_on(async {
        let mut store = Some(open(&clock));
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let ledger = store.as_ref().unwrap().ledger();
            match *op {
                Op::Reserve { tenant, estimate } => {
                    let budget = budget_of(tenant, daily, total);
                    let period = period_of(tenant, &clock);
                    let account = model.accounts.entry((tenant, period.clone())).or_default();
                    let remaining = budget.map(|b| {
                        b.credits
                            .saturating_sub(account.used.saturating_add(account.reserved))
                    });
                    let result = ledger
                        .reserve(&names[tenant], budget, estimate, &format!("req-{step}"))
                        .await;
                    model.unwritten.clear();
                    match remaining {
                        Some(remaining) if remaining < estimate => {
                            prop_assert_eq!(
                                result,
                                Err(LedgerError::Insufficient {
                                    needed: estimate,
                                    remaining
                                }),
                                "step {}: {:?}",
                                step,
                                op
                            );
                        }
                        _ => {
                            let reservation = result.map_err(|e| {
                                TestCaseError::fail(format!("step {step}: {op:?} refused: {e}"))
                            })?;
                            prop_assert_eq!(reservation.amount, estimate);
                            prop_assert_eq!(&reservation.period, &period);
                            prop_assert!(
                                model
                                    .held
                                    .iter()
                                    .all(|h| h.reservation.id != reservation.id),
                                "step {}: reservation id {} handed out twice",
                                step,
                                reservation.id
                            );
                            account.reserved += estimate;
                            model.held.push(Held {
                                reservation,
                                tenant,
                                period,
                                open: true,
                            });
                        }
                    }
                }
                Op::Settle { pick, extra, under } => {
                    if model.held.is_empty() {
                        continue;
                    }
                    let i = pick % model.held.len();
                    let held = &mut model.held[i];
                    let amount = held.reservation.amount;
                    // Lower, equal or (sometimes) higher than held: the upstream's truth.
                    let actual = if extra > 1 {
                        amount + extra
                    } else {
                        amount.saturating_sub(under)
                    };
                    let budget = budget_of(held.tenant, daily, total);
                    ledger
                        .settle(held.reservation.clone(), actual, budget)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    if held.open {
                        held.open = false;
                        let account = model
                            .accounts
                            .get_mut(&(held.tenant, held.period.clone()))
                            .unwrap();
                        account.reserved -= amount;
                        account.used += actual;
                        account.settled += actual;
                        account.billed += actual;
                        account.overcharged |= actual > amount;
                        if actual > amount {
                            model.unwritten.clear();
                        } else {
                            model.unwritten.push((i, Some(actual)));
                        }
                    }
                }
                Op::Release { pick } => {
                    if model.held.is_empty() {
                        continue;
                    }
                    let i = pick % model.held.len();
                    let held = &mut model.held[i];
                    let budget = budget_of(held.tenant, daily, total);
                    ledger
                        .release(held.reservation.clone(), budget)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    if held.open {
                        held.open = false;
                        let account = model
                            .accounts
                            .get_mut(&(held.tenant, held.period.clone()))
                            .unwrap();
                        account.reserved -= held.reservation.amount;
                        model.unwritten.push((i, None));
                    }
                }
                Op::NextDay => {
                    clock.advance(Duration::from_secs(86_400));
                    // Answered closes are now past their write delay: the
                    // ledger writes them before it does anything else.
                    model.unwritten.clear();
                }
                Op::Restart | Op::Crash => {
                    match store.take().unwrap() {
                        Store::Sqlite(l) if matches!(op, Op::Crash) => l.crash(),
                        other => drop(other),
                    }
                    store = Some(open(&clock));
                    // A crash undoes the closes not yet written: open again.
                    let undone = std::mem::take(&mut model.unwritten);
                    if matches!(op, Op::Crash) {
                        for (i, actual) in undone {
                            let held = &mut model.held[i];
                            held.open = true;
                            let account = model
                                .accounts
                                .get_mut(&(held.tenant, held.period.clone()))
                                .unwrap();
                            account.reserved += held.reservation.amount;
                            if let Some(actual) = actual {
                                account.used -= actual;
                                account.settled -= actual;
                            }
                        }
                    }
                    // Every reservation left open counts as spent, and orphaned.
                    for held in model.held.iter_mut().filter(|h| h.open) {
                        held.open = false;
                        let account = model
                            .accounts
                            .get_mut(&(held.tenant, held.period.clone()))
                            .unwrap();
                        account.reserved -= held.reservation.amount;
                        account.used += held.reservation.amount;
                        account.orphaned += held.reservation.amount;
                    }
                }
            }
            // After every step, the ledger is the model, tenant by tenant.
            let ledger = store.as_ref().unwrap().ledger();
            for (tenant, name) in TENANTS.iter().enumerate() {
                let budget = budget_of(tenant, daily, total);
                let period = period_of(tenant, &clock);
                let want = model
                    .accounts
                    .get(&(tenant, period.clone()))
                    .copied()
                    .unwrap_or_default();
                let balance = ledger
                    .balance(name, budget)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                prop_assert_eq!(
                    (balance.used, balance.reserved),
                    (want.used, want.reserved),
                    "step {} ({:?}): tenant {} in {}",
                    step,
                    op,
                    name,
                    period
                );
                // Never under-counted: every settled credit and every orphan is in `used`.
                prop_assert!(balance.used >= want.settled + want.orphaned);
                prop_assert!(
                    balance.used >= want.billed,
                    "step {}: {} under-counts what was billed",
                    step,
                    name
                );
                if let Some(b) = budget
                    && !want.overcharged
                {
                    prop_assert!(
                        balance.used + balance.reserved <= b.credits,
                        "step {}: {} over budget: {:?}",
                        step,
                        name,
                        balance
                    );
                }
                let usage = ledger
                    .usage(&[(name.to_string(), budget)])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                prop_assert_eq!(usage[0].orphaned, want.orphaned, "step {}", step);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn memory_ledger_matches_the_model(
        ops in prop::collection::vec(op(false), 1..48),
        daily in 0..12u64,
        total in 0..20u64,
    ) {
        run_ledger(false, ops, daily, total)?;
    }

    #[test]
    fn sqlite_ledger_matches_the_model_across_restarts_and_crashes(
        ops in prop::collection::vec(op(true), 1..48),
        daily in 0..12u64,
        total in 0..20u64,
    ) {
        run_ledger(true, ops, daily, total)?;
    }
}

/// Concurrent reservations from many tasks never overspend, on both ledgers.
#[test]
fn concurrent_reservations_never_overspend() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let clock = Clock::fake("2026-11-27T15:00:00Z".parse().unwrap());
        let ledgers: Vec<Arc<dyn Ledger>> = vec![
            Arc::new(MemoryLedger::new(clock.clone())),
            Arc::new(SqliteLedger::open(&dir.path().join("l.db"), clock.clone()).unwrap()),
        ];
        for ledger in ledgers {
            let budget = Some(Budget {
                credits: 25,
                period: Period::Day,
            });
            let tenant: Arc<str> = Arc::from("t");
            let tasks: Vec<_> = (0..64)
                .map(|i| {
                    let ledger = Arc::clone(&ledger);
                    let tenant = Arc::clone(&tenant);
                    tokio::spawn(async move {
                        ledger
                            .reserve(&tenant, budget, 1 + i % 3, "r")
                            .await
                            .is_ok()
                    })
                })
                .collect();
            let mut granted = 0;
            for t in tasks {
                granted += u64::from(t.await.unwrap());
            }
            let balance = ledger.balance("t", budget).await.unwrap();
            assert!(balance.reserved <= 25, "{balance:?}");
            assert!(granted > 0);
        }
    });
}

// ---- the cache key ---------------------------------------------------------------

fn key_of(body: &str) -> CacheKey {
    parse_call("profiles", body.as_bytes())
        .unwrap_or_else(|e| panic!("{body}: {e}"))
        .cache_key()
        .unwrap_or_else(|| panic!("{body}: no cache key"))
}

/// Printable ASCII without spaces, 1 to 128 characters (the contract's account ids).
fn account() -> impl Strategy<Value = String> {
    "[!-~]{1,128}"
}

/// Whitespace JSON allows between tokens.
fn ws(pick: u8) -> &'static str {
    ["", " ", "\n", "\t", "\r\n  ", "   "][usize::from(pick) % 6]
}

/// The account id as a JSON string: plain, or every character escaped.
fn json_string(s: &str, escape_all: bool) -> String {
    if escape_all {
        let mut out = String::from("\"");
        for c in s.chars() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        }
        out.push('"');
        out
    } else {
        serde_json::to_string(s).unwrap()
    }
}

/// One way of writing the page (`account`, `offset`, `count`) as a body.
#[allow(clippy::too_many_arguments)]
fn write_body(
    account: &str,
    offset: u32,
    count: u32,
    order: usize,
    params_order: bool,
    spell_defaults: bool,
    escape_all: bool,
    spaces: &[u8],
) -> String {
    let s = |i: usize| ws(spaces[i % spaces.len()]);
    let mut inner = Vec::new();
    if count != 10 || spell_defaults {
        inner.push(format!("\"count\"{}:{}{count}", s(0), s(1)));
    }
    if offset != 0 || spell_defaults {
        inner.push(format!("\"offset\"{}:{}{offset}", s(2), s(3)));
    }
    if params_order {
        inner.reverse();
    }
    let params = if inner.is_empty() {
        // Nothing to say: leave params out, empty, or null.
        match spaces[0] % 3 {
            0 => None,
            1 => Some(format!("{{{}}}", s(4))),
            _ => Some("null".to_string()),
        }
    } else {
        Some(format!(
            "{{{}{}{}}}",
            s(5),
            inner.join(&format!(",{}", s(6))),
            s(7)
        ))
    };
    let mut fields = vec![
        format!(
            "\"account_id\"{}:{}",
            s(8),
            json_string(account, escape_all)
        ),
        format!("\"action\":{}\"get_viewers\"", s(9)),
    ];
    if let Some(p) = params {
        fields.push(format!("\"params\"{}:{}{p}", s(10), s(11)));
    }
    // One of the six orders of the three fields.
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut ordered = Vec::new();
    for &i in &orders[order % 6] {
        if let Some(f) = fields.get(i) {
            ordered.push(f.clone());
        }
    }
    format!(
        "{}{{{}{}{}}}{}",
        s(12),
        s(13),
        ordered.join(&format!("{},{}", s(14), s(15))),
        s(16),
        s(17)
    )
}

fn page() -> impl Strategy<Value = (String, u32, u32)> {
    (
        account(),
        prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 0..50u32],
        prop_oneof![Just(10u32), 1..=100u32],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn equal_pages_share_one_key(
        (account, offset, count) in page(),
        a in (0..6usize, any::<bool>(), any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 18)),
        b in (0..6usize, any::<bool>(), any::<bool>(), any::<bool>(), prop::collection::vec(any::<u8>(), 18)),
    ) {
        let first = write_body(&account, offset, count, a.0, a.1, a.2, a.3, &a.4);
        let second = write_body(&account, offset, count, b.0, b.1, b.2, b.3, &b.4);
        let expected = CacheKey::new("get_viewers", account.as_str(), offset, count, "");
        prop_assert_eq!(key_of(&first), expected.clone(), "{}", first);
        prop_assert_eq!(key_of(&second), expected, "{}", second);
    }

    #[test]
    fn different_pages_never_share_a_key(
        (account, offset, count) in page(),
        change in 0..6usize,
        other in page(),
        spaces in prop::collection::vec(any::<u8>(), 18),
    ) {
        // Near misses (one character, one item, swapped numbers) and random pages.
        let (account2, offset2, count2) = match change {
            0 if account.len() < 128 => (format!("{account}x"), offset, count),
            1 => {
                let mut chars: Vec<char> = account.chars().collect();
                chars[0] = if chars[0] == 'a' { 'A' } else { 'a' };
                (chars.into_iter().collect(), offset, count)
            }
            2 => (account.clone(), offset.wrapping_add(1), count),
            3 => (account.clone(), offset, count % 100 + 1),
            4 if (1..=100).contains(&offset) && count != offset => {
                (account.clone(), count, offset)
            }
            _ => other,
        };
        let k1 = key_of(&write_body(&account, offset, count, 0, false, true, false, &spaces));
        let k2 = key_of(&write_body(&account2, offset2, count2, 3, true, false, false, &spaces));
        if (account.as_str(), offset, count) == (account2.as_str(), offset2, count2) {
            prop_assert_eq!(k1, k2);
        } else {
            prop_assert_ne!(k1, k2);
        }
    }
}
