//! Logs: one JSON object per line on stdout, flat, with `ts` and `level` first.
//!
//! Access lines (target `viewgate::access`) always carry every field of
//! design.md, `null` where a stage never ran. Level comes from `RUST_LOG`
//! (default `info`).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

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

/// Installs the JSON logger on stdout. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(JsonLines)
        .with_writer(std::io::stdout)
        .try_init();
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
