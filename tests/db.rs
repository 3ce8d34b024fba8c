//! Database timing with any driver (a future standing in for the query), decoded
//! from the OTLP our exporter sends: spans outside a request are roots, a
//! dropped query ends as `cancelled`, an error without a SQLSTATE is named by
//! its type, the access log and the pushed metrics carry the queries. (A real
//! PostgreSQL server: `tests/interop_postgres.rs`.)

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{Receiver, Transport, apm_to};
use tower::ServiceExt;

#[tokio::test]
async fn queries_outside_requests_are_roots_and_a_dropped_one_is_cancelled() {
    let receiver = Receiver::start().await;
    let apm = apm_to(
        &receiver,
        Transport::Grpc,
        &[("OTEL_METRIC_EXPORT_INTERVAL", "3600000")],
    );
    let db = apm.database("sqlite").namespace("main");
    db.query("CREATE", None)
        .run(async { Ok::<_, std::io::Error>(()) })
        .await
        .unwrap();
    let err = db
        .statement("DELETE FROM sessions WHERE token = 'abc'")
        .run(async { Err::<(), _>(std::io::Error::other("disk I/O error")) })
        .await;
    assert!(err.is_err(), "the query's own result comes back");
    // Given up on (a timeout around it, a client that went away).
    let pending = db
        .statement("SELECT * FROM big")
        .run(std::future::pending::<Result<(), std::io::Error>>());
    let _ = tokio::time::timeout(Duration::from_millis(5), pending).await;
    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(3).await;
    for s in &spans {
        assert_eq!(s.span.kind, SpanKind::Client as i32);
        assert!(s.span.parent_span_id.is_empty(), "outside a request: a root");
        assert_eq!(s.str_attr("db.system.name").as_deref(), Some("sqlite"));
        assert_eq!(s.str_attr("db.namespace").as_deref(), Some("main"));
    }
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.span.name == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert_eq!(by_name("CREATE").attr("error.type"), None);
    let delete = by_name("DELETE sessions");
    assert_eq!(delete.str_attr("error.type").as_deref(), Some("std::io::error::Error"));
    assert_eq!(
        delete.str_attr("db.query.text").as_deref(),
        Some("DELETE FROM sessions WHERE token = ?")
    );
    assert_eq!(delete.attr("db.response.status_code"), None);
    let cancelled = by_name("SELECT big");
    assert_eq!(cancelled.str_attr("error.type").as_deref(), Some("cancelled"));
    assert!(cancelled.duration() >= Duration::from_millis(5));

    // The pushed metrics: one point per operation, table and error.type.
    apm.force_flush().await.unwrap();
    let exports = receiver.wait_for_metric_exports(1, Duration::from_secs(10)).await;
    let (req, _) = exports.last().unwrap();
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    let duration = metrics
        .iter()
        .find(|m| m.name == "db.client.operation.duration")
        .unwrap();
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = &duration.data else {
        panic!("{duration:?}")
    };
    assert_eq!(h.data_points.len(), 3);
    assert_eq!(h.data_points.iter().map(|p| p.count).sum::<u64>(), 3);
    assert_eq!(
        h.data_points[0].explicit_bounds,
        [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    );
    let errored = h
        .data_points
        .iter()
        .filter(|p| {
            p.attributes
                .iter()
                .any(|kv| kv.key == "error.type" && matches!(&kv.value.as_ref().unwrap().value, Some(Value::StringValue(v)) if v == "cancelled" || v == "std::io::error::Error"))
        })
        .count();
    assert_eq!(errored, 2);
    assert!(metrics.iter().any(|m| m.name == "tower_apm.db.slow_queries"));
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_access_log_line_carries_the_requests_queries() {
    let dir = std::env::temp_dir().join(format!("tower-apm-db-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let apm = tower_apm::Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(tower_apm::LogOutput::file(&log))
        .build()
        .unwrap();
    let db = apm.database("postgresql");
    let app = Router::new()
        .route(
            "/n-plus-one",
            get(move || {
                let db = db.clone();
                async move {
                    for id in 0..4 {
                        db.statement("SELECT * FROM items WHERE id = $1")
                            .run(async move {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok::<_, std::io::Error>(id)
                            })
                            .await
                            .unwrap();
                    }
                    "ok"
                }
            }),
        )
        .route("/none", get(|| async { "ok" }))
        .layer(apm.layer());
    for path in ["/n-plus-one", "/none"] {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    }
    assert!(apm.flush_logs(Duration::from_secs(10)).await);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], "/n-plus-one");
    assert_eq!(lines[0]["db_queries"], 4);
    let db_ms = lines[0]["db_ms"].as_f64().unwrap();
    assert!(
        db_ms >= 8.0 && db_ms <= lines[0]["duration_ms"].as_f64().unwrap(),
        "{}",
        lines[0]
    );
    assert!(lines[1].get("db_queries").is_none(), "{}", lines[1]);
    let _ = std::fs::remove_dir_all(dir);
}
