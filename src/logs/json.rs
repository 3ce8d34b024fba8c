//! JSON lines: the `tracing` layer that writes every event as one line, and the
//! small writer the access log shares with it. A line is built once, as bytes in
//! one reused buffer: no allocation per field, no `format!`, no UTF-8
//! re-validation (the pieces are `&str` already, or ASCII written here).

use std::io::Write as _;
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
pub(crate) fn write_timestamp(t: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        /// The date and time of day of the last second formatted on this thread:
        /// lines within one second only format their microseconds.
        static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    fn put(b: &mut [u8], mut v: u64) {
        for slot in b.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut day_time) = LAST_SECOND.get();
    if cached != secs {
        let (y, m, day) = civil_from_days((secs / 86_400) as i64);
        let s = secs % 86_400;
        day_time = *b"0000-00-00T00:00:00";
        put(&mut day_time[0..4], y.clamp(0, 9999) as u64);
        put(&mut day_time[5..7], u64::from(m));
        put(&mut day_time[8..10], u64::from(day));
        put(&mut day_time[11..13], s / 3600);
        put(&mut day_time[14..16], s / 60 % 60);
        put(&mut day_time[17..19], s % 60);
        LAST_SECOND.set((secs, day_time));
    }
    let mut frac = *b".000000Z";
    put(&mut frac[1..7], u64::from(d.subsec_micros()));
    out.extend_from_slice(&day_time);
    out.extend_from_slice(&frac);
}

/// Appends `v` in decimal, two digits at a time.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut b = [0u8; 20];
    let mut i = b.len();
    while v >= 100 {
        let pair = usize::try_from(v % 100).unwrap_or(0) * 2;
        v /= 100;
        i -= 2;
        b[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if v >= 10 {
        let pair = usize::try_from(v).unwrap_or(0) * 2;
        i -= 2;
        b[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        b[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&b[i..]);
}

/// Appends an IP address as `Display` writes it; IPv4 (nearly every client)
/// without the formatting machinery, which costs ten times as much.
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u64(out, u64::from(a));
            out.push(b'.');
            push_u64(out, u64::from(b));
            out.push(b'.');
            push_u64(out, u64::from(c));
            out.push(b'.');
            push_u64(out, u64::from(d));
        }
        std::net::IpAddr::V6(v6) => {
            let _ = std::io::Write::write_fmt(out, format_args!("{v6}"));
        }
    }
}

/// Appends `bytes` as lowercase hex (trace and span ids).
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0xf)]);
    }
}

/// Whether a byte must be escaped inside a JSON string.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `s` must be escaped, eight bytes at a time (the
/// "has a byte less than n / equal to c" word tricks; exact for the whole word).
fn any_needs_escape(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        let control = x.wrapping_sub(LO * 0x20) & !x & HI;
        let q = x ^ (LO * u64::from(b'"'));
        let quote = q.wrapping_sub(LO) & !q & HI;
        let b = x ^ (LO * u64::from(b'\\'));
        let backslash = b.wrapping_sub(LO) & !b & HI;
        if control | quote | backslash != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|b| needs_escape(*b))
}

/// Appends `s` as the inside of a JSON string. Bytes of multi-byte UTF-8
/// sequences are all >= 0x80 and pass through unchanged.
pub(crate) fn escape_into(s: &[u8], out: &mut Vec<u8>) {
    if !any_needs_escape(s) {
        out.extend_from_slice(s);
        return;
    }
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Appends `s` as a JSON string, quotes included.
pub(crate) fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_into(s.as_bytes(), out);
    out.push(b'"');
}

/// Appends `t` as an RFC 3339 JSON string.
pub(crate) fn push_time(out: &mut Vec<u8>, t: SystemTime) {
    out.push(b'"');
    write_timestamp(t, out);
    out.push(b'"');
}

/// Appends `{"k":"v",...}`.
pub(crate) fn push_object(out: &mut Vec<u8>, kv: &[(String, String)]) {
    out.push(b'{');
    for (i, (k, v)) in kv.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_string(out, k);
        out.push(b':');
        push_string(out, v);
    }
    out.push(b'}');
}

/// A JSON object on one line, written field by field.
#[derive(Debug)]
pub(crate) struct JsonLine {
    buf: Vec<u8>,
}

impl JsonLine {
    pub(crate) fn new() -> Self {
        JsonLine::in_buffer(Vec::with_capacity(256))
    }

    /// A line built in `buf` (emptied first): a buffer reused from the writer.
    pub(crate) fn in_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.push(b'{');
        JsonLine { buf }
    }

    /// A key known to need no escaping (this crate's own keys).
    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A key from outside (an event's field name), escaped when needed.
    fn user_key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        self.buf.push(b'"');
        escape_into(key.as_bytes(), &mut self.buf);
        self.buf.extend_from_slice(b"\":");
    }

    /// Appends constant bytes as they are (keys with their quotes and separators).
    pub(crate) fn piece(&mut self, bytes: &'static [u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer, to write a value into directly.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// A JSON string value, escaped when needed.
    pub(crate) fn str_value(&mut self, value: &str) {
        self.buf.push(b'"');
        escape_into(value.as_bytes(), &mut self.buf);
        self.buf.push(b'"');
    }

    pub(crate) fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.str_value(value);
    }

    /// A string value written by `f` (escaping is `f`'s job: used for values
    /// known to need none, such as timestamps and hex ids).
    pub(crate) fn raw_field(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        self.buf.push(b'"');
        f(&mut self.buf);
        self.buf.push(b'"');
    }

    /// A value written by `f` as it is (a number, `null`).
    pub(crate) fn raw_field_unquoted(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        f(&mut self.buf);
    }

    pub(crate) fn u64_field(&mut self, key: &str, v: u64) {
        self.key(key);
        push_u64(&mut self.buf, v);
    }

    fn i64_value(&mut self, v: i64) {
        if v < 0 {
            self.buf.push(b'-');
        }
        push_u64(&mut self.buf, v.unsigned_abs());
    }

    /// A number with three decimals given in thousandths (`1234` is `1.234`).
    pub(crate) fn milli_field(&mut self, key: &str, thousandths: u64) {
        self.key(key);
        push_u64(&mut self.buf, thousandths / 1000);
        self.buf.push(b'.');
        let frac = thousandths % 1000;
        if frac < 100 {
            self.buf.push(b'0');
        }
        if frac < 10 {
            self.buf.push(b'0');
        }
        push_u64(&mut self.buf, frac);
    }

    fn f64_value(&mut self, v: f64) {
        if v.is_finite() {
            let _ = write!(self.buf, "{v}");
        } else {
            // JSON has no NaN or infinity.
            let _ = write!(self.buf, "\"{v}\"");
        }
    }

    /// The finished line, ending in `\n`.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"}\n");
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
            line.raw_field("trace_id", |b| push_hex(b, &sc.trace_id().to_bytes()));
            line.raw_field("span_id", |b| push_hex(b, &sc.span_id().to_bytes()));
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
    /// Writes the key; for a sensitive name also the `[REDACTED]` value.
    fn key(&mut self, field: &Field) -> bool {
        self.line.user_key(field.name());
        if self.redactor.is_sensitive_field(field.name()) {
            self.line.str_value(super::REDACTED);
            true
        } else {
            false
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.key(field) {
            self.line.str_value(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !self.key(field) {
            self.line.i64_value(value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.key(field) {
            push_u64(&mut self.line.buf, value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if !self.key(field) {
            self.line.f64_value(value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.key(field) {
            self.line.buf.extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            return;
        }
        self.line.buf.push(b'"');
        // Formatted straight into the line, escaped afterwards when needed.
        let start = self.line.buf.len();
        let _ = write!(self.line.buf, "{value:?}");
        if any_needs_escape(&self.line.buf[start..]) {
            let raw = self.line.buf.split_off(start);
            escape_into(&raw, &mut self.line.buf);
        }
        self.line.buf.push(b'"');
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
        line.raw_field("level", |b| b.extend_from_slice(meta.level().as_str().as_bytes()));
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
    fn numbers_are_written_as_display_writes_them() {
        for v in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            101,
            200,
            999,
            1000,
            65_535,
            1_000_000_007,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.7",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_795_750_812_123_456);
        let mut b = Vec::new();
        write_timestamp(t, &mut b);
        assert_eq!(b, b"2026-11-27T03:40:12.123456Z");
        // The same second again (the cached date and time of day), the next
        // second, and the last microsecond of a day then the first of the next.
        let at = |micros: u64| {
            let mut b = Vec::new();
            write_timestamp(UNIX_EPOCH + std::time::Duration::from_micros(micros), &mut b);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(at(1_795_750_812_000_007), "2026-11-27T03:40:12.000007Z");
        assert_eq!(at(1_795_750_813_999_999), "2026-11-27T03:40:13.999999Z");
        assert_eq!(at(1_795_823_999_999_999), "2026-11-27T23:59:59.999999Z");
        assert_eq!(at(1_795_824_000_000_000), "2026-11-28T00:00:00.000000Z");
        assert_eq!(at(1_795_750_812_123_456), "2026-11-27T03:40:12.123456Z");
    }

    #[test]
    fn numbers_and_ids_are_written_as_format_would() {
        let mut b = Vec::new();
        push_u64(&mut b, 0);
        b.push(b' ');
        push_u64(&mut b, u64::MAX);
        b.push(b' ');
        push_hex(&mut b, &[0x4b, 0xf9, 0x00, 0x0a]);
        assert_eq!(String::from_utf8(b).unwrap(), format!("0 {} 4bf9000a", u64::MAX));
        let mut line = JsonLine::new();
        line.milli_field("a", 1234);
        line.milli_field("b", 5);
        line.key("c");
        line.i64_value(-42);
        assert_eq!(line.finish(), b"{\"a\":1.234,\"b\":0.005,\"c\":-42}\n");
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let mut b = Vec::new();
        escape_into("a\"b\\c\nd\u{1}é".as_bytes(), &mut b);
        assert_eq!(String::from_utf8(b).unwrap(), "a\\\"b\\\\c\\nd\\u0001é");
    }

    #[test]
    fn the_word_at_a_time_check_finds_each_byte_to_escape_at_any_position() {
        for len in 0..24 {
            assert!(!any_needs_escape(&vec![b'a'; len]));
            for pos in 0..len {
                for bad in [b'"', b'\\', 0u8, 0x1f] {
                    let mut v = vec![b'a'; len];
                    v[pos] = bad;
                    assert!(any_needs_escape(&v), "{bad:#x} at {pos} of {len}");
                }
                let mut v = vec![b'a'; len];
                v[pos] = 0xc3; // a UTF-8 lead byte, and a space: no escape
                v[(pos + 1) % len] = b' ';
                assert!(!any_needs_escape(&v));
            }
        }
    }
}
