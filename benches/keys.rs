//! Tenant key checks take the same time whatever the presented key shares
//! with a real one: the presented key is hashed (SHA-256) before any lookup,
//! and the stored digest is compared in constant time.
//!
//! Run with `cargo bench --bench keys`. It times `Tenants::authenticate` for
//! the right key, a key differing only in its last character (a 42-character
//! shared prefix), a key differing in its first character, and a key of
//! another length, interleaved, and prints the median ns per check of each.

// A benchmark measures real time.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use viewgate::clock::Clock;
use viewgate::config::{AccountPattern, TenantConfig};
use viewgate::keys::{KeyHash, mint_tenant_key};
use viewgate::tenant::Tenants;

const ROUNDS: usize = 41;
const PER_ROUND: usize = 20_000;

fn main() {
    let key = mint_tenant_key().expect("randomness");
    let config = TenantConfig {
        id: "crm".into(),
        key_sha256: KeyHash::of(key.as_bytes()),
        accounts: vec![AccountPattern::Any],
        actions: vec!["get_viewers".into()],
        rate_limit: None,
        budget: None,
        max_in_flight: 2048,
        allow_refresh: false,
        connect_accounts: false,
        on_budget_exhausted: Default::default(),
        enforce: true,
        alert_thresholds: Vec::new(),
    };
    let tenants = Tenants::new(&[config], &Clock::real(), None, None);
    let mut last_differs = key.clone().into_bytes();
    let end = last_differs.len() - 1;
    last_differs[end] = if last_differs[end] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mut first_differs = key.clone().into_bytes();
    first_differs[0] = b'x';
    let shorter = key.as_bytes()[..20].to_vec();
    let cases: [(&str, Vec<u8>); 4] = [
        ("right key", key.clone().into_bytes()),
        ("wrong last character", last_differs),
        ("wrong first character", first_differs),
        ("20-character prefix", shorter),
    ];
    assert!(tenants.authenticate(&cases[0].1).is_some());
    assert!(
        cases[1..]
            .iter()
            .all(|(_, k)| tenants.authenticate(k).is_none())
    );
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, presented)) in cases.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(tenants.authenticate(black_box(presented)));
            }
            samples[i].push(started.elapsed().as_nanos() as f64 / PER_ROUND as f64);
        }
    }
    println!("median ns per key check ({ROUNDS} interleaved rounds of {PER_ROUND}):");
    for ((name, _), s) in cases.iter().zip(samples.iter_mut()) {
        s.sort_by(f64::total_cmp);
        println!("  {name:<24} {:>7.1} ns", s[s.len() / 2]);
    }
}
