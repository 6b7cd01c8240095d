//! A timeline as text (aligned, coloured on a terminal), JSON, or one self-contained HTML page
//! (inline CSS, no script, no network): a swimlane of client, edge, upstream and host over
//! time, each event opening to its details. Pure: a timeline in, a string out.
use std::fmt::Write as _;

use super::{Lane, Timeline};
use crate::time::rfc3339;

fn time(ts: i64) -> String {
    rfc3339(u64::try_from(ts).unwrap_or(0))
}

/// Text for a terminal; `colour` adds ANSI colours (notable events, incidents).
pub fn text(t: &Timeline, colour: bool) -> String {
    let (red, yellow, bold, reset) = if colour {
        ("\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{bold}timeline {} .. {}{reset}",
        time(t.since_ns),
        time(t.until_ns)
    );
    let _ = writeln!(s, "{bold}what broke:{reset} {}", t.summary.headline);
    for i in &t.summary.incidents {
        let sev = i["severity"].as_str().unwrap_or("");
        let c = if sev == "critical" { red } else { yellow };
        let on = i["node"]
            .as_str()
            .map_or(String::new(), |n| format!(" on {n}"));
        let _ = writeln!(
            s,
            "  {c}{} {}{reset}{on} at {}: {}",
            sev,
            i["rule"].as_str().unwrap_or(""),
            time(i["at_ns"].as_i64().unwrap_or(0)),
            i["summary"].as_str().unwrap_or("")
        );
    }
    if let Some(cause) = &t.summary.likely_cause {
        let _ = writeln!(s, "{bold}likely cause, first move:{reset} {cause}");
    }
    let counts: Vec<String> = t
        .summary
        .counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "events: {}",
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts.join(", ")
        }
    );
    let _ = writeln!(s);
    // A fleet timeline names each event's node in a column of its own.
    let fleet = t.nodes.len() > 1;
    let width = t.nodes.iter().map(String::len).max().unwrap_or(0).max(4);
    let node_col = |n: &str| {
        if fleet {
            format!("{n:<width$}  ")
        } else {
            String::new()
        }
    };
    if fleet {
        let _ = writeln!(s, "nodes: {}", t.nodes.join(", "));
    }
    let _ = writeln!(
        s,
        "{bold}{}{:<24}  {:<8}  {:<14}  WHAT{reset}",
        node_col("NODE"),
        "TIME",
        "LANE",
        "REQUEST"
    );
    for e in &t.events {
        let c = if !e.notable {
            ""
        } else if e.kind == "alert" || e.kind == "refused" {
            red
        } else {
            yellow
        };
        let rid: String = e.request_id.chars().take(14).collect();
        let _ = writeln!(
            s,
            "{}{:<24}  {:<8}  {:<14}  {c}{}{reset}",
            node_col(&e.node),
            time(e.ts),
            e.lane.as_str(),
            if rid.is_empty() { "-".to_owned() } else { rid },
            e.text
        );
    }
    if !t.groups.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "{bold}by request and connection{reset}");
        for g in &t.groups {
            let joined = g
                .joined
                .as_ref()
                .map(|j| {
                    format!(
                        " (joined {}: edge {} / wire {})",
                        j["matched"].as_str().unwrap_or(""),
                        j["edge_status"]
                            .as_u64()
                            .map_or("-".to_owned(), |v| v.to_string()),
                        j["wire_status"]
                            .as_u64()
                            .map_or("-".to_owned(), |v| v.to_string())
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {} {}: {} event(s){joined}",
                g.kind,
                g.key,
                g.events.len()
            );
        }
    }
    s
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 4px; }
.range { color: #5b6475; margin-bottom: 16px; }
.summary { background: #fff; border: 1px solid #d7dbe3; border-radius: 6px; padding: 12px 16px; margin-bottom: 20px; }
.summary .headline { font-weight: 600; font-size: 16px; }
.incident { margin: 6px 0 0; }
.sev-critical { color: #b3261e; font-weight: 600; }
.sev-warning { color: #9a6700; font-weight: 600; }
.cause { margin-top: 8px; }
.lanes { display: grid; grid-template-columns: 190px repeat(4, minmax(0, 1fr)); border: 1px solid #d7dbe3; border-radius: 6px; background: #fff; }
.lanes > div { padding: 4px 8px; border-bottom: 1px solid #eef0f4; min-height: 20px; }
.head { font-weight: 600; background: #eef1f6; position: sticky; top: 0; }
.time { color: #5b6475; font-variant-numeric: tabular-nums; white-space: nowrap; }
.event { border-left: 3px solid #8a94a6; padding-left: 6px; }
.event.notable { border-left-color: #d29922; }
.event.alert.notable, .event.refused { border-left-color: #b3261e; }
.event summary { cursor: pointer; }
.event pre { white-space: pre-wrap; word-break: break-all; font-size: 12px; background: #f5f7fa; padding: 6px; }
.rid { color: #5b6475; font-size: 12px; }
"#;

/// One self-contained page.
pub fn html(t: &Timeline) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>edgewatch timeline</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        s,
        "<h1>edgewatch timeline</h1><div class=\"range\">{} .. {}</div>",
        escape(&time(t.since_ns)),
        escape(&time(t.until_ns))
    );
    let _ = write!(
        s,
        "<section class=\"summary\" id=\"summary\"><div class=\"headline\">{}</div>",
        escape(&t.summary.headline)
    );
    for i in &t.summary.incidents {
        let sev = i["severity"].as_str().unwrap_or("");
        let _ = write!(
            s,
            "<div class=\"incident\"><span class=\"sev-{}\">{} {}</span> at {}: {}</div>",
            escape(sev),
            escape(sev),
            escape(i["rule"].as_str().unwrap_or("")),
            escape(&time(i["at_ns"].as_i64().unwrap_or(0))),
            escape(i["summary"].as_str().unwrap_or(""))
        );
    }
    if let Some(cause) = &t.summary.likely_cause {
        let _ = write!(
            s,
            "<div class=\"cause\"><b>Likely cause, first move:</b> {}</div>",
            escape(cause)
        );
    }
    let _ = write!(s, "</section>");
    let _ = write!(
        s,
        "<div class=\"lanes\" id=\"lanes\"><div class=\"head\">time</div><div class=\"head\">client</div><div class=\"head\">edge</div><div class=\"head\">upstream</div><div class=\"head\">host</div>"
    );
    for e in &t.events {
        let _ = write!(s, "<div class=\"time\">{}</div>", escape(&time(e.ts)));
        for lane in [Lane::Client, Lane::Edge, Lane::Upstream, Lane::Host] {
            if lane != e.lane {
                let _ = write!(s, "<div></div>");
                continue;
            }
            let detail = serde_json::to_string_pretty(&e.detail).unwrap_or_default();
            let _ = write!(
                s,
                "<div class=\"event {} lane-{}{}\" data-kind=\"{}\"><details><summary>{}</summary>{}<pre>{}</pre></details></div>",
                e.kind,
                lane.as_str(),
                if e.notable { " notable" } else { "" },
                e.kind,
                escape(&e.text),
                if e.request_id.is_empty() {
                    String::new()
                } else {
                    format!("<div class=\"rid\">request {}</div>", escape(&e.request_id))
                },
                escape(&detail)
            );
        }
    }
    let _ = writeln!(s, "</div></body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_shows() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
