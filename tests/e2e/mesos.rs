//! Mesos discovery end to end: the real binary follows a fake Mesos master.
//!
//! [`FakeMesos`] stands for a Mesos master's operator API v1 as DC/OS runs
//! it (`http://leader.mesos:5050/api/v1`), speaking its documented JSON
//! over HTTP/1.1 on loopback (field names as in Mesos'
//! `include/mesos/v1/master/master.proto` and `mesos.proto`):
//! - `POST /api/v1` `{"type":"GET_STATE"}` (`Content-Type` and `Accept`
//!   `application/json`): `{"type":"GET_STATE","get_state":{...}}` with
//!   `get_tasks`, `get_frameworks`, `get_agents` and `get_executors`;
//! - `POST /api/v1` `{"type":"SUBSCRIBE"}` (`Accept: application/json`; the
//!   master answers 406 when `Accept` allows neither JSON nor protobuf, as
//!   `Master::Http::api` does): a chunked `application/json` response of
//!   RecordIO-framed JSON events (docs/operator-http-api.md), `SUBSCRIBED` first
//!   (the state and `heartbeat_interval_seconds`), then `TASK_ADDED`,
//!   `TASK_UPDATED`, ... and a `HEARTBEAT` every interval. Every record is
//!   written in two chunks cut inside it, so records arrive split;
//! - a non-leading master answers 307 with a scheme-relative `Location`
//!   (`//host:port/api/v1`), as Mesos' `redirect()` does;
//! - with no leader elected, 503.
//!
//! Tests wait for `/status` to show the endpoint set, never for a time.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{reach, Router};
use clienthello::synth::HelloBuilder;

/// The heartbeat interval the fake announces and keeps (the router's
/// stall timeout is three of them).
const HEARTBEAT: Duration = Duration::from_millis(400);
const FRAMEWORK: &str = "dev/kubernetes01";

/// How a fake master answers.
#[derive(Clone, Debug)]
enum Role {
    Leader,
    /// A non-leading master: 307 to the leader at this address.
    NonLeader(SocketAddr),
    /// No leader elected: 503 to everything.
    NoLeader,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// `get_state`'s content: the tasks; frameworks and agents are fixed.
    tasks: Vec<Value>,
    /// `GET_STATE` answers garbage (a half-written JSON document).
    garbage: bool,
    streams: Vec<TcpStream>,
    get_state_requests: usize,
    subscribe_requests: usize,
    redirects: usize,
    unavailable: usize,
}

pub(crate) struct FakeMesos {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    heartbeats: Arc<AtomicBool>,
}

impl FakeMesos {
    fn start(role: Role, tasks: Vec<Value>) -> FakeMesos {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            role,
            tasks,
            garbage: false,
            streams: Vec::new(),
            get_state_requests: 0,
            subscribe_requests: 0,
            redirects: 0,
            unavailable: 0,
        }));
        let heartbeats = Arc::new(AtomicBool::new(true));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
        // The master's heartbeat timer; it stops with the fake (weak).
        let weak = Arc::downgrade(&state);
        let on = heartbeats.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(HEARTBEAT);
            let Some(state) = weak.upgrade() else { return };
            if on.load(Ordering::SeqCst) {
                let mut s = state.lock().unwrap();
                let record = recordio(&json!({"type": "HEARTBEAT"}));
                s.streams
                    .retain_mut(|stream| write_split(stream, &record).is_ok());
            }
        });
        FakeMesos {
            addr,
            state,
            heartbeats,
        }
    }

    pub(crate) fn leader(tasks: Vec<Value>) -> FakeMesos {
        Self::start(Role::Leader, tasks)
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_role(&self, role: Role) {
        self.state.lock().unwrap().role = role;
    }

    /// (GET_STATE calls, SUBSCRIBE calls, redirects, 503s).
    fn counts(&self) -> (usize, usize, usize, usize) {
        let s = self.state.lock().unwrap();
        (
            s.get_state_requests,
            s.subscribe_requests,
            s.redirects,
            s.unavailable,
        )
    }

    /// Sends an event to every open stream.
    fn emit(&self, event: &Value) {
        let record = recordio(event);
        let mut s = self.state.lock().unwrap();
        s.streams
            .retain_mut(|stream| write_split(stream, &record).is_ok());
    }

    /// Sends raw bytes as a record (garbage).
    fn emit_raw(&self, record: &[u8]) {
        let mut framed = format!("{}\n", record.len()).into_bytes();
        framed.extend_from_slice(record);
        let mut s = self.state.lock().unwrap();
        s.streams
            .retain_mut(|stream| write_split(stream, &framed).is_ok());
    }

    /// A task launched: in the state, and `TASK_ADDED` on the streams.
    fn add_task(&self, task: Value) {
        self.state.lock().unwrap().tasks.push(task.clone());
        self.emit(&json!({"type": "TASK_ADDED", "task_added": {"task": task}}));
    }

    /// A task's new state (and health), as the master forwards it.
    fn update_task(&self, id: &str, state: &str, healthy: Option<bool>) {
        let mut status = json!({
            "task_id": {"value": id}, "state": state, "source": "SOURCE_EXECUTOR",
            "agent_id": {"value": "agent-1"}, "timestamp": 1714564800.5,
            "uuid": "mhYHr3VkSBiwq4mVBfSbfg=="
        });
        if let Some(h) = healthy {
            status["healthy"] = json!(h);
        }
        {
            let mut s = self.state.lock().unwrap();
            for t in s.tasks.iter_mut().filter(|t| t["task_id"]["value"] == id) {
                t["state"] = json!(state);
                t["statuses"].as_array_mut().unwrap().push(status.clone());
            }
        }
        self.emit(&json!({"type": "TASK_UPDATED", "task_updated": {
            "framework_id": {"value": "fw-k8s"}, "status": status, "state": state}}));
    }

    /// Replaces the tasks without any event (what a lost stream misses).
    fn set_tasks_silently(&self, tasks: Vec<Value>) {
        self.state.lock().unwrap().tasks = tasks;
    }

    /// Writes the first half of an event's record to every stream, then
    /// closes them (a master that dies mid-write).
    fn cut_streams_mid_event(&self, event: &Value) {
        let record = recordio(event);
        let half = &record[..record.len() / 2];
        for mut stream in self.state.lock().unwrap().streams.drain(..) {
            let _ = write_split(&mut stream, half);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn set_garbage(&self, garbage: bool) {
        self.state.lock().unwrap().garbage = garbage;
    }

    fn open_streams(&self) -> usize {
        self.state.lock().unwrap().streams.len()
    }
}

/// `get_state` as the master writes it.
fn get_state(tasks: &[Value]) -> Value {
    json!({
        "get_tasks": {"tasks": tasks, "pending_tasks": [], "completed_tasks": [], "orphan_tasks": []},
        "get_executors": {"executors": [], "orphan_executors": []},
        "get_frameworks": {"frameworks": [
            {"framework_info": {"id": {"value": "fw-k8s"}, "name": FRAMEWORK, "user": "nobody",
                                "role": "dev__kubernetes01-role", "capabilities": [{"type": "MULTI_ROLE"}]},
             "active": true, "connected": true, "recovered": false,
             "registered_time": {"nanoseconds": 1714564000000000000u64}},
            {"framework_info": {"id": {"value": "fw-marathon"}, "name": "marathon", "user": "root"},
             "active": true, "connected": true, "recovered": false}],
         "completed_frameworks": []},
        "get_agents": {"agents": [
            {"agent_info": {"id": {"value": "agent-1"}, "hostname": "127.0.0.1", "port": 5051},
             "active": true, "version": "1.13.0", "pid": "slave(1)@127.0.0.1:5051"},
            {"agent_info": {"id": {"value": "agent-2"}, "hostname": "localhost.invalid.", "port": 5051},
             "active": true, "version": "1.13.0"}],
         "recovered_agents": []}
    })
}

/// A task of `framework` on agent-1 (host `127.0.0.1`) whose port named
/// `apiserver` is `port`; `ip` puts it on a container network instead.
pub(crate) fn task(id: &str, name: &str, framework: &str, port: u16, ip: Option<&str>) -> Value {
    let mut status = json!({"task_id": {"value": id}, "state": "TASK_RUNNING",
        "source": "SOURCE_EXECUTOR", "agent_id": {"value": "agent-1"},
        "timestamp": 1714564800.0, "healthy": true});
    if let Some(ip) = ip {
        status["container_status"] = json!({"network_infos": [{"name": "dcos",
            "ip_addresses": [{"protocol": "IPv4", "ip_address": ip}]}]});
    }
    json!({
        "name": name,
        "task_id": {"value": id},
        "framework_id": {"value": framework},
        "agent_id": {"value": "agent-1"},
        "state": "TASK_RUNNING",
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}, "role": "*"}],
        "statuses": [status],
        "status_update_state": "TASK_RUNNING",
        "health_check": {"type": "TCP", "tcp": {"port": port}, "interval_seconds": 10.0},
        "discovery": {"visibility": "EXTERNAL", "name": name,
            "ports": {"ports": [
                {"number": 1, "name": "metrics", "protocol": "tcp"},
                {"number": port, "name": "apiserver", "protocol": "tcp"}]}},
        "user": "nobody"
    })
}

fn k8s_task(n: usize, upstream: &Upstream) -> Value {
    task(
        &format!("kube-control-plane-{n}-instance__{n}"),
        &format!("kube-control-plane-{n}-instance"),
        "fw-k8s",
        upstream.addr.port(),
        None,
    )
}

fn recordio(event: &Value) -> Vec<u8> {
    let text = event.to_string();
    let mut out = format!("{}\n", text.len()).into_bytes();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Writes `data` as two chunks, cut in its middle, flushed apart.
fn write_split(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let (a, b) = data.split_at(data.len() / 2);
    for part in [a, b] {
        if part.is_empty() {
            continue;
        }
        stream.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
        stream.write_all(part)?;
        stream.write_all(b"\r\n")?;
        stream.flush()?;
    }
    Ok(())
}

fn respond(stream: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(mut stream: TcpStream, state: &Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if (method, target) != ("POST", "/api/v1") {
        return respond(&mut stream, "404 Not Found", "", "");
    }
    assert_eq!(header("content-type"), "application/json", "{headers:?}");
    let call: Value = serde_json::from_slice(&body).expect("a JSON call");
    let kind = call["type"].as_str().unwrap_or_default().to_owned();
    let mut s = state.lock().unwrap();
    match s.role.clone() {
        Role::NoLeader => {
            s.unavailable += 1;
            drop(s);
            return respond(
                &mut stream,
                "503 Service Unavailable",
                "",
                "No leader elected",
            );
        }
        Role::NonLeader(leader) => {
            s.redirects += 1;
            drop(s);
            return respond(
                &mut stream,
                "307 Temporary Redirect",
                &format!("Location: //{leader}/api/v1\r\n"),
                "",
            );
        }
        Role::Leader => {}
    }
    match kind.as_str() {
        "GET_STATE" => {
            s.get_state_requests += 1;
            assert_eq!(header("accept"), "application/json", "{headers:?}");
            let body = if s.garbage {
                r#"{"type":"GET_STATE","get_state":{"get_tasks":{"tasks":[{"name""#.to_owned()
            } else {
                json!({"type": "GET_STATE", "get_state": get_state(&s.tasks)}).to_string()
            };
            drop(s);
            respond(
                &mut stream,
                "200 OK",
                "Content-Type: application/json\r\n",
                &body,
            );
        }
        "SUBSCRIBE" => {
            s.subscribe_requests += 1;
            if !header("accept").contains("application/json") {
                drop(s);
                return respond(
                    &mut stream,
                    "406 Not Acceptable",
                    "",
                    "Expecting 'Accept' to allow 'application/x-protobuf' or 'application/json'",
                );
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let subscribed = json!({"type": "SUBSCRIBED", "subscribed": {
                "get_state": get_state(&s.tasks),
                "heartbeat_interval_seconds": HEARTBEAT.as_secs_f64()}});
            if write_split(&mut stream, &recordio(&subscribed)).is_ok() {
                s.streams.push(stream);
            }
        }
        _ => {
            drop(s);
            respond(&mut stream, "400 Bad Request", "", "Unknown call");
        }
    }
}

fn config(urls: &[String], route: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 2s, connect: 2s}}
discovery:
  mesos:
    urls: [{}]
routes:
{route}
"#,
        urls.join(", ")
    )
}

const K8S_ROUTE: &str = "  - name: k8s
    server_names: [k8s.test]
    mesos_tasks: {framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}
    health_check: false";

/// `/status` as JSON.
fn status(router: &Router) -> Value {
    serde_json::from_str(&router.admin_get("/status").1).unwrap()
}

/// The endpoint addresses `/status` shows for route `route`.
fn endpoints(router: &Router, route: &str) -> BTreeSet<SocketAddr> {
    status(router)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Waits until route `k8s` has exactly `want` as endpoints.
fn wait_endpoints(router: &Router, want: &[SocketAddr]) {
    let want: BTreeSet<SocketAddr> = want.iter().copied().collect();
    wait(
        || endpoints(router, "k8s") == want,
        || format!("route k8s is not {want:?}; /status: {}", status(router)),
    );
}

/// Polls `done` every 20 ms for up to 20 s.
fn wait(mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The upstreams reached by `n` connections to `k8s.test`.
fn reached(router: &Router, n: usize) -> BTreeSet<String> {
    let hello = HelloBuilder::new("k8s.test").build();
    (0..n)
        .map(|_| reach(router.addr(), &hello).unwrap())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tasks_are_added_killed_moved_and_flip_health() {
    let _turn = crate::common::light();
    let (a, b, c) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
        Upstream::start("c", Behaviour::Greet),
    );
    let other = Upstream::start("other", Behaviour::Greet);
    let mesos = FakeMesos::leader(vec![
        k8s_task(0, &a),
        // Same framework, another task name; another framework, same name.
        task(
            "kube-node-0-kubelet__1",
            "kube-node-0-kubelet",
            "fw-k8s",
            other.addr.port(),
            None,
        ),
        task(
            "kube-control-plane-0-instance.x",
            "kube-control-plane-0-instance",
            "fw-marathon",
            other.addr.port(),
            None,
        ),
    ]);
    let router = Router::start(&config(&[mesos.url()], K8S_ROUTE));
    wait_endpoints(&router, &[a.addr]);
    assert_eq!(router.admin_get("/readyz").0, 200);
    assert_eq!(reached(&router, 4), names(&["a"]));
    let s = status(&router);
    let k8s = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "k8s")
        .unwrap();
    assert_eq!(
        k8s["discovered_from"],
        "Mesos tasks of framework dev/kubernetes01 matching `kube-control-plane`, port named apiserver"
    );
    wait(
        || mesos.open_streams() == 1,
        || "the router subscribed".into(),
    );

    // A new task: staging, then running.
    let mut t1 = k8s_task(1, &b);
    t1["state"] = json!("TASK_STAGING");
    t1["statuses"] = json!([]);
    mesos.add_task(t1);
    mesos.update_task(
        "kube-control-plane-1-instance__1",
        "TASK_RUNNING",
        Some(true),
    );
    wait_endpoints(&router, &[a.addr, b.addr]);
    assert_eq!(reached(&router, 8), names(&["a", "b"]));

    // Health flips off, then on again.
    mesos.update_task(
        "kube-control-plane-1-instance__1",
        "TASK_RUNNING",
        Some(false),
    );
    wait_endpoints(&router, &[a.addr]);
    mesos.update_task(
        "kube-control-plane-1-instance__1",
        "TASK_RUNNING",
        Some(true),
    );
    wait_endpoints(&router, &[a.addr, b.addr]);

    // Task 0 is killed.
    mesos.update_task("kube-control-plane-0-instance__0", "TASK_KILLING", None);
    wait_endpoints(&router, &[b.addr]);
    mesos.update_task("kube-control-plane-0-instance__0", "TASK_KILLED", None);
    assert_eq!(reached(&router, 4), names(&["b"]));

    // Task 1 moves: killed on its agent, relaunched elsewhere (here: on a
    // container network whose IP is the loopback address c listens on).
    mesos.update_task("kube-control-plane-1-instance__1", "TASK_KILLED", None);
    let mut moved = task(
        "kube-control-plane-1-instance__2",
        "kube-control-plane-1-instance",
        "fw-k8s",
        c.addr.port(),
        Some(&c.addr.ip().to_string()),
    );
    moved["agent_id"] = json!({"value": "agent-2"});
    mesos.add_task(moved);
    wait_endpoints(&router, &[c.addr]);
    assert_eq!(reached(&router, 4), names(&["c"]));
    let m = &status(&router)["discovery"]["mesos"];
    assert_eq!(m["synced"], true, "{m}");
    assert_eq!(m["sync_failures"], 0, "{m}");
}

#[test]
fn a_307_from_a_non_leader_is_followed_after_the_first_url_fails() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let leader = FakeMesos::leader(vec![k8s_task(0, &a)]);
    let follower = FakeMesos::start(Role::NonLeader(leader.addr), Vec::new());
    // A port nothing listens on: connection refused.
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let router = Router::start(&config(
        &[format!("http://{down}"), follower.url()],
        K8S_ROUTE,
    ));
    wait_endpoints(&router, &[a.addr]);
    // The full sync comes first; then the stream opens on the leader.
    wait(
        || leader.open_streams() == 1,
        || "the router subscribed at the leader".into(),
    );
    let (_, _, redirects, _) = follower.counts();
    assert!(redirects >= 2, "GET_STATE and SUBSCRIBE were redirected");
    let (syncs, subscribes, _, _) = leader.counts();
    assert!(syncs >= 1 && subscribes >= 1, "{syncs} {subscribes}");
    let want = format!("{}/api/v1", leader.url());
    wait(
        || status(&router)["discovery"]["mesos"]["following"] == want.as_str(),
        || format!("the stream is not the leader's: {}", status(&router)),
    );
    // Events come through the leader's stream.
    let b = Upstream::start("b", Behaviour::Greet);
    mesos_add(&leader, k8s_task(1, &b));
    wait_endpoints(&router, &[a.addr, b.addr]);
}

fn mesos_add(mesos: &FakeMesos, task: Value) {
    wait(
        || mesos.open_streams() >= 1,
        || "the router subscribed".into(),
    );
    mesos.add_task(task);
}

#[test]
fn a_stream_without_heartbeats_is_replaced_from_the_full_state() {
    let _turn = crate::common::light();
    let (a, b) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
    );
    let mesos = FakeMesos::leader(vec![k8s_task(0, &a)]);
    let router = Router::start(&config(&[mesos.url()], K8S_ROUTE));
    wait_endpoints(&router, &[a.addr]);
    wait(
        || mesos.open_streams() == 1,
        || "the router subscribed".into(),
    );
    let (_, subscribes, _, _) = mesos.counts();
    // The master goes silent (a hung leader, a proxy that holds the
    // connection), and a change happens whose event is lost.
    mesos.heartbeats.store(false, Ordering::SeqCst);
    mesos.set_tasks_silently(vec![k8s_task(1, &b)]);
    wait_endpoints(&router, &[b.addr]);
    mesos.heartbeats.store(true, Ordering::SeqCst);
    wait(
        || mesos.counts().1 > subscribes,
        || "never subscribed again".into(),
    );
    let m = &status(&router)["discovery"]["mesos"];
    assert!(m["stream_reconnects"].as_u64().unwrap() >= 1, "{m}");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "Mesos event stream lost; subscribing again (from the full state)"
            && l["reason"].as_str().is_some_and(|r| r.contains("stalled"))
    });
    assert_eq!(reached(&router, 4), names(&["b"]));
}

#[test]
fn a_stream_cut_inside_an_event_is_replaced_from_the_full_state() {
    let _turn = crate::common::light();
    let (a, b) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
    );
    let mesos = FakeMesos::leader(vec![k8s_task(0, &a)]);
    let router = Router::start(&config(&[mesos.url()], K8S_ROUTE));
    wait_endpoints(&router, &[a.addr]);
    wait(
        || mesos.open_streams() == 1,
        || "the router subscribed".into(),
    );
    // Task 1 is launched, but its TASK_ADDED is cut in half with the stream.
    mesos.set_tasks_silently(vec![k8s_task(0, &a), k8s_task(1, &b)]);
    mesos.cut_streams_mid_event(
        &json!({"type": "TASK_ADDED", "task_added": {"task": k8s_task(1, &b)}}),
    );
    wait_endpoints(&router, &[a.addr, b.addr]);
    let m = &status(&router)["discovery"]["mesos"];
    assert!(m["stream_reconnects"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(
        m["sync_failures"], 0,
        "a cut stream is no malformed JSON: {m}"
    );
    assert_eq!(reached(&router, 8), names(&["a", "b"]));
}

#[test]
fn every_resync_subscribes_again_from_the_full_state() {
    let _turn = crate::common::light();
    let (a, b) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
    );
    let mesos = FakeMesos::leader(vec![k8s_task(0, &a)]);
    let yaml = config(&[mesos.url()], K8S_ROUTE)
        .replace("  mesos:\n    urls:", "  mesos:\n    resync: 1s\n    urls:");
    assert!(yaml.contains("resync: 1s"), "{yaml}");
    let router = Router::start(&yaml);
    wait_endpoints(&router, &[a.addr]);
    // A change no event tells of: the next resync finds it.
    mesos.set_tasks_silently(vec![k8s_task(1, &b)]);
    wait_endpoints(&router, &[b.addr]);
    wait(
        || {
            let (states, subscribes, _, _) = mesos.counts();
            states >= 3 && subscribes >= 3
        },
        || format!("not resynced: {:?}", mesos.counts()),
    );
    let m = &status(&router)["discovery"]["mesos"];
    assert_eq!(m["sync_failures"], 0, "{m}");
    assert!(
        m["syncs"].as_u64().unwrap() >= 5,
        "each GET_STATE and SUBSCRIBED counts (the last SUBSCRIBED may not be read yet): {m}"
    );
}

#[test]
fn malformed_json_keeps_the_last_good_endpoints() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let mesos = FakeMesos::leader(vec![k8s_task(0, &a)]);
    let router = Router::start(&config(&[mesos.url()], K8S_ROUTE));
    wait_endpoints(&router, &[a.addr]);
    wait(
        || mesos.open_streams() == 1,
        || "the router subscribed".into(),
    );
    // A broken event, then every full sync answers broken JSON.
    mesos.set_garbage(true);
    mesos.emit_raw(br#"{"type":"TASK_UPDATED","task_updated":{"status":"#);
    wait(
        || status(&router)["discovery"]["mesos"]["sync_failures"].as_u64() >= Some(2),
        || format!("failures counted: {}", status(&router)),
    );
    let m = &status(&router)["discovery"]["mesos"];
    assert!(
        m["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not what Mesos sends")),
        "{m}"
    );
    assert_eq!(endpoints(&router, "k8s"), BTreeSet::from([a.addr]));
    assert_eq!(reached(&router, 3), names(&["a"]));
    // The metrics count the same, and the route keeps its endpoint.
    let metrics = router.metrics();
    let source = ("source", "mesos");
    let syncs = |result| {
        crate::common::metric(
            &metrics,
            "sniroute_discovery_syncs_total",
            &[source, ("result", result)],
        )
    };
    assert!(syncs("failure") >= Some(2.0), "{metrics}");
    assert!(syncs("success") >= Some(1.0), "{metrics}");
    assert_eq!(
        crate::common::metric(
            &metrics,
            "sniroute_discovery_endpoints",
            &[("route", "k8s")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // Mesos mends: a new task comes through the next full sync.
    let b = Upstream::start("b", Behaviour::Greet);
    mesos.set_tasks_silently(vec![k8s_task(0, &a), k8s_task(1, &b)]);
    mesos.set_garbage(false);
    wait_endpoints(&router, &[a.addr, b.addr]);
}

#[test]
fn readyz_answers_503_until_the_first_sync() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let mesos = FakeMesos::start(Role::NoLeader, vec![k8s_task(0, &a)]);
    let router = Router::start(&config(&[mesos.url()], K8S_ROUTE));
    wait(
        || mesos.counts().3 >= 1,
        || "the master was never asked".into(),
    );
    let (code, body) = router.admin_get("/readyz");
    assert_eq!(
        (code, body.as_str()),
        (503, "waiting for the first discovery sync\n")
    );
    assert!(endpoints(&router, "k8s").is_empty());
    assert_eq!(status(&router)["discovery"]["mesos"]["synced"], false);
    mesos.set_role(Role::Leader);
    wait_endpoints(&router, &[a.addr]);
    wait(
        || router.admin_get("/readyz").0 == 200,
        || "never ready".into(),
    );
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "Mesos discovery: first sync done"
    });
}

/// The seed scenario: the DC/OS docs' Edge-LB pool for a Kubernetes API
/// (frameworkName dev/kubernetes01, taskNamePattern kube-control-plane,
/// portName apiserver) as a `mesos_tasks` route. The task's apiserver
/// (a TLS server requiring a client certificate, standing for
/// kube-apiserver) is reached by kubectl through sniroute, verifying the
/// cluster's certificate and presenting its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_kubectl_reaches_a_mesos_task_through_sniroute() {
    use demo::{Ca, TlsUpstream, UpstreamOptions};
    let _turn = crate::common::light();
    let name = "devkubernetes01.example.com";
    let ca = Ca::new("dev/kubernetes01 cluster CA");
    let mut opts = UpstreamOptions::new("dev-kubernetes01", ca.server_identity(&[name]));
    opts.client_ca_pem = Some(ca.cert_pem());
    let apiserver = TlsUpstream::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let kube = task(
        "kube-control-plane-0-instance__6a7c2f1e",
        "kube-control-plane-0-instance",
        "fw-k8s",
        apiserver.addr.port(),
        None,
    );
    let mesos = FakeMesos::leader(vec![kube]);
    let route = format!(
        "  - name: dev-kubernetes01
    server_names: [{name}]
    mesos_tasks: {{framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}}"
    );
    let yaml = config(&[mesos.url()], &route);
    let router = tokio::task::spawn_blocking(move || Router::start(&yaml))
        .await
        .unwrap();
    let router_port = router.addr().port();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    ca.client_identity("alice")
        .write_to(dir.path(), "alice")
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let p = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: dev-kubernetes01
  cluster:
    server: https://127.0.0.1:{router_port}
    tls-server-name: {name}
    certificate-authority: {}
users:
- name: alice
  user:
    client-certificate: {}
    client-key: {}
contexts:
- name: dev-kubernetes01
  context: {{cluster: dev-kubernetes01, user: alice}}
current-context: dev-kubernetes01
",
            p("ca.pem"),
            p("alice.pem"),
            p("alice-key.pem")
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let dir = kubeconfig.parent().unwrap();
        // Wait for discovery to give the route its endpoint.
        let deadline = Instant::now() + Duration::from_secs(20);
        while router.admin_get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        kubectl(dir, &kubeconfig)
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("v1.32.0+dev-kubernetes01"), "{text}");
    assert_eq!(apiserver.last_sni().as_deref(), Some(name));
    assert_eq!(apiserver.last_client_cn().as_deref(), Some("alice"));
}

/// `kubectl version` with everything it writes (HOME, cache) in `dir`.
fn kubectl(dir: &Path, kubeconfig: &Path) -> std::process::Output {
    Command::new("kubectl")
        .env("HOME", dir)
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["version", "-o", "json", "--request-timeout=10s"])
        .output()
        .expect("kubectl is needed by this test and is on the machine image; install it")
}
