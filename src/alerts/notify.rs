//! Notifications: alerts that fire or resolve are sent from one background
//! thread, never from the request path or the evaluation, through a bounded
//! queue (a full queue drops the batch and counts it), with retries and backoff;
//! failures are counted and logged.
//!
//! - [`Notifier::alertmanager`]: Alertmanager's API v2 (`POST /api/v2/alerts`),
//!   firing alerts re-sent every [`Notifier::repeat_interval`] with an `endsAt`
//!   four intervals ahead (as Prometheus does, so that Alertmanager resolves them
//!   itself if this process goes away), resolved ones with `endsAt` the time
//!   they resolved.
//! - [`Notifier::webhook`]: a JSON body in the format of Alertmanager's webhook
//!   (`version` 4: `status`, `commonLabels`, `alerts` with `startsAt`/`endsAt`,
//!   `fingerprint`), when an alert fires or resolves and every repeat interval
//!   while one fires, so receivers written for Alertmanager read it as it is.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::limits::ByteBudget;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry_http::HttpClient;
use opentelemetry_http::hyper::HyperClient;

use crate::config::ConfigError;
use crate::logs::json::{JsonLine, push_object, push_string, push_time, write_timestamp};
use crate::logs::writer::LogWriter;
use crate::redact::{scrub_userinfo, url_for_display};

/// Batches of notices waiting for the notification thread.
const QUEUE: usize = 64;

/// Where alerts are sent. Add with [`crate::ApmBuilder::notify`].
///
/// Its `Debug` output, its errors and the log lines about it show the URL
/// without its userinfo (`http://user:pw@host` as `http://host`).
#[derive(Clone)]
#[must_use]
pub struct Notifier {
    target: Target,
    url: String,
    repeat: Duration,
    timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("target", &self.target)
            .field("url", &url_for_display(&self.url))
            .field("repeat", &self.repeat)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Alertmanager,
    Webhook,
    #[cfg(feature = "email")]
    Email(Box<Smtp>),
}

/// How an SMTP connection is secured.
#[cfg(feature = "email")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    StartTls,
    Tls,
}

/// An SMTP server and the addresses of alert emails, for [`Notifier::email`]
/// (feature `email`). STARTTLS on port 587 unless told otherwise.
///
/// ```
/// use tower_apm::{Notifier, Smtp};
///
/// let email = Notifier::email(
///     Smtp::new("smtp.example.com")
///         .credentials("alerts", "secret")
///         .from("alerts@example.com")
///         .to("oncall@example.com"),
/// );
/// # let _ = email;
/// ```
#[cfg(feature = "email")]
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Smtp {
    host: String,
    port: Option<u16>,
    security: Security,
    credentials: Option<(String, String)>,
    from: String,
    to: Vec<String>,
}

#[cfg(feature = "email")]
impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

#[cfg(feature = "email")]
impl Smtp {
    /// The server at `host`, with STARTTLS on port 587.
    pub fn new(host: impl Into<String>) -> Smtp {
        Smtp {
            host: host.into(),
            port: None,
            security: Security::StartTls,
            credentials: None,
            from: String::new(),
            to: Vec::new(),
        }
    }

    /// The port (default 587 for STARTTLS, 465 for TLS, 25 for plain).
    pub fn port(mut self, port: u16) -> Smtp {
        self.port = Some(port);
        self
    }

    /// No encryption (a relay on the same host or network only).
    pub fn plain(mut self) -> Smtp {
        self.security = Security::Plain;
        self
    }

    /// STARTTLS (the default): the connection is upgraded to TLS, or refused.
    pub fn starttls(mut self) -> Smtp {
        self.security = Security::StartTls;
        self
    }

    /// TLS from the first byte (SMTPS).
    pub fn tls(mut self) -> Smtp {
        self.security = Security::Tls;
        self
    }

    /// User and password for SMTP authentication.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Smtp {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The sender address.
    pub fn from(mut self, address: impl Into<String>) -> Smtp {
        self.from = address.into();
        self
    }

    /// A recipient (call again for more).
    pub fn to(mut self, address: impl Into<String>) -> Smtp {
        self.to.push(address.into());
        self
    }

    fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Plain => 25,
            Security::StartTls => 587,
            Security::Tls => 465,
        })
    }

    fn transport(&self, timeout: Duration) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, String> {
        use lettre::AsyncSmtpTransport;
        let builder = match self.security {
            Security::Plain => AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(&self.host),
            Security::StartTls => {
                AsyncSmtpTransport::<lettre::Tokio1Executor>::starttls_relay(&self.host).map_err(|e| e.to_string())?
            }
            Security::Tls => {
                AsyncSmtpTransport::<lettre::Tokio1Executor>::relay(&self.host).map_err(|e| e.to_string())?
            }
        };
        let mut builder = builder.port(self.port_or_default()).timeout(Some(timeout));
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user.clone(),
                password.clone(),
            ));
        }
        Ok(builder.build())
    }
}

impl Notifier {
    /// An Alertmanager at `base` (for example `http://127.0.0.1:9093`): alerts go
    /// to `POST {base}/api/v2/alerts`. Firing alerts are re-sent every minute by
    /// default.
    pub fn alertmanager(base: impl Into<String>) -> Notifier {
        let base: String = base.into();
        Notifier {
            target: Target::Alertmanager,
            url: format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            repeat: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }

    /// Any HTTP endpoint that takes Alertmanager's webhook payload (`POST url`).
    /// Alerts still firing are sent again every 4 hours by default.
    pub fn webhook(url: impl Into<String>) -> Notifier {
        Notifier {
            target: Target::Webhook,
            url: url.into(),
            repeat: Duration::from_secs(4 * 3600),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }

    /// Email through `smtp` (feature `email`): one message when alerts fire or
    /// resolve, and every 4 hours by default while they keep firing.
    #[cfg(feature = "email")]
    pub fn email(smtp: Smtp) -> Notifier {
        let url = format!("smtp://{}:{}", smtp.host, smtp.port_or_default());
        Notifier {
            target: Target::Email(Box::new(smtp)),
            url,
            repeat: Duration::from_secs(4 * 3600),
            timeout: Duration::from_secs(10),
            retries: 3,
        }
    }

    /// How often alerts that keep firing are sent again.
    pub fn repeat_interval(mut self, interval: Duration) -> Notifier {
        self.repeat = interval;
        self
    }

    /// How long one attempt may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Notifier {
        self.timeout = timeout;
        self
    }

    /// Attempts after the first one, with backoff doubling from 250 ms (default 3).
    pub fn retries(mut self, retries: u32) -> Notifier {
        self.retries = retries;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.repeat.is_zero() {
            return Err(ConfigError::setting(
                "notify",
                "repeat_interval 0s",
                "a duration above zero",
            ));
        }
        #[cfg(feature = "email")]
        if let Target::Email(smtp) = &self.target {
            for address in std::iter::once(&smtp.from).chain(&smtp.to) {
                if address.parse::<lettre::message::Mailbox>().is_err() {
                    return Err(ConfigError::setting(
                        "notify",
                        address,
                        "an email address (from and to)",
                    ));
                }
            }
            if smtp.to.is_empty() {
                return Err(ConfigError::setting(
                    "notify",
                    "no recipient",
                    "at least one Smtp::to address",
                ));
            }
            return smtp
                .transport(self.timeout)
                .map(|_| ())
                .map_err(|e| ConfigError::setting("notify", &smtp.host, format!("an SMTP server ({e})")));
        }
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| ConfigError::url_setting("notify", &self.url, "an http:// or https:// URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError::url_setting(
                "notify",
                &self.url,
                "an http:// or https:// URL",
            ));
        }
        crate::config::check_port(uri.authority().map_or("", http::uri::Authority::as_str))
            .map_err(|why| ConfigError::url_setting("notify", &self.url, why))?;
        if self.repeat.is_zero() {
            return Err(ConfigError::setting(
                "notify",
                "repeat_interval 0s",
                "a duration above zero",
            ));
        }
        Ok(())
    }
}

/// One alert as notifications carry it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notice {
    /// `alertname` first, then the alert's labels.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) annotations: Vec<(String, String)>,
    pub(crate) starts_at: SystemTime,
    /// Set when the alert resolved.
    pub(crate) resolved_at: Option<SystemTime>,
}

impl Notice {
    fn key(&self) -> String {
        let mut k = String::new();
        for (name, value) in &self.labels {
            k.push_str(name);
            k.push('\u{1}');
            k.push_str(value);
            k.push('\u{2}');
        }
        k
    }

    /// FNV-1a of the labels, as a stable id.
    fn fingerprint(&self) -> String {
        let mut h = crate::fnv::Fnv1a::new();
        h.write(self.key().as_bytes());
        format!("{:016x}", h.finish())
    }
}

/// Counters of the notifications.
#[derive(Debug, Default)]
pub(crate) struct NotifyCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Alerts for the notification thread: one evaluation's (sent by the rules of
/// [`should_send`]), or events (security detections: each sent once, as it
/// comes).
#[derive(Debug)]
struct Batch {
    notices: Vec<Notice>,
    events: bool,
}

impl Batch {
    /// About how many bytes the batch holds, for the queue's byte budget.
    fn bytes(&self) -> usize {
        self.notices
            .iter()
            .map(|n| {
                std::mem::size_of::<Notice>()
                    + n.labels
                        .iter()
                        .chain(&n.annotations)
                        .map(|(k, v)| k.len() + v.len() + std::mem::size_of::<(String, String)>())
                        .sum::<usize>()
            })
            .sum()
    }
}

/// The senders' side of the notification thread (the alert evaluation and the
/// security monitor share it).
#[derive(Debug, Clone)]
pub(crate) struct Dispatcher {
    tx: SyncSender<Batch>,
    /// The bytes of the queued batches.
    queued: Arc<ByteBudget>,
    pub(crate) counters: Arc<NotifyCounters>,
}

impl Dispatcher {
    /// Starts the notification thread for `notifiers`.
    pub(crate) fn start(notifiers: Vec<Notifier>, log: Arc<LogWriter>) -> Result<Dispatcher, ConfigError> {
        for n in &notifiers {
            n.validate()?;
        }
        let (tx, rx) = sync_channel::<Batch>(QUEUE);
        let counters = Arc::new(NotifyCounters::default());
        let c = Arc::clone(&counters);
        let queued = Arc::new(ByteBudget::new(crate::limits::NOTIFY_QUEUE_BYTES));
        let q = Arc::clone(&queued);
        crate::export::spawn_export_thread(
            "tower-apm-notify",
            move |_rt| {
                let states = notifiers
                    .into_iter()
                    .map(|n| State {
                        client: HyperClient::with_default_connector(n.timeout, None),
                        notifier: n,
                        last_post: None,
                        firing: BTreeSet::new(),
                    })
                    .collect::<Vec<_>>();
                Ok(states)
            },
            move |rt, states| run(rt, states, &rx, &q, &c, &log),
        )?;
        Ok(Dispatcher { tx, queued, counters })
    }

    /// Hands the alerts of one evaluation (every firing alert and those that
    /// just resolved) to the thread; never waits.
    pub(crate) fn send(&self, batch: Vec<Notice>) {
        self.enqueue(Batch {
            notices: batch,
            events: false,
        });
    }

    /// Hands alerts that are events (sent once each, whatever else fires) to
    /// the thread; never waits.
    pub(crate) fn send_events(&self, batch: Vec<Notice>) {
        self.enqueue(Batch {
            notices: batch,
            events: true,
        });
    }

    fn enqueue(&self, batch: Batch) {
        let bytes = batch.bytes();
        if !self.queued.try_reserve(bytes) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.release(bytes);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct State {
    notifier: Notifier,
    client: HyperClient,
    last_post: Option<Instant>,
    /// The firing alerts last sent.
    firing: BTreeSet<String>,
}

fn run(
    rt: &tokio::runtime::Runtime,
    mut states: Vec<State>,
    rx: &Receiver<Batch>,
    queued: &ByteBudget,
    counters: &NotifyCounters,
    log: &LogWriter,
) {
    while let Ok(b) = rx.recv() {
        queued.release(b.bytes());
        let Batch { notices: batch, events } = b;
        let now = SystemTime::now();
        for state in &mut states {
            if events {
                let sent = send(rt, state, &batch, now);
                count(sent, state, counters, log, None);
                continue;
            }
            let firing: BTreeSet<String> = batch
                .iter()
                .filter(|n| n.resolved_at.is_none())
                .map(Notice::key)
                .collect();
            let resolved = batch.iter().any(|n| n.resolved_at.is_some());
            let since_last = state.last_post.map(|t| t.elapsed());
            if !should_send(&firing, resolved, &state.firing, since_last, state.notifier.repeat) {
                state.firing = firing;
                continue;
            }
            let sent = send(rt, state, &batch, now);
            count(sent, state, counters, log, Some(firing));
        }
    }
}

/// One notification of `batch` to one notifier, with its retries.
fn send(rt: &tokio::runtime::Runtime, state: &State, batch: &[Notice], now: SystemTime) -> Result<(), String> {
    match &state.notifier.target {
        Target::Alertmanager => rt.block_on(post(state, alertmanager_body(batch, now, state.notifier.repeat))),
        Target::Webhook => rt.block_on(post(state, webhook_body(batch))),
        #[cfg(feature = "email")]
        Target::Email(smtp) => rt.block_on(email(state, smtp, batch)),
    }
}

/// Counts a notification; a failure is logged. An evaluation's notification
/// (`firing` given) also becomes the one the repeat interval counts from.
fn count(
    sent: Result<(), String>,
    state: &mut State,
    counters: &NotifyCounters,
    log: &LogWriter,
    firing: Option<BTreeSet<String>>,
) {
    match sent {
        Ok(()) => {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            if let Some(firing) = firing {
                state.last_post = Some(Instant::now());
                state.firing = firing;
            }
        }
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let mut line = JsonLine::in_buffer(log.buffer());
            line.raw_field("timestamp", |b| write_timestamp(SystemTime::now(), b));
            line.str_field("level", "WARN");
            line.str_field("target", "tower_apm::alerts");
            line.str_field("message", "alert notification failed");
            line.str_field("url", &url_for_display(&state.notifier.url));
            line.str_field("error", &e);
            log.write(line.finish());
        }
    }
}

/// Whether a notifier sends this evaluation's alerts: when one resolved, when
/// one started firing that was not in the last notification (`sent`), and while
/// any fires, once every `repeat` since the last notification (`since_last`).
fn should_send(
    firing: &BTreeSet<String>,
    resolved: bool,
    sent: &BTreeSet<String>,
    since_last: Option<Duration>,
    repeat: Duration,
) -> bool {
    let changed = resolved || !firing.is_subset(sent);
    let due = since_last.is_none_or(|d| d >= repeat);
    changed || (due && !firing.is_empty())
}

/// One POST with retries; the last error.
async fn post(state: &State, body: Vec<u8>) -> Result<(), String> {
    let body = Bytes::from(body);
    let mut backoff = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..=state.notifier.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let request = http::Request::post(&state.notifier.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .map_err(|e| e.to_string())?;
        match state.client.send_bytes(request).await {
            Ok(res) if res.status().is_success() => return Ok(()),
            Ok(res) => {
                last = format!(
                    "{} answered {}: {}",
                    url_for_display(&state.notifier.url),
                    res.status(),
                    String::from_utf8_lossy(res.body())
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
                // A request the receiver refuses will be refused again.
                if res.status().is_client_error() {
                    break;
                }
            }
            Err(e) => {
                last = format!(
                    "{}: {}",
                    url_for_display(&state.notifier.url),
                    scrub_userinfo(&e.to_string())
                );
            }
        }
    }
    Err(last)
}

/// One email for the batch, with retries; the last error.
#[cfg(feature = "email")]
async fn email(state: &State, smtp: &Smtp, batch: &[Notice]) -> Result<(), String> {
    use lettre::AsyncTransport;
    let transport = smtp.transport(state.notifier.timeout)?;
    let (subject, body) = email_text(batch);
    let mut message = lettre::Message::builder()
        .from(smtp.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject);
    for to in &smtp.to {
        message = message.to(to.parse().map_err(|e| format!("to: {e}"))?);
    }
    let message = message.body(body).map_err(|e| e.to_string())?;
    let mut backoff = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..=state.notifier.retries {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        match transport.send(message.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_permanent() => return Err(format!("{}: {e}", url_for_display(&state.notifier.url))),
            Err(e) => last = format!("{}: {e}", url_for_display(&state.notifier.url)),
        }
    }
    Err(last)
}

/// The subject and text of an alert email.
#[cfg(any(feature = "email", test))]
pub(crate) fn email_text(batch: &[Notice]) -> (String, String) {
    let firing: Vec<&Notice> = batch.iter().filter(|n| n.resolved_at.is_none()).collect();
    let label = |n: &Notice, key: &str| {
        n.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(String::new, |(_, v)| v.clone())
    };
    let names: BTreeSet<String> = batch.iter().map(|n| label(n, "alertname")).collect();
    let service = batch.first().map(|n| label(n, "service")).unwrap_or_default();
    let subject = if firing.is_empty() {
        format!(
            "[RESOLVED] {} ({service})",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    } else {
        format!(
            "[FIRING:{}] {} ({service})",
            firing.len(),
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    let mut body = String::new();
    for n in batch {
        let mut since = Vec::new();
        write_timestamp(n.starts_at, &mut since);
        let state = match n.resolved_at {
            None => format!("FIRING since {}", String::from_utf8_lossy(&since)),
            Some(t) => {
                let mut at = Vec::new();
                write_timestamp(t, &mut at);
                format!(
                    "RESOLVED at {} (fired {})",
                    String::from_utf8_lossy(&at),
                    String::from_utf8_lossy(&since)
                )
            }
        };
        body.push_str(&format!("{}: {state}\n", label(n, "alertname")));
        for (k, v) in &n.labels {
            body.push_str(&format!("  {k} = {v}\n"));
        }
        for (k, v) in &n.annotations {
            body.push_str(&format!("  {k}: {v}\n"));
        }
        body.push('\n');
    }
    (subject, body)
}

/// Alertmanager API v2: a list of alerts.
pub(crate) fn alertmanager_body(batch: &[Notice], now: SystemTime, repeat: Duration) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for (i, n) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"labels\":");
        push_object(&mut out, &n.labels);
        out.extend_from_slice(b",\"annotations\":");
        push_object(&mut out, &n.annotations);
        out.extend_from_slice(b",\"startsAt\":");
        push_time(&mut out, n.starts_at);
        out.extend_from_slice(b",\"endsAt\":");
        push_time(&mut out, n.resolved_at.unwrap_or(now + 4 * repeat));
        out.extend_from_slice(b",\"generatorURL\":\"\"}");
    }
    out.push(b']');
    out
}

/// Alertmanager's webhook payload (version 4).
pub(crate) fn webhook_body(batch: &[Notice]) -> Vec<u8> {
    let firing = batch.iter().any(|n| n.resolved_at.is_none());
    let common: Vec<(String, String)> = batch.first().map_or_else(Vec::new, |first| {
        first
            .labels
            .iter()
            .filter(|kv| batch.iter().all(|n| n.labels.contains(kv)))
            .cloned()
            .collect()
    });
    let mut out = b"{\"version\":\"4\",\"groupKey\":".to_vec();
    push_string(
        &mut out,
        &format!(
            "tower-apm:{}",
            common
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    out.extend_from_slice(b",\"truncatedAlerts\":0,\"status\":");
    push_string(&mut out, if firing { "firing" } else { "resolved" });
    out.extend_from_slice(b",\"receiver\":\"tower-apm\",\"groupLabels\":{},\"commonLabels\":");
    push_object(&mut out, &common);
    out.extend_from_slice(b",\"commonAnnotations\":{},\"externalURL\":\"\",\"alerts\":[");
    for (i, n) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"status\":");
        push_string(&mut out, if n.resolved_at.is_some() { "resolved" } else { "firing" });
        out.extend_from_slice(b",\"labels\":");
        push_object(&mut out, &n.labels);
        out.extend_from_slice(b",\"annotations\":");
        push_object(&mut out, &n.annotations);
        out.extend_from_slice(b",\"startsAt\":");
        push_time(&mut out, n.starts_at);
        out.extend_from_slice(b",\"endsAt\":");
        match n.resolved_at {
            Some(t) => push_time(&mut out, t),
            None => out.extend_from_slice(b"\"0001-01-01T00:00:00Z\""),
        }
        out.extend_from_slice(b",\"generatorURL\":\"\",\"fingerprint\":");
        push_string(&mut out, &n.fingerprint());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(resolved: bool) -> Notice {
        Notice {
            labels: vec![
                ("alertname".into(), "HighErrorRate".into()),
                ("severity".into(), "page".into()),
            ],
            annotations: vec![("summary".into(), "5xx over 5%".into())],
            starts_at: SystemTime::UNIX_EPOCH,
            resolved_at: resolved.then_some(SystemTime::UNIX_EPOCH + Duration::from_secs(60)),
        }
    }

    #[test]
    fn alertmanager_gets_ends_at_ahead_while_firing_and_the_resolve_time_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(30);
        let body = String::from_utf8(alertmanager_body(&[notice(false)], now, Duration::from_secs(60))).unwrap();
        assert_eq!(
            body,
            "[{\"labels\":{\"alertname\":\"HighErrorRate\",\"severity\":\"page\"},\"annotations\":{\"summary\":\"5xx over 5%\"},\
             \"startsAt\":\"1970-01-01T00:00:00.000000Z\",\"endsAt\":\"1970-01-01T00:04:30.000000Z\",\"generatorURL\":\"\"}]"
        );
        let body = String::from_utf8(alertmanager_body(&[notice(true)], now, Duration::from_secs(60))).unwrap();
        assert!(body.contains("\"endsAt\":\"1970-01-01T00:01:00.000000Z\""), "{body}");
    }

    #[test]
    fn webhook_body_follows_alertmanagers_payload() {
        let body = String::from_utf8(webhook_body(&[notice(true)])).unwrap();
        assert!(body.starts_with("{\"version\":\"4\",\"groupKey\":"), "{body}");
        assert!(
            body.contains("\"status\":\"resolved\",\"receiver\":\"tower-apm\""),
            "{body}"
        );
        assert!(
            body.contains("\"commonLabels\":{\"alertname\":\"HighErrorRate\",\"severity\":\"page\"}"),
            "{body}"
        );
        assert!(body.contains("\"endsAt\":\"1970-01-01T00:01:00.000000Z\""), "{body}");
        assert!(body.contains("\"fingerprint\":\""), "{body}");
    }

    #[test]
    fn email_subject_says_firing_or_resolved_and_the_body_lists_labels() {
        let (subject, body) = email_text(&[notice(false)]);
        assert_eq!(subject, "[FIRING:1] HighErrorRate ()");
        assert!(
            body.starts_with("HighErrorRate: FIRING since 1970-01-01T00:00:00.000000Z\n"),
            "{body}"
        );
        assert!(body.contains("  severity = page\n  summary: 5xx over 5%\n"), "{body}");
        let (subject, body) = email_text(&[notice(true)]);
        assert_eq!(subject, "[RESOLVED] HighErrorRate ()");
        assert!(body.contains("RESOLVED at 1970-01-01T00:01:00.000000Z"), "{body}");
    }

    #[test]
    fn alerts_are_sent_on_change_and_repeated_only_after_the_repeat_interval() {
        let set = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<String>>();
        let minute = Duration::from_secs(60);
        let a = set(&["a"]);
        // A new firing alert: sent at once.
        assert!(should_send(&a, false, &set(&[]), None, minute));
        assert!(should_send(
            &set(&["a", "b"]),
            false,
            &a,
            Some(Duration::from_secs(1)),
            minute
        ));
        // The same alert still firing: only once the interval has passed.
        assert!(!should_send(&a, false, &a, Some(Duration::from_secs(59)), minute));
        assert!(should_send(&a, false, &a, Some(minute), minute));
        // A resolution: at once, whatever the interval.
        assert!(should_send(&set(&[]), true, &a, Some(Duration::from_secs(1)), minute));
        // Nothing firing, nothing resolved: nothing to send.
        assert!(!should_send(&set(&[]), false, &a, Some(2 * minute), minute));
    }

    #[test]
    fn notifier_urls_are_checked() {
        assert!(Notifier::alertmanager("http://127.0.0.1:9093").validate().is_ok());
        assert_eq!(
            Notifier::alertmanager("http://am:9093/").url,
            "http://am:9093/api/v2/alerts"
        );
        let err = Notifier::webhook("hooks.example/ops")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("an http:// or https:// URL"), "{err}");
    }

    #[test]
    fn notifier_urls_need_a_possible_port_and_never_show_their_userinfo() {
        for url in [
            "http://127.0.0.1:99999/hook",
            "http://user:hunter2@hooks:0/x",
            "https://hooks:abc",
        ] {
            let err = Notifier::webhook(url).validate().unwrap_err().to_string();
            assert!(err.contains("notify") && err.contains("port"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = Notifier::webhook("ftp://user:hunter2@hooks/x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://hooks/x") && !err.contains("hunter2"), "{err}");
        let n = Notifier::alertmanager("http://user:hunter2@am:9093");
        assert!(n.validate().is_ok());
        let debug = format!("{n:?}");
        assert!(
            debug.contains("http://am:9093/api/v2/alerts") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
