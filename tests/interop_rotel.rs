//! End to end through a real OpenTelemetry collector: rotel receives our export
//! over gRPC and over HTTP/protobuf and forwards it to the test receiver, where the
//! spans must arrive intact. `.ci/interop-setup` installs rotel and sets
//! `TOWER_APM_ROTEL`.

#![cfg(feature = "_interop")]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use support::Receiver;
use tower::ServiceExt;

struct Rotel {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: TempDir,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts rotel forwarding to `forward_to` and waits until its HTTP receiver answers.
async fn start_rotel(name: &str, forward_to: &str) -> Rotel {
    let bin =
        std::env::var("TOWER_APM_ROTEL").expect("TOWER_APM_ROTEL: run .ci/interop-setup and source target/interop/env");
    let dir = std::env::temp_dir().join(format!("tower-apm-rotel-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(bin)
        .arg("start")
        .args(["--otlp-grpc-endpoint", &grpc.to_string()])
        .args(["--otlp-http-endpoint", &http.to_string()])
        .args(["--exporter", "otlp", "--otlp-exporter-endpoint", forward_to])
        .args(["--batch-timeout", "50ms"])
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"))
        .stdout(Stdio::from(std::fs::File::create(dir.join("stdout")).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(dir.join("stderr")).unwrap()))
        .spawn()
        .expect("start rotel-agent");
    let rotel = Rotel {
        child,
        grpc,
        http,
        _dir: TempDir(dir),
    };
    // Readiness of another process can only be asked: POST an empty export until 200.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let req = Request::post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if let Ok(res) = client.request(req).await {
            if res.status().is_success() {
                return rotel;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "rotel did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn spans_arrive_intact_through_rotel(protocol: &str, port_of: fn(&Rotel) -> SocketAddr) {
    let receiver = Receiver::start().await;
    let rotel = start_rotel(protocol.replace('/', "-").as_str(), &receiver.grpc_endpoint()).await;
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", port_of(&rotel))),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_SERVICE_NAME", format!("via-rotel-{protocol}")),
        ])
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "order" }))
        .layer(apm.layer());
    let res = app
        .oneshot(
            Request::get("/orders/9?token=secret")
                .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    apm.force_flush().await.unwrap();

    let spans = receiver.wait_for(1).await;
    let s = &spans[0];
    assert_eq!(s.transport, support::Transport::Grpc, "rotel forwards over gRPC");
    assert_eq!(s.span.name, "GET /orders/{id}");
    assert_eq!(s.trace_id_hex(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s.parent_id_hex(), "b7ad6b7169203331");
    assert_eq!(s.str_attr("http.route").as_deref(), Some("/orders/{id}"));
    assert_eq!(s.str_attr("url.query").as_deref(), Some("token=REDACTED"));
    assert_eq!(s.int_attr("http.response.status_code"), Some(200));
    assert_eq!(s.resource_attr("service.name"), Some(format!("via-rotel-{protocol}")));
    assert_eq!(s.scope, "tower-apm");
    apm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_intact_through_rotel_over_grpc() {
    spans_arrive_intact_through_rotel("grpc", |r| r.grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_intact_through_rotel_over_http_protobuf() {
    spans_arrive_intact_through_rotel("http/protobuf", |r| r.http).await;
}
