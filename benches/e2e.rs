//! End-to-end benchmark on loopback: sniroute (splice, and the copy
//! fallback) against a direct connection, HAProxy and nginx `stream` with
//! `ssl_preread`, all routing the same real-shaped ClientHellos to the same
//! backends.
//!
//! `cargo bench --bench e2e` runs every measurement; `cargo bench --bench
//! e2e -- throughput idle` only those whose name contains one of the words.
//! Environment: SNIROUTE_BENCH_SECS, SNIROUTE_BENCH_REPS,
//! SNIROUTE_BENCH_CANDIDATES, SNIROUTE_BENCH_IDLE_TUNNELS,
//! SNIROUTE_BENCH_SOURCES, SNIROUTE_BENCH_CLOSE, SNIROUTE_BENCH_WORKERS, SNIROUTE_BENCH_MARKDOWN, SNIROUTE_BENCH_PERF_DATA,
//! SNIROUTE_BENCH_HAPROXY, SNIROUTE_BENCH_NGINX,
//! SNIROUTE_BENCH_NGINX_MODULES (see `--help` and benches/README.md).
//!
//! This process only starts and measures: the clients and the backends run
//! in a load-generator process (this binary again, `SNIROUTE_BENCH_ROLE=
//! loadgen`, see `e2e/loadgen.rs`), idle tunnels are held by holder
//! processes (`SNIROUTE_BENCH_ROLE=holder`), all stopped by PID.
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
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{clock_ticks_per_sec, proc_usage, Usage};
use loadgen::{Hellos, Route, CONN_NAME, ECHO_NAME, MARK, ROLE_ENV, SINK_NAME};
use serde_json::{json, Value};

mod common;
#[path = "e2e/loadgen.rs"]
mod loadgen;

/// Read/write/connect timeout of the few blocking sockets of this process.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNRATE_LOOPS: usize = 32;
const GIB: f64 = (1u64 << 30) as f64;
/// Idle tunnels held open by the `scale` measurement's three points.
const SCALE_TUNNELS: [usize; 3] = [0, 4000, 9000];
/// Windows of one-connection ping-pong per run, at least (the target is on
/// the median of at least five).
const PP1_MIN_WINDOWS: usize = 5;

/// Measurement names, in run order; the command-line filter matches them.
const MEASUREMENTS: [&str; 8] = [
    "throughput-1",
    "throughput-8",
    "connrate",
    "pingpong-1",
    "pingpong-32",
    "idle",
    "scale",
    "split-hello",
];

const HELP: &str = "\
End-to-end benchmark: direct, sniroute (splice, copy), HAProxy, nginx on loopback.

usage: cargo bench --bench e2e [-- FILTER...]
  FILTER   run only measurements whose name contains it:
           throughput-1 throughput-8 connrate pingpong-1 pingpong-32 idle scale split-hello

environment:
  SNIROUTE_BENCH_SECS=3          seconds per timed measurement (after a short warm-up)
  SNIROUTE_BENCH_REPS=3          repetitions; the table shows medians
  SNIROUTE_BENCH_CANDIDATES=...  comma list of direct,splice,copy,haproxy,nginx (default: all)
  SNIROUTE_BENCH_IDLE_TUNNELS=5000  tunnels held open by the `idle` measurement
  SNIROUTE_BENCH_SOURCES=16      loopback source addresses the clients spread over (1: no bind)
  SNIROUTE_BENCH_CLOSE=client    who closes a connrate connection first: client or server
  SNIROUTE_BENCH_WORKERS=auto    sniroute's `workers:` setting (auto, a number, or none: no key)
  SNIROUTE_BENCH_MARKDOWN=PATH   also write the table (with date and machine) as markdown
  SNIROUTE_BENCH_PERF_DATA=PATH  record `perf record -g` of sniroute splice during its
                                 connrate windows into PATH (benches/flamegraph.sh sets it)
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
    sources: usize,
    /// `SNIROUTE_BENCH_CLOSE=server` (the load generator reads it too).
    server_closes: bool,
    /// Tunnels a proxy can hold within the descriptor limit.
    tunnel_cap: usize,
    perf_data: Option<PathBuf>,
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
            tunnel_cap: usize::MAX,
            server_closes: match std::env::var("SNIROUTE_BENCH_CLOSE").as_deref() {
                Ok("server") => true,
                Ok("client") | Err(_) => false,
                Ok(v) => {
                    eprintln!("warning: ignoring SNIROUTE_BENCH_CLOSE={v:?}: not client or server");
                    false
                }
            },
            sources: env_num("SNIROUTE_BENCH_SOURCES", 16.0, 1.0, 250.0) as usize,
            perf_data: std::env::var_os("SNIROUTE_BENCH_PERF_DATA").map(PathBuf::from),
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

    /// Idle tunnels the proxies must be configured for (`idle` and `scale`).
    fn max_tunnels(&self) -> usize {
        self.idle_tunnels
            .max(SCALE_TUNNELS[SCALE_TUNNELS.len() - 1])
            .min(self.tunnel_cap)
    }

    fn wants(&self, kind: Kind) -> bool {
        self.candidates
            .as_ref()
            .is_none_or(|c| c.iter().any(|k| k == kind.key()))
    }
}

// ---------------------------------------------------------------------------
// Helper processes: the load generator and the idle-tunnel holders

/// A helper process of ours: this bench binary re-executed in a role,
/// talking JSON lines over its stdin and stdout. Killed by PID when dropped
/// (also while unwinding from a panic).
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Helper {
    fn spawn(role: &str, envs: &[(&str, String)]) -> Result<Helper, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut child = Command::new(&exe)
            .env(ROLE_ENV, role)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} as {role}: {e}", exe.display()))?;
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Helper { child, stdin, out })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, v: &Value) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{v}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("helper {} gone: {e}", self.child.id()))
    }

    /// The next line the helper writes.
    fn recv(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.out.read_line(&mut line) {
            Ok(0) => Err(format!("helper {} exited", self.child.id())),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("helper said {line:?}: {e}")),
            Err(e) => Err(format!("cannot read from helper {}: {e}", self.child.id())),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the load generator's backends listen.
#[derive(Clone, Copy)]
struct Backends {
    sink: SocketAddr,
    echo: SocketAddr,
    conn: SocketAddr,
}

impl Backends {
    fn addr(&self, route: Route) -> SocketAddr {
        match route {
            Route::Sink => self.sink,
            Route::Echo => self.echo,
            Route::Conn => self.conn,
        }
    }
}

/// The load-generator process: backends and clients.
struct LoadGen {
    helper: Helper,
    backends: Backends,
    threads: u64,
}

impl LoadGen {
    fn start() -> Result<LoadGen, String> {
        let mut helper = Helper::spawn("loadgen", &[])?;
        let hello = helper.recv()?;
        let port = |k: &str| {
            hello[k]
                .as_u64()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p as u16)))
                .ok_or_else(|| format!("load generator said {hello}"))
        };
        let backends = Backends {
            sink: port("sink")?,
            echo: port("echo")?,
            conn: port("conn")?,
        };
        let threads = hello["threads"].as_u64().unwrap_or(0);
        Ok(LoadGen {
            helper,
            backends,
            threads,
        })
    }

    fn ask(&mut self, v: Value) -> Result<Value, String> {
        self.helper.send(&v)?;
        self.helper.recv()
    }

    /// Backend connections open, hellos accepted and refused so far.
    fn stats(&mut self) -> (i64, u64, u64) {
        match self.ask(json!({"op": "stats"})) {
            Ok(v) => (
                v["open"].as_i64().unwrap_or(-1),
                v["hellos_ok"].as_u64().unwrap_or(0),
                v["hellos_bad"].as_u64().unwrap_or(0),
            ),
            Err(e) => panic!("the load generator failed: {e}"),
        }
    }

    /// Waits until at most `max_open` backend connections are open; the
    /// number open, as `Err` on timeout.
    fn quiet(&mut self, max_open: usize, timeout: Duration) -> Result<i64, i64> {
        let v = self
            .ask(json!({"op": "quiet", "max_open": max_open, "timeout_ms": timeout.as_millis() as u64}))
            .unwrap_or_else(|e| panic!("the load generator failed: {e}"));
        let open = v["open"].as_i64().unwrap_or(-1);
        if v["ok"] == true {
            Ok(open)
        } else {
            Err(open)
        }
    }

    /// Runs a load: `on_event("start" | "end")` is called at the edges of
    /// the timed window; returns the load generator's figures.
    fn run(&mut self, cmd: Value, mut on_event: impl FnMut(&str)) -> Result<Value, String> {
        self.helper.send(&cmd)?;
        loop {
            let v = self.helper.recv()?;
            if let Some(ev) = v["event"].as_str() {
                on_event(ev);
                continue;
            }
            if let Some(e) = v["error"].as_str() {
                return Err(e.to_owned());
            }
            return Ok(v);
        }
    }
}

/// A holder process keeping `opened` idle tunnels open until dropped.
struct Holder {
    _helper: Helper,
    opened: usize,
    error: Option<String>,
}

impl Holder {
    /// Opens `count` tunnels to `addr` (hello sent), numbered from `first`
    /// (so two holders spread over different source ports).
    fn start(addr: SocketAddr, count: usize, first: usize, sources: usize) -> Holder {
        let helper = Helper::spawn(
            "holder",
            &[
                ("SNIROUTE_BENCH_HOLD_ADDR", addr.to_string()),
                ("SNIROUTE_BENCH_HOLD_COUNT", count.to_string()),
                ("SNIROUTE_BENCH_HOLD_FIRST", first.to_string()),
                ("SNIROUTE_BENCH_HOLD_SOURCES", sources.to_string()),
            ],
        );
        let mut helper = match helper {
            Ok(h) => h,
            Err(e) => panic!("cannot start a holder: {e}"),
        };
        let (opened, error) = match helper.recv() {
            Ok(v) => (
                v["opened"].as_u64().unwrap_or(0) as usize,
                v["error"].as_str().map(str::to_owned),
            ),
            Err(e) => (0, Some(e)),
        };
        Holder {
            _helper: helper,
            opened,
            error,
        }
    }
}

/// `perf record -g` of one process, stopped (SIGINT, then by PID) when
/// dropped: `perf` writes its data file on SIGINT.
struct Perf(Child);

impl Perf {
    fn start(pid: u32, out: &Path) -> Option<Perf> {
        // `fp` (what `-g` means) stops at the first frame of code built
        // without frame pointers (std, tokio); `dwarf` unwinds them too.
        let call_graph =
            std::env::var("SNIROUTE_PERF_CALL_GRAPH").unwrap_or_else(|_| "dwarf".into());
        match Command::new("perf")
            .args(["record", "-q", "-F", "999", "--call-graph", &call_graph])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => Some(Perf(c)),
            Err(e) => {
                eprintln!("cannot start perf: {e}");
                None
            }
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        signal(self.0.id(), "INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
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
            total.run_delay_ns += u.run_delay_ns;
            total.preempted += u.preempted;
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

/// sniroute's `workers:` for the run (`SNIROUTE_BENCH_WORKERS`, default
/// `auto`, sniroute's own default).
fn sniroute_workers() -> String {
    std::env::var("SNIROUTE_BENCH_WORKERS")
        .ok()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "auto".to_owned())
}

fn sniroute_yaml(forwarding: &str, backend: &Backends) -> String {
    // `none`: no `workers` key, for a sniroute from before it existed.
    let workers = match sniroute_workers().as_str() {
        "none" => String::new(),
        w => format!("workers: {w}"),
    };
    format!(
        r#"listeners: ["127.0.0.1:0"]
forwarding: {forwarding}
{workers}
# The holders open thousands of tunnels faster than a busy 2-core machine
# lets sniroute read their hellos: the default caps on pending hellos (2048,
# 256 per source address) would reset some. HAProxy and nginx have none.
limits:
  max_pending_hellos: 20000
  max_pending_hellos_per_source: 20000
routes:
  - name: sink
    server_names: ["{SINK_NAME}"]
    upstreams: ["{sink}"]
    health_check: false
  - name: echo
    server_names: ["{ECHO_NAME}"]
    upstreams: ["{echo}"]
    health_check: false
  - name: conn
    server_names: ["{CONN_NAME}"]
    upstreams: ["{conn}"]
    health_check: false
"#,
        sink = backend.sink,
        echo = backend.echo,
        conn = backend.conn,
    )
}

enum LogEvent {
    Listening(SocketAddr),
    Ready,
    Line(String),
}

fn start_sniroute(forwarding: &'static str, backend: &Backends) -> Result<Proxy, String> {
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
fn haproxy_cfg(port: u16, backend: &Backends, maxconn: usize) -> String {
    format!(
        "global
    nbthread 2
    maxconn {maxconn}
    maxpipes 256

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
    use_backend conn if {{ req.ssl_sni -i {CONN_NAME} }}

backend sink
    server sink {sink}

backend echo
    server echo {echo}

backend conn
    server conn {conn}
",
        sink = backend.sink,
        echo = backend.echo,
        conn = backend.conn,
    )
}

fn start_haproxy(s: &Settings, backend: &Backends) -> Result<Proxy, String> {
    if !s.haproxy.exists() {
        return Err(format!("not installed ({} not found)", s.haproxy.display()));
    }
    let dir = temp_dir("sniroute-bench-haproxy-")?;
    let port = free_port().map_err(|e| e.to_string())?;
    let cfg = dir.path().join("haproxy.cfg");
    let maxconn = s.max_tunnels() + 200;
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

fn nginx_conf(load: &str, dir: &Path, port: u16, backend: &Backends, idle: usize) -> String {
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
        {CONN_NAME} {conn};
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
        conn = backend.conn,
    )
}

fn start_nginx(s: &Settings, backend: &Backends) -> Result<Proxy, String> {
    let load = nginx_stream_module(s)?;
    let dir = temp_dir("sniroute-bench-nginx-")?;
    let port = free_port().map_err(|e| e.to_string())?;
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(&load, dir.path(), port, backend, s.max_tunnels()),
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
fn start_candidate(kind: Kind, s: &Settings, backend: &Backends) -> Result<Option<Proxy>, String> {
    match kind {
        Kind::Direct => Ok(None),
        Kind::Splice => start_sniroute("splice", backend).map(Some),
        Kind::Copy => start_sniroute("copy", backend).map(Some),
        Kind::Haproxy => start_haproxy(s, backend).map(Some),
        Kind::Nginx => start_nginx(s, backend).map(Some),
    }
}

impl Candidate {
    fn addr(&self, route: Route, backend: &Backends) -> SocketAddr {
        match &self.proxy {
            None => backend.addr(route),
            Some(p) => p.listen,
        }
    }

    /// The proxy's PID, for `perf record -p`.
    fn pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(|p| p.child.id())
    }
}

// ---------------------------------------------------------------------------
// Load generation

struct Ctx<'a> {
    settings: &'a Settings,
    lg: LoadGen,
    hellos: Hellos,
    ticks_per_sec: f64,
}

/// What one timed window saw.
struct Window {
    secs: f64,
    /// Proxy CPU seconds in the window (`None`: direct).
    proxy_cpu: Option<f64>,
    /// Load generator CPU seconds in the window.
    lg_cpu: Option<f64>,
    /// Seconds the proxy's threads waited for a CPU while runnable, and
    /// how often one was switched out while it could still run.
    proxy_sched: Option<Sched>,
    /// The same for the load generator's threads.
    lg_sched: Option<Sched>,
    /// The load generator's answer (`ops`, `p50`, ...).
    r: Value,
    errors: u64,
    first_error: Option<String>,
}

/// Scheduler figures of one process over a window.
#[derive(Clone, Copy)]
struct Sched {
    wait_secs: f64,
    preempted: f64,
}

impl Window {
    fn get(&self, k: &str) -> f64 {
        self.r[k].as_f64().unwrap_or(f64::NAN)
    }
}

/// Runs `op` with `conns` connections (or loops) from the load generator
/// to `cand`, reading proxy and load-generator CPU at the window's edges.
/// `profile`: record `perf` of the proxy in the window, if asked for.
fn window(ctx: &mut Ctx<'_>, op: &str, conns: usize, cand: &Candidate, profile: bool) -> Window {
    let route = match op {
        "throughput" => Route::Sink,
        "pingpong" => Route::Echo,
        _ => Route::Conn,
    };
    let s = ctx.settings;
    let cmd = json!({
        "op": op,
        "addr": cand.addr(route, &ctx.lg.backends).to_string(),
        "conns": conns,
        "sources": s.sources,
        "warmup_ms": s.warmup.as_millis() as u64,
        "window_ms": s.secs.as_millis() as u64,
    });
    let lg_pid = ctx.lg.helper.pid();
    let proxy = cand.proxy.as_ref();
    let perf_out = s.perf_data.as_deref().filter(|_| profile);
    let (mut u0, mut u1, mut l0, mut l1) = (None, None, None, None);
    let mut perf = None;
    let result = ctx.lg.run(cmd, |ev| match ev {
        "start" => {
            if let (Some(out), Some(pid)) = (perf_out, cand.pid()) {
                perf = Perf::start(pid, out);
            }
            u0 = proxy.map(Proxy::usage);
            l0 = proc_usage(lg_pid);
        }
        "end" => {
            u1 = proxy.map(Proxy::usage);
            l1 = proc_usage(lg_pid);
            perf = None;
        }
        _ => {}
    });
    drop(perf);
    let ticks = ctx.ticks_per_sec;
    let cpu = |a: Option<Usage>, b: Option<Usage>| {
        a.zip(b)
            .map(|(a, b)| b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks)
    };
    let sched = |a: Option<Usage>, b: Option<Usage>| {
        a.zip(b).map(|(a, b)| Sched {
            wait_secs: b.run_delay_ns.saturating_sub(a.run_delay_ns) as f64 / 1e9,
            preempted: b.preempted.saturating_sub(a.preempted) as f64,
        })
    };
    match result {
        Ok(r) => Window {
            secs: r["secs"].as_f64().unwrap_or(f64::NAN),
            proxy_cpu: cpu(u0, u1),
            lg_cpu: cpu(l0, l1),
            proxy_sched: sched(u0, u1),
            lg_sched: sched(l0, l1),
            errors: r["errors"].as_u64().unwrap_or(0),
            first_error: r["first_error"].as_str().map(str::to_owned),
            r,
        },
        Err(e) => panic!("the load generator failed: {e}"),
    }
}

/// connect → ClientHello of the conn route, a zero stamp (not sampled) →
/// the answer byte → close; from this process, blocking (warm-ups only).
fn cycle(addr: SocketAddr, hello: &[u8]) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut msg = hello.to_vec();
    msg.extend([0u8; 8]);
    s.write_all(&msg)?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != MARK {
        return Err(io::Error::other("wrong byte answered"));
    }
    Ok(())
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

fn throughput(ctx: &mut Ctx<'_>, cand: &Candidate, streams: usize) -> Outcome {
    let w = window(ctx, "throughput", streams, cand, false);
    let ids = if streams == 1 {
        ["tput1", "cpu1", "cores1", "lgcores1"]
    } else {
        ["tput8", "cpu8", "cores8", "lgcores8"]
    };
    let bytes = w.get("sink_bytes");
    let gbps = bytes * 8.0 / w.secs / 1e9;
    let mut o = Outcome::default();
    o.values.push((ids[0], gbps));
    o.summary = format!("{gbps:.2} Gbit/s");
    if let Some(cpu) = w.proxy_cpu {
        if bytes > 0.0 {
            let per_gib = cpu / (bytes / GIB);
            o.values.push((ids[1], per_gib));
            o.values.push((ids[2], cpu / w.secs));
            o.summary += &format!(", {per_gib:.3} CPU s/GiB, proxy {:.2} cores", cpu / w.secs);
        }
    }
    if let Some(lg) = w.lg_cpu {
        o.values.push((ids[3], lg / w.secs));
        o.summary += &format!(", load generator {:.2} cores", lg / w.secs);
    }
    o.window_notes(&w);
    o
}

/// Sockets in TIME_WAIT now (`tw` of `/proc/net/sockstat`) and the
/// kernel's cap on them (`net.ipv4.tcp_max_tw_buckets`).
fn time_wait() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    let tw = words
        .find(|w| *w == "tw")
        .and_then(|_| words.next()?.parse().ok())?;
    let cap = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((tw, cap))
}

/// Brings the TIME_WAIT table to its steady state before a connection-rate
/// window: full. Every loop of the bench closes a connection a few tens of
/// microseconds after opening it, and a closed connection stays in
/// TIME_WAIT for 60 s, so at these rates (over 2,200 closes a second) the
/// table reaches its cap (131,072 here) and stays there; once full, the
/// kernel skips TIME_WAIT on close, which makes `close` and the next
/// `connect` much cheaper (about 40 µs of proxy CPU per connection here).
/// Without this, whoever ran right after `direct` (50,000 connections a
/// second) measured against a full table and the others against a filling
/// one: the order decided the ratio. Untimed connection-rate loads through
/// the candidate itself fill it, at most 8 of them.
fn fill_time_wait(ctx: &mut Ctx<'_>, cand: &Candidate) {
    for _ in 0..8 {
        match time_wait() {
            Some((tw, cap)) if tw < cap - cap / 50 => {
                let _ = window(ctx, "connrate", CONNRATE_LOOPS, cand, false);
            }
            _ => return,
        }
    }
}

/// The figures of a connection-rate window: conn/s, cycle p50 and p99,
/// accept-to-forward p50 and p99, proxy and load-generator CPU per
/// connection (µs), and a summary.
fn connrate_window(
    ctx: &mut Ctx<'_>,
    cand: &Candidate,
    profile: bool,
) -> (Window, [f64; 7], String) {
    fill_time_wait(ctx, cand);
    let w = window(ctx, "connrate", CONNRATE_LOOPS, cand, profile);
    let ops = w.get("ops");
    let rate = ops / w.secs;
    let per_conn = |cpu: Option<f64>| {
        cpu.filter(|_| ops > 0.0)
            .map_or(f64::NAN, |c| c * 1e6 / ops)
    };
    let figures = [
        rate,
        w.get("p50"),
        w.get("p99"),
        w.get("a2f_p50"),
        w.get("a2f_p99"),
        per_conn(w.proxy_cpu),
        per_conn(w.lg_cpu),
    ];
    let summary = format!(
        "{rate:.0} conn/s, cycle p50 {:.0} µs p99 {:.0} µs, accept-to-forward p50 {:.0} µs p99 {:.0} µs, CPU µs/conn proxy {:.1} load generator {:.1}, TIME_WAIT {}",
        figures[1],
        figures[2],
        figures[3],
        figures[4],
        figures[5],
        figures[6],
        w.r["time_wait"]
    );
    (w, figures, summary)
}

fn connrate(ctx: &mut Ctx<'_>, cand: &Candidate) -> Outcome {
    let profile = cand.kind == Kind::Splice;
    let (w, f, summary) = connrate_window(ctx, cand, profile);
    let mut o = Outcome {
        summary,
        ..Outcome::default()
    };
    let ids = [
        "connrate", "conn_p50", "conn_p99", "a2f_p50", "a2f_p99", "conn_cpu", "lg_cpu",
    ];
    o.values
        .extend(ids.into_iter().zip(f).filter(|(_, v)| v.is_finite()));
    o.window_notes(&w);
    o
}

fn pingpong(ctx: &mut Ctx<'_>, cand: &Candidate, conns: usize) -> Outcome {
    // Row ids of the figures below, in their order; with one connection
    // there is no slowest connection to compare, and `zip` leaves it out.
    let ids: &[&'static str] = if conns == 1 {
        &[
            "pp1_p50",
            "pp1_p99",
            "pp1_p999",
            "pp1_rate",
            "pp1_cpu",
            "pp1_wait",
            "pp1_preempt",
            "pp1_lgwait",
        ]
    } else {
        &[
            "pp32_p50",
            "pp32_p99",
            "pp32_p999",
            "pp32_rate",
            "pp32_cpu",
            "pp32_wait",
            "pp32_preempt",
            "pp32_lgwait",
            "pp32_slowest",
        ]
    };
    // One connection: enough windows that the table's median is over at
    // least PP1_MIN_WINDOWS of them.
    let windows = if conns == 1 {
        PP1_MIN_WINDOWS.div_ceil(ctx.settings.reps)
    } else {
        1
    };
    let mut o = Outcome::default();
    for _ in 0..windows {
        let w = window(ctx, "pingpong", conns, cand, false);
        let ops = w.get("ops");
        let per_sec = |v: f64| v / w.secs;
        // The round-trip percentiles; round trips a second and proxy CPU
        // per round trip; how long the proxy's and the load generator's
        // threads waited for a CPU while runnable (ms per second of window)
        // and the proxy's preemptions per second (a tail of milliseconds is
        // a thread that was not running); the slowest connection's round
        // trips over the mean.
        let figures = [
            w.get("p50"),
            w.get("p99"),
            w.get("p999"),
            per_sec(ops),
            w.proxy_cpu
                .filter(|_| ops > 0.0)
                .map_or(f64::NAN, |c| c * 1e6 / ops),
            w.proxy_sched
                .map_or(f64::NAN, |s| per_sec(s.wait_secs) * 1e3),
            w.proxy_sched.map_or(f64::NAN, |s| per_sec(s.preempted)),
            w.lg_sched.map_or(f64::NAN, |s| per_sec(s.wait_secs) * 1e3),
            w.get("slowest_client"),
        ];
        o.values.extend(
            ids.iter()
                .copied()
                .zip(figures)
                .filter(|(_, v)| v.is_finite()),
        );
        if !o.summary.is_empty() {
            o.summary += "; ";
        }
        o.summary += &format!(
            "{} round trips, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, proxy CPU {:.1} µs per round trip, run-queue wait ms/s proxy {:.1} load generator {:.1}, proxy preemptions/s {:.0}, round trips of the slowest/fastest connection ÷ mean {:.2}/{:.2}",
            w.r["ops"], figures[0], figures[1], figures[2], figures[4], figures[5], figures[7], figures[6], figures[8], w.get("fastest_client")
        );
        o.window_notes(&w);
    }
    o
}

/// Opens a few tunnels through a freshly started proxy, so that what it sets
/// up once (threads, pools, tables) does not count per tunnel, and waits
/// until they are closed.
fn warm_up(ctx: &mut Ctx<'_>, cand: &Candidate, o: &mut Outcome) {
    let addr = cand.addr(Route::Conn, &ctx.lg.backends);
    for i in 0..16 {
        if let Err(e) = cycle(addr, ctx.hellos.get(Route::Conn, i)) {
            o.notes.push(format!("warm-up tunnel failed: {e}"));
        }
    }
    if ctx.lg.quiet(0, Duration::from_secs(10)).is_err() {
        o.notes.push("warm-up tunnels still open after 10 s".into());
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Opens `count` idle tunnels from a holder process and waits until the
/// backend has their hellos; notes what fell short.
fn hold(
    ctx: &mut Ctx<'_>,
    cand: &Candidate,
    count: usize,
    first: usize,
    o: &mut Outcome,
) -> Holder {
    let (_, ok_before, _) = ctx.lg.stats();
    let holder = Holder::start(
        cand.addr(Route::Echo, &ctx.lg.backends),
        count,
        first,
        ctx.settings.sources,
    );
    if let Some(e) = &holder.error {
        o.notes.push(format!("holder: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reached;
    loop {
        reached = ctx.lg.stats().1 - ok_before;
        if reached >= holder.opened as u64 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if reached < holder.opened as u64 {
        o.notes.push(format!(
            "only {reached} of {} tunnels reached the backend within 30 s",
            holder.opened
        ));
    }
    holder
}

fn idle(ctx: &mut Ctx<'_>, cand: &Candidate) -> Outcome {
    let mut o = Outcome::default();
    let Some(proxy) = cand.proxy.as_ref() else {
        o.summary = "n/a (no proxy)".into();
        return o;
    };
    warm_up(ctx, cand, &mut o);
    let before = proxy.usage();
    let holder = hold(ctx, cand, ctx.settings.idle_tunnels, 0, &mut o);
    // Let the proxy finish whatever it does after connecting upstream.
    std::thread::sleep(Duration::from_millis(500));
    let after = proxy.usage();
    let opened = holder.opened;
    drop(holder);
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

/// The scale curve: connection rate, accept-to-forward and CPU per
/// connection with 0, 4,000 and 9,000 idle tunnels held open (by holder
/// processes), and RSS per tunnel at 4,000 and 9,000.
fn scale(ctx: &mut Ctx<'_>, cand: &Candidate) -> Outcome {
    let mut o = Outcome::default();
    let tunnels = SCALE_TUNNELS.map(|n| n.min(ctx.settings.max_tunnels()));
    warm_up(ctx, cand, &mut o);
    let rss = |c: &Candidate| c.proxy.as_ref().map(|p| p.usage().rss_kib as f64);
    let rss0 = rss(cand);
    // Grow to 4,000, then to 9,000; measure at 9,000, 4,000, 0 as the
    // holders go away (RSS is read before any load ran through the tunnels).
    let mut holders = Vec::new();
    let mut rss_at = [None; 3];
    let mut held = [0usize; 3];
    for p in 1..3 {
        let h = hold(
            ctx,
            cand,
            tunnels[p] - tunnels[p - 1],
            tunnels[p - 1],
            &mut o,
        );
        held[p] = held[p - 1] + h.opened;
        holders.push(h);
        std::thread::sleep(Duration::from_millis(500));
        rss_at[p] = rss(cand);
    }
    let mut f = [[f64::NAN; 7]; 3];
    for p in (0..3).rev() {
        holders.truncate(p);
        if p < 2 && ctx.lg.quiet(held[p], Duration::from_secs(20)).is_err() {
            o.notes.push(format!(
                "tunnels of the {} point still open after 20 s",
                tunnels[p + 1]
            ));
        }
        let (w, figures, summary) = connrate_window(ctx, cand, false);
        eprintln!("    {:>5} idle: {summary}", held[p]);
        o.window_notes(&w);
        f[p] = figures;
    }
    let ids = [
        ["sc0_rate", "sc0_a2f", "sc0_cpu"],
        ["sc4_rate", "sc4_a2f", "sc4_cpu"],
        ["sc9_rate", "sc9_a2f", "sc9_cpu"],
    ];
    for p in 0..3 {
        // conn/s, accept-to-forward p99, proxy CPU per connection.
        for (id, v) in ids[p].into_iter().zip([f[p][0], f[p][4], f[p][5]]) {
            if v.is_finite() {
                o.values.push((id, v));
            }
        }
    }
    if f[0][0] > 0.0 {
        o.values.push(("sc_flat", f[2][0] / f[0][0]));
    }
    for (p, id) in [(1, "sc4_rss"), (2, "sc9_rss")] {
        if let (Some(a), Some(b)) = (rss0, rss_at[p]) {
            if held[p] > 0 {
                o.values.push((id, (b - a) / held[p] as f64));
            }
        }
    }
    o.summary = format!(
        "conn/s {:.0} / {:.0} / {:.0} and accept-to-forward p99 {:.0} / {:.0} / {:.0} µs at {} / {} / {} idle tunnels",
        f[0][0], f[1][0], f[2][0], f[0][4], f[1][4], f[2][4], held[0], held[1], held[2]
    );
    o
}

fn split_hello(ctx: &mut Ctx<'_>, cand: &Candidate) -> Outcome {
    let mut o = Outcome::default();
    if cand.proxy.is_none() {
        o.summary = "n/a (no routing)".into();
        return o;
    }
    let addr = cand.addr(Route::Echo, &ctx.lg.backends);
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

fn measure(ctx: &mut Ctx<'_>, name: &str, cand: &Candidate) -> Outcome {
    match name {
        "throughput-1" => throughput(ctx, cand, 1),
        "throughput-8" => throughput(ctx, cand, 8),
        "connrate" => connrate(ctx, cand),
        "pingpong-1" => pingpong(ctx, cand, 1),
        "pingpong-32" => pingpong(ctx, cand, 32),
        "idle" => idle(ctx, cand),
        "scale" => scale(ctx, cand),
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
    /// sniroute ÷ HAProxy, at most.
    AtMostHaproxy(f64),
    /// sniroute ÷ HAProxy, at most, as the median of at least this many
    /// windows.
    AtMostHaproxyOver(f64, usize),
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
    row("cores1", "throughput-1", "proxy CPU use, 1 stream", "cores", Better::Lower, Target::None, ""),
    row("lgcores1", "throughput-1", "load generator CPU use, 1 stream", "cores", Better::Lower, Target::None, ""),
    row("tput8", "throughput-8", "throughput, 8 streams", "Gbit/s", Better::Higher, Target::AtLeastBest(1.15), "≥1.15× best"),
    row("cpu8", "throughput-8", "proxy CPU per GiB, 8 streams", "CPU s/GiB", Better::Lower, Target::BelowBest, "< best"),
    row("cores8", "throughput-8", "proxy CPU use, 8 streams", "cores", Better::Lower, Target::None, ""),
    row("lgcores8", "throughput-8", "load generator CPU use, 8 streams", "cores", Better::Lower, Target::None, ""),
    row("connrate", "connrate", "new connections, 32 loops", "conn/s", Better::Higher, Target::VsHaproxy(1.1), "≥1.1× haproxy"),
    row("conn_p50", "connrate", "connection cycle p50", "µs", Better::Lower, Target::None, ""),
    row("conn_p99", "connrate", "connection cycle p99", "µs", Better::Lower, Target::None, ""),
    row("a2f_p50", "connrate", "accept-to-forward p50", "µs", Better::Lower, Target::None, ""),
    row("a2f_p99", "connrate", "accept-to-forward p99", "µs", Better::Lower, Target::None, ""),
    row("conn_cpu", "connrate", "proxy CPU per connection", "CPU µs", Better::Lower, Target::AtMostHaproxy(0.85), "≤0.85× haproxy"),
    row("lg_cpu", "connrate", "load generator CPU per connection", "CPU µs", Better::Lower, Target::None, ""),
    row("pp1_p50", "pingpong-1", "64 B ping-pong, 1 conn, p50", "µs", Better::Lower, Target::AtMostHaproxyOver(0.95, PP1_MIN_WINDOWS), "≤0.95× haproxy, median of ≥5"),
    row("pp1_p99", "pingpong-1", "64 B ping-pong, 1 conn, p99", "µs", Better::Lower, Target::None, ""),
    row("pp1_p999", "pingpong-1", "64 B ping-pong, 1 conn, p99.9", "µs", Better::Lower, Target::None, ""),
    row("pp1_rate", "pingpong-1", "64 B ping-pong, 1 conn, round trips/s", "1/s", Better::Higher, Target::None, ""),
    row("pp1_cpu", "pingpong-1", "proxy CPU per round trip, 1 conn", "CPU µs", Better::Lower, Target::None, ""),
    row("pp1_wait", "pingpong-1", "proxy threads waiting for a CPU, 1 conn", "ms/s", Better::Lower, Target::None, ""),
    row("pp1_preempt", "pingpong-1", "proxy threads preempted, 1 conn", "1/s", Better::Lower, Target::None, ""),
    row("pp1_lgwait", "pingpong-1", "load generator threads waiting for a CPU, 1 conn", "ms/s", Better::Lower, Target::None, ""),
    row("pp32_p50", "pingpong-32", "64 B ping-pong, 32 conns, p50", "µs", Better::Lower, Target::None, ""),
    row("pp32_p99", "pingpong-32", "64 B ping-pong, 32 conns, p99", "µs", Better::Lower, Target::AtMostBest(1.0), "≤ best"),
    row("pp32_p999", "pingpong-32", "64 B ping-pong, 32 conns, p99.9", "µs", Better::Lower, Target::None, ""),
    row("pp32_rate", "pingpong-32", "64 B ping-pong, 32 conns, round trips/s", "1/s", Better::Higher, Target::None, ""),
    row("pp32_cpu", "pingpong-32", "proxy CPU per round trip, 32 conns", "CPU µs", Better::Lower, Target::None, ""),
    row("pp32_wait", "pingpong-32", "proxy threads waiting for a CPU, 32 conns", "ms/s", Better::Lower, Target::None, ""),
    row("pp32_preempt", "pingpong-32", "proxy threads preempted, 32 conns", "1/s", Better::Lower, Target::None, ""),
    row("pp32_lgwait", "pingpong-32", "load generator threads waiting for a CPU, 32 conns", "ms/s", Better::Lower, Target::None, ""),
    row("pp32_slowest", "pingpong-32", "round trips of the slowest of 32 conns ÷ mean", "ratio", Better::Higher, Target::None, ""),
    row("idle_rss", "idle", "RSS per idle tunnel", "KiB", Better::Lower, Target::AtMost(2.0), "≤ 2 KiB"),
    row("idle_fds", "idle", "descriptors per idle tunnel", "fds", Better::Lower, Target::AtMost(2.0), "≤ 2"),
    row("sc0_rate", "scale", "conn/s, 0 idle tunnels", "conn/s", Better::Higher, Target::None, ""),
    row("sc4_rate", "scale", "conn/s, 4,000 idle tunnels", "conn/s", Better::Higher, Target::None, ""),
    row("sc9_rate", "scale", "conn/s, 9,000 idle tunnels", "conn/s", Better::Higher, Target::None, ""),
    row("sc_flat", "scale", "conn/s at 9,000 ÷ at 0 idle", "ratio", Better::Higher, Target::None, ""),
    row("sc0_a2f", "scale", "accept-to-forward p99, 0 idle", "µs", Better::Lower, Target::None, ""),
    row("sc4_a2f", "scale", "accept-to-forward p99, 4,000 idle", "µs", Better::Lower, Target::None, ""),
    row("sc9_a2f", "scale", "accept-to-forward p99, 9,000 idle", "µs", Better::Lower, Target::None, ""),
    row("sc0_cpu", "scale", "proxy CPU per conn, 0 idle", "CPU µs", Better::Lower, Target::None, ""),
    row("sc4_cpu", "scale", "proxy CPU per conn, 4,000 idle", "CPU µs", Better::Lower, Target::None, ""),
    row("sc9_cpu", "scale", "proxy CPU per conn, 9,000 idle", "CPU µs", Better::Lower, Target::None, ""),
    row("sc4_rss", "scale", "RSS per tunnel, 4,000 idle", "KiB", Better::Lower, Target::None, ""),
    row("sc9_rss", "scale", "RSS per tunnel, 9,000 idle", "KiB", Better::Lower, Target::None, ""),
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
        "Gbit/s" | "KiB" | "fds" | "cores" | "ratio" => format!("{v:.2}"),
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
        let count = |k: Kind| results.get(&(row.id, k)).map_or(0, Vec::len);
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
            Target::AtMostHaproxy(x) => vs_haproxy.map(|r| r <= x),
            Target::AtMostHaproxyOver(x, n) => vs_haproxy
                .filter(|_| count(Kind::Splice) >= n && count(Kind::Haproxy) >= n)
                .map(|r| r <= x),
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
            "run: SNIROUTE_BENCH_SECS={} SNIROUTE_BENCH_REPS={} SNIROUTE_BENCH_IDLE_TUNNELS={} SNIROUTE_BENCH_SOURCES={} SNIROUTE_BENCH_CLOSE={} SNIROUTE_BENCH_WORKERS={}, medians of {} repetitions",
            s.secs.as_secs_f64(),
            s.reps,
            s.idle_tunnels,
            s.sources,
            if s.server_closes { "server" } else { "client" },
            sniroute_workers(),
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
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("loadgen") => loadgen::loadgen_main(),
        Ok("holder") => loadgen::holder_main(),
        _ => {}
    }
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

    // Each tunnel costs a proxy two descriptors (the holders and the load
    // generator one each): the proxies' limit, the hard limit here, decides.
    router::raise_nofile_limit();
    if let Some(limit) = soft_nofile_limit() {
        let fit = limit.saturating_sub(500) / 2;
        settings.tunnel_cap = fit.max(1);
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

    let lg = LoadGen::start().unwrap_or_else(|e| panic!("cannot start the load generator: {e}"));
    let backend = lg.backends;
    println!(
        "load generator: pid {}, {} threads; clients spread over {} source address(es)",
        lg.helper.pid(),
        lg.threads,
        settings.sources
    );
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
    let mut ctx = Ctx {
        settings: &settings,
        lg,
        hellos: Hellos::new(),
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
                if let Err(open) = ctx.lg.quiet(0, Duration::from_secs(20)) {
                    notes.push(format!(
                        "rep {} {name} {label}: {open} backend connections of an earlier measurement still open",
                        rep + 1,
                    ));
                }
                // Memory freed after one round of idle tunnels stays
                // resident and would be reused by the next round: each
                // round gets a fresh proxy process.
                if matches!(name, "idle" | "scale") && candidates[cand_idx].proxy.is_some() {
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
                let bad_before = ctx.lg.stats().2;
                let cand = &candidates[cand_idx];
                let mut outcome = measure(&mut ctx, name, cand);
                let bad = ctx.lg.stats().2 - bad_before;
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
    // Proxies are stopped (by PID) as `candidates` drops, then the load
    // generator.
    drop(candidates);
    drop(ctx);
}
