#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| previewd_fuzz_checks::branch_names(data));
