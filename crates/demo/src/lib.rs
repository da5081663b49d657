//! Real TLS upstreams for `sniroute demo` and the end-to-end tests.
//!
//! sniroute never terminates TLS, so showing (or testing) that it works needs
//! servers that do: this crate provides
//!
//! - [`Ca`]: a throwaway certificate authority (rcgen, ECDSA P-256) issuing
//!   server and client [`Identity`]s;
//! - [`TlsUpstream`]: a rustls server on a local port playing a Kubernetes
//!   API server. It records the SNI, client certificate CN and ALPN of each
//!   handshake, optionally REQUIRES a client certificate (mTLS through the
//!   router), and answers HTTP/1.1: `GET /version` with Kubernetes version
//!   JSON (`gitVersion` `v1.32.0+<name>`, so `kubectl version` works), any
//!   other path with `hello from <name>: sni=.. client=.. alpn=..`;
//! - [`https_get`]: a one-shot rustls client for tests;
//! - [`Demo`]: the two demo clusters, files and router config behind
//!   `sniroute demo`.
//!
//! Modules: `ca` ([`Ca`], [`Identity`]), `upstream` ([`TlsUpstream`] and
//! its options), `client` ([`https_get`]) and `demo` ([`Demo`]).
//!
//! All TLS uses rustls's *ring* provider, passed explicitly to every builder
//! (no process-wide default is installed or needed).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use demo::{https_get, Ca, TlsUpstream, UpstreamOptions};
//!
//! let ca = Ca::new("test CA");
//! let options = UpstreamOptions::new("cluster-a", ca.server_identity(&["a.test"]));
//! let upstream = TlsUpstream::start("127.0.0.1:0".parse().unwrap(), options).await?;
//! let client = Arc::new(ca.client_config(None));
//! let response = https_get(upstream.addr, "a.test", client, "/").await?;
//! assert_eq!(response.body, "hello from cluster-a: sni=a.test client=none alpn=none\n");
//! assert_eq!(upstream.last_sni().as_deref(), Some("a.test"));
//! # Ok(()) }
//! ```

mod ca;
mod client;
mod demo;
mod upstream;

pub use ca::{Ca, Identity};
pub use client::{https_get, HttpResponse};
pub use demo::{Demo, CLIENT_CN, CONFIG_FILE, KUBECONFIG_FILE};
pub use upstream::{TlsUpstream, UpstreamOptions, IO_TIMEOUT, MAX_REQUEST_HEAD};

/// The rustls crypto provider everything here uses (*ring*).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
