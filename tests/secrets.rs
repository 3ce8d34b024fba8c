//! No secret in any output: configuration errors never repeat a header value
//! or a URL's userinfo, impossible endpoints are refused when the `Apm` is
//! built, and the warnings of a failing export show the endpoint without its
//! password. (Its own test binary: it installs a global `tracing` subscriber.)

use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_apm::{Apm, ConfigError};
use tracing_subscriber::layer::SubscriberExt;

/// Every `tower_apm` event, each as its fields written out.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("tower_apm") {
            return;
        }
        struct All(String);
        impl tracing::field::Visit for All {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut all = All(String::new());
        event.record(&mut all);
        self.0.lock().unwrap().push(all.0);
    }
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(captured.clone())).unwrap();
        captured
    })
}

fn build(vars: &[(&str, &str)]) -> Result<Apm, ConfigError> {
    Apm::builder()
        .environment(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .build()
}

/// Every variable that names an endpoint `build` resolves.
const ENDPOINT_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    #[cfg(feature = "otlp-logs")]
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
];

#[tokio::test]
async fn build_refuses_an_impossible_port_naming_the_variable_without_the_userinfo() {
    for var in ENDPOINT_VARS {
        for url in ["http://127.0.0.1:99999", "http://user:hunter2@127.0.0.1:99999/v1"] {
            let err = build(&[(var, url)]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, ConfigError::InvalidVar { name, .. } if name == var),
                "{err:?}"
            );
            assert!(
                msg.contains(var) && msg.contains("port") && msg.contains("127.0.0.1:99999"),
                "{msg}"
            );
            assert!(
                !msg.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
                "{msg}"
            );
        }
    }
    let err = Apm::builder().endpoint("http://127.0.0.1:99999").build().unwrap_err();
    assert!(err.to_string().contains("ApmBuilder::endpoint"), "{err}");
    let err = Apm::builder()
        .notify(tower_apm::Notifier::webhook("http://127.0.0.1:70000/hook"))
        .security(tower_apm::security::Security::new())
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("notify") && err.to_string().contains("port"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_headers_variable_is_named_and_its_value_never_shown() {
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ] {
        for raw in ["authorization=Bearer hunter2,x", "Authorization: Bearer hunter2"] {
            let err = build(&[(var, raw)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::InvalidHeaders { name, .. } if name == var),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(var) && !msg.contains("hunter2"), "{msg}");
            assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        }
    }
    let err = Apm::builder()
        .header("authorization", "Bearer hunter2\r\nx: y")
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_builders_debug_output_shows_no_header_value_and_no_userinfo() {
    let builder = Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer hunter2"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://user:hunter2@m:4317"),
        ])
        .endpoint("http://user:hunter2@collector:4317")
        .header("x-api-key", "hunter2")
        .notify(tower_apm::Notifier::webhook("https://user:hunter2@hooks.example/ops"))
        .status_token("hunter2")
        .metrics_token("hunter2");
    let debug = format!("{builder:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("collector:4317") && debug.contains("x-api-key"),
        "{debug}"
    );
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_warnings_and_errors_show_the_endpoint_without_its_password() {
    let captured = captured();
    for protocol in ["grpc", "http/protobuf"] {
        let port = closed_port().await;
        let apm = build(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://user:hunter2@127.0.0.1:{port}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ])
        .unwrap();
        let app = Router::new().route("/", get(|| async { "ok" })).layer(apm.layer());
        let res = app
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
        let err = apm.force_flush().await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{protocol}: {err}");

        let events = captured.0.lock().unwrap().clone();
        let ours: Vec<&String> = events.iter().filter(|e| e.contains(&port.to_string())).collect();
        assert!(
            ours.iter().any(
                |e| e.contains("export to the collector failed") && e.contains(&format!("http://127.0.0.1:{port}"))
            ),
            "{protocol}: the warning names the endpoint: {events:#?}"
        );
        for e in &events {
            assert!(!e.contains("hunter2") && !e.contains("user:"), "{protocol}: {e}");
        }
    }
}
