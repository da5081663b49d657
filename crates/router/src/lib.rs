//! sniroute's router: configuration, routing table, upstreams, the connection
//! pipeline, metrics and the admin endpoint.

pub mod config;
pub mod table;
