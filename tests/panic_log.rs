//! A panic whose message holds what a client sent, in a real process (the demo,
//! with `Apm::init_logging`): one JSON log line with the request's trace, not
//! raw text on stderr; the 500 carries the `x-request-id` of its access-log line.

#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use support::{Receiver, demo_binary};

/// A message that would forge a log line if written raw: a newline, then a
/// JSON line of the client's choosing.
const REASON: &str = "order 7\n{\"level\":\"INFO\",\"target\":\"tower_apm::access\",\"message\":\"forged\"}";

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_one_escaped_json_line_with_its_trace_and_its_500_has_the_request_id() {
    let receiver = Receiver::start().await;
    let mut child = Command::new(demo_binary())
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let out_reader = std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"message\":\"listening\"") {
                if let Some(tx) = addr_tx.take() {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["url"].as_str().unwrap().to_owned());
                }
            }
            all.push(line);
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let base = tokio::time::timeout(Duration::from_secs(30), addr_rx)
        .await
        .expect("the demo listens within 30 s")
        .unwrap();

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let url = format!("{base}/panic/{}", percent_encode(REASON));
    let res = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 500);
    let request_id = res
        .headers()
        .get("x-request-id")
        .expect("the panic's 500 has an x-request-id")
        .to_str()
        .unwrap()
        .to_owned();
    let _ = res.into_body().collect().await.unwrap();
    // The demo keeps serving.
    assert_eq!(support::get(format!("{base}/")).await.0, 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("the demo exits within 30 s of SIGTERM")
    .unwrap()
    .unwrap();
    assert_eq!(exit.code(), Some(0));
    let lines = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();

    // Nothing of the message reached stderr, raw or otherwise.
    assert!(
        !stderr.contains("forged") && !stderr.contains("panicked"),
        "stderr: {stderr}"
    );
    // Every stdout line is JSON, and none is the forged one.
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a raw line on stdout ({e}): {l}")))
        .collect();
    assert!(
        !parsed.iter().any(|l| l["message"] == "forged"),
        "a forged line: {lines:#?}"
    );

    let panics: Vec<&Value> = parsed.iter().filter(|l| l["target"] == "tower_apm::panic").collect();
    assert_eq!(panics.len(), 1, "{lines:#?}");
    let panic = panics[0];
    assert_eq!(panic["level"], "ERROR");
    assert_eq!(panic["message"], "panic");
    assert_eq!(panic["exception.type"], "panic");
    assert_eq!(panic["exception.message"], format!("cannot handle {REASON}"));
    assert!(
        panic["code.file.path"].as_str().unwrap().ends_with("demo.rs"),
        "{panic}"
    );
    assert!(panic["code.line.number"].as_u64().unwrap() > 0, "{panic}");
    assert!(panic["thread.name"].is_string(), "{panic}");
    assert_eq!(panic["service"], "tower-apm-demo");

    // The request's access-log line: the same trace and span, the same request id.
    let access: Vec<&Value> = parsed
        .iter()
        .filter(|l| l["target"] == "tower_apm::access" && l["route"] == "/panic/{reason}")
        .collect();
    assert_eq!(access.len(), 1, "{lines:#?}");
    let access = access[0];
    assert_eq!(access["status"], 500);
    assert_eq!(access["error_type"], "panic");
    assert!(access["trace_id"].is_string(), "{access}");
    assert_eq!(panic["trace_id"], access["trace_id"]);
    assert_eq!(panic["span_id"], access["span_id"]);
    assert_eq!(access["request_id"], request_id.as_str());
}
