//! The few bytes sniroute says itself when it will not forward a connection:
//! a TLS fatal alert (so the client prints a meaningful error instead of
//! "connection reset"), or a one-line HTTP 400 for plaintext HTTP.

/// TLS alert descriptions sniroute sends (RFC 8446 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alert {
    /// 112: no route for the server name, and no default route.
    UnrecognizedName,
    /// 49: the client's address is not allowed on the route.
    AccessDenied,
    /// 80: no upstream of the route could be reached.
    InternalError,
    /// 50: the ClientHello could not be decoded.
    DecodeError,
}

impl Alert {
    /// The alert description code.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::UnrecognizedName => 112,
            Self::AccessDenied => 49,
            Self::InternalError => 80,
            Self::DecodeError => 50,
        }
    }

    /// One TLS record: content type alert, version 3.3, level fatal.
    pub(crate) const fn record(self) -> [u8; 7] {
        [21, 3, 3, 0, 2, 2, self.code()]
    }
}

/// The answer to plaintext HTTP on the TLS port.
pub(crate) const HTTP_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\n\
Content-Length: 68\r\n\
Connection: close\r\n\
\r\n\
This port speaks TLS: use https:// (sniroute routes TLS by SNI).   \n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_fatal_alerts() {
        assert_eq!(Alert::UnrecognizedName.record(), [21, 3, 3, 0, 2, 2, 112]);
        assert_eq!(Alert::AccessDenied.record()[6], 49);
    }

    #[test]
    fn http_400_content_length_is_right() {
        let text = std::str::from_utf8(HTTP_400).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
