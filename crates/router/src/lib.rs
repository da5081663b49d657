//! sniroute's engine: everything between a listening socket and the splice
//! engine, and what operators see of it.
//!
//! The public face is small: [`run`] (start-up, reload on SIGHUP or a
//! changed file, drain on SIGTERM, all inside) with its [`StartError`],
//! the sockets systemd passes it ([`Inherited`]), [`raise_nofile_limit`],
//! [`inspect_hello`], and [`discover`] (`sniroute discover`: the live
//! sources asked once, nothing changed), [`load_config`] (a config
//! file, variable or URL read once) and [`request_upgrade`] (`sniroute
//! upgrade`). Everything else is
//! crate-private, so the dead-code lints see what nobody uses.
//!
//! Modules, in the order one connection meets them:
//! - `server`: start-up, live reload and graceful drain; `activation`:
//!   listening sockets inherited from systemd; `notify`: telling systemd
//!   (`sd_notify`) when sniroute is ready, reloading, stopping, alive;
//!   `upgrade`: the binary upgrade on `SIGUSR2` (`upgrade_request`:
//!   `sniroute upgrade`, which asks for one and follows it); `config_source`: the
//!   config file, variable or URL, read and watched (`watch_config`).
//! - `workers`: the worker threads, each with its own current-thread
//!   runtime, that accept and serve connections (shared nothing but
//!   `state`'s atomics).
//! - `listener`: binding (one `SO_REUSEPORT` socket per worker) and accept
//!   loops (EMFILE back-off); `admission`:
//!   the limits a connection is counted against at accept (connections,
//!   pending hellos, per source).
//! - `pipeline`: one connection, top to bottom: read ClientHello → route →
//!   connect → forward hello → splice; `alert` is a TLS alert it writes
//!   itself (PROXY headers come from the `proxy_protocol` crate).
//! - `state`: the config generation in force (routes, their metric
//!   handles, the routing table) and the process-wide state.
//! - `table`: server name → route, and the one place default routes are
//!   resolved.
//! - `upstream`: pools of endpoints per route, DNS refresh, endpoint
//!   states (health checks, outlier detection), balancing and the connect
//!   loop; `health`: what one active check does (TCP, or HTTPS with the
//!   certificate verified against the route's CA to catch misrouting).
//! - `metrics`: every metric, its label sets, and the registry that renders
//!   `/metrics`; `admin` (behind its allow list and a connection cap that
//!   evicts unfinished requests; its request reader in `admin_request`)
//!   and `status_page`: the admin endpoint, with
//!   `recent` (the last refusals, the only place a client's server name is
//!   kept) and `activity` (per-route counts and rates over the last
//!   minute).
//! - `log_limit`: refusal log lines limited per second, with a summary.
//! - `inspect`: `sniroute inspect-hello`; `discover`: `sniroute discover`
//!   (the discovery sources started as `server` starts them, asked once).
//!
//! The config itself is the `config` crate's; the byte pump the `splice`
//! crate's; the ClientHello reader the `clienthello` crate's; PROXY headers
//! the `proxy_protocol` crate's; endpoints of `marathon_app` and
//! `mesos_tasks` routes come from the `discovery` crate (read by `state`
//! and `upstream`).

mod activation;
mod activity;
mod admin;
mod admin_request;
mod admission;
mod alert;
mod config_source;
mod discover;
mod health;
mod inspect;
mod listener;
mod log_limit;
mod metrics;
mod notify;
mod pipeline;
mod recent;
mod server;
mod state;
mod status_page;
mod table;
mod upgrade;
mod upgrade_request;
mod upstream;
mod workers;

pub use activation::{ActivationError, Inherited};
pub use config_source::load_config;
pub use discover::{discover, DiscoverError, DiscoverReport};
pub use inspect::{inspect_hello, InspectError};
pub use server::{raise_nofile_limit, run, StartError};
pub use upgrade_request::{admin_address, request_upgrade, Upgraded};

/// Entry points for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`);
/// not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Reads `bytes` as the start of an admin request and checks what the
    /// reader promises, panicking where a promise does not hold: see
    /// `admin_request::check_properties` (complete heads end at the first
    /// empty line, within 8 KiB, and read the same without what follows;
    /// every prefix of a valid head is incomplete; invalid stays invalid
    /// whatever follows; any visible-ASCII path reads back).
    pub fn admin_request(bytes: &[u8]) {
        crate::admin_request::check_properties(bytes);
    }
}
