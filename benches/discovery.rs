//! Discovery benchmark: what one full Marathon sync of a large cluster
//! costs the real binary.
//!
//! A fake Marathon on loopback serves `GET /v2/apps?embed=apps.tasks&...`
//! for a cluster of 5,000 apps × 3 tasks, each app shaped like Marathon's
//! own answers (command, env, labels, health checks, port definitions,
//! version info, and per task its health results and ports), and an event
//! stream that announces a deployment whenever the benchmark asks for a
//! sync. sniroute follows 50 of the apps (`marathon_app` routes), as a
//! router for a few dozen clusters would.
//!
//! Measured on the sniroute process, from `/proc`:
//! - CPU time (user + system) per full sync: the process's ticks across
//!   each sync, from the event until `sniroute_discovery_syncs_total`
//!   counts it, minus nothing (the router is otherwise idle);
//! - peak memory of a sync: `VmHWM` after the syncs, over the resident
//!   size before them (the peak is reset through `/proc/PID/clear_refs`
//!   first, where the kernel allows it).
//!
//! Baseline in the same run: parsing the same body into a
//! `serde_json::Value` in this process (the naive way to read it), timed
//! per parse with its peak heap estimated from the value's size; the table
//! shows sniroute's CPU per sync against it.
//!
//! `cargo bench --bench discovery`; environment: `SNIROUTE_BENCH_APPS`
//! (5000), `SNIROUTE_BENCH_SYNCS` (5). Results and how to read them are in
//! benches/README.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{clock_ticks_per_sec, proc_usage, status_kib};

/// Apps followed by routes.
const ROUTES: usize = 50;
/// Tasks per app.
const TASKS: usize = 3;
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize, max: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// One app as Marathon 1.x returns it with `embed=apps.tasks`.
fn app(i: usize) -> Value {
    let id = format!("/bench/team-{:02}/app-{i:04}", i % 40);
    let task_id = |t: usize| format!("bench_team-{:02}_app-{i:04}.instance-{t:04x}-0e1f", i % 40);
    let tasks: Vec<Value> = (0..TASKS)
        .map(|t| {
            let host = format!(
                "10.0.{}.{}",
                (i * TASKS + t) / 250 % 250,
                (i * TASKS + t) % 250 + 1
            );
            json!({
                "id": task_id(t),
                "slaveId": format!("a9d8b2c4-2f33-4e5a-9f8e-1c2d3e4f5a6b-S{}", t + 1),
                "host": host,
                "state": "TASK_RUNNING",
                "startedAt": "2026-11-20T10:15:31.112Z",
                "stagedAt": "2026-11-20T10:15:29.845Z",
                "ports": [20000 + (i % 10000) as u64, 30000 + t as u64],
                "version": "2026-11-20T10:15:20.019Z",
                "ipAddresses": [{"ipAddress": host, "protocol": "IPv4"}],
                "appId": id,
                "healthCheckResults": [{
                    "alive": true,
                    "consecutiveFailures": 0,
                    "firstSuccess": "2026-11-20T10:15:41.001Z",
                    "lastFailure": null,
                    "lastSuccess": "2026-11-29T18:59:12.431Z",
                    "lastFailureCause": null,
                    "instanceId": task_id(t),
                }],
                "localVolumes": [],
            })
        })
        .collect();
    json!({
        "id": id,
        "cmd": "exec ./server --listen 0.0.0.0:$PORT0 --admin 0.0.0.0:$PORT1",
        "args": null,
        "user": null,
        "env": {"LOG_LEVEL": "info", "TEAM": format!("team-{:02}", i % 40)},
        "instances": TASKS,
        "cpus": 0.5,
        "mem": 512,
        "disk": 0,
        "gpus": 0,
        "executor": "",
        "constraints": [["hostname", "UNIQUE"]],
        "uris": [],
        "fetch": [{"uri": "https://artifacts.example.com/server.tgz", "extract": true,
                   "executable": false, "cache": false}],
        "storeUrls": [],
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 300,
        "container": null,
        "healthChecks": [{"gracePeriodSeconds": 300, "intervalSeconds": 60,
                          "maxConsecutiveFailures": 3, "portIndex": 0,
                          "timeoutSeconds": 20, "delaySeconds": 15,
                          "protocol": "TCP", "ipProtocol": "IPv4"}],
        "readinessChecks": [],
        "dependencies": [],
        "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1},
        "labels": {"team": format!("team-{:02}", i % 40), "tier": "backend"},
        "ipAddress": null,
        "version": "2026-11-20T10:15:20.019Z",
        "residency": null,
        "secrets": {},
        "taskKillGracePeriodSeconds": null,
        "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0},
        "killSelection": "YOUNGEST_FIRST",
        "versionInfo": {"lastScalingAt": "2026-11-20T10:15:20.019Z",
                        "lastConfigChangeAt": "2026-11-01T08:00:00.000Z"},
        "portDefinitions": [{"port": 10000 + i as u64, "protocol": "tcp", "name": "https", "labels": {}},
                            {"port": 20000 + i as u64, "protocol": "tcp", "name": "admin", "labels": {}}],
        "requirePorts": false,
        "networks": [{"mode": "host"}],
        "tasksStaged": 0,
        "tasksRunning": TASKS,
        "tasksHealthy": TASKS,
        "tasksUnhealthy": 0,
        "deployments": [],
        "tasks": tasks,
    })
}

/// The fake Marathon: the app list, and event streams to announce changes.
struct FakeMarathon {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl FakeMarathon {
    fn start(body: Arc<Vec<u8>>) -> FakeMarathon {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(Mutex::new(Vec::new()));
        let shared = streams.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (body, streams) = (body.clone(), shared.clone());
                std::thread::spawn(move || serve(conn, &body, &streams));
            }
        });
        FakeMarathon { addr, streams }
    }

    /// Announces a deployment on every open stream; false when none is open.
    fn announce(&self, n: usize) -> bool {
        let data = json!({"eventType": "deployment_success",
                          "timestamp": "2026-11-29T19:00:00.000Z",
                          "id": format!("bench-{n}"), "plan": {"id": format!("bench-{n}")}});
        let frame = format!("event: deployment_success\ndata: {data}\n\n");
        let chunk = format!("{:x}\r\n{frame}\r\n", frame.len());
        let mut streams = self.streams.lock().unwrap();
        streams.retain_mut(|s| s.write_all(chunk.as_bytes()).is_ok());
        !streams.is_empty()
    }
}

fn serve(mut stream: TcpStream, body: &[u8], streams: &Mutex<Vec<TcpStream>>) {
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("/");
    if target.starts_with("/v2/apps?") {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    } else if target.starts_with("/v2/events") {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_ok() {
            streams.lock().unwrap().push(stream);
        }
    } else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

/// The running router, stopped (by PID) when dropped.
struct Router {
    child: Child,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_router(marathon: SocketAddr, apps: usize) -> Router {
    let dir = tempfile::Builder::new()
        .prefix("sniroute-discovery-bench-")
        .tempdir()
        .expect("temp dir");
    let mut routes = String::new();
    for r in 0..ROUTES {
        let i = r * apps / ROUTES;
        routes.push_str(&format!(
            "  - name: app-{i:04}\n    server_names: [app-{i:04}.bench.test]\n    \
             marathon_app: {{id: /bench/team-{:02}/app-{i:04}, port_name: https}}\n    \
             health_check: false\n",
            i % 40
        ));
    }
    let config = dir.path().join("sniroute.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [\"127.0.0.1:0\"]\nadmin: \"127.0.0.1:0\"\n\
             discovery:\n  marathon:\n    urls: [\"http://{marathon}\"]\nroutes:\n{routes}"
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sniroute"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sniroute");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "admin endpoint listening" {
                let _ = tx.send(v["local"].as_str().unwrap_or_default().to_owned());
            } else if v["level"] == "WARN" || v["level"] == "ERROR" {
                eprintln!("  [sniroute] {line}");
            }
        }
    });
    let admin = rx
        .recv_timeout(WAIT)
        .expect("no `admin endpoint listening` line")
        .parse()
        .expect("admin address");
    Router {
        child,
        admin,
        _dir: dir,
    }
}

/// `GET path` on the admin endpoint: the body.
fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&admin, WAIT).expect("admin connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("admin read");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Successful full syncs so far.
fn syncs(admin: SocketAddr) -> u64 {
    admin_get(admin, "/metrics")
        .lines()
        .find(|l| {
            l.starts_with("sniroute_discovery_syncs_total{") && l.contains("result=\"success\"")
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// CPU ticks (user + system) of `pid`, which must be running.
fn cpu(pid: u32) -> u64 {
    proc_usage(pid).expect("sniroute exited").cpu_ticks
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("cargo bench --bench discovery  (env SNIROUTE_BENCH_APPS, SNIROUTE_BENCH_SYNCS)");
        return;
    }
    let apps = env_usize("SNIROUTE_BENCH_APPS", 5000, 50_000);
    let rounds = env_usize("SNIROUTE_BENCH_SYNCS", 5, 50);
    let list: Vec<Value> = (0..apps).map(app).collect();
    let body = Arc::new(serde_json::to_vec(&json!({ "apps": list })).unwrap());
    drop(list);
    println!(
        "cluster: {apps} apps x {TASKS} tasks, app list {:.1} MB; {ROUTES} routes follow apps",
        body.len() as f64 / 1e6
    );

    // Baseline: the same body into a serde_json::Value, in this process.
    let mut parse_ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let v: Value = serde_json::from_slice(&body).expect("parse");
        parse_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(&v);
    }
    let parse_ms = median(&mut parse_ms);

    let marathon = FakeMarathon::start(body.clone());
    let router = start_router(marathon.addr, apps);
    let pid = router.child.id();
    let started = Instant::now();
    while syncs(router.admin) == 0 {
        assert!(started.elapsed() < WAIT, "no first sync within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Settle, then reset the peak and measure `rounds` syncs.
    std::thread::sleep(Duration::from_millis(1500));
    let rss_before = status_kib(pid, "VmRSS:").unwrap_or(0);
    let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let hz = clock_ticks_per_sec();
    let mut cpu_ms = Vec::new();
    let mut wall_ms = Vec::new();
    for n in 0..rounds {
        let before = syncs(router.admin);
        let ticks = cpu(pid);
        let t = Instant::now();
        let deadline = t + WAIT;
        while !marathon.announce(n) {
            assert!(Instant::now() < deadline, "no event stream open");
            std::thread::sleep(Duration::from_millis(20));
        }
        while syncs(router.admin) <= before {
            assert!(Instant::now() < deadline, "sync {n} did not complete");
            std::thread::sleep(Duration::from_millis(5));
        }
        wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
        cpu_ms.push((cpu(pid) - ticks) as f64 / hz * 1e3);
        // The debounce allows one full sync a second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let peak = status_kib(pid, "VmHWM:").unwrap_or(0);
    let cpu = median(&mut cpu_ms);
    let wall = median(&mut wall_ms);
    let status: Value =
        serde_json::from_str(&admin_get(router.admin, "/status")).unwrap_or_default();
    let endpoints: usize = status["routes"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| r["endpoints"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(
        endpoints,
        ROUTES * TASKS,
        "every followed task is an endpoint"
    );

    println!();
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!("| full sync: sniroute CPU (median of {rounds}) | {cpu:.0} ms |");
    println!("| full sync: event to synced, wall (median) | {wall:.0} ms |");
    println!("| baseline: serde_json::Value parse of the body (median) | {parse_ms:.0} ms |");
    println!(
        "| ratio: sniroute CPU / baseline parse | {:.2} |",
        cpu / parse_ms
    );
    println!(
        "| resident before the syncs | {:.1} MB |",
        rss_before as f64 / 1024.0
    );
    if peak_reset {
        println!(
            "| peak during the syncs (VmHWM) | {:.1} MB (+{:.1} MB) |",
            peak as f64 / 1024.0,
            peak.saturating_sub(rss_before) as f64 / 1024.0
        );
    } else {
        println!(
            "| peak since start (VmHWM; clear_refs refused) | {:.1} MB |",
            peak as f64 / 1024.0
        );
    }
    println!("| app list size | {:.1} MB |", body.len() as f64 / 1e6);
}
