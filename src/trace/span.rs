//! Turns finished records into OpenTelemetry spans, named and attributed by the
//! stable HTTP semantic conventions.
//!
//! This runs on the export thread, never on the request path: the request path
//! only fills a record, and the attribute list, the redacted query and the span
//! name are built here, once per exported span.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use http::{Method, Version};
use opentelemetry::trace::{Event, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::record::{ClientRecord, DbRecord, RequestRecord, Route};
use crate::redact::redact_query;

/// Caps the route cache; routes are few, but a misconfigured route function must
/// not grow memory without bound. Past the cap, names are formatted per span.
const MAX_CACHED_ROUTES: usize = 1024;

/// The database queries a request's handler awaited, on its server span.
pub(crate) const DB_OPERATIONS: &str = "tower_apm.db.operations";
/// The seconds those queries took together.
pub(crate) const DB_DURATION: &str = "tower_apm.db.duration";

/// Per route template: the shared `http.route` value and the span names made for
/// it, one per method. Process-wide, so the bounded set of leaked names is made once
/// however many `Apm`s a process builds.
static ROUTES: Mutex<Option<HashMap<Box<str>, CachedRoute, Fnv>>> = Mutex::new(None);

#[derive(Debug)]
struct CachedRoute {
    value: Arc<str>,
    /// `&'static` so a span's name costs no allocation: each is leaked once, and
    /// there are at most `MAX_CACHED_ROUTES` routes times ten method names.
    names: Vec<(&'static str, &'static str)>,
}

impl CachedRoute {
    /// The span name for `method` (made and leaked the first time) and the
    /// shared `http.route` value.
    fn info(&mut self, method: &'static str, template: &str) -> (Cow<'static, str>, Option<Value>) {
        let name = match self.names.iter().find(|(m, _)| *m == method) {
            Some((_, name)) => *name,
            None => {
                let name: &'static str = Box::leak(format!("{method} {template}").into_boxed_str());
                self.names.push((method, name));
                name
            }
        };
        let value = Value::String(StringValue::from(Arc::clone(&self.value)));
        (Cow::Borrowed(name), Some(value))
    }
}

/// FNV-1a: route templates are short, trusted strings; SipHash's DoS resistance
/// buys nothing here and costs more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
struct Fnv;

struct FnvHasher(u64);

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;
    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Turns monotonic instants into wall-clock times: read once per export round,
/// so the request path needs no `SystemTime::now()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    system: SystemTime,
    mono: Instant,
}

impl Clock {
    pub(crate) fn now() -> Self {
        Clock {
            system: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    pub(crate) fn at(&self, instant: Instant) -> SystemTime {
        match self.mono.checked_duration_since(instant) {
            Some(ago) => self.system - ago,
            None => self.system + instant.duration_since(self.mono),
        }
    }
}

/// How many distinct `Host` values keep their parsed, shared form. A service sees
/// few; the cap bounds what a client sending random hosts can make it hold.
const MAX_CACHED_AUTHORITIES: usize = 64;
/// Distinct client addresses whose `client.address` string is kept.
const MAX_CACHED_CLIENTS: usize = 4096;

/// `server.address` (shared) and `server.port` of one authority.
type ServerAddress = (Arc<str>, Option<u16>);

/// Builds span data.
#[derive(Debug)]
pub(crate) struct SpanBuilder {
    scope: InstrumentationScope,
    /// `host[:port]` as sent, to `server.address` (shared) and `server.port`:
    /// parsed once per distinct value, no allocation per span.
    /// Keyed by the bytes as received, so a cached value needs no UTF-8 check.
    authorities: HashMap<Box<[u8]>, ServerAddress, Fnv>,
    /// `client.address` strings: formatted and allocated once per address seen
    /// recently, shared by every span after that (emptied when full).
    clients: HashMap<IpAddr, Arc<str>, Fnv>,
}

impl Default for SpanBuilder {
    fn default() -> Self {
        SpanBuilder {
            scope: InstrumentationScope::builder("tower-apm")
                .with_version(env!("CARGO_PKG_VERSION"))
                .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
                .build(),
            authorities: HashMap::with_hasher(Fnv),
            clients: HashMap::with_hasher(Fnv),
        }
    }
}

/// The method as the semantic conventions name it: known methods as they are,
/// anything else `_OTHER`.
pub(crate) fn method_name(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

pub(crate) fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "_OTHER",
    }
}

/// `server.address` and `server.port` of an outgoing call: the URL's host
/// (IPv6 without brackets, userinfo left out) and its port, else the scheme's
/// default port. Read from the authority as stored: `Uri::host` parses it
/// again on every call.
pub(crate) fn server_of(uri: &http::Uri) -> (Option<&str>, Option<u16>) {
    let Some(authority) = uri.authority() else {
        return (None, None);
    };
    // Byte loops: `str` searches cost several hundred instructions on a
    // 15-byte authority, more than the rest of the client metric.
    let a = authority.as_str();
    let b = a.as_bytes();
    let start = b.iter().rposition(|&c| c == b'@').map_or(0, |i| i + 1);
    let (host, rest) = if b.get(start) == Some(&b'[') {
        match b[start..].iter().position(|&c| c == b']') {
            Some(end) => (&a[start + 1..start + end], &b[start + end + 1..]),
            None => (&a[start..], &b[b.len()..]),
        }
    } else {
        match b[start..].iter().position(|&c| c == b':') {
            Some(colon) => (&a[start..start + colon], &b[start + colon..]),
            None => (&a[start..], &b[b.len()..]),
        }
    };
    let port = match rest {
        [b':', digits @ ..] if !digits.is_empty() && digits.len() <= 5 => digits
            .iter()
            .try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
            .and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    let port = port.or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    (Some(host).filter(|h| !h.is_empty()), port)
}

/// Splits `host[:port]` (IPv6 in brackets) as sent in `Host` or the URI authority.
pub(crate) fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

fn method_attrs(method: &Method, attrs: &mut Vec<KeyValue>) -> &'static str {
    match method_name(method) {
        Some(name) => {
            attrs.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, name));
            name
        }
        None => {
            attrs.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, "_OTHER"));
            attrs.push(KeyValue::new(
                semconv::HTTP_REQUEST_METHOD_ORIGINAL,
                method.as_str().to_owned(),
            ));
            "HTTP"
        }
    }
}

impl SpanBuilder {
    /// The span name and the `http.route` value, made once per route and method.
    fn route_info(&mut self, method: &'static str, route: Option<&Route>) -> (Cow<'static, str>, Option<Value>) {
        let Some(route) = route else {
            return (Cow::Borrowed(method), None);
        };
        let template = route.as_str();
        let mut routes = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
        let routes = routes.get_or_insert_with(|| HashMap::with_hasher(Fnv));
        // Looked up by `&str`: `entry()` would take an owned key, an allocation
        // and a free on every span for a route already cached.
        if let Some(cached) = routes.get_mut(template) {
            return cached.info(method, template);
        }
        if routes.len() >= MAX_CACHED_ROUTES {
            let value = Value::String(StringValue::from(template.to_owned()));
            return (Cow::Owned(format!("{method} {template}")), Some(value));
        }
        let mut cached = CachedRoute {
            value: Arc::from(template),
            names: Vec::new(),
        };
        let info = cached.info(method, template);
        routes.insert(template.into(), cached);
        info
    }

    /// `server.address` and `server.port` from the request's authority.
    fn authority(&mut self, authority: &[u8]) -> Option<(Value, Option<u16>)> {
        if let Some((host, port)) = self.authorities.get(authority) {
            return Some((Value::String(StringValue::from(Arc::clone(host))), *port));
        }
        let (host, port) = split_host_port(std::str::from_utf8(authority).ok().filter(|a| !a.is_empty())?);
        let host: Arc<str> = Arc::from(host);
        if self.authorities.len() < MAX_CACHED_AUTHORITIES {
            self.authorities.insert(authority.into(), (Arc::clone(&host), port));
        }
        Some((Value::String(StringValue::from(host)), port))
    }

    /// `client.address` for `ip`.
    fn client_address(&mut self, ip: IpAddr) -> Value {
        if let Some(s) = self.clients.get(&ip) {
            return Value::String(StringValue::from(Arc::clone(s)));
        }
        if self.clients.len() >= MAX_CACHED_CLIENTS {
            self.clients.clear();
        }
        let mut text = Vec::with_capacity(15);
        crate::logs::json::push_ip(&mut text, ip);
        let s: Arc<str> = Arc::from(String::from_utf8(text).unwrap_or_default());
        self.clients.insert(ip, Arc::clone(&s));
        Value::String(StringValue::from(s))
    }

    /// The SERVER span for one request. Takes what it keeps out of `r`, so the
    /// record's box can be reused.
    pub(crate) fn server_span(&mut self, r: &mut RequestRecord, clock: &Clock) -> SpanData {
        let mut attrs = Vec::with_capacity(14);
        let method = method_attrs(&r.method, &mut attrs);
        let (path, query) = r.path_and_query();
        attrs.push(KeyValue::new(semconv::URL_PATH, path.to_owned()));
        if let Some(q) = query {
            attrs.push(KeyValue::new(semconv::URL_QUERY, redact_query(q)));
        }
        attrs.push(KeyValue::new(
            semconv::URL_SCHEME,
            if r.https { "https" } else { "http" },
        ));
        let (name, route) = self.route_info(method, r.route.as_ref());
        if let Some(route) = route {
            attrs.push(KeyValue::new(semconv::HTTP_ROUTE, route));
        }
        if let Some(status) = r.status {
            attrs.push(KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
        }
        attrs.push(KeyValue::new(
            semconv::NETWORK_PROTOCOL_VERSION,
            protocol_version(r.version),
        ));
        if let Some((host, port)) = r.authority.as_ref().and_then(|a| self.authority(a.as_bytes())) {
            attrs.push(KeyValue::new(semconv::SERVER_ADDRESS, host));
            if let Some(port) = port {
                attrs.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
            }
        }
        match (r.forwarded_client, r.client) {
            // Behind a trusted proxy: the client it forwarded, and the proxy as
            // the connection's peer.
            (Some(ip), peer) => {
                attrs.push(KeyValue::new(semconv::CLIENT_ADDRESS, self.client_address(ip)));
                if let Some(peer) = peer {
                    attrs.push(KeyValue::new(
                        semconv::NETWORK_PEER_ADDRESS,
                        self.client_address(peer.ip()),
                    ));
                    attrs.push(KeyValue::new(semconv::NETWORK_PEER_PORT, i64::from(peer.port())));
                }
            }
            (None, Some(client)) => {
                attrs.push(KeyValue::new(semconv::CLIENT_ADDRESS, self.client_address(client.ip())));
                attrs.push(KeyValue::new(semconv::CLIENT_PORT, i64::from(client.port())));
            }
            (None, None) => {}
        }
        if let Some(ua) = r.user_agent.as_ref().map(|ua| ua.as_str()).filter(|ua| !ua.is_empty()) {
            attrs.push(KeyValue::new(semconv::USER_AGENT_ORIGINAL, ua.to_owned()));
        }
        if let Some(e) = r.error_type {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e));
        }
        if r.db.count > 0 {
            // Not in the semantic conventions: the "N+1 queries" signal.
            attrs.push(KeyValue::new(DB_OPERATIONS, i64::from(r.db.count)));
            attrs.push(KeyValue::new(DB_DURATION, r.db.nanos as f64 / 1e9));
        }
        let start_time = clock.at(r.start);
        let end_time = start_time + r.duration;
        let mut events = SpanEvents::default();
        let status = match (&r.panic, r.status) {
            (Some(msg), _) => {
                events.events.push(Event::new(
                    "exception",
                    end_time,
                    vec![
                        KeyValue::new(semconv::EXCEPTION_TYPE, "panic"),
                        KeyValue::new(semconv::EXCEPTION_MESSAGE, msg.clone()),
                    ],
                    0,
                ));
                Status::error(msg.clone())
            }
            (None, Some(s)) if s >= 500 => Status::error(""),
            _ => Status::Unset,
        };
        SpanData {
            span_context: r.span.clone(),
            parent_span_id: r.parent_span_id,
            parent_span_is_remote: r.parent_is_remote,
            span_kind: SpanKind::Server,
            name,
            start_time,
            end_time,
            attributes: attrs,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// The CLIENT span of one database query, named as the database semantic
    /// conventions say: `{operation} {table}`, else the operation, else the
    /// database system.
    pub(crate) fn db_span(&mut self, r: &DbRecord, clock: &Clock) -> SpanData {
        let c = &r.config;
        let shape = &r.shape;
        let shared = |s: &Arc<str>| Value::String(StringValue::from(Arc::clone(s)));
        let mut attrs = Vec::with_capacity(9);
        attrs.push(KeyValue::new(semconv::DB_SYSTEM_NAME, shared(&c.system)));
        if let Some(op) = &shape.operation {
            attrs.push(KeyValue::new(semconv::DB_OPERATION_NAME, shared(op)));
        }
        if let Some(t) = &shape.collection {
            attrs.push(KeyValue::new(semconv::DB_COLLECTION_NAME, shared(t)));
        }
        if let Some(ns) = &c.namespace {
            attrs.push(KeyValue::new(semconv::DB_NAMESPACE, shared(ns)));
        }
        if let Some(text) = shape.query_text() {
            attrs.push(KeyValue::new(semconv::DB_QUERY_TEXT, Value::String(text.clone())));
        }
        if let Some((host, port)) = &c.server {
            attrs.push(KeyValue::new(semconv::SERVER_ADDRESS, shared(host)));
            if let Some(p) = port {
                attrs.push(KeyValue::new(semconv::SERVER_PORT, i64::from(*p)));
            }
        }
        if let Some(e) = &r.error_type {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e.to_string()));
        }
        if let Some(code) = &r.status_code {
            attrs.push(KeyValue::new(semconv::DB_RESPONSE_STATUS_CODE, code.clone()));
        }
        let name = match &shape.name {
            Some(name) => name.clone(),
            None => Cow::Owned(c.system.to_string()),
        };
        let status = if r.error_type.is_some() {
            Status::error("")
        } else {
            Status::Unset
        };
        let start_time = clock.at(r.start);
        SpanData {
            span_context: r.span.clone(),
            parent_span_id: r.parent_span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name,
            start_time,
            end_time: start_time + r.duration,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// The CLIENT span for one outgoing call.
    pub(crate) fn client_span(&mut self, r: Box<ClientRecord>, clock: &Clock) -> SpanData {
        let mut attrs = Vec::with_capacity(8);
        let method = method_attrs(&r.method, &mut attrs);
        let (host, port) = server_of(&r.uri);
        if let Some(host) = host {
            attrs.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()));
        }
        if let Some(port) = port {
            attrs.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
        }
        attrs.push(KeyValue::new(semconv::URL_FULL, full_url(&r.uri)));
        attrs.push(KeyValue::new(
            semconv::NETWORK_PROTOCOL_VERSION,
            protocol_version(r.version),
        ));
        if let Some(status) = r.status {
            attrs.push(KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
        }
        if let Some(e) = r.error_type {
            attrs.push(KeyValue::new(semconv::ERROR_TYPE, e));
        }
        let status = if r.error_type.is_some() {
            Status::error("")
        } else {
            Status::Unset
        };
        SpanData {
            span_context: r.span,
            parent_span_id: r.parent_span_id,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: Cow::Borrowed(method),
            start_time: clock.at(r.start),
            end_time: clock.at(r.start) + r.duration,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// `url.full` with credentials removed and sensitive query values redacted.
fn full_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let mut out = match uri.port_u16() {
        Some(p) => format!("{scheme}://{host}:{p}{}", uri.path()),
        None => format!("{scheme}://{host}{}", uri.path()),
    };
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(&redact_query(q));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_for_names_ipv4_and_ipv6() {
        assert_eq!(split_host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("[::1]:3000"), ("::1", Some(3000)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }

    #[test]
    fn server_of_a_call_has_no_userinfo_no_brackets_and_the_default_port() {
        let of = |u: &str| {
            let uri: http::Uri = u.parse().unwrap();
            let (h, p) = server_of(&uri);
            (h.map(str::to_owned), p)
        };
        assert_eq!(of("http://u:pw@api.local:81/p"), (Some("api.local".into()), Some(81)));
        assert_eq!(of("https://api.local/p"), (Some("api.local".into()), Some(443)));
        assert_eq!(of("http://[::1]:3000/"), (Some("::1".into()), Some(3000)));
        assert_eq!(of("/relative"), (None, None));
    }

    #[test]
    fn full_url_drops_credentials_and_redacts_the_query() {
        let uri: http::Uri = "http://user:pw@api.local:81/p?token=abc&x=1".parse().unwrap();
        assert_eq!(full_url(&uri), "http://api.local:81/p?token=REDACTED&x=1");
    }
}
