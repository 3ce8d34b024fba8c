//! Feeds spans finished through the SDK tracer into the same queue as the layer's.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::queue::{Item, SpanQueue};

/// The SDK span processor of the tracer handed to `tracing-opentelemetry`, so that
/// spans from user code share the layer's queue, counters and exporter.
#[derive(Debug)]
pub(crate) struct QueueProcessor {
    pub(crate) queue: Arc<SpanQueue>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.queue.push(Item::Sdk(Box::new(span)));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous and deadline-bound: use `Apm::force_flush`.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // The export thread is owned by `Apm`; `Apm::shutdown` stops it.
        Ok(())
    }
}
