//! Discovery behind DC/OS authentication, end to end: the real binary
//! follows a fake Marathon that requires a token.
//!
//! [`FakeDcos`] stands for a DC/OS master as Admin Router serves it: one
//! server (plain http, or https with a certificate from the cluster's own
//! CA) with
//! - Marathon's API under `/marathon` (`GET /marathon/v2/apps?...` with
//!   `Content-Length`; `GET /marathon/v2/events`, an SSE stream left
//!   open), answering `401 Unauthorized` with `WWW-Authenticate: acsjwt`
//!   unless the request carries `Authorization: token=<a valid token>`;
//! - the IAM login `POST /acs/api/v1/auth/login`, as DC/OS documents
//!   service-account logins: the body `{"uid": ..., "token": <JWT>}`,
//!   whose RS256 signature is checked with the account's public key, its
//!   `uid` against the body's and its `exp` (in the future, at most 10
//!   minutes away); the answer `{"token": ...}` is a JWT valid for a
//!   short, configurable time, or a 401 with DC/OS's error body.
//!
//! RSA keys are made at test time with `openssl genpkey` in the test's
//! temporary directory. Tests wait for `/status` and for the fake's
//! counters, never for a time.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::common::{rsa_keypair, Router};

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

#[derive(Default)]
struct State {
    apps: Value,
    /// Tokens Marathon accepts.
    valid: HashSet<String>,
    /// How long issued tokens are valid, in seconds.
    ttl: u64,
    logins: usize,
    refused_logins: usize,
    /// API requests answered 401.
    unauthorized: usize,
    /// `Authorization` headers of API requests.
    seen: Vec<String>,
}

struct FakeDcos {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl FakeDcos {
    /// Starts it; `tls`: serve https with this server config. `uid` and
    /// `public_pem`: the service account the login knows.
    fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        uid: &'static str,
        public_pem: String,
        apps: Value,
    ) -> FakeDcos {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(Mutex::new(State {
            apps,
            ttl: 3600,
            ..State::default()
        }));
        let shared = state.clone();
        let public_pem = Arc::new(public_pem);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (state, tls, public_pem) = (shared.clone(), tls.clone(), public_pem.clone());
                std::thread::spawn(move || {
                    let conn: Box<dyn Conn> = match tls {
                        None => Box::new(conn),
                        Some(config) => {
                            let Ok(server) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            Box::new(rustls::StreamOwned::new(server, conn))
                        }
                    };
                    serve(conn, &state, uid, &public_pem);
                });
            }
        });
        FakeDcos {
            addr,
            scheme,
            state,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Waits until `f` holds of the state.
    fn wait(&self, what: &str, f: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.with(|s| f(s)) {
            assert!(Instant::now() < deadline, "fake DC/OS: never {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn respond(conn: &mut dyn Conn, status: &str, headers: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn serve(mut conn: Box<dyn Conn>, state: &Mutex<State>, uid: &str, public_pem: &str) {
    let mut reader = BufReader::new(&mut conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let (mut auth, mut length) = (String::new(), 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("authorization:") {
            auth = line["authorization:".len()..].trim().to_owned();
        } else if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let conn = conn.as_mut();
    if request_line.starts_with("POST /acs/api/v1/auth/login ") {
        let checked = check_login(&body, uid, public_pem);
        let mut s = state.lock().unwrap();
        match checked {
            Ok(()) => {
                s.logins += 1;
                let token = issue(uid, unix_now() + s.ttl);
                s.valid.insert(token.clone());
                drop(s);
                respond(conn, "200 OK", "", &json!({ "token": token }).to_string());
            }
            Err(why) => {
                s.refused_logins += 1;
                drop(s);
                respond(
                    conn,
                    "401 Unauthorized",
                    "",
                    &json!({"title": "Invalid authentication credentials", "description": why,
                            "code": "ERR_INVALID_CREDENTIALS"})
                    .to_string(),
                );
            }
        }
        return;
    }
    let mut s = state.lock().unwrap();
    s.seen.push(auth.clone());
    let valid = auth
        .strip_prefix("token=")
        .is_some_and(|t| s.valid.contains(t) && !expired(t));
    if !valid {
        s.unauthorized += 1;
        drop(s);
        return respond(
            conn,
            "401 Unauthorized",
            "WWW-Authenticate: acsjwt\r\n",
            r#"{"title":"Unauthorized","description":"Authentication required"}"#,
        );
    }
    if target.starts_with("/marathon/v2/apps?") {
        let apps = s.apps.to_string();
        drop(s);
        return respond(conn, "200 OK", "", &apps);
    }
    if target.starts_with("/marathon/v2/events") {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let attached = "event: event_stream_attached\ndata: {\"remoteAddress\":\"127.0.0.1\",\"eventType\":\"event_stream_attached\"}\n\n";
        let chunk = format!("{:x}\r\n{attached}\r\n", attached.len());
        if conn.write_all(head.as_bytes()).is_ok()
            && conn.write_all(chunk.as_bytes()).is_ok()
            && conn.flush().is_ok()
        {
            // The stream stays open: the router keeps following it.
            drop(s);
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        return;
    }
    drop(s);
    respond(conn, "404 Not Found", "", "{}");
}

/// A token as DC/OS's IAM issues them: a JWT with `uid` and `exp` (signed
/// here with a secret of the fake's own).
fn issue(uid: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"uid": uid, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"fake IAM secret"),
    )
    .unwrap()
}

/// An issued JWT past its `exp` (tokens of token files never expire).
fn expired(token: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    v.required_spec_claims.clear();
    let decoded = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(b"fake IAM secret"),
        &v,
    );
    matches!(decoded, Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature)
}

fn check_login(body: &[u8], uid: &str, public_pem: &str) -> Result<(), String> {
    let login: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (Some(body_uid), Some(token)) = (login["uid"].as_str(), login["token"].as_str()) else {
        return Err("expected {\"uid\": ..., \"token\": ...}".to_owned());
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.required_spec_claims = ["exp".to_owned()].into();
    v.leeway = 0;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .map_err(|e| format!("login token: {e}"))?
        .claims;
    if claims["uid"] != body_uid || body_uid != uid {
        return Err(format!("unknown uid {body_uid}"));
    }
    if claims["exp"].as_u64().unwrap_or(u64::MAX) > unix_now() + 600 {
        return Err("the login token lives too long".to_owned());
    }
    Ok(())
}

/// An app `/prod/web` with host networking and one healthy-less task per
/// port, on 127.0.0.1.
fn web_app(ports: &[u16]) -> Value {
    let tasks: Vec<Value> = ports
        .iter()
        .map(|port| {
            json!({
                "id": format!("prod_web.{port}"),
                "appId": "/prod/web",
                "host": "127.0.0.1",
                "ports": [port],
                "state": "TASK_RUNNING",
                "startedAt": "2024-05-01T12:00:00.000Z",
                "version": "2024-05-01T11:59:50.000Z",
                "slaveId": "agent-1"
            })
        })
        .collect();
    json!({"apps": [{
        "id": "/prod/web",
        "instances": tasks.len(),
        "networks": [{"mode": "host"}],
        "portDefinitions": [{"port": 10001, "protocol": "tcp", "name": "https", "labels": {}}],
        "healthChecks": [],
        "readinessChecks": [],
        "tasks": tasks
    }]})
}

fn config(marathon: &str) -> String {
    format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
discovery:
  marathon:
{marathon}    resync: 1s
routes:
  - name: web
    server_names: [web.test]
    marathon_app: {{id: /prod/web, port_name: https}}
    health_check: false
"#
    )
}

fn status(router: &Router) -> Value {
    serde_json::from_str(&router.admin_get("/status").1).unwrap()
}

/// The endpoint ports `/status` shows for route `web`.
fn ports(router: &Router) -> BTreeSet<u16> {
    status(router)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["address"]
                .as_str()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap()
                .port()
        })
        .collect()
}

fn wait_ports(router: &Router, want: &[u16]) {
    let want: BTreeSet<u16> = want.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ports(router) != want {
        assert!(
            Instant::now() < deadline,
            "route web never had ports {want:?}; /status: {}",
            router.admin_get("/status").1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An https server config for 127.0.0.1 from a fresh CA, and that CA's
/// certificate written to `dir/dcos-ca.crt`.
fn admin_router_tls(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let ca = demo::Ca::new("DC/OS test cluster CA");
    let identity = ca.server_identity(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(demo::crypto_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain(), identity.private_key())
        .unwrap();
    let ca_file = dir.join("dcos-ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    (Arc::new(config), ca_file)
}

#[test]
fn a_token_file_rotated_on_disk_is_used_at_once() {
    let _turn = crate::common::light();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let dcos = FakeDcos::start(None, "unused", String::new(), web_app(&[20001]));
    dcos.with(|s| s.valid.insert("first-token".to_owned()));
    let router = Router::start(&config(&format!(
        "    urls: [\"{}\"]\n    auth: {{token_file: {}}}\n",
        dcos.url("/marathon"),
        token.display()
    )));
    wait_ports(&router, &[20001]);

    // Rotated: the file and the accepted token change together (under the
    // fake's lock, so no request sees one without the other), and the
    // app moves.
    dcos.with(|s| {
        std::fs::write(&token, "second-token\n").unwrap();
        s.valid = HashSet::from(["second-token".to_owned()]);
        s.apps = web_app(&[20002]);
    });
    wait_ports(&router, &[20002]);
    let (seen, unauthorized) = dcos.with(|s| (s.seen.clone(), s.unauthorized));
    assert_eq!(unauthorized, 0, "{seen:?}");
    assert!(seen.iter().all(|a| a.starts_with("token=")), "{seen:?}");
    assert!(seen.contains(&"token=second-token".to_owned()), "{seen:?}");
    assert_eq!(status(&router)["discovery"]["marathon"]["sync_failures"], 0);
}

#[test]
fn a_service_account_over_https_logs_in_and_refreshes_before_expiry_and_after_a_401() {
    let _turn = crate::common::light();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = rsa_keypair(dir.path(), "sniroute");
    let (tls, ca_file) = admin_router_tls(dir.path());
    let dcos = FakeDcos::start(Some(tls), "sniroute", public, web_app(&[20011]));
    // Tokens valid for 3 s: the router logs in again after about 1.5 s.
    dcos.with(|s| s.ttl = 3);
    let router = Router::start(&config(&format!(
        "    urls: [\"{}\"]\n    ca_file: {}\n    auth:\n      service_account:\n        uid: sniroute\n        private_key_file: {}\n        login_url: {}\n",
        dcos.url("/marathon"),
        ca_file.display(),
        key.display(),
        dcos.url("/acs/api/v1/auth/login"),
    )));
    wait_ports(&router, &[20011]);
    // Resyncs every second keep using tokens; each is renewed before it
    // expires, so Marathon never answers 401.
    dcos.wait("saw three logins", |s| s.logins >= 3);
    dcos.with(|s| s.apps = web_app(&[20012]));
    wait_ports(&router, &[20012]);
    assert_eq!(dcos.with(|s| s.unauthorized), 0);

    // From now on tokens last an hour: wait for the router to hold one
    // (a login counted after the change issued it), so that no refresh
    // is due when it is revoked below.
    let logins = dcos.with(|s| {
        s.ttl = 3600;
        s.logins
    });
    dcos.wait("issued a long token", |s| s.logins > logins);
    // Every token revoked (the IAM's key rotated, say): a 401, a login,
    // the request again.
    dcos.with(|s| {
        s.valid.clear();
        s.apps = web_app(&[20013]);
    });
    wait_ports(&router, &[20013]);
    let (unauthorized, refused) = dcos.with(|s| (s.unauthorized, s.refused_logins));
    assert!(unauthorized >= 1);
    assert_eq!(refused, 0);
    assert_eq!(status(&router)["discovery"]["marathon"]["sync_failures"], 0);
}

#[test]
fn a_wrong_key_is_a_counted_error_and_the_last_endpoints_stay() {
    let _turn = crate::common::light();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = rsa_keypair(dir.path(), "sniroute");
    let (wrong, _) = rsa_keypair(dir.path(), "wrong");
    let good = std::fs::read(&key).unwrap();
    let dcos = FakeDcos::start(None, "sniroute", public, web_app(&[20021]));
    let router = Router::start(&config(&format!(
        "    urls: [\"{}\"]\n    auth: {{service_account: {{uid: sniroute, private_key_file: {}, login_url: \"{}\"}}}}\n",
        dcos.url("/marathon"),
        key.display(),
        dcos.url("/acs/api/v1/auth/login"),
    )));
    wait_ports(&router, &[20021]);

    // The key file now holds a key DC/OS does not know, and the token is
    // revoked: the next sync's login is refused.
    dcos.with(|s| {
        std::fs::copy(&wrong, &key).unwrap();
        s.valid.clear();
        s.apps = web_app(&[20022]);
    });
    dcos.wait("refused a login", |s| s.refused_logins >= 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let marathon = loop {
        let m = status(&router)["discovery"]["marathon"].clone();
        if m["sync_failures"].as_u64() >= Some(1) {
            break m;
        }
        assert!(Instant::now() < deadline, "no failure counted: {m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let error = marathon["last_error"].as_str().unwrap();
    assert!(
        error.contains("authentication: login at http://")
            && error.contains("as `sniroute`")
            && error.contains("refused with 401"),
        "{error}"
    );
    // Stale beats empty.
    assert_eq!(ports(&router), BTreeSet::from([20021]));
    // The right key back: the next login works, and the app's move shows.
    std::fs::write(&key, good).unwrap();
    wait_ports(&router, &[20022]);
}
