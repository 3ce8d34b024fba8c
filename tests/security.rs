//! Security monitoring over real HTTP: events a handler returns and events the
//! layer sees for itself land in the log (target `tower_apm::security`) and the
//! audit log; the brute-force, traffic-spike and scanning detectors raise one
//! event and one alert (to a real webhook receiver) per crossing; forwarding
//! headers count only from a trusted proxy. (Windows under a controlled clock
//! are tested in `src/security`.)

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::Value;
use tower_apm::security::{AuditLog, BruteForce, Scanning, Security, SecurityEvent, TrafficSpike, verify_audit_log};
use tower_apm::{Apm, LogOutput, Notifier};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tower-apm-security-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The test app: `POST /login?user=U&ok=0|1` reports the login's outcome,
/// `/admin` is 403, `/upload` takes at most 16 bytes, `/ok` is 200; served with
/// the peer's address, as `into_make_service_with_connect_info` gives it.
async fn serve(apm: &Apm) -> String {
    let app = Router::new()
        .route(
            "/login",
            post(|q: axum::extract::Query<HashMap<String, String>>| async move {
                let user = &q["user"];
                if q["ok"] == "1" {
                    (SecurityEvent::login_succeeded(user), StatusCode::NO_CONTENT)
                } else {
                    (SecurityEvent::login_failed(user), StatusCode::UNAUTHORIZED)
                }
            }),
        )
        .route("/admin", get(|| async { StatusCode::FORBIDDEN }))
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
        .layer(DefaultBodyLimit::max(16))
        .route("/ok", get(|| async { "ok" }))
        // Merged before the layer: merging a router after it would bring back
        // an unlayered default fallback, and 404s would go unseen.
        .merge(apm.alerts_router())
        .layer(apm.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap()
    });
    base
}

/// One request over a real connection, with extra headers; the status.
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &'static str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = client
        .request(
            req.body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    status
}

/// The security lines of the log, after everything queued was written.
async fn security_lines(apm: &Apm, log: &Path) -> Vec<Value> {
    assert!(apm.flush_logs(Duration::from_secs(10)).await);
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::security")
        .collect()
}

fn events<'a>(lines: &'a [Value], prefix: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["event"].as_str().unwrap().starts_with(prefix))
        .collect()
}

fn apm(log: &Path, security: Security, hook: Option<&str>, trusted: &[&str]) -> Apm {
    let mut b = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .service_name("shop")
        .logs(LogOutput::file(log))
        .access_log(true)
        .trusted_proxies(trusted.iter().copied())
        .security(security);
    if let Some(h) = hook {
        b = b.notify(Notifier::webhook(h).retries(0));
    }
    b.build().unwrap()
}

/// Waits until `f(stats)` holds, at most 10 s.
async fn until(apm: &Apm, f: impl Fn(&tower_apm::TelemetryStats) -> bool) -> tower_apm::TelemetryStats {
    let start = Instant::now();
    loop {
        let s = apm.stats();
        if f(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "timed out: {s:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn ten_failed_logins_from_one_address_raise_one_brute_force_event_and_one_alert() {
    let dir = temp_dir("brute");
    let log = dir.join("app.log");
    let (hook, mut alerts) = support::webhook().await;
    let apm = apm(&log, Security::new(), Some(&hook), &[]);
    let base = serve(&apm).await;
    for _ in 0..12 {
        assert_eq!(
            send("POST", &format!("{base}/login?user=alice&ok=0"), &[], "").await,
            401
        );
    }
    assert_eq!(
        send("POST", &format!("{base}/login?user=alice&ok=1"), &[], "").await,
        204
    );

    let lines = security_lines(&apm, &log).await;
    let failed = events(&lines, "authn_login_fail:alice");
    assert_eq!(failed.len(), 12);
    let f = failed[0];
    assert_eq!(f["source_ip"], "127.0.0.1");
    assert_eq!(f["user"], "alice");
    assert_eq!(f["request_method"], "POST");
    assert_eq!(f["request_uri"], "/login?user=alice&ok=0");
    assert_eq!(f["status"], 401);
    assert_eq!(f["appid"], "shop");
    assert_eq!(f["level"], "WARN");
    assert!(f["datetime"].is_string() && f["description"].is_string());
    // The handler reported the 401 itself: the layer adds no event of its own.
    assert!(lines.iter().all(|v| v["event"] != "authn_login_fail"));
    assert_eq!(events(&lines, "authn_login_success:alice").len(), 1);
    let brute = events(&lines, "malicious_brute_force:");
    assert_eq!(brute.len(), 1, "{brute:?}");
    assert_eq!(brute[0]["event"], "malicious_brute_force:127.0.0.1,alice");
    assert_eq!(brute[0]["level"], "ERROR");

    let stats = until(&apm, |s| s.alert_notifications_sent + s.alert_notifications_failed >= 1).await;
    assert_eq!((stats.security_detections, stats.alert_notifications_sent), (1, 1));
    let body = alerts.recv().await.unwrap();
    assert_eq!(body["status"], "firing");
    let alert = &body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "BruteForce");
    assert_eq!(alert["labels"]["client_address"], "127.0.0.1");
    assert_eq!(alert["labels"]["user"], "alice");
    assert_eq!(alert["annotations"]["event"], "malicious_brute_force:127.0.0.1,alice");
    assert!(alerts.try_recv().is_err(), "one alert only");

    // The status endpoint lists the detection.
    let status: Value = serde_json::from_str(&support::get(format!("{base}/alerts")).await.1).unwrap();
    assert_eq!(status["security"]["detections"], 1);
    assert_eq!(status["security"]["recent"][0]["alert"], "BruteForce");
    assert_eq!(status["security"]["recent"][0]["client_address"], "127.0.0.1");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_same_failures_from_distinct_addresses_behind_a_trusted_proxy_raise_nothing() {
    let dir = temp_dir("spread");
    let log = dir.join("app.log");
    let apm = apm(&log, Security::new(), None, &["127.0.0.1"]);
    let base = serve(&apm).await;
    for i in 0..10 {
        let xff = format!("6.6.6.6, 198.51.100.{i}");
        let url = format!("{base}/login?user=user{i}&ok=0");
        assert_eq!(send("POST", &url, &[("x-forwarded-for", &xff)], "").await, 401);
    }
    let lines = security_lines(&apm, &log).await;
    let failed = events(&lines, "authn_login_fail:");
    assert_eq!(failed.len(), 10);
    for (i, f) in failed.iter().enumerate() {
        // The proxy's hop, not what the client put at the left.
        assert_eq!(f["source_ip"], format!("198.51.100.{i}"));
        assert!(f.get("forwarded_untrusted").is_none());
    }
    assert!(events(&lines, "malicious_").is_empty());
    assert_eq!(apm.stats().security_detections, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_recorded_never_believed() {
    let dir = temp_dir("spoof");
    let log = dir.join("app.log");
    let apm = apm(&log, Security::new(), None, &["10.0.0.0/8"]);
    let base = serve(&apm).await;
    // Ten failures, each claiming another address: still one address.
    for i in 0..10 {
        let xff = format!("203.0.113.{i}");
        let url = format!("{base}/login?user=bob&ok=0");
        assert_eq!(send("POST", &url, &[("x-forwarded-for", &xff)], "").await, 401);
    }
    let lines = security_lines(&apm, &log).await;
    let failed = events(&lines, "authn_login_fail:bob");
    assert_eq!(failed.len(), 10);
    assert_eq!(failed[3]["source_ip"], "127.0.0.1");
    assert_eq!(failed[3]["forwarded_untrusted"], "203.0.113.3");
    assert_eq!(events(&lines, "malicious_brute_force:127.0.0.1,bob").len(), 1);
    let access: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::access")
        .collect();
    assert_eq!(access.len(), 10);
    assert!(access.iter().all(|a| a["client_address"] == "127.0.0.1"), "{access:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_burst_from_one_client_raises_a_traffic_spike_and_steady_traffic_does_not() {
    let dir = temp_dir("spike");
    let log = dir.join("app.log");
    let spike = TrafficSpike::default()
        .window(Duration::from_secs(600))
        .client_floor(40)
        .service_floor(1_000_000)
        .factor(5.0);
    let (hook, mut alerts) = support::webhook().await;
    let apm = apm(&log, Security::new().traffic_spike(spike), Some(&hook), &["127.0.0.1"]);
    let base = serve(&apm).await;
    for _ in 0..30 {
        send("GET", &format!("{base}/ok"), &[("x-forwarded-for", "192.0.2.1")], "").await;
    }
    assert!(events(&security_lines(&apm, &log).await, "malicious_traffic_spike").is_empty());
    // A bounded burst: 60 requests, 8 at a time.
    for _ in 0..(60 / 8) + 1 {
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let url = format!("{base}/ok");
            burst.spawn(async move { send("GET", &url, &[("x-forwarded-for", "192.0.2.2")], "").await });
        }
        burst.join_all().await;
    }
    let lines = security_lines(&apm, &log).await;
    let spikes = events(&lines, "malicious_traffic_spike:");
    assert_eq!(spikes.len(), 1, "{spikes:?}");
    // Crossed at the floor (a race between two requests may report one more).
    let name = spikes[0]["event"].as_str().unwrap();
    let count: u32 = name
        .strip_prefix("malicious_traffic_spike:192.0.2.2,")
        .unwrap()
        .parse()
        .unwrap();
    assert!((40..=41).contains(&count), "{name}");
    assert_eq!(spikes[0]["source_ip"], "192.0.2.2");
    let body = alerts.recv().await.unwrap();
    assert_eq!(body["alerts"][0]["labels"]["alertname"], "TrafficSpike");
    assert_eq!(body["alerts"][0]["labels"]["client_address"], "192.0.2.2");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn not_found_and_denied_responses_are_scanning_and_the_layer_reports_what_it_sees() {
    let dir = temp_dir("scan");
    let log = dir.join("app.log");
    let scanning = Scanning::default().not_found(20).denied(5);
    let apm = apm(
        &log,
        Security::new().scanning(scanning).brute_force(BruteForce::off()),
        None,
        &[],
    );
    let base = serve(&apm).await;
    for i in 0..25 {
        assert_eq!(send("GET", &format!("{base}/wp-admin/{i}.php"), &[], "").await, 404);
    }
    for _ in 0..5 {
        assert_eq!(send("GET", &format!("{base}/admin?token=secret"), &[], "").await, 403);
    }
    assert_eq!(
        send("POST", &format!("{base}/upload"), &[], "far more than sixteen bytes").await,
        413
    );
    let lines = security_lines(&apm, &log).await;
    let scans: Vec<_> = events(&lines, "malicious_excess_")
        .iter()
        .map(|v| v["event"].clone())
        .collect();
    assert_eq!(
        scans,
        ["malicious_excess_404:127.0.0.1", "malicious_excess_denied:127.0.0.1"]
    );
    // A 404 is not an event on its own; a 403 and a 413 the handler said
    // nothing about are, with sensitive query values redacted.
    assert!(events(&lines, "malicious_").len() == 2);
    let denied = events(&lines, "authz_fail");
    assert_eq!(denied.len(), 5);
    assert_eq!(denied[0]["request_uri"], "/admin?token=REDACTED");
    assert_eq!(denied[0]["level"], "ERROR");
    let rejected = events(&lines, "input_validation_fail");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["status"], 413);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_security_event_is_in_the_audit_log_and_its_chain_verifies() {
    let dir = temp_dir("audit");
    let log = dir.join("app.log");
    let audit = dir.join("security.audit");
    let key = b"test key, from a secret store in real life".to_vec();
    let security = Security::new()
        .brute_force(BruteForce::default().per_address(3))
        .audit_log(AuditLog::new(&audit).key(key.clone()));
    let apm = apm(&log, security, None, &[]);
    let base = serve(&apm).await;
    for _ in 0..4 {
        send("POST", &format!("{base}/login?user=carol&ok=0"), &[], "").await;
    }
    apm.security_event(SecurityEvent::new(
        "sys_monitor_enabled:ops,audit",
        tower_apm::security::Level::Warn,
    ));
    let lines = security_lines(&apm, &log).await;
    // 4 failures, 1 detection, 1 reported from outside a request.
    assert_eq!(lines.len(), 6);
    let verified = verify_audit_log(&[&audit], Some(&key)).unwrap();
    assert_eq!((verified.records, verified.first_seq, verified.last_seq), (6, 0, 5));
    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = records.iter().map(|r| r["event"].as_str().unwrap()).collect();
    let logged: Vec<&str> = lines.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(names, logged);
    assert_eq!(records[3]["event"], "malicious_brute_force:127.0.0.1,carol");
    assert_eq!(records[0]["level"], "WARN");
    assert_eq!(records[3]["level"], "CRITICAL");
    // Someone edits the detection away: the chain says where.
    std::fs::write(
        &audit,
        text.replacen("malicious_brute_force", "harmless_event_xxxxxx", 1),
    )
    .unwrap();
    let broken = verify_audit_log(&[&audit], Some(&key)).unwrap_err();
    assert_eq!((broken.line, broken.seq), (4, Some(3)));
    let _ = std::fs::remove_dir_all(dir);
}
