//! Arbitrary bytes through the admin endpoint's request-head reader
//! (`router::fuzzing::admin_request`, behind the router's `fuzzing`
//! feature), which asserts its properties itself: a complete head ends at
//! the first CRLF CRLF within 8 KiB and what follows changes nothing; the
//! method is a short token and the path visible ASCII starting with `/`;
//! every prefix of a complete head is incomplete; an invalid head stays
//! invalid whatever follows; a request built from the bytes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    router::fuzzing::admin_request(data);
});
