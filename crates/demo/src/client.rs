//! A one-shot HTTPS GET over rustls, for tests (directly to a
//! [`TlsUpstream`](crate::TlsUpstream) or through the router).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What [`https_get`] read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The response head (status line and headers), without the blank line.
    pub head: String,
    /// The body, decoded as UTF-8 (lossily).
    pub body: String,
    /// The ALPN protocol the handshake settled on, if any.
    pub alpn: Option<Vec<u8>>,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Connects to `connect`, does a TLS handshake sending SNI `server_name`
/// (which is also the name the server certificate must match; an IP address
/// sends no SNI), sends `GET <path>` with `Connection: close` and reads the
/// whole response. Every step is bounded by a 10 s timeout.
///
/// With TLS 1.3 a server that rejects the client certificate does so after
/// the client considers the handshake done, so that failure surfaces here as
/// an error reading the response rather than from the handshake.
pub async fn https_get(
    connect: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> io::Result<HttpResponse> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let work = async {
        let tcp = TcpStream::connect(connect).await?;
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nUser-Agent: sniroute-demo\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await?;
        tls.flush().await?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw).await {
            Ok(_) => {}
            // A peer closing without close_notify: keep what arrived if it
            // is a complete response.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        parse_response(&raw, alpn)
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "https_get timed out"))?
}

fn parse_response(raw: &[u8], alpn: Option<Vec<u8>>) -> io::Result<HttpResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = String::from_utf8_lossy(&raw[split + 4..]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    Ok(HttpResponse {
        status,
        head,
        body,
        alpn,
    })
}
