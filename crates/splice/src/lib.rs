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
//!   (`recv`/`send`) until it sees a stream (128 KiB read without three
//!   short bursts in a row, a burst being what is read until the socket is
//!   drained, a short one less than 16 KiB), then splices (socket → pipe →
//!   socket) until three short bursts in a row end the stream; HAProxy's
//!   `splice-auto` works much the same way. A
//!   short `recv` proves the socket drained, so a small message costs two
//!   system calls and no pipe; a stream costs no copy. `half.rs` and
//!   [`try_read_drained`] explain the readiness argument.
//! - **Half-close.** EOF from one side, once that direction has nothing
//!   pending, becomes `shutdown(SHUT_WR)` on the other socket; the other
//!   direction keeps flowing. Both EOFs end the pump with [`End::Finished`].
//!   With [`Options::close_passes_last_eof`] the second EOF is passed on by
//!   the caller's close of the sockets instead (the same FIN, one system
//!   call less); a reset that comes after the first EOF and before the
//!   second is then noticed only by the error watch (below), not by a
//!   failing `shutdown`.
//!   The idle timer is reset lazily: it fires, compares with the time of
//!   the last transfer and re-arms itself.
//! - **A half-closed side is still watched.** Once a side has sent EOF,
//!   nothing reads its socket, and nothing writes to it while the other
//!   side is silent: a reset there (or a `TCP_USER_TIMEOUT`) would go
//!   unnoticed until the idle timeout. So until the direction towards it is
//!   done too, the pump waits for that socket's error readiness
//!   (`EPOLLERR`, which Linux raises with the error when the connection is
//!   reset or times out) and then ends as for any reset or error (below).
//!   Error readiness only: the EOF keeps the socket readable for good, and
//!   waiting for readability would spin. The wait is a
//!   `TcpStream::ready(Interest::ERROR)` future (about 140 bytes), boxed
//!   and made only while a side is half-closed.
//! - **Resets and errors: deliver, then a lingering close.** A read, write
//!   or shutdown that fails names the failed side; [`End::from_error`]
//!   labels it a reset (`ECONNRESET`, `EPIPE`, `ENOTCONN`) or another
//!   error. Linux keeps the bytes that reached our socket before a reset
//!   readable (`recv` and `splice` return them first, then the error, then
//!   EOF), so for up to [`Options::linger`] the pump goes on:
//!   - the direction *from* the failed side delivers what it holds and
//!     what the failed socket still has queued to the other side, then
//!     shuts it down for writing (a FIN, not a reset);
//!   - the direction *towards* the failed side drops its pending bytes
//!     (nobody can receive them) and reads and discards what the other
//!     side keeps sending, until that side's EOF: closing a socket with
//!     unread bytes would turn our FIN into a reset, and the peer could
//!     lose what it had not read yet.
//!
//!   The pump then ends with the failure's [`End`], the error in
//!   [`Outcome::error`]. The linger deadline, a drain's `stop` or an error
//!   on the other side too cut it short, with the same label.
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
//!   the pump future (under 512 bytes, checked by a test) plus the sockets;
//!   a half-closed one also its error watch (about 140 bytes, boxed).
//! - **No `unsafe`.** rustix provides owned-fd wrappers for `pipe2`,
//!   `splice`, `recv`, `fcntl(F_SETPIPE_SZ)`, `ioctl(FIONREAD)` and
//!   `shutdown`, and tokio's `TcpStream` lends its fd through `AsFd`; the
//!   crate forbids `unsafe` code.
//!
//! Cancelling is dropping the future (e.g. in a `tokio::select!` against a
//! drain deadline): pipes and buffers are returned or closed by their
//! `Drop` impls, nothing leaks.
//!
//! # Modules
//!
//! - `lib.rs`: the public API ([`pump`], [`pump_until`], [`Options`],
//!   [`Outcome`], [`End`] and the other labels) and the two-direction state
//!   machine with its idle and linger clock.
//! - `half.rs`: one direction (fill, drain, half-close, discard), copy or
//!   splice.
//! - `pipe_pool.rs` (Linux): the bounded pool of pipes and the `splice(2)`
//!   calls.
//! - `buf_pool.rs`: the bounded pool of copy buffers.

#![forbid(unsafe_code)]

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
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

/// [`Options::linger`] by default: long enough to hand a few MiB already
/// in our buffers to a client that is still reading, short enough that a
/// peer that never closes holds the tunnel only briefly.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

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
    /// After a side resets or fails: how long the pump may go on
    /// delivering the bytes already read from that side (and still queued
    /// in its socket) to the other side, and reading and discarding what
    /// the other side sends until its EOF, before it ends anyway (see the
    /// crate documentation). [`Duration::ZERO`] ends the pump at once, as
    /// an abortive close.
    pub linger: Duration,
    /// The caller closes both sockets as soon as the pump returns: the
    /// last EOF (the one that finishes the pump) is then passed on by that
    /// close instead of a `shutdown(SHUT_WR)` first, one system call less
    /// per connection, as HAProxy does. The same FIN goes out: both
    /// sockets have been read to their EOF, so nothing unread turns the
    /// close into a reset. Off by default: a caller that keeps the sockets
    /// after [`End::Finished`] would leave that peer waiting for its EOF.
    pub close_passes_last_eof: bool,
}

impl Default for Options {
    /// 24 h idle timeout, splice streams where possible (small messages
    /// are copied), default pipe size, 2 s linger, every EOF passed on by
    /// `shutdown(SHUT_WR)`.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(24 * 60 * 60),
            force_copy: false,
            always_splice: false,
            pipe_size: None,
            linger: DEFAULT_LINGER,
            close_passes_last_eof: false,
        }
    }
}

/// Why [`pump`] returned. [`End::as_str`] gives its stable label, used for
/// metric labels and log fields; [`End::ALL`] lists every value.
///
/// | label | meaning |
/// |---|---|
/// | `finished` | both sides closed (FIN) and each close was passed on |
/// | `idle_timeout` | no byte moved for [`Options::idle_timeout`] |
/// | `stopped` | the `stop` future of [`pump_until`] completed |
/// | `client_reset` | the client reset the connection (`ECONNRESET`, `EPIPE`, `ENOTCONN`) |
/// | `upstream_reset` | the upstream reset the connection (same errors) |
/// | `client_error` | any other I/O error on the client's socket |
/// | `upstream_error` | any other I/O error on the upstream's socket |
///
/// A reset or error ends the pump only after the linger (see
/// [`Options::linger`]); the error itself is in [`Outcome::error`]. Peers
/// that simply close abruptly (curl often resets once it has its answer)
/// are `*_reset`, not `*_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// Both directions saw EOF and their destinations were shut down for
    /// writing.
    Finished,
    /// No byte moved for [`Options::idle_timeout`].
    IdleTimeout,
    /// The `stop` future of [`pump_until`] completed (before any failure).
    Stopped,
    /// The client's socket failed with `ECONNRESET`, `EPIPE` or `ENOTCONN`:
    /// the client reset the connection.
    ClientReset,
    /// The upstream's socket failed with `ECONNRESET`, `EPIPE` or
    /// `ENOTCONN`: the upstream reset the connection.
    UpstreamReset,
    /// Another read, write or shutdown error on the client's socket.
    ClientError,
    /// Another read, write or shutdown error on the upstream's socket.
    UpstreamError,
}

impl End {
    /// Every value, in declaration order: for exporting each label at 0.
    pub const ALL: &'static [End] = &[
        Self::Finished,
        Self::IdleTimeout,
        Self::Stopped,
        Self::ClientReset,
        Self::UpstreamReset,
        Self::ClientError,
        Self::UpstreamError,
    ];

    /// Stable label: `finished`, `idle_timeout`, `stopped`, `client_reset`,
    /// `upstream_reset`, `client_error` or `upstream_error` (see the table
    /// above).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::IdleTimeout => "idle_timeout",
            Self::Stopped => "stopped",
            Self::ClientReset => "client_reset",
            Self::UpstreamReset => "upstream_reset",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
        }
    }

    /// The end for `error` on `side`'s socket: a reset when the peer reset
    /// the connection (`ECONNRESET`; `EPIPE` when writing to, or `ENOTCONN`
    /// when shutting down, a connection the peer reset), otherwise an
    /// error.
    pub fn from_error(side: Side, error: &io::Error) -> Self {
        let reset = matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
        );
        match (side, reset) {
            (Side::Client, true) => Self::ClientReset,
            (Side::Upstream, true) => Self::UpstreamReset,
            (Side::Client, false) => Self::ClientError,
            (Side::Upstream, false) => Self::UpstreamError,
        }
    }

    /// The side a reset or an error came from; `None` for the other ends.
    pub const fn side(&self) -> Option<Side> {
        match self {
            Self::ClientReset | Self::ClientError => Some(Side::Client),
            Self::UpstreamReset | Self::UpstreamError => Some(Side::Upstream),
            Self::Finished | Self::IdleTimeout | Self::Stopped => None,
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
    /// The side that sent EOF first, if any did before a reset or error.
    pub first_eof: Option<Side>,
    /// Why the pump ended.
    pub end: End,
    /// The error behind a `*_reset` or `*_error` [`end`](Self::end), with
    /// the side it came from; `None` for the other ends.
    pub error: Option<(Side, io::Error)>,
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
/// directions are done, the idle timeout fires, or a side resets or fails
/// (and the linger that follows is over).
///
/// `on_bytes` is called after every successful write with the direction and
/// the number of bytes written to the destination; the totals in the
/// [`Outcome`] are the sums of these calls.
///
/// EOF from one side is passed on as `shutdown(SHUT_WR)` of the other
/// socket once everything read before it has been written; the other
/// direction keeps flowing until its own EOF. A reset or error on the side
/// that sent EOF is still noticed meanwhile, even while the other side is
/// silent.
///
/// When a side resets or fails, the bytes already read from it are still
/// delivered to the other side, followed by a FIN, while what the other
/// side sends is read and discarded until its EOF; all this for at most
/// [`Options::linger`] (the crate documentation explains why).
///
/// Dropping the future cancels the pump; no pipe or buffer leaks. The
/// sockets are not closed by the pump: the caller drops them.
///
/// # Errors
///
/// Errors are not returned as `Err` but reported in [`Outcome::end`] as a
/// `*_reset` or `*_error` [`End`] and in [`Outcome::error`] with the side
/// they came from, alongside the byte counts so far.
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
/// far, as soon as `stop` completes (a drain deadline, for instance). A
/// `stop` during the linger after a reset or error ends the linger, and the
/// pump keeps that failure's [`End`].
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
        first_eof: None,
        last_activity: Instant::now(),
        watched: None,
        phase: Phase::Open(None),
    };
    async move {
        // The idle timer, and after a failure the linger deadline.
        let mut timer = std::pin::pin!(tokio::time::sleep(options.idle_timeout));
        let end = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(state.failure_end().unwrap_or(End::Stopped));
            }
            state.poll(cx, timer.as_mut(), |socket| socket.ready(Interest::ERROR))
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
            error: state.phase.take_failure(),
            mode,
        }
        // `state` drops with the future: pipes and buffers go back or are
        // closed.
    }
}

/// Both directions, their sockets, the idle clock and the error watch
/// (`W`: the future of `TcpStream::ready`).
struct State<'a, W> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    options: &'a Options,
    on_bytes: &'a (dyn Fn(Direction, u64) + Sync),
    c2u: Half,
    u2c: Half,
    first_eof: Option<Side>,
    /// When a byte last moved (at first, when the pump was made).
    last_activity: Instant,
    /// The side whose socket the error watch of [`Phase::Open`] watches,
    /// if any (see [`State::watch_side`]).
    watched: Option<Side>,
    phase: Phase<W>,
}

/// Before and after a failure. One field, as large as the failure alone:
/// the watch only exists before.
enum Phase<W> {
    /// No reset or error yet; `Some` while the error watch is armed: the
    /// future of `TcpStream::ready(Interest::ERROR)` on the watched side's
    /// socket. It is some 140 bytes, so it is boxed: only a tunnel with a
    /// half-closed side pays for it.
    Open(Option<Pin<Box<W>>>),
    /// The first reset or error, with its side: the pump lingers.
    Failed(Side, io::Error),
}

impl<W> Phase<W> {
    fn failure(&self) -> Option<(Side, &io::Error)> {
        match self {
            Self::Open(_) => None,
            Self::Failed(side, error) => Some((*side, error)),
        }
    }

    fn take_failure(&mut self) -> Option<(Side, io::Error)> {
        match std::mem::replace(self, Self::Open(None)) {
            Self::Open(_) => None,
            Self::Failed(side, error) => Some((side, error)),
        }
    }
}

impl<'a, W: Future<Output = io::Result<tokio::io::Ready>>> State<'a, W> {
    /// The end a failure, if there was one, gives the pump.
    fn failure_end(&self) -> Option<End> {
        let (side, error) = self.phase.failure()?;
        Some(End::from_error(side, error))
    }

    /// `timer` is the idle timer until a side fails, then the linger
    /// deadline; `watch` makes the error watch for a socket.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        watch: impl Fn(&'a TcpStream) -> W,
    ) -> Poll<End> {
        if let Some((failed, error)) = self.phase.failure() {
            let end = End::from_error(failed, error);
            return self.poll_linger(cx, timer, failed, end);
        }
        let (client, upstream) = (self.client, self.upstream);
        let mut ctx = self.ctx();
        let polled = self.poll_halves(cx, client, upstream, &mut ctx);
        self.first_eof = ctx.first_eof;
        match polled {
            Some(Ok(())) => return Poll::Ready(End::Finished),
            Some(Err((side, error))) => return self.fail(cx, timer, side, error),
            None => {}
        }
        if ctx.progress {
            self.last_activity = Instant::now();
        }
        // Lazy re-arming: the timer is only touched when it fires.
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = self
                .last_activity
                .checked_add(self.options.idle_timeout)
                .unwrap_or_else(far_future);
            if deadline <= Instant::now() {
                return Poll::Ready(End::IdleTimeout);
            }
            timer.as_mut().reset(deadline);
        }
        if let Some((side, error)) = self.poll_watch(cx, watch) {
            return self.fail(cx, timer, side, error);
        }
        if ctx.yielded {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Arms, moves or drops the error watch as [`State::watch_side`] says,
    /// and polls it: `Some` with the side and its error once that socket
    /// failed.
    fn poll_watch(
        &mut self,
        cx: &mut Context<'_>,
        watch: impl Fn(&'a TcpStream) -> W,
    ) -> Option<(Side, io::Error)> {
        let want = self.watch_side();
        let socket = want.map(|side| self.socket(side));
        // Twice at most: a spurious error event is cleared, and the watch
        // armed again.
        for _ in 0..2 {
            let Phase::Open(armed) = &mut self.phase else {
                return None;
            };
            if self.watched != want {
                self.watched = want;
                *armed = socket.map(|socket| Box::pin(watch(socket)));
            }
            let (Some(side), Some(ready)) = (self.watched, armed.as_mut()) else {
                return None;
            };
            let Poll::Ready(ready) = ready.as_mut().poll(cx) else {
                return None;
            };
            (self.watched, *armed) = (None, None);
            if let Some(error) = self.watched_error(side, ready) {
                return Some((side, error));
            }
        }
        None
    }

    /// `side` reset or failed with `error`: the pump ends at once without
    /// a linger, otherwise it starts lingering, with `timer` as the linger
    /// deadline.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        side: Side,
        error: io::Error,
    ) -> Poll<End> {
        let end = End::from_error(side, &error);
        self.watched = None;
        self.phase = Phase::Failed(side, error); // drops the watch
        if self.options.linger.is_zero() {
            return Poll::Ready(end);
        }
        self.start_linger(side);
        let deadline = Instant::now()
            .checked_add(self.options.linger)
            .unwrap_or_else(far_future);
        timer.as_mut().reset(deadline);
        self.poll_linger(cx, timer, side, end)
    }

    fn socket(&self, side: Side) -> &'a TcpStream {
        match side {
            Side::Client => self.client,
            Side::Upstream => self.upstream,
        }
    }

    /// The side to watch for errors: one whose read direction is finished
    /// (it sent EOF) while the direction towards it is not. Nothing reads
    /// that socket any more, and nothing writes to it while the other side
    /// is silent, so a reset (or a `TCP_USER_TIMEOUT`, or any other error)
    /// on it would otherwise go unnoticed until the idle timeout. Its EOF
    /// keeps it readable for good, so the watch waits for error readiness
    /// (`EPOLLERR`, which Linux raises with the socket's error when the
    /// connection is reset or times out) only: a healthy half-closed
    /// tunnel is never woken by it.
    fn watch_side(&self) -> Option<Side> {
        if self.c2u.source_finished() && !self.u2c.is_done() {
            Some(Side::Client)
        } else if self.u2c.source_finished() && !self.c2u.is_done() {
            Some(Side::Upstream)
        } else {
            None
        }
    }

    /// The error behind an error event on the watched `side`'s socket:
    /// its pending error (`SO_ERROR`: `EPIPE` for a reset after the peer's
    /// FIN, `ECONNRESET`, `ETIMEDOUT`), or `ENOTCONN` when the connection
    /// is gone without one. `None` when the connection is still up: the
    /// event was spurious (an error queue entry), and its readiness is
    /// cleared so that the watch sleeps again.
    fn watched_error(&self, side: Side, ready: io::Result<tokio::io::Ready>) -> Option<io::Error> {
        let socket = self.socket(side);
        if let Err(error) = ready {
            return Some(error); // the runtime is shutting down
        }
        match socket.take_error() {
            Ok(Some(error)) | Err(error) => return Some(error),
            Ok(None) => {}
        }
        if let Err(error) = socket.peer_addr() {
            return Some(error);
        }
        let _ = socket.try_io(Interest::ERROR, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        None
    }

    fn ctx(&self) -> Ctx<'a> {
        Ctx {
            pipe_size: self.options.pipe_size,
            on_bytes: self.on_bytes,
            progress: false,
            yielded: false,
            first_eof: self.first_eof,
            close_passes_eof: false,
        }
    }

    /// Polls both directions; `Some` when the pump is over (`Ok` when both
    /// are done), with the first failure and its side.
    fn poll_halves(
        &mut self,
        cx: &mut Context<'_>,
        client: &TcpStream,
        upstream: &TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Option<Result<(), (Side, io::Error)>> {
        let by_close = self.options.close_passes_last_eof;
        ctx.close_passes_eof = by_close && self.u2c.is_done();
        if let Poll::Ready(Err(failure)) = self.c2u.poll(cx, client, upstream, ctx) {
            return Some(Err(failure));
        }
        ctx.close_passes_eof = by_close && self.c2u.is_done();
        if let Poll::Ready(Err(failure)) = self.u2c.poll(cx, upstream, client, ctx) {
            return Some(Err(failure));
        }
        ctx.close_passes_eof = false;
        (self.c2u.is_done() && self.u2c.is_done()).then_some(Ok(()))
    }

    /// The direction that reads from `failed`, and the one that writes to
    /// it.
    fn halves(&mut self, failed: Side) -> (&mut Half, &mut Half) {
        match failed {
            Side::Upstream => (&mut self.u2c, &mut self.c2u),
            Side::Client => (&mut self.c2u, &mut self.u2c),
        }
    }

    /// `failed` reset or failed: the direction towards it gives up its
    /// pending bytes and from now on only discards what it reads.
    fn start_linger(&mut self, failed: Side) {
        let (_, towards) = self.halves(failed);
        towards.discard();
    }

    /// After `failed` failed (giving `end`): delivers what was read from
    /// it to the other side, then FIN, while discarding what the other side
    /// sends, until the other side's EOF, the linger deadline, or an error
    /// on the other side too. Always ends with `end`.
    fn poll_linger(
        &mut self,
        cx: &mut Context<'_>,
        deadline: Pin<&mut Sleep>,
        failed: Side,
        end: End,
    ) -> Poll<End> {
        if deadline.poll(cx).is_ready() {
            return Poll::Ready(end);
        }
        let (failed_socket, other) = match failed {
            Side::Upstream => (self.upstream, self.client),
            Side::Client => (self.client, self.upstream),
        };
        // EOFs seen now are not reported in `first_eof`: this `ctx` is
        // dropped.
        let mut ctx = self.ctx();
        let (from, towards) = self.halves(failed);
        // Twice at most: an error from the failed socket (it has given all
        // it had) becomes EOF, and the second poll passes it on.
        for _ in 0..2 {
            match from.poll(cx, failed_socket, other, &mut ctx) {
                Poll::Ready(Err((side, _))) if side == failed => from.source_gone(),
                // The other side failed too: nothing more can be delivered.
                Poll::Ready(Err(_)) => return Poll::Ready(end),
                Poll::Ready(Ok(())) | Poll::Pending => break,
            }
        }
        match towards.poll_discard(cx, other, &mut ctx) {
            Poll::Ready(Err(_)) => return Poll::Ready(end),
            Poll::Ready(Ok(())) if from.is_done() => return Poll::Ready(end),
            Poll::Ready(Ok(())) | Poll::Pending => {}
        }
        if ctx.yielded {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
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
        assert_eq!(End::Stopped.as_str(), "stopped");
        assert_eq!(End::ClientReset.as_str(), "client_reset");
        assert_eq!(End::UpstreamReset.as_str(), "upstream_reset");
        assert_eq!(End::ClientError.as_str(), "client_error");
        assert_eq!(End::UpstreamError.as_str(), "upstream_error");
    }

    #[test]
    fn all_lists_every_end_once_with_unique_labels() {
        // Exhaustive on purpose: a new variant does not compile here until
        // it is listed, and the count next to the list is bumped.
        let variants = |end: End| match end {
            End::Finished
            | End::IdleTimeout
            | End::Stopped
            | End::ClientReset
            | End::UpstreamReset
            | End::ClientError
            | End::UpstreamError => 7,
        };
        assert_eq!(End::ALL.len(), variants(End::Finished));
        let mut labels = std::collections::HashSet::new();
        for (i, end) in End::ALL.iter().enumerate() {
            // Declaration order: discriminants 0..N, each once.
            assert_eq!(*end as usize, i, "{end:?}");
            assert!(labels.insert(end.as_str()), "duplicate label {end:?}");
            assert!(end
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn errors_are_resets_by_errno() {
        use rustix::io::Errno;
        let of = |side, errno: Errno| End::from_error(side, &io::Error::from(errno));
        for errno in [Errno::CONNRESET, Errno::PIPE, Errno::NOTCONN] {
            assert_eq!(of(Side::Client, errno), End::ClientReset, "{errno:?}");
            assert_eq!(of(Side::Upstream, errno), End::UpstreamReset, "{errno:?}");
        }
        for errno in [
            Errno::TIMEDOUT,
            Errno::HOSTUNREACH,
            Errno::NOMEM,
            Errno::INVAL,
        ] {
            assert_eq!(of(Side::Client, errno), End::ClientError, "{errno:?}");
            assert_eq!(of(Side::Upstream, errno), End::UpstreamError, "{errno:?}");
        }
        let write_zero = io::Error::from(io::ErrorKind::WriteZero);
        assert_eq!(End::from_error(Side::Client, &write_zero), End::ClientError);
        for end in End::ALL {
            let side = end.side();
            match end {
                End::ClientReset | End::ClientError => assert_eq!(side, Some(Side::Client)),
                End::UpstreamReset | End::UpstreamError => {
                    assert_eq!(side, Some(Side::Upstream));
                }
                End::Finished | End::IdleTimeout | End::Stopped => assert_eq!(side, None),
            }
        }
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

    /// Runs the pump between `client` and `upstream` beside `peers` (the
    /// far ends' script) and returns its outcome; both must finish within
    /// `within`.
    #[cfg(target_os = "linux")]
    async fn pump_beside(
        client: &TcpStream,
        upstream: &TcpStream,
        options: &Options,
        peers: impl Future<Output = ()>,
        within: Duration,
    ) -> Outcome {
        let on_bytes = |_: Direction, _: u64| {};
        let work = async { tokio::join!(pump(client, upstream, options, &on_bytes), peers).0 };
        tokio::time::timeout(within, work).await.unwrap()
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
        let options = Options {
            idle_timeout: Duration::from_secs(10),
            ..Options::default()
        };
        let outcome =
            pump_beside(&client, &upstream, &options, peers, Duration::from_secs(10)).await;
        pipe_pool::REFUSE_SPLICE.set(false);
        assert_eq!(outcome.end, End::Finished);
        assert!(outcome.error.is_none());
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

            // The first messages after the stream may still be spliced
            // (three short bursts in a row end the stream); the ones after
            // them are copied.
            ping_pong(&mut client_peer, &mut upstream_peer, half::SMALL_BURSTS).await;
            let taken = TAKEN.get();
            ping_pong(&mut client_peer, &mut upstream_peer, 50).await;
            assert_eq!(TAKEN.get(), taken, "pipes taken after the stream ended");
            drop(client_peer);
            drop(upstream_peer);
        };
        let outcome =
            pump_beside(&client, &upstream, &options, peers, Duration::from_secs(20)).await;
        assert_eq!(outcome.mode, Mode::Splice);
        let rounds = 100 + u64::from(half::SMALL_BURSTS);
        assert_eq!(outcome.client_to_upstream, rounds * 64 + (8 << 20));
        assert_eq!(outcome.upstream_to_client, rounds * 64);
    }

    /// A stream whose bursts alternate between 64 KiB and a short 4 KiB
    /// (a sender's last segment arriving after the pump drained the rest)
    /// stays spliced: only its first 128 KiB are copied. (Judged per read,
    /// or ended by one short burst, it went back to copying after every
    /// short tail and never reached 128 KiB again.)
    #[cfg(target_os = "linux")]
    #[test]
    fn stream_with_short_tails_stays_spliced() {
        on_this_thread(bursts_with_short_tails());
    }

    #[cfg(target_os = "linux")]
    async fn bursts_with_short_tails() {
        use half::COPIED;
        use pipe_pool::TAKEN;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const ROUNDS: usize = 40;
        let sizes = [64 * 1024, 4 * 1024];
        let (mut client_peer, client) = pair().await;
        let (upstream, mut upstream_peer) = pair().await;
        let options = Options::default();
        let (copied, taken) = (COPIED.get(), TAKEN.get());
        let peers = async {
            let mut got = vec![0u8; sizes[0]];
            for round in 0..ROUNDS {
                for (i, size) in sizes.into_iter().enumerate() {
                    // Each burst is sent once the previous one arrived: the
                    // pump finds the socket drained in between. (The pump
                    // runs on this thread, so it reads a burst only after
                    // its write returned.)
                    let data = vec![(round * 2 + i) as u8; size];
                    client_peer.write_all(&data).await.unwrap();
                    upstream_peer.read_exact(&mut got[..size]).await.unwrap();
                    assert!(got[..size] == data[..]);
                }
            }
            drop(client_peer);
            drop(upstream_peer);
        };
        let outcome =
            pump_beside(&client, &upstream, &options, peers, Duration::from_secs(20)).await;
        let total = (ROUNDS * (sizes[0] + sizes[1])) as u64;
        assert_eq!(outcome.client_to_upstream, total);
        let copied = COPIED.get() - copied;
        assert!(TAKEN.get() > taken, "the stream was not spliced");
        assert!(
            copied <= 3 * 68 * 1024,
            "{copied} of {total} bytes copied: the stream went back to copying"
        );
    }

    #[test]
    fn default_options() {
        let o = Options::default();
        assert_eq!(o.idle_timeout, Duration::from_secs(86_400));
        assert!(!o.force_copy);
        assert!(!o.always_splice);
        assert_eq!(o.pipe_size, None);
        assert_eq!(o.linger, Duration::from_secs(2));
    }
}
