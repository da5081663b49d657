//! Fetching one document by URL, again and again, cheaply: the router's
//! config when `--config` is an `http://` or `https://` URL.
//!
//! - The first fetch is plain; later ones are conditional
//!   (`If-None-Match` with the last `ETag`, `If-Modified-Since` with the
//!   last `Last-Modified`), so a server that supports either answers
//!   `304 Not Modified` without a body. A `200` whose body is the one
//!   fetched last is "unchanged" too (servers without validators).
//! - `https://` trusts exactly the CA certificates of the given file, like
//!   the discovery sources ([`crate::http`]); without one no https server
//!   is trusted.
//! - Redirects are followed, at most 5, never from https to http (a
//!   config is what decides where traffic goes: it must not lose its
//!   integrity on the way).
//! - Every wait is bounded: the request (connect, head and body) by the
//!   timeout, the body by a byte limit. The body must be UTF-8.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Duration;

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;

/// What a fetch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// A document that differs from the last one fetched (always so for
    /// the first fetch and for [`Fetcher::fetch`] with `conditional` off).
    Changed(String),
    /// The server answered `304 Not Modified`, or the same body again.
    Unchanged,
}

/// A URL fetched repeatedly; remembers the validators and a hash of the
/// last body.
#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    shown: String,
    timeout: Duration,
    max_bytes: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    last_body: Option<u64>,
}

impl Fetcher {
    /// A fetcher for `url` (`http://` or `https://`, query allowed).
    /// `shown`: how the URL is named in errors (without a pre-signed
    /// URL's query). `ca_file`: the CA certificates an https server must
    /// be signed by. Each fetch is bounded by `timeout` and its body by
    /// `max_bytes`.
    ///
    /// # Errors
    /// The URL does not parse or is not http(s); the CA file cannot be
    /// read; the HTTP client cannot be built.
    pub fn new(
        url: &str,
        shown: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Fetcher, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "http" => {}
            "https" if ca_file.is_none() => {
                return Err(
                    "an https:// config URL needs $SNIROUTE_CONFIG_CA naming the PEM \
                     file of the CA certificates its server is signed by (for the system's \
                     roots: /etc/ssl/certs/ca-certificates.crt)"
                        .to_owned(),
                )
            }
            "https" => {}
            other => return Err(format!("`{other}:` is not http or https")),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("a config URL carries no user or password".to_owned());
        }
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                attempt.error("redirected from https to http")
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::http::tls_config(ca_file)?)
            .redirect(policy)
            .no_proxy()
            .connect_timeout(timeout)
            .http1_only()
            .user_agent(concat!("sniroute/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {}", crate::http::error_text(e)))?;
        Ok(Fetcher {
            client,
            url: parsed,
            shown: shown.to_owned(),
            timeout,
            max_bytes,
            etag: None,
            last_modified: None,
            last_body: None,
        })
    }

    /// Fetches the document. `conditional`: send the validators of the
    /// last fetch and report [`Fetched::Unchanged`] when nothing changed;
    /// otherwise the body is always returned (a reload asked for by
    /// `SIGHUP` reads the document again).
    ///
    /// # Errors
    /// The server cannot be reached, answers neither `200` nor `304` (a
    /// `304` to an unconditional request included), or sends a body over
    /// the limit, cut short, not UTF-8, or not within the timeout.
    pub async fn fetch(&mut self, conditional: bool) -> Result<Fetched, String> {
        match tokio::time::timeout(self.timeout, self.request(conditional)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: no complete answer within {:?}",
                self.shown, self.timeout
            )),
        }
    }

    async fn request(&mut self, conditional: bool) -> Result<Fetched, String> {
        let shown = &self.shown;
        let mut req = self.client.get(self.url.clone());
        if conditional {
            if let Some(etag) = &self.etag {
                req = req.header("If-None-Match", etag);
            }
            if let Some(at) = &self.last_modified {
                req = req.header("If-Modified-Since", at);
            }
        }
        let resp = crate::http::Response::from(
            req.send()
                .await
                .map_err(|e| format!("{shown}: {}", crate::http::error_text(e)))?,
        );
        let status = resp.status;
        if status == 304 && conditional && (self.etag.is_some() || self.last_modified.is_some()) {
            return Ok(Fetched::Unchanged);
        }
        if status != 200 {
            let reason = reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            return Err(format!("{shown}: the server answered {status} {reason}"));
        }
        let etag = resp.header("ETag").map(str::to_owned);
        let last_modified = resp.header("Last-Modified").map(str::to_owned);
        let limit = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        // The sources' bounded body reader: refused before reading when
        // `Content-Length` is over the limit, else as it grows past it.
        let body = resp
            .body(limit)
            .await
            .map_err(|e| format!("{shown}: {e}"))?;
        let text = String::from_utf8(body).map_err(|e| {
            format!(
                "{shown}: the document is not valid UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            )
        })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        let same = self.last_body == Some(hash);
        self.etag = etag;
        self.last_modified = last_modified;
        self.last_body = Some(hash);
        if conditional && same {
            Ok(Fetched::Unchanged)
        } else {
            Ok(Fetched::Changed(text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server on loopback that stands for a config server
    /// (an artifact store, nginx serving a directory): it answers each
    /// request with the next canned response and records the request
    /// heads.
    async fn server(answers: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for answer in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                // `<FF>` stands for the byte 0xff (not UTF-8).
                let answer = answer.replace("{addr}", &addr.to_string());
                let mut bytes = Vec::new();
                for (i, part) in answer.split("<FF>").enumerate() {
                    if i > 0 {
                        bytes.push(0xff);
                    }
                    bytes.extend_from_slice(part.as_bytes());
                }
                s.write_all(&bytes).await.unwrap();
                let _ = s.shutdown().await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn ok(body: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    fn fetcher(url: &str) -> Fetcher {
        Fetcher::new(url, url, None, Duration::from_secs(5), 1024).unwrap()
    }

    #[tokio::test]
    async fn conditional_fetches_use_the_validators_and_tell_unchanged() {
        let not_modified = "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_owned();
        let (base, seen) = server(vec![
            ok(
                "a: 1\n",
                "ETag: \"v1\"\r\nLast-Modified: Sun, 29 Nov 2026 10:00:00 GMT\r\n",
            ),
            not_modified,
            ok("a: 2\n", "ETag: \"v2\"\r\n"),
            // No validators, the same body: unchanged all the same.
            ok("a: 2\n", ""),
            ok("a: 2\n", ""),
        ])
        .await;
        let mut f = fetcher(&format!("{base}/sniroute.yaml"));
        assert_eq!(
            f.fetch(true).await.unwrap(),
            Fetched::Changed("a: 1\n".into())
        );
        assert_eq!(f.fetch(true).await.unwrap(), Fetched::Unchanged);
        assert_eq!(
            f.fetch(true).await.unwrap(),
            Fetched::Changed("a: 2\n".into())
        );
        assert_eq!(f.fetch(true).await.unwrap(), Fetched::Unchanged);
        // Unconditional: the body, changed or not.
        assert_eq!(
            f.fetch(false).await.unwrap(),
            Fetched::Changed("a: 2\n".into())
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /sniroute.yaml HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(!seen[0].to_ascii_lowercase().contains("if-none-match"));
        let second = seen[1].to_ascii_lowercase();
        assert!(second.contains("if-none-match: \"v1\"\r\n"), "{second}");
        assert!(
            second.contains("if-modified-since: sun, 29 nov 2026 10:00:00 gmt\r\n"),
            "{second}"
        );
        assert!(seen[3]
            .to_ascii_lowercase()
            .contains("if-none-match: \"v2\""));
        assert!(!seen[4].to_ascii_lowercase().contains("if-none-match"));
    }

    #[tokio::test]
    async fn errors_name_the_url_and_the_cause() {
        let (base, _) = server(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            ok(&"x".repeat(2000), ""),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab<FF>".into(),
            "HTTP/1.1 302 Found\r\nLocation: http://{addr}/moved\r\nContent-Length: 0\r\n\r\n"
                .into(),
            ok("moved: true\n", ""),
        ])
        .await;
        let url = format!("{base}/c.yaml");
        let mut f = fetcher(&url);
        let e = f.fetch(true).await.unwrap_err();
        assert_eq!(e, format!("{url}: the server answered 404 Not Found"));
        let e = f.fetch(true).await.unwrap_err();
        assert!(
            e.ends_with("body of 2000 bytes is over the 1024 byte limit"),
            "{e}"
        );
        let e = f.fetch(true).await.unwrap_err();
        assert!(e.contains("not valid UTF-8 (at byte 2)"), "{e}");
        // A redirect is followed.
        assert_eq!(
            f.fetch(true).await.unwrap(),
            Fetched::Changed("moved: true\n".into())
        );
        // Nobody listens any more.
        let e = f.fetch(true).await.unwrap_err();
        assert!(e.starts_with(&url), "{e}");
    }

    #[test]
    fn https_needs_a_ca_and_urls_are_checked() {
        let new = |u: &str| Fetcher::new(u, u, None, Duration::from_secs(1), 10).unwrap_err();
        assert!(new("https://h/c.yaml").contains("$SNIROUTE_CONFIG_CA"));
        assert!(new("ftp://h/c.yaml").contains("not http or https"));
        assert!(new("http://user:pw@h/c.yaml").contains("no user or password"));
        assert!(new("http://").contains("not a URL"));
    }

    #[tokio::test]
    async fn a_silent_server_is_given_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let url = format!("http://{addr}/c.yaml");
        let mut f = Fetcher::new(&url, &url, None, Duration::from_millis(300), 10).unwrap();
        let e = f.fetch(false).await.unwrap_err();
        assert!(e.contains("no complete answer within"), "{e}");
        hold.abort();
    }
}
