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
//! - `/downstream`     calls `/users/42` on itself through the client layer: one
//!   trace with two server spans and the client span between them
//! - `/metrics`        the Prometheus endpoint: request duration histograms per
//!   route, in-flight requests, body sizes, process CPU and memory (OpenMetrics
//!   with exemplars when asked: `curl -H 'Accept: application/openmetrics-text' ...`)
//!
//! Ctrl-C (or `kill -TERM`) flushes the spans, metrics and logs and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower_apm::{Apm, ClientService, LogOutput};

type HttpClient = ClientService<Client<HttpConnector, Empty<bytes::Bytes>>>;

#[derive(Clone)]
struct App {
    client: HttpClient,
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. One handle, configured by the builder and the OTEL_* variables.
    let apm = Apm::builder()
        .service_name("tower-apm-demo")
        // JSON lines on stdout, with one access-log line per request.
        .logs(LogOutput::stdout())
        .build()?;
    // 2. JSON log lines on stdout (RUST_LOG filters them), with the trace and span
    //    ids of the request; `tracing` spans exported as child spans.
    apm.init_logging()?;

    let addr = std::env::var("DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;

    // 3. An HTTP client with the client layer: outgoing calls join the trace.
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let client = tower::Layer::layer(&apm.client_layer(), http);

    // 4. The router, with the layer added once.
    let app = Router::new()
        .route(
            "/",
            get(|| async { "tower-apm demo: try /users/7, /slow, /error, /panic, /downstream, /metrics\n" }),
        )
        .route("/users/{id}", get(user))
        .route("/slow", get(slow))
        .route("/error", get(error))
        .route("/panic", get(panics))
        .route("/downstream", get(downstream))
        .with_state(App { client, addr })
        // 5. The Prometheus endpoint, reading the same per-request records.
        .merge(apm.metrics_router())
        .layer(apm.layer());

    tracing::info!(url = %format!("http://{addr}"), "listening");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop_signal())
        .await?;

    // 6. Flush what is left, bounded by OTEL_BSP_EXPORT_TIMEOUT.
    if let Err(e) = apm.shutdown().await {
        tracing::warn!(error = %e, "spans not flushed");
    }
    Ok(())
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
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
