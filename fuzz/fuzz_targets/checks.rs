//! What each fuzz target checks, shared by the libFuzzer targets in this
//! folder and by `tests/fuzz_regressions.rs` (which replays the seed corpus
//! and a fixed-seed stream of mutations as a plain `#[test]`).
//!
//! Every function takes the fuzzer's raw bytes and panics only when viewgate
//! breaks a promise: a panic inside viewgate itself, or a property below.

use serde_json::Value;
use viewgate::call::{ApiCall, CallParams, MAX_COUNT};
use viewgate::config::{SecretRef, from_yaml_with_secrets};
use viewgate::layers::parse::parse_call;
use viewgate::response::{CacheStatus, PageMeta, splice};

/// Categories a tenant can address (`/v2/{category}`); the first input byte picks one.
pub const CATEGORIES: [&str; 4] = ["profiles", "network", "recruiter", "x"];

/// Target (a): `parse_call(category, body)` never panics; what it accepts is
/// well formed, and what it sends upstream parses back to the same call.
pub fn parse_call_bytes(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let category = CATEGORIES[usize::from(selector) % CATEGORIES.len()];
    match parse_call(category, body) {
        Err(e) => {
            assert!(
                matches!(e.code(), "INVALID_PARAMS" | "INVALID_ACTION"),
                "{e}"
            );
            assert_eq!(e.status(), 400);
            assert!(!e.to_string().is_empty());
        }
        Ok(call) => check_accepted(category, &call),
    }
}

fn check_accepted(category: &str, call: &ApiCall) {
    let id = &call.account_id;
    assert!(
        (1..=128).contains(&id.len()),
        "account_id length {}",
        id.len()
    );
    assert!(
        id.bytes().all(|b| b.is_ascii_graphic()),
        "account_id {id:?} is not printable ASCII without spaces"
    );
    assert!(!call.action.is_empty() && call.action.len() <= 64);
    assert!(
        call.action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    );
    assert_eq!(call.category, category);
    // Every accepted call has a rule for its endpoint and a price bound from it.
    assert!(call.rule.category.as_deref().is_none_or(|c| c == category));
    assert_eq!(call.rule.name, call.action);
    assert!(call.bound >= 1 || call.rule.price == viewgate::actions::Price::Free);
    let viewers = category == "profiles" && call.action == "get_viewers";
    match &call.params {
        CallParams::Viewers { count, .. } => {
            assert!(viewers, "typed params for {category}/{}", call.action);
            assert!((1..=MAX_COUNT).contains(count), "count {count}");
            assert!(call.cache_key().is_some());
        }
        CallParams::Connect(_) => panic!("parse_call never builds a connection call"),
        CallParams::Other(raw) => {
            assert!(!viewers, "get_viewers params passed through untyped");
            // Reads with a TTL are cached by their canonical params; writes never.
            let cacheable = !call.rule.is_write() && call.rule.cache_ttl.is_some();
            assert_eq!(call.cache_key().is_some(), cacheable);
            if let Some(raw) = raw {
                assert!(raw.get().trim_start().starts_with('{'), "{}", raw.get());
            }
        }
    }
    // What goes upstream is one JSON object and means the same call.
    let upstream = call.upstream_body();
    let value: Value = serde_json::from_slice(&upstream)
        .unwrap_or_else(|e| panic!("upstream body is not JSON ({e}): {upstream:?}"));
    assert!(value.is_object());
    assert_eq!(value["account_id"], Value::String(call.account_id.clone()));
    assert_eq!(value["action"], Value::String(call.action.clone()));
    let again = parse_call(category, &upstream)
        .unwrap_or_else(|e| panic!("upstream body refused on re-parse ({e}): {upstream:?}"));
    assert_eq!(again.account_id, call.account_id);
    assert_eq!(again.action, call.action);
    assert_eq!(again.cache_key(), call.cache_key());
    assert_eq!(
        again.upstream_body(),
        upstream,
        "upstream body is not stable"
    );
}

/// Target (b): the config loader never panics on any text, and each problem
/// it reports names a place inside the text (or none).
///
/// Upstream keys are answered by the closure: `from_yaml_with_env` would
/// read `api_key_file` paths from the disk, and a fuzzer that spells
/// `/dev/zero` must not make the harness read forever.
pub fn config_text(text: &str) {
    let secrets = |source: SecretRef<'_>| match source {
        SecretRef::Env(_) => Ok("k".to_string()),
        SecretRef::File(path) => Err(format!("{path}: no files while fuzzing")),
    };
    match from_yaml_with_secrets(text, "fuzz.yaml", &secrets) {
        Ok(config) => {
            assert!(config.server.max_body_bytes >= 1);
            assert!(!config.upstream.keys.is_empty());
        }
        Err(e) => {
            // YAML breaks lines at LF, CR and CRLF; count generously.
            let lines = 1 + text.matches('\n').count() as u64 + text.matches('\r').count() as u64;
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert!(
                    p.line <= lines,
                    "problem at line {} of a {lines}-line text: {p:?}",
                    p.line
                );
                assert!(!p.message.is_empty(), "{p:?}");
            }
            let shown = e.to_string();
            assert!(shown.contains("fuzz.yaml"), "{shown}");
        }
    }
}

/// Target (c): splicing fresh metadata around an upstream's `data` always
/// gives one JSON object whose `data` is the upstream's, JSON-equal.
///
/// The bytes are used as `data` when they are JSON; otherwise a JSON value
/// is built from them, so every input exercises the splice.
pub fn splice_bytes(data: &[u8]) {
    let mut input = Input::new(data);
    let meta_seed = input.u64();
    let (text, expected) = match serde_json::from_slice::<Value>(data) {
        Ok(value) => (data.to_vec(), value),
        Err(_) => {
            let value = input.value(0);
            let text = if meta_seed & 1 == 0 {
                serde_json::to_vec(&value).expect("a Value serializes")
            } else {
                serde_json::to_vec_pretty(&value).expect("a Value serializes")
            };
            // What the text means, read the way a client reads it (serde_json
            // may read a float back one ULP off the value it printed).
            let expected = serde_json::from_slice(&text).expect("printed JSON reads back");
            (text, expected)
        }
    };
    let account_id = input.string(200);
    let action = input.string(40);
    let seconds = i64::try_from(input.u64() % 253_402_300_800).unwrap_or(0);
    let timestamp = jiff::Timestamp::from_second(seconds).expect("in range");
    let cache = match meta_seed % 5 {
        0 => None,
        1 => Some(CacheStatus::Hit),
        2 => Some(CacheStatus::Miss),
        3 => Some(CacheStatus::Coalesced),
        _ => Some(CacheStatus::Stale),
    };
    let remaining = (meta_seed & 2 == 0).then(|| input.u64());
    let meta = PageMeta {
        action: &action,
        account_id: &account_id,
        credits_consumed: meta_seed >> 8,
        timestamp,
        cache: cache.map(|c| (c, timestamp)),
        credits_remaining: remaining,
    };
    let out = splice(&text, &meta);
    let v: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "spliced body is not JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    });
    let object = v.as_object().expect("an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, ["success", "data", "metadata"]);
    assert_eq!(v["success"], true);
    assert_eq!(v["data"], expected, "data did not round-trip");
    let m = &v["metadata"];
    assert_eq!(m["action"], Value::String(action.clone()));
    assert_eq!(m["account_id"], Value::String(account_id.clone()));
    assert_eq!(m["credits_consumed"], meta.credits_consumed);
    let stamp = m["timestamp"].as_str().expect("timestamp");
    assert_eq!(stamp.len(), 20, "{stamp}");
    assert!(stamp.ends_with('Z'), "{stamp}");
    match cache {
        None => assert!(m.get("cache").is_none() && m.get("cached_at").is_none()),
        Some(c) => {
            assert_eq!(m["cache"], c.as_str());
            assert_eq!(m["cached_at"], m["timestamp"]);
        }
    }
    match remaining {
        None => assert_eq!(m["credits_remaining"], Value::Null),
        Some(n) => assert_eq!(m["credits_remaining"], n),
    }
}

/// Reads the fuzzer's bytes as a stream of choices; past the end it reads zeros.
pub struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    /// The next byte (0 once exhausted).
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, i| acc | (u64::from(self.byte()) << (8 * i)))
    }

    /// A string of at most `max` characters, any Unicode scalar (controls,
    /// quotes, backslashes and U+2028 included).
    pub fn string(&mut self, max: usize) -> String {
        let len = usize::from(self.byte()) % (max + 1);
        (0..len)
            .map(|_| match self.byte() {
                0..=31 => char::from(self.byte() % 32),
                32..=127 => char::from(self.byte() % 95 + 32),
                128..=191 => '"',
                192..=223 => '\\',
                224..=239 => '\u{2028}',
                _ => char::from_u32(u32::from(self.byte()) * 263 + 0x80).unwrap_or('\u{fffd}'),
            })
            .collect()
    }

    /// A JSON value, nested at most a few levels.
    pub fn value(&mut self, depth: u32) -> Value {
        let kind = self.byte() % if depth >= 6 { 5 } else { 7 };
        match kind {
            0 => Value::Null,
            1 => Value::Bool(self.byte() & 1 == 1),
            2 => Value::from(self.u64() as i64),
            3 => serde_json::Number::from_f64(f64::from_bits(self.u64()))
                .map_or(Value::Null, Value::Number),
            4 => Value::String(self.string(24)),
            5 => {
                let n = usize::from(self.byte() % 5);
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            _ => {
                let n = usize::from(self.byte() % 5);
                let mut map = serde_json::Map::new();
                for _ in 0..n {
                    let key = self.string(12);
                    let value = self.value(depth + 1);
                    map.insert(key, value);
                }
                Value::Object(map)
            }
        }
    }
}
