//! Binding (or adopting sockets inherited from systemd, see
//! [`crate::activation`]) and accept loops.
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
use crate::metrics::AcceptError;
use crate::pipeline::{self, Accepted};
use crate::state::Shared;

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 4096;

/// Binds a TLS listener: `SO_REUSEADDR` (restart while old connections
/// linger in TIME_WAIT) and, for IPv6, `IPV6_V6ONLY`, so that
/// `0.0.0.0:6443` and `[::]:6443` can both be configured.
///
/// The per-connection socket options ([`pipeline::tune`]) are set on the
/// listening socket: Linux copies `TCP_NODELAY` and the keepalive settings
/// into every accepted socket, which saves five `setsockopt` calls per
/// connection (elsewhere they are set again after `accept`).
///
/// # Errors
/// The bind or listen error, e.g. address in use or permission denied.
pub(crate) fn bind(addr: SocketAddr, user_timeout: Duration) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    pipeline::tune_socket(&socket, user_timeout)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Makes an inherited listening socket (socket activation) a TLS listener:
/// the per-connection options [`bind`] sets, set the same way (accepted
/// sockets inherit them), and non-blocking. Its bind options (backlog,
/// `IPV6_V6ONLY`) are the supervisor's.
///
/// # Errors
/// A failed `setsockopt` or `fcntl`.
pub(crate) fn adopt(socket: socket2::Socket, user_timeout: Duration) -> io::Result<TcpListener> {
    pipeline::tune_socket(&socket, user_timeout)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// A running accept loop; dropping it does not stop it, [`Running::stop`] does.
#[derive(Debug)]
pub(crate) struct Running {
    /// The bound address (with the real port when 0 was configured).
    pub(crate) local: SocketAddr,
    /// The listening socket, shared with the accept loop (the binary
    /// upgrade hands it over).
    pub(crate) listener: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting and returns the listening socket (`None` if its
    /// task is gone), which closes when dropped; open connections are not
    /// touched.
    pub(crate) async fn stop(self) -> Option<TcpListener> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        Arc::try_unwrap(self.listener).ok()
    }
}

/// Starts the accept loop of `listener`, configured as `configured`.
pub(crate) fn spawn(listener: TcpListener, configured: SocketAddr, shared: Arc<Shared>) -> Running {
    let local = listener.local_addr().unwrap_or(configured);
    let listener = Arc::new(listener);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(
        listener.clone(),
        Arc::new(pipeline::Listener::new(configured)),
        shared,
        stopped,
    ));
    Running {
        local,
        listener,
        stop,
        task,
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    configured: Arc<pipeline::Listener>,
    shared: Arc<Shared>,
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
            let Ok(listener) = bind(addr.parse().unwrap(), Duration::from_millis(12_345)) else {
                assert!(addr.starts_with('['), "IPv4 loopback must bind");
                continue; // no IPv6 on this machine
            };
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
