//! Scratch test proving the Prometheus harness in `tests/support/prometheus.rs`:
//! a real Prometheus 2.42 scrapes a fixed OpenMetrics page served by axum, stores
//! its exemplar, and `promtool` accepts the 0.0.4 text and rejects garbage.

#![cfg(feature = "interop")]

#[path = "support/prometheus.rs"]
mod prometheus;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use prometheus::{PrometheusServer, promtool_check};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

const OPENMETRICS: &str = "\
# HELP demo_requests Requests handled.
# TYPE demo_requests counter
demo_requests_total 7
# HELP demo_latency_seconds Request latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{le=\"0.1\"} 2
demo_latency_seconds_bucket{le=\"0.5\"} 5 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.2
demo_latency_seconds_bucket{le=\"+Inf\"} 7
demo_latency_seconds_sum 1.9
demo_latency_seconds_count 7
# EOF
";

/// The same metrics in text format 0.0.4 (no exemplar, no `# EOF`).
const TEXT_004: &str = "\
# HELP demo_requests_total Requests handled.
# TYPE demo_requests_total counter
demo_requests_total 7
# HELP demo_latency_seconds Request latency.
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{le=\"0.1\"} 2
demo_latency_seconds_bucket{le=\"0.5\"} 5
demo_latency_seconds_bucket{le=\"+Inf\"} 7
demo_latency_seconds_sum 1.9
demo_latency_seconds_count 7
";

#[derive(Default)]
struct Seen {
    first_scrape: Option<Instant>,
    accept: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_openmetrics_with_exemplars() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen_by_handler = seen.clone();
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let seen = seen_by_handler.clone();
            async move {
                let accept = headers
                    .get(http::header::ACCEPT)
                    .map(|v| v.to_str().unwrap_or("<not utf-8>").to_owned())
                    .unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                if seen.first_scrape.is_none() {
                    seen.first_scrape = Some(Instant::now());
                    eprintln!("scrape Accept: {accept}");
                }
                seen.accept.push(accept);
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    OPENMETRICS,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let prom = PrometheusServer::start(target, "/metrics").await;
    eprintln!("prometheus on {} ready after {:?}", prom.addr, prom.ready_after);

    let result = prom
        .wait_until("demo_requests_total", Duration::from_secs(30), |r| {
            r.as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let landed = prom.started_at.elapsed();
    let first_scrape = seen.lock().unwrap().first_scrape.unwrap() - prom.started_at;
    eprintln!("first scrape {first_scrape:?} after start; visible to queries after {landed:?}");
    eprintln!("demo_requests_total: {result}");
    assert_eq!(result[0]["metric"]["job"], "app");
    assert_eq!(result[0]["value"][1], "7");
    assert_eq!(prom.target_health().await, ("up".to_owned(), String::new()));

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let exemplars = prom
        .query_exemplars("demo_latency_seconds_bucket", now - 300.0, now + 60.0)
        .await;
    eprintln!("exemplars: {exemplars}");
    let ex = exemplars
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|series| series["exemplars"].as_array().unwrap())
        .find(|e| e["labels"]["trace_id"] == TRACE_ID)
        .unwrap_or_else(|| panic!("no exemplar with trace_id {TRACE_ID}: {exemplars}"));
    assert_eq!(ex["labels"]["span_id"], SPAN_ID);
    assert_eq!(ex["value"], "0.2");

    let accept = seen.lock().unwrap().accept.clone();
    assert!(
        accept.iter().all(|a| a.starts_with("application/openmetrics-text")),
        "Prometheus 2.42 asks for OpenMetrics first: {accept:?}"
    );
}

#[test]
fn promtool_accepts_text_004_and_rejects_garbage() {
    promtool_check(TEXT_004).unwrap();

    let err = promtool_check("this is {{ not metrics\n").unwrap_err();
    eprintln!("garbage: {err}");
    assert!(err.contains("exited with 1"), "{err}");

    // Lint problems (exit 3) count as failure: here a counter without HELP.
    let err = promtool_check("# TYPE demo_requests_total counter\ndemo_requests_total 7\n").unwrap_err();
    eprintln!("lint: {err}");
    assert!(err.contains("exited with 3"), "{err}");

    // OpenMetrics exemplars are a parse error for 2.42's promtool.
    let err = promtool_check(OPENMETRICS).unwrap_err();
    eprintln!("openmetrics: {err}");
}
