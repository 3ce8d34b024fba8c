//! The status page's JSON after known traffic through the layer: exact counts per
//! route, the 1-minute figures, the recent failed and slow requests with the
//! spans of their traces (server span and its child), the token, and the HTML
//! rows a person reads. (In a real browser: `tests/interop_browser.rs`.)

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use support::Receiver;
use tower::ServiceExt;
use tower_apm::Apm;

pub fn app(apm: &Apm) -> Router {
    let db = apm.database("postgresql");
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(move || {
                let db = db.clone();
                async move {
                    let _ = db
                        .statement("SELECT * FROM orders WHERE id = 7")
                        .run(async { Err::<(), _>(std::io::Error::other("connection reset")) })
                        .await;
                    (StatusCode::INTERNAL_SERVER_ERROR, "no")
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                "slow"
            }),
        )
        .layer(apm.layer())
        // Not through the layer: the page's own requests are not app traffic.
        .merge(apm.status_router())
}

pub fn apm(receiver: &Receiver, token: Option<&str>) -> Apm {
    let mut b = Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint().as_str()),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("shop")
        .recent_traces(10, Duration::from_millis(50))
        .trace_url("http://jaeger.example/trace/{trace_id}");
    if let Some(t) = token {
        b = b.status_token(t);
    }
    b.build().unwrap()
}

async fn get_path(app: &Router, path: &str, bearer: Option<&str>) -> (StatusCode, String) {
    let (status, _, body) = request(app, path, bearer.map(|t| format!("Bearer {t}")).as_deref()).await;
    (status, body)
}

/// `GET path` with `authorization` as the whole header value: status, headers, body.
async fn request(app: &Router, path: &str, authorization: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(path);
    if let Some(v) = authorization {
        req = req.header("authorization", v);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 22).await.unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn json(app: &Router, path: &str) -> Value {
    let (status, body) = get_path(app, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn the_json_shows_the_traffic_and_the_failed_and_slow_requests_with_their_spans() {
    let receiver = Receiver::start().await;
    let apm = apm(&receiver, None);
    let app = app(&apm);
    for _ in 0..5 {
        assert_eq!(get_path(&app, "/ok", None).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(get_path(&app, "/fail", None).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(get_path(&app, "/slow", None).await.0, StatusCode::OK);
    apm.force_flush().await.unwrap();

    let routes = json(&app, "/apm/api/routes").await;
    let row = |route: &str| {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .unwrap_or_else(|| panic!("no {route} in {routes}"))
            .clone()
    };
    assert_eq!(row("/ok")["figures"]["requests"], 5);
    assert_eq!(row("/ok")["errors"], 0);
    assert_eq!(row("/ok")["figures"]["error_ratio"], 0.0);
    assert_eq!(row("/fail")["figures"]["requests"], 2);
    assert_eq!(row("/fail")["errors"], 2);
    assert_eq!(row("/fail")["figures"]["error_ratio"], 1.0);
    assert_eq!(row("/slow")["method"], "GET");
    // The 60 ms request is in the 0.05..0.075 s bucket.
    assert_eq!(row("/slow")["buckets"][4], 1);
    let p50 = row("/slow")["figures"]["p50"].as_f64().unwrap();
    assert!((0.05..=0.075).contains(&p50), "{p50}");

    let overview = json(&app, "/apm/api/overview").await;
    assert_eq!(overview["service"], "shop");
    assert_eq!(overview["in_flight"], 0);
    let minute = &overview["windows"]["1m"];
    assert_eq!(minute["requests"], 8, "{overview}");
    assert!(
        (minute["error_ratio"].as_f64().unwrap() - 0.25).abs() < 1e-9,
        "{overview}"
    );
    assert!(
        overview["telemetry"]["spans_exported"].as_u64().unwrap() >= 10,
        "{overview}"
    );
    assert!(overview["process"]["resident_bytes"].as_u64().unwrap() > 0);

    let traces = json(&app, "/apm/api/traces").await;
    let failed = traces["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["name"], "GET /fail");
    assert_eq!(failed[0]["status"], 500);
    assert_eq!(failed[0]["spans"], 2);
    let slow = traces["slow"].as_array().unwrap();
    assert_eq!(slow.len(), 1);
    assert_eq!(slow[0]["name"], "GET /slow");
    assert!(slow[0]["duration_ms"].as_f64().unwrap() >= 60.0);

    let id = failed[0]["trace_id"].as_str().unwrap();
    let trace = json(&app, &format!("/apm/api/traces/{id}")).await;
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        (spans[0]["name"].as_str(), spans[0]["kind"].as_str()),
        (Some("GET /fail"), Some("server"))
    );
    assert_eq!(
        (spans[1]["name"].as_str(), spans[1]["kind"].as_str()),
        (Some("SELECT orders"), Some("client"))
    );
    assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"]);
    assert_eq!(spans[1]["detail"], "SELECT * FROM orders WHERE id = ?");
    assert_eq!(spans[1]["error"], true);
    // The same spans reached the collector.
    let exported = receiver.wait_for(10).await;
    assert!(exported.iter().any(|s| support::hex(&s.span.trace_id) == id));
    assert_eq!(
        get_path(&app, "/apm/api/traces/0123456789abcdef0123456789abcdef", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // The page a person reads.
    let (status, html) = get_path(&app, "/apm", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<td class=\"l\">/fail</td><td>GET</td><td class=\"count\">2</td>"),
        "{html}"
    );
    assert!(html.contains(&format!("/apm/traces/{id}")), "{html}");
    assert!(html.contains(&format!("http://jaeger.example/trace/{id}")), "{html}");
    let (status, waterfall) = get_path(&app, &format!("/apm/traces/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        waterfall.contains("SELECT orders") && waterfall.contains("GET /fail"),
        "{waterfall}"
    );
    assert!(
        !html.contains("id = 7") && !waterfall.contains("id = 7"),
        "a literal left the process"
    );
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_a_token_the_page_answers_only_to_it() {
    let receiver = Receiver::start().await;
    let apm = apm(&receiver, Some("s3cret"));
    let app = app(&apm);
    let (status, body) = get_path(&app, "/apm", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("token"), "{body}");
    assert_eq!(
        get_path(&app, "/apm/api/routes", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_path(&app, "/apm/api/routes", Some("s3cret")).await.0,
        StatusCode::OK
    );
    // The scheme in any case (RFC 9110), with any number of spaces after it.
    for auth in ["bearer s3cret", "BEARER s3cret", "Bearer    s3cret"] {
        assert_eq!(
            request(&app, "/apm/api/routes", Some(auth)).await.0,
            StatusCode::OK,
            "{auth}"
        );
    }
    for auth in ["bearer s3cre", "Basic s3cret", "bearer", "s3cret"] {
        assert_eq!(
            request(&app, "/apm/api/routes", Some(auth)).await.0,
            StatusCode::UNAUTHORIZED,
            "{auth}"
        );
    }
    let (status, html) = get_path(&app, "/apm?token=s3cret", None).await;
    assert_eq!(status, StatusCode::OK);
    // Links within the page carry the token on.
    get_path(&app, "/fail", None).await;
    apm.force_flush().await.unwrap();
    let (_, html2) = get_path(&app, "/apm?token=s3cret", None).await;
    assert!(html2.contains("?token=s3cret"), "{html2}");
    assert!(html.starts_with("<!DOCTYPE html>"));
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_lifecycle_follows_the_shutdown() {
    let receiver = Receiver::start().await;
    let apm = apm(&receiver, None);
    let app = app(&apm);
    assert_eq!(json(&app, "/apm/api/overview").await["lifecycle"], Value::Null);
    let shutdown = tower_apm::Shutdown::builder()
        .handle_signals(false)
        .pre_stop_delay(Duration::from_secs(30))
        .telemetry(&apm)
        .build();
    let l = &json(&app, "/apm/api/overview").await["lifecycle"];
    assert_eq!(
        (l["phase"].as_str(), l["ready"].as_bool()),
        (Some("running"), Some(true)),
        "{l}"
    );
    // Readiness fails first, while still serving (the pre-stop delay).
    shutdown.trigger();
    let l = &json(&app, "/apm/api/overview").await["lifecycle"];
    assert_eq!(
        (l["phase"].as_str(), l["ready"].as_bool()),
        (Some("not_ready"), Some(false)),
        "{l}"
    );
    let (_, html) = get_path(&app, "/apm", None).await;
    assert!(html.contains("lifecycle<b>not_ready</b>not ready"), "{html}");
}

/// Standard base64 with padding (RFC 4648), for the CSP hash of the script.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ABC[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

fn directive<'a>(csp: &'a str, name: &str) -> &'a str {
    csp.split(';')
        .map(str::trim)
        .find(|d| d.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {csp}"))
}

#[tokio::test]
async fn the_page_and_its_json_stay_out_of_caches_referers_and_frames_and_run_only_their_own_script() {
    let receiver = Receiver::start().await;
    let apm = apm(&receiver, Some("s3cret"));
    let app = app(&apm);
    get_path(&app, "/fail", None).await;
    apm.force_flush().await.unwrap();
    let (_, _, body) = request(&app, "/apm/api/traces", Some("Bearer s3cret")).await;
    let traces: Value = serde_json::from_str(&body).unwrap();
    let id = traces["failed"][0]["trace_id"]
        .as_str()
        .expect("the failed request, kept")
        .to_owned();
    for (path, auth, status) in [
        ("/apm", Some("Bearer s3cret"), StatusCode::OK),
        ("/apm?token=s3cret", None, StatusCode::OK),
        (&format!("/apm/traces/{id}?token=s3cret"), None, StatusCode::OK),
        ("/apm/api/overview", Some("Bearer s3cret"), StatusCode::OK),
        (&format!("/apm/api/traces/{id}"), Some("Bearer s3cret"), StatusCode::OK),
        (
            "/apm/api/traces/0123456789abcdef0123456789abcdef",
            Some("Bearer s3cret"),
            StatusCode::NOT_FOUND,
        ),
        ("/apm", None, StatusCode::UNAUTHORIZED),
        ("/apm/api/routes", Some("Bearer nope"), StatusCode::UNAUTHORIZED),
    ] {
        let (got, headers, _) = request(&app, path, auth).await;
        assert_eq!(got, status, "{path}");
        for (name, value) in [
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
            ("x-content-type-options", "nosniff"),
        ] {
            assert_eq!(
                headers.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name} of {path}"
            );
        }
    }

    // The HTML: a CSP that allows the page's script by its hash, nothing inline
    // otherwise, no framing.
    let (_, headers, html) = request(&app, "/apm", Some("Bearer s3cret")).await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert_eq!(directive(csp, "default-src"), "default-src 'none'");
    assert_eq!(directive(csp, "frame-ancestors"), "frame-ancestors 'none'");
    assert!(!csp.contains("http"), "no external source: {csp}");
    let script_src = directive(csp, "script-src");
    assert!(!script_src.contains("unsafe-inline"), "{csp}");
    let scripts: Vec<&str> = html
        .split("<script>")
        .skip(1)
        .map(|s| s.split("</script>").next().unwrap())
        .collect();
    assert_eq!(scripts.len(), 1, "{html}");
    assert!(scripts[0].contains("location.reload()"), "{}", scripts[0]);
    use sha2::Digest;
    let hash = format!("'sha256-{}'", base64(&sha2::Sha256::digest(scripts[0].as_bytes())));
    assert_eq!(
        script_src,
        format!("script-src {hash}"),
        "the hash of the script served"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    let (_, trace_headers, _) = request(&app, &format!("/apm/traces/{id}"), Some("Bearer s3cret")).await;
    assert_eq!(trace_headers["content-security-policy"], csp);
    apm.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_ask_for_their_own_token_only_when_given_one_on_any_address() {
    let receiver = Receiver::start().await;
    // Default: /metrics open, as Prometheus scrapes usually are, even with a
    // status token.
    let open = apm(&receiver, Some("s3cret"));
    let (status, _, body) = request(&open.metrics_router(), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("http_server_request_duration_seconds"), "{body}");

    let apm = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .status_token("s3cret")
        .metrics_token("scrape-9f2c")
        .build()
        .unwrap();
    let metrics = apm.metrics_router();
    assert_eq!(request(&metrics, "/metrics", None).await.0, StatusCode::UNAUTHORIZED);
    // The status token does not open /metrics: each its own.
    assert_eq!(
        request(&metrics, "/metrics", Some("Bearer s3cret")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, _) = request(&metrics, "/metrics", Some("bearer scrape-9f2c")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");

    // On their own ports, the same guard.
    let any = "127.0.0.1:0".parse().unwrap();
    for (addr, path, token) in [
        (apm.serve_metrics(any).await.unwrap(), "/metrics", "scrape-9f2c"),
        (apm.serve_status(any).await.unwrap(), "/apm/api/overview", "s3cret"),
    ] {
        let url = format!("http://{addr}{path}");
        assert_eq!(support::get(url.clone()).await.0, 401, "{url}");
        assert_eq!(support::get(format!("{url}?token={token}")).await.0, 200, "{url}");
    }
    apm.shutdown().await.unwrap();
    open.shutdown().await.unwrap();
}

#[test]
fn a_token_that_a_header_or_a_query_cannot_carry_is_refused_without_showing_it() {
    for (token, setting) in [
        ("", "status_token"),
        ("two words", "status_token"),
        ("a&b", "metrics_token"),
    ] {
        let b = Apm::builder().environment([("OTEL_TRACES_EXPORTER", "none")]);
        let b = if setting == "status_token" {
            b.status_token(token)
        } else {
            b.metrics_token(token)
        };
        let err = b.build().unwrap_err().to_string();
        assert!(err.contains(setting) && err.contains("token68"), "{err}");
        if !token.is_empty() {
            assert!(!err.contains(token), "the token is in the error: {err}");
        }
    }
}
