//! `cargo bench --bench edge`: access-log parsing plus join throughput on one core, in lines
//! per second, on a large log in the real nginx JSON format (the README's `log_format
//! edgewatch`, read from README.md, through the product's `LineParser`), against `jq -c .`
//! over the same file, measured in the same run. Goal: >= 1 million lines/s/core. Beside it,
//! the parse alone: once over the whole log (read from memory), and in nanoseconds a line on
//! 1,000 lines in the cache (`parse_hot_ns`, the parse's own time, for a change to it).
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with a message"
)]

use std::{io::Write, process::Command, time::Instant};

use edgewatch::{
    edge::{join::Joiner, nginx::JsonFields, LineParser},
    hop::{ConnId, ExchangeOutcome, HopRecord, HttpExchange},
};

// The allocator of the `edgewatch` binary, set up as it sets it up (no huge pages), so
// the figures are the product's (`edgewatch::allocator`).
edgewatch::product_allocator!();

const LINES: usize = 1_000_000;

/// Lines of another layout timed, parsed alone.
const OTHER_LINES: usize = 200_000;

/// The README's `log_format edgewatch` (the snippet the tests run nginx with), as the pieces
/// of the line nginx writes: text, and the names of the variables between it.
fn readme_layout() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split_once("<!-- snippet:nginx-log-format -->")
        .expect("README.md's nginx-log-format snippet")
        .1;
    let body = block.split("```").nth(1).expect("the snippet's code block");
    // nginx concatenates the quoted strings of the directive.
    let template: String = body.split('\'').skip(1).step_by(2).collect();
    assert!(template.starts_with('{'), "a JSON layout: {template}");
    let mut pieces = Vec::new();
    let mut rest = template.as_str();
    while let Some(at) = rest.find('$') {
        let name_len = rest[at + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at - 1);
        pieces.push((
            rest[..at].to_owned(),
            Some(rest[at + 1..at + 1 + name_len].to_owned()),
        ));
        rest = &rest[at + 1 + name_len..];
    }
    pieces.push((rest.to_owned(), None));
    pieces
}

fn main() {
    let layout = readme_layout();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hop = Vec::with_capacity(LINES);
    let base = 1_795_280_000u64;
    for i in 0..LINES {
        let rid = format!(
            "{:032x}",
            0x9e37_79b9_7f4a_7c15u128.wrapping_mul(i as u128 + 1)
        );
        let secs = base + (i / 1000) as u64;
        let ms = i % 1000;
        // One line exactly as nginx 1.22 writes the README's format (none of these values
        // needs escaping), for a plain request: `$http_upgrade` empty.
        let mut line = String::with_capacity(400);
        for (text, var) in &layout {
            line.push_str(text);
            let Some(var) = var else { continue };
            let value = match var.as_str() {
                "msec" => format!("{secs}.{ms:03}"),
                "request_id" => rid.clone(),
                "remote_addr" => format!("203.0.113.{}", i % 250),
                "host" => "gw.example".into(),
                "request_method" => "GET".into(),
                "request_uri" => format!("/api/v1/items/{i}?page=2"),
                "status" => "200".into(),
                "request_time" | "upstream_response_time" => "0.004".into(),
                "upstream_addr" => "127.0.0.1:18789".into(),
                "upstream_connect_time" => "0.000".into(),
                "upstream_header_time" => "0.003".into(),
                "body_bytes_sent" => "512".into(),
                "http_upgrade" => String::new(),
                other => panic!("README's log_format has ${other}: give the benchmark a value"),
            };
            line.push_str(&value);
        }
        writeln!(f, "{line}").unwrap();
        hop.push(HopRecord::Http(HttpExchange {
            conn: ConnId {
                client: "127.0.0.1:40000".parse().unwrap(),
                server: "127.0.0.1:18789".parse().unwrap(),
                first_seen_ns: 0,
            },
            index: 0,
            request_ts_ns: secs * 1_000_000_000 + ms as u64 * 1_000_000 - 3_000_000,
            method: "GET".into(),
            path: format!("/api/v1/items/{i}?page=2").into(),
            host: Some("gw.example".into()),
            origin: None,
            request_id: Some(rid.into()),
            x_forwarded_for: None,
            x_forwarded_proto: None,
            upgrade_websocket: false,
            connection_upgrade: false,
            status: Some(200),
            ttfb_ns: Some(3_000_000),
            total_ns: Some(3_500_000),
            request_bytes: 200,
            response_bytes: 600,
            outcome: ExchangeOutcome::Complete,
            error_code: None,
        }));
    }
    f.flush().unwrap();
    drop(f);
    let text = std::fs::read_to_string(&path).unwrap();
    let size_mb = text.len() as f64 / 1e6;

    // Parse + join, one thread, streaming as live: each request's hop exchange arrives just
    // before its log line; joined requests are counted and dropped (they would be written out).
    // Three passes (this machine is noisy); the median is the figure, the goal is judged on it.
    // The product's parser, with the README's names (the default).
    let parser = LineParser::new(JsonFields::default());
    let mut rates = Vec::new();
    for _ in 0..3 {
        let hop_run = hop.clone();
        let mut joiner = Joiner::new(30_000_000_000);
        let mut out = Vec::new();
        let mut joined = 0usize;
        let mut parsed = 0usize;
        let start = Instant::now();
        for (line, r) in text.lines().zip(hop_run) {
            let at = r.end_ts_ns();
            joiner.hop(r, at, &mut out);
            let rec = parser.parse(line).unwrap();
            let now = rec.end_ts_ns;
            joiner.edge(rec, now, &mut out);
            parsed += 1;
            joined += out.len();
            // As the pipeline does once requests are handled: the exchanges' boxes go back.
            joiner.recycle_handled(&mut out);
            out.clear();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(parsed, LINES);
        assert_eq!(joined, LINES, "every line joined");
        assert_eq!(joiner.pending(), 0);
        rates.push(LINES as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[1];
    // The parser alone, for the record.
    let start = Instant::now();
    for line in text.lines() {
        std::hint::black_box(parser.parse(line).unwrap());
    }
    let parse_only = start.elapsed().as_secs_f64();
    // The parser alone on lines in the cache: the 1,000 first, parsed 100 times over, the
    // best of 30 such runs. The pass above reads 300 MB from memory once; this one times the
    // parse itself, which a change to it moves by a few percent (instruction counts do not
    // tell: a line's parse is a chain of dependent steps, not a stream of instructions).
    let hot: Vec<&str> = text.lines().take(1_000).collect();
    let parse_hot_ns = (0..30)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..100 {
                for line in &hot {
                    std::hint::black_box(parser.parse(std::hint::black_box(line)).unwrap());
                }
            }
            start.elapsed().as_secs_f64() * 1e9 / (100 * hot.len()) as f64
        })
        .fold(f64::INFINITY, f64::min);
    // For the record, a layout other than the README's (one key more at its end, as a user
    // who added a field to the format writes it): the README layout's scan turns it down at
    // its last key, and serde_json reads it.
    let other: Vec<String> = text
        .lines()
        .take(OTHER_LINES)
        .map(|l| format!(r#"{},"ssl_protocol":"TLSv1.3"}}"#, &l[..l.len() - 1]))
        .collect();
    let start = Instant::now();
    for line in &other {
        std::hint::black_box(parser.parse(line).unwrap());
    }
    let other_rate = OTHER_LINES as f64 / start.elapsed().as_secs_f64();
    let ours = LINES as f64 / median;

    let jq_start = Instant::now();
    let status = Command::new("jq")
        .args(["-c", "."])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("jq (cargo xtask bench installs it)");
    assert!(status.success());
    let jq = jq_start.elapsed().as_secs_f64();

    println!("log: {LINES} nginx JSON lines, {size_mb:.0} MB");
    println!(
        "edgewatch parse + join: median {median:.0} lines/s on one core (runs: {:.0}, {:.0}, {:.0}; parse alone: {:.0} lines/s; a layout with one key more, parsed alone: {other_rate:.0} lines/s)",
        rates[0],
        rates[1],
        rates[2],
        LINES as f64 / parse_only
    );
    println!(
        "edgewatch parse alone, lines in the cache: {parse_hot_ns:.1} ns a line (the best of 30 runs of 100 passes over 1,000 lines)"
    );
    println!("jq -c .: {jq:.2} s, {:.0} lines/s", LINES as f64 / jq);
    println!(
        "ratio: edgewatch is {:.1}x jq; goal >= 1,000,000 lines/s/core: {}",
        jq / ours,
        if median >= 1e6 { "met" } else { "not met" }
    );
    println!(
        "summary: edge lines_per_s={median:.0} ratio_vs_jq={:.1} parse_hot_ns={parse_hot_ns:.1}",
        jq / ours
    );
}
