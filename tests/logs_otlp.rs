//! OTLP log export (feature `otlp-logs`): `tracing` events decoded by the test
//! receiver as log records that carry the trace and span ids of their request.

#![cfg(feature = "otlp-logs")]

mod support;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::{Receiver, Transport, apm_to, hex};
use tower::ServiceExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn events_reach_the_collector_as_log_records_of_their_trace() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_METRICS_EXPORTER", "none")]);
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(apm.tracing_layer())
            // Only this test's events: the receiver's own (tonic, h2) would keep
            // arriving after the shutdown.
            .with(
                apm.otlp_logs_layer()
                    .expect("otlp is the default logs exporter")
                    .with_filter(tracing_subscriber::EnvFilter::new("logs_otlp=info")),
            ),
    );
    tracing::info!("outside any request");
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|| async {
                tracing::info!(user_id = 7, "loaded user");
                "ok"
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/users/7").body(Body::empty()).unwrap())
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    apm.shutdown().await.expect("spans and logs exported");

    let spans = receiver.wait_for(1).await;
    let server = &spans[0];
    let records: Vec<_> = receiver
        .log_exports()
        .into_iter()
        .flat_map(|r| r.resource_logs)
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .collect();
    let record = records
        .iter()
        .find(|r| matches!(r.body.as_ref().and_then(|b| b.value.as_ref()), Some(Value::StringValue(s)) if s == "loaded user"))
        .unwrap_or_else(|| panic!("no \"loaded user\" record in {records:#?}"));
    assert_eq!(record.severity_text, "INFO");
    assert_eq!(hex(&record.trace_id), server.trace_id_hex());
    assert_eq!(hex(&record.span_id), server.span_id_hex());
    let outside = records
        .iter()
        .find(|r| matches!(r.body.as_ref().and_then(|b| b.value.as_ref()), Some(Value::StringValue(s)) if s == "outside any request"))
        .expect("the event outside requests");
    assert!(outside.trace_id.is_empty(), "no trace outside a request");
    assert_eq!(apm.stats().log_records_exported, 2);
    assert_eq!(apm.stats().log_records_dropped, 0);
}

#[tokio::test]
async fn a_long_message_is_cut_to_the_attribute_value_length_limit() {
    let receiver = Receiver::start().await;
    let apm = apm_to(
        &receiver,
        Transport::Grpc,
        &[
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "64"),
        ],
    );
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(
            apm.otlp_logs_layer()
                .expect("otlp is the default logs exporter")
                .with_filter(tracing_subscriber::EnvFilter::new("logs_otlp=info")),
        ),
    );
    let path = format!("/search/{}", "x".repeat(100_000));
    tracing::info!("not found: {path}");
    apm.shutdown().await.expect("logs exported");
    let bodies: Vec<String> = receiver
        .log_exports()
        .into_iter()
        .flat_map(|r| r.resource_logs)
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .filter_map(|r| match r.body.and_then(|b| b.value) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].len() <= 64 && bodies[0].starts_with("not found: /search/xxx") && bodies[0].ends_with('…'));
}
