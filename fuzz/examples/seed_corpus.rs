//! Writes the seed corpora under `fuzz/corpus/<target>/` from the captures
//! in `crates/clienthello/testdata/` and from `HelloBuilder` variants.
//!
//! Run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`.
//! Files are named after what they hold; existing files are overwritten,
//! other files are left alone.

use std::fs;
use std::path::{Path, PathBuf};

use clienthello::synth::{records, resplit, HelloBuilder};
use sniroute_fuzz::ChunkedInput;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let testdata = root.join("../crates/clienthello/testdata");
    let corpus = root.join("corpus");
    let chunked = corpus.join("client_hello_chunked");
    let differential = corpus.join("differential_rustls");
    let builder = corpus.join("hello_builder");

    // Valid and broken inputs, each for both byte-level targets.
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut captures: Vec<_> = fs::read_dir(&testdata)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    captures.sort();
    for path in &captures {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let bytes = fs::read(path).unwrap();
        inputs.push((format!("capture-{stem}"), bytes));
    }
    let kubectl = fs::read(testdata.join("kubectl-v1.32.bin")).unwrap();
    let curl12 = fs::read(testdata.join("curl-http11-tls12.bin")).unwrap();
    for (name, src, size) in [
        ("resplit-kubectl-700", &kubectl, 700),
        ("resplit-kubectl-100", &kubectl, 100),
        ("resplit-curl12-7", &curl12, 7),
        ("resplit-curl12-1", &curl12, 1),
    ] {
        inputs.push((name.to_owned(), resplit(src, size).unwrap()));
    }
    let ok = HelloBuilder::new("api.example.com");
    let synth: Vec<(&str, Vec<u8>)> = vec![
        ("synth-default", ok.build()),
        ("synth-ech", ok.clone().ech().build()),
        (
            "synth-no-sni-no-alpn",
            ok.clone().no_sni().alpn(&[]).build(),
        ),
        (
            "synth-upper-trailing-dot",
            HelloBuilder::new("API.Example.COM.").build(),
        ),
        ("synth-padded-1900", ok.clone().pad_to(1900).build()),
        (
            "synth-records-300",
            ok.clone().pad_to(1900).build_in_records(300),
        ),
        (
            "synth-tls12-only",
            ok.clone().supported_versions(&[]).build(),
        ),
        (
            "synth-ip-literal",
            ok.clone().raw_server_name(b"10.0.4.11").build(),
        ),
        (
            "synth-ipv6-literal",
            ok.clone().raw_server_name(b"2001:db8::1").build(),
        ),
        (
            "synth-nul-in-name",
            ok.clone().raw_server_name(b"good.com\0.evil.com").build(),
        ),
        (
            "synth-two-names",
            ok.clone()
                .server_names(&[b"a.example", b"b.example"])
                .build(),
        ),
        ("synth-empty-alpn-name", ok.clone().alpn(&[b""]).build()),
        (
            "synth-duplicate-sni",
            ok.clone()
                .extension(0, &[0, 6, 0, 0, 3, b'b', b'.', b'c'])
                .build(),
        ),
        (
            "synth-many-extensions",
            HelloBuilder::new("x.example").many_extensions(200).build(),
        ),
        ("synth-trailing-in-record", {
            let mut hs = ok.handshake();
            hs.extend_from_slice(&[0; 3]);
            records(&hs, 1 << 14, 0x0301)
        }),
        ("synth-followed-by-app-data", {
            let mut v = ok.build();
            v.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
            v
        }),
        ("synth-alert-inside", {
            let hs = ok.handshake();
            let mut v = records(&hs[..10], 10, 0x0301);
            v.extend_from_slice(&[21, 3, 3, 0, 2, 1, 0]);
            v.extend_from_slice(&records(&hs[10..], 1 << 14, 0x0301));
            v
        }),
        (
            "not-tls-http",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "not-tls-sslv2",
            vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
        ),
        ("not-handshake-alert", vec![21, 3, 3, 0, 2, 2, 40]),
    ];
    for (name, bytes) in synth {
        inputs.push((name.to_owned(), bytes));
    }

    for (name, bytes) in &inputs {
        write(&differential, &format!("{name}.bin"), bytes);
        write(
            &chunked,
            &format!("{name}.bin"),
            &ChunkedInput::encode(None, &[], bytes),
        );
    }
    // The chunked target also gets a few chunkings and limits.
    let chunked_extra: Vec<(&str, Vec<u8>)> = vec![
        (
            "chunks-1-kubectl",
            ChunkedInput::encode(None, &[0], &kubectl),
        ),
        (
            "chunks-3-5-200-kubectl",
            ChunkedInput::encode(None, &[2, 4, 199], &kubectl),
        ),
        (
            "chunks-4-resplit-100",
            ChunkedInput::encode(None, &[3], &resplit(&kubectl, 100).unwrap()),
        ),
        (
            "limit-1024-kubectl",
            ChunkedInput::encode(Some(1024), &[99], &kubectl),
        ),
        (
            "limit-exact-curl12",
            ChunkedInput::encode(Some(curl12.len() as u16), &[16], &curl12),
        ),
        (
            "limit-one-short-curl12",
            ChunkedInput::encode(Some(curl12.len() as u16 - 1), &[16], &curl12),
        ),
    ];
    for (name, bytes) in chunked_extra {
        write(&chunked, &format!("{name}.bin"), &bytes);
    }

    // hello_builder reads `arbitrary` input: a few unstructured seeds of
    // different sizes (libFuzzer grows the rest).
    let mut x: u32 = 0x9e37_79b9;
    for (i, len) in [16usize, 64, 256, 1024].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        write(&builder, &format!("seed-{i}-{len}.bin"), &bytes);
    }
    println!("seed corpora written under {}", corpus.display());
}
