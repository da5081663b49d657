//! The deployment files in `deploy/`: the Marathon apps validate against
//! Marathon's schema and carry a config `sniroute check` accepts; the
//! Prometheus config, rules and rule tests pass promtool; the Grafana
//! dashboard queries only metrics sniroute exports; the systemd unit and the
//! Dockerfile have what they need.
//!
//! Also: the apps' listeners bind on every agent, their `mem` covers the
//! worst case their limits allow, the docs say what the operator supplies,
//! `scripts/test` lists every program the tests run, and no test reads a
//! file outside the repository.
//!
//! Needs `promtool` (Debian `prometheus`) and `python3` with `jsonschema`
//! (pip); without them these tests fail and say what to install
//! (`scripts/test` installs both). Marathon's schema is
//! `deploy/marathon/schema/app.schema.json` (see the README there).

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

pub(crate) fn output_text(out: &Output) -> String {
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
             (apt-get install -y prometheus; scripts/test does)"
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

pub(crate) fn marathon_schema_path() -> PathBuf {
    let path = deploy("marathon/schema/app.schema.json");
    assert!(
        path.exists(),
        "Marathon's app schema is missing at {}",
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
pub(crate) fn jsonschema_validate(schema: &Path, files: &[PathBuf]) -> Output {
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(schema)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): install python3 and its `jsonschema` module \
                 (scripts/test does)"
            )
        });
    if out.status.code() == Some(3) {
        panic!(
            "the python3 first on PATH has no `jsonschema` module: install it with that \
             interpreter's pip (python3 -m pip install jsonschema; scripts/test does)"
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

    // Each app, and its container-image form (deploy/README.md, "What you
    // supply"), validates.
    let mut files = apps.clone();
    for app in &apps {
        let name = app.file_name().unwrap().to_string_lossy();
        let path = dir.path().join(format!("image-{name}"));
        std::fs::write(&path, image_variant(&json(app)).to_string()).unwrap();
        files.push(path);
    }
    let out = jsonschema_validate(&schema_path, &files);
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
    for app in &files {
        let mut unknown = Vec::new();
        unknown_keys(&json(app), schema, "", &mut unknown);
        assert!(
            unknown.is_empty(),
            "{}: keys Marathon's schema does not know: {unknown:?}",
            app.display()
        );
    }
}

/// The arguments the app's `cmd` gives the binary: `run --log-format json`.
fn cmd_args(app: &serde_json::Value) -> Vec<String> {
    let cmd = app["cmd"].as_str().expect("cmd");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let binary = words
        .iter()
        .position(|w| w.trim_matches('"').ends_with("/sniroute"))
        .unwrap_or_else(|| panic!("cmd {cmd:?} does not run .../sniroute"));
    words[binary + 1..].iter().map(|w| w.to_string()).collect()
}

/// An app run from the container image instead of the fetched tarball, as
/// the `jq` command in deploy/README.md makes it: no `fetch` and no `cmd`
/// (the distroless image has no shell), the image, and `cmd`'s arguments
/// as `args` (the image's entrypoint is `sniroute`). The app's own
/// `container` keys (the discovery app's secret volumes) stay, as jq's
/// object `+` keeps them.
fn image_variant(app: &serde_json::Value) -> serde_json::Value {
    let mut app = app.clone();
    let args = cmd_args(&app);
    let map = app.as_object_mut().unwrap();
    map.remove("fetch");
    map.remove("cmd");
    let mut container = match map.remove("container") {
        Some(serde_json::Value::Object(c)) => c,
        _ => serde_json::Map::new(),
    };
    container.insert("type".into(), "MESOS".into());
    container.insert(
        "docker".into(),
        serde_json::json!({"image": "registry.example.com/sniroute:0.1.0"}),
    );
    map.insert("container".into(), container.into());
    map.insert("args".into(), serde_json::json!(args));
    app
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

        // The upgrade strategy: marathon_upgrades_keep_an_instance_serving.

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

/// The files a config's discovery sources name, each with its key path:
/// `ca_file`, `auth.token_file`, `auth.service_account.private_key_file`.
fn discovery_files(config: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(sources) = config["discovery"].as_mapping() else {
        return out;
    };
    for (name, source) in sources {
        let name = name.as_str().expect("a source name");
        let auth = &source["auth"];
        for (key, value) in [
            ("ca_file", &source["ca_file"]),
            ("auth.token_file", &auth["token_file"]),
            (
                "auth.service_account.private_key_file",
                &auth["service_account"]["private_key_file"],
            ),
        ] {
            if let Some(file) = value.as_str() {
                out.push((format!("discovery.{name}.{key}"), file.to_owned()));
            }
        }
    }
    out
}

/// The sandbox files an app's secret volumes create: `containerPath` →
/// the secret store path (`secrets.<name>.source`) it comes from.
fn secret_files(app: &serde_json::Value, name: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Some(volumes) = app["container"]["volumes"].as_array() else {
        return out;
    };
    for volume in volumes {
        let Some(secret) = volume["secret"].as_str() else {
            continue;
        };
        let source = app["secrets"][secret]["source"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: volume secret {secret} is not in `secrets`"));
        let path = volume["containerPath"].as_str().expect("containerPath");
        out.insert(path.to_owned(), source.to_owned());
    }
    out
}

/// What Marathon's file secrets put in the sandbox, made here in `dir`:
/// a CA certificate for a `ca_file`, an RSA key (`openssl genpkey`, as
/// `dcos security org service-accounts keypair` makes one) for a
/// `private_key_file`, a token for a `token_file`. Every file must come
/// from a secret volume of the app, relative to the sandbox (where
/// sniroute runs).
fn provide_sandbox_files(
    app: &serde_json::Value,
    config: &serde_yaml::Value,
    dir: &Path,
    name: &str,
) {
    let secrets = secret_files(app, name);
    for (key, file) in discovery_files(config) {
        assert!(
            !file.starts_with('/'),
            "{name}: {key} `{file}` is absolute: on Marathon it is a file secret in the \
             sandbox, named relative to it"
        );
        assert!(
            secrets.contains_key(&file),
            "{name}: {key} `{file}` is no secret volume's containerPath ({secrets:?}): \
             nothing puts it in the sandbox"
        );
        let target = dir.join(&file);
        if key.ends_with("ca_file") {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "DC/OS test CA");
            let key = rcgen::KeyPair::generate().unwrap();
            std::fs::write(&target, params.self_signed(&key).unwrap().pem()).unwrap();
        } else if key.ends_with("private_key_file") {
            if target.exists() {
                continue; // both sources use the same key
            }
            crate::common::rsa_private_key(&target);
        } else {
            std::fs::write(&target, "a-dcos-token\n").unwrap();
        }
    }
}

#[test]
fn marathon_configs_pass_sniroute_check() {
    let _turn = crate::common::light();
    for path in marathon_apps() {
        let app = json(&path);
        let (text, config) = embedded_config(&app, &path);
        let dir = tempfile::tempdir().unwrap();
        provide_sandbox_files(&app, &config, dir.path(), &path.display().to_string());
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
fn discovery_app_follows_marathon_and_mesos_with_its_service_account() {
    let _turn = crate::common::light();
    let path = deploy("marathon/sniroute-discovery.json");
    let name = path.display().to_string();
    let app = json(&path);
    let (text, config) = embedded_config(&app, &path);
    // File secrets need the Mesos containerizer (no image needed).
    assert_eq!(app["container"]["type"], "MESOS", "{name}: container.type");
    let secrets = secret_files(&app, &name);
    let login = "https://leader.mesos/acs/api/v1/auth/login";
    for source in ["marathon", "mesos"] {
        let s = &config["discovery"][source];
        let urls = s["urls"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: {source}.urls"));
        assert!(
            !urls.is_empty()
                && urls.iter().all(|u| u
                    .as_str()
                    .is_some_and(|u| u.starts_with("https://leader.mesos/"))),
            "{name}: {source} goes through Admin Router on the leading master: {urls:?}"
        );
        assert_ne!(
            s["required"], false,
            "{name}: {source}: /readyz waits for the first sync"
        );
        let ca = s["ca_file"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {source}.ca_file"));
        let sa = &s["auth"]["service_account"];
        assert_eq!(
            sa["uid"], "sniroute",
            "{name}: {source}: the service account"
        );
        assert_eq!(sa["login_url"], login, "{name}: {source}: login_url");
        let key = sa["private_key_file"].as_str().expect("private_key_file");
        for file in [ca, key] {
            assert!(
                secrets
                    .get(file)
                    .is_some_and(|s| s.starts_with("sniroute/")),
                "{name}: {source}: {file} must be a file secret from the store ({secrets:?})"
            );
        }
    }
    let marathon = &config["discovery"]["marathon"];
    assert!(marathon["label_group"].is_string(), "{name}: label routes");
    assert!(
        marathon["label_server_names_allowed"]
            .as_sequence()
            .is_some_and(|a| !a.is_empty()),
        "{name}: label routes need names they may claim"
    );
    // The seed's Edge-LB pool as a mesos_tasks route.
    let routes = config["routes"].as_sequence().expect("routes");
    let kube = routes
        .iter()
        .find(|r| r["mesos_tasks"]["framework"] == "dev/kubernetes01")
        .unwrap_or_else(|| panic!("{name}: no mesos_tasks route for dev/kubernetes01"));
    assert_eq!(
        kube["mesos_tasks"]["task_name_pattern"],
        "kube-control-plane"
    );
    assert_eq!(kube["mesos_tasks"]["port_name"], "apiserver");
    assert!(
        kube["server_names"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|n| n == "apiserver.devkubernetes01.l4lb.thisdcos.directory"),
        "{name}: the API server certificate's name (the kubeconfig's tls-server-name) must route"
    );

    // Without the secrets in the sandbox the config is refused: the files
    // provide_sandbox_files makes are what `sniroute check` needed.
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
    let said = output_text(&out);
    assert!(
        !out.status.success() && (said.contains("ca_file") || said.contains("private_key_file")),
        "{name}: `sniroute check` accepted the config without its secret files:\n{said}"
    );

    // The docs say how to create the secrets the app reads.
    let docs = read(&deploy("README.md"));
    for source in secrets.values() {
        assert!(
            docs.lines()
                .any(|l| l.starts_with("dcos security secrets create")
                    && l.ends_with(&format!(" {source}"))),
            "deploy/README.md does not say how to create the secret {source}"
        );
    }
}

/// How a Marathon upgrade (a new app version: a config change, a new
/// binary) replaces the tasks of an app with fixed host ports
/// (`requirePorts`) and `[hostname, UNIQUE]`, after Marathon's
/// `TaskReplaceActor`:
/// - it keeps `ceil(instances × minimumHealthCapacity)` tasks healthy and
///   kills the old tasks above that at once;
/// - it runs at most `floor(instances × (1 + maximumOverCapacity))` tasks,
///   plus one when that equals the healthy minimum (it could otherwise
///   neither kill nor start);
/// - a new task needs a public agent where no task holds the ports;
/// - each new task that turns ready (health and readiness checks, here
///   `/readyz`) lets Marathon kill one more old task.
///
/// A killed task stops serving at once (SIGTERM closes the listeners;
/// its open tunnels drain), and frees its agent. The answer is the least
/// number of tasks serving at any moment, or where the upgrade got stuck.
#[derive(Debug, PartialEq)]
enum Upgrade {
    Done { min_serving: u64 },
    Stuck { old: u64, new: u64 },
}

fn simulate_upgrade(instances: u64, min_health: f64, max_over: f64, agents: u64) -> Upgrade {
    let min_healthy = (instances as f64 * min_health).ceil() as u64;
    let mut max_tasks = (instances as f64 * (1.0 + max_over)).floor() as u64;
    if min_healthy == max_tasks && max_tasks <= instances {
        max_tasks += 1;
    }
    let mut old = instances.min(agents);
    let (mut starting, mut ready) = (0u64, 0u64);
    old -= old.saturating_sub(min_healthy);
    let mut min_serving = old;
    loop {
        let tasks = old + starting + ready;
        let room = max_tasks.min(agents).saturating_sub(tasks);
        starting += (instances - starting - ready).min(room);
        if starting == 0 {
            return if old == 0 && ready == instances {
                Upgrade::Done { min_serving }
            } else {
                Upgrade::Stuck { old, new: ready }
            };
        }
        starting -= 1;
        ready += 1;
        old = old.saturating_sub(1);
        min_serving = min_serving.min(old + ready);
    }
}

#[test]
fn marathon_upgrades_keep_an_instance_serving() {
    let _turn = crate::common::light();
    // The model reproduces the known cases: the old strategy (0, 0) stops
    // every instance at once; (1, 0) must start an extra instance first,
    // which has no agent unless there is a spare one; one instance cannot
    // be replaced without a gap or a spare agent.
    assert_eq!(
        simulate_upgrade(2, 0.0, 0.0, 2),
        Upgrade::Done { min_serving: 0 }
    );
    assert_eq!(
        simulate_upgrade(2, 1.0, 0.0, 2),
        Upgrade::Stuck { old: 2, new: 0 }
    );
    assert_eq!(
        simulate_upgrade(2, 1.0, 0.0, 3),
        Upgrade::Done { min_serving: 2 }
    );
    assert_eq!(
        simulate_upgrade(1, 0.5, 0.0, 1),
        Upgrade::Stuck { old: 1, new: 0 }
    );
    assert_eq!(
        simulate_upgrade(2, 0.5, 0.0, 2),
        Upgrade::Done { min_serving: 1 }
    );
    assert_eq!(
        simulate_upgrade(3, 0.5, 0.0, 3),
        Upgrade::Done { min_serving: 2 }
    );
    assert_eq!(
        simulate_upgrade(2, 0.5, 1.0, 2),
        Upgrade::Done { min_serving: 1 }
    );

    let root = json(&marathon_schema_path());
    let strategy_schema = &app_schema(&root)["properties"]["upgradeStrategy"];
    let required = strategy_schema["required"]
        .as_array()
        .expect("required keys");
    assert!(!required.is_empty(), "unexpected schema layout");
    for path in marathon_apps() {
        let app = json(&path);
        let name = path.display();
        let strategy = &app["upgradeStrategy"];
        // Against the schema: every required key, each a number within range.
        for key in required {
            let key = key.as_str().unwrap();
            let value = strategy[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: upgradeStrategy.{key} missing or not a number"));
            let range = &strategy_schema["properties"][key];
            let (lo, hi) = (
                range["minimum"].as_f64().unwrap(),
                range["maximum"].as_f64().unwrap(),
            );
            assert!(
                (lo..=hi).contains(&value),
                "{name}: upgradeStrategy.{key} {value}"
            );
        }
        let instances = app["instances"].as_u64().expect("instances");
        let min_health = strategy["minimumHealthCapacity"].as_f64().unwrap();
        let max_over = strategy["maximumOverCapacity"].as_f64().unwrap();
        // The rule: at least two instances, of which Marathon keeps at least
        // one healthy (instances × minimumHealthCapacity, rounded up, ≥ 1)
        // and can still kill one (< instances): with fixed ports and unique
        // hosts a replacement needs the agent an old task frees, unless a
        // spare public agent happens to exist.
        let keep = (instances as f64 * min_health).ceil() as u64;
        assert!(
            instances >= 2 && keep >= 1 && keep < instances,
            "{name}: {instances} instances keeping {keep} healthy: an upgrade must keep one \
             serving and be able to replace one without a spare agent \
             (e.g. minimumHealthCapacity 0.5, maximumOverCapacity 0)"
        );
        // And the whole upgrade, on exactly `instances` public agents (no
        // spare: over-capacity tasks find no agent) and with spare ones.
        for agents in instances..=instances + 2 {
            match simulate_upgrade(instances, min_health, max_over, agents) {
                Upgrade::Done { min_serving } => assert!(
                    min_serving >= 1,
                    "{name}: an upgrade on {agents} public agents leaves no instance serving"
                ),
                stuck => panic!("{name}: an upgrade on {agents} public agents: {stuck:?}"),
            }
        }
        // The replacement is gated by /readyz (checked in
        // marathon_apps_meet_the_public_agent_requirements, with the kill
        // grace period above the drain); the docs explain the strategy.
        assert!(app["readinessChecks"]
            .as_array()
            .is_some_and(|r| !r.is_empty()));
    }
    let docs = read(&repo().join("README.md"));
    assert!(
        docs.contains("## Changes and upgrades") && docs.contains("\"minimumHealthCapacity\": 0.5"),
        "README.md, \"Changes and upgrades\", explains the upgrade strategy"
    );
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

    // The rule tests catch SnirouteConfigReloadFailed's old false alarm: a
    // rule whose second clause takes every new series for a failure (a new
    // Marathon task's counter starts at 0) fails them.
    let text = read(&rules);
    let fresh_and_failed = "sniroute_config_reloads_total{result=\"failure\"} > 0\n";
    assert!(
        text.contains(fresh_and_failed),
        "SnirouteConfigReloadFailed: the clause for new series must require a failure"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sniroute.rules.yml"),
        text.replace(
            fresh_and_failed,
            "sniroute_config_reloads_total{result=\"failure\"}\n",
        ),
    )
    .unwrap();
    let copy = dir.path().join("sniroute.rules.test.yml");
    std::fs::copy(&tests, &copy).unwrap();
    let out = promtool(&["test", "rules", copy.to_str().unwrap()]);
    assert!(
        !out.status.success() && output_text(&out).contains("SnirouteConfigReloadFailed"),
        "the rule tests pass with the old SnirouteConfigReloadFailed, which fires for every \
         new series:\n{}",
        output_text(&out)
    );
}

/// Minutes of a promtool duration such as `70m` or `2h`.
fn minutes(text: &str) -> u64 {
    (parse_duration(text) / 60.0) as u64
}

#[test]
fn reload_alert_tests_cover_a_fresh_series_and_a_failure() {
    let _turn = crate::common::light();
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy("prometheus/sniroute.rules.test.yml"))).unwrap();
    // A group where a failure series appears at 0 and stays there for an
    // hour: silent for that hour, firing after its first failure.
    let covered = doc["tests"].as_sequence().unwrap().iter().any(|group| {
        if group["interval"].as_str() != Some("1m") {
            return false;
        }
        let fresh = group["input_series"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|s| {
                let series = s["series"].as_str()?;
                if !(series.starts_with("sniroute_config_reloads_total{")
                    && series.contains("result=\"failure\""))
                {
                    return None;
                }
                // "_xA 0xM ...": absent for A minutes, then 0 for M more.
                let mut values = s["values"].as_str()?.split_whitespace();
                let absent: u64 = values.next()?.strip_prefix("_x")?.parse().ok()?;
                let zeros: u64 = values.next()?.strip_prefix("0x")?.parse().ok()?;
                let then_fails = values.next().is_some();
                (zeros >= 60 && then_fails).then_some((absent, absent + zeros))
            });
        let Some((appears, last_zero)) = fresh else {
            return false;
        };
        let cases: Vec<(u64, bool)> = group["alert_rule_test"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|c| c["alertname"] == "SnirouteConfigReloadFailed")
            .map(|c| {
                (
                    minutes(c["eval_time"].as_str().unwrap()),
                    c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()),
                )
            })
            .collect();
        let silent_from_start = cases.iter().any(|&(t, f)| t <= appears + 1 && !f);
        let silent_an_hour_later = cases
            .iter()
            .any(|&(t, f)| t >= appears + 60 && t <= last_zero && !f);
        let fires_after = cases.iter().any(|&(t, f)| t > last_zero && f);
        silent_from_start && silent_an_hour_later && fires_after
    });
    assert!(
        covered,
        "sniroute.rules.test.yml needs a SnirouteConfigReloadFailed case where a failure \
         series appears at 0 (\"_xA 0xM ...\" with M >= 60), is silent at its start and an hour \
         later, and fires after its first failure"
    );
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
    // Connections by result shows every result, and says what the newer
    // ones mean.
    assert!(
        read(&path).contains("bad_proxy_header"),
        "the dashboard does not mention result=\"bad_proxy_header\""
    );
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
    // sd_notify: systemd waits for READY=1 and follows reloads and the
    // drain; the watchdog catches a wedged process.
    assert_eq!(one("Type"), "notify");
    // The new process of a USR2 upgrade sends MAINPID= before it is main.
    assert_eq!(one("NotifyAccess"), "all");
    let watchdog = one("WatchdogSec");
    let watchdog = watchdog
        .parse::<f64>()
        .unwrap_or_else(|_| parse_duration(watchdog));
    assert!(
        watchdog >= 10.0,
        "WatchdogSec={watchdog}s: pings are every half"
    );
    assert!(!one("RuntimeDirectory").is_empty(), "RuntimeDirectory=");
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

    // The socket unit: every socket it passes is one the example config
    // listens on (a socket no listener matches stops sniroute at start).
    let socket_unit = read(&deploy("systemd/sniroute.socket"));
    for section in ["[Unit]", "[Socket]", "[Install]"] {
        assert!(
            socket_unit.contains(section),
            "sniroute.socket: {section} missing"
        );
    }
    let example: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy("sniroute.example.yaml"))).unwrap();
    let mut configured: BTreeSet<String> = example["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| l.as_str().or(l["address"].as_str()).unwrap().to_owned())
        .collect();
    configured.insert(
        example["admin"]["address"]
            .as_str()
            .or(example["admin"].as_str())
            .unwrap()
            .to_owned(),
    );
    let passed: BTreeSet<String> = unit_values(&socket_unit, "ListenStream")
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert!(!passed.is_empty(), "sniroute.socket: no ListenStream=");
    assert!(
        passed.is_subset(&configured),
        "sniroute.socket passes {passed:?}, the example config listens on {configured:?}"
    );
    assert_eq!(unit_values(&socket_unit, "Service"), ["sniroute.service"]);

    // systemd-analyze, where installed, checks the rest (the binary need
    // not be installed: verify a copy pointing at /bin/true), both units
    // together.
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let copy = dir.path().join("sniroute.service");
            std::fs::write(&copy, unit.replace("/usr/local/bin/sniroute", "/bin/true")).unwrap();
            let socket_copy = dir.path().join("sniroute.socket");
            std::fs::write(&socket_copy, &socket_unit).unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .arg(&socket_copy)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success()
                    && !stderr.contains("sniroute.service:")
                    && !stderr.contains("sniroute.socket:")
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

/// The listener and admin addresses of a config (plain strings or
/// `{address: ...}` mappings).
fn config_addresses(config: &serde_yaml::Value) -> Vec<String> {
    let mut out: Vec<String> = config["listeners"]
        .as_sequence()
        .expect("listeners")
        .iter()
        .map(|l| {
            l.as_str()
                .or_else(|| l["address"].as_str())
                .expect("a listener address")
                .to_owned()
        })
        .collect();
    if let Some(admin) = config["admin"]
        .as_str()
        .or_else(|| config["admin"]["address"].as_str())
    {
        out.push(admin.to_owned());
    }
    out
}

#[test]
fn shipped_configs_bind_on_every_agent() {
    let _turn = crate::common::light();
    // sniroute binds every listener at start and exits when one fails; an
    // IPv6 address cannot be bound on an agent without IPv6, and IPv6
    // listeners are IPv6-only, so the shipped configs listen on IPv4 alone
    // (deploy/README.md, "IPv6 and dual stack", says how to add IPv6).
    let mut configs: Vec<(String, serde_yaml::Value)> = marathon_apps()
        .iter()
        .map(|path| {
            let (_, config) = embedded_config(&json(path), path);
            (path.display().to_string(), config)
        })
        .collect();
    let example = deploy("sniroute.example.yaml");
    configs.push((
        example.display().to_string(),
        serde_yaml::from_str(&read(&example)).unwrap(),
    ));
    for (name, config) in &configs {
        let addresses = config_addresses(config);
        assert!(!addresses.is_empty(), "{name}: no addresses");
        for addr in addresses {
            let parsed: std::net::SocketAddr = addr
                .parse()
                .unwrap_or_else(|e| panic!("{name}: {addr:?}: {e}"));
            assert!(
                parsed.is_ipv4(),
                "{name}: {addr} needs IPv6, which not every agent has: a host without it \
                 cannot bind it and sniroute exits; ship IPv4 listeners and document \
                 dual stack instead"
            );
        }
    }
    // The dual-stack advice holds only while IPv6 listeners are IPv6-only.
    let listener = read(&repo().join("crates/router/src/listener.rs"));
    assert!(
        listener.contains("set_only_v6(true)"),
        "crates/router/src/listener.rs no longer sets IPV6_V6ONLY: update \
         deploy/README.md#ipv6-and-dual-stack and this test"
    );
    let docs = read(&deploy("README.md"));
    assert!(docs.contains("### IPv6 and dual stack") && docs.contains("IPV6_V6ONLY"));
}

/// Worst-case memory, in KiB, of a sniroute config: per phase of a
/// connection and in total. This is the one place the formula is written;
/// deploy/README.md#memory explains each term.
#[derive(Debug)]
struct MemoryBound {
    /// A connection whose ClientHello is not complete.
    pending: u64,
    /// A connection connecting upstream and forwarding its hello.
    setup: u64,
    /// A tunnel, both directions busy.
    tunnel: u64,
    /// The process with every connection at its worst.
    total: u64,
}

fn memory_bound_kib(config: &serde_yaml::Value) -> MemoryBound {
    // sniroute, per connection in every phase: its task (896 B), two tokio
    // I/O registrations (512 B), the set-up state, the access-log record.
    const CONNECTION: u64 = 4;
    // Kernel, per socket: tcp_sock, socket inode, file, epoll entry.
    const SOCKET: u64 = 4;
    // A socket's receive queue: at most the initial receive buffer,
    // net.ipv4.tcp_rmem[1] (131072).
    const RECEIVE_QUEUE: u64 = 128;
    // A socket's send queue: the send buffer the kernel sets after the
    // handshake (twice the initial congestion window, ~46 KiB), rounded up.
    const SEND_QUEUE: u64 = 64;
    // A busy direction: a 64 KiB copy buffer (crates/splice buf_pool.rs),
    // or a pipe: 64 KiB of pages (the kernel default) + ~2 KiB structures.
    const DIRECTION: u64 = 66;
    // The process at rest (about 8 MiB resident), crates/splice's spare
    // pools (64 buffers of 64 KiB, 256 empty pipes), metrics, admin,
    // allocator slack.
    const BASE: u64 = 32 * 1024;
    // With discovery sources: the budget for their state and their full
    // syncs, which hold Marathon's whole app list and Mesos' whole state
    // while they parse them. benches/discovery.rs measures a Marathon sync
    // of 5,000 apps x 3 tasks at 88 MB over the resident size at rest; the
    // budget allows as much again for a Mesos sync at the same moment.
    const DISCOVERY: u64 = 192 * 1024;

    let limits = &config["limits"];
    let key = |name: &str, default: u64| {
        if limits[name].is_null() {
            default
        } else {
            limits[name]
                .as_u64()
                .unwrap_or_else(|| panic!("limits.{name} is not a number"))
        }
    };
    // The defaults of crates/config (max_pending_hellos: the global cap on
    // connections whose hello is incomplete).
    let connections = key("max_connections", 50_000);
    let hello_bytes = key("max_client_hello_bytes", 16_384);
    let pending_cap = key("max_pending_hellos", 2_048).min(connections);

    // The hello buffer grows with the bytes that arrive, exactly, up to
    // the limit.
    let hello_buffer = hello_bytes.div_ceil(1024);
    let socket = SOCKET + RECEIVE_QUEUE + SEND_QUEUE;
    let pending = CONNECTION + hello_buffer + SOCKET + RECEIVE_QUEUE;
    let setup = CONNECTION + hello_buffer + 2 * socket;
    let tunnel = CONNECTION + 2 * DIRECTION + 2 * socket;
    let open = setup.max(tunnel);
    // Pending hellos count against max_connections; at most pending_cap of
    // them at once. The worst mix is one of the two ends.
    let connections_worst =
        (connections * open).max(pending_cap * pending + (connections - pending_cap) * open);
    let discovery = if config["discovery"].is_mapping() {
        DISCOVERY
    } else {
        0
    };
    MemoryBound {
        pending,
        setup,
        tunnel,
        total: BASE + discovery + connections_worst,
    }
}

#[test]
fn marathon_mem_covers_the_configured_worst_case() {
    let _turn = crate::common::light();
    let docs = read(&deploy("README.md"));
    let memory_docs = &docs[docs.find("### Memory").expect("deploy/README.md#memory")..];
    for path in marathon_apps() {
        let app = json(&path);
        let name = path.display();
        let (_, config) = embedded_config(&app, &path);
        for key in [
            "max_connections",
            "max_pending_hellos",
            "max_client_hello_bytes",
        ] {
            assert!(
                config["limits"][key].is_u64(),
                "{name}: set limits.{key} explicitly: mem is sized from it"
            );
        }
        let bound = memory_bound_kib(&config);
        let mem_mib = app["mem"].as_f64().expect("mem");
        let need_mib = bound.total as f64 / 1024.0;
        assert!(
            mem_mib >= need_mib,
            "{name}: mem {mem_mib} MiB is below the worst case of its config, \
             {need_mib:.1} MiB ({bound:?}, KiB): raise mem or lower limits.max_connections \
             (deploy/README.md#memory)"
        );
        // The docs show the same figures for the shipped settings.
        let connections = config["limits"]["max_connections"].as_u64().unwrap();
        for figure in [
            format!("*P* = 4 + *h* + 4 + 128 = {} KiB", bound.pending),
            format!("*S* = 4 + *h* + 2 × 196 = {} KiB", bound.setup),
            format!("*T* = 4 + 2 × 66 + 2 × 196 = {} KiB", bound.tunnel),
            format!("`limits.max_connections: {connections}`"),
            format!(
                "`max_pending_hellos: {}`",
                config["limits"]["max_pending_hellos"].as_u64().unwrap()
            ),
            format!("`mem: {mem_mib}`"),
        ] {
            assert!(
                memory_docs.contains(&figure),
                "deploy/README.md#memory does not say {figure:?} ({name}: {bound:?})"
            );
        }
    }
    // The constants follow the code: 64 KiB copy buffers, default-sized pipes.
    let buf_pool = read(&repo().join("crates/splice/src/buf_pool.rs"));
    assert!(
        buf_pool.contains("BUF_SIZE: usize = 64 * 1024"),
        "the copy buffer size changed: update memory_bound_kib and deploy/README.md#memory"
    );
    for file in std::fs::read_dir(repo().join("crates/router/src")).unwrap() {
        let path = file.unwrap().path();
        assert!(
            !read(&path).contains("pipe_size:"),
            "{} sets a pipe size: update memory_bound_kib and deploy/README.md#memory",
            path.display()
        );
    }
    // The formula itself: a pending-heavy config is bounded by its cap.
    let cfg = |yaml: &str| serde_yaml::from_str::<serde_yaml::Value>(yaml).unwrap();
    let small = memory_bound_kib(&cfg("limits: {max_connections: 10}"));
    assert_eq!((small.pending, small.setup, small.tunnel), (152, 412, 528));
    assert_eq!(small.total, 32 * 1024 + 10 * 528);
    let discovering = memory_bound_kib(&cfg(
        "limits: {max_connections: 10}\ndiscovery: {mesos: {urls: [\"http://m:5050\"]}}",
    ));
    assert_eq!(discovering.total, (32 + 192) * 1024 + 10 * 528);
    let big_hellos = memory_bound_kib(&cfg(
        "limits: {max_connections: 10, max_client_hello_bytes: 65536, max_pending_hellos: 4}",
    ));
    assert_eq!(big_hellos.pending, 4 + 64 + 4 + 128);
    assert_eq!(big_hellos.setup, 4 + 64 + 392);
    assert_eq!(
        big_hellos.total,
        32 * 1024 + 10 * big_hellos.setup.max(big_hellos.tunnel)
    );
}

/// The part of deploy/README.md before its first deployment section.
fn deploy_readme_top(docs: &str) -> &str {
    let end = docs.find("## DC/OS (Marathon)").expect("a DC/OS section");
    &docs[..end]
}

#[test]
fn docs_and_apps_agree_on_what_the_operator_supplies() {
    let _turn = crate::common::light();
    let docs = read(&deploy("README.md"));
    let top = deploy_readme_top(&docs);
    assert!(
        top.contains("## What you supply"),
        "deploy/README.md must open with what the operator supplies"
    );
    let version = env!("CARGO_PKG_VERSION");
    for path in marathon_apps() {
        let text = read(&path);
        let app = json(&path);
        let name = path.display();
        // One placeholder, in one place: the fetch URI, on a domain that
        // never resolves.
        let fetch = app["fetch"].as_array().expect("fetch");
        assert_eq!(fetch.len(), 1, "{name}: one fetched artifact");
        let uri = fetch[0]["uri"].as_str().unwrap();
        assert!(
            uri.starts_with("https://your-artifact-store.invalid/"),
            "{name}: the fetch URI {uri} should be the obvious placeholder"
        );
        assert_eq!(
            text.matches(".invalid").count(),
            1,
            "{name}: the placeholder must be the only thing to edit"
        );
        assert_eq!(fetch[0]["extract"], true, "{name}");
        // The tarball the docs build is the one the URI names, for this
        // version, and holds the binary cmd runs.
        let tarball = uri.rsplit('/').next().unwrap();
        assert_eq!(
            tarball,
            format!("sniroute-{version}-x86_64-unknown-linux-musl.tar.gz"),
            "{name}: the tarball name must carry the version {version}"
        );
        assert!(
            top.contains(&format!("`{uri}`")),
            "deploy/README.md, \"What you supply\", does not name {name}'s placeholder {uri}"
        );
        assert!(
            top.contains(&format!("-czf {tarball} sniroute")),
            "deploy/README.md does not build {tarball} with the binary at its root"
        );
        assert!(
            top.contains(".fetch[0].uri = $uri"),
            "deploy/README.md does not show how to set the URI"
        );
        assert!(
            app["cmd"]
                .as_str()
                .unwrap()
                .contains("\"$MESOS_SANDBOX/sniroute\""),
            "{name}: cmd runs the fetched binary"
        );
        // The image form: what the jq command makes is what the schema test
        // validates (image_variant), with cmd's own arguments.
        let args: Vec<String> = cmd_args(&app).iter().map(|a| format!("{a:?}")).collect();
        let jq = format!(
            "del(.fetch, .cmd) | .container += {{type: \"MESOS\", docker: {{image: $image}}}} | .args = [{}]",
            args.join(", ")
        );
        assert!(
            top.contains(&jq),
            "deploy/README.md, \"What you supply\", should turn {name} into the image form with\n{jq}"
        );
    }
    for needed in [
        "docker build -f deploy/docker/Dockerfile",
        "docker push",
        "cargo build --release --locked --no-default-features --target x86_64-unknown-linux-musl",
        "Nothing else needs editing",
    ] {
        assert!(
            top.contains(needed),
            "deploy/README.md, \"What you supply\", does not say {needed:?}"
        );
    }
}

/// Every `.rs` file under `dir`, recursively, skipping `target` directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The sources `cargo test --workspace` runs: tests/, and every crate's
/// code and tests (library code counts: what it spawns, the tests spawn).
/// Benchmarks and fuzz targets are not part of the test run.
fn test_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&repo().join("tests"), &mut files);
    rust_files(&repo().join("crates"), &mut files);
    files.sort();
    assert!(
        files.len() > 20 && files.iter().any(|f| f.ends_with("tests/e2e/deploy.rs")),
        "too few sources found: {files:?}"
    );
    files
}

/// The text between the parentheses that start at `open`.
fn call_argument(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    &text[open + 1..]
}

/// A string literal at the start of `expr` (after whitespace), unescaped
/// enough for program names.
fn leading_literal(expr: &str) -> Option<&str> {
    let rest = expr.trim_start().strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// How the sources spawn a program. (Spelt in two pieces so that this file's
/// own scanner does not find itself.)
const SPAWN: &str = concat!("Command", "::new(");

/// `Command::new` arguments that are not a program name, each with why.
const NOT_A_PROGRAM: &[(&str, &str)] = &[
    ("env!(\"CARGO_BIN_EXE_sniroute\")", "the binary under test"),
    ("bin()", "common::bin(): the binary under test"),
    ("crate::common::bin()", "the binary under test"),
    ("promtool()", "operations.rs: returns \"promtool\""),
    ("prometheus", "operations.rs: bound to \"prometheus\""),
    (
        "&binary",
        "crates/router/src/upgrade.rs: sniroute's own new binary (kill -USR2)",
    ),
];

/// The programs the test sources spawn, each with where: the string
/// literals given to `Command::new`, and to functions that pass their
/// parameter to `Command::new` (spawn helpers such as `tool("curl")`).
/// Any other argument must be in [`NOT_A_PROGRAM`], so a new kind of spawn
/// fails here instead of slipping past.
fn spawned_programs(files: &[PathBuf]) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let mut unknown = Vec::new();
    for file in files {
        let text = read(file);
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        let line_of = |at: usize| text[..at].lines().count();
        let mut helpers = Vec::new();
        for (at, _) in text.match_indices(SPAWN) {
            let open = at + SPAWN.len() - 1;
            let arg = call_argument(&text, open).trim();
            if let Some(program) = leading_literal(arg) {
                found.insert((program.to_owned(), format!("{rel}:{}", line_of(at))));
                continue;
            }
            // A parameter of the enclosing function makes it a spawn helper.
            let enclosing = text[..at].rfind("fn ").map(|f| {
                let sig = &text[f + 3..];
                let name_end = sig.find(['(', '<']).unwrap_or(0);
                let params = call_argument(sig, sig.find('(').unwrap_or(0));
                (sig[..name_end].trim().to_owned(), params.to_owned())
            });
            match enclosing {
                Some((name, params))
                    if params
                        .split(',')
                        .any(|p| p.split(':').next().unwrap().trim() == arg) =>
                {
                    helpers.push(name)
                }
                _ if NOT_A_PROGRAM.iter().any(|(a, _)| *a == arg) => {}
                _ => unknown.push(format!("{rel}:{}: spawns {arg}", line_of(at))),
            }
        }
        helpers.sort();
        helpers.dedup();
        for helper in helpers {
            let call = format!("{helper}(");
            for (at, _) in text.match_indices(&call) {
                let before = text[..at].trim_end();
                if before.ends_with("fn")
                    || text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.')
                {
                    continue; // the definition, a method, or a longer name
                }
                let arg = call_argument(&text, at + helper.len());
                match leading_literal(arg) {
                    Some(program) => {
                        found.insert((program.to_owned(), format!("{rel}:{}", line_of(at))));
                    }
                    None => unknown.push(format!(
                        "{rel}:{}: {helper}({arg}) (a spawn helper)",
                        line_of(at)
                    )),
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "programs run without a literal name: give Command::new the program's name as a \
         literal, or call a helper with one, or add the expression to NOT_A_PROGRAM:\n{}",
        unknown.join("\n")
    );
    found
}

/// The programs `scripts/test` installs or checks: the first word of each
/// entry of its `TOOLS=( ... )` array; and its `PY_MODULES`.
fn scripts_test_lists() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = read(&repo().join("scripts/test"));
    let start = text
        .find("\nTOOLS=(\n")
        .expect("scripts/test has no TOOLS=( array");
    let body = &text[start + "\nTOOLS=(\n".len()..];
    let body = &body[..body.find("\n)").expect("TOOLS=( is not closed")];
    let tools = body
        .lines()
        .map(|l| l.trim().trim_start_matches('"'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let modules_line = text
        .lines()
        .find(|l| l.starts_with("PY_MODULES=("))
        .expect("scripts/test has no PY_MODULES=( line");
    let modules = modules_line["PY_MODULES=(".len()..]
        .trim_end_matches(')')
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (tools, modules)
}

/// Where a test may run `sh`, and why: only as a wrapper that `exec`s the
/// binary under test, so it hides no program from this check (and `sh` is
/// on every machine: Debian's dash is essential).
const SHELL_WRAPPERS: &[(&str, &str)] = &[(
    "tests/e2e/systemd.rs:",
    "moves the inherited sockets to descriptors 3 and 4 and sets LISTEN_PID=$$, then execs \
     sniroute: what systemd does between fork and exec",
)];

#[test]
fn scripts_test_lists_every_program_the_tests_run() {
    let _turn = crate::common::light();
    let spawned: BTreeSet<(String, String)> = spawned_programs(&test_sources())
        .into_iter()
        .filter(|(p, at)| {
            !(p == "sh" && SHELL_WRAPPERS.iter().any(|(file, _)| at.starts_with(file)))
        })
        .collect();
    let names: BTreeSet<&str> = spawned.iter().map(|(p, _)| p.as_str()).collect();
    // The scanner works: it sees programs known to be spawned.
    for known in ["promtool", "curl", "kubectl", "kill", "python3"] {
        assert!(
            names.contains(known),
            "the scan missed {known}: {spawned:?}"
        );
    }
    for shell in ["sh", "bash"] {
        assert!(
            !names.contains(shell),
            "a test runs {shell}: spawn the programs directly, so this check sees them"
        );
    }
    let (tools, modules) = scripts_test_lists();
    let missing: Vec<String> = spawned
        .iter()
        .filter(|(p, _)| !tools.contains(p))
        .map(|(p, at)| format!("{p} (run at {at})"))
        .collect();
    assert!(
        missing.is_empty(),
        "programs the tests run that scripts/test does not list in TOOLS \
         (a fresh machine would lack them):\n{}",
        missing.join("\n")
    );
    // Python modules the schema validation imports.
    for line in VALIDATE_PY.lines() {
        let Some(imports) = line.trim().strip_prefix("import ") else {
            continue;
        };
        for module in imports.split(',').map(str::trim) {
            let stdlib = ["json", "sys", "os"].contains(&module);
            assert!(
                stdlib || modules.contains(module),
                "VALIDATE_PY imports {module}, which scripts/test's PY_MODULES does not list"
            );
        }
    }
}

#[test]
fn no_test_reads_outside_the_repository() {
    let _turn = crate::common::light();
    // Relative paths in string literals (starting with two dots and a
    // slash) resolve from the crate's manifest directory
    // (env!("CARGO_MANIFEST_DIR").join(..)) or, in include_bytes! and
    // include_str!, from the file: both must stay inside the repository.
    let needle = format!("\"{}/", "..");
    let root = repo();
    let normalize = |p: PathBuf| -> PathBuf {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                c => out.push(c),
            }
        }
        out
    };
    let mut escapes = Vec::new();
    for file in test_sources() {
        let text = read(&file);
        let manifest_dir = file
            .ancestors()
            .find(|d| d.join("Cargo.toml").exists())
            .unwrap()
            .to_path_buf();
        for (n, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices(needle.as_str()) {
                let literal = leading_literal(&line[at..]).unwrap_or("");
                let base = if line.contains("include_") {
                    file.parent().unwrap().to_path_buf()
                } else {
                    manifest_dir.clone()
                };
                if !normalize(base.join(literal)).starts_with(&root) {
                    escapes.push(format!("{}:{}: {literal}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        escapes.is_empty(),
        "tests read files outside the repository (a clone has no such files):\n{}",
        escapes.join("\n")
    );
}
