//! Health checks that know a Kubernetes API server, against a faithful fake
//! one, and passive outlier detection.
//!
//! [`ApiServer`] stands for a kube-apiserver: TLS with a certificate from an
//! rcgen-made cluster CA (optionally requiring a client certificate, as an
//! API server with anonymous auth turned off does), HTTP/1.1, `GET /readyz`
//! answering `200 ok`, or, while it shuts down, `503` with the
//! `[+]check ok` / `[-]shutdown failed: reason withheld` lines a real one
//! writes; any other path answers with the cluster's name, so a test knows
//! where a tunnel went. A real API server cannot run here (it needs etcd and
//! a control plane); its `/readyz` wire format is all the router sees.
//!
//! The router runs as the real binary; its clients are rustls clients that
//! verify the cluster's certificate through the tunnel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clienthello::synth::HelloBuilder;
use demo::{Ca, Identity};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::common::{answer, metric, Router};

/// The name the clusters' API server certificates carry, and clients send.
const NAME: &str = "api.cluster.test";
const ALERT_INTERNAL_ERROR: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// What the fake API server's `/readyz` does.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `200 ok`.
    Ready,
    /// `503` with the failed `shutdown` check, as during graceful
    /// termination.
    ShuttingDown,
    /// `200 ok`, after this long.
    Slow(Duration),
}

/// A fake kube-apiserver on loopback (see the module docs).
struct ApiServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// Requests other than `/readyz` (client traffic through the router).
    served: Arc<AtomicUsize>,
    /// `/readyz` requests.
    readyz: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ApiServer {
    /// Serves `identity`; with `client_ca`, requires a client certificate
    /// from that CA.
    fn start(name: &'static str, identity: &Identity, client_ca: Option<&Ca>) -> ApiServer {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.root_store()),
                    provider(),
                )
                .build()
                .unwrap(),
            ),
        };
        let mut config = builder
            .with_single_cert(identity.cert_chain(), identity.private_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Ready));
        let served = Arc::new(AtomicUsize::new(0));
        let readyz = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (m, s, r) = (mode.clone(), served.clone(), readyz.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, m, s, r) = (acceptor.clone(), m.clone(), s.clone(), r.clone());
                    tokio::spawn(async move {
                        let accept =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                        if let Ok(Ok(tls)) = accept.await {
                            serve(tls, name, &m, &s, &r).await;
                        }
                    });
                }
            });
        });
        ApiServer {
            addr,
            mode,
            served,
            readyz,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP/1.1 requests on one connection until the client closes or asks to.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: S,
    name: &str,
    mode: &Mutex<Mode>,
    served: &AtomicUsize,
    readyz: &AtomicUsize,
) {
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 16 * 1024 {
                return;
            }
        };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let close = head.to_ascii_lowercase().contains("connection: close");
        let (status, body) = if path == "/readyz" {
            readyz.fetch_add(1, Ordering::SeqCst);
            let current = *mode.lock().unwrap();
            match current {
                Mode::Ready => ("200 OK", "ok".to_owned()),
                Mode::Slow(d) => {
                    tokio::time::sleep(d).await;
                    ("200 OK", "ok".to_owned())
                }
                Mode::ShuttingDown => (
                    "503 Service Unavailable",
                    "[+]ping ok\n[+]log ok\n[+]etcd ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n"
                        .to_owned(),
                ),
            }
        } else {
            served.fetch_add(1, Ordering::SeqCst);
            ("200 OK", format!("{name}\n"))
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        if close {
            let _ = tls.shutdown().await;
            return;
        }
    }
}

/// A TLS connection to the cluster through the router, verified against `ca`.
async fn open(
    router: SocketAddr,
    ca: &Ca,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(None)));
    let tcp = tokio::net::TcpStream::connect(router).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake within 10 s")
        .expect("the cluster's certificate verifies through the router")
}

/// `GET path` on an open connection (kept alive): the body.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s")
}

/// Which cluster a new connection through the router reaches.
async fn reach_cluster(router: SocketAddr, ca: &Ca) -> String {
    let mut tls = open(router, ca).await;
    ask(&mut tls, "/name").await.trim().to_owned()
}

/// The `/status` entry of endpoint `addr` of `route`.
fn endpoint(router: &Router, route: &str, addr: SocketAddr) -> Value {
    let (code, body) = router.admin_get("/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == route)
        .unwrap_or_else(|| panic!("no route {route}: {status}"))["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in {route}: {status}"))
        .clone()
}

/// Waits until the endpoint is in `state`; returns its `/status` entry and
/// how long it took.
fn wait_state(
    router: &Router,
    route: &str,
    addr: SocketAddr,
    state: &str,
    timeout: Duration,
) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let ep = endpoint(router, route, addr);
        if ep["state"] == state {
            return (ep, started.elapsed());
        }
        assert!(
            started.elapsed() < timeout,
            "{route} {addr} not {state} within {timeout:?}: {ep}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Writes `text` to `path` atomically (a rename), as configuration
/// management tools do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutting_down_api_server_leaves_and_comes_back_and_open_tunnels_stream_on() {
    let _turn = crate::common::light();
    let ca = Ca::new("cluster CA");
    let identity = ca.server_identity(&[NAME]);
    let a = ApiServer::start("a", &identity, None);
    let b = ApiServer::start("b", &identity, None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert_pem());
    let interval = Duration::from_millis(300);
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: k8s
    server_names: ["{NAME}"]
    upstreams: ["{}", "{}"]
    balance: round_robin
    health_check:
      kind: kubernetes
      server_name: {NAME}
      ca_file: {}
      interval: 300ms
      timeout: 250ms
      unhealthy_after: 2
      healthy_after: 2
"#,
        a.addr,
        b.addr,
        ca_file.display()
    ));
    let addr = router.addr();
    for ep in [a.addr, b.addr] {
        wait_state(&router, "k8s", ep, "healthy", Duration::from_secs(10));
    }
    // A tunnel to `a`, found by opening connections until one lands there.
    let mut tunnel = loop {
        let mut tls = open(addr, &ca).await;
        if ask(&mut tls, "/name").await.trim() == "a" {
            break tls;
        }
    };

    // `a` starts shutting down: /readyz 503 while its port still accepts.
    a.set(Mode::ShuttingDown);
    let (ep, took) = wait_state(&router, "k8s", a.addr, "unhealthy", Duration::from_secs(10));
    assert!(
        took <= interval * 3 + Duration::from_secs(1),
        "unhealthy after {took:?}; unhealthy_after × interval is {:?}",
        interval * 2
    );
    assert_eq!(ep["last_check"]["result"], "http_status");
    let reason = ep["last_check"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 503") && reason.contains("[-]shutdown failed: reason withheld"),
        "{reason}"
    );
    assert!(
        ep["last_check"]["latency_ms"].as_f64().unwrap() > 0.0,
        "{ep}"
    );
    // New connections go to `b` only.
    let before = a.served();
    for _ in 0..8 {
        assert_eq!(reach_cluster(addr, &ca).await, "b");
    }
    // The tunnel opened before keeps streaming.
    for _ in 0..3 {
        assert_eq!(ask(&mut tunnel, "/name").await.trim(), "a");
    }
    assert_eq!(a.served(), before + 3, "only the old tunnel reached a");

    // Back to 200: healthy again after healthy_after (2) passing checks.
    a.set(Mode::Ready);
    let readyz_before = a.readyz.load(Ordering::SeqCst);
    wait_state(&router, "k8s", a.addr, "healthy", Duration::from_secs(10));
    assert!(
        a.readyz.load(Ordering::SeqCst) >= readyz_before + 2,
        "one passing check is not enough"
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(reach_cluster(addr, &ca).await);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    let text = router.metrics();
    let checks = |result| {
        metric(
            &text,
            "sniroute_upstream_checks_total",
            &[("route", "k8s"), ("result", result)],
        )
        .unwrap_or_else(|| panic!("no checks_total for {result}:\n{text}"))
    };
    assert!(checks("ok") > 0.0 && checks("http_status") >= 2.0);
    assert_eq!(
        checks("certificate_mismatch"),
        0.0,
        "every result exists at 0"
    );
    assert_eq!(checks("timeout"), 0.0);
    let state = |s| {
        metric(
            &text,
            "sniroute_upstream_state",
            &[
                ("route", "k8s"),
                ("upstream", &a.addr.to_string()),
                ("state", s),
            ],
        )
    };
    assert_eq!(
        (state("healthy"), state("unhealthy")),
        (Some(1.0), Some(0.0))
    );
    // Each change was logged once.
    let changes: Vec<_> = router
        .logs()
        .into_iter()
        .filter(|l| l["upstream"] == a.addr.to_string() && l["state"] == "unhealthy")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_endpoints_never_get_traffic_not_even_as_a_last_resort() {
    let _turn = crate::common::light();
    let ca = Ca::new("cluster CA");
    let other = Ca::new("another cluster's CA");
    let good = ApiServer::start("good", &ca.server_identity(&[NAME]), None);
    let foreign = ApiServer::start(
        "foreign",
        &other.server_identity(&[NAME, "api.other.test"]),
        None,
    );
    let misnamed = ApiServer::start("misnamed", &ca.server_identity(&["api.wrong.test"]), None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert_pem());
    let check = format!(
        "{{kind: kubernetes, server_name: {NAME}, ca_file: {}, interval: 200ms, timeout: 150ms}}",
        ca_file.display()
    );
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: mixed
    server_names: ["{NAME}"]
    upstreams: ["{}", "{}", "{}"]
    health_check: {check}
  - name: alone
    server_names: ["alone.test"]
    upstreams: ["{}"]
    health_check: {check}
"#,
        good.addr, foreign.addr, misnamed.addr, foreign.addr
    ));
    let addr = router.addr();
    wait_state(
        &router,
        "mixed",
        good.addr,
        "healthy",
        Duration::from_secs(10),
    );
    let (ep, _) = wait_state(
        &router,
        "mixed",
        foreign.addr,
        "misrouted",
        Duration::from_secs(10),
    );
    assert_eq!(ep["last_check"]["result"], "certificate_mismatch");
    let reason = ep["reason"].as_str().unwrap();
    assert!(
        reason.contains("not issued by the route's ca_file")
            && reason.contains("presents api.cluster.test, api.other.test"),
        "{reason}"
    );
    let (ep, _) = wait_state(
        &router,
        "mixed",
        misnamed.addr,
        "misrouted",
        Duration::from_secs(10),
    );
    let reason = ep["reason"].as_str().unwrap();
    assert!(
        reason.contains("not valid for the check's server_name")
            && reason
                .contains("expected api.cluster.test, the certificate presents api.wrong.test"),
        "{reason}"
    );
    // The log line names what the certificate presents.
    router.wait_log(Duration::from_secs(5), |l| {
        l["state"] == "misrouted"
            && l["upstream"] == misnamed.addr.to_string()
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("presents api.wrong.test"))
    });

    for _ in 0..9 {
        assert_eq!(reach_cluster(addr, &ca).await, "good");
    }
    // With the good endpoint gone, the misrouted ones still get nothing:
    // the client gets internal_error, before and after the checks see it.
    let good_addr = good.addr;
    drop(good);
    let hello = HelloBuilder::new(NAME).build();
    assert_eq!(answer(addr, &hello), ALERT_INTERNAL_ERROR);
    wait_state(
        &router,
        "mixed",
        good_addr,
        "unhealthy",
        Duration::from_secs(10),
    );
    for _ in 0..3 {
        assert_eq!(answer(addr, &hello), ALERT_INTERNAL_ERROR);
    }
    // The only endpoint of a route, misrouted: refused too.
    wait_state(
        &router,
        "alone",
        foreign.addr,
        "misrouted",
        Duration::from_secs(10),
    );
    assert_eq!(
        answer(addr, &HelloBuilder::new("alone.test").build()),
        ALERT_INTERNAL_ERROR
    );
    assert_eq!(
        foreign.served() + misnamed.served(),
        0,
        "no client reached them"
    );
    let alone = router.wait_log(Duration::from_secs(5), |l| {
        l["target"] == "sniroute::access" && l["route"] == "alone"
    });
    assert_eq!(alone["result"], "upstream_unavailable");
    assert_eq!(
        alone["error"],
        format!(
            "no endpoint may take connections: {} is misrouted",
            foreign.addr
        )
    );
    let mixed = router.wait_log(Duration::from_secs(5), |l| {
        l["target"] == "sniroute::access"
            && l["route"] == "mixed"
            && l["result"] == "upstream_unavailable"
    });
    let error = mixed["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("not tried: {} is misrouted", foreign.addr))
            || error.contains(&format!("not tried: {} is misrouted", misnamed.addr)),
        "{error}"
    );
    let text = router.metrics();
    assert_eq!(
        metric(
            &text,
            "sniroute_upstream_state",
            &[
                ("route", "alone"),
                ("upstream", &foreign.addr.to_string()),
                ("state", "misrouted")
            ],
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "sniroute_upstream_checks_total",
            &[("route", "alone"), ("result", "certificate_mismatch")],
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_slow_answers_and_client_certificates() {
    let _turn = crate::common::light();
    let ca = Ca::new("cluster CA");
    let identity = ca.server_identity(&[NAME]);
    // Not TLS at all: greets with its name.
    let not_tls =
        crate::common::raw::Upstream::start("not-tls", crate::common::raw::Behaviour::Greet);
    let slow = ApiServer::start("slow", &identity, None);
    slow.set(Mode::Slow(Duration::from_secs(2)));
    // Anonymous requests refused: a client certificate is required.
    let strict = ApiServer::start("strict", &identity, Some(&ca));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &ca.cert_pem());
    let (cert, key) = ca
        .client_identity("system:sniroute")
        .write_to(dir.path(), "client")
        .unwrap();
    let check = |extra: &str| {
        format!(
            "{{kind: kubernetes, server_name: {NAME}, ca_file: {}, interval: 300ms, timeout: 250ms, unhealthy_after: 1{extra}}}",
            ca_file.display()
        )
    };
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: plain
    server_names: ["plain.test"]
    upstreams: ["{}", "{}", "{}"]
    health_check: {}
  - name: with-cert
    server_names: ["cert.test"]
    upstreams: ["{}"]
    health_check: {}
"#,
        not_tls.addr,
        slow.addr,
        strict.addr,
        check(""),
        strict.addr,
        check(&format!(
            ", client_certificate: {}, client_key: {}",
            cert.display(),
            key.display()
        )),
    ));
    let (ep, _) = wait_state(
        &router,
        "plain",
        not_tls.addr,
        "unhealthy",
        Duration::from_secs(10),
    );
    assert_eq!(ep["last_check"]["result"], "tls_error", "{ep}");
    assert!(
        ep["reason"]
            .as_str()
            .unwrap()
            .contains("TLS handshake failed"),
        "{ep}"
    );
    let (ep, _) = wait_state(
        &router,
        "plain",
        slow.addr,
        "unhealthy",
        Duration::from_secs(10),
    );
    assert_eq!(ep["last_check"]["result"], "timeout", "{ep}");
    let (ep, _) = wait_state(
        &router,
        "plain",
        strict.addr,
        "unhealthy",
        Duration::from_secs(10),
    );
    assert_eq!(ep["last_check"]["result"], "tls_error", "{ep}");
    assert!(
        ep["last_check"]["reason"]
            .as_str()
            .unwrap()
            .contains("CertificateRequired"),
        "{ep}"
    );
    // The same backend with the check's client certificate configured.
    let (ep, _) = wait_state(
        &router,
        "with-cert",
        strict.addr,
        "healthy",
        Duration::from_secs(10),
    );
    assert_eq!(ep["last_check"]["result"], "ok", "{ep}");
    // A slow answer within the timeout passes.
    slow.set(Mode::Slow(Duration::from_millis(20)));
    wait_state(
        &router,
        "plain",
        slow.addr,
        "healthy",
        Duration::from_secs(10),
    );
    let text = router.metrics();
    for result in ["tls_error", "timeout"] {
        assert!(
            metric(
                &text,
                "sniroute_upstream_checks_total",
                &[("route", "plain"), ("result", result)]
            )
            .unwrap()
                >= 1.0,
            "{result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_file_takes_effect_and_an_unreadable_one_keeps_the_last_good() {
    let _turn = crate::common::light();
    let old_ca = Ca::new("cluster CA 2025");
    let new_ca = Ca::new("cluster CA 2026");
    let server = ApiServer::start("k8s", &old_ca.server_identity(&[NAME]), None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &old_ca.cert_pem());
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: k8s
    server_names: ["{NAME}"]
    upstreams: ["{}"]
    health_check: {{kind: kubernetes, server_name: {NAME}, ca_file: {}, interval: 200ms, timeout: 150ms, healthy_after: 2}}
"#,
        server.addr,
        ca_file.display()
    ));
    wait_state(
        &router,
        "k8s",
        server.addr,
        "healthy",
        Duration::from_secs(10),
    );
    // The CA file now holds only the new CA: the old certificate is misrouted.
    replace_file(&ca_file, &new_ca.cert_pem());
    wait_state(
        &router,
        "k8s",
        server.addr,
        "misrouted",
        Duration::from_secs(10),
    );
    // Both CAs (the usual rotation bundle): healthy again.
    replace_file(
        &ca_file,
        &format!("{}{}", new_ca.cert_pem(), old_ca.cert_pem()),
    );
    wait_state(
        &router,
        "k8s",
        server.addr,
        "healthy",
        Duration::from_secs(10),
    );
    // A file that cannot be used keeps the bundle, logged and counted.
    replace_file(&ca_file, "not a certificate\n");
    router.wait_log(Duration::from_secs(10), |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("keeping the last good ones"))
            && l["error"] == "ca_file holds no certificate"
    });
    std::fs::remove_file(&ca_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failures = metric(
            &router.metrics(),
            "sniroute_upstream_ca_read_failures_total",
            &[("route", "k8s")],
        )
        .unwrap();
        if failures >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{failures} CA read failures");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ep, _) = wait_state(
        &router,
        "k8s",
        server.addr,
        "healthy",
        Duration::from_secs(1),
    );
    assert_eq!(ep["last_check"]["result"], "ok");
    // The new CA alone again: the state follows.
    replace_file(&ca_file, &new_ca.cert_pem());
    wait_state(
        &router,
        "k8s",
        server.addr,
        "misrouted",
        Duration::from_secs(10),
    );
    // A reload reads the file too (and checks it first: a missing one
    // fails the reload and changes nothing).
    std::fs::remove_file(&ca_file).unwrap();
    let yaml = std::fs::read_to_string(&router.config_path).unwrap();
    let failed = router.reload(&yaml);
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("config reload failed"),
        "{failed}"
    );
    assert!(
        failed.to_string().contains("cannot read ca_file"),
        "{failed}"
    );
    write(dir.path(), "ca.pem", &old_ca.cert_pem());
    let ok = router.reload(&yaml);
    assert_eq!(ok["message"], "config reloaded", "{ok}");
    wait_state(
        &router,
        "k8s",
        server.addr,
        "healthy",
        Duration::from_secs(10),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_on_live_traffic_eject_an_endpoint() {
    let _turn = crate::common::light();
    let ca = Ca::new("cluster CA");
    let up = ApiServer::start("up", &ca.server_identity(&[NAME]), None);
    let refusing = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let router = Router::start(&format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: k8s
    server_names: ["{NAME}"]
    upstreams: ["{refusing}", "{}"]
    balance: round_robin
    health_check: false
    outlier_detection: {{consecutive_failures: 3, base_ejection: 1m}}
"#,
        up.addr
    ));
    let addr = router.addr();
    // Every connection reaches `up`: the refusing endpoint, when tried
    // first, fails over. After its third failure it is ejected.
    for _ in 0..10 {
        assert_eq!(reach_cluster(addr, &ca).await, "up");
    }
    let ep = endpoint(&router, "k8s", refusing);
    assert_eq!(ep["state"], "ejected", "{ep}");
    assert_eq!(ep["connect_failures"], 3, "not tried while ejected: {ep}");
    assert!(
        ep["reason"]
            .as_str()
            .unwrap()
            .contains("ejected for 1m after 3 connect failures in a row"),
        "{ep}"
    );
    let text = router.metrics();
    assert_eq!(
        metric(
            &text,
            "sniroute_upstream_ejections_total",
            &[("route", "k8s")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "sniroute_upstream_state",
            &[
                ("route", "k8s"),
                ("upstream", &refusing.to_string()),
                ("state", "ejected")
            ],
        ),
        Some(1.0)
    );
    assert_eq!(endpoint(&router, "k8s", up.addr)["state"], "healthy");
}

#[test]
fn sniroute_check_names_the_file_line_and_key() {
    let _turn = crate::common::light();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write(dir.path(), "empty.pem", "# no certificate here\n");
    let cases = [
        (
            "      kind: kubernetes\n      server_name: api.test\n      ca_file: /nonexistent/ca.pem\n".to_owned(),
            ":9:16: cannot read ca_file `/nonexistent/ca.pem`",
            "(at routes[0].health_check.ca_file)",
        ),
        (
            format!("      kind: kubernetes\n      server_name: api.test\n      ca_file: {}\n", not_pem.display()),
            ":9:16: ca_file",
            "holds no certificate: expected PEM `-----BEGIN CERTIFICATE-----` blocks (at routes[0].health_check.ca_file)",
        ),
        (
            format!("      kind: kubernetes\n      ca_file: {}\n", not_pem.display()),
            ":6:5: a `kind: kubernetes` health check needs `server_name`",
            "(at routes[0].health_check)",
        ),
    ];
    for (check, position, tail) in cases {
        let path = write(
            dir.path(),
            "sniroute.yaml",
            &format!(
                "listeners: [\"127.0.0.1:0\"]\nroutes:\n  - name: a\n    server_names: [a.test]\n    upstreams: [\"10.0.0.1:6443\"]\n    health_check:\n{check}"
            ),
        );
        let out = std::process::Command::new(crate::common::bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected_start = format!("{}{position}", path.display());
        assert!(
            stderr.starts_with(&expected_start) && stderr.trim_end().ends_with(tail),
            "{stderr}\nwanted {expected_start} ... {tail}"
        );
    }
}
