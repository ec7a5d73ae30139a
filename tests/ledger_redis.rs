//! The Redis ledger through its public API, against a real `redis-server`:
//! exact budgets under concurrency from one replica and from two, idempotent
//! settle and release, period rollover on a fake clock, reservations of a
//! crashed replica swept into spend, hit counts shared between replicas, and
//! outages: `Unavailable` at once, `balance` from the local view, and
//! reconnection with script reload once Redis is back.
//!
//! Each test starts its own server on a free port. Without `redis-server`
//! installed the tests say SKIPPED and pass, except in CI, where they fail.

#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis_server::RedisServer;
use viewgate::clock::Clock;
use viewgate::config::{Budget, Period};
use viewgate::ledger::{Balance, Ledger, LedgerError, RedisLedger, Reservation, Usage};

/// Starts a server for the test, or ends the test when there is none (see the module doc).
macro_rules! redis_or_skip {
    () => {
        match RedisServer::start_new() {
            Some(server) => server,
            None => return,
        }
    };
    ($password:expr) => {
        match RedisServer::start_with_password($password) {
            Some(server) => server,
            None => return,
        }
    };
}

fn budget(credits: u64, period: Period) -> Option<Budget> {
    Some(Budget { credits, period })
}

fn clock_at(wall: &str) -> Clock {
    Clock::fake(wall.parse().unwrap())
}

async fn connect(server: &RedisServer, clock: Clock) -> RedisLedger {
    RedisLedger::connect(&server.url(), clock)
        .await
        .expect("connect never needs a live server")
}

/// `usage` with the moment it was read left out, to compare reports read
/// at two moments of a real clock.
fn at_one_moment(mut usage: Vec<Usage>) -> Vec<Usage> {
    for u in &mut usage {
        u.recent.as_of = jiff::Timestamp::UNIX_EPOCH;
    }
    usage
}

/// Waits for `call`, failing the test if it hangs: an outage must answer, not block.
async fn answered<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("the ledger answered within 3 s")
}

/// Asserts `Unavailable("redis: …")` without `secret` in it.
fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, LedgerError>, secret: &str) {
    match result {
        Err(LedgerError::Unavailable(message)) => {
            assert!(message.starts_with("redis: "), "{message}");
            assert!(
                secret.is_empty() || !message.contains(secret),
                "the password leaked: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Polls `check` every 50 ms for up to 5 s, for what happens in the background.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

/// A plain connection for looking at keys directly.
fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
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

type Held = Vec<(Arc<str>, Option<Budget>, Reservation)>;

/// Runs 600 reservations of 1 credit over three tenants, spread over
/// `replicas` round-robin, and returns what was granted.
async fn reserve_from_all(replicas: &[Arc<RedisLedger>]) -> Held {
    let tenants: Vec<(Arc<str>, Option<Budget>)> = vec![
        (Arc::from("crm"), budget(50, Period::Day)),
        (Arc::from("bi"), budget(7, Period::Month)),
        (Arc::from("ops"), None),
    ];
    let mut tasks = Vec::new();
    for i in 0..600 {
        let ledger = Arc::clone(&replicas[i % replicas.len()]);
        let (tenant, b) = tenants[i % tenants.len()].clone();
        tasks.push(tokio::spawn(async move {
            let result = ledger.reserve(&tenant, b, 1, "req").await;
            (tenant, b, result)
        }));
    }
    let mut held = Vec::new();
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
    held
}

/// Settles (at 0..=2 credits) or releases each reservation, in a scrambled
/// order, concurrently, each on any replica; returns `(used, requests)` per tenant.
async fn close_from_all(
    replicas: &[Arc<RedisLedger>],
    mut held: Held,
) -> HashMap<String, (u64, u64)> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in (1..held.len()).rev() {
        let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap();
        held.swap(i, j);
    }
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    let mut tasks = Vec::new();
    for (i, (tenant, b, r)) in held.into_iter().enumerate() {
        let choice = rng.next() % 4;
        let entry = expected.entry(tenant.to_string()).or_default();
        let ledger = Arc::clone(&replicas[(i * 7) % replicas.len()]);
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
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_overspend() {
    let server = redis_or_skip!();
    let ledger = Arc::new(connect(&server, Clock::real()).await);
    let replicas = [ledger];
    let held = reserve_from_all(&replicas).await;
    let expected = close_from_all(&replicas, held).await;
    let report = [
        ("crm".to_string(), budget(50, Period::Day)),
        ("bi".to_string(), budget(7, Period::Month)),
        ("ops".to_string(), None),
    ];
    for u in replicas[0].usage(&report).await.unwrap() {
        let (used, requests) = expected[&u.tenant];
        assert_eq!(
            (u.balance.used, u.balance.reserved, u.requests),
            (used, 0, requests)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_budget_exactly() {
    let server = redis_or_skip!();
    let replicas = [
        Arc::new(connect(&server, Clock::real()).await),
        Arc::new(connect(&server, Clock::real()).await),
    ];
    let held = reserve_from_all(&replicas).await;
    // Reservation ids are unique across replicas.
    let mut ids: Vec<u64> = held.iter().map(|(_, _, r)| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), held.len());
    // Reservations are settled by whichever replica, not only their own.
    let expected = close_from_all(&replicas, held).await;
    let report = [
        ("crm".to_string(), budget(50, Period::Day)),
        ("bi".to_string(), budget(7, Period::Month)),
        ("ops".to_string(), None),
    ];
    let first = replicas[0].usage(&report).await.unwrap();
    assert_eq!(
        at_one_moment(replicas[1].usage(&report).await.unwrap()),
        at_one_moment(first.clone())
    );
    for u in &first {
        let (used, requests) = expected[&u.tenant];
        assert_eq!(
            (u.balance.used, u.balance.reserved, u.requests),
            (used, 0, requests)
        );
    }
}

#[tokio::test]
async fn settling_twice_or_releasing_after_settling_changes_nothing() {
    let server = redis_or_skip!();
    let ledger = connect(&server, Clock::real()).await;
    let other = connect(&server, Clock::real()).await;
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10, Period::Total);
    let r = ledger.reserve(&t, b, 4, "req").await.unwrap();
    let first = ledger.settle(r.clone(), 3, b).await.unwrap();
    assert_eq!(
        (first.used, first.reserved, first.remaining()),
        (3, 0, Some(7))
    );
    // A retry after a lost answer, here or on another replica, charges nothing more.
    assert_eq!(ledger.settle(r.clone(), 9, b).await.unwrap(), first);
    assert_eq!(other.settle(r.clone(), 9, b).await.unwrap(), first);
    assert_eq!(ledger.release(r.clone(), b).await.unwrap(), first);

    let freed = ledger.reserve(&t, b, 2, "req").await.unwrap();
    ledger.release(freed.clone(), b).await.unwrap();
    assert_eq!(ledger.release(freed.clone(), b).await.unwrap(), first);
    assert_eq!(ledger.settle(freed, 2, b).await.unwrap(), first);

    let usage = ledger.usage(&[("crm".into(), b)]).await.unwrap();
    assert_eq!(usage[0].requests, 1);
    assert_eq!(other.balance("crm", b).await.unwrap(), first);
}

#[tokio::test]
async fn the_truth_is_recorded_above_the_estimate_and_lower_budgets_saturate() {
    let server = redis_or_skip!();
    let ledger = connect(&server, Clock::real()).await;
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
    let again = connect(&server, Clock::real()).await;
    assert_eq!(again.balance("crm", b).await.unwrap().used, 8);
}

#[tokio::test]
async fn unlimited_tenants_are_counted_under_total_and_never_refused() {
    let server = redis_or_skip!();
    let ledger = connect(&server, clock_at("2026-11-27T10:00:00Z")).await;
    let t: Arc<str> = Arc::from("ops");
    let r = ledger.reserve(&t, None, 1_000_000, "req").await.unwrap();
    assert_eq!(r.period, "total");
    let balance = ledger.settle(r, 7, None).await.unwrap();
    assert_eq!((balance.used, balance.remaining()), (7, None));
    let usage = ledger.usage(&[("ops".into(), None)]).await.unwrap();
    assert_eq!(
        (
            usage[0].period,
            usage[0].period_key.as_str(),
            usage[0].requests
        ),
        (Period::Total, "total", 1)
    );
}

/// Spends the whole budget, crosses a period boundary on the fake clock, and
/// checks the new period starts fresh while the old one keeps its spend.
async fn rolls_over(period: Period, start: &str, before: &str, after: &str, step: Duration) {
    let server = redis_or_skip!();
    let clock = clock_at(start);
    let ledger = connect(&server, clock.clone()).await;
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

    // The old period still holds what was spent in it.
    let old = connect(&server, clock_at(start)).await;
    let old = old.usage(&[("crm".into(), b)]).await.unwrap();
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

#[tokio::test]
async fn keys_are_tagged_per_tenant_and_expire_after_their_period() {
    let server = redis_or_skip!();
    // 14 hours before the day ends.
    let ledger = connect(&server, clock_at("2026-11-27T10:00:00Z")).await;
    let crm: Arc<str> = Arc::from("crm");
    let open = ledger
        .reserve(&crm, budget(10, Period::Day), 2, "req-42")
        .await
        .unwrap();
    let ops: Arc<str> = Arc::from("ops");
    ledger.reserve(&ops, None, 1, "req").await.unwrap();

    let mut conn = raw(&server);
    let day = "vg:{t:crm}:p:2026-11-27";
    let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(day).query(&mut conn).unwrap();
    assert_eq!(fields["reserved"], "2");
    let ttl: i64 = redis::cmd("PTTL").arg(day).query(&mut conn).unwrap();
    let expected = (35 * 24 + 14) * 3600 * 1000;
    assert!(
        (expected - 5000..=expected).contains(&ttl),
        "{ttl} ms is not 35 days and 14 hours"
    );
    let reservation = format!("vg:{{t:crm}}:r:{:016x}", open.id);
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&reservation)
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        (
            fields["tenant"].as_str(),
            fields["period"].as_str(),
            fields["amount"].as_str(),
            fields["request_id"].as_str()
        ),
        ("crm", "2026-11-27", "2", "req-42")
    );
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("vg:{t:crm}:open")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, vec![format!("{:016x}", open.id)]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("vg:{t:ops}:p:total")
        .query(&mut conn)
        .unwrap();
    assert_eq!(ttl, -1, "total never expires");
}

#[tokio::test]
async fn reservations_of_a_crashed_replica_are_swept_into_spend() {
    let server = redis_or_skip!();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(20, Period::Day);
    let tenants = [("crm".to_string(), b)];

    let crashed = connect(&server, Clock::real()).await;
    let settled = crashed.reserve(&t, b, 2, "req-1").await.unwrap();
    crashed.settle(settled, 2, b).await.unwrap();
    crashed.reserve(&t, b, 3, "req-2").await.unwrap();
    crashed.reserve(&t, b, 4, "req-3").await.unwrap();
    drop(crashed);

    let survivor = connect(&server, Clock::real()).await;
    // Still young: a live replica may be waiting on the upstream for them.
    assert_eq!(
        survivor
            .sweep_now(RedisLedger::DEFAULT_STALE_AFTER)
            .await
            .unwrap(),
        0
    );
    let usage = survivor.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].balance.used, usage[0].balance.reserved), (2, 7));

    assert_eq!(survivor.sweep_now(Duration::ZERO).await.unwrap(), 2);
    let usage = survivor.usage(&tenants).await.unwrap();
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
    // Swept once: sweeping again adds nothing.
    assert_eq!(survivor.sweep_now(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(
        at_one_moment(survivor.usage(&tenants).await.unwrap()),
        at_one_moment(usage)
    );
}

#[tokio::test]
async fn swept_reservations_join_the_spend_history_at_the_minute_they_were_made() {
    let server = redis_or_skip!();
    let clock = clock_at("2026-11-27T10:00:00Z");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(100, Period::Day);
    let tenants = [("crm".to_string(), b)];

    let crashed = connect(&server, clock.clone()).await;
    let settled = crashed.reserve(&t, b, 2, "req-1").await.unwrap();
    crashed.settle(settled, 2, b).await.unwrap();
    crashed.reserve(&t, b, 3, "req-2").await.unwrap();
    crashed.reserve(&t, b, 4, "req-3").await.unwrap();
    drop(crashed);
    // Made 90 minutes ago (3 credits) and 30 hours ago, before the history
    // kept (4 credits), on the server's clock.
    let mut conn = raw(&server);
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("vg:{t:crm}:open")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let key = format!("vg:{{t:crm}}:r:{id}");
        let (amount, created): (u64, i64) = redis::cmd("HMGET")
            .arg(&key)
            .arg("amount")
            .arg("created_ms")
            .query(&mut conn)
            .unwrap();
        let back_ms = if amount == 3 {
            90 * 60_000
        } else {
            30 * 3_600_000
        };
        let () = redis::cmd("HSET")
            .arg(&key)
            .arg("created_ms")
            .arg(created - back_ms)
            .query(&mut conn)
            .unwrap();
    }

    let survivor = connect(&server, clock.clone()).await;
    assert_eq!(survivor.sweep_now(Duration::ZERO).await.unwrap(), 2);
    let usage = survivor.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].balance.used, usage[0].orphaned), (9, 7));
    let recent = &usage[0].recent;
    // 3 at 08:30 on the ledger's clock; 4, too old to place, now with the settle.
    assert_eq!((recent.spent_last_hour, recent.spent_last_day), (6, 9));
    assert_eq!((recent.hourly[22], recent.hourly[23]), (3, 6));
    // Another replica reads the same; sweeping again adds nothing.
    assert_eq!(survivor.sweep_now(Duration::ZERO).await.unwrap(), 0);
    let other = connect(&server, clock.clone()).await;
    assert_eq!(other.usage(&tenants).await.unwrap()[0].recent, *recent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sweeping_at_once_count_each_reservation_once() {
    let server = redis_or_skip!();
    let crashed = connect(&server, Clock::real()).await;
    let tenants: Vec<(String, Option<Budget>)> = ["crm", "bi", "ops"]
        .iter()
        .map(|t| (t.to_string(), None))
        .collect();
    for (tenant, _) in &tenants {
        let t: Arc<str> = Arc::from(tenant.as_str());
        for _ in 0..150 {
            crashed.reserve(&t, None, 2, "req").await.unwrap();
        }
    }
    drop(crashed);
    let a = connect(&server, Clock::real()).await;
    let b = connect(&server, Clock::real()).await;
    let (swept_a, swept_b) = tokio::join!(a.sweep_now(Duration::ZERO), b.sweep_now(Duration::ZERO));
    assert_eq!(swept_a.unwrap() + swept_b.unwrap(), 450);
    for u in a.usage(&tenants).await.unwrap() {
        assert_eq!(
            (u.balance.used, u.balance.reserved, u.orphaned),
            (300, 0, 300)
        );
    }
}

#[tokio::test]
async fn the_sweeper_task_sweeps_by_itself() {
    let server = redis_or_skip!();
    let crashed = connect(&server, Clock::real()).await;
    let t: Arc<str> = Arc::from("ops");
    crashed.reserve(&t, None, 5, "req").await.unwrap();
    drop(crashed);

    let survivor = connect(&server, Clock::real())
        .await
        .with_stale_after(Duration::from_millis(100));
    let sweeper = survivor.spawn_sweeper(Duration::from_millis(50));
    eventually("the sweep", || async {
        let usage = survivor.usage(&[("ops".into(), None)]).await.unwrap();
        (usage[0].balance.used, usage[0].orphaned) == (5, 5)
    })
    .await;
    sweeper.abort();
}

#[tokio::test]
async fn hits_reach_other_replicas_within_a_second_and_at_flush() {
    let server = redis_or_skip!();
    let b = budget(100, Period::Week);
    let tenants = [("crm".to_string(), b)];
    let here = connect(&server, Clock::real()).await;
    let there = connect(&server, Clock::real()).await;
    for _ in 0..3 {
        here.hit("crm", b, 2).await.unwrap();
    }
    // Seen at once by the replica that counted them...
    let usage = here.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].cache_hits, usage[0].credits_saved), (3, 6));
    // ...and by the others once written, within about a second.
    eventually("hits written by the background task", || async {
        there.usage(&tenants).await.unwrap()[0].cache_hits == 3
    })
    .await;
    here.hit("crm", b, 1).await.unwrap();
    here.flush().await.unwrap();
    let usage = there.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].cache_hits, usage[0].credits_saved), (4, 7));
    assert_eq!(
        at_one_moment(here.usage(&tenants).await.unwrap()),
        at_one_moment(usage),
        "written hits are not counted twice"
    );
}

#[tokio::test]
async fn balance_follows_other_replicas_within_about_a_second() {
    let server = redis_or_skip!();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(100, Period::Day);
    let spender = connect(&server, Clock::real()).await;
    let watcher = connect(&server, Clock::real()).await;
    let r = spender.reserve(&t, b, 5, "req").await.unwrap();
    spender.settle(r, 5, b).await.unwrap();
    assert_eq!(watcher.balance("crm", b).await.unwrap().used, 5);
    let r = spender.reserve(&t, b, 3, "req").await.unwrap();
    spender.settle(r, 3, b).await.unwrap();
    eventually("the watcher's view refreshed", || async {
        watcher.balance("crm", b).await.unwrap().used == 8
    })
    .await;
}

#[tokio::test]
async fn an_outage_answers_unavailable_at_once_and_recovery_needs_no_help() {
    const PASSWORD: &str = "s3cret-pw";
    let mut server = redis_or_skip!(PASSWORD);
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10, Period::Day);
    let ledger = connect(&server, Clock::real()).await;
    let r = ledger.reserve(&t, b, 2, "req").await.unwrap();
    let known = ledger.settle(r, 2, b).await.unwrap();
    let open = ledger.reserve(&t, b, 1, "req").await.unwrap();
    ledger.hit("crm", b, 1).await.unwrap();

    server.stop();
    assert_unavailable(answered(ledger.reserve(&t, b, 1, "req")).await, PASSWORD);
    assert_unavailable(answered(ledger.health()).await, PASSWORD);
    assert_unavailable(answered(ledger.usage(&[("crm".into(), b)])).await, PASSWORD);
    assert_unavailable(answered(ledger.flush()).await, PASSWORD);
    assert_unavailable(answered(ledger.release(open.clone(), b)).await, PASSWORD);
    // Cache hits still get a balance: the last one known.
    let balance = answered(ledger.balance("crm", b)).await.unwrap();
    assert_eq!(
        balance,
        Balance {
            reserved: 1,
            ..known
        }
    );
    // Never seen before: nothing to answer with.
    assert_unavailable(answered(ledger.balance("bi", b)).await, PASSWORD);

    // Back on the same port, empty (no persistence): the first call reconnects
    // and loads the scripts again (NOSCRIPT), with no help from outside.
    server.start();
    let fresh = answered(ledger.reserve(&t, b, 1, "req")).await.unwrap();
    answered(ledger.health()).await.unwrap();
    // The reservation held before the restart is gone with the data: closing it is a no-op.
    let balance = answered(ledger.release(open, b)).await.unwrap();
    assert_eq!((balance.used, balance.reserved), (0, 1));
    answered(ledger.settle(fresh, 1, b)).await.unwrap();
    // Hit counts kept through the outage are written now.
    answered(ledger.flush()).await.unwrap();
    let usage = answered(ledger.usage(&[("crm".into(), b)])).await.unwrap();
    assert_eq!(
        (
            usage[0].cache_hits,
            usage[0].balance.used,
            usage[0].requests
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_hung_server_answers_unavailable_instead_of_hanging_requests() {
    let server = redis_or_skip!();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10, Period::Day);
    let ledger = connect(&server, Clock::real()).await;
    let known = ledger.balance("crm", b).await.unwrap();

    // Connections stay open but nothing answers: only timeouts can end a call.
    // (A command sent now still runs when the server thaws.)
    server.pause();
    assert_unavailable(answered(ledger.reserve(&t, b, 1, "req")).await, "");
    assert_unavailable(answered(ledger.health()).await, "");
    assert_eq!(answered(ledger.balance("crm", b)).await.unwrap(), known);

    server.resume();
    let mut recovered = false;
    for _ in 0..20 {
        if let Ok(r) = answered(ledger.reserve(&t, b, 1, "req")).await {
            answered(ledger.release(r, b)).await.unwrap();
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the ledger never recovered from the hung server");
    // The reservation whose answer never came was released in the background.
    eventually("the timed-out reservation released", || async {
        ledger.usage(&[("crm".into(), b)]).await.unwrap()[0]
            .balance
            .reserved
            == 0
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_unavailable_without_showing_it() {
    let server = redis_or_skip!("right-pw");
    let url = format!("redis://:wrong-pw@127.0.0.1:{}", server.port());
    let ledger = RedisLedger::connect(&url, Clock::real()).await.unwrap();
    assert_unavailable(answered(ledger.health()).await, "wrong-pw");
    let t: Arc<str> = Arc::from("crm");
    assert_unavailable(
        answered(ledger.reserve(&t, None, 1, "req")).await,
        "wrong-pw",
    );
    // The gateway may log the ledger; its Debug never shows the URL.
    assert!(!format!("{ledger:?}").contains("wrong-pw"));
}

#[tokio::test]
async fn starting_while_redis_is_down_waits_for_it() {
    let mut server = redis_or_skip!();
    server.stop();
    let ledger = answered(RedisLedger::connect(&server.url(), Clock::real()))
        .await
        .expect("the gateway starts, and reports not ready");
    let t: Arc<str> = Arc::from("crm");
    let b = budget(5, Period::Day);
    assert_unavailable(answered(ledger.health()).await, "");
    assert_unavailable(answered(ledger.reserve(&t, b, 1, "req")).await, "");
    assert_unavailable(answered(ledger.balance("crm", b)).await, "");

    server.start();
    answered(ledger.health()).await.unwrap();
    let r = answered(ledger.reserve(&t, b, 1, "req")).await.unwrap();
    let balance = answered(ledger.settle(r, 1, b)).await.unwrap();
    assert_eq!(balance.remaining(), Some(4));
}

#[tokio::test]
async fn a_bad_url_is_refused_at_connect() {
    // No server needed: the URL itself cannot be used.
    let error = RedisLedger::connect("http://:pw-in-url@127.0.0.1:1", Clock::real())
        .await
        .unwrap_err();
    assert_unavailable::<()>(Err(error), "pw-in-url");
}

#[tokio::test]
async fn spend_history_and_coalesced_answers_are_shared_between_replicas() {
    let server = redis_or_skip!();
    let clock = clock_at("2026-11-27T10:00:00Z");
    let b = budget(100, Period::Day);
    let tenants = [("crm".to_string(), b)];
    let here = connect(&server, clock.clone()).await;
    let there = connect(&server, clock.clone()).await;
    let crm: Arc<str> = Arc::from("crm");
    let held = here.reserve(&crm, b, 5, "r1").await.unwrap();
    here.settle(held.clone(), 4, b).await.unwrap();
    // Settling again charges nothing, and records nothing either.
    here.settle(held, 4, b).await.unwrap();
    here.hit("crm", b, 3).await.unwrap();
    here.coalesced("crm", b, 2).await.unwrap();
    here.coalesced("crm", b, 2).await.unwrap();
    // Seen at once where they were counted.
    let usage = here.usage(&tenants).await.unwrap();
    assert_eq!(usage[0].recent.spent_last_hour, 4);
    assert_eq!(
        (usage[0].coalesced, usage[0].credits_saved_coalesced),
        (2, 4)
    );
    here.flush().await.unwrap();
    clock.advance(Duration::from_secs(90 * 60));
    let usage = there.usage(&tenants).await.unwrap();
    let recent = &usage[0].recent;
    assert_eq!((recent.spent_last_hour, recent.spent_last_day), (0, 4));
    assert_eq!(
        (recent.saved_cache_last_day, recent.saved_coalesced_last_day),
        (3, 4)
    );
    assert_eq!(recent.hourly[22], 4, "90 minutes back is the 2nd-last hour");
    assert_eq!(
        (usage[0].coalesced, usage[0].credits_saved_coalesced),
        (2, 4)
    );
    assert_eq!(
        here.usage(&tenants).await.unwrap(),
        usage,
        "written minutes are not counted twice"
    );
    // One hash per tenant and hour, living a little over a day.
    let mut conn = raw(&server);
    let hour = "2026-11-27T10:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_second()
        / 3600;
    let key = format!("vg:{{t:crm}}:s:{hour}");
    let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
    assert_eq!(
        (
            fields["c0"].as_str(),
            fields["h0"].as_str(),
            fields["k0"].as_str()
        ),
        ("4", "3", "4")
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!(
        (24 * 3600 * 1000..=26 * 3600 * 1000).contains(&ttl),
        "{ttl}"
    );
}
