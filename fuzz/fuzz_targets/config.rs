//! Any bytes as a config: `Config::from_yaml_str` never panics, every error
//! names a line and column within the text (except "the configuration is
//! empty", about the whole file), and an accepted config holds what
//! `Config` promises (`sniroute_fuzz::config_yaml`). Bytes that are not
//! UTF-8 are decoded lossily: `Config::load` refuses such files before
//! parsing, so only text reaches the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniroute_fuzz::config_yaml::{check_config, text_of};

fuzz_target!(|data: &[u8]| {
    let _ = check_config(&text_of(data));
});
