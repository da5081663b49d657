//! Telling systemd how the service is doing: the `sd_notify(3)` protocol,
//! written out (a few lines) instead of linking libsystemd.
//!
//! systemd (with `Type=notify`) passes `$NOTIFY_SOCKET`, the address of a
//! Unix datagram socket: a file path (`/run/systemd/notify`) or, starting
//! with `@`, a Linux abstract name. Each message is one datagram of
//! newline-separated `KEY=value` lines. sniroute sends:
//! - `READY=1` once it serves: listeners bound and, when a discovery
//!   source is `required`, its first sync done (the `/readyz` condition);
//! - `RELOADING=1` (with `MONOTONIC_USEC=`) when a reload starts, and
//!   `READY=1` again once it is over and the router is ready;
//! - `STOPPING=1` when the drain starts;
//! - `WATCHDOG=1` every half `$WATCHDOG_USEC` when that is set and
//!   `$WATCHDOG_PID` is this process or absent; the pings come from a task
//!   of the runtime that serves connections, so a wedged runtime stops
//!   them and systemd restarts the service;
//! - `STATUS=` lines, shown by `systemctl status`.
//!
//! Without `$NOTIFY_SOCKET` every call does nothing. A failed send is
//! logged (once) and otherwise ignored: systemd's bookkeeping must never
//! stop the router.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest a send may block (systemd's queue full): the message is then
/// dropped and the failure logged.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where notifications go; does nothing when systemd did not ask for them.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Whether a send failed already (logged once as a warning).
    failed: AtomicBool,
}

/// Why `$NOTIFY_SOCKET` cannot be used.
#[derive(Debug)]
pub(crate) enum NotifySocketError {
    /// Neither an absolute path nor an `@` abstract name (`vsock:` and
    /// relative paths are not supported).
    Unsupported,
    /// The datagram socket could not be made or addressed.
    Io(io::Error),
}

impl std::fmt::Display for NotifySocketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported => {
                f.write_str("neither an absolute path nor an abstract name starting with @")
            }
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for. A value that cannot be used
    /// is logged, and notifications are then off.
    pub(crate) fn from_env() -> Self {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Self::default();
        };
        match Self::to(&value) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(notify_socket = %value.to_string_lossy(), error = %e,
                    "NOTIFY_SOCKET unusable: systemd will not be told when sniroute is ready");
                Self::default()
            }
        }
    }

    /// A notifier sending to `address` (`$NOTIFY_SOCKET`'s syntax).
    ///
    /// # Errors
    /// [`NotifySocketError`] for an unsupported address or when the socket
    /// cannot be made.
    pub(crate) fn to(address: &OsStr) -> Result<Self, NotifySocketError> {
        let bytes = address.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address).map_err(NotifySocketError::Io)?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(b'@') => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..]).map_err(NotifySocketError::Io)?
            }
            _ => return Err(NotifySocketError::Unsupported),
        };
        let socket = UnixDatagram::unbound().map_err(NotifySocketError::Io)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(NotifySocketError::Io)?;
        Ok(Self {
            target: Some((socket, addr)),
            failed: AtomicBool::new(false),
        })
    }

    /// Whether notifications go anywhere.
    pub(crate) fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`, with `status` for `systemctl status`.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `MAINPID=` (this process) and `READY=1`: sent by the new process of
    /// a binary upgrade, which systemd must follow from now on (the unit
    /// needs `NotifyAccess=all` for it).
    pub(crate) fn ready_as_main(&self, status: &str) {
        self.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ));
    }

    /// `RELOADING=1`: a reload starts; [`Notifier::ready`] ends it.
    pub(crate) fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config"
        ));
    }

    /// `STOPPING=1`: the drain starts.
    pub(crate) fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=` alone.
    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`.
    fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        match socket.send_to_addr(message.as_bytes(), addr) {
            Ok(_) => {
                tracing::debug!(message = %message.replace('\n', " "), "notified systemd");
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, message = %message.replace('\n', " "),
                        "cannot notify systemd (NOTIFY_SOCKET); further failures are not logged");
                }
            }
        }
    }
}

/// `STATUS=` takes one line.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is
/// set (not 0) and `$WATCHDOG_PID` is `own_pid` or absent. `None`: no
/// watchdog (an unusable value is logged).
pub(crate) fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec = usec?;
    let Ok(usec) = usec.trim().parse::<u64>() else {
        tracing::warn!(watchdog_usec = %usec, "WATCHDOG_USEC is not a number: no watchdog pings");
        return None;
    };
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == own_pid => {}
            Ok(_) => return None, // meant for another process (our parent's)
            Err(_) => {
                tracing::warn!(watchdog_pid = %pid, "WATCHDOG_PID is not a number: no watchdog pings");
                return None;
            }
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Starts the watchdog pings `$WATCHDOG_USEC` / `$WATCHDOG_PID` ask for, if
/// any; they go on until the task is aborted. The task runs on the main
/// runtime, and pings only when every worker runtime of `workers` also ran
/// a probe task within half the ping interval
/// ([`crate::workers::alive`]): a worker stuck in a loop or a blocking call
/// stops the pings, so systemd restarts the service as it would for a
/// stuck main thread.
pub(crate) fn spawn_watchdog(
    notifier: &Arc<Notifier>,
    workers: Vec<tokio::runtime::Handle>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !notifier.enabled() {
        return None;
    }
    let every = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )?;
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog: pinging"
    );
    let notifier = notifier.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        // After a stall, one ping, then the regular pace: no burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tick.tick().await;
            if crate::workers::alive(&workers, every / 2).await {
                if stalled {
                    stalled = false;
                    tracing::info!("systemd watchdog: every worker answers again; pinging");
                }
                notifier.watchdog();
            } else if !stalled {
                stalled = true;
                tracing::error!(
                    "systemd watchdog: a worker thread did not answer in time; not pinging"
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (_dir, socket, path) = receiver();
        let n = Notifier::to(path.as_os_str()).unwrap();
        assert!(n.enabled());
        n.ready("serving\n3 routes");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving 3 routes");
        n.reloading();
        let msg = recv(&socket);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping("draining");
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining");
        n.watchdog();
        assert_eq!(recv(&socket), "WATCHDOG=1");
        n.ready_as_main("upgraded");
        assert_eq!(
            recv(&socket),
            format!("MAINPID={}\nREADY=1\nSTATUS=upgraded", std::process::id())
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sniroute-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::to(OsStr::new(&format!("@{name}"))).unwrap();
        n.stopping("bye");
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn unusable_addresses_are_refused_and_failures_do_not_panic() {
        for bad in ["", "relative/notify", "vsock:2:1234"] {
            assert!(matches!(
                Notifier::to(OsStr::new(bad)),
                Err(NotifySocketError::Unsupported)
            ));
        }
        // Nobody listens there: the send fails, is logged, and that is all.
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::to(dir.path().join("gone.sock").as_os_str()).unwrap();
        n.ready("x");
        n.ready("y");
        assert!(n.failed.load(Ordering::Relaxed));
        // Off: nothing happens.
        Notifier::default().ready("z");
    }

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_for_this_process_only() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some("200000"), None, 42), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("42"), 42), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("41"), 42), None);
        assert_eq!(watchdog_interval(Some("200000"), Some("x"), 42), None);
        assert_eq!(watchdog_interval(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval(None, Some("42"), 42), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, 42),
            Some(Duration::from_millis(1))
        );
    }
}
