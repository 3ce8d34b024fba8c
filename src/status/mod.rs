//! The live status page: what the layer records, shown by the process itself,
//! with nothing else installed ([`Apm::status_router`](crate::Apm::status_router)).
//!
//! - `GET /apm`: one self-contained HTML page (inline SVG charts, a few lines of
//!   inline script that reload it; no external asset): overview, routes, recent
//!   slow and failed requests, alerts and SLOs, security detections, telemetry
//!   health.
//! - `GET /apm/traces/{trace_id}`: the waterfall of one kept request.
//! - `GET /apm/api/overview`, `/apm/api/routes`, `/apm/api/traces`,
//!   `/apm/api/traces/{trace_id}`: the same data as JSON.
//!
//! It reads what exists anyway: the request metrics, a history of their totals
//! taken every 10 s by a background thread (one hour kept), the recent-trace
//! buffer the export thread keeps, the alert engine and the security monitor.
//!
//! An operator page: serve it on its own address ([`Apm::serve_status`](crate::Apm::serve_status))
//! or protect it with [`ApmBuilder::status_token`](crate::ApmBuilder::status_token)
//! (the same token guards [`Apm::alerts_router`](crate::Apm::alerts_router)).
//! It shows route templates, span names and sanitized statements, never a raw
//! path, query or header value.
//!
//! Every answer is `Cache-Control: no-store`, `Referrer-Policy: no-referrer`
//! (the page's links carry `?token=`: it never leaves in a `Referer`) and
//! `X-Content-Type-Options: nosniff`. The HTML's Content-Security-Policy is
//! `default-src 'none'` (nothing loads from anywhere), `frame-ancestors 'none'`
//! (no site frames it), `base-uri 'none'; form-action 'none'`, inline styles,
//! and one script allowed by its SHA-256 hash: the few lines that reload the
//! page, with no `'unsafe-inline'` for scripts.

pub(crate) mod history;
mod page;
pub(crate) mod recent;

use std::time::Duration;

/// Slow and failed requests kept, each.
pub(crate) const DEFAULT_RECENT: usize = 20;
/// Requests slower than this are kept as slow.
pub(crate) const DEFAULT_SLOW: Duration = Duration::from_secs(1);

pub(crate) use page::router;
