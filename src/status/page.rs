//! The routes of the status page: the HTML page, the waterfall of one trace,
//! and the JSON behind them. Rendered on request from snapshots; nothing here
//! runs on the request path of the application.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::trace::{SpanKind, TraceId};

use super::history::{self, History, Point};
use super::recent::{RecentTrace, SpanSummary};
use crate::Apm;
use crate::alerts::window::Totals;
use crate::logs::json;
use crate::metrics::Metrics;
use crate::operator;

/// What the handlers read.
#[derive(Clone)]
pub(crate) struct StatusState {
    pub(crate) apm: Apm,
    pub(crate) history: Option<Arc<Mutex<History>>>,
    pub(crate) trace_url: Option<Arc<str>>,
}

/// The `/apm` routes, behind the operator guard (the token when one is set,
/// and the headers every operator answer carries).
pub(crate) fn router(apm: &Apm, token: Option<operator::Token>, trace_url: Option<Arc<str>>) -> Router {
    let history = apm.metrics_handle().map(|m| history::start(&m));
    let state = StatusState {
        apm: apm.clone(),
        history,
        trace_url,
    };
    let routes = Router::new()
        .route("/apm", get(page))
        .route("/apm/traces/{trace_id}", get(trace_page))
        .route("/apm/api/overview", get(overview_json))
        .route("/apm/api/routes", get(routes_json))
        .route("/apm/api/traces", get(traces_json))
        .route("/apm/api/traces/{trace_id}", get(trace_json));
    operator::guard(routes, token).with_state(state)
}

type Params = RawQuery;

/// The `token` of a query string, carried on in the page's links.
fn token_param(params: &Params) -> Option<&str> {
    operator::query_token(params.0.as_deref())
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The page's only script: it reloads the page every 10 s.
const RELOAD_SCRIPT: &str = "setTimeout(function(){location.reload()},10000)";

/// `'sha256-<base64>'` of `script`: a CSP source that allows exactly that
/// inline script (CSP Level 2, "hash-source").
fn script_hash_source(script: &str) -> String {
    use sha2::Digest as _;
    format!("'sha256-{}'", base64(&sha2::Sha256::digest(script.as_bytes())))
}

/// Standard base64 with padding (RFC 4648, 4).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The pages' Content-Security-Policy, made once: nothing loads from
/// anywhere, the only script that runs is [`RELOAD_SCRIPT`] (by its hash, no
/// `'unsafe-inline'`), no other site may frame the page, no form posts and no
/// `<base>` may redirect its links.
fn content_security_policy() -> HeaderValue {
    static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        let policy = format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src {}; img-src data:; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            script_hash_source(RELOAD_SCRIPT)
        );
        HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    });
    CSP.clone()
}

fn html_response(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, content_security_policy()),
            // For browsers without CSP's `frame-ancestors`.
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        body,
    )
        .into_response()
}

/// Figures over one window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    pub(crate) requests: u64,
    pub(crate) rate: f64,
    pub(crate) error_ratio: Option<f64>,
    pub(crate) p50: Option<f64>,
    pub(crate) p95: Option<f64>,
    pub(crate) p99: Option<f64>,
}

fn window(t: &Totals, secs: f64) -> Window {
    Window {
        requests: t.requests,
        rate: t.requests as f64 / secs,
        error_ratio: (t.requests > 0).then(|| t.errors as f64 / t.requests as f64),
        p50: t.quantile(0.5),
        p95: t.quantile(0.95),
        p99: t.quantile(0.99),
    }
}

const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("1h", Duration::from_secs(3600)),
];

/// One chart point: the figures of one history step.
struct Step {
    at: SystemTime,
    w: Window,
}

struct Overview {
    service: String,
    uptime: Duration,
    in_flight: i64,
    windows: Vec<(&'static str, Window)>,
    steps: Vec<Step>,
    stats: crate::TelemetryStats,
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    last_export: Option<SystemTime>,
}

fn overview(state: &StatusState) -> Overview {
    let apm = &state.apm;
    let metrics = apm.metrics_handle();
    let now = Point {
        at: SystemTime::now(),
        totals: metrics.as_deref().map(history::totals).unwrap_or_default(),
    };
    let (windows, steps) = match &state.history {
        Some(h) => {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            let windows = WINDOWS
                .iter()
                .map(|(name, d)| {
                    let w = h.over(&now, *d).map(|(t, secs)| window(&t, secs)).unwrap_or_default();
                    (*name, w)
                })
                .collect();
            let points: Vec<Point> = h.points.iter().copied().chain(std::iter::once(now)).collect();
            let steps = points
                .windows(2)
                .filter_map(|p| {
                    let secs = p[1].at.duration_since(p[0].at).ok()?.as_secs_f64();
                    (secs > 0.0).then(|| Step {
                        at: p[1].at,
                        w: window(&p[1].totals.since(&p[0].totals), secs),
                    })
                })
                .collect();
            (windows, steps)
        }
        None => (Vec::new(), Vec::new()),
    };
    let process = crate::metrics::process::sample();
    let stats = apm.stats();
    Overview {
        service: apm.service_name().to_owned(),
        uptime: apm.uptime(),
        in_flight: apm.active_requests().unwrap_or(0),
        windows,
        steps,
        stats,
        cpu_seconds: process.as_ref().map(|p| (p.cpu_user + p.cpu_system).as_secs_f64()),
        resident_bytes: process.map(|p| p.resident_bytes),
        last_export: apm.last_export(),
    }
}

fn num(out: &mut String, v: Option<f64>) {
    match v.filter(|v| v.is_finite()) {
        Some(v) => {
            let _ = write!(out, "{}", (v * 1e6).round() / 1e6);
        }
        None => out.push_str("null"),
    }
}

fn string(out: &mut String, s: &str) {
    let mut b = Vec::with_capacity(s.len() + 2);
    json::push_string(&mut b, s);
    out.push_str(&String::from_utf8_lossy(&b));
}

fn time(out: &mut String, t: SystemTime) {
    let mut b = Vec::with_capacity(32);
    json::push_time(&mut b, t);
    out.push_str(&String::from_utf8_lossy(&b));
}

fn window_json(out: &mut String, w: &Window) {
    let _ = write!(out, "{{\"requests\":{},\"rate\":", w.requests);
    num(out, Some(w.rate));
    out.push_str(",\"error_ratio\":");
    num(out, w.error_ratio);
    for (k, v) in [("p50", w.p50), ("p95", w.p95), ("p99", w.p99)] {
        let _ = write!(out, ",\"{k}\":");
        num(out, v);
    }
    out.push('}');
}

async fn overview_json(State(state): State<StatusState>) -> Response {
    let o = overview(&state);
    let mut out = String::with_capacity(4096);
    out.push_str("{\"service\":");
    string(&mut out, &o.service);
    let _ = write!(
        out,
        ",\"uptime_seconds\":{},\"in_flight\":{}",
        o.uptime.as_secs(),
        o.in_flight
    );
    out.push_str(",\"windows\":{");
    for (i, (name, w)) in o.windows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":");
        window_json(&mut out, w);
    }
    out.push_str("},\"history\":[");
    for (i, s) in o.steps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"at\":");
        time(&mut out, s.at);
        out.push_str(",\"figures\":");
        window_json(&mut out, &s.w);
        out.push('}');
    }
    out.push_str("],\"process\":{\"cpu_seconds\":");
    num(&mut out, o.cpu_seconds);
    out.push_str(",\"resident_bytes\":");
    match o.resident_bytes {
        Some(b) => {
            let _ = write!(out, "{b}");
        }
        None => out.push_str("null"),
    }
    let s = &o.stats;
    let _ = write!(
        out,
        "}},\"telemetry\":{{\"spans_exported\":{},\"spans_dropped\":{},\"export_failures\":{},\"log_lines_written\":{},\
         \"log_lines_dropped\":{},\"metric_export_failures\":{},\"security_events_dropped\":{},\"last_export\":",
        s.spans_exported,
        s.spans_dropped(),
        s.export_failures,
        s.log_lines_written,
        s.log_lines_dropped_queue_full + s.log_lines_dropped_write_failed,
        s.metric_export_failures,
        s.security_events_dropped,
    );
    match o.last_export {
        Some(t) => time(&mut out, t),
        None => out.push_str("null"),
    }
    out.push('}');
    out.push_str(",\"lifecycle\":");
    match state.apm.lifecycle() {
        Some(l) => {
            let _ = write!(
                out,
                "{{\"phase\":\"{}\",\"ready\":{},\"workers_running\":{},\"cleanup_hooks\":{}}}",
                l.phase, l.ready, l.workers, l.hooks
            );
        }
        None => out.push_str("null"),
    }
    out.push('}');
    json_response(out)
}

/// One row of the routes table: a route template and method, since start.
pub(crate) struct RouteRow {
    pub(crate) method: &'static str,
    pub(crate) route: String,
    pub(crate) totals: Totals,
}

pub(crate) fn route_rows(metrics: &Metrics) -> Vec<RouteRow> {
    let mut rows: BTreeMap<(String, &'static str), Totals> = BTreeMap::new();
    for s in metrics.series() {
        if s.attrs.overflow {
            continue;
        }
        let route = s.attrs.route.as_deref().unwrap_or("(no route)").to_owned();
        history::add_series(rows.entry((route, s.attrs.method)).or_default(), &s);
    }
    rows.into_iter()
        .map(|((route, method), totals)| RouteRow { method, route, totals })
        .collect()
}

async fn routes_json(State(state): State<StatusState>) -> Response {
    let uptime = state.apm.uptime().as_secs_f64().max(1e-3);
    let rows = state.apm.metrics_handle().map(|m| route_rows(&m)).unwrap_or_default();
    let mut out = String::from("{\"routes\":[");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"method\":");
        string(&mut out, r.method);
        out.push_str(",\"route\":");
        string(&mut out, &r.route);
        let _ = write!(out, ",\"errors\":{},\"figures\":", r.totals.errors);
        window_json(&mut out, &window(&r.totals, uptime));
        out.push_str(",\"buckets\":[");
        for (j, b) in r.totals.buckets.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{b}");
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    json_response(out)
}

fn recent(state: &StatusState) -> (Vec<RecentTrace>, Vec<RecentTrace>) {
    state.apm.recent_traces()
}

fn trace_summary_json(out: &mut String, t: &RecentTrace) {
    let root = t.root();
    out.push_str("{\"trace_id\":");
    string(out, &root.trace_id.to_string());
    out.push_str(",\"name\":");
    string(out, &root.name);
    out.push_str(",\"start\":");
    time(out, root.start);
    out.push_str(",\"duration_ms\":");
    num(out, Some(root.duration().as_secs_f64() * 1000.0));
    out.push_str(",\"status\":");
    match root.status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"spans\":{}}}", t.spans.len());
}

async fn traces_json(State(state): State<StatusState>) -> Response {
    let (failed, slow) = recent(&state);
    let mut out = String::from("{\"failed\":[");
    for (i, t) in failed.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        trace_summary_json(&mut out, t);
    }
    out.push_str("],\"slow\":[");
    for (i, t) in slow.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        trace_summary_json(&mut out, t);
    }
    out.push_str("]}");
    json_response(out)
}

fn find(state: &StatusState, id: &str) -> Option<RecentTrace> {
    let id = TraceId::from_hex(id).ok()?;
    let (failed, slow) = recent(state);
    failed.into_iter().chain(slow).find(|t| t.root().trace_id == id)
}

fn kind_name(k: &SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    }
}

fn detail(s: &SpanSummary) -> Option<String> {
    s.detail.as_ref().map(|v| v.as_str().into_owned())
}

async fn trace_json(State(state): State<StatusState>, Path(id): Path<String>) -> Response {
    let Some(t) = find(&state, &id) else {
        return (StatusCode::NOT_FOUND, "no such trace among the recent ones\n").into_response();
    };
    let start = t.root().start;
    let mut out = String::from("{\"trace_id\":");
    string(&mut out, &id);
    out.push_str(",\"spans\":[");
    for (i, s) in t.spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"span_id\":");
        string(&mut out, &s.span_id.to_string());
        out.push_str(",\"parent_span_id\":");
        string(&mut out, &s.parent_span_id.to_string());
        out.push_str(",\"name\":");
        string(&mut out, &s.name);
        let _ = write!(out, ",\"kind\":\"{}\",\"offset_ms\":", kind_name(&s.kind));
        num(
            &mut out,
            Some(s.start.duration_since(start).unwrap_or_default().as_secs_f64() * 1000.0),
        );
        out.push_str(",\"duration_ms\":");
        num(&mut out, Some(s.duration().as_secs_f64() * 1000.0));
        let _ = write!(out, ",\"error\":{}", s.error);
        if let Some(d) = detail(s) {
            out.push_str(",\"detail\":");
            string(&mut out, &d);
        }
        out.push('}');
    }
    out.push_str("]}");
    json_response(out)
}

async fn page(State(state): State<StatusState>, params: Params) -> Response {
    html_response(render_page(&state, token_param(&params)))
}

async fn trace_page(State(state): State<StatusState>, Path(id): Path<String>, params: Params) -> Response {
    let Some(t) = find(&state, &id) else {
        return (StatusCode::NOT_FOUND, "no such trace among the recent ones\n").into_response();
    };
    html_response(render_trace(&state, &t, token_param(&params)))
}

/// HTML text, escaped.
fn esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |s| format!("{:.1} ms", s * 1000.0))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |r| format!("{:.2}%", r * 100.0))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0 2em 2em;color:#222}h1{font-size:20px}\
h2{font-size:16px;margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse}\
td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}td:first-child,th:first-child,\
td.l{text-align:left}.cards{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;\
border-radius:6px;padding:8px 12px;min-width:150px}.card b{display:block;font-size:18px}\
.firing{color:#b00;font-weight:bold}.pending{color:#b70}.muted{color:#888}svg{display:block}";

/// A line chart of `values` (one per history step), as inline SVG.
fn sparkline(out: &mut String, label: &str, values: &[Option<f64>]) {
    let (w, h) = (300.0, 50.0);
    let max = values.iter().flatten().copied().fold(0.0f64, f64::max);
    let _ = write!(
        out,
        "<svg role=\"img\" aria-label=\"{label}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#eee\"/><polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"1.5\" points=\""
    );
    let n = values.len().max(2) - 1;
    for (i, v) in values.iter().enumerate() {
        let x = i as f64 * w / n as f64;
        let y = h - 2.0 - v.unwrap_or(0.0) / if max > 0.0 { max } else { 1.0 } * (h - 4.0);
        let _ = write!(out, "{x:.1},{y:.1} ");
    }
    out.push_str("\"/></svg>");
}

/// A bar chart of a route's duration buckets, as inline SVG.
fn histogram_bars(out: &mut String, buckets: &[u64]) {
    let max = buckets.iter().copied().max().unwrap_or(0).max(1);
    let (bw, h) = (6.0, 20.0);
    let _ = write!(
        out,
        "<svg width=\"{}\" height=\"{h}\" role=\"img\" aria-label=\"duration histogram\">",
        bw * buckets.len() as f64
    );
    for (i, b) in buckets.iter().enumerate() {
        let bh = *b as f64 / max as f64 * h;
        let _ = write!(
            out,
            "<rect x=\"{:.0}\" y=\"{:.1}\" width=\"{}\" height=\"{bh:.1}\" fill=\"#69c\"/>",
            i as f64 * bw,
            h - bh,
            bw - 1.0
        );
    }
    out.push_str("</svg>");
}

fn link(token: Option<&str>, path: &str) -> String {
    match token {
        Some(t) => format!("{path}?token={}", t.replace(['&', '"', '<', '>', ' '], "")),
        None => path.to_owned(),
    }
}

/// The whole page.
pub(crate) fn render_page(state: &StatusState, token: Option<&str>) -> String {
    let o = overview(state);
    let mut out = String::with_capacity(32 * 1024);
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>");
    esc(&mut out, &o.service);
    let _ = write!(out, " · tower-apm</title><style>{STYLE}</style></head><body><h1>");
    esc(&mut out, &o.service);
    let _ = write!(
        out,
        " <span class=\"muted\">up {}s · {} in flight</span></h1><h2>Overview</h2><div class=\"cards\">",
        o.uptime.as_secs(),
        o.in_flight
    );
    for (name, w) in &o.windows {
        let _ = write!(
            out,
            "<div class=\"card\" id=\"window-{name}\">last {name}<b>{:.2} req/s</b>errors {}<br>p50 {} · p95 {} · p99 {}</div>",
            w.rate,
            pct(w.error_ratio),
            ms(w.p50),
            ms(w.p95),
            ms(w.p99)
        );
    }
    out.push_str("</div><div class=\"cards\">");
    let series: [(&str, Vec<Option<f64>>); 3] = [
        ("requests per second", o.steps.iter().map(|s| Some(s.w.rate)).collect()),
        ("error ratio", o.steps.iter().map(|s| s.w.error_ratio).collect()),
        ("p95 latency", o.steps.iter().map(|s| s.w.p95).collect()),
    ];
    for (label, values) in &series {
        let _ = write!(out, "<div class=\"card\">{label} (last hour)");
        sparkline(&mut out, label, values);
        out.push_str("</div>");
    }
    let s = &o.stats;
    let _ = write!(
        out,
        "</div><div class=\"cards\"><div class=\"card\">process CPU<b>{}</b></div><div class=\"card\">memory<b>{}</b></div>\
         <div class=\"card\" id=\"telemetry\">telemetry<br>spans exported {} · dropped {}<br>export failures {}<br>\
         metric push failures {}<br>log lines dropped {}<br>last export {}</div></div>",
        o.cpu_seconds.map_or_else(|| "–".into(), |c| format!("{c:.1} s")),
        o.resident_bytes
            .map_or_else(|| "–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        s.spans_exported,
        s.spans_dropped(),
        s.export_failures,
        s.metric_export_failures,
        s.log_lines_dropped_queue_full + s.log_lines_dropped_write_failed,
        o.last_export.map_or_else(
            || "never".into(),
            |t| format!(
                "{}s ago",
                SystemTime::now().duration_since(t).unwrap_or_default().as_secs()
            )
        ),
    );

    if let Some(l) = state.apm.lifecycle() {
        let _ = write!(
            out,
            "<div class=\"cards\"><div class=\"card\" id=\"lifecycle\">lifecycle<b>{}</b>{} · {} in flight · {} workers running</div></div>",
            l.phase,
            if l.ready { "ready" } else { "not ready" },
            o.in_flight,
            l.workers
        );
    }

    // Routes.
    out.push_str("<h2>Routes</h2><table id=\"routes\"><tr><th>route</th><th>method</th><th>requests</th><th>req/s</th><th>errors</th><th>p50</th><th>p95</th><th>p99</th><th>durations</th></tr>");
    let uptime = o.uptime.as_secs_f64().max(1e-3);
    if let Some(m) = state.apm.metrics_handle() {
        for r in route_rows(&m) {
            let w = window(&r.totals, uptime);
            out.push_str("<tr><td class=\"l\">");
            esc(&mut out, &r.route);
            let _ = write!(
                out,
                "</td><td>{}</td><td class=\"count\">{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
                r.method,
                w.requests,
                w.rate,
                pct(w.error_ratio),
                ms(w.p50),
                ms(w.p95),
                ms(w.p99)
            );
            histogram_bars(&mut out, &r.totals.buckets);
            out.push_str("</td></tr>");
        }
    }
    out.push_str("</table>");

    // Recent slow and failed requests.
    let (failed, slow) = recent(state);
    for (title, id, list) in [
        ("Recent failed requests", "failed", &failed),
        ("Recent slow requests", "slow", &slow),
    ] {
        let _ = write!(
            out,
            "<h2>{title}</h2><table id=\"{id}\"><tr><th>request</th><th>status</th><th>duration</th><th>spans</th><th>trace</th></tr>"
        );
        if list.is_empty() {
            out.push_str(if state.apm.exports_spans() {
                "<tr><td class=\"l muted\" colspan=\"5\">none yet (kept from exported spans: up to one export interval behind)</td></tr>"
            } else {
                "<tr><td class=\"l muted\" colspan=\"5\">none: span export is off (OTEL_TRACES_EXPORTER=none), so no spans are kept</td></tr>"
            });
        }
        for t in list.iter().rev() {
            let root = t.root();
            let id = root.trace_id.to_string();
            out.push_str("<tr><td class=\"l\"><a href=\"");
            esc(&mut out, &link(token, &format!("/apm/traces/{id}")));
            out.push_str("\">");
            esc(&mut out, &root.name);
            let _ = write!(
                out,
                "</a></td><td>{}</td><td>{}</td><td>{}</td><td>",
                root.status.map_or_else(|| "–".into(), |s| s.to_string()),
                ms(Some(root.duration().as_secs_f64())),
                t.spans.len()
            );
            trace_id_cell(&mut out, state, &id);
            out.push_str("</td></tr>");
        }
        out.push_str("</table>");
    }

    // Alerts, SLOs and security.
    alerts_html(&mut out, &state.apm);

    out.push_str(
        "<p class=\"muted\">Refreshes every 10 s. JSON: /apm/api/overview, /apm/api/routes, /apm/api/traces.</p>\
         <script>",
    );
    out.push_str(RELOAD_SCRIPT);
    out.push_str("</script></body></html>");
    out
}

/// Alert rules, SLOs and the latest security detections.
fn alerts_html(out: &mut String, apm: &Apm) {
    out.push_str(
        "<h2>Alerts</h2><table id=\"alerts\"><tr><th>alert</th><th>state</th><th>value</th><th>threshold</th></tr>",
    );
    let alerts = apm.alerts_handle();
    match &alerts {
        None => out.push_str("<tr><td class=\"l muted\" colspan=\"4\">no alert rules</td></tr>"),
        Some(a) => {
            let engine = a.engine.lock().unwrap_or_else(|e| e.into_inner());
            for r in &engine.rules {
                let state = r.status.state.as_str();
                out.push_str("<tr><td class=\"l\">");
                esc(out, &r.alert.name);
                let _ = write!(
                    out,
                    "</td><td class=\"{state}\">{state}</td><td>{}</td><td>{}</td></tr>",
                    r.value.map_or_else(|| "–".into(), |v| format!("{v:.4}")),
                    r.comparison.describe()
                );
            }
            if !engine.slos.is_empty() {
                out.push_str("</table><h2>SLOs</h2><table id=\"slos\"><tr><th>objective</th><th>budget left</th><th>burn 5m</th><th>burn 1h</th><th>burn 6h</th></tr>");
                for slo in &engine.slos {
                    out.push_str("<tr><td class=\"l\">");
                    esc(out, &slo.slo.name);
                    let burn = |i: usize| slo.burn[i].map_or_else(|| "–".into(), |b| format!("{b:.2}x"));
                    let _ = write!(
                        out,
                        "</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        pct(slo.budget_remaining()),
                        burn(0),
                        burn(2),
                        burn(3)
                    );
                }
            }
        }
    }
    out.push_str("</table>");
    if let Some(m) = apm.security_handle() {
        out.push_str("<h2>Security</h2><table id=\"security\"><tr><th>detection</th><th>event</th><th>client</th><th>when</th></tr>");
        let recent = m.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.is_empty() {
            out.push_str("<tr><td class=\"l muted\" colspan=\"4\">none</td></tr>");
        }
        for d in recent.iter().rev() {
            let _ = write!(out, "<tr><td class=\"l\">{}</td><td class=\"l\">", d.alert);
            esc(out, &d.event);
            let _ = write!(
                out,
                "</td><td>{}</td><td>{}s ago</td></tr>",
                d.client.map_or_else(|| "–".into(), |c| c.to_string()),
                SystemTime::now().duration_since(d.at).unwrap_or_default().as_secs()
            );
        }
        out.push_str("</table>");
    }
}

fn trace_id_cell(out: &mut String, state: &StatusState, id: &str) {
    match &state.trace_url {
        Some(template) => {
            // Another site: it learns nothing of this page's address.
            out.push_str("<a rel=\"noreferrer\" href=\"");
            esc(out, &template.replace("{trace_id}", id));
            out.push_str("\">");
            esc(out, id);
            out.push_str("</a>");
        }
        None => {
            out.push_str("<code>");
            esc(out, id);
            out.push_str("</code>");
        }
    }
}

/// The waterfall of one request.
pub(crate) fn render_trace(state: &StatusState, t: &RecentTrace, token: Option<&str>) -> String {
    let root = t.root();
    let total = root.duration().as_secs_f64().max(1e-9);
    let mut out = String::with_capacity(8 * 1024);
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>");
    esc(&mut out, &root.name);
    let _ = write!(
        out,
        " · tower-apm</title><style>{STYLE}</style></head><body><p><a href=\""
    );
    esc(&mut out, &link(token, "/apm"));
    out.push_str("\">← status</a></p><h1>");
    esc(&mut out, &root.name);
    out.push_str("</h1><p>trace ");
    trace_id_cell(&mut out, state, &root.trace_id.to_string());
    let _ = write!(
        out,
        " · {}</p><table id=\"waterfall\"><tr><th>span</th><th>kind</th><th>start</th><th>duration</th><th style=\"width:420px\"></th><th>detail</th></tr>",
        ms(Some(total))
    );
    let (w, h) = (400.0, 12.0);
    for s in &t.spans {
        let offset = s.start.duration_since(root.start).unwrap_or_default().as_secs_f64();
        let d = s.duration().as_secs_f64();
        let x = offset / total * w;
        let bw = (d / total * w).max(1.0);
        let color = if s.error { "#c33" } else { "#36c" };
        let _ = write!(out, "<tr class=\"span {}\"><td class=\"l\">", kind_name(&s.kind));
        esc(&mut out, &s.name);
        let _ = write!(
            out,
            "</td><td>{}</td><td>+{}</td><td>{}</td><td><svg width=\"{w}\" height=\"{h}\"><rect x=\"{x:.1}\" y=\"1\" width=\"{bw:.1}\" height=\"{}\" fill=\"{color}\"/></svg></td><td class=\"l\">",
            kind_name(&s.kind),
            ms(Some(offset)),
            ms(Some(d)),
            h - 2.0
        );
        if let Some(d) = detail(s) {
            esc(&mut out, &d);
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</table></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_is_escaped_and_the_token_is_read_from_the_query() {
        let mut out = String::new();
        esc(&mut out, "<script>alert('x')</script>&");
        assert_eq!(out, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;");
        let q = RawQuery(Some("a=1&token=s3cret".into()));
        assert_eq!(token_param(&q), Some("s3cret"));
    }

    #[test]
    fn base64_is_rfc_4648() {
        // RFC 4648, 10.
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        // The hash of an empty script, as browsers' consoles print it.
        assert_eq!(
            script_hash_source(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}
