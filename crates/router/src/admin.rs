//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`
//! and a small HTML status page at `/`.
//!
//! Hand-written HTTP/1.1 for `GET` and `HEAD` only: one request per
//! connection, `Connection: close`; the request reader is
//! [`crate::admin_request::parse_request`]. Nothing secret is ever shown:
//! routes, server names, upstream addresses, health, counters, and the
//! last refusals (with the server names clients asked for, sanitised: see
//! [`crate::recent`]).
//!
//! # Who may connect
//! A peer outside `admin.allow_sources` (default: loopback and the private
//! ranges) is closed as soon as it is accepted, before anything is read and
//! without a response, and counted in `sniroute_admin_refused_total`. The
//! list is the current config's, so a reload changes it at once.
//!
//! # Always answering
//! The endpoint must answer Marathon's health check even while clients
//! hold connections open without finishing their requests: a failed health
//! check makes Marathon kill the task, and every tunnel with it.
//! - Accepting never waits: there is no permit to take first.
//! - A connection is *reading* until its request head is complete (at most
//!   [`READ_TIMEOUT`]), then *answering* (at most [`WRITE_TIMEOUT`]). What
//!   has arrived is read at accept, so a client that sent its request with
//!   the handshake (they all do) starts out answering; and the accept loop
//!   lets the other connections read between two accepts, so a burst of
//!   accepts cannot evict a request that waits unread in its socket.
//! - At most [`MAX_OPEN`] connections are open. A new one over the cap
//!   closes a reading one (`evicted`): the oldest of the source (an IPv4
//!   address, an IPv6 /64) holding the most, so a flood of idle or
//!   dribbling connections makes room at its own expense. Answering
//!   connections are never closed to make room: when all of them answer,
//!   the new connection is closed instead (`full`), until one finishes.
//! - The sockets' kernel buffers are fixed ([`SEND_BUFFER`],
//!   [`RECEIVE_BUFFER`]), which bounds what each connection can pin.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::activity::{self, Totals};
use crate::admin_request::{parse_request, Request, MAX_HEAD};
use crate::admission::Source;
use crate::metrics::{AdminClosed, AdminMetrics};
use crate::state::{DiscoverySource, Shared};
use config::AdminConfig;

/// Admin connections open at once, reading or answering. A few clients use
/// the endpoint at a time (the Mesos health check, Marathon's readiness
/// check, one or two Prometheus servers, an operator's status page), so
/// 128 leaves room for bursts many times over, while bounding what a flood
/// pins. A reading connection holds its task and socket (about 8 KiB), at
/// most [`MAX_HEAD`] bytes of request and its receive queue (16 KiB set,
/// 32 KiB charged by the kernel): 128 of them, 6 MiB. An answering one
/// holds its answer, and its send queue too (32 KiB set, 64 KiB charged):
/// 128 of them, 13 MiB beside their answers (`/metrics` grows by a few KiB
/// a route).
pub(crate) const MAX_OPEN: usize = 128;
/// Time a client has to send its request head. Real clients send it in
/// one segment right after connecting; this only ends slow or silent ones
/// that the cap has not evicted first.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to compute and write an answer once the request is complete: the
/// default scrape timeout of Prometheus, past which the scrape has failed
/// on its side anyway.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `SO_SNDBUF` of admin sockets: fixed, so that a client that does not
/// read cannot make the kernel grow the buffer (autotuning goes to 4 MiB);
/// on a LAN it still moves tens of MB/s.
const SEND_BUFFER: usize = 32 * 1024;
/// `SO_RCVBUF` of admin sockets: a request is under [`MAX_HEAD`]; bytes a
/// client sends after it are never read, and this bounds them.
const RECEIVE_BUFFER: usize = 16 * 1024;
/// Connections the kernel may queue: the accept loop never waits, so this
/// only takes bursts.
const BACKLOG: i32 = 1024;

/// Binds the admin endpoint: `SO_REUSEADDR`, fixed buffer sizes (set on
/// the listening socket, so every accepted socket has them from its first
/// segment on). An IPv6 address is dual-stack where the system allows,
/// as before; IPv4 peers then appear as IPv4-mapped addresses, which
/// `allow_sources` compares as IPv4.
///
/// # Errors
/// The bind or listen error, e.g. address in use or permission denied.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Makes an inherited listening socket (socket activation, see
/// [`crate::activation`]) the admin endpoint: the buffer sizes [`bind`]
/// sets (accepted sockets inherit them), non-blocking.
///
/// # Errors
/// A failed `setsockopt` or `fcntl`.
pub(crate) fn adopt(socket: socket2::Socket) -> io::Result<TcpListener> {
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Serves the admin endpoint on `listener` until the task is aborted, and
/// meanwhile samples the per-route totals for the rates `/status` shows.
/// `admin` is the start-up config's: its allow list applies while the
/// current config has no `admin` (a reload that removes it takes effect at
/// the next start). The endpoint's series exist, at 0, once this returns.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    admin: AdminConfig,
) -> tokio::task::JoinHandle<()> {
    let conns = Arc::new(Conns::new(AdminMetrics::new()));
    tokio::spawn(async move {
        tokio::select! {
            () = activity::sample(shared.clone()) => {}
            () = accept_loop(listener, shared, admin, conns) => {}
        }
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    admin: AdminConfig,
    conns: Arc<Conns>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !allowed(&shared, &admin, peer.ip()) {
            conns.metrics.refused.increment(1);
            tracing::debug!(peer = %peer, "admin: peer outside allow_sources, closed");
            drop(stream);
            continue;
        }
        // What has arrived already: a client sends its request right
        // after connecting, so it is usually here, and such a connection
        // starts out answering, out of the flood's reach.
        let mut head = Vec::new();
        if let Some(complete) = read_available(&stream, &mut head) {
            conns.admit(
                stream,
                Source::of(peer.ip()),
                head,
                complete,
                shared.clone(),
            );
        }
        // Let the runtime poll its I/O driver, and the connections whose
        // requests have arrived read them, before the next accept: else a
        // burst of accepts (up to the task budget) could evict a
        // connection whose request waits unread in its socket.
        tokio::task::yield_now().await;
    }
}

/// Whether `ip` is in the current config's `admin.allow_sources` (or the
/// start-up one's, see [`spawn`]).
fn allowed(shared: &Shared, start: &AdminConfig, ip: IpAddr) -> bool {
    let generation = shared.current();
    generation.config.admin.as_ref().unwrap_or(start).allows(ip)
}

/// The open admin connections.
#[derive(Debug)]
struct Conns {
    inner: Mutex<Inner>,
    metrics: AdminMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    /// The next connection's number: numbers grow with age.
    next: u64,
    /// Connections still reading their request, oldest first: the ones a
    /// new connection may evict. Each has read what had arrived when it
    /// was accepted.
    reading: BTreeMap<u64, Reading>,
    /// How many of `reading` each source has.
    sources: HashMap<Source, usize>,
    /// Connections answering: never evicted.
    answering: usize,
}

/// A connection still reading its request.
#[derive(Debug)]
struct Reading {
    source: Source,
    /// Set just after the task is spawned (before the next accept, hence
    /// before any eviction).
    task: Option<AbortHandle>,
}

impl Inner {
    fn open(&self) -> usize {
        self.reading.len() + self.answering
    }

    fn add_reading(&mut self, id: u64, source: Source) {
        self.reading.insert(id, Reading { source, task: None });
        *self.sources.entry(source).or_default() += 1;
    }

    fn remove_reading(&mut self, id: u64) -> Option<Reading> {
        let reading = self.reading.remove(&id)?;
        match self.sources.get_mut(&reading.source) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.sources.remove(&reading.source);
            }
        }
        Some(reading)
    }

    /// The connection to evict: the oldest reading one among the sources
    /// (IPv4 addresses, IPv6 /64s) that hold the most reading connections.
    /// A flood's connections then make room for each other, not at the
    /// expense of the health check's, which comes from elsewhere (the
    /// agent's 127.0.0.1) and holds one.
    fn victim(&self) -> Option<u64> {
        let most = *self.sources.values().max()?;
        self.reading
            .iter()
            .find(|(_, r)| self.sources.get(&r.source) == Some(&most))
            .map(|(&id, _)| id)
    }
}

impl Conns {
    fn new(metrics: AdminMetrics) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner) {
        self.metrics
            .open
            .set((inner.reading.len() + inner.answering) as i64);
    }

    /// Starts serving `stream` from `source`, whose first bytes are
    /// `head` (`complete`: a whole or an invalid request head), evicting a
    /// reading connection ([`Inner::victim`]) when the cap is reached, or
    /// closing `stream` when every open connection is answering.
    fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        source: Source,
        head: Vec<u8>,
        complete: bool,
        shared: Arc<Shared>,
    ) {
        let (id, evicted) = {
            let mut inner = self.lock();
            let mut evicted = None;
            if inner.open() >= MAX_OPEN {
                match inner.victim() {
                    Some(victim) => evicted = inner.remove_reading(victim),
                    None => {
                        drop(inner);
                        self.metrics.closed(AdminClosed::Full);
                        return;
                    }
                }
            }
            let id = inner.next;
            inner.next += 1;
            if complete {
                inner.answering += 1;
            } else {
                inner.add_reading(id, source);
            }
            self.publish(&inner);
            (id, evicted)
        };
        // Outside the lock: the evicted task's end takes it.
        if let Some(victim) = evicted {
            if let Some(task) = victim.task {
                task.abort();
            }
            self.metrics.closed(AdminClosed::Evicted);
        }
        let slot = Slot {
            conns: self.clone(),
            id,
            answering: complete,
        };
        let task = tokio::spawn(handle(stream, head, shared, slot));
        if !complete {
            if let Some(entry) = self.lock().reading.get_mut(&id) {
                entry.task = Some(task.abort_handle());
            }
        }
    }
}

/// One connection's place in [`Conns`], given back when its task ends
/// (finished, timed out or evicted).
#[derive(Debug)]
struct Slot {
    conns: Arc<Conns>,
    id: u64,
    answering: bool,
}

impl Slot {
    /// Moves the connection to the answering phase, where it is no longer
    /// evicted; `false` when it was evicted first.
    fn answer(&mut self) -> bool {
        if self.answering {
            return true;
        }
        let mut inner = self.conns.lock();
        if inner.remove_reading(self.id).is_none() {
            return false;
        }
        inner.answering += 1;
        self.answering = true;
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.conns.lock();
        if self.answering {
            inner.answering -= 1;
        } else {
            inner.remove_reading(self.id);
        }
        self.conns.publish(&inner);
    }
}

/// Serves one connection, `head` holding what [`read_available`] read at
/// accept.
async fn handle(mut stream: TcpStream, mut head: Vec<u8>, shared: Arc<Shared>, mut slot: Slot) {
    match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut head)).await {
        Err(_) => {
            slot.conns.metrics.closed(AdminClosed::ReadTimeout);
            return;
        }
        // Closed or reset by the client.
        Ok(false) => return,
        Ok(true) => {}
    }
    if !slot.answer() {
        return;
    }
    let answered = tokio::time::timeout(WRITE_TIMEOUT, answer(&mut stream, &head, &shared)).await;
    if answered.is_err() {
        slot.conns.metrics.closed(AdminClosed::WriteTimeout);
    }
}

/// Reads what has arrived into `buf`, without waiting: `Some(true)` when
/// `buf` then holds a complete or an invalid request head, `Some(false)`
/// when it needs more, `None` when the client has closed or failed.
fn read_available(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    let mut chunk = [0u8; 1024];
    while parse_request(buf) == Request::Incomplete {
        // Incomplete: fewer than MAX_HEAD bytes so far.
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        match stream.try_read(&mut chunk[..room]) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
            Err(_) => return None,
        }
    }
    Some(true)
}

/// Reads until `buf` holds a complete or an invalid request head; `false`
/// when the client closes first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 1024];
    while parse_request(buf) == Request::Incomplete {
        // Incomplete: fewer than MAX_HEAD bytes so far.
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Answers the request in `head` (complete or invalid) and closes.
async fn answer(stream: &mut TcpStream, head: &[u8], shared: &Shared) {
    let (status, content_type, body, send_body) = match parse_request(head) {
        Request::Complete { method, path, .. } if method == "GET" || method == "HEAD" => {
            let (status, content_type, body) = route(path, shared);
            (status, content_type, body, method == "GET")
        }
        Request::Complete { .. } => (
            405,
            "text/plain",
            "only GET and HEAD are supported\n".to_owned(),
            true,
        ),
        Request::Invalid(why) => (400, "text/plain", why.message().to_owned(), true),
        // Not after read_head.
        Request::Incomplete => (400, "text/plain", "bad request\n".to_owned(), true),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn route(path: &str, shared: &Shared) -> (u16, &'static str, String) {
    match path {
        "/metrics" => {
            shared.publish_old_tunnels();
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::registry().render(),
            )
        }
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            if shared.ready.load(Ordering::Acquire) && !shared.discovery_ready() {
                (
                    503,
                    "text/plain",
                    "waiting for the first discovery sync\n".to_owned(),
                )
            } else if shared.ready.load(Ordering::Acquire) {
                (200, "text/plain", "ready\n".to_owned())
            } else if shared.draining.load(Ordering::Acquire) {
                (503, "text/plain", "draining\n".to_owned())
            } else {
                (503, "text/plain", "starting\n".to_owned())
            }
        }
        "/status" => (
            200,
            "application/json",
            serde_json::to_string_pretty(&status(shared)).unwrap_or_default() + "\n",
        ),
        "/" => (
            200,
            "text/html; charset=utf-8",
            crate::status_page::PAGE.to_owned(),
        ),
        _ => (
            404,
            "text/plain",
            "not found; try /, /status, /metrics, /healthz, /readyz\n".to_owned(),
        ),
    }
}

/// The `/status` document.
pub(crate) fn status(shared: &Shared) -> serde_json::Value {
    let generation = shared.current();
    let config = &generation.config;
    let now = Instant::now();
    let routes: Vec<_> = generation
        .routes
        .iter()
        .enumerate()
        .zip(&config.routes)
        .map(|((id, route), rc)| {
            let endpoints: Vec<_> = route
                .pool
                .endpoints()
                .iter()
                .map(|ep| {
                    json!({
                        "address": ep.addr.to_string(),
                        "upstream": ep.upstream,
                        "healthy": ep.is_healthy(),
                        "state": ep.state().as_str(),
                        "reason": ep.reason(),
                        "last_check": ep.last_check().map(|c| json!({
                            "time": crate::recent::rfc3339(c.time),
                            "result": c.result.as_str(),
                            "latency_ms": (c.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                            "reason": c.reason,
                        })),
                        "active_tunnels": ep.active(),
                        "connect_failures": ep.connect_failures(),
                        "last_error": ep.last_error().map(|(at, error)| json!({
                            "time": crate::recent::rfc3339(at),
                            "error": error,
                        })),
                    })
                })
                .collect();
            let totals = Totals::of(&generation, Some(id));
            json!({
                "name": route.name,
                "server_names": rc.server_names.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "upstreams": rc.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "discovered_from": route.pool.discovered(),
                "health_checked": route.pool.health_checked(),
                "endpoints": endpoints,
                "active_tunnels": route.pool.endpoints().iter().map(|ep| ep.active()).sum::<usize>(),
                "connections": activity::connections_json(&generation, Some(id)),
                "bytes": {
                    "client_to_upstream": totals.client_to_upstream,
                    "upstream_to_client": totals.upstream_to_client,
                },
                "rates": shared.rates.json(Some(&route.name), totals, now),
            })
        })
        .collect();
    let unrouted = json!({
        "connections": activity::connections_json(&generation, None),
        "rates": shared.rates.json(None, Totals::of(&generation, None), now),
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "config_generation": generation.id,
        "config_source": config.source.display_name(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "ready": shared.ready.load(Ordering::Acquire),
        "draining": shared.draining.load(Ordering::Acquire),
        "open_connections": shared.connections.load(Ordering::Acquire),
        "pending_hellos": crate::admission::pending_hellos(shared),
        "open_tunnels": shared.open_tunnels(),
        "tunnels_on_old_config": shared.tunnels_on_old_config(),
        "listeners": config.listeners.iter().map(|l| json!({
            "address": l.address.to_string(),
            "default_route": l.default_route,
        })).collect::<Vec<_>>(),
        "default_route": config.default_route,
        "routes": routes,
        "unrouted": unrouted,
        "recent_refusals": shared.recent.to_json(),
        "discovery": discovery_json(shared),
    })
}

/// The discovery sources' state for `/status` (`null` without one).
fn discovery_json(shared: &Shared) -> serde_json::Value {
    let generation = shared.current();
    let config = &generation.config.discovery;
    let source = |urls: &[String], required: bool, d: discovery::Discovered| {
        json!({
            "urls": urls,
            "required": required,
            "synced": d.synced,
            "following": d.following,
            "last_success": d.last_success.map(crate::recent::rfc3339),
            "last_error": d.last_error,
            "syncs": d.syncs,
            "sync_failures": d.sync_failures,
            "stream_reconnects": d.stream_reconnects,
            "left_out": *d.left_out,
        })
    };
    let mut out = serde_json::Map::new();
    if let Some(m) = &config.marathon {
        let d = shared.discovered(DiscoverySource::Marathon);
        let mut marathon = source(&m.urls, m.required, d);
        marathon["labels"] = labels_json(shared, m);
        out.insert("marathon".into(), marathon);
    }
    if let Some(m) = &config.mesos {
        let d = shared.discovered(DiscoverySource::Mesos);
        out.insert("mesos".into(), source(&m.urls, m.required, d));
    }
    if out.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(out)
    }
}

/// Label-driven routes for `/status` (`null` without `label_group`): the
/// routes in force with their endpoints, and every refusal, label error and
/// conflict in force.
fn labels_json(shared: &Shared, m: &config::MarathonConfig) -> serde_json::Value {
    let Some(l) = &m.labels else {
        return serde_json::Value::Null;
    };
    let overlay = shared.current().labels();
    let routes: Vec<_> = overlay
        .routes
        .iter()
        .zip(&overlay.info)
        .map(|(route, info)| {
            let endpoints: Vec<_> = route
                .pool
                .endpoints()
                .iter()
                .map(|ep| {
                    json!({
                        "address": ep.addr.to_string(),
                        "healthy": ep.is_healthy(),
                        "active_tunnels": ep.active(),
                        "connect_failures": ep.connect_failures(),
                    })
                })
                .collect();
            json!({
                "name": route.name,
                "app_id": info.app_id,
                "port_index": info.port_index,
                "from_marathon_lb_labels": info.marathon_lb,
                "last_config_change_at": info.last_config_change_at,
                "server_names": info.server_names.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "allow_sources": info.allow_sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "proxy_protocol": info.proxy_protocol.as_str(),
                "balance": info.balance.as_str(),
                "health_checked": route.pool.health_checked(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let issues: Vec<_> = shared
        .label_issues()
        .iter()
        .map(|i| {
            json!({
                "kind": i.kind.as_str(),
                "conflict": matches!(i.kind, discovery::IssueKind::Conflict(_)),
                "app_id": i.app_id,
                "route": i.route,
                "message": i.message,
            })
        })
        .collect();
    json!({
        "group": l.group,
        "server_names_allowed": l.server_names_allowed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "marathon_lb_labels": l.marathon_lb,
        "routes": routes,
        "issues": issues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: &str) -> Source {
        Source::of(ip.parse().unwrap())
    }

    #[test]
    fn the_victim_is_the_oldest_of_the_source_holding_the_most() {
        let mut inner = Inner::default();
        assert_eq!(inner.victim(), None);
        let (agent, flood, other) = (source("127.0.0.1"), source("10.0.0.9"), source("10.0.0.7"));
        inner.add_reading(1, agent);
        assert_eq!(inner.victim(), Some(1), "the only one");
        inner.add_reading(2, flood);
        assert_eq!(inner.victim(), Some(1), "a tie: the oldest");
        inner.add_reading(3, flood);
        inner.add_reading(4, other);
        inner.add_reading(5, flood);
        assert_eq!(
            inner.victim(),
            Some(2),
            "the flood's oldest, not the agent's"
        );
        assert!(inner.remove_reading(2).is_some());
        assert_eq!(inner.victim(), Some(3));
        assert!(inner.remove_reading(3).is_some());
        assert!(inner.remove_reading(5).is_some());
        assert_eq!(inner.sources.get(&flood), None, "no empty entries");
        assert_eq!(inner.victim(), Some(1), "a tie again: the oldest");
        assert!(inner.remove_reading(5).is_none(), "removed twice");
        // IPv4-mapped peers count as their IPv4 address; IPv6 by /64.
        assert_eq!(source("::ffff:127.0.0.1"), agent);
        assert_eq!(source("2001:db8::1"), source("2001:db8::2"));
        assert_eq!(inner.open(), 2);
    }
}
