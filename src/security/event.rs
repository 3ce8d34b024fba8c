//! Security events named with the OWASP Logging Vocabulary, and the record each
//! becomes: the fields OWASP's logging cheat sheet asks for.

use std::net::IpAddr;
use std::time::SystemTime;

use axum::response::{IntoResponseParts, ResponseParts};
use opentelemetry::trace::{SpanId, TraceId};

use crate::logs::json::{self, JsonLine};

/// How serious a security event is (OWASP's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Expected activity worth a record (a successful login).
    Info,
    /// Suspicious on its own (a failed login, rejected input).
    Warn,
    /// An attack or a denied access.
    Critical,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Critical => "CRITICAL",
        }
    }

    /// The level of the application log line.
    fn log_level(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Critical => "ERROR",
        }
    }
}

/// What the detectors and the layer need to know about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    LoginFailed,
    /// Any other `authn_*` event.
    Authn,
    Authz,
    Other,
}

/// Longest user name or parameter kept in an event (bytes); longer ones are cut
/// at a character boundary. A login form's user field is attacker-controlled.
const MAX_PARAM: usize = 128;

/// One security event, named with the [OWASP Logging Vocabulary]
/// (`authn_login_fail:alice`, `authz_fail:alice,/admin`).
///
/// A handler reports events by returning them with its response: an event is a
/// response part, so it goes in the tuple a handler returns. The layer adds what
/// it knows about the request (source address, method, URI, user agent, trace
/// id) and feeds the detectors.
///
/// ```
/// use axum::{http::StatusCode, response::IntoResponse};
/// use tower_apm::security::SecurityEvent;
///
/// async fn login(user: String, password_ok: bool) -> impl IntoResponse {
///     if password_ok {
///         (SecurityEvent::login_succeeded(&user), StatusCode::NO_CONTENT)
///     } else {
///         (SecurityEvent::login_failed(&user), StatusCode::UNAUTHORIZED)
///     }
/// }
/// ```
///
/// Events outside a request (a job, startup) go through
/// [`Apm::security_event`](crate::Apm::security_event).
///
/// [OWASP Logging Vocabulary]: https://cheatsheetseries.owasp.org/cheatsheets/Logging_Vocabulary_Cheat_Sheet.html
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) level: Level,
    pub(crate) description: String,
    pub(crate) user: Option<String>,
}

fn param(s: &str) -> &str {
    if s.len() <= MAX_PARAM {
        return s;
    }
    let mut end = MAX_PARAM;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl SecurityEvent {
    /// Any event: `name` is a vocabulary name with its parameters
    /// (`sys_monitor_disabled:admin,audit`) or one of your own.
    pub fn new(name: impl Into<String>, level: Level) -> SecurityEvent {
        let name = name.into();
        SecurityEvent {
            description: name.clone(),
            name,
            kind: Kind::Other,
            level,
            user: None,
        }
    }

    /// About how many bytes the event holds.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<SecurityEvent>()
            + self.name.len()
            + self.description.len()
            + self.user.as_ref().map_or(0, String::len)
    }

    /// Cuts the name, description and user to `limit` bytes each: a handler
    /// may put anything a client sent in them.
    pub(crate) fn cut(&mut self, limit: usize) {
        crate::limits::cut_in_place(&mut self.name, limit);
        crate::limits::cut_in_place(&mut self.description, limit);
        if let Some(user) = &mut self.user {
            crate::limits::cut_in_place(user, limit);
        }
    }

    fn with_user(name: String, kind: Kind, level: Level, user: &str, description: String) -> SecurityEvent {
        SecurityEvent {
            name,
            kind,
            level,
            description,
            user: Some(param(user).to_owned()),
        }
    }

    /// `authn_login_success:{user}`.
    pub fn login_succeeded(user: &str) -> SecurityEvent {
        let u = param(user);
        let name = format!("authn_login_success:{u}");
        SecurityEvent::with_user(
            name,
            Kind::Authn,
            Level::Info,
            u,
            format!("User {u} login successfully"),
        )
    }

    /// `authn_login_fail:{user}`: counted by the brute-force detector.
    pub fn login_failed(user: &str) -> SecurityEvent {
        let u = param(user);
        let name = format!("authn_login_fail:{u}");
        SecurityEvent::with_user(
            name,
            Kind::LoginFailed,
            Level::Warn,
            u,
            format!("User {u} login failed"),
        )
    }

    /// `authn_login_lock:{user},{reason}`: an account locked.
    pub fn login_locked(user: &str, reason: &str) -> SecurityEvent {
        let (u, r) = (param(user), param(reason));
        let name = format!("authn_login_lock:{u},{r}");
        SecurityEvent::with_user(
            name,
            Kind::Authn,
            Level::Warn,
            u,
            format!("User {u} login locked because {r}"),
        )
    }

    /// `authn_password_change:{user}`.
    pub fn password_changed(user: &str) -> SecurityEvent {
        let u = param(user);
        let name = format!("authn_password_change:{u}");
        SecurityEvent::with_user(
            name,
            Kind::Authn,
            Level::Info,
            u,
            format!("User {u} has changed their password"),
        )
    }

    /// `authz_fail:{user},{resource}`: access denied.
    pub fn authz_failed(user: &str, resource: &str) -> SecurityEvent {
        let (u, r) = (param(user), param(resource));
        let name = format!("authz_fail:{u},{r}");
        let description = format!("User {u} attempted to access a resource without entitlement: {r}");
        SecurityEvent::with_user(name, Kind::Authz, Level::Critical, u, description)
    }

    /// `input_validation_fail:{fields},{user}`: input the server rejected.
    pub fn input_validation_failed(fields: &str, user: &str) -> SecurityEvent {
        let (f, u) = (param(fields), param(user));
        let name = format!("input_validation_fail:{f},{u}");
        SecurityEvent::with_user(
            name,
            Kind::Other,
            Level::Warn,
            u,
            format!("User {u} submitted data that failed validation: {f}"),
        )
    }

    /// `session_created:{user}`.
    pub fn session_created(user: &str) -> SecurityEvent {
        let u = param(user);
        let name = format!("session_created:{u}");
        SecurityEvent::with_user(
            name,
            Kind::Other,
            Level::Info,
            u,
            format!("User {u} has started a new session"),
        )
    }

    /// `session_expired:{user},{reason}`.
    pub fn session_expired(user: &str, reason: &str) -> SecurityEvent {
        let (u, r) = (param(user), param(reason));
        let name = format!("session_expired:{u},{r}");
        SecurityEvent::with_user(
            name,
            Kind::Other,
            Level::Info,
            u,
            format!("User {u} session expired due to {r}"),
        )
    }

    /// Replaces the description (a sentence for people).
    pub fn description(mut self, description: impl Into<String>) -> SecurityEvent {
        self.description = description.into();
        self
    }

    /// Sets the user the event is about.
    pub fn user(mut self, user: &str) -> SecurityEvent {
        self.user = Some(param(user).to_owned());
        self
    }

    /// The event's name with its parameters (`authn_login_fail:alice`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event's level.
    pub fn level(&self) -> Level {
        self.level
    }
}

/// The events a handler returned with one response.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReportedEvents(pub(crate) Vec<SecurityEvent>);

impl ReportedEvents {
    /// About how many bytes the events hold.
    pub(crate) fn bytes(&self) -> usize {
        self.0.iter().map(SecurityEvent::bytes).sum()
    }

    /// Whether the handler reported an authentication or authorization
    /// outcome itself (then the layer adds none for a 401 or 403).
    pub(crate) fn has_auth(&self) -> bool {
        self.0.iter().any(|e| e.kind != Kind::Other)
    }
}

impl IntoResponseParts for SecurityEvent {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        let ext = res.extensions_mut();
        match ext.get_mut::<ReportedEvents>() {
            Some(events) => events.0.push(self),
            None => {
                ext.insert(ReportedEvents(vec![self]));
            }
        }
        Ok(res)
    }
}

/// What is known about the request an event came with.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestFacts {
    pub(crate) source_ip: Option<IpAddr>,
    /// A forwarding header no trusted proxy wrote: its name and value.
    pub(crate) claimed_forwarded: Option<(&'static str, String)>,
    pub(crate) method: Option<http::Method>,
    /// Path and query, with sensitive query values redacted.
    pub(crate) uri: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) user_agent: Option<String>,
    pub(crate) trace: Option<(TraceId, SpanId)>,
}

impl RequestFacts {
    /// About how many bytes the strings hold.
    pub(crate) fn bytes(&self) -> usize {
        self.claimed_forwarded.as_ref().map_or(0, |(_, v)| v.len())
            + self.uri.as_ref().map_or(0, String::len)
            + self.route.as_ref().map_or(0, String::len)
            + self.user_agent.as_ref().map_or(0, String::len)
    }

    /// Cuts every string a client chose to `limit` bytes.
    pub(crate) fn cut(&mut self, limit: usize) {
        for s in [&mut self.uri, &mut self.route, &mut self.user_agent]
            .into_iter()
            .flatten()
        {
            crate::limits::cut_in_place(s, limit);
        }
        if let Some((_, v)) = &mut self.claimed_forwarded {
            crate::limits::cut_in_place(v, limit);
        }
    }
}

/// An event with its request, as the security thread writes it.
#[derive(Debug, Clone)]
pub(crate) struct EventRecord {
    pub(crate) at: SystemTime,
    pub(crate) event: SecurityEvent,
    pub(crate) request: RequestFacts,
}

impl EventRecord {
    /// The OWASP fields, as the inside of a JSON object: the audit log's
    /// record and the tail of the log line.
    /// The log line carries the log's level instead of OWASP's (`with_level`).
    fn write_fields(&self, app_id: &str, with_level: bool, line: &mut JsonLine) {
        line.raw_field("datetime", |b| json::write_timestamp(self.at, b));
        line.str_field("appid", app_id);
        line.str_field("event", &self.event.name);
        if with_level {
            line.str_field("level", self.event.level.as_str());
        }
        line.str_field("description", &self.event.description);
        let r = &self.request;
        if let Some(ip) = r.source_ip {
            line.raw_field("source_ip", |b| json::push_ip(b, ip));
        }
        if let Some((header, claimed)) = &r.claimed_forwarded {
            line.str_field("forwarded_untrusted", claimed);
            line.str_field("forwarded_untrusted_header", header);
        }
        if let Some(user) = &self.event.user {
            line.str_field("user", user);
        }
        if let Some(m) = &r.method {
            line.str_field("request_method", m.as_str());
        }
        if let Some(uri) = &r.uri {
            line.str_field("request_uri", uri);
        }
        if let Some(route) = &r.route {
            line.str_field("route", route);
        }
        if let Some(s) = r.status {
            line.u64_field("status", u64::from(s));
        }
        if let Some(ua) = &r.user_agent {
            line.str_field("useragent", ua);
        }
        if let Some((trace, span)) = r.trace {
            line.raw_field("trace_id", |b| json::push_hex(b, &trace.to_bytes()));
            line.raw_field("span_id", |b| json::push_hex(b, &span.to_bytes()));
        }
    }

    /// The application log line: timestamp, level, target and message first,
    /// as every line of the log, then the OWASP fields.
    pub(crate) fn log_line(&self, app_id: &str, buf: Vec<u8>) -> Vec<u8> {
        let mut line = JsonLine::in_buffer(buf);
        line.raw_field("timestamp", |b| json::write_timestamp(self.at, b));
        line.str_field("level", self.event.level.log_level());
        line.str_field("target", "tower_apm::security");
        line.str_field("message", &self.event.description);
        self.write_fields(app_id, false, &mut line);
        line.finish()
    }

    /// The OWASP fields alone, for the audit log.
    pub(crate) fn audit_fields(&self, app_id: &str) -> String {
        let mut line = JsonLine::new();
        self.write_fields(app_id, true, &mut line);
        let bytes = line.finish();
        // `{` ... `}\n` without the braces; JsonLine writes UTF-8 only.
        String::from_utf8_lossy(&bytes[1..bytes.len() - 2]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_names_carry_their_parameters() {
        assert_eq!(SecurityEvent::login_failed("alice").name(), "authn_login_fail:alice");
        assert_eq!(
            SecurityEvent::authz_failed("bob", "/admin").name(),
            "authz_fail:bob,/admin"
        );
        assert_eq!(
            SecurityEvent::login_locked("eve", "maxretries").name(),
            "authn_login_lock:eve,maxretries"
        );
        assert_eq!(SecurityEvent::login_failed("alice").level(), Level::Warn);
        assert_eq!(SecurityEvent::authz_failed("bob", "/admin").level(), Level::Critical);
    }

    #[test]
    fn a_huge_user_name_is_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let e = SecurityEvent::login_failed(&long);
        assert!(e.user.as_ref().unwrap().len() <= MAX_PARAM);
        assert!(e.name().len() < 200);
    }

    #[test]
    fn the_record_has_the_owasp_fields_and_escapes_what_the_client_sent() {
        let r = EventRecord {
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            event: SecurityEvent::login_failed("al\"ice\n"),
            request: RequestFacts {
                source_ip: Some("192.0.2.7".parse().unwrap()),
                method: Some(http::Method::POST),
                uri: Some("/login".into()),
                status: Some(401),
                user_agent: Some("curl/8".into()),
                ..RequestFacts::default()
            },
        };
        let line = r.log_line("shop", Vec::new());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["event"], "authn_login_fail:al\"ice\n");
        assert_eq!(v["user"], "al\"ice\n");
        assert_eq!(v["appid"], "shop");
        assert_eq!(v["source_ip"], "192.0.2.7");
        assert_eq!(v["request_method"], "POST");
        assert_eq!(v["request_uri"], "/login");
        assert_eq!(v["status"], 401);
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "User al\"ice\n login failed");
        assert_eq!(v["target"], "tower_apm::security");
        assert_eq!(v["datetime"], "2027-01-15T08:00:00.000000Z");
        let fields = r.audit_fields("shop");
        let v: serde_json::Value = serde_json::from_str(&format!("{{{fields}}}")).unwrap();
        assert_eq!(v["event"], "authn_login_fail:al\"ice\n");
        assert_eq!(v["level"], "WARN");
        assert!(v.get("target").is_none());
    }
}
