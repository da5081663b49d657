//! The load generator of the end-to-end bench, and the idle-tunnel holder.
//!
//! Both run in processes of their own: the bench binary re-executes itself
//! with `SNIROUTE_BENCH_ROLE=loadgen` or `=holder`, so that the measuring
//! process reads the proxy's CPU without sharing a process with the load,
//! and so that thousands of idle tunnels do not count against the
//! descriptor limit of the process that holds the other ends.
//!
//! - **loadgen**: one thread per core, each running a current-thread tokio
//!   runtime (no work stealing, no cross-thread wake-ups) that serves the
//!   backends (a `SO_REUSEPORT` listener per thread and port) and drives its
//!   share of the client connections. Clients spread their connections over
//!   16 loopback source addresses (`127.0.0.1`-`127.0.0.16`, bound before
//!   connect). Every hello is built once, at start. Commands arrive as JSON
//!   lines on stdin, answers and window events leave as JSON lines on stdout.
//! - **holder**: opens `SNIROUTE_BENCH_HOLD_COUNT` connections to
//!   `SNIROUTE_BENCH_HOLD_ADDR`, sends each its ClientHello, says how many it
//!   opened, and holds them until its stdin closes (or it is killed).

use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clienthello::synth::HelloBuilder;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const SINK_NAME: &str = "sink.bench.test";
pub(crate) const ECHO_NAME: &str = "echo.bench.test";
/// The connection-rate route: its backend answers one byte per connection.
pub(crate) const CONN_NAME: &str = "conn.bench.test";
/// Handshake size of the padded hellos (browsers' post-quantum ones).
const PADDED_LEN: usize = 1900;
/// Bytes per write in the throughput streams (and per read in the sink).
const STREAM_CHUNK: usize = 256 * 1024;
const PING_LEN: usize = 64;
/// The byte the connection-rate backend answers.
pub(crate) const MARK: u8 = 0x2a;
/// Connect/write timeout of the holder's blocking sockets.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable that selects a role of the bench binary.
pub(crate) const ROLE_ENV: &str = "SNIROUTE_BENCH_ROLE";

// Phases of a run: set-up (0), warm-up, timed window, stop.
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

// ---------------------------------------------------------------------------
// ClientHellos

/// Which backend a connection is routed to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Route {
    Sink,
    Echo,
    Conn,
}

/// Every ClientHello the clients send, built once.
pub(crate) struct Hellos {
    sink: [Vec<u8>; 2],
    echo: [Vec<u8>; 2],
    conn: [Vec<u8>; 2],
    /// The echo hello with its handshake split across two records.
    pub(crate) split: Vec<u8>,
}

impl Hellos {
    pub(crate) fn new() -> Hellos {
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
            conn: pair(CONN_NAME),
            split,
        }
    }

    /// The hello of connection `i`: every odd one is the padded one.
    pub(crate) fn get(&self, route: Route, i: usize) -> &[u8] {
        match route {
            Route::Sink => &self.sink[i % 2],
            Route::Echo => &self.echo[i % 2],
            Route::Conn => &self.conn[i % 2],
        }
    }

    fn all(&self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        all.extend(self.sink.iter().cloned());
        all.extend(self.echo.iter().cloned());
        all.extend(self.conn.iter().cloned());
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

/// The source address of a client's `k`-th connection: one of `sources`
/// loopback addresses, `None` (let `connect` choose) when `sources` is 1.
fn source(sources: usize, k: usize) -> Option<SocketAddr> {
    (sources > 1).then(|| SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + (k % sources) as u8), 0)))
}

// ---------------------------------------------------------------------------
// Shared state of the loadgen process

#[derive(Default)]
struct BackendStats {
    sink_bytes: AtomicU64,
    hellos_ok: AtomicU64,
    hellos_bad: AtomicU64,
    /// Backend connections currently open.
    open: AtomicI64,
}

struct Shared {
    hellos: Hellos,
    /// `hellos.all()`, what the backend accepts.
    valid: Vec<Vec<u8>>,
    stats: BackendStats,
    /// The phase of the current run, for the backend's accept-to-forward
    /// samples.
    phase: AtomicU8,
    /// Accept-to-forward samples (ns) of the current window.
    a2f: Mutex<Vec<u64>>,
    /// Time zero of the connection stamps: clients and backend share it.
    base: Instant,
    /// `SNIROUTE_BENCH_CLOSE=server`: the conn backend closes first after
    /// its answer, and clients wait for that before they close (default:
    /// the client closes first).
    server_closes: bool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// Shared state of one run's clients.
#[derive(Default)]
struct Run {
    phase: AtomicU8,
    ready: AtomicUsize,
    done: AtomicUsize,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    samples: Mutex<Vec<u64>>,
    /// Samples per client (ping-pong: round trips of each connection).
    per_client: Mutex<Vec<u64>>,
    /// Ends the client tasks that did not stop in time.
    cancel: tokio::sync::Notify,
}

impl Run {
    fn phase(&self) -> u8 {
        self.phase.load(Relaxed)
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Throughput,
    Connrate,
    Pingpong,
}

/// One client connection (or connection loop) of a run.
struct Job {
    op: Op,
    i: usize,
    addr: SocketAddr,
    sources: usize,
    run: Arc<Run>,
}

// ---------------------------------------------------------------------------
// The backend: sink, echo and one-byte answer, on every loadgen thread.

struct OpenGuard<'a>(&'a BackendStats);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, route: Route, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared.stats.open.fetch_add(1, Relaxed);
                tokio::spawn(serve(stream, route, shared.clone()));
            }
            // EMFILE and the like: back off, the listener stays.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// One backend connection: the ClientHello must come first and be one of
/// the hellos the clients send; then sink, echo, or (conn) take the 8-byte
/// connect stamp, record accept-to-forward and answer [`MARK`].
async fn serve(mut s: tokio::net::TcpStream, route: Route, shared: Arc<Shared>) {
    let stats = &shared.stats;
    let _open = OpenGuard(stats);
    let _ = s.set_nodelay(true);
    let mut small = [0u8; 4096];
    let mut big = Vec::new();
    let buf: &mut [u8] = if route == Route::Sink {
        big.resize(STREAM_CHUNK, 0);
        &mut big
    } else {
        &mut small
    };
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
    // When the backend had the whole hello (the read that completed it).
    let hello_at = shared.now_ns();
    if !shared.valid.iter().any(|h| h[..] == buf[..end]) {
        stats.hellos_bad.fetch_add(1, Relaxed);
        return;
    }
    stats.hellos_ok.fetch_add(1, Relaxed);
    match route {
        Route::Sink => {
            stats.sink_bytes.fetch_add((have - end) as u64, Relaxed);
            while let Ok(n @ 1..) = s.read(buf).await {
                stats.sink_bytes.fetch_add(n as u64, Relaxed);
            }
        }
        Route::Echo => {
            if have > end && s.write_all(&buf[end..have]).await.is_err() {
                return;
            }
            while let Ok(n @ 1..) = s.read(buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        Route::Conn => {
            if have < end + 8 && s.read_exact(&mut buf[have..end + 8]).await.is_err() {
                return;
            }
            let stamp = u64::from_le_bytes(buf[end..end + 8].try_into().expect("8 bytes"));
            if shared.phase.load(Relaxed) == MEASURE && stamp != 0 {
                shared
                    .a2f
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(hello_at.saturating_sub(stamp));
            }
            if s.write_all(&[MARK]).await.is_err() {
                return;
            }
            if shared.server_closes {
                return;
            }
            // The client closes first.
            while let Ok(1..) = s.read(buf).await {}
        }
    }
}

// ---------------------------------------------------------------------------
// Clients

async fn connect(addr: SocketAddr, src: Option<SocketAddr>) -> io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(src) = src {
        sock.bind(src)?;
    }
    sock.connect(addr).await
}

async fn client(job: Job, shared: Arc<Shared>) {
    let run = job.run.clone();
    let samples = tokio::select! {
        s = client_body(&job, &shared) => s,
        () = run.cancel.notified() => Vec::new(),
    };
    run.per_client
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(samples.len() as u64);
    run.samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(samples);
    run.done.fetch_add(1, Relaxed);
}

/// Connects and sends the hello; counts the client ready either way.
async fn open(job: &Job, hello: &[u8]) -> Option<tokio::net::TcpStream> {
    let run = &job.run;
    let r = async {
        let mut s = connect(job.addr, source(job.sources, job.i)).await?;
        s.set_nodelay(true)?;
        s.write_all(hello).await?;
        Ok::<_, io::Error>(s)
    }
    .await;
    run.ready.fetch_add(1, Relaxed);
    match r {
        Ok(s) => Some(s),
        Err(e) => {
            run.fail(format!("connect: {e}"));
            None
        }
    }
}

async fn client_body(job: &Job, shared: &Shared) -> Vec<u64> {
    let run = &*job.run;
    match job.op {
        Op::Throughput => {
            let Some(mut s) = open(job, shared.hellos.get(Route::Sink, job.i)).await else {
                return Vec::new();
            };
            let chunk = vec![0xa5u8; STREAM_CHUNK];
            while run.phase() != STOP {
                if let Err(e) = s.write_all(&chunk).await {
                    run.fail(format!("write: {e}"));
                    break;
                }
            }
            Vec::new()
        }
        Op::Pingpong => {
            let Some(mut s) = open(job, shared.hellos.get(Route::Echo, job.i)).await else {
                return Vec::new();
            };
            let mut msg = [0u8; PING_LEN];
            msg[8..16].copy_from_slice(&(job.i as u64).to_le_bytes());
            let mut back = [0u8; PING_LEN];
            let mut samples = Vec::with_capacity(1 << 16);
            let mut seq = 0u64;
            while run.phase() != STOP {
                seq += 1;
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                let start = Instant::now();
                if let Err(e) = async {
                    s.write_all(&msg).await?;
                    s.read_exact(&mut back).await
                }
                .await
                {
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
        }
        Op::Connrate => {
            // The hello, then an 8-byte stamp: when this connect started.
            let mut msg = shared.hellos.get(Route::Conn, job.i).to_vec();
            let stamp_at = msg.len();
            msg.extend([0u8; 8]);
            run.ready.fetch_add(1, Relaxed);
            let mut samples = Vec::with_capacity(1 << 14);
            let mut k = job.i;
            while run.phase() != STOP {
                k += 1;
                let start = Instant::now();
                let stamp = start.duration_since(shared.base).as_nanos() as u64;
                msg[stamp_at..].copy_from_slice(&stamp.max(1).to_le_bytes());
                let r = async {
                    let mut s = connect(job.addr, source(job.sources, k)).await?;
                    s.write_all(&msg).await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    if b[0] != MARK {
                        return Err(io::Error::other("wrong byte answered"));
                    }
                    if shared.server_closes && s.read(&mut b).await? != 0 {
                        return Err(io::Error::other("more than one byte answered"));
                    }
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) if run.phase() == MEASURE => {
                        samples.push(start.elapsed().as_nanos() as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        run.fail(e);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            samples
        }
    }
}

// ---------------------------------------------------------------------------
// The loadgen process

fn listeners(threads: usize) -> io::Result<(u16, Vec<std::net::TcpListener>)> {
    use socket2::{Domain, Socket, Type};
    let mut port = 0;
    let mut out = Vec::new();
    for _ in 0..threads {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
        s.listen(4096)?;
        s.set_nonblocking(true)?;
        let l: std::net::TcpListener = s.into();
        port = l.local_addr()?.port();
        out.push(l);
    }
    Ok((port, out))
}

fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

fn say(v: &Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The loadgen role: never returns.
pub(crate) fn loadgen_main() -> ! {
    router::raise_nofile_limit();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 16);
    let hellos = Hellos::new();
    let shared = Arc::new(Shared {
        valid: hellos.all(),
        hellos,
        stats: BackendStats::default(),
        phase: AtomicU8::new(0),
        a2f: Mutex::new(Vec::new()),
        base: Instant::now(),
        server_closes: std::env::var("SNIROUTE_BENCH_CLOSE").as_deref() == Ok("server"),
    });
    let routes = [Route::Sink, Route::Echo, Route::Conn];
    let mut ports = Vec::new();
    let mut per_thread: Vec<Vec<(Route, std::net::TcpListener)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for route in routes {
        let (port, ls) = listeners(threads).expect("bind the backend listeners");
        ports.push(port);
        for (t, l) in ls.into_iter().enumerate() {
            per_thread[t].push((route, l));
        }
    }
    let mut senders = Vec::new();
    for (t, ls) in per_thread.into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        senders.push(tx);
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(async move {
                    for (route, l) in ls {
                        let l = tokio::net::TcpListener::from_std(l).expect("register listener");
                        tokio::spawn(accept_loop(l, route, shared.clone()));
                    }
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(client(job, shared.clone()));
                    }
                });
            })
            .expect("spawn a loadgen thread");
    }
    say(&json!({"sink": ports[0], "echo": ports[1], "conn": ports[2], "threads": threads}));

    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let cmd: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                say(&json!({"error": format!("bad command: {e}")}));
                continue;
            }
        };
        let stats = &shared.stats;
        match cmd["op"].as_str() {
            Some("stats") => say(&json!({
                "open": stats.open.load(Relaxed),
                "hellos_ok": stats.hellos_ok.load(Relaxed),
                "hellos_bad": stats.hellos_bad.load(Relaxed),
            })),
            Some("quiet") => {
                let max_open = cmd["max_open"].as_i64().unwrap_or(0);
                let deadline = Instant::now()
                    + Duration::from_millis(cmd["timeout_ms"].as_u64().unwrap_or(20_000));
                while stats.open.load(Relaxed) > max_open && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let open = stats.open.load(Relaxed);
                say(&json!({"ok": open <= max_open, "open": open}));
            }
            Some(op @ ("throughput" | "connrate" | "pingpong")) => {
                let op = match op {
                    "throughput" => Op::Throughput,
                    "connrate" => Op::Connrate,
                    _ => Op::Pingpong,
                };
                say(&run(&shared, &senders, op, &cmd));
            }
            _ => say(&json!({"error": format!("unknown command {line}")})),
        }
    }
    std::process::exit(0)
}

/// One run: set-up, warm-up, the timed window (announced with `start` and
/// `end` events so that the bench reads the proxy's CPU at those moments),
/// stop; answers the figures of the window.
fn run(
    shared: &Shared,
    senders: &[tokio::sync::mpsc::UnboundedSender<Job>],
    op: Op,
    cmd: &Value,
) -> Value {
    let Some(addr) = cmd["addr"].as_str().and_then(|a| a.parse().ok()) else {
        return json!({"error": "no addr"});
    };
    let conns = cmd["conns"].as_u64().unwrap_or(1).clamp(1, 4096) as usize;
    let sources = cmd["sources"].as_u64().unwrap_or(16).clamp(1, 250) as usize;
    let warmup = Duration::from_millis(cmd["warmup_ms"].as_u64().unwrap_or(300));
    let window = Duration::from_millis(cmd["window_ms"].as_u64().unwrap_or(3000));
    let run = Arc::new(Run::default());
    for i in 0..conns {
        let job = Job {
            op,
            i,
            addr,
            sources,
            run: run.clone(),
        };
        if senders[i % senders.len()].send(job).is_err() {
            run.fail("a loadgen thread is gone");
            run.ready.fetch_add(1, Relaxed);
            run.done.fetch_add(1, Relaxed);
        }
    }
    let set = |phase: u8| {
        run.phase.store(phase, Relaxed);
        shared.phase.store(phase, Relaxed);
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.ready.load(Relaxed) < conns && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    set(WARMUP);
    std::thread::sleep(warmup);
    shared.a2f.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let b0 = shared.stats.sink_bytes.load(Relaxed);
    say(&json!({"event": "start"}));
    let t0 = Instant::now();
    set(MEASURE);
    std::thread::sleep(window);
    set(STOP);
    let secs = t0.elapsed().as_secs_f64();
    let b1 = shared.stats.sink_bytes.load(Relaxed);
    say(&json!({"event": "end"}));
    let tw = time_wait_sockets();
    let deadline = Instant::now() + Duration::from_secs(15);
    while run.done.load(Relaxed) < conns && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let stuck = conns - run.done.load(Relaxed);
    if stuck > 0 {
        run.cancel.notify_waiters();
        let deadline = Instant::now() + Duration::from_secs(5);
        while run.done.load(Relaxed) < conns && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    set(0);
    let mut samples = std::mem::take(&mut *run.samples.lock().unwrap_or_else(|e| e.into_inner()));
    samples.sort_unstable();
    // How evenly the clients were served: the slowest and the fastest
    // client's samples over the mean (1.0 and 1.0 when all are equal).
    let per_client = std::mem::take(&mut *run.per_client.lock().unwrap_or_else(|e| e.into_inner()));
    let mean = per_client.iter().sum::<u64>() as f64 / per_client.len().max(1) as f64;
    let spread = |v: Option<&u64>| {
        v.filter(|_| mean > 0.0)
            .map_or(Value::Null, |&v| json!(v as f64 / mean))
    };
    let mut a2f = std::mem::take(&mut *shared.a2f.lock().unwrap_or_else(|e| e.into_inner()));
    a2f.sort_unstable();
    let mut first_error = run
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let mut errors = run.errors.load(Relaxed);
    if stuck > 0 {
        errors += stuck as u64;
        first_error.get_or_insert(format!("{stuck} clients did not stop within 15 s"));
    }
    let p = |v: &[u64], q: f64| {
        let x = percentile_us(v, q);
        if x.is_finite() {
            json!(x)
        } else {
            Value::Null
        }
    };
    json!({
        "secs": secs,
        "ops": samples.len(),
        "p50": p(&samples, 0.5),
        "p99": p(&samples, 0.99),
        "p999": p(&samples, 0.999),
        "slowest_client": spread(per_client.iter().min()),
        "fastest_client": spread(per_client.iter().max()),
        "a2f_n": a2f.len(),
        "a2f_p50": p(&a2f, 0.5),
        "a2f_p99": p(&a2f, 0.99),
        "sink_bytes": b1 - b0,
        "errors": errors,
        "first_error": first_error,
        "time_wait": tw,
    })
}

/// TIME_WAIT sockets on the machine (`tw` of /proc/net/sockstat).
fn time_wait_sockets() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The holder process

/// The holder role: never returns.
pub(crate) fn holder_main() -> ! {
    use socket2::{Domain, Socket, Type};
    router::raise_nofile_limit();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let addr: Option<SocketAddr> = env("SNIROUTE_BENCH_HOLD_ADDR").parse().ok();
    let count: usize = env("SNIROUTE_BENCH_HOLD_COUNT").parse().unwrap_or(0);
    let sources: usize = env("SNIROUTE_BENCH_HOLD_SOURCES")
        .parse()
        .unwrap_or(16)
        .clamp(1, 250);
    // Start past the clients of the same source addresses' low ports.
    let first: usize = env("SNIROUTE_BENCH_HOLD_FIRST").parse().unwrap_or(0);
    let Some(addr) = addr else {
        say(&json!({"opened": 0, "error": "no SNIROUTE_BENCH_HOLD_ADDR"}));
        std::process::exit(2)
    };
    let hellos = Hellos::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::with_capacity(count);
    let mut error = None;
    for i in first..first + count {
        if Instant::now() >= deadline {
            error = Some(format!("opened only {} in 60 s", held.len()));
            break;
        }
        let r = (|| -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            if let Some(src) = source(sources, i) {
                s.bind(&src.into())?;
            }
            s.connect_timeout(&addr.into(), IO_TIMEOUT)?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            (&s).write_all(hellos.get(Route::Echo, i))?;
            Ok(s)
        })();
        match r {
            Ok(s) => held.push(s),
            Err(e) => {
                error = Some(format!("opened only {}: {e}", held.len()));
                break;
            }
        }
    }
    say(&json!({"opened": held.len(), "error": error}));
    // Hold until the bench closes our stdin (or kills us).
    let mut sink = Vec::new();
    let _ = io::stdin().lock().read_to_end(&mut sink);
    drop(held);
    std::process::exit(0)
}
