//! Logs: one JSON object per line on stdout, flat, with `ts` and `level` first.
//!
//! Access lines (target `viewgate::access`) always carry every field of
//! design.md, `null` where a stage never ran. Level comes from `log.level`
//! or `RUST_LOG` (which wins); default `info`.
//!
//! The access line is written on every request, so it is cheap: fields are
//! streamed straight into the line (no intermediate map), the timestamp is
//! formatted once per second, and lines go to an in-memory buffer that a
//! background thread writes to stdout in batches, so no request waits on a
//! `write` system call or on a slow reader of stdout. If the reader stalls
//! long enough to fill the buffer (16 MiB), further lines are dropped and
//! counted rather than blocking requests. [`flush`] writes what is pending.

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Target of the per-request access log line.
pub const ACCESS_TARGET: &str = "viewgate::access";

/// Declares the access line from one list of `name: type`, in design.md's
/// order: [`ACCESS_FIELDS`] (which the formatter writes as `null` when a
/// value is missing), the [`AccessLine`] the request-id stage fills in, and
/// the event that writes it all come from this list, so a field cannot be
/// added to one and forgotten in another.
macro_rules! access_line {
    (
        $($(#[$doc:meta])* $name:ident: $ty:ty,)*
        ;
        $($(#[$xdoc:meta])* $extra:ident: $xty:ty,)*
    ) => {
        /// Fields every access line carries, in order (besides `ts`, `level`
        /// and `target`, which every line has).
        pub const ACCESS_FIELDS: &[&str] = &[$(stringify!($name)),*];

        /// Fields a line carries only when they have a value (after the others).
        pub const ACCESS_EXTRAS: &[&str] = &[$(stringify!($extra)),*];

        /// One access line's values.
        #[derive(Debug, Clone)]
        pub(crate) struct AccessLine<'a> {
            $($(#[$doc])* pub(crate) $name: $ty,)*
            $($(#[$xdoc])* pub(crate) $extra: $xty,)*
        }

        impl AccessLine<'_> {
            /// What the formatter writes for the event of [`Self::write`],
            /// byte for byte: `,"name":value` for each field with a value, in
            /// order; returns which of [`ACCESS_FIELDS`] had none.
            fn fields(&self, line: &mut String) -> u32 {
                let mut missing = 0u32;
                let mut i = 0;
                $(
                    if !JsonValue::field(&self.$name, stringify!($name), line) {
                        missing |= 1 << i;
                    }
                    i += 1;
                )*
                $( JsonValue::field(&self.$extra, stringify!($extra), line); )*
                let _ = i;
                missing
            }

            /// Writes the line (target [`ACCESS_TARGET`]): `warn` for a 5xx,
            /// `info` otherwise, timed at `at` (when the request was answered).
            pub(crate) fn write(&self, at: std::time::Instant) {
                if direct() {
                    let warn = self.status >= 500;
                    let enabled = if warn {
                        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::WARN)
                    } else {
                        tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
                    };
                    if enabled {
                        write_direct(warn, at, |line| self.fields(line));
                    }
                    return;
                }
                if self.status >= 500 {
                    tracing::event!(target: ACCESS_TARGET, tracing::Level::WARN, $($name = self.$name,)* $($extra = self.$extra,)*);
                } else {
                    tracing::event!(target: ACCESS_TARGET, tracing::Level::INFO, $($name = self.$name,)* $($extra = self.$extra,)*);
                }
            }
        }
    };
}

access_line! {
    /// The request id (the client's when valid, else generated).
    request_id: &'a str,
    /// The tenant, once authenticated.
    tenant: Option<&'a str>,
    /// The action, once parsed.
    action: Option<&'a str>,
    /// The account, once parsed.
    account_id: Option<&'a str>,
    /// The page offset (get_viewers).
    offset: Option<u32>,
    /// The page size (get_viewers).
    count: Option<u32>,
    /// The answer's status.
    status: u16,
    /// How the cache answered.
    cache: Option<&'static str>,
    /// Credits charged to the tenant before the answer.
    credits_charged: u64,
    /// Time spent on the upstream, when it was called.
    upstream_ms: Option<u64>,
    /// Time from arrival to answer, in milliseconds (microsecond precision).
    total_ms: f64,
    /// The error code, when the answer is an error.
    error_code: Option<&'a str>,
    ;
    /// Why a stale page answered instead of a refusal (`budget`).
    degraded: Option<&'static str>,
    /// `true` when the request was a quote.
    quote: Option<bool>,
}

// Which fields a line wrote is a bit set in a u32.
const _: () = assert!(ACCESS_FIELDS.len() <= 32);

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Set once [`init`] installed the JSON logger: access lines are then
/// formatted straight into the buffered output (see [`write_direct`]).
static DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn direct() -> bool {
    DIRECT.load(Ordering::Relaxed)
}

/// Writes one access line without a tracing event: the same bytes the
/// formatter writes for the event (a unit test compares them), without the
/// event's dispatch and per-field visitor calls (a third of the line's
/// cost). Only when viewgate's own logger is installed, so a subscriber
/// installed by someone else (tests) still sees every line as an event.
/// `fields` writes `,"name":value` for each field with a value and returns
/// the bit set of [`ACCESS_FIELDS`] it had none for.
fn write_direct(warn: bool, at: std::time::Instant, fields: impl FnOnce(&mut String) -> u32) {
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with_borrow_mut(|line| {
        render_direct(warn, at, fields, line);
        Out::get().push(line.as_bytes());
    });
}

/// The line [`write_direct`] writes, in `line` (emptied first), timed at `at`.
fn render_direct(
    warn: bool,
    at: std::time::Instant,
    fields: impl FnOnce(&mut String) -> u32,
    line: &mut String,
) {
    line.clear();
    line.push_str("{\"ts\":\"");
    let _ = rfc3339_cached(line, crate::clock::real_wall_at(at));
    line.push_str(if warn {
        "\",\"level\":\"warn\",\"target\":"
    } else {
        "\",\"level\":\"info\",\"target\":"
    });
    let _ = write_json_str(line, ACCESS_TARGET);
    let missing = fields(line);
    write_nulls(line, missing);
    line.push_str("}\n");
}

/// `,"name":null` for each of [`ACCESS_FIELDS`] in `missing`.
fn write_nulls(out: &mut impl fmt::Write, missing: u32) {
    for (i, name) in ACCESS_FIELDS.iter().enumerate() {
        if missing & (1 << i) != 0 {
            let _ = out.write_str(",\"");
            let _ = out.write_str(name);
            let _ = out.write_str("\":null");
        }
    }
}

/// A field value of the access line, written as the formatter writes it.
trait JsonValue {
    /// Writes `,"name":value` and returns true, or nothing and false when
    /// there is no value (`None`).
    fn field(&self, name: &str, out: &mut String) -> bool;
}

fn key(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

impl JsonValue for &str {
    fn field(&self, name: &str, out: &mut String) -> bool {
        key(out, name);
        let _ = write_json_str(out, self);
        true
    }
}

impl JsonValue for u64 {
    fn field(&self, name: &str, out: &mut String) -> bool {
        key(out, name);
        out.push_str(itoa(*self, &mut [0u8; 20]));
        true
    }
}

impl JsonValue for u32 {
    fn field(&self, name: &str, out: &mut String) -> bool {
        u64::from(*self).field(name, out)
    }
}

impl JsonValue for u16 {
    fn field(&self, name: &str, out: &mut String) -> bool {
        u64::from(*self).field(name, out)
    }
}

impl JsonValue for f64 {
    fn field(&self, name: &str, out: &mut String) -> bool {
        key(out, name);
        let _ = write_f64(out, *self);
        true
    }
}

impl JsonValue for bool {
    fn field(&self, name: &str, out: &mut String) -> bool {
        key(out, name);
        out.push_str(if *self { "true" } else { "false" });
        true
    }
}

impl<T: JsonValue> JsonValue for Option<T> {
    fn field(&self, name: &str, out: &mut String) -> bool {
        self.as_ref().is_some_and(|v| v.field(name, out))
    }
}

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
                .with_writer(BufferedStdout),
        )
        .try_init();
    if installed.is_ok() {
        let _ = FILTER.set(handle);
        DIRECT.store(true, Ordering::Relaxed);
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

/// Writes every pending log line to stdout and returns when done.
pub fn flush() {
    if let Some(out) = OUT.get() {
        out.flush();
    }
}

/// The formatter.
#[derive(Debug, Default)]
pub struct JsonLines;

/// Streams one event's fields into the line as `,"name":value`.
struct Fields<'w, 'a> {
    out: &'w mut Writer<'a>,
    /// Which of [`ACCESS_FIELDS`] were written (bit i = field i).
    seen: u32,
    access: bool,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) {
        let name = match field.name() {
            "message" => "msg",
            name => name,
        };
        if self.access
            && let Some(i) = access_index(name)
        {
            self.seen |= 1 << i;
        }
        let _ = self.out.write_str(",\"");
        let _ = self.out.write_str(name);
        let _ = self.out.write_str("\":");
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        let _ = write_json_str(self.out, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = self.out.write_str(itoa(value, &mut [0u8; 20]));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        let _ = write_f64(self.out, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = self.out.write_str(if value { "true" } else { "false" });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let _ = write_json_str(self.out, &format!("{value:?}"));
    }
}

/// A float as the access line writes it: milliseconds with microsecond
/// precision, without float formatting (`null` when not finite).
fn write_f64(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    if !value.is_finite() {
        out.write_str("null")
    } else if (0.0..1e12).contains(&value) {
        let micros = (value * 1000.0).round() as u64;
        let mut buf = [0u8; 20];
        out.write_str(itoa(micros / 1000, &mut buf))?;
        let frac = micros % 1000;
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        out.write_str(std::str::from_utf8(&digits).unwrap_or(""))
    } else {
        write!(out, "{value}")
    }
}

/// The position of an access-line field in [`ACCESS_FIELDS`].
fn access_index(name: &str) -> Option<usize> {
    ACCESS_FIELDS.iter().position(|field| *field == name)
}

/// Decimal digits of `value`, written at the end of `buf`.
pub(crate) fn itoa(mut value: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Writes `s` as a JSON string (quotes, escapes of `"`, `\` and control characters).
pub fn write_json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let needs_escape = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
    if !s.bytes().any(needs_escape) {
        out.write_str(s)?;
    } else {
        for c in s.chars() {
            match c {
                '"' => out.write_str("\\\"")?,
                '\\' => out.write_str("\\\\")?,
                '\n' => out.write_str("\\n")?,
                '\r' => out.write_str("\\r")?,
                '\t' => out.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
                c => out.write_char(c)?,
            }
        }
    }
    out.write_char('"')
}

/// RFC 3339 for now: a log line's time is when it was written, whatever
/// clock the request path runs on.
fn now_rfc3339(out: &mut impl fmt::Write) -> fmt::Result {
    #[allow(clippy::disallowed_methods)]
    rfc3339_cached(out, jiff::Timestamp::now())
}

/// RFC 3339 for `now` ([`crate::clock::rfc3339_bytes`] keeps each thread's
/// last seconds formatted).
fn rfc3339_cached(out: &mut impl fmt::Write, now: jiff::Timestamp) -> fmt::Result {
    let text = crate::clock::rfc3339_bytes(now);
    out.write_str(std::str::from_utf8(&text).unwrap_or("1970-01-01T00:00:00Z"))
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
        writer.write_str("{\"ts\":\"")?;
        now_rfc3339(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(match *meta.level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        })?;
        writer.write_str("\",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        let access = meta.target() == ACCESS_TARGET;
        let mut fields = Fields {
            out: &mut writer,
            seen: 0,
            access,
        };
        event.record(&mut fields);
        let seen = fields.seen;
        if access {
            let every = (1u32 << ACCESS_FIELDS.len()) - 1;
            write_nulls(&mut writer, !seen & every);
        }
        writer.write_str("}\n")
    }
}

/// Lines waiting for the writer thread, at most this many bytes.
const MAX_PENDING: usize = 16 * 1024 * 1024;

struct Out {
    pending: Mutex<Vec<u8>>,
    /// The last written batch, emptied, to become the next `pending`: its
    /// capacity is kept, so lines are appended without reallocating (and
    /// copying) the buffer under the lock.
    spare: Mutex<Vec<u8>>,
    /// The writer thread waits here between batches: on its own lock, so
    /// that its waking never holds up a line being added to `pending`.
    wake_lock: Mutex<()>,
    wake: Condvar,
    /// Set by the first line that fills a batch early (or ends the writer's
    /// idle sleep); the writer clears it when it takes the batch. One
    /// wake-up per batch, not one per line added while the writer is on its
    /// way.
    woken: AtomicBool,
    /// The writer found nothing to write for a whole tick and sleeps until
    /// a line comes: an idle server does not wake every 10 ms. Said before
    /// the writer's last look at `pending`, so a line added after that look
    /// sees it and wakes the writer.
    idle: AtomicBool,
    dropped: AtomicU64,
    /// Serialises writers of stdout (the background thread and `flush`).
    stdout: Mutex<()>,
    /// Where batches go: stdout, or memory in tests.
    #[cfg(test)]
    sink: Option<Mutex<Vec<u8>>>,
    /// Times the writer thread woke, for tests.
    #[cfg(test)]
    wakes: AtomicU64,
}

static OUT: OnceLock<&'static Out> = OnceLock::new();

impl Out {
    fn get() -> &'static Out {
        OUT.get_or_init(|| {
            let out: &'static Out = Box::leak(Box::new(Out::new()));
            let spawned = std::thread::Builder::new()
                .name("viewgate-log".into())
                .spawn(move || out.run());
            if spawned.is_err() {
                // No thread: lines are still written by flush() calls.
                eprintln!("viewgate: cannot start the log writer thread");
            }
            out
        })
    }

    fn new() -> Out {
        Out {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            spare: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            woken: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            stdout: Mutex::new(()),
            #[cfg(test)]
            sink: None,
            #[cfg(test)]
            wakes: AtomicU64::new(0),
        }
    }

    fn push(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() + line.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.extend_from_slice(line);
        let full = pending.len() >= 64 * 1024;
        drop(pending);
        let wake = full || self.idle.load(Ordering::SeqCst);
        if wake && !self.woken.swap(true, Ordering::AcqRel) {
            // Under the writer's lock: it cannot be between its check of
            // `woken` and its wait, so the wake-up is not lost.
            let _waiting = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<u8> {
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *pending, spare)
    }

    /// Keeps a written batch's buffer for reuse (a burst's huge one is dropped).
    fn recycle(&self, mut batch: Vec<u8>) {
        if batch.capacity() > 4 * 1024 * 1024 {
            batch = Vec::with_capacity(64 * 1024);
        }
        batch.clear();
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = batch;
    }

    fn write(&self, batch: &[u8]) {
        #[cfg(test)]
        if let Some(sink) = &self.sink {
            sink.lock().unwrap().extend_from_slice(batch);
            return;
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(batch);
        if dropped > 0 {
            let _ = writeln!(
                stdout,
                "{{\"level\":\"warn\",\"target\":\"viewgate::log\",\"msg\":\"log lines dropped: stdout too slow\",\"dropped\":{dropped}}}"
            );
        }
        let _ = stdout.flush();
    }

    fn run(&self) {
        loop {
            {
                let waiting = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
                // Batches every 10 ms, or sooner when 64 KiB are waiting;
                // when idle, at the next line.
                if !self.woken.load(Ordering::Acquire) {
                    if self.idle.load(Ordering::SeqCst) {
                        drop(self.wake.wait(waiting));
                    } else {
                        let _ = self.wake.wait_timeout(waiting, Duration::from_millis(10));
                    }
                }
            }
            #[cfg(test)]
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.woken.store(false, Ordering::Release);
            if self.flush() {
                self.idle.store(false, Ordering::SeqCst);
            } else if !self.idle.load(Ordering::SeqCst) {
                // A quiet tick: say so, then look once more. A line added
                // after this look sees `idle` (the `pending` lock orders the
                // two) and wakes the writer.
                self.idle.store(true, Ordering::SeqCst);
                if self.flush() {
                    self.idle.store(false, Ordering::SeqCst);
                }
            }
        }
    }

    /// Writes what is pending; whether there was anything.
    fn flush(&self) -> bool {
        let _order = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        let batch = self.take();
        let wrote = !batch.is_empty();
        if wrote {
            self.write(&batch);
        }
        self.recycle(batch);
        wrote
    }
}

/// A `MakeWriter` for the buffered stdout.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedStdout;

/// One event's writer (the fmt layer writes each formatted line at once).
pub struct BufferedLine;

impl std::io::Write for BufferedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Out::get().push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedLine;
    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `done` (up to 10 s) and says whether it came true.
    fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..10_000 {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done()
    }

    /// Regression: the writer woke every 10 ms even with nothing to write.
    /// Now a quiet tick puts it to sleep until the next line, which is
    /// written at once.
    #[test]
    fn an_idle_log_writer_sleeps_until_the_next_line() {
        let out: &'static Out = Box::leak(Box::new(Out {
            sink: Some(Mutex::default()),
            ..Out::new()
        }));
        std::thread::spawn(move || out.run());
        let sink = || out.sink.as_ref().unwrap().lock().unwrap().clone();
        out.push(b"one\n");
        assert!(eventually(|| sink() == b"one\n"));
        assert!(eventually(|| out.idle.load(Ordering::SeqCst)));
        let wakes = out.wakes.load(Ordering::Relaxed);
        // Five of the old ticks. A slow machine can only wake it less.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            out.wakes.load(Ordering::Relaxed),
            wakes,
            "an idle writer woke"
        );
        out.push(b"two\n");
        assert!(eventually(|| sink() == b"one\ntwo\n"));
    }

    #[test]
    fn access_field_positions_match_the_list() {
        for (i, name) in ACCESS_FIELDS.iter().enumerate() {
            assert_eq!(access_index(name), Some(i));
        }
        assert_eq!(access_index("msg"), None);
        assert_eq!(itoa(0, &mut [0; 20]), "0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), "18446744073709551615");
    }

    /// A writer the formatter's lines land in, for one test.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the formatter writes for `line`'s event.
    fn by_event(line: &AccessLine<'_>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            line.write(crate::clock::Clock::real().now())
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    /// `line` as the JSON object the formatter writes for it.
    fn written(line: &AccessLine<'_>) -> serde_json::Map<String, serde_json::Value> {
        let text = by_event(line);
        assert_eq!(text.lines().count(), 1, "{text}");
        match serde_json::from_str(&text).unwrap() {
            serde_json::Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    fn names(fields: &serde_json::Map<String, serde_json::Value>) -> Vec<&str> {
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// That these are design.md's fields, no more, no fewer, is checked on
    /// a real request's line in tests/errors.rs; here, that the formatter
    /// writes every one of them, `null` where a stage never ran.
    #[test]
    fn an_access_line_has_every_listed_field() {
        let mut expected: Vec<&str> = ["ts", "level", "target"]
            .iter()
            .chain(ACCESS_FIELDS)
            .copied()
            .collect();
        expected.sort_unstable();
        let full = AccessLine {
            request_id: "r-1",
            tenant: Some("crm"),
            action: Some("get_viewers"),
            account_id: Some("acc-1"),
            offset: Some(20),
            count: Some(10),
            status: 200,
            cache: Some("miss"),
            credits_charged: 1,
            upstream_ms: Some(12),
            total_ms: 13.25,
            error_code: None,
            degraded: None,
            quote: None,
        };
        // The extras appear only with a value, after the others.
        let marked = written(&AccessLine {
            degraded: Some("budget"),
            quote: Some(true),
            ..full.clone()
        });
        assert_eq!(marked["degraded"], "budget");
        assert_eq!(marked["quote"], true);
        assert_eq!(marked.len(), written(&full).len() + ACCESS_EXTRAS.len());
        let mut line = written(&full);
        assert_eq!(names(&line), expected, "{line:?}");
        assert_eq!(line["ts"].as_str().map(str::len), Some(20), "{line:?}");
        line.remove("ts");
        let expected_line = serde_json::json!({
            "level": "info",
            "target": ACCESS_TARGET,
            "request_id": "r-1",
            "tenant": "crm",
            "action": "get_viewers",
            "account_id": "acc-1",
            "offset": 20,
            "count": 10,
            "status": 200,
            "cache": "miss",
            "credits_charged": 1,
            "upstream_ms": 12,
            "total_ms": 13.25,
            "error_code": null,
        });
        assert_eq!(serde_json::Value::Object(line), expected_line);

        // A request refused before any stage learnt anything: the same
        // fields, `null` where nothing is known, and `warn` for a 5xx.
        let bare = AccessLine {
            request_id: "r-2",
            tenant: None,
            action: None,
            account_id: None,
            offset: None,
            count: None,
            status: 503,
            cache: None,
            credits_charged: 0,
            upstream_ms: None,
            total_ms: 0.5,
            error_code: Some("SERVICE_UNAVAILABLE"),
            degraded: None,
            quote: None,
        };
        let line = written(&bare);
        assert_eq!(names(&line), expected, "{line:?}");
        assert_eq!(line["level"], "warn");
        for absent in [
            "tenant",
            "action",
            "account_id",
            "offset",
            "count",
            "cache",
            "upstream_ms",
        ] {
            assert_eq!(line[absent], serde_json::Value::Null, "{absent}");
        }
        assert_eq!(line["error_code"], "SERVICE_UNAVAILABLE");
    }

    /// The line written without an event is the formatter's, byte for byte
    /// (but for the second the timestamp may have moved on).
    #[test]
    fn direct_lines_are_the_formatters_lines() {
        let base = AccessLine {
            request_id: "r-1",
            tenant: Some("crm \"quoted\" \\ \u{1}"),
            action: Some("get_viewers"),
            account_id: Some("acc-1"),
            offset: Some(0),
            count: Some(u32::MAX),
            status: 200,
            cache: Some("hit"),
            credits_charged: u64::MAX,
            upstream_ms: None,
            total_ms: 0.0004,
            error_code: None,
            degraded: None,
            quote: None,
        };
        let lines = [
            base.clone(),
            AccessLine {
                status: 503,
                tenant: None,
                total_ms: 2e13,
                error_code: Some("SERVICE_UNAVAILABLE"),
                ..base.clone()
            },
            AccessLine {
                degraded: Some("budget"),
                quote: Some(true),
                offset: None,
                total_ms: f64::NAN,
                ..base.clone()
            },
        ];
        for line in &lines {
            let by_event = by_event(line);
            let mut direct = String::new();
            render_direct(
                line.status >= 500,
                crate::clock::Clock::real().now(),
                |out| line.fields(out),
                &mut direct,
            );
            // From the level on (the timestamp is 20 characters either way).
            let after_ts = |s: &str| s.split_once("\",\"level\"").unwrap().1.to_string();
            assert_eq!(after_ts(&direct), after_ts(&by_event));
            assert_eq!(direct.len(), by_event.len());
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        write_json_str(&mut s, "plain").unwrap();
        write_json_str(&mut s, "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(s, r#""plain""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s[7..]).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
