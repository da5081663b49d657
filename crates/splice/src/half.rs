//! One direction of the pump: a small state machine driven by tokio
//! readiness.
//!
//! ```text
//!        ┌───────────────── pipe/buffer drained ──────────────────┐
//!        ▼                                                        │
//!      FILL ── src readable: splice(src → pipe) ── n > 0 ──►    DRAIN ── dst writable:
//!        │                   or read(src → buf)                   splice(pipe → dst)
//!        │   EAGAIN: release pipe/buffer, wait for readable        or write(buf → dst)
//!        │   0 = EOF                                               EAGAIN: wait for writable
//!        ▼
//!    SHUTDOWN ── shutdown(dst, SHUT_WR) ──► DONE
//! ```
//!
//! The pipe (or copy buffer) is only refilled once drained, so a `splice`
//! into it that says `EAGAIN` always means "the socket has nothing", never
//! "the pipe is full"; that is what makes it correct to hand the `EAGAIN`
//! back to tokio's `try_io` (which then clears the socket's readiness).
//! The pipe or buffer is released as soon as the source has nothing more
//! to read, so an idle direction holds neither.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use crate::buf_pool::Buf;
#[cfg(target_os = "linux")]
use crate::pipe_pool::{self, Lease};
use crate::{Direction, Mode, Side};

/// Syscalls one direction may make per poll before letting the other
/// direction (and other tasks) run: at 64 KiB per transfer, about 1 MiB.
const OPS_PER_POLL: u32 = 32;

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
}

/// How the bytes of one direction move.
#[derive(Debug)]
enum Engine {
    /// Socket → pipe → socket. `tried` is set once a `splice` from the
    /// source gave a definite answer; before that, a refusal switches the
    /// direction to [`Engine::Copy`].
    #[cfg(target_os = "linux")]
    Splice { lease: Option<Lease>, tried: bool },
    /// Socket → heap buffer → socket; `buf[pos..len]` is still to write.
    Copy {
        buf: Option<Buf>,
        pos: u32,
        len: u32,
    },
}

/// What a fill attempt found.
enum Filled {
    Bytes,
    Eof,
    /// Splice refused on the first attempt: switch to copying.
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
            Self::Splice { lease, .. } => lease.as_ref().map_or(0, Lease::pending),
            Self::Copy { pos, len, .. } => (len - pos) as usize,
        }
    }

    /// Gives the pipe or buffer back (only called when nothing is pending).
    fn release(&mut self) {
        debug_assert_eq!(self.pending(), 0);
        match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease, .. } => *lease = None,
            Self::Copy { buf, pos, len } => (*buf, *pos, *len) = (None, 0, 0),
        }
    }

    /// One read from `src` into the empty pipe/buffer. `WouldBlock` only
    /// when the socket said `EAGAIN` (and then readiness is cleared).
    fn fill(&mut self, src: &TcpStream, pipe_size: Option<usize>) -> io::Result<Filled> {
        let result = match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease, tried } => {
                let lease = match lease {
                    Some(lease) => lease,
                    // Out of fds for pipes: degrade to copying rather than
                    // failing the tunnel.
                    None => match Lease::take(pipe_size) {
                        Ok(new) => lease.insert(new),
                        Err(_) => return Ok(Filled::Refused),
                    },
                };
                match src.try_io(tokio::io::Interest::READABLE, || lease.fill(src)) {
                    Err(e) if !*tried && pipe_pool::is_refusal(&e) => {
                        self.release();
                        return Ok(Filled::Refused);
                    }
                    result => {
                        *tried = true;
                        result
                    }
                }
            }
            Self::Copy { buf, pos, len } => {
                let _ = pipe_size;
                let buf = buf.get_or_insert_with(Buf::take);
                src.try_read(buf).inspect(|&n| (*pos, *len) = (0, n as u32))
            }
        };
        match result {
            Ok(0) => {
                self.release();
                Ok(Filled::Eof)
            }
            Ok(_) => Ok(Filled::Bytes),
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.release(); // idle: hold no pipe, no buffer
                }
                Err(e)
            }
        }
    }

    /// One write of pending bytes to `dst`; returns how many were written.
    fn drain(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = match self {
            #[cfg(target_os = "linux")]
            Self::Splice { lease, .. } => {
                let lease = lease.as_mut().expect("bytes pending means a pipe is held");
                dst.try_io(tokio::io::Interest::WRITABLE, || lease.drain(dst))?
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
    /// Bytes written to the destination.
    total: u64,
    /// The source sent EOF.
    eof: bool,
    /// EOF seen, everything written, destination shut down for writing.
    done: bool,
}

impl Half {
    pub(crate) fn new(dir: Direction, mode: Mode) -> Self {
        #[cfg(target_os = "linux")]
        let engine = match mode {
            Mode::Splice => Engine::Splice {
                lease: None,
                tried: false,
            },
            Mode::Copy => Engine::copy(),
        };
        #[cfg(not(target_os = "linux"))]
        let engine = {
            debug_assert_eq!(mode, Mode::Copy);
            Engine::copy()
        };
        Self {
            dir,
            engine,
            total: 0,
            eof: false,
            done: false,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The engine now in use (a splice direction may have fallen back).
    pub(crate) fn mode(&self) -> Mode {
        match self.engine {
            #[cfg(target_os = "linux")]
            Engine::Splice { .. } => Mode::Splice,
            Engine::Copy { .. } => Mode::Copy,
        }
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
                if let Err(e) = shutdown_write(dst) {
                    return Poll::Ready(Err((dst_side, e)));
                }
                self.done = true;
            } else {
                if let Err(e) = ready!(src.poll_read_ready(cx)) {
                    return Poll::Ready(Err((src_side, e)));
                }
                match self.engine.fill(src, ctx.pipe_size) {
                    Ok(Filled::Bytes) => ctx.progress = true,
                    Ok(Filled::Eof) => {
                        self.eof = true;
                        ctx.first_eof.get_or_insert(src_side);
                    }
                    #[cfg(target_os = "linux")]
                    Ok(Filled::Refused) => self.engine = Engine::copy(),
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Poll::Ready(Err((src_side, e))),
                }
            }
        }
        Poll::Ready(Ok(()))
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
