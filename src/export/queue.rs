//! The bounded hand-off between the request path and the export thread.
//!
//! Written here rather than using the SDK's `BatchSpanProcessor` because (1) its
//! dropped-span count is private, and this crate must show it; (2) it accepts only
//! SDK spans, while the layer's spans are plain records turned into span data on
//! the export thread; (3) it wakes its thread for every span, where this queue
//! wakes the export thread once per full batch. A push is one uncontended lock and
//! a `Vec::push`; when the queue is full the span is dropped and counted, never
//! waited for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_sdk::trace::SpanData;
use tokio::sync::Notify;

use crate::record::{ClientRecord, DbRecord, RequestRecord, ShortStr};

/// One span waiting for export.
#[derive(Debug)]
pub(crate) enum Item {
    /// A server span, still as the layer's record: the box made when the request
    /// started, so the record is never copied on its way (measured: unboxing it
    /// here cost more in copies than the export thread's `free` of the box).
    Server(Box<RequestRecord>),
    /// A client span, still as the client layer's record.
    Client(Box<ClientRecord>),
    /// A database query's span, as its record.
    Db(Box<DbRecord>),
    /// A span finished through the SDK tracer (for example by `tracing-opentelemetry`).
    Sdk(Box<SpanData>),
}

impl Item {
    /// About how many bytes the item holds (its box and what that points
    /// to), for the queue's byte budget. Client-controlled strings in it are
    /// already cut to the value limit; this bounds their sum.
    #[inline]
    fn bytes(&self) -> usize {
        use std::mem::size_of;
        match self {
            Item::Server(r) => {
                let strings = [r.authority.as_ref(), r.user_agent.as_ref()]
                    .into_iter()
                    .flatten()
                    .chain([&r.target, &r.request_id])
                    .map(ShortStr::heap_len)
                    .sum::<usize>();
                let claimed = r.claimed_forwarded.as_ref().map_or(0, ShortStr::heap_len);
                let panic = r.panic.as_ref().map_or(0, String::len);
                let events = r.security_events.as_ref().map_or(0, |e| e.bytes());
                size_of::<RequestRecord>() + strings + claimed + panic + events
            }
            Item::Client(r) => {
                size_of::<ClientRecord>()
                    + r.uri.path_and_query().map_or(0, |p| p.as_str().len())
                    + r.uri.authority().map_or(0, |a| a.as_str().len())
            }
            Item::Db(r) => size_of::<DbRecord>() + r.status_code.as_ref().map_or(0, String::len),
            Item::Sdk(s) => size_of::<SpanData>() + sdk_span_bytes(s),
        }
    }
}

/// The strings an SDK span holds: its name, attributes, events and links.
fn sdk_span_bytes(s: &SpanData) -> usize {
    fn attrs(kvs: &[opentelemetry::KeyValue]) -> usize {
        kvs.iter()
            .map(|kv| {
                let value = match &kv.value {
                    opentelemetry::Value::String(v) => v.as_str().len(),
                    opentelemetry::Value::Array(opentelemetry::Array::String(v)) => {
                        v.iter().map(|x| x.as_str().len()).sum()
                    }
                    _ => 8,
                };
                kv.key.as_str().len() + value + std::mem::size_of::<opentelemetry::KeyValue>()
            })
            .sum()
    }
    let events: usize = s
        .events
        .iter()
        .map(|e| e.name.len() + attrs(&e.attributes) + std::mem::size_of::<opentelemetry::trace::Event>())
        .sum();
    let links: usize = s.links.iter().map(|l| attrs(&l.attributes)).sum();
    s.name.len() + attrs(&s.attributes) + events + links
}

/// Counters shared by the queue and the export thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) export_failed: AtomicU64,
    pub(crate) failed_exports: AtomicU64,
    /// When a batch was last accepted (milliseconds since the Unix epoch; 0: never).
    pub(crate) last_export_ms: AtomicU64,
}

/// How many emptied record boxes wait for reuse at most.
const MAX_SPARE_RECORDS: usize = 1024;

/// The queued spans and the bytes they hold.
#[derive(Debug)]
struct Queued {
    items: Vec<Item>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct SpanQueue {
    queued: Mutex<Queued>,
    /// Record boxes the export thread has emptied, handed back to the request
    /// path: a box allocated on a request thread and freed on the export thread
    /// takes glibc's slower cross-thread paths on both sides. Measured with
    /// `scripts/instr.sh`: reuse saves about 170 instructions a sampled request.
    #[expect(clippy::vec_box, reason = "the boxes themselves are what is reused")]
    spare_records: Mutex<Vec<Box<RequestRecord>>>,
    /// The same for database query records (measured: ~500 instructions a
    /// query when each box is freed on the export thread).
    #[expect(clippy::vec_box, reason = "the boxes themselves are what is reused")]
    spare_db: Mutex<Vec<Box<DbRecord>>>,
    capacity: usize,
    /// The most bytes the queued spans may hold (their strings included).
    max_bytes: usize,
    batch: usize,
    /// The recent slow and failed requests, kept by the export thread for the
    /// status page.
    pub(crate) recent: Mutex<crate::status::recent::RecentTraces>,
    pub(crate) wake: Notify,
    pub(crate) counters: Counters,
}

impl SpanQueue {
    pub(crate) fn new(capacity: usize, max_bytes: usize, batch: usize) -> Self {
        SpanQueue {
            queued: Mutex::new(Queued {
                items: Vec::with_capacity(batch),
                bytes: 0,
            }),
            max_bytes,
            spare_records: Mutex::new(Vec::new()),
            spare_db: Mutex::new(Vec::new()),
            capacity,
            batch,
            recent: Mutex::new(crate::status::recent::RecentTraces::new(
                crate::status::DEFAULT_RECENT,
                crate::status::DEFAULT_SLOW,
            )),
            wake: Notify::new(),
            counters: Counters::default(),
        }
    }

    /// Queues a span; drops and counts it when the queue is full, in entries
    /// or in bytes. Never blocks beyond an uncontended lock.
    pub(crate) fn push(&self, item: Item) {
        let bytes = item.bytes();
        let len = {
            let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            if q.items.len() >= self.capacity || q.bytes + bytes > self.max_bytes {
                drop(q);
                drop(item);
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.items.push(item);
            q.bytes += bytes;
            q.items.len()
        };
        if len == self.batch {
            self.wake.notify_one();
        }
    }

    /// Takes everything queued so far, leaving `spare` (an emptied buffer from the
    /// previous round) in its place: the two buffers are reused, never reallocated.
    pub(crate) fn take(&self, spare: Vec<Item>) -> Vec<Item> {
        debug_assert!(spare.is_empty());
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        q.bytes = 0;
        std::mem::replace(&mut q.items, spare)
    }

    /// A record box to fill, if one is waiting for reuse.
    pub(crate) fn reuse_record(&self) -> Option<Box<RequestRecord>> {
        self.spare_records.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Hands emptied record boxes back for reuse (beyond the cap they are freed).
    #[expect(clippy::vec_box, reason = "the boxes themselves are what is reused")]
    pub(crate) fn recycle_records(&self, boxes: &mut Vec<Box<RequestRecord>>) {
        let mut spare = self.spare_records.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_SPARE_RECORDS.saturating_sub(spare.len());
        spare.extend(boxes.drain(..).take(room));
        drop(spare);
        boxes.clear();
    }

    /// A query record box to fill, if one is waiting for reuse.
    pub(crate) fn reuse_db(&self) -> Option<Box<DbRecord>> {
        self.spare_db.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Hands emptied query record boxes back for reuse (beyond the cap they
    /// are freed).
    #[expect(clippy::vec_box, reason = "the boxes themselves are what is reused")]
    pub(crate) fn recycle_db(&self, boxes: &mut Vec<Box<DbRecord>>) {
        let mut spare = self.spare_db.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_SPARE_RECORDS.saturating_sub(spare.len());
        spare.extend(boxes.drain(..).take(room));
        drop(spare);
        boxes.clear();
    }

    /// Hands back the box of a record no span was made from (an unsampled
    /// request the metrics read on the request path).
    pub(crate) fn recycle_record(&self, record: Box<RequestRecord>) {
        let mut spare = self.spare_records.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < MAX_SPARE_RECORDS {
            spare.push(record);
        }
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.batch
    }
}
