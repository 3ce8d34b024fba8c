//! A failing collector produces one clear warning, not a log line per failed
//! export, and one line when export recovers. (Its own test binary: it installs a
//! global `tracing` subscriber.)

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "tower_apm" {
            return;
        }
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut msg = Msg(String::new());
        event.record(&mut msg);
        self.0.lock().unwrap().push((*event.metadata().level(), msg.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_collector_warns_once_and_recovery_is_reported_once() {
    let captured = Captured::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(captured.clone())).unwrap();

    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{port}")),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".into()),
        ])
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
    let request = || async {
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    };
    for _ in 0..3 {
        request().await;
        assert!(apm.force_flush().await.is_err());
    }
    assert!(apm.stats().export_failures >= 3, "{:?}", apm.stats());

    let receiver = support::Receiver::start_on(port).await;
    request().await;
    apm.force_flush().await.unwrap();
    receiver.wait_for(1).await;

    let events = captured.0.lock().unwrap().clone();
    let failures: Vec<_> = events
        .iter()
        .filter(|(_, m)| m.contains("export to the collector failed"))
        .collect();
    // The metric push shares the collector: the same outage, the same one
    // warning, saying what happens to both signals.
    assert_eq!(failures.len(), 1, "one warning for the whole outage: {events:#?}");
    assert_eq!(failures[0].0, tracing::Level::WARN);
    assert!(
        failures[0].1.contains("spans are dropped") && failures[0].1.contains("metric pushes are retried"),
        "{events:#?}"
    );
    let count = |text: &str| events.iter().filter(|(_, m)| m.contains(text)).count();
    assert_eq!(count("export to the collector recovered"), 1, "{events:#?}");
    assert_eq!(
        events.len(),
        2,
        "nothing else: no line per signal, none per failed export: {events:#?}"
    );
}
