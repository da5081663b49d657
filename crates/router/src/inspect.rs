//! `sniroute inspect-hello`: what a saved ClientHello says, as the router
//! would read it.

/// Why [`inspect_hello`] has no answer.
#[derive(Debug)]
pub enum InspectError {
    /// The bytes end before the ClientHello does.
    Incomplete {
        /// Bytes given.
        got: usize,
        /// At least this many more are needed.
        at_least: usize,
    },
    /// The bytes are no ClientHello the router would accept.
    Invalid(clienthello::Error),
}

impl std::fmt::Display for InspectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Incomplete { got, at_least } => {
                write!(f, "incomplete: {at_least} more bytes needed (got {got})")
            }
            Self::Invalid(e) => write!(f, "{e} ({})", e.as_str()),
        }
    }
}

impl std::error::Error for InspectError {}

/// Parses `bytes` (the first bytes a client sent) with the router's own
/// reader and limit (`limits.max_client_hello_bytes`), and returns what it
/// says: server name, ALPN, versions, ECH, size and record count.
///
/// # Errors
/// [`InspectError::Incomplete`] for a truncated hello, else
/// [`InspectError::Invalid`] with the reason the router would refuse it.
pub fn inspect_hello(bytes: &[u8], max_bytes: usize) -> Result<serde_json::Value, InspectError> {
    let limits = clienthello::Limits {
        max_client_hello_bytes: max_bytes,
    };
    match clienthello::parse(bytes, &limits) {
        Ok(clienthello::Progress::Complete(h)) => {
            let hex = |v: u16| format!("0x{v:04x}");
            Ok(serde_json::json!({
                "server_name": h.server_name.as_ref().map(|n| n.as_str()),
                "alpn": h.alpn_lossy(),
                "legacy_version": hex(h.legacy_version),
                "supported_versions": h.supported_versions.iter().map(|&v| hex(v)).collect::<Vec<_>>(),
                "ech": h.ech,
                "client_hello_bytes": h.client_hello_bytes,
                "tls_records": h.tls_records,
            }))
        }
        Ok(clienthello::Progress::NeedMore { at_least }) => Err(InspectError::Incomplete {
            got: bytes.len(),
            at_least,
        }),
        Err(e) => Err(InspectError::Invalid(e)),
    }
}
