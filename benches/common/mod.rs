//! What `benches/layer.rs` (criterion, time) and `benches/instr.rs` (callgrind,
//! instructions) share: the configurations, the router and the request.
//!
//! Every configuration is the same axum router (`/users/{id}` returning a short
//! string) driven in-process with `tower::ServiceExt::oneshot`; the layered ones add
//! `apm.layer()` exporting through the real pipeline (queue, export thread, batches)
//! to [`Noop`], an exporter that accepts and drops every batch.

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tower::ServiceExt;
use tower_apm::{Apm, Sampler};

/// A sampled remote parent (`-01`).
pub const TRACEPARENT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The same parent, not sampled (`-00`).
pub const TRACEPARENT_NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// Accepts every batch and drops it: the cost measured is the layer's and the
/// pipeline's, not a collector's.
#[derive(Debug)]
pub struct Noop;

impl SpanExporter for Noop {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// No layer.
    Bare,
    /// `Router::layer(tower::layer::util::Identity::new())`: what axum itself costs
    /// for any layer added with `Router::layer` (the floor under every layer).
    NoopLayer,
    /// No layer; the request carries a sampled `traceparent` (baseline of the
    /// `*_traceparent` configurations).
    BareTraceparent,
    /// Layer, `always_on`, every span exported.
    Sampled,
    /// Layer, `always_off`: context only, nothing exported.
    NotSampled,
    /// Layer, `always_on`, every span exported, and the request metrics.
    SampledMetrics,
    /// Layer, `always_off`, and the request metrics (every request recorded).
    NotSampledMetrics,
    /// `SampledMetrics` plus the access log, written to a file.
    SampledMetricsLogs,
    /// `NotSampledMetrics` plus the access log, written to a file.
    NotSampledMetricsLogs,
    /// `SampledMetricsLogs`, the request carrying the peer's address
    /// (`ConnectInfo`, as `into_make_service_with_connect_info` gives it).
    SampledMetricsLogsPeer,
    /// `SampledMetricsLogsPeer` plus security monitoring (every detector on).
    SampledMetricsLogsSecurity,
    /// `SampledMetrics`, the handler awaiting 10 queries (ready futures): the
    /// baseline of `SampledMetricsQueriesTimed`.
    SampledMetricsQueries,
    /// `SampledMetricsQueries` with every query timed through `Apm::database`
    /// (a span each, exported, the histogram, the request's totals).
    SampledMetricsQueriesTimed,
    /// Layer, default `parentbased_always_on`, sampled remote parent.
    SampledTraceparent,
    /// Layer, default `parentbased_always_on`, not-sampled remote parent.
    NotSampledTraceparent,
}

impl Config {
    /// Every configuration, baselines first.
    pub const ALL: [Config; 15] = [
        Config::Bare,
        Config::NoopLayer,
        Config::Sampled,
        Config::NotSampled,
        Config::SampledMetrics,
        Config::NotSampledMetrics,
        Config::SampledMetricsLogs,
        Config::NotSampledMetricsLogs,
        Config::SampledMetricsLogsPeer,
        Config::SampledMetricsLogsSecurity,
        Config::SampledMetricsQueries,
        Config::SampledMetricsQueriesTimed,
        Config::BareTraceparent,
        Config::SampledTraceparent,
        Config::NotSampledTraceparent,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Config::Bare => "bare",
            Config::NoopLayer => "noop_layer",
            Config::BareTraceparent => "bare_traceparent",
            Config::Sampled => "sampled",
            Config::NotSampled => "not_sampled",
            Config::SampledMetrics => "sampled_metrics",
            Config::NotSampledMetrics => "not_sampled_metrics",
            Config::SampledMetricsLogs => "sampled_metrics_logs",
            Config::NotSampledMetricsLogs => "not_sampled_metrics_logs",
            Config::SampledMetricsLogsPeer => "sampled_metrics_logs_peer",
            Config::SampledMetricsLogsSecurity => "sampled_metrics_logs_security",
            Config::SampledMetricsQueries => "sampled_metrics_queries",
            Config::SampledMetricsQueriesTimed => "sampled_metrics_queries_timed",
            Config::SampledTraceparent => "sampled_traceparent",
            Config::NotSampledTraceparent => "not_sampled_traceparent",
        }
    }

    /// The configuration named `name`.
    #[allow(dead_code, reason = "used by instr.rs, not layer.rs")]
    pub fn parse(name: &str) -> Option<Config> {
        Config::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The configuration this one is compared with.
    pub fn baseline(self) -> Config {
        match self {
            Config::Bare
            | Config::NoopLayer
            | Config::Sampled
            | Config::NotSampled
            | Config::SampledMetrics
            | Config::NotSampledMetrics
            | Config::SampledMetricsLogs
            | Config::NotSampledMetricsLogs
            | Config::SampledMetricsLogsPeer
            | Config::SampledMetricsLogsSecurity
            | Config::SampledMetricsQueries => Config::Bare,
            Config::SampledMetricsQueriesTimed => Config::SampledMetricsQueries,
            Config::BareTraceparent | Config::SampledTraceparent | Config::NotSampledTraceparent => {
                Config::BareTraceparent
            }
        }
    }

    /// Whether every request's span reaches the exporter.
    pub fn exports(self) -> bool {
        matches!(
            self,
            Config::Sampled
                | Config::SampledTraceparent
                | Config::SampledMetrics
                | Config::SampledMetricsLogs
                | Config::SampledMetricsLogsPeer
                | Config::SampledMetricsLogsSecurity
                | Config::SampledMetricsQueries
                | Config::SampledMetricsQueriesTimed
        )
    }

    /// Whether the request metrics are on (off elsewhere, so the trace figures
    /// stay comparable with those measured before metrics existed).
    fn metrics(self) -> bool {
        matches!(
            self,
            Config::SampledMetrics
                | Config::NotSampledMetrics
                | Config::SampledMetricsLogs
                | Config::NotSampledMetricsLogs
                | Config::SampledMetricsLogsPeer
                | Config::SampledMetricsLogsSecurity
                | Config::SampledMetricsQueries
                | Config::SampledMetricsQueriesTimed
        )
    }

    /// Whether the access log is on (to a file in the temporary directory).
    fn logs(self) -> bool {
        matches!(
            self,
            Config::SampledMetricsLogs
                | Config::NotSampledMetricsLogs
                | Config::SampledMetricsLogsPeer
                | Config::SampledMetricsLogsSecurity
        )
    }

    /// Whether requests carry the peer's address.
    fn peer(self) -> bool {
        matches!(
            self,
            Config::SampledMetricsLogsPeer | Config::SampledMetricsLogsSecurity
        )
    }

    /// Whether security monitoring is on.
    fn security(self) -> bool {
        matches!(self, Config::SampledMetricsLogsSecurity)
    }

    /// Spans a request exports: its server span, and one per timed query.
    #[allow(dead_code, reason = "used by instr.rs, not layer.rs")]
    pub fn spans_per_request(self) -> u64 {
        match self.queries() {
            Some(true) => 1 + u64::from(QUERIES),
            _ => u64::from(self.exports()),
        }
    }

    /// How the handler's queries run: none, plain, or timed.
    fn queries(self) -> Option<bool> {
        match self {
            Config::SampledMetricsQueries => Some(false),
            Config::SampledMetricsQueriesTimed => Some(true),
            _ => None,
        }
    }

    fn traceparent(self) -> Option<&'static str> {
        match self {
            Config::Bare
            | Config::NoopLayer
            | Config::Sampled
            | Config::NotSampled
            | Config::SampledMetrics
            | Config::NotSampledMetrics
            | Config::SampledMetricsLogs
            | Config::NotSampledMetricsLogs
            | Config::SampledMetricsLogsPeer
            | Config::SampledMetricsLogsSecurity
            | Config::SampledMetricsQueries
            | Config::SampledMetricsQueriesTimed => None,
            Config::BareTraceparent | Config::SampledTraceparent => Some(TRACEPARENT_SAMPLED),
            Config::NotSampledTraceparent => Some(TRACEPARENT_NOT_SAMPLED),
        }
    }

    fn sampler(self) -> Option<Sampler> {
        match self {
            Config::Bare | Config::NoopLayer | Config::BareTraceparent => None,
            Config::Sampled
            | Config::SampledMetrics
            | Config::SampledMetricsLogs
            | Config::SampledMetricsLogsPeer
            | Config::SampledMetricsLogsSecurity
            | Config::SampledMetricsQueries
            | Config::SampledMetricsQueriesTimed => Some(Sampler::AlwaysOn),
            Config::NotSampled | Config::NotSampledMetrics | Config::NotSampledMetricsLogs => Some(Sampler::AlwaysOff),
            Config::SampledTraceparent | Config::NotSampledTraceparent => Some(Sampler::default()),
        }
    }
}

/// Queries the handler of the `*_queries*` configurations awaits per request.
pub const QUERIES: u32 = 10;
/// Their statement.
const QUERY: &str = "SELECT id, name, email FROM users WHERE id = $1 AND active = true";

/// A built configuration: the router, and the `Apm` behind its layer (none for
/// the bare ones).
#[derive(Debug)]
pub struct Setup {
    pub config: Config,
    pub router: Router,
    pub apm: Option<Apm>,
    host: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    /// `BENCH_BROWSER` set: every request carries a browser's `User-Agent`,
    /// `Accept` and `Accept-Encoding`.
    browser: bool,
    access_log: Option<std::path::PathBuf>,
    peer: Option<std::net::SocketAddr>,
}

/// A current desktop Chrome's `User-Agent`.
const BROWSER_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

impl Setup {
    pub fn new(config: Config) -> Setup {
        let access_log = (config.sampler().is_some() && config.logs())
            .then(|| std::env::temp_dir().join(format!("tower-apm-bench-{}.log", std::process::id())));
        let apm = config.sampler().map(|sampler| {
            let mut builder = if let Some(path) = &access_log {
                Apm::builder().logs(tower_apm::LogOutput::file(path).queue_capacity(65536))
            } else {
                Apm::builder()
            };
            if config.security() {
                builder = builder.security(tower_apm::security::Security::new());
            }
            // BENCH_RECENT=0: without the status page's recent-trace buffer,
            // to measure what it costs.
            if std::env::var("BENCH_RECENT").as_deref() == Ok("0") {
                builder = builder.recent_traces(0, std::time::Duration::from_secs(1));
            }
            builder
                // A map, so the process environment cannot leak in; a queue large
                // enough that no span is dropped between two batches.
                .environment([
                    ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
                    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
                    // Metrics read in-process (the Prometheus endpoint), not pushed.
                    ("OTEL_METRICS_EXPORTER", "prometheus"),
                ])
                .service_name("bench")
                .metrics(config.metrics())
                .sampler(sampler)
                .span_exporter(Noop)
                .build()
                .expect("the bench configuration is valid")
        });
        let router = match (config.queries(), &apm) {
            (Some(timed), Some(apm)) => {
                let db = timed.then(|| apm.database("postgresql"));
                Router::new().route(
                    "/users/{id}",
                    get(move || {
                        let db = db.clone();
                        async move {
                            for i in 0..QUERIES {
                                let query = std::future::ready(Ok::<_, std::io::Error>(i));
                                let row = match &db {
                                    Some(db) => db.statement(QUERY).run(query).await,
                                    None => query.await,
                                };
                                std::hint::black_box(row.expect("ready"));
                            }
                            "hello, user"
                        }
                    }),
                )
            }
            _ => Router::new().route("/users/{id}", get(|| async { "hello, user" })),
        };
        let router = match (&apm, config) {
            (Some(apm), _) => router.layer(apm.layer()),
            (None, Config::NoopLayer) => router.layer(tower::layer::util::Identity::new()),
            (None, _) => router,
        };
        // What `axum::serve` and `into_make_service` do once per connection: turn the
        // handlers into routes with the layer applied. Without it a `Router<()>`
        // called directly rebuilds (and re-boxes) the layered route on every request.
        let router = router.with_state(());
        Setup {
            config,
            router,
            apm,
            host: std::env::var("BENCH_HOST")
                .ok()
                .map(|h| HeaderValue::try_from(h).expect("BENCH_HOST is a valid header value")),
            traceparent: config.traceparent().map(HeaderValue::from_static),
            browser: std::env::var_os("BENCH_BROWSER").is_some(),
            access_log,
            peer: config
                .peer()
                .then(|| std::net::SocketAddr::from(([192, 0, 2, 7], 40000))),
        }
    }

    /// The file the access log goes to, for the configurations that write one.
    #[allow(dead_code, reason = "used by benches/peers, not by layer.rs and instr.rs")]
    pub fn access_log_path(&self) -> Option<&std::path::Path> {
        self.access_log.as_deref()
    }

    /// `GET /users/42`, with the configuration's `traceparent`, and with
    /// `host: $BENCH_HOST` when that variable is set. (Without any header, the
    /// layer's header lookups return early on the empty map; a real request always
    /// has a `Host`, so they hash.)
    pub fn request(&self) -> Request<Body> {
        let mut req = Request::get("/users/42").body(Body::empty()).expect("a valid request");
        if let Some(host) = &self.host {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        if self.browser {
            // What a browser sends on every request (a curl-like client sends
            // the same three with a shorter user agent).
            let h = req.headers_mut();
            h.insert(http::header::USER_AGENT, HeaderValue::from_static(BROWSER_UA));
            h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
            h.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, deflate, br"),
            );
        }
        if let Some(tp) = &self.traceparent {
            req.headers_mut().insert("traceparent", tp.clone());
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
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

    /// Flushes and stops the export pipeline.
    pub async fn shutdown(&self) {
        if let Some(apm) = &self.apm {
            apm.shutdown().await.expect("the no-op exporter never fails");
        }
    }
}

/// A current-thread runtime with timers (flush and shutdown deadlines use them).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
