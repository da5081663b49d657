//! Scalar values of the config: server name patterns, upstream and listen
//! addresses, CIDR networks, route names and DC/OS service names. Each
//! parser here checks one string and says what is wrong with it in words an
//! operator can act on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use clienthello::ServerName;

/// Why a config value is invalid: a message meant for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueError {
    message: String,
}

impl ValueError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ValueError {}

/// A configured server name: an exact host name, or a wildcard `*.suffix`
/// that matches any name ending in `.suffix` (at any depth, but not
/// `suffix` itself).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// Matches this name only.
    Exact(ServerName),
    /// `*.` followed by this suffix.
    Wildcard(ServerName),
}

impl NamePattern {
    /// Whether this is a wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard(_))
    }

    /// Whether `name` (already normalised) matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n.as_str() == name,
            Self::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "{n}"),
            Self::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

impl FromStr for NamePattern {
    type Err = ValueError;

    /// Validates a host name (RFC 6066 rules, see [`ServerName::parse`]) or
    /// `*.` followed by one, and normalises it (lower case, no trailing dot).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" || s == "*." {
            return Err(ValueError::new(
                "a bare `*` matches nothing: to catch every name, use `default_route`",
            ));
        }
        if let Some(suffix) = s.strip_prefix("*.") {
            return match ServerName::parse(suffix.as_bytes()) {
                Ok(n) => Ok(Self::Wildcard(n)),
                Err(e) => Err(name_error(s, &e.to_string(), true)),
            };
        }
        match ServerName::parse(s.as_bytes()) {
            Ok(n) => Ok(Self::Exact(n)),
            Err(e) => Err(name_error(s, &e.to_string(), false)),
        }
    }
}

fn name_error(written: &str, why: &str, wildcard: bool) -> ValueError {
    let mut message = format!("invalid server name `{}`: {why}", written.escape_debug());
    if written.contains('*') && !wildcard {
        message.push_str("; a wildcard must be a whole leftmost label, as in `*.example.com`");
    } else if written.contains('*') {
        message.push_str("; only the leftmost label may be `*`");
    }
    ValueError::new(message)
}

/// The host part of an upstream address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting.
    Name(ServerName),
}

impl fmt::Display for Host {
    /// The address or name as is (no brackets around IPv6; see
    /// [`UpstreamAddr`] for the `host:port` form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(n) => write!(f, "{n}"),
        }
    }
}

/// An upstream to connect to: `host:port`, where host is an IPv4 address,
/// a bracketed IPv6 address or a DNS name (validated, not resolved).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamAddr {
    /// Where to connect.
    pub host: Host,
    /// TCP port, never 0.
    pub port: u16,
}

impl UpstreamAddr {
    /// The socket address when the host is an IP address; `None` for names,
    /// which need resolving first.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for UpstreamAddr {
    /// `host:port`, with IPv6 addresses in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

impl FromStr for UpstreamAddr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORM: &str =
            "write `host:port`, e.g. `10.0.4.11:6443`, `[2001:db8::11]:6443` or `master.mesos:6443`";
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(ValueError::new(format!(
                    "upstream `{s}` has port 0, which cannot be connected to"
                )));
            }
            return Ok(Self {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(ValueError::new(format!(
                "upstream `{s}` is an IPv6 address without brackets and port: {FORM}"
            )));
        }
        if s.parse::<Ipv4Addr>().is_ok() || (s.starts_with('[') && s.ends_with(']')) {
            return Err(ValueError::new(format!(
                "upstream `{s}` has no port: {FORM}"
            )));
        }
        if s.starts_with('[') {
            return Err(ValueError::new(format!(
                "upstream `{}` is not a valid bracketed IPv6 address and port: {FORM}",
                s.escape_debug()
            )));
        }
        if s.matches(':').count() > 1 {
            return Err(ValueError::new(format!(
                "upstream `{}` looks like an IPv6 address without brackets: {FORM}",
                s.escape_debug()
            )));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(ValueError::new(format!(
                "upstream `{}` has no port: {FORM}",
                s.escape_debug()
            )));
        };
        let port = match port.parse::<u16>() {
            Ok(0) => {
                return Err(ValueError::new(format!(
                    "upstream `{s}` has port 0, which cannot be connected to"
                )))
            }
            Ok(p) => p,
            Err(_) => {
                return Err(ValueError::new(format!(
                    "upstream `{}` has an invalid port `{}` (1 to 65535): {FORM}",
                    s.escape_debug(),
                    port.escape_debug()
                )))
            }
        };
        match ServerName::parse(host.as_bytes()) {
            Ok(name) => Ok(Self {
                host: Host::Name(name),
                port,
            }),
            Err(e) => Err(ValueError::new(format!(
                "upstream `{}` has an invalid host name: {e}",
                s.escape_debug()
            ))),
        }
    }
}

/// Parses a listen address: an IP address and a port (`0.0.0.0:6443`,
/// `[::]:6443`). Port 0 asks the kernel for a free port (tests use it).
pub(crate) fn parse_listen_addr(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse::<SocketAddr>().map_err(|_| {
        let hint = if !s.contains(['[', ']']) && s.matches(':').count() > 1 {
            " (IPv6 addresses need brackets, as in `[::]:6443`)"
        } else if s.parse::<IpAddr>().is_ok() {
            " (the port is missing)"
        } else if s.starts_with(':') {
            " (the IP address is missing: `0.0.0.0` for all IPv4 addresses, `[::]` for IPv6)"
        } else {
            ""
        };
        ValueError::new(format!(
            "invalid listen address `{}`{hint}: expected `IP:PORT`, e.g. `0.0.0.0:6443` or `[::]:6443` (host names are not allowed here)",
            s.escape_debug()
        ))
    })
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare
/// address is a network of one.
///
/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) are stored as their
/// IPv4 equivalent, and [`IpNet::contains`] treats IPv4-mapped IPv6 client
/// addresses (seen on dual-stack `[::]` listeners) as IPv4, so either form
/// matches either kind of client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// A network from its address and prefix length.
    ///
    /// # Errors
    /// When the prefix is longer than the address or the address has bits
    /// set beyond the prefix (a likely typo; the message suggests the
    /// network address).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, ValueError> {
        let (addr, prefix_len) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix_len >= 96 => (IpAddr::V4(v4), prefix_len - 96),
                _ => (addr, prefix_len),
            },
            IpAddr::V4(_) => (addr, prefix_len),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(ValueError::new(format!(
                "prefix length /{prefix_len} is longer than the {max} bits of {addr}"
            )));
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(ValueError::new(format!(
                "{addr}/{prefix_len} has host bits set: did you mean {network}/{prefix_len}?"
            )));
        }
        Ok(Self { addr, prefix_len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`) are compared as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

/// `addr` with every bit past `prefix_len` cleared.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for IpNet {
    /// `address/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form =
            "expected a network such as `10.0.0.0/8` or `2001:db8::/32`, or a single address";
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            ValueError::new(format!(
                "invalid network `{}`: `{}` is not an IP address; {form}",
                s.escape_debug(),
                addr.escape_debug()
            ))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(ValueError::new(format!(
                        "invalid network `{}`: the prefix length must be a number from 0 to {max}",
                        s.escape_debug()
                    )))
                }
            },
        };
        IpNet::new(addr, prefix_len)
            .map_err(|e| ValueError::new(format!("invalid network `{s}`: {e}")))
    }
}

/// Longest route name: route names are metric label values, kept short.
pub(crate) const MAX_ROUTE_NAME_LEN: usize = 63;

/// Checks a route name: 1 to 63 of `a-z`, `0-9`, `_`, `-`.
pub(crate) fn check_route_name(s: &str) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::new("route name is empty"));
    }
    if s.len() > MAX_ROUTE_NAME_LEN {
        return Err(ValueError::new(format!(
            "route name is {} characters long, the limit is {MAX_ROUTE_NAME_LEN} (it is used as a metric label)",
            s.chars().count()
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        let hint = if c.is_ascii_uppercase() {
            format!(" (write `{}`)", s.to_ascii_lowercase())
        } else {
            String::new()
        };
        return Err(ValueError::new(format!(
            "route name `{}` contains {c:?}: only a-z, 0-9, `_` and `-` are allowed{hint}",
            s.escape_debug()
        )));
    }
    Ok(())
}

/// The DC/OS L4LB domain under which each service's VIPs are named.
pub const DCOS_VIP_DOMAIN: &str = "l4lb.thisdcos.directory";
/// The port of the Kubernetes API server VIP of a DC/OS Kubernetes service.
pub const DCOS_APISERVER_PORT: u16 = 6443;

/// The API server VIP name of the DC/OS Kubernetes service `service`
/// (`dev/kubernetes01` → `apiserver.devkubernetes01.l4lb.thisdcos.directory`):
/// DC/OS drops the slashes of the service path when naming its VIPs.
///
/// # Errors
/// A path that is empty without its slashes, holds other characters than
/// letters, digits, `-`, `_` and `/`, or makes an invalid DNS name.
pub fn dcos_vip(service: &str) -> Result<ServerName, ValueError> {
    let form = "expected a DC/OS service path such as `dev/kubernetes01`";
    let label: String = service.chars().filter(|&c| c != '/').collect();
    if label.is_empty() {
        return Err(ValueError::new(format!(
            "dcos_service `{}` is empty once its slashes are removed: {form}",
            service.escape_debug()
        )));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(ValueError::new(format!(
            "dcos_service `{}` contains {c:?}: {form} (letters, digits, `-`, `_` and `/`)",
            service.escape_debug()
        )));
    }
    let vip = format!("apiserver.{label}.{DCOS_VIP_DOMAIN}");
    ServerName::parse(vip.as_bytes()).map_err(|e| {
        ValueError::new(format!(
            "dcos_service `{}` gives the invalid VIP name `{vip}`: {e}",
            service.escape_debug()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn name_patterns() {
        assert_eq!(
            "*.Staging.Example.COM."
                .parse::<NamePattern>()
                .unwrap()
                .to_string(),
            "*.staging.example.com"
        );
        assert_eq!(
            "API.example.com".parse::<NamePattern>().unwrap(),
            NamePattern::Exact("api.example.com".parse().unwrap())
        );
        for bad in [
            "*",
            "*.",
            "bad_*.x",
            "a.*.com",
            "**.x",
            "*.a..b",
            "10.0.0.1",
            "*.10.0.0.1",
            "",
        ] {
            assert!(bad.parse::<NamePattern>().is_err(), "{bad:?}");
        }
        let msg = "bad_*.x".parse::<NamePattern>().unwrap_err().to_string();
        assert!(msg.contains("whole leftmost label"), "{msg}");
        let w: NamePattern = "*.example.com".parse().unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
        assert!(!w.matches(".example.com"));
    }

    #[test]
    fn upstreams() {
        let ok = [
            ("10.0.4.11:6443", "10.0.4.11:6443"),
            ("[2001:DB8::11]:6443", "[2001:db8::11]:6443"),
            ("Master.Mesos:6443", "master.mesos:6443"),
            (
                "apiserver.x.l4lb.thisdcos.directory.:443",
                "apiserver.x.l4lb.thisdcos.directory:443",
            ),
        ];
        for (text, shown) in ok {
            assert_eq!(text.parse::<UpstreamAddr>().unwrap().to_string(), shown);
        }
        let bad = [
            ("master.mesos", "no port"),
            ("10.0.4.11", "no port"),
            ("[::1]", "no port"),
            ("2001:db8::1:6443", "without brackets"),
            ("2001:db8::1", "without brackets"),
            ("master.mesos:0", "port 0"),
            ("10.0.0.1:0", "port 0"),
            ("master.mesos:99999", "invalid port"),
            ("master.mesos:", "invalid port"),
            ("bad_host!:6443", "invalid host name"),
            ("a..b:6443", "invalid host name"),
            (":6443", "invalid host name"),
            ("[::1:6443", "bracketed"),
        ];
        for (text, fragment) in bad {
            let msg = text.parse::<UpstreamAddr>().unwrap_err().to_string();
            assert!(msg.contains(fragment), "{text}: {msg}");
        }
    }

    #[test]
    fn networks() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!(!all.contains(ip("::2")));
        let all6: IpNet = "::/0".parse().unwrap();
        assert!(all6.contains(ip("::2")));
        let host: IpNet = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.9.9.9")));
        for (bad, fragment) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "longer than the 32 bits"),
            ("2001:db8::/129", "longer than the 128 bits"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/abc", "prefix length"),
            ("10.0.0/8", "not an IP address"),
            ("example.com/8", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let msg = bad.parse::<IpNet>().unwrap_err().to_string();
            assert!(msg.contains(fragment), "{bad}: {msg}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("[::]:6443").unwrap(),
            "[::]:6443".parse::<SocketAddr>().unwrap()
        );
        for (bad, fragment) in [
            ("0.0.0.0", "port is missing"),
            (":6443", "IP address is missing"),
            ("::1:6443", "brackets"),
            ("localhost:6443", "host names are not allowed"),
        ] {
            let msg = parse_listen_addr(bad).unwrap_err().to_string();
            assert!(msg.contains(fragment), "{bad}: {msg}");
        }
    }

    #[test]
    fn route_names() {
        assert!(check_route_name("dev-kubernetes01_a").is_ok());
        assert!(check_route_name(&"a".repeat(63)).is_ok());
        assert!(check_route_name(&"a".repeat(64)).is_err());
        assert!(check_route_name("").is_err());
        let msg = check_route_name("Dev").unwrap_err().to_string();
        assert!(msg.contains("write `dev`"), "{msg}");
        assert!(check_route_name("a.b").is_err());
        assert!(check_route_name("é").is_err());
    }

    #[test]
    fn dcos_vips() {
        assert_eq!(
            dcos_vip("dev/kubernetes01").unwrap().as_str(),
            "apiserver.devkubernetes01.l4lb.thisdcos.directory"
        );
        assert_eq!(
            dcos_vip("/Prod/k8s/").unwrap().as_str(),
            "apiserver.prodk8s.l4lb.thisdcos.directory"
        );
        assert!(dcos_vip("/").is_err());
        assert!(dcos_vip("dev.kubernetes").is_err());
        assert!(dcos_vip("dev kubernetes").is_err());
        assert!(dcos_vip(&"a".repeat(64)).is_err());
    }
}
