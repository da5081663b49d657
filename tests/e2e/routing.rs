//! Routing decisions and refusals of the real binary, with synthetic
//! ClientHellos and raw TCP upstreams that say who they are.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{answer, metric, reach, Router};
use clienthello::synth::HelloBuilder;

fn hello(name: &str) -> Vec<u8> {
    HelloBuilder::new(name).build()
}

const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];
const ALERT_ACCESS_DENIED: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];
const ALERT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];
const ALERT_DECODE_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 50];

/// Three upstreams: `exact`, `wild`, `deeper`, and a config routing to them.
fn three_routes(default: bool) -> (Router, Vec<Upstream>) {
    let ups = vec![
        Upstream::start("exact", Behaviour::Greet),
        Upstream::start("wild", Behaviour::Greet),
        Upstream::start("deeper", Behaviour::Greet),
    ];
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 1s, connect: 2s}}
routes:
  - name: exact
    server_names: ["api.example.com"]
    upstreams: ["{}"]
  - name: wild
    server_names: ["*.example.com"]
    upstreams: ["{}"]
  - name: deeper
    server_names: ["*.staging.example.com"]
    upstreams: ["{}"]
{}"#,
        ups[0].addr,
        ups[1].addr,
        ups[2].addr,
        if default {
            "default_route: exact\n"
        } else {
            ""
        }
    );
    (Router::start(&yaml), ups)
}

#[test]
fn exact_beats_wildcard_and_longest_wildcard_wins() {
    let _turn = crate::common::light();
    let (router, _ups) = three_routes(false);
    let addr = router.addr();
    assert_eq!(reach(addr, &hello("api.example.com")).unwrap(), "exact");
    assert_eq!(reach(addr, &hello("API.Example.COM.")).unwrap(), "exact");
    assert_eq!(reach(addr, &hello("other.example.com")).unwrap(), "wild");
    assert_eq!(reach(addr, &hello("a.b.c.example.com")).unwrap(), "wild");
    assert_eq!(
        reach(addr, &hello("x.staging.example.com")).unwrap(),
        "deeper"
    );
    // The wildcard does not match the bare domain.
    assert_eq!(answer(addr, &hello("example.com")), ALERT_UNRECOGNIZED_NAME);

    // A line is written when its tunnel is torn down, which may happen after
    // the next connection finished: compare the lines as a set.
    let logs = router.wait_access_logs(6, Duration::from_secs(5));
    let mut lines: Vec<(&str, &str, &str)> = logs
        .iter()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap();
            (field("sni"), field("route"), field("result"))
        })
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            ("a.b.c.example.com", "wild", "forwarded"),
            ("api.example.com", "exact", "forwarded"),
            ("api.example.com", "exact", "forwarded"),
            ("example.com", "none", "no_route"),
            ("other.example.com", "wild", "forwarded"),
            ("x.staging.example.com", "deeper", "forwarded"),
        ]
    );

    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "wild"),
                ("result", "forwarded")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "none"),
                ("result", "no_route")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn no_sni_and_unmatched_names_use_the_default_route() {
    let _turn = crate::common::light();
    let (router, _ups) = three_routes(true);
    let addr = router.addr();
    assert_eq!(
        reach(addr, &HelloBuilder::new("x").no_sni().build()).unwrap(),
        "exact"
    );
    assert_eq!(reach(addr, &hello("unknown.test")).unwrap(), "exact");
    assert_eq!(reach(addr, &hello("x.example.com")).unwrap(), "wild");
}

#[test]
fn listener_default_replaces_the_global_one() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let b = Upstream::start("b", Behaviour::Greet);
    let yaml = format!(
        r#"
listeners:
  - "127.0.0.1:0"
  - {{address: "[::1]:0", default_route: b}}
routes:
  - {{name: a, server_names: [a.test], upstreams: ["{}"]}}
  - {{name: b, server_names: [b.test], upstreams: ["{}"]}}
default_route: a
"#,
        a.addr, b.addr
    );
    let router = Router::start(&yaml);
    let v4 = router.listener("127.0.0.1:0");
    let v6 = router.listener("[::1]:0");
    assert!(v6.is_ipv6());
    let nosni = HelloBuilder::new("x").no_sni().build();
    assert_eq!(reach(v4, &nosni).unwrap(), "a");
    assert_eq!(reach(v6, &nosni).unwrap(), "b");
    // Named routes work on both listeners, IPv6 included.
    assert_eq!(reach(v6, &hello("a.test")).unwrap(), "a");
    assert_eq!(reach(v4, &hello("b.test")).unwrap(), "b");
}

#[test]
fn refusals_send_the_right_alert_and_count() {
    let _turn = crate::common::light();
    let up = Upstream::start("up", Behaviour::Greet);
    // A port with nothing listening: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 1s, connect: 1s}}
routes:
  - name: private
    server_names: [private.test]
    upstreams: ["{up}"]
    allow_sources: ["10.0.0.0/8", "2001:db8::/32"]
  - name: down
    server_names: [down.test]
    upstreams: ["{dead}"]
    health_check: false
  - name: open
    server_names: [open.test]
    upstreams: ["{up}"]
default_route: open
"#,
        up = up.addr
    );
    let router = Router::start(&yaml);
    let addr = router.addr();
    // Each refusal is checked against its own access log line: the router
    // writes that line after closing the socket, so waiting for it before the
    // next connection keeps the lines in the order of the inputs.
    let mut seen = 0;
    let mut refuse = |input: &[u8], result: &str| -> Vec<u8> {
        let reply = answer(addr, input);
        seen += 1;
        let logs = router.wait_access_logs(seen, Duration::from_secs(5));
        assert_eq!(logs.len(), seen, "one line per connection");
        assert_eq!(
            logs[seen - 1]["result"],
            result,
            "input {:?}",
            &input[..input.len().min(16)]
        );
        reply
    };
    assert_eq!(
        refuse(&hello("private.test"), "denied"),
        ALERT_ACCESS_DENIED
    );
    assert_eq!(
        refuse(&hello("down.test"), "upstream_unavailable"),
        ALERT_INTERNAL_ERROR
    );
    // Invalid names never fall through to the default route.
    let ip_literal = HelloBuilder::new("x").raw_server_name(b"10.0.4.11").build();
    assert_eq!(refuse(&ip_literal, "bad_client_hello"), ALERT_DECODE_ERROR);
    let two_names = HelloBuilder::new("x")
        .server_names(&[b"open.test", b"private.test"])
        .build();
    assert_eq!(refuse(&two_names, "bad_client_hello"), ALERT_DECODE_ERROR);
    let nul = HelloBuilder::new("x")
        .raw_server_name(b"open.test\0.evil")
        .build();
    assert_eq!(refuse(&nul, "bad_client_hello"), ALERT_DECODE_ERROR);
    // SSLv2-style hello: decode_error too.
    assert_eq!(
        refuse(
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0, 0x15, 0, 0, 0, 0x10],
            "bad_client_hello"
        ),
        ALERT_DECODE_ERROR
    );
    // Plaintext HTTP: a 400 that says why.
    let http = refuse(b"GET / HTTP/1.1\r\nHost: open.test\r\n\r\n", "not_tls");
    let http = String::from_utf8(http).unwrap();
    assert!(http.starts_with("HTTP/1.1 400 "), "{http}");
    assert!(http.contains("This port speaks TLS"), "{http}");
    // Other garbage: closed without an answer.
    assert_eq!(refuse(b"SSH-2.0-OpenSSH_9.2\r\n", "not_tls"), b"");
    // Oversized: refused from the header alone, without waiting for bytes.
    let started = Instant::now();
    assert_eq!(answer(addr, &[22, 3, 1, 0xff, 0xff]), ALERT_DECODE_ERROR);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "waited for the body"
    );
    let logs = router.wait_access_logs(seen + 1, Duration::from_secs(5));
    assert_eq!(logs[seen]["result"], "client_hello_too_large");
    assert_eq!(up.connections(), 0, "nothing may reach an upstream");

    let m = router.metrics();
    let count = |route: &str, result: &str| crate::common::connections_total(&m, route, result);
    assert_eq!(count("private", "denied"), Some(1.0));
    assert_eq!(count("down", "upstream_unavailable"), Some(1.0));
    assert_eq!(count("none", "bad_client_hello"), Some(4.0));
    assert_eq!(count("none", "not_tls"), Some(2.0));
    assert_eq!(count("none", "client_hello_too_large"), Some(1.0));
    assert!(
        metric(
            &m,
            "sniroute_upstream_connect_failures_total",
            &[("route", "down"), ("upstream", &dead.to_string())]
        )
        .unwrap()
            >= 1.0
    );
}

#[test]
fn dribbled_and_record_split_hellos_are_routed() {
    let _turn = crate::common::light();
    let (router, _ups) = three_routes(false);
    let addr = router.addr();
    // A few bytes at a time, with pauses, as a slow link delivers them.
    let bytes = HelloBuilder::new("api.example.com").pad_to(1900).build();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    for chunk in bytes.chunks(97) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 6];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"exact\n");
    // Split across TLS records, down to one byte per record: HAProxy and
    // sniproxy fail this one.
    for size in [1, 7, 100] {
        let split = HelloBuilder::new("x.staging.example.com").build_in_records(size);
        assert_eq!(reach(addr, &split).unwrap(), "deeper", "records of {size}");
    }
}

#[test]
fn a_slow_hello_is_closed_at_the_timeout() {
    let _turn = crate::common::light();
    let (router, _ups) = three_routes(true);
    let bytes = hello("api.example.com");
    let mut s = TcpStream::connect(router.addr()).unwrap();
    s.write_all(&bytes[..50]).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = started.elapsed();
    assert!(out.is_empty(), "got {out:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let log = router.wait_access_logs(1, Duration::from_secs(5));
    assert_eq!(log[0]["result"], "client_hello_timeout");
}

#[test]
fn a_dead_endpoint_is_skipped_for_the_next_one() {
    let _turn = crate::common::light();
    let up = Upstream::start("alive", Behaviour::Greet);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: pair
    server_names: [pair.test]
    upstreams: ["{dead}", "{alive}"]
    balance: round_robin
    health_check: false
"#,
        alive = up.addr
    );
    let router = Router::start(&yaml);
    for _ in 0..4 {
        assert_eq!(reach(router.addr(), &hello("pair.test")).unwrap(), "alive");
    }
    let m = router.metrics();
    assert!(
        metric(
            &m,
            "sniroute_upstream_connect_failures_total",
            &[("route", "pair"), ("upstream", &dead.to_string())]
        )
        .unwrap()
            >= 1.0
    );
}

#[test]
fn the_client_hello_reaches_the_upstream_unchanged() {
    let _turn = crate::common::light();
    let up = Upstream::start("echo", Behaviour::Echo);
    let yaml = format!(
        "listeners: [\"127.0.0.1:0\"]\nroutes:\n  - {{name: e, server_names: [e.test], upstreams: [\"{}\"]}}\n",
        up.addr
    );
    let router = Router::start(&yaml);
    let bytes = HelloBuilder::new("e.test").build_in_records(50);
    let mut s = TcpStream::connect(router.addr()).unwrap();
    s.write_all(&bytes).unwrap();
    s.write_all(b"after the hello").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    let mut want = bytes.clone();
    want.extend_from_slice(b"after the hello");
    assert_eq!(back, want);
    assert_eq!(up.received.lock().unwrap()[0], want);
}

#[test]
fn proxy_protocol_headers_precede_the_hello() {
    let _turn = crate::common::light();
    let v1 = Upstream::start("v1", Behaviour::Echo);
    let v2 = Upstream::start("v2", Behaviour::Echo);
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
routes:
  - {{name: one, server_names: [one.test], upstreams: ["{}"], proxy_protocol: v1}}
  - {{name: two, server_names: [two.test], upstreams: ["{}"], proxy_protocol: v2}}
"#,
        v1.addr, v2.addr
    );
    let router = Router::start(&yaml);
    let addr = router.addr();
    for (name, up) in [("one.test", &v1), ("two.test", &v2)] {
        let bytes = hello(name);
        let mut s = TcpStream::connect(addr).unwrap();
        let client = s.local_addr().unwrap();
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        let seen = up.received.lock().unwrap()[0].clone();
        assert_eq!(back, seen, "the echo returns exactly what the upstream saw");
        assert!(seen.ends_with(&bytes), "{name}: hello after the header");
        let header = &seen[..seen.len() - bytes.len()];
        if name == "one.test" {
            assert_eq!(
                String::from_utf8(header.to_vec()).unwrap(),
                format!(
                    "PROXY TCP4 127.0.0.1 {} {} {}\r\n",
                    addr.ip(),
                    client.port(),
                    addr.port()
                )
            );
        } else {
            assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
            assert_eq!(header[13], 0x11, "TCP over IPv4");
            assert_eq!(&header[24..26], &client.port().to_be_bytes());
            assert_eq!(&header[26..28], &addr.port().to_be_bytes());
            // The SNI as an AUTHORITY TLV.
            assert_eq!(header[28], 0x02);
            assert_eq!(&header[31..], b"two.test");
        }
    }
}
