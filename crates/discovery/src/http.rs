//! A small HTTP/1.1 client over tokio: `GET`, and `POST` with a small body
//! (Mesos' operator API), one request per
//! connection (`Connection: close`), bodies framed by `Content-Length`,
//! chunked transfer coding or the end of the connection, every size and
//! wait bounded. [`get`] reads a whole body; [`open`] hands the body out as
//! it arrives, for the event stream.
//!
//! Plain `http://` only: https (Admin Router, a `ca_file`) is not
//! implemented yet, and config validation refuses https URLs.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// An `http://host[:port][/prefix]` URL, the prefix without a trailing
/// slash (Marathon behind a path, as Admin Router serves it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when not written).
    pub port: u16,
    /// Path prefix, empty or starting with `/`, no trailing `/`.
    pub prefix: String,
}

impl Url {
    /// Parses `http://host[:port][/prefix]`.
    ///
    /// # Errors
    /// A message saying what is wrong, for an https URL too.
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = if let Some(rest) = s.strip_prefix("http://") {
            rest
        } else if s.starts_with("https://") {
            return Err(format!(
                "`{s}`: https is not supported yet; use Marathon's plain http URL (http://marathon.mesos:8080)"
            ));
        } else {
            return Err(format!(
                "`{s}` is not an http URL such as `http://marathon.mesos:8080`"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['@', '?', '#']) {
            return Err(format!(
                "`{s}`: a Marathon URL has no user, query or fragment"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: an IPv6 address needs its closing `]`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("`{s}`: the host is missing or not a valid name"));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("`{s}`: `{p}` is not a port")),
            },
        };
        if !path
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '%' | '"' | '<' | '>' | '\\'))
        {
            return Err(format!("`{s}`: the path may hold plain characters only"));
        }
        Ok(Url {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port` as the `Host` header writes it.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Where a `Location` header points, relative to this URL's request:
    /// an absolute `http://` URL or an absolute path on the same server.
    /// The result is the full URL of the target (path included) and the
    /// request path to use on it.
    pub(crate) fn redirect(&self, location: &str) -> Option<(Url, String)> {
        if location.starts_with('/') && !location.starts_with("//") {
            let base = Url {
                prefix: String::new(),
                ..self.clone()
            };
            return Some((base, location.to_owned()));
        }
        // Absolute, or scheme-relative (`//host:port/path`).
        let scheme_rest = match location.strip_prefix("//") {
            Some(rest) => rest,
            None => location.strip_prefix("http://")?,
        };
        let (authority, path) = match scheme_rest.find('/') {
            Some(i) => (&scheme_rest[..i], &scheme_rest[i..]),
            None => (scheme_rest, "/"),
        };
        let base = Url::parse(&format!("http://{authority}")).ok()?;
        Some((base, path.to_owned()))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.prefix)
    }
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Connect, read or write failed, or took too long.
    Io(std::io::Error),
    /// The server answered something that is not HTTP/1.x as we read it,
    /// or too large.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(m) => f.write_str(m),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> Error {
    Error::Protocol(m.into())
}

/// A response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    /// The first header named `name` (ASCII case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a complete head (status line and headers, without the empty
/// line that ends it).
pub(crate) fn parse_head(text: &[u8]) -> Result<Head, Error> {
    let text = std::str::from_utf8(text).map_err(|_| protocol("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(protocol(format!(
            "not an HTTP/1.x response: `{status_line}`"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| protocol(format!("bad status line `{status_line}`")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| protocol(format!("bad header line `{line}`")))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Head { status, headers })
}

/// How a body ends.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// The chunked transfer coding, decoded incrementally: bytes go in as they
/// arrive, split anywhere.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// This many data bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Decodes `input` into `out`; `Ok(true)` once the last chunk and the
    /// trailers are complete (bytes after that are ignored).
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, Error> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Data(n) => {
                    let take = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > MAX_CHUNK_LINE {
                            return Err(protocol("chunk line too long"));
                        }
                        return Ok(false);
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    if self.line.len() > MAX_CHUNK_LINE {
                        return Err(protocol("chunk line too long"));
                    }
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    self.state = match self.state {
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err(protocol("chunk data longer than its size"))
                        }
                        ChunkState::Trailers if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailers => ChunkState::Trailers,
                        _ => {
                            let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                            let hex = std::str::from_utf8(hex)
                                .ok()
                                .map(str::trim)
                                .filter(|h| !h.is_empty() && h.len() <= 15)
                                .and_then(|h| u64::from_str_radix(h, 16).ok())
                                .ok_or_else(|| protocol("bad chunk size"))?;
                            if hex == 0 {
                                ChunkState::Trailers
                            } else {
                                ChunkState::Data(hex)
                            }
                        }
                    };
                }
            }
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// A response whose body is read as it arrives.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) head: Head,
    stream: TcpStream,
    framing: Framing,
    /// Body bytes read with the head, not handed out yet.
    pending: Vec<u8>,
    done: bool,
}

impl Response {
    /// The next decoded piece of the body; `None` at its end. Each read
    /// waits for the stream: bound it with a timeout.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            let raw = if self.pending.is_empty() {
                let mut buf = vec![0u8; 16 * 1024];
                let n = self.stream.read(&mut buf).await?;
                if n == 0 {
                    self.done = true;
                    return match self.framing {
                        Framing::Close => Ok(None),
                        Framing::Length(0) => Ok(None),
                        _ => Err(protocol("the connection closed inside the body")),
                    };
                }
                buf.truncate(n);
                buf
            } else {
                std::mem::take(&mut self.pending)
            };
            let mut out = Vec::new();
            match &mut self.framing {
                Framing::Close => out = raw,
                Framing::Length(left) => {
                    let take = (*left).min(raw.len() as u64) as usize;
                    out.extend_from_slice(&raw[..take]);
                    *left -= take as u64;
                    self.done = *left == 0;
                }
                Framing::Chunked(dec) => self.done = dec.feed(&raw, &mut out)?,
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    /// The whole body, refused past `limit` bytes.
    pub(crate) async fn body(mut self, limit: usize) -> Result<Vec<u8>, Error> {
        if let Framing::Length(n) = self.framing {
            if n > limit as u64 {
                return Err(protocol(format!(
                    "body of {n} bytes is over the {limit} byte limit"
                )));
            }
        }
        let mut body = Vec::new();
        while let Some(piece) = self.next().await? {
            if body.len() + piece.len() > limit {
                return Err(protocol(format!("body over the {limit} byte limit")));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

/// Sends `method path` (under `url`'s prefix) with `body` (none for
/// `GET`) to `url`'s server and reads the response head within `timeout`.
pub(crate) async fn open(
    method: &str,
    url: &Url,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, Error> {
    let attempt = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
        let _ = stream.set_nodelay(true);
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sniroute/{}\r\nConnection: close\r\n",
            url.prefix,
            url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(protocol("the connection closed before a response"));
            }
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + i;
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(protocol("response head over 64 KiB"));
            }
        };
        let head = parse_head(&buf[..end])?;
        let pending = buf[end + 4..].to_vec();
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let framing = if chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else if let Some(len) = head.header("content-length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| protocol(format!("bad Content-Length `{len}`")))?,
            )
        } else if head.status == 204 || head.status == 304 {
            Framing::Length(0)
        } else {
            Framing::Close
        };
        let done = matches!(framing, Framing::Length(0));
        Ok(Response {
            head,
            stream,
            framing,
            pending,
            done,
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no response head within {timeout:?}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://marathon.mesos:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("marathon.mesos", 8080, "")
        );
        assert_eq!(u.to_string(), "http://marathon.mesos:8080");
        let u = Url::parse("http://10.0.0.1/marathon/").unwrap();
        assert_eq!((u.port, u.prefix.as_str()), (80, "/marathon"));
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.to_string().as_str()),
            ("::1", "http://[::1]:8080")
        );
        for bad in [
            "https://leader.mesos/marathon",
            "marathon.mesos:8080",
            "http://:8080",
            "http://m:0",
            "http://m:99999",
            "http://u@m:1",
            "http://m:1/a?b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert!(Url::parse("https://x")
            .unwrap_err()
            .contains("not supported yet"));
    }

    #[test]
    fn redirects() {
        let u = Url::parse("http://10.0.0.1:8080/m").unwrap();
        let (to, path) = u.redirect("http://10.0.0.2:8080/v2/events?x=1").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("http://10.0.0.2:8080".into(), "/v2/events?x=1")
        );
        let (to, path) = u.redirect("/v2/events").unwrap();
        assert_eq!(
            (to.to_string(), path.as_str()),
            ("http://10.0.0.1:8080".into(), "/v2/events")
        );
        let (to, _) = u.redirect("//10.0.0.3:8080/v2/events").unwrap();
        assert_eq!(to.port, 8080);
        assert!(u.redirect("https://elsewhere/").is_none());
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 302 Found\r\nLocation: http://a:1/x\r\ncontent-length: 0")
            .unwrap();
        assert_eq!(h.status, 302);
        assert_eq!(h.header("location"), Some("http://a:1/x"));
        assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK").is_err());
    }

    #[test]
    fn chunked_bodies_split_at_every_byte() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nB\r\nworld!\nmore\r\n0\r\nX-T: y\r\n\r\nignored";
        for split in 0..wire.len() {
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            let first = dec.feed(&wire[..split], &mut out).unwrap();
            let done = first || dec.feed(&wire[split..], &mut out).unwrap();
            assert!(done, "split {split}");
            assert_eq!(out, b"hello world!\nmore", "split {split}");
        }
        // One byte at a time.
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut done = false;
        for b in wire.iter() {
            done = dec.feed(std::slice::from_ref(b), &mut out).unwrap() || done;
        }
        assert!(done);
        assert_eq!(out, b"hello world!\nmore");
        for bad in [&b"zz\r\n"[..], b"3\r\nabcd\r\n", b"fffffffffffffffff\r\n"] {
            assert!(ChunkedDecoder::default()
                .feed(bad, &mut Vec::new())
                .is_err());
        }
    }
}
