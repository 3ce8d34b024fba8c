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

use crate::record::{ClientRecord, DbRecord, RequestRecord};

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

#[derive(Debug)]
pub(crate) struct SpanQueue {
    items: Mutex<Vec<Item>>,
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
    batch: usize,
    /// The recent slow and failed requests, kept by the export thread for the
    /// status page.
    pub(crate) recent: Mutex<crate::status::recent::RecentTraces>,
    pub(crate) wake: Notify,
    pub(crate) counters: Counters,
}

impl SpanQueue {
    pub(crate) fn new(capacity: usize, batch: usize) -> Self {
        SpanQueue {
            items: Mutex::new(Vec::with_capacity(batch)),
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

    /// Queues a span; drops and counts it when the queue is full. Never blocks
    /// beyond an uncontended lock.
    pub(crate) fn push(&self, item: Item) {
        let len = {
            let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
            if items.len() >= self.capacity {
                drop(items);
                drop(item);
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            items.push(item);
            items.len()
        };
        if len == self.batch {
            self.wake.notify_one();
        }
    }

    /// Takes everything queued so far, leaving `spare` (an emptied buffer from the
    /// previous round) in its place: the two buffers are reused, never reallocated.
    pub(crate) fn take(&self, spare: Vec<Item>) -> Vec<Item> {
        debug_assert!(spare.is_empty());
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *items, spare)
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
