//! From the raw structs to a [`Config`]: defaults, range checks and every
//! check that involves more than one node, each error pointed at its node
//! through the [`SourceMap`].

use std::cell::OnceCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use super::error::{ConfigError, Path};
use std::path::PathBuf;

use super::raw::{
    Count, RawAdmin, RawCheckKind, RawConfig, RawDiscoveryAuth, RawHealthCheck, RawHealthCheckMap,
    RawListener, RawOutlierDetection, RawRoute,
};
use super::source_map::{locate_by_libyaml, second_document_by_libyaml, At, Pos, SourceMap};
use super::values::{NamePattern, UpstreamAddr, DCOS_APISERVER_PORT};
use super::{
    AcceptProxyProtocol, AdminConfig, CheckAuth, CheckKind, Config, ConfigSource, DiscoveryAuth,
    HealthCheck, Host, HttpsCheck, Limits, ListenerConfig, OutlierDetection, RouteConfig,
    ServerName, Timeouts, MAX_ACCEPT_GRACE, MAX_CLIENT_HELLO_BYTES, MAX_TCP_USER_TIMEOUT,
    MIN_CLIENT_HELLO_BYTES,
};

/// The largest credentials or CA file accepted.
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// `path` is a regular file of a sensible size that can be opened.
fn check_file(path: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!("{} bytes is too large", meta.len()));
    }
    std::fs::File::open(path).map_err(|e| e.to_string())?;
    Ok(())
}

/// `path` holds at least one certificate in PEM, and nothing unreadable.
fn check_ca_file(path: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    check_file(path)?;
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (`BEGIN CERTIFICATE` block) in it".to_owned());
    }
    Ok(())
}

const MORE_THAN_ONE_DOCUMENT: &str =
    "the text holds more than one YAML document (`---`): a config is one document";

/// The line and column (from 1, columns in characters) of byte `offset` of
/// `text`, counting lines as libyaml does (YAML 1.1: `\n`, `\r\n`, `\r`,
/// U+0085, U+2028 and U+2029 end a line); `None` past the end or inside a
/// character.
fn position_of_offset(text: &str, offset: usize) -> Option<(usize, usize)> {
    let before = text.get(..offset)?;
    let (mut line, mut column) = (1, 1);
    let mut chars = before.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
    }
    Some((line, column))
}

/// Turns problems into [`ConfigError`]s that point into one YAML text.
pub(crate) struct Checker<'a> {
    text: &'a str,
    file: &'a str,
    /// Built on the first error that needs it.
    map: OnceCell<Option<SourceMap>>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(text: &'a str, file: &'a str) -> Self {
        Self {
            text,
            file,
            map: OnceCell::new(),
        }
    }

    fn map(&self) -> Option<&SourceMap> {
        self.map
            .get_or_init(|| SourceMap::build(self.text))
            .as_ref()
    }

    /// The position of the node at `path`: from the index, else (for a
    /// text the index cannot read) from libyaml.
    fn locate(&self, path: &Path, at: At) -> Option<Pos> {
        match self.map() {
            Some(map) => map.locate(path, at),
            None => locate_by_libyaml(self.text, path, at),
        }
    }

    /// An error about the node at `path`.
    fn at(&self, path: &Path, at: At, message: impl Into<String>) -> ConfigError {
        let pos = self.locate(path, at).map(Pos::pair);
        ConfigError::new(self.file, pos, path, message)
    }

    /// Where an earlier node is, for messages that refer to it: `on line
    /// N`, or `at PATH` should its position be unknown.
    fn where_is(&self, path: &Path) -> String {
        match self.locate(path, At::Value) {
            Some(pos) => format!("on line {}", pos.line),
            None => format!("at {path}"),
        }
    }

    /// A serde error: serde_yaml's position (or the index's, where serde_yaml
    /// has none or a vague one) and serde_path_to_error's path, with the
    /// message freed of serde_yaml's own copies of both.
    pub(crate) fn serde_error(
        &self,
        error: &serde_path_to_error::Error<serde_yaml::Error>,
    ) -> ConfigError {
        // Empty: serde_yaml found no document, or a null one (which it
        // reads as a mapping without keys) where the index found no content
        // either. Where the two parsers disagree (an anchor without a node,
        // tabs that libyaml refuses), serde_yaml's syntax error and its
        // position are the better answer.
        let inner_text = error.inner().to_string();
        let no_document = inner_text.starts_with("EOF while parsing a value");
        let null = inner_text.starts_with("invalid type: unit value")
            || inner_text.starts_with("missing field `");
        let empty = match self.map() {
            Some(map) => (no_document || null) && map.is_empty_document(),
            None => no_document,
        };
        if empty {
            // An empty first document followed by another is not an empty
            // file: serde_yaml stops at the first, so say why.
            let second = match self.map() {
                Some(map) => map.second_document(),
                None => second_document_by_libyaml(self.text),
            };
            return match second {
                None => ConfigError::whole_file(
                    self.file,
                    "the configuration is empty: it needs at least `listeners` and `routes`",
                ),
                Some(pos) => ConfigError::new(
                    self.file,
                    Some(pos.pair()),
                    &Path::root(),
                    MORE_THAN_ONE_DOCUMENT,
                ),
            };
        }
        let mut path = Path::from_serde(error.path());
        let inner = error.inner();
        let location = inner.location();
        let mut message = inner.to_string();
        if let Some(loc) = &location {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(i) = message.find(&suffix) {
                message.replace_range(i..i + suffix.len(), "");
            }
        }
        // serde_yaml prefixes its messages with the path it tracks itself,
        // which is the path of the node or of one of its ancestors.
        for len in (1..=path.0.len()).rev() {
            let prefix = format!("{}: ", Path(path.0[..len].to_vec()).serde_yaml_form());
            if let Some(rest) = message.strip_prefix(&prefix) {
                message = rest.to_owned();
                break;
            }
        }
        for (serde_word, ours) in [
            ("unknown field ", "unknown key "),
            ("missing field ", "missing required key "),
            ("duplicate field ", "duplicate key "),
            ("invalid type: unit value", "invalid type: empty value"),
        ] {
            if let Some(rest) = message.strip_prefix(serde_word) {
                message = format!("{ours}{rest}");
            }
        }
        let mut pos = location.map(|l| (l.line(), l.column()));
        // libyaml's reader errors (a control character) carry a byte
        // offset, not a position: serde_yaml says line 1, column 1.
        if let Some((head, offset)) = message.rsplit_once(" at position ") {
            if let (Some((1, 1)), Ok(offset)) = (pos, offset.parse::<usize>()) {
                if let Some(at) = position_of_offset(self.text, offset) {
                    pos = Some(at);
                    message = head.to_owned();
                }
            }
        }
        if let Some(key) = message
            .strip_prefix("duplicate key `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            // serde_yaml points at the start of the mapping; point at the
            // second occurrence of the key instead.
            let key = key.to_owned();
            if let Some(p) = self.map().and_then(|m| m.duplicate_key(&path, &key)) {
                pos = Some(p.pair());
            }
            path = path.key(&key);
        }
        if pos.is_none() && message.contains("more than one document") {
            message = MORE_THAN_ONE_DOCUMENT.to_owned();
            pos = self
                .map()
                .and_then(SourceMap::second_document)
                .map(|p| p.pair())
                .or_else(|| second_document_by_libyaml(self.text).map(|p| p.pair()));
        }
        if pos.is_none() {
            pos = self.locate(&path, At::Value).map(Pos::pair);
        }
        ConfigError::new(self.file, pos, &path, message)
    }

    /// Converts and validates.
    pub(crate) fn convert(
        &self,
        raw: RawConfig,
        source: ConfigSource,
    ) -> Result<Config, ConfigError> {
        let root = Path::root();
        let listeners_path = root.key("listeners");

        // Listeners, with the path of each address and default route.
        let mut listeners = Vec::with_capacity(raw.listeners.0.len());
        let mut listener_defaults = Vec::new();
        let mut seen: HashMap<SocketAddr, Path> = HashMap::new();
        for (i, l) in raw.listeners.0.into_iter().enumerate() {
            let item = listeners_path.index(i);
            let (address, address_path, default_route, accept_proxy_protocol) = match l {
                RawListener::Plain(a) => (a, item.clone(), None, None),
                RawListener::Full(m) => (
                    m.address.0,
                    item.key("address"),
                    m.default_route,
                    m.accept_proxy_protocol.map(|p| AcceptProxyProtocol {
                        from: p.from.0.into_iter().map(|n| n.0).collect(),
                        required: p.required.unwrap_or(true),
                    }),
                ),
            };
            if let Some(first) = seen.get(&address) {
                return Err(self.at(
                    &address_path,
                    At::Value,
                    format!(
                        "listener address {address} is listed twice (first {})",
                        self.where_is(first)
                    ),
                ));
            }
            seen.insert(address, address_path);
            if let Some(name) = &default_route {
                listener_defaults.push((item.key("default_route"), name.clone()));
            }
            listeners.push(ListenerConfig {
                address,
                default_route,
                accept_proxy_protocol,
            });
        }

        let admin = match raw.admin {
            None => None,
            Some(RawAdmin::Plain(address)) => Some((AdminConfig::new(address), root.key("admin"))),
            Some(RawAdmin::Full(m)) => {
                let mut admin = AdminConfig::new(m.address.0);
                if let Some(nets) = m.allow_sources {
                    admin.allow_sources = nets.0.into_iter().map(|n| n.0).collect();
                }
                Some((admin, root.key("admin").key("address")))
            }
        };
        if let Some((admin, path)) = &admin {
            let address = admin.address;
            if address.port() != 0 && seen.contains_key(&address) {
                return Err(self.at(
                    path,
                    At::Value,
                    format!("the admin address {address} is also a listener: give it an address of its own"),
                ));
            }
        }
        let admin = admin.map(|(admin, _)| admin);

        let timeouts = {
            let t = raw.timeouts.unwrap_or_default();
            let d = Timeouts::default();
            Timeouts {
                client_hello: t.client_hello.map_or(d.client_hello, |v| v.0),
                connect: t.connect.map_or(d.connect, |v| v.0),
                idle: t.idle.map_or(d.idle, |v| v.0),
                accept_grace: match t.accept_grace.map(|v| v.0) {
                    None => d.accept_grace,
                    Some(v) if v <= MAX_ACCEPT_GRACE => v,
                    Some(_) => {
                        return Err(self.at(
                            &root.key("timeouts").key("accept_grace"),
                            At::Value,
                            "accept_grace must be at most 5m",
                        ))
                    }
                },
                drain: t.drain.map_or(d.drain, |v| v.0),
                tcp_user_timeout: match t.tcp_user_timeout.map(|v| v.0) {
                    None => d.tcp_user_timeout,
                    Some(v) if v <= MAX_TCP_USER_TIMEOUT => v,
                    Some(_) => {
                        return Err(self.at(
                            &root.key("timeouts").key("tcp_user_timeout"),
                            At::Value,
                            "tcp_user_timeout must be at most 24h",
                        ))
                    }
                },
            }
        };

        let limits = {
            let l = raw.limits.unwrap_or_default();
            let d = Limits::default();
            let path = root.key("limits");
            // A count of at least 1 that fits this machine's usize.
            let count = |value: Option<Count>, key: &str| -> Result<Option<usize>, ConfigError> {
                match value.map(|c| c.0) {
                    None => Ok(None),
                    Some(0) => Err(self.at(
                        &path.key(key),
                        At::Value,
                        format!("{key} must be at least 1"),
                    )),
                    Some(n) => usize::try_from(n).map(Some).map_err(|_| {
                        self.at(
                            &path.key(key),
                            At::Value,
                            format!("{key} {n} is too large for this machine"),
                        )
                    }),
                }
            };
            let max_connections =
                count(l.max_connections, "max_connections")?.unwrap_or(d.max_connections);
            let max_pending_hellos =
                count(l.max_pending_hellos, "max_pending_hellos")?.unwrap_or(d.max_pending_hellos);
            let max_pending_hellos_per_source = count(
                l.max_pending_hellos_per_source,
                "max_pending_hellos_per_source",
            )?
            .unwrap_or(d.max_pending_hellos_per_source);
            let max_connections_per_source =
                count(l.max_connections_per_source, "max_connections_per_source")?;
            let max_client_hello_bytes = match l.max_client_hello_bytes.map(|c| c.0) {
                None => d.max_client_hello_bytes,
                Some(n) if (MIN_CLIENT_HELLO_BYTES as u64..=MAX_CLIENT_HELLO_BYTES as u64)
                    .contains(&n) =>
                {
                    n as usize
                }
                Some(n) => {
                    return Err(self.at(
                        &path.key("max_client_hello_bytes"),
                        At::Value,
                        format!(
                            "max_client_hello_bytes is {n}, it must be between {MIN_CLIENT_HELLO_BYTES} and {MAX_CLIENT_HELLO_BYTES}: \
                             clients pad ClientHellos to 512 bytes, and each connection may buffer this much \
                             until its server name is read"
                        ),
                    ))
                }
            };
            Limits {
                max_connections,
                max_client_hello_bytes,
                max_pending_hellos,
                max_pending_hellos_per_source,
                max_connections_per_source,
            }
        };

        let routes_path = root.key("routes");
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.routes.0.len());
        let mut route_paths: HashMap<String, Path> = HashMap::new();
        let mut claimed: HashMap<NamePattern, (usize, Path)> = HashMap::new();
        for (i, r) in raw.routes.0.into_iter().enumerate() {
            let path = routes_path.index(i);
            let route = self.route(r, i, &path, &routes, &mut claimed)?;
            if let Some(first) = route_paths.get(&route.name) {
                return Err(self.at(
                    &path.key("name"),
                    At::Value,
                    format!(
                        "route name `{}` is used twice (first {}): route names must be unique",
                        route.name,
                        self.where_is(first)
                    ),
                ));
            }
            route_paths.insert(route.name.clone(), path.key("name"));
            routes.push(route);
        }

        let known = |name: &str, path: &Path, what: &str| -> Result<(), ConfigError> {
            if route_paths.contains_key(name) {
                return Ok(());
            }
            let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
            Err(self.at(
                path,
                At::Value,
                format!(
                    "{what} `{name}` is not a route; the routes are: {}",
                    names.join(", ")
                ),
            ))
        };
        let default_route = raw.default_route;
        if let Some(name) = &default_route {
            known(name, &root.key("default_route"), "default_route")?;
        }
        for (path, name) in &listener_defaults {
            known(name, path, "the listener's default_route")?;
        }

        let raw_discovery = raw.discovery.unwrap_or_default();
        let marathon = match raw_discovery.marathon {
            None => None,
            Some(m) => {
                let at = root.key("discovery").key("marathon");
                let labels = match m.label_group {
                    Some(group) => Some(super::MarathonLabels {
                        group: group.0,
                        server_names_allowed: m
                            .label_server_names_allowed
                            .unwrap_or_default()
                            .into_iter()
                            .map(|n| n.0)
                            .collect(),
                        marathon_lb: m.marathon_lb_labels.unwrap_or(false),
                    }),
                    None => {
                        // Nothing configured is silently ignored.
                        let orphan = if m.label_server_names_allowed.is_some() {
                            Some("label_server_names_allowed")
                        } else if m.marathon_lb_labels.is_some() {
                            Some("marathon_lb_labels")
                        } else {
                            None
                        };
                        if let Some(key) = orphan {
                            return Err(self.at(
                                &at.key(key),
                                At::Key,
                                format!(
                                    "`{key}` applies to label-driven routes, which need `label_group` \
                                     (for instance `label_group: external`)"
                                ),
                            ));
                        }
                        None
                    }
                };
                let urls: Vec<String> = m.urls.0.into_iter().map(|u| u.0).collect();
                let (ca_file, auth) = self.source_access(&at, &urls, m.ca_file, m.auth)?;
                Some(super::MarathonConfig {
                    urls,
                    ca_file,
                    auth,
                    resync: m.resync.map_or(super::DEFAULT_MARATHON_RESYNC, |v| v.0),
                    stall_timeout: m
                        .stall_timeout
                        .map_or(super::DEFAULT_MARATHON_STALL_TIMEOUT, |v| v.0),
                    required: m.required.unwrap_or(true),
                    labels,
                })
            }
        };
        let mesos = match raw_discovery.mesos {
            None => None,
            Some(m) => {
                let urls: Vec<String> = m.urls.0.into_iter().map(|u| u.0).collect();
                let (ca_file, auth) = self.source_access(
                    &root.key("discovery").key("mesos"),
                    &urls,
                    m.ca_file,
                    m.auth,
                )?;
                Some(super::MesosConfig {
                    urls,
                    ca_file,
                    auth,
                    resync: m.resync.map_or(super::DEFAULT_MESOS_RESYNC, |v| v.0),
                    required: m.required.unwrap_or(true),
                })
            }
        };
        let discovery = super::Discovery { marathon, mesos };
        if discovery.mesos.is_none() {
            if let Some(i) = routes.iter().position(|r| r.mesos_tasks.is_some()) {
                return Err(self.at(
                    &routes_path.index(i).key("mesos_tasks"),
                    At::Key,
                    format!(
                        "route `{}` takes its endpoints from Mesos tasks, but `discovery.mesos` is not configured: \
                         add `discovery: {{mesos: {{urls: [\"http://leader.mesos:5050\"]}}}}`",
                        routes[i].name
                    ),
                ));
            }
        }
        if discovery.marathon.is_none() {
            if let Some(i) = routes.iter().position(|r| r.marathon_app.is_some()) {
                return Err(self.at(
                    &routes_path.index(i).key("marathon_app"),
                    At::Key,
                    format!(
                        "route `{}` takes its endpoints from Marathon, but `discovery.marathon` is not configured: \
                         add `discovery: {{marathon: {{urls: [\"http://marathon.mesos:8080\"]}}}}`",
                        routes[i].name
                    ),
                ));
            }
        }

        // A route nothing can reach is a mistake worth stopping for.
        for (i, route) in routes.iter().enumerate() {
            let is_default = default_route.as_deref() == Some(route.name.as_str())
                || listener_defaults.iter().any(|(_, n)| *n == route.name);
            if route.server_names.is_empty() && !is_default {
                return Err(self.at(
                    &routes_path.index(i),
                    At::Value,
                    format!(
                        "route `{}` has no server names and is no default route, so no connection can reach it: \
                         add `server_names`, or name it in `default_route`",
                        route.name
                    ),
                ));
            }
        }

        Ok(Config {
            listeners,
            admin,
            timeouts,
            limits,
            routes,
            default_route,
            watch_config: raw.watch_config.unwrap_or(false),
            forwarding: raw.forwarding.unwrap_or_default(),
            workers: raw.workers.map(|w| w.0).unwrap_or_default(),
            discovery,
            source,
        })
    }

    /// A discovery source's `ca_file` and `auth` (at `path`), for its
    /// `urls`: https (of a URL or of the login URL) needs the `ca_file`,
    /// a `ca_file` needs an https URL to be used for, and every file named
    /// is there and holds what it should (read now, without the network).
    pub(crate) fn source_access(
        &self,
        path: &Path,
        urls: &[String],
        ca_file: Option<String>,
        auth: Option<RawDiscoveryAuth>,
    ) -> Result<(Option<PathBuf>, Option<DiscoveryAuth>), ConfigError> {
        let auth = match auth {
            None => None,
            Some(a) => {
                let at = path.key("auth");
                match (a.token_file, a.service_account) {
                    (Some(file), None) => {
                        let at = at.key("token_file");
                        check_file(&file).map_err(|e| {
                            self.at(&at, At::Value, format!("token_file `{file}`: {e}"))
                        })?;
                        Some((DiscoveryAuth::TokenFile(PathBuf::from(file)), at))
                    }
                    (None, Some(sa)) => {
                        let at = at.key("service_account");
                        if sa.uid.trim().is_empty() || !sa.uid.bytes().all(|b| b.is_ascii_graphic())
                        {
                            return Err(self.at(
                                &at.key("uid"),
                                At::Value,
                                "uid must be the service account's id, such as `sniroute`",
                            ));
                        }
                        let key = &sa.private_key_file;
                        let text = check_file(key)
                            .and_then(|()| std::fs::read_to_string(key).map_err(|e| e.to_string()))
                            .map_err(|e| {
                                self.at(
                                    &at.key("private_key_file"),
                                    At::Value,
                                    format!("private_key_file `{key}`: {e}"),
                                )
                            })?;
                        if !(text.contains("-----BEGIN PRIVATE KEY-----")
                            || text.contains("-----BEGIN RSA PRIVATE KEY-----"))
                        {
                            return Err(self.at(
                                &at.key("private_key_file"),
                                At::Value,
                                format!(
                                    "private_key_file `{key}` holds no RSA private key in PEM \
                                     (`BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`), such as \
                                     `dcos security org service-accounts keypair` writes"
                                ),
                            ));
                        }
                        Some((
                            DiscoveryAuth::ServiceAccount {
                                uid: sa.uid,
                                private_key_file: PathBuf::from(&sa.private_key_file),
                                login_url: sa.login_url.0,
                            },
                            at.key("login_url"),
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(self.at(
                            &at.key("service_account"),
                            At::Key,
                            "auth takes one of `token_file` and `service_account`, not both",
                        ))
                    }
                    (None, None) => {
                        return Err(self.at(
                            &at,
                            At::Value,
                            "auth needs `token_file` or `service_account`",
                        ))
                    }
                }
            }
        };
        let https_at = urls
            .iter()
            .position(|u| u.starts_with("https://"))
            .map(|i| path.key("urls").index(i))
            .or_else(|| match &auth {
                Some((DiscoveryAuth::ServiceAccount { login_url, .. }, at))
                    if login_url.starts_with("https://") =>
                {
                    Some(at.clone())
                }
                _ => None,
            });
        let ca_file = match (ca_file, https_at) {
            (None, None) => None,
            (None, Some(at)) => {
                return Err(self.at(
                    &at,
                    At::Value,
                    "an https URL needs `ca_file` beside `urls`: the PEM file of the CA that signed the \
                     server's certificate (on DC/OS, `dcos-ca.crt` from https://leader.mesos/ca/dcos-ca.crt); \
                     only that CA is trusted, not the system's",
                ))
            }
            (Some(_), None) => {
                return Err(self.at(
                    &path.key("ca_file"),
                    At::Key,
                    "ca_file is only used for https URLs, and none is https: remove it, or use https",
                ))
            }
            (Some(file), Some(_)) => {
                let at = path.key("ca_file");
                check_ca_file(&file)
                    .map_err(|e| self.at(&at, At::Value, format!("ca_file `{file}`: {e}")))?;
                Some(PathBuf::from(file))
            }
        };
        Ok((ca_file, auth.map(|(a, _)| a)))
    }

    /// Converts route `index` (at `path`), claiming its server names.
    fn route(
        &self,
        r: RawRoute,
        index: usize,
        path: &Path,
        earlier: &[RouteConfig],
        claimed: &mut HashMap<NamePattern, (usize, Path)>,
    ) -> Result<RouteConfig, ConfigError> {
        let name = r.name.0;
        let route_name =
            |i: usize| -> &str { earlier.get(i).map_or(name.as_str(), |r| r.name.as_str()) };

        let (has_upstreams, has_dcos, has_marathon) = (
            r.upstreams.is_some(),
            r.dcos_service.is_some(),
            r.marathon_app.is_some(),
        );
        let other = |discovered: &str| -> Option<&'static str> {
            if has_upstreams {
                Some("upstreams")
            } else if has_dcos {
                Some("dcos_service")
            } else if has_marathon && discovered != "marathon_app" {
                Some("marathon_app")
            } else {
                None
            }
        };
        let both = |discovered: &str, other: &str| {
            self.at(
                &path.key(discovered),
                At::Key,
                format!(
                    "route `{name}` has both `{discovered}` and `{other}`: a route takes exactly one of \
                     `upstreams`, `dcos_service`, `marathon_app` and `mesos_tasks`"
                ),
            )
        };
        let mesos_tasks = match r.mesos_tasks {
            None => None,
            Some(tasks) => {
                if let Some(other) = other("mesos_tasks") {
                    return Err(both("mesos_tasks", other));
                }
                Some(super::MesosTasks {
                    framework: tasks.framework.0,
                    task_name_pattern: tasks.task_name_pattern.0,
                    port_name: tasks.port_name.0,
                })
            }
        };
        let marathon_app = match r.marathon_app {
            None => None,
            Some(app) => {
                let at = path.key("marathon_app");
                if let Some(other) = other("marathon_app") {
                    return Err(both("marathon_app", other));
                }
                Some(self.marathon_app(app, &at)?)
            }
        };
        let (upstreams, dcos) = match (r.upstreams, r.dcos_service) {
            (None, None) if marathon_app.is_some() || mesos_tasks.is_some() => (Vec::new(), None),
            (Some(_), Some(_)) => {
                return Err(self.at(
                    &path.key("dcos_service"),
                    At::Key,
                    format!(
                        "route `{name}` has both `dcos_service` and `upstreams`: a route takes exactly one of them \
                         (dcos_service is shorthand for the upstream apiserver.<service>.l4lb.thisdcos.directory:6443)"
                    ),
                ))
            }
            (None, None) => {
                return Err(self.at(
                    path,
                    At::Value,
                    format!(
                        "route `{name}` has no upstreams: add `upstreams: [\"host:port\", ...]`, \
                         or `dcos_service: <group>/<name>` for a DC/OS Kubernetes cluster, \
                         or `marathon_app: {{id: /prod/web, port_name: https}}` for a Marathon app's tasks, \
                         or `mesos_tasks: {{framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}}` for Mesos tasks"
                    ),
                ))
            }
            (Some(u), None) => (u.0.into_iter().map(|u| u.0).collect::<Vec<_>>(), None),
            (None, Some(d)) => {
                let (service, vip) = d.0;
                let upstream = UpstreamAddr {
                    host: Host::Name(vip.clone()),
                    port: DCOS_APISERVER_PORT,
                };
                (vec![upstream], Some((service, vip)))
            }
        };

        let mut server_names: Vec<NamePattern> = Vec::new();
        let names_path = path.key("server_names");
        let mut claim = |pattern: NamePattern,
                         at: Path,
                         server_names: &mut Vec<NamePattern>|
         -> Result<(), ConfigError> {
            if let Some((owner, first)) = claimed.get(&pattern) {
                let message = if *owner == index {
                    format!(
                        "server name `{pattern}` is listed twice in route `{name}` (first {})",
                        self.where_is(first)
                    )
                } else {
                    format!(
                        "server name `{pattern}` is already claimed by route `{}` ({}): \
                         a name can belong to one route only",
                        route_name(*owner),
                        self.where_is(first)
                    )
                };
                return Err(self.at(&at, At::Value, message));
            }
            claimed.insert(pattern.clone(), (index, at));
            server_names.push(pattern);
            Ok(())
        };
        for (j, pattern) in r
            .server_names
            .map(|n| n.0)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            claim(pattern.0, names_path.index(j), &mut server_names)?;
        }
        if let Some((_, vip)) = &dcos {
            let pattern = NamePattern::Exact(vip.clone());
            if !server_names.contains(&pattern) {
                claim(pattern, path.key("dcos_service"), &mut server_names)?;
            }
        }

        let health_check = self.health_check(
            r.health_check,
            &path.key("health_check"),
            dcos.as_ref().map(|(_, vip)| vip),
        )?;
        let outlier_detection =
            self.outlier_detection(r.outlier_detection, &path.key("outlier_detection"))?;

        Ok(RouteConfig {
            name: name.clone(),
            server_names,
            upstreams,
            balance: r.balance.unwrap_or_default(),
            health_check,
            outlier_detection,
            proxy_protocol: r.proxy_protocol.unwrap_or_default(),
            allow_sources: r
                .allow_sources
                .map(|s| s.0.into_iter().map(|n| n.0).collect())
                .unwrap_or_default(),
            dcos_service: dcos.map(|(service, _)| service),
            marathon_app,
            mesos_tasks,
        })
    }

    fn marathon_app(
        &self,
        raw: super::raw::RawMarathonApp,
        path: &Path,
    ) -> Result<super::MarathonApp, ConfigError> {
        let port = match (raw.port_name, raw.port_index) {
            (Some(_), Some(_)) => {
                return Err(self.at(
                    &path.key("port_index"),
                    At::Key,
                    "give one of `port_name` and `port_index`, not both",
                ))
            }
            (None, None) => {
                return Err(self.at(
                    path,
                    At::Value,
                    "which port of the app? add `port_name: <name in portDefinitions or container.portMappings>` \
                     or `port_index: <n>`",
                ))
            }
            (Some(name), None) if name.trim().is_empty() => {
                return Err(self.at(
                    &path.key("port_name"),
                    At::Value,
                    "port_name is empty",
                ))
            }
            (Some(name), None) => super::MarathonPort::Name(name),
            (None, Some(Count(n))) => match usize::try_from(n) {
                Ok(i) if i < 65_536 => super::MarathonPort::Index(i),
                _ => {
                    return Err(self.at(
                        &path.key("port_index"),
                        At::Value,
                        format!("port_index {n} is too large"),
                    ))
                }
            },
        };
        Ok(super::MarathonApp { id: raw.id.0, port })
    }

    fn health_check(
        &self,
        raw: Option<RawHealthCheck>,
        path: &Path,
        dcos_vip: Option<&ServerName>,
    ) -> Result<Option<HealthCheck>, ConfigError> {
        let map = match raw {
            None | Some(RawHealthCheck::Enabled(true)) => return Ok(Some(HealthCheck::default())),
            Some(RawHealthCheck::Enabled(false)) => return Ok(None),
            Some(RawHealthCheck::Map(m)) => m,
        };
        let mut map = *map;
        if map.enabled == Some(false) {
            return Ok(None);
        }
        let d = HealthCheck::default();
        let interval = map.interval.take().map_or(d.interval, |v| v.0);
        let timeout = match map.timeout.take() {
            Some(t) if t.0 > interval => {
                return Err(self.at(
                    &path.key("timeout"),
                    At::Value,
                    format!(
                        "the health check timeout ({}) is longer than its interval ({}): checks would overlap",
                        super::format_duration(t.0),
                        super::format_duration(interval)
                    ),
                ))
            }
            Some(t) => t.0,
            // The default timeout, shortened to fit a short interval.
            None => d.timeout.min(interval),
        };
        let count = |value: Option<Count>, default: u32, key: &str| match value.map(|c| c.0) {
            None => Ok(default),
            Some(0) => Err(self.at(
                &path.key(key),
                At::Value,
                format!("{key} must be at least 1"),
            )),
            Some(n) => u32::try_from(n)
                .map_err(|_| self.at(&path.key(key), At::Value, format!("{key} is too large"))),
        };
        let unhealthy_after = count(map.unhealthy_after, d.unhealthy_after, "unhealthy_after")?;
        let healthy_after = count(map.healthy_after, d.healthy_after, "healthy_after")?;
        let kind = self.check_kind(map, path, dcos_vip)?;
        Ok(Some(HealthCheck {
            kind,
            interval,
            timeout,
            unhealthy_after,
            healthy_after,
        }))
    }

    /// The `kind` of a health check with its HTTPS settings; every file it
    /// names is read now, so `sniroute check` reports what the router
    /// would find.
    fn check_kind(
        &self,
        map: RawHealthCheckMap,
        path: &Path,
        dcos_vip: Option<&ServerName>,
    ) -> Result<CheckKind, ConfigError> {
        let kind = map.kind.unwrap_or(RawCheckKind::Tcp);
        if kind == RawCheckKind::Tcp {
            let https_only = [
                ("path", map.path.is_some()),
                ("server_name", map.server_name.is_some()),
                ("ca_file", map.ca_file.is_some()),
                ("insecure_skip_verify", map.insecure_skip_verify.is_some()),
                ("client_certificate", map.client_certificate.is_some()),
                ("client_key", map.client_key.is_some()),
                ("token_file", map.token_file.is_some()),
                ("expect_status", map.expect_status.is_some()),
            ];
            if let Some((key, _)) = https_only.iter().find(|(_, set)| *set) {
                return Err(self.at(
                    &path.key(key),
                    At::Key,
                    format!(
                        "`{key}` applies to `kind: https` and `kind: kubernetes` checks, but this one is a TCP check: \
                         add `kind: kubernetes` (or `https`), or remove `{key}`"
                    ),
                ));
            }
            return Ok(CheckKind::Tcp);
        }
        let kind_name = if kind == RawCheckKind::Kubernetes {
            "kubernetes"
        } else {
            "https"
        };
        let request_path = match (kind, map.path) {
            (RawCheckKind::Kubernetes, Some(p)) if p.0 != "/readyz" => {
                return Err(self.at(
                    &path.key("path"),
                    At::Value,
                    "a `kind: kubernetes` check always requests /readyz: remove `path`, or use `kind: https`",
                ))
            }
            (RawCheckKind::Kubernetes, _) => "/readyz".to_owned(),
            (_, Some(p)) => p.0,
            (_, None) => "/".to_owned(),
        };
        let server_name = match (map.server_name, dcos_vip) {
            (Some(n), _) => n.0,
            (None, Some(vip)) => vip.clone(),
            (None, None) => {
                return Err(self.at(
                    path,
                    At::Key,
                    format!(
                        "a `kind: {kind_name}` health check needs `server_name`: the name the endpoints' \
                         certificates carry (API server certificates often lack public names, and a wrong \
                         name would mark every endpoint misrouted); only `dcos_service` routes default it \
                         to their VIP name"
                    ),
                ))
            }
        };
        let insecure_skip_verify = map.insecure_skip_verify.unwrap_or(false);
        let ca_file = match (map.ca_file, insecure_skip_verify) {
            (Some(_), true) => {
                return Err(self.at(
                    &path.key("ca_file"),
                    At::Key,
                    "`ca_file` and `insecure_skip_verify: true` exclude each other: nothing would be verified against the CA",
                ))
            }
            (None, false) => {
                return Err(self.at(
                    path,
                    At::Key,
                    format!(
                        "a `kind: {kind_name}` health check needs `ca_file`: the CA certificate(s) the endpoints' \
                         certificates chain to (for a DC/OS Kubernetes cluster, its CA: the `ca.crt` of the \
                         cluster); `insecure_skip_verify: true` turns verification and misrouting detection off"
                    ),
                ))
            }
            (Some(f), false) => {
                let at = path.key("ca_file");
                let bytes = self.read_small_file(&f.0, &at, "ca_file")?;
                let certs = pem_certificates(&bytes)
                    .map_err(|e| self.at(&at, At::Value, format!("ca_file `{}`: {e}", f.0.display())))?;
                if certs == 0 {
                    return Err(self.at(
                        &at,
                        At::Value,
                        format!(
                            "ca_file `{}` holds no certificate: expected PEM `-----BEGIN CERTIFICATE-----` blocks",
                            f.0.display()
                        ),
                    ));
                }
                Some(f.0)
            }
            (None, true) => None,
        };
        let auth = match (map.client_certificate, map.client_key, map.token_file) {
            (None, None, None) => None,
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(self.at(
                    &path.key("token_file"),
                    At::Key,
                    "give a client certificate (`client_certificate` and `client_key`) or `token_file`, not both",
                ))
            }
            (Some(_), None, None) => {
                return Err(self.at(
                    &path.key("client_certificate"),
                    At::Key,
                    "`client_certificate` needs `client_key`, the file with its private key",
                ))
            }
            (None, Some(_), None) => {
                return Err(self.at(
                    &path.key("client_key"),
                    At::Key,
                    "`client_key` needs `client_certificate`, the file with its certificate",
                ))
            }
            (Some(cert), Some(key), None) => {
                let at = path.key("client_certificate");
                let bytes = self.read_small_file(&cert.0, &at, "client_certificate")?;
                match pem_certificates(&bytes) {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        return Err(self.at(
                            &at,
                            At::Value,
                            format!("client_certificate `{}` holds no certificate", cert.0.display()),
                        ))
                    }
                    Err(e) => {
                        return Err(self.at(
                            &at,
                            At::Value,
                            format!("client_certificate `{}`: {e}", cert.0.display()),
                        ))
                    }
                }
                let at = path.key("client_key");
                let bytes = self.read_small_file(&key.0, &at, "client_key")?;
                if let Err(e) = pem_private_key(&bytes) {
                    return Err(self.at(&at, At::Value, format!("client_key `{}`: {e}", key.0.display())));
                }
                Some(CheckAuth::ClientCertificate {
                    certificate: cert.0,
                    key: key.0,
                })
            }
            (None, None, Some(_)) if insecure_skip_verify => {
                return Err(self.at(
                    &path.key("token_file"),
                    At::Key,
                    "`token_file` with `insecure_skip_verify: true` would send the token to any server, \
                     a misrouted one included: give `ca_file` instead",
                ))
            }
            (None, None, Some(token)) => {
                let at = path.key("token_file");
                let bytes = self.read_small_file(&token.0, &at, "token_file")?;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Err(self.at(&at, At::Value, format!("token_file `{}` is empty", token.0.display())));
                }
                Some(CheckAuth::TokenFile(token.0))
            }
        };
        let expect_status = match map.expect_status {
            None => vec![200],
            Some(list) => {
                let mut out = Vec::with_capacity(list.0.len());
                for (i, c) in list.0.into_iter().enumerate() {
                    match u16::try_from(c.0) {
                        Ok(code) if (100..=599).contains(&code) => out.push(code),
                        _ => {
                            return Err(self.at(
                                &path.key("expect_status").index(i),
                                At::Value,
                                format!("{} is not an HTTP status (100 to 599)", c.0),
                            ))
                        }
                    }
                }
                out
            }
        };
        let https = HttpsCheck {
            path: request_path,
            server_name,
            ca_file,
            insecure_skip_verify,
            auth,
            expect_status,
        };
        Ok(match kind {
            RawCheckKind::Kubernetes => CheckKind::Kubernetes(https),
            _ => CheckKind::Https(https),
        })
    }

    /// Reads a file a health check needs: a regular file of at most
    /// [`MAX_CHECK_FILE_BYTES`] (a FIFO or device would block or never end).
    fn read_small_file(
        &self,
        file: &std::path::Path,
        at: &Path,
        key: &str,
    ) -> Result<Vec<u8>, ConfigError> {
        read_check_file(file).map_err(|e| {
            self.at(
                at,
                At::Value,
                format!("cannot read {key} `{}`: {e}", file.display()),
            )
        })
    }

    fn outlier_detection(
        &self,
        raw: Option<RawOutlierDetection>,
        path: &Path,
    ) -> Result<Option<OutlierDetection>, ConfigError> {
        let map = match raw {
            None | Some(RawOutlierDetection::Enabled(true)) => {
                return Ok(Some(OutlierDetection::default()))
            }
            Some(RawOutlierDetection::Enabled(false)) => return Ok(None),
            Some(RawOutlierDetection::Map(m)) => m,
        };
        if map.enabled == Some(false) {
            return Ok(None);
        }
        let d = OutlierDetection::default();
        let consecutive_failures = match map.consecutive_failures.map(|c| c.0) {
            None => d.consecutive_failures,
            Some(n) if n < 2 => {
                return Err(self.at(
                    &path.key("consecutive_failures"),
                    At::Value,
                    "consecutive_failures must be at least 2: a single failed connect never ejects an endpoint",
                ))
            }
            Some(n) => u32::try_from(n).map_err(|_| {
                self.at(
                    &path.key("consecutive_failures"),
                    At::Value,
                    "consecutive_failures is too large",
                )
            })?,
        };
        let base_ejection = match map.base_ejection.map(|v| v.0) {
            None => d.base_ejection,
            Some(v) if v > super::MAX_EJECTION => {
                return Err(self.at(
                    &path.key("base_ejection"),
                    At::Value,
                    "base_ejection must be at most 5m, the longest ejection",
                ))
            }
            Some(v) => v,
        };
        let max_ejected_percent = match map.max_ejected_percent.map(|c| c.0) {
            None => d.max_ejected_percent,
            Some(n) if n <= 100 => n as u32,
            Some(n) => {
                return Err(self.at(
                    &path.key("max_ejected_percent"),
                    At::Value,
                    format!("max_ejected_percent is {n}: it must be between 0 and 100"),
                ))
            }
        };
        Ok(Some(OutlierDetection {
            consecutive_failures,
            base_ejection,
            max_ejected_percent,
        }))
    }
}

/// The largest CA, certificate, key or token file a health check reads.
pub const MAX_CHECK_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a health check's file: a regular file (after symlinks) of at most
/// [`MAX_CHECK_FILE_BYTES`].
///
/// # Errors
/// The I/O error, or why the file is refused, in words.
pub fn read_check_file(file: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CHECK_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_CHECK_FILE_BYTES {
        return Err(format!("larger than {} KiB", MAX_CHECK_FILE_BYTES / 1024));
    }
    Ok(bytes)
}

/// How many PEM certificates `pem` holds.
fn pem_certificates(pem: &[u8]) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut n = 0;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("not valid PEM: {e}"))?;
        n += 1;
    }
    Ok(n)
}

/// Whether `pem` holds a private key.
fn pem_private_key(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map(drop)
        .map_err(|e| format!("no usable PEM private key: {e}"))
}

/// Errors that the `config` fuzz target (`fuzz/fuzz_targets/config.rs`)
/// found without a position, with a wrong one, or with the wrong message;
/// their inputs are seeds in `fuzz/corpus/config/regress-*`.
#[cfg(test)]
mod fuzz_findings {
    use crate::Config;

    /// Line, column, path and message of the error for `text`.
    fn error(text: &str) -> (usize, usize, Option<String>, String) {
        let e = Config::from_yaml_str(text, "f.yaml").unwrap_err();
        let (Some(line), Some(column)) = (e.line(), e.column()) else {
            panic!("no position: {e:?}");
        };
        (
            line,
            column,
            e.path().map(str::to_owned),
            e.message().to_owned(),
        )
    }

    const ROUTE: &str =
        "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";

    #[test]
    fn a_control_character_is_pointed_at() {
        // libyaml gives a byte offset (113 here), serde_yaml line 1 column 1.
        let text = format!("listeners: [\"0.0.0.0:1\"]\n{ROUTE}admin: \"1.2\u{1}\"\n");
        let (line, column, _, message) = error(&text);
        assert_eq!((line, column), (3, 12));
        assert_eq!(message, "control characters are not allowed");
        // Lines end where libyaml ends them: also at U+2028.
        let (line, column, _, _) = error("a: 1\r\n\u{2028}b: \u{7f}\n");
        assert_eq!((line, column), (3, 4));
    }

    #[test]
    fn only_an_empty_text_is_empty() {
        // saphyr-parser reads an anchor without a node, libyaml refuses it.
        let (line, column, _, message) = error("&:K");
        assert_eq!((line, column), (1, 2));
        assert!(
            message.starts_with("did not find expected alphabetic"),
            "{message}"
        );
        // An empty document followed by another.
        let (line, column, path, message) = error(&format!(
            "---\n...\n---\nlisteners: [\"0.0.0.0:1\"]\n{ROUTE}"
        ));
        assert_eq!((line, column, path), (3, 1, None));
        assert!(message.starts_with("the text holds more than one YAML document"));
    }

    #[test]
    fn keys_that_are_not_names_are_quoted_in_paths() {
        let (_, _, path, message) = error("\"\": 1\n");
        assert_eq!(path.as_deref(), Some("\"\""));
        assert!(
            message.starts_with("unknown key ``, expected one of"),
            "{message}"
        );
        let text = format!("listeners: [\"0.0.0.0:1\"]\n{ROUTE}timeouts: {{a.b: 1}}\n");
        let (line, column, path, message) = error(&text);
        assert_eq!((line, column), (3, 12));
        assert_eq!(path.as_deref(), Some("timeouts.\"a.b\""));
        // serde_yaml's own copy of the path is still taken off the message.
        assert!(
            message.starts_with("unknown key `a.b`, expected one of"),
            "{message}"
        );
    }

    #[test]
    fn texts_the_index_cannot_read_are_located_by_libyaml() {
        // A byte order mark inside a comment: YAML 1.2 (saphyr-parser)
        // forbids it, libyaml reads it.
        let text = "listeners: [\"0.0.0.0:1\"]\n# \u{feff}\nroutes:\n  - name: a\n    server_names: [a.test]\n";
        let (line, column, path, message) = error(text);
        assert_eq!((line, column, path.as_deref()), (4, 5, Some("routes[0]")));
        assert!(
            message.starts_with("route `a` has no upstreams"),
            "{message}"
        );
        let text = format!("listeners: [\"0.0.0.0:1\", \"0.0.0.0:1\"]\n# \u{feff}\n{ROUTE}");
        let (line, column, path, _) = error(&text);
        assert_eq!(
            (line, column, path.as_deref()),
            (1, 26, Some("listeners[1]"))
        );
        // A directive in the middle: libyaml starts a second document there.
        let text = format!("listeners: [\"0.0.0.0:1\"]\n{ROUTE}%TAG !e! tag:e:\n--\n");
        let (line, _, _, message) = error(&text);
        assert!(
            message.starts_with("the text holds more than one YAML document"),
            "{message}"
        );
        assert_eq!(line, 4);
    }
}
