//! `--config URL`: the config fetched from an HTTP server, watched with
//! conditional requests, reloaded when it changes, and kept when the
//! server fails or serves something invalid; on the real binary.
//!
//! [`ConfigServer`] stands for what operators serve configs from (nginx
//! over a directory, an artifact store, an object store): HTTP/1.1 with
//! keep-alive, a strong `ETag` per version, `304 Not Modified` to a
//! matching `If-None-Match`, and `503 Service Unavailable` while it is
//! "down".

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{bin, metric, reach, reloads, Router};
use clienthello::synth::HelloBuilder;

#[derive(Default)]
struct Served {
    body: String,
    version: u32,
    /// Requests answered 503 from now on (`u32::MAX`: until told).
    down_for: u32,
    ok: usize,
    not_modified: usize,
    unavailable: usize,
}

/// A config server on loopback; stops with the test.
struct ConfigServer {
    addr: SocketAddr,
    state: Arc<Mutex<Served>>,
    stop: Arc<AtomicBool>,
}

impl ConfigServer {
    fn start(body: &str) -> ConfigServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Served {
            body: body.to_owned(),
            version: 1,
            ..Served::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (st, sp) = (st.clone(), sp.clone());
                        std::thread::spawn(move || serve(s, &st, &sp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ConfigServer { addr, state, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/configs/sniroute.yaml", self.addr)
    }

    fn publish(&self, body: &str) {
        let mut s = self.state.lock().unwrap();
        s.body = body.to_owned();
        s.version += 1;
    }

    fn counts(&self) -> (usize, usize, usize) {
        let s = self.state.lock().unwrap();
        (s.ok, s.not_modified, s.unavailable)
    }

    fn wait(&self, what: &str, done: impl Fn(&Served) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.state.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "config server: no {what} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One keep-alive connection: requests until the client closes.
fn serve(s: TcpStream, state: &Mutex<Served>, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = s.try_clone().unwrap();
    let mut reader = BufReader::new(s);
    while !stop.load(Ordering::Relaxed) {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        let mut if_none_match = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("if-none-match") {
                    if_none_match = Some(v.trim().to_owned());
                }
            }
        }
        assert!(
            request_line.starts_with("GET /configs/sniroute.yaml HTTP/1.1"),
            "{request_line}"
        );
        let answer = {
            let mut st = state.lock().unwrap();
            let etag = format!("\"v{}\"", st.version);
            if st.down_for > 0 {
                st.down_for -= 1;
                st.unavailable += 1;
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_owned()
            } else if if_none_match.as_deref() == Some(etag.as_str()) {
                st.not_modified += 1;
                format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\n\r\n")
            } else {
                st.ok += 1;
                format!(
                    "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/yaml\r\n\
                     Content-Length: {}\r\n\r\n{}",
                    st.body.len(),
                    st.body
                )
            }
        };
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn routes(beta: SocketAddr) -> String {
    format!(
        r#"watch_config: true
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 1s, connect: 1s, drain: 3s}}
routes:
  - name: beta
    server_names: [beta.test]
    upstreams: ["{beta}"]
"#
    )
}

/// `sniroute run --config URL` (the harness's file is not used).
fn spawn(url: &str) -> Router {
    let url = url.to_owned();
    Router::spawn_wrapped(
        "unused: the config comes from the URL\n",
        |_| {},
        move |cmd| {
            let mut args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
            let at = args.iter().position(|a| a == "--config").unwrap() + 1;
            args[at] = url.into();
            let mut with_url = Command::new(bin());
            with_url
                .args(args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            with_url
        },
    )
}

fn fetches(router: &Router, result: &str) -> f64 {
    metric(
        &router.metrics(),
        "sniroute_config_fetches_total",
        &[("result", result)],
    )
    .unwrap()
}

#[test]
fn a_config_url_is_fetched_watched_and_reloaded() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let b = Upstream::start("b", Behaviour::Greet);
    let server = ConfigServer::start(&routes(a.addr));
    let mut router = spawn(&server.url());
    router.wait_ready();
    let ready = router.wait_log(Duration::from_secs(5), |l| {
        l["message"] == "sniroute is ready"
    });
    assert_eq!(ready["source"], server.url());
    let beta = HelloBuilder::new("beta.test").build();
    assert_eq!(reach(router.addr(), &beta).unwrap(), "a");

    // The watch asks with the ETag and gets 304s: nothing is reloaded.
    // (The server counts its answer before the router reads it: wait for
    // the router's count.)
    server.wait("304", |s| s.not_modified >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetches(&router, "unchanged") < 1.0 {
        assert!(Instant::now() < deadline, "the 304 was not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fetches(&router, "changed"), 1.0);
    assert_eq!(server.counts().0, 1, "one full download so far");

    // A new version: fetched and put in force, with no signal.
    server.publish(&routes(b.addr));
    router.wait_log(Duration::from_secs(30), |l| {
        l["message"] == "config reloaded"
    });
    assert_eq!(reach(router.addr(), &beta).unwrap(), "b");
    assert_eq!(fetches(&router, "changed"), 2.0);

    // The server fails: a reload asked for by SIGHUP fails, the config in
    // force stays.
    server.state.lock().unwrap().down_for = u32::MAX;
    router.signal("HUP");
    let failed = router.wait_log(Duration::from_secs(30), |l| {
        l["message"] == "config reload failed; the previous config stays in force"
    });
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}: cannot fetch: ", server.url())),
        "{error}"
    );
    assert!(error.contains("503"), "{error}");
    assert_eq!(reach(router.addr(), &beta).unwrap(), "b");
    assert!(fetches(&router, "failure") >= 1.0);

    // Back, with a document that does not validate: its error names the
    // URL, the line and the key; the config in force stays.
    server.publish(&routes(a.addr).replace("upstreams:", "upstream:"));
    server.state.lock().unwrap().down_for = 0;
    router.signal("HUP");
    let failed = router.wait_log(Duration::from_secs(30), |l| {
        l["message"] == "config reload failed; the previous config stays in force"
            && l["error"]
                .as_str()
                .is_some_and(|e| !e.contains("cannot fetch"))
    });
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}:8:", server.url())),
        "{error}"
    );
    assert!(error.contains("upstream"), "{error}");
    assert_eq!(reach(router.addr(), &beta).unwrap(), "b");
    let m = router.metrics();
    assert_eq!(reloads(&m, "success"), 1.0);
    assert_eq!(reloads(&m, "failure"), 2.0);
}

#[test]
fn the_first_fetch_is_retried_while_the_server_fails() {
    let _turn = crate::common::light();
    let a = Upstream::start("a", Behaviour::Greet);
    let server = ConfigServer::start(&routes(a.addr));
    server.state.lock().unwrap().down_for = 2;
    let mut router = spawn(&server.url());
    router.wait_ready();
    let retries = router
        .logs()
        .iter()
        .filter(|l| l["message"] == "cannot fetch the config; trying again in 1 s")
        .count();
    assert_eq!(retries, 2);
    assert_eq!(server.counts().2, 2);
    let beta = HelloBuilder::new("beta.test").build();
    assert_eq!(reach(router.addr(), &beta).unwrap(), "a");
}

#[test]
fn check_fetches_a_config_url_and_names_what_is_wrong() {
    let a = Upstream::start("a", Behaviour::Greet);
    let server = ConfigServer::start(&routes(a.addr));
    let check = |url: &str, env: &[(&str, &str)]| {
        let out = Command::new(bin())
            .args(["check", "--config", url])
            .envs(env.iter().copied())
            .env_remove("SNIROUTE_CONFIG_CA")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = check(&server.url(), &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("beta.test"), "{out}");
    assert!(out.ends_with(&format!("{}: OK\n", server.url())), "{out}");

    // https needs the CA to trust.
    let https = format!("https://{}/configs/sniroute.yaml", server.addr);
    let (code, _, err) = check(&https, &[]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("{https}: ")), "{err}");
    assert!(err.contains("$SNIROUTE_CONFIG_CA"), "{err}");

    // A pre-signed URL's query stays out of messages.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (code, _, err) = check(&format!("http://{gone}/c.yaml?Signature=secret"), &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with(&format!("http://{gone}/c.yaml?...: cannot fetch: ")),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");

    // $SNIROUTE_CONFIG may be the URL too.
    let out = Command::new(bin())
        .arg("check")
        .env("SNIROUTE_CONFIG", server.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
