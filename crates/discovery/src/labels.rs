//! Label-driven routes (Marathon-LB style): from the app list to the set of
//! routes that apps' labels ask for, without I/O.
//!
//! - With `label_group`, an app labelled `SNIROUTE_GROUP=<group>` becomes a
//!   route for each port index `n` that has `SNIROUTE_{n}_SERVER_NAMES`
//!   (comma-separated names and wildcards), with the optional
//!   `SNIROUTE_{n}_ALLOW_SOURCES`, `_PROXY_PROTOCOL`, `_BALANCE` and
//!   `_HEALTH_CHECK`, which take the values of the config keys.
//! - With `marathon_lb`, `HAPROXY_GROUP` (or `HAPROXY_{n}_GROUP`) and
//!   `HAPROXY_{n}_VHOST` are read too, for ports labelled
//!   `HAPROXY_{n}_MODE=tcp` only: Marathon-LB's other apps were HTTP apps
//!   that HAProxy terminated, and passing their bytes through would break
//!   them. `SNIROUTE_{n}_*` labels win over `HAPROXY_{n}_*` for a port.
//! - Route names: the app id without its leading slash, every character
//!   outside `[a-z0-9_-]` replaced by `-`, then `-<n>`; an id too long for
//!   63 characters is cut and a short hash of the whole id appended
//!   ([`route_name`]).
//! - A route claims only names inside `label_server_names_allowed`; one
//!   name outside it refuses the route ([`IssueKind::NotAllowed`]).
//! - A malformed label skips its port's route ([`IssueKind::Malformed`]).
//! - Two label routes claiming the same name: the app whose
//!   `versionInfo.lastConfigChangeAt` is older keeps it (ties: the app id,
//!   then the port), so the outcome does not depend on the order Marathon
//!   lists apps in, nor on restarts ([`ConflictKind::OlderLabel`]). The
//!   same rule decides two apps whose route names collide.
//!
//! Conflicts with static routes need the config, so the router decides
//! them ([`ConflictKind::StaticOverLabel`], [`ConflictKind::ExactOverWildcard`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use config::{Balance, CheckKind, HealthCheck, HttpsCheck, IpNet, NamePattern, ProxyProtocol};

use crate::apps::{App, Apps, Target};
use crate::PortSelector;

/// The longest route name (as the config allows).
pub(crate) const MAX_ROUTE_NAME: usize = 63;

/// Which apps' labels become routes, and which names they may claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSettings {
    /// `SNIROUTE_GROUP` (or `HAPROXY_GROUP`) value of the apps to route.
    pub group: String,
    /// The names label routes may claim.
    pub allowed: Vec<NamePattern>,
    /// Whether Marathon-LB's labels are read too (tcp ports only).
    pub marathon_lb: bool,
}

/// One route asked for by an app's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelRoute {
    /// The route name ([`route_name`]).
    pub name: String,
    /// The app id, as Marathon writes it (`/team/api`).
    pub app_id: String,
    /// The port index the route is for.
    pub port_index: usize,
    /// The names it claims (after conflicts between label routes).
    pub server_names: Vec<NamePattern>,
    /// `SNIROUTE_{n}_ALLOW_SOURCES`; empty means everyone.
    pub allow_sources: Vec<IpNet>,
    /// `SNIROUTE_{n}_PROXY_PROTOCOL`.
    pub proxy_protocol: ProxyProtocol,
    /// `SNIROUTE_{n}_BALANCE`.
    pub balance: Balance,
    /// `SNIROUTE_{n}_HEALTH_CHECK`: `tcp` is the config's default check,
    /// `none` (the default) none.
    pub health_check: Option<HealthCheck>,
    /// `versionInfo.lastConfigChangeAt` (ISO 8601 in UTC, as Marathon
    /// writes it), if the app list has it.
    pub last_config_change_at: Option<String>,
    /// Whether it comes from Marathon-LB's labels.
    pub marathon_lb: bool,
    /// The endpoints of its tasks (sorted).
    pub endpoints: Vec<SocketAddr>,
}

/// What went wrong with an app's labels, or which claim lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// A label that cannot be read: its port's route is skipped.
    Malformed,
    /// A name outside `label_server_names_allowed`: the route is refused.
    NotAllowed,
    /// A name (or route name) claimed by someone else first.
    Conflict(ConflictKind),
}

/// How a conflict was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// An exact name beats a wildcard covering it, wherever each comes
    /// from.
    ExactOverWildcard,
    /// For the same name, a static route beats a label route.
    StaticOverLabel,
    /// Between two label routes, the older app configuration keeps it.
    OlderLabel,
}

impl ConflictKind {
    /// Every kind, in [`ConflictKind::index`] order.
    pub const ALL: [ConflictKind; 3] = [
        Self::ExactOverWildcard,
        Self::StaticOverLabel,
        Self::OlderLabel,
    ];

    /// A stable label for logs, metrics and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactOverWildcard => "exact_over_wildcard",
            Self::StaticOverLabel => "static_over_label",
            Self::OlderLabel => "older_label",
        }
    }

    /// Its position in [`ConflictKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl IssueKind {
    /// A stable label: `malformed`, `not_allowed`, or the conflict's kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotAllowed => "not_allowed",
            Self::Conflict(c) => c.as_str(),
        }
    }
}

/// One refusal, label error or conflict, as logged and shown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelIssue {
    /// What happened.
    pub kind: IssueKind,
    /// The app whose labels it is about.
    pub app_id: String,
    /// The route concerned (the one that lost, for conflicts), when the
    /// port is known.
    pub route: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// The label routes an app list asks for, and what was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelRoutes {
    /// The routes, sorted by name.
    pub routes: Vec<LabelRoute>,
    /// Refusals, label errors and conflicts between label routes.
    pub issues: Vec<LabelIssue>,
}

/// The route name of app `id`'s port `n`: see the module docs.
pub fn route_name(id: &str, n: usize) -> String {
    let base: String = id
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    let suffix = format!("-{n}");
    if base.len() + suffix.len() <= MAX_ROUTE_NAME {
        return format!("{base}{suffix}");
    }
    // Cut (base is ASCII now), then the hash of the whole id, so two long
    // ids with the same beginning still differ.
    let hash = format!("-{:08x}", fnv1a(id.as_bytes()) as u32);
    let keep = MAX_ROUTE_NAME - suffix.len() - hash.len();
    format!("{}{hash}{suffix}", &base[..keep])
}

/// FNV-1a, 64 bits: stable across builds and restarts (unlike std's
/// hashers, whose algorithm may change).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `allowed` covers `name`: an exact entry covers that name, a
/// wildcard `*.s` covers names under `s` and wildcards `*.s` or `*.x.s`.
pub fn allowed_by(allowed: &NamePattern, name: &NamePattern) -> bool {
    match (allowed, name) {
        (NamePattern::Exact(a), NamePattern::Exact(n)) => a == n,
        (NamePattern::Exact(_), NamePattern::Wildcard(_)) => false,
        (NamePattern::Wildcard(_), NamePattern::Exact(n)) => allowed.matches(n.as_str()),
        (NamePattern::Wildcard(s), NamePattern::Wildcard(t)) => {
            s == t || allowed.matches(t.as_str())
        }
    }
}

/// The optional per-port keys of `SNIROUTE_{n}_<KEY>`.
const KEYS: &[&str] = &[
    "SERVER_NAMES",
    "ALLOW_SOURCES",
    "PROXY_PROTOCOL",
    "BALANCE",
    "HEALTH_CHECK",
];

/// A route before its endpoints are resolved.
pub(crate) struct Candidate {
    pub(crate) route: LabelRoute,
    pub(crate) targets: Vec<Target>,
}

/// The label routes of `apps` (with unresolved targets), label conflicts
/// decided, and the issues met. Problems with tasks go to `problems`.
pub(crate) fn candidates(
    apps: &Apps,
    settings: &LabelSettings,
    problems: &mut Vec<String>,
) -> (Vec<Candidate>, Vec<LabelIssue>) {
    let mut found = Vec::new();
    let mut issues = Vec::new();
    for app in &apps.apps {
        for route in app_routes(app, settings, &mut issues) {
            let targets = app.targets(&PortSelector::Index(route.port_index), problems);
            found.push(Candidate { route, targets });
        }
    }
    let kept = resolve(found, &mut issues);
    (kept, issues)
}

/// The routes one app's labels ask for, before conflicts.
fn app_routes(app: &App, s: &LabelSettings, issues: &mut Vec<LabelIssue>) -> Vec<LabelRoute> {
    let id = crate::apps::normalise(&app.id);
    let issue = |issues: &mut Vec<LabelIssue>, kind, n: Option<usize>, message: String| {
        issues.push(LabelIssue {
            kind,
            app_id: id.clone(),
            route: n.map(|n| route_name(&id, n)),
            message,
        });
    };
    // Port → key → value, for SNIROUTE_ and (tcp) HAPROXY_ labels.
    let mut ports: BTreeMap<usize, (bool, BTreeMap<&str, &str>)> = BTreeMap::new();
    let mut bad: HashSet<usize> = HashSet::new();
    if app.labels.get("SNIROUTE_GROUP").map(String::as_str) == Some(s.group.as_str()) {
        let mut keys: Vec<(&String, &String)> = app
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with("SNIROUTE_") && *k != "SNIROUTE_GROUP")
            .collect();
        keys.sort();
        for (k, v) in keys {
            let rest = &k["SNIROUTE_".len()..];
            let parsed = rest
                .split_once('_')
                .and_then(|(n, key)| Some((parse_index(n)?, key)));
            match parsed {
                Some((n, key)) if KEYS.contains(&key) => {
                    ports.entry(n).or_default().1.insert(key, v.as_str());
                }
                Some((n, key)) => {
                    bad.insert(n);
                    issue(
                        issues,
                        IssueKind::Malformed,
                        Some(n),
                        format!(
                            "label `{k}`: unknown key `{key}` (expected SNIROUTE_{n}_ followed by one of {})",
                            KEYS.join(", ")
                        ),
                    );
                }
                None => issue(
                    issues,
                    IssueKind::Malformed,
                    None,
                    format!("label `{k}`: expected SNIROUTE_<port index>_<KEY>, such as SNIROUTE_0_SERVER_NAMES"),
                ),
            }
        }
    }
    if s.marathon_lb {
        let app_group = app.labels.get("HAPROXY_GROUP");
        for (k, v) in &app.labels {
            let Some(n) = k
                .strip_prefix("HAPROXY_")
                .and_then(|r| r.strip_suffix("_VHOST"))
                .and_then(parse_index)
            else {
                continue;
            };
            let group = app.labels.get(&format!("HAPROXY_{n}_GROUP")).or(app_group);
            let in_group = group.is_some_and(|g| g.split(',').any(|g| g.trim() == s.group));
            let tcp = app
                .labels
                .get(&format!("HAPROXY_{n}_MODE"))
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("tcp"));
            if in_group && tcp && !ports.contains_key(&n) && !bad.contains(&n) {
                let entry = ports.entry(n).or_default();
                entry.0 = true;
                entry.1.insert("SERVER_NAMES", v.as_str());
            }
        }
    }
    let mut out = Vec::new();
    for (n, (marathon_lb, keys)) in ports {
        if bad.contains(&n) {
            continue;
        }
        match port_route(app, &id, n, marathon_lb, &keys, s) {
            Ok(route) => out.push(route),
            Err((kind, message)) => issue(issues, kind, Some(n), message),
        }
    }
    out
}

/// A port index as labels write it: decimal digits, at most 4.
fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One port's route from its labels.
fn port_route(
    app: &App,
    id: &str,
    n: usize,
    marathon_lb: bool,
    keys: &BTreeMap<&str, &str>,
    s: &LabelSettings,
) -> Result<LabelRoute, (IssueKind, String)> {
    let malformed = |m: String| (IssueKind::Malformed, m);
    let label = |key: &str| {
        if marathon_lb {
            format!("HAPROXY_{n}_VHOST")
        } else {
            format!("SNIROUTE_{n}_{key}")
        }
    };
    let Some(names) = keys.get("SERVER_NAMES") else {
        let others: Vec<String> = keys.keys().map(|k| format!("SNIROUTE_{n}_{k}")).collect();
        return Err(malformed(format!(
            "{} without SNIROUTE_{n}_SERVER_NAMES: no route for port {n}",
            others.join(", ")
        )));
    };
    let count = app.port_count();
    if n >= count {
        return Err(malformed(format!(
            "label {}: the app has {count} port(s), so no port index {n}",
            label("SERVER_NAMES")
        )));
    }
    let mut server_names: Vec<NamePattern> = Vec::new();
    for item in names.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(malformed(format!(
                "label {}: `{}` has an empty name (expected names and wildcards separated by commas)",
                label("SERVER_NAMES"),
                names.escape_debug()
            )));
        }
        let name: NamePattern = item
            .parse()
            .map_err(|e| malformed(format!("label {}: {e}", label("SERVER_NAMES"))))?;
        if !server_names.contains(&name) {
            server_names.push(name);
        }
    }
    let outside: Vec<String> = server_names
        .iter()
        .filter(|n| !s.allowed.iter().any(|a| allowed_by(a, n)))
        .map(ToString::to_string)
        .collect();
    if !outside.is_empty() {
        return Err((
            IssueKind::NotAllowed,
            format!(
                "route refused: {} outside discovery.marathon.label_server_names_allowed ({})",
                outside.join(", "),
                if s.allowed.is_empty() {
                    "empty: no label route may claim a name".to_owned()
                } else {
                    s.allowed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ));
    }
    let mut allow_sources = Vec::new();
    if let Some(v) = keys.get("ALLOW_SOURCES") {
        for item in v.split(',') {
            let net: IpNet = item.trim().parse().map_err(|e| {
                malformed(format!(
                    "label SNIROUTE_{n}_ALLOW_SOURCES: `{}`: {e}",
                    item.trim().escape_debug()
                ))
            })?;
            allow_sources.push(net);
        }
    }
    let proxy_protocol = match keys.get("PROXY_PROTOCOL").map(|v| v.trim()) {
        None | Some("none") => ProxyProtocol::None,
        Some("v1") => ProxyProtocol::V1,
        Some("v2") => ProxyProtocol::V2,
        Some(other) => {
            return Err(malformed(format!(
                "label SNIROUTE_{n}_PROXY_PROTOCOL: `{}` (expected none, v1 or v2)",
                other.escape_debug()
            )))
        }
    };
    let balance = match keys.get("BALANCE").map(|v| v.trim()) {
        None | Some("least_connections") => Balance::LeastConnections,
        Some("round_robin") => Balance::RoundRobin,
        Some(other) => {
            return Err(malformed(format!(
                "label SNIROUTE_{n}_BALANCE: `{}` (expected least_connections or round_robin)",
                other.escape_debug()
            )))
        }
    };
    let health_check = match keys.get("HEALTH_CHECK").map(|v| v.trim()) {
        None | Some("none") => None,
        Some("tcp") => Some(HealthCheck::default()),
        Some("kubernetes") => {
            // A label cannot name a CA file on the router's host: the
            // check sees `/readyz` (and TLS), not misrouting.
            let Some(NamePattern::Exact(name)) = server_names
                .iter()
                .find(|p| matches!(p, NamePattern::Exact(_)))
            else {
                return Err(malformed(format!(
                    "label SNIROUTE_{n}_HEALTH_CHECK: `kubernetes` checks send the route's first \
                     exact server name, and {} has only wildcards",
                    label("SERVER_NAMES")
                )));
            };
            Some(HealthCheck {
                kind: CheckKind::Kubernetes(HttpsCheck {
                    path: "/readyz".to_owned(),
                    server_name: name.clone(),
                    ca_file: None,
                    insecure_skip_verify: true,
                    auth: None,
                    expect_status: vec![200],
                }),
                ..HealthCheck::default()
            })
        }
        Some(other) => {
            return Err(malformed(format!(
                "label SNIROUTE_{n}_HEALTH_CHECK: `{}` (expected tcp, kubernetes or none)",
                other.escape_debug()
            )))
        }
    };
    Ok(LabelRoute {
        name: route_name(id, n),
        app_id: id.to_owned(),
        port_index: n,
        server_names,
        allow_sources,
        proxy_protocol,
        balance,
        health_check,
        last_config_change_at: app
            .version_info
            .as_ref()
            .and_then(|v| v.last_config_change_at.clone()),
        marathon_lb,
        endpoints: Vec::new(),
    })
}

/// Decides conflicts between label routes: the older configuration first
/// (see the module docs); a route left without names is dropped.
fn resolve(mut found: Vec<Candidate>, issues: &mut Vec<LabelIssue>) -> Vec<Candidate> {
    found.sort_by(|a, b| order_key(&a.route).cmp(&order_key(&b.route)));
    let mut names: HashMap<NamePattern, usize> = HashMap::new();
    let mut route_names: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Candidate> = Vec::new();
    for mut c in found {
        let conflict = |issues: &mut Vec<LabelIssue>, winner: &LabelRoute, what: String| {
            issues.push(LabelIssue {
                kind: IssueKind::Conflict(ConflictKind::OlderLabel),
                app_id: c.route.app_id.clone(),
                route: Some(c.route.name.clone()),
                message: format!(
                    "{what} is kept by route {} (app {}, configuration changed {}): the older app configuration wins",
                    winner.name,
                    winner.app_id,
                    winner.last_config_change_at.as_deref().unwrap_or("at an unknown time")
                ),
            });
        };
        if let Some(&w) = route_names.get(&c.route.name) {
            conflict(
                issues,
                &kept[w].route,
                format!("the route name {}", c.route.name),
            );
            continue;
        }
        let mut lost = Vec::new();
        c.route.server_names.retain(|n| match names.get(n) {
            Some(&w) => {
                lost.push((n.to_string(), w));
                false
            }
            None => true,
        });
        for (name, w) in lost {
            conflict(issues, &kept[w].route, format!("`{name}`"));
        }
        if c.route.server_names.is_empty() {
            continue;
        }
        let at = kept.len();
        route_names.insert(c.route.name.clone(), at);
        for n in &c.route.server_names {
            names.insert(n.clone(), at);
        }
        kept.push(c);
    }
    kept.sort_by(|a, b| a.route.name.cmp(&b.route.name));
    kept
}

/// Older configurations first; apps without `lastConfigChangeAt` last;
/// ties by app id, then port.
fn order_key(r: &LabelRoute) -> (bool, &str, &str, usize) {
    (
        r.last_config_change_at.is_none(),
        r.last_config_change_at.as_deref().unwrap_or(""),
        r.app_id.as_str(),
        r.port_index,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn settings(allowed: &[&str]) -> LabelSettings {
        LabelSettings {
            group: "external".into(),
            allowed: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            marathon_lb: false,
        }
    }

    fn app(id: &str, changed: &str, labels: Value) -> Value {
        json!({"id": id, "labels": labels,
               "versionInfo": {"lastScalingAt": "2030-01-01T00:00:00.000Z", "lastConfigChangeAt": changed},
               "portDefinitions": [{"port": 0, "name": "https"}, {"port": 0, "name": "other"}],
               "tasks": [{"id": format!("{id}.t1"), "state": "TASK_RUNNING", "host": "10.0.0.1", "ports": [31000, 31001]}]})
    }

    fn run(apps: Vec<Value>, s: &LabelSettings) -> (Vec<LabelRoute>, Vec<LabelIssue>) {
        let apps = crate::apps::parse(json!({ "apps": apps }).to_string().as_bytes()).unwrap();
        let mut problems = Vec::new();
        let (c, issues) = candidates(&apps, s, &mut problems);
        (c.into_iter().map(|c| c.route).collect(), issues)
    }

    fn names(r: &LabelRoute) -> Vec<String> {
        r.server_names.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn route_names_follow_the_app_id() {
        assert_eq!(route_name("/team/api", 0), "team-api-0");
        assert_eq!(route_name("/prod/web.v2", 12), "prod-web-v2-12");
        assert_eq!(route_name("/Team/API", 1), "-eam-----1");
        let long = format!("/{}", "a".repeat(80));
        let name = route_name(&long, 3);
        assert_eq!(name.len(), MAX_ROUTE_NAME);
        assert!(name.starts_with("aaaa") && name.ends_with("-3"), "{name}");
        // The hash part is that of the whole id: two long ids sharing a
        // prefix differ, and the same id always gives the same name.
        let other = route_name(&format!("{long}b"), 3);
        assert_ne!(name, other);
        assert_eq!(name, route_name(&long, 3));
        assert_eq!(&name[..50], &other[..50]);
        // Exactly at the limit: no cut.
        let exact = format!("/{}", "b".repeat(61));
        assert_eq!(route_name(&exact, 0), format!("{}-0", "b".repeat(61)));
        let over = format!("/{}", "b".repeat(62));
        assert_eq!(route_name(&over, 0).len(), MAX_ROUTE_NAME);
        assert!(route_name(&over, 0).contains(&format!("-{:08x}-0", fnv1a(over.as_bytes()) as u32)));
        // Every name is a valid config route name.
        for n in [&name, &other, &route_name("/x", 9999)] {
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn the_allow_list_covers_names_and_narrower_wildcards() {
        let p = |s: &str| s.parse::<NamePattern>().unwrap();
        let w = p("*.apps.example.com");
        assert!(allowed_by(&w, &p("a.apps.example.com")));
        assert!(allowed_by(&w, &p("a.b.apps.example.com")));
        assert!(allowed_by(&w, &p("*.apps.example.com")));
        assert!(allowed_by(&w, &p("*.team.apps.example.com")));
        assert!(!allowed_by(&w, &p("apps.example.com")));
        assert!(!allowed_by(&w, &p("*.example.com")));
        assert!(!allowed_by(&w, &p("a.badapps.example.com")));
        let e = p("api.example.com");
        assert!(allowed_by(&e, &p("API.example.com.")));
        assert!(!allowed_by(&e, &p("*.api.example.com")));
        assert!(!allowed_by(&e, &p("x.api.example.com")));
    }

    #[test]
    fn labels_become_routes() {
        let s = settings(&["*.apps.example.com"]);
        let (routes, issues) = run(
            vec![
                app(
                    "/team/api",
                    "2024-01-01T00:00:00.000Z",
                    json!({
                        "SNIROUTE_GROUP": "external",
                        "SNIROUTE_0_SERVER_NAMES": "api.apps.example.com, *.API.apps.example.com.",
                        "SNIROUTE_0_ALLOW_SOURCES": "10.0.0.0/8, ::1",
                        "SNIROUTE_0_PROXY_PROTOCOL": "v2",
                        "SNIROUTE_0_BALANCE": "round_robin",
                        "SNIROUTE_0_HEALTH_CHECK": "tcp",
                        "SNIROUTE_1_SERVER_NAMES": "other.apps.example.com",
                    }),
                ),
                app(
                    "/elsewhere",
                    "2024-01-01T00:00:00.000Z",
                    json!({
                        "SNIROUTE_GROUP": "internal",
                        "SNIROUTE_0_SERVER_NAMES": "x.apps.example.com",
                    }),
                ),
                app("/nolabels", "2024-01-01T00:00:00.000Z", json!(null)),
            ],
            &s,
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(routes.len(), 2);
        let r = &routes[0];
        assert_eq!(r.name, "team-api-0");
        assert_eq!(names(r), ["api.apps.example.com", "*.api.apps.example.com"]);
        assert_eq!(r.allow_sources.len(), 2);
        assert_eq!(r.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(r.balance, Balance::RoundRobin);
        assert_eq!(r.health_check, Some(HealthCheck::default()));
        assert_eq!(
            r.last_config_change_at.as_deref(),
            Some("2024-01-01T00:00:00.000Z")
        );
        let r = &routes[1];
        assert_eq!((r.name.as_str(), r.port_index), ("team-api-1", 1));
        assert_eq!(r.proxy_protocol, ProxyProtocol::None);
        assert_eq!(r.balance, Balance::LeastConnections);
        assert_eq!(r.health_check, None);
    }

    #[test]
    fn kubernetes_checks_send_the_first_exact_name() {
        let s = settings(&["*.apps.example.com"]);
        let labels = json!({"SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "*.k8s.apps.example.com,api.k8s.apps.example.com",
            "SNIROUTE_0_HEALTH_CHECK": "kubernetes",
            "SNIROUTE_1_SERVER_NAMES": "*.other.apps.example.com",
            "SNIROUTE_1_HEALTH_CHECK": "kubernetes"});
        let (routes, issues) = run(vec![app("/k", "2024-01-01T00:00:00.000Z", labels)], &s);
        assert_eq!(routes.len(), 1);
        let Some(HealthCheck {
            kind: CheckKind::Kubernetes(https),
            ..
        }) = &routes[0].health_check
        else {
            panic!("{:?}", routes[0].health_check)
        };
        assert_eq!(https.server_name.as_str(), "api.k8s.apps.example.com");
        assert_eq!(https.path, "/readyz");
        assert!(https.insecure_skip_verify && https.ca_file.is_none());
        // Only wildcards: no name to send, so that port's route is skipped.
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].kind, IssueKind::Malformed);
        assert!(
            issues[0].message.contains("has only wildcards"),
            "{}",
            issues[0].message
        );
    }

    #[test]
    fn malformed_labels_skip_their_port_with_an_issue() {
        let s = settings(&["*.apps.example.com"]);
        let cases: &[(&str, &str, &str)] = &[
            (
                "SNIROUTE_0_SERVER_NAMES",
                "a..apps.example.com",
                "label SNIROUTE_0_SERVER_NAMES: invalid server name",
            ),
            (
                "SNIROUTE_0_SERVER_NAMES",
                "a.apps.example.com,,b.apps.example.com",
                "has an empty name",
            ),
            ("SNIROUTE_0_SERVER_NAMES", "", "has an empty name"),
            (
                "SNIROUTE_0_SERVER_NAMES",
                "a.*.apps.example.com",
                "invalid server name",
            ),
            ("SNIROUTE_0_ALLOW_SOURCES", "10.0.0.1/8", "host bits set"),
            (
                "SNIROUTE_0_ALLOW_SOURCES",
                "everyone",
                "SNIROUTE_0_ALLOW_SOURCES: `everyone`",
            ),
            ("SNIROUTE_0_PROXY_PROTOCOL", "v3", "expected none, v1 or v2"),
            (
                "SNIROUTE_0_BALANCE",
                "random",
                "expected least_connections or round_robin",
            ),
            (
                "SNIROUTE_0_HEALTH_CHECK",
                "http",
                "expected tcp, kubernetes or none",
            ),
            ("SNIROUTE_0_TIMEOUT", "5s", "unknown key `TIMEOUT`"),
            (
                "SNIROUTE_5_SERVER_NAMES",
                "c.apps.example.com",
                "the app has 2 port(s), so no port index 5",
            ),
            (
                "SNIROUTE_1_BALANCE",
                "round_robin",
                "SNIROUTE_1_BALANCE without SNIROUTE_1_SERVER_NAMES",
            ),
            (
                "SNIROUTE_X_SERVER_NAMES",
                "c.apps.example.com",
                "expected SNIROUTE_<port index>_<KEY>",
            ),
            (
                "SNIROUTE_00000_SERVER_NAMES",
                "c.apps.example.com",
                "expected SNIROUTE_<port index>_<KEY>",
            ),
        ];
        for (key, value, message) in cases {
            let mut labels = json!({"SNIROUTE_GROUP": "external"});
            if !key.starts_with("SNIROUTE_0_SERVER") {
                labels["SNIROUTE_0_SERVER_NAMES"] = json!("ok.apps.example.com");
            }
            labels[*key] = json!(value);
            let (routes, issues) = run(vec![app("/a", "2024-01-01T00:00:00.000Z", labels)], &s);
            assert_eq!(issues.len(), 1, "{key}={value}: {issues:?}");
            assert_eq!(issues[0].kind, IssueKind::Malformed);
            assert!(
                issues[0].message.contains(message),
                "{key}={value}: {}",
                issues[0].message
            );
            assert_eq!(issues[0].app_id, "/a");
            // The port with the bad label has no route; others keep theirs.
            let port0_bad = key.starts_with("SNIROUTE_0_");
            assert_eq!(
                routes.iter().any(|r| r.port_index == 0),
                !port0_bad,
                "{key}"
            );
        }
    }

    #[test]
    fn names_outside_the_allow_list_refuse_the_route() {
        let labels = json!({"SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "ok.apps.example.com,bank.example.com",
            "SNIROUTE_1_SERVER_NAMES": "*.apps.example.com"});
        let (routes, issues) = run(
            vec![app("/a", "2024-01-01T00:00:00.000Z", labels.clone())],
            &settings(&["*.apps.example.com"]),
        );
        assert_eq!(
            routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a-1"]
        );
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].kind, IssueKind::NotAllowed);
        assert_eq!(issues[0].route.as_deref(), Some("a-0"));
        assert!(
            issues[0].message.contains("bank.example.com outside"),
            "{}",
            issues[0].message
        );
        // The default allow-list is empty: everything is refused.
        let (routes, issues) = run(
            vec![app("/a", "2024-01-01T00:00:00.000Z", labels)],
            &settings(&[]),
        );
        assert!(routes.is_empty());
        assert_eq!(issues.len(), 2);
        assert!(issues[0]
            .message
            .contains("empty: no label route may claim a name"));
    }

    #[test]
    fn the_older_configuration_keeps_a_name_whatever_the_order() {
        let s = settings(&["*.apps.example.com"]);
        let older = app(
            "/old",
            "2024-01-01T00:00:00.000Z",
            json!({"SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "x.apps.example.com,o.apps.example.com"}),
        );
        let newer = app(
            "/new",
            "2024-06-01T00:00:00.000Z",
            json!({"SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "x.apps.example.com,n.apps.example.com"}),
        );
        let only_x = app(
            "/newest",
            "2025-01-01T00:00:00.000Z",
            json!({"SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "x.apps.example.com"}),
        );
        for apps in [
            vec![older.clone(), newer.clone(), only_x.clone()],
            vec![only_x.clone(), newer.clone(), older.clone()],
        ] {
            let (routes, issues) = run(apps, &s);
            let got: Vec<(String, Vec<String>)> =
                routes.iter().map(|r| (r.name.clone(), names(r))).collect();
            assert_eq!(
                got,
                [
                    ("new-0".to_owned(), vec!["n.apps.example.com".to_owned()]),
                    (
                        "old-0".to_owned(),
                        vec![
                            "x.apps.example.com".to_owned(),
                            "o.apps.example.com".to_owned()
                        ]
                    ),
                ]
            );
            assert_eq!(issues.len(), 2, "{issues:?}");
            assert!(issues
                .iter()
                .all(|i| i.kind == IssueKind::Conflict(ConflictKind::OlderLabel)));
            assert_eq!(issues[0].route.as_deref(), Some("new-0"));
            assert!(issues[0].message.contains("`x.apps.example.com` is kept by route old-0 (app /old, configuration changed 2024-01-01T00:00:00.000Z)"), "{}", issues[0].message);
            assert_eq!(issues[1].route.as_deref(), Some("newest-0"));
        }
    }

    #[test]
    fn ties_and_missing_times_are_decided_by_id_then_port() {
        let s = settings(&["*.apps.example.com"]);
        let l =
            json!({"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "x.apps.example.com"});
        let mut unknown = app("/a-unknown", "", l.clone());
        unknown["versionInfo"] = json!(null);
        for apps in [
            vec![
                app("/b", "2024-01-01T00:00:00.000Z", l.clone()),
                app("/a", "2024-01-01T00:00:00.000Z", l.clone()),
                unknown.clone(),
            ],
            vec![
                unknown.clone(),
                app("/a", "2024-01-01T00:00:00.000Z", l.clone()),
                app("/b", "2024-01-01T00:00:00.000Z", l.clone()),
            ],
        ] {
            let (routes, issues) = run(apps, &s);
            assert_eq!(
                routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ["a-0"]
            );
            let losers: Vec<_> = issues.iter().map(|i| i.route.clone().unwrap()).collect();
            assert_eq!(losers, ["b-0", "a-unknown-0"]);
        }
        // Two ids that give the same route name: the older keeps it.
        let (routes, issues) = run(
            vec![
                app(
                    "/a/b",
                    "2024-02-01T00:00:00.000Z",
                    json!({"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "one.apps.example.com"}),
                ),
                app(
                    "/a.b",
                    "2024-01-01T00:00:00.000Z",
                    json!({"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "two.apps.example.com"}),
                ),
            ],
            &s,
        );
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].app_id, "/a.b");
        assert!(
            issues[0]
                .message
                .starts_with("the route name a-b-0 is kept by route a-b-0 (app /a.b"),
            "{}",
            issues[0].message
        );
    }

    #[test]
    fn marathon_lb_labels_only_for_tcp_ports_and_only_when_asked() {
        let labels = json!({"HAPROXY_GROUP": "external",
            "HAPROXY_0_VHOST": "tcp.apps.example.com", "HAPROXY_0_MODE": "tcp",
            "HAPROXY_1_VHOST": "web.apps.example.com", "HAPROXY_1_MODE": "http"});
        let mut s = settings(&["*.apps.example.com"]);
        let (routes, issues) = run(
            vec![app("/lb", "2024-01-01T00:00:00.000Z", labels.clone())],
            &s,
        );
        assert!(routes.is_empty() && issues.is_empty());
        s.marathon_lb = true;
        let (routes, issues) = run(vec![app("/lb", "2024-01-01T00:00:00.000Z", labels)], &s);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].name, "lb-0");
        assert!(routes[0].marathon_lb);
        assert_eq!(names(&routes[0]), ["tcp.apps.example.com"]);
        // A per-port group, and SNIROUTE labels winning for the same port.
        let labels = json!({"HAPROXY_GROUP": "internal", "HAPROXY_0_GROUP": "external",
            "HAPROXY_0_VHOST": "lb.apps.example.com", "HAPROXY_0_MODE": "tcp",
            "HAPROXY_1_VHOST": "lb1.apps.example.com", "HAPROXY_1_MODE": "tcp",
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "sni.apps.example.com"});
        let (routes, _) = run(vec![app("/lb", "2024-01-01T00:00:00.000Z", labels)], &s);
        assert_eq!(routes.len(), 1, "port 1 is in group internal");
        assert_eq!(names(&routes[0]), ["sni.apps.example.com"]);
        assert!(!routes[0].marathon_lb);
    }
}
