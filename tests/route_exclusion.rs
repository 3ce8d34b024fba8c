//! Operator routes and excluded routes are not traffic: probes, scrapes and
//! status-page refreshes make no span, no access-log line and no metrics
//! series (so no alert input and no status-page row), by default; routes the
//! user names are left out the same way; the application's own routes are
//! recorded as ever.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use support::Receiver;
use tower::ServiceExt;
use tower_apm::{Apm, LogOutput, Shutdown};

fn log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tower-apm-exclusion-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("app.log")
}

fn apm(
    receiver: &Receiver,
    log: &PathBuf,
    builder: impl FnOnce(tower_apm::ApmBuilder) -> tower_apm::ApmBuilder,
) -> Apm {
    let b = Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint()),
            ("OTEL_METRICS_EXPORTER", "prometheus".to_owned()),
            ("OTEL_SERVICE_NAME", "shop".to_owned()),
        ])
        .logs(LogOutput::file(log))
        .access_log(true);
    builder(b).build().unwrap()
}

/// The application's routes, every operator router, and the layer over all.
fn app(apm: &Apm) -> Router {
    let shutdown = Shutdown::builder().handle_signals(false).build();
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/internal/warmup", get(|| async { "warm" }))
        .route("/debug/{what}", get(|| async { "debug" }))
        .merge(apm.metrics_router())
        .merge(apm.alerts_router())
        .merge(apm.status_router())
        .merge(shutdown.health_router())
        .layer(apm.layer())
}

async fn get_status(app: &Router, path: &str) -> StatusCode {
    let res = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

async fn metrics_text(app: &Router) -> String {
    let res = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn access_paths(apm_log: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(apm_log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::access")
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect()
}

const OPERATOR_PATHS: [&str; 6] = ["/metrics", "/alerts", "/apm", "/apm/api/overview", "/livez", "/readyz"];

#[tokio::test]
async fn operator_routes_make_no_span_no_access_line_and_no_series_by_default() {
    let receiver = Receiver::start().await;
    let log = log_path("default");
    let apm = apm(&receiver, &log, |b| b);
    let app = app(&apm);
    for path in OPERATOR_PATHS {
        assert_eq!(get_status(&app, path).await, StatusCode::OK, "{path}");
    }
    assert_eq!(get_status(&app, "/users/7").await, StatusCode::OK);
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names, ["GET /users/{id}"]);

    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    assert_eq!(access_paths(&log), ["/users/7"]);

    let text = metrics_text(&app).await;
    let routes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .collect();
    assert_eq!(routes.len(), 1, "{routes:#?}");
    assert!(routes[0].contains("http_route=\"/users/{id}\""), "{}", routes[0]);
    // Nothing is left in flight by the requests that were not recorded: the
    // one in flight is the scrape that reads it (an operator request counts
    // while it runs, so a shutdown drains it too).
    let active: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_server_active_requests{"))
        .collect();
    assert_eq!(
        active,
        ["http_server_active_requests{http_request_method=\"GET\",url_scheme=\"http\"} 1"]
    );
}

#[tokio::test]
async fn routes_the_user_excludes_by_template_or_predicate_are_left_out_the_same_way() {
    let receiver = Receiver::start().await;
    let log = log_path("user");
    let apm = apm(&receiver, &log, |b| {
        b.exclude_routes(["/internal/warmup"])
            .exclude_when(|_, route| route.starts_with("/debug/"))
    });
    let app = app(&apm);
    for path in ["/internal/warmup", "/debug/heap", "/users/7"] {
        assert_eq!(get_status(&app, path).await, StatusCode::OK, "{path}");
    }
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names, ["GET /users/{id}"]);
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    assert_eq!(access_paths(&log), ["/users/7"]);
    let text = metrics_text(&app).await;
    assert!(
        !text.contains("/internal/warmup") && !text.contains("/debug/"),
        "{text}"
    );
}

#[tokio::test]
async fn operator_routes_are_recorded_when_asked() {
    let receiver = Receiver::start().await;
    let log = log_path("recorded");
    let apm = apm(&receiver, &log, |b| b.record_operator_routes(true));
    let app = app(&apm);
    assert_eq!(get_status(&app, "/livez").await, StatusCode::OK);
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(1).await;
    assert_eq!(spans[0].span.name, "GET /livez");
    assert!(apm.flush_logs(Duration::from_secs(5)).await);
    assert_eq!(access_paths(&log), ["/livez"]);
}
