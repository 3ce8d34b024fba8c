//! The response future: runs the handler inside the server span's context and
//! turns a panic into a 500 response.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Response, StatusCode};
use pin_project_lite::pin_project;

use super::body::ResponseBody;

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
use super::in_flight::InFlight;

pin_project! {
    /// The future returned by [`ApmService`](super::ApmService).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        cx: Option<opentelemetry::Context>,
        state: Option<InFlight>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the response existed: the client went away or a
            // timeout layer gave up. The request still ends in one record.
            if let Some(state) = this.project().state.take() {
                let mut state = state;
                state.record.error_type.get_or_insert("cancelled");
                state.finish();
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, cx: opentelemetry::Context, state: Option<InFlight>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            cx: Some(cx),
            state,
        }
    }

    pub(crate) fn passthrough(inner: F) -> Self {
        ResponseFuture {
            inner: Some(inner),
            cx: None,
            state: None,
        }
    }
}

/// The panic's message when it is a string, as `std` prints it.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Sets the request's `x-request-id` on its response (when the access log
/// gave it one).
#[inline]
fn set_request_id(headers: &mut http::HeaderMap, id: &[u8]) {
    if !id.is_empty() {
        if let Ok(v) = http::HeaderValue::from_bytes(id) {
            headers.insert(X_REQUEST_ID, v);
        }
    }
}

/// The 500 of a panicking handler: recorded, and with its `x-request-id`
/// like any other response.
fn internal_error(state: Option<InFlight>) -> Response<Body> {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    if let Some(mut s) = state {
        set_request_id(res.headers_mut(), s.record.request_id.as_bytes());
        s.record.error_type = Some("panic");
        s.set_status(500);
        *res.body_mut() = Body::new(ResponseBody::<Body>::empty(Some(s)));
    }
    res
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(internal_error(this.state.take())));
        };
        // The request's database totals are this thread's while its handler is
        // polled, when a `Database` exists.
        let db = match this.state.as_ref() {
            Some(s) if s.shared.db_used.load(std::sync::atomic::Ordering::Relaxed) => {
                Some(crate::db::enter(s.record.db))
            }
            _ => None,
        };
        let polled = {
            let _guard = this.cx.as_ref().map(|c| c.clone().attach());
            catch_unwind(AssertUnwindSafe(|| inner.poll(cx)))
        };
        if let (Some(previous), Some(s)) = (db, this.state.as_mut()) {
            s.record.db = crate::db::leave(previous);
        }
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(mut res))) => {
                crate::shutdown::mark_close_if_draining(&mut res);
                // Unrecorded, an axum `Body` passes through as it is (`Body::new`
                // does not box a `Body` again); recorded, it is wrapped once here
                // rather than by axum after us.
                let res = match this.state.take() {
                    None => res.map(Body::new),
                    // An operator route (a probe, a scrape, the status page)
                    // is not traffic.
                    Some(mut s)
                        if !s.shared.record_operator_routes
                            && res.extensions().get::<crate::operator::OperatorRoute>().is_some() =>
                    {
                        s.set_status(res.status().as_u16());
                        s.finish_excluded();
                        res.map(Body::new)
                    }
                    Some(mut s) => {
                        s.set_status(res.status().as_u16());
                        let mut res = res;
                        if s.shared.recorder.wants_security() {
                            s.record.security_events = res
                                .extensions_mut()
                                .remove::<crate::security::ReportedEvents>()
                                .map(Box::new);
                        }
                        set_request_id(res.headers_mut(), s.record.request_id.as_bytes());
                        res.map(|body| Body::new(ResponseBody::new(body, Some(s))))
                    }
                };
                Poll::Ready(Ok(res))
            }
            Ok(Poll::Ready(Err(e))) => {
                if let Some(mut s) = this.state.take() {
                    s.record.error_type.get_or_insert("_OTHER");
                    s.finish();
                }
                Poll::Ready(Err(e))
            }
            Err(panic) => {
                this.inner.set(None);
                if let Some(s) = this.state.as_mut() {
                    let mut message = panic_message(panic.as_ref());
                    crate::limits::cut_in_place(&mut message, s.shared.value_limit);
                    s.record.panic = Some(message);
                }
                Poll::Ready(Ok(internal_error(this.state.take())))
            }
        }
    }
}
