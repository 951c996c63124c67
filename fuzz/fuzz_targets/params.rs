#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cloudproxy_params::fuzzing::params(data));
