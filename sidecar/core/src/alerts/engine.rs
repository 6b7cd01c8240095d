//! The incident lifecycle, apart from the rules: an incident opens under its deduplication
//! key, further matches join it (counted, evidence kept up to a bound), it resolves when its
//! cause goes away or after the quiet period, and a key in cooldown is tracked silently.
use super::*;

impl Engine {
    pub fn new(cfg: AlertsConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    /// Incidents open now (announced or not).
    pub fn firing(&self) -> usize {
        self.open.values().filter(|i| !i.silenced).count()
    }

    /// The announced open incidents as firing alerts stamped `now_ns` (to send them again).
    pub fn open_alerts(&self, now_ns: u64) -> Vec<Alert> {
        self.open
            .iter()
            .filter(|(_, i)| !i.silenced)
            .map(|(k, i)| alert(k, i, State::Firing, now_ns))
            .collect()
    }

    /// Opens or joins an incident.
    pub(super) fn matched(&mut self, m: Match, out: &mut Vec<Alert>) {
        let until = self.cooling.get(&m.key).copied();
        if let Some(inc) = self.open.get_mut(&m.key) {
            inc.last_match_ns = inc.last_match_ns.max(m.at_ns);
            for (k, n) in m.counts {
                *inc.counts.entry(k).or_default() += n;
            }
            for e in m.evidence {
                if inc.evidence.len() < MAX_EVIDENCE {
                    inc.evidence.push(e);
                }
            }
            // A rule with nothing new to say passes an empty summary and a null detail.
            if !m.summary.is_empty() {
                inc.summary = m.summary;
            }
            if !m.detail.is_null() {
                inc.detail = m.detail;
            }
            if inc.silenced && until.is_none_or(|u| m.at_ns >= u) {
                // It outlasted the cooldown: announce it now.
                inc.silenced = false;
                self.cooling.remove(&m.key);
                out.push(alert(&m.key, inc, State::Firing, m.at_ns));
            }
            return;
        }
        let silenced = until.is_some_and(|u| m.at_ns < u);
        let mut evidence = m.evidence;
        evidence.truncate(MAX_EVIDENCE);
        let inc = Incident {
            rule: m.rule,
            severity: m.severity,
            summary: m.summary,
            first_move: m.first_move,
            fired_at_ns: m.at_ns,
            last_match_ns: m.at_ns,
            counts: m.counts.into_iter().collect(),
            evidence,
            detail: m.detail,
            silenced,
        };
        if !silenced {
            self.cooling.remove(&m.key);
            out.push(alert(&m.key, &inc, State::Firing, m.at_ns));
        }
        self.open.insert(m.key, inc);
    }

    /// Ends an incident (its cause went away, or it was quiet long enough).
    pub(super) fn resolve(&mut self, key: &str, at_ns: u64, out: &mut Vec<Alert>) {
        let Some(inc) = self.open.remove(key) else {
            return;
        };
        self.origins.remove(key);
        if inc.silenced {
            return;
        }
        out.push(alert(key, &inc, State::Resolved, at_ns));
        let cooldown = ns(self.cfg.cooldown);
        if cooldown > 0 {
            self.cooling
                .insert(key.to_owned(), at_ns.saturating_add(cooldown));
        }
    }

    /// An exposure drift transition (from `exposure::policy::DriftTracker`).
    pub fn drift(&mut self, a: &AlertEvent, out: &mut Vec<Alert>) {
        if self.cfg.enabled && self.cfg.exposure_drift.enabled {
            out.push(Alert::from(a));
        }
    }

    /// Moves time on (the newest record's time, or the clock live): incidents without new
    /// evidence for the quiet period resolve, and cooldowns that ended are forgotten.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Alert>) {
        // Called every pipeline turn (every packet offline): with nothing open, cooling or
        // down there is nothing to resolve.
        if self.open.is_empty() && self.cooling.is_empty() && self.downs.is_empty() {
            return;
        }
        let quiet = ns(self.cfg.quiet_period);
        let done: Vec<String> = self
            .open
            .iter()
            // Configuration findings end when a re-read no longer has them, not by silence.
            .filter(|(_, i)| !i.rule.starts_with("config."))
            .filter(|(_, i)| now_ns.saturating_sub(i.last_match_ns) >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.resolve(&key, now_ns, out);
        }
        self.cooling.retain(|_, until| *until > now_ns);
        self.upstream_advance(now_ns, out);
    }
}

pub(super) fn alert(key: &str, inc: &Incident, state: State, at_ns: u64) -> Alert {
    Alert {
        state,
        rule: inc.rule,
        severity: inc.severity,
        dedup_key: key.to_owned(),
        summary: inc.summary.clone(),
        first_move: inc.first_move,
        evidence: json!({
            "matches": inc.counts.values().sum::<u64>(),
            "counts": inc.counts,
            "first_ns": inc.fired_at_ns,
            "last_ns": inc.last_match_ns,
            "items": inc.evidence,
            "detail": inc.detail,
        }),
        fired_at_ns: inc.fired_at_ns,
        at_ns,
    }
}
