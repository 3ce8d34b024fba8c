//! The exporter at the end of the pipeline: OTLP (gRPC or HTTP/protobuf) through
//! `opentelemetry-otlp`, or any SDK `SpanExporter` the user supplies.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::config::{ConfigError, OtlpConfig, Protocol};
use crate::redact::scrub_userinfo;

type ExportFuture<'a> = Pin<Box<dyn Future<Output = OTelSdkResult> + Send + 'a>>;

/// An object-safe view of `SpanExporter` (whose `export` returns `impl Future`).
pub(crate) trait DynSpanExporter: Send + Sync + Debug {
    fn export_batch(&self, batch: Vec<SpanData>) -> ExportFuture<'_>;
    fn set_resource_dyn(&mut self, resource: &Resource);
    fn shutdown_dyn(&self, timeout: Duration) -> OTelSdkResult;
}

impl<T: SpanExporter + 'static> DynSpanExporter for T {
    fn export_batch(&self, batch: Vec<SpanData>) -> ExportFuture<'_> {
        Box::pin(self.export(batch))
    }

    fn set_resource_dyn(&mut self, resource: &Resource) {
        self.set_resource(resource);
    }

    fn shutdown_dyn(&self, timeout: Duration) -> OTelSdkResult {
        self.shutdown_with_timeout(timeout)
    }
}

/// How the export thread gets its exporter.
#[derive(Debug)]
pub(crate) enum ExporterSpec {
    /// Built on the export thread, inside its runtime (tonic needs one).
    Otlp(OtlpConfig),
    /// Given by the user.
    Custom(Box<dyn DynSpanExporter>),
}

impl ExporterSpec {
    pub(crate) fn build(self) -> Result<Box<dyn DynSpanExporter>, ConfigError> {
        match self {
            ExporterSpec::Custom(e) => Ok(e),
            ExporterSpec::Otlp(cfg) => {
                build_otlp(&cfg).map_err(|e| ConfigError::Exporter(scrub_userinfo(&e.to_string()).into_owned()))
            }
        }
    }
}

fn build_otlp(cfg: &OtlpConfig) -> Result<Box<dyn DynSpanExporter>, opentelemetry_otlp::ExporterBuildError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match cfg.protocol {
        Protocol::Grpc => builder
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_metadata(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(
                cfg.header_map(),
            ))
            .build()?,
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .with_headers(cfg.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build()?,
    };
    Ok(Box::new(exporter))
}
