//! The metadata splice over arbitrary upstream `data`: the answer is always
//! one JSON object whose `data` is the upstream's.
#![no_main]

#[allow(dead_code)] // each target uses its own part
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::splice_bytes(data));
