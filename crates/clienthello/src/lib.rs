//! Reads a TLS ClientHello from the first bytes of a TCP connection, as they
//! arrive, without doing any I/O.
//!
//! sniroute routes connections by the server name (SNI) in the ClientHello
//! and then forwards the bytes untouched, so this crate only *reads*: it
//! never decrypts or rewrites anything, and it never allocates more than the
//! facts it returns (plus one copy of the handshake when a client splits it
//! across several TLS records).
//!
//! The entry point is [`parse`]. Call it with everything received so far;
//! each call answers one of:
//! - [`Progress::NeedMore`]: read at least that many more bytes and call again;
//! - [`Progress::Complete`]: the [`ClientHello`] facts, and how many bytes of
//!   the buffer it took ([`ClientHello::client_hello_bytes`]);
//! - an [`Error`] saying precisely what is wrong, each with a stable label
//!   ([`Error::as_str`]) for logs and metrics.
//!
//! The answer depends only on the bytes it needed: once a buffer gives
//! `Complete` (or an error), any longer buffer with the same prefix gives the
//! same answer. Size limits are enforced from announced lengths, so an
//! oversized hello is refused as soon as its header arrives.
//!
//! Modules:
//! - this file: [`parse`], the record walk and the extension reader, and
//!   the [`Error`] labels;
//! - `alpn`: [`Alpn`], the ALPN list kept as the extension's own bytes in
//!   one allocation, with a capped display for logs;
//! - `raw_sni`: [`raw_server_name`], the server name as sent, best effort,
//!   for a refused hello's entry on the status page;
//! - `name`: [`ServerName`], which validates and normalises host names (also
//!   used by the router for configured names), and its [`NameError`];
//! - `synth` (cargo feature `synth`, off by default): `HelloBuilder`,
//!   `records` and `resplit`, which build ClientHello bytes, valid and
//!   broken, for tests, benches and fuzzing. It is not part of the
//!   production library: only dev-dependencies (the root package's tests
//!   and benches, this crate's `tests/`) and `fuzz/` turn it on;
//! - `tests`: the unit tests (they use `synth` through `cfg(test)`).
//!
//! Outside `src/`: `tests/properties.rs` (proptest: chunking, finality,
//! arbitrary bytes), `tests/differential.rs` (every capture in `testdata/`
//! and builder variants against rustls), and the `oracle/` crate
//! (`sniroute-clienthello-oracle`, test-only), the rustls comparison that
//! `tests/differential.rs` and the fuzz targets in `fuzz/` share.
//!
//! ```
//! use clienthello::{parse, Limits, Progress};
//! let bytes = include_bytes!("../testdata/curl-openssl3.bin");
//! match parse(bytes, &Limits::default()).unwrap() {
//!     Progress::Complete(hello) => {
//!         assert_eq!(hello.server_name.unwrap().as_str(), "api.cluster-a.example.com");
//!         assert_eq!(hello.client_hello_bytes, bytes.len());
//!     }
//!     Progress::NeedMore { .. } => unreachable!("the capture is complete"),
//! }
//! ```
#![forbid(unsafe_code)]

mod alpn;
mod name;
mod raw_sni;
#[cfg(any(test, feature = "synth"))]
pub mod synth;

use std::borrow::Cow;
use std::fmt;

pub use alpn::{Alpn, Iter as AlpnIter};
pub use name::{NameError, ServerName, MAX_LABEL_LEN, MAX_NAME_LEN};
pub use raw_sni::raw_server_name;

/// Default cap on the bytes a ClientHello may take, record headers included.
/// Post-quantum hellos are about 2 KiB today; 16 KiB leaves room for large
/// session tickets and PSKs while bounding what a client can make us buffer.
pub const DEFAULT_MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const CONTENT_HEARTBEAT: u8 = 24;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const SNI_HOST_NAME: u8 = 0;

/// Limits applied while reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes (record headers included) a ClientHello may take.
    pub max_client_hello_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_hello_bytes: DEFAULT_MAX_CLIENT_HELLO_BYTES,
        }
    }
}

/// The answer to one [`parse`] call that is not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The buffer holds the start of a plausible ClientHello; at least
    /// `at_least` more bytes are needed before anything more can be said.
    NeedMore {
        /// A lower bound (never 0) on how many more bytes are needed.
        at_least: usize,
    },
    /// A whole ClientHello was read.
    Complete(ClientHello),
}

/// The facts sniroute needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, validated and normalised; `None` when the client
    /// sent no `server_name` extension.
    pub server_name: Option<ServerName>,
    /// ALPN protocol names in the client's order (empty without ALPN), in
    /// one allocation.
    pub alpn: Alpn,
    /// `legacy_version` of the ClientHello body (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    /// The `supported_versions` extension in the client's order (GREASE
    /// values included, as sent); empty when absent.
    pub supported_versions: Vec<u16>,
    /// Whether an `encrypted_client_hello` extension is present; the server
    /// name above is then the ECH public name.
    pub ech: bool,
    /// Bytes of the buffer the ClientHello took, record headers included.
    /// These are the bytes to forward upstream before splicing.
    pub client_hello_bytes: usize,
    /// How many TLS records carried it.
    pub tls_records: usize,
}

impl ClientHello {
    /// The ALPN names as text, with invalid UTF-8 replaced (for logs).
    pub fn alpn_lossy(&self) -> Vec<String> {
        self.alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// Why the bytes are not an acceptable ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The first byte is not a TLS record type at all.
    NotTls {
        /// The bytes start like an HTTP/1 request or the HTTP/2 preface,
        /// so the client probably spoke plaintext HTTP to a TLS port.
        looks_like_http: bool,
    },
    /// A TLS record, but not a handshake (an alert, application data...).
    NotHandshake {
        /// The record's content type.
        content_type: u8,
    },
    /// A handshake message, but not a ClientHello.
    NotClientHello {
        /// The handshake message type.
        handshake_type: u8,
    },
    /// An SSL 2.0-style ClientHello, which no supported TLS version accepts.
    SslV2Hello,
    /// Structurally broken.
    Malformed(Malformed),
    /// A record or handshake header announced more than the limit allows.
    TooLarge {
        /// Bytes the hello would take at least, as announced so far.
        announced: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Two `server_name` extensions.
    DuplicateSni,
    /// A `server_name` extension whose structure is wrong: bad lengths, an
    /// empty list, a name type other than host_name, or several names.
    MalformedSni(&'static str),
    /// The host name in SNI breaks RFC 6066's rules.
    InvalidServerName(NameError),
}

/// What exactly is broken in a [`Error::Malformed`] ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// A record whose major version byte is not 3.
    RecordVersion,
    /// A handshake record with no payload (forbidden by RFC 8446 §5.1).
    EmptyRecord,
    /// A record longer than 2^14 bytes.
    RecordOverflow,
    /// A non-handshake record in the middle of the ClientHello.
    InterleavedRecord,
    /// Bytes after the ClientHello in its last handshake record.
    TrailingData,
    /// The ClientHello body does not parse (versions, random, session id,
    /// cipher suites, compression methods, extension block).
    Body,
    /// An extension's header or length is wrong.
    Extension,
    /// An extension type appears twice.
    DuplicateExtension,
    /// The ALPN extension is malformed.
    Alpn,
    /// The supported_versions extension is malformed.
    SupportedVersions,
}

impl Malformed {
    fn as_str(self) -> &'static str {
        match self {
            Self::RecordVersion => "record version is not 3.x",
            Self::EmptyRecord => "empty handshake record",
            Self::RecordOverflow => "record longer than 16384 bytes",
            Self::InterleavedRecord => "non-handshake record inside the ClientHello",
            Self::TrailingData => "data after the ClientHello in its record",
            Self::Body => "ClientHello body does not parse",
            Self::Extension => "extension block does not parse",
            Self::DuplicateExtension => "an extension type appears twice",
            Self::Alpn => "malformed ALPN extension",
            Self::SupportedVersions => "malformed supported_versions extension",
        }
    }
}

impl Error {
    /// A short, stable label: the same string feeds logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotTls { .. } => "not_tls",
            Self::NotHandshake { .. } => "not_handshake",
            Self::NotClientHello { .. } => "not_client_hello",
            Self::SslV2Hello => "sslv2_hello",
            Self::Malformed(_) => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::DuplicateSni => "duplicate_sni",
            Self::MalformedSni(_) => "malformed_sni",
            Self::InvalidServerName(_) => "invalid_server_name",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTls {
                looks_like_http: true,
            } => f.write_str("not TLS: the client sent plaintext HTTP to a TLS port"),
            Self::NotTls {
                looks_like_http: false,
            } => f.write_str("not TLS: the first byte is not a TLS record type"),
            Self::NotHandshake { content_type } => write!(
                f,
                "TLS record of content type {content_type} where a handshake was expected"
            ),
            Self::NotClientHello { handshake_type } => write!(
                f,
                "handshake message of type {handshake_type} where a ClientHello was expected"
            ),
            Self::SslV2Hello => f.write_str("SSL 2.0-style ClientHello, not supported"),
            Self::Malformed(m) => write!(f, "malformed ClientHello: {}", m.as_str()),
            Self::TooLarge { announced, limit } => write!(
                f,
                "ClientHello announces at least {announced} bytes, the limit is {limit}"
            ),
            Self::DuplicateSni => f.write_str("two server_name extensions"),
            Self::MalformedSni(why) => write!(f, "malformed server_name extension: {why}"),
            Self::InvalidServerName(e) => write!(f, "invalid SNI: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidServerName(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Self {
        Self::Malformed(m)
    }
}

fn need(at_least: usize) -> Result<Progress, Error> {
    debug_assert!(at_least > 0);
    Ok(Progress::NeedMore { at_least })
}

/// Reads a ClientHello from the bytes received so far.
///
/// `buf` must start at the first byte the client sent. Bytes after the
/// ClientHello (a client may pipeline early data) are not looked at.
///
/// # Errors
/// Any [`Error`]: the bytes are not TLS, not a ClientHello, malformed, over
/// `limits`, or carry an invalid server name. An error is final: more bytes
/// never turn it into a success.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Progress, Error> {
    if buf.is_empty() {
        return need(1);
    }
    if buf[0] != CONTENT_HANDSHAKE {
        return classify_first_bytes(buf);
    }
    let limit = limits.max_client_hello_bytes;
    let mut pos = 0;
    let mut records = 0;
    // The handshake bytes seen so far: borrowed from `buf` while they sit in
    // one record, copied once a second record continues them.
    let mut hs: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    loop {
        let header = &buf[pos..];
        if let Some(&content_type) = header.first() {
            if content_type != CONTENT_HANDSHAKE {
                return Err(Malformed::InterleavedRecord.into());
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(Malformed::RecordVersion.into());
            }
        }
        if header.len() < RECORD_HEADER_LEN {
            return need(RECORD_HEADER_LEN - header.len());
        }
        let (_, rec) = tls_parser::parse_tls_record_header(header)
            .map_err(|_| Error::from(Malformed::RecordVersion))?;
        let len = usize::from(rec.len);
        let record_end = pos + RECORD_HEADER_LEN + len;
        if record_end > limit {
            return Err(Error::TooLarge {
                announced: record_end,
                limit,
            });
        }
        if len > MAX_RECORD_PAYLOAD {
            return Err(Malformed::RecordOverflow.into());
        }
        if len == 0 {
            return Err(Malformed::EmptyRecord.into());
        }
        records += 1;
        let payload_start = pos + RECORD_HEADER_LEN;
        let available = &buf[payload_start..buf.len().min(record_end)];
        if hs.is_empty() {
            hs = Cow::Borrowed(available);
        } else {
            hs.to_mut().extend_from_slice(available);
        }
        // Check the handshake header as soon as its bytes are here, so that
        // a wrong message type or an oversized length is refused early.
        if let Some(&handshake_type) = hs.first() {
            if handshake_type != HANDSHAKE_CLIENT_HELLO {
                return Err(Error::NotClientHello { handshake_type });
            }
        }
        let body_len = if hs.len() >= HANDSHAKE_HEADER_LEN {
            let body_len = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
            // Fewest bytes this hello can take: this record, plus one more
            // record for whatever of the handshake it cannot hold.
            let through_record = hs.len() - available.len() + len;
            let missing = (HANDSHAKE_HEADER_LEN + body_len).saturating_sub(through_record);
            let announced = record_end
                + if missing > 0 {
                    RECORD_HEADER_LEN + missing
                } else {
                    0
                };
            if announced > limit {
                return Err(Error::TooLarge { announced, limit });
            }
            Some(body_len)
        } else {
            None
        };
        if buf.len() < record_end {
            return need(record_end - buf.len());
        }
        pos = record_end;
        if let Some(body_len) = body_len {
            let total = HANDSHAKE_HEADER_LEN + body_len;
            if hs.len() > total {
                return Err(Malformed::TrailingData.into());
            }
            if hs.len() == total {
                return parse_body(&hs[HANDSHAKE_HEADER_LEN..], pos, records)
                    .map(Progress::Complete);
            }
        }
    }
}

/// HTTP/1 methods and the HTTP/2 preface, to tell plaintext HTTP apart.
const HTTP_STARTS: [&[u8]; 10] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PRI ",
];

/// Decides what a buffer not starting with a handshake record is. Waits for
/// as many bytes as needed to decide, so the answer never changes later.
fn classify_first_bytes(buf: &[u8]) -> Result<Progress, Error> {
    let first = buf[0];
    match first {
        CONTENT_CHANGE_CIPHER_SPEC
        | CONTENT_ALERT
        | CONTENT_APPLICATION_DATA
        | CONTENT_HEARTBEAT => Err(Error::NotHandshake {
            content_type: first,
        }),
        // SSL 2.0 record: two-byte length with the top bit set, then
        // message type 1 (CLIENT-HELLO).
        _ if first & 0x80 != 0 => match buf.get(2) {
            None => need(3 - buf.len()),
            Some(&1) => Err(Error::SslV2Hello),
            Some(_) => Err(Error::NotTls {
                looks_like_http: false,
            }),
        },
        _ => {
            let mut undecided = usize::MAX;
            for start in HTTP_STARTS {
                let n = buf.len().min(start.len());
                if buf[..n] == start[..n] {
                    if n == start.len() {
                        return Err(Error::NotTls {
                            looks_like_http: true,
                        });
                    }
                    undecided = undecided.min(start.len() - n);
                }
            }
            if undecided != usize::MAX {
                return need(undecided);
            }
            Err(Error::NotTls {
                looks_like_http: false,
            })
        }
    }
}

fn parse_body(
    body: &[u8],
    client_hello_bytes: usize,
    tls_records: usize,
) -> Result<ClientHello, Error> {
    let (rest, ch) = tls_parser::parse_tls_handshake_client_hello(body)
        .map_err(|_| Error::from(Malformed::Body))?;
    if !rest.is_empty() {
        return Err(Malformed::Body.into());
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Alpn::default(),
        legacy_version: ch.version.0,
        supported_versions: Vec::new(),
        ech: false,
        client_hello_bytes,
        tls_records,
    };
    let mut exts = ch.ext.unwrap_or_default();
    while !exts.is_empty() {
        let (rest, ext) = tls_parser::parse_tls_extension_unknown(exts)
            .map_err(|_| Error::from(Malformed::Extension))?;
        exts = rest;
        let tls_parser::TlsExtension::Unknown(ext_type, data) = ext else {
            return Err(Malformed::Extension.into());
        };
        // Each reader below refuses an empty list, so a field that is
        // already filled in means the extension came twice.
        let duplicate = match ext_type.0 {
            EXT_SERVER_NAME => hello.server_name.is_some(),
            EXT_ALPN => !hello.alpn.is_empty(),
            EXT_SUPPORTED_VERSIONS => !hello.supported_versions.is_empty(),
            EXT_ENCRYPTED_CLIENT_HELLO => hello.ech,
            _ => false,
        };
        if duplicate && ext_type.0 == EXT_SERVER_NAME {
            return Err(Error::DuplicateSni);
        } else if duplicate {
            return Err(Malformed::DuplicateExtension.into());
        }
        match ext_type.0 {
            EXT_SERVER_NAME => hello.server_name = Some(parse_sni(data)?),
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = parse_supported_versions(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// Splits a `u16`-length-prefixed vector that must fill `data` exactly.
fn exact_u16_vector(data: &[u8]) -> Option<&[u8]> {
    let (len, list) = data.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*len)) == list.len()).then_some(list)
}

/// Reads the `server_name` extension (RFC 6066 §3).
///
/// The list holds at most one `host_name` entry. The RFC lets other name
/// types follow it, but no other type was ever defined, so their encoding
/// is unknown: like rustls, we stop reading at the first entry of another
/// type. A list whose first entry is not a `host_name` is an error.
fn parse_sni(data: &[u8]) -> Result<ServerName, Error> {
    let mut list =
        exact_u16_vector(data).ok_or(Error::MalformedSni("list length does not match"))?;
    let mut host_name = None;
    while let Some(&name_type) = list.first() {
        if name_type != SNI_HOST_NAME {
            break;
        }
        let (name, rest) = tls_parser::parse_tls_extension_sni_hostname(list)
            .map(|(rest, (_, name))| (name, rest))
            .map_err(|_| Error::MalformedSni("empty or truncated name list"))?;
        if host_name.replace(name).is_some() {
            return Err(Error::MalformedSni("more than one name"));
        }
        list = rest;
    }
    let Some(name) = host_name else {
        return Err(if list.is_empty() {
            Error::MalformedSni("empty or truncated name list")
        } else {
            Error::MalformedSni("name type is not host_name")
        });
    };
    ServerName::parse(name).map_err(Error::InvalidServerName)
}

fn parse_alpn(data: &[u8]) -> Result<Alpn, Error> {
    let list = exact_u16_vector(data).ok_or(Malformed::Alpn)?;
    Ok(Alpn::from_wire(list).ok_or(Malformed::Alpn)?)
}

fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, Error> {
    let (&len, list) = data.split_first().ok_or(Malformed::SupportedVersions)?;
    if usize::from(len) != list.len() || list.is_empty() || list.len() % 2 != 0 {
        return Err(Malformed::SupportedVersions.into());
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

#[cfg(test)]
mod tests;
