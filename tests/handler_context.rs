//! The server span is the current context inside handlers: `tracing` spans become
//! its children, `tracing` events see its ids, and outgoing calls carry it.

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{Receiver, Transport, apm_to};
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

#[tracing::instrument]
async fn load_user(id: u64) -> String {
    inner_step().await;
    format!("user {id}")
}

#[tracing::instrument]
async fn inner_step() {
    tracing::info!("working");
}

/// Records, for every `tracing` event, the OpenTelemetry trace and span id that is
/// current when it is emitted (what a JSON log formatter reads).
#[derive(Clone, Default)]
struct EventIds(Arc<Mutex<Vec<(String, String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventIds {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let cx = opentelemetry::Context::current();
        let sc = cx.span().span_context().clone();
        self.0.lock().unwrap().push((
            event.metadata().target().to_owned(),
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
        ));
    }
}

#[tokio::test]
async fn tracing_spans_in_handlers_become_children_of_the_server_span() {
    let receiver = Receiver::start().await;
    // gRPC: the receiver's own tonic/h2 spans (TRACE level, unfiltered here) feed
    // back into the exporter; a flush must still finish.
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let events = EventIds::default();
    let subscriber = tracing_subscriber::registry()
        .with(apm.tracing_layer())
        .with(events.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route(
            "/users/{id}",
            get(|| async {
                tracing::info!(target: "handler", "in the handler");
                load_user(7).await
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/users/7").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"user 7");

    apm.force_flush().await.unwrap();
    let spans = receiver.wait_for(3).await;
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.span.name == n)
            .unwrap_or_else(|| panic!("no {n}: {spans:#?}"))
    };
    let server = by_name("GET /users/{id}");
    let load = by_name("load_user");
    let step = by_name("inner_step");
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(load.trace_id_hex(), server.trace_id_hex());
    assert_eq!(
        load.parent_id_hex(),
        server.span_id_hex(),
        "instrumented fn is a child of the server span"
    );
    assert_eq!(step.parent_id_hex(), load.span_id_hex(), "nesting is kept below it");
    assert_eq!(load.resource_attr("service.name").as_deref(), Some("test-svc"));

    let events = events.0.lock().unwrap().clone();
    let handler_event = events.iter().find(|(t, ..)| t == "handler").expect("handler event");
    assert_eq!(
        handler_event.1,
        server.trace_id_hex(),
        "event carries the request's trace id"
    );
    assert_eq!(
        handler_event.2,
        server.span_id_hex(),
        "event outside any span carries the server span id"
    );
    let inner_event = events
        .iter()
        .find(|(t, ..)| t.ends_with("handler_context"))
        .expect("inner event");
    assert_eq!(inner_event.1, server.trace_id_hex());
    assert_eq!(
        inner_event.2,
        step.span_id_hex(),
        "event inside a span carries that span's id"
    );
}

#[tokio::test]
async fn context_survives_spawned_work_when_the_future_carries_it() {
    use opentelemetry::context::FutureExt;
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[]);
    let app = Router::new()
        .route(
            "/spawn",
            get(|| async {
                let task = async {
                    opentelemetry::Context::current()
                        .span()
                        .span_context()
                        .trace_id()
                        .to_string()
                };
                tokio::spawn(task.with_current_context()).await.unwrap()
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/spawn").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let seen = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    apm.force_flush().await.unwrap();
    let server = &receiver.wait_for(1).await[0];
    assert_eq!(seen, server.trace_id_hex());
}

#[tokio::test]
async fn always_off_sampler_exports_nothing_but_still_propagates() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_TRACES_SAMPLER", "always_off")]);
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                let sc = opentelemetry::Context::current().span().span_context().clone();
                format!("{} {}", sc.is_valid(), sc.is_sampled())
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"true false", "a valid, unsampled context is current");
    apm.force_flush().await.unwrap();
    assert_eq!(apm.stats().spans_exported, 0);
    assert!(receiver.spans().is_empty());
}

#[tokio::test]
async fn sdk_disabled_passes_requests_through_untouched() {
    let receiver = Receiver::start().await;
    let apm = apm_to(&receiver, Transport::Grpc, &[("OTEL_SDK_DISABLED", "true")]);
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                opentelemetry::Context::current()
                    .span()
                    .span_context()
                    .is_valid()
                    .to_string()
            }),
        )
        .layer(apm.layer());
    let res = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"false");
    apm.force_flush().await.unwrap();
    assert!(receiver.spans().is_empty());
}

#[test]
fn invalid_environment_is_a_typed_error_naming_the_variable() {
    let err = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ])
        .build()
        .unwrap_err();
    assert!(matches!(err, tower_apm::ConfigError::InvalidVar { ref name, .. } if name == "OTEL_TRACES_SAMPLER_ARG"));
    assert_eq!(
        err.to_string(),
        "invalid value \"half\" for OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0.0 and 1.0"
    );
}
