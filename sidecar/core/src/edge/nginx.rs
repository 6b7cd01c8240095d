//! nginx access-log lines: JSON (`log_format edgewatch escape=json ...`, field names
//! configurable) and the combined format with edgewatch's fields appended.
//!
//! The JSON layout edgewatch documents (README) is:
//! ```text
//! log_format edgewatch escape=json '{"msec":"$msec","request_id":"$request_id",'
//!   '"remote_addr":"$remote_addr","host":"$host","request_method":"$request_method",'
//!   '"request_uri":"$request_uri","status":"$status","request_time":"$request_time",'
//!   '"upstream_addr":"$upstream_addr","upstream_connect_time":"$upstream_connect_time",'
//!   '"upstream_header_time":"$upstream_header_time",'
//!   '"upstream_response_time":"$upstream_response_time","body_bytes_sent":"$body_bytes_sent",'
//!   '"http_upgrade":"$http_upgrade"}';
//! ```
//! and the combined one:
//! ```text
//! log_format edgewatch_combined '$remote_addr - $remote_user [$time_local] "$request" '
//!   '$status $body_bytes_sent "$http_referer" "$http_user_agent" $msec $request_id '
//!   '$request_time $upstream_addr $upstream_connect_time $upstream_header_time '
//!   '$upstream_response_time';
//! ```
use serde::Deserialize;
use serde_json::Value;

use super::{present, present_str, seconds_to_ns, EdgeFormat, EdgeRecord, Field, LineError};
use crate::hop::{redact::redact_target_text, RequestId, Text};

/// Which JSON keys hold which value (for layouts other than edgewatch's).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JsonFields {
    /// Seconds since the epoch with milliseconds (`$msec`), the request's end.
    pub time: String,
    pub request_id: String,
    pub client: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: String,
    pub request_time: String,
    pub upstream_addr: String,
    pub upstream_connect_time: String,
    pub upstream_header_time: String,
    pub upstream_response_time: String,
    pub bytes_sent: String,
    /// `$http_upgrade`: the Upgrade header the client sent.
    pub upgrade: String,
}

impl Default for JsonFields {
    fn default() -> Self {
        Self {
            time: "msec".into(),
            request_id: "request_id".into(),
            client: "remote_addr".into(),
            host: "host".into(),
            method: "request_method".into(),
            path: "request_uri".into(),
            status: "status".into(),
            request_time: "request_time".into(),
            upstream_addr: "upstream_addr".into(),
            upstream_connect_time: "upstream_connect_time".into(),
            upstream_header_time: "upstream_header_time".into(),
            upstream_response_time: "upstream_response_time".into(),
            bytes_sent: "body_bytes_sent".into(),
            upgrade: "http_upgrade".into(),
        }
    }
}

impl JsonFields {
    /// Whether these are the README's names (checked per line, so without allocating).
    pub fn is_default(&self) -> bool {
        self.time == "msec"
            && self.request_id == "request_id"
            && self.client == "remote_addr"
            && self.host == "host"
            && self.method == "request_method"
            && self.path == "request_uri"
            && self.status == "status"
            && self.request_time == "request_time"
            && self.upstream_addr == "upstream_addr"
            && self.upstream_connect_time == "upstream_connect_time"
            && self.upstream_header_time == "upstream_header_time"
            && self.upstream_response_time == "upstream_response_time"
            && self.bytes_sent == "body_bytes_sent"
            && self.upgrade == "http_upgrade"
    }
}

/// A JSON value as text (nginx writes every value as a string; other tools write numbers).
fn text(v: &Value) -> Option<Text> {
    match v {
        Value::String(s) => present(s),
        Value::Number(n) => Some(Text::from(n.to_string())),
        _ => None,
    }
}

/// The README's layout, deserialised straight into borrowed strings (no intermediate JSON
/// tree): the fast path when the field names are the defaults.
#[derive(Deserialize)]
struct DefaultLine<'a> {
    #[serde(borrow)]
    msec: Option<Field<'a>>,
    #[serde(borrow)]
    request_id: Option<Field<'a>>,
    #[serde(borrow)]
    remote_addr: Option<Field<'a>>,
    #[serde(borrow)]
    host: Option<Field<'a>>,
    #[serde(borrow)]
    request_method: Option<Field<'a>>,
    #[serde(borrow)]
    request_uri: Option<Field<'a>>,
    #[serde(borrow)]
    status: Option<Field<'a>>,
    #[serde(borrow)]
    request_time: Option<Field<'a>>,
    #[serde(borrow)]
    upstream_addr: Option<Field<'a>>,
    #[serde(borrow)]
    upstream_connect_time: Option<Field<'a>>,
    #[serde(borrow)]
    upstream_header_time: Option<Field<'a>>,
    #[serde(borrow)]
    upstream_response_time: Option<Field<'a>>,
    #[serde(borrow)]
    body_bytes_sent: Option<Field<'a>>,
    #[serde(borrow)]
    http_upgrade: Option<Field<'a>>,
}

/// The README layout's keys, in the order its `log_format` writes them.
#[cfg(test)]
const README_KEYS: [&str; 14] = [
    "msec",
    "request_id",
    "remote_addr",
    "host",
    "request_method",
    "request_uri",
    "status",
    "request_time",
    "upstream_addr",
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_response_time",
    "body_bytes_sent",
    "http_upgrade",
];

/// The values of a line exactly as the README's `log_format` writes it (its keys in its
/// order, every value a string with nothing escaped in it), or `None` for anything else,
/// which serde_json then reads (escapes, other orders, missing or extra keys, numbers,
/// damage). What this accepts is valid JSON that serde_json reads to the same values (a
/// test holds the two to that); it only spares the general decoder's per-key and per-byte
/// work on the lines nginx writes all day: about half a line's instructions.
///
/// Not inlined: inlined into its one caller (`scan_default`), the same code counted 71 more
/// instructions a logged request (15,004 against 14,933, `cargo xtask bench-instructions`).
#[inline(never)]
fn scan_readme_layout(line: &str) -> Option<[&str; 14]> {
    let mut rest = line.as_bytes();
    let mut values = [""; 14];
    // Unrolled, so each key's length is known where it is compared: a few word compares in
    // place of a call to `memcmp` (~370 instructions a line in fourteen calls).
    macro_rules! value {
        ($($i:literal)*) => {$({
            const OPENING: &str = README_OPENINGS[$i];
            rest = rest.strip_prefix(OPENING.as_bytes())?;
            let end = plain_value_end(rest)?;
            let (value, after) = rest.split_at_checked(end)?;
            // SAFETY: cut from `line` (a `str`) just after and just before an ASCII quote.
            values[$i] = unsafe { std::str::from_utf8_unchecked(value) };
            rest = after.get(1..)?;
        })*};
    }
    value!(0 1 2 3 4 5 6 7 8 9 10 11 12 13);
    let rest = rest.strip_prefix(b"}")?;
    // serde_json allows whitespace after the value, and nothing else.
    rest.iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .then_some(values)
}

/// What precedes each value of the README layout: the key, quoted, after `{` or `,`.
const README_OPENINGS: [&str; 14] = [
    "{\"msec\":\"",
    ",\"request_id\":\"",
    ",\"remote_addr\":\"",
    ",\"host\":\"",
    ",\"request_method\":\"",
    ",\"request_uri\":\"",
    ",\"status\":\"",
    ",\"request_time\":\"",
    ",\"upstream_addr\":\"",
    ",\"upstream_connect_time\":\"",
    ",\"upstream_header_time\":\"",
    ",\"upstream_response_time\":\"",
    ",\"body_bytes_sent\":\"",
    ",\"http_upgrade\":\"",
];

/// Where a JSON string value that starts `b` ends (its closing quote), if nothing in it
/// needs serde_json: no backslash (an escape to undo) and no raw control character (not
/// JSON). Eight bytes at a time: the first byte of a word that is a quote, a backslash or
/// below 0x20 is its lowest flagged byte (the flags above a true one can be false, not
/// those below it).
fn plain_value_end(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let flagged = zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if flagged != 0 {
            let first = at + (flagged.trailing_zeros() / 8) as usize;
            return (b[first] == b'"').then_some(first);
        }
        at += 8;
    }
    for (i, &c) in words.remainder().iter().enumerate() {
        match c {
            b'"' => return Some(at + i),
            b'\\' | 0..=0x1f => return None,
            _ => {}
        }
    }
    None
}

/// The README layout's values (each `None` when the line had no such key).
struct ReadmeValues<'a>([Option<&'a str>; 14]);

impl<'a> ReadmeValues<'a> {
    fn of_serde(l: &'a DefaultLine<'_>) -> Self {
        let f = |v: &'a Option<Field<'_>>| v.as_ref().map(|f| &*f.0);
        Self([
            f(&l.msec),
            f(&l.request_id),
            f(&l.remote_addr),
            f(&l.host),
            f(&l.request_method),
            f(&l.request_uri),
            f(&l.status),
            f(&l.request_time),
            f(&l.upstream_addr),
            f(&l.upstream_connect_time),
            f(&l.upstream_header_time),
            f(&l.upstream_response_time),
            f(&l.body_bytes_sent),
            f(&l.http_upgrade),
        ])
    }

    fn record(&self) -> Result<EdgeRecord, LineError> {
        let [msec, request_id, remote_addr, host, request_method, request_uri, status, request_time, upstream_addr, upstream_connect_time, upstream_header_time, upstream_response_time, body_bytes_sent, http_upgrade] =
            self.0;
        let opt = |v: Option<&str>| v.and_then(present);
        let secs = |v: Option<&str>| v.and_then(seconds_to_ns);
        let time = msec.ok_or(LineError::Missing("time"))?;
        let end_ts_ns = seconds_to_ns(time).ok_or_else(|| LineError::Bad {
            field: "time",
            value: time.to_owned(),
        })?;
        let status_text = status.ok_or(LineError::Missing("status"))?;
        let status = super::trim(status_text)
            .parse()
            .map_err(|_| LineError::Bad {
                field: "status",
                value: status_text.to_owned(),
            })?;
        let upstream = opt(upstream_addr);
        Ok(EdgeRecord {
            format: EdgeFormat::NginxJson,
            end_ts_ns,
            request_id: request_id.and_then(present_str).map(RequestId::new),
            client: opt(remote_addr),
            host: opt(host),
            method: opt(request_method),
            path: request_uri
                .map(super::trim)
                .filter(|p| !p.is_empty() && *p != "-")
                .map(redact_target_text),
            status,
            request_time_ns: secs(request_time),
            // Logged, but empty or `-`: no upstream.
            no_upstream: upstream.is_none() && upstream_addr.is_some(),
            upstream_addr: upstream,
            upstream_connect_ns: secs(upstream_connect_time),
            upstream_header_ns: secs(upstream_header_time),
            upstream_response_ns: secs(upstream_response_time),
            bytes_sent: body_bytes_sent.and_then(|b| b.parse().ok()),
            upgrade: opt(http_upgrade),
        })
    }
}

/// A line in exactly the README's layout (see [`scan_readme_layout`]) with usable values, as
/// a record; `None` for any other line.
pub(super) fn scan_default(line: &str) -> Option<EdgeRecord> {
    ReadmeValues(scan_readme_layout(line)?.map(Some))
        .record()
        .ok()
}

/// A line with the README's names, by serde_json alone.
fn parse_default_serde(line: &str) -> Result<EdgeRecord, LineError> {
    let l: DefaultLine<'_> =
        serde_json::from_str(line).map_err(|e| LineError::Json(e.to_string()))?;
    ReadmeValues::of_serde(&l).record()
}

/// Parses one nginx JSON access-log line.
pub fn parse_json(line: &str, fields: &JsonFields) -> Result<EdgeRecord, LineError> {
    if fields.is_default() {
        if let Some(rec) = scan_default(line) {
            return Ok(rec);
        }
    }
    parse_json_unscanned(line, fields, fields.is_default())
}

/// [`parse_json`] for a line the README layout's scan has already turned down (or for names
/// that are not the README's): a line with more keys, keys in another order or numbers
/// instead of strings is read by serde_json, without scanning it a second time.
/// `readme_fields`: `fields.is_default()`, worked out by the caller once.
pub(super) fn parse_json_unscanned(
    line: &str,
    fields: &JsonFields,
    readme_fields: bool,
) -> Result<EdgeRecord, LineError> {
    if readme_fields {
        // Other JSON shapes (numbers instead of strings) fall back to the general path.
        if let Ok(rec) = parse_default_serde(line) {
            return Ok(rec);
        }
    }
    let v: Value = serde_json::from_str(line).map_err(|e| LineError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or(LineError::Layout("not a JSON object"))?;
    let get = |key: &str| obj.get(key).and_then(text);
    let upstream = obj.get(&fields.upstream_addr);
    let time = get(&fields.time).ok_or(LineError::Missing("time"))?;
    let end_ts_ns = seconds_to_ns(&time).ok_or_else(|| LineError::Bad {
        field: "time",
        value: time.to_string(),
    })?;
    let status_text = get(&fields.status).ok_or(LineError::Missing("status"))?;
    let status = status_text.parse().map_err(|_| LineError::Bad {
        field: "status",
        value: status_text.to_string(),
    })?;
    Ok(EdgeRecord {
        format: EdgeFormat::NginxJson,
        end_ts_ns,
        request_id: get(&fields.request_id).map(|r| RequestId::new(&r)),
        client: get(&fields.client),
        host: get(&fields.host),
        method: get(&fields.method),
        path: get(&fields.path).map(|p| redact_target_text(&p)),
        status,
        request_time_ns: get(&fields.request_time).and_then(|t| seconds_to_ns(&t)),
        upstream_addr: upstream.and_then(text),
        no_upstream: upstream
            .and_then(Value::as_str)
            .is_some_and(|u| present_str(u).is_none()),
        upstream_connect_ns: get(&fields.upstream_connect_time).and_then(|t| seconds_to_ns(&t)),
        upstream_header_ns: get(&fields.upstream_header_time).and_then(|t| seconds_to_ns(&t)),
        upstream_response_ns: get(&fields.upstream_response_time).and_then(|t| seconds_to_ns(&t)),
        bytes_sent: get(&fields.bytes_sent).and_then(|b| b.parse().ok()),
        upgrade: get(&fields.upgrade),
    })
}

/// Splits a combined-format line into fields: bare words, `"quoted strings"` (with `\"`
/// escapes) and `[bracketed times]`.
fn tokens(line: &str) -> Result<Vec<String>, LineError> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut tok = String::new();
        match c {
            '"' => {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                tok.push(n);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => tok.push(c),
                    }
                }
                if !closed {
                    return Err(LineError::Layout("unterminated quoted field"));
                }
            }
            '[' => {
                chars.next();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    tok.push(c);
                }
                if !closed {
                    return Err(LineError::Layout("unterminated [time] field"));
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    tok.push(c);
                    chars.next();
                }
            }
        }
        out.push(tok);
    }
    Ok(out)
}

/// Parses one line of the `edgewatch_combined` layout.
pub fn parse_combined(line: &str) -> Result<EdgeRecord, LineError> {
    let t = tokens(line)?;
    // remote_addr - remote_user [time] "request" status bytes "referer" "ua" msec request_id
    // request_time upstream_addr connect header response
    if t.len() < 15 {
        return Err(LineError::Layout(
            "fewer fields than the edgewatch_combined format has",
        ));
    }
    let mut request = t[4].splitn(3, ' ');
    let method = request.next().and_then(present);
    let path = request.next().and_then(present_str).map(redact_target_text);
    let status = t[5].parse().map_err(|_| LineError::Bad {
        field: "status",
        value: t[5].clone(),
    })?;
    let end_ts_ns = seconds_to_ns(&t[9]).ok_or_else(|| LineError::Bad {
        field: "msec",
        value: t[9].clone(),
    })?;
    Ok(EdgeRecord {
        format: EdgeFormat::NginxCombined,
        end_ts_ns,
        request_id: present_str(&t[10]).map(RequestId::new),
        client: present(&t[0]),
        host: None,
        method,
        path,
        status,
        request_time_ns: seconds_to_ns(&t[11]),
        upstream_addr: present(&t[12]),
        no_upstream: present_str(&t[12]).is_none(),
        upstream_connect_ns: seconds_to_ns(&t[13]),
        upstream_header_ns: seconds_to_ns(&t[14]),
        upstream_response_ns: t.get(15).and_then(|v| seconds_to_ns(v)),
        upgrade: None,
        bytes_sent: t[6].parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // As nginx 1.22 writes the documented log_format (escape=json).
    const JSON_LINE: &str = r#"{"msec":"1795280000.123","request_id":"a183594643e1bf34965a7337028330bc","remote_addr":"203.0.113.9","host":"gw.example","request_method":"GET","request_uri":"/ws?token=abc","status":"101","request_time":"61.004","upstream_addr":"127.0.0.1:18789","upstream_connect_time":"0.000","upstream_header_time":"0.002","upstream_response_time":"61.003","body_bytes_sent":"1234"}"#;

    /// The scan's layout is the README's `log_format edgewatch`: a change to one alone would
    /// send the README's users' lines down serde_json's path, with only the cost to show it.
    #[test]
    fn the_readme_s_log_format_is_the_layout_the_scan_takes() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .expect("README.md");
        let block = readme
            .split_once("<!-- snippet:nginx-log-format -->")
            .expect("README.md's nginx-log-format snippet")
            .1;
        let body = block.split("```").nth(1).expect("the snippet's code block");
        // nginx concatenates the directive's quoted strings.
        let template: String = body.split('\'').skip(1).step_by(2).collect();
        let (mut vars, mut line) = (Vec::new(), String::new());
        let mut rest = template.as_str();
        while let Some(at) = rest.find('$') {
            let len = rest[at + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - at - 1);
            line.push_str(&rest[..at]);
            line.push_str("1.5");
            vars.push(&rest[at + 1..at + 1 + len]);
            rest = &rest[at + 1 + len..];
        }
        line.push_str(rest);
        assert_eq!(vars, README_KEYS, "the README's variables, in its order");
        let values = scan_readme_layout(&line).unwrap_or_else(|| panic!("not scanned: {line}"));
        assert_eq!(values, ["1.5"; 14]);
    }

    #[test]
    fn json_line() {
        let r = parse_json(JSON_LINE, &JsonFields::default()).expect("line");
        assert_eq!(r.end_ts_ns, 1_795_280_000_123_000_000);
        assert_eq!(
            r.request_id.as_deref(),
            Some("a183594643e1bf34965a7337028330bc")
        );
        assert_eq!(r.status, 101);
        assert_eq!(r.path.as_deref(), Some("/ws?token=REDACTED"));
        assert_eq!(r.request_time_ns, Some(61_004_000_000));
        assert_eq!(r.upstream_header_ns, Some(2_000_000));
        assert_eq!(
            r.start_ts_ns(),
            Some(1_795_280_000_123_000_000 - 61_004_000_000)
        );
        assert_eq!(r.bytes_sent, Some(1234));
    }

    #[test]
    fn json_with_other_field_names() {
        let fields = JsonFields {
            time: "ts".into(),
            request_id: "rid".into(),
            status: "code".into(),
            ..JsonFields::default()
        };
        let r = parse_json(r#"{"ts":1795280000.5,"rid":"x1","code":502}"#, &fields)
            .expect("mapped line");
        assert_eq!((r.status, r.request_id.as_deref()), (502, Some("x1")));
        assert_eq!(r.upstream_addr, None);
    }

    #[test]
    fn a_line_that_logged_no_upstream_says_so() {
        // A `return 301` as nginx writes it with escape=json (no upstream: empty); the same
        // fields in another order (serde_json's path); `-` as the default escaping writes it.
        let served = JSON_LINE.replace("127.0.0.1:18789", "");
        let readme = served.replace('}', r#","http_upgrade":""}"#);
        assert!(
            scan_readme_layout(&readme).is_some(),
            "the README layout's own path"
        );
        let reordered = r#"{"status":"404","msec":"1795280000.5","upstream_addr":"-"}"#;
        for line in [served.as_str(), readme.as_str(), reordered] {
            let r = parse_json(line, &JsonFields::default()).expect("line");
            assert!(r.no_upstream, "{line}");
            assert_eq!(r.upstream_addr, None);
        }
        // Proxied, or not saying: not known to have no upstream.
        let unsaid = r#"{"status":"200","msec":"1795280000.5"}"#;
        for line in [JSON_LINE, unsaid] {
            assert!(
                !parse_json(line, &JsonFields::default())
                    .expect("line")
                    .no_upstream
            );
        }
        // Named fields: the upstream's key logged empty, or not there.
        let fields = JsonFields {
            upstream_addr: "up".into(),
            ..JsonFields::default()
        };
        let r = parse_json(r#"{"msec":"1.5","status":"301","up":""}"#, &fields).expect("line");
        assert!(r.no_upstream);
        let r = parse_json(r#"{"msec":"1.5","status":"301"}"#, &fields).expect("line");
        assert!(!r.no_upstream);
        // The combined layout: `-`.
        let line = r#"203.0.113.9 - - [21/Nov/2026:17:05:44 +0000] "GET / HTTP/1.1" 301 162 "-" "curl/8.5" 1795280000.250 f21815902ca10442e4c97ad52defe3bf 0.000 - - - -"#;
        assert!(parse_combined(line).expect("line").no_upstream);
    }

    #[test]
    fn bad_json_lines_are_errors() {
        let f = JsonFields::default();
        assert!(f.is_default());
        assert!(!JsonFields {
            bytes_sent: "bytes".into(),
            ..JsonFields::default()
        }
        .is_default());
        assert!(matches!(
            parse_json("not json", &f),
            Err(LineError::Json(_))
        ));
        assert!(matches!(parse_json("[1,2]", &f), Err(LineError::Layout(_))));
        assert_eq!(
            parse_json(r#"{"status":"200"}"#, &f),
            Err(LineError::Missing("time"))
        );
        assert!(matches!(
            parse_json(r#"{"msec":"1.0","status":"OK"}"#, &f),
            Err(LineError::Bad {
                field: "status",
                ..
            })
        ));
        assert!(
            parse_json(r#"{"msec":"1.0","status":"200""#, &f).is_err(),
            "partial line"
        );
    }

    #[test]
    fn combined_line() {
        let line = r#"203.0.113.9 - - [21/Nov/2026:17:05:44 +0000] "GET /health?key=s HTTP/1.1" 502 157 "-" "curl/8.5 \"x\"" 1795280000.250 f21815902ca10442e4c97ad52defe3bf 0.001 127.0.0.1:18790 - - 0.001"#;
        let r = parse_combined(line).expect("line");
        assert_eq!(r.status, 502);
        assert_eq!(r.method.as_deref(), Some("GET"));
        assert_eq!(r.path.as_deref(), Some("/health?key=REDACTED"));
        assert_eq!(
            r.request_id.as_deref(),
            Some("f21815902ca10442e4c97ad52defe3bf")
        );
        assert_eq!(r.upstream_addr.as_deref(), Some("127.0.0.1:18790"));
        assert!(!r.no_upstream);
        assert_eq!(r.upstream_connect_ns, None);
        assert_eq!(r.upstream_response_ns, Some(1_000_000));
        assert_eq!(r.end_ts_ns, 1_795_280_000_250_000_000);
    }

    #[test]
    fn bad_combined_lines_are_errors() {
        assert!(parse_combined("").is_err());
        assert!(parse_combined(r#"1.2.3.4 - - [x] "GET / HTTP/1.1"#).is_err());
        assert!(
            parse_combined("a b c d e f g h i j k l m n o").is_err(),
            "status not a number"
        );
    }

    /// The README layout's scan accepts only what serde_json reads to the same record:
    /// lines as nginx writes them, and mutations of them (escapes, control characters, keys
    /// missing, extra or out of order, numbers, nulls, trailing bytes, truncation), each read
    /// both ways.
    #[test]
    fn the_openings_are_the_keys_quoted() {
        for (i, (opening, key)) in README_OPENINGS.iter().zip(README_KEYS).enumerate() {
            let before = if i == 0 { '{' } else { ',' };
            assert_eq!(*opening, format!("{before}\"{key}\":\""));
        }
    }

    /// The word-at-a-time search finds what a byte-at-a-time one does, wherever the quote,
    /// backslash or control byte falls in or across the words, with UTF-8 around it.
    #[test]
    fn plain_value_ends_where_a_byte_search_says() {
        let by_bytes = |b: &[u8]| match b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        {
            Some(i) if b[i] == b'"' => Some(i),
            _ => None,
        };
        let pieces: [&[u8]; 10] = [
            b"a",
            b"\"",
            b"\\",
            b"\x1f",
            b"\x00",
            b" ",
            b"\x7f",
            "é".as_bytes(),
            b"!",
            b"\xa2",
        ];
        let mut rng = crate::test_rng::xorshift(0x0E7D_5CA1);
        let mut next = |n: usize| (rng() % n as u64) as usize;
        for _ in 0..100_000 {
            let mut b = Vec::new();
            for _ in 0..next(40) {
                // Mostly plain bytes, as in real values.
                let p = if next(4) == 0 {
                    pieces[next(pieces.len())]
                } else {
                    b"x"
                };
                b.extend_from_slice(p);
            }
            assert_eq!(plain_value_end(&b), by_bytes(&b), "{b:?}");
        }
    }

    #[test]
    fn the_layout_scan_agrees_with_serde_json_on_every_line() {
        let values = [
            "",
            "-",
            "GET",
            "/p?token=x&a=1",
            "1795280000.123",
            "200",
            " 101 ",
            "0.001",
            "127.0.0.1:18789, 127.0.0.1:18790",
            "websocket",
            "12",
            "é ü",
            "0123456789abcdef0123456789abcdef",
        ];
        // Values nginx writes with escapes (`escape=json`): rarer, as in real logs.
        let escaped = ["a\"b", "c\\d", "tab\there", "\u{1}", "/x?y=\"z\""];
        let mut rng = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| (rng() % n as u64) as usize;
        let (mut scanned, mut total) = (0, 0);
        let readme = super::super::LineParser::new(JsonFields::default());
        for _ in 0..20_000 {
            let mut keys: Vec<&str> = README_KEYS.to_vec();
            let mutation = next(10);
            match mutation {
                0 => {
                    let (i, j) = (next(14), next(14));
                    keys.swap(i, j);
                }
                1 => {
                    keys.remove(next(14));
                }
                // Caddy's key among nginx's: the line is then read as Caddy's.
                2 => keys.insert(next(15), ["extra", "logger"][next(2)]),
                _ => {}
            }
            let mut line = String::from("{");
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let v = match *k {
                    "msec" if next(4) > 0 => "1795280000.123",
                    "status" if next(4) > 0 => "200",
                    _ if next(40) == 0 => escaped[next(escaped.len())],
                    _ => values[next(values.len())],
                };
                line.push_str(&serde_json::to_string(k).expect("key"));
                line.push(':');
                match (mutation, next(30)) {
                    (3, 0) => line.push_str("null"),
                    (3, 1) => line.push_str("200"),
                    // A raw control character or quote: not JSON.
                    (4, 0) => line.push_str("\"a\u{7}b\""),
                    (4, 1) => line.push_str("\"a\"b\""),
                    _ => line.push_str(&serde_json::to_string(v).expect("value")),
                }
            }
            line.push('}');
            match mutation {
                5 => line.push_str([" ", "\n", " x", ",", "}"][next(5)]),
                6 => {
                    let mut at = next(line.len());
                    while !line.is_char_boundary(at) {
                        at -= 1;
                    }
                    line.truncate(at);
                }
                _ => {}
            }
            total += 1;
            let by_serde = parse_default_serde(&line);
            if let Some(v) = scan_readme_layout(&line) {
                scanned += 1;
                assert_eq!(ReadmeValues(v.map(Some)).record(), by_serde, "{line}");
            }
            // `LineParser` takes a scanned line as nginx's before it looks for Caddy's
            // `"logger"`: the same as looking first.
            let trimmed = line.trim_start();
            let looking_first = if !trimmed.starts_with('{') {
                parse_combined(trimmed)
            } else if trimmed.contains("\"logger\"") {
                super::super::caddy::parse(trimmed)
            } else {
                parse_json(trimmed, &JsonFields::default())
            };
            assert_eq!(readme.parse(&line), looking_first, "{line}");
        }
        // Most unmutated lines have no escape in them and take the scan.
        assert!(scanned > total / 10, "{scanned} of {total} lines scanned");
        assert!(
            scanned < total * 9 / 10,
            "{scanned} of {total} lines scanned"
        );
    }
}
