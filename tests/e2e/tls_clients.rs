//! Real TLS clients through the real binary to real TLS servers: rustls,
//! `openssl s_client`, `curl` and `kubectl`. The router never sees a key or
//! certificate; verification and client certificates work end to end.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::common::Router;
use demo::{https_get, Ca, TlsUpstream, UpstreamOptions};

/// Two clusters behind one router: `alpha` (exact name plus a DC/OS-style
/// VIP name) requires a client certificate; `beta` (wildcard) does not.
struct Setup {
    ca: Ca,
    alpha: TlsUpstream,
    beta: TlsUpstream,
    router: Router,
    dir: tempfile::TempDir,
}

const VIP: &str = "apiserver.devkubernetes01.l4lb.thisdcos.directory";

async fn setup() -> Setup {
    let ca = Ca::new("sniroute test CA");
    let mut alpha_opts = UpstreamOptions::new("alpha", ca.server_identity(&["alpha.test", VIP]));
    alpha_opts.client_ca_pem = Some(ca.cert_pem());
    let alpha = TlsUpstream::start("127.0.0.1:0".parse().unwrap(), alpha_opts)
        .await
        .unwrap();
    let beta = TlsUpstream::start(
        "127.0.0.1:0".parse().unwrap(),
        UpstreamOptions::new("beta", ca.server_identity(&["*.beta.test"])),
    )
    .await
    .unwrap();
    // The dcos_service shorthand would point at the real VIP; here the VIP
    // name is listed as a server name and the upstream is local.
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
routes:
  - name: alpha
    server_names: [alpha.test, {VIP}]
    upstreams: ["{}"]
  - name: beta
    server_names: ["*.beta.test"]
    upstreams: ["{}"]
"#,
        alpha.addr, beta.addr
    );
    let router = Router::start(&yaml);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let client = ca.client_identity("alice");
    client.write_to(dir.path(), "alice").unwrap();
    Setup {
        ca,
        alpha,
        beta,
        router,
        dir,
    }
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok()
        || Command::new(name).arg("version").output().is_ok();
    assert!(
        found,
        "{name} is needed by this test and is on the machine image; install it"
    );
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_client_with_and_without_a_client_certificate() {
    let _turn = crate::common::light();
    let s = setup().await;
    let addr = s.router.addr();
    let alice = s.ca.client_identity("alice");
    let with_cert = Arc::new(s.ca.client_config(Some(&alice)));
    let resp = https_get(addr, "alpha.test", with_cert.clone(), "/")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("hello from alpha"), "{}", resp.body);
    assert!(resp.body.contains("client=alice"), "{}", resp.body);
    assert_eq!(s.alpha.last_sni().as_deref(), Some("alpha.test"));
    // The VIP name reaches the same cluster and verifies against its cert.
    let resp = https_get(addr, VIP, with_cert, "/version").await.unwrap();
    assert!(resp.body.contains("v1.32.0+alpha"), "{}", resp.body);
    // Without a client certificate the *cluster* refuses: the router passed
    // the handshake through untouched.
    let no_cert = Arc::new(s.ca.client_config(None));
    assert!(https_get(addr, "alpha.test", no_cert.clone(), "/")
        .await
        .is_err());
    // The wildcard route, no client certificate needed.
    let resp = https_get(addr, "x.beta.test", no_cert, "/").await.unwrap();
    assert!(
        resp.body.contains("hello from beta: sni=x.beta.test"),
        "{}",
        resp.body
    );
    assert_eq!(s.beta.handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_verify_the_clusters_certificate() {
    let _turn = crate::common::light();
    let s = setup().await;
    let port = s.router.addr().port();
    let dir = s.dir.path();
    tool("curl");
    let curl = |name: &str, extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .args(extra)
            .arg(format!("https://{name}:{port}/"))
            .output()
            .unwrap()
    };
    let cert = dir.join("alice.pem");
    let key = dir.join("alice-key.pem");
    let out = curl(
        "alpha.test",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body.contains("hello from alpha") && body.contains("client=alice"),
        "{body}"
    );
    let out = curl("api.beta.test", &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from beta"));
    // Unknown name: curl reports the alert the router sent.
    let out = curl("nope.test", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized name"), "{err}");

    tool("openssl");
    let out = Command::new("openssl")
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "www.beta.test",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(dir.join("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Verification: OK"), "{text}");
    assert!(text.contains("*.beta.test"), "{text}");
}

/// `kubectl` with everything it writes (discovery cache, HOME) in the
/// test's own directory: no test reads or writes outside the repository and
/// its temporary files.
fn kubectl(kubeconfig: &Path) -> Command {
    let dir = kubeconfig.parent().unwrap();
    let mut cmd = Command::new("kubectl");
    cmd.env("HOME", dir)
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .arg("--kubeconfig")
        .arg(kubeconfig);
    cmd
}

fn kubectl_version(kubeconfig: &Path) -> (bool, String) {
    let out = kubectl(kubeconfig)
        .args(["version", "-o", "json", "--request-timeout=10s"])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_a_generated_kubeconfig_and_mtls() {
    let _turn = crate::common::light();
    let s = setup().await;
    tool("kubectl");
    let dir = s.dir.path();
    let port = s.router.addr().port();
    let kubeconfig = dir.join("kubeconfig");
    // A route config whose alpha route is a DC/OS service, so that
    // `sniroute kubeconfig` sets tls-server-name to the VIP name.
    let route_config = dir.join("routes.yaml");
    std::fs::write(
        &route_config,
        "listeners: [\"0.0.0.0:6443\"]\nroutes:\n  - {name: alpha, dcos_service: dev/kubernetes01}\n",
    )
    .unwrap();
    let out = Command::new(crate::common::bin())
        .arg("kubeconfig")
        .arg("--config")
        .arg(&route_config)
        .args(["--route", "alpha", "--apiserver-url"])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--path-to-custom-ca")
        .arg(dir.join("ca.pem"))
        .arg("--client-certificate")
        .arg(dir.join("alice.pem"))
        .arg("--client-key")
        .arg(dir.join("alice-key.pem"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains(&format!("tls-server-name: {VIP}")), "{text}");

    let (ok, output) = kubectl_version(&kubeconfig);
    assert!(ok, "{output}");
    assert!(output.contains("v1.32.0+alpha"), "{output}");
    assert_eq!(s.alpha.last_sni().as_deref(), Some(VIP));
    assert_eq!(s.alpha.last_client_cn().as_deref(), Some("alice"));

    // Merge a second cluster as another context without activating it; the
    // first keeps working and is still current.
    let out = Command::new(crate::common::bin())
        .arg("kubeconfig")
        .arg("--config")
        .arg(&route_config)
        .args([
            "--route",
            "alpha",
            "--context-name",
            "alpha-insecure",
            "--insecure-skip-tls-verify",
            "--no-activate-context",
            "--apiserver-url",
        ])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        text.contains("alpha-insecure") && text.contains("current-context: alpha"),
        "{text}"
    );
    let (ok, output) = kubectl_version(&kubeconfig);
    assert!(ok, "{output}");
    // The insecure context has no client certificate: the cluster refuses it.
    let out = kubectl(&kubeconfig)
        .args([
            "--context",
            "alpha-insecure",
            "version",
            "--request-timeout=10s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
