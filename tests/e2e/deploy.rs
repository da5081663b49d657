//! The deployment files in `deploy/`: the Marathon apps validate against
//! Marathon's schema and carry a config `sniroute check` accepts; the
//! Prometheus config, rules and rule tests pass promtool; the Grafana
//! dashboard queries only metrics sniroute exports; the systemd unit and the
//! Dockerfile have what they need.
//!
//! Needs `promtool` (Debian `prometheus`) and `python3` with `jsonschema`
//! (Debian `python3-jsonschema`); without them these tests fail and say what
//! to install (`bash .ci/run` installs both). Marathon's schema is read from
//! `../shared/marathon/app.schema.json`, beside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Ports Marathon-LB (80, 443, 9090, 9091, 10000-10150) and Edge-LB (6090)
/// take on public agents: the admin port must avoid them.
fn lb_port(port: u64) -> bool {
    matches!(port, 80 | 443 | 9090 | 9091 | 6090 | 10000..=10150)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

fn output_text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `promtool ARGS`, failing with an install hint when it is missing.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run promtool ({e}): install the Debian package `prometheus` \
             (apt-get install -y prometheus; bash .ci/run does)"
        ),
    }
}

fn assert_promtool(args: &[&str]) {
    let out = promtool(args);
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}",
        args.join(" "),
        output_text(&out)
    );
}

/// The metric names crates/router/src/metrics.rs defines: every quoted
/// `"sniroute_..."` string in it.
fn known_metrics() -> BTreeSet<String> {
    let text = read(&repo().join("crates/router/src/metrics.rs"));
    let mut names = BTreeSet::new();
    for piece in text.split('"').skip(1).step_by(2) {
        if piece.starts_with("sniroute_")
            && piece[9..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        {
            names.insert(piece.to_owned());
        }
    }
    assert!(
        names.len() >= 10,
        "found only {names:?} in metrics.rs: has its format changed?"
    );
    names
}

/// Every `sniroute_[a-z_]+` in `text`, with the histogram suffixes
/// `_bucket`, `_sum` and `_count` removed.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sniroute_") {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        if !preceded_by_word && name.len() > "sniroute_".len() {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// A duration as the sniroute config writes them: `30s`, `1m30s`, `500ms`, `24h`.
fn parse_duration(text: &str) -> f64 {
    let mut total = 0.0;
    let mut rest = text.trim();
    assert!(!rest.is_empty(), "empty duration");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or_else(|| panic!("duration {text:?} lacks a unit"));
        let value: f64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            u => panic!("unknown unit {u:?} in duration {text:?}"),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    total
}

fn marathon_apps() -> Vec<PathBuf> {
    let mut apps: Vec<PathBuf> = std::fs::read_dir(deploy("marathon"))
        .expect("deploy/marathon/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    apps.sort();
    assert!(
        apps.len() >= 2,
        "expected the Marathon apps in deploy/marathon/, found {apps:?}"
    );
    apps
}

fn marathon_schema_path() -> PathBuf {
    let path = repo().join("../shared/marathon/app.schema.json");
    assert!(
        path.exists(),
        "Marathon's app schema is missing at {}: clone the repository with shared/ beside it",
        path.display()
    );
    path
}

/// The schema of the App object: the root, or what its `$ref` names.
fn app_schema(root: &serde_json::Value) -> &serde_json::Value {
    match root["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            root.pointer(pointer)
                .unwrap_or_else(|| panic!("$ref {r} not found"))
        }
        None => root,
    }
}

/// The schema does not reject unknown keys: check every key of every object
/// whose schema lists `properties` against that list, recursively.
fn unknown_keys(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            // Objects whose schema lists no properties (labels, env) take any key.
            let Some(props) = schema["properties"].as_object() else {
                return;
            };
            for (k, v) in map {
                match props.get(k) {
                    Some(sub) => unknown_keys(v, sub, &format!("{at}/{k}"), out),
                    None => out.push(format!("{at}/{k}")),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                unknown_keys(v, &schema["items"], &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

const VALIDATE_PY: &str = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit(3)
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft7Validator(schema)
failed = False
for path in sys.argv[2:]:
    app = json.load(open(path))
    for e in sorted(validator.iter_errors(app), key=lambda e: [str(p) for p in e.path]):
        failed = True
        print("%s: /%s: %s" % (path, "/".join(str(p) for p in e.path), e.message))
sys.exit(1 if failed else 0)
"#;

/// Validates the files against the schema with Python's jsonschema.
fn jsonschema_validate(schema: &Path, files: &[PathBuf]) -> Output {
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(schema)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): install the Debian packages `python3` and \
                 `python3-jsonschema` (bash .ci/run does)"
            )
        });
    if out.status.code() == Some(3) {
        panic!(
            "python3 has no `jsonschema` module: install the Debian package \
             `python3-jsonschema` (apt-get install -y python3-jsonschema; bash .ci/run does)"
        );
    }
    out
}

#[test]
fn marathon_apps_validate_against_marathons_schema() {
    let _turn = crate::common::light();
    let schema_path = marathon_schema_path();
    let apps = marathon_apps();
    for app in &apps {
        json(app); // a readable message for plain JSON errors first
    }

    // The validator must be able to fail: a broken copy is rejected.
    let dir = tempfile::tempdir().unwrap();
    let mut broken = json(&apps[0]);
    broken["portDefinitions"][0]["port"] = serde_json::json!("6443");
    broken["upgradeStrategy"]["minimumHealthCapacity"] = serde_json::json!(2);
    let broken_path = dir.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let out = jsonschema_validate(&schema_path, &[broken_path]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("port"),
        "the schema validator accepted a broken app:\n{}",
        output_text(&out)
    );

    let out = jsonschema_validate(&schema_path, &apps);
    assert!(
        out.status.success(),
        "Marathon app(s) do not validate against {}:\n{}",
        schema_path.display(),
        output_text(&out)
    );

    // Unknown (misspelt) keys, which the schema lets through.
    let root = json(&schema_path);
    let schema = app_schema(&root);
    assert!(
        schema["properties"]
            .as_object()
            .is_some_and(|p| p.contains_key("portDefinitions")),
        "unexpected schema layout"
    );
    for app in &apps {
        let mut unknown = Vec::new();
        unknown_keys(&json(app), schema, "", &mut unknown);
        assert!(
            unknown.is_empty(),
            "{}: keys Marathon's schema does not know: {unknown:?}",
            app.display()
        );
    }
}

/// The embedded config of a Marathon app, parsed.
fn embedded_config(app: &serde_json::Value, path: &Path) -> (String, serde_yaml::Value) {
    let text = app["env"]["SNIROUTE_CONFIG_YAML"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: env.SNIROUTE_CONFIG_YAML missing", path.display()))
        .to_owned();
    let value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: embedded config is not YAML: {e}", path.display()));
    (text, value)
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn marathon_apps_meet_the_public_agent_requirements() {
    let _turn = crate::common::light();
    for path in marathon_apps() {
        let app = json(&path);
        let name = path.display();
        let (_, config) = embedded_config(&app, &path);

        assert!(
            app["id"].as_str().is_some_and(|id| id.starts_with('/')),
            "{name}: id"
        );
        assert_eq!(
            app["acceptedResourceRoles"],
            serde_json::json!(["slave_public"]),
            "{name}"
        );
        assert!(
            app["constraints"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(["hostname", "UNIQUE"])),
            "{name}: needs the constraint [hostname, UNIQUE] (fixed host ports)"
        );
        assert_eq!(
            app["networks"],
            serde_json::json!([{"mode": "host"}]),
            "{name}"
        );
        assert_eq!(app["requirePorts"], true, "{name}");
        assert!(
            app["cmd"]
                .as_str()
                .is_some_and(|c| c.contains("sniroute") && c.contains(" run")),
            "{name}: cmd must run `sniroute run`"
        );
        assert!(app["cpus"].as_f64().unwrap() > 0.0, "{name}: cpus");
        assert!(app["mem"].as_f64().unwrap() >= 64.0, "{name}: mem");

        // Ports: 6443 for TLS and the admin port, both fixed.
        let ports = app["portDefinitions"].as_array().expect("portDefinitions");
        let tls = ports
            .iter()
            .position(|p| p["port"] == 6443)
            .unwrap_or_else(|| panic!("{name}: no port definition for 6443"));
        let admin = ports
            .iter()
            .position(|p| p["name"] == "admin")
            .unwrap_or_else(|| panic!("{name}: no port definition named admin"));
        let admin_port = ports[admin]["port"].as_u64().unwrap();
        assert_ne!(tls, admin, "{name}");
        assert!(
            !lb_port(admin_port) && admin_port != 6443 && admin_port != 0,
            "{name}: admin port {admin_port} clashes with Marathon-LB/Edge-LB or the TLS port"
        );

        // The embedded config listens where the port definitions say.
        let listeners: Vec<u64> = config["listeners"]
            .as_sequence()
            .expect("listeners")
            .iter()
            .map(|l| port_of(l.as_str().or_else(|| l["address"].as_str()).unwrap()))
            .collect();
        assert!(
            listeners.iter().all(|&p| p == 6443),
            "{name}: listeners {listeners:?}"
        );
        let admin_addr = config["admin"].as_str().expect("admin address");
        assert_eq!(port_of(admin_addr), admin_port, "{name}: admin address");
        assert!(
            !admin_addr.starts_with("127."),
            "{name}: Marathon readiness checks and Prometheus reach the admin port \
             from outside the agent: do not bind it to loopback"
        );

        // Health on /healthz of the admin port, readiness on /readyz.
        let hc = app["healthChecks"].as_array().expect("healthChecks");
        assert!(
            hc.iter().any(|h| h["protocol"] == "MESOS_HTTP"
                && h["path"] == "/healthz"
                && h["portIndex"].as_u64() == Some(admin as u64)),
            "{name}: needs a MESOS_HTTP health check on /healthz of portIndex {admin}"
        );
        let rc = app["readinessChecks"].as_array().expect("readinessChecks");
        assert!(
            rc.iter().any(|r| r["path"] == "/readyz"
                && r["portName"] == "admin"
                && r["protocol"].as_str().unwrap_or("HTTP") == "HTTP"),
            "{name}: needs a readiness check on /readyz of the admin port"
        );

        // Killing waits for the drain.
        let drain = config["timeouts"]["drain"]
            .as_str()
            .map_or(30.0, parse_duration);
        let grace = app["taskKillGracePeriodSeconds"]
            .as_f64()
            .expect("taskKillGracePeriodSeconds");
        assert!(
            grace > drain,
            "{name}: taskKillGracePeriodSeconds {grace} must exceed the drain time {drain}s"
        );

        // Fixed host ports: the old task stops before its replacement starts.
        assert_eq!(
            app["upgradeStrategy"],
            serde_json::json!({"minimumHealthCapacity": 0, "maximumOverCapacity": 0}),
            "{name}"
        );

        // Found by the Prometheus marathon_sd job.
        assert_eq!(app["labels"]["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(
            ports[admin]["labels"]["prometheus.io/scrape"], "true",
            "{name}: the admin port definition carries the scrape label"
        );
        assert!(
            ports
                .iter()
                .enumerate()
                .all(|(i, p)| i == admin || p["labels"]["prometheus.io/scrape"].is_null()),
            "{name}: only the admin port may carry the scrape label"
        );

        // How the binary arrives: a fetched tarball or an image.
        assert!(
            app["fetch"].as_array().is_some_and(|f| !f.is_empty())
                || app["container"]["docker"]["image"].is_string(),
            "{name}: neither fetch nor a container image"
        );
    }
}

#[test]
fn marathon_configs_pass_sniroute_check() {
    let _turn = crate::common::light();
    for path in marathon_apps() {
        let app = json(&path);
        let (text, config) = embedded_config(&app, &path);
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sniroute"))
            .arg("check")
            .env("SNIROUTE_CONFIG_YAML", &text)
            .env_remove("SNIROUTE_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run sniroute check");
        assert!(
            out.status.success(),
            "{}: `SNIROUTE_CONFIG_YAML=... sniroute check` failed:\n{}",
            path.display(),
            output_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for route in config["routes"].as_sequence().expect("routes") {
            let route = route["name"].as_str().unwrap();
            assert!(
                stdout.contains(route),
                "{}: `sniroute check` does not list route {route}:\n{stdout}",
                path.display()
            );
        }
    }
}

#[test]
fn two_cluster_app_routes_both_dcos_clusters() {
    let _turn = crate::common::light();
    let path = deploy("marathon/sniroute-two-clusters.json");
    let (_, config) = embedded_config(&json(&path), &path);
    let routes = config["routes"].as_sequence().unwrap();
    for (service, name) in [
        ("dev/kubernetes01", "devkubernetes01.example.com"),
        ("dev/kubernetes02", "devkubernetes02.example.com"),
    ] {
        assert!(
            routes.iter().any(|r| r["dcos_service"] == service
                && r["server_names"]
                    .as_sequence()
                    .is_some_and(|s| s.iter().any(|n| n == name))),
            "no route for {service} with server name {name}"
        );
    }
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let _turn = crate::common::light();
    let config = deploy("prometheus/prometheus.yml");
    let rules = deploy("prometheus/sniroute.rules.yml");
    let tests = deploy("prometheus/sniroute.rules.test.yml");
    assert_promtool(&["check", "config", config.to_str().unwrap()]);
    assert_promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert_promtool(&["test", "rules", tests.to_str().unwrap()]);
}

#[test]
fn prometheus_rules_cover_the_alerts_and_known_metrics() {
    let _turn = crate::common::light();
    let rules_text = read(&deploy("prometheus/sniroute.rules.yml"));
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules_text).unwrap();
    let tests_text = read(&deploy("prometheus/sniroute.rules.test.yml"));
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts.insert(alert.to_owned());
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| s.len() > 20),
                    "{alert}: annotation {key} missing or too short"
                );
            }
            assert!(rule["labels"]["severity"].is_string(), "{alert}: severity");
            // Each alert has a test case where it fires and one where it must not.
            assert!(
                tests_text.contains(&format!("alertname: {alert}\n")),
                "{alert}: no promtool test"
            );
        }
    }
    for want in [
        "SnirouteNoHealthyUpstream",
        "SnirouteNoRouteRising",
        "SnirouteBadClientHelloRising",
        "SnirouteConfigReloadFailed",
        "SnirouteInstanceDown",
    ] {
        assert!(alerts.contains(want), "alert {want} missing: {alerts:?}");
    }
    let test_doc: serde_yaml::Value = serde_yaml::from_str(&tests_text).unwrap();
    for alert in &alerts {
        let cases: Vec<&serde_yaml::Value> = test_doc["tests"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
            .filter(|c| c["alertname"] == alert.as_str())
            .collect();
        let fires = cases
            .iter()
            .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()));
        let silent = cases
            .iter()
            .any(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty()));
        assert!(
            fires && silent,
            "{alert}: the tests need a case where it fires and one where it does not"
        );
    }
    let known = known_metrics();
    for name in metric_names_in(&rules_text) {
        assert!(
            known.contains(&name),
            "sniroute.rules.yml uses {name}, which metrics.rs does not define ({known:?})"
        );
    }
}

#[test]
fn prometheus_marathon_job_matches_the_app_labels() {
    let _turn = crate::common::light();
    let text = read(&deploy("prometheus/prometheus.yml"));
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    assert!(
        jobs.iter().any(|j| j["static_configs"].is_sequence()),
        "a static job"
    );
    let marathon = jobs
        .iter()
        .find(|j| j["marathon_sd_configs"].is_sequence())
        .expect("a marathon_sd_configs job");
    let relabel = serde_yaml::to_string(&marathon["relabel_configs"]).unwrap();
    // Prometheus sanitises label names: "prometheus.io/scrape" becomes
    // prometheus_io_scrape.
    for meta in [
        "__meta_marathon_app_label_prometheus_io_scrape",
        "__meta_marathon_port_definition_label_prometheus_io_scrape",
    ] {
        assert!(
            relabel.contains(meta),
            "the marathon job does not select on {meta}"
        );
    }
    // The rules match the job names.
    for job in jobs {
        let name = job["job_name"].as_str().unwrap();
        assert!(
            name.starts_with("sniroute"),
            "job {name}: SnirouteInstanceDown matches job=~\"sniroute.*\""
        );
    }
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_known_metrics() {
    let _turn = crate::common::light();
    let path = deploy("grafana/sniroute.json");
    let dashboard = json(&path);
    let panels = all_panels(&dashboard);
    let queried: Vec<&serde_json::Value> = panels
        .iter()
        .filter(|p| p["type"] != "row")
        .copied()
        .collect();
    assert!(queried.len() >= 7, "too few panels: {}", queried.len());
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());

    // The variables: a Prometheus data source and the instance.
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    assert!(vars.iter().any(|v| v["name"] == "instance"));
    assert!(dashboard["__inputs"]
        .as_array()
        .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")));

    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in &panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}: datasource",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            exprs.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }

    // Only metrics sniroute exports, and the ones the dashboard is for.
    let known = known_metrics();
    let all_exprs: String = exprs.iter().map(|(_, e)| format!("{e}\n")).collect();
    let used = metric_names_in(&all_exprs);
    for name in &used {
        assert!(
            known.contains(name),
            "the dashboard queries {name}, which metrics.rs does not define ({known:?})"
        );
    }
    for name in metric_names_in(&read(&path)) {
        assert!(known.contains(&name), "the dashboard mentions {name}");
    }
    for want in [
        "sniroute_active_tunnels",
        "sniroute_bytes_total",
        "sniroute_connections_total",
        "sniroute_upstream_connect_seconds",
        "sniroute_upstream_healthy",
        "sniroute_config_generation",
        "sniroute_config_reloads_total",
        "sniroute_client_hello_seconds",
    ] {
        assert!(used.contains(want), "no panel shows {want}");
    }
    assert!(all_exprs.contains("histogram_quantile(0.99"));
    assert!(all_exprs.contains("histogram_quantile(0.5"));

    // Every query is valid PromQL: promtool parses them as recording rules,
    // with the dashboard variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$route", ".*");
        assert!(!expr.contains('$'), "{title}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    assert_promtool(&["check", "rules", rules_path.to_str().unwrap()]);
}

/// `Key=value` lines of a systemd unit (all values of repeated keys).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn systemd_unit_is_hardened_and_drains() {
    let _turn = crate::common::light();
    let path = deploy("systemd/sniroute.service");
    let unit = read(&path);
    let one = |key: &str| -> &str {
        let v = unit_values(&unit, key);
        assert!(!v.is_empty(), "{key}= missing");
        v[v.len() - 1]
    };
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section} missing");
    }
    assert!(
        unit_values(&unit, "ExecStart")
            .iter()
            .any(|v| v.contains("sniroute") && v.contains(" run")),
        "ExecStart must run `sniroute run`"
    );
    assert!(
        unit_values(&unit, "ExecReload").contains(&"/bin/kill -HUP $MAINPID"),
        "ExecReload=/bin/kill -HUP $MAINPID missing"
    );
    assert!(
        unit_values(&unit, "User").iter().any(|v| !v.is_empty()) || one("DynamicUser") == "yes",
        "runs as root: set User= or DynamicUser=yes"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    // systemd reads a bare number as seconds.
    let stop_text = one("TimeoutStopSec");
    let stop = stop_text
        .parse::<f64>()
        .unwrap_or_else(|_| parse_duration(stop_text));
    assert!(
        stop > 30.0,
        "TimeoutStopSec={stop}s must exceed the 30s drain"
    );
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(matches!(one("ProtectHome"), "yes" | "read-only" | "tmpfs"));
    let families: BTreeSet<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
        "RestrictAddressFamilies"
    );
    assert!(unit_values(&unit, "SystemCallFilter").contains(&"@system-service"));
    // 6443 and 9190 need no capability.
    assert!(
        unit_values(&unit, "AmbientCapabilities")
            .iter()
            .all(|v| v.is_empty()),
        "AmbientCapabilities: 6443 needs none"
    );

    // systemd-analyze, where installed, checks the rest (the binary need
    // not be installed: verify a copy pointing at /bin/true).
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join("sniroute.service");
            std::fs::write(&copy, unit.replace("/usr/local/bin/sniroute", "/bin/true")).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success()
                    && !stderr.contains("sniroute.service:")
                    && !stderr.contains("Unknown"),
                "systemd-analyze verify:\n{}",
                output_text(&out)
            );
        }
        _ => eprintln!("systemd-analyze not installed: skipping `systemd-analyze verify`"),
    }
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let _turn = crate::common::light();
    let text = read(&deploy("docker/Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage build expected");
    assert!(froms[0].contains("rust:") && froms[0].contains(" AS "));
    assert!(text.contains("cargo build --release --locked"));
    assert!(
        lines.iter().any(|l| l.starts_with("USER ")
            && !l.starts_with("USER root")
            && !l.starts_with("USER 0")),
        "the image must run as a non-root user"
    );
    assert!(lines.contains(&"EXPOSE 6443 9190"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("ENTRYPOINT [\"") && l.contains("sniroute")));
    assert!(lines.contains(&"CMD [\"run\"]"));
    // The context is the repository root: the ignore file must keep what
    // the build needs.
    let ignore = read(&deploy("docker/Dockerfile.dockerignore"));
    for needed in ["Cargo.lock", "Cargo.toml", "crates", "benches"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            "the dockerignore drops {needed}"
        );
    }
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}

#[test]
fn deploy_readme_links_resolve() {
    let _turn = crate::common::light();
    let path = deploy("README.md");
    let text = read(&path);
    // Relative Markdown links: ](path) or ](path#anchor).
    let mut rest = text.as_str();
    let mut checked = 0;
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = tail[..end].split('#').next().unwrap();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            let file = deploy("").join(target);
            assert!(
                file.exists(),
                "deploy/README.md links to {target}, which does not exist"
            );
            checked += 1;
        }
        rest = &tail[end..];
    }
    assert!(checked > 0, "deploy/README.md links no deploy files");
    for needed in [
        "dcos marathon app add",
        "dcos marathon app update",
        "systemctl reload",
        "docker build -f deploy/docker/Dockerfile",
        "sniroute kubeconfig",
        "ssl_fc_sni",
        "HAPROXY_0_MODE",
        "tls-server-name",
    ] {
        assert!(
            text.contains(needed),
            "deploy/README.md does not mention {needed}"
        );
    }
}

#[test]
fn helpers_work() {
    let _turn = crate::common::light();
    assert_eq!(parse_duration("30s"), 30.0);
    assert_eq!(parse_duration("1m30s"), 90.0);
    assert_eq!(parse_duration("500ms"), 0.5);
    assert_eq!(parse_duration("24h"), 86400.0);
    let names = metric_names_in(
        "rate(sniroute_bytes_total[5m]) histogram_quantile(0.5, x_sniroute_no sniroute_upstream_connect_seconds_bucket) sniroute_a_count",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "sniroute_a",
            "sniroute_bytes_total",
            "sniroute_upstream_connect_seconds"
        ]
    );
    assert!(lb_port(10050) && lb_port(6090) && !lb_port(9190));
}
