//! Tunnels through the real binary: half-close, resets, idle timeout, bulk
//! transfer with checksums, many concurrent tunnels. The test holds both
//! ends: the client socket and the upstream side accepted from its own
//! listener.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{metric, pattern, Router};
use clienthello::synth::HelloBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
{extra}
routes:
  - name: bulk
    server_names: [bulk.test]
    upstreams: ["{upstream}"]
    health_check: false
"#
    )
}

/// Opens a tunnel: connects to the router, sends a hello, accepts the
/// upstream side and reads the hello off it. Returns (client, upstream).
async fn open(router: SocketAddr, upstream: &TcpListener) -> (TcpStream, TcpStream) {
    let hello = HelloBuilder::new("bulk.test").build();
    let mut client = TcpStream::connect(router).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let (mut up, _) = tokio::time::timeout(Duration::from_secs(10), upstream.accept())
        .await
        .expect("router connects upstream")
        .unwrap();
    let mut got = vec![0u8; hello.len()];
    up.read_exact(&mut got).await.unwrap();
    assert_eq!(got, hello);
    (client, up)
}

async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("EOF within 10 s")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_either_side_keeps_the_other_direction() {
    let _turn = crate::common::light();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::start(&config(upstream.local_addr().unwrap(), ""));

    // Client closes its sending side first.
    let (mut client, mut up) = open(router.addr(), &upstream).await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut up).await, b"request");
    up.write_all(b"response after the client's FIN")
        .await
        .unwrap();
    up.shutdown().await.unwrap();
    assert_eq!(
        read_to_end(&mut client).await,
        b"response after the client's FIN"
    );

    // Upstream closes its sending side first.
    let (mut client, mut up) = open(router.addr(), &upstream).await;
    up.write_all(b"banner").await.unwrap();
    up.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"banner");
    client.write_all(b"still talking").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut up).await, b"still talking");

    // Lines are written at teardown, so their order may differ from the
    // order of the tunnels; tell them apart by the bytes each carried.
    let logs = router.wait_access_logs(2, Duration::from_secs(5));
    let by_reply = |n: usize| {
        logs.iter()
            .find(|l| l["bytes_upstream_to_client"] == n)
            .unwrap_or_else(|| panic!("no line with {n} bytes back: {logs:?}"))
    };
    let first = by_reply(b"response after the client's FIN".len());
    let second = by_reply(b"banner".len());
    assert_eq!(first["closed_first"], "client");
    assert_eq!(second["closed_first"], "upstream");
    assert_eq!(first["end"], "finished");
    assert_eq!(second["end"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_closes_the_client_promptly() {
    let _turn = crate::common::light();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::start(&config(upstream.local_addr().unwrap(), ""));
    let (mut client, up) = open(router.addr(), &upstream).await;
    let started = Instant::now();
    // SO_LINGER 0: close sends RST instead of FIN.
    socket2::SockRef::from(&up)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(up);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("client notices within 5 s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let logs = router.wait_access_logs(1, Duration::from_secs(5));
    assert_eq!(logs[0]["end"], "upstream_reset", "{}", logs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let _turn = crate::common::light();
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::start(&config(
        upstream.local_addr().unwrap(),
        "timeouts: {idle: 1s}",
    ));
    let (mut client, mut up) = open(router.addr(), &upstream).await;
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        up.read_exact(&mut b).await.unwrap();
    }
    // ...silence closes it.
    let started = Instant::now();
    assert_eq!(read_to_end(&mut client).await, b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let logs = router.wait_access_logs(1, Duration::from_secs(5));
    assert_eq!(logs[0]["end"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_arrives_intact() {
    let _turn = crate::common::light();
    const GIB: u64 = 1 << 30;
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::start(&config(upstream.local_addr().unwrap(), ""));
    let (client, up) = open(router.addr(), &upstream).await;
    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = up.into_split();
    let started = Instant::now();
    const BUF: usize = 256 * 1024;
    let (sent_up, sent_down, down, upb) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(
            pattern::send(client_w, GIB, 0x1111, BUF),
            pattern::send(up_w, GIB, 0x2222, BUF),
            pattern::check(client_r, 0x2222, BUF),
            pattern::check(up_r, 0x1111, BUF),
        )
    })
    .await
    .expect("2 GiB within 240 s");
    sent_up.unwrap();
    sent_down.unwrap();
    let (down, upb) = (down.unwrap(), upb.unwrap());
    assert_eq!(down, GIB);
    assert_eq!(upb, GIB);
    eprintln!("2 GiB through the router in {:?}", started.elapsed());

    let logs = router.wait_access_logs(1, Duration::from_secs(10));
    let hello = HelloBuilder::new("bulk.test").build().len() as u64;
    assert_eq!(logs[0]["bytes_client_to_upstream"], GIB + hello);
    assert_eq!(logs[0]["bytes_upstream_to_client"], GIB);
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "bulk"), ("direction", "client_to_upstream")]
        ),
        Some((GIB + hello) as f64)
    );
    assert_eq!(
        metric(
            &m,
            "sniroute_bytes_total",
            &[("route", "bulk"), ("direction", "upstream_to_client")]
        ),
        Some(GIB as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_tunnels() {
    let _turn = crate::common::heavy();
    const N: usize = 2000;
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    // An echo upstream that first swallows the hello.
    let hello = HelloBuilder::new("bulk.test").build();
    let hello_len = hello.len();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut h = vec![0u8; hello_len];
                if s.read_exact(&mut h).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    // All 2,000 come from 127.0.0.1 at once: lift the per-source limit.
    let router = Router::start(&config(
        up_addr,
        "limits: {max_pending_hellos: 10000, max_pending_hellos_per_source: 10000}",
    ));
    let addr = router.addr();
    let fds_before = router.open_fds();

    // Open all tunnels and exchange a first message on each.
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&hello).await.unwrap();
        c.write_all(format!("tunnel {i:05}").as_bytes())
            .await
            .unwrap();
        clients.push(c);
    }
    let mut tasks = Vec::with_capacity(N);
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 12];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, format!("tunnel {i:05}").as_bytes());
            c
        }));
    }
    let mut clients = Vec::with_capacity(N);
    for t in tasks {
        clients.push(
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let m = router.metrics();
    assert_eq!(
        metric(&m, "sniroute_active_tunnels", &[("route", "bulk")]),
        Some(N as f64)
    );
    // Two sockets per tunnel and no pipe held while idle.
    let fds = router.open_fds();
    assert!(
        fds <= fds_before + 2 * N + 16,
        "{fds} fds for {N} idle tunnels (before: {fds_before})"
    );

    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = router.metrics();
        if metric(&m, "sniroute_active_tunnels", &[("route", "bulk")]) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "tunnels not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = router.metrics();
    assert_eq!(
        metric(
            &m,
            "sniroute_connections_total",
            &[
                ("listener", "127.0.0.1:0"),
                ("route", "bulk"),
                ("result", "forwarded")
            ]
        ),
        Some(N as f64)
    );
    // Every descriptor is returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.open_fds() > fds_before + 4 {
        assert!(
            Instant::now() < deadline,
            "fds leaked: {} > {}",
            router.open_fds(),
            fds_before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
