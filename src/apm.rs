//! [`Apm`], the one handle users hold, and its builder.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{RandomIdGenerator, SdkTracer, SdkTracerProvider, SpanExporter};

use crate::alerts::engine::Alerts;
use crate::alerts::notify::{Dispatcher, Notifier};
use crate::alerts::{self, Alert, Slo};
use crate::config::{Config, ConfigError, EnvSource, Protocol, Settings};
use crate::export::{DynSpanExporter, ExportError, ExporterSpec, Pipeline, QueueProcessor, TelemetryStats};
use crate::layer::client_addr::{ForwardedHeader, TrustedProxies};
use crate::layer::{ApmLayer, Shared};
use crate::logs::writer::LogWriter;
use crate::logs::{AccessLog, JsonLayer, LogOutput, Redactor};
use crate::metrics::Metrics;
use crate::metrics::otlp::Pusher;
use crate::metrics::prometheus::{self, Format, Scrape};
use crate::record::Recorder;
use crate::security::Security;
use crate::security::monitor::Monitor;
use crate::trace::{ClientLayer, Sampler};

/// The APM handle: build it once at start-up, add [`Apm::layer`] to the router,
/// and call [`Apm::shutdown`] before exit. Cheap to clone.
///
/// ```
/// # fn main() -> Result<(), tower_apm::ConfigError> {
/// use axum::{Router, routing::get};
///
/// let apm = tower_apm::Apm::builder().service_name("checkout").build()?;
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "hi" }))
///     .layer(apm.layer());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Apm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    pipeline: Option<Pipeline>,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    flush_deadline: Duration,
    metrics: Option<Arc<Metrics>>,
    pusher: Option<Pusher>,
    resource: opentelemetry_sdk::Resource,
    logs: Arc<LogWriter>,
    service: Arc<str>,
    redactor: Arc<Redactor>,
    alerts: Option<Arc<Alerts>>,
    notify: Option<Dispatcher>,
    started: std::time::Instant,
    lifecycle: crate::shutdown::LifecycleSlot,
    status_token: Option<crate::operator::Token>,
    metrics_token: Option<crate::operator::Token>,
    panic_hook: crate::logs::PanicHook,
    trace_url: Option<Arc<str>>,
    security: Option<Arc<Monitor>>,
    #[cfg(feature = "otlp-logs")]
    otlp_logs: Option<(
        opentelemetry_sdk::logs::SdkLoggerProvider,
        Arc<crate::logs::otlp::LogExportCounters>,
    )>,
}

/// Builds an [`Apm`]. Every setting has a default; the standard `OTEL_*`
/// variables override the defaults, and explicit builder calls override both.
#[derive(Debug, Default)]
#[must_use]
pub struct ApmBuilder {
    settings: Settings,
    exporter: Option<Box<dyn DynSpanExporter>>,
    logs: Option<LogOutput>,
    access_log: Option<bool>,
    redact_fields: Vec<String>,
    alerts: Vec<Alert>,
    slos: Vec<Slo>,
    notifiers: Vec<Notifier>,
    alert_interval: Option<Duration>,
    security: Option<Security>,
    trusted_proxies: Vec<String>,
    forwarded_header: ForwardedHeader,
    excluded: crate::layer::Excluded,
    record_operator_routes: bool,
    status_token: Option<crate::operator::Secret>,
    metrics_token: Option<crate::operator::Secret>,
    panic_hook: crate::logs::PanicHook,
    trace_url: Option<String>,
    recent_traces: Option<(usize, Duration)>,
}

impl Apm {
    /// Starts a builder.
    pub fn builder() -> ApmBuilder {
        ApmBuilder::default()
    }

    /// The server layer: one span per request, context propagation, and the
    /// request record every other signal reads.
    pub fn layer(&self) -> ApmLayer {
        ApmLayer {
            shared: Arc::clone(&self.inner.shared),
            route_fn: None,
        }
    }

    /// The client layer for outgoing HTTP calls: a CLIENT span and injected
    /// `traceparent`/`tracestate`/`baggage` headers.
    pub fn client_layer(&self) -> ClientLayer {
        ClientLayer {
            shared: Arc::clone(&self.inner.shared),
        }
    }

    /// The `reqwest` middleware for outgoing calls (feature `reqwest`): the
    /// same CLIENT span, headers and `http.client.request.duration` as
    /// [`Apm::client_layer`], for a `reqwest_middleware::ClientWithMiddleware`.
    ///
    /// ```no_run
    /// # fn demo(apm: &tower_apm::Apm) {
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(apm.reqwest_middleware())
    ///     .build();
    /// # }
    /// ```
    #[cfg(feature = "reqwest")]
    pub fn reqwest_middleware(&self) -> crate::ReqwestMiddleware {
        crate::ReqwestMiddleware {
            shared: Arc::clone(&self.inner.shared),
        }
    }

    /// An OpenTelemetry tracer whose spans go through the same queue and exporter
    /// as the layer's, for use with `tracing-opentelemetry` or directly.
    pub fn tracer(&self) -> SdkTracer {
        self.inner.tracer.clone()
    }

    /// The tracer provider behind [`Apm::tracer`].
    pub fn tracer_provider(&self) -> SdkTracerProvider {
        self.inner.provider.clone()
    }

    /// A `tracing-opentelemetry` layer over [`Apm::tracer`]: add it to a
    /// `tracing_subscriber::Registry` and `tracing` spans inside handlers become
    /// children of the request's server span in the exported trace.
    pub fn tracing_layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer())
    }

    /// Installs a global `tracing` subscriber: human-readable lines on stdout
    /// filtered by `RUST_LOG` (default `info`), plus [`Apm::tracing_layer`]; and
    /// installs [`Apm::tracer_provider`] as the global OpenTelemetry provider
    /// and [`Apm::text_map_propagator`] as the global propagator.
    ///
    /// # Errors
    /// `RUST_LOG` does not parse, or a global subscriber is already installed.
    pub fn init_tracing(&self) -> Result<(), ConfigError> {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(env_filter()?)
            .with(tracing_subscriber::fmt::layer())
            .with(self.tracing_layer())
            .try_init()
            .map_err(|e| ConfigError::Subscriber(e.to_string()))?;
        self.install_globals();
        Ok(())
    }

    /// The global OpenTelemetry tracer provider and text-map propagator, and
    /// the panic hook: what both `init_*` functions install besides their
    /// subscriber.
    fn install_globals(&self) {
        opentelemetry::global::set_tracer_provider(self.tracer_provider());
        opentelemetry::global::set_text_map_propagator(self.text_map_propagator());
        self.install_panic_hook();
    }

    /// An OpenTelemetry propagator for the formats `OTEL_PROPAGATORS` selects
    /// (W3C Trace Context and W3C Baggage by default; an empty composite for
    /// `none`), the ones the layers read and write. [`Apm::init_tracing`] and
    /// [`Apm::init_logging`] install it with
    /// `opentelemetry::global::set_text_map_propagator`, so libraries that
    /// propagate through `opentelemetry::global` send the same headers; install
    /// it yourself when you compose your own subscriber.
    pub fn text_map_propagator(&self) -> opentelemetry::propagation::TextMapCompositePropagator {
        crate::trace::propagation::text_map_propagator(self.inner.shared.propagation)
    }

    /// The Prometheus endpoint, `GET /metrics`, to merge into the application's
    /// router (`app.merge(apm.metrics_router())`) or to serve on its own port with
    /// [`Apm::serve_metrics`]. It answers in the text format 0.0.4, or in
    /// OpenMetrics 1.0 with exemplars (the trace ids of sampled requests) when the
    /// scraper asks for it, as Prometheus does. Open by default, as Prometheus
    /// scrapes usually are; [`ApmBuilder::metrics_token`] makes it ask for a
    /// bearer token.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_apm::ConfigError> {
    /// use axum::{Router, routing::get};
    ///
    /// let apm = tower_apm::Apm::builder().service_name("checkout").build()?;
    /// let app: Router = Router::new()
    ///     .route("/users/{id}", get(|| async { "hi" }))
    ///     .merge(apm.metrics_router())
    ///     .layer(apm.layer());
    /// # Ok(()) }
    /// ```
    pub fn metrics_router(&self) -> axum::Router {
        crate::operator::guard(
            prometheus::router(prometheus::Endpoint { apm: self.clone() }),
            self.inner.metrics_token.clone(),
        )
    }

    /// Serves [`Apm::metrics_router`] on its own listener (for example a port
    /// that is not exposed with the application), on the current tokio runtime,
    /// until the runtime stops. Returns the address it listens on (useful with
    /// port 0).
    ///
    /// # Errors
    /// The address cannot be bound (it is in use, or not local): the error says
    /// which address.
    pub async fn serve_metrics(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let router = self.metrics_router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(target: "tower_apm", error = %e, "the metrics endpoint stopped");
            }
        });
        Ok(local)
    }

    /// Requests in flight per the request metrics (`None` when they are off).
    pub(crate) fn active_requests(&self) -> Option<i64> {
        self.inner
            .metrics
            .as_ref()
            .map(|m| m.active().iter().map(|(_, _, n)| n).sum())
    }

    /// Every metric in one exposition format.
    pub(crate) fn render_metrics(&self, format: Format) -> String {
        let empty;
        let metrics = match &self.inner.metrics {
            Some(m) => m.as_ref(),
            None => {
                empty = Metrics::new(1);
                &empty
            }
        };
        let process = crate::metrics::process::sample();
        let cpu_utilization = process
            .as_ref()
            .and_then(|p| metrics.cpu.update(std::time::Instant::now(), p));
        prometheus::render(
            &Scrape {
                metrics,
                resource: &self.inner.resource,
                stats: self.stats(),
                process,
                cpu_utilization,
            },
            format,
        )
    }

    /// The `tracing` layer that writes every event as a JSON line to the output
    /// of [`ApmBuilder::logs`] (stdout by default), with the trace and span ids of
    /// the request it happened in and sensitive fields redacted. Compose it with
    /// [`Apm::tracing_layer`] and a filter, or let [`Apm::init_logging`] do it.
    pub fn logging_layer(&self) -> JsonLayer {
        JsonLayer {
            writer: Arc::clone(&self.inner.logs),
            service: Arc::clone(&self.inner.service),
            redactor: Arc::clone(&self.inner.redactor),
        }
    }

    /// Installs a global `tracing` subscriber that writes JSON lines
    /// ([`Apm::logging_layer`]) filtered by `RUST_LOG` (default `info`), plus
    /// [`Apm::tracing_layer`], and installs [`Apm::tracer_provider`] as the
    /// global OpenTelemetry provider and [`Apm::text_map_propagator`] as the
    /// global propagator.
    ///
    /// # Errors
    /// `RUST_LOG` does not parse, or a global subscriber is already installed.
    pub fn init_logging(&self) -> Result<(), ConfigError> {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let registry = tracing_subscriber::registry()
            .with(env_filter()?)
            .with(self.tracing_layer())
            .with(self.logging_layer());
        #[cfg(feature = "otlp-logs")]
        let registry = registry.with(self.otlp_logs_layer());
        registry
            .try_init()
            .map_err(|e| ConfigError::Subscriber(e.to_string()))?;
        self.install_globals();
        Ok(())
    }

    /// Makes every panic one log line through the global `tracing` subscriber
    /// (target `tower_apm::panic`, the message escaped, its location, the
    /// thread, and the trace and span ids of the request it happened in)
    /// instead of raw text on stderr, as [`ApmBuilder::panic_hook`] says
    /// (default [`PanicHook::Log`](crate::PanicHook::Log)). [`Apm::init_logging`]
    /// and [`Apm::init_tracing`] call it; call it yourself, once, after
    /// installing a subscriber of your own with [`Apm::logging_layer`].
    ///
    /// A panic on the main thread (or any panic when panics abort) waits up to
    /// 0.5 s for the line to be written, since the process may end with it.
    pub fn install_panic_hook(&self) {
        crate::logs::panic::install(self.inner.panic_hook, Some(Arc::clone(&self.inner.logs)));
    }

    /// The `tracing` layer that turns events into OpenTelemetry log records sent
    /// over OTLP (`OTEL_LOGS_EXPORTER`, `OTEL_EXPORTER_OTLP_LOGS_*`), with the
    /// trace and span ids of the current context. `None` when
    /// `OTEL_LOGS_EXPORTER=none`. [`Apm::init_logging`] includes it.
    #[cfg(feature = "otlp-logs")]
    pub fn otlp_logs_layer(
        &self,
    ) -> Option<
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge<
            opentelemetry_sdk::logs::SdkLoggerProvider,
            opentelemetry_sdk::logs::SdkLogger,
        >,
    > {
        self.inner
            .otlp_logs
            .as_ref()
            .map(|(p, _)| opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p))
    }

    /// Waits until every log line written so far is on its output, at most
    /// `deadline`: security events queued before the call included (and their
    /// audit records synced). Returns whether it finished in time.
    pub async fn flush_logs(&self, deadline: Duration) -> bool {
        let started = std::time::Instant::now();
        let security = match &self.inner.security {
            Some(m) => m.flush(deadline).await,
            None => true,
        };
        let deadline = deadline.saturating_sub(started.elapsed());
        let logs = Arc::clone(&self.inner.logs);
        if !security {
            return false;
        }
        tokio::task::spawn_blocking(move || logs.flush(deadline))
            .await
            .unwrap_or(false)
    }

    /// `GET /alerts`: every alert rule's state as JSON: name, state
    /// (`inactive`, `pending`, `firing`), the value at the last evaluation, the
    /// threshold, the window and the requests in it, when it became active, fired
    /// and resolved, labels and annotations; with security monitoring, the latest
    /// detections (user names, client addresses). An operator endpoint: it asks
    /// for [`ApmBuilder::status_token`] when one is set, as the status page does.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_apm::ConfigError> {
    /// use std::time::Duration;
    /// use tower_apm::{Alert, Apm};
    ///
    /// let apm = Apm::builder()
    ///     .alert(Alert::error_rate().above(0.05).over(Duration::from_secs(300)))
    ///     .build()?;
    /// let app: axum::Router = axum::Router::new().merge(apm.alerts_router());
    /// # Ok(()) }
    /// ```
    pub fn alerts_router(&self) -> axum::Router {
        let alerts = self.inner.alerts.clone();
        let security = self.inner.security.clone();
        let routes = axum::Router::new().route(
            "/alerts",
            axum::routing::get(move || {
                let mut body = alerts.as_ref().map_or_else(
                    || r#"{"evaluations":0,"last_evaluation":null,"alerts":[]}"#.to_owned(),
                    |a| a.status_json(),
                );
                if let Some(m) = &security {
                    // The object's closing brace makes way for the security part.
                    body.pop();
                    body.push_str(",\"security\":");
                    body.push_str(&m.status_json());
                    body.push('}');
                }
                async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        );
        crate::operator::guard(routes, self.inner.status_token.clone())
    }

    /// `GET /apm`: a live status page served by the process itself, with
    /// nothing else installed: request rate, error rate and latency over the
    /// last minute, 5 minutes and hour with charts, in-flight requests, process
    /// CPU and memory, telemetry health, one row per route, the recent slow and
    /// failed requests with the waterfall of their spans, alerts, SLOs and
    /// security detections; the same as JSON under `/apm/api/`. See
    /// [`status`](crate::status). An operator page: it asks for
    /// [`ApmBuilder::status_token`] when one is set, and its answers are
    /// `Cache-Control: no-store`, `Referrer-Policy: no-referrer`,
    /// `X-Content-Type-Options: nosniff`, with a Content-Security-Policy that
    /// loads nothing, runs only the page's own script (by its hash) and lets no
    /// other site frame it.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_apm::ConfigError> {
    /// let apm = tower_apm::Apm::builder().status_token("s3cret").build()?;
    /// let app: axum::Router = axum::Router::new().merge(apm.status_router());
    /// # Ok(()) }
    /// ```
    pub fn status_router(&self) -> axum::Router {
        crate::status::router(self, self.inner.status_token.clone(), self.inner.trace_url.clone())
    }

    /// Serves [`Apm::status_router`] on `addr` (port 0 picks one), in the
    /// background; returns the address it listens on.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local).
    pub async fn serve_status(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let router = self.status_router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(local)
    }

    pub(crate) fn set_lifecycle(&self, source: crate::shutdown::LifecycleSource) {
        *self.inner.lifecycle.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The shutdown's state, when a [`Shutdown`](crate::Shutdown) flushes this `Apm`.
    pub(crate) fn lifecycle(&self) -> Option<crate::shutdown::Lifecycle> {
        let source = self.inner.lifecycle.0.lock().unwrap_or_else(|e| e.into_inner());
        source.as_ref().and_then(|f| f())
    }

    pub(crate) fn metrics_handle(&self) -> Option<Arc<Metrics>> {
        self.inner.metrics.clone()
    }

    pub(crate) fn alerts_handle(&self) -> Option<Arc<Alerts>> {
        self.inner.alerts.clone()
    }

    pub(crate) fn security_handle(&self) -> Option<Arc<Monitor>> {
        self.inner.security.clone()
    }

    pub(crate) fn service_name(&self) -> &str {
        &self.inner.service
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// When the exporter last accepted a batch of spans.
    pub(crate) fn last_export(&self) -> Option<std::time::SystemTime> {
        let ms = self
            .inner
            .pipeline
            .as_ref()?
            .queue
            .counters
            .last_export_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then(|| std::time::UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Whether spans are exported (and so kept for the status page).
    pub(crate) fn exports_spans(&self) -> bool {
        self.inner.pipeline.is_some()
    }

    /// Copies of the kept recent failed and slow requests (oldest first).
    pub(crate) fn recent_traces(
        &self,
    ) -> (
        Vec<crate::status::recent::RecentTrace>,
        Vec<crate::status::recent::RecentTrace>,
    ) {
        match &self.inner.pipeline {
            Some(p) => {
                let r = p.queue.recent.lock().unwrap_or_else(|e| e.into_inner());
                (r.failed.iter().cloned().collect(), r.slow.iter().cloned().collect())
            }
            None => (Vec::new(), Vec::new()),
        }
    }

    /// A database the application queries, named by its `db.system.name`
    /// (`postgresql`, `mysql`, `sqlite`, ...): time its queries with
    /// [`Database::query`](crate::db::Database::query) or
    /// [`Database::statement`](crate::db::Database::statement). See [`db`](crate::db).
    pub fn database(&self, system: &str) -> crate::db::Database {
        crate::db::Database::new(Arc::clone(&self.inner.shared), Arc::clone(&self.inner.logs), system)
    }

    /// Reports a security event from outside a request's response: a job, a
    /// startup check, or a handler that has no response to attach it to. It
    /// carries the trace of the current OpenTelemetry context, when there is
    /// one; a failed login still counts for the brute-force detector (by
    /// user). Without [`ApmBuilder::security`] it is ignored.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_apm::ConfigError> {
    /// use tower_apm::security::{Level, Security, SecurityEvent};
    ///
    /// let apm = tower_apm::Apm::builder().security(Security::new()).build()?;
    /// apm.security_event(SecurityEvent::new("sys_startup:deploy-bot", Level::Warn));
    /// # Ok(()) }
    /// ```
    pub fn security_event(&self, event: crate::security::SecurityEvent) {
        if let Some(m) = &self.inner.security {
            m.report(event, crate::security::monitor::current_facts());
        }
    }

    /// The configured alert rules as a Prometheus rules file (YAML, one group
    /// named after the service), over the metric families of
    /// [`Apm::metrics_router`] summed across every scraped instance: load it in
    /// Prometheus (`rule_files:`) to run the same alerts for a fleet. Check it with
    /// `promtool check rules`.
    pub fn prometheus_rules(&self) -> String {
        let (rules, slos): (Vec<_>, Vec<_>) = self.inner.alerts.as_ref().map_or_else(Default::default, |a| {
            let engine = a.engine.lock().unwrap_or_else(|e| e.into_inner());
            (
                engine.rules.iter().map(|r| (r.alert.clone(), r.comparison)).collect(),
                engine.slos.iter().map(|s| s.slo.clone()).collect(),
            )
        });
        let group = if self.inner.service.is_empty() {
            "tower-apm"
        } else {
            &self.inner.service
        };
        alerts::rules::rules_file(group, &rules, &slos)
    }

    /// Evaluates every alert rule now, as the background thread does every
    /// [`ApmBuilder::alert_interval`]; changes of state are logged at once.
    pub fn evaluate_alerts(&self) {
        if let Some(a) = &self.inner.alerts {
            a.evaluate_now();
        }
    }

    /// The state of the alert named `name`, if there is one.
    pub fn alert_state(&self, name: &str) -> Option<alerts::AlertState> {
        let a = self.inner.alerts.as_ref()?;
        let engine = a.engine.lock().unwrap_or_else(|e| e.into_inner());
        engine
            .rules
            .iter()
            .find(|r| r.alert.name == name)
            .map(|r| r.status.state)
    }

    /// The export pipeline's counters: spans exported, spans dropped (queue full or
    /// failed export), failed exports.
    pub fn stats(&self) -> TelemetryStats {
        let mut stats = self.inner.pipeline.as_ref().map(Pipeline::stats).unwrap_or_default();
        let logs = &self.inner.logs.counters;
        stats.log_lines_written = logs.written.load(std::sync::atomic::Ordering::Relaxed);
        stats.log_lines_dropped_queue_full = logs.dropped_full.load(std::sync::atomic::Ordering::Relaxed);
        stats.log_lines_dropped_write_failed = logs.dropped_failed.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "otlp-logs")]
        if let Some((_, c)) = &self.inner.otlp_logs {
            stats.log_records_exported = c.exported.load(std::sync::atomic::Ordering::Relaxed);
            stats.log_records_dropped = c.dropped.load(std::sync::atomic::Ordering::Relaxed)
                + c.failed.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(p) = &self.inner.pusher {
            stats.metric_exports = p.counters.exported.load(std::sync::atomic::Ordering::Relaxed);
            stats.metric_export_failures = p.counters.failed.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(m) = &self.inner.security {
            let c = &m.counters;
            stats.security_events = c.events.load(std::sync::atomic::Ordering::Relaxed);
            stats.security_events_dropped = c.dropped.load(std::sync::atomic::Ordering::Relaxed);
            stats.security_detections = c.detections.load(std::sync::atomic::Ordering::Relaxed);
            stats.security_alerts_suppressed = c.alerts_suppressed.load(std::sync::atomic::Ordering::Relaxed);
            stats.audit_write_failures = c.audit_failed.load(std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(d) = &self.inner.notify {
            stats.alert_notifications_sent = d.counters.sent.load(std::sync::atomic::Ordering::Relaxed);
            stats.alert_notifications_failed = d.counters.failed.load(std::sync::atomic::Ordering::Relaxed);
            stats.alert_notifications_dropped = d.counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }

    /// Exports every span finished so far, pushes the metrics (when OTLP push is
    /// on) and writes out the queued log lines, waiting at most the export timeout
    /// (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s by default).
    ///
    /// # Errors
    /// The exporter failed, or the deadline passed (the spans stay counted as dropped).
    pub async fn force_flush(&self) -> Result<(), ExportError> {
        self.force_flush_within(self.inner.flush_deadline).await
    }

    /// [`Apm::force_flush`] with an explicit deadline.
    ///
    /// # Errors
    /// The exporter failed, or `deadline` passed.
    pub async fn force_flush_within(&self, deadline: Duration) -> Result<(), ExportError> {
        let spans = async {
            match &self.inner.pipeline {
                Some(p) => p.flush(deadline).await,
                None => Ok(()),
            }
        };
        let metrics = async {
            match &self.inner.pusher {
                Some(p) => p.flush(deadline).await,
                None => Ok(()),
            }
        };
        let (spans, metrics, logs, otlp_logs) = tokio::join!(
            spans,
            metrics,
            self.flush_logs(deadline),
            self.otlp_logs(deadline, false)
        );
        let logs = if logs {
            Ok(())
        } else {
            Err(ExportError::Deadline(deadline))
        };
        spans.and(metrics).and(logs).and(otlp_logs)
    }

    /// Flushes and stops the span pipeline and the metric push (a last push), and
    /// writes out the queued log lines, waiting at most the export timeout.
    /// A collector that is down or hangs cannot hold the caller past it.
    ///
    /// For programs without a [`Shutdown`](crate::Shutdown):
    /// [`Shutdown::finish`](crate::Shutdown::finish) calls it (within its flush
    /// deadline), so it is not called again after `finish`.
    ///
    /// # Errors
    /// The final export failed, or the deadline passed.
    pub async fn shutdown(&self) -> Result<(), ExportError> {
        self.shutdown_within(self.inner.flush_deadline).await
    }

    /// [`Apm::shutdown`] with an explicit deadline.
    ///
    /// # Errors
    /// The final export failed, or `deadline` passed.
    pub async fn shutdown_within(&self, deadline: Duration) -> Result<(), ExportError> {
        if let Some(a) = &self.inner.alerts {
            a.stop();
        }
        let spans = async {
            match &self.inner.pipeline {
                Some(p) => p.shutdown(deadline).await,
                None => Ok(()),
            }
        };
        let metrics = async {
            match &self.inner.pusher {
                Some(p) => p.shutdown(deadline).await,
                None => Ok(()),
            }
        };
        let (spans, metrics, logs, otlp_logs) = tokio::join!(
            spans,
            metrics,
            self.flush_logs(deadline),
            self.otlp_logs(deadline, true)
        );
        let logs = if logs {
            Ok(())
        } else {
            Err(ExportError::Deadline(deadline))
        };
        spans.and(metrics).and(logs).and(otlp_logs)
    }
}

impl Apm {
    /// Flushes (or shuts down) the OTLP log export, when there is one.
    async fn otlp_logs(&self, deadline: Duration, shutdown: bool) -> Result<(), ExportError> {
        #[cfg(feature = "otlp-logs")]
        if let Some((provider, _)) = &self.inner.otlp_logs {
            let provider = provider.clone();
            let done = tokio::task::spawn_blocking(move || {
                if shutdown {
                    provider.shutdown_with_timeout(deadline)
                } else {
                    provider.force_flush()
                }
            })
            .await;
            return match done {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ExportError::Exporter(format!("logs: {e}"))),
                Err(e) => Err(ExportError::Exporter(format!("logs: {e}"))),
            };
        }
        let _ = (deadline, shutdown);
        Ok(())
    }
}

/// `RUST_LOG`, default `info`.
fn env_filter() -> Result<tracing_subscriber::EnvFilter, ConfigError> {
    tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing::Level::INFO.into())
        .from_env()
        .map_err(|e| {
            ConfigError::var(
                "RUST_LOG",
                &std::env::var("RUST_LOG").unwrap_or_default(),
                format!("a tracing filter such as `info,my_crate=debug` ({e})"),
            )
        })
}

impl ApmBuilder {
    /// Reads `OTEL_*` variables from `vars` instead of the process environment
    /// (for tests, or for configuration that comes from a file).
    pub fn environment<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.settings.env = EnvSource::Map(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// `service.name` (else `OTEL_SERVICE_NAME`, else `unknown_service:<exe>`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.settings.service_name = Some(name.into());
        self
    }

    /// `service.version`.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.settings.service_version = Some(version.into());
        self
    }

    /// Adds a resource attribute (after those of `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.resource.push((key.into(), value.into()));
        self
    }

    /// Turns all telemetry off (else `OTEL_SDK_DISABLED`): the layer passes
    /// requests through untouched.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.settings.disabled = Some(disabled);
        self
    }

    /// The collector's OTLP endpoint, such as `http://localhost:4317` (else
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`). For
    /// HTTP, `/v1/traces` is appended.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.settings.endpoint = Some(endpoint.into());
        self
    }

    /// The OTLP transport (else `OTEL_EXPORTER_OTLP_PROTOCOL`, default gRPC).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.settings.protocol = Some(protocol);
        self
    }

    /// Adds a header (gRPC metadata) sent with every export, such as an API key.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.headers.push((name.into(), value.into()));
        self
    }

    /// The OTLP request timeout (else `OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// The head sampler (else `OTEL_TRACES_SAMPLER`, default parent-based always-on).
    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.settings.sampler = Some(sampler);
        self
    }

    /// Turns the request metrics on or off (default on). Off, an unsampled
    /// request costs only its trace context, and `/metrics`, alerts, SLOs and
    /// the status page's rates have nothing to read. `OTEL_METRICS_EXPORTER`
    /// does not turn them off: it chooses exporters (`none` stops the OTLP
    /// push only).
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.settings.metrics = Some(enabled);
        self
    }

    /// The most series a request metric keeps (default 2,000); requests beyond
    /// them are counted in one overflow series (`otel_metric_overflow="true"`).
    pub fn metrics_max_series(mut self, max: usize) -> Self {
        self.settings.max_series = Some(max);
        self
    }

    /// Where the JSON log lines of [`Apm::logging_layer`] / [`Apm::init_logging`]
    /// go (default stdout), and turns the access log on (one line per request;
    /// see [`ApmBuilder::access_log`]).
    ///
    /// # Errors
    /// [`ApmBuilder::build`] fails when the log file cannot be opened for writing.
    pub fn logs(mut self, output: LogOutput) -> Self {
        self.logs = Some(output);
        self
    }

    /// Turns the access log on or off: one JSON line per request, written when
    /// its response body ends, to the output of [`ApmBuilder::logs`] (stdout
    /// by default). The switch to use; without it the access log is on exactly
    /// when [`ApmBuilder::logs`] was called. Each request gets an
    /// `x-request-id` (the client's when valid) that is returned in the
    /// response and written in its access-log line.
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.access_log = Some(enabled);
        self
    }

    /// Adds a field name whose value is written as `[REDACTED]` in log lines and
    /// span attributes, besides the built-in ones (any name containing `pass`,
    /// `token`, `secret`, `key`, `auth`, `signature`, `credential`, `cookie`,
    /// `session`, `jwt`, ...; see the crate docs). Compared like them: without
    /// case, percent-decoded, without `-`, `_` and `.`.
    pub fn redact_field(mut self, name: impl Into<String>) -> Self {
        self.redact_fields.push(name.into());
        self
    }

    /// Sends spans to `exporter` instead of OTLP (for example an in-memory
    /// exporter in tests, or another backend's SDK exporter). Batching, dropping
    /// and counting stay the same.
    pub fn span_exporter<E: SpanExporter + 'static>(mut self, exporter: E) -> Self {
        self.exporter = Some(Box::new(exporter));
        self.settings.custom_exporter = true;
        self
    }

    /// Adds an alert rule, evaluated in this process every
    /// [`ApmBuilder::alert_interval`] over the request metrics (which must stay
    /// on). See [`Alert`].
    pub fn alert(mut self, alert: Alert) -> Self {
        self.alerts.push(alert);
        self
    }

    /// Adds a service level objective: its error budget and burn rates are
    /// tracked, and its multiwindow burn-rate alerts evaluated with the alert
    /// rules. See [`Slo`].
    pub fn slo(mut self, slo: Slo) -> Self {
        self.slos.push(slo);
        self
    }

    /// Sends alerts that fire and resolve to `notifier` ([`Notifier::alertmanager`],
    /// [`Notifier::webhook`]), from a background thread with a bounded queue,
    /// retries and backoff; failures are counted in [`Apm::stats`] and logged.
    pub fn notify(mut self, notifier: Notifier) -> Self {
        self.notifiers.push(notifier);
        self
    }

    /// How often the alert rules are evaluated (default 15 s, as Prometheus'
    /// usual `evaluation_interval`).
    pub fn alert_interval(mut self, interval: Duration) -> Self {
        self.alert_interval = Some(interval);
        self
    }

    /// A token every operator route asks for: the status page and its JSON
    /// ([`Apm::status_router`], [`Apm::serve_status`]) and the alerts and
    /// detections of [`Apm::alerts_router`]. Given as `Authorization: Bearer
    /// <token>` (the scheme in any case), or `?token=<token>` in a browser; the
    /// page carries it on in its links, and answers with `Referrer-Policy:
    /// no-referrer` and `Cache-Control: no-store` so that the URL leaves
    /// neither in a `Referer` nor in a cache. Compared in constant time.
    ///
    /// Letters, digits and `-._~+/` (optionally ending in `=`): `openssl rand
    /// -hex 32` makes one. Without a token these routes are open to whoever
    /// reaches them: serve them on their own address ([`Apm::serve_status`])
    /// where only operators do. `/metrics` has its own, optional token:
    /// [`ApmBuilder::metrics_token`].
    pub fn status_token(mut self, token: impl Into<String>) -> Self {
        self.status_token = Some(crate::operator::Secret(token.into()));
        self
    }

    /// What [`Apm::init_logging`] and [`Apm::init_tracing`] do with the panic
    /// hook (default [`PanicHook::Log`](crate::PanicHook::Log): each panic is
    /// one log line, not raw text on stderr). [`PanicHook::LogAndChain`](crate::PanicHook::LogAndChain)
    /// also calls a hook of your own installed before; [`PanicHook::Keep`](crate::PanicHook::Keep)
    /// leaves the hook alone. See [`PanicHook`](crate::PanicHook).
    pub fn panic_hook(mut self, hook: crate::logs::PanicHook) -> Self {
        self.panic_hook = hook;
        self
    }

    /// A token `/metrics` ([`Apm::metrics_router`], [`Apm::serve_metrics`])
    /// asks for, checked as [`ApmBuilder::status_token`] is. Without it (the
    /// default) `/metrics` is open, as Prometheus scrapes usually are. With
    /// it, give the scraper the token; in Prometheus' scrape config:
    ///
    /// ```yaml
    /// scrape_configs:
    ///   - job_name: checkout
    ///     authorization:
    ///       credentials_file: /etc/prometheus/checkout-token   # sent as "Bearer <token>"
    ///     static_configs:
    ///       - targets: ["checkout:3000"]
    /// ```
    ///
    /// A token of its own, so that the scraper's credential does not open the
    /// status page; give both the same value for one token.
    pub fn metrics_token(mut self, token: impl Into<String>) -> Self {
        self.metrics_token = Some(crate::operator::Secret(token.into()));
        self
    }

    /// The link of a trace id on the status page, with `{trace_id}` where the id
    /// goes: `http://localhost:16686/trace/{trace_id}` opens it in Jaeger.
    pub fn trace_url(mut self, template: impl Into<String>) -> Self {
        self.trace_url = Some(template.into());
        self
    }

    /// How many recent slow and failed requests the status page keeps (each,
    /// default 20; 0 keeps none), and from what duration a request is slow
    /// (default 1 s). Kept by the export thread from the sampled spans.
    pub fn recent_traces(mut self, keep: usize, slow_after: Duration) -> Self {
        self.recent_traces = Some((keep, slow_after));
        self
    }

    /// Turns on security monitoring: OWASP-vocabulary events, the brute-force,
    /// traffic-spike and scanning detectors, and optionally a tamper-evident
    /// audit log. Detections are sent to the notifiers of
    /// [`ApmBuilder::notify`]. See [`security`](crate::security).
    pub fn security(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
    }

    /// The proxies (addresses or CIDR networks, such as `10.0.0.0/8` or `::1`)
    /// whose forwarding header ([`ApmBuilder::forwarded_header`],
    /// `X-Forwarded-For` by default) names the client. From any other peer
    /// the header is ignored: the peer is the client (`client.address`, the
    /// access log's `client_address`, the security events' `source_ip`).
    /// Behind a trusted proxy, spans also carry the proxy as
    /// `network.peer.address`. None by default.
    pub fn trusted_proxies<S: AsRef<str>>(mut self, proxies: impl IntoIterator<Item = S>) -> Self {
        self.trusted_proxies = proxies.into_iter().map(|p| p.as_ref().to_owned()).collect();
        self
    }

    /// Route templates (as registered: `/livez`, `/internal/{job}`) whose
    /// requests are left out of the numbers: no span, no access-log line, no
    /// metrics, so nothing for alerts, SLOs or the status page. Handlers still
    /// run with a trace context. The crate's own operator routes are left out
    /// already ([`ApmBuilder::record_operator_routes`]).
    ///
    /// ```
    /// # fn main() -> Result<(), tower_apm::ConfigError> {
    /// let apm = tower_apm::Apm::builder()
    ///     .exclude_routes(["/healthz", "/internal/warmup"])
    ///     .exclude_when(|method, route| method == http::Method::OPTIONS || route.starts_with("/debug/"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn exclude_routes<S: AsRef<str>>(mut self, templates: impl IntoIterator<Item = S>) -> Self {
        self.excluded
            .templates
            .extend(templates.into_iter().map(|t| t.as_ref().into()));
        self
    }

    /// Leaves out of the numbers the requests for which `f(method, route
    /// template)` is true (only requests that matched a route are asked), as
    /// [`ApmBuilder::exclude_routes`] does by template.
    pub fn exclude_when(mut self, f: impl Fn(&http::Method, &str) -> bool + Send + Sync + 'static) -> Self {
        self.excluded.when = Some(Arc::new(f));
        self
    }

    /// Whether the crate's own operator routes are recorded like the
    /// application's (default false): the status page and its JSON
    /// ([`Apm::status_router`]), `/alerts`, `/metrics`, and
    /// [`Shutdown::health_router`](crate::Shutdown::health_router)'s `/livez`
    /// and `/readyz`. Left out, a probe every second, a scrape every 15 s and
    /// the status page's refreshes make no spans, access-log lines, route
    /// rows or error ratios. The security monitor still sees them: guessing
    /// an operator token is an attack like any other.
    pub fn record_operator_routes(mut self, record: bool) -> Self {
        self.record_operator_routes = record;
        self
    }

    /// The one header your trusted proxies write the client's address into
    /// (default [`ForwardedHeader::XForwardedFor`], as nginx's
    /// `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor` and most
    /// cloud load balancers do). Only that header is read, right to left over
    /// trusted hops. Any other forwarding header in a request (`Forwarded`,
    /// `X-Real-IP`, ...) was passed through from the client by the proxy: it is
    /// recorded in security events as `forwarded_untrusted`, never believed.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.forwarded_header = header;
        self
    }

    /// Validates the configuration and starts the export thread.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable or setting and the value to fix.
    pub fn build(self) -> Result<Apm, ConfigError> {
        for (setting, token) in [
            ("status_token", &self.status_token),
            ("metrics_token", &self.metrics_token),
        ] {
            if token.as_ref().is_some_and(|t| !crate::operator::valid_token(&t.0)) {
                // The value is a secret: never in an error message.
                return Err(ConfigError::setting(
                    setting,
                    "[REDACTED]",
                    "a token of 1 or more letters, digits and -._~+/ (optionally ending in =), as \
                     `Authorization: Bearer` carries it (RFC 9110 token68); for example from `openssl rand -hex 32`",
                ));
            }
        }
        let config = Config::resolve(&self.settings)?;
        let logs = Arc::new(self.logs.clone().unwrap_or_else(LogOutput::stdout).start()?);
        let service: Arc<str> = config
            .resource
            .get(&opentelemetry::Key::from_static_str(
                opentelemetry_semantic_conventions::resource::SERVICE_NAME,
            ))
            .map(|v| v.to_string())
            .unwrap_or_default()
            .into();
        let redactor = Arc::new(Redactor::new(&self.redact_fields));
        let access = (self.access_log.unwrap_or(self.logs.is_some()) && !config.disabled)
            .then(|| Arc::new(AccessLog::new(Arc::clone(&logs), &service)));
        let spec = match (self.exporter, config.otlp.clone()) {
            _ if config.disabled => None,
            (Some(custom), _) => Some(ExporterSpec::Custom(custom)),
            (None, Some(otlp)) => Some(ExporterSpec::Otlp(otlp)),
            (None, None) => None,
        };
        // One warning per collector outage, whichever signal fails first.
        let health = Arc::new(crate::export::health::CollectorHealth::default());
        let pipeline = spec
            .map(|spec| {
                Pipeline::start(
                    spec,
                    config.resource.clone(),
                    config.batch,
                    (*redactor).clone(),
                    Arc::clone(&health),
                )
            })
            .transpose()?;
        if let (Some(p), Some((keep, slow))) = (&pipeline, self.recent_traces) {
            *p.queue.recent.lock().unwrap_or_else(|e| e.into_inner()) =
                crate::status::recent::RecentTraces::new(keep, slow);
        }
        let mut provider = SdkTracerProvider::builder()
            .with_sampler(config.sampler.to_sdk())
            .with_resource(config.resource.clone());
        if let Some(p) = &pipeline {
            provider = provider.with_span_processor(QueueProcessor {
                queue: Arc::clone(&p.queue),
                value_limit: config.value_limit,
            });
        }
        let provider = provider.build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("tower-apm")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let metrics =
            (config.metrics.enabled && !config.disabled).then(|| Arc::new(Metrics::new(config.metrics.max_series)));
        #[cfg(feature = "otlp-logs")]
        let otlp_logs = match crate::config::otlp_logs(&self.settings)? {
            Some(cfg) if !config.disabled => {
                let processor = crate::logs::otlp::QueueLogProcessor::start(
                    cfg,
                    config.resource.clone(),
                    8192,
                    config.value_limit,
                )?;
                let counters = Arc::clone(&processor.counters);
                let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
                    .with_resource(config.resource.clone())
                    .with_log_processor(processor)
                    .build();
                Some((provider, counters))
            }
            _ => None,
        };
        let interval = self.alert_interval.unwrap_or(alerts::DEFAULT_INTERVAL);
        if interval.is_zero() {
            return Err(ConfigError::setting("alert_interval", "0s", "a duration above zero"));
        }
        let rules = self
            .alerts
            .iter()
            .map(|a| a.validate(interval).map(|c| (a.clone(), c)))
            .collect::<Result<Vec<_>, _>>()?;
        for slo in &self.slos {
            slo.validate()?;
        }
        let none = rules.is_empty() && self.slos.is_empty();
        let trusted_proxies = TrustedProxies::parse(&self.trusted_proxies)?.with_header(self.forwarded_header);
        let security_on = self.security.is_some() && !config.disabled;
        let notify = (!self.notifiers.is_empty() && !config.disabled && (security_on || !none))
            .then(|| Dispatcher::start(self.notifiers.clone(), Arc::clone(&logs)))
            .transpose()?;
        let security = match &self.security {
            Some(cfg) if security_on => Some(Monitor::start(
                cfg,
                &service,
                Arc::clone(&logs),
                notify.clone(),
                config.value_limit,
            )?),
            _ => None,
        };
        let alerts = match (&metrics, none) {
            (_, true) => None,
            (None, false) if config.disabled => None,
            (None, false) => {
                return Err(ConfigError::Alert {
                    alert: rules
                        .first()
                        .map_or_else(|| format!("SLO {}", self.slos[0].name), |r| r.0.name.clone()),
                    problem: "alerts read the request metrics, which ApmBuilder::metrics(false) turned off: \
                              remove .metrics(false) (OTEL_METRICS_EXPORTER=none stops only the OTLP push)"
                        .into(),
                });
            }
            (Some(m), false) => {
                let notify = notify.clone();
                let queue = pipeline.as_ref().map(|p| Arc::clone(&p.queue));
                let log_counters = Arc::clone(&logs.counters);
                let dropped = Box::new(move || {
                    let relaxed = std::sync::atomic::Ordering::Relaxed;
                    let spans = queue.as_ref().map_or(0, |q| {
                        q.counters.queue_full.load(relaxed) + q.counters.export_failed.load(relaxed)
                    });
                    spans + log_counters.dropped_full.load(relaxed) + log_counters.dropped_failed.load(relaxed)
                });
                let a = Alerts::new(
                    rules,
                    self.slos.clone(),
                    Arc::clone(m),
                    Arc::clone(&logs),
                    Arc::clone(&service),
                    notify,
                    dropped,
                );
                alerts::engine::spawn(&a, interval).map_err(|e| ConfigError::Worker(e.to_string()))?;
                Some(a)
            }
        };
        let pusher = match &metrics {
            Some(m) if config.metrics.push => Some(Pusher::start(
                Arc::clone(m),
                config.resource.clone(),
                &config.metrics,
                Arc::clone(&health),
            )?),
            _ => None,
        };
        let shared = Arc::new(Shared {
            disabled: config.disabled,
            recorder: Recorder::new(
                pipeline.as_ref().map(|p| Arc::clone(&p.queue)),
                metrics.clone(),
                access,
                security.clone(),
            ),
            sampler: config.sampler,
            propagation: config.propagation,
            ids: RandomIdGenerator::default(),
            trusted_proxies,
            value_limit: config.value_limit,
            record_operator_routes: self.record_operator_routes,
            excluded: self.excluded,
            db_used: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Apm {
            inner: Arc::new(Inner {
                shared,
                pipeline,
                provider,
                tracer,
                flush_deadline: config.batch.export_timeout,
                metrics,
                pusher,
                resource: config.resource,
                logs,
                service,
                redactor,
                alerts,
                notify,
                started: std::time::Instant::now(),
                lifecycle: crate::shutdown::LifecycleSlot::default(),
                status_token: self.status_token.as_ref().map(|t| crate::operator::Token::new(&t.0)),
                metrics_token: self.metrics_token.as_ref().map(|t| crate::operator::Token::new(&t.0)),
                panic_hook: self.panic_hook,
                trace_url: self.trace_url.map(Arc::from),
                security,
                #[cfg(feature = "otlp-logs")]
                otlp_logs,
            }),
        })
    }
}
