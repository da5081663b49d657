//! Property tests: generated ClientHellos (valid and with invalid server
//! names) fed in random chunks the way a TCP reader sees them, and
//! arbitrary or mutated bytes, which must never make the parser panic or
//! change an answer it already gave.

use std::net::Ipv4Addr;

use clienthello::synth::HelloBuilder;
use clienthello::{parse, Error, Limits, NameError, Progress};
use proptest::prelude::*;

type Answer = Result<Progress, Error>;

/// Feeds `bytes` in chunks (sizes from `chunks`, cyclically) and parses the
/// growing buffer after each one, as the router's reader does. Returns every
/// answer with the buffer length it was given for.
fn feed_in_chunks(bytes: &[u8], limits: &Limits, chunks: &[usize]) -> Vec<(usize, Answer)> {
    let mut answers = Vec::new();
    let mut have = 0;
    let mut step = 0;
    loop {
        answers.push((have, parse(&bytes[..have], limits)));
        if have == bytes.len() {
            return answers;
        }
        // After 64 reads chunks double every 64 reads, so that 1-byte
        // chunks over a 10 KB stream stay cheap in a debug build.
        let size = chunks[step % chunks.len()] << (step / 64).min(16);
        step += 1;
        have = (have + size.max(1)).min(bytes.len());
    }
}

/// Every answer after the first final one (Complete or an error) repeats
/// it, and the last answer equals the one-shot answer.
fn assert_final_answers_stay(answers: &[(usize, Answer)], one_shot: &Answer) {
    let mut first_final: Option<&(usize, Answer)> = None;
    for entry in answers {
        let (len, answer) = entry;
        if let Some((at, first)) = first_final {
            assert_eq!(
                answer, first,
                "answer at {len} bytes differs from the one at {at}"
            );
        } else if !matches!(answer, Ok(Progress::NeedMore { .. })) {
            first_final = Some(entry);
        }
        if let Ok(Progress::NeedMore { at_least }) = answer {
            assert!(*at_least > 0);
        }
    }
    assert_eq!(&answers.last().unwrap().1, one_shot);
}

/// A server name to put in a hello, and what the parser must make of it.
#[derive(Clone, Debug)]
enum Sni {
    None,
    Valid { sent: String, expect: String },
    Invalid { sent: Vec<u8>, expect: NameError },
}

/// DNS names over letters (both cases), digits, `-` and `_`, one to five
/// labels, sometimes with a trailing dot; dotted quads are left out (they
/// are IPv4 literals, which the invalid strategy covers).
fn dns_name() -> impl Strategy<Value = Sni> {
    (
        prop::collection::vec("[a-zA-Z0-9_-]{1,20}", 1..=5),
        any::<bool>(),
    )
        .prop_filter("not an IPv4 literal", |(labels, _)| {
            labels.join(".").parse::<Ipv4Addr>().is_err()
        })
        .prop_map(|(labels, dot)| {
            let name = labels.join(".");
            let expect = name.to_ascii_lowercase();
            let sent = if dot { format!("{name}.") } else { name };
            Sni::Valid { sent, expect }
        })
}

/// Names RFC 6066 (or our rules) forbid, each with its error.
fn invalid_name() -> impl Strategy<Value = Sni> {
    let long_label = "a".repeat(64);
    let long_name = format!("{0}.{0}.{0}.{0}", "b".repeat(63)); // 255 bytes
    let cases: Vec<(Vec<u8>, NameError)> = vec![
        (b"".to_vec(), NameError::Empty),
        (b".".to_vec(), NameError::Empty),
        (b"a..b".to_vec(), NameError::EmptyLabel),
        (b".a.example".to_vec(), NameError::EmptyLabel),
        (b"good.com\0.evil.com".to_vec(), NameError::Nul),
        ("b\u{fc}cher.de".as_bytes().to_vec(), NameError::NonAscii),
        (b"a b.example".to_vec(), NameError::InvalidCharacter(b' ')),
        (b"*.example.com".to_vec(), NameError::InvalidCharacter(b'*')),
        (b"host:443".to_vec(), NameError::InvalidCharacter(b':')),
        (b"10.0.4.11".to_vec(), NameError::IpLiteral),
        (b"127.0.0.1.".to_vec(), NameError::IpLiteral),
        (b"2001:db8::1".to_vec(), NameError::IpLiteral),
        (b"[::1]".to_vec(), NameError::IpLiteral),
        (long_label.into_bytes(), NameError::LabelTooLong { len: 64 }),
        (long_name.into_bytes(), NameError::TooLong { len: 255 }),
    ];
    prop::sample::select(cases).prop_map(|(sent, expect)| Sni::Invalid { sent, expect })
}

fn sni() -> impl Strategy<Value = Sni> {
    prop_oneof![
        6 => dns_name(),
        2 => invalid_name(),
        1 => Just(Sni::None),
    ]
}

#[derive(Clone, Debug)]
struct Spec {
    sni: Sni,
    alpn: Vec<Vec<u8>>,
    versions: Vec<u16>,
    ech: bool,
    pad_to: Option<usize>,
    record_payload: usize,
    chunks: Vec<usize>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        sni(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=20), 0..=4),
        prop::collection::vec(any::<u16>(), 0..=6),
        any::<bool>(),
        prop::option::of(0..=2500usize),
        1..=800usize,
        prop::collection::vec(
            prop_oneof![1..=16usize, 17..=300usize, 301..=3000usize],
            1..=6,
        ),
    )
        .prop_map(
            |(sni, alpn, versions, ech, pad_to, record_payload, chunks)| Spec {
                sni,
                alpn,
                versions,
                ech,
                pad_to,
                record_payload,
                chunks,
            },
        )
}

fn build(spec: &Spec) -> (Vec<u8>, usize) {
    let mut b = HelloBuilder::new("x");
    b = match &spec.sni {
        Sni::None => b.no_sni(),
        Sni::Valid { sent, .. } => b.raw_server_name(sent.as_bytes()),
        Sni::Invalid { sent, .. } => b.raw_server_name(sent),
    };
    let alpn: Vec<&[u8]> = spec.alpn.iter().map(Vec::as_slice).collect();
    b = b.alpn(&alpn).supported_versions(&spec.versions);
    if spec.ech {
        b = b.ech();
    }
    if let Some(len) = spec.pad_to {
        b = b.pad_to(len);
    }
    let hs_len = b.handshake().len();
    (b.build_in_records(spec.record_payload), hs_len)
}

proptest! {
    #[test]
    fn generated_hellos_read_the_same_in_any_chunking(spec in spec()) {
        let (bytes, hs_len) = build(&spec);
        let limits = Limits::default();
        let one_shot = parse(&bytes, &limits);
        let answers = feed_in_chunks(&bytes, &limits, &spec.chunks);
        assert_final_answers_stay(&answers, &one_shot);

        match &spec.sni {
            Sni::Invalid { expect, .. } => {
                prop_assert_eq!(&one_shot, &Err(Error::InvalidServerName(*expect)));
            }
            Sni::None | Sni::Valid { .. } => {
                let Ok(Progress::Complete(h)) = &one_shot else {
                    panic!("expected a complete hello, got {one_shot:?}");
                };
                // Every answer before the last is NeedMore, and none asks
                // for bytes past the end of the hello.
                for (len, answer) in &answers[..answers.len() - 1] {
                    match answer {
                        Ok(Progress::NeedMore { at_least }) => {
                            prop_assert!(len + at_least <= bytes.len(), "overshoot at {}", len);
                        }
                        other => panic!("{len} of {} bytes gave {other:?}", bytes.len()),
                    }
                }
                let expect_name = match &spec.sni {
                    Sni::Valid { expect, .. } => Some(expect.as_str()),
                    _ => None,
                };
                prop_assert_eq!(h.server_name.as_ref().map(|n| n.as_str()), expect_name);
                prop_assert_eq!(&h.alpn.to_vecs(), &spec.alpn);
                prop_assert_eq!(&h.supported_versions, &spec.versions);
                prop_assert_eq!(h.ech, spec.ech);
                prop_assert_eq!(h.legacy_version, 0x0303);
                prop_assert_eq!(h.client_hello_bytes, bytes.len());
                prop_assert_eq!(h.tls_records, hs_len.div_ceil(spec.record_payload));
                // With one record, the name is a (case-insensitive)
                // substring of the input.
                if let (Some(name), 1) = (expect_name, h.tls_records) {
                    let lower = bytes.to_ascii_lowercase();
                    prop_assert!(lower.windows(name.len()).any(|w| w == name.as_bytes()));
                }
                // A limit one byte short refuses it from the headers, with
                // the true size announced; an exact limit accepts it.
                let short = Limits { max_client_hello_bytes: bytes.len() - 1 };
                prop_assert_eq!(
                    parse(&bytes, &short),
                    Err(Error::TooLarge { announced: bytes.len(), limit: bytes.len() - 1 })
                );
                let exact = Limits { max_client_hello_bytes: bytes.len() };
                prop_assert_eq!(&parse(&bytes, &exact), &one_shot);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_final_answers_stay(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        limit in prop_oneof![Just(Limits::default().max_client_hello_bytes), 0..700usize],
    ) {
        check_every_prefix(&bytes, &Limits { max_client_hello_bytes: limit });
    }

    #[test]
    fn mutated_hellos_never_panic_and_final_answers_stay(
        record_payload in 1..=600usize,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut bytes = HelloBuilder::new("mutated.example.com")
            .ech()
            .build_in_records(record_payload);
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        // Sometimes cut short, sometimes with bytes after it.
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep.max(bytes.len().saturating_sub(40)));
        bytes.extend_from_slice(&extra);
        check_every_prefix(&bytes, &Limits::default());
    }
}

/// Parses every prefix of `bytes`: once one is final, all longer ones give
/// the same answer; a complete hello stays within the buffer and the limit.
fn check_every_prefix(bytes: &[u8], limits: &Limits) {
    let answers: Vec<(usize, Answer)> = (0..=bytes.len())
        .map(|n| (n, parse(&bytes[..n], limits)))
        .collect();
    let one_shot = parse(bytes, limits);
    assert_final_answers_stay(&answers, &one_shot);
    for (len, answer) in &answers {
        match answer {
            Ok(Progress::Complete(h)) => {
                assert!(h.client_hello_bytes <= *len);
                assert!(h.client_hello_bytes <= limits.max_client_hello_bytes);
                assert!(h.tls_records >= 1);
            }
            Err(Error::TooLarge { announced, limit }) => {
                assert_eq!(*limit, limits.max_client_hello_bytes);
                assert!(announced > limit);
            }
            Err(e) => assert!(!e.as_str().is_empty()),
            Ok(Progress::NeedMore { at_least }) => assert!(*at_least > 0),
        }
    }
}
