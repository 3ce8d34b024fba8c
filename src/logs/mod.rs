//! Structured logs: JSON lines for `tracing` events (with the trace and span ids
//! of the request they happened in), one access-log line per request read from
//! the request's record, redaction of sensitive values, and a writer that never
//! blocks a request (bounded queue, rotating files).
//!
//! The line schema, stable across releases: `timestamp` (RFC 3339, UTC,
//! microseconds), `level`, `target`, `message`, the event's own fields as typed
//! JSON values, `trace_id` and `span_id` (when the event happened inside a
//! traced request), `service`. Access-log lines have `target` `tower_apm::access`
//! and `message` `request`, and the fields listed on `AccessLog`.

pub(crate) mod json;
#[cfg(feature = "otlp-logs")]
pub(crate) mod otlp;
mod rotate;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use json::JsonLayer;
pub use rotate::Rotation;

use crate::config::ConfigError;
use crate::record::RequestRecord;
use crate::redact::redact_query;
pub(crate) use crate::redact::{REDACTED_LOG as REDACTED, Redactor};
use json::{JsonLine, write_timestamp};
use writer::{LogWriter, Sink};

/// Where the JSON log lines go: stdout (the default) or a file, rotated by size
/// or time. Given to [`ApmBuilder::logs`](crate::ApmBuilder::logs).
///
/// ```
/// use tower_apm::{LogOutput, Rotation};
///
/// // app.log, app.log.1 ... app.log.5, each at most 10 MiB.
/// let out = LogOutput::file("/var/log/checkout/app.log")
///     .rotate(Rotation::Size(10 * 1024 * 1024))
///     .backups(5);
/// # let _ = out;
/// ```
#[derive(Clone)]
pub struct LogOutput {
    target: Target,
    rotation: Rotation,
    backups: usize,
    queue: usize,
}

#[derive(Clone)]
enum Target {
    Stdout,
    File(PathBuf),
    Writer(Arc<Mutex<Option<Box<dyn std::io::Write + Send>>>>),
}

impl std::fmt::Debug for LogOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Stdout => "stdout".to_owned(),
            Target::File(p) => p.display().to_string(),
            Target::Writer(_) => "writer".to_owned(),
        };
        f.debug_struct("LogOutput")
            .field("target", &target)
            .field("rotation", &self.rotation)
            .field("backups", &self.backups)
            .field("queue", &self.queue)
            .finish()
    }
}

impl LogOutput {
    fn new(target: Target) -> Self {
        LogOutput {
            target,
            rotation: Rotation::Never,
            backups: 5,
            queue: 8192,
        }
    }

    /// Lines on standard output.
    pub fn stdout() -> Self {
        LogOutput::new(Target::Stdout)
    }

    /// Lines appended to the file at `path` (its directory must exist and be
    /// writable: checked when the `Apm` is built).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        LogOutput::new(Target::File(path.into()))
    }

    /// Lines written to `writer` (for example a pipe, or a buffer in tests).
    pub fn writer(writer: impl std::io::Write + Send + 'static) -> Self {
        LogOutput::new(Target::Writer(Arc::new(Mutex::new(Some(Box::new(writer))))))
    }

    /// When the file rotates (default: never). Ignored for stdout and writers.
    pub fn rotate(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }

    /// How many rotated files are kept (default 5).
    pub fn backups(mut self, n: usize) -> Self {
        self.backups = n;
        self
    }

    /// How many lines may wait for the writer (default 8,192). Beyond it lines
    /// are dropped and counted, never waited for.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue = n;
        self
    }

    pub(crate) fn start(&self) -> Result<LogWriter, ConfigError> {
        let sink =
            match &self.target {
                Target::Stdout => Sink::Stdout,
                Target::File(path) => {
                    let file = rotate::RotatingFile::open(path, self.rotation, self.backups, SystemTime::now())
                        .map_err(|e| ConfigError::LogFile {
                            path: path.display().to_string(),
                            error: e.to_string(),
                        })?;
                    Sink::File(file)
                }
                Target::Writer(w) => match w.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(w) => Sink::Writer(w),
                    None => {
                        return Err(ConfigError::setting(
                            "logs",
                            "LogOutput::writer",
                            "a writer given to one ApmBuilder only (it cannot be shared)",
                        ));
                    }
                },
            };
        LogWriter::start(sink, self.queue).map_err(|e| ConfigError::Worker(e.to_string()))
    }
}

/// The access log: one line per request, written when the response body ends (or
/// the request is abandoned), with `method`, `route`, `path`, `query` (sensitive
/// values redacted), `status`, `duration_ms`, `response_bytes`,
/// `client_address`, `user_agent`, `request_id`, `trace_id`, `span_id`, and
/// `error_type` when there was one.
#[derive(Debug)]
pub(crate) struct AccessLog {
    pub(crate) writer: Arc<LogWriter>,
    pub(crate) service: Arc<str>,
}

impl AccessLog {
    /// Formats `r` as one line and queues it.
    pub(crate) fn write(&self, r: &RequestRecord) {
        let mut line = JsonLine::in_buffer(self.writer.buffer());
        line.raw_field("timestamp", |s| write_timestamp(SystemTime::now(), s));
        let level: &[u8] = if r.status.is_some_and(|st| st >= 500) {
            b"WARN"
        } else {
            b"INFO"
        };
        line.raw_field("level", |b| b.extend_from_slice(level));
        line.str_field("target", "tower_apm::access");
        line.str_field("message", "request");
        line.str_field("method", r.method.as_str());
        match &r.route {
            Some(route) => line.str_field("route", route.as_str()),
            None => line.null_field("route"),
        }
        let (path, query) = r.path_and_query();
        line.str_field("path", path);
        if let Some(q) = query {
            line.str_field("query", &redact_query(q));
        }
        match r.status {
            Some(s) => line.u64_field("status", u64::from(s)),
            None => line.null_field("status"),
        }
        line.milli_field("duration_ms", u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX));
        line.u64_field("response_bytes", r.response_body_bytes);
        match r.client {
            Some(c) => line.raw_field("client_address", |b| {
                let _ = std::io::Write::write_fmt(b, format_args!("{}", c.ip()));
            }),
            None => line.null_field("client_address"),
        }
        match &r.user_agent {
            Some(ua) => line.str_field("user_agent", ua.as_str()),
            None => line.null_field("user_agent"),
        }
        line.str_field("request_id", r.request_id.as_str());
        if r.span.is_valid() {
            line.raw_field("trace_id", |b| json::push_hex(b, &r.span.trace_id().to_bytes()));
            line.raw_field("span_id", |b| json::push_hex(b, &r.span.span_id().to_bytes()));
        }
        if let Some(e) = r.error_type {
            line.str_field("error_type", e);
        }
        line.str_field("service", &self.service);
        self.writer.write(line.finish());
    }
}

/// The `x-request-id` of a request: taken from the client when it is 1 to 128
/// visible ASCII characters, generated otherwise.
pub(crate) fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| (0x21..=0x7e).contains(b))
}
