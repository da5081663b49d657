//! Checks shared by the fuzz targets in `fuzz_targets/` and by the seed
//! corpus generator in `examples/`. The ClientHello checks are here; the
//! `config` target's are in [`config_yaml`], the `proxy_header` target's in
//! [`proxy_header`].
//!
//! Each `check_*` function panics, with a message saying which property of
//! [`clienthello::parse`] broke, when the parser misbehaves; libFuzzer
//! reports the panic as a crash and saves the input under `artifacts/`.
//!
//! The properties (see `README.md`):
//! - the answer does not depend on how the bytes were chunked, and once a
//!   prefix gives `Complete` or an error, every longer prefix gives the same;
//! - `NeedMore { at_least }` is never 0 and never asks past the end of the
//!   hello that eventually completes;
//! - a `Complete` hello took exactly `client_hello_bytes` (no fewer bytes
//!   complete it), within the limit; its server name and ALPN names come
//!   from the input's handshake bytes;
//! - `TooLarge { announced }` never exceeds what the hello really takes.
//!
//! The comparison with rustls (wherever rustls' `Acceptor` accepts a
//! ClientHello, so do we, with the same server name and ALPN list) is not
//! here: the targets call `clienthello_oracle::check`, the oracle that
//! `crates/clienthello/tests/differential.rs` uses too.

pub mod config_yaml;
pub mod proxy_header;

use clienthello::{parse, ClientHello, Error, Limits, Progress, ServerName};
use clienthello_oracle::GENEROUS;

/// The answer type of [`parse`].
pub type Answer = Result<Progress, Error>;

/// An input of the `client_hello_chunked` target, decoded.
///
/// Layout: byte 0 has the flags: bit 7 set means a custom limit, which is
/// bytes 1 and 2 (big-endian); the low 3 bits are the number `k` of
/// chunk-size bytes after byte 2. The payload (the bytes "received") is
/// everything after those `3 + k` bytes. Inputs shorter than 3 bytes are
/// all payload, with the default limit, in one chunk.
#[derive(Debug)]
pub struct ChunkedInput<'a> {
    /// Limits to parse with.
    pub limits: Limits,
    /// Chunk sizes, used cyclically; empty: one chunk.
    pub chunks: Vec<usize>,
    /// The bytes the client sent.
    pub payload: &'a [u8],
}

impl<'a> ChunkedInput<'a> {
    /// Decodes a fuzz input (total: every input decodes).
    pub fn decode(data: &'a [u8]) -> Self {
        let Some((&[flags, hi, lo], rest)) = data.split_first_chunk::<3>() else {
            return Self {
                limits: Limits::default(),
                chunks: Vec::new(),
                payload: data,
            };
        };
        let limits = if flags & 0x80 != 0 {
            Limits {
                max_client_hello_bytes: usize::from(u16::from_be_bytes([hi, lo])),
            }
        } else {
            Limits::default()
        };
        let k = usize::from(flags & 7).min(rest.len());
        let (sizes, payload) = rest.split_at(k);
        Self {
            limits,
            chunks: sizes.iter().map(|&b| chunk_size(b)).collect(),
            payload,
        }
    }

    /// Encodes an input for the corpus: `limit` (None: the default), up
    /// to 7 chunk-size bytes (see [`chunk_size`]), then `payload`.
    pub fn encode(limit: Option<u16>, chunk_bytes: &[u8], payload: &[u8]) -> Vec<u8> {
        assert!(chunk_bytes.len() <= 7);
        let mut out = Vec::with_capacity(3 + chunk_bytes.len() + payload.len());
        let [hi, lo] = limit.unwrap_or(0).to_be_bytes();
        out.push(if limit.is_some() { 0x80 } else { 0 } | chunk_bytes.len() as u8);
        out.extend_from_slice(&[hi, lo]);
        out.extend_from_slice(chunk_bytes);
        out.extend_from_slice(payload);
        out
    }
}

/// Chunk size for one chunk-size byte: 0..=199 give 1..=200 bytes, 200..=255
/// give 128..=7168 bytes in steps of 128.
pub fn chunk_size(b: u8) -> usize {
    if b < 200 {
        usize::from(b) + 1
    } else {
        usize::from(b - 199) * 128
    }
}

/// Feeds `payload` to [`parse`] the way a TCP reader would: after each
/// chunk (sizes from `chunks`, cyclically; empty means one chunk), parse the
/// whole buffer so far. Checks every property on the way and returns the
/// final answer (which equals the one-shot answer).
pub fn check_chunked(payload: &[u8], limits: &Limits, chunks: &[usize]) -> Answer {
    let one_shot = parse(payload, limits);
    check_answer(payload, limits, &one_shot);

    let mut fed = 0;
    let mut step = 0;
    let mut first_final: Option<(usize, Answer)> = None;
    loop {
        let answer = parse(&payload[..fed], limits);
        match (&first_final, &answer) {
            (Some((at, first)), _) => assert_eq!(
                &answer, first,
                "the answer changed from {first:?} at {at} bytes to {answer:?} at {fed} bytes"
            ),
            (None, Ok(Progress::NeedMore { at_least })) => {
                assert!(*at_least > 0, "NeedMore {{ at_least: 0 }} at {fed} bytes");
                if let Ok(Progress::Complete(h)) = &one_shot {
                    assert!(
                        fed + at_least <= h.client_hello_bytes,
                        "NeedMore {{ at_least: {at_least} }} at {fed} bytes overshoots a hello of {} bytes",
                        h.client_hello_bytes
                    );
                }
            }
            (None, _) => first_final = Some((fed, answer.clone())),
        }
        if fed == payload.len() {
            assert_eq!(
                answer, one_shot,
                "chunked answer differs from the one-shot answer"
            );
            return answer;
        }
        let size = if chunks.is_empty() {
            payload.len()
        } else {
            // Past 256 reads, chunks double every 256 reads: the properties
            // stay the same, the cost stays near-linear for big inputs.
            chunks[step % chunks.len()].saturating_mul(1 << (step / 256).min(20))
        };
        step += 1;
        fed = fed.saturating_add(size.max(1)).min(payload.len());
    }
}

/// Checks one final answer for `payload` under `limits` (the one-shot answer).
pub fn check_answer(payload: &[u8], limits: &Limits, answer: &Answer) {
    match answer {
        Ok(Progress::NeedMore { at_least }) => {
            assert!(*at_least > 0, "NeedMore {{ at_least: 0 }}");
        }
        Ok(Progress::Complete(h)) => check_complete(payload, limits, h),
        Err(e) => {
            assert!(!e.as_str().is_empty());
            assert!(!e.to_string().is_empty());
            if let Error::TooLarge { announced, limit } = e {
                assert_eq!(*limit, limits.max_client_hello_bytes);
                assert!(announced > limit, "TooLarge {{ {announced} <= {limit} }}");
                // `announced` is a lower bound: without the limit, the hello
                // takes at least that many bytes.
                if let Ok(Progress::Complete(h)) = parse(payload, &GENEROUS) {
                    assert!(
                        h.client_hello_bytes >= *announced,
                        "TooLarge announced {announced} bytes, but the hello takes {}",
                        h.client_hello_bytes
                    );
                }
            }
        }
    }
}

/// Checks a `Complete` answer for `payload` under `limits`.
pub fn check_complete(payload: &[u8], limits: &Limits, h: &ClientHello) {
    let used = h.client_hello_bytes;
    assert!(used <= payload.len(), "client_hello_bytes {used} > buffer");
    assert!(
        used <= limits.max_client_hello_bytes,
        "client_hello_bytes {used} over the limit {limits:?}"
    );
    // Exactly `used` bytes complete it, and one fewer does not.
    let complete = Ok(Progress::Complete(h.clone()));
    assert_eq!(
        parse(&payload[..used], limits),
        complete,
        "at exactly {used}"
    );
    match parse(&payload[..used - 1], limits) {
        Ok(Progress::NeedMore { at_least }) => assert_eq!(at_least, 1, "one byte short"),
        other => panic!("one byte short of {used} gave {other:?}"),
    }
    // Bytes after the hello are not looked at.
    let mut longer = payload[..used].to_vec();
    longer.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]);
    assert_eq!(parse(&longer, limits), complete, "with data after it");
    // The limit: `used` is enough, one byte less is refused from headers.
    let exact = Limits {
        max_client_hello_bytes: used,
    };
    assert_eq!(parse(payload, &exact), complete, "with limit = {used}");
    let short = Limits {
        max_client_hello_bytes: used - 1,
    };
    match parse(payload, &short) {
        Err(Error::TooLarge { announced, limit }) => {
            assert_eq!(limit, used - 1);
            // More than the limit, and no more than the hello really takes.
            assert_eq!(announced, used, "TooLarge announced");
        }
        other => panic!("limit {} for a {used}-byte hello gave {other:?}", used - 1),
    }

    // Undo the record layer: the facts must come from these bytes.
    let hs = handshake_bytes(&payload[..used], h.tls_records);
    assert_eq!(hs[0], 1, "handshake type");
    let body_len = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
    assert_eq!(hs.len(), 4 + body_len, "handshake length");
    assert_eq!(h.legacy_version, u16::from_be_bytes([hs[4], hs[5]]));
    let hs_lower = hs.to_ascii_lowercase();
    if let Some(name) = &h.server_name {
        let s = name.as_str();
        assert!(!s.is_empty() && !s.ends_with('.'), "{s:?}");
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
            "{s:?} is not normalised"
        );
        assert_eq!(ServerName::parse(s.as_bytes()).as_ref(), Ok(name));
        assert!(
            contains(&hs_lower, s.as_bytes()),
            "SNI {s:?} is not in the handshake bytes"
        );
        if h.tls_records == 1 {
            let lower = payload[..used].to_ascii_lowercase();
            assert!(contains(&lower, s.as_bytes()), "SNI {s:?} not in the input");
        }
    }
    for p in &h.alpn {
        assert!(
            !p.is_empty() && p.len() <= 255,
            "ALPN name of {} bytes",
            p.len()
        );
        assert!(contains(&hs, p), "ALPN {p:?} is not in the handshake bytes");
    }
    assert!(h.supported_versions.len() <= 127);
}

/// Strips the record headers off a complete hello of `records` records.
fn handshake_bytes(stream: &[u8], records: usize) -> Vec<u8> {
    let mut hs = Vec::with_capacity(stream.len());
    let mut rest = stream;
    let mut seen = 0;
    while !rest.is_empty() {
        assert!(
            rest.len() >= 5 && rest[0] == 22 && rest[1] == 3,
            "record header"
        );
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!((1..=1 << 14).contains(&len), "record length {len}");
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        seen += 1;
    }
    assert_eq!(seen, records, "tls_records");
    hs
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
