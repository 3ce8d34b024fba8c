//! The service the layer wraps around the application.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response, header};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
use opentelemetry_sdk::trace::IdGenerator;

use super::future::ResponseFuture;
use super::in_flight::InFlight;
use super::{RouteFn, Shared};
use crate::record::{RequestRecord, Route};
use crate::trace::propagation::{self, RANDOM_TRACE_ID};

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

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for ApmService<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<super::ResponseBody<ResB>>;
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
        let start = Instant::now();
        let start_time = SystemTime::now();
        let extracted = propagation::extract(req.headers(), shared.propagation);
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

        let route = match &self.route_fn {
            Some(f) => f(req.method(), req.uri()).map(Route::Static),
            None => req.extensions().get::<MatchedPath>().cloned().map(Route::Matched),
        };
        let headers = req.headers();
        let record = Box::new(RequestRecord {
            method: req.method().clone(),
            route,
            uri: req.uri().clone(),
            version: req.version(),
            host: headers.get(header::HOST).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            client: req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0),
            status: None,
            error_type: None,
            panic: None,
            start: start_time,
            duration: Duration::ZERO,
            response_body_bytes: 0,
            span,
            parent_span_id,
            parent_is_remote,
        });
        let state = InFlight {
            shared: Arc::clone(shared),
            start,
            record,
        };
        let called = {
            let _guard = cx.clone().attach();
            catch_unwind(AssertUnwindSafe(|| self.inner.call(req)))
        };
        match called {
            Ok(fut) => ResponseFuture::new(fut, cx, state),
            Err(panic) => ResponseFuture::panicked(cx, state, panic),
        }
    }
}
