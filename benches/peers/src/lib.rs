//! tower-apm against the stacks users would build instead, on one axum router.
//!
//! Every configuration serves the same router as `benches/common` (`GET
//! /users/{id}` returning a short string), sampled with `always_on`, its spans
//! exported through the SDK's own pipeline (a batch processor, queue 65,536, batches
//! of 512, one export thread) to an in-process exporter that counts and drops them:
//!
//! | name | what |
//! |---|---|
//! | `bare` | no layer |
//! | `tower_apm` | `apm.layer()`: traces, request metrics, access log to a file |
//! | `tower_apm_traces_metrics` | `apm.layer()`: traces and request metrics |
//! | `stitched` | tower-http `TraceLayer` (a span with the HTTP semantic-convention fields and the extracted parent) + `tracing-opentelemetry` + `axum-prometheus` |
//! | `stitched_access_log` | `stitched` + one JSON line per response (`DefaultOnResponse` at INFO) through `tracing-subscriber`'s JSON formatter and `tracing-appender` to a file |
//! | `otel_instrumentation_tower` | `opentelemetry-instrumentation-tower` 0.19 (traces + the four HTTP server metrics, SDK histogram) |
//!
//! The peers are configured as their documentation shows, with a level filter
//! at INFO (what services run in production).

#![forbid(unsafe_code)]

#[path = "../../common/mod.rs"]
pub mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::routing::get;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tower::ServiceExt;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::{Dispatch, Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

use common::Config;

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// No layer.
    Bare,
    /// tower-apm: sampled traces exported, request metrics, access log to a file.
    TowerApm,
    /// tower-apm: sampled traces exported and request metrics.
    TowerApmTracesMetrics,
    /// `TraceLayer` + `tracing-opentelemetry` + `axum-prometheus`.
    Stitched,
    /// `Stitched` + a JSON access-log line per response to a file.
    StitchedAccessLog,
    /// `opentelemetry-instrumentation-tower`, traces and metrics.
    OtelInstrumentationTower,
}

impl Peer {
    /// Every configuration, the baseline first.
    pub const ALL: [Peer; 6] = [
        Peer::Bare,
        Peer::TowerApm,
        Peer::TowerApmTracesMetrics,
        Peer::Stitched,
        Peer::StitchedAccessLog,
        Peer::OtelInstrumentationTower,
    ];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Bare => "bare",
            Peer::TowerApm => "tower_apm",
            Peer::TowerApmTracesMetrics => "tower_apm_traces_metrics",
            Peer::Stitched => "stitched",
            Peer::StitchedAccessLog => "stitched_access_log",
            Peer::OtelInstrumentationTower => "otel_instrumentation_tower",
        }
    }

    /// The configuration named `name`.
    pub fn parse(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The tower-apm configuration doing the same work as this peer, for the
    /// "peer over ours" ratios.
    pub fn ours(self) -> Option<Peer> {
        match self {
            Peer::Stitched | Peer::StitchedAccessLog => Some(Peer::TowerApm),
            Peer::OtelInstrumentationTower => Some(Peer::TowerApmTracesMetrics),
            Peer::Bare | Peer::TowerApm | Peer::TowerApmTracesMetrics => None,
        }
    }

    /// Whether every request's span reaches the exporter.
    pub fn exports(self) -> bool {
        self != Peer::Bare
    }
}

/// Counts the spans of every batch and drops them.
#[derive(Debug, Clone, Default)]
pub struct CountingExporter(Arc<AtomicU64>);

impl CountingExporter {
    /// Spans exported so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Accepts every metric export and drops it.
#[derive(Debug)]
struct NoopMetricExporter;

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for NoopMetricExporter {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The SDK tracer provider both peers export through: the same queue and batch
/// sizes as tower-apm's configuration in `benches/common`.
fn sdk_tracer_provider(exporter: CountingExporter) -> SdkTracerProvider {
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(65_536)
        .with_max_export_batch_size(512)
        .build();
    SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(config).build())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("bench")
                .build(),
        )
        .build()
}

fn set_propagator() {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
}

/// The server span a `TraceLayer` user writes: named `{method} {route}`, kind
/// server, the HTTP semantic-convention fields, and the parent extracted from the
/// request headers.
fn make_span(req: &Request<Body>) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str);
    let method = req.method();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        url.path = req.uri().path(),
        url.scheme = "http",
        network.protocol.version = "1.1",
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    // Only fails without an OpenTelemetry layer in the subscriber.
    let _ = span.set_parent(parent);
    span
}

/// Records the status on the span; with `access_log`, also tower-http's
/// "finished processing request" event at INFO (the access-log line).
#[derive(Clone, Copy)]
struct RecordStatus {
    access_log: bool,
}

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        if self.access_log {
            DefaultOnResponse::new()
                .level(Level::INFO)
                .on_response(response, latency, span);
        }
    }
}

/// The global Prometheus recorder of `axum-prometheus` (one per process).
static PROMETHEUS: OnceLock<axum_prometheus::metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();

fn prometheus_layer() -> axum_prometheus::PrometheusMetricLayer<'static> {
    if PROMETHEUS.get().is_some() {
        return axum_prometheus::PrometheusMetricLayer::new();
    }
    let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
    let _ = PROMETHEUS.set(handle);
    layer
}

/// Where the peer keeps its pipeline, to flush it at the end.
enum Pipeline {
    None,
    Ours,
    Stitched {
        provider: SdkTracerProvider,
        dispatch: Dispatch,
        _appender: Option<tracing_appender::non_blocking::WorkerGuard>,
    },
    OtelTower {
        tracer: SdkTracerProvider,
        meter: SdkMeterProvider,
    },
}

/// How the peer's `tracing` subscriber is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// As the global default: one configuration per process (the instruction
    /// counts and the load-test server), the fastest path for `tracing`.
    Global,
    /// Kept in the setup and entered with [`PeerSetup::enter`] around each
    /// measurement, so that several configurations share one process (criterion).
    /// `tracing` then looks up a thread-local on every call: a few nanoseconds per
    /// span operation that the global install does not pay.
    Scoped,
}

/// A built configuration.
pub struct PeerSetup {
    /// Which configuration.
    pub peer: Peer,
    /// The router with the configuration's layers, ready to serve.
    pub router: Router,
    /// tower-apm's setup (its `Apm`), for the tower-apm configurations.
    pub ours: Option<common::Setup>,
    spans: CountingExporter,
    pipeline: Pipeline,
    host: Option<HeaderValue>,
}

impl std::fmt::Debug for PeerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSetup")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A file for the access log of `peer` in the temporary directory.
pub fn access_log_path(peer: Peer) -> PathBuf {
    std::env::temp_dir().join(format!("tower-apm-peers-{}-{}.log", peer.name(), std::process::id()))
}

/// The router every configuration serves.
pub fn router() -> Router {
    Router::new().route("/users/{id}", get(|| async { "hello, user" }))
}

impl PeerSetup {
    /// Builds `peer`. Must run inside a tokio runtime (`axum-prometheus` spawns
    /// its upkeep task).
    pub fn new(peer: Peer, install: Install) -> PeerSetup {
        let spans = CountingExporter::default();
        let (router, ours, pipeline) = match peer {
            Peer::Bare => (router(), None, Pipeline::None),
            Peer::TowerApm | Peer::TowerApmTracesMetrics => {
                let config = if peer == Peer::TowerApm {
                    Config::SampledMetricsLogs
                } else {
                    Config::SampledMetrics
                };
                let setup = common::Setup::new(config);
                (setup.router.clone(), Some(setup), Pipeline::Ours)
            }
            Peer::Stitched | Peer::StitchedAccessLog => {
                set_propagator();
                let access_log = peer == Peer::StitchedAccessLog;
                let provider = sdk_tracer_provider(spans.clone());
                let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("stitched"));
                let (dispatch, appender) = if access_log {
                    let file = std::fs::File::create(access_log_path(peer)).expect("a writable temporary directory");
                    let (writer, guard) = tracing_appender::non_blocking(file);
                    let fmt = tracing_subscriber::fmt::layer().json().with_writer(writer);
                    let subscriber = tracing_subscriber::registry()
                        .with(otel)
                        .with(fmt)
                        .with(LevelFilter::INFO);
                    (Dispatch::new(subscriber), Some(guard))
                } else {
                    let subscriber = tracing_subscriber::registry().with(otel).with(LevelFilter::INFO);
                    (Dispatch::new(subscriber), None)
                };
                if install == Install::Global {
                    tracing::dispatcher::set_global_default(dispatch.clone()).expect("one configuration per process");
                }
                let router = router().layer(prometheus_layer()).layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_response(RecordStatus { access_log }),
                );
                let pipeline = Pipeline::Stitched {
                    provider,
                    dispatch,
                    _appender: appender,
                };
                (router, None, pipeline)
            }
            Peer::OtelInstrumentationTower => {
                set_propagator();
                let tracer = sdk_tracer_provider(spans.clone());
                // Exports once, at shutdown: the same in runs of any length.
                let reader = PeriodicReader::builder(NoopMetricExporter)
                    .with_interval(Duration::from_secs(3600))
                    .build();
                let meter = SdkMeterProvider::builder().with_reader(reader).build();
                opentelemetry::global::set_tracer_provider(tracer.clone());
                opentelemetry::global::set_meter_provider(meter.clone());
                // Reads the global providers now, once.
                let layer = opentelemetry_instrumentation_tower::http::server::Layer::new();
                (router().layer(layer), None, Pipeline::OtelTower { tracer, meter })
            }
        };
        PeerSetup {
            peer,
            // What `axum::serve` does once per connection (see benches/common).
            router: router.with_state(()),
            ours,
            spans,
            pipeline,
            host: std::env::var("BENCH_HOST")
                .ok()
                .map(|h| HeaderValue::try_from(h).expect("BENCH_HOST is a valid header value")),
        }
    }

    /// With [`Install::Scoped`], makes this configuration's subscriber the
    /// thread's default until the guard drops.
    pub fn enter(&self) -> Option<tracing::dispatcher::DefaultGuard> {
        match &self.pipeline {
            Pipeline::Stitched { dispatch, .. } => Some(tracing::dispatcher::set_default(dispatch)),
            _ => None,
        }
    }

    /// `GET /users/42`, with `host: $BENCH_HOST` when that variable is set.
    pub fn request(&self) -> Request<Body> {
        let mut req = Request::get("/users/42").body(Body::empty()).expect("a valid request");
        if let Some(host) = &self.host {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        req
    }

    /// One request through the router, its body drained and dropped.
    pub async fn one(&self) {
        let res = self.router.clone().oneshot(self.request()).await.expect("infallible");
        assert!(res.status().is_success(), "status {}", res.status());
        let body = res.into_body().collect().await.expect("the body ends");
        std::hint::black_box(body);
    }

    /// Flushes and stops the export pipeline; returns the spans exported.
    pub async fn shutdown(&self) -> u64 {
        match &self.pipeline {
            Pipeline::None => 0,
            Pipeline::Ours => {
                let setup = self.ours.as_ref().expect("tower-apm configurations keep their setup");
                setup.shutdown().await;
                setup.apm.as_ref().map_or(0, |apm| apm.stats().spans_exported)
            }
            Pipeline::Stitched { provider, .. } => {
                provider.shutdown().expect("the counting exporter never fails");
                self.spans.count()
            }
            Pipeline::OtelTower { tracer, meter } => {
                tracer.shutdown().expect("the counting exporter never fails");
                meter.shutdown().expect("the no-op metric exporter never fails");
                self.spans.count()
            }
        }
    }
}
