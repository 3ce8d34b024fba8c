//! What the export pipeline has done, for operators and tests.

use std::sync::atomic::Ordering;

use super::queue::Counters;

/// A snapshot of the export counters since start: spans, and metric pushes.
///
/// Spans that never reached the collector are in [`spans_dropped`](Self::spans_dropped):
/// those refused because the queue was full (the collector is slower than the
/// service) and those in batches the exporter failed to send (the collector is down
/// or timed out). Telemetry never waits: it drops and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryStats {
    /// Spans the exporter accepted.
    pub spans_exported: u64,
    /// Spans dropped because the export queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans lost in batches the exporter failed to send.
    pub spans_dropped_export_failed: u64,
    /// Span export attempts that failed or timed out.
    pub export_failures: u64,
    /// OTLP metric pushes the collector accepted.
    pub metric_exports: u64,
    /// OTLP metric pushes that failed or timed out (the next push resends the
    /// cumulative totals, so nothing counted is lost).
    pub metric_export_failures: u64,
    /// Log lines written to the log output.
    pub log_lines_written: u64,
    /// Log lines dropped because the log writer's queue was full.
    pub log_lines_dropped_queue_full: u64,
    /// Log lines lost because writing them failed (a full disk, a closed pipe).
    pub log_lines_dropped_write_failed: u64,
    /// Log records exported over OTLP (feature `otlp-logs`).
    pub log_records_exported: u64,
    /// Log records dropped (queue full) or lost in failed OTLP exports.
    pub log_records_dropped: u64,
    /// Alert notifications a notifier accepted (one per POST).
    pub alert_notifications_sent: u64,
    /// Alert notifications that failed after their retries.
    pub alert_notifications_failed: u64,
    /// Batches of alerts dropped because the notification queue was full.
    pub alert_notifications_dropped: u64,
    /// Security events and detections written (log line and audit record).
    pub security_events: u64,
    /// Security events dropped because the security queue was full.
    pub security_events_dropped: u64,
    /// Detections (brute force, traffic spike, scanning).
    pub security_detections: u64,
    /// Detections not sent to the notifiers because of the alert rate limit.
    pub security_alerts_suppressed: u64,
    /// Audit records that could not be written (a full disk).
    pub audit_write_failures: u64,
}

impl TelemetryStats {
    /// All spans that never reached the collector.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_dropped_queue_full + self.spans_dropped_export_failed
    }

    pub(crate) fn read(c: &Counters) -> Self {
        TelemetryStats {
            spans_exported: c.exported.load(Ordering::Relaxed),
            spans_dropped_queue_full: c.queue_full.load(Ordering::Relaxed),
            spans_dropped_export_failed: c.export_failed.load(Ordering::Relaxed),
            export_failures: c.failed_exports.load(Ordering::Relaxed),
            ..TelemetryStats::default()
        }
    }
}
