//! Typed configuration errors that say what to fix.

use std::fmt;

/// Why [`ApmBuilder::build`](crate::ApmBuilder::build) refused the configuration.
///
/// Every variant names the setting (an `OTEL_*` variable or a builder method) and the
/// offending value, so the message alone tells an operator what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds a value that cannot be used.
    InvalidVar {
        /// The variable, for example `OTEL_TRACES_SAMPLER_ARG`.
        name: String,
        /// The value as it was found.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// A value given to the builder cannot be used.
    InvalidSetting {
        /// The builder method, for example `endpoint`.
        setting: &'static str,
        /// The value as it was given.
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
            ConfigError::LogFile { path, error } => write!(
                f,
                "cannot write the log file {path} ({error}): create its directory and make it writable, \
                 or log to stdout"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
