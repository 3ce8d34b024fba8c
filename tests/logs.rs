//! Structured logs as they land on disk: JSON lines with the request's trace and
//! span ids (checked against the spans the OTLP receiver decodes), one access-log
//! line per request, redaction, rotation under concurrent writers, and a full
//! queue that drops and counts instead of slowing requests.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use support::Receiver;
use tower::ServiceExt;
use tower_apm::{Apm, LogOutput, Rotation};
use tracing_subscriber::layer::SubscriberExt;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tower-apm-logs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of every file in `dir`, each parsed as JSON (panics on one that is not).
fn read_lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}: a split last line",
            f.display()
        );
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display())));
        }
    }
    out
}

fn apm_logging_to(receiver: &Receiver, path: &Path) -> Apm {
    Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()),
            ("OTEL_SERVICE_NAME", "logs-test".to_owned()),
            ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ])
        .logs(LogOutput::file(path))
        .redact_field("ssn")
        .build()
        .unwrap()
}

async fn handler() -> &'static str {
    tracing::info!(
        user_id = 7,
        password = "hunter2",
        ssn = "hunter2",
        ratio = 0.5,
        ok = true,
        client_secret = "hunter2",
        "api-key" = "hunter2",
        passphrase = "hunter2",
        otp = "hunter2",
        "loaded user"
    );
    let span = tracing::info_span!("load_profile", token = "hunter2", jwt = "hunter2");
    let _entered = span.enter();
    tracing::warn!(attempt = 2u64, "inside the child span");
    "ok"
}

#[tokio::test]
async fn log_lines_carry_the_ids_of_the_request_span_and_secrets_are_nowhere() {
    let receiver = Receiver::start().await;
    let dir = temp_dir("ids");
    let apm = apm_logging_to(&receiver, &dir.join("app.log"));
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(apm.tracing_layer())
            .with(apm.logging_layer()),
    );
    let app = Router::new().route("/users/{id}", get(handler)).layer(apm.layer());
    let res = app
        .oneshot(
            Request::get(
                "/users/7?password=hunter2&page=1&pass%77ord=hunter2&sort=asc;refresh_token=hunter2&api-key=hunter2",
            )
            .header("authorization", "Bearer hunter2")
            .header("cookie", "session=hunter2")
            .header("user-agent", "logs-test/1")
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32, "a generated id: {request_id}");
    res.into_body().collect().await.unwrap();
    apm.force_flush().await.unwrap();
    assert!(apm.flush_logs(Duration::from_secs(5)).await);

    let spans = receiver.wait_for(2).await;
    let server = spans.iter().find(|s| s.span.name == "GET /users/{id}").unwrap();
    let child = spans.iter().find(|s| s.span.name == "load_profile").unwrap();
    assert_eq!(
        child.str_attr("token").as_deref(),
        Some("[REDACTED]"),
        "span attributes are redacted too"
    );
    assert_eq!(child.str_attr("jwt").as_deref(), Some("[REDACTED]"));
    assert_eq!(
        server.str_attr("url.query").as_deref(),
        Some("password=REDACTED&page=1&pass%77ord=REDACTED&sort=asc;refresh_token=REDACTED&api-key=REDACTED")
    );

    let lines = read_lines(&dir);
    let loaded = lines.iter().find(|l| l["message"] == "loaded user").expect("the event");
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["target"], "logs");
    assert_eq!(loaded["service"], "logs-test");
    assert_eq!(loaded["user_id"], 7, "typed JSON values");
    assert_eq!(loaded["ratio"], 0.5);
    assert_eq!(loaded["ok"], true);
    assert_eq!(loaded["password"], "[REDACTED]");
    assert_eq!(loaded["ssn"], "[REDACTED]", "a user-named field");
    for name in ["client_secret", "api-key", "passphrase", "otp"] {
        assert_eq!(loaded[name], "[REDACTED]", "{name}");
    }
    assert_eq!(loaded["trace_id"], server.trace_id_hex().as_str());
    assert_eq!(loaded["span_id"], server.span_id_hex().as_str());
    let ts = loaded["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339: {ts}"
    );

    let inside = lines.iter().find(|l| l["message"] == "inside the child span").unwrap();
    assert_eq!(inside["level"], "WARN");
    assert_eq!(inside["trace_id"], server.trace_id_hex().as_str());
    assert_eq!(
        inside["span_id"],
        child.span_id_hex().as_str(),
        "the tracing span's own id"
    );

    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "tower_apm::access").collect();
    assert_eq!(access.len(), 1, "exactly one access-log line per request: {access:?}");
    let a = access[0];
    assert_eq!(a["method"], "GET");
    assert_eq!(a["route"], "/users/{id}");
    assert_eq!(a["path"], "/users/7");
    assert_eq!(
        a["query"],
        "password=REDACTED&page=1&pass%77ord=REDACTED&sort=asc;refresh_token=REDACTED&api-key=REDACTED"
    );
    assert_eq!(a["status"], 200);
    assert_eq!(a["response_bytes"], 2);
    assert!(a["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(a["user_agent"], "logs-test/1");
    assert_eq!(a["request_id"], request_id.as_str());
    assert_eq!(a["trace_id"], server.trace_id_hex().as_str());
    assert_eq!(a["span_id"], server.span_id_hex().as_str());

    for f in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains("hunter2"), "a secret reached the log: {text}");
    }
}

#[tokio::test]
async fn a_valid_client_request_id_is_kept_and_an_invalid_one_replaced() {
    let dir = temp_dir("request-id");
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(LogOutput::file(dir.join("app.log")))
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
    let id_of = |value: &'static str| {
        let app = app.clone();
        async move {
            let res = app
                .oneshot(
                    Request::get("/")
                        .header("x-request-id", value)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            res.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(id_of("req-123.abc").await, "req-123.abc");
    let replaced = id_of("has space").await;
    assert_ne!(replaced, "has space");
    assert_eq!(replaced.len(), 32);
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let ids: Vec<String> = read_lines(&dir)
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["req-123.abc".to_owned(), replaced]);
}

#[test]
fn rotation_under_concurrent_writers_splits_no_line_and_loses_none() {
    let dir = temp_dir("rotation");
    let limit = 32 * 1024;
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(
            LogOutput::file(dir.join("app.log"))
                .rotate(Rotation::Size(limit))
                .backups(200)
                .queue_capacity(100_000),
        )
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(apm.logging_layer()));
    let (threads, per_thread) = (8, 1_000);
    std::thread::scope(|s| {
        for t in 0..threads {
            let dispatch = dispatch.clone();
            s.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for i in 0..per_thread {
                        tracing::info!(thread = t, seq = i, padding = "x".repeat(64).as_str(), "line");
                    }
                });
            });
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(apm.flush_logs(Duration::from_secs(30))));

    let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(files.len() > 5, "it rotated several times: {}", files.len());
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= limit, "{} has {len} bytes", f.display());
    }
    let lines = read_lines(&dir);
    assert_eq!(lines.len(), threads * per_thread, "no line lost");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        assert!(seen.insert((l["thread"].as_u64().unwrap(), l["seq"].as_u64().unwrap())));
    }
    assert_eq!(apm.stats().log_lines_dropped_queue_full, 0);
}

/// A writer that blocks every write until released: slower than any producer.
struct Stalled {
    released: Arc<(Mutex<bool>, std::sync::Condvar)>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cvar) = &*self.released;
        let mut released = lock.lock().unwrap();
        while !*released {
            released = cvar.wait(released).unwrap();
        }
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_log_queue_drops_and_counts_while_requests_go_on() {
    let released = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .logs(
            LogOutput::writer(Stalled {
                released: Arc::clone(&released),
                out: Arc::clone(&out),
            })
            .queue_capacity(10),
        )
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
    // The writer is stuck on its first line; every request still completes.
    for _ in 0..100 {
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    let dropped = apm.stats().log_lines_dropped_queue_full;
    // The writer holds what it took before it stalled (at most a queue's worth,
    // none when it had not been scheduled yet), 10 more wait in the queue, and
    // the rest were dropped.
    assert!((80..=90).contains(&dropped), "{dropped}");
    let page = apm
        .metrics_router()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(
        page.contains(&format!(
            "tower_apm_log_lines_dropped_total{{reason=\"queue_full\"}} {dropped}"
        )),
        "{page}"
    );

    // Released, the writer catches up and says in the log itself what was lost.
    {
        let (lock, cvar) = &*released;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let access = lines.iter().filter(|l| l["target"] == "tower_apm::access").count() as u64;
    assert_eq!(access + dropped, 100);
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["target"] == "tower_apm")
        .expect("a warning about the dropped lines");
    assert_eq!(warning["dropped_total"], dropped);
}

#[tokio::test]
async fn the_log_queue_is_bounded_in_bytes_as_well_as_lines() {
    let released = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(
            LogOutput::writer(Stalled {
                released: Arc::clone(&released),
                out: Arc::clone(&out),
            })
            .queue_capacity(10_000)
            .queue_bytes(16 * 1024),
        )
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
    // Each access line carries a 2,000-byte user agent: room for 10,000 lines,
    // but not for 16 KiB of them.
    let agent = "a".repeat(2_000);
    for _ in 0..100 {
        let req = Request::get("/")
            .header("user-agent", &agent)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let dropped = apm.stats().log_lines_dropped_queue_full;
    // At most 8 lines wait in 16 KiB, and the writer holds at most as many.
    assert!(dropped >= 100 - 16, "{dropped}");
    {
        let (lock, cvar) = &*released;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let access = text.lines().filter(|l| l.contains("\"tower_apm::access\"")).count() as u64;
    assert_eq!(access + dropped, 100);
}

#[test]
fn an_unwritable_log_directory_is_an_error_at_build_naming_the_file() {
    let err = Apm::builder()
        .logs(LogOutput::file("/nonexistent-tower-apm/logs/app.log"))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent-tower-apm/logs/app.log"), "{msg}");
    assert!(msg.contains("writable"), "{msg}");
}

#[tokio::test]
async fn a_full_disk_loses_lines_counted_and_requests_go_on() {
    // `/dev/full` accepts the open and fails every write with ENOSPC.
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(LogOutput::file("/dev/full"))
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
    for _ in 0..20 {
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let stats = apm.stats();
    assert_eq!(stats.log_lines_written, 0);
    // 20 access lines, and the warning line about them, all lost and counted.
    assert!(stats.log_lines_dropped_write_failed >= 20, "{stats:?}");
}
