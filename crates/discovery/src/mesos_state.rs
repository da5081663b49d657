//! The Mesos master's task table, kept from its operator API (v1, JSON),
//! and the endpoints of each `mesos_tasks` selector. No I/O: host names
//! are resolved by the caller.
//!
//! What is read (field names as in Mesos' `include/mesos/v1/master/master.proto`
//! and `include/mesos/v1/mesos.proto`; the JSON encoding uses the proto field
//! names, enums as their names; unknown fields are ignored):
//! - `GET_STATE`'s response: `get_state.get_tasks.tasks[]`,
//!   `get_state.get_frameworks.frameworks[].framework_info` (`id.value`,
//!   `name`) and `get_state.get_agents.agents[].agent_info` (`id.value`,
//!   `hostname`);
//! - `SUBSCRIBE`'s events: `SUBSCRIBED` (`subscribed.get_state`, the same
//!   snapshot, and `subscribed.heartbeat_interval_seconds`), `TASK_ADDED`
//!   (`task_added.task`), `TASK_UPDATED` (`task_updated.state`, the task's
//!   latest state, and `task_updated.status`, its latest status),
//!   `AGENT_ADDED` (`agent_added.agent`), `AGENT_REMOVED`
//!   (`agent_removed.agent_id`), `FRAMEWORK_ADDED`/`FRAMEWORK_UPDATED`
//!   (`framework_*.framework`), `FRAMEWORK_REMOVED`
//!   (`framework_removed.framework_info`) and `HEARTBEAT`; other types are
//!   ignored.
//! - per task: `task_id.value`, `name`, `framework_id.value`,
//!   `agent_id.value`, `state`, `statuses[]` (`state`, `healthy`,
//!   `container_status.network_infos[].ip_addresses[].ip_address`),
//!   `discovery.ports.ports[]` (`number`, `name`) and `health_check`.
//!
//! Matching, as Edge-LB did: the framework by its name, the task by
//! `task_name_pattern` (a regular expression searched in the task's name),
//! the port by its name in `discovery.ports.ports[]`. A task counts when
//! its state is `TASK_RUNNING` and, if it has a health check, its latest
//! status says `healthy: true` (a latest status saying `healthy: false`
//! excludes it in any case). Its address is the container-network IP of its
//! latest status that reports one, else its agent's host name.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use crate::apps::Target;
use crate::TaskSelector;

/// Statuses kept per task (the latest decide).
const MAX_STATUSES: usize = 4;

/// States after which a task never runs again: it leaves the table.
/// `TASK_LOST`, `TASK_UNREACHABLE` and `TASK_GONE_BY_OPERATOR` are not
/// among them: `mesos.proto` says such a task may come back to
/// `TASK_RUNNING` when its agent reregisters (it does not count meanwhile).
const TERMINAL: &[&str] = &[
    "TASK_FINISHED",
    "TASK_FAILED",
    "TASK_KILLED",
    "TASK_ERROR",
    "TASK_DROPPED",
    "TASK_GONE",
];

/// `null` reads as the default.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `{"value": "..."}`: Mesos' ids.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
struct Id {
    value: String,
}

/// The response to `{"type":"GET_STATE"}`.
#[derive(Debug, Deserialize)]
struct Response {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    get_state: Option<GetState>,
}

/// `Response.GetState`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GetState {
    #[serde(default, deserialize_with = "nullable")]
    get_tasks: GetTasks,
    #[serde(default, deserialize_with = "nullable")]
    get_frameworks: GetFrameworks,
    #[serde(default, deserialize_with = "nullable")]
    get_agents: GetAgents,
}

#[derive(Debug, Default, Deserialize)]
struct GetTasks {
    /// Tasks launched on agents (running or not); `pending_tasks` and
    /// `completed_tasks` never count.
    #[serde(default, deserialize_with = "nullable")]
    tasks: Vec<Task>,
}

#[derive(Debug, Default, Deserialize)]
struct GetFrameworks {
    #[serde(default, deserialize_with = "nullable")]
    frameworks: Vec<Framework>,
}

#[derive(Debug, Deserialize)]
struct Framework {
    framework_info: FrameworkInfo,
}

#[derive(Debug, Deserialize)]
struct FrameworkInfo {
    /// Absent only before the framework registered.
    #[serde(default)]
    id: Option<Id>,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct GetAgents {
    #[serde(default, deserialize_with = "nullable")]
    agents: Vec<Agent>,
}

#[derive(Debug, Deserialize)]
struct Agent {
    agent_info: AgentInfo,
}

#[derive(Debug, Deserialize)]
struct AgentInfo {
    #[serde(default)]
    id: Option<Id>,
    hostname: String,
}

/// `mesos.v1.Task`: only what matching reads.
#[derive(Clone, Debug, Deserialize)]
struct Task {
    name: String,
    task_id: Id,
    framework_id: Id,
    agent_id: Id,
    state: String,
    #[serde(default, deserialize_with = "nullable")]
    statuses: Vec<TaskStatus>,
    #[serde(default)]
    discovery: Option<DiscoveryInfo>,
    #[serde(default)]
    health_check: Option<serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Deserialize)]
struct TaskStatus {
    task_id: Id,
    #[serde(default)]
    healthy: Option<bool>,
    #[serde(default)]
    container_status: Option<ContainerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct ContainerStatus {
    #[serde(default, deserialize_with = "nullable")]
    network_infos: Vec<NetworkInfo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct NetworkInfo {
    #[serde(default, deserialize_with = "nullable")]
    ip_addresses: Vec<IpAddress>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct IpAddress {
    #[serde(default)]
    ip_address: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct DiscoveryInfo {
    #[serde(default, deserialize_with = "nullable")]
    ports: Ports,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Ports {
    #[serde(default, deserialize_with = "nullable")]
    ports: Vec<Port>,
}

#[derive(Clone, Debug, Deserialize)]
struct Port {
    number: u32,
    #[serde(default)]
    name: Option<String>,
}

/// `mesos.v1.master.Event`.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    subscribed: Option<Subscribed>,
    #[serde(default)]
    task_added: Option<TaskAdded>,
    #[serde(default)]
    task_updated: Option<TaskUpdated>,
    #[serde(default)]
    agent_added: Option<AgentAdded>,
    #[serde(default)]
    agent_removed: Option<AgentRemoved>,
    #[serde(default)]
    framework_added: Option<FrameworkEvent>,
    #[serde(default)]
    framework_updated: Option<FrameworkEvent>,
    #[serde(default)]
    framework_removed: Option<FrameworkRemoved>,
}

#[derive(Debug, Deserialize)]
struct Subscribed {
    get_state: GetState,
    #[serde(default)]
    heartbeat_interval_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct TaskAdded {
    task: Task,
}

#[derive(Debug, Deserialize)]
struct TaskUpdated {
    status: TaskStatus,
    state: String,
}

#[derive(Debug, Deserialize)]
struct AgentAdded {
    agent: Agent,
}

#[derive(Debug, Deserialize)]
struct AgentRemoved {
    agent_id: Id,
}

#[derive(Debug, Deserialize)]
struct FrameworkEvent {
    framework: Framework,
}

#[derive(Debug, Deserialize)]
struct FrameworkRemoved {
    framework_info: FrameworkInfo,
}

/// What an event did to the table.
#[derive(Debug, PartialEq)]
pub(crate) enum Applied {
    /// `SUBSCRIBED`: the table was replaced by its snapshot; the master
    /// sends a `HEARTBEAT` this often (seconds), if it said.
    Subscribed(Option<f64>),
    /// Tasks, agents or frameworks changed.
    Changed,
    /// `HEARTBEAT`.
    Heartbeat,
    /// An event type not acted on (or about nothing known).
    Ignored,
}

/// The tasks, frameworks and agents the master knows.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// By task id (ids are unique per framework; the key holds both).
    tasks: HashMap<(String, String), Task>,
    /// Framework id to name.
    frameworks: HashMap<String, String>,
    /// Agent id to host name.
    agents: HashMap<String, String>,
}

/// Parses the body of a `GET_STATE` call into a table.
///
/// # Errors
/// When it is not JSON, not a `GET_STATE` response, or a field that
/// matching reads has the wrong type or is missing.
pub(crate) fn parse_state(body: &[u8]) -> Result<Table, String> {
    let r: Response = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if r.kind != "GET_STATE" {
        return Err(format!("a response of type {}, not GET_STATE", r.kind));
    }
    let state = r
        .get_state
        .ok_or_else(|| "a GET_STATE response without `get_state`".to_owned())?;
    Ok(Table::from_state(state))
}

impl Table {
    fn from_state(state: GetState) -> Self {
        let mut t = Table::default();
        for f in state.get_frameworks.frameworks {
            t.add_framework(f.framework_info);
        }
        for a in state.get_agents.agents {
            t.add_agent(a.agent_info);
        }
        for task in state.get_tasks.tasks {
            t.add_task(task);
        }
        t
    }

    fn add_framework(&mut self, info: FrameworkInfo) -> bool {
        match info.id {
            Some(id) => {
                self.frameworks.insert(id.value, info.name);
                true
            }
            None => false,
        }
    }

    fn add_agent(&mut self, info: AgentInfo) -> bool {
        match info.id {
            Some(id) => {
                self.agents.insert(id.value, info.hostname);
                true
            }
            None => false,
        }
    }

    fn add_task(&mut self, mut task: Task) {
        let key = (task.framework_id.value.clone(), task.task_id.value.clone());
        if TERMINAL.contains(&task.state.as_str()) {
            self.tasks.remove(&key);
            return;
        }
        if task.statuses.len() > MAX_STATUSES {
            task.statuses.drain(..task.statuses.len() - MAX_STATUSES);
        }
        self.tasks.insert(key, task);
    }

    /// Number of tasks held (terminal ones are dropped).
    pub(crate) fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Applies one `SUBSCRIBE` event (a RecordIO record's JSON).
    ///
    /// # Errors
    /// When it is not JSON, or an event type acted on lacks its payload or
    /// has one of the wrong shape; the table is then unchanged.
    pub(crate) fn apply(&mut self, record: &[u8]) -> Result<Applied, String> {
        let e: Event = serde_json::from_slice(record).map_err(|e| e.to_string())?;
        let missing = |field: &str| format!("a {} event without `{field}`", e.kind);
        Ok(match e.kind.as_str() {
            "SUBSCRIBED" => {
                let s = e.subscribed.ok_or_else(|| missing("subscribed"))?;
                *self = Table::from_state(s.get_state);
                Applied::Subscribed(s.heartbeat_interval_seconds)
            }
            "HEARTBEAT" => Applied::Heartbeat,
            "TASK_ADDED" => {
                let a = e.task_added.ok_or_else(|| missing("task_added"))?;
                self.add_task(a.task);
                Applied::Changed
            }
            "TASK_UPDATED" => {
                let u = e.task_updated.ok_or_else(|| missing("task_updated"))?;
                let mut matching = self
                    .tasks
                    .iter()
                    .filter(|((_, id), _)| *id == u.status.task_id.value)
                    .map(|(k, _)| k.clone());
                // The framework id is in the event too, but ids are unique
                // in practice; take the one task with that id.
                let Some(key) = matching.next() else {
                    return Ok(Applied::Ignored);
                };
                drop(matching);
                if TERMINAL.contains(&u.state.as_str()) {
                    self.tasks.remove(&key);
                } else if let Some(task) = self.tasks.get_mut(&key) {
                    task.state = u.state;
                    task.statuses.push(u.status);
                    if task.statuses.len() > MAX_STATUSES {
                        task.statuses.remove(0);
                    }
                }
                Applied::Changed
            }
            "AGENT_ADDED" => {
                let a = e.agent_added.ok_or_else(|| missing("agent_added"))?;
                if self.add_agent(a.agent.agent_info) {
                    Applied::Changed
                } else {
                    Applied::Ignored
                }
            }
            "AGENT_REMOVED" => {
                let a = e.agent_removed.ok_or_else(|| missing("agent_removed"))?;
                self.agents.remove(&a.agent_id.value);
                Applied::Changed
            }
            "FRAMEWORK_ADDED" | "FRAMEWORK_UPDATED" => {
                let f = match e.kind.as_str() {
                    "FRAMEWORK_ADDED" => e.framework_added,
                    _ => e.framework_updated,
                };
                let f = f.ok_or_else(|| missing(&e.kind.to_ascii_lowercase()))?;
                if self.add_framework(f.framework.framework_info) {
                    Applied::Changed
                } else {
                    Applied::Ignored
                }
            }
            "FRAMEWORK_REMOVED" => {
                let f = e
                    .framework_removed
                    .ok_or_else(|| missing("framework_removed"))?;
                if let Some(id) = f.framework_info.id {
                    self.frameworks.remove(&id.value);
                }
                Applied::Changed
            }
            _ => Applied::Ignored,
        })
    }
}

impl Task {
    /// Why it does not count, or `None` when it does.
    fn excluded(&self) -> Option<&'static str> {
        if self.state != "TASK_RUNNING" {
            return Some("not TASK_RUNNING");
        }
        let healthy = self.statuses.last().and_then(|s| s.healthy);
        if healthy == Some(false) || (self.health_check.is_some() && healthy != Some(true)) {
            return Some("not healthy");
        }
        None
    }

    /// The container-network IP of the latest status reporting one.
    fn container_ip(&self) -> Option<&str> {
        self.statuses.iter().rev().find_map(|s| {
            s.container_status
                .as_ref()?
                .network_infos
                .iter()
                .flat_map(|n| &n.ip_addresses)
                .find_map(|a| a.ip_address.as_deref().filter(|ip| !ip.is_empty()))
        })
    }

    fn port(&self, name: &str) -> Option<u32> {
        self.discovery
            .as_ref()?
            .ports
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.number)
    }
}

/// The targets of every selected route (a route with no task that counts
/// gets an empty list), and the problems met, for the log.
pub(crate) fn targets(
    table: &Table,
    selectors: &[TaskSelector],
) -> (HashMap<String, Vec<Target>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for sel in selectors {
        let mut list = Vec::new();
        let pattern = match regex::Regex::new(&sel.task_name_pattern) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!(
                    "route {}: task_name_pattern is not a regular expression: {e}",
                    sel.route
                ));
                out.insert(sel.route.clone(), list);
                continue;
            }
        };
        let frameworks: Vec<&str> = table
            .frameworks
            .iter()
            .filter(|(_, name)| **name == sel.framework)
            .map(|(id, _)| id.as_str())
            .collect();
        if frameworks.is_empty() {
            problems.push(format!("no Mesos framework named {}", sel.framework));
        }
        let mut tasks: Vec<&Task> = table
            .tasks
            .values()
            .filter(|t| frameworks.contains(&t.framework_id.value.as_str()))
            .filter(|t| pattern.is_match(&t.name))
            .collect();
        tasks.sort_by(|a, b| a.task_id.value.cmp(&b.task_id.value));
        for task in tasks {
            if let Some(why) = task.excluded() {
                problems.push(format!(
                    "route {}: task {}: {why}",
                    sel.route, task.task_id.value
                ));
                continue;
            }
            let port = match task.port(&sel.port_name) {
                Some(p @ 1..=65535) => p as u16,
                Some(p) => {
                    problems.push(format!(
                        "task {} has port {p} named {}, not a TCP port",
                        task.task_id.value, sel.port_name
                    ));
                    continue;
                }
                None => {
                    problems.push(format!(
                        "task {} has no port named `{}` in discovery.ports",
                        task.task_id.value, sel.port_name
                    ));
                    continue;
                }
            };
            let host = match task.container_ip() {
                Some(ip) => ip.to_owned(),
                None => match table.agents.get(&task.agent_id.value) {
                    Some(h) if !h.is_empty() => h.clone(),
                    _ => {
                        problems.push(format!(
                            "task {} runs on agent {}, which the master does not list",
                            task.task_id.value, task.agent_id.value
                        ));
                        continue;
                    }
                },
            };
            let t = Target { host, port };
            if !list.contains(&t) {
                list.push(t);
            }
        }
        list.sort();
        out.insert(sel.route.clone(), list);
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sel(route: &str, framework: &str, pattern: &str, port: &str) -> TaskSelector {
        TaskSelector {
            route: route.into(),
            framework: framework.into(),
            task_name_pattern: pattern.into(),
            port_name: port.into(),
        }
    }

    /// A task as the master writes it (trimmed of what is not read, plus
    /// some fields that are not, to show they are ignored).
    fn task(id: &str, name: &str, fw: &str, agent: &str, state: &str, port: u32) -> Value {
        json!({
            "name": name,
            "task_id": {"value": id},
            "framework_id": {"value": fw},
            "agent_id": {"value": agent},
            "state": state,
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0}}],
            "statuses": [{"task_id": {"value": id}, "state": state, "source": "SOURCE_EXECUTOR",
                          "timestamp": 1700000000.5, "uuid": "AAAA"}],
            "status_update_state": state,
            "discovery": {"visibility": "EXTERNAL", "name": name,
                          "ports": {"ports": [{"number": 1025, "name": "other", "protocol": "tcp"},
                                              {"number": port, "name": "apiserver", "protocol": "tcp"}]}},
            "user": "nobody"
        })
    }

    fn state(tasks: Vec<Value>) -> Value {
        json!({
            "get_tasks": {"tasks": tasks, "completed_tasks": [], "pending_tasks": []},
            "get_frameworks": {"frameworks": [
                {"framework_info": {"id": {"value": "fw-k8s"}, "name": "dev/kubernetes01", "user": "root"},
                 "active": true, "connected": true, "recovered": false},
                {"framework_info": {"id": {"value": "fw-other"}, "name": "marathon"},
                 "active": true, "connected": true, "recovered": false}]},
            "get_agents": {"agents": [
                {"agent_info": {"id": {"value": "a1"}, "hostname": "10.0.0.1", "port": 5051}, "active": true},
                {"agent_info": {"id": {"value": "a2"}, "hostname": "10.0.0.2"}, "active": true}]},
            "get_executors": {"executors": []}
        })
    }

    fn ends(table: &Table, sels: &[TaskSelector]) -> (HashMap<String, Vec<String>>, Vec<String>) {
        let (t, p) = targets(table, sels);
        let t = t
            .into_iter()
            .map(|(k, v)| {
                let v = v.into_iter().map(|t| format!("{}:{}", t.host, t.port));
                (k, v.collect())
            })
            .collect();
        (t, p)
    }

    fn k8s() -> Vec<TaskSelector> {
        vec![sel(
            "k",
            "dev/kubernetes01",
            "kube-control-plane",
            "apiserver",
        )]
    }

    fn record(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn get_state_matches_framework_name_pattern_and_port_name() {
        let body = json!({"type": "GET_STATE", "get_state": state(vec![
            task("t0", "kube-control-plane-0-instance", "fw-k8s", "a1", "TASK_RUNNING", 6443),
            task("t1", "kube-control-plane-1-instance", "fw-k8s", "a2", "TASK_RUNNING", 6443),
            task("t2", "kube-node-0-kubelet", "fw-k8s", "a2", "TASK_RUNNING", 7000),
            task("t3", "kube-control-plane-2-instance", "fw-other", "a2", "TASK_RUNNING", 9000),
            task("t4", "kube-control-plane-2-instance", "fw-k8s", "a2", "TASK_STAGING", 9001),
            task("t5", "kube-control-plane-3-instance", "fw-k8s", "a2", "TASK_KILLED", 9002),
        ])});
        let table = parse_state(body.to_string().as_bytes()).unwrap();
        assert_eq!(table.tasks(), 5, "terminal tasks are dropped");
        let (t, p) = ends(
            &table,
            &[
                k8s()[0].clone(),
                sel(
                    "anchored",
                    "dev/kubernetes01",
                    "^kube-control-plane-1-",
                    "apiserver",
                ),
                sel("any-name", "dev/kubernetes01", "", "apiserver"),
                sel("nofw", "dev/kubernetes02", "kube", "apiserver"),
            ],
        );
        assert_eq!(t["k"], ["10.0.0.1:6443", "10.0.0.2:6443"]);
        assert_eq!(t["anchored"], ["10.0.0.2:6443"]);
        assert_eq!(
            t["any-name"],
            ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.2:7000"]
        );
        assert!(t["nofw"].is_empty());
        assert_eq!(
            p,
            [
                "route k: task t4: not TASK_RUNNING",
                "route any-name: task t4: not TASK_RUNNING",
                "no Mesos framework named dev/kubernetes02",
            ]
        );
    }

    #[test]
    fn health_and_container_networks() {
        let mut healthy = task(
            "h",
            "kube-control-plane-0",
            "fw-k8s",
            "a1",
            "TASK_RUNNING",
            1,
        );
        healthy["health_check"] = json!({"type": "TCP", "tcp": {"port": 1}});
        healthy["statuses"][0]["healthy"] = json!(true);
        let mut unchecked = healthy.clone();
        unchecked["task_id"]["value"] = json!("u");
        unchecked["statuses"][0]
            .as_object_mut()
            .unwrap()
            .remove("healthy");
        let mut sick_without_check = task(
            "s",
            "kube-control-plane-1",
            "fw-k8s",
            "a1",
            "TASK_RUNNING",
            2,
        );
        sick_without_check["statuses"][0]["healthy"] = json!(false);
        let mut container = task(
            "c",
            "kube-control-plane-2",
            "fw-k8s",
            "a9",
            "TASK_RUNNING",
            3,
        );
        container["statuses"] = json!([
            {"task_id": {"value": "c"}, "state": "TASK_STARTING"},
            {"task_id": {"value": "c"}, "state": "TASK_RUNNING",
             "container_status": {"network_infos": [{"name": "dcos", "ip_addresses": [
                 {"protocol": "IPv4", "ip_address": "9.0.0.3"}]}]}},
            {"task_id": {"value": "c"}, "state": "TASK_RUNNING", "container_status": {}}
        ]);
        let table = Table::from_state(
            serde_json::from_value(state(vec![
                healthy,
                unchecked,
                sick_without_check,
                container,
            ]))
            .unwrap(),
        );
        let (t, p) = ends(&table, &k8s());
        assert_eq!(t["k"], ["10.0.0.1:1", "9.0.0.3:3"]);
        assert_eq!(
            p,
            [
                "route k: task s: not healthy",
                "route k: task u: not healthy"
            ]
        );
    }

    #[test]
    fn events_keep_the_table() {
        let mut table = Table::default();
        let sub = json!({"type": "SUBSCRIBED", "subscribed": {
            "get_state": state(vec![task("t0", "kube-control-plane-0", "fw-k8s", "a1", "TASK_RUNNING", 6443)]),
            "heartbeat_interval_seconds": 15.0}});
        assert_eq!(
            table.apply(&record(sub)),
            Ok(Applied::Subscribed(Some(15.0)))
        );
        assert_eq!(ends(&table, &k8s()).0["k"], ["10.0.0.1:6443"]);
        assert_eq!(
            table.apply(br#"{"type":"HEARTBEAT"}"#),
            Ok(Applied::Heartbeat)
        );

        // A new task, staging then running; on a new agent.
        let added = json!({"type": "TASK_ADDED", "task_added": {"task":
            task("t1", "kube-control-plane-1", "fw-k8s", "a3", "TASK_STAGING", 6443)}});
        assert_eq!(table.apply(&record(added)), Ok(Applied::Changed));
        assert_eq!(ends(&table, &k8s()).0["k"], ["10.0.0.1:6443"]);
        let agent = json!({"type": "AGENT_ADDED", "agent_added": {"agent": {"agent_info":
            {"id": {"value": "a3"}, "hostname": "10.0.0.3"}, "active": true}}});
        assert_eq!(table.apply(&record(agent)), Ok(Applied::Changed));
        let update = |id: &str, state: &str, healthy: Option<bool>| {
            let mut status = json!({"task_id": {"value": id}, "state": state, "timestamp": 1.0});
            if let Some(h) = healthy {
                status["healthy"] = json!(h);
            }
            record(json!({"type": "TASK_UPDATED", "task_updated": {
                "framework_id": {"value": "fw-k8s"}, "status": status, "state": state}}))
        };
        assert_eq!(
            table.apply(&update("t1", "TASK_RUNNING", None)),
            Ok(Applied::Changed)
        );
        assert_eq!(
            ends(&table, &k8s()).0["k"],
            ["10.0.0.1:6443", "10.0.0.3:6443"]
        );
        // Health flips.
        assert_eq!(
            table.apply(&update("t1", "TASK_RUNNING", Some(false))),
            Ok(Applied::Changed)
        );
        assert_eq!(ends(&table, &k8s()).0["k"], ["10.0.0.1:6443"]);
        table
            .apply(&update("t1", "TASK_RUNNING", Some(true)))
            .unwrap();
        assert_eq!(
            ends(&table, &k8s()).0["k"],
            ["10.0.0.1:6443", "10.0.0.3:6443"]
        );
        // Killed: gone from the table.
        table.apply(&update("t0", "TASK_KILLING", None)).unwrap();
        assert_eq!(ends(&table, &k8s()).0["k"], ["10.0.0.3:6443"]);
        table.apply(&update("t0", "TASK_KILLED", None)).unwrap();
        assert_eq!(table.tasks(), 1);
        // Updates for unknown tasks, and unknown event types, are ignored.
        assert_eq!(
            table.apply(&update("zz", "TASK_RUNNING", None)),
            Ok(Applied::Ignored)
        );
        assert_eq!(
            table.apply(br#"{"type":"TASK_SOMETHING_NEW","x":{}}"#),
            Ok(Applied::Ignored)
        );
        // The agent goes: its task has no address any more.
        let gone = json!({"type": "AGENT_REMOVED", "agent_removed": {"agent_id": {"value": "a3"}}});
        table.apply(&record(gone)).unwrap();
        let (t, p) = ends(&table, &k8s());
        assert!(t["k"].is_empty());
        assert_eq!(
            p,
            ["task t1 runs on agent a3, which the master does not list"]
        );
        // A framework renamed, then removed.
        let renamed = json!({"type": "FRAMEWORK_UPDATED", "framework_updated": {"framework":
            {"framework_info": {"id": {"value": "fw-k8s"}, "name": "dev/kubernetes02"},
             "active": true, "connected": true, "recovered": false}}});
        table.apply(&record(renamed)).unwrap();
        assert_eq!(
            ends(&table, &k8s()).1,
            ["no Mesos framework named dev/kubernetes01"]
        );
        let added = json!({"type": "FRAMEWORK_ADDED", "framework_added": {"framework":
            {"framework_info": {"id": {"value": "fw-new"}, "name": "dev/kubernetes01"},
             "active": true, "connected": true, "recovered": false}}});
        table.apply(&record(added)).unwrap();
        assert!(ends(&table, &k8s()).1.is_empty());
        let removed = json!({"type": "FRAMEWORK_REMOVED", "framework_removed": {"framework_info":
            {"id": {"value": "fw-new"}, "name": "dev/kubernetes01"}}});
        table.apply(&record(removed)).unwrap();
        assert_eq!(
            ends(&table, &k8s()).1,
            ["no Mesos framework named dev/kubernetes01"]
        );
        // A new SUBSCRIBED replaces everything.
        let sub = json!({"type": "SUBSCRIBED", "subscribed": {"get_state": state(vec![])}});
        assert_eq!(table.apply(&record(sub)), Ok(Applied::Subscribed(None)));
        assert_eq!(table.tasks(), 0);
    }

    #[test]
    fn ports_and_statuses_edge_cases() {
        let mut noport = task(
            "n",
            "kube-control-plane-0",
            "fw-k8s",
            "a1",
            "TASK_RUNNING",
            1,
        );
        noport["discovery"] = Value::Null;
        let big = task(
            "b",
            "kube-control-plane-1",
            "fw-k8s",
            "a1",
            "TASK_RUNNING",
            70000,
        );
        let mut many = task(
            "m",
            "kube-control-plane-2",
            "fw-k8s",
            "a1",
            "TASK_RUNNING",
            3,
        );
        many["statuses"] = json!((0..10)
            .map(|_| json!({"task_id": {"value": "m"}}))
            .collect::<Vec<_>>());
        let table =
            Table::from_state(serde_json::from_value(state(vec![noport, big, many])).unwrap());
        assert!(table
            .tasks
            .values()
            .all(|t| t.statuses.len() <= MAX_STATUSES));
        let (t, p) = ends(&table, &k8s());
        assert_eq!(t["k"], ["10.0.0.1:3"]);
        assert_eq!(
            p,
            [
                "task b has port 70000 named apiserver, not a TCP port",
                "task n has no port named `apiserver` in discovery.ports",
            ]
        );
        let (_, p) = ends(&table, &[sel("bad", "x", "(", "p")]);
        assert!(
            p[0].starts_with("route bad: task_name_pattern is not a regular expression"),
            "{p:?}"
        );
    }

    #[test]
    fn malformed_input_is_an_error_and_changes_nothing() {
        let mut table = Table::from_state(
            serde_json::from_value(state(vec![task(
                "t0",
                "kube-control-plane-0",
                "fw-k8s",
                "a1",
                "TASK_RUNNING",
                6443,
            )]))
            .unwrap(),
        );
        for bad in [
            &b"{\"type\":"[..],
            b"<html>",
            b"[]",
            br#"{"type":"TASK_ADDED"}"#,
            br#"{"type":"TASK_ADDED","task_added":{"task":{"name":3}}}"#,
            br#"{"type":"TASK_UPDATED","task_updated":{"state":"TASK_RUNNING"}}"#,
            br#"{"type":"SUBSCRIBED","subscribed":{"get_state":{"get_tasks":{"tasks":{}}}}}"#,
            br#"{"type":"AGENT_REMOVED","agent_removed":{}}"#,
            br#"{"type":"FRAMEWORK_ADDED"}"#,
            br#"{"no_type":1}"#,
        ] {
            assert!(
                table.apply(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(ends(&table, &k8s()).0["k"], ["10.0.0.1:6443"]);
        assert!(
            parse_state(b"{\"type\":\"GET_HEALTH\",\"get_health\":{\"healthy\":true}}")
                .unwrap_err()
                .contains("not GET_STATE")
        );
        assert!(parse_state(br#"{"type":"GET_STATE"}"#)
            .unwrap_err()
            .contains("without"));
        assert!(parse_state(b"garbage").is_err());
        // Nulls and missing lists are empty.
        let t = parse_state(br#"{"type":"GET_STATE","get_state":{"get_tasks":null}}"#).unwrap();
        assert_eq!(t.tasks(), 0);
    }
}
