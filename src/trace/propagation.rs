//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage, read from
//! requests and written to outgoing calls.
//!
//! `traceparent` is parsed by hand, straight from the header bytes: the SDK's
//! `TraceContextPropagator` splits the header into a `Vec` of owned parts and costs
//! about 3,500 instructions per request (measured as `BENCHMARKING.md` describes), over this
//! crate's budget of 1,000 for an incoming `traceparent`. Baggage, which is rare on
//! the hot path, goes through the SDK's `BaggagePropagator`.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::config::Propagation;

/// Bits of [`RequestHeaders::forwarding`].
pub(crate) const FORWARDING_XFF: u8 = 1;
pub(crate) const FORWARDING_FORWARDED: u8 = 2;
pub(crate) const FORWARDING_REAL_IP: u8 = 4;

// Header names as constants: a lookup by `&str` would parse the name every time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// The `traceparent` flags this crate understands and passes on: sampled and
/// (Trace Context Level 2) random trace id.
const KNOWN_FLAGS: u8 = 0x03;
/// The Level 2 flag saying the trace id is random; set on every trace started here.
pub(crate) const RANDOM_TRACE_ID: u8 = 0x02;
/// The W3C limit on `tracestate` list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The length past which a `tracestate` is cut (W3C: entries are removed).
const MAX_TRACESTATE_LEN: usize = 512;
/// Members this long are removed first when a `tracestate` is cut.
const LONG_TRACESTATE_MEMBER: usize = 128;

/// What a request carried: the remote parent (if a valid `traceparent` came) and a
/// context holding the incoming baggage and `tracestate` (empty when none came).
pub(crate) struct Extracted {
    pub(crate) parent: Option<SpanContext>,
    pub(crate) cx: Context,
}

/// The validated incoming `tracestate`, kept as received (less repeated keys and
/// empty members) so it is passed on exactly. OpenTelemetry's `TraceState` only
/// accepts the Level 1 key grammar; this also keeps Level 2 keys such as `foo@@bar`.
#[derive(Debug, Clone)]
pub(crate) struct W3cTraceState(pub(crate) Arc<str>);

/// The request headers the layer reads, found in one pass over the header map.
///
/// Looking each name up hashes it every time (about 100 instructions a lookup
/// once the map is not empty, measured with `scripts/instr.sh`); one pass
/// compares each header name's length first, so most headers cost a few
/// instructions.
#[derive(Debug, Default)]
pub(crate) struct RequestHeaders<'a> {
    traceparent: Option<&'a HeaderValue>,
    traceparents: u8,
    tracestate: bool,
    baggage: bool,
    pub(crate) host: Option<&'a HeaderValue>,
    pub(crate) user_agent: Option<&'a HeaderValue>,
    pub(crate) content_length: Option<&'a HeaderValue>,
    pub(crate) request_id: Option<&'a HeaderValue>,
    /// The forwarding headers sent (`X-Forwarded-For`, `Forwarded`,
    /// `X-Real-IP`), as bits.
    pub(crate) forwarding: u8,
}

impl<'a> RequestHeaders<'a> {
    pub(crate) fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = RequestHeaders::default();
        for (name, value) in headers {
            let n = name.as_str();
            match n.len() {
                4 if name == http::header::HOST => {
                    found.host.get_or_insert(value);
                }
                7 if *name == BAGGAGE => found.baggage = true,
                10 if name == http::header::USER_AGENT => {
                    found.user_agent.get_or_insert(value);
                }
                10 if *name == TRACESTATE => found.tracestate = true,
                14 if name == http::header::CONTENT_LENGTH => {
                    found.content_length.get_or_insert(value);
                }
                9 if name == http::header::FORWARDED => found.forwarding |= FORWARDING_FORWARDED,
                9 if n == "x-real-ip" => found.forwarding |= FORWARDING_REAL_IP,
                15 if n == "x-forwarded-for" => found.forwarding |= FORWARDING_XFF,
                12 if n == "x-request-id" => {
                    found.request_id.get_or_insert(value);
                }
                11 if *name == TRACEPARENT => {
                    found.traceparents = found.traceparents.saturating_add(1);
                    found.traceparent.get_or_insert(value);
                }
                _ => {}
            }
        }
        found
    }
}

/// Reads the propagation headers the configuration enables.
pub(crate) fn extract(headers: &HeaderMap, found: &RequestHeaders<'_>, p: Propagation) -> Extracted {
    let mut cx = if p.baggage && found.baggage {
        BaggagePropagator::new().extract(&HeaderExtractor(headers))
    } else {
        Context::new()
    };
    let mut parent = None;
    if p.tracecontext {
        if let Some((remote, raw)) = extract_trace_context(headers, found) {
            if let Some(raw) = raw {
                cx = cx.with_value(raw);
            }
            parent = Some(remote);
        }
    }
    Extracted { parent, cx }
}

/// Writes `traceparent`/`tracestate` for `span` and the baggage of `cx`.
pub(crate) fn inject(span: &SpanContext, cx: &Context, headers: &mut HeaderMap, p: Propagation) {
    if p.tracecontext && span.is_valid() {
        headers.insert(TRACEPARENT, format_traceparent(span));
        let state = match cx.get::<W3cTraceState>() {
            Some(raw) => raw.0.to_string(),
            None => span.trace_state().header(),
        };
        if !state.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&state) {
                headers.insert(TRACESTATE, v);
            }
        } else {
            headers.remove(TRACESTATE);
        }
    }
    if p.baggage && !cx.baggage().is_empty() {
        BaggagePropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    }
}

/// The OpenTelemetry propagator for the same formats, for other libraries that
/// propagate through `opentelemetry::global`: W3C Trace Context and/or W3C
/// Baggage, or none.
pub(crate) fn text_map_propagator(p: Propagation) -> TextMapCompositePropagator {
    let mut parts: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::with_capacity(2);
    if p.tracecontext {
        parts.push(Box::new(TraceContextPropagator::new()));
    }
    if p.baggage {
        parts.push(Box::new(BaggagePropagator::new()));
    }
    TextMapCompositePropagator::new(parts)
}

fn extract_trace_context(
    headers: &HeaderMap,
    found: &RequestHeaders<'_>,
) -> Option<(SpanContext, Option<W3cTraceState>)> {
    if found.traceparents > 1 {
        return None; // two traceparent headers: ambiguous, start a new trace
    }
    let (trace_id, span_id, flags) = parse_traceparent(found.traceparent?.as_bytes())?;
    let (state, raw) = match found.tracestate {
        true => match parse_tracestate(headers.get_all(TRACESTATE).iter()) {
            Some((state, raw)) => (state, Some(raw)),
            None => (TraceState::NONE, None),
        },
        false => (TraceState::NONE, None),
    };
    Some((SpanContext::new(trace_id, span_id, flags, true, state), raw))
}

/// Parses a `traceparent` value. Returns `None` for anything the W3C
/// specification says to reject: wrong length, version `ff`, all-zero ids,
/// non-hex or uppercase hex, missing dashes.
pub(crate) fn parse_traceparent(raw: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    let v = trim_ows(raw);
    if v.len() < 55 {
        return None;
    }
    let [version] = hex_bytes::<1>(&v[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    // A future version may append fields, but only after another dash.
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = hex_bytes::<16>(&v[3..35])?;
    let span = hex_bytes::<8>(&v[36..52])?;
    let [flags] = hex_bytes::<1>(&v[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    // Keep the flags this version defines: sampled (0x01) and, from Level 2, random (0x02).
    Some((
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::new(flags & KNOWN_FLAGS),
    ))
}

/// Formats `00-<trace-id>-<span-id>-<flags>` without going through `fmt`.
pub(crate) fn format_traceparent(span: &SpanContext) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    let trace = span.trace_id().to_bytes();
    for (i, b) in trace.iter().enumerate() {
        buf[3 + 2 * i] = HEX[(b >> 4) as usize];
        buf[4 + 2 * i] = HEX[(b & 0xf) as usize];
    }
    buf[35] = b'-';
    let sid = span.span_id().to_bytes();
    for (i, b) in sid.iter().enumerate() {
        buf[36 + 2 * i] = HEX[(b >> 4) as usize];
        buf[37 + 2 * i] = HEX[(b & 0xf) as usize];
    }
    buf[52] = b'-';
    let flags = span.trace_flags().to_u8() & KNOWN_FLAGS;
    buf[53] = b'0';
    buf[54] = HEX[flags as usize];
    HeaderValue::from_bytes(&buf).expect("traceparent is ASCII hex and dashes")
}

/// Parses `tracestate` (all header lines, joined as a list). `None` — discard the
/// whole header — when a member is malformed or there are more than 32 members,
/// as the W3C specification asks; a repeated key keeps its first value.
///
/// Returns the OpenTelemetry `TraceState` (members whose keys it accepts) and the
/// header to pass on.
pub(crate) fn parse_tracestate<'a>(
    lines: impl Iterator<Item = &'a HeaderValue>,
) -> Option<(TraceState, W3cTraceState)> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for line in lines {
        let line = line.to_str().ok()?;
        for member in line.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let (key, value) = member.split_once('=')?;
            if !valid_key(key) || !valid_value(value) {
                return None;
            }
            if members.iter().any(|(k, _)| *k == key) {
                continue;
            }
            members.push((key, value));
            if members.len() > MAX_TRACESTATE_MEMBERS {
                return None;
            }
        }
    }
    // W3C Trace Context: a list longer than 512 characters is cut by removing
    // members, those over 128 characters first, then from the end. A client
    // cannot make every span carry 16 KiB of `tracestate`.
    let len = |m: &[(&str, &str)]| {
        m.iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>()
            .saturating_sub(1)
    };
    while len(&members) > MAX_TRACESTATE_LEN {
        match members
            .iter()
            .rposition(|(k, v)| k.len() + 1 + v.len() > LONG_TRACESTATE_MEMBER)
        {
            Some(i) => {
                members.remove(i);
            }
            None => {
                members.pop();
            }
        }
    }
    let mut raw = String::new();
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            raw.push(',');
        }
        raw.push_str(k);
        raw.push('=');
        raw.push_str(v);
    }
    let otel = members
        .iter()
        .filter(|m| TraceState::from_key_value([**m]).is_ok())
        .copied()
        .collect::<Vec<_>>();
    let state = TraceState::from_key_value(otel).unwrap_or_default();
    Some((state, W3cTraceState(Arc::from(raw))))
}

/// The Level 2 key grammar: a lowercase letter or digit, then up to 255 of
/// `a-z 0-9 _ - * / @`.
fn valid_key(key: &str) -> bool {
    let k = key.as_bytes();
    !k.is_empty()
        && k.len() <= 256
        && (k[0].is_ascii_lowercase() || k[0].is_ascii_digit())
        && k.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@'))
}

fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    !v.is_empty()
        && v.len() <= 256
        && v.iter().all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && v[v.len() - 1] != b' '
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    match (v.first(), v.last()) {
        (Some(first), Some(last)) if ows(first) || ows(last) => {
            let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
            let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
            &v[start..end]
        }
        _ => v,
    }
}

/// Lowercase hex digit values; every other byte (uppercase included, which
/// `traceparent` forbids) maps to 0xFF.
static HEX_VALUE: [u8; 256] = {
    let mut table = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes `2 * N` lowercase hex digits. A table lookup per digit, with the
/// validity of all digits checked once at the end.
fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (i, pair) in s.chunks_exact(2).take(N).enumerate() {
        let hi = HEX_VALUE[usize::from(pair[0])];
        let lo = HEX_VALUE[usize::from(pair[1])];
        invalid |= hi | lo;
        out[i] = hi << 4 | (lo & 0x0F);
    }
    (invalid & 0xF0 == 0 && s.len() == 2 * N).then_some(out)
}

/// Lets the SDK's propagators read an `http::HeaderMap`.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Lets the SDK's propagators write an `http::HeaderMap`.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(s: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn valid_traceparent_is_parsed() {
        let (t, s, f) = parse(VALID).unwrap();
        assert_eq!(t, TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert_eq!(s, SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(f.is_sampled());
    }

    #[test]
    fn malformed_traceparents_are_rejected() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // version 00 too long
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", // non-hex
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // wrong delimiter
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // non-hex version
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // future version, no dash
        ] {
            assert!(parse(bad).is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn future_version_with_more_fields_is_read_as_version_00() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse(v).is_some());
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert!(parse(&format!(" \t{VALID} ")).is_some());
    }

    /// A sampled span context with short, recognizable ids.
    fn sampled_span() -> SpanContext {
        SpanContext::new(
            TraceId::from(0xabcdefu128),
            SpanId::from(0x1234u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    #[test]
    fn formatted_traceparent_parses_back() {
        let sc = sampled_span();
        let v = format_traceparent(&sc);
        assert_eq!(v, "00-00000000000000000000000000abcdef-0000000000001234-01");
        let (t, s, f) = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!((t, s, f), (sc.trace_id(), sc.span_id(), sc.trace_flags()));
    }

    fn ts(lines: &[&str]) -> Option<String> {
        let values: Vec<HeaderValue> = lines.iter().map(|l| HeaderValue::from_str(l).unwrap()).collect();
        parse_tracestate(values.iter()).map(|(_, raw)| raw.0.to_string())
    }

    #[test]
    fn tracestate_lines_are_joined_and_empty_members_skipped() {
        assert_eq!(
            ts(&["foo=1, ,bar@baz=2", "qux=3"]).as_deref(),
            Some("foo=1,bar@baz=2,qux=3")
        );
    }

    #[test]
    fn tracestate_over_512_characters_loses_long_members_first_then_the_last_ones() {
        let long = format!("big={}", "v".repeat(200));
        let state = |v: &str| ts(&[v]).unwrap();
        // Under the limit: kept whole, long member included.
        assert_eq!(state(&format!("a=1,{long}")), format!("a=1,{long}"));
        // Over it: the long members go first, from the right.
        let many = (0..20)
            .map(|i| format!("k{i:02}=value{i:02}"))
            .collect::<Vec<_>>()
            .join(",");
        let input = format!("{long},{many},{}", long.replace("big", "big2"));
        let out = state(&input);
        assert_eq!(out, format!("{long},{many}"));
        assert!(out.len() <= 512, "{}", out.len());
        // Then members from the end.
        let members = (0..32)
            .map(|i| format!("k{i:02}={}", "x".repeat(20)))
            .collect::<Vec<_>>();
        let out = state(&members.join(","));
        assert!(out.len() <= 512 && out.starts_with("k00="), "{out}");
        assert_eq!(out, members[..out.split(',').count()].join(","));
        assert!(out.split(',').count() < 32);
    }

    #[test]
    fn tracestate_over_32_members_is_discarded_and_repeated_keys_keep_the_first() {
        let ok: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(ts(&[&ok.join(",")]).is_some());
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(ts(&[&too_many.join(",")]).is_none());
        assert_eq!(ts(&["a=1,a=2"]).as_deref(), Some("a=1"));
    }

    #[test]
    fn tracestate_with_bad_keys_or_values_is_discarded() {
        let long_key = format!("{}=1", "z".repeat(257));
        for bad in [
            "A=1",
            "a=",
            "a",
            "a=b\tc",
            "a=\u{7f}",
            "@a=1",
            "foo.bar=1",
            "foo =1",
            &long_key,
        ] {
            let parsed = HeaderValue::from_str(bad)
                .ok()
                .and_then(|v| parse_tracestate(std::iter::once(&v)));
            assert!(parsed.is_none(), "accepted {bad:?}");
        }
    }

    #[test]
    fn level_2_keys_are_passed_on_even_where_opentelemetry_rejects_them() {
        assert_eq!(ts(&["foo@@bar=1,bar=2"]).as_deref(), Some("foo@@bar=1,bar=2"));
        let key = format!("{}@v", "t".repeat(242));
        assert!(ts(&[&format!("{key}=1")]).is_some());
    }

    #[test]
    fn random_flag_is_kept_and_unknown_flags_dropped() {
        let (_, _, f) = parse(&VALID.replace("-01", "-ff")).unwrap();
        assert_eq!(f.to_u8(), 0x03);
    }

    #[test]
    fn baggage_round_trips_through_extract_and_inject() {
        let mut headers = HeaderMap::new();
        headers.insert(BAGGAGE, HeaderValue::from_static("user.id=42,tenant=acme%20corp"));
        let p = Propagation {
            tracecontext: true,
            baggage: true,
        };
        let ex = extract(&headers, &RequestHeaders::scan(&headers), p);
        assert_eq!(
            ex.cx.baggage().get("tenant").map(|v| v.as_str().to_owned()).as_deref(),
            Some("acme corp")
        );
        let mut out = HeaderMap::new();
        inject(&SpanContext::empty_context(), &ex.cx, &mut out, p);
        let written = out.get(BAGGAGE).unwrap().to_str().unwrap();
        assert!(
            written.contains("user.id=42") && written.contains("tenant=acme%20corp"),
            "{written}"
        );
    }

    #[test]
    fn the_text_map_propagator_writes_the_configured_formats_only() {
        use opentelemetry::trace::TraceContextExt;
        let sc = sampled_span();
        let cx = Context::new()
            .with_remote_span_context(sc)
            .with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
        let fields = |tracecontext, baggage| {
            let mut map = std::collections::HashMap::new();
            text_map_propagator(Propagation { tracecontext, baggage }).inject_context(&cx, &mut map);
            let mut keys: Vec<String> = map.into_keys().collect();
            keys.sort();
            keys
        };
        assert_eq!(fields(true, true), ["baggage", "traceparent", "tracestate"]);
        assert_eq!(fields(true, false), ["traceparent", "tracestate"]);
        assert_eq!(fields(false, true), ["baggage"]);
        assert!(fields(false, false).is_empty());
    }

    #[test]
    fn duplicate_traceparent_headers_start_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(extract_trace_context(&headers, &RequestHeaders::scan(&headers)).is_none());
    }
}
