//! Structure-aware: PROXY protocol v1 and v2 headers written by
//! `proxy_protocol` for any client and local addresses (IPv4, IPv6,
//! IPv4-mapped, mixed families) and any valid server name, read back by the
//! `ppp` crate as the same family, addresses, ports and AUTHORITY TLV, with
//! the right lengths (`sniroute_fuzz::proxy_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute_fuzz::proxy_header::{check, Input};

fuzz_target!(|input: Input| {
    check(&input);
});
