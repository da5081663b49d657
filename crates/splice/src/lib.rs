//! Bidirectional byte pump between two connected [`TcpStream`]s: Linux
//! `splice(2)` through pipes under tokio readiness, with a portable copy
//! fallback.
//!
//! The router calls [`pump`] once the client's ClientHello has been
//! forwarded upstream; from then on the bytes are opaque.
//!
//! # Design
//!
//! - **One task, two state machines.** [`pump`] is a single future that
//!   polls both directions (`half.rs`), as tokio's `copy_bidirectional`
//!   does. A direction waits until its source is readable, moves one chunk
//!   into its pipe or buffer, then waits until its destination is writable
//!   and moves the chunk out until nothing is pending; only then is it
//!   refilled. The socket calls go through `TcpStream::try_io`, and
//!   `WouldBlock` is only returned to it when the socket is known to be
//!   empty, so tokio's readiness is never cleared by mistake. Each
//!   direction makes at most 32 transfers per poll before yielding, so
//!   neither direction (nor the task) starves the others.
//! - **Copy small messages, splice streams.** A direction copies
//!   (`recv`/`send`) until it sees a stream (128 KiB in reads of 16 KiB or
//!   more), then splices (socket → pipe → socket) until a splice moves less
//!   than 16 KiB; HAProxy's `splice-auto` works the same way. A short `recv`
//!   proves the socket drained, so a small message costs two system calls
//!   and no pipe; a stream costs no copy. `half.rs` and
//!   [`try_read_drained`] explain the readiness argument.
//! - **Half-close.** EOF from one side, once that direction has nothing
//!   pending, becomes `shutdown(SHUT_WR)` on the other socket; the other
//!   direction keeps flowing. Both EOFs end the pump with [`End::Finished`].
//!   Any error (including `ECONNRESET`/`EPIPE`) ends it at once with
//!   [`End::Error`] naming the side. The idle timer is reset lazily: it
//!   fires, compares with the time of the last transfer and re-arms itself.
//! - **Idle tunnels hold no pipe and no buffer** (`pipe_pool.rs`,
//!   `buf_pool.rs`). A direction takes a pipe (`O_NONBLOCK | O_CLOEXEC`)
//!   from a bounded process-wide pool when it splices, or a 64 KiB buffer
//!   when it copies, and gives it back as soon as its source has nothing
//!   more to read. A pipe goes back to the pool only if it is empty by our
//!   count (exact: it is what `splice` returned; debug builds also ask
//!   `FIONREAD`); otherwise (e.g. the pump is dropped mid-transfer) it is
//!   closed, so bytes never leak between tunnels. [`pool_stats`] exposes
//!   the counts.
//! - **Copy only** (`buf_pool.rs`): on non-Linux systems, when
//!   [`Options::force_copy`] is set, when [`splice_supported`] says no, when
//!   a direction's first `splice` is refused (`EINVAL`, `ENOSYS`,
//!   `EOPNOTSUPP`), and when no pipe can be opened (fd exhaustion).
//! - **Small futures.** No buffer lives inline, so an idle tunnel costs
//!   the pump future (under 512 bytes, checked by a test) plus the sockets.
//! - **No `unsafe`.** rustix provides owned-fd wrappers for `pipe2`,
//!   `splice`, `recv`, `fcntl(F_SETPIPE_SZ)`, `ioctl(FIONREAD)` and
//!   `shutdown`, and tokio's `TcpStream` lends its fd through `AsFd`; the
//!   crate forbids `unsafe` code.
//!
//! Cancelling is dropping the future (e.g. in a `tokio::select!` against a
//! drain deadline): pipes and buffers are returned or closed by their
//! `Drop` impls, nothing leaks.

#![forbid(unsafe_code)]

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

mod buf_pool;
mod half;
#[cfg(target_os = "linux")]
mod pipe_pool;

use half::{Ctx, Half};

/// A direction of the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream server.
    ClientToUpstream,
    /// From the upstream server to the client.
    UpstreamToClient,
}

impl Direction {
    /// Stable label: `client_to_upstream` or `upstream_to_client`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientToUpstream => "client_to_upstream",
            Self::UpstreamToClient => "upstream_to_client",
        }
    }

    /// The side bytes of this direction are read from.
    pub const fn source(self) -> Side {
        match self {
            Self::ClientToUpstream => Side::Client,
            Self::UpstreamToClient => Side::Upstream,
        }
    }

    /// The side bytes of this direction are written to.
    pub const fn destination(self) -> Side {
        match self {
            Self::ClientToUpstream => Side::Upstream,
            Self::UpstreamToClient => Side::Client,
        }
    }
}

/// One of the two sockets of a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The downstream client's socket.
    Client,
    /// The socket to the upstream server.
    Upstream,
}

impl Side {
    /// Stable label: `client` or `upstream`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
        }
    }
}

/// What actually moved the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `splice(2)` through a pipe for streams, in both directions; small
    /// messages are copied (see the crate documentation).
    Splice,
    /// Copying through a user-space buffer only, in at least one direction
    /// (forced, unsupported, or fallen back).
    Copy,
}

impl Mode {
    /// Stable label: `splice` or `copy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Splice => "splice",
            Self::Copy => "copy",
        }
    }
}

/// Settings of one [`pump`].
#[derive(Clone, Debug)]
pub struct Options {
    /// The pump ends with [`End::IdleTimeout`] when no byte moved in either
    /// direction for this long.
    pub idle_timeout: Duration,
    /// Use the copy fallback even where `splice(2)` works.
    pub force_copy: bool,
    /// Splice every transfer, small messages included, instead of copying
    /// until a direction carries a stream (see the crate documentation).
    /// For tests and measurements; ignored when copying.
    pub always_splice: bool,
    /// Pipe capacity to ask for (`F_SETPIPE_SZ`, rounded up by the kernel
    /// to a power-of-two number of pages); `None` keeps the kernel default
    /// (64 KiB). A size the kernel refuses (above
    /// `/proc/sys/fs/pipe-max-size` for unprivileged processes) silently
    /// keeps the default.
    pub pipe_size: Option<usize>,
}

impl Default for Options {
    /// 24 h idle timeout, splice streams where possible (small messages
    /// are copied), default pipe size.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(24 * 60 * 60),
            force_copy: false,
            always_splice: false,
            pipe_size: None,
        }
    }
}

/// Why [`pump`] returned.
#[derive(Debug)]
pub enum End {
    /// Both directions saw EOF and their destinations were shut down for
    /// writing.
    Finished,
    /// No byte moved for [`Options::idle_timeout`].
    IdleTimeout,
    /// The `stop` future of [`pump_until`] completed.
    Stopped,
    /// A read, write or shutdown failed on `side` (e.g. a reset). The
    /// caller should drop both sockets, which closes them.
    Error {
        /// The socket the error came from.
        side: Side,
        /// The error.
        error: io::Error,
    },
}

impl End {
    /// Stable label: `finished`, `idle_timeout`, `stopped`, `client_error`
    /// or `upstream_error`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::IdleTimeout => "idle_timeout",
            Self::Stopped => "stopped",
            Self::Error {
                side: Side::Client, ..
            } => "client_error",
            Self::Error {
                side: Side::Upstream,
                ..
            } => "upstream_error",
        }
    }
}

/// The result of a [`pump`].
#[derive(Debug)]
pub struct Outcome {
    /// Bytes written to the upstream socket by the pump.
    pub client_to_upstream: u64,
    /// Bytes written to the client socket by the pump.
    pub upstream_to_client: u64,
    /// The side that sent EOF first, if any did.
    pub first_eof: Option<Side>,
    /// Why the pump ended.
    pub end: End,
    /// What moved the bytes.
    pub mode: Mode,
}

/// Whether `splice(2)` from a socket into a pipe works on this system.
///
/// Probed once with a Unix socket pair (the answer is cached); always
/// `false` off Linux. When `false`, [`pump`] copies.
pub fn splice_supported() -> bool {
    #[cfg(target_os = "linux")]
    let supported = pipe_pool::supported();
    #[cfg(not(target_os = "linux"))]
    let supported = false;
    supported
}

/// `(spare, in_use)`: pipes kept for reuse in the process-wide pool, and
/// pipes currently lent to running pumps (each pipe is two fds).
///
/// A pump that returned or was dropped holds no pipe, so with no pump
/// running `in_use` is 0. Always `(0, 0)` off Linux.
pub fn pool_stats() -> (usize, usize) {
    #[cfg(target_os = "linux")]
    let stats = pipe_pool::stats();
    #[cfg(not(target_os = "linux"))]
    let stats = (0, 0);
    stats
}

/// Moves bytes both ways between `client` and `upstream` until both
/// directions are done, the idle timeout fires, or an error occurs.
///
/// `on_bytes` is called after every successful write with the direction and
/// the number of bytes written to the destination; the totals in the
/// [`Outcome`] are the sums of these calls.
///
/// EOF from one side is passed on as `shutdown(SHUT_WR)` of the other
/// socket once everything read before it has been written; the other
/// direction keeps flowing until its own EOF.
///
/// Dropping the future cancels the pump; no pipe or buffer leaks. The
/// sockets are not closed by the pump: the caller drops them.
///
/// # Errors
///
/// Errors are not returned as `Err` but reported in [`Outcome::end`] as
/// [`End::Error`] with the side they came from, alongside the byte counts
/// so far.
pub async fn pump(
    client: &TcpStream,
    upstream: &TcpStream,
    options: &Options,
    on_bytes: &(dyn Fn(Direction, u64) + Sync),
) -> Outcome {
    let never = std::pin::pin!(std::future::pending::<()>());
    pump_until(client, upstream, options, on_bytes, never).await
}

/// [`pump`], which also ends, with [`End::Stopped`] and the byte counts so
/// far, as soon as `stop` completes (a drain deadline, for instance).
///
/// `stop` is borrowed, so it lives in the caller's future; the pump's own
/// future stays small (an idle tunnel costs what its task holds), which is
/// also why this is a function returning an `async` block: an `async fn`
/// would keep a second copy of its arguments.
pub fn pump_until<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    options: &'a Options,
    on_bytes: &'a (dyn Fn(Direction, u64) + Sync),
    mut stop: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
) -> impl Future<Output = Outcome> + Send + 'a {
    let mode = if options.force_copy || !splice_supported() {
        Mode::Copy
    } else {
        Mode::Splice
    };
    let mut state = State {
        client,
        upstream,
        options,
        on_bytes,
        c2u: Half::new(Direction::ClientToUpstream, mode, options.always_splice),
        u2c: Half::new(Direction::UpstreamToClient, mode, options.always_splice),
        c2u_done: false,
        u2c_done: false,
        first_eof: None,
        last_activity: Instant::now(),
    };
    async move {
        let mut idle = std::pin::pin!(tokio::time::sleep(options.idle_timeout));
        let end = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Stopped);
            }
            state.poll(cx, idle.as_mut())
        })
        .await;
        let mode = match (state.c2u.mode(), state.u2c.mode()) {
            (Mode::Splice, Mode::Splice) => Mode::Splice,
            _ => Mode::Copy,
        };
        Outcome {
            client_to_upstream: state.c2u.total(),
            upstream_to_client: state.u2c.total(),
            first_eof: state.first_eof,
            end,
            mode,
        }
        // `state` drops with the future: pipes and buffers go back or are
        // closed.
    }
}

/// Both directions, their sockets and the idle clock.
struct State<'a> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    options: &'a Options,
    on_bytes: &'a (dyn Fn(Direction, u64) + Sync),
    c2u: Half,
    u2c: Half,
    c2u_done: bool,
    u2c_done: bool,
    first_eof: Option<Side>,
    /// When a byte last moved (at first, when the pump was made).
    last_activity: Instant,
}

impl State<'_> {
    fn poll(&mut self, cx: &mut Context<'_>, mut idle: Pin<&mut Sleep>) -> Poll<End> {
        let (client, upstream) = (self.client, self.upstream);
        let mut ctx = Ctx {
            pipe_size: self.options.pipe_size,
            on_bytes: self.on_bytes,
            progress: false,
            yielded: false,
            first_eof: self.first_eof,
        };
        let end = self.poll_halves(cx, client, upstream, &mut ctx);
        self.first_eof = ctx.first_eof;
        if let Some(end) = end {
            return Poll::Ready(end);
        }
        if ctx.progress {
            self.last_activity = Instant::now();
        }
        // Lazy re-arming: the timer is only touched when it fires.
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = self
                .last_activity
                .checked_add(self.options.idle_timeout)
                .unwrap_or_else(far_future);
            if deadline <= Instant::now() {
                return Poll::Ready(End::IdleTimeout);
            }
            idle.as_mut().reset(deadline);
        }
        if ctx.yielded {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Polls both directions; `Some` when the pump is over.
    fn poll_halves(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        upstream: &TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Option<End> {
        if !self.c2u_done {
            match self.c2u.poll(cx, client, upstream, ctx) {
                Poll::Ready(Ok(())) => self.c2u_done = true,
                Poll::Ready(Err((side, error))) => return Some(End::Error { side, error }),
                Poll::Pending => {}
            }
        }
        if !self.u2c_done {
            match self.u2c.poll(cx, upstream, client, ctx) {
                Poll::Ready(Ok(())) => self.u2c_done = true,
                Poll::Ready(Err((side, error))) => return Some(End::Error { side, error }),
                Poll::Pending => {}
            }
        }
        (self.c2u_done && self.u2c_done).then_some(End::Finished)
    }
}

/// `TcpStream::try_read` that also tells tokio when the socket is drained.
///
/// A TCP `recv` that returns fewer bytes than asked found the receive queue
/// empty (the kernel copies until the buffer is full or the queue is), so
/// after such a short read the readiness tokio observed before the call is
/// cleared, as an `EAGAIN` would: the next `readable()` waits for new data
/// instead of granting a `recv` that could only say `EAGAIN`. Data that
/// arrives later raises a new edge (epoll is edge-triggered and every
/// arrival signals), which tokio records with a new tick, so nothing is
/// missed; EOF and errors stay signalled (tokio never clears "read closed").
///
/// # Errors
///
/// As `try_read`: `WouldBlock` when the socket is not readable (readiness
/// cleared), or the `recv` error.
#[cfg(unix)]
pub fn try_read_drained(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    let result = src.try_io(tokio::io::Interest::READABLE, || {
        got = rustix::net::recv(src, &mut *buf, rustix::net::RecvFlags::empty())?.0;
        if got > 0 && got < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// `TcpStream::try_read` (no short-read shortcut off Unix).
///
/// # Errors
///
/// As `try_read`.
#[cfg(not(unix))]
pub fn try_read_drained(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    src.try_read(buf)
}

/// A deadline that never comes (as tokio does for huge durations).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(Direction::ClientToUpstream.as_str(), "client_to_upstream");
        assert_eq!(Direction::UpstreamToClient.as_str(), "upstream_to_client");
        assert_eq!(Side::Client.as_str(), "client");
        assert_eq!(Side::Upstream.as_str(), "upstream");
        assert_eq!(Mode::Splice.as_str(), "splice");
        assert_eq!(Mode::Copy.as_str(), "copy");
        assert_eq!(End::Finished.as_str(), "finished");
        assert_eq!(End::IdleTimeout.as_str(), "idle_timeout");
        let error = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            End::Error {
                side: Side::Client,
                error: error()
            }
            .as_str(),
            "client_error"
        );
        assert_eq!(
            End::Error {
                side: Side::Upstream,
                error: error()
            }
            .as_str(),
            "upstream_error"
        );
    }

    #[test]
    fn directions_map_to_sides() {
        assert_eq!(Direction::ClientToUpstream.source(), Side::Client);
        assert_eq!(Direction::ClientToUpstream.destination(), Side::Upstream);
        assert_eq!(Direction::UpstreamToClient.source(), Side::Upstream);
        assert_eq!(Direction::UpstreamToClient.destination(), Side::Client);
    }

    /// Runs `test` on a current-thread runtime, so the pump runs on this
    /// thread (where the thread-local test switches of `pipe_pool` apply),
    /// one such test at a time; no pipe may be in use afterwards.
    #[cfg(target_os = "linux")]
    fn on_this_thread(test: impl Future<Output = ()>) {
        let _serial = pipe_pool::tests::serial();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(test);
        assert_eq!(pool_stats().1, 0);
    }

    /// A connected loopback pair.
    #[cfg(target_os = "linux")]
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A socket whose first `splice` is refused (`EINVAL`) is copied
    /// instead, transparently.
    #[cfg(target_os = "linux")]
    #[test]
    fn refused_splice_falls_back_to_copy() {
        on_this_thread(refused_splice());
    }

    #[cfg(target_os = "linux")]
    async fn refused_splice() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // current_thread runtime: the pump runs on this thread.
        pipe_pool::REFUSE_SPLICE.set(true);
        let (mut client_peer, client) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let peers = async {
            client_peer.write_all(&data).await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream_peer.read_to_end(&mut got).await.unwrap();
            assert!(got == data);
            upstream_peer.write_all(b"bye").await.unwrap();
            upstream_peer.shutdown().await.unwrap();
            got.clear();
            client_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
        };
        let on_bytes = |_: Direction, _: u64| {};
        let options = Options {
            idle_timeout: Duration::from_secs(10),
            ..Options::default()
        };
        let work = async { tokio::join!(pump(&client, &upstream, &options, &on_bytes), peers).0 };
        let outcome = tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .unwrap();
        pipe_pool::REFUSE_SPLICE.set(false);
        assert!(matches!(outcome.end, End::Finished), "{:?}", outcome.end);
        assert_eq!(outcome.mode, Mode::Copy);
        assert_eq!(
            (outcome.client_to_upstream, outcome.upstream_to_client),
            (200_000, 3)
        );
    }

    /// Small messages are copied (no pipe is taken), a stream is spliced,
    /// and small messages after the stream are copied again.
    #[cfg(target_os = "linux")]
    #[test]
    fn small_messages_are_copied_and_streams_spliced() {
        on_this_thread(auto_mode());
    }

    #[cfg(target_os = "linux")]
    async fn auto_mode() {
        use pipe_pool::TAKEN;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn ping_pong(client: &mut TcpStream, upstream: &mut TcpStream, rounds: u8) {
            for round in 0..rounds {
                let mut got = [0; 64];
                client.write_all(&[round; 64]).await.unwrap();
                upstream.read_exact(&mut got).await.unwrap();
                upstream.write_all(&got).await.unwrap();
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, [round; 64]);
            }
        }
        let (mut client_peer, client) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let on_bytes = |_: Direction, _: u64| {};
        let options = Options::default();
        let peers = async {
            let taken = TAKEN.get();
            ping_pong(&mut client_peer, &mut upstream_peer, 50).await;
            assert_eq!(TAKEN.get(), taken, "pipes taken for small messages");

            const STREAM: usize = 8 << 20;
            let data = vec![7u8; STREAM];
            let mut got = vec![0u8; STREAM];
            tokio::join!(
                async { client_peer.write_all(&data).await.unwrap() },
                async { upstream_peer.read_exact(&mut got).await.unwrap() },
            );
            assert!(got == data);
            assert!(TAKEN.get() > taken, "the stream was not spliced");

            // The first message after the stream may still be spliced (a
            // short splice ends the stream); the ones after it are copied.
            ping_pong(&mut client_peer, &mut upstream_peer, 1).await;
            let taken = TAKEN.get();
            ping_pong(&mut client_peer, &mut upstream_peer, 50).await;
            assert_eq!(TAKEN.get(), taken, "pipes taken after the stream ended");
            drop(client_peer);
            drop(upstream_peer);
        };
        let work = async { tokio::join!(pump(&client, &upstream, &options, &on_bytes), peers).0 };
        let outcome = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .unwrap();
        assert_eq!(outcome.mode, Mode::Splice);
        assert_eq!(outcome.client_to_upstream, 101 * 64 + (8 << 20));
        assert_eq!(outcome.upstream_to_client, 101 * 64);
    }

    #[test]
    fn default_options() {
        let o = Options::default();
        assert_eq!(o.idle_timeout, Duration::from_secs(86_400));
        assert!(!o.force_copy);
        assert!(!o.always_splice);
        assert_eq!(o.pipe_size, None);
    }
}
