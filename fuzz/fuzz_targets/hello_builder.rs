//! Structure-aware: builds a ClientHello with `clienthello::synth::HelloBuilder`
//! from an `arbitrary` description (server names valid and not, ALPN lists,
//! versions, ECH, padding, extra extensions, record size, chunking, limit),
//! and asserts that the parser answers exactly what a model of the spec
//! predicts, chunked or not, and agrees with rustls (`clienthello_oracle`).
#![no_main]

use arbitrary::Arbitrary;
use clienthello::synth::HelloBuilder;
use clienthello::{Error, Limits, Malformed, Progress, ServerName};
use libfuzzer_sys::fuzz_target;
use sniroute_fuzz::{check_chunked, chunk_size};

#[derive(Debug, Arbitrary)]
enum Name {
    /// No server_name extension.
    Absent,
    /// Labels over a host-name alphabet (mapped from the bytes), maybe
    /// with a trailing dot.
    Dns {
        labels: Vec<Vec<u8>>,
        trailing_dot: bool,
    },
    /// Any bytes as the one host name.
    Raw(Vec<u8>),
    /// Several host_name entries in one extension.
    Several(Vec<Vec<u8>>),
}

#[derive(Debug, Arbitrary)]
struct Spec {
    name: Name,
    alpn: Vec<Vec<u8>>,
    versions: Vec<u16>,
    ech: bool,
    pad_to: Option<u16>,
    extra: Vec<(u16, Vec<u8>)>,
    record_payload: u16,
    chunks: Vec<u8>,
    limit: Option<u16>,
    trailing: Vec<u8>,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

fn dns_name(labels: &[Vec<u8>], trailing_dot: bool) -> Vec<u8> {
    let mut name = Vec::new();
    for (i, label) in labels.iter().take(8).enumerate() {
        if i > 0 {
            name.push(b'.');
        }
        name.extend(
            label
                .iter()
                .take(70)
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()]),
        );
    }
    if trailing_dot {
        name.push(b'.');
    }
    name
}

fuzz_target!(|spec: Spec| {
    let mut b = HelloBuilder::new("x");
    // What the parser must say about the server name.
    let expect_sni: Result<Option<ServerName>, Error> = match &spec.name {
        Name::Absent => {
            b = b.no_sni();
            Ok(None)
        }
        Name::Dns {
            labels,
            trailing_dot,
        } => {
            let raw = dns_name(labels, *trailing_dot);
            b = b.raw_server_name(&raw);
            ServerName::parse(&raw)
                .map(Some)
                .map_err(Error::InvalidServerName)
        }
        Name::Raw(raw) => {
            let raw = &raw[..raw.len().min(400)];
            b = b.raw_server_name(raw);
            ServerName::parse(raw)
                .map(Some)
                .map_err(Error::InvalidServerName)
        }
        Name::Several(names) => {
            let names: Vec<&[u8]> = names
                .iter()
                .take(4)
                .map(|n| &n[..n.len().min(100)])
                .collect();
            b = b.server_names(&names);
            match names.len() {
                0 => Ok(None),
                1 => ServerName::parse(names[0])
                    .map(Some)
                    .map_err(Error::InvalidServerName),
                _ => Err(Error::MalformedSni("more than one name")),
            }
        }
    };

    let alpn: Vec<&[u8]> = spec
        .alpn
        .iter()
        .take(16)
        .map(|p| &p[..p.len().min(255)])
        .collect();
    b = b.alpn(&alpn);
    let alpn_ok = alpn.iter().all(|p| !p.is_empty());

    let versions = &spec.versions[..spec.versions.len().min(127)];
    b = b.supported_versions(versions);
    if spec.ech {
        b = b.ech();
    }
    if let Some(pad) = spec.pad_to {
        b = b.pad_to(usize::from(pad % 4096));
    }
    for (t, body) in spec.extra.iter().take(8) {
        // Keep clear of the extensions the parser reads (0, 16, 43, 0xfe0d).
        let t = match *t {
            0 | 16 | 43 | 0xfe0d => 0x4a4a,
            t => t,
        };
        b = b.extension(t, &body[..body.len().min(64)]);
    }
    let payload = 1 + usize::from(spec.record_payload) % (1 << 14);
    let hs = b.handshake();
    let mut bytes = b.build_in_records(payload);
    let hello_len = bytes.len();
    bytes.extend_from_slice(&spec.trailing[..spec.trailing.len().min(64)]);

    let limits = match spec.limit {
        Some(l) => Limits {
            max_client_hello_bytes: usize::from(l),
        },
        None => Limits::default(),
    };
    let chunks: Vec<usize> = spec.chunks.iter().take(7).map(|&c| chunk_size(c)).collect();
    let answer = check_chunked(&bytes, &limits, &chunks);

    // The model: too large first (refused from headers), then the
    // extensions in the builder's order (server_name before ALPN).
    if hello_len > limits.max_client_hello_bytes {
        assert!(
            matches!(answer, Err(Error::TooLarge { .. })),
            "{hello_len}-byte hello, limit {limits:?}: {answer:?}"
        );
    } else {
        match (expect_sni, alpn_ok) {
            (Err(e), _) => assert_eq!(answer, Err(e)),
            (Ok(_), false) => assert_eq!(answer, Err(Error::Malformed(Malformed::Alpn))),
            (Ok(sni), true) => {
                let Ok(Progress::Complete(h)) = answer else {
                    panic!("expected a complete hello, got {answer:?}");
                };
                assert_eq!(h.server_name, sni);
                assert_eq!(h.alpn.iter().collect::<Vec<_>>(), alpn);
                assert_eq!(h.supported_versions, versions);
                assert_eq!(h.ech, spec.ech);
                assert_eq!(h.legacy_version, 0x0303);
                assert_eq!(h.client_hello_bytes, hello_len);
                assert_eq!(h.tls_records, hs.len().div_ceil(payload));
            }
        }
    }

    clienthello_oracle::check(&bytes);
});
