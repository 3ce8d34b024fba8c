//! `Apm::init_logging` installs the global OpenTelemetry propagator matching
//! `OTEL_PROPAGATORS`, so a library that injects through `opentelemetry::global`
//! inside a handler sends the request's trace (and only the formats
//! configured). Its own test binary: a global subscriber is installed once per
//! process.

mod support;

use std::collections::HashMap;

use axum::Router;
use axum::routing::get;
use tower_apm::opentelemetry;
use tower_apm::opentelemetry::baggage::BaggageExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_logging_installs_the_configured_propagator_globally() {
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_PROPAGATORS", "tracecontext"),
        ])
        .build()
        .unwrap();
    apm.init_logging().unwrap();

    // What a library injecting through the global propagator writes from a handler.
    let app = Router::new()
        .route(
            "/inject",
            get(|| async {
                let cx =
                    opentelemetry::Context::current().with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
                let mut headers = HashMap::new();
                opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
                let mut lines: Vec<String> = headers.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                lines.sort();
                lines.join("\n")
            }),
        )
        .layer(apm.layer());
    let addr = support::serve_with_peer(app).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!("http://{addr}/inject"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();

    // The server span's context, in W3C Trace Context: the same trace, a new
    // span id (the server span's), sampled. No baggage: OTEL_PROPAGATORS says
    // tracecontext only.
    let tp = body
        .lines()
        .find_map(|l| l.strip_prefix("traceparent="))
        .unwrap_or_else(|| panic!("no traceparent injected: {body:?}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{tp}");
    assert_ne!(parts[2], PARENT, "the server span's id, not the caller's");
    assert!(!body.contains("baggage"), "{body}");
}
