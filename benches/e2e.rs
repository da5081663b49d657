//! End-to-end benchmark on loopback: sniroute (splice, and the copy
//! fallback) against a direct connection, HAProxy and nginx `stream` with
//! `ssl_preread`, all routing the same real-shaped ClientHellos to the same
//! in-process backend.
//!
//! `cargo bench --bench e2e` runs every measurement; `cargo bench --bench
//! e2e -- throughput idle` only those whose name contains one of the words.
//! Environment: SNIROUTE_BENCH_SECS, SNIROUTE_BENCH_REPS,
//! SNIROUTE_BENCH_CANDIDATES, SNIROUTE_BENCH_IDLE_TUNNELS,
//! SNIROUTE_BENCH_MARKDOWN, SNIROUTE_BENCH_HAPROXY, SNIROUTE_BENCH_NGINX,
//! SNIROUTE_BENCH_NGINX_MODULES (see `--help` and benches/README.md).
//!
//! Every connection starts with a ClientHello (every other one padded to
//! 1.9 KB like a browser's post-quantum hello); the backend checks that the
//! hello arrives first and byte for byte before it sinks or echoes anything.
//! Candidates are measured round-robin within each repetition (the starting
//! candidate rotates), and the table shows medians over the repetitions.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clienthello::synth::HelloBuilder;
use common::{clock_ticks_per_sec, proc_usage, Usage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const SINK_NAME: &str = "sink.bench.test";
const ECHO_NAME: &str = "echo.bench.test";
/// Handshake size of the padded hellos (browsers' post-quantum ones).
const PADDED_LEN: usize = 1900;
/// Read/write/connect timeout of every client socket: no loop can hang.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per write in the throughput streams (and per read in the sink).
const STREAM_CHUNK: usize = 256 * 1024;
const PING_LEN: usize = 64;
const CONNRATE_LOOPS: usize = 32;
/// The byte echoed back in the connection-rate cycle and the split check.
const MARK: u8 = 0x2a;
const GIB: f64 = (1u64 << 30) as f64;

/// Measurement names, in run order; the command-line filter matches them.
const MEASUREMENTS: [&str; 7] = [
    "throughput-1",
    "throughput-8",
    "connrate",
    "pingpong-1",
    "pingpong-32",
    "idle",
    "split-hello",
];

const HELP: &str = "\
End-to-end benchmark: direct, sniroute (splice, copy), HAProxy, nginx on loopback.

usage: cargo bench --bench e2e [-- FILTER...]
  FILTER   run only measurements whose name contains it:
           throughput-1 throughput-8 connrate pingpong-1 pingpong-32 idle split-hello

environment:
  SNIROUTE_BENCH_SECS=3          seconds per timed measurement (after a short warm-up)
  SNIROUTE_BENCH_REPS=3          repetitions; the table shows medians
  SNIROUTE_BENCH_CANDIDATES=...  comma list of direct,splice,copy,haproxy,nginx (default: all)
  SNIROUTE_BENCH_IDLE_TUNNELS=5000  tunnels held open by the `idle` measurement
  SNIROUTE_BENCH_MARKDOWN=PATH   also write the table (with date and machine) as markdown
  SNIROUTE_BENCH_HAPROXY=/usr/sbin/haproxy
  SNIROUTE_BENCH_NGINX=/usr/sbin/nginx
  SNIROUTE_BENCH_NGINX_MODULES=/usr/lib/nginx/modules  (where ngx_stream_module.so is, when dynamic)
";

// ---------------------------------------------------------------------------
// Settings

struct Settings {
    secs: Duration,
    warmup: Duration,
    reps: usize,
    idle_tunnels: usize,
    filters: Vec<String>,
    candidates: Option<Vec<String>>,
    markdown: Option<PathBuf>,
    haproxy: PathBuf,
    nginx: PathBuf,
    nginx_modules: PathBuf,
}

fn env_num(name: &str, default: f64, min: f64, max: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => x.clamp(min, max),
            _ => {
                eprintln!("warning: ignoring {name}={v:?}: not a number");
                default
            }
        },
        Err(_) => default,
    }
}

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

impl Settings {
    fn from_env(args: &[String]) -> Settings {
        let secs = env_num("SNIROUTE_BENCH_SECS", 3.0, 0.2, 60.0);
        let candidates = std::env::var("SNIROUTE_BENCH_CANDIDATES").ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        });
        Settings {
            secs: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64((secs * 0.15).clamp(0.1, 0.5)),
            reps: env_num("SNIROUTE_BENCH_REPS", 3.0, 1.0, 20.0) as usize,
            idle_tunnels: env_num("SNIROUTE_BENCH_IDLE_TUNNELS", 5000.0, 1.0, 100_000.0) as usize,
            filters: args
                .iter()
                .filter(|a| !a.starts_with('-'))
                .cloned()
                .collect(),
            candidates,
            markdown: std::env::var_os("SNIROUTE_BENCH_MARKDOWN").map(PathBuf::from),
            haproxy: env_path("SNIROUTE_BENCH_HAPROXY", "/usr/sbin/haproxy"),
            nginx: env_path("SNIROUTE_BENCH_NGINX", "/usr/sbin/nginx"),
            nginx_modules: env_path("SNIROUTE_BENCH_NGINX_MODULES", "/usr/lib/nginx/modules"),
        }
    }

    fn wants(&self, kind: Kind) -> bool {
        self.candidates
            .as_ref()
            .is_none_or(|c| c.iter().any(|k| k == kind.key()))
    }
}

// ---------------------------------------------------------------------------
// ClientHellos

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Sink,
    Echo,
}

struct Hellos {
    sink: [Vec<u8>; 2],
    echo: [Vec<u8>; 2],
    /// The echo hello with its handshake split across two records.
    split: Vec<u8>,
}

impl Hellos {
    fn new() -> Hellos {
        let pair = |name: &str| {
            [
                HelloBuilder::new(name).build(),
                HelloBuilder::new(name).ech().pad_to(PADDED_LEN).build(),
            ]
        };
        let handshake = HelloBuilder::new(ECHO_NAME).handshake();
        let split = HelloBuilder::new(ECHO_NAME).build_in_records(handshake.len().div_ceil(2));
        assert_eq!(split.len(), handshake.len() + 10, "two records");
        Hellos {
            sink: pair(SINK_NAME),
            echo: pair(ECHO_NAME),
            split,
        }
    }

    /// The hello of connection `i`: every odd one is the padded one.
    fn get(&self, route: Route, i: usize) -> &[u8] {
        match route {
            Route::Sink => &self.sink[i % 2],
            Route::Echo => &self.echo[i % 2],
        }
    }

    fn all(&self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        all.extend(self.sink.iter().cloned());
        all.extend(self.echo.iter().cloned());
        all.push(self.split.clone());
        all
    }
}

/// Where the ClientHello at the start of `b` ends: `None` while incomplete,
/// `Some(Err)` when `b` does not start with handshake records of a
/// ClientHello.
fn hello_end(b: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0;
    let mut head = [0u8; 4];
    let mut head_len = 0;
    let mut handshake_bytes = 0;
    loop {
        let header = b.get(pos..pos + 5)?;
        if header[0] != 22 {
            return Some(Err(()));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let payload = b.get(pos + 5..pos + 5 + len)?;
        for &byte in payload.iter().take(4 - head_len) {
            head[head_len] = byte;
            head_len += 1;
        }
        handshake_bytes += len;
        pos += 5 + len;
        if head_len == 4 {
            if head[0] != 1 {
                return Some(Err(()));
            }
            let need =
                4 + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]));
            if handshake_bytes >= need {
                return Some(Ok(pos));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The backend: a sink and an echo server on a 2-thread tokio runtime.

#[derive(Default)]
struct BackendStats {
    sink_bytes: AtomicU64,
    hellos_ok: AtomicU64,
    hellos_bad: AtomicU64,
    /// Backend connections currently open.
    open: AtomicI64,
}

struct Backend {
    /// Runs the server tasks; dropping it ends them.
    _rt: tokio::runtime::Runtime,
    sink: SocketAddr,
    echo: SocketAddr,
    stats: Arc<BackendStats>,
}

impl Backend {
    fn start(hellos: Vec<Vec<u8>>) -> io::Result<Backend> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backend")
            .enable_all()
            .build()?;
        let stats = Arc::new(BackendStats::default());
        let hellos = Arc::new(hellos);
        let guard = rt.enter();
        let sink = listen(Route::Sink, stats.clone(), hellos.clone())?;
        let echo = listen(Route::Echo, stats.clone(), hellos)?;
        drop(guard);
        Ok(Backend {
            _rt: rt,
            sink,
            echo,
            stats,
        })
    }

    fn addr(&self, route: Route) -> SocketAddr {
        match route {
            Route::Sink => self.sink,
            Route::Echo => self.echo,
        }
    }

    /// Waits until no backend connection is open; false on timeout.
    fn wait_quiet(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.stats.open.load(Relaxed) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

fn listen(
    route: Route,
    stats: Arc<BackendStats>,
    hellos: Arc<Vec<Vec<u8>>>,
) -> io::Result<SocketAddr> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    stats.open.fetch_add(1, Relaxed);
                    tokio::spawn(serve(stream, route, stats.clone(), hellos.clone()));
                }
                // EMFILE and the like: back off, the listener stays.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    });
    Ok(addr)
}

struct OpenGuard(Arc<BackendStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// One backend connection: the ClientHello must come first and be one of
/// the hellos the clients send; then sink or echo until EOF.
async fn serve(
    mut s: tokio::net::TcpStream,
    route: Route,
    stats: Arc<BackendStats>,
    hellos: Arc<Vec<Vec<u8>>>,
) {
    let _open = OpenGuard(stats.clone());
    let _ = s.set_nodelay(true);
    let mut buf = vec![
        0u8;
        match route {
            Route::Sink => STREAM_CHUNK,
            Route::Echo => 4096,
        }
    ];
    let mut have = 0;
    let end = loop {
        match hello_end(&buf[..have]) {
            Some(Ok(end)) => break end,
            Some(Err(())) => {
                stats.hellos_bad.fetch_add(1, Relaxed);
                return;
            }
            None => {}
        }
        if have == buf.len() {
            stats.hellos_bad.fetch_add(1, Relaxed);
            return;
        }
        match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => {
                if have > 0 {
                    stats.hellos_bad.fetch_add(1, Relaxed);
                }
                return;
            }
            Ok(n) => have += n,
        }
    };
    if !hellos.iter().any(|h| h[..] == buf[..end]) {
        stats.hellos_bad.fetch_add(1, Relaxed);
        return;
    }
    stats.hellos_ok.fetch_add(1, Relaxed);
    match route {
        Route::Sink => {
            stats.sink_bytes.fetch_add((have - end) as u64, Relaxed);
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                stats.sink_bytes.fetch_add(n as u64, Relaxed);
            }
        }
        Route::Echo => {
            if have > end && s.write_all(&buf[end..have]).await.is_err() {
                return;
            }
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

/// PIDs whose parent is `pid` (nginx workers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The process name (`comm`) of `pid`, if it exists.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// A proxy process we started; stopped by PID when dropped (also while
/// unwinding from a panic).
struct Proxy {
    child: Child,
    listen: SocketAddr,
    /// nginx: the workers are child processes and count too.
    multi_process: bool,
    /// The process's stderr (HAProxy, nginx), shown when it fails.
    log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts a competitor (stdin and stdout closed; its stderr as `cmd`
    /// says) that listens on loopback `port` and writes its errors to
    /// `log`, and waits until it accepts connections.
    fn start(
        mut cmd: Command,
        port: u16,
        multi_process: bool,
        log: PathBuf,
        dir: tempfile::TempDir,
    ) -> Result<Self, String> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd.get_program().to_string_lossy()))?;
        let mut proxy = Self {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            multi_process,
            log: Some(log),
            _dir: dir,
        };
        proxy.wait_listening(Duration::from_secs(10))?;
        Ok(proxy)
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        if self.multi_process {
            pids.extend(children_of(self.child.id()));
        }
        pids
    }

    fn usage(&self) -> Usage {
        let mut total = Usage::default();
        for u in self.pids().into_iter().filter_map(proc_usage) {
            total.cpu_ticks += u.cpu_ticks;
            total.rss_kib += u.rss_kib;
            total.fds += u.fds;
        }
        total
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("exited ({status}){}", self.log_tail())),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait: {e}")),
        }
    }

    fn log_tail(&self) -> String {
        let Some(text) = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log:\n  {tail}")
        }
    }

    /// Waits until the listener accepts connections (and, for nginx, the
    /// workers run).
    fn wait_listening(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.exited() {
                return Err(e);
            }
            let listening =
                TcpStream::connect_timeout(&self.listen, Duration::from_millis(200)).is_ok();
            let workers = !self.multi_process || children_of(self.child.id()).len() >= 2;
            if listening && workers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not listening on {} after {timeout:?}{}",
                    self.listen,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.multi_process {
            // nginx workers outlive a killed master: ask the master to stop
            // them, then kill whatever is left, by PID.
            let workers = children_of(pid);
            signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for w in workers {
                if comm(w).is_some_and(|c| c.starts_with("nginx")) {
                    signal(w, "KILL");
                }
            }
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))
}

fn sniroute_yaml(forwarding: &str, backend: &Backend) -> String {
    format!(
        r#"listeners: ["127.0.0.1:0"]
forwarding: {forwarding}
routes:
  - name: sink
    server_names: ["{SINK_NAME}"]
    upstreams: ["{sink}"]
    health_check: false
  - name: echo
    server_names: ["{ECHO_NAME}"]
    upstreams: ["{echo}"]
    health_check: false
"#,
        sink = backend.sink,
        echo = backend.echo,
    )
}

enum LogEvent {
    Listening(SocketAddr),
    Ready,
    Line(String),
}

fn start_sniroute(forwarding: &'static str, backend: &Backend) -> Result<Proxy, String> {
    let dir = temp_dir("sniroute-bench-")?;
    let config = dir.path().join("sniroute.yaml");
    std::fs::write(&config, sniroute_yaml(forwarding, backend))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        // Access log off (HAProxy and nginx log nothing either); the
        // start-up lines tell the bound port and readiness.
        .args([
            "--log-format",
            "json",
            "--log-level",
            "sniroute::access=warn,info",
            "run",
            "--config",
        ])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", env!("CARGO_BIN_EXE_sniroute")))?;
    let stderr = child.stderr.take().expect("piped");
    let mut proxy = Proxy {
        child,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        multi_process: false,
        log: None,
        _dir: dir,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = false;
        let mut shown = 0;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if !ready {
                if v["message"] == "listening" {
                    if let Some(a) = v["local"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = tx.send(LogEvent::Listening(a));
                    }
                } else if v["message"] == "sniroute is ready" {
                    ready = true;
                    let _ = tx.send(LogEvent::Ready);
                } else {
                    let _ = tx.send(LogEvent::Line(line));
                }
            } else if (v.is_null() || matches!(v["level"].as_str(), Some("WARN" | "ERROR")))
                && shown < 20
            {
                shown += 1;
                eprintln!("  [sniroute {forwarding}] {line}");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let mut listen = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(LogEvent::Listening(a)) => listen = Some(a),
            Ok(LogEvent::Ready) => break,
            Ok(LogEvent::Line(l)) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("exited before ready:\n  {}", lines.join("\n  ")));
            }
        }
        if let Some(e) = proxy.exited() {
            return Err(format!("{e}:\n  {}", lines.join("\n  ")));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready after 20 s:\n  {}", lines.join("\n  ")));
        }
    }
    proxy.listen = listen.ok_or("no `listening` log line")?;
    Ok(proxy)
}

fn version_line(cmd: &Path, arg: &str) -> Option<String> {
    let out = Command::new(cmd).arg(arg).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().next().map(|l| l.trim().to_owned())
}

/// HAProxy's config: the shape documented in benches/README.md.
fn haproxy_cfg(port: u16, backend: &Backend, maxconn: usize) -> String {
    format!(
        "global
    nbthread 2
    maxconn {maxconn}

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    option splice-auto

frontend tls
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend sink if {{ req.ssl_sni -i {SINK_NAME} }}
    use_backend echo if {{ req.ssl_sni -i {ECHO_NAME} }}

backend sink
    server sink {sink}

backend echo
    server echo {echo}
",
        sink = backend.sink,
        echo = backend.echo,
    )
}

fn start_haproxy(s: &Settings, backend: &Backend) -> Result<Proxy, String> {
    if !s.haproxy.exists() {
        return Err(format!("not installed ({} not found)", s.haproxy.display()));
    }
    let dir = temp_dir("sniroute-bench-haproxy-")?;
    let port = free_port().map_err(|e| e.to_string())?;
    let cfg = dir.path().join("haproxy.cfg");
    let maxconn = s.idle_tunnels + 1000;
    std::fs::write(&cfg, haproxy_cfg(port, backend, maxconn)).map_err(|e| e.to_string())?;
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&s.haproxy);
    cmd.arg("-f").arg(&cfg).arg("-db").stderr(stderr);
    Proxy::start(cmd, port, false, log, dir)
}

/// Why nginx cannot run here, or the `load_module` line it needs ("" when
/// its stream module is built in).
fn nginx_stream_module(s: &Settings) -> Result<String, String> {
    if !s.nginx.exists() {
        return Err(format!("not installed ({} not found)", s.nginx.display()));
    }
    let out = Command::new(&s.nginx)
        .arg("-V")
        .output()
        .map_err(|e| format!("cannot run {} -V: {e}", s.nginx.display()))?;
    let v =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let flags: Vec<&str> = v.split_whitespace().collect();
    if !flags.contains(&"--with-stream_ssl_preread_module") {
        return Err("built without the stream ssl_preread module".into());
    }
    if flags.contains(&"--with-stream") {
        return Ok(String::new());
    }
    if flags.contains(&"--with-stream=dynamic") {
        let module = s.nginx_modules.join("ngx_stream_module.so");
        if module.exists() {
            return Ok(format!("load_module {};\n", module.display()));
        }
        return Err(format!(
            "its stream module is dynamic and {} does not exist \
             (Debian: apt-get install libnginx-mod-stream, or point \
             SNIROUTE_BENCH_NGINX_MODULES at a directory holding it)",
            module.display()
        ));
    }
    Err("built without the stream module".into())
}

fn nginx_conf(load: &str, dir: &Path, port: u16, backend: &Backend, idle: usize) -> String {
    // A worker may get most tunnels; each costs it two connections.
    let connections = 2 * idle + 1000;
    format!(
        "{load}daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {rlimit};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections {connections};
}}

stream {{
    map $ssl_preread_server_name $bench_upstream {{
        {SINK_NAME} {sink};
        {ECHO_NAME} {echo};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        ssl_preread on;
        preread_timeout 5s;
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
        proxy_pass $bench_upstream;
    }}
}}
",
        rlimit = connections + 100,
        dir = dir.display(),
        sink = backend.sink,
        echo = backend.echo,
    )
}

fn start_nginx(s: &Settings, backend: &Backend) -> Result<Proxy, String> {
    let load = nginx_stream_module(s)?;
    let dir = temp_dir("sniroute-bench-nginx-")?;
    let port = free_port().map_err(|e| e.to_string())?;
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(&load, dir.path(), port, backend, s.idle_tunnels),
    )
    .map_err(|e| e.to_string())?;
    let log = dir.path().join("error.log");
    let mut cmd = Command::new(&s.nginx);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&log)
        .stderr(Stdio::null());
    Proxy::start(cmd, port, true, log, dir)
}

// ---------------------------------------------------------------------------
// Candidates

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Direct,
    Splice,
    Copy,
    Haproxy,
    Nginx,
}

const KINDS: [Kind; 5] = [
    Kind::Direct,
    Kind::Splice,
    Kind::Copy,
    Kind::Haproxy,
    Kind::Nginx,
];

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Splice => "splice",
            Kind::Copy => "copy",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Splice => "sniroute splice",
            Kind::Copy => "sniroute copy",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }

    fn is_competitor(self) -> bool {
        matches!(self, Kind::Haproxy | Kind::Nginx)
    }
}

struct Candidate {
    kind: Kind,
    /// `None` for the direct connection.
    proxy: Option<Proxy>,
    /// Set when the proxy died: later measurements skip it.
    dead: Option<String>,
}

/// Starts the proxy of `kind` (`None` for the direct connection).
fn start_candidate(kind: Kind, s: &Settings, backend: &Backend) -> Result<Option<Proxy>, String> {
    match kind {
        Kind::Direct => Ok(None),
        Kind::Splice => start_sniroute("splice", backend).map(Some),
        Kind::Copy => start_sniroute("copy", backend).map(Some),
        Kind::Haproxy => start_haproxy(s, backend).map(Some),
        Kind::Nginx => start_nginx(s, backend).map(Some),
    }
}

impl Candidate {
    fn addr(&self, route: Route, backend: &Backend) -> SocketAddr {
        match &self.proxy {
            None => backend.addr(route),
            Some(p) => p.listen,
        }
    }
}

// ---------------------------------------------------------------------------
// Load generation

// Phases of a run: set-up (0, the default), warm-up, timed window, stop.
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

/// Shared state of one measurement's client threads.
#[derive(Default)]
struct Run {
    phase: AtomicU8,
    ready: AtomicUsize,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Run {
    fn phase(&self) -> u8 {
        self.phase.load(Relaxed)
    }

    fn ready(&self) {
        self.ready.fetch_add(1, Relaxed);
    }

    /// Counts an error, unless the run is stopping (a stopped writer may
    /// see its last write cut short).
    fn fail(&self, what: impl std::fmt::Display) {
        if self.phase() == STOP {
            return;
        }
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what.to_string());
        }
    }
}

/// What one timed window saw.
struct Window {
    secs: f64,
    /// Proxy CPU seconds in the window (`None`: direct).
    cpu_secs: Option<f64>,
    sink_bytes: u64,
    /// Per-operation latencies in the window, in ns.
    samples: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

struct Ctx<'a> {
    settings: &'a Settings,
    backend: &'a Backend,
    hellos: &'a Hellos,
    ticks_per_sec: f64,
}

/// Runs `n` client threads through set-up, warm-up and one timed window,
/// then stops them. `body(i, run)` runs on thread `i`: it calls
/// `run.ready()` once connected, loops until `run.phase() == STOP`, and
/// returns the latencies it recorded while the phase was `MEASURE`.
fn run_load(
    ctx: &Ctx<'_>,
    n: usize,
    proxy: Option<&Proxy>,
    body: impl Fn(usize, &Run) -> Vec<u64> + Sync,
) -> Window {
    let run = Run::default();
    let stats = &ctx.backend.stats;
    let ticks = ctx.ticks_per_sec;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (run, body) = (&run, &body);
                std::thread::Builder::new()
                    .name(format!("client-{i}"))
                    .spawn_scoped(scope, move || body(i, run))
                    .expect("spawn a client thread")
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while run.ready.load(Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        run.phase.store(WARMUP, Relaxed);
        std::thread::sleep(ctx.settings.warmup);
        let u0 = proxy.map(Proxy::usage);
        let b0 = stats.sink_bytes.load(Relaxed);
        let t0 = Instant::now();
        run.phase.store(MEASURE, Relaxed);
        std::thread::sleep(ctx.settings.secs);
        let u1 = proxy.map(Proxy::usage);
        let b1 = stats.sink_bytes.load(Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        run.phase.store(STOP, Relaxed);
        let mut samples = Vec::new();
        for h in handles {
            match h.join() {
                Ok(s) => samples.extend(s),
                Err(_) => run.fail("a client thread panicked"),
            }
        }
        let first_error = run
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Window {
            secs,
            cpu_secs: u0
                .zip(u1)
                .map(|(a, b)| b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks),
            sink_bytes: b1 - b0,
            samples,
            errors: run.errors.load(Relaxed),
            first_error,
        }
    })
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Connects and sends the ClientHello.
fn open(addr: SocketAddr, hello: &[u8]) -> io::Result<TcpStream> {
    let mut s = connect(addr)?;
    s.write_all(hello)?;
    Ok(s)
}

/// Percentile `p` (0..=1) of sorted samples, in µs.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Measurements

/// One measurement of one candidate: metric values by row id, a one-line
/// summary and notes (errors) for below the table.
#[derive(Default)]
struct Outcome {
    values: Vec<(&'static str, f64)>,
    summary: String,
    notes: Vec<String>,
}

impl Outcome {
    fn window_notes(&mut self, w: &Window) {
        if w.errors > 0 {
            self.notes.push(format!(
                "{} errors (first: {})",
                w.errors,
                w.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
}

fn throughput(ctx: &Ctx<'_>, cand: &Candidate, streams: usize) -> Outcome {
    let addr = cand.addr(Route::Sink, ctx.backend);
    let w = run_load(ctx, streams, cand.proxy.as_ref(), |i, run| {
        let mut s = match open(addr, ctx.hellos.get(Route::Sink, i)) {
            Ok(s) => s,
            Err(e) => {
                run.fail(format!("connect: {e}"));
                run.ready();
                return Vec::new();
            }
        };
        run.ready();
        let chunk = vec![0xa5u8; STREAM_CHUNK];
        while run.phase() != STOP {
            if let Err(e) = s.write_all(&chunk) {
                run.fail(format!("write: {e}"));
                break;
            }
        }
        Vec::new()
    });
    let (rate_id, cpu_id) = if streams == 1 {
        ("tput1", "cpu1")
    } else {
        ("tput8", "cpu8")
    };
    let gbps = w.sink_bytes as f64 * 8.0 / w.secs / 1e9;
    let mut o = Outcome::default();
    o.values.push((rate_id, gbps));
    o.summary = format!("{gbps:.2} Gbit/s");
    if let Some(cpu) = w.cpu_secs {
        if w.sink_bytes > 0 {
            let per_gib = cpu / (w.sink_bytes as f64 / GIB);
            o.values.push((cpu_id, per_gib));
            o.summary += &format!(", {per_gib:.3} CPU s/GiB");
        }
    }
    o.window_notes(&w);
    o
}

/// connect → ClientHello and one byte → that byte echoed back → close.
fn cycle(addr: SocketAddr, msg: &[u8]) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(msg)?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != MARK {
        return Err(io::Error::other("wrong byte echoed"));
    }
    Ok(())
}

fn connrate(ctx: &Ctx<'_>, cand: &Candidate) -> Outcome {
    let addr = cand.addr(Route::Echo, ctx.backend);
    let mut w = run_load(ctx, CONNRATE_LOOPS, cand.proxy.as_ref(), |i, run| {
        let mut msg = ctx.hellos.get(Route::Echo, i).to_vec();
        msg.push(MARK);
        run.ready();
        let mut samples = Vec::with_capacity(1 << 14);
        while run.phase() != STOP {
            let start = Instant::now();
            match cycle(addr, &msg) {
                Ok(()) if run.phase() == MEASURE => {
                    samples.push(start.elapsed().as_nanos() as u64);
                }
                Ok(()) => {}
                Err(e) => {
                    run.fail(e);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        samples
    });
    w.samples.sort_unstable();
    let rate = w.samples.len() as f64 / w.secs;
    let (p50, p99) = (
        percentile_us(&w.samples, 0.50),
        percentile_us(&w.samples, 0.99),
    );
    let mut o = Outcome::default();
    o.values
        .extend([("connrate", rate), ("conn_p50", p50), ("conn_p99", p99)]);
    o.summary = format!("{rate:.0} conn/s, p50 {p50:.0} µs, p99 {p99:.0} µs");
    if let Some(cpu) = w.cpu_secs {
        if !w.samples.is_empty() {
            let per_conn = cpu * 1e6 / w.samples.len() as f64;
            o.values.push(("conn_cpu", per_conn));
            o.summary += &format!(", {per_conn:.1} CPU µs/conn");
        }
    }
    o.window_notes(&w);
    o
}

fn pingpong(ctx: &Ctx<'_>, cand: &Candidate, conns: usize) -> Outcome {
    let addr = cand.addr(Route::Echo, ctx.backend);
    let mut w = run_load(ctx, conns, cand.proxy.as_ref(), |i, run| {
        let mut s = match open(addr, ctx.hellos.get(Route::Echo, i)) {
            Ok(s) => s,
            Err(e) => {
                run.fail(format!("connect: {e}"));
                run.ready();
                return Vec::new();
            }
        };
        run.ready();
        let mut msg = [0u8; PING_LEN];
        msg[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        let mut back = [0u8; PING_LEN];
        let mut samples = Vec::with_capacity(1 << 16);
        let mut seq = 0u64;
        while run.phase() != STOP {
            seq += 1;
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            let start = Instant::now();
            if let Err(e) = s.write_all(&msg).and_then(|()| s.read_exact(&mut back)) {
                run.fail(e);
                break;
            }
            let ns = start.elapsed().as_nanos() as u64;
            if back != msg {
                run.fail("echo differs from the ping");
                break;
            }
            if run.phase() == MEASURE {
                samples.push(ns);
            }
        }
        samples
    });
    w.samples.sort_unstable();
    let ids: [&'static str; 3] = if conns == 1 {
        ["pp1_p50", "pp1_p99", "pp1_p999"]
    } else {
        ["pp32_p50", "pp32_p99", "pp32_p999"]
    };
    let ps = [0.50, 0.99, 0.999].map(|p| percentile_us(&w.samples, p));
    let mut o = Outcome::default();
    o.values.extend(ids.into_iter().zip(ps));
    o.summary = format!(
        "{} round trips, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        w.samples.len(),
        ps[0],
        ps[1],
        ps[2]
    );
    o.window_notes(&w);
    o
}

fn idle(ctx: &Ctx<'_>, cand: &Candidate) -> Outcome {
    let mut o = Outcome::default();
    let Some(proxy) = cand.proxy.as_ref() else {
        o.summary = "n/a (no proxy)".into();
        return o;
    };
    let addr = cand.addr(Route::Echo, ctx.backend);
    let n = ctx.settings.idle_tunnels;
    // The proxy was just (re)started: a few tunnels first, so that what it
    // sets up once (threads, pools, tables) does not count per tunnel.
    let mut msg = ctx.hellos.get(Route::Echo, 1).to_vec();
    msg.push(MARK);
    for _ in 0..16 {
        if let Err(e) = cycle(addr, &msg) {
            o.notes.push(format!("warm-up tunnel failed: {e}"));
        }
    }
    if !ctx.backend.wait_quiet(Duration::from_secs(10)) {
        o.notes.push("warm-up tunnels still open after 10 s".into());
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = proxy.usage();
    let hellos_before = ctx.backend.stats.hellos_ok.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() >= deadline {
            o.notes.push(format!("opened only {i} tunnels in 60 s"));
            break;
        }
        match open(addr, ctx.hellos.get(Route::Echo, i)) {
            Ok(s) => conns.push(s),
            Err(e) => {
                o.notes
                    .push(format!("opened only {i} tunnels: connect failed: {e}"));
                break;
            }
        }
    }
    let opened = conns.len();
    let wait_until = Instant::now() + Duration::from_secs(30);
    let mut reached;
    loop {
        reached = ctx.backend.stats.hellos_ok.load(Relaxed) - hellos_before;
        if reached >= opened as u64 || Instant::now() >= wait_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if reached < opened as u64 {
        o.notes.push(format!(
            "only {reached} of {opened} tunnels reached the backend within 30 s"
        ));
    }
    // Let the proxy finish whatever it does after connecting upstream.
    std::thread::sleep(Duration::from_millis(500));
    let after = proxy.usage();
    drop(conns);
    if opened > 0 {
        let rss = (after.rss_kib as f64 - before.rss_kib as f64) / opened as f64;
        let fds = (after.fds as f64 - before.fds as f64) / opened as f64;
        o.values.extend([("idle_rss", rss), ("idle_fds", fds)]);
        o.summary = format!(
            "{opened} tunnels: {rss:.2} KiB RSS and {fds:.2} fds per tunnel (RSS {} → {} KiB, fds {} → {})",
            before.rss_kib, after.rss_kib, before.fds, after.fds
        );
    }
    o
}

fn split_hello(ctx: &Ctx<'_>, cand: &Candidate) -> Outcome {
    let mut o = Outcome::default();
    if cand.proxy.is_none() {
        o.summary = "n/a (no routing)".into();
        return o;
    }
    let addr = cand.addr(Route::Echo, ctx.backend);
    let mut msg = ctx.hellos.split.clone();
    msg.push(MARK);
    let result = (|| -> io::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        // HAProxy may wait for its whole inspect-delay (5 s).
        s.set_read_timeout(Some(Duration::from_secs(7)))?;
        s.write_all(&msg)?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        if b[0] == MARK {
            Ok(())
        } else {
            Err(io::Error::other("wrong byte echoed"))
        }
    })();
    match result {
        Ok(()) => {
            o.values.push(("split", 1.0));
            o.summary = "routed".into();
        }
        Err(e) => {
            o.values.push(("split", 0.0));
            let why = match e.kind() {
                io::ErrorKind::UnexpectedEof => "closed without an answer".to_owned(),
                io::ErrorKind::ConnectionReset => "reset without an answer".to_owned(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    "no answer within 7 s".to_owned()
                }
                _ => e.to_string(),
            };
            o.summary = format!("not routed ({why})");
        }
    }
    o
}

fn measure(ctx: &Ctx<'_>, name: &str, cand: &Candidate) -> Outcome {
    match name {
        "throughput-1" => throughput(ctx, cand, 1),
        "throughput-8" => throughput(ctx, cand, 8),
        "connrate" => connrate(ctx, cand),
        "pingpong-1" => pingpong(ctx, cand, 1),
        "pingpong-32" => pingpong(ctx, cand, 32),
        "idle" => idle(ctx, cand),
        "split-hello" => split_hello(ctx, cand),
        _ => unreachable!("unknown measurement {name}"),
    }
}

// ---------------------------------------------------------------------------
// The table

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    Yes,
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// sniroute ÷ the best competitor, at least.
    AtLeastBest(f64),
    /// sniroute ÷ the best competitor, at most.
    AtMostBest(f64),
    /// sniroute's figure below the best competitor's.
    BelowBest,
    /// sniroute ÷ HAProxy, at least.
    VsHaproxy(f64),
    /// sniroute's own figure, at most.
    AtMost(f64),
    /// sniroute routes it.
    Routes,
}

struct Row {
    id: &'static str,
    measurement: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    target: Target,
    target_label: &'static str,
}

const fn row(
    id: &'static str,
    measurement: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    target: Target,
    target_label: &'static str,
) -> Row {
    Row {
        id,
        measurement,
        label,
        unit,
        better,
        target,
        target_label,
    }
}

#[rustfmt::skip]
const ROWS: &[Row] = &[
    row("tput1", "throughput-1", "throughput, 1 stream", "Gbit/s", Better::Higher, Target::AtLeastBest(1.15), "≥1.15× best"),
    row("cpu1", "throughput-1", "proxy CPU per GiB, 1 stream", "CPU s/GiB", Better::Lower, Target::BelowBest, "< best"),
    row("tput8", "throughput-8", "throughput, 8 streams", "Gbit/s", Better::Higher, Target::AtLeastBest(1.15), "≥1.15× best"),
    row("cpu8", "throughput-8", "proxy CPU per GiB, 8 streams", "CPU s/GiB", Better::Lower, Target::BelowBest, "< best"),
    row("connrate", "connrate", "new connections, 32 loops", "conn/s", Better::Higher, Target::VsHaproxy(1.2), "≥1.2× haproxy"),
    row("conn_p50", "connrate", "connection cycle p50", "µs", Better::Lower, Target::None, ""),
    row("conn_p99", "connrate", "connection cycle p99", "µs", Better::Lower, Target::None, ""),
    row("conn_cpu", "connrate", "proxy CPU per connection", "CPU µs", Better::Lower, Target::None, ""),
    row("pp1_p50", "pingpong-1", "64 B ping-pong, 1 conn, p50", "µs", Better::Lower, Target::None, ""),
    row("pp1_p99", "pingpong-1", "64 B ping-pong, 1 conn, p99", "µs", Better::Lower, Target::AtMostBest(1.0), "≤ best"),
    row("pp1_p999", "pingpong-1", "64 B ping-pong, 1 conn, p99.9", "µs", Better::Lower, Target::None, ""),
    row("pp32_p50", "pingpong-32", "64 B ping-pong, 32 conns, p50", "µs", Better::Lower, Target::None, ""),
    row("pp32_p99", "pingpong-32", "64 B ping-pong, 32 conns, p99", "µs", Better::Lower, Target::AtMostBest(1.0), "≤ best"),
    row("pp32_p999", "pingpong-32", "64 B ping-pong, 32 conns, p99.9", "µs", Better::Lower, Target::None, ""),
    row("idle_rss", "idle", "RSS per idle tunnel", "KiB", Better::Lower, Target::AtMost(2.0), "≤ 2 KiB"),
    row("idle_fds", "idle", "descriptors per idle tunnel", "fds", Better::Lower, Target::AtMost(2.0), "≤ 2"),
    row("split", "split-hello", "ClientHello split in 2 records routed", "", Better::Yes, Target::Routes, "routes"),
];

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn format_value(row: &Row, v: f64) -> String {
    if row.better == Better::Yes {
        return if v >= 0.5 { "yes" } else { "no" }.into();
    }
    match row.unit {
        "Gbit/s" | "KiB" | "fds" => format!("{v:.2}"),
        "CPU s/GiB" => format!("{v:.3}"),
        "conn/s" => format!("{v:.0}"),
        _ if v.abs() < 10.0 => format!("{v:.2}"),
        _ if v.abs() < 1000.0 => format!("{v:.1}"),
        _ => format!("{v:.0}"),
    }
}

struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn build_table(
    results: &HashMap<(&'static str, Kind), Vec<f64>>,
    kinds: &[Kind],
    selected: &[&str],
) -> Table {
    let mut header = vec!["metric".to_owned(), "unit".to_owned()];
    header.extend(kinds.iter().map(|k| k.label().to_owned()));
    header.extend(
        [
            "sniroute/haproxy",
            "sniroute/best",
            "sniroute/direct",
            "target",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for row in ROWS {
        if !selected.contains(&row.measurement) {
            continue;
        }
        let value = |k: Kind| results.get(&(row.id, k)).and_then(|v| median(v));
        let arrow = match row.better {
            Better::Higher => " ↑",
            Better::Lower => " ↓",
            Better::Yes => "",
        };
        let mut cells = vec![row.label.to_owned(), format!("{}{arrow}", row.unit)];
        for &k in kinds {
            cells.push(match value(k) {
                Some(v) => format_value(row, v),
                None if row.better == Better::Yes || k == Kind::Direct => "n/a".into(),
                None => "—".into(),
            });
        }
        let ours = value(Kind::Splice);
        let best = kinds
            .iter()
            .filter(|k| k.is_competitor())
            .filter_map(|&k| value(k))
            .reduce(|a, b| match row.better {
                Better::Lower => a.min(b),
                _ => a.max(b),
            });
        let ratio = |other: Option<f64>| match (ours, other) {
            (Some(a), Some(b)) if row.better != Better::Yes && b != 0.0 => Some(a / b),
            _ => None,
        };
        let show = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}×"));
        let vs_haproxy = ratio(value(Kind::Haproxy));
        let vs_best = ratio(best);
        cells.push(show(vs_haproxy));
        cells.push(show(vs_best));
        cells.push(show(ratio(value(Kind::Direct))));
        let met = match row.target {
            Target::None => None,
            Target::AtLeastBest(x) => vs_best.map(|r| r >= x),
            Target::AtMostBest(x) => vs_best.map(|r| r <= x),
            Target::BelowBest => vs_best.map(|r| r < 1.0),
            Target::VsHaproxy(x) => vs_haproxy.map(|r| r >= x),
            // As shown: 10,004 descriptors for 5,000 tunnels are 2.00 each.
            Target::AtMost(x) => ours.map(|v| (v * 100.0).round() / 100.0 <= x),
            Target::Routes => ours.map(|v| v >= 0.5),
        };
        cells.push(match (row.target, met) {
            (Target::None, _) => String::new(),
            (_, Some(true)) => format!("{}: yes", row.target_label),
            (_, Some(false)) => format!("{}: NO", row.target_label),
            (_, None) => format!("{}: n/a", row.target_label),
        });
        rows.push(cells);
    }
    Table { header, rows }
}

impl Table {
    fn text(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .chain(std::iter::once(&self.header))
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i > 0 {
                    out.push_str("  ");
                }
                // Text columns left, figures right.
                if i < 2 || i == cells.len() - 1 {
                    out.push_str(c);
                    out.extend(std::iter::repeat_n(' ', pad));
                } else {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(c);
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(&self.header);
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    fn markdown(&self) -> String {
        let n = self.header.len();
        let mut out = format!("| {} |\n", self.header.join(" | "));
        let align: Vec<&str> = (0..n)
            .map(|i| if i < 2 || i == n - 1 { "---" } else { "---:" })
            .collect();
        out.push_str(&format!("| {} |\n", align.join(" | ")));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Machine information

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine_info(s: &Settings) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let git = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    )
    .unwrap_or_else(|| "?".into());
    let sniroute = version_line(Path::new(env!("CARGO_BIN_EXE_sniroute")), "--version")
        .unwrap_or_else(|| "sniroute ?".into());
    let haproxy = version_line(&s.haproxy, "-v").unwrap_or_else(|| "not found".into());
    let nginx = version_line(&s.nginx, "-v").unwrap_or_else(|| "not found".into());
    vec![
        format!(
            "date: {}",
            command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into())
        ),
        format!("machine: nproc {cpus}, {model}, Linux {kernel}"),
        format!("load average at start: {}", loadavg()),
        format!("{sniroute} (git {git}); {haproxy}; {nginx}"),
        format!(
            "run: SNIROUTE_BENCH_SECS={} SNIROUTE_BENCH_REPS={} SNIROUTE_BENCH_IDLE_TUNNELS={}, medians of {} repetitions",
            s.secs.as_secs_f64(),
            s.reps,
            s.idle_tunnels,
            s.reps
        ),
    ]
}

fn soft_nofile_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` and `--list` runs: nothing to do.
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    let mut settings = Settings::from_env(&args);
    let selected: Vec<&str> = MEASUREMENTS
        .into_iter()
        .filter(|m| settings.filters.is_empty() || settings.filters.iter().any(|f| m.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no measurement matches {:?}; measurements: {}",
            settings.filters,
            MEASUREMENTS.join(" ")
        );
        std::process::exit(2);
    }

    // 5,000 tunnels to the in-process backend are 10,000 descriptors here.
    router::raise_nofile_limit();
    if let Some(limit) = soft_nofile_limit() {
        let fit = limit.saturating_sub(500) / 2;
        if settings.idle_tunnels > fit {
            eprintln!(
                "note: RLIMIT_NOFILE is {limit}: holding {fit} idle tunnels, not {}",
                settings.idle_tunnels
            );
            settings.idle_tunnels = fit.max(1);
        }
    }

    if let Some(c) = &settings.candidates {
        for name in c {
            if !KINDS.iter().any(|k| k.key() == name) {
                eprintln!(
                    "warning: SNIROUTE_BENCH_CANDIDATES: unknown candidate {name:?} (known: direct, splice, copy, haproxy, nginx)"
                );
            }
        }
    }
    let mut info = machine_info(&settings);
    for l in &info {
        println!("{l}");
    }
    let load: f64 = loadavg()
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    if load > 0.5 {
        println!(
            "note: load average {load:.2} before starting: something else uses the CPU; figures will be skewed"
        );
    }

    let hellos = Hellos::new();
    let backend = Backend::start(hellos.all()).expect("start the backend");
    let mut candidates: Vec<Candidate> = Vec::new();
    for kind in KINDS {
        if !settings.wants(kind) {
            continue;
        }
        match start_candidate(kind, &settings, &backend) {
            Ok(proxy) => {
                // Start-up warnings of HAProxy or nginx, if any.
                let said = proxy.as_ref().map(Proxy::log_tail).unwrap_or_default();
                if !said.is_empty() {
                    println!("{} started{said}", kind.label());
                }
                candidates.push(Candidate {
                    kind,
                    proxy,
                    dead: None,
                });
            }
            Err(e) => {
                let msg = format!("{} skipped: {e}", kind.label());
                println!("{msg}");
                info.push(msg);
            }
        }
    }
    if candidates.is_empty() {
        eprintln!("no candidate to measure");
        std::process::exit(2);
    }
    let ctx = Ctx {
        settings: &settings,
        backend: &backend,
        hellos: &hellos,
        ticks_per_sec: clock_ticks_per_sec(),
    };

    let mut results: HashMap<(&'static str, Kind), Vec<f64>> = HashMap::new();
    let mut notes: Vec<String> = Vec::new();
    let started = Instant::now();
    for rep in 0..settings.reps {
        for &name in &selected {
            // A routing check, not a timing: once is enough.
            if name == "split-hello" && rep > 0 {
                continue;
            }
            for k in 0..candidates.len() {
                let cand_idx = (k + rep) % candidates.len();
                let label = candidates[cand_idx].kind.label();
                if candidates[cand_idx].dead.is_some() {
                    continue;
                }
                if let Some(e) = candidates[cand_idx].proxy.as_mut().and_then(Proxy::exited) {
                    let msg = format!("{label} stopped during the run: {e}");
                    eprintln!("{msg}");
                    notes.push(msg);
                    candidates[cand_idx].dead = Some(e);
                    continue;
                }
                if !backend.wait_quiet(Duration::from_secs(20)) {
                    notes.push(format!(
                        "rep {} {name} {label}: {} backend connections of an earlier measurement still open",
                        rep + 1,
                        backend.stats.open.load(Relaxed)
                    ));
                }
                // Memory freed after one round of idle tunnels stays
                // resident and would be reused by the next round: each
                // round gets a fresh proxy process.
                if name == "idle" && candidates[cand_idx].proxy.is_some() {
                    let kind = candidates[cand_idx].kind;
                    candidates[cand_idx].proxy = None;
                    match start_candidate(kind, &settings, &backend) {
                        Ok(p) => candidates[cand_idx].proxy = p,
                        Err(e) => {
                            let msg = format!("{label} did not restart: {e}");
                            eprintln!("{msg}");
                            notes.push(msg);
                            candidates[cand_idx].dead = Some(e);
                            continue;
                        }
                    }
                }
                let bad_before = backend.stats.hellos_bad.load(Relaxed);
                let cand = &candidates[cand_idx];
                let mut outcome = measure(&ctx, name, cand);
                let bad = backend.stats.hellos_bad.load(Relaxed) - bad_before;
                if bad > 0 {
                    outcome.notes.push(format!(
                        "the backend got {bad} connections that did not start with an unchanged ClientHello"
                    ));
                }
                eprintln!(
                    "[rep {}/{} {:>5.0}s] {name:<12} {label:<16} {}",
                    rep + 1,
                    settings.reps,
                    started.elapsed().as_secs_f64(),
                    outcome.summary
                );
                for n in outcome.notes {
                    let msg = format!("rep {} {name} {label}: {n}", rep + 1);
                    eprintln!("  {msg}");
                    notes.push(msg);
                }
                for (id, v) in outcome.values {
                    results.entry((id, cand.kind)).or_default().push(v);
                }
            }
        }
    }

    let kinds: Vec<Kind> = candidates.iter().map(|c| c.kind).collect();
    let table = build_table(&results, &kinds, &selected);
    println!();
    println!("{}", table.text());
    println!(
        "↑ higher is better, ↓ lower is better; sniroute = sniroute splice; best = the better of haproxy and nginx; CPU = utime+stime of the proxy's processes and threads."
    );
    if !notes.is_empty() {
        println!("notes:");
        for n in &notes {
            println!("- {n}");
        }
    }
    println!("load average at the end: {}", loadavg());
    if let Some(path) = &settings.markdown {
        let mut md = String::new();
        for l in &info {
            md.push_str(&format!("- {l}\n"));
        }
        md.push_str(&format!("- load average at the end: {}\n\n", loadavg()));
        md.push_str(&table.markdown());
        md.push_str(
            "\n↑ higher is better, ↓ lower is better; sniroute = sniroute splice; \
             best = the better of haproxy and nginx.\n",
        );
        if !notes.is_empty() {
            md.push_str("\nNotes:\n");
            for n in &notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        match std::fs::write(path, md) {
            Ok(()) => println!("markdown table written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    // Proxies are stopped (by PID) as `candidates` drops, then the backend.
    drop(candidates);
    drop(backend);
}
