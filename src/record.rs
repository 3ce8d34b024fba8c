//! The one record each request leaves behind, and the sinks that read it.
//!
//! The request path (`layer/`) fills a [`RequestRecord`] and hands it to the
//! [`Recorder`] when the response body ends, or when the request is dropped. It
//! knows nothing about any sink; each sink is its own module reading that one record.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use http::{Method, Uri, Version};
use opentelemetry::trace::{SpanContext, SpanId};

use crate::export::{Item, SpanQueue};
use crate::logs::AccessLog;
use crate::metrics::Metrics;
use crate::security::monitor::Monitor;

/// A route template: `&'static` from a user route function, or axum's
/// `MatchedPath` (a shared string). Neither allocates per request.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Static(&'static str),
    Matched(MatchedPath),
}

impl Route {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Route::Static(s) => s,
            Route::Matched(m) => m.as_str(),
        }
    }
}

/// A small owned copy of a request string (path, host, user agent).
///
/// Copied rather than shared: a `Bytes` slice of hyper's read buffer held in the
/// export queue would keep that whole buffer alive, and cloning a not-yet-shared
/// `Bytes` allocates. Strings up to 46 bytes (most paths and hosts) stay inline.
#[derive(Clone)]
pub(crate) enum ShortStr {
    Inline { len: u8, buf: [u8; SHORT_INLINE] },
    Heap(Box<[u8]>),
}

const SHORT_INLINE: usize = 46;

impl ShortStr {
    /// Copies `bytes` as they are; they are checked for UTF-8 once, when read on
    /// the export thread, not on the request path.
    pub(crate) fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= SHORT_INLINE {
            let mut buf = [0u8; SHORT_INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            ShortStr::Inline {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            ShortStr::Heap(bytes.into())
        }
    }

    /// Copies `bytes` cut to at most `limit` bytes (at a character boundary,
    /// ending in an ellipsis) when they are longer: a client chooses how long
    /// its headers are, the crate does not keep more than the limit. Inlined,
    /// so the common case costs one comparison more than [`ShortStr::new`].
    #[inline]
    pub(crate) fn cut(bytes: &[u8], limit: usize) -> Self {
        if bytes.len() <= limit {
            return ShortStr::new(bytes);
        }
        Self::cut_long(bytes, limit)
    }

    #[cold]
    #[inline(never)]
    fn cut_long(bytes: &[u8], limit: usize) -> Self {
        let end = crate::limits::cut_len(bytes, limit).unwrap_or(bytes.len());
        let mut v = Vec::with_capacity(end + crate::limits::CUT_MARK.len());
        v.extend_from_slice(&bytes[..end]);
        if limit >= crate::limits::CUT_MARK.len() {
            v.extend_from_slice(crate::limits::CUT_MARK.as_bytes());
        }
        ShortStr::Heap(v.into_boxed_slice())
    }

    /// A forwarding header no trusted proxy wrote, as `name: value`, the value
    /// cut to `limit` bytes.
    #[cold]
    pub(crate) fn claim(name: &str, value: &[u8], limit: usize) -> Self {
        let value = ShortStr::cut(value, limit);
        let mut v = Vec::with_capacity(name.len() + 2 + value.as_bytes().len());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(b": ");
        v.extend_from_slice(value.as_bytes());
        ShortStr::new(&v)
    }

    /// The bytes it holds on the heap (0 when inline).
    pub(crate) fn heap_len(&self) -> usize {
        match self {
            ShortStr::Inline { .. } => 0,
            ShortStr::Heap(b) => b.len(),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            ShortStr::Inline { len, buf } => &buf[..usize::from(*len)],
            ShortStr::Heap(b) => b,
        }
    }

    /// The text, or `""` when the bytes were not UTF-8 (a header with obs-text).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Everything known about one finished (or abandoned) server request.
#[derive(Debug)]
pub(crate) struct RequestRecord {
    pub(crate) method: Method,
    pub(crate) route: Option<Route>,
    /// The request target as sent: path and query.
    pub(crate) target: ShortStr,
    pub(crate) https: bool,
    pub(crate) version: Version,
    /// `host[:port]` from the URI authority (HTTP/2) or the `Host` header.
    pub(crate) authority: Option<ShortStr>,
    pub(crate) user_agent: Option<ShortStr>,
    /// The connection's peer.
    pub(crate) client: Option<SocketAddr>,
    /// The client a trusted proxy forwarded, when the peer is one.
    pub(crate) forwarded_client: Option<IpAddr>,
    /// A forwarding header no trusted proxy wrote (any but the configured one,
    /// or that one from a peer that is not a trusted proxy), by name and value:
    /// recorded for the security events, never believed. Only kept when
    /// security monitoring is on.
    ///
    /// Kept as `name: value` in one string: a separate name field made the
    /// record larger, and moving it into its box then cost a `memcpy` call
    /// (~90 instructions a request, measured with `scripts/instr.sh`).
    pub(crate) claimed_forwarded: Option<ShortStr>,
    /// Security events the handler returned with its response.
    pub(crate) security_events: Option<Box<crate::security::ReportedEvents>>,
    /// `None` when the request was dropped before a response existed.
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<&'static str>,
    /// The panic message when the handler panicked.
    pub(crate) panic: Option<String>,
    /// Monotonic start; the export thread turns it into wall-clock time once per
    /// batch, so the request path reads the clock once at each end.
    pub(crate) start: Instant,
    pub(crate) duration: Duration,
    pub(crate) response_body_bytes: u64,
    /// `Content-Length` of the request, when it had one.
    pub(crate) request_body_bytes: Option<u64>,
    /// The request id (from a valid `x-request-id`, or generated); empty when
    /// the access log is off.
    pub(crate) request_id: ShortStr,
    pub(crate) span: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    /// The database queries its handler awaited.
    pub(crate) db: crate::db::DbTotals,
}

impl RequestRecord {
    /// The client's address: the one a trusted proxy forwarded, else the peer's.
    pub(crate) fn client_ip(&self) -> Option<IpAddr> {
        self.forwarded_client.or(self.client.map(|c| c.ip()))
    }

    /// `url.path` and `url.query` from the request target.
    pub(crate) fn path_and_query(&self) -> (&str, Option<&str>) {
        let t = self.target.as_str();
        match t.bytes().position(|b| b == b'?') {
            Some(i) => (&t[..i], Some(&t[i + 1..])),
            None => (t, None),
        }
    }
}

/// Everything known about one outgoing call made through the client layer.
#[derive(Debug)]
pub(crate) struct ClientRecord {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<&'static str>,
    pub(crate) start: Instant,
    pub(crate) duration: Duration,
    pub(crate) span: SpanContext,
    pub(crate) parent_span_id: SpanId,
}

/// Everything known about one database query timed through [`crate::db`].
#[derive(Debug)]
pub(crate) struct DbRecord {
    pub(crate) config: Arc<crate::db::DbConfig>,
    /// Its operation, table and statement, shared with every query like it.
    pub(crate) shape: Arc<crate::db::shape::QueryShape>,
    pub(crate) error_type: Option<std::borrow::Cow<'static, str>>,
    /// The SQLSTATE of a PostgreSQL error.
    pub(crate) status_code: Option<String>,
    pub(crate) start: Instant,
    pub(crate) duration: Duration,
    pub(crate) span: SpanContext,
    pub(crate) parent_span_id: SpanId,
}

thread_local! {
    /// One emptied record box per thread, reused without a lock.
    static SPARE_RECORD: Cell<Option<Box<RequestRecord>>> = const { Cell::new(None) };
}

/// Hands finished records to the sinks: the metrics (every request) and the
/// span exporter (sampled requests). The access-log and security sinks read the
/// same record.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    spans: Option<Arc<SpanQueue>>,
    metrics: Option<Arc<Metrics>>,
    access: Option<Arc<AccessLog>>,
    security: Option<Arc<Monitor>>,
}

impl Recorder {
    pub(crate) fn new(
        spans: Option<Arc<SpanQueue>>,
        metrics: Option<Arc<Metrics>>,
        access: Option<Arc<AccessLog>>,
        security: Option<Arc<Monitor>>,
    ) -> Self {
        Recorder {
            spans,
            metrics,
            access,
            security,
        }
    }

    /// Whether any sink reads records of requests that are not sampled: the
    /// metrics and the access log do. Without them an unsampled request only
    /// carries its context.
    pub(crate) fn wants_unsampled(&self) -> bool {
        self.metrics.is_some() || self.access.is_some() || self.security.is_some()
    }

    /// Whether security monitoring reads the records.
    pub(crate) fn wants_security(&self) -> bool {
        self.security.is_some()
    }

    /// Whether requests get a request id (the access log is on).
    pub(crate) fn wants_request_id(&self) -> bool {
        self.access.is_some()
    }

    /// A request started (counted in flight until [`Recorder::finish`]).
    pub(crate) fn started(&self, method: &Method, https: bool) {
        if let Some(m) = &self.metrics {
            m.started(method, https);
        }
    }

    /// Boxes a new record, reusing a box when one is waiting: this thread's last
    /// unsampled record's, or one the export thread has emptied.
    // Inlined into the layer so the new record is written straight into its
    // box: called, it is built on the stack and copied with `memcpy` (~85
    // instructions a request, measured with `scripts/instr.sh`).
    #[inline(always)]
    pub(crate) fn boxed(&self, record: RequestRecord) -> Box<RequestRecord> {
        let spare = SPARE_RECORD
            .with(Cell::take)
            .or_else(|| self.spans.as_ref().and_then(|q| q.reuse_record()));
        if let Some(mut spare) = spare {
            *spare = record;
            return spare;
        }
        Box::new(record)
    }

    /// Keeps the box of a record no span was made from for this thread's next
    /// request (no lock), or hands it to the shared pool.
    fn recycle(&self, record: Box<RequestRecord>) {
        let record = SPARE_RECORD.with(|slot| match slot.take() {
            None => {
                slot.set(Some(record));
                None
            }
            Some(kept) => {
                slot.set(Some(kept));
                Some(record)
            }
        });
        if let (Some(record), Some(queue)) = (record, &self.spans) {
            queue.recycle_record(record);
        }
    }

    pub(crate) fn finish(&self, record: Box<RequestRecord>) {
        if let Some(m) = &self.metrics {
            m.record(&record);
        }
        if let Some(a) = &self.access {
            a.write(&record);
        }
        if let Some(s) = &self.security {
            s.observe(&record);
        }
        if let Some(queue) = &self.spans {
            if record.span.is_sampled() {
                queue.push(Item::Server(record));
                return;
            }
        }
        self.recycle(record);
    }

    /// Ends the record of an operator request (a probe, a scrape, the status
    /// page): no span, no metrics, no access line; the security monitor still
    /// sees it (guessing an operator token is an attack like any other).
    pub(crate) fn finish_excluded(&self, record: Box<RequestRecord>) {
        if let Some(m) = &self.metrics {
            m.ended_unrecorded(&record.method, record.https);
        }
        if let Some(s) = &self.security {
            s.observe(&record);
        }
        self.recycle(record);
    }

    /// Boxes a query record, reusing a box the export thread emptied when one
    /// is waiting.
    pub(crate) fn boxed_db(&self, record: DbRecord) -> Box<DbRecord> {
        match self.spans.as_ref().and_then(|q| q.reuse_db()) {
            Some(mut spare) => {
                *spare = record;
                spare
            }
            None => Box::new(record),
        }
    }

    /// A database query ended: the histogram (and the slow-query counter), and
    /// its span when sampled.
    pub(crate) fn finish_db(&self, record: Box<DbRecord>, slow: bool) {
        if let Some(m) = &self.metrics {
            m.db.record(&record, slow);
        }
        if let Some(queue) = &self.spans {
            if record.span.is_sampled() {
                queue.push(Item::Db(record));
            }
        }
    }

    /// An outgoing call ended: `http.client.request.duration`, and its span
    /// when sampled.
    pub(crate) fn finish_client(&self, record: Box<ClientRecord>) {
        if let Some(m) = &self.metrics {
            m.client.record(&record);
        }
        if let Some(queue) = &self.spans {
            if record.span.is_sampled() {
                queue.push(Item::Client(record));
            }
        }
    }
}
