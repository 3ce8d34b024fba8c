//! The detectors: brute force, traffic spikes and scanning. Each counts in
//! [`Sketch`]es (fixed memory, no lock) and reports a [`Detection`] the first
//! time a key crosses its threshold in a window.
//!
//! Times are milliseconds on the monitor's clock, passed in, so the windows are
//! tested with a controlled clock.

use std::net::IpAddr;
use std::time::Duration;

use super::event::{Level, SecurityEvent};
use super::sketch::{DEPTH, HashKey, Sketch};
use crate::config::ConfigError;

/// Brute-force detection: failed logins (`authn_login_fail` events, and 401
/// responses the handler reported nothing for) counted per client address, per
/// user, and as distinct users per address (credential stuffing).
#[derive(Debug, Clone, PartialEq)]
pub struct BruteForce {
    pub(crate) enabled: bool,
    pub(crate) per_address: u32,
    pub(crate) per_user: u32,
    pub(crate) distinct_users: u32,
    pub(crate) window: Duration,
}

impl Default for BruteForce {
    /// 10 failures from one address or for one user, or failures for 5
    /// distinct users from one address, within 5 minutes.
    fn default() -> Self {
        BruteForce {
            enabled: true,
            per_address: 10,
            per_user: 10,
            distinct_users: 5,
            window: Duration::from_secs(300),
        }
    }
}

impl BruteForce {
    /// Brute-force detection off.
    pub fn off() -> Self {
        BruteForce {
            enabled: false,
            ..BruteForce::default()
        }
    }

    /// Failed logins from one client address that raise a detection.
    pub fn per_address(mut self, failures: u32) -> Self {
        self.per_address = failures;
        self
    }

    /// Failed logins for one user (from any addresses) that raise a detection.
    pub fn per_user(mut self, failures: u32) -> Self {
        self.per_user = failures;
        self
    }

    /// Distinct users failing from one address that raise a credential
    /// stuffing detection.
    pub fn distinct_users(mut self, users: u32) -> Self {
        self.distinct_users = users;
        self
    }

    /// The sliding window the failures are counted in.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// Traffic-spike detection: a client's requests in a window, or the whole
/// service's, above `factor` times its moving average over recent windows and
/// above an absolute floor.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSpike {
    pub(crate) enabled: bool,
    pub(crate) factor: f64,
    pub(crate) client_floor: u32,
    pub(crate) service_floor: u32,
    pub(crate) window: Duration,
    pub(crate) baseline_windows: u32,
}

impl Default for TrafficSpike {
    /// Over 10 times the moving average of the last 30 windows of 10 s, and
    /// over 500 requests (one client) or 5,000 (the service) in a window.
    fn default() -> Self {
        TrafficSpike {
            enabled: true,
            factor: 10.0,
            client_floor: 500,
            service_floor: 5000,
            window: Duration::from_secs(10),
            baseline_windows: 30,
        }
    }
}

impl TrafficSpike {
    /// Traffic-spike detection off.
    pub fn off() -> Self {
        TrafficSpike {
            enabled: false,
            ..TrafficSpike::default()
        }
    }

    /// How many times its moving average a rate must be to be a spike.
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// Requests from one client in a window below which nothing is a spike.
    pub fn client_floor(mut self, requests: u32) -> Self {
        self.client_floor = requests;
        self
    }

    /// Requests to the service in a window below which nothing is a spike.
    pub fn service_floor(mut self, requests: u32) -> Self {
        self.service_floor = requests;
        self
    }

    /// The window requests are counted in.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How many windows the moving average spans (about).
    pub fn baseline_windows(mut self, windows: u32) -> Self {
        self.baseline_windows = windows;
        self
    }
}

/// Scanning detection: many 404 responses, or many 401/403 responses, to one
/// client address within a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Scanning {
    pub(crate) enabled: bool,
    pub(crate) not_found: u32,
    pub(crate) denied: u32,
    pub(crate) window: Duration,
}

impl Default for Scanning {
    /// 50 404s, or 30 401s and 403s, from one address within a minute.
    fn default() -> Self {
        Scanning {
            enabled: true,
            not_found: 50,
            denied: 30,
            window: Duration::from_secs(60),
        }
    }
}

impl Scanning {
    /// Scanning detection off.
    pub fn off() -> Self {
        Scanning {
            enabled: false,
            ..Scanning::default()
        }
    }

    /// 404 responses to one address that raise a detection.
    pub fn not_found(mut self, responses: u32) -> Self {
        self.not_found = responses;
        self
    }

    /// 401 and 403 responses to one address that raise a detection.
    pub fn denied(mut self, responses: u32) -> Self {
        self.denied = responses;
        self
    }

    /// The sliding window responses are counted in.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// What crossed a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DetectionKind {
    BruteForce,
    CredentialStuffing,
    ClientSpike,
    ServiceSpike,
    NotFoundScan,
    DeniedScan,
    /// A detector's counters are too full to tell addresses (or users) apart.
    Saturated(&'static str),
}

impl DetectionKind {
    /// The alert's name.
    pub(crate) fn alert_name(self) -> &'static str {
        match self {
            DetectionKind::BruteForce => "BruteForce",
            DetectionKind::CredentialStuffing => "CredentialStuffing",
            DetectionKind::ClientSpike | DetectionKind::ServiceSpike => "TrafficSpike",
            DetectionKind::NotFoundScan | DetectionKind::DeniedScan => "Scanning",
            DetectionKind::Saturated(_) => "SecurityDetectorSaturated",
        }
    }
}

/// One detection: a key crossed a detector's threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Detection {
    pub(crate) kind: DetectionKind,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) user: Option<String>,
    /// The count that crossed, and the threshold.
    pub(crate) count: u32,
    pub(crate) limit: u32,
    pub(crate) window: Duration,
}

impl Detection {
    /// The security event it is, named in the OWASP vocabulary's style
    /// (`authn_login_fail_max` and `malicious_excess_404` are the cheat sheet's
    /// own; the other `malicious_*` and `sys_*` names follow its prefixes).
    pub(crate) fn event(&self) -> SecurityEvent {
        let ip = self.ip.map(|i| i.to_string()).unwrap_or_default();
        let user = self.user.as_deref().unwrap_or("");
        let secs = self.window.as_secs();
        let (name, description) = match self.kind {
            DetectionKind::BruteForce if self.ip.is_some() => (
                format!("malicious_brute_force:{ip},{user}"),
                format!(
                    "{} failed logins from {ip} within {secs}s (limit {})",
                    self.count, self.limit
                ),
            ),
            DetectionKind::BruteForce => (
                format!("authn_login_fail_max:{user},{}", self.limit),
                format!(
                    "{} failed logins for user {user} within {secs}s (limit {})",
                    self.count, self.limit
                ),
            ),
            DetectionKind::CredentialStuffing => (
                format!("malicious_credential_stuffing:{ip},{}", self.count),
                format!(
                    "failed logins for {} distinct users from {ip} within {secs}s (limit {})",
                    self.count, self.limit
                ),
            ),
            DetectionKind::ClientSpike => (
                format!("malicious_traffic_spike:{ip},{}", self.count),
                format!(
                    "{} requests from {ip} within {secs}s, far above its recent rate",
                    self.count
                ),
            ),
            DetectionKind::ServiceSpike => (
                format!("sys_traffic_spike:{}", self.count),
                format!(
                    "{} requests within {secs}s, far above the service's recent rate",
                    self.count
                ),
            ),
            DetectionKind::NotFoundScan => (
                format!("malicious_excess_404:{ip}"),
                format!(
                    "{} not-found responses to {ip} within {secs}s (limit {})",
                    self.count, self.limit
                ),
            ),
            DetectionKind::DeniedScan => (
                format!("malicious_excess_denied:{ip}"),
                format!(
                    "{} denied (401/403) responses to {ip} within {secs}s (limit {})",
                    self.count, self.limit
                ),
            ),
            DetectionKind::Saturated(detector) => (
                format!("sys_detector_saturated:{detector}"),
                format!(
                    "the {detector} detector saw more distinct keys within {secs}s than its counters tell apart at \
                     the limit {}: its per-key detections pause until the window closes (a distributed flood, or \
                     raise Security::memory_cap)",
                    self.limit
                ),
            ),
        };
        let mut e = SecurityEvent::new(name, Level::Critical).description(description);
        if let Some(u) = &self.user {
            e = e.user(u);
        }
        e
    }
}

/// The smallest sketch width; below it the counts are mostly collisions.
const MIN_WIDTH: usize = 64;

/// The detectors and their sketches.
#[derive(Debug)]
pub(crate) struct Detectors {
    key: HashKey,
    brute: Option<(BruteForce, [Sketch; 4])>,
    spike: Option<(TrafficSpike, Sketch, Sketch)>,
    scan: Option<(Scanning, Sketch, Sketch)>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Detectors {
    /// Detectors whose sketches together hold at most `cap` bytes: the width is
    /// the largest power of two that fits.
    pub(crate) fn new(
        brute: BruteForce,
        spike: TrafficSpike,
        scan: Scanning,
        cap: usize,
    ) -> Result<Detectors, ConfigError> {
        for (name, w) in [
            ("brute_force", brute.window),
            ("traffic_spike", spike.window),
            ("scanning", scan.window),
        ] {
            if w < Duration::from_millis(1) {
                return Err(ConfigError::setting(
                    name,
                    &format!("{w:?}"),
                    "a window of at least 1 ms",
                ));
            }
        }
        if spike.enabled && !(spike.factor.is_finite() && spike.factor >= 1.0) {
            return Err(ConfigError::setting(
                "traffic_spike",
                &spike.factor.to_string(),
                "a factor of 1 or more",
            ));
        }
        let per_width = |w: usize| {
            let mut n = 0;
            if brute.enabled {
                n += 4 * Sketch::bytes_for(w, DEPTH, false);
            }
            if spike.enabled {
                n += Sketch::bytes_for(w, DEPTH, true) + Sketch::bytes_for(1, 1, true);
            }
            if scan.enabled {
                n += 2 * Sketch::bytes_for(w, DEPTH, false);
            }
            n
        };
        if per_width(MIN_WIDTH) > cap {
            return Err(ConfigError::setting(
                "memory_cap",
                &cap.to_string(),
                format!("at least {} bytes for the detectors that are on", per_width(MIN_WIDTH)),
            ));
        }
        let mut width = MIN_WIDTH;
        while per_width(width * 2) <= cap {
            width *= 2;
        }
        let sketch = |window: Duration| Sketch::new(width, DEPTH, millis(window), None);
        Ok(Detectors {
            key: HashKey::random(),
            brute: brute.enabled.then(|| {
                let w = brute.window;
                (brute.clone(), [sketch(w), sketch(w), sketch(w), sketch(w)])
            }),
            spike: spike.enabled.then(|| {
                let w = millis(spike.window);
                let n = Some(spike.baseline_windows);
                (spike.clone(), Sketch::new(width, DEPTH, w, n), Sketch::new(1, 1, w, n))
            }),
            scan: scan
                .enabled
                .then(|| (scan.clone(), sketch(scan.window), sketch(scan.window))),
        })
    }

    /// Bytes the sketches hold (all allocated up front).
    pub(crate) fn bytes(&self) -> usize {
        let mut n = 0;
        if let Some((_, s)) = &self.brute {
            n += s.iter().map(Sketch::bytes).sum::<usize>();
        }
        if let Some((_, c, s)) = &self.spike {
            n += c.bytes() + s.bytes();
        }
        if let Some((_, a, b)) = &self.scan {
            n += a.bytes() + b.bytes();
        }
        n
    }

    /// One finished request: the spike and scanning detectors.
    pub(crate) fn request(&self, ip: Option<IpAddr>, status: Option<u16>, now_ms: u64, out: &mut dyn FnMut(Detection)) {
        let h = ip.map(|ip| self.key.ip(ip));
        if let Some((cfg, clients, service)) = &self.spike {
            let n = service.add_tumbling(0);
            if spiking(cfg, cfg.service_floor, n, service.baseline(0)) && service.flag(0) {
                out(Detection {
                    kind: DetectionKind::ServiceSpike,
                    ip: None,
                    user: None,
                    count: n,
                    limit: cfg.service_floor,
                    window: cfg.window,
                });
            }
            if let Some(h) = h {
                let n = clients.add_tumbling(h);
                match verdict(clients, h, spiking(cfg, cfg.client_floor, n, clients.baseline(h))) {
                    Verdict::Key => out(Detection {
                        kind: DetectionKind::ClientSpike,
                        ip,
                        user: None,
                        count: n,
                        limit: cfg.client_floor,
                        window: cfg.window,
                    }),
                    Verdict::Saturated => out(saturated("traffic_spike", cfg.client_floor, cfg.window)),
                    Verdict::Nothing => {}
                }
            }
        }
        if let (Some((cfg, not_found, denied)), Some(h), Some(status)) = (&self.scan, h, status) {
            let (sketch, limit, kind) = match status {
                404 => (not_found, cfg.not_found, DetectionKind::NotFoundScan),
                401 | 403 => (denied, cfg.denied, DetectionKind::DeniedScan),
                _ => return,
            };
            let n = sketch.add(h, now_ms).sliding;
            match verdict(sketch, h, n >= limit) {
                Verdict::Key => out(Detection {
                    kind,
                    ip,
                    user: None,
                    count: n,
                    limit,
                    window: cfg.window,
                }),
                Verdict::Saturated => out(saturated("scanning", limit, cfg.window)),
                Verdict::Nothing => {}
            }
        }
    }

    /// One failed login: the brute-force detector.
    pub(crate) fn login_failed(
        &self,
        ip: Option<IpAddr>,
        user: Option<&str>,
        now_ms: u64,
        out: &mut dyn FnMut(Detection),
    ) {
        let Some((cfg, [by_ip, by_user, pairs, distinct])) = &self.brute else {
            return;
        };
        let hi = ip.map(|ip| self.key.ip(ip));
        let hu = user.map(|u| self.key.str(u));
        let ip_count = hi.map_or(0, |h| by_ip.add(h, now_ms).sliding);
        let user_count = hu.map_or(0, |h| by_user.add(h, now_ms).sliding);
        // Both verdicts first: one detection when both cross together.
        let by_ip_v = hi.map_or(Verdict::Nothing, |h| verdict(by_ip, h, ip_count >= cfg.per_address));
        let by_user_v = hu.map_or(Verdict::Nothing, |h| verdict(by_user, h, user_count >= cfg.per_user));
        if by_ip_v == Verdict::Key || by_user_v == Verdict::Key {
            let (count, limit) = if by_ip_v == Verdict::Key {
                (ip_count, cfg.per_address)
            } else {
                (user_count, cfg.per_user)
            };
            out(Detection {
                kind: DetectionKind::BruteForce,
                ip: if by_ip_v == Verdict::Key { ip } else { None },
                user: user.map(str::to_owned),
                count,
                limit,
                window: cfg.window,
            });
        }
        if by_ip_v == Verdict::Saturated {
            out(saturated("brute_force", cfg.per_address, cfg.window));
        }
        if by_user_v == Verdict::Saturated {
            out(saturated("brute_force_user", cfg.per_user, cfg.window));
        }
        // Credential stuffing: a user not yet seen failing from this address
        // in this window adds one to the address's distinct users.
        if let (Some(hi), Some(hu)) = (hi, hu) {
            if pairs.add(self.key.pair(hi, hu), now_ms).current == 1 {
                let n = distinct.add(hi, now_ms).sliding;
                match verdict(distinct, hi, n >= cfg.distinct_users) {
                    Verdict::Key => out(Detection {
                        kind: DetectionKind::CredentialStuffing,
                        ip,
                        user: None,
                        count: n,
                        limit: cfg.distinct_users,
                        window: cfg.window,
                    }),
                    Verdict::Saturated => out(saturated("credential_stuffing", cfg.distinct_users, cfg.window)),
                    Verdict::Nothing => {}
                }
            }
        }
    }

    /// Closes the windows that ended by `now_ms`.
    pub(crate) fn rotate(&self, now_ms: u64) {
        if let Some((_, s)) = &self.brute {
            s.iter().for_each(|s| s.rotate(now_ms));
        }
        if let Some((_, c, s)) = &self.spike {
            c.rotate(now_ms);
            s.rotate(now_ms);
        }
        if let Some((_, a, b)) = &self.scan {
            a.rotate(now_ms);
            b.rotate(now_ms);
        }
    }
}

/// What a count that may have crossed a limit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Nothing,
    /// The key crossed, for the first time in this window.
    Key,
    /// The sketch is too full to believe it; reported once a window.
    Saturated,
}

fn verdict(sketch: &Sketch, h: u64, crossed: bool) -> Verdict {
    if !crossed {
        Verdict::Nothing
    } else if sketch.saturated() {
        if sketch.report_saturation() {
            Verdict::Saturated
        } else {
            Verdict::Nothing
        }
    } else if sketch.flag(h) {
        Verdict::Key
    } else {
        Verdict::Nothing
    }
}

fn saturated(detector: &'static str, limit: u32, window: Duration) -> Detection {
    Detection {
        kind: DetectionKind::Saturated(detector),
        ip: None,
        user: None,
        count: 0,
        limit,
        window,
    }
}

/// A window's count `n` is a spike: over the floor and over `factor` times the
/// moving average.
fn spiking(cfg: &TrafficSpike, floor: u32, n: u32, baseline: f64) -> bool {
    n >= floor && f64::from(n) > cfg.factor * baseline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn detectors(brute: BruteForce, spike: TrafficSpike, scan: Scanning) -> Detectors {
        Detectors::new(brute, spike, scan, 1 << 20).unwrap()
    }

    fn collect(f: impl FnOnce(&mut dyn FnMut(Detection))) -> Vec<Detection> {
        let mut v = Vec::new();
        f(&mut |d| v.push(d));
        v
    }

    #[test]
    fn ten_failures_from_one_address_raise_one_brute_force_detection() {
        let d = detectors(BruteForce::default(), TrafficSpike::off(), Scanning::off());
        let mut got = Vec::new();
        for i in 0..15 {
            d.login_failed(ip("198.51.100.1"), Some("alice"), i * 1000, &mut |x| got.push(x));
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].kind, DetectionKind::BruteForce);
        assert_eq!((got[0].count, got[0].ip), (10, ip("198.51.100.1")));
        assert_eq!(got[0].event().name(), "malicious_brute_force:198.51.100.1,alice");
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_add_up() {
        let d = detectors(
            BruteForce::default().per_user(1000),
            TrafficSpike::off(),
            Scanning::off(),
        );
        // One failure every 40 s for an hour: at most 8 in any 5 minutes...
        let got = collect(|out| {
            for i in 0..90u64 {
                d.rotate(i * 40_000);
                d.login_failed(ip("198.51.100.1"), Some("alice"), i * 40_000, &mut *out);
            }
        });
        assert!(got.is_empty(), "{got:?}");
        // ...but 10 within one window, straddling a boundary, are seen.
        let got = collect(|out| {
            for i in 0..10u64 {
                let t = 4_490_000 + i * 2_000;
                d.rotate(t);
                d.login_failed(ip("198.51.100.2"), Some("bob"), t, &mut *out);
            }
        });
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn failures_for_one_user_from_many_addresses_raise_a_per_user_detection() {
        let d = detectors(BruteForce::default(), TrafficSpike::off(), Scanning::off());
        let got = collect(|out| {
            for i in 0..10 {
                d.login_failed(ip(&format!("203.0.113.{i}")), Some("carol"), 0, &mut *out);
            }
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].event().name(), "authn_login_fail_max:carol,10");
    }

    #[test]
    fn many_users_failing_from_one_address_is_credential_stuffing() {
        let d = detectors(BruteForce::default(), TrafficSpike::off(), Scanning::off());
        let got = collect(|out| {
            for i in 0..5 {
                // The same user twice counts once.
                d.login_failed(ip("192.0.2.50"), Some(&format!("user{i}")), 0, &mut *out);
                d.login_failed(ip("192.0.2.50"), Some(&format!("user{i}")), 0, &mut *out);
            }
        });
        // The fifth user (the ninth failure), then the tenth failure.
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].kind, got[0].count), (DetectionKind::CredentialStuffing, 5));
        assert_eq!((got[1].kind, got[1].count), (DetectionKind::BruteForce, 10));
    }

    #[test]
    fn a_burst_far_above_a_clients_baseline_is_a_spike_and_steady_traffic_is_not() {
        let spike = TrafficSpike::default()
            .client_floor(100)
            .service_floor(u32::MAX)
            .factor(5.0);
        let d = detectors(BruteForce::off(), spike, Scanning::off());
        let steady = ip("192.0.2.1");
        let mut got = Vec::new();
        // 60 windows of 10 s at 80 requests each: below the floor, no spike,
        // and a baseline of 80.
        for w in 0..60u64 {
            for i in 0..80 {
                d.request(steady, Some(200), w * 10_000 + i, &mut |x| got.push(x));
            }
            d.rotate((w + 1) * 10_000);
        }
        // 300 in one window is above the floor but under 5 times 80.
        for i in 0..300 {
            d.request(steady, Some(200), 600_000 + i, &mut |x| got.push(x));
        }
        assert!(got.is_empty(), "{got:?}");
        d.rotate(610_000);
        // A new client bursting 150 in a window: above the floor, baseline 0.
        for i in 0..150 {
            d.request(ip("192.0.2.2"), Some(200), 610_000 + i, &mut |x| got.push(x));
        }
        // The steady client at 10 times its rate.
        for i in 0..900 {
            d.request(steady, Some(200), 610_000 + i, &mut |x| got.push(x));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].kind, got[0].ip, got[0].count),
            (DetectionKind::ClientSpike, ip("192.0.2.2"), 100)
        );
        assert_eq!(got[1].ip, steady);
        assert!(got[1].count > 5 * 80, "{:?}", got[1]);
    }

    #[test]
    fn a_service_wide_burst_is_a_spike() {
        let spike = TrafficSpike::default()
            .client_floor(u32::MAX)
            .service_floor(500)
            .factor(4.0);
        let d = detectors(BruteForce::off(), spike, Scanning::off());
        let mut got = Vec::new();
        for w in 0..40u64 {
            for i in 0..200u32 {
                d.request(
                    ip(&format!("10.0.{}.{}", i / 256, i % 256)),
                    Some(200),
                    w * 10_000,
                    &mut |x| got.push(x),
                );
            }
            d.rotate((w + 1) * 10_000);
        }
        assert!(got.is_empty());
        for _ in 0..1000 {
            d.request(None, Some(200), 400_000, &mut |x| got.push(x));
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, DetectionKind::ServiceSpike);
        // Crossed at 4 times a baseline that approaches 200 from below.
        assert!((500..=801).contains(&got[0].count), "{:?}", got[0]);
    }

    #[test]
    fn many_not_found_or_denied_responses_to_one_address_are_scanning() {
        let d = detectors(
            BruteForce::off(),
            TrafficSpike::off(),
            Scanning::default().not_found(20).denied(5),
        );
        let got = collect(|out| {
            for _ in 0..19 {
                d.request(ip("192.0.2.9"), Some(404), 0, &mut *out);
                d.request(ip("192.0.2.9"), Some(200), 0, &mut *out);
            }
            d.request(ip("192.0.2.9"), Some(404), 0, &mut *out);
            for s in [401, 403, 401, 403, 401, 401] {
                d.request(ip("192.0.2.10"), Some(s), 0, &mut *out);
            }
        });
        let kinds: Vec<_> = got.iter().map(|d| (d.kind, d.count)).collect();
        assert_eq!(
            kinds,
            [(DetectionKind::NotFoundScan, 20), (DetectionKind::DeniedScan, 5)]
        );
        assert_eq!(got[0].event().name(), "malicious_excess_404:192.0.2.9");
    }

    #[test]
    fn a_flood_of_distinct_addresses_saturates_once_per_window_and_names_no_address() {
        let d = Detectors::new(BruteForce::default(), TrafficSpike::off(), Scanning::off(), 64 << 10).unwrap();
        let got = collect(|out| {
            for i in 0..200_000u32 {
                let ip = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i)));
                d.login_failed(ip, Some("admin"), 0, &mut *out);
            }
        });
        let kinds: Vec<_> = got.iter().map(|d| d.kind).collect();
        // "admin" is attacked from everywhere: one per-user detection; the
        // per-address counters fill up: one saturation, no address named.
        assert_eq!(
            kinds,
            [DetectionKind::BruteForce, DetectionKind::Saturated("brute_force")],
            "{got:?}"
        );
        assert_eq!(got[0].ip, None);
        assert_eq!(got[1].event().name(), "sys_detector_saturated:brute_force");
        d.rotate(300_000);
        d.rotate(600_000);
        // A fresh window tells one address apart again.
        let got = collect(|out| {
            for _ in 0..10 {
                d.login_failed(ip("192.0.2.66"), Some("root"), 600_000, &mut *out);
            }
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip, ip("192.0.2.66"));
    }

    #[test]
    fn the_memory_cap_sets_the_width_and_a_tiny_cap_is_an_error() {
        let d = Detectors::new(
            BruteForce::default(),
            TrafficSpike::default(),
            Scanning::default(),
            1 << 20,
        )
        .unwrap();
        assert!(d.bytes() <= 1 << 20 && d.bytes() > 1 << 19, "{}", d.bytes());
        let e = Detectors::new(
            BruteForce::default(),
            TrafficSpike::default(),
            Scanning::default(),
            1000,
        )
        .unwrap_err();
        assert!(e.to_string().contains("memory_cap"), "{e}");
    }
}
