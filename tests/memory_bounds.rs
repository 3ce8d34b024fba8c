//! What the crate keeps is bounded in bytes, whatever clients send: the demo as
//! a real process, its stdout a pipe nobody reads (the log writer stalls), its
//! collector a socket that accepts and never answers (the export thread
//! stalls), and 20,000 requests each carrying 100 KiB of headers (a user agent,
//! a forwarding claim, a long query). Resident memory grows by less than 64 MiB,
//! and what could not be kept is dropped and counted.

#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const REQUESTS: usize = 20_000;
const CONNECTIONS: usize = 4;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The value of the Prometheus sample `name{labels}` (0 when absent).
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Headers {
    user_agent: String,
    forwarded: String,
    query: String,
}

/// Request `i`: one in ten a failed login (a security event with the request's
/// facts, and the brute-force detector), the rest `GET /users/{i}` with a long
/// query; each with the long user agent and forwarding claim. The status.
async fn send(client: &Client<HttpConnector, Empty<bytes::Bytes>>, base: &str, h: &Headers, i: usize) -> u16 {
    let req = if i % 10 == 0 {
        http::Request::post(format!("{base}/login/{}", "u".repeat(200)))
    } else {
        http::Request::get(format!("{base}/users/{i}?{}", h.query))
    };
    let req = req
        .header("user-agent", format!("{}{i}", h.user_agent))
        .header("forwarded", h.forwarded.as_str())
        .header("accept", "*/*")
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_100_kib_headers_with_a_stalled_log_reader_and_a_silent_collector_stays_bounded() {
    // Accepts connections (the kernel's backlog does) and never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut child = Command::new(support::demo_binary())
        .env("DEMO_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read up to the line that gives the address, then never again: the pipe
    // fills and the log writer blocks on it.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let base = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the demo exited before listening"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" {
            break v["url"].as_str().unwrap().to_owned();
        }
    };

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let headers = Arc::new(Headers {
        user_agent: format!("Mozilla/5.0 {}", "a".repeat(80 * 1024)),
        forwarded: format!("for={}", "6".repeat(10 * 1024)),
        query: format!("q={}", "b".repeat(10 * 1024)),
    });

    // A warm-up, so allocator pools, thread stacks and connection buffers
    // are counted in the starting figure.
    for i in 0..200 {
        assert_eq!(
            send(&client, &base, &headers, i).await,
            if i % 10 == 0 { 401 } else { 200 }
        );
    }
    let start = rss_kib(pid);

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (client, next, base, headers) = (client.clone(), Arc::clone(&next), base.clone(), Arc::clone(&headers));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    return;
                }
                let status = send(&client, &base, &headers, i).await;
                assert_eq!(status, if i % 10 == 0 { 401 } else { 200 });
            }
        });
    }
    let flood = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    flood.await.expect("20,000 requests within 10 minutes");
    let end = rss_kib(pid);

    let metrics = support::get(format!("{base}/metrics")).await.1;
    let _ = child.kill();
    let _ = child.wait();
    drop(silent);

    let grown_mib = (end.saturating_sub(start)) as f64 / 1024.0;
    println!(
        "RSS {:.1} MiB -> {:.1} MiB (+{grown_mib:.1} MiB) over {REQUESTS} requests",
        start as f64 / 1024.0,
        end as f64 / 1024.0
    );
    assert!(grown_mib < 64.0, "resident memory grew by {grown_mib:.1} MiB");

    let spans_dropped = sample(&metrics, "tower_apm_spans_dropped_total{reason=\"queue_full\"}");
    let lines_dropped = sample(&metrics, "tower_apm_log_lines_dropped_total{reason=\"queue_full\"}");
    println!("spans dropped at a full queue: {spans_dropped}, log lines dropped: {lines_dropped}");
    assert!(spans_dropped > 0.0, "{metrics}");
    assert!(lines_dropped > 0.0, "{metrics}");
}
