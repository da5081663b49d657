//! A rustls server playing a Kubernetes API server: TLS handshake, then a
//! tiny HTTP/1.1 responder.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::Identity;

/// Largest request head (request line + headers) accepted.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Time allowed for the TLS handshake and for each request head (also the
/// keep-alive idle timeout).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body read and discarded; a bigger one closes the
/// connection after the response.
const MAX_DISCARDED_BODY: usize = 1024 * 1024;

/// How a [`TlsUpstream`] is set up.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The cluster's name (e.g. `cluster-a`); appears in every response.
    pub name: String,
    /// The server certificate and key.
    pub identity: Identity,
    /// `Some(ca_pem)`: a client certificate is REQUIRED and verified against
    /// these CA certificate(s) (PEM, one or more); a client without one fails
    /// the handshake. `None`: no client certificate is requested.
    pub client_ca_pem: Option<String>,
    /// ALPN protocols the server offers, in preference order; empty = no
    /// ALPN. The server speaks HTTP/1.1 whatever is negotiated (a protocol
    /// such as `h2` is only useful to test negotiation itself).
    pub alpn: Vec<Vec<u8>>,
}

impl UpstreamOptions {
    /// Options with no client authentication and ALPN `http/1.1` only.
    pub fn new(name: impl Into<String>, identity: Identity) -> UpstreamOptions {
        UpstreamOptions {
            name: name.into(),
            identity,
            client_ca_pem: None,
            alpn: vec![b"http/1.1".to_vec()],
        }
    }
}

/// Whether, and how strictly, the server asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No CA given: none requested.
    None,
    /// Requested and verified if sent, but optional (the demo clusters).
    Optional,
    /// Required.
    Required,
}

/// What the server recorded about one completed handshake.
#[derive(Debug, Clone, Default)]
struct Session {
    sni: Option<String>,
    client_cn: Option<String>,
    alpn: Option<String>,
}

#[derive(Debug, Default)]
struct Stats {
    handshakes: AtomicUsize,
    last: Mutex<Session>,
}

/// A running TLS server on loopback (or wherever it was bound).
///
/// Dropping it (or [`TlsUpstream::shutdown`]) stops it: the listener closes
/// and open connections are aborted.
pub struct TlsUpstream {
    /// The address it listens on (with the real port when bound to port 0).
    pub addr: SocketAddr,
    name: String,
    stats: Arc<Stats>,
    listener: Arc<TcpListener>,
    task: JoinHandle<()>,
}

impl fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("handshakes", &self.handshakes())
            .finish_non_exhaustive()
    }
}

impl TlsUpstream {
    /// Binds `bind` (port 0 picks a free port; see [`TlsUpstream::addr`]) and
    /// spawns the accept loop on the current tokio runtime.
    ///
    /// Errors: the bind fails, the identity's key does not fit its
    /// certificate, or `client_ca_pem` holds no usable certificate.
    ///
    /// # Panics
    /// If called outside a tokio runtime.
    pub async fn start(bind: SocketAddr, options: UpstreamOptions) -> io::Result<TlsUpstream> {
        let auth = if options.client_ca_pem.is_some() {
            ClientAuth::Required
        } else {
            ClientAuth::None
        };
        Self::start_with(bind, options, auth).await
    }

    /// [`TlsUpstream::start`] with the client-certificate policy spelled out:
    /// with [`ClientAuth::Optional`] `options.client_ca_pem` verifies a
    /// certificate the client chooses to send.
    pub(crate) async fn start_with(
        bind: SocketAddr,
        options: UpstreamOptions,
        auth: ClientAuth,
    ) -> io::Result<TlsUpstream> {
        let config = server_config(&options, auth)?;
        let listener = Arc::new(TcpListener::bind(bind).await?);
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let name: Arc<str> = Arc::from(options.name.as_str());
        let task = tokio::spawn(accept_loop(
            Arc::clone(&listener),
            TlsAcceptor::from(Arc::new(config)),
            Arc::clone(&name),
            Arc::clone(&stats),
        ));
        Ok(TlsUpstream {
            addr,
            name: options.name,
            stats,
            listener,
            task,
        })
    }

    /// The name given in [`UpstreamOptions::name`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many TLS handshakes have completed (failed ones do not count).
    pub fn handshakes(&self) -> usize {
        self.stats.handshakes.load(Ordering::SeqCst)
    }

    /// The SNI sent in the most recent completed handshake (`None` before any
    /// handshake, or if that client sent no SNI).
    pub fn last_sni(&self) -> Option<String> {
        self.last().sni
    }

    /// The subject CN of the client certificate in the most recent completed
    /// handshake, if one was presented.
    pub fn last_client_cn(&self) -> Option<String> {
        self.last().client_cn
    }

    /// The ALPN protocol negotiated in the most recent completed handshake.
    pub fn last_alpn(&self) -> Option<String> {
        self.last().alpn
    }

    fn last(&self) -> Session {
        self.stats
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops accepting and closes the listener (new connections are refused
    /// from the moment this returns, on Linux), and aborts open connections.
    pub fn shutdown(self) {
        // Dropping does the work; see `Drop`.
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        // The accept task owns a clone of the listener and is dropped only
        // when the runtime next polls it; shutdown(2) on a listening socket
        // makes Linux refuse new connections right now. Elsewhere this may
        // fail, and the abort closes the socket a moment later.
        let _ = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

fn server_config(options: &UpstreamOptions, auth: ClientAuth) -> io::Result<rustls::ServerConfig> {
    let provider = Arc::new(crate::crypto_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match (auth, options.client_ca_pem.as_deref()) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(pem)) => {
            let roots = roots_from_pem(pem)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(io::Error::other)?)
        }
    };
    let mut config = builder
        .with_single_cert(
            options.identity.cert_chain(),
            options.identity.private_key(),
        )
        .map_err(io::Error::other)?;
    config.alpn_protocols.clone_from(&options.alpn);
    Ok(config)
}

fn roots_from_pem(pem: &str) -> io::Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        roots
            .add(cert)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "client_ca_pem holds no certificate",
        ));
    }
    Ok(roots)
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    name: Arc<str>,
    stats: Arc<Stats>,
) {
    // Owning the connection tasks here means aborting this task (dropping
    // the set) aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve_connection(
                        tcp,
                        acceptor.clone(),
                        Arc::clone(&name),
                        Arc::clone(&stats),
                    ));
                }
                // EMFILE and friends: back off instead of spinning. After
                // shutdown(2) accept fails for good; the abort ends us.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection; every error ends only this connection.
async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    name: Arc<str>,
    stats: Arc<Stats>,
) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let session = {
        let (_, conn) = tls.get_ref();
        Session {
            sni: conn.server_name().map(str::to_owned),
            client_cn: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::ca::subject_common_name(cert)),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    };
    *stats.last.lock().unwrap_or_else(PoisonError::into_inner) = session.clone();
    stats.handshakes.fetch_add(1, Ordering::SeqCst);

    if serve_http(&mut tls, &name, &session).await.is_ok() {
        // close_notify, so clients see a clean end of stream.
        let _ = tokio::time::timeout(IO_TIMEOUT, tls.shutdown()).await;
    }
}

/// A parsed request head: just what the responder needs.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

/// Serves requests until the client closes, asks to close, or misbehaves.
async fn serve_http<S>(stream: &mut S, name: &str, session: &Session) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_len = match tokio::time::timeout(IO_TIMEOUT, read_head(stream, &mut buf)).await {
            Err(_) => return Ok(()), // idle or slow: just close
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => return Ok(()), // clean EOF between requests
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                let response = plain_response(
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                    false,
                );
                stream.write_all(&response).await?;
                return stream.flush().await;
            }
            Ok(Err(e)) => return Err(e),
        };
        let Some(request) = parse_head(&buf[..head_len]) else {
            let response = plain_response(400, "Bad Request", "bad request\n", false);
            stream.write_all(&response).await?;
            return stream.flush().await;
        };
        buf.drain(..head_len);

        // Discard a (bounded) body so the next request parses.
        let mut keep_alive = request.keep_alive && !request.chunked;
        if request.content_length > MAX_DISCARDED_BODY {
            keep_alive = false;
        } else if keep_alive {
            while buf.len() < request.content_length {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                if n == 0 {
                    keep_alive = false;
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if keep_alive {
                buf.drain(..request.content_length);
            }
        }

        let response = respond(&request, name, session, keep_alive);
        stream.write_all(&response).await?;
        stream.flush().await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads until `buf` holds a complete head; returns its length including the
/// blank line. `Ok(None)`: EOF before any byte of a new request. Errors with
/// `InvalidData` if the head exceeds [`MAX_REQUEST_HEAD`].
async fn read_head<S>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<Option<usize>>
where
    S: AsyncRead + Unpin,
{
    let mut scanned = 0;
    loop {
        if let Some(pos) = find_head_end(buf, scanned) {
            return Ok(Some(pos));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        scanned = buf.len().saturating_sub(3);
        let mut chunk = [0u8; 4096];
        let want = chunk.len().min(MAX_REQUEST_HEAD - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut keep_alive = version != "HTTP/1.0";
    let mut content_length = 0;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (field, value) = line.split_once(':')?;
        let value = value.trim();
        if field.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if field.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        } else if field.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        keep_alive,
        content_length,
        chunked,
    })
}

fn respond(request: &Request, name: &str, session: &Session, keep_alive: bool) -> Vec<u8> {
    let path = request.target.split(['?', '#']).next().unwrap_or("");
    let (content_type, body) = if path == "/version" {
        ("application/json", version_json(name))
    } else {
        ("text/plain; charset=utf-8", hello_text(name, session))
    };
    let head_only = request.method == "HEAD";
    response(200, "OK", content_type, &body, keep_alive, head_only)
}

/// The `/version` body: what a Kubernetes API server returns, with the
/// cluster name as SemVer build metadata in `gitVersion` (so `kubectl
/// version` shows which cluster answered).
fn version_json(name: &str) -> String {
    let build: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let build = build.trim_matches('.');
    let build = if build.is_empty() {
        "sniroute-demo"
    } else {
        build
    };
    serde_json::json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0+{build}"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
        "sniroute": { "cluster": name },
    })
    .to_string()
}

/// The body for every path but `/version`.
fn hello_text(name: &str, session: &Session) -> String {
    format!(
        "hello from {name}: sni={} client={} alpn={}\n",
        session.sni.as_deref().unwrap_or("none"),
        session.client_cn.as_deref().unwrap_or("none"),
        session.alpn.as_deref().unwrap_or("none"),
    )
}

fn plain_response(status: u16, reason: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        reason,
        "text/plain; charset=utf-8",
        body,
        keep_alive,
        false,
    )
}

fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let r = parse_head(b"GET /version?timeout=32s HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.target, "/version?timeout=32s");
        assert!(r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.1\r\nConnection: Close\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
        assert!(!r.keep_alive);
        assert_eq!(r.content_length, 3);
        assert!(!parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_none());
        assert!(parse_head(b"PRI * HTTP/2.0\r\n\r\n").is_none());
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value = serde_json::from_str(&version_json("cluster a")).unwrap();
        assert_eq!(v["gitVersion"], "v1.32.0+cluster-a");
        assert_eq!(v["major"], "1");
        let s = Session {
            sni: Some("a.test".into()),
            client_cn: None,
            alpn: Some("http/1.1".into()),
        };
        assert_eq!(
            hello_text("cluster-a", &s),
            "hello from cluster-a: sni=a.test client=none alpn=http/1.1\n"
        );
        let request = parse_head(b"HEAD /version HTTP/1.1\r\n\r\n").unwrap();
        let out = String::from_utf8(respond(&request, "x", &s, true)).unwrap();
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/json"));
    }
}
