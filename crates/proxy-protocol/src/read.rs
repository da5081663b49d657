//! The reader of PROXY protocol headers (v1 and v2) that a front load
//! balancer sends before the client's bytes.
//!
//! Pure and incremental, like the ClientHello reader: [`parse`] is given
//! the bytes that arrived so far and says whether they hold a whole header
//! ([`Progress::Complete`], with exactly how many bytes it took), need more
//! ([`Progress::NeedMore`]), or can never be one ([`Error`]). No I/O, no
//! allocation, no panics on any input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::V2_SIGNATURE;

/// The longest v1 header, `\r\n` included (the spec's bound).
pub const MAX_V1_BYTES: usize = 107;

/// The longest v2 header this reader takes, the 16-byte fixed part
/// included. The format allows 16 + 65535 bytes; load balancers send the
/// addresses and a few short TLVs.
pub const MAX_V2_BYTES: usize = 16 + 4096;

const V1_PREFIX: &[u8] = b"PROXY ";

/// What the bytes so far amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The start of a plausible header; at least `at_least` (never 0) more
    /// bytes are needed.
    NeedMore {
        /// A lower bound on the bytes still missing.
        at_least: usize,
    },
    /// A whole header: the first `consumed` bytes of the buffer. What
    /// follows is the client's own data (or, if it is another header, a
    /// stacked one the caller should refuse).
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        consumed: usize,
    },
}

/// `PROXY` (a relayed connection) or `LOCAL` (the balancer's own, e.g. a
/// health check: use the connection's real addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A relayed connection.
    Proxy,
    /// The sender's own connection (v2 only).
    Local,
}

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Whether the addresses describe a relayed client.
    pub command: Command,
    /// The client's address; `None` for `LOCAL`, v1 `UNKNOWN` and v2
    /// `AF_UNSPEC`, where the connection's own peer is the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// Why the bytes are not a header sniroute accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The bytes start neither like a v1 nor like a v2 header.
    NotProxy,
    /// A header that breaks the format, with what was wrong.
    Malformed(&'static str),
    /// A v2 address family sniroute cannot use (`AF_UNIX`, unknown).
    UnsupportedFamily,
    /// A v2 transport other than `STREAM` (`DGRAM`, unknown).
    UnsupportedTransport,
    /// Longer than [`MAX_V1_BYTES`] or [`MAX_V2_BYTES`].
    TooLong,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProxy => f.write_str("no PROXY protocol header"),
            Self::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
            Self::UnsupportedFamily => {
                f.write_str("PROXY protocol v2 header with an unsupported address family")
            }
            Self::UnsupportedTransport => {
                f.write_str("PROXY protocol v2 header with a transport other than TCP")
            }
            Self::TooLong => f.write_str("PROXY protocol header too long"),
        }
    }
}

impl std::error::Error for Error {}

/// Whether `buf` starts like a header (or is, so far, the start of one):
/// what to check, without parsing, in the bytes of a peer that may not
/// send one, or right after a header (a stacked one).
pub fn starts_like_header(buf: &[u8]) -> bool {
    let prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        n > 0 && buf[..n] == sig[..n]
    };
    prefix(V1_PREFIX) || prefix(&V2_SIGNATURE)
}

/// Reads one header from the start of `buf`.
///
/// # Errors
/// See [`Error`]. A header cut short is `NeedMore` until its bound
/// ([`MAX_V1_BYTES`] without `\r\n` is [`Error::TooLong`]).
pub fn parse(buf: &[u8]) -> Result<Progress, Error> {
    if buf.is_empty() {
        return Ok(Progress::NeedMore { at_least: 1 });
    }
    if buf.starts_with(&V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    if starts_like_header(buf) {
        let sig_len = if buf[0] == b'P' {
            V1_PREFIX.len()
        } else {
            V2_SIGNATURE.len()
        };
        return Ok(Progress::NeedMore {
            at_least: sig_len - buf.len(),
        });
    }
    Err(Error::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Progress, Error> {
    let window = &buf[..buf.len().min(MAX_V1_BYTES)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= MAX_V1_BYTES {
            return Err(Error::TooLong);
        }
        return Ok(Progress::NeedMore { at_least: 2 });
    };
    let Some(&lf) = window.get(cr + 1) else {
        if cr + 1 >= MAX_V1_BYTES {
            return Err(Error::TooLong);
        }
        return Ok(Progress::NeedMore { at_least: 1 });
    };
    if lf != b'\n' {
        return Err(Error::Malformed("v1: `\\r` not followed by `\\n`"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| Error::Malformed("v1: not ASCII"))?;
    let consumed = cr + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Progress::Complete {
            header: Header {
                command: Command::Proxy,
                source: None,
                destination: None,
            },
            consumed,
        });
    }
    let mut words = line.split(' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(Error::Malformed(
            "v1: not `PROXY TCP4|TCP6 SRC DST SPORT DPORT`",
        ));
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| bad_v1_addr())?),
            IpAddr::V4(dst.parse::<Ipv4Addr>().map_err(|_| bad_v1_addr())?),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| bad_v1_addr())?),
            IpAddr::V6(dst.parse::<Ipv6Addr>().map_err(|_| bad_v1_addr())?),
        ),
        _ => return Err(Error::Malformed("v1: protocol not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Progress::Complete {
        header: Header {
            command: Command::Proxy,
            source: Some(SocketAddr::new(src, v1_port(sport)?)),
            destination: Some(SocketAddr::new(dst, v1_port(dport)?)),
        },
        consumed,
    })
}

fn bad_v1_addr() -> Error {
    Error::Malformed("v1: an address that is not of the named family")
}

/// A decimal port, 0 to 65535, without sign or leading zeros.
fn v1_port(s: &str) -> Result<u16, Error> {
    let bad = Error::Malformed("v1: a port that is not 0 to 65535");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Progress, Error> {
    if buf.len() < 16 {
        return Ok(Progress::NeedMore {
            at_least: 16 - buf.len(),
        });
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(Error::Malformed("v2: version is not 2"));
    }
    let command = match version_command & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(Error::Malformed("v2: command is neither LOCAL nor PROXY")),
    };
    let family = buf[13] >> 4;
    let transport = buf[13] & 0x0f;
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > MAX_V2_BYTES {
        return Err(Error::TooLong);
    }
    if buf.len() < total {
        return Ok(Progress::NeedMore {
            at_least: total - buf.len(),
        });
    }
    let block = &buf[16..total];
    let done = |source, destination| {
        Ok(Progress::Complete {
            header: Header {
                command,
                source,
                destination,
            },
            consumed: total,
        })
    };
    if command == Command::Local {
        // The receiver must ignore the addresses of a LOCAL header.
        return done(None, None);
    }
    let addr_len = match family {
        0 => return done(None, None), // AF_UNSPEC: the connection's own
        1 => 12,
        2 => 36,
        _ => return Err(Error::UnsupportedFamily),
    };
    if transport != 1 {
        return Err(Error::UnsupportedTransport);
    }
    if block.len() < addr_len {
        return Err(Error::Malformed("v2: shorter than its addresses"));
    }
    let (source, destination) = if family == 1 {
        let ip =
            |at: usize| Ipv4Addr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        (
            SocketAddr::new(ip(0).into(), port(8)),
            SocketAddr::new(ip(4).into(), port(10)),
        )
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[at..at + 16]);
            Ipv6Addr::from(octets)
        };
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        (
            SocketAddr::new(ip(0).into(), port(32)),
            SocketAddr::new(ip(16).into(), port(34)),
        )
    };
    // TLVs are skipped, but each must fit in the announced length.
    let mut tlvs = &block[addr_len..];
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(Error::Malformed("v2: a TLV cut short"));
        }
        let value_len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs.len() < 3 + value_len {
            return Err(Error::Malformed("v2: a TLV longer than the header"));
        }
        tlvs = &tlvs[3 + value_len..];
    }
    done(Some(source), Some(destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Every proper prefix needs more; the whole is complete and reports
    /// exactly its length, also with bytes after it.
    fn check_incremental(h: &[u8]) -> Header {
        for n in 0..h.len() {
            match parse(&h[..n]) {
                Ok(Progress::NeedMore { at_least }) => {
                    assert!(at_least >= 1 && at_least <= h.len() - n, "{n}: {at_least}");
                }
                other => panic!("prefix of {n} bytes of {h:?}: {other:?}"),
            }
        }
        let Ok(Progress::Complete { header, consumed }) = parse(h) else {
            panic!("{h:?}: not complete");
        };
        assert_eq!(consumed, h.len());
        let mut more = h.to_vec();
        more.extend_from_slice(&[0x16, 3, 1, 0, 5]);
        assert_eq!(
            parse(&more),
            Ok(Progress::Complete {
                header: header.clone(),
                consumed: h.len()
            })
        );
        header
    }

    #[test]
    fn v1_round_trips_with_the_writer() {
        for (c, l) in [
            ("192.0.2.1:5000", "198.51.100.2:6443"),
            ("[2001:db8::1]:0", "[2001:db8::2]:65535"),
            (
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ] {
            let h = crate::v1(sa(c), sa(l));
            let header = check_incremental(&h);
            assert_eq!(
                header,
                Header {
                    command: Command::Proxy,
                    source: Some(sa(c)),
                    destination: Some(sa(l)),
                }
            );
        }
        let unknown = crate::v1(sa("192.0.2.1:1"), sa("[2001:db8::2]:2"));
        let header = check_incremental(&unknown);
        assert_eq!((header.source, header.destination), (None, None));
        check_incremental(b"PROXY UNKNOWN 1.2.3.4 whatever\r\n");
    }

    #[test]
    fn v2_round_trips_with_the_writer() {
        for (c, l, name) in [
            ("192.0.2.1:5000", "198.51.100.2:6443", None),
            (
                "192.0.2.1:5000",
                "198.51.100.2:6443",
                Some("api.example.com"),
            ),
            ("[2001:db8::1]:1", "[2001:db8::2]:2", Some("a.example")),
        ] {
            let h = crate::v2(sa(c), sa(l), name);
            let header = check_incremental(&h);
            assert_eq!(header.command, Command::Proxy);
            assert_eq!(header.source, Some(sa(c)));
            assert_eq!(header.destination, Some(sa(l)));
        }
        // Mixed families: AF_UNSPEC, the connection's own addresses.
        let h = crate::v2(sa("192.0.2.1:1"), sa("[2001:db8::2]:2"), Some("x.example"));
        assert_eq!(check_incremental(&h).source, None);
    }

    fn v2_raw(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn local_ignores_its_addresses() {
        let h = v2_raw(0x20, 0x00, &[]);
        let header = check_incremental(&h);
        assert_eq!(
            header,
            Header {
                command: Command::Local,
                source: None,
                destination: None
            }
        );
        // LOCAL with (ignored) addresses and even an odd family.
        let h = v2_raw(0x20, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(check_incremental(&h).command, Command::Local);
    }

    #[test]
    fn stacked_headers_are_visible_to_the_caller() {
        let first = crate::v1(sa("192.0.2.1:5000"), sa("198.51.100.2:6443"));
        let second = crate::v2(sa("203.0.113.7:1"), sa("198.51.100.2:6443"), None);
        let mut both = first.clone();
        both.extend_from_slice(&second);
        let Ok(Progress::Complete { consumed, .. }) = parse(&both) else {
            panic!()
        };
        assert_eq!(consumed, first.len());
        assert!(starts_like_header(&both[consumed..]));
        assert!(starts_like_header(b"P"));
        assert!(starts_like_header(b"\r\n\r"));
        assert!(!starts_like_header(&[0x16, 3, 1]));
        assert!(!starts_like_header(b""));
        assert!(!starts_like_header(b"POST / HTTP/1.1"));
    }

    #[test]
    fn garbage_and_broken_headers() {
        assert_eq!(parse(&[0x16, 3, 1, 0, 5]), Err(Error::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::NotProxy));
        assert_eq!(parse(b"PROXZ"), Err(Error::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(Error::NotProxy));
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 5000\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6443 7\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 5000 6443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::1 5000 6443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 65536\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 05000 6443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +500 6443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 5000 6443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 5000 6443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6443\rX",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1_BYTES, b'a');
        assert_eq!(
            parse(&long[..MAX_V1_BYTES - 1]),
            Ok(Progress::NeedMore { at_least: 2 })
        );
        assert_eq!(parse(&long), Err(Error::TooLong));
        long[MAX_V1_BYTES - 1] = b'\r';
        assert_eq!(
            parse(&long),
            Err(Error::TooLong),
            "the \\n would be byte 108"
        );
        long[MAX_V1_BYTES - 2] = b'\r';
        long[MAX_V1_BYTES - 1] = b'\n';
        assert!(matches!(
            parse(&long),
            Ok(Progress::Complete {
                consumed: MAX_V1_BYTES,
                ..
            })
        ));

        // v2.
        let addrs = [192, 0, 2, 1, 198, 51, 100, 2, 0, 1, 0, 2];
        assert!(matches!(
            parse(&v2_raw(0x11, 0x11, &addrs)),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2_raw(0x22, 0x11, &addrs)),
            Err(Error::Malformed(_))
        ));
        assert_eq!(
            parse(&v2_raw(0x21, 0x31, &[0; 216])),
            Err(Error::UnsupportedFamily)
        );
        assert_eq!(
            parse(&v2_raw(0x21, 0x12, &addrs)),
            Err(Error::UnsupportedTransport)
        );
        assert!(matches!(
            parse(&v2_raw(0x21, 0x11, &addrs[..8])),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2_raw(0x21, 0x21, &addrs)),
            Err(Error::Malformed(_))
        ));
        let mut with_tlv = addrs.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0, 5, 1, 2]);
        assert!(matches!(
            parse(&v2_raw(0x21, 0x11, &with_tlv)),
            Err(Error::Malformed(_))
        ));
        with_tlv.truncate(addrs.len() + 2);
        assert!(matches!(
            parse(&v2_raw(0x21, 0x11, &with_tlv)),
            Err(Error::Malformed(_))
        ));
        with_tlv.truncate(addrs.len());
        with_tlv.extend_from_slice(&[0x04, 0, 2, 1, 2, 0xee, 0, 0]);
        let header = check_incremental(&v2_raw(0x21, 0x11, &with_tlv));
        assert_eq!(header.source, Some(sa("192.0.2.1:1")));
        // Too long, said as soon as the length is read.
        let mut h = v2_raw(0x21, 0x11, &[]);
        h[14..16].copy_from_slice(&(MAX_V2_BYTES as u16 - 15).to_be_bytes());
        assert_eq!(parse(&h), Err(Error::TooLong));
    }

    #[test]
    fn every_byte_string_up_to_a_few_bytes_is_handled() {
        // No panics, and NeedMore always asks for at least one byte.
        let alphabet = [
            b'P', b'R', b'O', b'X', b'Y', b' ', b'\r', b'\n', 0, b'Q', 0x21, 0x11, 0xff,
        ];
        let mut buf = Vec::new();
        fn walk(buf: &mut Vec<u8>, alphabet: &[u8], depth: usize) {
            if let Ok(Progress::NeedMore { at_least }) = parse(buf) {
                assert!(at_least > 0);
            }
            if depth == 0 {
                return;
            }
            for &b in alphabet {
                buf.push(b);
                walk(buf, alphabet, depth - 1);
                buf.pop();
            }
        }
        walk(&mut buf, &alphabet, 4);
    }
}
