//! The `reqwest` middleware (feature `reqwest`) as users meet it: two real
//! processes of `examples/reqwest_chain.rs` calling each other make one trace,
//! received by the OTLP receiver; the CLIENT span is the same as the client
//! layer's; failures carry `error.type`; and the calls are counted in
//! `http.client.request.duration` over OTLP (Prometheus: `tests/client_metrics.rs`).
//! Every wait awaits an event (a line, a response, an export, an exit), bounded
//! by a timeout.

#![cfg(feature = "reqwest")]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use support::{Received, Receiver, Transport, apm_to, find, serve_ok_fail};
use tower::{ServiceBuilder, ServiceExt};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(30);

/// The example's binary, built on demand (with its feature) when missing.
fn chain_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples/reqwest_chain");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--features", "reqwest", "--example", "reqwest_chain"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cargo build --example reqwest_chain failed");
    }
    bin
}

/// One running `reqwest_chain` process and its base URL.
struct Chain {
    child: Child,
    base: String,
}

impl Chain {
    /// Starts it exporting to `receiver` and waits for its `listening` line.
    async fn start(receiver: &Receiver, service: &str, downstream: Option<&str>) -> Chain {
        let mut cmd = Command::new(chain_binary());
        cmd.env("CHAIN_ADDR", "127.0.0.1:0")
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_METRICS_EXPORTER", "otlp")
            .env_remove("CHAIN_DOWNSTREAM")
            .env_remove("OTEL_PROPAGATORS")
            .env_remove("OTEL_TRACES_SAMPLER")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(d) = downstream {
            cmd.env("CHAIN_DOWNSTREAM", d);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let first = lines.next().unwrap_or_default();
            let _ = tx.send(first);
            lines.for_each(drop); // keep the pipe drained
        });
        let line = tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("{service}: no listening line within {WAIT:?}"))
            .unwrap();
        let base = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("{service}: first line {line:?}"))
            .to_owned();
        Chain { child, base }
    }

    /// SIGTERM, then the exit code once it has flushed.
    async fn stop(mut self) -> Option<i32> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let wait = tokio::task::spawn_blocking(move || self.child.wait().unwrap());
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("the chain process exits after SIGTERM")
            .unwrap()
            .code()
    }
}

fn service(s: &Received) -> String {
    s.resource_attr("service.name").unwrap_or_default()
}

fn metric_points<'a>(
    exports: &'a [(ExportMetricsServiceRequest, Transport)],
    service: &str,
    name: &str,
) -> Vec<&'a opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint> {
    let mut out = Vec::new();
    for (req, _) in exports {
        for rm in &req.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default();
            if !matches!(find(attrs, "service.name"), Some(Value::StringValue(s)) if s == service) {
                continue;
            }
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    if let Some(Data::Histogram(h)) = &m.data {
                        out.extend(h.data_points.iter());
                    }
                }
            }
        }
    }
    out
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_calling_through_reqwest_make_one_trace_with_the_client_span_between() {
    let receiver = Receiver::start().await;
    let b = Chain::start(&receiver, "chain-b", None).await;
    let a = Chain::start(&receiver, "chain-a", Some(&b.base)).await;
    let b_base = b.base.clone();
    let b_port: i64 = b_base.rsplit(':').next().unwrap().parse().unwrap();

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let req = Request::get(format!("{}/chain", a.base))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("baggage", "tenant=acme")
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(WAIT, http.request(req)).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"chain-a -> chain-b");

    // SIGTERM flushes both: spans and metrics reach the receiver before exit.
    assert_eq!(a.stop().await, Some(0));
    assert_eq!(b.stop().await, Some(0));
    let spans = receiver.wait_until(WAIT, |s| s.len() >= 3).await;
    let one = |svc: &str, kind: SpanKind| {
        let found: Vec<&Received> = spans
            .iter()
            .filter(|s| service(s) == svc && s.span.kind == kind as i32)
            .collect();
        assert_eq!(found.len(), 1, "one {kind:?} span from {svc}: {spans:#?}");
        found[0]
    };
    let a_server = one("chain-a", SpanKind::Server);
    let a_client = one("chain-a", SpanKind::Client);
    let b_server = one("chain-b", SpanKind::Server);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    for s in [a_server, a_client, b_server] {
        assert_eq!(s.trace_id_hex(), TRACE, "one trace across both processes");
    }
    assert_eq!(a_server.parent_id_hex(), PARENT);
    assert_eq!(
        a_client.parent_id_hex(),
        a_server.span_id_hex(),
        "client under A's server span"
    );
    assert_eq!(
        b_server.parent_id_hex(),
        a_client.span_id_hex(),
        "B's server span under the client span"
    );
    assert!(a_client.span.start_time_unix_nano >= a_server.span.start_time_unix_nano);
    assert!(a_client.span.end_time_unix_nano <= a_server.span.end_time_unix_nano);

    assert_eq!(a_client.span.name, "GET");
    assert_eq!(a_client.str_attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(a_client.str_attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a_client.int_attr("server.port"), Some(b_port));
    assert_eq!(a_client.str_attr("url.full"), Some(format!("{b_base}/chain")));
    assert_eq!(a_client.int_attr("http.response.status_code"), Some(200));
    assert_eq!(a_client.str_attr("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(a_client.str_attr("error.type"), None);

    // http.client.request.duration, pushed over OTLP by A at shutdown.
    let exports = receiver.wait_for_metric_exports(2, WAIT).await;
    let points = metric_points(&exports, "chain-a", "http.client.request.duration");
    let point = points
        .last()
        .unwrap_or_else(|| panic!("no client metric from chain-a: {exports:#?}"));
    assert_eq!(point.count, 1);
    assert_eq!(point.explicit_bounds.len(), 14);
    assert_eq!(point.explicit_bounds[0], 0.005);
    let attr = |k: &str| find(&point.attributes, k).cloned();
    assert_eq!(attr("http.request.method"), Some(Value::StringValue("GET".into())));
    assert_eq!(attr("server.address"), Some(Value::StringValue("127.0.0.1".into())));
    assert_eq!(attr("server.port"), Some(Value::IntValue(b_port)));
    assert_eq!(attr("http.response.status_code"), Some(Value::IntValue(200)));
    assert_eq!(attr("url.scheme"), Some(Value::StringValue("http".into())));
    assert_eq!(attr("network.protocol.version"), Some(Value::StringValue("1.1".into())));
    assert!(
        metric_points(&exports, "chain-b", "http.client.request.duration").is_empty(),
        "B made no call"
    );
}

fn reqwest_client(apm: &tower_apm::Apm, timeout: Option<Duration>) -> reqwest_middleware::ClientWithMiddleware {
    let mut builder = reqwest::Client::builder();
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    reqwest_middleware::ClientBuilder::new(builder.build().unwrap())
        .with(apm.reqwest_middleware())
        .build()
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn attr_keys(s: &Received) -> BTreeSet<String> {
    s.span.attributes.iter().map(|kv| kv.key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_and_client_layer_make_the_same_span_and_failures_carry_error_type() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_METRICS_EXPORTER", "none")]);
    let server = apm_to(&receiver, Transport::Grpc, &[("OTEL_SERVICE_NAME", "server")]);
    let base = serve_ok_fail(server.layer(), Router::new()).await;
    let client = reqwest_client(&apm, None);

    // The same call through both clients.
    let res = client.get(format!("{base}/ok?token=s3cret&x=1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let layered = ServiceBuilder::new()
        .layer(apm.client_layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>());
    let req = Request::get(format!("{base}/ok?token=s3cret&x=1"))
        .body(Empty::new())
        .unwrap();
    assert_eq!(layered.oneshot(req).await.unwrap().status(), 200);
    // A 5xx and a refused connection.
    assert_eq!(client.get(format!("{base}/fail")).send().await.unwrap().status(), 500);
    let refused = format!("http://127.0.0.1:{}/nowhere", closed_port().await);
    assert!(client.get(&refused).send().await.is_err());

    apm.force_flush().await.unwrap();
    let spans = receiver
        .wait_until(WAIT, |s| s.iter().filter(|s| service(s) == "test-svc").count() >= 4)
        .await;
    let clients: Vec<&Received> = spans.iter().filter(|s| service(s) == "test-svc").collect();
    assert!(clients.iter().all(|s| s.span.kind == SpanKind::Client as i32));
    let url = |s: &&Received| s.str_attr("url.full").unwrap_or_default();
    let ok: Vec<&Received> = clients.iter().copied().filter(|s| url(s).contains("/ok")).collect();
    assert_eq!(ok.len(), 2, "{clients:#?}");
    assert_eq!(
        attr_keys(ok[0]),
        attr_keys(ok[1]),
        "both clients record the same attributes"
    );
    for s in &ok {
        assert_eq!(url(s), format!("{base}/ok?token=REDACTED&x=1"));
        assert_eq!(s.span.name, "GET");
        assert_eq!(s.int_attr("http.response.status_code"), Some(200));
        assert_eq!(s.str_attr("network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(s.span.status.as_ref().map_or(0, |st| st.code), StatusCode::Unset as i32);
        // A call outside any request starts its own trace.
        assert!(s.span.parent_span_id.is_empty(), "{s:#?}");
    }
    let fail = clients.iter().find(|s| url(s).ends_with("/fail")).unwrap();
    assert_eq!(fail.int_attr("http.response.status_code"), Some(500));
    assert_eq!(fail.str_attr("error.type").as_deref(), Some("500"));
    assert_eq!(fail.span.status.as_ref().unwrap().code, StatusCode::Error as i32);
    let refused = clients.iter().find(|s| url(s) == refused).unwrap();
    assert_eq!(refused.str_attr("error.type").as_deref(), Some("_OTHER"));
    assert_eq!(refused.int_attr("http.response.status_code"), None);
    assert_eq!(refused.span.status.as_ref().unwrap().code, StatusCode::Error as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_is_a_timeout_and_a_dropped_call_is_cancelled() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_METRICS_EXPORTER", "none")]);
    // A server that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());

    // The timeout is the behaviour under test, not a synchronisation.
    let timing_out = reqwest_client(&apm, Some(Duration::from_millis(200)));
    let err = timing_out.get(format!("{silent_url}t")).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let (_held, _) = silent.accept().await.unwrap();

    // Dropped once the server has the connection: the caller gave up.
    let client = reqwest_client(&apm, None);
    tokio::select! {
        r = client.get(format!("{silent_url}c")).send() => panic!("the silent server answered: {r:?}"),
        accepted = silent.accept() => drop(accepted.unwrap()),
    }

    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(2).await;
    let by_path = |p: &str| {
        spans
            .iter()
            .find(|s| s.str_attr("url.full").as_deref() == Some(format!("{silent_url}{p}").as_str()))
            .unwrap_or_else(|| panic!("no span for {p}: {spans:#?}"))
    };
    assert_eq!(by_path("t").str_attr("error.type").as_deref(), Some("timeout"));
    assert_eq!(by_path("c").str_attr("error.type").as_deref(), Some("cancelled"));
}
