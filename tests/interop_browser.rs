//! The status page in a real browser: Debian's Chromium, headless
//! (`.ci/interop-setup` installs it and names it in `TOWER_APM_CHROMIUM`).
//! After known traffic to a test app, the page as Chromium renders it (its DOM
//! after scripts ran) shows the route rows with their counts, the failed request
//! under recent failed requests, and the error-rate alert firing; the failed
//! request's link opens a waterfall with the server span and its child span.
//! Chromium's network log shows the page asked nothing of any other host, and
//! its console no Content-Security-Policy violation (the page's script runs,
//! allowed by its hash). A
//! screenshot is saved as `target/status-page.png` for people to look at.

#![cfg(feature = "_interop")]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use serde_json::Value;
use tower_apm::{Alert, AlertState, Apm};

fn chromium() -> String {
    std::env::var("TOWER_APM_CHROMIUM")
        .expect("TOWER_APM_CHROMIUM: run .ci/interop-setup and source target/interop/env")
}

/// Runs headless Chromium on `url` with `args` (a fresh profile each time, no
/// network beyond loopback, the page's console on standard error); its
/// standard output, after checking that no Content-Security-Policy violation
/// was reported.
async fn chromium_run(profile: &Path, url: &str, args: &[String]) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        // Console messages, CSP violations among them, on standard error.
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A script or style the page's policy blocks is reported as "... violates
    // the following Content Security Policy directive ...": the reload script
    // must run, allowed by its hash.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let violations: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Content Security Policy"))
        .collect();
    assert!(violations.is_empty(), "{url}: {violations:#?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The URLs the page loaded (requests whose top-level site is the page's),
/// from Chromium's NetLog.
fn page_requests(net_log: &Path, site: &str) -> Vec<String> {
    let log: Value = serde_json::from_str(&std::fs::read_to_string(net_log).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .unwrap();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| {
            e["params"]["network_isolation_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(site))
        })
        .map(|e| e["params"]["url"].as_str().unwrap().to_owned())
        .collect()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_routes_a_failed_request_its_waterfall_and_a_firing_alert() {
    let receiver = support::Receiver::start().await;
    let apm = Apm::builder()
        .environment([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint().as_str()),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ])
        .service_name("shop")
        .alert(
            Alert::error_rate()
                .above(0.05)
                .over(Duration::from_secs(3600))
                .min_requests(1),
        )
        .alert_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let db = apm.database("postgresql");
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/fail",
            get(move || {
                let db = db.clone();
                async move {
                    let _ = db
                        .statement("UPDATE carts SET total = 12 WHERE id = 3")
                        .run(async { Err::<(), _>(std::io::Error::other("deadlock")) })
                        .await;
                    (StatusCode::INTERNAL_SERVER_ERROR, "no")
                }
            }),
        )
        .layer(apm.layer())
        .merge(apm.status_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    support::hit(&base, "/ok", 7).await;
    support::hit(&base, "/fail", 1).await;
    apm.force_flush().await.unwrap();
    apm.evaluate_alerts();
    assert_eq!(apm.alert_state("HighErrorRate"), Some(AlertState::Firing));

    let dir = std::env::temp_dir().join(format!("tower-apm-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let net_log = dir.join("net.json");
    let dom = chromium_run(
        &dir.join("profile-1"),
        &format!("{base}/apm"),
        &[format!("--log-net-log={}", net_log.display()), "--dump-dom".into()],
    )
    .await;
    // The routes table: one row per route, with its count.
    assert!(
        dom.contains("<td class=\"l\">/ok</td><td>GET</td><td class=\"count\">7</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"l\">/fail</td><td>GET</td><td class=\"count\">1</td>"),
        "{dom}"
    );
    // The failed request, linked to its waterfall.
    let failed = dom
        .split("<table id=\"failed\">")
        .nth(1)
        .expect("the failed requests table");
    let href = failed
        .split("href=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .expect("a link to the failed request");
    assert!(href.starts_with("/apm/traces/"), "{href}");
    assert!(
        failed.split("</table>").next().unwrap().contains(">GET /fail</a>"),
        "{failed}"
    );
    // The alert, firing.
    assert!(
        dom.contains("<td class=\"l\">HighErrorRate</td><td class=\"firing\">firing</td>"),
        "{dom}"
    );

    // Only the app's own host was asked for anything.
    let requests = page_requests(&net_log, "http://127.0.0.1");
    assert!(requests.iter().any(|u| u.ends_with("/apm")), "{requests:?}");
    for u in &requests {
        assert!(
            u.starts_with(&base),
            "the page asked another host: {u} (all: {requests:?})"
        );
    }

    // The waterfall: the server span and its child, the statement sanitized.
    let waterfall = chromium_run(&dir.join("profile-2"), &format!("{base}{href}"), &["--dump-dom".into()]).await;
    let rows: Vec<&str> = waterfall.split("<tr class=\"span ").skip(1).collect();
    assert_eq!(rows.len(), 2, "{waterfall}");
    assert!(
        rows[0].starts_with("server\"><td class=\"l\">GET /fail</td>"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].starts_with("client\"><td class=\"l\">UPDATE carts</td>"),
        "{}",
        rows[1]
    );
    assert!(
        rows[1].contains("UPDATE carts SET total = ? WHERE id = ?"),
        "{}",
        rows[1]
    );

    // A picture for people.
    let shot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium_run(
        &dir.join("profile-3"),
        &format!("{base}/apm"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".into(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    apm.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
