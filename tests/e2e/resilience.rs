//! Resilience of the real binary: hostile input, slow-loris, floods over
//! `limits.max_connections`, upstream faults, file descriptor exhaustion and
//! thousands of concurrent checksummed tunnels under repeated reloads.
//!
//! Every test starts its own router (see `common`) on loopback and checks,
//! besides the behaviour itself, that the router keeps serving good clients,
//! that it counts what happened (`sniroute_connections_total{result}` and
//! friends) and that its open file descriptors return to where they were.
//!
//! - `hostile_input_is_refused_and_counted_without_leaks`: random bytes,
//!   plaintext HTTP, an SSLv2 hello, oversized record and handshake headers,
//!   a handshake longer than its record, 10,000 extensions, broken server
//!   names (300 bytes, NUL, non-ASCII, IP literal, two names) and a hello
//!   that stops half way; RSS stays bounded.
//! - `slowloris_is_cut_at_the_hello_timeout`: 1,000 connections dribbling a
//!   valid hello at one byte per second.
//! - `a_flood_over_max_connections_is_shed_and_recovers`.
//! - `fault_*`: upstreams that refuse, never answer, reset mid-stream, names
//!   that do not resolve, a whole route down and back (health checks), and
//!   the router itself out of file descriptors.
//! - `five_thousand_tunnels_survive_reloads_intact`: 5,000 concurrent
//!   tunnels, 64 KiB each way, each direction checked word by word, while
//!   the config is reloaded every second.
//!
//! These tests run alone (`common::heavy`): they measure timings and
//! descriptor counts, and the big ones need most of the process's descriptors. The
//! load test needs about 2 x 5,000 descriptors in this process and as many
//! in the router; it raises its soft `RLIMIT_NOFILE` to the hard limit
//! (through `prlimit`) and uses fewer tunnels if even that is too low (see
//! `load_with_reloads`). The fd exhaustion test needs `prlimit` (util-linux).
//!
//! Run: `cargo test --test e2e resilience` (10 to 30 s on two busy cores).
//!
//! Soak variants, `#[ignore]`d: `soak_tunnels_and_reloads` (rounds of
//! thousands of 256 KiB tunnels under reloads, memory checked from round to
//! round), `soak_tunnels_with_abuse` (30 minutes of 2,000 tunnels cycling
//! under reloads with header-only, ALPN-heavy, garbage and reset clients
//! mixed in; RSS and descriptors reported per round and checked against the
//! first round) and `soak_slowloris` (2,000 slow-loris connections, each
//! replaced as soon as it is cut, while good clients are timed). 10 minutes each by
//! default; `SNIROUTE_SOAK_SECS=N` changes that:
//!
//! ```sh
//! cargo test --release --test e2e resilience -- --ignored
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{metric, nofile_limits, pattern, raise_nofile_limit, reloads, Router};
use clienthello::synth::HelloBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The configured listener, as the `listener` metric label shows it.
const LISTENER: &str = "127.0.0.1:0";
const ALERT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];
const ALERT_DECODE_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 50];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn hello(name: &str) -> Vec<u8> {
    HelloBuilder::new(name).build()
}

/// `sniroute_connections_total{listener, route, result}`, 0 when absent.
fn connections(m: &str, route: &str, result: &str) -> f64 {
    crate::common::connections_total(m, route, result).unwrap_or(0.0)
}

/// Polls `cond` every 25 ms until it holds; panics with `what` after
/// `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the router holds at most `baseline + slack` descriptors.
async fn wait_fds(router: &Router, baseline: usize, slack: usize, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = router.open_fds();
        if fds <= baseline + slack {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: the router holds {fds} descriptors, baseline {baseline} (+{slack} allowed)"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Spare pipes the splice pool may keep after tunnels (two fds each): a
/// handful for sequential tunnels.
const FD_SLACK: usize = 6;

/// Connects, sends `hello` and reads the greeting line of a greeting upstream.
async fn reach(addr: SocketAddr, hello: &[u8]) -> io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(hello).await?;
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        if line.contains(&b'\n') {
            break;
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    Ok(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// A good client: `name` must reach the greeter saying `expect`. Returns the
/// round trip time.
async fn good_client(addr: SocketAddr, name: &str, expect: &str) -> Duration {
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), reach(addr, &hello(name)))
        .await
        .unwrap_or_else(|_| panic!("good client for {name} not answered within 10 s"))
        .unwrap_or_else(|e| panic!("good client for {name}: {e}"));
    assert_eq!(got, expect, "good client for {name}");
    started.elapsed()
}

/// What a client saw after sending some bytes.
#[derive(Debug)]
struct Closed {
    /// Everything the router answered.
    reply: Vec<u8>,
    /// From the end of the send until the close.
    after: Duration,
}

/// Sends `bytes` (optionally half-closing after `shutdown_after`), then
/// reads until the router closes (EOF or reset). Panics if the connection
/// is still open after `limit`.
async fn send_and_wait_close(
    addr: SocketAddr,
    bytes: impl AsRef<[u8]>,
    shutdown_after: Option<Duration>,
    limit: Duration,
) -> Closed {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        // Reset before connect() even returned (a connection over the
        // limit, on a fast loopback): closed at once.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            return Closed {
                reply: Vec::new(),
                after: Duration::ZERO,
            }
        }
        Err(e) => panic!("connect: {e}"),
    };
    s.set_nodelay(true).unwrap();
    // The router may close while we still write (it decided early): fine.
    let _ = s.write_all(bytes.as_ref()).await;
    let sent = Instant::now();
    if let Some(after) = shutdown_after {
        tokio::time::sleep(after).await;
        let _ = s.shutdown().await;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {limit:?}; got {reply:?}"
    );
    Closed {
        reply,
        after: sent.elapsed(),
    }
}

/// A config with one route `good` (`good.test`) to `upstream`, the given
/// `timeouts` and `limits` (YAML flow-mapping contents) and more routes
/// (YAML list items).
fn config(timeouts: &str, limits: &str, upstream: SocketAddr, more_routes: &str) -> String {
    format!(
        r#"
listeners: ["{LISTENER}"]
admin: "127.0.0.1:0"
timeouts: {{{timeouts}}}
limits: {{{limits}}}
routes:
  - name: good
    server_names: [good.test]
    upstreams: ["{upstream}"]
    health_check: false
{more_routes}"#
    )
}

/// xorshift64*: deterministic "random" bytes.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn soak_duration() -> Duration {
    let secs = std::env::var("SNIROUTE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------
// 1. Hostile input
// ---------------------------------------------------------------------------

/// What the router must answer to a bad input.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    Nothing,
    Decode,
    Http400,
}

/// The `result` label and answer the router gives to bytes `clienthello`
/// classifies so (the documented mapping, README "Behaviour").
fn expected_for(bytes: &[u8], limit: usize) -> (&'static str, Reply) {
    use clienthello::{Error, Progress};
    let limits = clienthello::Limits {
        max_client_hello_bytes: limit,
    };
    match clienthello::parse(bytes, &limits) {
        Ok(Progress::NeedMore { .. }) => ("client_hello_timeout", Reply::Nothing),
        Ok(Progress::Complete(h)) => panic!("random bytes made a ClientHello: {h:?}"),
        Err(Error::NotTls {
            looks_like_http: true,
        }) => ("not_tls", Reply::Http400),
        Err(Error::NotTls { .. }) => ("not_tls", Reply::Nothing),
        Err(Error::NotHandshake { .. }) => ("bad_client_hello", Reply::Nothing),
        Err(Error::TooLarge { .. }) => ("client_hello_too_large", Reply::Decode),
        Err(_) => ("bad_client_hello", Reply::Decode),
    }
}

/// An SSL 2.0 CLIENT-HELLO (as old scanners still send).
fn sslv2_hello() -> Vec<u8> {
    // msg type 1, version 3.1, cipher spec length 3, session id length 0,
    // challenge length 16, one cipher spec, the challenge.
    let mut body = vec![1, 3, 1, 0, 3, 0, 0, 0, 16, 0x01, 0x00, 0x80];
    body.extend_from_slice(&[0xaa; 16]);
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// A valid hello whose handshake header claims `extra` more bytes than the
/// record carries.
fn handshake_longer_than_record(extra: usize) -> Vec<u8> {
    let mut hs = HelloBuilder::new("good.test").handshake();
    let body = hs.len() - 4 + extra;
    hs[1..4].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
    clienthello::synth::records(&hs, 1 << 14, 0x0301)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_counted_without_leaks() {
    let _turn = crate::common::heavy();
    const LIMIT: usize = 65536;
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        &format!("max_client_hello_bytes: {LIMIT}"),
        up.addr,
        "",
    ));
    let addr = router.addr();
    // Warm up (tokio, the pipe pool, the allocator) before the baselines.
    for _ in 0..3 {
        good_client(addr, "good.test", "good").await;
    }
    wait_until("warm-up tunnels closed", Duration::from_secs(5), || {
        metric(
            &router.metrics(),
            "sniroute_active_tunnels",
            &[("route", "good")],
        ) == Some(0.0)
    })
    .await;
    let fds = router.open_fds();
    let rss = router.rss_kib();
    let mut good_served = 3.0;

    struct Case {
        name: String,
        bytes: Vec<u8>,
        /// Half-close after this long instead of waiting for the router.
        shutdown_after: Option<Duration>,
        result: &'static str,
        reply: Reply,
    }
    let case = |name: &str, bytes: Vec<u8>, result, reply| Case {
        name: name.to_owned(),
        bytes,
        shutdown_after: None,
        result,
        reply,
    };
    let long_name: Vec<u8> = (0..5)
        .flat_map(|_| [b'a'; 59].into_iter().chain([b'.']))
        .take(300)
        .collect();
    assert_eq!(long_name.len(), 300);
    let mut cases = vec![
        case(
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n".to_vec(),
            "not_tls",
            Reply::Http400,
        ),
        case(
            "SSLv2 hello",
            sslv2_hello(),
            "bad_client_hello",
            Reply::Decode,
        ),
        // A record length is 16 bits: 0xffff is the most one can announce.
        case(
            "record header announcing 64 KiB",
            vec![22, 3, 1, 0xff, 0xff, 1, 0, 0],
            "client_hello_too_large",
            Reply::Decode,
        ),
        case(
            "handshake header announcing 16 MiB",
            [&[22u8, 3, 1, 0, 64, 1, 0xff, 0xff, 0xff][..], &[0u8; 60]].concat(),
            "client_hello_too_large",
            Reply::Decode,
        ),
        // The rest of the handshake never comes; an alert record comes
        // instead.
        case(
            "handshake longer than its record, then another record type",
            [
                handshake_longer_than_record(500),
                vec![21, 3, 3, 0, 2, 1, 0],
            ]
            .concat(),
            "bad_client_hello",
            Reply::Decode,
        ),
        Case {
            shutdown_after: Some(Duration::from_millis(100)),
            ..case(
                "handshake longer than its record, then EOF",
                handshake_longer_than_record(500),
                "client_closed",
                Reply::Nothing,
            )
        },
        case(
            "SNI of 300 bytes",
            HelloBuilder::new("x").raw_server_name(&long_name).build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "SNI with NUL",
            HelloBuilder::new("x")
                .raw_server_name(b"good.test\0.evil.example")
                .build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "non-ASCII SNI",
            HelloBuilder::new("x")
                .raw_server_name("g\u{f6}\u{f6}d.test".as_bytes())
                .build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "IPv4 literal SNI",
            HelloBuilder::new("x").raw_server_name(b"127.0.0.1").build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "IPv6 literal SNI",
            HelloBuilder::new("x").raw_server_name(b"::1").build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "two SNI entries",
            HelloBuilder::new("x")
                .server_names(&[b"good.test", b"other.test"])
                .build(),
            "bad_client_hello",
            Reply::Decode,
        ),
        case(
            "a hello that stops half way",
            {
                let h = hello("good.test");
                h[..h.len() / 2].to_vec()
            },
            "client_hello_timeout",
            Reply::Nothing,
        ),
    ];
    // Random bytes; what each must give follows from how the parser
    // classifies it. Some seeds start like a TLS record on purpose.
    for seed in 1..=12u64 {
        let mut bytes = random_bytes(seed, 64 + (seed as usize * 331) % 4000);
        match seed % 4 {
            0 => bytes[0] = 22,
            1 => bytes[..3].copy_from_slice(&[22, 3, 1]),
            2 => bytes[0] |= 0x80,
            _ => {}
        }
        let (result, reply) = expected_for(&bytes, LIMIT);
        cases.push(case(&format!("random bytes #{seed}"), bytes, result, reply));
    }

    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for c in &cases {
        let closed =
            send_and_wait_close(addr, &c.bytes, c.shutdown_after, Duration::from_secs(5)).await;
        match c.reply {
            Reply::Nothing => assert!(
                closed.reply.is_empty(),
                "{}: expected a silent close, got {:?}",
                c.name,
                closed.reply
            ),
            Reply::Decode => assert_eq!(closed.reply, ALERT_DECODE_ERROR, "{}", c.name),
            Reply::Http400 => {
                let text = String::from_utf8_lossy(&closed.reply);
                assert!(
                    text.starts_with("HTTP/1.1 400 Bad Request\r\n")
                        && text.contains("Connection: close")
                        && text.ends_with(
                            "This port speaks TLS: use https:// (sniroute routes TLS by SNI).   \n"
                        ),
                    "{}: {text}",
                    c.name
                );
            }
        }
        if c.result == "client_hello_timeout" {
            assert!(
                closed.after >= Duration::from_millis(900) && closed.after < Duration::from_secs(4),
                "{}: closed {:?} after the last byte, the hello timeout is 1 s",
                c.name,
                closed.after
            );
        } else if c.shutdown_after.is_none() {
            assert!(
                closed.after < Duration::from_millis(900),
                "{}: the router waited {:?} to refuse",
                c.name,
                closed.after
            );
        }
        *expected.entry(c.result).or_default() += 1.0;

        // Still serving, and nothing left behind.
        good_client(addr, "good.test", "good").await;
        good_served += 1.0;
        wait_fds(&router, fds, FD_SLACK, &c.name).await;
    }

    // 10,000 extensions (40 KB, three records): under this router's 64 KiB
    // limit, so it must be parsed in full and routed.
    let many = HelloBuilder::new("good.test")
        .many_extensions(10_000)
        .build();
    assert!(many.len() > 40_000 && many.len() < LIMIT);
    let started = Instant::now();
    assert_eq!(reach(addr, &many).await.unwrap(), "good");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "10,000 extensions took {:?}",
        started.elapsed()
    );
    good_served += 1.0;
    wait_fds(&router, fds, FD_SLACK, "10,000 extensions").await;

    // Every refusal counted under its result, none reached the upstream.
    let mut m = String::new();
    wait_until("every connection counted", Duration::from_secs(5), || {
        m = router.metrics();
        connections(&m, "good", "forwarded") == good_served
    })
    .await;
    for (result, n) in &expected {
        assert_eq!(connections(&m, "none", result), *n, "result={result}\n{m}");
    }
    assert_eq!(up.accepted() as f64, good_served);

    let rss_after = router.rss_kib();
    assert!(
        rss_after <= rss + 8 * 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
    eprintln!(
        "hostile input: {} cases ({expected:?}), fds {fds} -> {}, RSS {rss} -> {rss_after} KiB",
        cases.len() + 1,
        router.open_fds()
    );
}

// ---------------------------------------------------------------------------
// 2. Slow-loris
// ---------------------------------------------------------------------------

/// What [`slowloris`] saw.
#[derive(Debug, Default)]
struct Attack {
    /// Slow connections the router closed.
    closed: usize,
    /// Round trip times of good clients during the attack.
    good: Vec<Duration>,
    /// The most connections `/status` showed open at once.
    most_open: u64,
    /// Router RSS (KiB) over time.
    rss: Vec<(Duration, u64)>,
}

/// One slow-loris connection: sends `hello` one byte per second until the
/// router closes it. Returns how long it was open, or an error if the
/// router answered something or kept it open past `give_up`.
async fn slow_client(
    addr: SocketAddr,
    hello: Arc<Vec<u8>>,
    give_up: Duration,
) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    for byte in hello.iter().cycle() {
        // A write to a connection the router already closed may still
        // succeed; the read below tells.
        let _ = s.write_all(&[*byte]).await;
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return Ok(opened.elapsed()),
            Ok(Ok(n)) => return Err(format!("the router answered {n} bytes")),
        }
        if opened.elapsed() > give_up {
            return Err(format!("still open after {give_up:?}"));
        }
    }
    unreachable!("cycle() never ends")
}

/// Runs `n` slow-loris connections at once (each replaced when closed while
/// `keep_up` lasts; once only when zero) and good clients every 200 ms
/// meanwhile.
async fn slowloris(router: &Router, n: usize, timeout: Duration, keep_up: Duration) -> Attack {
    let addr = router.addr();
    let hello = Arc::new(hello("good.test"));
    assert!(
        hello.len() as u64 > 2 * timeout.as_secs() + 4,
        "the hello must outlast the timeout at one byte per second"
    );
    let until = Instant::now() + keep_up;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let hello = hello.clone();
        tasks.spawn(async move {
            let mut open_for = Vec::new();
            loop {
                open_for
                    .push(slow_client(addr, hello.clone(), timeout + Duration::from_secs(6)).await);
                if Instant::now() >= until {
                    return open_for;
                }
            }
        });
    }
    let started = Instant::now();
    let mut attack = Attack::default();
    loop {
        let good = good_client(addr, "good.test", "good").await;
        attack.good.push(good);
        let status: serde_json::Value =
            serde_json::from_str(&router.admin_get("/status").1).unwrap();
        let open = status["open_connections"].as_u64().unwrap();
        attack.most_open = attack.most_open.max(open);
        attack.rss.push((started.elapsed(), router.rss_kib()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Some(done) = tasks.try_join_next() {
            for open_for in done.unwrap() {
                let open_for = open_for.unwrap_or_else(|e| panic!("slow-loris connection: {e}"));
                // Closed at the timeout: not before, and not much after
                // (the client notices at once; the rest is scheduling).
                assert!(
                    open_for >= timeout - Duration::from_millis(100)
                        && open_for < timeout + Duration::from_secs(4),
                    "a slow-loris connection was closed after {open_for:?}, the timeout is {timeout:?}"
                );
                attack.closed += 1;
            }
        }
        if tasks.is_empty() {
            return attack;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_hello_timeout() {
    let _turn = crate::common::heavy();
    const N: usize = 1000;
    let up = Upstream::start("good", Behaviour::Greet);
    // The attack comes from one address (127.0.0.1): the per-source limit
    // would cut it short (tests/e2e/limits.rs covers that limit).
    let router = Router::start(&config(
        "client_hello: 2s, connect: 500ms",
        "max_pending_hellos_per_source: 10000",
        up.addr,
        "",
    ));
    good_client(router.addr(), "good.test", "good").await;
    let fds = router.open_fds();

    let started = Instant::now();
    let Attack {
        closed,
        good,
        most_open,
        ..
    } = slowloris(&router, N, Duration::from_secs(2), Duration::ZERO).await;
    let took = started.elapsed();
    assert_eq!(closed, N);
    assert!(
        most_open >= N as u64,
        "the attack never held {N} connections open at once (at most {most_open})"
    );
    let slowest = good.iter().max().unwrap();
    assert!(
        good.len() >= 5,
        "only {} good clients during the attack",
        good.len()
    );
    assert!(
        *slowest < Duration::from_secs(1),
        "a good client took {slowest:?} during the attack"
    );

    wait_until("every good tunnel counted", Duration::from_secs(5), || {
        connections(&router.metrics(), "good", "forwarded") == 1.0 + good.len() as f64
    })
    .await;
    let m = router.metrics();
    assert_eq!(
        connections(&m, "none", "client_hello_timeout"),
        N as f64,
        "{m}"
    );
    wait_fds(&router, fds, FD_SLACK, "after the slow-loris").await;
    eprintln!(
        "slow-loris: {N} connections ({most_open} open at most) cut in {took:?}; {} good clients, slowest {slowest:?}",
        good.len()
    );
}

// ---------------------------------------------------------------------------
// 3. Connection flood over limits.max_connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_max_connections_is_shed_and_recovers() {
    let _turn = crate::common::heavy();
    const MAX: usize = 50;
    const EXTRA: usize = 30;
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        &format!("max_connections: {MAX}"),
        up.addr,
        "",
    ));
    let addr = router.addr();
    let status =
        || -> serde_json::Value { serde_json::from_str(&router.admin_get("/status").1).unwrap() };
    good_client(addr, "good.test", "good").await;
    wait_until(
        "the warm-up connection closed",
        Duration::from_secs(5),
        || status()["open_connections"] == 0,
    )
    .await;
    let fds = router.open_fds();

    // MAX idle tunnels: each greeted, then silent.
    let mut tunnels = Vec::new();
    for _ in 0..MAX {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello("good.test")).await.unwrap();
        let mut greeting = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut greeting))
            .await
            .expect("greeted within 10 s")
            .unwrap();
        assert_eq!(&greeting, b"good\n");
        tunnels.push(s);
    }
    assert_eq!(status()["open_connections"], MAX);

    // Everything beyond is closed at once, good hello or not.
    for i in 0..EXTRA {
        let closed =
            send_and_wait_close(addr, &hello("good.test"), None, Duration::from_secs(5)).await;
        assert!(
            closed.reply.is_empty(),
            "extra connection {i}: {:?}",
            closed.reply
        );
        assert!(
            closed.after < Duration::from_millis(900),
            "extra connection {i} closed after {:?}",
            closed.after
        );
    }
    let m = router.metrics();
    assert_eq!(connections(&m, "none", "over_limit"), EXTRA as f64);
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "good")]),
        Some(MAX as f64),
        "the flood must not disturb open tunnels"
    );
    // The tunnels still work.
    for s in &mut tunnels {
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
    }
    let over_limit_logs = router
        .wait_access_logs_where(EXTRA, Duration::from_secs(10), |l| {
            l["result"] == "over_limit"
        })
        .len();
    assert_eq!(over_limit_logs, EXTRA);

    // Once the tunnels are gone, new clients are served again.
    drop(tunnels);
    wait_until("the tunnels closed", Duration::from_secs(10), || {
        status()["open_connections"] == 0
    })
    .await;
    for _ in 0..5 {
        good_client(addr, "good.test", "good").await;
    }
    wait_until("every tunnel counted", Duration::from_secs(5), || {
        connections(&router.metrics(), "good", "forwarded") == (1 + MAX + 5) as f64
    })
    .await;
    assert_eq!(
        connections(&router.metrics(), "none", "over_limit"),
        EXTRA as f64
    );
    wait_fds(&router, fds, FD_SLACK, "after the flood").await;
}

// ---------------------------------------------------------------------------
// 4. Faults
// ---------------------------------------------------------------------------

/// `sniroute_upstream_connect_failures_total{route, upstream}`, 0 when absent.
fn connect_failures(m: &str, route: &str, upstream: SocketAddr) -> f64 {
    metric(
        m,
        "sniroute_upstream_connect_failures_total",
        &[("route", route), ("upstream", &upstream.to_string())],
    )
    .unwrap_or(0.0)
}

/// The access log lines of `route`, once at least `n` have come.
fn route_logs(router: &Router, route: &str, n: usize) -> Vec<serde_json::Value> {
    router.wait_access_logs_where(n, Duration::from_secs(10), |l| l["route"] == route)
}

/// Two more routes for an upstream fault: `NAME` (`NAME.test`) whose only
/// upstream is `faulty`, and `pair` (`pair.test`) with `faulty` first and
/// `good` second, round robin, so every other connection tries the faulty
/// one first. No health checks: every connection meets the fault.
fn faulty_and_pair_routes(name: &str, faulty: SocketAddr, good: SocketAddr) -> String {
    format!(
        r#"
  - name: {name}
    server_names: [{name}.test]
    upstreams: ["{faulty}"]
    health_check: false
  - name: pair
    server_names: [pair.test]
    upstreams: ["{faulty}", "{good}"]
    balance: round_robin
    health_check: false
"#
    )
}

/// A port nobody listens on (bound, then closed).
fn refusing_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_an_upstream_refusing_connections() {
    let _turn = crate::common::heavy();
    let up = Upstream::start("good", Behaviour::Greet);
    let dead = refusing_port();
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        "",
        up.addr,
        &faulty_and_pair_routes("dead", dead, up.addr),
    ));
    let addr = router.addr();
    good_client(addr, "good.test", "good").await;
    let fds = router.open_fds();

    // Refused at once: the client gets internal_error at once.
    for _ in 0..3 {
        let closed =
            send_and_wait_close(addr, &hello("dead.test"), None, Duration::from_secs(5)).await;
        assert_eq!(closed.reply, ALERT_INTERNAL_ERROR);
        assert!(
            closed.after < Duration::from_millis(900),
            "{:?}",
            closed.after
        );
    }
    // With a live upstream next to it, clients never notice: round robin
    // tries the dead one first every other time and moves on.
    for _ in 0..4 {
        good_client(addr, "pair.test", "good").await;
    }
    good_client(addr, "good.test", "good").await;
    wait_until("every tunnel counted", Duration::from_secs(5), || {
        connections(&router.metrics(), "pair", "forwarded") == 4.0
    })
    .await;
    let m = router.metrics();
    assert_eq!(connections(&m, "dead", "upstream_unavailable"), 3.0);
    assert_eq!(connect_failures(&m, "dead", dead), 3.0);
    assert_eq!(connect_failures(&m, "pair", dead), 2.0);
    assert_eq!(connect_failures(&m, "pair", up.addr), 0.0);
    for l in route_logs(&router, "dead", 3) {
        assert_eq!(l["result"], "upstream_unavailable");
        let error = l["error"].as_str().unwrap();
        assert!(
            error.contains(&dead.to_string()) && error.contains("refused"),
            "{error}"
        );
    }
    wait_fds(&router, fds, FD_SLACK, "after refused upstreams").await;
}

/// A listener whose accept queue is full and never drained: further
/// connection attempts get no answer at all (Linux, and gVisor, drop their
/// SYNs), which is what a black-holed host looks like to a client. A
/// network namespace with a packet filter dropping SYNs would need root
/// and iptables/nft in the test environment; this needs nothing. Returns
/// the listener and the connection(s) filling its queue.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut filling = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => filling.push(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return (listener, filling),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue of a backlog-0 listener took 16 connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_an_upstream_that_never_answers() {
    let _turn = crate::common::heavy();
    let up = Upstream::start("good", Behaviour::Greet);
    let (hole, _filling) = blackhole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        "",
        up.addr,
        &faulty_and_pair_routes("hole", hole_addr, up.addr),
    ));
    let addr = router.addr();
    good_client(addr, "good.test", "good").await;
    let fds = router.open_fds();

    // The client is told after the connect timeout, not left hanging; good
    // clients are served meanwhile.
    let waiting = tokio::spawn(send_and_wait_close(
        addr,
        hello("hole.test"),
        None,
        Duration::from_secs(10),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let good = good_client(addr, "good.test", "good").await;
    assert!(good < Duration::from_secs(1), "{good:?}");
    let closed = waiting.await.unwrap();
    assert_eq!(closed.reply, ALERT_INTERNAL_ERROR);
    assert!(
        closed.after >= Duration::from_millis(450) && closed.after < Duration::from_secs(3),
        "answered after {:?}, the connect timeout is 500 ms",
        closed.after
    );
    // Next to a live upstream, the black hole costs one connect timeout.
    let first = good_client(addr, "pair.test", "good").await;
    let second = good_client(addr, "pair.test", "good").await;
    assert!(first >= Duration::from_millis(450), "{first:?}");
    assert!(second < Duration::from_millis(450), "{second:?}");

    wait_until("every tunnel counted", Duration::from_secs(5), || {
        connections(&router.metrics(), "pair", "forwarded") == 2.0
    })
    .await;
    let m = router.metrics();
    assert_eq!(connections(&m, "hole", "upstream_unavailable"), 1.0);
    assert_eq!(connect_failures(&m, "hole", hole_addr), 1.0);
    assert_eq!(connect_failures(&m, "pair", hole_addr), 1.0);
    let logs = route_logs(&router, "hole", 1);
    let error = logs[0]["error"].as_str().unwrap();
    assert!(error.contains("timed out"), "{error}");
    wait_fds(&router, fds, FD_SLACK, "after the black hole").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_an_upstream_reset_mid_stream() {
    let _turn = crate::common::heavy();
    let up = Upstream::start("good", Behaviour::Greet);
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        "",
        up.addr,
        &format!(
            r#"
  - name: reset
    server_names: [reset.test]
    upstreams: ["{}"]
    health_check: false
"#,
            upstream.local_addr().unwrap()
        ),
    ));
    let addr = router.addr();
    good_client(addr, "good.test", "good").await;
    let fds = router.open_fds();

    let h = hello("reset.test");
    let client = TcpStream::connect(addr).await.unwrap();
    let (mut client_r, mut client_w) = client.into_split();
    client_w.write_all(&h).await.unwrap();
    let (mut server, _) = tokio::time::timeout(Duration::from_secs(5), upstream.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; h.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, h);

    // The client streams without pause; the upstream reads 256 KiB of it
    // and answers 64 KiB...
    let writer = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), client_w.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                Ok(Err(e)) => return (sent, e.kind()),
                Err(_) => panic!("the client's writes blocked for 10 s after {sent} bytes"),
            }
        }
    });
    let mut seen = vec![0u8; 256 * 1024];
    server.read_exact(&mut seen).await.unwrap();
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((i % 4096) % 251) as u8));
    let answer: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 241) as u8).collect();
    server.write_all(&answer).await.unwrap();
    let mut back = vec![0u8; answer.len()];
    client_r.read_exact(&mut back).await.unwrap();
    assert_eq!(back, answer);

    // ...then resets (SO_LINGER 0) with unread data.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    let reset_at = Instant::now();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), client_r.read_to_end(&mut rest))
        .await
        .expect("the client learns of the reset within 5 s");
    let noticed = reset_at.elapsed();
    assert!(rest.is_empty(), "{} bytes after the reset", rest.len());
    assert!(noticed < Duration::from_secs(2), "{noticed:?} ({end:?})");
    let (sent, error) = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the client's writes fail within 5 s of the reset")
        .unwrap();
    assert!(
        matches!(
            error,
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{error:?} after {sent} bytes"
    );

    let logs = router.wait_access_logs(2, Duration::from_secs(5));
    let log = logs.iter().find(|l| l["route"] == "reset").unwrap();
    assert_eq!(log["result"], "forwarded");
    assert_eq!(log["end"], "upstream_reset", "{log}");
    assert_eq!(log["bytes_upstream_to_client"], answer.len());
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_tunnels_ended_total",
            &[("route", "reset"), ("end", "upstream_reset")]
        ),
        Some(1.0)
    );
    good_client(addr, "good.test", "good").await;
    wait_fds(&router, fds, FD_SLACK, "after the reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_upstream_names_that_do_not_resolve() {
    let _turn = crate::common::heavy();
    const NOWHERE: &str = "does-not-exist.invalid";
    // How long this machine's resolver takes to say no (RFC 6761: .invalid
    // never resolves); the router may take as long, but not hang.
    let started = Instant::now();
    let lookup = tokio::net::lookup_host((NOWHERE, 443))
        .await
        .map(|addrs| addrs.collect::<Vec<_>>());
    let lookup_time = started.elapsed();
    assert!(lookup.is_err(), "{NOWHERE} resolved: {lookup:?}");
    let bound = Duration::from_secs(2) + 2 * lookup_time;

    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        "",
        up.addr,
        &format!(
            r#"
  - name: nowhere
    server_names: [nowhere.test]
    upstreams: ["{NOWHERE}:443"]
    health_check: false
  - name: mixed
    server_names: [mixed.test]
    upstreams: ["{NOWHERE}:443", "{up}"]
    health_check: false
  - name: byname
    server_names: [byname.test]
    upstreams: ["localhost:{port}"]
    health_check: false
"#,
            up = up.addr,
            port = up.addr.port()
        ),
    ));
    let addr = router.addr();
    good_client(addr, "good.test", "good").await;
    let fds = router.open_fds();

    for _ in 0..3 {
        // Good clients are not held up meanwhile.
        let (closed, good) = tokio::join!(
            send_and_wait_close(addr, hello("nowhere.test"), None, Duration::from_secs(30)),
            good_client(addr, "good.test", "good"),
        );
        assert_eq!(closed.reply, ALERT_INTERNAL_ERROR);
        assert!(
            closed.after < bound,
            "answered after {:?} (the resolver says no in {lookup_time:?})",
            closed.after
        );
        assert!(good < Duration::from_secs(1), "{good:?}");
    }
    // A name that does not resolve does not spoil its route's other
    // upstreams; names that do resolve are used.
    for _ in 0..2 {
        good_client(addr, "mixed.test", "good").await;
        good_client(addr, "byname.test", "good").await;
    }

    wait_until("every tunnel counted", Duration::from_secs(5), || {
        let m = router.metrics();
        connections(&m, "mixed", "forwarded") == 2.0
            && connections(&m, "byname", "forwarded") == 2.0
    })
    .await;
    let m = router.metrics();
    assert_eq!(connections(&m, "nowhere", "upstream_unavailable"), 3.0);
    for l in route_logs(&router, "nowhere", 3) {
        assert_eq!(
            l["error"], "no upstream endpoint (names did not resolve, or discovery found no task)",
            "{l}"
        );
    }
    router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "upstream name did not resolve; keeping its last known addresses"
    });
    let status: serde_json::Value = serde_json::from_str(&router.admin_get("/status").1).unwrap();
    let route = |name: &str| {
        status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(route("nowhere")["endpoints"], serde_json::json!([]));
    let mixed: Vec<String> = route("mixed")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(mixed, [up.addr.to_string()]);
    wait_fds(&router, fds, FD_SLACK, "after unresolvable names").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_route_down_and_back() {
    let _turn = crate::common::heavy();
    let good = Upstream::start("good", Behaviour::Greet);
    let flappy = Upstream::start("flappy", Behaviour::Greet);
    let flappy_addr = flappy.addr;
    let router = Router::start(&config(
        "client_hello: 1s, connect: 500ms",
        "",
        good.addr,
        &format!(
            r#"
  - name: flappy
    server_names: [flappy.test]
    upstreams: ["{flappy_addr}"]
    health_check: {{interval: 200ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2}}
"#
        ),
    ));
    let addr = router.addr();
    let healthy = || {
        metric(
            &router.metrics(),
            "sniroute_upstream_healthy",
            &[("route", "flappy"), ("upstream", &flappy_addr.to_string())],
        )
    };
    let status_healthy = || -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&router.admin_get("/status").1).unwrap();
        let route = status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "flappy")
            .unwrap()
            .clone();
        route["endpoints"][0]["healthy"].clone()
    };
    good_client(addr, "flappy.test", "flappy").await;
    assert_eq!(healthy(), Some(1.0));
    let fds = router.open_fds();

    // Down: marked unhealthy after two failed checks; clients are told.
    flappy.stop();
    let stopped = Instant::now();
    wait_until("flappy marked down", Duration::from_secs(5), || {
        healthy() == Some(0.0)
    })
    .await;
    let down_after = stopped.elapsed();
    assert_eq!(status_healthy(), false);
    router.wait_log(Duration::from_secs(1), |l| {
        l["message"] == "upstream failed its health checks; marked down"
    });
    let closed =
        send_and_wait_close(addr, &hello("flappy.test"), None, Duration::from_secs(5)).await;
    assert_eq!(closed.reply, ALERT_INTERNAL_ERROR);
    good_client(addr, "good.test", "good").await;

    // Back on the same port: healthy again after two good checks.
    let deadline = Instant::now() + Duration::from_secs(5);
    let flappy = loop {
        match Upstream::bind("flappy", Behaviour::Greet, flappy_addr) {
            Ok(g) => break g,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot bind {flappy_addr} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let restarted = Instant::now();
    wait_until("flappy healthy again", Duration::from_secs(5), || {
        healthy() == Some(1.0)
    })
    .await;
    let up_after = restarted.elapsed();
    assert_eq!(status_healthy(), true);
    router.wait_log(Duration::from_secs(1), |l| {
        l["message"] == "upstream is healthy again"
    });
    good_client(addr, "flappy.test", "flappy").await;
    assert!(flappy.accepted() >= 1);

    let m = router.metrics();
    assert_eq!(connections(&m, "flappy", "upstream_unavailable"), 1.0);
    wait_fds(&router, fds, FD_SLACK, "after the route came back").await;
    eprintln!("route down and back: marked down after {down_after:?}, up after {up_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_router_runs_out_of_file_descriptors() {
    let _turn = crate::common::heavy();
    const IDLE: usize = 100;
    let up = Upstream::start("good", Behaviour::Greet);
    // A long hello timeout: idle connections hold their descriptor. The
    // `checked` route's health checks run every 100 ms and mark the
    // endpoint down after one failure: a check that cannot even open a
    // socket says nothing about the endpoint and must not count.
    let checked = format!(
        r#"  - name: checked
    server_names: [checked.test]
    upstreams: ["{}"]
    health_check: {{interval: 100ms, timeout: 100ms, unhealthy_after: 1, healthy_after: 1}}
"#,
        up.addr
    );
    let mut router = Router::start(&config(
        "client_hello: 30s, connect: 500ms",
        "",
        up.addr,
        &checked,
    ));
    let addr = router.addr();
    good_client(addr, "good.test", "good").await;
    let checked_healthy = |router: &Router| {
        metric(
            &router.metrics(),
            "sniroute_upstream_healthy",
            &[("route", "checked"), ("upstream", &up.addr.to_string())],
        )
    };
    // Unknown (0) until its first check, which runs at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checked_healthy(&router) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            checked_healthy(&router)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fds = router.open_fds();
    let limit = 64.max(fds + 24);
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(router.pid().to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit(1) (util-linux) is needed");
    assert!(status.success());

    // Idle connections until accept(2) fails with EMFILE; the kernel keeps
    // queueing the rest.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let log = router.wait_log(Duration::from_secs(10), |l| {
        l["message"] == "accept failed; pausing this listener"
    });
    let error = log["error"].as_str().unwrap();
    assert!(error.contains("Too many open files"), "{error}");
    assert!(router.open_fds() >= limit - 2, "{} fds", router.open_fds());
    // A good client waits in the queue meanwhile...
    let waiting = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), reach(addr, &hello("good.test"))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "served while out of descriptors? {:?}",
        waiting.await
    );
    assert!(router.is_running(), "the router died out of descriptors");

    // ...and is served once descriptors are free again.
    drop(idle);
    let got = waiting
        .await
        .unwrap()
        .expect("served within 30 s of the recovery")
        .unwrap();
    assert_eq!(got, "good");
    good_client(addr, "good.test", "good").await;
    assert!(router.is_running());

    let mut m = String::new();
    wait_until(
        "every idle connection counted",
        Duration::from_secs(15),
        || {
            m = router.metrics();
            connections(&m, "none", "client_closed") == IDLE as f64
        },
    )
    .await;
    assert!(
        metric(&m, "sniroute_accept_errors_total", &[("error", "emfile")]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    let marked_down = router
        .logs()
        .into_iter()
        .find(|l| l["message"] == "upstream failed its health checks; marked down");
    assert!(
        marked_down.is_none(),
        "the router's own fd shortage marked an endpoint down: {marked_down:?}"
    );
    assert_eq!(checked_healthy(&router), Some(1.0));
    let inconclusive = router
        .logs()
        .into_iter()
        .any(|l| l["message"] == "health check skipped: no file descriptor for the probe");
    assert!(inconclusive, "no health check ran while out of descriptors");
    wait_fds(&router, fds, FD_SLACK, "after running out of descriptors").await;
}

// ---------------------------------------------------------------------------
// 5. Load: thousands of checksummed tunnels while reloading
// ---------------------------------------------------------------------------

fn seed_up(id: u64) -> u64 {
    0x5eed_0000_0000_0000 | id << 1
}

fn seed_down(id: u64) -> u64 {
    0x5eed_0000_0000_0000 | id << 1 | 1
}

/// Rewrites the config, sends SIGHUP and waits (through the metrics, which
/// stay cheap however long the log grows) until the reload succeeded.
fn reload_confirmed(router: &Router, yaml: &str) {
    let m = router.metrics();
    let (ok, failed) = (reloads(&m, "success"), reloads(&m, "failure"));
    std::fs::write(&router.config_path, yaml).unwrap();
    router.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = router.metrics();
        assert_eq!(reloads(&m, "failure"), failed, "a reload failed");
        if reloads(&m, "success") > ok {
            return;
        }
        assert!(Instant::now() < deadline, "reload not done within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reloads the router every second (alternating two configs) until `stop`,
/// counting successful reloads in `done`; returns the count.
fn reload_every_second(
    router: Arc<Router>,
    configs: [String; 2],
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let n = done.load(Ordering::Relaxed);
            reload_confirmed(&router, &configs[n % 2]);
            done.store(n + 1, Ordering::Relaxed);
            let rest = Duration::from_secs(1).saturating_sub(started.elapsed());
            // Sleep in small steps so that `stop` is seen promptly.
            let until = Instant::now() + rest;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        done.load(Ordering::Relaxed)
    })
}

fn bulk_configs(upstream: SocketAddr, other: SocketAddr) -> [String; 2] {
    let base = format!(
        r#"
listeners: ["{LISTENER}"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 5s, connect: 5s}}
# Thousands of clients on one address (127.0.0.1) connect at once: the
# per-source and global pending-hello limits would refuse some.
limits: {{max_pending_hellos: 20000, max_pending_hellos_per_source: 20000}}
routes:
  - name: bulk
    server_names: [bulk.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    );
    let more = format!(
        r#"  - name: extra
    server_names: [extra.test]
    upstreams: ["{other}"]
"#
    );
    [base.clone(), base + &more]
}

/// One round: `n` tunnels opened (all open at once, and a reload while
/// they are), then `bytes` each way through every one, checked word by
/// word. Panics on any loss, reordering or mix-up.
async fn tunnel_round(
    router: &Router,
    upstream: &Arc<TcpListener>,
    n: usize,
    bytes: u64,
    reloaded: &AtomicUsize,
) {
    let addr = router.addr();
    let hello = Arc::new(hello("bulk.test"));
    let hello_len = hello.len();
    let ready = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);

    // The upstream side: accept n, read hello and id, wait, then stream.
    let acceptor = {
        let upstream = upstream.clone();
        let ready = ready.clone();
        let go = go_rx.clone();
        tokio::spawn(async move {
            let mut sides = Vec::with_capacity(n);
            for _ in 0..n {
                let (mut s, _) = upstream.accept().await.unwrap();
                let ready = ready.clone();
                let mut go = go.clone();
                sides.push(tokio::spawn(async move {
                    let mut head = vec![0u8; hello_len + 8];
                    s.read_exact(&mut head).await.unwrap();
                    let id = u64::from_le_bytes(head[hello_len..].try_into().unwrap());
                    ready.fetch_add(1, Ordering::Relaxed);
                    go.wait_for(|&go| go).await.unwrap();
                    let (r, w) = s.into_split();
                    let (sent, got) = tokio::join!(
                        pattern::send(w, bytes, seed_down(id), 8 * 1024),
                        pattern::check(r, seed_up(id), 8 * 1024)
                    );
                    sent.unwrap_or_else(|e| panic!("upstream of tunnel {id}: write: {e}"));
                    let got =
                        got.unwrap_or_else(|e| panic!("tunnel {id}, client to upstream: {e}"));
                    (id, got)
                }));
            }
            sides
        })
    };

    // The client side: connect (64 at a time), send hello and id, wait.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let mut clients = Vec::with_capacity(n);
    for id in 0..n as u64 {
        let hello = hello.clone();
        let connecting = connecting.clone();
        let mut go = go_rx.clone();
        clients.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&hello).await.unwrap();
            s.write_all(&id.to_le_bytes()).await.unwrap();
            drop(permit);
            go.wait_for(|&go| go).await.unwrap();
            let (r, w) = s.into_split();
            let (sent, got) = tokio::join!(
                pattern::send(w, bytes, seed_up(id), 8 * 1024),
                pattern::check(r, seed_down(id), 8 * 1024)
            );
            sent.unwrap_or_else(|e| panic!("client of tunnel {id}: write: {e}"));
            let got = got.unwrap_or_else(|e| panic!("tunnel {id}, upstream to client: {e}"));
            (id, got)
        }));
    }
    let opening = Instant::now();
    let deadline = opening + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < n {
        if Instant::now() >= deadline {
            // What the router said about the missing ones.
            let warnings: Vec<String> = router
                .logs()
                .iter()
                .filter(|l| l["level"] != "INFO" && l["level"] != "DEBUG")
                .rev()
                .take(20)
                .map(ToString::to_string)
                .collect();
            let counts: Vec<String> = router
                .metrics()
                .lines()
                .filter(|l| {
                    (l.starts_with("sniroute_connections_total")
                        || l.starts_with("sniroute_upstream_connect")
                        || l.starts_with("sniroute_hello_refusals")
                        || l.starts_with("sniroute_tunnels_ended_total"))
                        && !l.ends_with(" 0")
                })
                .map(str::to_owned)
                .collect();
            panic!(
                "only {} of {n} tunnels open after 120 s; the router's last warnings (newest first): {warnings:#?}; its counters: {counts:#?}",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = opening.elapsed();
    let m = router.metrics();
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "bulk")]),
        Some(n as f64),
        "all tunnels open at once"
    );
    // Let the reloader put a new config in force under all of them.
    let before = reloaded.load(Ordering::Relaxed);
    wait_until(
        "a reload with every tunnel open",
        Duration::from_secs(10),
        || reloaded.load(Ordering::Relaxed) > before,
    )
    .await;
    assert_eq!(
        metric(&router.metrics(), "sniroute_tunnels_on_old_config", &[]),
        Some(n as f64)
    );

    let streaming = Instant::now();
    go_tx.send(true).unwrap();
    let transfer = async {
        let mut down = vec![false; n];
        for c in clients {
            let (id, got) = c.await.unwrap();
            assert_eq!(got, bytes, "tunnel {id}: upstream to client");
            down[id as usize] = true;
        }
        let mut up = vec![false; n];
        for side in acceptor.await.unwrap() {
            let (id, got) = side.await.unwrap();
            assert_eq!(got, bytes, "tunnel {id}: client to upstream");
            assert!(!up[id as usize], "tunnel {id} arrived twice");
            up[id as usize] = true;
        }
        assert!(down.iter().chain(&up).all(|&b| b));
    };
    tokio::time::timeout(Duration::from_secs(300), transfer)
        .await
        .expect("every tunnel done within 300 s");
    eprintln!(
        "{n} tunnels opened in {opened:?}, {} MiB each way in {:?}",
        (n as u64 * bytes) >> 20,
        streaming.elapsed()
    );
}

/// Runs tunnel rounds for at least `duration` (one round when zero) while
/// reloading every second; checks counts, logs, descriptors and (when
/// soaking) that memory does not grow from round to round.
///
/// Descriptor budget, per tunnel: the test holds both ends (2); the router
/// holds two sockets and, while a direction has bytes in flight, a pipe
/// for it (2 fds each, so up to 6 in all). `router_fds_per_tunnel` says
/// which to plan for: with 64 KiB streams the socket buffers take each
/// stream whole and few pipes are held at once (5,000 tunnels peaked at
/// 10,018 router fds, under 20,000 `ulimit -n`), megabyte streams need the
/// full 6. Both processes get this process's hard limit (the router raises
/// its soft limit itself); the tunnel count shrinks to fit with 1,024 to
/// spare, so the router never runs out in the middle (it would fall back
/// to copying, but reloads and `/metrics` need descriptors too).
async fn load_with_reloads(
    tunnels: usize,
    bytes: u64,
    duration: Duration,
    router_fds_per_tunnel: usize,
    abuse: bool,
) {
    let soak = !duration.is_zero();
    let soft = raise_nofile_limit() as usize;
    let hard = nofile_limits().1.min(1 << 20) as usize;
    let n = tunnels
        .min(soft.saturating_sub(1024) / 2)
        .min(hard.saturating_sub(1024) / router_fds_per_tunnel);
    if n < tunnels {
        eprintln!("RLIMIT_NOFILE is {soft}/{hard}: {n} tunnels instead of {tunnels}");
    }
    assert!(n >= 500, "RLIMIT_NOFILE {soft} is too low for a load test");
    // The router opens all `n` upstream connections at once while this
    // process is busy with `n` clients: with tokio's default backlog (1,024)
    // the accept queue overflowed, handshakes the router took for made were
    // dropped here, and their tunnels ended in resets (the soak lost a few
    // of 2,000 every few rounds). 4,096 (the kernel caps it at
    // `net.core.somaxconn`, 4,096 by default) holds a 2,000-tunnel round.
    let upstream = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Arc::new(socket.listen(4096).unwrap())
    };
    let configs = bulk_configs(upstream.local_addr().unwrap(), refusing_port());
    // A soak would log millions of lines: access logs off.
    let router = Arc::new(Router::start_with(&configs[0], |cmd| {
        if soak {
            cmd.args(["--log-level", "sniroute::access=warn,info"]);
        }
    }));
    let fds = router.open_fds();
    let rss = router.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the helper threads (which keep the router alive) even when an
    // assertion fails.
    let _stop_on_drop = StopOnDrop(stop.clone());
    let reloaded = Arc::new(AtomicUsize::new(0));
    let reloader = reload_every_second(router.clone(), configs, stop.clone(), reloaded.clone());
    let sampler = {
        let (router, stop) = (router.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(Ordering::Relaxed) {
                most = most.max(router.open_fds());
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };

    let started = Instant::now();
    let mut rounds = 0;
    let mut rss_first_round = 0;
    loop {
        let attack = abuse.then(|| tokio::spawn(abuse_burst(router.addr())));
        tunnel_round(&router, &upstream, n, bytes, &reloaded).await;
        if let Some(attack) = attack {
            attack.await.expect("the abuse burst failed");
        }
        rounds += 1;
        wait_until("tunnels closed", Duration::from_secs(30), || {
            metric(
                &router.metrics(),
                "sniroute_active_tunnels",
                &[("route", "bulk")],
            ) == Some(0.0)
        })
        .await;
        // The splice pool may keep up to 256 spare pipes.
        wait_fds(&router, fds, 2 * 256 + FD_SLACK, "after a round").await;
        let rss_now = router.rss_kib();
        if rounds == 1 {
            rss_first_round = rss_now;
        }
        // Buffers and pools are sized by the first round; later rounds
        // must not add to them.
        assert!(
            rss_now <= rss_first_round + 32 * 1024,
            "round {rounds}: RSS {rss_now} KiB, {rss_first_round} KiB after the first"
        );
        eprintln!(
            "round {rounds} done after {:?}: router RSS {rss_now} KiB, {} fds",
            started.elapsed(),
            router.open_fds()
        );
        if started.elapsed() >= duration {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reloaded = tokio::task::spawn_blocking(move || reloader.join())
        .await
        .unwrap()
        .expect("the reloading thread failed");
    let most_fds = sampler.join().unwrap();
    let elapsed = started.elapsed();
    assert!(
        reloaded >= 2 && reloaded as f64 >= elapsed.as_secs_f64() / 2.0,
        "{reloaded} reloads in {elapsed:?}"
    );

    let total = (rounds * n) as f64;
    let mut m = String::new();
    wait_until("every tunnel counted", Duration::from_secs(30), || {
        m = router.metrics();
        connections(&m, "bulk", "forwarded") == total
    })
    .await;
    assert_eq!(reloads(&m, "success"), reloaded as f64);
    assert_eq!(reloads(&m, "failure"), 0.0);
    assert_eq!(
        metric(&m, "sniroute_config_generation", &[]),
        Some(1.0 + reloaded as f64)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_tunnels_ended_total",
            &[("route", "bulk"), ("end", "finished")]
        ),
        Some(total)
    );
    let hello_len = hello("bulk.test").len() as u64;
    let expect_up = (hello_len + 8 + bytes) as f64 * total;
    let expect_down = bytes as f64 * total;
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "bulk"), ("direction", "client_to_upstream")]
        ),
        Some(expect_up)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "bulk"), ("direction", "upstream_to_client")]
        ),
        Some(expect_down)
    );
    if !soak {
        let logs = router.wait_access_logs(n, Duration::from_secs(10));
        assert_eq!(logs.len(), n);
        for l in &logs {
            assert_eq!(l["end"], "finished", "{l}");
            assert_eq!(l["bytes_client_to_upstream"], hello_len + 8 + bytes, "{l}");
            assert_eq!(l["bytes_upstream_to_client"], bytes, "{l}");
        }
    }
    assert!(
        !router
            .logs()
            .iter()
            .any(|l| l["message"] == "accept failed; pausing this listener"),
        "the router ran out of descriptors"
    );
    let rss_after = router.rss_kib();
    eprintln!(
        "{rounds} rounds of {n} tunnels, {reloaded} reloads in {elapsed:?}; RSS {rss} -> {rss_after} KiB; \
         router fds {fds} at start, {most_fds} at most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_tunnels_survive_reloads_intact() {
    let _turn = crate::common::heavy();
    load_with_reloads(5000, 64 * 1024, Duration::ZERO, 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 10 minutes; cargo test --release --test e2e resilience -- --ignored"]
async fn soak_tunnels_and_reloads() {
    let _turn = crate::common::heavy();
    load_with_reloads(5000, 256 * 1024, soak_duration(), 6, false).await;
}

/// The abuse of a public port, one burst per tunnel round: header-only
/// hellos promising 16 KiB (held half a second), ALPN-heavy hellos for a
/// name no route claims, garbage, and connections reset at once, from
/// several 127.0.2.x addresses.
async fn abuse_burst(addr: SocketAddr) {
    let from = |i: usize| -> std::net::IpAddr {
        std::net::Ipv4Addr::new(127, 0, 2, 1 + (i % 50) as u8).into()
    };
    let connect = |i: usize| async move {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from(i), 0)).ok()?;
        socket.connect(addr).await.ok()
    };
    let mut held = Vec::new();
    for i in 0..300 {
        if let Some(mut s) = connect(i).await {
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x3f, 0xfb]).await;
            held.push(s);
        }
    }
    let names: Vec<[u8; 1]> = (0..7900u32).map(|i| [b'a' + (i % 26) as u8]).collect();
    let names: Vec<&[u8]> = names.iter().map(|n| &n[..]).collect();
    let heavy = HelloBuilder::new("nobody.test").alpn(&names).build();
    for i in 0..50 {
        if let Some(mut s) = connect(i).await {
            let _ = s.write_all(&heavy).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
        }
    }
    for i in 0..200 {
        if let Some(mut s) = connect(i).await {
            let _ = s.write_all(&[0x42; 64]).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);
}

/// 2,000 tunnels of 256 KiB each way cycling for 30 minutes (or
/// `SNIROUTE_SOAK_SECS`), reloads every second, and a burst of abuse
/// ([`abuse_burst`]) with every round. After each round the router's
/// descriptors must come back to their level at start (plus the splice
/// pipe pool's spares) and its RSS stay within 32 MiB of the first round's:
/// the first round sizes the allocator's arenas and the pools for 2,000
/// tunnels and the burst, so growth past that is a leak (32 MiB is about
/// 16 KiB per tunnel, far above what a tunnel holds, and far below what a
/// leak of one buffer per connection would add over 30 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 30 minutes; cargo test --release --test e2e soak_tunnels_with_abuse -- --ignored"]
async fn soak_tunnels_with_abuse() {
    let _turn = crate::common::heavy();
    let duration = std::env::var("SNIROUTE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    load_with_reloads(2000, 256 * 1024, duration, 6, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 10 minutes; cargo test --release --test e2e resilience -- --ignored"]
async fn soak_slowloris() {
    let _turn = crate::common::heavy();
    const N: usize = 2000;
    let up = Upstream::start("good", Behaviour::Greet);
    let router = Router::start_with(
        &config(
            "client_hello: 2s, connect: 500ms",
            "max_pending_hellos: 10000, max_pending_hellos_per_source: 10000",
            up.addr,
            "",
        ),
        |cmd| {
            cmd.args(["--log-level", "sniroute::access=warn,info"]);
        },
    );
    good_client(router.addr(), "good.test", "good").await;
    let fds = router.open_fds();
    let started = Instant::now();
    let duration = soak_duration();
    let Attack {
        closed,
        good,
        most_open,
        rss,
    } = slowloris(&router, N, Duration::from_secs(2), duration).await;
    let slowest = good.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "a good client took {slowest:?} during the attack"
    );
    assert!(most_open >= N as u64, "at most {most_open} open at once");
    let m = router.metrics();
    assert_eq!(
        connections(&m, "none", "client_hello_timeout"),
        closed as f64
    );
    wait_fds(&router, fds, FD_SLACK, "after the slow-loris").await;
    // Memory reaches its level with the attack in full swing (the first
    // quarter), then must stay there.
    let warm = rss
        .iter()
        .filter(|(at, _)| *at <= duration / 4)
        .map(|&(_, kib)| kib)
        .max()
        .unwrap();
    let last = rss.last().unwrap().1;
    assert!(
        last <= warm + 16 * 1024,
        "RSS grew from {warm} KiB (first quarter) to {last} KiB"
    );
    eprintln!(
        "slow-loris soak: {closed} connections cut in {:?}; {} good clients, slowest {slowest:?}; RSS {warm} -> {last} KiB",
        started.elapsed(),
        good.len()
    );
}
