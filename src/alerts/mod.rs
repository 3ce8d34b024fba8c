//! Alerts: rules evaluated in this process, on a fixed interval, off the request
//! path, over the request metrics the layer already keeps (the one record per
//! request; no second set of instruments).
//!
//! A rule compares a value measured over a sliding window with a threshold:
//!
//! - [`Alert::error_rate`]: the share of requests answered with an error status
//!   (5xx unless [`Alert::error_statuses`] says otherwise);
//! - [`Alert::latency`]: a quantile of the request duration, interpolated within
//!   the histogram buckets as Prometheus' `histogram_quantile` does;
//! - [`Alert::request_rate`]: requests per second;
//! - [`Alert::in_flight`]: requests in flight now (no window);
//! - [`Alert::resident_memory`]: the process' resident memory now;
//! - [`Alert::dropped_telemetry`]: spans and log lines lost over the window.
//!
//! Each can be limited to one route template ([`Alert::route`]); the windowed ones
//! stay quiet below [`Alert::min_requests`] requests in the window, so that one
//! failure out of two requests pages nobody. States are Prometheus' own: a rule
//! whose condition holds is *pending* until it has held for
//! [`Alert::pending_for`], then *firing*; when the condition stops holding it is
//! *resolved* and back to *inactive*. Each change of state is written to the log
//! (`target` `tower_apm::alerts`), and [`crate::Apm::alerts_router`] serves every
//! rule's state as JSON.
//!
//! For a fleet, [`crate::Apm::prometheus_rules`] writes the same rules as a
//! Prometheus rules file over the metrics every instance serves, so Prometheus and
//! Alertmanager evaluate them across all instances.
//!
//! ```
//! # fn main() -> Result<(), tower_apm::ConfigError> {
//! use std::time::Duration;
//! use tower_apm::{Alert, Apm};
//!
//! let apm = Apm::builder()
//!     // "error rate over 5% for 5 minutes"
//!     .alert(Alert::error_rate().above(0.05).over(Duration::from_secs(300)))
//!     // p95 of /checkout over one second, measured over 5 minutes, for 2 minutes
//!     .alert(
//!         Alert::latency(0.95)
//!             .above(Duration::from_secs(1))
//!             .over(Duration::from_secs(300))
//!             .pending_for(Duration::from_secs(120))
//!             .route("/checkout"),
//!     )
//!     .build()?;
//! # let _ = apm;
//! # Ok(()) }
//! ```

pub(crate) mod engine;
pub(crate) mod notify;
pub(crate) mod rules;
pub(crate) mod window;

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::config::ConfigError;
use crate::metrics::DURATION_BOUNDS_S;

/// How often rules are evaluated unless [`crate::ApmBuilder::alert_interval`] says otherwise.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// The default of [`Alert::min_requests`].
pub const DEFAULT_MIN_REQUESTS: u64 = 10;

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Measure {
    ErrorRatio,
    /// The quantile (0 < q < 1) of the request duration, in seconds.
    Latency(f64),
    /// Requests per second.
    RequestRate,
    /// Requests in flight at the evaluation.
    InFlight,
    /// Resident memory of the process, in bytes, at the evaluation.
    ResidentMemory,
    /// Spans and log lines dropped over the window.
    DroppedTelemetry,
    /// Database queries over their slow-query threshold, over the window.
    SlowQueries,
}

impl Measure {
    fn default_name(self) -> String {
        match self {
            Measure::ErrorRatio => "HighErrorRate".into(),
            Measure::Latency(q) => format!("HighLatencyP{}", quantile_label(q)),
            Measure::RequestRate => "RequestRate".into(),
            Measure::InFlight => "InFlightRequests".into(),
            Measure::ResidentMemory => "HighMemoryUsage".into(),
            Measure::DroppedTelemetry => "TelemetryDropped".into(),
            Measure::SlowQueries => "SlowQueries".into(),
        }
    }

    /// Whether the value is measured over a window (else read at the evaluation).
    pub(crate) fn windowed(self) -> bool {
        !matches!(self, Measure::InFlight | Measure::ResidentMemory)
    }
}

/// `0.95` -> `95`, `0.999` -> `99.9`.
fn quantile_label(q: f64) -> String {
    let pct = format!("{:.4}", q * 100.0);
    pct.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Above or below the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Comparison {
    Above(f64),
    Below(f64),
}

impl Comparison {
    pub(crate) fn holds(self, value: f64) -> bool {
        match self {
            Comparison::Above(t) => value > t,
            Comparison::Below(t) => value < t,
        }
    }

    pub(crate) fn threshold(self) -> f64 {
        match self {
            Comparison::Above(t) | Comparison::Below(t) => t,
        }
    }

    /// `> 0.05` or `< 10`, for people.
    pub(crate) fn describe(self) -> String {
        match self {
            Comparison::Above(t) => format!("> {t}"),
            Comparison::Below(t) => format!("< {t}"),
        }
    }

    pub(crate) fn word(self) -> &'static str {
        match self {
            Comparison::Above(_) => "above",
            Comparison::Below(_) => "below",
        }
    }
}

/// A threshold: a plain number (a ratio, requests per second, a count), or a
/// duration (latency rules; compared in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(f64);

impl From<f64> for Threshold {
    fn from(v: f64) -> Self {
        Threshold(v)
    }
}

impl From<u32> for Threshold {
    fn from(v: u32) -> Self {
        Threshold(f64::from(v))
    }
}

impl From<Duration> for Threshold {
    fn from(d: Duration) -> Self {
        Threshold(d.as_secs_f64())
    }
}

/// One alerting rule. Start with [`Alert::error_rate`], [`Alert::latency`],
/// [`Alert::request_rate`] or [`Alert::in_flight`], give it a threshold with
/// [`Alert::above`] or [`Alert::below`], and add it with
/// [`crate::ApmBuilder::alert`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Alert {
    pub(crate) name: String,
    pub(crate) measure: Measure,
    pub(crate) comparison: Option<Comparison>,
    pub(crate) window: Duration,
    pub(crate) pending: Duration,
    pub(crate) route: Option<String>,
    pub(crate) min_requests: u64,
    pub(crate) error_statuses: RangeInclusive<u16>,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) annotations: Vec<(String, String)>,
}

impl Alert {
    fn new(measure: Measure) -> Alert {
        Alert {
            name: measure.default_name(),
            measure,
            comparison: None,
            window: Duration::from_secs(300),
            pending: Duration::ZERO,
            route: None,
            min_requests: DEFAULT_MIN_REQUESTS,
            error_statuses: 500..=599,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// The share of requests (0 to 1) answered with an error status over the window.
    pub fn error_rate() -> Alert {
        Alert::new(Measure::ErrorRatio)
    }

    /// The `quantile` (for example `0.95`) of the request duration over the
    /// window; give the threshold as a [`Duration`].
    pub fn latency(quantile: f64) -> Alert {
        Alert::new(Measure::Latency(quantile))
    }

    /// Requests per second over the window: [`Alert::above`] for a flood,
    /// [`Alert::below`] for traffic that stopped (no minimum request count by
    /// default, so that no traffic at all can fire).
    pub fn request_rate() -> Alert {
        let mut a = Alert::new(Measure::RequestRate);
        a.min_requests = 0;
        a
    }

    /// Requests in flight at the moment of evaluation.
    pub fn in_flight() -> Alert {
        let mut a = Alert::new(Measure::InFlight);
        a.min_requests = 0;
        a
    }

    /// The resident memory of the process, in bytes, at the moment of
    /// evaluation (Linux).
    pub fn resident_memory() -> Alert {
        let mut a = Alert::new(Measure::ResidentMemory);
        a.min_requests = 0;
        a
    }

    /// Spans and log lines dropped over the window (a full queue, a collector
    /// that is down, a log output that cannot keep up): `above(0.0)` fires at the
    /// first loss.
    pub fn dropped_telemetry() -> Alert {
        let mut a = Alert::new(Measure::DroppedTelemetry);
        a.min_requests = 0;
        a
    }

    /// Database queries slower than their
    /// [threshold](crate::db::Database::slow_query_threshold) over the window,
    /// every database together: `above(10.0)` fires past ten.
    pub fn slow_queries() -> Alert {
        let mut a = Alert::new(Measure::SlowQueries);
        a.min_requests = 0;
        a
    }

    /// Fires while the value is above `threshold`.
    pub fn above(mut self, threshold: impl Into<Threshold>) -> Alert {
        self.comparison = Some(Comparison::Above(threshold.into().0));
        self
    }

    /// Fires while the value is below `threshold`.
    pub fn below(mut self, threshold: impl Into<Threshold>) -> Alert {
        self.comparison = Some(Comparison::Below(threshold.into().0));
        self
    }

    /// The sliding window the value is measured over (default 5 minutes).
    pub fn over(mut self, window: Duration) -> Alert {
        self.window = window;
        self
    }

    /// How long the condition must hold before the alert fires (Prometheus'
    /// `for`; default zero: it fires at the first evaluation that sees it).
    pub fn pending_for(mut self, pending: Duration) -> Alert {
        self.pending = pending;
        self
    }

    /// Only the requests of this route template (`/users/{id}`), as in
    /// `http.route`.
    pub fn route(mut self, route: impl Into<String>) -> Alert {
        self.route = Some(route.into());
        self
    }

    /// Fewer requests than this in the window never make the condition hold
    /// (default [`DEFAULT_MIN_REQUESTS`]; ignored by [`Alert::in_flight`]).
    pub fn min_requests(mut self, n: u64) -> Alert {
        self.min_requests = n;
        self
    }

    /// The status codes that count as errors for [`Alert::error_rate`] (default
    /// `500..=599`). Requests without a status (the client went away first) never
    /// count as errors.
    pub fn error_statuses(mut self, statuses: RangeInclusive<u16>) -> Alert {
        self.error_statuses = statuses;
        self
    }

    /// The alert's name (`alertname`); default from what it measures
    /// (`HighErrorRate`, `HighLatencyP95`, ...).
    pub fn name(mut self, name: impl Into<String>) -> Alert {
        self.name = name.into();
        self
    }

    /// A label sent with the alert (for example `severity`, `team`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Alert {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// An annotation sent with the alert (for example `summary`, `runbook_url`).
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Alert {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// Checks the rule, saying what to fix.
    pub(crate) fn validate(&self, interval: Duration) -> Result<Comparison, ConfigError> {
        let fail = |problem: String| ConfigError::Alert {
            alert: self.name.clone(),
            problem,
        };
        let comparison = self
            .comparison
            .ok_or_else(|| fail("no threshold: call .above(..) or .below(..)".into()))?;
        if !comparison.threshold().is_finite() {
            return Err(fail("the threshold is not a finite number".into()));
        }
        if let Measure::Latency(q) = self.measure {
            if !(q > 0.0 && q < 1.0) {
                return Err(fail(format!(
                    "quantile {q} is not between 0 and 1 (for p95 write 0.95)"
                )));
            }
        }
        if self.measure == Measure::ErrorRatio && !(0.0..=1.0).contains(&comparison.threshold()) {
            return Err(fail(format!(
                "an error rate is a ratio between 0 and 1, not {} (for 5% write 0.05)",
                comparison.threshold()
            )));
        }
        if self.measure.windowed() && self.window < interval {
            return Err(fail(format!(
                "the window ({:?}) is shorter than the evaluation interval ({interval:?})",
                self.window
            )));
        }
        if self.error_statuses.is_empty() {
            return Err(fail("error_statuses is an empty range".into()));
        }
        if self.name.is_empty() {
            return Err(fail("the name is empty".into()));
        }
        for (key, _) in self.labels.iter().chain(&self.annotations) {
            let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || key.starts_with("__") {
                return Err(fail(format!(
                    "{key:?} is not a label name Prometheus and Alertmanager accept \
                     (letters, digits and _, not starting with a digit or __)"
                )));
            }
        }
        Ok(comparison)
    }
}

/// What a service level objective counts as a good request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Objective {
    /// Answered without an error status.
    Availability,
    /// Answered within the duration bound `DURATION_BOUNDS_S[index]`.
    Latency { index: usize },
}

/// The burn-rate alerts of every SLO, as the SRE workbook's "multiwindow,
/// multi-burn-rate alerts" set them: (severity, burn rate, long window, short
/// window). A burn rate of 14.4 over one hour spends 2% of a 30-day budget.
pub(crate) const BURN_ALERTS: [(&str, f64, Duration, Duration); 3] = [
    ("page", 14.4, Duration::from_secs(3600), Duration::from_secs(300)),
    ("page", 6.0, Duration::from_secs(6 * 3600), Duration::from_secs(1800)),
    (
        "ticket",
        1.0,
        Duration::from_secs(3 * 24 * 3600),
        Duration::from_secs(6 * 3600),
    ),
];

/// A service level objective: the share of good requests to keep over a
/// window (default 30 days). The engine reports the error budget left and the
/// burn rates over 5 minutes to 3 days, and raises the SRE workbook's
/// multiwindow, multi-burn-rate alerts (`SloBurnRate`, labelled with the SLO and
/// a severity): burning 14.4 times the sustainable rate over both 1 h and 5 min
/// or 6 times over both 6 h and 30 min pages, once over both 3 days and 6 h opens
/// a ticket.
///
/// ```
/// # fn main() -> Result<(), tower_apm::ConfigError> {
/// use std::time::Duration;
/// use tower_apm::{Apm, Slo};
///
/// let apm = Apm::builder()
///     .slo(Slo::availability(0.999))                                        // 99.9% not 5xx, 30 days
///     .slo(Slo::latency(Duration::from_millis(250), 0.99).route("/checkout")) // 99% within 250 ms
///     .build()?;
/// # let _ = apm;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Slo {
    pub(crate) name: String,
    pub(crate) objective: Objective,
    pub(crate) target: f64,
    pub(crate) window: Duration,
    pub(crate) route: Option<String>,
    pub(crate) error_statuses: RangeInclusive<u16>,
    pub(crate) min_requests: u64,
    /// For a latency objective given off the histogram's bounds: the bound asked for.
    latency_asked: Option<Duration>,
}

impl Slo {
    /// `target` (for example `0.999`) of the requests answered without an
    /// error status (5xx unless [`Slo::error_statuses`] says otherwise).
    pub fn availability(target: f64) -> Slo {
        Slo {
            name: "availability".into(),
            objective: Objective::Availability,
            target,
            window: Duration::from_secs(30 * 24 * 3600),
            route: None,
            error_statuses: 500..=599,
            min_requests: DEFAULT_MIN_REQUESTS,
            latency_asked: None,
        }
    }

    /// `target` of the requests answered within `bound`, which must be one of
    /// the bucket bounds of `http.server.request.duration` (5, 10, 25, 50, 75,
    /// 100, 250, 500, 750 ms, 1, 2.5, 5, 7.5, 10 s): the histogram cannot tell
    /// finer, in this process or in Prometheus.
    pub fn latency(bound: Duration, target: f64) -> Slo {
        let index = DURATION_BOUNDS_S
            .iter()
            .position(|b| (b - bound.as_secs_f64()).abs() < 1e-9);
        Slo {
            name: format!("latency-{}ms", bound.as_millis()),
            objective: Objective::Latency {
                index: index.unwrap_or(usize::MAX),
            },
            target,
            window: Duration::from_secs(30 * 24 * 3600),
            route: None,
            error_statuses: 500..=599,
            min_requests: DEFAULT_MIN_REQUESTS,
            latency_asked: Some(bound),
        }
    }

    /// The window the objective is measured over (default 30 days).
    pub fn window(mut self, window: Duration) -> Slo {
        self.window = window;
        self
    }

    /// Only the requests of this route template.
    pub fn route(mut self, route: impl Into<String>) -> Slo {
        self.route = Some(route.into());
        self
    }

    /// The SLO's name (the `slo` label of its alerts); default `availability`
    /// or `latency-<ms>ms`.
    pub fn name(mut self, name: impl Into<String>) -> Slo {
        self.name = name.into();
        self
    }

    /// Burn-rate alerts stay quiet while the short window holds fewer requests
    /// than this (default [`DEFAULT_MIN_REQUESTS`]): one failure among the first
    /// three requests burns any budget 30 times too fast, and pages nobody.
    pub fn min_requests(mut self, n: u64) -> Slo {
        self.min_requests = n;
        self
    }

    /// The status codes that count as errors for [`Slo::availability`]
    /// (default `500..=599`).
    pub fn error_statuses(mut self, statuses: RangeInclusive<u16>) -> Slo {
        self.error_statuses = statuses;
        self
    }

    /// The share of requests the objective lets fail: `1 - target`.
    pub(crate) fn budget(&self) -> f64 {
        1.0 - self.target
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |problem: String| ConfigError::Alert {
            alert: format!("SLO {}", self.name),
            problem,
        };
        if !(self.target > 0.0 && self.target < 1.0) {
            return Err(fail(format!(
                "the target {} is not between 0 and 1 (for 99.9% write 0.999)",
                self.target
            )));
        }
        if let (Objective::Latency { index: usize::MAX }, Some(asked)) = (self.objective, self.latency_asked) {
            return Err(fail(format!(
                "{asked:?} is not a bucket bound of http.server.request.duration; use one of \
                 5, 10, 25, 50, 75, 100, 250, 500, 750 ms, 1, 2.5, 5, 7.5 or 10 s"
            )));
        }
        if self.window < Duration::from_secs(3600) {
            return Err(fail(format!("the window {:?} is shorter than an hour", self.window)));
        }
        if self.error_statuses.is_empty() || self.name.is_empty() {
            return Err(fail("empty error_statuses or name".into()));
        }
        Ok(())
    }

    /// The bad requests among `t`.
    pub(crate) fn bad(&self, t: &window::Totals) -> u64 {
        match self.objective {
            Objective::Availability => t.errors,
            Objective::Latency { index } => t.buckets.iter().skip(index + 1).sum(),
        }
    }

    /// The rule that selects this SLO's requests (for the shared totals).
    pub(crate) fn selector(&self) -> Alert {
        let mut a = Alert::error_rate().error_statuses(self.error_statuses.clone());
        a.route = self.route.clone();
        a
    }
}

/// The state of an alert, as Prometheus names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertState {
    /// The condition does not hold.
    #[default]
    Inactive,
    /// The condition holds, for less than [`Alert::pending_for`] so far.
    Pending,
    /// The condition has held for at least [`Alert::pending_for`].
    Firing,
}

impl AlertState {
    /// `inactive`, `pending` or `firing`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_say_what_is_measured() {
        assert_eq!(Alert::error_rate().name, "HighErrorRate");
        assert_eq!(Alert::latency(0.95).name, "HighLatencyP95");
        assert_eq!(Alert::latency(0.999).name, "HighLatencyP99.9");
        assert_eq!(Alert::error_rate().name("Checkout5xx").name, "Checkout5xx");
    }

    #[test]
    fn slos_are_refused_with_what_to_fix() {
        let err = |s: Slo| s.validate().unwrap_err().to_string();
        assert!(err(Slo::availability(99.9)).contains("for 99.9% write 0.999"));
        assert!(err(Slo::latency(Duration::from_millis(300), 0.99)).contains("not a bucket bound"));
        assert!(err(Slo::availability(0.999).window(Duration::from_secs(60))).contains("shorter than an hour"));
        assert!(Slo::latency(Duration::from_millis(250), 0.99).validate().is_ok());
        assert_eq!(Slo::latency(Duration::from_millis(250), 0.99).name, "latency-250ms");
    }

    #[test]
    fn invalid_rules_are_refused_with_what_to_fix() {
        let interval = Duration::from_secs(15);
        let err = |a: Alert| a.validate(interval).unwrap_err().to_string();
        assert!(err(Alert::error_rate()).contains(".above(..) or .below(..)"));
        assert!(err(Alert::error_rate().above(5.0)).contains("for 5% write 0.05"));
        assert!(err(Alert::latency(95.0).above(Duration::from_secs(1))).contains("for p95 write 0.95"));
        assert!(err(Alert::error_rate().above(0.05).over(Duration::from_secs(1))).contains("shorter than"));
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 600..=500;
        assert!(err(Alert::error_rate().above(0.05).error_statuses(empty)).contains("empty range"));
        assert!(err(Alert::error_rate().above(0.05).label("team-name", "x")).contains("not a label name"));
        assert!(Alert::in_flight().above(100).validate(interval).is_ok());
        assert!(
            Alert::latency(0.95)
                .above(Duration::from_millis(250))
                .validate(interval)
                .is_ok()
        );
    }
}
