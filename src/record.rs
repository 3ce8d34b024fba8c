//! The one record each request leaves behind, and the sinks that read it.
//!
//! The request path (`layer/`) fills a [`RequestRecord`] and hands it to the
//! [`Recorder`] when the response body ends, or when the request is dropped. It
//! knows nothing about any sink; each sink is its own module reading that one record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::MatchedPath;
use http::{HeaderValue, Method, Uri, Version};
use opentelemetry::trace::{SpanContext, SpanId};

use crate::export::{Item, SpanQueue};

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

/// Everything known about one finished (or abandoned) server request.
#[derive(Debug)]
pub(crate) struct RequestRecord {
    pub(crate) method: Method,
    pub(crate) route: Option<Route>,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) client: Option<SocketAddr>,
    /// `None` when the request was dropped before a response existed.
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<&'static str>,
    /// The panic message when the handler panicked.
    pub(crate) panic: Option<String>,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) response_body_bytes: u64,
    pub(crate) span: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
}

/// Everything known about one outgoing call made through the client layer.
#[derive(Debug)]
pub(crate) struct ClientRecord {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<&'static str>,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) span: SpanContext,
    pub(crate) parent_span_id: SpanId,
}

/// Hands finished records to the sinks. Today the sink is the span exporter; the
/// metrics, access-log and security sinks read the same record.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    spans: Option<Arc<SpanQueue>>,
}

impl Recorder {
    pub(crate) fn new(spans: Option<Arc<SpanQueue>>) -> Self {
        Recorder { spans }
    }

    pub(crate) fn finish(&self, record: Box<RequestRecord>) {
        if let Some(queue) = &self.spans {
            if record.span.is_sampled() {
                queue.push(Item::Server(record));
            }
        }
    }

    pub(crate) fn finish_client(&self, record: Box<ClientRecord>) {
        if let Some(queue) = &self.spans {
            if record.span.is_sampled() {
                queue.push(Item::Client(record));
            }
        }
    }
}
