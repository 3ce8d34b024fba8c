//! tower-apm around a plain hyper service: hyper-util's connection handling, no
//! axum router, graceful shutdown on SIGTERM or Ctrl-C.
//!
//! ```sh
//! cargo run --example hyper        # HYPER_ADDR=127.0.0.1:8080 to choose the address
//! curl localhost:3000/users/7
//! ```
//!
//! What a hyper app gives the layer by hand, which axum's router would give it:
//! - a **route function** ([`ApmLayer::route_with`](tower_apm::ApmLayer::route_with)):
//!   without it every span is named by the method alone (`GET`) and every request
//!   lands in one metrics series;
//! - the **peer address** ([`PeerAddr`] in the request's extensions): without it
//!   the spans and access lines have no `client.address` and the security
//!   detectors no address to count.
//!
//! With no collector at `localhost:4317` the app still serves; set
//! `OTEL_EXPORTER_OTLP_ENDPOINT` to export. Its log lines are JSON on stdout; the
//! first is `"message":"listening"` with the `url`.

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;
use tower_apm::{Apm, LogOutput, PeerAddr, Shutdown};

/// The route template of a request: it names the span (`GET /users/{id}`) and the
/// metrics series. A template, never the raw path (`/users/7`, `/users/8`, ...
/// would each make a series of their own); `None` when no route matches.
fn route(_method: &Method, uri: &Uri) -> Option<&'static str> {
    let path = uri.path();
    if path == "/" {
        Some("/")
    } else if path
        .strip_prefix("/users/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
    {
        Some("/users/{id}")
    } else {
        None
    }
}

/// The application: routed by the same function that names the spans.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), route(req.method(), req.uri())) {
        (&Method::GET, Some("/")) => (StatusCode::OK, "tower-apm hyper example: try /users/7\n".to_owned()),
        (&Method::GET, Some("/users/{id}")) => {
            let id = &req.uri().path()["/users/".len()..];
            tracing::info!(id, "looking up the user");
            (StatusCode::OK, format!("user {id}\n"))
        }
        (_, Some(_)) => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
        (_, None) => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    Ok(res)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hyper example: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // OTEL_* variables apply: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, ...
    let apm = Apm::builder()
        .service_name("tower-apm-hyper")
        .logs(LogOutput::stdout()) // JSON lines on stdout, with an access log
        .build()?;
    apm.init_logging()?;
    let shutdown = Shutdown::builder().telemetry(&apm).build();

    // The layer, named by the route function.
    let layer = apm.layer().route_with(route);

    let addr = std::env::var("HYPER_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(url = %format!("http://{addr}"), "listening");

    let graceful = GracefulShutdown::new();
    let signal = shutdown.signal(); // resolves when the shutdown stops accepting
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // One service per connection: the peer address goes into every request's
        // extensions, where the layer reads it (`client.address`).
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            })
            .layer(layer.clone())
            .service_fn(handle);
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }

    // Stop accepting, let the requests in flight finish (their responses carry
    // `Connection: close`), then hooks, the telemetry flush and the exit code.
    drop(listener);
    graceful.shutdown().await;
    Ok(shutdown.finish(&apm).await)
}
