//! Operations: metrics as Prometheus sees them, the admin endpoint, live
//! reload and graceful drain, all on the real binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{http_get, metric, reach, Router};
use clienthello::synth::HelloBuilder;

fn two_routes(a: SocketAddr, b: Option<SocketAddr>) -> String {
    let mut yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 1s, connect: 1s, drain: 3s}}
routes:
  - name: alpha
    server_names: [alpha.test]
    upstreams: ["{a}"]
"#
    );
    if let Some(b) = b {
        yaml.push_str(&format!(
            "  - name: beta\n    server_names: [beta.test]\n    upstreams: [\"{b}\"]\n"
        ));
    }
    yaml
}

fn promtool() -> &'static str {
    if Command::new("promtool").arg("--version").output().is_err() {
        panic!("promtool not found: install the Debian package `prometheus` (bash .ci/run does)");
    }
    "promtool"
}

#[test]
fn admin_endpoints_answer() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&two_routes(up.addr, None));
    assert_eq!(router.admin_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(router.admin_get("/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(router.admin_get("/nope").0, 404);
    let (status, body) = router.admin_get("/status");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["config_generation"], 1);
    assert_eq!(status["routes"][0]["name"], "alpha");
    assert_eq!(status["routes"][0]["server_names"][0], "alpha.test");
    assert_eq!(
        status["routes"][0]["endpoints"][0]["address"],
        up.addr.to_string()
    );
    assert_eq!(status["routes"][0]["endpoints"][0]["healthy"], true);
    let (status, page) = router.admin_get("/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
    // Self-contained: no external scripts, styles or fonts.
    assert!(!page.contains("http://") && !page.contains("https://"));
}

#[test]
fn metrics_count_known_traffic_and_pass_promtool() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Echo);
    let router = Router::start(&two_routes(up.addr, None));
    let addr = router.addr();
    let hello = HelloBuilder::new("alpha.test").build();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        s.write_all(&[7u8; 1000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), hello.len() + 1000);
    }
    let _ = crate::common::answer(addr, &HelloBuilder::new("unknown.test").build());
    let _ = crate::common::answer(addr, b"GET / HTTP/1.0\r\n\r\n");
    router.wait_access_logs(5, Duration::from_secs(5));

    let m = router.metrics();
    let conn = |route: &str, result: &str| crate::common::connections_total(&m, route, result);
    assert_eq!(conn("alpha", "forwarded"), Some(3.0));
    assert_eq!(conn("none", "no_route"), Some(1.0));
    assert_eq!(conn("none", "not_tls"), Some(1.0));
    let sent = (3 * (hello.len() + 1000)) as f64;
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "alpha"), ("direction", "client_to_upstream")]
        ),
        Some(sent)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "alpha"), ("direction", "upstream_to_client")]
        ),
        Some(sent)
    );
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "alpha")]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_tunnel_duration_seconds_count",
            &[("route", "alpha")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_upstream_connect_seconds_count",
            &[("route", "alpha")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "sniroute_client_hello_bytes_count", &[]),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_upstream_healthy",
            &[("route", "alpha"), ("upstream", &up.addr.to_string())]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "sniroute_config_generation", &[]), Some(1.0));
    assert_eq!(metric(&m, "sniroute_tunnels_on_old_config", &[]), Some(0.0));
    assert_eq!(
        metric(
            &m,
            "sniroute_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // Client-controlled strings never become labels.
    assert!(!m.contains("unknown.test"));

    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_the_router() {
    let _turn = crate::common::light();
    let prometheus = match Command::new("prometheus").arg("--version").output() {
        Ok(_) => "prometheus",
        Err(_) => panic!(
            "prometheus not found: install the Debian package `prometheus` (bash .ci/run does)"
        ),
    };
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&two_routes(up.addr, None));
    assert_eq!(
        reach(router.addr(), &HelloBuilder::new("alpha.test").build()).unwrap(),
        "a"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: sniroute\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            router.admin.unwrap()
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = "/api/v1/query?query=sniroute_connections_total%7Broute%3D%22alpha%22%2Cresult%3D%22forwarded%22%7D";
    loop {
        let ok = std::panic::catch_unwind(|| {
            let (_, targets) = http_get(api, "/api/v1/targets");
            let (_, value) = http_get(api, query);
            (targets, value)
        });
        if let Ok((targets, value)) = ok {
            let t: serde_json::Value = serde_json::from_str(&targets).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&value).unwrap_or_default();
            let up = t["data"]["activeTargets"][0]["health"] == "up";
            let sample = v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned);
            if up && sample.as_deref() == Some("1") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape sniroute within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_route_while_a_tunnel_keeps_streaming() {
    let _turn = crate::common::light();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a", Behaviour::Echo);
    let b = Upstream::start("b", Behaviour::Greet);
    let router = Router::start(&two_routes(a.addr, None));
    let addr = router.addr();

    // A streaming tunnel on the first config.
    let mut tunnel = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hello = HelloBuilder::new("alpha.test").build();
    tunnel.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tunnel.read_exact(&mut back).await.unwrap();

    // beta is unknown before the reload.
    let beta = HelloBuilder::new("beta.test").build();
    assert_eq!(crate::common::answer(addr, &beta), [21, 3, 3, 0, 2, 2, 112]);

    let log = router.reload(&two_routes(a.addr, Some(b.addr)));
    assert_eq!(log["message"], "config reloaded", "{log}");
    assert_eq!(reach(addr, &beta).unwrap(), "b");

    // The old tunnel still flows, counted as on the old config.
    for i in 0..20u8 {
        tunnel.write_all(&[i; 100]).await.unwrap();
        let mut got = [0u8; 100];
        tunnel.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [i; 100]);
    }
    let m = router.metrics();
    assert_eq!(metric(&m, "sniroute_config_generation", &[]), Some(2.0));
    assert_eq!(metric(&m, "sniroute_tunnels_on_old_config", &[]), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );

    // A broken file changes nothing and is counted.
    let log =
        router.reload("listeners: [\"127.0.0.1:0\"]\nroutes:\n  - name: x\n    bogus_key: 1\n");
    let msg = log["error"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("sniroute.yaml:4:"), "{log}");
    assert!(msg.contains("bogus_key"), "{log}");
    assert_eq!(reach(addr, &beta).unwrap(), "b");
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "sniroute_config_generation", &[]), Some(2.0));
    drop(tunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnels_and_refuses_new_ones() {
    let _turn = crate::common::light();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a", Behaviour::Echo);
    let mut router = Router::start(&two_routes(a.addr, None));
    let addr = router.addr();
    let admin = router.admin.unwrap();

    let mut tunnel = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hello = HelloBuilder::new("alpha.test").build();
    tunnel.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tunnel.read_exact(&mut back).await.unwrap();

    router.signal("TERM");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))
    });
    // Not ready any more, but the admin endpoint still answers.
    assert_eq!(http_get(admin, "/readyz").0, 503);
    assert_eq!(http_get(admin, "/healthz").0, 200);
    // New connections are refused.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    // The open tunnel keeps working and finishes on its own.
    tunnel.write_all(b"last words").await.unwrap();
    let mut got = [0u8; 10];
    tunnel.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"last words");
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).await.unwrap();
    assert_eq!(router.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(router
        .logs()
        .iter()
        .any(|l| l["message"] == "drained: every tunnel finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_time_over_closes_remaining_tunnels() {
    let _turn = crate::common::light();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a", Behaviour::Echo);
    let mut router = Router::start(&two_routes(a.addr, None));
    let mut tunnel = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    let hello = HelloBuilder::new("alpha.test").build();
    tunnel.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    tunnel.read_exact(&mut back).await.unwrap();
    let started = Instant::now();
    router.signal("TERM");
    // The tunnel stays open: closed by the router when the 3 s drain ends.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut rest)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert_eq!(router.wait_exit(Duration::from_secs(5)), Some(0));
    let logs = router.wait_access_logs_where(1, Duration::from_secs(5), |l| l["end"] == "drain");
    assert_eq!(logs.len(), 1);
    assert_eq!(router.access_logs().last().unwrap()["end"], "drain");
}

/// `timeouts.accept_grace`: after SIGTERM, `/readyz` answers 503 at once
/// while the listener still serves new connections for the grace; then it
/// closes and the drain goes on as usual. A second signal cuts the grace.
#[test]
fn accept_grace_keeps_serving_while_readyz_turns_away_the_balancer() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let yaml = two_routes(a.addr, None).replace("drain: 3s", "accept_grace: 5s, drain: 3s");
    let mut router = Router::start(&yaml);
    let (addr, admin) = (router.addr(), router.admin.unwrap());
    let hello = HelloBuilder::new("alpha.test").build();
    let signalled = Instant::now();
    router.signal("TERM");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"]
            == "stopping: /readyz answers 503; still accepting until the accept grace is over"
    });
    assert_eq!(http_get(admin, "/readyz"), (503, "draining\n".to_owned()));
    // A balancer that has not noticed yet still gets served.
    assert_eq!(reach(addr, &hello).unwrap(), "a");
    router.wait_log(Duration::from_secs(15), |l| {
        l["message"] == "draining: listeners closed, waiting for open tunnels"
    });
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "the grace was cut short"
    );
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    assert_eq!(router.wait_exit(Duration::from_secs(10)), Some(0));

    // A second signal ends the grace at once.
    let mut router = Router::start(&yaml.replace("accept_grace: 5s", "accept_grace: 5m"));
    router.signal("TERM");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"]
            == "stopping: /readyz answers 503; still accepting until the accept grace is over"
    });
    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(router
        .logs()
        .iter()
        .any(|l| l["message"] == "second signal: closing now"));
}

/// A SIGHUP that arrives while the router starts is handled (a reload
/// once it runs), not the default action that would kill the process.
#[test]
fn sighup_during_start_up_does_not_kill() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let mut router = Router::spawn(&two_routes(a.addr, None), |_| {});
    // The first line comes right after the handlers are installed, before
    // the config is read and the listeners bound.
    router.wait_log(Duration::from_secs(20), |l| {
        l["message"] == "sniroute starting"
    });
    router.signal("HUP");
    router.wait_ready();
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"] == "config reloaded"
    });
    assert!(router.is_running());
    let hello = HelloBuilder::new("alpha.test").build();
    assert_eq!(reach(router.addr(), &hello).unwrap(), "a");
}

/// A second SIGTERM during the drain ends it at once; the tunnels it cuts
/// still write their access log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let _turn = crate::common::light();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a", Behaviour::Echo);
    let yaml = two_routes(a.addr, None).replace("drain: 3s", "drain: 60s");
    let mut router = Router::start(&yaml);
    let hello = HelloBuilder::new("alpha.test").build();
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let mut t = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
        t.write_all(&hello).await.unwrap();
        let mut back = vec![0u8; hello.len()];
        t.read_exact(&mut back).await.unwrap();
        tunnels.push(t);
    }
    router.signal("TERM");
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))
    });
    let started = Instant::now();
    router.signal("TERM");
    assert_eq!(router.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited {:?} after the second signal, not after the 60 s drain",
        started.elapsed()
    );
    let cut = router.wait_access_logs_where(3, Duration::from_secs(5), |l| l["end"] == "drain");
    assert_eq!(cut.len(), 3, "one line per cut tunnel");
    for mut t in tunnels {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut rest)).await;
    }
}

#[test]
fn watch_config_reloads_when_the_file_changes() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let b = Upstream::start("b", Behaviour::Greet);
    let base = format!("watch_config: true\n{}", two_routes(a.addr, None));
    let router = Router::start(&base);
    let beta = HelloBuilder::new("beta.test").build();
    assert_eq!(
        crate::common::answer(router.addr(), &beta),
        [21, 3, 3, 0, 2, 2, 112]
    );
    // No signal: just a new file content, as a Marathon config update does.
    std::fs::write(
        &router.config_path,
        format!("watch_config: true\n{}", two_routes(a.addr, Some(b.addr))),
    )
    .unwrap();
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"] == "config reloaded"
    });
    assert_eq!(reach(router.addr(), &beta).unwrap(), "b");
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(0.0)
    );
}

#[test]
fn reload_binds_added_listeners_and_closes_removed_ones() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Echo);
    let one = two_routes(a.addr, None);
    let router = Router::start(&one);
    let first = router.addr();
    // A tunnel on the first listener, open across both reloads.
    let hello = HelloBuilder::new("alpha.test").build();
    let mut tunnel = TcpStream::connect(first).unwrap();
    tunnel.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    tunnel.read_exact(&mut back).unwrap();

    let two = one.replace(
        "listeners: [\"127.0.0.1:0\"]",
        "listeners: [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    assert_eq!(router.reload(&two)["message"], "config reloaded");
    let added = router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "listening (added by reload)"
    });
    let second: SocketAddr = added["local"].as_str().unwrap().parse().unwrap();
    assert!(second.is_ipv6());
    assert_eq!(
        crate::common::answer(second, &HelloBuilder::new("nope.test").build()),
        [21, 3, 3, 0, 2, 2, 112]
    );

    assert_eq!(router.reload(&one)["message"], "config reloaded");
    assert!(
        TcpStream::connect_timeout(&second, Duration::from_secs(2)).is_err(),
        "removed listener still open"
    );
    // The first listener and its tunnel were not disturbed.
    tunnel.write_all(b"still here").unwrap();
    let mut got = [0u8; 10];
    tunnel.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    let mut fresh = TcpStream::connect(first).unwrap();
    fresh.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    fresh.read_exact(&mut back).unwrap();
    assert_eq!(back, hello);
}

/// Every `sniroute_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sniroute_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names `/metrics` shows: each family (`# TYPE` line) and each
/// series (a histogram's `_bucket`, `_sum` and `_count` too), only where
/// at least one series exists.
fn exported_names(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') || l.is_empty() => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_queried_series_exists_from_the_start() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let b = Upstream::start("b", Behaviour::Greet);
    let router = Router::start(&two_routes(a.addr, Some(b.addr)));
    // No traffic at all, no discovery: only what start-up made.
    let m = router.metrics();
    let exported = exported_names(&m);

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut queried = std::collections::BTreeSet::new();
    for file in [
        "deploy/grafana/sniroute.json",
        "deploy/prometheus/sniroute.rules.yml",
    ] {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} queries no sniroute metric?");
        queried.extend(names);
    }
    // Discovery's series exist while a source is configured (checked
    // below, with sources); the rest from the start.
    let with_sources: &[&str] = &[
        "sniroute_discovery_syncs_total",
        "sniroute_discovery_last_success_timestamp_seconds",
        "sniroute_discovery_stream_reconnects_total",
        "sniroute_discovery_endpoints",
    ];
    let missing: Vec<_> = queried
        .difference(&exported)
        .filter(|n| !with_sources.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by deploy/ but not exported at start: {missing:?}\n{m}"
    );
    for name in with_sources {
        assert!(
            !exported.contains(*name),
            "{name} exported without a discovery source"
        );
    }
    // With both sources configured (unreachable: nothing listens there),
    // every discovery series exists from the start, at 0.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let with_discovery = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
discovery:
  marathon: {{urls: ["{dead}"], required: false}}
  mesos: {{urls: ["{dead}"], required: false}}
routes:
  - name: web
    server_names: [web.test]
    marathon_app: {{id: /prod/web, port_index: 0}}
  - name: k8s
    server_names: [k8s.test]
    mesos_tasks: {{framework: dev/kubernetes01, task_name_pattern: kube-control-plane, port_name: apiserver}}
"#
    ));
    let dm = with_discovery.metrics();
    let exported_with = exported_names(&dm);
    for name in with_sources {
        assert!(exported_with.contains(*name), "{name} missing:\n{dm}");
    }
    for source in ["marathon", "mesos"] {
        for result in ["success", "failure"] {
            assert!(
                metric(
                    &dm,
                    "sniroute_discovery_syncs_total",
                    &[("source", source), ("result", result)]
                )
                .is_some(),
                "{source}/{result}:\n{dm}"
            );
        }
    }
    for route in ["web", "k8s"] {
        assert_eq!(
            metric(&dm, "sniroute_discovery_endpoints", &[("route", route)]),
            Some(0.0),
            "{route}:\n{dm}"
        );
    }
    drop(with_discovery);

    // The label combinations that can occur exist, at 0; those that cannot
    // do not.
    let listener = "127.0.0.1:0";
    let conn = |route: &str, result: &str| {
        metric(
            &m,
            "sniroute_connections_total",
            &[("listener", listener), ("route", route), ("result", result)],
        )
    };
    for result in [
        "no_route",
        "bad_client_hello",
        "client_hello_too_large",
        "not_tls",
        "client_hello_timeout",
        "over_limit",
        "client_closed",
    ] {
        assert_eq!(conn("none", result), Some(0.0), "none/{result}");
        assert_eq!(conn("alpha", result), None, "alpha/{result} cannot occur");
    }
    for route in ["alpha", "beta"] {
        for result in ["forwarded", "denied", "upstream_unavailable"] {
            assert_eq!(conn(route, result), Some(0.0), "{route}/{result}");
        }
        for end in [
            "finished",
            "idle_timeout",
            "client_reset",
            "upstream_reset",
            "client_error",
            "upstream_error",
            "drain",
        ] {
            assert_eq!(
                metric(
                    &m,
                    "sniroute_tunnels_ended_total",
                    &[("route", route), ("end", end)]
                ),
                Some(0.0),
                "{route}/{end}"
            );
        }
        assert_eq!(
            metric(&m, "sniroute_active_tunnels", &[("route", route)]),
            Some(0.0)
        );
    }
    for result in ["forwarded", "denied", "upstream_unavailable"] {
        assert_eq!(conn("none", result), None, "{result} always has a route");
    }
    for error in ["emfile", "enfile", "other"] {
        assert_eq!(
            metric(&m, "sniroute_accept_errors_total", &[("error", error)]),
            Some(0.0)
        );
    }
    assert_eq!(
        metric(&m, "sniroute_drain_closed_tunnels_total", &[]),
        Some(0.0)
    );
    // 0 while its state is unknown (before the first check, which starts
    // at once), then 1: either way the series is there.
    assert!(metric(
        &m,
        "sniroute_upstream_healthy",
        &[("route", "alpha"), ("upstream", &a.addr.to_string())]
    )
    .is_some());
    assert_eq!(
        metric(
            &m,
            "sniroute_upstream_connect_failures_total",
            &[("route", "beta"), ("upstream", &b.addr.to_string())]
        ),
        Some(0.0)
    );
}

/// Waits until `/metrics` satisfies `ok`, or fails with the last scrape.
fn wait_metrics(router: &Router, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = router.metrics();
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}; /metrics:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_removed_route_leaves_metrics_once_its_last_tunnel_ends() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let b = Upstream::start("b", Behaviour::Echo);
    let router = Router::start(&two_routes(a.addr, Some(b.addr)));
    let addr = router.addr();
    let alpha = HelloBuilder::new("alpha.test").build();
    assert_eq!(reach(addr, &alpha).unwrap(), "a");

    // A tunnel on beta stays open across the reload that removes beta.
    let beta = HelloBuilder::new("beta.test").build();
    let mut tunnel = TcpStream::connect(addr).unwrap();
    tunnel.write_all(&beta).unwrap();
    let mut echoed = vec![0u8; beta.len()];
    tunnel.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, beta);

    let log = router.reload(&two_routes(a.addr, None));
    assert_eq!(log["message"], "config reloaded", "{log}");
    let b_addr = b.addr.to_string();
    let m = router.metrics();
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "beta")]),
        Some(1.0),
        "beta's series stay while its tunnel is open"
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_upstream_healthy",
            &[("route", "beta"), ("upstream", &b_addr)]
        ),
        Some(1.0)
    );
    // Counts of a route that stays carry across the reload.
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "alpha"),
                ("result", "forwarded")
            ]
        ),
        Some(1.0)
    );

    // The tunnel ends: every series naming beta or its endpoint goes.
    tunnel.write_all(b"bye").unwrap();
    let mut bye = [0u8; 3];
    tunnel.read_exact(&mut bye).unwrap();
    drop(tunnel);
    let m = wait_metrics(&router, "beta's series should leave", |m| {
        !m.contains("route=\"beta\"") && !m.contains(&b_addr)
    });
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "alpha"),
                ("result", "forwarded")
            ]
        ),
        Some(1.0),
        "alpha is untouched"
    );
    assert!(m.contains("route=\"alpha\""));

    // A route that comes back starts again at 0.
    let log = router.reload(&two_routes(a.addr, Some(b.addr)));
    assert_eq!(log["message"], "config reloaded", "{log}");
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "beta"),
                ("result", "forwarded")
            ]
        ),
        Some(0.0)
    );
}

/// Config A → B → A with tunnels open on each generation: the third
/// generation finds A's pool (still used by the first generation's tunnel)
/// instead of making a second pool for the same upstream, so the
/// endpoint's connection count (least connections) and health are one.
#[test]
fn a_config_that_comes_back_reuses_its_pools() {
    let _turn = crate::common::light();
    let x = Upstream::start("x", Behaviour::Echo);
    let y = Upstream::start("y", Behaviour::Echo);
    let config = |up: SocketAddr| two_routes(up, None);
    let router = Router::start(&config(x.addr));
    let hello = HelloBuilder::new("alpha.test").build();
    let open = || {
        let mut t = TcpStream::connect(router.addr()).unwrap();
        t.write_all(&hello).unwrap();
        let mut back = vec![0u8; hello.len()];
        t.read_exact(&mut back).unwrap();
        t
    };
    let active = |addr: SocketAddr| -> u64 {
        let (_, body) = router.admin_get("/status");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["routes"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .map_or(0, |e| e["active_tunnels"].as_u64().unwrap())
    };
    let _on_a = open();
    assert_eq!(router.reload(&config(y.addr))["message"], "config reloaded");
    let _on_b = open();
    assert_eq!(active(y.addr), 1);
    assert_eq!(router.reload(&config(x.addr))["message"], "config reloaded");
    assert_eq!(
        active(x.addr),
        1,
        "generation 3 sees the tunnel of generation 1: the same pool"
    );
    let _on_a_again = open();
    assert_eq!(active(x.addr), 2);
}
