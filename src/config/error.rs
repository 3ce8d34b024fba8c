//! Typed configuration errors that say what to fix.

use std::fmt;

/// Why [`ApmBuilder::build`](crate::ApmBuilder::build) refused the configuration.
///
/// Every variant names the setting (an `OTEL_*` variable or a builder method) and
/// what is wrong, so the message alone tells an operator what to change. Values
/// are shown where they hold no secret: never a header value (they carry the
/// collector's credentials), never the userinfo of a URL (`http://user:pw@host`
/// is shown as `http://host`).
///
/// Print it with `{}` (its `Display`) to tell the operator what to fix. Its
/// `Debug` is the same text, so a `main` that returns
/// `Result<_, ConfigError>` (or a `Box<dyn Error>` holding one), whose error
/// Rust prints with `{:?}`, prints the advice too:
/// `Error: invalid value "half" for OTEL_TRACES_SAMPLER_ARG: expected ...`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds a value that cannot be used.
    InvalidVar {
        /// The variable, for example `OTEL_TRACES_SAMPLER_ARG`.
        name: String,
        /// The value as it was found (a URL without its userinfo).
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// Headers for the collector (`OTEL_EXPORTER_OTLP_HEADERS`, its `_TRACES_`,
    /// `_METRICS_` and `_LOGS_` forms, or [`ApmBuilder::header`](crate::ApmBuilder::header))
    /// cannot be used. The value is not repeated: it holds credentials.
    InvalidHeaders {
        /// The variable, or `ApmBuilder::header`.
        name: String,
        /// What is wrong, naming the item (and the header name when it is a valid one).
        problem: String,
    },
    /// A value given to the builder cannot be used.
    InvalidSetting {
        /// The builder method, for example `endpoint`.
        setting: &'static str,
        /// The value as it was given (a URL without its userinfo).
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// The OTLP exporter could not be created from a valid configuration.
    Exporter(String),
    /// The background export thread could not be started.
    Worker(String),
    /// A global `tracing` subscriber was already installed.
    Subscriber(String),
    /// An alert rule cannot be evaluated as given.
    Alert {
        /// The alert's name.
        alert: String,
        /// What is wrong with it, and what to write instead.
        problem: String,
    },
    /// The audit log cannot be opened for writing.
    AuditFile {
        /// The file.
        path: String,
        /// Why it cannot be opened.
        error: String,
    },
    /// The audit log's chain does not reach the head kept for it (its head
    /// file, or [`AuditLog::expect_head`](crate::security::AuditLog::expect_head)):
    /// records were removed from its end, the file was replaced or deleted, or
    /// the head belongs to another log. The writer does not start a chain over
    /// what may be evidence.
    AuditChain {
        /// The log file.
        path: String,
        /// What was expected and what was found.
        problem: String,
    },
    /// The log file cannot be opened for writing.
    LogFile {
        /// The file.
        path: String,
        /// Why it cannot be opened.
        error: String,
    },
}

impl ConfigError {
    pub(crate) fn var(name: &str, value: &str, expected: impl Into<String>) -> Self {
        ConfigError::InvalidVar {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    /// An invalid URL setting: the value is shown without its userinfo.
    pub(crate) fn url_var(name: &str, url: &str, expected: impl Into<String>) -> Self {
        Self::var(name, &crate::redact::url_for_display(url), expected)
    }

    pub(crate) fn url_setting(setting: &'static str, url: &str, expected: impl Into<String>) -> Self {
        Self::setting(setting, &crate::redact::url_for_display(url), expected)
    }

    pub(crate) fn headers(name: &str, problem: impl Into<String>) -> Self {
        ConfigError::InvalidHeaders {
            name: name.to_owned(),
            problem: problem.into(),
        }
    }

    pub(crate) fn setting(setting: &'static str, value: &str, expected: impl Into<String>) -> Self {
        ConfigError::InvalidSetting {
            setting,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidVar { name, value, expected } => {
                write!(f, "invalid value {value:?} for {name}: expected {expected}")
            }
            ConfigError::InvalidHeaders { name, problem } => write!(
                f,
                "invalid {name}: {problem} (the value is not shown: it holds credentials)"
            ),
            ConfigError::InvalidSetting {
                setting,
                value,
                expected,
            } => write!(
                f,
                "invalid value {value:?} given to ApmBuilder::{setting}: expected {expected}"
            ),
            ConfigError::Exporter(msg) => write!(f, "cannot create the OTLP span exporter: {msg}"),
            ConfigError::Alert { alert, problem } => write!(f, "alert {alert:?}: {problem}"),
            ConfigError::Worker(msg) => write!(f, "cannot start the telemetry export thread: {msg}"),
            ConfigError::Subscriber(msg) => write!(
                f,
                "cannot install the tracing subscriber ({msg}): compose Apm::tracing_layer into yours instead"
            ),
            ConfigError::AuditFile { path, error } => write!(
                f,
                "cannot write the audit log {path} ({error}): create its directory and make the file writable \
                 by this process (and only by it: the log is evidence), or give Security::audit_log another path"
            ),
            ConfigError::AuditChain { path, problem } => write!(
                f,
                "the audit log {path} does not reach its kept head: {problem}. Keep the files as evidence and \
                 check them with `audit-verify --head SEQ:MAC`; to start a new chain, move the log, its \
                 rotated files and its .head file aside"
            ),
            ConfigError::LogFile { path, error } => write!(
                f,
                "cannot write the log file {path} ({error}): create its directory and make it writable, \
                 or log to stdout"
            ),
        }
    }
}

/// The same text as `Display`: what to fix, not the variant's fields, since
/// a `main` returning this error prints it with `{:?}`.
impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_reads_as_the_advice() {
        let e = ConfigError::var("OTEL_TRACES_SAMPLER_ARG", "half", "a ratio between 0.0 and 1.0");
        let advice = "invalid value \"half\" for OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0.0 and 1.0";
        assert_eq!(e.to_string(), advice);
        assert_eq!(format!("{e:?}"), advice);
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(format!("{boxed:?}"), advice);
    }
}
