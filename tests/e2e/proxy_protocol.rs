//! PROXY protocol from a front load balancer (`accept_proxy_protocol`):
//! clients bound to 127.0.0.2 play the trusted balancer
//! (`from: ["127.0.0.2/32"]`), clients bound to 127.0.0.3 an untrusted
//! peer. The header's address is the client for `allow_sources`, the
//! access log, `/status` and the PROXY header sent upstream; every refused
//! header is `result="bad_proxy_header"`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{connections_total, Router};
use clienthello::synth::HelloBuilder;

const TRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const ALERT_ACCESS_DENIED: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];

fn hello(name: &str) -> Vec<u8> {
    HelloBuilder::new(name).build()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from the source address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
        .unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Sends `bytes` from `from`, closes the write side, and returns all the
/// router (or the echoing upstream) sent back until it closed.
fn exchange(from: Ipv4Addr, to: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut s = connect_from(from, to);
    let local = s.local_addr().unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    (local, back)
}

/// A router with one listener that takes headers from 127.0.0.2 (`required`
/// as given): `echo.test` goes to an echoing upstream that gets a v1
/// header from sniroute, `guarded.test` to a greeting one that only
/// 192.0.2.0/24 may use.
fn start(required: bool) -> (Router, Upstream, Upstream) {
    start_with(required, "timeouts: {client_hello: 2s}\n")
}

fn start_with(required: bool, extra: &str) -> (Router, Upstream, Upstream) {
    let echo = Upstream::start("echo", Behaviour::Echo);
    let guarded = Upstream::start("guarded", Behaviour::Greet);
    let yaml = format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    accept_proxy_protocol: {{from: ["127.0.0.2/32"], required: {required}}}
admin: "127.0.0.1:0"
routes:
  - {{name: echo, server_names: [echo.test], upstreams: ["{}"], proxy_protocol: v1}}
  - {{name: guarded, server_names: [guarded.test], upstreams: ["{}"], allow_sources: ["192.0.2.0/24"]}}
{extra}"#,
        echo.addr, guarded.addr
    );
    (Router::start(&yaml), echo, guarded)
}

/// A v1 header for `client` connecting to `to` (both IPv4).
fn v1(client: &str, to: SocketAddr) -> Vec<u8> {
    let c = sa(client);
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        c.ip(),
        to.ip(),
        c.port(),
        to.port()
    )
    .into_bytes()
}

/// A v2 PROXY header for `client` connecting to `to` (both IPv4), with a
/// TLV of type 0xE0 when `tlv` is given.
fn v2(client: &str, to: SocketAddr, tlv: Option<&[u8]>) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(l)) = (sa(client), to) else {
        panic!("IPv4 only")
    };
    let mut block = Vec::new();
    block.extend_from_slice(&c.ip().octets());
    block.extend_from_slice(&l.ip().octets());
    block.extend_from_slice(&c.port().to_be_bytes());
    block.extend_from_slice(&l.port().to_be_bytes());
    if let Some(v) = tlv {
        block.push(0xe0);
        block.extend_from_slice(&(v.len() as u16).to_be_bytes());
        block.extend_from_slice(v);
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// The last access log line for a connection from `client` (ip:port).
fn access_line(router: &Router, client: &str) -> serde_json::Value {
    router.wait_log(Duration::from_secs(10), |l| {
        l["target"] == "sniroute::access" && l["client"] == client
    })
}

#[test]
fn v1_and_v2_headers_name_the_client() {
    let _turn = crate::common::light();
    let (router, echo, _) = start(true);
    let addr = router.addr();
    let upstream_header = |client: &str| {
        format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            sa(client).ip(),
            addr.ip(),
            sa(client).port(),
            addr.port()
        )
    };

    // v1.
    let mut bytes = v1("203.0.113.5:4000", addr);
    bytes.extend_from_slice(&hello("echo.test"));
    let (_, back) = exchange(TRUSTED, addr, &bytes);
    let mut want = upstream_header("203.0.113.5:4000").into_bytes();
    want.extend_from_slice(&hello("echo.test"));
    assert_eq!(
        back, want,
        "the upstream sees the header's client, not ours"
    );
    let line = access_line(&router, "203.0.113.5:4000");
    assert_eq!(line["result"], "forwarded");
    assert_eq!(line["sni"], "echo.test");

    // v2, with a TLV, dribbled a byte at a time.
    let mut bytes = v2("198.51.100.77:5001", addr, Some(b"lb.example"));
    bytes.extend_from_slice(&hello("echo.test"));
    let mut s = connect_from(TRUSTED, addr);
    for b in &bytes {
        s.write_all(&[*b]).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    let mut want = upstream_header("198.51.100.77:5001").into_bytes();
    want.extend_from_slice(&hello("echo.test"));
    assert_eq!(back, want);
    assert_eq!(
        access_line(&router, "198.51.100.77:5001")["result"],
        "forwarded"
    );

    // LOCAL (a balancer's health check): the peer's own address.
    let mut bytes = v2_local();
    bytes.extend_from_slice(&hello("echo.test"));
    let (local, back) = exchange(TRUSTED, addr, &bytes);
    let mut want = upstream_header(&local.to_string()).into_bytes();
    want.extend_from_slice(&hello("echo.test"));
    assert_eq!(back, want);
    assert_eq!(
        access_line(&router, &local.to_string())["result"],
        "forwarded"
    );
    assert_eq!(echo.connections(), 3);
}

#[test]
fn allow_sources_is_decided_by_the_headers_address() {
    let _turn = crate::common::light();
    let (router, _, guarded) = start(true);
    let addr = router.addr();
    let mut bytes = v1("192.0.2.9:1234", addr);
    bytes.extend_from_slice(&hello("guarded.test"));
    let mut s = connect_from(TRUSTED, addr);
    s.write_all(&bytes).unwrap();
    let mut line = [0u8; 8];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"guarded\n", "192.0.2.9 is allowed");
    drop(s);

    let mut bytes = v1("198.51.100.1:1234", addr);
    bytes.extend_from_slice(&hello("guarded.test"));
    let (_, back) = exchange(TRUSTED, addr, &bytes);
    assert_eq!(back, ALERT_ACCESS_DENIED, "198.51.100.1 is not");
    let line = access_line(&router, "198.51.100.1:1234");
    assert_eq!(line["result"], "denied");
    assert_eq!(line["route"], "guarded");
    assert_eq!(guarded.connections(), 1);
    assert_eq!(
        access_line(&router, "192.0.2.9:1234")["result"],
        "forwarded"
    );

    // /status lists the refusal under the header's address.
    let (code, body) = router.admin_get("/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let recent = status["recent_refusals"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|r| r["client"] == "198.51.100.1:1234" && r["result"] == "denied"),
        "{recent:?}"
    );
}

#[test]
fn bad_headers_are_refused_and_counted() {
    let _turn = crate::common::light();
    let (router, echo, _) = start(true);
    let addr = router.addr();
    let h = hello("echo.test");
    let with_hello = |header: &[u8]| {
        let mut b = header.to_vec();
        b.extend_from_slice(&h);
        b
    };
    let header = v1("203.0.113.5:4000", addr);
    let mut stacked = header.clone();
    stacked.extend_from_slice(&v1("203.0.113.6:4000", addr));
    let cases: Vec<(&str, Ipv4Addr, Vec<u8>)> = vec![
        ("missing (required)", TRUSTED, h.clone()),
        ("stacked", TRUSTED, with_hello(&stacked)),
        ("truncated", TRUSTED, header[..20].to_vec()),
        ("garbage", TRUSTED, with_hello(b"PROXY TCP4 garbage\r\n")),
        (
            "garbage v2",
            TRUSTED,
            with_hello(b"\r\n\r\n\0\r\nQUIT\n\x21\x31\0\0"),
        ),
        (
            "not a header at all",
            TRUSTED,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("from an untrusted peer", UNTRUSTED, with_hello(&header)),
        (
            "v2 from an untrusted peer",
            UNTRUSTED,
            with_hello(&v2("203.0.113.5:4000", addr, None)),
        ),
    ];
    for (what, from, bytes) in &cases {
        let (local, back) = exchange(*from, addr, bytes);
        assert!(
            back.is_empty(),
            "{what}: closed without an answer: {back:?}"
        );
        let line = access_line(&router, &local.to_string());
        assert_eq!(line["result"], "bad_proxy_header", "{what}: {line}");
        assert_eq!(line["route"], "none", "{what}");
        assert!(
            line["error"].as_str().unwrap().contains("PROXY"),
            "{what}: {line}"
        );
    }
    // A truncated header that just stops: refused at the hello timeout.
    let mut s = connect_from(TRUSTED, addr);
    let local = s.local_addr().unwrap().to_string();
    s.write_all(&header[..10]).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(access_line(&router, &local)["result"], "bad_proxy_header");

    assert_eq!(echo.connections(), 0, "nothing reached the upstream");
    let metrics = router.metrics();
    assert_eq!(
        connections_total(&metrics, "none", "bad_proxy_header"),
        Some((cases.len() + 1) as f64),
        "{metrics}"
    );

    // An untrusted peer without a header is an ordinary client.
    let (local, back) = exchange(UNTRUSTED, addr, &h);
    assert!(back.starts_with(b"PROXY TCP4 127.0.0.3 "), "{back:?}");
    assert!(back.ends_with(&h));
    assert_eq!(
        access_line(&router, &local.to_string())["result"],
        "forwarded"
    );
}

#[test]
fn an_optional_header_may_be_left_out() {
    let _turn = crate::common::light();
    let (router, echo, _) = start(false);
    let addr = router.addr();
    let h = hello("echo.test");
    let (local, back) = exchange(TRUSTED, addr, &h);
    let want = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        local.ip(),
        addr.ip(),
        local.port(),
        addr.port()
    );
    assert!(
        back.starts_with(want.as_bytes()),
        "the peer is its own client"
    );
    let mut bytes = v1("203.0.113.5:4000", addr);
    bytes.extend_from_slice(&h);
    let (_, back) = exchange(TRUSTED, addr, &bytes);
    assert!(back.starts_with(b"PROXY TCP4 203.0.113.5 "));
    assert_eq!(echo.connections(), 2);
}

/// Whether the router closed `s` within `wait` (EOF or reset); a read
/// timeout means it is still open.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
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

#[test]
fn per_source_limits_count_the_headers_address() {
    let _turn = crate::common::light();
    let (router, _, _) = start_with(
        true,
        "limits: {max_pending_hellos_per_source: 2}\ntimeouts: {client_hello: 20s}\n",
    );
    let addr = router.addr();
    // Four pending hellos, all from the balancer, for four clients: no
    // per-source limit applies to the balancer itself.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = connect_from(TRUSTED, addr);
        s.write_all(&v1(&format!("203.0.113.{}:1000", 10 + i), addr))
            .unwrap();
        held.push(s);
    }
    // Two more for one client: the second is over its limit.
    for port in [2001, 2002] {
        let mut s = connect_from(TRUSTED, addr);
        s.write_all(&v1(&format!("203.0.113.10:{port}"), addr))
            .unwrap();
        held.push(s);
    }
    let line = router.wait_log(Duration::from_secs(10), |l| {
        l["target"] == "sniroute::access" && l["result"] == "source_limit"
    });
    // Whichever of the three for 203.0.113.10 was read last.
    let refused = match line["client"].as_str().unwrap() {
        "203.0.113.10:1000" => 0,
        "203.0.113.10:2001" => 4,
        "203.0.113.10:2002" => 5,
        other => panic!("{other} refused"),
    };
    assert!(closed_within(&mut held[refused], Duration::from_secs(5)));
    for (i, s) in held.iter_mut().enumerate() {
        if i != refused {
            assert!(!closed_within(s, Duration::from_millis(200)), "{i} is open");
        }
    }
    assert_eq!(
        router
            .wait_access_logs_where(1, Duration::from_secs(5), |l| l["result"] == "source_limit")
            .len(),
        1
    );
}
