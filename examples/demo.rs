//! The demo: an axum app with tower-apm's layer: traces over OTLP, metrics at
//! `/metrics`, JSON log lines (one access-log line per request) on stdout.
//!
//! Run it with `cargo run --example demo`, then open the routes below. Its first
//! log line is `"message":"listening"` with the `url`. It works with no collector
//! running (export failures are counted and warned about once). To see the traces, start Jaeger
//! (see the README) before the demo; the OTLP endpoint comes from
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4317`).
//!
//! Routes:
//! - `/`               a plain response
//! - `/users/{id}`     a span named `GET /users/{id}` with a child `load_user` span
//! - `/slow`           sleeps ~200 ms
//! - `/error`          answers 500 (span status Error, `error.type=500`)
//! - `/panic`          panics: a 500 with an `exception` event; the demo keeps serving
//! - `/panic/{reason}` panics with the client's words in its message: still one
//!   JSON log line (target `tower_apm::panic`, escaped, with the request's trace
//!   id), nothing raw on stderr; the 500 has its `x-request-id`
//! - `/downstream`     calls `/users/42` on itself through the client layer: one
//!   trace with two server spans and the client span between them
//! - `/sleep/{ms}`     answers after `ms` milliseconds
//! - `POST /jobs/{n}`  queues `n` jobs for a background worker (200 ms each)
//! - `/livez`, `/readyz` health: readiness fails as soon as shutdown starts
//! - `/metrics`        the Prometheus endpoint: request duration histograms per
//!   route, in-flight requests, body sizes, process CPU and memory (OpenMetrics
//!   with exemplars when asked: `curl -H 'Accept: application/openmetrics-text' ...`)
//! - `/alerts`         the alert rules and the SLO as JSON: hit `/error` a few
//!   times among other requests and `HighErrorRate` fires within 15 s (a WARN
//!   log line), then resolves once the minute has passed; under `security`, the
//!   latest detections
//! - `/apm`            the live status page: rates, errors and latency with
//!   charts, routes, the recent slow and failed requests with their spans,
//!   alerts, SLOs and security detections (JSON under `/apm/api/`)
//! - `POST /login/{user}` logs in `demo` and fails anyone else (an OWASP
//!   `authn_login_fail` event, target `tower_apm::security`); the tenth failure
//!   from one address within 5 minutes is a brute-force detection
//!
//! Ctrl-C (or `kill -TERM`) shuts down in logged phases: readiness fails, the
//! pre-stop delay (`DEMO_PRE_STOP_MS`, default 0), the listener closes, in-flight
//! requests finish (`DEMO_DRAIN_MS`, default 25 s), the worker finishes its job,
//! cleanup hooks run, spans, metrics and logs are flushed; exit 0. A second
//! Ctrl-C exits at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_apm::security::{Security, SecurityEvent};
use tower_apm::{Alert, Apm, ClientService, LogOutput, Shutdown, Slo};

type HttpClient = ClientService<Client<HttpConnector, Empty<bytes::Bytes>>>;

#[derive(Clone)]
struct App {
    client: HttpClient,
    addr: SocketAddr,
    jobs: mpsc::Sender<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A duration in milliseconds from the environment (for the tests), else `default`.
fn millis(var: &str, default: u64) -> Duration {
    Duration::from_millis(std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // 1. One handle, configured by the builder and the OTEL_* variables.
    let apm = Apm::builder()
        .service_name("tower-apm-demo")
        // JSON lines on stdout, with one access-log line per request.
        .logs(LogOutput::stdout())
        // Alerts evaluated in the process every 15 s, logged when they change.
        .alert(Alert::error_rate().above(0.05).over(Duration::from_secs(60)))
        .alert(
            Alert::latency(0.95)
                .above(Duration::from_secs(1))
                .over(Duration::from_secs(60))
                .route("/users/{id}"),
        )
        .slo(Slo::availability(0.999))
        // Security events and the brute-force, spike and scanning detectors.
        .security(Security::new())
        // The status page keeps the last 20 failed requests and the last 20
        // over 150 ms (so `/slow` shows), with their spans.
        .recent_traces(20, Duration::from_millis(150))
        .build()?;
    // 2. JSON log lines on stdout (RUST_LOG filters them), with the trace and span
    //    ids of the request; `tracing` spans exported as child spans.
    apm.init_logging()?;

    // 3. Graceful shutdown on SIGTERM / Ctrl-C, in logged phases with deadlines.
    let shutdown = Shutdown::builder()
        .pre_stop_delay(millis("DEMO_PRE_STOP_MS", 0))
        .drain_timeout(millis("DEMO_DRAIN_MS", 25_000))
        .flush_timeout(millis("DEMO_FLUSH_MS", 5_000))
        .telemetry(&apm)
        .build();
    shutdown.on_shutdown("say goodbye", || async { tracing::info!("goodbye") });
    let jobs = spawn_worker(&shutdown, millis("DEMO_JOB_MS", 200));

    let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;

    // 4. An HTTP client with the client layer: outgoing calls join the trace.
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let client = tower::Layer::layer(&apm.client_layer(), http);

    // 5. The router, with the layers added once.
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                "tower-apm demo: try /users/7, /slow, /error, /panic, /downstream, /apm, /metrics, /alerts, /readyz\n"
            }),
        )
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .route("/sleep/{ms}", get(sleep))
        .route("/error", get(error))
        .route("/panic", get(panics))
        .route("/panic/{reason}", get(panics_with))
        .route("/downstream", get(downstream))
        .route("/jobs/{n}", post(enqueue))
        .route("/login/{user}", post(login))
        .with_state(App { client, addr, jobs })
        // 6. The Prometheus endpoint, the alerts and the health endpoints.
        .merge(apm.metrics_router())
        .merge(apm.alerts_router())
        .merge(apm.status_router())
        .merge(shutdown.health_router())
        .layer(apm.layer());

    tracing::info!(url = %format!("http://{addr}"), "listening");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.signal())
        .await?;

    // 7. Workers, hooks, then the flush of spans, metrics and logs; the exit code.
    Ok(shutdown.finish(&apm).await)
}

/// A login that only `demo` passes: the outcome is a security event returned
/// with the response; the layer adds the client's address and the trace.
async fn login(Path(user): Path<String>) -> (SecurityEvent, StatusCode) {
    if user == "demo" {
        (SecurityEvent::login_succeeded(&user), StatusCode::NO_CONTENT)
    } else {
        (SecurityEvent::login_failed(&user), StatusCode::UNAUTHORIZED)
    }
}

/// A background worker: takes jobs one at a time; on shutdown it finishes the one
/// it holds and takes no other.
fn spawn_worker(shutdown: &Shutdown, job_time: Duration) -> mpsc::Sender<u32> {
    let (tx, mut rx) = mpsc::channel::<u32>(1024);
    let worker = shutdown.worker("jobs");
    tokio::spawn(async move {
        loop {
            let job = tokio::select! {
                _ = worker.stopping() => break,
                job = rx.recv() => match job { Some(j) => j, None => break },
            };
            tracing::info!(job, "job started");
            tokio::time::sleep(job_time).await;
            tracing::info!(job, "job finished");
        }
        drop(worker);
    });
    tx
}

async fn enqueue(State(app): State<App>, Path(n): Path<u32>) -> String {
    for job in 0..n {
        let _ = app.jobs.send(job).await;
    }
    format!("{n} jobs queued\n")
}

async fn sleep(Path(ms): Path<u64>) -> String {
    tracing::info!(ms, "sleeping");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

#[tracing::instrument]
async fn load_user(id: u64) -> String {
    tracing::info!("loading user");
    format!("user {id}\n")
}

async fn user(Path(id): Path<u64>) -> String {
    load_user(id).await
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(200)).await;
    "slow\n"
}

async fn error() -> (StatusCode, &'static str) {
    (StatusCode::INTERNAL_SERVER_ERROR, "something broke\n")
}

async fn panics() -> &'static str {
    if true {
        panic!("the /panic route panics on purpose");
    }
    "unreachable"
}

/// A handler that puts what the client sent into its panic message, as
/// real handlers do (`expect(&format!(...))`, `unwrap` on a parse of it).
async fn panics_with(Path(reason): Path<String>) -> &'static str {
    panic!("cannot handle {reason}");
}

async fn downstream(State(app): State<App>) -> Result<String, (StatusCode, String)> {
    let req = http::Request::get(format!("http://{}/users/42", app.addr))
        .body(Empty::new())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let res = app
        .client
        .oneshot(req)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(format!(
        "downstream said: {}",
        String::from_utf8_lossy(&body.to_bytes())
    ))
}
