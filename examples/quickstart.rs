//! The quick start: the one way to start a service with tower-apm, word for word
//! the snippet at the top of the README and in the crate docs (a test keeps the
//! three the same, and another runs this file as a real process).
//!
//! Run it with `cargo run --example quickstart`, then:
//! - `curl localhost:3000/users/7`: one JSON access-log line on stdout with
//!   `client_address` and the `trace_id` of the request's span;
//! - `curl localhost:3000/metrics`: `http_server_request_duration_seconds` for
//!   the route `/users/{id}`;
//! - Ctrl-C (or `kill -TERM`): the shutdown's phases as log lines, the span
//!   flushed to the collector, exit code 0 (`echo $?`).
//!
//! The first log line is `"message":"listening"` with the `url`. The address
//! comes from `LISTEN_ADDR` (default `127.0.0.1:3000`); the collector from the
//! standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, default
//! `http://localhost:4317`; see the README to start Jaeger). With no collector
//! it runs the same and warns once.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::{Router, extract::Path, routing::get};
use tower_apm::{Apm, Shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    // The exit code: 0 after a clean shutdown; 1 when the service cannot start,
    // with the error printed by its Display (a ConfigError says what to fix);
    // 3, 4 or 5 when a shutdown deadline forced the exit (tower_apm::EXIT_*).
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("checkout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Builder calls win over the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
    // OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...), which win over the defaults.
    let apm = Apm::builder()
        .service_name("checkout")
        .access_log(true) // one JSON line per request
        .build()?;
    apm.init_logging()?; // JSON lines on stdout with trace ids; RUST_LOG filters

    // SIGTERM or Ctrl-C: readiness fails, in-flight requests finish, then
    // cleanup hooks run and spans, metrics and logs are flushed.
    let shutdown = Shutdown::builder().telemetry(&apm).build();

    let app = Router::new()
        .route("/users/{id}", get(user))
        .merge(apm.metrics_router()) // GET /metrics
        .merge(shutdown.health_router()) // GET /livez, /readyz
        .layer(apm.layer()); // last, so that it sees every route

    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%url, "listening");

    // The peer's address gives spans, access lines and the security detectors
    // their client.address.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.signal())
        .await?;
    // The server has stopped: cleanup hooks, then the flush of spans, metrics
    // and logs (it shuts the Apm down: no apm.shutdown() after it).
    Ok(shutdown.finish(&apm).await)
}

async fn user(Path(id): Path<u64>) -> String {
    format!("user {id}\n")
}
