//! The client's address: the connection's peer, or, when the peer is a trusted
//! proxy, the address the proxies forwarded in the one header the operator
//! named ([`ForwardedHeader`]: `X-Forwarded-For` by default, or `Forwarded`, or
//! `X-Real-IP`).
//!
//! Only that header is read. A proxy that appends to `X-Forwarded-For` passes
//! every other request header through untouched, so a `Forwarded` or
//! `X-Real-IP` the client wrote itself reaches us as it was sent: any
//! forwarding header other than the configured one is a claim, kept for the
//! security events (marked untrusted), never believed.
//!
//! The forwarded list is read from the right, the hop nearest to us first: every
//! address that is itself a trusted proxy is skipped and the first one that is
//! not is the client. A client can put anything at the left of the list, so
//! nothing left of the first untrusted address is ever believed. A value that is
//! not an address stops the walk at the last proxy that was trusted.
//!
//! From a peer that is not a trusted proxy every forwarding header is a claim:
//! the peer is the client.
//!
//! The peer itself comes from the request's extensions: axum's
//! `ConnectInfo<SocketAddr>` (`into_make_service_with_connect_info`), else
//! [`PeerAddr`], which a hyper server inserts per connection.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};

use crate::config::ConfigError;
use crate::trace::propagation::{FORWARDING_FORWARDED, FORWARDING_REAL_IP, FORWARDING_XFF};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The address of the connection's peer, as a request extension: what a server
/// without axum's `ConnectInfo` gives the layer so spans, access lines and the
/// security detectors have the client's address (`client.address`).
///
/// axum apps need nothing: serving with
/// `into_make_service_with_connect_info::<SocketAddr>()` inserts `ConnectInfo`,
/// which the layer reads first. A hyper server knows the peer when it accepts the
/// connection and inserts it into each request before the layer sees it:
///
/// ```
/// # use std::net::SocketAddr;
/// # fn per_connection<S>(apm: &tower_apm::Apm, peer: SocketAddr, app: S) {
/// use tower::ServiceBuilder;
/// let svc = ServiceBuilder::new()
///     .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
///         req.extensions_mut().insert(tower_apm::PeerAddr(peer));
///         req
///     })
///     .layer(apm.layer())
///     .service(app);
/// # }
/// ```
///
/// Behind a trusted proxy the peer is the proxy; see
/// [`ApmBuilder::trusted_proxies`](crate::ApmBuilder::trusted_proxies) for how the
/// client's address is then read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr(addr)
    }
}

/// The header a trusted proxy writes the client's address into
/// ([`ApmBuilder::forwarded_header`](crate::ApmBuilder::forwarded_header)).
///
/// Name the one your proxy sets; the others are read as claims of the client
/// and never believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, appended to by each proxy: nginx's
    /// `$proxy_add_x_forwarded_for`, HAProxy's `option forwardfor`, most cloud
    /// load balancers. The default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters.
    Forwarded,
    /// `X-Real-IP`, set (not appended) by the proxy: nginx's
    /// `proxy_set_header X-Real-IP $remote_addr`.
    XRealIp,
}

impl ForwardedHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
            ForwardedHeader::XRealIp => "x-real-ip",
        }
    }

    fn header(self) -> HeaderName {
        match self {
            ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => http::header::FORWARDED,
            ForwardedHeader::XRealIp => X_REAL_IP,
        }
    }

    /// Its bit in [`ForwardingHeaders`].
    fn bit(self) -> u8 {
        match self {
            ForwardedHeader::XForwardedFor => FORWARDING_XFF,
            ForwardedHeader::Forwarded => FORWARDING_FORWARDED,
            ForwardedHeader::XRealIp => FORWARDING_REAL_IP,
        }
    }
}

/// Which forwarding headers a request carried, as bits (found in the one pass
/// over the headers that reads the others).
pub(crate) type ForwardingHeaders = u8;
const ALL_HEADERS: [ForwardedHeader; 3] = [
    ForwardedHeader::XForwardedFor,
    ForwardedHeader::Forwarded,
    ForwardedHeader::XRealIp,
];

/// One trusted network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim().parse::<IpAddr>().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), u128::from(u32::from(ip)), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => masked(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn masked(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (net >> shift) == (ip >> shift)
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as a dual-stack socket
/// reports IPv4 peers) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedProxies {
    nets: Vec<Net>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Parses addresses and CIDR networks (`10.0.0.0/8`, `::1`, `fd00::/8`).
    pub(crate) fn parse<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Result<Self, ConfigError> {
        let mut nets = Vec::new();
        for item in items {
            let item = item.as_ref();
            let net = Net::parse(item).ok_or_else(|| {
                ConfigError::setting(
                    "trusted_proxies",
                    item,
                    "an IP address or a CIDR network, for example 10.0.0.0/8 or ::1",
                )
            })?;
            nets.push(net);
        }
        Ok(TrustedProxies {
            nets,
            header: ForwardedHeader::default(),
        })
    }

    /// Reads the client from `header` only.
    pub(crate) fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client behind `peer` when `peer` is a trusted proxy that forwarded
    /// one in the configured header; `None` means the peer itself is the client.
    #[cfg(test)]
    fn forwarded_client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.trusts(peer) {
            return None;
        }
        self.client_behind(headers)
    }

    /// The client a trusted peer forwarded in the configured header (the
    /// caller has checked the peer): walked from the last header line to the
    /// first and, in each, from the last hop to the first, the nearest hop
    /// first, with no allocation.
    pub(crate) fn client_behind(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = None;
        for value in headers.get_all(self.header.header()).iter().rev() {
            let Ok(v) = value.to_str() else { return client };
            for element in v.rsplit(',') {
                let hop = match self.header {
                    ForwardedHeader::Forwarded => forwarded_for(element),
                    ForwardedHeader::XForwardedFor | ForwardedHeader::XRealIp => parse_hop(element.trim()),
                };
                let Some(ip) = hop else { return client };
                client = Some(ip);
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }

    /// The forwarding header the security events record as an untrusted
    /// claim: the first one present (of `present`, as found by the header
    /// scan) that is not believed. The configured header is believed when
    /// the peer is a trusted proxy; every other one never is.
    pub(crate) fn claim<'h>(
        &self,
        peer_trusted: bool,
        present: ForwardingHeaders,
        headers: &'h HeaderMap,
    ) -> Option<(&'static str, &'h [u8])> {
        let header = ALL_HEADERS
            .into_iter()
            .find(|h| present & h.bit() != 0 && !(peer_trusted && *h == self.header && !self.nets.is_empty()))?;
        let value = headers.get(header.header())?;
        Some((header.name(), value.as_bytes()))
    }
}

/// The `for=` address of one `Forwarded` element (RFC 7239).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_hop(value.trim().trim_matches('"')))?
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`
/// or `[2001:db8::1]:4711`. Obfuscated identifiers and `unknown` are not.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| a.parse().ok()).map(canonical);
    }
    s.rsplit_once(':').and_then(|(a, _)| a.parse().ok()).map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_match_by_prefix_and_mapped_ipv4_counts_as_ipv4() {
        let t = TrustedProxies::parse(["10.0.0.0/8", "::1", "fd00::/8"]).unwrap();
        assert!(t.trusts(ip("10.200.3.4")));
        assert!(t.trusts(ip("::ffff:10.0.0.1")));
        assert!(!t.trusts(ip("11.0.0.1")));
        assert!(t.trusts(ip("::1")));
        assert!(t.trusts(ip("fd12::5")));
        assert!(!t.trusts(ip("fe80::1")));
        assert!(TrustedProxies::parse(["0.0.0.0/0"]).unwrap().trusts(ip("8.8.8.8")));
    }

    #[test]
    fn a_bad_network_is_a_config_error_naming_it() {
        let e = TrustedProxies::parse(["10.0.0.0/33"]).unwrap_err().to_string();
        assert!(e.contains("trusted_proxies") && e.contains("10.0.0.0/33"), "{e}");
        assert!(TrustedProxies::parse(["proxy.local"]).is_err());
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_ignored() {
        let t = TrustedProxies::parse(["10.0.0.1"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(t.forwarded_client(ip("203.0.113.9"), &h), None);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        // The client claims 6.6.6.6; the first proxy saw 198.51.100.7.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("198.51.100.7")));
        // Split over two header lines, read as one list.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("198.51.100.7")));
        // Every hop trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("10.1.1.1")));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, nonsense, 10.0.0.2")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("10.0.0.2")));
        // No header: the peer is the client.
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &HeaderMap::new()), None);
    }

    #[test]
    fn only_the_configured_header_is_read_and_the_others_are_claims() {
        // nginx appends the peer to X-Forwarded-For and passes a client's own
        // Forwarded and X-Real-IP through untouched.
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "7.7.7.7"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        let all = FORWARDING_XFF | FORWARDING_FORWARDED | FORWARDING_REAL_IP;
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("198.51.100.7")));
        assert_eq!(t.claim(true, all, &h), Some(("forwarded", &b"for=6.6.6.6"[..])));
        assert_eq!(
            t.claim(true, FORWARDING_XFF | FORWARDING_REAL_IP, &h),
            Some(("x-real-ip", &b"7.7.7.7"[..]))
        );
        assert_eq!(t.claim(true, FORWARDING_XFF, &h), None);
        // From an untrusted peer the configured header is a claim too.
        assert_eq!(
            t.claim(false, FORWARDING_XFF, &h),
            Some(("x-forwarded-for", &b"198.51.100.7"[..]))
        );
        // Without the configured header the peer is the client, whatever else came.
        let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-real-ip", "7.7.7.7")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), None);

        let real_ip = t.clone().with_header(ForwardedHeader::XRealIp);
        let h = headers(&[("x-real-ip", "198.51.100.9"), ("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(real_ip.forwarded_client(ip("10.0.0.1"), &h), Some(ip("198.51.100.9")));
        assert_eq!(
            real_ip.claim(true, FORWARDING_XFF | FORWARDING_REAL_IP, &h),
            Some(("x-forwarded-for", &b"6.6.6.6"[..]))
        );
    }

    #[test]
    fn forwarded_header_forms_parse_when_it_is_the_configured_one() {
        let t = TrustedProxies::parse(["10.0.0.0/8"])
            .unwrap()
            .with_header(ForwardedHeader::Forwarded);
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("2001:db8:cafe::17")));
        let h = headers(&[("forwarded", "for=198.51.100.3:80")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), Some(ip("198.51.100.3")));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.forwarded_client(ip("10.0.0.1"), &h), None);
    }
}
