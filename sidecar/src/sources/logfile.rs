//! Reading an access log file offline (`replay --access-log`, `timeline --pcap`): line by
//! line, in bounded memory, and never stopped by a bad byte. nginx's `escape=json` writes
//! bytes above 0x7f raw, so a line need not be UTF-8: it is decoded lossily (U+FFFD for each
//! bad sequence) and counted, and the line still goes to the parser.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
};

/// What reading a log file saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineStats {
    /// Non-empty lines handed to the callback.
    pub lines: u64,
    /// Of those, lines that were not valid UTF-8 (decoded lossily).
    pub non_utf8: u64,
}

/// Calls `f(line_number, line)` for every non-empty line of `path` (numbers start at 1).
pub fn for_each_line(path: &Path, mut f: impl FnMut(usize, &str)) -> std::io::Result<LineStats> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(4096);
    let mut stats = LineStats::default();
    let mut number = 0usize;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(stats);
        }
        number += 1;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        stats.lines += 1;
        match std::str::from_utf8(&buf) {
            Ok(line) => f(number, line),
            Err(_) => {
                stats.non_utf8 += 1;
                f(number, &String::from_utf8_lossy(&buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_byte_is_decoded_lossily_and_counted_not_fatal() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("access.log");
        std::fs::write(
            &path,
            b"{\"a\":\"ok\"}\n{\"a\":\"caf\xe9\"}\r\n\n   \n{\"a\":\"last\"}",
        )
        .expect("write");
        let mut seen = Vec::new();
        let stats = for_each_line(&path, |n, l| seen.push((n, l.to_owned()))).expect("read");
        assert_eq!(
            stats,
            LineStats {
                lines: 3,
                non_utf8: 1
            }
        );
        assert_eq!(seen[0], (1, "{\"a\":\"ok\"}".to_owned()));
        assert_eq!(seen[1], (2, "{\"a\":\"caf\u{fffd}\"}".to_owned()));
        assert_eq!(seen[2], (5, "{\"a\":\"last\"}".to_owned()));
    }
}
