//! TlsUpstream over real loopback sockets, with rustls clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use demo::{https_get, Ca, TlsUpstream, UpstreamOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn client(ca: &Ca, identity: Option<&demo::Identity>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = ca.client_config(identity);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn serves_hello_and_version_and_records_sni() {
    let ca = Ca::new("test CA");
    let options = UpstreamOptions::new("cluster-a", ca.server_identity(&["cluster-a.test"]));
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    assert_eq!(upstream.handshakes(), 0);
    assert_eq!(upstream.last_sni(), None);
    let config = client(&ca, None, &[b"h2", b"http/1.1"]);

    let hello = https_get(
        upstream.addr,
        "cluster-a.test",
        config.clone(),
        "/anything?x=1",
    )
    .await
    .unwrap();
    assert_eq!(hello.status, 200);
    assert_eq!(
        hello.body,
        "hello from cluster-a: sni=cluster-a.test client=none alpn=http/1.1\n"
    );
    assert!(hello
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(hello.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(upstream.handshakes(), 1);
    assert_eq!(upstream.last_sni().as_deref(), Some("cluster-a.test"));
    assert_eq!(upstream.last_alpn().as_deref(), Some("http/1.1"));
    assert_eq!(upstream.last_client_cn(), None);

    let version = https_get(
        upstream.addr,
        "cluster-a.test",
        config,
        "/version?timeout=32s",
    )
    .await
    .unwrap();
    assert_eq!(version.status, 200);
    assert_eq!(version.header("Content-Type"), Some("application/json"));
    let info: serde_json::Value = serde_json::from_str(&version.body).unwrap();
    assert_eq!(info["major"], "1");
    assert_eq!(info["minor"], "32");
    assert_eq!(info["gitVersion"], "v1.32.0+cluster-a");
    assert_eq!(info["platform"], "linux/amd64");
    assert_eq!(upstream.handshakes(), 2);
    upstream.shutdown();
}

#[tokio::test]
async fn wrong_name_fails_verification_and_is_not_counted() {
    let ca = Ca::new("test CA");
    let options = UpstreamOptions::new("cluster-a", ca.server_identity(&["cluster-a.test"]));
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let err = https_get(upstream.addr, "other.test", client(&ca, None, &[]), "/")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // A certificate from another CA is not trusted either.
    let stranger = Ca::new("other CA");
    assert!(https_get(
        upstream.addr,
        "cluster-a.test",
        client(&stranger, None, &[]),
        "/"
    )
    .await
    .is_err());
    // The server sees the client's alert; give it a moment to process it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(upstream.handshakes(), 0);
    assert_eq!(upstream.last_sni(), None);
}

#[tokio::test]
async fn ip_san_only_when_asked_and_no_sni_for_ip() {
    let ca = Ca::new("test CA");
    // Without 127.0.0.1 in the list, an IP connection does not verify.
    let by_name = TlsUpstream::start(
        loopback(),
        UpstreamOptions::new("named", ca.server_identity(&["named.test"])),
    )
    .await
    .unwrap();
    assert!(
        https_get(by_name.addr, "127.0.0.1", client(&ca, None, &[]), "/")
            .await
            .is_err()
    );

    let by_ip = TlsUpstream::start(
        loopback(),
        UpstreamOptions::new("ip", ca.server_identity(&["ip.test", "127.0.0.1"])),
    )
    .await
    .unwrap();
    let response = https_get(by_ip.addr, "127.0.0.1", client(&ca, None, &[]), "/")
        .await
        .unwrap();
    // rustls sends no SNI for an IP address; no ALPN offered either.
    assert_eq!(
        response.body,
        "hello from ip: sni=none client=none alpn=none\n"
    );
    assert_eq!(by_ip.handshakes(), 1);
    assert_eq!(by_ip.last_sni(), None);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let ca = Ca::new("test CA");
    let mut options = UpstreamOptions::new("secure", ca.server_identity(&["secure.test"]));
    options.client_ca_pem = Some(ca.cert_pem());
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();

    // No certificate: under TLS 1.3 the client finishes its side of the
    // handshake, then reads the server's certificate_required alert.
    let err = https_get(upstream.addr, "secure.test", client(&ca, None, &[]), "/")
        .await
        .unwrap_err();
    eprintln!("without a client certificate: {err}");

    // A certificate from another CA: rejected too.
    let stranger = Ca::new("other CA").client_identity("mallory");
    assert!(https_get(
        upstream.addr,
        "secure.test",
        client(&ca, Some(&stranger), &[]),
        "/"
    )
    .await
    .is_err());
    assert_eq!(upstream.handshakes(), 0);

    let alice = ca.client_identity("alice");
    let response = https_get(
        upstream.addr,
        "secure.test",
        client(&ca, Some(&alice), &[b"http/1.1"]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(
        response.body,
        "hello from secure: sni=secure.test client=alice alpn=http/1.1\n"
    );
    assert_eq!(upstream.handshakes(), 1);
    assert_eq!(upstream.last_client_cn().as_deref(), Some("alice"));
}

#[tokio::test]
async fn tls12_works_too() {
    let ca = Ca::new("test CA");
    let mut options = UpstreamOptions::new("old", ca.server_identity(&["old.test"]));
    options.client_ca_pem = Some(ca.cert_pem());
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let bob = ca.client_identity("bob");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(demo::crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.root_store())
        .with_client_auth_cert(bob.cert_chain(), bob.private_key())
        .unwrap();
    let response = https_get(upstream.addr, "old.test", Arc::new(config), "/")
        .await
        .unwrap();
    assert_eq!(
        response.body,
        "hello from old: sni=old.test client=bob alpn=none\n"
    );
}

#[tokio::test]
async fn alpn_follows_the_server_offer() {
    let ca = Ca::new("test CA");
    let mut options = UpstreamOptions::new("alpn", ca.server_identity(&["alpn.test"]));
    options.alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let response = https_get(upstream.addr, "alpn.test", client(&ca, None, &[b"h2"]), "/")
        .await
        .unwrap();
    assert_eq!(response.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(upstream.last_alpn().as_deref(), Some("h2"));

    let mut options = UpstreamOptions::new("none", ca.server_identity(&["none.test"]));
    options.alpn.clear();
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let response = https_get(
        upstream.addr,
        "none.test",
        client(&ca, None, &[b"h2", b"http/1.1"]),
        "/",
    )
    .await
    .unwrap();
    assert_eq!(response.alpn, None);
    assert!(response.body.ends_with("alpn=none\n"), "{}", response.body);
}

async fn connect_tls(
    addr: SocketAddr,
    ca: &Ca,
    name: &'static str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(client(ca, None, &[]))
        .connect(ServerName::try_from(name).unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn keep_alive_pipelining_and_bad_requests() {
    let ca = Ca::new("test CA");
    let options = UpstreamOptions::new("ka", ca.server_identity(&["ka.test"]));
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();

    // Two pipelined requests (one with a body) and a closing third, on one
    // connection.
    let mut tls = connect_tls(upstream.addr, &ca, "ka.test").await;
    tls.write_all(
        b"GET /version HTTP/1.1\r\nHost: ka.test\r\n\r\n\
          POST /x HTTP/1.1\r\nHost: ka.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /y HTTP/1.1\r\nHost: ka.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{all}");
    assert_eq!(
        all.matches("hello from ka: sni=ka.test").count(),
        2,
        "{all}"
    );
    assert!(all.contains("v1.32.0+ka"), "{all}");
    assert_eq!(upstream.handshakes(), 1);

    // Garbage gets a 400 and a close.
    let mut tls = connect_tls(upstream.addr, &ca, "ka.test").await;
    tls.write_all(b"NONSENSE\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");

    // A head over 16 KiB gets a 431 and a close.
    let mut tls = connect_tls(upstream.addr, &ca, "ka.test").await;
    let mut big = b"GET / HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    let _ = tls.write_all(&big).await;
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");

    // The server is still serving after all that.
    let response = https_get(upstream.addr, "ka.test", client(&ca, None, &[]), "/")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.handshakes(), 4);
}

#[tokio::test]
async fn garbage_instead_of_tls_does_not_kill_the_server() {
    let ca = Ca::new("test CA");
    let options = UpstreamOptions::new("sturdy", ca.server_identity(&["sturdy.test"]));
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let mut tcp = TcpStream::connect(upstream.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
    // A silent client holding a connection open does not block others.
    let _idle = TcpStream::connect(upstream.addr).await.unwrap();
    let response = https_get(upstream.addr, "sturdy.test", client(&ca, None, &[]), "/")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(upstream.handshakes(), 1);
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let ca = Ca::new("test CA");
    let options = UpstreamOptions::new("gone", ca.server_identity(&["gone.test"]));
    let upstream = TlsUpstream::start(loopback(), options).await.unwrap();
    let addr = upstream.addr;
    https_get(addr, "gone.test", client(&ca, None, &[]), "/")
        .await
        .unwrap();
    upstream.shutdown();
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn bad_client_ca_is_an_error() {
    let ca = Ca::new("test CA");
    let mut options = UpstreamOptions::new("x", ca.server_identity(&["x.test"]));
    options.client_ca_pem = Some("not a certificate".into());
    let err = TlsUpstream::start(loopback(), options).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
