//! Checks of the `proxy_header` target: the PROXY protocol headers that
//! `proxy_protocol::v1` and `proxy_protocol::v2` write read back, through
//! the independent reader of the `ppp` crate, as the addresses and server
//! name they were written for.
//!
//! The properties (see `README.md`), for any client and local socket
//! addresses (IPv4, IPv6 with any flow label and scope id, IPv4-mapped
//! IPv6) and any valid server name or none:
//! - the writer's model: an IPv4-mapped IPv6 address counts as the IPv4
//!   address (`canonical`); two IPv4 ends give TCP4 / AF_INET, two IPv6
//!   ends TCP6 / AF_INET6, mixed families `PROXY UNKNOWN` / AF_UNSPEC;
//! - v1: ppp reads the header, followed by the client's TLS bytes, as
//!   exactly the bytes written (CRLF-terminated, at most 107 bytes, ASCII),
//!   with the family, addresses and ports of the model; no shorter prefix
//!   reads as a header;
//! - v2: the signature, version 2 and command PROXY, the family byte of the
//!   model (protocol STREAM for IP families, UNSPEC for AF_UNSPEC), the
//!   length field equal to the bytes that follow it; ppp reads the header,
//!   followed by the client's bytes, as exactly the bytes written, with the
//!   model's addresses and ports, and the TLVs are exactly one
//!   PP2_TYPE_AUTHORITY holding the server name when there is one, none
//!   when there is none; no shorter prefix reads as a header.
//!
//! For AF_UNSPEC, ppp (as the spec allows: "the receiver should ignore
//! address information") treats all of the bytes after the fixed header as
//! the address block and lists no TLVs; the writer sends an empty address
//! block there, so the TLVs are read with ppp's TLV reader from those bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use arbitrary::Arbitrary;
use clienthello::ServerName;
use ppp::{v1 as pv1, v2 as pv2};

/// The bytes a client sends after the header is written: the start of a
/// TLS record. The reader must not take any of them.
pub const CLIENT_BYTES: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// One end of a connection, as the fuzzer describes it.
#[derive(Clone, Debug, Arbitrary)]
pub enum End {
    /// An IPv4 address.
    V4([u8; 4], u16),
    /// Any IPv6 address, with a flow label and scope id.
    V6([u8; 16], u16, u32, u32),
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): a dual-stack
    /// listener's view of an IPv4 client.
    Mapped([u8; 4], u16),
    /// An IPv4-compatible (`::a.b.c.d`) address: IPv6, not mapped.
    Compatible([u8; 4], u16),
    /// A special IPv6 address (unspecified, loopback, link-local, all
    /// ones, the mapped and compatible prefixes' edges).
    SpecialV6(u8, u16),
}

impl End {
    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        match *self {
            End::V4(ip, port) => SocketAddr::V4(SocketAddrV4::new(ip.into(), port)),
            End::V6(ip, port, flow, scope) => {
                SocketAddr::V6(SocketAddrV6::new(ip.into(), port, flow, scope))
            }
            End::Mapped(ip, port) => {
                SocketAddr::new(Ipv4Addr::from(ip).to_ipv6_mapped().into(), port)
            }
            End::Compatible(ip, port) => {
                #[allow(deprecated)]
                let v6 = Ipv4Addr::from(ip).to_ipv6_compatible();
                SocketAddr::new(v6.into(), port)
            }
            End::SpecialV6(which, port) => {
                let ip = match which % 8 {
                    0 => Ipv6Addr::UNSPECIFIED,
                    1 => Ipv6Addr::LOCALHOST,
                    2 => "fe80::1".parse().expect("literal"),
                    3 => Ipv6Addr::from([0xff; 16]),
                    4 => "::ffff:0:0".parse().expect("literal"),
                    5 => "::ffff:ffff:ffff".parse().expect("literal"),
                    6 => "::fffe:ffff:ffff".parse().expect("literal"),
                    _ => "64:ff9b::192.0.2.1".parse().expect("literal"),
                };
                SocketAddr::new(ip.into(), port)
            }
        }
    }
}

/// A server name candidate; invalid ones become "no server name".
#[derive(Clone, Debug, Arbitrary)]
pub enum Name {
    /// No server name.
    Absent,
    /// Labels over the host-name alphabet (mapped from the bytes), maybe
    /// in upper case or with a trailing dot (normalised away).
    Dns {
        labels: Vec<Vec<u8>>,
        upper: bool,
        trailing_dot: bool,
    },
    /// `count` labels of `len` letters: long names, up to and past 253
    /// bytes.
    Long { len: u8, count: u8, last: u8 },
    /// Any bytes.
    Raw(Vec<u8>),
}

impl Name {
    /// The validated, normalised name, if the candidate is one.
    pub fn server_name(&self) -> Option<ServerName> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
        let raw: Vec<u8> = match self {
            Name::Absent => return None,
            Name::Dns {
                labels,
                upper,
                trailing_dot,
            } => {
                let mut out = Vec::new();
                for (i, label) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.extend(label.iter().map(|&b| {
                        let c = ALPHABET[usize::from(b) % ALPHABET.len()];
                        if *upper {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    }));
                }
                if *trailing_dot {
                    out.push(b'.');
                }
                out
            }
            Name::Long { len, count, last } => {
                let len = usize::from(len % 63) + 1;
                let label = vec![b'a'; len];
                let mut out = Vec::new();
                for _ in 0..(count % 130) {
                    out.extend_from_slice(&label);
                    out.push(b'.');
                }
                out.extend(std::iter::repeat_n(b'z', usize::from(last % 63) + 1));
                out
            }
            Name::Raw(bytes) => bytes.clone(),
        };
        ServerName::parse(&raw).ok()
    }
}

/// One input of the `proxy_header` target.
#[derive(Clone, Debug, Arbitrary)]
pub struct Input {
    /// The client (the connection's peer).
    pub client: End,
    /// The address the client connected to.
    pub local: End,
    /// The server name the client asked for.
    pub name: Name,
}

/// What the writer documents for a pair of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// Both ends IPv4 (mapped addresses included).
    Tcp4(SocketAddrV4, SocketAddrV4),
    /// Both ends IPv6 and not mapped.
    Tcp6(SocketAddrV6, SocketAddrV6),
    /// One of each: not describable in the header.
    Unknown,
}

impl Model {
    /// The model for `client` and `local`.
    pub fn of(client: SocketAddr, local: SocketAddr) -> Self {
        match (family(client), family(local)) {
            (IpAddr::V4(c), IpAddr::V4(l)) => Model::Tcp4(
                SocketAddrV4::new(c, client.port()),
                SocketAddrV4::new(l, local.port()),
            ),
            (IpAddr::V6(c), IpAddr::V6(l)) => Model::Tcp6(
                SocketAddrV6::new(c, client.port(), 0, 0),
                SocketAddrV6::new(l, local.port(), 0, 0),
            ),
            _ => Model::Unknown,
        }
    }
}

/// The address as the header describes it: `::ffff:a.b.c.d` is `a.b.c.d`.
fn family(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.octets() {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => {
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            _ => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Writes both headers for `input` and checks them.
pub fn check(input: &Input) {
    let (client, local) = (input.client.addr(), input.local.addr());
    let name = input.name.server_name();
    let name = name.as_ref().map(ServerName::as_str);
    let model = Model::of(client, local);
    check_v1(&proxy_protocol::v1(client, local), model);
    check_v2(&proxy_protocol::v2(client, local, name), model, name);
}

/// Checks a v1 header written for `model`.
pub fn check_v1(header: &[u8], model: Model) {
    assert!(header.is_ascii(), "{header:?}");
    assert!(header.len() <= 107, "{} bytes: {header:?}", header.len());
    assert!(header.ends_with(b"\r\n"), "{header:?}");
    let text = std::str::from_utf8(header).expect("ASCII");
    let mut stream = header.to_vec();
    stream.extend_from_slice(CLIENT_BYTES);
    let read = pv1::Header::try_from(&stream[..])
        .unwrap_or_else(|e| panic!("ppp refuses {text:?}: {e:?}"));
    assert_eq!(read.header.as_bytes(), header, "ppp took other bytes");
    let want = match model {
        Model::Tcp4(c, l) => pv1::Addresses::new_tcp4(*c.ip(), *l.ip(), c.port(), l.port()),
        Model::Tcp6(c, l) => pv1::Addresses::new_tcp6(*c.ip(), *l.ip(), c.port(), l.port()),
        Model::Unknown => {
            assert_eq!(text, "PROXY UNKNOWN\r\n");
            pv1::Addresses::Unknown
        }
    };
    assert_eq!(read.addresses, want, "{text:?}");
    for end in 0..header.len() {
        assert!(
            pv1::Header::try_from(&header[..end]).is_err(),
            "ppp reads the prefix {:?} of {text:?}",
            &header[..end]
        );
    }
}

/// Checks a v2 header written for `model` and `name`.
pub fn check_v2(header: &[u8], model: Model, name: Option<&str>) {
    assert!(header.len() >= 16, "{header:?}");
    assert_eq!(&header[..12], pv2::PROTOCOL_PREFIX, "signature");
    assert_eq!(header[12], 0x21, "version 2, PROXY");
    let (family_byte, address_len) = match model {
        Model::Tcp4(..) => (0x11, 12),
        Model::Tcp6(..) => (0x21, 36),
        Model::Unknown => (0x00, 0),
    };
    assert_eq!(header[13], family_byte, "family and protocol for {model:?}");
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(header.len(), 16 + length, "the length field");
    let tlv_len = name.map_or(0, |n| 3 + n.len());
    assert_eq!(length, address_len + tlv_len, "address block and TLVs");

    let mut stream = header.to_vec();
    stream.extend_from_slice(CLIENT_BYTES);
    let read = pv2::Header::try_from(&stream[..])
        .unwrap_or_else(|e| panic!("ppp refuses {header:?}: {e:?}"));
    assert_eq!(&read.header[..], header, "ppp took other bytes");
    assert_eq!(read.len(), header.len());
    assert_eq!(read.length(), length);
    assert_eq!(read.version, pv2::Version::Two);
    assert_eq!(read.command, pv2::Command::Proxy);
    let (addresses, protocol) = match model {
        Model::Tcp4(c, l) => (
            pv2::Addresses::IPv4(pv2::IPv4::new(*c.ip(), *l.ip(), c.port(), l.port())),
            pv2::Protocol::Stream,
        ),
        Model::Tcp6(c, l) => (
            pv2::Addresses::IPv6(pv2::IPv6::new(*c.ip(), *l.ip(), c.port(), l.port())),
            pv2::Protocol::Stream,
        ),
        Model::Unknown => (pv2::Addresses::Unspecified, pv2::Protocol::Unspecified),
    };
    assert_eq!(read.addresses, addresses);
    assert_eq!(read.protocol, protocol);

    let tlvs: Vec<_> = match model {
        Model::Unknown => {
            assert_eq!(read.tlvs().count(), 0);
            pv2::TypeLengthValues::from(read.address_bytes()).collect()
        }
        _ => {
            assert_eq!(read.address_bytes().len(), address_len);
            read.tlvs().collect()
        }
    };
    let tlvs: Vec<_> = tlvs
        .into_iter()
        .map(|t| t.unwrap_or_else(|e| panic!("a TLV ppp cannot read: {e:?} in {header:?}")))
        .collect();
    match name {
        Some(name) => {
            assert_eq!(tlvs.len(), 1, "{tlvs:?}");
            assert_eq!(tlvs[0].kind, pv2::Type::Authority as u8);
            assert_eq!(&tlvs[0].value[..], name.as_bytes(), "the AUTHORITY TLV");
        }
        None => assert!(tlvs.is_empty(), "TLVs without a server name: {tlvs:?}"),
    }

    for end in 0..header.len() {
        assert!(
            pv2::Header::try_from(&header[..end]).is_err(),
            "ppp reads the prefix of {end} bytes of {header:?}"
        );
    }
}
