//! The on-disk spool between the pipeline and ClickHouse: every row is written here first, so
//! an outage, a slow server or a restart (kill -9 included) loses nothing the spool accepted.
//!
//! Layout of the spool directory:
//! - Every batch file starts with a magic, the random id of the run that wrote it and its
//!   sequence number; the id and the number form its `insert_deduplication_token`, so a batch
//!   sent twice (the sidecar died between the insert and the deletion of the file) is stored
//!   once, and a new run never reuses a token for other rows.
//! - `<seq>-<table>.open`: the batch being filled, one per table. Rows are written straight
//!   into Native columns ([`Columns`]); at every [`Spool::flush`] (each pipeline turn) the
//!   turn's rows are appended as one frame (`u32` length, `u32` CRC-32, `u32` check of the
//!   length, a kind byte and a Native block), so they are in the kernel's page cache, safe from a killed process, within
//!   one turn. Each write ends with an end mark, which the next write covers. On start, an
//!   `.open` file is recovered up to its end mark (or its last whole frame) and sealed.
//!   The sender sends the blocks as they are: a row is encoded once, never copied as a row.
//! - `<seq>-<table>.batch`: sealed batches (by rows, bytes or age), sent oldest first and
//!   deleted (or kept as `.free`, below) once ClickHouse has them. Never rewritten while a
//!   batch, so a retry sends the same rows. A
//!   batch is made durable (fdatasync, and the directory's fsync for its name) before it waits
//!   for anything: at the seal while the server is failing or batches are queued, else when
//!   its send fails or the sender stops with it unsent. A batch that goes straight to a
//!   healthy server is never forced to disk (it is sent within a second or so), so a power cut
//!   loses it as it loses the open batch's rows; a killed process loses neither (the page
//!   cache holds them).
//! - `<seq>-<table>.free`: files of sent batches, kept (at most [`FREE_PER_TABLE`] a table)
//!   for the next batch of their table to write over from the start: writing over a file's
//!   blocks costs about a fifth of filling a new one. The earlier batch's frames after the new
//!   ones are never read as its rows: the frames' CRCs are seeded with the header (run and
//!   number), and the reader stops at the end mark; the seal cuts them off. The price: a kept
//!   file's pages reach the disk at the kernel's writeback interval (~30 s), where a deleted
//!   batch's never did; at most the kept files' bytes each interval.
//! - `rejected/`: batches ClickHouse refused for good (schema mismatch, unknown table), kept
//!   for the operator and reported, never retried.
//!
//! The spool is bounded: when sealed batches exceed `max_bytes`, the oldest are deleted and
//! their rows counted as dropped.
use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::rows::{AnyRow, Columns, EDGE_TABLE, HTTP_TABLE, REQUEST_TABLE, TABLE_NAMES};

/// The current format (frames of Native blocks, CRCs seeded by the header, end marks; see
/// `frames`); [`frames::MAGIC_V2`] and [`frames::MAGIC_V1`] files are still read.
const MAGIC: &[u8; 8] = b"EWSPOOL3";
/// Length of the run id after the magic.
const RUN_ID: usize = 32;
/// The header: the magic, the run id, the batch's sequence number (16 hex digits).
const HEADER: usize = MAGIC.len() + RUN_ID + 16;
/// Files of sent batches kept per table for later batches to write over (see
/// [`Shared::sent`]).
const FREE_PER_TABLE: usize = 2;
/// A frame's header: length, CRC and the length's check (`frames::frame_head`).
const FRAME_HEADER: usize = 12;
/// The file a spool's user holds locked (one sidecar per spool).
pub const LOCK_FILE: &str = "spool.lock";
/// A frame larger than this is corruption, not a block.
const MAX_FRAME: u32 = 16 * 1024 * 1024;
/// Rows gathered in columns are framed and written once they take this many bytes (a block
/// stays far below [`MAX_FRAME`]). Small enough that a table's columns, and the frame made of
/// them, stay in a core's cache while a turn fills them: a logged request appends to some 60
/// columns of three tables, and with 1 MiB each they were written to memory and read back
/// (alternated runs at ~55,000 logged requests a second: 2.40-2.74 us a request against
/// 2.56-3.52 us with 1 MiB, lower in 6 of 7 pairs). A block's header (its columns' names and
/// types, under 1 KiB) and index frame are then under 1% of it.
const WRITE_AT: usize = 128 << 10;
/// The byte bounds ([`WRITE_AT`], `batch_bytes`) are checked every this many rows of a batch,
/// so a batch or a block passes them by 31 rows at most (2 MiB with 64 KiB heads, the longest
/// the tracker keeps: a block stays far below [`MAX_FRAME`]).
const BYTES_CHECK_ROWS: u64 = 32;

/// Why the spool could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool batch {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Makes the directory's entries (a new file's name, a rename) durable.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl OpenBatch {
    /// The rows gathered in columns become one block frame in `buf`.
    fn frame_rows(&mut self) {
        if self.cols.rows() == 0 {
            return;
        }
        let cols = &mut self.cols;
        // The block's index goes in a frame after it (read before the block clears the
        // columns): a merge then finds its columns without walking its strings, and a version
        // that does not know the frame skips it like damage, keeping the rows.
        let mut index = Vec::with_capacity(4 * cols.schema().count() + 8);
        cols.write_index(&mut index);
        let mut rows = 0;
        put_frame(&mut self.buf, self.seed, FRAME_BLOCK, |buf| {
            rows = cols.write_block(buf)
        });
        put_frame(&mut self.buf, self.seed, FRAME_INDEX, |buf| {
            buf.extend_from_slice(&index)
        });
        self.buf_rows += rows;
    }
}

struct OpenBatch {
    seq: u64,
    run: String,
    path: PathBuf,
    file: File,
    /// The frames' CRC seed (`frames::seed_of` of the header).
    seed: u32,
    rows: u64,
    /// Bytes of the batch in the file: always the end of a whole frame, where the end mark
    /// is (a reused file's earlier bytes may follow it until the seal cuts them).
    bytes: u64,
    /// Rows gathered since the last frame.
    cols: Columns,
    /// Whole frames not yet in the file.
    buf: Vec<u8>,
    /// Rows in `buf`, not yet in the file.
    buf_rows: u64,
    opened: Instant,
    /// The directory was fsynced since this file was created.
    dir_synced: bool,
    /// The file's length: its end mark's end, or more in a reused file (an earlier batch's
    /// bytes after it, cut at the seal).
    file_len: u64,
}

/// Rows kept in memory for another try after a failed write, at most (beyond, they are
/// dropped and counted: the disk stays full, memory must not fill too).
const MAX_RETRY_BUF: usize = 8 << 20;

/// Limits of the spool.
#[derive(Clone, Copy, Debug)]
pub struct SpoolLimits {
    pub batch_rows: u64,
    pub batch_bytes: u64,
    pub batch_max_age: Duration,
    pub max_bytes: u64,
    /// Make sealed batches durable before they wait for anything (survives power loss, not
    /// only a killed process); see the module's doc for the batches that go straight out.
    pub fsync: bool,
}

/// The spool directory's lock (`flock` on [`LOCK_FILE`]), released when dropped. Released
/// explicitly, not only by closing the file: a child that another thread forks in between
/// holds a copy of the descriptor until it execs, and with it the lock, so a spool opened
/// again in the same process could find its directory "in use". The unlock acts on the lock
/// itself, whatever copies exist.
struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The writing side: the pipeline pushes rows here.
pub struct Spool {
    /// Held for the spool's lifetime: one writer per spool directory.
    _lock: DirLock,
    shared: Arc<Shared>,
    limits: SpoolLimits,
    open: Vec<Option<OpenBatch>>,
    next_seq: u64,
    /// This run's id (new at every open).
    run: String,
    /// Rows accepted by this writer (kept here: no lock per row).
    accepted_rows: u64,
    /// The newest tail mark of each access log found in the batches at open.
    tail_marks: BTreeMap<String, super::rows::TailMarkRow>,
    /// Columns and frame buffers of sealed batches, kept for the next batch of their table
    /// (their memory is reused, not freed and faulted in afresh at every batch).
    pool: Vec<Option<(Columns, Vec<u8>)>>,
}

mod frames;
mod names;
mod pool;
mod shared;
pub use frames::{
    parse_frames, read_frames, read_frames_into, Frames, FRAME_BLOCK, FRAME_INDEX, FRAME_MARK,
    MAGIC_V1,
};
pub use names::is_kept_free;
use names::{file_name, new_id, parse_name};
pub use pool::{BufferPool, KEPT_BUFFER_BYTES};
use shared::State;
pub use shared::{BatchInfo, Shared, SpoolStats, LARGE_BATCH_BYTES};

/// Keeps the newest tail mark of each log (frames are read in order, batches in sequence).
fn collect_marks(
    marks: &[super::rows::TailMarkRow],
    into: &mut BTreeMap<String, super::rows::TailMarkRow>,
) {
    for m in marks {
        into.insert(m.path.clone(), m.clone());
    }
}

/// Appends one frame of `kind` to `buf`: its header, then what `fill` writes.
fn put_frame(buf: &mut Vec<u8>, seed: u32, kind: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    buf.push(kind);
    fill(buf);
    let len = (buf.len() - at - FRAME_HEADER) as u32;
    let crc = frames::frame_crc(Some(seed), &buf[at + FRAME_HEADER..]);
    buf[at..at + FRAME_HEADER].copy_from_slice(&frames::frame_head(seed, len, crc));
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering what a previous run left.
    /// Long because recovery is one pass over what a killed run left (lock, stale temp files,
    /// each batch file checked, rejected ones set aside), in the order that keeps rows safe.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        // Rows name processes and clients: root's eyes only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::other(
                        "in use by another edgewatch (each sidecar needs its own store.spool_dir)",
                    ),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut state = State::default();
        let mut tail_marks = BTreeMap::new();
        let mut next_seq = 0;
        let mut entries: Vec<(u64, usize, String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((seq, table, ext)) = parse_name(&name) {
                entries.push((seq, table, ext.to_owned(), entry.path()));
            }
        }
        entries.sort();
        for (seq, table, ext, path) in entries {
            next_seq = next_seq.max(seq + 1);
            match ext.as_str() {
                "batch" => {
                    let frames = match read_frames(&path, table) {
                        Ok((f, _)) => f,
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable spool batch set aside");
                            let dir = dir.join("rejected");
                            fs::create_dir_all(&dir).map_err(io(&dir))?;
                            let _ =
                                fs::rename(&path, dir.join(path.file_name().unwrap_or_default()));
                            continue;
                        }
                    };
                    state.stats.corrupt_regions += frames.corrupt_regions;
                    state.stats.corrupt_bytes += frames.corrupt_bytes;
                    // A sealed batch not yet durable when the power went: what did not reach
                    // the disk is lost, and counted.
                    state.stats.truncated_bytes += frames.cut;
                    if frames.rows == 0 && frames.marks.is_empty() {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    collect_marks(&frames.marks, &mut tail_marks);
                    // A killed run may have left it unsynced (in the page cache).
                    state.unsynced.insert(seq);
                    state.add(BatchInfo {
                        seq,
                        run: frames.run,
                        table,
                        rows: frames.rows,
                        // The file's length (a new file's keeps its end mark).
                        bytes: frames.valid + frames.cut + frames.stale,
                        path,
                    });
                }
                "open" => {
                    // Recover what a stopped (or killed) run had written.
                    let frames = match read_frames(&path, table) {
                        Ok((f, _)) if f.rows > 0 || !f.marks.is_empty() => f,
                        _ => {
                            let _ = fs::remove_file(&path);
                            continue;
                        }
                    };
                    collect_marks(&frames.marks, &mut tail_marks);
                    let (valid, cut, rows) = (frames.valid, frames.cut, frames.rows);
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(valid).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                    let sealed = dir.join(file_name(seq, table, "batch"));
                    fs::rename(&path, &sealed).map_err(io(&path))?;
                    state.stats.recovered_rows += rows;
                    state.stats.truncated_bytes += cut;
                    state.stats.corrupt_regions += frames.corrupt_regions;
                    state.stats.corrupt_bytes += frames.corrupt_bytes;
                    state.add(BatchInfo {
                        seq,
                        run: frames.run,
                        table,
                        rows,
                        bytes: valid,
                        path: sealed,
                    });
                }
                // A sent batch's file kept for reuse: kept again, within the bound per table.
                "free" => match fs::metadata(&path) {
                    Ok(m) if state.free_of(table) < FREE_PER_TABLE => {
                        state.keep_free(table, path, m.len())
                    }
                    _ => {
                        let _ = fs::remove_file(&path);
                    }
                },
                _ => {}
            }
        }
        // Batches set aside earlier count against the bound too, oldest first.
        let rejected_dir = dir.join("rejected");
        if let Ok(list) = fs::read_dir(&rejected_dir) {
            let mut files: Vec<(String, PathBuf, u64)> = list
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    meta.is_file().then(|| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            e.path(),
                            meta.len(),
                        )
                    })
                })
                .collect();
            files.sort();
            for (_, path, bytes) in files {
                state.rejected_bytes += bytes;
                state.rejected.push_back((path, bytes));
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            notify: tokio::sync::Notify::new(),
            dir: dir.to_owned(),
        });
        let mut spool = Self {
            _lock: DirLock(lock),
            shared,
            limits,
            open: (0..TABLE_NAMES.len()).map(|_| None).collect(),
            next_seq,
            run: new_id(),
            accepted_rows: 0,
            tail_marks,
            pool: (0..TABLE_NAMES.len()).map(|_| None).collect(),
        };
        spool.enforce_bound();
        Ok(spool)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The newest tail mark of the access log `path` that a previous run left in the spool.
    pub fn tail_mark(&self, path: &str) -> Option<&super::rows::TailMarkRow> {
        self.tail_marks.get(path)
    }

    /// Writes the buffered frames of one table to its open batch file and fsyncs it (and the
    /// directory when the file is new), without sealing anything: what a tail checkpoint may
    /// then rely on (its marks and the edge rows before them are in that table's batch).
    pub fn write_through(&mut self, table: usize) -> Result<(), SpoolError> {
        let had = self.open[table]
            .as_ref()
            .is_some_and(|b| !b.buf.is_empty() || b.cols.rows() > 0);
        self.write_out(table)?;
        let mut new_file = false;
        if let Some(b) = self.open[table].as_mut() {
            if had {
                b.file.sync_data().map_err(io(&b.path))?;
                new_file = !b.dir_synced;
                b.dir_synced = true;
            }
        }
        if new_file {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }

    /// Appends one row (in its table's columns until [`Spool::flush`] or until its batch is
    /// full).
    pub fn push(&mut self, row: AnyRow) -> Result<(), SpoolError> {
        match &row {
            AnyRow::TailMark(m) => self.push_mark(m),
            _ => self.append(row.table_index(), |cols| cols.push(&row)),
        }
    }

    /// Appends the row of an HTTP exchange straight from the record (no row struct: the
    /// hot path, one per proxied request).
    pub fn push_http(
        &mut self,
        node: &str,
        x: &edgewatch_core::hop::HttpExchange,
    ) -> Result<(), SpoolError> {
        self.append(HTTP_TABLE, |cols| cols.push_http(node, x))
    }

    /// Appends the row of an access-log record straight from it (one per proxied request
    /// when a log is followed).
    pub fn push_edge(
        &mut self,
        node: &str,
        e: &edgewatch_core::edge::EdgeRecord,
    ) -> Result<(), SpoolError> {
        self.append(EDGE_TABLE, |cols| cols.push_edge(node, e))
    }

    /// Appends a line's row that carries its joined request (`r.edge` the line), straight from
    /// it; `Ok(false)`, nothing appended, where the request's row cannot be made of it (see
    /// `Columns::push_edge_joined`).
    pub fn push_edge_joined(
        &mut self,
        node: &str,
        r: &edgewatch_core::edge::join::JoinedRequest,
    ) -> Result<bool, SpoolError> {
        self.append_if(EDGE_TABLE, |cols| cols.push_edge_joined(node, r))
    }

    /// Appends the row of a joined request straight from it.
    pub fn push_request(
        &mut self,
        node: &str,
        r: &edgewatch_core::edge::join::JoinedRequest,
    ) -> Result<(), SpoolError> {
        self.append(REQUEST_TABLE, |cols| cols.push_request(node, r))
    }

    /// The open batch of `table`, opened if there is none (an error drops the row it was for,
    /// counted).
    fn open_batch(&mut self, table: usize) -> Result<&mut OpenBatch, SpoolError> {
        if self.open[table].is_none() {
            match self.new_batch(table) {
                Ok(b) => self.open[table] = Some(b),
                Err(e) => {
                    self.shared.lock().stats.dropped_rows += 1;
                    return Err(e);
                }
            }
        }
        self.open[table].as_mut().ok_or_else(|| SpoolError::Io {
            path: self.shared.dir.display().to_string(),
            source: std::io::Error::other("no open batch"),
        })
    }

    /// One row into the columns of `table` by `write` (false: not a row of that table, which
    /// goes nowhere), then the batch sealed when full or written out when big.
    fn append(
        &mut self,
        table: usize,
        write: impl FnOnce(&mut Columns) -> bool,
    ) -> Result<(), SpoolError> {
        if !self.append_if(table, write)? {
            tracing::error!(
                table = TABLE_NAMES[table],
                "a row was handed to another table's columns (a bug): not stored"
            );
        }
        Ok(())
    }

    /// [`Spool::append`] of a row that `write` may refuse (false: nothing appended).
    fn append_if(
        &mut self,
        table: usize,
        write: impl FnOnce(&mut Columns) -> bool,
    ) -> Result<bool, SpoolError> {
        let (rows_max, bytes_max) = (self.limits.batch_rows, self.limits.batch_bytes);
        let b = self.open_batch(table)?;
        if !write(&mut b.cols) {
            return Ok(false);
        }
        b.rows += 1;
        // The byte bounds every [`BYTES_CHECK_ROWS`] rows: the sum is over every column, and
        // this runs once per proxied request.
        let (rows, check) = (b.rows, b.rows % BYTES_CHECK_ROWS == 0);
        let (pending, written) = if check {
            (b.buf.len() + b.cols.bytes(), b.bytes)
        } else {
            (0, 0)
        };
        self.accepted_rows += 1;
        if rows >= rows_max || (check && written + pending as u64 >= bytes_max) {
            self.seal(table)?;
        } else if pending >= WRITE_AT {
            self.write_out(table)?;
        }
        Ok(true)
    }

    /// A tail mark: it vouches for the edge rows before it, so they go in a frame first.
    fn push_mark(&mut self, m: &super::rows::TailMarkRow) -> Result<(), SpoolError> {
        let b = self.open_batch(EDGE_TABLE)?;
        b.frame_rows();
        match frames::encode_mark(m) {
            Ok(bytes) => put_frame(&mut b.buf, b.seed, FRAME_MARK, |buf| {
                buf.extend_from_slice(&bytes)
            }),
            // Serialising owned plain data cannot fail short of running out of memory; say so
            // rather than hide it.
            Err(e) => tracing::error!(error = %e, "cannot encode a tail mark for the spool"),
        }
        if b.buf.len() + b.cols.bytes() >= WRITE_AT {
            self.write_out(EDGE_TABLE)?;
        }
        Ok(())
    }

    /// A new open batch of `table`, in the file of a sent batch where one is kept (written
    /// over: its blocks and page-cache pages are reused, not allocated anew), else a new file.
    /// The header and an end mark go in first, so the earlier batch's frames are never read as
    /// this one's (their CRCs have another seed, and the reader stops at the mark).
    fn new_batch(&mut self, table: usize) -> Result<OpenBatch, SpoolError> {
        use std::os::unix::fs::FileExt as _;
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = self.shared.dir.join(file_name(seq, table, "open"));
        let reused = self
            .shared
            .take_free(table)
            .is_some_and(|free| match fs::rename(&free, &path) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(path = %free.display(), error = %e, "cannot reuse a sent spool batch's file: a new one is made");
                    let _ = fs::remove_file(&free);
                    false
                }
            });
        let mut opts = OpenOptions::new();
        opts.write(true);
        if !reused {
            opts.create(true).truncate(true);
        }
        let file = opts.open(&path).map_err(io(&path))?;
        let reused_len = if reused {
            file.metadata().map_err(io(&path))?.len()
        } else {
            0
        };
        let mut header = Vec::with_capacity(HEADER + FRAME_HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(self.run.as_bytes());
        header.extend_from_slice(format!("{seq:016x}").as_bytes());
        let seed = frames::seed_of(&header);
        header.extend_from_slice(&frames::end_mark(seed));
        file.write_all_at(&header, 0).map_err(io(&path))?;
        let (cols, buf) = self.pool[table]
            .take()
            .unwrap_or_else(|| (Columns::new(table), Vec::with_capacity(64 * 1024)));
        Ok(OpenBatch {
            seq,
            run: self.run.clone(),
            path,
            file,
            seed,
            rows: 0,
            bytes: HEADER as u64,
            cols,
            buf,
            buf_rows: 0,
            opened: Instant::now(),
            dir_synced: false,
            file_len: reused_len.max((HEADER + FRAME_HEADER) as u64),
        })
    }

    /// Appends the buffered frames to the batch file. A failed write (disk full) is rolled
    /// back to the last whole frame, so the file never holds a torn frame in its middle; the
    /// rows stay buffered for the next try, up to [`MAX_RETRY_BUF`] (then dropped, counted).
    fn write_out(&mut self, table: usize) -> Result<(), SpoolError> {
        let Some(b) = self.open[table].as_mut() else {
            return Ok(());
        };
        b.frame_rows();
        if b.buf.is_empty() {
            return Ok(());
        }
        // The frames, then the end mark where the next write starts.
        use std::os::unix::fs::FileExt as _;
        let frames = b.buf.len();
        b.buf.extend_from_slice(&frames::end_mark(b.seed));
        let written = b.file.write_all_at(&b.buf, b.bytes);
        b.buf.truncate(frames);
        match written {
            Ok(()) => {
                b.bytes += frames as u64;
                b.file_len = b.file_len.max(b.bytes + FRAME_HEADER as u64);
                b.buf.clear();
                b.buf_rows = 0;
                Ok(())
            }
            Err(e) => {
                // Back to the last whole frame (nothing after it: no end mark needed).
                let rolled = b.file.set_len(b.bytes);
                if rolled.is_ok() {
                    b.file_len = b.bytes;
                }
                let mut st = self.shared.lock();
                st.stats.write_rollbacks += 1;
                if rolled.is_err() || b.buf.len() > MAX_RETRY_BUF {
                    st.stats.dropped_rows += b.buf_rows;
                    b.rows -= b.buf_rows;
                    b.buf.clear();
                    b.buf_rows = 0;
                }
                if let Err(r) = rolled {
                    tracing::error!(path = %b.path.display(), error = %r, "cannot roll a failed spool write back");
                }
                Err(io(&b.path)(e))
            }
        }
    }

    fn seal(&mut self, table: usize) -> Result<(), SpoolError> {
        self.write_out(table)?;
        let Some(b) = self.open[table].take() else {
            return Ok(());
        };
        // Whatever a reused file held after the end mark is cut (the reader stops at the mark
        // anyway, but the sender would read those bytes back). A new file keeps its end mark:
        // no change of its length, nothing more for ext4 to journal.
        let mut sealed_len = b.file_len;
        if b.file_len > b.bytes + FRAME_HEADER as u64 {
            match b.file.set_len(b.bytes) {
                Ok(()) => sealed_len = b.bytes,
                Err(e) => {
                    tracing::warn!(path = %b.path.display(), error = %e, "cannot cut a spool batch at its last frame (its reader stops there anyway)");
                }
            }
        }
        // Synced now unless it goes straight to a healthy server (then only if its send
        // fails, or the sender stops first: `Shared::sync_unsynced`).
        let deferred = self.limits.fsync && self.shared.may_defer_sync();
        let sync = self.limits.fsync && !deferred;
        if sync {
            b.file.sync_data().map_err(io(&b.path))?;
        }
        let sealed = self.shared.dir.join(file_name(b.seq, table, "batch"));
        fs::rename(&b.path, &sealed).map_err(io(&b.path))?;
        if sync {
            // The rename itself is durable only once the directory is.
            sync_dir(&self.shared.dir)?;
        }
        let mut shared = self.shared.lock();
        if deferred {
            shared.unsynced.insert(b.seq);
        }
        shared.add(BatchInfo {
            seq: b.seq,
            run: b.run,
            table,
            rows: b.rows,
            bytes: sealed_len,
            path: sealed,
        });
        drop(shared);
        // Both are empty now (written out above); their capacity serves the next batch.
        self.pool[table] = Some((b.cols, b.buf));
        self.enforce_bound();
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Deletes what is oldest while the spool is over its bound: batches ClickHouse refused
    /// (`rejected/`) first, then sealed batches (not the one being sent). The open batches
    /// count too.
    fn enforce_bound(&mut self) {
        let open: u64 = self
            .open
            .iter()
            .flatten()
            .map(|b| b.bytes + (b.buf.len() + b.cols.bytes()) as u64)
            .sum();
        let mut s = self.shared.lock();
        while s.sealed_bytes + s.rejected_bytes + s.free_bytes + open > self.limits.max_bytes {
            // Sent batches' files kept for reuse go first: they hold nothing unsent.
            if let Some(free) = s.free.len().checked_sub(1).map(|last| s.unkeep_free(last)) {
                if let Err(e) = fs::remove_file(&free.path) {
                    tracing::warn!(path = %free.path.display(), error = %e, "cannot delete a sent spool batch's file");
                }
                continue;
            }
            if let Some((path, bytes)) = s.rejected.pop_front() {
                s.rejected_bytes = s.rejected_bytes.saturating_sub(bytes);
                s.stats.dropped_rejected += 1;
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a rejected spool batch");
                }
                tracing::warn!(path = %path.display(), "spool full: deleted the oldest rejected batch");
                continue;
            }
            let Some(seq) = s
                .sealed
                .keys()
                .find(|seq| !s.in_flight.contains(seq))
                .copied()
            else {
                break;
            };
            let Some(victim) = s.take(seq) else {
                break;
            };
            s.stats.dropped_rows += victim.rows;
            s.stats.dropped_batches += 1;
            if let Err(e) = fs::remove_file(&victim.path) {
                tracing::warn!(path = %victim.path.display(), error = %e, "cannot delete an evicted spool batch");
            }
            tracing::warn!(
                rows = victim.rows,
                table = TABLE_NAMES[victim.table],
                "spool full: dropped the oldest batch"
            );
        }
    }

    /// Writes buffered rows to their files and seals batches that are old enough. Call once
    /// per pipeline turn.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        for table in 0..self.open.len() {
            self.write_out(table)?;
            let old = self.open[table]
                .as_ref()
                .is_some_and(|b| b.rows > 0 && b.opened.elapsed() >= self.limits.batch_max_age);
            if old {
                self.seal(table)?;
            }
        }
        Ok(())
    }

    /// Seals every open batch (at shutdown, or when a caller wants everything sent).
    pub fn seal_all(&mut self) -> Result<(), SpoolError> {
        for table in 0..self.open.len() {
            if self.open[table].as_ref().is_some_and(|b| b.rows > 0) {
                self.seal(table)?;
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            accepted_rows: self.accepted_rows,
            ..self.shared.stats()
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reuse;
