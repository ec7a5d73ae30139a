//! How fast the SQLite ledger commits: reserve+settle pairs per second with
//! durable (fsynced) commits under 64 concurrent tasks, and the latency of
//! one reserve alone and under that load.
//!
//! Run with `cargo bench --bench ledger`. The file goes in a temporary
//! directory under `VIEWGATE_BENCH_DIR` (default: the system temp dir), so
//! point that at the disk the real ledger will live on.

// A benchmark measures real time.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use viewgate::clock::Clock;
use viewgate::config::{Budget, Period};
use viewgate::ledger::{Ledger, SqliteLedger};

const TASKS: usize = 64;
const PAIRS: usize = 20_000;
const SOLO_SAMPLES: usize = 500;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = match std::env::var_os("VIEWGATE_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let path = dir.path().join("ledger.db");
    let ledger = Arc::new(SqliteLedger::open(&path, Clock::real()).expect("the ledger opens"));
    println!("ledger file: {}", path.display());

    runtime.block_on(async {
        // One caller at a time: every reserve waits for its own fsync.
        let tenant: Arc<str> = Arc::from("solo");
        let mut solo = Vec::with_capacity(SOLO_SAMPLES);
        let mut pair = Vec::with_capacity(SOLO_SAMPLES);
        for _ in 0..SOLO_SAMPLES {
            let started = Instant::now();
            let r = ledger.reserve(&tenant, None, 1, "bench").await.unwrap();
            solo.push(started.elapsed());
            ledger.settle(r, 1, None).await.unwrap();
            pair.push(started.elapsed());
        }
        report("reserve latency, 1 caller", &mut solo);
        // What the ledger adds to a miss: one reserve before the upstream call
        // and one settle after it (answered at once: it gives credits back,
        // and is written with the next reserve's commit).
        report("reserve+settle (added to a miss), 1 caller", &mut pair);

        // 64 callers: their commands share commits.
        let budget = Some(Budget {
            credits: u64::MAX,
            period: Period::Day,
        });
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let ledger = Arc::clone(&ledger);
                let tenant: Arc<str> = Arc::from(format!("tenant-{}", task % 8));
                let pairs = PAIRS / TASKS + usize::from(task < PAIRS % TASKS);
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(pairs);
                    for _ in 0..pairs {
                        let reserve_started = Instant::now();
                        let r = ledger.reserve(&tenant, budget, 2, "bench").await.unwrap();
                        latencies.push(reserve_started.elapsed());
                        ledger.settle(r, 1, budget).await.unwrap();
                    }
                    latencies
                })
            })
            .collect();
        let mut loaded = Vec::with_capacity(PAIRS);
        for task in tasks {
            loaded.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        println!(
            "{PAIRS} reserve+settle pairs, {TASKS} tasks: {:.2} s, {:.0} pairs/s",
            elapsed.as_secs_f64(),
            PAIRS as f64 / elapsed.as_secs_f64()
        );
        report(&format!("reserve latency, {TASKS} callers"), &mut loaded);
        ledger.flush().await.unwrap();
    });
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        samples.len()
    );
}
