//! Arbitrary bytes as an nginx configuration: the tokenizer and parser give a tree or a
//! positioned `ParseError`, and a tree's routes and findings are computed, never a panic.
#![no_main]

use edgewatch::proxy::{findings, nginx, routes::routes, Facts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(tree) = nginx::parse(&text, "fuzz.conf") {
        let listeners = [(std::net::IpAddr::from([127, 0, 0, 1]), 18789)];
        let facts = Facts {
            listeners: Some(&listeners),
            gateway_ports: &[18789],
            min_read_timeout: std::time::Duration::from_secs(600),
        };
        let _ = findings(&routes(&tree), &facts);
    }
});
