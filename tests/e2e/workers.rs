//! Shared-nothing workers (`workers: N`) on the real binary: the kernel
//! spreads connections over every worker's socket, limits stay exact
//! across workers, reloads add and remove a listener on every worker, and
//! binary upgrades that change the number of workers hand every socket
//! over without refusing or resetting a connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{
    kill, metric, nth_log, open_fds, reach, running, wait_gone, ConnectionLoop, Router, Started,
};
use clienthello::synth::HelloBuilder;

fn config(upstream: SocketAddr, listeners: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{listeners}]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 5s, connect: 2s, drain: 20s}}
{extra}
routes:
  - name: a
    server_names: [a.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    )
}

/// Connections accepted by each worker, `sniroute_worker_connections_total`.
fn per_worker(router: &Router, workers: usize) -> Vec<f64> {
    let m = router.metrics();
    (0..workers)
        .map(|k| {
            metric(
                &m,
                "sniroute_worker_connections_total",
                &[("worker", &k.to_string())],
            )
            .unwrap_or_else(|| panic!("no series for worker {k}:\n{m}"))
        })
        .collect()
}

/// An open tunnel: the hello sent and the upstream's greeting read.
fn tunnel(addr: SocketAddr, hello: &[u8]) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(hello)?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    if line != "a\n" {
        return Err(std::io::Error::other(format!("greeting {line:?}")));
    }
    Ok(s)
}

/// Whether a new connection is closed by the router before it forwards
/// anything (refused at accept, or at once after).
fn refused(addr: SocketAddr, hello: &[u8]) -> bool {
    tunnel(addr, hello).is_err()
}

#[test]
fn two_workers_share_the_connections_and_exact_limits() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let router = Router::start(&config(
        up.addr,
        "\"127.0.0.1:0\"",
        "workers: 2\nlimits: {max_connections: 24}",
    ));
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "worker threads started" && l["workers"] == 2
    });
    let listening = router.wait_log(Duration::from_secs(5), |l| l["message"] == "listening");
    assert_eq!(listening["sockets"], 2, "{listening}");
    let addr = router.addr();
    let hello = HelloBuilder::new("a.test").build();
    assert_eq!(per_worker(&router, 2), [0.0, 0.0]);

    // Connections from new source ports hash over both sockets.
    for i in 0..200 {
        assert_eq!(reach(addr, &hello).unwrap(), "a", "connection {i}");
    }
    let counts = per_worker(&router, 2);
    assert_eq!(counts.iter().sum::<f64>(), 200.0, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c >= 20.0),
        "both workers accept: {counts:?}"
    );

    // max_connections holds across workers: 24 open, wherever they were
    // accepted, and every further one is refused, on either worker.
    let before = per_worker(&router, 2);
    let mut held: Vec<TcpStream> = (0..24)
        .map(|i| tunnel(addr, &hello).unwrap_or_else(|e| panic!("tunnel {i}: {e}")))
        .collect();
    let opened = per_worker(&router, 2);
    assert!(
        opened[0] > before[0] && opened[1] > before[1],
        "held tunnels on both workers: {before:?} -> {opened:?}"
    );
    for i in 0..40 {
        assert!(refused(addr, &hello), "connection {i} over max_connections");
    }
    let after = per_worker(&router, 2);
    assert!(
        after[0] > opened[0] && after[1] > opened[1],
        "refusals on both workers: {opened:?} -> {after:?}"
    );
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "none"),
                ("result", "over_limit")
            ]
        ),
        Some(40.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "a")]),
        Some(24.0)
    );
    // A place that comes back is taken again, once.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Ok(s) = tunnel(addr, &hello) {
            break s;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
    };
    assert!(refused(addr, &hello));
    drop((held, again));
}

#[test]
fn a_reload_adds_and_removes_a_listener_on_every_worker() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let first = "\"127.0.0.1:0\"";
    let router = Router::start(&config(up.addr, first, "workers: 2"));
    let hello = HelloBuilder::new("a.test").build();
    let reloaded = router.reload(&config(
        up.addr,
        "\"127.0.0.1:0\", \"127.0.0.2:0\"",
        "workers: 2",
    ));
    assert_eq!(reloaded["message"], "config reloaded", "{reloaded}");
    let added = router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "listening (added by reload)"
    });
    assert_eq!(added["listener"], "127.0.0.2:0");
    assert_eq!(added["sockets"], 2, "{added}");
    let new: SocketAddr = added["local"].as_str().unwrap().parse().unwrap();
    let before = per_worker(&router, 2);
    for i in 0..100 {
        assert_eq!(reach(new, &hello).unwrap(), "a", "connection {i}");
    }
    let after = per_worker(&router, 2);
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "the added listener is served by both workers: {before:?} -> {after:?}"
    );

    // Changing `workers` is logged as applying at the next start.
    let reloaded = router.reload(&config(up.addr, first, "workers: 3"));
    assert_eq!(reloaded["message"], "config reloaded", "{reloaded}");
    let warned = router.wait_log(Duration::from_secs(5), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("`workers` changed"))
    });
    assert_eq!(warned["workers"], 2, "{warned}");
    assert_eq!(warned["new"], "3", "{warned}");
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "stopped listening (removed by reload)" && l["listener"] == "127.0.0.2:0"
    });
    // Every worker's socket is closed: no connection finds one (a socket
    // left open in the group would take some of them).
    for i in 0..50 {
        match TcpStream::connect_timeout(&new, Duration::from_secs(5)) {
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "connection {i}"
            ),
            Ok(_) => panic!("connection {i} to the removed listener was accepted"),
        }
    }
    assert_eq!(reach(router.addr(), &hello).unwrap(), "a");
    assert_eq!(per_worker(&router, 2).len(), 2, "still 2 workers");
}

#[test]
fn drain_stops_every_worker_and_waits_for_their_tunnels() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let mut router = Router::start(&config(up.addr, "\"127.0.0.1:0\"", "workers: 2"));
    let addr = router.addr();
    let hello = HelloBuilder::new("a.test").build();
    let held: Vec<TcpStream> = (0..16).map(|_| tunnel(addr, &hello).unwrap()).collect();
    let counts = per_worker(&router, 2);
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "tunnels on both workers: {counts:?}"
    );
    router.signal("TERM");
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"] == "draining: listeners closed, waiting for open tunnels"
    });
    for i in 0..20 {
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_err(),
            "connection {i} accepted while draining"
        );
    }
    // The tunnels of both workers still forward (Greet echoes).
    for (i, mut s) in held.iter().enumerate() {
        s.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(line, "ping\n", "tunnel {i}");
    }
    assert!(router.is_running());
    drop(held);
    assert_eq!(router.wait_exit(Duration::from_secs(15)), Some(0));
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "drained: every tunnel finished"
    });
}

/// Upgrades from 2 workers to 2, then 1, then 2 again, under a loop of
/// connections: none is refused or reset, each new process adopts every
/// socket handed to it, and the old ones exit leaving nothing open.
#[test]
fn upgrades_that_change_the_workers_refuse_nothing() {
    let _turn = crate::common::light();
    let up = Upstream::start("a", Behaviour::Greet);
    let started = Started::default();
    let with = |n: usize| config(up.addr, "\"127.0.0.1:0\"", &format!("workers: {n}"));
    let mut router = Router::start(&with(2));
    let addr = router.addr();
    let hello = HelloBuilder::new("a.test").build();

    let load = ConnectionLoop::start(addr, &hello, "a", 2, Duration::ZERO);

    let mut pids = vec![router.pid()];
    // (workers of the new process, sockets it should accept on, on which
    // workers).
    let steps = [(2, 2, "[0, 1]"), (1, 2, "[0, 0]"), (2, 2, "[0, 1]")];
    for (n, (workers, sockets, on)) in steps.into_iter().enumerate() {
        std::fs::write(&router.config_path, with(workers)).unwrap();
        let before = load.ok();
        kill("USR2", *pids.last().unwrap());
        let ready = nth_log(
            &router,
            "upgrade: the new process is ready; this one stops accepting and drains",
            n + 1,
        );
        let pid = ready["new_pid"].as_u64().unwrap() as u32;
        started.0.lock().unwrap().push(pid);
        pids.push(pid);
        // The first "listening" line is the first process's.
        let listening = nth_log(&router, "listening", n + 2);
        assert_eq!(listening["sockets"], sockets, "step {n}: {listening}");
        assert_eq!(listening["workers"], on, "step {n}: {listening}");
        assert!(
            listening["inherited"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "step {n}: adopted the handed-over sockets: {listening}"
        );
        // The old process drains and exits, with nothing left open.
        let old = pids[pids.len() - 2];
        wait_gone(old, Duration::from_secs(30));
        assert_eq!(open_fds(old), 0, "process {old} left descriptors");
        // Served on, by the new process alone.
        load.wait_ok(before + 200);
    }
    let (ok, failed) = load.stop();
    assert!(
        failed.is_empty(),
        "{} refused or failed of {ok}: {failed:?}",
        failed.len(),
    );
    assert_eq!(router.wait_exit(Duration::from_secs(30)), Some(0));
    let last = *pids.last().unwrap();
    assert!(running(last));
    // The last one has 2 workers, and both accept.
    let m = router.metrics();
    for k in ["0", "1"] {
        assert!(
            metric(&m, "sniroute_worker_connections_total", &[("worker", k)]).is_some(),
            "worker {k}: {m}"
        );
    }
    kill("TERM", last);
    wait_gone(last, Duration::from_secs(30));
}
