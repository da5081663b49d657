//! A public port under cheap attacks: memory that follows the bytes that
//! arrive, the global cap on pending hellos, per-source limits.
//!
//! Clients are spread over 127.0.0.x source addresses, which loopback
//! accepts without configuration, so per-source limits can be exercised
//! from one machine.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{metric, raise_nofile_limit, reach, Router};
use clienthello::synth::HelloBuilder;

/// A TCP connection to `to` from the source address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// The `/status` document.
fn status(router: &Router) -> serde_json::Value {
    let (code, body) = router.admin_get("/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/status` satisfies `ok`, or fails with the last document.
fn wait_status(router: &Router, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(router);
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; /status: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pending(s: &serde_json::Value) -> u64 {
    s["pending_hellos"].as_u64().unwrap()
}

/// Whether the router closed `s`: a read returns EOF or a reset within
/// 5 s (a read timeout means it is still open).
fn closed_by_router(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Whether a new connection from `from` is refused at accept: the router
/// resets it at once, so the reset may even beat `connect` returning.
fn refused_at_accept(from: Ipv4Addr, to: SocketAddr) -> bool {
    match connect_from(from, to) {
        Ok(mut s) => closed_by_router(&mut s),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
        ),
    }
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: good
    server_names: [good.test]
    upstreams: ["{upstream}"]
{extra}"#
    )
}

/// 8,000 clients each send a record header announcing 16,379 bytes and
/// nothing more. Before, each cost a zero-filled 16 KiB buffer for the
/// whole hello timeout (128 MiB in all); now each costs what arrived.
#[test]
fn headers_promising_16_kib_cost_only_what_arrives() {
    let _turn = crate::common::heavy();
    const N: usize = 8000;
    const SOURCES: u8 = 40; // 200 each, under the per-source default (256)
    assert!(
        raise_nofile_limit() >= N as u64 + 500,
        "this test needs {} descriptors",
        N + 500
    );
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        up.addr,
        "timeouts: {client_hello: 20s}\nlimits: {max_pending_hellos: 10000}\n",
    ));
    let addr = router.addr();
    let good = HelloBuilder::new("good.test").build();
    for _ in 0..20 {
        assert_eq!(reach(addr, &good).unwrap(), "good");
    }
    let before = router.rss_kib();

    let promise = [0x16, 0x03, 0x01, 0x3f, 0xfb]; // a handshake record of 16,379 bytes
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(SOURCES)) as u8);
        let mut s = connect_from(from, addr).unwrap();
        s.write_all(&promise).unwrap();
        held.push(s);
        if i % 2000 == 1999 {
            assert_eq!(
                reach(addr, &good).unwrap(),
                "good",
                "served during the flood"
            );
        }
    }
    wait_status(&router, "all 8,000 hellos pending", |s| {
        pending(s) >= N as u64
    });
    let during = router.rss_kib();
    let grown = during.saturating_sub(before);
    eprintln!(
        "RSS {before} KiB -> {during} KiB with {N} pending hellos: {:.2} KiB each",
        grown as f64 / N as f64
    );
    assert!(
        grown < 24 * 1024,
        "RSS grew by {grown} KiB for {N} pending hellos (limit 24 MiB, 3 KiB each)"
    );
    assert_eq!(reach(addr, &good).unwrap(), "good", "served while held");

    // The hello timeout closes them all; the router stays up.
    wait_status(
        &router,
        "the hello timeout closes every pending hello",
        |s| pending(s) == 0,
    );
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "none"),
                ("result", "client_hello_timeout")
            ]
        ),
        Some(N as f64)
    );
    assert!(closed_by_router(&mut held[0]));
    drop(held);
    assert_eq!(reach(addr, &good).unwrap(), "good", "served after");
}

/// Over `limits.max_pending_hellos` a connection is closed at once and
/// counted as `over_limit`; a place comes back when a hello completes.
#[test]
fn pending_hellos_over_the_cap_are_closed_at_once() {
    let _turn = crate::common::light();
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        up.addr,
        "timeouts: {client_hello: 30s}\nlimits: {max_pending_hellos: 5}\n",
    ));
    let addr = router.addr();
    let mut silent: Vec<TcpStream> = (0..5)
        .map(|i| connect_from(Ipv4Addr::new(127, 0, 0, 10 + i), addr).unwrap())
        .collect();
    wait_status(&router, "five pending hellos", |s| pending(s) == 5);

    let started = Instant::now();
    assert!(refused_at_accept(Ipv4Addr::LOCALHOST, addr));
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    let line = router.wait_log(Duration::from_secs(5), |l| l["result"] == "over_limit");
    assert_eq!(line["error"], "max_pending_hellos reached", "{line}");

    // A pending client that completes its hello frees a place.
    let good = HelloBuilder::new("good.test").build();
    silent[0].write_all(&good).unwrap();
    let mut greeting = [0u8; 5];
    silent[0].read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"good\n");
    wait_status(&router, "four pending", |s| pending(s) == 4);
    assert_eq!(reach(addr, &good).unwrap(), "good");

    let m = router.metrics();
    let count = |result| {
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "none"),
                ("result", result),
            ],
        )
    };
    assert_eq!(count("over_limit"), Some(1.0));
    drop(silent);
    wait_status(&router, "no pending hellos", |s| pending(s) == 0);
}

/// One address cannot take every place: its pending hellos, and with
/// `max_connections_per_source` its connections, are capped, while other
/// addresses are served.
#[test]
fn per_source_limits_stop_the_greedy_address_only() {
    let _turn = crate::common::light();
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        up.addr,
        "timeouts: {client_hello: 30s}\n\
         limits: {max_pending_hellos_per_source: 3, max_connections_per_source: 4}\n",
    ));
    let addr = router.addr();
    let good = HelloBuilder::new("good.test").build();
    let greedy = Ipv4Addr::new(127, 0, 0, 20);
    let other = Ipv4Addr::new(127, 0, 0, 21);

    // Three silent connections: the greedy address's pending places.
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(greedy, addr).unwrap())
        .collect();
    wait_status(&router, "three pending", |s| pending(s) == 3);
    assert!(
        refused_at_accept(greedy, addr),
        "a fourth pending hello is refused"
    );
    let mut served = connect_from(other, addr).unwrap();
    served.write_all(&good).unwrap();
    let mut greeting = [0u8; 5];
    served.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"good\n", "another address is served");

    // Completing the hellos frees pending places, but the greedy address
    // now holds 3 tunnels; one more connection reaches its limit of 4.
    for s in &mut silent {
        s.write_all(&good).unwrap();
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"good\n");
    }
    let mut fourth = connect_from(greedy, addr).unwrap();
    fourth.write_all(&good).unwrap();
    fourth.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"good\n", "the fourth connection is allowed");
    assert!(
        refused_at_accept(greedy, addr),
        "a fifth connection is refused"
    );
    let mut again = connect_from(other, addr).unwrap();
    again.write_all(&good).unwrap();
    again.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"good\n", "another address is still served");

    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "none"),
                ("result", "source_limit")
            ]
        ),
        Some(2.0)
    );
    let refused = router.wait_access_logs_where(2, Duration::from_secs(10), |l| {
        l["result"] == "source_limit"
    });
    assert_eq!(refused.len(), 2);
    for l in &refused {
        assert!(
            l["client"].as_str().unwrap().starts_with("127.0.0.20:"),
            "{l}"
        );
    }
}

/// A listener that never accepts: its one-place backlog fills, and later
/// connects hang until they time out.
fn black_hole() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the backlog so every later SYN is dropped.
    let mut fill = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fill.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    std::mem::forget(fill); // closed with the test process
    (socket, addr)
}

/// 2,000 hellos of about 16 KiB, each with 7,900 one-byte ALPN names, wait
/// on an upstream that never accepts. The ALPN list is one allocation and
/// is not kept while the connect waits, so each costs about its hello.
#[test]
fn alpn_heavy_hellos_cost_about_their_bytes() {
    let _turn = crate::common::heavy();
    const N: usize = 2000;
    raise_nofile_limit();
    let (_hole, hole) = black_hole();
    let names: Vec<[u8; 1]> = (0..7900u32).map(|i| [b'a' + (i % 26) as u8]).collect();
    let names: Vec<&[u8]> = names.iter().map(|n| &n[..]).collect();
    let hello = HelloBuilder::new("hole.test").alpn(&names).build();
    assert!(hello.len() <= 16384, "{} bytes", hello.len());
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{connect: 60s}}
limits: {{max_pending_hellos: 4000}}
routes:
  - name: hole
    server_names: [hole.test]
    upstreams: ["{hole}"]
    health_check: false
"#
    ));
    let addr = router.addr();
    // Warm up the allocator with a few of the same.
    let mut warm = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        warm.push(s);
    }
    wait_status(&router, "warm-up connections connecting", |s| {
        pending(s) == 0 && s["open_connections"].as_u64() == Some(20)
    });
    let before = router.rss_kib();
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let from = Ipv4Addr::new(127, 0, 1, 1 + (i % 100) as u8);
        let mut s = connect_from(from, addr).unwrap();
        s.write_all(&hello).unwrap();
        held.push(s);
    }
    wait_status(&router, "all hellos read, every connect waiting", |s| {
        pending(s) == 0 && s["open_connections"].as_u64() == Some(N as u64 + 20)
    });
    let during = router.rss_kib();
    let per = during.saturating_sub(before) as f64 * 1024.0 / N as f64;
    eprintln!(
        "RSS {before} KiB -> {during} KiB: {per:.0} bytes per waiting connection, hello {} bytes",
        hello.len()
    );
    assert!(
        per <= (hello.len() + 4096) as f64,
        "{per:.0} bytes per connection for a {}-byte hello",
        hello.len()
    );
    drop(held);
    drop(warm);
}

/// A flood of refusals writes at most 100 access log lines a second, then
/// one summary line with how many were left out; forwarded connections
/// always get their line.
#[test]
fn refusal_log_lines_are_rate_limited_and_forwarded_ones_never() {
    let _turn = crate::common::light();
    const FLOOD: usize = 1000;
    const GOOD: usize = 20;
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(up.addr, ""));
    let addr = router.addr();
    let good = HelloBuilder::new("good.test").build();
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        if i % (FLOOD / GOOD) == 0 {
            assert_eq!(reach(addr, &good).unwrap(), "good");
        }
    }
    // Every refusal is counted, written or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = |m: &str, result| {
        metric(
            m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                (
                    "route",
                    if result == "forwarded" {
                        "good"
                    } else {
                        "none"
                    },
                ),
                ("result", result),
            ],
        )
    };
    loop {
        let m = router.metrics();
        if count(&m, "not_tls") == Some(FLOOD as f64) && count(&m, "forwarded") == Some(GOOD as f64)
        {
            break;
        }
        assert!(Instant::now() < deadline, "not all counted:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Summaries come once a second: wait until they account for every
    // refusal that was not written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (written, suppressed, forwarded) = loop {
        let logs = router.logs();
        let lines = |result: &str| {
            logs.iter()
                .filter(|l| l["message"] == "connection" && l["result"] == result)
                .count()
        };
        let suppressed: u64 = logs
            .iter()
            .filter(|l| l["message"] == "refusal log lines suppressed")
            .map(|l| l["suppressed"].as_u64().unwrap())
            .sum();
        let written = lines("not_tls");
        if written as u64 + suppressed == FLOOD as u64 {
            break (written, suppressed, lines("forwarded"));
        }
        assert!(
            Instant::now() < deadline,
            "{written} written + {suppressed} summarised != {FLOOD}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{written} refusal lines written, {suppressed} suppressed");
    assert_eq!(forwarded, GOOD, "every forwarded connection has its line");
    assert!(suppressed > 0, "a flood of {FLOOD} must be limited");
    let m = router.metrics();
    assert_eq!(
        metric(&m, "sniroute_access_log_suppressed_total", &[]),
        Some(suppressed as f64)
    );
}
