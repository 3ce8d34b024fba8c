//! The app that `scripts/load.sh` and `scripts/memory.sh` put under load over
//! loopback, and the OTLP sink the memory run exports to.
//!
//! ```text
//! peers-app serve <config> [--otlp ENDPOINT]   serve GET /users/{id} on a free loopback port
//! peers-app sink                               an OTLP/gRPC receiver that counts and drops
//! ```
//!
//! Both print `listening http://ADDR` as their first line on stdout, and on
//! SIGTERM or Ctrl-C stop, flush and print one `stats: ...` line.
//!
//! `serve` builds the configuration as `tower_apm_peers::PeerSetup` does (spans
//! to an in-process exporter that drops them). With `--otlp ENDPOINT` (tower-apm
//! configurations only) it exports to a collector instead, the way a deployment
//! does: spans over OTLP/gRPC, metrics pushed every second, the access log to a file
//! rotated at 64 MiB; a collector that is down costs dropped spans, counted in the
//! stats line.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tower_apm::{Apm, LogOutput, Rotation, Sampler};
use tower_apm_peers::{Install, Peer, PeerSetup};

const USAGE: &str = "usage: peers-app serve <config> [--otlp ENDPOINT] | peers-app sink";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", config] => rt.block_on(serve(config, None)),
        ["serve", config, "--otlp", endpoint] => rt.block_on(serve(config, Some(endpoint))),
        ["sink"] => rt.block_on(sink()),
        _ => {
            let names: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
            eprintln!("{USAGE}\n  config: {}", names.join(" | "));
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn listen() -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    println!("listening http://{}", listener.local_addr().expect("a bound address"));
    listener
}

async fn serve(config: &str, otlp: Option<&str>) -> ExitCode {
    let Some(peer) = Peer::parse(config) else {
        eprintln!("unknown configuration {config:?}\n{USAGE}");
        return ExitCode::from(2);
    };
    match otlp {
        None => {
            let setup = PeerSetup::new(peer, Install::Global);
            let listener = listen().await;
            axum::serve(listener, setup.router.clone())
                .with_graceful_shutdown(stop_signal())
                .await
                .expect("the server runs");
            let exported = setup.shutdown().await;
            println!("stats: {exported} spans exported");
            ExitCode::SUCCESS
        }
        Some(endpoint) => {
            let logs = match peer {
                Peer::TowerApm => true,
                Peer::TowerApmTracesMetrics => false,
                _ => {
                    eprintln!("--otlp applies to the tower-apm configurations only");
                    return ExitCode::from(2);
                }
            };
            let mut builder = Apm::builder()
                .service_name("peers-app")
                .environment([
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
                ])
                .sampler(Sampler::AlwaysOn)
                .metrics(true);
            if logs {
                let path = std::env::temp_dir().join(format!("peers-app-{}.log", std::process::id()));
                builder = builder.logs(LogOutput::file(path).rotate(Rotation::Size(64 << 20)).backups(1));
            }
            let apm = match builder.build() {
                Ok(apm) => apm,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let listener = listen().await;
            axum::serve(listener, tower_apm_peers::router().layer(apm.layer()))
                .with_graceful_shutdown(stop_signal())
                .await
                .expect("the server runs");
            // A collector that is down fails the last flush too: the stats say what was lost.
            let flushed = apm.shutdown_within(std::time::Duration::from_secs(3)).await;
            println!("stats: {:?}; shutdown: {flushed:?}", apm.stats());
            ExitCode::SUCCESS
        }
    }
}

/// What the sink has received.
#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    metric_exports: AtomicU64,
    log_records: AtomicU64,
}

#[derive(Clone, Default)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let records: usize = request
            .get_ref()
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        self.0.log_records.fetch_add(records as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

async fn sink() -> ExitCode {
    let sink = Sink::default();
    let listener = listen().await;
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    let served = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()).accept_compressed(gzip))
        .add_service(MetricsServiceServer::new(sink.clone()).accept_compressed(gzip))
        .add_service(LogsServiceServer::new(sink.clone()).accept_compressed(gzip))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop_signal())
        .await;
    println!("stats: {:?}", sink.0);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sink: {e}");
            ExitCode::FAILURE
        }
    }
}
