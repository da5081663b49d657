//! The admin endpoint's request reader: a pure function from the bytes a
//! client has sent so far to what they are ([`parse_request`]).
//!
//! What is accepted (HTTP/1.x, RFC 9112, narrowed to what health checks,
//! Prometheus, curl and browsers send):
//!
//! ```text
//! head         = request-line CRLF *( header-line CRLF ) CRLF   ; at most MAX_HEAD bytes
//! request-line = method SP target SP "HTTP/1." DIGIT
//! method       = 1*16tchar
//! target       = "/" *( %x21-7E )                               ; origin form
//! header-line  = 1*tchar ":" *( any byte but CR, LF, NUL )       ; not interpreted
//! ```
//!
//! The head ends at the first empty line; bytes after it are not looked at.
//! The reader says `Invalid` as soon as the bytes cannot begin a valid
//! head, so garbage (a TLS hello sent to the wrong port) is answered at
//! once instead of waiting for the read timeout; a valid head's every
//! prefix is `Incomplete`.

/// The largest request head accepted, its final empty line included. A
/// health check's or Prometheus's request is about 100 to 300 bytes; a
/// browser's under 1 KiB.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The longest method accepted.
const MAX_METHOD: usize = 16;

/// What the bytes received so far are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// A prefix of a valid head: read more.
    Incomplete,
    /// A whole head: `method` as sent (a token), `path` the target up to
    /// its `?`, `head_len` the head's length (the final CRLF CRLF
    /// included).
    Complete {
        method: &'a str,
        path: &'a str,
        head_len: usize,
    },
    /// Not HTTP/1.x as accepted here, whatever follows.
    Invalid(Invalid),
}

/// Why a request is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// No end of the head within [`MAX_HEAD`] bytes.
    TooLarge,
    /// The request line is not `METHOD /target HTTP/1.x`.
    RequestLine,
    /// A header line is not `name: value`, or holds a NUL or a lone CR or
    /// LF.
    Header,
}

impl Invalid {
    /// Why, for the `400` answer's body.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::TooLarge => "bad request: the request head is larger than 8 KiB\n",
            Self::RequestLine => "bad request: expected `GET /path HTTP/1.1`\n",
            Self::Header => "bad request: a header line is not `Name: value`\n",
        }
    }
}

/// Reads `buf`, the bytes received so far (from the first byte on).
pub(crate) fn parse_request(buf: &[u8]) -> Request<'_> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let end = find(window, b"\r\n\r\n").map(|i| i + 4);
    let head = &window[..end.unwrap_or(window.len())];
    let mut rest = head;
    let mut request_line: Option<&[u8]> = None;
    while let Some(i) = find(rest, b"\r\n") {
        let line = &rest[..i];
        rest = &rest[i + 2..];
        if request_line.is_none() {
            if !matches!(scan_request_line(line), Some(Scan::Done)) {
                return Request::Invalid(Invalid::RequestLine);
            }
            request_line = Some(line);
        } else if line.is_empty() {
            // The end of the head: `end` found it first.
            break;
        } else if !matches!(scan_header(line), Some(Scan::Done)) {
            return Request::Invalid(Invalid::Header);
        }
    }
    match (end, request_line) {
        (Some(head_len), Some(line)) => {
            let (method, target) = split_request_line(line);
            let path = target.split('?').next().unwrap_or(target);
            Request::Complete {
                method,
                path,
                head_len,
            }
        }
        // `end` is the first CRLF CRLF, so a head always has its request
        // line; an empty one was refused above.
        (Some(_), None) => Request::Invalid(Invalid::RequestLine),
        (None, _) => {
            // `rest` is the line being received; its CR may have come
            // without its LF yet.
            let partial = rest.strip_suffix(b"\r").unwrap_or(rest);
            if request_line.is_none() {
                if scan_request_line(partial).is_none() {
                    return Request::Invalid(Invalid::RequestLine);
                }
            } else if scan_header(partial).is_none() {
                return Request::Invalid(Invalid::Header);
            }
            if buf.len() >= MAX_HEAD {
                Request::Invalid(Invalid::TooLarge)
            } else {
                Request::Incomplete
            }
        }
    }
}

/// How far a line got: `Done` where a whole line may end, `Partial` where
/// it needs more; `None` when no continuation can make it valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Partial,
    Done,
}

/// Scans a request line (without its CRLF).
fn scan_request_line(line: &[u8]) -> Option<Scan> {
    const VERSION: &[u8] = b"HTTP/1.";
    #[derive(Clone, Copy)]
    enum S {
        Method(usize),
        TargetStart,
        Target,
        Version(usize),
        Done,
    }
    let mut s = S::Method(0);
    for &b in line {
        s = match s {
            S::Method(n) if is_tchar(b) && n < MAX_METHOD => S::Method(n + 1),
            S::Method(n) if b == b' ' && n > 0 => S::TargetStart,
            S::TargetStart if b == b'/' => S::Target,
            S::Target if b == b' ' => S::Version(0),
            S::Target if (0x21..=0x7e).contains(&b) => S::Target,
            S::Version(i) if i < VERSION.len() && b == VERSION[i] => S::Version(i + 1),
            S::Version(i) if i == VERSION.len() && b.is_ascii_digit() => S::Done,
            _ => return None,
        };
    }
    Some(match s {
        S::Done => Scan::Done,
        _ => Scan::Partial,
    })
}

/// Scans a header line (without its CRLF).
fn scan_header(line: &[u8]) -> Option<Scan> {
    // The name ends at the first byte that is no token character.
    let Some(end) = line.iter().position(|&b| !is_tchar(b)) else {
        // Only name characters so far: a header in the making.
        return Some(Scan::Partial);
    };
    let value = &line[end + 1..];
    let bad_value = value.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0));
    (end > 0 && line[end] == b':' && !bad_value).then_some(Scan::Done)
}

/// `METHOD` and `target` of a request line that scanned as done.
fn split_request_line(line: &[u8]) -> (&str, &str) {
    // Scanned: ASCII only, two spaces.
    let text = std::str::from_utf8(line).unwrap_or_default();
    let mut parts = text.splitn(3, ' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    (method, target)
}

/// A token character (RFC 9110, 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the properties [`parse_request`] promises for `bytes` (any
/// bytes), panicking on the first one that does not hold: the
/// `admin_request` fuzz target, and the unit tests below.
///
/// 1. `Complete`: the head is `bytes[..head_len]`, at most [`MAX_HEAD`]
///    long, ends at the first CRLF CRLF; the bytes after it change nothing
///    (`bytes[..head_len]` reads the same); the method is a token that the
///    bytes start with, followed by a space; the path starts with `/`, is
///    visible ASCII and holds no `?`; writing the method and path as a new
///    request reads back the same method and path.
/// 2. `Incomplete`: fewer than [`MAX_HEAD`] bytes and no CRLF CRLF.
/// 3. Prefixes: every prefix of a `Complete` head, and of `Incomplete`
///    bytes, is `Incomplete`; once a prefix is `Invalid`, every longer
///    one is (checked on a sample of prefixes for long inputs).
/// 4. `Invalid` stays invalid whatever follows (CRLF CRLF, a valid
///    request).
/// 5. A request built from the bytes (as a path, made visible ASCII) reads
///    as `Complete` with that path.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_properties(bytes: &[u8]) {
    let got = parse_request(bytes);
    match got {
        Request::Complete {
            method,
            path,
            head_len,
        } => {
            assert!(head_len <= MAX_HEAD && head_len <= bytes.len(), "{got:?}");
            assert_eq!(
                find(bytes, b"\r\n\r\n").map(|i| i + 4),
                Some(head_len),
                "the head ends at the first empty line"
            );
            assert_eq!(parse_request(&bytes[..head_len]), got, "later bytes matter");
            assert!(!method.is_empty() && method.len() <= MAX_METHOD);
            assert!(method.bytes().all(is_tchar), "{method:?}");
            assert!(bytes.starts_with(method.as_bytes()) && bytes[method.len()] == b' ');
            assert!(path.starts_with('/'), "{path:?}");
            assert!(path
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'?'));
            let again = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            match parse_request(again.as_bytes()) {
                Request::Complete {
                    method: m, path: p, ..
                } => assert_eq!((m, p), (method, path)),
                other => panic!("{again:?} reads as {other:?}"),
            }
            for cut in cuts(head_len) {
                assert_eq!(
                    parse_request(&bytes[..cut]),
                    Request::Incomplete,
                    "a prefix ({cut} of {head_len} bytes) of a valid head"
                );
            }
        }
        Request::Incomplete => {
            assert!(bytes.len() < MAX_HEAD);
            assert!(find(bytes, b"\r\n\r\n").is_none());
            for cut in cuts(bytes.len()) {
                assert_eq!(parse_request(&bytes[..cut]), Request::Incomplete, "{cut}");
            }
        }
        Request::Invalid(_) => {
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(b"\r\n\r\n");
            assert!(matches!(parse_request(&longer), Request::Invalid(_)));
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert!(matches!(parse_request(&longer), Request::Invalid(_)));
            let mut invalid = false;
            for cut in cuts(bytes.len()) {
                let now = matches!(parse_request(&bytes[..cut]), Request::Invalid(_));
                assert!(now || !invalid, "invalid, then not at {cut}");
                invalid = now;
            }
        }
    }
    // Any path made of visible ASCII is read back.
    let target: String = std::iter::once('/')
        .chain(
            bytes
                .iter()
                .take(MAX_HEAD / 2)
                .map(|&b| char::from(0x21 + b % 94)),
        )
        .collect();
    let request = format!("GET {target} HTTP/1.0\r\nUser-Agent: fuzz\r\n\r\n");
    let want = target.split('?').next().unwrap_or_default();
    assert_eq!(
        parse_request(request.as_bytes()),
        Request::Complete {
            method: "GET",
            path: want,
            head_len: request.len()
        }
    );
}

/// Prefix lengths to check below `len`: all of them for short inputs, else
/// a sample (each check reads the prefix again).
#[cfg(any(test, feature = "fuzzing"))]
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    let step = (len / 256).max(1);
    (0..len).filter(move |&k| k % step == 0 || k + 8 >= len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete<'a>(method: &'a str, path: &'a str, head_len: usize) -> Request<'a> {
        Request::Complete {
            method,
            path,
            head_len,
        }
    }

    /// Requests real clients send.
    const VALID: &[&str] = &[
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9190\r\nUser-Agent: Go-http-client/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: 10.0.0.5:9190\r\nUser-Agent: Prometheus/2.45.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
        "HEAD /readyz HTTP/1.0\r\n\r\n",
        "GET /status?x=1 HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tvalue\r\n\r\n",
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: localhost\r\nAccept-Language: fr-CH, fr;q=0.9\r\nCookie: \u{e9}t\u{e9}=1\r\n\r\n",
    ];

    #[test]
    fn valid_requests_are_complete_with_method_and_path() {
        let want = [
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("HEAD", "/readyz"),
            ("GET", "/status"),
            ("POST", "/metrics"),
            ("GET", "/"),
        ];
        for (text, (method, path)) in VALID.iter().zip(want) {
            assert_eq!(
                parse_request(text.as_bytes()),
                complete(method, path, text.len()),
                "{text:?}"
            );
            // A body or a second request after the head is not read.
            let more = format!("{text}GET /other HTTP/1.1\r\n\r\n\x00\x01");
            assert_eq!(
                parse_request(more.as_bytes()),
                complete(method, path, text.len())
            );
            check_properties(more.as_bytes());
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_incomplete() {
        for text in VALID {
            let bytes = text.as_bytes();
            for k in 0..bytes.len() {
                assert_eq!(
                    parse_request(&bytes[..k]),
                    Request::Incomplete,
                    "{:?}",
                    String::from_utf8_lossy(&bytes[..k])
                );
                check_properties(&bytes[..k]);
            }
            check_properties(bytes);
        }
    }

    #[test]
    fn garbage_is_invalid_at_once() {
        let cases: &[(&[u8], Invalid)] = &[
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Invalid::RequestLine,
            ),
            (b"\r\n\r\n", Invalid::RequestLine),
            (b"\r\n", Invalid::RequestLine),
            (b" GET / HTTP/1.1", Invalid::RequestLine),
            (b"GET  / HTTP/1.1", Invalid::RequestLine),
            (b"GET http://a/ HTTP/1.1\r\n\r\n", Invalid::RequestLine),
            (b"GET /\r\n\r\n", Invalid::RequestLine),
            (b"GET / HTTP/2.0\r\n\r\n", Invalid::RequestLine),
            (b"GET / HTTP/1.1 \r\n\r\n", Invalid::RequestLine),
            (b"GET / HTTP/1.11", Invalid::RequestLine),
            (b"GET /\x00 HTTP/1.1\r\n\r\n", Invalid::RequestLine),
            (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", Invalid::RequestLine),
            (b"GET / HTTP/1.1\n\n", Invalid::RequestLine),
            (b"GET / HTTP/1.1\r\r\n\r\n", Invalid::RequestLine),
            (b"SSH-2.0-OpenSSH_9.2p1\r\n", Invalid::RequestLine),
            (b"VERYLONGMETHODNAMEX / HTTP/1.1", Invalid::RequestLine),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", Invalid::Header),
            (b"GET / HTTP/1.1\r\nHost : a\r\n", Invalid::Header),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                parse_request(bytes),
                Request::Invalid(*why),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            check_properties(bytes);
        }
    }

    #[test]
    fn a_head_must_end_within_the_limit() {
        // Exactly MAX_HEAD bytes, the final empty line included.
        let pad = MAX_HEAD - "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let fits = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad));
        assert_eq!(fits.len(), MAX_HEAD);
        assert_eq!(
            parse_request(fits.as_bytes()),
            complete("GET", "/", MAX_HEAD)
        );
        check_properties(fits.as_bytes());
        // One byte more does not fit.
        let over = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad + 1));
        assert_eq!(
            parse_request(over.as_bytes()),
            Request::Invalid(Invalid::TooLarge)
        );
        check_properties(over.as_bytes());

        // A head that does not end within the limit.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&long), Request::Invalid(Invalid::TooLarge));
        assert_eq!(
            parse_request(&long[..MAX_HEAD]),
            Request::Invalid(Invalid::TooLarge)
        );
        assert_eq!(parse_request(&long[..MAX_HEAD - 1]), Request::Incomplete);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&long), Request::Invalid(Invalid::TooLarge));
        check_properties(&long);
    }

    #[test]
    fn properties_hold_for_assorted_bytes() {
        // A small deterministic stand-in for the fuzz target: mutations of
        // valid requests (a byte changed, dropped or doubled) and random
        // bytes.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for text in VALID {
            let bytes = text.as_bytes();
            for _ in 0..200 {
                let mut m = bytes.to_vec();
                let at = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, m[at]),
                }
                check_properties(&m);
            }
        }
        for len in [0, 1, 3, 17, 100, 1000] {
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            check_properties(&random);
        }
    }
}
