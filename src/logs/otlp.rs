//! OTLP log export (cargo feature `otlp-logs`): `tracing` events become
//! OpenTelemetry log records through `opentelemetry-appender-tracing`, carrying the
//! trace and span ids of the current context, and go to the same collector as the
//! spans (`OTEL_EXPORTER_OTLP_LOGS_*`, else the generic variables).
//!
//! The SDK's `BatchLogProcessor` runs the exporter on a plain thread, where the
//! tonic and hyper clients have no tokio runtime; this processor hands records
//! to a thread of its own that runs one, through a bounded queue (full: the
//! record is dropped and counted, never waited for).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};

use opentelemetry::logs::{AnyValue, LogRecord as _};

use crate::config::{ConfigError, OtlpConfig, Protocol};
use crate::limits::ByteBudget;
use crate::redact::scrub_userinfo;

/// Records sent per export.
const BATCH: usize = 512;
/// How long a record may wait for a full batch.
const DELAY: Duration = Duration::from_secs(1);

/// About how many bytes a record holds (its body and attributes), for the
/// queue's byte budget.
fn record_bytes(r: &SdkLogRecord) -> usize {
    fn value(v: &AnyValue) -> usize {
        match v {
            AnyValue::String(s) => s.as_str().len(),
            AnyValue::Bytes(b) => b.len(),
            AnyValue::ListAny(l) => l.iter().map(value).sum(),
            AnyValue::Map(m) => m.iter().map(|(k, v)| k.as_str().len() + value(v)).sum(),
            _ => 8,
        }
    }
    std::mem::size_of::<(SdkLogRecord, InstrumentationScope)>()
        + r.body().map_or(0, value)
        + r.attributes_iter()
            .map(|(k, v)| k.as_str().len() + value(v))
            .sum::<usize>()
}

enum Cmd {
    Record(Box<(SdkLogRecord, InstrumentationScope)>),
    Flush(mpsc::Sender<OTelSdkResult>),
    Shutdown(mpsc::Sender<OTelSdkResult>),
}

/// Counters of the log export.
#[derive(Debug, Default)]
pub(crate) struct LogExportCounters {
    pub(crate) dropped: AtomicU64,
    pub(crate) exported: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// The `LogProcessor` in front of the export thread.
#[derive(Debug)]
pub(crate) struct QueueLogProcessor {
    tx: SyncSender<Cmd>,
    /// The bytes of the queued records.
    queued: Arc<ByteBudget>,
    /// The longest string body kept.
    value_limit: usize,
    timeout: Duration,
    pub(crate) counters: Arc<LogExportCounters>,
}

impl QueueLogProcessor {
    /// Starts the export thread; fails when the exporter cannot be built.
    pub(crate) fn start(
        cfg: OtlpConfig,
        resource: Resource,
        capacity: usize,
        value_limit: usize,
    ) -> Result<Self, ConfigError> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(LogExportCounters::default());
        let c = Arc::clone(&counters);
        let queued = Arc::new(ByteBudget::new(crate::limits::LOG_QUEUE_BYTES));
        let q = Arc::clone(&queued);
        let timeout = cfg.timeout;
        crate::export::spawn_export_thread(
            "tower-apm-otlp-logs",
            move |rt| {
                rt.block_on(async {
                    let mut exporter = build(&cfg)?;
                    exporter.set_resource(&resource);
                    Ok(exporter)
                })
            },
            move |rt, exporter| run(rt, &exporter, &rx, &q, &c, timeout),
        )?;
        Ok(QueueLogProcessor {
            tx,
            queued,
            value_limit,
            timeout,
            counters,
        })
    }

    fn ask(&self, make: fn(mpsc::Sender<OTelSdkResult>) -> Cmd, timeout: Duration) -> OTelSdkResult {
        let (done_tx, done_rx) = mpsc::channel();
        let until = Instant::now() + timeout;
        let mut cmd = make(done_tx);
        loop {
            match self.tx.try_send(cmd) {
                Ok(()) => break,
                Err(TrySendError::Full(c)) if Instant::now() < until => {
                    cmd = c;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        match done_rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        // A message may carry what a client sent: cut to the value limit.
        if let Some(AnyValue::String(body)) = data.body() {
            if body.as_str().len() > self.value_limit {
                let cut = crate::limits::cut_string(body.as_str(), self.value_limit).into_owned();
                data.set_body(AnyValue::from(cut));
            }
        }
        let bytes = record_bytes(data);
        if !self.queued.try_reserve(bytes) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let item = Box::new((data.clone(), instrumentation.clone()));
        if self.tx.try_send(Cmd::Record(item)).is_err() {
            self.queued.release(bytes);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Cmd::Flush, self.timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Cmd::Shutdown, timeout)
    }
}

fn build(cfg: &OtlpConfig) -> Result<opentelemetry_otlp::LogExporter, ConfigError> {
    let builder = opentelemetry_otlp::LogExporter::builder();
    let exporter = match cfg.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                cfg.header_map(),
            ))
            .build(),
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_headers(cfg.headers.iter().cloned().collect())
            .build(),
    };
    exporter.map_err(|e| ConfigError::Exporter(format!("logs: {}", scrub_userinfo(&e.to_string()))))
}

fn run(
    rt: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::LogExporter,
    rx: &Receiver<Cmd>,
    queued: &ByteBudget,
    counters: &LogExportCounters,
    timeout: Duration,
) {
    let mut batch: Vec<(SdkLogRecord, InstrumentationScope)> = Vec::with_capacity(BATCH);
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(DELAY, |t| DELAY.saturating_sub(t.elapsed()));
        let (reply, stop) = match rx.recv_timeout(wait) {
            Ok(Cmd::Record(r)) => {
                queued.release(record_bytes(&r.0));
                batch.push(*r);
                oldest.get_or_insert_with(Instant::now);
                if batch.len() < BATCH {
                    continue;
                }
                (None, false)
            }
            Ok(Cmd::Flush(done)) => (Some(done), false),
            Ok(Cmd::Shutdown(done)) => (Some(done), true),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        let result = export(rt, exporter, &mut batch, counters, timeout);
        oldest = None;
        if let Some(done) = reply {
            let _ = done.send(result);
        }
        if stop {
            return;
        }
    }
}

fn export(
    rt: &tokio::runtime::Runtime,
    exporter: &opentelemetry_otlp::LogExporter,
    batch: &mut Vec<(SdkLogRecord, InstrumentationScope)>,
    counters: &LogExportCounters,
    timeout: Duration,
) -> OTelSdkResult {
    if batch.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch.iter().map(|b| (&b.0, &b.1)).collect();
    // `LogBatch::new` is what the SDK's own processors use to hand records to an
    // exporter (its docs warn it may become private: pinned with the SDK version).
    let result = rt.block_on(async {
        match tokio::time::timeout(timeout, exporter.export(LogBatch::new(&refs))).await {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(timeout)),
        }
    });
    let n = batch.len() as u64;
    drop(refs);
    batch.clear();
    match &result {
        Ok(()) => counters.exported.fetch_add(n, Ordering::Relaxed),
        Err(_) => counters.failed.fetch_add(n, Ordering::Relaxed),
    };
    result
}
