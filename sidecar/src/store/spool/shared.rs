//! What the spool's writer and its sender share: the sealed batches waiting, the ones in
//! flight, the ones not yet durable, and the counters.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use super::{io, SpoolError};

/// A sealed batch waiting to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub seq: u64,
    /// The id of the run that wrote the batch.
    pub run: String,
    pub table: usize,
    pub rows: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

impl BatchInfo {
    /// Whether it counts as large for [`Shared::next_batch_beside`].
    pub fn is_large(&self) -> bool {
        self.bytes >= LARGE_BATCH_BYTES
    }
}

/// Counters the spool keeps (exported as metrics, reported on change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Rows written to the spool (by this writer; [`super::Spool::stats`] fills it in).
    pub accepted_rows: u64,
    /// Rows deleted unsent because the spool was full.
    pub dropped_rows: u64,
    pub dropped_batches: u64,
    /// Rows recovered from batches that were open when the sidecar last stopped.
    pub recovered_rows: u64,
    /// Bytes cut from the end of recovered batches (a frame half written when it died).
    pub truncated_bytes: u64,
    /// Corrupt stretches found inside batches and skipped to the next valid frame, and their
    /// bytes (their rows are lost; every other frame of the batch is kept).
    pub corrupt_regions: u64,
    pub corrupt_bytes: u64,
    /// Batches ClickHouse refused (kept in `rejected/`) deleted to stay within the bound.
    pub dropped_rejected: u64,
    /// Failed writes rolled back to the last whole frame (disk full, I/O error).
    pub write_rollbacks: u64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) sealed: BTreeMap<u64, BatchInfo>,
    pub(super) sealed_bytes: u64,
    pub(super) sealed_rows: u64,
    pub(super) in_flight: std::collections::BTreeSet<u64>,
    /// Sealed batches not yet made durable (see the module's doc).
    pub(super) unsynced: std::collections::BTreeSet<u64>,
    /// The last insert succeeded and none failed since: a batch sealed with nothing waiting
    /// before it goes straight out, unsynced.
    pub(super) sending_well: bool,
    /// Files in `rejected/`, oldest first, and their bytes (they count against the bound).
    pub(super) rejected: std::collections::VecDeque<(PathBuf, u64)>,
    pub(super) rejected_bytes: u64,
    /// Files of sent batches kept for later batches to write over, and their bytes (they
    /// count against the bound, and go first when it is reached).
    pub(super) free: Vec<FreeFile>,
    pub(super) free_bytes: u64,
    pub(super) stats: SpoolStats,
}

/// A sent batch's file kept for reuse.
#[derive(Debug)]
pub(super) struct FreeFile {
    pub(super) table: usize,
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
}

impl State {
    /// A sealed batch joins the backlog.
    pub(super) fn add(&mut self, b: BatchInfo) {
        self.sealed_bytes += b.bytes;
        self.sealed_rows += b.rows;
        self.sealed.insert(b.seq, b);
    }

    /// Kept files of `table`.
    pub(super) fn free_of(&self, table: usize) -> usize {
        self.free.iter().filter(|f| f.table == table).count()
    }

    pub(super) fn keep_free(&mut self, table: usize, path: PathBuf, bytes: u64) {
        self.free_bytes += bytes;
        self.free.push(FreeFile { table, path, bytes });
    }

    /// The kept file at `at` in [`State::free`], no longer counted.
    pub(super) fn unkeep_free(&mut self, at: usize) -> FreeFile {
        let f = self.free.swap_remove(at);
        self.free_bytes = self.free_bytes.saturating_sub(f.bytes);
        f
    }

    /// A batch leaves the backlog (sent, set aside or evicted).
    pub(super) fn take(&mut self, seq: u64) -> Option<BatchInfo> {
        self.unsynced.remove(&seq);
        let b = self.sealed.remove(&seq)?;
        self.sealed_bytes = self.sealed_bytes.saturating_sub(b.bytes);
        self.sealed_rows = self.sealed_rows.saturating_sub(b.rows);
        Some(b)
    }
}

/// A batch this large or larger is sent beside another large one only when the sender is
/// behind (see [`Shared::next_batch_beside`]).
pub const LARGE_BATCH_BYTES: u64 = 1 << 20;

/// What the spool's writer and its sender share.
#[derive(Debug)]
pub struct Shared {
    pub(super) state: Mutex<State>,
    /// Woken when a batch is sealed.
    pub notify: tokio::sync::Notify,
    pub(super) dir: PathBuf,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping would: keep going with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest sealed batch not being sent, marked in flight (it is not evicted while
    /// being sent).
    pub fn next_batch(&self) -> Option<BatchInfo> {
        self.next_batch_beside(false)
    }

    /// [`Shared::next_batch`] for an insert beside the sender's others, `sending` if it has any
    /// in flight. When one of the batches in flight is large ([`LARGE_BATCH_BYTES`] or more),
    /// the oldest waiting batch, if large too, goes out beside it only when another large batch
    /// waits behind it (the sender is behind), and otherwise waits for it (`None`). A large
    /// batch's insert holds two buffers of its size (the file read back, then the merged block,
    /// kept until the insert ends) and takes a tenth of a second where batches come every few
    /// seconds; two at once only made a third buffer (at times a fourth) for the tables whose
    /// batches are sealed together (fresh memory, ~3,000 page faults for a 12 MB batch, the
    /// first time it happens), for nothing. A small batch (alerts, connection events) that is
    /// the oldest waiting goes beside a large one at once; batches still go out oldest first.
    /// What is in flight is read from [`State::in_flight`]; `sending` false (nothing of the
    /// sender's in flight) ignores it, so a batch left there by an insert task that panicked
    /// never holds large batches back.
    pub fn next_batch_beside(&self, sending: bool) -> Option<BatchInfo> {
        let mut s = self.lock();
        let large_in_flight = sending
            && s.in_flight
                .iter()
                .any(|seq| s.sealed.get(seq).is_some_and(BatchInfo::is_large));
        let mut waiting = s.sealed.values().filter(|b| !s.in_flight.contains(&b.seq));
        let b = waiting.next()?.clone();
        if large_in_flight && b.is_large() && !waiting.any(BatchInfo::is_large) {
            return None;
        }
        s.in_flight.insert(b.seq);
        Some(b)
    }

    /// An insert of the batch succeeded: it is forgotten, and batches sealed while nothing
    /// waits may go out unsynced again. Its file is kept (renamed `.free`) for a later batch of
    /// its table to write over, at most [`super::FREE_PER_TABLE`] a table; beyond, deleted.
    /// Writing over a file's blocks costs a fifth of filling a new file's (no block allocated,
    /// no page-cache page added, nothing to free at the unlink), and the spool's writes were
    /// a tenth of the sidecar's CPU with the access log joined.
    pub fn sent(&self, b: &BatchInfo) -> Result<(), SpoolError> {
        let keep = {
            let mut s = self.lock();
            s.sending_well = true;
            s.free_of(b.table) < super::FREE_PER_TABLE
        };
        if !keep {
            return self.done(b);
        }
        self.forget(b);
        let free = b.path.with_extension("free");
        match fs::rename(&b.path, &free) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&b.path)(e)),
        }
        // Counted again under the lock: two inserts end at once.
        let mut s = self.lock();
        if s.free_of(b.table) < super::FREE_PER_TABLE {
            s.keep_free(b.table, free, b.bytes);
            return Ok(());
        }
        drop(s);
        fs::remove_file(&free).map_err(io(&free))
    }

    /// A kept file of `table` to write a new batch over (see [`Self::sent`]).
    pub(super) fn take_free(&self, table: usize) -> Option<PathBuf> {
        let mut s = self.lock();
        let at = s.free.iter().position(|f| f.table == table)?;
        Some(s.unkeep_free(at).path)
    }

    /// The batch is in ClickHouse (or given up): forget it and delete its file.
    pub fn done(&self, b: &BatchInfo) -> Result<(), SpoolError> {
        self.forget(b);
        match fs::remove_file(&b.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&b.path)(e)),
        }
    }

    /// ClickHouse refused the batch for good: move it to `rejected/`. Returns where it went.
    pub fn reject(&self, b: &BatchInfo) -> Result<PathBuf, SpoolError> {
        self.forget(b);
        let dir = self.dir.join("rejected");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let to = dir.join(b.path.file_name().unwrap_or_default());
        fs::rename(&b.path, &to).map_err(io(&b.path))?;
        let mut s = self.lock();
        s.rejected.push_back((to.clone(), b.bytes));
        s.rejected_bytes += b.bytes;
        Ok(to)
    }

    /// Sending stopped without an outcome (it will be retried).
    pub fn release(&self, b: &BatchInfo) {
        self.lock().in_flight.remove(&b.seq);
    }

    /// Whether a batch sealed now may skip its fsync: inserts are succeeding and every
    /// sealed batch is already being sent (nothing waits before it).
    pub(super) fn may_defer_sync(&self) -> bool {
        let s = self.lock();
        s.sending_well && s.sealed.keys().all(|k| s.in_flight.contains(k))
    }

    /// An insert failed, or the sender is stopping: every sealed batch not yet durable is
    /// made so (its data, then the directory once), and later seals sync again until an
    /// insert succeeds. Returns how many were synced. Blocking I/O.
    pub fn sync_unsynced(&self) -> Result<usize, SpoolError> {
        let paths: Vec<(u64, PathBuf)> = {
            let mut s = self.lock();
            s.sending_well = false;
            s.unsynced
                .iter()
                .filter_map(|seq| Some((*seq, s.sealed.get(seq)?.path.clone())))
                .collect()
        };
        let mut synced = Vec::new();
        for (seq, path) in paths {
            match File::open(&path).and_then(|f| f.sync_data()) {
                Ok(()) => synced.push(seq),
                // Sent and deleted meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => synced.push(seq),
                Err(e) => return Err(io(&path)(e)),
            }
        }
        if !synced.is_empty() {
            super::sync_dir(&self.dir)?;
            let mut s = self.lock();
            for seq in &synced {
                s.unsynced.remove(seq);
            }
        }
        Ok(synced.len())
    }

    /// Sealed batches not yet durable (see [`Self::sync_unsynced`]).
    #[cfg(test)]
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }

    fn forget(&self, b: &BatchInfo) {
        let mut s = self.lock();
        s.take(b.seq);
        s.in_flight.remove(&b.seq);
    }

    /// The deduplication token of a batch: stable across restarts and retries.
    pub fn token(&self, b: &BatchInfo) -> String {
        format!("edgewatch-{}-{}", b.run, b.seq)
    }

    pub fn stats(&self) -> SpoolStats {
        self.lock().stats
    }

    /// A reader found corrupt stretches in a batch (see [`super::read_frames`]).
    pub fn count_corrupt(&self, regions: u64, bytes: u64) {
        let mut s = self.lock();
        s.stats.corrupt_regions += regions;
        s.stats.corrupt_bytes += bytes;
    }

    /// Sealed batches and their bytes waiting to be sent.
    pub fn backlog(&self) -> (usize, u64) {
        let s = self.lock();
        (s.sealed.len(), s.sealed_bytes)
    }

    /// Rows waiting in sealed batches.
    pub fn backlog_rows(&self) -> u64 {
        self.lock().sealed_rows
    }
}
