//! Arbitrary bytes as access-log lines (nginx JSON with the default and a custom field map,
//! nginx combined, Caddy JSON, and the per-line detection): a record or a `LineError`, never
//! a panic. Lines are split on newlines and decoded lossily, as the tailer does.
#![no_main]

use edgewatch::edge::{caddy, nginx, LineParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields = nginx::JsonFields::default();
    let parser = LineParser::new(fields.clone());
    for line in text.split('\n') {
        let _ = parser.parse(line);
        let _ = nginx::parse_json(line, &fields);
        let _ = nginx::parse_combined(line);
        let _ = caddy::parse(line);
    }
});
