//! Unit tests of the SQLite ledger that need its private parts: broken
//! writes, commit counts, the hit flush interval, schema checks.

use super::schema::{APPLICATION_ID, SCHEMA_V1, SCHEMA_VERSION};
use super::*;
use crate::config::Period;
use crate::ledger::{IdempotencyBegin, StoredAnswer};

fn budget(credits: u64) -> Option<Budget> {
    Some(Budget {
        credits,
        period: Period::Total,
    })
}

#[tokio::test]
async fn a_failed_commit_answers_unavailable_and_answered_closes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10);
    let held = ledger.reserve(&t, b, 4, "r1").await.unwrap();
    let before = ledger.balance("crm", b).await.unwrap();

    ledger.break_writes(true);
    // A settle charging more than was held must be on disk to be answered.
    let (settled, reserved) = futures_util::join!(
        ledger.settle(held.clone(), 5, b),
        ledger.reserve(&t, b, 1, "r2")
    );
    for error in [settled.unwrap_err(), reserved.unwrap_err()] {
        let LedgerError::Unavailable(message) = error else {
            panic!("expected Unavailable, got {error:?}");
        };
        assert!(message.contains("ledger.db"), "{message}");
    }
    assert!(ledger.health().await.is_err());
    assert_eq!(ledger.balance("crm", b).await.unwrap(), before);
    // One charging no more than was held is answered at once. Its write
    // fails (with the flush, or on its own after 50 ms): it is kept, and
    // readers go on seeing what its caller was told.
    let early = ledger.settle(held.clone(), 4, b).await.unwrap();
    assert_eq!((early.used, early.reserved), (4, 0));
    ledger.flush().await.unwrap_err();
    ledger.flush().await.unwrap_err();
    assert_eq!(ledger.balance("crm", b).await.unwrap(), early);

    // Once writes work again it is written; settling again changes nothing.
    ledger.break_writes(false);
    ledger.flush().await.unwrap();
    assert!(ledger.health().await.is_ok());
    let after = ledger.settle(held.clone(), 4, b).await.unwrap();
    assert_eq!(after, early);
    assert_eq!(ledger.settle(held, 4, b).await.unwrap(), after);
    drop(ledger);
    let usage = read_usage(&path, &[("crm".into(), b)], &Clock::real()).unwrap();
    assert_eq!(usage[0].balance, after);
    assert_eq!(usage[0].requests, 1);
}

/// Regression: with the disk full, "could not write answered settles" was
/// logged on every retry of the batch, about 30 times a second.
#[tokio::test]
async fn a_failing_disk_is_logged_once_then_summed_up() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10);
    let held = ledger.reserve(&t, b, 4, "r1").await.unwrap();
    ledger.break_writes(true);
    // Answered at once; its write is retried every 50 ms and keeps failing.
    ledger.settle(held, 3, b).await.unwrap();
    let site = writer::CLOSES_UNWRITTEN;
    // Bounded: 500 × 20 ms of polling.
    for round in 0.. {
        if ledger.logs().suppressed(site).unwrap_or(0) >= 10 {
            break;
        }
        assert!(round < 500, "the retries stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the disk takes writes again, the kept settle is written and the
    // recovery line takes the count with it.
    ledger.break_writes(false);
    ledger.flush().await.unwrap();
    // The recovery line is written by the writer thread with its next
    // successful batch: wait for it (bounded) rather than for time.
    for round in 0.. {
        if ledger.logs().suppressed(site).is_none() {
            break;
        }
        assert!(round < 500, "the recovery line never came");
        ledger.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ledger.balance("crm", b).await.unwrap().used, 3);
}

/// A close that gives back is answered without the writer, and readers see
/// it at once, even while the writer publishes the same account from a book
/// that does not hold it yet.
#[tokio::test]
async fn a_close_that_gives_back_is_answered_without_the_writer_and_never_undone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10);
    let r1 = ledger.reserve(&t, b, 4, "r1").await.unwrap();

    // The writer takes r2 into a batch and is held there, before its commit.
    let (first, held) = ledger.hold();
    held.recv().unwrap();
    let mut r2 = ledger.reserve(&t, b, 3, "r2");
    assert!(futures_util::poll!(&mut r2).is_pending());
    let (second, held) = ledger.hold();
    first.send(()).unwrap();
    held.recv().unwrap();

    // Answered while the writer is held: it cannot have been asked.
    let settled = {
        let mut settle = ledger.settle(r1.clone(), 2, b);
        match futures_util::poll!(&mut settle) {
            std::task::Poll::Ready(settled) => settled.unwrap(),
            std::task::Poll::Pending => panic!("a settle that gives back waited for the writer"),
        }
    };
    assert_eq!((settled.used, settled.reserved), (2, 0));
    assert_eq!(ledger.balance("crm", b).await.unwrap(), settled);

    // r2's commit publishes the account from the book, which has not had
    // r1's settle yet: readers still see it.
    second.send(()).unwrap();
    let r2 = r2.await.unwrap();
    let now = ledger.balance("crm", b).await.unwrap();
    assert_eq!((now.used, now.reserved), (2, 3));
    // A second close of r1 changes nothing, here or in the book.
    assert_eq!(ledger.settle(r1.clone(), 2, b).await.unwrap(), now);
    ledger.release(r1, b).await.unwrap();
    // The budget check (the book's) agrees: 10 - 2 used - 3 held leaves 5.
    assert!(ledger.reserve(&t, b, 6, "r3").await.is_err());
    let r4 = ledger.reserve(&t, b, 5, "r4").await.unwrap();
    ledger.release(r4, b).await.unwrap();
    let last = ledger.settle(r2, 3, b).await.unwrap();
    assert_eq!((last.used, last.reserved), (5, 0));
    ledger.flush().await.unwrap();
    assert_eq!(ledger.balance("crm", b).await.unwrap(), last);
    drop(ledger);
    let usage = read_usage(&path, &[("crm".into(), b)], &Clock::real()).unwrap();
    assert_eq!(usage[0].balance, last);
    assert_eq!(usage[0].requests, 2);
}

/// A close answered more than its delay ago that reaches the writer in one
/// batch with a crash (it queued behind a long commit) is written first:
/// the delay runs from its answer, not from when the writer took it.
#[tokio::test]
async fn a_close_past_its_delay_is_written_before_the_rest_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = Clock::fake("2026-11-27T10:00:00Z".parse().unwrap());
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10);
    let held = ledger.reserve(&t, b, 3, "r1").await.unwrap();
    let (release, reached) = ledger.hold();
    reached.recv().unwrap();
    ledger.settle(held, 1, b).await.unwrap();
    clock.advance(writer::CLOSE_WRITE_DELAY);
    // Queued behind the settle: the writer takes both in one batch.
    ledger.commands.send(Command::Crash).unwrap();
    release.send(()).unwrap();
    ledger.crash();
    let usage = read_usage(&path, &[("crm".into(), b)], &clock).unwrap();
    assert_eq!((usage[0].balance.used, usage[0].orphaned), (1, 0));
    assert_eq!(usage[0].requests, 1);
}

/// A close that gives back wakes no thread: the writer, which looks for
/// queued closes while reservations are open, writes it on its own (hit
/// counts, which would also carry it, are flushed only hourly here), and a
/// reservation sent after it already has the credits it gave back.
#[tokio::test]
async fn answered_closes_reach_the_file_on_their_own_and_free_credits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let hourly = Duration::from_secs(3600);
    let ledger = SqliteLedger::open_with(&path, Clock::real(), hourly).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(5);
    let r1 = ledger.reserve(&t, b, 5, "r1").await.unwrap();
    ledger.release(r1, b).await.unwrap();
    // The whole budget again: the release was applied before this.
    let r2 = ledger.reserve(&t, b, 5, "r2").await.unwrap();
    ledger.settle(r2, 2, b).await.unwrap();
    let tenants = [("crm".to_string(), b)];
    let mut seen = None;
    for _ in 0..500 {
        let usage = read_usage(&path, &tenants, &Clock::real()).unwrap();
        seen = Some((usage[0].balance.used, usage[0].balance.reserved));
        if seen == Some((2, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, Some((2, 0)), "the settle never reached the file");
}

/// Once the writer thread has ended, a close that gives back is refused
/// (it could never be written), and changes nothing readers see.
#[tokio::test]
async fn a_close_after_the_writer_ended_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let b = budget(10);
    let held = ledger.reserve(&t, b, 4, "r1").await.unwrap();
    ledger.commands.send(Command::Crash).unwrap();
    for _ in 0..1000 {
        if lock(&ledger.mirror).writer_gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lock(&ledger.mirror).writer_gone, "the writer did not end");
    let before = ledger.balance("crm", b).await.unwrap();
    assert!(matches!(
        ledger.release(held, b).await,
        Err(LedgerError::Unavailable(_))
    ));
    assert_eq!(ledger.balance("crm", b).await.unwrap(), before);
    assert_eq!((before.used, before.reserved), (0, 4));
}

#[tokio::test]
async fn concurrent_commands_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), Clock::real()).unwrap();
    let t: Arc<str> = Arc::from("crm");
    let reservations =
        futures_util::future::join_all((0..64).map(|_| ledger.reserve(&t, None, 1, "r"))).await;
    assert!(reservations.iter().all(Result::is_ok));
    // All 64 are queued before the writer wakes, give or take the first one.
    assert!(ledger.commits() <= 8, "{} commits", ledger.commits());
}

#[tokio::test]
async fn concurrent_key_claims_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), Clock::real()).unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    let ttl = Duration::from_secs(60);
    let claims = keys
        .iter()
        .map(|key| ledger.idempotency_begin("crm", key, &[1; 32], ttl));
    let claims = futures_util::future::join_all(claims).await;
    assert!(claims.iter().all(|c| c == &Ok(IdempotencyBegin::Started)));
    // Like reservations: all 64 queued before the writer wakes, give or take one.
    assert!(ledger.commits() <= 8, "{} commits", ledger.commits());
}

#[tokio::test]
async fn hit_counts_reach_the_file_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let interval = Duration::from_millis(20);
    let ledger = SqliteLedger::open_with(&path, Clock::real(), interval).unwrap();
    ledger.hit("crm", None, 3).await.unwrap();
    // Seen at once by the ledger itself, and by the file within the interval.
    let usage = ledger.usage(&[("crm".into(), None)]).await.unwrap();
    assert_eq!((usage[0].cache_hits, usage[0].credits_saved), (1, 3));
    let tenants = [("crm".to_string(), None)];
    let mut seen = 0;
    for _ in 0..200 {
        seen = read_usage(&path, &tenants, &Clock::real()).unwrap()[0].cache_hits;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 1);
    let usage = ledger.usage(&[("crm".into(), None)]).await.unwrap();
    assert_eq!(usage[0].cache_hits, 1, "written hits are not counted twice");
}

/// Commands that need no commit of their own (here the alert outbox's
/// polls, as a webhook makes every 500 ms) do not hold hit counts back:
/// they are written within the flush interval however busy the writer is.
#[tokio::test]
async fn hit_counts_reach_the_file_while_other_commands_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let interval = Duration::from_millis(200);
    let ledger = SqliteLedger::open_with(&path, Clock::real(), interval).unwrap();
    ledger.hit("crm", None, 3).await.unwrap();
    let tenants = [("crm".to_string(), None)];
    let mut seen = 0;
    for _ in 0..250 {
        // Every 20 ms, well inside the interval.
        ledger
            .outbox_take(0, Duration::from_secs(1), 10)
            .await
            .unwrap();
        seen = read_usage(&path, &tenants, &Clock::real()).unwrap()[0].cache_hits;
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1, "the hit never reached the file");
}

#[test]
fn another_application_s_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE notes (text TEXT)")
        .unwrap();
    let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
    assert!(
        error.to_string().contains("not a viewgate ledger"),
        "{error}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    drop(SqliteLedger::open(&path, Clock::real()).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let newer = format!("schema version {}", SCHEMA_VERSION + 1);
    let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
    assert!(error.to_string().contains(&newer), "{error}");
    let error = read_usage(&path, &[], &Clock::real()).unwrap_err();
    assert!(error.to_string().contains(&newer), "{error}");
}

#[test]
fn a_second_writer_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let first = SqliteLedger::open(&path, Clock::real()).unwrap();
    let error = SqliteLedger::open(&path, Clock::real()).unwrap_err();
    assert!(error.to_string().contains("in use"), "{error}");
    assert!(read_usage(&path, &[], &Clock::real()).is_ok());
    drop(first);
    assert!(SqliteLedger::open(&path, Clock::real()).is_ok());
}

#[tokio::test]
async fn a_version_1_file_is_migrated_in_place_and_keeps_its_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (tenant, period, used, requests) VALUES ('crm', 'total', 5, 2);
             INSERT INTO reservations (tenant, period, amount, request_id, created_at)
             VALUES ('crm', 'total', 3, 'r', '2026-11-27T10:00:00Z');",
        )
        .unwrap();
    }
    let tenants = [("crm".to_string(), budget(20))];
    // A report reads a version-1 file as it is, without migrating it.
    let report = read_usage(&path, &tenants, &Clock::real()).unwrap();
    assert_eq!((report[0].balance.used, report[0].balance.reserved), (5, 3));

    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].balance.used, usage[0].orphaned), (8, 3));
    let fingerprint = [7u8; 32];
    let ttl = Duration::from_secs(60);
    let begun = ledger.idempotency_begin("crm", "k", &fingerprint, ttl);
    assert_eq!(begun.await.unwrap(), IdempotencyBegin::Started);
    drop(ledger);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let keys: i64 = conn
        .query_row("SELECT count(*) FROM idempotency_keys", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(keys, 1);
}

#[tokio::test]
async fn expired_keys_are_deleted_in_the_background_a_bounded_batch_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = Clock::fake("2026-11-27T10:00:00Z".parse().unwrap());
    let interval = Duration::from_millis(20);
    let ledger = SqliteLedger::open_with(&path, clock.clone(), interval).unwrap();
    let ttl = Duration::from_secs(60);
    let count = keys::PURGE_BATCH + 44;
    let ledger = &ledger;
    let begins = (0..count).map(|i| {
        let key = format!("key-{i}");
        async move { ledger.idempotency_begin("crm", &key, &[1; 32], ttl).await }
    });
    for begun in futures_util::future::join_all(begins).await {
        assert_eq!(begun.unwrap(), IdempotencyBegin::Started);
    }
    let answer = StoredAnswer {
        status: 200,
        body: bytes::Bytes::from_static(b"{}"),
    };
    let kept = ledger.idempotency_complete("crm", "kept", &[2; 32], answer, ttl * 2);
    kept.await.unwrap();
    let rows = || -> i64 {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        conn.query_row("SELECT count(*) FROM idempotency_keys", [], |row| {
            row.get(0)
        })
        .unwrap()
    };
    assert_eq!(rows(), i64::try_from(count).unwrap() + 1);

    clock.advance(ttl + Duration::from_secs(1));
    // Idle ticks delete them, PURGE_BATCH per commit, and leave the live one.
    let mut left = rows();
    for _ in 0..500 {
        if left == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        left = rows();
    }
    assert_eq!(left, 1);
    let replay = ledger.idempotency_begin("crm", "kept", &[2; 32], ttl);
    assert!(matches!(replay.await.unwrap(), IdempotencyBegin::Replay(_)));
}

#[tokio::test]
async fn spend_history_and_coalesced_counts_reach_the_file_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let clock = Clock::fake("2026-11-27T11:10:00Z".parse().unwrap());
    let t: Arc<str> = Arc::from("crm");
    let b = budget(1000);
    let tenants = [("crm".to_string(), b)];
    {
        let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
        let held = ledger.reserve(&t, b, 40, "r1").await.unwrap();
        ledger.settle(held, 30, b).await.unwrap();
        clock.advance(Duration::from_secs(30 * 60));
        // Charged above what was held: answered once on disk.
        let held = ledger.reserve(&t, b, 10, "r2").await.unwrap();
        ledger.settle(held, 30, b).await.unwrap();
        ledger.hit("crm", b, 3).await.unwrap();
        ledger.coalesced("crm", b, 2).await.unwrap();
        ledger.coalesced("crm", b, 2).await.unwrap();
        let live = ledger.usage(&tenants).await.unwrap();
        assert_eq!(live[0].recent.spent_last_hour, 60);
        assert_eq!((live[0].coalesced, live[0].credits_saved_coalesced), (2, 4));
        ledger.flush().await.unwrap();
        // The report beside the server reads the same from the file.
        let report = read_usage(&path, &tenants, &clock).unwrap();
        assert_eq!(report[0].recent, live[0].recent);
        assert_eq!(
            (report[0].coalesced, report[0].credits_saved_coalesced),
            (2, 4)
        );
        assert_eq!(report[0].recent.saved_cache_last_day, 3);
        assert_eq!(report[0].recent.saved_coalesced_last_day, 4);
    }
    // Two hours later the last hour is empty, the last day is not.
    clock.advance(Duration::from_secs(2 * 3600));
    let ledger = SqliteLedger::open(&path, clock.clone()).unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!(usage[0].recent.spent_last_hour, 0);
    assert_eq!(usage[0].recent.spent_last_day, 60);
    // A day and a half later the history is pruned from the file.
    clock.advance(Duration::from_secs(36 * 3600));
    let held = ledger.reserve(&t, b, 1, "r3").await.unwrap();
    ledger.settle(held, 1, b).await.unwrap();
    ledger.flush().await.unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!(usage[0].recent.spent_last_day, 1);
    drop(ledger);
    let conn = Connection::open(&path).unwrap();
    let minutes: i64 = conn
        .query_row("SELECT count(*) FROM spend_minutes", [], |row| row.get(0))
        .unwrap();
    assert_eq!(minutes, 1, "older minutes are deleted");
}

#[tokio::test]
async fn hits_taken_by_a_failed_write_wait_again_and_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = SqliteLedger::open(&path, Clock::real()).unwrap();
    let tenants = [("crm".to_string(), None)];
    ledger.hit("crm", None, 3).await.unwrap();
    ledger.break_writes(true);
    // The writer takes the waiting hits and their minute for the batch; the
    // commit fails, so both go back, and readers never miss them.
    ledger.flush().await.unwrap_err();
    ledger.hit("crm", None, 4).await.unwrap();
    ledger.flush().await.unwrap_err();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!((usage[0].cache_hits, usage[0].credits_saved), (2, 7));
    assert_eq!(usage[0].recent.saved_cache_last_day, 7);

    ledger.break_writes(false);
    ledger.flush().await.unwrap();
    let usage = ledger.usage(&tenants).await.unwrap();
    assert_eq!(
        (usage[0].cache_hits, usage[0].credits_saved),
        (2, 7),
        "written once"
    );
    drop(ledger);
    let stored = read_usage(&path, &tenants, &Clock::real()).unwrap();
    assert_eq!((stored[0].cache_hits, stored[0].credits_saved), (2, 7));
    assert_eq!(
        stored[0].recent.saved_cache_last_day, 7,
        "the minute was written"
    );
}
