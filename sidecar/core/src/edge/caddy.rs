//! Caddy's JSON access log (`log` directive, `http.log.access` logger).
//!
//! Caddy 2.6 has no request-id field of its own, and it logs the request headers as they
//! arrived (before `request_header` changes them). edgewatch's documented Caddyfile sets the
//! same `{http.request.uuid}` on the proxied request (`request_header X-Request-ID ...`) and on
//! the response (`header X-Request-ID ...`), which the access log does show in `resp_headers`.
//! WebSocket requests are logged with status 0 and size 0 when the tunnel closes.
use serde_json::Value;

use super::{seconds_to_ns, EdgeFormat, EdgeRecord, LineError};
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
}
