//! `http.client.request.duration`: one histogram per method, server, status,
//! `error.type`, scheme and protocol version of the outgoing calls made through
//! [`Apm::client_layer`](crate::Apm::client_layer) or the `reqwest` middleware.
//! Read by the Prometheus endpoint and the OTLP push with the request metrics.
//!
//! `server.address` is the host the application's own code calls, not something
//! a client of the service chooses; the series cap still applies, and calls
//! beyond it go to the overflow series.

use std::sync::Arc;

use super::capped::CappedSeries;
use super::{DURATION_BOUNDS_NS, Histogram, METHODS, method_slot};
use crate::record::ClientRecord;
use crate::trace::span::{protocol_version, server_of};

/// The attributes of one series, in semantic-convention terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClientAttrs {
    pub(crate) method: &'static str,
    pub(crate) server_address: Option<Arc<str>>,
    pub(crate) server_port: Option<u16>,
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<&'static str>,
    pub(crate) scheme: Option<&'static str>,
    pub(crate) version: &'static str,
    /// The overflow series: every other attribute is absent.
    pub(crate) overflow: bool,
}

/// The lookup form of a series' attributes: borrowed from the record.
struct Key<'a> {
    method: &'static str,
    server_address: Option<&'a str>,
    server_port: Option<u16>,
    status: Option<u16>,
    error_type: Option<&'static str>,
    scheme: Option<&'static str>,
    version: &'static str,
}

impl<'a> Key<'a> {
    fn of(r: &'a ClientRecord) -> Key<'a> {
        let scheme = match r.uri.scheme_str() {
            Some("https") => Some("https"),
            Some("http") => Some("http"),
            Some(_) => Some("_OTHER"),
            None => None,
        };
        let (server_address, server_port) = server_of(&r.uri);
        Key {
            method: METHODS[method_slot(&r.method)],
            server_address,
            server_port,
            status: r.status,
            error_type: r.error_type,
            scheme,
            version: protocol_version(r.version),
        }
    }

    /// FNV-1a over the fields.
    fn hash(&self) -> u64 {
        let mut h = crate::fnv::Fnv1a::new();
        let mut eat = |bytes: &[u8]| h.write(bytes);
        eat(self.method.as_bytes());
        eat(self.server_address.unwrap_or("\u{0}").as_bytes());
        eat(&self.server_port.unwrap_or(0).to_le_bytes());
        eat(&self.status.unwrap_or(0).to_le_bytes());
        eat(self.error_type.unwrap_or("").as_bytes());
        eat(self.scheme.unwrap_or("").as_bytes());
        eat(self.version.as_bytes());
        h.finish()
    }

    fn attrs(&self) -> ClientAttrs {
        ClientAttrs {
            method: self.method,
            server_address: self.server_address.map(Arc::from),
            server_port: self.server_port,
            status: self.status,
            error_type: self.error_type,
            scheme: self.scheme,
            version: self.version,
            overflow: false,
        }
    }
}

impl ClientAttrs {
    fn matches(&self, k: &Key<'_>) -> bool {
        !self.overflow
            && self.method == k.method
            && self.status == k.status
            && self.server_port == k.server_port
            && self.error_type == k.error_type
            && self.scheme == k.scheme
            && self.version == k.version
            && self.server_address.as_deref() == k.server_address
    }
}

/// One series: its durations.
#[derive(Debug)]
pub(crate) struct ClientSeries {
    pub(crate) attrs: ClientAttrs,
    pub(crate) duration: Histogram,
}

impl ClientSeries {
    fn new(attrs: ClientAttrs) -> ClientSeries {
        ClientSeries {
            attrs,
            duration: Histogram::new(&DURATION_BOUNDS_NS),
        }
    }
}

/// Every client metric of one `Apm`.
#[derive(Debug)]
pub(crate) struct ClientMetrics {
    series: CappedSeries<ClientSeries>,
}

impl ClientMetrics {
    pub(crate) fn new(max_series: usize) -> ClientMetrics {
        ClientMetrics {
            series: CappedSeries::new(
                max_series,
                ClientSeries::new(ClientAttrs {
                    method: "",
                    server_address: None,
                    server_port: None,
                    status: None,
                    error_type: None,
                    scheme: None,
                    version: "",
                    overflow: true,
                }),
            ),
        }
    }

    /// Counts one call: a read lock and atomic adds once its series exists.
    pub(crate) fn record(&self, r: &ClientRecord) {
        let nanos = u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX);
        let key = Key::of(r);
        self.series.count(
            key.hash(),
            |s| s.attrs.matches(&key),
            || ClientSeries::new(key.attrs()),
            |s| {
                s.duration.observe(nanos);
            },
        );
    }

    /// Every series, sorted by attributes (the overflow series last, when used).
    pub(crate) fn series(&self) -> Vec<Arc<ClientSeries>> {
        self.series.sorted(|a, b| a.attrs.cmp(&b.attrs))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use http::{Method, Version};
    use opentelemetry::trace::{SpanContext, SpanId};

    use super::*;

    fn call(uri: &str, status: Option<u16>, ms: u64) -> ClientRecord {
        ClientRecord {
            method: Method::GET,
            uri: uri.parse().unwrap(),
            version: Version::HTTP_11,
            status,
            error_type: status.filter(|s| *s >= 500).map(|_| "503"),
            start: Instant::now(),
            duration: Duration::from_millis(ms),
            span: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
        }
    }

    #[test]
    fn calls_are_counted_per_server_and_status_with_the_default_port() {
        let m = ClientMetrics::new(10);
        m.record(&call("http://api.local/a?x=1", Some(200), 3));
        m.record(&call("http://api.local/b", Some(200), 30));
        m.record(&call("https://pay.local:8443/c", Some(503), 3));
        let s = m.series();
        assert_eq!(s.len(), 2);
        let api = &s[0];
        assert_eq!(api.attrs.server_address.as_deref(), Some("api.local"));
        assert_eq!(api.attrs.server_port, Some(80));
        assert_eq!(api.attrs.scheme, Some("http"));
        assert_eq!(api.duration.snapshot().count, 2);
        let pay = &s[1];
        assert_eq!((pay.attrs.server_port, pay.attrs.status), (Some(8443), Some(503)));
        assert_eq!(pay.attrs.error_type, Some("503"));
    }

    #[test]
    fn servers_beyond_the_cap_go_to_the_overflow_series() {
        let m = ClientMetrics::new(2);
        for i in 0..5 {
            m.record(&call(&format!("http://h{i}.local/"), Some(200), 1));
        }
        let s = m.series();
        assert_eq!(s.len(), 3);
        assert!(s[2].attrs.overflow);
        assert_eq!(s[2].duration.snapshot().count, 3);
    }
}
