//! Upstream slowness: time to first byte over a percentile threshold.
use serde_json::{json, Value};

use super::{super::*, exchange_evidence};

impl Engine {
    pub(super) fn slowness(&mut self, x: &HttpExchange, out: &mut Vec<Alert>) {
        let r = &self.cfg.upstream_slowness;
        if !r.enabled {
            return;
        }
        let Some(ttfb) = x.ttfb_ns else {
            return;
        };
        let (window, threshold, pct, min) =
            (ns(r.window), ns(r.threshold), r.percentile, r.min_samples);
        let port = x.conn.server.port();
        let at = x.request_ts_ns;
        let this_slow = ttfb > threshold;
        // A slow exchange joins an open incident at once (counted, evidence kept).
        if this_slow {
            if let Some(inc) = self.open.get_mut(&format!("{}:{port}", rule::SLOWNESS)) {
                *inc.counts.entry("slow_exchanges").or_default() += 1;
                inc.last_match_ns = inc.last_match_ns.max(at);
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(exchange_evidence(x, None));
                }
            }
        }
        let (samples, last_eval) = self.ttfb.entry(port).or_default();
        // Only a slow sample's request id is ever shown (the evidence lists the slowest):
        // the others keep none, which spares a copy of every request's id.
        let id = if this_slow {
            x.request_id.clone()
        } else {
            None
        };
        samples.push_back((at, ttfb, id));
        let since = at.saturating_sub(window);
        while samples.front().is_some_and(|(t, ..)| *t < since) || samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
        // The percentile is computed for every exchange while the window is small, and at
        // most once a second (of record time) when it is large.
        if samples.len() < min.max(1)
            || (samples.len() > 1000 && at < last_eval.saturating_add(1_000_000_000))
        {
            return;
        }
        *last_eval = at;
        let mut values: Vec<u64> = samples.iter().map(|(_, t, _)| *t).collect();
        let rank = ((pct / 100.0) * values.len() as f64).ceil() as usize;
        let rank = rank.clamp(1, values.len()) - 1;
        let value = *values.select_nth_unstable(rank).1;
        let key = format!("{}:{port}", rule::SLOWNESS);
        if value <= threshold {
            // Back under the threshold.
            self.resolve(&key, at, out);
            return;
        }
        let mut slowest: Vec<&(u64, u64, Option<crate::hop::RequestId>)> =
            samples.iter().filter(|(_, t, _)| *t > threshold).collect();
        slowest.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
        let n = samples.len();
        let slow_ids: Vec<Value> = slowest
            .iter()
            .take(5)
            .map(|(at, t, id)| json!({ "request_id": id, "ttfb_s": secs(*t), "at_ns": at }))
            .collect();
        let slow_in_window = slowest.len() as u64;
        let opening = !self.open.contains_key(&key);
        // Opening: every slow exchange in the window, this one as evidence; an open incident
        // counted its slow exchanges as they came and only takes the new figures.
        let (counts, evidence) = if opening {
            let evidence = if this_slow {
                vec![exchange_evidence(x, None)]
            } else {
                Vec::new()
            };
            (vec![("slow_exchanges", slow_in_window)], evidence)
        } else {
            (Vec::new(), Vec::new())
        };
        self.matched(
            Match {
                key,
                rule: rule::SLOWNESS,
                severity: Severity::Warning,
                summary: format!(
                    "upstream port {port} is slow: p{pct} time to first byte {:.3} s over the last \
                     {n} exchange(s) (threshold {:.3} s)",
                    secs(value),
                    secs(threshold)
                ),
                first_move: MOVE_SLOW,
                at_ns: at,
                evidence,
                counts,
                detail: json!({
                    "port": port,
                    "percentile": pct,
                    "ttfb_s": secs(value),
                    "threshold_s": secs(threshold),
                    "samples": n,
                    "slowest": slow_ids,
                }),
            },
            out,
        );
    }
}
