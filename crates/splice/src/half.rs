//! One direction of the pump: a small state machine driven by tokio
//! readiness.
//!
//! ```text
//!        ┌──────────────────── pipe/buffer drained ───────────────────┐
//!        ▼                                                            │
//!      FILL ── src readable: recv(src → buf)      ── n > 0 ──►      DRAIN ── dst writable:
//!        │                   or splice(src → pipe)                    send(buf → dst)
//!        │   EAGAIN (or a short recv): wait for readable;             or splice(pipe → dst)
//!        │   an idle direction gives its pipe/buffer back              EAGAIN: wait for writable
//!        │   0 = EOF
//!        ▼
//!    SHUTDOWN ── shutdown(dst, SHUT_WR) ──► DONE
//! ```
//!
//! After a reset or error (see the crate documentation), the direction
//! reading from the failed socket goes on as above, a read error from that
//! socket counting as EOF ([`Half::source_gone`]); the direction writing to
//! it drops its pending bytes and only reads and discards until EOF
//! ([`Half::discard`], [`Half::poll_discard`]).
//!
//! # Copy for small messages, splice for bulk
//!
//! A direction that may splice starts by copying, and switches to
//! `splice(2)` once it sees a stream ([`BULK`] bytes read without
//! [`SMALL_BURSTS`] short bursts in a row; a burst is what is read between
//! two moments the source is found drained, a short one less than [`SMALL`]
//! bytes), and [`SMALL_BURSTS`] short bursts in a row switch it back.
//! HAProxy's `splice-auto` works much the same way, for the same reasons:
//!
//! - For a 64-byte kubectl frame or a TLS alert, `recv` + `send` of a few
//!   bytes is cheaper than moving page references through a pipe, and a
//!   short `recv` proves the socket is drained (below), so a message costs
//!   two system calls instead of three.
//! - For a `kubectl cp` or a large `logs` stream, splicing 64 KiB at a time
//!   saves two copies per byte, which is where the CPU goes.
//!
//! # Readiness
//!
//! Socket calls go through `TcpStream::try_io`, and `WouldBlock` is only
//! returned to it when the socket is known to be empty, so tokio's readiness
//! is never cleared by mistake:
//!
//! - `splice` into an empty pipe that says `EAGAIN` means "the socket has
//!   nothing" (never "the pipe is full"), which is why the pipe is only
//!   refilled once drained. A short splice proves nothing (a pipe holds at
//!   most 16 buffers, so 16 small segments fill it), so splicing reads on
//!   until `EAGAIN`.
//! - A `recv` that returns fewer bytes than asked proves the socket
//!   drained, and [`crate::try_read_drained`] clears tokio's readiness
//!   after it (its documentation gives the argument): the third `recv`,
//!   which would only say `EAGAIN`, is saved.
//!
//! The pipe or buffer is released as soon as the source has nothing more
//! to read, so an idle direction holds neither.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::buf_pool::Buf;
#[cfg(target_os = "linux")]
use crate::pipe_pool::{self, Lease};
use crate::{Direction, Mode, Side};

/// Syscalls one direction may make per poll before letting the other
/// direction (and other tasks) run: at 64 KiB per transfer, about 1 MiB.
const OPS_PER_POLL: u32 = 32;

/// A burst (what is read between two moments the source is found drained)
/// of less than this many bytes is a message, not part of a stream.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const SMALL: usize = 16 * 1024;

/// Bytes read in a stream after which a direction switches from copying to
/// splicing.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const BULK: usize = 128 * 1024;

/// Bursts of less than [`SMALL`] bytes in a row that end a stream.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) const SMALL_BURSTS: u8 = 3;

#[cfg(test)]
thread_local! {
    /// Bytes read by copying (not splicing) on this thread, for tests.
    pub(crate) static COPIED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// What the pump needs from its caller while polling a direction.
pub(crate) struct Ctx<'a> {
    pub(crate) pipe_size: Option<usize>,
    pub(crate) on_bytes: &'a (dyn Fn(Direction, u64) + Sync),
    /// Set when a byte moved (read or written) during this poll.
    pub(crate) progress: bool,
    /// Set when a direction stopped because of [`OPS_PER_POLL`], not
    /// because it is waiting on a socket: the pump must wake itself.
    pub(crate) yielded: bool,
    /// Which side sent EOF first, if any.
    pub(crate) first_eof: Option<Side>,
    /// Set while the direction polled is the last one open and the caller
    /// closes the sockets when the pump returns
    /// ([`crate::Options::close_passes_last_eof`]): its EOF is passed on by
    /// that close, not by `shutdown(SHUT_WR)`.
    pub(crate) close_passes_eof: bool,
}

/// How the bytes of one direction move right now.
#[derive(Debug)]
enum Engine {
    /// Socket → pipe → socket.
    #[cfg(target_os = "linux")]
    Splice { lease: Option<Lease> },
    /// Socket → heap buffer → socket; `buf[pos..len]` is still to write.
    Copy {
        buf: Option<Buf>,
        pos: u32,
        len: u32,
    },
}

/// What a fill attempt found.
enum Filled {
    Bytes(usize),
    Eof,
    /// Splice refused: copy from now on.
    #[cfg(target_os = "linux")]
    Refused,
}

impl Engine {
    const fn copy() -> Self {
        Self::Copy {
            buf: None,
            pos: 0,
            len: 0,
        }
    }

    /// Bytes read from the source and not yet written.
    fn pending(&self) -> usize {
        match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease } => lease.as_ref().map_or(0, Lease::pending),
            Self::Copy { pos, len, .. } => (len - pos) as usize,
        }
    }

    /// Gives the pipe or buffer back (only called when nothing is pending).
    fn release(&mut self) {
        debug_assert_eq!(self.pending(), 0);
        self.abandon();
    }

    /// Gives the pipe or buffer back, dropping pending bytes: a pipe that
    /// holds some is closed, not pooled.
    fn abandon(&mut self) {
        match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease } => *lease = None,
            Self::Copy { buf, pos, len } => (*buf, *pos, *len) = (None, 0, 0),
        }
    }

    /// One read from `src` into the empty pipe/buffer. `WouldBlock` only
    /// when the socket is empty (and then readiness is cleared).
    fn fill(&mut self, src: &TcpStream, pipe_size: Option<usize>) -> io::Result<Filled> {
        let n = match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease } => {
                let lease = match lease {
                    Some(lease) => lease,
                    // Out of fds for pipes: degrade to copying rather than
                    // failing the tunnel.
                    None => match Lease::take(pipe_size) {
                        Ok(new) => lease.insert(new),
                        Err(_) => return Ok(Filled::Refused),
                    },
                };
                src.try_io(Interest::READABLE, || lease.fill(src))?
            }
            Self::Copy { buf, pos, len } => {
                let _ = pipe_size;
                let buf = buf.get_or_insert_with(Buf::take);
                let n = crate::try_read_drained(src, buf)?;
                (*pos, *len) = (0, n as u32);
                n
            }
        };
        if n == 0 {
            self.release();
            return Ok(Filled::Eof);
        }
        Ok(Filled::Bytes(n))
    }

    /// One write of pending bytes to `dst`; returns how many were written.
    fn drain(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease } => {
                let lease = lease.as_mut().expect("bytes pending means a pipe is held");
                dst.try_io(Interest::WRITABLE, || lease.drain(dst))?
            }
            Self::Copy { buf, pos, len } => {
                let buf = buf.as_ref().expect("bytes pending means a buffer is held");
                let n = dst.try_write(&buf[*pos as usize..*len as usize])?;
                *pos += n as u32;
                n
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
}

/// The state of one direction.
#[derive(Debug)]
pub(crate) struct Half {
    dir: Direction,
    engine: Engine,
    /// May switch between copying and splicing: splice was asked for, and
    /// has not been refused.
    auto: bool,
    /// A splice from the source has given a definite answer; before that,
    /// a refusal (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`) means "copy instead".
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    spliced: bool,
    /// [`crate::Options::always_splice`].
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    always: bool,
    /// Bytes read since the stream began, i.e. since [`SMALL_BURSTS`]
    /// short bursts in a row last ended one.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    streak: u32,
    /// Bytes read since the source was last found drained.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    burst: u32,
    /// Bursts of less than [`SMALL`] bytes in a row.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    short_bursts: u8,
    /// Bytes written to the destination.
    total: u64,
    /// The source sent EOF.
    eof: bool,
    /// EOF seen, everything written, destination shut down for writing
    /// (when discarding: EOF seen).
    done: bool,
    /// The destination failed: read only to discard ([`Half::discard`]).
    discarding: bool,
}

impl Half {
    pub(crate) fn new(dir: Direction, mode: Mode, always_splice: bool) -> Self {
        #[cfg(not(target_os = "linux"))]
        debug_assert_eq!(mode, Mode::Copy);
        Self {
            dir,
            engine: Engine::copy(),
            auto: mode == Mode::Splice,
            always: always_splice,
            spliced: false,
            streak: 0,
            burst: 0,
            short_bursts: 0,
            total: 0,
            eof: false,
            done: false,
            discarding: false,
        }
    }

    /// EOF seen and passed on (or, when discarding, EOF seen).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The source sent EOF: this direction no longer reads it (what is
    /// pending may still be on its way).
    pub(crate) fn source_finished(&self) -> bool {
        self.eof
    }

    /// The source failed after giving everything it had queued: treat it as
    /// EOF, so what is pending is still written, then the destination is
    /// shut down for writing.
    pub(crate) fn source_gone(&mut self) {
        self.eof = true;
    }

    /// The destination failed: drops the bytes pending for it (a pipe that
    /// holds some is closed, not pooled) and from now on only reads the
    /// source to discard, until EOF ([`Half::poll_discard`]).
    pub(crate) fn discard(&mut self) {
        self.engine.abandon();
        self.engine = Engine::copy();
        self.discarding = true;
        self.done = self.done || self.eof;
    }

    /// Reads `src` and throws the bytes away until EOF (`Ready(Ok)`) or an
    /// error on `src` (`Ready(Err)`), so that closing it later sends a FIN,
    /// not a reset for unread data. Holds a buffer only while reading.
    pub(crate) fn poll_discard(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        debug_assert!(self.discarding);
        let side = self.dir.source();
        let mut buf = None;
        let mut ops = 0;
        while !self.done {
            if ops == OPS_PER_POLL {
                ctx.yielded = true;
                return Poll::Pending;
            }
            ops += 1;
            if let Err(e) = ready!(src.poll_read_ready(cx)) {
                return Poll::Ready(Err((side, e)));
            }
            let buf = buf.get_or_insert_with(Buf::take);
            match crate::try_read_drained(src, buf) {
                Ok(0) => {
                    self.eof = true;
                    self.done = true;
                }
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Poll::Ready(Err((side, e))),
            }
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// [`Mode::Splice`] while this direction splices bulk data (or would,
    /// given a stream); [`Mode::Copy`] when copying was forced or splice
    /// was refused.
    pub(crate) fn mode(&self) -> Mode {
        if self.auto {
            Mode::Splice
        } else {
            Mode::Copy
        }
    }

    /// Before a fill (nothing pending): picks the engine for it.
    #[cfg(target_os = "linux")]
    fn choose_engine(&mut self) {
        let bulk = self.auto && (self.always || self.streak as usize >= BULK);
        match (&self.engine, bulk) {
            (Engine::Copy { .. }, true) => self.engine = Engine::Splice { lease: None },
            (Engine::Splice { .. }, false) => self.engine = Engine::copy(),
            _ => {}
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn choose_engine(&mut self) {}

    /// After a fill of `n` bytes: keeps count of the burst and the stream.
    fn account_fill(&mut self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.burst = self.burst.saturating_add(n);
        self.streak = self.streak.saturating_add(n);
        #[cfg(target_os = "linux")]
        if self.is_splicing() {
            self.spliced = true;
        }
        #[cfg(test)]
        if !self.is_splicing() {
            COPIED.set(COPIED.get() + u64::from(n));
        }
    }

    /// The source is drained: the burst is over. [`SMALL_BURSTS`] bursts of
    /// less than [`SMALL`] bytes in a row (messages, not a stream) end the
    /// stream, so the next burst is copied until it proves to be a stream
    /// again. One short burst does not: a sender's last segment often
    /// arrives on its own after the pump drained the rest, and ending the
    /// stream there (as judging each read did) made a steady stream flap
    /// between splicing and copying.
    fn end_burst(&mut self) {
        if self.burst == 0 {
            return;
        }
        if (self.burst as usize) < SMALL && !self.always {
            self.short_bursts += 1;
            if self.short_bursts == SMALL_BURSTS {
                self.streak = 0;
                self.short_bursts = 0;
            }
        } else {
            self.short_bursts = 0;
        }
        self.burst = 0;
    }

    /// Moves bytes until the source would block, the destination would
    /// block, or [`OPS_PER_POLL`] is reached. `Ready(Ok)` once the direction
    /// is done; `Ready(Err)` with the side that failed.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> Poll<Result<(), (Side, io::Error)>> {
        let (src_side, dst_side) = (self.dir.source(), self.dir.destination());
        let mut ops = 0;
        while !self.done {
            if ops == OPS_PER_POLL {
                ctx.yielded = true;
                return Poll::Pending;
            }
            ops += 1;
            if self.engine.pending() > 0 {
                if let Err(e) = ready!(dst.poll_write_ready(cx)) {
                    return Poll::Ready(Err((dst_side, e)));
                }
                match self.engine.drain(dst) {
                    Ok(n) => {
                        self.total += n as u64;
                        (ctx.on_bytes)(self.dir, n as u64);
                        ctx.progress = true;
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Poll::Ready(Err((dst_side, e))),
                }
            } else if self.eof {
                if !ctx.close_passes_eof {
                    if let Err(e) = shutdown_write(dst) {
                        return Poll::Ready(Err((dst_side, e)));
                    }
                }
                self.done = true;
            } else {
                match src.poll_read_ready(cx) {
                    Poll::Pending => {
                        self.end_burst();
                        // Idle until the source speaks: hold no pipe and
                        // no buffer meanwhile.
                        self.engine.release();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((src_side, e))),
                    Poll::Ready(Ok(())) => {}
                }
                self.choose_engine();
                match self.engine.fill(src, ctx.pipe_size) {
                    Ok(Filled::Bytes(n)) => {
                        self.account_fill(n);
                        ctx.progress = true;
                    }
                    Ok(Filled::Eof) => {
                        self.eof = true;
                        ctx.first_eof.get_or_insert(src_side);
                    }
                    #[cfg(target_os = "linux")]
                    Ok(Filled::Refused) => self.stop_splicing(),
                    #[cfg(target_os = "linux")]
                    Err(e) if !self.spliced && self.is_splicing() && pipe_pool::is_refusal(&e) => {
                        self.stop_splicing();
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Poll::Ready(Err((src_side, e))),
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    #[cfg(target_os = "linux")]
    fn is_splicing(&self) -> bool {
        matches!(self.engine, Engine::Splice { .. })
    }

    #[cfg(not(target_os = "linux"))]
    #[allow(clippy::unused_self)]
    fn is_splicing(&self) -> bool {
        false
    }

    /// Splice is refused here (or no pipe could be opened): copy from now on.
    #[cfg(target_os = "linux")]
    fn stop_splicing(&mut self) {
        self.engine.release();
        self.engine = Engine::copy();
        self.auto = false;
    }
}

/// `WouldBlock` (readiness was cleared: the next `poll_*_ready` registers
/// for a wake-up) or `Interrupted` (retry).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Sends FIN to `dst` (`shutdown(SHUT_WR)`); reading from it still works.
fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    Ok(rustix::net::shutdown(dst, rustix::net::Shutdown::Write)?)
}
