//! Database calls: a CLIENT span per query (a child of the request's span), the
//! `db.client.operation.duration` histogram, slow-query log lines, and the time
//! each request spent in the database on its server span.
//!
//! ```no_run
//! # async fn demo(apm: &tower_apm::Apm, client: tokio::net::TcpStream) -> Result<(), std::io::Error> {
//! use std::time::Duration;
//!
//! let db = apm
//!     .database("postgresql")
//!     .namespace("shop")
//!     .server("db.internal", Some(5432))
//!     .slow_query_threshold(Duration::from_millis(200));
//! // Any future that returns a `Result` is a query: time it with its statement
//! // (its literals never leave the process)...
//! let sql = "SELECT id FROM users WHERE email = 'a@example.com'";
//! let rows = db.statement(sql).run(async { Ok::<_, std::io::Error>(vec![1]) }).await?;
//! // ...or name its operation and table yourself.
//! db.query("SELECT", Some("users")).run(async { Ok::<_, std::io::Error>(()) }).await?;
//! # Ok(()) }
//! ```
//!
//! With the `postgres` feature, `postgres::Client` wraps a `tokio_postgres`
//! client so that every query it runs is timed this way.
//!
//! When each part runs:
//! - [`Query::run`]: the span's context is taken from the current OpenTelemetry
//!   context (inside a handler wrapped by [`ApmLayer`](crate::ApmLayer), the
//!   server span), and the clock starts.
//! - When the future completes: the duration is counted in the histogram and in
//!   the request's totals (queries awaited inside the handler; a spawned task's
//!   queries are not the request's), a query over the threshold is logged
//!   (target `tower_apm::db`) and counted, and a sampled span is queued for
//!   export. The statement is sanitized on the export thread (cached), or at once
//!   for a slow query's log line. A future dropped before it completes ends its
//!   span with `error.type = cancelled`.
//!
//! `error.type` is the SQLSTATE of a PostgreSQL error (also
//! `db.response.status_code`), found in the error or its sources, else the
//! error's type name.

#[cfg(feature = "postgres")]
pub mod postgres;
pub(crate) mod sanitize;
pub(crate) mod shape;

use std::borrow::Cow;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;

use crate::layer::Shared;
use crate::logs::json::{self, JsonLine};
use crate::logs::writer::LogWriter;
use crate::record::DbRecord;

/// Queries slower than this are logged and counted, unless set otherwise.
pub const DEFAULT_SLOW_QUERY: Duration = Duration::from_millis(500);

/// The queries of one request so far: how many, and how long they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DbTotals {
    pub(crate) count: u32,
    pub(crate) nanos: u64,
}

thread_local! {
    /// The totals of the request whose handler this thread is polling.
    static REQUEST: Cell<Option<DbTotals>> = const { Cell::new(None) };
}

/// Makes `totals` the current request's while its handler is polled; returns
/// what was current before (a request polled inside another one).
pub(crate) fn enter(totals: DbTotals) -> Option<DbTotals> {
    REQUEST.replace(Some(totals))
}

/// Ends [`enter`]: the request's totals, with what its queries added.
pub(crate) fn leave(previous: Option<DbTotals>) -> DbTotals {
    REQUEST.replace(previous).unwrap_or_default()
}

fn add_to_request(d: Duration) {
    REQUEST.with(|c| {
        if let Some(mut t) = c.get() {
            t.count = t.count.saturating_add(1);
            t.nanos = t.nanos.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            c.set(Some(t));
        }
    });
}

/// What every query of one database shares.
#[derive(Debug, Clone)]
pub(crate) struct DbConfig {
    pub(crate) system: Arc<str>,
    pub(crate) namespace: Option<Arc<str>>,
    pub(crate) server: Option<(Arc<str>, Option<u16>)>,
    slow: Duration,
}

/// A database the application queries: made by
/// [`Apm::database`](crate::Apm::database) with its `db.system.name`
/// (`postgresql`, `mysql`, `sqlite`, ...; the semantic conventions' names), then
/// described with the builder methods. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    shared: Arc<Shared>,
    log: Arc<LogWriter>,
    config: Arc<DbConfig>,
}

impl Database {
    pub(crate) fn new(shared: Arc<Shared>, log: Arc<LogWriter>, system: &str) -> Database {
        shared.db_used.store(true, std::sync::atomic::Ordering::Relaxed);
        Database {
            shared,
            log,
            config: Arc::new(DbConfig {
                system: system.into(),
                namespace: None,
                server: None,
                slow: DEFAULT_SLOW_QUERY,
            }),
        }
    }

    /// `db.namespace`: the database (PostgreSQL: the database name, or
    /// `database|schema`).
    pub fn namespace(mut self, namespace: &str) -> Database {
        Arc::make_mut(&mut self.config).namespace = Some(namespace.into());
        self
    }

    /// `server.address` and `server.port` of the database server.
    pub fn server(mut self, address: &str, port: Option<u16>) -> Database {
        Arc::make_mut(&mut self.config).server = Some((address.into(), port));
        self
    }

    /// Queries that take longer are logged (WARN, target `tower_apm::db`, with
    /// the sanitized statement, the duration and the trace id) and counted in
    /// `tower_apm_db_slow_queries_total` (default [`DEFAULT_SLOW_QUERY`]).
    pub fn slow_query_threshold(mut self, threshold: Duration) -> Database {
        Arc::make_mut(&mut self.config).slow = threshold;
        self
    }

    /// A query named by its operation (`SELECT`, `INSERT`, ..., or a stored
    /// procedure's call) and the table it is about, when there is one.
    pub fn query<'a>(&'a self, operation: &'a str, collection: Option<&'a str>) -> Query<'a> {
        Query {
            db: self,
            operation: Some(operation),
            collection,
            statement: None,
            derived: false,
        }
    }

    /// A query given by its statement: the operation and the table are read
    /// from it (the first keyword, and the table after `FROM`, `INTO` or
    /// `UPDATE`); the statement is sent as `db.query.text`, sanitized.
    pub fn statement<'a>(&'a self, statement: &'a str) -> Query<'a> {
        Query {
            db: self,
            operation: None,
            collection: None,
            statement: Some(statement),
            derived: true,
        }
    }
}

/// One query to time: made by [`Database::query`] or [`Database::statement`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a query is timed by `run`"]
pub struct Query<'a> {
    db: &'a Database,
    operation: Option<&'a str>,
    collection: Option<&'a str>,
    statement: Option<&'a str>,
    /// The operation and table are read from the statement.
    derived: bool,
}

impl<'a> Query<'a> {
    /// The statement, sent as `db.query.text` once sanitized.
    pub fn statement(mut self, statement: &'a str) -> Query<'a> {
        self.statement = Some(statement);
        self
    }

    /// Times `query`, a future that runs the query and returns its result.
    pub fn run<F, T, E>(self, query: F) -> QueryFuture<'a, F>
    where
        F: Future<Output = Result<T, E>>,
        E: std::error::Error + 'static,
    {
        let db = self.db;
        let shared = &db.shared;
        if shared.disabled {
            return QueryFuture {
                inner: query,
                state: None,
            };
        }
        let span = opentelemetry::Context::map_current(|cx| shared.child_of(cx.span().span_context()));
        let record = shared.recorder.boxed_db(DbRecord {
            config: Arc::clone(&db.config),
            shape: shape::shape(self.operation, self.collection, self.statement, self.derived),
            error_type: None,
            status_code: None,
            start: Instant::now(),
            duration: Duration::ZERO,
            span: span.0,
            parent_span_id: span.1,
        });
        QueryFuture {
            inner: query,
            state: Some(InFlight { db, record }),
        }
    }
}

#[derive(Debug)]
struct InFlight<'a> {
    db: &'a Database,
    record: Box<DbRecord>,
}

impl InFlight<'_> {
    fn finish(self, error: Option<(Cow<'static, str>, Option<String>)>) {
        let InFlight { db, mut record } = self;
        record.duration = record.start.elapsed();
        if let Some((error_type, status)) = error {
            record.error_type = Some(error_type);
            record.status_code = status;
        }
        add_to_request(record.duration);
        let slow = record.duration > db.config.slow;
        if slow {
            log_slow(&db.log, &record);
        }
        db.shared.recorder.finish_db(record, slow);
    }
}

/// The slow-query log line.
fn log_slow(log: &LogWriter, r: &DbRecord) {
    let mut line = JsonLine::in_buffer(log.buffer());
    line.raw_field("timestamp", |b| json::write_timestamp(SystemTime::now(), b));
    line.str_field("level", "WARN");
    line.str_field("target", "tower_apm::db");
    line.str_field("message", "slow query");
    line.str_field("db.system.name", &r.config.system);
    if let Some(op) = &r.shape.operation {
        line.str_field("db.operation.name", op);
    }
    if let Some(c) = &r.shape.collection {
        line.str_field("db.collection.name", c);
    }
    if let Some(text) = r.shape.query_text() {
        line.str_field("db.query.text", text.as_str());
    }
    line.milli_field("duration_ms", u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX));
    line.milli_field(
        "threshold_ms",
        u64::try_from(r.config.slow.as_micros()).unwrap_or(u64::MAX),
    );
    if let Some(e) = &r.error_type {
        line.str_field("error.type", e);
    }
    if r.span.is_valid() {
        line.raw_field("trace_id", |b| json::push_hex(b, &r.span.trace_id().to_bytes()));
        line.raw_field("span_id", |b| json::push_hex(b, &r.span.span_id().to_bytes()));
    }
    log.write(line.finish());
}

/// `error.type` (and the SQLSTATE) of a failed query: a PostgreSQL error's
/// code, found in the error or its sources, else the error's type name.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
fn error_type<E: std::error::Error + 'static>(e: &E) -> (Cow<'static, str>, Option<String>) {
    #[cfg(feature = "postgres")]
    {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = current {
            if let Some(code) = err
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::code)
            {
                let code = code.code().to_owned();
                return (Cow::Owned(code.clone()), Some(code));
            }
            current = err.source();
        }
    }
    (Cow::Borrowed(std::any::type_name::<E>()), None)
}

pin_project! {
    /// The future returned by [`Query::run`]: the query's own, timed.
    pub struct QueryFuture<'a, F> {
        #[pin]
        inner: F,
        state: Option<InFlight<'a>>,
    }

    impl<'a, F> PinnedDrop for QueryFuture<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(state) = this.project().state.take() {
                state.finish(Some((Cow::Borrowed("cancelled"), None)));
            }
        }
    }
}

impl<F> std::fmt::Debug for QueryFuture<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for QueryFuture<'_, F>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(state) = this.state.take() {
            state.finish(out.as_ref().err().map(error_type));
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_belong_to_the_request_being_polled_and_nest() {
        add_to_request(Duration::from_millis(5)); // no request: nothing to add to
        let outer = enter(DbTotals::default());
        assert_eq!(outer, None);
        add_to_request(Duration::from_millis(2));
        let inner = enter(DbTotals::default());
        add_to_request(Duration::from_millis(1));
        assert_eq!(
            leave(inner),
            DbTotals {
                count: 1,
                nanos: 1_000_000
            }
        );
        add_to_request(Duration::from_millis(3));
        assert_eq!(
            leave(outer),
            DbTotals {
                count: 2,
                nanos: 5_000_000
            }
        );
    }

    #[test]
    fn an_error_without_a_code_is_named_by_its_type() {
        let e = std::io::Error::other("x");
        assert_eq!(error_type(&e), (Cow::Borrowed("std::io::error::Error"), None));
    }
}
