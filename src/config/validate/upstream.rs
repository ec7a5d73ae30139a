//! `upstream:`: the base URL, timeouts, retries, breaker and the real keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;

use super::values::{millis, patterns, rate_limit, seconds};
use super::{Problems, SecretRef, Secrets};
use crate::config::raw::{RawUpstream, RawUpstreamKey};
use crate::config::{AccountPattern, UpstreamConfig, UpstreamKeyConfig};
use crate::keys::Secret;

/// `upstream:`, reading each key from where it is named.
pub(super) fn upstream(u: &RawUpstream, p: &mut Problems, secrets: Secrets<'_>) -> UpstreamConfig {
    let base_url = match u.base_url.value.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            uri
        }
        _ => {
            p.at(
                &u.base_url.referenced,
                "upstream.base_url",
                "must be an http:// or https:// URL with a host and no query",
            );
            http::Uri::from_static("http://invalid")
        }
    };
    let timeout = millis(p, u.timeout_ms.as_ref(), "upstream.timeout_ms", 15_000);
    let max_retries = u.max_retries.as_ref().map_or(2, |v| {
        if v.value > 10 {
            p.at(&v.referenced, "upstream.max_retries", "must be at most 10");
        }
        v.value
    });
    if u.keys.is_empty() {
        p.nowhere("upstream.keys", "at least one upstream key is required");
    }
    let mut names: HashMap<&str, u64> = HashMap::new();
    let mut keys = Vec::new();
    for (i, k) in u.keys.iter().enumerate() {
        let path = format!("upstream.keys[{i}]");
        if k.name.value.is_empty() {
            p.at(
                &k.name.referenced,
                format!("{path}.name"),
                "must not be empty",
            );
        }
        if let Some(first) = names.insert(&k.name.value, k.name.referenced.line()) {
            p.at(
                &k.name.referenced,
                format!("{path}.name"),
                format!(
                    "duplicate key name {:?} (first at line {first})",
                    k.name.value
                ),
            );
        }
        let secret = secret(k, &path, p, secrets);
        let accounts = match &k.accounts {
            None => vec![AccountPattern::Any],
            Some(list) => patterns(p, list, &format!("{path}.accounts")),
        };
        let rate_limit = k
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(p, r, &format!("{path}.rate_limit"), &k.name.referenced));
        keys.push(UpstreamKeyConfig {
            name: k.name.value.clone(),
            secret: secret.unwrap_or_else(|| Secret::new("")),
            accounts,
            rate_limit,
        });
    }
    let deadline = millis(p, u.deadline_ms.as_ref(), "upstream.deadline_ms", 30_000);
    if let Some(d) = &u.deadline_ms
        && deadline < timeout
    {
        p.at(
            &d.referenced,
            "upstream.deadline_ms",
            "must be at least upstream.timeout_ms",
        );
    }
    let max_pace_wait = match &u.max_pace_wait_ms {
        None => Duration::from_millis(2_000),
        Some(v) if v.value <= 60_000 => Duration::from_millis(v.value),
        Some(v) => {
            p.at(
                &v.referenced,
                "upstream.max_pace_wait_ms",
                "must be at most 60000",
            );
            Duration::ZERO
        }
    };
    let breaker_failures = u
        .breaker
        .as_ref()
        .and_then(|b| b.failures.as_ref())
        .map_or(5, |v| {
            if v.value == 0 {
                p.at(
                    &v.referenced,
                    "upstream.breaker.failures",
                    "must be at least 1",
                );
            }
            v.value
        });
    let breaker_open = seconds(
        p,
        u.breaker.as_ref().and_then(|b| b.open_s.as_ref()),
        "upstream.breaker.open_s",
        30,
        false,
    );
    let breaker_accounts = u
        .breaker
        .as_ref()
        .and_then(|b| b.accounts.as_ref())
        .map_or(3, |v| {
            if !(1..=1000).contains(&v.value) {
                p.at(
                    &v.referenced,
                    "upstream.breaker.accounts",
                    "must be between 1 and 1000",
                );
            }
            v.value.clamp(1, 1000)
        });
    let breaker_window = seconds(
        p,
        u.breaker.as_ref().and_then(|b| b.window_s.as_ref()),
        "upstream.breaker.window_s",
        60,
        false,
    );
    // Checked with the action table they feed (`actions::actions`).
    let estimates = u
        .estimates
        .as_ref()
        .map(|map| map.value.clone())
        .unwrap_or_default();
    let ca_file = u.ca_file.as_ref().map(|f| {
        if let Err(e) = std::fs::metadata(&f.value) {
            p.at(
                &f.referenced,
                "upstream.ca_file",
                format!("cannot read {}: {e}", f.value),
            );
        }
        PathBuf::from(&f.value)
    });
    UpstreamConfig {
        base_url,
        timeout,
        max_retries,
        deadline,
        ca_file,
        max_pace_wait,
        breaker_failures,
        breaker_open,
        breaker_accounts,
        breaker_window,
        estimates,
        keys,
    }
}

/// Reads one key from its source. A key that a header cannot carry (a line
/// break pasted into a key file, say) is refused here rather than when
/// `serve` builds its key pool, so `check` catches it; the message names the
/// key by its `name`, never by its value.
fn secret(
    k: &RawUpstreamKey,
    path: &str,
    p: &mut Problems,
    secrets: Secrets<'_>,
) -> Option<Secret> {
    let (source, place, field) = match (&k.api_key_env, &k.api_key_file) {
        (Some(var), None) => (SecretRef::Env(&var.value), var.referenced, "api_key_env"),
        (None, Some(file)) => (
            SecretRef::File(&file.value),
            file.referenced,
            "api_key_file",
        ),
        _ => {
            p.at(
                &k.name.referenced,
                path,
                "needs exactly one of api_key_env or api_key_file (keys are never written in this file)",
            );
            return None;
        }
    };
    let key = format!("{path}.{field}");
    match secrets(source) {
        Ok(v) if HeaderValue::from_str(&v).is_err() => {
            p.at(
                &place,
                key,
                format!(
                    "the key of {:?} contains characters an HTTP header cannot carry (a line break or another control character)",
                    k.name.value
                ),
            );
            None
        }
        Ok(v) => Some(Secret::new(v)),
        Err(e) => {
            p.at(&place, key, e);
            None
        }
    }
}
