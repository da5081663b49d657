//! Arbitrary bytes through `clienthello::parse` as a TCP reader would call
//! it, with chunk sizes and the size limit taken from the input's first
//! bytes (see `sniroute_fuzz::ChunkedInput`). Asserts chunking independence,
//! finality of answers, exact `client_hello_bytes`, `at_least` that never
//! overshoots, limits, and that the facts come from the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute_fuzz::{check_chunked, ChunkedInput};

fuzz_target!(|data: &[u8]| {
    let input = ChunkedInput::decode(data);
    let _answer = check_chunked(input.payload, &input.limits, &input.chunks);
});
