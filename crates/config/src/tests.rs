//! Tests of config loading as a whole; the value parsers, durations and the
//! position index have their own tests beside them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn name(s: &str) -> ServerName {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn parse(yaml: &str) -> Config {
    Config::from_yaml_str(yaml, "sniroute.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// The example of the spec, verbatim.
const SPEC_EXAMPLE: &str = r#"listeners: ["0.0.0.0:6443", "[::]:6443"]     # one or more; IPv4 and IPv6
admin: "127.0.0.1:9090"                       # HTTP for metrics/health; optional, off when absent
timeouts:
  client_hello: 5s    # the whole ClientHello must arrive within this, else close
  connect: 10s        # per upstream connection attempt
  idle: 24h           # a tunnel with no bytes either way for this long is closed
  drain: 30s          # on SIGTERM, how long open tunnels may finish
limits:
  max_connections: 50000        # over this, new connections are closed at once and counted
  max_client_hello_bytes: 16384
  max_pending_hellos: 1000
  max_connections_per_source: 300
routes:
  - name: dev-kubernetes01                       # label in logs/metrics; unique; [a-z0-9_-]
    server_names: ["devkubernetes01.example.com"]
    dcos_service: dev/kubernetes01               # shorthand, see below
  - name: staging
    server_names: ["*.staging.example.com", "staging.example.com"]
    upstreams: ["10.0.4.11:6443", "10.0.4.12:6443", "master.mesos:6443"]
    balance: least_connections                   # default; or round_robin
    health_check: {interval: 5s, timeout: 2s, unhealthy_after: 3, healthy_after: 2}
    proxy_protocol: none                         # none (default) | v1 | v2
    allow_sources: ["10.0.0.0/8", "2001:db8::/32"]   # default: everyone
default_route: dev-kubernetes01   # optional: for ClientHellos without SNI or with an unmatched SNI
"#;

#[test]
fn the_spec_example_parses_to_the_expected_values() {
    let config = parse(SPEC_EXAMPLE);
    let vip = "apiserver.devkubernetes01.l4lb.thisdcos.directory";
    let want = Config {
        listeners: vec![
            ListenerConfig {
                address: addr("0.0.0.0:6443"),
                default_route: None,
                accept_proxy_protocol: None,
            },
            ListenerConfig {
                address: addr("[::]:6443"),
                default_route: None,
                accept_proxy_protocol: None,
            },
        ],
        admin: Some(AdminConfig::new(addr("127.0.0.1:9090"))),
        timeouts: Timeouts {
            client_hello: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(86_400),
            accept_grace: Duration::ZERO,
            drain: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(60),
        },
        limits: Limits {
            max_connections: 50_000,
            max_client_hello_bytes: 16_384,
            max_pending_hellos: 1000,
            max_pending_hellos_per_source: 256,
            max_connections_per_source: Some(300),
        },
        routes: vec![
            RouteConfig {
                name: "dev-kubernetes01".into(),
                server_names: vec![
                    NamePattern::Exact(name("devkubernetes01.example.com")),
                    NamePattern::Exact(name(vip)),
                ],
                upstreams: vec![UpstreamAddr {
                    host: Host::Name(name(vip)),
                    port: 6443,
                }],
                balance: Balance::LeastConnections,
                health_check: Some(HealthCheck::default()),
                outlier_detection: Some(OutlierDetection::default()),
                proxy_protocol: ProxyProtocol::None,
                allow_sources: vec![],
                dcos_service: Some("dev/kubernetes01".into()),
                marathon_app: None,
                mesos_tasks: None,
            },
            RouteConfig {
                name: "staging".into(),
                server_names: vec![
                    NamePattern::Wildcard(name("staging.example.com")),
                    NamePattern::Exact(name("staging.example.com")),
                ],
                upstreams: vec![
                    "10.0.4.11:6443".parse().unwrap(),
                    "10.0.4.12:6443".parse().unwrap(),
                    UpstreamAddr {
                        host: Host::Name(name("master.mesos")),
                        port: 6443,
                    },
                ],
                balance: Balance::LeastConnections,
                health_check: Some(HealthCheck {
                    kind: CheckKind::Tcp,
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(2),
                    unhealthy_after: 3,
                    healthy_after: 2,
                }),
                outlier_detection: Some(OutlierDetection::default()),
                proxy_protocol: ProxyProtocol::None,
                allow_sources: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                dcos_service: None,
                marathon_app: None,
                mesos_tasks: None,
            },
        ],
        default_route: Some("dev-kubernetes01".into()),
        watch_config: false,
        forwarding: Forwarding::Splice,
        workers: Workers::Auto,
        discovery: Discovery::default(),
        source: ConfigSource::File(PathBuf::from("sniroute.yaml")),
    };
    assert_eq!(config, want);
    assert_eq!(
        config.routes[1].upstreams[0].host,
        Host::Ip(IpAddr::from([10, 0, 4, 11]))
    );
    assert_eq!(
        config.route("staging").map(|r| r.name.as_str()),
        Some("staging")
    );
}

#[test]
fn defaults_and_the_other_forms() {
    let config = parse(
        r#"
listeners:
  - "127.0.0.1:6443"
  - {address: "[::1]:7443", default_route: b}
watch_config: true
forwarding: copy
workers: 3
timeouts: {connect: 500ms}
routes:
  - name: a
    server_names: [A.Example.COM.]
    upstreams: ["[2001:db8::1]:6443"]
    health_check: false
    balance: round_robin
    proxy_protocol: v1
  - name: b
    upstreams: ["10.0.0.2:6443"]
    health_check: {interval: 1s}
    proxy_protocol: v2
    allow_sources: ["192.0.2.7"]
  - name: c
    server_names: ["*.c.test"]
    upstreams: ["10.0.0.3:6443"]
    health_check: {enabled: false, interval: 1s}
  - name: d
    server_names: [d.test]
    upstreams: ["10.0.0.4:6443"]
    health_check:
  - name: e
    server_names: [e.test]
    dcos_service: /prod/k8s
    health_check: true
"#,
    );
    assert_eq!(config.admin, None);
    assert!(config.watch_config);
    assert_eq!(config.workers, Workers::Count(3));
    assert_eq!(config.workers.resolve(|| unreachable!()), 3);
    for (yaml, want) in [
        ("auto", Workers::Auto),
        ("\"auto\"", Workers::Auto),
        ("1", Workers::Count(1)),
        ("\"256\"", Workers::Count(256)),
    ] {
        let c = parse(&format!("listeners: [\"127.0.0.1:6443\"]\nworkers: {yaml}\nroutes: [{{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}}]\n"));
        assert_eq!(c.workers, want, "{yaml}");
    }
    assert_eq!(Workers::Auto.resolve(|| 0), 1);
    assert_eq!(Workers::Auto.resolve(|| 6), 6);
    assert_eq!(Workers::Auto.resolve(|| 1000), 256);
    assert_eq!(config.forwarding, Forwarding::Copy);
    assert_eq!(config.default_route, None);
    assert_eq!(config.listeners[1].default_route.as_deref(), Some("b"));
    assert_eq!(
        config.timeouts,
        Timeouts {
            connect: Duration::from_millis(500),
            ..Timeouts::default()
        }
    );
    assert_eq!(config.limits, Limits::default());
    let [a, b, c, d, e] = &config.routes[..] else {
        panic!("five routes");
    };
    assert_eq!(
        a.server_names,
        vec![NamePattern::Exact(name("a.example.com"))]
    );
    assert_eq!(a.upstreams[0].to_string(), "[2001:db8::1]:6443");
    assert_eq!(a.health_check, None);
    assert_eq!(a.balance, Balance::RoundRobin);
    assert_eq!(a.proxy_protocol, ProxyProtocol::V1);
    // A route with no names is fine as some listener's default.
    assert!(b.server_names.is_empty());
    assert_eq!(
        b.health_check,
        Some(HealthCheck {
            interval: Duration::from_secs(1),
            // The default timeout is shortened to fit the interval.
            timeout: Duration::from_secs(1),
            ..HealthCheck::default()
        })
    );
    assert_eq!(b.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(b.allow_sources, vec!["192.0.2.7/32".parse().unwrap()]);
    assert_eq!(c.health_check, None);
    assert_eq!(d.health_check, Some(HealthCheck::default()));
    assert_eq!(e.health_check, Some(HealthCheck::default()));
    assert_eq!(e.dcos_service.as_deref(), Some("/prod/k8s"));
    assert_eq!(
        e.upstreams[0].to_string(),
        "apiserver.prodk8s.l4lb.thisdcos.directory:6443"
    );
    assert_eq!(
        e.server_names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["e.test", "apiserver.prodk8s.l4lb.thisdcos.directory"]
    );
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let yaml = "\u{feff}listeners: [\"0.0.0.0:6443\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
    assert_eq!(parse(yaml).routes.len(), 1);
    let err = Config::from_yaml_str("\u{feff}bogus: 1\n", "x.yaml").unwrap_err();
    assert_eq!((err.line(), err.column()), (Some(1), Some(1)), "{err}");
}

#[test]
fn a_dcos_vip_listed_by_hand_is_not_a_duplicate() {
    let config = parse(
        "listeners: [\"0.0.0.0:6443\"]\nroutes:\n  - name: a\n    server_names: [apiserver.x.l4lb.thisdcos.directory]\n    dcos_service: x\n",
    );
    assert_eq!(config.routes[0].server_names.len(), 1);
}

/// One bad config and what its error must say.
struct Bad {
    what: &'static str,
    yaml: Vec<&'static str>,
    line: usize,
    column: usize,
    path: Option<&'static str>,
    fragment: &'static str,
}

const LISTENERS: &str = r#"listeners: ["0.0.0.0:6443"]"#;
const ROUTE_A: &[&str] = &[
    "routes:",
    "  - name: a",
    "    server_names: [a.example.com]",
    "    upstreams: [\"10.0.0.1:6443\"]",
];

fn bad_configs() -> Vec<Bad> {
    vec![
        Bad {
            what: "unknown top-level key",
            yaml: vec![LISTENERS, "bogus: 1", "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]"],
            line: 2,
            column: 1,
            path: Some("bogus"),
            fragment: "unknown key `bogus`, expected one of `listeners`",
        },
        Bad {
            what: "unknown key inside a route, block style",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test]", "    upstream: [\"10.0.0.1:6443\"]"],
            line: 5,
            column: 5,
            path: Some("routes[0].upstream"),
            fragment: "unknown key `upstream`",
        },
        Bad {
            what: "unknown key inside a route, flow style",
            yaml: vec![LISTENERS, "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"], blance: round_robin}]"],
            line: 2,
            column: 71,
            path: Some("routes[0].blance"),
            fragment: "unknown key `blance`",
        },
        Bad {
            what: "unknown key inside timeouts",
            yaml: vec![LISTENERS, "timeouts: {connect: 1s, idel: 5m}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 25,
            path: Some("timeouts.idel"),
            fragment: "unknown key `idel`, expected one of `client_hello`, `connect`, `idle`, `accept_grace`, `drain`",
        },
        Bad {
            what: "unknown key inside a health check",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    health_check:", "      enabled: true", "      intervall: 5s"],
            line: 8,
            column: 7,
            path: Some("routes[0].health_check.intervall"),
            fragment: "unknown key `intervall`",
        },
        Bad {
            what: "typo in balance",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    balance: roundrobin"],
            line: 6,
            column: 14,
            path: Some("routes[0].balance"),
            fragment: "unknown variant `roundrobin`, expected `least_connections` or `round_robin`",
        },
        Bad {
            what: "typo in proxy_protocol",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    proxy_protocol: V2"],
            line: 6,
            column: 21,
            path: Some("routes[0].proxy_protocol"),
            fragment: "unknown variant `V2`",
        },
        Bad {
            what: "a bare number as duration",
            yaml: vec![LISTENERS, "timeouts:", "  connect: 5", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 12,
            path: Some("timeouts.connect"),
            fragment: "`5` has no unit: expected a number followed by a unit: ms, s, m, h or d",
        },
        Bad {
            what: "a duration with a spelled-out unit",
            yaml: vec![LISTENERS, "timeouts:", "  connect: 5 sec", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 12,
            path: Some("timeouts.connect"),
            fragment: "`5 sec` is not a duration: expected a number followed by a unit",
        },
        Bad {
            what: "a zero timeout",
            yaml: vec![LISTENERS, "timeouts: {drain: 0s}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 19,
            path: Some("timeouts.drain"),
            fragment: "must be greater than zero",
        },
        Bad {
            what: "an accept grace over 5 minutes",
            yaml: vec![LISTENERS, "timeouts: {accept_grace: 10m}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 26,
            path: Some("timeouts.accept_grace"),
            fragment: "accept_grace must be at most 5m",
        },
        Bad {
            what: "a zero health check interval",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    health_check: {interval: 0ms}"],
            line: 6,
            column: 30,
            path: Some("routes[0].health_check.interval"),
            fragment: "must be greater than zero",
        },
        Bad {
            what: "an IP literal as server name, flow list",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test, 10.0.0.1]", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 4,
            column: 28,
            path: Some("routes[0].server_names[1]"),
            fragment: "IP address literal",
        },
        Bad {
            what: "an empty label, block list",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names:", "      - a.test", "      - a..b", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 6,
            column: 9,
            path: Some("routes[0].server_names[1]"),
            fragment: "invalid server name `a..b`: server name has an empty label",
        },
        Bad {
            what: "a wildcard inside a label",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names:", "      - \"bad_*.x\"", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 5,
            column: 9,
            path: Some("routes[0].server_names[0]"),
            fragment: "a wildcard must be a whole leftmost label",
        },
        Bad {
            what: "the same name in two routes, after normalisation",
            yaml: vec![
                LISTENERS,
                "routes:",
                "  - name: a",
                "    server_names: [A.example.com]",
                "    upstreams: [\"10.0.0.1:6443\"]",
                "  - name: b",
                "    server_names:",
                "      - x.example.com",
                "      - a.example.com.",
                "    upstreams: [\"10.0.0.2:6443\"]",
            ],
            line: 9,
            column: 9,
            path: Some("routes[1].server_names[1]"),
            fragment: "server name `a.example.com` is already claimed by route `a` (on line 4): a name can belong to one route only",
        },
        Bad {
            what: "the same wildcard in two routes",
            yaml: vec![
                LISTENERS,
                "routes:",
                "  - {name: a, server_names: [\"*.Example.com\"], upstreams: [\"10.0.0.1:6443\"]}",
                "  - {name: b, server_names: [b.test, \"*.example.com\"], upstreams: [\"10.0.0.2:6443\"]}",
            ],
            line: 4,
            column: 38,
            path: Some("routes[1].server_names[1]"),
            fragment: "server name `*.example.com` is already claimed by route `a`",
        },
        Bad {
            what: "the same name twice in one route",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test, A.TEST]", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 4,
            column: 28,
            path: Some("routes[0].server_names[1]"),
            fragment: "listed twice in route `a` (first on line 4)",
        },
        Bad {
            what: "a dcos_service VIP claimed by another route",
            yaml: vec![
                LISTENERS,
                "routes:",
                "  - {name: a, server_names: [apiserver.k8s.l4lb.thisdcos.directory], upstreams: [\"10.0.0.1:1\"]}",
                "  - name: b",
                "    dcos_service: k8s",
            ],
            line: 5,
            column: 19,
            path: Some("routes[1].dcos_service"),
            fragment: "`apiserver.k8s.l4lb.thisdcos.directory` is already claimed by route `a`",
        },
        Bad {
            what: "duplicate route names",
            yaml: vec![
                LISTENERS,
                "routes:",
                "  - name: a",
                "    server_names: [a.test]",
                "    upstreams: [\"10.0.0.1:6443\"]",
                "  - name: a",
                "    server_names: [b.test]",
                "    upstreams: [\"10.0.0.2:6443\"]",
            ],
            line: 6,
            column: 11,
            path: Some("routes[1].name"),
            fragment: "route name `a` is used twice (first on line 3)",
        },
        Bad {
            what: "an invalid route name",
            yaml: vec![LISTENERS, "routes:", "  - name: Dev.K8s", "    server_names: [a.test]", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 3,
            column: 11,
            path: Some("routes[0].name"),
            fragment: "only a-z, 0-9, `_` and `-` are allowed",
        },
        Bad {
            what: "unknown global default_route",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "default_route: nope"],
            line: 6,
            column: 16,
            path: Some("default_route"),
            fragment: "default_route `nope` is not a route; the routes are: a",
        },
        Bad {
            what: "unknown default_route of a listener",
            yaml: vec![
                "listeners:",
                "  - \"0.0.0.0:6443\"",
                "  - {address: \"[::]:6443\", default_route: nope}",
                ROUTE_A[0],
                ROUTE_A[1],
                ROUTE_A[2],
                ROUTE_A[3],
            ],
            line: 3,
            column: 43,
            path: Some("listeners[1].default_route"),
            fragment: "the listener's default_route `nope` is not a route",
        },
        Bad {
            what: "an invalid CIDR",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    allow_sources: [\"10.0.0.0/8\", \"10.1.0.0/33\"]"],
            line: 6,
            column: 35,
            path: Some("routes[0].allow_sources[1]"),
            fragment: "invalid network `10.1.0.0/33`",
        },
        Bad {
            what: "a CIDR with host bits",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    allow_sources:", "      - 10.0.0.1/8"],
            line: 7,
            column: 9,
            path: Some("routes[0].allow_sources[0]"),
            fragment: "did you mean 10.0.0.0/8?",
        },
        Bad {
            what: "an upstream without port",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test]", "    upstreams: [master.mesos]"],
            line: 5,
            column: 17,
            path: Some("routes[0].upstreams[0]"),
            fragment: "upstream `master.mesos` has no port",
        },
        Bad {
            what: "both dcos_service and upstreams",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    dcos_service: dev/kubernetes01"],
            line: 6,
            column: 5,
            path: Some("routes[0].dcos_service"),
            fragment: "has both `dcos_service` and `upstreams`: a route takes exactly one of them",
        },
        Bad {
            what: "neither dcos_service nor upstreams",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test]"],
            line: 3,
            column: 5,
            path: Some("routes[0]"),
            fragment: "route `a` has no upstreams: add `upstreams",
        },
        Bad {
            what: "empty listeners",
            yaml: vec!["listeners: []", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 1,
            column: 12,
            path: Some("listeners"),
            fragment: "the list is empty",
        },
        Bad {
            what: "empty upstreams",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    server_names: [a.test]", "    upstreams:"],
            line: 5,
            column: 15,
            path: Some("routes[0].upstreams"),
            fragment: "the list is empty",
        },
        Bad {
            what: "missing routes",
            yaml: vec!["# a comment first", LISTENERS],
            line: 2,
            column: 1,
            path: None,
            fragment: "missing required key `routes`",
        },
        Bad {
            what: "a missing route name",
            yaml: vec![LISTENERS, "routes:", "  - server_names: [a.test]", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 3,
            column: 5,
            path: Some("routes[0]"),
            fragment: "missing required key `name`",
        },
        Bad {
            what: "YAML syntax error: unclosed flow list",
            yaml: vec!["listeners: [\"0.0.0.0:6443\"", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 1,
            path: Some("listeners"),
            fragment: "did not find expected ',' or ']'",
        },
        Bad {
            what: "YAML syntax error: bad indentation",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "   server_names: [a.test]"],
            line: 4,
            column: 4,
            path: Some("routes"),
            fragment: "did not find expected '-' indicator",
        },
        Bad {
            what: "duplicate mapping key in a route",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    name: b"],
            line: 6,
            column: 5,
            path: Some("routes[0].name"),
            fragment: "duplicate key `name`",
        },
        Bad {
            what: "duplicate top-level key",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "listeners: [\"0.0.0.0:7443\"]"],
            line: 6,
            column: 1,
            path: Some("listeners"),
            fragment: "duplicate key `listeners`",
        },
        Bad {
            what: "duplicate key in a listener mapping",
            yaml: vec!["listeners: [{address: \"0.0.0.0:1\", address: \"0.0.0.0:2\"}]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 1,
            column: 36,
            path: Some("listeners[0].address"),
            fragment: "duplicate key `address`",
        },
        Bad {
            what: "duplicate listener addresses",
            yaml: vec!["listeners:", "  - 0.0.0.0:6443", "  - {address: \"0.0.0.0:6443\"}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 15,
            path: Some("listeners[1].address"),
            fragment: "listener address 0.0.0.0:6443 is listed twice (first on line 2)",
        },
        Bad {
            what: "a host name as listener",
            yaml: vec!["listeners: [\"localhost:6443\"]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 1,
            column: 13,
            path: Some("listeners[0]"),
            fragment: "host names are not allowed here",
        },
        Bad {
            what: "the admin address on a listener",
            yaml: vec![LISTENERS, "admin: 0.0.0.0:6443", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 8,
            path: Some("admin"),
            fragment: "is also a listener",
        },
        Bad {
            what: "the admin address on a listener, mapping form",
            yaml: vec![LISTENERS, "admin:", "  address: 0.0.0.0:6443", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 12,
            path: Some("admin.address"),
            fragment: "the admin address 0.0.0.0:6443 is also a listener",
        },
        Bad {
            what: "an empty admin allow_sources",
            yaml: vec![LISTENERS, "admin: {address: \"127.0.0.1:9190\", allow_sources: []}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 51,
            path: Some("admin.allow_sources"),
            fragment: "the list is empty",
        },
        Bad {
            what: "admin allow_sources with no value",
            yaml: vec![LISTENERS, "admin:", "  address: 127.0.0.1:9190", "  allow_sources:", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 4,
            column: 17,
            path: Some("admin.allow_sources"),
            fragment: "the list is empty",
        },
        Bad {
            what: "a bad network in admin allow_sources",
            yaml: vec![LISTENERS, "admin:", "  address: 127.0.0.1:9190", "  allow_sources: [10.0.0.0/8, 10.0.0.1/8]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 4,
            column: 31,
            path: Some("admin.allow_sources[1]"),
            fragment: "invalid network `10.0.0.1/8`: 10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?",
        },
        Bad {
            what: "a host name in admin allow_sources",
            yaml: vec![LISTENERS, "admin:", "  address: 127.0.0.1:9190", "  allow_sources:", "    - prometheus.marathon.mesos", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 5,
            column: 7,
            path: Some("admin.allow_sources[0]"),
            fragment: "`prometheus.marathon.mesos` is not an IP address",
        },
        Bad {
            what: "an unknown key in admin",
            yaml: vec![LISTENERS, "admin:", "  address: 127.0.0.1:9190", "  allow: [10.0.0.0/8]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 4,
            column: 3,
            path: Some("admin.allow"),
            fragment: "unknown key `allow`, expected `address` or `allow_sources`",
        },
        Bad {
            what: "admin without address",
            yaml: vec![LISTENERS, "admin:", "  allow_sources: [10.0.0.0/8]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 3,
            path: Some("admin"),
            fragment: "missing required key `address`",
        },
        Bad {
            what: "a port as admin",
            yaml: vec![LISTENERS, "admin: 9190", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 8,
            path: Some("admin"),
            fragment: "invalid type: integer `9190`, expected a listen address such as `127.0.0.1:9190`, or a mapping",
        },
        Bad {
            what: "max_client_hello_bytes out of range",
            yaml: vec![LISTENERS, "limits:", "  max_client_hello_bytes: 100", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 27,
            path: Some("limits.max_client_hello_bytes"),
            fragment: "must be between 512 and 65536",
        },
        Bad {
            what: "tcp_user_timeout too long",
            yaml: vec![LISTENERS, "timeouts: {tcp_user_timeout: 2d}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 30,
            path: Some("timeouts.tcp_user_timeout"),
            fragment: "at most 24h",
        },
        Bad {
            what: "zero max_pending_hellos_per_source",
            yaml: vec![LISTENERS, "limits: {max_pending_hellos_per_source: 0}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 41,
            path: Some("limits.max_pending_hellos_per_source"),
            fragment: "at least 1",
        },
        Bad {
            what: "zero max_connections",
            yaml: vec![LISTENERS, "limits: {max_connections: 0}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 27,
            path: Some("limits.max_connections"),
            fragment: "at least 1",
        },
        Bad {
            what: "negative max_connections",
            yaml: vec![LISTENERS, "limits: {max_connections: -5}", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 27,
            path: Some("limits.max_connections"),
            fragment: "`-5` is negative: expected a whole number",
        },
        Bad {
            what: "health check timeout longer than its interval",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    health_check: {interval: 2s, timeout: 3s}"],
            line: 6,
            column: 43,
            path: Some("routes[0].health_check.timeout"),
            fragment: "timeout (3s) is longer than its interval (2s)",
        },
        Bad {
            what: "zero unhealthy_after",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    health_check:", "      unhealthy_after: 0"],
            line: 7,
            column: 24,
            path: Some("routes[0].health_check.unhealthy_after"),
            fragment: "unhealthy_after must be at least 1",
        },
        Bad {
            what: "a route nothing reaches",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "  - name: b", "    upstreams: [\"10.0.0.2:6443\"]"],
            line: 6,
            column: 5,
            path: Some("routes[1]"),
            fragment: "route `b` has no server names and is no default route",
        },
        Bad {
            what: "a YAML 1.1 boolean",
            yaml: vec![LISTENERS, "watch_config: yes", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 15,
            path: Some("watch_config"),
            fragment: "invalid type: string \"yes\", expected a boolean",
        },
        Bad {
            what: "zero workers",
            yaml: vec![LISTENERS, "workers: 0", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 10,
            path: Some("workers"),
            fragment: "`0` workers: expected `auto` or a number from 1 to 256",
        },
        Bad {
            what: "too many workers",
            yaml: vec![LISTENERS, "workers: 257", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 10,
            path: Some("workers"),
            fragment: "`257` workers: expected `auto` or a number from 1 to 256",
        },
        Bad {
            what: "workers neither auto nor a number",
            yaml: vec![LISTENERS, "workers: all", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 10,
            path: Some("workers"),
            fragment: "`all`: expected `auto` or a number of threads from 1 to 256",
        },
        Bad {
            what: "negative workers",
            yaml: vec![LISTENERS, "workers: -2", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 10,
            path: Some("workers"),
            fragment: "`-2` workers",
        },
        Bad {
            what: "unknown forwarding",
            yaml: vec![LISTENERS, "forwarding: zero_copy", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 13,
            path: Some("forwarding"),
            fragment: "unknown variant `zero_copy`, expected `splice` or `copy`",
        },
        Bad {
            what: "a list where a mapping belongs",
            yaml: vec![LISTENERS, "timeouts: [5s]", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 11,
            path: Some("timeouts"),
            fragment: "invalid type: sequence, expected a mapping of `client_hello`",
        },
        Bad {
            what: "an empty route name",
            yaml: vec![LISTENERS, "routes:", "  - name:", "    server_names: [a.test]", "    upstreams: [\"10.0.0.1:6443\"]"],
            line: 3,
            column: 10,
            path: Some("routes[0].name"),
            fragment: "route name is empty",
        },
        Bad {
            what: "empty server_names, flow style",
            yaml: vec![LISTENERS, "routes: [{name: a, server_names: [], upstreams: [\"10.0.0.1:1\"]}]"],
            line: 2,
            column: 34,
            path: Some("routes[0].server_names"),
            fragment: "the list is empty",
        },
        Bad {
            what: "allow_sources with no value",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "    allow_sources:", "    balance: round_robin"],
            line: 6,
            column: 19,
            path: Some("routes[0].allow_sources"),
            fragment: "the list is empty",
        },
        Bad {
            what: "a word as a count",
            yaml: vec![LISTENERS, "limits:", "  max_connections: lots", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 3,
            column: 20,
            path: Some("limits.max_connections"),
            fragment: "invalid type: string \"lots\", expected a whole number",
        },
        Bad {
            what: "a bare port as listener",
            yaml: vec!["listeners:", "  - 6443", ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3]],
            line: 2,
            column: 5,
            path: Some("listeners[0]"),
            fragment: "invalid type: integer `6443`, expected a listen address such as `0.0.0.0:6443`",
        },
        Bad {
            what: "an invalid dcos_service",
            yaml: vec![LISTENERS, "routes:", "  - name: a", "    dcos_service: dev.kubernetes01"],
            line: 4,
            column: 19,
            path: Some("routes[0].dcos_service"),
            fragment: "expected a DC/OS service path such as `dev/kubernetes01`",
        },
        Bad {
            what: "an unknown anchor",
            yaml: vec![LISTENERS, "routes: *nope"],
            line: 2,
            column: 9,
            path: Some("routes"),
            fragment: "unknown anchor",
        },
        Bad {
            what: "two documents",
            yaml: vec![LISTENERS, ROUTE_A[0], ROUTE_A[1], ROUTE_A[2], ROUTE_A[3], "---", "listeners: []"],
            line: 6,
            column: 1,
            path: None,
            fragment: "more than one YAML document",
        },
    ]
}

#[test]
fn admin_takes_an_address_or_a_mapping_with_allow_sources() {
    let routes = "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
    let with = |admin: &str| parse(&format!("listeners: [\"0.0.0.0:6443\"]\n{admin}\n{routes}"));
    let defaults = default_admin_allow_sources();
    let shown: Vec<String> = defaults.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "::1/128",
            "fc00::/7"
        ]
    );

    // The plain form and the mapping without allow_sources: the default list.
    for admin in [
        "admin: \"0.0.0.0:9190\"",
        "admin: {address: \"0.0.0.0:9190\"}",
        "admin:\n  address: 0.0.0.0:9190",
    ] {
        let config = with(admin);
        let got = config.admin.as_ref().unwrap();
        assert_eq!(got, &AdminConfig::new(addr("0.0.0.0:9190")), "{admin}");
        assert!(got.default_allow_list());
    }
    let config = with("admin: {address: \"[::]:9190\", allow_sources: [\"127.0.0.2/32\", \"2001:db8::/32\", 10.9.8.7]}");
    let admin = config.admin.unwrap();
    assert_eq!(admin.address, addr("[::]:9190"));
    assert_eq!(
        admin.allow_sources,
        vec![
            "127.0.0.2/32".parse::<IpNet>().unwrap(),
            "2001:db8::/32".parse().unwrap(),
            "10.9.8.7/32".parse().unwrap()
        ]
    );
    assert!(!admin.default_allow_list());
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(admin.allows(ip("127.0.0.2")));
    assert!(
        admin.allows(ip("::ffff:127.0.0.2")),
        "IPv4-mapped peers as IPv4"
    );
    assert!(!admin.allows(ip("127.0.0.1")));
    assert!(admin.allows(ip("2001:db8::1")));
    assert!(!admin.allows(ip("2001:db9::1")));

    // The default list: loopback and private ranges, not the internet.
    let default = AdminConfig::new(addr("0.0.0.0:9190"));
    for allowed in [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "::1",
        "fd00::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ] {
        assert!(default.allows(ip(allowed)), "{allowed}");
    }
    for refused in [
        "8.8.8.8",
        "172.32.0.1",
        "172.15.255.255",
        "192.169.0.1",
        "100.128.0.1",
        "11.0.0.1",
        "2001:db8::1",
        "fe80::1",
        "::ffff:8.8.8.8",
        "::",
        "0.0.0.0",
    ] {
        assert!(!default.allows(ip(refused)), "{refused}");
    }

    // The admin address may not be a listener's, in either form.
    for admin in ["admin: 0.0.0.0:6443", "admin: {address: 0.0.0.0:6443}"] {
        let err = Config::from_yaml_str(
            &format!("listeners: [\"0.0.0.0:6443\"]\n{admin}\n{routes}"),
            "x.yaml",
        )
        .unwrap_err();
        assert!(err.message().contains("is also a listener"), "{err}");
    }
    // Port 0 is any free port: never the same as a listener's.
    let config = parse(&format!(
        "listeners: [\"127.0.0.1:0\"]\nadmin: {{address: \"127.0.0.1:0\"}}\n{routes}"
    ));
    assert_eq!(config.admin.unwrap().address, addr("127.0.0.1:0"));
}

#[test]
fn bad_configs_are_reported_at_the_offending_node() {
    let mut failures = Vec::new();
    for case in bad_configs() {
        let yaml = case.yaml.join("\n") + "\n";
        let err = match Config::from_yaml_str(&yaml, "sniroute.yaml") {
            Ok(_) => {
                failures.push(format!("{}: accepted\n{yaml}", case.what));
                continue;
            }
            Err(e) => e,
        };
        let got = (err.line(), err.column(), err.path());
        let want = (Some(case.line), Some(case.column), case.path);
        if got != want || !err.message().contains(case.fragment) || err.file() != "sniroute.yaml" {
            failures.push(format!(
                "{}:\n  got  {got:?} {:?}\n  want {want:?} containing {:?}",
                case.what,
                err.message(),
                case.fragment
            ));
            continue;
        }
        // The one-line form an operator sees.
        let shown = err.to_string();
        let mut prefix = format!("sniroute.yaml:{}:{}: ", case.line, case.column);
        prefix.push_str(err.message());
        assert!(shown.starts_with(&prefix), "{shown}");
        match case.path {
            Some(p) => assert!(shown.ends_with(&format!(" (at {p})")), "{shown}"),
            None => assert!(!shown.contains(" (at "), "{shown}"),
        }
        // No serde_yaml leftovers.
        let own = format!(" at line {} column {}", case.line, case.column);
        assert!(!err.message().contains(&own), "{shown}");
        assert!(!err.message().contains("field"), "{shown}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn errors_without_a_position() {
    for empty in ["", "\n", "# nothing here\n", "~\n", "---\n"] {
        let err = Config::from_yaml_str(empty, "x.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml: the configuration is empty: it needs at least `listeners` and `routes`"
        );
        assert_eq!((err.line(), err.column(), err.path()), (None, None, None));
    }
    let err = Config::load(&ConfigSource::File("/nonexistent/sniroute.yaml".into())).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/sniroute.yaml: cannot read: "),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = Config::load(&ConfigSource::File(dir.path().to_owned())).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(": cannot read: it is a directory"),
        "{err}"
    );
    let file = dir.path().join("latin1.yaml");
    std::fs::write(&file, b"listeners: [\"\xe9\"]\n").unwrap();
    let err = Config::load(&ConfigSource::File(file)).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read: the file is not valid UTF-8 (at byte 13)"),
        "{err}"
    );
}

#[test]
fn load_reads_files_and_environment_yaml_and_records_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sniroute.yaml");
    std::fs::write(&file, SPEC_EXAMPLE).unwrap();
    let source = ConfigSource::File(file.clone());
    let config = Config::load(&source).unwrap();
    assert_eq!(config.source, source);
    assert_eq!(config.routes.len(), 2);

    let source = ConfigSource::EnvYaml(SPEC_EXAMPLE.to_owned());
    assert_eq!(Config::load(&source).unwrap().source, source);

    // Errors name the environment variable as the file.
    let source = ConfigSource::EnvYaml("listeners: [\"0.0.0.0:1\"]\nroutes: 5\n".to_owned());
    let err = Config::load(&source).unwrap_err();
    assert_eq!(err.file(), "$SNIROUTE_CONFIG_YAML");
    assert!(
        err.to_string()
            .starts_with("$SNIROUTE_CONFIG_YAML:2:9: invalid type"),
        "{err}"
    );

    std::fs::write(
        &file,
        "listeners: [\"0.0.0.0:1\"]\nroutes:\n  - name: x\n    bogus_key: 1\n",
    )
    .unwrap();
    let err = Config::load(&ConfigSource::File(file.clone())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:4:5: unknown key `bogus_key`, expected one of `name`, `server_names`, `upstreams`, \
             `dcos_service`, `marathon_app`, `mesos_tasks`, `balance`, `health_check`, `outlier_detection`, `proxy_protocol`, `allow_sources` (at routes[0].bogus_key)",
            file.display()
        )
    );
}

#[test]
fn config_source_resolution_order() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |key: &str| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let all: &[(&str, &str)] = &[
        ("SNIROUTE_CONFIG", "/env/path.yaml"),
        ("SNIROUTE_CONFIG_YAML", "listeners: []"),
    ];
    assert_eq!(
        ConfigSource::resolve(Some(Path::new("/cli.yaml")), env(all)),
        ConfigSource::File("/cli.yaml".into())
    );
    assert_eq!(
        ConfigSource::resolve(None, env(all)),
        ConfigSource::File("/env/path.yaml".into())
    );
    assert_eq!(
        ConfigSource::resolve(None, env(&[("SNIROUTE_CONFIG_YAML", "listeners: []")])),
        ConfigSource::EnvYaml("listeners: []".into())
    );
    // Empty variables count as unset.
    assert_eq!(
        ConfigSource::resolve(
            None,
            env(&[("SNIROUTE_CONFIG", ""), ("SNIROUTE_CONFIG_YAML", "x: 1")])
        ),
        ConfigSource::EnvYaml("x: 1".into())
    );
    assert_eq!(
        ConfigSource::resolve(None, env(&[("SNIROUTE_CONFIG_YAML", "")])),
        ConfigSource::File(DEFAULT_CONFIG_PATH.into())
    );
    assert_eq!(
        ConfigSource::resolve(None, env(&[])),
        ConfigSource::File("/etc/sniroute/sniroute.yaml".into())
    );
    assert_eq!(
        ConfigSource::File("/etc/sniroute/sniroute.yaml".into()).display_name(),
        "/etc/sniroute/sniroute.yaml"
    );
    assert_eq!(
        ConfigSource::EnvYaml("x".into()).display_name(),
        "$SNIROUTE_CONFIG_YAML"
    );
    // A path that is a URL: fetched, with `$SNIROUTE_CONFIG_CA` for https.
    assert_eq!(
        ConfigSource::resolve(
            Some(Path::new("https://configs.example/sniroute.yaml")),
            env(&[("SNIROUTE_CONFIG_CA", "/ca.pem")])
        ),
        ConfigSource::Url {
            url: "https://configs.example/sniroute.yaml".into(),
            ca_file: Some("/ca.pem".into())
        }
    );
    let presigned = ConfigSource::resolve(
        None,
        env(&[(
            "SNIROUTE_CONFIG",
            "http://h:8080/c.yaml?X-Amz-Signature=secret",
        )]),
    );
    assert_eq!(
        presigned,
        ConfigSource::Url {
            url: "http://h:8080/c.yaml?X-Amz-Signature=secret".into(),
            ca_file: None
        }
    );
    assert_eq!(presigned.display_name(), "http://h:8080/c.yaml?...");
    // Not a URL: a relative path that starts with `http`.
    assert_eq!(
        ConfigSource::resolve(Some(Path::new("https.yaml")), env(&[])),
        ConfigSource::File("https.yaml".into())
    );
    let e = Config::load(&presigned).unwrap_err().to_string();
    assert!(e.starts_with("http://h:8080/c.yaml?...: "), "{e}");
    assert!(e.contains("save it to a file"), "{e}");
}

#[test]
fn the_deploy_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sniroute.example.yaml");
    let config = Config::load(&ConfigSource::File(path)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.routes.is_empty());
    // Every top-level key is shown with a value, so the example documents
    // them all (they are optional, so serde would not notice a missing one).
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/sniroute.example.yaml"),
    )
    .unwrap();
    for key in [
        "listeners:",
        "admin:",
        "timeouts:",
        "client_hello:",
        "connect:",
        "idle:",
        "drain:",
        "limits:",
        "max_connections:",
        "max_client_hello_bytes:",
        "routes:",
        "name:",
        "server_names:",
        "upstreams:",
        "dcos_service:",
        "discovery:",
        "marathon:",
        "urls:",
        "resync:",
        "required:",
        "marathon_app:",
        "port_name:",
        "mesos:",
        "mesos_tasks:",
        "framework:",
        "task_name_pattern:",
        "balance:",
        "health_check:",
        "enabled:",
        "interval:",
        "timeout:",
        "unhealthy_after:",
        "healthy_after:",
        "outlier_detection:",
        "consecutive_failures:",
        "base_ejection:",
        "max_ejected_percent:",
        "proxy_protocol:",
        "allow_sources:",
        "default_route:",
        "watch_config:",
        "forwarding:",
        "workers:",
        "address:",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().trim_start_matches("- ").starts_with(key)),
            "the example does not show `{key}`"
        );
    }
}

#[test]
fn marathon_discovery_and_marathon_app_routes() {
    let config = parse(
        r#"listeners: ["127.0.0.1:6443"]
discovery:
  marathon:
    urls: ["http://marathon.mesos:8080", "http://10.0.0.2:8080/marathon/", "http://[fd00::1]"]
routes:
  - name: web
    server_names: [web.example.com]
    marathon_app: {id: /prod/web/, port_name: https}
  - name: api
    server_names: [api.example.com]
    marathon_app: {id: /api, port_index: 2}
    health_check: false
"#,
    );
    let m = config.discovery.marathon.clone().unwrap();
    assert_eq!(
        m.urls,
        [
            "http://marathon.mesos:8080",
            "http://10.0.0.2:8080/marathon/",
            "http://[fd00::1]"
        ]
    );
    assert_eq!(
        (m.resync, m.stall_timeout, m.required),
        (
            DEFAULT_MARATHON_RESYNC,
            DEFAULT_MARATHON_STALL_TIMEOUT,
            true
        )
    );
    let quick = parse(
        "listeners: [\"127.0.0.1:6443\"]\n\
         discovery: {marathon: {urls: [\"http://m:8080\"], stall_timeout: 30s}}\n\
         routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
    );
    assert_eq!(
        quick.discovery.marathon.unwrap().stall_timeout,
        Duration::from_secs(30)
    );
    let web = &config.routes[0];
    assert!(web.upstreams.is_empty());
    assert_eq!(
        web.marathon_app,
        Some(MarathonApp {
            id: "/prod/web".into(),
            port: MarathonPort::Name("https".into())
        })
    );
    assert_eq!(web.health_check, Some(HealthCheck::default()));
    assert_eq!(
        config.routes[1].marathon_app.as_ref().map(|a| &a.port),
        Some(&MarathonPort::Index(2))
    );
    let other = parse(
        "listeners: [\"127.0.0.1:6443\"]\ndiscovery: {marathon: {urls: [\"http://m:8080\"], resync: 30s, required: false}}\n\
         routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
    );
    let m = other.discovery.marathon.unwrap();
    assert_eq!((m.resync, m.required), (Duration::from_secs(30), false));
    assert_eq!(other.routes[0].marathon_app, None);
    // No discovery section: none configured.
    assert_eq!(parse(SPEC_EXAMPLE).discovery, Discovery::default());
    assert_eq!(m.labels, None, "no label_group: no label routes");
}

#[test]
fn marathon_label_routes() {
    let config = parse(
        r#"listeners: ["127.0.0.1:6443"]
discovery:
  marathon:
    urls: ["http://marathon.mesos:8080"]
    label_group: external
    label_server_names_allowed: ["*.Apps.Example.com", "api.example.com."]
    marathon_lb_labels: true
routes: [{name: a, server_names: [a.test], upstreams: ["10.0.0.1:1"]}]
"#,
    );
    let labels = config.discovery.marathon.unwrap().labels.unwrap();
    assert_eq!(labels.group, "external");
    let allowed: Vec<String> = labels
        .server_names_allowed
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, ["*.apps.example.com", "api.example.com"]);
    assert!(labels.marathon_lb);
    // Defaults: no names allowed, no Marathon-LB labels.
    let config = parse(
        "listeners: [\"127.0.0.1:6443\"]\ndiscovery: {marathon: {urls: [\"http://m:8080\"], label_group: g.1_x-Y}}\n\
         routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
    );
    let labels = config.discovery.marathon.unwrap().labels.unwrap();
    assert_eq!(labels.group, "g.1_x-Y");
    assert!(labels.server_names_allowed.is_empty());
    assert!(!labels.marathon_lb);
}

#[test]
fn bad_marathon_settings_are_pointed_at() {
    const D: &str = "discovery: {marathon: {urls: [\"http://m:8080\"]}}";
    type Case = (
        &'static str,
        &'static str,
        (usize, usize),
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        // (what, yaml after the listeners line, line:column, path, message fragment)
        (
            "a marathon_app route without discovery.marathon",
            "routes:\n  - name: web\n    server_names: [web.test]\n    marathon_app: {id: /web, port_index: 0}",
            (5, 5),
            "routes[0].marathon_app",
            "route `web` takes its endpoints from Marathon, but `discovery.marathon` is not configured",
        ),
        (
            "label_server_names_allowed without label_group",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    label_server_names_allowed: [\"*.apps.test\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 5),
            "discovery.marathon.label_server_names_allowed",
            "`label_server_names_allowed` applies to label-driven routes, which need `label_group`",
        ),
        (
            "marathon_lb_labels without label_group",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    marathon_lb_labels: false\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 5),
            "discovery.marathon.marathon_lb_labels",
            "`marathon_lb_labels` applies to label-driven routes, which need `label_group`",
        ),
        (
            "a label group with a space",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    label_group: \"ext ernal\"\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 18),
            "discovery.marathon.label_group",
            "`ext ernal` is not a label group",
        ),
        (
            "an allowed name that is no name",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    label_group: external\n    label_server_names_allowed: [\"*.*.apps.test\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (6, 34),
            "discovery.marathon.label_server_names_allowed[0]",
            "invalid server name `*.*.apps.test`",
        ),
        (
            "an unknown discovery source",
            "discovery: {consul: {urls: [\"http://consul:8500\"]}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 13),
            "discovery.consul",
            "unknown key `consul`, expected `marathon` or `mesos`",
        ),
        (
            "an https URL without ca_file",
            "discovery: {marathon: {urls: [\"https://leader.mesos/marathon\"]}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 31),
            "discovery.marathon.urls[0]",
            "an https URL needs `ca_file`",
        ),
        (
            "a ca_file without https",
            "discovery: {marathon: {urls: [\"http://m:8080\"], ca_file: /ca.crt}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 49),
            "discovery.marathon.ca_file",
            "ca_file is only used for https URLs",
        ),
        (
            "a missing ca_file",
            "discovery: {marathon: {urls: [\"https://m\"], ca_file: /nonexistent/ca.crt}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 54),
            "discovery.marathon.ca_file",
            "ca_file `/nonexistent/ca.crt`: No such file",
        ),
        (
            "auth without a kind",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    auth: {}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 11),
            "discovery.marathon.auth",
            "auth needs `token_file` or `service_account`",
        ),
        (
            "an unknown auth kind",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    auth: {password: x}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 12),
            "discovery.marathon.auth.password",
            "unknown key `password`, expected `token_file` or `service_account`",
        ),
        (
            "a missing token_file",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    auth: {token_file: /nonexistent/token}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 24),
            "discovery.marathon.auth.token_file",
            "token_file `/nonexistent/token`: No such file",
        ),
        (
            "a service account without login_url",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    auth: {service_account: {uid: sniroute, private_key_file: /k}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 29),
            "discovery.marathon.auth.service_account",
            "missing required key `login_url`",
        ),
        (
            "a missing private key",
            "discovery:\n  marathon:\n    urls: [\"http://m:8080\"]\n    auth: {service_account: {uid: sniroute, private_key_file: /nonexistent/k, login_url: \"http://l/acs\"}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (5, 63),
            "discovery.marathon.auth.service_account.private_key_file",
            "private_key_file `/nonexistent/k`: No such file",
        ),
        (
            "a URL without a scheme",
            "discovery: {marathon: {urls: [\"marathon.mesos:8080\"]}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 31),
            "discovery.marathon.urls[0]",
            "expected an http or https URL",
        ),
        (
            "no URLs",
            "discovery: {marathon: {urls: []}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]",
            (2, 30),
            "discovery.marathon.urls",
            "the list is empty",
        ),
        (
            "both marathon_app and upstreams",
            "routes:\n  - name: web\n    server_names: [web.test]\n    upstreams: [\"10.0.0.1:1\"]\n    marathon_app: {id: /web, port_index: 0}",
            (6, 5),
            "routes[0].marathon_app",
            "has both `marathon_app` and `upstreams`",
        ),
        (
            "both marathon_app and dcos_service",
            "routes:\n  - name: web\n    server_names: [web.test]\n    dcos_service: dev/k\n    marathon_app: {id: /web, port_index: 0}",
            (6, 5),
            "routes[0].marathon_app",
            "has both `marathon_app` and `dcos_service`",
        ),
        (
            "a relative app id",
            "routes:\n  - name: web\n    server_names: [web.test]\n    marathon_app: {id: prod/web, port_index: 0}",
            (5, 24),
            "routes[0].marathon_app.id",
            "is not a Marathon app id",
        ),
        (
            "no port",
            "routes:\n  - name: web\n    server_names: [web.test]\n    marathon_app: {id: /web}",
            (5, 19),
            "routes[0].marathon_app",
            "which port of the app?",
        ),
        (
            "two ports",
            "routes:\n  - name: web\n    server_names: [web.test]\n    marathon_app: {id: /web, port_name: https, port_index: 0}",
            (5, 48),
            "routes[0].marathon_app.port_index",
            "not both",
        ),
        (
            "an unknown key in marathon_app",
            "routes:\n  - name: web\n    server_names: [web.test]\n    marathon_app: {id: /web, port_index: 0, port: 1}",
            (5, 45),
            "routes[0].marathon_app.port",
            "unknown key `port`",
        ),
    ];
    let mut failures = Vec::new();
    for (what, rest, (line, column), path, fragment) in cases {
        let with_discovery = !what.contains("without discovery") && rest.starts_with("routes:");
        let yaml = format!(
            "listeners: [\"127.0.0.1:6443\"]\n{}{rest}\n",
            if with_discovery {
                format!("{D}\n")
            } else {
                String::new()
            }
        );
        let err = Config::from_yaml_str(&yaml, "f.yaml").unwrap_err();
        let (line, column) = if with_discovery {
            (line + 1, *column)
        } else {
            (*line, *column)
        };
        let got = (err.line(), err.column(), err.path());
        if got != (Some(line), Some(column), Some(*path)) || !err.message().contains(fragment) {
            failures.push(format!(
                "{what}: {err}\n  want {line}:{column} {path} {fragment:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn no_input_makes_it_panic() {
    // Every prefix of a full config, and a few hostile shapes.
    for end in 0..=SPEC_EXAMPLE.len() {
        if SPEC_EXAMPLE.is_char_boundary(end) {
            let _ = Config::from_yaml_str(&SPEC_EXAMPLE[..end], "prefix.yaml");
        }
    }
    let deep = format!("listeners: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let hostile = [
        deep.as_str(),
        "a: &a [*a]\n",
        "listeners: *nope\n",
        "? [a, b]\n: c\n",
        "listeners: !!binary AAAA\n",
        "\u{feff}listeners: [\"0.0.0.0:1\"]\nroutes: [{name: a, server_names: [é.test], upstreams: [\"1.1.1.1:1\"]}]\n",
        "listeners: [\"0.0.0.0:1\"]\nroutes: [{name: a, server_names: [\"a\\0.test\"], upstreams: [\"1.1.1.1:1\"]}]\n",
        "listeners: [\"0.0.0.0:1\"]\nroutes: [{name: a, server_names: [a.test], upstreams: [\"1.1.1.1:1\"]}]\ntimeouts: {idle: 99999999999999999999d}\n",
        "\t\t\n",
        "{",
        "}",
        "'",
        "---\n---\n---\n",
    ];
    for text in hostile {
        let err = Config::from_yaml_str(text, "hostile.yaml").unwrap_err();
        assert!(!err.message().is_empty(), "{text:?}");
    }
}

#[test]
fn listeners_accept_proxy_protocol() {
    let routes = "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
    let config = parse(&format!(
        "listeners:\n  - \"0.0.0.0:6443\"\n  - address: \"0.0.0.0:7443\"\n    accept_proxy_protocol: {{from: [10.0.0.0/8, \"::1\"]}}\n  - address: \"0.0.0.0:8443\"\n    accept_proxy_protocol: {{from: [192.0.2.7], required: false}}\n{routes}"
    ));
    let p: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.accept_proxy_protocol.clone())
        .collect();
    assert_eq!(p[0], None);
    let p1 = p[1].as_ref().unwrap();
    assert!(p1.required, "required by default");
    assert_eq!(
        p1.from,
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    );
    assert!(p1.trusts("10.1.2.3".parse().unwrap()));
    assert!(p1.trusts("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!p1.trusts("11.0.0.1".parse().unwrap()));
    let p2 = p[2].as_ref().unwrap();
    assert!(!p2.required);
    assert_eq!(p2.from, vec!["192.0.2.7/32".parse().unwrap()]);

    // Errors: file, line and key.
    for (yaml, line, path, fragment) in [
        (
            "listeners:\n  - address: \"0.0.0.0:6443\"\n    accept_proxy_protocol: {from: []}\n",
            3,
            "listeners[0].accept_proxy_protocol.from",
            "the list is empty",
        ),
        (
            "listeners:\n  - address: \"0.0.0.0:6443\"\n    accept_proxy_protocol: {from: [10.0.0.1/8]}\n",
            3,
            "listeners[0].accept_proxy_protocol.from[0]",
            "did you mean 10.0.0.0/8?",
        ),
        (
            "listeners:\n  - address: \"0.0.0.0:6443\"\n    accept_proxy_protocol: {from: [10.0.0.0/8], required: maybe}\n",
            3,
            "listeners[0].accept_proxy_protocol.required",
            "",
        ),
        (
            "listeners:\n  - address: \"0.0.0.0:6443\"\n    accept_proxy_protocol: {from: [10.0.0.0/8], trusted: true}\n",
            3,
            "listeners[0].accept_proxy_protocol.trusted",
            "unknown key `trusted`",
        ),
        (
            "listeners:\n  - address: \"0.0.0.0:6443\"\n    accept_proxy_protocol: {required: true}\n",
            3,
            "listeners[0].accept_proxy_protocol",
            "from",
        ),
    ] {
        let err = Config::from_yaml_str(&format!("{yaml}{routes}"), "lb.yaml").unwrap_err();
        assert_eq!(err.file(), "lb.yaml");
        assert_eq!(err.line(), Some(line), "{err}");
        assert_eq!(err.path(), Some(path), "{err}");
        assert!(err.message().contains(fragment), "{err}");
    }
}

#[test]
fn mesos_discovery_and_mesos_tasks_routes() {
    let config = parse(
        r#"listeners: ["127.0.0.1:6443"]
discovery:
  mesos:
    urls: ["http://leader.mesos:5050", "http://10.0.0.2:5050"]
    resync: 2m
routes:
  - name: dev-kubernetes01
    server_names: [devkubernetes01.example.com]
    mesos_tasks: {framework: dev/kubernetes01, task_name_pattern: "^kube-control-plane-[0-9]+-instance$", port_name: apiserver}
"#,
    );
    let m = config.discovery.mesos.clone().unwrap();
    assert_eq!(
        m,
        MesosConfig {
            urls: vec![
                "http://leader.mesos:5050".into(),
                "http://10.0.0.2:5050".into()
            ],
            ca_file: None,
            auth: None,
            resync: Duration::from_secs(120),
            required: true,
        }
    );
    assert_eq!(config.discovery.marathon, None);
    let r = &config.routes[0];
    assert!(r.upstreams.is_empty());
    assert_eq!(r.marathon_app, None);
    assert_eq!(
        r.mesos_tasks,
        Some(MesosTasks {
            framework: "dev/kubernetes01".into(),
            task_name_pattern: "^kube-control-plane-[0-9]+-instance$".into(),
            port_name: "apiserver".into(),
        })
    );
    assert_eq!(
        r.mesos_tasks.as_ref().unwrap().to_string(),
        "Mesos tasks of framework dev/kubernetes01 matching `^kube-control-plane-[0-9]+-instance$`, port named apiserver"
    );
    let other = parse(
        "listeners: [\"127.0.0.1:6443\"]\n\
         discovery: {mesos: {urls: [\"http://m:5050\"], required: false}, marathon: {urls: [\"http://m:8080\"]}}\n\
         routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n",
    );
    let m = other.discovery.mesos.unwrap();
    assert_eq!((m.resync, m.required), (DEFAULT_MESOS_RESYNC, false));
    assert!(other.discovery.marathon.is_some());
}

#[test]
fn bad_mesos_settings_are_pointed_at() {
    const D: &str = "discovery: {mesos: {urls: [\"http://m:5050\"]}}";
    const M: &str =
        "mesos_tasks: {framework: dev/k, task_name_pattern: kube, port_name: apiserver}";
    type Case = (
        &'static str,
        String,
        (usize, usize),
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        // (what, yaml after the listeners line, line:column, path, message fragment)
        (
            "a mesos_tasks route without discovery.mesos",
            format!("routes:\n  - name: k\n    server_names: [k.test]\n    {M}"),
            (5, 5),
            "routes[0].mesos_tasks",
            "route `k` takes its endpoints from Mesos tasks, but `discovery.mesos` is not configured",
        ),
        (
            "an https URL without ca_file",
            "discovery: {mesos: {urls: [\"https://leader.mesos/mesos\"]}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]".into(),
            (2, 28),
            "discovery.mesos.urls[0]",
            "an https URL needs `ca_file`",
        ),
        (
            "a ca_file without https",
            "discovery: {mesos: {urls: [\"http://m:5050\"], ca_file: /ca.crt}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]".into(),
            (2, 46),
            "discovery.mesos.ca_file",
            "ca_file is only used for https URLs",
        ),
        (
            "no URLs",
            "discovery: {mesos: {urls: []}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]".into(),
            (2, 27),
            "discovery.mesos.urls",
            "the list is empty",
        ),
        (
            "a zero resync",
            "discovery: {mesos: {urls: [\"http://m:5050\"], resync: 0s}}\nroutes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]".into(),
            (2, 54),
            "discovery.mesos.resync",
            "this duration must be greater than zero",
        ),
        (
            "both mesos_tasks and upstreams",
            format!("routes:\n  - name: k\n    server_names: [k.test]\n    upstreams: [\"10.0.0.1:1\"]\n    {M}"),
            (6, 5),
            "routes[0].mesos_tasks",
            "has both `mesos_tasks` and `upstreams`: a route takes exactly one of `upstreams`, `dcos_service`, `marathon_app` and `mesos_tasks`",
        ),
        (
            "both mesos_tasks and dcos_service",
            format!("routes:\n  - name: k\n    server_names: [k.test]\n    dcos_service: dev/k\n    {M}"),
            (6, 5),
            "routes[0].mesos_tasks",
            "has both `mesos_tasks` and `dcos_service`",
        ),
        (
            "both mesos_tasks and marathon_app",
            format!("routes:\n  - name: k\n    server_names: [k.test]\n    marathon_app: {{id: /k, port_index: 0}}\n    {M}"),
            (6, 5),
            "routes[0].mesos_tasks",
            "has both `mesos_tasks` and `marathon_app`",
        ),
        (
            "a bad regular expression",
            "routes:\n  - name: k\n    server_names: [k.test]\n    mesos_tasks: {framework: dev/k, task_name_pattern: \"kube-(\", port_name: apiserver}".into(),
            (5, 56),
            "routes[0].mesos_tasks.task_name_pattern",
            "`kube-(` is not a regular expression: error: unclosed group",
        ),
        (
            "no port name",
            "routes:\n  - name: k\n    server_names: [k.test]\n    mesos_tasks: {framework: dev/k, task_name_pattern: kube}".into(),
            (5, 18),
            "routes[0].mesos_tasks",
            "missing required key `port_name`",
        ),
        (
            "an empty framework",
            "routes:\n  - name: k\n    server_names: [k.test]\n    mesos_tasks: {framework: \"\", task_name_pattern: kube, port_name: apiserver}".into(),
            (5, 30),
            "routes[0].mesos_tasks.framework",
            "is not a framework name",
        ),
        (
            "an empty port name",
            "routes:\n  - name: k\n    server_names: [k.test]\n    mesos_tasks: {framework: dev/k, task_name_pattern: kube, port_name: \" \"}".into(),
            (5, 73),
            "routes[0].mesos_tasks.port_name",
            "port_name is empty",
        ),
        (
            "an unknown key in mesos_tasks",
            "routes:\n  - name: k\n    server_names: [k.test]\n    mesos_tasks: {framework: dev/k, task_name_pattern: kube, port_name: a, portName: b}".into(),
            (5, 76),
            "routes[0].mesos_tasks.portName",
            "unknown key `portName`",
        ),
    ];
    let mut failures = Vec::new();
    for (what, rest, (line, column), path, fragment) in cases {
        let with_discovery = !what.contains("without discovery") && rest.starts_with("routes:");
        let yaml = format!(
            "listeners: [\"127.0.0.1:6443\"]\n{}{rest}\n",
            if with_discovery {
                format!("{D}\n")
            } else {
                String::new()
            }
        );
        let err = Config::from_yaml_str(&yaml, "f.yaml").unwrap_err();
        let (line, column) = if with_discovery {
            (line + 1, *column)
        } else {
            (*line, *column)
        };
        let got = (err.line(), err.column(), err.path());
        if got != (Some(line), Some(column), Some(*path)) || !err.message().contains(fragment) {
            failures.push(format!(
                "{what}: {err}\n  want {line}:{column} {path} {fragment:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `health_check` with `kind: https|kubernetes`: defaults, the files it
/// reads, and each mistake reported at its file, line and key.
#[test]
fn https_and_kubernetes_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    // The PEM reader checks the armour and base64, not the DER inside.
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "abc\n").unwrap();
    let (ca, key, not_pem, token) = (
        ca.display(),
        key.display(),
        not_pem.display(),
        token.display(),
    );
    let route = |hc: &str| {
        format!(
            "listeners: [\"0.0.0.0:6443\"]\nroutes:\n  - name: a\n    server_names: [a.test]\n    upstreams: [\"10.0.0.1:6443\"]\n    health_check:\n{hc}"
        )
    };

    // Kubernetes: /readyz, [200], the CA file as given.
    let config = Config::from_yaml_str(
        &route(&format!("      kind: kubernetes\n      server_name: api.a.test\n      ca_file: {ca}\n      client_certificate: {ca}\n      client_key: {key}\n")),
        "x.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hc = config.routes[0].health_check.clone().unwrap();
    let CheckKind::Kubernetes(https) = &hc.kind else {
        panic!("{hc:?}")
    };
    assert_eq!(https.path, "/readyz");
    assert_eq!(https.server_name.as_str(), "api.a.test");
    assert_eq!(https.expect_status, [200]);
    assert!(matches!(
        https.auth,
        Some(CheckAuth::ClientCertificate { .. })
    ));
    assert_eq!(
        config.routes[0].outlier_detection,
        Some(OutlierDetection::default())
    );
    let table = render(&config);
    assert!(
        table.contains(&format!(
            "    check request:  kubernetes GET /readyz for api.a.test (CA {ca})"
        )),
        "{table}"
    );

    // A DC/OS service defaults the name to its VIP.
    let config = Config::from_yaml_str(
        &format!("listeners: [\"0.0.0.0:6443\"]\nroutes:\n  - name: a\n    server_names: [a.test]\n    dcos_service: dev/kubernetes01\n    health_check: {{kind: kubernetes, ca_file: {ca}, token_file: {token}}}\n    outlier_detection: {{consecutive_failures: 5, base_ejection: 1s, max_ejected_percent: 100}}\n"),
        "x.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hc = config.routes[0].health_check.clone().unwrap();
    assert_eq!(
        hc.kind.https().unwrap().server_name.as_str(),
        "apiserver.devkubernetes01.l4lb.thisdcos.directory"
    );
    assert_eq!(
        config.routes[0].outlier_detection,
        Some(OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejected_percent: 100
        })
    );

    // https: path and statuses as given; insecure needs no CA.
    let config = Config::from_yaml_str(
        &route("      kind: https\n      path: /healthz\n      server_name: a.test\n      insecure_skip_verify: true\n      expect_status: [200, 204]\n"),
        "x.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hc = config.routes[0].health_check.clone().unwrap();
    let CheckKind::Https(https) = &hc.kind else {
        panic!("{hc:?}")
    };
    assert_eq!(
        (
            https.path.as_str(),
            https.expect_status.as_slice(),
            https.ca_file.is_none()
        ),
        ("/healthz", &[200, 204][..], true)
    );

    let bad = [
        ("      kind: kubernetes\n      ca_file: /nonexistent/ca.pem\n      server_name: a.test\n", 8, "routes[0].health_check.ca_file", "cannot read ca_file `/nonexistent/ca.pem`"),
        (&format!("      kind: kubernetes\n      server_name: a.test\n      ca_file: {not_pem}\n") as &str, 9, "routes[0].health_check.ca_file", "holds no certificate"),
        (&format!("      kind: kubernetes\n      ca_file: {ca}\n") as &str, 6, "routes[0].health_check", "needs `server_name`"),
        ("      kind: https\n      server_name: a.test\n", 6, "routes[0].health_check", "needs `ca_file`"),
        ("      server_name: a.test\n", 7, "routes[0].health_check.server_name", "this one is a TCP check"),
        (&format!("      kind: kubernetes\n      path: /livez\n      server_name: a.test\n      ca_file: {ca}\n") as &str, 8, "routes[0].health_check.path", "always requests /readyz"),
        (&format!("      kind: https\n      server_name: a.test\n      ca_file: {ca}\n      client_certificate: {ca}\n") as &str, 10, "routes[0].health_check.client_certificate", "needs `client_key`"),
        (&format!("      kind: https\n      server_name: a.test\n      ca_file: {ca}\n      client_certificate: {ca}\n      client_key: {not_pem}\n") as &str, 11, "routes[0].health_check.client_key", "no usable PEM private key"),
        (&format!("      kind: https\n      server_name: a.test\n      ca_file: {ca}\n      expect_status: [200, 700]\n") as &str, 10, "routes[0].health_check.expect_status[1]", "not an HTTP status"),
        ("      kind: tls\n", 7, "routes[0].health_check.kind", "unknown variant `tls`"),
        ("      kind: https\n      server_name: 10.0.0.1\n", 8, "routes[0].health_check.server_name", "invalid server name"),
        (&format!("      kind: https\n      server_name: a.test\n      insecure_skip_verify: true\n      token_file: {token}\n") as &str, 10, "routes[0].health_check.token_file", "would send the token to any server"),
    ];
    for (hc, line, path, fragment) in bad {
        let err = Config::from_yaml_str(&route(hc), "x.yaml").unwrap_err();
        assert_eq!(
            (err.line(), err.path(), err.message().contains(fragment)),
            (Some(line), Some(path), true),
            "{hc}: {err}"
        );
    }
    let err = Config::from_yaml_str(
        &format!(
            "{}    outlier_detection: {{consecutive_failures: 1}}\n",
            route("      interval: 1s\n")
        ),
        "x.yaml",
    )
    .unwrap_err();
    assert_eq!(
        err.path(),
        Some("routes[0].outlier_detection.consecutive_failures"),
        "{err}"
    );
    assert!(err.message().contains("at least 2"), "{err}");
}

/// A CA certificate (public, self-signed, P-256), as a `ca_file` holds.
pub(crate) const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIUCgH43mJq/UiueAeIKc8BFao5xPUwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQc25pcm91dGUgdGVzdCBDQTAgFw0yNjExMjkxOTMxMzNaGA8y
MTI2MTEwNTE5MzEzM1owGzEZMBcGA1UEAwwQc25pcm91dGUgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABLbuazMhSFvUfI5ps7DNFzp9GfKUo9sLFPne
LvbcoovliVLr13/4+z1WQDRTRQd1+S5vBNj0nSDBEpLq0wCLPXijUzBRMB0GA1Ud
DgQWBBTYFXrK087jncqnxYjKu3anVooLizAfBgNVHSMEGDAWgBTYFXrK087jncqn
xYjKu3anVooLizAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCICj0
UDp4HP1M27PJaTluNR9TFAa50EWfpAMBkVPg4eMnAiEArGvoOCWavj8DtIjHHpvD
0V2I6w/lS2L/YLN4gg3rgDA=
-----END CERTIFICATE-----
";

#[test]
fn marathon_https_ca_file_and_auth_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("dcos-ca.crt");
    std::fs::write(&ca, CA_PEM).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "abc\n").unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let not_pem = dir.path().join("not-pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let route = "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
    let yaml = |marathon: &str| {
        format!("listeners: [\"127.0.0.1:6443\"]\ndiscovery:\n  marathon:\n{marathon}{route}")
    };

    let config = parse(&yaml(&format!(
        "    urls: [\"https://leader.mesos/marathon\"]\n    ca_file: {}\n    auth: {{token_file: {}}}\n",
        ca.display(),
        token.display()
    )));
    let m = config.discovery.marathon.unwrap();
    assert_eq!(m.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(m.auth, Some(DiscoveryAuth::TokenFile(token.clone())));

    let config = parse(&yaml(&format!(
        "    urls: [\"http://marathon.mesos:8080\"]\n    ca_file: {}\n    auth:\n      service_account:\n        uid: sniroute\n        private_key_file: {}\n        login_url: https://leader.mesos/acs/api/v1/auth/login\n",
        ca.display(),
        key.display()
    )));
    assert_eq!(
        config.discovery.marathon.unwrap().auth,
        Some(DiscoveryAuth::ServiceAccount {
            uid: "sniroute".into(),
            private_key_file: key.clone(),
            login_url: "https://leader.mesos/acs/api/v1/auth/login".into(),
        })
    );

    // (marathon section, line, path, message fragment)
    let bad = [
        (
            format!("    urls: [\"https://m\"]\n    ca_file: {}\n", not_pem.display()),
            5,
            "discovery.marathon.ca_file",
            "no certificate (`BEGIN CERTIFICATE` block) in it",
        ),
        (
            format!(
                "    urls: [\"https://m\"]\n    ca_file: {}\n",
                dir.path().display()
            ),
            5,
            "discovery.marathon.ca_file",
            "not a regular file",
        ),
        (
            format!(
                "    urls: [\"http://m\"]\n    auth: {{service_account: {{uid: s, private_key_file: {}, login_url: \"https://l/acs/api/v1/auth/login\"}}}}\n",
                key.display()
            ),
            5,
            "discovery.marathon.auth.service_account.login_url",
            "an https URL needs `ca_file`",
        ),
        (
            format!(
                "    urls: [\"http://m\"]\n    auth: {{service_account: {{uid: s, private_key_file: {}, login_url: \"http://l/acs\"}}}}\n",
                not_pem.display()
            ),
            5,
            "discovery.marathon.auth.service_account.private_key_file",
            "holds no RSA private key in PEM",
        ),
        (
            format!(
                "    urls: [\"http://m\"]\n    auth: {{token_file: {}, service_account: {{uid: s, private_key_file: {}, login_url: \"http://l/acs\"}}}}\n",
                token.display(),
                key.display()
            ),
            5,
            "discovery.marathon.auth.service_account",
            "not both",
        ),
    ];
    for (marathon, line, path, fragment) in bad {
        let e = Config::from_yaml_str(&yaml(&marathon), "f.yaml").unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("f.yaml:{line}:")) && shown.contains(fragment),
            "{marathon}: {shown}"
        );
        assert!(
            shown.contains(&format!("(at {path})")),
            "{marathon}: {shown}"
        );
    }
}
