//! `alerts:` and each tenant's `alert_thresholds`: which percentages of a
//! budget fire an alert, and the webhook alerts are sent to.

use serde_saphyr::Spanned;

use super::values::millis;
use super::{Problems, SecretRef, Secrets};
use crate::config::raw::{RawAlerts, RawTenant};
use crate::config::{AlertsConfig, TenantConfig, WebhookConfig};
use crate::keys::Secret;

/// The thresholds used when `alerts.thresholds` is not written.
pub(crate) const DEFAULT_THRESHOLDS: [u8; 4] = [50, 80, 95, 100];

/// A webhook key shorter than this is refused: it signs what the receiver trusts.
const MIN_SECRET_CHARS: usize = 16;

/// `alerts:`, reading the webhook's key from where it is named.
pub(super) fn alerts(raw: &RawAlerts, p: &mut Problems, secrets: Secrets<'_>) -> AlertsConfig {
    let thresholds = match &raw.thresholds {
        Some(list) => thresholds(list, "alerts.thresholds", p),
        None => DEFAULT_THRESHOLDS.to_vec(),
    };
    let webhook = match &raw.webhook_url {
        Some(url) => webhook(raw, url, p, secrets),
        None => {
            for (field, value) in [
                ("webhook_secret_env", &raw.webhook_secret_env),
                ("webhook_secret_file", &raw.webhook_secret_file),
            ] {
                if let Some(v) = value {
                    p.at(
                        &v.referenced,
                        format!("alerts.{field}"),
                        "is used only with alerts.webhook_url",
                    );
                }
            }
            None
        }
    };
    AlertsConfig {
        thresholds,
        webhook,
    }
}

fn webhook(
    raw: &RawAlerts,
    url: &Spanned<String>,
    p: &mut Problems,
    secrets: Secrets<'_>,
) -> Option<WebhookConfig> {
    let parsed = match url.value.parse::<http::Uri>() {
        // A user and password in the URL would never be sent (the body is
        // signed with the webhook key instead): refused, not ignored.
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            p.at(
                &url.referenced,
                "alerts.webhook_url",
                "must not carry a user or password: viewgate signs each alert with the webhook key instead",
            );
            None
        }
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http") | Some("https"))
                && uri.authority().is_some() =>
        {
            Some(uri)
        }
        _ => {
            p.at(
                &url.referenced,
                "alerts.webhook_url",
                "must be an http:// or https:// URL with a host",
            );
            None
        }
    };
    let timeout = millis(
        p,
        raw.webhook_timeout_ms.as_ref(),
        "alerts.webhook_timeout_ms",
        5_000,
    );
    let (source, place, field) = match (&raw.webhook_secret_env, &raw.webhook_secret_file) {
        (Some(var), None) => (
            SecretRef::Env(&var.value),
            var.referenced,
            "webhook_secret_env",
        ),
        (None, Some(file)) => (
            SecretRef::File(&file.value),
            file.referenced,
            "webhook_secret_file",
        ),
        _ => {
            p.at(
                &url.referenced,
                "alerts.webhook_url",
                "needs exactly one of webhook_secret_env or webhook_secret_file (the key that signs each alert; never written in this file)",
            );
            return None;
        }
    };
    let key = format!("alerts.{field}");
    let secret = match secrets(source) {
        Ok(v) if v.chars().count() < MIN_SECRET_CHARS => {
            p.at(
                &place,
                key,
                format!("the webhook key must be at least {MIN_SECRET_CHARS} characters"),
            );
            return None;
        }
        Ok(v) => Secret::new(v),
        Err(e) => {
            p.at(&place, key, e);
            return None;
        }
    };
    Some(WebhookConfig {
        url: parsed?,
        secret,
        timeout,
    })
}

/// Gives each tenant its own `alert_thresholds`, or `default`.
pub(super) fn tenant_thresholds(
    raw: &[RawTenant],
    tenants: &mut [TenantConfig],
    default: &[u8],
    p: &mut Problems,
) {
    for (i, (raw, tenant)) in raw.iter().zip(tenants.iter_mut()).enumerate() {
        let key = format!("tenants[{i}].alert_thresholds");
        tenant.alert_thresholds = match &raw.alert_thresholds {
            Some(list) if !list.value.is_empty() && tenant.budget.is_none() => {
                p.at(
                    &list.referenced,
                    &key,
                    "alerts fire at percentages of a budget, and this tenant has none: \
                     add a budget or remove alert_thresholds",
                );
                Vec::new()
            }
            Some(list) => thresholds(list, &key, p),
            None => default.to_vec(),
        };
    }
}

/// A list of percentages: each 1 to 100, none twice; returned ascending.
/// An empty list is allowed (no alerts).
fn thresholds(list: &Spanned<Vec<u64>>, key: &str, p: &mut Problems) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(list.value.len());
    for &pct in &list.value {
        match u8::try_from(pct) {
            Ok(pct @ 1..=100) if !out.contains(&pct) => out.push(pct),
            Ok(pct @ 1..=100) => p.at(
                &list.referenced,
                key,
                format!("lists {pct} twice: each threshold fires once per period"),
            ),
            _ => p.at(
                &list.referenced,
                key,
                format!("{pct} is not a percentage of the budget from 1 to 100"),
            ),
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError, from_yaml_with_env};

    const HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn load(alerts: &str, tenant_extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: TEST_UPSTREAM_KEY\ntenants:\n  - id: crm\n    key_sha256: \"{HASH}\"\n    accounts: [\"*\"]\n{tenant_extra}{alerts}"
        );
        from_yaml_with_env(&text, "t.yaml", &|name| match name {
            "TEST_UPSTREAM_KEY" => Some("k".into()),
            "TEST_HOOK_KEY" => Some("a-test-webhook-key-of-length".into()),
            "TEST_SHORT_KEY" => Some("short".into()),
            _ => None,
        })
    }

    #[test]
    fn thresholds_default_to_50_80_95_100_and_a_tenant_may_replace_them() {
        let c = load("", "").unwrap();
        assert_eq!(c.alerts.thresholds, vec![50, 80, 95, 100]);
        assert_eq!(c.tenants[0].alert_thresholds, vec![50, 80, 95, 100]);
        assert_eq!(c.alerts.webhook, None);
        let c = load(
            "alerts:\n  thresholds: [90, 25]\n",
            "    alert_thresholds: [100, 75]\n    budget: { credits: 10, period: day }\n",
        )
        .unwrap();
        assert_eq!(c.alerts.thresholds, vec![25, 90]);
        assert_eq!(c.tenants[0].alert_thresholds, vec![75, 100]);
        let c = load("", "    alert_thresholds: []\n").unwrap();
        assert!(c.tenants[0].alert_thresholds.is_empty(), "no alerts");
    }

    #[test]
    fn impossible_thresholds_are_refused_with_their_line() {
        let e = load(
            "alerts:\n  thresholds: [0, 50, 50, 101]\n",
            "    alert_thresholds: [300]\n    budget: { credits: 10, period: day }\n",
        )
        .unwrap_err();
        let shown = e.to_string();
        let lines: Vec<(u64, &str)> = e
            .problems
            .iter()
            .map(|p| (p.line, p.key.as_str()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (10, "tenants[0].alert_thresholds"),
                (13, "alerts.thresholds"),
                (13, "alerts.thresholds"),
                (13, "alerts.thresholds"),
            ],
            "{shown}"
        );
        assert!(shown.contains("0 is not a percentage"), "{shown}");
        assert!(shown.contains("lists 50 twice"), "{shown}");
        assert!(shown.contains("101 is not a percentage"), "{shown}");
    }

    #[test]
    fn a_webhook_needs_a_url_and_a_key_of_its_own() {
        let c = load(
            "alerts:\n  webhook_url: \"https://hooks.example/viewgate\"\n  webhook_secret_env: TEST_HOOK_KEY\n",
            "",
        )
        .unwrap();
        let hook = c.alerts.webhook.unwrap();
        assert_eq!(hook.url.to_string(), "https://hooks.example/viewgate");
        assert_eq!(hook.secret.expose(), "a-test-webhook-key-of-length");
        assert_eq!(hook.timeout, Duration::from_millis(5000));
        assert_eq!(format!("{:?}", hook.secret), "***");

        for (alerts, says) in [
            (
                "alerts:\n  webhook_url: \"https://hooks.example/\"\n",
                "needs exactly one of webhook_secret_env or webhook_secret_file",
            ),
            (
                "alerts:\n  webhook_url: \"ftp://hooks.example/\"\n  webhook_secret_env: TEST_HOOK_KEY\n",
                "must be an http:// or https:// URL",
            ),
            (
                "alerts:\n  webhook_url: \"https://user:pass@hooks.example/\"\n  webhook_secret_env: TEST_HOOK_KEY\n",
                "must not carry a user or password",
            ),
            (
                "alerts:\n  webhook_url: \"http://hooks.example/\"\n  webhook_secret_env: TEST_SHORT_KEY\n",
                "at least 16 characters",
            ),
            (
                "alerts:\n  webhook_url: \"http://hooks.example/\"\n  webhook_secret_env: NOT_SET_ANYWHERE\n",
                "NOT_SET_ANYWHERE is not set",
            ),
            (
                "alerts:\n  webhook_secret_env: TEST_HOOK_KEY\n",
                "is used only with alerts.webhook_url",
            ),
            (
                "alerts:\n  webhook_url: \"http://hooks.example/\"\n  webhook_secret_env: TEST_HOOK_KEY\n  webhook_timeout_ms: 0\n",
                "alerts.webhook_timeout_ms: must be between 1",
            ),
        ] {
            let e = load(alerts, "").unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(says), "{alerts}: {shown}");
            assert!(e.problems.iter().all(|p| p.line >= 10), "{shown}");
            assert!(!shown.contains("a-test-webhook-key"), "{shown}");
        }
    }

    #[test]
    fn thresholds_of_a_tenant_without_a_budget_are_refused() {
        let e = load("", "    alert_thresholds: [50]\n").unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("tenants[0].alert_thresholds"), "{shown}");
        assert!(shown.contains("this tenant has none"), "{shown}");
        // The defaults (and an empty list) are fine without one: nothing fires.
        assert!(load("", "").is_ok());
        assert!(load("", "    alert_thresholds: []\n").is_ok());
    }
}
