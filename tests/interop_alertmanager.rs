//! Alerts through a real Alertmanager (Debian's `prometheus-alertmanager`, which
//! `.ci/interop-setup` installs and names in `TOWER_APM_ALERTMANAGER`): real 5xx
//! traffic through the layer fires an error-rate alert, which reaches
//! Alertmanager's API and, routed by Alertmanager, a webhook receiver; healthy
//! traffic resolves it, and Alertmanager sends the resolution on, to the webhook
//! and by email through a real SMTP server (`aiosmtpd`). The same alerts also go
//! straight to the webhook receiver through `Notifier::webhook`.

#![cfg(feature = "_interop")]

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tower_apm::{Alert, AlertState, Apm, LogOutput, Notifier};

struct Alertmanager {
    child: Child,
    url: String,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Alertmanager routing every alert to the webhook `hook` and by email
/// through the SMTP server on `smtp_port`, grouped by name, sent at once and
/// re-grouped every second; waits for `/-/ready`.
async fn start_alertmanager(dir: &std::path::Path, hook: &str, smtp_port: u16) -> Alertmanager {
    let bin = std::env::var("TOWER_APM_ALERTMANAGER")
        .expect("TOWER_APM_ALERTMANAGER: run .ci/interop-setup and source target/interop/env");
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  smtp_smarthost: '127.0.0.1:{smtp_port}'\n  smtp_from: 'alertmanager@example.com'\n  \
             smtp_require_tls: false\n\
             route:\n  receiver: hook\n  group_by: ['alertname']\n  group_wait: 0s\n  group_interval: 1s\n  \
             repeat_interval: 1h\n  routes:\n    - receiver: hook\n      continue: true\n    - receiver: mail\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n  \
             - name: mail\n    email_configs:\n      - to: 'oncall@example.com'\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No gossip: without this it waits ~10 s for peers before sending.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).unwrap())
        .spawn()
        .expect("start alertmanager");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Listening first (a GET to a closed port is an error), then ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "alertmanager not listening; see {}",
            dir.join("alertmanager.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while support::get(format!("{}/-/ready", am.url)).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "alertmanager not ready; see {}",
            dir.join("alertmanager.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    am
}

/// Waits for the next webhook body whose `status` is `status`.
async fn next_with_status(rx: &mut mpsc::UnboundedReceiver<Value>, status: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let body = rx.recv().await.expect("the webhook receiver runs");
            if body["status"] == status {
                return body;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no webhook with status {status} within 30 s"))
}

/// Alertmanager's active alerts named `name`, polled until `done` holds.
async fn alertmanager_alerts(am: &Alertmanager, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = support::get(format!("{}/api/v2/alerts", am.url)).await;
        assert_eq!(status, 200, "{body}");
        let alerts: Vec<Value> = serde_json::from_str(&body).unwrap();
        if done(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "alertmanager shows {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_rate_alert_reaches_alertmanager_and_its_receiver_then_resolves() {
    let dir = std::env::temp_dir().join(format!("tower-apm-am-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Two webhook receivers on one server: /am (Alertmanager's) and /direct (ours).
    let (am_tx, mut am_rx) = mpsc::unbounded_channel::<Value>();
    let (direct_tx, mut direct_rx) = mpsc::unbounded_channel::<Value>();
    let hooks = Router::new()
        .route(
            "/am",
            post(move |body: String| {
                let _ = am_tx.send(serde_json::from_str(&body).unwrap());
                async { StatusCode::OK }
            }),
        )
        .route(
            "/direct",
            post(move |body: String| {
                let _ = direct_tx.send(serde_json::from_str(&body).unwrap());
                async { StatusCode::OK }
            }),
        );
    let hooks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks_addr: SocketAddr = hooks_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(hooks_listener, hooks).await.unwrap() });

    let mut mail = smtp::SmtpServer::start().await;
    let am = start_alertmanager(&dir, &format!("http://{hooks_addr}/am"), mail.port).await;

    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("checkout")
        .logs(LogOutput::file(dir.join("app.log")))
        .alert(
            Alert::error_rate()
                .above(0.05)
                .over(Duration::from_secs(7200))
                .label("severity", "page")
                .annotation("summary", "more than 5% of requests fail"),
        )
        .alert_interval(Duration::from_secs(3600))
        .notify(Notifier::alertmanager(&am.url))
        .notify(Notifier::webhook(format!("http://{hooks_addr}/direct")))
        .build()
        .unwrap();
    let base = support::serve_ok_fail(apm.layer(), Router::new()).await;
    let hit = |path: &'static str, n: usize| support::hit(&base, path, n);

    hit("/ok", 50).await;
    hit("/fail", 10).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Firing));

    // Straight from our webhook notifier.
    let direct = next_with_status(&mut direct_rx, "firing").await;
    assert_eq!(direct["version"], "4");
    assert_eq!(direct["alerts"][0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(direct["alerts"][0]["labels"]["service"], "checkout");

    // In Alertmanager's API, active.
    let alerts = alertmanager_alerts(&am, |a| a.iter().any(|x| x["labels"]["alertname"] == "HighErrorRate")).await;
    let ours = alerts
        .iter()
        .find(|x| x["labels"]["alertname"] == "HighErrorRate")
        .unwrap();
    assert_eq!(ours["labels"]["severity"], "page");
    assert_eq!(ours["annotations"]["summary"], "more than 5% of requests fail");
    assert_eq!(ours["status"]["state"], "active");

    // Routed by Alertmanager to its receiver.
    let routed = next_with_status(&mut am_rx, "firing").await;
    assert_eq!(routed["alerts"][0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(routed["commonLabels"]["service"], "checkout");
    // And by email, through the real SMTP server.
    let email = mail.next_message("Subject: [FIRING:1] HighErrorRate").await;
    assert!(email.contains("To: oncall@example.com"), "{email}");
    assert!(email.contains("more than 5% of requests fail"), "{email}");

    // Healthy traffic: 10 of 260 is under 5%: resolved, everywhere.
    hit("/ok", 200).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Inactive));
    let direct = next_with_status(&mut direct_rx, "resolved").await;
    assert_eq!(direct["alerts"][0]["status"], "resolved");
    let routed = next_with_status(&mut am_rx, "resolved").await;
    assert_eq!(routed["alerts"][0]["labels"]["alertname"], "HighErrorRate");
    mail.next_message("Subject: [RESOLVED] HighErrorRate").await;
    alertmanager_alerts(&am, |a| !a.iter().any(|x| x["labels"]["alertname"] == "HighErrorRate")).await;

    let stats = apm.stats();
    assert_eq!(stats.alert_notifications_sent, 4, "{stats:?}");
    assert_eq!(stats.alert_notifications_failed, 0, "{stats:?}");
    apm.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_notifier_never_holds_up_evaluation_or_requests_and_its_failure_is_counted_and_logged() {
    let dir = std::env::temp_dir().join(format!("tower-apm-am-hang-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let _ = std::fs::remove_file(&log);
    // Accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hang.accept().await {
            held.push(conn);
        }
    });
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .logs(LogOutput::file(&log))
        .alert(Alert::in_flight().above(-1.0))
        .alert_interval(Duration::from_secs(3600))
        .notify(
            Notifier::alertmanager(format!("http://{hang_addr}"))
                .timeout(Duration::from_secs(2))
                .retries(1),
        )
        .build()
        .unwrap();
    let app = Router::new().route("/ok", get(|| async { "ok" })).layer(apm.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The evaluation hands the alert over and returns; the notifier hangs for
    // two attempts of 2 s each.
    let started = Instant::now();
    apm.evaluate_alerts();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(apm.alert_state("InFlightRequests"), Some(AlertState::Firing));
    // Requests are served meanwhile.
    let started = Instant::now();
    assert_eq!(support::get(format!("{base}/ok")).await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(apm.stats().alert_notifications_failed, 0, "still trying");

    let deadline = Instant::now() + Duration::from_secs(30);
    while apm.stats().alert_notifications_failed == 0 {
        assert!(Instant::now() < deadline, "{:?}", apm.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(apm.stats().alert_notifications_sent, 0);
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"message\":\"alert notification failed\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_detection_reaches_alertmanager_its_webhook_and_email() {
    let dir = std::env::temp_dir().join(format!("tower-apm-am-security-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (hook, mut am_rx) = support::webhook().await;
    let mut mail = smtp::SmtpServer::start().await;
    let am = start_alertmanager(&dir, &hook, mail.port).await;

    // Security monitoring alone: no alert rules, the detections are the alerts.
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .service_name("checkout")
        .logs(LogOutput::file(dir.join("app.log")))
        .security(tower_apm::security::Security::new())
        .notify(Notifier::alertmanager(&am.url))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|| async {
                (
                    tower_apm::security::SecurityEvent::login_failed("admin"),
                    StatusCode::UNAUTHORIZED,
                )
            }),
        )
        .layer(apm.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap()
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..10 {
        let req = http::Request::post(format!("{base}/login"))
            .body(http_body_util::Empty::new())
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 401);
    }

    let alerts = alertmanager_alerts(&am, |a| a.iter().any(|x| x["labels"]["alertname"] == "BruteForce")).await;
    let ours = alerts
        .iter()
        .find(|x| x["labels"]["alertname"] == "BruteForce")
        .unwrap();
    assert_eq!(ours["labels"]["client_address"], "127.0.0.1");
    assert_eq!(ours["labels"]["user"], "admin");
    assert_eq!(ours["labels"]["service"], "checkout");
    assert_eq!(ours["annotations"]["event"], "malicious_brute_force:127.0.0.1,admin");
    assert_eq!(ours["status"]["state"], "active");
    let routed = next_with_status(&mut am_rx, "firing").await;
    assert_eq!(routed["alerts"][0]["labels"]["alertname"], "BruteForce");
    let email = mail.next_message("Subject: [FIRING:1] BruteForce").await;
    // The body is quoted-printable: lines folded with a trailing `=`.
    let unfolded = email.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    assert!(unfolded.contains("10 failed logins from 127.0.0.1"), "{email}");
    // Counted once the POST's answer is read, just after Alertmanager took it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while apm.stats().alert_notifications_sent == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = apm.stats();
    assert_eq!(
        (stats.security_detections, stats.alert_notifications_sent),
        (1, 1),
        "{stats:?}"
    );
    apm.shutdown().await.unwrap();
}
