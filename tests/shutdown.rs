//! Graceful shutdown as an operator meets it: the demo as a real process, a real
//! SIGTERM, its JSON log lines read as they come, and its spans decoded by the
//! OTLP receiver. Every wait awaits an event (a log line, a response, a refused
//! connection, the exit), never a fixed sleep.

#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{JsonProcess, Receiver, demo_binary, get, get_with_connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The demo, running, with its stdout lines arriving as JSON values.
struct Demo {
    process: JsonProcess,
    base: String,
    addr: SocketAddr,
}

impl Demo {
    async fn start(env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(demo_binary());
        cmd.env("DEMO_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("OTEL_METRICS_EXPORTER", "prometheus");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = JsonProcess::spawn(cmd);
        let listening = process.wait_line(|l| l["message"] == "listening").await;
        let base = listening["url"].as_str().unwrap().to_owned();
        let addr = base.trim_start_matches("http://").parse().unwrap();
        Demo { process, base, addr }
    }

    /// Awaits the first line (from now on) that `pred` accepts.
    async fn wait_line(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.wait_line(pred).await
    }

    fn sigterm(&self) {
        self.process.sigterm();
    }

    /// Waits for the exit; returns its code and every line.
    async fn exit(self) -> (Option<i32>, Vec<Value>) {
        let (code, _stderr, lines) = self.process.exit().await;
        (code, lines)
    }
}

async fn post(url: String) -> u16 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let req = http::Request::post(url).body(Empty::new()).unwrap();
    client.request(req).await.unwrap().status().as_u16()
}

/// Awaits the listener refusing connections (polling the port: the only way to
/// observe it from outside).
async fn refused(addr: SocketAddr) {
    let wait = async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the listener closed");
}

/// The line that ends `phase`: it carries the phase's duration.
fn phase_line<'a>(lines: &'a [Value], phase: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["target"] == "tower_apm::shutdown" && l["phase"] == phase && l.get("duration_ms").is_some())
        .unwrap_or_else(|| panic!("no {phase} line in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_finishes_in_flight_work_and_exits_0_in_phases() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let mut demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("DEMO_PRE_STOP_MS", "1000"),
        ("DEMO_JOB_MS", "400"),
    ])
    .await;

    // A worker busy with a queue of jobs, and a slow request in flight.
    assert_eq!(post(format!("{}/jobs/20", demo.base)).await, 200);
    demo.wait_line(|l| l["message"] == "job started").await;
    let slow = tokio::spawn(get_with_connection(format!("{}/sleep/2500", demo.base)));
    demo.wait_line(|l| l["message"] == "sleeping").await;

    // An idle keep-alive connection, open before the signal.
    let mut idle = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nhost: demo\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ok\n") {
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed a keep-alive connection early");
        got.extend_from_slice(&buf[..n]);
    }

    demo.sigterm();
    demo.wait_line(|l| l["phase"] == "not_ready").await;
    // The pre-stop delay: not ready, still alive, still serving.
    assert_eq!(get(format!("{}/readyz", demo.base)).await.0, 503);
    assert_eq!(get(format!("{}/livez", demo.base)).await.0, 200);

    demo.wait_line(|l| l["phase"] == "stop_accepting").await;
    refused(demo.addr).await;
    // The idle keep-alive connection is closed by the server (EOF), not left open.
    let mut buf = [0u8; 64];
    let eof = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the idle connection was closed");
    assert_eq!(eof.unwrap(), 0);

    let (status, body, connection) = slow.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "slept 2500 ms\n"),
        "the in-flight request finished"
    );
    assert_eq!(connection.as_deref(), Some("close"), "answered while draining");

    let (code, lines) = demo.exit().await;
    assert_eq!(code, Some(0), "every phase in time");

    // The in-flight request's span was flushed before the exit.
    assert!(
        receiver.spans().iter().any(|s| s.span.name == "GET /sleep/{ms}"),
        "{:#?}",
        receiver.spans()
    );

    // Each phase is named, with its duration.
    let pre_stop = phase_line(&lines, "pre_stop");
    assert!(pre_stop["duration_ms"].as_f64().unwrap() >= 1000.0, "{pre_stop}");
    for phase in ["drain", "cleanup", "flush"] {
        assert!(phase_line(&lines, phase)["duration_ms"].is_number(), "{phase}");
    }
    let exit = lines.iter().find(|l| l["phase"] == "exit").expect("the exit line");
    assert_eq!(exit["exit_code"], 0);

    // The worker finished the job it held and took no new one.
    let started: Vec<u64> = lines
        .iter()
        .filter(|l| l["message"] == "job started")
        .map(|l| l["job"].as_u64().unwrap())
        .collect();
    let finished: Vec<u64> = lines
        .iter()
        .filter(|l| l["message"] == "job finished")
        .map(|l| l["job"].as_u64().unwrap())
        .collect();
    assert_eq!(started, finished, "every job started was finished");
    assert!(started.len() < 20, "jobs were left in the queue: {started:?}");
    let cleanup_at = lines.iter().position(|l| l["phase"] == "cleanup").unwrap();
    assert!(
        !lines[cleanup_at..].iter().any(|l| l["message"] == "job started"),
        "no job started during cleanup"
    );
    assert!(lines.iter().any(|l| l["message"] == "worker stopped"));
    assert!(lines.iter().any(|l| l["message"] == "goodbye"), "the cleanup hook ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_drain_deadline_exits_with_the_drain_code_on_time() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let mut demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("DEMO_DRAIN_MS", "500"),
    ])
    .await;
    // Cut off when the process exits: its result is not awaited.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let _stuck = tokio::spawn(client.get(format!("{}/sleep/60000", demo.base).parse().unwrap()));
    demo.wait_line(|l| l["message"] == "sleeping").await;
    let sent = Instant::now();
    demo.sigterm();
    let (code, lines) = demo.exit().await;
    let took = sent.elapsed();
    assert_eq!(code, Some(i32::from(tower_apm::EXIT_DRAIN_TIMEOUT)));
    assert!(took < Duration::from_millis(500) + Duration::from_secs(3), "{took:?}");
    let deadline = lines
        .iter()
        .find(|l| l["message"] == "drain deadline passed with requests still in flight")
        .expect("a line naming the phase");
    assert_eq!(deadline["phase"], "drain");
    assert_eq!(deadline["in_flight"], 1, "what was left");
    // The last word is the code the process really returned.
    let complete = lines
        .iter()
        .rfind(|l| l["message"] == "shutdown complete")
        .expect("a closing line");
    assert_eq!(
        complete["exit_code"],
        i64::from(tower_apm::EXIT_DRAIN_TIMEOUT),
        "{complete}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_cannot_hold_the_shutdown() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("DEMO_DRAIN_MS", "30000"),
    ])
    .await;
    // A request that finishes, so there is a span to flush.
    assert_eq!(get(format!("{}/users/7", demo.base)).await.0, 200);
    // A head that never ends, and a connection that never sends anything.
    let mut half = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
    let _silent = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
    // An idle keep-alive connection, after one answered request.
    let mut keep_alive = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
    keep_alive
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let mut buf = [0u8; 512];
        let n = keep_alive.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let sent = Instant::now();
    demo.sigterm();
    let (code, lines) = demo.exit().await;
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "drain deadline passed with requests still in flight"),
        "{lines:#?}"
    );
    let complete = lines
        .iter()
        .rfind(|l| l["message"] == "shutdown complete")
        .expect("a closing line");
    assert_eq!(complete["exit_code"], 0);
    // The finished requests' spans were flushed before the exit.
    let spans = receiver.spans();
    assert!(spans.iter().any(|s| s.span.name == "GET /users/{id}"), "{spans:#?}");
    drop(half);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_hangs_cannot_hold_the_exit_past_the_flush_deadline() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("DEMO_FLUSH_MS", "800"),
    ])
    .await;
    assert_eq!(get(format!("{}/users/1", demo.base)).await.0, 200);
    let sent = Instant::now();
    demo.sigterm();
    let (code, lines) = demo.exit().await;
    let took = sent.elapsed();
    assert_eq!(code, Some(i32::from(tower_apm::EXIT_FLUSH_TIMEOUT)), "{lines:#?}");
    assert!(took < Duration::from_millis(800) + Duration::from_secs(3), "{took:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_demo_exits_0_soon_after_sigterm() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let demo = Demo::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]).await;
    let sent = Instant::now();
    demo.sigterm();
    let (code, lines) = demo.exit().await;
    let took = sent.elapsed();
    assert_eq!(code, Some(0));
    let flush = phase_line(&lines, "flush")["duration_ms"].as_f64().unwrap();
    println!("SIGTERM to exit: {took:?}, of which flush {flush:.1} ms");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_its_code() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let mut demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("DEMO_DRAIN_MS", "60000"),
    ])
    .await;
    // Cut off when the process exits: its result is not awaited.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let _stuck = tokio::spawn(client.get(format!("{}/sleep/60000", demo.base).parse().unwrap()));
    demo.wait_line(|l| l["message"] == "sleeping").await;
    demo.sigterm();
    demo.wait_line(|l| l["phase"] == "stop_accepting").await;
    let sent = Instant::now();
    demo.sigterm();
    let (code, _) = demo.exit().await;
    assert_eq!(code, Some(i32::from(tower_apm::EXIT_SECOND_SIGNAL)));
    assert!(sent.elapsed() < Duration::from_secs(2), "{:?}", sent.elapsed());
}

/// Plain hyper (no axum): the helper's signal drives hyper-util's graceful
/// watcher, the in-flight request finishes, and the exit code is 0.
#[tokio::test]
async fn the_helper_drives_hyper_utils_graceful_shutdown() {
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::Layer;

    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .build()
        .unwrap();
    let shutdown = tower_apm::Shutdown::builder()
        .handle_signals(false)
        .telemetry(&apm)
        .build();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let entered_tx = entered_tx.clone();
        async move {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            // The request in flight when the shutdown starts.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                "done",
            ))))
        }
    });
    let svc = apm.layer().layer(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let signal = shutdown.signal();
            tokio::pin!(signal);
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let (stream, _) = conn.unwrap();
                        let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                        let conn = auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .into_owned();
                        tokio::spawn(graceful.watch(conn));
                    }
                    _ = &mut signal => break,
                }
            }
            drop(listener);
            graceful.shutdown().await;
        })
    };

    let request = tokio::spawn(get_with_connection(format!("http://{addr}/")));
    entered_rx.await.unwrap();
    shutdown.trigger();
    let (status, body, connection) = request.await.unwrap();
    assert_eq!(
        (status, body.as_str(), connection.as_deref()),
        (200, "done", Some("close"))
    );
    server.await.unwrap();
    assert_eq!(shutdown.finish(&apm).await, std::process::ExitCode::SUCCESS);
    assert_eq!(shutdown.phase(), tower_apm::Phase::Exited);
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo with no collector, as the README describes it: one warning line
/// while both signals fail (not one per signal), and at the exit one line for
/// the flush phase that says it failed (not a failure followed by "flushed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_is_one_warning_and_one_truthful_flush_line() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let mut demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "50"),
    ])
    .await;
    assert_eq!(get(format!("{}/users/1", demo.base)).await.0, 200);
    demo.wait_line(|l| l["level"] == "WARN").await;

    // Both signals have failed against the collector while the demo runs
    // (watched on its status API: the failures are counted, not logged).
    let both_failed = async {
        loop {
            let (_, body) = get(format!("{}/apm/api/overview", demo.base)).await;
            let o: Value = serde_json::from_str(&body).unwrap();
            let t = &o["telemetry"];
            if t["export_failures"].as_u64() >= Some(1) && t["metric_export_failures"].as_u64() >= Some(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), both_failed)
        .await
        .expect("span export and metric push both failed");

    demo.sigterm();
    let (code, lines) = demo.exit().await;
    assert_eq!(code, Some(0), "{lines:#?}");

    let warnings: Vec<&Value> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["target"] == "tower_apm")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for one missing collector: {warnings:#?}"
    );
    let warning = warnings[0]["message"].as_str().unwrap();
    assert!(
        warning.starts_with("export to the collector failed")
            && warning.contains("spans are dropped")
            && warning.contains("metric pushes are retried"),
        "{warning}"
    );
    assert_eq!(warnings[0]["endpoint"], endpoint.as_str());

    let flush: Vec<&Value> = lines.iter().filter(|l| l["phase"] == "flush").collect();
    assert_eq!(flush.len(), 1, "one line ends the flush phase: {flush:#?}");
    assert_eq!(flush[0]["level"], "WARN", "{flush:#?}");
    assert!(
        flush[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("telemetry flush failed"),
        "{flush:#?}"
    );
    assert!(flush[0]["duration_ms"].as_f64().is_some(), "{flush:#?}");
}

/// `OTEL_METRICS_EXPORTER=none` turns off the OTLP push only: the demo (with
/// its alerts and SLO) starts, `/metrics` counts requests, and the drain
/// still knows how many requests are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_with_metrics_exporter_none_and_serves_its_metrics() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let demo = Demo::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRICS_EXPORTER", "none"),
    ])
    .await;
    assert_eq!(get(format!("{}/users/1", demo.base)).await.0, 200);
    let (status, metrics) = get(format!("{}/metrics", demo.base)).await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_server_request_duration_seconds_count{") && l.contains("/users/{id}")),
        "{metrics}"
    );
    demo.sigterm();
    let (code, lines) = demo.exit().await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(receiver.metric_exports().is_empty(), "nothing pushed");
}
