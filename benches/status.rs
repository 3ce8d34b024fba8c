//! Rendering the status page with 1,000 routes (budget: 50 ms), and its JSON.
//!
//! A router with 1,000 routes, each requested twice (one a 500), so the page has
//! 1,000 rows with quantiles and a histogram each; then `GET /apm` and
//! `GET /apm/api/routes` through the status router, timed by criterion.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use tower::ServiceExt;

const ROUTES: usize = 1000;

fn status(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let apm = tower_apm::Apm::builder()
        .environment([
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .metrics_max_series(10_000)
        .build()
        .unwrap();
    let mut app = Router::new();
    for i in 0..ROUTES {
        app = app.route(
            &format!("/r{i}/{{id}}"),
            get(|axum::extract::Path(id): axum::extract::Path<u32>| async move {
                if id == 0 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        );
    }
    let app = app.layer(apm.layer());
    let status = apm.status_router();
    rt.block_on(async {
        for i in 0..ROUTES {
            for id in 0..2 {
                let req = Request::get(format!("/r{i}/{id}")).body(Body::empty()).unwrap();
                let res = app.clone().oneshot(req).await.unwrap();
                axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
            }
        }
    });
    let get_body = |path: &'static str| {
        let status = status.clone();
        async move {
            let res = status
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            axum::body::to_bytes(res.into_body(), 1 << 26).await.unwrap()
        }
    };
    let page = rt.block_on(get_body("/apm"));
    assert_eq!(
        page.windows(9).filter(|w| w == b"<td>GET</").count(),
        ROUTES,
        "one row per route"
    );
    let mut group = c.benchmark_group("status");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    group.bench_function("page_1000_routes", |b| b.iter(|| rt.block_on(get_body("/apm"))));
    group.bench_function("routes_json_1000_routes", |b| {
        b.iter(|| rt.block_on(get_body("/apm/api/routes")))
    });
    group.finish();
}

criterion_group!(benches, status);
criterion_main!(benches);
