//! Metrics: each request's record aggregated once, on the request path, into the
//! HTTP server metrics of the semantic conventions; read by the Prometheus
//! endpoint ([`prometheus`]) and the OTLP push ([`otlp`]) alike.
//!
//! Why not the OpenTelemetry SDK's instruments: a histogram record there hashes
//! the attribute set per instrument (about 1,600 instructions with three
//! attributes, against a 2,000-instruction budget for every request metric
//! together), the SDK 0.33 keeps no exemplars, and its `ResourceMetrics` cannot be
//! built outside the SDK, so our own aggregation could not reuse its exporters
//! either. Here a request resolves its series once (one hash of a few small
//! fields, a read lock, then relaxed atomic adds into three histograms), and the
//! readers take snapshots off the request path.
//!
//! Cardinality is bounded by construction: the attributes are the method (nine
//! known names or `_OTHER`), the route template (never the raw path), the status
//! code, the scheme, the protocol version and `error.type`. Nothing the client
//! controls becomes a label. A hard cap on series sends what is beyond it to one
//! overflow series (`otel.metric.overflow="true"`, as the OpenTelemetry SDKs do),
//! and counts those requests.

mod capped;
pub(crate) mod client;
pub(crate) mod db;
pub(crate) mod otlp;
pub(crate) mod process;
pub(crate) mod prometheus;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::Method;
use opentelemetry::trace::{SpanId, TraceId};

use crate::record::RequestRecord;
use crate::trace::span::protocol_version;

/// The bucket boundaries (seconds) the HTTP semantic conventions advise for
/// `http.server.request.duration` and `http.client.request.duration`.
pub(crate) const DURATION_BOUNDS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The same boundaries in nanoseconds, so a request compares integers.
const DURATION_BOUNDS_NS: [u64; 14] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    750_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];
/// Body sizes (bytes): the OpenTelemetry default explicit-bucket boundaries (the
/// conventions advise none for these two histograms).
pub(crate) const SIZE_BOUNDS: [u64; 15] = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000];

/// Series per metric before requests go to the overflow series.
pub(crate) const DEFAULT_MAX_SERIES: usize = 2000;

/// Method names in the order of the in-flight gauge's slots.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER",
];

fn method_slot(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// A histogram of integer observations with fixed boundaries: bucket `i` counts
/// values `<= bounds[i]`, the last one the rest (`+Inf`).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    buckets: [AtomicU64; 16],
    sum: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`]: the count is the sum of the
/// bucket counts, so `+Inf` always equals `_count`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Per bucket (not cumulative), `bounds.len() + 1` of them.
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: u64,
    pub(crate) count: u64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.len() < 16);
        Histogram {
            bounds,
            buckets: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `v`; returns its bucket.
    pub(crate) fn observe(&self, v: u64) -> usize {
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        i
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.buckets[..=self.bounds.len()]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// The trace of one sampled request, kept per duration bucket (the latest wins).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Exemplar {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) value: Duration,
    pub(crate) time: SystemTime,
}

/// The attributes of one series, in semantic-convention terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SeriesAttrs {
    pub(crate) method: &'static str,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) status: Option<u16>,
    pub(crate) https: bool,
    pub(crate) version: &'static str,
    pub(crate) error_type: Option<&'static str>,
    /// The overflow series: every other attribute is absent.
    pub(crate) overflow: bool,
}

impl SeriesAttrs {
    fn matches(&self, k: &Key<'_>) -> bool {
        self.method == k.method
            && self.status == k.status
            && self.https == k.https
            && self.version == k.version
            && self.error_type == k.error_type
            && self.route.as_deref() == k.route
            && !self.overflow
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// The request metrics of one attribute set.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) attrs: SeriesAttrs,
    pub(crate) duration: Histogram,
    pub(crate) request_size: Histogram,
    pub(crate) response_size: Histogram,
    exemplars: Mutex<[Option<Exemplar>; 15]>,
}

impl Series {
    fn new(attrs: SeriesAttrs) -> Self {
        Series {
            attrs,
            duration: Histogram::new(&DURATION_BOUNDS_NS),
            request_size: Histogram::new(&SIZE_BOUNDS),
            response_size: Histogram::new(&SIZE_BOUNDS),
            exemplars: Mutex::new([None; 15]),
        }
    }

    /// The latest exemplar of each duration bucket.
    pub(crate) fn exemplars(&self) -> [Option<Exemplar>; 15] {
        *self.exemplars.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lookup form of a series' attributes: borrowed, hashed once.
struct Key<'a> {
    method: &'static str,
    route: Option<&'a str>,
    status: Option<u16>,
    https: bool,
    version: &'static str,
    error_type: Option<&'static str>,
}

impl Key<'_> {
    /// FNV-1a over the fields: short, trusted values (a route template, a few
    /// small integers); SipHash's DoS resistance buys nothing here.
    fn hash(&self) -> u64 {
        let mut h = crate::fnv::Fnv1a::new();
        let mut eat = |bytes: &[u8]| h.write(bytes);
        eat(self.method.as_bytes());
        eat(self.route.unwrap_or("\u{0}").as_bytes());
        eat(&self.status.unwrap_or(0).to_le_bytes());
        eat(&[u8::from(self.https)]);
        eat(self.version.as_bytes());
        eat(self.error_type.unwrap_or("").as_bytes());
        h.finish()
    }

    fn attrs(&self) -> SeriesAttrs {
        SeriesAttrs {
            method: self.method,
            route: self.route.map(Arc::from),
            status: self.status,
            https: self.https,
            version: self.version,
            error_type: self.error_type,
            overflow: false,
        }
    }
}

/// The map is keyed by the precomputed hash: a `u64` needs no hashing again.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type SeriesMap = HashMap<u64, Vec<Arc<Series>>, BuildHasherDefault<IdentityHasher>>;

/// Every request metric of one `Apm`.
#[derive(Debug)]
pub(crate) struct Metrics {
    series: RwLock<SeriesMapDebug>,
    overflow: Arc<Series>,
    /// Requests counted in the overflow series.
    overflowed: AtomicU64,
    max_series: usize,
    /// `http.server.active_requests` by method slot and scheme.
    active: [[AtomicI64; 2]; METHODS.len()],
    /// When the cumulative metrics started (OTLP `start_time_unix_nano`).
    pub(crate) start: SystemTime,
    pub(crate) cpu: process::CpuUtilization,
    /// `db.client.operation.duration` and the slow queries.
    pub(crate) db: db::DbMetrics,
    /// `http.client.request.duration` of the outgoing calls.
    pub(crate) client: client::ClientMetrics,
}

/// `SeriesMap` with a `Debug` that prints its size, not every series.
#[derive(Default)]
struct SeriesMapDebug {
    map: SeriesMap,
    len: usize,
}

impl std::fmt::Debug for SeriesMapDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesMap").field("series", &self.len).finish()
    }
}

impl Metrics {
    pub(crate) fn new(max_series: usize) -> Self {
        Metrics {
            series: RwLock::new(SeriesMapDebug::default()),
            overflow: Arc::new(Series::new(SeriesAttrs {
                method: "",
                route: None,
                status: None,
                https: false,
                version: "",
                error_type: None,
                overflow: true,
            })),
            overflowed: AtomicU64::new(0),
            max_series,
            active: Default::default(),
            start: SystemTime::now(),
            cpu: process::CpuUtilization::new(),
            db: db::DbMetrics::new(max_series),
            client: client::ClientMetrics::new(max_series),
        }
    }

    /// A request started: counted in `http.server.active_requests`.
    pub(crate) fn started(&self, method: &Method, https: bool) {
        self.active[method_slot(method)][usize::from(https)].fetch_add(1, Ordering::Relaxed);
    }

    /// A request left out of the metrics ended: no longer in flight, counted
    /// nowhere else.
    pub(crate) fn ended_unrecorded(&self, method: &Method, https: bool) {
        self.active[method_slot(method)][usize::from(https)].fetch_sub(1, Ordering::Relaxed);
    }

    /// A request ended (answered, failed or abandoned): counted once, in the
    /// series of its attributes, and no longer in flight.
    pub(crate) fn record(&self, r: &RequestRecord) {
        self.active[method_slot(&r.method)][usize::from(r.https)].fetch_sub(1, Ordering::Relaxed);
        let slot = method_slot(&r.method);
        let key = Key {
            method: METHODS[slot],
            route: r.route.as_ref().map(|r| r.as_str()),
            status: r.status,
            https: r.https,
            version: protocol_version(r.version),
            error_type: r.error_type,
        };
        // Under the read lock, as long as it takes to count: no `Arc` traffic on
        // the common path (a series that exists).
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map
                .map
                .get(&key.hash())
                .and_then(|v| v.iter().find(|s| s.attrs.matches(&key)))
            {
                Self::count(s, r);
                return;
            }
        }
        let series = self.series_for(&key);
        Self::count(&series, r);
    }

    fn count(series: &Series, r: &RequestRecord) {
        let nanos = u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = series.duration.observe(nanos);
        if let Some(n) = r.request_body_bytes {
            series.request_size.observe(n);
        }
        series.response_size.observe(r.response_body_bytes);
        if r.span.is_sampled() {
            let mut exemplars = series.exemplars.lock().unwrap_or_else(|e| e.into_inner());
            exemplars[bucket] = Some(Exemplar {
                trace_id: r.span.trace_id(),
                span_id: r.span.span_id(),
                value: r.duration,
                time: SystemTime::now(),
            });
        }
    }

    fn series_for(&self, key: &Key<'_>) -> Arc<Series> {
        let hash = key.hash();
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.map.get(&hash).and_then(|v| v.iter().find(|s| s.attrs.matches(key))) {
                return Arc::clone(s);
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.map.get(&hash).and_then(|v| v.iter().find(|s| s.attrs.matches(key))) {
            return Arc::clone(s);
        }
        if map.len >= self.max_series {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(&self.overflow);
        }
        let series = Arc::new(Series::new(key.attrs()));
        map.map.entry(hash).or_default().push(Arc::clone(&series));
        map.len += 1;
        series
    }

    /// Every series, sorted by attributes (the overflow series last, when used).
    pub(crate) fn series(&self) -> Vec<Arc<Series>> {
        let mut all: Vec<Arc<Series>> = {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            map.map.values().flatten().cloned().collect()
        };
        all.sort_by(|a, b| a.attrs.cmp(&b.attrs));
        if self.overflowed.load(Ordering::Relaxed) > 0 {
            all.push(Arc::clone(&self.overflow));
        }
        all
    }

    /// Requests that went to the overflow series.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// `http.server.active_requests` per (method, scheme) with a value, or seen.
    pub(crate) fn active(&self) -> Vec<(&'static str, &'static str, i64)> {
        let mut out = Vec::new();
        for (slot, by_scheme) in self.active.iter().enumerate() {
            for (https, n) in by_scheme.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                // GET over http is always shown, so the gauge exists before traffic.
                if n != 0 || (slot == 0 && https == 0) {
                    out.push((METHODS[slot], if https == 1 { "https" } else { "http" }, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bucket_holds_values_up_to_its_bound() {
        let h = Histogram::new(&DURATION_BOUNDS_NS);
        assert_eq!(h.observe(5_000_000), 0, "exactly 5 ms is in le=0.005");
        assert_eq!(h.observe(5_000_001), 1);
        assert_eq!(h.observe(10_000_000_001), 14, "beyond 10 s is +Inf");
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts.len(), 15);
        assert_eq!(s.sum, 5_000_000 + 5_000_001 + 10_000_000_001);
    }

    #[test]
    fn size_histogram_counts_zero_in_the_first_bucket() {
        let h = Histogram::new(&SIZE_BOUNDS);
        assert_eq!(h.observe(0), 0);
        assert_eq!(h.observe(1), 1);
        assert_eq!(h.observe(20_000), 15);
    }
}
