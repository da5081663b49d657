use super::*;
use crate::synth::{records, resplit, HelloBuilder};

struct Capture {
    file: String,
    bytes: Vec<u8>,
    server_name: Option<String>,
    alpn: Vec<String>,
    tls_records: usize,
}

/// The real captures in `testdata/` with what `manifest.json` says of them.
fn captures() -> Vec<Capture> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/manifest.json")).unwrap()).unwrap();
    let list = manifest.as_array().unwrap();
    assert!(list.len() >= 7, "manifest lists {} captures", list.len());
    list.iter()
        .map(|c| {
            let file = c["file"].as_str().unwrap().to_owned();
            let bytes = std::fs::read(format!("{dir}/{file}")).unwrap();
            assert_eq!(bytes.len() as u64, c["bytes"].as_u64().unwrap(), "{file}");
            Capture {
                bytes,
                server_name: c["server_name"].as_str().map(str::to_owned),
                alpn: c["alpn"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                tls_records: c["tls_records"].as_u64().unwrap() as usize,
                file,
            }
        })
        .collect()
}

fn complete(buf: &[u8]) -> ClientHello {
    match parse(buf, &Limits::default()) {
        Ok(Progress::Complete(h)) => h,
        other => panic!("expected a complete hello, got {other:?}"),
    }
}

fn error(buf: &[u8]) -> Error {
    match parse(buf, &Limits::default()) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn every_capture_parses_to_its_manifest_entry() {
    for c in captures() {
        let h = complete(&c.bytes);
        assert_eq!(
            h.server_name.as_ref().map(ServerName::as_str),
            c.server_name.as_deref(),
            "{}",
            c.file
        );
        assert_eq!(h.alpn_lossy(), c.alpn, "{}", c.file);
        assert_eq!(h.client_hello_bytes, c.bytes.len(), "{}", c.file);
        assert_eq!(h.tls_records, c.tls_records, "{}", c.file);
        assert_eq!(h.legacy_version, 0x0303, "{}", c.file);
        assert!(!h.ech, "{}", c.file);
    }
}

#[test]
fn capture_versions_are_what_the_clients_offer() {
    let by_file = |name: &str| {
        let c = captures().into_iter().find(|c| c.file == name).unwrap();
        complete(&c.bytes)
    };
    // curl forced to TLS 1.2 sends no supported_versions extension.
    assert!(by_file("curl-http11-tls12.bin")
        .supported_versions
        .is_empty());
    assert!(by_file("openssl-s_client-tls13.bin")
        .supported_versions
        .contains(&0x0304));
    assert!(by_file("kubectl-v1.32.bin")
        .supported_versions
        .contains(&0x0304));
}

#[test]
fn every_strict_prefix_of_a_capture_needs_more() {
    for c in captures() {
        for n in 0..c.bytes.len() {
            match parse(&c.bytes[..n], &Limits::default()) {
                Ok(Progress::NeedMore { at_least }) => {
                    assert!(at_least >= 1);
                    assert!(
                        n + at_least <= c.bytes.len(),
                        "{}: overshoot at {n}",
                        c.file
                    );
                }
                other => panic!("{}: prefix of {n} bytes gave {other:?}", c.file),
            }
        }
    }
}

#[test]
fn reading_as_told_by_need_more_reaches_complete() {
    for c in captures() {
        let mut have = 0;
        let mut calls = 0;
        loop {
            calls += 1;
            match parse(&c.bytes[..have], &Limits::default()).unwrap() {
                Progress::NeedMore { at_least } => have += at_least,
                Progress::Complete(h) => {
                    assert_eq!(h.client_hello_bytes, c.bytes.len());
                    break;
                }
            }
        }
        // One record: header length, then the rest (plus the empty start).
        assert!(calls <= 4, "{}: {calls} calls", c.file);
    }
}

#[test]
fn more_bytes_never_change_a_complete_answer() {
    for c in captures() {
        let first = complete(&c.bytes);
        let mut longer = c.bytes.clone();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x05hello trailing early data");
        assert_eq!(complete(&longer), first, "{}", c.file);
    }
}

#[test]
fn captures_resplit_into_small_records_give_the_same_facts() {
    for c in captures() {
        let base = complete(&c.bytes);
        for size in [1, 7, 100, 700] {
            let stream = resplit(&c.bytes, size).unwrap();
            let h = complete(&stream);
            assert_eq!(h.server_name, base.server_name, "{} / {size}", c.file);
            assert_eq!(h.alpn, base.alpn, "{} / {size}", c.file);
            assert_eq!(h.supported_versions, base.supported_versions);
            assert_eq!(h.client_hello_bytes, stream.len(), "{} / {size}", c.file);
            let hs_len = c.bytes.len() - 5;
            assert_eq!(h.tls_records, hs_len.div_ceil(size), "{} / {size}", c.file);
            // And every prefix of the re-split stream still needs more.
            for n in (0..stream.len()).step_by(size.max(13)) {
                assert!(
                    matches!(
                        parse(&stream[..n], &Limits::default()),
                        Ok(Progress::NeedMore { .. })
                    ),
                    "{} / {size}: prefix {n}",
                    c.file
                );
            }
        }
    }
}

#[test]
fn builder_hellos_round_trip() {
    let h = complete(&HelloBuilder::new("API.Example.COM.").ech().build());
    assert_eq!(h.server_name.as_ref().unwrap().as_str(), "api.example.com");
    assert_eq!(h.alpn_lossy(), ["h2", "http/1.1"]);
    assert_eq!(h.supported_versions, [0x0304, 0x0303]);
    assert!(h.ech);

    let h = complete(&HelloBuilder::new("x.example").no_sni().alpn(&[]).build());
    assert_eq!(h.server_name, None);
    assert!(h.alpn.is_empty());

    let padded = HelloBuilder::new("pq.example").pad_to(1900).build();
    assert_eq!(padded.len(), 1905);
    assert_eq!(complete(&padded).client_hello_bytes, 1905);
}

#[test]
fn size_limit_is_enforced_from_headers() {
    let limits = Limits {
        max_client_hello_bytes: 1024,
    };
    let hello = HelloBuilder::new("big.example").pad_to(2000).build();
    // Refused from the five header bytes alone: the record announces 2000.
    assert_eq!(
        parse(&hello[..5], &limits),
        Err(Error::TooLarge {
            announced: 2005,
            limit: 1024
        })
    );
    // Split into small records, the handshake header gives it away.
    let split = HelloBuilder::new("big.example")
        .pad_to(2000)
        .build_in_records(100);
    assert_eq!(
        parse(&split[..9], &limits),
        Err(Error::TooLarge {
            announced: 105 + 5 + 1900,
            limit: 1024
        })
    );
    // A handshake header announcing 16 MiB.
    let mut huge = vec![22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
    assert!(matches!(error(&huge), Error::TooLarge { .. }));
    huge.truncate(5);
    assert!(matches!(
        parse(&huge, &Limits::default()),
        Ok(Progress::NeedMore { .. })
    ));
    // The same hello passes under the default limit.
    assert_eq!(complete(&hello).client_hello_bytes, 2005);
}

#[test]
fn malformed_inputs_each_get_their_error() {
    let ok = HelloBuilder::new("ok.example.com");
    let body_start = 5 + 4;
    let mut bad_session_id = ok.build();
    bad_session_id[body_start + 34] = 33; // session id longer than 32
    let mut wrong_hs_type = ok.build();
    wrong_hs_type[5] = 2; // ServerHello
    let mut bad_record_version = ok.build();
    bad_record_version[1] = 2;
    let hs = ok.handshake();
    let mut trailing = hs.clone();
    trailing.extend_from_slice(&[0; 3]);
    let mut sni_list_len = Vec::new();
    sni_list_len.extend_from_slice(&[0, 20, 0, 0, 3]);
    sni_list_len.extend_from_slice(b"a.b");
    let mut sni_other_type = vec![0, 6, 1, 0, 3];
    sni_other_type.extend_from_slice(b"a.b");
    let long_name = "a".repeat(300);

    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Error::NotTls {
                looks_like_http: true,
            },
        ),
        (
            "http2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            Error::NotTls {
                looks_like_http: true,
            },
        ),
        (
            "ssh banner",
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            Error::NotTls {
                looks_like_http: false,
            },
        ),
        (
            "random text",
            b"hello".to_vec(),
            Error::NotTls {
                looks_like_http: false,
            },
        ),
        (
            "sslv2 hello",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
            Error::SslV2Hello,
        ),
        (
            "alert record",
            vec![21, 3, 3, 0, 2, 2, 40],
            Error::NotHandshake { content_type: 21 },
        ),
        (
            "application data",
            vec![23, 3, 3, 0, 1, 0],
            Error::NotHandshake { content_type: 23 },
        ),
        (
            "server hello",
            wrong_hs_type,
            Error::NotClientHello { handshake_type: 2 },
        ),
        (
            "record version 2.x",
            bad_record_version,
            Error::Malformed(Malformed::RecordVersion),
        ),
        (
            "empty record",
            vec![22, 3, 1, 0, 0],
            Error::Malformed(Malformed::EmptyRecord),
        ),
        (
            "alert between hello records",
            {
                let mut v = records(&hs[..10], 10, 0x0301);
                v.extend_from_slice(&[21, 3, 3, 0, 2, 1, 0]);
                v
            },
            Error::Malformed(Malformed::InterleavedRecord),
        ),
        (
            "data after the hello in its record",
            records(&trailing, 1 << 14, 0x0301),
            Error::Malformed(Malformed::TrailingData),
        ),
        (
            "session id of 33 bytes",
            bad_session_id,
            Error::Malformed(Malformed::Body),
        ),
        (
            "handshake length larger than the record allows",
            {
                // Record of 10 bytes announcing a 200-byte handshake, then
                // a record of application data.
                let mut v = vec![22, 3, 1, 0, 10, 1, 0, 0, 200];
                v.extend_from_slice(&[0; 6]);
                v.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
                v
            },
            Error::Malformed(Malformed::InterleavedRecord),
        ),
        (
            "two SNI extensions",
            ok.clone()
                .extension(0, &{
                    let mut s = vec![0, 6, 0, 0, 3];
                    s.extend_from_slice(b"b.c");
                    s
                })
                .build(),
            Error::DuplicateSni,
        ),
        (
            "two names in one SNI extension",
            ok.clone()
                .server_names(&[b"a.example.com", b"b.example.com"])
                .build(),
            Error::MalformedSni("more than one name"),
        ),
        (
            "SNI list length too long",
            ok.clone().no_sni().extension(0, &sni_list_len).build(),
            Error::MalformedSni("list length does not match"),
        ),
        (
            "SNI name type 1",
            ok.clone().no_sni().extension(0, &sni_other_type).build(),
            Error::MalformedSni("name type is not host_name"),
        ),
        (
            "empty SNI extension",
            ok.clone().no_sni().extension(0, &[]).build(),
            Error::MalformedSni("list length does not match"),
        ),
        (
            "SNI of 300 bytes",
            ok.clone().raw_server_name(long_name.as_bytes()).build(),
            Error::InvalidServerName(NameError::TooLong { len: 300 }),
        ),
        (
            "SNI with NUL",
            ok.clone().raw_server_name(b"good.com\0.evil.com").build(),
            Error::InvalidServerName(NameError::Nul),
        ),
        (
            "SNI non-ASCII",
            ok.clone()
                .raw_server_name("\u{44f}.example".as_bytes())
                .build(),
            Error::InvalidServerName(NameError::NonAscii),
        ),
        (
            "SNI IP literal",
            ok.clone().raw_server_name(b"10.0.4.11").build(),
            Error::InvalidServerName(NameError::IpLiteral),
        ),
        (
            "SNI empty name",
            ok.clone().raw_server_name(b"").build(),
            Error::InvalidServerName(NameError::Empty),
        ),
        (
            "ALPN with an empty protocol",
            ok.clone().alpn(&[b""]).build(),
            Error::Malformed(Malformed::Alpn),
        ),
        (
            "ALPN twice",
            ok.clone().extension(16, &[0, 3, 2, b'h', b'2']).build(),
            Error::Malformed(Malformed::DuplicateExtension),
        ),
        (
            "supported_versions of odd length",
            ok.clone()
                .supported_versions(&[])
                .extension(43, &[3, 3, 4, 3])
                .build(),
            Error::Malformed(Malformed::SupportedVersions),
        ),
        (
            "extension header cut short",
            {
                let mut hs = ok.clone().alpn(&[]).handshake();
                // Grow the extension block by 3 bytes that are not an extension.
                let ext_len_at = hs.len() - 2 - ext_block_len(&hs);
                let new_len = (ext_block_len(&hs) + 3) as u16;
                hs[ext_len_at..ext_len_at + 2].copy_from_slice(&new_len.to_be_bytes());
                hs.extend_from_slice(&[0, 1, 0]);
                fix_handshake_len(&mut hs);
                records(&hs, 1 << 14, 0x0301)
            },
            Error::Malformed(Malformed::Extension),
        ),
    ];
    for (what, input, want) in cases {
        assert_eq!(error(&input), want, "{what}");
        // Errors are final: more bytes do not change them.
        let mut longer = input.clone();
        longer.extend_from_slice(&[22; 64]);
        assert_eq!(error(&longer), want, "{what} (longer)");
    }
}

#[test]
fn host_name_followed_by_another_name_type_is_read() {
    // RFC 6066 lets entries of other name types follow the host_name; their
    // encoding is unknown, so reading stops there (as rustls does). Found by
    // the differential fuzz target: a host_name then 4 stray bytes.
    let ok = HelloBuilder::new("unused.example");
    for tail in [&b".com"[..], &[1, 0, 3, b'a', b'.', b'b'], &[0x79]] {
        let mut entry = vec![0, 0, 11];
        entry.extend_from_slice(b"api.example");
        entry.extend_from_slice(tail);
        let mut ext = (entry.len() as u16).to_be_bytes().to_vec();
        ext.extend_from_slice(&entry);
        let hello = complete(&ok.clone().no_sni().extension(0, &ext).build());
        assert_eq!(
            hello.server_name.as_ref().map(ServerName::as_str),
            Some("api.example"),
            "tail {tail:?}"
        );
    }
    // A second host_name after the first is still refused.
    let mut ext = vec![0, 12, 0, 0, 3];
    ext.extend_from_slice(b"a.b");
    ext.extend_from_slice(&[0, 0, 3]);
    ext.extend_from_slice(b"c.d");
    assert_eq!(
        error(&ok.clone().no_sni().extension(0, &ext).build()),
        Error::MalformedSni("more than one name")
    );
}

/// Length of the extension block of a handshake built by `HelloBuilder`
/// (it is the last field of the body).
fn ext_block_len(hs: &[u8]) -> usize {
    // body: version 2, random 32, sid 1+32, suites 2+10, comp 2.
    let at = 4 + 2 + 32 + 33 + 12 + 2;
    usize::from(u16::from_be_bytes([hs[at], hs[at + 1]]))
}

fn fix_handshake_len(hs: &mut [u8]) {
    let len = (hs.len() - 4) as u32;
    hs[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
}

#[test]
fn ten_thousand_extensions_are_refused_by_size_not_time() {
    // 10,000 empty extensions need 40,000 bytes: over the default limit,
    // refused from the record header.
    let hello = HelloBuilder::new("x.example")
        .many_extensions(10_000)
        .build();
    assert!(matches!(error(&hello), Error::TooLarge { .. }));
    // 3,000 fit in 16 KiB and parse (no quadratic behaviour).
    let hello = HelloBuilder::new("x.example")
        .many_extensions(3_000)
        .build();
    assert_eq!(complete(&hello).server_name.unwrap().as_str(), "x.example");
}

#[test]
fn undecided_first_bytes_wait_instead_of_guessing() {
    // "G" could still become "GET ": wait.
    assert_eq!(
        parse(b"G", &Limits::default()),
        Ok(Progress::NeedMore { at_least: 3 })
    );
    assert_eq!(
        parse(b"GE", &Limits::default()),
        Ok(Progress::NeedMore { at_least: 2 })
    );
    assert_eq!(
        error(b"GX"),
        Error::NotTls {
            looks_like_http: false
        }
    );
    assert_eq!(
        parse(&[0x80], &Limits::default()),
        Ok(Progress::NeedMore { at_least: 2 })
    );
    assert_eq!(
        parse(&[], &Limits::default()),
        Ok(Progress::NeedMore { at_least: 1 })
    );
}

#[test]
fn error_labels_are_stable() {
    assert_eq!(Error::SslV2Hello.as_str(), "sslv2_hello");
    assert_eq!(Error::DuplicateSni.as_str(), "duplicate_sni");
    assert_eq!(
        Error::InvalidServerName(NameError::Nul).to_string(),
        "invalid SNI: server name contains a NUL byte"
    );
}
