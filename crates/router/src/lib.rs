//! sniroute's engine: everything between a listening socket and the splice
//! engine, and what operators see of it.
//!
//! The public face is small: [`run`] (start-up, reload on SIGHUP or a
//! changed file, drain on SIGTERM, all inside) with its [`StartError`],
//! [`raise_nofile_limit`], and [`inspect_hello`]. Everything else is
//! crate-private, so the dead-code lints see what nobody uses.
//!
//! Modules, in the order one connection meets them:
//! - `server`: start-up, live reload and graceful drain.
//! - `listener`: binding and accept loops (limits, EMFILE back-off).
//! - `pipeline`: one connection, top to bottom: read ClientHello → route →
//!   connect → forward hello → splice; `alert` and `proxy_protocol` are the
//!   bytes it writes itself.
//! - `state`: the config generation in force (routes, their metric
//!   handles, the routing table) and the process-wide state.
//! - `table`: server name → route, and the one place default routes are
//!   resolved.
//! - `upstream`: pools of endpoints per route, DNS refresh, health checks,
//!   balancing and the connect loop.
//! - `metrics`: every metric, its label sets, and the registry that renders
//!   `/metrics`; `admin` and `status_page`: the admin endpoint.
//! - `inspect`: `sniroute inspect-hello`.
//!
//! The config itself is the `config` crate's; the byte pump the `splice`
//! crate's; the ClientHello reader the `clienthello` crate's.

mod admin;
mod alert;
mod inspect;
mod listener;
mod metrics;
mod pipeline;
mod proxy_protocol;
mod server;
mod state;
mod status_page;
mod table;
mod upstream;

pub use inspect::{inspect_hello, InspectError};
pub use server::{raise_nofile_limit, run, StartError};
