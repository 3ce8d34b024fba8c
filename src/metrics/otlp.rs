//! OTLP push of the metrics: every `OTEL_METRIC_EXPORT_INTERVAL` (and on flush
//! and shutdown) a snapshot of the same aggregation the Prometheus endpoint
//! reads is encoded as an `ExportMetricsServiceRequest` and sent over gRPC or
//! HTTP/protobuf, from a thread of its own.
//!
//! Written here rather than through `opentelemetry-otlp`'s `MetricExporter`:
//! that exporter takes the SDK's `ResourceMetrics`, which only the SDK can build,
//! so it cannot send an aggregation the SDK did not make (see the module docs of
//! [`super`]). The messages are `opentelemetry-proto`'s and the transports are the
//! same tonic and hyper clients the span exporter uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_http::HttpClient;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as ProtoExemplar, Gauge, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::{attribute as semconv, metric as names};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::client::ClientSeries;
use super::db::{DB_BOUNDS_S, DbSeries};
use super::process::{self, CpuUtilization, ProcessSample};
use super::{DURATION_BOUNDS_S, Exemplar, HistogramSnapshot, Metrics, SIZE_BOUNDS, Series};
use crate::config::{ConfigError, MetricsConfig, OtlpConfig, Protocol};
use crate::export::ExportError;
use crate::export::health::{CollectorHealth, Signal};
use crate::redact::{scrub_userinfo, url_for_display};

enum Command {
    Flush(oneshot::Sender<Result<(), ExportError>>),
    Shutdown(oneshot::Sender<Result<(), ExportError>>),
}

/// Counters of the push, shown in `Apm::stats`.
#[derive(Debug, Default)]
pub(crate) struct PushCounters {
    pub(crate) exported: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// The handle to the push thread.
#[derive(Debug)]
pub(crate) struct Pusher {
    commands: mpsc::UnboundedSender<Command>,
    pub(crate) counters: Arc<PushCounters>,
}

impl Pusher {
    /// Starts the push thread; returns once its transport exists (or failed).
    pub(crate) fn start(
        metrics: Arc<Metrics>,
        resource: Resource,
        cfg: &MetricsConfig,
        health: Arc<CollectorHealth>,
    ) -> Result<Pusher, ConfigError> {
        health.register(Signal::Metrics, Some(&cfg.otlp.endpoint));
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(PushCounters::default());
        let worker = PushWorker {
            metrics,
            resource: encode_resource(&resource),
            otlp: cfg.otlp.clone(),
            timeout: cfg.export_timeout,
            interval: cfg.interval,
            cpu: CpuUtilization::new(),
            counters: Arc::clone(&counters),
            failing: false,
            health,
        };
        let (otlp, timeout) = (worker.otlp.clone(), worker.timeout);
        crate::export::spawn_export_thread(
            "tower-apm-metrics",
            move |rt| rt.block_on(async { Transport::new(&otlp, timeout) }),
            move |rt, transport| rt.block_on(worker.run(transport, rx)),
        )?;
        Ok(Pusher { commands: tx, counters })
    }

    /// Pushes now and waits for the result, at most `deadline`.
    pub(crate) async fn flush(&self, deadline: Duration) -> Result<(), ExportError> {
        self.ask(Command::Flush, deadline).await
    }

    /// Pushes a last time and stops the thread, waiting at most `deadline`.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<(), ExportError> {
        self.ask(Command::Shutdown, deadline).await
    }

    async fn ask(
        &self,
        make: fn(oneshot::Sender<Result<(), ExportError>>) -> Command,
        deadline: Duration,
    ) -> Result<(), ExportError> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).is_err() {
            return Err(ExportError::Stopped);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ExportError::Stopped),
            Err(_) => Err(ExportError::Deadline(deadline)),
        }
    }
}

enum Transport {
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: Box<HyperClient>,
        url: http::Uri,
        headers: http::HeaderMap,
    },
}

impl Transport {
    fn new(cfg: &OtlpConfig, timeout: Duration) -> Result<Transport, ConfigError> {
        let headers = cfg.header_map();
        let bad = |e: String| {
            ConfigError::Exporter(format!(
                "metrics endpoint {}: {}",
                cfg.endpoint_for_display(),
                scrub_userinfo(&e)
            ))
        };
        Ok(match cfg.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Channel::from_shared(cfg.endpoint.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .timeout(timeout.min(cfg.timeout))
                    .connect_timeout(timeout.min(cfg.timeout))
                    .connect_lazy();
                Transport::Grpc {
                    client: MetricsServiceClient::new(channel),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
            Protocol::HttpProtobuf => Transport::Http {
                client: Box::new(HyperClient::with_default_connector(timeout.min(cfg.timeout), None)),
                url: cfg
                    .endpoint
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?,
                headers,
            },
        })
    }

    async fn send(&self, req: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut request = tonic::Request::new(req);
                *request.metadata_mut() = metadata.clone();
                client
                    .clone()
                    .export(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), scrub_userinfo(s.message())))
            }
            Transport::Http { client, url, headers } => {
                let mut request = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Bytes::from(req.encode_to_vec()))
                    .map_err(|e| e.to_string())?;
                request.headers_mut().extend(headers.clone());
                let res = client
                    .send_bytes(request)
                    .await
                    .map_err(|e| scrub_userinfo(&e.to_string()).into_owned())?;
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "HTTP {} from {}",
                        res.status(),
                        url_for_display(&url.to_string())
                    ))
                }
            }
        }
    }
}

struct PushWorker {
    metrics: Arc<Metrics>,
    resource: ProtoResource,
    otlp: OtlpConfig,
    timeout: Duration,
    interval: Duration,
    cpu: CpuUtilization,
    counters: Arc<PushCounters>,
    failing: bool,
    /// Where failures and recoveries are reported, one warning per outage.
    health: Arc<CollectorHealth>,
}

impl PushWorker {
    async fn run(mut self, transport: Transport, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The utilization of the first push is measured from start-up.
        if let Some(p) = process::sample() {
            self.cpu.update(Instant::now(), &p);
        }
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = self.push(&transport).await; }
                cmd = commands.recv() => match cmd {
                    Some(Command::Flush(reply)) => {
                        let _ = reply.send(self.push(&transport).await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        let _ = reply.send(self.push(&transport).await);
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    async fn push(&mut self, transport: &Transport) -> Result<(), ExportError> {
        let process = process::sample();
        let utilization = process.as_ref().and_then(|p| self.cpu.update(Instant::now(), p));
        let req = encode(
            &self.metrics,
            &self.resource,
            process.as_ref(),
            utilization,
            SystemTime::now(),
        );
        let outcome = match tokio::time::timeout(self.timeout, transport.send(req)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ExportError::Metrics(e)),
            Err(_) => Err(ExportError::Metrics(format!("no answer within {:?}", self.timeout))),
        };
        match &outcome {
            Ok(()) => {
                self.counters.exported.fetch_add(1, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    self.health.recovered(Signal::Metrics, Some(&self.otlp.endpoint));
                }
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    self.health
                        .failed(Signal::Metrics, Some(&self.otlp.endpoint), &e.to_string());
                }
            }
        }
        outcome
    }
}

fn nanos(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(u64::MAX)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn encode_resource(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: resource
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
                    opentelemetry::Value::I64(i) => any_value::Value::IntValue(*i),
                    opentelemetry::Value::F64(f) => any_value::Value::DoubleValue(*f),
                    other => any_value::Value::StringValue(other.to_string()),
                };
                kv(k.as_str(), value)
            })
            .collect(),
        ..Default::default()
    }
}

/// The attributes of a request series, as the HTTP semantic conventions name them.
fn series_attributes(s: &Series) -> Vec<KeyValue> {
    let a = &s.attrs;
    if a.overflow {
        return vec![kv("otel.metric.overflow", any_value::Value::BoolValue(true))];
    }
    let mut out = vec![kv_str(semconv::HTTP_REQUEST_METHOD, a.method)];
    if let Some(route) = &a.route {
        out.push(kv_str(semconv::HTTP_ROUTE, route));
    }
    if let Some(status) = a.status {
        out.push(kv(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            any_value::Value::IntValue(i64::from(status)),
        ));
    }
    out.push(kv_str(semconv::URL_SCHEME, a.scheme()));
    out.push(kv_str(semconv::NETWORK_PROTOCOL_VERSION, a.version));
    if let Some(e) = a.error_type {
        out.push(kv_str(semconv::ERROR_TYPE, e));
    }
    out
}

/// The attributes of a database series, as the database semantic conventions
/// name them.
fn db_attributes(s: &DbSeries) -> Vec<KeyValue> {
    let a = &s.attrs;
    if a.overflow {
        return vec![kv("otel.metric.overflow", any_value::Value::BoolValue(true))];
    }
    let mut out = vec![kv_str(semconv::DB_SYSTEM_NAME, &a.system)];
    if let Some(op) = &a.operation {
        out.push(kv_str(semconv::DB_OPERATION_NAME, op));
    }
    if let Some(c) = &a.collection {
        out.push(kv_str(semconv::DB_COLLECTION_NAME, c));
    }
    if let Some(ns) = &a.namespace {
        out.push(kv_str(semconv::DB_NAMESPACE, ns));
    }
    if let Some((host, port)) = &a.server {
        out.push(kv_str(semconv::SERVER_ADDRESS, host));
        if let Some(p) = port {
            out.push(kv(semconv::SERVER_PORT, any_value::Value::IntValue(i64::from(*p))));
        }
    }
    if let Some(e) = &a.error_type {
        out.push(kv_str(semconv::ERROR_TYPE, e));
    }
    out
}

/// The attributes of an outgoing-call series, as the HTTP semantic
/// conventions name them.
fn client_attributes(s: &ClientSeries) -> Vec<KeyValue> {
    let a = &s.attrs;
    if a.overflow {
        return vec![kv("otel.metric.overflow", any_value::Value::BoolValue(true))];
    }
    let mut out = vec![kv_str(semconv::HTTP_REQUEST_METHOD, a.method)];
    if let Some(host) = &a.server_address {
        out.push(kv_str(semconv::SERVER_ADDRESS, host));
    }
    if let Some(port) = a.server_port {
        out.push(kv(semconv::SERVER_PORT, any_value::Value::IntValue(i64::from(port))));
    }
    if let Some(status) = a.status {
        out.push(kv(
            semconv::HTTP_RESPONSE_STATUS_CODE,
            any_value::Value::IntValue(i64::from(status)),
        ));
    }
    if let Some(e) = a.error_type {
        out.push(kv_str(semconv::ERROR_TYPE, e));
    }
    if let Some(scheme) = a.scheme {
        out.push(kv_str(semconv::URL_SCHEME, scheme));
    }
    out.push(kv_str(semconv::NETWORK_PROTOCOL_VERSION, a.version));
    out
}

struct Times {
    start: u64,
    now: u64,
}

fn histogram_point(
    attributes: Vec<KeyValue>,
    snap: &HistogramSnapshot,
    bounds: Vec<f64>,
    per_unit: f64,
    exemplars: &[Option<Exemplar>],
    t: &Times,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: t.start,
        time_unix_nano: t.now,
        count: snap.count,
        sum: Some(snap.sum as f64 / per_unit),
        bucket_counts: snap.counts.clone(),
        explicit_bounds: bounds,
        exemplars: exemplars
            .iter()
            .flatten()
            .map(|e| ProtoExemplar {
                time_unix_nano: nanos(e.time),
                span_id: e.span_id.to_bytes().to_vec(),
                trace_id: e.trace_id.to_bytes().to_vec(),
                value: Some(exemplar::Value::AsDouble(e.value.as_secs_f64())),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn metric(name: &str, description: &str, unit: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.to_owned(),
        description: description.to_owned(),
        unit: unit.to_owned(),
        data: Some(data),
        ..Default::default()
    }
}

fn number(attributes: Vec<KeyValue>, value: number_data_point::Value, t: &Times) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: t.start,
        time_unix_nano: t.now,
        value: Some(value),
        ..Default::default()
    }
}

fn sum(points: Vec<NumberDataPoint>, monotonic: bool) -> metric::Data {
    metric::Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: monotonic,
    })
}

/// One push: every metric, cumulative since the `Apm` started.
pub(crate) fn encode(
    metrics: &Metrics,
    resource: &ProtoResource,
    process: Option<&ProcessSample>,
    utilization: Option<f64>,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let t = Times {
        start: nanos(metrics.start),
        now: nanos(now),
    };
    let series = metrics.series();
    let cumulative = AggregationTemporality::Cumulative as i32;
    let sizes: Vec<f64> = SIZE_BOUNDS.iter().map(|b| *b as f64).collect();
    let mut out = Vec::new();

    let histogram = |pick: fn(&Series) -> HistogramSnapshot, bounds: &[f64], per_unit: f64, exemplars: bool| {
        let points: Vec<HistogramDataPoint> = series
            .iter()
            .filter_map(|s| {
                let snap = pick(s);
                (snap.count > 0).then(|| {
                    let ex = if exemplars { s.exemplars().to_vec() } else { Vec::new() };
                    histogram_point(series_attributes(s), &snap, bounds.to_vec(), per_unit, &ex, &t)
                })
            })
            .collect();
        metric::Data::Histogram(ProtoHistogram {
            data_points: points,
            aggregation_temporality: cumulative,
        })
    };
    out.push(metric(
        names::HTTP_SERVER_REQUEST_DURATION,
        "Duration of HTTP server requests.",
        "s",
        histogram(|s| s.duration.snapshot(), &DURATION_BOUNDS_S, 1e9, true),
    ));
    out.push(metric(
        names::HTTP_SERVER_REQUEST_BODY_SIZE,
        "Size of HTTP server request bodies (from Content-Length).",
        "By",
        histogram(|s| s.request_size.snapshot(), &sizes, 1.0, false),
    ));
    out.push(metric(
        names::HTTP_SERVER_RESPONSE_BODY_SIZE,
        "Size of HTTP server response bodies.",
        "By",
        histogram(|s| s.response_size.snapshot(), &sizes, 1.0, false),
    ));
    let db = metrics.db.series();
    if !db.is_empty() {
        let bounds = DB_BOUNDS_S.to_vec();
        let points = db
            .iter()
            .map(|s| histogram_point(db_attributes(s), &s.duration.snapshot(), bounds.clone(), 1e9, &[], &t))
            .collect();
        out.push(metric(
            names::DB_CLIENT_OPERATION_DURATION,
            "Duration of database client operations.",
            "s",
            metric::Data::Histogram(ProtoHistogram {
                data_points: points,
                aggregation_temporality: cumulative,
            }),
        ));
        let slow = db
            .iter()
            .map(|s| {
                let n = s.slow.load(std::sync::atomic::Ordering::Relaxed);
                number(
                    db_attributes(s),
                    number_data_point::Value::AsInt(i64::try_from(n).unwrap_or(i64::MAX)),
                    &t,
                )
            })
            .collect();
        out.push(metric(
            "tower_apm.db.slow_queries",
            "Database queries slower than their threshold.",
            "{query}",
            sum(slow, true),
        ));
    }
    let client = metrics.client.series();
    if !client.is_empty() {
        let bounds = DURATION_BOUNDS_S.to_vec();
        let points = client
            .iter()
            .map(|s| {
                histogram_point(
                    client_attributes(s),
                    &s.duration.snapshot(),
                    bounds.clone(),
                    1e9,
                    &[],
                    &t,
                )
            })
            .collect();
        out.push(metric(
            names::HTTP_CLIENT_REQUEST_DURATION,
            "Duration of HTTP client requests.",
            "s",
            metric::Data::Histogram(ProtoHistogram {
                data_points: points,
                aggregation_temporality: cumulative,
            }),
        ));
    }
    let active = metrics
        .active()
        .into_iter()
        .map(|(method, scheme, n)| {
            number(
                vec![
                    kv_str(semconv::HTTP_REQUEST_METHOD, method),
                    kv_str(semconv::URL_SCHEME, scheme),
                ],
                number_data_point::Value::AsInt(n),
                &t,
            )
        })
        .collect();
    out.push(metric(
        names::HTTP_SERVER_ACTIVE_REQUESTS,
        "Number of active HTTP server requests.",
        "{request}",
        sum(active, false),
    ));

    if let Some(p) = process {
        let cpu = [("user", p.cpu_user), ("system", p.cpu_system)]
            .into_iter()
            .map(|(mode, d)| {
                number(
                    vec![kv_str(semconv::CPU_MODE, mode)],
                    number_data_point::Value::AsDouble(d.as_secs_f64()),
                    &t,
                )
            })
            .collect();
        out.push(metric(
            names::PROCESS_CPU_TIME,
            "Total CPU seconds broken down by different CPU modes.",
            "s",
            sum(cpu, true),
        ));
        if let Some(u) = utilization {
            out.push(metric(
                names::PROCESS_CPU_UTILIZATION,
                "CPU time used since the previous push over the time elapsed and the CPUs available.",
                "1",
                metric::Data::Gauge(Gauge {
                    data_points: vec![number(Vec::new(), number_data_point::Value::AsDouble(u), &t)],
                }),
            ));
        }
        let gauge_like = |value: u64| {
            sum(
                vec![number(Vec::new(), number_data_point::Value::AsInt(value as i64), &t)],
                false,
            )
        };
        out.push(metric(
            names::PROCESS_MEMORY_USAGE,
            "The amount of physical memory in use.",
            "By",
            gauge_like(p.resident_bytes),
        ));
        out.push(metric(
            names::PROCESS_MEMORY_VIRTUAL,
            "The amount of committed virtual memory.",
            "By",
            gauge_like(p.virtual_bytes),
        ));
        if let Some(fds) = p.open_fds {
            out.push(metric(
                names::PROCESS_UNIX_FILE_DESCRIPTOR_COUNT,
                "Number of unix file descriptors in use by the process.",
                "{file_descriptor}",
                gauge_like(fds),
            ));
        }
        out.push(metric(
            names::PROCESS_THREAD_COUNT,
            "Process threads count.",
            "{thread}",
            gauge_like(p.threads),
        ));
    }

    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tower-apm".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics: out,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
