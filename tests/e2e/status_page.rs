//! The status page and `/status` after known traffic: per-route counts,
//! bytes and rates, endpoint failures and last error, and the recent
//! refusals with the server names clients sent (sanitised; the one with
//! HTML in it shown as text). The page is loaded in headless Chromium
//! through a path-prefix proxy, as DC/OS Admin Router serves it.
//!
//! Chromium comes from the Debian package `chromium` (scripts/test installs
//! it). Set `SNIROUTE_KEEP_SCREENSHOT=/some/file.png` to keep the
//! screenshot the test takes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::raw::{Behaviour, Upstream};
use crate::common::{answer, Router};
use clienthello::synth::HelloBuilder;

/// The prefix the proxy serves the admin endpoint under.
const PREFIX: &str = "/service/sniroute";

const HTML_NAME: &[u8] = b"<script>alert(1)</script>";

/// A router with three routes and the traffic the tests check, sent in
/// this order (the refusals list is newest first, so the reverse):
/// - 3 × `alpha.test`, forwarded: the hello and 1,000 bytes each way;
/// - 2 × no route: `nowhere.test`, `Other.Example` (shown normalised);
/// - 1 × `guarded.test`, denied (the route allows 192.0.2.0/24 only);
/// - 1 × `dead.test`, upstream unavailable (nothing listens there);
/// - 4 × an invalid name, refused as a bad ClientHello, shown as sent:
///   an IP literal, HTML, NUL and non-ASCII bytes, 300 bytes (cut);
/// - 1 × plaintext HTTP (not TLS, answered with HTTP 400, no name).
///
/// `alpha` has no health check; `dead`'s marks its endpoint down after one
/// failed check, which [`traffic`] waits for.
struct Traffic {
    router: Router,
    _up: Upstream,
    dead: SocketAddr,
    /// Bytes each way on `alpha`, the ClientHellos included.
    alpha_bytes: u64,
}

fn traffic() -> Traffic {
    let up = Upstream::start("alpha", Behaviour::Echo);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = format!(
        r#"
listeners: ["127.0.0.1:0"]
admin: "127.0.0.1:0"
timeouts: {{client_hello: 2s, connect: 2s}}
routes:
  - name: alpha
    server_names: [alpha.test]
    upstreams: ["{up}"]
    health_check: false
  - name: guarded
    server_names: [guarded.test]
    upstreams: ["{up}"]
    allow_sources: ["192.0.2.0/24"]
  - name: dead
    server_names: [dead.test]
    upstreams: ["{dead}"]
    health_check: {{interval: 100ms, unhealthy_after: 1}}
"#,
        up = up.addr,
    );
    let router = Router::start(&yaml);
    let addr = router.addr();

    let hello = HelloBuilder::new("alpha.test").build();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&hello).unwrap();
        s.write_all(&[7u8; 1000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), hello.len() + 1000);
    }
    let refuse = |hello: &[u8]| {
        let _ = answer(addr, hello);
    };
    refuse(&HelloBuilder::new("nowhere.test").build());
    refuse(&HelloBuilder::new("Other.Example").build());
    refuse(&HelloBuilder::new("guarded.test").build());
    refuse(&HelloBuilder::new("dead.test").build());
    for raw in [
        &b"192.0.2.10"[..],
        HTML_NAME,
        b"evil\x00\xff.test",
        &[b'a'; 300][..],
    ] {
        refuse(&HelloBuilder::new("").raw_server_name(raw).build());
    }
    refuse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    router.wait_access_logs(12, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while route(&status(&router), "dead")["endpoints"][0]["state"] != "unhealthy" {
        assert!(Instant::now() < deadline, "dead.test never marked down");
        std::thread::sleep(Duration::from_millis(50));
    }
    Traffic {
        router,
        _up: up,
        dead,
        alpha_bytes: 3 * (hello.len() as u64 + 1000),
    }
}

/// (result, alert, route, sni) of each refusal, newest first.
fn expected_refusals() -> Vec<(&'static str, &'static str, Value, Value)> {
    let long = format!("{}…", "a".repeat(255));
    vec![
        ("not_tls", "HTTP 400", Value::Null, Value::Null),
        ("bad_client_hello", "decode_error", Value::Null, long.into()),
        (
            "bad_client_hello",
            "decode_error",
            Value::Null,
            "evil\\x00\\xff.test".into(),
        ),
        (
            "bad_client_hello",
            "decode_error",
            Value::Null,
            "<script>alert(1)</script>".into(),
        ),
        (
            "bad_client_hello",
            "decode_error",
            Value::Null,
            "192.0.2.10".into(),
        ),
        (
            "upstream_unavailable",
            "internal_error",
            "dead".into(),
            "dead.test".into(),
        ),
        (
            "denied",
            "access_denied",
            "guarded".into(),
            "guarded.test".into(),
        ),
        (
            "no_route",
            "unrecognized_name",
            Value::Null,
            "other.example".into(),
        ),
        (
            "no_route",
            "unrecognized_name",
            Value::Null,
            "nowhere.test".into(),
        ),
    ]
}

fn status(router: &Router) -> Value {
    let (code, body) = router.admin_get("/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn route<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {status:#}"))
}

/// `/status` has the counts, bytes, rates, endpoint failures and the
/// recent refusals (newest first) with their names sanitised.
#[test]
fn status_json_tells_what_happened() {
    let _turn = crate::common::light();
    let t = traffic();
    let s = status(&t.router);

    let alpha = route(&s, "alpha");
    assert_eq!(alpha["connections"]["total"], 3, "{alpha:#}");
    assert_eq!(alpha["connections"]["forwarded"], 3);
    assert_eq!(alpha["connections"]["refused"], 0);
    assert_eq!(alpha["connections"]["by_result"]["denied"], 0);
    assert_eq!(alpha["bytes"]["client_to_upstream"], t.alpha_bytes);
    assert_eq!(alpha["bytes"]["upstream_to_client"], t.alpha_bytes);
    // Sampled since start: a rate right away, over the time so far.
    let rates = &alpha["rates"];
    let window = rates["window_seconds"].as_f64().unwrap();
    assert!((0.0..70.0).contains(&window), "{rates:#}");
    assert!(
        rates["connections_per_second"].as_f64().unwrap() > 0.0,
        "{rates:#}"
    );
    assert!(
        rates["client_to_upstream_bytes_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(rates["refusals_per_second"], 0.0);

    let guarded = route(&s, "guarded");
    assert_eq!(guarded["connections"]["total"], 1);
    assert_eq!(guarded["connections"]["by_result"]["denied"], 1);

    let dead = route(&s, "dead");
    assert_eq!(dead["connections"]["by_result"]["upstream_unavailable"], 1);
    assert!(dead["rates"]["refusals_per_second"].as_f64().unwrap() > 0.0);
    let ep = &dead["endpoints"][0];
    assert_eq!(ep["address"], t.dead.to_string());
    assert_eq!(ep["state"], "unhealthy");
    assert_eq!(ep["healthy"], false);
    assert_eq!(dead["health_checked"], true);
    assert_eq!(ep["connect_failures"], 1, "{ep:#}");
    let error = ep["last_error"]["error"].as_str().unwrap();
    assert!(error.contains("refused"), "{error}");
    assert!(ep["last_error"]["time"].as_str().unwrap().ends_with('Z'));
    let alpha_ep = &alpha["endpoints"][0];
    assert_eq!(alpha["health_checked"], false);
    assert_eq!(alpha_ep["state"], "healthy", "not checked: healthy");
    assert_eq!(alpha_ep["connect_failures"], 0);
    assert_eq!(alpha_ep["last_error"], Value::Null);

    let unrouted = &s["unrouted"]["connections"];
    assert_eq!(unrouted["by_result"]["no_route"], 2, "{unrouted:#}");
    assert_eq!(unrouted["by_result"]["bad_client_hello"], 4);
    assert_eq!(unrouted["by_result"]["not_tls"], 1);
    assert_eq!(unrouted["total"], 7);
    assert_eq!(unrouted["forwarded"], 0);
    assert!(
        s["unrouted"]["rates"]["refusals_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let recent = s["recent_refusals"].as_array().unwrap();
    let got: Vec<_> = recent
        .iter()
        .map(|r| {
            (
                r["result"].as_str().unwrap(),
                r["alert"].as_str().unwrap(),
                r["route"].clone(),
                r["sni"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected_refusals(), "{recent:#?}");
    for r in recent {
        assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(r["listener"], "127.0.0.1:0");
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }

    // The names a client sent are nowhere else: not in /metrics, not in
    // the access log (which has validated names only).
    let metrics = t.router.metrics();
    for name in ["nowhere", "other.example", "192.0.2.10", "script", "evil"] {
        assert!(!metrics.contains(name), "{name} in /metrics");
    }
    for line in t.router.logs() {
        let text = line.to_string();
        for name in ["192.0.2.10", "script", "evil", "aaaaaaaa"] {
            assert!(!text.contains(name), "{name} logged: {text}");
        }
    }
}

/// A tiny reverse proxy that serves `target` under [`PREFIX`], as DC/OS
/// Admin Router does, and remembers the paths asked for. Anything outside
/// the prefix gets a 404, so a page using absolute URLs breaks.
struct PrefixProxy {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
}

impl PrefixProxy {
    fn start(target: SocketAddr) -> PrefixProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = paths.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = Self::serve(client, target, &seen);
                });
            }
        });
        PrefixProxy { addr, paths }
    }

    fn serve(
        mut client: TcpStream,
        target: SocketAddr,
        seen: &Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(client.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            // One request per connection, like the admin endpoint.
            if !line.to_ascii_lowercase().starts_with("connection:") {
                head.push_str(&line);
            }
        }
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        seen.lock().unwrap().push(path.to_owned());
        let inner = match path.strip_prefix(PREFIX) {
            Some("") => "/".to_owned(),
            Some(rest) if rest.starts_with('/') => rest.to_owned(),
            _ => {
                let body = "outside the prefix\n";
                write!(
                    client,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
                return Ok(());
            }
        };
        let mut upstream = TcpStream::connect(target)?;
        write!(
            upstream,
            "{method} {inner} HTTP/1.1\r\n{head}Connection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        upstream.read_to_end(&mut response)?;
        client.write_all(&response)?;
        client.shutdown(std::net::Shutdown::Both)
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Runs headless Chromium with `args` and a fresh profile; its output.
/// Fails with the package to install when there is no `chromium`.
fn chromium(args: &[&str]) -> std::process::Output {
    if Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!(
            "chromium not found: install the Debian package `chromium` \
             (apt-get install chromium; scripts/test installs it)"
        );
    }
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read both pipes while waiting, so a chatty browser cannot block.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The DOM of `url` after its scripts ran.
fn dump_dom(url: &str) -> String {
    let out = chromium(&["--dump-dom", url]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom {url} failed ({}):\n{}\n{dom}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The `<table id="…">` element of `dom`, as serialised.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in\n{dom}"));
    let end = start + dom[start..].find("</table>").unwrap();
    &dom[start..end]
}

/// The text of cell `field` in the first row of `table` for `route`.
fn cell(table: &str, route: &str, field: &str) -> String {
    let row_start = table
        .find(&format!("<tr data-route=\"{route}\""))
        .unwrap_or_else(|| panic!("no row for {route} in\n{table}"));
    let row = &table[row_start..];
    let row = &row[..row.find("</tr>").unwrap()];
    let at = row
        .find(&format!("data-field=\"{field}\""))
        .unwrap_or_else(|| panic!("no {field} in {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').unwrap() + 1..text.find("</td>").unwrap()];
    // Drop inner tags (<b>, <code>, ...).
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    plain
}

/// The page, loaded in Chromium under a path prefix, shows the counts and
/// the refused names, the one with HTML in it as text; a screenshot of it
/// is a real PNG.
#[test]
fn page_in_chromium_behind_a_path_prefix() {
    let _turn = crate::common::light();
    let t = traffic();
    let proxy = PrefixProxy::start(t.router.admin.unwrap());
    let url = format!("http://{}{PREFIX}/", proxy.addr);
    let dom = dump_dom(&url);

    assert!(
        dom.contains("<div class=\"meta\" id=\"meta\">version <b>"),
        "the page could not fetch its data:\n{dom}"
    );
    let paths = proxy.paths();
    assert!(
        paths.iter().any(|p| p == &format!("{PREFIX}/status")),
        "the page fetched {paths:?}"
    );
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with(PREFIX) || p == "/favicon.ico"),
        "a request left the prefix: {paths:?}"
    );

    let routes = table(&dom, "routes");
    assert_eq!(cell(routes, "alpha", "forwarded"), "3");
    assert_eq!(cell(routes, "alpha", "connections"), "3");
    assert_eq!(cell(routes, "guarded", "refused"), "denied 1");
    assert_eq!(cell(routes, "dead", "refused"), "upstream_unavailable 1");
    assert_eq!(
        cell(routes, "", "refused"),
        "bad_client_hello 4, no_route 2, not_tls 1"
    );
    assert!(cell(routes, "alpha", "connections_rate").ends_with("/s"));
    let endpoints = table(&dom, "endpoints");
    assert_eq!(cell(endpoints, "dead", "connect_failures"), "1");
    assert!(cell(endpoints, "dead", "last_error").contains("refused"));
    assert_eq!(cell(endpoints, "alpha", "state"), "HEALTHY (not checked)");
    assert_eq!(cell(endpoints, "guarded", "state"), "HEALTHY");
    assert_eq!(cell(endpoints, "dead", "state"), "UNHEALTHY");
    // The last check: result, latency and reason.
    let check = cell(endpoints, "dead", "last_check");
    assert!(
        check.starts_with("connect_error in ") && check.contains(" ms \u{2014} connect failed:"),
        "{check}"
    );
    assert!(cell(endpoints, "guarded", "last_check").starts_with("ok in "));
    assert_eq!(cell(endpoints, "alpha", "last_check"), "-", "not checked");

    let refusals = table(&dom, "refusals");
    for name in [
        "nowhere.test",
        "other.example",
        "192.0.2.10",
        "evil\\x00\\xff.test",
        "guarded.test",
        "dead.test",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ] {
        assert!(refusals.contains(name), "{name} missing in\n{refusals}");
    }
    for alert in [
        "unrecognized_name",
        "access_denied",
        "internal_error",
        "decode_error",
        "HTTP 400",
    ] {
        assert!(refusals.contains(alert), "{alert} missing in\n{refusals}");
    }
    // The name is text: no element was injected anywhere.
    assert!(!dom.contains("<script>alert"), "{dom}");
    assert_eq!(dom.matches("<script").count(), 1, "only the page's own");

    // At the prefix without its trailing slash, too.
    let dom = dump_dom(&format!("http://{}{PREFIX}", proxy.addr));
    assert_eq!(cell(table(&dom, "routes"), "alpha", "forwarded"), "3");

    // A screenshot, for people (and a check that the page renders).
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("status.png");
    let out = chromium(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1400,1000",
        &url,
    ]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}; chromium {}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 20_000, "{} bytes: blank?", bytes.len());
    if let Some(keep) = std::env::var_os("SNIROUTE_KEEP_SCREENSHOT") {
        std::fs::copy(&png, Path::new(&keep)).unwrap();
    }
}
