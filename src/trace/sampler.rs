//! Head sampling: which new traces are recorded and exported.

use opentelemetry::trace::{SpanContext, TraceId};

/// Which traces the layer records, as `OTEL_TRACES_SAMPLER` names them.
///
/// The decision is made once per request, when the server span starts; child spans
/// (from `tracing` inside the handler, or the client layer) follow their parent.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Sampler {
    /// Record every trace (`always_on`).
    AlwaysOn,
    /// Record no trace (`always_off`); context is still propagated downstream.
    AlwaysOff,
    /// Record the given fraction of traces, decided from the trace id so every
    /// service makes the same decision for one trace (`traceidratio`).
    TraceIdRatio(f64),
    /// Follow the sampled flag of an incoming `traceparent`; use the inner sampler
    /// for requests that start a new trace (`parentbased_*`, the default being
    /// `parentbased_always_on`).
    ParentBased(Box<Sampler>),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
    }
}

impl Sampler {
    /// Decides whether the span that starts trace `trace_id` under `parent` (a
    /// remote parent from `traceparent`, if any) is sampled.
    pub(crate) fn should_sample(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(ratio) => ratio_samples(*ratio, trace_id),
            Sampler::ParentBased(root) => match parent {
                Some(parent) => parent.is_sampled(),
                None => root.should_sample(None, trace_id),
            },
        }
    }

    /// The equivalent SDK sampler, used for spans created through the SDK tracer
    /// (for example by `tracing-opentelemetry`).
    pub(crate) fn to_sdk(&self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler as Sdk;
        match self {
            Sampler::AlwaysOn => Sdk::AlwaysOn,
            Sampler::AlwaysOff => Sdk::AlwaysOff,
            Sampler::TraceIdRatio(r) => Sdk::TraceIdRatioBased(*r),
            Sampler::ParentBased(root) => Sdk::ParentBased(Box::new(root.to_sdk())),
        }
    }
}

/// The same rule as the SDK's `TraceIdRatioBased`, so a trace sampled here is
/// sampled by every SDK-based service using the same ratio.
fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = (u128::from_be_bytes(trace_id.to_bytes()) as u64) >> 1;
    low < bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceState};

    fn remote(sampled: bool) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(TraceId::from(1u128), SpanId::from(1u64), flags, true, TraceState::NONE)
    }

    #[test]
    fn parent_based_follows_the_remote_parent_flag() {
        let s = Sampler::default();
        assert!(s.should_sample(Some(&remote(true)), TraceId::from(5u128)));
        assert!(!s.should_sample(Some(&remote(false)), TraceId::from(5u128)));
        assert!(s.should_sample(None, TraceId::from(5u128)));
    }

    #[test]
    fn ratio_sampler_keeps_roughly_that_fraction_of_trace_ids() {
        let s = Sampler::TraceIdRatio(0.25);
        let kept = (0..10_000u128)
            .filter(|i| {
                s.should_sample(
                    None,
                    TraceId::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)),
                )
            })
            .count();
        assert!((2_000..3_000).contains(&kept), "kept {kept} of 10000");
        assert!(!Sampler::TraceIdRatio(0.0).should_sample(None, TraceId::from(u128::MAX)));
    }
}
