//! `http.client.request.duration` in the Prometheus text: calls through
//! `Apm::client_layer` and (feature `reqwest`) `Apm::reqwest_middleware` to a
//! real server on a loopback port land in the same series.

mod support;

use axum::Router;
use axum::body::Body;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::serve_ok_fail;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_calls_are_counted_in_http_client_request_duration_seconds() {
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .build()
        .unwrap();
    let server = tower_apm::Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .build()
        .unwrap();
    let base = serve_ok_fail(server.layer(), Router::new()).await;
    let port = base.rsplit(':').next().unwrap().to_owned();

    let layered = ServiceBuilder::new()
        .layer(apm.client_layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>());
    for path in ["/ok", "/fail"] {
        let req = Request::get(format!("{base}{path}")).body(Empty::new()).unwrap();
        layered.clone().oneshot(req).await.unwrap();
    }
    #[cfg(feature = "reqwest")]
    {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(apm.reqwest_middleware())
            .build();
        assert_eq!(client.get(format!("{base}/ok")).send().await.unwrap().status(), 200);
    }
    let ok_calls = if cfg!(feature = "reqwest") { 2 } else { 1 };

    let res = apm
        .metrics_router()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("# TYPE http_client_request_duration_seconds histogram\n"),
        "{text}"
    );
    let labels = |status: &str, error: &str| {
        format!(
            "{{http_request_method=\"GET\",server_address=\"127.0.0.1\",server_port=\"{port}\",\
             http_response_status_code=\"{status}\",{error}url_scheme=\"http\",network_protocol_version=\"1.1\"}}"
        )
    };
    let ok = format!(
        "http_client_request_duration_seconds_count{} {ok_calls}\n",
        labels("200", "")
    );
    assert!(text.contains(&ok), "one series for every client: {ok}\n{text}");
    let fail = format!(
        "http_client_request_duration_seconds_count{} 1\n",
        labels("500", "error_type=\"500\",")
    );
    assert!(text.contains(&fail), "{fail}\n{text}");
    let first_bucket = format!(
        "http_client_request_duration_seconds_bucket{},le=\"0.005\"}} ",
        labels("200", "").trim_end_matches('}')
    );
    assert!(text.contains(&first_bucket), "{first_bucket}\n{text}");
    // The server's histogram is not where client calls go.
    assert!(!text.contains("http_server_request_duration_seconds_count{"), "{text}");
}
