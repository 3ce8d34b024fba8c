//! Rule evaluation: the state of every rule, advanced one evaluation at a time.
//!
//! [`Engine::evaluate`] takes the time (since the engine started, so tests drive
//! it with any clock) and a snapshot of the request metrics; it returns the
//! changes of state. The background thread ([`spawn`]) calls it every interval,
//! off the request path, and writes each change to the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::window::{BUCKETS, Ring, Totals};
use super::{Alert, AlertState, BURN_ALERTS, Comparison, Measure, Slo};
use crate::logs::json::{JsonLine, push_object, push_string, push_time, write_timestamp};
use crate::logs::writer::LogWriter;
use crate::metrics::Metrics;

use super::notify::{Dispatcher, Notice};

/// One series of the request metrics, as the rules read it.
#[derive(Debug, Clone)]
pub(crate) struct SeriesView {
    pub(crate) route: Option<Arc<str>>,
    pub(crate) status: Option<u16>,
    pub(crate) buckets: [u64; BUCKETS],
}

/// What one evaluation reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) series: Vec<SeriesView>,
    pub(crate) in_flight: i64,
    pub(crate) resident_bytes: Option<u64>,
    /// Spans and log lines dropped since start.
    pub(crate) dropped: u64,
    /// Slow database queries since start.
    pub(crate) slow_queries: u64,
}

impl Snapshot {
    /// The request metrics now.
    pub(crate) fn of(metrics: &Metrics) -> Snapshot {
        let series = metrics
            .series()
            .iter()
            .filter(|s| !s.attrs.overflow)
            .map(|s| {
                let snap = s.duration.snapshot();
                let mut buckets = [0; BUCKETS];
                for (b, c) in buckets.iter_mut().zip(&snap.counts) {
                    *b = *c;
                }
                SeriesView {
                    route: s.attrs.route.clone(),
                    status: s.attrs.status,
                    buckets,
                }
            })
            .collect();
        Snapshot {
            series,
            in_flight: metrics.active().iter().map(|(_, _, n)| n).sum(),
            resident_bytes: crate::metrics::process::sample().map(|p| p.resident_bytes),
            dropped: 0,
            slow_queries: metrics
                .db
                .series()
                .iter()
                .map(|s| s.slow.load(std::sync::atomic::Ordering::Relaxed))
                .sum(),
        }
    }

    /// The totals `alert` looks at (for dropped telemetry, the drops counted as
    /// requests).
    fn totals(&self, alert: &Alert) -> Totals {
        let mut t = Totals::default();
        if alert.measure == Measure::DroppedTelemetry {
            t.requests = self.dropped;
            return t;
        }
        if alert.measure == Measure::SlowQueries {
            t.requests = self.slow_queries;
            return t;
        }
        for s in &self.series {
            if alert.route.as_deref().is_some_and(|r| s.route.as_deref() != Some(r)) {
                continue;
            }
            let n: u64 = s.buckets.iter().sum();
            t.requests += n;
            if s.status.is_some_and(|st| alert.error_statuses.contains(&st)) {
                t.errors += n;
            }
            for (sum, b) in t.buckets.iter_mut().zip(&s.buckets) {
                *sum += b;
            }
        }
        t
    }
}

/// Which alert changed: a rule, or a burn-rate alert of an SLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Rule(usize),
    /// (SLO, index into [`BURN_ALERTS`]).
    Burn(usize, usize),
}

/// A change of an alert's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    pub(crate) source: Source,
    pub(crate) from: AlertState,
    pub(crate) to: AlertState,
    /// The value that caused it.
    pub(crate) value: Option<f64>,
}

/// Where one alert stands: Prometheus' state machine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub(crate) state: AlertState,
    /// When the condition started to hold (engine time), while pending or firing.
    active_since: Option<Duration>,
    /// Wall-clock times, for the status page and notifications.
    pub(crate) active_at: Option<SystemTime>,
    pub(crate) fired_at: Option<SystemTime>,
    pub(crate) resolved_at: Option<SystemTime>,
}

impl Status {
    /// One evaluation: whether the condition holds at `now`. Returns the change
    /// of state, if any.
    fn advance(
        &mut self,
        holds: bool,
        pending: Duration,
        now: Duration,
        wall: SystemTime,
    ) -> Option<(AlertState, AlertState)> {
        let from = self.state;
        let to = match (from, holds) {
            (_, false) => AlertState::Inactive,
            (AlertState::Inactive, true) => {
                self.active_since = Some(now);
                self.active_at = Some(wall);
                if pending.is_zero() {
                    AlertState::Firing
                } else {
                    AlertState::Pending
                }
            }
            (AlertState::Pending, true) => {
                let since = self.active_since.unwrap_or(now);
                if now.saturating_sub(since) >= pending {
                    AlertState::Firing
                } else {
                    AlertState::Pending
                }
            }
            (AlertState::Firing, true) => AlertState::Firing,
        };
        if to == AlertState::Firing && from != AlertState::Firing {
            self.fired_at = Some(wall);
        }
        if to == AlertState::Inactive {
            self.active_since = None;
            if from == AlertState::Firing {
                self.resolved_at = Some(wall);
            }
        }
        self.state = to;
        (to != from).then_some((from, to))
    }
}

/// The windows burn rates are reported over (those of [`BURN_ALERTS`]).
pub(crate) const BURN_WINDOWS: [Duration; 5] = [
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(3 * 24 * 3600),
];

/// One SLO and where it stands.
#[derive(Debug)]
pub(crate) struct SloState {
    pub(crate) slo: Slo,
    selector: Alert,
    budget_ring: Ring,
    burn_rings: Vec<Ring>,
    /// Over the SLO window (so far): requests and bad requests.
    pub(crate) requests: u64,
    pub(crate) bad: u64,
    /// Burn rate over each of [`BURN_WINDOWS`] (`None` without requests), and
    /// the requests it was measured over.
    pub(crate) burn: [Option<f64>; 5],
    burn_requests: [u64; 5],
    /// The state of each of [`BURN_ALERTS`].
    pub(crate) alerts: [Status; 3],
}

impl SloState {
    fn new(slo: Slo, start: &Snapshot) -> SloState {
        let selector = slo.selector();
        let totals = start.totals(&selector);
        SloState {
            budget_ring: Ring::with_step(slo.window, slo.window / 1000, totals),
            burn_rings: BURN_WINDOWS
                .iter()
                .map(|w| Ring::with_step(*w, *w / 1000, totals))
                .collect(),
            selector,
            slo,
            requests: 0,
            bad: 0,
            burn: [None; 5],
            burn_requests: [0; 5],
            alerts: Default::default(),
        }
    }

    /// The error budget left: 1 when nothing failed, 0 when the objective is
    /// exactly met, below 0 when it is missed.
    pub(crate) fn budget_remaining(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - (self.bad as f64 / self.requests as f64) / self.slo.budget())
    }

    fn evaluate(&mut self, i: usize, now: Duration, wall: SystemTime, snapshot: &Snapshot) -> Vec<Transition> {
        let current = snapshot.totals(&self.selector);
        if let Some((t, _)) = self.budget_ring.advance(now, current) {
            self.requests = t.requests;
            self.bad = self.slo.bad(&t);
        }
        for (k, ring) in self.burn_rings.iter_mut().enumerate() {
            let increase = ring.advance(now, current);
            self.burn_requests[k] = increase.map_or(0, |(t, _)| t.requests);
            self.burn[k] = increase
                .filter(|(t, _)| t.requests > 0)
                .map(|(t, _)| self.slo.bad(&t) as f64 / t.requests as f64 / self.slo.budget());
        }
        let index = |w: Duration| BURN_WINDOWS.iter().position(|x| *x == w);
        let burn_over = |w: Duration| index(w).and_then(|k| self.burn[k]);
        let mut changes = Vec::new();
        for (k, (_, factor, long, short)) in BURN_ALERTS.iter().enumerate() {
            let enough = index(*short).is_some_and(|s| self.burn_requests[s] >= self.slo.min_requests);
            let holds = enough
                && burn_over(*long).is_some_and(|b| b > *factor)
                && burn_over(*short).is_some_and(|b| b > *factor);
            if let Some((from, to)) = self.alerts[k].advance(holds, Duration::ZERO, now, wall) {
                changes.push(Transition {
                    source: Source::Burn(i, k),
                    from,
                    to,
                    value: burn_over(*short),
                });
            }
        }
        changes
    }
}

/// One rule and where it stands.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) alert: Alert,
    pub(crate) comparison: Comparison,
    ring: Option<Ring>,
    pub(crate) status: Status,
    pub(crate) value: Option<f64>,
    /// Requests in the last window.
    pub(crate) requests: u64,
}

/// Every rule of one `Apm`.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) rules: Vec<Rule>,
    pub(crate) slos: Vec<SloState>,
    pub(crate) evaluations: u64,
    pub(crate) last_evaluation: Option<SystemTime>,
}

impl Engine {
    /// Rules already validated, starting from `start` (the metrics when the
    /// engine starts).
    pub(crate) fn new(alerts: Vec<(Alert, Comparison)>, slos: Vec<Slo>, start: &Snapshot) -> Engine {
        let rules = alerts
            .into_iter()
            .map(|(alert, comparison)| Rule {
                ring: alert
                    .measure
                    .windowed()
                    .then(|| Ring::new(alert.window, start.totals(&alert))),
                alert,
                comparison,
                status: Status::default(),
                value: None,
                requests: 0,
            })
            .collect();
        Engine {
            rules,
            slos: slos.into_iter().map(|s| SloState::new(s, start)).collect(),
            evaluations: 0,
            last_evaluation: None,
        }
    }

    /// Evaluates every rule at `now` (time since the engine started; `wall` is
    /// the same instant on the wall clock) and returns the changes of state.
    pub(crate) fn evaluate(&mut self, now: Duration, wall: SystemTime, snapshot: &Snapshot) -> Vec<Transition> {
        let mut changes = Vec::new();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let alert = &rule.alert;
            let (value, enough) = match (alert.measure, rule.ring.as_mut()) {
                (Measure::InFlight, _) => (Some(snapshot.in_flight as f64), true),
                (Measure::ResidentMemory, _) => (snapshot.resident_bytes.map(|b| b as f64), true),
                (measure, Some(ring)) => match ring.advance(now, snapshot.totals(alert)) {
                    None => (None, false),
                    Some((t, span)) => {
                        rule.requests = t.requests;
                        let value = match measure {
                            Measure::ErrorRatio => (t.requests > 0).then(|| t.errors as f64 / t.requests as f64),
                            Measure::Latency(q) => t.quantile(q),
                            Measure::RequestRate => Some(t.requests as f64 / span.as_secs_f64()),
                            Measure::DroppedTelemetry | Measure::SlowQueries => Some(t.requests as f64),
                            Measure::InFlight | Measure::ResidentMemory => None,
                        };
                        (value, t.requests >= alert.min_requests)
                    }
                },
                (_, None) => (None, false),
            };
            rule.value = value;
            let holds = enough && value.is_some_and(|v| rule.comparison.holds(v));
            if let Some((from, to)) = rule.status.advance(holds, alert.pending, now, wall) {
                changes.push(Transition {
                    source: Source::Rule(i),
                    from,
                    to,
                    value,
                });
            }
        }
        for (i, slo) in self.slos.iter_mut().enumerate() {
            changes.extend(slo.evaluate(i, now, wall, snapshot));
        }
        self.evaluations += 1;
        self.last_evaluation = Some(wall);
        changes
    }

    /// Every rule's state as JSON (the body of `GET /alerts`).
    pub(crate) fn status_json(&self) -> String {
        let mut out = Vec::with_capacity(256 * (self.rules.len() + 1));
        out.extend_from_slice(b"{\"evaluations\":");
        out.extend_from_slice(self.evaluations.to_string().as_bytes());
        out.extend_from_slice(b",\"last_evaluation\":");
        time_or_null(&mut out, self.last_evaluation);
        out.extend_from_slice(b",\"alerts\":[");
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let a = &r.alert;
            out.extend_from_slice(b"{\"name\":");
            push_string(&mut out, &a.name);
            out.extend_from_slice(b",\"state\":");
            push_string(&mut out, r.status.state.as_str());
            out.extend_from_slice(b",\"measure\":");
            push_string(&mut out, measure_name(a.measure));
            if let Measure::Latency(q) = a.measure {
                out.extend_from_slice(format!(",\"quantile\":{}", number(q)).as_bytes());
            }
            out.extend_from_slice(b",\"route\":");
            match &a.route {
                Some(route) => push_string(&mut out, route),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(
                format!(",\"{}\":{}", r.comparison.word(), number(r.comparison.threshold())).as_bytes(),
            );
            out.extend_from_slice(b",\"value\":");
            match r.value {
                Some(v) if v.is_finite() => out.extend_from_slice(number(v).as_bytes()),
                _ => out.extend_from_slice(b"null"),
            }
            if a.measure.windowed() {
                out.extend_from_slice(
                    format!(
                        ",\"window_seconds\":{},\"requests_in_window\":{},\"min_requests\":{}",
                        number(a.window.as_secs_f64()),
                        r.requests,
                        a.min_requests
                    )
                    .as_bytes(),
                );
            }
            out.extend_from_slice(format!(",\"pending_for_seconds\":{}", number(a.pending.as_secs_f64())).as_bytes());
            status_times(&mut out, &r.status);
            out.extend_from_slice(b",\"labels\":");
            push_object(&mut out, &a.labels);
            out.extend_from_slice(b",\"annotations\":");
            push_object(&mut out, &a.annotations);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"slos\":[");
        for (i, s) in self.slos.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let slo = &s.slo;
            out.extend_from_slice(b"{\"name\":");
            push_string(&mut out, &slo.name);
            out.extend_from_slice(b",\"objective\":");
            match slo.objective {
                super::Objective::Availability => push_string(&mut out, "availability"),
                super::Objective::Latency { index } => {
                    push_string(&mut out, "latency");
                    out.extend_from_slice(
                        format!(
                            ",\"latency_bound_seconds\":{}",
                            number(crate::metrics::DURATION_BOUNDS_S[index])
                        )
                        .as_bytes(),
                    );
                }
            }
            out.extend_from_slice(b",\"route\":");
            match &slo.route {
                Some(route) => push_string(&mut out, route),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(
                format!(
                    ",\"target\":{},\"window_seconds\":{},\"requests\":{},\"bad_requests\":{},\"budget_remaining\":{}",
                    number(slo.target),
                    number(slo.window.as_secs_f64()),
                    s.requests,
                    s.bad,
                    s.budget_remaining().map_or_else(|| "null".into(), number)
                )
                .as_bytes(),
            );
            out.extend_from_slice(b",\"burn_rates\":{");
            for (k, w) in BURN_WINDOWS.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                push_string(&mut out, &super::rules::promql_duration(*w));
                out.push(b':');
                match s.burn[k] {
                    Some(b) if b.is_finite() => out.extend_from_slice(number(b).as_bytes()),
                    _ => out.extend_from_slice(b"null"),
                }
            }
            out.extend_from_slice(b"},\"alerts\":[");
            for (k, (severity, factor, long, short)) in BURN_ALERTS.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"severity\":");
                push_string(&mut out, severity);
                out.extend_from_slice(
                    format!(
                        ",\"burn_rate\":{},\"long_window\":\"{}\",\"short_window\":\"{}\",\"state\":",
                        number(*factor),
                        super::rules::promql_duration(*long),
                        super::rules::promql_duration(*short)
                    )
                    .as_bytes(),
                );
                push_string(&mut out, s.alerts[k].state.as_str());
                status_times(&mut out, &s.alerts[k]);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        String::from_utf8(out).unwrap_or_default()
    }
}

fn status_times(out: &mut Vec<u8>, status: &Status) {
    for (key, t) in [
        (
            "active_since",
            status.active_at.filter(|_| status.state != AlertState::Inactive),
        ),
        ("fired_at", status.fired_at),
        ("resolved_at", status.resolved_at),
    ] {
        out.extend_from_slice(format!(",\"{key}\":").as_bytes());
        time_or_null(out, t);
    }
}

fn measure_name(m: Measure) -> &'static str {
    match m {
        Measure::ErrorRatio => "error_rate",
        Measure::Latency(_) => "latency_seconds",
        Measure::RequestRate => "requests_per_second",
        Measure::InFlight => "in_flight",
        Measure::ResidentMemory => "resident_memory_bytes",
        Measure::DroppedTelemetry => "dropped_telemetry",
        Measure::SlowQueries => "slow_queries",
    }
}

/// A finite number as JSON writes it.
fn number(v: f64) -> String {
    if v.is_finite() { format!("{v}") } else { "null".into() }
}

fn time_or_null(out: &mut Vec<u8>, t: Option<SystemTime>) {
    match t {
        Some(t) => push_time(out, t),
        None => out.extend_from_slice(b"null"),
    }
}

/// Reads the telemetry dropped since start (the span queue's and the log
/// writer's counters).
struct DroppedCount(Box<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for DroppedCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DroppedCount")
    }
}

/// The engine shared between its thread and the `Apm` (status, tests).
#[derive(Debug)]
pub(crate) struct Alerts {
    pub(crate) engine: Mutex<Engine>,
    metrics: Arc<Metrics>,
    log: Arc<LogWriter>,
    service: Arc<str>,
    pub(crate) notify: Option<Dispatcher>,
    /// Spans and log lines dropped since start.
    dropped: DroppedCount,
    started: Instant,
    stop: Mutex<bool>,
    wake: Condvar,
    stopped: AtomicBool,
}

impl Alerts {
    pub(crate) fn new(
        alerts: Vec<(Alert, Comparison)>,
        slos: Vec<Slo>,
        metrics: Arc<Metrics>,
        log: Arc<LogWriter>,
        service: Arc<str>,
        notify: Option<Dispatcher>,
        dropped: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Arc<Alerts> {
        let dropped = DroppedCount(dropped);
        let mut start = Snapshot::of(&metrics);
        start.dropped = (dropped.0)();
        let engine = Engine::new(alerts, slos, &start);
        Arc::new(Alerts {
            engine: Mutex::new(engine),
            metrics,
            log,
            service,
            notify,
            dropped,
            started: Instant::now(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            stopped: AtomicBool::new(false),
        })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One evaluation now; each change of state is logged.
    pub(crate) fn evaluate_now(&self) {
        let mut snapshot = Snapshot::of(&self.metrics);
        snapshot.dropped = (self.dropped.0)();
        let now = self.started.elapsed();
        let wall = SystemTime::now();
        let mut engine = self.engine();
        let changes = engine.evaluate(now, wall, &snapshot);
        for change in &changes {
            self.log_change(&engine, change, wall);
        }
        if let Some(d) = &self.notify {
            let batch = self.notices(&engine, &changes);
            if !batch.is_empty() {
                d.send(batch);
            }
        }
    }

    /// Every firing alert, and those that resolved in `changes`.
    fn notices(&self, engine: &Engine, changes: &[Transition]) -> Vec<Notice> {
        let resolved = |source: Source| {
            changes
                .iter()
                .any(|c| c.source == source && c.from == AlertState::Firing && c.to == AlertState::Inactive)
        };
        let service = ("service".to_owned(), self.service.to_string());
        let mut out = Vec::new();
        for (i, r) in engine.rules.iter().enumerate() {
            let firing = r.status.state == AlertState::Firing;
            if !firing && !resolved(Source::Rule(i)) {
                continue;
            }
            let mut labels = vec![("alertname".to_owned(), r.alert.name.clone())];
            labels.extend(r.alert.labels.iter().cloned());
            labels.push(service.clone());
            let mut annotations = r.alert.annotations.clone();
            if let Some(v) = r.value.filter(|v| v.is_finite()) {
                annotations.push(("value".into(), number(v)));
            }
            out.push(Notice {
                labels,
                annotations,
                starts_at: r.status.fired_at.unwrap_or(SystemTime::UNIX_EPOCH),
                resolved_at: (!firing).then_some(r.status.resolved_at).flatten(),
            });
        }
        for (i, s) in engine.slos.iter().enumerate() {
            for (k, status) in s.alerts.iter().enumerate() {
                let firing = status.state == AlertState::Firing;
                if !firing && !resolved(Source::Burn(i, k)) {
                    continue;
                }
                let (severity, _, long, short) = BURN_ALERTS[k];
                out.push(Notice {
                    labels: vec![
                        ("alertname".to_owned(), super::rules::BURN_ALERT_NAME.to_owned()),
                        ("slo".to_owned(), s.slo.name.clone()),
                        ("severity".to_owned(), severity.to_owned()),
                        ("long_window".to_owned(), super::rules::promql_duration(long)),
                        ("short_window".to_owned(), super::rules::promql_duration(short)),
                        service.clone(),
                    ],
                    annotations: vec![("summary".to_owned(), super::rules::burn_summary(&s.slo, k))],
                    starts_at: status.fired_at.unwrap_or(SystemTime::UNIX_EPOCH),
                    resolved_at: (!firing).then_some(status.resolved_at).flatten(),
                });
            }
        }
        out
    }

    fn log_change(&self, engine: &Engine, change: &Transition, wall: SystemTime) {
        let (level, message) = match change.to {
            AlertState::Firing => ("WARN", "alert firing"),
            AlertState::Pending => ("INFO", "alert pending"),
            AlertState::Inactive if change.from == AlertState::Firing => ("INFO", "alert resolved"),
            AlertState::Inactive => ("INFO", "alert no longer pending"),
        };
        let mut line = JsonLine::in_buffer(self.log.buffer());
        line.raw_field("timestamp", |b| write_timestamp(wall, b));
        line.str_field("level", level);
        line.str_field("target", "tower_apm::alerts");
        line.str_field("message", message);
        match change.source {
            Source::Rule(i) => {
                let rule = &engine.rules[i];
                line.str_field("alert", &rule.alert.name);
                line.str_field("state", change.to.as_str());
                line.str_field("from", change.from.as_str());
                if let Some(v) = change.value.filter(|v| v.is_finite()) {
                    line.raw_field_unquoted("value", |b| b.extend_from_slice(number(v).as_bytes()));
                }
                line.raw_field_unquoted(rule.comparison.word(), |b| {
                    b.extend_from_slice(number(rule.comparison.threshold()).as_bytes());
                });
                if let Some(route) = &rule.alert.route {
                    line.str_field("route", route);
                }
            }
            Source::Burn(i, k) => {
                let (severity, factor, long, short) = BURN_ALERTS[k];
                line.str_field("alert", super::rules::BURN_ALERT_NAME);
                line.str_field("state", change.to.as_str());
                line.str_field("from", change.from.as_str());
                line.str_field("slo", &engine.slos[i].slo.name);
                line.str_field("severity", severity);
                line.raw_field_unquoted("burn_rate_above", |b| b.extend_from_slice(number(factor).as_bytes()));
                line.str_field("long_window", &super::rules::promql_duration(long));
                line.str_field("short_window", &super::rules::promql_duration(short));
                if let Some(v) = change.value.filter(|v| v.is_finite()) {
                    line.raw_field_unquoted("short_window_burn_rate", |b| b.extend_from_slice(number(v).as_bytes()));
                }
            }
        }
        line.str_field("service", &self.service);
        self.log.write(line.finish());
    }

    /// The status JSON.
    pub(crate) fn status_json(&self) -> String {
        self.engine().status_json()
    }

    /// Stops the evaluation thread (idempotent).
    pub(crate) fn stop(&self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }
}

/// Starts the thread that evaluates every `interval` until [`Alerts::stop`], or
/// until the last `Apm` handle is gone.
pub(crate) fn spawn(alerts: &Arc<Alerts>, interval: Duration) -> std::io::Result<()> {
    let weak: Weak<Alerts> = Arc::downgrade(alerts);
    std::thread::Builder::new()
        .name("tower-apm-alerts".into())
        .spawn(move || {
            let mut next = Instant::now() + interval;
            loop {
                let Some(alerts) = weak.upgrade() else { return };
                {
                    let mut stop = alerts.stop.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if *stop {
                            return;
                        }
                        let now = Instant::now();
                        if now >= next {
                            break;
                        }
                        stop = alerts
                            .wake
                            .wait_timeout(stop, next - now)
                            .map(|(s, _)| s)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                }
                alerts.evaluate_now();
                next += interval;
                drop(alerts);
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// A snapshot of one route with `ok` requests answered 200 and `failed`
    /// answered 500, all in the bucket `bucket`.
    fn snapshot(route: &str, ok: u64, failed: u64, bucket: usize) -> Snapshot {
        let series = |status: u16, n: u64| {
            let mut buckets = [0; BUCKETS];
            buckets[bucket] = n;
            SeriesView {
                route: Some(Arc::from(route)),
                status: Some(status),
                buckets,
            }
        };
        Snapshot {
            series: vec![series(200, ok), series(500, failed)],
            ..Snapshot::default()
        }
    }

    fn engine(alert: Alert) -> Engine {
        let comparison = alert.validate(Duration::from_secs(15)).unwrap();
        Engine::new(vec![(alert, comparison)], Vec::new(), &Snapshot::default())
    }

    fn states(changes: &[Transition]) -> Vec<(AlertState, AlertState)> {
        changes.iter().map(|c| (c.from, c.to)).collect()
    }

    #[test]
    fn error_rate_alert_goes_pending_then_firing_after_its_for_then_resolves() {
        let mut e = engine(Alert::error_rate().above(0.05).over(5 * MIN).pending_for(2 * MIN));
        let wall = SystemTime::UNIX_EPOCH;
        let (mut ok, mut failed) = (0, 0);
        let mut step = |e: &mut Engine, minute: u32, add_ok: u64, add_failed: u64| {
            ok += add_ok;
            failed += add_failed;
            e.evaluate(minute * MIN, wall + minute * MIN, &snapshot("/", ok, failed, 0))
        };
        // Healthy for 5 minutes: 1% errors.
        for m in 1..=5 {
            assert!(step(&mut e, m, 99, 1).is_empty(), "minute {m}");
        }
        // From minute 6, 40% errors: the 5-minute window [1, 6] (minutes 2 to 6)
        // holds 44 errors in 500 requests, 8.8%: over 5% at once.
        let changes = step(&mut e, 6, 60, 40);
        assert_eq!(states(&changes), [(AlertState::Inactive, AlertState::Pending)]);
        assert!((e.rules[0].value.unwrap() - 0.088).abs() < 1e-9);
        assert!(step(&mut e, 7, 60, 40).is_empty(), "pending for 1 of 2 minutes");
        let changes = step(&mut e, 8, 60, 40);
        assert_eq!(states(&changes), [(AlertState::Pending, AlertState::Firing)]);
        assert_eq!(e.rules[0].status.fired_at, Some(wall + 8 * MIN));
        // Errors stop at minute 9; at minute 12 the window still holds minute 8's
        // 40 of 500 (8%), at minute 13 none.
        let mut resolved_at = None;
        for m in 9..=15 {
            let changes = step(&mut e, m, 100, 0);
            if states(&changes) == [(AlertState::Firing, AlertState::Inactive)] {
                resolved_at = Some(m);
                break;
            }
        }
        assert_eq!(resolved_at, Some(13));
        assert_eq!(e.rules[0].status.resolved_at, Some(wall + 13 * MIN));
    }

    #[test]
    fn a_condition_that_stops_holding_while_pending_never_fires() {
        let mut e = engine(Alert::error_rate().above(0.05).over(2 * MIN).pending_for(5 * MIN));
        let wall = SystemTime::UNIX_EPOCH;
        let c = e.evaluate(MIN, wall, &snapshot("/", 50, 50, 0));
        assert_eq!(states(&c), [(AlertState::Inactive, AlertState::Pending)]);
        // 50 of 1,050 since the start: 4.8%.
        let c = e.evaluate(2 * MIN, wall, &snapshot("/", 1000, 50, 0));
        assert_eq!(states(&c), [(AlertState::Pending, AlertState::Inactive)]);
        assert_eq!(e.rules[0].status.fired_at, None);
    }

    #[test]
    fn too_few_requests_never_page() {
        let mut e = engine(Alert::error_rate().above(0.05).over(2 * MIN).min_requests(10));
        let wall = SystemTime::UNIX_EPOCH;
        // One failure out of two requests: 50%, but only 2 requests.
        assert!(e.evaluate(MIN, wall, &snapshot("/", 1, 1, 0)).is_empty());
        assert_eq!(e.rules[0].value, Some(0.5));
        assert_eq!(e.rules[0].status.state, AlertState::Inactive);
        // Twelve requests since the start, two failing: 16.7%, fires.
        let c = e.evaluate(2 * MIN, wall, &snapshot("/", 10, 2, 0));
        assert_eq!(states(&c), [(AlertState::Inactive, AlertState::Firing)]);
    }

    #[test]
    fn route_rules_see_only_their_route() {
        let mut e = engine(
            Alert::latency(0.95)
                .above(Duration::from_secs(1))
                .over(2 * MIN)
                .route("/checkout"),
        );
        let wall = SystemTime::UNIX_EPOCH;
        // /slow is slow (bucket 11: 2.5-5 s), /checkout fast.
        let mut s = snapshot("/slow", 100, 0, 11);
        s.series.extend(snapshot("/checkout", 100, 0, 0).series);
        assert!(e.evaluate(MIN, wall, &s).is_empty());
        assert!(e.rules[0].value.unwrap() <= 0.005);
        // Now /checkout is slow too.
        let mut s = snapshot("/slow", 100, 0, 11);
        let mut slow = snapshot("/checkout", 100, 0, 0);
        slow.series[0].buckets[11] = 400;
        s.series.extend(slow.series);
        let c = e.evaluate(2 * MIN, wall, &s);
        assert_eq!(states(&c), [(AlertState::Inactive, AlertState::Firing)]);
        assert!(e.rules[0].value.unwrap() > 2.5);
    }

    #[test]
    fn request_rate_below_fires_when_traffic_stops() {
        let mut e = engine(Alert::request_rate().below(1.0).over(2 * MIN));
        let wall = SystemTime::UNIX_EPOCH;
        assert!(e.evaluate(MIN, wall, &snapshot("/", 600, 0, 0)).is_empty());
        assert_eq!(e.rules[0].value, Some(10.0));
        assert!(e.evaluate(2 * MIN, wall, &snapshot("/", 1200, 0, 0)).is_empty());
        assert!(e.evaluate(3 * MIN, wall, &snapshot("/", 1230, 0, 0)).is_empty());
        // The window [2m, 4m]: 60 requests in 120 s.
        let c = e.evaluate(4 * MIN, wall, &snapshot("/", 1260, 0, 0));
        assert_eq!(states(&c), [(AlertState::Inactive, AlertState::Firing)]);
        assert_eq!(e.rules[0].value, Some(0.5));
    }

    #[test]
    fn in_flight_alert_reads_the_gauge_at_each_evaluation() {
        let mut e = engine(Alert::in_flight().above(100));
        let wall = SystemTime::UNIX_EPOCH;
        let mut s = Snapshot {
            in_flight: 150,
            ..Snapshot::default()
        };
        let _ = &mut s;
        let c = e.evaluate(Duration::from_secs(15), wall, &s);
        assert_eq!(states(&c), [(AlertState::Inactive, AlertState::Firing)]);
        s.in_flight = 3;
        let c = e.evaluate(Duration::from_secs(30), wall, &s);
        assert_eq!(states(&c), [(AlertState::Firing, AlertState::Inactive)]);
    }

    #[test]
    fn a_burn_rate_alert_needs_both_of_its_windows_over_the_rate() {
        use crate::alerts::Slo;
        let slo = Slo::availability(0.99);
        let mut e = Engine::new(Vec::new(), vec![slo], &Snapshot::default());
        let wall = SystemTime::UNIX_EPOCH;
        let (mut ok, mut failed) = (0, 0);
        let mut page_fired = None;
        let mut page_resolved = None;
        for m in 1..=120u32 {
            // 100 requests a minute; all of them fail in minutes 61 to 70.
            if (61..=70).contains(&m) {
                failed += 100;
            } else {
                ok += 100;
            }
            let changes = e.evaluate(m * MIN, wall, &snapshot("/", ok, failed, 0));
            for c in changes.iter().filter(|c| c.source == Source::Burn(0, 0)) {
                match c.to {
                    AlertState::Firing => page_fired = Some(m),
                    AlertState::Inactive => page_resolved = Some(m),
                    AlertState::Pending => unreachable!("burn-rate alerts have no pending time"),
                }
            }
            if m == 65 {
                // A 5-minute spike: the short window burns 100x, the hour only
                // 500/6,000 = 8.3x, under 14.4x: no page yet.
                assert_eq!(e.slos[0].burn[0], Some(100.0 / (1.0 - 0.99) / 100.0));
                assert!(e.slos[0].burn[2].unwrap() < 14.4);
                assert_eq!(e.slos[0].alerts[0].state, AlertState::Inactive);
            }
        }
        // At minute 69 the hour holds 900 failures in 6,000 (15x); the page
        // resolves once the last failing minute leaves the 5-minute window.
        assert_eq!(page_fired, Some(69));
        assert_eq!(page_resolved, Some(75));
        // Over the whole (30-day) window so far: 1,000 of 12,000 failed, 8.3%
        // against a 1% budget.
        assert_eq!((e.slos[0].requests, e.slos[0].bad), (12_000, 1_000));
        let remaining = e.slos[0].budget_remaining().unwrap();
        assert!(
            (remaining - (1.0 - (1000.0 / 12000.0) / (1.0 - 0.99))).abs() < 1e-9,
            "{remaining}"
        );
        let json = e.status_json();
        assert!(
            json.contains("\"slos\":[{\"name\":\"availability\",\"objective\":\"availability\""),
            "{json}"
        );
        assert!(json.contains("\"burn_rates\":{\"5m\":0,\"30m\":"), "{json}");
    }

    #[test]
    fn slow_queries_count_over_the_window() {
        let mut e = Engine::new(
            vec![(Alert::slow_queries().above(2.0).over(2 * MIN), Comparison::Above(2.0))],
            Vec::new(),
            &Snapshot::default(),
        );
        let wall = SystemTime::UNIX_EPOCH;
        let at = |slow_queries: u64| Snapshot {
            slow_queries,
            ..Snapshot::default()
        };
        assert!(e.evaluate(MIN, wall, &at(2)).is_empty());
        assert_eq!(e.rules[0].value, Some(2.0));
        assert_eq!(e.evaluate(2 * MIN, wall, &at(5)).len(), 1);
        assert_eq!(e.rules[0].status.state, AlertState::Firing);
        // Two minutes later the window holds 5 - 5: resolved.
        assert_eq!(e.evaluate(4 * MIN, wall, &at(5)).len(), 1);
        assert_eq!(e.rules[0].status.state, AlertState::Inactive);
    }

    #[test]
    fn dropped_telemetry_counts_losses_over_the_window_and_memory_is_read_now() {
        let mut e = Engine::new(
            vec![
                (
                    Alert::dropped_telemetry().above(0.0).over(2 * MIN),
                    Comparison::Above(0.0),
                ),
                (Alert::resident_memory().above(1e9), Comparison::Above(1e9)),
            ],
            Vec::new(),
            &Snapshot::default(),
        );
        let wall = SystemTime::UNIX_EPOCH;
        let at = |dropped: u64, rss: u64| Snapshot {
            dropped,
            resident_bytes: Some(rss),
            ..Snapshot::default()
        };
        assert!(e.evaluate(MIN, wall, &at(0, 5e8 as u64)).is_empty());
        let c = e.evaluate(2 * MIN, wall, &at(3, 2e9 as u64));
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(e.rules[0].value, Some(3.0));
        // No new loss for a whole window: resolved.
        e.evaluate(3 * MIN, wall, &at(3, 5e8 as u64));
        assert_eq!(
            e.rules[0].status.state,
            AlertState::Firing,
            "minute 2's loss is in the window [1, 3]"
        );
        assert_eq!(e.rules[1].status.state, AlertState::Inactive);
        e.evaluate(4 * MIN, wall, &at(3, 5e8 as u64));
        assert_eq!(e.rules[0].status.state, AlertState::Inactive);
    }

    #[test]
    fn status_json_shows_every_rule() {
        let mut e = engine(Alert::error_rate().above(0.05).over(2 * MIN).label("severity", "page"));
        e.evaluate(MIN, SystemTime::UNIX_EPOCH, &snapshot("/", 90, 10, 0));
        let json = e.status_json();
        assert!(
            json.starts_with("{\"evaluations\":1,\"last_evaluation\":\"1970-01-01T00:00:00.000000Z\""),
            "{json}"
        );
        assert!(
            json.contains("\"name\":\"HighErrorRate\",\"state\":\"firing\",\"measure\":\"error_rate\""),
            "{json}"
        );
        assert!(
            json.contains("\"above\":0.05,\"value\":0.1,\"window_seconds\":120,\"requests_in_window\":100"),
            "{json}"
        );
        assert!(json.contains("\"labels\":{\"severity\":\"page\"}"), "{json}");
    }
}
