//! libFuzzer target: `l4lb::fuzzing::proxy_protocol` (see that function for what it checks).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| l4lb::fuzzing::proxy_protocol(data));
