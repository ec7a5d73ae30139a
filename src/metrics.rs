//! Prometheus metrics, owned by one gateway (no global recorder).
//!
//! Counters and histograms are recorded on the request path; gauges that
//! mirror state elsewhere (credits remaining, cache size, readiness) are read
//! from their source when `/metrics` is scraped, so they are right after a
//! restart and cost nothing per request. Tenant labels are bounded by the
//! configuration (plus `-` for unauthenticated requests), action labels by
//! the action table; keys are labelled by name, never by value.
//!
//! Counters fed with numbers from outside (credits from the upstream's
//! metadata) saturate at `u64::MAX` instead of wrapping: a wrapped counter
//! reads as a reset to Prometheus, and `rate()` turns it into a huge burst.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::response::CacheStatus;

const METADATA: Metadata<'static> = Metadata::new("viewgate", Level::INFO, None);

/// Request latency buckets, seconds: from a fast cache hit to a slow upstream.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The gateway's metrics.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    in_flight: Gauge,
    request_duration: Histogram,
    tenants: RwLock<HashMap<Box<str>, Arc<TenantHandles>>>,
    /// Handles per upstream key: its duration histogram and a counter per
    /// outcome seen, so an upstream call finds its series without building
    /// labels or searching the registry (keys are the configured ones).
    upstream: RwLock<HashMap<Box<str>, UpstreamHandles>>,
}

/// One upstream key's series.
#[derive(Default)]
struct UpstreamHandles {
    duration: Option<Histogram>,
    outcomes: Vec<(&'static str, Counter)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric described.
    pub(crate) fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let describe =
            |name: &'static str, unit: Option<Unit>, help: &'static str, kind: char| match kind {
                'c' => recorder.describe_counter(name.into(), unit, help.into()),
                'g' => recorder.describe_gauge(name.into(), unit, help.into()),
                _ => recorder.describe_histogram(name.into(), unit, help.into()),
            };
        describe(
            "viewgate_requests_total",
            None,
            "Tenant API requests answered, by tenant, status and cache outcome.",
            'c',
        );
        describe(
            "viewgate_request_duration_seconds",
            Some(Unit::Seconds),
            "Time to answer a tenant request.",
            'h',
        );
        describe(
            "viewgate_upstream_requests_total",
            None,
            "Upstream attempts, by key name and outcome.",
            'c',
        );
        describe(
            "viewgate_upstream_duration_seconds",
            Some(Unit::Seconds),
            "Upstream attempt latency, by key name.",
            'h',
        );
        describe(
            "viewgate_credits_charged_total",
            None,
            "Credits charged to tenants (what the upstream billed).",
            'c',
        );
        describe(
            "viewgate_credits_saved_total",
            None,
            "Credits the upstream would have charged for pages served from the cache.",
            'c',
        );
        describe(
            "viewgate_price_overruns_total",
            None,
            "Upstream charges above the action's price bound, by action (charged in full and logged).",
            'c',
        );
        describe(
            "viewgate_budget_alerts_total",
            None,
            "Budget alerts fired, by tenant and threshold (percent of the period's budget); each fires once per period across replicas.",
            'c',
        );
        describe(
            "viewgate_credits_remaining",
            None,
            "Credits left in the tenant's current budget period.",
            'g',
        );
        describe(
            "viewgate_credit_budget",
            None,
            "The tenant's budget per period.",
            'g',
        );
        describe(
            "viewgate_rate_limited_total",
            None,
            "Requests refused by the tenant's rate limit.",
            'c',
        );
        describe(
            "viewgate_budget_rejected_total",
            None,
            "Requests refused for insufficient credits.",
            'c',
        );
        describe(
            "viewgate_shadow_blocks_total",
            None,
            "Requests of tenants in shadow mode (enforce: false) that enforcement would have refused, by tenant and kind (rate_limit, budget); they were served.",
            'c',
        );
        describe(
            "viewgate_errors_total",
            None,
            "Error answers by tenant, V2 code and who caused them (client, policy, upstream, internal).",
            'c',
        );
        describe("viewgate_cache_entries", None, "Pages in the cache.", 'g');
        describe(
            "viewgate_cache_bytes",
            Some(Unit::Bytes),
            "Weighted size of the cache.",
            'g',
        );
        describe(
            "viewgate_in_flight_requests",
            None,
            "Tenant requests being answered.",
            'g',
        );
        describe(
            "viewgate_breaker_open",
            None,
            "Open circuit breakers of an upstream key: scope=key is 1 while the whole key fails fast; scope=account counts its accounts whose own breaker is open.",
            'g',
        );
        describe(
            "viewgate_config_reloads_total",
            None,
            "Configuration reloads, by outcome.",
            'c',
        );
        describe(
            "viewgate_ready",
            None,
            "1 when the gateway is ready to serve misses, else 0.",
            'g',
        );
        let in_flight =
            recorder.register_gauge(&Key::from_name("viewgate_in_flight_requests"), &METADATA);
        let request_duration = recorder.register_histogram(
            &Key::from_name("viewgate_request_duration_seconds"),
            &METADATA,
        );
        Self {
            recorder,
            handle,
            in_flight,
            request_duration,
            tenants: RwLock::new(HashMap::default()),
            upstream: RwLock::new(HashMap::default()),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// A request started; the guard ends it.
    pub(crate) fn request_started(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// A tenant's handles, registered on first use and kept: the request
    /// path then touches only atomics, never the registry or an allocation.
    fn tenant(&self, tenant: &str) -> Arc<TenantHandles> {
        if let Some(h) = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
        {
            return Arc::clone(h);
        }
        let label = || vec![Label::new("tenant", tenant.to_string())];
        let handles = Arc::new(TenantHandles {
            name: tenant.into(),
            charged: SaturatingCounter::new(
                self.counter("viewgate_credits_charged_total", label()),
            ),
            saved: SaturatingCounter::new(self.counter("viewgate_credits_saved_total", label())),
            rate_limited: self.counter("viewgate_rate_limited_total", label()),
            budget_rejected: self.counter("viewgate_budget_rejected_total", label()),
            requests: RwLock::new(HashMap::default()),
        });
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(tenants.entry(tenant.into()).or_insert(handles))
    }

    /// Runs `f` on `tenant`'s handles: one map lookup under a shared lock,
    /// no reference count touched (the request path's way in).
    fn with_tenant<R>(&self, tenant: &str, f: impl FnOnce(&TenantHandles) -> R) -> R {
        {
            let tenants = self.tenants.read().unwrap_or_else(|e| e.into_inner());
            if let Some(handles) = tenants.get(tenant) {
                return f(handles);
            }
        }
        f(&self.tenant(tenant))
    }

    /// A request was answered; `error` is its code and who caused it,
    /// `credits` what it was charged and what the cache saved it.
    pub(crate) fn request_done(&self, done: Done<'_>) {
        let tenant = done.tenant.unwrap_or("-");
        self.request_duration.record(done.took.as_secs_f64());
        let error = self.with_tenant(tenant, |handles| {
            handles.count_request(self, done.status, done.cache);
            let (charged, saved) = done.credits;
            if charged > 0 {
                handles.charged.add(charged);
            }
            if saved > 0 {
                handles.saved.add(saved);
            }
            let (code, source) = done.error?;
            // By code and cause, not status: an upstream 429 or the key's pace is
            // not the tenant's rate limit, nor the upstream's 402 its budget.
            match (source, code) {
                ("policy", "RATE_LIMITED") => handles.rate_limited.increment(1),
                ("policy", "INSUFFICIENT_CREDITS") => handles.budget_rejected.increment(1),
                _ => {}
            }
            Some((code, source))
        });
        let Some((code, source)) = error else {
            return;
        };
        self.counter(
            "viewgate_errors_total",
            vec![
                Label::new("tenant", tenant.to_string()),
                Label::new("code", code.to_string()),
                Label::new("source", source),
            ],
        )
        .increment(1);
    }

    /// Credits charged to a tenant (the upstream's own figure: any u64).
    pub(crate) fn charged(&self, tenant: &str, credits: u64) {
        if credits > 0 {
            self.with_tenant(tenant, |handles| handles.charged.add(credits));
        }
    }

    /// The upstream charged more for a call of `action` than its price rule's
    /// bound (the charge itself is recorded in full by the ledger).
    pub(crate) fn price_overrun(&self, action: &str) {
        // Rare, so the registry lookup per call is fine; the label is bounded
        // because only actions with a price rule are ever forwarded.
        self.counter(
            "viewgate_price_overruns_total",
            vec![Label::new("action", action.to_string())],
        )
        .increment(1);
    }

    /// A request of a tenant in shadow mode that `kind` of enforcement
    /// (`rate_limit` or `budget`) would have refused.
    pub(crate) fn shadow_block(&self, tenant: &str, kind: &'static str) {
        // Only tenants that opted into shadow mode get here, so the registry
        // lookup per call costs nothing on the enforced path; both labels are
        // bounded (configured tenants, two kinds).
        self.counter(
            "viewgate_shadow_blocks_total",
            vec![
                Label::new("tenant", tenant.to_string()),
                Label::new("kind", kind),
            ],
        )
        .increment(1);
    }

    /// A budget alert fired for `tenant` at `threshold_pct` % (rare: a few
    /// per tenant and period, so the registry lookup is fine; labels are
    /// bounded by the configured tenants and thresholds).
    pub(crate) fn budget_alert(&self, tenant: &str, threshold_pct: u8) {
        self.counter(
            "viewgate_budget_alerts_total",
            vec![
                Label::new("tenant", tenant.to_string()),
                Label::new("threshold", threshold_pct.to_string()),
            ],
        )
        .increment(1);
    }

    /// One upstream attempt.
    pub(crate) fn upstream(&self, key: &str, outcome: &'static str, took: Duration) {
        self.with_upstream(key, outcome, |counter, duration| {
            counter.increment(1);
            duration.record(took.as_secs_f64());
        });
    }

    /// Runs `f` on `key`'s counter for `outcome` and its duration histogram,
    /// registering them the first time.
    fn with_upstream(
        &self,
        key: &str,
        outcome: &'static str,
        f: impl FnOnce(&Counter, &Histogram),
    ) {
        {
            let handles = self.upstream.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = handles.get(key)
                && let Some(duration) = &h.duration
                && let Some((_, counter)) = h.outcomes.iter().find(|(o, _)| *o == outcome)
            {
                return f(counter, duration);
            }
        }
        let mut handles = self.upstream.write().unwrap_or_else(|e| e.into_inner());
        let h = handles.entry(key.into()).or_default();
        let duration = h.duration.get_or_insert_with(|| {
            self.recorder.register_histogram(
                &Key::from_parts(
                    "viewgate_upstream_duration_seconds",
                    vec![Label::new("key", key.to_string())],
                ),
                &METADATA,
            )
        });
        let counter = match h.outcomes.iter().position(|(o, _)| *o == outcome) {
            Some(i) => &h.outcomes[i].1,
            None => {
                let counter = self.counter(
                    "viewgate_upstream_requests_total",
                    vec![
                        Label::new("key", key.to_string()),
                        Label::new("outcome", outcome),
                    ],
                );
                h.outcomes.push((outcome, counter));
                &h.outcomes[h.outcomes.len() - 1].1
            }
        };
        f(counter, duration);
    }

    /// A call that never left: refused by the key's breaker or pace.
    pub(crate) fn upstream_refused(&self, key: &str, outcome: &'static str) {
        self.counter(
            "viewgate_upstream_requests_total",
            vec![
                Label::new("key", key.to_string()),
                Label::new("outcome", outcome),
            ],
        )
        .increment(1);
    }

    /// A configuration reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.counter(
            "viewgate_config_reloads_total",
            vec![Label::new("outcome", if ok { "ok" } else { "error" })],
        )
        .increment(1);
    }

    /// Sets a tenant's budget gauges (read from the ledger at scrape time).
    pub(crate) fn set_credits(&self, tenant: &str, budget: u64, remaining: u64) {
        let label = || vec![Label::new("tenant", tenant.to_string())];
        self.gauge("viewgate_credit_budget", label())
            .set(budget as f64);
        self.gauge("viewgate_credits_remaining", label())
            .set(remaining as f64);
    }

    /// Sets the cache gauges.
    pub(crate) fn set_cache(&self, entries: u64, bytes: u64) {
        self.gauge("viewgate_cache_entries", vec![])
            .set(entries as f64);
        self.gauge("viewgate_cache_bytes", vec![]).set(bytes as f64);
    }

    /// Sets an upstream key's breaker gauges (read from its breakers at
    /// scrape time). Accounts are counted, never labelled one by one, so
    /// the series stay bounded by the configured keys.
    pub(crate) fn set_breakers(&self, key: &str, key_open: bool, accounts_open: usize) {
        let labels = |scope: &'static str| {
            vec![
                Label::new("key", key.to_string()),
                Label::new("scope", scope),
            ]
        };
        self.gauge("viewgate_breaker_open", labels("key"))
            .set(if key_open { 1.0 } else { 0.0 });
        self.gauge("viewgate_breaker_open", labels("account"))
            .set(accounts_open as f64);
    }

    /// Sets the readiness gauge.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.gauge("viewgate_ready", vec![])
            .set(if ready { 1.0 } else { 0.0 });
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// A counter that stops at `u64::MAX` instead of wrapping.
///
/// The exporter's own counter wraps on `increment`, and its value cannot be
/// read back, so the running total is kept here and published whole.
struct SaturatingCounter {
    total: AtomicU64,
    exposed: Counter,
}

impl SaturatingCounter {
    fn new(exposed: Counter) -> Self {
        Self {
            total: AtomicU64::new(0),
            exposed,
        }
    }

    fn add(&self, n: u64) {
        let before = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(n))
            })
            .unwrap_or_else(|v| v);
        // `absolute` keeps the largest value it is given (the exporter's
        // counters use fetch_max), so two adds published out of order never
        // move the exposed value back.
        self.exposed.absolute(before.saturating_add(n));
    }
}

/// One tenant's counters.
struct TenantHandles {
    name: Box<str>,
    charged: SaturatingCounter,
    saved: SaturatingCounter,
    rate_limited: Counter,
    budget_rejected: Counter,
    /// `viewgate_requests_total` by (status, cache outcome).
    requests: RwLock<HashMap<(u16, Option<CacheStatus>), Counter>>,
}

impl TenantHandles {
    /// Counts one answer in `viewgate_requests_total`, registering the
    /// (status, cache) series on its first use.
    fn count_request(&self, metrics: &Metrics, status: u16, cache: Option<CacheStatus>) {
        if let Some(counter) = self
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(status, cache))
        {
            counter.increment(1);
            return;
        }
        let counter = metrics.counter(
            "viewgate_requests_total",
            vec![
                Label::new("tenant", self.name.to_string()),
                Label::new("status", status.to_string()),
                Label::new("cache", cache.map_or("none", |c| c.as_str())),
            ],
        );
        let mut map = self.requests.write().unwrap_or_else(|e| e.into_inner());
        map.entry((status, cache)).or_insert(counter).increment(1);
    }
}

/// One answered request, as the metrics count it.
pub(crate) struct Done<'a> {
    /// The tenant, when the key was known.
    pub(crate) tenant: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) cache: Option<CacheStatus>,
    /// The error code and who caused it.
    pub(crate) error: Option<(&'a str, &'static str)>,
    pub(crate) took: Duration,
    /// Credits charged, and credits the cache saved.
    pub(crate) credits: (u64, u64),
}

/// Decrements the in-flight gauge when dropped (answered or abandoned).
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answered request that took 100 µs and cost nothing.
    fn done<'a>(
        tenant: Option<&'a str>,
        status: u16,
        cache: Option<CacheStatus>,
        error: Option<(&'a str, &'static str)>,
    ) -> Done<'a> {
        Done {
            tenant,
            status,
            cache,
            error,
            took: Duration::from_micros(100),
            credits: (0, 0),
        }
    }

    #[test]
    fn renders_prometheus_text_with_labels_and_buckets() {
        let m = Metrics::new();
        {
            let _guard = m.request_started();
            m.request_done(Done {
                took: Duration::from_micros(300),
                ..done(Some("crm"), 200, Some(CacheStatus::Hit), None)
            });
        }
        m.request_done(done(None, 403, None, Some(("INVALID_API_KEY", "client"))));
        // An upstream 429 is not the tenant's rate limit.
        m.request_done(done(
            Some("crm"),
            429,
            None,
            Some(("RATE_LIMITED", "upstream")),
        ));
        m.request_done(done(
            Some("crm"),
            429,
            None,
            Some(("RATE_LIMITED", "policy")),
        ));
        m.charged("crm", 3);
        m.upstream("primary", "ok", Duration::from_millis(12));
        m.set_credits("crm", 100, 97);
        m.set_breakers("primary", false, 2);
        let text = m.render();
        for needle in [
            "# TYPE viewgate_requests_total counter",
            r#"viewgate_requests_total{tenant="crm",status="200",cache="hit"} 1"#,
            r#"viewgate_requests_total{tenant="-",status="403",cache="none"} 1"#,
            r#"viewgate_credits_charged_total{tenant="crm"} 3"#,
            r#"viewgate_rate_limited_total{tenant="crm"} 1"#,
            r#"viewgate_errors_total{tenant="crm",code="RATE_LIMITED",source="upstream"} 1"#,
            r#"viewgate_errors_total{tenant="-",code="INVALID_API_KEY",source="client"} 1"#,
            r#"viewgate_upstream_requests_total{key="primary",outcome="ok"} 1"#,
            "# TYPE viewgate_upstream_duration_seconds histogram",
            r#"viewgate_credits_remaining{tenant="crm"} 97"#,
            "viewgate_in_flight_requests 0",
            "# TYPE viewgate_breaker_open gauge",
            r#"viewgate_breaker_open{key="primary",scope="key"} 0"#,
            r#"viewgate_breaker_open{key="primary",scope="account"} 2"#,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn upstream_series_count_each_key_and_outcome_apart() {
        let m = Metrics::new();
        let ms = Duration::from_millis;
        for _ in 0..3 {
            m.upstream("primary", "ok", ms(5));
        }
        m.upstream("primary", "error", ms(7));
        m.upstream("backup", "ok", ms(9));
        m.upstream("primary", "error", ms(7));
        m.upstream_refused("primary", "circuit_open");
        let text = m.render();
        for (series, expected) in [
            (
                r#"viewgate_upstream_requests_total{key="primary",outcome="ok"}"#,
                3.0,
            ),
            (
                r#"viewgate_upstream_requests_total{key="primary",outcome="error"}"#,
                2.0,
            ),
            (
                r#"viewgate_upstream_requests_total{key="backup",outcome="ok"}"#,
                1.0,
            ),
            (
                r#"viewgate_upstream_requests_total{key="primary",outcome="circuit_open"}"#,
                1.0,
            ),
            (
                r#"viewgate_upstream_duration_seconds_count{key="primary"}"#,
                5.0,
            ),
            (
                r#"viewgate_upstream_duration_seconds_count{key="backup"}"#,
                1.0,
            ),
        ] {
            assert_eq!(value(&text, series), expected, "{series}");
        }
        assert!(!text.contains(r#"key="backup",outcome="error""#), "{text}");
    }

    /// The value of the one series `series` (name and labels) in `text`.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn credit_counters_saturate_instead_of_wrapping() {
        let m = Metrics::new();
        let charged = r#"viewgate_credits_charged_total{tenant="crm"}"#;
        let saved = r#"viewgate_credits_saved_total{tenant="crm"}"#;
        m.charged("crm", u64::MAX - 5);
        m.request_done(Done {
            took: Duration::ZERO,
            credits: (0, u64::MAX - 5),
            ..done(Some("crm"), 200, Some(CacheStatus::Hit), None)
        });
        let before = value(&m.render(), charged);
        m.charged("crm", 10);
        m.request_done(Done {
            took: Duration::ZERO,
            credits: (0, 10),
            ..done(Some("crm"), 200, Some(CacheStatus::Hit), None)
        });
        let text = m.render();
        assert!(text.contains(&format!("{charged} {}", u64::MAX)), "{text}");
        assert!(text.contains(&format!("{saved} {}", u64::MAX)), "{text}");
        assert!(value(&text, charged) >= 1.8446744073709552e19);
        assert!(value(&text, charged) >= before, "a counter never goes back");
        m.charged("crm", u64::MAX);
        assert_eq!(value(&m.render(), charged), u64::MAX as f64);
    }

    #[test]
    fn saturating_counters_add_up_across_threads() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.charged("crm", 3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render();
        assert!(
            text.contains(r#"viewgate_credits_charged_total{tenant="crm"} 12000"#),
            "{text}"
        );
    }

    #[test]
    fn price_overruns_are_counted_by_action() {
        let m = Metrics::new();
        m.price_overrun("send");
        m.price_overrun("send");
        m.price_overrun("get_viewers");
        let text = m.render();
        for needle in [
            "# TYPE viewgate_price_overruns_total counter",
            "# HELP viewgate_price_overruns_total Upstream charges above",
            r#"viewgate_price_overruns_total{action="send"} 2"#,
            r#"viewgate_price_overruns_total{action="get_viewers"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
