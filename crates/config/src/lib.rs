//! The configuration: a YAML file (or the YAML itself in
//! `$SNIROUTE_CONFIG_YAML`) read once per generation into a validated
//! [`Config`].
//!
//! Reading happens in two steps, as in hickory-dns's config: serde reads the
//! YAML into raw structs that deny unknown keys and check each scalar as it
//! is read (server names, addresses, networks, durations), then one pass
//! converts them into the types below and checks what involves several
//! nodes (duplicate names, unknown default routes, `upstreams` versus
//! `dcos_service`). Nothing touches the network: names are validated, not
//! resolved.
//!
//! Every error says where: `FILE:LINE:COLUMN: message (at PATH)`. serde_yaml
//! gives the position of its own errors and serde_path_to_error the path;
//! errors found after deserialisation take the path the checks were
//! following and look its node up in a position index of the same text (see
//! `source_map`).
//!
//! `deploy/sniroute.example.yaml` documents every key.
//!
//! Modules: this file holds the validated types and [`Config::load`];
//! `raw` the serde structs that deny unknown keys; `values` the checked
//! scalars ([`NamePattern`], [`UpstreamAddr`], [`IpNet`], [`dcos_vip`]);
//! `duration` the `5s`/`1m30s` durations; `validate` the pass from raw to
//! validated; `error` and `source_map` the `FILE:LINE:COLUMN` errors;
//! `render` the routing table as `sniroute check` prints it; `tests` the
//! unit tests.

mod duration;
mod error;
mod raw;
mod render;
mod source_map;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use clienthello::ServerName;
pub use duration::{format_duration, parse_duration, MAX_DURATION};
pub use error::ConfigError;
pub use render::render;
pub use validate::{read_check_file, MAX_CHECK_FILE_BYTES};
pub use values::{
    dcos_vip, Host, IpNet, NamePattern, UpstreamAddr, ValueError, DCOS_APISERVER_PORT,
    DCOS_VIP_DOMAIN,
};

/// Where the config is read from when neither `--config` nor an environment
/// variable says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sniroute/sniroute.yaml";
/// Environment variable holding the path of the config file.
pub const CONFIG_PATH_ENV: &str = "SNIROUTE_CONFIG";
/// Environment variable holding the config YAML itself (for a Marathon app's
/// `env`, where shipping a file is awkward).
pub const CONFIG_YAML_ENV: &str = "SNIROUTE_CONFIG_YAML";
/// How YAML from [`CONFIG_YAML_ENV`] is named in messages.
pub const CONFIG_YAML_ENV_NAME: &str = "$SNIROUTE_CONFIG_YAML";
/// The variable naming the PEM file of CA certificates that an `https://`
/// config URL is verified against.
pub const CONFIG_CA_ENV: &str = "SNIROUTE_CONFIG_CA";
/// Larger config files are refused unread: a config is a few KiB, and this
/// bounds what a wrong path (a log file, a device) can make us buffer.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Smallest accepted `limits.max_client_hello_bytes`: a ClientHello padded
/// as most clients pad them (RFC 7685) is 512 bytes, so less would refuse
/// ordinary clients.
pub const MIN_CLIENT_HELLO_BYTES: usize = 512;
/// Largest accepted `limits.max_client_hello_bytes`: a ClientHello is
/// buffered per connection until its SNI is read, so the limit times
/// `max_connections` is the memory a slow-loris flood can pin. Today's
/// largest hellos (post-quantum key shares, big PSK tickets) are well under
/// 16 KiB; 64 KiB leaves room without letting one client hold megabytes.
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// A validated configuration: one generation of the router's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Addresses to accept TLS connections on (at least one, no duplicates).
    pub listeners: Vec<ListenerConfig>,
    /// The admin HTTP endpoint (metrics, health, status); `None` = off.
    pub admin: Option<AdminConfig>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Resource limits.
    pub limits: Limits,
    /// Routes, in the order written; the router indexes routes by
    /// their position in this list.
    pub routes: Vec<RouteConfig>,
    /// Route for ClientHellos without SNI or with an unmatched name, on
    /// listeners that name none of their own.
    pub default_route: Option<String>,
    /// Reload when the config file changes.
    pub watch_config: bool,
    /// How tunnel bytes are moved.
    pub forwarding: Forwarding,
    /// How many worker threads accept and serve connections (read at
    /// start; a reload that changes it applies at the next start or
    /// upgrade).
    pub workers: Workers,
    /// Where endpoints are discovered (for `marathon_app` and
    /// `mesos_tasks` routes).
    pub discovery: Discovery,
    /// Where this config came from.
    pub source: ConfigSource,
}

/// Discovery sources; each `None` when not configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Marathon, for `marathon_app` routes.
    pub marathon: Option<MarathonConfig>,
    /// The Mesos master, for `mesos_tasks` routes.
    pub mesos: Option<MesosConfig>,
}

/// `discovery.mesos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MesosConfig {
    /// `http[s]://host[:port][/prefix]` URLs of masters, tried in order.
    pub urls: Vec<String>,
    /// PEM file of the CA certificates trusted for `https://` URLs (and
    /// the login URL); required with https, refused without.
    pub ca_file: Option<PathBuf>,
    /// Credentials sent with each request (DC/OS strict mode).
    pub auth: Option<DiscoveryAuth>,
    /// Period of full re-reads (the event stream is opened again; default
    /// [`DEFAULT_MESOS_RESYNC`]).
    pub resync: Duration,
    /// `/readyz` answers 503 until the first successful sync (default
    /// true).
    pub required: bool,
}

/// Default `discovery.mesos.resync`: 5 minutes.
pub const DEFAULT_MESOS_RESYNC: Duration = Duration::from_secs(300);

/// A route's Mesos tasks (`mesos_tasks`), chosen as Edge-LB pools chose
/// their backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MesosTasks {
    /// The framework's name (`dev/kubernetes01`).
    pub framework: String,
    /// A regular expression searched in task names (checked to compile).
    pub task_name_pattern: String,
    /// The port's name in the tasks' `discovery.ports`.
    pub port_name: String,
}

impl std::fmt::Display for MesosTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mesos tasks of framework {} matching `{}`, port named {}",
            self.framework, self.task_name_pattern, self.port_name
        )
    }
}

/// `discovery.marathon`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarathonConfig {
    /// `http[s]://host[:port][/prefix]` URLs, tried in order.
    pub urls: Vec<String>,
    /// PEM file of the CA certificates trusted for https URLs (then
    /// required), and only them. Checked to hold a certificate when the
    /// config is read; the source reads it again when it starts.
    pub ca_file: Option<PathBuf>,
    /// Credentials sent with each request.
    pub auth: Option<DiscoveryAuth>,
    /// Full re-read period (default [`DEFAULT_MARATHON_RESYNC`]).
    pub resync: Duration,
    /// An event stream silent (no event, no keep-alive) this long is
    /// opened again, with a full sync (default
    /// [`DEFAULT_MARATHON_STALL_TIMEOUT`]).
    pub stall_timeout: Duration,
    /// `/readyz` answers 503 until the first successful sync (default
    /// true).
    pub required: bool,
    /// Label-driven routes, when `label_group` is set.
    pub labels: Option<MarathonLabels>,
}

/// Label-driven routes (`label_group`, `label_server_names_allowed`,
/// `marathon_lb_labels` under `discovery.marathon`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarathonLabels {
    /// Apps labelled `SNIROUTE_GROUP=<group>` (or, with `marathon_lb`,
    /// `HAPROXY_GROUP=<group>`) become routes.
    pub group: String,
    /// The names label routes may claim (default: none, so every label
    /// route is refused until names are allowed).
    pub server_names_allowed: Vec<NamePattern>,
    /// Also read Marathon-LB's `HAPROXY_GROUP` and `HAPROXY_{n}_VHOST`, for
    /// ports labelled `HAPROXY_{n}_MODE=tcp` only.
    pub marathon_lb: bool,
}

/// A discovery source's `auth` (Marathon's; Mesos' takes the same).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiscoveryAuth {
    /// `token_file: PATH`: `Authorization: token=<the file, trimmed>`,
    /// read again on each request.
    TokenFile(PathBuf),
    /// `service_account: {uid, private_key_file, login_url}`: a DC/OS
    /// service-account login (RS256 JWT signed by the key), refreshed
    /// before the token expires and on a 401.
    ServiceAccount {
        /// The account's id.
        uid: String,
        /// Its RSA private key (PEM). Checked to hold a private key when
        /// the config is read; read again at each login.
        private_key_file: PathBuf,
        /// `https://leader.mesos/acs/api/v1/auth/login` (https needs the
        /// source's `ca_file`).
        login_url: String,
    },
}

/// Default `discovery.marathon.resync`: 5 minutes.
pub const DEFAULT_MARATHON_RESYNC: Duration = Duration::from_secs(300);

/// Default `discovery.marathon.stall_timeout`: 2 minutes. Marathon sends no
/// keep-alives of its own; a proxy between may cut a silent stream without
/// a FIN, and a quiet cluster then costs a reconnect and a full sync every
/// two minutes.
pub const DEFAULT_MARATHON_STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A route's Marathon app port (`marathon_app`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MarathonApp {
    /// The app id, absolute, without a trailing slash (`/prod/web`).
    pub id: String,
    /// Which of its ports.
    pub port: MarathonPort,
}

/// `port_index` or `port_name` of a `marathon_app`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MarathonPort {
    /// `port_index`: the position among the app's ports.
    Index(usize),
    /// `port_name`: the port of that name in `portDefinitions` or
    /// `container.portMappings`.
    Name(String),
}

impl std::fmt::Display for MarathonApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.port {
            MarathonPort::Index(i) => write!(f, "Marathon app {}, port index {i}", self.id),
            MarathonPort::Name(n) => write!(f, "Marathon app {}, port named {n}", self.id),
        }
    }
}

/// One listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// IP and port (port 0: any free port).
    pub address: SocketAddr,
    /// This listener's default route, replacing the global one.
    pub default_route: Option<String>,
    /// Whether (and from whom) a PROXY protocol header is read before the
    /// ClientHello (`accept_proxy_protocol`); `None`: never.
    pub accept_proxy_protocol: Option<AcceptProxyProtocol>,
}

/// A listener's `accept_proxy_protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptProxyProtocol {
    /// The peers (front load balancers) that may send a header (never
    /// empty); a header from any other peer is refused unparsed.
    pub from: Vec<IpNet>,
    /// `true` (the default): a peer in `from` must send a header.
    pub required: bool,
}

impl AcceptProxyProtocol {
    /// Whether `ip` may send a header (IPv4-mapped peers compared as IPv4).
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.from.iter().any(|net| net.contains(ip))
    }
}

/// The admin HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// IP and port (port 0: any free port); never a listener's address.
    pub address: SocketAddr,
    /// Peers that may connect (never empty); any other peer is closed
    /// before anything is read, without a response. IPv4-mapped IPv6 peers
    /// are compared as their IPv4 address. Default:
    /// [`default_admin_allow_sources`].
    pub allow_sources: Vec<IpNet>,
}

impl AdminConfig {
    /// The endpoint on `address` with the default allow list.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            allow_sources: default_admin_allow_sources(),
        }
    }

    /// Whether a peer at `ip` may use the endpoint.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow_sources.iter().any(|net| net.contains(ip))
    }

    /// Whether `allow_sources` is the default list.
    pub fn default_allow_list(&self) -> bool {
        self.allow_sources == default_admin_allow_sources()
    }
}

/// The default `admin.allow_sources`: loopback and the private ranges,
/// which serve Mesos health checks (from the agent's 127.0.0.1), Marathon
/// readiness checks and an in-cluster Prometheus without configuration,
/// and refuse the internet: IPv4 `127.0.0.0/8`, `10.0.0.0/8`,
/// `172.16.0.0/12`, `192.168.0.0/16`, `100.64.0.0/10` (carrier-grade NAT,
/// which some clouds use inside a VPC); IPv6 `::1/128`, `fc00::/7`.
pub fn default_admin_allow_sources() -> Vec<IpNet> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = |a, b, len| IpNet::new(IpAddr::V4(Ipv4Addr::new(a, b, 0, 0)), len);
    [
        v4(127, 0, 8),
        v4(10, 0, 8),
        v4(172, 16, 12),
        v4(192, 168, 16),
        v4(100, 64, 10),
        IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        IpNet::new(IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
    ]
    .into_iter()
    .map(|net| net.expect("a valid network"))
    .collect()
}

/// Timeouts; each is greater than zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole ClientHello must arrive within this, else the connection is
    /// closed.
    pub client_hello: Duration,
    /// Per upstream connection attempt.
    pub connect: Duration,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle: Duration,
    /// On SIGTERM, how long the listeners keep accepting after `/readyz`
    /// turned 503, before they close (0: they close at once), so that a
    /// load balancer checking `/readyz` stops sending new connections
    /// first; HAProxy's `grace`. At most [`MAX_ACCEPT_GRACE`].
    pub accept_grace: Duration,
    /// On SIGTERM, how long open tunnels may go on once the listeners
    /// closed.
    pub drain: Duration,
    /// `TCP_USER_TIMEOUT` of client and upstream sockets: data sent and not
    /// acknowledged for this long ends the connection, so a peer that
    /// vanished mid-tunnel is noticed in bounded time; at most
    /// [`MAX_TCP_USER_TIMEOUT`].
    pub tcp_user_timeout: Duration,
}

/// Largest accepted `timeouts.accept_grace`.
pub const MAX_ACCEPT_GRACE: Duration = Duration::from_secs(300);

/// Largest accepted `timeouts.tcp_user_timeout`.
pub const MAX_TCP_USER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Default for Timeouts {
    /// 5s, 10s, 24h, 0s, 30s, 60s.
    fn default() -> Self {
        Self {
            client_hello: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(24 * 3600),
            accept_grace: Duration::ZERO,
            drain: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(60),
        }
    }
}

/// Resource limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// Largest ClientHello accepted, record headers included; between
    /// [`MIN_CLIENT_HELLO_BYTES`] and [`MAX_CLIENT_HELLO_BYTES`].
    pub max_client_hello_bytes: usize,
    /// Connections that have not completed their ClientHello, at once;
    /// more are closed at once (`over_limit`). With
    /// `max_client_hello_bytes` this bounds the memory of hellos.
    pub max_pending_hellos: usize,
    /// Pending hellos from one source (an IPv4 address, an IPv6 /64);
    /// more are closed at once (`source_limit`).
    pub max_pending_hellos_per_source: usize,
    /// Connections from one source; `None`: no limit (NAT puts whole
    /// offices behind one address).
    pub max_connections_per_source: Option<usize>,
}

/// Default `limits.max_pending_hellos`: a hello completes within a round
/// trip or two, so even a busy router has a few hundred pending; 2048 of
/// them cost at most 2048 × 16 KiB = 32 MiB of buffers at the default
/// `max_client_hello_bytes`.
pub const DEFAULT_MAX_PENDING_HELLOS: usize = 2048;
/// Default `limits.max_pending_hellos_per_source`.
pub const DEFAULT_MAX_PENDING_HELLOS_PER_SOURCE: usize = 256;

impl Default for Limits {
    /// 50000 connections, 16 KiB ClientHellos, 2048 pending hellos, 256
    /// per source, no per-source connection limit.
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_client_hello_bytes: clienthello::DEFAULT_MAX_CLIENT_HELLO_BYTES,
            max_pending_hellos: DEFAULT_MAX_PENDING_HELLOS,
            max_pending_hellos_per_source: DEFAULT_MAX_PENDING_HELLOS_PER_SOURCE,
            max_connections_per_source: None,
        }
    }
}

/// One route: which server names go to which upstreams, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Label in logs and metrics: unique, 1 to 63 of `a-z0-9_-`.
    pub name: String,
    /// Names routed here, normalised, in the order written; a
    /// `dcos_service` adds its VIP name last. May be empty for a route that
    /// is only a default.
    pub server_names: Vec<NamePattern>,
    /// Where to connect (at least one, none for a `marathon_app` or
    /// `mesos_tasks` route); a
    /// `dcos_service` expanded to its API server VIP.
    pub upstreams: Vec<UpstreamAddr>,
    /// How an upstream is picked.
    pub balance: Balance,
    /// Active health checks; `None` = off.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection; `None` = off.
    pub outlier_detection: Option<OutlierDetection>,
    /// PROXY protocol header sent to the upstream.
    pub proxy_protocol: ProxyProtocol,
    /// Client networks allowed to use the route; empty = everyone.
    pub allow_sources: Vec<IpNet>,
    /// The DC/OS service this route was written as, if any
    /// (`dev/kubernetes01`).
    pub dcos_service: Option<String>,
    /// The Marathon app port whose tasks are this route's endpoints
    /// (discovered; `upstreams` is then empty).
    pub marathon_app: Option<MarathonApp>,
    /// The Mesos tasks that are this route's endpoints (discovered;
    /// `upstreams` is then empty).
    pub mesos_tasks: Option<MesosTasks>,
}

/// How an upstream is picked among the healthy ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The one with the fewest open tunnels.
    #[default]
    LeastConnections,
    /// Each in turn.
    RoundRobin,
}

impl Balance {
    /// The name used in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::LeastConnections => "least_connections",
            Self::RoundRobin => "round_robin",
        }
    }
}

/// PROXY protocol header sent to the upstream before the client's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// No header.
    #[default]
    None,
    /// The text header, version 1.
    V1,
    /// The binary header, version 2.
    V2,
}

impl ProxyProtocol {
    /// The name used in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// How tunnel bytes are moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// splice(2) for streams where the kernel allows, buffer copies for
    /// small messages (HAProxy's `splice-auto`) and where it does not.
    #[default]
    Splice,
    /// Always buffer copies (benchmarks compare the two).
    Copy,
}

impl Forwarding {
    /// The name used in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Splice => "splice",
            Self::Copy => "copy",
        }
    }
}

/// `workers`: how many threads accept and serve connections, each with
/// its own runtime and its own listening sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Workers {
    /// One per CPU the process may run on (its affinity mask and cgroup
    /// quota, as `std::thread::available_parallelism` sees them).
    #[default]
    Auto,
    /// This many, 1 to [`Workers::MAX`].
    Count(u16),
}

impl Workers {
    /// The largest count accepted.
    pub const MAX: u16 = 256;

    /// The number of threads: `cpus()` for `auto` (clamped to 1 to
    /// [`Workers::MAX`]), else the count.
    pub fn resolve(self, cpus: impl FnOnce() -> usize) -> usize {
        match self {
            Self::Auto => cpus().clamp(1, usize::from(Self::MAX)),
            Self::Count(n) => usize::from(n),
        }
    }
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Active health checks of a route's upstreams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a check does: a TCP connect (the default) or an HTTPS request.
    pub kind: CheckKind,
    /// Time between checks of one upstream.
    pub interval: Duration,
    /// How long one check may take; never longer than `interval`.
    pub timeout: Duration,
    /// Consecutive failures that mark an upstream unhealthy (at least 1).
    pub unhealthy_after: u32,
    /// Consecutive successes that mark it healthy again (at least 1).
    pub healthy_after: u32,
}

impl Default for HealthCheck {
    /// Every 5s, 2s timeout, unhealthy after 3 failures, healthy after 2
    /// successes.
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }
}

/// What one health check does (`health_check.kind`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect: the port accepts.
    Tcp,
    /// An HTTPS `GET path`: the certificate verifies (unless
    /// `insecure_skip_verify`) and the status is one of `expect_status`.
    Https(HttpsCheck),
    /// A Kubernetes API server: HTTPS `GET /readyz`, healthy when the
    /// status is one of `expect_status` and the body is `ok`.
    Kubernetes(HttpsCheck),
}

impl CheckKind {
    /// The name used in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Https(_) => "https",
            Self::Kubernetes(_) => "kubernetes",
        }
    }

    /// The HTTPS settings of `https` and `kubernetes` checks.
    pub fn https(&self) -> Option<&HttpsCheck> {
        match self {
            Self::Tcp => None,
            Self::Https(h) | Self::Kubernetes(h) => Some(h),
        }
    }
}

/// The settings of an HTTPS (or Kubernetes) health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsCheck {
    /// The request path (`/readyz` for Kubernetes checks).
    pub path: String,
    /// The name sent as SNI and verified in the endpoint's certificate.
    pub server_name: ServerName,
    /// The CA certificates (PEM) the endpoint's certificate must chain to;
    /// read again before every round of checks, so a rotated CA applies.
    /// `None` only with `insecure_skip_verify`.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (and so misrouting detection).
    pub insecure_skip_verify: bool,
    /// How the check authenticates, where anonymous requests are refused.
    pub auth: Option<CheckAuth>,
    /// HTTP statuses that count as passing (default `[200]`).
    pub expect_status: Vec<u16>,
}

/// Credentials of an HTTPS health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckAuth {
    /// A client certificate chain and its key (PEM files).
    ClientCertificate {
        /// The certificate chain, PEM.
        certificate: PathBuf,
        /// The private key, PEM.
        key: PathBuf,
    },
    /// A file holding a bearer token (`Authorization: Bearer ...`).
    TokenFile(PathBuf),
}

/// Passive outlier detection on live traffic (`outlier_detection`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Connect failures in a row (on client connections) that eject an
    /// endpoint (at least 2, so one failure never ejects).
    pub consecutive_failures: u32,
    /// The first ejection's length; it doubles with each ejection in a
    /// row, up to [`MAX_EJECTION`].
    pub base_ejection: Duration,
    /// The most endpoints of a route ejected at once, in percent; one
    /// endpoint always stays in any case.
    pub max_ejected_percent: u32,
}

/// The longest ejection, however many in a row.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

impl Default for OutlierDetection {
    /// 3 failures in a row, 10 s doubling, at most 50 % ejected.
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejected_percent: 50,
        }
    }
}

/// Where the config comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A YAML file.
    File(PathBuf),
    /// YAML from `$SNIROUTE_CONFIG_YAML`.
    EnvYaml(String),
    /// YAML fetched from an `http://` or `https://` URL (`--config URL` or
    /// `$SNIROUTE_CONFIG=URL`). The config crate does no network I/O: the
    /// router fetches the text and hands it to [`Config::from_source_text`].
    Url {
        /// The URL as given, query included (a pre-signed URL's query is a
        /// credential: [`ConfigSource::display_name`] leaves it out).
        url: String,
        /// `$SNIROUTE_CONFIG_CA`: the CA certificates an `https://` server
        /// must be signed by (none given: no https server is trusted).
        ca_file: Option<PathBuf>,
    },
}

impl ConfigSource {
    /// Picks the source: `--config FILE` if given, else
    /// `$SNIROUTE_CONFIG` (a path), else `$SNIROUTE_CONFIG_YAML` (the YAML
    /// itself), else [`DEFAULT_CONFIG_PATH`]. A `--config` or
    /// `$SNIROUTE_CONFIG` that starts with `http://` or `https://` is a
    /// URL ([`ConfigSource::Url`], with `$SNIROUTE_CONFIG_CA`). Variables
    /// set to an empty string count as unset. `env` looks a variable up
    /// (pass `|k| std::env::var(k).ok()`).
    pub fn resolve(cli: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> ConfigSource {
        let env = |key: &str| env(key).filter(|v| !v.is_empty());
        let path_or_url = |given: &str| {
            if given.starts_with("http://") || given.starts_with("https://") {
                Self::Url {
                    url: given.to_owned(),
                    ca_file: env(CONFIG_CA_ENV).map(PathBuf::from),
                }
            } else {
                Self::File(PathBuf::from(given))
            }
        };
        if let Some(path) = cli {
            return match path.to_str() {
                Some(given) => path_or_url(given),
                None => Self::File(path.to_owned()),
            };
        }
        if let Some(path) = env(CONFIG_PATH_ENV) {
            return path_or_url(&path);
        }
        if let Some(yaml) = env(CONFIG_YAML_ENV) {
            return Self::EnvYaml(yaml);
        }
        Self::File(PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// How the source is named in messages: the file's path,
    /// `$SNIROUTE_CONFIG_YAML`, or the URL without its query (`?...`: a
    /// pre-signed URL's signature is not for logs).
    pub fn display_name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::EnvYaml(_) => CONFIG_YAML_ENV_NAME.to_owned(),
            Self::Url { url, .. } => match url.split_once('?') {
                Some((base, _)) => format!("{base}?..."),
                None => url.clone(),
            },
        }
    }
}

impl Config {
    /// Reads and validates the config from `source`.
    ///
    /// # Errors
    /// `FILE: cannot read: ...` when the file cannot be read (missing, a
    /// directory, over [`MAX_CONFIG_BYTES`], not UTF-8), otherwise as
    /// [`Config::from_yaml_str`]. A [`ConfigSource::Url`] is not fetched
    /// here (no network I/O in this crate): an error says so.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        let name = source.display_name();
        match source {
            ConfigSource::File(path) => {
                let text = read_file(path)
                    .map_err(|why| ConfigError::whole_file(&name, format!("cannot read: {why}")))?;
                Self::from_source_text(source, &text)
            }
            ConfigSource::EnvYaml(yaml) => Self::from_source_text(source, yaml),
            ConfigSource::Url { .. } => Err(ConfigError::whole_file(
                &name,
                "a config URL is fetched by `sniroute run`, `check` and `discover` only; \
                 save it to a file for this command",
            )),
        }
    }

    /// Parses and validates `text`, read (or fetched) from `source`, which
    /// names it in errors and becomes the config's `source`.
    ///
    /// # Errors
    /// As [`Config::from_yaml_str`].
    pub fn from_source_text(source: &ConfigSource, text: &str) -> Result<Config, ConfigError> {
        let mut config = Self::from_yaml_str(text, &source.display_name())?;
        config.source = source.clone();
        Ok(config)
    }

    /// Parses and validates YAML. `origin` names it in error messages (a
    /// path, or `$SNIROUTE_CONFIG_YAML`) and becomes the config's `source`,
    /// as `ConfigSource::File(origin)` ([`Config::load`] sets the real one).
    ///
    /// # Errors
    /// The first problem found, with the position and path of the
    /// offending node: YAML syntax, unknown or duplicate keys, wrong types,
    /// invalid values, names or addresses used twice, references to routes
    /// that do not exist, empty lists, and missing required keys.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // libyaml mistakes a byte order mark (which some editors write) for
        // a document boundary; editors do not count it as a column either.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let checker = validate::Checker::new(text, origin);
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let raw: raw::RawConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|e| checker.serde_error(&e))?;
        checker.convert(raw, ConfigSource::File(PathBuf::from(origin)))
    }

    /// The route called `name`.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// Why a config file could not be read (before any YAML is parsed).
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Directory,
    TooLarge,
    NotUtf8 { valid_up_to: usize },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Directory => f.write_str("it is a directory"),
            Self::TooLarge => write!(
                f,
                "the file is larger than {} MiB, too large for a config",
                MAX_CONFIG_BYTES / 1024 / 1024
            ),
            Self::NotUtf8 { valid_up_to } => {
                write!(f, "the file is not valid UTF-8 (at byte {valid_up_to})")
            }
        }
    }
}

/// Reads a config file as UTF-8, refusing directories and huge files.
fn read_file(path: &Path) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if meta.is_dir() {
        return Err(ReadError::Directory);
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        valid_up_to: e.utf8_error().valid_up_to(),
    })
}
