//! The wiring behind `sniroute demo`: a CA, two clusters, a config and
//! instructions.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::upstream::ClientAuth;
use crate::{Ca, Identity, TlsUpstream, UpstreamOptions};

/// File name of the router config [`Demo::start`] writes.
pub const CONFIG_FILE: &str = "sniroute-demo.yaml";
/// File name of the kubeconfig [`Demo::start`] writes.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// Common name of the demo client certificate.
pub const CLIENT_CN: &str = "demo-user";

/// Two demo "clusters" on loopback, the files to reach them, and the router
/// config in front of them. The clusters run as long as this value lives.
#[derive(Debug)]
pub struct Demo {
    /// The directory holding `ca.pem`, `client.pem`, `client-key.pem`,
    /// `kubeconfig` and `sniroute-demo.yaml`.
    pub dir: PathBuf,
    /// The router config (YAML) routing the demo names to the clusters; also
    /// written to `<dir>/sniroute-demo.yaml`.
    pub config_yaml: String,
    /// What is running and commands to try, for the terminal.
    pub instructions: String,
    /// The throwaway CA that issued every certificate here.
    pub ca: Ca,
    /// The client certificate written to `client.pem` (CN `demo-user`); both
    /// clusters verify it if sent, and neither requires it.
    pub client: Identity,
    /// The `cluster-a` upstream (`cluster-a.demo.test`).
    pub cluster_a: TlsUpstream,
    /// The `cluster-b` upstream (`cluster-b.demo.test`, `*.b.demo.test`).
    pub cluster_b: TlsUpstream,
}

impl Demo {
    /// Creates the CA, two upstreams on `127.0.0.1` with free ports
    /// (`cluster-a` for `cluster-a.demo.test`; `cluster-b` for
    /// `cluster-b.demo.test` and `*.b.demo.test`), and writes `ca.pem`, a
    /// client certificate, a kubeconfig and the sniroute config into `dir`
    /// (which must exist). The config has the router listen on `listen` and
    /// serve its admin endpoint on `admin`; starting the router is the
    /// caller's job.
    ///
    /// Both clusters ask for (but do not require) a client certificate from
    /// this CA, so `curl --cert` shows a client certificate crossing the
    /// router untouched.
    pub async fn start(dir: &Path, listen: SocketAddr, admin: SocketAddr) -> io::Result<Demo> {
        let ca = Ca::new("sniroute demo CA (throwaway)");
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let clusters = [
            ("cluster-a", vec!["cluster-a.demo.test"]),
            ("cluster-b", vec!["cluster-b.demo.test", "*.b.demo.test"]),
        ];
        let mut upstreams = Vec::with_capacity(clusters.len());
        for (name, names) in &clusters {
            let mut options = UpstreamOptions::new(*name, ca.server_identity(names));
            options.client_ca_pem = Some(ca.cert_pem());
            upstreams.push(TlsUpstream::start_with(loopback, options, ClientAuth::Optional).await?);
        }
        let cluster_b = upstreams.pop().expect("two clusters");
        let cluster_a = upstreams.pop().expect("two clusters");

        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem())?;
        let client = ca.client_identity(CLIENT_CN);
        let (client_cert, client_key) = client.write_to(dir, "client")?;

        let config_yaml = config_yaml(listen, admin, cluster_a.addr, cluster_b.addr);
        std::fs::write(dir.join(CONFIG_FILE), &config_yaml)?;
        let kubeconfig_path = dir.join(KUBECONFIG_FILE);
        let files = Files {
            dir,
            ca: &ca_path,
            client_cert: &client_cert,
            client_key: &client_key,
            kubeconfig: &kubeconfig_path,
        };
        std::fs::write(&kubeconfig_path, kubeconfig(listen, &files)?)?;
        let instructions = instructions(listen, admin, &cluster_a, &cluster_b, &files);

        Ok(Demo {
            dir: dir.to_path_buf(),
            config_yaml,
            instructions,
            ca,
            client,
            cluster_a,
            cluster_b,
        })
    }
}

struct Files<'a> {
    dir: &'a Path,
    ca: &'a Path,
    client_cert: &'a Path,
    client_key: &'a Path,
    kubeconfig: &'a Path,
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn config_yaml(listen: SocketAddr, admin: SocketAddr, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "# sniroute demo config (generated): two local TLS \"clusters\".\n\
         listeners: [{listen}]\n\
         admin: {admin}\n\
         routes:\n  \
           - name: cluster-a\n    \
             server_names: [\"cluster-a.demo.test\"]\n    \
             upstreams: [{a}]\n  \
           - name: cluster-b\n    \
             server_names: [\"cluster-b.demo.test\", \"*.b.demo.test\"]\n    \
             upstreams: [{b}]\n",
        listen = quoted(&listen.to_string()),
        admin = quoted(&admin.to_string()),
        a = quoted(&a.to_string()),
        b = quoted(&b.to_string()),
    )
}

/// Where a client reaches a listener bound to `addr` (a wildcard address is
/// reached via loopback).
fn client_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The address part of curl's `--resolve host:port:addr` (IPv6 in brackets).
fn resolve_ip(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// A path for a shell command line, single-quoted if it needs to be.
fn shell(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The demo's kubeconfig, written by the same writer as
/// `sniroute kubeconfig`: one context per cluster, both through the router
/// with the cluster's name as `tls-server-name`, the CA and the client
/// certificate embedded; `cluster-a` is the current context.
fn kubeconfig(listen: SocketAddr, files: &Files<'_>) -> io::Result<String> {
    use kubeconfig::{merge, CaChoice, Credentials, KubeconfigRequest};
    let mut text = String::new();
    for (i, name) in ["cluster-a", "cluster-b"].into_iter().enumerate() {
        let request = KubeconfigRequest {
            route: name.to_owned(),
            apiserver_url: format!("https://{}", client_addr(listen)),
            ca: CaChoice::CustomCa(files.ca.to_path_buf()),
            context_name: None,
            activate: i == 0,
            credentials: Credentials::ClientCert {
                cert: files.client_cert.to_path_buf(),
                key: files.client_key.to_path_buf(),
            },
        };
        let existing = (!text.is_empty()).then_some(text.as_str());
        text = merge(existing, &request, Some(&format!("{name}.demo.test")))
            .map_err(io::Error::other)?;
    }
    Ok(format!(
        "# kubeconfig for the sniroute demo (generated)\n{text}"
    ))
}

fn instructions(
    listen: SocketAddr,
    admin: SocketAddr,
    a: &TlsUpstream,
    b: &TlsUpstream,
    files: &Files<'_>,
) -> String {
    let router = client_addr(listen);
    let port = router.port();
    let ip = resolve_ip(router);
    let admin = client_addr(admin);
    let ca = shell(files.ca);
    let curl = |host: &str, path: &str| {
        format!("curl --cacert {ca} --resolve {host}:{port}:{ip} https://{host}:{port}{path}")
    };
    let mut t = String::new();
    let _ = writeln!(t, "sniroute demo: two TLS \"clusters\" with certificates from a throwaway CA, and the router in front of them.");
    let _ = writeln!(t, "  router     {listen}  routes by SNI (admin on {admin})");
    let _ = writeln!(
        t,
        "  cluster-a  {}  certificate for cluster-a.demo.test",
        a.addr
    );
    let _ = writeln!(
        t,
        "  cluster-b  {}  certificate for cluster-b.demo.test, *.b.demo.test",
        b.addr
    );
    let _ = writeln!(
        t,
        "  files      {}  (ca.pem, client.pem, client-key.pem, kubeconfig, {CONFIG_FILE})",
        shell(files.dir)
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "The router holds no certificate or key: it reads only the server name in the ClientHello and splices bytes, so TLS is end to end between curl and the cluster, and the certificate curl verifies is the cluster's.");
    let _ = writeln!(t);
    let _ = writeln!(t, "Try (each name reaches its own cluster):");
    let _ = writeln!(t, "  {}", curl("cluster-a.demo.test", "/"));
    let _ = writeln!(
        t,
        "  # hello from cluster-a: sni=cluster-a.demo.test client=none alpn=http/1.1"
    );
    let _ = writeln!(t, "  {}", curl("cluster-b.demo.test", "/"));
    let _ = writeln!(
        t,
        "  # hello from cluster-b: sni=cluster-b.demo.test client=none alpn=http/1.1"
    );
    let _ = writeln!(t, "  {}", curl("api.b.demo.test", "/"));
    let _ = writeln!(
        t,
        "  # the wildcard route *.b.demo.test: hello from cluster-b: sni=api.b.demo.test ..."
    );
    let _ = writeln!(t, "  {}", curl("cluster-a.demo.test", "/version"));
    let _ = writeln!(
        t,
        "  # Kubernetes-style version JSON, \"gitVersion\":\"v1.32.0+cluster-a\""
    );
    let _ = writeln!(
        t,
        "  curl --cacert {ca} --cert {} --key {} --resolve cluster-b.demo.test:{port}:{ip} https://cluster-b.demo.test:{port}/",
        shell(files.client_cert),
        shell(files.client_key)
    );
    let _ = writeln!(t, "  # mTLS through the router: ... client={CLIENT_CN} ...");
    let _ = writeln!(
        t,
        "  openssl s_client -connect {router} -servername cluster-b.demo.test -CAfile {ca} -brief </dev/null"
    );
    let _ = writeln!(
        t,
        "  # the handshake, with the cluster-b certificate (CN=cluster-b.demo.test), verified"
    );
    let _ = writeln!(t, "  {}", curl("nope.demo.test", "/"));
    let _ = writeln!(
        t,
        "  # an unknown name: the router sends a TLS unrecognized_name alert and closes;"
    );
    let _ = writeln!(t, "  # curl: (35) ... tlsv1 unrecognized name");
    let _ = writeln!(
        t,
        "  kubectl --kubeconfig {} --context cluster-b version",
        shell(files.kubeconfig)
    );
    let _ = writeln!(
        t,
        "  # if you have kubectl: Server Version: v1.32.0+cluster-b"
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "Admin: http://{admin}/  http://{admin}/metrics  http://{admin}/status"
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses() {
        let any: SocketAddr = "0.0.0.0:16443".parse().unwrap();
        assert_eq!(client_addr(any).to_string(), "127.0.0.1:16443");
        let any6: SocketAddr = "[::]:16443".parse().unwrap();
        assert_eq!(client_addr(any6).to_string(), "[::1]:16443");
        assert_eq!(resolve_ip(client_addr(any6)), "[::1]");
        assert_eq!(shell(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(
            shell(Path::new("/tmp/sniroute-demo-1")),
            "/tmp/sniroute-demo-1"
        );
    }

    #[test]
    fn config_text() {
        let yaml = config_yaml(
            "127.0.0.1:16443".parse().unwrap(),
            "127.0.0.1:16090".parse().unwrap(),
            "127.0.0.1:1001".parse().unwrap(),
            "127.0.0.1:1002".parse().unwrap(),
        );
        assert!(
            yaml.contains("listeners: [\"127.0.0.1:16443\"]\n"),
            "{yaml}"
        );
        assert!(yaml.contains("admin: \"127.0.0.1:16090\"\n"), "{yaml}");
        assert!(yaml.contains("\n  - name: cluster-b\n    server_names: [\"cluster-b.demo.test\", \"*.b.demo.test\"]\n    upstreams: [\"127.0.0.1:1002\"]\n"), "{yaml}");
    }
}
