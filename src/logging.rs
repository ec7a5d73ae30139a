//! Logs: one JSON object per line on stdout, flat, with `ts` and `level` first.
//!
//! Access lines (target `viewgate::access`) always carry every field of
//! design.md, `null` where a stage never ran. Level comes from `RUST_LOG`
//! (default `info`).

use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::clock::rfc3339;

/// Target of the per-request access log line.
pub const ACCESS_TARGET: &str = "viewgate::access";

/// Fields every access line carries.
pub const ACCESS_FIELDS: &[&str] = &[
    "request_id",
    "tenant",
    "action",
    "account_id",
    "offset",
    "count",
    "status",
    "cache",
    "credits_charged",
    "upstream_ms",
    "total_ms",
    "error_code",
];

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the JSON logger on stdout at `RUST_LOG`'s level, else `info`.
/// Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(std::io::stdout),
        )
        .try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies the configuration's `log.level` (at start-up and on reload),
/// unless `RUST_LOG` is set: the environment wins.
pub fn set_level(level: Option<&str>) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    let Some(handle) = FILTER.get() else { return };
    let filter =
        EnvFilter::try_new(level.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = handle.modify(|current| *current = filter);
}

/// The formatter.
#[derive(Debug, Default)]
pub struct JsonLines;

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(key(field), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(key(field), Value::from(format!("{value:?}")));
    }
}

fn key(field: &Field) -> String {
    match field.name() {
        "message" => "msg".to_string(),
        name => name.to_string(),
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        fields
            .0
            .insert("ts".into(), Value::from(rfc3339(jiff::Timestamp::now())));
        fields.0.insert(
            "level".into(),
            Value::from(meta.level().as_str().to_ascii_lowercase()),
        );
        fields.0.insert("target".into(), Value::from(meta.target()));
        event.record(&mut fields);
        if meta.target() == ACCESS_TARGET {
            for name in ACCESS_FIELDS {
                fields.0.entry(*name).or_insert(Value::Null);
            }
        }
        let line = serde_json::to_string(&fields.0).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
