//! Writes the seed corpora under `fuzz/corpus/<target>/` from the captures
//! in `crates/clienthello/testdata/` and from `HelloBuilder` variants, and
//! the `config` target's from the repository's YAML: the deploy example,
//! the YAML in `crates/config/src/tests.rs` (read out of its string
//! literals) and a few hostile shapes.
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
        // proxy_header reads `arbitrary` input too.
        write(
            &corpus.join("proxy_header"),
            &format!("seed-{i}-{len}.bin"),
            &bytes,
        );
    }
    config_seeds(&root, &corpus.join("config"));
    println!("seed corpora written under {}", corpus.display());
}

/// The `config` target's seeds: `deploy/sniroute.example.yaml`, the YAML of
/// the config crate's tests, and hostile shapes. Test YAML is named after a
/// hash of its text, so edits to the tests add seeds without renaming others.
fn config_seeds(root: &Path, dir: &Path) {
    let deploy = fs::read(root.join("../deploy/sniroute.example.yaml")).unwrap();
    write(dir, "deploy-example.yaml", &deploy);
    let tests = fs::read_to_string(root.join("../crates/config/src/tests.rs")).unwrap();
    for yaml in test_yaml(&tests) {
        write(
            dir,
            &format!("tests-{:016x}.yaml", fnv(yaml.as_bytes())),
            yaml.as_bytes(),
        );
    }
    let route = "routes: [{name: a, server_names: [a.test], upstreams: [\"10.0.0.1:1\"]}]\n";
    let ok = format!("listeners: [\"0.0.0.0:1\"]\n{route}");
    let hostile: Vec<(&str, String)> = vec![
        ("crlf", ok.replace('\n', "\r\n")),
        ("cr-only", ok.replace('\n', "\r")),
        ("nel-breaks", ok.replace('\n', "\u{85}")),
        ("line-separator", ok.replace('\n', "\u{2028}")),
        ("bom", format!("\u{feff}{ok}")),
        ("bom-twice", format!("\u{feff}\u{feff}{ok}")),
        ("control-char", format!("{ok}admin: \"1.2.3.4:5\x01\"\n")),
        ("control-char-late", format!("{ok}# {}\x7f\n", "x".repeat(3000))),
        ("del-in-key", format!("{ok}wat\x7fch_config: true\n")),
        ("tab-indent", format!("listeners:\n\t- \"0.0.0.0:1\"\n{route}")),
        ("anchors", "listeners: &l [\"0.0.0.0:1\"]\nroutes: [{name: a, server_names: *l, upstreams: *l}]\n".to_owned()),
        ("merge-key", "base: &b {name: a}\nlisteners: [\"0.0.0.0:1\"]\nroutes: [{<<: *b, upstreams: [\"1.1.1.1:1\"]}]\n".to_owned()),
        ("laughs", format!("a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nlisteners: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n{route}")),
        ("tags", "listeners: !!seq [!!str \"0.0.0.0:1\"]\nroutes: !custom [{name: !!str a}]\n".to_owned()),
        ("directives", format!("%YAML 1.1\n%TAG !e! tag:example.com,2000:\n---\n{ok}...\n")),
        ("two-documents", format!("{ok}---\n{ok}")),
        ("empty-documents", "---\n...\n---\n".to_owned()),
        ("deep-flow", format!("listeners: {}{}\n", "[".repeat(300), "]".repeat(300))),
        ("deep-block", (0..150).map(|i| format!("{}- \n", "  ".repeat(i))).collect()),
        ("complex-key", format!("? [a, b]\n: c\n{ok}")),
        ("block-scalars", format!("listeners:\n  - >-\n    0.0.0.0:1\n{route}default_route: |\n  a\n")),
        ("quoted-escapes", format!("listeners: [\"\\x30.0.0.0:1\", '0.0.0.0:2']\n{route}")),
        ("wide-chars", format!("{ok}# 日本語 🦀\nadmin: \"ünïcode\"\n")),
        ("null-values", "listeners: [\"0.0.0.0:1\"]\nroutes:\n  - name: a\n    server_names:\n    upstreams: ~\n".to_owned()),
        ("all-limits", format!("{ok}limits: {{max_connections: 1, max_client_hello_bytes: 512, max_pending_hellos: 1, max_pending_hellos_per_source: 1, max_connections_per_source: 18446744073709551615}}\n")),
    ];
    for (name, text) in hostile {
        write(dir, &format!("hostile-{name}.yaml"), text.as_bytes());
    }
}

/// FNV-1a, for stable seed names.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A token of Rust source, as far as finding YAML in tests needs.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    Punct(char),
}

/// The YAML texts of a test file: every `yaml: vec![...]` of the `Bad`
/// cases (its string literals and `const`s joined by newlines, plus a final
/// one, as the test joins them), and every string literal that looks like a
/// config (it has a `listeners:` or `routes:` key, or spans lines).
fn test_yaml(source: &str) -> Vec<String> {
    let toks = lex(source);
    // `const NAME: ... = "..."` and `const NAME: &[&str] = &["...", ...]`.
    let mut consts: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (i, t) in toks.iter().enumerate() {
        if *t != Tok::Ident("const".into()) {
            continue;
        }
        let Some(Tok::Ident(name)) = toks.get(i + 1) else {
            continue;
        };
        let Some(eq) = toks[i..].iter().position(|t| *t == Tok::Punct('=')) else {
            continue;
        };
        let mut values = Vec::new();
        for t in &toks[i + eq + 1..] {
            match t {
                Tok::Str(s) => values.push(s.clone()),
                Tok::Punct(';') => break,
                _ => {}
            }
        }
        consts.insert(name.clone(), values);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let case = toks[i..].starts_with(&[
            Tok::Ident("yaml".into()),
            Tok::Punct(':'),
            Tok::Ident("vec".into()),
            Tok::Punct('!'),
            Tok::Punct('['),
        ]);
        if !case {
            i += 1;
            continue;
        }
        i += 5;
        let mut lines = Vec::new();
        while i < toks.len() && toks[i] != Tok::Punct(']') {
            match &toks[i] {
                Tok::Str(s) => lines.push(s.clone()),
                Tok::Ident(name) if consts.contains_key(name) => {
                    let values = &consts[name];
                    // NAME[k] picks one of a list.
                    if toks.get(i + 1) == Some(&Tok::Punct('[')) {
                        if let Some(Tok::Ident(k)) = toks.get(i + 2) {
                            if let Ok(k) = k.parse::<usize>() {
                                lines.extend(values.get(k).cloned());
                                i += 3;
                            }
                        }
                    } else {
                        lines.extend(values.iter().cloned());
                    }
                }
                _ => {}
            }
            i += 1;
        }
        out.push(lines.join("\n") + "\n");
    }
    for t in &toks {
        if let Tok::Str(s) = t {
            if s.contains("listeners:") || s.contains("routes:") || s.contains('\n') {
                out.push(s.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Splits Rust source into string literals (escapes decoded), identifiers
/// and numbers (as `Ident`) and punctuation; comments and char literals
/// are dropped.
fn lex(source: &str) -> Vec<Tok> {
    let chars: Vec<char> = source.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == 'r' && matches!(chars.get(i + 1), Some('"' | '#')) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                toks.push(Tok::Ident("r".into()));
                i += 1;
                continue;
            }
            j += 1;
            let start = j;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let close: Vec<char> = close.chars().collect();
            while j < chars.len() && !chars[j..].starts_with(&close) {
                j += 1;
            }
            toks.push(Tok::Str(chars[start..j].iter().collect()));
            i = j + close.len();
        } else if c == '"' {
            let mut s = String::new();
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                    match chars.get(j) {
                        Some('n') => s.push('\n'),
                        Some('r') => s.push('\r'),
                        Some('t') => s.push('\t'),
                        Some('0') => s.push('\0'),
                        Some('x') => {
                            let hex: String = chars[j + 1..j + 3].iter().collect();
                            s.push(char::from(u8::from_str_radix(&hex, 16).unwrap()));
                            j += 2;
                        }
                        Some('u') => {
                            let end = j + chars[j..].iter().position(|&c| c == '}').unwrap();
                            let hex: String = chars[j + 2..end].iter().collect();
                            s.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                            j = end;
                        }
                        Some('\n') => {
                            // A line continuation skips the next line's indent.
                            while chars.get(j + 1).is_some_and(|c| c.is_whitespace()) {
                                j += 1;
                            }
                        }
                        Some(&other) => s.push(other),
                        None => {}
                    }
                } else {
                    s.push(chars[j]);
                }
                j += 1;
            }
            toks.push(Tok::Str(s));
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n') or a lifetime ('static).
            if chars.get(i + 1) == Some(&'\\') {
                let end = i + 2 + chars[i + 2..].iter().position(|&c| c == '\'').unwrap();
                i = end + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            if !c.is_whitespace() {
                toks.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    toks
}
