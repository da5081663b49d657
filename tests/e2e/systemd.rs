//! sniroute under systemd, with the test in systemd's place: it owns the
//! notify socket (`$NOTIFY_SOCKET`, a Unix datagram socket in the test's
//! temporary directory, read by the test) and passes the listening sockets
//! (socket activation: bound and listening in the test, handed over as
//! descriptors 3 and 4 with `$LISTEN_FDS`, `$LISTEN_FDNAMES` and the
//! child's own `$LISTEN_PID`).
//!
//! The descriptors travel as the wrapper shell's standard input and
//! output, which it moves to 3 and 4 before it `exec`s sniroute with
//! `LISTEN_PID=$$` (its own PID, which `exec` keeps): what systemd does
//! between fork and exec, without `unsafe` in the tests.
//!
//! [`FakeMarathon`] stands for Marathon's REST API v2
//! (`GET /v2/apps?embed=...` and the `/v2/events` stream), answering 503
//! (no leader) until the test lets it answer.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{reach, Router};
use clienthello::synth::HelloBuilder;

/// The notify socket, as systemd would own it.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message so far, in arrival order.
    seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Reads one message, waiting at most `timeout`.
    fn read(&mut self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
                self.seen.push(msg.clone());
                Some(msg)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Waits for a message with the line `line`, and returns the messages
    /// that came before it (since this was last called) and itself.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> Vec<String> {
        let start = self.seen.len();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {line} within {timeout:?}; seen: {:?}",
                self.seen
            );
            if let Some(msg) = self.read(left) {
                if msg.lines().any(|l| l == line) {
                    return self.seen[start..].to_vec();
                }
            }
        }
    }
}

/// Whether any of `messages` has the line `line`.
fn has(messages: &[String], line: &str) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == line))
}

/// The messages other than watchdog pings, each as its first line.
fn events(messages: &[String]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m.as_str() != "WATCHDOG=1")
        .filter_map(|m| m.lines().next())
        .collect()
}

fn config(listener: &str, admin: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
listeners: ["{listener}"]
admin: "{admin}"
timeouts: {{client_hello: 5s, connect: 2s, drain: 5s}}
routes:
  - name: a
    server_names: [a.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    )
}

/// Starts sniroute with `sockets` as descriptors 3 and 4 (at most two),
/// named `names` when given: `sh` gets them as its standard input and
/// output, moves them to 3 and 4 and `exec`s sniroute with `LISTEN_PID=$$`
/// (its own PID, which `exec` keeps).
fn spawn_activated(yaml: &str, sockets: Vec<OwnedFd>, names: Option<&str>) -> Router {
    assert!((1..=2).contains(&sockets.len()));
    let count = sockets.len();
    let moves = if count == 2 {
        "exec 3<&0 4>&1 </dev/null >/dev/null"
    } else {
        "exec 3<&0 </dev/null"
    };
    let script = format!("{moves}; LISTEN_PID=$$ LISTEN_FDS={count} exec \"$@\"");
    let mut sockets = sockets.into_iter();
    let first = sockets.next().unwrap();
    let second = sockets.next();
    let names = names.map(str::to_owned);
    Router::spawn_wrapped(
        yaml,
        |_| {},
        move |cmd| {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(script)
                .arg("sh")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(v) => sh.env(key, v),
                    None => sh.env_remove(key),
                };
            }
            if let Some(names) = names {
                sh.env("LISTEN_FDNAMES", names);
            }
            sh.stdin(Stdio::from(first)).stderr(Stdio::piped());
            if let Some(second) = second {
                sh.stdout(Stdio::from(second));
            } else {
                sh.stdout(Stdio::null());
            }
            sh
        },
    )
}

/// What `/proc/<pid>/fd/<fd>` points at (`socket:[inode]` for a socket).
fn fd_target(pid: u32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("fd {fd} of {pid}: {e}"))
}

/// Whether descriptor `fd` of `pid` is close-on-exec (`O_CLOEXEC` in the
/// octal `flags:` of `/proc/<pid>/fdinfo/<fd>`).
fn cloexec(pid: u32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & 0o2_000_000 != 0
}

/// Sends a hello for `a.test` on a connected socket and reads the
/// upstream's greeting line.
fn greeting(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn ready_reloading_stopping_and_watchdog_pings_are_notified() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let mut notify = Notify::new();
    let yaml = config("127.0.0.1:0", "127.0.0.1:0", up.addr);
    let path = notify.path.clone();
    let mut router = Router::start_with(&yaml, |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000");
    });

    let before = notify.wait_for("READY=1", Duration::from_secs(10));
    assert_eq!(events(&before), ["READY=1"], "{before:?}");
    // Ready means serving.
    assert_eq!(
        reach(router.addr(), &HelloBuilder::new("a.test").build()).unwrap(),
        "a"
    );
    assert_eq!(router.admin_get("/readyz").0, 200);

    // Pings every 100 ms: a handful within a few seconds.
    for _ in 0..5 {
        notify.wait_for("WATCHDOG=1", Duration::from_secs(3));
    }

    // A reload: RELOADING=1 (with the monotonic time), then READY=1.
    router.reload(&yaml.replace("health_check: false", "health_check: false\n  - name: b\n    server_names: [b.test]\n    upstreams: [\"127.0.0.1:9\"]"));
    let around = notify.wait_for("READY=1", Duration::from_secs(10));
    assert_eq!(events(&around), ["RELOADING=1", "READY=1"], "{around:?}");
    let reloading = around
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .unwrap();
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
        "{reloading:?}"
    );
    assert!(
        around
            .last()
            .unwrap()
            .contains("STATUS=serving: config generation 2, 2 routes"),
        "{around:?}"
    );

    // A failed reload is a reload too: the router is ready again at once,
    // with the config it had.
    let failed = router.reload("listeners: [");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("config reload failed"),
        "{failed}"
    );
    let around = notify.wait_for("READY=1", Duration::from_secs(10));
    assert_eq!(events(&around), ["RELOADING=1", "READY=1"], "{around:?}");
    assert!(
        around.last().unwrap().contains("generation 2"),
        "{around:?}"
    );

    // SIGTERM: STOPPING=1 as the drain starts, then a clean exit.
    router.signal("TERM");
    let stopping = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert_eq!(events(&stopping), ["STOPPING=1"], "{stopping:?}");
    assert_eq!(router.wait_exit(Duration::from_secs(15)), Some(0));
    // Nothing after STOPPING=1 but watchdog pings sent before the exit.
    while let Some(m) = notify.read(Duration::from_millis(1)) {
        assert_eq!(m, "WATCHDOG=1");
    }
}

#[test]
fn an_upgrade_tells_systemd_the_new_main_pid_and_the_watchdog_follows() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let mut notify = Notify::new();
    let path = notify.path.clone();
    // WATCHDOG_PID names the first process, as systemd sets it: a shell
    // puts its own PID there and execs sniroute.
    let mut router = Router::spawn_wrapped(
        &config("127.0.0.1:0", "127.0.0.1:0", up.addr),
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "200000");
        },
        |cmd| {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("WATCHDOG_PID=$$ exec \"$@\"")
                .arg("sh")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(v) => sh.env(key, v),
                    None => sh.env_remove(key),
                };
            }
            sh.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            sh
        },
    );
    router.wait_ready();
    notify.wait_for("READY=1", Duration::from_secs(10));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    router.signal("USR2");
    let ready = router.wait_log(Duration::from_secs(60), |l| {
        l["message"] == "upgrade: the new process is ready; this one stops accepting and drains"
    });
    let new_pid = ready["new_pid"].as_u64().unwrap() as u32;
    // Not the test's child: stopped by PID, also when an assertion fails.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.0.to_string())
                .status();
        }
    }
    let stop = Stop(new_pid);
    let msgs = notify.wait_for(&format!("MAINPID={new_pid}"), Duration::from_secs(10));
    let main = msgs.last().unwrap();
    assert!(main.lines().any(|l| l == "READY=1"), "{main:?}");
    // The old process drains and exits without STOPPING=1 (systemd would
    // take the service for stopping)...
    assert_eq!(router.wait_exit(Duration::from_secs(30)), Some(0));
    while notify.read(Duration::from_millis(1)).is_some() {}
    assert!(!has(&notify.seen, "STOPPING=1"), "{:?}", notify.seen);
    // ...and the new one, given no WATCHDOG_PID, pings the watchdog (the
    // old one cannot: it is gone).
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    }
    drop(stop);
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
}

#[test]
fn ready_waits_for_the_first_required_discovery_sync() {
    let _turn = crate::common::light();
    let marathon = FakeMarathon::start();
    let mut notify = Notify::new();
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 2s, connect: 2s}}
discovery:
  marathon:
    urls: ["http://{}"]
    required: true
routes:
  - name: web
    server_names: [web.test]
    marathon_app: {{id: /prod/web, port_name: https}}
    health_check: false
"#,
        marathon.addr
    );
    let path = notify.path.clone();
    // A watchdog for another process (systemd's WATCHDOG_PID names the
    // main process; a child must not ping): no pings from this one.
    let router = Router::start_with(&yaml, |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000")
            .env("WATCHDOG_PID", "1");
    });
    // Listeners are bound, but discovery has not synced: systemd is told
    // what it waits for, not READY=1.
    let waiting = notify.wait_for(
        "STATUS=waiting for the first discovery sync",
        Duration::from_secs(10),
    );
    assert!(!has(&waiting, "READY=1"), "{waiting:?}");
    // Marathon was asked and refused (503) while READY=1 is still owed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while marathon.refused.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "Marathon never asked");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(router.admin_get("/readyz").0, 503);
    while let Some(m) = notify.read(Duration::from_millis(1)) {
        assert_ne!(m.lines().next(), Some("READY=1"), "ready before any sync");
    }

    marathon.leader.store(true, Ordering::SeqCst);
    let until_ready = notify.wait_for("READY=1", Duration::from_secs(30));
    // READY=1 came after Marathon answered, and /readyz agrees at once.
    assert!(marathon.answered.load(Ordering::SeqCst) > 0);
    assert_eq!(router.admin_get("/readyz").0, 200);
    assert!(
        !until_ready.iter().any(|m| m == "WATCHDOG=1") && !has(&notify.seen, "WATCHDOG=1"),
        "watchdog pings for another process's WATCHDOG_PID: {:?}",
        notify.seen
    );
    assert!(!router
        .logs()
        .iter()
        .any(|l| l["message"] == "systemd watchdog: pinging"));
}

#[test]
fn inherited_sockets_are_served_without_a_bind_and_survive_reloads() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    // The test binds both sockets, as a .socket unit would, and keeps a
    // copy of each: sniroute could not bind these addresses itself.
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tls_copy, admin_copy) = (tls.try_clone().unwrap(), admin.try_clone().unwrap());
    let me = std::process::id();

    // A client connects and sends its hello before sniroute even runs: it
    // waits in the socket's accept queue.
    let mut queued = TcpStream::connect(tls_addr).unwrap();
    queued
        .write_all(&HelloBuilder::new("a.test").build())
        .unwrap();

    // The TLS socket matches by its address, the admin socket by its name
    // (the config has port 0 there).
    let yaml = config(&tls_addr.to_string(), "127.0.0.1:0", up.addr);
    let mut router = spawn_activated(
        &yaml,
        vec![tls.into(), admin.into()],
        Some("sniroute.socket:admin"),
    );
    router.wait_ready();
    assert_eq!(router.listener(&tls_addr.to_string()), tls_addr);
    assert_eq!(router.admin, Some(admin_addr));
    assert_eq!(greeting(queued), "a", "the queued connection is served");
    assert_eq!(
        reach(tls_addr, &HelloBuilder::new("a.test").build()).unwrap(),
        "a"
    );
    assert_eq!(router.admin_get("/readyz").0, 200);

    // Its descriptors 3 and 4 are the very sockets the test bound, now
    // close-on-exec.
    let pid = router.pid();
    assert_eq!(fd_target(pid, 3), fd_target(me, tls_copy.as_raw_fd()));
    assert_eq!(fd_target(pid, 4), fd_target(me, admin_copy.as_raw_fd()));
    assert!(fd_target(pid, 3).starts_with("socket:"));
    assert!(
        cloexec(pid, 3) && cloexec(pid, 4),
        "inherited fds must be CLOEXEC"
    );
    let listening = router.wait_log(Duration::from_secs(1), |l| {
        l["message"] == "listening" && l["listener"] == tls_addr.to_string()
    });
    assert!(
        listening["inherited"]
            .as_str()
            .is_some_and(|s| s.starts_with("fd 3 (name \"sniroute.socket\"")),
        "{listening}"
    );
    // A reload that drops the listener stops accepting on it but keeps the
    // socket (systemd holds it too: it could not be bound again).
    let other = config("127.0.0.1:0", "127.0.0.1:0", up.addr);
    let done = router.reload(&other);
    assert_eq!(done["message"], "config reloaded", "{done}");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopped accepting (removed by reload)"))
    });
    assert_eq!(fd_target(pid, 3), fd_target(me, tls_copy.as_raw_fd()));
    // A client that connects meanwhile waits in the queue...
    let mut waiting = TcpStream::connect(tls_addr).unwrap();
    waiting
        .write_all(&HelloBuilder::new("a.test").build())
        .unwrap();
    // ...and is served once a reload adds the address back.
    let done = router.reload(&yaml);
    assert_eq!(done["message"], "config reloaded", "{done}");
    assert_eq!(greeting(waiting), "a");
    assert_eq!(
        reach(tls_addr, &HelloBuilder::new("a.test").build()).unwrap(),
        "a"
    );
    assert_eq!(
        router
            .metrics()
            .lines()
            .find(|l| l.starts_with("sniroute_config_reloads_total{result=\"failure\"}")),
        Some("sniroute_config_reloads_total{result=\"failure\"} 0")
    );

    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(15)), Some(0));
    // The test's copies still listen: sniroute closed only its own.
    drop((tls_copy, admin_copy));
}

#[test]
fn an_inherited_socket_no_listener_matches_stops_the_start() {
    let _turn = crate::common::light();
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    let stray = TcpListener::bind("127.0.0.1:0").unwrap();
    let (tls_addr, stray_addr) = (tls.local_addr().unwrap(), stray.local_addr().unwrap());
    let yaml = config(
        &tls_addr.to_string(),
        "127.0.0.1:0",
        "127.0.0.1:9".parse().unwrap(),
    );
    let mut router = spawn_activated(&yaml, vec![tls.into(), stray.into()], None);
    assert_eq!(router.wait_exit(Duration::from_secs(20)), Some(1));
    let error = router.wait_log(Duration::from_secs(5), |l| {
        l["level"] == "ERROR"
            || l["raw"]
                .as_str()
                .is_some_and(|r| r.starts_with("sniroute:"))
    });
    let text = error["message"].as_str().or(error["raw"].as_str()).unwrap();
    assert!(
        text.contains(&format!(
            "inherited fd 4 (name \"unknown\", bound to {stray_addr}) matches no configured listener"
        )),
        "{text}"
    );
    assert!(text.contains(&tls_addr.to_string()), "{text}");
}

#[test]
fn process_start_time_seconds_is_the_start_of_the_process() {
    let _turn = crate::common::light();
    let before = unix_now();
    let router = Router::start(&config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1:9".parse().unwrap(),
    ));
    let after = unix_now();
    let start = crate::common::metric(&router.metrics(), "process_start_time_seconds", &[])
        .expect("process_start_time_seconds exported");
    // Whole seconds: the process started within [before, after].
    assert!(
        start >= (before - 1) as f64 && start <= after as f64,
        "{start} not in [{before}, {after}]"
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Marathon (REST API v2) with no leader until `leader` is set: every
/// request gets a 503 (counted in `refused`); then `/v2/apps` answers the
/// app `/prod/web` without tasks, and `/v2/events` a `text/event-stream`
/// that attaches and stays open.
struct FakeMarathon {
    addr: SocketAddr,
    leader: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl FakeMarathon {
    fn start() -> FakeMarathon {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let leader = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (l, r, a) = (leader.clone(), refused.clone(), answered.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let target = request.split(' ').nth(1).unwrap_or("/");
                if !l.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"message":"Could not determine the current leader"}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                } else if target.starts_with("/v2/apps") {
                    let body = serde_json::json!({"apps": [{
                        "id": "/prod/web",
                        "instances": 0,
                        "portDefinitions": [{"port": 10000, "protocol": "tcp", "name": "https"}],
                        "tasks": []
                    }]})
                    .to_string();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    a.fetch_add(1, Ordering::SeqCst);
                } else if target.starts_with("/v2/events") {
                    let attached = "event: event_stream_attached\ndata: {\"remoteAddress\":\"127.0.0.1\",\"eventType\":\"event_stream_attached\",\"timestamp\":\"2024-05-01T12:00:00.000Z\"}\n\n";
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{attached}\r\n",
                        attached.len()
                    );
                    streams.lock().unwrap().push(conn);
                } else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            }
        });
        FakeMarathon {
            addr,
            leader,
            refused,
            answered,
        }
    }
}

/// A binary upgrade of a socket-activated sniroute: the new process gets
/// the very sockets systemd passed (a connection queued during the
/// hand-over is served), still knows they are systemd's (a reload that
/// removes the listener parks it instead of closing it), and owns the
/// admin socket.
#[test]
fn an_upgrade_under_socket_activation_hands_over_the_inherited_sockets() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let tls = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let (tls_addr, admin_addr) = (tls.local_addr().unwrap(), admin.local_addr().unwrap());
    let (tls_copy, admin_copy) = (tls.try_clone().unwrap(), admin.try_clone().unwrap());
    let me = std::process::id();
    let yaml = config(&tls_addr.to_string(), "127.0.0.1:0", up.addr);
    let mut router = spawn_activated(
        &yaml,
        vec![tls.into(), admin.into()],
        Some("sniroute.socket:admin"),
    );
    router.wait_ready();
    // Not the test's child: stopped by PID, also when an assertion fails.
    let started = crate::common::Started::default();

    router.signal("USR2");
    let spawned = router.wait_log(Duration::from_secs(30), |l| {
        l["message"] == "upgrade: new process started"
    });
    let new_pid = spawned["new_pid"].as_u64().unwrap() as u32;
    started.0.lock().unwrap().push(new_pid);
    // Queued while the processes hand over: served by one of them.
    let mut queued = TcpStream::connect(tls_addr).unwrap();
    queued
        .write_all(&HelloBuilder::new("a.test").build())
        .unwrap();
    router.wait_log(Duration::from_secs(60), |l| {
        l["message"] == "upgrade: the new process is ready; this one stops accepting and drains"
    });
    assert_eq!(greeting(queued), "a");
    assert_eq!(router.wait_exit(Duration::from_secs(30)), Some(0));

    // The new process holds the test's sockets, close-on-exec.
    let fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{new_pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let fd: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            Some((fd, fd_target(new_pid, fd)))
        })
        .collect();
    for copy in [tls_copy.as_raw_fd(), admin_copy.as_raw_fd()] {
        let want = fd_target(me, copy);
        let (fd, _) = fds
            .iter()
            .find(|(_, target)| *target == want)
            .unwrap_or_else(|| panic!("{want} not among the new process's {fds:?}"));
        assert!(cloexec(new_pid, *fd), "fd {fd} of the new process");
    }
    assert_eq!(
        reach(tls_addr, &HelloBuilder::new("a.test").build()).unwrap(),
        "a"
    );
    let (_, body) = crate::common::http_get(admin_addr, "/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pid"], new_pid);

    // Still systemd's socket in the new process: removed by a reload, it
    // is parked, not closed.
    std::fs::write(
        &router.config_path,
        config("127.0.0.1:0", "127.0.0.1:0", up.addr),
    )
    .unwrap();
    crate::common::kill("HUP", new_pid);
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"].as_str().is_some_and(|m| {
            m.starts_with("stopped accepting (removed by reload); the socket came from systemd")
        })
    });
    drop(started);
    drop((tls_copy, admin_copy));
}
