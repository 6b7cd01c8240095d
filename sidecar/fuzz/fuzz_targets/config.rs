//! Arbitrary bytes as a config file: a config or an error naming the problem, never a panic.
#![no_main]

use edgewatch::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Config::from_toml_str(&text, "fuzz");
});
