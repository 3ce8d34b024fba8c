//! The request path: the `tower::Layer` users add, the service it wraps, the
//! response future and the response body that ends each request's record.
//!
//! Nothing here knows about exporters or any other sink: the layer fills one
//! [`RequestRecord`](crate::record::RequestRecord) per request and hands it to the
//! recorder when the response body ends, or when the request is dropped.
//!
//! When each part runs:
//! - [`ApmService::call`]: extract `traceparent`/`tracestate`/`baggage`, decide
//!   sampling, start the record (only when a sink will read it: today, when the
//!   request is sampled).
//! - [`ResponseFuture`]: the server span's context is current during every poll,
//!   which is where handlers run; a panic while polling becomes a 500 response.
//! - [`ResponseBody`](body::ResponseBody): only around a recorded response; counts bytes; the record
//!   ends when the body ends (or is dropped, for example when the client goes
//!   away). Responses leave as axum's `Body` either way, so an unrecorded axum
//!   response passes through without an allocation.

mod body;
pub(crate) mod client_addr;
mod future;
pub(crate) mod in_flight;
mod service;

use std::sync::Arc;

use http::{Method, Uri};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

use crate::trace::propagation::RANDOM_TRACE_ID;

pub use future::ResponseFuture;
pub use service::ApmService;

use crate::config::Propagation;
use crate::record::Recorder;
use crate::trace::Sampler;

/// Routes left out of the numbers: by template, and by a predicate on the
/// method and template.
#[derive(Default)]
pub(crate) struct Excluded {
    pub(crate) templates: Vec<Box<str>>,
    pub(crate) when: Option<ExcludeFn>,
}

/// The predicate of [`ApmBuilder::exclude_when`](crate::ApmBuilder::exclude_when).
pub(crate) type ExcludeFn = Arc<dyn Fn(&http::Method, &str) -> bool + Send + Sync>;

impl Excluded {
    /// Whether nothing is excluded (then the check costs one branch).
    pub(crate) fn is_empty(&self) -> bool {
        self.templates.is_empty() && self.when.is_none()
    }

    pub(crate) fn excludes(&self, method: &http::Method, route: &str) -> bool {
        self.templates.iter().any(|t| &**t == route) || self.when.as_ref().is_some_and(|f| f(method, route))
    }
}

impl std::fmt::Debug for Excluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Excluded")
            .field("templates", &self.templates)
            .field("when", &self.when.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// What every request of one `Apm` shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) disabled: bool,
    pub(crate) recorder: Recorder,
    pub(crate) sampler: Sampler,
    pub(crate) propagation: Propagation,
    pub(crate) ids: RandomIdGenerator,
    pub(crate) trusted_proxies: client_addr::TrustedProxies,
    /// The longest client-controlled value kept, in bytes.
    pub(crate) value_limit: usize,
    /// Whether the crate's own operator routes are recorded like any other.
    pub(crate) record_operator_routes: bool,
    /// Route templates left out of spans, metrics, logs and alerts.
    pub(crate) excluded: Excluded,
    /// Whether a [`Database`](crate::db::Database) was made: requests then
    /// count their handler's queries.
    pub(crate) db_used: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The context of a new CLIENT span under `parent` (the span current when
    /// an outgoing call or a query starts), and its parent's id; without a
    /// parent, a new root, sampled by the configured sampler.
    pub(crate) fn child_of(&self, parent: &SpanContext) -> (SpanContext, SpanId) {
        let (trace_id, flags, parent_span_id, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                parent.trace_flags(),
                parent.span_id(),
                parent.trace_state().clone(),
            )
        } else {
            let trace_id = self.ids.new_trace_id();
            let sampled = self.sampler.should_sample(None, trace_id);
            (
                trace_id,
                TraceFlags::new(RANDOM_TRACE_ID).with_sampled(sampled),
                SpanId::INVALID,
                TraceState::NONE,
            )
        };
        let span = SpanContext::new(trace_id, self.ids.new_span_id(), flags, false, state);
        (span, parent_span_id)
    }
}

type RouteFn = Arc<dyn Fn(&Method, &Uri) -> Option<&'static str> + Send + Sync>;

/// The `tower::Layer` that records every request: add it once with
/// `Router::layer(apm.layer())` (or around any `tower::Service` that takes
/// `http::Request`s). Made by [`Apm::layer`](crate::Apm::layer).
///
/// The route template (`http.route`, and the span name `{method} {route}`) comes
/// from axum's `MatchedPath`, which axum provides to layers added with
/// `Router::layer` or `Router::route_layer`. Around a plain hyper service, give a
/// route function with [`ApmLayer::route_with`]. Without a route the span is named
/// by the method alone (and every request shares one metrics series): a raw path
/// never becomes a span name.
///
/// The client's address (`client.address`, the access log, the security
/// detectors) comes from axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info`), else from a
/// [`PeerAddr`](crate::PeerAddr) extension, which a hyper server inserts per
/// connection. `examples/hyper.rs` shows both for hyper.
#[derive(Clone)]
pub struct ApmLayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) route_fn: Option<RouteFn>,
}

impl std::fmt::Debug for ApmLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApmLayer")
            .field("shared", &self.shared)
            .field("route_fn", &self.route_fn.is_some())
            .finish()
    }
}

impl ApmLayer {
    /// Sets the function that maps a request to its route template, for services
    /// without axum's router (plain hyper: see `examples/hyper.rs`). It must return
    /// a template (`"/users/{id}"`), never the raw path, and `None` when no route
    /// matches. The template names the span (`GET /users/{id}`), is its
    /// `http.route`, and keys the request metrics. When set, it is used instead of
    /// axum's `MatchedPath`.
    ///
    /// ```
    /// # fn demo(apm: &tower_apm::Apm) {
    /// let layer = apm.layer().route_with(|_method, uri| {
    ///     if uri.path().starts_with("/users/") { Some("/users/{id}") } else { None }
    /// });
    /// # }
    /// ```
    pub fn route_with<F>(mut self, f: F) -> Self
    where
        F: Fn(&Method, &Uri) -> Option<&'static str> + Send + Sync + 'static,
    {
        self.route_fn = Some(Arc::new(f));
        self
    }
}

impl<S> tower::Layer<S> for ApmLayer {
    type Service = ApmService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApmService {
            inner,
            shared: Arc::clone(&self.shared),
            route_fn: self.route_fn.clone(),
        }
    }
}
