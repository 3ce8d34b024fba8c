//! Test support: a real OTLP receiver built on the official `opentelemetry-proto`
//! crate. It decodes exactly what our exporters send, over gRPC (tonic
//! `TraceService` and `MetricsService`) and over HTTP/protobuf (`POST /v1/traces`,
//! `POST /v1/metrics`).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::Notify;

/// How a span reached the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

/// One decoded span with its resource and scope.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
    pub scope: String,
    pub transport: Transport,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        find(&self.span.attributes, key)
    }

    pub fn str_attr(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            Value::StringValue(s) => Some(s.clone()),
            other => panic!("attribute {key} is not a string: {other:?}"),
        }
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::IntValue(i) => Some(*i),
            other => panic!("attribute {key} is not an int: {other:?}"),
        }
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        match find(&self.resource, key)? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.span.end_time_unix_nano - self.span.start_time_unix_nano)
    }
}

pub fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Store {
    spans: Arc<Mutex<Vec<Received>>>,
    metrics: Arc<Mutex<Vec<(ExportMetricsServiceRequest, Transport)>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    arrived: Arc<Notify>,
}

impl Store {
    fn add(&self, req: ExportTraceServiceRequest, transport: Transport) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    spans.push(Received {
                        span,
                        resource: resource.clone(),
                        scope: scope.clone(),
                        transport,
                    });
                }
            }
        }
        drop(spans);
        self.arrived.notify_waiters();
    }
}

struct Grpc(Store);

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.logs.lock().unwrap().push(request.into_inner());
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .metrics
            .lock()
            .unwrap()
            .push((request.into_inner(), Transport::Grpc));
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running OTLP receiver on two loopback ports.
pub struct Receiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    store: Store,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts the receiver with its gRPC endpoint on `grpc_addr`.
    pub async fn start_on(grpc_addr: SocketAddr) -> Receiver {
        let store = Store::default();
        let grpc = tokio::net::TcpListener::bind(grpc_addr).await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        // Collectors forward gzip-compressed exports; accept them as a collector does.
        let svc =
            TraceServiceServer::new(Grpc(store.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let metrics_svc =
            MetricsServiceServer::new(Grpc(store.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let logs_svc =
            LogsServiceServer::new(Grpc(store.clone())).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(metrics_svc)
                .add_service(logs_svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc))
                .await
                .unwrap();
        });
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let http_store = store.clone();
        let metrics_store = store.clone();
        let app = axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |body: Bytes| {
                let store = metrics_store.clone();
                async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(req) => {
                            store.metrics.lock().unwrap().push((req, Transport::Http));
                            store.arrived.notify_waiters();
                            (
                                http::StatusCode::OK,
                                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                                ExportMetricsServiceResponse { partial_success: None }.encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            http::StatusCode::BAD_REQUEST,
                            [(http::header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportMetricsServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let app = app.route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let store = http_store.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            store.add(req, Transport::Http);
                            (
                                http::StatusCode::OK,
                                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                                ExportTraceServiceResponse { partial_success: None }.encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            http::StatusCode::BAD_REQUEST,
                            [(http::header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
        Receiver {
            grpc_addr,
            http_addr,
            store,
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The base URL; the exporter appends `/v1/traces`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Waits (awaiting arrivals, no polling) until `pred` holds for the spans
    /// received so far; panics after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let wait = async {
            loop {
                let notified = self.store.arrived.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let spans = self.spans();
                if pred(&spans) {
                    return spans;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(spans) => spans,
            Err(_) => panic!(
                "receiver: condition not met within {timeout:?}; got {:#?}",
                self.spans()
            ),
        }
    }

    /// Every log export received so far (gRPC).
    pub fn log_exports(&self) -> Vec<ExportLogsServiceRequest> {
        self.store.logs.lock().unwrap().clone()
    }

    /// Every metric export received so far, with its transport.
    pub fn metric_exports(&self) -> Vec<(ExportMetricsServiceRequest, Transport)> {
        self.store.metrics.lock().unwrap().clone()
    }

    /// Waits (awaiting arrivals) until at least `n` metric exports have arrived;
    /// panics after `timeout`.
    pub async fn wait_for_metric_exports(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<(ExportMetricsServiceRequest, Transport)> {
        let wait = async {
            loop {
                let notified = self.store.arrived.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let got = self.metric_exports();
                if got.len() >= n {
                    return got;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(got) => got,
            Err(_) => panic!("receiver: {n} metric exports not received within {timeout:?}"),
        }
    }

    /// Waits until at least `n` spans have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_until(Duration::from_secs(20), |s| s.len() >= n).await
    }
}

/// An `Apm` exporting to `receiver` over `transport`, with `extra` OTEL_* variables
/// (and none of the process's).
pub fn apm_to(receiver: &Receiver, transport: Transport, extra: &[(&str, &str)]) -> tower_apm::Apm {
    let (endpoint, protocol) = match transport {
        Transport::Grpc => (receiver.grpc_endpoint(), "grpc"),
        Transport::Http => (receiver.http_endpoint(), "http/protobuf"),
    };
    let mut env: Vec<(String, String)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_SERVICE_NAME".into(), "test-svc".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    tower_apm::Apm::builder()
        .environment(env)
        .build()
        .expect("valid test configuration")
}

/// The demo binary that `cargo test` built next to this test (built on demand when
/// only this test target was compiled).
pub fn demo_binary() -> std::path::PathBuf {
    example_binary("demo")
}

/// The binary of example `name`, as `cargo test` builds it next to the tests
/// (built on demand when only one test target was compiled).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

/// `GET url` over a real connection: status, body, and the `Connection` header.
pub async fn get_with_connection(url: String) -> (u16, String, Option<String>) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client.get(url.parse().unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let connection = res
        .headers()
        .get(http::header::CONNECTION)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), connection)
}

/// `GET url` over a real connection: status and body.
pub async fn get(url: String) -> (u16, String) {
    let (status, body, _) = get_with_connection(url).await;
    (status, body)
}

/// Serves `GET /ok` (200) and `GET /fail` (500) through `layer`, with `extra`
/// merged beside them (not layered), on a loopback port; returns the base URL.
pub async fn serve_ok_fail(layer: tower_apm::ApmLayer, extra: axum::Router) -> String {
    let app = axum::Router::new()
        .route("/ok", axum::routing::get(|| async { "ok" }))
        .route(
            "/fail",
            axum::routing::get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        )
        .layer(layer)
        .merge(extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Serves `app` on a loopback port with the peer's address (axum's
/// `ConnectInfo`, as `into_make_service_with_connect_info` gives it); returns
/// the address.
pub async fn serve_with_peer(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

/// A process of ours (an example), running, its stdout lines arriving as JSON
/// values (every line must be JSON), its stderr captured.
pub struct JsonProcess {
    pub child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// Reads stderr as it comes, so a full pipe never stalls the process.
    stderr: std::thread::JoinHandle<String>,
    /// Every line received so far.
    pub seen: Vec<serde_json::Value>,
}

impl JsonProcess {
    /// Starts `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: std::process::Command) -> JsonProcess {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        });
        JsonProcess {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Awaits the first line (from now on) that `pred` accepts, at most 30 s.
    pub async fn wait_line(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let wait = async {
            loop {
                let line = self.lines.recv().await.expect("the process's stdout closed first");
                self.seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no such line within 30 s; saw {:#?}", self.seen))
    }

    /// Sends a real SIGTERM.
    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the exit (at most 30 s); its code, its stderr and every line.
    pub async fn exit(mut self) -> (Option<i32>, String, Vec<serde_json::Value>) {
        let mut child = self.child;
        let stderr = self.stderr;
        let (status, stderr) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || (child.wait().unwrap(), stderr.join().unwrap())),
        )
        .await
        .expect("the process exited within 30 s")
        .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status.code(), stderr, self.seen)
    }
}

/// Reads a process's stdout, every line of which must be JSON: resolves the
/// first receiver with the `url` of its `listening` line, and returns every
/// line from the thread once the process closes its stdout.
pub fn json_lines(
    stdout: std::process::ChildStdout,
) -> (
    tokio::sync::oneshot::Receiver<String>,
    std::thread::JoinHandle<Vec<serde_json::Value>>,
) {
    use std::io::BufRead;
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut url_tx = Some(url_tx);
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let json: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("a line is not JSON ({e}): {line}"));
            if json["message"] == "listening" {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(json["url"].as_str().unwrap().to_owned());
                }
            }
            all.push(json);
        }
        all
    });
    (url_rx, reader)
}

/// `n` GETs of `{base}{path}`, one after another.
pub async fn hit(base: &str, path: &str, n: usize) {
    for _ in 0..n {
        get(format!("{base}{path}")).await;
    }
}

/// A webhook receiver on a loopback port: its URL, and every JSON body POSTed
/// to it.
pub async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let _ = tx.send(serde_json::from_str::<serde_json::Value>(&body).unwrap());
            async { http::StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}
