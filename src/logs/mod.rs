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
pub(crate) mod panic;
pub(crate) mod rotate;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use json::JsonLayer;
pub use panic::PanicHook;
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
    queue_bytes: usize,
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
            queue_bytes: crate::limits::LOG_QUEUE_BYTES,
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

    /// How many bytes of lines may wait for the writer (default 8 MiB), so a
    /// reader that stops reading (a stalled pipe, a full disk) holds the
    /// process to that much whatever the lines' length. Beyond it lines are
    /// dropped and counted, like lines beyond [`LogOutput::queue_capacity`].
    pub fn queue_bytes(mut self, n: usize) -> Self {
        self.queue_bytes = n;
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
        LogWriter::start(sink, self.queue, self.queue_bytes).map_err(|e| ConfigError::Worker(e.to_string()))
    }
}

/// The access log: one line per request, written when the response body ends (or
/// the request is abandoned), with `method`, `route`, `path`, `query` (sensitive
/// values redacted), `status`, `duration_ms`, `response_bytes`, `db_queries` and
/// `db_ms` when the handler queried a [`Database`](crate::db::Database),
/// `client_address`, `user_agent`, `request_id`, `trace_id`, `span_id`, and
/// `error_type` when there was one.
#[derive(Debug)]
pub(crate) struct AccessLog {
    writer: Arc<LogWriter>,
    /// `,"service":"<name>"}` and the newline, escaped once.
    tail: Box<[u8]>,
}

impl AccessLog {
    pub(crate) fn new(writer: Arc<LogWriter>, service: &str) -> Self {
        let mut tail = b",\"service\":\"".to_vec();
        json::escape_into(service.as_bytes(), &mut tail);
        tail.extend_from_slice(b"\"");
        AccessLog {
            writer,
            tail: tail.into(),
        }
    }

    /// Formats `r` as one line and queues it. The constant parts of the line
    /// are written as whole pieces (key, quotes and separators at once).
    pub(crate) fn write(&self, r: &RequestRecord) {
        let mut line = JsonLine::in_buffer(self.writer.buffer());
        line.piece(b"\"timestamp\":\"");
        write_timestamp(SystemTime::now(), line.bytes());
        line.piece(if r.status.is_some_and(|st| st >= 500) {
            b"\",\"level\":\"WARN\",\"target\":\"tower_apm::access\",\"message\":\"request\",\"method\":"
        } else {
            b"\",\"level\":\"INFO\",\"target\":\"tower_apm::access\",\"message\":\"request\",\"method\":"
        });
        // A method is an HTTP token: no character of it needs escaping.
        line.piece(b"\"");
        line.bytes().extend_from_slice(r.method.as_str().as_bytes());
        line.piece(b"\"");
        line.piece(b",\"route\":");
        match &r.route {
            Some(route) => line.str_value(route.as_str()),
            None => line.piece(b"null"),
        }
        // The request target is ASCII (the `http` crate checked it): escaped as
        // bytes, without a UTF-8 check.
        let target = r.target.as_bytes();
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        };
        line.piece(b",\"path\":\"");
        json::escape_into(path, line.bytes());
        line.piece(b"\"");
        if let Some(q) = query.and_then(|q| std::str::from_utf8(q).ok()) {
            line.piece(b",\"query\":");
            line.str_value(&redact_query(q));
        }
        line.piece(b",\"status\":");
        match r.status {
            Some(s) => json::push_u64(line.bytes(), u64::from(s)),
            None => line.piece(b"null"),
        }
        line.milli_field("duration_ms", u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX));
        line.piece(b",\"response_bytes\":");
        json::push_u64(line.bytes(), r.response_body_bytes);
        if r.db.count > 0 {
            // The queries the handler awaited, and their time together.
            line.piece(b",\"db_queries\":");
            json::push_u64(line.bytes(), u64::from(r.db.count));
            line.milli_field("db_ms", r.db.nanos / 1000);
        }
        line.piece(b",\"client_address\":");
        match r.client_ip() {
            Some(ip) => {
                line.piece(b"\"");
                json::push_ip(line.bytes(), ip);
                line.piece(b"\"");
            }
            None => line.piece(b"null"),
        }
        line.piece(b",\"user_agent\":");
        match &r.user_agent {
            Some(ua) => line.str_value(ua.as_str()),
            None => line.piece(b"null"),
        }
        // Visible ASCII (checked when taken from the request, or generated hex).
        line.piece(b",\"request_id\":\"");
        json::escape_into(r.request_id.as_bytes(), line.bytes());
        line.piece(b"\"");
        if r.span.is_valid() {
            line.piece(b",\"trace_id\":\"");
            json::push_hex(line.bytes(), &r.span.trace_id().to_bytes());
            line.piece(b"\",\"span_id\":\"");
            json::push_hex(line.bytes(), &r.span.span_id().to_bytes());
            line.piece(b"\"");
        }
        if let Some(e) = r.error_type {
            line.piece(b",\"error_type\":");
            line.str_value(e);
        }
        line.bytes().extend_from_slice(&self.tail);
        self.writer.write(line.finish());
    }
}

/// The `x-request-id` of a request: taken from the client when it is 1 to 128
/// visible ASCII characters, generated otherwise.
pub(crate) fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| (0x21..=0x7e).contains(b))
}
