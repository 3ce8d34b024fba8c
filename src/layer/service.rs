//! The service the layer wraps around the application.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::trace::IdGenerator;

use super::client_addr::PeerAddr;
use super::future::ResponseFuture;
use super::in_flight::InFlight;
use super::{RouteFn, Shared};
use crate::record::{RequestRecord, Route, ShortStr};
use crate::trace::propagation::{self, RANDOM_TRACE_ID, RequestHeaders};

/// The service made by [`ApmLayer`](super::ApmLayer): records each request of the
/// inner service as a server span, with the span's context current inside it.
#[derive(Clone)]
pub struct ApmService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) route_fn: Option<RouteFn>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ApmService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApmService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ApmService<S> {
    /// The client's `x-request-id` when it is valid, else a new random one (32
    /// hex digits); nothing when the access log is off.
    fn request_id(&self, found: &RequestHeaders<'_>) -> ShortStr {
        if !self.shared.recorder.wants_request_id() {
            return ShortStr::new(b"");
        }
        if let Some(v) = found.request_id.filter(|v| crate::logs::valid_request_id(v.as_bytes())) {
            return ShortStr::new(v.as_bytes());
        }
        let id = self.shared.ids.new_trace_id().to_bytes();
        let mut hex = [0u8; 32];
        for (i, b) in id.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        ShortStr::new(&hex)
    }

    /// Starts the request's record: everything the sinks need from the request.
    fn in_flight<B>(
        &self,
        req: &Request<B>,
        found: &RequestHeaders<'_>,
        span: SpanContext,
        parent_span_id: SpanId,
        parent_is_remote: bool,
        route: Option<Route>,
    ) -> InFlight {
        let start = Instant::now();
        let uri = req.uri();
        // Every client-controlled string is cut to the value limit before it
        // is kept: a client chooses how long its headers are.
        let limit = self.shared.value_limit;
        let authority = match uri.authority() {
            Some(a) => Some(ShortStr::cut(a.as_str().as_bytes(), limit)),
            None => found.host.map(|h| ShortStr::cut(h.as_bytes(), limit)),
        };
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        // axum's `ConnectInfo` first (one lookup, as before), then ours: a second
        // lookup only for servers that do not insert `ConnectInfo`.
        let peer = match req.extensions().get::<ConnectInfo<std::net::SocketAddr>>() {
            Some(c) => Some(c.0),
            None => req.extensions().get::<PeerAddr>().map(|p| p.0),
        };
        let trusted = &self.shared.trusted_proxies;
        let mut forwarded_client = None;
        let mut claimed_forwarded = None;
        if found.forwarding != 0 {
            let peer_trusted = peer.is_some_and(|p| !trusted.is_empty() && trusted.trusts(p.ip()));
            if peer_trusted {
                forwarded_client = trusted.client_behind(req.headers());
            }
            // Forwarding headers a trusted proxy did not write are kept for
            // the security events, never believed.
            if self.shared.recorder.wants_security() {
                claimed_forwarded = trusted
                    .claim(peer_trusted, found.forwarding, req.headers())
                    .map(|(name, value)| ShortStr::claim(name, value, limit));
            }
        }
        self.shared.recorder.started(req.method(), https);
        let record = self.shared.recorder.boxed(RequestRecord {
            method: req.method().clone(),
            route,
            target: ShortStr::cut(target.as_bytes(), limit),
            https,
            version: req.version(),
            authority,
            user_agent: found.user_agent.map(|h| ShortStr::cut(h.as_bytes(), limit)),
            client: peer,
            forwarded_client,
            claimed_forwarded,
            security_events: None,
            status: None,
            error_type: None,
            panic: None,
            start,
            duration: Duration::ZERO,
            response_body_bytes: 0,
            request_body_bytes: found.content_length.and_then(|v| parse_u64(v.as_bytes())),
            request_id: self.request_id(found),
            span,
            parent_span_id,
            parent_is_remote,
            db: crate::db::DbTotals::default(),
        });
        InFlight {
            shared: Arc::clone(&self.shared),
            record,
        }
    }

    /// The request's route template: from the route function, else axum's.
    fn route<B>(&self, req: &Request<B>) -> Option<Route> {
        match &self.route_fn {
            Some(f) => f(req.method(), req.uri()).map(Route::Static),
            None => req.extensions().get::<MatchedPath>().cloned().map(Route::Matched),
        }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for ApmService<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResB::Error: Into<axum::BoxError>,
{
    /// Responses come back with axum's [`Body`](axum::body::Body): an axum body
    /// passes through without another allocation, and the record travels inside
    /// it only when a sink will read it.
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        if shared.disabled {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        let found = RequestHeaders::scan(req.headers());
        let extracted = propagation::extract(req.headers(), &found, shared.propagation);
        let parent = extracted.parent;
        let trace_id = match &parent {
            Some(p) => p.trace_id(),
            None => shared.ids.new_trace_id(),
        };
        let sampled = shared.sampler.should_sample(parent.as_ref(), trace_id);
        let (parent_span_id, parent_is_remote, state, flags) = match parent {
            Some(p) => (p.span_id(), true, p.trace_state().clone(), p.trace_flags()),
            None => (
                SpanId::INVALID,
                false,
                TraceState::NONE,
                TraceFlags::new(RANDOM_TRACE_ID),
            ),
        };
        let flags = flags.with_sampled(sampled);
        let span = SpanContext::new(trace_id, shared.ids.new_span_id(), flags, false, state);
        let cx = extracted.cx.with_remote_span_context(span.clone());

        // A request no sink will read (not sampled, and no sink wants unsampled
        // records) only carries its context: no record, no clock reads.
        let state = if sampled || shared.recorder.wants_unsampled() {
            let route = self.route(&req);
            // Routes the user left out of the numbers: no record at all.
            let excluded = &shared.excluded;
            if !excluded.is_empty()
                && route
                    .as_ref()
                    .is_some_and(|r| excluded.excludes(req.method(), r.as_str()))
            {
                None
            } else {
                Some(self.in_flight(&req, &found, span, parent_span_id, parent_is_remote, route))
            }
        } else {
            None
        };
        // The context is made current while the response future is polled, where
        // handlers run; the inner `call` only routes. (Attaching it around `call`
        // too, and catching panics there, measured at ~250 instructions a request.)
        ResponseFuture::new(self.inner.call(req), cx, state)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A `Content-Length` value: ASCII digits only, as RFC 9110 has it.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| match d {
        b'0'..=b'9' => Some(n * 10 + u64::from(d - b'0')),
        _ => None,
    })
}
