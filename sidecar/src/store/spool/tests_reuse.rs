//! A sent batch's file written over by a later batch: its rows never come back, whether the
//! later batch is sealed, recovered after a kill, or found after a power cut that kept only
//! part of what was written.
use std::os::unix::fs::MetadataExt as _;

use super::tests::{keys, limits, row, ALERTS};
use super::*;

fn names(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// A spool in `dir` with one batch of ten rows (`k0`..`k9`) sealed, and that batch.
fn spool_with_a_batch(dir: &Path) -> (Spool, Arc<Shared>, BatchInfo) {
    let mut s = Spool::open(dir, limits()).expect("open");
    let shared = s.shared();
    for i in 0..10 {
        s.push(row(i)).expect("push");
    }
    let b = shared.next_batch().expect("sealed by rows");
    (s, shared, b)
}

fn key_range(r: std::ops::Range<u64>) -> Vec<String> {
    r.map(|i| format!("k{i}")).collect()
}

#[test]
fn a_sent_batchs_file_is_written_over_and_its_rows_never_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, shared, first) = spool_with_a_batch(dir.path());
    let (old_len, old_inode) = {
        let m = fs::metadata(&first.path).expect("batch");
        (m.len(), m.ino())
    };
    shared.sent(&first).expect("sent");
    assert!(!first.path.exists());
    let free = names(dir.path(), "free");
    assert_eq!(free.len(), 1, "the sent batch's file is kept");
    // The next batch of the table is written into that file: 3 rows, then a kill.
    for i in 100..103 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    let open = names(dir.path(), "open");
    assert_eq!(open.len(), 1);
    let m = fs::metadata(&open[0]).expect("open batch");
    assert_eq!(m.ino(), old_inode, "the same file, written over");
    assert_eq!(
        m.len(),
        old_len,
        "the earlier batch's bytes are still after the new"
    );
    assert!(names(dir.path(), "free").is_empty());
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(s.stats().recovered_rows, 3, "only the new batch's rows");
    assert_eq!(
        s.stats().truncated_bytes,
        0,
        "an earlier batch's bytes are no damage"
    );
    assert_eq!(s.stats().corrupt_regions, 0);
    let shared = s.shared();
    let b = shared.next_batch().expect("recovered");
    assert_eq!(keys(&b.path), key_range(100..103));
    assert!(
        fs::metadata(&b.path).expect("batch").len() < old_len,
        "the rest cut"
    );
    // Sealed in a reused file: exactly its own rows.
    shared.sent(&b).expect("sent");
    let mut s = s;
    for i in 200..210 {
        s.push(row(i)).expect("push");
    }
    let c = shared.next_batch().expect("sealed by rows");
    assert_eq!(keys(&c.path), key_range(200..210));
    let (f, _) = read_frames(&c.path, ALERTS).expect("read");
    // Nothing after its frames but its end mark: the earlier batch's bytes are cut.
    let stale = FRAME_HEADER as u64;
    assert_eq!(
        (f.rows, f.cut, f.stale, f.corrupt_regions),
        (10, 0, stale, 0)
    );
}

#[test]
fn sent_files_kept_are_bounded_by_table_and_by_the_spools_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Spool::open(dir.path(), limits()).expect("open");
    let shared = s.shared();
    // Three batches sealed before any is sent: no kept file to reuse yet.
    for i in 0..30 {
        s.push(row(i)).expect("push");
    }
    let sealed: Vec<BatchInfo> = std::iter::from_fn(|| shared.next_batch()).collect();
    assert_eq!(sealed.len(), 3);
    for b in &sealed {
        shared.sent(b).expect("sent");
    }
    assert_eq!(
        names(dir.path(), "free").len(),
        FREE_PER_TABLE,
        "the third deleted"
    );
    // A restart keeps them for reuse.
    drop(s);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(names(dir.path(), "free").len(), FREE_PER_TABLE);
    assert!(
        s.shared().next_batch().is_none(),
        "kept files are no batches"
    );
    drop(s);
    // A bound smaller than the kept files: they go first, nothing sent is counted dropped.
    let tight = SpoolLimits {
        max_bytes: 1,
        ..limits()
    };
    let s = Spool::open(dir.path(), tight).expect("reopen");
    assert!(names(dir.path(), "free").is_empty());
    assert_eq!(s.stats().dropped_rows, 0);
}

/// After a power cut, a reused file may show what the disk held before: the earlier batch's
/// header and frames under the new name, or the new header over the earlier frames. Neither
/// is read as the new batch's rows (which were not yet durable, so they are lost with the
/// power, as in a new file).
#[test]
fn an_earlier_batchs_bytes_after_a_power_cut_are_never_its_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, shared, b) = spool_with_a_batch(dir.path());
    let old = fs::read(&b.path).expect("batch");
    shared.sent(&b).expect("sent");
    drop(s);
    let later = |seq: u64| dir.path().join(file_name(seq, ALERTS, "batch"));
    // The earlier header and frames under a later batch's name: refused, set aside.
    fs::write(later(40), &old).expect("write");
    let err = read_frames(&later(40), ALERTS).expect_err("another batch's header");
    assert!(err.to_string().contains("names another batch"), "{err}");
    // A later header (its batch number) over the earlier frames: their CRCs are seeded with
    // the earlier header, so none is valid.
    let mut over = old.clone();
    over[HEADER - 16..HEADER].copy_from_slice(format!("{:016x}", 41).as_bytes());
    fs::write(later(41), &over).expect("write");
    let (f, _) = read_frames(&later(41), ALERTS).expect("read");
    assert_eq!(f.rows, 0, "{f:?}");
    assert!(f.blocks.is_empty() && f.marks.is_empty());
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(
        s.shared().backlog_rows(),
        0,
        "nothing of the sent batch comes back"
    );
    assert!(
        s.shared().next_batch().is_none(),
        "an empty batch is not kept"
    );
    assert!(!later(41).exists());
    assert_eq!(
        s.stats().truncated_bytes,
        (over.len() - HEADER) as u64,
        "what did not reach the disk is counted"
    );
    assert!(dir
        .path()
        .join("rejected")
        .join(file_name(40, ALERTS, "batch"))
        .exists());
}

/// A power cut in the middle of a write into a reused file: the pages before it are the new
/// batch's, the page with its first frame header made it to the disk, the rest is what the
/// earlier batch left there. The new rows before it are kept; nothing after it is a row.
#[test]
fn a_write_torn_by_a_power_cut_in_a_reused_file_keeps_what_came_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, shared, first) = spool_with_a_batch(dir.path());
    shared.sent(&first).expect("sent");
    for i in 100..104 {
        s.push(row(i)).expect("push");
    }
    s.flush().expect("flush");
    drop(s);
    let open = names(dir.path(), "open").pop().expect("the reused file");
    let f = OpenOptions::new().write(true).open(&open).expect("open");
    let len = f.metadata().expect("len").len();
    let (frames, _) = read_frames(&open, ALERTS).expect("read");
    assert!(
        frames.stale > FRAME_HEADER as u64,
        "the earlier batch's bytes follow"
    );
    // Where the next write began: a frame header (a length that fits, a CRC that does not).
    let torn = frames::frame_head(0, 64, 0);
    std::os::unix::fs::FileExt::write_all_at(&f, &torn, frames.valid).expect("write");
    drop(f);
    let s = Spool::open(dir.path(), limits()).expect("reopen");
    assert_eq!(s.stats().recovered_rows, 4);
    assert_eq!(
        s.stats().truncated_bytes,
        len - frames.valid,
        "the rest is cut, counted"
    );
    assert_eq!(
        s.stats().corrupt_regions,
        0,
        "no frame found in the earlier batch's bytes"
    );
    let b = s.shared().next_batch().expect("recovered");
    assert_eq!(keys(&b.path), key_range(100..104));
}

/// A frame header is whole only with its length's check: bytes whose length and CRC would
/// pass are no frame without it (the scan past damage relies on it to skip such bytes
/// without a CRC of what they claim to hold).
#[test]
fn a_frame_header_without_its_lengths_check_is_no_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s, _, b) = spool_with_a_batch(dir.path());
    let mut data = fs::read(&b.path).expect("read");
    assert_eq!(parse_frames(&data, ALERTS).expect("frames").rows, 10);
    // The first frame's length check changed; its length and CRC untouched.
    data[HEADER + 8] ^= 1;
    let f = parse_frames(&data, ALERTS).expect("frames");
    assert_eq!((f.rows, f.blocks.len()), (0, 0), "{f:?}");
    assert_eq!(
        f.corrupt_regions, 1,
        "skipped to the index frame after it: {f:?}"
    );
}
