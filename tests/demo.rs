//! The demo as a user runs it: a real process, real HTTP, a real SIGTERM, and its
//! spans decoded by the OTLP receiver.

#![cfg(unix)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{Receiver, demo_binary, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_one_connected_trace_and_flushes_on_sigterm() {
    let receiver = Receiver::start().await;
    let mut child = Command::new(demo_binary())
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000") // nothing leaves before the SIGTERM flush
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Every stdout line, each of which must be JSON; collected until exit.
    let (addr_rx, reader) = support::json_lines(stdout);
    let base = tokio::time::timeout(Duration::from_secs(30), addr_rx)
        .await
        .unwrap()
        .unwrap();

    let (status, body) = get(format!("{base}/downstream")).await;
    assert_eq!((status, body.as_str()), (200, "downstream said: user 42\n"));
    let (status, _) = get(format!("{base}/panic")).await;
    assert_eq!(status, 500);
    let (status, _) = get(format!("{base}/error")).await;
    assert_eq!(status, 500);
    let (status, _) = get(format!("{base}/")).await;
    assert_eq!(status, 200, "the demo keeps serving after a panic");
    let (status, metrics) = get(format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let inner_count = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{") && l.contains("http_route=\"/users/{id}\"")
        })
        .unwrap_or_else(|| panic!("no /users/{{id}} series in\n{metrics}"));
    assert!(
        inner_count.ends_with(" 1"),
        "the downstream call's request: {inner_count}"
    );
    let (status, alerts) = get(format!("{base}/alerts")).await;
    assert_eq!(status, 200);
    let alerts: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    let names: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["HighErrorRate", "HighLatencyP95"]);
    assert_eq!(alerts["slos"][0]["name"], "availability");
    assert_eq!(alerts["slos"][0]["target"], 0.999);
    assert!(
        receiver.spans().is_empty(),
        "spans wait in the batch queue until the flush"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM is a clean exit");

    let spans = receiver.wait_for(7).await;
    let named = |n: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.span.name == n && s.span.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span {n}: {spans:#?}"))
    };
    let outer = named("GET /downstream", SpanKind::Server);
    let client = named("GET", SpanKind::Client);
    let inner = named("GET /users/{id}", SpanKind::Server);
    let load = named("load_user", SpanKind::Internal);
    assert_eq!(client.parent_id_hex(), outer.span_id_hex());
    assert_eq!(inner.parent_id_hex(), client.span_id_hex());
    assert_eq!(load.parent_id_hex(), inner.span_id_hex());
    for s in [client, inner, load] {
        assert_eq!(
            s.trace_id_hex(),
            outer.trace_id_hex(),
            "one trace spans both server spans"
        );
    }
    assert_eq!(
        named("GET /panic", SpanKind::Server).str_attr("error.type").as_deref(),
        Some("panic")
    );
    assert_eq!(
        named("GET /error", SpanKind::Server).str_attr("error.type").as_deref(),
        Some("500")
    );
    assert_eq!(outer.resource_attr("service.name").as_deref(), Some("tower-apm-demo"));

    // The log: JSON only, one access line per request, each with its request's trace.
    let lines = reader.join().expect("every stdout line parsed as JSON");
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "tower_apm::access").collect();
    // /downstream, /users/42 (its call), /panic, /error, /; not /metrics and
    // /alerts: operator routes are not traffic.
    assert_eq!(access.len(), 5, "{access:#?}");
    assert!(
        access.iter().all(|l| l["path"] != "/metrics" && l["path"] != "/alerts"),
        "{access:#?}"
    );
    let logged_outer = access.iter().find(|l| l["route"] == "/downstream").unwrap();
    assert_eq!(logged_outer["trace_id"], outer.trace_id_hex().as_str());
    assert_eq!(logged_outer["span_id"], outer.span_id_hex().as_str());
    let load_line = lines
        .iter()
        .find(|l| l["message"] == "loading user")
        .expect("the handler's event");
    assert_eq!(load_line["trace_id"], outer.trace_id_hex().as_str());
    assert_eq!(load_line["span_id"], load.span_id_hex().as_str());

    // The SIGTERM flush pushed the metrics too (OTLP is the default metrics exporter).
    let pushed = receiver.wait_for_metric_exports(1, Duration::from_secs(10)).await;
    assert!(!pushed.is_empty());
}
