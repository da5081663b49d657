//! Marathon's app list (`GET /v2/apps?embed=apps.tasks&embed=apps.readiness`)
//! into the endpoints of each selected app port: which tasks count and at
//! which address. No I/O: host names are resolved by the caller.
//!
//! Rules (Marathon's own JSON, as in its RAML and `app.schema.json`):
//! - a task counts when its `state` is `TASK_RUNNING` (a task being killed
//!   is `TASK_KILLING`); when the app has `healthChecks`, it has at least
//!   one `healthCheckResults` entry and every one is `alive`; when the app
//!   has `readinessChecks` and `readinessCheckResults` holds a result for
//!   the task (Marathon keeps them during deployments), that result is
//!   `ready`;
//! - the port `i` is `port_index`, or the position of the port named
//!   `port_name` in `portDefinitions`, else in `container.portMappings`
//!   (or the older `container.docker.portMappings`);
//! - host and bridge networking: the task's `host` with `ports[i]`;
//!   container networking (a `networks` entry of mode `container`, the
//!   older `ipAddress` field or Docker `USER` network): the task's
//!   `ipAddresses[0].ipAddress` with `portMappings[i].containerPort`.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

use crate::{AppSelector, PortSelector};

/// Where one task of a selected app is reached, before host names are
/// resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Target {
    /// An IP address or the agent's host name.
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The apps, parsed: only what discovery reads.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Apps {
    #[serde(deserialize_with = "nullable")]
    pub(crate) apps: Vec<App>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct App {
    pub(crate) id: String,
    #[serde(default, deserialize_with = "nullable")]
    port_definitions: Vec<PortDefinition>,
    #[serde(default, deserialize_with = "nullable")]
    container: Option<Container>,
    #[serde(default, deserialize_with = "nullable")]
    networks: Vec<Network>,
    /// The deprecated per-task IP request: container networking.
    #[serde(default, deserialize_with = "nullable")]
    ip_address: Option<serde::de::IgnoredAny>,
    #[serde(default, deserialize_with = "nullable")]
    health_checks: Vec<serde::de::IgnoredAny>,
    #[serde(default, deserialize_with = "nullable")]
    readiness_checks: Vec<serde::de::IgnoredAny>,
    #[serde(default, deserialize_with = "nullable")]
    readiness_check_results: Vec<ReadinessResult>,
    #[serde(default, deserialize_with = "nullable")]
    tasks: Vec<Task>,
    /// The app's labels (`SNIROUTE_*`, `HAPROXY_*`: see [`crate::labels`]).
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) labels: HashMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) version_info: Option<VersionInfo>,
}

/// `versionInfo`: when the app's configuration last changed (not its
/// scaling), which decides conflicts between label routes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionInfo {
    #[serde(default)]
    pub(crate) last_config_change_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PortDefinition {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default, deserialize_with = "nullable")]
    port_mappings: Vec<PortMapping>,
    #[serde(default, deserialize_with = "nullable")]
    docker: Option<Docker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Docker {
    #[serde(default)]
    network: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    #[serde(default)]
    container_port: Option<u16>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Network {
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadinessResult {
    task_id: String,
    ready: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    ports: Vec<u16>,
    #[serde(default, deserialize_with = "nullable")]
    ip_addresses: Vec<IpAddress>,
    #[serde(default, deserialize_with = "nullable")]
    health_check_results: Vec<HealthResult>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpAddress {
    ip_address: String,
}

#[derive(Debug, Default, Deserialize)]
struct HealthResult {
    alive: bool,
}

/// `null` reads as the default (Marathon writes `"container": null`).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Parses the body of `GET /v2/apps`.
pub(crate) fn parse(body: &[u8]) -> Result<Apps, serde_json::Error> {
    serde_json::from_slice(body)
}

impl App {
    fn port_mappings(&self) -> &[PortMapping] {
        match &self.container {
            Some(c) if !c.port_mappings.is_empty() => &c.port_mappings,
            Some(Container {
                docker: Some(d), ..
            }) => &d.port_mappings,
            _ => &[],
        }
    }

    /// Whether tasks get their own IP address (container networking,
    /// `container/bridge` excluded: bridge tasks are reached on the host).
    fn container_networking(&self) -> bool {
        let docker_user = matches!(
            &self.container,
            Some(Container { docker: Some(Docker { network: Some(n), .. }), .. }) if n == "USER"
        );
        self.networks
            .iter()
            .any(|n| n.mode.as_deref() == Some("container"))
            || self.ip_address.is_some()
            || docker_user
    }

    /// The port index `sel` means for this app.
    fn port_index(&self, sel: &PortSelector) -> Result<usize, String> {
        match sel {
            PortSelector::Index(i) => Ok(*i),
            PortSelector::Name(name) => self
                .port_definitions
                .iter()
                .position(|p| p.name.as_deref() == Some(name))
                .or_else(|| {
                    self.port_mappings()
                        .iter()
                        .position(|p| p.name.as_deref() == Some(name))
                })
                .ok_or_else(|| {
                    format!(
                        "app {} has no port named `{name}` in portDefinitions or container.portMappings",
                        self.id
                    )
                }),
        }
    }

    /// Why `task` does not count, or `None` when it does.
    fn excluded(&self, task: &Task) -> Option<&'static str> {
        if task.state.as_deref() != Some("TASK_RUNNING") {
            return Some("not TASK_RUNNING");
        }
        if !self.health_checks.is_empty()
            && (task.health_check_results.is_empty()
                || !task.health_check_results.iter().all(|h| h.alive))
        {
            return Some("not healthy");
        }
        if !self.readiness_checks.is_empty()
            && self
                .readiness_check_results
                .iter()
                .any(|r| r.task_id == task.id && !r.ready)
        {
            return Some("not ready");
        }
        None
    }

    /// How many ports the app declares (`portDefinitions`, else the
    /// container's port mappings).
    pub(crate) fn port_count(&self) -> usize {
        self.port_definitions.len().max(self.port_mappings().len())
    }

    /// The targets of this app's port `sel`; problems (per task or for the
    /// whole app) go to `problems`.
    pub(crate) fn targets(&self, sel: &PortSelector, problems: &mut Vec<String>) -> Vec<Target> {
        let index = match self.port_index(sel) {
            Ok(i) => i,
            Err(e) => {
                problems.push(e);
                return Vec::new();
            }
        };
        let container = self.container_networking();
        let mut out = Vec::new();
        for task in &self.tasks {
            if let Some(why) = self.excluded(task) {
                problems.push(format!("task {}: {why}", task.id));
                continue;
            }
            let target = if container {
                let ip = task.ip_addresses.first().map(|a| a.ip_address.clone());
                let port = self
                    .port_mappings()
                    .get(index)
                    .and_then(|m| m.container_port)
                    .filter(|&p| p != 0);
                match (ip, port) {
                    (Some(host), Some(port)) => Target { host, port },
                    (None, _) => {
                        problems.push(format!("task {} has no IP address yet", task.id));
                        continue;
                    }
                    (_, None) => {
                        problems.push(format!(
                            "app {} has no container port at index {index}",
                            self.id
                        ));
                        continue;
                    }
                }
            } else {
                match (&task.host, task.ports.get(index)) {
                    (Some(host), Some(&port)) if port != 0 && !host.is_empty() => Target {
                        host: host.clone(),
                        port,
                    },
                    _ => {
                        problems.push(format!(
                            "task {} has no host port at index {index}",
                            task.id
                        ));
                        continue;
                    }
                }
            };
            if !out.contains(&target) {
                out.push(target);
            }
        }
        out.sort();
        out
    }
}

/// The targets of every selected route (a route whose app is absent gets an
/// empty list), and what was left out and why (`route web: task
/// prod_web.1: not healthy`), for the log, `/status` and `sniroute
/// discover`.
pub(crate) fn targets(
    apps: &Apps,
    selectors: &[AppSelector],
) -> (HashMap<String, Vec<Target>>, Vec<String>) {
    let by_id: HashMap<&str, &App> = apps.apps.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for sel in selectors {
        let mut mine = Vec::new();
        let targets = match by_id.get(normalise(&sel.app_id).as_str()) {
            Some(app) => app.targets(&sel.port, &mut mine),
            None => {
                mine.push(format!("no Marathon app {}", sel.app_id));
                Vec::new()
            }
        };
        problems.extend(
            mine.into_iter()
                .map(|p| format!("route {}: {p}", sel.route)),
        );
        out.insert(sel.route.clone(), targets);
    }
    (out, problems)
}

/// An app id as Marathon writes it: absolute, without a trailing slash.
pub(crate) fn normalise(id: &str) -> String {
    let trimmed = id.trim_matches('/');
    format!("/{trimmed}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(route: &str, id: &str, port: PortSelector) -> AppSelector {
        AppSelector {
            route: route.into(),
            app_id: id.into(),
            port,
        }
    }

    fn run(
        apps: serde_json::Value,
        sels: &[AppSelector],
    ) -> (HashMap<String, Vec<String>>, Vec<String>) {
        let apps = parse(apps.to_string().as_bytes()).unwrap();
        let (t, problems) = targets(&apps, sels);
        let t = t
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.into_iter()
                        .map(|t| format!("{}:{}", t.host, t.port))
                        .collect(),
                )
            })
            .collect();
        (t, problems)
    }

    fn task(id: &str, state: &str, host: &str, ports: &[u16]) -> serde_json::Value {
        json!({"id": id, "appId": "/prod/web", "state": state, "host": host, "ports": ports,
               "ipAddresses": [{"ipAddress": "9.9.9.9", "protocol": "IPv4"}],
               "startedAt": "2024-01-01T00:00:00.000Z", "version": "2024-01-01T00:00:00.000Z"})
    }

    #[test]
    fn host_networking_by_index_and_name() {
        let apps = json!({"apps": [{
            "id": "/prod/web",
            "portDefinitions": [{"port": 10000, "protocol": "tcp", "name": "http"},
                                {"port": 10001, "protocol": "tcp", "name": "https"}],
            "networks": [{"mode": "host"}],
            "container": null,
            "tasks": [task("a", "TASK_RUNNING", "10.0.0.1", &[31000, 31001]),
                      task("b", "TASK_RUNNING", "10.0.0.2", &[32000, 32001]),
                      task("c", "TASK_STAGING", "10.0.0.3", &[33000, 33001]),
                      task("d", "TASK_KILLING", "10.0.0.4", &[34000, 34001])]
        }]});
        let (t, p) = run(
            apps,
            &[
                sel("by-name", "/prod/web", PortSelector::Name("https".into())),
                sel("by-index", "prod/web/", PortSelector::Index(0)),
            ],
        );
        assert_eq!(t["by-name"], ["10.0.0.1:31001", "10.0.0.2:32001"]);
        assert_eq!(t["by-index"], ["10.0.0.1:31000", "10.0.0.2:32000"]);
        // Tasks left out are named with their route and the reason.
        assert_eq!(
            p,
            [
                "route by-name: task c: not TASK_RUNNING",
                "route by-name: task d: not TASK_RUNNING",
                "route by-index: task c: not TASK_RUNNING",
                "route by-index: task d: not TASK_RUNNING",
            ]
        );
    }

    #[test]
    fn bridge_networking_uses_host_ports_and_mapping_names() {
        let apps = json!({"apps": [{
            "id": "/prod/web",
            "portDefinitions": [],
            "networks": [{"mode": "container/bridge"}],
            "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                          "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "http"},
                                           {"containerPort": 443, "hostPort": 0, "name": "https"}]},
            "tasks": [task("a", "TASK_RUNNING", "10.0.0.1", &[31000, 31001])]
        }]});
        let (t, _) = run(
            apps,
            &[sel("r", "/prod/web", PortSelector::Name("https".into()))],
        );
        assert_eq!(t["r"], ["10.0.0.1:31001"]);
    }

    #[test]
    fn container_networking_uses_the_task_ip_and_container_port() {
        let mut t1 = task("a", "TASK_RUNNING", "10.0.0.1", &[]);
        t1["ipAddresses"] = json!([{"ipAddress": "9.0.0.1", "protocol": "IPv4"}, {"ipAddress": "fd00::1", "protocol": "IPv6"}]);
        let mut t2 = task("b", "TASK_RUNNING", "10.0.0.2", &[]);
        t2["ipAddresses"] = json!([]);
        let apps = json!({"apps": [{
            "id": "/prod/web",
            "networks": [{"mode": "container", "name": "dcos"}],
            "container": {"type": "MESOS",
                          "portMappings": [{"containerPort": 8080, "name": "http"},
                                           {"containerPort": 8443, "name": "https"}]},
            "tasks": [t1, t2]
        }, {
            "id": "/legacy",
            "ipAddress": {"networkName": "dcos"},
            "container": {"type": "DOCKER", "docker": {"network": "USER",
                          "portMappings": [{"containerPort": 6443, "name": "api"}]}},
            "tasks": [task("c", "TASK_RUNNING", "10.0.0.3", &[])]
        }]});
        let (t, p) = run(
            apps,
            &[
                sel("r", "/prod/web", PortSelector::Name("https".into())),
                sel("legacy", "/legacy", PortSelector::Name("api".into())),
            ],
        );
        assert_eq!(t["r"], ["9.0.0.1:8443"]);
        assert_eq!(t["legacy"], ["9.9.9.9:6443"]);
        assert_eq!(p, ["route r: task b has no IP address yet"]);
    }

    #[test]
    fn health_checks_decide_when_the_app_has_them() {
        let mut healthy = task("a", "TASK_RUNNING", "10.0.0.1", &[1]);
        healthy["healthCheckResults"] = json!([{"alive": true, "consecutiveFailures": 0, "taskId": "a"},
                                               {"alive": true, "consecutiveFailures": 0, "taskId": "a"}]);
        let mut one_down = task("b", "TASK_RUNNING", "10.0.0.2", &[1]);
        one_down["healthCheckResults"] =
            json!([{"alive": true}, {"alive": false, "consecutiveFailures": 3}]);
        let no_result_yet = task("c", "TASK_RUNNING", "10.0.0.3", &[1]);
        let mut app = json!({"id": "/h", "portDefinitions": [{"port": 0}],
            "healthChecks": [{"protocol": "TCP", "portIndex": 0}, {"protocol": "MESOS_TCP"}],
            "tasks": [healthy, one_down, no_result_yet]});
        let (t, _) = run(
            json!({"apps": [app.clone()]}),
            &[sel("r", "/h", PortSelector::Index(0))],
        );
        assert_eq!(t["r"], ["10.0.0.1:1"]);
        // Without health checks, results (stale ones) do not matter.
        app["healthChecks"] = json!([]);
        let (t, _) = run(
            json!({"apps": [app]}),
            &[sel("r", "/h", PortSelector::Index(0))],
        );
        assert_eq!(t["r"], ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
    }

    #[test]
    fn readiness_results_decide_when_present() {
        let app = json!({"id": "/r", "portDefinitions": [{"port": 0}],
            "readinessChecks": [{"name": "readinessCheck", "protocol": "HTTP", "path": "/ready", "portName": "http"}],
            "readinessCheckResults": [
                {"name": "readinessCheck", "taskId": "a", "ready": true, "lastResponse": {"status": 200, "contentType": "text/plain", "body": ""}},
                {"name": "readinessCheck", "taskId": "b", "ready": false, "lastResponse": {"status": 503, "contentType": "text/plain", "body": ""}}],
            "tasks": [task("a", "TASK_RUNNING", "10.0.0.1", &[1]),
                      task("b", "TASK_RUNNING", "10.0.0.2", &[1]),
                      task("c", "TASK_RUNNING", "10.0.0.3", &[1])]});
        let (t, _) = run(
            json!({"apps": [app]}),
            &[sel("r", "/r", PortSelector::Index(0))],
        );
        // c has no result: its deployment is over, Marathon dropped it.
        assert_eq!(t["r"], ["10.0.0.1:1", "10.0.0.3:1"]);
    }

    #[test]
    fn edge_cases() {
        let apps = json!({"apps": [
            {"id": "/empty", "portDefinitions": [{"port": 0, "name": "https"}], "tasks": []},
            {"id": "/noports", "portDefinitions": [], "tasks": [task("x", "TASK_RUNNING", "10.0.0.1", &[])]},
            {"id": "/named", "portDefinitions": [{"port": 0, "name": "http"}], "tasks": [task("y", "TASK_RUNNING", "10.0.0.1", &[5])]},
            {"id": "/nulls", "portDefinitions": null, "container": null, "tasks": null, "networks": null}
        ]});
        let (t, p) = run(
            apps,
            &[
                sel("empty", "/empty", PortSelector::Name("https".into())),
                sel("noports", "/noports", PortSelector::Index(0)),
                sel("unknown-name", "/named", PortSelector::Name("https".into())),
                sel("out-of-range", "/named", PortSelector::Index(1)),
                sel("nulls", "/nulls", PortSelector::Index(0)),
                sel("absent", "/absent", PortSelector::Index(0)),
            ],
        );
        for route in [
            "empty",
            "noports",
            "unknown-name",
            "out-of-range",
            "nulls",
            "absent",
        ] {
            assert!(t[route].is_empty(), "{route}: {:?}", t[route]);
        }
        assert_eq!(
            p,
            [
                "route noports: task x has no host port at index 0",
                "route unknown-name: app /named has no port named `https` in portDefinitions or container.portMappings",
                "route out-of-range: task y has no host port at index 1",
                "route absent: no Marathon app /absent",
            ]
        );
        assert!(parse(b"{\"apps\": 3}").is_err());
        assert!(parse(b"<html>").is_err());
    }
}
