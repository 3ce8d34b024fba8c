//! A collector that is down, or accepts connections and never answers, must not
//! slow or break requests: spans are dropped and counted, and flush/shutdown keep
//! their deadlines.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_apm::{Apm, ExportError};

const REQUESTS: usize = 300;

fn app(apm: &Apm) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .layer(apm.layer())
}

/// Total and worst single-request time for `REQUESTS` sequential requests.
async fn drive(app: &Router) -> (Duration, Duration) {
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let res = app
            .clone()
            .oneshot(Request::get("/users/42").body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        worst = worst.max(t.elapsed());
    }
    (start.elapsed(), worst)
}

fn apm_to(endpoint: &str, protocol: &str) -> Apm {
    Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "2500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
        ])
        .build()
        .unwrap()
}

/// The same app with telemetry off, measured in the same test as the baseline.
async fn baseline() -> (Duration, Duration) {
    let off = Apm::builder()
        .environment([("OTEL_SDK_DISABLED", "true")])
        .build()
        .unwrap();
    let app = app(&off);
    drive(&app).await; // warm up
    drive(&app).await
}

/// A generous bound: an export that blocked the request path even once would
/// cost the exporter's 2 s timeout.
fn assert_latency_kept(with: (Duration, Duration), without: (Duration, Duration)) {
    let bound = without.0 * 5 + Duration::from_millis(300);
    assert!(
        with.0 <= bound,
        "{REQUESTS} requests took {:?} with the collector failing, {:?} without",
        with.0,
        without.0
    );
    assert!(with.1 < Duration::from_millis(500), "one request took {:?}", with.1);
}

async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap() // dropped here: nothing listens on it any more
}

/// Accepts TCP connections and never reads or answers.
async fn silent_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            held.push(sock);
        }
    });
    addr
}

async fn collector_down(protocol: &str) {
    let without = baseline().await;
    let addr = closed_port().await;
    let apm = apm_to(&format!("http://{addr}"), protocol);
    let app = app(&apm);
    let with = drive(&app).await;
    assert_latency_kept(with, without);
    let flushed = apm.force_flush().await;
    assert!(flushed.is_err(), "flush to a closed port reported success");
    // The exporter retries with backoff; once shut down, every span is accounted for.
    let shut = apm.shutdown_within(Duration::from_secs(20)).await;
    assert!(!matches!(shut, Err(ExportError::Deadline(_))), "{shut:?}");
    let stats = apm.stats();
    assert!(stats.spans_dropped() > 0, "{stats:?}");
    assert!(stats.export_failures > 0, "{stats:?}");
    assert_eq!(stats.spans_exported, 0);
    assert_eq!(
        stats.spans_dropped(),
        REQUESTS as u64,
        "every span is either exported or counted: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_grpc_keeps_request_latency_and_counts_dropped_spans() {
    collector_down("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_http_keeps_request_latency_and_counts_dropped_spans() {
    collector_down("http/protobuf").await;
}

async fn collector_silent(protocol: &str) {
    let without = baseline().await;
    let addr = silent_port().await;
    let apm = apm_to(&format!("http://{addr}"), protocol);
    let app = app(&apm);
    let with = drive(&app).await;
    assert_latency_kept(with, without);
    let stats = apm.stats();
    assert!(
        stats.spans_dropped_queue_full > 0,
        "the exporter is stuck, so the 64-span queue must overflow: {stats:?}"
    );
    let start = Instant::now();
    let shut = apm.shutdown_within(Duration::from_millis(300)).await;
    assert_eq!(shut, Err(ExportError::Deadline(Duration::from_millis(300))));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown held the caller for {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_that_never_answers_grpc_cannot_hold_requests_or_shutdown() {
    collector_silent("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_that_never_answers_http_cannot_hold_requests_or_shutdown() {
    collector_silent("http/protobuf").await;
}
