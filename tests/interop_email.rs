//! Alert emails from `Notifier::email` to a real SMTP server (`aiosmtpd`): real 5xx
//! traffic fires an alert and the server receives a `[FIRING:1]` message with the
//! alert's labels and annotations; healthy traffic resolves it and a `[RESOLVED]`
//! message follows. (Plain SMTP on loopback; STARTTLS and TLS go through the same
//! `lettre` transport with rustls.)

#![cfg(all(feature = "_interop", feature = "email"))]

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::time::Duration;

use tower_apm::{Alert, AlertState, Apm, LogOutput, Notifier, Smtp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_emailed_when_it_fires_and_when_it_resolves() {
    let mut server = smtp::SmtpServer::start().await;
    let dir = std::env::temp_dir().join(format!("tower-apm-email-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
        .notify(Notifier::email(
            Smtp::new("127.0.0.1")
                .port(server.port)
                .plain()
                .from("alerts@example.com")
                .to("oncall@example.com"),
        ))
        .build()
        .unwrap();
    let base = support::serve_ok_fail(apm.layer(), axum::Router::new()).await;
    support::hit(&base, "/ok", 50).await;
    support::hit(&base, "/fail", 10).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Firing));
    let firing = server
        .next_message("Subject: [FIRING:1] HighErrorRate (checkout)")
        .await;
    assert!(firing.contains("From: alerts@example.com"), "{firing}");
    assert!(firing.contains("To: oncall@example.com"), "{firing}");
    assert!(firing.contains("HighErrorRate: FIRING since "), "{firing}");
    assert!(firing.contains("  severity = page"), "{firing}");
    assert!(firing.contains("  summary: more than 5% of requests fail"), "{firing}");

    support::hit(&base, "/ok", 200).await;
    apm.evaluate_alerts();
    let resolved = server
        .next_message("Subject: [RESOLVED] HighErrorRate (checkout)")
        .await;
    assert!(resolved.contains("HighErrorRate: RESOLVED at "), "{resolved}");
    // The server prints a message before the client has read its last reply:
    // the counter follows within moments.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while apm.stats().alert_notifications_sent < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", apm.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(apm.stats().alert_notifications_failed, 0);
    apm.shutdown().await.unwrap();
}
