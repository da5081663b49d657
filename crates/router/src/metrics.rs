//! Every metric sniroute exports: names as constants, each described once,
//! histograms with explicit buckets.
//!
//! Label values are bounded: `route` is a configured route name or `none`,
//! `listener` a configured address, `upstream` a configured upstream or a
//! resolved endpoint of it; never a raw SNI, client address or anything
//! else a client controls.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Connections by fate: `{listener, route, result}`.
pub const CONNECTIONS_TOTAL: &str = "sniroute_connections_total";
/// Tunnels open now: `{route}`.
pub const ACTIVE_TUNNELS: &str = "sniroute_active_tunnels";
/// How long tunnels stayed open: `{route}`.
pub const TUNNEL_DURATION_SECONDS: &str = "sniroute_tunnel_duration_seconds";
/// Bytes forwarded, the ClientHello included: `{route, direction}`.
pub const BYTES_TOTAL: &str = "sniroute_bytes_total";
/// Time to connect upstream (successful attempts): `{route}`.
pub const UPSTREAM_CONNECT_SECONDS: &str = "sniroute_upstream_connect_seconds";
/// Failed upstream connection attempts: `{route, upstream}`.
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str = "sniroute_upstream_connect_failures_total";
/// Health of each endpoint, 1 or 0: `{route, upstream}`.
pub const UPSTREAM_HEALTHY: &str = "sniroute_upstream_healthy";
/// Time from accept to a complete ClientHello.
pub const CLIENT_HELLO_SECONDS: &str = "sniroute_client_hello_seconds";
/// Size of complete ClientHellos.
pub const CLIENT_HELLO_BYTES: &str = "sniroute_client_hello_bytes";
/// Config reloads: `{result}` = `success` | `failure`.
pub const CONFIG_RELOADS_TOTAL: &str = "sniroute_config_reloads_total";
/// Generation of the config in force (1 at start, +1 per successful reload).
pub const CONFIG_GENERATION: &str = "sniroute_config_generation";
/// Tunnels opened under an older config generation, still open.
pub const TUNNELS_ON_OLD_CONFIG: &str = "sniroute_tunnels_on_old_config";
/// Always 1: `{version}`.
pub const BUILD_INFO: &str = "sniroute_build_info";
/// Tunnels still open when the drain time ran out, closed by sniroute.
pub const DRAIN_CLOSED_TUNNELS_TOTAL: &str = "sniroute_drain_closed_tunnels_total";
/// Times accept(2) failed, by `{error}` (`emfile`, `enfile`, `other`).
pub const ACCEPT_ERRORS_TOTAL: &str = "sniroute_accept_errors_total";
/// Tunnels ended, by `{route, end}` (`finished`, `idle_timeout`,
/// `client_error`, `upstream_error`, `drain`).
pub const TUNNELS_ENDED_TOTAL: &str = "sniroute_tunnels_ended_total";

/// Buckets for `tunnel_duration_seconds`: from 10 ms up to a day.
const DURATION_BUCKETS: &[f64] = &[
    0.01,
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
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

/// The `result` label values of [`CONNECTIONS_TOTAL`], a fixed set.
pub const RESULTS: &[&str] = &[
    "forwarded",
    "no_route",
    "denied",
    "bad_client_hello",
    "client_hello_too_large",
    "not_tls",
    "client_hello_timeout",
    "upstream_unavailable",
    "over_limit",
    "client_closed",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody
/// scrapes `/metrics`.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the Prometheus recorder (once per process) and describes every
/// metric. Returns the handle that renders `/metrics`.
///
/// # Errors
/// When another global `metrics` recorder was installed first.
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let bucket_err = |e: metrics_exporter_prometheus::BuildError| e.to_string();
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(TUNNEL_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )
        .map_err(bucket_err)?
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_CONNECT_SECONDS.into()),
            LATENCY_BUCKETS,
        )
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(CLIENT_HELLO_SECONDS.into()), LATENCY_BUCKETS)
        .map_err(bucket_err)?
        .set_buckets_for_metric(Matcher::Full(CLIENT_HELLO_BYTES.into()), HELLO_SIZE_BUCKETS)
        .map_err(bucket_err)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    // Histogram samples wait in a queue until the next render or upkeep;
    // without a scrape (no `admin:`, or Prometheus down) that queue would
    // grow by a few samples per connection, forever.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Accepted connections by listener, route and result, counted once their fate is known."
    );
    describe_gauge!(ACTIVE_TUNNELS, "Tunnels open now, by route.");
    describe_histogram!(
        TUNNEL_DURATION_SECONDS,
        Unit::Seconds,
        "How long tunnels stayed open, by route."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Bytes forwarded by route and direction, the ClientHello included; updated while tunnels are open."
    );
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to establish the upstream TCP connection, by route."
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES_TOTAL,
        "Failed upstream connection attempts, by route and upstream endpoint."
    );
    describe_gauge!(
        UPSTREAM_HEALTHY,
        "1 when the upstream endpoint passes its health checks, else 0."
    );
    describe_histogram!(
        CLIENT_HELLO_SECONDS,
        Unit::Seconds,
        "Time from accept until the whole ClientHello arrived."
    );
    describe_histogram!(
        CLIENT_HELLO_BYTES,
        Unit::Bytes,
        "Size of complete ClientHellos, TLS record headers included."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads by result (success, failure)."
    );
    describe_gauge!(
        CONFIG_GENERATION,
        "Generation of the config in force: 1 at start, +1 per successful reload."
    );
    describe_gauge!(
        TUNNELS_ON_OLD_CONFIG,
        "Open tunnels that were routed by an older config generation."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label tells the build.");
    describe_counter!(
        DRAIN_CLOSED_TUNNELS_TOTAL,
        "Tunnels still open when the drain time ran out, closed by sniroute."
    );
    describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        "accept(2) failures by kind (emfile, enfile, other)."
    );
    describe_counter!(
        TUNNELS_ENDED_TOTAL,
        "Tunnels ended, by route and how they ended."
    );
}
