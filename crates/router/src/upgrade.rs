//! Binary upgrade on `SIGUSR2`, with no refused connection: the running
//! process starts the new binary, hands it the same listening sockets (the
//! TLS listeners and the admin endpoint: the same descriptors, so what
//! waits in their accept queues is kept), waits until the new process is
//! ready, and only then stops accepting, drains its tunnels and exits.
//!
//! The handover, old → new:
//! - the sockets, as inherited descriptors named in `$SNIROUTE_UPGRADE_FDS`
//!   (`FD=NAME;...`, the name the configured address as written, or
//!   `admin`), matched like systemd's (see [`crate::activation`]). Every
//!   socket of a listener is handed over, one per worker of the old
//!   process (closing one of a `SO_REUSEPORT` group would reset the
//!   connections queued in it), so a name may repeat; the new process
//!   spreads them over its own workers and binds more only for workers
//!   that got none (see [`crate::listener::Sockets::HandedOver`]). A
//!   socket systemd holds too is one shared socket, handed over once;
//! - `$SNIROUTE_UPGRADE_READY_FD`: the write end of a pipe, on which the
//!   new process writes one byte once it is ready (the `READY=1`
//!   condition); it then also tells systemd `MAINPID=` and `READY=1`.
//!
//! A new process that exits (a broken config, a socket it cannot match),
//! closes the pipe, or is not ready within [`READY_TIMEOUT`] (it is then
//! killed) leaves the old process serving as before: the failure is logged
//! and counted in `sniroute_upgrades_total{result="failure"}`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How long a new process may take to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The descriptors handed over: `FD=NAME;...`.
pub(crate) const FDS_VAR: &str = "SNIROUTE_UPGRADE_FDS";
/// The readiness pipe's write end.
pub(crate) const READY_FD_VAR: &str = "SNIROUTE_UPGRADE_READY_FD";

/// Why an upgrade failed; the old process goes on serving.
#[derive(Debug)]
pub(crate) enum UpgradeError {
    /// The binary could not be found or started.
    Spawn(PathBuf, io::Error),
    /// The pipe or a descriptor could not be made.
    Io(io::Error),
    /// The new process ended before it was ready.
    Exited(Option<i32>),
    /// The new process was not ready in time, and was killed.
    Timeout,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(path, e) => write!(f, "cannot start {}: {e}", path.display()),
            Self::Io(e) => write!(f, "{e}"),
            Self::Exited(Some(code)) => write!(
                f,
                "the new process exited with status {code} before it was ready (its log says why)"
            ),
            Self::Exited(None) => f.write_str(
                "the new process was killed by a signal before it was ready (its log says why)",
            ),
            Self::Timeout => write!(
                f,
                "the new process was not ready within {}s; it was killed",
                READY_TIMEOUT.as_secs()
            ),
        }
    }
}

/// The binary to start: `configured`, else the one this process runs
/// (when it was replaced on disk, as package managers and `install` do,
/// the path it was started from).
pub(crate) fn binary(configured: Option<&PathBuf>) -> io::Result<PathBuf> {
    if let Some(path) = configured {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe()?;
    let text = exe.as_os_str().to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Starts `binary` with this process's arguments and `sockets` (name,
/// socket) handed over, and waits until it is ready. Returns its PID.
///
/// # Errors
/// [`UpgradeError`]; the new process is then gone (reaped, or killed
/// first when it hung).
pub(crate) async fn start(
    binary: PathBuf,
    sockets: &[(String, socket2::SockRef<'_>)],
) -> Result<u32, UpgradeError> {
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| UpgradeError::Io(e.into()))?;
    // dup(2) gives descriptors without close-on-exec: these, and only
    // these, cross into the new process.
    let mut passed: Vec<OwnedFd> = Vec::with_capacity(sockets.len() + 1);
    let mut names = Vec::with_capacity(sockets.len());
    for (name, socket) in sockets {
        let fd = rustix::io::dup(socket.as_fd()).map_err(|e| UpgradeError::Io(e.into()))?;
        names.push(format!("{}={name}", fd.as_raw_fd()));
        passed.push(fd);
    }
    let ready_fd = rustix::io::dup(&ready_write).map_err(|e| UpgradeError::Io(e.into()))?;
    drop(ready_write);
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut command = Command::new(&binary);
    // The watchdog systemd set for this process is the new one's to ping
    // once it is the main process; its PID is not known before it starts,
    // and without WATCHDOG_PID it pings.
    if std::env::var("WATCHDOG_PID").is_ok_and(|p| p.trim() == std::process::id().to_string()) {
        command.env_remove("WATCHDOG_PID");
    }
    let child = command
        .args(&args)
        .env(FDS_VAR, names.join(";"))
        .env(READY_FD_VAR, ready_fd.as_raw_fd().to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .spawn();
    // The new process has its copies; ours close now, so the pipe reads
    // end-of-file once the new process is gone.
    drop(passed);
    drop(ready_fd);
    let mut child = child.map_err(|e| UpgradeError::Spawn(binary.clone(), e))?;
    let pid = child.id();
    tracing::info!(binary = %binary.display(), new_pid = pid, "upgrade: new process started");
    match wait_ready(ready_read).await {
        Ok(true) => Ok(pid),
        Ok(false) => Err(UpgradeError::Exited(reap(child).await)),
        Err(e) => {
            tracing::warn!(new_pid = pid, error = %e, "upgrade: killing the new process");
            let _ = child.kill();
            reap(child).await;
            Err(UpgradeError::Timeout)
        }
    }
}

/// Whether the new process wrote its byte (`false`: it closed the pipe
/// without, i.e. it exited), within [`READY_TIMEOUT`].
async fn wait_ready(read: OwnedFd) -> Result<bool, io::Error> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(READY_TIMEOUT, pipe.read(&mut byte)).await {
        Ok(Ok(n)) => Ok(n == 1),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "not ready in time")),
    }
}

/// Waits for `child` to end (it has closed its end of the pipe, or was
/// killed), killing it if it lingers; returns its exit code.
async fn reap(mut child: Child) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        for _ in 0..500 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok().and_then(|s| s.code())
    })
    .await
    .ok()
    .flatten()
}

/// The new process's side: tells the old one it is ready (writes the byte
/// on the inherited pipe, then closes it).
pub(crate) fn tell_ready(pipe: OwnedFd) {
    if let Err(e) = rustix::io::write(&pipe, b"1") {
        tracing::warn!(error = %e, "upgrade: cannot tell the old process that this one is ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_the_configured_one_or_this_one() {
        let p = PathBuf::from("/opt/sniroute-2/sniroute");
        assert_eq!(binary(Some(&p)).unwrap(), p);
        assert_eq!(binary(None).unwrap(), std::env::current_exe().unwrap());
    }
}
