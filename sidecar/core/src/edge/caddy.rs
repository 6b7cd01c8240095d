//! Caddy's JSON access log (`log` directive, `http.log.access` logger).
//!
//! Caddy 2.6 has no request-id field of its own, and it logs the request headers as they
//! arrived (before `request_header` changes them). edgewatch's documented Caddyfile sets the
//! same `{http.request.uuid}` on the proxied request (`request_header X-Request-ID ...`) and on
//! the response (`header X-Request-ID ...`), which the access log does show in `resp_headers`.
//! WebSocket requests are logged with status 0 and size 0 when the tunnel closes.
use std::{borrow::Cow, fmt::Write as _};

use serde_json::Value;

use super::{seconds_to_ns, EdgeFormat, EdgeRecord, Field, LineError};
use crate::hop::{redact::redact_target_text, RequestId, Text};

fn header<'a>(headers: Option<&'a Value>, name: &str) -> Option<&'a str> {
    headers?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_array()?.first()?.as_str())
}

/// Parses one Caddy access-log line. Lines of other loggers are a `Layout` error (counted as
/// not an access log line by the caller).
pub fn parse(line: &str) -> Result<EdgeRecord, LineError> {
    // Anything the borrowed shape does not take (other types, repeated keys, damage) is read
    // into a JSON tree, which gives the same record or the error.
    serde_json::from_str::<Line<'_>>(line)
        .ok()
        .and_then(|l| l.record())
        .unwrap_or_else(|| parse_tree(line))
}

/// The parts of an access-log line edgewatch reads, borrowed from the line: the usual line
/// costs no JSON tree and no allocation. Its types are strict (a number where a number is
/// expected): a line of other types goes to [`parse_tree`].
#[derive(serde::Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    logger: Option<Field<'a>>,
    ts: Option<serde_json::Number>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
    status: Option<u64>,
    duration: Option<serde_json::Number>,
    size: Option<u64>,
    #[serde(borrow)]
    resp_headers: Option<Picked<'a>>,
}

#[derive(serde::Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    client_ip: Option<Field<'a>>,
    #[serde(borrow)]
    remote_ip: Option<Field<'a>>,
    #[serde(borrow)]
    host: Option<Field<'a>>,
    #[serde(borrow)]
    method: Option<Field<'a>>,
    #[serde(borrow)]
    uri: Option<Field<'a>>,
    #[serde(borrow)]
    headers: Option<Picked<'a>>,
}

/// The two headers edgewatch reads from a header map (`{"Name": ["value", ...]}`), by name
/// in any case; the others are skipped unread. A name given twice (in two cases) is an error,
/// so that [`parse_tree`], whose map orders names its own way, decides which one counts.
#[derive(Default)]
struct Picked<'a> {
    request_id: Option<Cow<'a, str>>,
    upgrade: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Picked<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Picked<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of header names to lists of values")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Picked<'a>, M::Error> {
                let mut picked = Picked::default();
                let (mut seen_id, mut seen_upgrade) = (false, false);
                while let Some(Field(name)) = map.next_key::<Field<'de>>()? {
                    let (slot, seen) = if name.eq_ignore_ascii_case("x-request-id") {
                        (&mut picked.request_id, &mut seen_id)
                    } else if name.eq_ignore_ascii_case("upgrade") {
                        (&mut picked.upgrade, &mut seen_upgrade)
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(seen, true) {
                        return Err(serde::de::Error::custom("a header named twice"));
                    }
                    *slot = map.next_value::<First<'de>>()?.0;
                }
                Ok(picked)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The first of a list of strings.
struct First<'a>(Option<Cow<'a, str>>);

impl<'de> serde::Deserialize<'de> for First<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = First<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<First<'de>, S::Error> {
                let first = seq.next_element::<Field<'de>>()?.map(|f| f.0);
                while seq.next_element::<Field<'de>>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// A JSON number's text, as `Value::Number`'s `to_string` writes it, without an allocation.
fn number_text(n: &serde_json::Number) -> arrayvec::ArrayString<64> {
    let mut text = arrayvec::ArrayString::new();
    // Cannot fail: an integer or the shortest text of an f64 is at most 24 characters.
    let _ = write!(text, "{n}");
    text
}

impl Line<'_> {
    /// The record, or the error; `None` for an access line without a request, which may
    /// have been `"request": null` (the tree tells the two apart).
    fn record(&self) -> Option<Result<EdgeRecord, LineError>> {
        let logger = self.logger.as_ref().map_or("", |l| &l.0);
        if !logger.starts_with("http.log.access") {
            return Some(Err(LineError::Layout("not an http.log.access line")));
        }
        let request = self.request.as_ref()?;
        Some(self.access_record(request))
    }

    fn access_record(&self, request: &Request<'_>) -> Result<EdgeRecord, LineError> {
        let ts = self.ts.as_ref().ok_or(LineError::Missing("ts"))?;
        let ts_text = number_text(ts);
        let end_ts_ns = seconds_to_ns(&ts_text).ok_or_else(|| LineError::Bad {
            field: "ts",
            value: ts_text.to_string(),
        })?;
        let status = self
            .status
            .and_then(|n| u16::try_from(n).ok())
            .ok_or(LineError::Missing("status"))?;
        let s = |f: &Option<Field<'_>>| f.as_ref().map(|f| Text::from(&*f.0));
        let headers = request.headers.as_ref();
        let resp_headers = self.resp_headers.as_ref();
        Ok(EdgeRecord {
            format: EdgeFormat::CaddyJson,
            end_ts_ns,
            request_id: resp_headers
                .and_then(|h| h.request_id.as_deref())
                .or_else(|| headers.and_then(|h| h.request_id.as_deref()))
                .map(RequestId::new),
            client: s(&request.client_ip).or_else(|| s(&request.remote_ip)),
            host: s(&request.host),
            method: s(&request.method),
            path: request.uri.as_ref().map(|u| redact_target_text(&u.0)),
            status,
            request_time_ns: self
                .duration
                .as_ref()
                .and_then(|n| seconds_to_ns(&number_text(n))),
            upstream_addr: None,
            no_upstream: false,
            upstream_connect_ns: None,
            upstream_header_ns: None,
            upstream_response_ns: None,
            bytes_sent: self.size,
            upgrade: headers.and_then(|h| h.upgrade.as_deref()).map(Text::from),
        })
    }
}

/// [`parse`] through a JSON tree: any line, at the cost of the tree.
fn parse_tree(line: &str) -> Result<EdgeRecord, LineError> {
    let v: Value = serde_json::from_str(line).map_err(|e| LineError::Json(e.to_string()))?;
    let logger = v.get("logger").and_then(Value::as_str).unwrap_or("");
    if !logger.starts_with("http.log.access") {
        return Err(LineError::Layout("not an http.log.access line"));
    }
    let ts_text = match v.get("ts") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err(LineError::Missing("ts")),
    };
    let end_ts_ns = seconds_to_ns(&ts_text).ok_or(LineError::Bad {
        field: "ts",
        value: ts_text.clone(),
    })?;
    let request = v.get("request").ok_or(LineError::Missing("request"))?;
    let s = |k: &str| request.get(k).and_then(Value::as_str).map(Text::from);
    let headers = request.get("headers");
    let resp_headers = v.get("resp_headers");
    let status = v
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or(LineError::Missing("status"))?;
    let duration_ns = match v.get("duration") {
        Some(Value::Number(n)) => seconds_to_ns(&n.to_string()),
        _ => None,
    };
    // Caddy's `ts` is when the entry was written, at the end of the request.
    Ok(EdgeRecord {
        format: EdgeFormat::CaddyJson,
        end_ts_ns,
        request_id: header(resp_headers, "x-request-id")
            .or_else(|| header(headers, "x-request-id"))
            .map(RequestId::new),
        client: s("client_ip").or_else(|| s("remote_ip")),
        host: s("host"),
        method: s("method"),
        path: request
            .get("uri")
            .and_then(Value::as_str)
            .map(redact_target_text),
        status,
        request_time_ns: duration_ns,
        upstream_addr: None,
        no_upstream: false,
        upstream_connect_ns: None,
        upstream_header_ns: None,
        upstream_response_ns: None,
        bytes_sent: v.get("size").and_then(Value::as_u64),
        upgrade: header(headers, "upgrade").map(Text::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Caddy 2.6.2 with the README's Caddyfile (status and size as it logs a WebSocket).
    const LINE: &str = r#"{"level":"info","ts":1795280000.25,"logger":"http.log.access.log0","msg":"handled request","request":{"remote_ip":"127.0.0.1","remote_port":"50334","proto":"HTTP/1.1","method":"GET","host":"127.0.0.1:28443","uri":"/?token=x","headers":{"Accept-Encoding":["identity"],"User-Agent":["Python-urllib/3.11"],"Connection":["close"]}},"user_id":"","duration":0.0021,"size":0,"status":0,"resp_headers":{"Server":["Caddy"],"X-Request-Id":["6f1d2c3b-0a4e-4f5a-9b8c-7d6e5f4a3b2c"],"Content-Length":["2"]}}"#;

    #[test]
    fn access_line() {
        let r = parse(LINE).expect("line");
        assert_eq!(r.format, EdgeFormat::CaddyJson);
        assert_eq!(
            r.request_id.as_deref(),
            Some("6f1d2c3b-0a4e-4f5a-9b8c-7d6e5f4a3b2c")
        );
        assert_eq!(r.status, 0, "WebSocket requests are logged with status 0");
        assert_eq!(r.path.as_deref(), Some("/?token=REDACTED"));
        assert_eq!(r.request_time_ns, Some(2_100_000));
        assert_eq!(r.end_ts_ns, 1_795_280_000_250_000_000);
    }

    #[test]
    fn other_lines_are_errors() {
        assert!(matches!(parse("{"), Err(LineError::Json(_))));
        assert!(matches!(
            parse(r#"{"level":"info","ts":1,"logger":"tls","msg":"x"}"#),
            Err(LineError::Layout(_))
        ));
        assert_eq!(
            parse(r#"{"ts":1,"logger":"http.log.access","status":200}"#),
            Err(LineError::Missing("request"))
        );
    }

    /// Lines' parts chosen by a xorshift generator.
    struct Gen(std::cell::Cell<u64>);

    impl Gen {
        /// The next number below `n`.
        fn below(&self, n: usize) -> usize {
            let x = crate::test_rng::step(self.0.get());
            self.0.set(x);
            (x % n as u64) as usize
        }

        fn pick(&self, options: &[&str]) -> String {
            options[self.below(options.len())].to_owned()
        }

        /// Mostly what Caddy writes, one time in eight something else.
        fn vary(&self, usual: &str, others: &[&str]) -> String {
            if self.below(8) == 0 {
                self.pick(others)
            } else {
                usual.to_owned()
            }
        }
    }

    /// A header map of up to three headers, named in any case, mostly as Caddy writes them.
    fn header_map(g: &Gen) -> String {
        let mut h = String::from("{");
        let n = g
            .pick(&["0", "1", "2", "3", "3", "3"])
            .parse::<usize>()
            .expect("n");
        for i in 0..n {
            if i > 0 {
                h.push(',');
            }
            let name = g.pick(&[
                "\"X-Request-Id\"",
                "\"x-request-id\"",
                "\"X-REQUEST-ID\"",
                "\"Upgrade\"",
                "\"upgrade\"",
                "\"Server\"",
                "\"Content-Length\"",
                "\"X-Request-\\u0049d\"",
            ]);
            let value = g.vary(
                "[\"6f1d2c3b-0a4e-4f5a-9b8c-7d6e5f4a3b2c\"]",
                &[
                    "[\"websocket\"]",
                    "[\"a\",\"b\"]",
                    "[]",
                    "\"websocket\"",
                    "[1]",
                    "[\"x\",2]",
                    "null",
                    "[\"a\\\"b\"]",
                    "{}",
                ],
            );
            h.push_str(&format!("{name}:{value}"));
        }
        h.push('}');
        h
    }

    /// An access-log line mostly as Caddy 2.6 writes it, one part in eight something else.
    fn caddy_line(g: &Gen) -> String {
        let mut fields: Vec<String> = vec!["\"level\":\"info\"".into()];
        let mut add = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                fields.push(format!("\"{key}\":{v}"));
            }
        };
        let logger = g.vary(
            "\"http.log.access.log0\"",
            &["\"http.log.access\"", "\"tls\"", "5", "null", ""],
        );
        add("logger", (!logger.is_empty()).then_some(logger));
        let ts = g.vary(
            "1795280000.25",
            &[
                "1795280000",
                "\"1795280000.5\"",
                "null",
                "",
                "-1",
                "1e300",
                "1.5e9",
            ],
        );
        add("ts", (!ts.is_empty()).then_some(ts));
        let mut request = String::from("{");
        request.push_str(&g.vary(
            "\"remote_ip\":\"127.0.0.1\",\"client_ip\":\"203.0.113.9\",",
            &[
                "\"remote_ip\":\"127.0.0.1\",",
                "\"client_ip\":5,",
                "\"client_ip\":null,\"remote_ip\":\"::1\",",
                "",
            ],
        ));
        request.push_str(&g.vary(
            "\"method\":\"GET\",\"host\":\"gw.example\",\"uri\":\"/?token=x\",",
            &[
                "\"method\":\"GET\",\"uri\":\"/ws\",\"uri\":\"/again\",",
                "\"host\":\"\",\"uri\":\"/p?a=\\\"b\\\"\",",
                "\"method\":null,",
            ],
        ));
        request.push_str(&format!("\"headers\":{}", header_map(g)));
        request.push('}');
        let request = match g.below(12) {
            0 => "null".to_owned(),
            1 => String::new(),
            2 => "\"GET /\"".to_owned(),
            _ => request,
        };
        add("request", (!request.is_empty()).then_some(request));
        add("msg", Some("\"handled request\"".into()));
        let status = g.vary(
            "200",
            &["0", "101", "70000", "-1", "\"200\"", "200.0", "null", ""],
        );
        add("status", (!status.is_empty()).then_some(status));
        let duration = g.vary("0.0021", &["1e-05", "\"0.1\"", "null", "", "3"]);
        add("duration", (!duration.is_empty()).then_some(duration));
        let size = g.vary("12", &["0", "-1", "1.5", "null", ""]);
        add("size", (!size.is_empty()).then_some(size));
        let resp = match g.below(5) {
            0 => String::new(),
            1 => "null".to_owned(),
            _ => header_map(g),
        };
        add("resp_headers", (!resp.is_empty()).then_some(resp));
        if g.below(20) == 0 {
            let again = fields[g.below(fields.len())].clone();
            fields.push(again);
        }
        let mut line = format!("{{{}}}", fields.join(","));
        match g.below(20) {
            0 => line.push_str(" x"),
            1 => line.push('\n'),
            2 => {
                let mut at = g.below(line.len());
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.truncate(at);
            }
            _ => {}
        }
        line
    }

    /// The borrowed read gives what the JSON tree gives, on lines as Caddy writes them and on
    /// lines of other types, nulls, missing and repeated keys, header names in other cases,
    /// trailing bytes and truncation.
    #[test]
    fn the_borrowed_read_agrees_with_the_tree_on_every_line() {
        let g = Gen(std::cell::Cell::new(0x9e37_79b9_7f4a_7c15u64));
        let (mut borrowed, mut total) = (0, 0);
        for _ in 0..20_000 {
            let line = caddy_line(&g);
            total += 1;
            let by_tree = parse_tree(&line);
            if let Some(r) = serde_json::from_str::<Line<'_>>(&line)
                .ok()
                .and_then(|l| l.record())
            {
                borrowed += 1;
                assert_eq!(r, by_tree, "{line}");
            }
            assert_eq!(parse(&line), by_tree, "{line}");
        }
        // Both ways are taken often: the comparison compares something.
        assert!(borrowed > total / 10, "{borrowed} of {total} read borrowed");
        assert!(
            borrowed < total * 9 / 10,
            "{borrowed} of {total} read borrowed"
        );
    }
}
