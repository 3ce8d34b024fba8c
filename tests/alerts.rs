//! Alert rules evaluated over real HTTP traffic through the layer: an error-rate
//! alert fires when 5xx responses cross its threshold, shows as firing in
//! `GET /alerts` and in the log, and resolves once healthy traffic brings the
//! ratio back under it. (Window and `for` logic under a controlled clock is
//! tested in `src/alerts`.)

mod support;

use std::time::Duration;

use tower_apm::{Alert, AlertState, Apm, LogOutput};

#[tokio::test]
async fn error_rate_alert_fires_on_5xx_traffic_and_resolves_when_it_stops() {
    let dir = std::env::temp_dir().join(format!("tower-apm-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let _ = std::fs::remove_file(&log);
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("alerts-test")
        .logs(LogOutput::file(&log))
        .alert(
            Alert::error_rate()
                .above(0.05)
                .over(Duration::from_secs(7200))
                .label("severity", "page"),
        )
        // The thread would evaluate every hour: this test evaluates when it wants.
        .alert_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let base = support::serve_ok_fail(apm.layer(), apm.alerts_router()).await;
    let hit = |path: &'static str, n: usize| support::hit(&base, path, n);
    let status = || async { support::get(format!("{base}/alerts")).await.1 };

    hit("/ok", 50).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Inactive));

    // 10 failures out of 60 requests: 16.7%.
    hit("/fail", 10).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Firing));
    let json: serde_json::Value = serde_json::from_str(&status().await).unwrap();
    let alert = &json["alerts"][0];
    assert_eq!(alert["name"], "HighErrorRate");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["requests_in_window"], 60);
    assert!((alert["value"].as_f64().unwrap() - 10.0 / 60.0).abs() < 1e-9, "{alert}");
    assert_eq!(alert["labels"]["severity"], "page");
    assert!(alert["fired_at"].is_string());

    // Healthy traffic: 10 of 260 is 3.8%, under 5%.
    hit("/ok", 200).await;
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Inactive));
    let json: serde_json::Value = serde_json::from_str(&status().await).unwrap();
    assert_eq!(json["alerts"][0]["state"], "inactive");
    assert!(json["alerts"][0]["resolved_at"].is_string());
    assert_eq!(json["evaluations"], 3);

    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::alerts")
        .collect();
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["message"].as_str().unwrap(), e["level"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("alert firing", "WARN"), ("alert resolved", "INFO")]);
    assert_eq!(events[0]["alert"], "HighErrorRate");
    assert_eq!(events[0]["above"], 0.05);
    assert_eq!(events[0]["service"], "alerts-test");
    apm.shutdown().await.unwrap();
}

#[test]
fn alerts_without_request_metrics_are_refused() {
    let err = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none")])
        .metrics(false)
        .alert(Alert::error_rate().above(0.05))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("remove .metrics(false)"), "{err}");
}

/// `GET url` with `authorization`: status, headers, body.
async fn get_auth(url: &str, authorization: Option<&str>) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = http::Request::get(url);
    if let Some(v) = authorization {
        req = req.header("authorization", v);
    }
    let res = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn with_a_status_token_alerts_and_detections_answer_only_to_it() {
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .logs(LogOutput::writer(std::io::sink()))
        .alert(Alert::error_rate().above(0.05))
        .security(tower_apm::security::Security::new())
        .status_token("s3cret")
        .build()
        .unwrap();
    let base = support::serve_ok_fail(apm.layer(), apm.alerts_router()).await;
    let url = format!("{base}/alerts");
    for auth in [None, Some("Bearer wrong"), Some("Basic czNjcmV0")] {
        let (status, headers, body) = get_auth(&url, auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(!body.contains("HighErrorRate") && !body.contains("security"), "{body}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    for (url, auth) in [
        (url.clone(), Some("Bearer s3cret")),
        (url.clone(), Some("bearer  s3cret")),
        (format!("{url}?token=s3cret"), None),
    ] {
        let (status, headers, body) = get_auth(&url, auth).await;
        assert_eq!(status, 200, "{url} {auth:?}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["alerts"][0]["name"], "HighErrorRate");
        assert!(json["security"].is_object(), "{json}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    // The application's own routes are not behind the token.
    assert_eq!(support::get(format!("{base}/ok")).await.0, 200);
    apm.shutdown().await.unwrap();
}
