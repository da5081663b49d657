//! The same bytes to `clienthello::parse` and to rustls' server `Acceptor`:
//! wherever rustls accepts the ClientHello, we must read it too, with the
//! same server name and ALPN list (`clienthello_oracle::check`; its docs list
//! the documented exceptions). Also runs the one-shot checks.
#![no_main]

use clienthello::{parse, Limits};
use libfuzzer_sys::fuzz_target;
use sniroute_fuzz::check_answer;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    check_answer(data, &limits, &parse(data, &limits));
    clienthello_oracle::check(data);
});
