//! End-to-end tests of the real `sniroute` binary: one test binary, one
//! module per area, all sharing the harness in [`common`].
//!
//! | module | covers |
//! | --- | --- |
//! | [`routing`] | exact, wildcard and default routes, refusals and their alerts, dribbled and record-split hellos, PROXY protocol, IPv6 |
//! | [`tunnels`] | half-close, resets, idle timeout, 1 GiB each way, 2,000 concurrent tunnels |
//! | [`tls_clients`] | rustls, `curl`, `openssl s_client` and `kubectl` through the router |
//! | [`operations`] | admin endpoint, metrics (`promtool`, a real Prometheus), reload, drain |
//! | [`config_url`] | `--config URL` against a fake config server: fetched at start (retried while it fails), watched with `ETag`/`304`, reloaded when it changes, kept when the server fails or serves an invalid document; `sniroute check` with a URL |
//! | [`admin`] | the admin endpoint's allow list (refused peers get no answer, IPv4-mapped peers, reload), health checks within 1 s under 1,000 idle or dribbling connections, a slow `/metrics` reader not cut by evictions |
//! | [`status_page`] | `/status` and the page after known traffic: counts, rates, endpoint errors, recent refusals; the page in headless Chromium behind a path prefix |
//! | [`limits`] | memory that follows the bytes, the pending-hello cap, per-source limits, ALPN-heavy hellos |
//! | [`resilience`] | hostile input, floods, upstream faults, descriptor exhaustion, 5,000 tunnels under reloads |
//! | [`docs`] | README's crate picture against the manifests |
//! | [`deploy`] | everything in `deploy/` |
//! | [`proxy_protocol`] | PROXY protocol from a front load balancer (`accept_proxy_protocol`): v1, v2, `LOCAL`, optional headers, `allow_sources`, access log and `/status` by the header's address; missing, stacked, truncated and garbage headers and headers from untrusted peers refused as `bad_proxy_header` |
//! | [`mesos`] | Mesos discovery against a fake Mesos master (operator API: GET_STATE, the SUBSCRIBE RecordIO stream): tasks added, killed, moved and flipping health, a non-leader's 307 after a dead first URL, a stream without heartbeats, a stream cut inside an event, resyncs, malformed JSON, `/readyz` until the first sync, and the seed scenario: kubectl to a `kube-control-plane` task through sniroute with mTLS |
//! | [`health`] | health checks against a fake kube-apiserver (`/readyz` 200 and 503, other CAs and names: misrouted, handshake failures, timeouts, client certificates, CA rotation), outlier detection on live traffic, `sniroute check` errors |
//! | [`discovery_auth`] | Marathon discovery behind DC/OS authentication: a token file rotated on disk, a service-account login over https (`ca_file`) refreshed before expiry and after a 401, a wrong key counted with the last endpoints kept |
//! | [`systemd`] | under systemd with the test in its place: `READY=1` (after a required discovery sync), `RELOADING=1`/`READY=1` around reloads, `STOPPING=1`, watchdog pings; socket activation: inherited listeners and admin socket served without a bind (a connection queued before the start included), kept across reloads, an unmatched socket refused; `MAINPID=` and the watchdog after a binary upgrade; a binary upgrade of a socket-activated router (the same sockets handed over, still known as systemd's); `process_start_time_seconds` |
//! | [`upgrade`] | the binary upgrade (`kill -USR2`): three in a row under about 100 connections a second and ten checksummed tunnels, nothing refused, reset or corrupted, the old processes gone with their descriptors; a broken config leaves the old process serving and no stray process; `sniroute upgrade` reports either outcome |
//! | [`marathon`] | Marathon discovery against a fake Marathon: tasks that start, die and fail health checks, a dropped event stream, 503 without a leader and a non-leader's 302, `/readyz` until the first sync |
//! | [`discover`] | `sniroute discover` against the fake Marathon and Mesos master: endpoints, tasks left out and why, label routes and refusals, text and JSON; a source that is down exits 1 with its error within `--timeout` |
//! | [`marathon_labels`] | label-driven routes from the fake Marathon's app labels: a route that appears (real TLS) and goes without a new generation while its tunnel stays, names outside the allow-list and malformed labels, every kind of conflict, Marathon-LB tcp and http apps |
//!
//! Tests take turns through [`common::light`] and [`common::heavy`]: heavy
//! tests need most of the process's descriptors and time their results, so
//! they run alone.

mod admin;
mod common;
mod config_url;
mod deploy;
mod discover;
mod discovery_auth;
mod docs;
mod health;
mod limits;
mod marathon;
mod marathon_labels;
mod mesos;
mod operations;
mod proxy_protocol;
mod resilience;
mod routing;
mod status_page;
mod systemd;
mod tls_clients;
mod tunnels;
mod upgrade;
mod workers;
