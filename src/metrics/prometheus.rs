//! The Prometheus exposition: text format 0.0.4, or OpenMetrics 1.0 (with
//! exemplars) when the scraper asks for it.
//!
//! Names follow the OpenTelemetry-to-Prometheus compatibility rules: dots become
//! underscores, the unit is appended (`_seconds`, `_bytes`, `_ratio` for `1`),
//! counters end in `_total`, annotations such as `{request}` are dropped, and the
//! resource attributes are the labels of one `target_info` gauge.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::{attribute as semconv, metric as names};

use super::client::ClientSeries;
use super::db::{DB_BOUNDS_S, DbSeries};
use super::process::ProcessSample;
use super::{DURATION_BOUNDS_S, Exemplar, HistogramSnapshot, Metrics, SIZE_BOUNDS, Series};
use crate::export::TelemetryStats;

/// `Content-Type` of the text format.
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it (Prometheus does, first),
    /// else the text format.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
        let openmetrics = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        if openmetrics { Format::OpenMetrics } else { Format::Text }
    }
}

/// What one scrape reads besides the request metrics.
pub(crate) struct Scrape<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) resource: &'a Resource,
    pub(crate) stats: TelemetryStats,
    pub(crate) process: Option<ProcessSample>,
    pub(crate) cpu_utilization: Option<f64>,
}

/// The Prometheus name of an OpenTelemetry metric name with its unit suffix.
fn prom_name(otel: &str, suffix: &str) -> String {
    let mut name: String = otel
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !suffix.is_empty() && !name.ends_with(suffix) {
        name.push('_');
        name.push_str(suffix);
    }
    name
}

/// A Prometheus label name from an attribute key.
fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "key_");
    }
    name
}

fn escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as both formats accept it, with integers as `1.0` (OpenMetrics'
/// canonical form, which keeps `le` labels identical between the formats).
fn float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// `# HELP`, `# TYPE` and (OpenMetrics) `# UNIT` of one family. `name` is the
    /// family name: for counters without `_total`.
    fn family(&mut self, name: &str, kind: &str, unit: &str, help: &str) {
        let om = self.format == Format::OpenMetrics;
        let shown = if kind == "counter" && !om {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        let _ = writeln!(self.out, "# HELP {shown} {help}");
        let _ = writeln!(self.out, "# TYPE {shown} {kind}");
        if om && !unit.is_empty() {
            let _ = writeln!(self.out, "# UNIT {shown} {unit}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
    }
}

/// The labels of a request series, in semantic-convention names.
fn series_labels(s: &Series) -> Vec<(&'static str, String)> {
    let a = &s.attrs;
    if a.overflow {
        return vec![("otel_metric_overflow", "true".into())];
    }
    let mut l = vec![("http_request_method", a.method.to_owned())];
    if let Some(route) = &a.route {
        l.push(("http_route", route.to_string()));
    }
    if let Some(status) = a.status {
        l.push(("http_response_status_code", status.to_string()));
    }
    l.push(("url_scheme", a.scheme().to_owned()));
    l.push(("network_protocol_version", a.version.to_owned()));
    if let Some(e) = a.error_type {
        l.push(("error_type", e.to_owned()));
    }
    l
}

/// One histogram family over every series.
fn histogram(
    w: &mut Writer,
    series: &[Arc<Series>],
    name: &str,
    bounds: &[f64],
    per_unit: f64,
    pick: impl Fn(&Series) -> HistogramSnapshot,
    exemplars: bool,
) {
    let om = w.format == Format::OpenMetrics;
    let points = series
        .iter()
        .map(|s| (series_labels(s), pick(s), (exemplars && om).then(|| s.exemplars())));
    histogram_points(w, name, bounds, per_unit, points);
}

/// The samples of one histogram family: per point its labels, counts and
/// (OpenMetrics) exemplars.
fn histogram_points(
    w: &mut Writer,
    name: &str,
    bounds: &[f64],
    per_unit: f64,
    points: impl Iterator<
        Item = (
            Vec<(&'static str, String)>,
            HistogramSnapshot,
            Option<[Option<Exemplar>; 15]>,
        ),
    >,
) {
    for (labels, snap, ex) in points {
        if snap.count == 0 {
            continue; // a series with no observations here (no request body)
        }
        let mut cumulative = 0;
        for (i, count) in snap.counts.iter().enumerate() {
            cumulative += count;
            let le = bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| float(*b));
            let mut l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            l.push(("le", &le));
            w.sample(&format!("{name}_bucket"), &l, &cumulative.to_string());
            if let Some(Some(e)) = ex.as_ref().and_then(|ex| ex.get(i)) {
                let ts = e.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                let _ = write!(
                    w.out,
                    " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}",
                    e.trace_id,
                    e.span_id,
                    float(e.value.as_secs_f64()),
                    ts
                );
            }
            w.out.push('\n');
        }
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample(&format!("{name}_sum"), &l, &float(snap.sum as f64 / per_unit));
        w.out.push('\n');
        w.sample(&format!("{name}_count"), &l, &snap.count.to_string());
        w.out.push('\n');
    }
}

/// The labels of a database series, in semantic-convention names.
fn db_labels(s: &DbSeries) -> Vec<(&'static str, String)> {
    let a = &s.attrs;
    if a.overflow {
        return vec![("otel_metric_overflow", "true".into())];
    }
    let mut l = vec![("db_system_name", a.system.to_string())];
    if let Some(op) = &a.operation {
        l.push(("db_operation_name", op.to_string()));
    }
    if let Some(c) = &a.collection {
        l.push(("db_collection_name", c.to_string()));
    }
    if let Some(ns) = &a.namespace {
        l.push(("db_namespace", ns.to_string()));
    }
    if let Some((host, port)) = &a.server {
        l.push(("server_address", host.to_string()));
        if let Some(p) = port {
            l.push(("server_port", p.to_string()));
        }
    }
    if let Some(e) = &a.error_type {
        l.push(("error_type", e.to_string()));
    }
    l
}

/// `db.client.operation.duration` and the slow-query counter, when a query
/// was timed.
fn database(w: &mut Writer, metrics: &Metrics) {
    let series = metrics.db.series();
    if series.is_empty() {
        return;
    }
    let duration = prom_name(names::DB_CLIENT_OPERATION_DURATION, "seconds");
    w.family(
        &duration,
        "histogram",
        "seconds",
        "Duration of database client operations.",
    );
    let points = series.iter().map(|s| (db_labels(s), s.duration.snapshot(), None));
    histogram_points(w, &duration, &DB_BOUNDS_S, 1e9, points);
    let slow = "tower_apm_db_slow_queries";
    w.family(slow, "counter", "", "Database queries slower than their threshold.");
    for s in &series {
        let labels = db_labels(s);
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.sample(
            &format!("{slow}_total"),
            &l,
            &s.slow.load(std::sync::atomic::Ordering::Relaxed).to_string(),
        );
        w.out.push('\n');
    }
}

/// The labels of an outgoing-call series, in semantic-convention names.
fn client_labels(s: &ClientSeries) -> Vec<(&'static str, String)> {
    let a = &s.attrs;
    if a.overflow {
        return vec![("otel_metric_overflow", "true".into())];
    }
    let mut l = vec![("http_request_method", a.method.to_owned())];
    if let Some(host) = &a.server_address {
        l.push(("server_address", host.to_string()));
    }
    if let Some(port) = a.server_port {
        l.push(("server_port", port.to_string()));
    }
    if let Some(status) = a.status {
        l.push(("http_response_status_code", status.to_string()));
    }
    if let Some(e) = a.error_type {
        l.push(("error_type", e.to_owned()));
    }
    if let Some(scheme) = a.scheme {
        l.push(("url_scheme", scheme.to_owned()));
    }
    l.push(("network_protocol_version", a.version.to_owned()));
    l
}

/// `http.client.request.duration`, when an outgoing call was made.
fn client(w: &mut Writer, metrics: &Metrics) {
    let series = metrics.client.series();
    if series.is_empty() {
        return;
    }
    let name = prom_name(names::HTTP_CLIENT_REQUEST_DURATION, "seconds");
    w.family(&name, "histogram", "seconds", "Duration of HTTP client requests.");
    let points = series.iter().map(|s| (client_labels(s), s.duration.snapshot(), None));
    histogram_points(w, &name, &DURATION_BOUNDS_S, 1e9, points);
}

/// Writes every metric in `format`.
pub(crate) fn render(scrape: &Scrape<'_>, format: Format) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        format,
    };
    let series = scrape.metrics.series();

    // target_info: the resource attributes.
    // OpenMetrics' info type names the family `target` and its sample `target_info`.
    let (family, kind) = match format {
        Format::OpenMetrics => ("target", "info"),
        Format::Text => ("target_info", "gauge"),
    };
    w.family(
        family,
        kind,
        "",
        "Target metadata: the OpenTelemetry resource attributes",
    );
    let mut res: Vec<(String, String)> = scrape
        .resource
        .iter()
        .map(|(k, v)| (label_name(k.as_str()), v.to_string()))
        .collect();
    res.sort();
    let l: Vec<(&str, &str)> = res.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.sample("target_info", &l, "1");
    w.out.push('\n');

    let duration = prom_name(names::HTTP_SERVER_REQUEST_DURATION, "seconds");
    w.family(&duration, "histogram", "seconds", "Duration of HTTP server requests.");
    histogram(
        &mut w,
        &series,
        &duration,
        &DURATION_BOUNDS_S,
        1e9,
        |s| s.duration.snapshot(),
        true,
    );

    let sizes: Vec<f64> = SIZE_BOUNDS.iter().map(|b| *b as f64).collect();
    let request = prom_name(names::HTTP_SERVER_REQUEST_BODY_SIZE, "bytes");
    w.family(
        &request,
        "histogram",
        "bytes",
        "Size of HTTP server request bodies (from Content-Length).",
    );
    histogram(
        &mut w,
        &series,
        &request,
        &sizes,
        1.0,
        |s| s.request_size.snapshot(),
        false,
    );
    let response = prom_name(names::HTTP_SERVER_RESPONSE_BODY_SIZE, "bytes");
    w.family(&response, "histogram", "bytes", "Size of HTTP server response bodies.");
    histogram(
        &mut w,
        &series,
        &response,
        &sizes,
        1.0,
        |s| s.response_size.snapshot(),
        false,
    );

    database(&mut w, scrape.metrics);
    client(&mut w, scrape.metrics);

    let active = prom_name(names::HTTP_SERVER_ACTIVE_REQUESTS, "");
    w.family(&active, "gauge", "", "Number of active HTTP server requests.");
    for (method, scheme, n) in scrape.metrics.active() {
        w.sample(
            &active,
            &[("http_request_method", method), ("url_scheme", scheme)],
            &n.to_string(),
        );
        w.out.push('\n');
    }

    if let Some(p) = &scrape.process {
        let cpu = prom_name(names::PROCESS_CPU_TIME, "seconds");
        w.family(
            &cpu,
            "counter",
            "seconds",
            "Total CPU seconds broken down by different CPU modes.",
        );
        let mode = label_name(semconv::CPU_MODE);
        for (m, t) in [("user", p.cpu_user), ("system", p.cpu_system)] {
            w.sample(&format!("{cpu}_total"), &[(&mode, m)], &float(t.as_secs_f64()));
            w.out.push('\n');
        }
        if let Some(u) = scrape.cpu_utilization {
            let util = prom_name(names::PROCESS_CPU_UTILIZATION, "ratio");
            w.family(
                &util,
                "gauge",
                "ratio",
                "CPU time used since the previous scrape over the time elapsed and the CPUs available.",
            );
            w.sample(&util, &[], &float(u));
            w.out.push('\n');
        }
        for (otel, value, help) in [
            (
                names::PROCESS_MEMORY_USAGE,
                p.resident_bytes,
                "The amount of physical memory in use.",
            ),
            (
                names::PROCESS_MEMORY_VIRTUAL,
                p.virtual_bytes,
                "The amount of committed virtual memory.",
            ),
        ] {
            let name = prom_name(otel, "bytes");
            w.family(&name, "gauge", "bytes", help);
            w.sample(&name, &[], &value.to_string());
            w.out.push('\n');
        }
        if let Some(fds) = p.open_fds {
            // `process.unix.file_descriptor.count` would map to `..._count`, which
            // promtool rejects outside histograms and summaries; this is the name
            // Prometheus' own client libraries give the same gauge.
            let name = "process_open_fds";
            w.family(
                name,
                "gauge",
                "",
                "Number of unix file descriptors in use by the process.",
            );
            w.sample(name, &[], &fds.to_string());
            w.out.push('\n');
        }
        // `process.thread.count`, named as Prometheus' client libraries name it,
        // for the same reason as `process_open_fds`.
        let threads = "process_threads";
        w.family(threads, "gauge", "", "Process threads count.");
        w.sample(threads, &[], &p.threads.to_string());
        w.out.push('\n');
    }

    // The crate's own health: what an alert on lost telemetry reads.
    let stats = &scrape.stats;
    let spans = "tower_apm_spans_exported";
    w.family(spans, "counter", "", "Spans the exporter accepted.");
    w.sample(&format!("{spans}_total"), &[], &stats.spans_exported.to_string());
    w.out.push('\n');
    let dropped = "tower_apm_spans_dropped";
    w.family(
        dropped,
        "counter",
        "",
        "Spans that never reached the collector, by reason.",
    );
    for (reason, n) in [
        ("queue_full", stats.spans_dropped_queue_full),
        ("export_failed", stats.spans_dropped_export_failed),
    ] {
        w.sample(&format!("{dropped}_total"), &[("reason", reason)], &n.to_string());
        w.out.push('\n');
    }
    let log_dropped = "tower_apm_log_lines_dropped";
    w.family(
        log_dropped,
        "counter",
        "",
        "Log lines that were never written, by reason.",
    );
    for (reason, n) in [
        ("queue_full", stats.log_lines_dropped_queue_full),
        ("write_failed", stats.log_lines_dropped_write_failed),
    ] {
        w.sample(&format!("{log_dropped}_total"), &[("reason", reason)], &n.to_string());
        w.out.push('\n');
    }
    let overflow = "tower_apm_metric_overflow_requests";
    w.family(
        overflow,
        "counter",
        "",
        "Requests recorded in the overflow series because the series cap was reached.",
    );
    w.sample(
        &format!("{overflow}_total"),
        &[],
        &scrape.metrics.overflowed().to_string(),
    );
    w.out.push('\n');

    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// The state behind the metrics route.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) apm: crate::Apm,
}

async fn serve(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(&headers);
    let body = endpoint.apm.render_metrics(format);
    let ct = match format {
        Format::Text => TEXT_CONTENT_TYPE,
        Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
    };
    ([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], body).into_response()
}

/// `GET /metrics`.
pub(crate) fn router(endpoint: Endpoint) -> Router {
    Router::new().route("/metrics", get(serve)).with_state(endpoint)
}
