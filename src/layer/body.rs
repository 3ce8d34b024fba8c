//! The response body wrapper: the request's record ends when the body does.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::in_flight::InFlight;

pin_project! {
    /// The body of a response from [`ApmService`](super::ApmService). It passes the
    /// inner body through unchanged and ends the request's span when the last frame
    /// has been sent, when the body fails, or when it is dropped unfinished (the
    /// client went away).
    pub(crate) struct ResponseBody<B> {
        #[pin]
        inner: Option<B>,
        state: Option<InFlight>,
    }

    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(state) = this.project().state.take() {
                state.finish();
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("in_flight", &self.state.is_some())
            .finish()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, state: Option<InFlight>) -> Self {
        ResponseBody {
            inner: Some(inner),
            state,
        }
    }

    /// An empty body (the 500 answer to a panicking handler).
    pub(crate) fn empty(state: Option<InFlight>) -> Self {
        ResponseBody { inner: None, state }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if this.state.is_none() {
            // Nothing to record (unsampled, or already finished): pass through.
            return match this.inner.as_pin_mut() {
                Some(inner) => inner.poll_frame(cx),
                None => Poll::Ready(None),
            };
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            if let Some(state) = this.state.take() {
                state.finish();
            }
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(state), Some(data)) = (this.state.as_mut(), f.data_ref()) {
                    state.record.response_body_bytes += bytes::Buf::remaining(data) as u64;
                }
            }
            Some(Err(_)) => {
                if let Some(mut state) = this.state.take() {
                    state.record.error_type.get_or_insert("_OTHER");
                    state.finish();
                }
            }
            None => {
                if let Some(state) = this.state.take() {
                    state.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}
