//! The recent slow and failed requests, each with the spans this process
//! recorded for its trace, for the status page. Kept on the export thread,
//! which sees every sampled span anyway: the request path does nothing for it.
//!
//! Every span the export thread builds goes into a ring of the latest ones (a
//! few words each: ids, name, times, status, one detail). A server span that
//! failed (status Error, a 5xx) or took longer than the slow threshold then
//! collects its trace's spans from the ring: its children end before it, so
//! they are there, in the same batch or a recent one.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as semconv;

/// Spans kept to find a trace's children in.
const RING: usize = 2048;
/// How far back a finished request looks for its children.
const LOOK_BACK: usize = 512;

/// One span, as the waterfall draws it.
#[derive(Debug, Clone)]
pub(crate) struct SpanSummary {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent_span_id: SpanId,
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) error: bool,
    /// What it was about: the statement, the URL or the route.
    pub(crate) detail: Option<Value>,
    /// The HTTP status, for server and client spans.
    pub(crate) status: Option<i64>,
}

impl SpanSummary {
    pub(crate) fn duration(&self) -> Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}

/// A recent slow or failed request and its spans (the server span first).
#[derive(Debug, Clone)]
pub(crate) struct RecentTrace {
    pub(crate) spans: Vec<SpanSummary>,
}

impl RecentTrace {
    pub(crate) fn root(&self) -> &SpanSummary {
        &self.spans[0]
    }
}

const DETAIL_KEYS: [&str; 3] = [semconv::DB_QUERY_TEXT, semconv::URL_FULL, semconv::HTTP_ROUTE];
const STATUS_KEYS: [&str; 1] = [semconv::HTTP_RESPONSE_STATUS_CODE];

fn summary(s: &SpanData) -> SpanSummary {
    let mut detail = None;
    let mut status = None;
    for kv in &s.attributes {
        let k: &Key = &kv.key;
        if detail.is_none() && DETAIL_KEYS.contains(&k.as_str()) {
            detail = Some(kv.value.clone());
        } else if STATUS_KEYS.contains(&k.as_str()) {
            if let Value::I64(code) = kv.value {
                status = Some(code);
            }
        }
    }
    SpanSummary {
        trace_id: s.span_context.trace_id(),
        span_id: s.span_context.span_id(),
        parent_span_id: s.parent_span_id,
        name: s.name.clone(),
        kind: s.span_kind.clone(),
        start: s.start_time,
        end: s.end_time,
        error: matches!(s.status, Status::Error { .. }),
        detail,
        status,
    }
}

/// The buffer: the ring, and the last `keep` slow and failed requests.
#[derive(Debug)]
pub(crate) struct RecentTraces {
    ring: VecDeque<SpanSummary>,
    pub(crate) slow: VecDeque<RecentTrace>,
    pub(crate) failed: VecDeque<RecentTrace>,
    keep: usize,
    slow_after: Duration,
}

impl RecentTraces {
    /// Keeps the last `keep` of each; a request is slow from `slow_after`.
    pub(crate) fn new(keep: usize, slow_after: Duration) -> RecentTraces {
        RecentTraces {
            ring: VecDeque::with_capacity(RING),
            slow: VecDeque::with_capacity(keep),
            failed: VecDeque::with_capacity(keep),
            keep,
            slow_after,
        }
    }

    /// The spans of one export batch.
    pub(crate) fn observe(&mut self, batch: &[SpanData]) {
        if self.keep == 0 {
            return;
        }
        for span in batch {
            let s = summary(span);
            // A local root server span ends its request.
            let request_done = s.kind == SpanKind::Server;
            if self.ring.len() == RING {
                self.ring.pop_front();
            }
            self.ring.push_back(s);
            if !request_done {
                continue;
            }
            let root = self.ring.back().expect("just pushed");
            let failed = root.error || root.status.is_some_and(|c| c >= 500);
            let slow = root.duration() >= self.slow_after;
            if !failed && !slow {
                continue;
            }
            let trace = self.collect(root.trace_id, root.span_id);
            let list = if failed { &mut self.failed } else { &mut self.slow };
            if list.len() == self.keep {
                list.pop_front();
            }
            list.push_back(trace);
        }
    }

    /// The server span `root` and the spans under it among the latest ones.
    fn collect(&self, trace: TraceId, root: SpanId) -> RecentTrace {
        let mut spans: Vec<SpanSummary> = Vec::new();
        let mut ids = vec![root];
        // Children end before their parents: walking back from the root (the
        // newest), a span whose parent is already known belongs to the request.
        for s in self.ring.iter().rev().take(LOOK_BACK) {
            if s.trace_id != trace {
                continue;
            }
            if s.span_id == root {
                spans.insert(0, s.clone());
            } else if ids.contains(&s.parent_span_id) {
                ids.push(s.span_id);
                spans.push(s.clone());
            }
        }
        // The server span first, then the rest by start time.
        spans[1..].sort_by_key(|s| s.start);
        RecentTrace { spans }
    }

    /// The trace `id` among the kept requests.
    #[cfg(test)]
    pub(crate) fn find(&self, id: TraceId) -> Option<&RecentTrace> {
        self.failed
            .iter()
            .chain(self.slow.iter())
            .find(|t| t.root().trace_id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    fn span(trace: u128, id: u64, parent: u64, kind: SpanKind, start_ms: u64, end_ms: u64, status: i64) -> SpanData {
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: false,
            span_kind: kind,
            name: format!("span {id}").into(),
            start_time: at(start_ms),
            end_time: at(end_ms),
            attributes: vec![KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, status)],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_failed_request_keeps_its_children_and_a_fast_one_is_not_kept() {
        let mut r = RecentTraces::new(2, Duration::from_millis(500));
        r.observe(&[
            span(1, 11, 10, SpanKind::Client, 1, 3, 200),
            span(2, 21, 0, SpanKind::Server, 0, 5, 200), // fast, another trace
            span(1, 12, 10, SpanKind::Internal, 3, 4, 0),
        ]);
        r.observe(&[span(1, 10, 0, SpanKind::Server, 0, 9, 503)]);
        assert_eq!(r.failed.len(), 1);
        assert!(r.slow.is_empty());
        let t = &r.failed[0];
        let ids: Vec<u64> = t
            .spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id.to_bytes()))
            .collect();
        assert_eq!(ids, [10, 11, 12]);
        assert_eq!(t.root().status, Some(503));
        assert!(r.find(TraceId::from(1)).is_some());
        assert!(r.find(TraceId::from(2)).is_none());
    }

    #[test]
    fn slow_requests_are_kept_separately_and_only_the_latest() {
        let mut r = RecentTraces::new(2, Duration::from_millis(500));
        for t in 0..5u128 {
            r.observe(&[span(100 + t, 1, 0, SpanKind::Server, 0, 600, 200)]);
        }
        assert_eq!(r.slow.len(), 2);
        assert_eq!(r.slow[0].root().trace_id, TraceId::from(103));
        assert_eq!(r.slow[1].root().trace_id, TraceId::from(104));
        assert!(r.failed.is_empty());
    }
}
