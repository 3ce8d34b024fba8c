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
/// Digit by digit: `format!` costs several times more, once per log line.
pub(crate) fn write_timestamp(t: SystemTime, out: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    fn put(b: &mut [u8], mut v: u64) {
        for slot in b.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    put(&mut b[0..4], y.clamp(0, 9999) as u64);
    put(&mut b[5..7], u64::from(m));
    put(&mut b[8..10], u64::from(day));
    put(&mut b[11..13], s / 3600);
    put(&mut b[14..16], s / 60 % 60);
    put(&mut b[17..19], s % 60);
    put(&mut b[20..26], u64::from(d.subsec_micros()));
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Appends `v` in decimal.
pub(crate) fn push_u64(out: &mut String, mut v: u64) {
    let mut b = [0u8; 20];
    let mut i = b.len();
    loop {
        i -= 1;
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&b[i..]).unwrap_or_default());
}

/// Appends `bytes` as lowercase hex (trace and span ids).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 32];
    for (i, byte) in bytes.iter().take(16).enumerate() {
        b[2 * i] = HEX[usize::from(byte >> 4)];
        b[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    out.push_str(std::str::from_utf8(&b[..2 * bytes.len().min(16)]).unwrap_or_default());
}

/// Whether a byte must be escaped inside a JSON string.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends `s` as the inside of a JSON string.
pub(crate) fn escape_into(s: &str, out: &mut String) {
    // Most values need no escaping: one scan, one copy.
    if !s.bytes().any(needs_escape) {
        out.push_str(s);
        return;
    }
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
        JsonLine::in_buffer(String::with_capacity(n))
    }

    /// A line built in `buf` (emptied first): a buffer reused from the writer.
    pub(crate) fn in_buffer(mut buf: String) -> Self {
        buf.clear();
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
        push_u64(&mut self.buf, v);
    }

    pub(crate) fn i64_field(&mut self, key: &str, v: i64) {
        self.key(key);
        if v < 0 {
            self.buf.push('-');
        }
        push_u64(&mut self.buf, v.unsigned_abs());
    }

    /// A number with three decimals given in thousandths (`1234` is `1.234`).
    pub(crate) fn milli_field(&mut self, key: &str, thousandths: u64) {
        self.key(key);
        push_u64(&mut self.buf, thousandths / 1000);
        self.buf.push('.');
        let frac = thousandths % 1000;
        if frac < 100 {
            self.buf.push('0');
        }
        if frac < 10 {
            self.buf.push('0');
        }
        push_u64(&mut self.buf, frac);
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
            line.raw_field("trace_id", |s| push_hex(s, &sc.trace_id().to_bytes()));
            line.raw_field("span_id", |s| push_hex(s, &sc.span_id().to_bytes()));
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
        let mut line = JsonLine::in_buffer(self.writer.buffer());
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
    fn numbers_and_ids_are_written_as_format_would() {
        let mut s = String::new();
        push_u64(&mut s, 0);
        s.push(' ');
        push_u64(&mut s, u64::MAX);
        s.push(' ');
        push_hex(&mut s, &[0x4b, 0xf9, 0x00, 0x0a]);
        assert_eq!(s, format!("0 {} 4bf9000a", u64::MAX));
        let mut line = JsonLine::new();
        line.milli_field("a", 1234);
        line.milli_field("b", 5);
        line.i64_field("c", -42);
        assert_eq!(line.finish(), "{\"a\":1.234,\"b\":0.005,\"c\":-42}\n");
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut s = String::new();
        escape_into("a\"b\\c\nd\u{1}é", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd\\u0001é");
    }
}
