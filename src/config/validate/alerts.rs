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
        tenant.alert_thresholds = match &raw.alert_thresholds {
            Some(list) => thresholds(list, &format!("tenants[{i}].alert_thresholds"), p),
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
