//! W3C trace context in and out: incoming `traceparent`/`tracestate`/`baggage`
//! continue the trace, malformed ones start a new one, and the client layer joins
//! two services into one trace over real TCP.

mod support;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{Receiver, Transport, apm_to};
use tower::{ServiceBuilder, ServiceExt};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn echo_app(apm: &tower_apm::Apm) -> Router {
    Router::new()
        .route("/echo", get(|headers: HeaderMap| async move { format!("{headers:?}") }))
        .layer(apm.layer())
}

async fn get_with(app: &Router, headers: &[(&str, &str)]) {
    let mut req = Request::get("/echo");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    res.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn valid_traceparent_continues_the_remote_trace() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = echo_app(&apm);
    get_with(&app, &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]).await;
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert_eq!(s.trace_id_hex(), TRACE);
    assert_eq!(s.parent_id_hex(), PARENT);
    assert_ne!(s.span_id_hex(), PARENT);
    assert_eq!(s.span.flags & 0x300, 0x300, "the parent is marked remote");
}

#[tokio::test]
async fn invalid_traceparent_starts_a_new_root_trace() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = echo_app(&apm);
    let bad = [
        format!("00-{TRACE}-{PARENT}-1"),                           // wrong length
        format!("ff-{TRACE}-{PARENT}-01"),                          // version ff
        format!("00-{}-{PARENT}-01", "0".repeat(32)),               // all-zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)),                // all-zero parent id
        format!("00-{TRACE}-{PARENT}-0g"),                          // non-hex
        format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),         // uppercase
        format!("00-{TRACE}-{PARENT}-01-extra"),                    // version 00 with extra fields
        format!("00-{TRACE}-{PARENT}-01{}", " x".repeat(8 * 1024)), // a huge header
    ];
    for tp in &bad {
        get_with(
            &app,
            &[
                ("traceparent", tp),
                ("tracestate", "vendor=kept-only-with-a-valid-parent"),
            ],
        )
        .await;
    }
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(bad.len()).await;
    for s in &spans {
        assert_ne!(s.trace_id_hex(), TRACE, "a malformed traceparent was continued");
        assert!(
            s.span.parent_span_id.is_empty(),
            "a malformed traceparent became a parent"
        );
        assert_eq!(
            s.span.trace_state, "",
            "tracestate without a valid traceparent was kept"
        );
    }
    let mut ids: Vec<_> = spans.iter().map(|s| s.trace_id_hex()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bad.len(), "each request started its own trace");
}

#[tokio::test]
async fn tracestate_is_kept_with_a_valid_parent_and_limited_to_32_members() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = echo_app(&apm);
    let tp = format!("00-{TRACE}-{PARENT}-01");
    get_with(
        &app,
        &[
            ("traceparent", &tp),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    get_with(&app, &[("traceparent", &tp), ("tracestate", &too_many.join(","))]).await;
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    assert_eq!(spans[0].span.trace_state, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_eq!(spans[1].span.trace_state, "", "33 members: the tracestate is discarded");
    assert_eq!(spans[1].trace_id_hex(), TRACE, "the traceparent is still continued");
}

#[tokio::test]
async fn unsampled_parent_is_not_exported() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = echo_app(&apm);
    get_with(&app, &[("traceparent", &format!("00-{TRACE}-{PARENT}-00"))]).await;
    get_with(&app, &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]).await;
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    assert_eq!(spans.len(), 1, "only the sampled request is exported");
    assert_eq!(apm.stats().spans_exported, 1);
}

/// Serves `app` on a loopback port with connect info, returning its address.
async fn serve(app: Router) -> SocketAddr {
    support::serve_with_peer(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_layer_joins_two_services_into_one_trace_over_tcp() {
    let receiver = Receiver::start().await;
    let apm_b = apm_to(&receiver, Transport::Grpc, &[("OTEL_SERVICE_NAME", "svc-b")]);
    let apm_a = apm_to(&receiver, Transport::Http, &[("OTEL_SERVICE_NAME", "svc-a")]);

    // Service B echoes the propagation headers it received.
    let b = Router::new()
        .route(
            "/inner",
            get(|headers: HeaderMap| async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                };
                format!("{}\n{}\n{}", h("traceparent"), h("tracestate"), h("baggage"))
            }),
        )
        .layer(apm_b.layer());
    let b_addr = serve(b).await;

    // Service A calls B through the client layer from inside its handler.
    let client = ServiceBuilder::new()
        .layer(apm_a.client_layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>());
    let a = Router::new()
        .route(
            "/outer",
            get(move || {
                let client = client.clone();
                async move {
                    let req = Request::get(format!("http://{b_addr}/inner"))
                        .body(Empty::new())
                        .unwrap();
                    let res = client.oneshot(req).await.unwrap();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8(body.to_vec()).unwrap()
                }
            }),
        )
        .layer(apm_a.layer());
    let a_addr = serve(a).await;

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let req = Request::get(format!("http://{a_addr}/outer"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "rojo=00f067aa0ba902b7")
        .header("baggage", "tenant=acme,user.id=42")
        .body(Empty::new())
        .unwrap();
    let res = http.request(req).await.unwrap();
    let echoed = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let mut lines = echoed.lines();
    let (tp, ts, baggage) = (lines.next().unwrap(), lines.next().unwrap(), lines.next().unwrap());

    apm_a.force_flush().await.unwrap();
    apm_b.force_flush().await.unwrap();
    let spans = receiver.wait_for(3).await;
    let find = |svc: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.resource_attr("service.name").as_deref() == Some(svc) && s.span.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span from {svc}: {spans:#?}"))
    };
    let a_server = find("svc-a", SpanKind::Server);
    let a_client = find("svc-a", SpanKind::Client);
    let b_server = find("svc-b", SpanKind::Server);

    for s in [a_server, a_client, b_server] {
        assert_eq!(s.trace_id_hex(), TRACE, "one trace across both services");
    }
    assert_eq!(a_server.parent_id_hex(), PARENT);
    assert_eq!(a_client.parent_id_hex(), a_server.span_id_hex());
    assert_eq!(b_server.parent_id_hex(), a_client.span_id_hex());
    assert_eq!(tp, format!("00-{TRACE}-{}-01", a_client.span_id_hex()));
    assert_eq!(ts, "rojo=00f067aa0ba902b7");
    assert!(
        baggage.contains("tenant=acme") && baggage.contains("user.id=42"),
        "{baggage}"
    );

    assert_eq!(a_client.span.name, "GET");
    assert_eq!(a_client.str_attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a_client.int_attr("server.port"), Some(i64::from(b_addr.port())));
    assert_eq!(a_client.int_attr("http.response.status_code"), Some(200));
    assert_eq!(
        a_client.str_attr("url.full").as_deref(),
        Some(format!("http://{b_addr}/inner").as_str())
    );
    assert_eq!(b_server.str_attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(b_server.int_attr("server.port"), Some(i64::from(b_addr.port())));
}
