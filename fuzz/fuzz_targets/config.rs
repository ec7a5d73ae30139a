//! The config loader on arbitrary UTF-8: never panics, and its problems name real lines.
#![no_main]

#[allow(dead_code)] // each target uses its own part
mod checks;

libfuzzer_sys::fuzz_target!(|text: &str| checks::config_text(text));
