//! The HTTP client the sources share: reqwest (on hyper, HTTP/1.1 only)
//! over rustls with `ring`, behind a small crate-internal API.
//!
//! - One [`Client`] per source, built from its `ca_file`, its `auth` and
//!   its request timeout; cloning it is cheap (one connection pool).
//! - `https://` URLs trust exactly the CA certificates of `ca_file` (DC/OS
//!   strict mode signs Admin Router's certificate with its own CA), never
//!   the system roots; without a `ca_file` no https server is trusted.
//! - Redirects are not followed here: the sources follow them (a
//!   non-leader Marathon's 302, a non-leading Mesos master's 307 with a
//!   scheme-relative `Location`) and log them, through [`Url::redirect`].
//! - Every wait is bounded: the response head by the request timeout, the
//!   head's size by hyper (its read buffer, about 400 KiB), the
//!   body by the caller ([`Response::next`] under its stall timeout,
//!   [`Response::body`] under a byte limit and a timeout).
//! - With `auth`, each request carries `Authorization: token=...`
//!   ([`crate::auth`]); a 401 with a service account logs in again and
//!   retries the request once.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Auth, AuthSettings};

/// The largest `ca_file` read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (`http://marathon.mesos:8080`).
    Http,
    /// HTTP over TLS, verified against the source's `ca_file`
    /// (`https://leader.mesos/marathon`).
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An `http[s]://host[:port][/prefix]` URL, the prefix without a trailing
/// slash (Marathon behind a path, as Admin Router serves it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (80 or 443 when not written).
    pub port: u16,
    /// Path prefix, empty or starting with `/`, no trailing `/`.
    pub prefix: String,
}

impl Url {
    /// Parses `http[s]://host[:port][/prefix]`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = s.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!(
                "`{s}` is not an http or https URL such as `http://marathon.mesos:8080`"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['@', '?', '#']) {
            return Err(format!(
                "`{s}`: a discovery URL has no user, query or fragment"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: an IPv6 address needs its closing `]`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("`{s}`: the host is missing or not a valid name"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("`{s}`: `{p}` is not a port")),
            },
        };
        if !path
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '%' | '"' | '<' | '>' | '\\'))
        {
            return Err(format!("`{s}`: the path may hold plain characters only"));
        }
        Ok(Url {
            scheme,
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port`, the IPv6 address in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Where a `Location` header points, relative to this URL's request:
    /// an absolute `http://` or `https://` URL, a scheme-relative one
    /// (`//host:port/path`, which a non-leading Mesos master sends; it
    /// keeps this URL's scheme), or an absolute path on the same server.
    /// The result is the target's server (without prefix) and the request
    /// path to use on it, query included.
    pub(crate) fn redirect(&self, location: &str) -> Option<(Url, String)> {
        if location.starts_with('/') && !location.starts_with("//") {
            let base = Url {
                prefix: String::new(),
                ..self.clone()
            };
            return Some((base, location.to_owned()));
        }
        let (scheme, rest) = if let Some(rest) = location.strip_prefix("//") {
            (self.scheme, rest)
        } else if let Some(rest) = location.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = location.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return None;
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let base = Url::parse(&format!("{}://{authority}", scheme.as_str())).ok()?;
        Some((base, path))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.prefix
        )
    }
}

/// The request methods the sources use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// `GET` (Marathon).
    Get,
    /// `POST` with a body (Mesos' operator API, the DC/OS login).
    Post,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Connect, TLS, read or write failed, or took too long.
    Transport(String),
    /// The server answered something we do not accept (too large, not
    /// HTTP, a body cut short).
    Protocol(String),
    /// Getting the credentials failed (token file, service-account login).
    Auth(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(m) | Self::Protocol(m) => f.write_str(m),
            Self::Auth(m) => write!(f, "authentication: {m}"),
        }
    }
}

/// A reqwest error as text, with its causes (see [`transport`]).
pub(crate) fn error_text(e: reqwest::Error) -> String {
    transport(e).to_string()
}

/// A reqwest error with its causes (`error sending request: ... :
/// invalid peer certificate: UnknownIssuer`), which its `Display` leaves
/// out.
fn transport(e: reqwest::Error) -> Error {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    if e.is_body() || e.is_decode() {
        Error::Protocol(text)
    } else {
        Error::Transport(text)
    }
}

/// How a [`Client`] is built.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientSettings {
    /// PEM file with the CA certificates trusted for https (and only
    /// them); `None`: no https server is trusted.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// Credentials sent with each request.
    pub(crate) auth: Option<AuthSettings>,
    /// Bound on connecting and reading a response head.
    pub(crate) request_timeout: Duration,
}

/// A source's HTTP client. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    inner: reqwest::Client,
    auth: Option<Arc<Auth>>,
    timeout: Duration,
}

impl Client {
    /// Builds the client, reading `ca_file` now.
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate; the TLS
    /// settings are refused.
    pub(crate) fn new(settings: &ClientSettings) -> Result<Client, String> {
        let inner = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(settings.ca_file.as_deref())?)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(settings.request_timeout)
            .tcp_nodelay(true)
            .http1_only()
            .user_agent(concat!("sniroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {}", transport(e)))?;
        let mut client = Client {
            inner,
            auth: None,
            timeout: settings.request_timeout,
        };
        if let Some(auth) = &settings.auth {
            client.auth = Some(Arc::new(Auth::new(auth.clone(), client.clone())));
        }
        Ok(client)
    }

    /// Sends `method path` (under `url`'s prefix) with `headers` and
    /// `body`, and reads the response head within the request timeout.
    /// With `auth`, the request carries the token; a 401 when the token
    /// came from a service-account login logs in again and retries once.
    /// Redirects are returned, not followed.
    ///
    /// # Errors
    /// The credentials cannot be had, the server cannot be reached, or
    /// answers no HTTP response head in time.
    pub(crate) async fn open(
        &self,
        method: Method,
        url: &Url,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Response, Error> {
        let token = match &self.auth {
            Some(auth) => Some(auth.token().await?),
            None => None,
        };
        let resp = self
            .send(method, url, path, headers, body.clone(), token.as_deref())
            .await?;
        match (&self.auth, token) {
            (Some(auth), Some(token)) if resp.status == 401 && auth.renews_on_401() => {
                tracing::info!(url = %url, "401 Unauthorized: logging in again, then retrying once");
                auth.forget(&token).await;
                let token = auth.token().await?;
                self.send(method, url, path, headers, body, Some(&token))
                    .await
            }
            _ => Ok(resp),
        }
    }

    /// One request, without credentials handling.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &Url,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Result<Response, Error> {
        let target = format!("{url}{path}");
        let parsed = reqwest::Url::parse(&target)
            .map_err(|e| Error::Protocol(format!("`{target}` is not a URL: {e}")))?;
        let mut req = match method {
            Method::Get => self.inner.get(parsed),
            Method::Post => self.inner.post(parsed),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(token) = token {
            req = req.header("Authorization", format!("token={token}"));
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        match tokio::time::timeout(self.timeout, req.send()).await {
            Ok(Ok(inner)) => Ok(Response::from(inner)),
            Ok(Err(e)) => Err(transport(e)),
            Err(_) => Err(Error::Transport(format!(
                "no response head within {:?}",
                self.timeout
            ))),
        }
    }
}

/// TLS for an HTTP/1.1 client that trusts exactly the CA certificates of
/// `ca_file` (none: no server).
///
/// # Errors
/// The CA file cannot be read or holds no certificate; the TLS settings
/// are refused.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The certificates of a PEM `ca_file`.
///
/// # Errors
/// The file cannot be read, is too large, is not PEM or holds no
/// certificate.
pub(crate) fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("ca_file {shown}: {e}"))?
        .len();
    if len > MAX_CA_FILE_BYTES {
        return Err(format!(
            "ca_file {shown}: {len} bytes is too large for a CA bundle"
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("ca_file {shown}: {e}"))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file {shown}: not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {shown}: no `BEGIN CERTIFICATE` block in it"
        ));
    }
    Ok(certs)
}

/// A response whose body is read as it arrives.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    inner: reqwest::Response,
}

impl From<reqwest::Response> for Response {
    fn from(inner: reqwest::Response) -> Self {
        Response {
            status: inner.status().as_u16(),
            inner,
        }
    }
}

impl Response {
    /// The first header named `name` (ASCII case-insensitive), if it is
    /// text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name)?.to_str().ok()
    }

    /// The next piece of the body as it arrives (transfer coding
    /// removed); `None` at its end. Each read waits for the server: bound
    /// it with a timeout.
    ///
    /// # Errors
    /// The connection broke, or the body was cut short.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            match self.inner.chunk().await {
                Ok(Some(b)) if b.is_empty() => continue,
                Ok(Some(b)) => return Ok(Some(b.to_vec())),
                Ok(None) => return Ok(None),
                Err(e) => return Err(transport(e)),
            }
        }
    }

    /// The whole body, refused past `limit` bytes (before reading it when
    /// `Content-Length` says so).
    ///
    /// # Errors
    /// As [`Response::next`], and a body over the limit.
    pub(crate) async fn body(mut self, limit: usize) -> Result<Vec<u8>, Error> {
        let announced = self.inner.content_length();
        if let Some(n) = announced {
            if n > limit as u64 {
                return Err(Error::Protocol(format!(
                    "body of {n} bytes is over the {limit} byte limit"
                )));
            }
        }
        // Sized once when announced (within the limit): growing by doubling
        // would hold the old and the new buffer at once, three times a
        // large app list at the peak.
        let mut body = Vec::with_capacity(announced.map_or(0, |n| n as usize));
        while let Some(piece) = self.next().await? {
            if body.len() + piece.len() > limit {
                return Err(Error::Protocol(format!("body over the {limit} byte limit")));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn urls() {
        let u = Url::parse("http://marathon.mesos:8080").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.prefix.as_str()),
            (Scheme::Http, "marathon.mesos", 8080, "")
        );
        assert_eq!(u.to_string(), "http://marathon.mesos:8080");
        let u = Url::parse("http://10.0.0.1/marathon/").unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (80, "/marathon"));
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.to_string().as_str()),
            ("::1", "http://[::1]:8080")
        );
        let u = Url::parse("https://leader.mesos/marathon").unwrap();
        assert_eq!(
            (u.scheme, u.port, u.to_string().as_str()),
            (Scheme::Https, 443, "https://leader.mesos:443/marathon")
        );
        for bad in [
            "ftp://leader.mesos/marathon",
            "marathon.mesos:8080",
            "http://:8080",
            "http://m:0",
            "http://m:99999",
            "http://u@m:1",
            "http://m:1/a?b",
            "https://m:1/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert!(Url::parse("ftp://x")
            .unwrap_err()
            .contains("not an http or https URL"));
    }

    #[test]
    fn redirects() {
        let u = Url::parse("http://10.0.0.1:8080/m").unwrap();
        let (to, path) = u.redirect("http://10.0.0.2:8080/v2/events?x=1").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("http://10.0.0.2:8080".into(), "/v2/events?x=1")
        );
        let (to, path) = u.redirect("/v2/events").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("http://10.0.0.1:8080".into(), "/v2/events")
        );
        // Scheme-relative, as a non-leading Mesos master answers: the
        // scheme stays.
        let (to, path) = u.redirect("//10.0.0.3:5050/api/v1").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("http://10.0.0.3:5050".into(), "/api/v1")
        );
        let s = Url::parse("https://leader.mesos/mesos").unwrap();
        let (to, path) = s.redirect("//master2.mesos:5050/api/v1").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("https://master2.mesos:5050".into(), "/api/v1")
        );
        let (to, path) = u.redirect("https://elsewhere").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("https://elsewhere:443".into(), "/")
        );
        let (_, path) = u.redirect("//h:1?x=1").unwrap();
        assert_eq!(path, "/?x=1");
        for bad in ["ftp://x/", "v2/events", "//u@h/", "http://h:0/"] {
            assert!(u.redirect(bad).is_none(), "{bad}");
        }
    }

    /// A one-shot HTTP/1.1 server on loopback: answers each connection
    /// with `reply` and hands back the request head it read.
    async fn serve_once(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply).await.unwrap();
            s.shutdown().await.ok();
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, task)
    }

    fn plain_client() -> Client {
        Client::new(&ClientSettings {
            ca_file: None,
            auth: None,
            request_timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn chunked_bodies_arrive_decoded_and_redirects_are_returned() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n1\r\n \r\nB\r\nworld!\nmore\r\n0\r\nX-T: y\r\n\r\n",
        )
        .await;
        let url = Url::parse(&format!("http://{addr}/m")).unwrap();
        let resp = plain_client()
            .open(
                Method::Get,
                &url,
                "/v2/apps?x=1",
                &[("Accept", "a/b")],
                None,
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body(1024).await.unwrap(), b"hello world!\nmore");
        let head = server.await.unwrap();
        assert!(
            head.starts_with("GET /m/v2/apps?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase().contains("accept: a/b\r\n"),
            "{head}"
        );

        let (addr, server) =
            serve_once(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: //h:5050/api/v1\r\nContent-Length: 0\r\n\r\n")
                .await;
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        let resp = plain_client()
            .open(Method::Post, &url, "/api/v1", &[], Some(b"{}".to_vec()))
            .await
            .unwrap();
        assert_eq!(resp.status, 307);
        assert_eq!(resp.header("location"), Some("//h:5050/api/v1"));
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /api/v1 http/1.1\r\n"), "{head}");
        assert!(head.contains("content-length: 2\r\n"), "{head}");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_and_cut_short_are_errors() {
        let (addr, _s) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n").await;
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        let resp = plain_client()
            .open(Method::Get, &url, "/", &[], None)
            .await
            .unwrap();
        let e = resp.body(1000).await.unwrap_err().to_string();
        assert!(e.contains("over the 1000 byte limit"), "{e}");

        let (addr, _s) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort").await;
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        let resp = plain_client()
            .open(Method::Get, &url, "/", &[], None)
            .await
            .unwrap();
        assert!(resp.body(1000).await.is_err());

        let (addr, _s) = serve_once(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        assert!(plain_client()
            .open(Method::Get, &url, "/", &[], None)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let client = Client::new(&ClientSettings {
            ca_file: None,
            auth: None,
            request_timeout: Duration::from_millis(300),
        })
        .unwrap();
        let e = client
            .open(Method::Get, &url, "/", &[], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no response head within"), "{e}");
        drop(listener);
    }

    /// An https server on loopback with a certificate for 127.0.0.1 from
    /// `ca`: answers one request `200 secure`, or fails the handshake.
    async fn https_server(ca: &demo::Ca) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
        let identity = ca.server_identity(&["127.0.0.1", "localhost"]);
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain(), identity.private_key())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut s) = acceptor.accept(tcp).await else {
                return false;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
                .await
                .unwrap();
            s.shutdown().await.ok();
            true
        });
        (addr, task)
    }

    #[tokio::test]
    async fn https_trusts_the_ca_file_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = demo::Ca::new("DC/OS test CA");
        let ca_file = dir.path().join("dcos-ca.crt");
        let other = dir.path().join("other-ca.crt");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(&other, demo::Ca::new("another CA").cert_pem()).unwrap();
        let client = |ca_file: Option<&std::path::Path>| {
            Client::new(&ClientSettings {
                ca_file: ca_file.map(Into::into),
                auth: None,
                request_timeout: Duration::from_secs(5),
            })
            .unwrap()
        };

        let (addr, server) = https_server(&ca).await;
        let url = Url::parse(&format!("https://{addr}")).unwrap();
        let resp = client(Some(&ca_file))
            .open(Method::Get, &url, "/v2/apps", &[], None)
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body(100).await.unwrap(), b"secure");
        assert!(server.await.unwrap());

        for trusted in [Some(other.as_path()), None] {
            let (addr, server) = https_server(&ca).await;
            let url = Url::parse(&format!("https://{addr}")).unwrap();
            let e = client(trusted)
                .open(Method::Get, &url, "/v2/apps", &[], None)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("certificate") || e.contains("UnknownIssuer"),
                "{e}"
            );
            assert!(!server.await.unwrap());
        }
    }

    #[test]
    fn ca_files_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let e = Client::new(&ClientSettings {
            ca_file: Some(empty),
            auth: None,
            request_timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(e.contains("no `BEGIN CERTIFICATE` block"), "{e}");
        let e = read_ca_file(&dir.path().join("missing.crt")).unwrap_err();
        assert!(
            e.contains("missing.crt") && e.contains("No such file"),
            "{e}"
        );
    }
}
