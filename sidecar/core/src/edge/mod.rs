//! The edge proxy's access logs: one [`EdgeRecord`] per line, from nginx JSON, nginx's combined
//! format with edgewatch's appended fields, or Caddy's JSON access log. Pure: lines in,
//! records or a [`LineError`] out (the caller counts and reports errors, never stops on one).
pub mod caddy;
pub mod config;
pub mod join;
pub mod nginx;

use serde::Serialize;

use crate::hop::{RequestId, Text};

/// Which layout a line was read with.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EdgeFormat {
    NginxJson,
    NginxCombined,
    CaddyJson,
}

impl EdgeFormat {
    /// As the `edge_logs.format` column says it.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeFormat::NginxJson => "nginx_json",
            EdgeFormat::NginxCombined => "nginx_combined",
            EdgeFormat::CaddyJson => "caddy_json",
        }
    }
}

/// One request as the edge proxy logged it. Its text is kept inline (the request id up to 40
/// bytes, the others up to 24): a line of the usual sizes costs the sidecar no heap allocation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EdgeRecord {
    pub format: EdgeFormat,
    /// When the proxy finished the request (logged at the end), Unix nanoseconds.
    pub end_ts_ns: u64,
    /// The request id the proxy forwarded upstream (nginx `$request_id`, Caddy
    /// `{http.request.uuid}`).
    pub request_id: Option<RequestId>,
    pub client: Option<Text>,
    pub host: Option<Text>,
    pub method: Option<Text>,
    /// Request target, credentials redacted.
    pub path: Option<Text>,
    /// 0 when the proxy logged none (Caddy 2.6 logs WebSocket requests with status 0).
    pub status: u16,
    /// Total time at the edge (`$request_time`, Caddy `duration`).
    pub request_time_ns: Option<u64>,
    /// The upstream the proxy used, as logged (`$upstream_addr`).
    pub upstream_addr: Option<Text>,
    /// The log says the proxy used no upstream: nginx logged `$upstream_addr` empty or `-`
    /// (it answered itself: a redirect, a file, a `return`, an error of its own), so no
    /// exchange on the hop can be this request's. False when the log does not say (the field
    /// is not in its layout; Caddy's logs never say).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_upstream: bool,
    /// `$upstream_connect_time` (the last attempt's, when the proxy retried).
    pub upstream_connect_ns: Option<u64>,
    /// `$upstream_header_time`.
    pub upstream_header_ns: Option<u64>,
    /// `$upstream_response_time`.
    pub upstream_response_ns: Option<u64>,
    pub bytes_sent: Option<u64>,
    /// The `Upgrade` header the client sent (nginx `$http_upgrade`, Caddy's logged request
    /// headers): an upgrade requested at the edge.
    pub upgrade: Option<Text>,
}

impl EdgeRecord {
    /// The client asked the edge for a WebSocket upgrade.
    pub fn upgrade_requested(&self) -> bool {
        self.upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }

    /// When the request started at the edge, when the log says how long it took.
    pub fn start_ts_ns(&self) -> Option<u64> {
        self.request_time_ns
            .map(|t| self.end_ts_ns.saturating_sub(t))
    }
}

/// Why a line gave no record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("field `{0}` missing")]
    Missing(&'static str),
    #[error("field `{field}` has an unusable value {value:?}")]
    Bad { field: &'static str, value: String },
    #[error("not in the expected layout: {0}")]
    Layout(&'static str),
}

/// Parses lines of any supported layout: Caddy JSON (has a `logger`), other JSON objects with
/// the configured field names (the README's nginx layout by default), else the
/// `edgewatch_combined` layout. Whether the names are the README's is worked out once, when
/// the parser is made ([`nginx::JsonFields::is_default`], fourteen string compares), not per
/// line.
#[derive(Clone, Debug)]
pub struct LineParser {
    fields: nginx::JsonFields,
    readme_fields: bool,
}

impl LineParser {
    pub fn new(fields: nginx::JsonFields) -> Self {
        let readme_fields = fields.is_default();
        Self {
            fields,
            readme_fields,
        }
    }

    /// One line.
    pub fn parse(&self, line: &str) -> Result<EdgeRecord, LineError> {
        let trimmed = line.trim_start();
        if trimmed.starts_with('{') {
            // A line in exactly the README's nginx layout is nginx's, found without searching
            // it for Caddy's `"logger"`: none of its values can hold that (the scan takes no
            // escaped quote). Anything else, including such a line with an unusable value,
            // goes the general way below.
            if self.readme_fields {
                if let Some(rec) = nginx::scan_default(trimmed) {
                    return Ok(rec);
                }
            }
            if trimmed.contains("\"logger\"") {
                return caddy::parse(trimmed);
            }
            // The scan above has turned this line down already: not again.
            return nginx::parse_json_unscanned(trimmed, &self.fields, self.readme_fields);
        }
        nginx::parse_combined(trimmed)
    }
}

/// Seconds as nginx and Caddy print them (`0.123`; nginx prints `-` for none and a
/// comma/colon-separated list when it tried several upstreams: the last one counts).
pub fn seconds_to_ns(text: &str) -> Option<u64> {
    plain_seconds(text.as_bytes()).or_else(|| seconds_to_ns_general(text))
}

/// What nginx and Caddy print all day (`0.123`, `1795280000.123`: digits, then a dot and
/// digits or nothing) as nanoseconds, in one pass; `None` for anything else (lists, `-`,
/// spaces, exponents, more than 18 digits of seconds), which [`seconds_to_ns_general`] reads.
/// Digits after the ninth of the fraction are cut, as there.
fn plain_seconds(b: &[u8]) -> Option<u64> {
    // nginx's times all have three decimals (`$msec`, `$request_time`, the upstream's):
    // their digits read without a loop over the fraction.
    if let [int @ .., b'.', f0, f1, f2] = b {
        let [d0, d1, d2] = [*f0, *f1, *f2].map(|c| c.wrapping_sub(b'0'));
        if d0 <= 9 && d1 <= 9 && d2 <= 9 {
            let ms = u64::from(d0) * 100 + u64::from(d1) * 10 + u64::from(d2);
            return plain_integer(int)?
                .checked_mul(1_000_000_000)?
                .checked_add(ms * 1_000_000);
        }
    }
    /// What each of the fraction's first nine digits is worth in nanoseconds.
    const NANOS: [u64; 9] = [
        100_000_000,
        10_000_000,
        1_000_000,
        100_000,
        10_000,
        1_000,
        100,
        10,
        1,
    ];
    // One pass, no division: the seconds wrap past 18 digits, and are then refused.
    let mut secs = 0u64;
    let mut int_len = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        secs = secs.wrapping_mul(10).wrapping_add(u64::from(d));
        int_len += 1;
    }
    if int_len == 0 || int_len > 18 {
        return None;
    }
    let mut nanos = 0u64;
    if let Some((&dot, fraction)) = b[int_len..].split_first() {
        if dot != b'.' {
            return None;
        }
        for (i, &c) in fraction.iter().enumerate() {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            // Digits after the ninth are checked, and cut.
            if let Some(worth) = NANOS.get(i) {
                nanos += u64::from(d) * worth;
            }
        }
    }
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// The value of 1 to 18 ASCII digits, eight at a time where eight are there; `None` for
/// anything else (no digits, more than 18, any other byte).
fn plain_integer(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 18 {
        return None;
    }
    let mut value = 0u64;
    let mut rest = b;
    while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        value = value * 100_000_000 + eight_digits(u64::from_le_bytes(*eight))?;
        rest = tail;
    }
    for &c in rest {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        value = value * 10 + u64::from(d);
    }
    Some(value)
}

/// Eight ASCII digits read as a little-endian word (the first digit its lowest byte), as
/// their value; `None` if any byte is not a digit. The check and the three multiplications
/// are the standard library's float parser's (`core::num::dec2flt`).
fn eight_digits(word: u64) -> Option<u64> {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    // A byte below `0` borrows into its high bit, one above `9` carries into it.
    let digits = (word.wrapping_add(0x4646_4646_4646_4646) | word.wrapping_sub(ZEROS))
        & 0x8080_8080_8080_8080
        == 0;
    if !digits {
        return None;
    }
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064; // 100 + (1,000,000 << 32)
    const MUL2: u64 = 0x0000_2710_0000_0001; // 1 + (10,000 << 32)
    let v = word - ZEROS;
    // Pairs of digits: each byte pair's low byte now holds its two digits' value.
    let v = v * 10 + (v >> 8);
    let high = (v & MASK).wrapping_mul(MUL1);
    let low = ((v >> 16) & MASK).wrapping_mul(MUL2);
    Some(u64::from((high.wrapping_add(low) >> 32) as u32))
}

/// [`seconds_to_ns`] for any text.
fn seconds_to_ns_general(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let start = bytes
        .iter()
        .rposition(|&c| c == b',' || c == b':')
        .map_or(0, |i| i + 1);
    let last = text[start..].trim();
    if last.is_empty() || last == "-" {
        return None;
    }
    // Exact decimal arithmetic in one pass: epoch seconds do not fit an f64 to the nanosecond.
    let mut secs: u64 = 0;
    let mut nanos: u64 = 0;
    let mut frac_digits = 0u32;
    let mut seen_dot = false;
    let mut digits = 0usize;
    for &c in last.as_bytes() {
        match c {
            b'0'..=b'9' => {
                digits += 1;
                let d = u64::from(c - b'0');
                if !seen_dot {
                    secs = secs.checked_mul(10)?.checked_add(d)?;
                } else if frac_digits < 9 {
                    nanos = nanos * 10 + d;
                    frac_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            b'e' | b'E' => {
                // Exponent notation (JSON numbers of small durations): f64 is exact enough.
                let secs: f64 = last.parse().ok()?;
                return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1e9).round() as u64);
            }
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    nanos *= 10u64.pow(9 - frac_digits);
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// A JSON string value, borrowed from the line unless it had escapes to undo. (serde borrows
/// a `Cow<str>` only where it is the field's own type: inside an `Option` it would make a
/// `String` of every value, 13 allocations an nginx line.)
#[derive(serde::Deserialize)]
struct Field<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// `str::trim`, without decoding the ends when they are visible ASCII (nearly every value):
/// then there is nothing to trim.
fn trim(v: &str) -> &str {
    match v.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => v,
        [only] if only.is_ascii_graphic() => v,
        _ => v.trim(),
    }
}

/// `Some` for a value that is there (not empty, not `-`).
fn present(v: &str) -> Option<Text> {
    present_str(v).map(Text::from)
}

/// The value itself when it is there (not empty, not `-`), trimmed.
fn present_str(v: &str) -> Option<&str> {
    let v = trim(v);
    (!v.is_empty() && v != "-").then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reading of plain seconds gives what the general one gives, on every
    /// text of digits, dots, separators, spaces, signs and exponents tried.
    #[test]
    fn plain_seconds_agree_with_the_general_reading() {
        let alphabet = b"0123456789012345678901234567890123456789..,: -eE+";
        let mut rng = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| (rng() % n as u64) as usize;
        let mut plain = 0;
        for _ in 0..200_000 {
            let len = next(26);
            let text: String = (0..len)
                .map(|_| char::from(alphabet[next(alphabet.len())]))
                .collect();
            let fast = plain_seconds(text.as_bytes());
            if fast.is_some() {
                plain += 1;
                assert_eq!(fast, seconds_to_ns_general(&text), "{text:?}");
            }
            assert_eq!(
                seconds_to_ns(&text),
                seconds_to_ns_general(&text),
                "{text:?}"
            );
        }
        for text in [
            "0.000",
            "5.",
            "18446744073.709551615",
            "999999999999999999.9",
            "1.0000000009",
        ] {
            assert_eq!(
                plain_seconds(text.as_bytes()),
                seconds_to_ns_general(text),
                "{text}"
            );
        }
        assert!(plain > 1_000, "{plain} plain texts");
    }

    /// Digits read eight at a time give what a digit at a time gives, at every length and
    /// with a byte that is not a digit anywhere in them.
    #[test]
    fn integers_read_eight_digits_at_a_time_as_one_at_a_time() {
        let by_digits = |b: &[u8]| {
            (1..=18).contains(&b.len()).then_some(())?;
            b.iter().try_fold(0u64, |v, &c| {
                c.is_ascii_digit().then(|| v * 10 + u64::from(c - b'0'))
            })
        };
        let mut rng = crate::test_rng::xorshift(0x05EC_04D5);
        let mut next = |n: usize| (rng() % n as u64) as usize;
        for _ in 0..100_000 {
            let mut b: Vec<u8> = (0..next(21)).map(|_| b'0' + next(10) as u8).collect();
            if next(3) == 0 && !b.is_empty() {
                let at = next(b.len());
                b[at] = [b'/', b':', b'.', b' ', 0x80, 0xff, b'0' - 16, b'9' + 16][next(8)];
            }
            assert_eq!(plain_integer(&b), by_digits(&b), "{b:?}");
        }
        assert_eq!(
            plain_integer(b"999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(plain_integer(b"1795280000"), Some(1_795_280_000));
        assert_eq!(
            seconds_to_ns("1795280000.123"),
            Some(1_795_280_000_123_000_000)
        );
        assert_eq!(seconds_to_ns("0.001"), Some(1_000_000));
        // No digit before the dot: the general reading's, not the plain one's.
        assert_eq!(plain_seconds(b".001"), None);
        assert_eq!(seconds_to_ns(".001"), Some(1_000_000));
        for text in ["18446744073.709", "18446744072.709", "1.2.345", "-1.000"] {
            assert_eq!(
                plain_seconds(text.as_bytes()),
                seconds_to_ns_general(text),
                "{text}"
            );
        }
    }

    #[test]
    fn trimming_is_str_trim() {
        for v in [
            "",
            " ",
            "a",
            " a",
            "a ",
            "ab",
            "a b",
            "\u{2003}a",
            "a\u{85}",
            "é",
            "\ta\n",
            "-",
            "é ",
        ] {
            assert_eq!(trim(v), v.trim(), "{v:?}");
        }
    }

    #[test]
    fn nginx_time_values() {
        assert_eq!(seconds_to_ns("0.123"), Some(123_000_000));
        assert_eq!(seconds_to_ns("-"), None);
        assert_eq!(seconds_to_ns(""), None);
        assert_eq!(seconds_to_ns("0.001, 0.004"), Some(4_000_000));
        assert_eq!(seconds_to_ns("0.002 : 0.003"), Some(3_000_000));
        assert_eq!(seconds_to_ns("abc"), None);
        assert_eq!(seconds_to_ns("-1"), None);
        assert_eq!(
            seconds_to_ns("1795280000.123"),
            Some(1_795_280_000_123_000_000)
        );
        assert_eq!(seconds_to_ns("12"), Some(12_000_000_000));
        assert_eq!(seconds_to_ns(".5"), Some(500_000_000));
        assert_eq!(seconds_to_ns("1.0000000019"), Some(1_000_000_001));
        assert_eq!(seconds_to_ns("2.1e-5"), Some(21_000));
        assert_eq!(seconds_to_ns("-1e3"), None);
        assert_eq!(seconds_to_ns("1.2.3"), None);
    }
}
