//! The security sink: reads each finished request's record on the request path
//! (the detectors' counters, and the events the response carried) and hands
//! events and detections to the `tower-apm-security` thread, which logs,
//! audits and notifies.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::Security;
use super::audit::{AuditWriter, OpenError};
use super::detect::{Detection, Detectors};
use super::event::{EventRecord, Kind, Level, RequestFacts, SecurityEvent};
use crate::alerts::notify::{Dispatcher, Notice};
use crate::config::ConfigError;
use crate::limits::ByteBudget;
use crate::logs::json::{self, JsonLine};
use crate::logs::writer::LogWriter;
use crate::record::RequestRecord;
use crate::redact::redact_query;

/// How often the thread closes the detectors' windows when idle.
const TICK: Duration = Duration::from_millis(200);

/// Detections kept for the status page.
const RECENT: usize = 50;

/// Queue slots only detections may take: a flood of events cannot crowd out
/// the detection it causes.
const DETECTION_SLOTS: usize = 256;

/// Counters of the security sink.
#[derive(Debug, Default)]
pub(crate) struct SecurityCounters {
    pub(crate) events: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) detections: AtomicU64,
    pub(crate) alerts_suppressed: AtomicU64,
    pub(crate) audit_failed: AtomicU64,
}

enum Item {
    Event(Box<EventRecord>),
    Detection(Box<(Detection, RequestFacts)>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Item {
    /// About how many bytes the item holds, for the queue's byte budget.
    fn bytes(&self) -> usize {
        match self {
            Item::Event(e) => std::mem::size_of::<EventRecord>() + e.event.bytes() + e.request.bytes(),
            Item::Detection(d) => {
                std::mem::size_of::<(Detection, RequestFacts)>()
                    + d.0.user.as_ref().map_or(0, String::len)
                    + d.1.bytes()
            }
            Item::Flush(_) => 0,
        }
    }
}

/// One detection as the status endpoint shows it.
#[derive(Debug, Clone)]
pub(crate) struct Recent {
    pub(crate) at: SystemTime,
    pub(crate) alert: &'static str,
    pub(crate) event: String,
    pub(crate) description: String,
    pub(crate) client: Option<IpAddr>,
    pub(crate) user: Option<String>,
}

/// The request path's side of security monitoring.
#[derive(Debug)]
pub(crate) struct Monitor {
    detectors: Arc<Detectors>,
    tx: SyncSender<Item>,
    pub(crate) counters: Arc<SecurityCounters>,
    pub(crate) recent: Arc<Mutex<VecDeque<Recent>>>,
    base: Instant,
    /// Events queued and not yet handled, and how many may be.
    queued_events: Arc<AtomicUsize>,
    max_events: usize,
    /// The bytes the queued items hold.
    queued_bytes: Arc<ByteBudget>,
    /// The longest string kept of what a handler or client chose.
    value_limit: usize,
}

impl Monitor {
    /// Opens the audit log and starts the security thread.
    pub(crate) fn start(
        cfg: &Security,
        service: &str,
        log: Arc<LogWriter>,
        notify: Option<Dispatcher>,
        value_limit: usize,
    ) -> Result<Arc<Monitor>, ConfigError> {
        let detectors = Arc::new(Detectors::new(
            cfg.brute_force.clone(),
            cfg.traffic_spike.clone(),
            cfg.scanning.clone(),
            cfg.memory_cap,
        )?);
        let audit = cfg
            .audit
            .as_ref()
            .map(|a| {
                AuditWriter::open(a, SystemTime::now()).map_err(|e| match e {
                    OpenError::Io(e) => ConfigError::AuditFile {
                        path: a.path().display().to_string(),
                        error: e.to_string(),
                    },
                    OpenError::Cut(problem) => ConfigError::AuditChain {
                        path: a.path().display().to_string(),
                        problem,
                    },
                })
            })
            .transpose()?;
        let (tx, rx) = sync_channel(cfg.queue + DETECTION_SLOTS);
        let queued_events = Arc::new(AtomicUsize::new(0));
        let queued_bytes = Arc::new(ByteBudget::new(crate::limits::SECURITY_QUEUE_BYTES));
        let base = Instant::now();
        let counters = Arc::new(SecurityCounters::default());
        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(RECENT)));
        let mut thread = Thread {
            app_id: cfg.app_id.clone().unwrap_or_else(|| service.to_owned()),
            detectors: Arc::clone(&detectors),
            audit,
            log,
            notify,
            counters: Arc::clone(&counters),
            recent: Arc::clone(&recent),
            base,
            alerts_per_minute: cfg.max_alerts_per_minute,
            minute: (base, 0),
            queued_events: Arc::clone(&queued_events),
            queued_bytes: Arc::clone(&queued_bytes),
        };
        std::thread::Builder::new()
            .name("tower-apm-security".into())
            .spawn(move || thread.run(&rx))
            .map_err(|e| ConfigError::Worker(e.to_string()))?;
        Ok(Arc::new(Monitor {
            detectors,
            tx,
            counters,
            recent,
            base,
            queued_events,
            max_events: cfg.queue,
            queued_bytes,
            value_limit,
        }))
    }

    fn millis(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.base);
        d.as_secs() * 1000 + u64::from(d.subsec_millis())
    }

    fn push(&self, item: Item) {
        let bytes = item.bytes();
        if !self.queued_bytes.try_reserve(bytes) {
            self.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        if let Item::Event(_) = item {
            if self.queued_events.fetch_add(1, Relaxed) >= self.max_events {
                self.queued_events.fetch_sub(1, Relaxed);
                self.queued_bytes.release(bytes);
                self.counters.dropped.fetch_add(1, Relaxed);
                return;
            }
        }
        let event = matches!(item, Item::Event(_));
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(item) {
            self.counters.dropped.fetch_add(1, Relaxed);
            self.queued_bytes.release(bytes);
            if event {
                self.queued_events.fetch_sub(1, Relaxed);
            }
        }
    }

    /// One finished request (on the request path).
    pub(crate) fn observe(&self, r: &RequestRecord) {
        let now = self.millis(r.start + r.duration);
        let ip = r.client_ip();
        let mut detected = |d: Detection| self.push(Item::Detection(Box::new((d, facts(r)))));
        self.detectors.request(ip, r.status, now, &mut detected);
        let reported = r.security_events.as_deref();
        let by_layer = match (reported.is_some_and(|e| e.has_auth()), r.status) {
            (false, Some(status)) => layer_event(status, r),
            _ => None,
        };
        let events = reported.into_iter().flat_map(|e| e.0.iter()).chain(by_layer.as_ref());
        for event in events {
            let mut kept = event.clone();
            kept.cut(self.value_limit);
            self.push(Item::Event(Box::new(EventRecord {
                at: SystemTime::now(),
                event: kept,
                request: facts(r),
            })));
            // After the event, so a detection follows the failure that made it.
            if event.kind == Kind::LoginFailed {
                self.detectors
                    .login_failed(ip, event.user.as_deref(), now, &mut detected);
            }
        }
    }

    /// An event from outside a request, or with facts the caller gathered.
    pub(crate) fn report(&self, mut event: SecurityEvent, mut request: RequestFacts) {
        event.cut(self.value_limit);
        request.cut(self.value_limit);
        let failed = (event.kind == Kind::LoginFailed).then(|| (event.user.clone(), request.clone()));
        self.push(Item::Event(Box::new(EventRecord {
            at: SystemTime::now(),
            event,
            request,
        })));
        if let Some((user, request)) = failed {
            let now = self.millis(Instant::now());
            let mut detected = |d: Detection| self.push(Item::Detection(Box::new((d, request.clone()))));
            self.detectors
                .login_failed(request.source_ip, user.as_deref(), now, &mut detected);
        }
    }

    /// Waits until the thread has written everything queued before this call
    /// (log lines handed to the log writer, audit records synced).
    pub(crate) async fn flush(&self, deadline: Duration) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Item::Flush(done)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(deadline, wait).await, Ok(Ok(())))
    }

    /// The security part of `GET /alerts`: counters, the detectors' memory and
    /// the latest detections, oldest first.
    pub(crate) fn status_json(&self) -> String {
        let c = &self.counters;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"events\":");
        json::push_u64(&mut out, c.events.load(Relaxed));
        out.extend_from_slice(b",\"events_dropped\":");
        json::push_u64(&mut out, c.dropped.load(Relaxed));
        out.extend_from_slice(b",\"detections\":");
        json::push_u64(&mut out, c.detections.load(Relaxed));
        out.extend_from_slice(b",\"detector_bytes\":");
        json::push_u64(&mut out, self.detectors.bytes() as u64);
        out.extend_from_slice(b",\"recent\":[");
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in recent.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut line = JsonLine::new();
            line.raw_field("at", |b| json::write_timestamp(r.at, b));
            line.str_field("alert", r.alert);
            line.str_field("event", &r.event);
            line.str_field("description", &r.description);
            if let Some(ip) = r.client {
                line.raw_field("client_address", |b| json::push_ip(b, ip));
            }
            if let Some(u) = &r.user {
                line.str_field("user", u);
            }
            let object = line.finish();
            out.extend_from_slice(&object[..object.len() - 1]);
        }
        out.extend_from_slice(b"]}");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The trace of the current OpenTelemetry context, for an event reported
/// outside a response.
pub(crate) fn current_facts() -> RequestFacts {
    use opentelemetry::trace::TraceContextExt;
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        RequestFacts {
            trace: sc.is_valid().then(|| (sc.trace_id(), sc.span_id())),
            ..RequestFacts::default()
        }
    })
}

/// The event the layer reports for a response the handler reported nothing
/// about: 401, 403, and requests rejected as too large.
fn layer_event(status: u16, r: &RequestRecord) -> Option<SecurityEvent> {
    let what = || format!("{} {}", r.method, r.path_and_query().0);
    let (name, kind, level, description) = match status {
        401 => (
            "authn_login_fail",
            Kind::LoginFailed,
            Level::Warn,
            format!("401 Unauthorized: {}", what()),
        ),
        403 => (
            "authz_fail",
            Kind::Authz,
            Level::Critical,
            format!("403 Forbidden: {}", what()),
        ),
        413 | 414 | 431 => (
            "input_validation_fail",
            Kind::Other,
            Level::Warn,
            format!("{status} request rejected as too large: {}", what()),
        ),
        _ => return None,
    };
    let mut e = SecurityEvent::new(name, level).description(description);
    e.kind = kind;
    Some(e)
}

/// A claimed forwarding header, kept as `name: value`: the name (one of the
/// forwarding headers) and the value.
fn claimed_header(c: &[u8]) -> (&'static str, String) {
    let text = String::from_utf8_lossy(c);
    let (name, value) = text.split_once(": ").unwrap_or(("", &text));
    let name = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("forwarded");
    (name, value.to_owned())
}

/// What the record knows about the request, for an event.
fn facts(r: &RequestRecord) -> RequestFacts {
    let (path, query) = r.path_and_query();
    let uri = match query {
        Some(q) => format!("{path}?{}", redact_query(q)),
        None => path.to_owned(),
    };
    RequestFacts {
        source_ip: r.client_ip(),
        claimed_forwarded: r.claimed_forwarded.as_ref().map(|c| claimed_header(c.as_bytes())),
        method: Some(r.method.clone()),
        uri: Some(uri),
        route: r.route.as_ref().map(|x| x.as_str().to_owned()),
        status: r.status,
        user_agent: r
            .user_agent
            .as_ref()
            .map(|u| u.as_str().to_owned())
            .filter(|u| !u.is_empty()),
        trace: r.span.is_valid().then(|| (r.span.trace_id(), r.span.span_id())),
    }
}

struct Thread {
    app_id: String,
    detectors: Arc<Detectors>,
    audit: Option<AuditWriter>,
    log: Arc<LogWriter>,
    notify: Option<Dispatcher>,
    counters: Arc<SecurityCounters>,
    recent: Arc<Mutex<VecDeque<Recent>>>,
    base: Instant,
    alerts_per_minute: u32,
    /// The start of the current minute and the alerts sent in it.
    minute: (Instant, u32),
    queued_events: Arc<AtomicUsize>,
    queued_bytes: Arc<ByteBudget>,
}

impl Thread {
    fn run(&mut self, rx: &Receiver<Item>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(item) => {
                    let mut flushed = Vec::new();
                    self.handle(item, &mut flushed);
                    while let Ok(item) = rx.try_recv() {
                        self.handle(item, &mut flushed);
                    }
                    if let Some(audit) = &mut self.audit {
                        if let Err(e) = audit.end_batch() {
                            self.audit_failed(&e);
                        }
                    }
                    for done in flushed {
                        let _ = done.send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.detectors.rotate(now);
        }
    }

    fn handle(&mut self, item: Item, flushed: &mut Vec<tokio::sync::oneshot::Sender<()>>) {
        self.queued_bytes.release(item.bytes());
        match item {
            Item::Event(record) => {
                self.queued_events.fetch_sub(1, Relaxed);
                self.write(&record);
            }
            Item::Detection(d) => {
                let (detection, request) = *d;
                let record = EventRecord {
                    at: SystemTime::now(),
                    event: detection.event(),
                    request,
                };
                self.write(&record);
                self.counters.detections.fetch_add(1, Relaxed);
                self.remember(&detection, &record);
                self.alert(&detection, &record);
            }
            Item::Flush(done) => flushed.push(done),
        }
    }

    /// The log line and the audit record.
    fn write(&mut self, record: &EventRecord) {
        self.counters.events.fetch_add(1, Relaxed);
        self.log.write(record.log_line(&self.app_id, self.log.buffer()));
        if let Some(audit) = &mut self.audit {
            if let Err(e) = audit.append(&record.audit_fields(&self.app_id), record.at) {
                self.audit_failed(&e);
            }
        }
    }

    fn audit_failed(&self, e: &std::io::Error) {
        self.counters.audit_failed.fetch_add(1, Relaxed);
        let mut line = JsonLine::in_buffer(self.log.buffer());
        line.raw_field("timestamp", |b| json::write_timestamp(SystemTime::now(), b));
        line.str_field("level", "ERROR");
        line.str_field("target", "tower_apm::security");
        line.str_field("message", "audit log write failed");
        line.str_field("error", &e.to_string());
        self.log.write(line.finish());
    }

    fn remember(&self, d: &Detection, record: &EventRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Recent {
            at: record.at,
            alert: d.kind.alert_name(),
            event: record.event.name.clone(),
            description: record.event.description.clone(),
            client: d.ip,
            user: d.user.clone(),
        });
    }

    /// Sends the detection to the notifiers, within the rate limit.
    fn alert(&mut self, d: &Detection, record: &EventRecord) {
        let Some(notify) = &self.notify else { return };
        let now = Instant::now();
        if now.duration_since(self.minute.0) >= Duration::from_secs(60) {
            self.minute = (now, 0);
        }
        if self.minute.1 >= self.alerts_per_minute {
            self.counters.alerts_suppressed.fetch_add(1, Relaxed);
            return;
        }
        self.minute.1 += 1;
        let mut labels = vec![
            ("alertname".to_owned(), d.kind.alert_name().to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
        ];
        if !self.app_id.is_empty() {
            labels.push(("service".to_owned(), self.app_id.clone()));
        }
        if let Some(ip) = d.ip {
            labels.push(("client_address".to_owned(), ip.to_string()));
        }
        if let Some(user) = &d.user {
            labels.push(("user".to_owned(), user.clone()));
        }
        notify.send_events(vec![Notice {
            labels,
            annotations: vec![
                ("summary".to_owned(), record.event.description.clone()),
                ("event".to_owned(), record.event.name.clone()),
            ],
            starts_at: record.at,
            resolved_at: None,
        }]);
    }
}
