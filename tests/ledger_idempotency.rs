//! Idempotency keys on every ledger backend, through the `Ledger` trait: the
//! state machine (claimed, in flight, answered, mismatched, abandoned,
//! expired), exactly one claim among concurrent ones, answers and claims
//! across a SQLite crash, and keys shared by Redis replicas with claims of a
//! dead replica read as orphaned.
//!
//! Redis tests start their own server on a free port; without `redis-server`
//! installed they say SKIPPED and pass, except in CI, where they fail.

#[path = "common/redis.rs"]
mod redis_server;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis_server::RedisServer;
use viewgate::clock::Clock;
use viewgate::ledger::{
    Fingerprint, IdempotencyBegin, Ledger, LedgerError, MemoryLedger, RedisLedger, SqliteLedger,
    StoredAnswer,
};

/// Starts a server for the test, or ends the test when there is none (see the module doc).
macro_rules! redis_or_skip {
    () => {
        match RedisServer::start_new() {
            Some(server) => server,
            None => return,
        }
    };
}

const TTL: Duration = Duration::from_secs(60);
const FIRST: Fingerprint = [1; 32];
const OTHER: Fingerprint = [2; 32];

fn clock() -> Clock {
    Clock::fake("2026-11-27T10:00:00Z".parse().unwrap())
}

fn answer(body: &'static [u8]) -> StoredAnswer {
    StoredAnswer {
        status: 201,
        body: Bytes::from_static(body),
    }
}

async fn begin(ledger: &dyn Ledger, tenant: &str, key: &str, fp: &Fingerprint) -> IdempotencyBegin {
    ledger
        .idempotency_begin(tenant, key, fp, TTL)
        .await
        .unwrap()
}

/// Polls `check` every 20 ms for up to 5 s, for what happens in the background.
/// Opens the ledger at `path` again, after this test closed it. Another test
/// of this binary may be starting `redis-server` right then: the forked
/// child shares every open file description until it executes, the closed
/// ledger's lock (`flock`) with them, so under load that lock can outlive
/// the ledger by the moment the child takes to execute. Retried while it
/// lasts (bounded); any other error fails at once.
async fn reopen(path: &std::path::Path, clock: Clock) -> SqliteLedger {
    for _ in 0..500 {
        match SqliteLedger::open(path, clock.clone()) {
            Ok(ledger) => return ledger,
            Err(e) if e.to_string().contains("is in use") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen the ledger: {e}"),
        }
    }
    panic!("the ledger's lock was never given back");
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} never happened");
}

/// What every backend must do with one key, short of expiry.
async fn follows_the_state_machine(ledger: &dyn Ledger) {
    use IdempotencyBegin::*;
    assert_eq!(begin(ledger, "crm", "k1", &FIRST).await, Started);
    assert_eq!(begin(ledger, "crm", "k1", &FIRST).await, InFlight);
    assert_eq!(begin(ledger, "crm", "k1", &OTHER).await, Mismatch);
    // Keys are per tenant.
    assert_eq!(begin(ledger, "bi", "k1", &OTHER).await, Started);

    // Any bytes are kept as they were, empty and binary included.
    let stored = answer(b"{\"ok\":true}\0\xff");
    ledger
        .idempotency_complete("crm", "k1", &FIRST, stored.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(begin(ledger, "crm", "k1", &FIRST).await, Replay(stored));
    assert_eq!(begin(ledger, "crm", "k1", &OTHER).await, Mismatch);
    // Abandoning an answered key, or another request's claim, changes nothing.
    ledger
        .idempotency_abandon("crm", "k1", &FIRST)
        .await
        .unwrap();
    assert!(matches!(
        begin(ledger, "crm", "k1", &FIRST).await,
        Replay(_)
    ));
    ledger
        .idempotency_abandon("bi", "k1", &FIRST)
        .await
        .unwrap();
    assert_eq!(begin(ledger, "bi", "k1", &OTHER).await, InFlight);

    // Abandoning a claim frees the key, for any request.
    ledger
        .idempotency_abandon("bi", "k1", &OTHER)
        .await
        .unwrap();
    assert_eq!(begin(ledger, "bi", "k1", &FIRST).await, Started);
    let empty = StoredAnswer {
        status: 204,
        body: Bytes::new(),
    };
    ledger
        .idempotency_complete("bi", "k1", &FIRST, empty.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(begin(ledger, "bi", "k1", &FIRST).await, Replay(empty));
}

/// On a fake clock: a key is kept for its TTL, then free for any request.
async fn expires_after_its_ttl(ledger: &dyn Ledger, clock: &Clock) {
    use IdempotencyBegin::*;
    assert_eq!(begin(ledger, "crm", "claim", &FIRST).await, Started);
    ledger
        .idempotency_complete("crm", "answer", &FIRST, answer(b"{}"), TTL)
        .await
        .unwrap();
    clock.advance(TTL - Duration::from_secs(1));
    assert_eq!(begin(ledger, "crm", "claim", &OTHER).await, Mismatch);
    assert!(matches!(
        begin(ledger, "crm", "answer", &FIRST).await,
        Replay(_)
    ));
    clock.advance(Duration::from_secs(1));
    assert_eq!(begin(ledger, "crm", "claim", &OTHER).await, Started);
    assert_eq!(begin(ledger, "crm", "answer", &OTHER).await, Started);
}

/// `claims` concurrent claims of one key: exactly one starts.
async fn one_claim_wins(ledgers: &[Arc<dyn Ledger>], claims: usize) {
    let tasks: Vec<_> = (0..claims)
        .map(|i| {
            let ledger = Arc::clone(&ledgers[i % ledgers.len()]);
            tokio::spawn(async move { begin(&*ledger, "crm", "race", &FIRST).await })
        })
        .collect();
    let mut started = 0;
    for task in tasks {
        match task.await.unwrap() {
            IdempotencyBegin::Started => started += 1,
            IdempotencyBegin::InFlight => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1);
}

#[tokio::test]
async fn memory_keys_follow_the_state_machine_and_expire() {
    let clock = clock();
    let ledger = MemoryLedger::new(clock.clone());
    follows_the_state_machine(&ledger).await;
    expires_after_its_ttl(&ledger, &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_claims_start_once() {
    let ledger: Arc<dyn Ledger> = Arc::new(MemoryLedger::new(Clock::real()));
    one_claim_wins(&[ledger], 64).await;
}

#[tokio::test]
async fn sqlite_keys_follow_the_state_machine_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), clock.clone()).unwrap();
    follows_the_state_machine(&ledger).await;
    expires_after_its_ttl(&ledger, &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_claims_start_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(&path, Clock::real()).unwrap());
    one_claim_wins(&[ledger], 64).await;
}

#[tokio::test]
async fn sqlite_answers_survive_a_crash_and_claims_read_orphaned_after_it() {
    use IdempotencyBegin::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = clock();
    let stored = answer(b"{\"sent\":1}");

    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    assert_eq!(begin(&ledger, "crm", "answered", &FIRST).await, Started);
    ledger
        .idempotency_complete("crm", "answered", &FIRST, stored.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(begin(&ledger, "crm", "claimed", &FIRST).await, Started);
    ledger.crash();

    let ledger = reopen(&path, clock.clone()).await;
    assert_eq!(
        begin(&ledger, "crm", "answered", &FIRST).await,
        Replay(stored)
    );
    // Its process died mid-request: what the upstream did is unknown.
    assert_eq!(begin(&ledger, "crm", "claimed", &FIRST).await, Orphaned);
    assert_eq!(begin(&ledger, "crm", "claimed", &OTHER).await, Mismatch);
    // Only its owner can give a claim up; an answer replaces it.
    ledger
        .idempotency_abandon("crm", "claimed", &FIRST)
        .await
        .unwrap();
    assert_eq!(begin(&ledger, "crm", "claimed", &FIRST).await, Orphaned);
    let unknown = StoredAnswer {
        status: 502,
        body: Bytes::from_static(b"{\"outcome\":\"unknown\"}"),
    };
    ledger
        .idempotency_complete("crm", "claimed", &FIRST, unknown.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(
        begin(&ledger, "crm", "claimed", &FIRST).await,
        Replay(unknown.clone())
    );
    drop(ledger);

    // And a clean restart keeps answers too; TTLs run on across restarts.
    let ledger = reopen(&path, clock.clone()).await;
    assert_eq!(
        begin(&ledger, "crm", "claimed", &FIRST).await,
        Replay(unknown)
    );
    clock.advance(TTL);
    assert_eq!(begin(&ledger, "crm", "answered", &OTHER).await, Started);
}

#[tokio::test]
async fn sqlite_an_abandon_is_written_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    assert_eq!(
        begin(&ledger, "crm", "k", &FIRST).await,
        IdempotencyBegin::Started
    );
    ledger
        .idempotency_abandon("crm", "k", &FIRST)
        .await
        .unwrap();
    // Written with the next batch or within 50 ms: look at the file, bounded.
    eventually("the abandon reaching the file", || async {
        key_rows_in_the_file(&path) == 0
    })
    .await;
    ledger.crash();
    let ledger = reopen(&path, Clock::real()).await;
    assert_eq!(
        begin(&ledger, "crm", "k", &OTHER).await,
        IdempotencyBegin::Started
    );
}

/// Rows in the file's idempotency table, read as `viewgate usage` would:
/// through a second, read-only connection.
fn key_rows_in_the_file(path: &std::path::Path) -> i64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(path, flags).unwrap();
    conn.query_row("SELECT count(*) FROM idempotency_keys", [], |row| {
        row.get(0)
    })
    .unwrap()
}

async fn connect(server: &RedisServer) -> RedisLedger {
    RedisLedger::connect(&server.url(), Clock::real())
        .await
        .expect("connect never needs a live server")
}

#[tokio::test]
async fn redis_keys_follow_the_state_machine_and_expire_with_pexpire() {
    let server = redis_or_skip!();
    let ledger = connect(&server).await;
    follows_the_state_machine(&ledger).await;

    let short = Duration::from_millis(200);
    let begun = ledger.idempotency_begin("crm", "short", &FIRST, short);
    assert_eq!(begun.await.unwrap(), IdempotencyBegin::Started);
    ledger
        .idempotency_complete("crm", "short", &FIRST, answer(b"{}"), short)
        .await
        .unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("vg:{t:crm}:i:73686f7274")
        .query(&mut raw)
        .unwrap();
    assert!((1..=200).contains(&ttl), "{ttl}");
    eventually("the key expiring", || async {
        let found = ledger
            .idempotency_begin("crm", "short", &OTHER, short)
            .await;
        found.unwrap() == IdempotencyBegin::Started
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_replicas_share_keys_and_concurrent_claims_start_once() {
    use IdempotencyBegin::*;
    let server = redis_or_skip!();
    let a: Arc<dyn Ledger> = Arc::new(connect(&server).await);
    let b: Arc<dyn Ledger> = Arc::new(connect(&server).await);
    one_claim_wins(&[Arc::clone(&a), Arc::clone(&b)], 64).await;

    assert_eq!(begin(&*a, "crm", "shared", &FIRST).await, Started);
    assert_eq!(begin(&*b, "crm", "shared", &FIRST).await, InFlight);
    assert_eq!(begin(&*b, "crm", "shared", &OTHER).await, Mismatch);
    let stored = answer(b"{\"invited\":true}");
    a.idempotency_complete("crm", "shared", &FIRST, stored.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(begin(&*b, "crm", "shared", &FIRST).await, Replay(stored));
}

#[tokio::test]
async fn redis_a_claim_older_than_stale_after_reads_orphaned() {
    use IdempotencyBegin::*;
    let server = redis_or_skip!();
    let stale_after = Duration::from_millis(300);
    let dead = connect(&server).await.with_stale_after(stale_after);
    assert_eq!(begin(&dead, "crm", "k", &FIRST).await, Started);
    drop(dead);

    let survivor = connect(&server).await.with_stale_after(stale_after);
    eventually("the claim going stale", || async {
        begin(&survivor, "crm", "k", &FIRST).await == Orphaned
    })
    .await;
    assert_eq!(begin(&survivor, "crm", "k", &OTHER).await, Mismatch);
    let unknown = answer(b"{\"outcome\":\"unknown\"}");
    survivor
        .idempotency_complete("crm", "k", &FIRST, unknown.clone(), TTL)
        .await
        .unwrap();
    assert_eq!(begin(&survivor, "crm", "k", &FIRST).await, Replay(unknown));
}

#[tokio::test]
async fn redis_an_outage_makes_keys_unavailable_without_the_password() {
    let server = match RedisServer::start_with_password("idem-secret-pw") {
        Some(server) => server,
        None => return,
    };
    let ledger = connect(&server).await;
    assert_eq!(
        begin(&ledger, "crm", "k", &FIRST).await,
        IdempotencyBegin::Started
    );
    let mut server = server;
    server.stop();
    let outcomes = [
        ledger
            .idempotency_begin("crm", "k2", &FIRST, TTL)
            .await
            .map(drop),
        ledger
            .idempotency_complete("crm", "k", &FIRST, answer(b"{}"), TTL)
            .await,
        ledger.idempotency_abandon("crm", "k", &FIRST).await,
    ];
    for outcome in outcomes {
        match outcome {
            Err(LedgerError::Unavailable(message)) => {
                assert!(message.starts_with("redis: "), "{message}");
                assert!(!message.contains("idem-secret-pw"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
