//! `Demo::start`, and the system's `curl` against an upstream directly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use demo::{https_get, Ca, Demo, TlsUpstream, UpstreamOptions};

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a command off the runtime's worker threads (the servers keep running).
async fn run(program: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn curl_args(ca: &Path, host: &str, addr: SocketAddr, path: &str) -> Vec<String> {
    vec![
        "--silent".into(),
        "--show-error".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{host}:{}:127.0.0.1", addr.port()),
        format!("https://{host}:{}{path}", addr.port()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_an_upstream_directly() {
    if !have("curl") {
        println!("SKIPPED: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("curl test CA");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();

    let options = UpstreamOptions::new("cluster-c", ca.server_identity(&["cluster-c.test"]));
    let upstream = TlsUpstream::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let out = run(
        "curl",
        curl_args(&ca_path, "cluster-c.test", upstream.addr, "/"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from cluster-c: sni=cluster-c.test client=none alpn=http/1.1\n"
    );
    let out = run(
        "curl",
        curl_args(&ca_path, "cluster-c.test", upstream.addr, "/version"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["gitVersion"], "v1.32.0+cluster-c");
    assert_eq!(upstream.handshakes(), 2);
    assert_eq!(upstream.last_sni().as_deref(), Some("cluster-c.test"));

    // mTLS with curl: refused without a certificate, accepted with one.
    let mut options = UpstreamOptions::new("cluster-m", ca.server_identity(&["cluster-m.test"]));
    options.client_ca_pem = Some(ca.cert_pem());
    let secure = TlsUpstream::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    let out = run(
        "curl",
        curl_args(&ca_path, "cluster-m.test", secure.addr, "/"),
    )
    .await;
    assert!(
        !out.status.success(),
        "curl without a client certificate got in"
    );
    let (cert, key) = ca
        .client_identity("carol")
        .write_to(dir.path(), "carol")
        .unwrap();
    let mut args = vec![
        "--cert".to_owned(),
        cert.display().to_string(),
        "--key".to_owned(),
        key.display().to_string(),
    ];
    args.extend(curl_args(&ca_path, "cluster-m.test", secure.addr, "/"));
    let out = run("curl", args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from cluster-m: sni=cluster-m.test client=carol alpn=http/1.1\n"
    );
    assert_eq!(secure.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_files_and_both_clusters_answer() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = "127.0.0.1:16443".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:16090".parse().unwrap();
    let demo = Demo::start(dir.path(), listen, admin).await.unwrap();
    assert_eq!(demo.dir, dir.path());

    // Files.
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert_eq!(ca_pem, demo.ca.cert_pem());
    for file in ["client.pem", "client-key.pem", demo::KUBECONFIG_FILE] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let written = std::fs::read_to_string(dir.path().join(demo::CONFIG_FILE)).unwrap();
    assert_eq!(written, demo.config_yaml);

    // Config: the router's own tests load it; here, the contract's shape.
    let (a, b) = (demo.cluster_a.addr, demo.cluster_b.addr);
    assert_ne!(a.port(), b.port());
    let yaml = &demo.config_yaml;
    assert!(yaml.contains("listeners: [\"127.0.0.1:16443\"]"), "{yaml}");
    assert!(yaml.contains("admin: \"127.0.0.1:16090\""), "{yaml}");
    assert!(yaml.contains("- name: cluster-a"), "{yaml}");
    assert!(
        yaml.contains(&format!("upstreams: [\"127.0.0.1:{}\"]", a.port())),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("upstreams: [\"127.0.0.1:{}\"]", b.port())),
        "{yaml}"
    );
    assert!(
        yaml.contains("server_names: [\"cluster-b.demo.test\", \"*.b.demo.test\"]"),
        "{yaml}"
    );

    // Instructions.
    let text = &demo.instructions;
    println!("{text}");
    let ca_path = dir.path().join("ca.pem").display().to_string();
    for needle in [
        format!("curl --cacert {ca_path} --resolve cluster-a.demo.test:16443:127.0.0.1 https://cluster-a.demo.test:16443/"),
        "--resolve cluster-b.demo.test:16443:127.0.0.1 https://cluster-b.demo.test:16443/".to_owned(),
        "--resolve api.b.demo.test:16443:127.0.0.1 https://api.b.demo.test:16443/".to_owned(),
        format!("openssl s_client -connect 127.0.0.1:16443 -servername cluster-b.demo.test -CAfile {ca_path} -brief </dev/null"),
        "--resolve nope.demo.test:16443:127.0.0.1".to_owned(),
        "unrecognized_name".to_owned(),
        "http://127.0.0.1:16090/metrics".to_owned(),
        "http://127.0.0.1:16090/status".to_owned(),
        "holds no certificate".to_owned(),
    ] {
        assert!(text.contains(&needle), "instructions lack {needle:?}:\n{text}");
    }

    // Both clusters answer (directly: the router is the CLI's job), with the
    // right certificates; client certificates are optional but verified.
    let anonymous = Arc::new(demo.ca.client_config(None));
    let r = https_get(a, "cluster-a.demo.test", anonymous.clone(), "/")
        .await
        .unwrap();
    assert_eq!(
        r.body,
        "hello from cluster-a: sni=cluster-a.demo.test client=none alpn=none\n"
    );
    let r = https_get(b, "cluster-b.demo.test", anonymous.clone(), "/version")
        .await
        .unwrap();
    assert!(
        r.body.contains("\"gitVersion\":\"v1.32.0+cluster-b\""),
        "{}",
        r.body
    );
    let r = https_get(b, "api.b.demo.test", anonymous.clone(), "/")
        .await
        .unwrap();
    assert!(
        r.body
            .starts_with("hello from cluster-b: sni=api.b.demo.test "),
        "{}",
        r.body
    );
    // cluster-a's certificate does not cover cluster-b's names.
    assert!(https_get(a, "cluster-b.demo.test", anonymous, "/")
        .await
        .is_err());
    let with_cert = Arc::new(demo.ca.client_config(Some(&demo.client)));
    let r = https_get(a, "cluster-a.demo.test", with_cert, "/")
        .await
        .unwrap();
    assert!(r.body.contains(" client=demo-user "), "{}", r.body);
    assert_eq!(demo.cluster_a.handshakes(), 2);
    assert_eq!(demo.cluster_b.handshakes(), 2);
    assert_eq!(
        demo.cluster_b.last_sni().as_deref(),
        Some("api.b.demo.test")
    );

    // The kubeconfig points kubectl at the router with the right names.
    let kubeconfig = std::fs::read_to_string(dir.path().join(demo::KUBECONFIG_FILE)).unwrap();
    assert!(
        kubeconfig.contains("server: https://127.0.0.1:16443"),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("tls-server-name: cluster-b.demo.test"),
        "{kubeconfig}"
    );

    // With curl too, when it is there (the cluster directly, its own port).
    if have("curl") {
        let mut args = vec![
            "--cert".to_owned(),
            dir.path().join("client.pem").display().to_string(),
            "--key".to_owned(),
            dir.path().join("client-key.pem").display().to_string(),
        ];
        args.extend(curl_args(
            &dir.path().join("ca.pem"),
            "x.b.demo.test",
            b,
            "/",
        ));
        let out = run("curl", args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from cluster-b: sni=x.b.demo.test client=demo-user alpn=http/1.1\n"
        );
    } else {
        println!("SKIPPED the curl part: curl is not installed");
    }
}
