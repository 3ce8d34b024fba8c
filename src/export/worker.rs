//! The export thread: batches queued spans, turns records into span data and
//! sends them, with a deadline on every export.
//!
//! It runs its own single-threaded tokio runtime, so export works the same under
//! any runtime the application uses (current-thread included), and a shutdown
//! called from the application's runtime can never deadlock on it. Its own
//! `tracing` output is silenced (the exporter's HTTP and gRPC stacks would
//! otherwise trace their own exports); its warnings go to the global subscriber.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

use super::ExportError;
use super::exporter::{DynSpanExporter, ExporterSpec};
use super::health::{CollectorHealth, Signal};
use super::queue::{Item, SpanQueue};
use crate::config::{BatchConfig, ConfigError};
use crate::redact::{Redactor, scrub_userinfo};
use crate::trace::span::{Clock, SpanBuilder};

pub(crate) enum Command {
    Flush(oneshot::Sender<Result<(), ExportError>>),
    Shutdown(oneshot::Sender<Result<(), ExportError>>),
}

/// Starts the export thread and waits until its exporter exists (or failed).
pub(crate) fn spawn(
    spec: ExporterSpec,
    resource: Resource,
    batch: BatchConfig,
    redactor: Redactor,
    queue: Arc<SpanQueue>,
    commands: mpsc::UnboundedReceiver<Command>,
    health: Arc<CollectorHealth>,
) -> Result<(), ConfigError> {
    let endpoint = match &spec {
        ExporterSpec::Otlp(cfg) => Some(cfg.endpoint.clone()),
        ExporterSpec::Custom(_) => None,
    };
    health.register(Signal::Spans, endpoint.as_deref());
    super::spawn_export_thread(
        "tower-apm-export",
        move |rt| {
            rt.block_on(async {
                let mut exporter = spec.build()?;
                exporter.set_resource_dyn(&resource);
                Ok(exporter)
            })
        },
        move |rt, exporter| {
            rt.block_on(
                Worker {
                    exporter,
                    queue,
                    batch,
                    spans: SpanBuilder::default(),
                    failing: false,
                    spare: Vec::with_capacity(batch.max_export_batch_size),
                    warned_queue_full: false,
                    redactor,
                    health,
                    endpoint,
                }
                .run(commands),
            );
        },
    )
}

struct Worker {
    exporter: Box<dyn DynSpanExporter>,
    queue: Arc<SpanQueue>,
    batch: BatchConfig,
    spans: SpanBuilder,
    failing: bool,
    /// The emptied buffer handed back to the queue at the next round.
    spare: Vec<Item>,
    warned_queue_full: bool,
    redactor: Redactor,
    /// Where failures and recoveries are reported, one warning per outage.
    health: Arc<CollectorHealth>,
    /// The OTLP endpoint (`None`: a custom exporter).
    endpoint: Option<String>,
}

impl Worker {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(self.batch.schedule_delay);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let queue = Arc::clone(&self.queue);
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = self.export_queued().await; }
                _ = queue.wake.notified() => { let _ = self.export_queued().await; }
                cmd = commands.recv() => match cmd {
                    Some(Command::Flush(reply)) => {
                        let r = self.export_queued().await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Shutdown(reply)) => {
                        let r = self.export_queued().await;
                        let shut = self.exporter.shutdown_dyn(self.batch.export_timeout);
                        let _ = reply.send(r.and(shut.map_err(|e| ExportError::Exporter(scrub_userinfo(&e.to_string()).into_owned()))));
                        return;
                    }
                    None => {
                        let _ = self.export_queued().await;
                        let _ = self.exporter.shutdown_dyn(self.batch.export_timeout);
                        return;
                    }
                },
            }
        }
    }

    /// Exports what is queued now, in batches of at most the configured size.
    /// Spans queued while this runs wait for the next round, so a flush always
    /// finishes even when exporting itself produces spans.
    async fn export_queued(&mut self) -> Result<(), ExportError> {
        let mut result = Ok(());
        let mut taken = self.queue.take(std::mem::take(&mut self.spare));
        let clock = Clock::now();
        let mut emptied = Vec::new();
        let mut emptied_db = Vec::new();
        let mut items = taken.drain(..).peekable();
        while items.peek().is_some() {
            let batch: Vec<_> = items
                .by_ref()
                .take(self.queue.batch_size())
                .map(|item| match item {
                    Item::Server(mut r) => {
                        let span = self.spans.server_span(&mut r, &clock);
                        emptied.push(r);
                        span
                    }
                    Item::Client(r) => self.spans.client_span(r, &clock),
                    Item::Db(r) => {
                        let span = self.spans.db_span(&r, &clock);
                        emptied_db.push(r);
                        span
                    }
                    Item::Sdk(s) => {
                        // `tracing` spans carry their fields as attributes.
                        let mut s = *s;
                        self.redactor.redact_attributes(&mut s.attributes);
                        s
                    }
                })
                .collect();
            self.queue
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(&batch);
            self.queue.recycle_records(&mut emptied);
            self.queue.recycle_db(&mut emptied_db);
            if let Err(e) = self.export(batch).await {
                result = Err(e);
            }
        }
        drop(items);
        self.spare = taken;
        self.warn_queue_full();
        result
    }

    async fn export(&mut self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> Result<(), ExportError> {
        let n = batch.len() as u64;
        let counters = &self.queue.counters;
        let outcome = match tokio::time::timeout(self.batch.export_timeout, self.exporter.export_batch(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ExportError::Exporter(scrub_userinfo(&e.to_string()).into_owned())),
            Err(_) => Err(ExportError::Timeout(self.batch.export_timeout)),
        };
        match &outcome {
            Ok(()) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                counters
                    .last_export_ms
                    .store(u64::try_from(now.as_millis()).unwrap_or(0), Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    self.health.recovered(Signal::Spans, self.endpoint.as_deref());
                }
            }
            Err(e) => {
                counters.export_failed.fetch_add(n, Ordering::Relaxed);
                counters.failed_exports.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    self.health
                        .failed(Signal::Spans, self.endpoint.as_deref(), &e.to_string());
                }
            }
        }
        outcome
    }

    fn warn_queue_full(&mut self) {
        if !self.warned_queue_full && self.queue.counters.queue_full.load(Ordering::Relaxed) > 0 {
            self.warned_queue_full = true;
            report(|| {
                tracing::warn!(
                    target: "tower_apm",
                    "span export queue is full; dropping new spans (counted in Apm::stats, \
                     warned once; raise OTEL_BSP_MAX_QUEUE_SIZE or check the collector)"
                )
            });
        }
    }
}

/// Emits a rare warning to the application's global subscriber: this thread's own
/// default is silenced, so the event is sent from a short-lived thread.
pub(crate) fn report(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        let _ = std::thread::Builder::new().spawn_scoped(s, f);
    });
}
