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

use super::{Alert, BURN_ALERTS, Comparison, Measure, Objective, Slo};
use crate::metrics::DURATION_BOUNDS_S;

/// The `alertname` of every SLO's burn-rate alerts.
pub(crate) const BURN_ALERT_NAME: &str = "SloBurnRate";

const COUNT: &str = "http_server_request_duration_seconds_count";
const BUCKET: &str = "http_server_request_duration_seconds_bucket";
const ACTIVE: &str = "http_server_active_requests";
const RESIDENT: &str = "process_memory_usage_bytes";
const SPANS_DROPPED: &str = "tower_apm_spans_dropped_total";
const LOG_LINES_DROPPED: &str = "tower_apm_log_lines_dropped_total";
const SLOW_QUERIES: &str = "tower_apm_db_slow_queries_total";

/// A PromQL range: `5m`, `1h`, `90s`.
pub(crate) fn promql_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
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
        // Per process, as each process evaluates its own.
        Measure::InFlight => format!("sum by (instance) ({ACTIVE})"),
        Measure::ResidentMemory => format!("max by (instance) ({RESIDENT})"),
        Measure::DroppedTelemetry => format!(
            "(sum by (instance) (increase({SPANS_DROPPED}[{range}])) + sum by (instance) (increase({LOG_LINES_DROPPED}[{range}])))"
        ),
        Measure::SlowQueries => format!("sum by (instance) (increase({SLOW_QUERIES}[{range}]))"),
    };
    let mut e = format!("{value} {op} {threshold}");
    if alert.measure.windowed() && alert.min_requests > 0 {
        let _ = write!(e, " and sum(increase({COUNT}{all}[{range}])) >= {}", alert.min_requests);
    }
    e
}

/// An `le` label value as the Prometheus endpoint writes it (`1.0`, `0.25`).
fn le(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{bound:.1}")
    } else {
        format!("{bound}")
    }
}

/// The share of `slo`'s requests that were bad over `window`, in PromQL.
pub(crate) fn bad_ratio(slo: &Slo, window: Duration) -> String {
    let range = promql_duration(window);
    let all = selector(slo.route.as_deref(), None);
    match slo.objective {
        Objective::Availability => {
            let errors = selector(
                slo.route.as_deref(),
                Some(format!(
                    "http_response_status_code=~\"{}\"",
                    status_regex(&slo.error_statuses)
                )),
            );
            format!("((sum(increase({COUNT}{errors}[{range}])) or vector(0)) / sum(increase({COUNT}{all}[{range}])))")
        }
        Objective::Latency { index } => {
            let fast = selector(
                slo.route.as_deref(),
                Some(format!("le=\"{}\"", le(DURATION_BOUNDS_S[index]))),
            );
            format!(
                "((sum(increase({COUNT}{all}[{range}])) - sum(increase({BUCKET}{fast}[{range}]))) \
                 / sum(increase({COUNT}{all}[{range}])))"
            )
        }
    }
}

/// The `summary` annotation of `slo`'s burn-rate alert `k`.
pub(crate) fn burn_summary(slo: &Slo, k: usize) -> String {
    let (_, factor, long, short) = BURN_ALERTS[k];
    format!(
        "SLO {} ({}) spends its error budget {factor}x as fast as it lasts, over {} and {}",
        slo.name,
        slo.target,
        promql_duration(long),
        promql_duration(short)
    )
}

/// The PromQL of `slo`'s burn-rate alert `k` (of [`BURN_ALERTS`]).
pub(crate) fn burn_expr(slo: &Slo, k: usize) -> String {
    let (_, factor, long, short) = BURN_ALERTS[k];
    // Rounded: 14.4 * (1 - 0.999) is 0.014400000000000013 in binary.
    let threshold = format!("{:.12}", factor * slo.budget());
    let threshold = threshold.trim_end_matches('0').trim_end_matches('.');
    let mut e = format!(
        "{} > {threshold} and {} > {threshold}",
        bad_ratio(slo, long),
        bad_ratio(slo, short)
    );
    if slo.min_requests > 0 {
        let all = selector(slo.route.as_deref(), None);
        let _ = write!(
            e,
            " and sum(increase({COUNT}{all}[{}])) >= {}",
            promql_duration(short),
            slo.min_requests
        );
    }
    e
}

/// The rules file (YAML) for `alerts` and the burn-rate alerts of `slos`, one
/// group named `group`.
pub(crate) fn rules_file(group: &str, alerts: &[(Alert, Comparison)], slos: &[Slo]) -> String {
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
    for slo in slos {
        for (k, (severity, _, long, short)) in BURN_ALERTS.iter().enumerate() {
            let _ = writeln!(out, "      - alert: {}", yaml(BURN_ALERT_NAME));
            let _ = writeln!(out, "        expr: {}", yaml(&burn_expr(slo, k)));
            out.push_str("        for: 0s\n        labels:\n");
            let _ = writeln!(out, "          slo: {}", yaml(&slo.name));
            let _ = writeln!(out, "          severity: {}", yaml(severity));
            let _ = writeln!(out, "          long_window: {}", yaml(&promql_duration(*long)));
            let _ = writeln!(out, "          short_window: {}", yaml(&promql_duration(*short)));
            out.push_str("        annotations:\n");
            let _ = writeln!(out, "          summary: {}", yaml(&burn_summary(slo, k)));
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
        assert_eq!(expr(&a, c), "sum by (instance) (http_server_active_requests) > 100");
        let (a, c) = rule(Alert::resident_memory().above(1e9));
        assert_eq!(
            expr(&a, c),
            "max by (instance) (process_memory_usage_bytes) > 1000000000"
        );
        let (a, c) = rule(Alert::dropped_telemetry().above(0.0).over(Duration::from_secs(600)));
        assert_eq!(
            expr(&a, c),
            "(sum by (instance) (increase(tower_apm_spans_dropped_total[10m])) + sum by (instance) \
             (increase(tower_apm_log_lines_dropped_total[10m]))) > 0"
        );
        let (a, c) = rule(Alert::slow_queries().above(10.0).over(Duration::from_secs(300)));
        assert_eq!(
            expr(&a, c),
            "sum by (instance) (increase(tower_apm_db_slow_queries_total[5m])) > 10"
        );
    }

    #[test]
    fn slo_burn_rates_compare_bad_ratios_with_the_budget_times_the_rate() {
        let slo = Slo::latency(Duration::from_millis(250), 0.99).route("/checkout");
        assert_eq!(
            bad_ratio(&slo, Duration::from_secs(300)),
            "((sum(increase(http_server_request_duration_seconds_count{http_route=\"/checkout\"}[5m])) \
             - sum(increase(http_server_request_duration_seconds_bucket{http_route=\"/checkout\",le=\"0.25\"}[5m]))) \
             / sum(increase(http_server_request_duration_seconds_count{http_route=\"/checkout\"}[5m])))"
        );
        let slo = Slo::latency(Duration::from_secs(1), 0.99);
        assert!(bad_ratio(&slo, Duration::from_secs(300)).contains("le=\"1.0\""));
        let expr = burn_expr(&Slo::availability(0.999), 0);
        assert!(expr.contains("[1h]))) > 0.0144 and"), "{expr}");
        assert!(
            expr.ends_with("[5m]))) > 0.0144 and sum(increase(http_server_request_duration_seconds_count[5m])) >= 10"),
            "{expr}"
        );
        let text = rules_file("svc", &[], &[Slo::availability(0.999)]);
        assert_eq!(text.matches("- alert: \"SloBurnRate\"").count(), 3, "{text}");
        assert!(
            text.contains("          severity: \"ticket\"\n          long_window: \"3d\"\n"),
            "{text}"
        );
    }

    #[test]
    fn the_file_carries_names_for_labels_and_annotations() {
        let text = rules_file("checkout", &[], &[]);
        assert!(text.contains("    rules:\n"), "{text}");
        let text = rules_file(
            "checkout",
            &[rule(
                Alert::error_rate()
                    .above(0.05)
                    .pending_for(Duration::from_secs(120))
                    .label("severity", "page")
                    .annotation("summary", "5xx \"over\" 5%"),
            )],
            &[],
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

/// The rules file against a real Prometheus rule engine (`promtool test rules`,
/// from the Debian package `.ci/interop-setup` installs): the same input series
/// make Prometheus fire exactly when the in-process engine fires.
#[cfg(all(test, feature = "_interop"))]
mod promtool {
    use std::fmt::Write as _;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::rules_file;
    use crate::alerts::engine::{Engine, SeriesView, Snapshot};
    use crate::alerts::window::BUCKETS;
    use crate::alerts::{Alert, AlertState};
    use crate::metrics::DURATION_BOUNDS_S;

    const MINUTES: usize = 40;

    /// Requests per minute of one series: (route, status, bucket of each request).
    struct Traffic {
        route: &'static str,
        status: u16,
        per_minute: fn(usize) -> (u64, usize),
    }

    const TRAFFIC: [Traffic; 3] = [
        // `/`: 100 a minute until minute 35, none after; 40 of them fail in
        // minutes 10 to 19.
        Traffic {
            route: "/",
            status: 200,
            per_minute: |m| match m {
                1..=9 | 20..=35 => (100, 0),
                10..=19 => (60, 0),
                _ => (0, 0),
            },
        },
        Traffic {
            route: "/",
            status: 500,
            per_minute: |m| ((if (10..=19).contains(&m) { 40 } else { 0 }), 0),
        },
        // `/slow`: 20 a minute, slow (2.5-5 s) in minutes 25 to 34.
        Traffic {
            route: "/slow",
            status: 200,
            per_minute: |m| match m {
                0 => (0, 0),
                25..=34 => (20, 11),
                _ => (20, 0),
            },
        },
    ];

    /// Cumulative counts per bucket of each series at minute `m`.
    fn cumulative(t: &Traffic, m: usize) -> [u64; BUCKETS] {
        let mut b = [0; BUCKETS];
        for minute in 0..=m {
            let (n, bucket) = (t.per_minute)(minute);
            b[bucket] += n;
        }
        b
    }

    fn alerts() -> Vec<Alert> {
        vec![
            Alert::error_rate()
                .above(0.05)
                .over(Duration::from_secs(300))
                .pending_for(Duration::from_secs(120))
                .label("severity", "page"),
            Alert::latency(0.95)
                .above(Duration::from_secs(1))
                .over(Duration::from_secs(300))
                .route("/slow")
                .label("severity", "ticket"),
            Alert::request_rate()
                .below(1.0)
                .over(Duration::from_secs(300))
                .route("/"),
        ]
    }

    #[test]
    fn prometheus_fires_the_generated_rules_exactly_when_the_engine_does() {
        let promtool = std::env::var("TOWER_APM_PROMTOOL")
            .expect("TOWER_APM_PROMTOOL: run .ci/interop-setup and source target/interop/env");
        let interval = Duration::from_secs(60);
        let rules: Vec<_> = alerts()
            .into_iter()
            .map(|a| {
                let c = a.validate(interval).unwrap();
                (a, c)
            })
            .collect();

        let slos = vec![crate::alerts::Slo::availability(0.99).route("/")];
        // The in-process engine, one evaluation a minute.
        let mut engine = Engine::new(rules.clone(), slos.clone(), &Snapshot::default());
        let mut burn_firing: Vec<Vec<bool>> = vec![Vec::new(); 3];
        let mut firing: Vec<Vec<bool>> = vec![Vec::new(); rules.len()];
        for m in 1..=MINUTES {
            let series = TRAFFIC
                .iter()
                .map(|t| SeriesView {
                    route: Some(Arc::from(t.route)),
                    status: Some(t.status),
                    buckets: cumulative(t, m),
                })
                .collect();
            let snapshot = Snapshot {
                series,
                ..Snapshot::default()
            };
            engine.evaluate(interval * m as u32, SystemTime::UNIX_EPOCH, &snapshot);
            for (i, r) in engine.rules.iter().enumerate() {
                firing[i].push(r.status.state == AlertState::Firing);
            }
            for (k, status) in engine.slos[0].alerts.iter().enumerate() {
                burn_firing[k].push(status.state == AlertState::Firing);
            }
        }
        let minutes_firing = |i: usize| -> Vec<usize> { (1..=MINUTES).filter(|m| firing[i][m - 1]).collect() };
        // The scenario crosses every threshold and back.
        assert_eq!(minutes_firing(0), (12..=23).collect::<Vec<_>>(), "error rate");
        assert_eq!(minutes_firing(1), (25..=38).collect::<Vec<_>>(), "latency");
        assert_eq!(minutes_firing(2), (38..=40).collect::<Vec<_>>(), "request rate");
        let burning = |k: usize| -> Vec<usize> { (1..=MINUTES).filter(|m| burn_firing[k][m - 1]).collect() };
        // 14.4x (1% budget: 14.4% bad) over 1 h and 5 min: from minute 15, when
        // the hour so far holds 240 of 1,500, until the 5-minute window holds
        // only the last failing minute (40 of 500, 8%).
        assert_eq!(burning(0), (15..=22).collect::<Vec<_>>(), "page, 1h/5m");
        assert!(
            burning(1).contains(&11) && burning(2).contains(&10),
            "{:?} {:?}",
            burning(1),
            burning(2)
        );

        // The same series and rules for promtool; expected alerts are the
        // engine's, from minute 5 (before, the engine's windows are shorter than
        // five minutes while Prometheus' ranges reach before the first sample).
        let dir = std::env::temp_dir().join(format!("tower-apm-promtool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yml"), rules_file("equivalence", &rules, &slos)).unwrap();
        let mut test = String::from(
            "rule_files:\n  - rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        );
        for t in &TRAFFIC {
            let labels = format!("http_route=\"{}\",http_response_status_code=\"{}\"", t.route, t.status);
            let values = |f: &dyn Fn(&[u64; BUCKETS]) -> u64| {
                (0..=MINUTES)
                    .map(|m| f(&cumulative(t, m)).to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                test,
                "      - series: 'http_server_request_duration_seconds_count{{{labels}}}'\n        values: '{}'",
                values(&|b| b.iter().sum())
            );
            for i in 0..BUCKETS {
                let le = DURATION_BOUNDS_S
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
                let _ = writeln!(
                    test,
                    "      - series: 'http_server_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}'\n        values: '{}'",
                    values(&|b| b[..=i].iter().sum())
                );
            }
        }
        test.push_str("    alert_rule_test:\n");
        for (i, (alert, _)) in rules.iter().enumerate() {
            for m in 5..=MINUTES {
                let _ = writeln!(test, "      - eval_time: {m}m\n        alertname: {}", alert.name);
                if firing[i][m - 1] {
                    let labels: Vec<String> = alert.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    let _ = writeln!(
                        test,
                        "        exp_alerts:\n          - exp_labels: {{{}}}",
                        labels.join(", ")
                    );
                } else {
                    test.push_str("        exp_alerts: []\n");
                }
            }
        }
        // promtool compares all the `SloBurnRate` alerts firing at each time.
        for m in 5..=MINUTES {
            let _ = writeln!(
                test,
                "      - eval_time: {m}m\n        alertname: {}",
                super::BURN_ALERT_NAME
            );
            let expected: Vec<String> = crate::alerts::BURN_ALERTS
                .iter()
                .enumerate()
                .filter(|(k, _)| burn_firing[*k][m - 1])
                .map(|(k, (severity, _, long, short))| {
                    format!(
                        "          - exp_labels: {{slo: availability, severity: {severity}, long_window: {}, \
                         short_window: {}}}\n            exp_annotations: {{summary: {}}}",
                        super::promql_duration(*long),
                        super::promql_duration(*short),
                        super::yaml(&super::burn_summary(&slos[0], k))
                    )
                })
                .collect();
            if expected.is_empty() {
                test.push_str("        exp_alerts: []\n");
            } else {
                let _ = writeln!(test, "        exp_alerts:\n{}", expected.join("\n"));
            }
        }
        std::fs::write(dir.join("test.yml"), &test).unwrap();
        let check = std::process::Command::new(&promtool)
            .args(["check", "rules"])
            .arg(dir.join("rules.yml"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "promtool check rules:\n{out}");
        assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
        let run = std::process::Command::new(&promtool)
            .args(["test", "rules"])
            .arg(dir.join("test.yml"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "promtool test rules disagrees with the engine:\n{out}"
        );
        assert!(out.contains("SUCCESS"), "{out}");
    }
}
