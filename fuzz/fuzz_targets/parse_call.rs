//! `parse_call(category, body)` on arbitrary bytes: never panics, and what it
//! accepts round-trips through the upstream body. The first byte picks the category.
#![no_main]

#[allow(dead_code)] // each target uses its own part
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::parse_call_bytes(data));
