//! sniroute's router: everything between a listening socket and the splice
//! engine.
//!
//! - [`config`]: the YAML config, validated once into typed values, with
//!   `FILE:LINE:COLUMN` errors; [`table`]: server name → route lookup.
//! - [`upstream`]: pools of endpoints per route, DNS refresh, health checks,
//!   balancing and the connect loop.
//! - [`state`]: the config generation in force and process-wide counters.
//! - [`listener`]: binding and accept loops (limits, EMFILE back-off).
//! - [`pipeline`]: one connection, top to bottom: read ClientHello → route →
//!   connect → forward hello → splice; [`alert`] and [`proxy_protocol`] are
//!   the bytes it writes itself.
//! - [`metrics`], [`admin`], [`status_page`]: what operators see.
//! - [`server`]: start-up, reload on SIGHUP, drain on SIGTERM.

pub mod admin;
pub mod alert;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod proxy_protocol;
pub mod server;
pub mod state;
pub mod status_page;
pub mod table;
pub mod upstream;
