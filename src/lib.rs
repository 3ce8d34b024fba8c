//! # tower-apm
//!
//! One `tower` layer that gives an axum or hyper service OpenTelemetry traces,
//! metrics and structured logs: a server span per request named and attributed by
//! the stable HTTP semantic conventions, W3C `traceparent`/`tracestate`/`baggage`
//! propagation in and out, per-route request metrics with a Prometheus endpoint,
//! JSON log lines with trace ids and an access log, and OTLP export (gRPC or
//! HTTP/protobuf) that never slows or breaks a request.
//!
//! ## Quick start
//!
//! One way to start a service, the one a service should use: the layer, JSON
//! logs with an access log, `/metrics`, health endpoints, the peer's address,
//! and a graceful shutdown that flushes the telemetry and gives the exit code.
//! The README shows the same text and `examples/quickstart.rs` is this file
//! (`cargo run --example quickstart`); tests keep the three the same and run
//! the example as a real process. It needs `tower-apm`, `axum`, `tokio`
//! (features `macros`, `rt-multi-thread`, `net`) and `tracing`.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::process::ExitCode;
//!
//! use axum::{Router, extract::Path, routing::get};
//! use tower_apm::{Apm, Shutdown};
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     // The exit code: 0 after a clean shutdown; 1 when the service cannot start,
//!     // with the error printed by its Display (a ConfigError says what to fix);
//!     // 3, 4 or 5 when a shutdown deadline forced the exit (tower_apm::EXIT_*).
//!     match run().await {
//!         Ok(code) => code,
//!         Err(e) => {
//!             eprintln!("checkout: {e}");
//!             ExitCode::FAILURE
//!         }
//!     }
//! }
//!
//! async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
//!     // Builder calls win over the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
//!     // OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...), which win over the defaults.
//!     let apm = Apm::builder()
//!         .service_name("checkout")
//!         .access_log(true) // one JSON line per request
//!         .build()?;
//!     apm.init_logging()?; // JSON lines on stdout with trace ids; RUST_LOG filters
//!
//!     // SIGTERM or Ctrl-C: readiness fails, in-flight requests finish, then
//!     // cleanup hooks run and spans, metrics and logs are flushed.
//!     let shutdown = Shutdown::builder().telemetry(&apm).build();
//!
//!     let app = Router::new()
//!         .route("/users/{id}", get(user))
//!         .merge(apm.metrics_router()) // GET /metrics
//!         .merge(shutdown.health_router()) // GET /livez, /readyz
//!         .layer(apm.layer()); // last, so that it sees every route
//!
//!     let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
//!     let listener = tokio::net::TcpListener::bind(&addr).await?;
//!     let url = format!("http://{}", listener.local_addr()?);
//!     tracing::info!(%url, "listening");
//!
//!     // The peer's address gives spans, access lines and the security detectors
//!     // their client.address.
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!         .with_graceful_shutdown(shutdown.signal())
//!         .await?;
//!     // The server has stopped: cleanup hooks, then the flush of spans, metrics
//!     // and logs (it shuts the Apm down: no apm.shutdown() after it).
//!     Ok(shutdown.finish(&apm).await)
//! }
//!
//! async fn user(Path(id): Path<u64>) -> String {
//!     format!("user {id}\n")
//! }
//! ```
//!
//! `main` returns an [`ExitCode`](std::process::ExitCode), the one
//! [`Shutdown::finish`] gives: 0 when every phase of the shutdown finished in
//! time, else the code of the deadline that forced the exit. An error before
//! serving is printed with `{}` and exits 1. Print a [`ConfigError`] with `{}`:
//! its text says what to fix (`invalid value "half" for
//! OTEL_TRACES_SAMPLER_ARG: expected a ratio between 0.0 and 1.0`); its
//! `Debug` is the same text, so `fn main() -> Result<(), ConfigError>` prints
//! it too. [`Shutdown::finish`] flushes and shuts down the `Apm` it is given:
//! [`Apm::shutdown`] is for programs without a [`Shutdown`], and after
//! `finish` it has nothing left to do.
//!
//! **[`Apm::init_logging`] or [`Apm::init_tracing`].** Both install the global
//! `tracing` subscriber, filtered by `RUST_LOG` (default `info`), with
//! [`Apm::tracing_layer`] (so `tracing` spans inside handlers become child
//! spans of the request's span) and the panic hook. `init_logging` writes
//! every event as one JSON line with the request's `trace_id` and `span_id`,
//! to the [`LogOutput`] of [`ApmBuilder::logs`] (stdout by default) through a
//! bounded background writer, and with the `otlp-logs` feature also as OTLP
//! log records: for services whose logs are collected. `init_tracing` writes
//! `tracing-subscriber`'s human-readable lines to stdout, without trace ids:
//! for a terminal. Use one, or compose [`Apm::logging_layer`] and
//! [`Apm::tracing_layer`] into a subscriber of your own.
//!
//! **The access log.** [`ApmBuilder::access_log`]`(true)` writes one JSON line
//! per request when its response body ends (method, route, path, status,
//! duration, client address, user agent, `x-request-id`, trace and span ids;
//! see *Logs*) to the same output as the event lines. It is off unless asked
//! for; calling [`ApmBuilder::logs`] (to choose a file or stdout) also turns it
//! on, as before, and `.access_log(false)` keeps it off then.
//!
//! ## hyper
//!
//! Around a plain hyper service (hyper-util, no axum router) the layer needs two
//! things axum's router would give it: a route function,
//! [`ApmLayer::route_with`] (without one every span is named `GET` and every
//! request lands in one metrics series), and the peer address, a [`PeerAddr`] in
//! each request's extensions (without it there is no `client.address`). axum apps
//! need neither: `MatchedPath` names the route and
//! `into_make_service_with_connect_info` gives the `ConnectInfo` the layer reads
//! first. `examples/hyper.rs` is a complete hyper server with both and a graceful
//! shutdown ([`Shutdown::signal`] driving hyper-util's `GracefulShutdown`).
//!
//! axum stays a dependency of hyper apps too: the operator endpoints
//! ([`Apm::metrics_router`], [`Apm::status_router`], [`Apm::alerts_router`],
//! [`Shutdown::health_router`]) are axum `Router`s, which a hyper server serves
//! as the tower services they are, or on their own port with
//! [`Apm::serve_metrics`] and [`Apm::serve_status`]; the layer's response body
//! is axum's `Body`; and what axum adds to the build beyond that is four small
//! crates. The README's hyper section has the details.
//!
//! ## Tracing
//!
//! Each request becomes one SERVER span, named `{method} {route}` (`GET /users/{id}`,
//! or just `GET` when no route matched: a raw path is never a span name), with
//! `http.request.method`, `url.path`, `url.query` (sensitive values redacted),
//! `url.scheme`, `http.route`, `http.response.status_code`,
//! `network.protocol.version`, `server.address`, `server.port`, `client.address`,
//! `user_agent.original` and `error.type`. Its status is Error only for 5xx. The
//! span ends when the response body has been sent, not when the handler returns.
//!
//! While the handler runs, the span's context is the current OpenTelemetry
//! context, so:
//! - `tracing` spans (and `#[tracing::instrument]` functions) become its children
//!   when the subscriber includes [`Apm::tracing_layer`];
//! - [`Apm::client_layer`] on an outgoing HTTP client (or, feature `reqwest`,
//!   `Apm::reqwest_middleware` on a `reqwest` client) makes a CLIENT span under
//!   it and sends `traceparent`, so the next service continues the same trace.
//!
//! Work spawned with `tokio::spawn` does not inherit a context by itself: wrap the
//! future with `opentelemetry::context::FutureExt::with_current_context` (or
//! `tracing::Instrument::in_current_span`).
//!
//! A panicking handler becomes a 500 response (with its `x-request-id`) with an
//! `exception` event on the span and `error.type = "panic"`; the service keeps
//! serving. With [`Apm::init_logging`] or [`Apm::init_tracing`], every panic is
//! one log line through the subscriber (target `tower_apm::panic`, with the
//! request's trace and span ids), not raw text on stderr: see [`PanicHook`].
//!
//! ## Propagation
//!
//! `traceparent` is validated as the W3C specification asks: a malformed header
//! (wrong length, version `ff`, all-zero ids, non-hex or uppercase hex, two
//! headers) starts a new root trace and is never passed on. `tracestate` with more
//! than 32 members, a duplicated key or a malformed member is dropped.
//! `OTEL_PROPAGATORS` selects `tracecontext`, `baggage` (the default is both) or
//! `none`. [`Apm::init_tracing`] and [`Apm::init_logging`] install the same
//! choice as the global OpenTelemetry propagator ([`Apm::text_map_propagator`]),
//! so a library that injects through `opentelemetry::global` sends the same
//! headers.
//!
//! ## Outgoing calls with reqwest
//!
//! With the `reqwest` feature, `Apm::reqwest_middleware` is a
//! `reqwest_middleware::Middleware` (reqwest 0.12, reqwest-middleware 0.4): each
//! call made through a `ClientWithMiddleware` is a CLIENT span under the
//! current span with the same attributes as [`ClientLayer`]'s (`error.type` is
//! the status for 4xx and 5xx, `timeout`, `_OTHER` or `cancelled`), sends
//! `traceparent`/`tracestate`/`baggage`, and is counted in
//! `http.client.request.duration`. `examples/reqwest_chain.rs` shows a service
//! calling the next one.
//!
//! ```ignore
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(apm.reqwest_middleware())
//!     .build();
//! let res = client.get("http://inventory.internal/items/7").send().await?;
//! ```
//!
//! ## Versions
//!
//! The crates the public API takes or returns are re-exported at the versions
//! this crate is built with: [`opentelemetry`] (0.33), [`opentelemetry_sdk`]
//! (0.33), [`tracing_opentelemetry`] (0.34), [`tracing_subscriber`] (0.3), and
//! with their features `reqwest` (0.12), `reqwest_middleware` (0.4),
//! `tokio_postgres` (0.7) and `opentelemetry_appender_tracing` (0.33).
//!
//! ## Export
//!
//! Finished spans go into a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`) drained by
//! one background thread in batches. When the collector is down, slow or never
//! answers, the request path does not wait: spans are dropped and counted
//! ([`Apm::stats`]), with one warning when it starts and one when it recovers.
//!
//! ## Metrics
//!
//! The same layer records every request once (sampled or not) into the HTTP
//! server metrics of the semantic conventions, with `http.request.method`,
//! `http.route`, `http.response.status_code`, `url.scheme`,
//! `network.protocol.version` and `error.type`:
//! - `http.server.request.duration` (histogram, seconds, the advised buckets from
//!   5 ms to 10 s; it runs to the end of the response body);
//! - `http.server.request.body.size` (from `Content-Length`) and
//!   `http.server.response.body.size` (bytes sent);
//! - `http.server.active_requests` (by method and scheme; a request the client
//!   abandons leaves it, with `error.type = "cancelled"` in the histograms);
//! - `http.client.request.duration` (histogram, seconds, the same buckets) for
//!   the calls made through [`Apm::client_layer`] or `Apm::reqwest_middleware`,
//!   with `http.request.method`, `server.address`, `server.port`,
//!   `http.response.status_code`, `error.type`, `url.scheme` and
//!   `network.protocol.version`;
//! - `process.cpu.time`, `process.cpu.utilization`, `process.memory.usage`,
//!   `process.memory.virtual`, open file descriptors and threads (Linux).
//!
//! Series are bounded by design: the route is the matched template, never the
//! raw path; nothing the client sends (`Host`, headers, query) becomes a label;
//! and beyond [`ApmBuilder::metrics_max_series`] requests go to one overflow series
//! (`otel.metric.overflow = true`) and are counted.
//!
//! Two readers share that one aggregation. [`Apm::metrics_router`] serves
//! Prometheus' text format, or OpenMetrics with exemplars (the trace id of sampled
//! requests) when the scraper asks, as Prometheus does; names follow the
//! OpenTelemetry-to-Prometheus rules (`http_server_request_duration_seconds_bucket`,
//! `target_info` for the resource). [`Apm::serve_metrics`] serves it on a port of
//! its own. And unless `OTEL_METRICS_EXPORTER` says otherwise, the metrics are
//! pushed over OTLP every `OTEL_METRIC_EXPORT_INTERVAL` to the same collector as
//! the spans. `OTEL_METRICS_EXPORTER` chooses exporters only, as the
//! specification defines it: `none` stops the push, and `/metrics`, alerts, SLOs,
//! the status page and the shutdown's drain count keep reading the in-process
//! aggregation, which only [`ApmBuilder::metrics`]`(false)` turns off.
//!
//! What to ask Prometheus (5-minute windows):
//!
//! ```text
//! # throughput, requests per second, per route
//! sum by (http_route) (rate(http_server_request_duration_seconds_count[5m]))
//!
//! # error rate: the share of requests answered with a 5xx
//!   sum(rate(http_server_request_duration_seconds_count{http_response_status_code=~"5.."}[5m]))
//! / sum(rate(http_server_request_duration_seconds_count[5m]))
//!
//! # p95 latency, per route
//! histogram_quantile(0.95,
//!   sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[5m])))
//! ```
//!
//! The crate's own operator routes (health probes, `/metrics`, `/alerts`, the
//! status page) are not traffic: they make no span, access-log line or series
//! ([`ApmBuilder::record_operator_routes`] records them). Leave routes of your
//! own out the same way with [`ApmBuilder::exclude_routes`] or
//! [`ApmBuilder::exclude_when`].
//!
//! ## Logs
//!
//! [`Apm::init_logging`] installs a `tracing` subscriber that writes JSON lines
//! (or compose [`Apm::logging_layer`] with [`Apm::tracing_layer`] yourself), to
//! the [`LogOutput`] given to [`ApmBuilder::logs`]: stdout, or a file rotated by
//! size ([`Rotation::Size`], keeping N backups as Python's `RotatingFileHandler`
//! does) or by time ([`Rotation::Daily`], [`Rotation::Hourly`]). `RUST_LOG`
//! filters them (default `info`).
//!
//! ```no_run
//! # fn main() -> Result<(), tower_apm::ConfigError> {
//! use tower_apm::{Apm, LogOutput, Rotation};
//!
//! let apm = Apm::builder()
//!     .service_name("checkout")
//!     .logs(LogOutput::file("/var/log/checkout/app.log").rotate(Rotation::Daily).backups(7))
//!     .redact_field("ssn")
//!     .build()?;
//! apm.init_logging()?;
//! tracing::info!(user_id = 7, "loaded user");
//! # Ok(()) }
//! ```
//!
//! writes (one line; wrapped here)
//!
//! ```text
//! {"timestamp":"2026-11-27T03:40:12.123456Z","level":"INFO","target":"checkout","message":"loaded user",
//!  "user_id":7,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","service":"checkout"}
//! ```
//!
//! The schema is stable: `timestamp` (RFC 3339, UTC), `level`, `target`,
//! `message`, the event's fields as typed JSON values, `trace_id` and `span_id`
//! of the span the event happened in (the request's server span, or a `tracing`
//! span inside it), `service`.
//!
//! With [`ApmBuilder::access_log`]`(true)` (on by itself once [`ApmBuilder::logs`]
//! is called) the layer also writes one access-log line per request when its
//! response body ends (or the client goes away), straight from the
//! request's record: `target` `tower_apm::access`, `message` `request`, `method`,
//! `route`, `path`, `query`, `status`, `duration_ms`, `response_bytes`,
//! `client_address`, `user_agent`, `request_id`, `trace_id`, `span_id`,
//! `error_type`. The request id is the client's `x-request-id` when it is 1 to
//! 128 visible ASCII characters, a new random one otherwise, and it is returned in
//! the response's `x-request-id`.
//!
//! Secrets stay out. One list of secret-like names applies to query parameters,
//! header names, event fields and span attributes: a name containing `pass`,
//! `pwd`, `secret`, `token`, `key`, `auth`, `signature`, `credential`,
//! `cookie`, `session`, `jwt`, `csrf`/`xsrf` or `cardnumber` (as Django hides
//! settings: `api-key`, `access_token`, `client_secret`, `passphrase`,
//! `X-Amz-Signature` all match, and so do `monkey` and `author`: over-redacting
//! is the safe failure), or named exactly `sig`, `code` or `otp`, compared
//! without case, after percent-decoding (`pass%77ord`) and without `-`, `_`,
//! `.`. Such fields (and those [`ApmBuilder::redact_field`] names) are written
//! as `[REDACTED]` in event lines and in the attributes of `tracing` spans;
//! such query parameters (separated by `&` or `;`) are redacted in the access
//! log, security events and `url.query` (as `REDACTED`, as the HTTP semantic
//! conventions say). Errors, warnings and `Debug` output never show a header
//! value given for the collector, nor the userinfo of a URL (`user:pw@`).
//!
//! Lines are written by a background thread from a bounded queue
//! ([`LogOutput::queue_capacity`]): when the output cannot keep up, lines are
//! dropped and counted ([`TelemetryStats`], `tower_apm_log_lines_dropped_total`),
//! and a warning line in the log says how many. A log file that cannot be opened
//! is a [`ConfigError`] from [`ApmBuilder::build`].
//!
//! ## Alerts and SLOs
//!
//! Rules given to [`ApmBuilder::alert`] ([`Alert`]: error rate, a latency
//! quantile, request rate, requests in flight; per route or overall) and
//! objectives given to [`ApmBuilder::slo`] ([`Slo`]: availability or latency over
//! 30 days) are evaluated in the process every [`ApmBuilder::alert_interval`],
//! off the request path, over the counts the request metrics already keep.
//! States are Prometheus' (inactive, pending, firing, resolved); each change is a
//! log line; [`Apm::alerts_router`] serves them, with every SLO's error budget
//! left and burn rates, as JSON. [`ApmBuilder::notify`] sends alerts that fire
//! and resolve to Alertmanager, a webhook or (feature `email`) an SMTP server
//! ([`Notifier`]). For a fleet, [`Apm::prometheus_rules`] writes
//! the same rules, and the SRE workbook's multiwindow burn-rate alerts of each
//! SLO, as a Prometheus rules file; `promtool test rules` fires them at the same
//! evaluations as the in-process engine (a test checks it minute by minute).
//!
//! ```
//! # fn main() -> Result<(), tower_apm::ConfigError> {
//! use std::time::Duration;
//! use tower_apm::{Alert, Apm, Slo};
//!
//! let apm = Apm::builder()
//!     .alert(Alert::error_rate().above(0.05).over(Duration::from_secs(300)))
//!     .alert(Alert::latency(0.95).above(Duration::from_secs(1)).route("/checkout"))
//!     .slo(Slo::availability(0.999))
//!     .build()?;
//! let app: axum::Router = axum::Router::new().merge(apm.alerts_router()); // GET /alerts
//! std::fs::write(std::env::temp_dir().join("rules.yml"), apm.prometheus_rules()).unwrap();
//! # Ok(()) }
//! ```
//!
//! ## Status page
//!
//! [`Apm::status_router`] serves `/apm`: a self-contained live page (rates,
//! errors and latency with charts, routes, the recent failed and slow requests
//! with the waterfall of their spans, alerts, SLOs, security detections,
//! telemetry health, the shutdown's phase) and the same data as JSON under
//! `/apm/api/`. See [`status`].
//!
//! [`ApmBuilder::status_token`] guards every operator route the crate serves:
//! the page, its JSON and [`Apm::alerts_router`]; [`ApmBuilder::metrics_token`]
//! makes [`Apm::metrics_router`] ask for a bearer token of its own (open by
//! default, as Prometheus scrapes usually are).
//!
//! ## Database queries
//!
//! [`Apm::database`] describes a database; [`db::Database::statement`] (or
//! [`db::Database::query`]) and [`db::Query::run`] time one query, any driver's
//! future: a CLIENT span under the request's span with the database semantic
//! conventions (the statement sanitized), the `db.client.operation.duration`
//! histogram, a log line for a slow query, and the request's query count and
//! time on its server span. Feature `postgres`: `db::postgres::Client` times
//! every query of a `tokio_postgres` client. See [`db`].
//!
//! ## Security monitoring
//!
//! [`ApmBuilder::security`] turns on security events named with the OWASP
//! Logging Vocabulary ([`security::SecurityEvent`], returned by a handler with its
//! response; the layer reports 401, 403 and oversized requests itself), the
//! brute-force, traffic-spike and scanning detectors (fixed memory, each
//! detection a log line and an alert through the notifiers) and a tamper-evident
//! audit log ([`security::AuditLog`], checked by [`security::verify_audit_log`],
//! against a head kept elsewhere by [`security::verify_audit_log_with_head`], and
//! by `examples/audit-verify.rs`). [`ApmBuilder::trusted_proxies`] says whose
//! forwarding header names the client, and [`ApmBuilder::forwarded_header`]
//! which header that is (`X-Forwarded-For` by default); any other forwarding
//! header is a claim, recorded and never believed. See [`security`].
//!
//! ```
//! # fn main() -> Result<(), tower_apm::ConfigError> {
//! use axum::{http::StatusCode, routing::post};
//! use tower_apm::security::{Security, SecurityEvent};
//!
//! let apm = tower_apm::Apm::builder().security(Security::new()).build()?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/login", post(|| async { (SecurityEvent::login_failed("alice"), StatusCode::UNAUTHORIZED) }))
//!     .layer(apm.layer());
//! # Ok(()) }
//! ```
//!
//! ## Graceful shutdown
//!
//! [`Shutdown`] turns SIGTERM or SIGINT into a clean exit in logged phases, each
//! with a deadline: readiness fails (`/readyz` of [`Shutdown::health_router`]
//! answers 503, `/livez` stays 200), an optional pre-stop delay keeps serving
//! while the load balancer catches up, the listener closes, in-flight requests
//! finish (responses carry `Connection: close`), registered workers finish the
//! job they hold and take no new one, cleanup hooks run in reverse order, and
//! spans, metrics and logs are flushed. [`Shutdown::finish`] returns the exit
//! code: 0, or [`EXIT_DRAIN_TIMEOUT`], [`EXIT_CLEANUP_TIMEOUT`],
//! [`EXIT_FLUSH_TIMEOUT`] when a deadline forced the exit (with a log line naming
//! the phase and what was left); a second signal exits at once with
//! [`EXIT_SECOND_SIGNAL`]. See [`Shutdown`] for the code.
//!
//! ## Configuration
//!
//! | variable | default |
//! |---|---|
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | `unknown_service:<exe>` |
//! | `OTEL_SDK_DISABLED` | `false` |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (or `none`) |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` | `http://localhost:4317` (gRPC), `http://localhost:4318/v1/traces` (HTTP) |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` | `grpc` (or `http/protobuf`) |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` | none |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` | `10000` ms |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT` | `5000`, `30000` ms |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` | `2048`, `512` |
//! | `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` | `4096` bytes: client-controlled values and `tracing` span attributes are cut to it, ending in `…` |
//! | `OTEL_PROPAGATORS` | `tracecontext,baggage` |
//! | `OTEL_METRICS_EXPORTER` | `otlp` (a list of `otlp`, `prometheus`, `none`; without `otlp` nothing is pushed, and the in-process metrics stay: [`ApmBuilder::metrics`]`(false)` turns those off) |
//! | `OTEL_EXPORTER_OTLP_METRICS_{ENDPOINT,PROTOCOL,HEADERS,TIMEOUT}` | as the generic `OTEL_EXPORTER_OTLP_*` (HTTP path `/v1/metrics`) |
//! | `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_METRIC_EXPORT_TIMEOUT` | `60000`, `30000` ms |
//!
//! Explicit builder calls win over the variables; the variables win over the
//! defaults. An invalid value is a [`ConfigError`] that names the variable and the
//! value.
//!
//! ## Layout
//!
//! - [`Apm`] / [`ApmBuilder`]: the handle and its configuration.
//! - [`ApmLayer`]: the server layer ([`ApmService`], [`ResponseFuture`]).
//! - [`ClientLayer`]: the client layer for outgoing calls (and, feature
//!   `reqwest`, `ReqwestMiddleware`).
//! - [`JsonLayer`], [`LogOutput`], [`Rotation`]: structured logs.
//! - [`Alert`], [`Slo`], [`Notifier`], [`AlertState`], [`Threshold`]: alerts and SLOs.
//! - [`db`]: database query timing.
//! - [`status`]: the live status page.
//! - [`security`]: security events, detectors and the audit log.
//! - [`Shutdown`] ([`ShutdownBuilder`], [`ShutdownLayer`], [`Worker`], [`Phase`]):
//!   graceful shutdown.
//! - [`Sampler`], [`Protocol`], [`TelemetryStats`], [`ConfigError`], [`ExportError`].
//!
//! ## Cargo features
//!
//! - `otlp-logs`: `tracing` events also exported as OTLP log records
//!   (`Apm::otlp_logs_layer`, included by [`Apm::init_logging`]), carrying the
//!   trace and span ids of their request, to the collector that gets the spans
//!   (`OTEL_LOGS_EXPORTER`, `OTEL_EXPORTER_OTLP_LOGS_*`).
//! - `email`: alert notifications by email (`Notifier::email`, `Smtp`), through
//!   `lettre` with rustls.
//! - `postgres`: `db::postgres::Client`, a `tokio_postgres` client whose queries
//!   are timed.
//! - `reqwest`: `Apm::reqwest_middleware`, the `ReqwestMiddleware` for
//!   `reqwest` 0.12 through `reqwest-middleware` 0.4 (no `reqwest` feature is
//!   turned on: TLS and the rest come from your own `reqwest` dependency).
//!
//! (`_interop` is internal: it turns on this repository's tests against real
//! servers that `.ci/interop-setup` installs. It adds nothing to the library.)

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod alerts;
mod apm;
mod config;
pub mod db;
mod export;
mod fnv;
mod layer;
mod limits;
mod logs;
mod metrics;
mod operator;
mod record;
mod redact;
pub mod security;
mod shutdown;
pub mod status;
mod trace;

pub use alerts::notify::Notifier;
#[cfg(feature = "email")]
pub use alerts::notify::Smtp;
pub use alerts::{Alert, AlertState, DEFAULT_MIN_REQUESTS, Slo, Threshold};
pub use apm::{Apm, ApmBuilder};
pub use config::{ConfigError, Protocol};
pub use export::{ExportError, TelemetryStats};
pub use layer::client_addr::{ForwardedHeader, PeerAddr};
pub use layer::{ApmLayer, ApmService, ResponseFuture};
pub use logs::{JsonLayer, LogOutput, PanicHook, Rotation};
pub use shutdown::{
    EXIT_CLEANUP_TIMEOUT, EXIT_DRAIN_TIMEOUT, EXIT_FLUSH_TIMEOUT, EXIT_SECOND_SIGNAL, Phase, Shutdown, ShutdownBody,
    ShutdownBuilder, ShutdownFuture, ShutdownLayer, ShutdownService, Worker,
};
#[cfg(feature = "reqwest")]
pub use trace::ReqwestMiddleware;

// The crates whose types the public API takes or returns, at the versions this
// crate is built with: use them through these paths and the versions always match.
pub use opentelemetry;
#[cfg(feature = "otlp-logs")]
pub use opentelemetry_appender_tracing;
pub use opentelemetry_sdk;
#[cfg(feature = "reqwest")]
pub use reqwest;
#[cfg(feature = "reqwest")]
pub use reqwest_middleware;
#[cfg(feature = "postgres")]
pub use tokio_postgres;
pub use trace::{ClientFuture, ClientLayer, ClientService, Sampler};
pub use tracing_opentelemetry;
pub use tracing_subscriber;
