//! The spool directory's file names, and a run's id.
use std::fs;

use super::{RUN_ID, TABLE_NAMES};

/// `<seq>-<table>.<ext>`: the sequence number first, so names sort by age.
pub(super) fn file_name(seq: u64, table: usize, ext: &str) -> String {
    format!("{seq:016}-{}.{ext}", TABLE_NAMES[table])
}

/// The sequence number, table and extension of a spool file's name.
pub(super) fn parse_name(name: &str) -> Option<(u64, usize, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let (seq, table) = stem.split_once('-')?;
    let seq = seq.parse().ok()?;
    let table = TABLE_NAMES.iter().position(|t| *t == table)?;
    Some((seq, table, ext))
}

/// Whether `name` (a file in a spool directory) is a sent batch's file kept for reuse: it
/// holds nothing unsent.
pub fn is_kept_free(name: &str) -> bool {
    parse_name(name).is_some_and(|(_, _, ext)| ext == "free")
}

/// A new run id: 32 hex digits from the kernel's random UUID (the clock and pid if that is
/// unreadable: uniqueness is what matters).
pub(super) fn new_id() -> String {
    let id = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_default();
    if id.len() == RUN_ID && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return id;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:024x}{:08x}", t & ((1u128 << 96) - 1), std::process::id())
}
