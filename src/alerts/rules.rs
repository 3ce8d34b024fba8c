//! The configured alert rules as a Prometheus rules file, so that a fleet runs
//! the same alerts in Prometheus (over every instance's `/metrics`) and routes
//! them through Alertmanager, while each process still evaluates its own.
//!
//! Each rule reads the metric families the Prometheus endpoint serves
//! (`http_server_request_duration_seconds_*`, `http_server_active_requests`),
//! summed over every scraped instance.

use std::fmt::Write;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{Alert, Comparison, Measure};

const COUNT: &str = "http_server_request_duration_seconds_count";
const BUCKET: &str = "http_server_request_duration_seconds_bucket";
const ACTIVE: &str = "http_server_active_requests";

/// A PromQL range: `5m`, `1h`, `90s`.
pub(crate) fn promql_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A regular expression matching exactly the status codes in `range`: whole
/// hundreds as `5..`, the rest one by one.
pub(crate) fn status_regex(range: &RangeInclusive<u16>) -> String {
    let mut parts = Vec::new();
    let mut code = *range.start();
    while code <= *range.end() {
        if code % 100 == 0 && code + 99 <= *range.end() {
            parts.push(format!("{}..", code / 100));
            code += 100;
        } else {
            parts.push(code.to_string());
            code += 1;
        }
    }
    parts.join("|")
}

/// `{http_route="/checkout",...}` for the extra matchers, or nothing.
fn selector(route: Option<&str>, extra: Option<String>) -> String {
    let mut m = Vec::new();
    if let Some(r) = route {
        m.push(format!("http_route=\"{}\"", escape_promql(r)));
    }
    if let Some(e) = extra {
        m.push(e);
    }
    if m.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", m.join(","))
    }
}

fn escape_promql(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A YAML double-quoted string.
fn yaml(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn op(c: Comparison) -> (&'static str, f64) {
    match c {
        Comparison::Above(t) => (">", t),
        Comparison::Below(t) => ("<", t),
    }
}

/// The PromQL expression of one rule.
pub(crate) fn expr(alert: &Alert, comparison: Comparison) -> String {
    let range = promql_duration(alert.window);
    let all = selector(alert.route.as_deref(), None);
    let (op, threshold) = op(comparison);
    let value = match alert.measure {
        Measure::ErrorRatio => {
            let errors = selector(
                alert.route.as_deref(),
                Some(format!(
                    "http_response_status_code=~\"{}\"",
                    status_regex(&alert.error_statuses)
                )),
            );
            format!("(sum(increase({COUNT}{errors}[{range}])) or vector(0)) / sum(increase({COUNT}{all}[{range}]))")
        }
        Measure::Latency(q) => {
            format!("histogram_quantile({q}, sum by (le) (rate({BUCKET}{all}[{range}])))")
        }
        Measure::RequestRate => format!("(sum(rate({COUNT}{all}[{range}])) or vector(0))"),
        Measure::InFlight => format!("sum({ACTIVE})"),
    };
    let mut e = format!("{value} {op} {threshold}");
    if alert.measure.windowed() && alert.min_requests > 0 {
        let _ = write!(e, " and sum(increase({COUNT}{all}[{range}])) >= {}", alert.min_requests);
    }
    e
}

/// The rules file (YAML) for `alerts`, one group named `group`.
pub(crate) fn rules_file(group: &str, alerts: &[(Alert, Comparison)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Alert rules of tower-apm {}, generated from the rules configured in the service:",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# the same conditions, evaluated by Prometheus over every instance."
    );
    out.push_str("groups:\n");
    let _ = writeln!(out, "  - name: {}", yaml(group));
    out.push_str("    rules:\n");
    for (alert, comparison) in alerts {
        let _ = writeln!(out, "      - alert: {}", yaml(&alert.name));
        let _ = writeln!(out, "        expr: {}", yaml(&expr(alert, *comparison)));
        let _ = writeln!(out, "        for: {}", promql_duration_or_zero(alert.pending));
        if !alert.labels.is_empty() {
            out.push_str("        labels:\n");
            for (k, v) in &alert.labels {
                let _ = writeln!(out, "          {k}: {}", yaml(v));
            }
        }
        if !alert.annotations.is_empty() {
            out.push_str("        annotations:\n");
            for (k, v) in &alert.annotations {
                let _ = writeln!(out, "          {k}: {}", yaml(v));
            }
        }
    }
    out
}

fn promql_duration_or_zero(d: Duration) -> String {
    if d.is_zero() { "0s".into() } else { promql_duration(d) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(a: Alert) -> (Alert, Comparison) {
        let c = a.validate(Duration::from_secs(15)).unwrap();
        (a, c)
    }

    #[test]
    fn status_ranges_become_exact_regular_expressions() {
        assert_eq!(status_regex(&(500..=599)), "5..");
        assert_eq!(status_regex(&(400..=599)), "4..|5..");
        assert_eq!(status_regex(&(500..=503)), "500|501|502|503");
        assert_eq!(status_regex(&(429..=429)), "429");
        assert_eq!(status_regex(&(499..=600)), "499|5..|600");
    }

    #[test]
    fn ranges_use_the_largest_whole_unit() {
        assert_eq!(promql_duration(Duration::from_secs(300)), "5m");
        assert_eq!(promql_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(promql_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn each_measure_has_its_promql() {
        let (a, c) = rule(Alert::error_rate().above(0.05).over(Duration::from_secs(300)));
        assert_eq!(
            expr(&a, c),
            "(sum(increase(http_server_request_duration_seconds_count{http_response_status_code=~\"5..\"}[5m])) \
             or vector(0)) / sum(increase(http_server_request_duration_seconds_count[5m])) > 0.05 \
             and sum(increase(http_server_request_duration_seconds_count[5m])) >= 10"
        );
        let (a, c) = rule(
            Alert::latency(0.95)
                .above(Duration::from_secs(1))
                .over(Duration::from_secs(300))
                .route("/checkout")
                .min_requests(0),
        );
        assert_eq!(
            expr(&a, c),
            "histogram_quantile(0.95, sum by (le) \
             (rate(http_server_request_duration_seconds_bucket{http_route=\"/checkout\"}[5m]))) > 1"
        );
        let (a, c) = rule(Alert::request_rate().below(1.0).over(Duration::from_secs(600)));
        assert_eq!(
            expr(&a, c),
            "(sum(rate(http_server_request_duration_seconds_count[10m])) or vector(0)) < 1"
        );
        let (a, c) = rule(Alert::in_flight().above(100));
        assert_eq!(expr(&a, c), "sum(http_server_active_requests) > 100");
    }

    #[test]
    fn the_file_carries_names_for_labels_and_annotations() {
        let text = rules_file(
            "checkout",
            &[rule(
                Alert::error_rate()
                    .above(0.05)
                    .pending_for(Duration::from_secs(120))
                    .label("severity", "page")
                    .annotation("summary", "5xx \"over\" 5%"),
            )],
        );
        assert!(
            text.contains("  - name: \"checkout\"\n    rules:\n      - alert: \"HighErrorRate\"\n"),
            "{text}"
        );
        assert!(
            text.contains("        for: 2m\n        labels:\n          severity: \"page\"\n"),
            "{text}"
        );
        assert!(text.contains("          summary: \"5xx \\\"over\\\" 5%\"\n"), "{text}");
    }
}
