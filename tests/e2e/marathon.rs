//! Marathon discovery end to end: the real binary follows a fake Marathon.
//!
//! [`FakeMarathon`] stands for Marathon's REST API v2 as DC/OS runs it
//! (`http://marathon.mesos:8080`), speaking its documented JSON and
//! server-sent events over HTTP/1.1 on loopback:
//! - `GET /v2/apps?embed=apps.tasks&embed=apps.readiness`: `{"apps": [...]}`
//!   with `Content-Length`;
//! - `GET /v2/events` (`Accept: text/event-stream`): a chunked
//!   `text/event-stream` that starts with `event_stream_attached`, sends a
//!   comment keep-alive (`:`) before every event, and splits each event's
//!   JSON over two `data:` lines (multi-line data);
//! - a non-leader answers API calls from its leader's state (Marathon
//!   proxies them) but redirects `/v2/events` to the leader with a 302;
//! - with no leader, every request gets a 503.
//!
//! Tests wait for `/status` to show the endpoint set, never for a time.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{metric, reach, Router};
use clienthello::synth::HelloBuilder;

/// How a fake Marathon answers.
#[derive(Clone, Debug)]
pub(crate) enum Role {
    Leader,
    /// Proxies API calls to (reads the state of) the leader, redirects
    /// the event stream there.
    NonLeader(Arc<Mutex<State>>, SocketAddr),
    /// No leader elected: 503 to everything.
    NoLeader,
}

#[derive(Debug)]
pub(crate) struct State {
    role: Role,
    apps: Value,
    /// Served instead of `apps` when set: a broken answer.
    apps_text: Option<String>,
    streams: Vec<TcpStream>,
    apps_requests: usize,
    events_requests: usize,
    /// Requests answered with 503.
    unavailable: usize,
}

pub(crate) struct FakeMarathon {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeMarathon {
    pub(crate) fn start(role: Role, apps: Value) -> FakeMarathon {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            role,
            apps,
            apps_text: None,
            streams: Vec::new(),
            apps_requests: 0,
            events_requests: 0,
            unavailable: 0,
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
        FakeMarathon { addr, state }
    }

    pub(crate) fn leader(apps: Value) -> FakeMarathon {
        Self::start(Role::Leader, apps)
    }

    pub(crate) fn non_leader_of(leader: &FakeMarathon) -> FakeMarathon {
        Self::start(
            Role::NonLeader(leader.state.clone(), leader.addr),
            json!({"apps": []}),
        )
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.state.lock().unwrap().role = role;
    }

    pub(crate) fn set_apps(&self, apps: Value) {
        let mut s = self.state.lock().unwrap();
        s.apps = apps;
        s.apps_text = None;
    }

    /// Makes the app list answer `text`, taken as is (JSON or not).
    fn set_apps_text(&self, text: &str) {
        self.state.lock().unwrap().apps_text = Some(text.to_owned());
    }

    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let s = self.state.lock().unwrap();
        (s.apps_requests, s.events_requests, s.unavailable)
    }

    /// Sends an event to every open stream: a keep-alive comment, then the
    /// event with its JSON over two `data:` lines.
    pub(crate) fn emit(&self, event_type: &str, mut data: Value) {
        data["eventType"] = json!(event_type);
        data["timestamp"] = json!("2024-05-01T12:00:00.000Z");
        let text = data.to_string();
        let cut = text.find(',').map_or(text.len(), |i| i + 1);
        let frame = format!(
            ":\n\nevent: {event_type}\ndata: {}\ndata: {}\n\n",
            &text[..cut],
            &text[cut..]
        );
        let mut s = self.state.lock().unwrap();
        s.streams
            .retain_mut(|stream| write_chunk(stream, frame.as_bytes()).is_ok());
    }

    /// Writes `text` raw (a piece of an event) to every open stream, then
    /// closes them: the connection dropped in the middle of an event.
    fn cut_streams_after(&self, text: &str) {
        for mut s in self.state.lock().unwrap().streams.drain(..) {
            let _ = write_chunk(&mut s, text.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Closes every open event stream (Marathon restarting, a proxy
    /// dropping the connection).
    pub(crate) fn drop_streams(&self) {
        for s in self.state.lock().unwrap().streams.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    stream.write_all(data)?;
    stream.write_all(b"\r\n")?;
    stream.flush()
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
    let mut accept = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("accept:") {
            accept = v.trim().to_owned();
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut s = state.lock().unwrap();
    let role = s.role.clone();
    if matches!(role, Role::NoLeader) {
        s.unavailable += 1;
        drop(s);
        return respond(
            &mut stream,
            "503 Service Unavailable",
            "Content-Type: application/json\r\n",
            r#"{"message":"Could not determine the current leader"}"#,
        );
    }
    if target.starts_with("/v2/apps?") && target.contains("embed=apps.tasks") {
        s.apps_requests += 1;
        let apps = match &role {
            Role::NonLeader(leader, _) => leader.lock().unwrap().apps.to_string(),
            _ => s.apps_text.clone().unwrap_or_else(|| s.apps.to_string()),
        };
        drop(s);
        return respond(
            &mut stream,
            "200 OK",
            "Content-Type: application/json\r\n",
            &apps,
        );
    }
    if target.starts_with("/v2/events") {
        s.events_requests += 1;
        if let Role::NonLeader(_, leader) = role {
            drop(s);
            return respond(
                &mut stream,
                "302 Found",
                &format!("Location: http://{leader}{target}\r\n"),
                "",
            );
        }
        assert!(
            accept.contains("text/event-stream"),
            "the event stream is asked for with Accept: text/event-stream"
        );
        assert!(
            target.contains("event_type=status_update_event"),
            "{target}"
        );
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-store, must-revalidate\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let attached = "event: event_stream_attached\ndata: {\"remoteAddress\":\"127.0.0.1\",\"eventType\":\"event_stream_attached\",\"timestamp\":\"2024-05-01T12:00:00.000Z\"}\n\n";
        if write_chunk(&mut stream, attached.as_bytes()).is_ok() {
            s.streams.push(stream);
        }
        return;
    }
    drop(s);
    respond(&mut stream, "404 Not Found", "", "")
}

/// An app `/prod/web` with host networking, a port named `https` (second),
/// Marathon health checks, and one task per `(id, port, alive)`.
pub(crate) fn web_app(tasks: &[(&str, u16, bool)]) -> Value {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|(id, port, alive)| {
            json!({
                "id": format!("prod_web.{id}"),
                "appId": "/prod/web",
                "host": "127.0.0.1",
                "ports": [1, port],
                "ipAddresses": [{"ipAddress": "127.0.0.1", "protocol": "IPv4"}],
                "state": "TASK_RUNNING",
                "startedAt": "2024-05-01T12:00:00.000Z",
                "stagedAt": "2024-05-01T11:59:58.000Z",
                "version": "2024-05-01T11:59:50.000Z",
                "slaveId": "agent-1",
                "healthCheckResults": [{
                    "alive": alive,
                    "consecutiveFailures": if *alive { 0 } else { 3 },
                    "firstSuccess": "2024-05-01T12:00:05.000Z",
                    "lastFailure": null,
                    "lastSuccess": "2024-05-01T12:00:05.000Z",
                    "taskId": format!("prod_web.{id}"),
                    "instanceId": format!("prod_web.marathon-{id}")
                }]
            })
        })
        .collect();
    json!({"apps": [{
        "id": "/prod/web",
        "instances": tasks.len(),
        "cpus": 0.1,
        "mem": 64,
        "networks": [{"mode": "host"}],
        "container": null,
        "portDefinitions": [
            {"port": 10000, "protocol": "tcp", "name": "metrics", "labels": {}},
            {"port": 10001, "protocol": "tcp", "name": "https", "labels": {}}
        ],
        "healthChecks": [{"protocol": "TCP", "portIndex": 1, "gracePeriodSeconds": 30,
                          "intervalSeconds": 10, "timeoutSeconds": 5, "maxConsecutiveFailures": 3}],
        "readinessChecks": [],
        "readinessCheckResults": [],
        "tasksRunning": tasks.len(),
        "tasksHealthy": tasks.len(),
        "tasks": tasks
    }, {
        "id": "/other",
        "instances": 0,
        "portDefinitions": [{"port": 10002, "protocol": "tcp"}],
        "tasks": []
    }]})
}

fn config(urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 2s, connect: 2s}}
discovery:
  marathon:
    urls: [{}]
routes:
  - name: web
    server_names: [web.test]
    marathon_app: {{id: /prod/web, port_name: https}}
    health_check: false
"#,
        urls.join(", ")
    )
}

/// The endpoint addresses `/status` shows for route `web`.
fn endpoints(router: &Router) -> BTreeSet<SocketAddr> {
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Waits until route `web` has exactly `want` as endpoints.
fn wait_endpoints(router: &Router, want: &[&Upstream]) {
    let want: BTreeSet<SocketAddr> = want.iter().map(|u| u.addr).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = endpoints(router);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "route web has {now:?}, not {want:?}; /status: {}",
            router.admin_get("/status").1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The upstreams reached by `n` connections to `web.test`.
fn reached(router: &Router, n: usize) -> BTreeSet<String> {
    let hello = HelloBuilder::new("web.test").build();
    (0..n)
        .map(|_| reach(router.addr(), &hello).unwrap())
        .collect()
}

#[test]
fn tasks_come_and_go_with_status_and_health_events() {
    let _turn = crate::common::light();
    let (a, b, c) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
        Upstream::start("c", Behaviour::Greet),
    );
    let (pa, pb, pc) = (a.addr.port(), b.addr.port(), c.addr.port());
    let marathon = FakeMarathon::leader(web_app(&[("a", pa, true), ("b", pb, true)]));
    let router = Router::start(&config(&[marathon.url()]));
    wait_endpoints(&router, &[&a, &b]);
    assert_eq!(router.admin_get("/readyz").0, 200);
    assert_eq!(
        reached(&router, 6),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );

    // Task b is killed: Marathon drops it from the app and says so.
    marathon.set_apps(web_app(&[("a", pa, true)]));
    marathon.emit(
        "status_update_event",
        json!({"slaveId": "agent-1", "taskId": "prod_web.b", "taskStatus": "TASK_KILLED",
               "message": "", "appId": "/prod/web", "host": "127.0.0.1", "ports": [1, pb],
               "ipAddresses": [], "version": "2024-05-01T11:59:50.000Z"}),
    );
    wait_endpoints(&router, &[&a]);
    assert_eq!(reached(&router, 4), BTreeSet::from(["a".to_owned()]));

    // A new task c starts healthy; a fails its health check.
    marathon.set_apps(web_app(&[("a", pa, false), ("c", pc, true)]));
    marathon.emit(
        "health_status_changed_event",
        json!({"appId": "/prod/web", "instanceId": "prod_web.marathon-a",
               "version": "2024-05-01T11:59:50.000Z", "alive": false}),
    );
    wait_endpoints(&router, &[&c]);
    assert_eq!(reached(&router, 4), BTreeSet::from(["c".to_owned()]));
    // `/status` says which task was left out, and why.
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["discovery"]["marathon"]["left_out"],
        json!(["route web: task prod_web.a: not healthy"]),
        "{status}"
    );
    // The endpoints that left have left /metrics (no tunnel holds them).
    let metrics = router.metrics();
    assert!(
        !metrics.contains(&format!("upstream=\"{}\"", a.addr)),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("upstream=\"{}\"", c.addr)),
        "{metrics}"
    );
    // An event about another app changes nothing and costs no sync.
    let (syncs, _, _) = marathon.counts();
    marathon.emit(
        "status_update_event",
        json!({"taskId": "other.x", "taskStatus": "TASK_RUNNING", "appId": "/other"}),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(marathon.counts().0, syncs, "no full sync for /other");
}

#[test]
fn a_dropped_event_stream_is_reopened_and_followed_by_a_full_sync() {
    let _turn = crate::common::light();
    let Synced {
        a: _a,
        b,
        marathon,
        router,
    } = synced();
    // A change whose event is lost with the stream: only the full sync
    // after the reconnect can bring it.
    marathon.set_apps(web_app(&[("b", b.addr.port(), true)]));
    marathon.drop_streams();
    wait_endpoints(&router, &[&b]);
    let (syncs, streams, _) = marathon.counts();
    assert!(
        syncs >= 2 && streams >= 2,
        "syncs {syncs}, streams {streams}"
    );
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    let m = &status["discovery"]["marathon"];
    assert!(m["stream_reconnects"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["synced"], true);
    assert_eq!(reached(&router, 2), BTreeSet::from(["b".to_owned()]));
}

#[test]
fn no_leader_fails_over_to_the_next_url_and_its_redirect() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let leader = FakeMarathon::leader(web_app(&[("a", a.addr.port(), true)]));
    let follower = FakeMarathon::non_leader_of(&leader);
    let down = FakeMarathon::start(Role::NoLeader, json!({"apps": []}));
    let router = Router::start(&config(&[down.url(), follower.url()]));
    wait_endpoints(&router, &[&a]);
    assert!(down.counts().2 >= 1, "the first URL was tried");
    let (follower_syncs, follower_streams, _) = follower.counts();
    assert!(follower_streams >= 1, "the non-leader was asked for events");
    assert!(follower_syncs >= 1, "and answered the full sync (proxied)");
    assert!(leader.counts().1 >= 1, "its 302 was followed to the leader");
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["discovery"]["marathon"]["following"]
            .as_str()
            .unwrap()
            .starts_with(&leader.url()),
        "{status}"
    );
    // Events reach the router through the leader's stream.
    let b = Upstream::start("b", Behaviour::Greet);
    leader.set_apps(web_app(&[("b", b.addr.port(), true)]));
    leader.emit(
        "deployment_success",
        json!({"id": "5b0b2d71-0a3e-4f0b-9f8c-1c7d4b5c6d7e", "plan": {"id": "5b0b2d71"}}),
    );
    wait_endpoints(&router, &[&b]);
}

#[test]
fn readyz_answers_503_until_the_first_sync() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let marathon = FakeMarathon::start(Role::NoLeader, web_app(&[("a", a.addr.port(), true)]));
    let router = Router::start(&config(&[marathon.url()]));
    let (code, body) = router.admin_get("/readyz");
    assert_eq!(
        (code, body.as_str()),
        (503, "waiting for the first discovery sync\n")
    );
    // Wait until Marathon has been asked (and refused) before it gets a
    // leader, so the 503 above is not a race with the first sync.
    let deadline = Instant::now() + Duration::from_secs(10);
    while marathon.counts().2 == 0 {
        assert!(Instant::now() < deadline, "Marathon never asked");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(router.admin_get("/readyz").0, 503);
    assert!(endpoints(&router).is_empty());
    marathon.set_role(Role::Leader);
    wait_endpoints(&router, &[&a]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.admin_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "Marathon discovery: first sync done"
    });
}

/// Two upstreams, a leader Marathon whose app has one task (upstream a),
/// and a router that follows it, synced.
struct Synced {
    a: Upstream,
    b: Upstream,
    marathon: FakeMarathon,
    router: Router,
}

fn synced() -> Synced {
    let (a, b) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
    );
    let marathon = FakeMarathon::leader(web_app(&[("a", a.addr.port(), true)]));
    let router = Router::start(&config(&[marathon.url()]));
    wait_endpoints(&router, &[&a]);
    Synced {
        a,
        b,
        marathon,
        router,
    }
}

/// The value of `name{source="marathon", ...}` (or `name{route="web"}`)
/// on `/metrics`, 0 when absent.
fn discovery_metric(router: &Router, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&router.metrics(), name, labels).unwrap_or(0.0)
}

#[test]
fn a_malformed_app_list_keeps_the_last_endpoints_and_is_counted() {
    let _turn = crate::common::light();
    let Synced {
        a,
        b,
        marathon,
        router,
    } = synced();
    let source = ("source", "marathon");
    let syncs = |result| {
        discovery_metric(
            &router,
            "sniroute_discovery_syncs_total",
            &[source, ("result", result)],
        )
    };
    assert!(syncs("success") >= 1.0);
    assert_eq!(syncs("failure"), 0.0, "{}", router.metrics());
    let route = [("route", "web")];
    assert_eq!(
        discovery_metric(&router, "sniroute_discovery_endpoints", &route),
        1.0
    );
    let last = discovery_metric(
        &router,
        "sniroute_discovery_last_success_timestamp_seconds",
        &[source],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - 60.0..=now + 1.0).contains(&last), "{last} vs {now}");

    // Marathon answers a truncated app list: the sync fails, is counted
    // and shown, and the last good endpoints stay.
    marathon.set_apps_text(r#"{"apps": [{"id": "/prod/web", "tasks": ["#);
    marathon.emit(
        "deployment_success",
        json!({"id": "0c3b4f59-1111-4a6e-8d4e-6f1f0d5e2a10", "plan": {"id": "0c3b4f59"}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while syncs("failure") < 1.0 {
        assert!(Instant::now() < deadline, "{}", router.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    let m = &status["discovery"]["marathon"];
    assert!(
        m["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{m}"
    );
    assert_eq!(endpoints(&router), BTreeSet::from([a.addr]));
    assert_eq!(reached(&router, 2), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        discovery_metric(&router, "sniroute_discovery_endpoints", &route),
        1.0
    );

    // A good answer again: the new task is followed.
    marathon.set_apps(web_app(&[
        ("a", a.addr.port(), true),
        ("b", b.addr.port(), true),
    ]));
    marathon.emit(
        "deployment_success",
        json!({"id": "0c3b4f59-2222-4a6e-8d4e-6f1f0d5e2a10", "plan": {"id": "0c3b4f59"}}),
    );
    wait_endpoints(&router, &[&a, &b]);
    assert_eq!(
        discovery_metric(&router, "sniroute_discovery_endpoints", &route),
        2.0
    );
}

#[test]
fn a_stream_cut_inside_an_event_is_reopened_and_the_half_event_ignored() {
    let _turn = crate::common::light();
    let Synced {
        a: _a,
        b,
        marathon,
        router,
    } = synced();
    let (syncs, streams, _) = marathon.counts();
    // The app changes, and the event saying so is cut after its first
    // `data:` line, without the blank line that would dispatch it.
    marathon.set_apps(web_app(&[("b", b.addr.port(), true)]));
    marathon.cut_streams_after(
        "event: status_update_event\ndata: {\"appId\": \"/prod/web\", \"taskStatus\":",
    );
    wait_endpoints(&router, &[&b]);
    let (syncs_after, streams_after, _) = marathon.counts();
    assert!(streams_after > streams, "the stream was opened again");
    assert!(syncs_after > syncs, "and a full sync brought the change");
    let reconnects = discovery_metric(
        &router,
        "sniroute_discovery_stream_reconnects_total",
        &[("source", "marathon")],
    );
    assert!(reconnects >= 1.0, "{}", router.metrics());
    assert_eq!(reached(&router, 2), BTreeSet::from(["b".to_owned()]));
}

#[test]
fn a_burst_of_a_thousand_events_costs_at_most_three_full_syncs() {
    let _turn = crate::common::light();
    let Synced {
        a: _a,
        b,
        marathon,
        router,
    } = synced();
    // Let the start-up's syncs settle: the count stays put for 1.5 s.
    let mut before = marathon.counts().0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = marathon.counts().0;
        if now == before {
            break;
        }
        assert!(Instant::now() < deadline, "syncs never settle");
        before = now;
    }
    // A deployment restarts every task: 1,000 relevant events within a
    // second, the change itself in the middle of the burst.
    let started = Instant::now();
    for i in 0..1000 {
        if i == 500 {
            marathon.set_apps(web_app(&[("b", b.addr.port(), true)]));
        }
        marathon.emit(
            "status_update_event",
            json!({"slaveId": "agent-1", "taskId": format!("prod_web.t{i}"),
                   "taskStatus": if i % 2 == 0 { "TASK_RUNNING" } else { "TASK_KILLED" },
                   "message": "", "appId": "/prod/web", "host": "127.0.0.1", "ports": [1, 2],
                   "ipAddresses": [], "version": "2024-05-01T11:59:50.000Z"}),
        );
    }
    let burst = started.elapsed();
    assert!(burst < Duration::from_secs(1), "the burst took {burst:?}");
    wait_endpoints(&router, &[&b]);
    // The debounce allows one sync a second: whatever the burst triggers
    // has happened 2.5 s after it (a bounded wait for an absence).
    std::thread::sleep(Duration::from_millis(2500));
    let syncs = marathon.counts().0 - before;
    assert!(
        (1..=3).contains(&syncs),
        "{syncs} full syncs for a burst of 1,000 events"
    );
}

/// The fakes' apps are Marathon's: what the app schema in
/// `deploy/marathon/schema` covers of them (the app definition: the
/// response's status fields, such as `tasks` and `tasksRunning`, are not
/// in it) validates, for this file's apps and the label tests'. Marathon
/// writes an unset optional field as `null` in its answers (`"container":
/// null`), where a definition leaves it out: such keys are left out here.
#[test]
fn the_fake_apps_validate_against_marathons_schema() {
    let _turn = crate::common::light();
    let status_only = [
        "tasks",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "readinessCheckResults",
        "lastTaskFailure",
        "taskStats",
    ];
    let labelled = crate::marathon_labels::app(
        "/team/api",
        "2025-01-01T00:00:00.000Z",
        8443,
        json!({"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "api.apps.test"}),
    );
    let mut list: Vec<Value> = web_app(&[("a", 8443, true), ("b", 8444, false)])["apps"]
        .as_array()
        .unwrap()
        .clone();
    list.push(labelled);
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = list
        .into_iter()
        .enumerate()
        .map(|(i, mut app)| {
            let obj = app.as_object_mut().unwrap();
            for key in status_only {
                obj.remove(key);
            }
            obj.retain(|_, v| !v.is_null());
            let path = dir.path().join(format!("app-{i}.json"));
            std::fs::write(&path, app.to_string()).unwrap();
            path
        })
        .collect();
    let out = crate::deploy::jsonschema_validate(&crate::deploy::marathon_schema_path(), &files);
    assert!(
        out.status.success(),
        "the fake Marathon's apps do not validate:\n{}",
        crate::deploy::output_text(&out)
    );
}

#[test]
fn a_silent_event_stream_is_dropped_after_the_stall_timeout() {
    let _turn = crate::common::light();
    let (a, b) = (
        Upstream::start("a", Behaviour::Greet),
        Upstream::start("b", Behaviour::Greet),
    );
    let marathon = FakeMarathon::leader(web_app(&[("a", a.addr.port(), true)]));
    // The fake sends nothing after `event_stream_attached`: a stream that
    // stalls (a proxy that lost the connection without a FIN looks alike).
    let config =
        config(&[marathon.url()]).replace("    urls: [", "    stall_timeout: 1s\n    urls: [");
    let router = Router::start(&config);
    wait_endpoints(&router, &[&a]);
    // A change whose event never comes: only the sync after the stalled
    // stream is replaced can bring it.
    let (_, streams, _) = marathon.counts();
    marathon.set_apps(web_app(&[("b", b.addr.port(), true)]));
    wait_endpoints(&router, &[&b]);
    assert!(marathon.counts().1 > streams, "the stream was opened again");
    let reconnects = discovery_metric(
        &router,
        "sniroute_discovery_stream_reconnects_total",
        &[("source", "marathon")],
    );
    assert!(reconnects >= 1.0, "{}", router.metrics());
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "Marathon event stream lost; opening it again (then a full sync)"
            && l["reason"].as_str().is_some_and(|r| r.contains("stalled"))
    });
}

#[test]
fn a_deleted_app_leaves_its_route_without_endpoints_and_says_why() {
    let _turn = crate::common::light();
    let Synced {
        a: _a,
        b: _b,
        marathon,
        router,
    } = synced();
    // The app is destroyed: Marathon lists only the others and announces it.
    marathon.set_apps(json!({"apps": [web_app(&[])["apps"][1].clone()]}));
    marathon.emit("app_terminated_event", json!({"appId": "/prod/web"}));
    wait_endpoints(&router, &[]);
    let (_, body) = router.admin_get("/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["discovery"]["marathon"]["left_out"],
        json!(["route web: no Marathon app /prod/web"]),
        "{status}"
    );
    assert_eq!(
        discovery_metric(&router, "sniroute_discovery_endpoints", &[("route", "web")]),
        0.0
    );
    // The route has nothing to offer: the client gets a TLS alert
    // (internal_error), not a hang.
    let hello = HelloBuilder::new("web.test").build();
    assert_eq!(
        crate::common::answer(router.addr(), &hello),
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50]
    );
}
