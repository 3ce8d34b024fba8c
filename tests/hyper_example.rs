//! `examples/hyper.rs` as a hyper user runs it: a real process serving plain hyper
//! (no axum router), real HTTP over loopback, a real SIGTERM, its spans and metrics
//! decoded by the OTLP receiver. Every wait awaits an event (a log line, a
//! response, the exit, an export), each with a deadline.

#![cfg(unix)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use support::{Receiver, example_binary, find, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_example_names_spans_by_route_gives_the_peer_and_exits_0_on_sigterm() {
    let receiver = Receiver::start().await;
    let mut child = Command::new(example_binary("hyper"))
        .env("HYPER_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000") // nothing leaves before the SIGTERM flush
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Every stdout line, each of which must be JSON; collected until exit.
    let (url_rx, reader) = support::json_lines(stdout);
    let base = tokio::time::timeout(Duration::from_secs(30), url_rx)
        .await
        .expect("a listening line within 30 s")
        .expect("the example's stdout closed before its listening line");

    assert_eq!(get(format!("{base}/users/7")).await, (200, "user 7\n".to_owned()));
    assert_eq!(get(format!("{base}/users/8")).await, (200, "user 8\n".to_owned()));
    assert_eq!(get(format!("{base}/")).await.0, 200);
    assert_eq!(get(format!("{base}/nope")).await.0, 404);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the example exits within 30 s of SIGTERM")
    .unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM is a clean exit");

    // Spans: named by the route function, never by the raw path; the peer
    // address given as a `PeerAddr` extension is the span's `client.address`.
    let spans = receiver.wait_until(Duration::from_secs(10), |s| s.len() >= 4).await;
    let mut names: Vec<String> = spans.iter().map(|s| s.span.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["GET", "GET /", "GET /users/{id}", "GET /users/{id}"]);
    for s in &spans {
        assert_eq!(s.str_attr("client.address").as_deref(), Some("127.0.0.1"), "{s:#?}");
        let route = s.str_attr("http.route");
        match s.span.name.as_str() {
            "GET" => assert_eq!(route, None, "no route matched /nope"),
            name => assert_eq!(Some(name.trim_start_matches("GET ")), route.as_deref()),
        }
    }

    // Metrics: one series per route template (the SIGTERM flush pushed them).
    let pushed = receiver.wait_for_metric_exports(1, Duration::from_secs(10)).await;
    let mut routes: Vec<(String, u64)> = Vec::new();
    for (export, _) in &pushed {
        for rm in &export.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == "http.server.request.duration") {
                    let Some(Data::Histogram(h)) = &m.data else {
                        panic!("http.server.request.duration is not a histogram: {m:#?}")
                    };
                    for p in &h.data_points {
                        let route = match find(&p.attributes, "http.route") {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(r)) => r.clone(),
                            _ => "(none)".to_owned(),
                        };
                        routes.push((route, p.count));
                    }
                }
            }
        }
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            ("(none)".to_owned(), 1),
            ("/".to_owned(), 1),
            ("/users/{id}".to_owned(), 2)
        ],
        "one series per route"
    );

    let lines = reader.join().expect("every stdout line parsed as JSON");
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "tower_apm::access").collect();
    assert_eq!(access.len(), 4, "{access:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "looking up the user" && l["id"] == "7"),
        "the handler's event is logged"
    );
}
