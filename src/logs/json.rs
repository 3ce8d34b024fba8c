//! JSON lines: the `tracing` layer that writes every event as one line, and the
//! small writer the access log shares with it. A line is built once, in one
//! `String`, with no allocation per field.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::Redactor;
use super::rotate::civil_from_days;
use super::writer::LogWriter;

/// Writes `t` as RFC 3339 UTC with microseconds: `2026-11-27T03:40:12.123456Z`.
pub(crate) fn write_timestamp(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    );
}

/// Appends `s` as the inside of a JSON string.
pub(crate) fn escape_into(s: &str, out: &mut String) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// A JSON object on one line, written field by field.
#[derive(Debug)]
pub(crate) struct JsonLine {
    buf: String,
}

impl JsonLine {
    pub(crate) fn new() -> Self {
        JsonLine::with_capacity(256)
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut buf = String::with_capacity(n);
        buf.push('{');
        JsonLine { buf }
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push('"');
        escape_into(key, &mut self.buf);
        self.buf.push_str("\":");
    }

    pub(crate) fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.buf.push('"');
        escape_into(value, &mut self.buf);
        self.buf.push('"');
    }

    /// A string value written by `f` (escaping is `f`'s job: used for values
    /// known to need none, such as timestamps and hex ids).
    pub(crate) fn raw_field(&mut self, key: &str, f: impl FnOnce(&mut String)) {
        self.key(key);
        self.buf.push('"');
        f(&mut self.buf);
        self.buf.push('"');
    }

    pub(crate) fn u64_field(&mut self, key: &str, v: u64) {
        self.key(key);
        let _ = write!(self.buf, "{v}");
    }

    pub(crate) fn i64_field(&mut self, key: &str, v: i64) {
        self.key(key);
        let _ = write!(self.buf, "{v}");
    }

    pub(crate) fn f64_field(&mut self, key: &str, v: f64) {
        self.key(key);
        if v.is_finite() {
            let _ = write!(self.buf, "{v}");
        } else {
            // JSON has no NaN or infinity.
            let _ = write!(self.buf, "\"{v}\"");
        }
    }

    pub(crate) fn bool_field(&mut self, key: &str, v: bool) {
        self.key(key);
        self.buf.push_str(if v { "true" } else { "false" });
    }

    pub(crate) fn null_field(&mut self, key: &str) {
        self.key(key);
        self.buf.push_str("null");
    }

    /// The finished line, ending in `\n`.
    pub(crate) fn finish(mut self) -> String {
        self.buf.push_str("}\n");
        self.buf
    }
}

/// The trace and span ids of the current OpenTelemetry context: the request's
/// server span, or the `tracing` span inside it (`tracing-opentelemetry`
/// makes an entered span's context current).
pub(crate) fn write_trace_ids(line: &mut JsonLine) {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            line.raw_field("trace_id", |s| {
                let _ = write!(s, "{}", sc.trace_id());
            });
            line.raw_field("span_id", |s| {
                let _ = write!(s, "{}", sc.span_id());
            });
        }
    });
}

/// The `tracing` layer that writes each event as a JSON line. Made by
/// [`Apm::logging_layer`](crate::Apm::logging_layer).
#[derive(Debug, Clone)]
pub struct JsonLayer {
    pub(crate) writer: Arc<LogWriter>,
    pub(crate) service: Arc<str>,
    pub(crate) redactor: Arc<Redactor>,
}

struct Fields<'a> {
    line: &'a mut JsonLine,
    redactor: &'a Redactor,
}

impl Fields<'_> {
    fn redacted(&mut self, field: &Field) -> bool {
        if self.redactor.is_sensitive_field(field.name()) {
            self.line.str_field(field.name(), super::REDACTED);
            true
        } else {
            false
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.redacted(field) {
            self.line.str_field(field.name(), value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.redacted(field) {
            self.line.i64_field(field.name(), value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.redacted(field) {
            self.line.u64_field(field.name(), value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.redacted(field) {
            self.line.f64_field(field.name(), value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.redacted(field) {
            self.line.bool_field(field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.redacted(field) {
            return;
        }
        self.line.key(field.name());
        self.line.buf.push('"');
        // Formatted straight into the line, escaped on the way.
        let start = self.line.buf.len();
        let _ = write!(self.line.buf, "{value:?}");
        if self.line.buf[start..]
            .bytes()
            .any(|b| b == b'"' || b == b'\\' || b < 0x20)
        {
            let raw = self.line.buf.split_off(start);
            escape_into(&raw, &mut self.line.buf);
        }
        self.line.buf.push('"');
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = JsonLine::new();
        line.raw_field("timestamp", |s| write_timestamp(SystemTime::now(), s));
        line.raw_field("level", |s| s.push_str(meta.level().as_str()));
        line.str_field("target", meta.target());
        event.record(&mut Fields {
            line: &mut line,
            redactor: &self.redactor,
        });
        write_trace_ids(&mut line);
        line.str_field("service", &self.service);
        self.writer.write(line.finish());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_795_750_812_123_456);
        let mut s = String::new();
        write_timestamp(t, &mut s);
        assert_eq!(s, "2026-11-27T03:40:12.123456Z");
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut s = String::new();
        escape_into("a\"b\\c\nd\u{1}é", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd\\u0001é");
    }
}
