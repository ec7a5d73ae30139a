//! The SQLite ledger through its public API: durability across restarts and
//! crashes, exact budgets under concurrency, period rollover on a fake clock,
//! clear errors for bad files, and read-only usage reports beside a writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use viewgate::clock::Clock;
use viewgate::config::{Budget, Period};
use viewgate::ledger::{Ledger, LedgerError, Reservation, SqliteLedger, read_usage};

fn budget(credits: u64, period: Period) -> Option<Budget> {
    Some(Budget { credits, period })
}

fn ledger_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("ledger.db")
}

fn clock_at(wall: &str) -> Clock {
    Clock::fake(wall.parse().unwrap())
}

fn assert_unavailable_naming(result: Result<impl std::fmt::Debug, LedgerError>, path: &Path) {
    match result {
        Err(LedgerError::Unavailable(message)) => {
            assert!(
                message.contains(&path.display().to_string()),
                "the message should name {}: {message}",
                path.display()
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A small deterministic generator: the test needs variety, not secrecy.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn a_restart_preserves_remaining_credits_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at("2026-11-27T10:00:00Z");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(100, Period::Day);

    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    for actual in [3, 0, 7] {
        let r = ledger.reserve(&t, b, 5, "req").await.unwrap();
        ledger.settle(r, actual, b).await.unwrap();
    }
    let r = ledger.reserve(&t, b, 5, "req").await.unwrap();
    ledger.release(r, b).await.unwrap();
    ledger.hit("crm", b, 4).await.unwrap();
    let before = ledger.usage(&[("crm".into(), b)]).await.unwrap();
    drop(ledger);

    let ledger = SqliteLedger::open(&path, clock).unwrap();
    let balance = ledger.balance("crm", b).await.unwrap();
    assert_eq!(
        (balance.used, balance.reserved, balance.remaining()),
        (10, 0, Some(90))
    );
    let after = ledger.usage(&[("crm".into(), b)]).await.unwrap();
    assert_eq!(after, before);
    assert_eq!((after[0].requests, after[0].cache_hits), (3, 1));
    assert_eq!(after[0].orphaned, 0);
}

#[tokio::test]
async fn a_reservation_left_open_by_a_crash_counts_as_spent() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at("2026-11-27T10:00:00Z");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(20, Period::Day);

    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let settled = ledger.reserve(&t, b, 2, "req-1").await.unwrap();
    ledger.settle(settled, 2, b).await.unwrap();
    ledger.reserve(&t, b, 3, "req-2").await.unwrap();
    ledger.reserve(&t, b, 4, "req-3").await.unwrap();
    ledger.crash();

    // A report from another process sees them as still held, and changes nothing.
    let tenants = [("crm".to_string(), b)];
    let report = read_usage(&path, &tenants, &clock).unwrap();
    assert_eq!((report[0].balance.used, report[0].balance.reserved), (2, 7));
    assert_eq!(report[0].orphaned, 0);

    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!(
        (
            usage[0].balance.used,
            usage[0].balance.reserved,
            usage[0].orphaned,
            usage[0].requests
        ),
        (9, 0, 7, 1)
    );
    assert_eq!(usage[0].balance.remaining(), Some(11));
    // Recovery ran once: the rows are gone, reopening adds nothing more.
    drop(ledger);
    let report = read_usage(&path, &tenants, &clock).unwrap();
    assert_eq!(report, usage);
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    assert_eq!(ledger.usage(&tenants).await.unwrap(), usage);
}

#[tokio::test]
async fn crash_left_spend_joins_the_spend_history_at_the_minute_it_was_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at("2026-11-27T10:00:00Z");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(1000, Period::Total);
    let tenants = [("crm".to_string(), b)];

    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let settled = ledger.reserve(&t, b, 2, "req-1").await.unwrap();
    ledger.settle(settled, 2, b).await.unwrap();
    ledger.reserve(&t, b, 5, "req-2").await.unwrap();
    ledger.crash();

    // Reopened 90 minutes later: the orphan was held at 10:00, two hours-of-
    // the-chart back with the settle, outside the last hour.
    clock.advance(Duration::from_secs(90 * 60));
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].balance.used, usage[0].orphaned), (7, 5));
    let recent = &usage[0].recent;
    assert_eq!((recent.spent_last_hour, recent.spent_last_day), (0, 7));
    assert_eq!((recent.hourly[22], recent.hourly[23]), (7, 0));
    // On disk too: a report from another process, and the next open, agree.
    drop(ledger);
    let report = read_usage(&path, &tenants, &clock).unwrap();
    assert_eq!(report[0].recent, usage[0].recent);

    // One held, then a crash and a restart two days later: its minute is no
    // longer kept, so it counts at the minute of the restart.
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    ledger.reserve(&t, b, 3, "req-3").await.unwrap();
    ledger.crash();
    clock.advance(Duration::from_secs(48 * 3600));
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].balance.used, usage[0].orphaned), (10, 8));
    let recent = &usage[0].recent;
    assert_eq!((recent.spent_last_hour, recent.spent_last_day), (3, 3));
    assert_eq!(recent.hourly[23], 3);
}

#[tokio::test]
async fn dropping_the_ledger_with_calls_in_flight_leaves_them_as_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let t: Arc<str> = Arc::from("ops");
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    ledger.reserve(&t, None, 5, "req").await.unwrap();
    drop(ledger);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let usage = ledger.usage(&[("ops".into(), None)]).await.unwrap();
    assert_eq!(
        (
            usage[0].period_key.as_str(),
            usage[0].balance.used,
            usage[0].orphaned
        ),
        ("total", 5, 5)
    );
    assert_eq!(usage[0].balance.remaining(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = Arc::new(SqliteLedger::open(&path, Clock::real()).unwrap());
    let tenants: Vec<(Arc<str>, Option<Budget>)> = vec![
        (Arc::from("crm"), budget(50, Period::Day)),
        (Arc::from("bi"), budget(7, Period::Month)),
        (Arc::from("ops"), None),
    ];

    let mut tasks = Vec::new();
    for i in 0..600 {
        let ledger = Arc::clone(&ledger);
        let (tenant, b) = tenants[i % tenants.len()].clone();
        tasks.push(tokio::spawn(async move {
            let result = ledger.reserve(&tenant, b, 1, "req").await;
            (tenant, b, result)
        }));
    }
    let mut held: Vec<(Arc<str>, Option<Budget>, Reservation)> = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (tenant, b, Ok(r)) => held.push((tenant, b, r)),
            (_, _, Err(LedgerError::Insufficient { needed: 1, .. })) => refused += 1,
            (_, _, Err(e)) => panic!("unexpected {e}"),
        }
    }
    let granted = |name: &str| held.iter().filter(|(t, ..)| &**t == name).count();
    assert_eq!(
        (granted("crm"), granted("bi"), granted("ops")),
        (50, 7, 200)
    );
    assert_eq!(refused, (200 - 50) + (200 - 7));

    // Settle (at 0..=2 credits) or release each, in a scrambled order, concurrently.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in (1..held.len()).rev() {
        let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap();
        held.swap(i, j);
    }
    let mut expected: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let mut tasks = Vec::new();
    for (tenant, b, r) in held {
        let choice = rng.next() % 4;
        let entry = expected.entry(tenant.to_string()).or_default();
        let ledger = Arc::clone(&ledger);
        if choice == 3 {
            tasks.push(tokio::spawn(async move { ledger.release(r, b).await }));
        } else {
            entry.0 += choice;
            entry.1 += 1;
            tasks.push(tokio::spawn(
                async move { ledger.settle(r, choice, b).await },
            ));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let report: Vec<(String, Option<Budget>)> =
        tenants.iter().map(|(t, b)| (t.to_string(), *b)).collect();
    let usage = ledger.usage(&report).await.unwrap();
    for u in &usage {
        let (used, requests) = expected[&u.tenant];
        assert_eq!(
            (u.balance.used, u.balance.reserved, u.requests),
            (used, 0, requests)
        );
    }
    // The file agrees with memory once flushed (settles that charge no more
    // than held ride with the next write), and it is the same after a restart.
    ledger.flush().await.unwrap();
    let usage = at_one_moment(usage);
    let file = read_usage(&path, &report, &Clock::real()).unwrap();
    assert_eq!(at_one_moment(file), usage);
    drop(Arc::into_inner(ledger).expect("every task finished"));
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    assert_eq!(at_one_moment(ledger.usage(&report).await.unwrap()), usage);
}

/// `usage` with the moment it was read left out, to compare reports read
/// at two moments of a real clock.
fn at_one_moment(mut usage: Vec<viewgate::ledger::Usage>) -> Vec<viewgate::ledger::Usage> {
    for u in &mut usage {
        u.recent.as_of = jiff::Timestamp::UNIX_EPOCH;
    }
    usage
}

#[tokio::test]
async fn settling_twice_or_releasing_after_settling_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10, Period::Total);
    let r = ledger.reserve(&t, b, 4, "req").await.unwrap();
    let first = ledger.settle(r.clone(), 3, b).await.unwrap();
    assert_eq!(
        (first.used, first.reserved, first.remaining()),
        (3, 0, Some(7))
    );
    assert_eq!(ledger.settle(r.clone(), 9, b).await.unwrap(), first);
    assert_eq!(ledger.release(r.clone(), b).await.unwrap(), first);

    let freed = ledger.reserve(&t, b, 2, "req").await.unwrap();
    ledger.release(freed.clone(), b).await.unwrap();
    assert_eq!(ledger.settle(freed, 2, b).await.unwrap(), first);

    let usage = ledger.usage(&[("crm".into(), b)]).await.unwrap();
    assert_eq!(usage[0].requests, 1);
    drop(ledger);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    assert_eq!(ledger.balance("crm", b).await.unwrap(), first);
}

/// Spends the whole budget, crosses `boundary` on the fake clock, and checks
/// the new period starts fresh while the old one keeps its spend.
async fn rolls_over(period: Period, start: &str, before: &str, after: &str, step: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at(start);
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(3, period);

    let spent = ledger.reserve(&t, b, 3, "req").await.unwrap();
    assert_eq!(spent.period, before);
    ledger.settle(spent, 3, b).await.unwrap();
    // Held across the boundary: it settles into the period it was reserved in.
    let late = ledger.reserve(&t, b, 0, "req").await.unwrap();
    assert!(matches!(
        ledger.reserve(&t, b, 1, "req").await,
        Err(LedgerError::Insufficient {
            needed: 1,
            remaining: 0
        })
    ));

    clock.advance(step);
    let fresh = ledger.balance("crm", b).await.unwrap();
    assert_eq!((fresh.used, fresh.remaining()), (0, Some(3)));
    let balance = ledger.settle(late, 2, b).await.unwrap();
    assert_eq!(balance, fresh, "the reply is about the current period");
    let next = ledger.reserve(&t, b, 3, "req").await.unwrap();
    assert_eq!(next.period, after);
    let usage = ledger.usage(&[("crm".into(), b)]).await.unwrap();
    assert_eq!(usage[0].period_key, after);
    assert_eq!(usage[0].balance.reserved, 3);
    drop(ledger);

    // The old period still holds what was spent in it, in the file.
    let old = read_usage(&path, &[("crm".into(), b)], &clock_at(start)).unwrap();
    assert_eq!(
        (old[0].period_key.as_str(), old[0].balance.used),
        (before, 5)
    );
    assert_eq!(old[0].requests, 2);
}

#[tokio::test]
async fn a_new_day_brings_a_fresh_budget() {
    rolls_over(
        Period::Day,
        "2026-11-27T23:59:00Z",
        "2026-11-27",
        "2026-11-28",
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn a_new_week_starts_on_monday() {
    // Sunday 2026-11-29 23:30 is the last half hour of ISO week 48.
    rolls_over(
        Period::Week,
        "2026-11-29T23:30:00Z",
        "2026-W48",
        "2026-W49",
        Duration::from_secs(30 * 60),
    )
    .await;
}

#[tokio::test]
async fn a_new_month_brings_a_fresh_budget() {
    rolls_over(
        Period::Month,
        "2026-11-30T23:59:59Z",
        "2026-11",
        "2026-12",
        Duration::from_secs(1),
    )
    .await;
}

#[test]
fn a_corrupted_file_is_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, noise).unwrap();
    assert_unavailable_naming(SqliteLedger::open(&path, Clock::real()), &path);
    assert_unavailable_naming(read_usage(&path, &[], &Clock::real()), &path);
}

#[test]
fn a_directory_or_an_unwritable_location_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    assert_unavailable_naming(SqliteLedger::open(dir.path(), Clock::real()), dir.path());
    assert_unavailable_naming(read_usage(dir.path(), &[], &Clock::real()), dir.path());

    // Its directory cannot be created: a file stands where it should be.
    // (Permission bits would not stop a test running as root.)
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let path = blocker.join("ledger.db");
    assert_unavailable_naming(SqliteLedger::open(&path, Clock::real()), &path);

    let missing = dir.path().join("missing.db");
    assert_unavailable_naming(read_usage(&missing, &[], &Clock::real()), &missing);
    assert!(!missing.exists(), "a report never creates the file");
}

#[tokio::test]
async fn a_report_beside_a_running_ledger_sees_spend_and_open_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at("2026-11-27T10:00:00Z");
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(100, Period::Week);
    let r = ledger.reserve(&t, b, 5, "req").await.unwrap();
    ledger.settle(r, 6, b).await.unwrap();
    let open = ledger.reserve(&t, b, 10, "req").await.unwrap();
    ledger.hit("crm", b, 2).await.unwrap();
    ledger.flush().await.unwrap();

    let tenants = [("crm".to_string(), b), ("nobody".to_string(), None)];
    let report = read_usage(&path, &tenants, &clock).unwrap();
    assert_eq!(report, ledger.usage(&tenants).await.unwrap());
    assert_eq!(
        (
            report[0].period_key.as_str(),
            report[0].balance.used,
            report[0].balance.reserved,
            report[0].cache_hits,
            report[0].credits_saved,
        ),
        ("2026-W48", 6, 10, 1, 2)
    );
    assert_eq!(
        (
            report[1].period,
            report[1].balance.used,
            report[1].balance.limit
        ),
        (Period::Total, 0, None)
    );

    // The report took no lock the writer needs.
    let balance = ledger.settle(open, 1, b).await.unwrap();
    assert_eq!((balance.used, balance.reserved), (7, 0));
    // Written with the next durable batch or within 50 ms; flush now.
    ledger.flush().await.unwrap();
    assert_eq!(
        read_usage(&path, &tenants, &clock).unwrap()[0].balance.used,
        7
    );
}

#[tokio::test]
async fn the_truth_is_recorded_above_the_estimate_and_lower_budgets_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10, Period::Total);
    let r = ledger.reserve(&t, b, 2, "req").await.unwrap();
    let balance = ledger.settle(r, 8, b).await.unwrap();
    assert_eq!((balance.used, balance.remaining()), (8, Some(2)));

    // The budget is lowered in the config below what is already used.
    let lower = budget(5, Period::Total);
    let balance = ledger.balance("crm", lower).await.unwrap();
    assert_eq!((balance.used, balance.remaining()), (8, Some(0)));
    assert!(matches!(
        ledger.reserve(&t, lower, 1, "req").await,
        Err(LedgerError::Insufficient {
            needed: 1,
            remaining: 0
        })
    ));
    drop(ledger);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    assert_eq!(ledger.balance("crm", b).await.unwrap().used, 8);
}

#[tokio::test]
async fn flush_and_drop_write_pending_hit_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let tenants = [("crm".to_string(), None)];
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    ledger.hit("crm", None, 5).await.unwrap();
    ledger.flush().await.unwrap();
    assert_eq!(
        read_usage(&path, &tenants, &Clock::real()).unwrap()[0].cache_hits,
        1
    );
    ledger.hit("crm", None, 5).await.unwrap();
    drop(ledger);
    let report = read_usage(&path, &tenants, &Clock::real()).unwrap();
    assert_eq!((report[0].cache_hits, report[0].credits_saved), (2, 10));
}

/// A settle that charges no more than was held is answered before it is on
/// disk. A crash before it is written leaves the reservation to be counted in
/// full (over, never under); once its write delay has passed, it is written
/// before the ledger does anything else, crash included.
#[tokio::test]
async fn an_answered_settle_is_written_before_its_delay_runs_out_or_over_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let clock = clock_at("2026-11-27T10:00:00Z");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(16, Period::Total);
    let report = [("crm".to_string(), b)];

    // Crash at once: the settle of 1 (held 3) is lost, the 3 held count.
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let r = ledger.reserve(&t, b, 3, "r1").await.unwrap();
    let told = ledger.settle(r, 1, b).await.unwrap();
    assert_eq!((told.used, told.reserved), (1, 0));
    assert_eq!(
        ledger.balance("crm", b).await.unwrap(),
        told,
        "readers see it at once"
    );
    ledger.crash();
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let u = &ledger.usage(&report).await.unwrap()[0];
    assert_eq!((u.balance.used, u.orphaned), (3, 3));

    // Crash after the delay: the settle was written first.
    let r = ledger.reserve(&t, b, 3, "r2").await.unwrap();
    ledger.settle(r, 1, b).await.unwrap();
    clock.advance(std::time::Duration::from_millis(50));
    ledger.crash();
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let u = &ledger.usage(&report).await.unwrap()[0];
    assert_eq!((u.balance.used, u.orphaned, u.requests), (4, 3, 1));
}

/// Polls the ledger's health every 20 ms for up to 5 s until it fails, and
/// returns the failure.
async fn health_fails_within_5_s(ledger: &SqliteLedger) -> LedgerError {
    for _ in 0..250 {
        if let Err(error) = ledger.health().await {
            return error;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the ledger stayed healthy for 5 s");
}

/// Once the file is gone, new spend is refused and the reason names it;
/// a reservation made before may still be settled.
async fn refuses_new_spend(ledger: &SqliteLedger, path: &Path, earlier: Reservation) {
    let t: Arc<str> = Arc::from("crm");
    assert_unavailable_naming(ledger.reserve(&t, None, 1, "req").await, path);
    assert_unavailable_naming(ledger.health().await, path);
    let claim = ledger.idempotency_begin("crm", "k", &[1; 32], Duration::from_secs(60));
    assert_unavailable_naming(claim.await, path);
    ledger.settle(earlier, 1, None).await.unwrap();
}

#[tokio::test]
async fn a_removed_directory_turns_the_ledger_unavailable_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let earlier = ledger.reserve(&t, None, 1, "req").await.unwrap();
    ledger.health().await.unwrap();

    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    let error = health_fails_within_5_s(&ledger).await;
    assert!(error.to_string().contains("removed"), "{error}");
    refuses_new_spend(&ledger, &path, earlier).await;
}

#[tokio::test]
async fn a_replaced_file_turns_the_ledger_unavailable_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let earlier = ledger.reserve(&t, None, 1, "req").await.unwrap();

    // A restore from backup, say: another file renamed over the path.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    // Only reservations are asked for: the watch thread notices by itself.
    let error = refused_within_5s(&ledger, &t).await;
    assert!(error.to_string().contains("replaced"), "{error}");
    refuses_new_spend(&ledger, &path, earlier).await;
}

/// Reserves (and releases) until the ledger refuses, polling for up to 5 s:
/// only reservations are asked for, so the watch thread must notice by itself.
async fn refused_within_5s(ledger: &SqliteLedger, t: &Arc<str>) -> LedgerError {
    for _ in 0..250 {
        match ledger.reserve(t, None, 1, "req").await {
            Ok(r) => ledger.release(r, None).await.map(|_| ()).unwrap(),
            Err(error) => return error,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("reservations refused within 5 s");
}

/// Found by the red team: deleting the `-wal` and `-shm` files while
/// serving lost every commit still in the write-ahead log at the next start,
/// while the ledger kept taking (and losing) spend.
#[tokio::test]
async fn removed_write_ahead_files_turn_the_ledger_unavailable_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let earlier = ledger.reserve(&t, None, 1, "req").await.unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::fs::remove_file(std::path::PathBuf::from(name)).unwrap();
    }
    let error = refused_within_5s(&ledger, &t).await;
    assert!(error.to_string().contains("write-ahead"), "{error}");
    assert!(ledger.health().await.is_err());
    refuses_new_spend(&ledger, &path, earlier).await;
}

#[tokio::test]
async fn the_lock_is_on_the_file_itself_not_a_side_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_path(&dir);
    // A stray lock file, as earlier versions left: it means nothing now.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let stray = dir.path().join("data").join("ledger.db-lock");
    std::fs::write(&stray, b"").unwrap();
    let first = SqliteLedger::open(&path, Clock::real()).unwrap();
    std::fs::remove_file(&stray).unwrap();
    assert!(!stray.exists(), "open creates no side lock file");

    let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
    assert!(error.to_string().contains("in use"), "{error}");
    assert_unavailable_naming(Err::<(), _>(error), &path);
    // The refused open left the first one whole: it writes, and reports read.
    let t: Arc<str> = Arc::from("crm");
    let r = first.reserve(&t, None, 2, "req").await.unwrap();
    first.settle(r, 2, None).await.unwrap();
    first.flush().await.unwrap();
    let report = read_usage(&path, &[("crm".into(), None)], &Clock::real()).unwrap();
    assert_eq!(report[0].balance.used, 2);
    first.health().await.unwrap();
    drop(first);
    assert!(SqliteLedger::open(&path, Clock::real()).is_ok());
}
