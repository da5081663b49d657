//! `sniroute kubeconfig`: write or merge a kubeconfig context that reaches a
//! route's Kubernetes API server through sniroute, the way
//! `dcos kubernetes cluster kubeconfig` does for DC/OS Kubernetes.
//!
//! One call adds (or replaces) three entries of the same name, by default the
//! route's name: a cluster (`server`, the CA or `insecure-skip-tls-verify`,
//! and for `dcos_service` routes `tls-server-name`), a user (client
//! certificate and key, or a bearer token) and a context binding the two.
//! Everything else in the file stays: other clusters, users and contexts,
//! `preferences`, extensions and keys this module does not know.
//!
//! `tls-server-name` is what makes passthrough work with full verification:
//! kubectl connects to the address in `server` (a public agent), sends the
//! API server's VIP name as SNI (sniroute routes by it: a `dcos_service`
//! route claims that name) and checks the API server's certificate against
//! that name and the cluster's CA. sniroute sees none of it.
//!
//! Modules: this file holds the writer ([`merge`], [`write`]) and the
//! request types; [`cli`] holds the `sniroute kubeconfig` flags and turns
//! them into a [`KubeconfigRequest`] with [`CaChoice::from_flags`] and
//! [`Credentials::from_flags`]. The VIP name of a `dcos_service` route comes
//! from [`config::dcos_vip`], the one function that derives it.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_yaml::{Mapping, Value};

pub mod cli;

/// How kubectl verifies the API server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaChoice {
    /// Verify against this CA (PEM), embedded as `certificate-authority-data`.
    /// For DC/OS Kubernetes: the cluster's CA, e.g. from
    /// `dcos kubernetes cluster kubeconfig` or the DC/OS CA bundle.
    CustomCa(PathBuf),
    /// `insecure-skip-tls-verify: true`: no verification at all.
    InsecureSkipVerify,
    /// Neither: kubectl uses the system's trusted roots.
    SystemRoots,
}

impl CaChoice {
    /// From the command-line flags `--certificate-authority FILE` and
    /// `--insecure-skip-tls-verify`.
    ///
    /// # Errors
    /// [`KubeconfigError::CaAndInsecure`] when both are given.
    pub fn from_flags(
        certificate_authority: Option<PathBuf>,
        insecure_skip_tls_verify: bool,
    ) -> Result<Self, KubeconfigError> {
        match (certificate_authority, insecure_skip_tls_verify) {
            (Some(_), true) => Err(KubeconfigError::CaAndInsecure),
            (Some(ca), false) => Ok(Self::CustomCa(ca)),
            (None, true) => Ok(Self::InsecureSkipVerify),
            (None, false) => Ok(Self::SystemRoots),
        }
    }
}

/// How kubectl authenticates to the API server. Passthrough keeps client
/// certificates working: the TLS session is kubectl's, end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Write no credentials: an existing user entry of the same name is kept
    /// as it is (so re-running to change the URL or CA keeps credentials),
    /// otherwise an empty one is created.
    None,
    /// A client certificate and its key (PEM files), embedded as
    /// `client-certificate-data` / `client-key-data`.
    ClientCert {
        /// The client certificate (PEM).
        cert: PathBuf,
        /// Its private key (PEM).
        key: PathBuf,
    },
    /// A bearer token (`token`).
    Token(String),
}

impl Credentials {
    /// From the command-line flags `--client-certificate FILE`,
    /// `--client-key FILE`, `--token TOKEN` and `--token-file FILE` (the
    /// token file keeps the token out of `ps` and the shell history).
    ///
    /// # Errors
    /// A certificate without a key (or the reverse), more than one kind of
    /// credential, an unreadable token file, or an empty token.
    pub fn from_flags(
        client_certificate: Option<PathBuf>,
        client_key: Option<PathBuf>,
        token: Option<String>,
        token_file: Option<PathBuf>,
    ) -> Result<Self, KubeconfigError> {
        let token = match (token, token_file) {
            (Some(_), Some(_)) => {
                return Err(KubeconfigError::Invalid(
                    "--token and --token-file are mutually exclusive".into(),
                ))
            }
            (Some(t), None) => Some(t),
            (None, Some(path)) => Some(read_text(&path)?.trim().to_owned()),
            (None, None) => None,
        };
        let creds = match (client_certificate, client_key, token) {
            (Some(_), Some(_), Some(_)) => {
                return Err(KubeconfigError::Invalid(
                    "give either a client certificate and key or a token, not both".into(),
                ))
            }
            (Some(cert), Some(key), None) => Self::ClientCert { cert, key },
            (Some(_), None, _) => return Err(KubeconfigError::CertWithoutKey),
            (None, Some(_), _) => return Err(KubeconfigError::KeyWithoutCert),
            (None, None, Some(t)) => Self::Token(t),
            (None, None, None) => Self::None,
        };
        if let Self::Token(t) = &creds {
            validate_token(t)?;
        }
        Ok(creds)
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigRequest {
    /// The route (its `name` in the sniroute config).
    pub route: String,
    /// Where kubectl reaches sniroute: `https://HOST:6443`, HOST a public
    /// agent's address or a DNS name pointing at it.
    pub apiserver_url: String,
    /// How the API server's certificate is verified.
    pub ca: CaChoice,
    /// The name of the cluster, user and context entries; default: the
    /// route's name.
    pub context_name: Option<String>,
    /// Make the context the current one.
    pub activate: bool,
    /// The user's credentials.
    pub credentials: Credentials,
}

impl KubeconfigRequest {
    /// The name of the entries written: `context_name`, else the route's.
    pub fn entry_name(&self) -> &str {
        self.context_name.as_deref().unwrap_or(&self.route)
    }
}

/// Everything that can go wrong; the messages are for the command line.
#[derive(Debug)]
pub enum KubeconfigError {
    /// The route is not in the config.
    UnknownRoute {
        /// The route asked for.
        route: String,
        /// The routes the config has.
        known: Vec<String>,
    },
    /// The API server URL is not `https://HOST[:PORT][/PATH]`.
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CA file together with `--insecure-skip-tls-verify`.
    CaAndInsecure,
    /// A client certificate without its key.
    CertWithoutKey,
    /// A client key without its certificate.
    KeyWithoutCert,
    /// Any other invalid input.
    Invalid(String),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CA, certificate or key file is not the PEM it should be.
    NotPem {
        /// The file.
        path: PathBuf,
        /// What was expected, e.g. "a PEM certificate".
        expected: &'static str,
    },
    /// The existing kubeconfig is not YAML, or not shaped like a kubeconfig.
    Existing(String),
    /// Serialising the result failed.
    Serialize(serde_yaml::Error),
    /// The sniroute config did not load.
    Config(config::ConfigError),
    /// No kubeconfig path was given and none follows from the environment.
    NoKubeconfigPath,
}

impl fmt::Display for KubeconfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRoute { route, known } if known.is_empty() => {
                write!(f, "route {route:?} is not in the config, which has no routes")
            }
            Self::UnknownRoute { route, known } => write!(
                f,
                "route {route:?} is not in the config; its routes are: {}",
                known.join(", ")
            ),
            Self::BadUrl { url, reason } => write!(
                f,
                "invalid API server URL {url:?}: {reason} (expected https://HOST:6443, HOST a public agent running sniroute)"
            ),
            Self::CaAndInsecure => f.write_str(
                "a certificate authority and --insecure-skip-tls-verify exclude each other: \
                 verify against the CA, or skip verification",
            ),
            Self::CertWithoutKey => f.write_str("a client certificate needs its key (--client-key)"),
            Self::KeyWithoutCert => {
                f.write_str("a client key needs its certificate (--client-certificate)")
            }
            Self::Invalid(msg) => f.write_str(msg),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::NotPem { path, expected } => {
                write!(f, "{}: not {expected}", path.display())
            }
            Self::Existing(msg) => write!(f, "the existing kubeconfig: {msg}"),
            Self::Serialize(e) => write!(f, "cannot write the kubeconfig: {e}"),
            Self::Config(e) => write!(f, "{e}"),
            Self::NoKubeconfigPath => f.write_str(
                "no kubeconfig path: give --kubeconfig, or set $KUBECONFIG or $HOME",
            ),
        }
    }
}

impl std::error::Error for KubeconfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Serialize(e) => Some(e),
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

/// The `tls-server-name` for `route`: the API server's VIP name for a
/// `dcos_service` route (the name its certificate carries, and one the route
/// claims), `None` for other routes (kubectl then sends the URL's host).
///
/// # Errors
/// [`KubeconfigError::UnknownRoute`] naming the config's routes.
pub fn tls_server_name(config: &Config, route: &str) -> Result<Option<String>, KubeconfigError> {
    let Some(rc) = config.route(route) else {
        return Err(KubeconfigError::UnknownRoute {
            route: route.to_owned(),
            known: config.routes.iter().map(|r| r.name.clone()).collect(),
        });
    };
    match rc.dcos_service.as_deref() {
        None => Ok(None),
        // A loaded config has validated the path; a hand-built one that
        // did not is reported, not written.
        Some(service) => config::dcos_vip(service)
            .map(|vip| Some(vip.as_str().to_owned()))
            .map_err(|e| KubeconfigError::Invalid(e.to_string())),
    }
}

/// Warnings about a request that would not reach its route: for a route
/// without `dcos_service` kubectl sends the URL's host as SNI, so that host
/// must be one of the route's server names (or the route the default).
///
/// # Errors
/// As [`tls_server_name`], and a malformed URL.
pub fn warnings(config: &Config, req: &KubeconfigRequest) -> Result<Vec<String>, KubeconfigError> {
    let mut out = Vec::new();
    if tls_server_name(config, &req.route)?.is_some() {
        return Ok(out);
    }
    let host = url_host(&req.apiserver_url)?;
    let Some(rc) = config.route(&req.route) else {
        return Ok(out);
    };
    let names: Vec<String> = rc.server_names.iter().map(ToString::to_string).collect();
    let ip = host.parse::<std::net::IpAddr>().is_ok();
    let normalised = host.trim_end_matches('.').to_ascii_lowercase();
    if ip || !rc.server_names.iter().any(|p| p.matches(&normalised)) {
        let sends = if ip {
            "no server name (the URL's host is an IP address)".to_owned()
        } else {
            format!("the server name {host:?}")
        };
        out.push(format!(
            "kubectl will send {sends}, which route {:?} does not claim (its server names: {}); \
             unless that route is a default route, use a URL whose host is one of them",
            req.route,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        ));
    }
    Ok(out)
}

/// Merges the request into `existing` (a kubeconfig's YAML; `None` or empty
/// for a new file) and returns the new YAML. Reads the CA, certificate and
/// key files the request names.
///
/// Entries named [`KubeconfigRequest::entry_name`] in `clusters`, `users` and
/// `contexts` are replaced in place (others are kept, in order; new ones go
/// last); with [`Credentials::None`] an existing user entry is kept.
/// `current-context` is set only when `activate`.
///
/// # Errors
/// Invalid requests (URL not `https://`, empty names or token), unreadable or
/// non-PEM files, and an existing kubeconfig that is not a YAML mapping with
/// lists where kubeconfigs have them.
pub fn merge(
    existing: Option<&str>,
    req: &KubeconfigRequest,
    tls_server_name: Option<&str>,
) -> Result<String, KubeconfigError> {
    url_host(&req.apiserver_url)?;
    let name = req.entry_name();
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(KubeconfigError::Invalid(format!(
            "invalid context name {name:?}"
        )));
    }
    if let Some(sni) = tls_server_name {
        if sni.is_empty() || sni.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KubeconfigError::Invalid(format!(
                "invalid TLS server name {sni:?}"
            )));
        }
    }

    // Everything read up front: no half-built result on a bad file.
    let cluster = cluster_entry(req, tls_server_name)?;
    let user = user_entry(&req.credentials)?;

    let mut doc = match existing {
        None => Mapping::new(),
        Some(text) => match serde_yaml::from_str::<Value>(text) {
            Ok(Value::Null) => Mapping::new(),
            Ok(Value::Mapping(m)) => m,
            Ok(_) => return Err(KubeconfigError::Existing("not a YAML mapping".into())),
            Err(e) => return Err(KubeconfigError::Existing(e.to_string())),
        },
    };
    if doc.is_empty() {
        doc.insert(s("apiVersion"), s("v1"));
        doc.insert(s("kind"), s("Config"));
        doc.insert(s("preferences"), Value::Mapping(Mapping::new()));
    }
    for (key, value) in [("apiVersion", "v1"), ("kind", "Config")] {
        if !doc.contains_key(key) {
            doc.insert(s(key), s(value));
        }
    }

    upsert(&mut doc, "clusters", "cluster", name, cluster, true)?;
    match user {
        Some(user) => upsert(&mut doc, "users", "user", name, user, true)?,
        None => upsert(&mut doc, "users", "user", name, Mapping::new(), false)?,
    }
    let mut context = Mapping::new();
    context.insert(s("cluster"), s(name));
    context.insert(s("user"), s(name));
    upsert(&mut doc, "contexts", "context", name, context, true)?;
    if req.activate {
        doc.insert(s("current-context"), s(name));
    }
    serde_yaml::to_string(&Value::Mapping(doc)).map_err(KubeconfigError::Serialize)
}

/// What [`write`] did, for the command line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The file written.
    pub path: PathBuf,
    /// The name of the cluster, user and context entries.
    pub context: String,
    /// The `tls-server-name` written, if any.
    pub tls_server_name: Option<String>,
    /// Whether the context became the current one.
    pub activated: bool,
    /// Things that may keep kubectl from reaching the route.
    pub warnings: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kubeconfig context {:?} written to {}",
            self.context,
            self.path.display()
        )?;
        if let Some(sni) = &self.tls_server_name {
            write!(f, " (tls-server-name {sni})")?;
        }
        if self.activated {
            write!(
                f,
                "; it is now the current context: try `kubectl get nodes`"
            )?;
        } else {
            write!(
                f,
                "; use it with `kubectl --context {} get nodes`",
                self.context
            )?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

/// The kubeconfig kubectl would write to: with `$KUBECONFIG` (a
/// colon-separated list) the first file that exists, else the last one;
/// without it `$HOME/.kube/config`. `None` when neither variable is set.
pub fn default_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(list) = env("KUBECONFIG").filter(|v| !v.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Some(p.clone());
        }
        if let Some(p) = paths.last() {
            return Some(p.clone());
        }
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".kube").join("config"))
}

/// Merges the request into the kubeconfig at `path` (created, with its
/// directory, if missing) and writes it back atomically with mode 0600.
/// A symlinked kubeconfig is updated where the link points.
///
/// # Errors
/// As [`tls_server_name`] and [`merge`], and I/O errors.
pub fn write(
    config: &Config,
    req: &KubeconfigRequest,
    path: &Path,
) -> Result<Outcome, KubeconfigError> {
    let sni = tls_server_name(config, &req.route)?;
    let warnings = warnings(config, req)?;
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let existing = match std::fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(KubeconfigError::Io {
                path: target,
                source,
            })
        }
    };
    let yaml = merge(existing.as_deref(), req, sni.as_deref())?;
    write_atomically(&target, yaml.as_bytes()).map_err(|source| KubeconfigError::Io {
        path: target.clone(),
        source,
    })?;
    Ok(Outcome {
        path: target,
        context: req.entry_name().to_owned(),
        tls_server_name: sni,
        activated: req.activate,
        warnings,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{file_name}.sniroute-{}.tmp", std::process::id()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn cluster_entry(
    req: &KubeconfigRequest,
    tls_server_name: Option<&str>,
) -> Result<Mapping, KubeconfigError> {
    let mut cluster = Mapping::new();
    cluster.insert(s("server"), s(&req.apiserver_url));
    match &req.ca {
        CaChoice::CustomCa(path) => {
            let pem = read_pem(path, PemKind::Certificates)?;
            cluster.insert(s("certificate-authority-data"), s(&base64(&pem)));
        }
        CaChoice::InsecureSkipVerify => {
            cluster.insert(s("insecure-skip-tls-verify"), Value::Bool(true));
        }
        CaChoice::SystemRoots => {}
    }
    if let Some(sni) = tls_server_name {
        cluster.insert(s("tls-server-name"), s(sni));
    }
    Ok(cluster)
}

/// The user entry's body, or `None` for "keep what is there".
fn user_entry(credentials: &Credentials) -> Result<Option<Mapping>, KubeconfigError> {
    let mut user = Mapping::new();
    match credentials {
        Credentials::None => return Ok(None),
        Credentials::ClientCert { cert, key } => {
            let cert_pem = read_pem(cert, PemKind::Certificates)?;
            let key_pem = read_pem(key, PemKind::PrivateKey)?;
            user.insert(s("client-certificate-data"), s(&base64(&cert_pem)));
            user.insert(s("client-key-data"), s(&base64(&key_pem)));
        }
        Credentials::Token(token) => {
            validate_token(token)?;
            user.insert(s("token"), s(token));
        }
    }
    Ok(Some(user))
}

fn validate_token(token: &str) -> Result<(), KubeconfigError> {
    if token.is_empty() {
        return Err(KubeconfigError::Invalid("the token is empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KubeconfigError::Invalid(
            "the token contains whitespace or control characters".into(),
        ));
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, KubeconfigError> {
    std::fs::read_to_string(path).map_err(|source| KubeconfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What a PEM file must hold.
#[derive(Clone, Copy, Debug)]
enum PemKind {
    /// One or more certificates.
    Certificates,
    /// A private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    PrivateKey,
}

/// Reads a PEM file and checks, by parsing it, that it holds what `kind`
/// says; returns the file's bytes, which kubeconfig embeds as they are.
fn read_pem(path: &Path, kind: PemKind) -> Result<Vec<u8>, KubeconfigError> {
    let bytes = std::fs::read(path).map_err(|source| KubeconfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (ok, expected) = match kind {
        PemKind::Certificates => {
            let mut certs = CertificateDer::pem_slice_iter(&bytes);
            let ok = matches!(certs.next(), Some(Ok(_))) && certs.all(|c| c.is_ok());
            (ok, "a PEM certificate (BEGIN CERTIFICATE)")
        }
        PemKind::PrivateKey => (
            PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
            "a PEM private key (BEGIN ... PRIVATE KEY)",
        ),
    };
    if !ok {
        return Err(KubeconfigError::NotPem {
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

/// Replaces (in place) or appends the entry `{name, <body_key>: body}` in
/// the list `doc[list_key]`. With `replace` false an existing entry is kept.
fn upsert(
    doc: &mut Mapping,
    list_key: &str,
    body_key: &str,
    name: &str,
    body: Mapping,
    replace: bool,
) -> Result<(), KubeconfigError> {
    let key = s(list_key);
    if matches!(doc.get(&key), None | Some(Value::Null)) {
        doc.insert(key.clone(), Value::Sequence(Vec::new()));
    }
    let Some(Value::Sequence(list)) = doc.get_mut(&key) else {
        return Err(KubeconfigError::Existing(format!(
            "`{list_key}` is not a list"
        )));
    };
    let mut entry = Mapping::new();
    entry.insert(s("name"), s(name));
    entry.insert(s(body_key), Value::Mapping(body));
    let position = list
        .iter()
        .position(|e| e.get("name").and_then(Value::as_str) == Some(name));
    match position {
        Some(_) if !replace => {}
        Some(i) => list[i] = Value::Mapping(entry),
        None => list.push(Value::Mapping(entry)),
    }
    Ok(())
}

/// The host of `https://HOST[:PORT][/PATH]`, without brackets for IPv6.
fn url_host(url: &str) -> Result<&str, KubeconfigError> {
    let bad = |reason| KubeconfigError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    let Some(scheme_end) = url.find("://") else {
        return Err(bad("it has no scheme; the API server speaks https"));
    };
    if !url[..scheme_end].eq_ignore_ascii_case("https") {
        return Err(bad(
            "the scheme must be https (sniroute passes TLS through; kubectl must speak it)",
        ));
    }
    let rest = &url[scheme_end + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("user information in the URL is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err(bad("unterminated IPv6 address"));
        };
        let after = &v6[end + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("garbage after the IPv6 address"))?,
            ),
        };
        (&v6[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
    }
    Ok(host)
}

/// Standard base64 with padding (RFC 4648 §4), as kubeconfig `*-data` keys
/// expect.
fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA_PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBZHVtbXlDQQ==\n-----END CERTIFICATE-----\n";
    const CERT_PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBZHVtbXlDbGllbnQ=\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str =
        "-----BEGIN PRIVATE KEY-----\nMIIEZHVtbXlLZXk=\n-----END PRIVATE KEY-----\n";

    const CONFIG: &str = r#"
listeners: ["127.0.0.1:6443"]
routes:
  - name: dev-kubernetes01
    server_names: ["devkubernetes01.example.com"]
    dcos_service: dev/kubernetes01
  - name: staging
    server_names: ["*.staging.example.com", "staging.example.com"]
    upstreams: ["10.0.4.11:6443"]
"#;

    struct Files {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&ca, CA_PEM).unwrap();
        std::fs::write(&cert, CERT_PEM).unwrap();
        std::fs::write(&key, KEY_PEM).unwrap();
        Files {
            _dir: dir,
            ca,
            cert,
            key,
        }
    }

    fn request(route: &str, ca: CaChoice, credentials: Credentials) -> KubeconfigRequest {
        KubeconfigRequest {
            route: route.to_owned(),
            apiserver_url: "https://public-agent.example.com:6443".to_owned(),
            ca,
            context_name: None,
            activate: true,
            credentials,
        }
    }

    fn parse(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn entry<'a>(doc: &'a Value, list: &str, name: &str) -> &'a Value {
        doc[list]
            .as_sequence()
            .unwrap_or_else(|| panic!("{list} is not a list"))
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {list} entry {name}"))
    }

    fn names(doc: &Value, list: &str) -> Vec<String> {
        doc[list]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    }

    const EXISTING: &str = r#"
apiVersion: v1
kind: Config
preferences:
  colors: true
clusters:
  - name: prod
    cluster:
      server: https://prod.example.com:6443
      certificate-authority: /etc/prod-ca.pem
  - name: dev-kubernetes01
    cluster:
      server: https://old.example.com:6443
      insecure-skip-tls-verify: true
      proxy-url: socks5://localhost:1080
users:
  - name: prod
    user:
      exec:
        apiVersion: client.authentication.k8s.io/v1
        command: prod-login
  - name: dev-kubernetes01
    user:
      token: old-token
contexts:
  - name: prod
    context:
      cluster: prod
      user: prod
      namespace: web
  - name: dev-kubernetes01
    context:
      cluster: dev-kubernetes01
      user: dev-kubernetes01
      namespace: old
current-context: prod
x-unknown-key:
  kept: [1, 2]
"#;

    #[test]
    fn fresh_file_with_ca_and_client_cert() {
        let f = files();
        let req = request(
            "dev-kubernetes01",
            CaChoice::CustomCa(f.ca.clone()),
            Credentials::ClientCert {
                cert: f.cert.clone(),
                key: f.key.clone(),
            },
        );
        let yaml = merge(
            None,
            &req,
            Some("apiserver.devkubernetes01.l4lb.thisdcos.directory"),
        )
        .unwrap();
        let doc = parse(&yaml);
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["kind"], "Config");
        assert_eq!(doc["current-context"], "dev-kubernetes01");
        let cluster = &entry(&doc, "clusters", "dev-kubernetes01")["cluster"];
        assert_eq!(cluster["server"], "https://public-agent.example.com:6443");
        assert_eq!(
            cluster["certificate-authority-data"],
            base64(CA_PEM.as_bytes()).as_str()
        );
        assert_eq!(
            cluster["tls-server-name"],
            "apiserver.devkubernetes01.l4lb.thisdcos.directory"
        );
        assert!(cluster.get("insecure-skip-tls-verify").is_none());
        let user = &entry(&doc, "users", "dev-kubernetes01")["user"];
        assert_eq!(
            user["client-certificate-data"],
            base64(CERT_PEM.as_bytes()).as_str()
        );
        assert_eq!(user["client-key-data"], base64(KEY_PEM.as_bytes()).as_str());
        let context = &entry(&doc, "contexts", "dev-kubernetes01")["context"];
        assert_eq!(context["cluster"], "dev-kubernetes01");
        assert_eq!(context["user"], "dev-kubernetes01");
        // Empty and whitespace-only files count as fresh too.
        assert_eq!(
            merge(Some(""), &req, None).unwrap(),
            merge(Some("\n# empty\n"), &req, None).unwrap()
        );
    }

    #[test]
    fn merge_keeps_other_entries_and_unknown_keys() {
        let req = request(
            "staging",
            CaChoice::InsecureSkipVerify,
            Credentials::Token("t0ken".into()),
        );
        let doc = parse(&merge(Some(EXISTING), &req, None).unwrap());
        assert_eq!(
            names(&doc, "clusters"),
            ["prod", "dev-kubernetes01", "staging"]
        );
        assert_eq!(
            names(&doc, "users"),
            ["prod", "dev-kubernetes01", "staging"]
        );
        assert_eq!(
            names(&doc, "contexts"),
            ["prod", "dev-kubernetes01", "staging"]
        );
        assert_eq!(
            entry(&doc, "clusters", "prod")["cluster"]["certificate-authority"],
            "/etc/prod-ca.pem"
        );
        assert_eq!(
            entry(&doc, "users", "prod")["user"]["exec"]["command"],
            "prod-login"
        );
        assert_eq!(
            entry(&doc, "contexts", "prod")["context"]["namespace"],
            "web"
        );
        assert_eq!(doc["preferences"]["colors"], true);
        assert_eq!(doc["x-unknown-key"]["kept"][1], 2);
        let cluster = &entry(&doc, "clusters", "staging")["cluster"];
        assert_eq!(cluster["insecure-skip-tls-verify"], true);
        assert!(cluster.get("certificate-authority-data").is_none());
        assert!(cluster.get("tls-server-name").is_none());
        assert_eq!(entry(&doc, "users", "staging")["user"]["token"], "t0ken");
        assert_eq!(doc["current-context"], "staging");
    }

    #[test]
    fn same_name_entries_are_replaced_in_place() {
        let f = files();
        let req = request(
            "dev-kubernetes01",
            CaChoice::CustomCa(f.ca.clone()),
            Credentials::Token("new".into()),
        );
        let doc = parse(
            &merge(
                Some(EXISTING),
                &req,
                Some("apiserver.devkubernetes01.l4lb.thisdcos.directory"),
            )
            .unwrap(),
        );
        assert_eq!(names(&doc, "clusters"), ["prod", "dev-kubernetes01"]);
        assert_eq!(names(&doc, "users"), ["prod", "dev-kubernetes01"]);
        assert_eq!(names(&doc, "contexts"), ["prod", "dev-kubernetes01"]);
        let cluster = &entry(&doc, "clusters", "dev-kubernetes01")["cluster"];
        assert_eq!(cluster["server"], "https://public-agent.example.com:6443");
        // The old entry is gone entirely, not patched.
        assert!(cluster.get("insecure-skip-tls-verify").is_none());
        assert!(cluster.get("proxy-url").is_none());
        assert_eq!(
            entry(&doc, "users", "dev-kubernetes01")["user"]["token"],
            "new"
        );
        assert!(entry(&doc, "contexts", "dev-kubernetes01")["context"]
            .get("namespace")
            .is_none());
    }

    #[test]
    fn no_activate_keeps_current_context() {
        let mut req = request("staging", CaChoice::SystemRoots, Credentials::None);
        req.activate = false;
        let doc = parse(&merge(Some(EXISTING), &req, None).unwrap());
        assert_eq!(doc["current-context"], "prod");
        assert_eq!(
            names(&doc, "contexts"),
            ["prod", "dev-kubernetes01", "staging"]
        );
        // A fresh file without activation has no current context.
        let doc = parse(&merge(None, &req, None).unwrap());
        assert!(doc.get("current-context").is_none());
    }

    #[test]
    fn no_credentials_keep_an_existing_user() {
        let req = request("dev-kubernetes01", CaChoice::SystemRoots, Credentials::None);
        let doc = parse(&merge(Some(EXISTING), &req, None).unwrap());
        assert_eq!(
            entry(&doc, "users", "dev-kubernetes01")["user"]["token"],
            "old-token"
        );
        // And create an empty one when there is none.
        let req = request("staging", CaChoice::SystemRoots, Credentials::None);
        let doc = parse(&merge(Some(EXISTING), &req, None).unwrap());
        assert_eq!(
            entry(&doc, "users", "staging")["user"],
            Value::Mapping(Mapping::new())
        );
        assert_eq!(
            entry(&doc, "contexts", "staging")["context"]["user"],
            "staging"
        );
    }

    #[test]
    fn context_name_names_all_three_entries() {
        let mut req = request("dev-kubernetes01", CaChoice::SystemRoots, Credentials::None);
        req.context_name = Some("dev01".into());
        let doc = parse(&merge(None, &req, None).unwrap());
        assert_eq!(names(&doc, "clusters"), ["dev01"]);
        assert_eq!(names(&doc, "users"), ["dev01"]);
        assert_eq!(names(&doc, "contexts"), ["dev01"]);
        assert_eq!(doc["current-context"], "dev01");
    }

    #[test]
    fn dcos_route_gets_tls_server_name() {
        let config = Config::from_yaml_str(CONFIG, "test").unwrap();
        assert_eq!(
            tls_server_name(&config, "dev-kubernetes01")
                .unwrap()
                .as_deref(),
            Some("apiserver.devkubernetes01.l4lb.thisdcos.directory")
        );
        assert_eq!(tls_server_name(&config, "staging").unwrap(), None);
        // The name is one the route claims.
        let vip = tls_server_name(&config, "dev-kubernetes01")
            .unwrap()
            .unwrap();
        assert!(config
            .route("dev-kubernetes01")
            .unwrap()
            .server_names
            .iter()
            .any(|p| p.matches(&vip)));
        let err = tls_server_name(&config, "nope").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"nope\""), "{msg}");
        assert!(msg.contains("dev-kubernetes01, staging"), "{msg}");

        // End to end through write(): the file gets the VIP name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config");
        let req = request(
            "dev-kubernetes01",
            CaChoice::InsecureSkipVerify,
            Credentials::None,
        );
        let outcome = write(&config, &req, &path).unwrap();
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        let doc = parse(&std::fs::read_to_string(&path).unwrap());
        let cluster = &entry(&doc, "clusters", "dev-kubernetes01")["cluster"];
        assert_eq!(
            cluster["tls-server-name"],
            "apiserver.devkubernetes01.l4lb.thisdcos.directory"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second write merges into the first.
        let req = request("staging", CaChoice::InsecureSkipVerify, Credentials::None);
        let outcome = write(&config, &req, &path).unwrap();
        // public-agent.example.com is not one of staging's names.
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        let doc = parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(names(&doc, "contexts"), ["dev-kubernetes01", "staging"]);
    }

    #[test]
    fn warnings_for_urls_the_route_does_not_claim() {
        let config = Config::from_yaml_str(CONFIG, "test").unwrap();
        let mut req = request("staging", CaChoice::SystemRoots, Credentials::None);
        for (url, warn) in [
            ("https://staging.example.com:6443", false),
            ("https://a.staging.example.com:6443", false),
            ("https://STAGING.example.com.:6443", false),
            ("https://other.example.com:6443", true),
            ("https://10.0.6.21:6443", true),
            ("https://[2001:db8::1]:6443", true),
        ] {
            req.apiserver_url = url.into();
            assert_eq!(!warnings(&config, &req).unwrap().is_empty(), warn, "{url}");
        }
        // dcos routes send the VIP name whatever the URL.
        req.route = "dev-kubernetes01".into();
        req.apiserver_url = "https://10.0.6.21:6443".into();
        assert!(warnings(&config, &req).unwrap().is_empty());
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let f = files();
        // Not https.
        for url in [
            "http://a.example.com:6443",
            "a.example.com:6443",
            "https://",
            "https://:6443",
            "https://a:0",
            "https://a:x",
            "https://a b",
        ] {
            let mut req = request("staging", CaChoice::SystemRoots, Credentials::None);
            req.apiserver_url = url.into();
            assert!(
                matches!(merge(None, &req, None), Err(KubeconfigError::BadUrl { .. })),
                "{url}"
            );
        }
        // CA and insecure.
        assert!(matches!(
            CaChoice::from_flags(Some(f.ca.clone()), true),
            Err(KubeconfigError::CaAndInsecure)
        ));
        assert_eq!(
            CaChoice::from_flags(None, true).unwrap(),
            CaChoice::InsecureSkipVerify
        );
        assert_eq!(
            CaChoice::from_flags(None, false).unwrap(),
            CaChoice::SystemRoots
        );
        // Certificate without key, and the reverse.
        assert!(matches!(
            Credentials::from_flags(Some(f.cert.clone()), None, None, None),
            Err(KubeconfigError::CertWithoutKey)
        ));
        assert!(matches!(
            Credentials::from_flags(None, Some(f.key.clone()), None, None),
            Err(KubeconfigError::KeyWithoutCert)
        ));
        assert!(Credentials::from_flags(
            Some(f.cert.clone()),
            Some(f.key.clone()),
            Some("t".into()),
            None
        )
        .is_err());
        assert!(Credentials::from_flags(None, None, Some(String::new()), None).is_err());
        assert_eq!(
            Credentials::from_flags(None, None, None, None).unwrap(),
            Credentials::None
        );
        // A token file is read and trimmed.
        let token_file = f.ca.with_file_name("token");
        std::fs::write(&token_file, "abc.def\n").unwrap();
        assert_eq!(
            Credentials::from_flags(None, None, None, Some(token_file)).unwrap(),
            Credentials::Token("abc.def".into())
        );
        // A key where the CA should be.
        let req = request(
            "staging",
            CaChoice::CustomCa(f.key.clone()),
            Credentials::None,
        );
        assert!(matches!(
            merge(None, &req, None),
            Err(KubeconfigError::NotPem { .. })
        ));
        // A missing file.
        let req = request(
            "staging",
            CaChoice::CustomCa(f.ca.with_file_name("missing.pem")),
            Credentials::None,
        );
        assert!(matches!(
            merge(None, &req, None),
            Err(KubeconfigError::Io { .. })
        ));
        // An existing file that is not a kubeconfig.
        let req = request("staging", CaChoice::SystemRoots, Credentials::None);
        assert!(matches!(
            merge(Some("[1, 2]"), &req, None),
            Err(KubeconfigError::Existing(_))
        ));
        assert!(matches!(
            merge(Some("clusters: 3"), &req, None),
            Err(KubeconfigError::Existing(_))
        ));
        assert!(matches!(
            merge(Some("a: [b"), &req, None),
            Err(KubeconfigError::Existing(_))
        ));
    }

    #[test]
    fn default_path_follows_kubectl() {
        let dir = tempfile::tempdir().unwrap();
        let exists = dir.path().join("exists");
        std::fs::write(&exists, "").unwrap();
        let missing1 = dir.path().join("missing1");
        let missing2 = dir.path().join("missing2");
        let list = |paths: &[&Path]| std::env::join_paths(paths).unwrap().into_string().unwrap();
        let l = list(&[&missing1, &exists, &missing2]);
        assert_eq!(
            default_path(|k| (k == "KUBECONFIG").then(|| l.clone())),
            Some(exists.clone())
        );
        let l = list(&[&missing1, &missing2]);
        assert_eq!(
            default_path(|k| (k == "KUBECONFIG").then(|| l.clone())),
            Some(missing2)
        );
        assert_eq!(
            default_path(|k| (k == "HOME").then(|| "/home/u".to_owned())),
            Some(PathBuf::from("/home/u/.kube/config"))
        );
        assert_eq!(default_path(|_| None), None);
    }
}
