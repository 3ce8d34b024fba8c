//! Resolved configuration: builder settings first, then the standard `OTEL_*`
//! variables, then built-in defaults.
//!
//! Every variable is validated: a value that cannot be used is a [`ConfigError`]
//! naming the variable and the value, never a panic and never silently ignored.

mod env;
mod error;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

pub(crate) use env::EnvSource;
pub use error::ConfigError;

use crate::trace::Sampler;
use env::{parse_headers, parse_key_values};

use crate::redact::url_for_display;

/// The OTLP transport, as `OTEL_EXPORTER_OTLP_PROTOCOL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`), default port 4317.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`), default port 4318.
    HttpProtobuf,
}

/// What the builder was told explicitly; these win over the environment.
#[derive(Default)]
pub(crate) struct Settings {
    pub(crate) env: EnvSource,
    pub(crate) service_name: Option<String>,
    pub(crate) service_version: Option<String>,
    pub(crate) resource: Vec<(String, String)>,
    pub(crate) disabled: Option<bool>,
    pub(crate) endpoint: Option<String>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) sampler: Option<Sampler>,
    pub(crate) custom_exporter: bool,
    pub(crate) metrics: Option<bool>,
    pub(crate) max_series: Option<usize>,
}

/// Shows the endpoint without its userinfo and the headers' names only.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("env", &self.env)
            .field("service_name", &self.service_name)
            .field("service_version", &self.service_version)
            .field("resource", &self.resource)
            .field("disabled", &self.disabled)
            .field("endpoint", &self.endpoint.as_deref().map(url_for_display))
            .field("protocol", &self.protocol)
            .field("headers", &HeaderNames(&self.headers))
            .field("timeout", &self.timeout)
            .field("sampler", &self.sampler)
            .field("custom_exporter", &self.custom_exporter)
            .field("metrics", &self.metrics)
            .field("max_series", &self.max_series)
            .finish()
    }
}

/// Headers in `Debug` output: each name, with its value hidden.
struct HeaderNames<'a>(&'a [(String, String)]);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k, format_args!("<hidden>"))))
            .finish()
    }
}

/// Which metric readers run (`OTEL_METRICS_EXPORTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Requests are aggregated in the process (for `/metrics`, alerts, the
    /// status page and the shutdown's drain): on unless the builder's
    /// `metrics(false)`. `OTEL_METRICS_EXPORTER` chooses exporters only.
    pub(crate) enabled: bool,
    /// Metrics are pushed over OTLP (`otlp` in the list; the default).
    pub(crate) push: bool,
    /// Series per metric before the overflow series.
    pub(crate) max_series: usize,
    /// Where pushed metrics go (`OTEL_EXPORTER_OTLP_METRICS_*`, else the generic
    /// `OTEL_EXPORTER_OTLP_*`).
    pub(crate) otlp: OtlpConfig,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub(crate) interval: Duration,
    /// `OTEL_METRIC_EXPORT_TIMEOUT` (default 30 s): the deadline of one push.
    pub(crate) export_timeout: Duration,
}

/// Batch export settings (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchConfig {
    pub(crate) schedule_delay: Duration,
    pub(crate) export_timeout: Duration,
    pub(crate) max_queue_size: usize,
    pub(crate) max_export_batch_size: usize,
}

/// Where and how spans are sent over OTLP.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct OtlpConfig {
    /// For gRPC the collector's base URL; for HTTP the full `/v1/traces` (or
    /// `/v1/metrics`) URL.
    pub(crate) endpoint: String,
    pub(crate) protocol: Protocol,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timeout: Duration,
}

/// Shows the endpoint without its userinfo and the headers' names only.
impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &url_for_display(&self.endpoint))
            .field("protocol", &self.protocol)
            .field("headers", &HeaderNames(&self.headers))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl OtlpConfig {
    /// The endpoint without its userinfo, for logs and errors.
    pub(crate) fn endpoint_for_display(&self) -> std::borrow::Cow<'_, str> {
        url_for_display(&self.endpoint)
    }

    /// The headers (gRPC metadata) sent with every export.
    pub(crate) fn header_map(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            // Validated when the configuration was resolved: an invalid pair
            // cannot reach here.
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        headers
    }
}

/// Which propagation formats are read from requests and written to outgoing calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Propagation {
    pub(crate) tracecontext: bool,
    pub(crate) baggage: bool,
}

/// The fully resolved configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) disabled: bool,
    pub(crate) resource: Resource,
    /// `None` when `OTEL_TRACES_EXPORTER=none` (and no custom exporter).
    pub(crate) otlp: Option<OtlpConfig>,
    pub(crate) sampler: Sampler,
    pub(crate) batch: BatchConfig,
    pub(crate) propagation: Propagation,
    pub(crate) metrics: MetricsConfig,
    /// The longest value (in bytes) kept of a client-controlled string or a
    /// span attribute: `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else
    /// `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else 4,096.
    pub(crate) value_limit: usize,
}

const SERVICE_NAME: &str = opentelemetry_semantic_conventions::resource::SERVICE_NAME;
const SERVICE_VERSION: &str = opentelemetry_semantic_conventions::resource::SERVICE_VERSION;

impl Config {
    pub(crate) fn resolve(s: &Settings) -> Result<Config, ConfigError> {
        let env = &s.env;
        let disabled = match s.disabled {
            Some(d) => d,
            None => env.bool("OTEL_SDK_DISABLED")?.unwrap_or(false),
        };
        Ok(Config {
            disabled,
            resource: resource(s)?,
            otlp: otlp(s)?,
            sampler: sampler(s)?,
            batch: batch(env)?,
            propagation: propagation(env)?,
            metrics: metrics(s)?,
            value_limit: match env.positive("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")? {
                Some(n) => n,
                None => env
                    .positive("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")?
                    .unwrap_or(crate::limits::DEFAULT_VALUE_LIMIT),
            },
        })
    }
}

fn resource(s: &Settings) -> Result<Resource, ConfigError> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    if let Some(raw) = s.env.get("OTEL_RESOURCE_ATTRIBUTES") {
        attrs.extend(parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &raw)?);
    }
    attrs.extend(s.resource.iter().cloned());
    let service_name = s
        .service_name
        .clone()
        .or_else(|| s.env.get("OTEL_SERVICE_NAME"))
        .or_else(|| {
            attrs
                .iter()
                .rev()
                .find(|(k, _)| k == SERVICE_NAME)
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(default_service_name);
    attrs.retain(|(k, _)| k != SERVICE_NAME);
    if let Some(version) = &s.service_version {
        attrs.retain(|(k, _)| k != SERVICE_VERSION);
        attrs.push((SERVICE_VERSION.to_owned(), version.clone()));
    }
    let mut kvs: Vec<KeyValue> = vec![
        KeyValue::new(SERVICE_NAME, service_name),
        KeyValue::new(
            opentelemetry_semantic_conventions::resource::TELEMETRY_SDK_NAME,
            "tower-apm",
        ),
        KeyValue::new(
            opentelemetry_semantic_conventions::resource::TELEMETRY_SDK_LANGUAGE,
            "rust",
        ),
        KeyValue::new(
            opentelemetry_semantic_conventions::resource::TELEMETRY_SDK_VERSION,
            env!("CARGO_PKG_VERSION"),
        ),
    ];
    kvs.extend(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)));
    Ok(Resource::builder_empty().with_attributes(kvs).build())
}

/// `unknown_service:<executable>` as the resource semantic conventions advise.
fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|exe| format!("unknown_service:{exe}"))
        .unwrap_or_else(|| "unknown_service".to_owned())
}

/// `OTEL_METRICS_EXPORTER`: a comma-separated list of `otlp` (the default),
/// `prometheus` (pull: the endpoint of `Apm::metrics_router`) and `none`.
/// It chooses exporters, as the OpenTelemetry specification defines it: `none`
/// means no OTLP push. The in-process aggregation that `/metrics`, alerts, the
/// status page and the shutdown's drain read is not an exporter and stays on;
/// only `ApmBuilder::metrics(false)` turns it off.
fn metrics(s: &Settings) -> Result<MetricsConfig, ConfigError> {
    let mut push = true;
    if let Some(v) = s.env.get("OTEL_METRICS_EXPORTER") {
        push = false;
        for item in v.split(',').map(str::trim) {
            match item {
                "otlp" => push = true,
                "prometheus" | "none" => {}
                _ => {
                    return Err(ConfigError::var(
                        "OTEL_METRICS_EXPORTER",
                        &v,
                        "a comma-separated list of `otlp`, `prometheus` or `none`",
                    ));
                }
            }
        }
    }
    let max_series = s.max_series.unwrap_or(crate::metrics::DEFAULT_MAX_SERIES);
    if max_series == 0 {
        return Err(ConfigError::setting(
            "metrics_max_series",
            "0",
            "at least 1 (the series kept before requests go to the overflow series)",
        ));
    }
    let millis = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        match s.env.get(name) {
            Some(v) => match env::parse_millis(&v) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(ConfigError::var(name, &v, "a positive whole number of milliseconds")),
            },
            None => Ok(default),
        }
    };
    Ok(MetricsConfig {
        enabled: s.metrics.unwrap_or(true),
        push,
        max_series,
        otlp: otlp_for(s, &METRICS)?,
        interval: millis("OTEL_METRIC_EXPORT_INTERVAL", Duration::from_secs(60))?,
        export_timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", Duration::from_secs(30))?,
    })
}

fn otlp(s: &Settings) -> Result<Option<OtlpConfig>, ConfigError> {
    let env = &s.env;
    if let Some(v) = env.get("OTEL_TRACES_EXPORTER") {
        match v.as_str() {
            "otlp" => {}
            "none" => return Ok(None),
            _ => {
                return Err(ConfigError::var(
                    "OTEL_TRACES_EXPORTER",
                    &v,
                    "`otlp` or `none` (other exporters are not built into tower-apm)",
                ));
            }
        }
    }
    if s.custom_exporter {
        return Ok(None);
    }
    otlp_for(s, &TRACES).map(Some)
}

/// The signal-specific variables of one OTLP signal.
struct SignalVars {
    endpoint: &'static str,
    protocol: &'static str,
    headers: &'static str,
    timeout: &'static str,
    /// Appended to the generic endpoint for HTTP.
    path: &'static str,
}

const TRACES: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    path: "/v1/traces",
};

const METRICS: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    path: "/v1/metrics",
};

#[cfg(feature = "otlp-logs")]
const LOGS: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    path: "/v1/logs",
};

/// `OTEL_LOGS_EXPORTER`: `otlp` (the default with the `otlp-logs` feature) or
/// `none`; where the records go.
#[cfg(feature = "otlp-logs")]
pub(crate) fn otlp_logs(s: &Settings) -> Result<Option<OtlpConfig>, ConfigError> {
    match s.env.get("OTEL_LOGS_EXPORTER").as_deref() {
        None | Some("otlp") => otlp_for(s, &LOGS).map(Some),
        Some("none") => Ok(None),
        Some(v) => Err(ConfigError::var(
            "OTEL_LOGS_EXPORTER",
            v,
            "`otlp` or `none` (other exporters are not built into tower-apm)",
        )),
    }
}

/// Where and how one signal is sent: builder settings, then the signal's own
/// variable, then the generic one, then the default.
fn otlp_for(s: &Settings, sig: &SignalVars) -> Result<OtlpConfig, ConfigError> {
    let env = &s.env;
    let protocol = match s.protocol {
        Some(p) => p,
        None => match env.get_either(sig.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::Grpc,
            Some((_, v)) if v == "grpc" => Protocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
            Some((name, v)) => {
                return Err(ConfigError::var(
                    name,
                    &v,
                    "`grpc` or `http/protobuf` (`http/json` is not supported)",
                ));
            }
        },
    };
    let endpoint = match &s.endpoint {
        Some(e) => {
            check_endpoint(e).map_err(|why| ConfigError::url_setting("endpoint", e, why))?;
            signal_url(e, protocol, sig.path)
        }
        None => {
            if let Some(e) = env.get(sig.endpoint) {
                check_endpoint(&e).map_err(|why| ConfigError::url_var(sig.endpoint, &e, why))?;
                e // the signal-specific URL is used as it is
            } else if let Some(e) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                check_endpoint(&e).map_err(|why| ConfigError::url_var("OTEL_EXPORTER_OTLP_ENDPOINT", &e, why))?;
                signal_url(&e, protocol, sig.path)
            } else {
                match protocol {
                    Protocol::Grpc => "http://localhost:4317".to_owned(),
                    Protocol::HttpProtobuf => format!("http://localhost:4318{}", sig.path),
                }
            }
        }
    };
    let mut headers = match env.get_either(sig.headers, "OTEL_EXPORTER_OTLP_HEADERS") {
        Some((name, raw)) => parse_headers(name, &raw)?,
        None => Vec::new(),
    };
    for (k, v) in &s.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(ConfigError::headers(
                "ApmBuilder::header",
                "the name is not an HTTP header name (letters, digits and -, without ':' or spaces)",
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(ConfigError::headers(
                "ApmBuilder::header",
                format!("the value of header {k:?} is not a valid HTTP header value (a control character?)"),
            ));
        }
        headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(k));
        headers.push((k.to_ascii_lowercase(), v.clone()));
    }
    let timeout = match s.timeout {
        Some(t) => t,
        None => match env.get_either(sig.timeout, "OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some((name, v)) => {
                env::parse_millis(&v).ok_or_else(|| ConfigError::var(name, &v, "a whole number of milliseconds"))?
            }
            None => Duration::from_secs(10),
        },
    };
    Ok(OtlpConfig {
        endpoint,
        protocol,
        headers,
        timeout,
    })
}

/// Accepts `http://host[:port][/path]` with a port from 1 to 65535; says what is
/// wrong otherwise (without repeating a userinfo).
fn check_endpoint(e: &str) -> Result<(), String> {
    let uri: http::Uri = e
        .parse()
        .map_err(|_| "an absolute URL such as http://localhost:4317".to_owned())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "an http:// URL: this build has no TLS; send to a local collector (or sidecar) over http".into(),
            );
        }
        _ => return Err("an absolute URL starting with http://, such as http://localhost:4317".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("a URL with a host, such as http://localhost:4317".into());
    }
    check_port(uri.authority().map_or("", http::uri::Authority::as_str))
}

/// The port of an authority (`user@host:port`, `[::1]:port`), when it has
/// one, must be a number from 1 to 65535: the `http` crate parses
/// `host:99999` and `host:abc` as URLs with no port at all.
pub(crate) fn check_port(authority: &str) -> Result<(), String> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = match host_port.rfind(']') {
        Some(i) => &host_port[i + 1..],
        None => host_port,
    };
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return Ok(());
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.len() <= 5 => Ok(()),
        _ => Err(format!(
            "a URL whose port is a number from 1 to 65535 (not {:?}), such as http://localhost:4317",
            port
        )),
    }
}

/// The generic endpoint gets the signal's path (`/v1/traces`, `/v1/metrics`)
/// appended for HTTP; gRPC uses it as is.
fn signal_url(base: &str, protocol: Protocol, path: &str) -> String {
    match protocol {
        Protocol::Grpc => base.to_owned(),
        Protocol::HttpProtobuf => format!("{}{path}", base.trim_end_matches('/')),
    }
}

fn sampler(s: &Settings) -> Result<Sampler, ConfigError> {
    if let Some(sampler) = &s.sampler {
        if let Sampler::TraceIdRatio(r) = sampler {
            if !(0.0..=1.0).contains(r) {
                return Err(ConfigError::setting(
                    "sampler",
                    &r.to_string(),
                    "a ratio between 0.0 and 1.0",
                ));
            }
        }
        return Ok(sampler.clone());
    }
    let ratio = || -> Result<f64, ConfigError> {
        match s.env.get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(ConfigError::var(
                    "OTEL_TRACES_SAMPLER_ARG",
                    &v,
                    "a ratio between 0.0 and 1.0",
                )),
            },
        }
    };
    let Some(name) = s.env.get("OTEL_TRACES_SAMPLER") else {
        return Ok(Sampler::default());
    };
    let parent = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio()?),
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent(Sampler::TraceIdRatio(ratio()?)),
        _ => {
            return Err(ConfigError::var(
                "OTEL_TRACES_SAMPLER",
                &name,
                "one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ));
        }
    })
}

fn batch(env: &EnvSource) -> Result<BatchConfig, ConfigError> {
    let b = BatchConfig {
        schedule_delay: env
            .millis("OTEL_BSP_SCHEDULE_DELAY")?
            .unwrap_or(Duration::from_millis(5000)),
        export_timeout: env
            .millis("OTEL_BSP_EXPORT_TIMEOUT")?
            .unwrap_or(Duration::from_millis(30_000)),
        max_queue_size: env.positive("OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(2048),
        max_export_batch_size: env.positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.unwrap_or(512),
    };
    if b.max_export_batch_size > b.max_queue_size {
        return Err(ConfigError::var(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            &b.max_export_batch_size.to_string(),
            format!("at most OTEL_BSP_MAX_QUEUE_SIZE ({})", b.max_queue_size),
        ));
    }
    Ok(b)
}

fn propagation(env: &EnvSource) -> Result<Propagation, ConfigError> {
    let Some(raw) = env.get("OTEL_PROPAGATORS") else {
        return Ok(Propagation {
            tracecontext: true,
            baggage: true,
        });
    };
    let mut p = Propagation {
        tracecontext: false,
        baggage: false,
    };
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => p.tracecontext = true,
            "baggage" => p.baggage = true,
            "none" => {}
            _ => {
                return Err(ConfigError::var(
                    "OTEL_PROPAGATORS",
                    &raw,
                    format!(
                        "a list of `tracecontext`, `baggage` or `none` ({name:?} is not supported: \
                         no propagator crate of the same OpenTelemetry version provides it)"
                    ),
                ));
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings {
            env: EnvSource::Map(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Settings::default()
        }
    }

    fn err(vars: &[(&str, &str)]) -> String {
        Config::resolve(&settings(vars)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_grpc_to_localhost_parent_based_always_on() {
        let c = Config::resolve(&settings(&[])).unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://localhost:4317");
        assert_eq!(otlp.protocol, Protocol::Grpc);
        assert_eq!(otlp.timeout, Duration::from_secs(10));
        assert_eq!(c.sampler, Sampler::default());
        assert_eq!(c.batch.max_queue_size, 2048);
        assert!(c.propagation.tracecontext && c.propagation.baggage);
        assert!(!c.disabled);
    }

    #[test]
    fn http_protobuf_appends_the_signal_path_to_the_generic_endpoint_only() {
        let c = Config::resolve(&settings(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ]))
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://collector:4318/v1/traces");
        let c = Config::resolve(&settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/custom"),
        ]))
        .unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://collector:4318/custom");
    }

    #[test]
    fn traces_specific_variables_win_over_generic_ones() {
        let c = Config::resolve(&settings(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=s%3Dcret"),
        ]))
        .unwrap();
        let otlp = c.otlp.unwrap();
        assert_eq!(otlp.timeout, Duration::from_millis(250));
        assert_eq!(otlp.headers, vec![("api-key".to_owned(), "s=cret".to_owned())]);
    }

    #[test]
    fn invalid_values_name_the_variable_and_the_value() {
        for (var, value) in [
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
            ("OTEL_PROPAGATORS", "tracecontext,b3"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let msg = err(&[(var, value)]);
            assert!(msg.contains(var) && msg.contains(value), "{var}={value}: {msg}");
        }
        let msg = err(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ]);
        assert!(msg.contains("OTEL_TRACES_SAMPLER_ARG") && msg.contains("1.5"), "{msg}");
        let msg = err(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"),
        ]);
        assert!(msg.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), "{msg}");
    }

    /// Every variable that holds an endpoint, and the builder's `endpoint`.
    const ENDPOINT_VARS: &[&str] = &[
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        #[cfg(feature = "otlp-logs")]
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    ];

    /// Resolves everything `ApmBuilder::build` resolves from these settings.
    fn resolve_all(s: &Settings) -> Result<(), ConfigError> {
        Config::resolve(s)?;
        #[cfg(feature = "otlp-logs")]
        otlp_logs(s)?;
        Ok(())
    }

    #[test]
    fn an_impossible_port_is_refused_naming_the_variable() {
        for var in ENDPOINT_VARS {
            for port in ["99999", "0", "abc", "65536", "", "4317000000000000000000"] {
                let url = format!("http://127.0.0.1:{port}");
                let msg = resolve_all(&settings(&[(var, &url)])).unwrap_err().to_string();
                assert!(msg.contains(var) && msg.contains("port"), "{var}={url}: {msg}");
            }
            for ok in [
                "http://127.0.0.1:65535",
                "http://[::1]:4317/x",
                "http://collector",
                "http://u:p@h:1",
            ] {
                resolve_all(&settings(&[(var, ok)])).unwrap();
            }
        }
        let mut s = settings(&[]);
        s.endpoint = Some("http://127.0.0.1:99999".into());
        let msg = resolve_all(&s).unwrap_err().to_string();
        assert!(msg.contains("ApmBuilder::endpoint") && msg.contains("port"), "{msg}");
        s.endpoint = Some("http://[::1]:70000".into());
        assert!(resolve_all(&s).is_err());
    }

    #[test]
    fn endpoint_errors_never_show_the_userinfo() {
        for var in ENDPOINT_VARS {
            for url in [
                "http://user:hunter2@127.0.0.1:99999",
                "https://user:hunter2@collector:4317",
            ] {
                let err = resolve_all(&settings(&[(var, url)])).unwrap_err();
                let (display, debug) = (err.to_string(), format!("{err:?}"));
                assert!(display.contains(var), "{display}");
                assert!(!display.contains("hunter2") && !display.contains("user"), "{display}");
                assert!(!debug.contains("hunter2"), "{debug}");
            }
        }
        let mut s = settings(&[]);
        s.endpoint = Some("ftp://user:hunter2@collector".into());
        let msg = resolve_all(&s).unwrap_err().to_string();
        assert!(msg.contains("ftp://collector") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn header_errors_never_show_a_header_value() {
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            #[cfg(feature = "otlp-logs")]
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        ] {
            for raw in [
                "authorization=Bearer hunter2,oops",
                "authorization: Bearer hunter2",
                "authorization=Bearer%zzhunter2",
                "hunter2",
            ] {
                let err = resolve_all(&settings(&[(var, raw)])).unwrap_err();
                let (display, debug) = (err.to_string(), format!("{err:?}"));
                assert!(display.contains(var), "{var}={raw}: {display}");
                assert!(
                    !display.contains("hunter2") && !debug.contains("hunter2"),
                    "{var}={raw}: {display}"
                );
            }
        }
        let mut s = settings(&[]);
        s.headers = vec![("authorization".into(), "Bearer hunter2\n".into())];
        let msg = resolve_all(&s).unwrap_err().to_string();
        assert!(
            msg.contains("ApmBuilder::header") && msg.contains("authorization"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        s.headers = vec![("Bearer hunter2".into(), "x".into())];
        let msg = resolve_all(&s).unwrap_err().to_string();
        assert!(msg.contains("ApmBuilder::header") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn debug_output_shows_no_header_value_and_no_userinfo() {
        let mut s = settings(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer hunter2"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://user:hunter2@m:4317"),
        ]);
        s.endpoint = Some("http://user:hunter2@collector:4317".into());
        s.headers = vec![("x-api-key".into(), "hunter2".into())];
        let c = Config::resolve(&s).unwrap();
        assert_eq!(c.otlp.as_ref().unwrap().endpoint, "http://user:hunter2@collector:4317");
        for debug in [format!("{s:?}"), format!("{c:?}"), format!("{:?}", c.metrics)] {
            assert!(!debug.contains("hunter2") && !debug.contains("user"), "{debug}");
            assert!(
                debug.contains("collector:4317") && debug.contains("x-api-key"),
                "{debug}"
            );
        }
    }

    #[test]
    fn every_sampler_name_is_understood() {
        for (name, expected) in [
            ("always_on", Sampler::AlwaysOn),
            ("always_off", Sampler::AlwaysOff),
            ("traceidratio", Sampler::TraceIdRatio(0.5)),
            (
                "parentbased_always_on",
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            ),
            (
                "parentbased_always_off",
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            ),
            (
                "parentbased_traceidratio",
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatio(0.5))),
            ),
        ] {
            let c = Config::resolve(&settings(&[
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]))
            .unwrap();
            assert_eq!(c.sampler, expected, "{name}");
        }
    }

    #[test]
    fn builder_settings_win_over_the_environment() {
        let mut s = settings(&[
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
        ]);
        s.service_name = Some("from-code".into());
        s.endpoint = Some("http://code:4317".into());
        let c = Config::resolve(&s).unwrap();
        assert_eq!(c.otlp.unwrap().endpoint, "http://code:4317");
        let name = c
            .resource
            .get(&opentelemetry::Key::from_static_str(SERVICE_NAME))
            .unwrap();
        assert_eq!(name.as_str(), "from-code");
    }

    #[test]
    fn resource_attributes_come_from_the_environment() {
        let c = Config::resolve(&settings(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=prod,service.name=svc-a",
        )]))
        .unwrap();
        let get = |k: &'static str| {
            c.resource
                .get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.as_str().into_owned())
        };
        assert_eq!(get("deployment.environment.name").as_deref(), Some("prod"));
        assert_eq!(get(SERVICE_NAME).as_deref(), Some("svc-a"));
    }

    #[test]
    fn propagators_none_disables_both_formats() {
        let c = Config::resolve(&settings(&[("OTEL_PROPAGATORS", "none")])).unwrap();
        assert!(!c.propagation.tracecontext && !c.propagation.baggage);
    }
}
