//! Server names as RFC 6066 wants them: ASCII DNS host names, never IP literals.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name, without the trailing dot (RFC 1035 §2.3.4 leaves 253
/// printable characters once length octets and the root label are removed).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A validated, normalised host name: ASCII lower case, no trailing dot,
/// labels of 1 to 63 letters, digits, `-` or `_`, at most 253 bytes, and not
/// an IPv4 or IPv6 literal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(String);

/// Why bytes are not a valid [`ServerName`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// No bytes at all (or only a dot).
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Length without the trailing dot.
        len: usize,
    },
    /// A label longer than [`MAX_LABEL_LEN`] bytes.
    LabelTooLong {
        /// Length of the offending label.
        len: usize,
    },
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A NUL byte (a classic truncation trick against C string handling).
    Nul,
    /// A byte outside ASCII.
    NonAscii,
    /// An ASCII byte that has no place in a host name (space, `/`, `*`, ...).
    InvalidCharacter(u8),
    /// An IPv4 or IPv6 address; RFC 6066 forbids literal addresses in SNI.
    IpLiteral,
}

impl NameError {
    /// A short, stable label, usable in logs and tests.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong { .. } => "too_long",
            Self::LabelTooLong { .. } => "label_too_long",
            Self::EmptyLabel => "empty_label",
            Self::Nul => "nul_byte",
            Self::NonAscii => "non_ascii",
            Self::InvalidCharacter(_) => "invalid_character",
            Self::IpLiteral => "ip_literal",
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("server name is empty"),
            Self::TooLong { len } => {
                write!(
                    f,
                    "server name is {len} bytes long, the limit is {MAX_NAME_LEN}"
                )
            }
            Self::LabelTooLong { len } => write!(
                f,
                "a label of the server name is {len} bytes long, the limit is {MAX_LABEL_LEN}"
            ),
            Self::EmptyLabel => f.write_str("server name has an empty label (two dots in a row)"),
            Self::Nul => f.write_str("server name contains a NUL byte"),
            Self::NonAscii => f.write_str("server name contains non-ASCII bytes"),
            Self::InvalidCharacter(b) => write!(
                f,
                "server name contains the character {:?}, which is not allowed in a host name",
                char::from(*b)
            ),
            Self::IpLiteral => f.write_str(
                "server name is an IP address literal, which TLS SNI does not allow (RFC 6066)",
            ),
        }
    }
}

impl std::error::Error for NameError {}

impl ServerName {
    /// Validates and normalises `raw` (bytes as they came off the wire or out
    /// of a config file).
    ///
    /// # Errors
    /// Returns the first rule `raw` breaks; see [`NameError`].
    pub fn parse(raw: &[u8]) -> Result<Self, NameError> {
        let name = raw.strip_suffix(b".").unwrap_or(raw);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        // Byte-class errors first: they say the most about hostile input.
        if name.contains(&0) {
            return Err(NameError::Nul);
        }
        if !name.is_ascii() {
            return Err(NameError::NonAscii);
        }
        if is_ip_literal(name) {
            return Err(NameError::IpLiteral);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        for label in name.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong { len: label.len() });
            }
            if let Some(&b) = label
                .iter()
                .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            {
                return Err(NameError::InvalidCharacter(b));
            }
        }
        let mut s = String::with_capacity(name.len());
        // Every byte was checked to be ASCII above, so this is lossless.
        s.extend(name.iter().map(|b| char::from(b.to_ascii_lowercase())));
        Ok(Self(s))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the name, returning its normalised text.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn is_ip_literal(name: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(name) else {
        return false;
    };
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<Ipv4Addr>().is_ok() || unbracketed.parse::<Ipv6Addr>().is_ok()
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ServerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ServerName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let n = ServerName::parse(b"Api.Cluster-A.Example.COM.").unwrap();
        assert_eq!(n.as_str(), "api.cluster-a.example.com");
    }

    #[test]
    fn rejects_what_rfc6066_forbids() {
        let long_label = [b'a'; 64];
        let mut long_name = Vec::new();
        for _ in 0..64 {
            long_name.extend_from_slice(b"abc.");
        }
        long_name.extend_from_slice(b"com");
        let cases: &[(&[u8], NameError)] = &[
            (b"", NameError::Empty),
            (b".", NameError::Empty),
            (b"a..b", NameError::EmptyLabel),
            (b".a", NameError::EmptyLabel),
            (b"a\0.evil.com", NameError::Nul),
            ("b\u{fc}cher.de".as_bytes(), NameError::NonAscii),
            (b"a b.com", NameError::InvalidCharacter(b' ')),
            (b"*.example.com", NameError::InvalidCharacter(b'*')),
            (b"10.0.4.11", NameError::IpLiteral),
            (b"10.0.4.11.", NameError::IpLiteral),
            (b"2001:db8::1", NameError::IpLiteral),
            (b"[2001:db8::1]", NameError::IpLiteral),
            (&long_label, NameError::LabelTooLong { len: 64 }),
            (&long_name, NameError::TooLong { len: 259 }),
        ];
        for (raw, want) in cases {
            assert_eq!(
                ServerName::parse(raw),
                Err(*want),
                "input {:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn accepts_limits_exactly() {
        let label = "a".repeat(63);
        assert!(ServerName::parse(label.as_bytes()).is_ok());
        let name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(name.len(), 253);
        assert!(ServerName::parse(name.as_bytes()).is_ok());
        assert!(ServerName::parse(b"_acme.host-1.example").is_ok());
        // Looks numeric but is not an address.
        assert!(ServerName::parse(b"1.2.3.4.example.com").is_ok());
    }
}
