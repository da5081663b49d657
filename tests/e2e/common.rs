//! Shared harness for the end-to-end tests: starts the real `sniroute`
//! binary with a config on ephemeral loopback ports and talks to it over
//! real sockets.
//!
//! Listeners and the admin endpoint are configured on port 0; the harness
//! learns the real ports from the router's JSON start-up log lines, so tests
//! can run in parallel without racing for free ports.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Light tests share the machine; heavy ones (thousands of tunnels, timing
/// and descriptor-count assertions) run alone. Every test takes one of the
/// two guards first thing.
static TURNS: RwLock<()> = RwLock::new(());

/// A test's turn, held for the whole test. Async tests hold it across
/// awaits on purpose: each test runs on its own runtime, so no task of the
/// same runtime can be waiting for it (the deadlock clippy's
/// `await_holding_lock` guards against cannot happen).
#[allow(dead_code)] // held for its Drop only
pub(crate) enum Turn {
    Light(RwLockReadGuard<'static, ()>),
    Heavy(RwLockWriteGuard<'static, ()>),
}

/// A turn for a light test: runs beside other light tests.
pub(crate) fn light() -> Turn {
    Turn::Light(TURNS.read().unwrap_or_else(PoisonError::into_inner))
}

/// A turn for a heavy test: waits until no other test runs, and keeps the
/// process (its 20,000 descriptors, both cores) to itself.
pub(crate) fn heavy() -> Turn {
    Turn::Heavy(TURNS.write().unwrap_or_else(PoisonError::into_inner))
}

/// How long the router may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running router process, stopped (by PID) when dropped.
pub(crate) struct Router {
    child: Option<Child>,
    /// Configured listener address → bound address.
    pub(crate) listeners: HashMap<String, SocketAddr>,
    /// Bound admin address, when configured.
    pub(crate) admin: Option<SocketAddr>,
    logs: Arc<(Mutex<Vec<serde_json::Value>>, Condvar)>,
    /// The config file (rewrite it and call `reload`).
    pub(crate) config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The path of the binary under test.
pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sniroute")
}

impl Router {
    /// Starts `sniroute run` with `yaml` and waits until it is ready.
    pub(crate) fn start(yaml: &str) -> Router {
        Self::start_with(yaml, |_| {})
    }

    /// Like [`Router::start`], letting the caller adjust the command (env,
    /// resource limits through `prlimit`, ...).
    pub(crate) fn start_with(yaml: &str, adjust: impl FnOnce(&mut Command)) -> Router {
        let mut router = Self::spawn(yaml, adjust);
        router.wait_ready();
        router
    }

    /// Starts `sniroute run` with `yaml` without waiting for it; see
    /// [`Router::wait_ready`].
    pub(crate) fn spawn(yaml: &str, adjust: impl FnOnce(&mut Command)) -> Router {
        Self::spawn_wrapped(yaml, adjust, |cmd| cmd)
    }

    /// Like [`Router::spawn`], letting `wrap` replace the finished command
    /// by one that runs it (a wrapper that sets up descriptors first, say).
    /// The replacement must keep standard error piped: the log is read
    /// from there.
    pub(crate) fn spawn_wrapped(
        yaml: &str,
        adjust: impl FnOnce(&mut Command),
        wrap: impl FnOnce(Command) -> Command,
    ) -> Router {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("sniroute.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args([
            "--log-format",
            "json",
            "--log-level",
            "info",
            "run",
            "--config",
        ])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
        adjust(&mut cmd);
        let mut child = wrap(cmd).spawn().expect("start sniroute");
        let stderr = child.stderr.take().unwrap();
        let logs: Arc<(Mutex<Vec<serde_json::Value>>, Condvar)> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.0.lock().unwrap().push(value);
                sink.1.notify_all();
            }
        });
        Router {
            child: Some(child),
            listeners: HashMap::new(),
            admin: None,
            logs,
            config_path,
            _dir: dir,
        }
    }

    /// Waits until the router is ready and learns its bound addresses.
    pub(crate) fn wait_ready(&mut self) {
        let router = self;
        router.wait_log(START_TIMEOUT, |l| l["message"] == "sniroute is ready");
        for l in router.logs() {
            if l["message"] == "listening" {
                let configured = l["listener"].as_str().unwrap().to_owned();
                let local = l["local"].as_str().unwrap().parse().unwrap();
                router.listeners.insert(configured, local);
            }
            if l["message"] == "admin endpoint listening" {
                router.admin = Some(l["local"].as_str().unwrap().parse().unwrap());
            }
        }
    }

    /// The bound address of the only (or first configured) listener.
    pub(crate) fn addr(&self) -> SocketAddr {
        assert_eq!(self.listeners.len(), 1, "several listeners: use listener()");
        *self.listeners.values().next().unwrap()
    }

    /// The bound address of a configured listener.
    pub(crate) fn listener(&self, configured: &str) -> SocketAddr {
        self.listeners[configured]
    }

    /// The router's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Every JSON log line so far.
    pub(crate) fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.0.lock().unwrap().clone()
    }

    /// Access log lines so far.
    pub(crate) fn access_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["target"] == "sniroute::access")
            .collect()
    }

    /// Waits until a log line satisfies `pred`; panics with the log on timeout.
    pub(crate) fn wait_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.logs;
        let mut logs = lock.lock().unwrap();
        loop {
            if let Some(l) = logs.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "log line not seen within {timeout:?}; log so far:\n{}",
                    dump(&logs)
                );
            }
            logs = cvar.wait_timeout(logs, deadline - now).unwrap().0;
        }
    }

    /// Waits for `n` access log lines in total and returns them.
    pub(crate) fn wait_access_logs(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        self.wait_access_logs_where(n, timeout, |_| true)
    }

    /// Waits for `n` access log lines that satisfy `pred` and returns them.
    /// Lines come through the router's stderr, read by another thread, so a
    /// line can trail the counter that counts its connection.
    pub(crate) fn wait_access_logs_where(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs: Vec<_> = self.access_logs().into_iter().filter(|l| pred(l)).collect();
            if logs.len() >= n {
                return logs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} access log lines, got {}:\n{}",
                    logs.len(),
                    dump(&self.logs())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (by name, e.g. "HUP", "TERM") to the router.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Rewrites the config file and sends SIGHUP; waits for the reload's
    /// log line and returns it.
    pub(crate) fn reload(&self, yaml: &str) -> serde_json::Value {
        let before = self.logs().len();
        std::fs::write(&self.config_path, yaml).unwrap();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if let Some(l) = logs[before..].iter().find(|l| {
                l["message"] == "config reloaded"
                    || l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("config reload failed"))
            }) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no reload log:\n{}", dump(&logs));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the admin endpoint: (status, body).
    pub(crate) fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin.expect("admin endpoint configured"), path)
    }

    /// The `/metrics` text.
    pub(crate) fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200);
        body
    }

    /// Waits for the process to exit and returns its exit code.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!("router did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the router process.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory of the router process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn dump(logs: &[serde_json::Value]) -> String {
    logs.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A blocking HTTP/1.1 GET on loopback: (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    parse_http_response(&resp)
}

/// Status and body of an HTTP/1.1 response (status 0 when there is none).
pub(crate) fn parse_http_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus sample with exactly these labels (in any
/// order), or `None` when the series is absent.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut found: Vec<(String, String)> = label_text
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once("=\"")?;
                    Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect();
            let mut want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            found.sort();
            want.sort();
            (found == want).then(|| value.parse().ok()).flatten()
        })
}

/// `sniroute_config_reloads_total{result}` in a `/metrics` text (0 when
/// absent).
pub(crate) fn reloads(m: &str, result: &str) -> f64 {
    metric(m, "sniroute_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
}

/// A raw TCP "upstream" on loopback that records what it receives and
/// answers with a fixed behaviour; for tests that need no TLS server.
/// `sniroute_connections_total` for the `127.0.0.1:0` listener the tests
/// configure, or `None` when the series is absent.
pub(crate) fn connections_total(text: &str, route: &str, result: &str) -> Option<f64> {
    metric(
        text,
        "sniroute_connections_total",
        &[
            ("listener", "127.0.0.1:0"),
            ("route", route),
            ("result", result),
        ],
    )
}

/// The one plain-TCP upstream double of the suite: it stands for an API
/// server behind the router, answers what the tests need to tell upstreams
/// apart, and records what it received. It runs on its own thread with its
/// own runtime, so sync and async tests use it alike.
pub(crate) mod raw {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the upstream does with each connection.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Behaviour {
        /// Echo every byte back until EOF, then close.
        Echo,
        /// Reply `name\n` after the first read (the forwarded ClientHello),
        /// then echo.
        Greet,
    }

    /// A running upstream; [`Upstream::stop`] closes its listening socket
    /// (open connections go on).
    pub(crate) struct Upstream {
        pub(crate) addr: SocketAddr,
        /// First bytes of each connection that sent any (up to 64 KiB).
        pub(crate) received: Arc<Mutex<Vec<Vec<u8>>>>,
        accepted: Arc<AtomicUsize>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Upstream {
        /// Starts one on 127.0.0.1 with an ephemeral port.
        pub(crate) fn start(name: &'static str, behaviour: Behaviour) -> Upstream {
            Self::bind(name, behaviour, "127.0.0.1:0".parse().unwrap()).unwrap()
        }

        /// Starts one on `addr` (to come back on the port of one stopped).
        pub(crate) fn bind(
            name: &'static str,
            behaviour: Behaviour,
            addr: SocketAddr,
        ) -> io::Result<Upstream> {
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            let addr = std_listener.local_addr()?;
            let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
            let accepted = Arc::new(AtomicUsize::new(0));
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let (rec, count) = (received.clone(), accepted.clone());
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    let mut open = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((s, _)) = accepted else {
                                    // Out of descriptors, say: do not spin.
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                };
                                count.fetch_add(1, Ordering::Relaxed);
                                open.spawn(serve(s, name, behaviour, rec.clone()));
                            }
                            Some(_) = open.join_next(), if !open.is_empty() => {}
                        }
                    }
                    drop(listener);
                    // Open connections go on until their peers close; then
                    // the thread ends.
                    while open.join_next().await.is_some() {}
                });
            });
            Ok(Upstream {
                addr,
                received,
                accepted,
                stop: Some(stop),
                thread: Some(thread),
            })
        }

        /// Connections that sent something so far.
        pub(crate) fn connections(&self) -> usize {
            self.received.lock().unwrap().len()
        }

        /// Connections accepted so far.
        pub(crate) fn accepted(&self) -> usize {
            self.accepted.load(Ordering::Relaxed)
        }

        /// Closes the listening socket: new connections are refused.
        pub(crate) fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            // Wait until the listening socket is closed.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(self.addr).is_ok() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "upstream did not stop"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // The thread ends once its open connections do.
            drop(self.thread.take());
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    async fn serve(
        mut s: TcpStream,
        name: &str,
        behaviour: Behaviour,
        rec: Arc<Mutex<Vec<Vec<u8>>>>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut idx = None;
        let mut greeted = false;
        loop {
            let n = match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            {
                let mut r = rec.lock().unwrap();
                let i = *idx.get_or_insert_with(|| {
                    r.push(Vec::new());
                    r.len() - 1
                });
                let seen = &mut r[i];
                let room = (64 * 1024usize).saturating_sub(seen.len());
                seen.extend_from_slice(&buf[..n.min(room)]);
            }
            if matches!(behaviour, Behaviour::Greet) && !greeted {
                greeted = true;
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    break;
                }
                continue;
            }
            if s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = s.shutdown().await;
    }
}

/// Sends `hello` to the router and reads the first line the raw upstream
/// greets with (`Behaviour::Greet`): which upstream was reached.
pub(crate) fn reach(router: SocketAddr, hello: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&router, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(hello)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Sends `hello` and returns everything the router answers until it closes.
pub(crate) fn answer(router: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&router, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(hello).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

impl Router {
    /// Whether the router process is still running (not exited).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// Checksummed streams: every 8-byte word is its index xor a seed, so a
/// lost, duplicated or reordered byte shows as a wrong word.
pub(crate) mod pattern {
    use std::io;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes `total` bytes (a multiple of 8) where every 8-byte word is its
    /// index xor `seed`, then half-closes; writes `buf_size` bytes at a time.
    pub(crate) async fn send(
        mut w: impl AsyncWrite + Unpin,
        total: u64,
        seed: u64,
        buf_size: usize,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; buf_size];
        let mut word = 0u64;
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(buf.len() as u64) as usize;
            for chunk in buf[..n].chunks_exact_mut(8) {
                chunk.copy_from_slice(&(word ^ seed).to_le_bytes());
                word += 1;
            }
            w.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        w.shutdown().await
    }

    /// Reads to EOF and checks every word against pattern `seed`; returns the
    /// byte count, or where the stream went wrong.
    pub(crate) async fn check(
        mut r: impl AsyncRead + Unpin,
        seed: u64,
        buf_size: usize,
    ) -> Result<u64, String> {
        let mut buf = vec![0u8; buf_size];
        let mut pending: Vec<u8> = Vec::with_capacity(8);
        let mut word = 0u64;
        let mut total = 0u64;
        let check = |bytes: &[u8], word: &mut u64| {
            let got = u64::from_le_bytes(bytes.try_into().unwrap());
            if got != *word ^ seed {
                return Err(format!(
                    "word {word}: got {got:#x}, expected {:#x} (seed {seed:#x})",
                    *word ^ seed
                ));
            }
            *word += 1;
            Ok(())
        };
        loop {
            let n = r
                .read(&mut buf)
                .await
                .map_err(|e| format!("read error after {total} bytes: {e}"))?;
            if n == 0 {
                if !pending.is_empty() {
                    return Err(format!("stream ends inside word {word}"));
                }
                return Ok(total);
            }
            total += n as u64;
            let mut data = &buf[..n];
            if !pending.is_empty() {
                let take = (8 - pending.len()).min(data.len());
                pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                if pending.len() == 8 {
                    check(&pending, &mut word)?;
                    pending.clear();
                }
            }
            let mut words = data.chunks_exact(8);
            for w in &mut words {
                check(w, &mut word)?;
            }
            pending.extend_from_slice(words.remainder());
        }
    }
}

/// The soft and hard open-files limits of this process.
pub(crate) fn nofile_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut nums = line.split_whitespace().filter_map(|w| {
        w.parse::<u64>()
            .ok()
            .or((w == "unlimited").then_some(u64::MAX))
    });
    (nums.next().unwrap(), nums.next().unwrap())
}

/// Raises this process's soft open-files limit to the hard one (tests may
/// not use `unsafe`, so through `prlimit(1)` when installed) and returns
/// the soft limit in force.
pub(crate) fn raise_nofile_limit() -> u64 {
    let (soft, hard) = nofile_limits();
    if soft < hard {
        let _ = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    nofile_limits().0
}

/// Writes a 2048-bit RSA private key (PEM) to `path` with `openssl genpkey`,
/// as `dcos security org service-accounts keypair` makes one.
pub(crate) fn rsa_private_key(path: &Path) {
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (scripts/test installs it)")
        .success();
    assert!(ok, "openssl could not make an RSA key");
}

/// An RSA key pair in `dir`: the private key's path and the public key in
/// PEM.
pub(crate) fn rsa_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    rsa_private_key(&key);
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl (scripts/test installs it)")
        .success();
    assert!(ok, "openssl could not write the public key");
    (key, std::fs::read_to_string(public).unwrap())
}

// Processes a binary upgrade starts (`upgrade`, `workers`): followed by PID.

/// Processes the upgrades started, killed (SIGKILL, by PID) if the test
/// ends before they do.
#[derive(Default)]
pub(crate) struct Started(pub(crate) Mutex<Vec<u32>>);

impl Drop for Started {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            if running(*pid) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub(crate) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Open descriptors of `pid` (0 once it is gone or a zombie).
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub(crate) fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

pub(crate) fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while running(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connections in a loop through the router while processes hand over
/// (`upgrade`, `workers`): each sends a hello and must read `greeting`
/// from the upstream; anything else is kept as a failure.
pub(crate) struct ConnectionLoop {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ConnectionLoop {
    /// `threads` loops, each pausing `pause` after a connection.
    pub(crate) fn start(
        addr: SocketAddr,
        hello: &[u8],
        greeting: &'static str,
        threads: usize,
        pause: Duration,
    ) -> ConnectionLoop {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed, hello) =
                    (stop.clone(), ok.clone(), failed.clone(), hello.to_vec());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match reach(addr, &hello) {
                            Ok(g) if g == greeting => {
                                ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            other => failed.lock().unwrap().push(format!("{other:?}")),
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        ConnectionLoop {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Connections served so far.
    pub(crate) fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until `at_least` connections were served.
    pub(crate) fn wait_ok(&self, at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ok() < at_least {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the loops; returns the connections served and the failures.
    pub(crate) fn stop(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok(), failed)
    }
}

/// The `n`-th (from 1) log line with `message`.
pub(crate) fn nth_log(router: &Router, message: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Vec<serde_json::Value> = router
            .logs()
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect();
        if found.len() >= n {
            return found[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {n}th {message:?} log line:\n{:?}",
            router.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
