//! Graceful shutdown: a signal (SIGTERM, SIGINT, or [`Shutdown::trigger`]) turned
//! into a clean exit in named phases, each with a deadline and logged with its
//! duration.
//!
//! 1. `not_ready`: [`Shutdown::health_router`]'s `/readyz` answers 503 at once;
//!    `/livez` stays 200.
//! 2. `pre_stop`: the service keeps serving for [`ShutdownBuilder::pre_stop_delay`],
//!    so a load balancer can take the instance out of rotation first.
//! 3. `stop_accepting`: [`Shutdown::signal`] resolves, so the server
//!    (`axum::serve(..).with_graceful_shutdown(..)`, or hyper-util's
//!    `GracefulShutdown`) closes its listener and its idle connections;
//!    responses sent from then on carry `Connection: close` (added by the `Apm`
//!    layer, or [`Shutdown::layer`] without one).
//! 4. `drain`: in-flight requests finish, up to [`ShutdownBuilder::drain_timeout`];
//!    [`Shutdown::in_flight`] says how many are left. The drain waits for
//!    requests whose handler has started, not for connections: when none is in
//!    flight and the server has still not returned a moment later, the
//!    connections it holds carry no request (an idle keep-alive, a head still
//!    arriving, nothing sent) and the shutdown goes on without them, exiting
//!    with the code [`Shutdown::finish`] would return. This needs requests to
//!    be counted: give the `Apm` (with its request metrics) to
//!    [`ShutdownBuilder::telemetry`], or add [`Shutdown::layer`].
//! 5. `cleanup`: registered workers ([`Shutdown::worker`]) are told to stop taking
//!    jobs and finish the one they hold; then the hooks of
//!    [`Shutdown::on_shutdown`] run in reverse order of registration, each within
//!    [`ShutdownBuilder::hook_timeout`].
//! 6. `flush`: spans, metrics and logs are flushed within
//!    [`ShutdownBuilder::flush_timeout`]; a collector that is down or hangs cannot
//!    hold the exit.
//! 7. exit: [`Shutdown::finish`] returns the exit code: 0 when every phase
//!    finished in time, else one of the `EXIT_*` codes, with a log line naming the
//!    phase and what was left. A second signal exits at once with
//!    [`EXIT_SECOND_SIGNAL`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::routing::get;
use tokio::sync::watch;

use crate::Apm;

/// Exit code when the drain deadline passed with requests still in flight.
pub const EXIT_DRAIN_TIMEOUT: u8 = 3;
/// Exit code when a worker or a cleanup hook did not finish within its deadline.
pub const EXIT_CLEANUP_TIMEOUT: u8 = 4;
/// Exit code when the telemetry flush did not finish within its deadline.
pub const EXIT_FLUSH_TIMEOUT: u8 = 5;
/// Exit code of a second SIGTERM or SIGINT during shutdown (128 + SIGINT, as a
/// shell reports an interrupted program).
pub const EXIT_SECOND_SIGNAL: u8 = 130;

/// How often the drain looks at the count of requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long no request must be in flight, with the server not returned, before
/// the connections left are taken to hold none.
const SETTLE: Duration = Duration::from_millis(100);

/// Set once the shutdown stops accepting: the server layer of every `Apm` (and
/// [`ShutdownLayer`]) then marks HTTP/1.1 responses `Connection: close`. A process
/// shuts down once, so one flag serves it; reading it is one relaxed load per
/// response.
pub(crate) static DRAINING: AtomicBool = AtomicBool::new(false);

/// `Connection: close` on an HTTP/1.x response while draining.
pub(crate) fn mark_close_if_draining<B>(res: &mut http::Response<B>) {
    if DRAINING.load(Ordering::Relaxed) && res.version() <= Version::HTTP_11 {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Builds a [`Shutdown`]. Every deadline has a default.
#[derive(Debug, Clone)]
#[must_use]
pub struct ShutdownBuilder {
    pre_stop_delay: Duration,
    drain_timeout: Duration,
    hook_timeout: Duration,
    flush_timeout: Duration,
    signals: bool,
    telemetry: Option<Apm>,
}

impl Default for ShutdownBuilder {
    fn default() -> Self {
        ShutdownBuilder {
            pre_stop_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            hook_timeout: Duration::from_secs(5),
            flush_timeout: Duration::from_secs(5),
            signals: true,
            telemetry: None,
        }
    }
}

impl ShutdownBuilder {
    /// How long to keep serving after readiness fails (default 0): the time a
    /// load balancer needs to stop sending new requests.
    pub fn pre_stop_delay(mut self, d: Duration) -> Self {
        self.pre_stop_delay = d;
        self
    }

    /// How long in-flight requests may take to finish (default 30 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// How long each cleanup hook, and the workers together, may take (default 5 s).
    pub fn hook_timeout(mut self, d: Duration) -> Self {
        self.hook_timeout = d;
        self
    }

    /// How long the telemetry flush may take (default 5 s).
    pub fn flush_timeout(mut self, d: Duration) -> Self {
        self.flush_timeout = d;
        self
    }

    /// Whether SIGTERM and SIGINT start the shutdown (default true); without,
    /// only [`Shutdown::trigger`] does.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.signals = on;
        self
    }

    /// The telemetry to flush when the drain deadline forces the exit (the normal
    /// path flushes the `Apm` given to [`Shutdown::finish`]).
    pub fn telemetry(mut self, apm: &Apm) -> Self {
        self.telemetry = Some(apm.clone());
        self
    }

    /// The shutdown helper.
    pub fn build(self) -> Shutdown {
        let (phase, _) = watch::channel(Phase::Running);
        let telemetry = self.telemetry.clone();
        let shutdown = Shutdown {
            inner: Arc::new(Inner {
                config: self,
                phase,
                ready: AtomicBool::new(true),
                in_flight: AtomicI64::new(0),
                hooks: Mutex::new(Vec::new()),
                workers: AtomicI64::new(0),
                workers_done: tokio::sync::Notify::new(),
                drain_started: Mutex::new(None),
                finished: AtomicBool::new(false),
                forced: AtomicU8::new(0),
                layered: AtomicBool::new(false),
            }),
        };
        // The status page shows the lifecycle of the `Apm` this shutdown
        // flushes (weakly held: the shutdown already holds the `Apm`).
        if let Some(apm) = telemetry {
            let weak = Arc::downgrade(&shutdown.inner);
            apm.set_lifecycle(Box::new(move || {
                let inner = weak.upgrade()?;
                let phase = *inner.phase.borrow();
                Some(Lifecycle {
                    phase: phase.name(),
                    ready: phase == Phase::Running && inner.ready.load(Ordering::Relaxed),
                    workers: inner.workers.load(Ordering::Relaxed),
                    hooks: inner.hooks.lock().map_or(0, |h| h.len()),
                })
            }));
        }
        shutdown
    }
}

/// The shutdown's state, for the status page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifecycle {
    pub(crate) phase: &'static str,
    pub(crate) ready: bool,
    pub(crate) workers: i64,
    pub(crate) hooks: usize,
}

/// Reads the [`Lifecycle`] of a shutdown, while it exists.
pub(crate) type LifecycleSource = Box<dyn Fn() -> Option<Lifecycle> + Send + Sync>;

/// Where an `Apm` keeps its shutdown's [`LifecycleSource`].
#[derive(Default)]
pub(crate) struct LifecycleSlot(pub(crate) Mutex<Option<LifecycleSource>>);

impl std::fmt::Debug for LifecycleSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LifecycleSlot")
    }
}

/// Where the shutdown is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving; nothing asked for a shutdown yet.
    Running,
    /// Readiness fails; still serving (the pre-stop delay).
    NotReady,
    /// The listener is closing and in-flight requests are finishing.
    Draining,
    /// Workers and hooks are stopping.
    Cleanup,
    /// Telemetry is being flushed.
    Flush,
    /// Done.
    Exited,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::NotReady => "not_ready",
            Phase::Draining => "drain",
            Phase::Cleanup => "cleanup",
            Phase::Flush => "flush",
            Phase::Exited => "exit",
        }
    }
}

struct Inner {
    config: ShutdownBuilder,
    phase: watch::Sender<Phase>,
    ready: AtomicBool,
    in_flight: AtomicI64,
    hooks: Mutex<Vec<(String, Hook)>>,
    workers: AtomicI64,
    workers_done: tokio::sync::Notify,
    drain_started: Mutex<Option<Instant>>,
    finished: AtomicBool,
    forced: AtomicU8,
    /// A [`Shutdown::layer`] was made: it counts requests in flight.
    layered: AtomicBool,
}

/// The graceful-shutdown helper. Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
///
/// # async fn run() -> std::process::ExitCode {
/// let apm = tower_apm::Apm::builder().service_name("checkout").build().unwrap();
/// let shutdown = tower_apm::Shutdown::builder()
///     .pre_stop_delay(Duration::from_secs(5))
///     .drain_timeout(Duration::from_secs(25))
///     .telemetry(&apm) // flushed even when a deadline forces the exit
///     .build();
/// shutdown.on_shutdown("close the database pool", || async { /* pool.close().await */ });
///
/// let app = Router::new()
///     .route("/users/{id}", get(|| async { "hi" }))
///     .merge(shutdown.health_router()) // /livez, /readyz
///     .layer(apm.layer()); // counts in-flight requests, marks `Connection: close`
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await.unwrap();
/// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
///     .with_graceful_shutdown(shutdown.signal())
///     .await
///     .unwrap();
/// shutdown.finish(&apm).await // cleanup hooks, telemetry flush, the exit code
/// # }
/// ```
///
/// With hyper-util instead of axum, hand [`Shutdown::signal`] to its
/// `GracefulShutdown` watcher the same way: stop accepting when it resolves, call
/// `graceful.shutdown().await`, then [`Shutdown::finish`].
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// Starts a builder.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::default()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// Requests in flight: from the request metrics of the `Apm` given to
    /// [`ShutdownBuilder::telemetry`] (no second count), else from
    /// [`Shutdown::layer`].
    pub fn in_flight(&self) -> i64 {
        self.inner
            .config
            .telemetry
            .as_ref()
            .and_then(Apm::active_requests)
            .unwrap_or_else(|| self.inner.in_flight.load(Ordering::Relaxed))
    }

    /// Starts the shutdown, as a signal would.
    pub fn trigger(&self) {
        self.inner.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::NotReady;
                true
            } else {
                false
            }
        });
    }

    /// `GET /livez` (200 while the process runs) and `GET /readyz` (200 until the
    /// shutdown starts, then 503).
    pub fn health_router(&self) -> Router {
        let ready = self.clone();
        let routes = Router::new().route("/livez", get(|| async { "ok\n" })).route(
            "/readyz",
            get(move || {
                let ready = ready.inner.ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    }
                }
            }),
        );
        // Probes are not traffic: left out of spans, metrics and the access log.
        crate::operator::mark(routes)
    }

    /// A layer that counts requests in flight and marks HTTP/1.1 responses
    /// `Connection: close` once the shutdown has begun, for services without
    /// [`Apm::layer`](crate::Apm::layer) (which does both already, at no extra
    /// cost, when the `Apm` is given to [`ShutdownBuilder::telemetry`]).
    pub fn layer(&self) -> ShutdownLayer {
        self.inner.layered.store(true, Ordering::Relaxed);
        ShutdownLayer { shutdown: self.clone() }
    }

    /// Registers a cleanup hook (close a pool, stop a consumer). Hooks run after
    /// the drain, in reverse order of registration, each within the hook timeout.
    pub fn on_shutdown<F, Fut>(&self, name: impl Into<String>, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: Hook = Box::new(move || Box::pin(hook()));
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.into(), hook));
    }

    /// Registers a background worker. It should stop taking jobs once
    /// [`Worker::stopping`] resolves, finish the job it holds, and drop the
    /// `Worker`: the cleanup phase waits for that (within the hook timeout).
    ///
    /// ```no_run
    /// # async fn demo(shutdown: tower_apm::Shutdown, mut jobs: tokio::sync::mpsc::Receiver<u32>) {
    /// let worker = shutdown.worker("mailer");
    /// tokio::spawn(async move {
    ///     loop {
    ///         let job = tokio::select! {
    ///             _ = worker.stopping() => break,  // no new job once stopping
    ///             job = jobs.recv() => match job { Some(j) => j, None => break },
    ///         };
    ///         let _ = job; // the job in hand is finished before the loop looks again
    ///     }
    ///     drop(worker); // tells the shutdown this worker is done
    /// });
    /// # }
    /// ```
    pub fn worker(&self, name: impl Into<String>) -> Worker {
        self.inner.workers.fetch_add(1, Ordering::SeqCst);
        Worker {
            name: name.into(),
            phase: self.inner.phase.subscribe(),
            shutdown: Arc::clone(&self.inner),
        }
    }

    /// Resolves when the service should stop accepting: after a signal (or
    /// [`Shutdown::trigger`]), readiness failing and the pre-stop delay. Give it to
    /// `with_graceful_shutdown`. From then on the drain deadline runs: if the
    /// server has not returned (and [`Shutdown::finish`] begun) by then, the
    /// process flushes what it can and exits with [`EXIT_DRAIN_TIMEOUT`].
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let mut phase = this.inner.phase.subscribe();
            if this.inner.config.signals {
                tokio::select! {
                    _ = os_signal() => this.trigger(),
                    _ = phase.wait_for(|p| *p != Phase::Running) => {}
                }
            } else {
                let _ = phase.wait_for(|p| *p != Phase::Running).await;
            }
            let started = Instant::now();
            this.inner.ready.store(false, Ordering::Relaxed);
            tracing::info!(target: "tower_apm::shutdown", phase = "not_ready", "shutdown started: readiness fails");
            this.watch_second_signal();
            tokio::time::sleep(this.inner.config.pre_stop_delay).await;
            log_phase("pre_stop", started.elapsed(), "pre-stop delay over");
            DRAINING.store(true, Ordering::Relaxed);
            *this.inner.drain_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            this.inner.phase.send_replace(Phase::Draining);
            tracing::info!(
                target: "tower_apm::shutdown",
                phase = "stop_accepting",
                in_flight = this.in_flight(),
                "stop accepting; draining in-flight requests"
            );
            this.watch_drain();
        }
    }

    /// A second signal exits at once.
    fn watch_second_signal(&self) {
        if !self.inner.config.signals {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            os_signal().await;
            this.inner.forced.store(EXIT_SECOND_SIGNAL, Ordering::SeqCst);
            tracing::warn!(
                target: "tower_apm::shutdown",
                phase = this.phase().name(),
                in_flight = this.in_flight(),
                exit_code = EXIT_SECOND_SIGNAL,
                "second signal: exiting now"
            );
            std::process::exit(i32::from(EXIT_SECOND_SIGNAL));
        });
    }

    /// Watches the drain: it is over when the server returns
    /// ([`Shutdown::finish`]), or when no request is in flight any more and the
    /// server has still not returned [`SETTLE`] later: the connections it still
    /// holds carry no request (an idle keep-alive, a head still arriving,
    /// nothing sent), so the shutdown goes on without them. Past the drain
    /// deadline with requests still in flight, the remaining phases run
    /// (bounded) and the process exits with [`EXIT_DRAIN_TIMEOUT`].
    fn watch_drain(&self) {
        let this = self.clone();
        let deadline = self.inner.config.drain_timeout;
        tokio::spawn(async move {
            let drained = tokio::select! {
                () = tokio::time::sleep(deadline) => false,
                () = this.no_request_in_flight() => true,
            };
            if this.inner.finished.swap(true, Ordering::SeqCst) {
                return;
            }
            let code = if drained {
                tracing::info!(
                    target: "tower_apm::shutdown",
                    phase = "drain",
                    in_flight = 0,
                    "in-flight requests finished; closing connections that hold no request"
                );
                log_phase("drain", this.drain_elapsed(), "in-flight requests finished");
                0
            } else {
                let in_flight = this.in_flight();
                this.inner.forced.store(EXIT_DRAIN_TIMEOUT, Ordering::SeqCst);
                if in_flight > 0 {
                    tracing::warn!(
                        target: "tower_apm::shutdown",
                        phase = "drain",
                        in_flight,
                        deadline_ms = deadline.as_millis() as u64,
                        exit_code = EXIT_DRAIN_TIMEOUT,
                        "drain deadline passed with requests still in flight"
                    );
                } else {
                    // No count of requests (no `Apm` with metrics given to
                    // `telemetry`, no `Shutdown::layer`): all that is known is
                    // that the server did not return.
                    tracing::warn!(
                        target: "tower_apm::shutdown",
                        phase = "drain",
                        deadline_ms = deadline.as_millis() as u64,
                        exit_code = EXIT_DRAIN_TIMEOUT,
                        "drain deadline passed with the server still holding connections"
                    );
                }
                EXIT_DRAIN_TIMEOUT
            };
            let apm = this.inner.config.telemetry.clone();
            let code = this.cleanup_and_flush(apm.as_ref(), code).await;
            std::process::exit(i32::from(code));
        });
    }

    /// Resolves once requests are counted, none is in flight, and the server
    /// has not returned [`SETTLE`] after that. Never resolves when requests
    /// are not counted: then only the server returning ends the drain.
    async fn no_request_in_flight(&self) {
        if !self.counts_requests() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(DRAIN_POLL);
        loop {
            tick.tick().await;
            if self.in_flight() > 0 {
                continue;
            }
            // A request whose head hyper has just read reaches the layer a few
            // microseconds later, and the server itself returns within a few
            // milliseconds once its last response is written: both get time.
            tokio::time::sleep(SETTLE).await;
            if self.in_flight() <= 0 {
                return;
            }
        }
    }

    /// Whether requests in flight are counted: by the request metrics of the
    /// `Apm` given to [`ShutdownBuilder::telemetry`], or by [`Shutdown::layer`].
    fn counts_requests(&self) -> bool {
        self.inner.layered.load(Ordering::Relaxed)
            || self
                .inner
                .config
                .telemetry
                .as_ref()
                .and_then(Apm::active_requests)
                .is_some()
    }

    fn drain_elapsed(&self) -> Duration {
        self.inner
            .drain_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// After the server returned: the drain is over; workers, hooks and the
    /// telemetry flush run, each within its deadline. Returns the exit code,
    /// for `main` to return (see the crate's quick start).
    ///
    /// The flush is [`Apm::shutdown`] of `apm`, bounded by
    /// [`ShutdownBuilder::flush_timeout`]: spans exported, a last metric push,
    /// log lines written, the export threads stopped. Do not call
    /// `apm.shutdown()` after it: there is nothing left to flush (with spans
    /// exported it answers [`ExportError::Stopped`](crate::ExportError::Stopped)).
    pub async fn finish(&self, apm: &Apm) -> std::process::ExitCode {
        if self.inner.finished.swap(true, Ordering::SeqCst) {
            // The drain deadline's watchdog is already finishing and will exit.
            std::future::pending::<()>().await;
        }
        log_phase("drain", self.drain_elapsed(), "in-flight requests finished");
        std::process::ExitCode::from(self.cleanup_and_flush(Some(apm), 0).await)
    }

    /// The cleanup and flush phases; `code` is the exit code so far, and the
    /// one returned (and logged) is the code the process exits with.
    async fn cleanup_and_flush(&self, apm: Option<&Apm>, mut code: u8) -> u8 {
        self.inner.phase.send_replace(Phase::Cleanup);
        let started = Instant::now();
        let timeout = self.inner.config.hook_timeout;
        let workers = async {
            loop {
                let notified = self.inner.workers_done.notified();
                if self.inner.workers.load(Ordering::SeqCst) <= 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, workers).await.is_err() {
            code = EXIT_CLEANUP_TIMEOUT;
            tracing::warn!(
                target: "tower_apm::shutdown",
                phase = "cleanup",
                workers_left = self.inner.workers.load(Ordering::SeqCst),
                "workers did not finish their jobs within the hook timeout"
            );
        }
        let hooks: Vec<(String, Hook)> =
            std::mem::take(&mut *self.inner.hooks.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, hook) in hooks.into_iter().rev() {
            let t = Instant::now();
            match tokio::time::timeout(timeout, hook()).await {
                Ok(()) => tracing::info!(
                    target: "tower_apm::shutdown",
                    phase = "cleanup",
                    hook = %name,
                    duration_ms = t.elapsed().as_millis() as u64,
                    "cleanup hook finished"
                ),
                Err(_) => {
                    code = EXIT_CLEANUP_TIMEOUT;
                    tracing::warn!(
                        target: "tower_apm::shutdown",
                        phase = "cleanup",
                        hook = %name,
                        timeout_ms = timeout.as_millis() as u64,
                        "cleanup hook did not finish within its deadline"
                    );
                }
            }
        }
        log_phase("cleanup", started.elapsed(), "workers and cleanup hooks done");

        self.inner.phase.send_replace(Phase::Flush);
        let started = Instant::now();
        // One line ends the phase, saying what happened: flushed, failed, or
        // cut short by the deadline.
        let flushed = match apm {
            Some(apm) => apm.shutdown_within(self.inner.config.flush_timeout).await,
            None => Ok(()),
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        match flushed {
            Ok(()) => log_phase("flush", started.elapsed(), "telemetry flushed"),
            Err(crate::ExportError::Deadline(d)) => {
                if code == 0 {
                    code = EXIT_FLUSH_TIMEOUT;
                }
                tracing::warn!(
                    target: "tower_apm::shutdown",
                    phase = "flush",
                    duration_ms,
                    timeout_ms = d.as_millis() as u64,
                    "telemetry flush did not finish within its deadline; what was left is lost"
                );
            }
            Err(e) => tracing::warn!(
                target: "tower_apm::shutdown",
                phase = "flush",
                duration_ms,
                error = %e,
                "telemetry flush failed: the collector did not take the last telemetry"
            ),
        }
        self.inner.phase.send_replace(Phase::Exited);
        tracing::info!(target: "tower_apm::shutdown", phase = "exit", exit_code = code, "shutdown complete");
        if let Some(apm) = apm {
            // The lines of the flush phase itself came after the flush.
            apm.flush_logs(Duration::from_millis(200)).await;
        }
        code
    }
}

fn log_phase(phase: &'static str, took: Duration, message: &'static str) {
    tracing::info!(
        target: "tower_apm::shutdown",
        phase,
        duration_ms = took.as_secs_f64() * 1000.0,
        "{message}"
    );
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A registered background worker; dropping it tells the shutdown it is done.
pub struct Worker {
    name: String,
    phase: watch::Receiver<Phase>,
    shutdown: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Resolves when the worker should stop taking new jobs (the cleanup phase).
    pub async fn stopping(&self) {
        let mut phase = self.phase.clone();
        let _ = phase.wait_for(|p| *p >= Phase::Cleanup).await;
    }

    /// Whether the worker should stop taking new jobs.
    pub fn is_stopping(&self) -> bool {
        *self.phase.borrow() >= Phase::Cleanup
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.workers.fetch_sub(1, Ordering::SeqCst);
        self.shutdown.workers_done.notify_waiters();
        if *self.phase.borrow() >= Phase::Cleanup {
            tracing::info!(target: "tower_apm::shutdown", phase = "cleanup", worker = %self.name, "worker stopped");
        }
    }
}

/// The layer of [`Shutdown::layer`].
#[derive(Clone, Debug)]
pub struct ShutdownLayer {
    shutdown: Shutdown,
}

impl<S> tower::Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            shutdown: Arc::clone(&self.shutdown.inner),
        }
    }
}

/// The service of [`ShutdownLayer`].
#[derive(Clone)]
pub struct ShutdownService<S> {
    inner: S,
    shutdown: Arc<Inner>,
}

impl<S> std::fmt::Debug for ShutdownService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownService").finish_non_exhaustive()
    }
}

impl<S, B, ResB> tower::Service<http::Request<B>> for ShutdownService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResB>>,
{
    type Response = http::Response<ShutdownBody<ResB>>;
    type Error = S::Error;
    type Future = ShutdownFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.shutdown.in_flight.fetch_add(1, Ordering::Relaxed);
        ShutdownFuture {
            inner: self.inner.call(req),
            guard: Some(InFlightGuard(Arc::clone(&self.shutdown))),
        }
    }
}

/// Counts one request in flight until dropped: with the response body, when it
/// has been sent or abandoned (or with the future, when no response came).
struct InFlightGuard(Arc<Inner>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ShutdownService`].
    pub struct ShutdownFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
    }
}

impl<F> std::fmt::Debug for ShutdownFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ShutdownFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<ShutdownBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(out.map(|res| {
            let mut res = res.map(|inner| ShutdownBody {
                inner,
                guard: this.guard.take(),
            });
            mark_close_if_draining(&mut res);
            res
        }))
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`ShutdownService`]: the request counts as in
    /// flight until its body has been sent, so the drain never cuts a
    /// streaming response short.
    pub struct ShutdownBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlightGuard>,
    }
}

impl<B> std::fmt::Debug for ShutdownBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBody").finish_non_exhaustive()
    }
}

impl<B: http_body::Body> http_body::Body for ShutdownBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            drop(this.guard.take());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
