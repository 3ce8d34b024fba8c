//! Feeds spans finished through the SDK tracer into the same queue as the layer's.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::queue::{Item, SpanQueue};

/// The SDK span processor of the tracer handed to `tracing-opentelemetry`, so that
/// spans from user code share the layer's queue, counters and exporter.
#[derive(Debug)]
pub(crate) struct QueueProcessor {
    pub(crate) queue: Arc<SpanQueue>,
    /// The longest string attribute value kept (the attribute value length
    /// limit): a handler's span may record what a client sent.
    pub(crate) value_limit: usize,
}

/// Cuts every string value longer than `limit` (the OpenTelemetry attribute
/// value length limit), marking it cut.
fn cut_values(attrs: &mut [KeyValue], limit: usize) {
    for kv in attrs {
        match &mut kv.value {
            Value::String(s) if s.as_str().len() > limit => {
                kv.value = Value::from(crate::limits::cut_string(s.as_str(), limit).into_owned());
            }
            Value::Array(Array::String(items)) => {
                for item in items.iter_mut().filter(|i| i.as_str().len() > limit) {
                    *item = StringValue::from(crate::limits::cut_string(item.as_str(), limit).into_owned());
                }
            }
            _ => {}
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, mut span: SpanData) {
        if span.span_context.is_sampled() {
            let limit = self.value_limit;
            cut_values(&mut span.attributes, limit);
            for event in &mut span.events.events {
                cut_values(&mut event.attributes, limit);
            }
            if span.name.len() > limit {
                span.name = crate::limits::cut_string(&span.name, limit).into_owned().into();
            }
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
