//! `sniroute discover` end to end: the real binary asks the fake Marathon
//! ([`crate::marathon::FakeMarathon`], Marathon's REST API v2) and the
//! fake Mesos master ([`crate::mesos::FakeMesos`], the operator API v1)
//! once, prints the routing table that would result, and exits.
//!
//! The endpoints are only addresses the sources report: `discover`
//! connects to none of them, so nothing listens there.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::bin;
use crate::marathon::{web_app, FakeMarathon};
use crate::mesos::{task, FakeMesos};

/// What one `sniroute discover` run gave.
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `sniroute discover --config <yaml> <args>`; fails the test if it
/// has not exited within `limit` (and stops it by PID).
fn discover(yaml: &str, args: &[&str], limit: Duration) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sniroute.yaml");
    std::fs::write(&path, yaml).unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["--log-level", "warn", "discover", "--config"])
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .expect("start sniroute discover");
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = String::new();
        let _ = out.read_to_string(&mut stdout);
        let status = child.wait().map(|s| s.code()).ok().flatten();
        let _ = tx.send((status, stdout));
    });
    let Ok((status, stdout)) = rx.recv_timeout(limit) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("sniroute discover did not exit within {limit:?}");
    };
    Run {
        status,
        stdout,
        stderr: stderr.join().unwrap(),
        took: started.elapsed(),
    }
}

/// A Marathon app of label group `external` whose port 0 asks for `name`.
fn label_app(id: &str, name: &str, port: u16) -> Value {
    let task = id.trim_start_matches('/').replace('/', "_");
    json!({
        "id": id,
        "instances": 1,
        "networks": [{"mode": "host"}],
        "labels": {"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": name},
        "versionInfo": {"lastScalingAt": "2025-06-01T00:00:00.000Z",
                        "lastConfigChangeAt": "2025-06-01T00:00:00.000Z"},
        "portDefinitions": [{"port": 10000, "protocol": "tcp", "name": "https", "labels": {}}],
        "healthChecks": [],
        "tasks": [{
            "id": format!("{task}.1"),
            "appId": id,
            "host": "127.0.0.1",
            "ports": [port],
            "ipAddresses": [{"ipAddress": "127.0.0.1", "protocol": "IPv4"}],
            "state": "TASK_RUNNING",
            "startedAt": "2025-06-01T00:00:00.000Z",
            "stagedAt": "2025-06-01T00:00:00.000Z",
            "version": "2025-06-01T00:00:00.000Z",
            "slaveId": "agent-1"
        }]
    })
}

/// `/prod/web` with a healthy task on port 41001 and a failing one on
/// 41002, `/team/api` asking for `api.apps.test` (allowed) on 41003 and
/// `/rogue/app` asking for `web.other.test` (not allowed), `/team/dup`
/// asking for `dup.apps.test` (a static route's).
fn marathon() -> FakeMarathon {
    let mut apps = web_app(&[("a", 41001, true), ("b", 41002, false)]);
    let list = apps["apps"].as_array_mut().unwrap();
    list.push(label_app("/team/api", "api.apps.test", 41003));
    list.push(label_app("/rogue/app", "web.other.test", 41004));
    list.push(label_app("/team/dup", "dup.apps.test", 41005));
    FakeMarathon::leader(apps)
}

/// Two control-plane tasks of `dev/kubernetes01` (41011 healthy, 41012
/// failing its health check) and an etcd task the pattern does not match.
fn mesos() -> FakeMesos {
    let mut sick = task(
        "kcp-1",
        "kube-control-plane-1-instance",
        "fw-k8s",
        41012,
        None,
    );
    sick["statuses"][0]["healthy"] = json!(false);
    FakeMesos::leader(vec![
        task(
            "kcp-0",
            "kube-control-plane-0-instance",
            "fw-k8s",
            41011,
            None,
        ),
        sick,
        task("etcd-0", "etcd-0-peer", "fw-k8s", 41013, None),
    ])
}

fn config(marathon: &str, mesos: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
discovery:
  marathon:
    urls: ["{marathon}"]
    label_group: external
    label_server_names_allowed: ["*.apps.test"]
  mesos:
    urls: ["{mesos}"]
routes:
  - name: web
    server_names: [web.test]
    marathon_app: {{id: /prod/web, port_name: https}}
  - name: k8s
    server_names: [k8s.test]
    mesos_tasks: {{framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}}
  - {{name: fixed, server_names: [fixed.test], upstreams: ["127.0.0.1:9"]}}
  - {{name: dup, server_names: [dup.apps.test], upstreams: ["127.0.0.1:9"]}}
"#
    )
}

/// The lines of `text` from the one starting with `head` to the next
/// blank line.
fn block<'a>(text: &'a str, head: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(head))
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn prints_endpoints_left_out_tasks_and_label_routes() {
    let _turn = crate::common::light();
    let (marathon, mesos) = (marathon(), mesos());
    let run = discover(
        &config(&marathon.url(), &mesos.url()),
        &["--timeout", "20s"],
        Duration::from_secs(30),
    );
    let out = &run.stdout;
    assert_eq!(run.status, Some(0), "{out}\n{}", run.stderr);
    assert!(
        out.contains(&format!("Marathon ({}): synced", marathon.url())),
        "{out}"
    );
    assert!(
        out.contains(&format!("Mesos ({}): synced", mesos.url())),
        "{out}"
    );
    assert_eq!(
        block(out, "route web "),
        [
            "route web [web.test] (Marathon app /prod/web, port https)",
            "  endpoint 127.0.0.1:41001",
            "  left out: task prod_web.b: not healthy",
        ],
        "{out}"
    );
    assert_eq!(
        block(out, "route k8s "),
        [
            "route k8s [k8s.test] (Mesos framework dev/kubernetes01, tasks matching \"kube-control-plane\", port apiserver)",
            "  endpoint 127.0.0.1:41011",
            "  left out: task kcp-1: not healthy",
        ],
        "{out}"
    );
    assert_eq!(
        block(out, "label route team-api-0 "),
        [
            "label route team-api-0 [api.apps.test] (Marathon app /team/api, port index 0)",
            "  endpoint 127.0.0.1:41003",
        ],
        "{out}"
    );
    // Refused: named among the label issues, not as a route.
    assert!(!out.contains("label route rogue-app-0"), "{out}");
    let issues = block(out, "label issues:");
    assert!(
        issues.iter().any(|l| l.starts_with("  not_allowed (app /rogue/app")
            && l.contains("web.other.test")),
        "{out}"
    );
    // A static route keeps its name against a label route, as `run`
    // decides it: the label route keeps nothing and is left out.
    assert_eq!(
        block(out, "label route team-dup-0 "),
        [
            "label route team-dup-0 [] (Marathon app /team/dup, port index 0)",
            "  left out: it keeps no server name",
            "  endpoint 127.0.0.1:41005",
        ],
        "{out}"
    );
    assert!(
        issues
            .iter()
            .any(|l| l.starts_with("  static_over_label (app /team/dup")
                && l.contains("dup.apps.test")),
        "{out}"
    );
    // Only discovered routes are shown; a static route is `check`'s.
    assert!(!out.contains("route fixed"), "{out}");
}

#[test]
fn json_carries_the_same_table() {
    let _turn = crate::common::light();
    let (marathon, mesos) = (marathon(), mesos());
    let run = discover(
        &config(&marathon.url(), &mesos.url()),
        &["--timeout", "20s", "--json"],
        Duration::from_secs(30),
    );
    assert_eq!(run.status, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    let route = |name: &str| {
        report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no route {name}: {report}"))
            .clone()
    };
    let web = route("web");
    assert_eq!(web["kind"], "marathon_app");
    assert_eq!(web["endpoints"], json!(["127.0.0.1:41001"]));
    assert_eq!(web["left_out"], json!(["task prod_web.b: not healthy"]));
    let k8s = route("k8s");
    assert_eq!(k8s["kind"], "mesos_tasks");
    assert_eq!(k8s["endpoints"], json!(["127.0.0.1:41011"]));
    let label = route("team-api-0");
    assert_eq!(label["kind"], "label");
    assert_eq!(label["server_names"], json!(["api.apps.test"]));
    assert_eq!(label["endpoints"], json!(["127.0.0.1:41003"]));
    let issues = report["label_issues"].as_array().unwrap();
    assert!(
        issues
            .iter()
            .any(|i| i["kind"] == "not_allowed" && i["app_id"] == "/rogue/app"),
        "{report}"
    );
    for s in report["sources"].as_array().unwrap() {
        assert_eq!(s["synced"], true, "{report}");
        assert_eq!(s["last_error"], Value::Null, "{report}");
    }
}

#[test]
fn a_source_that_is_down_exits_1_with_its_error_within_the_timeout() {
    let _turn = crate::common::light();
    let marathon = marathon();
    // A port nobody listens on: bound, then closed.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let run = discover(
        &config(&marathon.url(), &down),
        &["--timeout", "2s"],
        Duration::from_secs(15),
    );
    let out = &run.stdout;
    assert_eq!(run.status, Some(1), "{out}\n{}", run.stderr);
    assert!(
        run.took < Duration::from_secs(8),
        "took {:?} with --timeout 2s",
        run.took
    );
    let mesos_line = out
        .lines()
        .find(|l| l.starts_with("Mesos ("))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        mesos_line.starts_with(&format!("Mesos ({down}): NOT synced within 2s: "))
            && mesos_line.contains("Connection refused"),
        "{out}"
    );
    // What did answer is printed all the same.
    assert!(out.contains("  endpoint 127.0.0.1:41001"), "{out}");
    assert_eq!(
        block(out, "route k8s "),
        [
            "route k8s [k8s.test] (Mesos framework dev/kubernetes01, tasks matching \"kube-control-plane\", port apiserver)",
            "  endpoints unknown: Mesos did not sync",
        ],
        "{out}"
    );
    assert!(
        run.stderr.contains("did not sync within the timeout"),
        "{}",
        run.stderr
    );
}
