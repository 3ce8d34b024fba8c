//! OTLP metric push, decoded by the test receiver (built on `opentelemetry-proto`):
//! the same aggregation the Prometheus endpoint reads, over gRPC and HTTP/protobuf.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric, metric};
use support::{Receiver, Transport, apm_to, find, hex};
use tower::ServiceExt;
use tower_apm::ExportError;

fn app(apm: &tower_apm::Apm) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
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

async fn send(app: &Router, uri: &str) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
}

fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn str_attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    match find(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

async fn pushed_histogram_matches_the_traffic(transport: Transport) {
    let receiver = Receiver::start().await;
    // A long interval: the one push is the flush's.
    let apm = apm_to(&receiver, transport, &[("OTEL_METRIC_EXPORT_INTERVAL", "3600000")]);
    let app = app(&apm);
    for id in 0..3 {
        send(&app, &format!("/users/{id}")).await;
    }
    send(&app, "/slow").await;
    apm.force_flush().await.expect("the receiver accepts");

    let exports = receiver.wait_for_metric_exports(1, Duration::from_secs(10)).await;
    assert_eq!(exports.len(), 1, "exactly the flush's push");
    let (req, got) = &exports[0];
    assert_eq!(*got, transport);
    let resource = req.resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        str_attr(&resource.attributes, "service.name").as_deref(),
        Some("test-svc")
    );

    let duration = metric(req, "http.server.request.duration");
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = &duration.data else {
        panic!("not a histogram: {duration:?}");
    };
    assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    let users = h
        .data_points
        .iter()
        .find(|p| str_attr(&p.attributes, "http.route").as_deref() == Some("/users/{id}"))
        .expect("the /users/{id} series");
    assert_eq!(users.count, 3);
    assert_eq!(users.bucket_counts.iter().sum::<u64>(), 3);
    assert_eq!(
        users.explicit_bounds,
        vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ]
    );
    assert_eq!(
        str_attr(&users.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(str_attr(&users.attributes, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        str_attr(&users.attributes, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        find(&users.attributes, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert!(find(&users.attributes, "error.type").is_none());

    let slow = h
        .data_points
        .iter()
        .find(|p| str_attr(&p.attributes, "http.route").as_deref() == Some("/slow"))
        .expect("the /slow series");
    assert_eq!(slow.count, 1);
    // 300 ms lies in (0.25, 0.5]: bucket 7.
    let mut expected = vec![0u64; 15];
    expected[7] = 1;
    assert_eq!(slow.bucket_counts, expected);
    assert!(slow.sum.unwrap() >= 0.3);

    // The slow request was sampled (parent-based always-on): its exemplar is the
    // trace the receiver got as a span.
    let spans = receiver.wait_until(Duration::from_secs(10), |s| s.len() >= 4).await;
    let slow_span = spans
        .iter()
        .find(|s| s.span.name == "GET /slow")
        .expect("the /slow span");
    assert_eq!(slow.exemplars.len(), 1);
    assert_eq!(hex(&slow.exemplars[0].trace_id), slow_span.trace_id_hex());
    assert_eq!(hex(&slow.exemplars[0].span_id), slow_span.span_id_hex());

    // The rest of the metric set, from the same aggregation.
    let active = metric(req, "http.server.active_requests");
    let Some(metric::Data::Sum(active)) = &active.data else {
        panic!("not a sum")
    };
    assert!(!active.is_monotonic);
    for name in [
        "http.server.request.body.size",
        "http.server.response.body.size",
        "process.cpu.time",
        "process.memory.usage",
        "process.thread.count",
    ] {
        metric(req, name);
    }
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn pushed_histogram_matches_the_traffic_over_grpc() {
    pushed_histogram_matches_the_traffic(Transport::Grpc).await;
}

#[tokio::test]
async fn pushed_histogram_matches_the_traffic_over_http_protobuf() {
    pushed_histogram_matches_the_traffic(Transport::Http).await;
}

#[tokio::test]
async fn the_metric_export_interval_drives_periodic_pushes() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_METRIC_EXPORT_INTERVAL", "100")]);
    let app = app(&apm);
    send(&app, "/users/1").await;
    // Pushes are sequential: once the third has arrived, the first two have been
    // answered and counted (waiting for two would race the counter of the second).
    let exports = receiver.wait_for_metric_exports(3, Duration::from_secs(10)).await;
    assert!(exports.len() >= 3);
    assert!(apm.stats().metric_exports >= 2, "{:?}", apm.stats());
}

#[tokio::test]
async fn the_metrics_endpoint_variable_wins_over_the_generic_one() {
    let receiver = Receiver::start().await;
    let metrics_url = format!("{}/v1/metrics", receiver.http_endpoint());
    let apm = tower_apm::Apm::builder()
        .environment([
            // Traces would go nowhere; metrics have their own full URL.
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_url.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
        ])
        .build()
        .unwrap();
    send(&app(&apm), "/users/1").await;
    apm.force_flush().await.expect("pushed to the metrics URL");
    let exports = receiver.wait_for_metric_exports(1, Duration::from_secs(10)).await;
    assert_eq!(exports[0].1, Transport::Http);
}

#[tokio::test]
async fn a_collector_that_is_down_fails_the_push_within_its_timeout_and_counts_it() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}").as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "500"),
        ])
        .build()
        .unwrap();
    send(&app(&apm), "/users/1").await;
    let started = std::time::Instant::now();
    let err = apm
        .force_flush_within(Duration::from_secs(5))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ExportError::Metrics(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the export timeout"
    );
    assert_eq!(apm.stats().metric_export_failures, 1);
    // Shutdown is bounded too, and reports the same failure.
    assert!(apm.shutdown_within(Duration::from_secs(5)).await.is_err());
}

/// `OTEL_METRICS_EXPORTER=none` chooses no exporter, as the OpenTelemetry
/// specification defines the variable: nothing is pushed, while the in-process
/// metrics that `/metrics`, alerts and the status page read stay on, so an
/// `Apm` with alerts still builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exporter_none_stops_the_push_and_keeps_the_in_process_metrics() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "50"),
        ])
        .alert(tower_apm::Alert::error_rate().above(0.05))
        .build()
        .expect("alerts read the in-process metrics, which OTEL_METRICS_EXPORTER=none leaves on");
    let app = app(&apm).merge(apm.metrics_router());
    send(&app, "/users/7").await;

    let res = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let count = text
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count{") && l.contains("/users/{id}"))
        .unwrap_or_else(|| panic!("no /users/{{id}} series on /metrics:\n{text}"));
    assert!(count.ends_with(" 1"), "{count}");

    // The spans go to the collector; no metric push does.
    apm.force_flush().await.unwrap();
    receiver.wait_for(1).await;
    assert!(receiver.metric_exports().is_empty(), "nothing pushed");
    assert_eq!(apm.stats().metric_exports, 0);
    apm.shutdown().await.unwrap();
    assert!(receiver.metric_exports().is_empty(), "not even at shutdown");
}
