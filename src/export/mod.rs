//! Span export: a bounded queue filled by the request path, drained by one
//! background thread that sends batches to OTLP (or a user-supplied exporter).

mod exporter;
pub(crate) mod health;
mod processor;
mod queue;
mod stats;
pub(crate) mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

pub(crate) use exporter::{DynSpanExporter, ExporterSpec};
pub(crate) use processor::QueueProcessor;
pub(crate) use queue::{Item, SpanQueue};
pub use stats::TelemetryStats;

use crate::config::{BatchConfig, ConfigError};

/// Why a flush or shutdown did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportError {
    /// The exporter reported an error (collector down, refused, bad response).
    Exporter(String),
    /// The exporter did not answer within its deadline (`OTEL_BSP_EXPORT_TIMEOUT`).
    Timeout(Duration),
    /// The caller's deadline passed before the export thread finished.
    Deadline(Duration),
    /// The export thread is gone (already shut down).
    Stopped,
    /// The metric push failed or timed out (collector down, refused, bad response).
    Metrics(String),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Exporter(e) => write!(f, "span export failed: {e}"),
            ExportError::Timeout(d) => write!(f, "span export did not finish within {d:?}"),
            ExportError::Deadline(d) => write!(f, "telemetry flush did not finish within its {d:?} deadline"),
            ExportError::Stopped => write!(f, "the export pipeline is already shut down"),
            ExportError::Metrics(e) => write!(f, "metric export failed: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// The handle `Apm` keeps: the queue and the command channel. The export thread
/// is detached: it exits when told to shut down or when this handle is dropped,
/// and is never joined (joining could wait on a stuck DNS lookup in its runtime).
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) queue: Arc<SpanQueue>,
    commands: mpsc::UnboundedSender<worker::Command>,
}

impl Pipeline {
    pub(crate) fn start(
        spec: ExporterSpec,
        resource: Resource,
        batch: BatchConfig,
        redactor: crate::redact::Redactor,
        health: Arc<health::CollectorHealth>,
    ) -> Result<Self, ConfigError> {
        let queue = Arc::new(SpanQueue::new(
            batch.max_queue_size,
            crate::limits::span_queue_bytes(batch.max_queue_size),
            batch.max_export_batch_size,
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        worker::spawn(spec, resource, batch, redactor, Arc::clone(&queue), rx, health)?;
        Ok(Pipeline { queue, commands: tx })
    }

    pub(crate) fn stats(&self) -> TelemetryStats {
        TelemetryStats::read(&self.queue.counters)
    }

    async fn command(
        &self,
        make: fn(oneshot::Sender<Result<(), ExportError>>) -> worker::Command,
        deadline: Duration,
    ) -> Result<(), ExportError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).map_err(|_| ExportError::Stopped)?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ExportError::Stopped),
            Err(_) => Err(ExportError::Deadline(deadline)),
        }
    }

    pub(crate) async fn flush(&self, deadline: Duration) -> Result<(), ExportError> {
        self.command(worker::Command::Flush, deadline).await
    }

    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<(), ExportError> {
        self.command(worker::Command::Shutdown, deadline).await
    }
}

/// Starts a background thread named `name` with its own current-thread tokio
/// runtime and `tracing` silenced on it (an exporter's HTTP and gRPC stacks would
/// otherwise trace their own exports), runs `setup` there (exporters need the
/// runtime to be built), and returns once `setup` succeeded, `run` then taking
/// over the thread, or failed. Each export thread of the crate (spans, metric
/// push, OTLP logs) starts this way.
pub(crate) fn spawn_export_thread<T, S, R>(name: &str, setup: S, run: R) -> Result<(), ConfigError>
where
    S: FnOnce(&tokio::runtime::Runtime) -> Result<T, ConfigError> + Send + 'static,
    R: FnOnce(&tokio::runtime::Runtime, T) + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), ConfigError>>(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _silence = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(ConfigError::Worker(e.to_string())));
                    return;
                }
            };
            match setup(&rt) {
                Ok(state) => {
                    let _ = ready_tx.send(Ok(()));
                    run(&rt, state);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ConfigError::Worker(e.to_string()))?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(ConfigError::Worker(format!("the {name} thread exited while starting"))))
}
