//! The admin endpoint under attack: only allowed peers get an answer, and
//! a flood of idle or dribbling connections never keeps `/healthz`,
//! `/readyz` or `/metrics` from answering within a second, nor cuts an
//! answer being written.
//!
//! Peers are told apart by their 127.0.0.x source address, which loopback
//! accepts without configuration.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{metric, Router};

/// The endpoint's connection cap (`MAX_OPEN` in crates/router/src/admin.rs).
const MAX_OPEN: usize = 128;

/// A config with one route and `admin` as given (a YAML value).
fn config(upstream: SocketAddr, admin: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: {admin}
routes:
  - name: alpha
    server_names: [alpha.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    )
}

/// A TCP connection to `to` from the local address `from`.
fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(SocketAddr::new(from, 0));
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// `GET path` from `from`: everything the endpoint sends until it closes
/// (a reset after nothing counts as nothing). Fails on a read timeout: a
/// refused peer must be closed, not left waiting.
fn get_from(from: IpAddr, admin: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = connect_from(from, admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The endpoint may have closed already: then the write fails.
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && out.is_empty() => return out,
            Err(e) => panic!("GET {path} from {from}: {e} after {} bytes", out.len()),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `/metrics` fetched from `from`.
fn metrics_from(from: IpAddr, admin: SocketAddr) -> String {
    let (status, body) = crate::common::parse_http_response(&get_from(from, admin, "/metrics"));
    assert_eq!(status, 200, "{body}");
    body
}

fn refused_total(metrics: &str) -> Option<f64> {
    metric(metrics, "sniroute_admin_refused_total", &[])
}

#[test]
fn only_allowed_peers_get_an_answer() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let only_2 = config(
        up.addr,
        r#"{address: "127.0.0.1:0", allow_sources: ["127.0.0.2/32"]}"#,
    );
    let router = Router::start(&only_2);
    let admin = router.admin.unwrap();
    let (one, two) = (ip("127.0.0.1"), ip("127.0.0.2"));

    // Served from 127.0.0.2; the counter exists, at 0, from the start.
    let m = metrics_from(two, admin);
    assert_eq!(refused_total(&m), Some(0.0), "{m}");
    for path in ["/healthz", "/readyz", "/status", "/"] {
        assert_eq!(
            crate::common::parse_http_response(&get_from(two, admin, path)).0,
            200,
            "{path}"
        );
    }
    assert_eq!(
        crate::common::parse_http_response(&get_from(two, admin, "/healthz")).1,
        "ok\n"
    );

    // 127.0.0.1 gets nothing, not even a status line; each is counted.
    for path in ["/healthz", "/metrics", "/status"] {
        let answer = get_from(one, admin, path);
        assert!(
            answer.is_empty(),
            "{path} from 127.0.0.1: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A peer that sends nothing is closed too, without waiting for it.
    let mut silent = connect_from(one, admin).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("a silent refused peer: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let m = metrics_from(two, admin);
    assert_eq!(refused_total(&m), Some(4.0), "{m}");
    // The TLS side is not concerned.
    assert_eq!(
        crate::common::reach(
            router.addr(),
            &clienthello::synth::HelloBuilder::new("alpha.test").build()
        )
        .unwrap(),
        "a"
    );

    // A reload puts a new list in force at once: here the default one.
    let reloaded = router.reload(&config(up.addr, r#"{address: "127.0.0.1:0"}"#));
    assert_eq!(reloaded["message"], "config reloaded", "{reloaded}");
    assert_eq!(
        crate::common::parse_http_response(&get_from(one, admin, "/healthz")).0,
        200
    );
    assert_eq!(
        crate::common::parse_http_response(&get_from(two, admin, "/healthz")).0,
        200
    );
    let m = metrics_from(one, admin);
    assert_eq!(refused_total(&m), Some(4.0), "{m}");
    router.reload(&only_2);
    assert!(get_from(one, admin, "/healthz").is_empty());
    assert_eq!(
        crate::common::parse_http_response(&get_from(two, admin, "/healthz")).0,
        200
    );
}

#[test]
fn the_default_list_serves_loopback() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&config(up.addr, r#""127.0.0.1:0""#));
    let admin = router.admin.unwrap();
    for from in ["127.0.0.1", "127.0.0.2", "127.1.2.3"] {
        assert_eq!(
            crate::common::parse_http_response(&get_from(ip(from), admin, "/healthz")),
            (200, "ok\n".to_owned()),
            "{from}"
        );
    }
    let m = router.metrics();
    assert_eq!(refused_total(&m), Some(0.0), "{m}");
    let startup = router.wait_log(Duration::from_secs(1), |l| {
        l["message"] == "admin endpoint listening"
    });
    assert_eq!(
        startup["allow_sources"],
        "127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, ::1/128, fc00::/7"
    );
}

#[test]
fn ipv4_mapped_peers_count_as_their_ipv4_address() {
    let _turn = crate::common::light();
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("skipped: this machine cannot bind [::] (no IPv6)");
        return;
    }
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&config(
        up.addr,
        r#"{address: "[::]:0", allow_sources: ["127.0.0.2/32"]}"#,
    ));
    let port = router.admin.unwrap().port();
    // IPv4 clients reach a dual-stack socket as ::ffff:127.0.0.x.
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert_eq!(
        crate::common::parse_http_response(&get_from(ip("127.0.0.2"), v4, "/healthz")).0,
        200
    );
    assert!(get_from(ip("127.0.0.1"), v4, "/healthz").is_empty());
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert!(get_from(ip("::1"), v6, "/healthz").is_empty());
    let m = metrics_from(ip("127.0.0.2"), v4);
    assert_eq!(refused_total(&m), Some(2.0), "{m}");
}

/// What a flood connection does once connected.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flood {
    /// Sends nothing.
    Silent,
    /// Sends a valid request's first bytes, one a second.
    Dribble,
}

/// `slots` connections to `admin` from the addresses `from` (in turn) for
/// `length`, each reopened (after a pause) whenever the endpoint closes
/// it: an attacker who keeps that many open. Returns how many connections
/// it opened.
async fn flood(
    admin: SocketAddr,
    from: Vec<IpAddr>,
    slots: usize,
    kind: Flood,
    length: Duration,
) -> usize {
    let until = tokio::time::Instant::now() + length;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(slots);
    for slot in 0..slots {
        let opened = opened.clone();
        let from = from[slot % from.len()];
        tasks.push(tokio::spawn(async move {
            let connect = || async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(from, 0))?;
                socket.connect(admin).await
            };
            while tokio::time::Instant::now() < until {
                let Ok(Ok(mut s)) = tokio::time::timeout_at(until, connect()).await else {
                    break;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let request = b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                let mut sent = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut buf = [0u8; 512];
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => return,
                        // Closed by the endpoint (it never answers these).
                        _ = s.read(&mut buf) => break,
                        _ = tick.tick(), if kind == Flood::Dribble && sent < request.len() => {
                            if s.write_all(&request[sent..sent + 1]).await.is_err() {
                                break;
                            }
                            sent += 1;
                        }
                    }
                }
                drop(s);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    opened.load(Ordering::Relaxed)
}

/// One timed request: `GET path` from 127.0.0.1, time to the whole answer.
fn timed_get(admin: SocketAddr, path: &str) -> (Duration, io::Result<u16>) {
    let started = Instant::now();
    let result = (|| {
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let (status, body) = crate::common::parse_http_response(&out);
        let length: usize = String::from_utf8_lossy(&out)
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(usize::MAX);
        if body.len() != length {
            return Err(io::Error::other(format!(
                "{} body bytes of {length}",
                body.len()
            )));
        }
        Ok(status)
    })();
    (started.elapsed(), result)
}

/// Probes `/healthz`, `/readyz` and `/metrics` in turn from a thread of
/// its own (so the flood's tasks cannot delay the measurement) until
/// `stop`; returns each probe's path, time and result.
fn probe(
    admin: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(&'static str, Duration, io::Result<u16>)>> {
    std::thread::spawn(move || {
        let mut results = Vec::new();
        for path in ["/healthz", "/readyz", "/metrics"].into_iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (took, result) = timed_get(admin, path);
            results.push((path, took, result));
            std::thread::sleep(Duration::from_millis(20));
        }
        results
    })
}

/// Polls `/metrics` from `from` until `ok` holds (or fails after `within`).
fn wait_metrics(
    from: IpAddr,
    admin: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = crate::common::parse_http_response(&get_from(from, admin, "/metrics"));
        if ok(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; /metrics:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn closed_total(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        "sniroute_admin_closed_total",
        &[("reason", reason)],
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_answer_within_a_second_under_a_flood() {
    let _turn = crate::common::heavy();
    let limit = crate::common::raise_nofile_limit();
    assert!(limit >= 3000, "needs 3,000 descriptors, has {limit}");
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&config(up.addr, r#""127.0.0.1:0""#));
    let admin = router.admin.unwrap();

    // The probes come from 127.0.0.1, as the Mesos health check does (the
    // agent runs it); the flood from four other addresses, as an attacker
    // in the cluster would (public peers are refused at accept).
    let probes_from = ip("127.0.0.1");
    let flood_from = ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"].map(ip);

    // 1,000 connections that send nothing, reopened when closed; then
    // 1,000 that send a byte a second. Each for longer than the read
    // timeout (5 s), so that the cap, not the timeout, makes room.
    for kind in [Flood::Silent, Flood::Dribble] {
        let length = Duration::from_secs(8);
        let flood = tokio::spawn(flood(admin, flood_from.to_vec(), 1000, kind, length));
        let started = Instant::now();
        // The flood has filled the endpoint and evicts: from now on each
        // probe competes with it.
        let evicted_before = {
            let (_, m) =
                crate::common::parse_http_response(&get_from(probes_from, admin, "/metrics"));
            closed_total(&m, "evicted")
        };
        let full = |m: &str| {
            metric(m, "sniroute_admin_connections", &[]).unwrap_or(0.0) >= (MAX_OPEN - 1) as f64
                && closed_total(m, "evicted") > evicted_before + MAX_OPEN as f64
        };
        tokio::task::block_in_place(|| {
            wait_metrics(
                probes_from,
                admin,
                Duration::from_secs(5),
                "the flood fills the cap",
                full,
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let probes = probe(admin, stop.clone());
        // Probe until the flood is nearly over (bounded by its length).
        while started.elapsed() < length - Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let results = tokio::task::block_in_place(|| probes.join().unwrap());
        let opened = flood.await.unwrap();
        assert!(opened >= 1000, "{kind:?}: the flood opened {opened}");

        let mut slowest = Duration::ZERO;
        for (path, took, result) in &results {
            match result {
                Ok(200) => {}
                other => panic!("{kind:?}: {path}: {other:?} after {took:?}"),
            }
            assert!(
                *took < Duration::from_secs(1),
                "{kind:?}: {path} answered in {took:?}"
            );
            slowest = slowest.max(*took);
        }
        for path in ["/healthz", "/readyz", "/metrics"] {
            let n = results.iter().filter(|(p, ..)| *p == path).count();
            assert!(n >= 5, "{kind:?}: only {n} probes of {path}");
        }
        eprintln!(
            "{kind:?}: {} probes during a flood of {opened} connections, slowest {slowest:?}",
            results.len()
        );
        // Room was made by evicting, never by cutting an answer.
        let (_, m) = crate::common::parse_http_response(&get_from(probes_from, admin, "/metrics"));
        assert!(
            metric(&m, "sniroute_admin_connections", &[]).unwrap() <= MAX_OPEN as f64,
            "{m}"
        );
        assert_eq!(closed_total(&m, "write_timeout"), 0.0, "{m}");
        assert_eq!(closed_total(&m, "full"), 0.0, "{m}");
    }
    // The flood is over: the endpoint is back to the probes alone.
    tokio::task::block_in_place(|| {
        wait_metrics(
            probes_from,
            admin,
            Duration::from_secs(10),
            "flood connections closed",
            |m| metric(m, "sniroute_admin_connections", &[]) == Some(1.0),
        )
    });
    assert!(router.logs().iter().all(|l| l["level"] != "ERROR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_metrics_reader_is_not_cut_by_evictions() {
    let _turn = crate::common::heavy();
    crate::common::raise_nofile_limit();
    let up = Upstream::start("a", Behaviour::Greet);
    // Many routes make /metrics large: far more than the kernel buffers
    // between the endpoint and the reader hold, so the endpoint is still
    // writing it while the flood evicts.
    let mut yaml = config(up.addr, r#""127.0.0.1:0""#);
    for i in 0..150 {
        yaml.push_str(&format!(
            "  - {{name: route-{i:03}, server_names: [r{i}.test], upstreams: [\"{}\"], health_check: false}}\n",
            up.addr
        ));
    }
    let router = Router::start(&yaml);
    let admin = router.admin.unwrap();

    // The slow reader: a small receive buffer, so the endpoint can only
    // send a little ahead of it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&admin.into(), Duration::from_secs(5))
        .unwrap();
    let mut reader: TcpStream = socket.into();
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(reader, "GET /metrics HTTP/1.1\r\nHost: {admin}\r\n\r\n").unwrap();
    let mut response = vec![0u8; 1024];
    reader.read_exact(&mut response).unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));

    // The flood, from the reader's own address: the reader's is now the
    // oldest connection of the source holding the most, so were an
    // answering connection evictable, it would be the first to go.
    // /metrics is watched from another address.
    let flood_from = [ip("127.0.0.1")];
    let watch_from = ip("127.0.0.2");
    let flood = tokio::spawn(flood(
        admin,
        flood_from.to_vec(),
        1000,
        Flood::Silent,
        Duration::from_secs(5),
    ));
    let evictions = Arc::new(Mutex::new(0.0));
    let seen = evictions.clone();
    tokio::task::block_in_place(|| {
        wait_metrics(
            watch_from,
            admin,
            Duration::from_secs(4),
            "evictions while the reader reads",
            |m| {
                *seen.lock().unwrap() = closed_total(m, "evicted");
                closed_total(m, "evicted") >= 2.0 * MAX_OPEN as f64
            },
        )
    });

    // Now read the rest, slowly.
    let mut buf = [0u8; 4096];
    let mut reads = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the slow reader was cut after {} bytes ({} evictions): {e}",
                response.len(),
                evictions.lock().unwrap()
            ),
        }
        reads += 1;
        if reads % 8 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body.len(), length, "the whole answer arrived");
    assert!(
        length > 256 * 1024,
        "/metrics is {length} bytes: too small to be still in writing during the flood"
    );
    assert!(body.ends_with('\n') && body.contains("sniroute_admin_closed_total"));
    flood.await.unwrap();
    let (_, m) = crate::common::parse_http_response(&get_from(watch_from, admin, "/metrics"));
    assert_eq!(closed_total(&m, "write_timeout"), 0.0, "{m}");
}
