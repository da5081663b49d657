//! Every metric sniroute exports, and the small registry that renders them
//! in the Prometheus text format.
//!
//! # Why a registry of our own
//! Two promises need control over each series' life, which the `metrics`
//! facade and its Prometheus exporter do not give:
//! - every series a dashboard or an alert queries exists from the start, at
//!   0, for each label combination that can occur;
//! - the series of a route a reload removed, or of an endpoint DNS no longer
//!   returns, leave `/metrics` once nothing uses them.
//!
//! The exporter cannot delete one series, and its idle timeout would also
//! drop the zero series. Here a series lives exactly as long as a handle
//! ([`Counter`], [`Gauge`], [`Histogram`]) to it: the registry keeps only
//! weak references, and the render skips (and forgets) the dead ones.
//! Handles are made where their labels become known (a config generation
//! for routes and listeners, a pool for its endpoints, the process state
//! for the rest), so their owners decide both promises: a generation makes
//! every combination it can count at 0, and a removed route's handles go
//! with the last generation (and so the last tunnel) that used it. Asking
//! for a series that is alive returns the same cell, so counts carry across
//! reloads.
//!
//! Updates are one relaxed atomic operation: no lock, lookup or allocation
//! on the connection path.
//!
//! # Labels
//! Label values are bounded: `route` is a configured route name or `none`,
//! `listener` a configured address, `upstream` a resolved endpoint; the
//! fixed sets are the `ALL` lists of [`Outcome`], [`EndLabel`],
//! [`AcceptError`], [`ReloadResult`], [`UpgradeResult`], [`AdminClosed`],
//! [`EndpointState`], [`CheckResult`], [`DiscoverySource`] and [`SyncResult`].
//! Never a raw SNI,
//! client address or anything else a client controls.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

/// What kind of metric a family is.
#[derive(Debug)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// With its bucket upper bounds, ascending (`+Inf` is implied).
    Histogram(&'static [f64]),
}

/// A metric name with its help text and kind, described once.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    help: &'static str,
    kind: Kind,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, help, kind }
}

/// Buckets for `tunnel_duration_seconds`: from 10 ms up to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];
/// Buckets for connect and ClientHello latencies: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets for ClientHello sizes: typical hellos are 200 B to 2 KiB.
const HELLO_SIZE_BUCKETS: &[f64] = &[
    128.0, 256.0, 512.0, 1024.0, 1536.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
];

/// Connections by fate: `{listener, route, result}`.
pub(crate) const CONNECTIONS_TOTAL: Family = family(
    "sniroute_connections_total",
    Kind::Counter,
    "Accepted connections by listener, route and result, counted once their fate is known.",
);
/// Tunnels open now: `{route}`.
pub(crate) const ACTIVE_TUNNELS: Family = family(
    "sniroute_active_tunnels",
    Kind::Gauge,
    "Tunnels open now, by route.",
);
/// How long tunnels stayed open: `{route}`.
pub(crate) const TUNNEL_DURATION_SECONDS: Family = family(
    "sniroute_tunnel_duration_seconds",
    Kind::Histogram(DURATION_BUCKETS),
    "How long tunnels stayed open, by route.",
);
/// Bytes forwarded, the ClientHello included: `{route, direction}`.
pub(crate) const BYTES_TOTAL: Family = family(
    "sniroute_bytes_total",
    Kind::Counter,
    "Bytes forwarded by route and direction, the ClientHello included; updated while tunnels are open.",
);
/// Time to connect upstream (successful attempts): `{route}`.
pub(crate) const UPSTREAM_CONNECT_SECONDS: Family = family(
    "sniroute_upstream_connect_seconds",
    Kind::Histogram(LATENCY_BUCKETS),
    "Time to establish the upstream TCP connection, by route.",
);
/// Failed upstream connection attempts: `{route, upstream}`.
pub(crate) const UPSTREAM_CONNECT_FAILURES_TOTAL: Family = family(
    "sniroute_upstream_connect_failures_total",
    Kind::Counter,
    "Failed upstream connection attempts, by route and upstream endpoint.",
);
/// Health of each endpoint, 1 or 0: `{route, upstream}`.
pub(crate) const UPSTREAM_HEALTHY: Family = family(
    "sniroute_upstream_healthy",
    Kind::Gauge,
    "1 when the upstream endpoint passes its health checks, else 0.",
);
/// State of each endpoint, 1 for the current one: `{route, upstream,
/// state}`, see [`EndpointState`].
pub(crate) const UPSTREAM_STATE: Family = family(
    "sniroute_upstream_state",
    Kind::Gauge,
    "1 for the state the upstream endpoint is in (unknown, healthy, unhealthy, ejected, misrouted), 0 for the others.",
);
/// Active health checks by result: `{route, result}`, see [`CheckResult`].
pub(crate) const UPSTREAM_CHECKS_TOTAL: Family = family(
    "sniroute_upstream_checks_total",
    Kind::Counter,
    "Active health checks of upstream endpoints, by route and result.",
);
/// Endpoints ejected by outlier detection: `{route}`.
pub(crate) const UPSTREAM_EJECTIONS_TOTAL: Family = family(
    "sniroute_upstream_ejections_total",
    Kind::Counter,
    "Upstream endpoints ejected by outlier detection (connect failures in a row on live traffic), by route.",
);
/// Health check CA, certificate or token files that could not be read or
/// used (the last good ones stay): `{route}`.
pub(crate) const UPSTREAM_CA_READ_FAILURES_TOTAL: Family = family(
    "sniroute_upstream_ca_read_failures_total",
    Kind::Counter,
    "Times a health check's ca_file (or client certificate, key or token file) could not be read or used; the last good one stays in use.",
);
/// Time from accept to a complete ClientHello.
pub(crate) const CLIENT_HELLO_SECONDS: Family = family(
    "sniroute_client_hello_seconds",
    Kind::Histogram(LATENCY_BUCKETS),
    "Time from accept until the whole ClientHello arrived.",
);
/// Size of complete ClientHellos.
pub(crate) const CLIENT_HELLO_BYTES: Family = family(
    "sniroute_client_hello_bytes",
    Kind::Histogram(HELLO_SIZE_BUCKETS),
    "Size of complete ClientHellos, TLS record headers included.",
);
/// Config reloads: `{result}`, see [`ReloadResult`].
pub(crate) const CONFIG_RELOADS_TOTAL: Family = family(
    "sniroute_config_reloads_total",
    Kind::Counter,
    "Config reloads by result (success, failure).",
);
/// Fetches of a config URL: `{result}`, see [`FetchResult`].
pub(crate) const CONFIG_FETCHES_TOTAL: Family = family(
    "sniroute_config_fetches_total",
    Kind::Counter,
    "Fetches of the config URL (--config http[s]://...) by result: changed, unchanged (304 or the same document), failure.",
);
/// Generation of the config in force (1 at start, +1 per successful reload).
pub(crate) const CONFIG_GENERATION: Family = family(
    "sniroute_config_generation",
    Kind::Gauge,
    "Generation of the config in force: 1 at start, +1 per successful reload.",
);
/// Tunnels opened under an older config generation, still open.
pub(crate) const TUNNELS_ON_OLD_CONFIG: Family = family(
    "sniroute_tunnels_on_old_config",
    Kind::Gauge,
    "Open tunnels that were routed by an older config generation.",
);
/// Always 1: `{version}`.
pub(crate) const BUILD_INFO: Family = family(
    "sniroute_build_info",
    Kind::Gauge,
    "Always 1; the version label tells the build.",
);
/// Binary upgrades (`SIGUSR2`): `{result}`, see [`UpgradeResult`].
pub(crate) const UPGRADES_TOTAL: Family = family(
    "sniroute_upgrades_total",
    Kind::Counter,
    "Binary upgrades by result: success (counted by the new process), failure (by the old one, which keeps serving).",
);
/// When the process started (the standard name of Prometheus clients).
pub(crate) const PROCESS_START_TIME_SECONDS: Family = family(
    "process_start_time_seconds",
    Kind::Gauge,
    "Start time of the process since the Unix epoch, in seconds.",
);
/// Tunnels still open when the drain time ran out, closed by sniroute.
pub(crate) const DRAIN_CLOSED_TUNNELS_TOTAL: Family = family(
    "sniroute_drain_closed_tunnels_total",
    Kind::Counter,
    "Tunnels still open when the drain time ran out, closed by sniroute.",
);
/// Times accept(2) failed: `{error}`, see [`AcceptError`].
pub(crate) const ACCEPT_ERRORS_TOTAL: Family = family(
    "sniroute_accept_errors_total",
    Kind::Counter,
    "accept(2) failures by kind (emfile, enfile, other).",
);
/// Tunnels ended: `{route, end}`, see [`EndLabel`].
pub(crate) const TUNNELS_ENDED_TOTAL: Family = family(
    "sniroute_tunnels_ended_total",
    Kind::Counter,
    "Tunnels ended, by route and how they ended.",
);

/// Refusal access-log lines left out by the rate limit.
pub(crate) const ACCESS_LOG_SUPPRESSED_TOTAL: Family = family(
    "sniroute_access_log_suppressed_total",
    Kind::Counter,
    "Access log lines of refused connections left out because more than the limit per second came.",
);

/// Admin connections refused: the peer is outside `admin.allow_sources`.
pub(crate) const ADMIN_REFUSED_TOTAL: Family = family(
    "sniroute_admin_refused_total",
    Kind::Counter,
    "Admin connections from peers outside admin.allow_sources, closed before anything was read, without a response.",
);
/// Admin connections sniroute closed early: `{reason}`, see
/// [`AdminClosed`].
pub(crate) const ADMIN_CLOSED_TOTAL: Family = family(
    "sniroute_admin_closed_total",
    Kind::Counter,
    "Admin connections closed by sniroute before a complete answer, by reason.",
);
/// Admin connections open now.
pub(crate) const ADMIN_CONNECTIONS: Family = family(
    "sniroute_admin_connections",
    Kind::Gauge,
    "Admin connections open now: reading a request or writing an answer.",
);

/// Full syncs with a discovery source: `{source, result}`, see
/// [`DiscoverySource`] and [`SyncResult`].
pub(crate) const DISCOVERY_SYNCS_TOTAL: Family = family(
    "sniroute_discovery_syncs_total",
    Kind::Counter,
    "Full syncs with a discovery source (Marathon, Mesos) by result; a failed one keeps the last good endpoints.",
);
/// When a source's last full sync succeeded: `{source}`.
pub(crate) const DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS: Family = family(
    "sniroute_discovery_last_success_timestamp_seconds",
    Kind::Gauge,
    "Unix time of the discovery source's last successful full sync; 0 before the first.",
);
/// Times a source's event stream was opened again: `{source}`.
pub(crate) const DISCOVERY_STREAM_RECONNECTS_TOTAL: Family = family(
    "sniroute_discovery_stream_reconnects_total",
    Kind::Counter,
    "Times the discovery source's event stream ended or stalled and was opened again.",
);
/// Discovered endpoints of a route now: `{route}`.
pub(crate) const DISCOVERY_ENDPOINTS: Family = family(
    "sniroute_discovery_endpoints",
    Kind::Gauge,
    "Endpoints discovery gives a route now (tasks that count).",
);
/// Label-route conflicts: `{kind}`.
pub(crate) const DISCOVERY_CONFLICTS_TOTAL: Family = family(
    "sniroute_discovery_conflicts_total",
    Kind::Counter,
    "Server names a label-driven route claimed and lost, or that overlap another route's, by kind; counted once when the conflict appears.",
);

/// Label routes skipped or refused: `{reason}`.
pub(crate) const DISCOVERY_LABEL_ERRORS_TOTAL: Family = family(
    "sniroute_discovery_label_errors_total",
    Kind::Counter,
    "Label-driven routes skipped for a malformed label or refused for a name outside label_server_names_allowed, by reason; counted once when the error appears.",
);

/// Connections accepted by each worker thread: `{worker}`.
pub(crate) const WORKER_CONNECTIONS_TOTAL: Family = family(
    "sniroute_worker_connections_total",
    Kind::Counter,
    "Connections accepted by each worker thread (`workers`), before any limit: how the kernel spreads them over the workers' sockets.",
);

/// Every family, in the order `/metrics` shows them.
const FAMILIES: &[&Family] = &[
    &BUILD_INFO,
    &PROCESS_START_TIME_SECONDS,
    &UPGRADES_TOTAL,
    &CONFIG_GENERATION,
    &CONFIG_RELOADS_TOTAL,
    &CONFIG_FETCHES_TOTAL,
    &CONNECTIONS_TOTAL,
    &ACCEPT_ERRORS_TOTAL,
    &WORKER_CONNECTIONS_TOTAL,
    &CLIENT_HELLO_SECONDS,
    &CLIENT_HELLO_BYTES,
    &UPSTREAM_CONNECT_SECONDS,
    &UPSTREAM_CONNECT_FAILURES_TOTAL,
    &UPSTREAM_HEALTHY,
    &UPSTREAM_STATE,
    &UPSTREAM_CHECKS_TOTAL,
    &UPSTREAM_EJECTIONS_TOTAL,
    &UPSTREAM_CA_READ_FAILURES_TOTAL,
    &ACTIVE_TUNNELS,
    &BYTES_TOTAL,
    &TUNNEL_DURATION_SECONDS,
    &TUNNELS_ENDED_TOTAL,
    &TUNNELS_ON_OLD_CONFIG,
    &DRAIN_CLOSED_TUNNELS_TOTAL,
    &ACCESS_LOG_SUPPRESSED_TOTAL,
    &ADMIN_CONNECTIONS,
    &ADMIN_REFUSED_TOTAL,
    &ADMIN_CLOSED_TOTAL,
    &DISCOVERY_SYNCS_TOTAL,
    &DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS,
    &DISCOVERY_STREAM_RECONNECTS_TOTAL,
    &DISCOVERY_ENDPOINTS,
    &DISCOVERY_CONFLICTS_TOTAL,
    &DISCOVERY_LABEL_ERRORS_TOTAL,
];

/// Declares a label enum: its variants, their label values, and `ALL`.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in label order.
            #[allow(dead_code)] // a set made one series at a time needs it in tests only
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`], for arrays of handles.
            #[allow(dead_code)] // not every label set is kept in an array
            pub(crate) const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum! {
    /// A connection's fate: the `result` label of [`CONNECTIONS_TOTAL`].
    Outcome {
        /// Routed, connected and tunnelled.
        Forwarded => "forwarded",
        /// No route claims the name and there is no default.
        NoRoute => "no_route",
        /// The client's address is outside the route's `allow_sources`.
        Denied => "denied",
        /// A malformed hello, an SSLv2 hello or an invalid server name.
        BadClientHello => "bad_client_hello",
        /// A hello announcing more than `max_client_hello_bytes`.
        ClientHelloTooLarge => "client_hello_too_large",
        /// Plaintext HTTP or other bytes that are not TLS.
        NotTls => "not_tls",
        /// No complete hello within `timeouts.client_hello`.
        ClientHelloTimeout => "client_hello_timeout",
        /// Every upstream endpoint failed.
        UpstreamUnavailable => "upstream_unavailable",
        /// Over `limits.max_connections` or `limits.max_pending_hellos`.
        OverLimit => "over_limit",
        /// Over a per-source limit (`max_pending_hellos_per_source`,
        /// `max_connections_per_source`).
        SourceLimit => "source_limit",
        /// The client closed or reset before a complete hello.
        ClientClosed => "client_closed",
        /// On a listener with `accept_proxy_protocol`: a trusted peer's
        /// PROXY header missing (when required), malformed, truncated or
        /// stacked, or a header from a peer outside `from`.
        BadProxyHeader => "bad_proxy_header",
    }
}

label_enum! {
    /// A discovery source: the `source` label of the `sniroute_discovery_*`
    /// series.
    DiscoverySource {
        /// Marathon's REST API and event stream (`marathon_app` routes).
        Marathon => "marathon",
        /// The Mesos master's operator API (`mesos_tasks` routes).
        Mesos => "mesos",
    }
}

label_enum! {
    /// How a full sync ended: the `result` label of
    /// [`DISCOVERY_SYNCS_TOTAL`].
    SyncResult {
        /// The source answered and its answer was read.
        Success => "success",
        /// Unreachable, an error status, or an answer that does not parse.
        Failure => "failure",
    }
}

impl Outcome {
    /// Whether connections with this fate have a route. The others are
    /// decided before a route is known, and count under `route="none"`; so
    /// `forwarded` is never `none`, and `no_route` always is.
    pub(crate) const fn has_route(self) -> bool {
        matches!(
            self,
            Self::Forwarded | Self::Denied | Self::UpstreamUnavailable
        )
    }
}

label_enum! {
    /// How a tunnel ended: the `end` label of [`TUNNELS_ENDED_TOTAL`].
    EndLabel {
        /// Both sides closed (FIN) in order.
        Finished => "finished",
        /// No byte moved for `timeouts.idle`.
        IdleTimeout => "idle_timeout",
        /// The client reset the connection.
        ClientReset => "client_reset",
        /// The upstream reset the connection.
        UpstreamReset => "upstream_reset",
        /// Another I/O error on the client's socket.
        ClientError => "client_error",
        /// Another I/O error on the upstream's socket.
        UpstreamError => "upstream_error",
        /// Still open when the drain time ran out.
        Drain => "drain",
    }
}

label_enum! {
    /// Why accept(2) failed: the `error` label of [`ACCEPT_ERRORS_TOTAL`].
    AcceptError {
        /// The process is out of file descriptors.
        Emfile => "emfile",
        /// The system is out of file descriptors.
        Enfile => "enfile",
        /// Anything else.
        Other => "other",
    }
}

label_enum! {
    /// The `result` label of [`UPGRADES_TOTAL`].
    UpgradeResult {
        /// This process took over from the old one.
        Success => "success",
        /// The new process failed; this one keeps serving.
        Failure => "failure",
    }
}

label_enum! {
    /// The `result` label of [`CONFIG_FETCHES_TOTAL`].
    FetchResult {
        /// A document that differs from the last one (it is then loaded).
        Changed => "changed",
        /// `304 Not Modified`, or the same document again.
        Unchanged => "unchanged",
        /// No document: the server could not be reached or refused.
        Failure => "failure",
    }
}

label_enum! {
    /// The `result` label of [`CONFIG_RELOADS_TOTAL`].
    ReloadResult {
        /// The new config is in force.
        Success => "success",
        /// The new config was refused; the previous one stays.
        Failure => "failure",
    }
}

label_enum! {
    /// Why sniroute closed an admin connection early: the `reason` label
    /// of [`ADMIN_CLOSED_TOTAL`].
    AdminClosed {
        /// Still reading its request when the connection cap was reached:
        /// it made room for a new one (the oldest of the source holding
        /// the most).
        Evicted => "evicted",
        /// No complete request within the read time.
        ReadTimeout => "read_timeout",
        /// The answer not written within the write time.
        WriteTimeout => "write_timeout",
        /// The cap reached with every connection answering (none to
        /// evict): the new connection is closed at once.
        Full => "full",
    }
}

label_enum! {
    /// An endpoint's state: the `state` label of [`UPSTREAM_STATE`].
    EndpointState {
        /// Before its first check.
        Unknown => "unknown",
        /// Its checks pass (or it is not checked).
        Healthy => "healthy",
        /// Its checks fail: tried only when nothing healthy or unknown is
        /// left.
        Unhealthy => "unhealthy",
        /// Taken out by outlier detection until its ejection ends (and,
        /// where checks run, a check passes).
        Ejected => "ejected",
        /// Its certificate does not verify for the check's `server_name`
        /// against its `ca_file`: never gets traffic.
        Misrouted => "misrouted",
    }
}

label_enum! {
    /// How a health check ended: the `result` label of
    /// [`UPSTREAM_CHECKS_TOTAL`].
    CheckResult {
        /// Passed.
        Ok => "ok",
        /// An HTTP answer with a status not expected (or a Kubernetes
        /// `/readyz` body other than `ok`).
        HttpStatus => "http_status",
        /// The TLS handshake or the TLS connection failed (not a
        /// certificate mismatch).
        TlsError => "tls_error",
        /// The certificate does not verify against `ca_file` or is not for
        /// `server_name`: the endpoint is misrouted.
        CertificateMismatch => "certificate_mismatch",
        /// The TCP connect failed.
        ConnectError => "connect_error",
        /// No answer within the check's timeout.
        Timeout => "timeout",
    }
}

label_enum! {
    /// The `direction` label of [`BYTES_TOTAL`].
    Direction {
        /// From the client to the upstream, the ClientHello included.
        ClientToUpstream => "client_to_upstream",
        /// From the upstream to the client.
        UpstreamToClient => "upstream_to_client",
    }
}

/// A counter: only goes up.
#[derive(Clone, Debug)]
pub(crate) struct Counter(Arc<AtomicU64>);

impl Counter {
    pub(crate) fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now (for `/status`).
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge: a whole number that goes up and down.
#[derive(Clone, Debug)]
pub(crate) struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub(crate) fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub(crate) fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn decrement(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A histogram with fixed buckets.
#[derive(Clone, Debug)]
pub(crate) struct Histogram(Arc<HistogramCell>);

#[derive(Debug)]
pub(crate) struct HistogramCell {
    bounds: &'static [f64],
    /// Samples per bucket, not cumulative; the last is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, v: f64) {
        let cell = &self.0;
        let i = cell
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(cell.bounds.len());
        cell.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = cell
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }
}

/// One series as the registry holds it: weakly.
#[derive(Debug)]
enum Cell {
    Counter(Weak<AtomicU64>),
    Gauge(Weak<AtomicI64>),
    Histogram(Weak<HistogramCell>),
}

/// Every live series by family name and rendered labels
/// (`listener="…",route="…"`).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    series: Mutex<BTreeMap<(&'static str, Box<str>), Cell>>,
}

/// The process's registry.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn key(family: &Family, labels: &[(&str, &str)]) -> (&'static str, Box<str>) {
        let mut out = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        (family.name, out.into_boxed_str())
    }

    /// The counter `family{labels}`: the live one, or a new one at 0.
    pub(crate) fn counter(&self, family: &Family, labels: &[(&str, &str)]) -> Counter {
        debug_assert!(matches!(family.kind, Kind::Counter), "{}", family.name);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series
            .entry(Self::key(family, labels))
            .or_insert(Cell::Counter(Weak::new()));
        if let Cell::Counter(weak) = entry {
            if let Some(cell) = weak.upgrade() {
                return Counter(cell);
            }
        }
        let cell = Arc::new(AtomicU64::new(0));
        *entry = Cell::Counter(Arc::downgrade(&cell));
        Counter(cell)
    }

    /// The gauge `family{labels}`: the live one, or a new one at 0.
    pub(crate) fn gauge(&self, family: &Family, labels: &[(&str, &str)]) -> Gauge {
        debug_assert!(matches!(family.kind, Kind::Gauge), "{}", family.name);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series
            .entry(Self::key(family, labels))
            .or_insert(Cell::Gauge(Weak::new()));
        if let Cell::Gauge(weak) = entry {
            if let Some(cell) = weak.upgrade() {
                return Gauge(cell);
            }
        }
        let cell = Arc::new(AtomicI64::new(0));
        *entry = Cell::Gauge(Arc::downgrade(&cell));
        Gauge(cell)
    }

    /// The histogram `family{labels}`: the live one, or a new, empty one.
    pub(crate) fn histogram(&self, family: &Family, labels: &[(&str, &str)]) -> Histogram {
        let Kind::Histogram(bounds) = family.kind else {
            unreachable!("{} is not a histogram", family.name)
        };
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series
            .entry(Self::key(family, labels))
            .or_insert(Cell::Histogram(Weak::new()));
        if let Cell::Histogram(weak) = entry {
            if let Some(cell) = weak.upgrade() {
                return Histogram(cell);
            }
        }
        let cell = Arc::new(HistogramCell {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        });
        *entry = Cell::Histogram(Arc::downgrade(&cell));
        Histogram(cell)
    }

    /// Every live series in the Prometheus text format (version 0.0.4);
    /// dead ones are forgotten on the way.
    pub(crate) fn render(&self) -> String {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.retain(|_, cell| match cell {
            Cell::Counter(w) => w.strong_count() > 0,
            Cell::Gauge(w) => w.strong_count() > 0,
            Cell::Histogram(w) => w.strong_count() > 0,
        });
        let mut out = String::with_capacity(16 * 1024);
        for family in FAMILIES {
            let mut members = series
                .range((family.name, Box::from(""))..)
                .take_while(|((name, _), _)| *name == family.name)
                .peekable();
            if members.peek().is_none() {
                continue;
            }
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram(_) => "histogram",
            };
            let name = family.name;
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for ((_, labels), cell) in members {
                let braces = |extra: &str| -> String {
                    match (labels.is_empty(), extra.is_empty()) {
                        (true, true) => String::new(),
                        (true, false) => format!("{{{extra}}}"),
                        (false, true) => format!("{{{labels}}}"),
                        (false, false) => format!("{{{labels},{extra}}}"),
                    }
                };
                match cell {
                    Cell::Counter(w) => {
                        if let Some(c) = w.upgrade() {
                            let _ =
                                writeln!(out, "{name}{} {}", braces(""), c.load(Ordering::Relaxed));
                        }
                    }
                    Cell::Gauge(w) => {
                        if let Some(g) = w.upgrade() {
                            let _ =
                                writeln!(out, "{name}{} {}", braces(""), g.load(Ordering::Relaxed));
                        }
                    }
                    Cell::Histogram(w) => {
                        let Some(h) = w.upgrade() else { continue };
                        let mut cumulative = 0u64;
                        for (i, bucket) in h.buckets.iter().enumerate() {
                            cumulative += bucket.load(Ordering::Relaxed);
                            let le = match h.bounds.get(i) {
                                Some(b) => format!("le=\"{b}\""),
                                None => "le=\"+Inf\"".to_owned(),
                            };
                            let _ = writeln!(out, "{name}_bucket{} {cumulative}", braces(&le));
                        }
                        let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                        let _ = writeln!(out, "{name}_sum{} {sum}", braces(""));
                        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(""));
                    }
                }
            }
        }
        out
    }
}

/// Series that live as long as the process: made once at start, at 0.
#[derive(Debug)]
pub(crate) struct ProcessMetrics {
    pub(crate) accept_errors: [Counter; AcceptError::ALL.len()],
    pub(crate) reloads: [Counter; ReloadResult::ALL.len()],
    pub(crate) upgrades: [Counter; UpgradeResult::ALL.len()],
    pub(crate) drain_closed: Counter,
    pub(crate) generation: Gauge,
    pub(crate) tunnels_on_old_config: Gauge,
    pub(crate) hello_seconds: Histogram,
    pub(crate) hello_bytes: Histogram,
    /// `sniroute_discovery_conflicts_total{kind}`, by
    /// [`discovery::ConflictKind::index`].
    pub(crate) discovery_conflicts: [Counter; discovery::ConflictKind::ALL.len()],
    /// `sniroute_discovery_label_errors_total{reason}`: `malformed`, then
    /// `not_allowed`.
    pub(crate) discovery_label_errors: [Counter; 2],
    _build_info: Gauge,
    _start_time: Gauge,
}

impl ProcessMetrics {
    pub(crate) fn new() -> Self {
        let r = registry();
        let build_info = r.gauge(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]);
        build_info.set(1);
        let start_time = r.gauge(&PROCESS_START_TIME_SECONDS, &[]);
        start_time.set(process_start_time());
        Self {
            accept_errors: AcceptError::ALL
                .map_ref(|e| r.counter(&ACCEPT_ERRORS_TOTAL, &[("error", e.as_str())])),
            reloads: ReloadResult::ALL
                .map_ref(|e| r.counter(&CONFIG_RELOADS_TOTAL, &[("result", e.as_str())])),
            upgrades: UpgradeResult::ALL
                .map_ref(|e| r.counter(&UPGRADES_TOTAL, &[("result", e.as_str())])),
            drain_closed: r.counter(&DRAIN_CLOSED_TUNNELS_TOTAL, &[]),
            generation: r.gauge(&CONFIG_GENERATION, &[]),
            tunnels_on_old_config: r.gauge(&TUNNELS_ON_OLD_CONFIG, &[]),
            hello_seconds: r.histogram(&CLIENT_HELLO_SECONDS, &[]),
            hello_bytes: r.histogram(&CLIENT_HELLO_BYTES, &[]),
            discovery_conflicts: discovery::ConflictKind::ALL
                .map(|k| r.counter(&DISCOVERY_CONFLICTS_TOTAL, &[("kind", k.as_str())])),
            discovery_label_errors: ["malformed", "not_allowed"]
                .map(|why| r.counter(&DISCOVERY_LABEL_ERRORS_TOTAL, &[("reason", why)])),
            _build_info: build_info,
            _start_time: start_time,
        }
    }

    pub(crate) fn accept_error(&self, e: AcceptError) {
        self.accept_errors[e.index()].increment(1);
    }

    pub(crate) fn reload(&self, r: ReloadResult) {
        self.reloads[r.index()].increment(1);
    }

    /// Counts one new label error or conflict.
    pub(crate) fn label_issue(&self, kind: discovery::IssueKind) {
        match kind {
            discovery::IssueKind::Malformed => self.discovery_label_errors[0].increment(1),
            discovery::IssueKind::NotAllowed => self.discovery_label_errors[1].increment(1),
            discovery::IssueKind::Conflict(k) => self.discovery_conflicts[k.index()].increment(1),
        }
    }

    pub(crate) fn upgrade(&self, r: UpgradeResult) {
        self.upgrades[r.index()].increment(1);
    }
}

/// When this process started, in Unix seconds: from `/proc/self/stat`
/// (start time after boot) and the boot time in `/proc/stat`, as
/// Prometheus' own clients do; else now (the process state, which records
/// it, is made within moments of the start).
fn process_start_time() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    proc_start_time().unwrap_or(now)
}

fn proc_start_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses);
    // `starttime` is field 22, the 20th after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some((boot + ticks / hz.max(1)) as i64)
}

/// The admin endpoint's series, made when it starts (so they exist, at 0,
/// exactly when the endpoint is on).
#[derive(Debug)]
pub(crate) struct AdminMetrics {
    pub(crate) refused: Counter,
    pub(crate) closed: [Counter; AdminClosed::ALL.len()],
    pub(crate) open: Gauge,
}

impl AdminMetrics {
    pub(crate) fn new() -> Self {
        let r = registry();
        Self {
            refused: r.counter(&ADMIN_REFUSED_TOTAL, &[]),
            closed: AdminClosed::ALL
                .map_ref(|c| r.counter(&ADMIN_CLOSED_TOTAL, &[("reason", c.as_str())])),
            open: r.gauge(&ADMIN_CONNECTIONS, &[]),
        }
    }

    pub(crate) fn closed(&self, why: AdminClosed) {
        self.closed[why.index()].increment(1);
    }
}

/// A discovery source's series, made when the source starts (so they
/// exist, at 0, exactly while it runs). The source's own counts (from 0
/// for each start) are added as they grow, so the series carry across a
/// restart of the source with new settings.
#[derive(Debug)]
pub(crate) struct DiscoveryMetrics {
    syncs: [Counter; SyncResult::ALL.len()],
    last_success: Gauge,
    reconnects: Counter,
    /// The source's counts already added: syncs by result, reconnects.
    seen: [u64; 3],
}

impl DiscoveryMetrics {
    pub(crate) fn new(source: DiscoverySource) -> Self {
        let r = registry();
        let s = ("source", source.as_str());
        Self {
            syncs: SyncResult::ALL
                .map_ref(|e| r.counter(&DISCOVERY_SYNCS_TOTAL, &[s, ("result", e.as_str())])),
            last_success: r.gauge(&DISCOVERY_LAST_SUCCESS_TIMESTAMP_SECONDS, &[s]),
            reconnects: r.counter(&DISCOVERY_STREAM_RECONNECTS_TOTAL, &[s]),
            seen: [0; 3],
        }
    }

    /// Brings the series up to what the source reports now.
    pub(crate) fn record(&mut self, now: &discovery::Discovered) {
        let counts = [now.syncs, now.sync_failures, now.stream_reconnects];
        let cells = [
            &self.syncs[SyncResult::Success.index()],
            &self.syncs[SyncResult::Failure.index()],
            &self.reconnects,
        ];
        for ((seen, count), cell) in self.seen.iter_mut().zip(counts).zip(cells) {
            // A count below the one seen means a new source: start over.
            let added = count.checked_sub(*seen).unwrap_or(count);
            cell.increment(added);
            *seen = count;
        }
        if let Some(at) = now.last_success {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_success
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }
}

/// Maps a label list (`ALL`) into a fixed-size array of handles.
pub(crate) trait MapRef<T> {
    fn map_ref<U, const N: usize>(&self, f: impl FnMut(&T) -> U) -> [U; N];
}

impl<T> MapRef<T> for [T] {
    fn map_ref<U, const N: usize>(&self, mut f: impl FnMut(&T) -> U) -> [U; N] {
        assert_eq!(self.len(), N, "label list and array differ in length");
        std::array::from_fn(|i| f(&self[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique<T: Copy>(all: &[T], label: impl Fn(T) -> &'static str) {
        let mut seen = std::collections::HashSet::new();
        for &v in all {
            assert!(seen.insert(label(v)), "duplicate label {}", label(v));
        }
    }

    #[test]
    fn label_sets_are_complete_and_unique() {
        unique(Outcome::ALL, Outcome::as_str);
        unique(EndLabel::ALL, EndLabel::as_str);
        unique(AcceptError::ALL, AcceptError::as_str);
        unique(ReloadResult::ALL, ReloadResult::as_str);
        unique(FetchResult::ALL, FetchResult::as_str);
        unique(AdminClosed::ALL, AdminClosed::as_str);
        unique(DiscoverySource::ALL, DiscoverySource::as_str);
        unique(SyncResult::ALL, SyncResult::as_str);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        let routed: Vec<_> = Outcome::ALL.iter().filter(|o| o.has_route()).collect();
        assert_eq!(
            routed,
            [
                &Outcome::Forwarded,
                &Outcome::Denied,
                &Outcome::UpstreamUnavailable
            ]
        );
    }

    #[test]
    fn the_process_start_time_is_before_now_and_recent() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let start = proc_start_time().expect("/proc/self/stat and /proc/stat readable");
        // This test process started before now; a test run is not a day.
        assert!(start <= now && start > now - 86_400, "{start} vs {now}");
        assert_eq!(process_start_time(), start);
    }

    #[test]
    fn series_live_as_long_as_a_handle() {
        let r = Registry::default();
        let a = r.counter(&CONNECTIONS_TOTAL, &[("route", "a\"b\\c\nd")]);
        a.increment(2);
        let again = r.counter(&CONNECTIONS_TOTAL, &[("route", "a\"b\\c\nd")]);
        again.increment(1);
        assert_eq!(a.get(), 3, "the same labels give the same cell");
        let text = r.render();
        assert!(
            text.contains("sniroute_connections_total{route=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sniroute_connections_total counter\n"));
        drop((a, again));
        let text = r.render();
        assert!(!text.contains("sniroute_connections_total"), "{text}");
        assert!(r.series.lock().unwrap().is_empty(), "dead series forgotten");
        let fresh = r.counter(&CONNECTIONS_TOTAL, &[("route", "a\"b\\c\nd")]);
        assert_eq!(fresh.get(), 0, "a series made again starts at 0");
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let r = Registry::default();
        let h = r.histogram(&CLIENT_HELLO_BYTES, &[]);
        let empty = r.render();
        assert!(
            empty.contains("sniroute_client_hello_bytes_bucket{le=\"+Inf\"} 0\n"),
            "{empty}"
        );
        assert!(empty.contains("sniroute_client_hello_bytes_count 0\n"));
        h.record(100.0);
        h.record(512.0);
        h.record(1e9);
        let text = r.render();
        for line in [
            "sniroute_client_hello_bytes_bucket{le=\"128\"} 1\n",
            "sniroute_client_hello_bytes_bucket{le=\"256\"} 1\n",
            "sniroute_client_hello_bytes_bucket{le=\"512\"} 2\n",
            "sniroute_client_hello_bytes_bucket{le=\"65536\"} 2\n",
            "sniroute_client_hello_bytes_bucket{le=\"+Inf\"} 3\n",
            "sniroute_client_hello_bytes_sum 1000000612\n",
            "sniroute_client_hello_bytes_count 3\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let g = r.histogram(&UPSTREAM_CONNECT_SECONDS, &[("route", "a")]);
        g.record(0.0002);
        let text = r.render();
        assert!(
            text.contains(
                "sniroute_upstream_connect_seconds_bucket{route=\"a\",le=\"0.00025\"} 1\n"
            ),
            "{text}"
        );
    }
}
