//! Arbitrary bytes through the incoming PROXY header reader
//! (`proxy_protocol::read::parse`), as a trusted balancer's first bytes.
//! Asserts: no panic; `NeedMore` asks for at least one byte; a complete
//! header consumed no more than the buffer and the format's maximum, and
//! the same answer comes from exactly the consumed bytes; more bytes never
//! change a complete answer; every prefix of a complete header asks for
//! more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_protocol::read::{parse, Progress, MAX_V1_BYTES, MAX_V2_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Progress::NeedMore { at_least }) => assert!(at_least >= 1),
        Ok(Progress::Complete { header, consumed }) => {
            assert!(consumed <= data.len());
            assert!(consumed <= MAX_V1_BYTES.max(MAX_V2_BYTES), "{consumed}");
            let exact = parse(&data[..consumed]);
            assert_eq!(
                exact,
                Ok(Progress::Complete {
                    header: header.clone(),
                    consumed
                }),
                "the consumed bytes alone give the same header"
            );
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\x16\x03\x01 more bytes");
            assert_eq!(
                parse(&longer),
                Ok(Progress::Complete { header, consumed }),
                "more bytes never change a complete answer"
            );
            for cut in 0..consumed {
                assert!(
                    matches!(parse(&data[..cut]), Ok(Progress::NeedMore { .. })),
                    "a prefix of {cut} bytes of a complete header"
                );
            }
        }
        Err(_) => {}
    }
});
