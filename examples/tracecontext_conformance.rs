//! A service for the W3C trace-context test suite.
//!
//! The suite POSTs `[{"url": ..., "arguments": [...]}, ...]` to `/test`; for each
//! entry this service POSTs `arguments` as JSON to `url` through tower-apm's client
//! layer, so the suite sees the context this service derived from its request.
//!
//! ```sh
//! OTEL_TRACES_EXPORTER=none cargo run --example tracecontext_conformance
//! # in a checkout of github.com/w3c/trace-context, in test/:
//! SPEC_LEVEL=2 python test.py http://127.0.0.1:5000/test
//! ```
//!
//! Listens on `CONFORMANCE_ADDR` (default `127.0.0.1:5000`).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::ServiceExt;
use tower_apm::{Apm, ClientService};

type HttpClient = ClientService<Client<HttpConnector, Full<bytes::Bytes>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let apm = Apm::builder().service_name("tracecontext-conformance").build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let client: HttpClient = tower::Layer::layer(&apm.client_layer(), http);

    let app = Router::new()
        .route("/test", post(test))
        .with_state(client)
        .layer(apm.layer());
    let addr = std::env::var("CONFORMANCE_ADDR").unwrap_or_else(|_| "127.0.0.1:5000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}

/// Calls every `url` with its `arguments`, one after another, inside the request's context.
async fn test(State(client): State<HttpClient>, Json(cases): Json<Vec<Value>>) -> &'static str {
    for case in cases {
        let (Some(url), Some(arguments)) = (case["url"].as_str(), case.get("arguments")) else {
            continue;
        };
        let Ok(req) = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::from(arguments.to_string()))
        else {
            continue;
        };
        // The suite's harness may close connections early; a failed call is not our error.
        let _ = client.clone().oneshot(req).await;
    }
    "ok"
}
