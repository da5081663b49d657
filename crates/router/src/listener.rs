//! Binding (or adopting sockets inherited from systemd, see
//! [`crate::activation`], or handed over by a binary upgrade) and accept
//! loops: one [`Group`] per configured listener, with at least one
//! listening socket and accept loop on every worker ([`crate::workers`]).
//!
//! An accept loop never spins and never dies: when the process is out of
//! file descriptors (EMFILE/ENFILE) it backs off, doubling from 10 ms to
//! 1 s, and recovers as soon as connections close. Over
//! `limits.max_connections` a connection is accepted and closed at once, so
//! the kernel's accept queue never fills with connections nobody serves.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admission;
use crate::metrics::{AcceptError, Counter};
use crate::pipeline::{self, Accepted};
use crate::state::Shared;
use crate::workers::Workers;

/// Pending connections the kernel may queue per listening socket.
const BACKLOG: i32 = 4096;

/// Binds a TLS listening socket: `SO_REUSEADDR` (restart while old
/// connections linger in TIME_WAIT), `SO_REUSEPORT` (every worker binds
/// its own socket to the address, and the kernel spreads new connections
/// over them; a binary upgrade's new process joins the same group) and,
/// for IPv6, `IPV6_V6ONLY`, so that `0.0.0.0:6443` and `[::]:6443` can both
/// be configured.
///
/// The per-connection socket options ([`pipeline::tune`]) are set on the
/// listening socket: Linux copies `TCP_NODELAY` and the keepalive settings
/// into every accepted socket, which saves five `setsockopt` calls per
/// connection (elsewhere they are set again after `accept`).
///
/// The socket is not registered with any runtime yet: [`Group::start`]
/// does that on the worker that accepts on it.
///
/// # Errors
/// The bind or listen error, e.g. address in use or permission denied.
pub(crate) fn bind(addr: SocketAddr, user_timeout: Duration) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    pipeline::tune_socket(&socket, user_timeout)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// Makes an inherited listening socket (socket activation, or a binary
/// upgrade's hand-over) a TLS listener: the per-connection options [`bind`]
/// sets, set the same way (accepted sockets inherit them), and
/// non-blocking. Its bind options (backlog, `IPV6_V6ONLY`) are the
/// supervisor's.
///
/// # Errors
/// A failed `setsockopt` or `fcntl`.
pub(crate) fn adopt(socket: &socket2::Socket, user_timeout: Duration) -> io::Result<()> {
    pipeline::tune_socket(socket, user_timeout)?;
    socket.set_nonblocking(true)
}

/// Binds `count` sockets (at least one) to `addr` with [`bind`], the
/// first to `addr` and the others to the address it got (the port, when
/// `addr` has port 0).
///
/// # Errors
/// The first bind error; the sockets bound so far are closed (they have
/// accepted nothing yet).
pub(crate) fn bind_all(
    addr: SocketAddr,
    user_timeout: Duration,
    count: usize,
) -> io::Result<Vec<socket2::Socket>> {
    let first = bind(addr, user_timeout)?;
    let local = local_of(&first, addr);
    let mut out = Vec::with_capacity(count.max(1));
    out.push(first);
    for _ in 1..count {
        out.push(bind(local, user_timeout)?);
    }
    Ok(out)
}

/// Where one configured listener's sockets come from.
#[derive(Debug)]
pub(crate) enum Sockets {
    /// None: bind one per worker.
    Bind,
    /// Bound already with [`bind_all`], one per worker (a reload binds
    /// before the new config is in force, and starts accepting after).
    Bound(Vec<socket2::Socket>),
    /// Handed over by a binary upgrade: every socket of the old process's
    /// group. They are spread over the workers (a worker may accept on
    /// more than one), and workers that get none bind a new socket, which
    /// joins the same `SO_REUSEPORT` group.
    HandedOver(Vec<socket2::Socket>),
    /// One socket systemd holds too (socket activation, directly or
    /// through an upgrade): every worker accepts on a duplicate of it, so
    /// they share its queue. Binding more would not help: systemd's
    /// socket decides whether `SO_REUSEPORT` is set.
    Shared(socket2::Socket),
}

/// One accept loop on one worker, with the listening socket it accepts on.
#[derive(Debug)]
struct Running {
    /// The worker it runs on.
    worker: usize,
    /// The listening socket, shared with the accept loop (the binary
    /// upgrade hands it over).
    listener: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// One configured listener: its accept loops, at least one per worker,
/// each on its own socket (or on a duplicate of one shared socket, see
/// [`Sockets::Shared`]). Dropping it does not stop the loops,
/// [`Group::stop`] does.
#[derive(Debug)]
pub(crate) struct Group {
    /// The bound address (with the real port when 0 was configured).
    pub(crate) local: SocketAddr,
    /// Whether the sockets are duplicates of one ([`Sockets::Shared`]).
    shared_queue: bool,
    running: Vec<Running>,
}

impl Group {
    /// Starts accepting on every worker of `workers` for the listener
    /// configured as `configured`, on `sockets`.
    ///
    /// # Errors
    /// A socket that cannot be bound, duplicated or registered; the
    /// sockets made so far are closed then, those handed in too (at
    /// start-up the process then exits; the old process of an upgrade
    /// still holds its copies).
    pub(crate) fn start(
        configured: SocketAddr,
        sockets: Sockets,
        workers: &Workers,
        shared: &Arc<Shared>,
    ) -> io::Result<Self> {
        let user_timeout = shared.current().config.timeouts.tcp_user_timeout;
        let n = workers.len();
        // (worker, socket), every worker at least once.
        let mut placed: Vec<(usize, socket2::Socket)> = Vec::with_capacity(n);
        let shared_queue = matches!(sockets, Sockets::Shared(_));
        match sockets {
            Sockets::Bind => {
                placed.extend(
                    bind_all(configured, user_timeout, n)?
                        .into_iter()
                        .enumerate(),
                );
            }
            Sockets::Bound(bound) => {
                let count = bound.len();
                placed.extend(bound.into_iter().enumerate().map(|(i, s)| (i % n, s)));
                if count < n {
                    return Err(io::Error::other("fewer sockets bound than workers"));
                }
            }
            Sockets::Shared(socket) => {
                adopt(&socket, user_timeout)?;
                for k in 1..n {
                    placed.push((k, socket.try_clone()?));
                }
                placed.push((0, socket));
            }
            Sockets::HandedOver(handed) => {
                let Some(local) = handed.first().map(|s| local_of(s, configured)) else {
                    return Self::start(configured, Sockets::Bind, workers, shared);
                };
                for (i, socket) in handed.into_iter().enumerate() {
                    adopt(&socket, user_timeout)?;
                    placed.push((i % n, socket));
                }
                for k in placed.len()..n {
                    match bind(local, user_timeout) {
                        Ok(socket) => placed.push((k, socket)),
                        Err(e) => {
                            // A group bound without SO_REUSEPORT (by an
                            // older sniroute): this worker shares a socket.
                            tracing::warn!(listener = %configured, worker = k, error = %e,
                                "cannot bind another socket to the handed-over address; \
                                 this worker accepts on a handed-over socket's queue");
                            let dup = placed[k % placed.len()].1.try_clone()?;
                            placed.push((k, dup));
                        }
                    }
                }
            }
        }
        placed.sort_by_key(|(worker, _)| *worker);
        let local = placed
            .first()
            .map_or(configured, |(_, s)| local_of(s, configured));
        let listener = Arc::new(pipeline::Listener::new(configured));
        let mut running: Vec<Running> = Vec::with_capacity(placed.len());
        for (worker, socket) in placed {
            let handle = workers.handle(worker);
            let registered = {
                let _entered = handle.enter();
                TcpListener::from_std(socket.into())
            };
            let tokio_listener = match registered {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    // The loops started so far end, and close their sockets.
                    for r in &running {
                        let _ = r.stop.send(true);
                    }
                    return Err(e);
                }
            };
            let (stop, stopped) = watch::channel(false);
            let task = handle.spawn(accept_loop(
                tokio_listener.clone(),
                listener.clone(),
                shared.clone(),
                workers.accepted(worker),
                stopped,
            ));
            running.push(Running {
                worker,
                listener: tokio_listener,
                stop,
                task,
            });
        }
        Ok(Self {
            local,
            shared_queue,
            running,
        })
    }

    /// How many sockets (accept loops) it has.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    /// The listening sockets a binary upgrade hands over: every one of the
    /// group (closing one would reset the connections queued in it), or
    /// the one shared socket once.
    pub(crate) fn handover(&self) -> Vec<socket2::SockRef<'_>> {
        let take = if self.shared_queue {
            1
        } else {
            self.running.len()
        };
        self.running
            .iter()
            .take(take)
            .map(|r| socket2::SockRef::from(&*r.listener))
            .collect()
    }

    /// The workers its accept loops run on, in order (for the log).
    pub(crate) fn workers(&self) -> Vec<usize> {
        self.running.iter().map(|r| r.worker).collect()
    }

    /// Stops accepting on every worker and returns one listening socket
    /// (for a systemd socket that is kept open, see `server`); the others
    /// close when dropped. Open connections are not touched.
    pub(crate) async fn stop(self) -> Option<std::net::TcpListener> {
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        let mut first = None;
        for r in self.running {
            let _ = r.task.await;
            if let Ok(l) = Arc::try_unwrap(r.listener) {
                if first.is_none() {
                    first = l.into_std().ok();
                }
            }
        }
        first
    }
}

/// The address `socket` is bound to, else `configured`.
fn local_of(socket: &socket2::Socket, configured: SocketAddr) -> SocketAddr {
    socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(configured)
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    configured: Arc<pipeline::Listener>,
    shared: Arc<Shared>,
    accepted_here: Counter,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::ZERO;
    // The TCP_USER_TIMEOUT accepted sockets inherit; set again on the
    // listening socket when a reload changes it.
    let mut user_timeout = shared.current().config.timeouts.tcp_user_timeout;
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|&s| s) => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                accepted_here.increment(1);
                let generation = shared.current();
                let wanted = generation.config.timeouts.tcp_user_timeout;
                if wanted != user_timeout {
                    user_timeout = wanted;
                    let _ = pipeline::set_user_timeout(socket2::SockRef::from(&*listener), wanted);
                    // This one was accepted before the change.
                    #[cfg(target_os = "linux")]
                    let _ = pipeline::set_user_timeout(socket2::SockRef::from(&stream), wanted);
                }
                admit(stream, peer, &configured, &shared, generation);
            }
            Err(e) => {
                let kind = match e.raw_os_error() {
                    Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() => {
                        AcceptError::Emfile
                    }
                    Some(code) if code == rustix::io::Errno::NFILE.raw_os_error() => {
                        AcceptError::Enfile
                    }
                    _ => AcceptError::Other,
                };
                shared.metrics.accept_error(kind);
                // Errors that concern only the connection being accepted
                // (it was reset while queued) need no pause.
                if kind == AcceptError::Other && is_per_connection(&e) {
                    continue;
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(listener = %configured.label, error = %e, backoff_ms = backoff.as_millis() as u64,
                    "accept failed; pausing this listener");
                tokio::select! {
                    _ = stopped.wait_for(|&s| s) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Counts the connection against the limits ([`admission`]) and hands it to
/// the pipeline, or closes it at once when over one.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Arc<pipeline::Listener>,
    shared: &Arc<Shared>,
    generation: Arc<crate::state::Generation>,
) {
    let at = Instant::now();
    // A trusted load balancer's connection is counted per source under the
    // address in its PROXY header, once read.
    let limits = &generation.config.limits;
    let admitted = match pipeline::accept_proxy_protocol(&generation, listener.addr) {
        Some(p) if p.trusts(peer.ip()) => admission::admit_deferred(shared, limits),
        _ => admission::admit(shared, peer.ip(), limits),
    };
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            pipeline::refuse_at_accept(stream, peer, listener, &generation, at, refusal);
            return;
        }
    };
    // Linux: inherited from the listening socket (see `bind`).
    #[cfg(not(target_os = "linux"))]
    pipeline::tune(&stream, generation.config.timeouts.tcp_user_timeout);
    tokio::spawn(pipeline::serve(Accepted {
        stream,
        peer,
        listener: listener.clone(),
        at,
        slot,
        generation,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_carry_the_tuned_options() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(socket) = bind(addr.parse().unwrap(), Duration::from_millis(12_345)) else {
                assert!(addr.starts_with('['), "IPv4 loopback must bind");
                continue; // no IPv6 on this machine
            };
            let listener = TcpListener::from_std(socket.into()).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            #[cfg(not(target_os = "linux"))]
            pipeline::tune(&accepted, Duration::from_millis(12_345));
            let s = socket2::SockRef::from(&accepted);
            assert!(s.tcp_nodelay().unwrap(), "{addr}: TCP_NODELAY");
            assert!(s.keepalive().unwrap(), "{addr}: SO_KEEPALIVE");
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
            assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 6);
            #[cfg(target_os = "linux")]
            assert_eq!(
                s.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(12_345)),
                "{addr}: TCP_USER_TIMEOUT"
            );
            // An upstream socket is tuned after connect, the same way.
            pipeline::tune_socket(&client, Duration::from_millis(12_345)).unwrap();
            #[cfg(target_os = "linux")]
            assert_eq!(
                socket2::SockRef::from(&client).tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(12_345)),
                "{addr}: TCP_USER_TIMEOUT on a connected socket"
            );
            drop(client);
        }
    }
}
