//! Active health checks: what one check of one endpoint does, and the TLS
//! material HTTPS checks use.
//!
//! A `tcp` check connects. An `https` or `kubernetes` check connects,
//! shakes hands with the route's `server_name` as SNI, verifies the
//! endpoint's certificate against the route's `ca_file`, sends one
//! HTTP/1.1 `GET` and reads the answer. The verifier tells a misrouted
//! endpoint (a certificate from another CA, or one without `server_name`,
//! reported with the names it presents) from every other TLS failure, so
//! that the pool can keep it out of rotation for good.
//!
//! The CA, client certificate, key and token files are read again before
//! every round of checks ([`Checker::reload`]): a rotated CA applies within
//! one interval, and a file that cannot be read or used keeps the last good
//! material (logged when the error changes, counted every time).
//!
//! The router still holds no key of any cluster's server certificate: the
//! optional client certificate only authenticates the check itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{self as m, CheckResult, Counter};
use config::{CheckAuth, CheckKind, HealthCheck, HttpsCheck};

/// The most bytes of an answer a check reads: `/readyz?verbose` of a busy
/// API server is a few KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest reason kept from an answer's body.
const MAX_REASON_CHARS: usize = 300;

/// What one check found.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// How it ended.
    pub(crate) result: CheckResult,
    /// From the start of the connect to the end of the check.
    pub(crate) latency: Duration,
    /// Why it failed, in words (empty when it passed).
    pub(crate) reason: String,
}

/// A certificate that does not belong to the route: the error the verifier
/// returns inside rustls's `CertificateError::Other`, found again by
/// [`classify`].
#[derive(Debug)]
struct Mismatch {
    /// What is wrong, in words.
    why: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for Mismatch {}

/// The names `cert` presents (DNS and IP subject alternative names), as
/// rustls reports them for a name that cannot be in any certificate.
fn presented_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return Vec::new();
    };
    let Ok(probe) = ServerName::try_from("no-such-name.sniroute.invalid") else {
        return Vec::new();
    };
    match rustls::client::verify_server_name(&parsed, &probe) {
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        })) => presented.iter().map(|n| bare_name(n)).collect(),
        _ => Vec::new(),
    }
}

/// `api.test` from webpki's `DnsName("api.test")` (and the address from
/// `IpAddress(..)`): the name as an operator writes it.
fn bare_name(presented: &str) -> String {
    match (presented.find('('), presented.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            presented[open + 1..close].trim_matches('"').to_owned()
        }
        _ => presented.to_owned(),
    }
}

fn names_list(names: &[String]) -> String {
    if names.is_empty() {
        "no names".to_owned()
    } else {
        names.join(", ")
    }
}

/// Verifies like rustls's WebPKI verifier, but turns "another CA" and
/// "another name" into a [`Mismatch`] that names what the certificate
/// presents.
#[derive(Debug)]
struct MisrouteVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for MisrouteVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let err = match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let why = match &err {
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => "the certificate is not issued by the route's ca_file (another cluster's CA?)",
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => "the certificate is not valid for the check's server_name",
            _ => return Err(err),
        };
        let names = presented_names(end_entity);
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(Mismatch {
                why: format!(
                    "{why}: expected {}, the certificate presents {}",
                    server_name.to_str(),
                    names_list(&names)
                ),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify: true`: any certificate, signatures still checked
/// (the handshake itself stays sound).
#[derive(Debug)]
struct NoVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The files an HTTPS check reads, as last read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Material {
    ca: Option<Vec<u8>>,
    certificate: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    token: Option<Vec<u8>>,
}

/// The TLS client of an HTTPS check, built from the last good material.
#[derive(Debug)]
struct Tls {
    material: Material,
    config: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

/// The checks of one pool.
#[derive(Debug)]
pub(crate) struct Checker {
    route: String,
    kind: CheckKind,
    timeout: Duration,
    /// The TLS client in use (HTTPS checks; `None` before the first good
    /// read) and the last error reading its files, to log each error once.
    tls: Mutex<(Option<Arc<Tls>>, Option<String>)>,
    /// `sniroute_upstream_ca_read_failures_total{route}` (HTTPS checks).
    file_failures: Option<Counter>,
}

impl Checker {
    /// The checker for `hc` on `route`; HTTPS checks read their files at
    /// once.
    pub(crate) fn new(route: &str, hc: &HealthCheck) -> Self {
        let file_failures = hc.kind.https().map(|_| {
            m::registry().counter(&m::UPSTREAM_CA_READ_FAILURES_TOTAL, &[("route", route)])
        });
        let checker = Self {
            route: route.to_owned(),
            kind: hc.kind.clone(),
            timeout: hc.timeout,
            tls: Mutex::new((None, None)),
            file_failures,
        };
        checker.reload();
        checker
    }

    /// Reads the CA, client certificate, key and token files again and, when
    /// they changed, builds the TLS client anew. A file that cannot be read
    /// or used keeps the previous client (logged once per distinct error,
    /// counted every time).
    pub(crate) fn reload(&self) {
        let Some(https) = self.kind.https() else {
            return;
        };
        let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        let result = read_material(https).and_then(|material| {
            if tls.0.as_ref().is_some_and(|t| t.material == material) {
                return Ok(None);
            }
            build_tls(material).map(Some)
        });
        match result {
            Ok(None) => tls.1 = None,
            Ok(Some(new)) => {
                if tls.0.is_some() {
                    tracing::info!(route = %self.route, "health check CA or credentials changed; using the new ones");
                }
                *tls = (Some(Arc::new(new)), None);
            }
            Err(e) => {
                if let Some(c) = &self.file_failures {
                    c.increment(1);
                }
                if tls.1.as_deref() != Some(e.as_str()) {
                    tracing::warn!(route = %self.route, error = %e, keeping_last_good = tls.0.is_some(),
                        "health check CA or credentials unusable; keeping the last good ones");
                }
                tls.1 = Some(e);
            }
        }
    }

    /// Checks `addr` once, within the check's timeout. `None`: no socket
    /// for the probe (the router is out of descriptors), which says nothing
    /// about the endpoint.
    pub(crate) async fn check(&self, addr: SocketAddr) -> Option<Outcome> {
        let started = Instant::now();
        let attempt = async {
            let stream = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) if crate::upstream::out_of_descriptors(&e) => return None,
                Err(e) => return Some((CheckResult::ConnectError, format!("connect failed: {e}"))),
            };
            Some(match self.kind.https() {
                None => (CheckResult::Ok, String::new()),
                Some(https) => self.https(stream, https).await,
            })
        };
        let (result, reason) = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(None) => return None,
            Ok(Some(r)) => r,
            Err(_) => (
                CheckResult::Timeout,
                format!("no answer within {:?}", self.timeout),
            ),
        };
        Some(Outcome {
            result,
            latency: started.elapsed(),
            reason,
        })
    }

    async fn https(&self, stream: TcpStream, https: &HttpsCheck) -> (CheckResult, String) {
        let tls = self
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(tls) = tls.0 else {
            let why = tls.1.unwrap_or_default();
            return (
                CheckResult::TlsError,
                format!("no usable CA or credentials: {why}"),
            );
        };
        let name = match ServerName::try_from(https.server_name.as_str().to_owned()) {
            Ok(n) => n,
            Err(e) => return (CheckResult::TlsError, format!("server_name: {e}")),
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let mut stream = match connector.connect(name, stream).await {
            Ok(s) => s,
            Err(e) => return classify(&e, "TLS handshake failed"),
        };
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sniroute-health-check\r\nAccept: */*\r\nConnection: close\r\n",
            https.path,
            https.server_name.as_str()
        );
        if let Some(token) = &tls.token {
            request.push_str("Authorization: Bearer ");
            request.push_str(token);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return classify(&e, "sending the request failed");
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.len() > MAX_ANSWER_BYTES || response_complete(&answer) {
                        break;
                    }
                }
                // A server that closes without close_notify: judge what came.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {
                    break
                }
                Err(e) => return classify(&e, "reading the answer failed"),
            }
        }
        judge(
            &answer,
            https,
            matches!(self.kind, CheckKind::Kubernetes(_)),
        )
    }
}

/// Reads the files of an HTTPS check.
fn read_material(https: &HttpsCheck) -> Result<Material, String> {
    let read = |key: &str, path: &std::path::Path| {
        config::read_check_file(path)
            .map_err(|e| format!("cannot read {key} `{}`: {e}", path.display()))
    };
    let mut material = Material::default();
    if let Some(ca) = &https.ca_file {
        material.ca = Some(read("ca_file", ca)?);
    }
    match &https.auth {
        None => {}
        Some(CheckAuth::ClientCertificate { certificate, key }) => {
            material.certificate = Some(read("client_certificate", certificate)?);
            material.key = Some(read("client_key", key)?);
        }
        Some(CheckAuth::TokenFile(token)) => material.token = Some(read("token_file", token)?),
    }
    Ok(material)
}

/// Builds the TLS client from what was read.
fn build_tls(material: Material) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &material.ca {
        None => Arc::new(NoVerifier {
            provider: provider.clone(),
        }),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("ca_file: not valid PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file: unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("ca_file holds no certificate".to_owned());
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("ca_file: {e}"))?;
            Arc::new(MisrouteVerifier { inner })
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&material.certificate, &material.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client_certificate: not valid PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("client_key: no usable PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_certificate and client_key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let token = match &material.token {
        None => None,
        Some(bytes) => {
            let token = std::str::from_utf8(bytes)
                .map_err(|_| "token_file is not UTF-8".to_owned())?
                .trim();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("token_file is empty or holds more than one printable word".to_owned());
            }
            Some(token.to_owned())
        }
    };
    Ok(Tls {
        material,
        config: Arc::new(config),
        token,
    })
}

/// Sorts an I/O error of the TLS connection: a [`Mismatch`] from the
/// verifier, or any other TLS failure.
fn classify(e: &std::io::Error, doing: &str) -> (CheckResult, String) {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) = tls
    {
        if let Some(mismatch) = other.downcast_ref::<Mismatch>() {
            return (CheckResult::CertificateMismatch, mismatch.to_string());
        }
    }
    (CheckResult::TlsError, format!("{doing}: {e}"))
}

/// Whether `answer` holds a whole HTTP response (headers, and a body of
/// its `Content-Length`); otherwise the check reads to the close.
fn response_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let length = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| answer.len() >= end + 4 + n)
}

/// Judges an HTTP answer: the status must be expected, and a Kubernetes
/// `/readyz` body must be `ok`.
fn judge(answer: &[u8], https: &HttpsCheck, kubernetes: bool) -> (CheckResult, String) {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (
            CheckResult::HttpStatus,
            "no complete HTTP answer (the connection closed, or the head is over 64 KiB)"
                .to_owned(),
        );
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    let Some(status) = status else {
        return (
            CheckResult::HttpStatus,
            format!("not an HTTP/1.x answer: {}", printable(status_line)),
        );
    };
    let chunked = head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let raw_body = &answer[end + 4..];
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    let body = String::from_utf8_lossy(&body);
    if !https.expect_status.contains(&status) {
        // A failing /readyz lists its failed checks as `[-]name failed: ...`.
        let failed: Vec<&str> = body.lines().filter(|l| l.starts_with("[-]")).collect();
        let detail = if failed.is_empty() {
            body.trim().to_owned()
        } else {
            failed.join("; ")
        };
        return (
            CheckResult::HttpStatus,
            printable(&format!("HTTP {status} from {}: {detail}", https.path)),
        );
    }
    if kubernetes && body.trim() != "ok" {
        return (
            CheckResult::HttpStatus,
            printable(&format!(
                "HTTP {status} from /readyz, but the body is not `ok`: {}",
                body.trim()
            )),
        );
    }
    (CheckResult::Ok, String::new())
}

/// The data of a chunked body (as much as is there).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return out;
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        raw = raw.get(take + 2..).unwrap_or_default();
    }
}

/// `s` with control characters escaped, cut at [`MAX_REASON_CHARS`]: an
/// endpoint's answer goes into logs and `/status`.
fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(expect: &[u16]) -> HttpsCheck {
        HttpsCheck {
            path: "/readyz".into(),
            server_name: "api.test".parse().unwrap(),
            ca_file: None,
            insecure_skip_verify: true,
            auth: None,
            expect_status: expect.to_vec(),
        }
    }

    #[test]
    fn answers_are_judged_by_status_and_readyz_body() {
        let h = https(&[200]);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(response_complete(ok));
        assert_eq!(judge(ok, &h, true).0, CheckResult::Ok);
        let shutdown = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n[+]ping ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n";
        let (result, reason) = judge(shutdown, &h, true);
        assert_eq!(result, CheckResult::HttpStatus);
        assert_eq!(
            reason,
            "HTTP 503 from /readyz: [-]shutdown failed: reason withheld"
        );
        let not_ok = b"HTTP/1.1 200 OK\r\n\r\nnot yet";
        assert_eq!(judge(not_ok, &h, true).0, CheckResult::HttpStatus);
        assert_eq!(judge(not_ok, &h, false).0, CheckResult::Ok);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(judge(chunked, &h, true).0, CheckResult::Ok);
        assert_eq!(
            judge(b"SSH-2.0-OpenSSH\r\n\r\n", &h, false).0,
            CheckResult::HttpStatus
        );
        assert_eq!(
            judge(b"HTTP/1.1 204 No", &h, false).0,
            CheckResult::HttpStatus
        );
        assert_eq!(
            judge(
                b"HTTP/1.1 204 No Content\r\n\r\n",
                &https(&[200, 204]),
                false
            )
            .0,
            CheckResult::Ok
        );
        assert!(printable(&"\u{1b}x".repeat(400)).ends_with('…'));
        assert_eq!(bare_name("DnsName(\"api.test\")"), "api.test");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("api.test"), "api.test");
    }
}
