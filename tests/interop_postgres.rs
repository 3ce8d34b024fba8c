//! Database timing against a real PostgreSQL server (started by the test on a
//! temporary directory; see `tests/support/postgres.rs`), through
//! `db::postgres::Client` inside real HTTP requests: a request that runs three
//! queries exports three CLIENT spans under its server span, with sanitized
//! statements and durations inside the request's; `pg_sleep` over the threshold
//! is a slow-query log line with the trace id and a counted slow query; a
//! failing query carries its SQLSTATE as `error.type`; the metrics hold the
//! durations per operation and table.

#![cfg(all(feature = "_interop", feature = "postgres"))]

#[path = "support/postgres.rs"]
mod pg;
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::StatusCode;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtlpStatus;
use serde_json::Value;
use support::{Received, Receiver};
use tower_apm::db::postgres::Client;
use tower_apm::{Apm, LogOutput};

type Db = State<Arc<Client>>;

async fn orders(State(db): Db) -> Result<String, StatusCode> {
    let fail = |_| StatusCode::INTERNAL_SERVER_ERROR;
    let row = db
        .query_one("SELECT email FROM users WHERE id = $1", &[&1_i32])
        .await
        .map_err(fail)?;
    let email: String = row.get(0);
    let n = db
        .query_one("SELECT count(*) FROM users WHERE email = 'a@example.com'", &[])
        .await
        .map_err(fail)?;
    let n: i64 = n.get(0);
    db.execute("UPDATE users SET seen = seen + 1 WHERE email = 'a@example.com'", &[])
        .await
        .map_err(fail)?;
    Ok(format!("{email} {n}"))
}

async fn slow(State(db): Db) -> Result<&'static str, StatusCode> {
    db.query("SELECT pg_sleep(0.3)", &[])
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok("slept")
}

async fn fail(State(db): Db) -> StatusCode {
    match db.query("SELECT * FROM missing_table WHERE secret = 'x'", &[]).await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn server_span<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.span.name == name && s.span.kind == SpanKind::Server as i32)
        .unwrap_or_else(|| panic!("no server span {name}"))
}

fn children<'a>(spans: &'a [Received], parent: &Received) -> Vec<&'a Received> {
    let mut c: Vec<&Received> = spans
        .iter()
        .filter(|s| s.span.parent_span_id == parent.span.span_id && s.span.kind == SpanKind::Client as i32)
        .collect();
    c.sort_by_key(|s| s.span.start_time_unix_nano);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_client_spans_under_their_request_with_slow_and_failed_ones_told_apart() {
    let server = pg::Postgres::start("spans");
    let receiver = Receiver::start().await;
    let dir = std::env::temp_dir().join(format!("tower-apm-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let apm = Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint().as_str()),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("shop")
        .logs(LogOutput::file(&log))
        .build()
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let db = apm
        .database("postgresql")
        .namespace("postgres")
        .server("127.0.0.1", Some(server.port))
        .slow_query_threshold(Duration::from_millis(200));
    let db = Arc::new(Client::new(client, db));
    db.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text, seen int DEFAULT 0); \
         INSERT INTO users (id, email) VALUES (1, 'a@example.com')",
    )
    .await
    .unwrap();

    let app = Router::new()
        .route("/orders", get(orders))
        .route("/slow", get(slow))
        .route("/fail", get(fail))
        .with_state(Arc::clone(&db))
        .layer(apm.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(
        support::get(format!("{base}/orders")).await,
        (200, "a@example.com 1".to_owned())
    );
    assert_eq!(support::get(format!("{base}/slow")).await.0, 200);
    assert_eq!(support::get(format!("{base}/fail")).await.0, 500);
    apm.force_flush().await.unwrap();
    // 3 server spans, 5 queries in them, and the set-up batch outside any.
    let spans = receiver.wait_for(9).await;

    let request = server_span(&spans, "GET /orders");
    let queries = children(&spans, request);
    assert_eq!(queries.len(), 3, "{queries:?}");
    let names: Vec<&str> = queries.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(names, ["SELECT users", "SELECT users", "UPDATE users"]);
    let texts: Vec<String> = queries.iter().map(|s| s.str_attr("db.query.text").unwrap()).collect();
    assert_eq!(
        texts,
        [
            "SELECT email FROM users WHERE id = $1",
            "SELECT count(*) FROM users WHERE email = ?",
            "UPDATE users SET seen = seen + ? WHERE email = ?",
        ]
    );
    for q in &queries {
        assert_eq!(q.span.trace_id, request.span.trace_id);
        assert_eq!(q.str_attr("db.system.name").as_deref(), Some("postgresql"));
        assert_eq!(q.str_attr("db.namespace").as_deref(), Some("postgres"));
        assert_eq!(q.str_attr("db.collection.name").as_deref(), Some("users"));
        assert_eq!(q.str_attr("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(q.int_attr("server.port"), Some(i64::from(server.port)));
        assert_eq!(q.attr("error.type"), None);
        // Inside the request, one after the other.
        assert!(q.span.start_time_unix_nano >= request.span.start_time_unix_nano);
        assert!(q.span.end_time_unix_nano <= request.span.end_time_unix_nano);
    }
    assert!(queries[0].span.end_time_unix_nano <= queries[1].span.start_time_unix_nano);
    assert_eq!(queries[2].str_attr("db.operation.name").as_deref(), Some("UPDATE"));
    // No literal left the process.
    for s in &spans {
        for kv in &s.span.attributes {
            assert!(
                !format!("{:?}", kv.value).contains("a@example.com"),
                "{kv:?} in {}",
                s.span.name
            );
        }
    }
    // The request's database time: three queries, their durations together.
    assert_eq!(request.int_attr("tower_apm.db.operations"), Some(3));
    let total = match request.attr("tower_apm.db.duration") {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::DoubleValue(d)) => *d,
        other => panic!("{other:?}"),
    };
    let sum: f64 = queries.iter().map(|q| q.duration().as_secs_f64()).sum();
    assert!((total - sum).abs() < 1e-6, "{total} vs {sum}");
    assert!(total <= request.duration().as_secs_f64());

    // pg_sleep(0.3): its span lasts at least that, and it is logged as slow.
    let slow_request = server_span(&spans, "GET /slow");
    let sleep = children(&spans, slow_request);
    assert_eq!(sleep.len(), 1);
    assert_eq!(sleep[0].span.name, "SELECT");
    assert_eq!(
        sleep[0].str_attr("db.query.text").as_deref(),
        Some("SELECT pg_sleep(?)")
    );
    let d = sleep[0].duration();
    assert!(d >= Duration::from_millis(300) && d < Duration::from_secs(3), "{d:?}");
    assert!(apm.flush_logs(Duration::from_secs(10)).await);
    let slow_lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "tower_apm::db")
        .collect();
    assert_eq!(slow_lines.len(), 1, "{slow_lines:?}");
    let line = &slow_lines[0];
    assert_eq!(line["message"], "slow query");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["db.query.text"], "SELECT pg_sleep(?)");
    assert_eq!(line["trace_id"], slow_request.trace_id_hex());
    assert_eq!(line["span_id"], support::hex(&sleep[0].span.span_id));
    let logged_ms = line["duration_ms"].as_f64().unwrap();
    assert!(
        (logged_ms - d.as_secs_f64() * 1000.0).abs() < 1.0,
        "{logged_ms} vs {d:?}"
    );

    // A failing query: its SQLSTATE.
    let failed = children(&spans, server_span(&spans, "GET /fail"));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].str_attr("error.type").as_deref(), Some("42P01"));
    assert_eq!(failed[0].str_attr("db.response.status_code").as_deref(), Some("42P01"));
    assert_eq!(
        failed[0].str_attr("db.query.text").as_deref(),
        Some("SELECT * FROM missing_table WHERE secret = ?")
    );
    assert_eq!(
        failed[0].span.status.as_ref().map(|s| s.code),
        Some(OtlpStatus::Error as i32)
    );

    // The metrics: per operation and table, slow queries counted.
    let res = tower::ServiceExt::oneshot(
        apm.metrics_router(),
        http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    let labels = format!(
        "db_system_name=\"postgresql\",db_operation_name=\"SELECT\",db_collection_name=\"users\",db_namespace=\"postgres\",server_address=\"127.0.0.1\",server_port=\"{}\"",
        server.port
    );
    assert!(
        text.contains(&format!("db_client_operation_duration_seconds_count{{{labels}}} 2")),
        "{text}"
    );
    let sleep_labels = format!(
        "db_system_name=\"postgresql\",db_operation_name=\"SELECT\",db_namespace=\"postgres\",server_address=\"127.0.0.1\",server_port=\"{}\"",
        server.port
    );
    assert!(
        text.contains(&format!("tower_apm_db_slow_queries_total{{{sleep_labels}}} 1")),
        "{text}"
    );
    assert!(text.contains("error_type=\"42P01\""), "{text}");
    apm.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
