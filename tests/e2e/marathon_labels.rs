//! Label-driven routes end to end: the real binary follows the fake
//! Marathon of [`crate::marathon`] (Marathon's REST API v2: the app list
//! with `labels` and `versionInfo`, and the event stream), and apps'
//! `SNIROUTE_*` (or Marathon-LB's `HAPROXY_*`) labels become routes.
//!
//! Label changes reach Marathon as `PUT /v2/apps/...`, which it announces
//! with an `api_post_event` on the event stream; the fake sends the same.
//! Tests wait for `/status` to show a change, never for a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{metric, reach, Router};
use crate::marathon::FakeMarathon;
use clienthello::synth::HelloBuilder;
use demo::{https_get, Ca, TlsUpstream, UpstreamOptions};

/// An app with host networking, one port (`https`), one running task
/// listening on `port` of 127.0.0.1, `labels`, and its configuration last
/// changed at `changed`.
pub(crate) fn app(id: &str, changed: &str, port: u16, labels: Value) -> Value {
    let task = id.trim_start_matches('/').replace('/', "_");
    json!({
        "id": id,
        "instances": 1,
        "cpus": 0.1,
        "mem": 64,
        "networks": [{"mode": "host"}],
        "container": null,
        "labels": labels,
        "versionInfo": {"lastScalingAt": "2025-06-01T00:00:00.000Z", "lastConfigChangeAt": changed},
        "version": "2025-06-01T00:00:00.000Z",
        "portDefinitions": [{"port": 10000, "protocol": "tcp", "name": "https", "labels": {}}],
        "healthChecks": [],
        "readinessChecks": [],
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

fn apps(list: Vec<Value>) -> Value {
    json!({ "apps": list })
}

/// Marathon's announcement of an app definition change.
fn announce(marathon: &FakeMarathon, id: &str) {
    marathon.emit(
        "api_post_event",
        json!({"clientIp": "10.0.0.9", "uri": format!("/v2/apps{id}"),
               "appDefinition": {"id": id}}),
    );
}

/// A router following `marathon` with label routes of group `external`
/// allowed under `*.apps.test`, `extra` more lines under
/// `discovery.marathon`, and `routes` (YAML list items) as static routes.
fn router(marathon: &FakeMarathon, extra: &str, routes: &str) -> Router {
    Router::start(&config(marathon, extra, routes))
}

/// The config [`router`] starts with.
fn config(marathon: &FakeMarathon, extra: &str, routes: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 2s, connect: 2s}}
discovery:
  marathon:
    urls: ["{}"]
    label_group: external
    label_server_names_allowed: ["*.apps.test"]
{extra}
routes:
{routes}
"#,
        marathon.url()
    )
}

const STATIC_ROUTE: &str =
    "  - {name: fixed, server_names: [fixed.test], upstreams: [\"127.0.0.1:9\"]}";

fn status(router: &Router) -> Value {
    serde_json::from_str(&router.admin_get("/status").1).unwrap()
}

/// `/status`'s label section.
fn labels(router: &Router) -> Value {
    status(router)["discovery"]["marathon"]["labels"].clone()
}

/// The label routes on `/status`: name → server names.
fn label_routes(router: &Router) -> Vec<(String, Vec<String>)> {
    let l = labels(router);
    l["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let names = r["server_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect();
            (r["name"].as_str().unwrap().to_owned(), names)
        })
        .collect()
}

/// Polls `check` on `/status` until it holds, at most `within`.
fn wait_until(router: &Router, within: Duration, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let s = status(router);
        if check(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; /status: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_label_route(s: &Value, name: &str) -> bool {
    s["discovery"]["marathon"]["labels"]["routes"]
        .as_array()
        .is_some_and(|r| {
            r.iter()
                .any(|r| r["name"] == name && !r["endpoints"].as_array().unwrap().is_empty())
        })
}

fn synced(s: &Value) -> bool {
    s["discovery"]["marathon"]["synced"] == true
}

/// The issues on `/status`: (kind, route, message).
fn issues(router: &Router) -> Vec<(String, String, String)> {
    labels(router)["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["route"].as_str().unwrap_or("-").to_owned(),
                i["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn counter(router: &Router, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = router.metrics();
    metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in {text}"))
}

/// Connects through the router to `name` and returns the stream once the
/// raw echo upstream has sent the hello back.
fn open_echo_tunnel(router: SocketAddr, name: &str) -> TcpStream {
    let hello = HelloBuilder::new(name).build();
    let mut s = TcpStream::connect_timeout(&router, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, hello);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_route_appears_serves_tls_and_goes_without_a_new_generation() {
    let _turn = crate::common::light();
    let ca = Ca::new("sniroute label test CA");
    let api = TlsUpstream::start(
        "127.0.0.1:0".parse().unwrap(),
        UpstreamOptions::new("api", ca.server_identity(&["api.apps.test"])),
    )
    .await
    .unwrap();
    let echo = Upstream::start("echo", Behaviour::Echo);
    let port = api.addr.port();
    let unlabelled = apps(vec![
        app("/team/api", "2025-01-01T00:00:00.000Z", port, json!({})),
        app(
            "/team/echo",
            "2025-01-01T00:00:00.000Z",
            echo.addr.port(),
            json!({}),
        ),
    ]);
    let marathon = FakeMarathon::leader(unlabelled.clone());
    let r = router(&marathon, "", STATIC_ROUTE);
    wait_until(&r, Duration::from_secs(20), "the first sync", synced);
    assert!(label_routes(&r).is_empty());
    let client = Arc::new(ca.client_config(None));
    assert!(
        https_get(r.addr(), "api.apps.test", client.clone(), "/")
            .await
            .is_err(),
        "no route yet"
    );

    // The labels are added: the routes appear within 2 s of the event.
    marathon.set_apps(apps(vec![
        app(
            "/team/api",
            "2025-01-01T00:00:00.000Z",
            port,
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "api.apps.test"}),
        ),
        app(
            "/team/echo",
            "2025-01-01T00:00:00.000Z",
            echo.addr.port(),
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "echo.apps.test",
            "SNIROUTE_0_BALANCE": "round_robin"}),
        ),
    ]));
    let event = Instant::now();
    announce(&marathon, "/team/api");
    wait_until(
        &r,
        Duration::from_secs(2),
        "label routes within 2 s of the event",
        |s| has_label_route(s, "team-api-0") && has_label_route(s, "team-echo-0"),
    );
    let took = event.elapsed();
    assert_eq!(
        label_routes(&r),
        [
            ("team-api-0".to_owned(), vec!["api.apps.test".to_owned()]),
            ("team-echo-0".to_owned(), vec!["echo.apps.test".to_owned()]),
        ]
    );
    // Real TLS, verified against the upstream's certificate.
    let resp = https_get(r.addr(), "api.apps.test", client.clone(), "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.body.contains("hello from api: sni=api.apps.test"),
        "{}",
        resp.body
    );
    let l = labels(&r);
    let route = &l["routes"][0];
    assert_eq!(route["app_id"], "/team/api");
    assert_eq!(route["endpoints"][0]["address"], api.addr.to_string());
    assert_eq!(l["routes"][1]["balance"], "round_robin");
    // Counted under the label route's name once the connection is over
    // (the client may see the response before the router sees the close).
    let forwarded = [
        ("listener", "127.0.0.1:0"),
        ("route", "team-api-0"),
        ("result", "forwarded"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = r.metrics();
        match metric(&text, "sniroute_connections_total", &forwarded) {
            Some(1.0) => break,
            n => assert!(Instant::now() < deadline, "{n:?}: {text}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A tunnel through the other label route, open while it goes.
    let mut tunnel = tokio::task::block_in_place(|| open_echo_tunnel(r.addr(), "echo.apps.test"));

    // The labels are removed: the routes go; the tunnel stays.
    marathon.set_apps(unlabelled);
    announce(&marathon, "/team/api");
    wait_until(
        &r,
        Duration::from_secs(2),
        "label routes gone within 2 s of the event",
        |s| {
            s["discovery"]["marathon"]["labels"]["routes"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    assert!(
        https_get(r.addr(), "api.apps.test", client, "/")
            .await
            .is_err(),
        "route gone"
    );
    tokio::task::block_in_place(|| {
        tunnel.write_all(b"still there?").unwrap();
        let mut back = [0u8; 12];
        tunnel.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still there?");
    });
    // No config generation came and went: discovery is no reload.
    let s = status(&r);
    assert_eq!(s["config_generation"], 1, "{s}");
    assert_eq!(counter(&r, "sniroute_config_generation", &[]), 1.0);
    assert!(issues(&r).is_empty(), "{:?}", issues(&r));
    eprintln!("label route in force {took:?} after its event");
}

#[test]
fn names_outside_the_allow_list_and_malformed_labels_are_refused_and_shown_once() {
    let _turn = crate::common::light();
    let up = Upstream::start("up", Behaviour::Greet);
    let port = up.addr.port();
    let marathon = FakeMarathon::leader(apps(vec![
        app(
            "/bank",
            "2025-01-01T00:00:00.000Z",
            port,
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "ok.apps.test,bank.example.com"}),
        ),
        app(
            "/k8s",
            "2025-01-01T00:00:00.000Z",
            port,
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "*.k8s.apps.test",
            "SNIROUTE_0_HEALTH_CHECK": "kubernetes"}),
        ),
        app(
            "/fine",
            "2025-01-01T00:00:00.000Z",
            port,
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "fine.apps.test",
            "SNIROUTE_0_HEALTH_CHECK": "tcp"}),
        ),
    ]));
    let r = router(&marathon, "", STATIC_ROUTE);
    wait_until(&r, Duration::from_secs(20), "the first sync", |s| {
        has_label_route(s, "fine-0")
    });
    assert_eq!(
        label_routes(&r),
        [("fine-0".to_owned(), vec!["fine.apps.test".to_owned()])]
    );
    let got = issues(&r);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("not_allowed", "bank-0")
    );
    assert!(
        got[0].2.contains(
            "bank.example.com outside discovery.marathon.label_server_names_allowed (*.apps.test)"
        ),
        "{}",
        got[0].2
    );
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        ("malformed", "k8s-0")
    );
    assert!(
        got[1]
            .2
            .contains("`kubernetes` checks send the route's first exact server name"),
        "{}",
        got[1].2
    );
    assert_eq!(labels(&r)["routes"][0]["health_checked"], true);
    // Refused routes claim nothing: their names have no route.
    let refused = crate::common::answer(r.addr(), &HelloBuilder::new("ok.apps.test").build());
    assert_eq!(
        refused,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70],
        "unrecognized_name"
    );
    assert_eq!(
        reach(r.addr(), &HelloBuilder::new("fine.apps.test").build()).unwrap(),
        "up"
    );
    let errors = |reason| {
        counter(
            &r,
            "sniroute_discovery_label_errors_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((errors("not_allowed"), errors("malformed")), (1.0, 1.0));
    r.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "label route refused"
            && l["kind"] == "not_allowed"
            && l["route"] == "bank-0"
    });

    // Syncs that change nothing count nothing again; a new error counts.
    let (syncs, _, _) = marathon.counts();
    announce(&marathon, "/bank");
    let deadline = Instant::now() + Duration::from_secs(10);
    while marathon.counts().0 == syncs {
        assert!(Instant::now() < deadline, "no sync after the event");
        std::thread::sleep(Duration::from_millis(10));
    }
    marathon.set_apps(apps(vec![
        app("/bank", "2025-01-01T00:00:00.000Z", port, json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "ok.apps.test,bank.example.com"})),
        app("/k8s", "2025-01-01T00:00:00.000Z", port, json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "*.k8s.apps.test",
            "SNIROUTE_0_HEALTH_CHECK": "kubernetes"})),
        app("/fine", "2025-01-01T00:00:00.000Z", port, json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "fine.apps.test",
            "SNIROUTE_0_BALANCE": "fastest"})),
    ]));
    announce(&marathon, "/fine");
    wait_until(&r, Duration::from_secs(10), "fine-0 refused", |s| {
        s["discovery"]["marathon"]["labels"]["routes"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert_eq!((errors("not_allowed"), errors("malformed")), (1.0, 2.0));
    assert_eq!(issues(&r).len(), 3);
    // The status page has the sections that show them.
    let (_, page) = r.admin_get("/");
    assert!(page.contains("id=\"label-issues\"") && page.contains("id=\"label-routes\""));
}

#[test]
fn every_kind_of_conflict_is_decided_counted_and_shown() {
    let _turn = crate::common::light();
    let ups: Vec<Upstream> = ["static-exact", "static-wild", "old", "new"]
        .into_iter()
        .map(|n| Upstream::start(n, Behaviour::Greet))
        .collect();
    let port = |i: usize| ups[i].addr.port();
    // The newer app is listed first: Marathon's order does not matter.
    let marathon = FakeMarathon::leader(apps(vec![
        app(
            "/new",
            "2025-03-01T00:00:00.000Z",
            port(3),
            json!({
            "SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "shared.apps.test,new.apps.test"}),
        ),
        app(
            "/old",
            "2024-03-01T00:00:00.000Z",
            port(2),
            json!({
            "SNIROUTE_GROUP": "external",
            "SNIROUTE_0_SERVER_NAMES": "shared.apps.test,taken.apps.test,mine.apps.test"}),
        ),
    ]));
    let routes = format!(
        "  - {{name: s-exact, server_names: [taken.apps.test], upstreams: [\"{}\"]}}\n  - {{name: s-wild, server_names: [\"*.apps.test\"], upstreams: [\"{}\"]}}",
        ups[0].addr, ups[1].addr
    );
    let r = router(&marathon, "", &routes);
    wait_until(&r, Duration::from_secs(20), "the label routes", |s| {
        has_label_route(s, "old-0") && has_label_route(s, "new-0")
    });
    assert_eq!(
        label_routes(&r),
        [
            ("new-0".to_owned(), vec!["new.apps.test".to_owned()]),
            (
                "old-0".to_owned(),
                vec!["shared.apps.test".to_owned(), "mine.apps.test".to_owned()]
            ),
        ]
    );
    let via = |name: &str| reach(r.addr(), &HelloBuilder::new(name).build()).unwrap();
    assert_eq!(via("taken.apps.test"), "static-exact", "static beats label");
    assert_eq!(
        via("shared.apps.test"),
        "old",
        "the older app configuration keeps it"
    );
    assert_eq!(
        via("mine.apps.test"),
        "old",
        "an exact label name beats a static wildcard"
    );
    assert_eq!(via("new.apps.test"), "new");
    assert_eq!(via("other.apps.test"), "static-wild");
    let got = issues(&r);
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|(k, route, _)| (k.as_str(), route.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("older_label", "new-0"),
            ("static_over_label", "old-0"),
            ("exact_over_wildcard", "new-0"),
            ("exact_over_wildcard", "old-0"),
            ("exact_over_wildcard", "old-0"),
        ],
        "{got:?}"
    );
    assert!(got[0].2.contains("`shared.apps.test` is kept by route old-0 (app /old, configuration changed 2024-03-01T00:00:00.000Z)"), "{}", got[0].2);
    assert!(
        got[1]
            .2
            .contains("`taken.apps.test` is kept by static route s-exact"),
        "{}",
        got[1].2
    );
    let conflicts = |kind| counter(&r, "sniroute_discovery_conflicts_total", &[("kind", kind)]);
    assert_eq!(
        (
            conflicts("older_label"),
            conflicts("static_over_label"),
            conflicts("exact_over_wildcard")
        ),
        (1.0, 1.0, 3.0)
    );
    r.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "label route conflict"
            && l["kind"] == "older_label"
            && l["route"] == "new-0"
    });
    let logged = r
        .logs()
        .iter()
        .filter(|l| l["message"] == "label route conflict")
        .count();
    assert_eq!(logged, 5, "each conflict logged once");
}

#[test]
fn marathon_lb_labels_route_tcp_apps_only() {
    let _turn = crate::common::light();
    let tcp = Upstream::start("tcp", Behaviour::Greet);
    let http = Upstream::start("http", Behaviour::Greet);
    let marathon = FakeMarathon::leader(apps(vec![
        app(
            "/lb/tcp",
            "2025-01-01T00:00:00.000Z",
            tcp.addr.port(),
            json!({
            "HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "tcp.apps.test", "HAPROXY_0_MODE": "tcp"}),
        ),
        app(
            "/lb/http",
            "2025-01-01T00:00:00.000Z",
            http.addr.port(),
            json!({
            "HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "http.apps.test", "HAPROXY_0_MODE": "http"}),
        ),
    ]));
    let r = router(&marathon, "    marathon_lb_labels: true", STATIC_ROUTE);
    wait_until(&r, Duration::from_secs(20), "the tcp app's route", |s| {
        has_label_route(s, "lb-tcp-0")
    });
    assert_eq!(
        label_routes(&r),
        [("lb-tcp-0".to_owned(), vec!["tcp.apps.test".to_owned()])]
    );
    assert_eq!(labels(&r)["routes"][0]["from_marathon_lb_labels"], true);
    assert_eq!(labels(&r)["marathon_lb_labels"], true);
    assert_eq!(
        reach(r.addr(), &HelloBuilder::new("tcp.apps.test").build()).unwrap(),
        "tcp"
    );
    // The HTTP app's traffic was HAProxy's to terminate: no route.
    let refused = crate::common::answer(r.addr(), &HelloBuilder::new("http.apps.test").build());
    assert_eq!(
        refused,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70],
        "unrecognized_name"
    );
    assert!(issues(&r).is_empty());
}

#[test]
fn a_reload_settles_label_routes_against_the_new_static_routes() {
    let _turn = crate::common::light();
    let label = Upstream::start("label", Behaviour::Greet);
    let taker = Upstream::start("taker", Behaviour::Greet);
    let marathon = FakeMarathon::leader(apps(vec![app(
        "/team/api",
        "2025-01-01T00:00:00.000Z",
        label.addr.port(),
        json!({"SNIROUTE_GROUP": "external", "SNIROUTE_0_SERVER_NAMES": "api.apps.test,x.apps.test"}),
    )]));
    let r = router(&marathon, "", STATIC_ROUTE);
    wait_until(&r, Duration::from_secs(20), "the label route", |s| {
        has_label_route(s, "team-api-0")
    });
    let via = |name: &str| reach(r.addr(), &HelloBuilder::new(name).build()).unwrap();
    assert_eq!(via("x.apps.test"), "label");
    let conflicts = || {
        counter(
            &r,
            "sniroute_discovery_conflicts_total",
            &[("kind", "static_over_label")],
        )
    };
    assert_eq!(conflicts(), 0.0);

    // A reload adds a static route for one of the label route's names: the
    // new generation takes it at once, from the last app list (no sync).
    let syncs = marathon.counts().0;
    let routes = format!(
        "{STATIC_ROUTE}\n  - {{name: taker, server_names: [x.apps.test], upstreams: [\"{}\"]}}",
        taker.addr
    );
    let reloaded = r.reload(&config(&marathon, "", &routes));
    assert_eq!(reloaded["message"], "config reloaded", "{reloaded}");
    assert_eq!(status(&r)["config_generation"], 2);
    assert_eq!(
        label_routes(&r),
        [("team-api-0".to_owned(), vec!["api.apps.test".to_owned()])]
    );
    assert_eq!(
        via("x.apps.test"),
        "taker",
        "a static route beats a label route"
    );
    assert_eq!(via("api.apps.test"), "label");
    let got = issues(&r);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("static_over_label", "team-api-0")
    );
    assert_eq!(conflicts(), 1.0);
    assert_eq!(marathon.counts().0, syncs, "settled from the last app list");
}
