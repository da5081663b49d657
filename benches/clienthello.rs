//! How long `clienthello::parse` takes for one whole ClientHello: every
//! capture in `crates/clienthello/testdata/`, a 1.9 KB padded hello shaped
//! like a browser's post-quantum one, and the kubectl capture re-split into
//! 100-byte records (the slow path: the handshake is copied out of 16
//! records).
//!
//! `cargo bench --bench clienthello` runs criterion (one hello per
//! iteration, so its throughput is hellos/s) and then prints a summary
//! table in ns per hello. `cargo bench --bench clienthello -- padded` runs
//! only the inputs whose name contains `padded`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use clienthello::synth::{resplit, HelloBuilder};
use clienthello::{parse, Limits, Progress};
use criterion::{BenchmarkId, Criterion, Throughput};

const TESTDATA: [(&str, &[u8]); 7] = [
    (
        "curl-http11-tls12",
        include_bytes!("../crates/clienthello/testdata/curl-http11-tls12.bin"),
    ),
    (
        "curl-openssl3",
        include_bytes!("../crates/clienthello/testdata/curl-openssl3.bin"),
    ),
    (
        "kubectl-v1.32",
        include_bytes!("../crates/clienthello/testdata/kubectl-v1.32.bin"),
    ),
    (
        "openssl-s_client-nosni",
        include_bytes!("../crates/clienthello/testdata/openssl-s_client-nosni.bin"),
    ),
    (
        "openssl-s_client-tls12-alpn",
        include_bytes!("../crates/clienthello/testdata/openssl-s_client-tls12-alpn.bin"),
    ),
    (
        "openssl-s_client-tls13",
        include_bytes!("../crates/clienthello/testdata/openssl-s_client-tls13.bin"),
    ),
    (
        "python-ssl",
        include_bytes!("../crates/clienthello/testdata/python-ssl.bin"),
    ),
];

/// Every input, by name; each one is checked to parse completely.
fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = TESTDATA
        .iter()
        .map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec()))
        .collect();
    all.push((
        "synth-padded-1900".to_owned(),
        HelloBuilder::new("www.example.com")
            .ech()
            .pad_to(1900)
            .build(),
    ));
    let kubectl = TESTDATA[2].1;
    all.push((
        "kubectl-v1.32-records-of-100".to_owned(),
        resplit(kubectl, 100).expect("the capture is a record stream"),
    ));
    for (name, bytes) in &all {
        match parse(bytes, &Limits::default()) {
            Ok(Progress::Complete(h)) => assert_eq!(h.client_hello_bytes, bytes.len(), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    all
}

fn bench_parse(c: &mut Criterion, inputs: &[(String, Vec<u8>)]) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("clienthello_parse");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in inputs {
        let id = BenchmarkId::new(name.as_str(), bytes.len());
        group.bench_with_input(id, bytes.as_slice(), |b, bytes| {
            b.iter(|| parse(black_box(bytes), black_box(&limits)));
        });
    }
    group.finish();
}

/// A plain timing loop per input, printed as one table.
fn summary(inputs: &[(String, Vec<u8>)], filter: Option<&str>) {
    let limits = Limits::default();
    println!(
        "\n{:<32} {:>6} {:>12} {:>14}",
        "input", "bytes", "ns/hello", "hellos/s"
    );
    for (name, bytes) in inputs {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let mut iterations: u64 = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            for _ in 0..1000 {
                black_box(parse(black_box(bytes), black_box(&limits)).is_ok());
            }
            iterations += 1000;
        }
        let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
        println!(
            "{name:<32} {:>6} {ns:>12.1} {:>14.0}",
            bytes.len(),
            1e9 / ns
        );
    }
}

fn main() {
    let inputs = inputs();
    let mut criterion = Criterion::default().configure_from_args();
    bench_parse(&mut criterion, &inputs);
    criterion.final_summary();
    // Not in `cargo test --benches` (`--test`) or `--list` runs.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    summary(&inputs, filter);
}
