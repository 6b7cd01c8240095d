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
        let w = self.ttfb.entry(port).or_insert_with(|| TtfbWindow {
            key: format!("{}:{port}", rule::SLOWNESS),
            // Room for the most it holds (one over, between push and trim): grown by doubling,
            // it copied itself up to 16,384 places; a quiet port never touches the rest.
            samples: VecDeque::with_capacity(MAX_SAMPLES + 1),
            ..TtfbWindow::default()
        });
        // A slow exchange joins an open incident at once (counted, evidence kept).
        if this_slow {
            if let Some(inc) = self.open.get_mut(&w.key) {
                *inc.counts.entry("slow_exchanges").or_default() += 1;
                inc.last_match_ns = inc.last_match_ns.max(at);
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(exchange_evidence(x, None));
                }
            }
        }
        // Only a slow sample's request id is ever shown (the evidence lists the slowest):
        // the others keep none, which spares a copy of every request's id.
        w.samples.push_back((at, ttfb));
        if this_slow {
            w.slow_ids.push_back(x.request_id.clone());
        }
        let since = at.saturating_sub(window);
        while w.samples.front().is_some_and(|(t, _)| *t < since) || w.samples.len() > MAX_SAMPLES {
            if let Some((_, t)) = w.samples.pop_front() {
                if t > threshold {
                    w.slow_ids.pop_front();
                }
            }
        }
        // The percentile is judged for every exchange while the window is small, and at most
        // once a second (of record time) when it is large.
        let n = w.samples.len();
        if n < min.max(1) || (n > 1000 && at < w.last_eval.saturating_add(1_000_000_000)) {
            return;
        }
        w.last_eval = at;
        let rank = percentile_rank(pct, n);
        // The count of slow samples says which side of the threshold the percentile is on:
        // the selection over the window (a pass over it and a Vec) is made only when the
        // rule matches, for the figure it reports.
        if !percentile_over(w.slow_ids.len(), n, rank) {
            // Back under the threshold.
            if self.open.contains_key(&w.key) {
                let key = w.key.clone();
                self.resolve(&key, at, out);
            }
            return;
        }
        let mut values: Vec<u64> = w.samples.iter().map(|(_, t)| *t).collect();
        let value = *values.select_nth_unstable(rank).1;
        let key = w.key.clone();
        let slow_ids = slowest(w, threshold, 5);
        let slow_in_window = w.slow_ids.len() as u64;
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

/// The `k` slowest samples of `w` over `threshold`, slowest first, each with its request id
/// (the slow ids are the slow samples', in the same order).
fn slowest(w: &TtfbWindow, threshold: u64, k: usize) -> Vec<Value> {
    let mut slow: Vec<(u64, u64, &Option<crate::hop::RequestId>)> = w
        .samples
        .iter()
        .filter(|(_, t)| *t > threshold)
        .zip(&w.slow_ids)
        .map(|(&(at, t), id)| (at, t, id))
        .collect();
    debug_assert_eq!(slow.len(), w.slow_ids.len(), "one id a slow sample");
    slow.sort_unstable_by_key(|s| std::cmp::Reverse(s.1));
    slow.iter()
        .take(k)
        .map(|(at, t, id)| json!({ "request_id": id, "ttfb_s": secs(*t), "at_ns": at }))
        .collect()
}

/// The 0-based rank in ascending order of the `pct`th percentile of `n` samples (`n` > 0).
fn percentile_rank(pct: f64, n: usize) -> usize {
    let rank = ((pct / 100.0) * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

/// Whether the sample at `rank` (ascending) of `n` is over a threshold that `slow` of them are
/// over: it is exactly when the `n - rank` samples from it up all are, so when at least
/// `n - rank` are.
fn percentile_over(slow: usize, n: usize, rank: usize) -> bool {
    slow >= n - rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_count_puts_the_percentile_on_the_side_a_selection_does() {
        let mut next = crate::test_rng::xorshift(0x5EED_2026);
        for round in 0..20_000 {
            let n = 1 + (next() % 300) as usize;
            let spread = 1 + next() % 1000;
            let values: Vec<u64> = (0..n).map(|_| next() % spread).collect();
            let threshold = next() % spread;
            let pct = [0.1, 1.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0][(next() % 8) as usize];
            let rank = percentile_rank(pct, n);
            let slow = values.iter().filter(|v| **v > threshold).count();
            let mut sorted = values.clone();
            let selected = *sorted.select_nth_unstable(rank).1;
            assert_eq!(
                percentile_over(slow, n, rank),
                selected > threshold,
                "round {round}: p{pct} of {values:?} against {threshold}"
            );
        }
    }
}
