//! A chain of services calling each other through `reqwest`: one trace across
//! processes, with the CLIENT span of each call between the SERVER spans.
//!
//! Feature `reqwest`. Run the last service, then one that calls it:
//!
//! ```text
//! CHAIN_ADDR=127.0.0.1:3001 OTEL_SERVICE_NAME=inventory cargo run --features reqwest --example reqwest_chain
//! CHAIN_ADDR=127.0.0.1:3000 OTEL_SERVICE_NAME=checkout CHAIN_DOWNSTREAM=http://127.0.0.1:3001 \
//!     cargo run --features reqwest --example reqwest_chain
//! curl http://127.0.0.1:3000/chain
//! ```
//!
//! - `CHAIN_ADDR`: the address to listen on (default `127.0.0.1:0`, any free port);
//!   the first line on stdout is `listening http://ADDR`.
//! - `CHAIN_DOWNSTREAM`: the base URL of the next service; `GET /chain` calls its
//!   `/chain` and answers with what it said. Without it, this is the last service.
//!
//! The `OTEL_*` variables apply (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! ...). SIGTERM or Ctrl-C stops it: in-flight requests finish, then spans and
//! metrics (`http.client.request.duration` among them) are flushed.

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let apm = tower_apm::Apm::builder().build()?;
    let client: ClientWithMiddleware = ClientBuilder::new(reqwest::Client::new())
        .with(apm.reqwest_middleware())
        .build();
    let downstream = std::env::var("CHAIN_DOWNSTREAM").ok();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "chain".into());

    let app = Router::new()
        .route(
            "/chain",
            get(move || async move {
                let Some(next) = downstream else {
                    return (StatusCode::OK, service);
                };
                // Inside the handler: the call's span is a child of this request's span.
                match client.get(format!("{next}/chain")).send().await {
                    Ok(res) => match res.text().await {
                        Ok(text) => (StatusCode::OK, format!("{service} -> {text}")),
                        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
                    },
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
                }
            }),
        )
        .layer(apm.layer());

    let addr: SocketAddr = std::env::var("CHAIN_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening http://{}", listener.local_addr()?);

    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(signal())
        .await?;
    apm.shutdown().await?; // flush spans and metrics
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
