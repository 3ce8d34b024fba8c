//! Test support: a real Prometheus 2.42 server and `promtool`, both from the
//! Debian package that `.ci/interop-setup` installs. It exports
//! `TOWER_APM_PROMETHEUS` and `TOWER_APM_PROMTOOL` into `target/interop/env`.
//!
//! Include it from a test with `#[path = "support/prometheus.rs"] mod prometheus;`.
//!
//! Facts about 2.42 that the tests rely on:
//! - Its scrape `Accept` header lists OpenMetrics first
//!   (`application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,
//!   text/plain;version=0.0.4;q=0.5,*/*;q=0.1`), so a target that offers OpenMetrics is scraped as
//!   OpenMetrics. Exemplars are stored only from OpenMetrics scrapes, and only with
//!   `--enable-feature=exemplar-storage`, which [`PrometheusServer::start`] passes.
//! - The first scrape happens ≈5–6 s after start (the scrape manager applies targets on a
//!   fixed 5 s tick), so start one server per test binary where possible.
//! - `promtool check metrics` parses text format 0.0.4 only: OpenMetrics exemplars are a
//!   parse error there.

#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

const ENV_HINT: &str = "run .ci/interop-setup and source target/interop/env";

/// Overall deadline for `GET /-/ready` to answer 200.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Per-request deadline for calls to the Prometheus HTTP API.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `$TOWER_APM_PROMTOOL check metrics` with `text` on stdin.
///
/// `Ok` on exit 0. Otherwise `Err` with the exit code and stderr: 1 is a parse
/// error, 3 is lint problems (missing HELP, bad naming, ...), which count as failure too.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let bin = std::env::var("TOWER_APM_PROMTOOL").unwrap_or_else(|_| panic!("TOWER_APM_PROMTOOL: {ENV_HINT}"));
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    // Write from another thread so a large input cannot deadlock against full output pipes.
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // promtool may stop reading early on a parse error: a broken pipe is not our failure.
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {bin}: {e}"));
    writer.join().unwrap();
    if out.status.success() {
        return Ok(());
    }
    let code = out
        .status
        .code()
        .map_or_else(|| "killed by a signal".to_owned(), |c| c.to_string());
    let mut msg = format!("promtool check metrics exited with {code}");
    for stream in [&out.stderr, &out.stdout] {
        let s = String::from_utf8_lossy(stream);
        if !s.trim().is_empty() {
            msg.push_str(": ");
            msg.push_str(s.trim());
        }
    }
    Err(msg)
}

/// A running Prometheus that scrapes one target as job `app` every second.
///
/// Dropping it stops the server and removes its temporary directory. If the test
/// process dies without dropping it (a `static`, an abort), the server still stops:
/// it is started under a watcher that kills it when our end of its stdin closes.
pub struct PrometheusServer {
    /// Where the HTTP API listens (`http://{addr}/api/v1/...`).
    pub addr: SocketAddr,
    /// When [`PrometheusServer::start`] was called.
    pub started_at: Instant,
    /// How long it took until `GET /-/ready` answered 200.
    pub ready_after: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl PrometheusServer {
    /// Writes a config scraping `target` at `metrics_path`, starts
    /// `$TOWER_APM_PROMETHEUS` on a free loopback port, and waits until it is ready.
    pub async fn start(target: SocketAddr, metrics_path: &str) -> PrometheusServer {
        let bin = std::env::var("TOWER_APM_PROMETHEUS").unwrap_or_else(|_| panic!("TOWER_APM_PROMETHEUS: {ENV_HINT}"));
        let started_at = Instant::now();
        let dir = unique_temp_dir();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(target, metrics_path)).unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();

        // The free port is found by binding and dropping; another process may take it in
        // between. Prometheus then exits at once, so try a new port a few times.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = free_port();
            let (child, stdin) = spawn(&bin, &dir, addr);
            let mut server = PrometheusServer {
                addr,
                started_at,
                ready_after: Duration::ZERO,
                child,
                stdin: Some(stdin),
                dir: dir.clone(),
                // No idle pool: a server kept in a `static` outlives the runtime of the test
                // that started it, and pooled connections would be bound to that runtime.
                client: Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build_http(),
            };
            match server.wait_ready(started_at + READY_DEADLINE).await {
                Ok(()) => {
                    server.ready_after = started_at.elapsed();
                    return server;
                }
                Err(exited) if exited && attempt < 3 && server.log().contains("address already in use") => {
                    // Keep the directory for the next attempt; only the process is gone.
                    server.dir = PathBuf::new();
                    continue;
                }
                Err(_) => {
                    let tail = server.log_tail(40);
                    let what = match server.child.try_wait() {
                        Ok(Some(status)) => format!("exited ({status})"),
                        _ => format!("was not ready within {READY_DEADLINE:?}"),
                    };
                    drop(server);
                    panic!("prometheus {what}; log tail:\n{tail}");
                }
            }
        }
    }

    /// `Err(true)` when the process exited, `Err(false)` on timeout.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), bool> {
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(true);
            }
            if let Ok((status, _)) = self.get(&url).await {
                if status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Instant query: `GET /api/v1/query?query=...`. Panics unless `status` is
    /// `"success"`; returns `data.result`.
    pub async fn query(&self, promql: &str) -> Value {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        data["result"].clone()
    }

    /// `GET /api/v1/query_exemplars?query=...&start=...&end=...` (Unix seconds).
    /// Panics unless `status` is `"success"`; returns `data`, an array of
    /// `{seriesLabels, exemplars: [{labels, value, timestamp}]}`.
    pub async fn query_exemplars(&self, promql: &str, start_secs: f64, end_secs: f64) -> Value {
        self.api(&format!(
            "/api/v1/query_exemplars?query={}&start={start_secs}&end={end_secs}",
            percent_encode(promql)
        ))
        .await
    }

    /// `GET /api/v1/targets`: `data.activeTargets`, each with `health`, `lastError`,
    /// `lastScrape`, `scrapeUrl`, ...
    pub async fn targets(&self) -> Value {
        self.api("/api/v1/targets?state=active").await["activeTargets"].clone()
    }

    /// Health of the first active target (`"up"`, `"down"`, `"unknown"`) and its last error.
    pub async fn target_health(&self) -> (String, String) {
        let t = &self.targets().await[0];
        (
            t["health"].as_str().unwrap_or("none").to_owned(),
            t["lastError"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Re-runs `promql` every 250 ms until `f(result)` holds and returns that result.
    /// Prometheus scrapes on its own clock, so asking again is the only way to learn
    /// that a scrape has landed. Panics with the last result and the target's state
    /// once `deadline` has passed.
    pub async fn wait_until<F: Fn(&Value) -> bool>(&self, promql: &str, deadline: Duration, f: F) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let result = self.query(promql).await;
            if f(&result) {
                return result;
            }
            if Instant::now() >= until {
                let targets = self.targets().await;
                panic!(
                    "after {deadline:?}, `{promql}` still gives {result}\ntargets: {targets}\nprometheus log tail:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The server's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.join("prometheus.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of [`PrometheusServer::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `GET path` on the API; panics unless HTTP 200 and `status == "success"`; returns `data`.
    async fn api(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url());
        let (status, body) = self.get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let json: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {url}: {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            status == 200 && json["status"] == "success",
            "GET {url}: {status} {json}"
        );
        json["data"].clone()
    }

    async fn get(&self, url: &str) -> Result<(u16, Bytes), String> {
        let req = http::Request::get(url).body(Empty::new()).map_err(|e| e.to_string())?;
        let fut = async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            eprintln!("prometheus log tail:\n{}", self.log_tail(20));
        }
        // Closing stdin makes the watcher send SIGTERM; SIGKILL if that takes too long.
        drop(self.stdin.take());
        let until = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts Prometheus as `sh`, which forks a watcher and then `exec`s Prometheus under
/// its own pid. The watcher reads stdin (saved on fd 3: a background job's stdin is
/// `/dev/null`) until EOF, that is until our process closes its end or dies, and then
/// sends SIGTERM to that pid.
fn spawn(bin: &str, dir: &Path, addr: SocketAddr) -> (Child, ChildStdin) {
    const WATCH: &str = r#"exec 3<&0; (cat <&3 >/dev/null; kill $$ 2>/dev/null) & exec "$@" 3<&-"#;
    let log = File::create(dir.join("prometheus.log")).unwrap();
    let mut child = Command::new("/bin/sh")
        .args(["-c", WATCH, "prometheus", bin])
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--enable-feature=exemplar-storage")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

fn config_yaml(target: SocketAddr, metrics_path: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars: this quotes any path safely.
    let path = serde_json::to_string(metrics_path).unwrap();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: app\n    metrics_path: {path}\n    static_configs:\n      - targets: [\"{target}\"]\n"
    )
}

fn unique_temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tower-apm-prometheus-{}-{n}-{nanos}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
