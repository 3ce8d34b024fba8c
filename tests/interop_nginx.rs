//! The client's address behind a real nginx, configured as most deployments
//! are (`proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`, every
//! other request header passed through untouched). The client connects from
//! 127.0.0.2, nginx listens on and connects from 127.0.0.1 (the trusted proxy),
//! so the three addresses in play are distinct. A client that rotates its own
//! `Forwarded` and `X-Real-IP` values is still seen as itself, in the access
//! log and the security events, and its brute force is detected.

#![cfg(all(unix, feature = "_interop"))]

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use serde_json::Value;
use tower_apm::security::{Security, SecurityEvent};
use tower_apm::{Apm, ForwardedHeader, LogOutput};

/// A real nginx on a loopback port, proxying to `upstream`; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    async fn start(upstream: SocketAddr, dir: &Path) -> Nginx {
        let bin = std::env::var("TOWER_APM_NGINX")
            .expect("TOWER_APM_NGINX: run .ci/interop-setup and source target/interop/env");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        // Running as root (CI), nginx's workers would switch to `nobody`.
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}
worker_processes 1;
events {{}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid; error_log stderr;"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let nginx = Nginx {
            child,
            port,
            dir: dir.to_owned(),
        };
        // Ready when it accepts a connection (bounded).
        let ready = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("nginx listening within 10 s");
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0")
}

/// `POST /login?user=U` fails every login, reporting the event.
async fn serve(apm: &Apm) -> SocketAddr {
    let app = Router::new()
        .route(
            "/login",
            post(|q: axum::extract::Query<HashMap<String, String>>| async move {
                (SecurityEvent::login_failed(&q["user"]), StatusCode::UNAUTHORIZED)
            }),
        )
        .layer(apm.layer());
    support::serve_with_peer(app).await
}

/// One request from 127.0.0.2, with `headers`; the status.
async fn send_from_127_0_0_2(url: &str, headers: &[(&str, String)]) -> u16 {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(IpAddr::from([127, 0, 0, 2])));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
    let mut req = http::Request::post(url);
    for (n, v) in headers {
        req = req.header(*n, v);
    }
    let res = client.request(req.body(Default::default()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    http_body_util::BodyExt::collect(res.into_body()).await.unwrap();
    status
}

fn lines(log: &Path, target: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == target)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_client_rotating_forwarded_and_x_real_ip_is_still_itself_and_its_brute_force_is_detected() {
    let dir = std::env::temp_dir().join(format!("tower-apm-nginx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let apm = Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .service_name("shop")
        .logs(LogOutput::file(&log))
        .access_log(true)
        .trusted_proxies(["127.0.0.1"])
        .forwarded_header(ForwardedHeader::XForwardedFor)
        .security(Security::new())
        .build()
        .unwrap();
    let app = serve(&apm).await;
    let nginx = Nginx::start(app, &dir.join("nginx")).await;

    for i in 0..25 {
        let url = format!("http://127.0.0.1:{}/login?user=bob", nginx.port);
        let headers = [
            ("forwarded", format!("for=6.6.6.{i}")),
            ("x-real-ip", format!("7.7.7.{i}")),
        ];
        assert_eq!(send_from_127_0_0_2(&url, &headers).await, 401);
    }
    assert!(apm.flush_logs(Duration::from_secs(10)).await);

    let access = lines(&log, "tower_apm::access");
    assert_eq!(access.len(), 25);
    assert!(access.iter().all(|a| a["client_address"] == "127.0.0.2"), "{access:#?}");

    let security = lines(&log, "tower_apm::security");
    let failed: Vec<&Value> = security
        .iter()
        .filter(|v| v["event"] == "authn_login_fail:bob")
        .collect();
    assert_eq!(failed.len(), 25);
    for (i, f) in failed.iter().enumerate() {
        assert_eq!(f["source_ip"], "127.0.0.2", "{f}");
        // The client's own header is kept as a claim, never believed.
        assert_eq!(f["forwarded_untrusted"], format!("for=6.6.6.{i}"), "{f}");
        assert_eq!(f["forwarded_untrusted_header"], "forwarded", "{f}");
    }
    let detected: Vec<&Value> = security
        .iter()
        .filter(|v| v["event"] == "malicious_brute_force:127.0.0.2,bob")
        .collect();
    assert_eq!(detected.len(), 1, "{security:#?}");
    assert!(
        !security
            .iter()
            .any(|v| v["event"].as_str().unwrap().contains("6.6.6.") || v["event"].as_str().unwrap().contains("7.7.7.")),
        "{security:#?}"
    );
    drop(nginx);
    let _ = std::fs::remove_dir_all(dir);
}
