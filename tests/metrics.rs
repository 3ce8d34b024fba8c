//! Request metrics as a scraper reads them: the Prometheus endpoint of
//! `Apm::metrics_router`, parsed line by line.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_apm::{Apm, Sampler};

/// One sample line of the text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let line = line.split(" # ").next().unwrap();
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here contain no commas or escaped quotes.
        for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("k=v");
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value: value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
        });
    }
    out
}

/// The one sample named `name` whose labels include every pair of `want`.
fn find(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .cloned()
        .collect()
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found = find(samples, name, want);
    assert_eq!(found.len(), 1, "one {name} with {want:?}, found {found:?}");
    found[0].value
}

fn apm(extra: &[(&str, &str)]) -> Apm {
    let mut env = vec![
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
    ];
    env.extend_from_slice(extra);
    Apm::builder()
        .environment(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .service_name("metrics-test")
        .build()
        .expect("valid configuration")
}

async fn scrape(apm: &Apm, accept: Option<&str>) -> (String, String) {
    let mut req = Request::get("/metrics");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = apm
        .metrics_router()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}

async fn send(app: &Router, method: &str, uri: &str, body: &'static str) -> StatusCode {
    let mut req = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        req = req.header("content-length", body.len());
    }
    let res = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

fn app(apm: &Apm) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .route("/users", post(|body: String| async move { body }))
        .route("/error", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move { StatusCode::from_u16(code).unwrap() }),
        )
        .layer(apm.layer())
}

const DURATION: &str = "http_server_request_duration_seconds";

#[tokio::test]
async fn requests_are_counted_by_route_status_and_method() {
    let apm = apm(&[]);
    let app = app(&apm);
    for id in 1..=5 {
        assert_eq!(send(&app, "GET", &format!("/users/{id}"), "").await, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(send(&app, "GET", "/error", "").await, StatusCode::INTERNAL_SERVER_ERROR);
    }
    send(&app, "POST", "/users", "hello").await;

    let (ct, text) = scrape(&apm, None).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let s = parse(&text);
    let ok = [
        ("http_request_method", "GET"),
        ("http_route", "/users/{id}"),
        ("http_response_status_code", "200"),
        ("url_scheme", "http"),
        ("network_protocol_version", "1.1"),
    ];
    assert_eq!(value(&s, &format!("{DURATION}_count"), &ok), 5.0);
    let mut inf = ok.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(value(&s, &format!("{DURATION}_bucket"), &inf), 5.0);
    assert!(
        !find(&s, &format!("{DURATION}_count"), &ok)[0]
            .labels
            .contains_key("error_type"),
        "a 200 has no error.type"
    );
    let err = [
        ("http_route", "/error"),
        ("http_response_status_code", "500"),
        ("error_type", "500"),
    ];
    assert_eq!(value(&s, &format!("{DURATION}_count"), &err), 2.0);

    // Body sizes: the POST's Content-Length in, the echoed body out.
    let post = [("http_request_method", "POST"), ("http_route", "/users")];
    assert_eq!(value(&s, "http_server_request_body_size_bytes_sum", &post), 5.0);
    assert_eq!(value(&s, "http_server_response_body_size_bytes_sum", &post), 5.0);
    assert_eq!(
        value(&s, "http_server_response_body_size_bytes_sum", &ok),
        30.0,
        "5 x \"user N\""
    );

    // Nothing in flight once every body has ended.
    let active = find(&s, "http_server_active_requests", &[]);
    assert!(!active.is_empty());
    assert!(active.iter().all(|a| a.value == 0.0), "{active:?}");

    // The resource as target_info.
    assert_eq!(value(&s, "target_info", &[("service_name", "metrics-test")]), 1.0);
}

#[tokio::test]
async fn duration_runs_to_the_end_of_a_streamed_body() {
    let apm = apm(&[]);
    let app = Router::new()
        .route(
            "/stream",
            get(|| async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    tx.send("first ".into()).await.unwrap();
                    // The latency being measured (test data, not synchronisation).
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tx.send("last".into()).await.unwrap();
                });
                Body::new(ChannelBody(rx))
            }),
        )
        .layer(apm.layer());
    assert_eq!(send(&app, "GET", "/stream", "").await, StatusCode::OK);
    let s = parse(&scrape(&apm, None).await.1);
    let route = [("http_route", "/stream")];
    let sum = value(&s, &format!("{DURATION}_sum"), &route);
    assert!(sum >= 0.3, "the duration includes the 300 ms the body took: {sum}");
    let mut le = route.to_vec();
    le.push(("le", "0.25"));
    assert_eq!(
        value(&s, &format!("{DURATION}_bucket"), &le),
        0.0,
        "not in a bucket below 300 ms"
    );
    assert_eq!(value(&s, "http_server_response_body_size_bytes_sum", &route), 10.0);
}

/// A response body fed by a channel: it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<axum::body::Bytes>);

impl http_body::Body for ChannelBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

#[tokio::test]
async fn raw_paths_never_become_series() {
    let apm = apm(&[]);
    let app = app(&apm);
    for n in 0..10_000 {
        send(&app, "GET", &format!("/users/{n}"), "").await;
        send(&app, "GET", &format!("/no/such/path/{n}"), "").await;
    }
    let s = parse(&scrape(&apm, None).await.1);
    let counts = find(&s, &format!("{DURATION}_count"), &[]);
    assert_eq!(
        counts.len(),
        2,
        "one series per route template, one for unmatched: {counts:?}"
    );
    let unmatched = counts
        .iter()
        .find(|c| !c.labels.contains_key("http_route"))
        .expect("unmatched series");
    assert_eq!(unmatched.labels["http_response_status_code"], "404");
    assert_eq!(unmatched.value, 10_000.0);
}

#[tokio::test]
async fn series_beyond_the_cap_go_to_one_overflow_series_and_are_counted() {
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .metrics_max_series(3)
        .build()
        .unwrap();
    let app = app(&apm);
    for code in 200..210 {
        send(&app, "GET", &format!("/status/{code}"), "").await;
    }
    let s = parse(&scrape(&apm, None).await.1);
    let counts = find(&s, &format!("{DURATION}_count"), &[]);
    assert_eq!(counts.len(), 4, "3 series and the overflow series: {counts:?}");
    assert_eq!(
        value(&s, &format!("{DURATION}_count"), &[("otel_metric_overflow", "true")]),
        7.0
    );
    assert_eq!(value(&s, "tower_apm_metric_overflow_requests_total", &[]), 7.0);
}

#[tokio::test]
async fn in_flight_counts_a_request_until_its_body_ends_and_a_dropped_request_as_cancelled() {
    let apm = apm(&[]);
    let mut app = app(&apm).into_service::<Body>();
    let active = |s: &[Sample]| value(s, "http_server_active_requests", &[("http_request_method", "GET")]);

    // A response whose body has not been read yet is still in flight.
    let res = app
        .ready()
        .await
        .unwrap()
        .call(Request::get("/users/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(active(&parse(&scrape(&apm, None).await.1)), 1.0);
    drop(res);
    assert_eq!(active(&parse(&scrape(&apm, None).await.1)), 0.0);

    // A request dropped before it answered (the client went away).
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let mut slow = Router::new()
        .route(
            "/slow",
            get(move || {
                if let Some(tx) = started_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<&'static str>()
            }),
        )
        .layer(apm.layer())
        .into_service::<Body>();
    let fut = slow
        .ready()
        .await
        .unwrap()
        .call(Request::get("/slow").body(Body::empty()).unwrap());
    let handle = tokio::spawn(fut);
    started_rx.await.unwrap();
    assert_eq!(active(&parse(&scrape(&apm, None).await.1)), 1.0);
    handle.abort();
    let _ = handle.await;
    let s = parse(&scrape(&apm, None).await.1);
    assert_eq!(active(&s), 0.0, "an abandoned request does not leak in the gauge");
    let cancelled = [("http_route", "/slow"), ("error_type", "cancelled")];
    assert_eq!(value(&s, &format!("{DURATION}_count"), &cancelled), 1.0);
    assert!(
        !find(&s, &format!("{DURATION}_count"), &cancelled)[0]
            .labels
            .contains_key("http_response_status_code"),
        "no status was sent"
    );
}

#[tokio::test]
async fn layer_order_among_tower_http_layers_gives_the_same_numbers() {
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::set_header::SetResponseHeaderLayer;

    async fn traffic(app: &Router) {
        for _ in 0..3 {
            send(app, "GET", "/ok", "").await;
        }
        for _ in 0..2 {
            send(app, "GET", "/panic", "").await;
        }
    }
    let routes = || {
        Router::new().route("/ok", get(|| async { "ok" })).route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panicked");
                }
                "unreachable"
            }),
        )
    };
    let header = || SetResponseHeaderLayer::overriding(http::header::SERVER, http::HeaderValue::from_static("t"));

    let outside = apm(&[]);
    let app = routes()
        .layer(CatchPanicLayer::new())
        .layer(header())
        .layer(outside.layer());
    traffic(&app).await;
    let inside = apm(&[]);
    let app = routes()
        .layer(inside.layer())
        .layer(CatchPanicLayer::new())
        .layer(header());
    traffic(&app).await;

    let counts = |text: String| {
        let s = parse(&text);
        let mut c: Vec<(String, String, f64)> = find(&s, &format!("{DURATION}_count"), &[])
            .into_iter()
            .map(|x| {
                (
                    x.labels["http_route"].clone(),
                    x.labels["http_response_status_code"].clone(),
                    x.value,
                )
            })
            .collect();
        c.sort_by(|a, b| a.partial_cmp(b).unwrap());
        c
    };
    let a = counts(scrape(&outside, None).await.1);
    let b = counts(scrape(&inside, None).await.1);
    assert_eq!(
        a,
        vec![("/ok".into(), "200".into(), 3.0), ("/panic".into(), "500".into(), 2.0)]
    );
    assert_eq!(a, b);
}

#[tokio::test]
async fn openmetrics_carries_the_trace_id_of_a_sampled_request_as_an_exemplar() {
    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .build()
        .unwrap();
    let app = app(&apm);
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    for (trace, flags) in [(sampled, "01"), (unsampled, "00")] {
        let req = Request::get("/users/7")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-{flags}"))
            .body(Body::empty())
            .unwrap();
        app.clone()
            .oneshot(req)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    let (ct, text) = scrape(
        &apm,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(ct, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    assert!(text.contains("# UNIT http_server_request_duration_seconds seconds"));
    assert!(
        text.contains("# TYPE target info\ntarget_info{"),
        "OpenMetrics' info type"
    );
    assert!(
        text.contains("# TYPE process_cpu_time_seconds counter\n"),
        "counter family without _total"
    );
    let exemplars: Vec<&str> = text.lines().filter(|l| l.contains(" # {trace_id=")).collect();
    assert_eq!(
        exemplars.len(),
        1,
        "only the sampled request leaves an exemplar: {exemplars:?}"
    );
    assert!(exemplars[0].starts_with("http_server_request_duration_seconds_bucket{"));
    assert!(
        exemplars[0].contains(&format!("trace_id=\"{sampled}\"")),
        "{}",
        exemplars[0]
    );
    // Two requests counted, whether sampled or not.
    let s = parse(&text);
    assert_eq!(
        value(&s, &format!("{DURATION}_count"), &[("http_route", "/users/{id}")]),
        2.0
    );
}

#[test]
fn an_unknown_metrics_exporter_is_an_error_naming_the_variable() {
    let err = Apm::builder()
        .environment([("OTEL_METRICS_EXPORTER", "statsd")])
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("OTEL_METRICS_EXPORTER") && msg.contains("statsd"), "{msg}");
}

#[tokio::test]
async fn serving_metrics_on_a_busy_port_is_an_error_naming_the_address() {
    let apm = apm(&[]);
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = busy.local_addr().unwrap();
    let err = apm.serve_metrics(addr).await.expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // On a free port it serves the same page.
    let served = apm.serve_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(served).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("target_info{"), "{page}");
}
