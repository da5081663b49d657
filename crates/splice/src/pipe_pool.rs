//! Process-wide pool of non-blocking pipes, and the `splice(2)` calls that
//! use them (Linux only).
//!
//! A [`Lease`] is one pipe lent to one direction of one tunnel. It tracks how
//! many bytes sit in the pipe; when dropped it goes back to the pool only if
//! it is empty by that count (debug builds also check with `FIONREAD`), so
//! bytes of one connection can never surface in another. Pipes that still hold
//! data, or that do not fit in the bounded pool, are closed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};

/// At most this many empty pipes are kept for reuse (two fds each).
pub(crate) const MAX_SPARE: usize = 256;

/// Capacity assumed when the kernel cannot tell us (its default is 16 pages).
const DEFAULT_CAPACITY: usize = 64 * 1024;

/// Flags of every `splice` call: never block on the pipe; move pages when
/// the kernel can (a hint).
const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// Empty pipes ready for reuse.
static SPARE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
/// Pipes currently lent out (leases alive).
static IN_USE: AtomicUsize = AtomicUsize::new(0);

#[cfg(test)]
thread_local! {
    /// Makes `fill` fail with `EINVAL` on this thread, as a socket that
    /// cannot splice would.
    pub(crate) static REFUSE_SPLICE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Leases taken on this thread.
    pub(crate) static TAKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Both ends of one pipe, opened `O_NONBLOCK | O_CLOEXEC`.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds at most (as reported by `F_GETPIPE_SZ`).
    capacity: usize,
    /// The `pipe_size` option this pipe was created for: pipes are only
    /// reused for the same setting, so no `fcntl` is needed on reuse.
    requested: Option<usize>,
}

impl Pipe {
    fn new(requested: Option<usize>) -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A size above /proc/sys/fs/pipe-max-size (EPERM for unprivileged
        // users) is not fatal: the pipe keeps the kernel default.
        let set = requested.and_then(|size| rustix::pipe::fcntl_setpipe_size(&write, size).ok());
        let capacity = match set {
            Some(capacity) => capacity,
            None => rustix::pipe::fcntl_getpipe_size(&read).unwrap_or(DEFAULT_CAPACITY),
        };
        Ok(Self {
            read,
            write,
            capacity,
            requested,
        })
    }

    /// Asks the kernel whether the pipe is empty (any doubt counts as "no").
    fn is_empty(&self) -> bool {
        rustix::io::ioctl_fionread(&self.read) == Ok(0)
    }
}

fn spare() -> MutexGuard<'static, Vec<Pipe>> {
    // The vector stays consistent even if a holder panicked.
    SPARE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `(spare, in use)` pipe counts, for tests and metrics.
pub(crate) fn stats() -> (usize, usize) {
    (spare().len(), IN_USE.load(Ordering::Relaxed))
}

/// One pipe lent to one direction of a tunnel.
#[derive(Debug)]
pub(crate) struct Lease {
    /// Always `Some` until `drop`.
    pipe: Option<Pipe>,
    /// Bytes spliced into the pipe and not yet out of it.
    pending: usize,
}

impl Lease {
    /// Takes an empty pipe made for `requested` from the pool, or opens one.
    ///
    /// # Errors
    ///
    /// `pipe2(2)` errors, typically `EMFILE`/`ENFILE`.
    pub(crate) fn take(requested: Option<usize>) -> io::Result<Self> {
        let (found, stale) = {
            let mut spare = spare();
            match spare.iter().rposition(|p| p.requested == requested) {
                Some(i) => (Some(spare.swap_remove(i)), None),
                // Pipes of an older `pipe_size` setting: evict one per miss
                // so the pool converges to the current setting.
                None => (None, spare.pop()),
            }
        };
        drop(stale); // close outside the lock
        let pipe = match found {
            Some(pipe) => pipe,
            None => Pipe::new(requested)?,
        };
        IN_USE.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        TAKEN.set(TAKEN.get() + 1);
        Ok(Self {
            pipe: Some(pipe),
            pending: 0,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a lease holds its pipe until dropped")
    }

    /// Bytes in the pipe.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// One `splice(src -> pipe)`; call only on an empty pipe, so that
    /// `EAGAIN` can only mean "the socket has no data".
    ///
    /// Returns the bytes moved; `0` means end of file.
    ///
    /// # Errors
    ///
    /// The `splice(2)` error, with `EAGAIN` as [`io::ErrorKind::WouldBlock`].
    pub(crate) fn fill<Fd: AsFd>(&mut self, src: Fd) -> io::Result<usize> {
        debug_assert_eq!(self.pending, 0, "refill only a drained pipe");
        #[cfg(test)]
        if REFUSE_SPLICE.get() {
            return Err(Errno::INVAL.into());
        }
        let pipe = self.pipe();
        let n = splice(src, &pipe.write, pipe.capacity)?;
        self.pending = n;
        Ok(n)
    }

    /// One `splice(pipe -> dst)` of what the pipe holds.
    ///
    /// # Errors
    ///
    /// The `splice(2)` error, with `EAGAIN` as [`io::ErrorKind::WouldBlock`].
    pub(crate) fn drain<Fd: AsFd>(&mut self, dst: Fd) -> io::Result<usize> {
        let n = splice(&self.pipe().read, dst, self.pending)?;
        // The kernel never moves more than asked.
        self.pending -= n.min(self.pending);
        Ok(n)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        IN_USE.fetch_sub(1, Ordering::Relaxed);
        let Some(pipe) = self.pipe.take() else { return };
        // Our count is exact (it is what `splice` returned), so a pipe with
        // nothing pending is empty. Debug builds (the test suite) also ask
        // the kernel, which would catch an accounting bug; release builds
        // save that `ioctl` per burst.
        if self.pending != 0 || (cfg!(debug_assertions) && !pipe.is_empty()) {
            return; // closed: data of this tunnel must not reach another
        }
        let rejected = {
            let mut spare = spare();
            if spare.len() < MAX_SPARE {
                spare.push(pipe);
                None
            } else {
                Some(pipe)
            }
        };
        drop(rejected); // close outside the lock
    }
}

/// `splice(2)` with `EINTR` retried.
fn splice<In: AsFd, Out: AsFd>(from: In, to: Out, len: usize) -> io::Result<usize> {
    loop {
        match rustix::pipe::splice(&from, None, &to, None, len, FLAGS) {
            Err(Errno::INTR) => {}
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Whether `error`, on the first `splice` of a direction, means "this
/// socket/kernel cannot splice": the caller then copies instead.
pub(crate) fn is_refusal(error: &io::Error) -> bool {
    let refused = [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP];
    error
        .raw_os_error()
        .is_some_and(|code| refused.iter().any(|e| e.raw_os_error() == code))
}

/// Probes once whether `splice(2)` from a socket into a pipe works here
/// (it may be missing or filtered by seccomp in some sandboxes).
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe().is_ok())
}

fn probe() -> io::Result<()> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let (a, b) = socketpair(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
    rustix::io::write(&a, b"?")?;
    let (_read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    match splice(&b, &write, 1)? {
        1 => Ok(()),
        _ => Err(io::Error::other("splice moved no byte")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The unit tests share the global pool: those that take pipes run one
    /// at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    pub(crate) fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[test]
    fn probe_says_yes_on_linux() {
        assert!(supported());
        assert!(supported(), "cached answer");
    }

    #[test]
    fn empty_lease_returns_to_pool_and_is_reused() {
        let _serial = serial();
        let before = stats();
        let lease = Lease::take(None).unwrap();
        let (spare, in_use) = stats();
        assert_eq!(in_use, before.1 + 1);
        let capacity = lease.pipe().capacity;
        assert!(capacity >= 4096, "{capacity}");
        drop(lease);
        assert_eq!(stats(), (spare + 1, before.1), "returned to the pool");
        // Taken again: comes from the pool, not a new pipe.
        let again = Lease::take(None).unwrap();
        assert_eq!(stats().0, spare);
        drop(again);
    }

    #[test]
    fn lease_with_data_is_closed_not_pooled() {
        let _serial = serial();
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        rustix::io::write(&a, b"secret").unwrap();
        let mut lease = Lease::take(None).unwrap();
        assert_eq!(lease.fill(&b).unwrap(), 6);
        assert_eq!(lease.pending(), 6);
        let spare_before = stats().0;
        drop(lease);
        assert_eq!(
            stats().0,
            spare_before,
            "a pipe holding bytes must not be pooled"
        );
        // Nothing left to read: EAGAIN maps to WouldBlock.
        let mut lease = Lease::take(None).unwrap();
        let err = lease.fill(&b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // The kernel's view is checked too, not only our count.
        rustix::io::write(&a, b"x").unwrap();
        assert_eq!(lease.fill(&b).unwrap(), 1);
        lease.pending = 0; // simulate an accounting bug
        let spare_before = stats().0;
        drop(lease);
        if cfg!(debug_assertions) {
            assert_eq!(stats().0, spare_before, "FIONREAD caught it");
        }
    }

    #[test]
    fn pipe_size_is_applied_and_pools_are_kept_apart() {
        let _serial = serial();
        let lease = Lease::take(Some(256 * 1024)).unwrap();
        assert_eq!(lease.pipe().capacity, 256 * 1024);
        assert_eq!(lease.pipe().requested, Some(256 * 1024));
        drop(lease);
        let lease = Lease::take(None).unwrap();
        assert_eq!(lease.pipe().requested, None);
    }

    #[test]
    fn refusal_errors() {
        assert!(is_refusal(&io::Error::from(Errno::INVAL)));
        assert!(is_refusal(&io::Error::from(Errno::NOSYS)));
        assert!(is_refusal(&io::Error::from(Errno::OPNOTSUPP)));
        assert!(!is_refusal(&io::Error::from(Errno::CONNRESET)));
        assert!(!is_refusal(&io::Error::from(io::ErrorKind::WouldBlock)));
    }
}
