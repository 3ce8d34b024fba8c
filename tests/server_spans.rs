//! Server spans as a collector receives them: decoded from the OTLP our exporter
//! really sends (gRPC and HTTP/protobuf), checked against the HTTP semantic
//! conventions.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use support::{Receiver, Transport, apm_to};
use tower::ServiceExt;

fn app(apm: &tower_apm::Apm) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/boom", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }))
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler exploded");
                }
                "unreachable"
            }),
        )
        .layer(apm.layer())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn full_request() -> Request<Body> {
    let mut req = Request::get("/users/42?q=shoes&password=hunter2")
        .header("host", "shop.example:8080")
        .header("user-agent", "curl/8.5")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("10.1.2.3:55000".parse::<SocketAddr>().unwrap()));
    req
}

async fn server_span_carries_every_http_attribute(transport: Transport) {
    let receiver = Receiver::start().await;
    let apm = apm_to(
        &receiver,
        transport,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test,team=payments",
        )],
    );
    let app = app(&apm);
    let (status, _) = send(&app, full_request()).await;
    assert_eq!(status, StatusCode::OK);
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    let s = &spans[0];
    assert_eq!(s.transport, transport);
    assert_eq!(s.span.name, "GET /users/{id}");
    assert_eq!(s.span.kind, SpanKind::Server as i32);
    assert_eq!(s.str_attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(s.str_attr("http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(s.str_attr("url.path").as_deref(), Some("/users/42"));
    assert_eq!(s.str_attr("url.query").as_deref(), Some("q=shoes&password=REDACTED"));
    assert_eq!(s.str_attr("url.scheme").as_deref(), Some("http"));
    assert_eq!(s.int_attr("http.response.status_code"), Some(200));
    assert_eq!(s.str_attr("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(s.str_attr("server.address").as_deref(), Some("shop.example"));
    assert_eq!(s.int_attr("server.port"), Some(8080));
    assert_eq!(s.str_attr("client.address").as_deref(), Some("10.1.2.3"));
    assert_eq!(s.int_attr("client.port"), Some(55000));
    assert_eq!(s.str_attr("user_agent.original").as_deref(), Some("curl/8.5"));
    assert_eq!(s.attr("error.type"), None);
    assert_eq!(s.span.status.as_ref().map_or(0, |st| st.code), OtlpStatus::Unset as i32);
    assert!(
        s.span.parent_span_id.is_empty(),
        "a request without traceparent starts a root span"
    );
    assert_eq!(s.span.flags & 0x1, 0x1, "the sampled flag reaches the collector");
    assert_eq!(s.span.flags & 0x200, 0, "a root span has no remote parent");
    assert_eq!(s.resource_attr("service.name").as_deref(), Some("test-svc"));
    assert_eq!(s.resource_attr("deployment.environment.name").as_deref(), Some("test"));
    assert_eq!(s.resource_attr("team").as_deref(), Some("payments"));
    assert_eq!(s.scope, "tower-apm");
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_span_carries_every_http_attribute_over_grpc() {
    server_span_carries_every_http_attribute(Transport::Grpc).await;
}

#[tokio::test]
async fn server_span_carries_every_http_attribute_over_http_protobuf() {
    server_span_carries_every_http_attribute(Transport::Http).await;
}

#[tokio::test]
async fn unmatched_route_is_named_by_the_method_alone_never_the_raw_path() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = app(&apm);
    let (status, _) = send(&app, Request::get("/no/such/path/123").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert_eq!(s.span.name, "GET");
    assert_eq!(s.attr("http.route"), None);
    assert_eq!(s.int_attr("http.response.status_code"), Some(404));
    assert_eq!(s.attr("error.type"), None, "a 4xx is not a server error");
    assert_eq!(s.span.status.as_ref().map_or(0, |st| st.code), OtlpStatus::Unset as i32);
}

#[tokio::test]
async fn unknown_method_is_reported_as_other_with_the_original() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = Router::new()
        .route("/x", axum::routing::any(|| async { "any" }))
        .layer(apm.layer());
    let req = Request::builder()
        .method("PURGE")
        .uri("/x")
        .body(Body::empty())
        .unwrap();
    send(&app, req).await;
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert_eq!(s.str_attr("http.request.method").as_deref(), Some("_OTHER"));
    assert_eq!(s.str_attr("http.request.method_original").as_deref(), Some("PURGE"));
    assert_eq!(s.span.name, "HTTP /x");
}

#[tokio::test]
async fn server_error_sets_error_status_and_error_type() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = app(&apm);
    send(&app, Request::get("/boom").body(Body::empty()).unwrap()).await;
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert_eq!(s.int_attr("http.response.status_code"), Some(503));
    assert_eq!(s.str_attr("error.type").as_deref(), Some("503"));
    assert_eq!(s.span.status.as_ref().unwrap().code, OtlpStatus::Error as i32);
}

#[tokio::test]
async fn panicking_handler_becomes_a_500_with_an_exception_event_and_the_service_keeps_serving() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = app(&apm);
    let (status, _) = send(&app, Request::get("/panic").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = send(&app, Request::get("/users/1").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "user"));
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    let s = spans.iter().find(|s| s.span.name == "GET /panic").expect("panic span");
    assert_eq!(s.int_attr("http.response.status_code"), Some(500));
    assert_eq!(s.str_attr("error.type").as_deref(), Some("panic"));
    let status = s.span.status.as_ref().unwrap();
    assert_eq!(status.code, OtlpStatus::Error as i32);
    assert_eq!(status.message, "handler exploded");
    let event = s
        .span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("exception event");
    let msg = support::find(&event.attributes, "exception.message");
    assert!(format!("{msg:?}").contains("handler exploded"), "{msg:?}");
}

#[tokio::test]
async fn span_ends_when_the_response_body_ends_not_when_the_handler_returns() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let (tx, rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(1);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let rx = rx.lock().unwrap().take().unwrap();
                async move { Body::new(ChannelBody(rx)) }
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let head_at = std::time::Instant::now();
    let hold = Duration::from_millis(150);
    let sender = tokio::spawn(async move {
        tx.send("first ".into()).await.unwrap();
        tokio::time::sleep(hold).await; // the body is still streaming: that is what is measured
        tx.send("last".into()).await.unwrap();
    });
    let body = res.into_body().collect().await.unwrap().to_bytes();
    sender.await.unwrap();
    assert_eq!(&body[..], b"first last");
    assert!(head_at.elapsed() >= hold);
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert!(
        s.duration() >= hold,
        "span lasted {:?}, the body streamed for {hold:?}",
        s.duration()
    );
}

/// A response body fed by a channel: the test decides when it ends.
struct ChannelBody(tokio::sync::mpsc::Receiver<axum::body::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

#[tokio::test]
async fn request_dropped_before_its_response_still_ends_in_one_span() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = Router::new()
        .route("/hang", get(std::future::pending::<&'static str>))
        .layer(apm.layer());
    let call = app.oneshot(Request::get("/hang").body(Body::empty()).unwrap());
    let timed_out = tokio::time::timeout(Duration::from_millis(20), call).await;
    assert!(timed_out.is_err());
    apm.force_flush().await.unwrap();
    let s = &receiver.wait_for(1).await[0];
    assert_eq!(s.span.name, "GET /hang");
    assert_eq!(s.str_attr("error.type").as_deref(), Some("cancelled"));
    assert_eq!(s.attr("http.response.status_code"), None);
}

#[tokio::test]
async fn plain_tower_service_gets_its_route_from_the_route_function() {
    use http_body_util::Full;
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let svc = tower::ServiceBuilder::new()
        .layer(
            apm.layer()
                .route_with(|_, uri| uri.path().starts_with("/items/").then_some("/items/{id}")),
        )
        .service(tower::service_fn(|_req: Request<Full<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from_static(b"item"))))
        }));
    let res = svc
        .clone()
        .oneshot(Request::get("/items/7").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"item");
    svc.oneshot(Request::get("/other").body(Full::default()).unwrap())
        .await
        .unwrap();
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    assert_eq!(spans[0].span.name, "GET /items/{id}");
    assert_eq!(spans[0].str_attr("http.route").as_deref(), Some("/items/{id}"));
    assert_eq!(spans[1].span.name, "GET", "no route: the method alone");
}

#[tokio::test]
async fn layer_works_on_either_side_of_other_middleware() {
    async fn tag(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
        let mut res = next.run(req).await;
        res.headers_mut().insert("x-tag", http::HeaderValue::from_static("1"));
        res
    }
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let inner_first = Router::new()
        .route("/a/{x}", get(|| async { "a" }))
        .layer(apm.layer())
        .layer(axum::middleware::from_fn(tag));
    let outer_first = Router::new()
        .route("/b/{x}", get(|| async { "b" }))
        .layer(axum::middleware::from_fn(tag))
        .layer(apm.layer());
    for (app, uri) in [(inner_first, "/a/1"), (outer_first, "/b/1")] {
        let res = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.headers()["x-tag"], "1");
        res.into_body().collect().await.unwrap();
    }
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    let mut names: Vec<_> = spans.iter().map(|s| s.span.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["GET /a/{x}", "GET /b/{x}"]);
}

#[tokio::test]
async fn behind_a_trusted_proxy_client_address_is_the_forwarded_client_and_the_proxy_is_the_peer() {
    let receiver = Receiver::start().await;
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint().as_str()),
            ("OTEL_SERVICE_NAME", "test-svc"),
        ])
        .trusted_proxies(["10.0.0.0/8"])
        .build()
        .unwrap();
    let app = app(&apm);
    let request = |peer: &str| {
        let mut req = Request::get("/users/7")
            .header("x-forwarded-for", "6.6.6.6, 198.51.100.20")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        req
    };
    send(&app, request("10.1.2.3:55000")).await;
    // The same header from a peer that is not a trusted proxy is ignored.
    send(&app, request("203.0.113.5:41000")).await;
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    let behind = spans
        .iter()
        .find(|s| s.str_attr("network.peer.address").is_some())
        .unwrap();
    assert_eq!(behind.str_attr("client.address").as_deref(), Some("198.51.100.20"));
    assert_eq!(behind.attr("client.port"), None);
    assert_eq!(behind.str_attr("network.peer.address").as_deref(), Some("10.1.2.3"));
    assert_eq!(behind.int_attr("network.peer.port"), Some(55000));
    let direct = spans
        .iter()
        .find(|s| s.str_attr("network.peer.address").is_none())
        .unwrap();
    assert_eq!(direct.str_attr("client.address").as_deref(), Some("203.0.113.5"));
    assert_eq!(direct.int_attr("client.port"), Some(41000));
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_controlled_values_are_cut_to_the_attribute_value_length_limit_and_marked() {
    let receiver = Receiver::start().await;
    let apm = apm_to(
        &receiver,
        Transport::Grpc,
        &[("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "64")],
    );
    let app = app(&apm);
    let agent = format!("Mozilla/5.0 {}", "é".repeat(50_000));
    let path = format!("/users/{}", "7".repeat(10_000));
    let req = Request::get(&path)
        .header("host", format!("{}.example", "h".repeat(1_000)))
        .header("user-agent", &agent)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    let s = &spans[0];
    let ua = s.str_attr("user_agent.original").unwrap();
    assert!(
        ua.len() <= 64 && ua.ends_with('…') && ua.starts_with("Mozilla/5.0 é"),
        "{ua}"
    );
    let p = s.str_attr("url.path").unwrap();
    assert!(p.len() <= 64 && p.ends_with('…') && p.starts_with("/users/777"), "{p}");
    let host = s.str_attr("server.address").unwrap();
    assert!(host.len() <= 64 && host.starts_with("hhh"), "{host}");
    // The route template is the application's, never cut.
    assert_eq!(s.str_attr("http.route").as_deref(), Some("/users/{id}"));
}
