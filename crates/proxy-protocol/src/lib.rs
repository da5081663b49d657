//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell an
//! upstream the client's real address. Version 2 also carries the SNI the
//! client asked for, as a `PP2_TYPE_AUTHORITY` TLV.
//!
//! Modules:
//! - this one: the writer ([`v1`], [`v2`]), for the headers sniroute sends
//!   upstream;
//! - [`read`]: the reader, for the headers a front load balancer sends
//!   sniroute (pure and incremental: [`read::parse`]).

use std::net::SocketAddr;

pub mod read;

/// The version-2 signature.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// A version-1 (text) header for a TCP connection from `client` to `local`.
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = (canonical(client), canonical(local));
    let family = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        // Mixed families cannot be described in v1.
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

/// A version-2 (binary) header, with the server name as an AUTHORITY TLV.
pub fn v2(client: SocketAddr, local: SocketAddr, server_name: Option<&str>) -> Vec<u8> {
    let (client, local) = (canonical(client), canonical(local));
    let mut addrs = Vec::with_capacity(36);
    let family = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            addrs.extend_from_slice(&c.ip().octets());
            addrs.extend_from_slice(&l.ip().octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&l.port().to_be_bytes());
            0x11 // AF_INET, STREAM
        }
        (SocketAddr::V6(c), SocketAddr::V6(l)) => {
            addrs.extend_from_slice(&c.ip().octets());
            addrs.extend_from_slice(&l.ip().octets());
            addrs.extend_from_slice(&c.port().to_be_bytes());
            addrs.extend_from_slice(&l.port().to_be_bytes());
            0x21 // AF_INET6, STREAM
        }
        _ => 0x00, // AF_UNSPEC
    };
    if let Some(name) = server_name {
        // A validated server name is at most 253 bytes: fits a u16.
        addrs.push(PP2_TYPE_AUTHORITY);
        addrs.extend_from_slice(&(name.len() as u16).to_be_bytes());
        addrs.extend_from_slice(name.as_bytes());
    }
    let mut out = Vec::with_capacity(16 + addrs.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    out.push(family);
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4
/// clients) become plain IPv4, so both ends of a header share a family.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_tcp6() {
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "198.51.100.2:6443".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6443\r\n");
        let c: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let l: SocketAddr = "[2001:db8::2]:6443".parse().unwrap();
        assert_eq!(
            v1(c, l),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 6443\r\n"
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        assert_eq!(
            v1(mapped, "198.51.100.2:6443".parse().unwrap()),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6443\r\n"
        );
    }

    #[test]
    fn v2_carries_addresses_and_authority() {
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "198.51.100.2:6443".parse().unwrap();
        let h = v2(c, l, Some("api.example.com"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[192, 0, 2, 1]);
        assert_eq!(&h[24..26], &5000u16.to_be_bytes());
        assert_eq!(h[28], PP2_TYPE_AUTHORITY);
        assert_eq!(&h[31..], b"api.example.com");
    }

    // The fuzz target `proxy_header` (fuzz/) checks these and every other
    // address and name against an independent reader, the `ppp` crate.

    #[test]
    fn mixed_families_are_unknown_and_unspec() {
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "[2001:db8::2]:6443".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY UNKNOWN\r\n");
        assert_eq!(v1(l, c), b"PROXY UNKNOWN\r\n");
        // AF_UNSPEC: no address block, the AUTHORITY TLV right after the
        // fixed header.
        let h = v2(c, l, Some("a.example"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x00, 0, 12, PP2_TYPE_AUTHORITY, 0, 9]);
        want.extend_from_slice(b"a.example");
        assert_eq!(h, want);
        assert_eq!(v2(c, l, None)[12..], [0x21, 0x00, 0, 0]);
    }

    #[test]
    fn v2_tcp6_and_mapped_addresses() {
        let c: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let l: SocketAddr = "[2001:db8::2]:6443".parse().unwrap();
        let h = v2(c, l, None);
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            h[16..32],
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(h[48..52], [0x13, 0x88, 0x19, 0x2b]);
        // Both ends IPv4-mapped: an AF_INET header.
        let c: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        let l: SocketAddr = "[::ffff:198.51.100.2]:6443".parse().unwrap();
        let h = v2(c, l, None);
        assert_eq!(h[13], 0x11);
        assert_eq!(
            h[16..28],
            [192, 0, 2, 1, 198, 51, 100, 2, 0x13, 0x88, 0x19, 0x2b]
        );
        // One end mapped, the other IPv4: still AF_INET.
        assert_eq!(v2(c, "198.51.100.2:6443".parse().unwrap(), None), h);
    }

    #[test]
    fn the_longest_server_name_fits() {
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(name.len(), 253);
        let c: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let h = v2(c, c, Some(&name));
        assert_eq!(
            usize::from(u16::from_be_bytes([h[14], h[15]])),
            36 + 3 + 253
        );
        assert_eq!(h[52..55], [PP2_TYPE_AUTHORITY, 0, 253]);
        assert_eq!(&h[55..], name.as_bytes());
        // The longest v1 header is within the spec's 107 bytes.
        let c: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
            .parse()
            .unwrap();
        assert_eq!(v1(c, c).len(), 104);
    }
}
