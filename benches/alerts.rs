//! What one evaluation of the alert rules costs, off the request path: 100 rules
//! (error rate, latency, request rate; half of them scoped to one route) and one
//! SLO, over the request metrics of 1,000 routes with two statuses each, through
//! the public API (`Apm::evaluate_alerts`: snapshot of every series, every rule's
//! window, the SLO's budget and burn rates). Budget: under 10 ms per interval.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_apm::{Alert, Apm, Slo};

const ROUTES: usize = 1_000;
const RULES: usize = 100;

fn setup(rt: &tokio::runtime::Runtime) -> Apm {
    let mut builder = Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .metrics_max_series(10_000)
        // The thread evaluates once an hour: the bench calls it.
        .alert_interval(Duration::from_secs(3600))
        .slo(Slo::availability(0.999));
    for i in 0..RULES {
        let window = Duration::from_secs(7200);
        let alert = match i % 3 {
            0 => Alert::error_rate().above(0.05),
            1 => Alert::latency(0.95).above(Duration::from_secs(1)),
            _ => Alert::request_rate().above(1000.0),
        }
        .over(window)
        .name(format!("rule{i}"));
        builder = builder.alert(if i % 2 == 0 {
            alert.route(format!("/r{i}"))
        } else {
            alert
        });
    }
    let apm = builder.build().expect("a valid configuration");
    let mut router = Router::new();
    for i in 0..ROUTES {
        router = router.route(
            &format!("/r{i}"),
            get(|req: Request<Body>| async move {
                if req.uri().query() == Some("fail") {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        );
    }
    let router = router.layer(apm.layer());
    rt.block_on(async {
        for i in 0..ROUTES {
            for q in ["", "?fail"] {
                let req = Request::get(format!("/r{i}{q}"))
                    .body(Body::empty())
                    .expect("a request");
                router.clone().oneshot(req).await.expect("infallible");
            }
        }
    });
    apm
}

fn alerts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let apm = setup(&rt);
    apm.evaluate_alerts();
    // The rules see the traffic: 2,000 requests overall, 2 on a scoped route.
    let status = rt.block_on(async {
        let req = Request::get("/alerts").body(Body::empty()).expect("a request");
        let res = apm.alerts_router().oneshot(req).await.expect("infallible");
        let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("a body");
        serde_json::from_slice::<serde_json::Value>(&body.to_bytes()).expect("JSON")
    });
    assert_eq!(status["alerts"][0]["requests_in_window"], 2, "{status}");
    assert_eq!(status["alerts"][1]["requests_in_window"], 2 * ROUTES, "{status}");
    assert_eq!(status["slos"][0]["requests"], 2 * ROUTES, "{status}");
    c.bench_function("evaluate 100 rules + 1 SLO over 1,000 routes (2,000 series)", |b| {
        b.iter(|| apm.evaluate_alerts())
    });
}

criterion_group!(benches, alerts);
criterion_main!(benches);
