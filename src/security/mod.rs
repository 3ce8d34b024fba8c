//! Security monitoring: security events named with the OWASP Logging
//! Vocabulary, detectors for brute force, traffic spikes and scanning, and a
//! tamper-evident audit log.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_apm::security::{AuditLog, BruteForce, Security};
//!
//! # fn main() -> Result<(), tower_apm::ConfigError> {
//! let apm = tower_apm::Apm::builder()
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .security(
//!         Security::new()
//!             .brute_force(BruteForce::default().per_address(10).window(Duration::from_secs(300)))
//!             .audit_log(AuditLog::new("security.audit").key(b"from your secret store".to_vec())),
//!     )
//!     .notify(tower_apm::Notifier::alertmanager("http://127.0.0.1:9093"))
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! When each part runs:
//! - A handler returns [`SecurityEvent`]s with its response; the layer adds the
//!   request's facts. For 401, 403, 413, 414 and 431 responses the handler said
//!   nothing about, the layer reports `authn_login_fail`, `authz_fail` or
//!   `input_validation_fail` itself.
//! - When the request ends, the detectors count it (a few atomic additions, no
//!   lock, fixed memory; see [`Security::memory_cap`]). A key crossing a
//!   threshold is one detection per window.
//! - Events and detections go through a bounded queue (full: dropped and
//!   counted in [`TelemetryStats`](crate::TelemetryStats)) to the
//!   `tower-apm-security` thread, which writes each as a log line (target
//!   `tower_apm::security`) and an audit record, and sends each detection as an
//!   alert to the notifiers ([`ApmBuilder::notify`](crate::ApmBuilder::notify)),
//!   at most [`Security::max_alerts_per_minute`] a minute.
//!
//! The client address is the connection's peer, or the address a trusted proxy
//! forwarded ([`ApmBuilder::trusted_proxies`](crate::ApmBuilder::trusted_proxies)).
//! Forwarding headers from anyone else are recorded as `forwarded_untrusted`
//! and never believed.
//!
//! The audit log's chain shows records edited, inserted, moved or deleted
//! before the last one; records removed from its end only against a head kept
//! elsewhere, and the writer refuses to start on a log that no longer reaches
//! its kept head: see [`audit`].

pub mod audit;
mod detect;
mod event;
pub(crate) mod monitor;
mod sketch;

pub use audit::{
    AuditHead, AuditLog, BreakKind, ChainBreak, Durability, InvalidHead, Verified, verify_audit_log,
    verify_audit_log_with_head,
};
pub use detect::{BruteForce, Scanning, TrafficSpike};
pub(crate) use event::ReportedEvents;
pub use event::{Level, SecurityEvent};

/// Security monitoring's settings, for
/// [`ApmBuilder::security`](crate::ApmBuilder::security). Every detector is on
/// with the defaults its type documents; the audit log is off until
/// [`Security::audit_log`] names a file.
#[derive(Debug, Clone)]
#[must_use]
pub struct Security {
    pub(crate) app_id: Option<String>,
    pub(crate) brute_force: BruteForce,
    pub(crate) traffic_spike: TrafficSpike,
    pub(crate) scanning: Scanning,
    pub(crate) memory_cap: usize,
    pub(crate) audit: Option<AuditLog>,
    pub(crate) queue: usize,
    pub(crate) max_alerts_per_minute: u32,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            app_id: None,
            brute_force: BruteForce::default(),
            traffic_spike: TrafficSpike::default(),
            scanning: Scanning::default(),
            memory_cap: 8 << 20,
            audit: None,
            queue: 4096,
            max_alerts_per_minute: 60,
        }
    }
}

impl Security {
    /// The defaults: every detector on, no audit log.
    pub fn new() -> Security {
        Security::default()
    }

    /// The `appid` field of every event (default: the service name).
    pub fn app_id(mut self, app_id: impl Into<String>) -> Security {
        self.app_id = Some(app_id.into());
        self
    }

    /// The brute-force detector's settings ([`BruteForce::off`] to turn it off).
    pub fn brute_force(mut self, brute_force: BruteForce) -> Security {
        self.brute_force = brute_force;
        self
    }

    /// The traffic-spike detector's settings.
    pub fn traffic_spike(mut self, traffic_spike: TrafficSpike) -> Security {
        self.traffic_spike = traffic_spike;
        self
    }

    /// The scanning detector's settings.
    pub fn scanning(mut self, scanning: Scanning) -> Security {
        self.scanning = scanning;
        self
    }

    /// The most memory the detectors' counters may take, in bytes (default 8
    /// MiB). It is allocated once, at start, and never grows, whatever the
    /// number of client addresses.
    ///
    /// Counts are approximate (count-min sketches, about `cap / 360` counters
    /// wide with every detector on: 16,384 at the default): never under the
    /// truth, so an attacker cannot hide among other addresses; over it only
    /// when keys share counters. A detector tells apart up to half its width in
    /// distinct addresses (or users) per window, 8,192 at the default. Past
    /// that, in a flood of distinct addresses, it names no address: it reports
    /// `sys_detector_saturated` once per window instead, until the window closes.
    pub fn memory_cap(mut self, bytes: usize) -> Security {
        self.memory_cap = bytes;
        self
    }

    /// Writes every event to a tamper-evident audit log as well.
    pub fn audit_log(mut self, audit: AuditLog) -> Security {
        self.audit = Some(audit);
        self
    }

    /// Events waiting for the security thread before new ones are dropped and
    /// counted (default 4,096).
    pub fn queue_capacity(mut self, events: usize) -> Security {
        self.queue = events.max(1);
        self
    }

    /// The most detections sent to the notifiers in a minute (default 60); the
    /// rest are still logged and audited, and counted.
    pub fn max_alerts_per_minute(mut self, alerts: u32) -> Security {
        self.max_alerts_per_minute = alerts;
        self
    }
}
