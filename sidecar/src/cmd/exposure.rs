//! `edgewatch exposure`: the classified inventory, once. Needs no BPF.
use std::{sync::Arc, time::SystemTime};

use super::watch::Watch;
use crate::{
    config::Config,
    metrics::Metrics,
    output::{unix_ns, Printer},
};

/// `edgewatch exposure`: the classified inventory, once. Needs no BPF.
pub fn run(config: &Config, printer: Printer) -> anyhow::Result<usize> {
    let mut watch = Watch::new(config, printer, Arc::new(Metrics::new()));
    watch.rescan(true)?;
    if config.nat.enabled {
        watch.read_nat(true);
    }
    let exposures = watch.pipeline.exposures();
    let now = unix_ns(SystemTime::now());
    watch
        .out
        .printer
        .inventory(&exposures, watch.pipeline.policy(), now);
    watch.out.printer.flush();
    Ok(exposures
        .iter()
        .filter(|e| {
            matches!(
                watch.pipeline.policy().assess(e),
                crate::exposure::policy::Verdict::Drift(_)
            )
        })
        .count())
}
