//! The client side: a layer for outgoing HTTP calls that records a CLIENT span
//! and writes `traceparent`, `tracestate` and `baggage`, so two services using this
//! crate produce one connected trace.
//!
//! ```no_run
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::ServiceBuilder;
//! # fn demo(apm: &tower_apm::Apm) {
//! let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
//! let client = ServiceBuilder::new().layer(apm.client_layer()).service(http);
//! // client.oneshot(request) inside a handler joins the handler's trace.
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;

use crate::layer::Shared;
use crate::layer::in_flight::status_text;
use crate::record::ClientRecord;
use crate::trace::propagation;

/// A `tower::Layer` for outgoing HTTP calls (a hyper-util client, or anything that
/// is a `tower::Service<http::Request<_>>`). Made by
/// [`Apm::client_layer`](crate::Apm::client_layer).
///
/// The CLIENT span is a child of the context current when the call is made
/// (inside a handler wrapped by [`ApmLayer`](crate::ApmLayer), the server span),
/// and ends when the response head arrives or the call fails.
#[derive(Debug, Clone)]
pub struct ClientLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S> tower::Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`ClientLayer`].
#[derive(Debug, Clone)]
pub struct ClientService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// One outgoing call in flight: its record, ended by [`ClientInFlight::finish`].
/// Shared by [`ClientService`] and the `reqwest` middleware, so both clients make
/// the same span and the same metric.
#[derive(Debug)]
pub(crate) struct ClientInFlight {
    shared: Arc<Shared>,
    record: Box<ClientRecord>,
}

impl ClientInFlight {
    /// Starts a call about to be sent: a CLIENT span under the current context
    /// (a new root without one), its `traceparent`/`tracestate`/`baggage`
    /// written to `headers`.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        method: Method,
        uri: Uri,
        version: Version,
        headers: &mut HeaderMap,
    ) -> ClientInFlight {
        let cx = opentelemetry::Context::current();
        let (span, parent_span_id) = shared.child_of(cx.span().span_context());
        propagation::inject(&span, &cx, headers, shared.propagation);
        ClientInFlight {
            shared: Arc::clone(shared),
            record: Box::new(ClientRecord {
                method,
                uri,
                version,
                status: None,
                error_type: None,
                start: Instant::now(),
                duration: Duration::ZERO,
                span,
                parent_span_id,
            }),
        }
    }

    /// The protocol version the response came with.
    #[cfg(feature = "reqwest")]
    pub(crate) fn set_version(&mut self, version: Version) {
        self.record.version = version;
    }

    /// Ends the call: a response with `status` (its `error.type` for 4xx and
    /// 5xx), or none with `error_type`.
    pub(crate) fn finish(self, status: Option<u16>, error_type: Option<&'static str>) {
        let ClientInFlight { shared, mut record } = self;
        record.duration = record.start.elapsed();
        record.status = status;
        record.error_type = error_type.or_else(|| status.and_then(status_text));
        shared.recorder.finish_client(record);
    }
}

impl<S, B, RB> tower::Service<Request<B>> for ClientService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if shared.disabled {
            return ClientFuture {
                inner: self.inner.call(req),
                state: None,
            };
        }
        let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
        let state = ClientInFlight::start(shared, method, uri, version, req.headers_mut());
        ClientFuture {
            inner: self.inner.call(req),
            state: Some(state),
        }
    }
}

pin_project! {
    /// The future returned by [`ClientService`].
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        state: Option<ClientInFlight>,
    }

    impl<F> PinnedDrop for ClientFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(state) = this.project().state.take() {
                state.finish(None, Some("cancelled"));
            }
        }
    }
}

impl<F> std::fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(state) = this.state.take() {
            match &out {
                Ok(res) => state.finish(Some(res.status().as_u16()), None),
                Err(_) => state.finish(None, Some("_OTHER")),
            }
        }
        Poll::Ready(out)
    }
}
