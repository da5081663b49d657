//! Socket activation: listening sockets handed to sniroute by systemd (a
//! `.socket` unit) or any supervisor speaking the same protocol,
//! `sd_listen_fds(3)`: descriptors 3, 4, ... with `$LISTEN_FDS` (how many),
//! `$LISTEN_PID` (the process they are for) and `$LISTEN_FDNAMES` (their
//! names, `:`-separated).
//!
//! # Matching rules
//! Each inherited socket must be a listening TCP socket, and is given to
//! one configured listener, or to the admin endpoint, by the first rule
//! that applies:
//! 1. its name (`FileDescriptorName=`) is `admin`: the admin endpoint;
//! 2. its name is a port number, and exactly one configured listener has
//!    that port: that listener (systemd forbids `:` in names, so a name
//!    cannot be a whole address);
//! 3. its bound address is a configured listener's address (IP and port,
//!    as written), or the admin address: that one.
//!
//! The binary upgrade (`SIGUSR2`, [`crate::upgrade`]) hands its sockets
//! over the same way, named in `$SNIROUTE_UPGRADE_FDS` instead, by the
//! configured address as written (rule 0: a name equal to a configured
//! listener's address; systemd's names cannot be one, they have no `:`),
//! so that listeners on port 0 are found again. It hands over every
//! socket of each listener (one per worker of the old process, all in one
//! `SO_REUSEPORT` group), so the same name may come several times: all go
//! to that listener (see [`crate::listener::Sockets::HandedOver`]).
//!
//! An inherited socket no rule matches, or two sockets for the same
//! listener (other than an upgrade's group), stop the start with an error
//! naming the descriptor. A
//! configured listener no socket matches is bound by sniroute itself.
//! Inherited descriptors are marked close-on-exec once taken, and the
//! `LISTEN_*` variables are removed from the environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More than any real socket unit passes; a larger `$LISTEN_FDS` is an
/// error rather than a loop over thousands of descriptors.
const MAX_FDS: usize = 1024;

/// Ends the name of a socket handed over by an upgrade that systemd holds
/// too (see [`Socket::from_systemd`]).
pub(crate) const SYSTEMD_MARK: &str = "|systemd";

/// Whether [`Inherited::from_env`] ran: descriptors are taken once, so no
/// two owners can close the same one.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Listening sockets inherited from the supervisor, not yet given to a
/// listener.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Socket>,
    /// From a binary upgrade: the pipe to tell the old process that this
    /// one is ready.
    pub(crate) ready_pipe: Option<OwnedFd>,
}

/// One inherited listening socket.
#[derive(Debug)]
pub(crate) struct Socket {
    /// The descriptor number it came as (for messages).
    pub(crate) fd: RawFd,
    /// Its `$LISTEN_FDNAMES` name (`unknown` without names).
    pub(crate) name: String,
    /// Its bound address.
    pub(crate) local: SocketAddr,
    pub(crate) socket: socket2::Socket,
    /// Whether systemd holds it too (socket activation, or handed over by
    /// an upgrade from a process that had it from systemd).
    pub(crate) from_systemd: bool,
    /// Whether a binary upgrade handed it over (`$SNIROUTE_UPGRADE_FDS`):
    /// several such sockets may serve one listener (the old process's
    /// workers' `SO_REUSEPORT` group).
    pub(crate) handed_over: bool,
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fd {} (name {:?}, bound to {})",
            self.fd, self.name, self.local
        )
    }
}

/// Why inherited sockets cannot be used; the router does not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ActivationError {
    /// A `LISTEN_*` variable is malformed.
    Variable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `$LISTEN_FDNAMES` has another count of names than `$LISTEN_FDS`.
    NameCount {
        /// `$LISTEN_FDS`.
        fds: usize,
        /// Names in `$LISTEN_FDNAMES`.
        names: usize,
    },
    /// A descriptor is not open, or not a listening TCP socket.
    NotListening {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What it is instead.
        problem: String,
    },
    /// A socket matches no configured listener.
    Unmatched {
        /// The socket, described.
        socket: String,
        /// The configured listeners and admin address, described.
        configured: String,
    },
    /// Two sockets match the same listener.
    Duplicate {
        /// The listener (or `admin`).
        listener: String,
        /// The two sockets, described.
        first: String,
        /// The second.
        second: String,
    },
}

impl std::fmt::Display for ActivationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Variable {
                name,
                value,
                problem,
            } => write!(f, "socket activation: {name}={value:?}: {problem}"),
            Self::NameCount { fds, names } => write!(
                f,
                "socket activation: LISTEN_FDS={fds} but LISTEN_FDNAMES has {names} names"
            ),
            Self::NotListening { fd, name, problem } => write!(
                f,
                "socket activation: inherited fd {fd} (name {name:?}) is not a listening TCP socket: {problem}"
            ),
            Self::Unmatched { socket, configured } => write!(
                f,
                "socket activation: inherited {socket} matches no configured listener \
                 (configured: {configured}); match by FileDescriptorName=admin, \
                 FileDescriptorName=<port>, or the same address in the config"
            ),
            Self::Duplicate {
                listener,
                first,
                second,
            } => write!(
                f,
                "socket activation: inherited {first} and {second} both match {listener}"
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

/// What an inherited socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// The configured listener with this address (as written).
    Listener(SocketAddr),
    /// The admin endpoint.
    Admin,
}

impl Inherited {
    /// No inherited sockets.
    pub fn none() -> Self {
        Self::default()
    }

    /// Takes the sockets the supervisor passed to this process, if any,
    /// and removes the `LISTEN_*` variables from the environment. Call it
    /// once, first thing, before other threads run; later calls find none.
    /// Variables meant for another process (`$LISTEN_PID` not this one)
    /// are left alone, and no descriptor is taken.
    ///
    /// # Errors
    /// [`ActivationError`] for malformed variables and descriptors that
    /// are not listening TCP sockets.
    pub fn from_env() -> Result<Self, ActivationError> {
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Ok(Self::none());
        }
        let var = |k: &str| std::env::var(k).ok();
        if let Some(fds) = var(crate::upgrade::FDS_VAR) {
            return Self::from_upgrade(&fds, var(crate::upgrade::READY_FD_VAR).as_deref());
        }
        let Some(names) = passed(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )?
        else {
            return Ok(Self::none());
        };
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        let mut sockets = Vec::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            let fd = FIRST_FD + i as RawFd;
            let owned = claim(fd).map_err(|problem| ActivationError::NotListening {
                fd,
                name: name.clone(),
                problem,
            })?;
            sockets.push(check(fd, name, owned, true, false)?);
        }
        Ok(Self {
            sockets,
            ready_pipe: None,
        })
    }

    /// The sockets and pipe an upgrading process passed (see
    /// [`crate::upgrade`]): `fds` is `FD=NAME;...`.
    fn from_upgrade(fds: &str, ready: Option<&str>) -> Result<Self, ActivationError> {
        for k in [crate::upgrade::FDS_VAR, crate::upgrade::READY_FD_VAR] {
            std::env::remove_var(k);
        }
        let bad = |value: &str| ActivationError::Variable {
            name: crate::upgrade::FDS_VAR,
            value: value.to_owned(),
            problem: "not FD=NAME;...",
        };
        let mut sockets = Vec::new();
        for entry in fds.split(';').filter(|e| !e.is_empty()).take(MAX_FDS) {
            let (fd, name) = entry.split_once('=').ok_or_else(|| bad(fds))?;
            // `NAME|systemd`: systemd holds this socket too.
            let (name, from_systemd) = match name.strip_suffix(SYSTEMD_MARK) {
                Some(name) => (name, true),
                None => (name, false),
            };
            let fd: RawFd = fd.parse().map_err(|_| bad(fds))?;
            if fd < FIRST_FD {
                return Err(bad(fds));
            }
            let owned = claim(fd).map_err(|problem| ActivationError::NotListening {
                fd,
                name: name.to_owned(),
                problem,
            })?;
            sockets.push(check(fd, name.to_owned(), owned, from_systemd, true)?);
        }
        let ready_pipe = match ready {
            Some(text) => {
                let fd: RawFd =
                    text.parse()
                        .ok()
                        .filter(|fd| *fd >= FIRST_FD)
                        .ok_or_else(|| ActivationError::Variable {
                            name: crate::upgrade::READY_FD_VAR,
                            value: text.to_owned(),
                            problem: "not a descriptor number",
                        })?;
                Some(claim(fd).map_err(|problem| ActivationError::NotListening {
                    fd,
                    name: "upgrade readiness pipe".to_owned(),
                    problem,
                })?)
            }
            None => None,
        };
        Ok(Self {
            sockets,
            ready_pipe,
        })
    }

    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Gives every socket to its listener by the [matching
    /// rules](self), for these configured `listeners` and `admin` address.
    /// A listener gets one socket, or every socket of a binary upgrade's
    /// hand-over that names it (the old process's workers' sockets).
    ///
    /// # Errors
    /// [`ActivationError::Unmatched`] or [`ActivationError::Duplicate`].
    pub(crate) fn assign(
        self,
        listeners: &[SocketAddr],
        admin: Option<SocketAddr>,
    ) -> Result<HashMap<Target, Vec<Socket>>, ActivationError> {
        let mut out: HashMap<Target, Vec<Socket>> = HashMap::new();
        for socket in self.sockets {
            let Some(target) = target_of(&socket.name, socket.local, listeners, admin) else {
                let mut configured: Vec<String> =
                    listeners.iter().map(ToString::to_string).collect();
                if let Some(a) = admin {
                    configured.push(format!("admin {a}"));
                }
                return Err(ActivationError::Unmatched {
                    socket: socket.to_string(),
                    configured: configured.join(", "),
                });
            };
            let group = |s: &Socket| s.handed_over && !s.from_systemd;
            let first = out.get(&target).and_then(|v| v.first());
            if let Some(first) = first
                .filter(|f| !(group(f) && group(&socket) && matches!(target, Target::Listener(_))))
            {
                return Err(ActivationError::Duplicate {
                    listener: match target {
                        Target::Listener(a) => format!("listener {a}"),
                        Target::Admin => "the admin endpoint".to_owned(),
                    },
                    first: first.to_string(),
                    second: socket.to_string(),
                });
            }
            out.entry(target).or_default().push(socket);
        }
        Ok(out)
    }
}

/// The names of the descriptors passed to `own_pid`, one per descriptor
/// (`unknown` when `$LISTEN_FDNAMES` is absent), or `None` when nothing
/// was passed to this process.
fn passed(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Option<Vec<String>>, ActivationError> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    let bad = |name: &'static str, value: &str, problem: &'static str| ActivationError::Variable {
        name,
        value: value.to_owned(),
        problem,
    };
    let pid_number: u32 = pid
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_PID", pid, "not a process id"))?;
    if pid_number != own_pid {
        return Ok(None);
    }
    let fds_text = fds.unwrap_or("0");
    let count: usize = fds_text
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds_text, "not a number"))?;
    if count > MAX_FDS {
        return Err(bad("LISTEN_FDS", fds_text, "more than 1024 descriptors"));
    }
    let names: Vec<String> = match names {
        None => vec!["unknown".to_owned(); count],
        Some("") if count == 0 => Vec::new(),
        Some(n) => n.split(':').map(str::to_owned).collect(),
    };
    if names.len() != count {
        return Err(ActivationError::NameCount {
            fds: count,
            names: names.len(),
        });
    }
    Ok(Some(names))
}

/// Takes ownership of descriptor `fd`, passed by the supervisor, and marks
/// it close-on-exec.
#[allow(unsafe_code)]
fn claim(fd: RawFd) -> Result<OwnedFd, String> {
    // Open at all? (Without /proc, trust the supervisor.)
    let proc_fd = std::path::Path::new("/proc/self/fd");
    if proc_fd.is_dir() && std::fs::symlink_metadata(proc_fd.join(fd.to_string())).is_err() {
        return Err("not open".to_owned());
    }
    // SAFETY: `$LISTEN_PID` named this process, so the supervisor passed
    // descriptors 3 to 3 + $LISTEN_FDS - 1 open across exec, and the check
    // above found this one open; nothing in the process owns them
    // (descriptors it opens get other numbers while these are open, and
    // nothing closes them), and `TAKEN` makes this the only place that
    // takes them, once.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("cannot set close-on-exec ({e})"))?;
    Ok(owned)
}

/// Checks that `owned` is a listening TCP socket and learns its address.
fn check(
    fd: RawFd,
    name: String,
    owned: OwnedFd,
    from_systemd: bool,
    handed_over: bool,
) -> Result<Socket, ActivationError> {
    let socket = socket2::Socket::from(owned);
    let not = |problem: String| ActivationError::NotListening {
        fd,
        name: name.clone(),
        problem,
    };
    let kind = socket
        .r#type()
        .map_err(|e| not(format!("not a socket ({e})")))?;
    if kind != socket2::Type::STREAM {
        return Err(not("not a stream socket".to_owned()));
    }
    let local = socket
        .local_addr()
        .map_err(|e| not(format!("no address ({e})")))?
        .as_socket()
        .ok_or_else(|| not("not an IP socket (a Unix socket?)".to_owned()))?;
    if !socket.is_listener().map_err(|e| not(e.to_string()))? {
        return Err(not(format!("bound to {local} but not listening")));
    }
    debug_assert_eq!(socket.as_raw_fd(), fd);
    Ok(Socket {
        fd,
        name,
        local,
        socket,
        from_systemd,
        handed_over,
    })
}

/// The [matching rules](self) for one socket.
fn target_of(
    name: &str,
    local: SocketAddr,
    listeners: &[SocketAddr],
    admin: Option<SocketAddr>,
) -> Option<Target> {
    if let Some(l) = listeners.iter().find(|l| l.to_string() == name) {
        return Some(Target::Listener(*l));
    }
    if name == "admin" && admin.is_some() {
        return Some(Target::Admin);
    }
    if let Ok(port) = name.parse::<u16>() {
        let mut on_port = listeners.iter().filter(|l| l.port() == port);
        if let (Some(l), None) = (on_port.next(), on_port.next()) {
            return Some(Target::Listener(*l));
        }
    }
    let same = |a: &SocketAddr| a.ip() == local.ip() && a.port() == local.port();
    if let Some(l) = listeners.iter().find(|l| same(l)) {
        return Some(Target::Listener(*l));
    }
    admin.filter(same).map(|_| Target::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn variables_for_this_process_are_read_others_ignored() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(passed(None, Some("2"), None, 7).unwrap().is_none());
        assert!(passed(Some("8"), Some("2"), None, 7).unwrap().is_none());
        assert_eq!(
            passed(Some("7"), Some("2"), None, 7).unwrap(),
            Some(names(&["unknown", "unknown"]))
        );
        assert_eq!(
            passed(Some("7"), Some("2"), Some("sniroute.socket:admin"), 7).unwrap(),
            Some(names(&["sniroute.socket", "admin"]))
        );
        assert_eq!(
            passed(Some("7"), Some("0"), Some(""), 7).unwrap(),
            Some(vec![])
        );
        assert_eq!(passed(Some("7"), None, None, 7).unwrap(), Some(vec![]));
        for (pid, fds, fdnames, want) in [
            ("x", "1", None, "LISTEN_PID=\"x\": not a process id"),
            ("7", "one", None, "LISTEN_FDS=\"one\": not a number"),
            ("7", "-1", None, "LISTEN_FDS=\"-1\": not a number"),
            ("7", "5000", None, "LISTEN_FDS=\"5000\": more than 1024"),
            (
                "7",
                "2",
                Some("a"),
                "LISTEN_FDS=2 but LISTEN_FDNAMES has 1 names",
            ),
            (
                "7",
                "1",
                Some("a:b"),
                "LISTEN_FDS=1 but LISTEN_FDNAMES has 2 names",
            ),
        ] {
            let e = passed(Some(pid), Some(fds), fdnames, 7)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn sockets_match_by_name_then_address() {
        let listeners = [
            addr("0.0.0.0:6443"),
            addr("[::]:6443"),
            addr("127.0.0.1:7443"),
        ];
        let admin = Some(addr("127.0.0.1:9190"));
        let t = |name: &str, local: &str| target_of(name, addr(local), &listeners, admin);
        // By the address as written (the upgrade handover), whatever the
        // bound address.
        assert_eq!(
            t("[::]:6443", "[::]:40000"),
            Some(Target::Listener(addr("[::]:6443")))
        );
        // By name: `admin`, whatever the address.
        assert_eq!(t("admin", "10.0.0.1:1234"), Some(Target::Admin));
        // By port: only when one listener has it.
        assert_eq!(
            t("7443", "10.0.0.1:1"),
            Some(Target::Listener(addr("127.0.0.1:7443")))
        );
        assert_eq!(t("6443", "10.0.0.1:6443"), None, "two listeners on 6443");
        // By address.
        assert_eq!(
            t("sniroute.socket", "[::]:6443"),
            Some(Target::Listener(addr("[::]:6443")))
        );
        assert_eq!(
            t("6443", "0.0.0.0:6443"),
            Some(Target::Listener(addr("0.0.0.0:6443")))
        );
        assert_eq!(t("unknown", "127.0.0.1:9190"), Some(Target::Admin));
        assert_eq!(t("unknown", "127.0.0.1:6443"), None);
        assert_eq!(t("unknown", "127.0.0.2:7443"), None);
        // `admin` without an admin endpoint falls through to the address.
        assert_eq!(
            target_of("admin", addr("127.0.0.1:9190"), &listeners, None),
            None
        );
    }

    fn listening(a: &str) -> Socket {
        let l = std::net::TcpListener::bind(a).unwrap();
        let local = l.local_addr().unwrap();
        let socket = socket2::Socket::from(OwnedFd::from(l));
        Socket {
            fd: socket.as_raw_fd(),
            name: "unknown".to_owned(),
            local,
            socket,
            from_systemd: true,
            handed_over: false,
        }
    }

    #[test]
    fn every_socket_needs_exactly_one_listener() {
        let a = listening("127.0.0.1:0");
        let b = listening("127.0.0.1:0");
        let (la, lb) = (a.local, b.local);
        let mut admin_socket = listening("127.0.0.1:0");
        admin_socket.name = "admin".to_owned();
        let got = Inherited {
            sockets: vec![a, admin_socket],
            ready_pipe: None,
        }
        .assign(&[la, lb], Some(addr("127.0.0.1:0")))
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&Target::Listener(la)][0].local, la);
        assert!(got.contains_key(&Target::Admin));

        let e = Inherited {
            sockets: vec![b],
            ready_pipe: None,
        }
        .assign(&[la], None)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("inherited fd ")
                && e.contains(&lb.to_string())
                && e.contains(&la.to_string()),
            "{e}"
        );

        let mut c = listening("127.0.0.1:0");
        let mut d = listening("127.0.0.1:0");
        c.name = "admin".to_owned();
        d.name = "admin".to_owned();
        let e = Inherited {
            sockets: vec![c, d],
            ready_pipe: None,
        }
        .assign(&[], Some(addr("127.0.0.1:9190")))
        .unwrap_err()
        .to_string();
        assert!(e.contains("both match the admin endpoint"), "{e}");

        // A binary upgrade hands over every socket of a listener's group:
        // all go to it. Not so for systemd's, or the admin endpoint.
        let handed = |name: String, systemd: bool| {
            let mut s = listening("127.0.0.1:0");
            s.name = name;
            s.from_systemd = systemd;
            s.handed_over = true;
            s
        };
        let l = addr("127.0.0.1:6443");
        let got = Inherited {
            sockets: vec![handed(l.to_string(), false), handed(l.to_string(), false)],
            ready_pipe: None,
        }
        .assign(&[l], None)
        .unwrap();
        assert_eq!(got[&Target::Listener(l)].len(), 2);
        let e = Inherited {
            sockets: vec![handed(l.to_string(), true), handed(l.to_string(), true)],
            ready_pipe: None,
        }
        .assign(&[l], None)
        .unwrap_err()
        .to_string();
        assert!(e.contains("both match listener 127.0.0.1:6443"), "{e}");
        let e = Inherited {
            sockets: vec![handed("admin".into(), false), handed("admin".into(), false)],
            ready_pipe: None,
        }
        .assign(&[], Some(addr("127.0.0.1:9190")))
        .unwrap_err()
        .to_string();
        assert!(e.contains("both match the admin endpoint"), "{e}");
    }

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        let bound =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bound.bind(&addr("127.0.0.1:0").into()).unwrap();
        let fd = bound.as_raw_fd();
        let e = check(fd, "x".to_owned(), bound.into(), true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("but not listening"), "{e}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = udp.as_raw_fd();
        let e = check(fd, "x".to_owned(), udp.into(), true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a stream socket"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let fd = unix.as_raw_fd();
        let e = check(fd, "x".to_owned(), unix.into(), true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an IP socket"), "{e}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let e = check(fd, "x".to_owned(), file.into(), true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a socket"), "{e}");
    }
}
