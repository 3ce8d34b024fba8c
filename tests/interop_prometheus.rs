//! The metrics endpoint against the real Prometheus toolchain (Debian's
//! `prometheus` package, installed by `.ci/interop-setup`): `promtool check
//! metrics` on the text format, and a Prometheus server that scrapes the
//! endpoint (negotiating OpenMetrics), answers PromQL over known traffic and
//! stores the exemplars of sampled requests.
//!
//! One server for the whole file: its first scrape comes about 5 s after start.

#![cfg(feature = "_interop")]

#[path = "support/prometheus.rs"]
mod prometheus;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use prometheus::{PrometheusServer, promtool_check};
use serde_json::Value;
use tower::ServiceExt;
use tower_apm::{Apm, Sampler};

fn apm() -> Apm {
    Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("interop-prometheus")
        // Sampled only where the caller says so: the exemplars are exactly those.
        .sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .build()
        .expect("valid configuration")
}

fn app(apm: &Apm) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/error", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route(
            "/slow",
            get(|| async {
                // The latency being measured (test data, not synchronisation).
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .layer(apm.layer())
}

async fn send(app: &Router, uri: &str, traceparent: Option<String>) {
    let mut req = Request::get(uri);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    res.into_body().collect().await.unwrap();
}

fn scalar(result: &Value) -> Option<f64> {
    result.get(0)?["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn promtool_accepts_the_text_format_with_every_metric_family() {
    let apm = apm();
    let app = app(&apm);
    send(&app, "/users/1", None).await;
    send(&app, "/error", None).await;
    // Database metrics too: a query, a slow one and a failed one.
    let db = apm
        .database("postgresql")
        .slow_query_threshold(std::time::Duration::ZERO);
    db.statement("SELECT id FROM users WHERE id = $1")
        .run(async { Ok::<_, std::io::Error>(()) })
        .await
        .unwrap();
    let _ = db
        .query("INSERT", Some("orders"))
        .run(async { Err::<(), _>(std::io::Error::other("refused")) })
        .await;
    // Outgoing calls too, through the client layer (and the reqwest middleware).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let downstream = format!("http://{}/users/1", listener.local_addr().unwrap());
    let server = app.clone();
    tokio::spawn(async move { axum::serve(listener, server).await.unwrap() });
    let client = tower::ServiceBuilder::new().layer(apm.client_layer()).service(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>(),
    );
    let req = Request::get(&downstream).body(http_body_util::Empty::new()).unwrap();
    client.oneshot(req).await.unwrap();
    #[cfg(feature = "reqwest")]
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(apm.reqwest_middleware())
        .build()
        .get(&downstream)
        .send()
        .await
        .unwrap();
    let res = apm
        .metrics_router()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("http_server_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("http_client_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("process_cpu_time_seconds_total{"), "{text}");
    assert!(text.contains("db_client_operation_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("tower_apm_db_slow_queries_total{"), "{text}");
    if let Err(e) = promtool_check(&text) {
        panic!("promtool check metrics rejected our output: {e}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_counts_error_ratio_p95_and_exemplars() {
    let apm = apm();
    let app = app(&apm);
    // The endpoint on its own port, as in production: scrapes are not app traffic.
    let metrics: SocketAddr = apm.serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();

    // 40 requests: 32 fast, 4 errors, 4 slow (300 ms); the slow ones sampled.
    let mut sampled = Vec::new();
    for i in 0..32 {
        send(&app, &format!("/users/{i}"), None).await;
    }
    for _ in 0..4 {
        send(&app, "/error", None).await;
    }
    for i in 0..4u8 {
        let trace = format!(
            "{:032x}",
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4700_u128 + u128::from(i)
        );
        send(&app, "/slow", Some(format!("00-{trace}-00f067aa0ba902b7-01"))).await;
        sampled.push(trace);
    }
    let from = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 60.0;

    let prom = PrometheusServer::start(metrics, "/metrics").await;
    let deadline = Duration::from_secs(30);
    let total = prom
        .wait_until("sum(http_server_request_duration_seconds_count)", deadline, |r| {
            scalar(r) == Some(40.0)
        })
        .await;
    assert_eq!(scalar(&total), Some(40.0));

    let ratio = prom
        .query(
            "sum(http_server_request_duration_seconds_count{http_response_status_code=~\"5..\"}) \
             / sum(http_server_request_duration_seconds_count)",
        )
        .await;
    assert_eq!(scalar(&ratio), Some(0.1), "4 errors in 40: {ratio}");

    // Rank 38 of 40 falls among the slow requests: the (0.25, 0.5] bucket.
    let p95 = prom
        .query("histogram_quantile(0.95, sum by (le) (http_server_request_duration_seconds_bucket))")
        .await;
    let p95 = scalar(&p95).expect("a p95");
    assert!(p95 > 0.25 && p95 <= 0.5, "p95 {p95}");

    let (health, error) = prom.target_health().await;
    assert_eq!((health.as_str(), error.as_str()), ("up", ""));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + 60.0;
    let exemplars = prom
        .query_exemplars("http_server_request_duration_seconds_bucket", from, now)
        .await;
    let mut traces: Vec<String> = exemplars
        .as_array()
        .expect("an array of series")
        .iter()
        .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
        .collect();
    traces.sort();
    traces.dedup();
    // One exemplar per bucket is kept (the latest): the four slow requests share
    // a bucket, so the last sampled trace is the one Prometheus holds.
    assert_eq!(traces, vec![sampled[3].clone()], "{exemplars}");
}
