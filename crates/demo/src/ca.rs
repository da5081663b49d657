//! A throwaway certificate authority and the identities (certificate + key)
//! it issues.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throwaway certificate authority, generated in memory (ECDSA P-256).
///
/// Its key never leaves the process; only its certificate ([`Ca::cert_pem`])
/// is meant to be written out, as the trust anchor for clients (`curl
/// --cacert`) and, for mTLS, for servers verifying client certificates.
pub struct Ca {
    common_name: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("common_name", &self.common_name)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new self-signed CA whose subject is `CN=<common_name>`,
    /// valid from yesterday for ten years.
    ///
    /// # Panics
    /// If rcgen cannot generate the key or sign the certificate (it cannot
    /// fail for any input this crate produces, short of a broken RNG).
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 3650);
        let cert = params.self_signed(&key).expect("self-sign CA certificate");
        Ca {
            common_name: common_name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's common name, as given to [`Ca::new`].
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The CA certificate in PEM form (what `curl --cacert` reads).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A rustls root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der())
            .expect("rcgen CA certificate is valid DER");
        roots
    }

    /// Issues a server (serverAuth) certificate for `dns_names`.
    ///
    /// Each entry becomes a DNS SAN (wildcards such as `*.b.demo.test` are
    /// fine), except entries that parse as an IP address, which become IP
    /// SANs: `127.0.0.1` is in the certificate only if it is in the list.
    /// The subject CN is the first name. Valid from yesterday for a year
    /// (short enough for clients that cap server certificate lifetimes).
    ///
    /// # Panics
    /// If `dns_names` is empty or holds a name that is not a valid IA5
    /// string (non-ASCII).
    pub fn server_identity(&self, dns_names: &[&str]) -> Identity {
        assert!(
            !dns_names.is_empty(),
            "a server identity needs at least one name"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(dns_names[0]);
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    (*name)
                        .try_into()
                        .unwrap_or_else(|e| panic!("invalid DNS name {name:?}: {e}")),
                ),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Issues a client (clientAuth) certificate whose subject is
    /// `CN=<common_name>`, as Kubernetes API servers expect for users.
    pub fn client_identity(&self, common_name: &str) -> Identity {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// A rustls client config trusting only this CA (ring provider, TLS 1.2
    /// and 1.3), presenting `client` as its certificate if given. No ALPN is
    /// offered; set `alpn_protocols` on the result to offer some.
    pub fn client_config(&self, client: Option<&Identity>) -> rustls::ClientConfig {
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::crypto_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(self.root_store());
        match client {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(identity.cert_chain(), identity.private_key())
                .expect("rcgen client key matches its certificate"),
        }
    }

    fn issue(&self, mut params: CertificateParams) -> Identity {
        let key = KeyPair::generate().expect("generate leaf key");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

/// A certificate and its private key, in PEM (for files, curl, kubectl) and
/// DER (for rustls) forms.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The private key, PEM PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, DER PKCS#8.
    pub key_der: Vec<u8>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject_cn", &subject_common_name(&self.cert_der))
            .field("cert_der_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// The certificate chain for rustls (just the leaf; clients trust the CA
    /// directly).
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The certificate subject's common name.
    pub fn common_name(&self) -> Option<String> {
        subject_common_name(&self.cert_der)
    }

    /// Writes `<dir>/<stem>.pem` (certificate) and `<dir>/<stem>-key.pem`
    /// (key; mode 0600 on Unix) and returns their paths, in that order.
    /// `dir` must exist. Existing files are overwritten.
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only on creation; tighten a pre-existing file too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    std::fs::write(path, bytes)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from the start of yesterday (UTC; tolerates small clock skew)
/// for `days` days.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let date = |day: i64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today - 1 + days);
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u8, d as u8)
}

/// The subject CN of a DER X.509 certificate, if it has one; `None` if the
/// DER cannot be walked. A minimal DER reader: enough for certificates from
/// ordinary CAs (the peer certificate has already been verified by rustls).
pub(crate) fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (tag, cert, _) = der_tlv(cert_der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    // tbsCertificate: [0] version (optional), serialNumber, signature,
    // issuer, validity, subject, ...
    let mut index = 0;
    loop {
        let (tag, value, rest) = der_tlv(tbs)?;
        tbs = rest;
        if index == 0 && tag == 0xa0 {
            continue;
        }
        if index == 4 {
            if tag != 0x30 {
                return None;
            }
            return name_common_name(value);
        }
        index += 1;
    }
}

/// The first CN in an X.501 Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn name_common_name(mut rdns: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (_, mut set, rest) = der_tlv(rdns)?;
        rdns = rest;
        while !set.is_empty() {
            let (_, atv, rest) = der_tlv(set)?;
            set = rest;
            let (oid_tag, oid, value) = der_tlv(atv)?;
            if oid_tag == 0x06 && oid == CN_OID {
                let (value_tag, value, _) = der_tlv(value)?;
                return match value_tag {
                    // BMPString: UTF-16BE.
                    0x1e => {
                        let units: Vec<u16> = value
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        Some(String::from_utf16_lossy(&units))
                    }
                    // UTF8String, PrintableString, IA5String, T61String...
                    _ => Some(String::from_utf8_lossy(value).into_owned()),
                };
            }
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, rest). Single-byte tags only.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let mut len = 0usize;
        for &b in &input[..count] {
            len = (len << 8) | usize::from(b);
        }
        input = &input[count..];
        len
    };
    if input.len() < len {
        return None;
    }
    let (value, rest) = input.split_at(len);
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn common_names_round_trip() {
        let ca = Ca::new("test ca");
        let client = ca.client_identity("alice");
        assert_eq!(client.common_name().as_deref(), Some("alice"));
        let server = ca.server_identity(&["a.example.test", "127.0.0.1"]);
        assert_eq!(server.common_name().as_deref(), Some("a.example.test"));
        assert_eq!(
            subject_common_name(&ca.cert_der()).as_deref(),
            Some("test ca")
        );
        assert_eq!(subject_common_name(b"\x30\x03junk"), None);
        assert!(!format!("{client:?}").contains("PRIVATE"));
    }
}
