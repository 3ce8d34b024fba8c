//! One warning per collector outage, whatever signals it takes.
//!
//! Spans and metric pushes usually go to the same collector. When it is down,
//! both fail, each on its own schedule; a warning from each would say one fact
//! twice. The export threads report here instead: the first signal to fail
//! against a collector warns (naming the signal, the error, and what happens to
//! every signal sent there), the others failing against it stay quiet (their
//! failures are counted in `Apm::stats`), and one line says when export to it
//! works again for every signal. Collectors are told apart by scheme, host and port, so the
//! `/v1/traces` and `/v1/metrics` URLs of one OTLP/HTTP collector are one.

use std::sync::Mutex;

use super::worker::report;
use crate::redact::url_for_display;

/// What an export carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Spans,
    Metrics,
}

impl Signal {
    fn bit(self) -> u8 {
        match self {
            Signal::Spans => 1,
            Signal::Metrics => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Spans => "spans",
            Signal::Metrics => "metrics",
        }
    }

    /// What happens to this signal while its collector fails.
    fn meanwhile(self) -> &'static str {
        match self {
            Signal::Spans => "spans are dropped",
            Signal::Metrics => "metric pushes are retried with the cumulative totals",
        }
    }
}

/// One collector, as the export threads of one `Apm` see it.
#[derive(Debug)]
struct Collector {
    /// `scheme://host:port`, without userinfo; empty for a custom exporter.
    origin: String,
    /// The signals sent to it.
    signals: u8,
    /// The signals whose last export failed.
    failing: u8,
}

/// The collectors of one `Apm` and which of their signals are failing.
#[derive(Debug, Default)]
pub(crate) struct CollectorHealth {
    collectors: Mutex<Vec<Collector>>,
}

/// `scheme://host:port` of an endpoint URL, without userinfo or path.
fn origin(endpoint: &str) -> String {
    let shown = url_for_display(endpoint);
    let start = shown.find("://").map_or(0, |i| i + 3);
    let end = shown[start..].find('/').map_or(shown.len(), |i| start + i);
    shown[..end].to_owned()
}

impl CollectorHealth {
    /// Registers a signal sent to `endpoint` (`None`: a custom exporter, a
    /// collector of its own).
    pub(crate) fn register(&self, signal: Signal, endpoint: Option<&str>) {
        let origin = endpoint.map(origin).unwrap_or_default();
        let mut collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
        match collectors.iter_mut().find(|c| c.origin == origin && !origin.is_empty()) {
            Some(c) => c.signals |= signal.bit(),
            None => collectors.push(Collector {
                origin,
                signals: signal.bit(),
                failing: 0,
            }),
        }
    }

    fn with<R>(&self, signal: Signal, endpoint: Option<&str>, f: impl FnOnce(&mut Collector) -> R) -> Option<R> {
        let origin = endpoint.map(origin).unwrap_or_default();
        let mut collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
        collectors
            .iter_mut()
            .find(|c| c.origin == origin && c.signals & signal.bit() != 0)
            .map(f)
    }

    /// An export of `signal` to `endpoint` failed after succeeding (or at the
    /// first try): warns when no other signal of that collector is failing.
    pub(crate) fn failed(&self, signal: Signal, endpoint: Option<&str>, error: &str) {
        let warn = self.with(signal, endpoint, |c| {
            let first = c.failing == 0;
            c.failing |= signal.bit();
            first.then(|| (c.origin.clone(), meanwhile(c.signals)))
        });
        let Some(Some((origin, meanwhile))) = warn else {
            return;
        };
        let error = error.to_owned();
        report(move || {
            tracing::warn!(
                target: "tower_apm",
                endpoint = %display_origin(&origin),
                signal = signal.name(),
                error = %error,
                "export to the collector failed; {meanwhile} until it answers \
                 (counted in Apm::stats, no further warning until it recovers)"
            )
        });
    }

    /// An export of `signal` to `endpoint` succeeded after failing: says so
    /// once every signal of that collector works again (a signal that keeps
    /// failing after the others recovered stays counted in `Apm::stats`).
    pub(crate) fn recovered(&self, signal: Signal, endpoint: Option<&str>) {
        let recovered = self.with(signal, endpoint, |c| {
            let was = c.failing;
            c.failing &= !signal.bit();
            (was != 0 && c.failing == 0).then(|| c.origin.clone())
        });
        let Some(Some(origin)) = recovered else {
            return;
        };
        report(move || {
            tracing::info!(
                target: "tower_apm",
                endpoint = %display_origin(&origin),
                "export to the collector recovered"
            )
        });
    }
}

fn display_origin(origin: &str) -> &str {
    if origin.is_empty() {
        "custom span exporter"
    } else {
        origin
    }
}

fn meanwhile(signals: u8) -> String {
    [Signal::Spans, Signal::Metrics]
        .into_iter()
        .filter(|s| signals & s.bit() != 0)
        .map(Signal::meanwhile)
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_collector_per_scheme_host_and_port() {
        assert_eq!(origin("http://user:pw@c:4318/v1/traces"), "http://c:4318");
        assert_eq!(origin("http://c:4317"), "http://c:4317");
        let h = CollectorHealth::default();
        h.register(Signal::Spans, Some("http://c:4318/v1/traces"));
        h.register(Signal::Metrics, Some("http://c:4318/v1/metrics"));
        assert_eq!(h.collectors.lock().unwrap().len(), 1);
        h.register(Signal::Metrics, Some("http://other:4318/v1/metrics"));
        h.register(Signal::Spans, None);
        assert_eq!(h.collectors.lock().unwrap().len(), 3);
        assert_eq!(
            meanwhile(3),
            "spans are dropped and metric pushes are retried with the cumulative totals"
        );
    }
}
